//! Bookmarks in PEP: XEP-0402's `urn:xmpp:bookmarks:1` (one item per
//! room, id = the room's JID) and XEP-0048's `storage:bookmarks` (one
//! item `current` holding every conference), kept in step: a change to
//! either node is written into the other (`urn:xmpp:bookmarks:1#compat-pep`),
//! so old and new clients see the same rooms.

use std::collections::BTreeMap;
use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::jid::BareJid;

use super::{config, Pep, MAX_ITEMS};
use crate::server::Ctx;
use crate::stanza::element;
use crate::store::{AccessModel, PepNodeConfig, SendLast};

pub const BOOKMARKS: &str = "urn:xmpp:bookmarks:1";
pub const LEGACY_BOOKMARKS: &str = "storage:bookmarks";
const LEGACY_ITEM: &str = "current";

/// A node's configuration when it is created without options: bookmarks
/// are private (XEP-0402 §3, XEP-0048 §3.1), everything else as
/// `config::default_config`.
pub fn default_for(node: &str) -> PepNodeConfig {
    let mut c = config::default_config();
    match node {
        BOOKMARKS => {
            c.access_model = AccessModel::Whitelist;
            c.max_items = MAX_ITEMS;
            c.send_last_published_item = SendLast::Never;
        }
        LEGACY_BOOKMARKS => {
            c.access_model = AccessModel::Whitelist;
            c.send_last_published_item = SendLast::Never;
        }
        _ => {}
    }
    c
}

/// One conference, as both formats know it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Conference {
    name: String,
    autojoin: bool,
    nick: String,
    password: String,
}

fn truthy(v: Option<&str>) -> bool {
    matches!(v, Some("1" | "true"))
}

fn child_text(el: &Element, name: &str, ns: &str) -> String {
    el.get_child(name, ns).map(|c| c.text()).unwrap_or_default()
}

fn from_native(el: &Element) -> Option<Conference> {
    el.is("conference", BOOKMARKS).then(|| Conference {
        name: el.attr("name").unwrap_or_default().to_string(),
        autojoin: truthy(el.attr("autojoin")),
        nick: child_text(el, "nick", BOOKMARKS),
        password: child_text(el, "password", BOOKMARKS),
    })
}

/// The conferences of a `<storage xmlns='storage:bookmarks'/>`, by JID.
fn from_legacy(storage: &Element) -> BTreeMap<String, Conference> {
    storage
        .children()
        .filter(|c| c.is("conference", LEGACY_BOOKMARKS))
        .filter_map(|c| {
            let jid = BareJid::new(c.attr("jid")?).ok()?;
            Some((
                jid.to_string(),
                Conference {
                    name: c.attr("name").unwrap_or_default().to_string(),
                    autojoin: truthy(c.attr("autojoin")),
                    nick: child_text(c, "nick", LEGACY_BOOKMARKS),
                    password: child_text(c, "password", LEGACY_BOOKMARKS),
                },
            ))
        })
        .collect()
}

/// A native bookmark's payload; the extensions of `old` (what a client
/// put there) are kept.
fn native(c: &Conference, old: Option<&Element>) -> Element {
    let mut el = element("conference", BOOKMARKS, &[]);
    if !c.name.is_empty() {
        crate::stanza::set_attr(&mut el, "name", c.name.as_str());
    }
    crate::stanza::set_attr(
        &mut el,
        "autojoin",
        if c.autojoin { "true" } else { "false" },
    );
    for (name, v) in [("nick", &c.nick), ("password", &c.password)] {
        if !v.is_empty() {
            let mut n = Element::bare(name, BOOKMARKS);
            n.append_text(v.as_str());
            el.append_child(n);
        }
    }
    if let Some(ext) = old.and_then(|o| o.get_child("extensions", BOOKMARKS)) {
        el.append_child(ext.clone());
    }
    el
}

fn legacy(conferences: &BTreeMap<String, Conference>) -> Element {
    let mut s = Element::bare("storage", LEGACY_BOOKMARKS);
    for (jid, c) in conferences {
        let mut el = element(
            "conference",
            LEGACY_BOOKMARKS,
            &[
                ("jid", jid.as_str()),
                ("autojoin", if c.autojoin { "true" } else { "false" }),
            ],
        );
        if !c.name.is_empty() {
            crate::stanza::set_attr(&mut el, "name", c.name.as_str());
        }
        for (name, v) in [("nick", &c.nick), ("password", &c.password)] {
            if !v.is_empty() {
                let mut n = Element::bare(name, LEGACY_BOOKMARKS);
                n.append_text(v.as_str());
                el.append_child(n);
            }
        }
        s.append_child(el);
    }
    s
}

/// The server's own bookmark of a room for one of its members: added (or
/// renamed, keeping what the user changed) on joining, removed on
/// leaving.
pub async fn room_membership(
    pep: &dyn crate::modules::PersonalEvents,
    ctx: &Arc<Ctx>,
    user: &BareJid,
    room: &BareJid,
    name: &str,
    nick: Option<&str>,
    joined: bool,
) -> crate::store::StoreResult<()> {
    if !joined {
        return pep.retract(ctx, user, BOOKMARKS, room.as_str()).await;
    }
    let old = ctx
        .stores
        .pep
        .items_by_id(user, BOOKMARKS, &[room.to_string()])
        .await?
        .into_iter()
        .next()
        .and_then(|i| crate::xml::parse(&i.xml).ok());
    let conf = match old.as_ref().and_then(from_native) {
        Some(mut c) => {
            if c.name == name {
                return Ok(());
            }
            c.name = name.to_string();
            c
        }
        None => Conference {
            name: name.to_string(),
            autojoin: true,
            nick: nick.unwrap_or_default().to_string(),
            password: String::new(),
        },
    };
    pep.publish(
        ctx,
        user,
        BOOKMARKS,
        &default_for(BOOKMARKS),
        room.as_str(),
        native(&conf, old.as_ref()),
    )
    .await
}

/// `node` of `owner` changed: write the change into the other bookmarks
/// node, with its notifications.
pub(super) async fn after_change(pep: &Pep, ctx: &Arc<Ctx>, owner: &BareJid, node: &str) {
    let r = match node {
        BOOKMARKS => native_to_legacy(pep, ctx, owner).await,
        LEGACY_BOOKMARKS => legacy_to_native(pep, ctx, owner).await,
        _ => Ok(()),
    };
    if let Err(e) = r {
        tracing::error!(error = %e, user = %owner, "bookmarks not kept in step");
    }
}

async fn native_conferences(
    ctx: &Ctx,
    owner: &BareJid,
) -> crate::store::StoreResult<BTreeMap<String, (Conference, Element)>> {
    let mut out = BTreeMap::new();
    for i in ctx.stores.pep.items(owner, BOOKMARKS, None).await? {
        let Ok(el) = crate::xml::parse(&i.xml) else {
            continue;
        };
        if let (Ok(jid), Some(c)) = (BareJid::new(&i.id), from_native(&el)) {
            out.insert(jid.to_string(), (c, el));
        }
    }
    Ok(out)
}

/// Store `payload` as item `id` of `node` without running `after_change`
/// again (the mirror of a change must not mirror back), and notify.
async fn write(
    pep: &Pep,
    ctx: &Arc<Ctx>,
    owner: &BareJid,
    node: &str,
    id: &str,
    payload: &Element,
) -> crate::store::StoreResult<()> {
    pep.put_server(ctx, owner, node, &default_for(node), id, payload)
        .await
}

async fn native_to_legacy(
    pep: &Pep,
    ctx: &Arc<Ctx>,
    owner: &BareJid,
) -> crate::store::StoreResult<()> {
    let now: BTreeMap<String, Conference> = native_conferences(ctx, owner)
        .await?
        .into_iter()
        .map(|(j, (c, _))| (j, c))
        .collect();
    let current = ctx
        .stores
        .pep
        .items_by_id(owner, LEGACY_BOOKMARKS, &[LEGACY_ITEM.to_string()])
        .await?
        .into_iter()
        .next()
        .and_then(|i| crate::xml::parse(&i.xml).ok());
    if current.as_ref().map(from_legacy) == Some(now.clone()) {
        return Ok(());
    }
    if current.is_none() && now.is_empty() {
        return Ok(());
    }
    // Other things an old client kept there (URLs) stay.
    let mut storage = legacy(&now);
    if let Some(cur) = &current {
        for u in cur.children().filter(|c| c.is("url", LEGACY_BOOKMARKS)) {
            storage.append_child(u.clone());
        }
    }
    write(pep, ctx, owner, LEGACY_BOOKMARKS, LEGACY_ITEM, &storage).await
}

async fn legacy_to_native(
    pep: &Pep,
    ctx: &Arc<Ctx>,
    owner: &BareJid,
) -> crate::store::StoreResult<()> {
    let want = ctx
        .stores
        .pep
        .items(owner, LEGACY_BOOKMARKS, Some(1))
        .await?
        .into_iter()
        .next()
        .and_then(|i| crate::xml::parse(&i.xml).ok())
        .map(|s| from_legacy(&s))
        .unwrap_or_default();
    let have = native_conferences(ctx, owner).await?;
    for (jid, c) in &want {
        let old = have.get(jid);
        if old.map(|(o, _)| o) != Some(c) {
            let payload = native(c, old.map(|(_, e)| e));
            write(pep, ctx, owner, BOOKMARKS, jid, &payload).await?;
        }
    }
    let gone: Vec<String> = have
        .keys()
        .filter(|j| !want.contains_key(*j))
        .cloned()
        .collect();
    if !gone.is_empty() {
        pep.retract_items(ctx, owner, BOOKMARKS, &gone, true)
            .await
            .map_err(|_| crate::store::StoreError("bookmark retract failed".into()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_say_the_same() {
        let mut m = BTreeMap::new();
        m.insert(
            "team@rooms.example.com".to_string(),
            Conference {
                name: "Team".into(),
                autojoin: true,
                nick: "al".into(),
                password: String::new(),
            },
        );
        let s = legacy(&m);
        assert_eq!(from_legacy(&s), m);
        let n = native(&m["team@rooms.example.com"], None);
        assert_eq!(from_native(&n).as_ref(), m.get("team@rooms.example.com"));
        // A client's extensions survive a rewrite.
        let with_ext = crate::xml::parse(
            "<conference xmlns='urn:xmpp:bookmarks:1' autojoin='1'>\
             <extensions><pinned xmlns='urn:example'/></extensions></conference>",
        )
        .unwrap();
        let rewritten = native(&m["team@rooms.example.com"], Some(&with_ext));
        assert!(rewritten.get_child("extensions", BOOKMARKS).is_some());
    }
}

//! Bookmarks in PEP: XEP-0402's `urn:xmpp:bookmarks:1` (one item per
//! room, id = the room's JID) is where they are kept; XEP-0048's
//! `storage:bookmarks` (one item `current` holding every conference) is a
//! view of it, never stored (`urn:xmpp:bookmarks:1#compat-pep`): reading
//! it gives the native bookmarks, publishing it changes them, and a change
//! of the native node is notified on both nodes. So old and new clients
//! see the same rooms, and nothing is written twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::jid::BareJid;

use xmpp_parsers::pubsub::pubsub::PubSub;
use xmpp_parsers::stanza_error::{DefinedCondition as Cond, StanzaError};

use super::{config, Change, Pep, MAX_BOOKMARKS};
use crate::modules::{store_failed, IqRequest, IqResult, IqType};
use crate::server::Ctx;
use crate::stanza::{element, simple_error};
use crate::store::{AccessModel, PepItem, PepNodeConfig, SendLast};
use crate::xml::writer;

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
            c.max_items = MAX_BOOKMARKS;
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

/// The native node of `owner` changed: resources that follow the legacy
/// node hear of it there too (the owner's only: bookmarks are private).
pub(super) async fn after_change(pep: &Pep, ctx: &Arc<Ctx>, owner: &BareJid, node: &str) {
    if node != BOOKMARKS {
        return;
    }
    let targets = pep.wanting(ctx, owner, LEGACY_BOOKMARKS);
    if targets.is_empty() {
        return;
    }
    let storage = match legacy_view(ctx, owner).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, user = %owner, "bookmarks not read");
            return;
        }
    };
    let item = PepItem {
        id: LEGACY_ITEM.into(),
        xml: writer::to_string(&storage),
        publisher: owner.to_string(),
        published: 0,
    };
    let ev = super::event(
        LEGACY_BOOKMARKS,
        &Change::Published(std::slice::from_ref(&item)),
    );
    for full in targets {
        super::send_event(ctx, owner, &full, ev.clone(), None).await;
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

/// The legacy node's one item: every native bookmark.
async fn legacy_view(ctx: &Ctx, owner: &BareJid) -> crate::store::StoreResult<Element> {
    let now: BTreeMap<String, Conference> = native_conferences(ctx, owner)
        .await?
        .into_iter()
        .map(|(j, (c, _))| (j, c))
        .collect();
    Ok(legacy(&now))
}

/// Make the native node say what a published `<storage/>` says.
async fn legacy_to_native(
    pep: &Pep,
    ctx: &Arc<Ctx>,
    owner: &BareJid,
    want: &BTreeMap<String, Conference>,
) -> Result<(), StanzaError> {
    let have = native_conferences(ctx, owner)
        .await
        .map_err(|e| store_failed("PEP read", e))?;
    let mut changed = false;
    for (jid, c) in want {
        let old = have.get(jid);
        if old.map(|(o, _)| o) != Some(c) {
            let payload = native(c, old.map(|(_, e)| e));
            pep.put_server(
                ctx,
                owner,
                BOOKMARKS,
                &default_for(BOOKMARKS),
                jid,
                &payload,
            )
            .await
            .map_err(|e| store_failed("PEP write", e))?;
            changed = true;
        }
    }
    let gone: Vec<String> = have
        .keys()
        .filter(|j| !want.contains_key(*j))
        .cloned()
        .collect();
    if !gone.is_empty() {
        pep.retract_items(ctx, owner, BOOKMARKS, &gone, true)
            .await?;
        changed = true;
    }
    if changed {
        after_change(pep, ctx, owner, BOOKMARKS).await;
    }
    Ok(())
}

/// Remove every bookmark (the legacy node deleted, purged or retracted).
pub(super) async fn clear(pep: &Pep, ctx: &Arc<Ctx>, owner: &BareJid) -> Result<(), StanzaError> {
    legacy_to_native(pep, ctx, owner, &BTreeMap::new()).await
}

/// The legacy node's configuration, as it is shown and checked.
pub(super) fn legacy_config() -> PepNodeConfig {
    default_for(LEGACY_BOOKMARKS)
}

/// A pubsub request on the legacy node, answered from the native one
/// (`None`: the request is about another node).
pub(super) async fn legacy_request(
    pep: &Pep,
    ctx: &Arc<Ctx>,
    owner: &BareJid,
    req: &IqRequest,
    ps: &PubSub,
) -> Option<IqResult> {
    let node = match ps {
        PubSub::Publish { publish, .. } => &publish.node.0,
        PubSub::Items(i) => &i.node.0,
        PubSub::Retract(r) => &r.node.0,
        PubSub::Create { create, .. } => create.node.as_ref().map(|n| &n.0)?,
        _ => return None,
    };
    if node != LEGACY_BOOKMARKS {
        return None;
    }
    Some(legacy_answer(pep, ctx, owner, req, ps).await)
}

async fn legacy_answer(
    pep: &Pep,
    ctx: &Arc<Ctx>,
    owner: &BareJid,
    req: &IqRequest,
    ps: &PubSub,
) -> IqResult {
    super::may_read(ctx, owner, &req.from.to_bare(), &legacy_config()).await?;
    match ps {
        PubSub::Items(_) => {
            super::need(req, IqType::Get)?;
            let storage = legacy_view(ctx, owner)
                .await
                .map_err(|e| store_failed("PEP read", e))?;
            let mut item = element("item", super::NS_PUBSUB, &[("id", LEGACY_ITEM)]);
            item.append_child(storage);
            let mut items = element("items", super::NS_PUBSUB, &[("node", LEGACY_BOOKMARKS)]);
            items.append_child(item);
            let mut p = Element::bare("pubsub", super::NS_PUBSUB);
            p.append_child(items);
            Ok(Some(p))
        }
        PubSub::Publish {
            publish,
            publish_options,
        } => {
            super::need(req, IqType::Set)?;
            super::owner_only(req)?;
            let form = publish_options
                .clone()
                .and_then(|o| o.form)
                .map(Element::from);
            config::PublishOptions::parse(form.as_ref(), 1)?.check(&legacy_config())?;
            let storage = publish
                .items
                .first()
                .and_then(|i| i.payload.as_ref())
                .filter(|p| p.is("storage", LEGACY_BOOKMARKS) && publish.items.len() == 1)
                .ok_or_else(|| {
                    super::pubsub_error(
                        Cond::BadRequest,
                        "invalid-payload",
                        None,
                        Some("storage:bookmarks holds one <storage xmlns='storage:bookmarks'/>"),
                    )
                })?;
            legacy_to_native(pep, ctx, owner, &from_legacy(storage)).await?;
            let mut p = Element::bare("pubsub", super::NS_PUBSUB);
            let mut pu = element("publish", super::NS_PUBSUB, &[("node", LEGACY_BOOKMARKS)]);
            pu.append_child(element("item", super::NS_PUBSUB, &[("id", LEGACY_ITEM)]));
            p.append_child(pu);
            Ok(Some(p))
        }
        PubSub::Retract(_) => {
            // The one item is every bookmark: retracting it removes them.
            super::need(req, IqType::Set)?;
            super::owner_only(req)?;
            clear(pep, ctx, owner).await?;
            Ok(None)
        }
        // The node always exists.
        _ => Err(simple_error(Cond::Conflict, Some("the node exists"))),
    }
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

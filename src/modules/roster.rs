//! Rosters and subscriptions (RFC 6121 §2, §3, Appendix A), roster
//! versioning (XEP-0237) and subscription pre-approval (RFC 6121 §3.4).

use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::stanza_error::DefinedCondition as Cond;

use super::{IqHandler, IqRequest, IqResult, IqType, Registry, Target};
use crate::router;
use crate::server::Ctx;
use crate::sessions::Interest;
use crate::stanza::{element, simple_error, stanza_type};
use crate::store::{BoxFuture, RosterItem, StoreError};
use crate::xml::{ns, writer};

pub fn register(r: &mut Registry) {
    r.iq(ns::ROSTER, false, true, Arc::new(RosterIq));
}

fn internal(e: StoreError) -> xmpp_parsers::stanza_error::StanzaError {
    tracing::error!(error = %e, "roster storage failed");
    simple_error(Cond::InternalServerError, None)
}

/// The `<item/>` for an item (as in roster results and pushes).
pub fn item_element(item: &RosterItem) -> Element {
    let mut el = element(
        "item",
        ns::ROSTER,
        &[
            ("jid", &item.jid),
            ("subscription", item.subscription.as_str()),
        ],
    );
    if let Some(name) = &item.name {
        crate::stanza::set_attr(&mut el, "name", name.as_str());
    }
    if item.ask {
        crate::stanza::set_attr(&mut el, "ask", "subscribe");
    }
    if item.approved {
        crate::stanza::set_attr(&mut el, "approved", "true");
    }
    for g in &item.groups {
        let mut ge = Element::bare("group", ns::ROSTER);
        ge.append_text(g.as_str());
        el.append_child(ge);
    }
    el
}

/// Send a roster push (RFC 6121 §2.1.6) to every resource of `user` that
/// asked for the roster.
pub fn push(ctx: &Ctx, user: &BareJid, item: Element, ver: u64) {
    let mut q = element("query", ns::ROSTER, &[("ver", &ver.to_string())]);
    q.append_child(item);
    super::push(ctx, user, Interest::Roster, &q);
}

/// Write an item and push it if it is (or was) in the roster.
async fn save(
    ctx: &Ctx,
    user: &BareJid,
    item: RosterItem,
    was_listed: bool,
) -> Result<(), StoreError> {
    let el = if item.listed {
        Some(item_element(&item))
    } else if was_listed {
        Some(element(
            "item",
            ns::ROSTER,
            &[("jid", &item.jid), ("subscription", "remove")],
        ))
    } else {
        None
    };
    let ver = ctx.stores.rosters.put_item(user, item).await?;
    if let Some(el) = el {
        push(ctx, user, el, ver);
    }
    Ok(())
}

async fn load(ctx: &Ctx, user: &BareJid, contact: &str) -> Result<RosterItem, StoreError> {
    Ok(ctx
        .stores
        .rosters
        .item(user, contact)
        .await?
        .unwrap_or_else(|| RosterItem::new(contact)))
}

fn presence(typ: &str, from: &str, to: &str) -> Element {
    element(
        "presence",
        ns::CLIENT,
        &[("type", typ), ("from", from), ("to", to)],
    )
}

struct RosterIq;

impl IqHandler for RosterIq {
    fn handle<'a>(&'a self, ctx: &'a Arc<Ctx>, req: IqRequest) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let Target::Account(user) = &req.target else {
                return Err(simple_error(Cond::ServiceUnavailable, None));
            };
            if !req.is_self() {
                return Err(simple_error(
                    Cond::Forbidden,
                    Some("a roster belongs to its own account"),
                ));
            }
            if !req.payload.is("query", ns::ROSTER) {
                return Err(simple_error(Cond::BadRequest, None));
            }
            match req.typ {
                IqType::Get => get(ctx, &req, user).await,
                IqType::Set => set(ctx, &req, user).await,
            }
        })
    }
}

async fn get(ctx: &Arc<Ctx>, req: &IqRequest, user: &BareJid) -> IqResult {
    if let Ok(full) = req.from.clone().try_into_full() {
        ctx.sessions.set_interest(&full, Interest::Roster, true);
    }
    let (ver, items) = ctx.stores.rosters.roster(user).await.map_err(internal)?;
    let ver_s = ver.to_string();
    // XEP-0237: the client has this version already: nothing to send, the
    // pushes that follow keep it current.
    if req.payload.attr("ver") == Some(ver_s.as_str()) {
        return Ok(None);
    }
    let mut q = element("query", ns::ROSTER, &[("ver", &ver_s)]);
    for item in items.iter().filter(|i| i.listed) {
        q.append_child(item_element(item));
    }
    Ok(Some(q))
}

async fn set(ctx: &Arc<Ctx>, req: &IqRequest, user: &BareJid) -> IqResult {
    let mut items = req.payload.children().filter(|c| c.is("item", ns::ROSTER));
    let (Some(item_el), None) = (items.next(), items.next()) else {
        return Err(simple_error(
            Cond::BadRequest,
            Some("a roster set has exactly one item"),
        ));
    };
    let Some(jid) = item_el.attr("jid").and_then(|j| Jid::new(j).ok()) else {
        return Err(simple_error(Cond::JidMalformed, None));
    };
    if jid.resource().is_some() {
        return Err(simple_error(
            Cond::BadRequest,
            Some("roster items are bare JIDs"),
        ));
    }
    let contact = jid.to_bare();
    if item_el.attr("subscription") == Some("remove") {
        return remove(ctx, user, &contact).await;
    }
    let name = item_el
        .attr("name")
        .map(str::to_string)
        .filter(|n| !n.is_empty());
    if name.as_ref().is_some_and(|n| n.len() > 1023) {
        return Err(simple_error(Cond::NotAcceptable, Some("name too long")));
    }
    let mut groups: Vec<String> = Vec::new();
    for g in item_el.children().filter(|c| c.is("group", ns::ROSTER)) {
        let g = g.text();
        if g.is_empty() {
            return Err(simple_error(Cond::NotAcceptable, Some("empty group name")));
        }
        if g.len() > 1023 {
            return Err(simple_error(
                Cond::NotAcceptable,
                Some("group name too long"),
            ));
        }
        if groups.contains(&g) {
            return Err(simple_error(Cond::BadRequest, Some("duplicate group")));
        }
        groups.push(g);
    }
    let mut item = load(ctx, user, contact.as_str()).await.map_err(internal)?;
    let was = item.listed;
    item.name = name;
    item.groups = groups;
    item.listed = true;
    save(ctx, user, item, was).await.map_err(internal)?;
    Ok(None)
}

/// RFC 6121 §2.5: removing an item cancels subscriptions both ways.
async fn remove(ctx: &Arc<Ctx>, user: &BareJid, contact: &BareJid) -> IqResult {
    let item = ctx
        .stores
        .rosters
        .item(user, contact.as_str())
        .await
        .map_err(internal)?;
    let Some(item) = item.filter(|i| i.listed) else {
        return Err(simple_error(Cond::ItemNotFound, None));
    };
    let had_from = item.subscription.has_from();
    let mut out = Vec::new();
    if item.subscription.has_to() || item.ask {
        out.push(presence("unsubscribe", user.as_str(), contact.as_str()));
    }
    if had_from || item.pending_in.is_some() {
        out.push(presence("unsubscribed", user.as_str(), contact.as_str()));
    }
    let cleared = RosterItem::new(contact.as_str());
    save(ctx, user, cleared, true).await.map_err(internal)?;
    if had_from {
        super::presence::send_unavailable_to(ctx, user, &Jid::from(contact.clone())).await;
    }
    // Stanzas on the user's behalf: the user's own filters apply (nothing
    // goes to a contact the user blocked).
    for p in out {
        router::send_as_user(ctx, p).await;
    }
    Ok(None)
}

/// A subscription stanza from a local user (RFC 6121 §3, the user's
/// server's side). `el` is stamped with the user's full JID.
pub async fn outbound(ctx: &Arc<Ctx>, user: &BareJid, contact: &BareJid, mut el: Element) {
    let typ = stanza_type(&el).to_string();
    // Subscription stanzas carry the bare JID (RFC 6121 §3.1.2).
    crate::stanza::set_attr(&mut el, "from", user.as_str());
    crate::stanza::set_attr(&mut el, "to", contact.as_str());
    let Ok(mut item) = load(ctx, user, contact.as_str()).await else {
        return;
    };
    let before = item.clone();
    let was = item.listed;
    let mut route_it = true;
    let mut after: Option<AfterSubscribed> = None;
    match typ.as_str() {
        "subscribe" => {
            if !item.subscription.has_to() && !item.ask {
                item.ask = true;
                item.listed = true;
            }
        }
        "subscribed" => {
            if item.pending_in.is_some() {
                item.subscription = item.subscription.with_from(true);
                item.pending_in = None;
                item.approved = false;
                item.listed = true;
                after = Some(AfterSubscribed::SendPresence);
            } else if !item.subscription.has_from() {
                // Pre-approval (RFC 6121 §3.4): remembered, not routed.
                item.approved = true;
                item.listed = true;
                route_it = false;
            } else {
                route_it = false;
            }
        }
        "unsubscribe" => {
            item.subscription = item.subscription.with_to(false);
            item.ask = false;
        }
        "unsubscribed" => {
            let had_from = item.subscription.has_from();
            if !had_from && item.pending_in.is_none() && item.approved {
                // RFC 6121 §3.4: cancelling a pre-approval is the user's
                // server's business; the contact never asked.
                route_it = false;
            }
            item.subscription = item.subscription.with_from(false);
            item.pending_in = None;
            item.approved = false;
            if had_from {
                after = Some(AfterSubscribed::SendUnavailable);
            }
        }
        _ => return,
    }
    if item != before {
        if let Err(e) = save(ctx, user, item, was).await {
            tracing::error!(error = %e, "roster storage failed");
            return;
        }
    }
    if route_it {
        router::route(ctx, el).await;
    }
    match after {
        Some(AfterSubscribed::SendPresence) => {
            super::presence::send_current_to(ctx, user, &Jid::from(contact.clone())).await
        }
        Some(AfterSubscribed::SendUnavailable) => {
            super::presence::send_unavailable_to(ctx, user, &Jid::from(contact.clone())).await
        }
        None => {}
    }
}

enum AfterSubscribed {
    SendPresence,
    SendUnavailable,
}

/// A subscription stanza arriving for local user `user` from `contact`
/// (RFC 6121 §3, the contact's server's side).
pub async fn inbound(ctx: &Arc<Ctx>, user: &BareJid, contact: &BareJid, mut el: Element) {
    let typ = stanza_type(&el).to_string();
    crate::stanza::set_attr(&mut el, "from", contact.as_str());
    let Ok(mut item) = load(ctx, user, contact.as_str()).await else {
        return;
    };
    let before = item.clone();
    let was = item.listed;
    let mut deliver = false;
    match typ.as_str() {
        "subscribe" => {
            if item.subscription.has_from() {
                // Already approved: answer for the user (RFC 6121 §3.1.3).
                router::route(ctx, presence("subscribed", user.as_str(), contact.as_str())).await;
                return;
            }
            if item.approved {
                item.subscription = item.subscription.with_from(true);
                item.approved = false;
                item.listed = true;
                if save(ctx, user, item, was).await.is_err() {
                    return;
                }
                router::route(ctx, presence("subscribed", user.as_str(), contact.as_str())).await;
                super::presence::send_current_to(ctx, user, &Jid::from(contact.clone())).await;
                return;
            }
            item.pending_in = Some(writer::to_string(&pending_request(&el)));
            deliver = true;
        }
        "subscribed" => {
            if item.ask {
                item.subscription = item.subscription.with_to(true);
                item.ask = false;
                deliver = true;
            }
        }
        "unsubscribe" => {
            if item.subscription.has_from() || item.pending_in.is_some() {
                item.subscription = item.subscription.with_from(false);
                item.pending_in = None;
                item.approved = false;
                deliver = true;
            }
        }
        "unsubscribed" => {
            if item.subscription.has_to() || item.ask {
                item.subscription = item.subscription.with_to(false);
                item.ask = false;
                deliver = true;
            }
        }
        _ => return,
    }
    if item != before && save(ctx, user, item, was).await.is_err() {
        return;
    }
    if deliver {
        for r in ctx.sessions.resources(user) {
            if r.available {
                let _ = r.mailbox.deliver(el.clone());
            }
        }
    }
}

/// What is kept of a subscription request until the user answers it: the
/// addresses, the status text and the requester's nickname (XEP-0172),
/// each cut to 1 KiB. Requests from thousands of accounts are kept and
/// re-sent at every login: they must stay small.
fn pending_request(el: &Element) -> Element {
    const NICK: &str = "http://jabber.org/protocol/nick";
    const MAX_TEXT: usize = 1024;
    let mut p = element("presence", ns::CLIENT, &[("type", "subscribe")]);
    for a in ["from", "to", "id"] {
        if let Some(v) = el.attr(a) {
            crate::stanza::set_attr(&mut p, a, v);
        }
    }
    for (name, cns) in [("status", ns::CLIENT), ("nick", NICK)] {
        if let Some(c) = el.get_child(name, cns) {
            let mut text = c.text();
            if text.len() > MAX_TEXT {
                let mut cut = MAX_TEXT;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            let mut e = Element::bare(name, cns);
            e.append_text(text);
            p.append_child(e);
        }
    }
    p
}

/// Contacts of `user` with the given predicate on their item.
pub async fn contacts(
    ctx: &Ctx,
    user: &BareJid,
    pred: impl Fn(&RosterItem) -> bool,
) -> Vec<RosterItem> {
    match ctx.stores.rosters.roster(user).await {
        Ok((_, items)) => items.into_iter().filter(|i| pred(i)).collect(),
        Err(e) => {
            tracing::error!(error = %e, "roster storage failed");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_requests_keep_little() {
        let big = "s".repeat(5000);
        let el = crate::xml::parse(&format!(
            "<presence xmlns='jabber:client' type='subscribe' from='a@x' to='b@x'>\
             <status>{big}</status><nick xmlns='http://jabber.org/protocol/nick'>Al</nick>\
             <x xmlns='urn:other'>{big}</x></presence>"
        ))
        .unwrap();
        let p = pending_request(&el);
        assert_eq!(p.attr("from"), Some("a@x"));
        assert_eq!(p.attr("type"), Some("subscribe"));
        assert_eq!(
            p.get_child("status", ns::CLIENT).unwrap().text().len(),
            1024
        );
        assert_eq!(
            p.get_child("nick", "http://jabber.org/protocol/nick")
                .unwrap()
                .text(),
            "Al"
        );
        assert!(p.get_child("x", "urn:other").is_none());
    }
}

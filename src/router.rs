//! Routing: the one place that knows where a JID lives and what RFC 6120
//! §10 and RFC 6121 §8 say happens to a stanza on its way there. The
//! pipeline order is all here:
//!
//! from a client: stamp `from` → check the IQ type → `Outbound` filters
//! (every stanza with a `to`, subscription requests included) →
//! `FromClient` processors (forged stanza-ids removed) → presence to
//! `modules::presence`, the rest to route (a message with its `<sent/>`
//! carbon copies).
//! from a peer server (`s2s::incoming`): the stream's spoof check →
//! border rules in (`Crossing::In`: read markers removed) → `FromRemote`
//! processors (forged stanza-ids removed) → route.
//! route: a component's domain (rooms.) | remote domain: `BeforeRemote`
//! processors (the sender's archive and journal, as sent) → border rules
//! out (`Crossing::Out`) → that domain's s2s link | the server (IQ
//! handlers) | a local user →
//! `Deliver` filters → `BeforeLocalDelivery` processors (the archive: a
//! message is archived once, and gets its stanza-id) → full JID: that session | bare JID: message rules
//! (offline drain in progress: the stored queue), presence rules, IQ on
//! the account's behalf.
//!
//! A user's presence to each subscriber (`modules::presence`: broadcast,
//! probe answers, login) passes the `ToSubscriber` processors (presence
//! detail by authorization level) before it is sent as the user.
//!
//! Filters (authorization levels, the block list among them) are about
//! other people: nothing between a user and the server itself, nor
//! between a user and their own account, ever passes through them.

use crate::stanza::Bare;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::stanza_error::DefinedCondition as Cond;

use crate::c2s::ClientState;
use crate::modules::carbons;
use crate::modules::{presence, Crossing, IqRequest, IqType, Point, Stage, Target, Verdict};
use crate::server::Ctx;
use crate::sessions::{CopyGroup, Fate};
use crate::stanza::{self, jid_attr, set_attr, stanza_type, Kind};
use crate::xml::ns;

/// A stanza from a bound client session. `from` is stamped here, so a
/// spoofed `from` is never seen by anyone.
pub async fn from_client(ctx: &Arc<Ctx>, st: &mut ClientState, mut el: Element) {
    let Some(kind) = Kind::of(&el) else {
        return;
    };
    set_attr(&mut el, "from", st.full.as_str());
    if el.attr_ns(ns::XML, "lang").is_none() {
        if let Some(lang) = &st.lang {
            if let Ok(n) = rxml::NcName::try_from("lang") {
                el.attrs_mut().insert(rxml::Namespace::XML, n, lang.clone());
            }
        }
    }
    let to = match jid_attr(&el, "to") {
        Ok(to) => to,
        Err(stanza::BadJid) => {
            stanza::remove_attr(&mut el, "to");
            bounce(
                ctx,
                &el,
                Cond::JidMalformed,
                Some("the 'to' address is not a valid JID"),
            )
            .await;
            return;
        }
    };
    if kind == Kind::Iq && !matches!(stanza_type(&el), "get" | "set" | "result" | "error") {
        // RFC 6120 §8.2.3: an IQ of no or an unknown type is refused.
        bounce(
            ctx,
            &el,
            Cond::BadRequest,
            Some("an IQ has type get, set, result or error"),
        )
        .await;
        return;
    }
    let from = Jid::from(st.full.clone());
    let to = match (kind, to) {
        (_, Some(t)) => Some(t),
        (Kind::Message, None) => {
            // A message without 'to' goes to the sender's bare JID.
            set_attr(&mut el, "to", st.bare.as_str());
            Some(Jid::from(st.bare.clone()))
        }
        (_, None) => None,
    };
    if let Some(to) = &to {
        // Every stanza the user addresses to someone passes the same
        // filters, subscription requests and directed presence included.
        match outbound_filters(ctx, &from, to, &el).await {
            Verdict::Pass => {}
            Verdict::Drop => return,
            Verdict::Reject(e) => {
                if let Some(reply) = stanza::error_reply(&el, *e) {
                    deliver_to_session(ctx, &st.full, reply);
                }
                return;
            }
        }
    }
    if let Some(to) = &to {
        ctx.registry
            .run_processors(ctx, Stage::FromClient, &from, to, &mut el)
            .await;
    }
    match (kind, to) {
        (Kind::Presence, to) => presence::outbound(ctx, st, el, to).await,
        (Kind::Iq, None) => {
            // No 'to': handled by the server for the user's own account,
            // and the reply carries no 'from' (RFC 6120 §10.3.3).
            handle_iq(ctx, el, Target::Account(st.bare.clone()), None).await;
        }
        (Kind::Message, _) => {
            let copies = carbons::Sent::prepare(ctx, &st.full, &el);
            let id = SENDER_STANZA_ID
                .scope(std::cell::RefCell::new(None), async move {
                    route(ctx, el).await;
                    SENDER_STANZA_ID.with(|c| c.borrow_mut().take())
                })
                .await;
            copies.send(id);
        }
        (_, _) => route(ctx, el).await,
    }
}

tokio::task_local! {
    /// The stanza-id the sender's own archive gave the message being
    /// routed (for the sender's carbon copies).
    static SENDER_STANZA_ID: std::cell::RefCell<Option<Element>>;
}

/// Record the stanza-id the sender's archive gave the message being routed
/// from a client (nothing happens outside such routing).
pub fn note_sender_stanza_id(id: Element) {
    let _ = SENDER_STANZA_ID.try_with(|c| *c.borrow_mut() = Some(id));
}

/// The archive id the sender's own archive gave the message being routed
/// from a client, once it was archived.
pub fn sender_archive_id() -> Option<u64> {
    SENDER_STANZA_ID
        .try_with(|c| {
            c.borrow()
                .as_ref()
                .and_then(|e| e.attr("id"))
                .and_then(|i| i.parse().ok())
        })
        .ok()
        .flatten()
}

/// Whether a stanza between `a` and `b` is between a user and the server
/// itself, or within one account: never subject to filters.
fn unfiltered(ctx: &Ctx, a: &Jid, b: &Jid) -> bool {
    let server = |j: &Jid| j.node().is_none() && j.domain().as_str() == ctx.domain;
    server(a) || server(b) || (a.node() == b.node() && a.domain() == b.domain())
}

/// The filters of `point` for a stanza from `from` to `to`: the one place
/// that decides which stanzas pass through them at all.
async fn filters(ctx: &Ctx, point: Point, from: &Jid, to: &Jid, el: &Element) -> Verdict {
    if unfiltered(ctx, from, to) {
        return Verdict::Pass;
    }
    ctx.registry.run_filters(ctx, point, from, to, el).await
}

async fn outbound_filters(ctx: &Ctx, from: &Jid, to: &Jid, el: &Element) -> Verdict {
    filters(ctx, Point::Outbound, from, to, el).await
}

/// Send a stanza generated on behalf of a local user (broadcast presence,
/// subscription replies): the user's `Outbound` filters apply.
pub async fn send_as_user(ctx: &Arc<Ctx>, el: Element) {
    let (Ok(Some(from)), Ok(Some(to))) = (jid_attr(&el, "from"), jid_attr(&el, "to")) else {
        return;
    };
    if let Verdict::Pass = outbound_filters(ctx, &from, &to, &el).await {
        route(ctx, el).await;
    }
}

/// Route a stanza by its `to`.
pub fn route(ctx: &Arc<Ctx>, el: Element) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
    Box::pin(async move {
        let Some(kind) = Kind::of(&el) else {
            return;
        };
        let to = match jid_attr(&el, "to") {
            Ok(Some(t)) => t,
            Ok(None) => Jid::from(ctx.domain_jid.clone()),
            Err(stanza::BadJid) => {
                bounce(ctx, &el, Cond::JidMalformed, None).await;
                return;
            }
        };
        if to.domain().as_str() != ctx.domain {
            if let Some(c) = ctx.registry.component_for(to.domain().as_str()) {
                c.handle(ctx, el).await;
                return;
            }
            to_remote(ctx, el).await;
            return;
        }
        if to.node().is_none() {
            to_server(ctx, el, kind, to).await;
            return;
        }
        to_local_user(ctx, el, kind, to).await;
    })
}

async fn to_remote(ctx: &Arc<Ctx>, mut el: Element) {
    // The local side first, as the user sent it (the sender's archive and
    // journal); then what may cross the border; then the peer's link.
    if let (Ok(Some(from)), Ok(Some(to))) = (jid_attr(&el, "from"), jid_attr(&el, "to")) {
        ctx.registry
            .run_processors(ctx, Stage::BeforeRemote, &from, &to, &mut el)
            .await;
    }
    let Some(el) = ctx.registry.cross(ctx, Crossing::Out, el) else {
        return;
    };
    if let Err(r) = crate::s2s::S2s::send(ctx, el) {
        let crate::s2s::Refused(el, cond, text) = *r;
        crate::s2s::bounce(ctx, &el, cond, &text).await;
    }
}

async fn to_server(ctx: &Arc<Ctx>, el: Element, kind: Kind, to: Jid) {
    match kind {
        Kind::Iq => {
            if matches!(stanza_type(&el), "result" | "error") {
                // The answer to a request the server sent.
                ctx.registry.iq_response(ctx, el).await;
            } else {
                handle_iq(ctx, el, Target::Server, Some(to)).await
            }
        }
        Kind::Message => {
            if !matches!(stanza_type(&el), "error" | "groupchat" | "headline") {
                bounce(ctx, &el, Cond::ServiceUnavailable, None).await;
            }
        }
        Kind::Presence => {}
    }
}

async fn to_local_user(ctx: &Arc<Ctx>, mut el: Element, kind: Kind, to: Jid) {
    let bare = to.bare();
    let typ = stanza_type(&el).to_string();
    let exists = ctx.stores.accounts.exists(&bare).unwrap_or(false);
    if !exists {
        match kind {
            Kind::Message if !matches!(typ.as_str(), "error" | "headline" | "groupchat") => {
                bounce(ctx, &el, Cond::ServiceUnavailable, None).await
            }
            Kind::Iq if matches!(typ.as_str(), "get" | "set") => {
                bounce(ctx, &el, Cond::ServiceUnavailable, None).await
            }
            Kind::Presence if typ == "subscribe" => {
                // RFC 6121 §3.1.3: no such account, the request is refused.
                presence::reply_unsubscribed(ctx, &bare, &el).await;
            }
            _ => {}
        }
        return;
    }
    // No `from`: the server, answering on the account's behalf.
    let from = match jid_attr(&el, "from") {
        Ok(Some(f)) => f,
        _ => Jid::from(ctx.domain_jid.clone()),
    };
    let verdict = filters(ctx, Point::Deliver, &from, &to, &el).await;
    match verdict {
        Verdict::Pass => {}
        Verdict::Drop => return,
        Verdict::Reject(e) => {
            if let Some(reply) = stanza::error_reply(&el, *e) {
                route(ctx, reply).await;
            }
            return;
        }
    }
    ctx.registry
        .run_processors(ctx, Stage::BeforeLocalDelivery, &from, &to, &mut el)
        .await;
    let Some(mut el) = ctx.registry.run_holders(ctx, &bare, el).await else {
        return;
    };
    if let Ok(full) = to.clone().try_into_full() {
        if let Some(r) = ctx.sessions.get(&full) {
            let copies = carbons::Received::prepare(ctx, &bare, &mut el, |f| *f == full);
            match r.mailbox.deliver(el) {
                Ok(()) => {
                    copies.send(&bare);
                    return;
                }
                Err(und) => {
                    // The session is gone or stuck: a message falls back to
                    // the bare JID so it is not lost, a request is
                    // answered.
                    let el = *und.0;
                    match kind {
                        // A headline is for that session only (PEP
                        // notifications go to the resources that asked).
                        Kind::Message if typ == "headline" => {}
                        Kind::Message => message_to_bare(ctx, el, &bare).await,
                        Kind::Iq if matches!(typ.as_str(), "get" | "set") => {
                            bounce(ctx, &el, Cond::ServiceUnavailable, None).await
                        }
                        _ => {}
                    }
                    return;
                }
            }
        }
        // RFC 6121 §8.5.3.2: no such resource.
        match kind {
            Kind::Message => match typ.as_str() {
                "groupchat" => bounce(ctx, &el, Cond::ServiceUnavailable, None).await,
                "error" | "headline" => {}
                _ => message_to_bare(ctx, el, &bare).await,
            },
            Kind::Iq => {
                if matches!(typ.as_str(), "get" | "set") {
                    bounce(ctx, &el, Cond::ServiceUnavailable, None).await
                }
            }
            Kind::Presence => {
                if matches!(
                    typ.as_str(),
                    "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed"
                ) {
                    presence::inbound(ctx, el, &bare).await
                }
            }
        }
        return;
    }
    match kind {
        Kind::Message => message_to_bare(ctx, el, &bare).await,
        Kind::Presence => presence::inbound(ctx, el, &bare).await,
        Kind::Iq => handle_iq(ctx, el, Target::Account(bare), Some(to)).await,
    }
}

/// RFC 6121 §8.5.2: a message to a local account's bare JID.
async fn message_to_bare(ctx: &Arc<Ctx>, el: Element, bare: &BareJid) {
    let typ = stanza_type(&el).to_string();
    match typ.as_str() {
        "groupchat" => {
            bounce(ctx, &el, Cond::ServiceUnavailable, None).await;
            return;
        }
        "error" => return,
        _ => {}
    }
    // While stored messages are being delivered, a new one joins them.
    let mut el = if typ == "headline" {
        el
    } else {
        match crate::modules::offline::hold(ctx, bare, el).await {
            Some(el) => el,
            None => return,
        }
    };
    let resources = ctx
        .sessions
        .resources_where(bare, |r| r.available && r.priority >= 0);
    let targets: Vec<_> = if typ == "headline" || ctx.registry.goes_to_every_resource(&el) {
        resources
    } else {
        // chat and normal: the highest-priority resources.
        let top = resources.iter().map(|r| r.priority).max();
        resources
            .into_iter()
            .filter(|r| Some(r.priority) == top)
            .collect()
    };
    let copies =
        carbons::Received::prepare(ctx, bare, &mut el, |f| targets.iter().any(|r| r.full == *f));
    // One serialization shared by every copy. Chat and normal messages
    // are routed again if none of the copies gets written; a headline is
    // not worth keeping.
    let xml = crate::sessions::serialize(&el);
    let group = (typ != "headline").then(|| CopyGroup::new(targets.len()));
    let mut delivered = false;
    for r in &targets {
        let fate = match &group {
            Some(g) => Fate::Copy(g.clone()),
            None => Fate::Drop,
        };
        match r.mailbox.deliver_bytes(xml.clone(), fate) {
            Ok(()) => delivered = true,
            Err(_) => {
                if let Some(g) = &group {
                    g.settle(false);
                }
            }
        }
    }
    if delivered {
        copies.send(bare);
        return;
    }
    if typ == "headline" {
        return;
    }
    crate::modules::offline::store_or_bounce(ctx, bare, el).await;
}

/// An IQ get/set handled by the server (for itself or on behalf of an
/// account). Results and errors addressed to the server are consumed.
pub async fn handle_iq(ctx: &Arc<Ctx>, el: Element, target: Target, reply_from: Option<Jid>) {
    let typ = match stanza_type(&el) {
        "get" => IqType::Get,
        "set" => IqType::Set,
        _ => return,
    };
    let from = match jid_attr(&el, "from") {
        Ok(Some(f)) => f,
        _ => return,
    };
    let Some(id) = el.attr("id").map(str::to_string) else {
        bounce(ctx, &el, Cond::BadRequest, Some("an IQ needs an 'id'")).await;
        return;
    };
    let mut children = el.children();
    let payload = match (children.next(), children.next()) {
        (Some(p), None) => p.clone(),
        _ => {
            bounce(
                ctx,
                &el,
                Cond::BadRequest,
                Some("an IQ get or set has exactly one child"),
            )
            .await;
            return;
        }
    };
    let Some(handler) = ctx.registry.iq_handler(&payload.ns(), &target) else {
        bounce(ctx, &el, Cond::ServiceUnavailable, None).await;
        return;
    };
    let req = IqRequest {
        id: id.clone(),
        from: from.clone(),
        target,
        typ,
        payload,
    };
    let mut reply = match handler.handle(ctx, req).await {
        Ok(payload) => {
            let mut r = stanza::element("iq", ns::CLIENT, &[("type", "result"), ("id", &id)]);
            if let Some(p) = payload {
                r.append_child(p);
            }
            r
        }
        Err(e) => match stanza::error_reply(&el, e) {
            Some(r) => r,
            None => return,
        },
    };
    set_attr(&mut reply, "to", from.as_str());
    match reply_from {
        Some(f) => set_attr(&mut reply, "from", f.as_str()),
        None => stanza::remove_attr(&mut reply, "from"),
    }
    route(ctx, reply).await;
}

/// Send the error reply for `el`, if one may be sent.
pub async fn bounce(ctx: &Arc<Ctx>, el: &Element, cond: Cond, text: Option<&str>) {
    if let Some(reply) = stanza::error_reply(el, stanza::simple_error(cond, text)) {
        route(ctx, reply).await;
    }
}

/// Put a stanza straight into a local session's mailbox.
pub fn deliver_to_session(ctx: &Ctx, full: &xmpp_parsers::jid::FullJid, el: Element) -> bool {
    match ctx.sessions.get(full) {
        Some(r) => r.mailbox.deliver(el).is_ok(),
        None => false,
    }
}

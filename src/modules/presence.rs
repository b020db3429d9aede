//! Presence (RFC 6121 §4): initial presence, broadcast to subscribers and
//! the user's own resources, probes, directed presence, unavailable on
//! disconnect. Subscription stanzas are handed to `roster`.

use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::jid::{BareJid, FullJid, Jid};

use super::{roster, Event, Registry, Stage};
use crate::c2s::{Backlog, ClientState};
use crate::router;
use crate::server::Ctx;
use crate::stanza::{element, jid_attr, remove_attr, set_attr, stanza_type};
use crate::store::BoxFuture;
use crate::xml::ns;

pub fn register(_r: &mut Registry) {
    // Presence is core IM (RFC 6121): the router calls it directly.
}

/// Most addressees of directed presence remembered per session.
const MAX_DIRECTED: usize = 1000;

fn is_subscription(typ: &str) -> bool {
    matches!(
        typ,
        "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed"
    )
}

/// Presence from a bound client (`from` stamped, and the user's filters
/// passed when it has a `to`).
pub async fn outbound(ctx: &Arc<Ctx>, st: &mut ClientState, el: Element, to: Option<Jid>) {
    let typ = stanza_type(&el).to_string();
    // Presence is copied to every contact: its size is bounded apart from
    // the stanza limit.
    let max = ctx.config.limits.max_presence_bytes;
    if typ != "error" && crate::xml::writer::to_bytes(&el).len() > max {
        let text = format!("presence is limited to {max} bytes");
        if let Some(reply) = crate::stanza::error_reply(
            &el,
            crate::stanza::simple_error(
                xmpp_parsers::stanza_error::DefinedCondition::PolicyViolation,
                Some(&text),
            ),
        ) {
            router::deliver_to_session(ctx, &st.full, reply);
        }
        return;
    }
    match (to, typ.as_str()) {
        (None, "" | "unavailable") => broadcast(ctx, st, el).await,
        (None, _) => {}
        (Some(to), t) if is_subscription(t) => {
            let bare = st.bare.clone();
            roster::outbound(ctx, &bare, &to.to_bare(), el).await;
        }
        (Some(to), "" | "unavailable") => {
            // Directed presence (RFC 6121 §4.6).
            if typ.is_empty() {
                // Bounded: a flood of directed presence must not grow the
                // session without limit. Beyond the cap, the addressees
                // just miss the final unavailable.
                st.add_directed(to.to_string(), MAX_DIRECTED);
            } else {
                st.remove_directed(to.as_str());
            }
            // The router ran the user's filters on it already.
            router::route(ctx, el).await;
        }
        (Some(_), "error") => router::route(ctx, el).await,
        // Probes are the server's business (RFC 6121 §4.3).
        _ => {}
    }
}

fn priority_of(el: &Element) -> i8 {
    el.get_child("priority", ns::CLIENT)
        .and_then(|p| p.text().trim().parse::<i16>().ok())
        .map(|p| p.clamp(-128, 127) as i8)
        .unwrap_or(0)
}

fn with_to(el: &Element, to: &str) -> Element {
    let mut p = el.clone();
    set_attr(&mut p, "to", to);
    p
}

/// Recipients handled between two yields of a broadcast, so that a user
/// with thousands of contacts does not hold a worker for long.
const BROADCAST_BATCH: usize = 64;

async fn broadcast(ctx: &Arc<Ctx>, st: &mut ClientState, el: Element) {
    let available = stanza_type(&el) != "unavailable";
    if !available && !st.available {
        // RFC 6121 §4.5.2: nothing to retract from contacts for a session
        // that never was available; only directed presence is withdrawn.
        for to in st.take_directed() {
            router::send_as_user(ctx, with_to(&el, &to)).await;
        }
        return;
    }
    let priority = if available { priority_of(&el) } else { 0 };
    let initial = available && !st.available;
    let stored = available.then(|| {
        let mut stored = el.clone();
        remove_attr(&mut stored, "to");
        remove_attr(&mut stored, "from");
        Arc::from(crate::xml::writer::to_string(&stored))
    });
    let dnd = available && super::dnd::shows_dnd(&el);
    if super::dnd::defers(ctx, dnd) {
        // Messages held meanwhile are taken when it leaves dnd.
        st.offline_started = false;
    }
    // Offline messages are taken (so that nothing sent from now on
    // overtakes them) before the resource can receive bare-JID messages.
    let drain = available
        && priority >= 0
        && !super::dnd::defers(ctx, dnd)
        && super::offline::claim_drain(ctx, st);
    ctx.sessions
        .set_presence(&st.full, st.id, stored, priority, dnd);
    st.available = available;
    st.priority = priority;

    let subscribers = roster::contacts(ctx, &st.bare, |i| i.subscription.has_from()).await;
    for (i, item) in subscribers.iter().enumerate() {
        to_subscriber(ctx, with_to(&el, &item.jid)).await;
        if i % BROADCAST_BATCH == BROADCAST_BATCH - 1 {
            tokio::task::yield_now().await;
        }
    }
    for r in ctx.sessions.resources(&st.bare) {
        if r.available || r.full == st.full {
            let _ = r.mailbox.deliver(with_to(&el, r.full.as_str()));
        }
    }
    ctx.registry
        .emit(
            ctx,
            Event::Presence {
                full: &st.full,
                available,
                el: &el,
            },
        )
        .await;
    if !available {
        for to in st.take_directed() {
            let bare = Jid::new(&to)
                .map(|j| j.to_bare().to_string())
                .unwrap_or_default();
            if subscribers.iter().any(|i| i.jid == bare) {
                continue;
            }
            router::send_as_user(ctx, with_to(&el, &to)).await;
        }
    }
    if initial {
        initial_presence(ctx, st).await;
    }
    if drain {
        super::offline::start_claimed_drain(ctx, st).await;
    }
}

/// What a resource gets when it becomes available (RFC 6121 §4.2.2–4.2.3):
/// its contacts' presence, its other resources' presence and pending
/// subscription requests. There may be thousands of each: they are
/// delivered as a backlog, at the pace the client reads.
async fn initial_presence(ctx: &Arc<Ctx>, st: &mut ClientState) {
    let items = roster::contacts(ctx, &st.bare, |i| {
        i.subscription.has_to() || i.pending_in.is_some()
    })
    .await;
    let mut contacts = Vec::new();
    let mut pending = Vec::new();
    for item in items {
        if item.subscription.has_to() {
            if let Ok(c) = BareJid::new(&item.jid) {
                // Federation is not part of this server yet.
                if c.domain().as_str() == ctx.domain {
                    contacts.push(c);
                }
            }
        }
        if let Some(p) = item.pending_in {
            pending.push(p);
        }
    }
    st.push_work(Box::new(LoginPresence {
        contacts,
        pending,
        own_sent: false,
    }));
    ctx.registry
        .emit(
            ctx,
            Event::InitialPresence {
                full: &st.full,
                priority: st.priority,
            },
        )
        .await;
}

/// The login part of initial presence, produced a step at a time.
struct LoginPresence {
    /// Contacts whose presence the user sees (probed locally).
    contacts: Vec<BareJid>,
    /// Subscription requests waiting for the user's answer, as received.
    pending: Vec<String>,
    own_sent: bool,
}

/// Contacts or requests handled in one step.
const LOGIN_STEP: usize = 32;

impl Backlog for LoginPresence {
    fn step<'a>(&'a mut self, ctx: &'a Arc<Ctx>, st: &'a mut ClientState) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let me = Jid::from(st.full.clone());
            if !self.contacts.is_empty() {
                let n = self.contacts.len().min(LOGIN_STEP);
                for contact in self.contacts.drain(..n) {
                    send_current_to(ctx, &contact, &me).await;
                }
                return true;
            }
            if !self.own_sent {
                self.own_sent = true;
                for r in ctx.sessions.resources(&st.bare) {
                    if r.full == st.full {
                        continue;
                    }
                    if let Some(p) = r.presence_to(st.full.as_str()) {
                        router::deliver_to_session(ctx, &st.full, p);
                    }
                }
                return true;
            }
            let n = self.pending.len().min(LOGIN_STEP);
            for stored in self.pending.drain(..n) {
                if let Ok(p) = crate::xml::parse(&stored) {
                    router::deliver_to_session(ctx, &st.full, p);
                }
            }
            !self.pending.is_empty()
        })
    }
}

/// A resource that was available was taken over by a new login of the
/// same full JID: contacts and the user's other resources see it go
/// unavailable now (the new session then sends its own presence), and the
/// old session's end announces nothing.
pub async fn resource_replaced(ctx: &Arc<Ctx>, full: &FullJid) {
    let user = full.to_bare();
    let p = element(
        "presence",
        ns::CLIENT,
        &[("type", "unavailable"), ("from", full.as_str())],
    );
    let subscribers = roster::contacts(ctx, &user, |i| i.subscription.has_from()).await;
    for item in &subscribers {
        router::send_as_user(ctx, with_to(&p, &item.jid)).await;
    }
    for r in ctx.sessions.resources(&user) {
        if r.available && r.full != *full {
            let _ = r.mailbox.deliver(with_to(&p, r.full.as_str()));
        }
    }
}

/// Presence addressed to a local user's bare JID.
pub async fn inbound(ctx: &Arc<Ctx>, el: Element, user: &BareJid) {
    let typ = stanza_type(&el).to_string();
    let from = match jid_attr(&el, "from") {
        Ok(Some(f)) => f,
        _ => return,
    };
    if is_subscription(&typ) {
        roster::inbound(ctx, user, &from.to_bare(), el).await;
        return;
    }
    match typ.as_str() {
        "probe" => answer_probe(ctx, user, &from).await,
        "" | "unavailable" | "error" => {
            for r in ctx.sessions.resources(user) {
                if r.available {
                    let _ = r.mailbox.deliver(el.clone());
                }
            }
        }
        _ => {}
    }
}

/// RFC 6121 §4.3.2: a probe is answered only for subscribers.
async fn answer_probe(ctx: &Arc<Ctx>, user: &BareJid, prober: &Jid) {
    let item = ctx
        .stores
        .rosters
        .item(user, prober.to_bare().as_str())
        .await
        .ok()
        .flatten();
    if !item.is_some_and(|i| i.subscription.has_from()) {
        return;
    }
    if ctx.sessions.is_available(user) {
        send_current_to(ctx, user, prober).await;
    } else {
        let p = element(
            "presence",
            ns::CLIENT,
            &[
                ("type", "unavailable"),
                ("from", user.as_str()),
                ("to", prober.as_str()),
            ],
        );
        router::send_as_user(ctx, p).await;
    }
}

/// Send `user`'s current presence (each available resource) to `to`, a
/// subscriber or prober.
pub async fn send_current_to(ctx: &Arc<Ctx>, user: &BareJid, to: &Jid) {
    for r in ctx.sessions.resources(user) {
        if let Some(p) = r.presence_to(to.as_str()) {
            to_subscriber(ctx, p).await;
        }
    }
}

/// A user's presence `p` (with `from` and `to`) to one subscriber or
/// prober: shaped by the `ToSubscriber` processors (what the contact may
/// see), then sent as the user.
async fn to_subscriber(ctx: &Arc<Ctx>, mut p: Element) {
    if let (Ok(Some(from)), Ok(Some(to))) = (jid_attr(&p, "from"), jid_attr(&p, "to")) {
        ctx.registry
            .run_processors(ctx, Stage::ToSubscriber, &from, &to, &mut p)
            .await;
    }
    router::send_as_user(ctx, p).await;
}

/// Unavailable presence from each of `user`'s available resources to
/// `contact` (after a subscription was cancelled or the contact blocked).
pub async fn send_unavailable_to(ctx: &Arc<Ctx>, user: &BareJid, contact: &Jid) {
    for r in ctx.sessions.resources(user) {
        if !r.available {
            continue;
        }
        let p = element(
            "presence",
            ns::CLIENT,
            &[
                ("type", "unavailable"),
                ("from", r.full.as_str()),
                ("to", contact.as_str()),
            ],
        );
        router::route(ctx, p).await;
    }
}

/// A subscription request for an account that does not exist is refused.
pub async fn reply_unsubscribed(ctx: &Arc<Ctx>, user: &BareJid, el: &Element) {
    let Ok(Some(from)) = jid_attr(el, "from") else {
        return;
    };
    let p = element(
        "presence",
        ns::CLIENT,
        &[
            ("type", "unsubscribed"),
            ("from", user.as_str()),
            ("to", from.to_bare().as_str()),
        ],
    );
    router::route(ctx, p).await;
}

/// The session ended: if it was available, it goes unavailable.
pub async fn session_ended(ctx: &Arc<Ctx>, st: &mut ClientState) {
    if !st.available && !st.has_directed() {
        return;
    }
    let p = element(
        "presence",
        ns::CLIENT,
        &[("type", "unavailable"), ("from", st.full.as_str())],
    );
    broadcast(ctx, st, p).await;
}

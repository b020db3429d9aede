//! Group chat (XEP-0045) on its own domain (`[muc] domain`, default
//! `rooms.DOMAIN`): PRODUCT.md §5, `xeps/xep-0045.md`.
//!
//! Rooms are persistent, members-only and non-anonymous, of 2 to
//! `max_members` local users, every one of them equal: any member adds and
//! removes members, renames the room, sets the subject, invites and
//! leaves. A user who left or was removed may rejoin by themselves while
//! the room is not full.
//!
//! The service is a component: the router hands it every stanza for its
//! domain. Each active room is one actor task (`room.rs`) that owns the
//! room's state; an idle room's task ends and the room is read again from
//! the store when a stanza comes for it. Nothing about a room is held
//! anywhere else, so a second process could serve other rooms.
//!
//! Messages are archived in the room's archive (MUC MAM, queried at the
//! room's JID), count as unread in every member's journal, and reach the
//! occupants only once they are on disk.

mod bookmarks;
mod forms;
mod room;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use minidom::Element;
use tokio::sync::{mpsc, oneshot};
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::stanza_error::DefinedCondition as Cond;

use crate::modules::{
    Component, Event, Filter, Listener, Point, Processor, Registry, SharedConversations, Stage,
    Verdict,
};
use crate::server::Ctx;
use crate::stanza::{element, jid_attr, set_attr, simple_error, stanza_type, Bare, Kind};
use crate::store::{BoxFuture, StoreResult, ViewMask};
use crate::xml::ns;

pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const NS_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const NS_UNIQUE: &str = "http://jabber.org/protocol/muc#unique";
pub const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
pub const NS_CONFERENCE: &str = "jabber:x:conference";

/// Stanzas waiting for a room's task at most; senders wait beyond.
const ROOM_QUEUE: usize = 256;

pub fn register(r: &mut Registry, config: &crate::config::Config) {
    if !config.muc.enabled {
        return;
    }
    let svc = Arc::new(Service {
        domain: config.muc_domain().into(),
        max_members: config.muc.max_members,
        rooms: Arc::new(Mutex::new(HashMap::new())),
    });
    r.component(svc.domain.to_string(), svc.clone());
    r.shared_conversations(svc.clone());
    r.listener(svc.clone());
    r.listener(Arc::new(bookmarks::Bookmarks));
    r.processor(
        Stage::FromClient,
        Arc::new(DirectInvites { svc: svc.clone() }),
    );
    r.filter(Point::Outbound, Arc::new(LocalOnly { svc }));
}

/// What a room's task is asked to do.
pub(crate) enum Cmd {
    /// A stanza for the room or one of its occupants; `done` once the
    /// room took it (a message is in the archive's write queue, a change
    /// on disk).
    Stanza(Element, oneshot::Sender<()>),
    /// A member sent a direct invitation (XEP-0249) to a local user.
    DirectInvite { inviter: BareJid, invitee: BareJid },
    /// An account was deleted: it is a member no more.
    Forget(BareJid),
    /// A reflection to this session found no session: it left.
    Gone(xmpp_parsers::jid::FullJid),
}

/// The group-chat service: a handle, cheap to clone, that the rooms'
/// tasks keep too.
#[derive(Clone)]
pub(crate) struct Service {
    pub domain: Arc<str>,
    pub max_members: usize,
    /// The task of each active room.
    rooms: Arc<Mutex<HashMap<BareJid, mpsc::Sender<Cmd>>>>,
}

impl Service {
    fn is_room(&self, j: &BareJid) -> bool {
        j.domain().as_str() == &*self.domain && j.node().is_some()
    }

    /// Hand a command to a room's task, starting the task if the room has
    /// none (it reads the room from the store).
    pub(crate) async fn send(&self, ctx: &Arc<Ctx>, room: &BareJid, mut cmd: Cmd) {
        loop {
            let tx = {
                let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
                match rooms.get(room) {
                    Some(tx) if !tx.is_closed() => tx.clone(),
                    _ => {
                        let (tx, rx) = mpsc::channel(ROOM_QUEUE);
                        rooms.insert(room.clone(), tx.clone());
                        let (svc, ctx, jid) = (self.clone(), ctx.clone(), room.clone());
                        tokio::spawn(room::run(ctx, svc, jid, tx.clone(), rx));
                        tx
                    }
                }
            };
            match tx.send(cmd).await {
                Ok(()) => return,
                // The task ended between the lookup and the send: start
                // another one.
                Err(mpsc::error::SendError(c)) => {
                    cmd = c;
                    let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
                    if rooms.get(room).is_some_and(|t| t.same_channel(&tx)) {
                        rooms.remove(room);
                    }
                }
            }
        }
    }

    /// A room's task may end: only if nothing is queued for it, and then
    /// nobody can reach it any more.
    fn retire(&self, room: &BareJid, tx: &mpsc::Sender<Cmd>, rx: &mpsc::Receiver<Cmd>) -> bool {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if !rx.is_empty() {
            return false;
        }
        if rooms.get(room).is_some_and(|t| t.same_channel(tx)) {
            rooms.remove(room);
        }
        true
    }

    /// A stanza for the service's own domain.
    async fn to_service(&self, ctx: &Arc<Ctx>, el: Element) {
        let Some(Kind::Iq) = Kind::of(&el) else {
            if el.name() == "message" && !matches!(stanza_type(&el), "error" | "headline") {
                crate::router::bounce(
                    ctx,
                    &el,
                    Cond::ServiceUnavailable,
                    Some("messages go to a room, not to the service"),
                )
                .await;
            }
            return;
        };
        if !matches!(stanza_type(&el), "get" | "set") {
            return;
        }
        let from = match jid_attr(&el, "from") {
            Ok(Some(f)) => f,
            _ => return,
        };
        let answer = match single_child(&el) {
            None => Err(crate::modules::bad_request("an IQ has exactly one child")),
            Some(p) => self.service_iq(ctx, &from, stanza_type(&el), p).await,
        };
        reply_iq(ctx, &el, answer).await;
    }

    async fn service_iq(
        &self,
        ctx: &Arc<Ctx>,
        from: &Jid,
        typ: &str,
        p: &Element,
    ) -> crate::modules::IqResult {
        let ns = p.ns();
        match (typ, ns.as_str(), p.name()) {
            ("get", ns::DISCO_INFO, "query") => {
                if p.attr("node").is_some() {
                    return Err(simple_error(Cond::ItemNotFound, None));
                }
                let mut q = Element::bare("query", ns::DISCO_INFO);
                q.append_child(element(
                    "identity",
                    ns::DISCO_INFO,
                    &[
                        ("category", "conference"),
                        ("type", "text"),
                        ("name", "Rooms"),
                    ],
                ));
                for f in [
                    ns::DISCO_INFO,
                    ns::DISCO_ITEMS,
                    NS_MUC,
                    NS_UNIQUE,
                    NS_OCCUPANT_ID,
                    ns::PING,
                ] {
                    q.append_child(element("feature", ns::DISCO_INFO, &[("var", f)]));
                }
                Ok(Some(q))
            }
            ("get", ns::DISCO_ITEMS, "query") => {
                if p.attr("node").is_some() {
                    return Err(simple_error(Cond::ItemNotFound, None));
                }
                // Only the rooms the asker is a member of: a room is never
                // discoverable by anyone else.
                let mut q = Element::bare("query", ns::DISCO_ITEMS);
                let bare = from.bare();
                if crate::modules::mam::is_local_user(ctx, &bare) {
                    let rooms = ctx
                        .stores
                        .rooms
                        .rooms_of(&bare)
                        .await
                        .map_err(|e| crate::modules::store_failed("room list", e))?;
                    for r in rooms {
                        let mut item = element("item", ns::DISCO_ITEMS, &[("jid", &r)]);
                        if let Ok(j) = BareJid::new(&r) {
                            if let Ok(Some(rec)) = ctx.stores.rooms.room(&j).await {
                                if !rec.name.is_empty() {
                                    set_attr(&mut item, "name", rec.name);
                                }
                            }
                        }
                        q.append_child(item);
                    }
                }
                Ok(Some(q))
            }
            ("get", NS_UNIQUE, "unique") => {
                let mut u = Element::bare("unique", NS_UNIQUE);
                u.append_text(crate::stanza::random_id(9).to_lowercase());
                Ok(Some(u))
            }
            ("get", ns::PING, "ping") => Ok(None),
            _ => Err(simple_error(Cond::ServiceUnavailable, None)),
        }
    }
}

/// The one child of an IQ.
pub(crate) fn single_child(el: &Element) -> Option<&Element> {
    let mut c = el.children();
    match (c.next(), c.next()) {
        (Some(p), None) => Some(p),
        _ => None,
    }
}

/// The reply to an IQ get/set handled here: a result (with a payload) or
/// an error, from whom it was addressed to.
pub(crate) fn iq_reply(el: &Element, answer: crate::modules::IqResult) -> Option<Element> {
    match answer {
        Ok(payload) => {
            let mut r = element(
                "iq",
                ns::CLIENT,
                &[("type", "result"), ("id", el.attr("id").unwrap_or(""))],
            );
            if let Some(f) = el.attr("from") {
                set_attr(&mut r, "to", f);
            }
            if let Some(t) = el.attr("to") {
                set_attr(&mut r, "from", t);
            }
            if let Some(p) = payload {
                r.append_child(p);
            }
            Some(r)
        }
        Err(e) => crate::stanza::error_reply(el, e),
    }
}

async fn reply_iq(ctx: &Arc<Ctx>, el: &Element, answer: crate::modules::IqResult) {
    if let Some(r) = iq_reply(el, answer) {
        crate::router::route(ctx, r).await;
    }
}

impl Component for Service {
    fn handle<'a>(&'a self, ctx: &'a Arc<Ctx>, el: Element) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let to = match jid_attr(&el, "to") {
                Ok(Some(t)) => t,
                _ => return,
            };
            if to.node().is_none() {
                if to.resource().is_none() {
                    self.to_service(ctx, el).await;
                }
                return;
            }
            let room = to.bare();
            let (tx, rx) = oneshot::channel();
            self.send(ctx, &room, Cmd::Stanza(el, tx)).await;
            let _ = rx.await;
        })
    }
}

impl SharedConversations for Service {
    fn view<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        user: &'a BareJid,
        conv: &'a BareJid,
    ) -> BoxFuture<'a, StoreResult<Option<ViewMask>>> {
        Box::pin(async move {
            if !self.is_room(conv) {
                return Ok(None);
            }
            match ctx.stores.rooms.room(conv).await? {
                Some(r) if r.is_member(user.as_str()) => {
                    Ok(Some(ctx.stores.rooms.view(conv, user).await?))
                }
                _ => Ok(None),
            }
        })
    }

    fn of_user<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        user: &'a BareJid,
    ) -> BoxFuture<'a, StoreResult<Vec<BareJid>>> {
        Box::pin(async move {
            Ok(ctx
                .stores
                .rooms
                .rooms_of(user)
                .await?
                .iter()
                .filter_map(|r| BareJid::new(r).ok())
                .collect())
        })
    }

    fn name<'a>(&'a self, ctx: &'a Arc<Ctx>, conv: &'a BareJid) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            if !self.is_room(conv) {
                return None;
            }
            let r = ctx.stores.rooms.room(conv).await.ok()??;
            (!r.name.is_empty()).then_some(r.name)
        })
    }

    fn set_view<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        user: &'a BareJid,
        conv: &'a BareJid,
        view: ViewMask,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move { ctx.stores.rooms.put_view(conv, user, view).await })
    }
}

impl Listener for Service {
    fn on_event<'a>(&'a self, ctx: &'a Arc<Ctx>, ev: &'a Event<'a>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Event::UserDeleted { jid } = ev else {
                return;
            };
            let rooms = match ctx.stores.rooms.rooms_of(jid).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "rooms of a deleted account unreadable");
                    return;
                }
            };
            for r in rooms {
                if let Ok(room) = BareJid::new(&r) {
                    self.send(ctx, &room, Cmd::Forget((*jid).clone())).await;
                }
            }
        })
    }
}

/// The room a direct invitation (XEP-0249) names, if it is one of ours.
fn invited_room(svc: &Service, el: &Element) -> Option<BareJid> {
    if el.name() != "message" {
        return None;
    }
    let x = el.get_child("x", NS_CONFERENCE)?;
    let room = BareJid::new(x.attr("jid")?.trim()).ok()?;
    svc.is_room(&room).then_some(room)
}

/// A direct invitation from a member to a local user makes the invitee a
/// member (when the room has room), so that the join it leads to works.
struct DirectInvites {
    svc: Arc<Service>,
}

impl Processor for DirectInvites {
    fn process<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        from: &'a Jid,
        to: &'a Jid,
        el: &'a mut Element,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(room) = invited_room(&self.svc, el) else {
                return;
            };
            let invitee = to.bare();
            if !crate::modules::mam::is_local_user(ctx, &invitee) {
                return;
            }
            self.svc
                .send(
                    ctx,
                    &room,
                    Cmd::DirectInvite {
                        inviter: from.bare(),
                        invitee,
                    },
                )
                .await;
        })
    }
}

/// Rooms are for local users only (PRODUCT.md §5): a direct invitation
/// to one of our rooms for a user of another server is refused.
struct LocalOnly {
    svc: Arc<Service>,
}

impl Filter for LocalOnly {
    fn check<'a>(
        &'a self,
        ctx: &'a Ctx,
        _from: &'a Jid,
        to: &'a Jid,
        el: &'a Element,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            if invited_room(&self.svc, el).is_none() {
                return Verdict::Pass;
            }
            if ctx.is_account_address(to.node().is_some(), to.domain().as_str()) {
                return Verdict::Pass;
            }
            Verdict::Reject(Box::new(simple_error(
                Cond::Forbidden,
                Some(room::LOCAL_ONLY),
            )))
        })
    }
}

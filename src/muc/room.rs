// Stanza errors are the answer to one request, built once per request.
#![allow(clippy::result_large_err)]

//! One room: the task that owns its state, and everything it does with
//! the stanzas the service hands it (XEP-0045, with every member equal).
//!
//! What a room sends leaves in the order it was decided, through the
//! room's sender task: a message is reflected (with the room's
//! stanza-id) only once the archive has it on disk, and everything after
//! it waits its turn, so occupants see the room in one order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use minidom::Element;
use sha2::Digest;
use tokio::sync::mpsc;
use xmpp_parsers::jid::{BareJid, FullJid, Jid};
use xmpp_parsers::stanza_error::{DefinedCondition as Cond, StanzaError};

use super::forms::{self, AdminList, Affiliation, Who};
use super::{single_child, Cmd, Service, NS_ADMIN, NS_MUC, NS_OCCUPANT_ID, NS_OWNER};
use crate::modules::mam::is_local_user;
use crate::modules::{Event, IqRequest, IqResult, IqType, Target};
use crate::server::Ctx;
use crate::stanza::{
    element, jid_attr, remove_attr, set_attr, simple_error, stanza_type, Bare, Kind,
};
use crate::store::{ArchiveQuery, ArchiveWrite, RoomMember, RoomRecord, ViewMask};
use crate::xml::ns;

pub const LOCAL_ONLY: &str = "rooms are for users of this server only";
/// Messages of history sent on join at most (and by default).
pub const MAX_HISTORY: usize = 50;
const DEFAULT_HISTORY: usize = 20;
/// How long a room without occupants keeps its task.
const IDLE: Duration = Duration::from_secs(60);
/// Joins, nickname changes and presence updates per user: a burst of
/// this many, then one a second.
const BURST: f32 = 10.0;
const PER_SECOND: f32 = 1.0;
/// Former members remembered (who may rejoin by themselves).
const MAX_FORMER: usize = 1000;
/// IQs forwarded between occupants and not answered yet, at most.
const MAX_PENDING_IQS: usize = 256;

fn full_text(max: usize) -> String {
    format!("the room is full: it has {max} members, the most a room may have")
}

/// One occupant: a nickname, held by one user from one or more sessions.
struct Occupant {
    bare: BareJid,
    sessions: Vec<FullJid>,
    /// The last presence it sent, without addresses and MUC elements.
    presence: Element,
    occupant_id: String,
}

/// Something the room sends.
enum Send {
    /// Straight to an occupant's session (reflections, presence, history).
    Session(FullJid, Element),
    /// Through the router (errors, invitations, forwarded IQs).
    Route(Element),
}

/// A batch of sends, in order; `durable`: only once what the archive
/// holds is on disk.
struct Out {
    durable: bool,
    items: Vec<Send>,
}

/// A token bucket.
struct Bucket {
    tokens: f32,
    at: Instant,
}

/// An IQ forwarded from one occupant to another.
struct PendingIq {
    asker: Jid,
    id: String,
    /// Who must answer, and by which nickname the answer comes back.
    target: BareJid,
    target_nick: String,
}

struct Room {
    ctx: Arc<Ctx>,
    svc: Service,
    jid: BareJid,
    rec: Option<RoomRecord>,
    occupants: BTreeMap<String, Occupant>,
    by_session: HashMap<FullJid, String>,
    buckets: HashMap<BareJid, Bucket>,
    pending: HashMap<String, PendingIq>,
    pending_order: VecDeque<String>,
    out: mpsc::UnboundedSender<Out>,
}

/// The room's task: read the room, then take commands until it is idle.
pub(super) async fn run(
    ctx: Arc<Ctx>,
    svc: Service,
    jid: BareJid,
    tx: mpsc::Sender<Cmd>,
    mut rx: mpsc::Receiver<Cmd>,
) {
    let (out, out_rx) = mpsc::unbounded_channel();
    tokio::spawn(sender(ctx.clone(), tx.downgrade(), out_rx));
    let rec = match ctx.stores.rooms.room(&jid).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, room = %jid, "room unreadable");
            // Answer what waits, and let the next stanza try again.
            svc.retire(&jid, &tx, &rx);
            rx.close();
            while let Some(cmd) = rx.recv().await {
                if let Cmd::Stanza(el, done) = cmd {
                    if let Some(r) = crate::stanza::error_reply(
                        &el,
                        simple_error(Cond::InternalServerError, None),
                    ) {
                        crate::router::route(&ctx, r).await;
                    }
                    let _ = done.send(());
                }
            }
            return;
        }
    };
    let mut room = Room {
        ctx,
        svc: svc.clone(),
        jid: jid.clone(),
        rec,
        occupants: BTreeMap::new(),
        by_session: HashMap::new(),
        buckets: HashMap::new(),
        pending: HashMap::new(),
        pending_order: VecDeque::new(),
        out,
    };
    let mut stop = room.ctx.shutdown_signal();
    loop {
        // A room nobody is in ends its task after a while; one that does
        // not exist at once; every room when the server stops.
        let wait = match (room.occupants.is_empty(), room.rec.is_some()) {
            (false, _) => None,
            (true, true) => Some(IDLE),
            (true, false) => Some(Duration::ZERO),
        };
        let next = async {
            match wait {
                Some(w) => tokio::time::timeout(w, rx.recv()).await.ok(),
                None => Some(rx.recv().await),
            }
        };
        let cmd = tokio::select! {
            c = next => c,
            _ = crate::server::shutdown_requested(&mut stop) => break,
        };
        match cmd {
            Some(Some(c)) => room.handle(c).await,
            Some(None) => break,
            None => {
                if svc.retire(&jid, &tx, &rx) {
                    break;
                }
            }
        }
    }
}

/// Sends what the room decided, in order; waits for the archive's group
/// commit before a durable batch.
async fn sender(ctx: Arc<Ctx>, room: mpsc::WeakSender<Cmd>, mut rx: mpsc::UnboundedReceiver<Out>) {
    let mut batch: Vec<Out> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        let mut synced = true;
        if batch.iter().any(|o| o.durable) {
            if let Err(e) = ctx.stores.archive.sync().await {
                tracing::error!(error = %e, "room messages not on disk; not reflected");
                synced = false;
            }
        }
        for o in batch.drain(..) {
            if o.durable && !synced {
                continue;
            }
            for s in o.items {
                match s {
                    Send::Session(full, el) => {
                        let delivered = ctx
                            .sessions
                            .get(&full)
                            .is_some_and(|r| r.mailbox.deliver(el).is_ok());
                        if !delivered {
                            if let Some(tx) = room.upgrade() {
                                let _ = tx.try_send(Cmd::Gone(full));
                            }
                        }
                    }
                    Send::Route(el) => crate::router::route(&ctx, el).await,
                }
            }
        }
    }
}

/// The XEP-0421 id of a user in a room: stable, and telling nothing of
/// the user to anyone without the room's secret.
fn occupant_id(salt: &str, user: &BareJid) -> String {
    use base64::Engine;
    let mut h = sha2::Sha256::new();
    h.update(salt.as_bytes());
    h.update([0]);
    h.update(user.as_str().as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&h.finalize()[..16])
}

/// A presence as kept for an occupant: no addresses, no id, none of the
/// MUC elements the room adds itself.
fn kept_presence(el: &Element) -> Element {
    let mut p = el.clone();
    for a in ["from", "to", "id", "type"] {
        remove_attr(&mut p, a);
    }
    crate::stanza::retain_children(&mut p, |c| {
        !(c.is("x", NS_MUC) || c.is("x", ns::MUC_USER) || c.ns() == NS_OCCUPANT_ID)
    });
    p
}

fn status(code: &str) -> Element {
    element("status", ns::MUC_USER, &[("code", code)])
}

/// Whether a room message is kept in the room's archive: one with a body
/// or another payload a device needs to show the conversation, unless the
/// sender asked not to store it. Never chat states, receipts or markers
/// alone (those of 30 members would drown the messages).
fn room_archivable(el: &Element) -> bool {
    crate::modules::mam::keeps(el, false)
}

impl Room {
    fn rec(&self) -> Option<&RoomRecord> {
        self.rec.as_ref()
    }

    fn is_member(&self, user: &BareJid) -> bool {
        self.rec().is_some_and(|r| r.is_member(user.as_str()))
    }

    fn occupant_jid(&self, nick: &str) -> String {
        format!("{}/{}", self.jid, nick)
    }

    /// A message from the room itself (`typ`: its type, if any).
    fn room_message(&self, to: &str, typ: Option<&str>) -> Element {
        let id = crate::stanza::random_id(6);
        let mut attrs = vec![("from", self.jid.as_str()), ("to", to), ("id", id.as_str())];
        if let Some(t) = typ {
            attrs.push(("type", t));
        }
        element("message", ns::CLIENT, &attrs)
    }

    /// One stanza to each occupant's every session, made by `make`.
    fn to_everyone(&self, make: impl Fn(&FullJid) -> Element) -> Vec<Send> {
        self.occupants
            .values()
            .flat_map(|o| o.sessions.iter())
            .map(|s| Send::Session(s.clone(), make(s)))
            .collect()
    }

    /// `m` to every session in the room.
    fn copies(&self, m: &Element) -> Vec<Send> {
        self.to_everyone(|s| {
            let mut c = m.clone();
            set_attr(&mut c, "to", s.as_str());
            c
        })
    }

    fn emit(&self, durable: bool, items: Vec<Send>) {
        if !items.is_empty() {
            let _ = self.out.send(Out { durable, items });
        }
    }

    /// Answer `el` with an error (never to an error).
    fn error(&self, el: &Element, err: StanzaError) {
        if let Some(r) = crate::stanza::error_reply(el, err) {
            self.emit(false, vec![Send::Route(r)]);
        }
    }

    fn refuse(&self, el: &Element, cond: Cond, text: &str) {
        self.error(el, simple_error(cond, Some(text)));
    }

    /// Take one more join or presence change from `user`, if the bucket
    /// allows.
    fn allow(&mut self, user: &BareJid) -> bool {
        if self.buckets.len() > 4096 {
            self.buckets.clear();
        }
        let now = Instant::now();
        let b = self.buckets.entry(user.clone()).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f32() * PER_SECOND).min(BURST);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    async fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Stanza(el, done) => {
                self.stanza(el).await;
                let _ = done.send(());
            }
            Cmd::DirectInvite { inviter, invitee } => {
                if self.is_member(&inviter) && !self.is_member(&invitee) {
                    if let Err(e) = self
                        .change_members(&[(invitee.clone(), Affiliation::Member)])
                        .await
                    {
                        tracing::debug!(room = %self.jid, invitee = %invitee, error = ?e.texts, "invitee not added");
                    }
                }
            }
            Cmd::Forget(user) => {
                if self.is_member(&user) {
                    let _ = self.change_members(&[(user, Affiliation::None)]).await;
                }
            }
            Cmd::Gone(full) => self.leave_session(&full, &["333"]),
        }
    }

    async fn stanza(&mut self, el: Element) {
        let (Ok(Some(from)), Ok(Some(to))) = (jid_attr(&el, "from"), jid_attr(&el, "to")) else {
            return;
        };
        let nick = to.resource().map(|r| r.as_str().to_string());
        match (Kind::of(&el), nick) {
            (Some(Kind::Presence), Some(nick)) => self.presence(from, nick, el).await,
            (Some(Kind::Presence), None) => {
                if stanza_type(&el).is_empty() {
                    self.refuse(
                        &el,
                        Cond::JidMalformed,
                        "a join names a nickname: room@service/nickname",
                    );
                }
            }
            (Some(Kind::Message), None) => self.message(from, el).await,
            (Some(Kind::Message), Some(nick)) => self.private_message(from, nick, el),
            (Some(Kind::Iq), None) => self.iq(from, el).await,
            (Some(Kind::Iq), Some(nick)) => self.iq_to_occupant(from, nick, el),
            (None, _) => {}
        }
    }

    // ----- presence -----

    async fn presence(&mut self, from: Jid, nick: String, el: Element) {
        let Ok(full) = from.try_into_full() else {
            return;
        };
        let current = self.by_session.get(&full).cloned();
        match (stanza_type(&el), current) {
            ("error", Some(_)) => self.leave_session(&full, &["333"]),
            ("unavailable", Some(_)) => self.leave_session(&full, &[]),
            ("", Some(cur)) if cur == nick => {
                if el.has_child("x", NS_MUC) {
                    // A join from a session that is in already: it lost
                    // track; send it the room again.
                    self.welcome(&full, &nick, &el, false).await;
                } else {
                    self.update_presence(&full, &nick, &el);
                }
            }
            ("", Some(cur)) => self.change_nick(&full, &cur, &nick, &el).await,
            ("", None) => self.join(full, nick, el).await,
            // Subscriptions and probes are not for rooms.
            _ => {}
        }
    }

    async fn join(&mut self, full: FullJid, nick: String, el: Element) {
        let user = full.bare();
        if !is_local_user(&self.ctx, &user) {
            return self.refuse(&el, Cond::Forbidden, LOCAL_ONLY);
        }
        if !self.allow(&user) {
            return self.refuse(
                &el,
                Cond::ResourceConstraint,
                "too many joins and presence changes; wait a moment",
            );
        }
        if self.occupants.get(&nick).is_some_and(|o| o.bare != user) {
            return self.refuse(&el, Cond::Conflict, "this nickname is in use in the room");
        }
        let created = match self.admit(&user, &nick).await {
            Ok(c) => c,
            Err(e) => return self.error(&el, e),
        };
        let presence = kept_presence(&el);
        let salt = self.rec().map(|r| r.salt.clone()).unwrap_or_default();
        let occ = self
            .occupants
            .entry(nick.clone())
            .or_insert_with(|| Occupant {
                bare: user.clone(),
                sessions: Vec::new(),
                presence: presence.clone(),
                occupant_id: occupant_id(&salt, &user),
            });
        occ.presence = presence;
        occ.sessions.retain(|s| *s != full);
        occ.sessions.push(full.clone());
        self.by_session.insert(full.clone(), nick.clone());
        self.welcome(&full, &nick, &el, created).await;
    }

    /// Make `user` a member if they may be one (creating the room if it
    /// does not exist): `Ok(true)` when the room was created.
    async fn admit(&mut self, user: &BareJid, nick: &str) -> Result<bool, StanzaError> {
        let Some(rec) = &self.rec else {
            let rec = RoomRecord {
                jid: self.jid.to_string(),
                members: vec![RoomMember {
                    jid: user.to_string(),
                    nick: Some(nick.to_string()),
                }],
                salt: crate::stanza::random_id(16),
                created: chrono::Utc::now().timestamp(),
                ..Default::default()
            };
            self.save(rec).await?;
            tracing::info!(room = %self.jid, by = %user, "room created");
            self.membership(user, true).await;
            return Ok(true);
        };
        let mut rec = rec.clone();
        match rec.members.iter_mut().find(|m| m.jid == user.as_str()) {
            Some(m) => {
                if m.nick.as_deref() == Some(nick) {
                    return Ok(false);
                }
                m.nick = Some(nick.to_string());
                self.save(rec).await?;
                Ok(false)
            }
            None => {
                let max = self.svc.max_members;
                if rec.members.len() >= max {
                    return Err(simple_error(
                        Cond::ServiceUnavailable,
                        Some(&full_text(max)),
                    ));
                }
                if !rec.former.iter().any(|f| f == user.as_str()) {
                    return Err(simple_error(
                        Cond::RegistrationRequired,
                        Some("the room is for its members: a member adds or invites you"),
                    ));
                }
                // A former member rejoins by themselves.
                rec.former.retain(|f| f != user.as_str());
                rec.members.push(RoomMember {
                    jid: user.to_string(),
                    nick: Some(nick.to_string()),
                });
                self.save(rec).await?;
                self.membership(user, true).await;
                self.announce_affiliations(&[(user.clone(), Affiliation::Member)]);
                Ok(false)
            }
        }
    }

    /// Write the room's record (durable once done), and keep it.
    async fn save(&mut self, rec: RoomRecord) -> Result<(), StanzaError> {
        self.ctx
            .stores
            .rooms
            .put_room(rec.clone())
            .await
            .map_err(|e| crate::modules::store_failed("room write", e))?;
        self.rec = Some(rec);
        Ok(())
    }

    /// Tell the rest of the server a membership changed (bookmarks).
    async fn membership(&self, user: &BareJid, joined: bool) {
        let name = self.rec().map(|r| r.name.clone()).unwrap_or_default();
        let nick = self.rec().and_then(|r| {
            r.members
                .iter()
                .find(|m| m.jid == user.as_str())
                .and_then(|m| m.nick.clone())
        });
        self.ctx
            .registry
            .emit(
                &self.ctx,
                Event::Membership {
                    room: &self.jid,
                    user,
                    name: &name,
                    nick: nick.as_deref(),
                    joined,
                },
            )
            .await;
    }

    /// The `<x muc#user/>` of an occupant's presence.
    fn user_x(&self, jid: &str, affiliation: &str, role: &str, codes: &[&str]) -> Element {
        let mut x = Element::bare("x", ns::MUC_USER);
        x.append_child(element(
            "item",
            ns::MUC_USER,
            &[("affiliation", affiliation), ("role", role), ("jid", jid)],
        ));
        for c in codes {
            x.append_child(status(c));
        }
        x
    }

    /// An occupant's available presence, to one session.
    fn presence_to(&self, nick: &str, occ: &Occupant, to: &FullJid, codes: &[&str]) -> Element {
        let mut p = occ.presence.clone();
        set_attr(&mut p, "from", self.occupant_jid(nick));
        set_attr(&mut p, "to", to.as_str());
        let shown = occ
            .sessions
            .last()
            .map(|f| f.to_string())
            .unwrap_or_default();
        p.append_child(self.user_x(&shown, "member", "participant", codes));
        p.append_child(element(
            "occupant-id",
            NS_OCCUPANT_ID,
            &[("id", &occ.occupant_id)],
        ));
        p
    }

    /// An occupant's presence to everyone in the room (the status codes
    /// `own` to its own sessions too, with 110).
    fn broadcast_presence(&self, nick: &str, own: &[&str], others: &[&str]) -> Vec<Send> {
        let Some(occ) = self.occupants.get(nick) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (n, o) in &self.occupants {
            for s in &o.sessions {
                let p = if n == nick {
                    let mut codes = vec!["110"];
                    codes.extend_from_slice(own);
                    self.presence_to(nick, occ, s, &codes)
                } else {
                    self.presence_to(nick, occ, s, others)
                };
                out.push(Send::Session(s.clone(), p));
            }
        }
        out
    }

    /// What a session gets when it joins: everyone's presence, its own
    /// last (with its status codes), the history it asked for, and the
    /// subject. The others get its presence.
    async fn welcome(&mut self, full: &FullJid, nick: &str, join: &Element, created: bool) {
        let mut items = Vec::new();
        for (n, o) in &self.occupants {
            if n != nick {
                items.push(Send::Session(
                    full.clone(),
                    self.presence_to(n, o, full, &[]),
                ));
            }
        }
        let Some(occ) = self.occupants.get(nick) else {
            return;
        };
        let mut codes = vec!["110", "100", "170"];
        if created {
            codes.push("201");
        }
        let mut own = self.presence_to(nick, occ, full, &codes);
        if let Some(id) = join.attr("id") {
            set_attr(&mut own, "id", id);
        }
        items.push(Send::Session(full.clone(), own));
        for (n, o) in &self.occupants {
            for s in &o.sessions {
                if s == full {
                    continue;
                }
                let codes: &[&str] = if n == nick { &["110"] } else { &[] };
                items.push(Send::Session(
                    s.clone(),
                    self.presence_to(nick, occ, s, codes),
                ));
            }
        }
        let user = full.bare();
        for m in self.history(&user, full, join).await {
            items.push(Send::Session(full.clone(), m));
        }
        items.push(Send::Session(full.clone(), self.subject_to(full)));
        self.emit(false, items);
    }

    /// The subject message (XEP-0045 §7.2.15): always sent, empty when
    /// there is none.
    fn subject_to(&self, to: &FullJid) -> Element {
        let (subject, by) = match self.rec() {
            Some(r) => (r.subject.as_str(), r.subject_by.as_str()),
            None => ("", ""),
        };
        let from = if by.is_empty() {
            self.jid.to_string()
        } else {
            self.occupant_jid(by)
        };
        let mut m = self.room_message(to.as_str(), Some("groupchat"));
        set_attr(&mut m, "from", from);
        let mut s = Element::bare("subject", ns::CLIENT);
        s.append_text(subject);
        m.append_child(s);
        m
    }

    /// The history a join asks for (XEP-0045 §7.2.14), from the archive
    /// as the user's view shows it: 20 messages by default, at most 50.
    async fn history(&self, user: &BareJid, to: &FullJid, join: &Element) -> Vec<Element> {
        let h = join
            .get_child("x", NS_MUC)
            .and_then(|x| x.get_child("history", NS_MUC));
        let attr = |n: &'static str| h.and_then(|h| h.attr(n));
        let mut max = DEFAULT_HISTORY;
        if let Some(n) = attr("maxstanzas").and_then(|v| v.trim().parse::<usize>().ok()) {
            max = n.min(MAX_HISTORY);
        }
        let max_chars = attr("maxchars").and_then(|v| v.trim().parse::<usize>().ok());
        if max == 0 || max_chars == Some(0) {
            return Vec::new();
        }
        let mut start = None;
        if let Some(s) = attr("seconds").and_then(|v| v.trim().parse::<u64>().ok()) {
            let now = chrono::Utc::now().timestamp_micros().max(0) as u64;
            start = Some(now.saturating_sub(s.saturating_mul(1_000_000)));
        }
        if let Some(t) = attr("since").and_then(|v| crate::modules::mam::parse_time(v).ok()) {
            start = Some(start.map_or(t, |s: u64| s.max(t)));
        }
        let mask = match self.ctx.stores.rooms.view(&self.jid, user).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "room view unreadable");
                return Vec::new();
            }
        };
        let page = match self
            .ctx
            .stores
            .archive
            .query(ArchiveQuery {
                user: Some(self.jid.clone()),
                start,
                from_end: true,
                max,
                mask: Some(Arc::new(mask)),
                ..Default::default()
            })
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "room history unreadable");
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(page.items.len());
        for a in &page.items {
            let Ok(mut m) = crate::xml::parse(&a.xml) else {
                continue;
            };
            set_attr(&mut m, "to", to.as_str());
            crate::stanza::add_delay(
                &mut m,
                self.jid.as_str(),
                crate::modules::mam::stamp_of(a.id),
            );
            m.append_child(self.stanza_id(a.id));
            out.push(m);
        }
        if let Some(limit) = max_chars {
            // The newest that fit.
            let mut total = 0usize;
            let keep = out
                .iter()
                .rev()
                .take_while(|m| {
                    total += crate::xml::writer::to_bytes(m).len();
                    total <= limit
                })
                .count();
            out.drain(..out.len() - keep);
        }
        out
    }

    fn stanza_id(&self, id: u64) -> Element {
        element(
            "stanza-id",
            ns::SID,
            &[
                ("by", self.jid.as_str()),
                ("id", &crate::modules::mam::id_string(id)),
            ],
        )
    }

    fn update_presence(&mut self, full: &FullJid, nick: &str, el: &Element) {
        let user = full.bare();
        if !self.allow(&user) {
            // A flood of status changes is not copied to everyone.
            return;
        }
        if let Some(o) = self.occupants.get_mut(nick) {
            o.presence = kept_presence(el);
            o.sessions.retain(|s| s != full);
            o.sessions.push(full.clone());
        }
        let items = self.broadcast_presence(nick, &[], &[]);
        self.emit(false, items);
    }

    async fn change_nick(&mut self, full: &FullJid, old: &str, new: &str, el: &Element) {
        let user = full.bare();
        if self.occupants.get(new).is_some_and(|o| o.bare != user) {
            return self.refuse(el, Cond::Conflict, "this nickname is in use in the room");
        }
        if !self.allow(&user) {
            return self.refuse(
                el,
                Cond::ResourceConstraint,
                "too many joins and presence changes; wait a moment",
            );
        }
        let Some(occ) = self.occupants.remove(old) else {
            return;
        };
        // Everyone sees the old nickname go (303, with the new one)…
        let mut items = Vec::new();
        for (n, o) in self
            .occupants
            .iter()
            .chain(std::iter::once((&old.to_string(), &occ)))
        {
            for s in &o.sessions {
                let mut codes = vec!["303"];
                if n == old {
                    codes.push("110");
                }
                let shown = occ
                    .sessions
                    .last()
                    .map(|f| f.to_string())
                    .unwrap_or_default();
                let mut x = self.user_x(&shown, "member", "participant", &codes);
                if let Some(item) = x.get_child_mut("item", ns::MUC_USER) {
                    set_attr(item, "nick", new);
                }
                let mut p = element(
                    "presence",
                    ns::CLIENT,
                    &[
                        ("type", "unavailable"),
                        ("from", &self.occupant_jid(old)),
                        ("to", s.as_str()),
                    ],
                );
                p.append_child(x);
                p.append_child(element(
                    "occupant-id",
                    NS_OCCUPANT_ID,
                    &[("id", &occ.occupant_id)],
                ));
                items.push(Send::Session(s.clone(), p));
            }
        }
        self.emit(false, items);
        // …and the new one come, holding every session of the old one
        // (and of the new one, when it was the same user's).
        let mut occ = occ;
        occ.presence = kept_presence(el);
        let moved = occ.sessions.clone();
        match self.occupants.get_mut(new) {
            Some(existing) => {
                existing.sessions.extend(moved.iter().cloned());
                existing.presence = occ.presence;
            }
            None => {
                self.occupants.insert(new.to_string(), occ);
            }
        }
        for s in moved {
            self.by_session.insert(s, new.to_string());
        }
        let items = self.broadcast_presence(new, &[], &[]);
        self.emit(false, items);
        if let Some(mut rec) = self.rec.clone() {
            if let Some(m) = rec.members.iter_mut().find(|m| m.jid == user.as_str()) {
                m.nick = Some(new.to_string());
                let _ = self.save(rec).await;
            }
        }
    }

    /// A session leaves (`codes`: why, besides 110 to itself).
    fn leave_session(&mut self, full: &FullJid, codes: &[&str]) {
        let Some(nick) = self.by_session.remove(full) else {
            return;
        };
        let oid = self
            .occupants
            .get(&nick)
            .map(|o| o.occupant_id.clone())
            .unwrap_or_default();
        let mut items = Vec::new();
        let mut own = vec!["110"];
        own.extend_from_slice(codes);
        items.push(Send::Session(
            full.clone(),
            self.unavailable(&nick, &oid, full.as_str(), full, "member", &own),
        ));
        let last = match self.occupants.get_mut(&nick) {
            Some(o) => {
                o.sessions.retain(|s| s != full);
                o.sessions.is_empty()
            }
            None => false,
        };
        if last {
            self.occupants.remove(&nick);
            for other in self.occupants.values() {
                for s in &other.sessions {
                    items.push(Send::Session(
                        s.clone(),
                        self.unavailable(&nick, &oid, full.as_str(), s, "member", codes),
                    ));
                }
            }
        }
        self.emit(false, items);
    }

    /// An occupant's unavailable presence, to one session.
    fn unavailable(
        &self,
        nick: &str,
        occupant_id: &str,
        jid: &str,
        to: &FullJid,
        affiliation: &str,
        codes: &[&str],
    ) -> Element {
        let mut p = element(
            "presence",
            ns::CLIENT,
            &[
                ("type", "unavailable"),
                ("from", &self.occupant_jid(nick)),
                ("to", to.as_str()),
            ],
        );
        p.append_child(self.user_x(jid, affiliation, "none", codes));
        p.append_child(element(
            "occupant-id",
            NS_OCCUPANT_ID,
            &[("id", occupant_id)],
        ));
        p
    }

    /// Every session of `user` leaves the room, as removed from it (321);
    /// `extra`: a `<destroy/>` when the room goes.
    fn remove_user(&mut self, user: &BareJid, extra: Option<&Element>) {
        let nicks: Vec<String> = self
            .occupants
            .iter()
            .filter(|(_, o)| o.bare == *user)
            .map(|(n, _)| n.clone())
            .collect();
        let codes: &[&str] = if extra.is_some() { &[] } else { &["321"] };
        let mut items = Vec::new();
        for nick in nicks {
            let Some(o) = self.occupants.remove(&nick) else {
                continue;
            };
            let shown = o.sessions.last().map(|f| f.to_string()).unwrap_or_default();
            let targets = self
                .occupants
                .values()
                .flat_map(|x| x.sessions.iter())
                .map(|s| (s, false))
                .chain(o.sessions.iter().map(|s| (s, true)));
            for (s, own) in targets {
                let mut c: Vec<&str> = codes.to_vec();
                if own {
                    c.insert(0, "110");
                }
                let mut p = self.unavailable(&nick, &o.occupant_id, &shown, s, "none", &c);
                if let (Some(d), Some(x)) = (extra, p.get_child_mut("x", ns::MUC_USER)) {
                    x.append_child(d.clone());
                }
                items.push(Send::Session(s.clone(), p));
            }
            for s in &o.sessions {
                self.by_session.remove(s);
            }
        }
        self.emit(false, items);
    }

    // ----- membership -----

    /// Apply affiliation changes, all or none: members added (local
    /// accounts only, within the cap) and removed (a member removing
    /// themselves leaves). The room goes with its last member.
    async fn change_members(
        &mut self,
        changes: &[(BareJid, Affiliation)],
    ) -> Result<(), StanzaError> {
        let Some(old) = self.rec.clone() else {
            return Err(simple_error(Cond::ItemNotFound, None));
        };
        let mut rec = old.clone();
        for (jid, aff) in changes {
            if !is_local_user(&self.ctx, jid) {
                return Err(simple_error(Cond::Forbidden, Some(LOCAL_ONLY)));
            }
            match aff {
                Affiliation::Member => {
                    if rec.is_member(jid.as_str()) {
                        continue;
                    }
                    let exists = self
                        .ctx
                        .stores
                        .accounts
                        .exists(jid)
                        .map_err(|e| crate::modules::store_failed("account lookup", e))?;
                    if !exists {
                        return Err(simple_error(
                            Cond::ItemNotFound,
                            Some(&format!("there is no user {jid} here")),
                        ));
                    }
                    rec.former.retain(|f| f != jid.as_str());
                    rec.members.push(RoomMember {
                        jid: jid.to_string(),
                        nick: None,
                    });
                }
                Affiliation::None => {
                    if !rec.is_member(jid.as_str()) {
                        continue;
                    }
                    rec.members.retain(|m| m.jid != jid.as_str());
                    rec.former.retain(|f| f != jid.as_str());
                    rec.former.push(jid.to_string());
                    if rec.former.len() > MAX_FORMER {
                        let over = rec.former.len() - MAX_FORMER;
                        rec.former.drain(..over);
                    }
                }
            }
        }
        let max = self.svc.max_members;
        if rec.members.len() > max && rec.members.len() > old.members.len() {
            return Err(simple_error(Cond::NotAllowed, Some(&full_text(max))));
        }
        if rec.members == old.members {
            return Ok(());
        }
        let added: Vec<BareJid> = rec
            .members
            .iter()
            .filter(|m| !old.is_member(&m.jid))
            .filter_map(|m| BareJid::new(&m.jid).ok())
            .collect();
        let removed: Vec<BareJid> = old
            .members
            .iter()
            .filter(|m| !rec.is_member(&m.jid))
            .filter_map(|m| BareJid::new(&m.jid).ok())
            .collect();
        if rec.members.is_empty() {
            self.destroy("the last member left the room").await?;
            for u in &removed {
                self.forget_member(u).await;
            }
            return Ok(());
        }
        self.save(rec).await?;
        for u in &removed {
            self.remove_user(u, None);
            self.forget_member(u).await;
        }
        for u in &added {
            self.membership(u, true).await;
        }
        let mut changed: Vec<(BareJid, Affiliation)> = added
            .into_iter()
            .map(|u| (u, Affiliation::Member))
            .collect();
        changed.extend(removed.into_iter().map(|u| (u, Affiliation::None)));
        self.announce_affiliations(&changed);
        Ok(())
    }

    /// A former member's traces: their view of the archive and their
    /// journal entry for the room go, and the rest of the server is told.
    async fn forget_member(&self, user: &BareJid) {
        if let Err(e) = self
            .ctx
            .stores
            .rooms
            .put_view(&self.jid, user, ViewMask::default())
            .await
        {
            tracing::error!(error = %e, "room view not removed");
        }
        crate::modules::inbox::forget_conversation(&self.ctx, user, &self.jid).await;
        self.membership(user, false).await;
    }

    /// Tell the occupants whose affiliation changed (XEP-0045 §9.3: in a
    /// members-only room, for users in the room or not).
    fn announce_affiliations(&self, changed: &[(BareJid, Affiliation)]) {
        if changed.is_empty() {
            return;
        }
        let mut x = Element::bare("x", ns::MUC_USER);
        for (u, aff) in changed {
            let a = match aff {
                Affiliation::Member => "member",
                Affiliation::None => "none",
            };
            x.append_child(element(
                "item",
                ns::MUC_USER,
                &[("affiliation", a), ("jid", u.as_str())],
            ));
        }
        let items = self.to_everyone(|s| {
            let mut m = self.room_message(s.as_str(), None);
            m.append_child(x.clone());
            m
        });
        self.emit(false, items);
    }

    /// The room goes: its record, its archive and its members' views; the
    /// occupants are told.
    async fn destroy(&mut self, reason: &str) -> Result<(), StanzaError> {
        self.ctx
            .stores
            .rooms
            .delete_room(&self.jid)
            .await
            .map_err(|e| crate::modules::store_failed("room delete", e))?;
        tracing::info!(room = %self.jid, reason, "room destroyed");
        let mut d = Element::bare("destroy", ns::MUC_USER);
        let mut r = Element::bare("reason", ns::MUC_USER);
        r.append_text(reason);
        d.append_child(r);
        let users: Vec<BareJid> = self.occupants.values().map(|o| o.bare.clone()).collect();
        for u in users {
            self.remove_user(&u, Some(&d));
        }
        self.rec = None;
        self.occupants.clear();
        self.by_session.clear();
        Ok(())
    }

    // ----- messages -----

    async fn message(&mut self, from: Jid, el: Element) {
        let full = from.clone().try_into_full().ok();
        let nick = full.as_ref().and_then(|f| self.by_session.get(f).cloned());
        match stanza_type(&el) {
            "error" => {
                if let (Some(f), Some(_)) = (&full, &nick) {
                    self.leave_session(f, &["333"]);
                }
            }
            "groupchat" => match (full, nick) {
                (Some(full), Some(nick)) => self.groupchat(full, nick, el).await,
                _ => self.refuse(
                    &el,
                    Cond::NotAcceptable,
                    "only occupants send messages to the room: join it first",
                ),
            },
            _ => {
                if let Some(x) = el.get_child("x", ns::MUC_USER) {
                    let x = x.clone();
                    self.mediated(&from, &el, &x).await;
                } else if el.has_child("x", ns::DATA_FORMS) {
                    // Voice requests (XEP-0045 §8.6) and the like.
                    self.refuse(&el, Cond::NotAllowed, forms::EQUAL);
                } else if !matches!(stanza_type(&el), "headline") {
                    self.refuse(
                        &el,
                        Cond::BadRequest,
                        "messages to a room are of type groupchat",
                    );
                }
            }
        }
    }

    async fn groupchat(&mut self, full: FullJid, nick: String, el: Element) {
        let sender = full.bare();
        let mut m = el;
        crate::stanza::retain_children(&mut m, |c| c.ns() != NS_OCCUPANT_ID);
        set_attr(&mut m, "from", self.occupant_jid(&nick));
        remove_attr(&mut m, "to");
        if m.has_child("subject", ns::CLIENT) && !m.has_child("body", ns::CLIENT) {
            return self.set_subject(&nick, m).await;
        }
        if let Some(o) = self.occupants.get(&nick) {
            m.append_child(element(
                "occupant-id",
                NS_OCCUPANT_ID,
                &[("id", &o.occupant_id)],
            ));
        }
        let mut durable = false;
        if room_archivable(&m) {
            let id = self.ctx.stores.archive.next_id();
            let mut stored = m.clone();
            let mut x = Element::bare("x", ns::MUC_USER);
            x.append_child(element("item", ns::MUC_USER, &[("jid", sender.as_str())]));
            stored.append_child(x);
            let w = ArchiveWrite {
                id,
                pair: (self.jid.clone(), self.jid.clone()),
                owners: vec![self.jid.clone()],
                from: self.occupant_jid(&nick),
                to: self.jid.to_string(),
                xml: crate::xml::writer::to_string(&stored),
            };
            if let Err(e) = self.ctx.stores.archive.append(w).await {
                tracing::error!(error = %e, "room archive write failed");
                let mut orig = m.clone();
                set_attr(&mut orig, "from", full.as_str());
                set_attr(&mut orig, "to", self.jid.as_str());
                return self.refuse(
                    &orig,
                    Cond::InternalServerError,
                    "the message could not be stored",
                );
            }
            m.append_child(self.stanza_id(id));
            durable = true;
            if m.has_child("body", ns::CLIENT) {
                if let Some(rec) = self.rec() {
                    crate::modules::inbox::room_message(
                        &self.ctx,
                        rec,
                        &self.jid,
                        &sender,
                        &Jid::from(full.clone()),
                        id,
                        m.attr("id").unwrap_or(""),
                    )
                    .await;
                }
            }
        }
        let items = self.copies(&m);
        self.emit(durable, items);
    }

    async fn set_subject(&mut self, nick: &str, m: Element) {
        let text = m
            .get_child("subject", ns::CLIENT)
            .map(|s| s.text())
            .unwrap_or_default();
        if let Some(mut rec) = self.rec.clone() {
            rec.subject = text;
            rec.subject_by = nick.to_string();
            if self.save(rec).await.is_err() {
                return;
            }
        }
        let items = self.copies(&m);
        self.emit(false, items);
    }

    /// Mediated invitations and declines (XEP-0045 §7.8.2): a member's
    /// invitation makes the invitee a member.
    async fn mediated(&mut self, from: &Jid, el: &Element, x: &Element) {
        let user = from.bare();
        for inv in x.children().filter(|c| c.is("invite", ns::MUC_USER)) {
            if !self.is_member(&user) {
                return self.refuse(el, Cond::Forbidden, "only members invite to a room");
            }
            let Some(to) = inv.attr("to").and_then(|t| Jid::new(t.trim()).ok()) else {
                return self.refuse(el, Cond::JidMalformed, "an invitation names 'to'");
            };
            let invitee = to.to_bare();
            if let Err(e) = self
                .change_members(&[(invitee.clone(), Affiliation::Member)])
                .await
            {
                return self.error(el, e);
            }
            let name = self
                .rec()
                .map(|r| r.name.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| self.jid.to_string());
            let mut m = self.room_message(to.as_str(), None);
            let mut ux = Element::bare("x", ns::MUC_USER);
            let mut i = element("invite", ns::MUC_USER, &[("from", from.as_str())]);
            let reason = inv.get_child("reason", ns::MUC_USER).map(|r| r.text());
            if let Some(r) = &reason {
                let mut re = Element::bare("reason", ns::MUC_USER);
                re.append_text(r);
                i.append_child(re);
            }
            ux.append_child(i);
            m.append_child(ux);
            let mut body = Element::bare("body", ns::CLIENT);
            let mut text = format!("{user} invites you to the room {name} ({})", self.jid);
            if let Some(r) = reason.filter(|r| !r.trim().is_empty()) {
                text.push_str(&format!(": {r}"));
            }
            body.append_text(text);
            m.append_child(body);
            self.emit(false, vec![Send::Route(m)]);
        }
        for dec in x.children().filter(|c| c.is("decline", ns::MUC_USER)) {
            let Some(to) = dec.attr("to").and_then(|t| Jid::new(t.trim()).ok()) else {
                continue;
            };
            let mut m = self.room_message(to.as_str(), None);
            let mut ux = Element::bare("x", ns::MUC_USER);
            let mut d = element("decline", ns::MUC_USER, &[("from", from.as_str())]);
            for r in dec.children().filter(|c| c.is("reason", ns::MUC_USER)) {
                d.append_child(r.clone());
            }
            ux.append_child(d);
            m.append_child(ux);
            self.emit(false, vec![Send::Route(m)]);
        }
    }

    /// A private message to an occupant (XEP-0045 §7.5).
    fn private_message(&mut self, from: Jid, nick: String, el: Element) {
        match stanza_type(&el) {
            "error" => return,
            "groupchat" => {
                return self.refuse(
                    &el,
                    Cond::BadRequest,
                    "a groupchat message goes to the room's bare JID",
                )
            }
            _ => {}
        }
        let Some(sender_nick) = from
            .clone()
            .try_into_full()
            .ok()
            .and_then(|f| self.by_session.get(&f).cloned())
        else {
            return self.refuse(
                &el,
                Cond::NotAcceptable,
                "only occupants send private messages in the room: join it first",
            );
        };
        let Some(target) = self.occupants.get(&nick) else {
            return self.refuse(
                &el,
                Cond::ItemNotFound,
                "nobody of that nickname is in the room",
            );
        };
        let mut m = el.clone();
        crate::stanza::retain_children(&mut m, |c| c.ns() != NS_OCCUPANT_ID);
        set_attr(&mut m, "from", self.occupant_jid(&sender_nick));
        if !m.has_child("x", ns::MUC_USER) {
            m.append_child(Element::bare("x", ns::MUC_USER));
        }
        if let Some(o) = self.occupants.get(&sender_nick) {
            m.append_child(element(
                "occupant-id",
                NS_OCCUPANT_ID,
                &[("id", &o.occupant_id)],
            ));
        }
        let items = target
            .sessions
            .iter()
            .map(|s| {
                let mut c = m.clone();
                set_attr(&mut c, "to", s.as_str());
                Send::Session(s.clone(), c)
            })
            .collect();
        self.emit(false, items);
    }

    // ----- IQs -----

    async fn iq(&mut self, from: Jid, el: Element) {
        let typ = match stanza_type(&el) {
            "get" => IqType::Get,
            "set" => IqType::Set,
            _ => return,
        };
        let answer = match single_child(&el) {
            None => Err(crate::modules::bad_request("an IQ has exactly one child")),
            Some(p) => {
                let p = p.clone();
                self.room_iq(&from, &el, typ, p).await
            }
        };
        if let Some(r) = super::iq_reply(&el, answer) {
            self.emit(false, vec![Send::Route(r)]);
        }
    }

    async fn room_iq(&mut self, from: &Jid, el: &Element, typ: IqType, p: Element) -> IqResult {
        let user = from.bare();
        let Some(rec) = self.rec.clone() else {
            return Err(simple_error(Cond::ItemNotFound, Some("no such room")));
        };
        let member = rec.is_member(user.as_str());
        let pns = p.ns();
        // A room is never discoverable by anyone but its members.
        let members_only = |what: &str| -> Result<(), StanzaError> {
            if member {
                Ok(())
            } else {
                Err(simple_error(
                    Cond::Forbidden,
                    Some(&format!("only the room's members {what}")),
                ))
            }
        };
        match (typ, pns.as_str(), p.name()) {
            (IqType::Get, ns::DISCO_INFO, "query") => {
                if !member || p.attr("node").is_some() {
                    return Err(simple_error(Cond::ItemNotFound, None));
                }
                Ok(Some(forms::room_info(&rec, self.occupants.len())))
            }
            (IqType::Get, ns::DISCO_ITEMS, "query") => {
                if !member {
                    return Err(simple_error(Cond::ItemNotFound, None));
                }
                Ok(Some(Element::bare("query", ns::DISCO_ITEMS)))
            }
            (_, NS_ADMIN, "query") => {
                members_only("change or list the members")?;
                match typ {
                    IqType::Get => self.admin_list(&p),
                    IqType::Set => {
                        let changes = self.resolve(forms::parse_admin_set(&p)?)?;
                        self.change_members(&changes).await?;
                        Ok(None)
                    }
                }
            }
            (_, NS_OWNER, "query") => {
                members_only("change the room's settings")?;
                self.owner(&user, typ, &p).await
            }
            (_, ns::MAM, _) => {
                members_only("read the room's archive")?;
                let mask = self
                    .ctx
                    .stores
                    .rooms
                    .view(&self.jid, &user)
                    .await
                    .map_err(|e| crate::modules::store_failed("room view", e))?;
                self.ctx
                    .stores
                    .archive
                    .barrier()
                    .await
                    .map_err(|e| crate::modules::store_failed("room archive", e))?;
                let req = IqRequest {
                    id: el.attr("id").unwrap_or("").to_string(),
                    from: from.clone(),
                    target: Target::Server,
                    typ,
                    payload: p.clone(),
                };
                crate::modules::mam::answer(&self.ctx, &req, &self.jid, Some(Arc::new(mask))).await
            }
            (IqType::Get, ns::PING, "ping") => Ok(None),
            (IqType::Get, ns::VCARD, "vCard") => {
                if !member {
                    return Err(simple_error(Cond::ItemNotFound, None));
                }
                Ok(Some(Element::bare("vCard", ns::VCARD)))
            }
            _ => Err(simple_error(Cond::ServiceUnavailable, None)),
        }
    }

    /// The members (by affiliation) or occupants (by role) a muc#admin
    /// get asks for.
    fn admin_list(&self, p: &Element) -> IqResult {
        let mut q = Element::bare("query", NS_ADMIN);
        match forms::parse_admin_get(p)? {
            AdminList::Members => {
                for m in self.rec().map(|r| r.members.as_slice()).unwrap_or(&[]) {
                    let mut it = element(
                        "item",
                        NS_ADMIN,
                        &[("affiliation", "member"), ("jid", &m.jid)],
                    );
                    if let Some(n) = &m.nick {
                        set_attr(&mut it, "nick", n);
                    }
                    q.append_child(it);
                }
            }
            AdminList::Occupants => {
                for (n, o) in &self.occupants {
                    q.append_child(element(
                        "item",
                        NS_ADMIN,
                        &[
                            ("affiliation", "member"),
                            ("role", "participant"),
                            ("nick", n),
                            ("jid", o.bare.as_str()),
                        ],
                    ));
                }
            }
            AdminList::Nobody => {}
        }
        Ok(Some(q))
    }

    /// Items by nickname name the occupant's user.
    fn resolve(
        &self,
        items: Vec<(Who, Affiliation)>,
    ) -> Result<Vec<(BareJid, Affiliation)>, StanzaError> {
        items
            .into_iter()
            .map(|(who, aff)| match who {
                Who::Jid(j) => Ok((j, aff)),
                Who::Nick(n) => self
                    .occupants
                    .get(&n)
                    .map(|o| (o.bare.clone(), aff))
                    .or_else(|| {
                        self.rec()
                            .and_then(|r| r.members.iter().find(|m| m.nick.as_deref() == Some(&n)))
                            .and_then(|m| BareJid::new(&m.jid).ok())
                            .map(|j| (j, aff))
                    })
                    .ok_or_else(|| {
                        simple_error(Cond::ItemNotFound, Some("nobody of that nickname here"))
                    }),
            })
            .collect()
    }

    /// muc#owner: the configuration form, its submission (the name and
    /// description), and destruction, which only a room's last member may
    /// ask for (otherwise a room goes when its last member leaves).
    async fn owner(&mut self, user: &BareJid, typ: IqType, p: &Element) -> IqResult {
        let Some(rec) = self.rec.clone() else {
            return Err(simple_error(Cond::ItemNotFound, None));
        };
        if typ == IqType::Get {
            return Ok(Some(forms::config_form(&rec)));
        }
        if p.has_child("destroy", NS_OWNER) {
            if rec.members.len() > 1 || !rec.is_member(user.as_str()) {
                return Err(simple_error(
                    Cond::NotAllowed,
                    Some("a room goes when its last member leaves; leave it instead"),
                ));
            }
            self.destroy("the room was destroyed by its last member")
                .await?;
            self.forget_member(user).await;
            return Ok(None);
        }
        let Some(x) = p.get_child("x", ns::DATA_FORMS) else {
            return Err(crate::modules::bad_request(
                "a muc#owner set holds a data form or <destroy/>",
            ));
        };
        match x.attr("type") {
            Some("cancel") => return Ok(None),
            Some("submit") => {}
            _ => {
                return Err(crate::modules::bad_request(
                    "the form is submitted with type 'submit'",
                ))
            }
        }
        let change = forms::parse_config(x, self.svc.max_members)?;
        let mut new = rec.clone();
        if let Some(n) = change.name {
            new.name = n;
        }
        if let Some(d) = change.description {
            new.description = d;
        }
        if new == rec {
            return Ok(None);
        }
        let renamed = new.name != rec.name;
        self.save(new).await?;
        // XEP-0045 §10.2.1: occupants hear of a configuration change.
        let items = self.to_everyone(|s| {
            let mut m = self.room_message(s.as_str(), Some("groupchat"));
            let mut ux = Element::bare("x", ns::MUC_USER);
            ux.append_child(status("104"));
            m.append_child(ux);
            m
        });
        self.emit(false, items);
        if renamed {
            if let Some(r) = self.rec.clone() {
                for m in &r.members {
                    if let Ok(u) = BareJid::new(&m.jid) {
                        self.membership(&u, true).await;
                    }
                }
            }
        }
        Ok(None)
    }

    /// An IQ to an occupant: self-ping answered here (XEP-0410), others
    /// forwarded to the occupant, and their answers back.
    fn iq_to_occupant(&mut self, from: Jid, nick: String, el: Element) {
        let typ = stanza_type(&el);
        if matches!(typ, "result" | "error") {
            let Some(id) = el.attr("id") else {
                return;
            };
            let Some(p) = self.pending.remove(id) else {
                return;
            };
            if from.bare() != p.target {
                return;
            }
            let mut r = el.clone();
            set_attr(&mut r, "from", self.occupant_jid(&p.target_nick));
            set_attr(&mut r, "to", p.asker.as_str());
            set_attr(&mut r, "id", p.id);
            self.emit(false, vec![Send::Route(r)]);
            return;
        }
        if !matches!(typ, "get" | "set") {
            return;
        }
        let Some(own) = from
            .clone()
            .try_into_full()
            .ok()
            .and_then(|f| self.by_session.get(&f).cloned())
        else {
            return self.refuse(&el, Cond::NotAcceptable, "you are not in the room");
        };
        let Some(target) = self.occupants.get(&nick) else {
            return self.refuse(
                &el,
                Cond::ItemNotFound,
                "nobody of that nickname is in the room",
            );
        };
        let payload = single_child(&el);
        let ping = payload.is_some_and(|p| p.is("ping", ns::PING));
        if own == nick && ping {
            if let Some(r) = super::iq_reply(&el, Ok(None)) {
                self.emit(false, vec![Send::Route(r)]);
            }
            return;
        }
        let to = if payload.is_some_and(|p| p.ns() == ns::VCARD) {
            target.bare.to_string()
        } else {
            match target.sessions.last() {
                Some(s) => s.to_string(),
                None => return,
            }
        };
        let new_id = crate::stanza::random_id(9);
        self.pending.insert(
            new_id.clone(),
            PendingIq {
                asker: from,
                id: el.attr("id").unwrap_or("").to_string(),
                target: target.bare.clone(),
                target_nick: nick.clone(),
            },
        );
        self.pending_order.push_back(new_id.clone());
        while self.pending_order.len() > MAX_PENDING_IQS {
            if let Some(old) = self.pending_order.pop_front() {
                self.pending.remove(&old);
            }
        }
        let mut f = el.clone();
        set_attr(&mut f, "from", self.occupant_jid(&own));
        set_attr(&mut f, "to", to);
        set_attr(&mut f, "id", new_id);
        self.emit(false, vec![Send::Route(f)]);
    }
}

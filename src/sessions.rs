//! Who is online: bare JID → bound resources, with each resource's mailbox,
//! presence and interests. Sharded so that routing takes no global lock;
//! no lock is ever held across an await.

use crate::stanza::Bare;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use minidom::Element;
use tokio::sync::Notify;
use xmpp_parsers::jid::{BareJid, FullJid};
use xmpp_parsers::stream_error::DefinedCondition as StreamCondition;

const SHARDS: usize = 64;

/// What becomes of a queued stanza that was not written to its session
/// (the session died, or stopped reading and was disconnected). Until
/// stream management acknowledges stanzas, "written" means handed to the
/// socket; anything short of that is routed again or kept, never dropped
/// when it matters.
#[derive(Debug, Clone)]
pub enum Fate {
    /// Nothing is lost by not writing it: presence, pushes, carbon copies,
    /// IQ results and errors, headlines.
    Drop,
    /// Routed again by its `to`: a message falls back to the account's
    /// other resources or offline storage (RFC 6121 §8.5.3.2.1), an IQ
    /// request is answered with an error.
    Reroute,
    /// One of several copies of a message to a bare JID: routed again only
    /// when no copy was written, so the other resources do not get it twice.
    Copy(Arc<CopyGroup>),
    /// Read from offline storage: deleted there once written, kept
    /// otherwise.
    Stored(u64),
}

impl Fate {
    /// The fate of a stanza delivered to one session.
    pub fn of(el: &Element) -> Fate {
        match (el.name(), crate::stanza::stanza_type(el)) {
            ("iq", "get" | "set") => Fate::Reroute,
            ("message", "" | "normal" | "chat") => {
                // A carbon copy is a copy: the original went elsewhere.
                if el.children().any(|c| c.ns() == crate::xml::ns::CARBONS) {
                    Fate::Drop
                } else {
                    Fate::Reroute
                }
            }
            _ => Fate::Drop,
        }
    }
}

/// The copies of one message delivered to several resources.
#[derive(Debug)]
pub struct CopyGroup {
    unsettled: AtomicUsize,
    written: AtomicBool,
}

impl CopyGroup {
    pub fn new(copies: usize) -> Arc<CopyGroup> {
        Arc::new(CopyGroup {
            unsettled: AtomicUsize::new(copies),
            written: AtomicBool::new(false),
        })
    }

    /// One copy was written (`true`) or will never be. Returns whether the
    /// message must be routed again: this was the last copy to settle and
    /// none was written.
    pub fn settle(&self, written: bool) -> bool {
        if written {
            self.written.store(true, Ordering::Release);
        }
        let last = self.unsettled.fetch_sub(1, Ordering::AcqRel) == 1;
        last && !self.written.load(Ordering::Acquire)
    }
}

/// A stanza waiting in a session's queue, serialized as a child of a
/// `jabber:client` stream: what waits costs its size, not its element
/// tree, and copies of one stanza share one buffer.
#[derive(Debug)]
pub struct Queued {
    pub xml: Arc<[u8]>,
    pub fate: Fate,
}

/// Accounting overhead of one queued item besides its bytes.
const ITEM_OVERHEAD: usize = 64;

impl Queued {
    fn cost(&self) -> usize {
        self.xml.len() + ITEM_OVERHEAD
    }
}

/// Something a session is asked to do besides writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Deliver the account's offline messages (a drain was handed to it).
    DrainOffline,
}

/// What a session's mailbox carries.
#[derive(Debug)]
pub enum Outbound {
    Stanza(Queued),
    /// End the stream with this error (conflict, account deleted, …).
    Close(Box<(StreamCondition, String)>),
    Control(Control),
}

tokio::task_local! {
    /// What routing one stanza from a client (session `.0`) delivered to
    /// other sessions: bytes in all (`.1`) and its largest copy (`.2`).
    static FANOUT: std::cell::Cell<(u64, usize, usize)>;
}

/// Run `f` (the routing of one stanza from session `own`) and return what
/// it delivered to other sessions beyond one copy: the cost of its
/// fan-out, which is charged to the sender's read budget.
pub async fn measure_fanout<F: std::future::Future<Output = ()>>(own: u64, f: F) -> usize {
    FANOUT
        .scope(std::cell::Cell::new((own, 0, 0)), async move {
            f.await;
            FANOUT.with(|c| {
                let (_, total, largest) = c.get();
                total - largest
            })
        })
        .await
}

fn count_fanout(to: u64, bytes: usize) {
    let _ = FANOUT.try_with(|c| {
        let (own, total, largest) = c.get();
        if own != to {
            c.set((own, total.saturating_add(bytes), largest.max(bytes)));
        }
    });
}

struct Queue {
    items: VecDeque<Outbound>,
    /// Bytes of the queued stanzas (with a per-item overhead).
    bytes: usize,
}

/// The queue between everyone who delivers to a session and the session
/// task that writes to its socket. An empty queue holds no buffer, so an
/// idle session costs only this struct.
struct Shared {
    queue: Mutex<Queue>,
    /// Items and bytes the queue may hold (u32: this struct is kept by
    /// every session).
    capacity: u32,
    capacity_bytes: u32,
    /// Something was queued, or the session was killed.
    ready: Notify,
    /// The queue overflowed: the session is not reading and must end.
    killed: AtomicBool,
    /// The session stopped taking deliveries.
    closed: AtomicBool,
    /// The connection is gone and the session waits to be resumed
    /// (XEP-0198): deliveries wait, the idle sweeper leaves it alone, and
    /// it takes no offline drain.
    parked: AtomicBool,
    /// When the client last sent anything (server clock seconds), and when
    /// the idle sweeper pinged it (0: not pinged since).
    last_rx: AtomicU64,
    pinged_at: AtomicU64,
}

/// What the idle sweeper should do about a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    Active,
    /// Silent for the idle time: ping it.
    Ping,
    /// Pinged and silent for the idle time again: end it.
    TimedOut,
}

/// A handle to deliver to one session.
#[derive(Clone)]
pub struct Mailbox {
    pub id: u64,
    shared: Arc<Shared>,
}

/// Delivery to a session failed; the stanza comes back to the caller.
pub struct Undelivered(pub Box<Element>);

/// Serialize a stanza as it is written to a client stream.
pub fn serialize(el: &Element) -> Arc<[u8]> {
    crate::xml::writer::to_bytes(el).into()
}

impl Mailbox {
    /// Queue a stanza, to be routed again if it is not written when it
    /// matters ([`Fate::of`]). A session whose queue is full is not
    /// reading: it is told to close, and the stanza is handed back.
    pub fn deliver(&self, el: Element) -> Result<(), Undelivered> {
        let fate = Fate::of(&el);
        match self.deliver_bytes(serialize(&el), fate) {
            Ok(()) => Ok(()),
            Err(_) => Err(Undelivered(Box::new(el))),
        }
    }

    /// Queue an already serialized stanza. On refusal the item comes back.
    pub fn deliver_bytes(&self, xml: Arc<[u8]>, fate: Fate) -> Result<(), Queued> {
        let item = Queued { xml, fate };
        let cost = item.cost();
        let sh = &self.shared;
        {
            let mut q = sh.queue.lock().unwrap_or_else(|p| p.into_inner());
            if sh.closed.load(Ordering::Acquire) || sh.killed.load(Ordering::Acquire) {
                return Err(item);
            }
            if q.items.len() >= sh.capacity as usize
                || q.bytes.saturating_add(cost) > sh.capacity_bytes as usize
            {
                drop(q);
                if !sh.killed.swap(true, Ordering::AcqRel) {
                    tracing::warn!(session = self.id, "session queue full; disconnecting it");
                }
                sh.ready.notify_one();
                return Err(item);
            }
            q.bytes += cost;
            q.items.push_back(Outbound::Stanza(item));
        }
        count_fanout(self.id, cost - ITEM_OVERHEAD);
        sh.ready.notify_one();
        Ok(())
    }

    /// Ask the session to do something (queued after what waits, whatever
    /// the queue's length). `false` if it takes nothing any more.
    pub fn control(&self, c: Control) -> bool {
        self.push_unbounded(Outbound::Control(c))
    }

    /// Ask the session to end with a stream error (queued after what is
    /// already waiting, whatever the queue's length).
    pub fn close(&self, cond: StreamCondition, text: &str) {
        self.push_unbounded(Outbound::Close(Box::new((cond, text.to_string()))));
    }

    fn push_unbounded(&self, item: Outbound) -> bool {
        let sh = &self.shared;
        {
            let mut q = sh.queue.lock().unwrap_or_else(|p| p.into_inner());
            if sh.closed.load(Ordering::Acquire) {
                return false;
            }
            q.items.push_back(item);
        }
        sh.ready.notify_one();
        true
    }

    /// The idle state at server clock `now` for an idle time of `idle`
    /// seconds; `Ping` also records the ping.
    pub fn idle_check(&self, now: u64, idle: u64) -> Idle {
        let sh = &self.shared;
        if sh.parked.load(Ordering::Acquire) {
            return Idle::Active;
        }
        let pinged = sh.pinged_at.load(Ordering::Acquire);
        if pinged != 0 {
            return if now.saturating_sub(pinged) >= idle {
                Idle::TimedOut
            } else {
                Idle::Active
            };
        }
        if now.saturating_sub(sh.last_rx.load(Ordering::Acquire)) >= idle {
            sh.pinged_at.store(now.max(1), Ordering::Release);
            return Idle::Ping;
        }
        Idle::Active
    }

    /// Whether the session still takes deliveries and has a connection to
    /// write them to.
    pub fn is_open(&self) -> bool {
        !self.shared.closed.load(Ordering::Acquire)
            && !self.shared.killed.load(Ordering::Acquire)
            && !self.shared.parked.load(Ordering::Acquire)
    }
}

/// The session side of a mailbox.
pub struct Inbox {
    shared: Arc<Shared>,
}

impl Inbox {
    /// The next queued item, without waiting.
    pub fn try_recv(&self) -> Option<Outbound> {
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        let item = q.items.pop_front();
        if let Some(Outbound::Stanza(s)) = &item {
            q.bytes = q.bytes.saturating_sub(s.cost());
        }
        if q.items.is_empty() && q.items.capacity() > 0 {
            // Give the buffer back: idle sessions keep none.
            q.items = VecDeque::new();
            q.bytes = 0;
        }
        item
    }

    /// Bytes waiting in the queue.
    pub fn queued_bytes(&self) -> usize {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bytes
    }

    /// The next queued item; `None` once closed and drained. Cancel-safe:
    /// nothing is taken from the queue unless it is returned. After an
    /// overflow it is the `resource-constraint` close.
    pub async fn recv(&self) -> Option<Outbound> {
        loop {
            if self.is_killed() {
                return Some(Outbound::Close(Box::new((
                    StreamCondition::ResourceConstraint,
                    "too many stanzas waiting; the client is not reading".into(),
                ))));
            }
            if let Some(item) = self.try_recv() {
                return Some(item);
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return None;
            }
            // A delivery between the check and here leaves a permit, so
            // this cannot miss it.
            self.shared.ready.notified().await;
        }
    }

    pub fn is_killed(&self) -> bool {
        self.shared.killed.load(Ordering::Acquire)
    }

    /// Resolves when the queue overflowed (the session must end). Only for
    /// use while not in `recv` (it takes `recv`'s wake-ups; `recv` checks
    /// the queue itself first, so none is lost).
    pub async fn killed(&self) {
        while !self.is_killed() {
            self.shared.ready.notified().await;
        }
    }

    /// The client sent something at server clock `now`.
    pub fn touch(&self, now: u64) {
        self.shared.last_rx.store(now, Ordering::Release);
        self.shared.pinged_at.store(0, Ordering::Release);
    }

    /// The connection went away and the session waits to be resumed
    /// (`true`), or it has a connection again (`false`).
    pub fn set_parked(&self, parked: bool) {
        self.shared.parked.store(parked, Ordering::Release);
    }

    /// Take no more deliveries (they fail and return to their senders).
    pub fn close(&self) {
        let _q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        self.shared.closed.store(true, Ordering::Release);
    }

    /// Close and take everything still queued.
    pub fn close_and_take(&self) -> Vec<Outbound> {
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        self.shared.closed.store(true, Ordering::Release);
        q.bytes = 0;
        std::mem::take(&mut q.items).into()
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.close();
    }
}

/// A mailbox for a session whose client was last heard from at `now`,
/// holding at most `capacity` items and `capacity_bytes` bytes.
pub fn mailbox(id: u64, capacity: usize, capacity_bytes: usize, now: u64) -> (Mailbox, Inbox) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            items: VecDeque::new(),
            bytes: 0,
        }),
        capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
        capacity_bytes: u32::try_from(capacity_bytes).unwrap_or(u32::MAX),
        ready: Notify::new(),
        killed: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        parked: AtomicBool::new(false),
        last_rx: AtomicU64::new(now),
        pinged_at: AtomicU64::new(0),
    });
    (
        Mailbox {
            id,
            shared: shared.clone(),
        },
        Inbox { shared },
    )
}

/// One bound resource.
#[derive(Clone)]
pub struct Resource {
    pub full: FullJid,
    pub mailbox: Mailbox,
    /// Sent available presence (and not unavailable since).
    pub available: bool,
    pub priority: i8,
    /// Its available presence says `<show>dnd</show>`.
    pub dnd: bool,
    /// The last available presence broadcast, serialized without `from`
    /// and `to`: a few dozen bytes per session instead of an element tree.
    pub presence: Option<Arc<str>>,
    /// The `Interest`s this session declared, one bit each.
    interests: u8,
}

impl Resource {
    pub fn wants(&self, interest: Interest) -> bool {
        self.interests & interest.bit() != 0
    }

    /// This resource's current presence, from it to `to` (`None` when it
    /// is not available).
    pub fn presence_to(&self, to: &str) -> Option<Element> {
        let stored = self.presence.as_ref().filter(|_| self.available)?;
        let mut p = crate::xml::parse(stored).ok()?;
        crate::stanza::set_attr(&mut p, "from", self.full.as_str());
        crate::stanza::set_attr(&mut p, "to", to);
        Some(p)
    }
}

/// What a session can ask to be sent besides stanzas addressed to it.
#[derive(Clone, Copy, Debug)]
pub enum Interest {
    /// Asked for the roster, so gets roster pushes (RFC 6121 §2.1.6).
    Roster = 1,
    /// Asked for the block list, so gets block list pushes (XEP-0191).
    BlockList = 2,
    /// Enabled message carbons (XEP-0280).
    Carbons = 4,
    /// Asked for authorization levels, so gets their pushes
    /// (`urn:confab:authz:0`).
    Authz = 8,
}

impl Interest {
    fn bit(self) -> u8 {
        self as u8
    }
}

/// The account has as many resources bound as it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyResources;

pub struct Sessions {
    shards: Vec<RwLock<HashMap<BareJid, Vec<Resource>>>>,
    next_id: AtomicU64,
    count: AtomicU64,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new()
    }
}

impl Sessions {
    pub fn new() -> Self {
        Sessions {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            next_id: AtomicU64::new(1),
            count: AtomicU64::new(0),
        }
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn shard(&self, bare: &BareJid) -> &RwLock<HashMap<BareJid, Vec<Resource>>> {
        let mut h = DefaultHasher::new();
        bare.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    fn read<R>(&self, bare: &BareJid, f: impl FnOnce(Option<&Vec<Resource>>) -> R) -> R {
        let shard = self.shard(bare).read().unwrap_or_else(|p| p.into_inner());
        f(shard.get(bare))
    }

    fn write<R>(
        &self,
        bare: &BareJid,
        f: impl FnOnce(&mut HashMap<BareJid, Vec<Resource>>) -> R,
    ) -> R {
        let mut shard = self.shard(bare).write().unwrap_or_else(|p| p.into_inner());
        f(&mut shard)
    }

    /// Bind a resource, unless the account has `max_resources` bound
    /// already (0: no limit). A session already bound to the same full JID
    /// is replaced (it does not count against the limit); it is returned
    /// so the caller can close it and announce it gone.
    pub fn bind(
        &self,
        full: FullJid,
        mailbox: Mailbox,
        max_resources: usize,
    ) -> Result<Option<Resource>, TooManyResources> {
        let bare = full.bare();
        let replaced = self.write(&bare, |m| {
            let list = m.entry(bare.clone()).or_default();
            let old = list.iter().position(|r| r.full == full);
            if old.is_none() && max_resources > 0 && list.len() >= max_resources {
                return Err(TooManyResources);
            }
            let old = old.map(|i| list.swap_remove(i));
            list.push(Resource {
                full,
                mailbox,
                available: false,
                priority: 0,
                dnd: false,
                presence: None,
                interests: 0,
            });
            Ok(old)
        })?;
        if replaced.is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(replaced)
    }

    /// Remove a session (only if it is still the one with this id).
    pub fn unbind(&self, full: &FullJid, id: u64) -> bool {
        let bare = full.bare();
        let removed = self.write(&bare, |m| {
            let Some(list) = m.get_mut(&bare) else {
                return false;
            };
            let before = list.len();
            list.retain(|r| !(r.full == *full && r.mailbox.id == id));
            let removed = list.len() != before;
            if list.is_empty() {
                m.remove(&bare);
            }
            removed
        });
        if removed {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Record a presence change. Returns whether the resource was
    /// available before.
    pub fn set_presence(
        &self,
        full: &FullJid,
        id: u64,
        presence: Option<Arc<str>>,
        priority: i8,
        dnd: bool,
    ) -> bool {
        let bare = full.bare();
        self.write(&bare, |m| {
            let Some(r) = m
                .get_mut(&bare)
                .and_then(|l| l.iter_mut().find(|r| r.mailbox.id == id))
            else {
                return false;
            };
            let was = r.available;
            r.available = presence.is_some();
            r.priority = priority;
            r.dnd = dnd && r.available;
            r.presence = presence;
            was
        })
    }

    /// Record whether a session wants pushes or copies of a kind. Returns
    /// whether the session exists.
    pub fn set_interest(&self, full: &FullJid, interest: Interest, on: bool) -> bool {
        let bare = full.bare();
        self.write(&bare, |m| {
            let Some(r) = m
                .get_mut(&bare)
                .and_then(|l| l.iter_mut().find(|r| r.full == *full))
            else {
                return false;
            };
            if on {
                r.interests |= interest.bit();
            } else {
                r.interests &= !interest.bit();
            }
            true
        })
    }

    /// The session bound to a full JID.
    pub fn get(&self, full: &FullJid) -> Option<Resource> {
        self.read(&full.bare(), |l| {
            l.and_then(|l| l.iter().find(|r| r.full == *full).cloned())
        })
    }

    /// All resources of a user (a snapshot).
    pub fn resources(&self, bare: &BareJid) -> Vec<Resource> {
        self.read(bare, |l| l.cloned().unwrap_or_default())
    }

    /// The resources of a user that satisfy `f` (a snapshot; nothing is
    /// allocated when none does).
    pub fn resources_where(&self, bare: &BareJid, f: impl Fn(&Resource) -> bool) -> Vec<Resource> {
        self.read(bare, |l| {
            l.map(|l| l.iter().filter(|r| f(r)).cloned().collect())
                .unwrap_or_default()
        })
    }

    /// Whether the user has resources matching `which`, and `all` of
    /// them satisfy `pred` (looked at in place, nothing copied).
    pub fn all_where(
        &self,
        bare: &BareJid,
        which: impl Fn(&Resource) -> bool,
        pred: impl Fn(&Resource) -> bool,
    ) -> bool {
        self.read(bare, |l| {
            l.is_some_and(|l| {
                let mut some = false;
                for r in l.iter().filter(|r| which(r)) {
                    if !pred(r) {
                        return false;
                    }
                    some = true;
                }
                some
            })
        })
    }

    /// Whether the user has any available resource.
    pub fn is_available(&self, bare: &BareJid) -> bool {
        self.read(bare, |l| l.is_some_and(|l| l.iter().any(|r| r.available)))
    }

    /// Number of bound sessions.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Visit every session without copying the registry (the idle sweeper
    /// does this every few seconds). `f` runs under a shard's read lock:
    /// it must not block.
    pub fn for_each(&self, mut f: impl FnMut(&Resource)) {
        for s in &self.shards {
            let s = s.read().unwrap_or_else(|p| p.into_inner());
            for l in s.values() {
                l.iter().for_each(&mut f);
            }
        }
    }

    /// Every session's mailbox (for shutdown and announcements).
    pub fn all(&self) -> Vec<Resource> {
        let mut out = Vec::new();
        for s in &self.shards {
            let s = s.read().unwrap_or_else(|p| p.into_inner());
            for l in s.values() {
                out.extend(l.iter().cloned());
            }
        }
        out
    }
}

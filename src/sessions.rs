//! Who is online: bare JID → bound resources, with each resource's mailbox,
//! presence and interests. Sharded so that routing takes no global lock;
//! no lock is ever held across an await.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use minidom::Element;
use tokio::sync::{mpsc, Notify};
use xmpp_parsers::jid::{BareJid, FullJid};
use xmpp_parsers::stream_error::DefinedCondition as StreamCondition;

const SHARDS: usize = 64;

/// What a session's mailbox carries. Kept small: the channel reserves
/// slots of this size.
#[derive(Debug)]
pub enum Outbound {
    Stanza(Box<Element>),
    /// End the stream with this error (conflict, account deleted, …).
    Close(Box<(StreamCondition, String)>),
}

/// A handle to deliver to one session.
#[derive(Clone)]
pub struct Mailbox {
    pub id: u64,
    tx: mpsc::Sender<Outbound>,
    kill: Arc<Notify>,
}

/// Delivery to a session failed; the stanza comes back to the caller.
pub struct Undelivered(pub Box<Element>);

impl Mailbox {
    /// Queue a stanza. A session whose queue is full is not reading: it is
    /// told to close, and the stanza is handed back.
    pub fn deliver(&self, el: Element) -> Result<(), Undelivered> {
        match self.tx.try_send(Outbound::Stanza(Box::new(el))) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(Outbound::Stanza(el))) => {
                tracing::warn!(session = self.id, "session queue full; disconnecting it");
                self.kill.notify_one();
                Err(Undelivered(el))
            }
            Err(mpsc::error::TrySendError::Closed(Outbound::Stanza(el))) => Err(Undelivered(el)),
            Err(_) => Err(Undelivered(Box::new(Element::bare("x", "urn:confab:none")))),
        }
    }

    /// Ask the session to end with a stream error.
    pub fn close(&self, cond: StreamCondition, text: &str) {
        if self
            .tx
            .try_send(Outbound::Close(Box::new((cond, text.to_string()))))
            .is_err()
        {
            self.kill.notify_one();
        }
    }
}

/// The session side of a mailbox.
pub struct Inbox {
    pub rx: mpsc::Receiver<Outbound>,
    pub kill: Arc<Notify>,
}

pub fn mailbox(id: u64, capacity: usize) -> (Mailbox, Inbox) {
    let (tx, rx) = mpsc::channel(capacity);
    let kill = Arc::new(Notify::new());
    (
        Mailbox {
            id,
            tx,
            kill: kill.clone(),
        },
        Inbox { rx, kill },
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
    /// The last available presence broadcast (without `to`).
    pub presence: Option<Arc<Element>>,
    /// Asked for the roster, so gets roster pushes (RFC 6121 §2.1.6).
    pub roster_interested: bool,
    /// Asked for the block list, so gets block list pushes (XEP-0191).
    pub blocklist_interested: bool,
}

#[derive(Clone, Copy, Debug)]
pub enum Interest {
    Roster,
    BlockList,
}

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

    /// Bind a resource. A session already bound to the same full JID is
    /// replaced; its mailbox is returned so the caller can close it.
    pub fn bind(&self, full: FullJid, mailbox: Mailbox) -> Option<Mailbox> {
        let bare = full.to_bare();
        let replaced = self.write(&bare, |m| {
            let list = m.entry(bare.clone()).or_default();
            let old = list
                .iter()
                .position(|r| r.full == full)
                .map(|i| list.swap_remove(i).mailbox);
            list.push(Resource {
                full,
                mailbox,
                available: false,
                priority: 0,
                presence: None,
                roster_interested: false,
                blocklist_interested: false,
            });
            old
        });
        if replaced.is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        replaced
    }

    /// Remove a session (only if it is still the one with this id).
    pub fn unbind(&self, full: &FullJid, id: u64) -> bool {
        let bare = full.to_bare();
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
        presence: Option<Arc<Element>>,
        priority: i8,
    ) -> bool {
        let bare = full.to_bare();
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
            r.presence = presence;
            was
        })
    }

    pub fn set_interest(&self, full: &FullJid, interest: Interest) {
        let bare = full.to_bare();
        self.write(&bare, |m| {
            if let Some(r) = m
                .get_mut(&bare)
                .and_then(|l| l.iter_mut().find(|r| r.full == *full))
            {
                match interest {
                    Interest::Roster => r.roster_interested = true,
                    Interest::BlockList => r.blocklist_interested = true,
                }
            }
        })
    }

    /// The session bound to a full JID.
    pub fn get(&self, full: &FullJid) -> Option<Resource> {
        self.read(&full.to_bare(), |l| {
            l.and_then(|l| l.iter().find(|r| r.full == *full).cloned())
        })
    }

    /// All resources of a user (a snapshot).
    pub fn resources(&self, bare: &BareJid) -> Vec<Resource> {
        self.read(bare, |l| l.cloned().unwrap_or_default())
    }

    /// Whether the user has any available resource.
    pub fn is_available(&self, bare: &BareJid) -> bool {
        self.read(bare, |l| l.is_some_and(|l| l.iter().any(|r| r.available)))
    }

    /// Number of bound sessions.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
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

//! Storage: narrow async traits by concern, implemented for sled in
//! `sled.rs`. Nothing outside this module knows which engine is behind them.
//!
//! Contract for every mutating call: when its future resolves `Ok`, the
//! change is on disk (group-committed), so the caller may acknowledge it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use xmpp_parsers::jid::BareJid;

mod archive_log;
pub mod sled;
mod sled_archive;
mod sled_journal;
mod sled_pep;
mod sled_policy;
mod sled_rooms;
mod sled_sms;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_records_are_compact_and_old_ones_still_read() {
        let r = ScramRecord {
            iterations: 4096,
            salt: vec![1, 2, 3],
            stored_key: vec![255; 20],
            server_key: vec![0; 20],
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"salt\":\"AQID\""), "{json}");
        assert_eq!(serde_json::from_str::<ScramRecord>(&json).unwrap(), r);
        let old = r#"{"iterations":4096,"salt":[1,2,3],"stored_key":[255,255,255,255,255,255,255,255,255,255,255,255,255,255,255,255,255,255,255,255],"server_key":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}"#;
        assert_eq!(serde_json::from_str::<ScramRecord>(old).unwrap(), r);
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "storage error: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

pub type StoreResult<T> = Result<T, StoreError>;

/// Salted SCRAM keys for one hash function (RFC 5802); never a password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramRecord {
    pub iterations: u32,
    #[serde(with = "b64")]
    pub salt: Vec<u8>,
    #[serde(with = "b64")]
    pub stored_key: Vec<u8>,
    #[serde(with = "b64")]
    pub server_key: Vec<u8>,
}

/// Byte strings in stored records as base64 text: a third of the size of
/// JSON's number arrays (records are read at every login and kept in the
/// database cache). Reading also accepts the number arrays.
mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("base64 text or an array of bytes")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
            STANDARD.decode(v).map_err(E::custom)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_any(BytesVisitor)
    }
}

impl std::fmt::Debug for ScramRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramRecord(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// `user@domain`, normalised.
    pub jid: String,
    pub scram_sha1: ScramRecord,
    pub scram_sha256: ScramRecord,
    #[serde(default)]
    pub disabled: bool,
    /// Unix seconds.
    pub created: i64,
}

pub trait AccountStore: Send + Sync {
    /// Create an account; `Ok(false)` if it already exists.
    fn create(&self, account: Account) -> BoxFuture<'_, StoreResult<bool>>;
    fn get<'a>(&'a self, jid: &'a BareJid) -> BoxFuture<'a, StoreResult<Option<Account>>>;
    /// Replace an existing account's record; `Ok(false)` if there is none.
    fn update(&self, account: Account) -> BoxFuture<'_, StoreResult<bool>>;
    /// Delete the account and everything stored for it.
    fn delete<'a>(&'a self, jid: &'a BareJid) -> BoxFuture<'a, StoreResult<bool>>;
    /// Accounts, optionally of one domain, sorted.
    fn list<'a>(&'a self, domain: Option<&'a str>) -> BoxFuture<'a, StoreResult<Vec<String>>>;
    /// Cheap existence check (used when routing).
    fn exists(&self, jid: &BareJid) -> StoreResult<bool>;
}

/// Subscription state of a roster item (RFC 6121 §2.1.2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Subscription {
    #[default]
    None,
    To,
    From,
    Both,
}

impl Subscription {
    /// The contact sees the user's presence.
    pub fn has_from(self) -> bool {
        matches!(self, Subscription::From | Subscription::Both)
    }
    /// The user sees the contact's presence.
    pub fn has_to(self) -> bool {
        matches!(self, Subscription::To | Subscription::Both)
    }
    pub fn with_from(self, on: bool) -> Self {
        Self::make(self.has_to(), on)
    }
    pub fn with_to(self, on: bool) -> Self {
        Self::make(on, self.has_from())
    }
    fn make(to: bool, from: bool) -> Self {
        match (to, from) {
            (false, false) => Subscription::None,
            (true, false) => Subscription::To,
            (false, true) => Subscription::From,
            (true, true) => Subscription::Both,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }
}

/// A contact in a user's roster, with the full RFC 6121 state
/// (Appendix A: subscription, pending out, pending in, pre-approval).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RosterItem {
    /// Contact bare JID.
    pub jid: String,
    pub name: Option<String>,
    pub groups: Vec<String>,
    pub subscription: Subscription,
    /// Pending out: the user asked for the contact's presence.
    pub ask: bool,
    /// Pending in: the contact asked for the user's presence; holds the
    /// subscribe stanza so it can be shown again at the next login.
    pub pending_in: Option<String>,
    /// The user pre-approved a subscription request from the contact.
    pub approved: bool,
    /// Whether the item is in the user's roster. An inbound subscription
    /// request alone keeps state here without adding the contact to the
    /// roster (RFC 6121 §3.1.3).
    pub listed: bool,
}

impl RosterItem {
    pub fn new(jid: &str) -> Self {
        RosterItem {
            jid: jid.to_string(),
            ..Default::default()
        }
    }

    /// Nothing left worth keeping.
    pub fn is_empty(&self) -> bool {
        !self.listed
            && self.subscription == Subscription::None
            && !self.ask
            && self.pending_in.is_none()
            && !self.approved
    }
}

pub trait RosterStore: Send + Sync {
    /// Current roster version and all items (listed or not).
    fn roster<'a>(
        &'a self,
        user: &'a BareJid,
    ) -> BoxFuture<'a, StoreResult<(u64, Vec<RosterItem>)>>;
    fn item<'a>(
        &'a self,
        user: &'a BareJid,
        contact: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<RosterItem>>>;
    /// Write (or, if `item.is_empty()`, delete) an item; returns the new
    /// roster version.
    fn put_item<'a>(
        &'a self,
        user: &'a BareJid,
        item: RosterItem,
    ) -> BoxFuture<'a, StoreResult<u64>>;
    fn version<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, StoreResult<u64>>;
}

/// Result of storing an offline message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflinePush {
    Stored,
    /// The user's queue is at its limit (messages or bytes).
    Full,
}

/// How much one user's offline queue may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflineQuota {
    pub max_messages: usize,
    pub max_bytes: usize,
}

pub trait OfflineStore: Send + Sync {
    /// Queue a serialized stanza for `user` unless that would take the
    /// queue over `quota`. Checked and applied atomically: concurrent
    /// pushes never take the queue over its quota.
    fn push<'a>(
        &'a self,
        user: &'a BareJid,
        stanza: String,
        quota: OfflineQuota,
    ) -> BoxFuture<'a, StoreResult<OfflinePush>>;
    /// Queued stanzas after the key `after` (from the start with `None`),
    /// oldest first, with their keys: at most `max_items`, and no more
    /// than `max_bytes` in all unless the first alone is larger. Read off
    /// the async workers, so a large queue does not stall other users.
    fn chunk<'a>(
        &'a self,
        user: &'a BareJid,
        after: Option<u64>,
        max_items: usize,
        max_bytes: usize,
    ) -> BoxFuture<'a, StoreResult<Vec<(u64, String)>>>;
    /// Delete the given entries (after delivery).
    fn remove<'a>(&'a self, user: &'a BareJid, keys: &'a [u64]) -> BoxFuture<'a, StoreResult<()>>;
    /// Messages and bytes queued.
    fn usage<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, StoreResult<(usize, usize)>>;
}

/// Small per-user documents: vCard, private XML, block list, settings.
pub trait UserDataStore: Send + Sync {
    fn get<'a>(
        &'a self,
        user: &'a BareJid,
        key: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<String>>>;
    /// Set (`Some`) or delete (`None`).
    fn put<'a>(
        &'a self,
        user: &'a BareJid,
        key: &'a str,
        value: Option<String>,
    ) -> BoxFuture<'a, StoreResult<()>>;
    /// Set or delete a document whose key starts with `class`, unless the
    /// documents of that class would then take more than `max_bytes` for
    /// this user (`Ok(false)`, nothing changed). Checked and applied
    /// atomically.
    fn put_within<'a>(
        &'a self,
        user: &'a BareJid,
        class: &'a str,
        key: &'a str,
        value: Option<String>,
        max_bytes: usize,
    ) -> BoxFuture<'a, StoreResult<bool>>;
}

/// One message written to the archive: one entry in the log of its
/// conversation, in the view of each user listed in `owners`.
#[derive(Debug, Clone)]
pub struct ArchiveWrite {
    /// Time-ordered and unique ([`ArchiveStore::next_id`]); the MAM id and
    /// the XEP-0359 stanza-id.
    pub id: u64,
    /// The conversation: the two parties of a one-to-one chat (in either
    /// order; a note to oneself has the same JID twice).
    pub pair: (BareJid, BareJid),
    /// Whose archive holds it (each one of the pair).
    pub owners: Vec<BareJid>,
    /// Addresses as routed (full JIDs where they were).
    pub from: String,
    pub to: String,
    /// The message as archived, serialized.
    pub xml: String,
}

/// One archived message, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    pub id: u64,
    pub from: String,
    pub to: String,
    pub xml: String,
}

/// A query of one user's archive (XEP-0313 with XEP-0059 paging). Time
/// bounds are in ids: an id is the archiving time in microseconds.
#[derive(Debug, Clone, Default)]
pub struct ArchiveQuery {
    pub user: Option<BareJid>,
    /// Only the conversation with this bare JID…
    pub with: Option<BareJid>,
    /// …and, if set, only messages from or to this full JID in it.
    pub with_full: Option<String>,
    /// Inclusive bounds of the whole result set.
    pub start: Option<u64>,
    pub end: Option<u64>,
    /// Exclusive bounds of the page (RSM `after` / `before`, `after-id` /
    /// `before-id`).
    pub after: Option<u64>,
    pub before: Option<u64>,
    /// The page is taken from the end of the range (RSM `<before/>`).
    pub from_end: bool,
    /// Only these ids (XEP-0313 `ids`).
    pub ids: Option<Vec<u64>>,
    /// Skip this many results first (RSM `index`, forward only).
    pub index: Option<usize>,
    pub max: usize,
    /// Only what this mask shows (a member's view of a room's archive).
    pub mask: Option<Arc<ViewMask>>,
}

/// One member's view of a shared archive (a room's): what the member
/// deleted from it, as a mark (everything up to and including `cleared`)
/// and single ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewMask {
    pub cleared: u64,
    /// Sorted, no duplicates.
    pub hidden: Vec<u64>,
}

impl ViewMask {
    /// Single ids remembered at most; beyond, the oldest are folded into
    /// the mark only when they are older than everything else kept.
    pub const MAX_HIDDEN: usize = 10_000;

    pub fn shows(&self, id: u64) -> bool {
        id > self.cleared && self.hidden.binary_search(&id).is_err()
    }

    pub fn is_empty(&self) -> bool {
        self.cleared == 0 && self.hidden.is_empty()
    }

    /// Hide `ids` too.
    pub fn hide(&mut self, ids: &[u64]) {
        self.hidden
            .extend(ids.iter().copied().filter(|i| *i > self.cleared));
        self.hidden.sort_unstable();
        self.hidden.dedup();
    }

    /// Hide everything up to `mark`.
    pub fn clear_to(&mut self, mark: u64) {
        self.cleared = self.cleared.max(mark);
        let c = self.cleared;
        self.hidden.retain(|i| *i > c);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(9 + 8 * self.hidden.len());
        v.push(1);
        v.extend_from_slice(&self.cleared.to_be_bytes());
        for i in &self.hidden {
            v.extend_from_slice(&i.to_be_bytes());
        }
        v
    }

    pub fn decode(v: &[u8]) -> Option<ViewMask> {
        if *v.first()? != 1 {
            return None;
        }
        let u64_of = |c: &[u8]| -> Option<u64> { Some(u64::from_be_bytes(c.try_into().ok()?)) };
        let cleared = u64_of(v.get(1..9)?)?;
        let hidden = v.get(9..)?.chunks_exact(8).filter_map(u64_of).collect();
        Some(ViewMask { cleared, hidden })
    }
}

/// A page of results, oldest first.
#[derive(Debug, Clone, Default)]
pub struct ArchivePage {
    pub items: Vec<Archived>,
    /// The page reaches the end of the result set in its direction.
    pub complete: bool,
    /// Messages in the whole result set.
    pub count: usize,
    /// Position of the page's first item in the result set.
    pub first_index: usize,
}

/// What to hide from one user's view of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hide {
    /// Every message of the conversation with this bare JID (a user or a
    /// room) the view holds now.
    Conversation(BareJid),
    /// These messages (their ids); all must be in the view.
    Items(Vec<u64>),
}

/// The message archive: one log per conversation, a per-user view over
/// it, and a per-user time index (ARCHITECTURE.md "Storage").
pub trait ArchiveStore: Send + Sync {
    /// A new id: later than every id handed out before, by this process or
    /// an earlier one; close to the current time in microseconds.
    fn next_id(&self) -> u64;
    /// Queue a message for writing (waiting only while the write queue is
    /// full). A later [`ArchiveStore::barrier`] or query sees it; it is on
    /// disk once a later [`ArchiveStore::sync`] resolves (one flush for
    /// every message appended meanwhile: group commit).
    fn append(&self, w: ArchiveWrite) -> BoxFuture<'_, StoreResult<()>>;
    /// Resolves once everything appended before the call is written.
    fn barrier(&self) -> BoxFuture<'_, StoreResult<()>>;
    /// Resolves once everything appended before the call is on disk.
    fn sync(&self) -> BoxFuture<'_, StoreResult<()>>;
    /// Run a query (off the async workers); it sees every message appended
    /// before it.
    fn query(&self, q: ArchiveQuery) -> BoxFuture<'_, StoreResult<ArchivePage>>;
    /// Hide messages from `user`'s view only (the other party's view
    /// never changes): `Ok(None)` when an item named is not in the view,
    /// and then nothing changed; else how many were hidden. Durable once
    /// resolved. A message no view holds any more is dead, and its bytes
    /// are reclaimed in the background.
    fn hide<'a>(
        &'a self,
        user: &'a BareJid,
        what: Hide,
    ) -> BoxFuture<'a, StoreResult<Option<usize>>>;
    /// One message of `user`'s view, as of the last
    /// [`ArchiveStore::barrier`] (at least).
    fn get<'a>(
        &'a self,
        user: &'a BareJid,
        id: u64,
    ) -> BoxFuture<'a, StoreResult<Option<Archived>>>;
    /// Whether `user`'s archive holds `id`.
    fn contains(&self, user: &BareJid, id: u64) -> StoreResult<bool>;
    /// The first and last ids of `user`'s archive.
    fn bounds(&self, user: &BareJid) -> StoreResult<Option<(u64, u64)>>;
}

/// One conversation in a user's journal (the XEP-0430 inbox).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JournalEntry {
    /// The conversation: a bare JID (a user or a room).
    pub jid: String,
    /// The last message with a body: its id in the user's archive (0: not
    /// archived).
    pub last_id: u64,
    /// When that message came (microseconds since the Unix epoch; unique
    /// per user, the order of the journal).
    pub activity: u64,
    /// Messages not read.
    pub unread: u32,
    /// The newest unread messages (at most [`JournalEntry::TRACKED`]),
    /// oldest first: archive id (0: none) and a hash of the message's `id`
    /// attribute, for the markers that name them.
    pub pending: Vec<(u64, u64)>,
    /// Moved out of the inbox by the user (XEP-0430 "archive").
    pub archived: bool,
    /// Muted until (Unix seconds; 0: not muted).
    pub mute_until: i64,
}

impl JournalEntry {
    /// Unread messages remembered one by one at most.
    pub const TRACKED: usize = 200;

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(40 + self.jid.len() + 16 * self.pending.len());
        v.push(1);
        v.extend_from_slice(&self.last_id.to_be_bytes());
        v.extend_from_slice(&self.activity.to_be_bytes());
        v.extend_from_slice(&self.unread.to_be_bytes());
        v.push(u8::from(self.archived));
        v.extend_from_slice(&self.mute_until.to_be_bytes());
        v.extend_from_slice(&(self.jid.len() as u32).to_be_bytes());
        v.extend_from_slice(self.jid.as_bytes());
        for (id, h) in &self.pending {
            v.extend_from_slice(&id.to_be_bytes());
            v.extend_from_slice(&h.to_be_bytes());
        }
        v
    }

    pub fn decode(v: &[u8]) -> Option<JournalEntry> {
        let u64_at = |i: usize| -> Option<u64> {
            Some(u64::from_be_bytes(v.get(i..i + 8)?.try_into().ok()?))
        };
        if *v.first()? != 1 {
            return None;
        }
        let unread = u32::from_be_bytes(v.get(17..21)?.try_into().ok()?);
        let archived = *v.get(21)? != 0;
        let mute_until = i64::from_be_bytes(v.get(22..30)?.try_into().ok()?);
        let jlen = u32::from_be_bytes(v.get(30..34)?.try_into().ok()?) as usize;
        let jid = String::from_utf8(v.get(34..34 + jlen)?.to_vec()).ok()?;
        let rest = v.get(34 + jlen..)?;
        let pending = rest
            .chunks_exact(16)
            .filter_map(|c| {
                Some((
                    u64::from_be_bytes(c.get(..8)?.try_into().ok()?),
                    u64::from_be_bytes(c.get(8..)?.try_into().ok()?),
                ))
            })
            .collect();
        Some(JournalEntry {
            jid,
            last_id: u64_at(1)?,
            activity: u64_at(9)?,
            unread,
            pending,
            archived,
            mute_until,
        })
    }
}

/// A change to one journal entry: given the entry (if any), the entry
/// after (`None`: none). Called again if another change raced it.
pub type JournalUpdate = Box<dyn FnMut(Option<JournalEntry>) -> Option<JournalEntry> + Send>;

/// Each user's journal: one entry per conversation.
pub trait JournalStore: Send + Sync {
    /// Change the entry of `user`'s conversation with `conv` atomically;
    /// the entries before and after. Durable with the next group commit.
    fn update<'a>(
        &'a self,
        user: &'a BareJid,
        conv: &'a str,
        f: JournalUpdate,
    ) -> BoxFuture<'a, StoreResult<(Option<JournalEntry>, Option<JournalEntry>)>>;
    /// All of `user`'s entries (in no particular order).
    fn entries<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, StoreResult<Vec<JournalEntry>>>;
    /// Wait until every change so far is on disk.
    fn sync(&self) -> BoxFuture<'_, StoreResult<()>>;
}

/// A member of a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMember {
    /// Bare JID.
    pub jid: String,
    /// The nickname last used in the room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nick: Option<String>,
}

/// A persistent room: its settings and who its members are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RoomRecord {
    /// The room's bare JID.
    pub jid: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub subject: String,
    /// The nickname of whoever set the subject.
    #[serde(default)]
    pub subject_by: String,
    pub members: Vec<RoomMember>,
    /// Users who left or were removed (they may rejoin by themselves).
    #[serde(default)]
    pub former: Vec<String>,
    /// Secret of the room's occupant ids (XEP-0421).
    pub salt: String,
    /// Unix seconds.
    pub created: i64,
}

impl RoomRecord {
    pub fn is_member(&self, jid: &str) -> bool {
        self.members.iter().any(|m| m.jid == jid)
    }
}

/// Rooms, the index of each user's rooms, and each member's view of a
/// room's archive (the messages themselves are in the archive, under the
/// room's JID).
pub trait RoomStore: Send + Sync {
    fn room<'a>(&'a self, room: &'a BareJid) -> BoxFuture<'a, StoreResult<Option<RoomRecord>>>;
    /// Create or replace a room (the index of its members' rooms follows
    /// in the same atomic write). Durable once resolved.
    fn put_room(&self, room: RoomRecord) -> BoxFuture<'_, StoreResult<()>>;
    /// Delete a room: its record, its members' views and index entries,
    /// and its archive (whose bytes are reclaimed). Durable once resolved.
    fn delete_room<'a>(&'a self, room: &'a BareJid) -> BoxFuture<'a, StoreResult<()>>;
    /// The rooms `user` is a member of (bare JIDs, sorted).
    fn rooms_of<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, StoreResult<Vec<String>>>;
    /// `member`'s view of the room's archive.
    fn view<'a>(
        &'a self,
        room: &'a BareJid,
        member: &'a BareJid,
    ) -> BoxFuture<'a, StoreResult<ViewMask>>;
    /// Replace `member`'s view (an empty mask is deleted). Durable once
    /// resolved.
    fn put_view<'a>(
        &'a self,
        room: &'a BareJid,
        member: &'a BareJid,
        view: ViewMask,
    ) -> BoxFuture<'a, StoreResult<()>>;
}

/// Who may see a personal-eventing node's items and notifications
/// (XEP-0060 §4.5, XEP-0163 §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccessModel {
    /// Anyone.
    Open,
    /// Contacts subscribed to the owner's presence (the PEP default).
    #[default]
    Presence,
    /// Contacts in one of the node's roster groups.
    Roster,
    /// The owner alone.
    Whitelist,
}

/// When the last item is sent to a newly available contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SendLast {
    Never,
    OnSub,
    #[default]
    OnSubAndPresence,
}

/// A PEP node's configuration (the `pubsub#` fields Confab keeps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PepNodeConfig {
    #[serde(default)]
    pub access_model: AccessModel,
    /// Items kept; the oldest go first.
    pub max_items: u32,
    #[serde(default = "yes")]
    pub persist_items: bool,
    #[serde(default)]
    pub send_last_published_item: SendLast,
    #[serde(default = "yes")]
    pub notify_retract: bool,
    #[serde(default = "yes")]
    pub notify_delete: bool,
    /// For `AccessModel::Roster`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roster_groups_allowed: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    /// `pubsub#type`: the payload's namespace, when set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub payload_type: String,
}

fn yes() -> bool {
    true
}

/// One item of a PEP node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PepItem {
    pub id: String,
    /// The payload, serialized.
    pub xml: String,
    /// Full JID of who published it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub publisher: String,
    /// When it was published (Unix milliseconds; 0 when not known).
    #[serde(default)]
    pub published: i64,
}

/// What became of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PepPublished {
    /// Stored; `created` when the node was made for it, and the ids of
    /// the items dropped to keep `max_items`.
    Stored { created: bool, dropped: Vec<String> },
    /// The account's PEP items would exceed the byte quota: nothing
    /// changed.
    OverQuota,
}

/// Each account's personal-eventing nodes (XEP-0163) and their items.
/// Every write is durable once resolved.
pub trait PepStore: Send + Sync {
    /// A node's configuration (`None`: no such node).
    fn node<'a>(
        &'a self,
        user: &'a BareJid,
        node: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<PepNodeConfig>>>;
    /// The account's nodes with their configurations, by name.
    fn nodes<'a>(
        &'a self,
        user: &'a BareJid,
    ) -> BoxFuture<'a, StoreResult<Vec<(String, PepNodeConfig)>>>;
    /// Create a node (`Ok(false)`: it exists already, nothing changed).
    fn create_node<'a>(
        &'a self,
        user: &'a BareJid,
        node: &'a str,
        config: PepNodeConfig,
    ) -> BoxFuture<'a, StoreResult<bool>>;
    /// Change an existing node's configuration (`Ok(None)`: no such
    /// node), dropping the oldest items beyond a lower `max_items`: their
    /// ids are returned.
    fn configure_node<'a>(
        &'a self,
        user: &'a BareJid,
        node: &'a str,
        config: PepNodeConfig,
    ) -> BoxFuture<'a, StoreResult<Option<Vec<String>>>>;
    /// Delete a node and its items (`Ok(false)`: there was none).
    fn delete_node<'a>(
        &'a self,
        user: &'a BareJid,
        node: &'a str,
    ) -> BoxFuture<'a, StoreResult<bool>>;
    /// Store an item as the node's newest (replacing one of the same id),
    /// creating the node with `config` if it does not exist, unless the
    /// account's items would then take more than `max_bytes`.
    fn publish<'a>(
        &'a self,
        user: &'a BareJid,
        node: &'a str,
        config: &'a PepNodeConfig,
        item: PepItem,
        max_bytes: usize,
    ) -> BoxFuture<'a, StoreResult<PepPublished>>;
    /// Remove an item (`Ok(false)`: the node has no such item).
    fn retract<'a>(
        &'a self,
        user: &'a BareJid,
        node: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, StoreResult<bool>>;
    /// Remove every item of a node (`Ok(false)`: no such node).
    fn purge<'a>(&'a self, user: &'a BareJid, node: &'a str) -> BoxFuture<'a, StoreResult<bool>>;
    /// The node's newest `max` items (all when `None`), oldest first.
    fn items<'a>(
        &'a self,
        user: &'a BareJid,
        node: &'a str,
        max: Option<usize>,
    ) -> BoxFuture<'a, StoreResult<Vec<PepItem>>>;
    /// The items of these ids that the node has, in the order asked.
    fn items_by_id<'a>(
        &'a self,
        user: &'a BareJid,
        node: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, StoreResult<Vec<PepItem>>>;
}

/// Whom a right is granted to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grantee {
    /// An account (bare JID).
    User(String),
    /// An admin-defined group of accounts.
    Group(String),
}

/// Administration policy: rights granted to accounts and groups, and the
/// groups with their members. Names and rights are checked by the caller
/// (`crate::policy`).
pub trait PolicyStore: Send + Sync {
    /// Grant (`on`) or revoke `right`: `Ok(false)` when nothing changed.
    fn set_right<'a>(
        &'a self,
        who: &'a Grantee,
        right: &'a str,
        on: bool,
    ) -> BoxFuture<'a, StoreResult<bool>>;
    fn granted<'a>(&'a self, who: &'a Grantee, right: &'a str) -> BoxFuture<'a, StoreResult<bool>>;
    /// Every grant, sorted.
    fn grants(&self) -> BoxFuture<'_, StoreResult<Vec<(Grantee, String)>>>;
    /// Create (`on`) or delete a group (its members and grants with it):
    /// `Ok(false)` when nothing changed.
    fn set_group<'a>(&'a self, name: &'a str, on: bool) -> BoxFuture<'a, StoreResult<bool>>;
    /// The groups, sorted.
    fn groups(&self) -> BoxFuture<'_, StoreResult<Vec<String>>>;
    /// A group's members, sorted; `None` when there is no such group.
    fn members<'a>(&'a self, group: &'a str) -> BoxFuture<'a, StoreResult<Option<Vec<String>>>>;
    /// Add (`on`) or remove a member: `None` when there is no such group,
    /// else whether something changed.
    fn set_member<'a>(
        &'a self,
        group: &'a str,
        jid: &'a str,
        on: bool,
    ) -> BoxFuture<'a, StoreResult<Option<bool>>>;
    /// The groups `jid` is a member of, sorted.
    fn groups_of<'a>(&'a self, jid: &'a str) -> BoxFuture<'a, StoreResult<Vec<String>>>;
    /// A deleted account's grants and memberships go.
    fn forget_user<'a>(&'a self, jid: &'a str) -> BoxFuture<'a, StoreResult<()>>;
    /// Set (`Some`) or remove the level members of group `from` grant
    /// members of group `to`: `Ok(false)` when nothing changed.
    fn set_policy<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        level: Option<&'a str>,
    ) -> BoxFuture<'a, StoreResult<bool>>;
    /// Every group policy (from, to, level), sorted.
    fn policies(&self) -> BoxFuture<'_, StoreResult<Vec<(String, String, String)>>>;
}

/// The SMS gateway's state (`sms/`): outgoing SMS until the SMS centre
/// acknowledged them, what delivery reports are about, and who last wrote
/// to each number. Documents are the gateway's JSON.
pub trait SmsStore: Send + Sync {
    /// A new id for an outgoing SMS, never given before.
    fn next_sms_id(&self) -> StoreResult<u64>;
    /// Store (`Some`) or drop an outgoing SMS. Durable once resolved.
    fn put_outgoing<'a>(&'a self, id: u64, doc: Option<&'a str>) -> BoxFuture<'a, StoreResult<()>>;
    /// Every outgoing SMS, by id.
    fn outgoing(&self) -> BoxFuture<'_, StoreResult<Vec<(u64, String)>>>;
    /// Outgoing SMS `id` was acknowledged: keep `reports` (SMSC message
    /// id → document) and drop it, atomically and durably.
    fn acknowledged<'a>(
        &'a self,
        id: u64,
        reports: &'a [(String, String)],
    ) -> BoxFuture<'a, StoreResult<()>>;
    /// The report document under `smsc_id`; with `doc` `Some`, replace it
    /// (`Some(None)`: remove it). Returns what was there.
    fn report<'a>(
        &'a self,
        smsc_id: &'a str,
        doc: Option<Option<&'a str>>,
    ) -> BoxFuture<'a, StoreResult<Option<String>>>;
    /// The parts of a concatenated incoming SMS received so far, under
    /// `key`; with `doc` `Some`, replace them (`Some(None)`: remove them).
    /// Returns what was there.
    fn partial<'a>(
        &'a self,
        key: &'a str,
        doc: Option<Option<&'a str>>,
    ) -> BoxFuture<'a, StoreResult<Option<String>>>;
    fn set_last_writer<'a>(
        &'a self,
        number: &'a str,
        jid: &'a str,
    ) -> BoxFuture<'a, StoreResult<()>>;
    fn last_writer<'a>(&'a self, number: &'a str) -> BoxFuture<'a, StoreResult<Option<String>>>;
}

/// Every store the server uses.
#[derive(Clone)]
pub struct Stores {
    pub accounts: Arc<dyn AccountStore>,
    pub rosters: Arc<dyn RosterStore>,
    pub offline: Arc<dyn OfflineStore>,
    pub userdata: Arc<dyn UserDataStore>,
    pub archive: Arc<dyn ArchiveStore>,
    pub journal: Arc<dyn JournalStore>,
    pub rooms: Arc<dyn RoomStore>,
    pub pep: Arc<dyn PepStore>,
    pub policy: Arc<dyn PolicyStore>,
    pub sms: Arc<dyn SmsStore>,
    /// Flush and close (on shutdown).
    pub closer: Arc<dyn StoreCloser>,
}

pub trait StoreCloser: Send + Sync {
    fn flush(&self) -> BoxFuture<'_, StoreResult<()>>;
}

impl Stores {
    /// Open the default (sled) backend in `dir`.
    pub fn open_sled(dir: &std::path::Path) -> StoreResult<Stores> {
        crate::datadir::prepare(dir).map_err(StoreError)?;
        let s = Arc::new(sled::SledStore::open(dir)?);
        Ok(Stores {
            accounts: s.clone(),
            rosters: s.clone(),
            offline: s.clone(),
            userdata: s.clone(),
            archive: s.clone(),
            journal: s.clone(),
            rooms: s.clone(),
            pep: s.clone(),
            policy: s.clone(),
            sms: s.clone(),
            closer: s,
        })
    }
}

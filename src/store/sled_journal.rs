//! Each user's journal in sled: the tree `journal`, key user + NUL +
//! conversation JID, value a [`JournalEntry`] in its binary form.
//!
//! Entries change with nearly every message (the recipient's unread count,
//! the sender's last message), so changes go to a cache in memory first:
//! one change is a lock of the user's shard and a few field updates. The
//! store's group commit writes what changed since the last one to sled,
//! in one batch, just before sled's flush: a change is on disk once a
//! commit that started after it is done (every acknowledgement waits for
//! one), as for everything else the store keeps. Clean entries stay
//! cached up to a bound, then are dropped (sled has them).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use xmpp_parsers::jid::BareJid;

use super::sled::{e, user_key, user_prefix, SledStore};
use super::{BoxFuture, JournalEntry, JournalStore, JournalUpdate, StoreResult};

const SHARDS: usize = 64;
/// Entries kept in one shard before its clean ones are dropped.
const SHARD_KEEP: usize = 4096;

/// One cached entry: `None` is an entry removed.
struct Slot {
    entry: Option<JournalEntry>,
    dirty: bool,
}

/// Entries by user and conversation, and which changed since the last
/// write to sled.
#[derive(Default)]
struct Shard {
    map: HashMap<String, HashMap<String, Slot>>,
    dirty: Vec<(String, String)>,
    slots: usize,
    /// Users all of whose entries are in `map` (an inbox query read them).
    complete: std::collections::HashSet<String>,
}

/// The journal's cache of changed and lately used entries, by user.
pub(super) struct JournalCache {
    shards: Vec<Mutex<Shard>>,
}

impl Default for JournalCache {
    fn default() -> Self {
        JournalCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl JournalCache {
    fn shard(&self, user: &str) -> MutexGuard<'_, Shard> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut h);
        lock(&self.shards[(h.finish() as usize) % SHARDS])
    }

    /// Write every change since the last call to `tree`, in one batch
    /// (the group commit calls it before sled's flush). Entries leave the
    /// cache only once sled has them: an entry missing from the cache is
    /// up to date in sled.
    pub(super) fn write_dirty(&self, tree: &sled::Tree) -> StoreResult<()> {
        let mut batch = sled::Batch::default();
        let mut any = false;
        for m in &self.shards {
            let mut sh = lock(m);
            let dirty = std::mem::take(&mut sh.dirty);
            for (user, conv) in dirty {
                let Some(slot) = sh.map.get_mut(&user).and_then(|c| c.get_mut(&conv)) else {
                    continue;
                };
                let key = user_key(&user, conv.as_bytes());
                match &slot.entry {
                    Some(en) => batch.insert(key, en.encode()),
                    None => batch.remove(key),
                }
                slot.dirty = false;
                any = true;
            }
        }
        if any {
            tree.apply_batch(batch).map_err(e)?;
        }
        for m in &self.shards {
            let mut sh = lock(m);
            if sh.slots > SHARD_KEEP {
                // What changed since the batch stays.
                sh.map.retain(|_, convs| {
                    convs.retain(|_, s| s.dirty);
                    !convs.is_empty()
                });
                sh.slots = sh.map.values().map(HashMap::len).sum();
                sh.complete.clear();
            }
        }
        Ok(())
    }

    /// Drop everything cached for `user` (the account is deleted).
    pub(super) fn forget(&self, user: &str) {
        let mut sh = self.shard(user);
        if let Some(convs) = sh.map.remove(user) {
            sh.slots -= convs.len();
        }
        sh.dirty.retain(|(u, _)| u != user);
        sh.complete.remove(user);
    }
}

fn conv_of(key: &[u8], prefix_len: usize) -> String {
    String::from_utf8_lossy(key.get(prefix_len..).unwrap_or_default()).into_owned()
}

impl JournalStore for SledStore {
    fn update<'a>(
        &'a self,
        user: &'a BareJid,
        conv: &'a str,
        mut f: JournalUpdate,
    ) -> BoxFuture<'a, StoreResult<(Option<JournalEntry>, Option<JournalEntry>)>> {
        Box::pin(async move {
            let mut guard = self.journal_cache.shard(user.as_str());
            let sh = &mut *guard;
            let convs = match sh.map.get_mut(user.as_str()) {
                Some(c) => c,
                None => sh.map.entry(user.as_str().to_string()).or_default(),
            };
            let slot = match convs.get_mut(conv) {
                Some(s) => s,
                None => {
                    let stored = self
                        .journal
                        .get(user_key(user.as_str(), conv.as_bytes()))
                        .map_err(e)?
                        .and_then(|v| JournalEntry::decode(&v));
                    sh.slots += 1;
                    convs.entry(conv.to_string()).or_insert(Slot {
                        entry: stored,
                        dirty: false,
                    })
                }
            };
            let before = slot.entry.clone();
            let after = f(before.clone());
            if after != before {
                slot.entry = after.clone();
                if !slot.dirty {
                    slot.dirty = true;
                    sh.dirty.push((user.as_str().to_string(), conv.to_string()));
                }
            }
            Ok((before, after))
        })
    }

    fn entries<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, StoreResult<Vec<JournalEntry>>> {
        Box::pin(async move {
            // Under the shard's lock: sled and the cache agree.
            let mut guard = self.journal_cache.shard(user.as_str());
            let sh = &mut *guard;
            if !sh.complete.contains(user.as_str()) {
                // Read them all once; from then on the cache answers.
                let prefix = user_prefix(user.as_str());
                let convs = sh.map.entry(user.as_str().to_string()).or_default();
                for kv in self.journal.scan_prefix(&prefix) {
                    let (k, v) = kv.map_err(e)?;
                    let conv = conv_of(&k, prefix.len());
                    if convs.contains_key(&conv) {
                        continue;
                    }
                    if let Some(en) = JournalEntry::decode(&v) {
                        convs.insert(
                            conv,
                            Slot {
                                entry: Some(en),
                                dirty: false,
                            },
                        );
                        sh.slots += 1;
                    }
                }
                sh.complete.insert(user.as_str().to_string());
            }
            Ok(sh
                .map
                .get(user.as_str())
                .map(|convs| convs.values().filter_map(|s| s.entry.clone()).collect())
                .unwrap_or_default())
        })
    }

    fn sync(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.commit())
    }
}

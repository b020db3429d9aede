//! The sled implementation of the store traits.
//!
//! Layout (one sled tree per concern; keys start with the user's bare JID
//! and a NUL byte, which no JID contains):
//! - `accounts`:   jid → JSON `Account`
//! - `roster`:     user \0 contact → JSON `RosterItem`
//! - `roster_ver`: user → u64 (big endian)
//! - `offline`:    user \0 u64 sequence → stanza XML
//! - `userdata`:   user \0 key → value
//! - `archive_index`: the message archive's index (see `sled_archive.rs`;
//!   the messages are in files under `archive/`)
//! - `pep`:        user \0 node \0 …: each account's PEP nodes and items
//!   (see `sled_pep.rs`)
//! - `rooms`:      rooms, their members' views and each user's rooms (see
//!   `sled_rooms.rs`)
//! - `usage`:      user \0 class → count and bytes (u64, u64 big endian) of
//!   what the user keeps in a class (`offline`, or `ud:` and a userdata key
//!   prefix): the quotas are checked against it in the same transaction
//!   that writes, so concurrent writers cannot overshoot them.
//!
//! Durability: writes go to sled, then wait for a group commit: one flusher
//! thread runs `flush()` (write + fsync) for every writer that queued up
//! while the previous flush ran.

use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::Mutex;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tokio::sync::oneshot;
use xmpp_parsers::jid::BareJid;

use super::{
    Account, AccountStore, BoxFuture, OfflinePush, OfflineQuota, OfflineStore, RosterItem,
    RosterStore, StoreCloser, StoreError, StoreResult, UserDataStore,
};

type Waiter = oneshot::Sender<StoreResult<()>>;

pub struct SledStore {
    db: sled::Db,
    accounts: sled::Tree,
    roster: sled::Tree,
    roster_ver: sled::Tree,
    offline: sled::Tree,
    userdata: sled::Tree,
    pub(super) usage: sled::Tree,
    /// Personal eventing (see `sled_pep.rs`).
    pub(super) pep: sled::Tree,
    /// Each account's PEP writes, one at a time (striped by account).
    pub(super) pep_locks: Vec<Mutex<()>>,
    /// Rooms (see `sled_rooms.rs`).
    pub(super) rooms: sled::Tree,
    /// Rights and groups (see `sled_policy.rs`).
    pub(super) policy: sled::Tree,
    /// The SMS gateway (see `sled_sms.rs`).
    pub(super) sms: sled::Tree,
    /// Journal entries: user + NUL + conversation → `JournalEntry`.
    pub(super) journal: sled::Tree,
    /// Journal changes not yet in sled, and entries used lately.
    pub(super) journal_cache: std::sync::Arc<super::sled_journal::JournalCache>,
    /// The message archive (see `sled_archive.rs`).
    pub(super) archive: super::sled_archive::Archive,
    flusher: Mutex<Option<std_mpsc::Sender<Waiter>>>,
    flusher_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for SledStore {
    /// Stop the flusher and wait for it, so that its database handle is
    /// gone and the directory can be opened again at once (a restart in
    /// the same process, as tests do).
    fn drop(&mut self) {
        self.archive.stop();
        if let Ok(mut f) = self.flusher.lock() {
            f.take();
        }
        if let Ok(mut t) = self.flusher_thread.lock() {
            if let Some(t) = t.take() {
                let _ = t.join();
            }
        }
        let _ = self.db.flush();
    }
}

pub(super) fn e<E: std::fmt::Display>(err: E) -> StoreError {
    StoreError(err.to_string())
}

pub(super) fn user_prefix(user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + 1);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k
}

pub(super) fn user_key(user: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = user_prefix(user);
    k.extend_from_slice(rest);
    k
}

/// Count and bytes of a usage record.
pub(super) fn decode_usage(v: Option<&[u8]>) -> (u64, u64) {
    match v {
        Some(v) if v.len() == 16 => (decode_u64(&v[..8]), decode_u64(&v[8..])),
        _ => (0, 0),
    }
}

pub(super) fn encode_usage(count: u64, bytes: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&count.to_be_bytes());
    out[8..].copy_from_slice(&bytes.to_be_bytes());
    out
}

const OFFLINE_CLASS: &str = "offline";

pub(super) fn usage_key(user: &str, class: &str) -> Vec<u8> {
    user_key(user, class.as_bytes())
}

fn userdata_class(class: &str) -> String {
    format!("ud:{class}")
}

/// Count and bytes of the entries under `prefix`, by reading them.
fn scan_usage(tree: &sled::Tree, prefix: &[u8]) -> StoreResult<(u64, u64)> {
    let (mut count, mut bytes) = (0u64, 0u64);
    for kv in tree.scan_prefix(prefix) {
        let (_, v) = kv.map_err(e)?;
        count += 1;
        bytes += v.len() as u64;
    }
    Ok((count, bytes))
}

/// Why a quota transaction did not apply.
#[derive(Debug)]
enum Refused {
    OverQuota,
}

fn decode_u64(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if v.len() == 8 {
        b.copy_from_slice(v);
    }
    u64::from_be_bytes(b)
}

impl SledStore {
    pub fn open(dir: &Path) -> StoreResult<SledStore> {
        std::fs::create_dir_all(dir).map_err(|err| {
            StoreError(format!(
                "cannot create data directory {}: {err}",
                dir.display()
            ))
        })?;
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(64 * 1024 * 1024)
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|err| {
                let text = err.to_string();
                if text.contains("could not acquire lock") {
                    StoreError(format!(
                        "the database in {} is in use by another process (is the server running?)",
                        dir.display()
                    ))
                } else {
                    StoreError(format!("cannot open database in {}: {text}", dir.display()))
                }
            })?;
        let archive = super::sled_archive::Archive::open(
            db.open_tree("archive_index").map_err(e)?,
            &dir.join("archive"),
        )?;
        let (tx, rx) = std_mpsc::channel::<Waiter>();
        let fdb = db.clone();
        let log = archive.log();
        let journal = db.open_tree("journal").map_err(e)?;
        let journal_cache = std::sync::Arc::new(super::sled_journal::JournalCache::default());
        let (fj, fjc) = (journal.clone(), journal_cache.clone());
        let thread = std::thread::Builder::new()
            .name("confab-flush".into())
            .spawn(move || flusher(fdb, &log, &fj, &fjc, rx))
            .map_err(e)?;
        Ok(SledStore {
            accounts: db.open_tree("accounts").map_err(e)?,
            roster: db.open_tree("roster").map_err(e)?,
            roster_ver: db.open_tree("roster_ver").map_err(e)?,
            offline: db.open_tree("offline").map_err(e)?,
            userdata: db.open_tree("userdata").map_err(e)?,
            usage: db.open_tree("usage").map_err(e)?,
            rooms: db.open_tree("rooms").map_err(e)?,
            policy: db.open_tree("policy").map_err(e)?,
            sms: db.open_tree("sms").map_err(e)?,
            pep: db.open_tree("pep").map_err(e)?,
            journal,
            journal_cache,
            archive,
            db,
            pep_locks: (0..64).map(|_| Mutex::new(())).collect(),
            flusher: Mutex::new(Some(tx)),
            flusher_thread: Mutex::new(Some(thread)),
        })
    }

    pub(super) fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Wait until everything written so far is on disk.
    pub(super) async fn commit(&self) -> StoreResult<()> {
        let (tx, rx) = oneshot::channel();
        {
            let f = self
                .flusher
                .lock()
                .map_err(|_| StoreError("flusher lock poisoned".into()))?;
            f.as_ref()
                .ok_or_else(|| StoreError("store closed".into()))?
                .send(tx)
                .map_err(|_| StoreError("flusher stopped".into()))?;
        }
        rx.await.map_err(|_| StoreError("flusher stopped".into()))?
    }

    /// Make sure a usage record exists for `user`'s `class` (whose entries
    /// are the keys of `tree` under `prefix`): data written before usage
    /// was recorded is counted once.
    fn ensure_usage(&self, tree: &sled::Tree, prefix: &[u8], ukey: &[u8]) -> StoreResult<()> {
        if self.usage.contains_key(ukey).map_err(e)? {
            return Ok(());
        }
        let (count, bytes) = scan_usage(tree, prefix)?;
        // Another writer may have done the same meanwhile: either count
        // is right, as nothing of this class is written before it exists.
        let _ = self
            .usage
            .compare_and_swap(
                ukey,
                None as Option<&[u8]>,
                Some(&encode_usage(count, bytes)[..]),
            )
            .map_err(e)?;
        Ok(())
    }

    fn remove_prefix(tree: &sled::Tree, prefix: &[u8]) -> StoreResult<()> {
        let mut batch = sled::Batch::default();
        for kv in tree.scan_prefix(prefix).keys() {
            batch.remove(kv.map_err(e)?);
        }
        tree.apply_batch(batch).map_err(e)
    }
}

fn flusher(
    db: sled::Db,
    log: &super::archive_log::LogFiles,
    journal: &sled::Tree,
    journal_cache: &super::sled_journal::JournalCache,
    rx: std_mpsc::Receiver<Waiter>,
) {
    while let Ok(first) = rx.recv() {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        // The archive's log first: sled's index of it may point only at
        // what is on disk.
        // The journal's changes go with sled's flush.
        let result = log
            .sync()
            .map_err(e)
            .and_then(|()| journal_cache.write_dirty(journal))
            .and_then(|()| db.flush().map(|_| ()).map_err(e));
        if let Err(err) = &result {
            tracing::error!(error = %err, "database flush failed");
        }
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
    // Stopping: what the journal still holds goes to disk too.
    if let Err(err) = journal_cache
        .write_dirty(journal)
        .and_then(|()| db.flush().map(|_| ()).map_err(e))
    {
        tracing::error!(error = %err, "database flush failed");
    }
}

impl AccountStore for SledStore {
    fn create(&self, account: Account) -> BoxFuture<'_, StoreResult<bool>> {
        Box::pin(async move {
            let value = serde_json::to_vec(&account).map_err(e)?;
            let created = self
                .accounts
                .compare_and_swap(account.jid.as_bytes(), None as Option<&[u8]>, Some(value))
                .map_err(e)?
                .is_ok();
            if created {
                self.commit().await?;
            }
            Ok(created)
        })
    }

    fn get<'a>(&'a self, jid: &'a BareJid) -> BoxFuture<'a, StoreResult<Option<Account>>> {
        Box::pin(async move {
            match self.accounts.get(jid.as_str().as_bytes()).map_err(e)? {
                None => Ok(None),
                Some(v) => serde_json::from_slice(&v).map(Some).map_err(e),
            }
        })
    }

    fn update(&self, account: Account) -> BoxFuture<'_, StoreResult<bool>> {
        Box::pin(async move {
            if !self
                .accounts
                .contains_key(account.jid.as_bytes())
                .map_err(e)?
            {
                return Ok(false);
            }
            let value = serde_json::to_vec(&account).map_err(e)?;
            self.accounts
                .insert(account.jid.as_bytes(), value)
                .map_err(e)?;
            self.commit().await?;
            Ok(true)
        })
    }

    fn delete<'a>(&'a self, jid: &'a BareJid) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            let user = jid.as_str();
            if !self.accounts.contains_key(user.as_bytes()).map_err(e)? {
                return Ok(false);
            }
            // Data first, account record last: a crash in between leaves an
            // account that can be deleted again, never orphaned data that a
            // new account of the same name would inherit.
            let prefix = user_prefix(user);
            self.journal_cache.forget(user);
            for tree in [
                &self.roster,
                &self.offline,
                &self.userdata,
                &self.usage,
                &self.journal,
                &self.pep,
            ] {
                Self::remove_prefix(tree, &prefix)?;
            }
            self.remove_archive_view(jid).await?;
            self.roster_ver.remove(user.as_bytes()).map_err(e)?;
            self.accounts.remove(user.as_bytes()).map_err(e)?;
            self.commit().await?;
            Ok(true)
        })
    }

    fn list<'a>(&'a self, domain: Option<&'a str>) -> BoxFuture<'a, StoreResult<Vec<String>>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for k in self.accounts.iter().keys() {
                let k = k.map_err(e)?;
                let jid = String::from_utf8_lossy(&k).into_owned();
                let keep = match domain {
                    None => true,
                    Some(d) => jid
                        .rsplit_once('@')
                        .map(|(_, dom)| dom == d)
                        .unwrap_or(false),
                };
                if keep {
                    out.push(jid);
                }
            }
            Ok(out)
        })
    }

    fn exists(&self, jid: &BareJid) -> StoreResult<bool> {
        self.accounts
            .contains_key(jid.as_str().as_bytes())
            .map_err(e)
    }
}

impl RosterStore for SledStore {
    fn roster<'a>(
        &'a self,
        user: &'a BareJid,
    ) -> BoxFuture<'a, StoreResult<(u64, Vec<RosterItem>)>> {
        Box::pin(async move {
            let ver = self
                .roster_ver
                .get(user.as_str().as_bytes())
                .map_err(e)?
                .map(|v| decode_u64(&v))
                .unwrap_or(0);
            let mut items = Vec::new();
            for kv in self.roster.scan_prefix(user_prefix(user.as_str())).values() {
                let v = kv.map_err(e)?;
                items.push(serde_json::from_slice(&v).map_err(e)?);
            }
            Ok((ver, items))
        })
    }

    fn item<'a>(
        &'a self,
        user: &'a BareJid,
        contact: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<RosterItem>>> {
        Box::pin(async move {
            match self
                .roster
                .get(user_key(user.as_str(), contact.as_bytes()))
                .map_err(e)?
            {
                None => Ok(None),
                Some(v) => serde_json::from_slice(&v).map(Some).map_err(e),
            }
        })
    }

    fn put_item<'a>(
        &'a self,
        user: &'a BareJid,
        item: RosterItem,
    ) -> BoxFuture<'a, StoreResult<u64>> {
        Box::pin(async move {
            let key = user_key(user.as_str(), item.jid.as_bytes());
            let value = if item.is_empty() {
                None
            } else {
                Some(serde_json::to_vec(&item).map_err(e)?)
            };
            let ver = (&self.roster, &self.roster_ver)
                .transaction(|(roster, vers)| {
                    match &value {
                        Some(v) => {
                            roster.insert(key.as_slice(), v.as_slice())?;
                        }
                        None => {
                            roster.remove(key.as_slice())?;
                        }
                    }
                    let old = vers
                        .get(user.as_str().as_bytes())?
                        .map(|v| decode_u64(&v))
                        .unwrap_or(0);
                    let new = old + 1;
                    vers.insert(user.as_str().as_bytes(), &new.to_be_bytes())?;
                    Ok::<u64, ConflictableTransactionError<()>>(new)
                })
                .map_err(|err: TransactionError<()>| e(format!("{err:?}")))?;
            self.commit().await?;
            Ok(ver)
        })
    }

    fn version<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, StoreResult<u64>> {
        Box::pin(async move {
            Ok(self
                .roster_ver
                .get(user.as_str().as_bytes())
                .map_err(e)?
                .map(|v| decode_u64(&v))
                .unwrap_or(0))
        })
    }
}

impl OfflineStore for SledStore {
    fn push<'a>(
        &'a self,
        user: &'a BareJid,
        stanza: String,
        quota: OfflineQuota,
    ) -> BoxFuture<'a, StoreResult<OfflinePush>> {
        Box::pin(async move {
            let prefix = user_prefix(user.as_str());
            let ukey = usage_key(user.as_str(), OFFLINE_CLASS);
            self.ensure_usage(&self.offline, &prefix, &ukey)?;
            let seq = self.db.generate_id().map_err(e)?;
            let key = user_key(user.as_str(), &seq.to_be_bytes());
            let len = stanza.len() as u64;
            let r = (&self.offline, &self.usage).transaction(|(offline, usage)| {
                let (count, bytes) = decode_usage(usage.get(&ukey)?.as_deref());
                if count + 1 > quota.max_messages as u64 || bytes + len > quota.max_bytes as u64 {
                    return Err(ConflictableTransactionError::Abort(Refused::OverQuota));
                }
                offline.insert(key.as_slice(), stanza.as_bytes())?;
                usage.insert(ukey.as_slice(), &encode_usage(count + 1, bytes + len)[..])?;
                Ok(())
            });
            match r {
                Ok(()) => {}
                Err(TransactionError::Abort(Refused::OverQuota)) => return Ok(OfflinePush::Full),
                Err(TransactionError::Storage(err)) => return Err(e(err)),
            }
            self.commit().await?;
            Ok(OfflinePush::Stored)
        })
    }

    fn chunk<'a>(
        &'a self,
        user: &'a BareJid,
        after: Option<u64>,
        max_items: usize,
        max_bytes: usize,
    ) -> BoxFuture<'a, StoreResult<Vec<(u64, String)>>> {
        let tree = self.offline.clone();
        let prefix = user_prefix(user.as_str());
        Box::pin(async move {
            let read = move || -> StoreResult<Vec<(u64, String)>> {
                let start = match after {
                    Some(k) => user_key_after(&prefix, k),
                    None => prefix.clone(),
                };
                // The user's keys are `user \0 seq`: `user \x01` sorts after
                // all of them and before any other user's (JIDs contain
                // no control characters).
                let mut end = prefix.clone();
                if let Some(last) = end.last_mut() {
                    *last = 1;
                }
                let mut out = Vec::new();
                let mut bytes = 0usize;
                for kv in tree.range(start..end) {
                    let (k, v) = kv.map_err(e)?;
                    if !out.is_empty() && (out.len() >= max_items || bytes + v.len() > max_bytes) {
                        break;
                    }
                    bytes += v.len();
                    let seq = decode_u64(k.get(prefix.len()..).unwrap_or_default());
                    out.push((seq, String::from_utf8_lossy(&v).into_owned()));
                }
                Ok(out)
            };
            tokio::task::spawn_blocking(read)
                .await
                .map_err(|err| StoreError(format!("offline read failed: {err}")))?
        })
    }

    fn remove<'a>(&'a self, user: &'a BareJid, keys: &'a [u64]) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            let prefix = user_prefix(user.as_str());
            let ukey = usage_key(user.as_str(), OFFLINE_CLASS);
            self.ensure_usage(&self.offline, &prefix, &ukey)?;
            let keys: Vec<Vec<u8>> = keys
                .iter()
                .map(|k| user_key(user.as_str(), &k.to_be_bytes()))
                .collect();
            (&self.offline, &self.usage)
                .transaction(|(offline, usage)| {
                    let (mut count, mut bytes) = decode_usage(usage.get(&ukey)?.as_deref());
                    for k in &keys {
                        if let Some(v) = offline.remove(k.as_slice())? {
                            count = count.saturating_sub(1);
                            bytes = bytes.saturating_sub(v.len() as u64);
                        }
                    }
                    usage.insert(ukey.as_slice(), &encode_usage(count, bytes)[..])?;
                    Ok::<(), ConflictableTransactionError<()>>(())
                })
                .map_err(|err: TransactionError<()>| e(format!("{err:?}")))?;
            self.commit().await
        })
    }

    fn usage<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, StoreResult<(usize, usize)>> {
        Box::pin(async move {
            // Read only: asked at every login, it writes nothing for users
            // who never had offline messages.
            let ukey = usage_key(user.as_str(), OFFLINE_CLASS);
            if let Some(v) = self.usage.get(&ukey).map_err(e)? {
                let (c, b) = decode_usage(Some(&v));
                return Ok((c as usize, b as usize));
            }
            let (c, b) = scan_usage(&self.offline, &user_prefix(user.as_str()))?;
            Ok((c as usize, b as usize))
        })
    }
}

/// The first possible key of `prefix`'s entries after sequence `k`.
fn user_key_after(prefix: &[u8], k: u64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    match k.checked_add(1) {
        Some(n) => key.extend_from_slice(&n.to_be_bytes()),
        None => key.push(0xff),
    }
    key
}

impl UserDataStore for SledStore {
    fn get<'a>(
        &'a self,
        user: &'a BareJid,
        key: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<String>>> {
        Box::pin(async move {
            Ok(self
                .userdata
                .get(user_key(user.as_str(), key.as_bytes()))
                .map_err(e)?
                .map(|v| String::from_utf8_lossy(&v).into_owned()))
        })
    }

    fn put<'a>(
        &'a self,
        user: &'a BareJid,
        key: &'a str,
        value: Option<String>,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            let k = user_key(user.as_str(), key.as_bytes());
            match value {
                Some(v) => self.userdata.insert(k, v.as_bytes()).map(|_| ()),
                None => self.userdata.remove(k).map(|_| ()),
            }
            .map_err(e)?;
            self.commit().await
        })
    }

    fn put_within<'a>(
        &'a self,
        user: &'a BareJid,
        class: &'a str,
        key: &'a str,
        value: Option<String>,
        max_bytes: usize,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            if !key.starts_with(class) {
                return Err(StoreError(format!("{key} is not in class {class}")));
            }
            let k = user_key(user.as_str(), key.as_bytes());
            let prefix = user_key(user.as_str(), class.as_bytes());
            let ukey = usage_key(user.as_str(), &userdata_class(class));
            self.ensure_usage(&self.userdata, &prefix, &ukey)?;
            let new_len = value.as_ref().map_or(0, |v| v.len()) as u64;
            let r = (&self.userdata, &self.usage).transaction(|(data, usage)| {
                let (count, bytes) = decode_usage(usage.get(&ukey)?.as_deref());
                let old = data.get(k.as_slice())?;
                let old_len = old.as_ref().map_or(0, |v| v.len()) as u64;
                let total = bytes - old_len.min(bytes) + new_len;
                if new_len > old_len && total > max_bytes as u64 {
                    return Err(ConflictableTransactionError::Abort(Refused::OverQuota));
                }
                let count = match (&old, &value) {
                    (None, Some(_)) => count + 1,
                    (Some(_), None) => count.saturating_sub(1),
                    _ => count,
                };
                match &value {
                    Some(v) => {
                        data.insert(k.as_slice(), v.as_bytes())?;
                    }
                    None => {
                        data.remove(k.as_slice())?;
                    }
                }
                usage.insert(ukey.as_slice(), &encode_usage(count, total)[..])?;
                Ok(())
            });
            match r {
                Ok(()) => {}
                Err(TransactionError::Abort(Refused::OverQuota)) => return Ok(false),
                Err(TransactionError::Storage(err)) => return Err(e(err)),
            }
            self.commit().await?;
            Ok(true)
        })
    }
}

impl StoreCloser for SledStore {
    fn flush(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move { self.db.flush_async().await.map(|_| ()).map_err(e) })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::{OfflineQuota, ScramRecord, Subscription};

    fn rec() -> ScramRecord {
        ScramRecord {
            iterations: 4096,
            salt: vec![1, 2],
            stored_key: vec![3],
            server_key: vec![4],
        }
    }

    pub(in crate::store) fn account(jid: &str) -> Account {
        Account {
            jid: jid.into(),
            scram_sha1: rec(),
            scram_sha256: rec(),
            disabled: false,
            created: 0,
        }
    }

    fn jid(s: &str) -> BareJid {
        BareJid::new(s).unwrap()
    }

    #[tokio::test]
    async fn accounts_roster_offline_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            assert!(s.create(account("a@x")).await.unwrap());
            assert!(!s.create(account("a@x")).await.unwrap());
            assert!(s.create(account("b@y")).await.unwrap());
            let mut item = RosterItem::new("b@y");
            item.listed = true;
            item.subscription = Subscription::To;
            assert_eq!(s.put_item(&jid("a@x"), item).await.unwrap(), 1);
            assert_eq!(
                OfflineStore::push(&s, &jid("a@x"), "<message/>".into(), quota(2))
                    .await
                    .unwrap(),
                OfflinePush::Stored
            );
            UserDataStore::put(&s, &jid("a@x"), "vcard", Some("<vCard/>".into()))
                .await
                .unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.list(None).await.unwrap(), vec!["a@x", "b@y"]);
        assert_eq!(s.list(Some("y")).await.unwrap(), vec!["b@y"]);
        let (ver, items) = s.roster(&jid("a@x")).await.unwrap();
        assert_eq!(ver, 1);
        assert_eq!(items[0].subscription, Subscription::To);
        let msgs = s.chunk(&jid("a@x"), None, 10, 1 << 20).await.unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].1, "<message/>");
        OfflineStore::push(&s, &jid("a@x"), "<m2/>".into(), quota(2))
            .await
            .unwrap();
        assert_eq!(
            OfflineStore::push(&s, &jid("a@x"), "<m3/>".into(), quota(2))
                .await
                .unwrap(),
            OfflinePush::Full
        );
        let keys: Vec<u64> = s
            .chunk(&jid("a@x"), None, 10, 1 << 20)
            .await
            .unwrap()
            .iter()
            .map(|m| m.0)
            .collect();
        s.remove(&jid("a@x"), &keys).await.unwrap();
        assert_eq!(s.usage(&jid("a@x")).await.unwrap(), (0, 0));
        assert!(s.delete(&jid("a@x")).await.unwrap());
        assert!(s.roster(&jid("a@x")).await.unwrap().1.is_empty());
        assert!(UserDataStore::get(&s, &jid("a@x"), "vcard")
            .await
            .unwrap()
            .is_none());
        assert!(!s.exists(&jid("a@x")).unwrap());
    }

    fn quota(max_messages: usize) -> OfflineQuota {
        OfflineQuota {
            max_messages,
            max_bytes: 1 << 20,
        }
    }

    #[tokio::test]
    async fn offline_quota_holds_under_concurrent_pushes() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
        let q = OfflineQuota {
            max_messages: 10,
            max_bytes: 1000,
        };
        let mut tasks = Vec::new();
        for i in 0..32 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                OfflineStore::push(&*s, &jid("a@x"), format!("<m{i:02}/>"), q)
                    .await
                    .unwrap()
            }));
        }
        let mut stored = 0;
        for t in tasks {
            if t.await.unwrap() == OfflinePush::Stored {
                stored += 1;
            }
        }
        assert_eq!(stored, 10);
        assert_eq!(s.usage(&jid("a@x")).await.unwrap().0, 10);
        // Bytes count too: 100-byte messages, 1000 bytes allowed.
        let user = jid("b@x");
        for i in 0..12 {
            let r = OfflineStore::push(&*s, &user, "x".repeat(100), q)
                .await
                .unwrap();
            assert_eq!(r == OfflinePush::Stored, i < 10, "{i}");
        }
        // Chunks: in order, bounded, resumable.
        let first = s.chunk(&user, None, 3, 1 << 20).await.unwrap();
        assert_eq!(first.len(), 3);
        let rest = s.chunk(&user, Some(first[2].0), 100, 450).await.unwrap();
        assert_eq!(rest.len(), 4);
        assert!(rest[0].0 > first[2].0);
        // A message larger than the byte bound still comes, alone.
        assert_eq!(s.chunk(&user, None, 100, 10).await.unwrap().len(), 1);
        // Another user's messages never show up.
        assert!(s
            .chunk(&jid("a@x"), None, 100, 1 << 20)
            .await
            .unwrap()
            .iter()
            .all(|(_, m)| m.starts_with("<m")));
    }

    #[tokio::test]
    async fn userdata_quota_counts_a_class() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let u = jid("a@x");
        assert!(s
            .put_within(&u, "private/", "private/a", Some("x".repeat(60)), 100)
            .await
            .unwrap());
        assert!(!s
            .put_within(&u, "private/", "private/b", Some("x".repeat(60)), 100)
            .await
            .unwrap());
        // Replacing a document counts its new size only.
        assert!(s
            .put_within(&u, "private/", "private/a", Some("x".repeat(90)), 100)
            .await
            .unwrap());
        // Deleting gives the room back.
        assert!(s
            .put_within(&u, "private/", "private/a", None, 100)
            .await
            .unwrap());
        assert!(s
            .put_within(&u, "private/", "private/b", Some("x".repeat(100)), 100)
            .await
            .unwrap());
        // Other keys are another class.
        assert!(s
            .put_within(&u, "vcard", "vcard", Some("x".repeat(100)), 100)
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn empty_item_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let mut item = RosterItem::new("c@x");
        item.listed = true;
        s.put_item(&jid("a@x"), item.clone()).await.unwrap();
        item.listed = false;
        assert_eq!(s.put_item(&jid("a@x"), item).await.unwrap(), 2);
        assert!(s.item(&jid("a@x"), "c@x").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn second_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _s = SledStore::open(dir.path()).unwrap();
        let err = SledStore::open(dir.path()).err().unwrap();
        assert!(err.0.contains("in use") || err.0.contains("lock"), "{err}");
    }
}

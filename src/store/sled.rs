//! The sled implementation of the store traits.
//!
//! Layout (one sled tree per concern; keys start with the user's bare JID
//! and a NUL byte, which no JID contains):
//! - `accounts`:   jid → JSON `Account`
//! - `roster`:     user \0 contact → JSON `RosterItem`
//! - `roster_ver`: user → u64 (big endian)
//! - `offline`:    user \0 u64 sequence → stanza XML
//! - `userdata`:   user \0 key → value
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
    Account, AccountStore, BoxFuture, OfflinePush, OfflineStore, RosterItem, RosterStore,
    StoreCloser, StoreError, StoreResult, UserDataStore,
};

type Waiter = oneshot::Sender<StoreResult<()>>;

pub struct SledStore {
    db: sled::Db,
    accounts: sled::Tree,
    roster: sled::Tree,
    roster_ver: sled::Tree,
    offline: sled::Tree,
    userdata: sled::Tree,
    flusher: Mutex<Option<std_mpsc::Sender<Waiter>>>,
    flusher_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for SledStore {
    /// Stop the flusher and wait for it, so that its database handle is
    /// gone and the directory can be opened again at once (a restart in
    /// the same process, as tests do).
    fn drop(&mut self) {
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

fn e<E: std::fmt::Display>(err: E) -> StoreError {
    StoreError(err.to_string())
}

fn user_prefix(user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + 1);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k
}

fn user_key(user: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = user_prefix(user);
    k.extend_from_slice(rest);
    k
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
        let (tx, rx) = std_mpsc::channel::<Waiter>();
        let fdb = db.clone();
        let thread = std::thread::Builder::new()
            .name("confab-flush".into())
            .spawn(move || flusher(fdb, rx))
            .map_err(e)?;
        Ok(SledStore {
            accounts: db.open_tree("accounts").map_err(e)?,
            roster: db.open_tree("roster").map_err(e)?,
            roster_ver: db.open_tree("roster_ver").map_err(e)?,
            offline: db.open_tree("offline").map_err(e)?,
            userdata: db.open_tree("userdata").map_err(e)?,
            db,
            flusher: Mutex::new(Some(tx)),
            flusher_thread: Mutex::new(Some(thread)),
        })
    }

    /// Wait until everything written so far is on disk.
    async fn commit(&self) -> StoreResult<()> {
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

    fn remove_prefix(tree: &sled::Tree, prefix: &[u8]) -> StoreResult<()> {
        let mut batch = sled::Batch::default();
        for kv in tree.scan_prefix(prefix).keys() {
            batch.remove(kv.map_err(e)?);
        }
        tree.apply_batch(batch).map_err(e)
    }
}

fn flusher(db: sled::Db, rx: std_mpsc::Receiver<Waiter>) {
    while let Ok(first) = rx.recv() {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let result = db.flush().map(|_| ()).map_err(e);
        if let Err(err) = &result {
            tracing::error!(error = %err, "database flush failed");
        }
        for w in waiters {
            let _ = w.send(result.clone());
        }
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
            for tree in [&self.roster, &self.offline, &self.userdata] {
                Self::remove_prefix(tree, &prefix)?;
            }
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
        max: usize,
    ) -> BoxFuture<'a, StoreResult<OfflinePush>> {
        Box::pin(async move {
            let prefix = user_prefix(user.as_str());
            if self.offline.scan_prefix(&prefix).keys().take(max).count() >= max {
                return Ok(OfflinePush::Full);
            }
            let seq = self.db.generate_id().map_err(e)?;
            let key = user_key(user.as_str(), &seq.to_be_bytes());
            self.offline.insert(key, stanza.as_bytes()).map_err(e)?;
            self.commit().await?;
            Ok(OfflinePush::Stored)
        })
    }

    fn peek<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, StoreResult<Vec<(u64, String)>>> {
        Box::pin(async move {
            let prefix = user_prefix(user.as_str());
            let mut out = Vec::new();
            for kv in self.offline.scan_prefix(&prefix) {
                let (k, v) = kv.map_err(e)?;
                let seq = decode_u64(k.get(prefix.len()..).unwrap_or_default());
                out.push((seq, String::from_utf8_lossy(&v).into_owned()));
            }
            Ok(out)
        })
    }

    fn remove<'a>(&'a self, user: &'a BareJid, keys: &'a [u64]) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            let mut batch = sled::Batch::default();
            for k in keys {
                batch.remove(user_key(user.as_str(), &k.to_be_bytes()));
            }
            self.offline.apply_batch(batch).map_err(e)?;
            self.commit().await
        })
    }

    fn count<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, StoreResult<usize>> {
        Box::pin(async move {
            Ok(self
                .offline
                .scan_prefix(user_prefix(user.as_str()))
                .keys()
                .count())
        })
    }
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
}

impl StoreCloser for SledStore {
    fn flush(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move { self.db.flush_async().await.map(|_| ()).map_err(e) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ScramRecord, Subscription};

    fn rec() -> ScramRecord {
        ScramRecord {
            iterations: 4096,
            salt: vec![1, 2],
            stored_key: vec![3],
            server_key: vec![4],
        }
    }

    fn account(jid: &str) -> Account {
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
                OfflineStore::push(&s, &jid("a@x"), "<message/>".into(), 2)
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
        let msgs = s.peek(&jid("a@x")).await.unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].1, "<message/>");
        OfflineStore::push(&s, &jid("a@x"), "<m2/>".into(), 2)
            .await
            .unwrap();
        assert_eq!(
            OfflineStore::push(&s, &jid("a@x"), "<m3/>".into(), 2)
                .await
                .unwrap(),
            OfflinePush::Full
        );
        let keys: Vec<u64> = s
            .peek(&jid("a@x"))
            .await
            .unwrap()
            .iter()
            .map(|m| m.0)
            .collect();
        s.remove(&jid("a@x"), &keys).await.unwrap();
        assert_eq!(s.count(&jid("a@x")).await.unwrap(), 0);
        assert!(s.delete(&jid("a@x")).await.unwrap());
        assert!(s.roster(&jid("a@x")).await.unwrap().1.is_empty());
        assert!(UserDataStore::get(&s, &jid("a@x"), "vcard")
            .await
            .unwrap()
            .is_none());
        assert!(!s.exists(&jid("a@x")).unwrap());
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

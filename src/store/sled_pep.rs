//! PEP nodes in sled: the tree `pep`, two kinds of key per node (node
//! names and JIDs never contain NUL):
//! - user \0 node \0 `m` → the node's [`Meta`], JSON: its configuration,
//!   how many items it has, the bytes they take, the next sequence number;
//! - user \0 node \0 `i` item-id → the [`Stored`] item, JSON, with its
//!   sequence number (the node's order: the oldest go first).
//!
//! The meta record stays small whatever the node holds, so a publish
//! writes two small values. The account's total is the usage record
//! `user \0 pep` (count of items, bytes), changed in the same transaction
//! as the items. One account's writes take turns (a striped lock, held
//! only while sled is written, never across an await), so a trim's
//! choice of the oldest items stays true until it is applied. Account
//! deletion removes the user's prefix from both trees.

use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::Transactional;
use xmpp_parsers::jid::BareJid;

use super::sled::{decode_usage, e, encode_usage, usage_key, user_key, user_prefix, SledStore};
use super::{BoxFuture, PepItem, PepNodeConfig, PepPublished, PepStore, StoreError, StoreResult};

const USAGE_CLASS: &str = "pep";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    config: PepNodeConfig,
    /// Items the node has.
    #[serde(default)]
    count: u64,
    /// Bytes its items take.
    #[serde(default)]
    bytes: u64,
    /// The sequence number of the next item published.
    #[serde(default)]
    next: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    seq: u64,
    item: PepItem,
}

fn node_prefix(user: &str, node: &str) -> Vec<u8> {
    let mut k = user_key(user, node.as_bytes());
    k.push(0);
    k
}

fn meta_key(user: &str, node: &str) -> Vec<u8> {
    let mut k = node_prefix(user, node);
    k.push(b'm');
    k
}

fn items_prefix(user: &str, node: &str) -> Vec<u8> {
    let mut k = node_prefix(user, node);
    k.push(b'i');
    k
}

fn item_key(user: &str, node: &str, id: &str) -> Vec<u8> {
    let mut k = items_prefix(user, node);
    k.extend_from_slice(id.as_bytes());
    k
}

fn decode<T: for<'de> Deserialize<'de>>(v: &[u8], what: &str) -> StoreResult<T> {
    serde_json::from_slice(v).map_err(|err| StoreError(format!("{what} unreadable: {err}")))
}

/// Why a transaction stopped.
enum Stop {
    OverQuota,
    Missing,
    Broken(StoreError),
}

type TxResult<T> = Result<T, ConflictableTransactionError<Stop>>;

fn broken(err: StoreError) -> ConflictableTransactionError<Stop> {
    ConflictableTransactionError::Abort(Stop::Broken(err))
}

fn tx_get<T: for<'de> Deserialize<'de>>(
    t: &TransactionalTree,
    k: &[u8],
    what: &str,
) -> TxResult<Option<T>> {
    match t.get(k)? {
        None => Ok(None),
        Some(v) => decode(&v, what).map(Some).map_err(broken),
    }
}

fn tx_put<T: Serialize>(t: &TransactionalTree, k: &[u8], v: &T) -> TxResult<()> {
    let json = serde_json::to_vec(v).map_err(|err| broken(e(err)))?;
    t.insert(k, json)?;
    Ok(())
}

/// Add `count` items and `bytes` to the account's usage (negative to
/// remove).
fn tx_usage(
    usage: &TransactionalTree,
    ukey: &[u8],
    count: i64,
    bytes: i64,
) -> Result<u64, UnabortableTransactionError> {
    let (c, b) = decode_usage(usage.get(ukey)?.as_deref());
    let c = c.saturating_add_signed(count);
    let b = b.saturating_add_signed(bytes);
    usage.insert(ukey, &encode_usage(c, b)[..])?;
    Ok(b)
}

fn item_len(item: &PepItem) -> u64 {
    (item.id.len() + item.xml.len() + item.publisher.len()) as u64
}

/// Remove the items `ids` of a node inside a transaction: how many were
/// there, and the bytes they took.
fn tx_remove(
    pep: &TransactionalTree,
    user: &str,
    node: &str,
    ids: &[String],
) -> TxResult<(u64, u64)> {
    let (mut n, mut freed) = (0, 0);
    for id in ids {
        let k = item_key(user, node, id);
        if let Some(old) = tx_get::<Stored>(pep, &k, "PEP item")? {
            n += 1;
            freed += item_len(&old.item);
            pep.remove(k)?;
        }
    }
    Ok((n, freed))
}

fn finish<T>(r: Result<T, TransactionError<Stop>>) -> StoreResult<Result<T, Stop>> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(TransactionError::Abort(Stop::Broken(err))) => Err(err),
        Err(TransactionError::Abort(stop)) => Ok(Err(stop)),
        Err(TransactionError::Storage(err)) => Err(e(err)),
    }
}

impl SledStore {
    fn pep_lock(&self, user: &str) -> std::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut h);
        let m = &self.pep_locks[(h.finish() as usize) % self.pep_locks.len()];
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_meta(&self, user: &str, node: &str) -> StoreResult<Option<Meta>> {
        match self.pep.get(meta_key(user, node)).map_err(e)? {
            None => Ok(None),
            Some(v) => decode(&v, "PEP node").map(Some),
        }
    }

    fn read_item(&self, user: &str, node: &str, id: &str) -> StoreResult<Option<PepItem>> {
        match self.pep.get(item_key(user, node, id)).map_err(e)? {
            None => Ok(None),
            Some(v) => decode::<Stored>(&v, "PEP item").map(|s| Some(s.item)),
        }
    }

    /// A node's items, oldest first.
    fn scan_items(&self, user: &str, node: &str) -> StoreResult<Vec<Stored>> {
        let mut out = Vec::new();
        for v in self.pep.scan_prefix(items_prefix(user, node)).values() {
            out.push(decode::<Stored>(&v.map_err(e)?, "PEP item")?);
        }
        out.sort_by_key(|s| s.seq);
        Ok(out)
    }

    /// The ids of the oldest items to drop so that the node keeps `max`
    /// once `adding` (an id it does not have yet, if any) is in.
    fn oldest_beyond(
        &self,
        user: &str,
        node: &str,
        count: u64,
        max: u64,
        adding: Option<&str>,
    ) -> StoreResult<Vec<String>> {
        let after = count + u64::from(adding.is_some());
        if after <= max {
            return Ok(Vec::new());
        }
        let excess = (after - max) as usize;
        Ok(self
            .scan_items(user, node)?
            .into_iter()
            .map(|s| s.item.id)
            .filter(|id| Some(id.as_str()) != adding)
            .take(excess)
            .collect())
    }
}

impl SledStore {
    /// Remove items of an existing node (`ids`, or every one): how many
    /// were there (`None`: no such node). Not yet committed.
    fn take_out(&self, u: &str, node: &str, ids: Option<&[String]>) -> StoreResult<Option<u64>> {
        let _turn = self.pep_lock(u);
        let ids: Vec<String> = match ids {
            Some(i) => i.to_vec(),
            None => self
                .scan_items(u, node)?
                .into_iter()
                .map(|s| s.item.id)
                .collect(),
        };
        let mk = meta_key(u, node);
        let ukey = usage_key(u, USAGE_CLASS);
        let r = (&self.pep, &self.usage).transaction(|(pep, usage)| {
            let Some(mut meta) = tx_get::<Meta>(pep, &mk, "PEP node")? else {
                return Err(ConflictableTransactionError::Abort(Stop::Missing));
            };
            let (n, freed) = tx_remove(pep, u, node, &ids)?;
            if n > 0 {
                meta.count = meta.count.saturating_sub(n);
                meta.bytes = meta.bytes.saturating_sub(freed);
                tx_put(pep, &mk, &meta)?;
                tx_usage(usage, &ukey, -(n as i64), -(freed as i64))?;
            }
            Ok(n)
        });
        Ok(finish(r)?.ok())
    }
}

impl PepStore for SledStore {
    fn node<'a>(
        &'a self,
        user: &'a BareJid,
        node: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<PepNodeConfig>>> {
        Box::pin(async move { Ok(self.read_meta(user.as_str(), node)?.map(|m| m.config)) })
    }

    fn nodes<'a>(
        &'a self,
        user: &'a BareJid,
    ) -> BoxFuture<'a, StoreResult<Vec<(String, PepNodeConfig)>>> {
        Box::pin(async move {
            let prefix = user_prefix(user.as_str());
            let mut out = Vec::new();
            for k in self.pep.scan_prefix(&prefix).keys() {
                let k = k.map_err(e)?;
                let rest = k.get(prefix.len()..).unwrap_or_default();
                // node \0 m: a node's record; node \0 i…: one of its items.
                if let Some(node) = rest.strip_suffix(b"\0m") {
                    if !node.contains(&0) {
                        let node = String::from_utf8_lossy(node).into_owned();
                        if let Some(m) = self.read_meta(user.as_str(), &node)? {
                            out.push((node, m.config));
                        }
                    }
                }
            }
            Ok(out)
        })
    }

    fn create_node<'a>(
        &'a self,
        user: &'a BareJid,
        node: &'a str,
        config: PepNodeConfig,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            let meta = Meta {
                config,
                count: 0,
                bytes: 0,
                next: 0,
            };
            let json = serde_json::to_vec(&meta).map_err(e)?;
            let created = self
                .pep
                .compare_and_swap(
                    meta_key(user.as_str(), node),
                    None as Option<&[u8]>,
                    Some(json),
                )
                .map_err(e)?
                .is_ok();
            if created {
                self.commit().await?;
            }
            Ok(created)
        })
    }

    fn configure_node<'a>(
        &'a self,
        user: &'a BareJid,
        node: &'a str,
        config: PepNodeConfig,
    ) -> BoxFuture<'a, StoreResult<Option<Vec<String>>>> {
        Box::pin(async move {
            let u = user.as_str();
            let r = {
                let _turn = self.pep_lock(u);
                let Some(meta) = self.read_meta(u, node)? else {
                    return Ok(None);
                };
                let drop =
                    self.oldest_beyond(u, node, meta.count, u64::from(config.max_items), None)?;
                let mk = meta_key(u, node);
                let ukey = usage_key(u, USAGE_CLASS);
                (&self.pep, &self.usage).transaction(|(pep, usage)| {
                    let Some(mut meta) = tx_get::<Meta>(pep, &mk, "PEP node")? else {
                        return Err(ConflictableTransactionError::Abort(Stop::Missing));
                    };
                    let (n, freed) = tx_remove(pep, u, node, &drop)?;
                    meta.config = config.clone();
                    meta.count = meta.count.saturating_sub(n);
                    meta.bytes = meta.bytes.saturating_sub(freed);
                    tx_put(pep, &mk, &meta)?;
                    if n > 0 {
                        tx_usage(usage, &ukey, -(n as i64), -(freed as i64))?;
                    }
                    Ok(drop.clone())
                })
            };
            match finish(r)? {
                Ok(dropped) => {
                    self.commit().await?;
                    Ok(Some(dropped))
                }
                Err(_) => Ok(None),
            }
        })
    }

    fn delete_node<'a>(
        &'a self,
        user: &'a BareJid,
        node: &'a str,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            let u = user.as_str();
            let r = {
                let _turn = self.pep_lock(u);
                let ids: Vec<String> = self
                    .scan_items(u, node)?
                    .into_iter()
                    .map(|s| s.item.id)
                    .collect();
                let mk = meta_key(u, node);
                let ukey = usage_key(u, USAGE_CLASS);
                (&self.pep, &self.usage).transaction(|(pep, usage)| {
                    if tx_get::<Meta>(pep, &mk, "PEP node")?.is_none() {
                        return Err(ConflictableTransactionError::Abort(Stop::Missing));
                    }
                    let (n, freed) = tx_remove(pep, u, node, &ids)?;
                    pep.remove(mk.as_slice())?;
                    tx_usage(usage, &ukey, -(n as i64), -(freed as i64))?;
                    Ok(())
                })
            };
            match finish(r)? {
                Ok(()) => {
                    self.commit().await?;
                    Ok(true)
                }
                Err(_) => Ok(false),
            }
        })
    }

    fn publish<'a>(
        &'a self,
        user: &'a BareJid,
        node: &'a str,
        config: &'a PepNodeConfig,
        item: PepItem,
        max_bytes: usize,
    ) -> BoxFuture<'a, StoreResult<PepPublished>> {
        Box::pin(async move {
            let u = user.as_str();
            let r = {
                let _turn = self.pep_lock(u);
                let meta = self.read_meta(u, node)?;
                let new_id = self.read_item(u, node, &item.id)?.is_none();
                let drop = match &meta {
                    Some(m) => self.oldest_beyond(
                        u,
                        node,
                        m.count,
                        u64::from(m.config.max_items.max(1)),
                        new_id.then_some(item.id.as_str()),
                    )?,
                    None => Vec::new(),
                };
                let mk = meta_key(u, node);
                let ik = item_key(u, node, &item.id);
                let ukey = usage_key(u, USAGE_CLASS);
                let len = item_len(&item);
                (&self.pep, &self.usage).transaction(|(pep, usage)| {
                    let (mut meta, created) = match tx_get::<Meta>(pep, &mk, "PEP node")? {
                        Some(m) => (m, false),
                        None => (
                            Meta {
                                config: config.clone(),
                                count: 0,
                                bytes: 0,
                                next: 0,
                            },
                            true,
                        ),
                    };
                    let old = tx_get::<Stored>(pep, &ik, "PEP item")?;
                    let old_len = old.as_ref().map_or(0, |o| item_len(&o.item));
                    let (n, freed) = tx_remove(pep, u, node, &drop)?;
                    let (_, total) = decode_usage(usage.get(&ukey)?.as_deref());
                    let total = total.saturating_sub(old_len + freed) + len;
                    if len > old_len && total > max_bytes as u64 {
                        return Err(ConflictableTransactionError::Abort(Stop::OverQuota));
                    }
                    let added = u64::from(old.is_none());
                    meta.count = (meta.count + added).saturating_sub(n);
                    meta.bytes = meta.bytes.saturating_sub(old_len + freed) + len;
                    let seq = meta.next;
                    meta.next += 1;
                    tx_put(
                        pep,
                        &ik,
                        &Stored {
                            seq,
                            item: item.clone(),
                        },
                    )?;
                    tx_put(pep, &mk, &meta)?;
                    tx_usage(
                        usage,
                        &ukey,
                        added as i64 - n as i64,
                        len as i64 - old_len as i64 - freed as i64,
                    )?;
                    Ok(PepPublished::Stored {
                        created,
                        dropped: drop.clone(),
                    })
                })
            };
            match finish(r)? {
                Ok(p) => {
                    self.commit().await?;
                    Ok(p)
                }
                Err(_) => Ok(PepPublished::OverQuota),
            }
        })
    }

    fn retract<'a>(
        &'a self,
        user: &'a BareJid,
        node: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            let gone = self.take_out(user.as_str(), node, Some(&[id.to_string()]))?;
            if gone.is_some_and(|n| n > 0) {
                self.commit().await?;
                return Ok(true);
            }
            Ok(false)
        })
    }

    fn purge<'a>(&'a self, user: &'a BareJid, node: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            match self.take_out(user.as_str(), node, None)? {
                Some(_) => {
                    self.commit().await?;
                    Ok(true)
                }
                None => Ok(false),
            }
        })
    }

    fn items<'a>(
        &'a self,
        user: &'a BareJid,
        node: &'a str,
        max: Option<usize>,
    ) -> BoxFuture<'a, StoreResult<Vec<PepItem>>> {
        Box::pin(async move {
            let all = self.scan_items(user.as_str(), node)?;
            let skip = max.map_or(0, |m| all.len().saturating_sub(m));
            Ok(all.into_iter().skip(skip).map(|s| s.item).collect())
        })
    }

    fn items_by_id<'a>(
        &'a self,
        user: &'a BareJid,
        node: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, StoreResult<Vec<PepItem>>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for id in ids {
                if let Some(item) = self.read_item(user.as_str(), node, id)? {
                    out.push(item);
                }
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AccessModel, AccountStore};

    fn config(max: u32) -> PepNodeConfig {
        PepNodeConfig {
            access_model: AccessModel::Presence,
            max_items: max,
            persist_items: true,
            send_last_published_item: Default::default(),
            notify_retract: true,
            notify_delete: true,
            roster_groups_allowed: Vec::new(),
            title: String::new(),
            payload_type: String::new(),
        }
    }

    fn item(id: &str, xml: &str) -> PepItem {
        PepItem {
            id: id.into(),
            xml: xml.into(),
            publisher: String::new(),
            published: 0,
        }
    }

    fn ids(items: &[PepItem]) -> Vec<&str> {
        items.iter().map(|i| i.id.as_str()).collect()
    }

    #[tokio::test]
    async fn nodes_items_order_quota_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let a = BareJid::new("a@example.com").unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let c = config(2);
            assert_eq!(
                s.publish(&a, "n", &c, item("1", "<x/>"), 1000)
                    .await
                    .unwrap(),
                PepPublished::Stored {
                    created: true,
                    dropped: vec![]
                }
            );
            s.publish(&a, "n", &c, item("2", "<x/>"), 1000)
                .await
                .unwrap();
            // A third drops the oldest; republishing moves an item to the end.
            assert_eq!(
                s.publish(&a, "n", &c, item("3", "<x/>"), 1000)
                    .await
                    .unwrap(),
                PepPublished::Stored {
                    created: false,
                    dropped: vec!["1".into()]
                }
            );
            s.publish(&a, "n", &c, item("2", "<y/>"), 1000)
                .await
                .unwrap();
            assert_eq!(ids(&s.items(&a, "n", None).await.unwrap()), ["3", "2"]);
            assert_eq!(ids(&s.items(&a, "n", Some(1)).await.unwrap()), ["2"]);
            // The quota counts every node of the account: 10 bytes are
            // used, and this item takes 991.
            let big = "x".repeat(990);
            assert_eq!(
                s.publish(&a, "other", &config(10), item("b", &big), 1000)
                    .await
                    .unwrap(),
                PepPublished::OverQuota
            );
            assert!(s.node(&a, "other").await.unwrap().is_none());
            assert!(s.retract(&a, "n", "3").await.unwrap());
            assert!(!s.retract(&a, "n", "3").await.unwrap());
            assert!(matches!(
                s.publish(&a, "other", &config(10), item("b", &big), 1000)
                    .await
                    .unwrap(),
                PepPublished::Stored { .. }
            ));
            // Lowering max_items drops the oldest.
            assert!(matches!(
                s.publish(&a, "other", &config(10), item("c", "<z/>"), 2000)
                    .await
                    .unwrap(),
                PepPublished::Stored { .. }
            ));
            assert_eq!(
                s.configure_node(&a, "other", config(1)).await.unwrap(),
                Some(vec!["b".to_string()])
            );
            assert!(!s.create_node(&a, "n", config(5)).await.unwrap());
            assert!(s.create_node(&a, "empty", config(5)).await.unwrap());
        }
        let s = SledStore::open(dir.path()).unwrap();
        let mut names: Vec<String> = s
            .nodes(&a)
            .await
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        names.sort();
        assert_eq!(names, ["empty", "n", "other"]);
        assert_eq!(
            s.items_by_id(&a, "n", &["2".into(), "9".into()])
                .await
                .unwrap()[0]
                .xml,
            "<y/>"
        );
        assert!(s.purge(&a, "n").await.unwrap());
        assert!(s.items(&a, "n", None).await.unwrap().is_empty());
        assert!(s.delete_node(&a, "other").await.unwrap());
        assert!(!s.delete_node(&a, "other").await.unwrap());
        // What was freed can be used again: the usage record followed.
        let big = "x".repeat(950);
        assert!(matches!(
            s.publish(&a, "n", &config(1), item("b", &big), 1000)
                .await
                .unwrap(),
            PepPublished::Stored { .. }
        ));
        // Account deletion takes the nodes with it.
        s.create(crate::store::sled::tests::account(a.as_str()))
            .await
            .unwrap();
        assert!(s.delete(&a).await.unwrap());
        assert!(s.nodes(&a).await.unwrap().is_empty());
    }
}

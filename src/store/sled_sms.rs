//! The SMS gateway's state in sled: the tree `sms`, three kinds of key.
//! - `o` + id (8 octets, big-endian) → an outgoing SMS not yet wholly
//!   acknowledged by the SMS centre (JSON);
//! - `s` + SMSC message id → what a delivery report for it is about (JSON);
//! - `w` + number → the account that last wrote to it;
//! - `p` + source/reference/total → the parts of a concatenated incoming
//!   SMS received so far (JSON).
//!
//! Acknowledging an SMS is one atomic batch: its report records in, the
//! outgoing entry out.

use super::sled::{e, SledStore};
use super::{BoxFuture, SmsStore, StoreResult};

fn key(kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(kind);
    k.extend_from_slice(rest);
    k
}

impl SmsStore for SledStore {
    fn next_sms_id(&self) -> StoreResult<u64> {
        self.db().generate_id().map_err(e)
    }

    fn put_outgoing<'a>(&'a self, id: u64, doc: Option<&'a str>) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            let k = key(b'o', &id.to_be_bytes());
            match doc {
                Some(d) => self.sms.insert(k, d.as_bytes()).map(|_| ()).map_err(e)?,
                None => self.sms.remove(k).map(|_| ()).map_err(e)?,
            }
            self.commit().await
        })
    }

    fn outgoing(&self) -> BoxFuture<'_, StoreResult<Vec<(u64, String)>>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for kv in self.sms.scan_prefix([b'o']) {
                let (k, v) = kv.map_err(e)?;
                let Ok(id) = <[u8; 8]>::try_from(&k[1..]) else {
                    continue;
                };
                out.push((
                    u64::from_be_bytes(id),
                    String::from_utf8_lossy(&v).into_owned(),
                ));
            }
            Ok(out)
        })
    }

    fn acknowledged<'a>(
        &'a self,
        id: u64,
        reports: &'a [(String, String)],
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            let mut batch = sled::Batch::default();
            for (smsc_id, doc) in reports {
                batch.insert(key(b's', smsc_id.as_bytes()), doc.as_bytes());
            }
            batch.remove(key(b'o', &id.to_be_bytes()));
            self.sms.apply_batch(batch).map_err(e)?;
            self.commit().await
        })
    }

    fn report<'a>(
        &'a self,
        smsc_id: &'a str,
        doc: Option<Option<&'a str>>,
    ) -> BoxFuture<'a, StoreResult<Option<String>>> {
        Box::pin(self.swap(b's', smsc_id, doc))
    }

    fn partial<'a>(
        &'a self,
        key: &'a str,
        doc: Option<Option<&'a str>>,
    ) -> BoxFuture<'a, StoreResult<Option<String>>> {
        Box::pin(self.swap(b'p', key, doc))
    }

    fn set_last_writer<'a>(
        &'a self,
        number: &'a str,
        jid: &'a str,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            let k = key(b'w', number.as_bytes());
            if self.sms.get(&k).map_err(e)?.as_deref() == Some(jid.as_bytes()) {
                return Ok(());
            }
            self.sms.insert(k, jid.as_bytes()).map_err(e)?;
            self.commit().await
        })
    }

    fn last_writer<'a>(&'a self, number: &'a str) -> BoxFuture<'a, StoreResult<Option<String>>> {
        Box::pin(async move {
            Ok(self
                .sms
                .get(key(b'w', number.as_bytes()))
                .map_err(e)?
                .map(|v| String::from_utf8_lossy(&v).into_owned()))
        })
    }
}

impl SledStore {
    /// Read the document under `kind` + `name`; with `doc` `Some`, replace
    /// it (`Some(None)`: remove it), durably. Returns what was there.
    async fn swap(
        &self,
        kind: u8,
        name: &str,
        doc: Option<Option<&str>>,
    ) -> StoreResult<Option<String>> {
        let k = key(kind, name.as_bytes());
        let old = self
            .sms
            .get(&k)
            .map_err(e)?
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        match doc {
            None => return Ok(old),
            Some(Some(d)) => {
                self.sms.insert(k, d.as_bytes()).map_err(e)?;
            }
            Some(None) => {
                self.sms.remove(k).map_err(e)?;
            }
        }
        self.commit().await?;
        Ok(old)
    }
}

//! Each user's journal in sled: the tree `journal`, key user + NUL +
//! conversation JID, value a [`JournalEntry`] in its binary form. A change
//! is one atomic read-modify-write of the entry.

use xmpp_parsers::jid::BareJid;

use super::sled::{e, user_key, user_prefix, SledStore};
use super::{BoxFuture, JournalEntry, JournalStore, JournalUpdate, StoreResult};

impl JournalStore for SledStore {
    fn update<'a>(
        &'a self,
        user: &'a BareJid,
        conv: &'a str,
        mut f: JournalUpdate,
    ) -> BoxFuture<'a, StoreResult<(Option<JournalEntry>, Option<JournalEntry>)>> {
        Box::pin(async move {
            let key = user_key(user.as_str(), conv.as_bytes());
            let mut before = None;
            let mut after = None;
            self.journal
                .update_and_fetch(&key, |old| {
                    before = old.and_then(JournalEntry::decode);
                    after = f(before.clone());
                    after.as_ref().map(JournalEntry::encode)
                })
                .map_err(e)?;
            Ok((before, after))
        })
    }

    fn get<'a>(
        &'a self,
        user: &'a BareJid,
        conv: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<JournalEntry>>> {
        Box::pin(async move {
            let key = user_key(user.as_str(), conv.as_bytes());
            Ok(self
                .journal
                .get(key)
                .map_err(e)?
                .and_then(|v| JournalEntry::decode(&v)))
        })
    }

    fn entries<'a>(&'a self, user: &'a BareJid) -> BoxFuture<'a, StoreResult<Vec<JournalEntry>>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for kv in self.journal.scan_prefix(user_prefix(user.as_str())) {
                let (_, v) = kv.map_err(e)?;
                out.extend(JournalEntry::decode(&v));
            }
            Ok(out)
        })
    }

    fn sync(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.commit())
    }
}

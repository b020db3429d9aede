//! Rights and groups in sled: the tree `policy`, four kinds of key.
//! - `r` + grantee + NUL + right → nothing: a grant; the grantee is
//!   `u:` + bare JID or `g:` + group name;
//! - `g` + group → nothing: the group exists;
//! - `m` + group + NUL + JID → nothing: a member;
//! - `j` + JID + NUL + group → nothing: the same membership, by account;
//! - `p` + group + NUL + group → a level's name: a group policy.
//!
//! Each change that touches several keys is one atomic batch.

use super::sled::{e, SledStore};
use super::{BoxFuture, Grantee, PolicyStore, StoreResult};

fn key(kind: u8, a: &str, b: Option<&str>) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + a.len() + b.map_or(0, str::len));
    k.push(kind);
    k.extend_from_slice(a.as_bytes());
    if let Some(b) = b {
        k.push(0);
        k.extend_from_slice(b.as_bytes());
    }
    k
}

fn grantee(who: &Grantee) -> String {
    match who {
        Grantee::User(j) => format!("u:{j}"),
        Grantee::Group(g) => format!("g:{g}"),
    }
}

fn parse_grantee(s: &str) -> Option<Grantee> {
    if let Some(j) = s.strip_prefix("u:") {
        return Some(Grantee::User(j.to_string()));
    }
    s.strip_prefix("g:").map(|g| Grantee::Group(g.to_string()))
}

/// The second parts of the keys under `kind` + `a` + NUL.
fn seconds(tree: &sled::Tree, kind: u8, a: &str) -> StoreResult<Vec<String>> {
    let prefix = key(kind, a, Some(""));
    let mut out = Vec::new();
    for kv in tree.scan_prefix(&prefix) {
        let (k, _) = kv.map_err(e)?;
        out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
    }
    Ok(out)
}

fn drop_membership(batch: &mut sled::Batch, group: &str, jid: &str) {
    batch.remove(key(b'm', group, Some(jid)));
    batch.remove(key(b'j', jid, Some(group)));
}

/// Add the removal of every grant of `who` to `batch`.
fn drop_grants(tree: &sled::Tree, batch: &mut sled::Batch, who: &Grantee) -> StoreResult<()> {
    let g = grantee(who);
    for right in seconds(tree, b'r', &g)? {
        batch.remove(key(b'r', &g, Some(&right)));
    }
    Ok(())
}

impl SledStore {
    fn group_exists(&self, name: &str) -> StoreResult<bool> {
        self.policy.contains_key(key(b'g', name, None)).map_err(e)
    }

    /// Insert (`on`) or remove one key: whether something changed.
    async fn toggle(&self, k: Vec<u8>, on: bool) -> StoreResult<bool> {
        let before = if on {
            self.policy.insert(k, &[])
        } else {
            self.policy.remove(k)
        }
        .map_err(e)?;
        let changed = before.is_some() != on;
        if changed {
            self.commit().await?;
        }
        Ok(changed)
    }
}

impl PolicyStore for SledStore {
    fn set_right<'a>(
        &'a self,
        who: &'a Grantee,
        right: &'a str,
        on: bool,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move { self.toggle(key(b'r', &grantee(who), Some(right)), on).await })
    }

    fn granted<'a>(&'a self, who: &'a Grantee, right: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            self.policy
                .contains_key(key(b'r', &grantee(who), Some(right)))
                .map_err(e)
        })
    }

    fn grants(&self) -> BoxFuture<'_, StoreResult<Vec<(Grantee, String)>>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for kv in self.policy.scan_prefix([b'r']) {
                let (k, _) = kv.map_err(e)?;
                let rest = String::from_utf8_lossy(&k[1..]).into_owned();
                let Some((who, right)) = rest.split_once('\0') else {
                    continue;
                };
                if let Some(g) = parse_grantee(who) {
                    out.push((g, right.to_string()));
                }
            }
            out.sort();
            Ok(out)
        })
    }

    fn set_group<'a>(&'a self, name: &'a str, on: bool) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            if self.group_exists(name)? == on {
                return Ok(false);
            }
            let mut batch = sled::Batch::default();
            if on {
                batch.insert(key(b'g', name, None), &[]);
            } else {
                batch.remove(key(b'g', name, None));
                for jid in seconds(&self.policy, b'm', name)? {
                    drop_membership(&mut batch, name, &jid);
                }
                drop_grants(&self.policy, &mut batch, &Grantee::Group(name.to_string()))?;
                for (from, to, _) in self.policies().await? {
                    if from == name || to == name {
                        batch.remove(key(b'p', &from, Some(&to)));
                    }
                }
            }
            self.policy.apply_batch(batch).map_err(e)?;
            self.commit().await?;
            Ok(true)
        })
    }

    fn groups(&self) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for kv in self.policy.scan_prefix([b'g']) {
                let (k, _) = kv.map_err(e)?;
                out.push(String::from_utf8_lossy(&k[1..]).into_owned());
            }
            Ok(out)
        })
    }

    fn members<'a>(&'a self, group: &'a str) -> BoxFuture<'a, StoreResult<Option<Vec<String>>>> {
        Box::pin(async move {
            if !self.group_exists(group)? {
                return Ok(None);
            }
            seconds(&self.policy, b'm', group).map(Some)
        })
    }

    fn set_member<'a>(
        &'a self,
        group: &'a str,
        jid: &'a str,
        on: bool,
    ) -> BoxFuture<'a, StoreResult<Option<bool>>> {
        Box::pin(async move {
            if !self.group_exists(group)? {
                return Ok(None);
            }
            let m = key(b'm', group, Some(jid));
            if self.policy.contains_key(&m).map_err(e)? == on {
                return Ok(Some(false));
            }
            let mut batch = sled::Batch::default();
            if on {
                batch.insert(m, &[]);
                batch.insert(key(b'j', jid, Some(group)), &[]);
            } else {
                drop_membership(&mut batch, group, jid);
            }
            self.policy.apply_batch(batch).map_err(e)?;
            self.commit().await?;
            Ok(Some(true))
        })
    }

    fn groups_of<'a>(&'a self, jid: &'a str) -> BoxFuture<'a, StoreResult<Vec<String>>> {
        Box::pin(async move { seconds(&self.policy, b'j', jid) })
    }

    fn forget_user<'a>(&'a self, jid: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            let mut batch = sled::Batch::default();
            for g in seconds(&self.policy, b'j', jid)? {
                drop_membership(&mut batch, &g, jid);
            }
            drop_grants(&self.policy, &mut batch, &Grantee::User(jid.to_string()))?;
            self.policy.apply_batch(batch).map_err(e)?;
            self.commit().await
        })
    }

    fn set_policy<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        level: Option<&'a str>,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            let k = key(b'p', from, Some(to));
            let before = match level {
                Some(l) => self.policy.insert(k, l.as_bytes()),
                None => self.policy.remove(k),
            }
            .map_err(e)?;
            let changed = before.as_deref() != level.map(str::as_bytes);
            if changed {
                self.commit().await?;
            }
            Ok(changed)
        })
    }

    fn policies(&self) -> BoxFuture<'_, StoreResult<Vec<(String, String, String)>>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for kv in self.policy.scan_prefix([b'p']) {
                let (k, v) = kv.map_err(e)?;
                let rest = String::from_utf8_lossy(&k[1..]).into_owned();
                if let Some((from, to)) = rest.split_once('\0') {
                    out.push((
                        from.to_string(),
                        to.to_string(),
                        String::from_utf8_lossy(&v).into_owned(),
                    ));
                }
            }
            Ok(out)
        })
    }
}

//! The authorization level a user grants a contact (PRODUCT.md §2), and
//! the user's own choices behind it: XEP-0191 block list items and
//! per-contact overrides. Blocking a contact and overriding its level to
//! `blocked` are one state: a bare JID on the block list *is* the
//! `blocked` override, so each protocol shows what the other set.
//!
//! [`Levels`] is the one place that computes a level. It caches each
//! user's choices and a snapshot of the groups and group policies, both
//! read on every stanza between users and rarely written. The choices
//! change only through [`Levels::change`]; group changes call
//! [`Levels::groups_changed`]. (A cluster of servers will need those
//! invalidations broadcast; one process holds them now.)

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use xmpp_parsers::jid::{BareJid, Jid};

use super::{Level, Source};
use crate::stanza::Bare;
use crate::store::{StoreResult, Stores};

/// The userdata key of a user's choices.
const KEY: &str = "authz";
/// Where earlier versions kept the block list alone (read when `KEY` is
/// missing, removed at the next change).
const LEGACY_BLOCKLIST: &str = "blocklist";
/// Users whose choices are cached before the cache starts over.
const MAX_CACHED: usize = 100_000;
/// Most block list items and overrides one user keeps (each change
/// rewrites them all, and each stanza may scan the block list).
pub const MAX_CHOICES: usize = 10_000;

/// Why a change of choices was not made.
#[derive(Debug)]
pub enum ChangeError {
    Store(crate::store::StoreError),
    /// It would keep more than [`MAX_CHOICES`].
    TooMany,
}

impl From<crate::store::StoreError> for ChangeError {
    fn from(e: crate::store::StoreError) -> Self {
        ChangeError::Store(e)
    }
}

/// A user's own choices.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choices {
    /// XEP-0191 items (JIDs as normalised strings: bare, full, domain or
    /// domain/resource), in the order they were blocked.
    #[serde(default)]
    pub blocklist: Vec<String>,
    /// Overrides per contact (bare JID), never `blocked` (that is a
    /// block list item).
    #[serde(default)]
    pub levels: BTreeMap<String, Level>,
}

/// What a change did, for the pushes and presence it causes.
#[derive(Debug, Default)]
pub struct Delta {
    /// Block list items added.
    pub blocked: Vec<String>,
    /// Block list items removed.
    pub unblocked: Vec<String>,
    /// The whole block list was cleared (XEP-0191 unblock-all).
    pub unblocked_all: bool,
    /// Bare JIDs whose override changed (set, unset, blocked or
    /// unblocked).
    pub contacts: Vec<String>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.blocked.is_empty() && self.unblocked.is_empty() && self.contacts.is_empty()
    }
}

/// XEP-0191 §3.4 matching: a list item blocks a JID if it equals the full
/// JID, the bare JID, the domain plus resource, or the domain.
pub fn item_matches(item: &str, other: &Jid) -> bool {
    let domain = other.domain().as_str();
    item == other.as_str()
        || item == other.bare().as_str()
        || item == domain
        || other.resource().is_some_and(|r| {
            item.strip_prefix(domain).and_then(|x| x.strip_prefix('/')) == Some(r.as_str())
        })
}

/// Whether a block list item is a contact's bare JID (so it is that
/// contact's `blocked` override).
fn is_contact(item: &str) -> bool {
    BareJid::new(item).is_ok_and(|j| j.node().is_some())
}

impl Choices {
    /// The block list item that blocks `other`, if any.
    pub fn blocking_item(&self, other: &Jid) -> Option<&str> {
        self.blocklist
            .iter()
            .find(|i| item_matches(i, other))
            .map(String::as_str)
    }

    /// Every override: contacts on the block list and those with a level.
    pub fn overrides(&self) -> Vec<(String, Level)> {
        let mut out: Vec<(String, Level)> = self
            .blocklist
            .iter()
            .filter(|i| is_contact(i))
            .map(|i| (i.clone(), Level::Blocked))
            .collect();
        out.extend(self.levels.iter().map(|(j, l)| (j.clone(), *l)));
        out
    }

    /// Block `items` (XEP-0191 block). A blocked contact loses any other
    /// override it had.
    pub fn block(&mut self, items: &[String], d: &mut Delta) {
        for i in items {
            if self.blocklist.contains(i) {
                continue;
            }
            self.blocklist.push(i.clone());
            d.blocked.push(i.clone());
            self.levels.remove(i);
            if is_contact(i) {
                d.contacts.push(i.clone());
            }
        }
    }

    /// Unblock `items`, or everything when `items` is empty (XEP-0191
    /// unblock).
    pub fn unblock(&mut self, items: &[String], d: &mut Delta) {
        let (gone, kept): (Vec<String>, Vec<String>) = std::mem::take(&mut self.blocklist)
            .into_iter()
            .partition(|j| items.is_empty() || items.contains(j));
        self.blocklist = kept;
        d.unblocked_all |= items.is_empty();
        for i in gone {
            if is_contact(&i) {
                d.contacts.push(i.clone());
            }
            d.unblocked.push(i);
        }
    }

    /// Override the level of `contact` (`None`: the override goes, and
    /// the group policy or default applies again).
    pub fn set(&mut self, contact: &BareJid, level: Option<Level>, d: &mut Delta) {
        let c = contact.to_string();
        let was_blocked = self.blocklist.contains(&c);
        let before = self.levels.get(&c).copied();
        match level {
            Some(Level::Blocked) => {
                self.block(std::slice::from_ref(&c), d);
                return;
            }
            Some(l) => {
                self.levels.insert(c.clone(), l);
            }
            None => {
                self.levels.remove(&c);
            }
        }
        if was_blocked {
            self.blocklist.retain(|i| *i != c);
            d.unblocked.push(c.clone());
        }
        if was_blocked || before != self.levels.get(&c).copied() {
            d.contacts.push(c);
        }
    }
}

/// Group memberships and policies, as of one moment.
#[derive(Default)]
struct Groups {
    /// Account → the groups it is a member of.
    of: HashMap<String, Vec<String>>,
    /// (from, to, level), sorted by group names.
    policies: Vec<(String, String, Level)>,
}

impl Groups {
    async fn load(stores: &Stores) -> StoreResult<Groups> {
        let mut of: HashMap<String, Vec<String>> = HashMap::new();
        for g in stores.policy.groups().await? {
            for m in stores.policy.members(&g).await?.unwrap_or_default() {
                of.entry(m).or_default().push(g.clone());
            }
        }
        let policies = stores
            .policy
            .policies()
            .await?
            .into_iter()
            .filter_map(|(f, t, l)| Level::parse(&l).ok().map(|l| (f, t, l)))
            .collect();
        Ok(Groups { of, policies })
    }

    /// The highest policy from one of `owner`'s groups to one of
    /// `contact`'s.
    fn best(&self, owner: &BareJid, contact: &BareJid) -> Option<(Level, Source)> {
        let mine = self.of.get(owner.as_str())?;
        let theirs = self.of.get(contact.as_str())?;
        let mut best: Option<(Level, &str, &str)> = None;
        for (from, to, l) in &self.policies {
            if mine.contains(from) && theirs.contains(to) && best.is_none_or(|b| *l > b.0) {
                best = Some((*l, from, to));
            }
        }
        best.map(|(l, from, to)| {
            (
                l,
                Source::Group {
                    from: from.to_string(),
                    to: to.to_string(),
                },
            )
        })
    }
}

/// Levels and the choices behind them, cached.
#[derive(Default)]
pub struct Levels {
    users: RwLock<HashMap<BareJid, Arc<Choices>>>,
    groups: RwLock<Option<Arc<Groups>>>,
    /// Bumped by each group change, so that a snapshot loaded across a
    /// change is not kept.
    generation: AtomicU64,
    /// One change of choices at a time (read, modify, write).
    writes: tokio::sync::Mutex<()>,
}

impl Levels {
    /// `user`'s choices.
    pub async fn choices(&self, stores: &Stores, user: &BareJid) -> StoreResult<Arc<Choices>> {
        if let Some(c) = self.users.read().ok().and_then(|m| m.get(user).cloned()) {
            return Ok(c);
        }
        let c = Arc::new(Self::read(stores, user).await?);
        if let Ok(mut m) = self.users.write() {
            if m.len() >= MAX_CACHED {
                m.clear();
            }
            // A change that landed meanwhile wrote the newer value.
            return Ok(m.entry(user.clone()).or_insert(c).clone());
        }
        Ok(c)
    }

    async fn read(stores: &Stores, user: &BareJid) -> StoreResult<Choices> {
        if let Some(s) = stores.userdata.get(user, KEY).await? {
            return Ok(serde_json::from_str(&s).unwrap_or_else(|e| {
                tracing::error!(%user, error = %e, "unreadable authorization choices ignored");
                Choices::default()
            }));
        }
        let blocklist = stores
            .userdata
            .get(user, LEGACY_BLOCKLIST)
            .await?
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        Ok(Choices {
            blocklist,
            levels: BTreeMap::new(),
        })
    }

    /// Change `user`'s choices with `f`, durably: what changed; on an
    /// error nothing changed.
    pub async fn change(
        &self,
        stores: &Stores,
        user: &BareJid,
        f: impl FnOnce(&mut Choices, &mut Delta),
    ) -> Result<Delta, ChangeError> {
        let _one = self.writes.lock().await;
        let mut c = Self::read(stores, user).await?;
        let mut d = Delta::default();
        let before = c.blocklist.len() + c.levels.len();
        f(&mut c, &mut d);
        if d.is_empty() && !d.unblocked_all {
            return Ok(d);
        }
        let after = c.blocklist.len() + c.levels.len();
        if after > MAX_CHOICES && after > before {
            return Err(ChangeError::TooMany);
        }
        let json = serde_json::to_string(&c).map_err(|e| {
            ChangeError::Store(crate::store::StoreError(format!("encoding choices: {e}")))
        })?;
        stores.userdata.put(user, KEY, Some(json)).await?;
        stores.userdata.put(user, LEGACY_BLOCKLIST, None).await?;
        if let Ok(mut m) = self.users.write() {
            m.insert(user.clone(), Arc::new(c));
        }
        Ok(d)
    }

    /// A deleted account's choices leave the cache (the store dropped
    /// them with the account).
    pub fn forget(&self, user: &BareJid) {
        if let Ok(mut m) = self.users.write() {
            m.remove(user);
        }
    }

    /// Groups, memberships or policies changed.
    pub fn groups_changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut g) = self.groups.write() {
            *g = None;
        }
    }

    async fn groups(&self, stores: &Stores) -> StoreResult<Arc<Groups>> {
        if let Some(g) = self.groups.read().ok().and_then(|g| g.clone()) {
            return Ok(g);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let g = Arc::new(Groups::load(stores).await?);
        if let Ok(mut slot) = self.groups.write() {
            if self.generation.load(Ordering::SeqCst) == generation {
                *slot = Some(g.clone());
            }
        }
        Ok(g)
    }

    /// The level `owner` grants `contact` and where it comes from: a block
    /// list item or override, else the highest group policy from one of
    /// `owner`'s groups to one of `contact`'s, else `[authz]`'s default
    /// for local or remote contacts. `person`: `contact` is a user (not a
    /// server, a room or another service); for anything else only the
    /// block list counts, and `None` means it is not blocked.
    pub async fn level(
        &self,
        stores: &Stores,
        domain: &str,
        authz: &crate::config::Authz,
        owner: &BareJid,
        contact: &Jid,
        person: bool,
    ) -> StoreResult<Option<(Level, Source)>> {
        let c = self.choices(stores, owner).await?;
        let bare = contact.to_bare();
        if let Some(item) = c.blocking_item(contact) {
            let source = if item == bare.as_str() {
                Source::Override
            } else {
                Source::Blocklist {
                    item: item.to_string(),
                }
            };
            return Ok(Some((Level::Blocked, source)));
        }
        if !person {
            return Ok(None);
        }
        if let Some(l) = c.levels.get(bare.as_str()) {
            return Ok(Some((*l, Source::Override)));
        }
        if let Some(b) = self.groups(stores).await?.best(owner, &bare) {
            return Ok(Some(b));
        }
        Ok(Some(if bare.domain().as_str() == domain {
            (authz.default_local, Source::DefaultLocal)
        } else {
            (authz.default_remote, Source::DefaultRemote)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bare(s: &str) -> BareJid {
        BareJid::new(s).unwrap()
    }

    #[test]
    fn blocking_a_contact_is_its_blocked_override_and_back() {
        let mut c = Choices::default();
        let mut d = Delta::default();
        c.set(&bare("bob@x"), Some(Level::Private), &mut d);
        assert_eq!(c.overrides(), vec![("bob@x".into(), Level::Private)]);
        let mut d = Delta::default();
        c.block(&["bob@x".into(), "evil.example".into()], &mut d);
        assert_eq!(d.contacts, vec!["bob@x".to_string()]);
        // The block replaced the override; a domain is no contact's.
        assert_eq!(c.overrides(), vec![("bob@x".into(), Level::Blocked)]);
        let mut d = Delta::default();
        c.set(&bare("bob@x"), Some(Level::Public), &mut d);
        assert_eq!(d.unblocked, vec!["bob@x".to_string()]);
        assert_eq!(c.blocklist, vec!["evil.example".to_string()]);
        assert_eq!(c.overrides(), vec![("bob@x".into(), Level::Public)]);
        let mut d = Delta::default();
        c.set(&bare("bob@x"), Some(Level::Blocked), &mut d);
        assert!(c.levels.is_empty());
        let mut d = Delta::default();
        c.unblock(&[], &mut d);
        assert!(d.unblocked_all && c.blocklist.is_empty());
        assert_eq!(d.contacts, vec!["bob@x".to_string()]);
        // Unsetting what is not there changes nothing.
        let mut d = Delta::default();
        c.set(&bare("carol@x"), None, &mut d);
        assert!(d.is_empty());
    }

    #[test]
    fn items_match_as_xep_0191_says() {
        let j = Jid::new("bob@x/phone").unwrap();
        for item in ["bob@x/phone", "bob@x", "x", "x/phone"] {
            assert!(item_matches(item, &j), "{item}");
        }
        for item in ["bob@x/desk", "y", "x/desk", "carol@x"] {
            assert!(!item_matches(item, &j), "{item}");
        }
    }
}

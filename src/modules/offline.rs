//! Offline messages (XEP-0160): a chat or normal message for a user with
//! no available resource of non-negative priority is stored durably,
//! stamped with a XEP-0203 delay, within the user's quota (messages and
//! bytes), and flushed to disk before the sender's stanza counts as
//! handled.
//!
//! Delivery is a *drain*: when a session sends its first available
//! presence of non-negative priority, it takes the user's queue and
//! delivers it, oldest first, a chunk at a time and only as fast as its
//! client reads (see `c2s::Backlog`); each message is deleted from storage
//! once the session's socket took it. While a drain runs, new messages to
//! the bare JID join the end of the stored queue instead of overtaking it.
//! A session that ends before its drain is done hands it to another
//! available resource, or leaves the rest stored for the next one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use minidom::Element;
use xmpp_parsers::jid::BareJid;
use xmpp_parsers::stanza_error::DefinedCondition as Cond;

use super::Registry;
use crate::c2s::{Backlog, ClientState};
use crate::router;
use crate::server::Ctx;
use crate::sessions::{Control, Fate};
use crate::store::{BoxFuture, OfflinePush, OfflineQuota};
use crate::xml::{ns, writer};

pub fn register(r: &mut Registry) {
    r.server_feature(ns::OFFLINE);
}

/// Messages and bytes read from storage per drain step.
const CHUNK_ITEMS: usize = 32;
const CHUNK_BYTES: usize = 64 * 1024;

const HINTS: &str = "urn:xmpp:hints";

/// Whether a message is worth keeping for later: not when the sender asked
/// (XEP-0334 hints) and not for bare chat-state notifications (XEP-0085 §5.5).
fn storable(el: &Element) -> bool {
    if el.has_child("no-store", HINTS) || el.has_child("no-permanent-store", HINTS) {
        return false;
    }
    if el.has_child("store", HINTS) || el.has_child("body", ns::CLIENT) {
        return true;
    }
    el.children()
        .any(|c| !(c.ns() == ns::CHATSTATES || c.is("thread", ns::CLIENT)))
}

/// The drains in progress: which session delivers each user's queue.
/// The lock orders "a message joins the stored queue" against "the drain
/// found the queue empty and ends", so no message is left behind. Consulted
/// for every message to a bare JID, so sharded like the session registry:
/// no lock shared by all users on that path.
pub struct Drains {
    shards: Vec<Mutex<HashMap<BareJid, Drain>>>,
}

const SHARDS: usize = 64;

impl Default for Drains {
    fn default() -> Self {
        Drains {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

struct Drain {
    session: u64,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drains {
    fn shard(&self, user: &BareJid) -> std::sync::MutexGuard<'_, HashMap<BareJid, Drain>> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut h);
        self.shards[(h.finish() as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn lock_of(&self, user: &BareJid) -> Option<Arc<tokio::sync::Mutex<()>>> {
        self.shard(user).get(user).map(|d| d.lock.clone())
    }

    fn owner(&self, user: &BareJid) -> Option<u64> {
        self.shard(user).get(user).map(|d| d.session)
    }

    /// Give `user`'s drain to `session`, unless one runs already.
    fn claim(&self, user: &BareJid, session: u64) -> bool {
        let mut m = self.shard(user);
        if m.contains_key(user) {
            return false;
        }
        m.insert(
            user.clone(),
            Drain {
                session,
                lock: Arc::new(tokio::sync::Mutex::new(())),
            },
        );
        true
    }

    /// End `session`'s drain of `user`'s queue. With the drain's lock held,
    /// no message that joined the queue is left behind.
    fn release(&self, user: &BareJid, session: u64) {
        let mut m = self.shard(user);
        if m.get(user).is_some_and(|d| d.session == session) {
            m.remove(user);
        }
    }
}

/// Store a message for `user`, or bounce it when that is not possible.
/// If the user has a session that can take it after all, it is handed the
/// queue.
pub async fn store_or_bounce(ctx: &Arc<Ctx>, user: &BareJid, el: Element) {
    store(ctx, user, el).await;
    // This message was stored without the drain lock (no drain ran when it
    // was routed). A drain claimed since may be about to find the queue
    // empty and end: wait until it has either looked (and seen this
    // message) or ended, so that the check below sees no stale owner.
    // Without the wait, a session leaving dnd could end its drain between
    // our store and the check, and the message would stay stored until
    // the next presence change.
    if let Some(lock) = ctx.offline_drains.lock_of(user) {
        drop(lock.lock().await);
    }
    ensure_drain(ctx, user);
}

async fn store(ctx: &Arc<Ctx>, user: &BareJid, mut el: Element) {
    if !storable(&el) {
        return;
    }
    let has_our_delay = el
        .children()
        .any(|c| c.is("delay", ns::DELAY) && c.attr("from") == Some(ctx.domain.as_str()));
    if !has_our_delay {
        crate::stanza::add_delay(&mut el, &ctx.domain, chrono::Utc::now());
    }
    let xml = writer::to_string(&el);
    let limits = &ctx.config.limits;
    let quota = OfflineQuota {
        max_messages: limits.max_offline_messages,
        max_bytes: limits.max_offline_bytes,
    };
    match ctx.stores.offline.push(user, xml, quota).await {
        Ok(OfflinePush::Stored) => {
            tracing::debug!(to = %user, "message stored offline");
        }
        Ok(OfflinePush::Full) => {
            // XEP-0160 §3: a full offline store answers service-unavailable.
            router::bounce(
                ctx,
                &el,
                Cond::ServiceUnavailable,
                Some("the recipient's offline storage is full"),
            )
            .await;
        }
        Err(e) => {
            tracing::error!(error = %e, "offline storage failed");
            router::bounce(ctx, &el, Cond::InternalServerError, None).await;
        }
    }
}

/// A message on its way to `user`'s bare JID: while a drain delivers the
/// stored queue, it joins the end of that queue (and `None` is returned);
/// otherwise it is handed back for delivery.
pub async fn hold(ctx: &Arc<Ctx>, user: &BareJid, el: Element) -> Option<Element> {
    if !storable(&el) {
        return Some(el);
    }
    let Some(lock) = ctx.offline_drains.lock_of(user) else {
        return Some(el);
    };
    let _g = lock.lock().await;
    if ctx.offline_drains.owner(user).is_none() {
        // The drain ended meanwhile: deliver as usual.
        return Some(el);
    }
    store(ctx, user, el).await;
    None
}

/// A session's first available presence of non-negative priority, before
/// it is recorded (so before the resource can receive messages to the bare
/// JID): it takes its user's offline queue, unless another session is
/// delivering it. From here on, messages to the bare JID join the stored
/// queue until [`start_claimed_drain`] finds it empty or delivers it.
pub fn claim_drain(ctx: &Ctx, st: &mut ClientState) -> bool {
    if st.offline_started {
        return false;
    }
    st.offline_started = true;
    ctx.offline_drains.claim(&st.bare, st.id)
}

/// After the presence was recorded: nothing stored, the claim is given
/// back at once (checked under the lock messages joining the queue take);
/// otherwise the session delivers the queue after its login presence.
pub async fn start_claimed_drain(ctx: &Arc<Ctx>, st: &mut ClientState) {
    if let Some(lock) = ctx.offline_drains.lock_of(&st.bare) {
        let _g = lock.lock().await;
        match ctx.stores.offline.usage(&st.bare).await {
            Ok((0, _)) => {
                ctx.offline_drains.release(&st.bare, st.id);
                return;
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "offline storage failed"),
        }
    }
    st.push_work(Box::new(DrainStep { after: None }));
}

/// The session was handed its user's drain (`Control::DrainOffline`).
pub fn start_drain(ctx: &Ctx, st: &mut ClientState) {
    if ctx.offline_drains.owner(&st.bare) == Some(st.id) {
        st.push_work(Box::new(DrainStep { after: None }));
    }
}

/// Make sure stored messages reach a session that can take them: if the
/// user has an available resource of non-negative priority and no drain
/// runs, that resource is handed the queue.
pub fn ensure_drain(ctx: &Ctx, user: &BareJid) {
    if ctx.offline_drains.owner(user).is_some() {
        return;
    }
    let mut eligible = ctx.sessions.resources_where(user, |r| {
        r.available && r.priority >= 0 && !super::dnd::defers(ctx, r.dnd) && r.mailbox.is_open()
    });
    eligible.sort_by_key(|r| std::cmp::Reverse(r.priority));
    let Some(r) = eligible.into_iter().next() else {
        return;
    };
    if ctx.offline_drains.claim(user, r.mailbox.id) && !r.mailbox.control(Control::DrainOffline) {
        // The session is closing: the queue stays for the next one.
        ctx.offline_drains.release(user, r.mailbox.id);
    }
}

/// Delete the queued messages of `user` that `hit` picks (history the
/// user deleted); how many went.
pub async fn purge(
    ctx: &Ctx,
    user: &BareJid,
    hit: impl Fn(&Element) -> bool,
) -> crate::store::StoreResult<usize> {
    let mut after = None;
    let mut gone = Vec::new();
    loop {
        let chunk = ctx
            .stores
            .offline
            .chunk(user, after, CHUNK_ITEMS, CHUNK_BYTES)
            .await?;
        let Some(&(last, _)) = chunk.last() else {
            break;
        };
        after = Some(last);
        for (key, xml) in &chunk {
            if crate::xml::parse(xml).is_ok_and(|m| hit(&m)) {
                gone.push(*key);
            }
        }
    }
    if !gone.is_empty() {
        ctx.stores.offline.remove(user, &gone).await?;
    }
    Ok(gone.len())
}

/// Offline messages the session's socket took: delete them.
pub async fn delivered(ctx: &Ctx, user: &BareJid, keys: &[u64]) {
    if let Err(e) = ctx.stores.offline.remove(user, keys).await {
        tracing::error!(error = %e, "offline storage failed");
    }
}

/// The session ended: its drain, if it had one, goes to another resource.
pub async fn session_gone(ctx: &Ctx, st: &ClientState) {
    if ctx.offline_drains.owner(&st.bare) != Some(st.id) {
        return;
    }
    if let Some(lock) = ctx.offline_drains.lock_of(&st.bare) {
        let _g = lock.lock().await;
        ctx.offline_drains.release(&st.bare, st.id);
    }
    ensure_drain(ctx, &st.bare);
}

/// One session's delivery of the stored queue, resumable after `after`.
struct DrainStep {
    after: Option<u64>,
}

impl Backlog for DrainStep {
    fn step<'a>(&'a mut self, ctx: &'a Arc<Ctx>, st: &'a mut ClientState) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            if ctx.offline_drains.owner(&st.bare) != Some(st.id) {
                return false;
            }
            let user = st.bare.clone();
            let chunk = match ctx
                .stores
                .offline
                .chunk(&user, self.after, CHUNK_ITEMS, CHUNK_BYTES)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "offline storage failed");
                    return false;
                }
            };
            if chunk.is_empty() {
                return !self.finish(ctx, &user, st.id).await;
            }
            let short = chunk.len() < CHUNK_ITEMS;
            // Stored documents are read back before they are sent (off the
            // async workers): one written by an older version that a
            // client's parser would choke on is dropped, not delivered.
            let checked = crate::auth::blocking(move || {
                chunk
                    .into_iter()
                    .map(|(k, xml)| {
                        let ok = crate::xml::parse(&xml).is_ok();
                        (k, xml, ok)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            let Some(me) = ctx.sessions.get(&st.full) else {
                return false;
            };
            let mut unreadable = Vec::new();
            for (key, xml, ok) in checked {
                self.after = Some(key);
                if !ok {
                    tracing::warn!(to = %user, "dropping an unreadable offline message");
                    unreadable.push(key);
                    continue;
                }
                if me
                    .mailbox
                    .deliver_bytes(xml.into_bytes().into(), Fate::Stored(key))
                    .is_err()
                {
                    return false;
                }
            }
            if !unreadable.is_empty() {
                delivered(ctx, &user, &unreadable).await;
            }
            // A short chunk was probably the end of the queue: the drain
            // ends now, before the session writes what it was handed, so a
            // message sent after the client saw the last stored one is
            // delivered live (no delay), not queued behind a finished drain.
            !(short && self.finish(ctx, &user, st.id).await)
        })
    }
}

impl DrainStep {
    /// End the drain if nothing is stored after what was delivered; that
    /// is checked under the lock messages joining the queue take, so none
    /// is left behind. Whether it ended.
    async fn finish(&self, ctx: &Ctx, user: &BareJid, session: u64) -> bool {
        let Some(lock) = ctx.offline_drains.lock_of(user) else {
            return true;
        };
        let _g = lock.lock().await;
        match ctx.stores.offline.chunk(user, self.after, 1, 1).await {
            Ok(more) if !more.is_empty() => return false,
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "offline storage failed"),
        }
        ctx.offline_drains.release(user, session);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_stored() {
        let p = |s: &str| s.parse::<Element>().unwrap();
        assert!(storable(&p(
            "<message xmlns='jabber:client'><body>x</body></message>"
        )));
        assert!(!storable(&p(
            "<message xmlns='jabber:client'><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )));
        assert!(storable(&p(
            "<message xmlns='jabber:client'><received xmlns='urn:xmpp:receipts' id='1'/></message>"
        )));
        assert!(!storable(&p(
            "<message xmlns='jabber:client'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>"
        )));
    }
}

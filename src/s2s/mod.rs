//! Federation: server-to-server streams (RFC 6120), authenticated by SASL
//! EXTERNAL with certificates (XEP-0178) or Server Dialback (XEP-0220),
//! found through SRV records (XEP-0368 for direct TLS). See
//! `xeps/rfc6120-s2s.md` for what is supported.
//!
//! - [`S2s::send`] is where the router hands a stanza for another domain:
//!   it goes into the queue of the one outgoing link for its (local,
//!   remote) domain pair, which connects on demand, is reused for all
//!   traffic, and closes when idle (`outgoing.rs`).
//! - Incoming streams (`incoming.rs`) accept stanzas only for the domain
//!   pairs they authenticated, and hand them to the router.
//! - Nothing here waits on a peer while holding up a local session: a send
//!   only queues (bounded), and a peer that fails gets its queued stanzas
//!   bounced.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use minidom::Element;
use tokio::sync::mpsc;
use xmpp_parsers::stanza_error::DefinedCondition as Cond;

use crate::server::Ctx;

pub mod dialback;
mod incoming;
mod outgoing;
pub mod resolve;
pub mod tls;

pub use incoming::accept_loop;

/// How a stream authenticated a domain pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    None,
    Dialback,
    External,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
}

/// One row of `confab s2s list`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StreamRow {
    pub local: String,
    pub remote: String,
    pub direction: String,
    pub auth: String,
    pub tls: Option<String>,
    pub idle_s: u64,
    /// Whether the stream carries stanzas both ways (XEP-0288).
    #[serde(default)]
    pub bidi: bool,
    /// The stream's number: rows of pairs on one stream share it.
    #[serde(default)]
    pub stream: u64,
}

/// What the registry of streams knows about one stream.
struct StreamInfo {
    direction: Direction,
    /// (local, remote, how) for every pair it authenticated; before that,
    /// the pair its header named, with `Auth::None`.
    pairs: Vec<(String, String, Auth)>,
    tls: Option<String>,
    last: Instant,
    bidi: bool,
}

/// A stanza [`S2s::send`] could not queue, and the error to bounce it
/// with.
pub struct Refused(pub Element, pub Cond, pub String);

/// An outgoing link's queue, or the time before which it is not tried
/// again.
enum Link {
    /// The queue of the running link task `gen`.
    Queue { tx: mpsc::Sender<Element>, gen: u64 },
    Backoff {
        until: Instant,
        cond: Cond,
        text: String,
        /// The next backoff, should the next attempt fail too.
        next: Duration,
    },
}

/// An outgoing stream to a remote domain on which other local domains
/// may authenticate by dialback (XEP-0220 §2.4, piggybacking).
struct Host {
    /// The queue of its link task.
    tx: mpsc::Sender<Element>,
    gen: u64,
    /// Local domains the peer would not take on it.
    refused: std::collections::HashSet<String>,
}

pub struct S2s {
    pub tls: tls::S2sTls,
    pub dialback: dialback::Dialback,
    resolver: resolve::Resolver,
    links: Mutex<HashMap<(String, String), Link>>,
    /// By remote domain: the stream further local domains piggyback on.
    hosts: Mutex<HashMap<String, Host>>,
    streams: Mutex<HashMap<u64, StreamInfo>>,
    next_id: AtomicU64,
    /// Link tasks running (waited for at shutdown).
    running: Arc<tokio::sync::Semaphore>,
}

/// Most link tasks that may run at once.
const MAX_LINKS: u32 = 100_000;
/// The first pause before a failed peer is tried again; it doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

impl S2s {
    pub fn new(
        config: &crate::config::Config,
        id: &crate::net::tls::Identity,
    ) -> Result<S2s, String> {
        Ok(S2s {
            tls: tls::setup(config, id)?,
            dialback: dialback::Dialback::load(&config.data_dir)?,
            resolver: resolve::Resolver::new(),
            links: Mutex::default(),
            hosts: Mutex::default(),
            streams: Mutex::default(),
            next_id: AtomicU64::new(1),
            running: Arc::new(tokio::sync::Semaphore::new(MAX_LINKS as usize)),
        })
    }

    /// Queue a stanza for another domain. `Err` hands it back with the
    /// error to bounce it with: the peer failed a moment ago, or its queue
    /// is full.
    pub fn send(ctx: &Arc<Ctx>, el: Element) -> Result<(), Box<Refused>> {
        let Some(s2s) = ctx.s2s.as_ref() else {
            return Err(Box::new(Refused(
                el,
                Cond::RemoteServerNotFound,
                "federation is off".into(),
            )));
        };
        let (Some(local), Some(remote)) = (domain_of(el.attr("from")), domain_of(el.attr("to")))
        else {
            return Err(Box::new(Refused(
                el,
                Cond::JidMalformed,
                "no addresses".into(),
            )));
        };
        if !is_local_domain(ctx, &local) {
            // Never relay for others.
            return Err(Box::new(Refused(
                el,
                Cond::NotAllowed,
                "not a domain of this server".into(),
            )));
        }
        let key = (local, remote);
        let mut links = s2s.links.lock().unwrap_or_else(|p| p.into_inner());
        let mut backoff_next = FIRST_BACKOFF;
        let el = match links.get(&key) {
            Some(Link::Queue { tx, .. }) => match enqueue(tx, el, &key.1)? {
                None => return Ok(()),
                // The link task ended a moment ago: start another.
                Some(el) => el,
            },
            Some(Link::Backoff {
                until,
                cond,
                text,
                next,
            }) => {
                if Instant::now() < *until {
                    return Err(Box::new(Refused(el, cond.clone(), text.clone())));
                }
                backoff_next = *next;
                el
            }
            None => el,
        };
        // A stream to the peer that another local domain opened takes this
        // one too, by dialback.
        let el = match s2s.piggyback(&key) {
            Some((tx, gen)) => match enqueue(&tx, el, &key.1)? {
                None => {
                    links.insert(key, Link::Queue { tx, gen });
                    return Ok(());
                }
                Some(el) => el,
            },
            None => el,
        };
        let (tx, rx) = mpsc::channel(ctx.config.s2s.max_queue);
        // A fresh channel has room for its first stanza.
        let _ = tx.try_send(el);
        let gen = s2s.next_id.fetch_add(1, Ordering::Relaxed);
        links.insert(key.clone(), Link::Queue { tx, gen });
        drop(links);
        let permit = s2s.running.clone().try_acquire_owned().ok();
        tokio::spawn(outgoing::run(
            ctx.clone(),
            key.0,
            key.1,
            outgoing::Queue { rx, gen },
            backoff_next,
            permit,
        ));
        Ok(())
    }

    /// The queue of a stream that `pair` may piggyback on.
    fn piggyback(&self, pair: &(String, String)) -> Option<(mpsc::Sender<Element>, u64)> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let h = hosts.get(&pair.1)?;
        if h.tx.is_closed() || h.refused.contains(&pair.0) {
            return None;
        }
        Some((h.tx.clone(), h.gen))
    }

    /// The authenticated link `pair` (task `gen`) takes other local
    /// domains for its remote one, unless a stream does already.
    fn offer_piggyback(&self, pair: &(String, String), gen: u64) {
        let tx = {
            let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            match links.get(pair) {
                Some(Link::Queue { tx, gen: g }) if *g == gen => tx.clone(),
                _ => return,
            }
        };
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if hosts.get(&pair.1).is_some_and(|h| !h.tx.is_closed()) {
            return;
        }
        hosts.insert(
            pair.1.clone(),
            Host {
                tx,
                gen,
                refused: Default::default(),
            },
        );
    }

    /// The peer of the link task `gen` would not take `local` on its
    /// stream: `local` gets a stream of its own from now on.
    fn piggyback_refused(&self, local: &str, remote: &str, gen: u64) {
        {
            let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(h) = hosts.get_mut(remote).filter(|h| h.gen == gen) {
                if h.refused.len() < 64 {
                    h.refused.insert(local.to_string());
                }
            }
        }
        self.link_closed(&(local.to_string(), remote.to_string()), gen);
    }

    /// The link task `gen` no longer takes other domains.
    fn unhost(&self, remote: &str, gen: u64) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if hosts.get(remote).is_some_and(|h| h.gen == gen) {
            hosts.remove(remote);
        }
    }

    /// The link of `pair` failed: until the backoff passes, stanzas for it
    /// bounce at once.
    fn link_failed(&self, pair: &(String, String), cond: Cond, text: &str, backoff: Duration) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.insert(
            pair.clone(),
            Link::Backoff {
                until: Instant::now() + backoff,
                cond,
                text: text.to_string(),
                next: (backoff * 2).min(MAX_BACKOFF),
            },
        );
    }

    /// The link task `gen` of `pair` ended cleanly (idle): forget its
    /// queue, unless a newer link replaced it already.
    fn link_closed(&self, pair: &(String, String), gen: u64) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(links.get(pair), Some(Link::Queue { gen: g, .. }) if *g == gen) {
            links.remove(pair);
        }
    }

    /// An incoming stream that negotiated XEP-0288 authenticated `pair`
    /// (local, remote): it becomes the pair's link, its queue `tx`, unless
    /// a link of the pair is running already. Whether it did.
    fn attach_bidi(&self, pair: &(String, String), tx: &mpsc::Sender<Element>, gen: u64) -> bool {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(links.get(pair), Some(Link::Queue { tx, .. }) if !tx.is_closed()) {
            return false;
        }
        links.insert(
            pair.clone(),
            Link::Queue {
                tx: tx.clone(),
                gen,
            },
        );
        true
    }

    fn register_stream(&self, direction: Direction, local: &str, remote: &str) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut m = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(
            id,
            StreamInfo {
                direction,
                pairs: vec![(local.to_string(), remote.to_string(), Auth::None)],
                tls: None,
                last: Instant::now(),
                bidi: false,
            },
        );
        id
    }

    fn update_stream(&self, id: u64, f: impl FnOnce(&mut StreamInfoMut<'_>)) {
        let mut m = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = m.get_mut(&id) {
            f(&mut StreamInfoMut(s));
        }
    }

    fn unregister_stream(&self, id: u64) {
        let mut m = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&id);
    }

    /// The streams now open, one row per authenticated domain pair.
    pub fn list(&self) -> Vec<StreamRow> {
        let m = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows = Vec::new();
        for (id, s) in m.iter() {
            for (local, remote, auth) in &s.pairs {
                rows.push(StreamRow {
                    local: local.clone(),
                    remote: remote.clone(),
                    direction: match s.direction {
                        Direction::In => "in",
                        Direction::Out => "out",
                    }
                    .into(),
                    auth: match auth {
                        Auth::None => "none",
                        Auth::Dialback => "dialback",
                        Auth::External => "external",
                    }
                    .into(),
                    tls: s.tls.clone(),
                    idle_s: s.last.elapsed().as_secs(),
                    bidi: s.bidi,
                    stream: *id,
                });
            }
        }
        rows.sort_by(|a, b| {
            (&a.remote, &a.direction, &a.local).cmp(&(&b.remote, &b.direction, &b.local))
        });
        rows
    }

    /// Stop every link (their queued stanzas bounce) and wait for them, a
    /// few seconds at most.
    pub async fn shutdown(&self) {
        let links: Vec<_> = {
            let mut m = self.links.lock().unwrap_or_else(|p| p.into_inner());
            m.drain().collect()
        };
        drop(links);
        let hosts: Vec<_> = {
            let mut m = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
            m.drain().collect()
        };
        drop(hosts);
        let wait = self.running.acquire_many(MAX_LINKS);
        let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
    }
}

/// Put `el` in a link's queue: `Ok(None)` when it is there, `Ok(Some)`
/// when the link task is gone, `Err` when the queue is full.
fn enqueue(
    tx: &mpsc::Sender<Element>,
    el: Element,
    remote: &str,
) -> Result<Option<Element>, Box<Refused>> {
    match tx.try_send(el) {
        Ok(()) => Ok(None),
        Err(mpsc::error::TrySendError::Full(el)) => Err(Box::new(Refused(
            el,
            Cond::ResourceConstraint,
            format!("too many stanzas waiting for {remote}"),
        ))),
        Err(mpsc::error::TrySendError::Closed(el)) => Ok(Some(el)),
    }
}

/// Write access to a stream's registry entry.
struct StreamInfoMut<'a>(&'a mut StreamInfo);

impl StreamInfoMut<'_> {
    fn touch(&mut self) {
        self.0.last = Instant::now();
    }

    fn tls(&mut self, v: Option<String>) {
        self.0.tls = v;
    }

    fn bidi(&mut self) {
        self.0.bidi = true;
    }

    /// `local`–`remote` authenticated by `how` (the unauthenticated
    /// placeholder row goes).
    fn authenticated(&mut self, local: &str, remote: &str, how: Auth) {
        self.0.pairs.retain(|p| p.2 != Auth::None);
        if !self.0.pairs.iter().any(|p| p.0 == local && p.1 == remote) {
            self.0
                .pairs
                .push((local.to_string(), remote.to_string(), how));
        }
    }
}

/// The domain part of a JID attribute.
fn domain_of(jid: Option<&str>) -> Option<String> {
    let j: xmpp_parsers::jid::Jid = jid?.parse().ok()?;
    Some(j.domain().as_str().to_string())
}

/// Whether this server serves `domain` (its own, or a component's).
pub fn is_local_domain(ctx: &Ctx, domain: &str) -> bool {
    domain == ctx.domain || ctx.registry.component_for(domain).is_some()
}

/// Whether the configuration lets `domain` authenticate without a
/// certificate valid for it (by dialback over an unverified TLS stream).
fn may_skip_cert(ctx: &Ctx, domain: &str) -> bool {
    let c = &ctx.config.s2s;
    !c.require_valid_certs || c.insecure_domains.iter().any(|d| d == domain)
}

/// Bounce a stanza that cannot reach its server, as RFC 6120 §8.3 and
/// RFC 6121 say: messages and IQ requests get an error reply, of presence
/// only subscription requests (the rest is not worth an error).
pub(crate) async fn bounce(ctx: &Arc<Ctx>, el: &Element, cond: Cond, text: &str) {
    if el.name() == "presence" && crate::stanza::stanza_type(el) != "subscribe" {
        return;
    }
    crate::router::bounce(ctx, el, cond, Some(text)).await;
}

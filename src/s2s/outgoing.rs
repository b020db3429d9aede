//! Outgoing streams: one link per (local domain, remote domain), opened
//! on the first stanza, reused for everything after it, closed when idle.
//! Also the short streams that check a dialback key with a peer's
//! authoritative server (XEP-0220 §2.3).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use minidom::Element;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use xmpp_parsers::stanza_error::DefinedCondition as Cond;
use xmpp_parsers::stream_error::DefinedCondition as SC;

use super::{bounce, incoming, may_skip_cert, Auth, Direction, S2s};
use crate::c2s::Fail;
use crate::net::conn::{ConnError, XmlConn};
use crate::server::Ctx;
use crate::stanza::{element, Kind};
use crate::xml::{ns, writer, Frame};

/// How long one TCP connect may take.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes written in one go when stanzas queue up.
const BATCH_BYTES: usize = 64 * 1024;

/// Why a peer could not be reached or would not have us.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub cond: Cond,
    pub text: String,
}

impl Failure {
    fn not_found(text: impl Into<String>) -> Failure {
        Failure {
            cond: Cond::RemoteServerNotFound,
            text: text.into(),
        }
    }

    fn timeout(text: impl Into<String>) -> Failure {
        Failure {
            cond: Cond::RemoteServerTimeout,
            text: text.into(),
        }
    }
}

/// Sustained bytes per second read from one s2s stream (`[s2s]
/// bytes_per_sec`).
pub(super) fn stream_rate(ctx: &Ctx) -> usize {
    ctx.config.s2s.bytes_per_sec
}

fn new_conn(ctx: &Ctx, tcp: TcpStream, peer: SocketAddr) -> Box<XmlConn> {
    let rate = stream_rate(ctx);
    let mut conn = Box::new(XmlConn::new(
        tcp,
        peer,
        ctx.limits,
        rate,
        (rate * 2).max(ctx.limits.max_stanza_bytes * 2),
    ));
    conn.set_server_stream();
    conn
}

/// The next element, or why the stream is over.
async fn next_element(conn: &mut XmlConn) -> Result<Element, Failure> {
    match conn.read_frame().await {
        Ok(Frame::Element(el)) => {
            if el.is("error", ns::STREAM) {
                let cond = el
                    .children()
                    .find(|c| c.ns() == ns::STREAMS && c.name() != "text")
                    .map(|c| c.name().to_string())
                    .unwrap_or_default();
                return Err(Failure::not_found(format!(
                    "the peer sent a stream error: {cond}"
                )));
            }
            Ok(el)
        }
        Ok(Frame::Header(_)) => Err(Failure::not_found("unexpected stream header")),
        Ok(Frame::Close) => Err(Failure::not_found("the peer closed the stream")),
        Err(ConnError::Xml(e)) => Err(Failure::not_found(format!("bad XML from the peer: {e}"))),
        Err(e) => Err(Failure::not_found(format!("connection failed: {e}"))),
    }
}

/// A stream to a peer, TLS up (when required), not yet authenticated.
struct Opened {
    conn: Box<XmlConn>,
    features: Element,
    stream_id: String,
    cert_valid: bool,
    /// We asked for a bidirectional stream (XEP-0288): the peer may send
    /// on it from `remote` to `local`.
    bidi: bool,
}

/// Send our header and read the peer's header and features.
async fn restart(
    conn: &mut XmlConn,
    local: &str,
    remote: &str,
) -> Result<(String, Element), Failure> {
    conn.write_all(&writer::s2s_stream_header(local, remote, None))
        .await
        .map_err(|e| Failure::not_found(format!("connection failed: {e}")))?;
    let header = match conn.read_frame().await {
        Ok(Frame::Header(h)) => h,
        Ok(_) => return Err(Failure::not_found("the peer sent no stream header")),
        Err(e) => return Err(Failure::not_found(format!("connection failed: {e}"))),
    };
    if header.element_ns != ns::STREAM || header.element_name != "stream" {
        return Err(Failure::not_found(
            "the peer's stream header is not an XMPP stream",
        ));
    }
    if header.default_ns.as_deref() != Some(ns::SERVER) {
        return Err(Failure::not_found("the peer's stream is not jabber:server"));
    }
    let id = header.id.unwrap_or_default();
    if header.version.as_deref() != Some("1.0") {
        // Pre-RFC 3920 servers have no features: dialback only.
        return Ok((id, Element::bare("features", ns::STREAM)));
    }
    let features = next_element(conn).await?;
    if !features.is("features", ns::STREAM) {
        return Err(Failure::not_found("the peer sent no stream features"));
    }
    Ok((id, features))
}

fn server_name(remote: &str) -> Result<ServerName<'static>, Failure> {
    ServerName::try_from(remote.to_string())
        .map_err(|_| Failure::not_found(format!("{remote} is not a valid server name")))
}

/// One connection attempt to `addr`.
async fn attempt(
    ctx: &Ctx,
    s2s: &S2s,
    local: &str,
    remote: &str,
    addr: SocketAddr,
    direct_tls: bool,
) -> Result<Opened, Failure> {
    let tcp = match tokio::time::timeout(TCP_CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(Failure::not_found(format!("cannot connect to {addr}: {e}"))),
        Err(_) => return Err(Failure::timeout(format!("no answer from {addr}"))),
    };
    let mut conn = new_conn(ctx, tcp, addr);
    if direct_tls {
        conn.upgrade_tls_client(s2s.tls.client.clone(), server_name(remote)?)
            .await
            .map_err(|e| Failure::not_found(format!("TLS with {addr} failed: {e}")))?;
    }
    let (mut id, mut features) = restart(&mut conn, local, remote).await?;
    if !conn.is_tls() {
        if features.has_child("starttls", ns::TLS) {
            conn.write_all(&writer::to_s2s_bytes(&element("starttls", ns::TLS, &[])))
                .await
                .map_err(|e| Failure::not_found(format!("connection failed: {e}")))?;
            let answer = next_element(&mut conn).await?;
            if !answer.is("proceed", ns::TLS) || !conn.is_drained() {
                return Err(Failure::not_found("the peer refused STARTTLS"));
            }
            conn.upgrade_tls_client(s2s.tls.client.clone(), server_name(remote)?)
                .await
                .map_err(|e| Failure::not_found(format!("TLS with {addr} failed: {e}")))?;
            (id, features) = restart(&mut conn, local, remote).await?;
        } else if ctx.config.s2s.require_encryption {
            return Err(Failure::not_found(format!("{remote} offers no TLS")));
        }
    }
    let cert_valid = conn
        .peer_certificates()
        .is_some_and(|c| s2s.tls.peers.valid_for(remote, &c));
    Ok(Opened {
        conn,
        features,
        stream_id: id,
        cert_valid,
        bidi: false,
    })
}

/// Resolve and connect, trying each target and address in turn.
async fn open(ctx: &Ctx, s2s: &S2s, local: &str, remote: &str) -> Result<Opened, Failure> {
    let targets = s2s
        .resolver
        .targets(remote, &ctx.config.s2s.hosts)
        .await
        .map_err(|e| Failure::not_found(e.0))?;
    let mut last = Failure::not_found(format!("{remote} has no server"));
    for t in targets {
        let ips = match s2s.resolver.addresses(&t.host).await {
            Ok(ips) => ips,
            Err(e) => {
                last = Failure::not_found(e.0);
                continue;
            }
        };
        for ip in ips {
            match attempt(
                ctx,
                s2s,
                local,
                remote,
                SocketAddr::new(ip, t.port),
                t.direct_tls,
            )
            .await
            {
                Ok(o) => return Ok(o),
                Err(f) => {
                    tracing::debug!(%remote, host = %t.host, port = t.port, direct_tls = t.direct_tls, reason = %f.text, "s2s attempt failed");
                    last = f;
                }
            }
        }
    }
    Err(last)
}

/// SASL EXTERNAL (RFC 6120 §6.4, XEP-0178 §4): whether the peer accepted
/// our certificate for `local`.
async fn external(s: &mut Opened, local: &str, remote: &str) -> Result<bool, Failure> {
    let mut auth = element("auth", ns::SASL, &[("mechanism", "EXTERNAL")]);
    auth.append_text(base64::engine::general_purpose::STANDARD.encode(local));
    s.conn
        .write_all(&writer::to_s2s_bytes(&auth))
        .await
        .map_err(|e| Failure::not_found(format!("connection failed: {e}")))?;
    let answer = next_element(&mut s.conn).await?;
    if answer.is("success", ns::SASL) {
        s.conn.reset_stream();
        let (id, features) = restart(&mut s.conn, local, remote).await?;
        s.stream_id = id;
        s.features = features;
        return Ok(true);
    }
    tracing::debug!(%remote, "SASL EXTERNAL refused; trying dialback");
    Ok(false)
}

/// Server Dialback as the originating server (XEP-0220 §2.1).
async fn dialback(
    ctx: &Ctx,
    s2s: &S2s,
    s: &mut Opened,
    local: &str,
    remote: &str,
) -> Result<(), Failure> {
    let _ = ctx;
    if s.stream_id.is_empty() {
        return Err(Failure::not_found(
            "the peer's stream has no id: no dialback",
        ));
    }
    let mut result = element("result", ns::DIALBACK, &[("from", local), ("to", remote)]);
    result.append_text(s2s.dialback.key(remote, local, &s.stream_id));
    s.conn
        .write_all(&writer::to_s2s_bytes(&result))
        .await
        .map_err(|e| Failure::not_found(format!("connection failed: {e}")))?;
    loop {
        let el = next_element(&mut s.conn).await?;
        if !el.is("result", ns::DIALBACK) {
            continue;
        }
        if el.attr("from") != Some(remote) || el.attr("to") != Some(local) {
            continue;
        }
        return match el.attr("type") {
            Some("valid") => Ok(()),
            Some("invalid") => Err(Failure::not_found(format!(
                "{remote} refused our dialback key"
            ))),
            _ => Err(Failure::not_found(format!(
                "{remote} could not check our dialback key"
            ))),
        };
    }
}

/// Connect to `remote` and authenticate as `local`.
async fn connect(
    ctx: &Ctx,
    s2s: &S2s,
    local: &str,
    remote: &str,
) -> Result<(Opened, Auth), Failure> {
    let mut s = open(ctx, s2s, local, remote).await?;
    if !s.cert_valid && !may_skip_cert(ctx, remote) {
        return Err(Failure::not_found(format!(
            "the certificate of {remote} is not valid for it"
        )));
    }
    let offers_external = s
        .features
        .get_child("mechanisms", ns::SASL)
        .is_some_and(|m| {
            m.children()
                .any(|c| c.name() == "mechanism" && c.text().trim() == "EXTERNAL")
        });
    // XEP-0288 §2.2: after TLS, before authenticating.
    if ctx.config.s2s.bidi
        && s.features.has_child("bidi", ns::BIDI_FEATURE)
        && (s.conn.is_tls() || !ctx.config.s2s.require_encryption)
    {
        s.conn
            .write_all(&writer::to_s2s_bytes(&element("bidi", ns::BIDI, &[])))
            .await
            .map_err(|e| Failure::not_found(format!("connection failed: {e}")))?;
        s.bidi = true;
    }
    if offers_external && external(&mut s, local, remote).await? {
        return Ok((s, Auth::External));
    }
    dialback(ctx, s2s, &mut s, local, remote).await?;
    Ok((s, Auth::Dialback))
}

/// Check a dialback key with `remote`'s authoritative server, for the
/// stream `id` it opened to our `local` (XEP-0220 §2.3): valid or not.
pub(super) async fn verify(
    ctx: &Ctx,
    local: &str,
    remote: &str,
    id: &str,
    key: &str,
) -> Result<bool, Failure> {
    let Some(s2s) = ctx.s2s.as_ref() else {
        return Err(Failure::not_found("federation is off"));
    };
    let t = Duration::from_secs(ctx.config.s2s.connect_timeout_s);
    let work = async {
        let mut s = open(ctx, s2s, local, remote).await?;
        let mut v = element(
            "verify",
            ns::DIALBACK,
            &[("from", local), ("to", remote), ("id", id)],
        );
        v.append_text(key);
        s.conn
            .write_all(&writer::to_s2s_bytes(&v))
            .await
            .map_err(|e| Failure::not_found(format!("connection failed: {e}")))?;
        let valid = loop {
            let el = next_element(&mut s.conn).await?;
            if el.is("verify", ns::DIALBACK) && el.attr("id") == Some(id) {
                break el.attr("type") == Some("valid");
            }
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            s.conn.write_all(writer::STREAM_CLOSE),
        )
        .await;
        s.conn.shutdown().await;
        Ok(valid)
    };
    match tokio::time::timeout(t, work).await {
        Ok(r) => r,
        Err(_) => Err(Failure::timeout(format!("{remote} did not answer in time"))),
    }
}

/// A link task's queue.
pub(super) struct Queue {
    pub rx: mpsc::Receiver<Element>,
    pub gen: u64,
}

/// How a connected link ended.
enum End {
    /// Nothing to send for the idle time, or the last sender is gone.
    Idle,
    Shutdown,
    /// The stream broke; these stanzas were taken from the queue but not
    /// written.
    Broken(String, Vec<Element>),
}

/// What one connected stream of a link carries: the link's own pair, and
/// the local domains that piggyback on it (XEP-0220 §2.4) because their
/// stanzas for the same peer came through the link's queue.
struct Pairs {
    local: String,
    remote: String,
    /// The link task's generation (its entries in the link table).
    gen: u64,
    stream_id: String,
    /// The peer takes further local domains by dialback on this stream
    /// (it offers dialback with error conditions).
    hosting: bool,
    /// Local domains authenticated on the stream, the link's own among them.
    authed: HashSet<String>,
    /// Local domains whose dialback is under way: what waits for it, and
    /// when to stop waiting.
    pending: HashMap<String, (Vec<Element>, tokio::time::Instant)>,
    /// Local domains the peer would not take on this stream.
    refused: HashSet<String>,
    /// With bidi: the (remote, local) pairs the peer may send for.
    back: HashSet<(String, String)>,
}

/// Most piggybacked dialbacks under way on one stream.
const MAX_PENDING: usize = 16;

impl Pairs {
    fn new(local: &str, remote: &str, gen: u64, s: &Opened) -> Pairs {
        let hosting = !s.stream_id.is_empty()
            && s.features
                .get_child("dialback", ns::DIALBACK_FEATURE)
                .is_some_and(|d| d.has_child("errors", ns::DIALBACK_FEATURE));
        Pairs {
            local: local.to_string(),
            remote: remote.to_string(),
            gen,
            stream_id: s.stream_id.clone(),
            hosting,
            authed: HashSet::from([local.to_string()]),
            pending: HashMap::new(),
            refused: HashSet::new(),
            back: if s.bidi {
                HashSet::from([(remote.to_string(), local.to_string())])
            } else {
                HashSet::new()
            },
        }
    }

    /// Sort stanzas taken from the queue: those of authenticated domains
    /// (and dialback requests for new ones) to write now; those of domains
    /// under way wait; those the stream cannot take get a link of their
    /// own.
    async fn sort(&mut self, ctx: &Arc<Ctx>, s2s: &S2s, batch: Vec<Element>) -> Vec<Element> {
        let mut ready = Vec::with_capacity(batch.len());
        let mut elsewhere = Vec::new();
        let mut over = Vec::new();
        let timeout = Duration::from_secs(ctx.config.s2s.connect_timeout_s);
        for el in batch {
            let local = super::domain_of(el.attr("from")).unwrap_or_default();
            if self.authed.contains(&local) {
                ready.push(el);
            } else if let Some((waiting, _)) = self.pending.get_mut(&local) {
                if waiting.len() < ctx.config.s2s.max_queue {
                    waiting.push(el);
                } else {
                    over.push(el);
                }
            } else if self.hosting
                && !self.refused.contains(&local)
                && self.pending.len() < MAX_PENDING
            {
                let mut r = element(
                    "result",
                    ns::DIALBACK,
                    &[("from", &local), ("to", &self.remote)],
                );
                r.append_text(s2s.dialback.key(&self.remote, &local, &self.stream_id));
                ready.push(r);
                tracing::debug!(%local, remote = %self.remote, "s2s: piggybacking another domain on the stream");
                self.pending
                    .insert(local, (vec![el], tokio::time::Instant::now() + timeout));
            } else {
                elsewhere.push((local, el));
            }
        }
        for el in over {
            let text = format!("too many stanzas waiting for {}", self.remote);
            bounce(ctx, &el, Cond::ResourceConstraint, &text).await;
        }
        for (local, el) in elsewhere {
            self.refuse(ctx, s2s, &local, vec![el]).await;
        }
        ready
    }

    /// `local` cannot go on this stream: it gets a link of its own, with
    /// `waiting`.
    async fn refuse(&mut self, ctx: &Arc<Ctx>, s2s: &S2s, local: &str, waiting: Vec<Element>) {
        if self.refused.len() < 64 {
            self.refused.insert(local.to_string());
        }
        s2s.piggyback_refused(local, &self.remote, self.gen);
        for el in waiting {
            resend(ctx, el).await;
        }
    }

    /// The peer answered a piggybacked dialback: what waited for it, to
    /// write now.
    async fn answered(
        &mut self,
        ctx: &Arc<Ctx>,
        s2s: &S2s,
        sid: u64,
        el: &Element,
    ) -> Vec<Element> {
        let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
            return Vec::new();
        };
        if from != self.remote {
            return Vec::new();
        }
        let Some((waiting, _)) = self.pending.remove(to) else {
            return Vec::new();
        };
        if el.attr("type") == Some("valid") {
            tracing::info!(local = %to, remote = %self.remote, "s2s: another domain authenticated on an outgoing stream");
            self.authed.insert(to.to_string());
            s2s.update_stream(sid, |i| i.authenticated(to, &self.remote, Auth::Dialback));
            if !self.back.is_empty() {
                self.back.insert((self.remote.clone(), to.to_string()));
            }
            return waiting;
        }
        tracing::info!(local = %to, remote = %self.remote, answer = ?el.attr("type"), "s2s: the peer would not take another domain on the stream; it gets its own");
        let to = to.to_string();
        self.refuse(ctx, s2s, &to, waiting).await;
        Vec::new()
    }

    /// Dialbacks not answered in time: those domains get their own links.
    async fn expire(&mut self, ctx: &Arc<Ctx>, s2s: &S2s) {
        let now = tokio::time::Instant::now();
        let late: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, (_, t))| *t <= now)
            .map(|(l, _)| l.clone())
            .collect();
        for local in late {
            if let Some((waiting, _)) = self.pending.remove(&local) {
                self.refuse(ctx, s2s, &local, waiting).await;
            }
        }
    }

    fn next_deadline(&self) -> Option<tokio::time::Instant> {
        self.pending.values().map(|(_, t)| *t).min()
    }

    /// The stream is over: the other local domains it carried, and the
    /// stanzas still waiting for their dialback.
    fn end(self) -> (Vec<String>, Vec<Element>) {
        let mut others: Vec<String> = self
            .authed
            .into_iter()
            .chain(self.pending.keys().cloned())
            .filter(|l| *l != self.local)
            .collect();
        others.sort();
        others.dedup();
        let waiting = self.pending.into_values().flat_map(|(w, _)| w).collect();
        (others, waiting)
    }
}

/// The task of one outgoing link.
pub(super) async fn run(
    ctx: Arc<Ctx>,
    local: String,
    remote: String,
    queue: Queue,
    backoff: Duration,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let Some(s2s) = ctx.s2s.as_ref() else {
        return;
    };
    let pair = (local.clone(), remote.clone());
    let Queue { mut rx, gen } = queue;
    let mut shutdown = ctx.shutdown_signal();
    let mut carried: Vec<Element> = Vec::new();
    // Other local domains whose stanzas came through this link's queue:
    // their entries in the link table point here.
    let mut others: HashSet<String> = HashSet::new();
    let close_others = |others: &HashSet<String>| {
        for l in others {
            s2s.link_closed(&(l.clone(), remote.clone()), gen);
        }
    };
    let mut tries = 0;
    loop {
        tries += 1;
        let t = Duration::from_secs(ctx.config.s2s.connect_timeout_s);
        let r = tokio::select! {
            r = tokio::time::timeout(t, connect(&ctx, s2s, &local, &remote)) => match r {
                Ok(r) => r,
                Err(_) => Err(Failure::timeout(format!("{remote} did not answer in time"))),
            },
            _ = crate::server::shutdown_requested(&mut shutdown) => Err(Failure::timeout("the server is shutting down")),
        };
        let (mut s, auth) = match r {
            Ok(x) => x,
            Err(f) => {
                tracing::info!(%local, %remote, reason = %f.text, "s2s: cannot reach the peer; bouncing its queue");
                s2s.link_failed(&pair, f.cond.clone(), &f.text, backoff);
                close_others(&others);
                give_up(&ctx, &mut rx, carried, &f).await;
                return;
            }
        };
        let up_since = std::time::Instant::now();
        let sid = s2s.register_stream(Direction::Out, &local, &remote);
        let tls = s.conn.tls_info().map(|t| t.0);
        s2s.update_stream(sid, |i| {
            i.tls(tls);
            i.authenticated(&local, &remote, auth);
            if s.bidi {
                i.bidi();
            }
        });
        tracing::info!(%local, %remote, ?auth, peer = %s.conn.peer, "s2s: outgoing stream authenticated");
        let mut pairs = Pairs::new(&local, &remote, gen, &s);
        if pairs.hosting {
            s2s.offer_piggyback(&pair, gen);
        }
        let end = pump(
            &ctx,
            s2s,
            sid,
            &mut s.conn,
            &mut pairs,
            &mut rx,
            &mut carried,
            &mut shutdown,
        )
        .await;
        s2s.unhost(&remote, gen);
        s2s.unregister_stream(sid);
        let (more, waiting) = pairs.end();
        others.extend(more);
        match end {
            End::Idle | End::Shutdown => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    s.conn.write_all(writer::STREAM_CLOSE),
                )
                .await;
                s.conn.shutdown().await;
                s2s.link_closed(&pair, gen);
                close_others(&others);
                hand_on(&ctx, &mut rx, waiting).await;
                return;
            }
            End::Broken(why, unsent) => {
                tracing::info!(%local, %remote, reason = %why, "s2s: outgoing stream broke");
                s.conn.shutdown().await;
                // Dialback requests are for that stream only.
                carried.extend(unsent.into_iter().filter(|e| Kind::of(e).is_some()));
                carried.extend(waiting);
                if carried.is_empty() && rx.is_empty() {
                    s2s.link_closed(&pair, gen);
                    close_others(&others);
                    hand_on(&ctx, &mut rx, Vec::new()).await;
                    return;
                }
                // A stream that lived a while counts as a fresh start: only
                // breaks in quick succession end the link.
                if up_since.elapsed() > Duration::from_secs(60) {
                    tries = 1;
                }
                if tries >= 2 {
                    let f = Failure::timeout(format!("the stream to {remote} broke: {why}"));
                    s2s.link_failed(&pair, f.cond.clone(), &f.text, backoff);
                    close_others(&others);
                    give_up(&ctx, &mut rx, carried, &f).await;
                    return;
                }
                // One more try for what is waiting.
            }
        }
    }
}

/// The link gives up: everything it holds bounces with `f`.
async fn give_up(
    ctx: &Arc<Ctx>,
    rx: &mut mpsc::Receiver<Element>,
    carried: Vec<Element>,
    f: &Failure,
) {
    rx.close();
    for el in carried {
        bounce(ctx, &el, f.cond.clone(), &f.text).await;
    }
    while let Some(el) = rx.recv().await {
        bounce(ctx, &el, f.cond.clone(), &f.text).await;
    }
}

/// The link ended cleanly (its queue is no longer registered): `unsent`
/// and what came in meanwhile go through a new link.
pub(super) async fn hand_on(
    ctx: &Arc<Ctx>,
    rx: &mut mpsc::Receiver<Element>,
    unsent: Vec<Element>,
) {
    rx.close();
    for el in unsent {
        resend(ctx, el).await;
    }
    while let Some(el) = rx.recv().await {
        resend(ctx, el).await;
    }
}

async fn resend(ctx: &Arc<Ctx>, el: Element) {
    if let Err(r) = S2s::send(ctx, el) {
        let super::Refused(el, cond, text) = *r;
        bounce(ctx, &el, cond, &text).await;
    }
}

/// Take what else is queued behind the first stanza of `batch`, up to
/// [`BATCH_BYTES`] or so.
pub(super) fn fill_batch(rx: &mut mpsc::Receiver<Element>, batch: &mut Vec<Element>) {
    let mut bytes = 0;
    while bytes < BATCH_BYTES {
        match rx.try_recv() {
            Ok(el) => {
                bytes += 256;
                batch.push(el);
            }
            Err(_) => break,
        }
    }
}

pub(super) fn batch_bytes(batch: &[Element]) -> Vec<u8> {
    let mut out = Vec::new();
    for el in batch {
        out.extend_from_slice(&writer::to_s2s_bytes(el));
    }
    out
}

/// What the peer sent on an outgoing stream: answers to piggybacked
/// dialbacks (what they let through comes back, to write); with bidi,
/// stanzas for the pairs in `pairs.back`, to the router; the rest is
/// ignored. `Err` ends the stream, with a stream error sent when there is
/// one.
async fn from_peer(
    ctx: &Arc<Ctx>,
    s2s: &S2s,
    sid: u64,
    conn: &mut XmlConn,
    pairs: &mut Pairs,
    el: Element,
) -> Result<Vec<Element>, String> {
    if el.is("error", ns::STREAM) {
        return Err("the peer sent a stream error".into());
    }
    if el.is("result", ns::DIALBACK) && el.attr("type").is_some() {
        return Ok(pairs.answered(ctx, s2s, sid, &el).await);
    }
    // A peer's own dialback requests on our stream (XEP-0288 §2.2 allows
    // them) are not taken up: its domains use streams it opens.
    if pairs.back.is_empty() || el.ns() == ns::DIALBACK {
        // Nothing else is expected on a one-way outgoing stream.
        tracing::debug!(
            name = el.name(),
            "s2s: ignoring an element on an outgoing stream"
        );
        return Ok(Vec::new());
    }
    let r = if Kind::of(&el).is_none() {
        Err(Fail::Stream(
            SC::UnsupportedStanzaType,
            format!("unexpected <{}/> on a server-to-server stream", el.name()),
        ))
    } else if conn.throttled_for() > incoming::FLOOD {
        Err(Fail::Stream(
            SC::PolicyViolation,
            "flooding: sending faster than the stream's rate for too long".into(),
        ))
    } else {
        incoming::stanza(ctx, &pairs.back, el).await
    };
    match r {
        Ok(()) => Ok(Vec::new()),
        Err(Fail::Stream(cond, text)) => {
            tracing::info!(peer = %conn.peer, condition = %cond, %text, "s2s: stream error on a bidirectional outgoing stream");
            crate::c2s::close_with_error(conn, cond, Some(&text)).await;
            Err(text)
        }
        Err(_) => Err("the stream ended".into()),
    }
}

/// Write what is queued, read what the peer says, until the link ends.
#[allow(clippy::too_many_arguments)]
async fn pump(
    ctx: &Arc<Ctx>,
    s2s: &S2s,
    sid: u64,
    conn: &mut XmlConn,
    pairs: &mut Pairs,
    rx: &mut mpsc::Receiver<Element>,
    carried: &mut Vec<Element>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> End {
    let idle = Duration::from_secs(ctx.config.s2s.idle_timeout_s);
    // Stanzas carried over from a broken stream go first.
    let mut taken: Vec<Element> = std::mem::take(carried);
    let mut ready: Vec<Element> = Vec::new();
    loop {
        if !taken.is_empty() {
            let batch = pairs.sort(ctx, s2s, std::mem::take(&mut taken)).await;
            ready.extend(batch);
        }
        if !ready.is_empty() {
            if let Err(e) = conn.write_all(&batch_bytes(&ready)).await {
                return End::Broken(format!("write failed: {e}"), ready);
            }
            ready.clear();
            s2s.update_stream(sid, |i| i.touch());
        }
        let deadline = pairs.next_deadline();
        tokio::select! {
            m = rx.recv() => match m {
                Some(el) => {
                    taken.push(el);
                    fill_batch(rx, &mut taken);
                }
                None => return End::Idle,
            },
            f = conn.read_frame() => match f {
                Ok(Frame::Element(el)) => {
                    match from_peer(ctx, s2s, sid, conn, pairs, el).await {
                        Ok(let_through) => ready = let_through,
                        Err(why) => return End::Broken(why, Vec::new()),
                    }
                    s2s.update_stream(sid, |i| i.touch());
                }
                Ok(Frame::Close) => return End::Broken("the peer closed the stream".into(), Vec::new()),
                Ok(Frame::Header(_)) => return End::Broken("unexpected stream header".into(), Vec::new()),
                Err(e) => return End::Broken(e.to_string(), Vec::new()),
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                pairs.expire(ctx, s2s).await;
            }
            _ = tokio::time::sleep(idle) => return End::Idle,
            _ = crate::server::shutdown_requested(shutdown) => return End::Shutdown,
        }
    }
}

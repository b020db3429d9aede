//! Incoming streams (RFC 6120 as the receiving entity): STARTTLS, then
//! SASL EXTERNAL for a peer whose certificate is valid for its domain, or
//! Server Dialback (XEP-0220) as the configuration allows; several domain
//! pairs may authenticate on one stream (dialback piggybacking). Only
//! stanzas of a pair the stream authenticated are accepted; anything else
//! is a spoof and ends the stream.
//!
//! The same streams carry `db:verify` requests, answered as the
//! authoritative server for our domains.
//!
//! A peer that asks for a bidirectional stream (XEP-0288) gets each pair it
//! authenticates served the other way too: the stream becomes the link
//! (local, remote) that [`S2s::send`] queues to, unless one runs already.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use minidom::Element;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use xmpp_parsers::stanza_error::DefinedCondition as Cond;
use xmpp_parsers::stream_error::DefinedCondition as SC;

use super::outgoing::{self, Failure};
use super::{is_local_domain, may_skip_cert, Auth, Direction, S2s};
use crate::c2s::{read_failure, Fail};
use crate::modules::{Crossing, Stage};
use crate::net::conn::XmlConn;
use crate::server::Ctx;
use crate::stanza::{element, jid_attr, random_id, stanza_type, Kind};
use crate::xml::{ns, writer, Frame};

/// A peer held back by its read rate this long without a break is
/// flooding: its stream ends with `policy-violation`.
pub(super) const FLOOD: Duration = Duration::from_secs(5);

/// Incoming s2s streams open at once; beyond it, new ones are refused.
const MAX_INCOMING: usize = 10_000;

pub async fn accept_loop(ctx: Arc<Ctx>, listener: TcpListener, direct_tls: bool) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_INCOMING));
    loop {
        let (tcp, peer) = crate::server::accept(&listener, "s2s").await;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many incoming s2s streams; refused");
            continue;
        };
        // Counted with the c2s connections of the address (and waited for
        // at shutdown like them).
        let Some(guard) = crate::server::admit(&ctx, peer.ip()) else {
            tracing::info!(%peer, "too many connections from this address; refused");
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            serve(ctx, tcp, peer, direct_tls).await;
            drop(guard);
            drop(slot);
        });
    }
}

/// What one verification of a dialback key found.
struct Checked {
    local: String,
    remote: String,
    result: Result<bool, Failure>,
}

struct Incoming {
    /// Registry id (for `s2s list`).
    sid: u64,
    /// The id of our current stream header (dialback keys are bound to it).
    stream_id: String,
    header_sent: bool,
    /// The peer's domain, from its header.
    peer_domain: Option<String>,
    /// Our domain the peer's header addressed (checked to be ours).
    header_to: Option<String>,
    /// (remote, local) pairs authenticated on this stream.
    pairs: HashSet<(String, String)>,
    /// Whether SASL EXTERNAL succeeded (then the features offer it no more).
    external_done: bool,
    /// Pairs whose dialback key is being checked.
    checking: HashSet<(String, String)>,
    /// Whether the peer's certificate is valid for a domain, by domain.
    cert_valid: HashMap<String, bool>,
    checked_tx: mpsc::Sender<Checked>,
    /// The peer asked for a bidirectional stream (XEP-0288).
    bidi: bool,
    /// With bidi: the queue of what goes to the peer on this stream, for
    /// the (local, remote) pairs in `out_pairs`; `out_gen` marks it in the
    /// link table.
    out: Option<(mpsc::Sender<Element>, mpsc::Receiver<Element>)>,
    out_gen: u64,
    out_pairs: Vec<(String, String)>,
    /// Taken from the queue but not written when the stream broke.
    unsent: Vec<Element>,
}

async fn serve(ctx: Arc<Ctx>, tcp: TcpStream, peer: SocketAddr, direct_tls: bool) {
    let Some(s2s) = ctx.s2s.as_ref() else {
        return;
    };
    let rate = outgoing::stream_rate(&ctx);
    let mut conn = Box::new(XmlConn::new(
        tcp,
        peer,
        ctx.preauth_limits,
        rate,
        (rate * 2).max(ctx.limits.max_stanza_bytes * 2),
    ));
    conn.set_server_stream();
    let (checked_tx, mut checked_rx) = mpsc::channel(16);
    let mut st = Incoming {
        sid: s2s.register_stream(Direction::In, "", &peer.ip().to_string()),
        stream_id: String::new(),
        header_sent: false,
        peer_domain: None,
        header_to: None,
        pairs: HashSet::new(),
        external_done: false,
        checking: HashSet::new(),
        cert_valid: HashMap::new(),
        checked_tx,
        bidi: false,
        out: None,
        out_gen: 0,
        out_pairs: Vec::new(),
        unsent: Vec::new(),
    };
    let r = Box::pin(run(
        &ctx,
        s2s,
        &mut conn,
        &mut st,
        &mut checked_rx,
        direct_tls,
    ))
    .await;
    s2s.unregister_stream(st.sid);
    // No longer a link for anything: what waits for the peer goes another
    // way, once this stream is closed.
    for pair in &st.out_pairs {
        s2s.link_closed(pair, st.out_gen);
    }
    let queued = st.out.take().map(|(_, rx)| rx);
    let unsent = std::mem::take(&mut st.unsent);
    close(&ctx, &mut conn, &st, r).await;
    if let Some(mut rx) = queued {
        outgoing::hand_on(&ctx, &mut rx, unsent).await;
    }
}

async fn close(ctx: &Ctx, conn: &mut XmlConn, st: &Incoming, r: Result<(), Fail>) {
    let peer = conn.peer;
    match r {
        Ok(()) => {
            let _ = tokio::time::timeout(
                crate::c2s::CLOSE_TIMEOUT,
                conn.write_all(writer::STREAM_CLOSE),
            )
            .await;
            conn.shutdown().await;
        }
        Err(Fail::Stream(cond, text)) => {
            tracing::info!(%peer, peer_domain = ?st.peer_domain, condition = %cond, %text, "s2s: incoming stream error");
            if matches!(conn.io, crate::net::conn::Transport::Gone) {
                return;
            }
            if !st.header_sent {
                let local = ctx.domain.clone();
                let _ = conn
                    .write_all(&writer::s2s_stream_header(&local, "", Some(&random_id(12))))
                    .await;
            }
            crate::c2s::close_with_error(conn, cond, Some(&text)).await;
        }
        Err(Fail::Closed) => conn.shutdown().await,
        Err(Fail::PeerError) => {
            let _ = tokio::time::timeout(
                crate::c2s::CLOSE_TIMEOUT,
                conn.write_all(writer::STREAM_CLOSE),
            )
            .await;
            conn.shutdown().await;
        }
    }
}

fn fail(cond: SC, text: impl Into<String>) -> Fail {
    Fail::Stream(cond, text.into())
}

async fn write(conn: &mut XmlConn, bytes: &[u8]) -> Result<(), Fail> {
    conn.write_all(bytes).await.map_err(|_| Fail::Closed)
}

async fn send(conn: &mut XmlConn, el: &Element) -> Result<(), Fail> {
    let out = if el.ns() == ns::STREAM {
        let mut out = Vec::new();
        writer::write_stream_element(el, &mut out);
        out
    } else {
        writer::to_s2s_bytes(el)
    };
    write(conn, &out).await
}

impl Incoming {
    fn cert_valid_for(&mut self, s2s: &S2s, conn: &XmlConn, domain: &str) -> bool {
        if let Some(v) = self.cert_valid.get(domain) {
            return *v;
        }
        let v = conn
            .peer_certificates()
            .is_some_and(|c| s2s.tls.peers.valid_for(domain, &c));
        if self.cert_valid.len() < 64 {
            self.cert_valid.insert(domain.to_string(), v);
        }
        v
    }

    fn authenticated(
        &mut self,
        s2s: &S2s,
        conn: &mut XmlConn,
        ctx: &Ctx,
        remote: &str,
        local: &str,
        how: Auth,
    ) {
        if self.pairs.is_empty() {
            // Authenticated: stanzas may be as large as any.
            conn.set_limits(ctx.limits);
        }
        self.pairs.insert((remote.to_string(), local.to_string()));
        s2s.update_stream(self.sid, |i| i.authenticated(local, remote, how));
        tracing::info!(%remote, %local, ?how, peer = %conn.peer, "s2s: incoming stream authenticated");
        if self.bidi {
            self.serve_back(ctx, s2s, local, remote);
        }
    }

    /// XEP-0288: stanzas from `local` to `remote` may go on this stream
    /// (the inverse of a pair it authenticated).
    fn serve_back(&mut self, ctx: &Ctx, s2s: &S2s, local: &str, remote: &str) {
        let pair = (local.to_string(), remote.to_string());
        if self.out_pairs.contains(&pair) {
            return;
        }
        if self.out.is_none() {
            self.out = Some(mpsc::channel(ctx.config.s2s.max_queue));
            self.out_gen = s2s
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let Some((tx, _)) = &self.out else {
            return;
        };
        if s2s.attach_bidi(&pair, tx, self.out_gen) {
            self.out_pairs.push(pair);
        }
    }

    /// The peer asked for a bidirectional stream.
    fn enable_bidi(&mut self, ctx: &Ctx, s2s: &S2s) {
        self.bidi = true;
        s2s.update_stream(self.sid, |i| i.bidi());
        let pairs: Vec<_> = self.pairs.iter().cloned().collect();
        for (remote, local) in pairs {
            self.serve_back(ctx, s2s, &local, &remote);
        }
    }
}

/// The next stanza queued for the peer on a bidirectional stream; never,
/// on any other.
async fn next_out(
    out: &mut Option<(mpsc::Sender<Element>, mpsc::Receiver<Element>)>,
) -> Option<Element> {
    match out {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Write `first` and what else is queued behind it.
async fn write_out(
    s2s: &S2s,
    conn: &mut XmlConn,
    st: &mut Incoming,
    first: Element,
) -> Result<(), Fail> {
    let mut batch = vec![first];
    if let Some((_, rx)) = &mut st.out {
        outgoing::fill_batch(rx, &mut batch);
    }
    if conn
        .write_all(&outgoing::batch_bytes(&batch))
        .await
        .is_err()
    {
        st.unsent = batch;
        return Err(Fail::Closed);
    }
    s2s.update_stream(st.sid, |i| i.touch());
    Ok(())
}

async fn run(
    ctx: &Arc<Ctx>,
    s2s: &S2s,
    conn: &mut XmlConn,
    st: &mut Incoming,
    checked_rx: &mut mpsc::Receiver<Checked>,
    direct_tls: bool,
) -> Result<(), Fail> {
    let deadline = tokio::time::Instant::now() + ctx.config.negotiation_timeout();
    if direct_tls {
        handshake(s2s, st.sid, conn, &s2s.tls.direct, deadline).await?;
    }
    let idle = Duration::from_secs(ctx.config.s2s.idle_timeout_s);
    let mut shutdown = ctx.shutdown_signal();
    'stream: loop {
        accept_header(ctx, s2s, conn, st, deadline).await?;
        loop {
            let unauthenticated = st.pairs.is_empty();
            let el = tokio::select! {
                f = conn.read_frame() => match f {
                    Ok(Frame::Element(el)) => el,
                    Ok(Frame::Close) => return Ok(()),
                    Ok(Frame::Header(_)) => return Err(fail(SC::NotWellFormed, "unexpected stream header")),
                    Err(e) => return Err(read_failure(e)),
                },
                Some(c) = checked_rx.recv() => {
                    checked(ctx, s2s, conn, st, c).await?;
                    continue;
                }
                Some(out) = next_out(&mut st.out) => {
                    write_out(s2s, conn, st, out).await?;
                    continue;
                }
                _ = tokio::time::sleep_until(deadline), if unauthenticated => {
                    return Err(fail(SC::ConnectionTimeout, "no domain authenticated in time"));
                }
                _ = tokio::time::sleep(idle) => return Ok(()),
                _ = crate::server::shutdown_requested(&mut shutdown) => {
                    return Err(fail(SC::SystemShutdown, "server shutting down"));
                }
            };
            s2s.update_stream(st.sid, |i| i.touch());
            if conn.throttled_for() > FLOOD {
                return Err(fail(
                    SC::PolicyViolation,
                    "flooding: sending faster than the stream's rate for too long",
                ));
            }
            if el.is("error", ns::STREAM) {
                return Err(Fail::PeerError);
            }
            if Kind::of(&el).is_some() {
                stanza(ctx, &st.pairs, el).await?;
                continue;
            }
            match (el.ns().as_str(), el.name()) {
                (ns::TLS, "starttls") => {
                    if conn.is_tls() {
                        return Err(fail(SC::PolicyViolation, "TLS is already up"));
                    }
                    if !conn.is_drained() {
                        return Err(fail(SC::PolicyViolation, "data after <starttls/>"));
                    }
                    send(conn, &element("proceed", ns::TLS, &[])).await?;
                    handshake(s2s, st.sid, conn, &s2s.tls.starttls, deadline).await?;
                    continue 'stream;
                }
                (ns::SASL, "auth") => {
                    if sasl_external(ctx, s2s, conn, st, &el).await? {
                        conn.reset_stream();
                        continue 'stream;
                    }
                }
                (ns::DIALBACK, "result") => dialback_result(ctx, s2s, conn, st, &el).await?,
                (ns::DIALBACK, "verify") => dialback_verify(ctx, s2s, conn, &el).await?,
                (ns::BIDI, "bidi") if ctx.config.s2s.bidi => {
                    if ctx.config.s2s.require_encryption && !conn.is_tls() {
                        return Err(fail(SC::PolicyViolation, "TLS is required before bidi"));
                    }
                    st.enable_bidi(ctx, s2s);
                }
                _ => {
                    return Err(fail(
                        SC::UnsupportedStanzaType,
                        format!("unexpected <{}/> on a server-to-server stream", el.name()),
                    ))
                }
            }
        }
    }
}

/// The TLS handshake, within the negotiation's time; the stream's TLS is
/// recorded for `s2s list`.
async fn handshake(
    s2s: &S2s,
    sid: u64,
    conn: &mut XmlConn,
    config: &Arc<rustls::ServerConfig>,
    deadline: tokio::time::Instant,
) -> Result<(), Fail> {
    match tokio::time::timeout_at(deadline, conn.upgrade_tls(config.clone())).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(Fail::Closed),
        Err(_) => return Err(Fail::Closed),
    }
    let tls = conn.tls_info().map(|t| t.0);
    s2s.update_stream(sid, |i| i.tls(tls));
    Ok(())
}

/// Read the peer's header, answer with ours and the features.
async fn accept_header(
    ctx: &Ctx,
    s2s: &S2s,
    conn: &mut XmlConn,
    st: &mut Incoming,
    deadline: tokio::time::Instant,
) -> Result<(), Fail> {
    st.header_sent = false;
    let header = tokio::select! {
        f = conn.read_frame() => match f {
            Ok(Frame::Header(h)) => h,
            Ok(Frame::Close) => return Err(Fail::Closed),
            Ok(Frame::Element(_)) => return Err(fail(SC::NotWellFormed, "expected a stream header")),
            Err(e) => return Err(read_failure(e)),
        },
        _ = tokio::time::sleep_until(deadline) => return Err(fail(SC::ConnectionTimeout, "no stream header in time")),
    };
    let to = header.to.clone().unwrap_or_default();
    // Our header first, so a stream error can follow it.
    st.stream_id = random_id(12);
    let local = if is_local_domain(ctx, &to) {
        to.clone()
    } else {
        ctx.domain.clone()
    };
    let peer = header.from.clone().unwrap_or_default();
    write(
        conn,
        &writer::s2s_stream_header(&local, &peer, Some(&st.stream_id)),
    )
    .await?;
    st.header_sent = true;
    if header.element_ns != ns::STREAM || header.element_name != "stream" {
        return Err(fail(SC::InvalidNamespace, "not an XMPP stream"));
    }
    if header.default_ns.as_deref() != Some(ns::SERVER) {
        return Err(fail(
            SC::InvalidNamespace,
            "a server-to-server stream is jabber:server",
        ));
    }
    if !is_local_domain(ctx, &to) {
        return Err(fail(
            SC::HostUnknown,
            format!("this server does not serve {to:?}"),
        ));
    }
    st.header_to = Some(to.clone());
    if header.version.as_deref() != Some("1.0") {
        return Err(fail(SC::UnsupportedVersion, "XMPP 1.0 streams only"));
    }
    if !peer.is_empty() {
        let valid = xmpp_parsers::jid::BareJid::new(&peer).is_ok_and(|j| j.node().is_none());
        if !valid {
            return Err(fail(SC::InvalidFrom, "the stream's 'from' is not a domain"));
        }
        st.peer_domain = Some(peer.clone());
    }
    let mut features = Element::bare("features", ns::STREAM);
    if !conn.is_tls() {
        let mut tls = element("starttls", ns::TLS, &[]);
        if ctx.config.s2s.require_encryption {
            tls.append_child(element("required", ns::TLS, &[]));
        }
        features.append_child(tls);
    } else if !st.external_done && !peer.is_empty() && st.cert_valid_for(s2s, conn, &peer) {
        let mut m = element("mechanisms", ns::SASL, &[]);
        let mut mech = element("mechanism", ns::SASL, &[]);
        mech.append_text("EXTERNAL");
        m.append_child(mech);
        features.append_child(m);
    }
    if conn.is_tls() || !ctx.config.s2s.require_encryption {
        let mut db = element("dialback", ns::DIALBACK_FEATURE, &[]);
        db.append_child(element("errors", ns::DIALBACK_FEATURE, &[]));
        features.append_child(db);
        if ctx.config.s2s.bidi && !st.bidi && st.pairs.is_empty() {
            features.append_child(element("bidi", ns::BIDI_FEATURE, &[]));
        }
    }
    send(conn, &features).await
}

/// SASL EXTERNAL (RFC 6120 §6.4, XEP-0178 §3): whether it succeeded (the
/// stream then restarts).
async fn sasl_external(
    ctx: &Ctx,
    s2s: &S2s,
    conn: &mut XmlConn,
    st: &mut Incoming,
    el: &Element,
) -> Result<bool, Fail> {
    let failure = |cond: &str| {
        let mut f = element("failure", ns::SASL, &[]);
        f.append_child(element(cond, ns::SASL, &[]));
        f
    };
    if el.attr("mechanism") != Some("EXTERNAL") || !conn.is_tls() || st.external_done {
        send(conn, &failure("invalid-mechanism")).await?;
        return Ok(false);
    }
    let text = el.text();
    let text = text.trim();
    let authzid = if text.is_empty() || text == "=" {
        st.peer_domain.clone()
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
    };
    let local = st.local_of_header(ctx);
    let ok = match &authzid {
        Some(d) if st.peer_domain.as_deref() == Some(d.as_str()) => st.cert_valid_for(s2s, conn, d),
        _ => false,
    };
    let Some(remote) = authzid.filter(|_| ok) else {
        send(conn, &failure("not-authorized")).await?;
        return Ok(false);
    };
    send(conn, &element("success", ns::SASL, &[])).await?;
    st.external_done = true;
    st.authenticated(s2s, conn, ctx, &remote, &local, Auth::External);
    Ok(true)
}

impl Incoming {
    /// The local domain the peer's header addressed: SASL authenticates
    /// that pair.
    fn local_of_header(&self, ctx: &Ctx) -> String {
        self.header_to.clone().unwrap_or_else(|| ctx.domain.clone())
    }
}

/// `<db:result>` with a key: the peer asks to authenticate a pair.
async fn dialback_result(
    ctx: &Arc<Ctx>,
    s2s: &S2s,
    conn: &mut XmlConn,
    st: &mut Incoming,
    el: &Element,
) -> Result<(), Fail> {
    let (Some(remote), Some(local)) = (el.attr("from"), el.attr("to")) else {
        return Err(fail(
            SC::ImproperAddressing,
            "<db:result/> needs 'from' and 'to'",
        ));
    };
    let (remote, local) = (remote.to_string(), local.to_string());
    let key = el.text();
    let key = key.trim().to_string();
    if key.is_empty() {
        return Err(fail(SC::NotAuthorized, "<db:result/> without a key"));
    }
    let error = |cond: &str| {
        let mut r = element(
            "result",
            ns::DIALBACK,
            &[("from", &local), ("to", &remote), ("type", "error")],
        );
        let mut e = element("error", ns::CLIENT, &[("type", "cancel")]);
        e.append_child(element(cond, ns::STANZAS, &[]));
        r.append_child(e);
        r
    };
    if ctx.config.s2s.require_encryption && !conn.is_tls() {
        return Err(fail(SC::PolicyViolation, "TLS is required before dialback"));
    }
    if !is_local_domain(ctx, &local) {
        return send(conn, &error("item-not-found")).await;
    }
    if xmpp_parsers::jid::BareJid::new(&remote).map_or(true, |j| j.node().is_some()) {
        return Err(fail(SC::InvalidFrom, "<db:result/> 'from' is not a domain"));
    }
    let pair = (remote.clone(), local.clone());
    if st.pairs.contains(&pair) {
        // Already authenticated: say so again.
        return send(conn, &valid_result(&local, &remote)).await;
    }
    let cert_ok = st.cert_valid_for(s2s, conn, &remote);
    if !cert_ok && !may_skip_cert(ctx, &remote) {
        tracing::info!(%remote, "s2s: dialback refused: the peer's certificate is not valid for it");
        return send(conn, &error("policy-violation")).await;
    }
    if cert_ok {
        // XEP-0344 §2.4: a certificate valid for the domain is proof
        // enough; no callback needed.
        send(conn, &valid_result(&local, &remote)).await?;
        st.authenticated(s2s, conn, ctx, &remote, &local, Auth::Dialback);
        return Ok(());
    }
    if st.checking.len() >= 16 || !st.checking.insert(pair) {
        return Err(fail(
            SC::PolicyViolation,
            "too many dialback requests at once",
        ));
    }
    let ctx = ctx.clone();
    let tx = st.checked_tx.clone();
    let id = st.stream_id.clone();
    tokio::spawn(async move {
        let result = outgoing::verify(&ctx, &local, &remote, &id, &key).await;
        let _ = tx
            .send(Checked {
                local,
                remote,
                result,
            })
            .await;
    });
    Ok(())
}

fn valid_result(local: &str, remote: &str) -> Element {
    element(
        "result",
        ns::DIALBACK,
        &[("from", local), ("to", remote), ("type", "valid")],
    )
}

/// The authoritative server answered about a key.
async fn checked(
    ctx: &Ctx,
    s2s: &S2s,
    conn: &mut XmlConn,
    st: &mut Incoming,
    c: Checked,
) -> Result<(), Fail> {
    st.checking.remove(&(c.remote.clone(), c.local.clone()));
    match c.result {
        Ok(true) => {
            send(conn, &valid_result(&c.local, &c.remote)).await?;
            st.authenticated(s2s, conn, ctx, &c.remote, &c.local, Auth::Dialback);
            Ok(())
        }
        Ok(false) => {
            tracing::info!(remote = %c.remote, "s2s: a dialback key did not verify");
            send(
                conn,
                &element(
                    "result",
                    ns::DIALBACK,
                    &[("from", &c.local), ("to", &c.remote), ("type", "invalid")],
                ),
            )
            .await?;
            Err(fail(SC::NotAuthorized, "the dialback key did not verify"))
        }
        Err(f) => {
            tracing::info!(remote = %c.remote, reason = %f.text, "s2s: could not check a dialback key");
            let mut r = element(
                "result",
                ns::DIALBACK,
                &[("from", &c.local), ("to", &c.remote), ("type", "error")],
            );
            let mut e = element("error", ns::CLIENT, &[("type", "cancel")]);
            let cond = match f.cond {
                Cond::RemoteServerTimeout => "remote-server-timeout",
                _ => "remote-server-not-found",
            };
            e.append_child(element(cond, ns::STANZAS, &[]));
            r.append_child(e);
            send(conn, &r).await
        }
    }
}

/// `<db:verify>`: as the authoritative server for `to`, is this our key?
async fn dialback_verify(
    ctx: &Ctx,
    s2s: &S2s,
    conn: &mut XmlConn,
    el: &Element,
) -> Result<(), Fail> {
    let (Some(receiving), Some(originating), Some(id)) =
        (el.attr("from"), el.attr("to"), el.attr("id"))
    else {
        return Err(fail(
            SC::ImproperAddressing,
            "<db:verify/> needs 'from', 'to' and 'id'",
        ));
    };
    let valid = is_local_domain(ctx, originating)
        && s2s.dialback.verify(receiving, originating, id, &el.text());
    let r = element(
        "verify",
        ns::DIALBACK,
        &[
            ("from", originating),
            ("to", receiving),
            ("id", id),
            ("type", if valid { "valid" } else { "invalid" }),
        ],
    );
    send(conn, &r).await
}

/// A stanza from a peer: only for a (remote, local) pair in `pairs`, the
/// ones its stream authenticated; then across the border and into the
/// router.
pub(super) async fn stanza(
    ctx: &Arc<Ctx>,
    pairs: &HashSet<(String, String)>,
    el: Element,
) -> Result<(), Fail> {
    if pairs.is_empty() {
        return Err(fail(SC::NotAuthorized, "stanzas before authentication"));
    }
    let (Ok(Some(from)), to) = (jid_attr(&el, "from"), jid_attr(&el, "to")) else {
        return Err(fail(
            SC::ImproperAddressing,
            "a stanza needs a valid 'from'",
        ));
    };
    let to = match to {
        Ok(Some(t)) => t,
        Ok(None) => return Err(fail(SC::ImproperAddressing, "a stanza needs a 'to'")),
        Err(_) => {
            crate::router::bounce(
                ctx,
                &el,
                Cond::JidMalformed,
                Some("the 'to' address is not a valid JID"),
            )
            .await;
            return Ok(());
        }
    };
    let (fd, td) = (from.domain().as_str(), to.domain().as_str());
    if !is_local_domain(ctx, td) {
        return Err(fail(
            SC::HostUnknown,
            format!("this server does not serve {td}"),
        ));
    }
    if !pairs.contains(&(fd.to_string(), td.to_string())) {
        return Err(fail(
            SC::InvalidFrom,
            format!("{fd} is not authenticated on this stream for {td}"),
        ));
    }
    if el.name() == "iq" && !matches!(stanza_type(&el), "get" | "set" | "result" | "error") {
        crate::router::bounce(
            ctx,
            &el,
            Cond::BadRequest,
            Some("an IQ has type get, set, result or error"),
        )
        .await;
        return Ok(());
    }
    let Some(mut el) = ctx.registry.cross(ctx, Crossing::In, el) else {
        return Ok(());
    };
    ctx.registry
        .run_processors(ctx, Stage::FromRemote, &from, &to, &mut el)
        .await;
    crate::router::route(ctx, el).await;
    Ok(())
}

//! Client-to-server streams: negotiation (STARTTLS, SASL, bind) and the
//! session loop.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use xmpp_parsers::jid::{BareJid, FullJid};

use crate::net::conn::XmlConn;
use crate::server::Ctx;
use crate::store::BoxFuture;

mod csi;
mod negotiate;
pub(crate) use negotiate::{read_failure, Fail};
mod session;
pub mod sm;

/// Per-session state the router and presence logic need.
pub struct ClientState {
    pub full: FullJid,
    pub bare: BareJid,
    /// Session id in the registry (distinguishes a replaced session).
    pub id: u64,
    /// `xml:lang` of the stream, stamped on stanzas that have none.
    pub lang: Option<String>,
    /// Whether the resource has sent available presence.
    pub available: bool,
    pub priority: i8,
    /// Whether the session has had its first available presence with a
    /// non-negative priority (when offline messages are delivered).
    pub offline_started: bool,
    /// Entities that got directed presence from this session; they get
    /// unavailable presence when it ends (RFC 6121 §4.6.3). Boxed, like the
    /// work queue: most sessions never have any, and every idle session
    /// keeps this struct.
    #[allow(clippy::box_collection)]
    directed: Option<Box<HashSet<String>>>,
    /// Work done at the pace the client reads (see [`Backlog`]).
    #[allow(clippy::box_collection)]
    work: Option<Box<VecDeque<Box<dyn Backlog>>>>,
    /// Stream management, once the client enabled it.
    pub(crate) sm: Option<Box<sm::Sm>>,
    /// Client state indication: what is held while the client is inactive.
    pub(crate) csi: Option<Box<csi::Held>>,
}

impl ClientState {
    pub fn new(full: FullJid, id: u64, lang: Option<String>) -> ClientState {
        ClientState {
            bare: full.to_bare(),
            full,
            id,
            lang,
            available: false,
            priority: 0,
            offline_started: false,
            directed: None,
            work: None,
            sm: None,
            csi: None,
        }
    }

    /// Remember that `to` got directed presence (at most `max` entities).
    pub fn add_directed(&mut self, to: String, max: usize) {
        let d = self.directed.get_or_insert_with(Default::default);
        if d.len() < max {
            d.insert(to);
        }
    }

    pub fn remove_directed(&mut self, to: &str) {
        if let Some(d) = &mut self.directed {
            d.remove(to);
        }
    }

    pub fn has_directed(&self) -> bool {
        self.directed.as_ref().is_some_and(|d| !d.is_empty())
    }

    /// The entities that got directed presence, forgotten here.
    pub fn take_directed(&mut self) -> HashSet<String> {
        self.directed.take().map(|d| *d).unwrap_or_default()
    }

    /// Queue backlog work (done after what is queued already).
    pub fn push_work(&mut self, w: Box<dyn Backlog>) {
        self.work.get_or_insert_with(Default::default).push_back(w);
    }

    pub fn has_work(&self) -> bool {
        self.work.as_ref().is_some_and(|w| !w.is_empty())
    }

    /// Do one step of the first piece of work; a finished piece is dropped,
    /// and an empty queue gives its memory back.
    pub async fn step_work(&mut self, ctx: &Arc<Ctx>) {
        let Some(mut w) = self.work.as_mut().and_then(|q| q.pop_front()) else {
            return;
        };
        if Box::pin(w.step(ctx, self)).await {
            self.work.get_or_insert_with(Default::default).push_front(w);
        } else if !self.has_work() {
            self.work = None;
        }
    }
}

/// Work a session does at the pace its client reads. What a login pushes
/// at once (contacts' presence, pending subscription requests, offline
/// messages) can be far more than a session queue holds: it is produced a
/// step at a time, each step only while the session's queue is short, so
/// a slow client slows it down instead of being disconnected.
pub trait Backlog: Send + Sync {
    /// Deliver the next part into the session's own mailbox (a few dozen
    /// KiB at most). Returns `false` when nothing is left to do.
    fn step<'a>(&'a mut self, ctx: &'a Arc<Ctx>, st: &'a mut ClientState) -> BoxFuture<'a, bool>;
}

/// Serve one accepted TCP connection until it ends.
pub async fn serve(ctx: Arc<Ctx>, tcp: TcpStream, peer: SocketAddr, direct_tls: bool) {
    // A task's memory is the largest state of its future (plus every value
    // moved through it): the connection and the negotiation future are
    // boxed, so what an idle session keeps for hours is the session loop's
    // state alone, not the TLS handshake's or SASL's.
    let rate = ctx.config.limits.c2s_bytes_per_sec;
    let conn = Box::new(XmlConn::new(
        tcp,
        peer,
        ctx.preauth_limits,
        rate,
        (rate * 2).max(ctx.limits.max_stanza_bytes * 2),
    ));
    let negotiated = Box::pin(negotiate::run(&ctx, conn, direct_tls)).await;
    if let Some((conn, bound)) = negotiated {
        session::run(ctx, conn, bound).await;
    }
}

/// How long the final stream error may take to write.
pub(crate) const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Helper used by both phases: send the stream error and close.
pub(crate) async fn close_with_error(
    conn: &mut XmlConn,
    cond: xmpp_parsers::stream_error::DefinedCondition,
    text: Option<&str>,
) {
    let el = crate::stanza::stream_error(cond, text);
    let mut out = Vec::new();
    crate::xml::writer::write_stream_element(&el, &mut out);
    out.extend_from_slice(crate::xml::writer::STREAM_CLOSE);
    // Bounded: a peer that does not read must not hold the task for the
    // full write timeout just to be told goodbye.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.write_all(&out)).await;
    conn.shutdown().await;
}

/// Send a prepared stream error element and close.
pub(crate) async fn close_with_element(conn: &mut XmlConn, el: &minidom::Element) {
    let mut out = Vec::new();
    crate::xml::writer::write_stream_element(el, &mut out);
    out.extend_from_slice(crate::xml::writer::STREAM_CLOSE);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.write_all(&out)).await;
    conn.shutdown().await;
}

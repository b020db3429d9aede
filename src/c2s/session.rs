//! The session loop of a bound client: read stanzas and route them, write
//! what arrives in the mailbox, produce the login backlog at the pace the
//! client reads, end cleanly.
//!
//! Nothing taken from the mailbox is forgotten. Without stream management
//! a stanza counts as delivered once the socket took it; with it (XEP-0198)
//! only once the client acknowledged it. Until then it stays with the
//! session, and if the session ends first it is routed again, kept in
//! storage or dropped according to its [`Fate`]. A stream-managed session
//! whose connection drops waits (parked) for its client to resume it,
//! within `[sm] resume_timeout_s`; a new connection that resumes it takes
//! the whole session over (see [`super::sm::Resumable`]).

use std::sync::Arc;
use std::time::Duration;

use minidom::Element;
use xmpp_parsers::stream_error::DefinedCondition as SC;

use super::negotiate::{read_failure, Bound, Fail};
use super::sm::{self, ResumeRequest, Sm};
use super::ClientState;
use crate::modules::{offline, presence, Event};
use crate::net::conn::XmlConn;
use crate::server::Ctx;
use crate::sessions::{Control, Fate, Inbox, Outbound, Queued};
use crate::stanza::Kind;
use crate::xml::{ns, writer, Frame};

/// Most bytes gathered from the mailbox into one write.
const WRITE_BATCH: usize = 64 * 1024;
/// The backlog is stepped only while less than this waits to be written.
const BACKLOG_LOW_WATER: usize = 16 * 1024;

enum End {
    /// Send this stream error and close.
    Error(SC, String),
    /// Send this stream error element (one with application-specific
    /// content) and close.
    Raw(Box<Element>),
    /// The client closed its stream (or ended it with an error): close ours.
    PeerClosed,
    /// The connection is gone.
    Gone,
    /// A new connection resumes this session (XEP-0198).
    Resume(ResumeRequest),
}

impl From<Fail> for End {
    fn from(f: Fail) -> End {
        match f {
            Fail::Stream(c, t) => End::Error(c, t),
            Fail::Closed => End::Gone,
            Fail::PeerError => End::PeerClosed,
        }
    }
}

/// What a session does once its connection is gone.
enum Next {
    Park,
    Handover(ResumeRequest),
}

pub async fn run(ctx: Arc<Ctx>, conn: Box<XmlConn>, mut bound: Box<Bound>) {
    let mut conn = Some(conn);
    loop {
        let next = match conn.take() {
            Some(mut c) => {
                let end = match bound.resumed.take() {
                    Some(h) => Box::pin(resumed(&ctx, &mut c, &mut bound, h)).await.err(),
                    None => None,
                };
                let end = match end {
                    Some(e) => e,
                    None => session_loop(&ctx, &mut c, &mut bound).await,
                };
                match end {
                    End::Resume(req) => {
                        super::close_with_error(
                            &mut c,
                            SC::Conflict,
                            Some("the session was resumed on another connection"),
                        )
                        .await;
                        Next::Handover(req)
                    }
                    End::Gone if parkable(&ctx, &bound.state) => Next::Park,
                    other => {
                        Box::pin(finish(&ctx, Some(c), bound, other)).await;
                        return;
                    }
                }
            }
            None => Next::Park,
        };
        let req = match next {
            Next::Handover(req) => req,
            Next::Park => match Box::pin(park(&ctx, &mut bound)).await {
                Ok(req) => req,
                Err(end) => {
                    Box::pin(finish(&ctx, None, bound, end)).await;
                    return;
                }
            },
        };
        // The new connection's task carries on with this session; if it
        // went away meanwhile, the session stays parked.
        match req.reply.send(bound) {
            Ok(()) => {
                tracing::debug!("session handed over to a resuming connection");
                return;
            }
            Err(b) => bound = b,
        }
    }
}

/// Whether a session whose connection dropped waits to be resumed.
fn parkable(ctx: &Ctx, st: &ClientState) -> bool {
    st.sm.as_ref().is_some_and(|s| s.id.is_some())
        && ctx.config.sm.resume_timeout_s > 0
        && !ctx.is_shutting_down()
}

/// The wait of a session without a connection for its client to resume
/// it. Deliveries wait with it (bounded like its queue); a stream error
/// for it (shutdown, conflict, deleted account) or the timeout ends it.
async fn park(ctx: &Arc<Ctx>, bound: &mut Bound) -> Result<ResumeRequest, End> {
    let Bound {
        state,
        inbox,
        pending,
        ..
    } = bound;
    inbox.set_parked(true);
    // Another resource may deliver the offline queue meanwhile.
    offline::session_gone(ctx, state).await;
    tracing::debug!(jid = %state.full, "connection lost; the session waits to be resumed");
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(ctx.config.sm.resume_timeout_s);
    let limits = &ctx.config.limits;
    let mut bytes: usize = pending.iter().map(|q| q.xml.len()).sum();
    let out = loop {
        tokio::select! {
            r = requests(&mut state.sm) => break Ok(r),
            m = inbox.recv() => match m {
                None => break Err(End::Gone),
                Some(Outbound::Stanza(q)) => {
                    bytes += q.xml.len();
                    pending.push(q);
                    let waiting = pending.len() + state.sm.as_ref().map_or(0, |s| s.unacked.len());
                    if waiting > limits.session_queue || bytes > limits.session_queue_bytes {
                        break Err(End::Gone);
                    }
                }
                Some(Outbound::Close(c)) => break Err(End::Error(c.0, c.1)),
                Some(Outbound::Control(Control::DrainOffline)) => offline::start_drain(ctx, state),
            },
            _ = tokio::time::sleep_until(deadline) => {
                tracing::debug!(jid = %state.full, "the session was not resumed in time");
                break Err(End::Gone);
            }
        }
    };
    inbox.set_parked(false);
    out
}

/// The next resumption request for a resumable session (never, for one
/// that is not).
async fn requests(sm: &mut Option<Box<Sm>>) -> ResumeRequest {
    match sm.as_mut().and_then(|s| s.requests.as_mut()) {
        Some(rx) => match rx.recv().await {
            Some(r) => r,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// A session resumed on this connection: acknowledge what the client
/// says it got, tell it how much of its own was handled, and send again
/// what it did not get (XEP-0198 §5).
async fn resumed(ctx: &Arc<Ctx>, conn: &mut XmlConn, bound: &mut Bound, h: u32) -> Result<(), End> {
    let Bound { state, pending, .. } = bound;
    let Some(sm) = state.sm.as_mut() else {
        return Err(End::Error(
            SC::InternalServerError,
            "no session state".into(),
        ));
    };
    let acked = sm
        .ack(h)
        .map_err(|t| End::Raw(Box::new(sm::too_high_error(&t))))?;
    let mut again: Vec<Queued> = sm.unacked.drain(..).collect();
    sm.h_out = h;
    let r = crate::stanza::element(
        "resumed",
        ns::SM,
        &[
            ("h", &sm.h_in.to_string()),
            ("previd", sm.id.as_deref().unwrap_or_default()),
        ],
    );
    let state_full = state.full.clone();
    let bare = state.bare.clone();
    settle_delivered(ctx, &bare, acked).await;
    send_element(conn, &r).await?;
    again.append(pending);
    let again: Vec<Queued> = again
        .into_iter()
        .map(|q| sm::redelivered(&ctx.domain, q))
        .collect();
    tracing::debug!(jid = %state_full, again = again.len(), "session resumed");
    let mut chunk = Vec::new();
    let mut size = 0;
    for q in again {
        size += q.xml.len();
        chunk.push(q);
        if size >= WRITE_BATCH {
            write_chunk(ctx, conn, state, pending, &mut chunk).await?;
            size = 0;
        }
    }
    write_chunk(ctx, conn, state, pending, &mut chunk).await?;
    // Stored messages that waited while no session could take them.
    offline::ensure_drain(ctx, &bare);
    Ok(())
}

/// Write `chunk`; what a failed write left goes to `pending`.
async fn write_chunk(
    ctx: &Arc<Ctx>,
    conn: &mut XmlConn,
    state: &mut ClientState,
    pending: &mut Vec<Queued>,
    chunk: &mut Vec<Queued>,
) -> Result<(), End> {
    let r = write_items(ctx, conn, state, chunk).await;
    pending.append(chunk);
    r
}

/// The session loop: what arrives in the mailbox is written, what the
/// client sends is routed, and the backlog advances while little waits.
/// It holds no timer and no shutdown watch: the idle sweeper
/// (`server::sweep_idle`) and the shutdown both reach a session through its
/// mailbox, so an idle session's task is as small as it can be.
async fn session_loop(ctx: &Arc<Ctx>, conn: &mut XmlConn, bound: &mut Bound) -> End {
    let Bound {
        state,
        inbox,
        pending,
        ..
    } = bound;
    if ctx.is_shutting_down() {
        return End::Error(SC::SystemShutdown, "server shutting down".into());
    }
    loop {
        let can_step = state.has_work() && inbox.queued_bytes() < BACKLOG_LOW_WATER;
        tokio::select! {
            m = inbox.recv() => {
                let Some(first) = m else { return End::Gone };
                // Boxed: the write's state exists only while writing.
                if let Some(done) = Box::pin(write_and_settle(ctx, conn, state, inbox, pending, first)).await {
                    return done;
                }
            }
            r = requests(&mut state.sm) => return End::Resume(r),
            f = conn.read_frame() => {
                inbox.touch(ctx.clock());
                match f {
                    Ok(Frame::Element(el)) => {
                        if Kind::of(&el).is_some() {
                            // Boxed: routing's state exists only while a
                            // stanza is on its way, not in every idle
                            // session. What it copies to others beyond
                            // the first recipient is charged to this
                            // client's read budget.
                            let own = state.id;
                            let fanout = Box::pin(crate::sessions::measure_fanout(
                                own,
                                crate::router::from_client(ctx, state, el),
                            ))
                            .await;
                            conn.charge(fanout);
                            if let Some(sm) = state.sm.as_mut() {
                                sm.h_in = sm.h_in.wrapping_add(1);
                            }
                        } else if let Some(e) = Box::pin(nonza(ctx, conn, state, el)).await {
                            return e;
                        }
                    }
                    Ok(Frame::Close) => return End::PeerClosed,
                    Ok(Frame::Header(_)) => {
                        return End::Error(SC::NotWellFormed, "unexpected stream header".into());
                    }
                    Err(e) => return read_failure(e).into(),
                }
            }
            _ = std::future::ready(()), if can_step => {
                Box::pin(state.step_work(ctx)).await;
            }
        }
    }
}

async fn send_element(conn: &mut XmlConn, el: &Element) -> Result<(), End> {
    let mut out = Vec::with_capacity(128);
    writer::write_stream_element(el, &mut out);
    conn.write_all(&out).await.map_err(|_| End::Gone)
}

/// A top-level element that is not a stanza: stream management, client
/// state, or a stream error from the client.
async fn nonza(
    ctx: &Arc<Ctx>,
    conn: &mut XmlConn,
    state: &mut ClientState,
    el: Element,
) -> Option<End> {
    if el.is("error", ns::STREAM) {
        // RFC 6120 §4.9.1.1: a stream error ends the stream; it is not
        // answered with another.
        tracing::debug!("the client ended its stream with an error");
        return Some(End::PeerClosed);
    }
    let r = match (el.ns().as_str(), el.name()) {
        (ns::SM, "enable") => enable(ctx, conn, state, &el).await,
        (ns::SM, "r") => match &state.sm {
            Some(sm) => {
                let h = sm.h_in;
                // Only what is on disk counts as handled.
                if let Err(e) = ctx.stores.archive.sync().await {
                    tracing::error!(error = %e, "store flush failed; not acknowledging");
                    return Some(End::Error(
                        SC::InternalServerError,
                        "storage failure".into(),
                    ));
                }
                send_element(conn, &sm::ack_element(h)).await
            }
            None => Ok(()),
        },
        (ns::SM, "a") if state.sm.is_some() => {
            let Some(h) = el.attr("h").and_then(|h| h.parse::<u32>().ok()) else {
                return Some(End::Error(
                    SC::InvalidXml,
                    "<a/> needs a numeric 'h'".into(),
                ));
            };
            match state.sm.as_mut().map(|sm| sm.ack(h)) {
                None => Ok(()),
                Some(Ok(acked)) => {
                    settle_delivered(ctx, &state.bare, acked).await;
                    Ok(())
                }
                Some(Err(t)) => return Some(End::Raw(Box::new(sm::too_high_error(&t)))),
            }
        }
        // Before <enable/>: nothing to acknowledge.
        (ns::SM, "a") => Ok(()),
        (ns::SM, "resume") => send_element(conn, &sm::failed("unexpected-request", None)).await,
        (ns::CSI, "inactive") => {
            state.csi.get_or_insert_with(Default::default);
            Ok(())
        }
        (ns::CSI, "active") => match state.csi.take() {
            // Held presences a failed write did not deliver are dropped,
            // as presence is.
            Some(mut held) => write_items(ctx, conn, state, &mut held.take()).await,
            None => Ok(()),
        },
        _ => {
            return Some(End::Error(
                SC::UnsupportedStanzaType,
                format!("unsupported element {{{}}}{}", el.ns(), el.name()),
            ))
        }
    };
    r.err()
}

/// `<enable/>` (XEP-0198 §3): once per stream, after binding.
async fn enable(
    ctx: &Arc<Ctx>,
    conn: &mut XmlConn,
    state: &mut ClientState,
    el: &Element,
) -> Result<(), End> {
    if state.sm.is_some() {
        return send_element(conn, &sm::failed("unexpected-request", None)).await;
    }
    let timeout = ctx.config.sm.resume_timeout_s;
    let resume = matches!(el.attr("resume"), Some("true" | "1")) && timeout > 0;
    let reg = resume.then(|| ctx.resumable.register(&state.bare, state.id));
    let s = Sm::new(reg);
    let reply = sm::enabled(s.id.as_deref(), timeout);
    state.sm = Some(Box::new(s));
    send_element(conn, &reply).await
}

/// Write `first` and what follows it, then do what the written stanzas
/// call for. Returns how the session must end, if it must; what was not
/// written is left in `pending`.
async fn write_and_settle(
    ctx: &Arc<Ctx>,
    conn: &mut XmlConn,
    state: &mut ClientState,
    inbox: &mut Inbox,
    pending: &mut Vec<Queued>,
    first: Outbound,
) -> Option<End> {
    let mut items = Vec::new();
    let mut control = Vec::new();
    let mut next = Some(first);
    let mut close = None;
    let mut size = 0;
    while let Some(m) = next.take() {
        match m {
            Outbound::Stanza(q) => {
                let q = match state.csi.as_mut() {
                    Some(held) => held.hold(q),
                    None => Some(q),
                };
                if let Some(q) = q {
                    size += q.xml.len();
                    items.push(q);
                }
            }
            Outbound::Close(c) => {
                let (cond, text) = *c;
                close = Some(End::Error(cond, text));
                break;
            }
            Outbound::Control(c) => control.push(c),
        }
        if size >= WRITE_BATCH {
            break;
        }
        next = inbox.try_recv();
    }
    // A client that does not read blocks the write; its queue then fills
    // and the session ends at once instead of after the write timeout.
    let written = tokio::select! {
        r = write_items(ctx, conn, state, &mut items) => r,
        _ = inbox.killed() => Err(End::Gone),
    };
    if let Err(e) = written {
        // What was not written stays with the session (see `write_items`).
        pending.append(&mut items);
        return Some(e);
    }
    for c in control {
        match c {
            Control::DrainOffline => offline::start_drain(ctx, state),
        }
    }
    if let Some(sm) = &state.sm {
        if sm.unacked.len() > ctx.config.sm.max_unacked {
            return Some(End::Error(
                SC::PolicyViolation,
                format!(
                    "more than {} stanzas not acknowledged",
                    ctx.config.sm.max_unacked
                ),
            ));
        }
    }
    close
}

/// Write stanzas in one write. Written, they count as delivered (without
/// stream management) or wait for the client's acknowledgement (with it:
/// then also when the write failed, as a resumed session sends them
/// again). Without stream management, what a failed write did not
/// deliver is left in `items`; so is everything if this future is
/// dropped before the write ends.
async fn write_items(
    ctx: &Arc<Ctx>,
    conn: &mut XmlConn,
    state: &mut ClientState,
    items: &mut Vec<Queued>,
) -> Result<(), End> {
    if items.is_empty() {
        return Ok(());
    }
    let mut buf = Vec::with_capacity(items.iter().map(|q| q.xml.len()).sum::<usize>() + 32);
    for q in items.iter() {
        buf.extend_from_slice(&q.xml);
    }
    let ask = state.sm.as_ref().is_some_and(|s| !s.asked);
    if ask {
        buf.extend_from_slice(sm::REQUEST);
    }
    let ok = conn.write_all(&buf).await.is_ok();
    match state.sm.as_mut() {
        Some(sm) => {
            sm.sent(std::mem::take(items));
            if ask && ok {
                sm.asked = true;
            }
        }
        None if ok => settle_delivered(ctx, &state.bare, std::mem::take(items)).await,
        None => {}
    }
    if ok {
        Ok(())
    } else {
        Err(End::Gone)
    }
}

/// Stanzas the client got: the copies of a message are settled, stored
/// messages are deleted from offline storage.
async fn settle_delivered(ctx: &Ctx, user: &xmpp_parsers::jid::BareJid, items: Vec<Queued>) {
    let mut stored = Vec::new();
    for q in items {
        match q.fate {
            Fate::Copy(g) => {
                g.settle(true);
            }
            Fate::Stored(key) => stored.push(key),
            Fate::Drop | Fate::Reroute => {}
        }
    }
    if !stored.is_empty() {
        offline::delivered(ctx, user, &stored).await;
    }
}

async fn finish(ctx: &Arc<Ctx>, conn: Option<Box<XmlConn>>, bound: Box<Bound>, end: End) {
    let Bound {
        mut state,
        inbox,
        pending,
        ..
    } = *bound;
    // No resumption from here on: a request now fails at once.
    if let Some(sm) = state.sm.as_mut() {
        if let Some(id) = &sm.id {
            ctx.resumable.forget(id, state.id);
        }
        sm.requests = None;
    }
    // False when a new login took this resource over: the resource is the
    // new session's now, and it went unavailable when that one bound.
    let still_ours = ctx.sessions.unbind(&state.full, state.id);
    if let Some(mut conn) = conn {
        match &end {
            End::Error(cond, text) => {
                tracing::debug!(jid = %state.full, condition = %cond, %text, "session ended with stream error");
                super::close_with_error(&mut conn, cond.clone(), Some(text)).await;
            }
            End::Raw(el) => super::close_with_element(&mut conn, el).await,
            End::PeerClosed => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    conn.write_all(writer::STREAM_CLOSE),
                )
                .await;
                conn.shutdown().await;
            }
            End::Gone | End::Resume(_) => {}
        }
    }
    if still_ours {
        presence::session_ended(ctx, &mut state).await;
    }
    // Whatever was queued for this session and not delivered goes where
    // its fate says: messages to another resource or offline storage, IQs
    // answered with an error. Nothing that matters is dropped. Oldest
    // first: what the client did not acknowledge, what waited, what is
    // still queued.
    let mut unwritten = Vec::new();
    if let Some(sm) = state.sm.take() {
        unwritten.extend(sm.unacked);
    }
    unwritten.extend(pending);
    if let Some(held) = state.csi.take() {
        let mut held = held;
        unwritten.extend(held.take());
    }
    for item in inbox.close_and_take() {
        if let Outbound::Stanza(q) = item {
            unwritten.push(q);
        }
    }
    for q in unwritten {
        reroute(ctx, q).await;
    }
    offline::session_gone(ctx, &state).await;
    ctx.registry
        .emit(ctx, Event::SessionClosed { full: &state.full })
        .await;
    tracing::debug!(jid = %state.full, "session closed");
}

/// A stanza that was not delivered to its session.
async fn reroute(ctx: &Arc<Ctx>, q: Queued) {
    let again = match &q.fate {
        Fate::Drop | Fate::Stored(_) => false,
        Fate::Reroute => true,
        Fate::Copy(g) => g.settle(false),
    };
    if !again {
        return;
    }
    match crate::xml::parse_client_stanza(&q.xml) {
        Ok(el) => crate::router::route(ctx, el).await,
        Err(e) => tracing::error!(error = %e, "a queued stanza does not read back"),
    }
}

//! The session loop of a bound client: read stanzas and route them, write
//! what arrives in the mailbox, produce the login backlog at the pace the
//! client reads, end cleanly.
//!
//! Nothing taken from the mailbox is forgotten: a stanza counts as
//! written once the socket took it; until then it stays with the session,
//! and if the session ends first it is routed again, kept in storage or
//! dropped according to its [`Fate`] (stream management will replace
//! "the socket took it" with "the client acknowledged it").

use std::sync::Arc;
use std::time::Duration;

use xmpp_parsers::stream_error::DefinedCondition as SC;

use super::negotiate::{read_failure, Bound, Fail};
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
    /// The client closed its stream (or ended it with an error): close ours.
    PeerClosed,
    /// The connection is gone.
    Gone,
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

pub async fn run(ctx: Arc<Ctx>, mut conn: Box<XmlConn>, mut bound: Box<Bound>) {
    let Bound { state, inbox } = &mut *bound;
    let (end, unwritten) = session_loop(&ctx, &mut conn, state, inbox).await;
    Box::pin(finish(&ctx, conn, bound, end, unwritten)).await;
}

/// The session loop: what arrives in the mailbox is written, what the
/// client sends is routed, and the backlog advances while little waits.
/// It holds no timer and no shutdown watch: the idle sweeper
/// (`server::sweep_idle`) and the shutdown both reach a session through its
/// mailbox, so an idle session's task is as small as it can be.
async fn session_loop(
    ctx: &Arc<Ctx>,
    conn: &mut XmlConn,
    state: &mut ClientState,
    inbox: &mut Inbox,
) -> (End, Vec<Queued>) {
    let end = |e: End| (e, Vec::new());
    if ctx.is_shutting_down() {
        return end(End::Error(
            SC::SystemShutdown,
            "server shutting down".into(),
        ));
    }
    loop {
        let can_step = state.has_work() && inbox.queued_bytes() < BACKLOG_LOW_WATER;
        tokio::select! {
            m = inbox.recv() => {
                let Some(first) = m else { return end(End::Gone) };
                // Boxed: the write's state exists only while writing.
                if let Some(done) = Box::pin(write_and_settle(ctx, conn, state, inbox, first)).await {
                    return done;
                }
            }
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
                        } else if let Some(e) = nonza(&el) {
                            return end(e);
                        }
                    }
                    Ok(Frame::Close) => return end(End::PeerClosed),
                    Ok(Frame::Header(_)) => {
                        return end(End::Error(SC::NotWellFormed, "unexpected stream header".into()));
                    }
                    Err(e) => return end(read_failure(e).into()),
                }
            }
            _ = std::future::ready(()), if can_step => {
                Box::pin(state.step_work(ctx)).await;
            }
        }
    }
}

/// A top-level element that is not a stanza.
fn nonza(el: &minidom::Element) -> Option<End> {
    if el.is("error", ns::STREAM) {
        // RFC 6120 §4.9.1.1: a stream error ends the stream; it is not
        // answered with another.
        tracing::debug!("the client ended its stream with an error");
        return Some(End::PeerClosed);
    }
    Some(End::Error(
        SC::UnsupportedStanzaType,
        format!("unsupported element {{{}}}{}", el.ns(), el.name()),
    ))
}

/// Write `first` and what follows it, then do what the written stanzas
/// call for. Returns how the session must end, if it must, with what was
/// not written.
async fn write_and_settle(
    ctx: &Arc<Ctx>,
    conn: &mut XmlConn,
    state: &mut ClientState,
    inbox: &mut Inbox,
    first: Outbound,
) -> Option<(End, Vec<Queued>)> {
    match write_batch(conn, inbox, first).await {
        Batch::Written {
            close,
            stored,
            control,
        } => {
            if !stored.is_empty() {
                offline::delivered(ctx, &state.bare, &stored).await;
            }
            for c in control {
                match c {
                    Control::DrainOffline => offline::start_drain(ctx, state),
                }
            }
            close.map(|e| (e, Vec::new()))
        }
        Batch::Failed(items) => Some((End::Gone, items)),
    }
}

enum Batch {
    /// The socket took everything; then close with `close`, if any.
    Written {
        close: Option<End>,
        /// Offline messages written (to delete from storage).
        stored: Vec<u64>,
        control: Vec<Control>,
    },
    /// The write failed, timed out, or the session was killed while it
    /// was blocked: these were not (known to be) written.
    Failed(Vec<Queued>),
}

/// Write `first` and whatever else is queued, in one write.
async fn write_batch(conn: &mut XmlConn, inbox: &mut Inbox, first: Outbound) -> Batch {
    let mut buf = Vec::with_capacity(1024);
    let mut items = Vec::new();
    let mut control = Vec::new();
    let mut next = Some(first);
    let mut close = None;
    while let Some(m) = next.take() {
        match m {
            Outbound::Stanza(q) => {
                buf.extend_from_slice(&q.xml);
                items.push(q);
            }
            Outbound::Close(c) => {
                let (cond, text) = *c;
                close = Some(End::Error(cond, text));
                break;
            }
            Outbound::Control(c) => control.push(c),
        }
        if buf.len() >= WRITE_BATCH {
            break;
        }
        next = inbox.try_recv();
    }
    if !buf.is_empty() {
        // A client that does not read blocks the write; its queue then
        // fills and the session ends at once instead of after the write
        // timeout.
        let ok = tokio::select! {
            r = conn.write_all(&buf) => r.is_ok(),
            _ = inbox.killed() => false,
        };
        if !ok {
            return Batch::Failed(items);
        }
    }
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
    Batch::Written {
        close,
        stored,
        control,
    }
}

async fn finish(
    ctx: &Arc<Ctx>,
    mut conn: Box<XmlConn>,
    bound: Box<Bound>,
    end: End,
    mut unwritten: Vec<Queued>,
) {
    let Bound { mut state, inbox } = *bound;
    // False when a new login took this resource over: the resource is the
    // new session's now, and it went unavailable when that one bound.
    let still_ours = ctx.sessions.unbind(&state.full, state.id);
    match &end {
        End::Error(cond, text) => {
            tracing::debug!(jid = %state.full, condition = %cond, %text, "session ended with stream error");
            super::close_with_error(&mut conn, cond.clone(), Some(text)).await;
        }
        End::PeerClosed => {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), conn.write_all(writer::STREAM_CLOSE))
                    .await;
            conn.shutdown().await;
        }
        End::Gone => {}
    }
    drop(conn);
    if still_ours {
        presence::session_ended(ctx, &mut state).await;
    }
    // Whatever was queued for this session and not written goes where its
    // fate says: messages to another resource or offline storage, IQs
    // answered with an error. Nothing that matters is dropped.
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

/// A stanza that was not written to its session.
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

//! The session loop of a bound client: read stanzas and route them, write
//! what arrives in the mailbox, ping when idle, end cleanly.

use std::sync::Arc;
use std::time::Duration;

use xmpp_parsers::stream_error::DefinedCondition as SC;

use super::negotiate::{read_failure, Bound, Fail};
use super::ClientState;
use crate::modules::{presence, Event};
use crate::net::conn::XmlConn;
use crate::server::Ctx;
use crate::sessions::{Inbox, Outbound};
use crate::stanza::Kind;
use crate::xml::{ns, writer, Frame};

/// Most bytes gathered from the mailbox into one write.
const WRITE_BATCH: usize = 64 * 1024;

enum End {
    /// Send this stream error and close.
    Error(SC, String),
    /// The client closed its stream: close ours.
    PeerClosed,
    /// The connection is gone.
    Gone,
}

impl From<Fail> for End {
    fn from(f: Fail) -> End {
        match f {
            Fail::Stream(c, t) => End::Error(c, t),
            Fail::Closed => End::Gone,
        }
    }
}

pub async fn run(ctx: Arc<Ctx>, mut conn: Box<XmlConn>, mut bound: Box<Bound>) {
    let Bound { state, inbox } = &mut *bound;
    let end = session_loop(&ctx, &mut conn, state, inbox).await;
    Box::pin(finish(&ctx, conn, bound, end)).await;
}

/// The session loop: what arrives in the mailbox is written, what the
/// client sends is routed. It holds no timer and no shutdown watch: the
/// idle sweeper (`server::sweep_idle`) and the shutdown both reach a
/// session through its mailbox, so an idle session's task is as small as
/// it can be.
async fn session_loop(
    ctx: &Arc<Ctx>,
    conn: &mut XmlConn,
    state: &mut ClientState,
    inbox: &mut Inbox,
) -> End {
    if ctx.is_shutting_down() {
        return End::Error(SC::SystemShutdown, "server shutting down".into());
    }
    loop {
        tokio::select! {
            m = inbox.recv() => {
                let Some(first) = m else { return End::Gone };
                // Boxed: the write's state exists only while writing. A
                // client that does not read blocks it; its queue then
                // fills and the session ends at once instead of after the
                // write timeout.
                let (end, killed) = Box::pin(write_batch(conn, inbox, first)).await;
                if killed {
                    return End::Gone;
                }
                if let Some(end) = end {
                    return end;
                }
            }
            f = conn.read_frame() => {
                inbox.touch(ctx.clock());
                match f {
                    Ok(Frame::Element(el)) => {
                        if Kind::of(&el).is_some() {
                            // Boxed: routing's state exists only while a
                            // stanza is on its way, not in every idle session.
                            Box::pin(crate::router::from_client(ctx, state, el)).await;
                        } else if let Some(end) = nonza(&el) {
                            return end;
                        }
                    }
                    Ok(Frame::Close) => return End::PeerClosed,
                    Ok(Frame::Header(_)) => {
                        return End::Error(SC::NotWellFormed, "unexpected stream header".into());
                    }
                    Err(e) => return read_failure(e).into(),
                }
            }
        }
    }
}

/// A top-level element that is not a stanza.
fn nonza(el: &minidom::Element) -> Option<End> {
    Some(End::Error(
        SC::UnsupportedStanzaType,
        format!("unsupported element {{{}}}{}", el.ns(), el.name()),
    ))
}

/// Write `first` and whatever else is queued, in one write. Returns how
/// the session must end, if it must, and whether the queue overflowed
/// while the write was blocked (a client that does not read: it then ends
/// at once, not after the write timeout).
async fn write_batch(
    conn: &mut XmlConn,
    inbox: &mut Inbox,
    first: Outbound,
) -> (Option<End>, bool) {
    let mut buf = Vec::with_capacity(1024);
    let mut next = Some(first);
    let mut close = None;
    while let Some(m) = next.take() {
        match m {
            Outbound::Stanza(el) => writer::write_element(&el, ns::CLIENT, &mut buf),
            Outbound::Close(c) => {
                let (cond, text) = *c;
                close = Some(End::Error(cond, text));
                break;
            }
        }
        if buf.len() >= WRITE_BATCH {
            break;
        }
        next = inbox.try_recv();
    }
    if !buf.is_empty() {
        tokio::select! {
            r = conn.write_all(&buf) => {
                if r.is_err() {
                    return (Some(End::Gone), false);
                }
            }
            _ = inbox.killed() => return (None, true),
        }
    }
    (close, false)
}

async fn finish(ctx: &Arc<Ctx>, mut conn: Box<XmlConn>, bound: Box<Bound>, end: End) {
    let Bound { mut state, inbox } = *bound;
    ctx.sessions.unbind(&state.full, state.id);
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
    presence::session_ended(ctx, &mut state).await;
    // Whatever was queued for this session and not written goes back to
    // the router: messages reach another resource or offline storage, IQs
    // are answered with an error. Nothing acknowledged is dropped.
    inbox.close();
    while let Some(m) = inbox.try_recv() {
        if let Outbound::Stanza(el) = m {
            if matches!(Kind::of(&el), Some(Kind::Message | Kind::Iq)) {
                crate::router::route(ctx, *el).await;
            }
        }
    }
    ctx.registry
        .emit(ctx, Event::SessionClosed { full: &state.full })
        .await;
    tracing::debug!(jid = %state.full, "session closed");
}

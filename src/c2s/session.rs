//! The session loop of a bound client: read stanzas and route them, write
//! what arrives in the mailbox, ping when idle, end cleanly.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use xmpp_parsers::stream_error::DefinedCondition as SC;

use super::negotiate::{read_failure, Bound, Fail};
use super::ClientState;
use crate::modules::{presence, Event};
use crate::net::conn::XmlConn;
use crate::server::Ctx;
use crate::sessions::{Inbox, Outbound};
use crate::stanza::{element, random_id, Kind};
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

pub async fn run(ctx: Arc<Ctx>, mut conn: XmlConn, bound: Bound) {
    let Bound {
        mut state,
        mut inbox,
    } = bound;
    let end = session_loop(&ctx, &mut conn, &mut state, &mut inbox).await;
    finish(&ctx, conn, state, inbox, end).await;
}

async fn session_loop(
    ctx: &Arc<Ctx>,
    conn: &mut XmlConn,
    state: &mut ClientState,
    inbox: &mut Inbox,
) -> End {
    let mut shutdown = ctx.shutdown_signal();
    let kill = inbox.kill.clone();
    let idle = ctx.config.idle_timeout();
    let mut last_rx = Instant::now();
    let mut pinged = false;
    let sleep = tokio::time::sleep(idle);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = crate::server::shutdown_requested(&mut shutdown) => {
                return End::Error(SC::SystemShutdown, "server shutting down".into());
            }
            _ = kill.notified() => {
                return End::Error(SC::ResourceConstraint, "too many stanzas waiting; the client is not reading".into());
            }
            m = inbox.rx.recv() => {
                let Some(first) = m else { return End::Gone };
                // A client that does not read blocks this write; its queue
                // then fills and the kill notice ends the session at once
                // instead of after the write timeout.
                tokio::select! {
                    end = write_batch(conn, &mut inbox.rx, first) => {
                        if let Some(end) = end {
                            return end;
                        }
                    }
                    _ = kill.notified() => return End::Gone,
                }
            }
            f = conn.read_frame() => {
                last_rx = Instant::now();
                pinged = false;
                match f {
                    Ok(Frame::Element(el)) => {
                        if Kind::of(&el).is_some() {
                            crate::router::from_client(ctx, state, el).await;
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
            () = &mut sleep => {
                let now = Instant::now();
                if now.duration_since(last_rx) < idle {
                    sleep.as_mut().reset(last_rx + idle);
                } else if !pinged {
                    // XEP-0199 §4.2: the server checks the client is alive.
                    let mut ping = element("iq", ns::CLIENT, &[
                        ("type", "get"),
                        ("id", &format!("ping-{}", random_id(6))),
                        ("from", &ctx.domain),
                        ("to", state.full.as_str()),
                    ]);
                    ping.append_child(element("ping", ns::PING, &[]));
                    if conn.write_all(&writer::to_bytes(&ping)).await.is_err() {
                        return End::Gone;
                    }
                    pinged = true;
                    sleep.as_mut().reset(now + idle);
                } else {
                    return End::Error(SC::ConnectionTimeout, "no answer to ping".into());
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

/// Write `first` and whatever else is queued, in one write.
async fn write_batch(
    conn: &mut XmlConn,
    rx: &mut tokio::sync::mpsc::Receiver<Outbound>,
    first: Outbound,
) -> Option<End> {
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
        next = rx.try_recv().ok();
    }
    if !buf.is_empty() && conn.write_all(&buf).await.is_err() {
        return Some(End::Gone);
    }
    close
}

async fn finish(
    ctx: &Arc<Ctx>,
    mut conn: XmlConn,
    mut state: ClientState,
    mut inbox: Inbox,
    end: End,
) {
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
    inbox.rx.close();
    while let Ok(m) = inbox.rx.try_recv() {
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

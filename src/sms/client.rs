//! The SMPP backend: one transceiver session to the SMS centre of
//! `[sms.smpp]`, kept up with enquire_link and reconnected with backoff.
//! The store is the queue: each session sends every part of every stored
//! SMS the centre has not acknowledged (at most `window` unanswered), and
//! an SMS leaves the store only when every part was acknowledged, so an
//! outage or a restart resends what was not acknowledged and nothing that
//! was.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::gateway::{Gateway, Outgoing};
use super::smpp::{self, Pdu};
use crate::server::Ctx;
use crate::store::BoxFuture;

pub struct Smpp {
    pub gw: Arc<Gateway>,
    pub config: crate::config::Smpp,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the centre may take to answer a bind or an enquire_link.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl crate::modules::Service for Smpp {
    fn run(self: Arc<Self>, ctx: Arc<Ctx>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut shutdown = ctx.shutdown_signal();
            let mut backoff = Duration::from_secs(1);
            loop {
                if ctx.is_shutting_down() {
                    return;
                }
                let started = Instant::now();
                match self.session(&ctx).await {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(
                        host = %self.config.host,
                        port = self.config.port,
                        error = %e,
                        "SMPP session ended; reconnecting"
                    ),
                }
                if started.elapsed() > MAX_BACKOFF {
                    backoff = Duration::from_secs(1);
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        })
    }
}

/// One part of one stored SMS.
type PartKey = (u64, usize);

struct Session {
    wr: tokio::net::tcp::OwnedWriteHalf,
    seq: u32,
    /// Stored SMS this session knows, by id.
    sms: HashMap<u64, Outgoing>,
    /// Parts waiting to be sent, and those sent and not yet answered.
    queue: VecDeque<PartKey>,
    in_flight: HashMap<u32, PartKey>,
    known: HashSet<PartKey>,
    /// Parts the centre asked us to send again later.
    retry: Vec<(Instant, PartKey)>,
    enquire_sent: Option<Instant>,
    last_heard: Instant,
}

impl Session {
    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    async fn send(&mut self, p: &Pdu) -> Result<(), String> {
        self.wr
            .write_all(&p.encode())
            .await
            .map_err(|e| format!("write: {e}"))
    }
}

/// What the centre sent, as it arrives: whole PDUs taken from `buf`.
struct Incoming {
    rd: tokio::net::tcp::OwnedReadHalf,
    buf: Vec<u8>,
}

impl Incoming {
    /// Read more (cancel-safe: nothing read is lost if this is dropped).
    async fn more(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        let n = self
            .rd
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the SMS centre closed the connection".into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// The next whole PDU already read.
    fn take(&mut self) -> Result<Option<Pdu>, String> {
        match Pdu::decode(&self.buf).map_err(|b| b.0.to_string())? {
            Some((p, n)) => {
                self.buf.drain(..n);
                Ok(Some(p))
            }
            None => Ok(None),
        }
    }

    /// The next PDU, waiting for it.
    async fn next(&mut self) -> Result<Pdu, String> {
        loop {
            if let Some(p) = self.take()? {
                return Ok(p);
            }
            self.more().await?;
        }
    }
}

impl Smpp {
    async fn session(&self, ctx: &Arc<Ctx>) -> Result<(), String> {
        let c = &self.config;
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((c.host.as_str(), c.port)),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
        let (rd, wr) = stream.into_split();
        let mut inc = Incoming {
            rd,
            buf: Vec::new(),
        };
        let mut s = Session {
            wr,
            seq: 0,
            sms: HashMap::new(),
            queue: VecDeque::new(),
            in_flight: HashMap::new(),
            known: HashSet::new(),
            retry: Vec::new(),
            enquire_sent: None,
            last_heard: Instant::now(),
        };
        let seq = s.next_seq();
        s.send(&Pdu::new(
            smpp::BIND_TRANSCEIVER,
            seq,
            smpp::bind_body(&c.system_id, &c.password, &c.system_type),
        ))
        .await?;
        let resp = tokio::time::timeout(ANSWER_TIMEOUT, inc.next())
            .await
            .map_err(|_| "no answer to bind_transceiver".to_string())??;
        if resp.command != smpp::BIND_TRANSCEIVER_RESP || resp.status != smpp::ESME_ROK {
            return Err(format!(
                "bind_transceiver refused (command {:#x}, status {:#x})",
                resp.command, resp.status
            ));
        }
        tracing::info!(host = %c.host, port = c.port, smsc = %smpp::resp_id(&resp.body), "bound to the SMS centre");
        self.load(ctx, &mut s).await?;
        let mut shutdown = ctx.shutdown_signal();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let enquire_every = Duration::from_secs(c.enquire_link_s);
        loop {
            self.fill_window(&mut s).await?;
            tokio::select! {
                r = inc.more() => {
                    r?;
                    s.last_heard = Instant::now();
                    while let Some(p) = inc.take()? {
                        self.on_pdu(ctx, &mut s, p).await?;
                    }
                }
                _ = self.gw.wake.notified() => self.load(ctx, &mut s).await?,
                _ = tick.tick() => {
                    let now = Instant::now();
                    let (due, later): (Vec<_>, Vec<_>) =
                        s.retry.drain(..).partition(|(at, _)| *at <= now);
                    s.retry = later;
                    s.queue.extend(due.into_iter().map(|(_, k)| k));
                    if let Some(at) = s.enquire_sent {
                        if at.elapsed() > ANSWER_TIMEOUT {
                            return Err("no answer to enquire_link".into());
                        }
                    } else if s.last_heard.elapsed() >= enquire_every {
                        let seq = s.next_seq();
                        s.send(&Pdu::new(smpp::ENQUIRE_LINK, seq, Vec::new())).await?;
                        s.enquire_sent = Some(now);
                    }
                }
                _ = shutdown.changed() => {
                    let seq = s.next_seq();
                    let _ = s.send(&Pdu::new(smpp::UNBIND, seq, Vec::new())).await;
                    return Ok(());
                }
            }
        }
    }

    /// Queue the parts of stored SMS this session does not know yet.
    async fn load(&self, ctx: &Arc<Ctx>, s: &mut Session) -> Result<(), String> {
        let all = ctx
            .stores
            .sms
            .outgoing()
            .await
            .map_err(|e| format!("reading stored SMS: {e}"))?;
        for (id, doc) in all {
            if s.sms.contains_key(&id) {
                continue;
            }
            let Ok(mut o) = serde_json::from_str::<Outgoing>(&doc) else {
                tracing::error!(id, "an unreadable stored SMS is dropped");
                let _ = ctx.stores.sms.put_outgoing(id, None).await;
                continue;
            };
            if o.acked.len() != o.parts.len() {
                // Stored for a backend that takes whole texts: sent anew
                // part by part.
                o.acked = vec![None; o.parts.len()];
            }
            for (i, acked) in o.acked.iter().enumerate() {
                if acked.is_none() && s.known.insert((id, i)) {
                    s.queue.push_back((id, i));
                }
            }
            s.sms.insert(id, o);
        }
        Ok(())
    }

    async fn fill_window(&self, s: &mut Session) -> Result<(), String> {
        while s.in_flight.len() < self.config.window {
            let Some(key) = s.queue.pop_front() else {
                return Ok(());
            };
            let Some(o) = s.sms.get(&key.0) else { continue };
            let Some(part) = o.parts.get(key.1) else {
                continue;
            };
            let sm = smpp::Sm {
                source: self.config.source_addr.clone(),
                destination: o.number.clone(),
                esm_class: if o.parts.len() > 1 { smpp::ESM_UDHI } else { 0 },
                registered_delivery: 1,
                data_coding: o.data_coding,
                short_message: part.clone(),
                receipted_id: None,
                state: None,
                concat: None,
            };
            let seq = s.next_seq();
            s.send(&Pdu::new(smpp::SUBMIT_SM, seq, smpp::submit_body(&sm)))
                .await?;
            s.in_flight.insert(seq, key);
        }
        Ok(())
    }

    async fn on_pdu(&self, ctx: &Arc<Ctx>, s: &mut Session, p: Pdu) -> Result<(), String> {
        match p.command {
            smpp::SUBMIT_SM_RESP => {
                let Some(key) = s.in_flight.remove(&p.seq) else {
                    return Ok(());
                };
                match p.status {
                    smpp::ESME_ROK => self.acked(ctx, s, key, smpp::resp_id(&p.body)).await?,
                    smpp::ESME_RMSGQFUL | smpp::ESME_RTHROTTLED => {
                        s.retry.push((Instant::now() + Duration::from_secs(5), key));
                    }
                    status => {
                        // Refused for good: the sender is told, the SMS goes.
                        if let Some(o) = s.sms.remove(&key.0) {
                            for i in 0..o.parts.len() {
                                s.known.remove(&(key.0, i));
                            }
                            s.queue.retain(|k| k.0 != key.0);
                            let why = format!("the SMS centre refused it, status {status:#x}");
                            self.gw.refused(ctx, key.0, &o, &why).await?;
                        }
                    }
                }
            }
            smpp::GENERIC_NACK => {
                if let Some(key) = s.in_flight.remove(&p.seq) {
                    s.retry.push((Instant::now() + Duration::from_secs(5), key));
                }
            }
            smpp::ENQUIRE_LINK_RESP => s.enquire_sent = None,
            smpp::ENQUIRE_LINK => s.send(&p.response(smpp::ESME_ROK, Vec::new())).await?,
            smpp::DELIVER_SM => {
                // Answered once handled: a report or message the centre
                // sends again is handled again (receipts are idempotent
                // here; a repeated SMS arrives twice rather than never).
                match smpp::parse_sm(&p.body) {
                    Ok(sm) if sm.esm_class & smpp::ESM_RECEIPT != 0 => {
                        if let (Some(id), Some(state)) = (&sm.receipted_id, &sm.state) {
                            self.gw.report(ctx, id, state).await;
                        }
                        s.send(&p.response(smpp::ESME_ROK, smpp::id_body("")))
                            .await?;
                    }
                    Ok(sm) => {
                        let text = super::text::decode(sm.data_coding, sm.user_data());
                        let ok = match sm.concat {
                            Some(c) => self.gw.incoming_part(ctx, &sm.source, c, &text).await,
                            None => self.gw.incoming(ctx, &sm.source, &text).await,
                        };
                        let status = if ok { smpp::ESME_ROK } else { 0x0000_0008 };
                        s.send(&p.response(status, smpp::id_body(""))).await?;
                    }
                    Err(b) => {
                        tracing::warn!(error = b.0, "a deliver_sm that could not be read");
                        s.send(&p.response(0x0000_0001, smpp::id_body(""))).await?;
                    }
                }
            }
            smpp::UNBIND => {
                let _ = s.send(&p.response(smpp::ESME_ROK, Vec::new())).await;
                return Err("the SMS centre unbound".into());
            }
            c if c & 0x8000_0000 == 0 => {
                // A request we do not serve.
                let nack = Pdu {
                    command: smpp::GENERIC_NACK,
                    status: smpp::ESME_RINVCMDID,
                    seq: p.seq,
                    body: Vec::new(),
                };
                s.send(&nack).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Part `key` was acknowledged with SMS centre id `smsc_id`: durably,
    /// and the SMS leaves the store once every part was.
    async fn acked(
        &self,
        ctx: &Arc<Ctx>,
        s: &mut Session,
        key: PartKey,
        smsc_id: String,
    ) -> Result<(), String> {
        let Some(o) = s.sms.get_mut(&key.0) else {
            return Ok(());
        };
        if let Some(slot) = o.acked.get_mut(key.1) {
            *slot = Some(smsc_id);
        }
        let done = o.acked.iter().all(Option::is_some);
        if !done {
            let doc = serde_json::to_string(&*o).map_err(|e| e.to_string())?;
            return ctx
                .stores
                .sms
                .put_outgoing(key.0, Some(&doc))
                .await
                .map_err(|e| format!("storing an acknowledgement: {e}"));
        }
        let Some(o) = s.sms.remove(&key.0) else {
            return Ok(());
        };
        for i in 0..o.parts.len() {
            s.known.remove(&(key.0, i));
        }
        self.gw.acknowledged(ctx, key.0, &o).await?;
        Ok(())
    }
}

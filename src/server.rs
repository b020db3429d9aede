//! The server: shared context, listeners, start and graceful shutdown.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use xmpp_parsers::stream_error::DefinedCondition as StreamCondition;

use crate::auth::AuthThrottle;
use crate::config::Config;
use crate::modules::Registry;
use crate::net::tls::TlsSetup;
use crate::sessions::Sessions;
use crate::store::Stores;
use crate::xml;

/// Largest element read from a client before it has authenticated
/// (STARTTLS and SASL exchanges are a few KiB at most).
pub const PREAUTH_STANZA_BYTES: usize = 16 * 1024;

/// Everything a connection, the router and the modules share.
pub struct Ctx {
    pub config: Config,
    pub domain: String,
    /// The domain as a JID (the server's own address).
    pub domain_jid: xmpp_parsers::jid::BareJid,
    pub stores: Stores,
    pub sessions: Sessions,
    pub registry: Registry,
    /// Offline-message deliveries in progress.
    pub offline_drains: crate::modules::offline::Drains,
    /// Stream-managed sessions that may be resumed (XEP-0198).
    pub resumable: crate::c2s::sm::Resumable,
    pub tls: TlsSetup,
    /// Federation, unless `[s2s] enabled = false`.
    pub s2s: Option<crate::s2s::S2s>,
    pub throttle: AuthThrottle,
    /// Authorization levels and the choices behind them, cached.
    pub levels: crate::policy::Levels,
    /// Reading limits of an authenticated stream.
    pub limits: xml::Limits,
    /// Reading limits before authentication: nothing a client needs to
    /// send before it has logged in is large.
    pub preauth_limits: xml::Limits,
    shutdown: watch::Receiver<bool>,
    conns: ConnTracker,
    started: std::time::Instant,
}

impl Ctx {
    /// Whether an address with a node part (`has_node`) in `domain` is an
    /// account's address here (bare or full): the one test of "a local
    /// user" for every module.
    pub fn is_account_address(&self, has_node: bool, domain: &str) -> bool {
        has_node && domain == self.domain
    }

    /// A receiver that changes to `true` when the server shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Coarse server clock: whole seconds since start, plus one (so that 0
    /// can mean "never").
    pub fn clock(&self) -> u64 {
        self.started.elapsed().as_secs() + 1
    }

    /// Number of open client connections (negotiating or bound).
    pub fn connection_count(&self) -> usize {
        self.conns.active.load(Ordering::Relaxed)
    }
}

/// Resolves once the server is shutting down.
pub async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// Counts open connections, overall and per IP address.
#[derive(Default)]
struct ConnTracker {
    active: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    idle: Notify,
}

/// Held by each connection task; releases its slot when dropped.
pub struct ConnGuard {
    ctx: Arc<Ctx>,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let t = &self.ctx.conns;
        if let Ok(mut m) = t.per_ip.lock() {
            if let Some(n) = m.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
        if t.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            t.idle.notify_waiters();
        }
    }
}

/// A slot for a connection from `ip`, unless it has `max_connections_per_ip`
/// open already (c2s and s2s alike).
pub(crate) fn admit(ctx: &Arc<Ctx>, ip: IpAddr) -> Option<ConnGuard> {
    let max = ctx.config.limits.max_connections_per_ip;
    let t = &ctx.conns;
    let mut m = t.per_ip.lock().unwrap_or_else(|p| p.into_inner());
    let n = m.entry(ip).or_insert(0);
    if max > 0 && *n >= max {
        return None;
    }
    *n += 1;
    t.active.fetch_add(1, Ordering::AcqRel);
    Some(ConnGuard {
        ctx: ctx.clone(),
        ip,
    })
}

/// A running server.
pub struct ServerHandle {
    pub ctx: Arc<Ctx>,
    /// Bound addresses (useful when the config asked for port 0).
    pub c2s_addrs: Vec<SocketAddr>,
    pub c2s_direct_tls_addrs: Vec<SocketAddr>,
    pub s2s_addrs: Vec<SocketAddr>,
    pub s2s_direct_tls_addrs: Vec<SocketAddr>,
    pub http_addrs: Vec<SocketAddr>,
    shutdown_tx: watch::Sender<bool>,
    accept_tasks: Vec<tokio::task::JoinHandle<()>>,
    admin_task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

impl ServerHandle {
    /// Start serving: open the store, set up TLS, bind every listener.
    pub async fn start(config: Config) -> Result<ServerHandle, StartError> {
        config.validate().map_err(|e| {
            StartError(
                e.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        let stores = Stores::open_sled(&config.data_dir).map_err(|e| StartError(e.0))?;
        let tls = crate::net::tls::setup(&config).map_err(StartError)?;
        let mut c2s = Vec::new();
        for a in config.c2s_addrs() {
            c2s.push(bind(a).await?);
        }
        let mut direct = Vec::new();
        for a in config.c2s_direct_tls_addrs() {
            direct.push(bind(a).await?);
        }
        let mut http = Vec::new();
        for a in config.http_addrs() {
            http.push(bind(a).await?);
        }
        let s2s = if config.s2s.enabled {
            Some(crate::s2s::S2s::new(&config, &tls.identity).map_err(StartError)?)
        } else {
            None
        };
        let mut s2s_plain = Vec::new();
        let mut s2s_direct = Vec::new();
        if s2s.is_some() {
            for a in config.s2s_addrs() {
                s2s_plain.push(bind(a).await?);
            }
            for a in config.s2s_direct_tls_addrs() {
                s2s_direct.push(bind(a).await?);
            }
        }
        let domain_jid = xmpp_parsers::jid::BareJid::new(&config.domain)
            .map_err(|e| StartError(format!("domain: {e}")))?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let ctx = Arc::new(Ctx {
            domain: config.domain.clone(),
            domain_jid,
            limits: xml::Limits::for_stanza_bytes(
                config.limits.max_stanza_bytes,
                config.limits.max_xml_depth,
            ),
            preauth_limits: xml::Limits::for_stanza_bytes(
                config.limits.max_stanza_bytes.min(PREAUTH_STANZA_BYTES),
                config.limits.max_xml_depth,
            ),
            throttle: AuthThrottle::new(
                config.limits.auth_failures_per_ip,
                config.limits.auth_failures_per_account,
            ),
            registry: crate::modules::registry(&config),
            config,
            stores,
            sessions: Sessions::new(),
            offline_drains: Default::default(),
            levels: Default::default(),
            resumable: Default::default(),
            tls,
            s2s,
            shutdown: shutdown_rx,
            conns: ConnTracker::default(),
            started: std::time::Instant::now(),
        });
        let admin_task = crate::admin::serve(ctx.clone())
            .await
            .map_err(|e| StartError(format!("admin socket: {e}")))?;
        let mut handle = ServerHandle {
            c2s_addrs: c2s.iter().filter_map(|l| l.local_addr().ok()).collect(),
            c2s_direct_tls_addrs: direct.iter().filter_map(|l| l.local_addr().ok()).collect(),
            s2s_addrs: s2s_plain
                .iter()
                .filter_map(|l| l.local_addr().ok())
                .collect(),
            s2s_direct_tls_addrs: s2s_direct
                .iter()
                .filter_map(|l| l.local_addr().ok())
                .collect(),
            http_addrs: http.iter().filter_map(|l| l.local_addr().ok()).collect(),
            ctx: ctx.clone(),
            shutdown_tx,
            accept_tasks: Vec::new(),
            admin_task: Some(admin_task),
        };
        for l in c2s {
            handle
                .accept_tasks
                .push(tokio::spawn(accept_loop(ctx.clone(), l, false)));
        }
        for l in direct {
            handle
                .accept_tasks
                .push(tokio::spawn(accept_loop(ctx.clone(), l, true)));
        }
        for (list, direct_tls) in [(s2s_plain, false), (s2s_direct, true)] {
            for l in list {
                handle
                    .accept_tasks
                    .push(tokio::spawn(crate::s2s::accept_loop(
                        ctx.clone(),
                        l,
                        direct_tls,
                    )));
            }
        }
        for l in http {
            handle
                .accept_tasks
                .push(tokio::spawn(crate::http::accept_loop(ctx.clone(), l)));
        }
        handle
            .accept_tasks
            .push(tokio::spawn(sweep_idle(ctx.clone())));
        for s in ctx.registry.services() {
            handle
                .accept_tasks
                .push(tokio::spawn(s.clone().run(ctx.clone())));
        }
        tracing::info!(
            domain = %ctx.domain,
            c2s = ?handle.c2s_addrs,
            c2s_direct_tls = ?handle.c2s_direct_tls_addrs,
            s2s = ?handle.s2s_addrs,
            s2s_direct_tls = ?handle.s2s_direct_tls_addrs,
            http = ?handle.http_addrs,
            cert = %ctx.tls.cert_path.display(),
            "Confab is serving"
        );
        Ok(handle)
    }

    /// Graceful shutdown: stop accepting, end every stream with
    /// `<system-shutdown/>`, wait for the connections (bounded), flush the
    /// store.
    pub async fn shutdown(mut self) {
        tracing::info!("shutting down");
        let mut stopped: Vec<_> = self.accept_tasks.drain(..).collect();
        stopped.extend(self.admin_task.take());
        for t in &stopped {
            t.abort();
        }
        let _ = self.shutdown_tx.send(true);
        // Sessions also get a Close through their mailbox, in case one is
        // busy writing.
        for r in self.ctx.sessions.all() {
            r.mailbox
                .close(StreamCondition::SystemShutdown, "server shutting down");
        }
        let wait = async {
            loop {
                let idle = self.ctx.conns.idle.notified();
                if self.ctx.connection_count() == 0 {
                    break;
                }
                idle.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.ctx.connection_count(),
                "connections still open after 10 s; closing anyway"
            );
        }
        if let Some(s2s) = &self.ctx.s2s {
            // Links end; what they could not send bounces to its local
            // senders that are still connected (errors are not stored
            // offline), before the store's last flush.
            s2s.shutdown().await;
        }
        if let Err(e) = self.ctx.stores.closer.flush().await {
            tracing::error!(error = %e, "final flush failed");
        }
        crate::admin::remove_socket(&self.ctx.config.data_dir);
        // The aborted tasks have dropped their share of the context once
        // they are joined; whatever else still holds it (an admin client's
        // task, a session's last steps) gets a moment. Then the store is
        // closed when this returns, and the data directory can be opened
        // again at once (a restart in the same process).
        for t in stopped {
            let _ = t.await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while Arc::strong_count(&self.ctx) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!("stopped");
    }
}

/// XEP-0199 §4.2 for every session at once: one task, instead of a timer
/// in each of possibly many thousands of idle sessions. A client silent for
/// `limits.idle_timeout_secs` is pinged; silent as long again, its stream
/// ends with `connection-timeout`.
async fn sweep_idle(ctx: Arc<Ctx>) {
    use crate::sessions::Idle;
    let idle = ctx.config.limits.idle_timeout_secs;
    let mut tick = tokio::time::interval(Duration::from_secs((idle / 5).clamp(1, 30)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = ctx.clock();
        let mut ping = Vec::new();
        let mut dead = Vec::new();
        ctx.sessions
            .for_each(|r| match r.mailbox.idle_check(now, idle) {
                Idle::Ping => ping.push((r.full.clone(), r.mailbox.clone())),
                Idle::TimedOut => dead.push(r.mailbox.clone()),
                Idle::Active => {}
            });
        for (full, mailbox) in ping {
            let mut iq = crate::stanza::element(
                "iq",
                xml::ns::CLIENT,
                &[
                    ("type", "get"),
                    ("id", &format!("ping-{}", crate::stanza::random_id(6))),
                    ("from", &ctx.domain),
                    ("to", full.as_str()),
                ],
            );
            iq.append_child(crate::stanza::element("ping", xml::ns::PING, &[]));
            let _ = mailbox.deliver(iq);
        }
        for mailbox in dead {
            mailbox.close(StreamCondition::ConnectionTimeout, "no answer to ping");
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| StartError(format!("cannot listen on {addr}: {e}")))?;
    let _ = sock.set_reuseaddr(true);
    sock.bind(addr)
        .map_err(|e| StartError(format!("cannot listen on {addr}: {e}")))?;
    sock.listen(4096)
        .map_err(|e| StartError(format!("cannot listen on {addr}: {e}")))
}

/// The next connection on `listener` (of `what`, for the log).
pub(crate) async fn accept(listener: &TcpListener, what: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(x) => return x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, what, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn accept_loop(ctx: Arc<Ctx>, listener: TcpListener, direct_tls: bool) {
    loop {
        let (tcp, peer) = accept(&listener, "c2s").await;
        spawn_connection(&ctx, tcp, peer, direct_tls);
    }
}

fn spawn_connection(ctx: &Arc<Ctx>, tcp: TcpStream, peer: SocketAddr, direct_tls: bool) {
    let Some(guard) = admit(ctx, peer.ip()) else {
        tracing::info!(%peer, "too many connections from this address; refused");
        drop(tcp);
        return;
    };
    let ctx = ctx.clone();
    tokio::spawn(async move {
        crate::c2s::serve(ctx, tcp, peer, direct_tls).await;
        drop(guard);
    });
}

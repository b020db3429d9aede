//! The scenarios `connect` (logins, then idle connections) and `chat`
//! (pairs exchanging messages at stepped rates), and what they share with
//! the `mam` scenario (in mam.rs): logins in bulk and session readers that
//! answer stream management's acknowledgement requests.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

use crate::client::{self, Mech, Session, Target};
use crate::targets::{self, Running, PASSWORD};

/// The writing half of a session, shared by its senders and its reader
/// (which acknowledges through it).
pub type Writer = Arc<tokio::sync::Mutex<WriteHalf<TlsStream<TcpStream>>>>;

/// A task aborted when this is dropped.
pub struct Task(pub JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Split a session into its shared writer and a task that reads it: every
/// byte goes to stream management (whose `<r/>` are answered, through the
/// writer, by a second task, so that the reader never waits on a sender)
/// and the unconsumed bytes to `scan`, which returns how many of them it
/// consumed.
pub fn split_session(
    s: Session,
    mut scan: impl FnMut(&[u8]) -> usize + Send + 'static,
) -> (Writer, Task) {
    let (stream, mut buf, mut sm) = s.into_parts();
    let (mut rd, wr) = tokio::io::split(stream);
    let wr: Writer = Arc::new(tokio::sync::Mutex::new(wr));
    let due = Arc::new(Notify::new());
    let ack_h = Arc::new(AtomicU32::new(0));
    let acker = {
        let (wr, due, ack_h) = (wr.clone(), due.clone(), ack_h.clone());
        Task(tokio::spawn(async move {
            loop {
                due.notified().await;
                let a = client::ack(ack_h.load(Ordering::Acquire));
                if wr.lock().await.write_all(a.as_bytes()).await.is_err() {
                    break;
                }
            }
        }))
    };
    let reader = tokio::spawn(async move {
        let _acker = acker;
        let mut chunk = vec![0u8; 32768];
        loop {
            if let Some(h) = sm.as_mut().and_then(client::Sm::take_request) {
                ack_h.store(h, Ordering::Release);
                due.notify_one();
            }
            let used = scan(&buf);
            buf.drain(..used);
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Some(sm) = &mut sm {
                        sm.feed(&chunk[..n]);
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    });
    (wr, Task(reader))
}

/// Source addresses for client connections: 127.0.1.x, so that more than
/// one address's worth of ephemeral ports (~28,000) is available.
pub fn source(i: usize) -> IpAddr {
    IpAddr::from([127, 0, 1, (i % 200) as u8 + 1])
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectResult {
    pub connections: usize,
    pub failed: usize,
    /// Sessions with stream management enabled.
    pub sm_sessions: usize,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub logins_per_sec: f64,
    pub server_cpu_ms_per_login: f64,
    pub server_rss_before_kib: u64,
    pub server_rss_idle_kib: u64,
    pub rss_per_idle_connection_kib: f64,
    pub loadgen_cpu_percent: f64,
}

/// Register accounts in-band (ejabberd), `concurrency` at a time.
pub async fn register_all(t: &Target, n: usize, concurrency: usize) -> Result<(), String> {
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let t = t.clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await;
            client::register(&t, source(i), &targets::user(i), PASSWORD).await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        task.await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("registering {}: {e}", targets::user(i)))?;
    }
    Ok(())
}

/// Log in users `range` with at most `concurrency` logins in flight;
/// each session is handed to `then` as soon as it is logged in.
pub async fn login_many<T: Send + 'static>(
    t: &Target,
    range: std::ops::Range<usize>,
    mech: Mech,
    concurrency: usize,
    presence: bool,
    carbons: bool,
    then: fn(Session) -> T,
) -> Vec<Result<T, String>> {
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(range.len());
    for i in range {
        let t = t.clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await;
            let r = tokio::time::timeout(
                Duration::from_secs(60),
                client::login(
                    &t,
                    source(i),
                    &targets::user(i),
                    PASSWORD,
                    mech,
                    presence,
                    carbons,
                ),
            )
            .await;
            r.unwrap_or_else(|_| Err("login timed out (60 s)".into()))
                .map(then)
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    out
}

/// Wait until the server uses under 10% of a core (bounded to 30 s).
pub async fn wait_quiet(server: &Running) {
    let t0 = Instant::now();
    let mut quiet = 0;
    let mut last = server.cpu_ms();
    while quiet < 2 && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = server.cpu_ms();
        quiet = if now.saturating_sub(last) < 50 {
            quiet + 1
        } else {
            0
        };
        last = now;
    }
}

pub async fn connect(
    server: &Running,
    t: &Target,
    n: usize,
    mech: Mech,
    concurrency: usize,
) -> ConnectResult {
    wait_quiet(server).await;
    let rss_before = server.rss_kib();
    let cpu0 = server.cpu_ms();
    let self0 = targets::proc_cpu_ms("self");
    let t0 = Instant::now();
    // Each session is held by a task that reads it (answering stream
    // management's <r/>: ejabberd closes a connection that leaves one
    // unanswered for a minute).
    let results = login_many(t, 0..n, mech, concurrency, true, false, |s| {
        (s.sm_enabled(), Task(tokio::spawn(s.hold())))
    })
    .await;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = server.cpu_ms().saturating_sub(cpu0);
    let self_cpu = targets::proc_cpu_ms("self").saturating_sub(self0);
    let failed = results.iter().filter(|r| r.is_err()).count();
    let first_error = results.iter().find_map(|r| r.as_ref().err().cloned());
    let ok = n - failed;
    // Let the server settle, then read its memory with every session idle.
    wait_quiet(server).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = server.rss_kib();
    let sm_sessions = results
        .iter()
        .filter(|r| matches!(r, Ok((true, _))))
        .count();
    let sessions: Vec<Task> = results
        .into_iter()
        .filter_map(|r| r.ok().map(|(_, t)| t))
        .collect();
    let r = ConnectResult {
        connections: ok,
        failed,
        sm_sessions,
        first_error,
        seconds: secs,
        logins_per_sec: ok as f64 / secs,
        server_cpu_ms_per_login: cpu as f64 / ok.max(1) as f64,
        server_rss_before_kib: rss_before,
        server_rss_idle_kib: rss_idle,
        rss_per_idle_connection_kib: rss_idle.saturating_sub(rss_before) as f64 / ok.max(1) as f64,
        loadgen_cpu_percent: self_cpu as f64 / 10.0 / secs,
    };
    drop(sessions);
    tokio::time::sleep(Duration::from_secs(2)).await;
    r
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    pub offered_per_sec: u64,
    pub sent: u64,
    pub delivered: u64,
    pub delivered_per_sec: f64,
    pub lost: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub server_cpu_percent: f64,
    pub loadgen_cpu_percent: f64,
    pub sustainable: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ChatResult {
    pub users: usize,
    pub step_secs: u64,
    pub login_failures: usize,
    pub first_error: Option<String>,
    /// Sessions with stream management enabled.
    pub sm_sessions: usize,
    pub steps: Vec<Step>,
    /// Highest offered rate with p99 < 50 ms and nothing lost.
    pub max_sustainable_per_sec: u64,
    /// What the server stored, measured after it stopped (set by the
    /// caller).
    pub storage: Option<Storage>,
}

/// The server's storage directory (see `Running::storage_dir`) before and
/// after a chat run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Storage {
    pub dir: String,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Messages delivered in the run.
    pub messages: u64,
    /// bytes_after / messages.
    pub bytes_per_message: f64,
    /// (bytes_after - bytes_before) / messages.
    pub growth_per_message: f64,
}

impl ChatResult {
    /// Messages delivered over all steps.
    pub fn delivered(&self) -> u64 {
        self.steps.iter().map(|s| s.delivered).sum()
    }
}

/// Per-step counters shared by the readers.
struct StepStats {
    received: Vec<AtomicU64>,
    errors: Vec<AtomicU64>,
    latencies_us: Vec<Mutex<Vec<u32>>>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Scan complete bodies "b:STEP:FROM:T_US" out of `buf`; returns bytes
/// consumed.
/// With `own`, a reader's own messages coming back are deliveries (a
/// room reflects them); without, bounces.
fn scan(buf: &[u8], me: usize, own: bool, epoch: Instant, stats: &StepStats) -> usize {
    let mut consumed = 0;
    let mut at = 0;
    while let Some(i) = find(&buf[at..], b"<body>b:") {
        let start = at + i + 6;
        let Some(len) = find(&buf[start..], b"</body>") else {
            break;
        };
        let body = &buf[start..start + len];
        at = start + len + 7;
        consumed = at;
        let text = String::from_utf8_lossy(body);
        let mut parts = text.split(':').skip(1);
        let (Some(step), Some(from), Some(t)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(step), Ok(from), Ok(t)) = (
            step.parse::<usize>(),
            from.parse::<usize>(),
            t.parse::<u64>(),
        ) else {
            continue;
        };
        if step >= stats.received.len() {
            continue;
        }
        if from == me && !own {
            // Our own message came back: a bounce.
            stats.errors[step].fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let now = epoch.elapsed().as_micros() as u64;
        let lat = now.saturating_sub(t).min(u32::MAX as u64) as u32;
        stats.received[step].fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = stats.latencies_us[step].lock() {
            l.push(lat);
        }
    }
    // Keep a partial body; drop everything before it.
    if consumed == 0 && buf.len() > 65536 {
        // No body in a large buffer: keep only its tail.
        return buf.len() - 1024;
    }
    consumed
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

#[allow(clippy::too_many_arguments)]
pub async fn chat(
    server: &Running,
    t: &Target,
    users: usize,
    mech: Mech,
    concurrency: usize,
    rates: &[u64],
    step_secs: u64,
) -> ChatResult {
    let users = users & !1;
    let results = login_many(t, 0..users, mech, concurrency, true, true, |s| s).await;
    let login_failures = results.iter().filter(|r| r.is_err()).count();
    let first_error = results.iter().find_map(|r| r.as_ref().err().cloned());
    let sm_sessions = results
        .iter()
        .filter(|r| matches!(r, Ok(s) if s.sm_enabled()))
        .count();
    let mut result = ChatResult {
        users,
        step_secs,
        login_failures,
        first_error,
        sm_sessions,
        steps: Vec::new(),
        max_sustainable_per_sec: 0,
        storage: None,
    };
    if login_failures > 0 {
        return result;
    }
    let sessions: Vec<Session> = results.into_iter().filter_map(Result::ok).collect();
    let domain = t.domain.clone();
    let (steps, max) = stepped(server, sessions, rates, step_secs, 1, move |me| {
        (format!("{}@{domain}", targets::user(me ^ 1)), "chat")
    })
    .await;
    result.steps = steps;
    result.max_sustainable_per_sec = max;
    result
}

/// Each of `sessions` sends messages to `addr(me)` (of the type given
/// with it) at `rates` in steps of `step_secs` (the rate is of messages
/// sent by all together), each message delivered `fanout` times (its
/// sender's own copy included when `fanout` > 1: a room reflects it).
/// Steps go up until one is not sustainable: anything lost, p99 over
/// 50 ms, or the load generator behind. The steps and the highest
/// sustainable rate.
pub async fn stepped(
    server: &Running,
    sessions: Vec<Session>,
    rates: &[u64],
    step_secs: u64,
    fanout: u64,
    addr: impl Fn(usize) -> (String, &'static str),
) -> (Vec<Step>, u64) {
    let users = sessions.len();
    let own = fanout > 1;
    let epoch = Instant::now();
    let stats = Arc::new(StepStats {
        received: rates.iter().map(|_| AtomicU64::new(0)).collect(),
        errors: rates.iter().map(|_| AtomicU64::new(0)).collect(),
        latencies_us: rates.iter().map(|_| Mutex::new(Vec::new())).collect(),
    });
    let mut writers = Vec::with_capacity(users);
    let mut readers = Vec::with_capacity(users);
    for (me, s) in sessions.into_iter().enumerate() {
        let stats = stats.clone();
        let (wr, reader) = split_session(s, move |buf| scan(buf, me, own, epoch, &stats));
        writers.push(wr);
        readers.push(reader);
    }
    // Settle: let the server finish what the logins started (presence,
    // carbons, archive preferences) before measuring anything.
    wait_quiet(server).await;

    let mut steps = Vec::new();
    let mut max = 0;
    for (step, &rate) in rates.iter().enumerate() {
        let period = Duration::from_secs_f64(users as f64 / rate as f64);
        let sent = Arc::new(AtomicU64::new(0));
        let cpu0 = server.cpu_ms();
        let self0 = targets::proc_cpu_ms("self");
        let t0 = Instant::now();
        let end = tokio::time::Instant::now() + Duration::from_secs(step_secs);
        let mut senders = Vec::with_capacity(users);
        for (me, w) in writers.iter().enumerate() {
            let w = w.clone();
            let sent = sent.clone();
            let (to, typ) = addr(me);
            // Spread the senders over the period so the rate is smooth.
            let offset = period.mul_f64(me as f64 / users as f64);
            senders.push(tokio::spawn(async move {
                let mut iv = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                loop {
                    iv.tick().await;
                    if tokio::time::Instant::now() >= end {
                        break;
                    }
                    let t_us = epoch.elapsed().as_micros() as u64;
                    let msg = format!(
                        "<message to='{to}' type='{typ}'><body>b:{step}:{me}:{t_us}</body></message>"
                    );
                    let mut w = w.lock().await;
                    if w.write_all(msg.as_bytes()).await.is_err() {
                        break;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for s in senders {
            let _ = s.await;
        }
        let sent = sent.load(Ordering::Relaxed);
        let expected = sent * fanout;
        // Drain: wait for what is still on its way (bounded).
        let drain_end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < drain_end {
            let got = stats.received[step].load(Ordering::Relaxed)
                + stats.errors[step].load(Ordering::Relaxed) * fanout;
            if got >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let wall = t0.elapsed().as_secs_f64();
        let cpu = server.cpu_ms().saturating_sub(cpu0);
        let self_cpu = targets::proc_cpu_ms("self").saturating_sub(self0);
        let delivered = stats.received[step].load(Ordering::Relaxed);
        let errors = stats.errors[step].load(Ordering::Relaxed);
        let mut lat = stats.latencies_us[step]
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default();
        lat.sort_unstable();
        let p99 = percentile(&lat, 0.99);
        let lost = expected.saturating_sub(delivered);
        let st = Step {
            offered_per_sec: rate,
            sent,
            delivered,
            delivered_per_sec: delivered as f64 / step_secs as f64,
            lost,
            errors,
            p50_ms: percentile(&lat, 0.5),
            p99_ms: p99,
            max_ms: lat.last().map(|&m| m as f64 / 1000.0).unwrap_or(0.0),
            server_cpu_percent: cpu as f64 / 10.0 / wall,
            loadgen_cpu_percent: self_cpu as f64 / 10.0 / wall,
            // The offered rate must also have been sent: a load generator
            // that fell behind does not prove the server kept up.
            sustainable: lost == 0 && p99 < 50.0 && sent as f64 >= 0.95 * (rate * step_secs) as f64,
        };
        eprintln!(
            "  {:>6}/s: sent {} delivered {} lost {} p50 {:.1} ms p99 {:.1} ms max {:.1} ms, server CPU {:.0}%, loadgen CPU {:.0}%",
            rate, st.sent, st.delivered, st.lost, st.p50_ms, st.p99_ms, st.max_ms, st.server_cpu_percent, st.loadgen_cpu_percent
        );
        let ok = st.sustainable;
        steps.push(st);
        if ok {
            max = rate;
        } else {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for w in &writers {
        let mut w = w.lock().await;
        let _ = w.write_all(b"</stream:stream>").await;
    }
    drop(readers);
    (steps, max)
}

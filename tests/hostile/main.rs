//! Hostile input against the built `confab` binary, run as its own process
//! so that its memory can be read from /proc: a corpus of bad streams, each
//! on its own connection, while a bystander pair keeps chatting and must see
//! every message, in order, without a stall. Each bad stream must get the
//! right stream or stanza error, and the server's RSS must stay bounded.

#[path = "../c2s/common.rs"]
mod common;
mod crash;
mod review;
mod s2s;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use tokio::io::AsyncWriteExt;

/// The probes run one at a time: each asserts a bystander's latency, which
/// another probe's load on the same two cores would distort.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The negotiation bound the server runs with here.
const NEGOTIATION_SECS: u64 = 2;

struct ProcServer {
    child: Child,
    dir: tempfile::TempDir,
    config: PathBuf,
    addr: SocketAddr,
    /// The s2s listener (each server its own free port).
    s2s_addr: SocketAddr,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl ProcServer {
    fn start() -> ProcServer {
        Self::start_with("", "")
    }

    /// Start with extra `[limits]` keys (TOML lines) and extra tables.
    fn start_with(limits: &str, tables: &str) -> ProcServer {
        Self::start_opts(limits, tables, None, None)
    }

    /// As `start_with`, optionally in an existing directory and with the
    /// server run under `sh -c 'umask U; exec …'`.
    fn start_opts(
        limits: &str,
        tables: &str,
        dir: Option<tempfile::TempDir>,
        umask: Option<&str>,
    ) -> ProcServer {
        let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let port = free_port();
        let tls_port = free_port();
        let s2s_port = free_port();
        let config = dir.path().join("confab.toml");
        std::fs::write(
            &config,
            format!(
                "domain = \"localhost\"\ndata_dir = \"{}\"\n\
                 [listen]\nc2s = [\"127.0.0.1:{port}\"]\nc2s_direct_tls = [\"127.0.0.1:{tls_port}\"]\ns2s = [\"127.0.0.1:{s2s_port}\"]\n\
                 [limits]\nnegotiation_timeout_secs = {NEGOTIATION_SECS}\n{limits}\n\
                 [log]\nlevel = \"warn\"\n{tables}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("confab.log")).unwrap();
        let mut cmd = match umask {
            Some(u) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c")
                    .arg(format!("umask {u}; exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_confab"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_confab")),
        };
        let child = cmd
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let s = ProcServer {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            s2s_addr: format!("127.0.0.1:{s2s_port}").parse().unwrap(),
            config,
            dir,
        };
        let sock = s.dir.path().join("data/confab.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(sock.exists() && std::net::TcpStream::connect(s.addr).is_ok()) {
            assert!(
                Instant::now() < deadline,
                "server did not start: {}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// SIGKILL the server and keep its directory for the next start.
    fn kill_keep_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("confab.log")).unwrap_or_default()
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("data/tls/localhost.crt")
    }

    fn add_user(&self, user: &str, pw: &str) {
        let out = Command::new(env!("CARGO_BIN_EXE_confab"))
            .arg("--config")
            .arg(&self.config)
            .args(["user", "add", &format!("{user}@localhost"), pw])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Create accounts through the admin socket (no process per user).
    async fn add_users(&self, users: &[String], pw: &str) {
        let data = self.dir.path().join("data");
        for u in users {
            let r = confab::admin::send(
                &data,
                &confab::admin::Request::UserAdd {
                    jid: format!("{u}@localhost"),
                    password: pw.into(),
                },
            )
            .await
            .unwrap()
            .expect("the server's admin socket answers");
            assert!(r.ok, "{u}: {:?}", r.error);
        }
    }

    /// CPU time the server process has used, in milliseconds.
    fn cpu_ms(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name: state is field 3; utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|v| v.parse().ok())
            .collect();
        f.iter().sum::<u64>() * 10
    }

    /// Resident memory of the server process, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    async fn connect(&self) -> Client {
        Client::connect(self.addr, self.cert()).await
    }

    async fn tls(&self) -> Client {
        let mut c = self.connect().await;
        c.start_stream().await;
        c.starttls().await;
        c.start_stream().await;
        c
    }

    async fn login(&self, user: &str, resource: &str) -> Client {
        let mut c = self.tls().await;
        c.auth_scram(user, "pw", Hash::Sha256, false).await.unwrap();
        c.start_stream().await;
        c.bind(Some(resource)).await;
        c
    }
}

impl Drop for ProcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two users chatting in the background, counting what arrives and the
/// longest wait for any message.
struct Bystander {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<(u64, u64, Duration)>,
}

impl Bystander {
    async fn start(s: &ProcServer) -> Bystander {
        let mut a = s.login("alice", "a").await;
        let mut b = s.login("bob", "b").await;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let task = tokio::spawn(async move {
            let mut received = 0u64;
            let mut worst = Duration::ZERO;
            let mut n = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                n += 1;
                let t0 = Instant::now();
                // Kept out of the archive: the probes measure the server's
                // memory, and a growing archive fills the database cache.
                a.send_raw(&format!(
                    "<message to='bob@localhost/b' type='chat' id='by{n}'><body>{n}</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>"
                ))
                .await;
                sent2.fetch_add(1, Ordering::Relaxed);
                let want = n.to_string();
                let got = b
                    .element_within(Duration::from_secs(30))
                    .await
                    .expect("bystander message lost");
                assert_eq!(body(&got).as_deref(), Some(want.as_str()), "out of order");
                received += 1;
                worst = worst.max(t0.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (n, received, worst)
        });
        Bystander { stop, sent, task }
    }

    /// Stop and check: nothing lost, nothing stalled.
    async fn finish(self) -> u64 {
        self.finish_within(Duration::from_secs(5)).await
    }

    /// Stop and check: nothing lost, no round trip as long as `bound`
    /// (a stall detector, not a performance goal: that is bench/).
    async fn finish_within(self, bound: Duration) -> u64 {
        // A fast probe may end before the bystander has done much: let it
        // finish a few round trips more, so that "it kept working" is
        // checked whatever the probe's speed on this machine.
        let wanted = self.sent.load(Ordering::Relaxed) + 5;
        let t0 = Instant::now();
        while self.sent.load(Ordering::Relaxed) < wanted
            && t0.elapsed() < Duration::from_secs(30)
            && !self.task.is_finished()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let (sent, received, worst) = self.task.await.unwrap();
        eprintln!("bystander: {sent} round trips, worst {worst:?}");
        assert_eq!(sent, received, "bystander lost messages");
        assert!(
            sent >= wanted,
            "bystander stopped working: {sent} of {wanted}"
        );
        assert!(worst < bound, "bystander stalled for {worst:?}");
        sent
    }
}

/// Send `data` without waiting for the server to read it all: the server
/// may (and should) close the connection long before the end.
async fn blast(c: &mut Client, data: Vec<u8>) {
    let _ = tokio::time::timeout(Duration::from_secs(20), c.send_bytes(&data)).await;
}

async fn expect_error(c: &mut Client, cond: &str, what: &str) {
    let got = c.stream_error_within(Duration::from_secs(20)).await;
    assert_eq!(got.as_deref(), Some(cond), "{what}");
    c.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_corpus_with_a_bystander() {
    let _serial = SERIAL.lock().await;
    init_logging();
    let mut s = ProcServer::start();
    for u in ["alice", "bob", "mallory"] {
        s.add_user(u, "pw");
    }
    let by = Bystander::start(&s).await;
    let baseline = s.rss_kib();
    let mut peak = baseline;
    let mut note = |s: &ProcServer, what: &str| {
        let rss = s.rss_kib();
        peak = peak.max(rss);
        eprintln!("after {what}: RSS {rss} KiB");
    };

    // Truncated XML, then silence: the negotiation bound ends it.
    let mut c = s.connect().await;
    c.send_raw("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'><mess")
        .await;
    expect_error(&mut c, "connection-timeout", "truncated").await;
    // Truncated XML, then the socket closes: nothing to answer, nothing leaks.
    let mut c = s.connect().await;
    c.start_stream().await;
    c.send_raw("<message to='bob@localhost'><bo").await;
    drop(c);
    note(&s, "truncated");

    // DOCTYPE with entity expansion (billion laughs).
    let mut c = s.connect().await;
    let mut lol = String::from("<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>");
    for i in 1..10 {
        lol.push_str(&format!(
            "<!ENTITY lol{i} '{}'>",
            format!(
                "&lol{};",
                if i == 1 {
                    String::new()
                } else {
                    (i - 1).to_string()
                }
            )
            .repeat(10)
        ));
    }
    lol.push_str("]><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>");
    c.send_raw(&lol).await;
    let e = c.stream_error().await;
    assert!(
        matches!(
            e.as_deref(),
            Some("restricted-xml") | Some("not-well-formed")
        ),
        "DOCTYPE: {e:?}"
    );
    // An entity reference inside a stanza.
    let mut c = s.connect().await;
    c.start_stream().await;
    c.send_raw("<message><body>&lol9;</body></message>").await;
    expect_error(&mut c, "restricted-xml", "entity reference").await;
    // A processing instruction.
    let mut c = s.connect().await;
    c.start_stream().await;
    c.send_raw("<?xml-stylesheet href='x'?>").await;
    expect_error(&mut c, "restricted-xml", "processing instruction").await;
    note(&s, "restricted XML");

    // 10,000 levels of nesting, before and after authentication.
    let deep = format!("<message>{}", "<a>".repeat(10_000)).into_bytes();
    let mut c = s.connect().await;
    c.start_stream().await;
    blast(&mut c, deep.clone()).await;
    expect_error(&mut c, "policy-violation", "deep nesting").await;
    let mut c = s.login("mallory", "deep").await;
    blast(&mut c, deep).await;
    expect_error(&mut c, "policy-violation", "deep nesting after login").await;
    note(&s, "deep nesting");

    // A 10 MB attribute value.
    let mut c = s.login("mallory", "attr").await;
    let mut v = b"<message to='".to_vec();
    v.extend(std::iter::repeat_n(b'x', 10 << 20));
    v.extend_from_slice(b"'/>");
    blast(&mut c, v).await;
    expect_error(&mut c, "policy-violation", "10 MB attribute").await;
    note(&s, "10 MB attribute");

    // A 64 MB text node.
    let mut c = s.login("mallory", "text").await;
    let mut v = b"<message to='bob@localhost'><body>".to_vec();
    v.extend(std::iter::repeat_n(b'y', 64 << 20));
    blast(&mut c, v).await;
    expect_error(&mut c, "policy-violation", "64 MB text").await;
    note(&s, "64 MB text");

    // 100,000 attributes.
    let mut c = s.login("mallory", "attrs").await;
    let mut v = String::from("<message ");
    for i in 0..100_000 {
        v.push_str(&format!("a{i}='' "));
    }
    blast(&mut c, v.into_bytes()).await;
    expect_error(&mut c, "policy-violation", "100,000 attributes").await;
    note(&s, "100,000 attributes");

    // Invalid UTF-8.
    let mut c = s.login("mallory", "utf8").await;
    blast(
        &mut c,
        b"<message to='bob@localhost'><body>\xc3\x28\xa0\xa1</body></message>".to_vec(),
    )
    .await;
    expect_error(&mut c, "unsupported-encoding", "invalid UTF-8").await;

    // Stanzas before authentication, before and after TLS.
    let mut c = s.connect().await;
    c.start_stream().await;
    c.send_raw("<message to='bob@localhost'><body>early</body></message>")
        .await;
    expect_error(&mut c, "not-authorized", "stanza before TLS").await;
    let mut c = s.tls().await;
    c.send_raw("<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    expect_error(&mut c, "not-authorized", "stanza before SASL").await;
    // ...and before binding.
    let mut c = s.tls().await;
    c.auth_scram("mallory", "pw", Hash::Sha256, false)
        .await
        .unwrap();
    c.start_stream().await;
    c.send_raw("<message to='bob@localhost'><body>unbound</body></message>")
        .await;
    expect_error(&mut c, "not-authorized", "stanza before bind").await;
    note(&s, "early stanzas");

    // SASL garbage: bad base64, garbage SCRAM, an over-long payload, an
    // unknown mechanism. Each a SASL failure; the stream goes on.
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut c = s.tls().await;
    let cases: Vec<(String, &str)> = vec![
        (
            format!("<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>!!!not base64!!!</auth>"),
            "incorrect-encoding",
        ),
        (
            format!(
                "<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>{}</auth>",
                b64.encode("garbage,,,=")
            ),
            "malformed-request",
        ),
        (
            format!(
                "<auth xmlns='{SASL}' mechanism='PLAIN'>{}</auth>",
                b64.encode(vec![b'a'; 10_000])
            ),
            "malformed-request",
        ),
        (
            format!(
                "<auth xmlns='{SASL}' mechanism='X-EVIL'>{}</auth>",
                b64.encode("x")
            ),
            "invalid-mechanism",
        ),
    ];
    for (auth, cond) in cases {
        c.send_raw(&auth).await;
        let f = c.element().await;
        assert_eq!(f.name(), "failure", "{auth:.60}");
        assert!(f.has_child(cond, SASL), "{auth:.60}: {}", String::from(&f));
    }
    // A response out of turn is not a SASL step: the stream ends.
    c.send_raw(&format!(
        "<response xmlns='{SASL}'>{}</response>",
        b64.encode("x")
    ))
    .await;
    assert!(c.stream_error().await.is_some(), "response out of turn");
    // Before authentication nothing large is needed: a 100 KB SASL payload
    // is over the pre-authentication element limit (16 KiB).
    let mut c = s.tls().await;
    blast(
        &mut c,
        format!(
            "<auth xmlns='{SASL}' mechanism='PLAIN'>{}</auth>",
            b64.encode(vec![b'a'; 100_000])
        )
        .into_bytes(),
    )
    .await;
    expect_error(&mut c, "policy-violation", "100 KB SASL payload").await;
    note(&s, "SASL garbage");

    // A roster set with 100,000 items is far over the stanza limit.
    let mut c = s.login("mallory", "roster").await;
    let mut v = String::from("<iq type='set' id='r'><query xmlns='jabber:iq:roster'>");
    for i in 0..100_000 {
        v.push_str(&format!("<item jid='u{i}@example.org'/>"));
    }
    v.push_str("</query></iq>");
    blast(&mut c, v.into_bytes()).await;
    expect_error(&mut c, "policy-violation", "100,000 roster items").await;
    note(&s, "roster flood");

    // A presence flood (directed presence to 20,000 different addresses):
    // reading from the flooder is rate-limited, so it slows down; its
    // session stays intact, its memory bounded, and nobody else notices.
    let mut c = s.login("mallory", "flood").await;
    let mut flood = String::new();
    for i in 0..20_000 {
        flood.push_str(&format!(
            "<presence to='nobody{i}@localhost'><status>flood</status></presence>"
        ));
    }
    blast(&mut c, flood.into_bytes()).await;
    let r = c
        .iq("get", Some(DOMAIN), "<ping xmlns='urn:xmpp:ping'/>")
        .await;
    assert_eq!(
        r.attr("type"),
        Some("result"),
        "the flooder's session is intact"
    );
    note(&s, "presence flood");

    // 2,000 connections open a stream and never finish negotiating: each
    // ends with connection-timeout within the configured bound, and the
    // memory comes back.
    let before = s.rss_kib();
    let started = Instant::now();
    let mut conns = Vec::new();
    for i in 0..2000u32 {
        // From several addresses: one address may hold at most
        // `limits.max_connections_per_ip` (1024) connections.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::from(([127, 0, 3, (i % 8 + 1) as u8], 0)))
            .unwrap();
        let mut tcp = sock.connect(s.addr).await.unwrap();
        tcp.write_all(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")
            .await
            .unwrap();
        conns.push(tcp);
    }
    let opened = started.elapsed();
    note(&s, "2,000 stalled connections");
    let mut timed_out = 0;
    let reads = conns.into_iter().map(|mut tcp| async move {
        use tokio::io::AsyncReadExt;
        let mut all = Vec::new();
        let r = tokio::time::timeout(
            Duration::from_secs(NEGOTIATION_SECS + 20),
            tcp.read_to_end(&mut all),
        )
        .await;
        r.is_ok() && String::from_utf8_lossy(&all).contains("<connection-timeout")
    });
    for ok in futures_join_all(reads).await {
        if ok {
            timed_out += 1;
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(
        timed_out, 2000,
        "every stalled connection ends with connection-timeout"
    );
    assert!(
        elapsed < opened + Duration::from_secs(NEGOTIATION_SECS + 5),
        "closed within the bound: {elapsed:?} (opening took {opened:?})"
    );
    // The allocator gives freed memory back after a decay period (about
    // ten seconds for jemalloc); wait for that, up to a bound.
    let mut after = s.rss_kib();
    for _ in 0..30 {
        if after < before + 3 * 1024 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        after = s.rss_kib();
    }
    eprintln!("stalled connections: RSS before {before} KiB, peak {peak} KiB, after {after} KiB");

    let sent = by.finish().await;
    eprintln!("bystander exchanged {sent} messages; RSS baseline {baseline} KiB, peak {peak} KiB");
    assert!(s.alive(), "the server survived");
    // Generous ceilings: nothing above grew the server by the size of what
    // was sent (64 MB, 10 MB ...), and the stalled connections' memory is
    // given back.
    assert!(
        peak < baseline + 96 * 1024,
        "peak RSS {peak} KiB vs baseline {baseline} KiB"
    );
    assert!(
        // They held ~7-10 MB at their peak; it must come back.
        after < before + 3 * 1024,
        "RSS after the stalled connections: {after} KiB vs {before} KiB before (peak {peak} KiB)"
    );
}

/// Await all futures concurrently (a tiny join_all without a dependency).
async fn futures_join_all<F: std::future::Future<Output = bool> + Send + 'static>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<bool> {
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap_or(false));
    }
    out
}

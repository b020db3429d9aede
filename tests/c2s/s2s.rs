//! Federation between two Confab instances in-process (real TLS, real
//! sockets, real dialback and SASL EXTERNAL), and peers that misbehave:
//! a spoofed `from`, a forged dialback key, stanzas before authentication,
//! a peer that drops the connection or never answers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use confab::config::Config;
use confab::xml::{Frame, Limits, StreamReader};
use minidom::Element;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

const PW: &str = "s2s-pw-1";
const RECEIPTS: &str = "urn:xmpp:receipts";
const MARKERS: &str = "urn:xmpp:chat-markers:0";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test CA and certificates it issued.
struct Ca {
    dir: tempfile::TempDir,
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Confab test CA");
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), cert.pem()).unwrap();
        Ca { dir, params, key }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A certificate for `names` (the first names the files): (cert, key).
    fn issue(&self, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer).unwrap();
        let c = self.dir.path().join(format!("{}.crt", names[0]));
        let k = self.dir.path().join(format!("{}.key", names[0]));
        // Leaf then CA, as servers are usually configured (and so the test
        // client, which trusts what is in this file, trusts the CA).
        let ca_pem = std::fs::read_to_string(self.ca_file()).unwrap();
        std::fs::write(&c, cert.pem() + &ca_pem).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// A server for `domain` with its s2s listener on `port` and the other
/// test servers' addresses in `[s2s.hosts]`.
async fn server(
    domain: &str,
    port: u16,
    hosts: &[(&str, u16)],
    f: impl FnOnce(&mut Config),
) -> TestServer {
    let domain = domain.to_string();
    let hosts: Vec<(String, u16)> = hosts.iter().map(|(d, p)| (d.to_string(), *p)).collect();
    TestServer::start_with(move |c| {
        c.domain = domain;
        c.listen.s2s = vec![format!("127.0.0.1:{port}")];
        c.s2s.connect_timeout_s = 5;
        for (d, p) in hosts {
            c.s2s.hosts.insert(d, format!("127.0.0.1:{p}"));
        }
        f(c);
    })
    .await
}

fn rows(s: &TestServer) -> Vec<confab::s2s::StreamRow> {
    s.handle().ctx.s2s.as_ref().unwrap().list()
}

/// Wait until `s` lists an authenticated stream with `remote` in
/// `direction`, and return how it authenticated.
async fn auth_of(s: &TestServer, remote: &str, direction: &str) -> String {
    for _ in 0..100 {
        if let Some(r) = rows(s)
            .into_iter()
            .find(|r| r.remote == remote && r.direction == direction && r.auth != "none")
        {
            assert!(r.tls.is_some(), "{r:?} without TLS");
            return r.auth;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {direction} stream with {remote}: {:?}", rows(s));
}

fn chat(to: &str, id: &str, body: &str) -> String {
    format!("<message to='{to}' id='{id}' type='chat'><body>{body}</body></message>")
}

/// Messages both ways, to bare and full JIDs; a marker stays home, a
/// receipt crosses.
async fn converse(a: &TestServer, b: &TestServer) {
    let (ad, bd) = (a.config.domain.clone(), b.config.domain.clone());
    let mut alice = a.online("alice", PW, "phone").await;
    let mut bob = b.online("bob", PW, "desk").await;
    let (alice_bare, bob_bare) = (format!("alice@{ad}"), format!("bob@{bd}"));
    alice.send_raw(&chat(&bob_bare, "m1", "hello bob")).await;
    let got = bob.expect_where(|e| is_msg_from(e, &alice_bare)).await;
    assert_eq!(body(&got).as_deref(), Some("hello bob"));
    assert_eq!(got.attr("from"), Some(alice.jid.as_str()));
    // Archived for bob on his side, with bob's stanza-id.
    assert!(got
        .children()
        .any(|c| c.is("stanza-id", SID) && c.attr("by") == Some(bob_bare.as_str())));
    bob.send_raw(&chat(&alice.jid, "m2", "hello alice")).await;
    let got = alice.expect_where(|e| is_msg_from(e, &bob_bare)).await;
    assert_eq!(body(&got).as_deref(), Some("hello alice"));

    // A displayed marker does not cross; a receipt does.
    alice
        .send_raw(&format!(
            "<message to='{}' id='d1'><displayed xmlns='{MARKERS}' id='m2'/></message>",
            bob.jid
        ))
        .await;
    alice
        .send_raw(&format!(
            "<message to='{}' id='r1'><received xmlns='{RECEIPTS}' id='m2'/></message>",
            bob.jid
        ))
        .await;
    let got = bob
        .expect_where(|e| is_msg_from(e, &alice_bare) && e.attr("id") != Some("m1"))
        .await;
    assert_eq!(got.attr("id"), Some("r1"), "{}", String::from(&got));
    bob.expect_none_within(Duration::from_millis(500), |e| e.attr("id") == Some("d1"))
        .await;
    alice.close().await;
    bob.close().await;
}

async fn two_servers(f: impl Fn(&str, &mut Config) + Clone) -> (TestServer, TestServer) {
    let (pa, pb) = (free_port(), free_port());
    let fa = f.clone();
    let a = server("a.test", pa, &[("b.test", pb)], move |c| fa("a.test", c)).await;
    let b = server("b.test", pb, &[("a.test", pa)], move |c| f("b.test", c)).await;
    for s in [&a, &b] {
        s.add_user("alice", PW).await;
        s.add_user("bob", PW).await;
    }
    (a, b)
}

#[tokio::test]
async fn dialback_between_two_servers_and_a_forged_key() {
    // Self-signed certificates (generated into each data dir): dialback,
    // allowed for the other domain only. a.test neither offers nor asks
    // for bidirectional streams, so there is one stream each way.
    let (a, mut b) = two_servers(|me, c| {
        let other = if me == "a.test" { "b.test" } else { "a.test" };
        c.s2s.insecure_domains = vec![other.into()];
        if me == "a.test" {
            c.s2s.bidi = false;
        }
    })
    .await;
    converse(&a, &b).await;
    assert_eq!(auth_of(&a, "b.test", "out").await, "dialback");
    assert_eq!(auth_of(&a, "b.test", "in").await, "dialback");
    assert_eq!(auth_of(&b, "a.test", "out").await, "dialback");
    assert!(rows(&a).iter().all(|r| !r.bidi), "{:?}", rows(&a));

    // Someone claiming to be b.test with a key b.test never gave: b.test
    // says it is not its key, and the stream ends.
    let mut p = RawPeer::connect(a.handle().s2s_addrs[0], "b.test", "a.test", None).await;
    p.starttls("a.test").await;
    p.open("b.test", "a.test").await;
    p.send("<db:result from='b.test' to='a.test'>0123456789abcdef</db:result>")
        .await;
    let r = p.element().await;
    assert_eq!(r.name(), "result", "{}", String::from(&r));
    assert_eq!(r.attr("type"), Some("invalid"));
    assert_eq!(p.stream_error().await.as_deref(), Some("not-authorized"));

    // A peer that goes away mid-stream: what is sent after that bounces
    // once it cannot be reached again.
    let mut alice = a.online("alice", PW, "phone").await;
    b.stop().await;
    alice
        .send_raw(&chat("bob@b.test", "gone1", "are you there"))
        .await;
    let e = alice
        .expect_where(|e| e.attr("id") == Some("gone1") && e.attr("type") == Some("error"))
        .await;
    assert_eq!(
        error_condition(&e).as_deref(),
        Some("remote-server-not-found")
    );
    assert_eq!(body(&e).as_deref(), Some("are you there"));
}

#[tokio::test]
async fn sasl_external_with_a_test_ca() {
    let ca = Arc::new(Ca::new());
    let ca2 = ca.clone();
    let (a, b) = two_servers(move |me, c| {
        let (cert, key) = ca2.issue(&[me]);
        c.tls = Some(confab::config::Tls { cert, key });
        c.s2s.ca_file = Some(ca2.ca_file());
    })
    .await;
    converse(&a, &b).await;
    assert_eq!(auth_of(&a, "b.test", "out").await, "external");
    assert_eq!(auth_of(&b, "a.test", "in").await, "external");
    assert_one_bidi_stream(&a, &b);
}

/// `a` opened the only stream between the two, and `b` answered on it
/// (XEP-0288).
fn assert_one_bidi_stream(a: &TestServer, b: &TestServer) {
    let authenticated = |s: &TestServer| -> Vec<_> {
        rows(s)
            .into_iter()
            .filter(|r| r.auth != "none")
            .map(|r| (r.direction, r.bidi))
            .collect()
    };
    assert_eq!(
        authenticated(a),
        [("out".to_string(), true)],
        "{:?}",
        rows(a)
    );
    assert_eq!(
        authenticated(b),
        [("in".to_string(), true)],
        "{:?}",
        rows(b)
    );
}

#[tokio::test]
async fn a_bidirectional_stream_carries_both_ways_and_hands_on_when_it_ends() {
    let (a, mut b) = two_servers(|me, c| {
        let other = if me == "a.test" { "b.test" } else { "a.test" };
        c.s2s.insecure_domains = vec![other.into()];
    })
    .await;
    converse(&a, &b).await;
    assert_eq!(auth_of(&a, "b.test", "out").await, "dialback");
    assert_eq!(auth_of(&b, "a.test", "in").await, "dialback");
    assert_one_bidi_stream(&a, &b);

    // Subscriptions and presence take the same stream back.
    let mut alice = a.online("alice", PW, "phone").await;
    let mut bob = b.online("bob", PW, "desk").await;
    bob.send_raw("<presence to='alice@a.test' type='subscribe'/>")
        .await;
    let got = alice
        .expect_where(|e| e.name() == "presence" && e.attr("type") == Some("subscribe"))
        .await;
    assert_eq!(got.attr("from"), Some("bob@b.test"));
    assert_one_bidi_stream(&a, &b);

    // The stream goes (a.test restarts): b.test opens its own to reach
    // it again.
    alice.close().await;
    let mut a = a;
    a.restart().await;
    let mut alice = a.online("alice", PW, "phone").await;
    bob.send_raw(&chat("alice@a.test", "back1", "still there?"))
        .await;
    let got = alice.expect_where(|e| e.attr("id") == Some("back1")).await;
    assert_eq!(body(&got).as_deref(), Some("still there?"));
    assert_eq!(auth_of(&b, "a.test", "out").await, "dialback");
    b.stop().await;
}

#[tokio::test]
async fn an_unverifiable_peer_is_refused_by_default() {
    // No CA in common and no insecure_domains: neither trusts the other.
    let (a, _b) = two_servers(|_, _| {}).await;
    let mut alice = a.online("alice", PW, "phone").await;
    alice.send_raw(&chat("bob@b.test", "u1", "hi")).await;
    let e = alice
        .expect_where(|e| e.attr("id") == Some("u1") && e.attr("type") == Some("error"))
        .await;
    assert_eq!(
        error_condition(&e).as_deref(),
        Some("remote-server-not-found")
    );
    assert!(rows(&a).iter().all(|r| r.auth == "none"), "{:?}", rows(&a));
}

#[tokio::test]
async fn spoofed_senders_and_early_stanzas_are_refused() {
    let ca = Ca::new();
    let (cert, key) = ca.issue(&["a.test"]);
    let ca_file = ca.ca_file();
    let a = server("a.test", free_port(), &[], move |c| {
        c.tls = Some(confab::config::Tls { cert, key });
        c.s2s.ca_file = Some(ca_file);
        // Low, so that the flood below is one on any machine.
        c.s2s.bytes_per_sec = 256 * 1024;
        c.listen.s2s_direct_tls = vec!["127.0.0.1:0".into()];
    })
    .await;
    a.add_user("alice", PW).await;
    let mut alice = a.online("alice", PW, "phone").await;
    let addr = a.handle().s2s_addrs[0];
    let peer_id = ca.issue(&["c.test"]);

    // Direct TLS (XEP-0368): ALPN xmpp-server, then the same features as
    // after STARTTLS, SASL EXTERNAL among them for a valid certificate.
    let mut p = RawPeer::connect_raw(a.handle().s2s_direct_tls_addrs[0]).await;
    p.client_cert = Some(peer_id.clone());
    let alpn = p.tls("a.test", Some(b"xmpp-server")).await;
    assert_eq!(alpn.as_deref(), Some(&b"xmpp-server"[..]));
    let features = p.open("c.test", "a.test").await;
    let f = String::from(&features);
    assert!(
        f.contains("EXTERNAL") && f.contains("urn:xmpp:features:dialback"),
        "{f}"
    );
    assert!(!f.contains("starttls"), "{f}");

    // Authenticated as c.test by its certificate, it sends as evil.test.
    let mut p = RawPeer::connect(addr, "c.test", "a.test", Some(&peer_id)).await;
    p.starttls("a.test").await;
    let features = p.open("c.test", "a.test").await;
    assert!(
        String::from(&features).contains("EXTERNAL"),
        "{}",
        String::from(&features)
    );
    let authzid = base64::engine::general_purpose::STANDARD.encode("c.test");
    p.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{authzid}</auth>"
    ))
    .await;
    assert_eq!(p.element().await.name(), "success");
    p.open("c.test", "a.test").await;
    p.send(
        "<message from='x@c.test/r' to='alice@a.test' type='chat'><body>from c</body></message>",
    )
    .await;
    let got = alice.expect_where(|e| is_msg_from(e, "x@c.test")).await;
    assert_eq!(body(&got).as_deref(), Some("from c"));
    p.send(
        "<message from='boss@evil.test' to='alice@a.test' type='chat'><body>spoof</body></message>",
    )
    .await;
    assert_eq!(p.stream_error().await.as_deref(), Some("invalid-from"));
    alice
        .expect_none_within(Duration::from_millis(500), |e| {
            is_msg_from(e, "boss@evil.test")
        })
        .await;

    // Authenticated, then flooding: slowed down, then cut.
    let mut p = RawPeer::connect(addr, "c.test", "a.test", Some(&peer_id)).await;
    p.starttls("a.test").await;
    p.open("c.test", "a.test").await;
    let authzid = base64::engine::general_purpose::STANDARD.encode("c.test");
    p.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{authzid}</auth>"
    ))
    .await;
    assert_eq!(p.element().await.name(), "success");
    p.open("c.test", "a.test").await;
    let Io::Tls(tls) = std::mem::replace(&mut p.io, Io::None) else {
        panic!("no TLS");
    };
    let (mut rd, mut wr) = tokio::io::split(*tls);
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w2 = written.clone();
    let flood = tokio::spawn(async move {
        let chunk = format!(
            "<message from='x@c.test' to='nobody@a.test' type='headline'><body>{}</body></message>",
            "f".repeat(60_000)
        );
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if wr.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
            w2.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
        }
    });
    let mut seen = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(60), async {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
            if seen.windows(16).any(|w| w == b"policy-violation") {
                return true;
            }
        }
    })
    .await;
    flood.abort();
    assert_eq!(
        cut,
        Ok(true),
        "{} bytes written: {}",
        written.load(std::sync::atomic::Ordering::Relaxed),
        String::from_utf8_lossy(&seen)
    );

    // Claiming another name than the certificate's.
    let mut p = RawPeer::connect(addr, "d.test", "a.test", Some(&peer_id)).await;
    p.starttls("a.test").await;
    let features = p.open("d.test", "a.test").await;
    assert!(!String::from(&features).contains("EXTERNAL"));
    let authzid = base64::engine::general_purpose::STANDARD.encode("d.test");
    p.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{authzid}</auth>"
    ))
    .await;
    assert_eq!(p.element().await.name(), "failure");

    // A stanza before any authentication.
    p.send("<message from='x@d.test' to='alice@a.test'><body>early</body></message>")
        .await;
    assert_eq!(p.stream_error().await.as_deref(), Some("not-authorized"));

    // Not well-formed XML ends only that stream.
    let mut p = RawPeer::connect(addr, "c.test", "a.test", None).await;
    p.send("<message><body>x</message>").await;
    assert_eq!(p.stream_error().await.as_deref(), Some("not-well-formed"));

    // A stream to a domain this server does not serve.
    let mut p = RawPeer::connect_raw(addr).await;
    p.send(&header("c.test", "other.test")).await;
    assert!(matches!(p.frame().await, Frame::Header(_)));
    assert_eq!(p.stream_error().await.as_deref(), Some("host-unknown"));

    // Alice noticed none of it.
    alice
        .send_raw("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    alice.expect_where(|e| e.attr("id") == Some("p1")).await;
}

#[tokio::test]
async fn peers_that_drop_or_never_answer_get_their_queue_bounced() {
    // drop.test accepts and closes at once; silent.test never says a word.
    let drop_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (pd, ps) = (
        drop_l.local_addr().unwrap().port(),
        silent_l.local_addr().unwrap().port(),
    );
    tokio::spawn(async move {
        while let Ok((mut s, _)) = drop_l.accept().await {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let held = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = silent_l.accept().await {
            h.lock().await.push(s);
        }
    });
    let a = server(
        "a.test",
        free_port(),
        &[("drop.test", pd), ("silent.test", ps)],
        |c| {
            c.s2s.connect_timeout_s = 2;
            c.s2s.insecure_domains = vec!["drop.test".into(), "silent.test".into()];
        },
    )
    .await;
    a.add_user("alice", PW).await;
    let mut alice = a.online("alice", PW, "phone").await;
    for i in 0..3 {
        alice
            .send_raw(&chat("x@drop.test", &format!("d{i}"), "to drop"))
            .await;
    }
    alice
        .send_raw(&chat("x@silent.test", "s0", "to silent"))
        .await;
    alice
        .send_raw("<iq type='get' id='q1' to='silent.test'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let mut conds = std::collections::BTreeMap::new();
    while conds.len() < 5 {
        let e = alice
            .expect_where(|e| e.attr("type") == Some("error"))
            .await;
        conds.insert(
            e.attr("id").unwrap_or("").to_string(),
            error_condition(&e).unwrap_or_default(),
        );
    }
    for i in 0..3 {
        assert_eq!(
            conds[&format!("d{i}")],
            "remote-server-not-found",
            "{conds:?}"
        );
    }
    assert_eq!(conds["s0"], "remote-server-timeout", "{conds:?}");
    assert_eq!(conds["q1"], "remote-server-timeout", "{conds:?}");
    // Meanwhile the server answers its own users at once.
    alice
        .send_raw("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    alice.expect_where(|e| e.attr("id") == Some("p1")).await;
}

fn header(from: &str, to: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:db='jabber:server:dialback' xmlns:stream='http://etherx.jabber.org/streams' \
         from='{from}' to='{to}' version='1.0'>"
    )
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    None,
}

/// A scripted peer server, for what a real one would never send.
struct RawPeer {
    io: Io,
    reader: StreamReader,
    frames: std::collections::VecDeque<Frame>,
    client_cert: Option<(PathBuf, PathBuf)>,
}

impl RawPeer {
    async fn connect_raw(addr: SocketAddr) -> RawPeer {
        RawPeer {
            io: Io::Plain(TcpStream::connect(addr).await.unwrap()),
            reader: StreamReader::new(Limits::default()),
            frames: Default::default(),
            client_cert: None,
        }
    }

    /// Connected, header sent, header and features read.
    async fn connect(
        addr: SocketAddr,
        from: &str,
        to: &str,
        cert: Option<&(PathBuf, PathBuf)>,
    ) -> RawPeer {
        let mut p = Self::connect_raw(addr).await;
        p.client_cert = cert.cloned();
        p.open(from, to).await;
        p
    }

    /// Send a header; read the answer's header and features.
    async fn open(&mut self, from: &str, to: &str) -> Element {
        self.reader = StreamReader::new(Limits::default());
        self.frames.clear();
        self.send(&header(from, to)).await;
        assert!(matches!(self.frame().await, Frame::Header(_)));
        let f = self.element().await;
        assert_eq!(f.name(), "features", "{}", String::from(&f));
        f
    }

    async fn starttls(&mut self, server: &str) {
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        assert_eq!(self.element().await.name(), "proceed");
        self.tls(server, None).await;
    }

    /// TLS on the connection (after `<proceed/>`, or first of all for
    /// direct TLS); the ALPN protocol the server chose.
    async fn tls(&mut self, server: &str, alpn: Option<&[u8]>) -> Option<Vec<u8>> {
        let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::None) else {
            panic!("TLS twice");
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert));
        let mut cfg = match &self.client_cert {
            Some((c, k)) => b
                .with_client_auth_cert(pem_certs(c), PrivateKeyDer::from_pem_file(k).unwrap())
                .unwrap(),
            None => b.with_no_client_auth(),
        };
        if let Some(a) = alpn {
            cfg.alpn_protocols = vec![a.to_vec()];
        }
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from(server.to_string()).unwrap(), tcp)
            .await
            .unwrap();
        let chosen = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        self.io = Io::Tls(Box::new(tls));
        chosen
    }

    async fn send(&mut self, s: &str) {
        let r = match &mut self.io {
            Io::Plain(t) => t.write_all(s.as_bytes()).await,
            Io::Tls(t) => t.write_all(s.as_bytes()).await,
            Io::None => panic!("no connection"),
        };
        r.unwrap();
    }

    async fn frame(&mut self) -> Frame {
        loop {
            if let Some(f) = self.frames.pop_front() {
                return f;
            }
            let mut buf = [0u8; 8192];
            let n = tokio::time::timeout(WAIT, async {
                match &mut self.io {
                    Io::Plain(t) => t.read(&mut buf).await,
                    Io::Tls(t) => t.read(&mut buf).await,
                    Io::None => panic!("no connection"),
                }
            })
            .await
            .expect("the server said nothing")
            .unwrap_or(0);
            if n == 0 {
                return Frame::Close;
            }
            self.reader.feed(&buf[..n], &mut self.frames).unwrap();
        }
    }

    async fn element(&mut self) -> Element {
        match self.frame().await {
            Frame::Element(e) => e,
            other => panic!("expected an element, got {other:?}"),
        }
    }

    /// The condition of the stream error that ends the stream.
    async fn stream_error(&mut self) -> Option<String> {
        loop {
            match self.frame().await {
                Frame::Element(e) if e.name() == "error" => {
                    return e
                        .children()
                        .find(|c| c.ns() == STREAMS && c.name() != "text")
                        .map(|c| c.name().to_string())
                }
                Frame::Element(_) | Frame::Header(_) => continue,
                Frame::Close => return None,
            }
        }
    }
}

fn pem_certs(p: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(p)
        .unwrap()
        .map(|c| c.unwrap())
        .collect()
}

/// The scripted peer does not check the server's certificate.
#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn remote_contacts_work_like_local_ones() {
    let (a, b) = two_servers(|me, c| {
        let other = if me == "a.test" { "b.test" } else { "a.test" };
        c.s2s.insecure_domains = vec![other.into()];
    })
    .await;
    let mut phone = a.online("alice", PW, "phone").await;
    let mut laptop = a.online("alice", PW, "laptop").await;
    laptop
        .iq("set", None, "<enable xmlns='urn:xmpp:carbons:2'/>")
        .await;

    // Bob is offline: kept for him on his server, with a delay; alice's
    // other device gets the sent carbon.
    phone
        .send_raw(&chat("bob@b.test", "o1", "while you were out"))
        .await;
    let c = laptop
        .expect_where(|e| e.name() == "message" && e.has_child("sent", "urn:xmpp:carbons:2"))
        .await;
    assert!(String::from(&c).contains("while you were out"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut bob = b.login("bob", PW, "desk").await;
    bob.send_raw("<presence/>").await;
    let got = bob.expect_where(|e| e.attr("id") == Some("o1")).await;
    assert_eq!(body(&got).as_deref(), Some("while you were out"));
    assert!(
        got.has_child("delay", "urn:xmpp:delay"),
        "{}",
        String::from(&got)
    );

    // Subscriptions across the link, to both, with presence.
    subscribe(&mut phone, &mut bob, "alice@a.test", "bob@b.test").await;
    subscribe(&mut bob, &mut phone, "bob@b.test", "alice@a.test").await;
    let roster = phone
        .iq("get", None, "<query xmlns='jabber:iq:roster'/>")
        .await;
    let sub = roster
        .get_child("query", "jabber:iq:roster")
        .and_then(|q| q.children().find(|i| i.attr("jid") == Some("bob@b.test")))
        .and_then(|i| i.attr("subscription"));
    assert_eq!(sub, Some("both"), "{}", String::from(&roster));

    // A reply to one device: the other gets the received carbon.
    bob.send_raw(&chat(&phone.jid, "o2", "back now")).await;
    phone.expect_where(|e| e.attr("id") == Some("o2")).await;
    let c = laptop
        .expect_where(|e| e.name() == "message" && e.has_child("received", "urn:xmpp:carbons:2"))
        .await;
    assert!(String::from(&c).contains("back now"));

    // IQs across: the server answers for an account, and a client answers.
    let v = bob
        .iq("get", Some("alice@a.test"), "<vCard xmlns='vcard-temp'/>")
        .await;
    assert_eq!(v.attr("type"), Some("result"), "{}", String::from(&v));
    let p = bob
        .iq("get", Some("a.test"), "<ping xmlns='urn:xmpp:ping'/>")
        .await;
    assert_eq!(p.attr("type"), Some("result"), "{}", String::from(&p));

    // Bob leaves: alice's devices see him go.
    bob.close().await;
    phone
        .expect_where(presence_from("bob@b.test", Some("unavailable")))
        .await;
}

#[tokio::test]
async fn incoming_streams_count_against_the_address_limit() {
    let a = server("a.test", free_port(), &[], |c| {
        c.limits.max_connections_per_ip = 2;
    })
    .await;
    let addr = a.handle().s2s_addrs[0];
    let _one = RawPeer::connect(addr, "c.test", "a.test", None).await;
    let _two = RawPeer::connect(addr, "c.test", "a.test", None).await;
    // The third from the same address is closed at once, unanswered
    // (nothing is sent: a write to the closed socket could fail).
    let mut three = RawPeer::connect_raw(addr).await;
    assert!(matches!(three.frame().await, Frame::Close));
}

#[tokio::test]
async fn another_local_domain_piggybacks_on_an_outgoing_stream() {
    // One stream each way (no bidi), dialback: what rooms.a.test sends to
    // b.test goes on the stream a.test opened, authenticated there by a
    // further <db:result/> (XEP-0220 §2.4) that b.test checks with
    // rooms.a.test's server.
    let (pa, pb) = (free_port(), free_port());
    let insecure = |c: &mut Config| {
        c.s2s.insecure_domains = vec!["a.test".into(), "rooms.a.test".into(), "b.test".into()];
        c.s2s.bidi = false;
    };
    let a = server("a.test", pa, &[("b.test", pb)], insecure).await;
    let b = server(
        "b.test",
        pb,
        &[("a.test", pa), ("rooms.a.test", pa)],
        insecure,
    )
    .await;
    for s in [&a, &b] {
        s.add_user("alice", PW).await;
        s.add_user("bob", PW).await;
    }
    converse(&a, &b).await;
    let mut bob = b.online("bob", PW, "desk").await;
    for id in ["p1", "p2"] {
        bob.send_raw(&format!(
            "<iq type='get' to='rooms.a.test' id='{id}'>\
             <query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
        ))
        .await;
        let got = bob.expect_where(|e| e.attr("id") == Some(id)).await;
        assert_eq!(got.attr("type"), Some("result"), "{}", String::from(&got));
        assert_eq!(got.attr("from"), Some("rooms.a.test"));
    }
    let out: Vec<_> = rows(&a)
        .into_iter()
        .filter(|r| r.direction == "out" && r.remote == "b.test")
        .collect();
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out.iter().all(|r| r.auth == "dialback"), "{out:?}");
    assert_eq!(out[0].stream, out[1].stream, "{out:?}");
    let mut locals: Vec<_> = out.iter().map(|r| r.local.as_str()).collect();
    locals.sort();
    assert_eq!(locals, ["a.test", "rooms.a.test"]);
    // b.test sees both pairs on one incoming stream.
    let incoming: Vec<_> = rows(&b)
        .into_iter()
        .filter(|r| r.direction == "in" && r.auth != "none")
        .collect();
    assert_eq!(incoming.len(), 2, "{incoming:?}");
    assert_eq!(incoming[0].stream, incoming[1].stream, "{incoming:?}");
}

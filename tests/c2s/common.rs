//! The test harness: a Confab server in-process on ephemeral loopback ports
//! with a temporary data directory (real sled, real TLS), and a small XMPP
//! client of our own on real sockets.
//!
//! The client shares only the XML stream reader with the server; its SCRAM
//! and TLS sides are written here from the RFCs, so a server bug is not
//! mirrored by the client.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use confab::config::Config;
use confab::server::ServerHandle;
use confab::xml::{Frame, Limits, StreamReader};
use hmac::{Hmac, Mac};
use minidom::Element;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const DOMAIN: &str = "localhost";
pub const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const CLIENT: &str = "jabber:client";
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// How long a test waits for something the server should send at once.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONFAB_TEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A running server with its data directory.
pub struct TestServer {
    pub handle: Option<ServerHandle>,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestServer {
        init_logging();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().join("data"),
            listen: confab::config::Listen {
                c2s: vec!["127.0.0.1:0".into()],
                c2s_direct_tls: vec!["127.0.0.1:0".into()],
                s2s: vec![],
                s2s_direct_tls: vec![],
                http: vec![],
            },
            ..Config::default()
        };
        f(&mut config);
        let handle = ServerHandle::start(config.clone()).await.unwrap();
        TestServer {
            handle: Some(handle),
            dir,
            config,
        }
    }

    pub fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().unwrap()
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle().c2s_addrs[0]
    }

    pub fn tls_addr(&self) -> SocketAddr {
        self.handle().c2s_direct_tls_addrs[0]
    }

    /// The certificate the server presents (generated into the data dir).
    pub fn cert_path(&self) -> PathBuf {
        self.handle().ctx.tls.cert_path.clone()
    }

    pub async fn add_user(&self, user: &str, password: &str) {
        let ctx = &self.handle().ctx;
        let r = confab::admin::execute(
            &ctx.stores,
            &ctx.domain,
            Some(ctx),
            confab::admin::Request::UserAdd {
                jid: format!("{user}@{}", ctx.domain),
                password: password.into(),
            },
        )
        .await;
        assert!(r.ok, "user add failed: {:?}", r.error);
    }

    pub async fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }

    /// Stop and start again on the same data directory (new ports).
    pub async fn restart(&mut self) {
        self.stop().await;
        let handle = ServerHandle::start(self.config.clone()).await.unwrap();
        self.handle = Some(handle);
    }

    /// Log in `user` with SCRAM-SHA-256 over STARTTLS, bind `resource`,
    /// send initial presence unless `quiet`.
    pub async fn login(&self, user: &str, password: &str, resource: &str) -> Client {
        let mut c = Client::connect(self.addr(), self.cert_path()).await;
        c.domain = self.config.domain.clone();
        self.login_on(c, user, password, resource).await
    }

    /// Negotiate on a connected client: STARTTLS, SCRAM-SHA-256, bind.
    pub async fn login_on(
        &self,
        mut c: Client,
        user: &str,
        password: &str,
        resource: &str,
    ) -> Client {
        c.start_stream().await;
        c.starttls().await;
        c.start_stream().await;
        c.auth_scram(user, password, Hash::Sha256, false)
            .await
            .unwrap_or_else(|e| panic!("login of {user} failed: {e}"));
        c.start_stream().await;
        c.bind(Some(resource)).await;
        c
    }

    /// `login` plus initial presence (and the presence echo it causes).
    pub async fn online(&self, user: &str, password: &str, resource: &str) -> Client {
        let mut c = self.login(user, password, resource).await;
        c.send_raw("<presence/>").await;
        let jid = c.jid.clone();
        c.expect_where(|e| e.name() == "presence" && e.attr("from") == Some(jid.as_str()))
            .await;
        c
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // The handle's tasks die with the test's runtime; nothing to do.
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    Sha1,
    Sha256,
}

impl Hash {
    pub fn mechanism(self, plus: bool) -> String {
        let base = match self {
            Hash::Sha1 => "SCRAM-SHA-1",
            Hash::Sha256 => "SCRAM-SHA-256",
        };
        if plus {
            format!("{base}-PLUS")
        } else {
            base.to_string()
        }
    }

    fn h(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha1 => Sha1::digest(data).to_vec(),
            Hash::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha1 => {
                let mut m = <Hmac<Sha1> as Mac>::new_from_slice(key).unwrap();
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Hash::Sha256 => {
                let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    fn salted(self, password: &str, salt: &[u8], i: u32) -> Vec<u8> {
        match self {
            Hash::Sha1 => {
                let mut out = vec![0; 20];
                pbkdf2::pbkdf2_hmac::<Sha1>(password.as_bytes(), salt, i, &mut out);
                out
            }
            Hash::Sha256 => {
                let mut out = vec![0; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, i, &mut out);
                out
            }
        }
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    None,
}

/// A minimal XMPP client for tests.
pub struct Client {
    io: Io,
    cert: PathBuf,
    reader: StreamReader,
    frames: VecDeque<Frame>,
    /// Elements read but not yet asked for.
    pending: VecDeque<Element>,
    pub features: Option<Element>,
    pub jid: String,
    pub closed: bool,
    next_id: u64,
    /// The domain the client's streams and TLS name (`DOMAIN` unless set).
    pub domain: String,
}

/// The client's TLS configuration: trusts exactly the server's certificate.
fn tls_config(cert: &PathBuf, alpn: Option<&[u8]>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if let Some(a) = alpn {
        cfg.alpn_protocols = vec![a.to_vec()];
    }
    Arc::new(cfg)
}

fn client_limits() -> Limits {
    Limits {
        max_stanza_bytes: 64 << 20,
        max_stanza_memory: 4 << 30,
        max_depth: 1000,
        max_attributes: 1000,
    }
}

impl Client {
    pub async fn connect(addr: SocketAddr, cert: PathBuf) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        Self::over(tcp, cert)
    }

    /// Connect from a chosen loopback source address (127.0.0.0/8), so a
    /// test can play several clients on different addresses.
    pub async fn connect_from(addr: SocketAddr, cert: PathBuf, src: std::net::IpAddr) -> Client {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(src, 0)).unwrap();
        Self::over(sock.connect(addr).await.unwrap(), cert)
    }

    /// Connect with a small receive buffer: a client that stops reading
    /// fills it, and the server's writes to it block, after a few KiB.
    pub async fn connect_small_rcvbuf(addr: SocketAddr, cert: PathBuf) -> Client {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        Self::over(sock.connect(addr).await.unwrap(), cert)
    }

    fn over(tcp: TcpStream, cert: PathBuf) -> Client {
        tcp.set_nodelay(true).unwrap();
        Client {
            io: Io::Plain(tcp),
            cert,
            reader: StreamReader::new(client_limits()),
            frames: VecDeque::new(),
            pending: VecDeque::new(),
            features: None,
            jid: String::new(),
            closed: false,
            next_id: 0,
            domain: DOMAIN.to_string(),
        }
    }

    /// Connect with direct TLS (XEP-0368) offering ALPN `xmpp-client`;
    /// returns the client and the ALPN protocol the server chose.
    pub async fn connect_direct_tls(addr: SocketAddr, cert: PathBuf) -> (Client, Option<Vec<u8>>) {
        let mut c = Client::connect(addr, cert).await;
        let alpn = c.tls_handshake(Some(b"xmpp-client")).await;
        (c, alpn)
    }

    async fn tls_handshake(&mut self, alpn: Option<&[u8]>) -> Option<Vec<u8>> {
        let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::None) else {
            panic!("TLS on a non-plain connection");
        };
        let connector = tokio_rustls::TlsConnector::from(tls_config(&self.cert, alpn));
        let tls = connector
            .connect(ServerName::try_from(self.domain.clone()).unwrap(), tcp)
            .await
            .unwrap();
        let chosen = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        self.io = Io::Tls(Box::new(tls));
        chosen
    }

    pub fn id(&mut self) -> String {
        self.next_id += 1;
        format!("t{}", self.next_id)
    }

    pub async fn send_bytes(&mut self, data: &[u8]) -> std::io::Result<()> {
        match &mut self.io {
            Io::Plain(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Io::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Io::None => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    pub async fn send_raw(&mut self, data: &str) {
        self.send_bytes(data.as_bytes()).await.unwrap();
    }

    pub async fn send(&mut self, el: &Element) {
        let s = String::from(el);
        self.send_raw(&s).await;
    }

    async fn read_some(&mut self) -> std::io::Result<usize> {
        let mut buf = vec![0u8; 65536];
        let n = match &mut self.io {
            Io::Plain(s) => s.read(&mut buf).await?,
            Io::Tls(s) => s.read(&mut buf).await?,
            Io::None => return Err(std::io::ErrorKind::NotConnected.into()),
        };
        if n > 0 {
            self.reader
                .feed(&buf[..n], &mut self.frames)
                .map_err(|e| std::io::Error::other(format!("client parse error: {e}")))?;
        }
        Ok(n)
    }

    /// The next frame, or `None` when the connection closed (or `t` passed).
    pub async fn frame_within(&mut self, t: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            if let Some(f) = self.frames.pop_front() {
                if matches!(f, Frame::Close) {
                    self.closed = true;
                }
                return Some(f);
            }
            match tokio::time::timeout_at(deadline, self.read_some()).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.closed = true;
                    return None;
                }
                Ok(Ok(_)) => continue,
                Err(_) => return None,
            }
        }
    }

    pub async fn frame(&mut self) -> Frame {
        match self.frame_within(WAIT).await {
            Some(f) => f,
            None => panic!("{}: no frame from the server", self.jid),
        }
    }

    /// The next element (a header in between is an error).
    pub async fn element_within(&mut self, t: Duration) -> Option<Element> {
        if let Some(e) = self.pending.pop_front() {
            return Some(e);
        }
        match self.frame_within(t).await? {
            Frame::Element(e) => Some(e),
            Frame::Header(h) => panic!("unexpected stream header {h:?}"),
            Frame::Close => None,
        }
    }

    pub async fn element(&mut self) -> Element {
        match self.element_within(WAIT).await {
            Some(e) => e,
            None => panic!("{}: no element from the server", self.jid),
        }
    }

    /// Wait for an element matching `pred`; others are kept for later.
    pub async fn expect_where(&mut self, pred: impl Fn(&Element) -> bool) -> Element {
        if let Some(pos) = self.pending.iter().position(&pred) {
            return self.pending.remove(pos).unwrap();
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(f) = self.frame_within(left).await else {
                panic!(
                    "{}: expected element not received; got instead: {:#?}",
                    self.jid,
                    seen.iter().map(String::from).collect::<Vec<_>>()
                );
            };
            match f {
                Frame::Element(e) if pred(&e) => {
                    self.pending.extend(seen);
                    return e;
                }
                Frame::Element(e) => seen.push(e),
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Nothing matching `pred` arrives within `t`.
    pub async fn expect_none_within(&mut self, t: Duration, pred: impl Fn(&Element) -> bool) {
        assert!(
            !self.pending.iter().any(&pred),
            "{}: unexpected element already received",
            self.jid
        );
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.frame_within(left).await {
                None => return,
                Some(Frame::Element(e)) => {
                    assert!(
                        !pred(&e),
                        "{}: unexpected element {}",
                        self.jid,
                        String::from(&e)
                    );
                    self.pending.push_back(e);
                }
                Some(_) => return,
            }
        }
    }

    /// Send an IQ and wait for its result or error.
    pub async fn iq(&mut self, typ: &str, to: Option<&str>, payload: &str) -> Element {
        let id = self.id();
        let to = to.map(|t| format!(" to='{t}'")).unwrap_or_default();
        self.send_raw(&format!("<iq type='{typ}' id='{id}'{to}>{payload}</iq>"))
            .await;
        self.expect_where(|e| {
            e.name() == "iq"
                && e.attr("id") == Some(id.as_str())
                && matches!(e.attr("type"), Some("result") | Some("error"))
        })
        .await
    }

    /// Open a stream and read the server's header and features.
    pub async fn start_stream(&mut self) {
        let domain = self.domain.clone();
        self.start_stream_to(&domain).await;
        match self.frame().await {
            Frame::Element(f) if f.name() == "features" => self.features = Some(f),
            other => panic!("expected features, got {other:?}"),
        }
    }

    /// Open a stream to `to` and read the server's header only.
    pub async fn start_stream_to(&mut self, to: &str) {
        self.reader = StreamReader::new(client_limits());
        self.frames.clear();
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{to}' version='1.0' xml:lang='en'>"
        );
        self.send_raw(&header).await;
        match self.frame().await {
            Frame::Header(_) => {}
            other => panic!("expected a stream header, got {other:?}"),
        }
    }

    pub fn feature(&self, name: &str, ns: &str) -> Option<&Element> {
        self.features.as_ref()?.get_child(name, ns)
    }

    pub fn mechanisms(&self) -> Vec<String> {
        self.feature("mechanisms", SASL)
            .map(|m| m.children().map(|c| c.text()).collect())
            .unwrap_or_default()
    }

    pub async fn starttls(&mut self) {
        self.send_raw("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let p = self.element().await;
        assert_eq!(p.name(), "proceed", "{}", String::from(&p));
        self.tls_handshake(None).await;
    }

    pub fn exporter(&self) -> Vec<u8> {
        match &self.io {
            Io::Tls(s) => s
                .get_ref()
                .1
                .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
                .unwrap(),
            _ => panic!("no TLS"),
        }
    }

    /// SASL PLAIN. `Err(condition)` on failure.
    pub async fn auth_plain(&mut self, user: &str, password: &str) -> Result<(), String> {
        let data = B64.encode(format!("\0{user}\0{password}"));
        self.send_raw(&format!(
            "<auth xmlns='{SASL}' mechanism='PLAIN'>{data}</auth>"
        ))
        .await;
        let r = self.element().await;
        self.sasl_outcome(r)
    }

    fn sasl_outcome(&mut self, r: Element) -> Result<(), String> {
        match r.name() {
            "success" => Ok(()),
            "failure" => Err(r
                .children()
                .find(|c| c.name() != "text")
                .map(|c| c.name().to_string())
                .unwrap_or_default()),
            other => panic!("unexpected SASL answer {other}"),
        }
    }

    /// SCRAM (RFC 5802/7677), with tls-exporter channel binding when
    /// `plus`. `Err(condition)` on failure; a wrong server signature panics.
    pub async fn auth_scram(
        &mut self,
        user: &str,
        password: &str,
        hash: Hash,
        plus: bool,
    ) -> Result<(), String> {
        self.auth_scram_cb(user, password, hash, plus, None).await
    }

    /// As `auth_scram`, with the channel-binding data to send overridden.
    pub async fn auth_scram_cb(
        &mut self,
        user: &str,
        password: &str,
        hash: Hash,
        plus: bool,
        cb_override: Option<Vec<u8>>,
    ) -> Result<(), String> {
        let nonce = B64.encode(rand::random::<[u8; 18]>());
        let gs2 = if plus { "p=tls-exporter,," } else { "n,," };
        let first_bare = format!("n={user},r={nonce}");
        let first = format!("{gs2}{first_bare}");
        self.send_raw(&format!(
            "<auth xmlns='{SASL}' mechanism='{}'>{}</auth>",
            hash.mechanism(plus),
            B64.encode(&first)
        ))
        .await;
        let ch = self.element().await;
        if ch.name() != "challenge" {
            return self.sasl_outcome(ch);
        }
        let server_first = String::from_utf8(B64.decode(ch.text().trim()).unwrap()).unwrap();
        let mut snonce = "";
        let mut salt = Vec::new();
        let mut iters = 0u32;
        for a in server_first.split(',') {
            if let Some(v) = a.strip_prefix("r=") {
                snonce = v;
            } else if let Some(v) = a.strip_prefix("s=") {
                salt = B64.decode(v).unwrap();
            } else if let Some(v) = a.strip_prefix("i=") {
                iters = v.parse().unwrap();
            }
        }
        assert!(snonce.starts_with(&nonce), "server nonce must extend ours");
        let mut cbind = gs2.as_bytes().to_vec();
        if plus {
            cbind.extend(cb_override.unwrap_or_else(|| self.exporter()));
        }
        let without_proof = format!("c={},r={snonce}", B64.encode(&cbind));
        let auth_message = format!("{first_bare},{server_first},{without_proof}");
        let salted = hash.salted(password, &salt, iters);
        let client_key = hash.hmac(&salted, b"Client Key");
        let stored_key = hash.h(&client_key);
        let sig = hash.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        let server_key = hash.hmac(&salted, b"Server Key");
        let server_sig = hash.hmac(&server_key, auth_message.as_bytes());
        let fin = format!("{without_proof},p={}", B64.encode(proof));
        self.send_raw(&format!(
            "<response xmlns='{SASL}'>{}</response>",
            B64.encode(fin)
        ))
        .await;
        let r = self.element().await;
        if r.name() == "success" {
            let data = String::from_utf8(B64.decode(r.text().trim()).unwrap()).unwrap();
            assert_eq!(
                data,
                format!("v={}", B64.encode(server_sig)),
                "the server's signature must prove it knows the keys"
            );
        }
        self.sasl_outcome(r)
    }

    /// Bind a resource (or let the server choose); returns the full JID.
    pub async fn bind(&mut self, resource: Option<&str>) -> String {
        let inner = resource
            .map(|r| format!("<resource>{r}</resource>"))
            .unwrap_or_default();
        let r = self
            .iq(
                "set",
                None,
                &format!("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{inner}</bind>"),
            )
            .await;
        assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
        let jid = r
            .get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
            .and_then(|b| b.get_child("jid", "urn:ietf:params:xml:ns:xmpp-bind"))
            .map(|j| j.text())
            .unwrap();
        self.jid = jid.clone();
        jid
    }

    /// Read until the stream ends; returns the stream error condition, if
    /// one was sent, and whether `</stream:stream>` followed.
    pub async fn stream_error(&mut self) -> Option<String> {
        self.stream_error_within(WAIT).await
    }

    pub async fn stream_error_within(&mut self, t: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.frame_within(left).await {
                Some(Frame::Element(e))
                    if e.name() == "error" && e.ns() == "http://etherx.jabber.org/streams" =>
                {
                    return e
                        .children()
                        .find(|c| c.ns() == STREAMS && c.name() != "text")
                        .map(|c| c.name().to_string());
                }
                Some(Frame::Element(_)) | Some(Frame::Header(_)) => continue,
                Some(Frame::Close) | None => return None,
            }
        }
    }

    /// After a stream error: the server closes the stream and the socket.
    pub async fn expect_closed(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "the server did not close the connection");
            match self.frame_within(left).await {
                None => return,
                Some(Frame::Close) => continue,
                Some(_) => continue,
            }
        }
    }

    /// Send `</stream:stream>` and wait for the server's.
    pub async fn close(mut self) {
        let _ = self.send_bytes(b"</stream:stream>").await;
        let _ = tokio::time::timeout(WAIT, async {
            while self.frame_within(WAIT).await.is_some() {}
        })
        .await;
    }

    /// Drop the TCP connection without closing the stream.
    pub fn kill(self) {}

    /// Abort the TCP connection with a reset (RST): what the server has
    /// not yet written can no longer be written.
    pub fn reset(self) {
        let tcp = match &self.io {
            Io::Plain(s) => Some(s),
            Io::Tls(s) => Some(s.get_ref().0),
            Io::None => None,
        };
        if let Some(tcp) = tcp {
            let _ = tcp.set_zero_linger();
        }
    }

    /// Every element that arrives within `t` (the connection may close).
    pub async fn drain_within(&mut self, t: Duration) -> Vec<Element> {
        let mut out: Vec<Element> = self.pending.drain(..).collect();
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.frame_within(left).await {
                Some(Frame::Element(e)) => out.push(e),
                Some(Frame::Header(_)) => {}
                Some(Frame::Close) | None => {
                    if self.closed {
                        return out;
                    }
                }
            }
        }
    }
}

/// Parse a stanza string (with `jabber:client` as default namespace).
pub fn el(s: &str) -> Element {
    let mut r = StreamReader::new(client_limits());
    let mut out = VecDeque::new();
    let doc = format!(
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>{s}"
    );
    r.feed(doc.as_bytes(), &mut out).unwrap();
    out.into_iter()
        .find_map(|f| match f {
            Frame::Element(e) => Some(e),
            _ => None,
        })
        .unwrap()
}

/// A presence of type `typ` from a JID starting with `prefix`.
pub fn presence_from<'a>(prefix: &'a str, typ: Option<&'a str>) -> impl Fn(&Element) -> bool + 'a {
    move |e| {
        e.name() == "presence"
            && e.attr("type") == typ
            && e.attr("from").is_some_and(|f| f.starts_with(prefix))
    }
}

/// `x` asks `y` for presence subscription and `y` approves.
pub async fn subscribe(x: &mut Client, y: &mut Client, xjid: &str, yjid: &str) {
    x.send_raw(&format!("<presence to='{yjid}' type='subscribe'/>"))
        .await;
    y.expect_where(presence_from(xjid, Some("subscribe"))).await;
    y.send_raw(&format!("<presence to='{xjid}' type='subscribed'/>"))
        .await;
    x.expect_where(presence_from(yjid, Some("subscribed")))
        .await;
}

pub fn is_msg_from(e: &Element, from_prefix: &str) -> bool {
    e.name() == "message" && e.attr("from").is_some_and(|f| f.starts_with(from_prefix))
}

pub fn body(e: &Element) -> Option<String> {
    e.get_child("body", CLIENT).map(|b| b.text())
}

pub fn error_condition(e: &Element) -> Option<String> {
    e.get_child("error", CLIENT)?
        .children()
        .find(|c| c.ns() == STANZAS && c.name() != "text")
        .map(|c| c.name().to_string())
}

pub const SM: &str = "urn:xmpp:sm:3";
pub const MAM: &str = "urn:xmpp:mam:2";
pub const SID: &str = "urn:xmpp:sid:0";
pub const RSM: &str = "http://jabber.org/protocol/rsm";

/// A MAM search form with these fields (var, value).
pub fn mam_form(fields: &[(&str, &str)]) -> String {
    let mut x = String::from(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>",
    );
    for (var, value) in fields {
        x.push_str(&format!(
            "<field var='{var}'><value>{value}</value></field>"
        ));
    }
    x.push_str("</x>");
    x
}

/// What a MAM query returned: the result messages (in order) and the IQ
/// answer (result with `<fin/>`, or error).
pub struct MamPage {
    pub results: Vec<Element>,
    pub iq: Element,
}

impl MamPage {
    /// The archive ids of the results, in order.
    pub fn ids(&self) -> Vec<String> {
        self.results
            .iter()
            .filter_map(|m| m.get_child("result", MAM))
            .filter_map(|r| r.attr("id").map(str::to_string))
            .collect()
    }

    /// The bodies of the archived messages, in order.
    pub fn bodies(&self) -> Vec<String> {
        self.results
            .iter()
            .filter_map(|m| m.get_child("result", MAM))
            .filter_map(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
            .filter_map(|f| f.get_child("message", CLIENT))
            .filter_map(body)
            .collect()
    }

    pub fn fin(&self) -> &Element {
        self.iq
            .get_child("fin", MAM)
            .unwrap_or_else(|| panic!("no <fin/>: {}", String::from(&self.iq)))
    }

    pub fn complete(&self) -> bool {
        self.fin().attr("complete") == Some("true")
    }

    pub fn rsm(&self, name: &str) -> Option<String> {
        self.fin()
            .get_child("set", RSM)
            .and_then(|s| s.get_child(name, RSM))
            .map(|e| e.text())
    }

    pub fn count(&self) -> usize {
        self.rsm("count").and_then(|c| c.parse().ok()).unwrap_or(0)
    }
}

impl Client {
    /// Enable stream management; returns `<enabled/>`.
    pub async fn enable_sm(&mut self, resume: bool) -> Element {
        let r = if resume { " resume='true'" } else { "" };
        self.send_raw(&format!("<enable xmlns='urn:xmpp:sm:3'{r}/>"))
            .await;
        self.expect_where(|e| e.ns() == SM && matches!(e.name(), "enabled" | "failed"))
            .await
    }

    /// Run a MAM query (`inner`: the form and RSM set) and collect its
    /// results.
    pub async fn mam(&mut self, inner: &str) -> MamPage {
        self.mam_at(None, inner).await
    }

    /// A MAM query of the archive at `to` (a room's), or of one's own.
    pub async fn mam_at(&mut self, to: Option<&str>, inner: &str) -> MamPage {
        let id = self.id();
        let qid = format!("q{id}");
        let to = to.map(|t| format!(" to='{t}'")).unwrap_or_default();
        self.send_raw(&format!(
            "<iq type='set' id='{id}'{to}><query xmlns='urn:xmpp:mam:2' queryid='{qid}'>{inner}</query></iq>"
        ))
        .await;
        let mut results = Vec::new();
        loop {
            let e = self
                .expect_where(|e| {
                    (e.name() == "iq" && e.attr("id") == Some(id.as_str()))
                        || e.get_child("result", MAM)
                            .is_some_and(|r| r.attr("queryid") == Some(qid.as_str()))
                })
                .await;
            if e.name() == "iq" {
                return MamPage { results, iq: e };
            }
            results.push(e);
        }
    }
}

/// The stanza-id a message carries with `by` = `by`.
pub fn stanza_id(m: &Element, by: &str) -> Option<String> {
    m.children()
        .find(|c| c.is("stanza-id", SID) && c.attr("by") == Some(by))
        .and_then(|c| c.attr("id").map(str::to_string))
}

pub const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";

impl Client {
    /// Initial presence with entity capabilities (XEP-0115) whose features
    /// include `NODE+notify` for each of `notify`, answering the server's
    /// disco#info request for them; the identity's `name` makes the
    /// verification string unique to `name`. Returns once the server has
    /// its answer.
    pub async fn caps_presence(&mut self, name: &str, notify: &[&str]) {
        let mut features: Vec<String> = vec![
            "http://jabber.org/protocol/caps".into(),
            "http://jabber.org/protocol/disco#info".into(),
        ];
        features.extend(notify.iter().map(|n| format!("{n}+notify")));
        features.sort();
        // XEP-0115 §5.1, computed here independently of the server.
        let mut s = format!("client/pc//{name}<");
        for f in &features {
            s.push_str(f);
            s.push('<');
        }
        let ver = B64.encode(<Sha1 as sha1::Digest>::digest(s.as_bytes()));
        let node = "https://confab.test/client";
        self.send_raw(&format!(
            "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
             node='{node}' ver='{ver}'/></presence>"
        ))
        .await;
        let q = self
            .expect_where(|e| {
                e.name() == "iq"
                    && e.attr("type") == Some("get")
                    && e.has_child("query", "http://jabber.org/protocol/disco#info")
            })
            .await;
        let want = format!("{node}#{ver}");
        assert_eq!(
            q.get_child("query", "http://jabber.org/protocol/disco#info")
                .and_then(|x| x.attr("node")),
            Some(want.as_str())
        );
        let feats: String = features
            .iter()
            .map(|f| format!("<feature var='{f}'/>"))
            .collect();
        self.send_raw(&format!(
            "<iq type='result' id='{}' to='{}'><query xmlns='http://jabber.org/protocol/disco#info' \
             node='{want}'><identity category='client' type='pc' name='{name}'/>{feats}</query></iq>",
            q.attr("id").unwrap_or_default(),
            q.attr("from").unwrap_or_default()
        ))
        .await;
        let jid = self.jid.clone();
        self.expect_where(|e| e.name() == "presence" && e.attr("from") == Some(jid.as_str()))
            .await;
    }

    /// Publish `payload` as item `id` of the user's own PEP `node`, with
    /// publish options given as (field, value) pairs.
    pub async fn publish(
        &mut self,
        node: &str,
        id: &str,
        payload: &str,
        options: &[(&str, &str)],
    ) -> Element {
        let opts = if options.is_empty() {
            String::new()
        } else {
            let fields: String = options
                .iter()
                .map(|(k, v)| format!("<field var='{k}'><value>{v}</value></field>"))
                .collect();
            format!(
                "<publish-options><x xmlns='jabber:x:data' type='submit'>\
                 <field var='FORM_TYPE' type='hidden'><value>{PUBSUB}#publish-options</value></field>\
                 {fields}</x></publish-options>"
            )
        };
        self.iq(
            "set",
            None,
            &format!(
                "<pubsub xmlns='{PUBSUB}'><publish node='{node}'><item id='{id}'>{payload}</item>\
                 </publish>{opts}</pubsub>"
            ),
        )
        .await
    }

    /// The items of `owner`'s PEP `node` (own account when `None`): the
    /// IQ answer.
    pub async fn pep_items(&mut self, owner: Option<&str>, node: &str) -> Element {
        self.iq(
            "get",
            owner,
            &format!("<pubsub xmlns='{PUBSUB}'><items node='{node}'/></pubsub>"),
        )
        .await
    }
}

/// The ids of the items in a pubsub items result.
pub fn item_ids(r: &Element) -> Vec<String> {
    r.get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("items", PUBSUB))
        .map(|i| {
            i.children()
                .filter(|c| c.is("item", PUBSUB))
                .filter_map(|c| c.attr("id").map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A PEP notification about `node`, from `from`.
pub fn pep_event<'a>(from: &'a str, node: &'a str) -> impl Fn(&Element) -> bool + 'a {
    move |e| {
        e.name() == "message"
            && e.attr("from") == Some(from)
            && e.get_child("event", PUBSUB_EVENT)
                .and_then(|ev| ev.children().next())
                .and_then(|c| c.attr("node"))
                == Some(node)
    }
}

/// The `<items/>` of a notification.
pub fn event_items(e: &Element) -> &Element {
    e.get_child("event", PUBSUB_EVENT)
        .and_then(|ev| ev.get_child("items", PUBSUB_EVENT))
        .expect("a notification with items")
}

/// Grant (`on`) or revoke `right` to `who` (`user@domain` or `@group`) as
/// an admin does, through the running server's `admin::execute`.
pub async fn grant_right(s: &TestServer, who: &str, right: &str, on: bool) {
    let ctx = s.handle().ctx.clone();
    let r = confab::admin::execute(
        &ctx.stores,
        &ctx.domain,
        Some(&ctx),
        confab::admin::Request::RightSet {
            who: who.into(),
            right: right.into(),
            on,
        },
    )
    .await;
    assert!(r.ok, "{:?}", r.error);
}

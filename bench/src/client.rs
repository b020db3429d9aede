//! A deliberately small XMPP client for load generation: STARTTLS,
//! SCRAM-SHA-1 or PLAIN, bind, stream management (XEP-0198, where the
//! server offers it), presence, carbons, and raw writes.
//!
//! It scans the byte stream for the few markers it needs instead of
//! parsing XML, so that the load generator spends as little CPU as
//! possible per stanza (its own CPU use is reported beside the results).
//! It is not a general client and accepts any server certificate: it only
//! ever talks to servers the benchmark itself started on loopback.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

pub type Error = String;

/// Login mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Mech {
    ScramSha1,
    Plain,
}

/// SCRAM keys derived from a password, cached per (salt, iterations):
/// computing PBKDF2 once per user on the client would make the load
/// generator, not the server, the bottleneck of the login benchmark.
#[derive(Default)]
pub struct KeyCache {
    keys: Mutex<HashMap<SaltAndCount, Arc<Keys>>>,
}

type SaltAndCount = (Vec<u8>, u32);

/// (ClientKey, ServerKey).
pub type Keys = (Vec<u8>, Vec<u8>);

impl KeyCache {
    /// (ClientKey, ServerKey) for `password` with this salt and count.
    pub fn get(&self, password: &str, salt: &[u8], iterations: u32) -> Arc<Keys> {
        let key = (salt.to_vec(), iterations);
        if let Some(k) = self.keys.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return k;
        }
        let mut salted = [0u8; 20];
        pbkdf2::pbkdf2_hmac::<Sha1>(password.as_bytes(), salt, iterations, &mut salted);
        let k = Arc::new((hmac(&salted, b"Client Key"), hmac(&salted, b"Server Key")));
        if let Ok(mut m) = self.keys.lock() {
            m.insert(key, k.clone());
        }
        k
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let Ok(mut m) = <Hmac<Sha1> as Mac>::new_from_slice(key) else {
        return Vec::new();
    };
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// Accepts any certificate: the benchmark talks only to its own servers.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    // The handshake signature is not checked either: that is client-side
    // work the servers' figures should not depend on.
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One TLS client configuration for every connection, without session
/// resumption: each simulated client is a separate device.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    // One key-exchange group, one cipher suite: the cheapest ones every
    // server here supports, so the load generator spends little per login.
    provider
        .kx_groups
        .retain(|g| g.name() == rustls::NamedGroup::X25519);
    provider
        .cipher_suites
        .sort_by_key(|s| !matches!(s.suite(), rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
    let provider = Arc::new(provider);
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
                .with_no_client_auth()
        })
        .unwrap_or_else(|e| panic!("TLS setup: {e}"));
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// What a client needs to know about the server it logs into.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub domain: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub keys: Arc<KeyCache>,
}

pub struct Session {
    pub stream: TlsStream<TcpStream>,
    /// Bytes read and not yet consumed.
    pub buf: Vec<u8>,
    /// Stream management state, when the server offered it and it is
    /// enabled. It has seen `buf[..fed]`.
    sm: Option<Sm>,
    fed: usize,
}

/// The client's side of stream management (XEP-0198): counts the stanzas
/// (top-level `<message>`, `<presence>`, `<iq>`) received since
/// `<enabled/>` and notes the server's `<r/>` requests, so that they can
/// be answered with `<a h='N'/>`.
///
/// Like the rest of this client it does not parse XML: a small state
/// machine over the bytes tracks tags (with quoted attribute values),
/// their depth and the first bytes of their names, which is all it
/// takes to find the elements at stream level.
#[derive(Debug, Clone)]
pub struct Sm {
    /// Stanzas received since `<enabled/>`, mod 2^32.
    h: u32,
    /// Element depth, the stream's own element being 1.
    depth: u32,
    lex: Lex,
    /// The tag being read is an end tag.
    closing: bool,
    /// The last significant byte in the tag being read was `/`.
    slash: bool,
    name: [u8; 8],
    /// Bytes of the name read (more than `name.len()`: too long to matter).
    name_len: usize,
    /// An `<r/>` was read and not yet answered.
    ack_due: bool,
}

/// The acknowledgement of `h` stanzas.
pub fn ack(h: u32) -> String {
    format!("<a xmlns='urn:xmpp:sm:3' h='{h}'/>")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    Text,
    /// Just after `<`.
    Open,
    Name,
    Attrs,
    Quoted(u8),
    /// `<?…?>` or `<!…>`: skipped to its `>`.
    Other,
}

impl Default for Sm {
    fn default() -> Self {
        Sm::new()
    }
}

impl Sm {
    /// The state right after `<enabled/>`: inside the stream, nothing
    /// counted.
    pub fn new() -> Sm {
        Sm {
            h: 0,
            depth: 1,
            lex: Lex::Text,
            closing: false,
            slash: false,
            name: [0; 8],
            name_len: 0,
            ack_due: false,
        }
    }

    /// Stanzas counted so far.
    #[cfg(test)]
    pub fn h(&self) -> u32 {
        self.h
    }

    /// Scan bytes received (in order, each byte once).
    pub fn feed(&mut self, data: &[u8]) {
        for &b in data {
            match self.lex {
                Lex::Text => {
                    if b == b'<' {
                        self.lex = Lex::Open;
                        self.closing = false;
                        self.slash = false;
                        self.name_len = 0;
                    }
                }
                Lex::Open => match b {
                    b'/' => {
                        self.closing = true;
                        self.lex = Lex::Name;
                    }
                    b'?' | b'!' => self.lex = Lex::Other,
                    _ => {
                        self.push_name(b);
                        self.lex = Lex::Name;
                    }
                },
                Lex::Name => match b {
                    b'>' => self.tag_end(),
                    b'/' => {
                        self.slash = true;
                        self.lex = Lex::Attrs;
                    }
                    b' ' | b'\t' | b'\r' | b'\n' => self.lex = Lex::Attrs,
                    _ => self.push_name(b),
                },
                Lex::Attrs => match b {
                    b'>' => self.tag_end(),
                    b'\'' | b'"' => {
                        self.slash = false;
                        self.lex = Lex::Quoted(b);
                    }
                    b'/' => self.slash = true,
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    _ => self.slash = false,
                },
                Lex::Quoted(q) => {
                    if b == q {
                        self.lex = Lex::Attrs;
                    }
                }
                Lex::Other => {
                    if b == b'>' {
                        self.lex = Lex::Text;
                    }
                }
            }
        }
    }

    fn push_name(&mut self, b: u8) {
        if let Some(slot) = self.name.get_mut(self.name_len) {
            *slot = b;
        }
        self.name_len += 1;
    }

    fn tag_end(&mut self) {
        self.lex = Lex::Text;
        if self.closing {
            self.depth = self.depth.saturating_sub(1);
            return;
        }
        if self.depth == 1 {
            let name: &[u8] = if self.name_len <= self.name.len() {
                &self.name[..self.name_len]
            } else {
                &[]
            };
            match name {
                b"message" | b"presence" | b"iq" => self.h = self.h.wrapping_add(1),
                b"r" => self.ack_due = true,
                _ => {}
            }
        }
        if !self.slash {
            self.depth += 1;
        }
    }

    /// The count to acknowledge if an `<r/>` came in since the last call.
    pub fn take_request(&mut self) -> Option<u32> {
        std::mem::take(&mut self.ack_due).then_some(self.h)
    }

    /// The `<a/>` to send if an `<r/>` came in since the last call.
    pub fn take_ack(&mut self) -> Option<String> {
        self.take_request().map(ack)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Text between the end of the start tag `<name …>` and `</name>`.
pub fn element_text(buf: &[u8], name: &str) -> Option<(String, usize)> {
    let open = find(buf, format!("<{name}").as_bytes())?;
    let gt = open + find(&buf[open..], b">")?;
    if buf[gt - 1] == b'/' {
        return Some((String::new(), gt + 1));
    }
    let close_tag = format!("</{name}>");
    let close = gt + find(&buf[gt..], close_tag.as_bytes())?;
    Some((
        String::from_utf8_lossy(&buf[gt + 1..close])
            .trim()
            .to_string(),
        close + close_tag.len(),
    ))
}

async fn read_more<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Result<(), Error> {
    buf.reserve(16384);
    let n = s.read_buf(buf).await.map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err(format!(
            "connection closed by the server after: {}",
            String::from_utf8_lossy(&buf[buf.len().saturating_sub(300)..])
        ));
    }
    if buf.len() > 1 << 20 {
        return Err("unexpectedly large answer".into());
    }
    Ok(())
}

/// Read until `done(buf)` gives the number of bytes to consume; returns
/// them.
async fn read_until<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    what: &str,
    done: impl Fn(&[u8]) -> Option<usize>,
) -> Result<Vec<u8>, Error> {
    loop {
        if let Some(n) = done(buf) {
            return Ok(buf.drain(..n).collect());
        }
        failed(buf, what)?;
        read_more(s, buf).await?;
    }
}

/// A stream error or a SASL failure in `buf` is an error.
fn failed(buf: &[u8], what: &str) -> Result<(), Error> {
    if find(buf, b"stream:error").is_some() || find(buf, b"<failure").is_some() {
        return Err(format!(
            "waiting for {what}: {}",
            String::from_utf8_lossy(&buf[..buf.len().min(400)])
        ));
    }
    Ok(())
}

/// The end of the first `<name …/>` or `<name …>…</name>` in `b`, if
/// complete.
fn element_end(b: &[u8], name: &str) -> Option<usize> {
    let open = find(b, format!("<{name}").as_bytes())?;
    let gt = open + find(&b[open..], b">")?;
    if b[gt - 1] == b'/' {
        return Some(gt + 1);
    }
    let close_tag = format!("</{name}>");
    find(&b[gt..], close_tag.as_bytes()).map(|c| gt + c + close_tag.len())
}

impl Session {
    /// Whether stream management is on for this session.
    pub fn sm_enabled(&self) -> bool {
        self.sm.is_some()
    }

    pub async fn write(&mut self, data: &str) -> Result<(), Error> {
        write(&mut self.stream, data).await
    }

    /// Let stream management see what it has not seen yet, and answer an
    /// `<r/>` among it.
    async fn sm_catch_up(&mut self) -> Result<(), Error> {
        if let Some(sm) = &mut self.sm {
            sm.feed(&self.buf[self.fed..]);
            self.fed = self.buf.len();
            if let Some(a) = sm.take_ack() {
                write(&mut self.stream, &a).await?;
            }
        }
        Ok(())
    }

    /// Read until `done(buf)` gives the number of bytes to consume;
    /// returns them. The server's `<r/>` are answered meanwhile.
    pub async fn read_until(
        &mut self,
        what: &str,
        done: impl Fn(&[u8]) -> Option<usize>,
    ) -> Result<Vec<u8>, Error> {
        loop {
            self.sm_catch_up().await?;
            if let Some(n) = done(&self.buf) {
                self.fed = self.fed.saturating_sub(n);
                return Ok(self.buf.drain(..n).collect());
            }
            failed(&self.buf, what)?;
            read_more(&mut self.stream, &mut self.buf).await?;
        }
    }

    /// The stream, the bytes read and not consumed, and the stream
    /// management state, which has seen all of them (an ack it owes is
    /// in its `take_ack`).
    pub fn into_parts(mut self) -> (TlsStream<TcpStream>, Vec<u8>, Option<Sm>) {
        if let Some(sm) = &mut self.sm {
            sm.feed(&self.buf[self.fed..]);
        }
        (self.stream, self.buf, self.sm)
    }

    /// Keep the session open, reading and discarding what comes and
    /// answering `<r/>`, until the connection ends (or the task running
    /// this is aborted).
    pub async fn hold(self) {
        let (mut stream, _, mut sm) = self.into_parts();
        let mut chunk = vec![0u8; 2048];
        loop {
            if let Some(a) = sm.as_mut().and_then(Sm::take_ack) {
                if write(&mut stream, &a).await.is_err() {
                    return;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if let Some(sm) = &mut sm {
                        sm.feed(&chunk[..n]);
                    }
                }
            }
        }
    }
}

fn header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
    )
}

fn features_end(b: &[u8]) -> Option<usize> {
    find(b, b"</stream:features>").map(|i| i + b"</stream:features>".len())
}

/// The end of the IQ with this id (a result or an error), if complete.
pub fn iq_end(b: &[u8], id: &str) -> Option<usize> {
    for quote in ['\'', '"'] {
        let pat = format!("id={quote}{id}{quote}");
        if let Some(at) = find(b, pat.as_bytes()) {
            let gt = at + find(&b[at..], b">")?;
            if b[gt - 1] == b'/' {
                return Some(gt + 1);
            }
            return find(&b[gt..], b"</iq>").map(|close| gt + close + 5);
        }
    }
    None
}

/// Open a TCP connection from `source` (a loopback address: several spread
/// the connections over more ephemeral ports), then STARTTLS.
async fn connect_tls(t: &Target, source: IpAddr) -> Result<(TlsStream<TcpStream>, Vec<u8>), Error> {
    let sock = if t.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    sock.bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let mut tcp = sock
        .connect(t.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", t.addr))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let mut buf = Vec::new();
    tcp.write_all(header(&t.domain).as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let features = read_until(&mut tcp, &mut buf, "stream features", features_end).await?;
    if find(&features, b"starttls").is_none() {
        return Err("the server offers no STARTTLS".into());
    }
    tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await
        .map_err(|e| format!("write: {e}"))?;
    read_until(&mut tcp, &mut buf, "proceed", |b| {
        find(b, b"<proceed").and_then(|i| find(&b[i..], b">").map(|j| i + j + 1))
    })
    .await?;
    let name = rustls::pki_types::ServerName::try_from(t.domain.clone())
        .map_err(|e| format!("server name: {e}"))?;
    let mut tls = tokio_rustls::TlsConnector::from(t.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    buf.clear();
    tls.write_all(header(&t.domain).as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    read_until(
        &mut tls,
        &mut buf,
        "stream features after TLS",
        features_end,
    )
    .await?;
    Ok((tls, buf))
}

async fn write(s: &mut TlsStream<TcpStream>, data: &str) -> Result<(), Error> {
    s.write_all(data.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))
}

/// SCRAM-SHA-1 up to the server-first-message: returns (salt, iterations,
/// client-first-bare, server-first, nonce).
async fn scram_first(
    s: &mut TlsStream<TcpStream>,
    buf: &mut Vec<u8>,
    user: &str,
) -> Result<(Vec<u8>, u32, String, String, String), Error> {
    let nonce = B64.encode(rand::random::<[u8; 18]>());
    let first_bare = format!("n={user},r={nonce}");
    write(
        s,
        &format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>{}</auth>",
            B64.encode(format!("n,,{first_bare}"))
        ),
    )
    .await?;
    loop {
        if let Some((text, used)) = element_text(buf, "challenge") {
            buf.drain(..used);
            let sf = String::from_utf8(B64.decode(text).map_err(|e| format!("challenge: {e}"))?)
                .map_err(|e| format!("challenge: {e}"))?;
            let mut snonce = String::new();
            let mut salt = Vec::new();
            let mut iters = 0;
            for a in sf.split(',') {
                if let Some(v) = a.strip_prefix("r=") {
                    snonce = v.to_string();
                } else if let Some(v) = a.strip_prefix("s=") {
                    salt = B64.decode(v).map_err(|e| format!("salt: {e}"))?;
                } else if let Some(v) = a.strip_prefix("i=") {
                    iters = v.parse().map_err(|e| format!("iterations: {e}"))?;
                }
            }
            return Ok((salt, iters, first_bare, sf, snonce));
        }
        if find(buf, b"<failure").is_some() {
            return Err(format!("SASL failure: {}", String::from_utf8_lossy(buf)));
        }
        read_more(s, buf).await?;
    }
}

async fn sasl_outcome(s: &mut TlsStream<TcpStream>, buf: &mut Vec<u8>) -> Result<(), Error> {
    loop {
        if let Some(i) = find(buf, b"<success") {
            // <success …/> or <success …>data</success>
            let gt = i + find(&buf[i..], b">").ok_or("partial")?;
            let end = if buf[gt - 1] == b'/' {
                Some(gt + 1)
            } else {
                find(&buf[gt..], b"</success>").map(|j| gt + j + 10)
            };
            if let Some(end) = end {
                buf.drain(..end);
                return Ok(());
            }
        }
        if find(buf, b"<failure").is_some() {
            return Err(format!("SASL failure: {}", String::from_utf8_lossy(buf)));
        }
        read_more(s, buf).await?;
    }
}

/// Log in `user` and bind a resource; with `presence`, send initial
/// presence; with `carbons`, enable XEP-0280 (an error answer is fine).
pub async fn login(
    t: &Target,
    source: IpAddr,
    user: &str,
    password: &str,
    mech: Mech,
    presence: bool,
    carbons: bool,
) -> Result<Session, Error> {
    let (mut s, mut buf) = connect_tls(t, source).await?;
    match mech {
        Mech::Plain => {
            write(
                &mut s,
                &format!(
                    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
                    B64.encode(format!("\0{user}\0{password}"))
                ),
            )
            .await?;
        }
        Mech::ScramSha1 => {
            let (salt, iters, first_bare, sf, snonce) = scram_first(&mut s, &mut buf, user).await?;
            let keys = t.keys.get(password, &salt, iters);
            let without_proof = format!("c=biws,r={snonce}");
            let auth_message = format!("{first_bare},{sf},{without_proof}");
            let stored = Sha1::digest(&keys.0);
            let sig = hmac(&stored, auth_message.as_bytes());
            let proof: Vec<u8> = keys.0.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
            write(
                &mut s,
                &format!(
                    "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
                    B64.encode(format!("{without_proof},p={}", B64.encode(proof)))
                ),
            )
            .await?;
        }
    }
    sasl_outcome(&mut s, &mut buf).await?;
    write(&mut s, &header(&t.domain)).await?;
    let features = read_until(&mut s, &mut buf, "stream features after SASL", features_end).await?;
    let offers_sm = find(&features, b"urn:xmpp:sm:3").is_some();
    write(
        &mut s,
        "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bench</resource></bind></iq>",
    )
    .await?;
    let bound = read_until(&mut s, &mut buf, "bind result", |b| iq_end(b, "bind")).await?;
    if find(&bound, b"error").is_some() {
        return Err(format!("bind failed: {}", String::from_utf8_lossy(&bound)));
    }
    let mut session = Session {
        stream: s,
        buf,
        sm: None,
        fed: 0,
    };
    if offers_sm {
        // Stream management as a client would have it, where offered:
        // the server keeps what it sent until acknowledged and asks for
        // acknowledgements, which every reader in the bench answers.
        session.write("<enable xmlns='urn:xmpp:sm:3'/>").await?;
        let answer = session
            .read_until("stream management enabled", |b| {
                element_end(b, "enabled").or_else(|| element_end(b, "failed"))
            })
            .await?;
        if find(&answer, b"<enabled").is_none() {
            return Err(format!(
                "stream management offered, enabling it failed: {}",
                String::from_utf8_lossy(&answer)
            ));
        }
        // Counting starts with what follows <enabled/>.
        session.sm = Some(Sm::new());
        session.fed = 0;
    }
    if carbons {
        session
            .write("<iq type='set' id='carbons'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
            .await?;
        session
            .read_until("carbons result", |b| iq_end(b, "carbons"))
            .await?;
    }
    if presence {
        session.write("<presence/>").await?;
    }
    Ok(session)
}

/// In-band registration (XEP-0077) of `user`, then the SCRAM salt of the
/// new account is fetched (and the exchange aborted) so that its keys can
/// be derived before the measured logins.
pub async fn register(t: &Target, source: IpAddr, user: &str, password: &str) -> Result<(), Error> {
    let (mut s, mut buf) = connect_tls(t, source).await?;
    write(
        &mut s,
        &format!(
            "<iq type='set' id='reg'><query xmlns='jabber:iq:register'>\
             <username>{user}</username><password>{password}</password></query></iq>"
        ),
    )
    .await?;
    let answer = read_until(&mut s, &mut buf, "registration result", |b| {
        iq_end(b, "reg")
    })
    .await?;
    if find(&answer, b"error").is_some() {
        return Err(format!(
            "registration refused: {}",
            String::from_utf8_lossy(&answer)
        ));
    }
    let (salt, iters, ..) = scram_first(&mut s, &mut buf, user).await?;
    t.keys.get(password, &salt, iters);
    let _ = write(
        &mut s,
        "<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></stream:stream>",
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Sm;

    #[test]
    fn sm_counts_stanzas_at_stream_level_only() {
        let mut sm = Sm::new();
        // A message carrying a forwarded message (carbons, MAM results):
        // one stanza. A presence and an IQ result, self-closing.
        sm.feed(b"<message from='a@b' to='c@d'><result xmlns='urn:xmpp:mam:2' id='x>y'>");
        sm.feed(
            b"<forwarded xmlns='urn:xmpp:forward:0'><message to=\"e\"><body>1 &lt; 2 > 0</body>",
        );
        sm.feed(b"</message></forwarded></result></message><presence/><iq type='result' id='i'/>");
        assert_eq!(sm.h(), 3);
        assert_eq!(sm.take_ack(), None);
        // An <r/> split over two reads, then a stanza with a long name
        // element inside.
        sm.feed(b"<r xmlns='urn:xm");
        sm.feed(b"pp:sm:3'/><message><x-very-long-name/></message>");
        assert_eq!(sm.h(), 4);
        assert_eq!(
            sm.take_ack().as_deref(),
            Some("<a xmlns='urn:xmpp:sm:3' h='4'/>")
        );
        assert_eq!(sm.take_ack(), None);
        // Elements that are not stanzas do not count; the stream's end
        // leaves the stream level.
        sm.feed(b"<a xmlns='urn:xmpp:sm:3' h='2'/><stream:error><x/></stream:error></stream:stream><message/>");
        assert_eq!(sm.h(), 4);
    }
}

//! A deliberately small XMPP client for load generation: STARTTLS,
//! SCRAM-SHA-1 or PLAIN, bind, presence, carbons, and raw writes.
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
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Text between the end of the start tag `<name …>` and `</name>`.
fn element_text(buf: &[u8], name: &str) -> Option<(String, usize)> {
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
        if find(buf, b"stream:error").is_some() || find(buf, b"<failure").is_some() {
            return Err(format!(
                "waiting for {what}: {}",
                String::from_utf8_lossy(&buf[..buf.len().min(400)])
            ));
        }
        read_more(s, buf).await?;
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
    read_until(&mut s, &mut buf, "stream features after SASL", features_end).await?;
    write(
        &mut s,
        "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bench</resource></bind></iq>",
    )
    .await?;
    let bound = read_until(&mut s, &mut buf, "bind result", |b| iq_end(b, "bind")).await?;
    if find(&bound, b"error").is_some() {
        return Err(format!("bind failed: {}", String::from_utf8_lossy(&bound)));
    }
    if carbons {
        write(
            &mut s,
            "<iq type='set' id='carbons'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
        )
        .await?;
        read_until(&mut s, &mut buf, "carbons result", |b| iq_end(b, "carbons")).await?;
    }
    if presence {
        write(&mut s, "<presence/>").await?;
    }
    Ok(Session { stream: s, buf })
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

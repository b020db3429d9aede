//! One XML stream connection: the transport (plain TCP, then TLS), the
//! limited stream reader, a read-rate limiter, and writes.
//!
//! Reading uses a buffer on the stack of a synchronous poll, fed straight to
//! the parser, so an idle connection holds no read buffer at all; the
//! parser's own scratch space is released whenever the peer has been
//! drained at a stanza boundary.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::sasl::ChannelBindings;
use crate::xml::{self, Frame, ReadError, StreamReader};

const READ_CHUNK: usize = 8192;
/// How long one write may take before the peer is considered stuck.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// TLS on a connection this server opened (outgoing s2s).
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Between taking the TCP stream out for the TLS handshake and putting
    /// the TLS stream back.
    Gone,
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::TlsClient(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::TlsClient(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::TlsClient(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::TlsClient(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// Why reading stopped.
#[derive(Debug)]
pub enum ConnError {
    Io(io::Error),
    /// The peer closed the TCP connection.
    Eof,
    /// The peer sent something the stream cannot survive.
    Xml(ReadError),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Io(e) => write!(f, "I/O error: {e}"),
            ConnError::Eof => f.write_str("connection closed by peer"),
            ConnError::Xml(e) => write!(f, "{e}"),
        }
    }
}

/// Token bucket over bytes read.
struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(bytes_per_sec: usize, burst: usize) -> Self {
        RateLimit {
            rate: bytes_per_sec as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    /// How long to wait before reading again.
    fn wait(&mut self) -> Option<Duration> {
        self.refill();
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }

    fn consume(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

/// Seconds in which reads mostly waited on the rate limit, in a row.
struct Throttle {
    second: Instant,
    waited: Duration,
    busy: u32,
}

impl Throttle {
    fn new() -> Throttle {
        Throttle {
            second: Instant::now(),
            waited: Duration::ZERO,
            busy: 0,
        }
    }

    fn roll(&mut self) {
        let s = Duration::from_secs(1);
        let gone = self.second.elapsed();
        if gone < s {
            return;
        }
        // The second that ended was busy when reads waited half of it;
        // any later second that passed was not (nothing waited then).
        self.busy = if self.waited >= s / 2 && gone < 2 * s {
            self.busy + 1
        } else {
            0
        };
        self.waited = Duration::ZERO;
        self.second = if gone < 2 * s {
            self.second + s
        } else {
            Instant::now()
        };
    }

    fn waited(&mut self, d: Duration) {
        self.roll();
        self.waited += d;
    }
}

pub struct XmlConn {
    pub io: Transport,
    pub peer: SocketAddr,
    reader: StreamReader,
    frames: VecDeque<Frame>,
    /// An error found after frames that are still queued.
    pending_error: Option<ReadError>,
    rate: RateLimit,
    /// How much of the last seconds reads waited on the rate limit.
    throttle: Throttle,
}

impl XmlConn {
    /// A connection read with `limits` (until `set_limits`), at a
    /// sustained `bytes_per_sec` with bursts of `burst` bytes.
    pub fn new(
        tcp: TcpStream,
        peer: SocketAddr,
        limits: xml::Limits,
        bytes_per_sec: usize,
        burst: usize,
    ) -> Self {
        let _ = tcp.set_nodelay(true);
        XmlConn {
            io: Transport::Plain(tcp),
            peer,
            reader: StreamReader::new(limits),
            frames: VecDeque::new(),
            pending_error: None,
            rate: RateLimit::new(bytes_per_sec, burst.max(bytes_per_sec)),
            throttle: Throttle::new(),
        }
    }

    /// For how many seconds in a row the peer has been sending faster than
    /// its rate (reads waited on the limiter for most of each second).
    pub fn throttled_for(&mut self) -> Duration {
        self.throttle.roll();
        Duration::from_secs(u64::from(self.throttle.busy))
    }

    /// The limits in force (for the stream features' XEP-0478 limits).
    pub fn limits(&self) -> xml::Limits {
        self.reader.limits()
    }

    /// Read with other limits from the next element on (after SASL).
    pub fn set_limits(&mut self, limits: xml::Limits) {
        self.reader.set_limits(limits);
    }

    /// Charge `bytes` to the read budget, as if they had been read: what a
    /// stanza costs the server beyond its own size (its copies to many
    /// recipients) slows down the sender's next reads, not everyone else.
    pub fn charge(&mut self, bytes: usize) {
        self.rate.consume(bytes);
    }

    /// Start parsing a new stream (after STARTTLS or SASL success).
    pub fn reset_stream(&mut self) {
        let server = self.reader.is_server_stream();
        self.reader = StreamReader::new(self.reader.limits());
        if server {
            self.reader.set_server_stream();
        }
        self.frames.clear();
        self.pending_error = None;
    }

    /// True when nothing beyond the last element has been received: used
    /// before the TLS handshake to refuse injected plaintext.
    pub fn is_drained(&self) -> bool {
        self.frames.is_empty() && self.pending_error.is_none() && self.reader.is_at_boundary()
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.io, Transport::Tls(_) | Transport::TlsClient(_))
    }

    /// Read this connection as a server-to-server stream (`jabber:server`
    /// stanzas come out as `jabber:client`), from now on and after every
    /// stream restart.
    pub fn set_server_stream(&mut self) {
        self.reader.set_server_stream();
    }

    /// TLS handshake as the client, on a connection this server opened.
    pub async fn upgrade_tls_client(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<()> {
        let Transport::Plain(tcp) = std::mem::replace(&mut self.io, Transport::Gone) else {
            return Err(io::Error::other("TLS upgrade on a non-plain connection"));
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = connector.connect(name, tcp).await?;
        self.io = Transport::TlsClient(Box::new(tls));
        self.reset_stream();
        Ok(())
    }

    /// The certificate chain the peer presented in TLS, if any.
    pub fn peer_certificates(&self) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
        let certs = match &self.io {
            Transport::Tls(s) => s.get_ref().1.peer_certificates(),
            Transport::TlsClient(s) => s.get_ref().1.peer_certificates(),
            _ => None,
        }?;
        Some(certs.iter().map(|c| c.clone().into_owned()).collect())
    }

    /// TLS handshake on the current TCP stream.
    pub async fn upgrade_tls(&mut self, config: Arc<rustls::ServerConfig>) -> io::Result<()> {
        let Transport::Plain(tcp) = std::mem::replace(&mut self.io, Transport::Gone) else {
            return Err(io::Error::other("TLS upgrade on a non-plain connection"));
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = acceptor.accept(tcp).await?;
        self.io = Transport::Tls(Box::new(tls));
        self.reset_stream();
        Ok(())
    }

    /// Negotiated TLS version and ALPN protocol, for the log.
    pub fn tls_info(&self) -> Option<(String, Option<String>)> {
        let (version, alpn) = match &self.io {
            Transport::Tls(s) => {
                let c = s.get_ref().1;
                (c.protocol_version(), c.alpn_protocol())
            }
            Transport::TlsClient(s) => {
                let c = s.get_ref().1;
                (c.protocol_version(), c.alpn_protocol())
            }
            _ => return None,
        };
        Some((
            version.map(|v| format!("{v:?}")).unwrap_or_default(),
            alpn.map(|p| String::from_utf8_lossy(p).into_owned()),
        ))
    }

    /// Channel bindings available on this connection. tls-exporter is only
    /// offered on TLS 1.3 (RFC 9266 §3: TLS 1.2 would need the extended
    /// master secret, which rustls does not report).
    pub fn channel_bindings(&self, server_end_point: &[u8]) -> ChannelBindings {
        let Transport::Tls(s) = &self.io else {
            return ChannelBindings::default();
        };
        let c = s.get_ref().1;
        let exporter = if c.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
            c.export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
                .ok()
                .map(|k| k.to_vec())
        } else {
            None
        };
        ChannelBindings {
            tls_exporter: exporter,
            tls_server_end_point: Some(server_end_point.to_vec()),
        }
    }

    /// The next frame from the peer. Cancel-safe: bytes are only taken from
    /// the socket inside a single poll and parsed at once.
    pub async fn read_frame(&mut self) -> Result<Frame, ConnError> {
        loop {
            if let Some(f) = self.frames.pop_front() {
                if self.frames.is_empty() {
                    // Give the queue's memory back: idle sessions keep none.
                    self.frames = VecDeque::new();
                }
                return Ok(f);
            }
            if let Some(e) = self.pending_error.take() {
                return Err(ConnError::Xml(e));
            }
            if let Some(wait) = self.rate.wait() {
                self.throttle.waited(wait);
                // Boxed: a timer exists only while a flood is slowed down,
                // not in the state of every idle session's read.
                Box::pin(tokio::time::sleep(wait)).await;
                continue;
            }
            let n = self.fill().await?;
            if n == 0 {
                return Err(ConnError::Eof);
            }
            self.rate.consume(n);
        }
    }

    /// Read once from the socket and parse what came.
    async fn fill(&mut self) -> Result<usize, ConnError> {
        let io = &mut self.io;
        let reader = &mut self.reader;
        let frames = &mut self.frames;
        let pending_error = &mut self.pending_error;
        std::future::poll_fn(|cx| {
            let mut buf = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(ConnError::Io(e))),
                Poll::Ready(Ok(())) => {
                    let data = rb.filled();
                    if data.is_empty() {
                        return Poll::Ready(Ok(0));
                    }
                    if let Err(e) = reader.feed(data, frames) {
                        *pending_error = Some(e);
                    } else if data.len() < READ_CHUNK && reader.is_at_boundary() {
                        // Drained at a boundary: the peer is likely idle now.
                        reader.release_memory();
                    }
                    Poll::Ready(Ok(data.len()))
                }
            }
        })
        .await
    }

    /// Write bytes and flush them to the socket.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let fut = async {
            self.io.write_all(data).await?;
            self.io.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
        }
    }

    /// Close the transport (TLS close_notify, TCP FIN), bounded in time.
    pub async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.io.shutdown()).await;
    }
}

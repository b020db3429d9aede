//! Outgoing HTTP: one POST of a JSON document to an `http://` or
//! `https://` URL, on a fresh HTTP/1.1 connection, bounded in time and in
//! the size of the answer. HTTPS verifies the server against the system's
//! CA certificates plus an optional PEM file.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The most of an answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// A URL checked once: scheme, host and port, and the path to request.
#[derive(Debug, Clone)]
pub struct Target {
    https: bool,
    host: String,
    port: u16,
    path: String,
    /// The `Host` header.
    authority: String,
}

impl Target {
    /// `url` if it is an absolute `http` or `https` URL with a host.
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("expected an http:// or https:// URL".into()),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or("the URL has no host")?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| {
                a.as_str()
                    .rsplit('@')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_else(|| host.clone());
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        Ok(Target {
            https,
            host,
            port,
            path,
            authority,
        })
    }
}

/// Posts JSON documents.
pub struct Poster {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
}

impl Poster {
    /// Verifying HTTPS servers against the system's CAs plus `ca_file`
    /// (the config key `key` names it in errors).
    pub fn new(
        ca_file: Option<&std::path::Path>,
        key: &str,
        timeout: Duration,
    ) -> Result<Poster, String> {
        let roots = crate::net::tls::ca_roots(ca_file, key)?;
        let config = rustls::ClientConfig::builder_with_provider(crate::net::tls::provider())
            .with_protocol_versions(crate::net::tls::VERSIONS)
            .map_err(|e| format!("{key}: TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Poster {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            timeout,
        })
    }

    /// POST `doc` to `to` with `Authorization: Bearer token`: the status
    /// and (at most 64 KiB of) the answer's body. Errors are transport
    /// errors (no connection, no TLS, no answer in time).
    pub async fn post(
        &self,
        to: &Target,
        token: &str,
        doc: &serde_json::Value,
    ) -> Result<(StatusCode, Bytes), String> {
        tokio::time::timeout(self.timeout, self.exchange(to, token, doc))
            .await
            .map_err(|_| format!("no answer within {} s", self.timeout.as_secs()))?
    }

    async fn exchange(
        &self,
        to: &Target,
        token: &str,
        doc: &serde_json::Value,
    ) -> Result<(StatusCode, Bytes), String> {
        let tcp = TcpStream::connect((to.host.as_str(), to.port))
            .await
            .map_err(|e| format!("connect to {}:{}: {e}", to.host, to.port))?;
        let _ = tcp.set_nodelay(true);
        let mut req = hyper::Request::post(to.path.as_str())
            .body(Full::new(Bytes::from(doc.to_string())))
            .map_err(|e| format!("request: {e}"))?;
        let h = req.headers_mut();
        h.insert(
            HOST,
            HeaderValue::from_str(&to.authority).map_err(|e| format!("host: {e}"))?,
        );
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(USER_AGENT, HeaderValue::from_static("Confab"));
        if !token.is_empty() {
            let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| "the token is not a valid header value".to_string())?;
            v.set_sensitive(true);
            h.insert(AUTHORIZATION, v);
        }
        if to.https {
            let name = rustls::pki_types::ServerName::try_from(to.host.clone())
                .map_err(|e| format!("server name {}: {e}", to.host))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {}: {e}", to.host))?;
            send(tls, req).await
        } else {
            send(tcp, req).await
        }
    }
}

async fn send<S>(io: S, req: hyper::Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("http: {e}"))?;
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("http: {e}"));
    let out = match resp {
        Ok(resp) => {
            let status = resp.status();
            match Limited::new(resp.into_body(), MAX_ANSWER).collect().await {
                Ok(b) => Ok((status, b.to_bytes())),
                // The status is what matters; an answer too long or cut
                // short still says it.
                Err(_) => Ok((status, Bytes::new())),
            }
        }
        Err(e) => Err(e),
    };
    conn.abort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("https://sms.example.net/send?x=1").unwrap();
        assert!(t.https);
        assert_eq!((t.host.as_str(), t.port), ("sms.example.net", 443));
        assert_eq!(t.path, "/send?x=1");
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert!(!t.https);
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 8080, "/")
        );
        assert_eq!(t.authority, "127.0.0.1:8080");
        let t = Target::parse("http://[::1]:81/x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 81));
        for bad in ["ftp://x/", "/relative", "http://", "not a url", ""] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}

//! The HTTP listener (`[listen] http`): one HTTP/1.1 server (hyper) on the
//! server's tokio runtime. Features serve paths through the registry
//! (`Registry::http`, by path prefix); the listener knows none of them.
//! Connections count against `[limits] max_connections_per_ip` with the
//! XMPP ones, headers must arrive within the negotiation timeout, and a
//! shutdown ends every connection gracefully.
//!
//! `client` is the matching outgoing side (a POST to an HTTP or HTTPS
//! URL), for backends such as the HTTP SMS service.

pub mod client;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::server::Ctx;
use crate::store::BoxFuture;

pub type Body = Full<Bytes>;
pub type Request = hyper::Request<hyper::body::Incoming>;
pub type Response = hyper::Response<Body>;

/// What serves the paths under one prefix.
pub trait HttpHandler: Send + Sync {
    fn handle<'a>(&'a self, ctx: &'a Arc<Ctx>, req: Request) -> BoxFuture<'a, Response>;
}

/// Serve HTTP on `listener` until the server shuts down.
pub async fn accept_loop(ctx: Arc<Ctx>, listener: TcpListener) {
    loop {
        let (tcp, peer) = crate::server::accept(&listener, "http").await;
        let Some(guard) = crate::server::admit(&ctx, peer.ip()) else {
            tracing::info!(%peer, "too many connections from this address; refused");
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            serve_connection(ctx, tcp, peer).await;
            drop(guard);
        });
    }
}

async fn serve_connection(ctx: Arc<Ctx>, tcp: tokio::net::TcpStream, peer: SocketAddr) {
    let mut shutdown = ctx.shutdown_signal();
    let service = {
        let ctx = ctx.clone();
        hyper::service::service_fn(move |req: Request| {
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(dispatch(&ctx, req).await) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.config.negotiation_timeout())
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "http connection ended with an error");
    }
}

/// The handler whose prefix is the longest one `req`'s path starts with.
async fn dispatch(ctx: &Arc<Ctx>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    match ctx.registry.http_handler(&path) {
        Some(h) => h.clone().handle(ctx, req).await,
        None => status(StatusCode::NOT_FOUND, "no such resource"),
    }
}

/// A plain-text response.
pub fn status(code: StatusCode, text: &str) -> Response {
    let mut r = hyper::Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *r.status_mut() = code;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A JSON response.
pub fn json(code: StatusCode, value: &serde_json::Value) -> Response {
    let mut r = hyper::Response::new(Full::new(Bytes::from(value.to_string())));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `405 Method Not Allowed` naming the one method a resource takes.
pub fn only(method: &Method) -> Response {
    let mut r = status(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    if let Ok(v) = HeaderValue::from_str(method.as_str()) {
        r.headers_mut().insert(ALLOW, v);
    }
    r
}

/// The bearer token of `req`'s `Authorization` header.
pub fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Whether `given` is `expected`, in time that does not depend on where
/// they differ.
pub fn token_matches(given: Option<&str>, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    match given {
        Some(g) => !expected.is_empty() && bool::from(g.as_bytes().ct_eq(expected.as_bytes())),
        None => false,
    }
}

/// The whole body of `req`, at most `limit` bytes: `413` beyond, `400`
/// when the client stops sending midway.
pub async fn body(req: Request, limit: usize) -> Result<Bytes, Response> {
    let too_big = || {
        status(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is too large",
        )
    };
    if let Some(n) = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if n > limit as u64 {
            return Err(too_big());
        }
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_big()),
        Err(_) => Err(status(
            StatusCode::BAD_REQUEST,
            "the request body could not be read",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole_and_never_empty() {
        assert!(token_matches(Some("s3cret"), "s3cret"));
        assert!(!token_matches(Some("s3cre"), "s3cret"));
        assert!(!token_matches(Some("s3crett"), "s3cret"));
        assert!(!token_matches(None, "s3cret"));
        assert!(!token_matches(Some(""), ""));
    }
}

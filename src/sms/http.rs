//! The HTTP backend (`backend = "http"`, `[sms.http]`): each stored SMS
//! is POSTed as JSON to the service's `url` with `Authorization: Bearer
//! token`, one at a time, until the service answers 2xx; the service
//! POSTs delivery reports and incoming SMS back to `/sms/report` and
//! `/sms/incoming` on `[listen] http` with `Bearer callback_token`. The
//! protocol is specified in `xeps/confab-sms.md`.
//!
//! As with SMPP the store is the queue: an SMS leaves it only when the
//! service accepted it, so an outage or a restart resends it; a 4xx
//! answer (other than 408 and 429) refuses it for good and the sender is
//! told.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::{HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use super::gateway::{Gateway, Outgoing};
use crate::http::client::{Poster, Target};
use crate::http::{self as web, HttpHandler, Request, Response};
use crate::server::Ctx;
use crate::store::BoxFuture;

/// The paths the service calls back, under `[listen] http`.
pub const PREFIX: &str = "/sms/";
const REPORT_PATH: &str = "/sms/report";
const INCOMING_PATH: &str = "/sms/incoming";
/// The largest callback body read.
const MAX_CALLBACK: usize = 16 * 1024;
const MAX_BACKOFF: Duration = Duration::from_secs(60);

pub struct Http {
    pub gw: Arc<Gateway>,
    pub config: crate::config::SmsHttp,
}

/// What one POST of an SMS came to.
enum Sent {
    /// Accepted, with the service's id for it.
    Accepted(String),
    /// Refused for good, with why.
    Refused(String),
    /// Not now (transport error, 408, 429, 5xx): try again later.
    Later(String),
}

impl crate::modules::Service for Http {
    fn run(self: Arc<Self>, ctx: Arc<Ctx>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let poster = match Poster::new(
                self.config.ca_file.as_deref(),
                "sms.http.ca_file",
                Duration::from_secs(self.config.timeout_s),
            ) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "the HTTP SMS backend cannot start");
                    return;
                }
            };
            let target = match Target::parse(&self.config.url) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(error = %e, "sms.http.url");
                    return;
                }
            };
            if ctx.config.listen.http.is_empty() {
                tracing::warn!(
                    "[sms] backend = \"http\" without [listen] http: no delivery reports or incoming SMS can arrive"
                );
            }
            let mut shutdown = ctx.shutdown_signal();
            // SMS waiting to be tried again: when, and the wait after that.
            let mut later: HashMap<u64, (Instant, Duration)> = HashMap::new();
            loop {
                if ctx.is_shutting_down() {
                    return;
                }
                // Asked before the outbox is read, so an SMS stored while
                // it is worked through wakes the next round.
                let woken = self.gw.wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                let all = match ctx.stores.sms.outgoing().await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::error!(error = %e, "reading stored SMS failed");
                        Vec::new()
                    }
                };
                let now = Instant::now();
                later.retain(|id, _| all.iter().any(|(i, _)| i == id));
                for (id, doc) in all {
                    if later.get(&id).is_some_and(|(at, _)| *at > now) {
                        continue;
                    }
                    let Ok(mut o) = serde_json::from_str::<Outgoing>(&doc) else {
                        tracing::error!(id, "an unreadable stored SMS is dropped");
                        let _ = ctx.stores.sms.put_outgoing(id, None).await;
                        continue;
                    };
                    let r = match self.send(&poster, &target, id, &o).await {
                        Sent::Accepted(service_id) => {
                            later.remove(&id);
                            o.acked = vec![Some(service_id)];
                            self.gw.acknowledged(&ctx, id, &o).await
                        }
                        Sent::Refused(why) => {
                            later.remove(&id);
                            self.gw.refused(&ctx, id, &o, &why).await
                        }
                        Sent::Later(why) => {
                            let wait = later.get(&id).map_or(Duration::from_secs(1), |(_, w)| *w);
                            tracing::warn!(url = %self.config.url, error = %why, retry_in_s = wait.as_secs(), "the SMS service did not take an SMS");
                            later.insert(id, (Instant::now() + wait, (wait * 2).min(MAX_BACKOFF)));
                            Ok(())
                        }
                    };
                    if let Err(e) = r {
                        tracing::error!(error = %e, "the SMS outbox could not be updated");
                    }
                }
                let next = later
                    .values()
                    .map(|(at, _)| *at)
                    .min()
                    .unwrap_or_else(|| Instant::now() + MAX_BACKOFF);
                tokio::select! {
                    _ = woken => {}
                    _ = tokio::time::sleep_until(next.into()) => {}
                    _ = shutdown.changed() => return,
                }
            }
        })
    }
}

impl Http {
    async fn send(&self, poster: &Poster, target: &Target, id: u64, o: &Outgoing) -> Sent {
        let text = match &o.text {
            Some(t) => t.clone(),
            // Stored for a backend of parts: their texts, in order.
            None => o
                .parts
                .iter()
                .map(|p| {
                    let data = super::smpp::user_data(o.parts.len() > 1, p);
                    super::text::decode(o.data_coding, data)
                })
                .collect(),
        };
        let doc = json!({
            "id": format!("confab-{id}"),
            "to": o.number,
            "text": text,
            "parts": o.parts.len().max(1),
        });
        match poster.post(target, &self.config.token, &doc).await {
            Err(e) => Sent::Later(e),
            Ok((status, body)) if status.is_success() => {
                let service_id = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| id_of(v.get("id")))
                    .unwrap_or_else(|| format!("confab-{id}"));
                Sent::Accepted(service_id)
            }
            Ok((status, _))
                if status.is_server_error()
                    || status == StatusCode::REQUEST_TIMEOUT
                    || status == StatusCode::TOO_MANY_REQUESTS =>
            {
                Sent::Later(format!("HTTP {}", status.as_u16()))
            }
            Ok((status, _)) => Sent::Refused(format!(
                "the SMS service refused it, HTTP {}",
                status.as_u16()
            )),
        }
    }

    async fn report(&self, ctx: &Arc<Ctx>, doc: &Value) -> Response {
        let (Some(id), Some(status)) = (
            id_of(doc.get("id")),
            doc.get("status").and_then(Value::as_str),
        ) else {
            return web::status(
                StatusCode::BAD_REQUEST,
                "expected {\"id\": the service's id of the SMS, \"status\": \"delivered\" or \"failed\"…}",
            );
        };
        // Our names and SMPP's receipt states; anything else (sent,
        // queued, accepted…) is not final and changes nothing.
        let state = match status.to_ascii_lowercase().as_str() {
            "delivered" | "delivrd" => "DELIVRD",
            "failed" | "undelivered" | "undeliverable" | "undeliv" => "UNDELIV",
            "expired" => "EXPIRED",
            "rejected" | "rejectd" => "REJECTD",
            "deleted" => "DELETED",
            _ => return web::status(StatusCode::NO_CONTENT, ""),
        };
        self.gw.report(ctx, &id, state).await;
        web::status(StatusCode::NO_CONTENT, "")
    }

    async fn incoming(&self, ctx: &Arc<Ctx>, doc: &Value) -> Response {
        let from = doc.get("from").and_then(Value::as_str).filter(|f| {
            let digits = f.strip_prefix('+').unwrap_or(f);
            (3..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
        });
        let (Some(from), Some(text)) = (from, doc.get("text").and_then(Value::as_str)) else {
            return web::status(
                StatusCode::BAD_REQUEST,
                "expected {\"from\": \"+NUMBER\", \"text\": \"…\"}",
            );
        };
        if self.gw.incoming(ctx, from, text).await {
            web::status(StatusCode::NO_CONTENT, "")
        } else {
            web::status(StatusCode::SERVICE_UNAVAILABLE, "try again later")
        }
    }
}

/// An id given as a string or a number.
fn id_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() && s.len() <= 128 => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl HttpHandler for Http {
    fn handle<'a>(&'a self, ctx: &'a Arc<Ctx>, req: Request) -> BoxFuture<'a, Response> {
        Box::pin(async move {
            let path = req.uri().path().to_string();
            if path != REPORT_PATH && path != INCOMING_PATH {
                return web::status(StatusCode::NOT_FOUND, "no such resource");
            }
            if req.method() != Method::POST {
                return web::only(&Method::POST);
            }
            if !web::token_matches(web::bearer(&req), self.config.callback_token()) {
                let mut r = web::status(StatusCode::UNAUTHORIZED, "a valid bearer token is needed");
                r.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
            let body = match web::body(req, MAX_CALLBACK).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let Ok(doc) = serde_json::from_slice::<Value>(&body) else {
                return web::status(StatusCode::BAD_REQUEST, "the body is not JSON");
            };
            if path == REPORT_PATH {
                self.report(ctx, &doc).await
            } else {
                self.incoming(ctx, &doc).await
            }
        })
    }
}

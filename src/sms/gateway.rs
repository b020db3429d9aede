//! The SMS gateway component on `sms.DOMAIN` (PRODUCT.md §8,
//! `xeps/confab-sms.md`): a message with a body to `+E164@sms.DOMAIN`
//! from a user with the right `sms` is coded, split, stored durably and
//! handed to the backend (`client.rs`, SMPP); delivery reports come back
//! as XEP-0184 receipts, failures as error messages; an SMS from a number
//! goes to the user who last wrote to it, else `[sms] default_recipient`.

use std::sync::Arc;

use minidom::Element;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::stanza_error::DefinedCondition as Cond;

use crate::modules::{Component, Registry};
use crate::policy::Right;
use crate::router;
use crate::server::Ctx;
use crate::stanza::{element, jid_attr, simple_error, stanza_type};
use crate::store::BoxFuture;
use crate::xml::ns;

/// An SMS accepted from a user, until the SMS centre acknowledged every
/// part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outgoing {
    /// Who sent it (full JID) and the id of their message.
    pub from: String,
    pub msg_id: Option<String>,
    /// `+` and digits.
    pub number: String,
    pub data_coding: u8,
    /// Each part's short_message (with its header when there are several).
    pub parts: Vec<Vec<u8>>,
    /// The SMS centre's message id of each part it acknowledged (one
    /// entry for the whole text with a backend that takes whole texts).
    pub acked: Vec<Option<String>>,
    /// The text, for a backend that takes whole texts (HTTP; also kept
    /// so that a change of backend finds what it needs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// The parts of a concatenated incoming SMS received so far.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Partial {
    /// Unix seconds of the first part.
    first: i64,
    parts: Vec<Option<String>>,
}

/// A set of parts whose first arrived this long ago is given up (the
/// reference may be reused after it).
const PARTIAL_MAX_AGE_S: i64 = 24 * 3600;

/// What a delivery report for one part is about.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub from: String,
    pub msg_id: Option<String>,
    pub number: String,
    pub part: usize,
    pub parts: usize,
}

pub struct Gateway {
    pub domain: String,
    /// Wakes the backend when an SMS is stored.
    pub wake: Notify,
}

pub fn register(r: &mut Registry, config: &crate::config::Config) {
    let domain = config
        .sms
        .domain
        .clone()
        .unwrap_or_else(|| format!("sms.{}", config.domain));
    let gw = Arc::new(Gateway {
        domain: domain.clone(),
        wake: Notify::new(),
    });
    r.component(domain, gw.clone());
    match config.sms.backend.as_deref() {
        Some("smpp") => {
            if let Some(smpp) = &config.sms.smpp {
                r.service(Arc::new(super::client::Smpp {
                    gw,
                    config: smpp.clone(),
                }));
            }
        }
        Some("http") => {
            if let Some(http) = &config.sms.http {
                let backend = Arc::new(super::http::Http {
                    gw,
                    config: http.clone(),
                });
                r.http(super::http::PREFIX, backend.clone());
                r.service(backend);
            }
        }
        _ => {}
    }
}

/// The number a gateway JID's user part names, as `+` and digits:
/// `+E164` as such, or a number of the configured location.
pub fn number_of(node: &str, links: &crate::links::Settings) -> Option<String> {
    if let Some(d) = node.strip_prefix('+') {
        return (d.len() >= 3 && d.len() <= 15 && d.bytes().all(|b| b.is_ascii_digit()))
            .then(|| node.to_string());
    }
    crate::links::e164(node, links)
}

impl Gateway {
    /// A message or error from the number `number` to `to`.
    fn number_jid(&self, number: &str) -> String {
        format!("{number}@{}", self.domain)
    }

    async fn refuse(&self, ctx: &Arc<Ctx>, el: &Element, cond: Cond, text: &str) {
        if let Some(reply) = crate::stanza::error_reply(el, simple_error(cond, Some(text))) {
            router::route(ctx, reply).await;
        }
    }

    async fn message(&self, ctx: &Arc<Ctx>, mut el: Element, from: Jid, to: Jid) {
        if matches!(stanza_type(&el), "error" | "groupchat" | "headline") {
            return;
        }
        let Some(body) = el
            .get_child("body", ns::CLIENT)
            .map(|b| b.text())
            .filter(|b| !b.trim().is_empty())
        else {
            // Chat states, receipts and markers to a number go nowhere.
            return;
        };
        if ctx.config.sms.backend.is_none() {
            // The gateway is off.
            return self
                .refuse(
                    ctx,
                    &el,
                    Cond::ServiceUnavailable,
                    "this server sends no SMS",
                )
                .await;
        }
        let user = from.to_bare();
        if !ctx.is_account_address(user.node().is_some(), user.domain().as_str()) {
            return self
                .refuse(
                    ctx,
                    &el,
                    Cond::Forbidden,
                    "the SMS gateway is for accounts of this server",
                )
                .await;
        }
        // The right first: without it nothing else is looked at.
        match crate::policy::has_right(&ctx.stores, &user, Right::Sms).await {
            Ok(true) => {}
            Ok(false) => {
                return self
                    .refuse(
                        ctx,
                        &el,
                        Cond::Forbidden,
                        "sending SMS needs the right sms, which an administrator grants",
                    )
                    .await
            }
            Err(e) => {
                tracing::error!(error = %e, "reading rights failed");
                return self.refuse(ctx, &el, Cond::InternalServerError, "").await;
            }
        }
        let Some(number) = to
            .node()
            .and_then(|n| number_of(n.as_str(), &ctx.config.links))
        else {
            return self
                .refuse(
                    ctx,
                    &el,
                    Cond::JidMalformed,
                    "address an SMS to +NUMBER@ the gateway (international format, or a number of this location)",
                )
                .await;
        };
        let id = match ctx.stores.sms.next_sms_id() {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(error = %e, "sms id failed");
                return self.refuse(ctx, &el, Cond::InternalServerError, "").await;
            }
        };
        let max = ctx.config.sms.max_parts;
        let coded = match super::text::split(&body, max, (id % 256) as u8) {
            Ok(c) => c,
            Err(t) => {
                let text = format!(
                    "the text needs {} SMS parts; at most {max} are sent",
                    t.parts
                );
                return self.refuse(ctx, &el, Cond::NotAcceptable, &text).await;
            }
        };
        let n = coded.parts.len();
        // The HTTP service takes the whole text (and splits it itself); the
        // parts were counted against max_parts all the same.
        let whole_texts = ctx.config.sms.backend.as_deref() == Some("http");
        let out = Outgoing {
            from: from.to_string(),
            msg_id: el.attr("id").map(str::to_string),
            number: number.clone(),
            data_coding: coded.coding.data_coding(),
            acked: vec![None; if whole_texts { 1 } else { n }],
            parts: coded.parts,
            text: Some(body),
        };
        let stored = match serde_json::to_string(&out) {
            Ok(doc) => ctx.stores.sms.put_outgoing(id, Some(&doc)).await,
            Err(e) => Err(crate::store::StoreError(e.to_string())),
        };
        if let Err(e) = stored {
            tracing::error!(error = %e, "storing an SMS failed");
            return self.refuse(ctx, &el, Cond::InternalServerError, "").await;
        }
        if let Err(e) = ctx.stores.sms.set_last_writer(&number, user.as_str()).await {
            tracing::warn!(error = %e, "remembering who wrote to a number failed");
        }
        tracing::info!(user = %user, parts = n, "SMS accepted");
        self.wake.notify_one();
        // It leaves XMPP here: the sender's archive and journal keep it as
        // sent, as for a message to another server.
        ctx.registry
            .run_processors(
                ctx,
                crate::modules::Stage::BeforeRemote,
                &from,
                &to,
                &mut el,
            )
            .await;
    }

    /// A delivery report for SMS centre message `smsc_id`: `delivered`,
    /// or failed with `state`.
    pub async fn report(&self, ctx: &Arc<Ctx>, smsc_id: &str, state: &str) {
        let Some(delivered) = super::smpp::final_state(state) else {
            return;
        };
        let r = match ctx.stores.sms.report(smsc_id, Some(None)).await {
            Ok(Some(doc)) => serde_json::from_str::<Report>(&doc).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(error = %e, "reading a delivery report's SMS failed");
                None
            }
        };
        let Some(r) = r else {
            tracing::debug!(smsc_id, "a delivery report for an SMS not known here");
            return;
        };
        let from = self.number_jid(&r.number);
        if delivered {
            // The last part delivered completes the message.
            if r.part + 1 != r.parts {
                return;
            }
            let Some(id) = &r.msg_id else { return };
            let mut m = element("message", ns::CLIENT, &[("from", &from), ("to", &r.from)]);
            m.append_child(element("received", ns::RECEIPTS, &[("id", id)]));
            router::route(ctx, m).await;
        } else {
            self.failed(ctx, &r.from, r.msg_id.as_deref(), &r.number, state)
                .await;
        }
    }

    /// Every part of stored SMS `id` was acknowledged: keep what its
    /// delivery reports will be about and drop it from the outbox, in one
    /// durable step.
    pub async fn acknowledged(&self, ctx: &Arc<Ctx>, id: u64, o: &Outgoing) -> Result<(), String> {
        let parts = o.acked.len();
        let mut reports = Vec::new();
        for (part, smsc_id) in o.acked.iter().enumerate() {
            let Some(smsc_id) = smsc_id else { continue };
            let r = Report {
                from: o.from.clone(),
                msg_id: o.msg_id.clone(),
                number: o.number.clone(),
                part,
                parts,
            };
            reports.push((
                smsc_id.clone(),
                serde_json::to_string(&r).map_err(|e| e.to_string())?,
            ));
        }
        ctx.stores
            .sms
            .acknowledged(id, &reports)
            .await
            .map_err(|e| format!("storing an acknowledged SMS: {e}"))?;
        tracing::info!(parts, "SMS acknowledged by the SMS service");
        Ok(())
    }

    /// Stored SMS `id` was refused for good: it leaves the outbox and the
    /// sender is told why.
    pub async fn refused(
        &self,
        ctx: &Arc<Ctx>,
        id: u64,
        o: &Outgoing,
        why: &str,
    ) -> Result<(), String> {
        ctx.stores
            .sms
            .put_outgoing(id, None)
            .await
            .map_err(|e| format!("dropping a refused SMS: {e}"))?;
        tracing::info!(why, "SMS refused by the SMS service");
        self.failed(ctx, &o.from, o.msg_id.as_deref(), &o.number, why)
            .await;
        Ok(())
    }

    /// Tell the sender their SMS was not delivered.
    pub async fn failed(
        &self,
        ctx: &Arc<Ctx>,
        to: &str,
        id: Option<&str>,
        number: &str,
        why: &str,
    ) {
        let from = self.number_jid(number);
        let mut attrs = vec![("type", "error"), ("from", from.as_str()), ("to", to)];
        if let Some(id) = id {
            attrs.push(("id", id));
        }
        let mut m = element("message", ns::CLIENT, &attrs);
        let text = format!("the SMS was not delivered ({why})");
        let e = crate::stanza::error(
            xmpp_parsers::stanza_error::ErrorType::Cancel,
            Cond::RecipientUnavailable,
            Some(&text),
        );
        m.append_child(e.into());
        router::route(ctx, m).await;
    }

    /// Part `c` of a longer SMS from `number`: kept (durably) until every
    /// part is here, then the whole text goes on as one message. False
    /// when it could not be kept (the SMS centre is to send it again).
    pub async fn incoming_part(
        &self,
        ctx: &Arc<Ctx>,
        number: &str,
        c: super::smpp::Concat,
        text: &str,
    ) -> bool {
        let key = format!("{number}/{}/{}", c.reference, c.total);
        let now = chrono::Utc::now().timestamp();
        let mut p = match ctx.stores.sms.partial(&key, None).await {
            Ok(doc) => doc
                .and_then(|d| serde_json::from_str::<Partial>(&d).ok())
                .filter(|p| p.parts.len() == c.total as usize && now - p.first < PARTIAL_MAX_AGE_S)
                .unwrap_or_default(),
            Err(e) => {
                tracing::error!(error = %e, "reading the parts of an SMS failed");
                return false;
            }
        };
        if p.parts.is_empty() {
            p.first = now;
            p.parts = vec![None; c.total as usize];
        }
        if let Some(slot) = p.parts.get_mut(c.seq as usize - 1) {
            *slot = Some(text.to_string());
        }
        if p.parts.iter().all(Option::is_some) {
            let whole: String = p.parts.iter().flatten().map(String::as_str).collect();
            if !self.incoming(ctx, number, &whole).await {
                return false;
            }
            if let Err(e) = ctx.stores.sms.partial(&key, Some(None)).await {
                tracing::warn!(error = %e, "dropping the parts of a delivered SMS failed");
            }
            return true;
        }
        let stored = match serde_json::to_string(&p) {
            Ok(doc) => ctx.stores.sms.partial(&key, Some(Some(&doc))).await,
            Err(e) => Err(crate::store::StoreError(e.to_string())),
        };
        if let Err(e) = stored {
            tracing::error!(error = %e, "keeping a part of an SMS failed");
            return false;
        }
        true
    }

    /// An SMS from `number`: to whoever last wrote to it, else the
    /// default recipient.
    pub async fn incoming(&self, ctx: &Arc<Ctx>, number: &str, text: &str) -> bool {
        // An SMS centre may give the number nationally ("0151…"): made
        // international like the numbers users write to.
        let number = if number.starts_with('+') {
            number.to_string()
        } else {
            crate::links::e164(number, &ctx.config.links).unwrap_or_else(|| number.to_string())
        };
        let number = number.as_str();
        let to = match ctx.stores.sms.last_writer(number).await {
            Ok(Some(j)) => Some(j),
            Ok(None) => ctx.config.sms.default_recipient.clone(),
            Err(e) => {
                tracing::error!(error = %e, "reading who wrote to a number failed");
                return false;
            }
        };
        let Some(to) = to.and_then(|t| BareJid::new(&t).ok()) else {
            tracing::warn!("an incoming SMS has nobody to go to (set [sms] default_recipient)");
            return true;
        };
        let from = self.number_jid(number);
        let id = format!("sms-{}", crate::stanza::random_id(10));
        let mut m = element(
            "message",
            ns::CLIENT,
            &[
                ("type", "chat"),
                ("from", &from),
                ("to", to.as_str()),
                ("id", &id),
            ],
        );
        let mut b = Element::bare("body", ns::CLIENT);
        b.append_text_node(text);
        m.append_child(b);
        router::route(ctx, m).await;
        true
    }
}

impl Component for Gateway {
    fn handle<'a>(&'a self, ctx: &'a Arc<Ctx>, el: Element) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let (Ok(Some(from)), Ok(Some(to))) = (jid_attr(&el, "from"), jid_attr(&el, "to"))
            else {
                return;
            };
            match el.name() {
                "message" => self.message(ctx, el, from, to).await,
                "iq" if matches!(stanza_type(&el), "get" | "set") => {
                    let info = el
                        .get_child("query", ns::DISCO_INFO)
                        .filter(|_| stanza_type(&el) == "get" && to.node().is_none());
                    let Some(_) = info else {
                        return self.refuse(ctx, &el, Cond::ServiceUnavailable, "").await;
                    };
                    let mut q = Element::bare("query", ns::DISCO_INFO);
                    q.append_child(element(
                        "identity",
                        ns::DISCO_INFO,
                        &[("category", "gateway"), ("type", "sms"), ("name", "SMS")],
                    ));
                    q.append_child(element(
                        "feature",
                        ns::DISCO_INFO,
                        &[("var", ns::DISCO_INFO)],
                    ));
                    let id = el.attr("id").unwrap_or_default();
                    let mut r = element(
                        "iq",
                        ns::CLIENT,
                        &[
                            ("type", "result"),
                            ("id", id),
                            ("from", &self.domain),
                            ("to", from.as_str()),
                        ],
                    );
                    r.append_child(q);
                    router::route(ctx, r).await;
                }
                _ => {}
            }
        })
    }
}

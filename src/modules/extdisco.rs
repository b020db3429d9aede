//! External service discovery (XEP-0215, `urn:xmpp:extdisco:2`): the
//! STUN/TURN server of `[turn]` for calls (PRODUCT.md §9). Every local
//! user gets the STUN service; those with the right `av` or
//! `screen_share` also get TURN over UDP and TCP, with credentials in the
//! coturn REST API scheme (coturn `use-auth-secret`): the user name is
//! `EXPIRY:JID` (EXPIRY in Unix seconds), the password
//! `base64(HMAC-SHA1(secret, user name))`. See `xeps/xep-0215.md`.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use minidom::Element;
use xmpp_parsers::jid::BareJid;
use xmpp_parsers::stanza_error::{DefinedCondition as Cond, StanzaError};

use super::{bad_request, store_failed, IqHandler, IqRequest, IqResult, IqType, Registry};
use crate::config::Turn;
use crate::policy::Right;
use crate::server::Ctx;
use crate::stanza::{element, simple_error};
use crate::store::BoxFuture;
use crate::xml::ns;

pub fn register(r: &mut Registry) {
    r.server_feature(ns::EXTDISCO);
    r.iq(ns::EXTDISCO, true, false, Arc::new(ExtDisco));
}

/// TURN credentials for `user`, valid until `expiry` (Unix seconds):
/// (user name, password).
pub fn credentials(secret: &str, user: &BareJid, expiry: u64) -> (String, String) {
    use base64::Engine;
    let username = format!("{expiry}:{user}");
    // HMAC takes a key of any length.
    let mut mac = match Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return (username, String::new()),
    };
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

/// The services `user` may use: STUN, and TURN with fresh credentials
/// when `relay` (the user holds `av` or `screen_share`).
fn services(t: &Turn, user: &BareJid, relay: bool) -> Vec<Element> {
    let port = t.port.to_string();
    let mut out = vec![element(
        "service",
        ns::EXTDISCO,
        &[
            ("type", "stun"),
            ("host", &t.host),
            ("port", &port),
            ("transport", "udp"),
        ],
    )];
    if !relay {
        return out;
    }
    let now = chrono::Utc::now();
    let expiry = now.timestamp().max(0) as u64 + t.ttl_s;
    let (username, password) = credentials(&t.secret, user, expiry);
    let expires = chrono::DateTime::from_timestamp(expiry as i64, 0)
        .unwrap_or(now)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for transport in ["udp", "tcp"] {
        out.push(element(
            "service",
            ns::EXTDISCO,
            &[
                ("type", "turn"),
                ("host", &t.host),
                ("port", &port),
                ("transport", transport),
                ("username", &username),
                ("password", &password),
                ("expires", &expires),
                ("restricted", "1"),
            ],
        ));
    }
    out
}

/// Whether a service matches what a request names (`type`, and `host`,
/// `port`, `transport` when given).
fn matches(service: &Element, wanted: &Element) -> bool {
    ["type", "host", "port", "transport"]
        .iter()
        .all(|&a| wanted.attr(a).is_none_or(|w| service.attr(a) == Some(w)))
}

struct ExtDisco;

impl ExtDisco {
    /// Whether `user` may relay media through TURN.
    async fn may_relay(ctx: &Ctx, user: &BareJid) -> Result<bool, StanzaError> {
        for r in [Right::Av, Right::ScreenShare] {
            if crate::policy::has_right(&ctx.stores, user, r)
                .await
                .map_err(|e| store_failed("reading rights", e))?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

impl IqHandler for ExtDisco {
    fn handle<'a>(&'a self, ctx: &'a Arc<Ctx>, req: IqRequest) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let Some(user) = req.local_user(ctx) else {
                return Err(simple_error(
                    Cond::Forbidden,
                    Some("these services are for accounts of this server"),
                ));
            };
            let p = &req.payload;
            if req.typ != IqType::Get {
                return Err(bad_request("services and credentials are asked with a get"));
            }
            match p.name() {
                "services" => {
                    let mut r = Element::bare("services", ns::EXTDISCO);
                    if let Some(typ) = p.attr("type") {
                        crate::stanza::set_attr(&mut r, "type", typ);
                    }
                    let Some(t) = &ctx.config.turn else {
                        return Ok(Some(r));
                    };
                    let relay = Self::may_relay(ctx, &user).await?;
                    for s in services(t, &user, relay) {
                        if p.attr("type").is_none_or(|typ| s.attr("type") == Some(typ)) {
                            r.append_child(s);
                        }
                    }
                    Ok(Some(r))
                }
                "credentials" => {
                    let wanted: Vec<&Element> = p
                        .children()
                        .filter(|c| c.is("service", ns::EXTDISCO))
                        .collect();
                    if wanted.is_empty() {
                        return Err(bad_request(
                            "name the service: <service type='…' host='…'/>",
                        ));
                    }
                    let Some(t) = &ctx.config.turn else {
                        return Err(simple_error(
                            Cond::ItemNotFound,
                            Some("this server offers no such service"),
                        ));
                    };
                    let relay = Self::may_relay(ctx, &user).await?;
                    let all = services(t, &user, true);
                    let mut r = Element::bare("credentials", ns::EXTDISCO);
                    for w in wanted {
                        let found: Vec<&Element> = all.iter().filter(|s| matches(s, w)).collect();
                        if found.is_empty() {
                            return Err(simple_error(
                                Cond::ItemNotFound,
                                Some("this server offers no such service"),
                            ));
                        }
                        for s in found {
                            if s.attr("type") == Some("turn") && !relay {
                                return Err(simple_error(
                                    Cond::Forbidden,
                                    Some("TURN is for users with the right av or screen_share"),
                                ));
                            }
                            r.append_child(s.clone());
                        }
                    }
                    Ok(Some(r))
                }
                _ => Err(bad_request("the payload is <services/> or <credentials/>")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_the_coturn_rest_scheme() {
        // The password as Python's hmac module computes it:
        // base64(HMAC-SHA1(b"Jefe", b"1700000000:alice@example.com")).
        let user = BareJid::new("alice@example.com").unwrap();
        let (u, p) = credentials("Jefe", &user, 1_700_000_000);
        assert_eq!(u, "1700000000:alice@example.com");
        assert_eq!(p, "J3oFYJlnpxH+/MIVwS7wtfxW3pQ=");
    }
}

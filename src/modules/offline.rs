//! Offline messages (XEP-0160): a chat or normal message for a user with
//! no available resource is stored durably, stamped with a XEP-0203 delay,
//! and delivered at the user's next initial presence with non-negative
//! priority. Storage is flushed before the sender's stanza counts as
//! handled.

use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::jid::BareJid;
use xmpp_parsers::stanza_error::DefinedCondition as Cond;

use super::{Event, Listener, Registry};
use crate::router;
use crate::server::Ctx;
use crate::store::{BoxFuture, OfflinePush};
use crate::xml::{ns, writer};

pub fn register(r: &mut Registry) {
    r.server_feature(ns::OFFLINE);
    r.listener(Arc::new(Offline));
}

const HINTS: &str = "urn:xmpp:hints";
const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";

/// Whether a message is worth keeping for later: not when the sender asked
/// (XEP-0334 hints) and not for bare chat-state notifications (XEP-0085 §5.5).
fn storable(el: &Element) -> bool {
    if el.has_child("no-store", HINTS) || el.has_child("no-permanent-store", HINTS) {
        return false;
    }
    if el.has_child("store", HINTS) || el.has_child("body", ns::CLIENT) {
        return true;
    }
    el.children()
        .any(|c| !(c.ns() == CHATSTATES || c.is("thread", ns::CLIENT)))
}

/// Store a message for `user`, or bounce it when that is not possible.
pub async fn store_or_bounce(ctx: &Arc<Ctx>, user: &BareJid, mut el: Element) {
    if !storable(&el) {
        return;
    }
    let has_our_delay = el
        .children()
        .any(|c| c.is("delay", ns::DELAY) && c.attr("from") == Some(ctx.domain.as_str()));
    if !has_our_delay {
        crate::stanza::add_delay(&mut el, &ctx.domain, chrono::Utc::now());
    }
    let xml = writer::to_string(&el);
    match ctx
        .stores
        .offline
        .push(user, xml, ctx.config.limits.max_offline_messages)
        .await
    {
        Ok(OfflinePush::Stored) => {
            tracing::debug!(to = %user, "message stored offline");
        }
        Ok(OfflinePush::Full) => {
            router::bounce(
                ctx,
                &el,
                Cond::ServiceUnavailable,
                Some("the recipient's offline storage is full"),
            )
            .await;
        }
        Err(e) => {
            tracing::error!(error = %e, "offline storage failed");
            router::bounce(ctx, &el, Cond::InternalServerError, None).await;
        }
    }
}

struct Offline;

impl Listener for Offline {
    fn on_event<'a>(&'a self, ctx: &'a Arc<Ctx>, ev: &'a Event<'a>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Event::InitialPresence { full, priority } = ev else {
                return;
            };
            if *priority < 0 {
                return;
            }
            let user = full.to_bare();
            let queued = match ctx.stores.offline.peek(&user).await {
                Ok(q) => q,
                Err(e) => {
                    tracing::error!(error = %e, "offline storage failed");
                    return;
                }
            };
            if queued.is_empty() {
                return;
            }
            let Some(session) = ctx.sessions.get(full) else {
                return;
            };
            let mut delivered = Vec::new();
            for (key, xml) in queued {
                let Ok(el) = crate::xml::parse(&xml) else {
                    tracing::warn!(to = %user, "dropping an unreadable offline message");
                    delivered.push(key);
                    continue;
                };
                if session.mailbox.deliver(el).is_err() {
                    break;
                }
                delivered.push(key);
            }
            if let Err(e) = ctx.stores.offline.remove(&user, &delivered).await {
                tracing::error!(error = %e, "offline storage failed");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_stored() {
        let p = |s: &str| s.parse::<Element>().unwrap();
        assert!(storable(&p(
            "<message xmlns='jabber:client'><body>x</body></message>"
        )));
        assert!(!storable(&p(
            "<message xmlns='jabber:client'><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )));
        assert!(storable(&p(
            "<message xmlns='jabber:client'><received xmlns='urn:xmpp:receipts' id='1'/></message>"
        )));
        assert!(!storable(&p(
            "<message xmlns='jabber:client'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>"
        )));
    }
}

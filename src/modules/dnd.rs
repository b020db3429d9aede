//! Do Not Disturb defers delivery (PRODUCT.md §2, `urn:confab:dnd-defer:0`,
//! `xeps/confab-dnd.md`; config `dnd_defers_delivery`, default on).
//!
//! While every available resource of a user (of non-negative priority:
//! the ones that take messages to the bare JID) shows `dnd`, a chat or
//! normal message with a body to the user, to the bare or a full JID, is
//! held: it was archived already (it comes after the archive's stage), and
//! now it goes to the user's offline storage instead of a session. Nothing
//! else is held: receipts, markers, chat states, IQs and presence pass.
//!
//! Held messages are the offline queue, so they survive a logout and a
//! restart, keep their order and carry a XEP-0203 delay. A resource that
//! leaves `dnd`, or a resource that comes online without it, takes the
//! queue as a session does at login (`offline.rs`): the one rule for who
//! may take it is [`defers`].

use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::jid::BareJid;

use super::{offline, BoxFuture, Holder, Registry};
use crate::config::Config;
use crate::server::Ctx;
use crate::stanza::stanza_type;
use crate::xml::ns;

pub const NS: &str = "urn:confab:dnd-defer:0";

pub fn register(r: &mut Registry, config: &Config) {
    if !config.dnd_defers_delivery {
        return;
    }
    r.holder(Arc::new(Defer));
    r.server_feature(NS);
    r.account_feature(NS);
}

/// Whether a presence shows `dnd`.
pub fn shows_dnd(presence: &Element) -> bool {
    presence
        .get_child("show", ns::CLIENT)
        .is_some_and(|s| s.text().trim() == "dnd")
}

/// Whether a resource whose presence is (`dnd`) or is not dnd has its
/// messages held: the one rule, for holding and for who may take the
/// held queue.
pub fn defers(ctx: &Ctx, dnd: bool) -> bool {
    dnd && ctx.config.dnd_defers_delivery
}

/// The messages that wait: chat and normal ones with a body.
fn held_kind(el: &Element) -> bool {
    el.name() == "message"
        && matches!(stanza_type(el), "chat" | "normal" | "")
        && el.get_child("body", ns::CLIENT).is_some()
}

struct Defer;

impl Holder for Defer {
    fn hold<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        user: &'a BareJid,
        el: Element,
    ) -> BoxFuture<'a, Option<Element>> {
        Box::pin(async move {
            if !held_kind(&el) {
                return Some(el);
            }
            let all_dnd = ctx.sessions.all_where(
                user,
                |r| r.available && r.priority >= 0,
                |r| defers(ctx, r.dnd),
            );
            if !all_dnd {
                return Some(el);
            }
            tracing::debug!(to = %user, "message held: every resource is dnd");
            // Joins a drain that is starting (a resource leaving dnd this
            // very moment), or waits in the queue for one.
            let el = offline::hold(ctx, user, el).await?;
            offline::store_or_bounce(ctx, user, el).await;
            None
        })
    }
}

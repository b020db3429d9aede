// Stanza errors are the answer to one IQ, built once per request.
#![allow(clippy::result_large_err)]

//! Per-user deletion of history, `urn:confab:history:0` (PRODUCT.md §6,
//! `xeps/confab-history.md`): a user hides a whole conversation (with a
//! bare JID: a user or a room) or single messages (their stanza-ids) from
//! their own view. The other party's view never changes.
//!
//! What is hidden leaves the user's archive (every device's MAM), the
//! offline queue (also what Do Not Disturb holds) and the journal (the
//! `HistoryHidden` event); the user's other resources are told. A message
//! no view holds any more is reclaimed from disk by the archive store.

use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::stanza_error::{DefinedCondition as Cond, StanzaError};

use super::{Event, IqHandler, IqRequest, IqResult, IqType, Registry};
use crate::server::Ctx;
use crate::stanza::{element, simple_error};
use crate::store::{BoxFuture, Hide};
use crate::xml::ns;

pub const NS: &str = "urn:confab:history:0";

/// Items one request may name at most.
pub const MAX_ITEMS: usize = 100;

pub fn register(r: &mut Registry, config: &crate::config::Config) {
    // Without an archive there is no view to delete from.
    if !config.mam.enabled {
        return;
    }
    r.server_feature(NS);
    r.account_feature(NS);
    r.iq(NS, false, true, Arc::new(History));
}

struct History;

fn bad(text: &str) -> StanzaError {
    super::bad_request(text)
}

/// A parsed `<delete/>`.
fn parse(payload: &Element) -> Result<Hide, StanzaError> {
    if payload.name() != "delete" {
        return Err(bad("the request is <delete/>"));
    }
    let items: Vec<&Element> = payload.children().filter(|c| c.is("item", NS)).collect();
    match (payload.attr("with"), items.is_empty()) {
        (Some(_), false) => Err(bad("a delete names 'with' or items, not both")),
        (None, true) => Err(bad("a delete names 'with' or at least one item")),
        (Some(with), true) => {
            let j = Jid::new(with.trim()).map_err(|_| bad("'with' is not a JID"))?;
            Ok(Hide::Conversation(j.to_bare()))
        }
        (None, false) => {
            if items.len() > MAX_ITEMS {
                return Err(bad("at most 100 items per delete"));
            }
            let mut ids = Vec::with_capacity(items.len());
            for it in items {
                let Some(id) = it.attr("id") else {
                    return Err(bad("an item has an id"));
                };
                // An id that is not one of ours is in no view.
                let Ok(id) = id.trim().parse::<u64>() else {
                    return Err(not_found());
                };
                ids.push(id);
            }
            ids.sort_unstable();
            ids.dedup();
            Ok(Hide::Items(ids))
        }
    }
}

fn not_found() -> StanzaError {
    simple_error(
        Cond::ItemNotFound,
        Some("a message named is not in your archive; nothing was deleted"),
    )
}

fn internal(e: crate::store::StoreError) -> StanzaError {
    super::store_failed("history delete", e)
}

impl IqHandler for History {
    fn handle<'a>(&'a self, ctx: &'a Arc<Ctx>, req: IqRequest) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let user = req.owner_only("history is deleted from one's own view only")?;
            if req.typ != IqType::Set {
                return Err(bad("a delete is an IQ of type set"));
            }
            let what = parse(&req.payload)?;
            hide(ctx, &user, &what).await?;
            let (with, ids) = match &what {
                Hide::Conversation(w) => (Some(w), &[][..]),
                Hide::Items(ids) => (None, ids.as_slice()),
            };
            let removed = super::offline::purge(ctx, &user, |m| queued_match(m, &user, with, ids))
                .await
                .map_err(internal)?;
            if removed > 0 {
                tracing::debug!(user = %user, removed, "queued messages deleted with history");
            }
            ctx.registry
                .emit(
                    ctx,
                    Event::HistoryHidden {
                        user: &user,
                        with,
                        ids,
                        by: &req.from,
                    },
                )
                .await;
            notify(ctx, &user, &req.from, &what);
            Ok(None)
        })
    }
}

/// Hide `what` from `user`'s view: of their own archive, and of the
/// shared archives (rooms) they take part in. Items are hidden all or
/// none: every id must be in one of the views.
async fn hide(ctx: &Arc<Ctx>, user: &BareJid, what: &Hide) -> Result<(), StanzaError> {
    let archive = &ctx.stores.archive;
    // The ids a client names came with messages it received: let their
    // writes land first (the store orders a hide after every write queued
    // before, but a shared view is checked here).
    archive.barrier().await.map_err(internal)?;
    match what {
        Hide::Conversation(w) => {
            if let Some((mut view, keeper)) = ctx
                .registry
                .shared_view(ctx, user, w)
                .await
                .map_err(internal)?
            {
                // Everything archived until now.
                view.clear_to(archive.next_id());
                keeper
                    .set_view(ctx, user, w, view)
                    .await
                    .map_err(internal)?;
            }
            archive
                .hide(user, what.clone())
                .await
                .map_err(internal)?
                .ok_or_else(not_found)?;
        }
        Hide::Items(ids) => {
            let mut own = Vec::new();
            let mut rest = Vec::new();
            for id in ids {
                if archive.contains(user, *id).map_err(internal)? {
                    own.push(*id);
                } else {
                    rest.push(*id);
                }
            }
            let mut shared = Vec::new();
            if !rest.is_empty() {
                for (conv, keeper) in ctx
                    .registry
                    .shared_of_user(ctx, user)
                    .await
                    .map_err(internal)?
                {
                    let Some(mut view) = keeper.view(ctx, user, &conv).await.map_err(internal)?
                    else {
                        continue;
                    };
                    let mut mine = Vec::new();
                    for id in &rest {
                        if view.shows(*id) && archive.contains(&conv, *id).map_err(internal)? {
                            mine.push(*id);
                        }
                    }
                    if mine.is_empty() {
                        continue;
                    }
                    rest.retain(|i| !mine.contains(i));
                    view.hide(&mine);
                    shared.push((conv, keeper, view));
                    if rest.is_empty() {
                        break;
                    }
                }
            }
            if !rest.is_empty() {
                return Err(not_found());
            }
            if !own.is_empty() {
                archive
                    .hide(user, Hide::Items(own))
                    .await
                    .map_err(internal)?
                    .ok_or_else(not_found)?;
            }
            for (conv, keeper, view) in shared {
                keeper
                    .set_view(ctx, user, &conv, view)
                    .await
                    .map_err(internal)?;
            }
        }
    }
    Ok(())
}

/// Whether a queued message is one of those hidden: from the conversation
/// `with`, or carrying one of `ids` as its stanza-id by the user.
fn queued_match(m: &Element, user: &BareJid, with: Option<&BareJid>, ids: &[u64]) -> bool {
    if let Some(w) = with {
        return m
            .attr("from")
            .and_then(|f| Jid::new(f).ok())
            .is_some_and(|f| f.to_bare() == *w);
    }
    m.children().any(|c| {
        c.is("stanza-id", ns::SID)
            && c.attr("by") == Some(user.as_str())
            && c.attr("id")
                .and_then(|i| i.parse::<u64>().ok())
                .is_some_and(|i| ids.binary_search(&i).is_ok())
    })
}

/// Tell the user's other resources what was deleted.
fn notify(ctx: &Ctx, user: &BareJid, requester: &Jid, what: &Hide) {
    super::tell_other_resources(ctx, user, requester, || deleted(what));
}

/// The `<deleted/>` of a request.
fn deleted(what: &Hide) -> Element {
    let mut deleted = Element::bare("deleted", NS);
    match what {
        Hide::Conversation(w) => crate::stanza::set_attr(&mut deleted, "with", w.as_str()),
        Hide::Items(ids) => {
            for id in ids {
                deleted.append_child(element("item", NS, &[("id", &super::mam::id_string(*id))]));
            }
        }
    }
    deleted
}

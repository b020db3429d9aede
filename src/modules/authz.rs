//! Authorization levels where users meet them (PRODUCT.md §2,
//! `xeps/confab-authz.md`): the `urn:confab:authz:0` protocol a user
//! overrides levels with, the one rule that stops stanzas between a user
//! and a contact the user grants `blocked`, and presence detail by level.
//! Levels are computed in one place, [`crate::policy::Levels`]; XEP-0191
//! (`blocking.rs`) changes the same state, and [`applied`] announces any
//! change in both protocols and to the contacts' presence.

use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::stanza_error::{DefinedCondition as Cond, ErrorType, StanzaError};

use super::{
    bad_request, store_failed, Filter, IqHandler, IqRequest, IqResult, IqType, Point, Processor,
    Registry, Stage, Verdict,
};
use crate::policy::levels::{ChangeError, Delta, MAX_CHOICES};
use crate::policy::{Level, Source};
use crate::server::Ctx;
use crate::sessions::Interest;
use crate::stanza::{self, element, simple_error, stanza_type, Bare, Kind};
use crate::store::BoxFuture;
use crate::xml::ns;

pub fn register(r: &mut Registry) {
    r.server_feature(ns::AUTHZ);
    r.iq(ns::AUTHZ, false, true, Arc::new(Protocol));
    r.filter(Point::Outbound, Arc::new(AsOwner));
    r.filter(Point::Deliver, Arc::new(AsRecipient));
    r.processor(Stage::ToSubscriber, Arc::new(PresenceDetail));
}

/// Whether `j` is a user's address (bare or full): a JID with a user part
/// that is not at one of the server's services (a room's occupant JID is
/// not a user's).
fn is_person(ctx: &Ctx, j: &Jid) -> bool {
    j.node().is_some() && ctx.registry.component_for(j.domain().as_str()).is_none()
}

fn is_local_user(ctx: &Ctx, j: &Jid) -> bool {
    ctx.is_account_address(j.node().is_some(), j.domain().as_str())
}

/// The level local user `owner` grants `contact` and its source; for an
/// address that is not a user's, `Some` only when the block list covers
/// it. A storage failure is logged and counts as no level.
pub async fn level(ctx: &Ctx, owner: &BareJid, contact: &Jid) -> Option<(Level, Source)> {
    let person = is_person(ctx, contact);
    match ctx
        .levels
        .level(
            &ctx.stores,
            &ctx.domain,
            &ctx.config.authz,
            owner,
            contact,
            person,
        )
        .await
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, %owner, "reading an authorization level failed");
            None
        }
    }
}

/// Whether `owner` grants `other` the level `blocked` (a block list item
/// covers it, or its override, group policy or default is `blocked`).
pub async fn blocks(ctx: &Ctx, owner: &BareJid, other: &Jid) -> bool {
    matches!(level(ctx, owner, other).await, Some((Level::Blocked, _)))
}

/// Stanzas from a local user to someone the user blocks.
struct AsOwner;
/// Stanzas to a local user from someone the user blocks.
struct AsRecipient;

impl Filter for AsOwner {
    fn check<'a>(
        &'a self,
        ctx: &'a Ctx,
        from: &'a Jid,
        to: &'a Jid,
        el: &'a Element,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            if !is_local_user(ctx, from) || !blocks(ctx, &from.bare(), to).await {
                return Verdict::Pass;
            }
            // XEP-0191 §3.4.2: the user may not talk to whom they blocked.
            match Kind::of(el) {
                Some(Kind::Presence) => Verdict::Drop,
                _ if matches!(stanza_type(el), "error" | "result") => Verdict::Drop,
                _ => {
                    let mut e = stanza::error(
                        ErrorType::Cancel,
                        Cond::NotAcceptable,
                        Some("you have blocked this contact"),
                    );
                    e.other = Some(Element::bare("blocked", ns::BLOCKING_ERRORS));
                    Verdict::Reject(Box::new(e))
                }
            }
        })
    }
}

impl Filter for AsRecipient {
    fn check<'a>(
        &'a self,
        ctx: &'a Ctx,
        from: &'a Jid,
        to: &'a Jid,
        el: &'a Element,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            if !blocks(ctx, &to.bare(), from).await {
                return Verdict::Pass;
            }
            // XEP-0191 §3.4.1: presence silently dropped; messages and IQ
            // get/set answered with service-unavailable, as if nobody were
            // there.
            match (Kind::of(el), stanza_type(el)) {
                (Some(Kind::Presence), _) => Verdict::Drop,
                (Some(Kind::Iq), "get" | "set") | (Some(Kind::Message), _) => {
                    Verdict::Reject(Box::new(simple_error(Cond::ServiceUnavailable, None)))
                }
                _ => Verdict::Drop,
            }
        })
    }
}

/// What of a presence a contact at `level` sees: `public` only available
/// or unavailable, `business` also `show`, `team` and `private` all of it.
fn shape(level: Level, p: &mut Element) {
    match level {
        Level::Blocked | Level::Public => stanza::retain_children(p, |_| false),
        Level::Business => stanza::retain_children(p, |c| c.is("show", ns::CLIENT)),
        Level::Team | Level::Private => {}
    }
}

/// Presence detail by level, as it goes to each subscriber.
struct PresenceDetail;

impl Processor for PresenceDetail {
    fn process<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        from: &'a Jid,
        to: &'a Jid,
        el: &'a mut Element,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if !el.is("presence", ns::CLIENT)
                || !matches!(stanza_type(el), "" | "unavailable")
                || !is_local_user(ctx, from)
                || from.bare() == to.bare()
            {
                return;
            }
            if let Some((l, _)) = level(ctx, &from.bare(), to).await {
                shape(l, el);
            }
        })
    }
}

/// An `<item/>` saying the level `contact` has and where it comes from.
fn item(contact: &str, level: Level, source: &Source) -> Element {
    let mut attrs = vec![("jid", contact), ("level", level.name())];
    match source {
        Source::Override => attrs.push(("source", "override")),
        Source::Blocklist { item } => {
            attrs.push(("source", "blocklist"));
            attrs.push(("item", item));
        }
        Source::Group { from, to } => {
            attrs.push(("source", "group"));
            attrs.push(("from-group", from));
            attrs.push(("to-group", to));
        }
        Source::DefaultLocal => attrs.push(("source", "default-local")),
        Source::DefaultRemote => attrs.push(("source", "default-remote")),
    }
    element("item", ns::AUTHZ, &attrs)
}

/// A contact named by an `<item/>`: a user's bare JID, not the owner's.
#[allow(clippy::result_large_err)]
fn contact(owner: &BareJid, i: &Element) -> Result<BareJid, StanzaError> {
    let j = i
        .attr("jid")
        .ok_or_else(|| bad_request("an item needs a 'jid'"))?;
    let j = Jid::new(j).map_err(|_| simple_error(Cond::JidMalformed, Some(j)))?;
    if j.resource().is_some() || j.node().is_none() {
        return Err(bad_request(
            "a level is granted to a user's bare JID (user@domain)",
        ));
    }
    let j = j.to_bare();
    if j == *owner {
        return Err(bad_request("you do not grant yourself a level"));
    }
    Ok(j)
}

/// `urn:confab:authz:0`: get levels, set and unset overrides.
struct Protocol;

impl IqHandler for Protocol {
    fn handle<'a>(&'a self, ctx: &'a Arc<Ctx>, req: IqRequest) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let owner = req.owner_only("only you see and set the levels you grant")?;
            let q = &req.payload;
            if q.name() != "query" {
                return Err(bad_request("the payload is <query/>"));
            }
            let items: Vec<&Element> = q.children().filter(|c| c.is("item", ns::AUTHZ)).collect();
            match req.typ {
                IqType::Get => {
                    if let Ok(full) = req.from.clone().try_into_full() {
                        ctx.sessions.set_interest(&full, Interest::Authz, true);
                    }
                    let authz = &ctx.config.authz;
                    let mut r = element(
                        "query",
                        ns::AUTHZ,
                        &[
                            ("default-local", authz.default_local.name()),
                            ("default-remote", authz.default_remote.name()),
                        ],
                    );
                    if items.is_empty() {
                        let choices = ctx
                            .levels
                            .choices(&ctx.stores, &owner)
                            .await
                            .map_err(|e| store_failed("reading levels", e))?;
                        for (j, l) in choices.overrides() {
                            r.append_child(item(&j, l, &Source::Override));
                        }
                        return Ok(Some(r));
                    }
                    for i in items {
                        let c = contact(&owner, i)?;
                        let (l, s) = level(ctx, &owner, &Jid::from(c.clone()))
                            .await
                            .ok_or_else(|| simple_error(Cond::InternalServerError, None))?;
                        r.append_child(item(c.as_str(), l, &s));
                    }
                    Ok(Some(r))
                }
                IqType::Set => {
                    if items.is_empty() {
                        return Err(bad_request("nothing to set: no <item/>"));
                    }
                    // Every item is checked before anything changes.
                    let mut changes = Vec::new();
                    for i in items {
                        let c = contact(&owner, i)?;
                        let l = i
                            .attr("level")
                            .map(Level::parse)
                            .transpose()
                            .map_err(|e| bad_request(&e))?;
                        changes.push((c, l));
                    }
                    let d = ctx
                        .levels
                        .change(&ctx.stores, &owner, |c, d| {
                            for (j, l) in &changes {
                                c.set(j, *l, d);
                            }
                        })
                        .await
                        .map_err(|e| change_failed("storing levels", e))?;
                    tracing::debug!(user = %owner, n = changes.len(), "levels overridden");
                    applied(ctx, &owner, &d).await;
                    Ok(None)
                }
            }
        })
    }
}

/// The error for a change of choices that was not made.
pub fn change_failed(what: &str, e: ChangeError) -> StanzaError {
    match e {
        ChangeError::Store(e) => store_failed(what, e),
        ChangeError::TooMany => stanza::error(
            ErrorType::Modify,
            Cond::PolicyViolation,
            Some(&format!(
                "at most {MAX_CHOICES} blocked JIDs and levels are kept per user"
            )),
        ),
    }
}

/// Announce a change of `user`'s choices: XEP-0191 pushes for the block
/// list items, `urn:confab:authz:0` pushes with the new level of each
/// contact whose override changed, and to each contact whose level
/// changed and who may see the user's presence, that presence as the new
/// level allows (unavailable when it is `blocked`).
pub async fn applied(ctx: &Arc<Ctx>, user: &BareJid, d: &Delta) {
    if !d.blocked.is_empty() {
        blocklist_push(ctx, user, "block", &d.blocked);
    }
    if d.unblocked_all {
        blocklist_push(ctx, user, "unblock", &[]);
    } else if !d.unblocked.is_empty() {
        blocklist_push(ctx, user, "unblock", &d.unblocked);
    }
    if !d.contacts.is_empty() {
        let mut q = Element::bare("query", ns::AUTHZ);
        for c in &d.contacts {
            let Ok(j) = Jid::new(c) else { continue };
            if let Some((l, s)) = level(ctx, user, &j).await {
                q.append_child(item(c, l, &s));
            }
        }
        super::push(ctx, user, Interest::Authz, &q);
    }
    let mut items: Vec<String> = d
        .blocked
        .iter()
        .chain(&d.unblocked)
        .chain(&d.contacts)
        .cloned()
        .collect();
    items.sort();
    items.dedup();
    // Parsed once: a change may name thousands of items.
    let parsed: Vec<(String, Option<Jid>)> = items
        .into_iter()
        .map(|i| {
            let j = Jid::new(&i).ok();
            (i, j)
        })
        .collect();
    let audience = presence_audience(ctx, user, |c| {
        parsed.iter().find_map(|(i, item)| match item {
            // An item for one resource of the contact.
            Some(item) if item.resource().is_some() && item.bare() == c.bare() => {
                Some(item.clone())
            }
            _ => crate::policy::levels::item_matches(i, c).then(|| c.clone()),
        })
    })
    .await;
    reannounce(ctx, user, audience).await;
}

/// Tell the user's resources that asked for the block list (XEP-0191
/// §3.3).
fn blocklist_push(ctx: &Ctx, user: &BareJid, what: &str, jids: &[String]) {
    let mut b = Element::bare(what, ns::BLOCKING);
    for j in jids {
        b.append_child(element("item", ns::BLOCKING, &[("jid", j)]));
    }
    super::push(ctx, user, Interest::BlockList, &b);
}

/// Those of `user`'s contacts who may see the user's presence and whom
/// `pick` names (the address to tell: the contact, or one resource).
async fn presence_audience(
    ctx: &Ctx,
    user: &BareJid,
    pick: impl Fn(&Jid) -> Option<Jid>,
) -> Vec<Jid> {
    super::roster::contacts(ctx, user, |i| i.subscription.has_from())
        .await
        .into_iter()
        .filter_map(|c| Jid::new(&c.jid).ok())
        .filter_map(|c| pick(&c))
        .collect()
}

/// `user`'s presence as each of `contacts` may see it now: unavailable
/// where the user blocks them, else the current presence as their level
/// shapes it.
async fn reannounce(ctx: &Arc<Ctx>, user: &BareJid, contacts: Vec<Jid>) {
    if !ctx.sessions.is_available(user) {
        // They see the user unavailable already.
        return;
    }
    for c in contacts {
        if blocks(ctx, user, &c).await {
            super::presence::send_unavailable_to(ctx, user, &c).await;
        } else {
            super::presence::send_current_to(ctx, user, &c).await;
        }
    }
}

/// After group memberships or policies changed (an admin's doing): the
/// levels `owners` grant may have changed for those of their subscribers
/// in `contacts` (all of them when `None`); each gets the presence it may
/// see now.
pub async fn groups_changed(ctx: &Arc<Ctx>, owners: &[BareJid], contacts: Option<&[String]>) {
    ctx.levels.groups_changed();
    for o in owners {
        if !ctx.sessions.is_available(o) {
            continue;
        }
        let audience = presence_audience(ctx, o, |c| {
            contacts
                .is_none_or(|cs| cs.iter().any(|x| x == c.as_str()))
                .then(|| c.clone())
        })
        .await;
        reannounce(ctx, o, audience).await;
    }
}

/// After `user` joined or left a group: the levels it grants may have
/// changed, and those local users who let it see their presence grant it.
pub async fn member_changed(ctx: &Arc<Ctx>, user: &BareJid) {
    groups_changed(ctx, std::slice::from_ref(user), None).await;
    let watched = super::roster::contacts(ctx, user, |i| i.subscription.has_to()).await;
    let owners: Vec<BareJid> = watched
        .into_iter()
        .filter_map(|i| BareJid::new(&i.jid).ok())
        .filter(|j| j.domain().as_str() == ctx.domain)
        .collect();
    groups_changed(ctx, &owners, Some(&[user.to_string()])).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_detail_by_level() {
        let p = crate::xml::parse(
            "<presence xmlns='jabber:client' from='a@x/r' to='b@x'><show>away</show>\
             <status>lunch</status><priority>5</priority>\
             <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v'/></presence>",
        )
        .unwrap();
        let names = |l: Level| {
            let mut q = p.clone();
            shape(l, &mut q);
            assert_eq!(q.attr("from"), Some("a@x/r"));
            q.children()
                .map(|c| c.name().to_string())
                .collect::<Vec<_>>()
        };
        assert!(names(Level::Public).is_empty());
        assert_eq!(names(Level::Business), ["show"]);
        assert_eq!(names(Level::Team), ["show", "status", "priority", "c"]);
        assert_eq!(names(Level::Private).len(), 4);
    }
}

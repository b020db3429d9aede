//! Blocking command (XEP-0191): a per-user block list; stanzas between a
//! user and a blocked JID are stopped in both directions by the filters.

use crate::stanza::Bare;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use minidom::Element;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::stanza_error::{DefinedCondition as Cond, ErrorType};

use super::{Filter, IqHandler, IqRequest, IqResult, IqType, Point, Registry, Target, Verdict};
use crate::server::Ctx;
use crate::sessions::Interest;
use crate::stanza::{self, element, simple_error, stanza_type, Kind};
use crate::store::BoxFuture;
use crate::xml::ns;

const KEY: &str = "blocklist";

pub fn register(r: &mut Registry) {
    let m = Arc::new(Blocking::default());
    r.server_feature(ns::BLOCKING);
    r.iq(ns::BLOCKING, false, true, m.clone());
    r.filter(Point::Outbound, Arc::new(OutboundFilter(m.clone())));
    r.filter(Point::Deliver, Arc::new(DeliverFilter(m)));
}

/// Block lists, cached in memory (read on every stanza, rarely written).
#[derive(Default)]
struct Blocking {
    cache: RwLock<HashMap<BareJid, Arc<Vec<String>>>>,
}

impl Blocking {
    async fn list(&self, ctx: &Ctx, user: &BareJid) -> Arc<Vec<String>> {
        if let Some(l) = self.cache.read().ok().and_then(|c| c.get(user).cloned()) {
            return l;
        }
        let list: Vec<String> = ctx
            .stores
            .userdata
            .get(user, KEY)
            .await
            .ok()
            .flatten()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        let list = Arc::new(list);
        if let Ok(mut c) = self.cache.write() {
            if c.len() > 100_000 {
                c.clear();
            }
            c.insert(user.clone(), list.clone());
        }
        list
    }

    async fn save(&self, ctx: &Ctx, user: &BareJid, list: Vec<String>) -> Result<(), ()> {
        let json = serde_json::to_string(&list).map_err(|_| ())?;
        ctx.stores
            .userdata
            .put(user, KEY, Some(json))
            .await
            .map_err(|e| tracing::error!(error = %e, "block list storage failed"))?;
        if let Ok(mut c) = self.cache.write() {
            c.insert(user.clone(), Arc::new(list));
        }
        Ok(())
    }

    async fn blocks(&self, ctx: &Ctx, user: &BareJid, other: &Jid) -> bool {
        let list = self.list(ctx, user).await;
        list.iter().any(|i| item_matches(i, other))
    }
}

/// XEP-0191 §3.4 matching: a list item blocks a JID if it equals the full
/// JID, the bare JID, the domain plus resource, or the domain.
fn item_matches(item: &str, other: &Jid) -> bool {
    let domain = other.domain().as_str();
    item == other.as_str()
        || item == other.bare().as_str()
        || item == domain
        || other.resource().is_some_and(|r| {
            item.strip_prefix(domain).and_then(|x| x.strip_prefix('/')) == Some(r.as_str())
        })
}

/// Where presence changes for the items `items`: the user's contacts who
/// are allowed to see the user's presence and whom an item covers (the
/// contact, or the one resource an item names).
async fn presence_audience(ctx: &Ctx, user: &BareJid, items: &[String]) -> Vec<Jid> {
    let contacts = super::roster::contacts(ctx, user, |i| i.subscription.has_from()).await;
    let mut out = Vec::new();
    for c in contacts {
        let Ok(contact) = Jid::new(&c.jid) else {
            continue;
        };
        for i in items {
            let Ok(item) = Jid::new(i) else { continue };
            if item.resource().is_some() && item.bare() == contact.bare() {
                // A block of one resource of the contact.
                out.push(item);
            } else if item_matches(i, &contact) {
                out.push(contact.clone());
                break;
            }
        }
    }
    out
}

struct OutboundFilter(Arc<Blocking>);
struct DeliverFilter(Arc<Blocking>);

fn is_local_user(ctx: &Ctx, j: &Jid) -> bool {
    ctx.is_account_address(j.node().is_some(), j.domain().as_str())
}

impl Filter for OutboundFilter {
    fn check<'a>(
        &'a self,
        ctx: &'a Ctx,
        from: &'a Jid,
        to: &'a Jid,
        el: &'a Element,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            if !is_local_user(ctx, from) || !self.0.blocks(ctx, &from.bare(), to).await {
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

impl Filter for DeliverFilter {
    fn check<'a>(
        &'a self,
        ctx: &'a Ctx,
        from: &'a Jid,
        to: &'a Jid,
        el: &'a Element,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            if !self.0.blocks(ctx, &to.bare(), from).await {
                return Verdict::Pass;
            }
            // XEP-0191 §3.4.1: presence silently dropped; messages and IQ
            // get/set answered with service-unavailable, as if nobody were there.
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

fn items(payload: &Element) -> Result<Vec<String>, Cond> {
    let mut out = Vec::new();
    for i in payload.children().filter(|c| c.is("item", ns::BLOCKING)) {
        let j = i.attr("jid").ok_or(Cond::BadRequest)?;
        let j = Jid::new(j).map_err(|_| Cond::JidMalformed)?;
        out.push(j.to_string());
    }
    Ok(out)
}

impl IqHandler for Blocking {
    fn handle<'a>(&'a self, ctx: &'a Arc<Ctx>, req: IqRequest) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            let Target::Account(user) = &req.target else {
                return Err(simple_error(Cond::ServiceUnavailable, None));
            };
            if !req.is_self() {
                return Err(simple_error(Cond::Forbidden, None));
            }
            let p = &req.payload;
            match (req.typ, p.name()) {
                (IqType::Get, "blocklist") => {
                    if let Ok(full) = req.from.clone().try_into_full() {
                        ctx.sessions.set_interest(&full, Interest::BlockList, true);
                    }
                    let mut r = Element::bare("blocklist", ns::BLOCKING);
                    for j in self.list(ctx, user).await.iter() {
                        r.append_child(element("item", ns::BLOCKING, &[("jid", j)]));
                    }
                    Ok(Some(r))
                }
                (IqType::Set, "block") => {
                    let new = items(p).map_err(|c| simple_error(c, None))?;
                    if new.is_empty() {
                        return Err(simple_error(Cond::BadRequest, Some("nothing to block")));
                    }
                    let mut list = (*self.list(ctx, user).await).clone();
                    let mut added = Vec::new();
                    for j in new {
                        if !list.contains(&j) {
                            list.push(j.clone());
                            added.push(j);
                        }
                    }
                    self.save(ctx, user, list)
                        .await
                        .map_err(|_| simple_error(Cond::InternalServerError, None))?;
                    push(ctx, user, "block", &added);
                    // A blocked contact that could see the user's presence
                    // stops seeing it (§3.3); nobody else learns anything.
                    for j in presence_audience(ctx, user, &added).await {
                        super::presence::send_unavailable_to(ctx, user, &j).await;
                    }
                    Ok(None)
                }
                (IqType::Set, "unblock") => {
                    let which = items(p).map_err(|c| simple_error(c, None))?;
                    let list = (*self.list(ctx, user).await).clone();
                    let (removed, kept): (Vec<String>, Vec<String>) = if which.is_empty() {
                        (list, Vec::new())
                    } else {
                        list.into_iter().partition(|j| which.contains(j))
                    };
                    self.save(ctx, user, kept)
                        .await
                        .map_err(|_| simple_error(Cond::InternalServerError, None))?;
                    push(
                        ctx,
                        user,
                        "unblock",
                        if which.is_empty() { &[] } else { &removed },
                    );
                    // Contacts that may see the user's presence get it again.
                    for j in presence_audience(ctx, user, &removed).await {
                        super::presence::send_current_to(ctx, user, &j).await;
                    }
                    Ok(None)
                }
                _ => Err(simple_error(Cond::BadRequest, None)),
            }
        })
    }
}

/// Tell the user's resources that asked for the list (XEP-0191 §3.3).
fn push(ctx: &Ctx, user: &BareJid, what: &str, jids: &[String]) {
    let mut b = Element::bare(what, ns::BLOCKING);
    for j in jids {
        b.append_child(element("item", ns::BLOCKING, &[("jid", j)]));
    }
    super::push(ctx, user, Interest::BlockList, &b);
}

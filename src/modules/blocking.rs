//! Blocking command (XEP-0191): the protocol. The block list is part of
//! a user's authorization choices (`policy::levels`): a blocked bare JID
//! is the `blocked` level, so `urn:confab:authz:0` shows it and changes
//! it too; `authz.rs` stops the stanzas and announces changes.

use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::stanza_error::DefinedCondition as Cond;

use super::{store_failed, IqHandler, IqRequest, IqResult, IqType, Registry, Target};
use crate::server::Ctx;
use crate::sessions::Interest;
use crate::stanza::{element, simple_error};
use crate::store::BoxFuture;
use crate::xml::ns;

pub fn register(r: &mut Registry) {
    r.server_feature(ns::BLOCKING);
    r.iq(ns::BLOCKING, false, true, Arc::new(Blocking));
}

struct Blocking;

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
            let d = match (req.typ, p.name()) {
                (IqType::Get, "blocklist") => {
                    if let Ok(full) = req.from.clone().try_into_full() {
                        ctx.sessions.set_interest(&full, Interest::BlockList, true);
                    }
                    let choices = ctx
                        .levels
                        .choices(&ctx.stores, user)
                        .await
                        .map_err(|e| store_failed("reading the block list", e))?;
                    let mut r = Element::bare("blocklist", ns::BLOCKING);
                    for j in &choices.blocklist {
                        r.append_child(element("item", ns::BLOCKING, &[("jid", j)]));
                    }
                    return Ok(Some(r));
                }
                (IqType::Set, "block") => {
                    let new = items(p).map_err(|c| simple_error(c, None))?;
                    if new.is_empty() {
                        return Err(simple_error(Cond::BadRequest, Some("nothing to block")));
                    }
                    ctx.levels
                        .change(&ctx.stores, user, |c, d| {
                            c.block(&new, d);
                        })
                        .await
                }
                (IqType::Set, "unblock") => {
                    let which = items(p).map_err(|c| simple_error(c, None))?;
                    ctx.levels
                        .change(&ctx.stores, user, |c, d| {
                            c.unblock(&which, d);
                        })
                        .await
                }
                _ => return Err(simple_error(Cond::BadRequest, None)),
            }
            .map_err(|e| super::authz::change_failed("storing the block list", e))?;
            // Pushes (§3.3), and a blocked contact that could see the
            // user's presence stops seeing it; nobody else learns anything.
            super::authz::applied(ctx, user, &d).await;
            Ok(None)
        })
    }
}

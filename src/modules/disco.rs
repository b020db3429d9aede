//! Service Discovery (XEP-0030) for the server and for accounts.

use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition as Cond;

use super::{IqHandler, IqRequest, IqResult, IqType, Registry, Target};
use crate::server::Ctx;
use crate::stanza::{element, simple_error};
use crate::store::BoxFuture;
use crate::xml::ns;

pub fn register(r: &mut Registry) {
    r.server_feature(ns::DISCO_INFO);
    r.server_feature(ns::DISCO_ITEMS);
    r.account_feature(ns::DISCO_INFO);
    r.iq(ns::DISCO_INFO, true, true, Arc::new(Info));
    r.iq(ns::DISCO_ITEMS, true, true, Arc::new(Items));
}

struct Info;
struct Items;

/// May `req.from` see the account's disco information? Its owner and the
/// contacts it shares presence with (as Prosody does).
async fn may_see(ctx: &Ctx, req: &IqRequest, user: &xmpp_parsers::jid::BareJid) -> bool {
    if req.is_self() {
        return true;
    }
    let item = ctx
        .stores
        .rosters
        .item(user, req.from.to_bare().as_str())
        .await
        .ok()
        .flatten();
    item.is_some_and(|i| i.subscription.has_from())
}

impl IqHandler for Info {
    fn handle<'a>(&'a self, ctx: &'a Arc<Ctx>, req: IqRequest) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            if req.typ != IqType::Get {
                return Err(simple_error(Cond::BadRequest, None));
            }
            if let Some(node) = req.payload.attr("node") {
                // A node of an account (PEP) or of the server (commands):
                // the feature that keeps it.
                match &req.target {
                    Target::Account(user) => {
                        for d in ctx.registry.account_discos() {
                            if let Some(r) = d.node_info(ctx, user, &req.from, node).await {
                                return r;
                            }
                        }
                    }
                    Target::Server => {
                        for n in ctx.registry.server_node_providers() {
                            if let Some(r) = n.info(ctx, &req.from, node) {
                                return r;
                            }
                        }
                    }
                }
                return Err(simple_error(Cond::ItemNotFound, None));
            }
            let mut q = Element::bare("query", ns::DISCO_INFO);
            let features = match &req.target {
                Target::Server => {
                    q.append_child(element(
                        "identity",
                        ns::DISCO_INFO,
                        &[("category", "server"), ("type", "im"), ("name", "Confab")],
                    ));
                    ctx.registry.server_features()
                }
                Target::Account(user) => {
                    if !may_see(ctx, &req, user).await {
                        return Err(simple_error(Cond::ServiceUnavailable, None));
                    }
                    q.append_child(element(
                        "identity",
                        ns::DISCO_INFO,
                        &[("category", "account"), ("type", "registered")],
                    ));
                    for (category, typ) in ctx.registry.account_identities() {
                        q.append_child(element(
                            "identity",
                            ns::DISCO_INFO,
                            &[("category", category), ("type", typ)],
                        ));
                    }
                    ctx.registry.account_features()
                }
            };
            let mut sorted: Vec<&str> = features.to_vec();
            sorted.sort_unstable();
            for f in sorted {
                q.append_child(element("feature", ns::DISCO_INFO, &[("var", f)]));
            }
            Ok(Some(q))
        })
    }
}

impl IqHandler for Items {
    fn handle<'a>(&'a self, ctx: &'a Arc<Ctx>, req: IqRequest) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            if req.typ != IqType::Get {
                return Err(simple_error(Cond::BadRequest, None));
            }
            if let Target::Account(user) = &req.target {
                if !may_see(ctx, &req, user).await {
                    return Err(simple_error(Cond::ServiceUnavailable, None));
                }
            }
            if let Some(node) = req.payload.attr("node") {
                if req.target == Target::Server {
                    for n in ctx.registry.server_node_providers() {
                        if let Some(items) = n.items(ctx, &req.from, node) {
                            let mut q = element("query", ns::DISCO_ITEMS, &[("node", node)]);
                            for it in items {
                                q.append_child(it);
                            }
                            return Ok(Some(q));
                        }
                    }
                }
                return Err(simple_error(Cond::ItemNotFound, None));
            }
            let mut q = Element::bare("query", ns::DISCO_ITEMS);
            match &req.target {
                Target::Server => {
                    // The services on subdomains (rooms. …).
                    for d in ctx.registry.component_domains() {
                        q.append_child(element("item", ns::DISCO_ITEMS, &[("jid", d)]));
                    }
                }
                Target::Account(user) => {
                    // Its nodes the requester may see (PEP).
                    for d in ctx.registry.account_discos() {
                        for it in d.items(ctx, user, &req.from).await {
                            q.append_child(it);
                        }
                    }
                }
            }
            Ok(Some(q))
        })
    }
}

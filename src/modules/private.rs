//! Private XML Storage (XEP-0049): arbitrary XML kept per account, keyed by
//! the element's name and namespace.

use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition as Cond;

use super::{IqHandler, IqRequest, IqResult, IqType, Registry};
use crate::server::Ctx;
use crate::stanza::simple_error;
use crate::store::BoxFuture;
use crate::xml::{ns, writer};

pub fn register(r: &mut Registry) {
    r.server_feature(ns::PRIVATE);
    r.iq(ns::PRIVATE, false, true, Arc::new(Private));
}

struct Private;

/// Every private document's key starts with this: the quota counts them
/// together.
const CLASS: &str = "private/";

fn key(el: &Element) -> String {
    format!("{CLASS}{}/{}", el.ns(), el.name())
}

fn internal(e: crate::store::StoreError) -> xmpp_parsers::stanza_error::StanzaError {
    tracing::error!(error = %e, "private storage failed");
    simple_error(Cond::InternalServerError, None)
}

impl IqHandler for Private {
    fn handle<'a>(&'a self, ctx: &'a Arc<Ctx>, req: IqRequest) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            if !req.is_self() {
                return Err(simple_error(
                    Cond::Forbidden,
                    Some("private data belongs to its own account"),
                ));
            }
            let user = req.from.to_bare();
            let q = &req.payload;
            if !q.is("query", ns::PRIVATE) {
                return Err(simple_error(Cond::BadRequest, None));
            }
            let children: Vec<&Element> = q.children().collect();
            if children.is_empty() {
                return Err(simple_error(
                    Cond::BadRequest,
                    Some("name the data to store or fetch"),
                ));
            }
            // XEP-0049 §2.3: the jabber: namespaces are not for storage.
            if children.iter().any(|c| c.ns().starts_with("jabber:")) {
                return Err(simple_error(Cond::NotAcceptable, None));
            }
            match req.typ {
                IqType::Get => {
                    if children.len() != 1 {
                        return Err(simple_error(
                            Cond::BadRequest,
                            Some("fetch one element at a time"),
                        ));
                    }
                    let want = children[0];
                    let stored = ctx
                        .stores
                        .userdata
                        .get(&user, &key(want))
                        .await
                        .map_err(internal)?;
                    let el = stored
                        .and_then(|s| crate::xml::parse(&s).ok())
                        .unwrap_or_else(|| Element::bare(want.name(), want.ns()));
                    let mut r = Element::bare("query", ns::PRIVATE);
                    r.append_child(el);
                    Ok(Some(r))
                }
                IqType::Set => {
                    let max = ctx.config.limits.max_private_bytes;
                    for c in children {
                        let xml = writer::to_string(c);
                        let stored = ctx
                            .stores
                            .userdata
                            .put_within(&user, CLASS, &key(c), Some(xml), max)
                            .await
                            .map_err(internal)?;
                        if !stored {
                            return Err(simple_error(
                                Cond::ResourceConstraint,
                                Some(&format!(
                                    "private storage is limited to {max} bytes per account"
                                )),
                            ));
                        }
                    }
                    Ok(None)
                }
            }
        })
    }
}

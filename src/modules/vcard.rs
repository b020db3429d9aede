//! vcard-temp (XEP-0054): each account's vCard, readable by anyone who may
//! send it an IQ, writable only by its owner.

use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition as Cond;

use super::{IqHandler, IqRequest, IqResult, IqType, Registry, Target};
use crate::server::Ctx;
use crate::stanza::simple_error;
use crate::store::BoxFuture;
use crate::xml::{ns, writer};

const KEY: &str = "vcard";

pub fn register(r: &mut Registry) {
    r.server_feature(ns::VCARD);
    r.iq(ns::VCARD, true, true, Arc::new(VCard));
}

struct VCard;

impl IqHandler for VCard {
    fn handle<'a>(&'a self, ctx: &'a Arc<Ctx>, req: IqRequest) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            if !req.payload.is("vCard", ns::VCARD) {
                return Err(simple_error(Cond::BadRequest, None));
            }
            let user = match &req.target {
                Target::Account(u) => u.clone(),
                // The server's own vCard: empty.
                Target::Server => {
                    return match req.typ {
                        IqType::Get => Ok(Some(Element::bare("vCard", ns::VCARD))),
                        IqType::Set => Err(simple_error(Cond::Forbidden, None)),
                    };
                }
            };
            match req.typ {
                IqType::Get => {
                    let stored = ctx.stores.userdata.get(&user, KEY).await.map_err(|e| {
                        tracing::error!(error = %e, "vcard storage failed");
                        simple_error(Cond::InternalServerError, None)
                    })?;
                    // XEP-0054 §3.1: no vCard is an empty one.
                    let el = stored
                        .and_then(|s| crate::xml::parse(&s).ok())
                        .unwrap_or_else(|| Element::bare("vCard", ns::VCARD));
                    Ok(Some(el))
                }
                IqType::Set => {
                    if !req.is_self() {
                        return Err(simple_error(
                            Cond::Forbidden,
                            Some("only the owner may change a vCard"),
                        ));
                    }
                    let xml = writer::to_string(&req.payload);
                    let max = ctx.config.limits.max_vcard_bytes;
                    let stored = ctx
                        .stores
                        .userdata
                        .put_within(&user, KEY, KEY, Some(xml), max)
                        .await
                        .map_err(|e| {
                            tracing::error!(error = %e, "vcard storage failed");
                            simple_error(Cond::InternalServerError, None)
                        })?;
                    if !stored {
                        return Err(simple_error(
                            Cond::PolicyViolation,
                            Some(&format!("a vCard is limited to {max} bytes")),
                        ));
                    }
                    Ok(None)
                }
            }
        })
    }
}

//! Session establishment (RFC 3921 §3), kept for old clients: a no-op
//! advertised as optional in the stream features.

use std::sync::Arc;

use super::{IqHandler, IqRequest, IqResult, IqType, Registry};
use crate::server::Ctx;
use crate::stanza::simple_error;
use crate::store::BoxFuture;
use crate::xml::ns;
use xmpp_parsers::stanza_error::DefinedCondition as Cond;

pub fn register(r: &mut Registry) {
    r.iq(ns::SESSION, true, true, Arc::new(Session));
}

struct Session;

impl IqHandler for Session {
    fn handle<'a>(&'a self, _ctx: &'a Arc<Ctx>, req: IqRequest) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            if req.typ == IqType::Set {
                Ok(None)
            } else {
                Err(simple_error(Cond::BadRequest, None))
            }
        })
    }
}

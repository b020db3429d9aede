//! XMPP Ping (XEP-0199): the server answers pings to itself and, on their
//! behalf, to accounts' bare JIDs.

use std::sync::Arc;

use super::{IqHandler, IqRequest, IqResult, IqType, Registry};
use crate::server::Ctx;
use crate::stanza::simple_error;
use crate::store::BoxFuture;
use crate::xml::ns;
use xmpp_parsers::stanza_error::DefinedCondition as Cond;

pub fn register(r: &mut Registry) {
    r.server_feature(ns::PING);
    r.iq(ns::PING, true, true, Arc::new(Ping));
}

struct Ping;

impl IqHandler for Ping {
    fn handle<'a>(&'a self, _ctx: &'a Arc<Ctx>, req: IqRequest) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            if req.typ == IqType::Get && req.payload.name() == "ping" {
                Ok(None)
            } else {
                Err(simple_error(Cond::BadRequest, None))
            }
        })
    }
}

//! Entity Time (XEP-0202): the server's clock, in UTC.

use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition as Cond;

use super::{IqHandler, IqRequest, IqResult, IqType, Registry};
use crate::server::Ctx;
use crate::stanza::{now_stamp, simple_error};
use crate::store::BoxFuture;
use crate::xml::ns;

pub fn register(r: &mut Registry) {
    r.server_feature(ns::TIME);
    r.iq(ns::TIME, true, false, Arc::new(Time));
}

struct Time;

impl IqHandler for Time {
    fn handle<'a>(&'a self, _ctx: &'a Arc<Ctx>, req: IqRequest) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            if req.typ != IqType::Get {
                return Err(simple_error(Cond::BadRequest, None));
            }
            let mut t = Element::bare("time", ns::TIME);
            let mut tzo = Element::bare("tzo", ns::TIME);
            tzo.append_text("+00:00");
            let mut utc = Element::bare("utc", ns::TIME);
            utc.append_text(now_stamp());
            t.append_child(tzo);
            t.append_child(utc);
            Ok(Some(t))
        })
    }
}

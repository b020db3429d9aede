//! Software Version (XEP-0092) of the server. The operating system is not
//! disclosed.

use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition as Cond;

use super::{IqHandler, IqRequest, IqResult, IqType, Registry};
use crate::server::Ctx;
use crate::stanza::simple_error;
use crate::store::BoxFuture;
use crate::xml::ns;

pub fn register(r: &mut Registry) {
    r.server_feature(ns::VERSION);
    r.iq(ns::VERSION, true, false, Arc::new(Version));
}

struct Version;

fn text(name: &str, value: &str) -> Element {
    let mut e = Element::bare(name, ns::VERSION);
    e.append_text(value);
    e
}

impl IqHandler for Version {
    fn handle<'a>(&'a self, _ctx: &'a Arc<Ctx>, req: IqRequest) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            if req.typ != IqType::Get {
                return Err(simple_error(Cond::BadRequest, None));
            }
            let mut q = Element::bare("query", ns::VERSION);
            q.append_child(text("name", "Confab"));
            q.append_child(text("version", env!("CARGO_PKG_VERSION")));
            Ok(Some(q))
        })
    }
}

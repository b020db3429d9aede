//! Read status never leaves the server (PRODUCT.md §4): XEP-0333
//! `displayed` and `acknowledged` markers are removed from messages going
//! to, and coming from, any other server. A message that carried nothing
//! else (only processing hints, ids or a thread are left) is dropped.
//! XEP-0184 receipts and `received` markers pass: they say a message
//! arrived, not that it was read.
//!
//! One border rule, both directions. On the local side the stanza stays as
//! the user sent it: carbons are made before routing, and the sender's
//! archive and journal run before the border (`Stage::BeforeRemote`).

use std::sync::Arc;

use minidom::Element;

use super::{BorderRule, Crossing, Registry};
use crate::server::Ctx;
use crate::xml::ns;

pub fn register(r: &mut Registry) {
    r.border_rule(Arc::new(ReadStatus));
}

fn is_read_marker(c: &Element) -> bool {
    c.ns() == ns::MARKERS && matches!(c.name(), "displayed" | "acknowledged")
}

/// What a message may keep and still say nothing.
fn is_envelope(c: &Element) -> bool {
    c.ns() == ns::HINTS || c.ns() == ns::SID || c.is("thread", ns::CLIENT) || c.ns() == ns::DELAY
}

struct ReadStatus;

impl BorderRule for ReadStatus {
    fn cross(&self, _ctx: &Ctx, dir: Crossing, el: Element) -> Option<Element> {
        let out = strip(el);
        if out.is_none() {
            tracing::debug!(?dir, "a read marker stopped at the border");
        }
        out
    }
}

/// The message without its read markers, or `None` when nothing is left.
fn strip(mut el: Element) -> Option<Element> {
    if el.name() != "message" || !el.children().any(is_read_marker) {
        return Some(el);
    }
    crate::stanza::retain_children(&mut el, |c| !is_read_marker(c));
    (!el.children().all(is_envelope)).then_some(el)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(xml: &str) -> Option<String> {
        let el: Element = xml.parse().unwrap();
        strip(el).map(|e| crate::xml::writer::to_string(&e))
    }

    #[test]
    fn markers_stop_receipts_pass() {
        let m = "xmlns='jabber:client'";
        assert_eq!(
            run(&format!(
                "<message {m}><displayed xmlns='urn:xmpp:chat-markers:0' id='1'/></message>"
            )),
            None
        );
        assert_eq!(
            run(&format!("<message {m}><acknowledged xmlns='urn:xmpp:chat-markers:0' id='1'/><store xmlns='urn:xmpp:hints'/></message>")),
            None
        );
        let body = run(&format!(
            "<message {m}><body>hi</body><displayed xmlns='urn:xmpp:chat-markers:0' id='1'/></message>"
        ))
        .unwrap();
        assert!(body.contains("<body>hi</body>") && !body.contains("displayed"));
        let r = format!("<message {m}><received xmlns='urn:xmpp:receipts' id='1'/></message>");
        assert!(run(&r).unwrap().contains("urn:xmpp:receipts"));
        let r =
            format!("<message {m}><received xmlns='urn:xmpp:chat-markers:0' id='1'/></message>");
        assert!(run(&r).unwrap().contains("chat-markers"));
    }
}

//! Links in message bodies (PRODUCT.md §10, XEP-0372): each message with a
//! body that a local client sends, or that comes from another server, gets
//! a `<reference type='data' begin end uri/>` for each phone number,
//! e-mail address, web link and UNC path the recogniser (`crate::links`)
//! finds, before it is archived and delivered. `[links] enabled = false`
//! turns it off; a message carrying `<no-links xmlns='urn:confab:links:0'/>`
//! is left alone. See `xeps/xep-0372.md`.

use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::jid::Jid;

use super::{Processor, Registry, Stage};
use crate::server::Ctx;
use crate::stanza::element;
use crate::store::BoxFuture;
use crate::xml::ns;

pub fn register(r: &mut Registry, config: &crate::config::Config) {
    if !config.links.enabled {
        return;
    }
    let p = Arc::new(Annotate);
    r.processor(Stage::FromClient, p.clone());
    r.processor(Stage::FromRemote, p);
    r.server_feature(ns::LINKS);
}

/// Whether the sender asked for no annotation, or the body is not what
/// the message says (an encrypted message's body is a fallback text).
fn left_alone(el: &Element) -> bool {
    el.has_child("no-links", ns::LINKS)
        || el
            .children()
            .any(|c| matches!(c.name(), "encrypted" | "encryption"))
}

/// Add the references of `el`'s body (the one without `xml:lang`, else
/// the first), leaving out any range a reference already covers.
pub fn annotate(settings: &crate::links::Settings, el: &mut Element) {
    let body = el
        .children()
        .filter(|c| c.is("body", ns::CLIENT))
        .min_by_key(|b| b.attr("xml:lang").is_some())
        .map(|b| b.text());
    let Some(body) = body.filter(|b| !b.is_empty()) else {
        return;
    };
    let taken: Vec<(usize, usize)> = el
        .children()
        .filter(|c| c.is("reference", ns::REFERENCE))
        .filter_map(|r| Some((r.attr("begin")?.parse().ok()?, r.attr("end")?.parse().ok()?)))
        .collect();
    for l in crate::links::find(&body, settings) {
        if taken.iter().any(|&(b, e)| l.begin < e && b < l.end) {
            continue;
        }
        let (begin, end) = (l.begin.to_string(), l.end.to_string());
        el.append_child(element(
            "reference",
            ns::REFERENCE,
            &[
                ("type", "data"),
                ("begin", &begin),
                ("end", &end),
                ("uri", &l.uri),
            ],
        ));
    }
}

struct Annotate;

impl Processor for Annotate {
    fn process<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        _from: &'a Jid,
        _to: &'a Jid,
        el: &'a mut Element,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if el.is("message", ns::CLIENT)
                && !matches!(crate::stanza::stanza_type(el), "error")
                && !left_alone(el)
            {
                annotate(&ctx.config.links, el);
            }
        })
    }
}

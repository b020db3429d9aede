//! Calls and screen sharing (PRODUCT.md §9): Jingle (XEP-0166/0167) and
//! Jingle Message Initiation (XEP-0353) are routed like any stanza; this
//! feature refuses, before they reach anyone, the ones a local user may
//! not start: audio and video need the right `av`, a screen share (and a
//! request to share) `screen_share`. JMI messages to a bare JID ring every
//! resource of the callee. The level the callee grants is checked by the
//! authorization filter like for any stanza. See
//! `xeps/confab-calls.md`.

use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::stanza_error::DefinedCondition as Cond;

use super::{Filter, Point, Registry, Verdict};
use crate::policy::Right;
use crate::server::Ctx;
use crate::stanza::{simple_error, stanza_type, Bare};
use crate::store::BoxFuture;
use crate::xml::ns;

pub fn register(r: &mut Registry) {
    r.filter(Point::Outbound, Arc::new(CallRights));
    r.to_every_resource(is_jmi);
    r.server_feature(ns::SCREEN);
}

/// A Jingle Message Initiation message (it rings, or stops ringing, every
/// resource).
fn is_jmi(el: &Element) -> bool {
    el.name() == "message" && el.children().any(|c| c.ns() == ns::JINGLE_MESSAGE)
}

/// What starting this needs: `av` for audio or video, `screen_share` for a
/// screen (a video description marked `<screen xmlns='urn:confab:screen:0'/>`)
/// or a request to share one.
fn needs(el: &Element) -> Vec<Right> {
    let mut out = Vec::new();
    let mut add = |r: Right| {
        if !out.contains(&r) {
            out.push(r);
        }
    };
    let mut descriptions = |parent: &Element| {
        for d in parent
            .children()
            .filter(|d| d.is("description", ns::JINGLE_RTP))
        {
            if d.has_child("screen", ns::SCREEN) {
                add(Right::ScreenShare);
            } else if matches!(d.attr("media"), Some("audio" | "video")) {
                add(Right::Av);
            }
        }
    };
    match el.name() {
        "message" => {
            if let Some(p) = el.get_child("propose", ns::JINGLE_MESSAGE) {
                descriptions(p);
            }
            if el.has_child("share-request", ns::SCREEN) {
                add(Right::ScreenShare);
            }
        }
        "iq" if stanza_type(el) == "set" => {
            if let Some(j) = el.get_child("jingle", ns::JINGLE) {
                if matches!(j.attr("action"), Some("session-initiate" | "content-add")) {
                    for c in j.children().filter(|c| c.is("content", ns::JINGLE)) {
                        descriptions(c);
                    }
                }
            }
        }
        _ => {}
    }
    out
}

/// Calls and shares a local user starts, checked against their rights.
struct CallRights;

impl Filter for CallRights {
    fn check<'a>(
        &'a self,
        ctx: &'a Ctx,
        from: &'a Jid,
        _to: &'a Jid,
        el: &'a Element,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            if !ctx.is_account_address(from.node().is_some(), from.domain().as_str()) {
                return Verdict::Pass;
            }
            let user = from.bare();
            for right in needs(el) {
                match crate::policy::has_right(&ctx.stores, &user, right).await {
                    Ok(true) => {}
                    Ok(false) => {
                        let what = match right {
                            Right::ScreenShare => "sharing a screen",
                            _ => "audio and video calls",
                        };
                        let text = format!(
                            "{what} need the right {}, which an administrator grants",
                            right.name()
                        );
                        return Verdict::Reject(Box::new(simple_error(
                            Cond::Forbidden,
                            Some(&text),
                        )));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reading rights failed");
                        return Verdict::Reject(Box::new(simple_error(
                            Cond::InternalServerError,
                            None,
                        )));
                    }
                }
            }
            Verdict::Pass
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(s: &str) -> Element {
        crate::xml::parse(s).unwrap()
    }

    #[test]
    fn what_a_call_needs() {
        let propose = |d: &str| {
            el(&format!(
                "<message xmlns='jabber:client' to='b@x'><propose xmlns='urn:xmpp:jingle-message:0' id='1'>{d}</propose></message>"
            ))
        };
        let audio = "<description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'/>";
        let video = "<description xmlns='urn:xmpp:jingle:apps:rtp:1' media='video'/>";
        let screen = "<description xmlns='urn:xmpp:jingle:apps:rtp:1' media='video'><screen xmlns='urn:confab:screen:0'/></description>";
        assert_eq!(needs(&propose(audio)), [Right::Av]);
        assert_eq!(needs(&propose(&format!("{audio}{video}"))), [Right::Av]);
        assert_eq!(needs(&propose(screen)), [Right::ScreenShare]);
        assert_eq!(
            needs(&propose(&format!("{audio}{screen}"))),
            [Right::Av, Right::ScreenShare]
        );
        // Answers need nothing.
        let m = el("<message xmlns='jabber:client'><proceed xmlns='urn:xmpp:jingle-message:0' id='1'/></message>");
        assert!(needs(&m).is_empty());
        assert!(is_jmi(&m));
        let iq = |action: &str, d: &str| {
            el(&format!(
                "<iq xmlns='jabber:client' type='set' id='j'><jingle xmlns='urn:xmpp:jingle:1' action='{action}' sid='s'>\
                 <content creator='initiator' name='c'>{d}</content></jingle></iq>"
            ))
        };
        assert_eq!(needs(&iq("session-initiate", video)), [Right::Av]);
        assert_eq!(needs(&iq("content-add", screen)), [Right::ScreenShare]);
        assert!(needs(&iq("session-accept", video)).is_empty());
        let ask = el(
            "<message xmlns='jabber:client'><share-request xmlns='urn:confab:screen:0'/></message>",
        );
        assert_eq!(needs(&ask), [Right::ScreenShare]);
        assert!(!is_jmi(&ask));
    }
}

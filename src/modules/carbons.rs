//! Message Carbons (XEP-0280): every carbons-enabled resource of a user
//! sees both sides of the user's conversations, whichever device took part.
//!
//! The router takes [`Sent`] copies of each message a client sends and
//! [`Received`] around each delivery to a local user; which messages are
//! copied is decided in one place, [`eligible`].

use crate::stanza::Bare;
use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::jid::{BareJid, FullJid};
use xmpp_parsers::stanza_error::DefinedCondition as Cond;

use super::{IqHandler, IqRequest, IqResult, IqType, Registry, Target};
use crate::server::Ctx;
use crate::sessions::{Interest, Resource};
use crate::stanza::{element, simple_error, stanza_type};
use crate::store::BoxFuture;
use crate::xml::ns;

pub fn register(r: &mut Registry) {
    r.server_feature(ns::CARBONS);
    r.server_feature(ns::CARBONS_RULES);
    r.account_feature(ns::CARBONS);
    r.iq(ns::CARBONS, true, true, Arc::new(Toggle));
}

/// `<enable/>` and `<disable/>`, for the requesting session only.
struct Toggle;

impl IqHandler for Toggle {
    fn handle<'a>(&'a self, ctx: &'a Arc<Ctx>, req: IqRequest) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            // Addressed to the user's own account (or, as some clients do,
            // to the server) by one of the user's sessions.
            let own = match &req.target {
                Target::Account(_) => req.is_self(),
                Target::Server => req.local_user(ctx).is_some(),
            };
            let full = req.from.clone().try_into_full().ok().filter(|_| own);
            let Some(full) = full else {
                return Err(simple_error(
                    Cond::NotAllowed,
                    Some("carbons are set by a session for itself"),
                ));
            };
            let on = match (req.typ, req.payload.name()) {
                (IqType::Set, "enable") => true,
                (IqType::Set, "disable") => false,
                _ => return Err(simple_error(Cond::BadRequest, None)),
            };
            if !ctx.sessions.set_interest(&full, Interest::Carbons, on) {
                return Err(simple_error(Cond::NotAllowed, None));
            }
            Ok(None)
        })
    }
}

/// Which way a message went, seen from the user who gets the copies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Sent,
    Received,
}

/// Is this message one that carbons copy? XEP-0280 §6's suggested rules,
/// as Prosody and ejabberd apply them: chat messages, normal messages with
/// a body, a receipt (XEP-0184), a marker (XEP-0333) or a chat state, call
/// invitations (XEP-0353), and bounces of messages sent to a bare JID; never a message marked private or no-copy, a private message
/// from a group-chat room, or a carbon copy itself.
fn eligible(el: &Element, dir: Direction) -> bool {
    if el.name() != "message" || el.ns() != ns::CLIENT {
        return false;
    }
    // A body, a call invitation, or what a conversation's other devices
    // need to show its state: receipts, markers, chat states (XEP-0280 §6).
    let mut im = false;
    for c in el.children() {
        match (c.ns().as_str(), c.name()) {
            (ns::CARBONS, _) | (ns::HINTS, "no-copy") | (ns::MUC_USER, "x") => return false,
            (ns::CLIENT, "body")
            | (ns::JINGLE_MESSAGE, _)
            | (ns::RECEIPTS, "received")
            | (ns::MARKERS, _)
            | (ns::CHATSTATES, _) => im = true,
            _ => {}
        }
    }
    match stanza_type(el) {
        "chat" => true,
        "" | "normal" => im,
        // A bounce from a bare JID answers a message the user sent to it.
        "error" => dir == Direction::Received && el.attr("from").is_some_and(|f| !f.contains('/')),
        _ => false,
    }
}

/// The message wrapped for one carbons-enabled resource.
fn wrap(dir: Direction, user: &BareJid, to: &FullJid, original: Element) -> Element {
    let typ = stanza_type(&original).to_string();
    let mut attrs = vec![("from", user.as_str()), ("to", to.as_str())];
    if !typ.is_empty() {
        attrs.push(("type", typ.as_str()));
    }
    let mut msg = element("message", ns::CLIENT, &attrs);
    let name = match dir {
        Direction::Sent => "sent",
        Direction::Received => "received",
    };
    let mut forwarded = Element::bare("forwarded", ns::FORWARD);
    forwarded.append_child(original);
    let mut wrapper = Element::bare(name, ns::CARBONS);
    wrapper.append_child(forwarded);
    msg.append_child(wrapper);
    msg
}

/// Deliver `original` to each of `targets` as a carbon copy.
fn copy_to(dir: Direction, user: &BareJid, targets: Vec<Resource>, original: Element) {
    let n = targets.len();
    let mut original = Some(original);
    for (i, r) in targets.into_iter().enumerate() {
        let msg = if i + 1 == n {
            original.take()
        } else {
            original.clone()
        };
        let Some(msg) = msg else { break };
        // A session that cannot take it is already being closed.
        let _ = r.mailbox.deliver(wrap(dir, user, &r.full, msg));
    }
}

/// The `<sent/>` copies of a message `from` a local session, for the
/// sender's other carbons-enabled resources: taken before it is routed,
/// sent after (with the sender's stanza-id, when it was archived).
pub struct Sent {
    from: FullJid,
    targets: Vec<Resource>,
    original: Option<Element>,
}

impl Sent {
    pub fn prepare(ctx: &Ctx, from: &FullJid, el: &Element) -> Sent {
        let mut s = Sent {
            from: from.clone(),
            targets: Vec::new(),
            original: None,
        };
        if !eligible(el, Direction::Sent) {
            return s;
        }
        let user = from.bare();
        s.targets = ctx
            .sessions
            .resources_where(&user, |r| r.wants(Interest::Carbons) && r.full != *from);
        if !s.targets.is_empty() {
            s.original = Some(el.clone());
        }
        s
    }

    /// The message was routed; `stanza_id` is the one the sender's archive
    /// gave it.
    pub fn send(self, stanza_id: Option<Element>) {
        if let Some(mut original) = self.original {
            if let Some(id) = stanza_id {
                original.append_child(id);
            }
            copy_to(Direction::Sent, &self.from.bare(), self.targets, original);
        }
    }
}

/// The `<received/>` copies of a message on its way to a local user, taken
/// before delivery and sent once the message was delivered.
pub struct Received {
    targets: Vec<Resource>,
    original: Option<Element>,
}

impl Received {
    /// Prepare copies of `el` (to `user`) for the carbons-enabled resources
    /// for which `gets_original` is false. A `<private/>` marker is removed
    /// from the message, and then nothing is copied.
    pub fn prepare(
        ctx: &Ctx,
        user: &BareJid,
        el: &mut Element,
        gets_original: impl Fn(&FullJid) -> bool,
    ) -> Received {
        let none = Received {
            targets: Vec::new(),
            original: None,
        };
        if el.name() != "message" {
            return none;
        }
        if el.remove_child("private", ns::CARBONS).is_some() || !eligible(el, Direction::Received) {
            return none;
        }
        let targets = ctx.sessions.resources_where(user, |r| {
            r.wants(Interest::Carbons) && !gets_original(&r.full)
        });
        if targets.is_empty() {
            return none;
        }
        Received {
            targets,
            original: Some(el.clone()),
        }
    }

    /// The original was delivered: send the copies.
    pub fn send(self, user: &BareJid) {
        if let Some(original) = self.original {
            copy_to(Direction::Received, user, self.targets, original);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(s: &str) -> Element {
        crate::xml::parse(s).unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    #[test]
    fn eligibility_follows_xep_0280_rules() {
        let c = "xmlns='jabber:client'";
        let yes = [
            format!("<message {c} type='chat'/>"),
            format!("<message {c} type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>"),
            format!("<message {c}><body>hi</body></message>"),
            format!("<message {c} type='normal'><body>hi</body></message>"),
            format!("<message {c}><propose xmlns='urn:xmpp:jingle-message:0' id='a'/></message>"),
            format!("<message {c}><received xmlns='urn:xmpp:receipts' id='a'/></message>"),
            format!("<message {c} type='normal'><displayed xmlns='urn:xmpp:chat-markers:0' id='a'/></message>"),
            format!("<message {c}><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"),
        ];
        for s in &yes {
            assert!(eligible(&msg(s), Direction::Sent), "{s}");
        }
        let no = [
            format!("<message {c}/>"),
            format!("<message {c}><request xmlns='urn:xmpp:receipts'/><x xmlns='urn:example'/></message>"),
            format!("<message {c} type='headline'><body>x</body></message>"),
            format!("<message {c} type='groupchat'><body>x</body></message>"),
            format!("<message {c} type='chat'><body>x</body><private xmlns='urn:xmpp:carbons:2'/></message>"),
            format!("<message {c} type='chat'><body>x</body><no-copy xmlns='urn:xmpp:hints'/></message>"),
            format!("<message {c} type='chat'><body>x</body><x xmlns='http://jabber.org/protocol/muc#user'/></message>"),
            format!("<message {c} type='chat'><received xmlns='urn:xmpp:carbons:2'/></message>"),
            format!("<message {c} type='error' from='a@b'/>"),
        ];
        for s in &no {
            assert!(!eligible(&msg(s), Direction::Sent), "{s}");
        }
        assert!(eligible(
            &msg(&format!("<message {c} type='error' from='a@b'/>")),
            Direction::Received
        ));
        assert!(!eligible(
            &msg(&format!("<message {c} type='error' from='a@b/r'/>")),
            Direction::Received
        ));
    }
}

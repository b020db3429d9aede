//! Helpers for stanzas as routed elements: kinds, addresses, error replies.
//!
//! Routed stanzas stay `minidom::Element`s so that nothing a client sent is
//! lost; the server's own payloads are built from xmpp-parsers types.

use minidom::Element;
use xmpp_parsers::jid::{BareJid, FullJid, Jid};
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};
use xmpp_parsers::stream_error::{DefinedCondition as StreamCondition, StreamError};

use crate::xml::ns;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Message,
    Presence,
    Iq,
}

impl Kind {
    pub fn of(el: &Element) -> Option<Kind> {
        if el.ns() != ns::CLIENT {
            return None;
        }
        match el.name() {
            "message" => Some(Kind::Message),
            "presence" => Some(Kind::Presence),
            "iq" => Some(Kind::Iq),
            _ => None,
        }
    }
}

/// The bare JID of an address, by copying its text: `to_bare` formats
/// the parts anew, which on the routing path costs more than the copy.
pub trait Bare {
    fn bare(&self) -> BareJid;
}

impl Bare for Jid {
    fn bare(&self) -> BareJid {
        self.clone().into_bare()
    }
}

impl Bare for FullJid {
    fn bare(&self) -> BareJid {
        self.clone().into_bare()
    }
}

/// The `type` attribute ("" when absent).
pub fn stanza_type(el: &Element) -> &str {
    el.attr("type").unwrap_or("")
}

pub fn is_error(el: &Element) -> bool {
    stanza_type(el) == "error"
}

/// An address attribute that is not a valid JID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadJid;

/// Parse an address attribute. `Ok(None)` if absent.
pub fn jid_attr(el: &Element, name: &str) -> Result<Option<Jid>, BadJid> {
    match el.attr(name) {
        None => Ok(None),
        Some(s) => Jid::new(s).map(Some).map_err(|_| BadJid),
    }
}

/// Set (or replace) an un-namespaced attribute.
pub fn set_attr(el: &mut Element, name: &str, value: impl Into<String>) {
    if let Ok(n) = rxml::NcName::try_from(name) {
        el.attrs_mut()
            .insert(rxml::Namespace::NONE, n, value.into());
    }
}

/// Remove an un-namespaced attribute.
pub fn remove_attr(el: &mut Element, name: &str) {
    el.attrs_mut().remove(rxml::Namespace::none(), name);
}

/// A new element with attributes.
pub fn element(name: &str, ns: &str, attrs: &[(&str, &str)]) -> Element {
    let mut el = Element::bare(name, ns);
    for (k, v) in attrs {
        set_attr(&mut el, k, *v);
    }
    el
}

/// A stanza error with an optional text.
pub fn error(type_: ErrorType, cond: DefinedCondition, text: Option<&str>) -> StanzaError {
    let mut e = StanzaError {
        type_,
        by: None,
        defined_condition: cond,
        texts: Default::default(),
        other: None,
    };
    if let Some(t) = text {
        e.texts.insert("en".into(), t.into());
    }
    e
}

/// The usual error type for a condition (RFC 6120 §8.3.3).
pub fn default_type(cond: &DefinedCondition) -> ErrorType {
    use DefinedCondition as C;
    match cond {
        C::BadRequest | C::JidMalformed | C::NotAcceptable | C::PolicyViolation => {
            ErrorType::Modify
        }
        C::Forbidden | C::NotAuthorized | C::RegistrationRequired | C::SubscriptionRequired => {
            ErrorType::Auth
        }
        C::InternalServerError | C::ResourceConstraint | C::RemoteServerTimeout => ErrorType::Wait,
        _ => ErrorType::Cancel,
    }
}

pub fn simple_error(cond: DefinedCondition, text: Option<&str>) -> StanzaError {
    let t = default_type(&cond);
    error(t, cond, text)
}

/// The error reply to `el` (addresses swapped, same id), or `None` when no
/// error may be sent: never in answer to an error, nor to an IQ result.
pub fn error_reply(el: &Element, err: StanzaError) -> Option<Element> {
    let t = stanza_type(el);
    if t == "error" || (el.name() == "iq" && t == "result") {
        return None;
    }
    let mut reply = Element::bare(el.name(), ns::CLIENT);
    if let Some(id) = el.attr("id") {
        set_attr(&mut reply, "id", id);
    }
    if let Some(from) = el.attr("from") {
        set_attr(&mut reply, "to", from);
    }
    if let Some(to) = el.attr("to") {
        set_attr(&mut reply, "from", to);
    }
    set_attr(&mut reply, "type", "error");
    // A bounced message keeps its content so the sender can tell which one
    // failed (RFC 6120 §8.3.1 allows including the original payload).
    if el.name() == "message" {
        for child in el.children() {
            reply.append_child(child.clone());
        }
    }
    reply.append_child(err.into());
    Some(reply)
}

pub fn stream_error(cond: StreamCondition, text: Option<&str>) -> Element {
    let mut e = StreamError {
        condition: cond,
        texts: Default::default(),
        application_specific: Vec::new(),
    };
    if let Some(t) = text {
        e.texts.insert("en".into(), t.into());
    }
    e.into()
}

/// Attach a XEP-0203 delay stamp.
pub fn add_delay(el: &mut Element, from: &str, stamp: chrono::DateTime<chrono::Utc>) {
    let stamp = stamp.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    el.append_child(element(
        "delay",
        ns::DELAY,
        &[("from", from), ("stamp", &stamp)],
    ));
}

/// Current time in XEP-0082 format.
pub fn now_stamp() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// A random identifier (stream ids, generated resources, push ids).
pub fn random_id(bytes: usize) -> String {
    use base64::Engine;
    let mut b = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::rng(), b.as_mut_slice());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Keep only the child elements of `el` for which `keep` is true (text
/// and the order of what stays are kept).
pub fn retain_children(el: &mut Element, keep: impl Fn(&Element) -> bool) {
    if el.children().all(&keep) {
        return;
    }
    for node in el.take_nodes() {
        match &node {
            minidom::Node::Element(c) if !keep(c) => {}
            _ => el.append_node(node),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_swaps_and_never_answers_errors() {
        let el: Element = "<message xmlns='jabber:client' from='a@x/r' to='b@x' id='1' type='chat'><body>hi</body></message>"
            .parse()
            .unwrap();
        let r = error_reply(
            &el,
            simple_error(DefinedCondition::ServiceUnavailable, None),
        )
        .unwrap();
        assert_eq!(r.attr("to"), Some("a@x/r"));
        assert_eq!(r.attr("from"), Some("b@x"));
        assert_eq!(r.attr("type"), Some("error"));
        assert_eq!(r.attr("id"), Some("1"));
        assert!(r.has_child("body", ns::CLIENT));
        let e = r.get_child("error", ns::CLIENT).unwrap();
        assert_eq!(e.attr("type"), Some("cancel"));
        assert!(e.has_child("service-unavailable", ns::STANZAS));
        assert!(error_reply(&r, simple_error(DefinedCondition::BadRequest, None)).is_none());
    }
}

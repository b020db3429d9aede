//! XML stream layer: a limited incremental reader and a serializer.

pub mod reader;
pub mod writer;

pub use reader::{Frame, Limits, ReadError, StreamHeader, StreamReader};

/// Memory a stored document may always use when it is parsed again.
const PARSE_MEMORY_FLOOR: usize = 32 << 20;

/// Parse one stored element (as written by `writer::to_string`) with the
/// same limits-checking reader the streams use: never minidom's recursive
/// parser, so nothing read back from disk can exhaust the stack.
pub fn parse(xml: &str) -> Result<minidom::Element, ReadError> {
    parse_one(b"<s>", xml.as_bytes())
}

/// Parse a stanza as it is written to a client stream (a child of a
/// stream whose default namespace is `jabber:client`), e.g. one that
/// waited in a session's queue.
pub fn parse_client_stanza(xml: &[u8]) -> Result<minidom::Element, ReadError> {
    parse_one(b"<s xmlns='jabber:client'>", xml)
}

/// Parse exactly one element inside the opening tag `root`.
fn parse_one(root: &[u8], xml: &[u8]) -> Result<minidom::Element, ReadError> {
    // Stored documents were read within a stream's limits; their tree is
    // bounded by those, whatever their serialized length. What was stored
    // before those limits existed is bounded here.
    let limits = Limits {
        max_stanza_bytes: xml.len().saturating_add(64),
        max_stanza_memory: xml
            .len()
            .saturating_mul(reader::MEMORY_PER_STANZA_BYTE)
            .max(PARSE_MEMORY_FLOOR),
        max_depth: 256,
        max_attributes: 1024,
    };
    let mut r = StreamReader::new(limits);
    let mut out = std::collections::VecDeque::new();
    r.feed(root, &mut out)?;
    r.feed(xml, &mut out)?;
    let mut elements = out.into_iter().filter_map(|f| match f {
        Frame::Element(e) => Some(e),
        _ => None,
    });
    match (elements.next(), elements.next()) {
        (Some(e), None) => Ok(e),
        _ => Err(ReadError::NotWellFormed(
            "expected exactly one element".into(),
        )),
    }
}

/// Namespaces used across the server.
pub mod ns {
    pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
    pub const STREAM: &str = "http://etherx.jabber.org/streams";
    pub const CLIENT: &str = "jabber:client";
    pub const SERVER: &str = "jabber:server";
    pub const DIALBACK: &str = "jabber:server:dialback";
    pub const DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";
    pub const BIDI: &str = "urn:xmpp:bidi";
    pub const BIDI_FEATURE: &str = "urn:xmpp:features:bidi";
    pub const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
    pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
    pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
    pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
    pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
    pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
    pub const ROSTER: &str = "jabber:iq:roster";
    pub const ROSTERVER: &str = "urn:xmpp:features:rosterver";
    pub const PREAPPROVAL: &str = "urn:xmpp:features:pre-approval";
    pub const STREAM_LIMITS: &str = "urn:xmpp:stream-limits:0";
    pub const SASL_CB: &str = "urn:xmpp:sasl-cb:0";
    pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
    pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
    pub const PING: &str = "urn:xmpp:ping";
    pub const VERSION: &str = "jabber:iq:version";
    pub const TIME: &str = "urn:xmpp:time";
    pub const VCARD: &str = "vcard-temp";
    pub const PRIVATE: &str = "jabber:iq:private";
    pub const BLOCKING: &str = "urn:xmpp:blocking";
    pub const BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
    pub const EXTDISCO: &str = "urn:xmpp:extdisco:2";
    pub const REFERENCE: &str = "urn:xmpp:reference:0";
    /// Confab's hint that a message's body is not to be annotated
    /// (`xeps/xep-0372.md`).
    pub const LINKS: &str = "urn:confab:links:0";
    /// Confab's per-contact authorization levels (`xeps/confab-authz.md`).
    pub const AUTHZ: &str = "urn:confab:authz:0";
    pub const DELAY: &str = "urn:xmpp:delay";
    pub const OFFLINE: &str = "msgoffline";
    pub const CARBONS: &str = "urn:xmpp:carbons:2";
    pub const CARBONS_RULES: &str = "urn:xmpp:carbons:rules:0";
    pub const FORWARD: &str = "urn:xmpp:forward:0";
    pub const HINTS: &str = "urn:xmpp:hints";
    pub const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
    pub const JINGLE_MESSAGE: &str = "urn:xmpp:jingle-message:0";
    pub const JINGLE: &str = "urn:xmpp:jingle:1";
    pub const JINGLE_RTP: &str = "urn:xmpp:jingle:apps:rtp:1";
    /// Confab's screen-share marker and share request
    /// (`xeps/confab-calls.md`).
    pub const SCREEN: &str = "urn:confab:screen:0";
    pub const MAM: &str = "urn:xmpp:mam:2";
    pub const MAM_EXTENDED: &str = "urn:xmpp:mam:2#extended";
    pub const SID: &str = "urn:xmpp:sid:0";
    pub const RECEIPTS: &str = "urn:xmpp:receipts";
    pub const MARKERS: &str = "urn:xmpp:chat-markers:0";
    pub const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
    pub const RSM: &str = "http://jabber.org/protocol/rsm";
    pub const DATA_FORMS: &str = "jabber:x:data";
    pub const SM: &str = "urn:xmpp:sm:3";
    pub const CSI: &str = "urn:xmpp:csi:0";
}

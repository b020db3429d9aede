//! Incremental, limited reader of an XMPP XML stream.
//!
//! Bytes from the socket are fed to rxml's raw (non-namespaced) parser;
//! namespace resolution and tree building happen here, so every limit is
//! enforced *before* anything is built in memory:
//!
//! * bytes per top-level element (stanza or nonza), counted on the raw input,
//!   including bytes the parser buffers without yet emitting an event (a
//!   huge element head, a huge text node);
//! * element depth (the tree is built iteratively, never recursively, and a
//!   stream that goes too deep is ended at once);
//! * attributes per element.
//!
//! rxml itself rejects DTDs (so no entity expansion), processing
//! instructions, comments, invalid UTF-8 and tokens over 8 KiB.

use std::collections::VecDeque;

use minidom::Element;
use rxml::error::EndOrError;
use rxml::{Namespace, NcName, Parse, RawEvent, RawParser};

use super::ns;

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum bytes of one top-level element, as sent on the wire.
    pub max_stanza_bytes: usize,
    /// Maximum element depth, counting the stream element as depth 1.
    pub max_depth: usize,
    /// Maximum attributes (namespace declarations included) on one element.
    pub max_attributes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 262_144,
            max_depth: 64,
            max_attributes: 128,
        }
    }
}

/// The opening `<stream:stream>` tag as the peer sent it.
#[derive(Debug, Clone, Default)]
pub struct StreamHeader {
    /// Namespace of the root element (must be the streams namespace).
    pub element_ns: String,
    /// Local name of the root element (must be `stream`).
    pub element_name: String,
    /// Default namespace declared on the header (`jabber:client`, …).
    pub default_ns: Option<String>,
    pub to: Option<String>,
    pub from: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    pub lang: Option<String>,
}

/// One unit read from the stream.
#[derive(Debug)]
pub enum Frame {
    Header(StreamHeader),
    /// A complete top-level element (stanza or nonza).
    Element(Element),
    /// The peer sent `</stream:stream>`.
    Close,
}

/// Why the stream cannot go on; each maps to one RFC 6120 stream error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    NotWellFormed(String),
    /// DTD, entity reference, processing instruction, comment (RFC 6120 §11.1).
    RestrictedXml(String),
    /// Not UTF-8 (RFC 6120 §11.6).
    UnsupportedEncoding,
    BadNamespacePrefix,
    /// A limit was exceeded.
    PolicyViolation(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::NotWellFormed(s) => write!(f, "not well-formed: {s}"),
            ReadError::RestrictedXml(s) => write!(f, "restricted XML: {s}"),
            ReadError::UnsupportedEncoding => f.write_str("invalid UTF-8"),
            ReadError::BadNamespacePrefix => f.write_str("undeclared namespace prefix"),
            ReadError::PolicyViolation(s) => write!(f, "limit exceeded: {s}"),
        }
    }
}

fn map_rxml_error(e: rxml::Error) -> ReadError {
    use rxml::Error as E;
    match e {
        E::InvalidUtf8Byte(_) => ReadError::UnsupportedEncoding,
        E::RestrictedXml(what) if what.contains("long") => {
            ReadError::PolicyViolation(format!("XML token too long ({what})"))
        }
        E::RestrictedXml(what) => ReadError::RestrictedXml(what.to_string()),
        E::UndeclaredEntity => ReadError::RestrictedXml("entity reference".into()),
        E::UndeclaredNamespacePrefix(_) => ReadError::BadNamespacePrefix,
        other => ReadError::NotWellFormed(other.to_string()),
    }
}

/// Namespace declarations of one open element.
struct Scope {
    /// `Some` if this element declared (or undeclared) the default namespace.
    default: Option<Namespace<'static>>,
    prefixes: Vec<(NcName, Namespace<'static>)>,
}

/// An element head whose attributes are still arriving.
struct Head {
    prefix: Option<NcName>,
    local: NcName,
    scope: Scope,
    attrs: Vec<(Option<NcName>, NcName, String)>,
}

/// Reads one XML stream. A new reader is used after each stream restart.
pub struct StreamReader {
    parser: RawParser,
    limits: Limits,
    scopes: Vec<Scope>,
    head: Option<Head>,
    /// Open elements below the stream root; `stack[0]` is the stanza.
    stack: Vec<Element>,
    /// Bytes consumed since the last top-level boundary.
    pending_bytes: usize,
    /// Bytes of non-whitespace input since the last top-level boundary.
    /// Whitespace keepalives between stanzas do not count.
    closed: bool,
    failed: Option<ReadError>,
}

impl StreamReader {
    pub fn new(limits: Limits) -> Self {
        let mut parser = RawParser::new();
        // Between stanzas, whitespace keepalives arrive as text: emit them at
        // once instead of buffering, so the byte count can be reset.
        parser.set_text_buffering(false);
        StreamReader {
            parser,
            limits,
            scopes: Vec::new(),
            head: None,
            stack: Vec::new(),
            pending_bytes: 0,
            closed: false,
            failed: None,
        }
    }

    /// True between top-level elements with no partial input buffered.
    pub fn is_at_boundary(&self) -> bool {
        self.stack.is_empty() && self.head.is_none() && self.pending_bytes == 0
    }

    /// Give back parser buffers while the peer is idle.
    pub fn release_memory(&mut self) {
        self.parser.release_temporaries();
        self.scopes.shrink_to_fit();
        self.stack.shrink_to_fit();
    }

    /// Feed bytes from the peer; complete frames are appended to `out`.
    /// After an error the reader stays failed.
    pub fn feed(&mut self, data: &[u8], out: &mut VecDeque<Frame>) -> Result<(), ReadError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.feed_inner(data, out);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
            self.stack.clear();
            self.head = None;
        }
        r
    }

    fn feed_inner(&mut self, data: &[u8], out: &mut VecDeque<Frame>) -> Result<(), ReadError> {
        let mut buf = data;
        while !self.closed {
            let before = buf.len();
            let result = self.parser.parse(&mut buf, false);
            self.pending_bytes = self.pending_bytes.saturating_add(before - buf.len());
            if self.pending_bytes > self.limits.max_stanza_bytes {
                return Err(ReadError::PolicyViolation(format!(
                    "element larger than {} bytes",
                    self.limits.max_stanza_bytes
                )));
            }
            match result {
                Ok(Some(ev)) => self.handle(ev, out)?,
                Ok(None) => break,
                Err(EndOrError::NeedMoreData) => break,
                Err(EndOrError::Error(e)) => return Err(map_rxml_error(e)),
            }
        }
        Ok(())
    }

    fn depth(&self) -> usize {
        self.scopes.len()
    }

    fn lookup(&self, prefix: Option<&str>, head: &Scope) -> Result<Namespace<'static>, ReadError> {
        match prefix {
            None => {
                if let Some(ns) = &head.default {
                    return Ok(ns.clone());
                }
                for s in self.scopes.iter().rev() {
                    if let Some(ns) = &s.default {
                        return Ok(ns.clone());
                    }
                }
                Ok(Namespace::none().clone())
            }
            Some("xml") => Ok(Namespace::xml().clone()),
            Some(p) => {
                let found = head
                    .prefixes
                    .iter()
                    .chain(self.scopes.iter().rev().flat_map(|s| s.prefixes.iter()))
                    .find(|(name, _)| name.as_str() == p);
                match found {
                    Some((_, ns)) => Ok(ns.clone()),
                    None => Err(ReadError::BadNamespacePrefix),
                }
            }
        }
    }

    fn handle(&mut self, ev: RawEvent, out: &mut VecDeque<Frame>) -> Result<(), ReadError> {
        match ev {
            RawEvent::XmlDeclaration(..) => Ok(()),
            RawEvent::ElementHeadOpen(_, (prefix, local)) => {
                if self.depth() + 1 > self.limits.max_depth {
                    return Err(ReadError::PolicyViolation(format!(
                        "elements nested deeper than {}",
                        self.limits.max_depth
                    )));
                }
                self.head = Some(Head {
                    prefix,
                    local,
                    scope: Scope {
                        default: None,
                        prefixes: Vec::new(),
                    },
                    attrs: Vec::new(),
                });
                Ok(())
            }
            RawEvent::Attribute(_, (prefix, local), value) => {
                let max = self.limits.max_attributes;
                let Some(head) = self.head.as_mut() else {
                    return Err(ReadError::NotWellFormed("attribute outside element".into()));
                };
                if head.attrs.len() + head.scope.prefixes.len() >= max {
                    return Err(ReadError::PolicyViolation(format!(
                        "more than {max} attributes on one element"
                    )));
                }
                match prefix.as_ref().map(|p| p.as_str()) {
                    None if local.as_str() == "xmlns" => {
                        if head.scope.default.is_some() {
                            return Err(ReadError::NotWellFormed("duplicate xmlns".into()));
                        }
                        head.scope.default = Some(if value.is_empty() {
                            Namespace::none().clone()
                        } else {
                            Namespace::from(value)
                        });
                    }
                    Some("xmlns") => {
                        if head.scope.prefixes.iter().any(|(p, _)| *p == local) {
                            return Err(ReadError::NotWellFormed(
                                "duplicate namespace declaration".into(),
                            ));
                        }
                        head.scope.prefixes.push((local, Namespace::from(value)));
                    }
                    _ => head.attrs.push((prefix, local, value)),
                }
                Ok(())
            }
            RawEvent::ElementHeadClose(_) => {
                let Some(head) = self.head.take() else {
                    return Err(ReadError::NotWellFormed("unexpected element end".into()));
                };
                let ns = self.lookup(head.prefix.as_ref().map(|p| p.as_str()), &head.scope)?;
                let mut attrs = rxml::AttrMap::new();
                for (prefix, local, value) in head.attrs {
                    let ans = match prefix.as_ref() {
                        None => Namespace::none().clone(),
                        Some(p) => self.lookup(Some(p.as_str()), &head.scope)?,
                    };
                    if attrs.insert(ans, local, value).is_some() {
                        return Err(ReadError::NotWellFormed("duplicate attribute".into()));
                    }
                }
                let depth = self.depth();
                self.scopes.push(head.scope);
                if depth == 0 {
                    out.push_back(Frame::Header(self.make_header(ns, head.local, attrs)));
                    self.pending_bytes = 0;
                } else {
                    let mut el = Element::bare(head.local.as_str(), ns.as_str());
                    *el.attrs_mut() = attrs;
                    self.stack.push(el);
                }
                Ok(())
            }
            RawEvent::ElementFoot(_) => {
                self.scopes.pop();
                if self.scopes.is_empty() {
                    self.closed = true;
                    out.push_back(Frame::Close);
                    return Ok(());
                }
                let Some(el) = self.stack.pop() else {
                    return Err(ReadError::NotWellFormed("unbalanced element".into()));
                };
                match self.stack.last_mut() {
                    Some(parent) => {
                        parent.append_child(el);
                    }
                    None => {
                        out.push_back(Frame::Element(el));
                        self.pending_bytes = 0;
                    }
                }
                Ok(())
            }
            RawEvent::Text(_, text) => {
                match self.stack.last_mut() {
                    Some(top) => {
                        top.append_text(text.as_str());
                        self.parser.set_text_buffering(true);
                    }
                    None => {
                        // Between stanzas only whitespace is allowed
                        // (RFC 6120 §11.7), e.g. keepalives.
                        if !text
                            .bytes()
                            .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                        {
                            return Err(ReadError::NotWellFormed("text outside a stanza".into()));
                        }
                        if self.head.is_none() {
                            self.pending_bytes = 0;
                        }
                    }
                }
                Ok(())
            }
        }
        .inspect(|_| {
            if self.stack.is_empty() {
                self.parser.set_text_buffering(false);
            }
        })
    }

    fn make_header(
        &self,
        ns: Namespace<'static>,
        local: NcName,
        attrs: rxml::AttrMap,
    ) -> StreamHeader {
        let mut h = StreamHeader {
            element_ns: ns.as_str().to_string(),
            element_name: local.as_str().to_string(),
            default_ns: self
                .scopes
                .first()
                .and_then(|s| s.default.as_ref())
                .map(|n| n.as_str().to_string()),
            ..Default::default()
        };
        for ((ans, name), value) in attrs {
            if ans.is_none() {
                match name.as_str() {
                    "to" => h.to = Some(value),
                    "from" => h.from = Some(value),
                    "id" => h.id = Some(value),
                    "version" => h.version = Some(value),
                    _ => {}
                }
            } else if ans.as_str() == ns::XML && name.as_str() == "lang" {
                h.lang = Some(value);
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' xml:lang='en'>";

    fn feed_all(r: &mut StreamReader, data: &[u8]) -> Result<Vec<Frame>, ReadError> {
        let mut out = VecDeque::new();
        r.feed(data, &mut out)?;
        Ok(out.into_iter().collect())
    }

    fn elements(frames: &[Frame]) -> Vec<&Element> {
        frames
            .iter()
            .filter_map(|f| match f {
                Frame::Element(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn header_and_stanzas() {
        let mut r = StreamReader::new(Limits::default());
        let doc = format!(
            "{HEADER}<message to='a@b' type='chat'><body>hi &amp; bye</body></message> \n\
             <iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq></stream:stream>"
        );
        let frames = feed_all(&mut r, doc.as_bytes()).unwrap();
        match &frames[0] {
            Frame::Header(h) => {
                assert_eq!(h.element_ns, ns::STREAM);
                assert_eq!(h.element_name, "stream");
                assert_eq!(h.default_ns.as_deref(), Some("jabber:client"));
                assert_eq!(h.to.as_deref(), Some("example.com"));
                assert_eq!(h.version.as_deref(), Some("1.0"));
                assert_eq!(h.lang.as_deref(), Some("en"));
            }
            other => panic!("expected header, got {other:?}"),
        }
        let els = elements(&frames);
        assert_eq!(els.len(), 2);
        assert!(els[0].is("message", "jabber:client"));
        assert_eq!(els[0].attr("to"), Some("a@b"));
        let body = els[0].get_child("body", "jabber:client").unwrap();
        assert_eq!(body.text(), "hi & bye");
        assert!(els[1].get_child("query", "jabber:iq:roster").is_some());
        assert!(matches!(frames.last(), Some(Frame::Close)));
    }

    #[test]
    fn byte_at_a_time() {
        let mut r = StreamReader::new(Limits::default());
        let doc = format!("{HEADER}<presence><show>away</show></presence>");
        let mut frames = VecDeque::new();
        for b in doc.as_bytes() {
            r.feed(std::slice::from_ref(b), &mut frames).unwrap();
        }
        assert_eq!(frames.len(), 2);
        assert!(r.is_at_boundary());
    }

    #[test]
    fn prefixed_elements_and_attributes() {
        let mut r = StreamReader::new(Limits::default());
        let doc = format!(
            "{HEADER}<c:message xmlns:c='jabber:client' xmlns:x='urn:x' x:a='1' xml:lang='de'>\
             <x:foo/></c:message>"
        );
        let frames = feed_all(&mut r, doc.as_bytes()).unwrap();
        let els = elements(&frames);
        assert!(els[0].is("message", "jabber:client"));
        assert_eq!(els[0].attr_ns("urn:x", "a"), Some("1"));
        assert_eq!(els[0].attr_ns(ns::XML, "lang"), Some("de"));
        assert!(els[0].has_child("foo", "urn:x"));
    }

    #[test]
    fn undeclared_prefix() {
        let mut r = StreamReader::new(Limits::default());
        let doc = format!("{HEADER}<y:message/>");
        assert_eq!(
            feed_all(&mut r, doc.as_bytes()).unwrap_err(),
            ReadError::BadNamespacePrefix
        );
    }

    #[test]
    fn too_large_stanza_is_stopped_early() {
        let limits = Limits {
            max_stanza_bytes: 1000,
            ..Limits::default()
        };
        let mut r = StreamReader::new(limits);
        feed_all(&mut r, HEADER.as_bytes()).unwrap();
        let mut out = VecDeque::new();
        r.feed(b"<message><body>", &mut out).unwrap();
        let chunk = vec![b'a'; 600];
        r.feed(&chunk, &mut out).unwrap();
        let err = r.feed(&chunk, &mut out).unwrap_err();
        assert!(matches!(err, ReadError::PolicyViolation(_)));
        // Stays failed.
        assert!(r.feed(b"</body>", &mut out).is_err());
    }

    #[test]
    fn whitespace_keepalives_do_not_accumulate() {
        let limits = Limits {
            max_stanza_bytes: 300,
            ..Limits::default()
        };
        let mut r = StreamReader::new(limits);
        let mut out = VecDeque::new();
        r.feed(HEADER.as_bytes(), &mut out).unwrap();
        for _ in 0..1000 {
            r.feed(b" ", &mut out).unwrap();
        }
        r.feed(b"<presence/>", &mut out).unwrap();
        assert_eq!(elements(&out.into_iter().collect::<Vec<_>>()).len(), 1);
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let mut r = StreamReader::new(Limits::default());
        let mut doc = HEADER.to_string();
        for _ in 0..100_000 {
            doc.push_str("<a>");
        }
        let err = feed_all(&mut r, doc.as_bytes()).unwrap_err();
        assert!(matches!(err, ReadError::PolicyViolation(_)), "{err:?}");
    }

    #[test]
    fn too_many_attributes() {
        let mut r = StreamReader::new(Limits::default());
        let mut doc = format!("{HEADER}<message ");
        for i in 0..1000 {
            doc.push_str(&format!("a{i}='' "));
        }
        doc.push_str("/>");
        let err = feed_all(&mut r, doc.as_bytes()).unwrap_err();
        assert!(matches!(err, ReadError::PolicyViolation(_)), "{err:?}");
    }

    #[test]
    fn huge_attribute_value() {
        let mut r = StreamReader::new(Limits::default());
        let mut doc = format!("{HEADER}<message to='");
        doc.push_str(&"x".repeat(100_000));
        let err = feed_all(&mut r, doc.as_bytes()).unwrap_err();
        assert!(matches!(err, ReadError::PolicyViolation(_)), "{err:?}");
    }

    #[test]
    fn restricted_constructs() {
        let doctype = "<!DOCTYPE foo [<!ENTITY a 'aaaa'>]><stream:stream \
                       xmlns:stream='http://etherx.jabber.org/streams'>";
        let mut r = StreamReader::new(Limits::default());
        let err = feed_all(&mut r, doctype.as_bytes()).unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::RestrictedXml(_) | ReadError::NotWellFormed(_)
            ),
            "{err:?}"
        );
        for bad in ["<?foo bar?>", "<!-- hi -->", "<message>&lol;</message>"] {
            let mut r = StreamReader::new(Limits::default());
            let doc = format!("{HEADER}{bad}");
            let err = feed_all(&mut r, doc.as_bytes()).unwrap_err();
            assert!(matches!(err, ReadError::RestrictedXml(_)), "{bad}: {err:?}");
        }
    }

    #[test]
    fn invalid_utf8() {
        let mut r = StreamReader::new(Limits::default());
        let mut doc = format!("{HEADER}<message><body>").into_bytes();
        doc.extend_from_slice(&[0xff, 0xfe, b'x']);
        doc.extend_from_slice(b"</body></message>");
        let err = feed_all(&mut r, &doc).unwrap_err();
        assert_eq!(err, ReadError::UnsupportedEncoding);
    }

    #[test]
    fn text_outside_stanza() {
        let mut r = StreamReader::new(Limits::default());
        let doc = format!("{HEADER}hello");
        assert!(matches!(
            feed_all(&mut r, doc.as_bytes()).unwrap_err(),
            ReadError::NotWellFormed(_)
        ));
    }

    #[test]
    fn malformed() {
        let mut r = StreamReader::new(Limits::default());
        let doc = format!("{HEADER}<message></presence>");
        assert!(matches!(
            feed_all(&mut r, doc.as_bytes()).unwrap_err(),
            ReadError::NotWellFormed(_)
        ));
    }
}

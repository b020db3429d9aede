//! Entry points for fuzzing the code that reads untrusted bytes: the XML
//! stream reader (every byte a client sends), stored-document parsing, and
//! the SASL parsers. Each checks invariants and panics only on a real bug.
//!
//! They are driven two ways: by the property tests below (a short,
//! bounded run inside `cargo test`; `CONFAB_FUZZ_CASES=N` for longer), and by
//! the coverage-guided targets in `fuzz/` (`cargo fuzz run stream`), see
//! README.md "Fuzzing".

use std::collections::VecDeque;

use minidom::Element;

use crate::sasl::scram::{ScramCredentials, ScramHash, ScramServer};
use crate::sasl::ChannelBindings;
use crate::xml::{Frame, Limits, StreamReader};

/// Small limits, so that inputs of a few kilobytes reach every limit.
const LIMITS: Limits = Limits {
    max_stanza_bytes: 4096,
    max_stanza_memory: 4096 * crate::xml::reader::MEMORY_PER_STANZA_BYTE,
    max_depth: 12,
    max_attributes: 16,
};

const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>";

fn depth(el: &Element) -> usize {
    let mut max = 1;
    let mut stack = vec![(el, 1usize)];
    while let Some((e, d)) = stack.pop() {
        max = max.max(d);
        for c in e.children() {
            stack.push((c, d + 1));
        }
    }
    max
}

/// Feed `data` to a stream reader, after a valid stream header when the
/// first byte is even, in chunks whose size comes from the second byte.
/// Invariants: no panic; every element respects the limits; an error is
/// final; the writer can serialize whatever was read, and what it writes
/// reads back the same.
pub fn stream(data: &[u8]) {
    let (with_header, chunk) = match data {
        [a, b, ..] => (a % 2 == 0, usize::from(*b).max(1)),
        _ => (true, 7),
    };
    let body = data.get(2..).unwrap_or_default();
    let mut r = StreamReader::new(LIMITS);
    let mut out = VecDeque::new();
    let mut failed = None;
    let mut input: Vec<u8> = Vec::new();
    if with_header {
        input.extend_from_slice(HEADER);
    }
    input.extend_from_slice(body);
    for piece in input.chunks(chunk) {
        match r.feed(piece, &mut out) {
            Ok(()) => assert!(failed.is_none(), "the reader recovered after an error"),
            Err(e) => {
                if let Some(prev) = &failed {
                    assert_eq!(prev, &e, "a failed reader must keep its error");
                }
                failed = Some(e);
            }
        }
    }
    for f in out {
        if let Frame::Element(el) = f {
            // +1: the stream element counts as the first level.
            assert!(depth(&el) < LIMITS.max_depth, "depth limit not enforced");
            assert_no_reserved_namespace(&el);
            let text = crate::xml::writer::to_string(&el);
            match crate::xml::parse(&text) {
                Ok(back) => assert_eq!(back, el, "write/read round trip changed {text}"),
                Err(e) => panic!("what the writer wrote does not read back: {e}: {text}"),
            }
        }
    }
}

/// Nothing read may be in the reserved namespaces (Namespaces in XML 1.0
/// §3): a recipient's parser would refuse what the writer makes of it.
fn assert_no_reserved_namespace(el: &Element) {
    const XMLNS: &str = "http://www.w3.org/2000/xmlns/";
    let mut stack = vec![el];
    while let Some(e) = stack.pop() {
        let ns = e.ns();
        assert!(
            ns != XMLNS && ns != crate::xml::ns::XML,
            "an element in a reserved namespace: {ns}"
        );
        for ((ans, _), _) in e.attrs() {
            assert!(ans.as_str() != XMLNS, "an attribute in the xmlns namespace");
        }
        stack.extend(e.children());
    }
}

/// Parse `data` as a stored document.
pub fn stored(data: &[u8]) {
    let _ = crate::xml::parse(&String::from_utf8_lossy(data));
}

/// Find the links of `data` (as lossy UTF-8) with a location that
/// recognises every kind, and check what comes out: in order, not
/// overlapping, within the body, each a URI without spaces.
pub fn links(data: &[u8]) {
    let body = String::from_utf8_lossy(data);
    let settings = crate::links::Settings::example();
    let n = body.chars().count();
    let mut last = 0;
    for l in crate::links::find(&body, &settings) {
        assert!(last <= l.begin && l.begin < l.end && l.end <= n, "{l:?}");
        assert!(
            !l.uri.is_empty() && l.uri.bytes().all(|b| b.is_ascii_graphic()),
            "{l:?}"
        );
        last = l.end;
    }
}

/// Run `data` through the SCRAM server (split into client-first and
/// client-final at the first 0xFF byte) and the PLAIN parser.
pub fn sasl(data: &[u8]) {
    let _ = crate::sasl::plain::parse(data);
    let (first, fin) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    for (hash, plus) in [(ScramHash::Sha1, false), (ScramHash::Sha256, true)] {
        let bindings = ChannelBindings {
            tls_exporter: Some(vec![7; 32]),
            tls_server_end_point: None,
        };
        let mut s = ScramServer::new(hash, plus, true, bindings);
        if s.client_first(first).is_ok() {
            let creds = ScramCredentials::derive(hash, "pw", b"salt", 1).ok();
            let sf = s.server_first(creds.as_ref());
            assert!(!sf.is_empty());
            // Garbage must never authenticate.
            assert!(s.client_final(fin).is_err(), "a random proof was accepted");
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Valid stream fragments to mutate: real inputs reach deeper states
    /// than random bytes do.
    const SEEDS: &[&str] = &[
        "<message to='a@b' type='chat' id='1'><body>hi &amp; bye</body><x xmlns='urn:x' a='1'/></message>",
        "<iq type='set' id='r'><query xmlns='jabber:iq:roster'><item jid='c@d' name='C'><group>G</group></item></query></iq>",
        "<presence><show>away</show><status xml:lang='de'>weg</status><priority>5</priority></presence>",
        "<p:message xmlns:p='jabber:client' xmlns:q='urn:q' q:attr='v'><q:e/></p:message>",
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>",
        "<a><b><c><d><e><f><g><h><i><j><k><l><m></m></l></k></j></i></h></g></f></e></d></c></b></a>",
        "</stream:stream>",
        "  \n <presence/> ",
        "<message><x xmlns:p='http://www.w3.org/2000/xmlns/'/><y xmlns:xml='http://www.w3.org/XML/1998/namespace'/></message>",
        "<message><x xmlns='urn:long:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'><a/><a/><a/><a/><a/><a/><a/><a/></x></message>",
    ];

    /// How many inputs each property gets: CONFAB_FUZZ_CASES, default 2,000.
    fn cases() -> u64 {
        std::env::var("CONFAB_FUZZ_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(2000)
    }

    /// Run `target` on `cases()` inputs from `gen`, each from its own seed,
    /// so that a failure names the one seed (and prints the input) that
    /// reproduces it.
    fn check(name: &str, gen: impl Fn(&mut StdRng) -> Vec<u8>, target: fn(&[u8])) {
        for seed in 0..cases() {
            let mut rng = StdRng::seed_from_u64(seed);
            let input = gen(&mut rng);
            let r = std::panic::catch_unwind(|| target(&input));
            if let Err(e) = r {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!(
                    "{name}: seed {seed} failed: {msg}\ninput (keep it in fuzz/regressions/): {:?}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }

    fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
        let len = rng.random_range(0..max);
        (0..len).map(|_| rng.random::<u8>()).collect()
    }

    /// Insert, delete, replace or splice in a piece of another seed.
    fn mutate(rng: &mut StdRng, seed: &[u8], ops: usize) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..ops {
            let at = rng.random_range(0..=v.len());
            let byte: u8 = rng.random();
            match rng.random_range(0..4) {
                0 => v.insert(at, byte),
                1 if at < v.len() => {
                    v.remove(at);
                }
                2 if at < v.len() => v[at] = byte,
                3 => {
                    let other = SEEDS[rng.random_range(0..SEEDS.len())].as_bytes();
                    let take = rng.random_range(0..=other.len().min(32));
                    v.splice(at..at, other[..take].iter().copied());
                }
                _ => {}
            }
        }
        v
    }

    #[test]
    fn stream_random_bytes() {
        check("stream", |r| random_bytes(r, 3000), super::stream);
    }

    #[test]
    fn stream_mutated_stanzas() {
        check(
            "stream",
            |r| {
                let mut doc = Vec::new();
                for _ in 0..r.random_range(1..6) {
                    doc.extend_from_slice(SEEDS[r.random_range(0..SEEDS.len())].as_bytes());
                }
                let ops = r.random_range(0..12);
                let mut data = vec![r.random_range(0..2u8), r.random_range(1..=255u8)];
                data.extend(mutate(r, &doc, ops));
                data
            },
            super::stream,
        );
    }

    #[test]
    fn stored_documents() {
        check("stored", |r| random_bytes(r, 2000), super::stored);
    }

    #[test]
    fn links_random_and_mutated() {
        check("links", |r| random_bytes(r, 800), super::links);
        let seed: &[u8] = b"call +49 123 456 - 12 or 0123 45612, ext 12, <\\\\srv\\my dir\\f>, a.b@c.de www.x.org/(a) https://e.com/?q=1.";
        check(
            "links",
            |r| {
                let ops = r.random_range(0..10);
                mutate(r, seed, ops)
            },
            super::links,
        );
    }

    #[test]
    fn sasl_random() {
        check("sasl", |r| random_bytes(r, 600), super::sasl);
    }

    #[test]
    fn sasl_mutated() {
        let seed: &[u8] = b"n,,n=alice,r=fyko+d2lbbFgONRv9qkxdawL\xffc=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=";
        check(
            "sasl",
            |r| {
                let ops = r.random_range(0..8);
                mutate(r, seed, ops)
            },
            super::sasl,
        );
    }

    /// Every kept input (fuzz/regressions/TARGET/*, fuzz/corpus/TARGET/seed-*)
    /// still passes its target.
    #[test]
    fn replay_corpus_and_regressions() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        type Target = (&'static str, fn(&[u8]));
        let targets: [Target; 4] = [
            ("stream", super::stream),
            ("sasl", super::sasl),
            ("stored", super::stored),
            ("links", super::links),
        ];
        let mut replayed = 0;
        for (name, run) in targets {
            for dir in [
                root.join("regressions").join(name),
                root.join("corpus").join(name),
            ] {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for e in entries.flatten() {
                    let path = e.path();
                    let keep = dir.ends_with(name)
                        && dir.parent().is_some_and(|p| p.ends_with("regressions"))
                        || path
                            .file_name()
                            .is_some_and(|f| f.to_string_lossy().starts_with("seed-"));
                    if keep {
                        run(&std::fs::read(&path).unwrap());
                        replayed += 1;
                    }
                }
            }
        }
        assert!(
            replayed >= 10,
            "the seed corpus is missing ({replayed} inputs)"
        );
    }

    /// A stream split at every possible point reads the same.
    #[test]
    fn chunking_does_not_change_what_is_read() {
        use crate::xml::{Frame, Limits, StreamReader};
        use std::collections::VecDeque;
        let mut doc = super::HEADER.to_vec();
        for s in SEEDS.iter().take(5) {
            doc.extend_from_slice(s.as_bytes());
        }
        let read = |chunk: usize| {
            let mut r = StreamReader::new(Limits::default());
            let mut out = VecDeque::new();
            for piece in doc.chunks(chunk) {
                r.feed(piece, &mut out).unwrap();
            }
            out.into_iter()
                .filter_map(|f| match f {
                    Frame::Element(e) => Some(e),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let whole = read(doc.len());
        assert_eq!(whole.len(), 5);
        for chunk in 1..40 {
            assert_eq!(read(chunk), whole, "chunk size {chunk}");
        }
    }
}

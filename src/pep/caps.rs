//! Entity capabilities (XEP-0115) as PEP needs them: which nodes each
//! available resource wants notifications of (`NODE+notify` among its
//! features).
//!
//! A resource advertises a verification string in its presence. The
//! first time the server sees one it asks that resource for the disco#info
//! of `node#ver`, checks the answer against the hash, and keeps it for
//! every resource that advertises the same string. An answer that does
//! not match its hash (or a legacy `<c/>` without one) serves only the
//! resource that gave it.
//!
//! All of it is memory of live sessions, bounded: after a restart clients
//! send presence again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use minidom::Element;
use xmpp_parsers::caps::{compute_disco, hash_caps};
use xmpp_parsers::disco::DiscoInfoResult;
use xmpp_parsers::hashes::Algo;
use xmpp_parsers::jid::FullJid;

use crate::stanza::element;
use crate::xml::ns;

pub const NS_CAPS: &str = "http://jabber.org/protocol/caps";
/// Id prefix of the server's disco#info requests.
pub const QUERY_PREFIX: &str = "caps-";

/// Verification strings remembered, beyond which the oldest are forgotten.
const MAX_KNOWN: usize = 4096;
/// Requests awaiting an answer at once.
const MAX_PENDING: usize = 1024;
/// How long an unanswered request blocks another for the same string.
const PENDING_FOR: Duration = Duration::from_secs(30);

/// The nodes a resource wants notifications of.
#[derive(Debug, Default)]
pub struct Notify(HashSet<String>);

impl Notify {
    pub fn wants(&self, node: &str) -> bool {
        self.0.contains(node)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    fn of(info: &DiscoInfoResult) -> Notify {
        Notify(
            info.features
                .iter()
                .filter_map(|f| f.strip_suffix("+notify"))
                .map(str::to_string)
                .collect(),
        )
    }
}

struct Advert {
    /// The verification string as the resource sent it (with its hash).
    key: String,
    notify: Option<Arc<Notify>>,
}

struct Pending {
    key: String,
    full: FullJid,
    node: String,
    ver: String,
    algo: Option<Algo>,
    sent: Instant,
}

#[derive(Default)]
struct State {
    resources: HashMap<FullJid, Advert>,
    known: HashMap<String, Arc<Notify>>,
    /// Insertion order of `known`, for forgetting the oldest.
    known_order: std::collections::VecDeque<String>,
    pending: HashMap<String, Pending>,
}

#[derive(Default)]
pub struct Caps {
    state: Mutex<State>,
}

/// What a presence means for a resource's capabilities.
pub enum Seen {
    /// Nothing changed.
    Same,
    /// Its notification wishes are known now (they changed).
    Ready,
    /// The server must ask it: send this request.
    Ask(Element),
}

fn algo_of(hash: &str) -> Option<Algo> {
    match hash {
        "sha-1" => Some(Algo::Sha_1),
        "sha-256" => Some(Algo::Sha_256),
        "sha-512" => Some(Algo::Sha_512),
        _ => None,
    }
}

impl Caps {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The notification wishes of a resource, when known.
    pub fn notify(&self, full: &FullJid) -> Option<Arc<Notify>> {
        self.lock()
            .resources
            .get(full)
            .and_then(|a| a.notify.clone())
    }

    /// The resource went unavailable or away.
    pub fn forget(&self, full: &FullJid) {
        self.lock().resources.remove(full);
    }

    /// An available presence of a local resource, from `server` (the
    /// domain that asks).
    pub fn presence(&self, full: &FullJid, el: &Element, server: &str) -> Seen {
        let c = el.get_child("c", NS_CAPS);
        let (node, ver, hash) = match c {
            Some(c) => (
                c.attr("node").unwrap_or_default(),
                c.attr("ver").unwrap_or_default(),
                c.attr("hash"),
            ),
            None => ("", "", None),
        };
        let mut st = self.lock();
        if ver.is_empty() || node.is_empty() {
            // No capabilities in this presence: a resource keeps what it
            // advertised before (clients need not repeat it), one that
            // never did gets no notifications.
            st.resources.entry(full.clone()).or_insert_with(|| Advert {
                key: String::new(),
                notify: Some(Arc::new(Notify::default())),
            });
            return Seen::Same;
        }
        let algo = hash.and_then(algo_of);
        let key = match (hash, &algo) {
            (Some(h), Some(_)) => format!("{h}\0{ver}"),
            // Legacy or unknown hash: good for this resource only.
            _ => format!("{full}\0{node}#{ver}"),
        };
        if st.resources.get(full).is_some_and(|a| a.key == key) {
            return Seen::Same;
        }
        let known = st.known.get(&key).cloned();
        let ready = known.is_some();
        st.resources.insert(
            full.clone(),
            Advert {
                key: key.clone(),
                notify: known,
            },
        );
        if ready {
            return Seen::Ready;
        }
        let now = Instant::now();
        st.pending
            .retain(|_, p| now.duration_since(p.sent) < PENDING_FOR);
        if st.pending.values().any(|p| p.key == key) {
            return Seen::Same;
        }
        match ask(&mut st, key, full, node, ver, algo, server) {
            Some(iq) => Seen::Ask(iq),
            None => Seen::Same,
        }
    }

    /// The answer to a request: the resources whose wishes are known now,
    /// and the request to send another resource when the answer was good
    /// only for the one that gave it.
    pub fn answer(&self, el: &Element, server: &str) -> (Vec<FullJid>, Option<(FullJid, Element)>) {
        let id = el.attr("id").unwrap_or_default();
        let from = el.attr("from").unwrap_or_default();
        let mut st = self.lock();
        if st.pending.get(id).is_none_or(|p| p.full.as_str() != from) {
            // Not asked, or not from whom it was asked: ignored.
            return (Vec::new(), None);
        }
        let Some(p) = st.pending.remove(id) else {
            return (Vec::new(), None);
        };
        let info = el
            .get_child("query", ns::DISCO_INFO)
            .filter(|_| crate::stanza::stanza_type(el) == "result")
            .and_then(|q| DiscoInfoResult::try_from(q.clone()).ok());
        let notify = Arc::new(info.as_ref().map(Notify::of).unwrap_or_default());
        let verified = info.as_ref().is_some_and(|info| {
            p.algo.clone().is_some_and(|algo| {
                hash_caps(&compute_disco(info), algo).is_ok_and(|h| {
                    base64::engine::general_purpose::STANDARD.encode(&h.hash) == p.ver
                })
            })
        });
        if !verified {
            // An error, an unreadable answer or one that does not match
            // its hash: it serves the resource that gave it, and another
            // resource advertising the same string is asked in turn.
            let mut ready = Vec::new();
            if let Some(a) = st.resources.get_mut(&p.full) {
                if a.key == p.key {
                    a.notify = Some(notify);
                    ready.push(p.full.clone());
                }
            }
            let next = st
                .resources
                .iter()
                .find(|(f, a)| a.key == p.key && a.notify.is_none() && **f != p.full)
                .map(|(f, _)| f.clone());
            let asked = next.and_then(|f| {
                let iq = ask(&mut st, p.key.clone(), &f, &p.node, &p.ver, p.algo, server)?;
                Some((f, iq))
            });
            return (ready, asked);
        }
        if st.known.len() >= MAX_KNOWN {
            if let Some(old) = st.known_order.pop_front() {
                st.known.remove(&old);
            }
        }
        st.known.insert(p.key.clone(), notify.clone());
        st.known_order.push_back(p.key.clone());
        let mut ready = Vec::new();
        for (full, a) in st.resources.iter_mut() {
            if a.key == p.key && a.notify.is_none() {
                a.notify = Some(notify.clone());
                ready.push(full.clone());
            }
        }
        (ready, None)
    }
}

/// Record a request for `node#ver` to `full` and build it (`None` when
/// too many are waiting already).
fn ask(
    st: &mut State,
    key: String,
    full: &FullJid,
    node: &str,
    ver: &str,
    algo: Option<Algo>,
    server: &str,
) -> Option<Element> {
    if st.pending.len() >= MAX_PENDING {
        return None;
    }
    let id = format!("{QUERY_PREFIX}{}", crate::stanza::random_id(8));
    st.pending.insert(
        id.clone(),
        Pending {
            key,
            full: full.clone(),
            node: node.to_string(),
            ver: ver.to_string(),
            algo,
            sent: Instant::now(),
        },
    );
    let mut iq = element(
        "iq",
        ns::CLIENT,
        &[
            ("type", "get"),
            ("id", &id),
            ("from", server),
            ("to", full.as_str()),
        ],
    );
    iq.append_child(element(
        "query",
        ns::DISCO_INFO,
        &[("node", &format!("{node}#{ver}"))],
    ));
    Some(iq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(ver: &str) -> Element {
        crate::xml::parse(&format!(
            "<presence xmlns='jabber:client'><c xmlns='{NS_CAPS}' hash='sha-1' \
             node='http://example.org/client' ver='{ver}'/></presence>"
        ))
        .unwrap()
    }

    // XEP-0115 §5.2's example: this disco#info hashes to the ver below.
    const VER: &str = "QgayPKawpkPSDYmwT/WM94uAlu0=";
    const INFO: &str = "<query xmlns='http://jabber.org/protocol/disco#info' \
        node='http://code.google.com/p/exodus#QgayPKawpkPSDYmwT/WM94uAlu0='>\
        <identity category='client' name='Exodus 0.9.1' type='pc'/>\
        <feature var='http://jabber.org/protocol/caps'/>\
        <feature var='http://jabber.org/protocol/disco#info'/>\
        <feature var='http://jabber.org/protocol/disco#items'/>\
        <feature var='http://jabber.org/protocol/muc'/></query>";

    fn answer(id: &str, from: &str, query: &str) -> Element {
        crate::xml::parse(&format!(
            "<iq xmlns='jabber:client' type='result' id='{id}' from='{from}'>{query}</iq>"
        ))
        .unwrap()
    }

    #[test]
    fn asks_once_verifies_and_shares() {
        let caps = Caps::default();
        let a: FullJid = "a@x/1".parse().unwrap();
        let b: FullJid = "b@x/1".parse().unwrap();
        let Seen::Ask(q) = caps.presence(&a, &presence(VER), "x") else {
            panic!("unknown caps are asked for");
        };
        // A second resource with the same string waits for the same answer.
        assert!(matches!(caps.presence(&b, &presence(VER), "x"), Seen::Same));
        let id = q.attr("id").unwrap().to_string();
        // An answer from someone else is ignored; the real one still counts.
        assert!(caps.answer(&answer(&id, "b@x/1", INFO), "x").0.is_empty());
        let (mut ready, ask) = caps.answer(&answer(&id, "a@x/1", INFO), "x");
        assert!(ask.is_none());
        ready.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        assert_eq!(ready, vec![a.clone(), b.clone()]);
        assert!(!caps.notify(&a).unwrap().wants("urn:xmpp:bookmarks:1"));
        // Known now: a third resource is ready at once.
        let c: FullJid = "c@x/1".parse().unwrap();
        assert!(matches!(
            caps.presence(&c, &presence(VER), "x"),
            Seen::Ready
        ));
        assert!(matches!(caps.presence(&c, &presence(VER), "x"), Seen::Same));
        // A presence without caps keeps what the resource advertised.
        let plain = crate::xml::parse("<presence xmlns='jabber:client'/>").unwrap();
        assert!(matches!(caps.presence(&c, &plain, "x"), Seen::Same));
        assert!(caps.notify(&c).is_some());
    }

    #[test]
    fn a_forged_answer_serves_only_its_resource() {
        let caps = Caps::default();
        let a: FullJid = "a@x/1".parse().unwrap();
        let b: FullJid = "b@x/1".parse().unwrap();
        let Seen::Ask(q) = caps.presence(&a, &presence(VER), "x") else {
            panic!("asked");
        };
        assert!(matches!(caps.presence(&b, &presence(VER), "x"), Seen::Same));
        let forged = "<query xmlns='http://jabber.org/protocol/disco#info'>\
            <identity category='client' type='pc'/>\
            <feature var='urn:xmpp:bookmarks:1+notify'/></query>";
        let id = q.attr("id").unwrap().to_string();
        let (ready, ask) = caps.answer(&answer(&id, "a@x/1", forged), "x");
        assert_eq!(ready, vec![a.clone()]);
        assert!(caps.notify(&a).unwrap().wants("urn:xmpp:bookmarks:1"));
        // b, who waited for the same string, is asked in turn.
        let (to, q) = ask.expect("the other resource is asked");
        assert_eq!(to, b);
        assert!(caps.notify(&b).is_none());
        let id = q.attr("id").unwrap().to_string();
        let (ready, _) = caps.answer(&answer(&id, "b@x/1", INFO), "x");
        assert_eq!(ready, vec![b.clone()]);
        // The genuine answer is remembered; the forged one was not.
        let c: FullJid = "c@x/1".parse().unwrap();
        assert!(matches!(
            caps.presence(&c, &presence(VER), "x"),
            Seen::Ready
        ));
        assert!(!caps.notify(&c).unwrap().wants("urn:xmpp:bookmarks:1"));
    }
}

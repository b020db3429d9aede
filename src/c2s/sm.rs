//! Stream management (XEP-0198 v3): the counters and the queue of stanzas
//! sent and not yet acknowledged, and the registry through which a new
//! connection takes over a session it resumes.
//!
//! A stanza the server sent counts as delivered only once the client
//! acknowledged it; until then it waits here, with its [`Fate`]. The `h`
//! the server reports for the client's stanzas counts only what is
//! durably handled: the session answers `<r/>` after a group commit.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use minidom::Element;
use tokio::sync::{mpsc, oneshot};
use xmpp_parsers::jid::BareJid;

use super::negotiate::Bound;
use crate::sessions::Queued;
use crate::stanza::element;
use crate::xml::ns;

/// A new connection asks the session with this id to hand itself over.
pub struct ResumeRequest {
    /// The account the new connection authenticated as.
    pub bare: BareJid,
    pub reply: oneshot::Sender<Box<Bound>>,
}

/// A resumable session: its account, session id, and where to ask it.
type Entry = (BareJid, u64, mpsc::Sender<ResumeRequest>);

/// The sessions that may be resumed, by resumption id.
#[derive(Default)]
pub struct Resumable {
    map: Mutex<HashMap<String, Entry>>,
}

impl Resumable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new resumable session: its id and the receiver of requests.
    pub fn register(
        &self,
        bare: &BareJid,
        session: u64,
    ) -> (String, mpsc::Receiver<ResumeRequest>) {
        let (tx, rx) = mpsc::channel(1);
        let id = crate::stanza::random_id(18);
        self.lock().insert(id.clone(), (bare.clone(), session, tx));
        (id, rx)
    }

    /// The session ended for good.
    pub fn forget(&self, id: &str, session: u64) {
        let mut m = self.lock();
        if m.get(id).is_some_and(|(_, s, _)| *s == session) {
            m.remove(id);
        }
    }

    /// Ask the session `id` of `bare` to hand itself over.
    pub async fn take(&self, id: &str, bare: &BareJid) -> Option<Box<Bound>> {
        let tx = {
            let m = self.lock();
            match m.get(id) {
                Some((owner, _, tx)) if owner == bare => tx.clone(),
                _ => return None,
            }
        };
        let (reply, rx) = oneshot::channel();
        tx.try_send(ResumeRequest {
            bare: bare.clone(),
            reply,
        })
        .ok()?;
        tokio::time::timeout(std::time::Duration::from_secs(10), rx)
            .await
            .ok()?
            .ok()
    }
}

/// A session's stream-management state.
pub struct Sm {
    /// Resumption id, when the session may be resumed.
    pub id: Option<String>,
    pub requests: Option<mpsc::Receiver<ResumeRequest>>,
    /// Stanzas handled from the client (mod 2^32).
    pub h_in: u32,
    /// Stanzas sent to the client (mod 2^32).
    pub h_out: u32,
    /// Sent and not yet acknowledged, oldest first: number `h_out -
    /// unacked.len() + 1` first.
    pub unacked: VecDeque<Queued>,
    /// An `<r/>` is out and not answered.
    pub asked: bool,
}

/// The client's `h` is more than the server sent.
pub struct TooHigh {
    pub h: u32,
    pub sent: u32,
}

impl Sm {
    pub fn new(id: Option<(String, mpsc::Receiver<ResumeRequest>)>) -> Sm {
        let (id, requests) = match id {
            Some((i, r)) => (Some(i), Some(r)),
            None => (None, None),
        };
        Sm {
            id,
            requests,
            h_in: 0,
            h_out: 0,
            unacked: VecDeque::new(),
            asked: false,
        }
    }

    /// Stanzas were written.
    pub fn sent(&mut self, items: Vec<Queued>) {
        for q in items {
            self.h_out = self.h_out.wrapping_add(1);
            self.unacked.push_back(q);
        }
    }

    /// The client acknowledged everything up to `h`: those stanzas leave
    /// the queue (returned, to be settled as written).
    pub fn ack(&mut self, h: u32) -> Result<Vec<Queued>, TooHigh> {
        let outstanding = self.unacked.len() as u32;
        let first_unacked = self.h_out.wrapping_sub(outstanding);
        let newly = h.wrapping_sub(first_unacked);
        if newly > outstanding {
            // Either more than was sent, or an old count (an h below what
            // was acknowledged before wraps to a huge number).
            let behind = first_unacked.wrapping_sub(h);
            if behind <= outstanding.max(1) << 16 && behind != 0 {
                // An h older than one already applied: nothing new.
                return Ok(Vec::new());
            }
            return Err(TooHigh {
                h,
                sent: self.h_out,
            });
        }
        self.asked = false;
        Ok(self.unacked.drain(..newly as usize).collect())
    }
}

pub fn enabled(id: Option<&str>, max: u64) -> Element {
    let mut e = element("enabled", ns::SM, &[]);
    if let Some(id) = id {
        crate::stanza::set_attr(&mut e, "id", id);
        crate::stanza::set_attr(&mut e, "resume", "true");
        crate::stanza::set_attr(&mut e, "max", max.to_string());
    }
    e
}

/// `<failed/>` with a stanza error condition (and the `h` when known).
pub fn failed(cond: &str, h: Option<u32>) -> Element {
    let mut e = element("failed", ns::SM, &[]);
    if let Some(h) = h {
        crate::stanza::set_attr(&mut e, "h", h.to_string());
    }
    e.append_child(Element::bare(cond, ns::STANZAS));
    e
}

pub fn ack_element(h: u32) -> Element {
    element("a", ns::SM, &[("h", &h.to_string())])
}

pub const REQUEST: &[u8] = b"<r xmlns='urn:xmpp:sm:3'/>";

/// The stream error for an `h` above what was sent (XEP-0198 §4).
pub fn too_high_error(t: &TooHigh) -> Element {
    let mut e = crate::stanza::stream_error(
        xmpp_parsers::stream_error::DefinedCondition::UndefinedCondition,
        Some("the acknowledged count is higher than the number of stanzas sent"),
    );
    e.append_child(element(
        "handled-count-too-high",
        ns::SM,
        &[("h", &t.h.to_string()), ("send-count", &t.sent.to_string())],
    ));
    e
}

/// A stanza sent again after resumption: a message gets a XEP-0203 delay
/// (once), so the client knows it is not new.
pub fn redelivered(domain: &str, q: Queued) -> Queued {
    if !q.xml.starts_with(b"<message") {
        return q;
    }
    let Ok(mut el) = crate::xml::parse_client_stanza(&q.xml) else {
        return q;
    };
    if el
        .children()
        .any(|c| c.is("delay", ns::DELAY) && c.attr("from") == Some(domain))
    {
        return q;
    }
    crate::stanza::add_delay(&mut el, domain, chrono::Utc::now());
    Queued {
        xml: crate::sessions::serialize(&el),
        fate: q.fate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::Fate;

    fn q() -> Queued {
        Queued {
            xml: b"<message/>".to_vec().into(),
            fate: Fate::Reroute,
        }
    }

    #[test]
    fn acks_count_and_wrap() {
        let mut sm = Sm::new(None);
        sm.h_out = u32::MAX - 1;
        sm.sent(vec![q(), q(), q()]);
        assert_eq!(sm.h_out, 1);
        assert_eq!(sm.ack(u32::MAX).ok().map(|v| v.len()), Some(1));
        assert_eq!(sm.ack(1).ok().map(|v| v.len()), Some(2));
        assert!(sm.ack(5).is_err());
        // An old h again: nothing new, no error.
        assert_eq!(sm.ack(u32::MAX).ok().map(|v| v.len()), Some(0));
    }
}

//! Client State Indication (XEP-0352). While a client says it is
//! `<inactive/>`, presence updates for it are held, only the latest per
//! contact resource; everything else (messages above all) is delivered at
//! once. `<active/>` delivers what was held.

use crate::sessions::Queued;

/// Contacts' presences held at most; beyond it they are written through.
const MAX_HELD: usize = 10_000;

#[derive(Default)]
pub struct Held {
    /// The latest held presence of each sender, in the order first held.
    items: Vec<(Box<str>, Queued)>,
}

/// The sender of a presence update that may be held (available or
/// unavailable; subscription requests and errors are not held).
fn holdable(q: &Queued) -> Option<String> {
    if !q.xml.starts_with(b"<presence") {
        return None;
    }
    let el = crate::xml::parse_client_stanza(&q.xml).ok()?;
    match crate::stanza::stanza_type(&el) {
        "" | "unavailable" => el.attr("from").map(str::to_string),
        _ => None,
    }
}

impl Held {
    /// Hold `q` if it is a presence update; otherwise hand it back.
    pub fn hold(&mut self, q: Queued) -> Option<Queued> {
        let Some(from) = holdable(&q) else {
            return Some(q);
        };
        if let Some(slot) = self.items.iter_mut().find(|(f, _)| **f == *from) {
            slot.1 = q;
            return None;
        }
        if self.items.len() >= MAX_HELD {
            return Some(q);
        }
        self.items.push((from.into_boxed_str(), q));
        None
    }

    /// Everything held, oldest first.
    pub fn take(&mut self) -> Vec<Queued> {
        std::mem::take(&mut self.items)
            .into_iter()
            .map(|(_, q)| q)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::Fate;

    fn q(s: &str) -> Queued {
        Queued {
            xml: s.as_bytes().to_vec().into(),
            fate: Fate::Drop,
        }
    }

    #[test]
    fn only_the_latest_presence_per_contact_is_held() {
        let mut h = Held::default();
        assert!(h
            .hold(q("<presence from='a@x/1'><show>away</show></presence>"))
            .is_none());
        assert!(h.hold(q("<presence from='b@x/1'/>")).is_none());
        assert!(h
            .hold(q("<presence from='a@x/1' type='unavailable'/>"))
            .is_none());
        assert!(h
            .hold(q("<presence from='c@x' type='subscribe'/>"))
            .is_some());
        assert!(h
            .hold(q("<message from='a@x/1'><body>x</body></message>"))
            .is_some());
        let out = h.take();
        assert_eq!(out.len(), 2);
        assert!(String::from_utf8_lossy(&out[0].xml).contains("unavailable"));
    }
}

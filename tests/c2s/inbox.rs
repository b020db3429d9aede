//! The journal as the XEP-0430 inbox (`urn:xmpp:inbox:1`,
//! xeps/xep-0430.md): unread counts, markers from any device, pushes,
//! paging, filters, actions, names, deletes.

use std::time::Duration;

use minidom::Element;

use crate::common::*;

const NS: &str = "urn:xmpp:inbox:1";
const MARKERS: &str = "urn:xmpp:chat-markers:0";
const HISTORY: &str = "urn:confab:history:0";

fn chat(to: &str, id: &str, text: &str) -> String {
    format!("<message to='{to}' type='chat' id='{id}'><body>{text}</body></message>")
}

/// What an inbox query returned.
struct Inbox {
    entries: Vec<Element>,
    iq: Element,
}

impl Inbox {
    fn entry(&self, jid: &str) -> Option<&Element> {
        self.entries
            .iter()
            .filter_map(|m| m.get_child("entry", NS))
            .find(|e| e.attr("jid") == Some(jid))
    }
    fn jids(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter_map(|m| m.get_child("entry", NS))
            .filter_map(|e| e.attr("jid").map(String::from))
            .collect()
    }
    fn unread(&self, jid: &str) -> Option<u32> {
        self.entry(jid)
            .and_then(|e| e.attr("unread"))
            .and_then(|u| u.parse().ok())
    }
    fn fin(&self) -> &Element {
        self.iq
            .get_child("fin", NS)
            .unwrap_or_else(|| panic!("no <fin/>: {}", String::from(&self.iq)))
    }
    fn rsm(&self, name: &str) -> Option<String> {
        self.fin()
            .get_child("set", RSM)
            .and_then(|s| s.get_child(name, RSM))
            .map(|e| e.text())
    }
}

async fn inbox(c: &mut Client, attrs: &str, inner: &str) -> Inbox {
    let id = c.id();
    c.send_raw(&format!(
        "<iq type='get' id='{id}'><inbox xmlns='{NS}' queryid='{id}'{attrs}>{inner}</inbox></iq>"
    ))
    .await;
    let mut entries = Vec::new();
    loop {
        let e = c
            .expect_where(|e| {
                (e.name() == "iq" && e.attr("id") == Some(id.as_str()))
                    || (e.name() == "message"
                        && e.get_child("entry", NS).is_some()
                        && e.attr("type") != Some("headline"))
            })
            .await;
        if e.name() == "iq" {
            return Inbox { entries, iq: e };
        }
        entries.push(e);
    }
}

fn form(fields: &[(&str, &str)]) -> String {
    let mut x = format!(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{NS}</value></field>"
    );
    for (var, value) in fields {
        x.push_str(&format!(
            "<field var='{var}'><value>{value}</value></field>"
        ));
    }
    x.push_str("</x>");
    x
}

fn is_push(e: &Element) -> bool {
    e.name() == "message"
        && e.attr("type") == Some("headline")
        && e.get_child("entry", NS).is_some()
}

async fn settle(c: &mut Client) {
    c.iq("get", Some("localhost"), "<ping xmlns='urn:xmpp:ping'/>")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_counts_markers_from_another_device_and_pushes() {
    let s = TestServer::start().await;
    s.add_user("alice", "a").await;
    s.add_user("bob", "b").await;
    let mut a = s.online("alice", "a", "pc").await;
    let mut a2 = s.online("alice", "a", "phone").await;
    let mut b = s.online("bob", "b", "desk").await;
    // Alice names bob in her roster; her vCard says who she is.
    a.iq(
        "set",
        None,
        "<query xmlns='jabber:iq:roster'><item jid='bob@localhost' name='Bobby'/></query>",
    )
    .await;
    a.iq(
        "set",
        None,
        "<vCard xmlns='vcard-temp'><FN>Alice Liddell</FN></vCard>",
    )
    .await;
    let info = a
        .iq(
            "get",
            Some("localhost"),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    assert!(String::from(&info).contains(NS));
    for i in 0..3 {
        let t = format!("m{i}");
        b.send_raw(&chat("alice@localhost", &t, &t)).await;
        a2.expect_where(|e| body(e).as_deref() == Some(t.as_str()))
            .await;
    }
    let r = inbox(&mut a, "", "").await;
    assert_eq!(r.jids(), vec!["bob@localhost"]);
    assert_eq!(r.unread("bob@localhost"), Some(3));
    let e = r.entry("bob@localhost").unwrap();
    assert_eq!(e.attr("name"), Some("Bobby"));
    // The last message, forwarded, with its stanza-id.
    let res = r.entries[0]
        .get_child("result", MAM)
        .expect("the last message");
    let fwd = res.get_child("forwarded", "urn:xmpp:forward:0").unwrap();
    let m = fwd.get_child("message", CLIENT).unwrap();
    assert_eq!(body(m).as_deref(), Some("m2"));
    assert_eq!(e.attr("id"), res.attr("id"));
    let mam = a.mam(&mam_form(&[("with", "bob@localhost")])).await;
    assert_eq!(mam.ids().last().map(String::as_str), res.attr("id"));
    assert_eq!(r.fin().attr("total"), Some("1"));
    assert_eq!(r.fin().attr("unread"), Some("1"));
    assert_eq!(r.fin().attr("all-unread"), Some("3"));
    // Bob's inbox: alice by her vCard name, nothing unread.
    let rb = inbox(&mut b, "", "").await;
    assert_eq!(rb.unread("alice@localhost"), Some(0));
    assert_eq!(
        rb.entry("alice@localhost").unwrap().attr("name"),
        Some("Alice Liddell")
    );
    // A marker for an unknown id passes on and changes nothing.
    a2.send_raw(&format!(
        "<message to='bob@localhost/desk' id='x1'><displayed xmlns='{MARKERS}' id='nope'/></message>"
    ))
    .await;
    b.expect_where(|e| e.get_child("displayed", MARKERS).is_some())
        .await;
    assert_eq!(inbox(&mut a, "", "").await.unread("bob@localhost"), Some(3));
    // Alice's phone displays m0: two are left, and the pc is told.
    a2.send_raw(&format!(
        "<message to='bob@localhost/desk' id='x2'><displayed xmlns='{MARKERS}' id='m0'/></message>"
    ))
    .await;
    // The marker reaches bob untouched.
    let got = b
        .expect_where(|e| {
            e.get_child("displayed", MARKERS)
                .is_some_and(|d| d.attr("id") == Some("m0"))
        })
        .await;
    assert_eq!(got.attr("from"), Some("alice@localhost/phone"));
    let p = a.expect_where(is_push).await;
    let pe = p.get_child("entry", NS).unwrap();
    assert_eq!(pe.attr("jid"), Some("bob@localhost"));
    assert_eq!(pe.attr("unread"), Some("2"));
    a2.expect_none_within(Duration::from_millis(200), is_push)
        .await;
    assert_eq!(inbox(&mut a, "", "").await.unread("bob@localhost"), Some(2));
    // An `acknowledged` marker for the last one reads the rest.
    a2.send_raw(&format!(
        "<message to='bob@localhost/desk' id='x3'><acknowledged xmlns='{MARKERS}' id='m2'/></message>"
    ))
    .await;
    let p = a.expect_where(is_push).await;
    assert_eq!(p.get_child("entry", NS).unwrap().attr("unread"), Some("0"));
    // More from bob, then alice answers from the pc: 0 again, the phone
    // is told.
    b.send_raw(&chat("alice@localhost", "m3", "m3")).await;
    a.expect_where(|e| body(e).as_deref() == Some("m3")).await;
    assert_eq!(inbox(&mut a, "", "").await.unread("bob@localhost"), Some(1));
    a.send_raw(&chat("bob@localhost", "r1", "hi bob")).await;
    b.expect_where(|e| body(e).as_deref() == Some("hi bob"))
        .await;
    let p = a2.expect_where(is_push).await;
    assert_eq!(p.get_child("entry", NS).unwrap().attr("unread"), Some("0"));
    let r = inbox(&mut a2, "", "").await;
    assert_eq!(r.unread("bob@localhost"), Some(0));
    let m = r.entries[0]
        .get_child("result", MAM)
        .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
        .and_then(|f| f.get_child("message", CLIENT))
        .unwrap();
    assert_eq!(body(m).as_deref(), Some("hi bob"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_filters_actions_and_bad_forms() {
    let s = TestServer::start().await;
    s.add_user("alice", "a").await;
    let names = ["bob", "carol", "dave", "erin", "frank"];
    for u in names {
        s.add_user(u, "pw").await;
    }
    let mut a = s.online("alice", "a", "pc").await;
    let mut a2 = s.online("alice", "a", "phone").await;
    a.iq(
        "set",
        None,
        "<query xmlns='jabber:iq:roster'><item jid='erin@localhost' name='Project Zebra'/></query>",
    )
    .await;
    // One message from each, in order: frank is the newest.
    for u in names {
        let mut c = s.login(u, "pw", "r").await;
        c.send_raw(&chat("alice@localhost", u, &format!("from {u}")))
            .await;
        settle(&mut c).await;
    }
    a.expect_where(|e| body(e).as_deref() == Some("from frank"))
        .await;
    let all = inbox(&mut a, "", "").await;
    let newest_first: Vec<String> = names
        .iter()
        .rev()
        .map(|u| format!("{u}@localhost"))
        .collect();
    assert_eq!(all.jids(), newest_first);
    // Pages of two, forward with `after`.
    let p1 = inbox(
        &mut a,
        "",
        &format!("<set xmlns='{RSM}'><max>2</max></set>"),
    )
    .await;
    assert_eq!(p1.jids(), newest_first[..2]);
    assert_eq!(p1.rsm("count").as_deref(), Some("5"));
    let last = p1.rsm("last").unwrap();
    let p2 = inbox(
        &mut a,
        "",
        &format!("<set xmlns='{RSM}'><max>2</max><after>{last}</after></set>"),
    )
    .await;
    assert_eq!(p2.jids(), newest_first[2..4]);
    // The last page with an empty `before`.
    let pl = inbox(
        &mut a,
        "",
        &format!("<set xmlns='{RSM}'><max>2</max><before/></set>"),
    )
    .await;
    assert_eq!(pl.jids(), newest_first[3..]);
    // Oldest first.
    let asc = inbox(&mut a, "", &form(&[("order", "asc")])).await;
    assert_eq!(
        asc.jids(),
        names
            .iter()
            .map(|u| format!("{u}@localhost"))
            .collect::<Vec<_>>()
    );
    // By name (the roster's) or JID, case-insensitive.
    let z = inbox(&mut a, "", &form(&[("urn:confab:inbox:name", "zEBRA")])).await;
    assert_eq!(z.jids(), vec!["erin@localhost"]);
    assert_eq!(z.fin().attr("total"), Some("1"));
    let c = inbox(&mut a, "", &form(&[("urn:confab:inbox:name", "carol")])).await;
    assert_eq!(c.jids(), vec!["carol@localhost"]);
    // Time bounds: nothing ends before 2000; everything starts after it.
    let none = inbox(&mut a, "", &form(&[("end", "2000-01-01T00:00:00Z")])).await;
    assert!(none.jids().is_empty());
    assert_eq!(none.fin().attr("total"), Some("0"));
    let every = inbox(&mut a, "", &form(&[("start", "2000-01-01T00:00:00Z")])).await;
    assert_eq!(every.jids().len(), 5);
    // Archive bob, mute carol, read dave: the phone is told each time.
    for (jid, action) in [
        ("bob@localhost", "<archive>true</archive>"),
        ("carol@localhost", "<mute>3600</mute>"),
        ("dave@localhost", "<read>true</read>"),
    ] {
        let r = a
            .iq(
                "set",
                None,
                &format!("<entry xmlns='{NS}' jid='{jid}'>{action}</entry>"),
            )
            .await;
        assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
        let p = a2.expect_where(is_push).await;
        assert_eq!(p.get_child("entry", NS).unwrap().attr("jid"), Some(jid));
    }
    let r = inbox(&mut a, "", "").await;
    assert_eq!(r.jids().len(), 4, "archived entries are hidden by default");
    assert!(r.entry("bob@localhost").is_none());
    let mute: i64 = r
        .entry("carol@localhost")
        .and_then(|e| e.attr("mute"))
        .and_then(|m| m.parse().ok())
        .unwrap();
    assert!(mute > 0);
    assert_eq!(r.unread("dave@localhost"), Some(0));
    let h = inbox(&mut a, "", &form(&[("hidden", "true")])).await;
    assert_eq!(
        h.entry("bob@localhost").unwrap().attr("archive"),
        Some("true")
    );
    // Unread only, by attribute and by field.
    let u = inbox(&mut a, " unread-only='true'", "").await;
    assert!(u.entry("dave@localhost").is_none());
    assert_eq!(u.jids().len(), 3);
    let u = inbox(&mut a, "", &form(&[("unread-only", "true")])).await;
    assert_eq!(u.jids().len(), 3);
    // Without the messages.
    let bare = inbox(&mut a, " messages='false'", "").await;
    assert!(bare
        .entries
        .iter()
        .all(|m| m.get_child("result", MAM).is_none()));
    // A new message brings bob's entry back.
    let mut b = s.login("bob", "pw", "r").await;
    b.send_raw(&chat("alice@localhost", "again", "again")).await;
    settle(&mut b).await;
    let r = inbox(&mut a, "", "").await;
    assert_eq!(r.jids()[0], "bob@localhost");
    assert_eq!(r.unread("bob@localhost"), Some(2));
    // Bad requests.
    for inner in [
        form(&[("order", "sideways")]),
        form(&[("start", "yesterday")]),
        form(&[("hidden", "maybe")]),
        form(&[("no-such-field", "1")]),
        format!("<set xmlns='{RSM}'><max>many</max></set>"),
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:mam:2</value></field></x>".into(),
    ] {
        let r = inbox(&mut a, "", &inner).await;
        assert_eq!(error_condition(&r.iq).as_deref(), Some("bad-request"), "{inner}");
    }
    let r = a
        .iq(
            "set",
            None,
            &format!("<entry xmlns='{NS}' jid='nobody@localhost'><read>true</read></entry>"),
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("item-not-found"));
    let r = a
        .iq(
            "set",
            None,
            &format!("<entry xmlns='{NS}' jid='bob@localhost'><mute>-4</mute></entry>"),
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    // The form is there to be asked for.
    let f = a.iq("get", None, &format!("<query xmlns='{NS}'/>")).await;
    assert!(String::from(&f).contains("urn:confab:inbox:name"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_change_the_inbox_and_counts_survive_a_restart() {
    let mut s = TestServer::start().await;
    s.add_user("alice", "a").await;
    s.add_user("bob", "b").await;
    s.add_user("carol", "c").await;
    let mut a = s.online("alice", "a", "pc").await;
    let mut a2 = s.online("alice", "a", "phone").await;
    let mut b = s.online("bob", "b", "desk").await;
    let mut c = s.online("carol", "c", "x").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let t = format!("b{i}");
        b.send_raw(&chat("alice@localhost", &t, &t)).await;
        let m = a
            .expect_where(|e| body(e).as_deref() == Some(t.as_str()))
            .await;
        ids.push(stanza_id(&m, "alice@localhost").unwrap());
    }
    c.send_raw(&chat("alice@localhost", "c0", "c0")).await;
    a.expect_where(|e| body(e).as_deref() == Some("c0")).await;
    // Deleting bob's last message: one unread less, the one before is
    // the last now.
    let r = a
        .iq(
            "set",
            None,
            &format!("<delete xmlns='{HISTORY}'><item id='{}'/></delete>", ids[2]),
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = inbox(&mut a2, "", "").await;
    assert_eq!(r.unread("bob@localhost"), Some(2));
    assert_eq!(
        r.entry("bob@localhost").unwrap().attr("id"),
        Some(ids[1].as_str())
    );
    // Bob's own inbox is untouched.
    let rb = inbox(&mut b, "", "").await;
    assert!(rb.entry("alice@localhost").unwrap().attr("id").is_some());
    // The whole conversation: the entry goes, the phone is told.
    let r = a
        .iq(
            "set",
            None,
            &format!("<delete xmlns='{HISTORY}' with='bob@localhost'/>"),
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let p = a2
        .expect_where(|e| {
            is_push(e) && e.get_child("entry", NS).unwrap().attr("removed") == Some("true")
        })
        .await;
    assert_eq!(
        p.get_child("entry", NS).unwrap().attr("jid"),
        Some("bob@localhost")
    );
    let r = inbox(&mut a, "", "").await;
    assert_eq!(r.jids(), vec!["carol@localhost"]);
    assert_eq!(inbox(&mut b, "", "").await.jids(), vec!["alice@localhost"]);
    // Counts are on disk.
    drop((a, a2, b, c));
    s.restart().await;
    let mut a = s.online("alice", "a", "pc").await;
    let r = inbox(&mut a, "", "").await;
    assert_eq!(r.jids(), vec!["carol@localhost"]);
    assert_eq!(r.unread("carol@localhost"), Some(1));
}

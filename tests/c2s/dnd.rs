//! Do Not Disturb defers delivery (`urn:confab:dnd-defer:0`,
//! xeps/confab-dnd.md): held while every resource is dnd, released in
//! order with a delay, durable, only chat/normal messages with a body.

use std::time::Duration;

use crate::common::*;

const PW: &str = "pw";
const DND_NS: &str = "urn:confab:dnd-defer:0";

async fn server_with(users: &[&str], defer: bool) -> TestServer {
    let s = TestServer::start_with(|c| c.dnd_defers_delivery = defer).await;
    for u in users {
        s.add_user(u, PW).await;
    }
    s
}

/// Log in and go available with `<show>dnd</show>`.
async fn online_dnd(s: &TestServer, user: &str, resource: &str) -> Client {
    let mut c = s.login(user, PW, resource).await;
    c.send_raw("<presence><show>dnd</show></presence>").await;
    let jid = c.jid.clone();
    c.expect_where(|e| e.name() == "presence" && e.attr("from") == Some(jid.as_str()))
        .await;
    c
}

fn chat(to: &str, text: &str) -> String {
    format!("<message to='{to}' type='chat' id='{text}'><body>{text}</body></message>")
}

fn has_body(e: &minidom::Element) -> bool {
    e.name() == "message" && body(e).is_some()
}

/// The IQ round trip orders after everything `c` sent before.
async fn settle(c: &mut Client) {
    c.iq("get", Some("localhost"), "<ping xmlns='urn:xmpp:ping'/>")
        .await;
}

async fn features(c: &mut Client) -> Vec<String> {
    let r = c
        .iq(
            "get",
            Some("localhost"),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    r.get_child("query", "http://jabber.org/protocol/disco#info")
        .map(|q| {
            q.children()
                .filter_map(|f| f.attr("var").map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnd_holds_messages_then_releases_them_in_order() {
    let s = server_with(&["alice", "bob"], true).await;
    let mut b = online_dnd(&s, "bob", "b").await;
    assert!(features(&mut b).await.iter().any(|f| f == DND_NS));
    let mut a = s.online("alice", PW, "a").await;
    for m in ["m1", "m2", "m3"] {
        a.send_raw(&chat("bob@localhost", m)).await;
    }
    // Not held: a receipt, a chat state.
    a.send_raw("<message to='bob@localhost' id='rc'><received xmlns='urn:xmpp:receipts' id='m0'/></message>")
        .await;
    a.send_raw("<message to='bob@localhost/b' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        .await;
    // Addressed to bob's full JID: held too.
    a.send_raw(&chat("bob@localhost/b", "m4")).await;
    settle(&mut a).await;
    let r = b
        .expect_where(|e| e.name() == "message" && e.attr("id") == Some("rc"))
        .await;
    assert!(r.get_child("received", "urn:xmpp:receipts").is_some());
    b.expect_where(|e| {
        e.name() == "message"
            && e.get_child("composing", "http://jabber.org/protocol/chatstates")
                .is_some()
    })
    .await;
    b.expect_none_within(Duration::from_millis(400), has_body)
        .await;
    // Archived as usual meanwhile: bob's archive has all four, and the
    // receipt (archived too, so other devices see status).
    let id = b.id();
    b.send_raw(&format!(
        "<iq type='set' id='{id}'><query xmlns='urn:xmpp:mam:2' queryid='q'/></iq>"
    ))
    .await;
    let fin = b
        .expect_where(|e| e.name() == "iq" && e.attr("id") == Some(id.as_str()))
        .await;
    let count = fin
        .get_child("fin", "urn:xmpp:mam:2")
        .and_then(|f| f.get_child("set", "http://jabber.org/protocol/rsm"))
        .and_then(|s| s.get_child("count", "http://jabber.org/protocol/rsm"))
        .map(|c| c.text());
    assert_eq!(count.as_deref(), Some("5"));
    // Out of dnd: all four, in order, with a delay and their stanza-id.
    b.send_raw("<presence><show>away</show></presence>").await;
    for m in ["m1", "m2", "m3", "m4"] {
        let got = b.expect_where(has_body).await;
        assert_eq!(body(&got).as_deref(), Some(m));
        assert!(
            got.get_child("delay", "urn:xmpp:delay").is_some(),
            "{m} has no delay"
        );
        assert!(got.get_child("stanza-id", "urn:xmpp:sid:0").is_some());
    }
    b.expect_none_within(Duration::from_millis(300), has_body)
        .await;
    // Not dnd any more: the next message arrives at once, without delay.
    a.send_raw(&chat("bob@localhost", "m5")).await;
    let got = b.expect_where(has_body).await;
    assert_eq!(body(&got).as_deref(), Some("m5"));
    assert!(got.get_child("delay", "urn:xmpp:delay").is_none());
    // dnd again, and out again: the held queue is taken a second time.
    b.send_raw("<presence><show>dnd</show></presence>").await;
    settle(&mut b).await;
    a.send_raw(&chat("bob@localhost", "m6")).await;
    settle(&mut a).await;
    b.expect_none_within(Duration::from_millis(300), has_body)
        .await;
    b.send_raw("<presence/>").await;
    let got = b.expect_where(has_body).await;
    assert_eq!(body(&got).as_deref(), Some("m6"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_resource_not_dnd_takes_messages_at_once() {
    let s = server_with(&["alice", "bob"], true).await;
    let mut b1 = online_dnd(&s, "bob", "b1").await;
    let mut a = s.online("alice", PW, "a").await;
    a.send_raw(&chat("bob@localhost", "held")).await;
    settle(&mut a).await;
    b1.expect_none_within(Duration::from_millis(300), has_body)
        .await;
    // A resource that is not dnd comes online: it takes what was held.
    let mut b2 = s.online("bob", PW, "b2").await;
    let got = b2.expect_where(has_body).await;
    assert_eq!(body(&got).as_deref(), Some("held"));
    // With b2 available nothing waits: a message to the bare JID reaches
    // b2 (and dnd b1 too, unless b2 is still taking the held queue, which
    // new messages then join so as not to overtake it), and one to b1's
    // full JID reaches b1.
    a.send_raw(&chat("bob@localhost", "bare")).await;
    let got = b2.expect_where(has_body).await;
    assert_eq!(body(&got).as_deref(), Some("bare"));
    a.send_raw(&chat("bob@localhost/b1", "full")).await;
    let got = b1
        .expect_where(|e| has_body(e) && body(e).as_deref() == Some("full"))
        .await;
    assert_eq!(body(&got).as_deref(), Some("full"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_survive_logout_and_restart() {
    let mut s = server_with(&["alice", "bob"], true).await;
    let mut b = online_dnd(&s, "bob", "b").await;
    let mut a = s.online("alice", PW, "a").await;
    a.send_raw(&chat("bob@localhost", "h1")).await;
    settle(&mut a).await;
    b.expect_none_within(Duration::from_millis(300), has_body)
        .await;
    b.close().await;
    a.send_raw(&chat("bob@localhost", "h2")).await;
    settle(&mut a).await;
    drop(a);
    s.restart().await;
    // Logged in dnd after the restart: still held.
    let mut b = online_dnd(&s, "bob", "b").await;
    b.expect_none_within(Duration::from_millis(400), has_body)
        .await;
    b.send_raw("<presence/>").await;
    for m in ["h1", "h2"] {
        let got = b.expect_where(has_body).await;
        assert_eq!(body(&got).as_deref(), Some(m));
        assert!(got.get_child("delay", "urn:xmpp:delay").is_some());
    }
    b.expect_none_within(Duration::from_millis(300), has_body)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnd_deferral_can_be_switched_off() {
    let s = server_with(&["alice", "bob"], false).await;
    let mut b = online_dnd(&s, "bob", "b").await;
    assert!(!features(&mut b).await.iter().any(|f| f == DND_NS));
    let mut a = s.online("alice", PW, "a").await;
    a.send_raw(&chat("bob@localhost", "now")).await;
    let got = b.expect_where(has_body).await;
    assert_eq!(body(&got).as_deref(), Some("now"));
}

/// Messages sent while the recipient flips in and out of dnd, with no
/// pause between: none may stay held once the recipient is out of dnd
/// (a race between storing a held message and a drain finding the queue
/// empty left one stored until the next presence change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_message_stays_held_when_dnd_flips_under_traffic() {
    let s = server_with(&["alice", "bob"], true).await;
    let mut alice = s.online("alice", PW, "a").await;
    let mut bob = online_dnd(&s, "bob", "b").await;
    const N: usize = 60;
    for i in 0..N {
        alice
            .send_raw(&chat("bob@localhost", &format!("m{i}")))
            .await;
        if i % 2 == 0 {
            bob.send_raw("<presence/>").await;
        } else {
            bob.send_raw("<presence><show>dnd</show></presence>").await;
        }
    }
    settle(&mut alice).await;
    bob.send_raw("<presence/>").await;
    let mut got = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < N && tokio::time::Instant::now() < deadline {
        if let Some(e) = bob.element_within(Duration::from_millis(500)).await {
            if has_body(&e) {
                got.insert(body(&e).unwrap_or_default());
            }
        }
    }
    let missing: Vec<String> = (0..N)
        .map(|i| format!("m{i}"))
        .filter(|m| !got.contains(m))
        .collect();
    assert!(
        missing.is_empty(),
        "still held once bob left dnd: {missing:?}"
    );
}

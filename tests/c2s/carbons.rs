//! Message Carbons (XEP-0280): both sides of a conversation reach every
//! carbons-enabled resource of a user.

use std::time::Duration;

use minidom::Element;

use crate::common::*;

const PW: &str = "pw";
const CARBONS: &str = "urn:xmpp:carbons:2";
const QUIET: Duration = Duration::from_millis(300);

/// A message whose body is `text`.
fn msg_with_body(text: &'static str) -> impl Fn(&Element) -> bool {
    move |e| e.name() == "message" && body(e).as_deref() == Some(text)
}

/// A carbon copy (`sent` or `received`) of a message whose body is `text`.
fn carbon_of(kind: &'static str, text: &'static str) -> impl Fn(&Element) -> bool {
    move |e| {
        e.name() == "message"
            && forwarded(e, kind).is_some_and(|m| body(m).as_deref() == Some(text))
    }
}

/// Any carbon copy.
fn any_carbon(e: &Element) -> bool {
    e.name() == "message" && e.children().any(|c| c.ns() == CARBONS)
}

fn forwarded<'a>(e: &'a Element, kind: &str) -> Option<&'a Element> {
    e.get_child(kind, CARBONS)?
        .get_child("forwarded", "urn:xmpp:forward:0")?
        .get_child("message", "jabber:client")
}

async fn enable(c: &mut Client) {
    let r = c
        .iq("set", None, "<enable xmlns='urn:xmpp:carbons:2'/>")
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
}

/// alice on a1 (priority 5) and a2 (priority 0) with carbons, a3 without;
/// bob on b.
async fn setup(s: &TestServer) -> (Client, Client, Client, Client) {
    s.add_user("alice", PW).await;
    s.add_user("bob", PW).await;
    let mut a1 = s.login("alice", PW, "a1").await;
    a1.send_raw("<presence><priority>5</priority></presence>")
        .await;
    let mut a2 = s.online("alice", PW, "a2").await;
    let a3 = s.online("alice", PW, "a3").await;
    let b = s.online("bob", PW, "b").await;
    enable(&mut a1).await;
    enable(&mut a2).await;
    // Enabling twice is not an error (XEP-0280 §9.1).
    enable(&mut a2).await;
    (a1, a2, a3, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertised_and_only_for_ones_own_session() {
    let s = TestServer::start().await;
    let (mut a1, _a2, _a3, mut b) = setup(&s).await;
    let info = a1
        .iq(
            "get",
            Some("localhost"),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    let features: Vec<_> = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .map(|q| {
            q.children()
                .filter_map(|f| f.attr("var").map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert!(features.iter().any(|f| f == CARBONS), "{features:?}");
    // bob cannot switch alice's carbons.
    let r = b
        .iq(
            "set",
            Some("alice@localhost"),
            "<enable xmlns='urn:xmpp:carbons:2'/>",
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-allowed"));
    // A get, or an unknown child, is a bad request.
    let r = a1
        .iq("get", None, "<enable xmlns='urn:xmpp:carbons:2'/>")
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_messages_are_copied() {
    let s = TestServer::start().await;
    let (mut a1, mut a2, mut a3, mut b) = setup(&s).await;

    // To a full JID: a1 gets it, a2 a <received/> copy, a3 (no carbons)
    // nothing.
    b.send_raw("<message to='alice@localhost/a1' type='chat' id='r1'><body>to a1</body></message>")
        .await;
    let m = a1.expect_where(msg_with_body("to a1")).await;
    assert_eq!(m.attr("from"), Some("bob@localhost/b"));
    let c = a2.expect_where(carbon_of("received", "to a1")).await;
    assert_eq!(c.attr("from"), Some("alice@localhost"));
    assert_eq!(c.attr("to"), Some("alice@localhost/a2"));
    assert_eq!(c.attr("type"), Some("chat"));
    let inner = forwarded(&c, "received").expect("forwarded message");
    assert_eq!(inner.attr("from"), Some("bob@localhost/b"));
    assert_eq!(inner.attr("to"), Some("alice@localhost/a1"));
    assert_eq!(inner.attr("id"), Some("r1"));
    a1.expect_none_within(QUIET, any_carbon).await;
    a3.expect_none_within(Duration::from_millis(10), |e| e.name() == "message")
        .await;

    // To the bare JID: the highest priority resource (a1) gets it, a2 a
    // copy.
    b.send_raw("<message to='alice@localhost' type='chat'><body>to alice</body></message>")
        .await;
    a1.expect_where(msg_with_body("to alice")).await;
    a2.expect_where(carbon_of("received", "to alice")).await;
    a3.expect_none_within(QUIET, |e| e.name() == "message")
        .await;

    // A normal message with a body is copied; a headline is not.
    b.send_raw("<message to='alice@localhost/a1'><body>normal</body></message>")
        .await;
    a2.expect_where(carbon_of("received", "normal")).await;
    b.send_raw("<message to='alice@localhost/a1' type='headline'><body>headline</body></message>")
        .await;
    a1.expect_where(msg_with_body("headline")).await;
    a2.expect_none_within(QUIET, any_carbon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_messages_are_copied() {
    let s = TestServer::start().await;
    let (mut a1, mut a2, mut a3, mut b) = setup(&s).await;

    a1.send_raw("<message to='bob@localhost' type='chat' id='s1'><body>from a1</body></message>")
        .await;
    let m = b.expect_where(msg_with_body("from a1")).await;
    assert_eq!(m.attr("from"), Some("alice@localhost/a1"));
    let c = a2.expect_where(carbon_of("sent", "from a1")).await;
    assert_eq!(c.attr("from"), Some("alice@localhost"));
    assert_eq!(c.attr("to"), Some("alice@localhost/a2"));
    let inner = forwarded(&c, "sent").expect("forwarded message");
    assert_eq!(inner.attr("from"), Some("alice@localhost/a1"));
    assert_eq!(inner.attr("to"), Some("bob@localhost"));
    assert_eq!(inner.attr("id"), Some("s1"));
    // The sender gets no copy of its own message.
    a1.expect_none_within(QUIET, any_carbon).await;

    // Sent from a session without carbons: the others still get copies.
    a3.send_raw("<message to='bob@localhost' type='chat'><body>from a3</body></message>")
        .await;
    b.expect_where(msg_with_body("from a3")).await;
    a1.expect_where(carbon_of("sent", "from a3")).await;
    a2.expect_where(carbon_of("sent", "from a3")).await;
    a3.expect_none_within(QUIET, any_carbon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_no_copy_and_disable() {
    let s = TestServer::start().await;
    let (mut a1, mut a2, _a3, mut b) = setup(&s).await;

    // <private/> on the way out: no sent copy.
    a1.send_raw("<message to='bob@localhost' type='chat'><body>secret out</body><private xmlns='urn:xmpp:carbons:2'/></message>")
        .await;
    b.expect_where(msg_with_body("secret out")).await;
    // <private/> on the way in: no received copy, and the marker is
    // removed before delivery.
    b.send_raw("<message to='alice@localhost/a1' type='chat'><body>secret in</body><private xmlns='urn:xmpp:carbons:2'/></message>")
        .await;
    let m = a1.expect_where(msg_with_body("secret in")).await;
    assert!(m.get_child("private", CARBONS).is_none());
    // The no-copy hint (XEP-0334) is honoured too.
    b.send_raw("<message to='alice@localhost/a1' type='chat'><body>hint</body><no-copy xmlns='urn:xmpp:hints'/></message>")
        .await;
    a1.expect_where(msg_with_body("hint")).await;
    a2.expect_none_within(QUIET, any_carbon).await;

    // After disable, a2 gets no more copies.
    let r = a2
        .iq("set", None, "<disable xmlns='urn:xmpp:carbons:2'/>")
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    b.send_raw("<message to='alice@localhost/a1' type='chat'><body>after</body></message>")
        .await;
    a1.expect_where(msg_with_body("after")).await;
    a1.send_raw("<message to='bob@localhost' type='chat'><body>reply</body></message>")
        .await;
    b.expect_where(msg_with_body("reply")).await;
    a2.expect_none_within(QUIET, any_carbon).await;
}

/// Message status reaches every device: receipts, markers and chat states
/// of type normal (no body) are copied both ways, as XEP-0280 §6 says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_and_markers_are_copied() {
    let s = TestServer::start().await;
    let (mut a1, mut a2, _a3, mut b) = setup(&s).await;
    let payloads = [
        ("rcpt", "<received xmlns='urn:xmpp:receipts' id='x1'/>"),
        (
            "mark",
            "<displayed xmlns='urn:xmpp:chat-markers:0' id='x1'/>",
        ),
        (
            "state",
            "<paused xmlns='http://jabber.org/protocol/chatstates'/>",
        ),
    ];
    for (id, p) in payloads {
        b.send_raw(&format!(
            "<message to='alice@localhost/a1' id='{id}'>{p}</message>"
        ))
        .await;
        a1.expect_where(|e| e.name() == "message" && e.attr("id") == Some(id))
            .await;
        let c = a2
            .expect_where(|e| forwarded(e, "received").is_some_and(|m| m.attr("id") == Some(id)))
            .await;
        assert_eq!(c.attr("from"), Some("alice@localhost"));
        // alice/a1 sends the same kind back: a2 gets a sent copy.
        a1.send_raw(&format!(
            "<message to='bob@localhost/b' id='{id}-back'>{p}</message>"
        ))
        .await;
        let back = format!("{id}-back");
        b.expect_where(|e| e.name() == "message" && e.attr("id") == Some(back.as_str()))
            .await;
        a2.expect_where(|e| {
            forwarded(e, "sent").is_some_and(|m| m.attr("id") == Some(back.as_str()))
        })
        .await;
    }
    // A normal message with nothing of the kind is not copied.
    b.send_raw(
        "<message to='alice@localhost/a1' id='other'><x xmlns='urn:example:other'/></message>",
    )
    .await;
    a1.expect_where(|e| e.attr("id") == Some("other")).await;
    a2.expect_none_within(QUIET, any_carbon).await;
}

//! Stream management (XEP-0198) and client state indication (XEP-0352),
//! through real clients over TLS.

use std::time::Duration;

use minidom::Element;

use crate::common::*;

fn chat(to: &str, text: &str) -> String {
    format!("<message to='{to}' type='chat' id='{text}'><body>{text}</body></message>")
}

/// Log in without presence, so messages go to the full JID only.
async fn sm_login(s: &TestServer, user: &str, pw: &str, res: &str) -> (Client, String) {
    let mut c = s.login(user, pw, res).await;
    let en = c.enable_sm(true).await;
    assert_eq!(en.name(), "enabled", "{}", String::from(&en));
    assert_eq!(en.attr("resume"), Some("true"));
    let id = en.attr("id").expect("a resumption id").to_string();
    (c, id)
}

async fn resume(s: &TestServer, user: &str, pw: &str, previd: &str, h: u32) -> (Client, Element) {
    let mut c = Client::connect(s.addr(), s.cert_path()).await;
    c.start_stream().await;
    c.starttls().await;
    c.start_stream().await;
    c.auth_scram(user, pw, Hash::Sha256, false).await.unwrap();
    c.start_stream().await;
    assert!(c.feature("sm", SM).is_some(), "SM is offered after SASL");
    c.send_raw(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='{h}'/>"
    ))
    .await;
    let r = c
        .expect_where(|e| e.ns() == SM && matches!(e.name(), "resumed" | "failed"))
        .await;
    (c, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_both_ways() {
    let s = TestServer::start().await;
    s.add_user("alice", "a").await;
    s.add_user("bob", "b").await;
    let (mut b, _) = sm_login(&s, "bob", "b", "desk").await;
    let mut a = s.login("alice", "a", "phone").await;
    for i in 0..3 {
        a.send_raw(&chat("bob@localhost/desk", &format!("m{i}")))
            .await;
    }
    for i in 0..3 {
        let m = b.expect_where(|e| e.name() == "message").await;
        assert_eq!(body(&m), Some(format!("m{i}")));
    }
    // The server asks for an acknowledgement.
    b.expect_where(|e| e.is("r", SM)).await;
    b.send_raw("<a xmlns='urn:xmpp:sm:3' h='3'/>").await;
    // And counts what it handled from the client.
    b.send_raw("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    b.send_raw("<message to='alice@localhost/phone' type='chat'><body>x</body></message>")
        .await;
    b.send_raw("<r xmlns='urn:xmpp:sm:3'/>").await;
    let a_el = b.expect_where(|e| e.is("a", SM)).await;
    assert_eq!(a_el.attr("h"), Some("2"));
    // <enable/> twice.
    let again = b.enable_sm(false).await;
    assert_eq!(again.name(), "failed");
    assert!(again.has_child("unexpected-request", STANZAS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumption_redelivers_exactly_the_unacked_once() {
    let s = TestServer::start().await;
    s.add_user("alice", "a").await;
    s.add_user("bob", "b").await;
    let (mut b, previd) = sm_login(&s, "bob", "b", "desk").await;
    let mut a = s.login("alice", "a", "phone").await;
    for i in 0..5 {
        a.send_raw(&chat("bob@localhost/desk", &format!("m{i}")))
            .await;
    }
    for _ in 0..5 {
        b.expect_where(|e| e.name() == "message").await;
    }
    b.send_raw("<a xmlns='urn:xmpp:sm:3' h='2'/>").await;
    // A ping round trip, so the ack is processed before the drop.
    let r = b.iq("get", None, "<ping xmlns='urn:xmpp:ping'/>").await;
    assert_eq!(r.attr("type"), Some("result"));
    b.reset();
    // One more while the session has no connection.
    a.send_raw(&chat("bob@localhost/desk", "m5")).await;
    // The client got m0..m4 and the ping result (6 stanzas) but says 3.
    let (mut b, r) = resume(&s, "bob", "b", &previd, 3).await;
    assert_eq!(r.name(), "resumed", "{}", String::from(&r));
    assert_eq!(r.attr("previd"), Some(previd.as_str()));
    let got: Vec<_> = b
        .drain_within(Duration::from_millis(800))
        .await
        .into_iter()
        .filter(|e| e.name() == "message")
        .collect();
    let bodies: Vec<_> = got.iter().filter_map(body).collect();
    assert_eq!(
        bodies,
        vec!["m3", "m4", "m5"],
        "exactly the unacknowledged, once"
    );
    for m in &got[..2] {
        assert!(
            m.get_child("delay", "urn:xmpp:delay").is_some(),
            "a redelivered message is stamped: {}",
            String::from(m)
        );
    }
    // The resumed session works: it still receives.
    a.send_raw(&chat("bob@localhost/desk", "m6")).await;
    let m = b.expect_where(|e| e.name() == "message").await;
    assert_eq!(body(&m).as_deref(), Some("m6"));
    // An unknown id.
    let (_c, r) = resume(&s, "bob", "b", "no-such-id", 0).await;
    assert_eq!(r.name(), "failed");
    assert!(r.has_child("item-not-found", STANZAS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_replaces_a_still_open_stream() {
    let s = TestServer::start().await;
    s.add_user("bob", "b").await;
    let (mut old, previd) = sm_login(&s, "bob", "b", "desk").await;
    let (_new, r) = resume(&s, "bob", "b", &previd, 0).await;
    assert_eq!(r.name(), "resumed");
    assert_eq!(old.stream_error().await.as_deref(), Some("conflict"));
    // Someone else's session cannot be taken.
    s.add_user("eve", "e").await;
    let (_e, r) = resume(&s, "eve", "e", &previd, 0).await;
    assert_eq!(r.name(), "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_not_resumed_in_time_puts_its_unacked_messages_offline() {
    let s = TestServer::start_with(|c| c.sm.resume_timeout_s = 1).await;
    s.add_user("alice", "a").await;
    s.add_user("bob", "b").await;
    let mut b = s.online("bob", "b", "desk").await;
    let en = b.enable_sm(true).await;
    assert_eq!(en.name(), "enabled");
    let mut a = s.online("alice", "a", "phone").await;
    a.send_raw(&chat("bob@localhost", "lost?")).await;
    b.expect_where(|e| e.name() == "message").await;
    // Never acknowledged; the connection drops.
    b.reset();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut b = s.login("bob", "b", "desk2").await;
    b.send_raw("<presence/>").await;
    let m = b
        .expect_where(|e| e.name() == "message" && body(e).as_deref() == Some("lost?"))
        .await;
    assert!(m.get_child("delay", "urn:xmpp:delay").is_some());
    // It was archived once, not again when it went offline.
    assert_eq!(b.mam("").await.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_acks_and_requests() {
    let s = TestServer::start().await;
    s.add_user("bob", "b").await;
    // <enable/> before binding.
    let mut c = Client::connect(s.addr(), s.cert_path()).await;
    c.start_stream().await;
    c.starttls().await;
    c.start_stream().await;
    c.auth_scram("bob", "b", Hash::Sha256, false).await.unwrap();
    c.start_stream().await;
    let f = c.enable_sm(false).await;
    assert_eq!(f.name(), "failed");
    assert!(f.has_child("unexpected-request", STANZAS));
    c.bind(Some("x")).await;
    // An h above what was sent.
    let en = c.enable_sm(false).await;
    assert_eq!(en.name(), "enabled");
    c.send_raw("<a xmlns='urn:xmpp:sm:3' h='100'/>").await;
    let mut err = None;
    while let Some(e) = c.element_within(WAIT).await {
        if e.name() == "error" {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("a stream error");
    assert!(err.has_child("undefined-condition", STREAMS));
    let hc = err
        .get_child("handled-count-too-high", SM)
        .expect("handled-count-too-high");
    assert_eq!(hc.attr("h"), Some("100"));
    assert_eq!(hc.attr("send-count"), Some("0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_acks_is_cut_and_loses_nothing() {
    let s = TestServer::start_with(|c| {
        c.sm.max_unacked = 5;
        c.mam.max_page = 2;
    })
    .await;
    s.add_user("alice", "a").await;
    s.add_user("bob", "b").await;
    let mut b = s.online("bob", "b", "desk").await;
    b.enable_sm(true).await;
    let mut a = s.online("alice", "a", "phone").await;
    for i in 0..10 {
        a.send_raw(&chat("bob@localhost", &format!("u{i}"))).await;
    }
    assert_eq!(b.stream_error().await.as_deref(), Some("policy-violation"));
    let mut b = s.login("bob", "b", "again").await;
    b.send_raw("<presence/>").await;
    let got: Vec<_> = b
        .drain_within(Duration::from_secs(1))
        .await
        .into_iter()
        .filter(|e| e.name() == "message")
        .filter_map(|e| body(&e))
        .collect();
    for i in 0..10 {
        assert!(got.contains(&format!("u{i}")), "u{i} in {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_holds_presence_and_flushes_the_latest() {
    let s = TestServer::start().await;
    s.add_user("alice", "a").await;
    s.add_user("bob", "b").await;
    let mut a = s.online("alice", "a", "phone").await;
    let mut b = s.online("bob", "b", "desk").await;
    subscribe(&mut b, &mut a, "bob@localhost", "alice@localhost").await;
    let _ = b.drain_within(Duration::from_millis(300)).await;
    assert!(b.feature("csi", "urn:xmpp:csi:0").is_some());
    b.send_raw("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    // A round trip: the server has read <inactive/> before alice's
    // presence changes (they come on another connection).
    let r = b.iq("get", None, "<ping xmlns='urn:xmpp:ping'/>").await;
    assert_eq!(r.attr("type"), Some("result"));
    for show in ["away", "xa", "dnd"] {
        a.send_raw(&format!("<presence><show>{show}</show></presence>"))
            .await;
    }
    b.expect_none_within(Duration::from_millis(500), |e| e.name() == "presence")
        .await;
    // Messages are not held.
    a.send_raw(&chat("bob@localhost", "now")).await;
    let m = b.expect_where(|e| e.name() == "message").await;
    assert_eq!(body(&m).as_deref(), Some("now"));
    b.send_raw("<active xmlns='urn:xmpp:csi:0'/>").await;
    let got: Vec<_> = b
        .drain_within(Duration::from_millis(500))
        .await
        .into_iter()
        .filter(|e| e.name() == "presence" && e.attr("from") == Some("alice@localhost/phone"))
        .collect();
    assert_eq!(got.len(), 1, "only the latest presence");
    assert_eq!(
        got[0]
            .get_child("show", CLIENT)
            .map(|s| s.text())
            .as_deref(),
        Some("dnd")
    );
}

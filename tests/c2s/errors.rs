//! Stream errors (RFC 6120 §4.9) and bad input: each ends only the
//! offending stream, with the right condition, while others carry on.

use std::time::Duration;

use crate::common::*;

const HEADER_TO: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' version='1.0' to=";

async fn plain(s: &TestServer) -> Client {
    Client::connect(s.addr(), s.cert_path()).await
}

/// A logged-in bystander that must not notice anything.
async fn bystanders(s: &TestServer) -> (Client, Client) {
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    (
        s.online("alice", "pw", "a").await,
        s.online("bob", "pw", "b").await,
    )
}

async fn still_chatting(a: &mut Client, b: &mut Client, n: usize) {
    let text = format!("still here {n}");
    a.send_raw(&format!(
        "<message to='bob@localhost/b' type='chat'><body>{text}</body></message>"
    ))
    .await;
    let m = b
        .expect_where(|e| e.name() == "message" && body(e).as_deref() == Some(text.as_str()))
        .await;
    assert_eq!(m.attr("from"), Some("alice@localhost/a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_well_formed() {
    let s = TestServer::start().await;
    let (mut a, mut b) = bystanders(&s).await;
    let mut c = plain(&s).await;
    c.start_stream().await;
    c.send_raw("<message><body>x</message>").await;
    assert_eq!(c.stream_error().await.as_deref(), Some("not-well-formed"));
    c.expect_closed().await;
    still_chatting(&mut a, &mut b, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_well_formed_after_login() {
    let s = TestServer::start().await;
    let (mut a, mut b) = bystanders(&s).await;
    let mut c = s.login("alice", "pw", "bad").await;
    c.send_raw("<message to='bob@localhost'><body>&bogus</body></message>")
        .await;
    let e = c.stream_error().await;
    assert!(
        matches!(
            e.as_deref(),
            Some("not-well-formed") | Some("restricted-xml")
        ),
        "{e:?}"
    );
    still_chatting(&mut a, &mut b, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_unknown() {
    let s = TestServer::start().await;
    let mut c = plain(&s).await;
    c.start_stream_to("example.org").await;
    assert_eq!(c.stream_error().await.as_deref(), Some("host-unknown"));
    c.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_namespace() {
    let s = TestServer::start().await;
    // Wrong content namespace on a c2s port.
    let mut c = plain(&s).await;
    c.send_raw(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>",
    )
    .await;
    assert_eq!(c.stream_error().await.as_deref(), Some("invalid-namespace"));
    // Wrong stream namespace.
    let mut c = plain(&s).await;
    c.send_raw(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='urn:example:wrong' to='localhost' version='1.0'>",
    )
    .await;
    assert_eq!(c.stream_error().await.as_deref(), Some("invalid-namespace"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_stanza_type() {
    let s = TestServer::start().await;
    let (mut a, mut b) = bystanders(&s).await;
    let mut c = s.login("alice", "pw", "odd").await;
    c.send_raw("<foo xmlns='jabber:client'/>").await;
    assert_eq!(
        c.stream_error().await.as_deref(),
        Some("unsupported-stanza-type")
    );
    still_chatting(&mut a, &mut b, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_large_stanza_is_a_policy_violation() {
    let s = TestServer::start().await;
    let (mut a, mut b) = bystanders(&s).await;
    let mut c = s.login("alice", "pw", "big").await;
    // 10 MB in one message: the server stops reading long before the end.
    let big = format!(
        "<message to='bob@localhost'><body>{}</body></message>",
        "x".repeat(10 << 20)
    );
    let writer = {
        let data = big.into_bytes();
        let mut c2 = std::mem::replace(&mut c, Client::connect(s.addr(), s.cert_path()).await);
        tokio::spawn(async move {
            let _ = c2.send_bytes(&data).await;
            c2
        })
    };
    drop(c);
    let mut c = writer.await.unwrap();
    assert_eq!(c.stream_error().await.as_deref(), Some("policy-violation"));
    still_chatting(&mut a, &mut b, 1).await;
    // Nothing of it reached bob.
    b.expect_none_within(Duration::from_millis(200), |e| {
        body(e).is_some_and(|t| t.starts_with("xxx"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_ends_only_that_stream() {
    let s = TestServer::start().await;
    let (mut a, mut b) = bystanders(&s).await;
    for pre_auth in [true, false] {
        let mut c = if pre_auth {
            let mut c = plain(&s).await;
            c.start_stream().await;
            c
        } else {
            s.login("alice", "pw", "deep").await
        };
        let mut doc = String::from("<message to='bob@localhost'>");
        for _ in 0..10_000 {
            doc.push_str("<a>");
        }
        let _ = c.send_bytes(doc.as_bytes()).await;
        assert_eq!(c.stream_error().await.as_deref(), Some("policy-violation"));
        still_chatting(&mut a, &mut b, usize::from(pre_auth)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_xml_and_bad_encoding() {
    let s = TestServer::start().await;
    let (mut a, mut b) = bystanders(&s).await;
    // A DOCTYPE with an entity (billion laughs) is never expanded.
    let mut c = plain(&s).await;
    c.send_raw(
        "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;'>]>\
         <stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>",
    )
    .await;
    let e = c.stream_error().await;
    assert!(
        matches!(
            e.as_deref(),
            Some("restricted-xml") | Some("not-well-formed")
        ),
        "{e:?}"
    );
    // A processing instruction inside the stream.
    let mut c = plain(&s).await;
    c.start_stream().await;
    c.send_raw("<?evil instruction?>").await;
    assert_eq!(c.stream_error().await.as_deref(), Some("restricted-xml"));
    // Invalid UTF-8.
    let mut c = plain(&s).await;
    c.start_stream().await;
    let _ = c
        .send_bytes(b"<message><body>\xff\xfe</body></message>")
        .await;
    assert_eq!(
        c.stream_error().await.as_deref(),
        Some("unsupported-encoding")
    );
    still_chatting(&mut a, &mut b, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiation_timeout() {
    let s = TestServer::start_with(|c| c.limits.negotiation_timeout_secs = 1).await;
    // Opened a stream and then nothing.
    let mut c = plain(&s).await;
    c.start_stream().await;
    assert_eq!(
        c.stream_error_within(Duration::from_secs(10))
            .await
            .as_deref(),
        Some("connection-timeout")
    );
    c.expect_closed().await;
    // Not even a stream header.
    let mut c = plain(&s).await;
    assert_eq!(
        c.stream_error_within(Duration::from_secs(10))
            .await
            .as_deref(),
        Some("connection-timeout")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_is_pinged_then_timed_out() {
    let s = TestServer::start_with(|c| c.limits.idle_timeout_secs = 5).await;
    s.add_user("alice", "pw").await;
    let mut c = s.login("alice", "pw", "idle").await;
    // The server pings first (XEP-0199)...
    let ping = loop {
        match c.element_within(Duration::from_secs(15)).await {
            Some(e) if e.name() == "iq" && e.has_child("ping", "urn:xmpp:ping") => break e,
            Some(_) => continue,
            None => panic!("no ping from the server"),
        }
    };
    assert_eq!(ping.attr("type"), Some("get"));
    // ...and, unanswered, ends the stream.
    assert_eq!(
        c.stream_error_within(Duration::from_secs(15))
            .await
            .as_deref(),
        Some("connection-timeout")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitespace_keepalives_are_accepted() {
    let s = TestServer::start().await;
    let (mut a, mut b) = bystanders(&s).await;
    for _ in 0..50 {
        a.send_raw(" ").await;
    }
    a.send_raw("\n").await;
    still_chatting(&mut a, &mut b, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_system_shutdown() {
    let mut s = TestServer::start().await;
    let (mut a, _b) = bystanders(&s).await;
    let mut neg = plain(&s).await;
    neg.start_stream().await;
    s.stop().await;
    assert_eq!(a.stream_error().await.as_deref(), Some("system-shutdown"));
    a.expect_closed().await;
    assert_eq!(neg.stream_error().await.as_deref(), Some("system-shutdown"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jid_in_stream_from_and_resource() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    let mut c = plain(&s).await;
    c.send_raw(&format!("{HEADER_TO}'localhost' from='@@bad'>"))
        .await;
    // The header is answered; the bad 'from' is just not echoed.
    match c.frame().await {
        confab::xml::Frame::Header(h) => assert!(h.to.is_none()),
        other => panic!("{other:?}"),
    }
}

//! Calls and the rest of the chat window (PRODUCT.md §9, §10): call and
//! screen-share rights on Jingle and JMI, STUN/TURN credentials
//! (XEP-0215), links in bodies (XEP-0372).

use crate::common::*;
use minidom::Element;
use std::time::Duration;

const EXTDISCO: &str = "urn:xmpp:extdisco:2";
const JMI: &str = "urn:xmpp:jingle-message:0";
const REFERENCE: &str = "urn:xmpp:reference:0";
const AUDIO: &str = "<description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'/>";
const SCREEN: &str = "<description xmlns='urn:xmpp:jingle:apps:rtp:1' media='video'>\
    <screen xmlns='urn:confab:screen:0'/></description>";

async fn grant(s: &TestServer, who: &str, right: &str, on: bool) {
    grant_right(s, who, right, on).await
}

fn propose(to: &str, id: &str, descriptions: &str) -> String {
    format!(
        "<message to='{to}' type='chat' id='{id}'><propose xmlns='{JMI}' id='{id}'>{descriptions}</propose>\
         <store xmlns='urn:xmpp:hints'/></message>"
    )
}

fn is_propose(e: &Element, id: &str) -> bool {
    e.name() == "message"
        && e.get_child("propose", JMI)
            .is_some_and(|p| p.attr("id") == Some(id))
}

fn forbidden_saying(e: &Element, right: &str) {
    assert_eq!(
        error_condition(e).as_deref(),
        Some("forbidden"),
        "{}",
        String::from(e)
    );
    assert!(
        String::from(e).contains(&format!("right {right}")),
        "{}",
        String::from(e)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_needs_the_right_av_and_rings_every_resource() {
    let s = TestServer::start().await;
    for u in ["alice", "bob"] {
        s.add_user(u, "pw-call").await;
    }
    let mut a = s.online("alice", "pw-call", "a").await;
    let mut b1 = s.online("bob", "pw-call", "b1").await;
    let mut b2 = s.online("bob", "pw-call", "b2").await;

    // Without av: forbidden, and neither of Bob's resources sees it.
    a.send_raw(&propose("bob@localhost", "c1", AUDIO)).await;
    let e = a.expect_where(|e| e.attr("id") == Some("c1")).await;
    forbidden_saying(&e, "av");
    for b in [&mut b1, &mut b2] {
        b.expect_none_within(Duration::from_millis(300), |e| is_propose(e, "c1"))
            .await;
    }
    // A Jingle session-initiate is checked the same way.
    a.send_raw(
        "<iq to='bob@localhost/b1' type='set' id='j1'><jingle xmlns='urn:xmpp:jingle:1' \
         action='session-initiate' sid='s1'><content creator='initiator' name='voice'>\
         <description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'/></content></jingle></iq>",
    )
    .await;
    let e = a.expect_where(|e| e.attr("id") == Some("j1")).await;
    forbidden_saying(&e, "av");
    b1.expect_none_within(Duration::from_millis(300), |e| e.attr("id") == Some("j1"))
        .await;

    // With av: every resource rings (each gets the propose itself).
    grant(&s, "alice@localhost", "av", true).await;
    a.send_raw(&propose("bob@localhost", "c2", AUDIO)).await;
    for b in [&mut b1, &mut b2] {
        let m = b.expect_where(|e| is_propose(e, "c2")).await;
        assert_eq!(m.attr("from"), Some("alice@localhost/a"));
    }
    a.send_raw(
        "<iq to='bob@localhost/b1' type='set' id='j2'><jingle xmlns='urn:xmpp:jingle:1' \
         action='session-initiate' sid='s2'><content creator='initiator' name='voice'>\
         <description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'/></content></jingle></iq>",
    )
    .await;
    let iq = b1.expect_where(|e| e.attr("id") == Some("j2")).await;
    assert_eq!(iq.attr("type"), Some("set"));
    // Answering needs no right.
    b1.send_raw(&format!(
        "<message to='alice@localhost/a' type='chat' id='p2'><proceed xmlns='{JMI}' id='c2'/></message>"
    ))
    .await;
    let m = a
        .expect_where(|e| e.name() == "message" && e.has_child("proceed", JMI))
        .await;
    assert_eq!(m.attr("from"), Some("bob@localhost/b1"));
    // Revoked: refused again.
    grant(&s, "alice@localhost", "av", false).await;
    a.send_raw(&propose("bob@localhost", "c3", AUDIO)).await;
    let e = a.expect_where(|e| e.attr("id") == Some("c3")).await;
    forbidden_saying(&e, "av");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_screen_share_needs_the_right_screen_share() {
    let s = TestServer::start().await;
    for u in ["alice", "bob"] {
        s.add_user(u, "pw-call").await;
    }
    grant(&s, "alice@localhost", "av", true).await;
    let mut a = s.online("alice", "pw-call", "a").await;
    let mut b = s.online("bob", "pw-call", "b").await;
    a.send_raw(&propose("bob@localhost", "s1", SCREEN)).await;
    let e = a.expect_where(|e| e.attr("id") == Some("s1")).await;
    forbidden_saying(&e, "screen_share");
    let ask = "<message to='bob@localhost/b' type='chat' id='r1'>\
               <share-request xmlns='urn:confab:screen:0'/><body>share?</body></message>";
    a.send_raw(ask).await;
    let e = a.expect_where(|e| e.attr("id") == Some("r1")).await;
    forbidden_saying(&e, "screen_share");
    b.expect_none_within(Duration::from_millis(300), |e| {
        is_propose(e, "s1") || e.attr("id") == Some("r1")
    })
    .await;

    // Granted: both go through.
    grant(&s, "alice@localhost", "screen_share", true).await;
    a.send_raw(&propose("bob@localhost", "s2", SCREEN)).await;
    b.expect_where(|e| is_propose(e, "s2")).await;
    a.send_raw(&ask.replace("r1", "r2")).await;
    let m = b.expect_where(|e| e.attr("id") == Some("r2")).await;
    assert!(m.has_child("share-request", "urn:confab:screen:0"));
    // A right held through a group counts the same.
    bob_asks_through_a_group(&s, &mut a, &mut b).await;
}

async fn bob_asks_through_a_group(s: &TestServer, a: &mut Client, b: &mut Client) {
    use confab::admin::{execute, Request};
    let ctx = s.handle().ctx.clone();
    let ask = "<message to='alice@localhost/a' type='chat' id='r3'>\
               <share-request xmlns='urn:confab:screen:0'/></message>";
    b.send_raw(ask).await;
    let e = b.expect_where(|e| e.attr("id") == Some("r3")).await;
    forbidden_saying(&e, "screen_share");
    for req in [
        Request::GroupSet {
            name: "sharers".into(),
            on: true,
        },
        Request::GroupMember {
            group: "sharers".into(),
            jid: "bob@localhost".into(),
            on: true,
        },
    ] {
        assert!(execute(&ctx.stores, &ctx.domain, Some(&ctx), req).await.ok);
    }
    grant(s, "@sharers", "screen_share", true).await;
    b.send_raw(&ask.replace("r3", "r4")).await;
    a.expect_where(|e| e.attr("id") == Some("r4")).await;
}

fn turn_config(c: &mut confab::config::Config) {
    c.turn = Some(confab::config::Turn {
        host: "127.0.0.1".into(),
        port: 3478,
        secret: "s3cret-for-tests".into(),
        ttl_s: 600,
    });
}

fn services(r: &Element, name: &str) -> Vec<Element> {
    assert_eq!(r.attr("type"), Some("result"), "{}", String::from(r));
    r.get_child(name, EXTDISCO)
        .unwrap_or_else(|| panic!("no <{name}/>: {}", String::from(r)))
        .children()
        .cloned()
        .collect()
}

/// The coturn REST API check: the password is base64(HMAC-SHA1(secret,
/// username)), and the username's expiry is in the future by about the
/// configured lifetime.
fn verify_turn(s: &Element, user: &str) {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let username = s.attr("username").unwrap();
    let (expiry, who) = username.split_once(':').unwrap();
    assert_eq!(who, user);
    let expiry: i64 = expiry.parse().unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!(
        (now + 590..=now + 610).contains(&expiry),
        "{expiry} vs {now}"
    );
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"s3cret-for-tests").unwrap();
    mac.update(username.as_bytes());
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(s.attr("password"), Some(want.as_str()));
    let expires = chrono::DateTime::parse_from_rfc3339(s.attr("expires").unwrap()).unwrap();
    assert_eq!(expires.timestamp(), expiry);
    assert_eq!(s.attr("restricted"), Some("1"));
    assert_eq!(s.attr("host"), Some("127.0.0.1"));
    assert_eq!(s.attr("port"), Some("3478"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_follow_the_rights() {
    let s = TestServer::start_with(turn_config).await;
    for u in ["alice", "bob"] {
        s.add_user(u, "pw-call").await;
    }
    let mut a = s.online("alice", "pw-call", "a").await;
    let q = format!("<services xmlns='{EXTDISCO}'/>");
    // No right: STUN only, and no TURN credentials.
    let list = services(&a.iq("get", Some(DOMAIN), &q).await, "services");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].attr("type"), Some("stun"));
    assert_eq!(list[0].attr("username"), None);
    let creds = format!(
        "<credentials xmlns='{EXTDISCO}'><service type='turn' host='127.0.0.1'/></credentials>"
    );
    let r = a.iq("get", Some(DOMAIN), &creds).await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));

    // av: TURN over UDP and TCP with working credentials.
    grant(&s, "alice@localhost", "av", true).await;
    let list = services(&a.iq("get", Some(DOMAIN), &q).await, "services");
    let turn: Vec<_> = list
        .iter()
        .filter(|s| s.attr("type") == Some("turn"))
        .collect();
    let transports: Vec<_> = turn.iter().filter_map(|s| s.attr("transport")).collect();
    assert_eq!(transports, ["udp", "tcp"]);
    for t in &turn {
        verify_turn(t, "alice@localhost");
    }
    let only_turn = format!("<services xmlns='{EXTDISCO}' type='turn'/>");
    let list = services(&a.iq("get", Some(DOMAIN), &only_turn).await, "services");
    assert!(list.iter().all(|s| s.attr("type") == Some("turn")) && list.len() == 2);
    let list = services(&a.iq("get", Some(DOMAIN), &creds).await, "credentials");
    assert_eq!(list.len(), 2);
    verify_turn(&list[0], "alice@localhost");
    // A service the server does not have.
    let r = a
        .iq(
            "get",
            Some(DOMAIN),
            &format!("<credentials xmlns='{EXTDISCO}'><service type='turn' host='elsewhere'/></credentials>"),
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("item-not-found"));

    // screen_share is enough too.
    grant(&s, "bob@localhost", "screen_share", true).await;
    let mut b = s.online("bob", "pw-call", "b").await;
    let list = services(&b.iq("get", Some(DOMAIN), &q).await, "services");
    let t = list
        .iter()
        .find(|s| s.attr("type") == Some("turn"))
        .unwrap();
    verify_turn(t, "bob@localhost");

    // Without [turn]: nothing to offer.
    let s2 = TestServer::start().await;
    s2.add_user("carol", "pw-call").await;
    let mut c = s2.online("carol", "pw-call", "c").await;
    assert!(services(&c.iq("get", Some(DOMAIN), &q).await, "services").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_are_annotated_for_every_kind() {
    let s = TestServer::start_with(|c| {
        c.links.country_code = "49".into();
        c.links.area_code = "123".into();
        c.links.base_number = "456".into();
        c.links.extension_digits = 2;
    })
    .await;
    for u in ["alice", "bob"] {
        s.add_user(u, "pw-call").await;
    }
    let mut a = s.online("alice", "pw-call", "a").await;
    let mut b = s.online("bob", "pw-call", "b").await;
    let body = [
        "Ruf an: +49 123 456 - 12, 0123 45612 oder Durchwahl 12.",
        "Mail: bob@example.com;",
        "Web: https://example.com/x, www.example.org;",
        r"Pfad \\server\directory\file;",
        r"und <\\server\my dir\file.txt> oder <http://example.com/a b> und ftp://f.example/z.",
    ]
    .join(" ");
    a.send_raw(&format!(
        "<message to='bob@localhost' type='chat' id='l1'><body>{}</body></message>",
        body.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    ))
    .await;
    let m = b.expect_where(|e| is_msg_from(e, "alice@localhost")).await;
    let chars: Vec<char> = body.chars().collect();
    let refs: Vec<(String, String)> = m
        .children()
        .filter(|c| c.is("reference", REFERENCE))
        .map(|r| {
            assert_eq!(r.attr("type"), Some("data"));
            let b: usize = r.attr("begin").unwrap().parse().unwrap();
            let e: usize = r.attr("end").unwrap().parse().unwrap();
            (
                chars[b..e].iter().collect(),
                r.attr("uri").unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("+49 123 456 - 12", "tel:+4912345612"),
        ("0123 45612", "tel:+4912345612"),
        ("12", "tel:+4912345612"),
        ("bob@example.com", "mailto:bob@example.com"),
        ("https://example.com/x", "https://example.com/x"),
        ("www.example.org", "http://www.example.org"),
        (r"\\server\directory\file", "file://server/directory/file"),
        (
            r"\\server\my dir\file.txt",
            "file://server/my%20dir/file.txt",
        ),
        ("http://example.com/a b", "http://example.com/a%20b"),
        ("ftp://f.example/z", "ftp://f.example/z"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(refs, want);
    // The archive keeps them.
    let page = b.mam("").await;
    let archived = page.results.last().unwrap();
    assert!(String::from(archived).contains("tel:+4912345612"));
    // The hint leaves a message alone.
    a.send_raw(
        "<message to='bob@localhost' type='chat' id='l2'><body>see www.example.org</body>         <no-links xmlns='urn:confab:links:0'/></message>",
    )
    .await;
    let m = b.expect_where(|e| e.attr("id") == Some("l2")).await;
    assert!(!m.has_child("reference", REFERENCE));
}

//! Authorization levels (PRODUCT.md §2): presence detail by level, user
//! overrides through `urn:confab:authz:0`, XEP-0191 blocking as the same
//! state, group policies against defaults and overrides.

use crate::common::*;
use minidom::Element;
use std::time::Duration;

const AUTHZ: &str = "urn:confab:authz:0";
const BLOCKING: &str = "urn:xmpp:blocking";

/// Alice and Bob, each subscribed to the other's presence, both online,
/// their login presence exchanged.
async fn pair(s: &TestServer) -> (Client, Client) {
    s.add_user("alice", "pw-a").await;
    s.add_user("bob", "pw-b").await;
    let mut a = s.online("alice", "pw-a", "a").await;
    let mut b = s.online("bob", "pw-b", "b").await;
    subscribe(&mut a, &mut b, "alice@localhost", "bob@localhost").await;
    subscribe(&mut b, &mut a, "bob@localhost", "alice@localhost").await;
    a.drain_within(Duration::from_millis(300)).await;
    b.drain_within(Duration::from_millis(300)).await;
    (a, b)
}

const RICH: &str = "<presence><show>away</show><status>at lunch</status><priority>3</priority>\
    <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='urn:t' ver='abc='/></presence>";

/// Presence of type `typ` from exactly `from`.
fn from_exactly<'a>(from: &'a str, typ: Option<&'a str>) -> impl Fn(&Element) -> bool + 'a {
    move |e| e.name() == "presence" && e.attr("type") == typ && e.attr("from") == Some(from)
}

fn children(p: &Element) -> Vec<String> {
    p.children().map(|c| c.name().to_string()).collect()
}

/// An override of `contact` to `level` (`None`: unset), answered.
async fn set_level(c: &mut Client, contact: &str, level: Option<&str>) -> Element {
    let lv = level.map(|l| format!(" level='{l}'")).unwrap_or_default();
    c.iq(
        "set",
        None,
        &format!("<query xmlns='{AUTHZ}'><item jid='{contact}'{lv}/></query>"),
    )
    .await
}

/// The `<item/>` saying what level `c`'s user grants `contact`.
async fn level_item(c: &mut Client, contact: &str) -> Element {
    let r = c
        .iq(
            "get",
            None,
            &format!("<query xmlns='{AUTHZ}'><item jid='{contact}'/></query>"),
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
    let i = r
        .get_child("query", AUTHZ)
        .and_then(|q| q.get_child("item", AUTHZ))
        .unwrap_or_else(|| panic!("no item: {}", String::from(&r)))
        .clone();
    assert_eq!(i.attr("jid"), Some(contact));
    i
}

/// The level `c`'s user grants `contact`, and its source.
async fn level_of(c: &mut Client, contact: &str) -> (String, String) {
    let i = level_item(c, contact).await;
    (
        i.attr("level").unwrap_or_default().to_string(),
        i.attr("source").unwrap_or_default().to_string(),
    )
}

async fn blocklist(c: &mut Client) -> Vec<String> {
    let r = c
        .iq("get", None, &format!("<blocklist xmlns='{BLOCKING}'/>"))
        .await;
    r.get_child("blocklist", BLOCKING)
        .unwrap()
        .children()
        .filter_map(|i| i.attr("jid").map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_detail_follows_the_level_and_changes_at_once() {
    let s = TestServer::start().await;
    let (mut a, mut b) = pair(&s).await;
    // Default for a local contact: team, everything.
    assert_eq!(
        level_of(&mut a, "bob@localhost").await,
        ("team".into(), "default-local".into())
    );
    a.send_raw(RICH).await;
    let p = b
        .expect_where(from_exactly("alice@localhost/a", None))
        .await;
    assert_eq!(children(&p), ["show", "status", "priority", "c"]);

    // business: the contact gets show only, at once.
    let r = set_level(&mut a, "bob@localhost", Some("business")).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
    let p = b
        .expect_where(from_exactly("alice@localhost/a", None))
        .await;
    assert_eq!(children(&p), ["show"]);
    assert_eq!(p.get_child("show", CLIENT).unwrap().text(), "away");
    // And so on each broadcast.
    a.send_raw("<presence><show>xa</show><status>gone home</status></presence>")
        .await;
    let p = b
        .expect_where(from_exactly("alice@localhost/a", None))
        .await;
    assert_eq!(children(&p), ["show"]);

    // public: available and unavailable only.
    set_level(&mut a, "bob@localhost", Some("public")).await;
    let p = b
        .expect_where(from_exactly("alice@localhost/a", None))
        .await;
    assert!(children(&p).is_empty(), "{}", String::from(&p));
    assert_eq!(
        level_of(&mut a, "bob@localhost").await,
        ("public".into(), "override".into())
    );
    // A probe's answer (Bob's new login) is shaped the same way.
    let mut b2 = s.online("bob", "pw-b", "b2").await;
    let p = b2
        .expect_where(from_exactly("alice@localhost/a", None))
        .await;
    assert!(children(&p).is_empty(), "{}", String::from(&p));
    // The unavailable presence carries no status either.
    a.send_raw("<presence type='unavailable'><status>bye</status></presence>")
        .await;
    let p = b
        .expect_where(from_exactly("alice@localhost/a", Some("unavailable")))
        .await;
    assert!(children(&p).is_empty(), "{}", String::from(&p));

    // Alice, at team (the default) towards Bob, still sees Bob's status:
    // the level is what each grants the other.
    a.send_raw("<presence/>").await;
    // Coming back, Alice gets Bob's presence (the probe's answer) first.
    a.expect_where(from_exactly("bob@localhost/b", None)).await;
    b.expect_where(from_exactly("alice@localhost/a", None))
        .await;
    b.send_raw("<presence><status>here</status></presence>")
        .await;
    let p = a.expect_where(from_exactly("bob@localhost/b", None)).await;
    assert_eq!(children(&p), ["status"]);

    // Unset: back to the default, with the full presence at once.
    a.send_raw(RICH).await;
    b.expect_where(from_exactly("alice@localhost/a", None))
        .await;
    set_level(&mut a, "bob@localhost", None).await;
    let p = b
        .expect_where(from_exactly("alice@localhost/a", None))
        .await;
    assert_eq!(children(&p), ["show", "status", "priority", "c"]);
    assert_eq!(
        level_of(&mut a, "bob@localhost").await,
        ("team".into(), "default-local".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_through_either_protocol_is_one_state() {
    let s = TestServer::start().await;
    let (mut a, mut b) = pair(&s).await;
    s.add_user("carol", "pw-c").await;
    let mut c = s.online("carol", "pw-c", "c").await;
    // Alice's second resource follows both protocols' pushes.
    let mut a2 = s.online("alice", "pw-a", "a2").await;
    blocklist(&mut a2).await;
    a2.iq("get", None, &format!("<query xmlns='{AUTHZ}'/>"))
        .await;

    // blocked through urn:confab:authz:0 …
    let r = set_level(&mut a, "bob@localhost", Some("blocked")).await;
    assert_eq!(r.attr("type"), Some("result"));
    // … Bob sees Alice go unavailable …
    b.expect_where(from_exactly("alice@localhost/a", Some("unavailable")))
        .await;
    // … it is on the XEP-0191 block list, and both pushes went out.
    assert_eq!(blocklist(&mut a).await, ["bob@localhost"]);
    a2.expect_where(|e| {
        e.get_child("block", BLOCKING).is_some_and(|bl| {
            bl.children()
                .any(|i| i.attr("jid") == Some("bob@localhost"))
        })
    })
    .await;
    a2.expect_where(|e| {
        e.get_child("query", AUTHZ).is_some_and(|q| {
            q.children().any(|i| {
                i.attr("jid") == Some("bob@localhost") && i.attr("level") == Some("blocked")
            })
        })
    })
    .await;
    // Bob's messages are refused as XEP-0191 says, and Alice may not
    // write to him.
    b.send_raw("<message to='alice@localhost' type='chat' id='m1'><body>hi</body></message>")
        .await;
    let e = b.expect_where(|e| e.attr("id") == Some("m1")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
    a.send_raw("<message to='bob@localhost' type='chat' id='m2'><body>hi</body></message>")
        .await;
    let e = a.expect_where(|e| e.attr("id") == Some("m2")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("not-acceptable"));
    assert!(e
        .get_child("error", CLIENT)
        .unwrap()
        .has_child("blocked", "urn:xmpp:blocking:errors"));

    // XEP-0191 unblock: the authz protocol shows the default again, and
    // Bob sees Alice's presence again.
    let r = a
        .iq(
            "set",
            None,
            &format!("<unblock xmlns='{BLOCKING}'><item jid='bob@localhost'/></unblock>"),
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    b.expect_where(from_exactly("alice@localhost/a", None))
        .await;
    assert_eq!(
        level_of(&mut a, "bob@localhost").await,
        ("team".into(), "default-local".into())
    );
    a2.expect_where(|e| {
        e.get_child("query", AUTHZ).is_some_and(|q| {
            q.children()
                .any(|i| i.attr("jid") == Some("bob@localhost") && i.attr("level") == Some("team"))
        })
    })
    .await;
    b.send_raw("<message to='alice@localhost' type='chat' id='m3'><body>back</body></message>")
        .await;
    let m = a.expect_where(|e| is_msg_from(e, "bob@localhost")).await;
    assert_eq!(body(&m).as_deref(), Some("back"));

    // blocked through XEP-0191: the authz protocol shows it.
    let r = a
        .iq(
            "set",
            None,
            &format!("<block xmlns='{BLOCKING}'><item jid='carol@localhost'/></block>"),
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    assert_eq!(
        level_of(&mut a, "carol@localhost").await,
        ("blocked".into(), "override".into())
    );
    let r = a
        .iq("get", None, &format!("<query xmlns='{AUTHZ}'/>"))
        .await;
    let listed: Vec<_> = r
        .get_child("query", AUTHZ)
        .unwrap()
        .children()
        .map(|i| {
            (
                i.attr("jid").unwrap_or_default().to_string(),
                i.attr("level").unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [("carol@localhost".to_string(), "blocked".to_string())]
    );
    c.send_raw("<message to='alice@localhost' type='chat' id='m4'><body>x</body></message>")
        .await;
    let e = c.expect_where(|e| e.attr("id") == Some("m4")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
    // A domain item blocks everyone there, and says so as its source.
    a.iq(
        "set",
        None,
        &format!("<block xmlns='{BLOCKING}'><item jid='elsewhere.example'/></block>"),
    )
    .await;
    let i = level_item(&mut a, "zed@elsewhere.example").await;
    assert_eq!(i.attr("level"), Some("blocked"));
    assert_eq!(i.attr("source"), Some("blocklist"));
    assert_eq!(i.attr("item"), Some("elsewhere.example"));
    // An override to another level takes the contact off the block list.
    set_level(&mut a, "carol@localhost", Some("business")).await;
    assert_eq!(blocklist(&mut a).await, ["elsewhere.example"]);
    c.send_raw("<message to='alice@localhost' type='chat' id='m5'><body>ok</body></message>")
        .await;
    let m = a.expect_where(|e| is_msg_from(e, "carol@localhost")).await;
    assert_eq!(body(&m).as_deref(), Some("ok"));

    // All of it survives a restart.
    drop((a, a2, b, c));
    let mut s = s;
    s.restart().await;
    let mut a = s.online("alice", "pw-a", "a").await;
    assert_eq!(blocklist(&mut a).await, ["elsewhere.example"]);
    assert_eq!(
        level_of(&mut a, "carol@localhost").await,
        ("business".into(), "override".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_policy_beats_the_default_and_an_override_beats_the_policy() {
    use confab::admin::{execute, Request};
    let s = TestServer::start().await;
    let (mut a, mut b) = pair(&s).await;
    a.send_raw(RICH).await;
    b.expect_where(from_exactly("alice@localhost/a", None))
        .await;
    let ctx = s.handle().ctx.clone();
    let admin = |req: Request| {
        let ctx = ctx.clone();
        async move {
            let r = execute(&ctx.stores, &ctx.domain, Some(&ctx), req).await;
            assert!(r.ok, "{:?}", r.error);
        }
    };
    for g in ["staff", "guests"] {
        admin(Request::GroupSet {
            name: g.into(),
            on: true,
        })
        .await;
    }
    for (g, j) in [("staff", "alice@localhost"), ("guests", "bob@localhost")] {
        admin(Request::GroupMember {
            group: g.into(),
            jid: j.into(),
            on: true,
        })
        .await;
    }
    // Joining groups re-announced Alice's presence (no policy yet: the
    // default, all of it).
    let p = b
        .expect_where(from_exactly("alice@localhost/a", None))
        .await;
    assert_eq!(children(&p), ["show", "status", "priority", "c"]);
    b.drain_within(Duration::from_millis(300)).await;

    // Staff grant guests business: it beats the default (team), and Bob
    // sees the change at once.
    admin(Request::PolicySet {
        from: "staff".into(),
        to: "guests".into(),
        level: Some("business".into()),
    })
    .await;
    let p = b
        .expect_where(from_exactly("alice@localhost/a", None))
        .await;
    assert_eq!(children(&p), ["show"]);
    let i = level_item(&mut a, "bob@localhost").await;
    assert_eq!(i.attr("level"), Some("business"));
    assert_eq!(i.attr("source"), Some("group"));
    assert_eq!(i.attr("from-group"), Some("staff"));
    assert_eq!(i.attr("to-group"), Some("guests"));
    // The policy does not go the other way: Bob grants Alice the default.
    assert_eq!(
        level_of(&mut b, "alice@localhost").await,
        ("team".into(), "default-local".into())
    );

    // Alice's own override beats the policy.
    set_level(&mut a, "bob@localhost", Some("private")).await;
    let p = b
        .expect_where(from_exactly("alice@localhost/a", None))
        .await;
    assert_eq!(children(&p), ["show", "status", "priority", "c"]);
    assert_eq!(
        level_of(&mut a, "bob@localhost").await,
        ("private".into(), "override".into())
    );
    set_level(&mut a, "bob@localhost", None).await;
    let p = b
        .expect_where(from_exactly("alice@localhost/a", None))
        .await;
    assert_eq!(children(&p), ["show"]);

    // A policy of blocked stops Bob's messages, as a block would.
    admin(Request::PolicySet {
        from: "staff".into(),
        to: "guests".into(),
        level: Some("blocked".into()),
    })
    .await;
    b.expect_where(from_exactly("alice@localhost/a", Some("unavailable")))
        .await;
    b.send_raw("<message to='alice@localhost' type='chat' id='g1'><body>hi</body></message>")
        .await;
    let e = b.expect_where(|e| e.attr("id") == Some("g1")).await;
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
    // Leaving the group ends it, at once.
    admin(Request::GroupMember {
        group: "guests".into(),
        jid: "bob@localhost".into(),
        on: false,
    })
    .await;
    let p = b
        .expect_where(from_exactly("alice@localhost/a", None))
        .await;
    assert_eq!(children(&p), ["show", "status", "priority", "c"]);
    b.send_raw("<message to='alice@localhost' type='chat' id='g2'><body>again</body></message>")
        .await;
    let m = a.expect_where(|e| is_msg_from(e, "bob@localhost")).await;
    assert_eq!(body(&m).as_deref(), Some("again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_level_requests_are_refused_and_change_nothing() {
    let s = TestServer::start().await;
    let (mut a, mut b) = pair(&s).await;
    let refused = |r: &Element, cond: &str, text: &str| {
        assert_eq!(
            error_condition(r).as_deref(),
            Some(cond),
            "{}",
            String::from(r)
        );
        let t = r
            .get_child("error", CLIENT)
            .and_then(|e| e.get_child("text", "urn:ietf:params:xml:ns:xmpp-stanzas"))
            .map(|t| t.text())
            .unwrap_or_default();
        assert!(t.contains(text), "{t:?} does not say {text:?}");
    };
    // An unknown level, with the list of levels; nothing of the set is
    // applied, not even its valid item.
    let r = a
        .iq(
            "set",
            None,
            &format!(
                "<query xmlns='{AUTHZ}'><item jid='carol@localhost' level='public'/>\
                 <item jid='bob@localhost' level='friend'/></query>"
            ),
        )
        .await;
    refused(
        &r,
        "bad-request",
        "blocked, public, business, team, private",
    );
    assert_eq!(
        level_of(&mut a, "carol@localhost").await,
        ("team".into(), "default-local".into())
    );
    let r = set_level(&mut a, "alice@localhost", Some("public")).await;
    refused(&r, "bad-request", "yourself");
    let r = set_level(&mut a, "bob@localhost/b", Some("public")).await;
    refused(&r, "bad-request", "bare JID");
    let r = a
        .iq("set", None, &format!("<query xmlns='{AUTHZ}'/>"))
        .await;
    refused(&r, "bad-request", "nothing to set");
    let r = a
        .iq(
            "set",
            None,
            &format!("<query xmlns='{AUTHZ}'><item level='public'/></query>"),
        )
        .await;
    refused(&r, "bad-request", "jid");
    // Only the owner asks about their levels.
    let r = b
        .iq(
            "get",
            Some("alice@localhost"),
            &format!("<query xmlns='{AUTHZ}'/>"),
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
    // And the server advertises the protocol.
    let r = a
        .iq(
            "get",
            Some(DOMAIN),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    let q = r
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert!(q
        .children()
        .any(|f| f.name() == "feature" && f.attr("var") == Some(AUTHZ)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_keeps_a_bounded_number_of_blocks_and_levels() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw-a").await;
    let mut a = s.online("alice", "pw-a", "a").await;
    // Up to the limit (10 000) is fine: half blocked, half overridden.
    for k in 0..5 {
        let items: String = (k * 1000..(k + 1) * 1000)
            .map(|i| format!("<item jid='u{i}@spam.example'/>"))
            .collect();
        let r = a
            .iq(
                "set",
                None,
                &format!("<block xmlns='{BLOCKING}'>{items}</block>"),
            )
            .await;
        assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
        let items: String = (k * 1000..(k + 1) * 1000)
            .map(|i| format!("<item jid='v{i}@spam.example' level='business'/>"))
            .collect();
        let r = a
            .iq(
                "set",
                None,
                &format!("<query xmlns='{AUTHZ}'>{items}</query>"),
            )
            .await;
        assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
    }
    // One more, by either protocol, is refused and changes nothing.
    let r = a
        .iq(
            "set",
            None,
            &format!("<block xmlns='{BLOCKING}'><item jid='one-more@spam.example'/></block>"),
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("policy-violation"));
    let r = set_level(&mut a, "one-more@spam.example", Some("team")).await;
    assert_eq!(error_condition(&r).as_deref(), Some("policy-violation"));
    assert_eq!(blocklist(&mut a).await.len(), 5000);
    // Changing one that is there, or making room, is fine.
    let r = set_level(&mut a, "u0@spam.example", Some("team")).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
    let r = set_level(&mut a, "v1@spam.example", None).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
    let r = set_level(&mut a, "one-more@spam.example", Some("team")).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
    assert_eq!(
        level_of(&mut a, "v4999@spam.example").await,
        ("business".into(), "override".into())
    );
}

//! Instant messaging (RFC 6121): rosters, subscriptions, presence, message
//! routing, offline storage.

use std::time::Duration;

use crate::common::*;

const PW: &str = "pw";

async fn server(users: &[&str]) -> TestServer {
    let s = TestServer::start().await;
    for u in users {
        s.add_user(u, PW).await;
    }
    s
}

fn roster_push_for<'a>(jid: &'a str, sub: &'a str) -> impl Fn(&minidom::Element) -> bool + 'a {
    move |e| {
        e.name() == "iq"
            && e.attr("type") == Some("set")
            && e.get_child("query", "jabber:iq:roster")
                .and_then(|q| q.get_child("item", "jabber:iq:roster"))
                .is_some_and(|i| i.attr("jid") == Some(jid) && i.attr("subscription") == Some(sub))
    }
}

/// Make alice and bob subscribed both ways, both online.
async fn befriend(s: &TestServer) -> (Client, Client) {
    let mut a = s.online("alice", PW, "a").await;
    let mut b = s.online("bob", PW, "b").await;
    a.iq("get", None, "<query xmlns='jabber:iq:roster'/>").await;
    b.iq("get", None, "<query xmlns='jabber:iq:roster'/>").await;
    subscribe(&mut a, &mut b, "alice@localhost", "bob@localhost").await;
    subscribe(&mut b, &mut a, "bob@localhost", "alice@localhost").await;
    // Each now sees the other's presence.
    a.expect_where(presence_from("bob@localhost/b", None)).await;
    b.expect_where(presence_from("alice@localhost/a", None))
        .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_get_set_push_remove() {
    let s = server(&["alice"]).await;
    let mut a = s.login("alice", PW, "a").await;
    let mut a2 = s.login("alice", PW, "a2").await;
    let r = a.iq("get", None, "<query xmlns='jabber:iq:roster'/>").await;
    let q = r.get_child("query", "jabber:iq:roster").unwrap();
    assert_eq!(q.children().count(), 0);
    let ver0 = q.attr("ver").unwrap().to_string();
    a2.iq("get", None, "<query xmlns='jabber:iq:roster'/>")
        .await;

    let r = a
        .iq(
            "set",
            None,
            "<query xmlns='jabber:iq:roster'><item jid='carol@example.org' name='Carol'>\
             <group>Friends</group></item></query>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    // Every interested resource gets the push.
    for c in [&mut a, &mut a2] {
        let push = c
            .expect_where(roster_push_for("carol@example.org", "none"))
            .await;
        let item = push
            .get_child("query", "jabber:iq:roster")
            .unwrap()
            .get_child("item", "jabber:iq:roster")
            .unwrap();
        assert_eq!(item.attr("name"), Some("Carol"));
    }
    let r = a.iq("get", None, "<query xmlns='jabber:iq:roster'/>").await;
    let q = r.get_child("query", "jabber:iq:roster").unwrap();
    assert_eq!(q.children().count(), 1);
    let ver1 = q.attr("ver").unwrap().to_string();
    assert_ne!(ver0, ver1);
    // XEP-0237: asking with the current version returns an empty result.
    let r = a
        .iq(
            "get",
            None,
            &format!("<query xmlns='jabber:iq:roster' ver='{ver1}'/>"),
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    assert!(r.get_child("query", "jabber:iq:roster").is_none());
    // With an old version, the full roster.
    let r = a
        .iq(
            "get",
            None,
            &format!("<query xmlns='jabber:iq:roster' ver='{ver0}'/>"),
        )
        .await;
    assert_eq!(
        r.get_child("query", "jabber:iq:roster")
            .unwrap()
            .children()
            .count(),
        1
    );

    // Bad sets.
    let r = a
        .iq(
            "set",
            None,
            "<query xmlns='jabber:iq:roster'><item jid='a@b/c'/></query>",
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    let r = a
        .iq(
            "set",
            None,
            "<query xmlns='jabber:iq:roster'><item jid='x@y'/><item jid='z@y'/></query>",
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));

    let r = a
        .iq(
            "set",
            None,
            "<query xmlns='jabber:iq:roster'><item jid='carol@example.org' subscription='remove'/></query>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    a.expect_where(roster_push_for("carol@example.org", "remove"))
        .await;
    let r = a.iq("get", None, "<query xmlns='jabber:iq:roster'/>").await;
    assert_eq!(
        r.get_child("query", "jabber:iq:roster")
            .unwrap()
            .children()
            .count(),
        0
    );
    // Removing what is not there.
    let r = a
        .iq(
            "set",
            None,
            "<query xmlns='jabber:iq:roster'><item jid='carol@example.org' subscription='remove'/></query>",
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("item-not-found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_roster_is_forbidden() {
    let s = server(&["alice", "bob"]).await;
    let mut a = s.login("alice", PW, "a").await;
    let r = a
        .iq(
            "get",
            Some("bob@localhost"),
            "<query xmlns='jabber:iq:roster'/>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_handshake_and_presence() {
    let s = server(&["alice", "bob"]).await;
    let mut a = s.online("alice", PW, "a").await;
    let mut b = s.online("bob", PW, "b").await;
    a.iq("get", None, "<query xmlns='jabber:iq:roster'/>").await;
    b.iq("get", None, "<query xmlns='jabber:iq:roster'/>").await;

    a.send_raw("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    // Alice's roster: pending out.
    let push = a
        .expect_where(roster_push_for("bob@localhost", "none"))
        .await;
    let item = push
        .get_child("query", "jabber:iq:roster")
        .unwrap()
        .get_child("item", "jabber:iq:roster")
        .unwrap();
    assert_eq!(item.attr("ask"), Some("subscribe"));
    // Bob gets the request from alice's bare JID.
    let req = b
        .expect_where(presence_from("alice@localhost", Some("subscribe")))
        .await;
    assert_eq!(req.attr("from"), Some("alice@localhost"));

    b.send_raw("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    b.expect_where(roster_push_for("alice@localhost", "from"))
        .await;
    a.expect_where(presence_from("bob@localhost", Some("subscribed")))
        .await;
    a.expect_where(roster_push_for("bob@localhost", "to")).await;
    // Bob's current presence reaches alice at once.
    a.expect_where(presence_from("bob@localhost/b", None)).await;

    // Bob changes presence: alice (a subscriber) sees it; a stranger not.
    b.send_raw("<presence><show>away</show><status>lunch</status></presence>")
        .await;
    let p = a.expect_where(presence_from("bob@localhost/b", None)).await;
    assert_eq!(p.get_child("show", CLIENT).unwrap().text(), "away");
    // Alice is not subscribed to by bob: bob does not see alice's changes.
    a.send_raw("<presence><show>dnd</show></presence>").await;
    b.expect_none_within(
        Duration::from_millis(500),
        presence_from("alice@localhost", None),
    )
    .await;

    // Bob's roster after the handshake.
    let r = b.iq("get", None, "<query xmlns='jabber:iq:roster'/>").await;
    let item = r
        .get_child("query", "jabber:iq:roster")
        .unwrap()
        .get_child("item", "jabber:iq:roster")
        .unwrap();
    assert_eq!(item.attr("jid"), Some("alice@localhost"));
    assert_eq!(item.attr("subscription"), Some("from"));

    // Bob disconnects: alice gets unavailable.
    b.kill();
    a.expect_where(presence_from("bob@localhost/b", Some("unavailable")))
        .await;

    // Alice unsubscribes: her item goes back to none.
    a.send_raw("<presence to='bob@localhost' type='unsubscribe'/>")
        .await;
    a.expect_where(roster_push_for("bob@localhost", "none"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_at_login_and_pending_requests_redelivered() {
    let s = server(&["alice", "bob", "carol"]).await;
    let (a, b) = befriend(&s).await;
    drop(a);
    // Carol asks bob while he is offline.
    drop(b);
    let mut c = s.online("carol", PW, "c").await;
    c.send_raw("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    // Alice comes back online and sees bob offline, then online when he
    // logs in; bob at login sees alice's presence and carol's request.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut a = s.online("alice", PW, "a").await;
    let mut b = s.login("bob", PW, "b").await;
    b.send_raw("<presence><priority>5</priority></presence>")
        .await;
    b.expect_where(presence_from("alice@localhost/a", None))
        .await;
    b.expect_where(presence_from("carol@localhost", Some("subscribe")))
        .await;
    let p = a.expect_where(presence_from("bob@localhost/b", None)).await;
    assert_eq!(p.get_child("priority", CLIENT).unwrap().text(), "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_approval() {
    let s = server(&["alice", "bob"]).await;
    let mut a = s.online("alice", PW, "a").await;
    let mut b = s.online("bob", PW, "b").await;
    b.iq("get", None, "<query xmlns='jabber:iq:roster'/>").await;
    // Bob pre-approves alice (RFC 6121 §3.4).
    b.send_raw("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    let push = b
        .expect_where(roster_push_for("alice@localhost", "none"))
        .await;
    let item = push
        .get_child("query", "jabber:iq:roster")
        .unwrap()
        .get_child("item", "jabber:iq:roster")
        .unwrap();
    assert_eq!(item.attr("approved"), Some("true"));
    // Alice's request is answered by the server without asking bob.
    a.send_raw("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    a.expect_where(presence_from("bob@localhost", Some("subscribed")))
        .await;
    a.expect_where(presence_from("bob@localhost/b", None)).await;
    b.expect_none_within(
        Duration::from_millis(300),
        presence_from("alice@localhost", Some("subscribe")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_both_ways_and_from_is_stamped() {
    let s = server(&["alice", "bob"]).await;
    let mut a = s.online("alice", PW, "a").await;
    let mut b = s.online("bob", PW, "b").await;
    a.send_raw("<message to='bob@localhost' type='chat' id='m1' from='mallory@localhost/x'><body>hi bob</body></message>")
        .await;
    let m = b.expect_where(|e| e.name() == "message").await;
    assert_eq!(m.attr("from"), Some("alice@localhost/a"), "from is stamped");
    assert_eq!(body(&m).as_deref(), Some("hi bob"));
    assert_eq!(m.attr("id"), Some("m1"));
    b.send_raw("<message to='alice@localhost/a' type='chat'><body>hi alice</body></message>")
        .await;
    let m = a.expect_where(|e| e.name() == "message").await;
    assert_eq!(m.attr("from"), Some("bob@localhost/b"));
    assert_eq!(body(&m).as_deref(), Some("hi alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_jid_routing_follows_priority() {
    let s = server(&["alice", "bob"]).await;
    let mut a = s.online("alice", PW, "a").await;
    let mut hi = s.login("bob", PW, "hi").await;
    hi.send_raw("<presence><priority>10</priority></presence>")
        .await;
    hi.expect_where(presence_from("bob@localhost/hi", None))
        .await;
    let mut lo = s.login("bob", PW, "lo").await;
    lo.send_raw("<presence><priority>1</priority></presence>")
        .await;
    lo.expect_where(presence_from("bob@localhost/lo", None))
        .await;
    let mut neg = s.login("bob", PW, "neg").await;
    neg.send_raw("<presence><priority>-1</priority></presence>")
        .await;
    neg.expect_where(presence_from("bob@localhost/neg", None))
        .await;

    a.send_raw("<message to='bob@localhost' type='chat'><body>one</body></message>")
        .await;
    let m = hi.expect_where(|e| e.name() == "message").await;
    assert_eq!(body(&m).as_deref(), Some("one"));
    lo.expect_none_within(Duration::from_millis(300), |e| e.name() == "message")
        .await;
    neg.expect_none_within(Duration::from_millis(10), |e| e.name() == "message")
        .await;
    // Headlines go to every non-negative resource.
    a.send_raw("<message to='bob@localhost' type='headline'><body>news</body></message>")
        .await;
    hi.expect_where(|e| e.name() == "message").await;
    lo.expect_where(|e| e.name() == "message").await;
    neg.expect_none_within(Duration::from_millis(300), |e| e.name() == "message")
        .await;
    // A full JID reaches even the negative-priority resource.
    a.send_raw("<message to='bob@localhost/neg' type='chat'><body>direct</body></message>")
        .await;
    neg.expect_where(|e| e.name() == "message").await;
    // A chat message to a resource that is gone goes to the bare JID.
    a.send_raw("<message to='bob@localhost/gone' type='chat'><body>fallback</body></message>")
        .await;
    let m = hi.expect_where(|e| e.name() == "message").await;
    assert_eq!(body(&m).as_deref(), Some("fallback"));
    // An IQ to a resource that is gone: service-unavailable.
    let r = a
        .iq(
            "get",
            Some("bob@localhost/gone"),
            "<ping xmlns='urn:xmpp:ping'/>",
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("service-unavailable"));
    // An IQ to a full JID reaches that resource, and its answer comes back.
    a.send_raw(
        "<iq type='get' id='v1' to='bob@localhost/lo'><query xmlns='jabber:iq:version'/></iq>",
    )
    .await;
    let q = lo.expect_where(|e| e.name() == "iq").await;
    assert_eq!(q.attr("from"), Some("alice@localhost/a"));
    lo.send_raw("<iq type='result' id='v1' to='alice@localhost/a'><query xmlns='jabber:iq:version'><name>t</name><version>1</version></query></iq>")
        .await;
    let r = a
        .expect_where(|e| e.name() == "iq" && e.attr("id") == Some("v1"))
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    assert_eq!(r.attr("from"), Some("bob@localhost/lo"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_unknown_users_bounce() {
    let s = server(&["alice"]).await;
    let mut a = s.online("alice", PW, "a").await;
    a.send_raw("<message to='nobody@localhost' type='chat' id='x'><body>?</body></message>")
        .await;
    let e = a
        .expect_where(|e| e.name() == "message" && e.attr("type") == Some("error"))
        .await;
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
    assert_eq!(e.attr("id"), Some("x"));
    a.send_raw("<message to='not a jid@@' type='chat' id='y'><body>?</body></message>")
        .await;
    let e = a
        .expect_where(|e| e.name() == "message" && e.attr("id") == Some("y"))
        .await;
    assert_eq!(error_condition(&e).as_deref(), Some("jid-malformed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_message_delivered_at_next_login() {
    let s = server(&["alice", "bob"]).await;
    let mut a = s.online("alice", PW, "a").await;
    a.send_raw("<message to='bob@localhost' type='chat' id='off1'><body>while you were out</body></message>")
        .await;
    // A chat-state notification alone is not worth storing.
    a.send_raw("<message to='bob@localhost' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>")
        .await;
    // The IQ round trip orders after the stores above.
    a.iq("get", Some(DOMAIN), "<ping xmlns='urn:xmpp:ping'/>")
        .await;
    // Logged in but not yet available: nothing delivered.
    let mut b = s.login("bob", PW, "b").await;
    b.expect_none_within(Duration::from_millis(300), |e| e.name() == "message")
        .await;
    b.send_raw("<presence/>").await;
    let m = b.expect_where(|e| e.name() == "message").await;
    assert_eq!(body(&m).as_deref(), Some("while you were out"));
    assert_eq!(m.attr("from"), Some("alice@localhost/a"));
    assert_eq!(m.attr("id"), Some("off1"));
    let delay = m
        .get_child("delay", "urn:xmpp:delay")
        .expect("XEP-0203 delay");
    assert_eq!(delay.attr("from"), Some(DOMAIN));
    assert!(delay.attr("stamp").unwrap().ends_with('Z'));
    b.expect_none_within(Duration::from_millis(300), |e| e.name() == "message")
        .await;
    // Delivered once: the next login gets nothing.
    drop(b);
    let mut b = s.online("bob", PW, "b2").await;
    b.expect_none_within(Duration::from_millis(300), |e| e.name() == "message")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directed_presence_and_unavailable_on_disconnect() {
    let s = server(&["alice", "bob"]).await;
    let mut a = s.online("alice", PW, "a").await;
    let b = s.online("bob", PW, "b").await;
    b.close().await;
    let mut b = s.login("bob", PW, "b").await;
    // Bob sends directed presence to alice (no subscription).
    b.send_raw("<presence to='alice@localhost'/>").await;
    a.expect_where(presence_from("bob@localhost/b", None)).await;
    b.kill();
    a.expect_where(presence_from("bob@localhost/b", Some("unavailable")))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_command() {
    let s = server(&["alice", "bob"]).await;
    let (mut a, mut b) = befriend(&s).await;
    let r = a
        .iq("get", None, "<blocklist xmlns='urn:xmpp:blocking'/>")
        .await;
    assert_eq!(
        r.get_child("blocklist", "urn:xmpp:blocking")
            .unwrap()
            .children()
            .count(),
        0
    );
    let r = a
        .iq(
            "set",
            None,
            "<block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    a.expect_where(|e| e.name() == "iq" && e.has_child("block", "urn:xmpp:blocking"))
        .await;
    // Bob stops seeing alice.
    b.expect_where(presence_from("alice@localhost/a", Some("unavailable")))
        .await;
    // Bob's message is refused; alice gets nothing.
    b.send_raw("<message to='alice@localhost' type='chat' id='bl'><body>hey</body></message>")
        .await;
    let e = b
        .expect_where(|e| e.name() == "message" && e.attr("id") == Some("bl"))
        .await;
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
    a.expect_none_within(Duration::from_millis(300), |e| e.name() == "message")
        .await;
    // Alice may not write to bob either.
    a.send_raw("<message to='bob@localhost' type='chat' id='bl2'><body>hey</body></message>")
        .await;
    let e = a
        .expect_where(|e| e.name() == "message" && e.attr("id") == Some("bl2"))
        .await;
    assert_eq!(error_condition(&e).as_deref(), Some("not-acceptable"));
    // Unblock: bob sees alice again.
    a.iq("set", None, "<unblock xmlns='urn:xmpp:blocking'/>")
        .await;
    b.expect_where(presence_from("alice@localhost/a", None))
        .await;
}

//! Per-user deletion of history (`urn:confab:history:0`,
//! xeps/confab-history.md): the requester's view only, on every device,
//! in the offline queue and the inbox; the other resources are told; the
//! bytes of messages no view holds come back.

use std::time::Duration;

use crate::common::*;

const NS: &str = "urn:confab:history:0";

fn chat(to: &str, id: &str, text: &str) -> String {
    format!("<message to='{to}' type='chat' id='{id}'><body>{text}</body></message>")
}

fn with(jid: &str) -> String {
    mam_form(&[("with", jid)])
}

async fn delete(c: &mut Client, inner: &str) -> minidom::Element {
    c.iq("set", None, &format!("<delete xmlns='{NS}'{inner}"))
        .await
}

fn delete_with(jid: &str) -> String {
    format!(" with='{jid}'/>")
}

fn delete_items(ids: &[&str]) -> String {
    let items: String = ids.iter().map(|i| format!("<item id='{i}'/>")).collect();
    format!(">{items}</delete>")
}

fn is_deleted(e: &minidom::Element) -> bool {
    e.name() == "message" && e.get_child("deleted", NS).is_some()
}

/// Bob sends alice `n` messages; the stanza-ids alice's copies carry.
async fn bob_sends(b: &mut Client, a: &mut Client, tag: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let text = format!("{tag}{i}");
        b.send_raw(&chat("alice@localhost", &text, &text)).await;
        let m = a
            .expect_where(|e| body(e).as_deref() == Some(text.as_str()))
            .await;
        ids.push(stanza_id(&m, "alice@localhost").expect("a stanza-id"));
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_hide_from_every_device_of_the_requester_only() {
    let s = TestServer::start().await;
    s.add_user("alice", "a").await;
    s.add_user("bob", "b").await;
    let mut a = s.online("alice", "a", "pc").await;
    let mut a2 = s.online("alice", "a", "phone").await;
    let mut b = s.online("bob", "b", "desk").await;
    // The feature is advertised.
    let info = a
        .iq(
            "get",
            Some("localhost"),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    assert!(String::from(&info).contains(NS), "{}", String::from(&info));
    let ids = bob_sends(&mut b, &mut a, "m", 4).await;
    // Single messages: the second and the fourth.
    let r = delete(&mut a, &delete_items(&[&ids[1], &ids[3]])).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
    // The other device is told which.
    let n = a2.expect_where(is_deleted).await;
    assert_eq!(n.attr("type"), Some("headline"));
    let d = n.get_child("deleted", NS).unwrap();
    let told: Vec<&str> = d.children().filter_map(|c| c.attr("id")).collect();
    assert_eq!(told, vec![ids[1].as_str(), ids[3].as_str()]);
    // …and not the one that asked.
    a.expect_none_within(Duration::from_millis(300), is_deleted)
        .await;
    // Alice's MAM, from her other device: gone; with and without `with`.
    let p = a2.mam(&with("bob@localhost")).await;
    assert_eq!(p.bodies(), vec!["m0", "m2"]);
    assert_eq!(p.count(), 2);
    assert_eq!(a2.mam("").await.bodies(), vec!["m0", "m2"]);
    // Bob's view never changes.
    assert_eq!(
        b.mam(&with("alice@localhost")).await.bodies(),
        vec!["m0", "m1", "m2", "m3"]
    );
    // An id deleted already is not in the view: nothing of the request
    // applies, the live one stays.
    let r = delete(&mut a, &delete_items(&[&ids[0], &ids[1]])).await;
    assert_eq!(error_condition(&r).as_deref(), Some("item-not-found"));
    assert_eq!(
        a.mam(&with("bob@localhost")).await.bodies(),
        vec!["m0", "m2"]
    );
    // The whole conversation.
    let r = delete(&mut a2, &delete_with("bob@localhost")).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
    let n = a.expect_where(is_deleted).await;
    assert_eq!(
        n.get_child("deleted", NS).unwrap().attr("with"),
        Some("bob@localhost")
    );
    assert!(a.mam(&with("bob@localhost")).await.bodies().is_empty());
    assert!(a.mam("").await.bodies().is_empty());
    assert_eq!(b.mam(&with("alice@localhost")).await.count(), 4);
    // New messages after the delete show again.
    bob_sends(&mut b, &mut a, "new", 1).await;
    assert_eq!(a2.mam(&with("bob@localhost")).await.bodies(), vec!["new0"]);
    // Deleting an empty conversation again is fine.
    let r = delete(&mut a, &delete_with("carol@localhost")).await;
    assert_eq!(r.attr("type"), Some("result"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_other_peoples_ids_change_nothing() {
    let s = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, "pw").await;
    }
    let mut a = s.online("alice", "pw", "pc").await;
    let mut b = s.online("bob", "pw", "desk").await;
    let mut c = s.online("carol", "pw", "x").await;
    let mine = bob_sends(&mut b, &mut a, "m", 1).await;
    // A message between bob and carol: its id is in their views only.
    b.send_raw(&chat("carol@localhost", "bc", "for carol"))
        .await;
    let m = c
        .expect_where(|e| body(e).as_deref() == Some("for carol"))
        .await;
    let theirs = stanza_id(&m, "carol@localhost").unwrap();
    for (inner, cond) in [
        (" />".to_string(), "bad-request"),
        ("></delete>".to_string(), "bad-request"),
        (
            format!(" with='bob@localhost'><item id='{}'/></delete>", mine[0]),
            "bad-request",
        ),
        (" with='not a jid@@'/>".to_string(), "bad-request"),
        ("><item/></delete>".to_string(), "bad-request"),
        (delete_items(&[&theirs]), "item-not-found"),
        (delete_items(&["12345"]), "item-not-found"),
        (delete_items(&["not-a-number"]), "item-not-found"),
        (delete_items(&[&mine[0], &theirs]), "item-not-found"),
    ] {
        let r = delete(&mut a, &inner).await;
        assert_eq!(
            error_condition(&r).as_deref(),
            Some(cond),
            "{inner}: {}",
            String::from(&r)
        );
    }
    let many: Vec<String> = (0..101).map(|i| i.to_string()).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let r = delete(&mut a, &delete_items(&many)).await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    // Someone else's view is not deletable.
    let r = a
        .iq(
            "set",
            Some("bob@localhost"),
            &format!("<delete xmlns='{NS}' with='alice@localhost'/>"),
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
    // Nothing changed anywhere.
    assert_eq!(a.mam("").await.count(), 1);
    assert_eq!(c.mam("").await.count(), 1);
    assert_eq!(b.mam("").await.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_messages_leave_the_offline_queue() {
    let s = TestServer::start().await;
    s.add_user("alice", "a").await;
    s.add_user("bob", "b").await;
    s.add_user("carol", "c").await;
    let mut b = s.online("bob", "b", "desk").await;
    let mut c = s.online("carol", "c", "x").await;
    for i in 0..3 {
        b.send_raw(&chat("alice@localhost", &format!("b{i}"), &format!("b{i}")))
            .await;
    }
    c.send_raw(&chat("alice@localhost", "c0", "c0")).await;
    c.send_raw(&chat("alice@localhost", "c1", "c1")).await;
    // Delivered to the archive and the queue before the pings return.
    b.iq("get", Some("localhost"), "<ping xmlns='urn:xmpp:ping'/>")
        .await;
    c.iq("get", Some("localhost"), "<ping xmlns='urn:xmpp:ping'/>")
        .await;
    // Alice logs in without presence (nothing is delivered yet), finds
    // the ids in her archive, and deletes bob's conversation and one of
    // carol's messages.
    let mut a = s.login("alice", "a", "pc").await;
    let p = a.mam(&with("carol@localhost")).await;
    assert_eq!(p.bodies(), vec!["c0", "c1"]);
    let c0 = p.ids()[0].clone();
    let r = delete(&mut a, &delete_with("bob@localhost")).await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = delete(&mut a, &delete_items(&[&c0])).await;
    assert_eq!(r.attr("type"), Some("result"));
    a.send_raw("<presence/>").await;
    let got = a.drain_within(Duration::from_millis(800)).await;
    let bodies: Vec<String> = got.iter().filter_map(body).collect();
    assert_eq!(bodies, vec!["c1"], "offline delivery after the deletes");
}

/// The bytes of the archive's log files.
fn log_bytes(s: &TestServer) -> u64 {
    let dir = s.config.data_dir.join("archive");
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_comes_back_once_both_sides_delete() {
    let mut s = TestServer::start().await;
    for u in ["alice", "bob", "carol", "dave"] {
        s.add_user(u, "pw").await;
    }
    let mut a = s.online("alice", "pw", "pc").await;
    let mut b = s.online("bob", "pw", "desk").await;
    let mut c = s.online("carol", "pw", "x").await;
    let mut d = s.online("dave", "pw", "y").await;
    let filler = "x".repeat(2000);
    // 200 messages of 2 kB between alice and bob, a few between carol and
    // dave in the same segments (these must survive the reclaim).
    for i in 0..200 {
        let text = format!("ab{i} {filler}");
        b.send_raw(&chat("alice@localhost", &format!("ab{i}"), &text))
            .await;
        if i % 50 == 0 {
            let t = format!("cd{i}");
            c.send_raw(&chat("dave@localhost", &t, &t)).await;
            d.expect_where(|e| body(e).as_deref() == Some(t.as_str()))
                .await;
        }
    }
    a.expect_where(|e| body(e).is_some_and(|t| t.starts_with("ab199 ")))
        .await;
    b.iq("get", Some("localhost"), "<ping xmlns='urn:xmpp:ping'/>")
        .await;
    let full = log_bytes(&s);
    assert!(full > 400_000, "the log holds the messages: {full} bytes");
    // One side deleting frees nothing: bob's view still holds them.
    let r = delete(&mut a, &delete_with("bob@localhost")).await;
    assert_eq!(r.attr("type"), Some("result"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        log_bytes(&s) + 100_000 > full,
        "nothing is reclaimed while a view holds the messages"
    );
    // The other side too: the bytes come back.
    let r = delete(&mut b, &delete_with("alice@localhost")).await;
    assert_eq!(r.attr("type"), Some("result"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut now = log_bytes(&s);
    while now > full / 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = log_bytes(&s);
    }
    assert!(
        now <= full / 4,
        "the log shrank from {full} to {now} bytes only"
    );
    // Carol's and dave's messages were kept, before and after a restart.
    let want = vec!["cd0", "cd50", "cd100", "cd150"];
    assert_eq!(c.mam(&with("dave@localhost")).await.bodies(), want);
    drop((a, b, c, d));
    s.restart().await;
    let mut d = s.online("dave", "pw", "y").await;
    assert_eq!(d.mam(&with("carol@localhost")).await.bodies(), want);
    let mut a = s.online("alice", "pw", "pc").await;
    assert_eq!(a.mam("").await.count(), 0);
    // The log goes on after the reclaim.
    let mut b = s.online("bob", "pw", "desk").await;
    bob_sends(&mut b, &mut a, "after", 1).await;
    assert_eq!(
        b.mam(&with("alice@localhost")).await.bodies(),
        vec!["after0"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_held_by_dnd_can_be_deleted_before_they_arrive() {
    let s = TestServer::start().await;
    s.add_user("alice", "a").await;
    s.add_user("bob", "b").await;
    let mut a = s.login("alice", "a", "pc").await;
    a.send_raw("<presence><show>dnd</show></presence>").await;
    a.expect_where(|e| e.name() == "presence").await;
    let mut b = s.online("bob", "b", "desk").await;
    b.send_raw(&chat("alice@localhost", "h0", "held 0")).await;
    b.send_raw(&chat("alice@localhost", "h1", "held 1")).await;
    b.iq("get", Some("localhost"), "<ping xmlns='urn:xmpp:ping'/>")
        .await;
    // Held: alice sees them in her archive only.
    let p = a.mam(&with("bob@localhost")).await;
    assert_eq!(p.bodies(), vec!["held 0", "held 1"]);
    let r = delete(&mut a, &delete_items(&[&p.ids()[0]])).await;
    assert_eq!(r.attr("type"), Some("result"));
    a.send_raw("<presence/>").await;
    let got = a.drain_within(Duration::from_millis(800)).await;
    let bodies: Vec<String> = got.iter().filter_map(body).collect();
    assert_eq!(bodies, vec!["held 1"], "released after dnd");
}

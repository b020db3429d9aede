//! The message archive (XEP-0313) and stanza ids (XEP-0359), through real
//! clients over TLS.

use crate::common::*;

fn chat(to: &str, id: &str, text: &str) -> String {
    format!("<message to='{to}' type='chat' id='{id}'><body>{text}</body></message>")
}

async fn two(s: &TestServer) -> (Client, Client) {
    s.add_user("alice", "a").await;
    s.add_user("bob", "b").await;
    let a = s.online("alice", "a", "phone").await;
    let b = s.online("bob", "b", "desk").await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_archives_hold_the_message_under_the_recipients_stanza_id() {
    let s = TestServer::start().await;
    let (mut a, mut b) = two(&s).await;
    a.send_raw(&chat("bob@localhost", "m1", "hello")).await;
    let got = b.expect_where(|e| is_msg_from(e, "alice@localhost")).await;
    let sid = stanza_id(&got, "bob@localhost").expect("the recipient's copy has a stanza-id");
    let pa = a.mam(&mam_form(&[("with", "bob@localhost")])).await;
    let pb = b.mam(&mam_form(&[("with", "alice@localhost")])).await;
    assert_eq!(pa.ids(), vec![sid.clone()], "{}", String::from(&pa.iq));
    assert_eq!(pb.ids(), vec![sid.clone()]);
    assert_eq!(pa.bodies(), vec!["hello"]);
    assert!(pa.complete() && pb.complete());
    assert_eq!(pa.count(), 1);
    // Without `with` too, and the metadata knows it.
    assert_eq!(b.mam("").await.ids(), vec![sid.clone()]);
    let md = b
        .iq("get", None, "<metadata xmlns='urn:xmpp:mam:2'/>")
        .await;
    let md = md.get_child("metadata", MAM).unwrap();
    assert_eq!(
        md.get_child("start", MAM).unwrap().attr("id"),
        Some(sid.as_str())
    );
    assert_eq!(
        md.get_child("end", MAM).unwrap().attr("id"),
        Some(sid.as_str())
    );
    // The result carries the original with a delay stamp.
    let r = pa.results[0].get_child("result", MAM).unwrap();
    let f = r.get_child("forwarded", "urn:xmpp:forward:0").unwrap();
    assert!(f.get_child("delay", "urn:xmpp:delay").is_some());
    let m = f.get_child("message", CLIENT).unwrap();
    assert_eq!(m.attr("from"), Some("alice@localhost/phone"));
    assert_eq!(m.attr("id"), Some("m1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_forward_backward_flip_ids_and_full_jid() {
    let s = TestServer::start().await;
    let (mut a, mut b) = two(&s).await;
    let mut a2 = s.online("alice", "a", "laptop").await;
    for i in 0..25 {
        let c = if i % 5 == 4 { &mut a2 } else { &mut a };
        c.send_raw(&chat("bob@localhost", &format!("p{i}"), &format!("n{i}")))
            .await;
        b.expect_where(|e| body(e).as_deref() == Some(format!("n{i}").as_str()))
            .await;
    }
    let with = mam_form(&[("with", "alice@localhost")]);
    let set = |x: &str| format!("<set xmlns='{RSM}'>{x}</set>");
    // Forward, 10 at a time.
    let p1 = b.mam(&format!("{with}{}", set("<max>10</max>"))).await;
    assert_eq!(
        p1.bodies(),
        (0..10).map(|i| format!("n{i}")).collect::<Vec<_>>()
    );
    assert!(!p1.complete());
    assert_eq!(p1.count(), 25);
    let last = p1.rsm("last").unwrap();
    let p2 = b
        .mam(&format!(
            "{with}{}",
            set(&format!("<max>10</max><after>{last}</after>"))
        ))
        .await;
    assert_eq!(p2.bodies()[0], "n10");
    let p3 = b
        .mam(&format!(
            "{with}{}",
            set(&format!(
                "<max>10</max><after>{}</after>",
                p2.rsm("last").unwrap()
            ))
        ))
        .await;
    assert_eq!(p3.bodies().len(), 5);
    assert!(p3.complete());
    // Backward from the end.
    let b1 = b
        .mam(&format!("{with}{}", set("<max>10</max><before/>")))
        .await;
    assert_eq!(
        b1.bodies(),
        (15..25).map(|i| format!("n{i}")).collect::<Vec<_>>()
    );
    let first = b1.rsm("first").unwrap();
    let b2 = b
        .mam(&format!(
            "{with}{}",
            set(&format!("<max>10</max><before>{first}</before>"))
        ))
        .await;
    assert_eq!(b2.bodies()[0], "n5");
    assert!(!b2.complete());
    // flip-page: the same page, newest first.
    let f = b
        .mam(&format!(
            "{with}{}<flip-page/>",
            set("<max>10</max><before/>")
        ))
        .await;
    assert_eq!(
        f.bodies(),
        (15..25).rev().map(|i| format!("n{i}")).collect::<Vec<_>>()
    );
    // ids
    let all = b.mam(&with).await;
    assert_eq!(all.bodies().len(), 25);
    let ids = all.ids();
    let form = format!(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field><field var='ids'><value>{}</value><value>{}</value></field></x>",
        ids[3], ids[7]
    );
    assert_eq!(b.mam(&form).await.bodies(), vec!["n3", "n7"]);
    // after-id / before-id
    let range = b
        .mam(&mam_form(&[
            ("with", "alice@localhost"),
            ("after-id", &ids[1]),
            ("before-id", &ids[4]),
        ]))
        .await;
    assert_eq!(range.bodies(), vec!["n2", "n3"]);
    // `with` a full JID: only what that resource sent.
    let full = b
        .mam(&mam_form(&[("with", "alice@localhost/laptop")]))
        .await;
    assert_eq!(full.bodies(), vec!["n4", "n9", "n14", "n19", "n24"]);
    // max above the configured page: capped (max_page 250), count exact.
    let big = b.mam(&format!("{with}{}", set("<max>100000</max>"))).await;
    assert_eq!(big.bodies().len(), 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_never_exceeds_max_page() {
    let s = TestServer::start_with(|c| c.mam.max_page = 7).await;
    let (mut a, mut b) = two(&s).await;
    for i in 0..12 {
        a.send_raw(&chat("bob@localhost", &format!("x{i}"), "x"))
            .await;
    }
    for _ in 0..12 {
        b.expect_where(|e| is_msg_from(e, "alice@localhost")).await;
    }
    let p = b.mam("").await;
    assert_eq!(p.results.len(), 7);
    assert!(!p.complete());
    assert_eq!(p.count(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_get_the_right_errors() {
    let s = TestServer::start().await;
    let (mut a, mut b) = two(&s).await;
    a.send_raw(&chat("bob@localhost", "e1", "x")).await;
    b.expect_where(|e| is_msg_from(e, "alice@localhost")).await;
    let cases = [
        (mam_form(&[("nonsense", "1")]), "bad-request"),
        (mam_form(&[("start", "yesterday")]), "bad-request"),
        (mam_form(&[("with", "@@@")]), "bad-request"),
        (
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:other</value></field></x>".to_string(),
            "bad-request",
        ),
        (
            format!("<set xmlns='{RSM}'><after>999</after></set>"),
            "item-not-found",
        ),
        (mam_form(&[("after-id", "nope")]), "item-not-found"),
        (mam_form(&[("ids", "12345")]), "item-not-found"),
    ];
    for (inner, cond) in cases {
        let p = b.mam(&inner).await;
        assert_eq!(p.iq.attr("type"), Some("error"), "{inner}");
        assert_eq!(error_condition(&p.iq).as_deref(), Some(cond), "{inner}");
        assert!(p.results.is_empty());
    }
    // Another user's archive.
    let r = b
        .iq(
            "set",
            Some("alice@localhost"),
            "<query xmlns='urn:xmpp:mam:2'/>",
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));
    // The form is discoverable.
    let f = b.iq("get", None, "<query xmlns='urn:xmpp:mam:2'/>").await;
    let x = f
        .get_child("query", MAM)
        .and_then(|q| q.get_child("x", "jabber:x:data"))
        .expect("a form");
    let vars: Vec<_> = x.children().filter_map(|c| c.attr("var")).collect();
    for v in [
        "FORM_TYPE",
        "with",
        "start",
        "end",
        "before-id",
        "after-id",
        "ids",
    ] {
        assert!(vars.contains(&v), "{v} in {vars:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefs_never_stops_archiving_for_that_user_only() {
    let s = TestServer::start().await;
    let (mut a, mut b) = two(&s).await;
    let r = b
        .iq(
            "set",
            None,
            "<prefs xmlns='urn:xmpp:mam:2' default='never'><always/><never/></prefs>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let got = b.iq("get", None, "<prefs xmlns='urn:xmpp:mam:2'/>").await;
    assert_eq!(
        got.get_child("prefs", MAM).and_then(|p| p.attr("default")),
        Some("never")
    );
    a.send_raw(&chat("bob@localhost", "n1", "secret")).await;
    let m = b.expect_where(|e| is_msg_from(e, "alice@localhost")).await;
    assert_eq!(stanza_id(&m, "bob@localhost"), None);
    assert_eq!(b.mam("").await.count(), 0);
    assert_eq!(a.mam("").await.bodies(), vec!["secret"]);
    // An `always` exception.
    b.iq(
        "set",
        None,
        "<prefs xmlns='urn:xmpp:mam:2' default='never'><always><jid>alice@localhost</jid></always><never/></prefs>",
    )
    .await;
    a.send_raw(&chat("bob@localhost", "n2", "kept")).await;
    b.expect_where(|e| body(e).as_deref() == Some("kept")).await;
    assert_eq!(b.mam("").await.bodies(), vec!["kept"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_stanza_id_is_stripped() {
    let s = TestServer::start().await;
    let (mut a, mut b) = two(&s).await;
    a.send_raw(
        "<message to='bob@localhost' type='chat' id='f1'><body>forged</body>\
         <stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='fake'/>\
         <stanza-id xmlns='urn:xmpp:sid:0' by='localhost' id='fake2'/>\
         <stanza-id xmlns='urn:xmpp:sid:0' by='elsewhere.example' id='theirs'/>\
         <origin-id xmlns='urn:xmpp:sid:0' id='o1'/></message>",
    )
    .await;
    let m = b.expect_where(|e| is_msg_from(e, "alice@localhost")).await;
    let ours: Vec<_> = m
        .children()
        .filter(|c| c.is("stanza-id", SID) && c.attr("by") == Some("bob@localhost"))
        .collect();
    assert_eq!(ours.len(), 1, "{}", String::from(&m));
    assert_ne!(ours[0].attr("id"), Some("fake"));
    assert!(stanza_id(&m, "localhost").is_none());
    assert_eq!(
        stanza_id(&m, "elsewhere.example").as_deref(),
        Some("theirs")
    );
    assert!(
        m.children().any(|c| c.is("origin-id", SID)),
        "origin-id is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_are_archived_for_both_with_one_id() {
    let s = TestServer::start().await;
    s.add_user("alice", "a").await;
    s.add_user("bob", "b").await;
    let mut a = s.online("alice", "a", "phone").await;
    a.send_raw(&chat("bob@localhost", "o1", "while you were out"))
        .await;
    // Acknowledged by the server's processing: the sender's archive has it.
    let pa = a.mam(&mam_form(&[("with", "bob@localhost")])).await;
    assert_eq!(pa.bodies(), vec!["while you were out"]);
    let mut b = s.login("bob", "b", "desk").await;
    b.send_raw("<presence/>").await;
    let m = b.expect_where(|e| is_msg_from(e, "alice@localhost")).await;
    assert!(
        m.get_child("delay", "urn:xmpp:delay").is_some(),
        "offline delay"
    );
    let sid = stanza_id(&m, "bob@localhost").expect("stanza-id on the offline message");
    assert_eq!(pa.ids(), vec![sid.clone()]);
    assert_eq!(b.mam("").await.ids(), vec![sid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_without_body_that_devices_need_are_archived_untouched() {
    let s = TestServer::start().await;
    let (mut a, mut b) = two(&s).await;
    let payloads = [
        "<displayed xmlns='urn:xmpp:chat-markers:0' id='m1'/>",
        "<received xmlns='urn:xmpp:receipts' id='m1'/>",
        "<reactions xmlns='urn:xmpp:reactions:0' id='m1'><reaction>👍</reaction></reactions>",
        "<retract xmlns='urn:xmpp:message-retract:1' id='m1'/>",
        "<replace xmlns='urn:xmpp:message-correct:0' id='m1'/><body>fixed</body>",
    ];
    for (i, p) in payloads.iter().enumerate() {
        a.send_raw(&format!(
            "<message to='bob@localhost' type='chat' id='k{i}'>{p}</message>"
        ))
        .await;
        b.expect_where(|e| e.attr("id") == Some(format!("k{i}").as_str()))
            .await;
    }
    // A bare chat state and a headline are not archived.
    a.send_raw("<message to='bob@localhost' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>").await;
    a.send_raw("<message to='bob@localhost' type='headline' id='h'><body>news</body></message>")
        .await;
    b.expect_where(|e| e.attr("id") == Some("h")).await;
    let p = b.mam("").await;
    assert_eq!(p.results.len(), payloads.len());
    let reaction = &p.results[2];
    let inner = reaction
        .get_child("result", MAM)
        .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
        .and_then(|f| f.get_child("message", CLIENT))
        .unwrap();
    let r = inner
        .get_child("reactions", "urn:xmpp:reactions:0")
        .unwrap();
    assert_eq!(r.attr("id"), Some("m1"));
    assert_eq!(r.children().next().map(|c| c.text()).as_deref(), Some("👍"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_carbons_carry_the_senders_stanza_id() {
    let s = TestServer::start().await;
    let (mut a, mut b) = two(&s).await;
    let mut a2 = s.online("alice", "a", "laptop").await;
    for c in [&mut a, &mut a2] {
        let r = c
            .iq("set", None, "<enable xmlns='urn:xmpp:carbons:2'/>")
            .await;
        assert_eq!(r.attr("type"), Some("result"));
    }
    a.send_raw(&chat("bob@localhost", "c1", "copied")).await;
    b.expect_where(|e| body(e).as_deref() == Some("copied"))
        .await;
    let copy = a2
        .expect_where(|e| e.has_child("sent", "urn:xmpp:carbons:2"))
        .await;
    let inner = copy
        .get_child("sent", "urn:xmpp:carbons:2")
        .and_then(|s| s.get_child("forwarded", "urn:xmpp:forward:0"))
        .and_then(|f| f.get_child("message", CLIENT))
        .unwrap();
    let sid = stanza_id(inner, "alice@localhost").expect("the sender's stanza-id");
    assert_eq!(a2.mam("").await.ids(), vec![sid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_large_messages_is_cut_short_not_the_client() {
    let s = TestServer::start().await;
    let (mut a, mut b) = two(&s).await;
    let big = "y".repeat(150 * 1024);
    for i in 0..16 {
        a.send_raw(&format!(
            "<message to='bob@localhost' type='chat' id='big{i}'><body>{i}:{big}</body></message>"
        ))
        .await;
        b.expect_where(|e| e.attr("id") == Some(format!("big{i}").as_str()))
            .await;
    }
    // 16 x 150 KiB is more than the session queue holds: the page stops
    // early, says so, and the rest comes with the next page.
    let mut got = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let set = if after.is_empty() {
            format!("<set xmlns='{RSM}'><max>50</max></set>")
        } else {
            format!("<set xmlns='{RSM}'><max>50</max><after>{after}</after></set>")
        };
        let p = b.mam(&set).await;
        assert_eq!(p.iq.attr("type"), Some("result"));
        pages += 1;
        got.extend(
            p.bodies()
                .into_iter()
                .map(|t| t.split(':').next().unwrap().to_string()),
        );
        if p.complete() {
            break;
        }
        after = p.rsm("last").unwrap();
        assert!(pages < 20);
    }
    assert!(pages > 1, "one page would not fit the queue");
    assert_eq!(got, (0..16).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_message_is_archived_though_not_copied() {
    let s = TestServer::start().await;
    let (mut a, mut b) = two(&s).await;
    a.send_raw(
        "<message to='bob@localhost' type='chat' id='pv'><body>just us</body><private xmlns='urn:xmpp:carbons:2'/></message>",
    )
    .await;
    b.expect_where(|e| e.attr("id") == Some("pv")).await;
    assert_eq!(b.mam("").await.bodies(), vec!["just us"]);
}

/// `[mam] enabled = false`: nothing archived, no stanza-id, no MAM in disco,
/// and a query is answered as by a server without an archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_archive_off_nothing_is_archived_or_offered() {
    let s = TestServer::start_with(|c| c.mam.enabled = false).await;
    let (mut a, mut b) = two(&s).await;
    a.send_raw(&chat("bob@localhost", "off1", "not kept")).await;
    let m = b.expect_where(|e| e.attr("id") == Some("off1")).await;
    assert!(m.get_child("stanza-id", "urn:xmpp:sid:0").is_none());
    let r = b.iq("set", None, "<query xmlns='urn:xmpp:mam:2'/>").await;
    assert_eq!(r.attr("type"), Some("error"));
    assert_eq!(error_condition(&r).as_deref(), Some("service-unavailable"));
    for to in ["bob@localhost", "localhost"] {
        let info = b
            .iq(
                "get",
                Some(to),
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
            )
            .await;
        let text = String::from(&info);
        assert!(text.contains("urn:xmpp:sid:0"), "{text}");
        assert!(!text.contains("urn:xmpp:mam:2"), "{text}");
    }
}

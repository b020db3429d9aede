//! Group chat (XEP-0045 on rooms.localhost, xeps/xep-0045.md): rooms of
//! equal members, the cap, leave and rejoin, local users only, the room's
//! archive and the journal, restarts.

use std::time::Duration;

use minidom::Element;

use crate::common::*;

const ROOMS: &str = "rooms.localhost";
const MUC: &str = "http://jabber.org/protocol/muc";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const ADMIN: &str = "http://jabber.org/protocol/muc#admin";
const OWNER: &str = "http://jabber.org/protocol/muc#owner";
const INBOX: &str = "urn:xmpp:inbox:1";
const HISTORY: &str = "urn:confab:history:0";
const OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
const STANZAS_NS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

fn room(name: &str) -> String {
    format!("{name}@{ROOMS}")
}

fn codes(p: &Element) -> Vec<String> {
    p.get_child("x", MUC_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.is("status", MUC_USER))
                .filter_map(|c| c.attr("code").map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn error_text(e: &Element) -> String {
    e.get_child("error", CLIENT)
        .and_then(|er| er.get_child("text", STANZAS_NS))
        .map(|t| t.text())
        .unwrap_or_default()
}

/// Send a join; the self-presence (status 110) or the error presence.
async fn try_join(c: &mut Client, room: &str, nick: &str, history: &str) -> Element {
    let occ = format!("{room}/{nick}");
    c.send_raw(&format!(
        "<presence to='{occ}'><x xmlns='{MUC}'>{history}</x></presence>"
    ))
    .await;
    c.expect_where(|e| {
        e.name() == "presence"
            && e.attr("from") == Some(occ.as_str())
            && (e.attr("type") == Some("error") || codes(e).iter().any(|c| c == "110"))
    })
    .await
}

/// Join and wait for the subject, which ends the join.
async fn join(c: &mut Client, room: &str, nick: &str) -> Element {
    let p = try_join(c, room, nick, "<history maxstanzas='0'/>").await;
    assert_ne!(p.attr("type"), Some("error"), "{}", String::from(&p));
    c.expect_where(|e| {
        e.name() == "message"
            && e.attr("type") == Some("groupchat")
            && e.has_child("subject", CLIENT)
    })
    .await;
    p
}

async fn say(c: &mut Client, room: &str, id: &str, text: &str) {
    c.send_raw(&format!(
        "<message to='{room}' type='groupchat' id='{id}'><body>{text}</body></message>"
    ))
    .await;
}

/// Wait for a groupchat message with this body.
async fn heard(c: &mut Client, text: &str) -> Element {
    let t = text.to_string();
    c.expect_where(move |e| {
        e.name() == "message"
            && e.attr("type") == Some("groupchat")
            && body(e).as_deref() == Some(t.as_str())
    })
    .await
}

async fn admin(c: &mut Client, room: &str, items: &str) -> Element {
    c.iq(
        "set",
        Some(room),
        &format!("<query xmlns='{ADMIN}'>{items}</query>"),
    )
    .await
}

async fn members(c: &mut Client, room: &str) -> Vec<String> {
    let r = c
        .iq(
            "get",
            Some(room),
            &format!("<query xmlns='{ADMIN}'><item affiliation='member'/></query>"),
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
    let mut v: Vec<String> = r
        .get_child("query", ADMIN)
        .unwrap()
        .children()
        .filter_map(|i| i.attr("jid").map(String::from))
        .collect();
    v.sort();
    v
}

fn info_field(info: &Element, var: &str) -> Option<String> {
    info.get_child("query", "http://jabber.org/protocol/disco#info")?
        .get_child("x", "jabber:x:data")?
        .children()
        .find(|f| f.attr("var") == Some(var))?
        .get_child("value", "jabber:x:data")
        .map(|v| v.text())
}

async fn rename(c: &mut Client, room: &str, name: &str) -> Element {
    c.iq(
        "set",
        Some(room),
        &format!(
            "<query xmlns='{OWNER}'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
             <field var='muc#roomconfig_roomname'><value>{name}</value></field></x></query>"
        ),
    )
    .await
}

#[tokio::test]
async fn thirty_members_then_full() {
    let s = TestServer::start().await;
    for i in 0..32 {
        s.add_user(&format!("u{i}"), "pw").await;
    }
    let r = room("big");
    let mut u0 = s.online("u0", "pw", "r").await;
    let p = join(&mut u0, &r, "u0").await;
    assert!(
        codes(&p).contains(&"201".to_string()),
        "created: {}",
        String::from(&p)
    );
    // A plain member adds 29 others in one request: 30 members.
    let items: String = (1..30)
        .map(|i| format!("<item affiliation='member' jid='u{i}@localhost'/>"))
        .collect();
    let a = admin(&mut u0, &r, &items).await;
    assert_eq!(a.attr("type"), Some("result"), "{}", String::from(&a));
    assert_eq!(members(&mut u0, &r).await.len(), 30);
    // The 31st by addition: not-allowed, saying the room is full, and
    // nothing of the request applied (all or nothing).
    let a = admin(
        &mut u0,
        &r,
        "<item affiliation='none' jid='u1@localhost'/><item affiliation='member' jid='u30@localhost'/><item affiliation='member' jid='u31@localhost'/>",
    )
    .await;
    assert_eq!(error_condition(&a).as_deref(), Some("not-allowed"));
    assert!(error_text(&a).contains("full"), "{}", String::from(&a));
    assert_eq!(members(&mut u0, &r).await.len(), 30);
    assert!(members(&mut u0, &r)
        .await
        .contains(&"u1@localhost".to_string()));
    // The 31st by joining: service-unavailable, saying the room is full.
    let mut u30 = s.online("u30", "pw", "r").await;
    let e = try_join(&mut u30, &r, "u30", "").await;
    assert_eq!(e.attr("type"), Some("error"));
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
    assert!(error_text(&e).contains("full"), "{}", String::from(&e));
    // A member joins; disco#info counts occupants and members.
    let mut u5 = s.online("u5", "pw", "r").await;
    join(&mut u5, &r, "five").await;
    let info = u5
        .iq(
            "get",
            Some(&r),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    assert_eq!(
        info_field(&info, "muc#roominfo_occupants").as_deref(),
        Some("2")
    );
    assert_eq!(
        info_field(&info, "muc#roominfo_members").as_deref(),
        Some("30")
    );
    // A non-member does not see the room at all.
    let info = u30
        .iq(
            "get",
            Some(&r),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    assert_eq!(error_condition(&info).as_deref(), Some("item-not-found"));
}

#[tokio::test]
async fn equal_members_add_remove_rename_subject() {
    let s = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, "pw").await;
    }
    let r = room("team");
    let mut alice = s.online("alice", "pw", "r").await;
    join(&mut alice, &r, "Alice").await;
    assert_eq!(
        admin(
            &mut alice,
            &r,
            "<item affiliation='member' jid='bob@localhost'/>"
        )
        .await
        .attr("type"),
        Some("result")
    );
    let mut bob = s.online("bob", "pw", "r").await;
    let p = join(&mut bob, &r, "Bob").await;
    let item = p
        .get_child("x", MUC_USER)
        .unwrap()
        .get_child("item", MUC_USER)
        .unwrap();
    assert_eq!(item.attr("affiliation"), Some("member"));
    assert_eq!(item.attr("role"), Some("participant"));
    assert_eq!(item.attr("jid"), Some(bob.jid.as_str()), "non-anonymous");
    assert!(p.has_child("occupant-id", OCCUPANT_ID));
    alice
        .expect_where(presence_from(&format!("{r}/Bob"), None))
        .await;
    // Bob, a plain member, adds carol, renames the room and sets a subject.
    assert_eq!(
        admin(
            &mut bob,
            &r,
            "<item affiliation='member' jid='carol@localhost'/>"
        )
        .await
        .attr("type"),
        Some("result")
    );
    assert!(members(&mut alice, &r)
        .await
        .contains(&"carol@localhost".into()));
    let form = bob
        .iq("get", Some(&r), &format!("<query xmlns='{OWNER}'/>"))
        .await;
    assert_eq!(form.attr("type"), Some("result"), "{}", String::from(&form));
    assert_eq!(
        rename(&mut bob, &r, "Project X").await.attr("type"),
        Some("result")
    );
    let note = alice
        .expect_where(|e| e.name() == "message" && codes(e).contains(&"104".to_string()))
        .await;
    assert_eq!(note.attr("from"), Some(r.as_str()));
    let info = alice
        .iq(
            "get",
            Some(&r),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    let ident = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap()
        .get_child("identity", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert_eq!(ident.attr("name"), Some("Project X"));
    bob.send_raw(&format!(
        "<message to='{r}' type='groupchat'><subject>Launch</subject></message>"
    ))
    .await;
    let subj = alice
        .expect_where(|e| {
            e.get_child("subject", CLIENT)
                .is_some_and(|s| s.text() == "Launch")
        })
        .await;
    assert_eq!(subj.attr("from"), Some(format!("{r}/Bob").as_str()));
    // Bob removes carol.
    assert_eq!(
        admin(
            &mut bob,
            &r,
            "<item affiliation='none' jid='carol@localhost'/>"
        )
        .await
        .attr("type"),
        Some("result")
    );
    assert_eq!(
        members(&mut alice, &r).await,
        vec!["alice@localhost".to_string(), "bob@localhost".to_string()]
    );
    // Operations that would make members unequal are refused.
    for items in [
        "<item affiliation='outcast' jid='bob@localhost'/>",
        "<item affiliation='owner' jid='bob@localhost'/>",
        "<item affiliation='admin' jid='bob@localhost'/>",
        "<item role='moderator' nick='Bob'/>",
        "<item role='visitor' nick='Bob'/>",
        "<item role='none' nick='Bob'/>",
    ] {
        let a = admin(&mut alice, &r, items).await;
        assert_eq!(
            error_condition(&a).as_deref(),
            Some("not-allowed"),
            "{items}"
        );
    }
    let a = admin(
        &mut alice,
        &r,
        "<item affiliation='boss' jid='bob@localhost'/>",
    )
    .await;
    assert_eq!(error_condition(&a).as_deref(), Some("bad-request"));
    // Both are still there, and nobody's presence changed.
    assert_eq!(members(&mut alice, &r).await.len(), 2);
    // Messages: reflected with the room's stanza-id and occupant-id.
    say(&mut alice, &r, "m1", "hello team").await;
    let mine = heard(&mut alice, "hello team").await;
    assert_eq!(mine.attr("id"), Some("m1"));
    let theirs = heard(&mut bob, "hello team").await;
    assert_eq!(theirs.attr("from"), Some(format!("{r}/Alice").as_str()));
    let sid = stanza_id(&theirs, &r).expect("stanza-id by the room");
    assert_eq!(stanza_id(&mine, &r), Some(sid));
    assert!(theirs.has_child("occupant-id", OCCUPANT_ID));
}

#[tokio::test]
async fn leave_and_rejoin() {
    let s = TestServer::start().await;
    for u in ["alice", "bob", "carol", "dave"] {
        s.add_user(u, "pw").await;
    }
    let r = room("club");
    let mut alice = s.online("alice", "pw", "r").await;
    join(&mut alice, &r, "alice").await;
    admin(
        &mut alice,
        &r,
        "<item affiliation='member' jid='bob@localhost'/><item affiliation='member' jid='carol@localhost'/>",
    )
    .await;
    let mut bob = s.online("bob", "pw", "r").await;
    join(&mut bob, &r, "bob").await;
    let mut carol = s.online("carol", "pw", "r").await;
    join(&mut carol, &r, "carol").await;
    // A plain unavailable presence ends occupancy only.
    bob.send_raw(&format!("<presence to='{r}/bob' type='unavailable'/>"))
        .await;
    bob.expect_where(presence_from(&format!("{r}/bob"), Some("unavailable")))
        .await;
    assert!(members(&mut alice, &r)
        .await
        .contains(&"bob@localhost".into()));
    // Leaving is an affiliation change on oneself.
    let a = admin(
        &mut carol,
        &r,
        "<item affiliation='none' jid='carol@localhost'/>",
    )
    .await;
    assert_eq!(a.attr("type"), Some("result"));
    let gone = carol
        .expect_where(presence_from(&format!("{r}/carol"), Some("unavailable")))
        .await;
    assert!(
        codes(&gone).contains(&"321".to_string()),
        "{}",
        String::from(&gone)
    );
    assert!(!members(&mut alice, &r)
        .await
        .contains(&"carol@localhost".into()));
    // Removed by alice.
    admin(
        &mut alice,
        &r,
        "<item affiliation='none' jid='bob@localhost'/>",
    )
    .await;
    assert_eq!(
        members(&mut alice, &r).await,
        vec!["alice@localhost".to_string()]
    );
    // A member who left no longer reads the archive.
    let q = carol.mam_at(Some(&r), "").await;
    assert_eq!(error_condition(&q.iq).as_deref(), Some("forbidden"));
    // Both rejoin by themselves.
    join(&mut carol, &r, "carol").await;
    join(&mut bob, &r, "bob").await;
    assert_eq!(members(&mut alice, &r).await.len(), 3);
    // Someone who never was a member may not walk in.
    let mut dave = s.online("dave", "pw", "r").await;
    let e = try_join(&mut dave, &r, "dave", "").await;
    assert_eq!(
        error_condition(&e).as_deref(),
        Some("registration-required")
    );
    // A nickname in use is refused; a non-occupant may not send.
    let e = try_join(&mut dave, &r, "alice", "").await;
    assert_eq!(error_condition(&e).as_deref(), Some("conflict"));
    dave.send_raw(&format!(
        "<message to='{r}' type='groupchat' id='x1'><body>hi</body></message>"
    ))
    .await;
    let e = dave
        .expect_where(|e| e.name() == "message" && e.attr("type") == Some("error"))
        .await;
    assert_eq!(error_condition(&e).as_deref(), Some("not-acceptable"));
    // A mediated invitation by a member makes the invitee a member.
    alice
        .send_raw(&format!(
            "<message to='{r}'><x xmlns='{MUC_USER}'><invite to='dave@localhost'><reason>join us</reason></invite></x></message>"
        ))
        .await;
    let inv = dave
        .expect_where(|e| {
            e.name() == "message"
                && e.get_child("x", MUC_USER)
                    .is_some_and(|x| x.has_child("invite", MUC_USER))
        })
        .await;
    assert_eq!(inv.attr("from"), Some(r.as_str()));
    join(&mut dave, &r, "dave").await;
    // The last member to leave takes the room with them.
    for (c, u) in [
        (&mut alice, "alice"),
        (&mut bob, "bob"),
        (&mut carol, "carol"),
        (&mut dave, "dave"),
    ] {
        let a = admin(
            c,
            &r,
            &format!("<item affiliation='none' jid='{u}@localhost'/>"),
        )
        .await;
        assert_eq!(a.attr("type"), Some("result"), "{}", String::from(&a));
    }
    let info = alice
        .iq(
            "get",
            Some(&r),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    assert_eq!(error_condition(&info).as_deref(), Some("item-not-found"));
    let e = try_join(&mut bob, &r, "bob", "").await;
    assert_ne!(e.attr("type"), Some("error"), "a join makes a new room");
}

#[tokio::test]
async fn local_users_only() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let r = room("local");
    let mut alice = s.online("alice", "pw", "r").await;
    join(&mut alice, &r, "alice").await;
    let a = admin(
        &mut alice,
        &r,
        "<item affiliation='member' jid='eve@remote.example'/>",
    )
    .await;
    assert_eq!(error_condition(&a).as_deref(), Some("forbidden"));
    alice
        .send_raw(&format!(
            "<message to='{r}' id='inv1'><x xmlns='{MUC_USER}'><invite to='eve@remote.example'/></x></message>"
        ))
        .await;
    let e = alice
        .expect_where(|e| e.name() == "message" && e.attr("id") == Some("inv1"))
        .await;
    assert_eq!(error_condition(&e).as_deref(), Some("forbidden"));
    alice
        .send_raw(&format!(
            "<message to='eve@remote.example' id='inv2'><x xmlns='jabber:x:conference' jid='{r}'/></message>"
        ))
        .await;
    let e = alice
        .expect_where(|e| e.name() == "message" && e.attr("id") == Some("inv2"))
        .await;
    assert_eq!(error_condition(&e).as_deref(), Some("forbidden"));
    // A join from another domain, as it would come over federation.
    let ctx = s.handle().ctx.clone();
    confab::router::route(
        &ctx,
        el(&format!(
            "<presence from='eve@remote.example/x' to='{r}/eve'><x xmlns='{MUC}'/></presence>"
        )),
    )
    .await;
    let info = alice
        .iq(
            "get",
            Some(&r),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    assert_eq!(
        info_field(&info, "muc#roominfo_occupants").as_deref(),
        Some("1")
    );
    assert_eq!(
        members(&mut alice, &r).await,
        vec!["alice@localhost".to_string()]
    );
    // A direct invitation to a local user makes them a member.
    alice
        .send_raw(&format!(
            "<message to='bob@localhost' id='inv3'><x xmlns='jabber:x:conference' jid='{r}'/></message>"
        ))
        .await;
    let mut bob = s.online("bob", "pw", "r").await;
    bob.expect_where(|e| e.get_child("x", "jabber:x:conference").is_some())
        .await;
    join(&mut bob, &r, "bob").await;
}

async fn inbox_entry(c: &mut Client, jid: &str) -> Option<Element> {
    let id = c.id();
    c.send_raw(&format!(
        "<iq type='get' id='{id}'><inbox xmlns='{INBOX}' queryid='{id}'/></iq>"
    ))
    .await;
    let mut found = None;
    loop {
        let e = c
            .expect_where(|e| {
                (e.name() == "iq" && e.attr("id") == Some(id.as_str()))
                    || e.has_child("entry", INBOX)
            })
            .await;
        if e.name() == "iq" {
            return found;
        }
        if let Some(en) = e.get_child("entry", INBOX) {
            if en.attr("jid") == Some(jid) {
                found = Some(en.clone());
            }
        }
    }
}

#[tokio::test]
async fn offline_member_misses_nothing() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let r = room("news");
    let mut alice = s.online("alice", "pw", "r").await;
    join(&mut alice, &r, "alice").await;
    admin(
        &mut alice,
        &r,
        "<item affiliation='member' jid='bob@localhost'/>",
    )
    .await;
    rename(&mut alice, &r, "Daily News").await;
    for i in 0..5 {
        say(&mut alice, &r, &format!("n{i}"), &format!("news {i}")).await;
        heard(&mut alice, &format!("news {i}")).await;
    }
    // Bob was never online: he sees the room in his inbox with its name
    // and 5 unread, and reads the messages from the room's archive.
    let mut bob = s.online("bob", "pw", "r").await;
    let e = inbox_entry(&mut bob, &r)
        .await
        .expect("room in bob's inbox");
    assert_eq!(e.attr("unread"), Some("5"));
    assert_eq!(e.attr("name"), Some("Daily News"));
    let page = bob.mam_at(Some(&r), "").await;
    assert_eq!(
        page.iq.attr("type"),
        Some("result"),
        "{}",
        String::from(&page.iq)
    );
    assert_eq!(
        page.bodies(),
        (0..5).map(|i| format!("news {i}")).collect::<Vec<_>>()
    );
    let first = &page.results[0];
    assert_eq!(first.attr("from"), Some(r.as_str()));
    // History on join, from the archive.
    let p = try_join(&mut bob, &r, "bob", "<history maxstanzas='3'/>").await;
    assert_ne!(p.attr("type"), Some("error"));
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = bob
            .expect_where(|e| e.name() == "message" && body(e).is_some())
            .await;
        assert!(m.has_child("delay", "urn:xmpp:delay"));
        got.push(body(&m).unwrap());
    }
    assert_eq!(got, vec!["news 2", "news 3", "news 4"]);
    bob.expect_where(|e| e.has_child("subject", CLIENT)).await;
    // Bob reads up to the last one with a marker: unread 0. His own
    // message reads the room too.
    let last = page.ids().last().cloned().unwrap();
    bob.send_raw(&format!(
        "<message to='{r}' type='groupchat'><displayed xmlns='urn:xmpp:chat-markers:0' id='{last}'/></message>"
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let e = inbox_entry(&mut bob, &r).await.unwrap();
    assert_eq!(e.attr("unread"), Some("0"));
    // Bob deletes the room's history from his own view only.
    let d = bob
        .iq(
            "set",
            None,
            &format!("<delete xmlns='{HISTORY}' with='{r}'/>"),
        )
        .await;
    assert_eq!(d.attr("type"), Some("result"), "{}", String::from(&d));
    assert_eq!(bob.mam_at(Some(&r), "").await.count(), 0);
    assert_eq!(alice.mam_at(Some(&r), "").await.count(), 5);
    // One message from alice's view, by its id.
    let alice_page = alice.mam_at(Some(&r), "").await;
    let id0 = alice_page.ids()[0].clone();
    let d = alice
        .iq(
            "set",
            None,
            &format!("<delete xmlns='{HISTORY}'><item id='{id0}'/></delete>"),
        )
        .await;
    assert_eq!(d.attr("type"), Some("result"), "{}", String::from(&d));
    assert_eq!(alice.mam_at(Some(&r), "").await.count(), 4);
    // New messages show again.
    say(&mut alice, &r, "n5", "news 5").await;
    heard(&mut bob, "news 5").await;
    assert_eq!(
        bob.mam_at(Some(&r), "").await.bodies(),
        vec!["news 5".to_string()]
    );
}

#[tokio::test]
async fn restart_keeps_rooms() {
    let mut s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let r = room("keep");
    {
        let mut alice = s.online("alice", "pw", "r").await;
        join(&mut alice, &r, "alice").await;
        admin(
            &mut alice,
            &r,
            "<item affiliation='member' jid='bob@localhost'/>",
        )
        .await;
        rename(&mut alice, &r, "Kept").await;
        alice
            .send_raw(&format!(
                "<message to='{r}' type='groupchat'><subject>Still here</subject></message>"
            ))
            .await;
        alice
            .expect_where(|e| {
                e.has_child("subject", CLIENT)
                    && e.get_child("subject", CLIENT)
                        .is_some_and(|s| s.text() == "Still here")
            })
            .await;
        say(&mut alice, &r, "k1", "before restart").await;
        heard(&mut alice, "before restart").await;
    }
    s.restart().await;
    let mut bob = s.online("bob", "pw", "r").await;
    let p = try_join(&mut bob, &r, "bob", "").await;
    assert_ne!(p.attr("type"), Some("error"), "{}", String::from(&p));
    assert!(!codes(&p).contains(&"201".to_string()), "not a new room");
    let m = heard(&mut bob, "before restart").await;
    assert!(m.has_child("delay", "urn:xmpp:delay"));
    let subj = bob.expect_where(|e| e.has_child("subject", CLIENT)).await;
    assert_eq!(
        subj.get_child("subject", CLIENT).unwrap().text(),
        "Still here"
    );
    assert_eq!(
        members(&mut bob, &r).await,
        vec!["alice@localhost".to_string(), "bob@localhost".to_string()]
    );
    let info = bob
        .iq(
            "get",
            Some(&r),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    assert_eq!(
        info_field(&info, "muc#roomconfig_roomname").as_deref(),
        Some("Kept")
    );
    // The service lists the rooms one is a member of, and only those.
    let items = bob
        .iq(
            "get",
            Some(ROOMS),
            "<query xmlns='http://jabber.org/protocol/disco#items'/>",
        )
        .await;
    let listed: Vec<String> = items
        .get_child("query", "http://jabber.org/protocol/disco#items")
        .unwrap()
        .children()
        .filter_map(|i| i.attr("jid").map(String::from))
        .collect();
    assert_eq!(listed, vec![r.clone()]);
}

#[tokio::test]
async fn self_ping_private_messages_and_nick_change() {
    let s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let r = room("ping");
    let mut alice = s.online("alice", "pw", "r").await;
    join(&mut alice, &r, "alice").await;
    admin(
        &mut alice,
        &r,
        "<item affiliation='member' jid='bob@localhost'/>",
    )
    .await;
    let mut bob = s.online("bob", "pw", "r").await;
    // Not joined: self-ping says so.
    let p = bob
        .iq(
            "get",
            Some(&format!("{r}/bob")),
            "<ping xmlns='urn:xmpp:ping'/>",
        )
        .await;
    assert_eq!(error_condition(&p).as_deref(), Some("not-acceptable"));
    join(&mut bob, &r, "bob").await;
    let p = bob
        .iq(
            "get",
            Some(&format!("{r}/bob")),
            "<ping xmlns='urn:xmpp:ping'/>",
        )
        .await;
    assert_eq!(p.attr("type"), Some("result"), "{}", String::from(&p));
    // A private message to an occupant.
    bob.send_raw(&format!(
        "<message to='{r}/alice' type='chat' id='pm1'><body>psst</body></message>"
    ))
    .await;
    let pm = alice
        .expect_where(|e| e.name() == "message" && body(e).as_deref() == Some("psst"))
        .await;
    assert_eq!(pm.attr("from"), Some(format!("{r}/bob").as_str()));
    // A nickname change: 303, then the new nickname.
    bob.send_raw(&format!("<presence to='{r}/robert'/>")).await;
    let gone = alice
        .expect_where(presence_from(&format!("{r}/bob"), Some("unavailable")))
        .await;
    assert!(codes(&gone).contains(&"303".to_string()));
    alice
        .expect_where(presence_from(&format!("{r}/robert"), None))
        .await;
    // A join without a nickname, a malformed room JID.
    bob.send_raw(&format!("<presence to='{r}'><x xmlns='{MUC}'/></presence>"))
        .await;
    let e = bob
        .expect_where(|e| e.name() == "presence" && e.attr("type") == Some("error"))
        .await;
    assert_eq!(error_condition(&e).as_deref(), Some("jid-malformed"));
    // A flood of nickname changes is cut short and disturbs nobody.
    for i in 0..30 {
        bob.send_raw(&format!("<presence to='{r}/n{i}'/>")).await;
    }
    let e = bob
        .expect_where(|e| e.name() == "presence" && e.attr("type") == Some("error"))
        .await;
    assert_eq!(error_condition(&e).as_deref(), Some("resource-constraint"));
    say(&mut alice, &r, "after", "still fine").await;
    heard(&mut alice, "still fine").await;
}

const BOOKMARKS: &str = "urn:xmpp:bookmarks:1";

/// The user's own bookmarks: (room JID, name, autojoin) per item.
async fn bookmarks(c: &mut Client) -> Vec<(String, String, String)> {
    let r = c.pep_items(None, BOOKMARKS).await;
    if error_condition(&r).as_deref() == Some("item-not-found") {
        return Vec::new();
    }
    assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
    let mut v: Vec<(String, String, String)> = r
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("items", PUBSUB))
        .map(|i| {
            i.children()
                .filter_map(|it| {
                    let conf = it.get_child("conference", BOOKMARKS)?;
                    Some((
                        it.attr("id")?.to_string(),
                        conf.attr("name").unwrap_or_default().to_string(),
                        conf.attr("autojoin").unwrap_or_default().to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The legacy `storage:bookmarks` node's conference JIDs.
async fn legacy_bookmarks(c: &mut Client) -> Vec<String> {
    let r = c.pep_items(None, "storage:bookmarks").await;
    let mut v: Vec<String> = r
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("items", PUBSUB))
        .and_then(|i| i.children().next())
        .and_then(|it| it.get_child("storage", "storage:bookmarks"))
        .map(|s| {
            s.children()
                .filter_map(|c| c.attr("jid").map(String::from))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn bookmark_pushed(e: &Element, room: &str) -> bool {
    pep_event(e.attr("from").unwrap_or_default(), BOOKMARKS)(e)
        && event_items(e)
            .children()
            .any(|i| i.is("item", PUBSUB_EVENT) && i.attr("id") == Some(room))
}

fn bookmark_retracted(e: &Element, room: &str) -> bool {
    pep_event(e.attr("from").unwrap_or_default(), BOOKMARKS)(e)
        && event_items(e)
            .children()
            .any(|i| i.is("retract", PUBSUB_EVENT) && i.attr("id") == Some(room))
}

#[tokio::test]
async fn bookmarks_follow_membership_are_pushed_and_survive_a_restart() {
    let mut s = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, "pw").await;
    }
    let r = room("booked");
    let mut alice = s.login("alice", "pw", "r").await;
    alice.caps_presence("alice-bm", &[BOOKMARKS]).await;
    let mut bob = s.login("bob", "pw", "r").await;
    bob.caps_presence("bob-bm", &[BOOKMARKS]).await;

    // Creating the room bookmarks it, with autojoin, and tells the client.
    join(&mut alice, &r, "Alice").await;
    let n = alice.expect_where(|e| bookmark_pushed(e, &r)).await;
    let conf = event_items(&n)
        .children()
        .next()
        .and_then(|i| i.get_child("conference", BOOKMARKS))
        .unwrap();
    assert_eq!(conf.attr("autojoin"), Some("true"));
    assert_eq!(
        conf.get_child("nick", BOOKMARKS)
            .map(|n| n.text())
            .as_deref(),
        Some("Alice")
    );
    assert_eq!(
        bookmarks(&mut alice).await,
        vec![(r.clone(), String::new(), "true".into())]
    );
    // The node is private and keeps every room.
    let form = alice
        .iq(
            "get",
            None,
            &format!(
                "<pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><configure node='{BOOKMARKS}'/></pubsub>"
            ),
        )
        .await;
    let form = String::from(&form);
    assert!(form.contains("<value>whitelist</value>"), "{form}");
    assert!(form.contains("<value>1024</value>"), "{form}");
    let peek = bob.pep_items(Some("alice@localhost"), BOOKMARKS).await;
    assert_eq!(error_condition(&peek).as_deref(), Some("not-allowed"));

    // Being added bookmarks it for bob; a rename renames both.
    admin(
        &mut alice,
        &r,
        "<item affiliation='member' jid='bob@localhost'/>",
    )
    .await;
    bob.expect_where(|e| bookmark_pushed(e, &r)).await;
    assert_eq!(bookmarks(&mut bob).await.len(), 1);
    let res = rename(&mut bob, &r, "Planning").await;
    assert_eq!(res.attr("type"), Some("result"), "{}", String::from(&res));
    for c in [&mut alice, &mut bob] {
        c.expect_where(|e| {
            bookmark_pushed(e, &r)
                && event_items(e)
                    .children()
                    .next()
                    .and_then(|i| i.get_child("conference", BOOKMARKS))
                    .and_then(|c| c.attr("name"))
                    == Some("Planning")
        })
        .await;
        assert_eq!(
            bookmarks(c).await,
            vec![(r.clone(), "Planning".into(), "true".into())]
        );
        // The XEP-0048 node says the same.
        assert_eq!(legacy_bookmarks(c).await, vec![r.clone()]);
    }

    // A client's own bookmark (the XEP-0402 way) stays beside the server's.
    let other = room("elsewhere");
    let res = alice
        .publish(
            BOOKMARKS,
            &other,
            &format!("<conference xmlns='{BOOKMARKS}' autojoin='false' name='Elsewhere'/>"),
            &[
                ("pubsub#persist_items", "true"),
                ("pubsub#max_items", "max"),
                ("pubsub#send_last_published_item", "never"),
                ("pubsub#access_model", "whitelist"),
            ],
        )
        .await;
    assert_eq!(res.attr("type"), Some("result"), "{}", String::from(&res));
    assert_eq!(bookmarks(&mut alice).await.len(), 2);
    assert_eq!(legacy_bookmarks(&mut alice).await, {
        let mut v = vec![r.clone(), other.clone()];
        v.sort();
        v
    });

    // bob leaves: his bookmark is retracted and the client told; alice's
    // stay.
    let res = admin(
        &mut bob,
        &r,
        "<item affiliation='none' jid='bob@localhost'/>",
    )
    .await;
    assert_eq!(res.attr("type"), Some("result"), "{}", String::from(&res));
    bob.expect_where(|e| bookmark_retracted(e, &r)).await;
    assert!(bookmarks(&mut bob).await.is_empty());
    assert!(legacy_bookmarks(&mut bob).await.is_empty());
    // Removed by another member: the same.
    // carol's client follows the XEP-0048 node only: it hears of the
    // bookmark there.
    let mut carol = s.login("carol", "pw", "r").await;
    carol
        .caps_presence("carol-bm", &["storage:bookmarks"])
        .await;
    admin(
        &mut alice,
        &r,
        "<item affiliation='member' jid='carol@localhost'/>",
    )
    .await;
    let n = carol
        .expect_where(pep_event("carol@localhost", "storage:bookmarks"))
        .await;
    let conf = event_items(&n)
        .children()
        .next()
        .and_then(|i| i.get_child("storage", "storage:bookmarks"))
        .and_then(|st| st.children().next())
        .and_then(|c| c.attr("jid").map(String::from));
    assert_eq!(conf.as_deref(), Some(r.as_str()), "{}", String::from(&n));
    assert_eq!(bookmarks(&mut carol).await.len(), 1);
    admin(
        &mut alice,
        &r,
        "<item affiliation='none' jid='carol@localhost'/>",
    )
    .await;
    assert!(bookmarks(&mut carol).await.is_empty());
    // An old client writing storage:bookmarks changes the native node too.
    let res = carol
        .publish(
            "storage:bookmarks",
            "current",
            &format!(
                "<storage xmlns='storage:bookmarks'><conference jid='{other}' autojoin='true' name='Old'/></storage>"
            ),
            &[],
        )
        .await;
    assert_eq!(res.attr("type"), Some("result"), "{}", String::from(&res));
    assert_eq!(
        bookmarks(&mut carol).await,
        vec![(other.clone(), "Old".into(), "true".into())]
    );

    // A restart keeps them.
    drop((alice, bob, carol));
    s.restart().await;
    let mut alice = s.online("alice", "pw", "r").await;
    let mut bm = bookmarks(&mut alice).await;
    bm.retain(|(j, _, _)| *j == r);
    assert_eq!(bm, vec![(r.clone(), "Planning".into(), "true".into())]);
    // The last member leaving destroys the room and its bookmark.
    let res = admin(
        &mut alice,
        &r,
        "<item affiliation='none' jid='alice@localhost'/>",
    )
    .await;
    assert_eq!(res.attr("type"), Some("result"), "{}", String::from(&res));
    let left: Vec<String> = bookmarks(&mut alice)
        .await
        .into_iter()
        .map(|b| b.0)
        .collect();
    assert_eq!(left, vec![other]);
}

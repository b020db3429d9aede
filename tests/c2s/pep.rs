//! Personal eventing (XEP-0163, xeps/xep-0163.md): publishing, access
//! models, +notify filtering by entity capabilities, the last item at
//! login, publish options, node configuration, quotas, restarts.

use std::time::Duration;

use minidom::Element;

use crate::common::*;

const NICK: &str = "http://jabber.org/protocol/nick";
const AVATAR_META: &str = "urn:xmpp:avatar:metadata";
const OMEMO_DEVICES: &str = "eu.siacs.conversations.axolotl.devicelist";
const OWNER_NS: &str = "http://jabber.org/protocol/pubsub#owner";
const ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";

fn nick(n: &str) -> String {
    format!("<nick xmlns='{NICK}'>{n}</nick>")
}

fn app_error(e: &Element) -> Option<String> {
    e.get_child("error", CLIENT)?
        .children()
        .find(|c| c.ns() == ERRORS)
        .map(|c| c.name().to_string())
}

fn first_payload_text(r: &Element) -> String {
    r.get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("items", PUBSUB))
        .and_then(|i| i.children().next())
        .and_then(|it| it.children().next())
        .map(|p| p.text())
        .unwrap_or_default()
}

#[tokio::test]
async fn notifications_follow_caps_and_access_and_the_last_item_comes_at_login() {
    let s = TestServer::start().await;
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, "pw").await;
    }
    let mut alice = s.login("alice", "pw", "a").await;
    alice.caps_presence("alice-client", &[NICK]).await;
    let mut bob = s.login("bob", "pw", "b").await;
    bob.caps_presence("bob-client", &[NICK, AVATAR_META]).await;
    subscribe(&mut bob, &mut alice, "bob@localhost", "alice@localhost").await;
    // carol wants nick notifications but is not subscribed to alice.
    let mut carol = s.login("carol", "pw", "c").await;
    carol.caps_presence("carol-client", &[NICK]).await;

    let r = alice.publish(NICK, "current", &nick("Al"), &[]).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
    let published = r
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("publish", PUBSUB))
        .and_then(|p| p.get_child("item", PUBSUB))
        .and_then(|i| i.attr("id"));
    assert_eq!(published, Some("current"));
    // bob (subscribed, +notify) and alice's own resource hear of it.
    let n = bob.expect_where(pep_event("alice@localhost", NICK)).await;
    assert_eq!(n.attr("type"), Some("headline"));
    assert_eq!(
        n.attr("to"),
        Some("bob@localhost/b"),
        "notifications go to the full JID"
    );
    let item = event_items(&n).children().next().unwrap();
    assert_eq!(item.attr("id"), Some("current"));
    assert_eq!(item.children().next().unwrap().text(), "Al");
    alice.expect_where(pep_event("alice@localhost", NICK)).await;
    carol
        .expect_none_within(
            Duration::from_millis(300),
            pep_event("alice@localhost", NICK),
        )
        .await;

    // A node bob does not +notify: nothing comes, but he may read it.
    let r = alice
        .publish(
            OMEMO_DEVICES,
            "current",
            "<list xmlns='eu.siacs.conversations.axolotl'><device id='1'/></list>",
            &[("pubsub#access_model", "open")],
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
    bob.expect_none_within(
        Duration::from_millis(300),
        pep_event("alice@localhost", OMEMO_DEVICES),
    )
    .await;
    let r = carol
        .pep_items(Some("alice@localhost"), OMEMO_DEVICES)
        .await;
    assert_eq!(item_ids(&r), ["current"], "an open node is for anyone");

    // Access models: presence refuses carol, whitelist refuses bob.
    let r = carol.pep_items(Some("alice@localhost"), NICK).await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-authorized"));
    assert_eq!(
        app_error(&r).as_deref(),
        Some("presence-subscription-required")
    );
    let r = bob.pep_items(Some("alice@localhost"), NICK).await;
    assert_eq!(first_payload_text(&r), "Al");
    let r = alice
        .publish(
            "urn:example:private",
            "1",
            "<secret xmlns='urn:example'/>",
            &[("pubsub#access_model", "whitelist")],
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = bob
        .pep_items(Some("alice@localhost"), "urn:example:private")
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-allowed"));
    assert_eq!(app_error(&r).as_deref(), Some("closed-node"));
    // Only the owner publishes.
    let r = bob
        .iq(
            "set",
            Some("alice@localhost"),
            &format!(
                "<pubsub xmlns='{PUBSUB}'><publish node='{NICK}'><item>{}</item></publish></pubsub>",
                nick("Mallory")
            ),
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));

    // bob logs in again: the last nick comes only to a resource that
    // asks for it in its capabilities, with a delay.
    bob.close().await;
    let mut bob = s.login("bob", "pw", "b2").await;
    let ver_presence = "<presence/>";
    bob.send_raw(ver_presence).await;
    bob.expect_where(|e| e.name() == "presence" && e.attr("from") == Some("bob@localhost/b2"))
        .await;
    bob.expect_none_within(
        Duration::from_millis(300),
        pep_event("alice@localhost", NICK),
    )
    .await;
    // Without caps, nothing; with them, the last item.
    bob.close().await;
    let mut bob = s.login("bob", "pw", "b3").await;
    bob.caps_presence("bob-client-2", &[NICK]).await;
    let n = bob.expect_where(pep_event("alice@localhost", NICK)).await;
    assert!(n.has_child("delay", "urn:xmpp:delay"));
    assert_eq!(
        event_items(&n)
            .children()
            .next()
            .and_then(|i| i.children().next())
            .map(|p| p.text())
            .as_deref(),
        Some("Al")
    );
}

#[tokio::test]
async fn items_options_configuration_retract_delete_and_restart() {
    let mut s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut alice = s.login("alice", "pw", "a").await;
    alice
        .caps_presence("alice-items", &["urn:example:notes"])
        .await;
    let mut bob = s.login("bob", "pw", "b").await;
    bob.caps_presence("bob-items", &["urn:example:notes"]).await;
    subscribe(&mut bob, &mut alice, "bob@localhost", "alice@localhost").await;

    // A node created by a publish with options keeps 2 items.
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        let r = alice
            .publish(
                "urn:example:notes",
                &format!("n{i}"),
                &format!("<note xmlns='urn:example'>{text}</note>"),
                &[("pubsub#max_items", "2")],
            )
            .await;
        assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
        bob.expect_where(pep_event("alice@localhost", "urn:example:notes"))
            .await;
    }
    let r = bob
        .pep_items(Some("alice@localhost"), "urn:example:notes")
        .await;
    assert_eq!(item_ids(&r), ["n2", "n1"], "the newest two, newest first");
    // Options the node does not meet.
    let r = alice
        .publish(
            "urn:example:notes",
            "n9",
            "<note xmlns='urn:example'>x</note>",
            &[("pubsub#access_model", "whitelist")],
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("conflict"));
    assert_eq!(app_error(&r).as_deref(), Some("precondition-not-met"));
    // The owner's configuration form, and a change through it.
    let r = alice
        .iq(
            "get",
            None,
            &format!("<pubsub xmlns='{OWNER_NS}'><configure node='urn:example:notes'/></pubsub>"),
        )
        .await;
    let form = String::from(&r);
    assert!(form.contains("pubsub#max_items"), "{form}");
    assert!(form.contains("<value>2</value>"), "{form}");
    let r = alice
        .iq(
            "set",
            None,
            &format!(
                "<pubsub xmlns='{OWNER_NS}'><configure node='urn:example:notes'>\
                 <x xmlns='jabber:x:data' type='submit'>\
                 <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#node_config</value></field>\
                 <field var='pubsub#max_items'><value>1</value></field></x></configure></pubsub>"
            ),
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
    let r = alice.pep_items(None, "urn:example:notes").await;
    assert_eq!(item_ids(&r), ["n2"]);
    let r = alice
        .iq(
            "set",
            None,
            &format!(
                "<pubsub xmlns='{OWNER_NS}'><configure node='urn:example:notes'>\
                 <x xmlns='jabber:x:data' type='submit'>\
                 <field var='pubsub#access_model'><value>authorize</value></field></x></configure></pubsub>"
            ),
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-acceptable"));

    // Service discovery: the account is a PEP service with the node.
    let r = bob
        .iq(
            "get",
            Some("alice@localhost"),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    let info = String::from(&r);
    assert!(info.contains("category='pubsub' type='pep'"), "{info}");
    assert!(
        info.contains("http://jabber.org/protocol/pubsub#publish-options"),
        "{info}"
    );
    let r = bob
        .iq(
            "get",
            Some("alice@localhost"),
            "<query xmlns='http://jabber.org/protocol/disco#items'/>",
        )
        .await;
    assert!(String::from(&r).contains("urn:example:notes"));

    // Restart: the item and the node's configuration are kept.
    drop(alice);
    drop(bob);
    s.restart().await;
    let mut alice = s.login("alice", "pw", "a").await;
    alice
        .caps_presence("alice-items-2", &["urn:example:notes"])
        .await;
    let mut bob = s.login("bob", "pw", "b").await;
    bob.caps_presence("bob-items-2", &["urn:example:notes"])
        .await;
    let r = bob
        .pep_items(Some("alice@localhost"), "urn:example:notes")
        .await;
    assert_eq!(item_ids(&r), ["n2"], "{}", String::from(&r));
    // bob's login brought him the last item too.
    bob.expect_where(pep_event("alice@localhost", "urn:example:notes"))
        .await;

    // Retract (notified), then delete (notified).
    let r = alice
        .iq(
            "set",
            None,
            &format!(
                "<pubsub xmlns='{PUBSUB}'><retract node='urn:example:notes' notify='true'>\
                 <item id='n2'/></retract></pubsub>"
            ),
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", String::from(&r));
    let n = bob
        .expect_where(pep_event("alice@localhost", "urn:example:notes"))
        .await;
    assert_eq!(
        event_items(&n)
            .get_child("retract", PUBSUB_EVENT)
            .and_then(|r| r.attr("id")),
        Some("n2")
    );
    let r = alice
        .iq(
            "set",
            None,
            &format!(
                "<pubsub xmlns='{PUBSUB}'><retract node='urn:example:notes'><item id='n2'/></retract></pubsub>"
            ),
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("item-not-found"));
    let r = alice
        .iq(
            "set",
            None,
            &format!("<pubsub xmlns='{OWNER_NS}'><delete node='urn:example:notes'/></pubsub>"),
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    bob.expect_where(|e| {
        e.get_child("event", PUBSUB_EVENT)
            .and_then(|ev| ev.get_child("delete", PUBSUB_EVENT))
            .is_some()
    })
    .await;
    let r = bob
        .pep_items(Some("alice@localhost"), "urn:example:notes")
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("item-not-found"));
}

#[tokio::test]
async fn bad_requests_and_the_quota() {
    let s = TestServer::start_with(|c| c.limits.max_pep_bytes = 2000).await;
    s.add_user("alice", "pw").await;
    let mut alice = s.online("alice", "pw", "a").await;
    // No item, no payload, two items, no node name.
    for (body, app) in [
        (format!("<publish node='{NICK}'/>"), "item-required"),
        (
            format!("<publish node='{NICK}'><item id='x'/></publish>"),
            "payload-required",
        ),
        (
            format!(
                "<publish node='{NICK}'><item id='x'>{}</item><item id='y'>{}</item></publish>",
                nick("a"),
                nick("b")
            ),
            "item-required",
        ),
    ] {
        let r = alice
            .iq(
                "set",
                None,
                &format!("<pubsub xmlns='{PUBSUB}'>{body}</pubsub>"),
            )
            .await;
        assert_eq!(
            error_condition(&r).as_deref(),
            Some("bad-request"),
            "{body}"
        );
        assert_eq!(app_error(&r).as_deref(), Some(app), "{body}");
    }
    let r = alice
        .iq(
            "set",
            None,
            &format!("<pubsub xmlns='{PUBSUB}'><create/></pubsub>"),
        )
        .await;
    assert_eq!(app_error(&r).as_deref(), Some("nodeid-required"));
    let r = alice
        .iq(
            "get",
            None,
            &format!("<pubsub xmlns='{PUBSUB}'><items node='nothing-here'/></pubsub>"),
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("item-not-found"));
    let r = alice
        .iq(
            "set",
            None,
            &format!("<pubsub xmlns='{PUBSUB}'><subscribe node='{NICK}' jid='alice@localhost'/></pubsub>"),
        )
        .await;
    assert_eq!(
        error_condition(&r).as_deref(),
        Some("feature-not-implemented")
    );
    // The quota counts every node of the account.
    let big = "x".repeat(1500);
    let r = alice
        .publish(
            "urn:example:a",
            "1",
            &format!("<d xmlns='urn:example'>{big}</d>"),
            &[],
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = alice
        .publish(
            "urn:example:b",
            "1",
            &format!("<d xmlns='urn:example'>{big}</d>"),
            &[],
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("resource-constraint"));
    // Replacing the item in place fits.
    let r = alice
        .publish(
            "urn:example:a",
            "1",
            &format!("<d xmlns='urn:example'>{big}</d>"),
            &[],
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    // The session still works.
    let r = alice.pep_items(None, "urn:example:a").await;
    assert_eq!(item_ids(&r), ["1"]);
}

//! Server IQs: disco, ping, version, time, vcard-temp, private storage, and
//! the answer to namespaces nobody handles.

use crate::common::*;

const PW: &str = "pw";

async fn alice() -> (TestServer, Client) {
    let s = TestServer::start().await;
    s.add_user("alice", PW).await;
    s.add_user("bob", PW).await;
    let c = s.online("alice", PW, "a").await;
    (s, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_namespace_gets_service_unavailable() {
    let (_s, mut a) = alice().await;
    for to in [Some(DOMAIN), None, Some("bob@localhost")] {
        let r = a
            .iq("get", to, "<query xmlns='urn:example:nothing'/>")
            .await;
        assert_eq!(r.attr("type"), Some("error"), "{to:?}");
        assert_eq!(
            error_condition(&r).as_deref(),
            Some("service-unavailable"),
            "{to:?}"
        );
    }
    // An IQ get with no child, or two, is a bad request; never unanswered.
    let r = a.iq("get", Some(DOMAIN), "").await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disco_info_and_items() {
    let (_s, mut a) = alice().await;
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
    let id = q
        .get_child("identity", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert_eq!(id.attr("category"), Some("server"));
    assert_eq!(id.attr("type"), Some("im"));
    let features: Vec<&str> = q
        .children()
        .filter(|c| c.name() == "feature")
        .filter_map(|c| c.attr("var"))
        .collect();
    for f in [
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/disco#items",
        "urn:xmpp:ping",
        "jabber:iq:version",
        "urn:xmpp:time",
        "vcard-temp",
        "jabber:iq:private",
        "urn:xmpp:blocking",
        "msgoffline",
    ] {
        assert!(features.contains(&f), "{f} missing from {features:?}");
    }
    let r = a
        .iq(
            "get",
            Some(DOMAIN),
            "<query xmlns='http://jabber.org/protocol/disco#items'/>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    // The account's own disco#info.
    let r = a
        .iq(
            "get",
            Some("alice@localhost"),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    let q = r
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    let id = q
        .get_child("identity", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert_eq!(id.attr("category"), Some("account"));
    assert_eq!(r.attr("from"), Some("alice@localhost"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_version_time() {
    let (_s, mut a) = alice().await;
    let r = a
        .iq("get", Some(DOMAIN), "<ping xmlns='urn:xmpp:ping'/>")
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    assert_eq!(r.attr("from"), Some(DOMAIN));
    let r = a
        .iq("get", Some(DOMAIN), "<query xmlns='jabber:iq:version'/>")
        .await;
    let q = r.get_child("query", "jabber:iq:version").unwrap();
    assert_eq!(
        q.get_child("name", "jabber:iq:version").unwrap().text(),
        "Confab"
    );
    assert!(!q
        .get_child("version", "jabber:iq:version")
        .unwrap()
        .text()
        .is_empty());
    let r = a
        .iq("get", Some(DOMAIN), "<time xmlns='urn:xmpp:time'/>")
        .await;
    let t = r.get_child("time", "urn:xmpp:time").unwrap();
    let utc = t.get_child("utc", "urn:xmpp:time").unwrap().text();
    assert!(utc.ends_with('Z') && utc.contains('T'), "{utc}");
    // A set of a get-only namespace is refused, not ignored.
    let r = a
        .iq("set", Some(DOMAIN), "<query xmlns='jabber:iq:version'/>")
        .await;
    assert_eq!(r.attr("type"), Some("error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcard_set_get_and_others_cannot_write() {
    let (s, mut a) = alice().await;
    let r = a.iq("get", None, "<vCard xmlns='vcard-temp'/>").await;
    assert!(r.get_child("vCard", "vcard-temp").is_some(), "empty vCard");
    let r = a
        .iq(
            "set",
            None,
            "<vCard xmlns='vcard-temp'><FN>Alice Liddell</FN></vCard>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let mut b = s.online("bob", PW, "b").await;
    let r = b
        .iq(
            "get",
            Some("alice@localhost"),
            "<vCard xmlns='vcard-temp'/>",
        )
        .await;
    let v = r.get_child("vCard", "vcard-temp").unwrap();
    assert_eq!(
        v.get_child("FN", "vcard-temp").unwrap().text(),
        "Alice Liddell"
    );
    let r = b
        .iq(
            "set",
            Some("alice@localhost"),
            "<vCard xmlns='vcard-temp'><FN>x</FN></vCard>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_storage() {
    let (_s, mut a) = alice().await;
    let r = a
        .iq(
            "set",
            None,
            "<query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'><color>blue</color></prefs></query>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = a
        .iq(
            "get",
            None,
            "<query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'/></query>",
        )
        .await;
    let p = r
        .get_child("query", "jabber:iq:private")
        .unwrap()
        .get_child("prefs", "urn:example:prefs")
        .unwrap();
    assert_eq!(
        p.get_child("color", "urn:example:prefs").unwrap().text(),
        "blue"
    );
    // Reserved namespaces are refused.
    let r = a
        .iq(
            "set",
            None,
            "<query xmlns='jabber:iq:private'><x xmlns='jabber:iq:roster'/></query>",
        )
        .await;
    assert_eq!(error_condition(&r).as_deref(), Some("not-acceptable"));
}

//! What is stored survives a restart: accounts, rosters, offline messages.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_accounts_rosters_and_offline_messages() {
    let mut s = TestServer::start().await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut a = s.online("alice", "pw", "a").await;
    let r = a
        .iq(
            "set",
            None,
            "<query xmlns='jabber:iq:roster'><item jid='bob@localhost' name='Bob'><group>Work</group></item></query>",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    a.send_raw("<message to='bob@localhost' type='chat' id='kept'><body>survives restarts</body></message>")
        .await;
    a.iq("get", Some(DOMAIN), "<ping xmlns='urn:xmpp:ping'/>")
        .await;

    s.restart().await;
    assert_eq!(a.stream_error().await.as_deref(), Some("system-shutdown"));

    let mut a = s.login("alice", "pw", "a").await;
    let r = a.iq("get", None, "<query xmlns='jabber:iq:roster'/>").await;
    let item = r
        .get_child("query", "jabber:iq:roster")
        .unwrap()
        .get_child("item", "jabber:iq:roster")
        .expect("roster item kept");
    assert_eq!(item.attr("jid"), Some("bob@localhost"));
    assert_eq!(item.attr("name"), Some("Bob"));
    let mut b = s.login("bob", "pw", "b").await;
    b.send_raw("<presence/>").await;
    let m = b.expect_where(|e| e.name() == "message").await;
    assert_eq!(body(&m).as_deref(), Some("survives restarts"));
}

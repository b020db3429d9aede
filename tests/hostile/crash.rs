//! Crash loop (XEP-0198 + the archive): what the server acknowledged
//! survives SIGKILL. Each round a client sends messages with stream
//! management to an offline user, waits for `<a h=N/>`, and the server is
//! killed at once and restarted on the same data directory. At the end
//! every message is in the recipient's offline queue and archive, once,
//! and counted once in the recipient's inbox.

use std::collections::HashMap;
use std::time::Duration;

use super::*;

const ROUNDS: usize = 20;
const PER_ROUND: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill() {
    let _serial = SERIAL.lock().await;
    init_logging();
    let mut s = ProcServer::start();
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    for round in 0..ROUNDS {
        let mut a = s.login("alice", "a").await;
        let en = a.enable_sm(false).await;
        assert_eq!(en.name(), "enabled");
        for i in 0..PER_ROUND {
            a.send_raw(&format!(
                "<message to='bob@localhost' type='chat' id='r{round}m{i}'><body>r{round}m{i}</body></message>"
            ))
            .await;
        }
        a.send_raw("<r xmlns='urn:xmpp:sm:3'/>").await;
        let ack = a.expect_where(|e| e.is("a", SM)).await;
        assert_eq!(ack.attr("h"), Some(PER_ROUND.to_string().as_str()));
        // Killed the moment the acknowledgement arrived.
        let dir = s.kill_keep_dir();
        s = ProcServer::start_opts("", "", Some(dir), None);
    }
    let mut b = s.login("bob", "b").await;
    b.send_raw("<presence/>").await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let want = ROUNDS * PER_ROUND;
    let mut n = 0;
    while n < want {
        let Some(e) = b.element_within(Duration::from_secs(10)).await else {
            break;
        };
        if e.name() == "message" {
            if let Some(t) = body(&e) {
                *seen.entry(t).or_default() += 1;
                n += 1;
            }
        }
    }
    // Anything more would be a duplicate.
    for e in b.drain_within(Duration::from_millis(500)).await {
        if let Some(t) = body(&e).filter(|_| e.name() == "message") {
            *seen.entry(t).or_default() += 1;
        }
    }
    let lost = (0..ROUNDS)
        .flat_map(|r| (0..PER_ROUND).map(move |i| format!("r{r}m{i}")))
        .filter(|k| !seen.contains_key(k))
        .count();
    let twice = seen.values().filter(|c| **c > 1).count();
    // The archive: every message once, in both archives.
    let mut archived = 0;
    let mut after = String::new();
    loop {
        let set = if after.is_empty() {
            format!("<set xmlns='{RSM}'><max>250</max></set>")
        } else {
            format!("<set xmlns='{RSM}'><max>250</max><after>{after}</after></set>")
        };
        let p = b.mam(&set).await;
        archived += p.results.len();
        if p.complete() || p.results.is_empty() {
            break;
        }
        after = p.rsm("last").unwrap();
    }
    // The journal: every acknowledged message counted once as unread.
    b.send_raw("<iq type='get' id='ib'><inbox xmlns='urn:xmpp:inbox:1'/></iq>")
        .await;
    let entry = b
        .expect_where(|e| e.get_child("entry", "urn:xmpp:inbox:1").is_some())
        .await;
    let unread = entry
        .get_child("entry", "urn:xmpp:inbox:1")
        .and_then(|e| e.attr("unread"))
        .and_then(|u| u.parse::<usize>().ok());
    let mut a = s.login("alice", "final").await;
    let alice_count = a.mam("").await.count();
    eprintln!(
        "crash loop: {ROUNDS} rounds x {PER_ROUND} acknowledged messages: {} delivered offline, {lost} lost, {twice} twice; archived {archived} (bob), {alice_count} (alice)",
        seen.len()
    );
    assert_eq!(lost, 0, "acknowledged messages lost");
    assert_eq!(twice, 0, "messages delivered twice");
    assert_eq!(archived, want, "bob's archive");
    assert_eq!(alice_count, want, "alice's archive");
    assert_eq!(unread, Some(want), "bob's unread count for alice");
}

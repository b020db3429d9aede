//! The `inbox` scenario (Confab only): one user with many conversations
//! (1,000 by default: the user wrote to each of u1…uN once, and the first
//! 100 of them wrote back, so those entries have unread messages), then
//! XEP-0430 inbox queries over TLS, one at a time: the default query (no
//! RSM: the 100 most recent entries with their last messages), a page of
//! 20, and a search by name (`urn:confab:inbox:name`) that has to look at
//! every entry.

use std::time::{Duration, Instant};

use crate::client::{self, Mech, Session, Target};
use crate::mam::{ask, count, find, note_error, stats, QueryStats};
use crate::scenarios::{self, source};
use crate::targets::{self, PASSWORD};

/// Users who write back (their entries have something unread).
const ANSWERING: usize = 100;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct InboxResult {
    pub conversations: usize,
    pub unread_conversations: usize,
    /// Seconds to set the conversations up.
    pub populate_secs: f64,
    /// The default query (no RSM).
    pub default_query: QueryStats,
    /// Entries the default query returns.
    pub default_entries: usize,
    /// A page of 20.
    pub page_of_20: QueryStats,
    /// A name search over every entry.
    pub name_search: QueryStats,
    pub error: Option<String>,
}

/// Send inbox query number `n` (`inner`: the `<inbox/>`'s children) and
/// read its entries and its `<fin/>`: the entries and the time to the
/// fin, after checking `<fin total/>` says `total`.
async fn query(
    s: &mut Session,
    n: usize,
    inner: &str,
    total: usize,
) -> Result<(usize, Duration), String> {
    let id = format!("inbox-q{n}");
    let iq = format!(
        "<iq type='get' id='{id}'><inbox xmlns='urn:xmpp:inbox:1' queryid='qi{n}'>{inner}</inbox></iq>"
    );
    let (got, fin_at, took) = ask(s, &id, &iq, "inbox").await?;
    let fin = &got[fin_at..];
    let want = format!("total='{total}'");
    if find(fin, b"<fin").is_none() || find(fin, want.as_bytes()).is_none() {
        return Err(format!(
            "inbox query answered without <fin {want}/>: {}",
            String::from_utf8_lossy(&fin[..fin.len().min(400)])
        ));
    }
    Ok((count(&got[..fin_at], b"<entry "), took))
}

async fn run(
    s: &mut Session,
    queries: usize,
    first: usize,
    inner: &str,
    total: usize,
    entries: usize,
) -> QueryStats {
    let mut st = QueryStats::default();
    let mut lat = Vec::with_capacity(queries);
    for k in 0..queries {
        st.queries += 1;
        match query(s, first + k, inner, total).await {
            Ok((n, took)) => {
                lat.push(took);
                st.messages_returned += n as u64;
                if n < entries {
                    st.short += 1;
                }
            }
            Err(e) => note_error(&mut st, e),
        }
    }
    stats(lat, st)
}

/// Write `msgs` and wait until the server answered a ping sent after
/// them (so it has handled them).
async fn send_all(s: &mut Session, msgs: &[String], ping: &str) -> Result<(), String> {
    for chunk in msgs.chunks(100) {
        s.write(&chunk.concat()).await?;
    }
    s.write(&format!(
        "<iq type='get' id='{ping}'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await?;
    tokio::time::timeout(
        Duration::from_secs(60),
        s.read_until("ping", |b| client::iq_end(b, ping)),
    )
    .await
    .map_err(|_| "the server did not answer a ping within 60 s".to_string())??;
    Ok(())
}

pub async fn inbox(t: &Target, conversations: usize, queries: usize, mech: Mech) -> InboxResult {
    let mut r = InboxResult {
        conversations,
        unread_conversations: ANSWERING.min(conversations),
        ..Default::default()
    };
    let t0 = Instant::now();
    let me = match client::login(t, source(0), &targets::user(0), PASSWORD, mech, true, false).await
    {
        Ok(s) => s,
        Err(e) => {
            r.error = Some(format!("login: {e}"));
            return r;
        }
    };
    let mut me = me;
    let domain = &t.domain;
    let msgs: Vec<String> = (1..=conversations)
        .map(|i| {
            format!(
                "<message to='{}@{domain}' type='chat' id='m{i}'><body>hello {i}, a message for the inbox</body></message>",
                targets::user(i)
            )
        })
        .collect();
    if let Err(e) = send_all(&mut me, &msgs, "pop").await {
        r.error = Some(e);
        return r;
    }
    // Some write back: their entries have one unread message.
    let logins = scenarios::login_many(
        t,
        1..1 + r.unread_conversations,
        mech,
        64,
        false,
        false,
        |s| s,
    )
    .await;
    for (i, l) in logins.into_iter().enumerate() {
        let mut s = match l {
            Ok(s) => s,
            Err(e) => {
                r.error = Some(format!("login of {}: {e}", targets::user(i + 1)));
                return r;
            }
        };
        let back = format!(
            "<message to='{}@{domain}' type='chat' id='b{i}'><body>and back</body></message>",
            targets::user(0)
        );
        if let Err(e) = send_all(&mut s, &[back], "back").await {
            r.error = Some(e);
            return r;
        }
    }
    r.populate_secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "   inbox: {conversations} conversations ({} unread) in {:.1} s",
        r.unread_conversations, r.populate_secs
    );
    r.default_entries = conversations.min(100);
    r.default_query = run(&mut me, queries, 0, "", conversations, r.default_entries).await;
    r.page_of_20 = run(
        &mut me,
        queries,
        queries,
        "<set xmlns='http://jabber.org/protocol/rsm'><max>20</max></set>",
        conversations,
        conversations.min(20),
    )
    .await;
    // u99, u990…u999 with 1,000 conversations.
    let needle = "u99";
    let hits = (1..=conversations)
        .filter(|i| targets::user(*i).contains(needle))
        .count();
    let form = format!(
        "<x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:inbox:1</value></field>\
         <field var='urn:confab:inbox:name'><value>{needle}</value></field></x>"
    );
    r.name_search = run(&mut me, queries, 2 * queries, &form, hits, hits.min(100)).await;
    for q in [&r.default_query, &r.page_of_20, &r.name_search] {
        if let Some(e) = &q.first_error {
            r.error.get_or_insert_with(|| e.clone());
        }
    }
    r
}

pub fn print(name: &str, r: &InboxResult) {
    println!();
    println!(
        "inbox queries, {name} ({} conversations, {} with unread messages):",
        r.conversations, r.unread_conversations
    );
    println!(
        "| {:<44} | {:>7} | {:>8} | {:>8} | {:>8} | {:>6} | {:>5} |",
        "query", "queries", "p50 ms", "p99 ms", "max ms", "errors", "short"
    );
    let default = format!("default (no RSM: {} entries)", r.default_entries);
    for (label, q) in [
        (default.as_str(), &r.default_query),
        ("page of 20", &r.page_of_20),
        ("name search over every entry", &r.name_search),
    ] {
        println!(
            "| {:<44} | {:>7} | {:>8.2} | {:>8.2} | {:>8.2} | {:>6} | {:>5} |",
            label, q.queries, q.p50_ms, q.p99_ms, q.max_ms, q.errors, q.short
        );
    }
    println!("(target: p99 < 5 ms at 1,000 conversations)");
    if let Some(e) = &r.error {
        println!("ERROR: {e}");
    }
}

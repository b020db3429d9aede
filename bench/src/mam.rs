//! The `mam` scenario (Confab only): the chat measurement on an empty
//! archive; then a large archive (1,000,000 messages by default, sent by
//! 500 pairs of online users as fast as the server takes them); then real
//! XEP-0313 queries over TLS against it ("the last 50 messages with X",
//! and full page walks through one user's archive, 50 at a time); then
//! the chat measurement again, on the full archive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::client::{self, Mech, Session, Target};
use crate::scenarios::{self, ChatResult};
use crate::targets::{self, Running};

/// Messages one sender may have on their way (sent, not yet received by
/// its partner): enough to keep the server saturated, little enough that
/// its queues stay short.
const WINDOW: usize = 8;
/// Page size of the queries.
const PAGE: usize = 50;
/// Sessions the queries are made from (users at the top of the range,
/// outside the chat scenario's, so their archives are exactly what the
/// population put there).
const QUERY_SESSIONS: usize = 20;
/// Longest wait for one query's answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Params<'a> {
    pub users: usize,
    pub messages: u64,
    pub queries: usize,
    pub walks: usize,
    pub chat_users: usize,
    pub rates: &'a [u64],
    pub step_secs: u64,
    pub mech: Mech,
    pub concurrency: usize,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Populated {
    pub users: usize,
    pub sent: u64,
    pub delivered: u64,
    pub bounced: u64,
    pub seconds: f64,
    pub per_sec: f64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct QueryStats {
    pub queries: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    /// Answers with fewer messages than the archive holds for the query.
    pub short: usize,
    pub messages_returned: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MamResult {
    pub populated: Populated,
    /// Messages in the archive when it was queried (the first chat
    /// measurement's and the population's; each is archived for both
    /// parties).
    pub archived_messages: u64,
    pub storage_bytes: u64,
    pub storage_bytes_per_message: f64,
    /// Archive of each querying user, in messages.
    pub per_user_archive: u64,
    /// "The last 50 messages with X".
    pub last_page: QueryStats,
    /// Pages of 50 walking forward through whole archives.
    pub page_walk: QueryStats,
    pub walks: usize,
    pub chat_empty: Option<ChatResult>,
    pub chat_full: Option<ChatResult>,
    /// Max sustainable chat rate on the full archive / on the empty one.
    pub chat_ratio: Option<f64>,
    pub error: Option<String>,
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Messages user `i` sends in the population (the remainder of an uneven
/// division goes to the first users).
fn sends(i: usize, users: usize, messages: u64) -> u64 {
    messages / users as u64 + u64::from((i as u64) < messages % users as u64)
}

/// Scan complete population bodies "p:FROM:SEQ" out of `buf`, calling
/// `f(from)`; returns the bytes consumed.
fn scan_bodies(buf: &[u8], mut f: impl FnMut(usize)) -> usize {
    let mut at = 0;
    let mut consumed = 0;
    while let Some(i) = find(&buf[at..], b"<body>p:") {
        let start = at + i + 8;
        let Some(len) = find(&buf[start..], b"</body>") else {
            break;
        };
        let from = buf[start..start + len]
            .split(|&b| b == b':')
            .next()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse().ok());
        at = start + len + 7;
        consumed = at;
        if let Some(from) = from {
            f(from);
        }
    }
    if consumed == 0 && buf.len() > 65536 {
        return buf.len() - 1024;
    }
    consumed
}

/// Users 0..`users` log in and send `messages` in all to their partners
/// (u0 with u1, u2 with u3, …), each with at most WINDOW on their way.
async fn populate(t: &Target, p: &Params<'_>) -> Result<Populated, String> {
    let users = p.users & !1;
    let t0 = Instant::now();
    let logins = scenarios::login_many(t, 0..users, p.mech, p.concurrency, true, true, |s| s).await;
    let mut sessions = Vec::with_capacity(users);
    for (i, r) in logins.into_iter().enumerate() {
        sessions.push(r.map_err(|e| format!("login of {}: {e}", targets::user(i)))?);
    }
    eprintln!(
        "   {users} users logged in in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let windows: Arc<Vec<Semaphore>> =
        Arc::new((0..users).map(|_| Semaphore::new(WINDOW)).collect());
    let delivered = Arc::new(AtomicU64::new(0));
    let bounced = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::with_capacity(users);
    let mut readers = Vec::with_capacity(users);
    for (me, s) in sessions.into_iter().enumerate() {
        let (windows, delivered, bounced) = (windows.clone(), delivered.clone(), bounced.clone());
        let (wr, reader) = scenarios::split_session(s, move |buf| {
            scan_bodies(buf, |from| {
                if from == me {
                    // Our own message came back: a bounce.
                    bounced.fetch_add(1, Ordering::Relaxed);
                } else {
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(w) = windows.get(from) {
                    w.add_permits(1);
                }
            })
        });
        writers.push(wr);
        readers.push(reader);
    }
    let total: u64 = (0..users).map(|i| sends(i, users, p.messages)).sum();
    let sent = Arc::new(AtomicU64::new(0));
    let domain = t.domain.clone();
    let t0 = Instant::now();
    let mut senders = Vec::with_capacity(users);
    for (me, w) in writers.iter().enumerate() {
        let (w, windows, sent) = (w.clone(), windows.clone(), sent.clone());
        let to = format!("{}@{domain}", targets::user(me ^ 1));
        let n = sends(me, users, p.messages);
        senders.push(tokio::spawn(async move {
            for seq in 0..n {
                match windows[me].acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return,
                }
                let msg = format!(
                    "<message to='{to}' type='chat'><body>p:{me}:{seq} a message for the archive</body></message>"
                );
                if w.lock().await.write_all(msg.as_bytes()).await.is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Wait for everything to arrive; give up after 30 s without progress.
    let mut last = (0, Instant::now());
    let mut last_print = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let got = delivered.load(Ordering::Relaxed) + bounced.load(Ordering::Relaxed);
        if got >= total {
            break;
        }
        if got > last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(30) {
            for s in &senders {
                s.abort();
            }
            return Err(format!(
                "population stalled at {got} of {total} messages ({} sent)",
                sent.load(Ordering::Relaxed)
            ));
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            last_print = Instant::now();
            eprintln!(
                "   populated {got} of {total} ({:.0}/s)",
                got as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    for s in senders {
        let _ = s.await;
    }
    for w in &writers {
        let _ = w.lock().await.write_all(b"</stream:stream>").await;
    }
    drop(readers);
    let delivered = delivered.load(Ordering::Relaxed);
    Ok(Populated {
        users,
        sent: sent.load(Ordering::Relaxed),
        delivered,
        bounced: bounced.load(Ordering::Relaxed),
        seconds: secs,
        per_sec: delivered as f64 / secs,
    })
}

/// One MAM query: `<iq type='set'>` with a form (and `with`, if given)
/// and an RSM `<set>` holding `rsm`.
fn query_iq(id: &str, queryid: &str, with: Option<&str>, rsm: &str) -> String {
    let with = with
        .map(|w| format!("<field var='with'><value>{w}</value></field>"))
        .unwrap_or_default();
    format!(
        "<iq type='set' id='{id}'><query xmlns='urn:xmpp:mam:2' queryid='{queryid}'>\
         <x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>{with}</x>\
         <set xmlns='http://jabber.org/protocol/rsm'>{rsm}</set></query></iq>"
    )
}

/// Send the IQ `iq` (id `id`) and read everything up to its answer: the
/// bytes, where the answer starts in them, and the time it took. An error
/// answer is an error (`what`: the kind of query, for the message).
pub async fn ask(
    s: &mut Session,
    id: &str,
    iq: &str,
    what: &str,
) -> Result<(Vec<u8>, usize, Duration), String> {
    let t0 = Instant::now();
    s.write(iq).await?;
    let got = tokio::time::timeout(
        QUERY_TIMEOUT,
        s.read_until("query result", |b| client::iq_end(b, id)),
    )
    .await
    .map_err(|_| format!("no answer to a {what} query in {QUERY_TIMEOUT:?}"))??;
    let took = t0.elapsed();
    let fin_at = got
        .windows(3)
        .rposition(|w| w == b"<iq")
        .ok_or("an answer without an IQ")?;
    let fin = &got[fin_at..];
    if find(fin, b"type='error'").is_some() || find(fin, b"type=\"error\"").is_some() {
        return Err(format!(
            "{what} query refused: {}",
            String::from_utf8_lossy(&fin[..fin.len().min(400)])
        ));
    }
    Ok((got, fin_at, took))
}

struct Page {
    results: usize,
    last: Option<String>,
    complete: bool,
}

/// Send query number `n` and read its result messages and its `<fin/>`;
/// returns the page and the time from sending to the fin IQ.
async fn query(
    s: &mut Session,
    n: usize,
    with: Option<&str>,
    rsm: &str,
) -> Result<(Page, Duration), String> {
    // The IQ id must not occur inside queryid='…' of the results.
    let id = format!("mam{n}");
    let queryid = format!("q{n}");
    let (got, fin_at, took) = ask(s, &id, &query_iq(&id, &queryid, with, rsm), "MAM").await?;
    let fin = &got[fin_at..];
    if find(fin, b"<fin").is_none() {
        return Err(format!(
            "MAM query answered without <fin/>: {}",
            String::from_utf8_lossy(&fin[..fin.len().min(400)])
        ));
    }
    let head = &got[..fin_at];
    let results = count(head, format!("queryid='{queryid}'").as_bytes())
        + count(head, format!("queryid=\"{queryid}\"").as_bytes());
    let complete =
        find(fin, b"complete='true'").is_some() || find(fin, b"complete=\"true\"").is_some();
    let last = client::element_text(fin, "last")
        .map(|(t, _)| t)
        .filter(|t| !t.is_empty());
    Ok((
        Page {
            results,
            last,
            complete,
        },
        took,
    ))
}

pub fn stats(mut lat: Vec<Duration>, mut s: QueryStats) -> QueryStats {
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat[i.min(lat.len() - 1)].as_secs_f64() * 1000.0
    };
    s.p50_ms = pct(0.5);
    s.p99_ms = pct(0.99);
    s.max_ms = lat.last().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0);
    s
}

pub fn note_error(s: &mut QueryStats, e: String) {
    s.errors += 1;
    if s.first_error.is_none() {
        s.first_error = Some(e);
    }
}

/// "The last 50 messages with X", `n` times, one at a time, round-robin
/// over the sessions (each asking about its partner).
async fn last_pages(
    sessions: &mut [(usize, Session)],
    n: usize,
    expect: u64,
    domain: &str,
) -> QueryStats {
    let mut st = QueryStats::default();
    let mut lat = Vec::with_capacity(n);
    let want = expect.min(PAGE as u64) as usize;
    for k in 0..n {
        let (me, s) = &mut sessions[k % sessions.len()];
        let with = format!("{}@{domain}", targets::user(*me ^ 1));
        st.queries += 1;
        match query(s, k, Some(&with), &format!("<max>{PAGE}</max><before/>")).await {
            Ok((page, took)) => {
                lat.push(took);
                st.messages_returned += page.results as u64;
                if page.results < want {
                    st.short += 1;
                }
            }
            Err(e) => note_error(&mut st, e),
        }
    }
    stats(lat, st)
}

/// Walk forward through whole archives, a page of 50 at a time, `walks`
/// times (one session after another).
async fn page_walks(
    sessions: &mut [(usize, Session)],
    walks: usize,
    expect: u64,
    first_id: usize,
) -> QueryStats {
    let mut st = QueryStats::default();
    let mut lat = Vec::new();
    let mut n = first_id;
    let most_pages = expect as usize / PAGE + 10;
    for w in 0..walks {
        let (_, s) = &mut sessions[w % sessions.len()];
        let mut after: Option<String> = None;
        let mut walked = 0u64;
        for _ in 0..most_pages {
            let rsm = match &after {
                None => format!("<max>{PAGE}</max>"),
                Some(a) => format!("<max>{PAGE}</max><after>{a}</after>"),
            };
            n += 1;
            st.queries += 1;
            let page = match query(s, n, None, &rsm).await {
                Ok((page, took)) => {
                    lat.push(took);
                    page
                }
                Err(e) => {
                    note_error(&mut st, e);
                    break;
                }
            };
            walked += page.results as u64;
            st.messages_returned += page.results as u64;
            if page.complete || page.results == 0 {
                break;
            }
            if page.results < PAGE {
                st.short += 1;
            }
            match page.last {
                Some(l) if after.as_ref() != Some(&l) => after = Some(l),
                _ => {
                    note_error(&mut st, "a page without a new <last/>".into());
                    break;
                }
            }
        }
        if walked < expect {
            note_error(
                &mut st,
                format!("a walk returned {walked} of {expect} archived messages"),
            );
        }
    }
    stats(lat, st)
}

pub async fn mam(server: &Running, t: &Target, p: &Params<'_>) -> MamResult {
    let mut r = MamResult::default();
    let users = p.users & !1;
    if users < 2 || p.chat_users > users {
        r.error = Some(format!(
            "the mam scenario needs --mam-users ({}) even, at least 2 and at least --chat-users ({})",
            p.users, p.chat_users
        ));
        return r;
    }
    eprintln!("   mam: chat on an empty archive");
    let empty = scenarios::chat(
        server,
        t,
        p.chat_users,
        p.mech,
        p.concurrency,
        p.rates,
        p.step_secs,
    )
    .await;
    eprintln!(
        "   max sustainable on an empty archive: {}/s",
        empty.max_sustainable_per_sec
    );
    let chat_messages: u64 = empty.steps.iter().map(|s| s.delivered).sum();
    r.chat_empty = Some(empty);
    scenarios::wait_quiet(server).await;

    eprintln!(
        "   mam: archiving {} messages among {users} users",
        p.messages
    );
    match populate(t, p).await {
        Ok(pop) => {
            eprintln!(
                "   populated: {} messages in {:.1} s ({:.0}/s), {} bounced",
                pop.delivered, pop.seconds, pop.per_sec, pop.bounced
            );
            r.populated = pop;
        }
        Err(e) => {
            eprintln!("   {e}");
            r.error = Some(e);
            return r;
        }
    }
    r.archived_messages = chat_messages + r.populated.delivered;
    scenarios::wait_quiet(server).await;
    r.storage_bytes = targets::disk_bytes(&server.storage_dir());
    r.storage_bytes_per_message = r.storage_bytes as f64 / r.archived_messages.max(1) as f64;

    // Query sessions: the users at the top, outside the chat range.
    let q = QUERY_SESSIONS.min(users - p.chat_users).max(2) & !1;
    let range = users - q..users;
    let logins =
        scenarios::login_many(t, range.clone(), p.mech, p.concurrency, false, false, |s| s).await;
    let mut sessions = Vec::with_capacity(q);
    for (i, s) in range.zip(logins) {
        match s {
            Ok(s) => sessions.push((i, s)),
            Err(e) => {
                r.error = Some(format!("login of {}: {e}", targets::user(i)));
                return r;
            }
        }
    }
    // Every querying user's archive: what it and its partner sent.
    let (a, b) = (sessions[0].0, sessions[0].0 ^ 1);
    r.per_user_archive = sends(a, users, p.messages) + sends(b, users, p.messages);
    eprintln!(
        "   mam: {} queries for the last {PAGE} messages with a contact ({} in each archive)",
        p.queries, r.per_user_archive
    );
    r.last_page = last_pages(&mut sessions, p.queries, r.per_user_archive, &t.domain).await;
    eprintln!(
        "   last {PAGE}: p50 {:.2} ms p99 {:.2} ms max {:.2} ms ({} errors, {} short)",
        r.last_page.p50_ms,
        r.last_page.p99_ms,
        r.last_page.max_ms,
        r.last_page.errors,
        r.last_page.short
    );
    eprintln!("   mam: {} walks through a whole archive", p.walks);
    r.walks = p.walks;
    r.page_walk = page_walks(&mut sessions, p.walks, r.per_user_archive, p.queries).await;
    eprintln!(
        "   page walk: {} pages, p50 {:.2} ms p99 {:.2} ms max {:.2} ms ({} errors)",
        r.page_walk.queries,
        r.page_walk.p50_ms,
        r.page_walk.p99_ms,
        r.page_walk.max_ms,
        r.page_walk.errors
    );
    for e in [&r.last_page.first_error, &r.page_walk.first_error]
        .into_iter()
        .flatten()
    {
        eprintln!("   first error: {e}");
    }
    for (_, s) in &mut sessions {
        let _ = s.write("</stream:stream>").await;
    }
    drop(sessions);
    scenarios::wait_quiet(server).await;

    eprintln!(
        "   mam: chat on the full archive ({} messages)",
        r.archived_messages
    );
    let full = scenarios::chat(
        server,
        t,
        p.chat_users,
        p.mech,
        p.concurrency,
        p.rates,
        p.step_secs,
    )
    .await;
    let empty_rate = r
        .chat_empty
        .as_ref()
        .map(|c| c.max_sustainable_per_sec)
        .unwrap_or(0);
    if empty_rate > 0 {
        r.chat_ratio = Some(full.max_sustainable_per_sec as f64 / empty_rate as f64);
    }
    eprintln!(
        "   max sustainable on the full archive: {}/s (empty: {empty_rate}/s)",
        full.max_sustainable_per_sec
    );
    r.chat_full = Some(full);
    r
}

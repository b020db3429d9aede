//! confab-bench: Confab, Prosody and ejabberd measured side by side on this
//! machine, in one run, with the same features on.
//!
//! ```sh
//! cargo run --release -p confab-bench -- --target all --scenario all
//! ```
//!
//! Each target is started with a fresh data directory on its own loopback
//! address (Confab 127.0.0.10, Prosody 127.0.0.11, ejabberd 127.0.0.12),
//! gets its users, is measured, and is stopped by PID. The targets are
//! Confab, Confab with its archive off (`confab-nomam`, chat only),
//! Confab without its journal (`confab-noinbox`, chat only), Confab
//! without link references (`confab-nolinks`, chat only), Prosody and
//! ejabberd; the `mam` scenario (archive queries on a large archive) and
//! the `inbox` scenario (inbox queries at 1,000 conversations) run for
//! Confab only. Results are printed as one table and
//! written as JSON to bench/results/. `CONFAB_BENCH_KEEP=1` keeps the
//! work directory (data, logs) instead of removing it.

mod client;
mod inbox;
mod mam;
mod recognise;
mod room;
mod rooms;
mod s2s;
mod scenarios;
mod targets;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, ValueEnum};

use client::{KeyCache, Mech, Target};
use mam::MamResult;
use scenarios::{ChatResult, ConnectResult, Storage};
use targets::{Kind, Running};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Which {
    Confab,
    /// Confab with `[mam] enabled = false` (chat scenario only).
    ConfabNomam,
    /// Confab with `[inbox] enabled = false` (chat scenario only).
    ConfabNoinbox,
    /// Confab with `[links] enabled = false` (chat scenario only).
    ConfabNolinks,
    Prosody,
    Ejabberd,
    All,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Scenario {
    Connect,
    Chat,
    /// Archive queries on a large archive, and chat on it (Confab only).
    Mam,
    /// Inbox queries of a user with many conversations (Confab only).
    Inbox,
    /// One full room: every member sends, every message to every member.
    Room,
    /// Many rooms: memory per idle room, per membership, per occupant.
    Rooms,
    /// Messages both ways across one s2s link: Confab–Prosody,
    /// Confab–ejabberd, and Prosody–ejabberd beside them.
    S2s,
    /// The link recogniser alone, one core (no server).
    Links,
    All,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum MechArg {
    Scram,
    Plain,
}

#[derive(Parser, Debug)]
#[command(
    name = "confab-bench",
    about = "Side-by-side load benchmark: Confab, Prosody, ejabberd"
)]
struct Args {
    /// Which server(s) to measure, comma-separated ("all": the four).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    target: Vec<Which>,
    /// Which scenario(s) to run.
    #[arg(long, value_enum, default_value = "all")]
    scenario: Scenario,
    /// Connections held idle in the connect scenario.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Logins in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Online users in the chat scenario (in pairs).
    #[arg(long, default_value_t = 200)]
    chat_users: usize,
    /// Total message rates to step through, per second.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "50,100,200,500,1000,2000,5000,10000,20000,30000,40000,50000,60000,70000,80000,100000,120000,140000"
    )]
    rates: Vec<u64>,
    /// Seconds per rate step.
    #[arg(long, default_value_t = 5)]
    step_secs: u64,
    /// Messages archived before the queries of the mam scenario.
    #[arg(long, default_value_t = 1_000_000)]
    mam_messages: u64,
    /// Users (in pairs) the mam scenario's messages are spread over.
    #[arg(long, default_value_t = 1000)]
    mam_users: usize,
    /// "Last 50 messages with X" queries in the mam scenario.
    #[arg(long, default_value_t = 1000)]
    mam_queries: usize,
    /// Page walks through a whole archive in the mam scenario.
    #[arg(long, default_value_t = 10)]
    mam_walks: usize,
    /// Conversations of the user whose inbox the inbox scenario queries.
    #[arg(long, default_value_t = 1000)]
    inbox_conversations: usize,
    /// Members of the room in the room scenario.
    #[arg(long, default_value_t = 30)]
    room_members: usize,
    /// Message rates (all members together, per second) the room
    /// scenario steps through.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "30,100,300,1000,2000,3000,5000,7500,10000,15000,20000,30000"
    )]
    room_rates: Vec<u64>,
    /// Rooms made in the rooms scenario.
    #[arg(long, default_value_t = 1000)]
    rooms: usize,
    /// Accounts the rooms scenario's memberships are spread over.
    #[arg(long, default_value_t = 300)]
    rooms_users: usize,
    /// Rooms whose members all join in the rooms scenario.
    #[arg(long, default_value_t = 50)]
    rooms_active: usize,
    /// Users on each side of the s2s scenario.
    #[arg(long, default_value_t = 50)]
    s2s_users: usize,
    /// Message rates (both directions together, per second) the s2s
    /// scenario steps through.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100,200,500,1000,1500,2000,3000,4000,5000,7500,10000,15000,20000,30000,40000"
    )]
    s2s_rates: Vec<u64>,
    /// Queries of each kind in the inbox scenario.
    #[arg(long, default_value_t = 1000)]
    inbox_queries: usize,
    /// SASL mechanism for logins.
    #[arg(long, value_enum, default_value = "scram")]
    mech: MechArg,
    /// Where the JSON results go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    out: PathBuf,
}

#[derive(Debug, serde::Serialize)]
struct TargetResult {
    server: Kind,
    features: targets::Features,
    version: String,
    connect: Option<ConnectResult>,
    chat: Option<ChatResult>,
    mam: Option<MamResult>,
    inbox: Option<inbox::InboxResult>,
    room: Option<room::RoomResult>,
    rooms: Option<rooms::RoomsResult>,
    error: Option<String>,
}

fn version(kind: Kind) -> String {
    let cmd: &[&str] = match kind {
        Kind::Confab | Kind::ConfabNomam | Kind::ConfabNoinbox | Kind::ConfabNolinks => {
            return format!("{} {}", kind.name(), env!("CARGO_PKG_VERSION"))
        }
        Kind::Prosody => &["dpkg-query", "-W", "-f", "${Version}", "prosody"],
        Kind::Ejabberd => &["dpkg-query", "-W", "-f", "${Version}", "ejabberd"],
    };
    std::process::Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map(|o| format!("{} {}", kind.name(), String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_else(|_| kind.name().to_string())
}

fn raise_fd_limit() {
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
}

/// Start `kind` with `users` accounts (registering them in-band where
/// the server needs that).
async fn start(
    kind: Kind,
    work: &std::path::Path,
    users: usize,
    t: &Target,
    concurrency: usize,
) -> Result<Running, String> {
    eprintln!("== {}: starting with {users} users", kind.name());
    let mut server = Running::start(kind, work, users).await?;
    if server.needs_registration() {
        eprintln!("   registering {users} users in-band");
        if let Err(e) = scenarios::register_all(t, users, concurrency).await {
            server.stop();
            return Err(e);
        }
    }
    Ok(server)
}

/// Each scenario runs on a freshly started server with a fresh data
/// directory, so that one scenario's aftermath (10,000 sessions closing,
/// a garbage collector catching up) is not measured as the next one's.
async fn run_target(kind: Kind, args: &Args, work: &std::path::Path) -> TargetResult {
    let mut res = TargetResult {
        server: kind,
        features: kind.features(),
        version: version(kind),
        connect: None,
        chat: None,
        mam: None,
        inbox: None,
        room: None,
        rooms: None,
        error: None,
    };
    let t = Target {
        addr: kind.addr(),
        domain: kind.domain().to_string(),
        tls: client::tls_config(),
        keys: Arc::new(KeyCache::default()),
    };
    let mech = match args.mech {
        MechArg::Scram => Mech::ScramSha1,
        MechArg::Plain => Mech::Plain,
    };
    // The archive changes nothing in logins: Confab without it runs the
    // chat scenario only.
    let variant = matches!(
        kind,
        Kind::ConfabNomam | Kind::ConfabNoinbox | Kind::ConfabNolinks
    );
    if matches!(args.scenario, Scenario::Connect | Scenario::All) && !variant {
        match start(
            kind,
            &work.join("connect"),
            args.connections,
            &t,
            args.concurrency,
        )
        .await
        {
            Ok(mut server) => {
                eprintln!(
                    "   connect: {} logins, {} in flight",
                    args.connections, args.concurrency
                );
                let r =
                    scenarios::connect(&server, &t, args.connections, mech, args.concurrency).await;
                eprintln!(
                    "   {:.0} logins/s, {:.2} ms server CPU per login, {:.1} KiB per idle connection ({} failed{})",
                    r.logins_per_sec,
                    r.server_cpu_ms_per_login,
                    r.rss_per_idle_connection_kib,
                    r.failed,
                    r.first_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
                );
                res.connect = Some(r);
                server.stop();
            }
            Err(e) => {
                eprintln!("   {e}");
                res.error = Some(e);
                return res;
            }
        }
    }
    if matches!(args.scenario, Scenario::Chat | Scenario::All) {
        match start(
            kind,
            &work.join("chat"),
            args.chat_users,
            &t,
            args.concurrency,
        )
        .await
        {
            Ok(mut server) => {
                eprintln!(
                    "   chat: {} users in pairs, {} s per step",
                    args.chat_users, args.step_secs
                );
                let dir = server.storage_dir();
                let bytes_before = targets::disk_bytes(&dir);
                let mut r = scenarios::chat(
                    &server,
                    &t,
                    args.chat_users,
                    mech,
                    args.concurrency,
                    &args.rates,
                    args.step_secs,
                )
                .await;
                if let Some(e) = &r.first_error {
                    eprintln!("   login failures: {} ({e})", r.login_failures);
                }
                eprintln!(
                    "   max sustainable: {}/s (stream management on {} of {} sessions)",
                    r.max_sustainable_per_sec, r.sm_sessions, r.users
                );
                // Measured once the server has stopped: what it wrote is
                // on disk then.
                server.stop();
                let bytes_after = targets::disk_bytes(&dir);
                let messages = r.delivered();
                let st = Storage {
                    dir: dir.display().to_string(),
                    bytes_before,
                    bytes_after,
                    messages,
                    bytes_per_message: bytes_after as f64 / messages.max(1) as f64,
                    growth_per_message: bytes_after.saturating_sub(bytes_before) as f64
                        / messages.max(1) as f64,
                };
                eprintln!(
                    "   storage on disk (the archive with the rest): {:.0} bytes per message ({:.1} MiB in {} after {} messages; {:.0} bytes per message of growth during the run)",
                    st.bytes_per_message,
                    bytes_after as f64 / 1048576.0,
                    st.dir,
                    messages,
                    st.growth_per_message
                );
                r.storage = Some(st);
                res.chat = Some(r);
            }
            Err(e) => {
                eprintln!("   {e}");
                res.error = Some(e);
                return res;
            }
        }
    }
    if matches!(args.scenario, Scenario::Room | Scenario::All) && !variant {
        match start(
            kind,
            &work.join("room"),
            args.room_members,
            &t,
            args.concurrency,
        )
        .await
        {
            Ok(mut server) => {
                eprintln!(
                    "   room: {} members in one room, {} s per step",
                    args.room_members, args.step_secs
                );
                let plan = room::Plan {
                    muc_domain: kind.muc_domain(),
                    members: args.room_members,
                    mech,
                    concurrency: args.concurrency,
                    rates: &args.room_rates,
                    step_secs: args.step_secs,
                };
                let r = room::room(&server, &t, plan).await;
                match &r.error {
                    Some(e) => eprintln!("   room: {e}"),
                    None => eprintln!(
                        "   room max sustainable: {} messages/s, {:.0} deliveries/s",
                        r.max_sustainable_per_sec, r.deliveries_per_sec_at_max
                    ),
                }
                res.room = Some(r);
                server.stop();
            }
            Err(e) => {
                eprintln!("   {e}");
                res.error = Some(e);
            }
        }
    }
    if matches!(args.scenario, Scenario::Rooms | Scenario::All) && !variant {
        match start(
            kind,
            &work.join("rooms"),
            args.rooms_users,
            &t,
            args.concurrency,
        )
        .await
        {
            Ok(mut server) => {
                eprintln!(
                    "   rooms: {} rooms of {} members over {} users, {} active",
                    args.rooms, args.room_members, args.rooms_users, args.rooms_active
                );
                let plan = rooms::Plan {
                    muc_domain: kind.muc_domain(),
                    rooms: args.rooms,
                    members: args.room_members,
                    users: args.rooms_users,
                    active: args.rooms_active,
                    mech,
                    concurrency: args.concurrency,
                };
                let dir = server.storage_dir();
                let mut r = rooms::rooms(&mut server, &t, plan).await;
                server.stop();
                r.disk_bytes_per_room = targets::disk_bytes(&dir) as f64 / args.rooms.max(1) as f64;
                match &r.error {
                    Some(e) => eprintln!("   rooms: {e}"),
                    None => eprintln!(
                        "   rooms: {:.1} KiB per idle room ({:.0} bytes per membership; {:.1} KiB after a restart), {:.1} KiB per occupant of an active room ({} occupants), {:.0} bytes on disk per room",
                        r.rss_per_idle_room_kib,
                        r.rss_per_idle_membership_bytes,
                        r.rss_per_idle_room_after_restart_kib,
                        r.rss_per_occupant_kib,
                        r.occupants,
                        r.disk_bytes_per_room
                    ),
                }
                res.rooms = Some(r);
            }
            Err(e) => {
                eprintln!("   {e}");
                res.error = Some(e);
            }
        }
    }
    if matches!(args.scenario, Scenario::Inbox | Scenario::All) && kind == Kind::Confab {
        let users = args.inbox_conversations + 1;
        match start(kind, &work.join("inbox"), users, &t, args.concurrency).await {
            Ok(mut server) => {
                let r = inbox::inbox(&t, args.inbox_conversations, args.inbox_queries, mech).await;
                if let Some(e) = &r.error {
                    eprintln!("   inbox: {e}");
                }
                res.inbox = Some(r);
                server.stop();
            }
            Err(e) => {
                eprintln!("   {e}");
                res.error = Some(e);
            }
        }
    }
    if matches!(args.scenario, Scenario::Mam | Scenario::All) {
        if kind != Kind::Confab {
            if args.scenario == Scenario::Mam {
                eprintln!(
                    "== {}: the mam scenario is Confab's only, skipped",
                    kind.name()
                );
            }
            return res;
        }
        let users = args.mam_users.max(args.chat_users);
        match start(kind, &work.join("mam"), users, &t, args.concurrency).await {
            Ok(mut server) => {
                let p = mam::Params {
                    users,
                    messages: args.mam_messages,
                    queries: args.mam_queries,
                    walks: args.mam_walks,
                    chat_users: args.chat_users,
                    rates: &args.rates,
                    step_secs: args.step_secs,
                    mech,
                    concurrency: args.concurrency,
                };
                let r = mam::mam(&server, &t, &p).await;
                if let Some(e) = &r.error {
                    eprintln!("   mam: {e}");
                }
                res.mam = Some(r);
                server.stop();
            }
            Err(e) => {
                eprintln!("   {e}");
                res.error = Some(e);
            }
        }
    }
    res
}

fn ratio(a: Option<f64>, b: Option<f64>, higher_is_better: bool) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => {
            let r = if higher_is_better { a / b } else { b / a };
            format!("{r:.1}x")
        }
        _ => "-".into(),
    }
}

fn cell(v: Option<f64>, prec: usize) -> String {
    v.map(|v| format!("{v:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

/// The s2s scenario for each pair of selected servers.
async fn run_links(kinds: &[Kind], args: &Args, work: &std::path::Path) -> Vec<s2s::LinkResult> {
    let pairs = [
        (Kind::Confab, Kind::Prosody),
        (Kind::Confab, Kind::Ejabberd),
        (Kind::Prosody, Kind::Ejabberd),
    ];
    let mech = match args.mech {
        MechArg::Scram => Mech::ScramSha1,
        MechArg::Plain => Mech::Plain,
    };
    let mut out = Vec::new();
    for (a, b) in pairs {
        if !kinds.contains(&a) || !kinds.contains(&b) {
            continue;
        }
        eprintln!("== s2s: {} <-> {}", a.name(), b.name());
        let dir = work.join(format!("s2s-{}-{}", a.name(), b.name()));
        let (ta, tb) = (s2s::target(a), s2s::target(b));
        let n = args.s2s_users;
        let mut sa = match start(a, &dir, n, &ta, args.concurrency).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("   {e}");
                continue;
            }
        };
        let mut sb = match start(b, &dir, n, &tb, args.concurrency).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("   {e}");
                sa.stop();
                continue;
            }
        };
        let r = s2s::link(
            &sa,
            &ta,
            &tb,
            n,
            mech,
            args.concurrency,
            &args.s2s_rates,
            args.step_secs,
        )
        .await;
        if let Some(e) = &r.error {
            eprintln!("   {e}");
        }
        sa.stop();
        sb.stop();
        out.push(r);
    }
    out
}

fn print_links(links: &[s2s::LinkResult]) {
    println!(
        "\nMessages both ways across one s2s link (users on each side write to their counterpart):"
    );
    println!(
        "{:<28} {:>10} {:>16} {:>12} {:>12}",
        "link", "setup ms", "max msgs/s", "p50 ms", "p99 ms"
    );
    for l in links {
        // The figures of the highest sustainable step.
        let best = l
            .steps
            .iter()
            .filter(|s| s.sustainable)
            .max_by_key(|s| s.offered_per_sec);
        println!(
            "{:<28} {:>10.0} {:>16} {:>12} {:>12}",
            format!("{} <-> {}", l.a, l.b),
            l.link_setup_ms,
            l.max_sustainable_per_sec,
            best.map(|s| format!("{:.1}", s.p50_ms))
                .unwrap_or_else(|| "-".into()),
            best.map(|s| format!("{:.1}", s.p99_ms))
                .unwrap_or_else(|| "-".into()),
        );
        if let Some(e) = &l.error {
            println!("  error: {e}");
        }
    }
}

fn print_table(results: &[TargetResult]) {
    let get = |k: Kind| results.iter().find(|r| r.server == k);
    let metric = |k: Kind, f: &dyn Fn(&TargetResult) -> Option<f64>| get(k).and_then(f);
    type Row<'a> = (
        &'a str,
        Box<dyn Fn(&TargetResult) -> Option<f64>>,
        usize,
        // higher is better; None: no ratio (an informative row)
        Option<bool>,
    );
    let storage = |r: &TargetResult| r.chat.as_ref().and_then(|c| c.storage.clone());
    let rows: Vec<Row> = vec![
        (
            "logins/s",
            Box::new(|r| r.connect.as_ref().map(|c| c.logins_per_sec)),
            0,
            Some(true),
        ),
        (
            "server CPU ms per login",
            Box::new(|r| r.connect.as_ref().map(|c| c.server_cpu_ms_per_login)),
            3,
            Some(false),
        ),
        (
            "RSS KiB per idle TLS connection",
            Box::new(|r| r.connect.as_ref().map(|c| c.rss_per_idle_connection_kib)),
            1,
            Some(false),
        ),
        (
            "idle connections held",
            Box::new(|r| r.connect.as_ref().map(|c| c.connections as f64)),
            0,
            None,
        ),
        (
            "loadgen CPU % during logins",
            Box::new(|r| r.connect.as_ref().map(|c| c.loadgen_cpu_percent)),
            0,
            None,
        ),
        (
            "max sustainable chat msgs/s",
            Box::new(|r| r.chat.as_ref().map(|c| c.max_sustainable_per_sec as f64)),
            0,
            Some(true),
        ),
        (
            "RSS KiB per idle room",
            Box::new(|r| {
                r.rooms
                    .as_ref()
                    .filter(|x| x.error.is_none())
                    .map(|x| x.rss_per_idle_room_kib)
            }),
            1,
            Some(false),
        ),
        (
            "RSS KiB per idle room, restarted",
            Box::new(|r| {
                r.rooms
                    .as_ref()
                    .filter(|x| x.error.is_none())
                    .map(|x| x.rss_per_idle_room_after_restart_kib)
            }),
            1,
            Some(false),
        ),
        (
            "RSS bytes per idle membership",
            Box::new(|r| {
                r.rooms
                    .as_ref()
                    .filter(|x| x.error.is_none())
                    .map(|x| x.rss_per_idle_membership_bytes)
            }),
            0,
            Some(false),
        ),
        (
            "RSS KiB per room occupant",
            Box::new(|r| {
                r.rooms
                    .as_ref()
                    .filter(|x| x.error.is_none())
                    .map(|x| x.rss_per_occupant_kib)
            }),
            1,
            Some(false),
        ),
        (
            "storage bytes on disk per msg",
            Box::new(move |r| storage(r).map(|s| s.bytes_per_message)),
            0,
            Some(false),
        ),
        (
            "storage growth bytes per msg",
            Box::new(move |r| storage(r).map(|s| s.growth_per_message)),
            0,
            Some(false),
        ),
    ];
    println!();
    println!(
        "| {:<32} | {:>10} | {:>10} | {:>10} | {:>10} | {:>10} | {:>10} | {:>12} | {:>13} |",
        "metric",
        "Confab",
        "no archive",
        "no journal",
        "no links",
        "Prosody",
        "ejabberd",
        "vs Prosody",
        "vs ejabberd"
    );
    println!(
        "|{:-<34}|{:->12}|{:->12}|{:->12}|{:->12}|{:->12}|{:->12}|{:->14}|{:->15}|",
        "", "", "", "", "", "", "", "", ""
    );
    for (name, f, prec, hib) in &rows {
        let c = metric(Kind::Confab, f.as_ref());
        let n = metric(Kind::ConfabNomam, f.as_ref());
        let j = metric(Kind::ConfabNoinbox, f.as_ref());
        let l = metric(Kind::ConfabNolinks, f.as_ref());
        let p = metric(Kind::Prosody, f.as_ref());
        let e = metric(Kind::Ejabberd, f.as_ref());
        println!(
            "| {:<32} | {:>10} | {:>10} | {:>10} | {:>10} | {:>10} | {:>10} | {:>12} | {:>13} |",
            name,
            cell(c, *prec),
            cell(n, *prec),
            cell(j, *prec),
            cell(l, *prec),
            cell(p, *prec),
            cell(e, *prec),
            hib.map(|h| ratio(c, p, h)).unwrap_or_default(),
            hib.map(|h| ratio(c, e, h)).unwrap_or_default()
        );
    }
    println!("(Confab: archive and journal on; no archive: Confab with [mam] enabled = false; no journal: Confab with [inbox] enabled = false; no links: Confab with [links] enabled = false; ratios are Confab with both on against the peer)");
    for r in results {
        let f = &r.features;
        let sm = r
            .chat
            .as_ref()
            .map(|c| (c.sm_sessions, c.users))
            .or(r.connect.as_ref().map(|c| (c.sm_sessions, c.connections)))
            .map(|(on, of)| format!(" (enabled on {on} of {of} sessions)"))
            .unwrap_or_default();
        println!(
            "{}: archive {}; carbons {}; stream management {}{sm}; offline {}; storage {}{}",
            r.version.trim(),
            f.archive,
            f.carbons,
            f.stream_management,
            f.offline,
            f.storage,
            r.error
                .as_deref()
                .map(|e| format!("; ERROR: {e}"))
                .unwrap_or_default()
        );
    }
    for r in results {
        if let Some(c) = &r.chat {
            print_steps(&format!("chat steps, {}", r.server.name()), c);
        }
    }
    for r in results {
        if let Some(m) = &r.mam {
            print_mam(r.server, m);
        }
    }
    for r in results {
        if let Some(i) = &r.inbox {
            inbox::print(r.server.name(), i);
        }
    }
}

fn print_steps(title: &str, c: &ChatResult) {
    println!();
    println!("{title} ({} users):", c.users);
    println!("| offered/s | delivered/s |   p50 ms |   p99 ms |   max ms | lost | server CPU % | loadgen CPU % |");
    for s in &c.steps {
        println!(
            "| {:>9} | {:>11.0} | {:>8.1} | {:>8.1} | {:>8.1} | {:>4} | {:>12.0} | {:>13.0} |",
            s.offered_per_sec,
            s.delivered_per_sec,
            s.p50_ms,
            s.p99_ms,
            s.max_ms,
            s.lost,
            s.server_cpu_percent,
            s.loadgen_cpu_percent
        );
    }
}

fn print_mam(kind: Kind, m: &MamResult) {
    println!();
    println!(
        "archive queries, {} ({} messages archived among {} users, {:.0}/s while archiving; {} messages in each querying user's archive):",
        kind.name(),
        m.archived_messages,
        m.populated.users,
        m.populated.per_sec,
        m.per_user_archive
    );
    println!(
        "| {:<40} | {:>7} | {:>8} | {:>8} | {:>8} | {:>6} | {:>5} |",
        "query", "queries", "p50 ms", "p99 ms", "max ms", "errors", "short"
    );
    for (name, q) in [
        ("last 50 messages with a contact", &m.last_page),
        ("page of 50 in a walk through an archive", &m.page_walk),
    ] {
        println!(
            "| {:<40} | {:>7} | {:>8.2} | {:>8.2} | {:>8.2} | {:>6} | {:>5} |",
            name, q.queries, q.p50_ms, q.p99_ms, q.max_ms, q.errors, q.short
        );
        if let Some(e) = &q.first_error {
            println!("  first error: {e}");
        }
    }
    println!("(target: p99 < 10 ms for a page of 50)");
    println!(
        "storage: {:.1} MiB, {:.0} bytes per archived message",
        m.storage_bytes as f64 / 1048576.0,
        m.storage_bytes_per_message
    );
    let rate = |c: &Option<ChatResult>| c.as_ref().map(|c| c.max_sustainable_per_sec as f64);
    println!(
        "max sustainable chat msgs/s: {} on an empty archive, {} at {} archived messages: {} (target: within 20%)",
        cell(rate(&m.chat_empty), 0),
        cell(rate(&m.chat_full), 0),
        m.archived_messages,
        m.chat_ratio
            .map(|r| format!("{:.0}% of the empty archive's rate", r * 100.0))
            .unwrap_or_else(|| "-".into())
    );
    if let Some(e) = &m.error {
        println!("ERROR: {e}");
    }
    if let Some(c) = &m.chat_empty {
        print_steps(&format!("chat steps, {}, empty archive", kind.name()), c);
    }
    if let Some(c) = &m.chat_full {
        print_steps(&format!("chat steps, {}, full archive", kind.name()), c);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    raise_fd_limit();
    let mut kinds: Vec<Kind> = Vec::new();
    for w in &args.target {
        let add: &[Kind] = match w {
            Which::Confab => &[Kind::Confab],
            Which::ConfabNomam => &[Kind::ConfabNomam],
            Which::ConfabNoinbox => &[Kind::ConfabNoinbox],
            Which::ConfabNolinks => &[Kind::ConfabNolinks],
            Which::Prosody => &[Kind::Prosody],
            Which::Ejabberd => &[Kind::Ejabberd],
            Which::All => &[
                Kind::Confab,
                Kind::ConfabNomam,
                Kind::ConfabNoinbox,
                Kind::ConfabNolinks,
                Kind::Prosody,
                Kind::Ejabberd,
            ],
        };
        for k in add {
            if !kinds.contains(k) {
                kinds.push(*k);
            }
        }
    }
    let work = std::env::temp_dir().join(format!("confab-bench-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&work) {
        eprintln!("cannot create {}: {e}", work.display());
        std::process::exit(1);
    }
    if args.scenario == Scenario::Links {
        let figures = recognise::run();
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let path = PathBuf::from("bench/results").join(format!("links-{stamp}.json"));
        let _ = std::fs::create_dir_all("bench/results");
        let report = serde_json::json!({ "date": stamp, "links": figures });
        match std::fs::write(&path, report.to_string()) {
            Ok(()) => println!("written to {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
        return;
    }
    let mut results = Vec::new();
    if args.scenario != Scenario::S2s {
        for &k in &kinds {
            results.push(run_target(k, &args, &work).await);
        }
        print_table(&results);
    }
    let mut links = Vec::new();
    if matches!(args.scenario, Scenario::S2s | Scenario::All) {
        links = run_links(&kinds, &args, &work).await;
        print_links(&links);
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let report = serde_json::json!({
        "date": stamp,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        },
        "results": results,
        "s2s": links,
    });
    let _ = std::fs::create_dir_all(&args.out);
    let path = args.out.join(format!("{stamp}.json"));
    match serde_json::to_string_pretty(&report)
        .map_err(|e| e.to_string())
        .and_then(|s| std::fs::write(&path, s).map_err(|e| e.to_string()))
    {
        Ok(()) => println!("\nwritten to {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
    if std::env::var("CONFAB_BENCH_KEEP").is_err() {
        let _ = std::fs::remove_dir_all(&work);
    }
}

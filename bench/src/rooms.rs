//! The `rooms` scenario: what rooms cost in memory. `rooms` rooms (1,000
//! by default) of `members` members (30) are made over `users` accounts
//! (300: each user is in `rooms × members / users` rooms), the sessions
//! that made them log out, and once the rooms are idle (Confab ends an
//! idle room's task 60 s after its last occupant left) the server's RSS
//! gives the memory per idle room and per membership. Then every member
//! of `active` rooms (50) logs in and joins them: the RSS per occupant of
//! an active room. Last, the server is restarted: what the idle rooms
//! cost a server that did not make them (the growth during the run is
//! mostly the database's write path and the allocator keeping freed
//! pages). Figures are printed; nothing is timed against a goal.

use std::time::{Duration, Instant};

use crate::client::{Mech, Session, Target};
use crate::mam::ask;
use crate::room::join;
use crate::scenarios::{self, wait_quiet};
use crate::targets::{self, Running};

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RoomsResult {
    /// The server just started, with its accounts and no room.
    pub rss_start_kib: u64,
    pub rooms: usize,
    pub members: usize,
    pub users: usize,
    pub active_rooms: usize,
    /// Seconds to make every room with its members.
    pub setup_secs: f64,
    /// No session, no room.
    pub rss_base_kib: u64,
    /// No session, every room made and idle.
    pub rss_idle_rooms_kib: u64,
    pub rss_per_idle_room_kib: f64,
    pub rss_per_idle_membership_bytes: f64,
    /// The members of the active rooms logged in, before they join.
    pub rss_logged_in_kib: u64,
    /// ... and once they all joined.
    pub rss_active_kib: u64,
    pub occupants: usize,
    pub rss_per_occupant_kib: f64,
    /// Restarted with every room idle, no session.
    pub rss_after_restart_kib: u64,
    pub rss_per_idle_room_after_restart_kib: f64,
    /// Bytes on disk after the run, per room (records, bookmarks, PEP).
    pub disk_bytes_per_room: f64,
    pub error: Option<String>,
}

pub struct Plan {
    pub muc_domain: String,
    pub rooms: usize,
    pub members: usize,
    pub users: usize,
    pub active: usize,
    pub mech: Mech,
    pub concurrency: usize,
}

fn room_jid(r: usize, domain: &str) -> String {
    format!("r{r}@{domain}")
}

/// The members of room `r`: users r, r+1, … (mod `users`), the first its
/// creator.
fn members_of(r: usize, members: usize, users: usize) -> impl Iterator<Item = usize> {
    (0..members).map(move |k| (r + k) % users)
}

async fn logins(
    t: &Target,
    ids: std::ops::Range<usize>,
    mech: Mech,
    concurrency: usize,
) -> Result<Vec<(usize, Session)>, String> {
    let got = scenarios::login_many(t, ids.clone(), mech, concurrency, true, false, |s| s).await;
    ids.zip(got).map(|(i, r)| r.map(|s| (i, s))).collect()
}

/// Make the rooms of one creator: join (creating it), configure it
/// persistent and members-only (what Confab's rooms are; Prosody and
/// ejabberd are asked for the same), add the other members, leave.
async fn create(
    s: &mut Session,
    me: usize,
    rooms: &[usize],
    plan: &Plan,
    domain: &str,
) -> Result<(), String> {
    for &r in rooms {
        let room = room_jid(r, &plan.muc_domain);
        let nick = targets::user(me);
        join(s, &room, &nick).await?;
        let id = format!("cfg{r}");
        ask(
            s,
            &id,
            &format!(
                "<iq type='set' id='{id}' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'>\
                 <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
                 <field var='muc#roomconfig_persistentroom'><value>1</value></field>\
                 <field var='muc#roomconfig_membersonly'><value>1</value></field></x></query></iq>"
            ),
            "room configuration",
        )
        .await?;
        // One member per request: Prosody applies only the first item of
        // a muc#admin set.
        for u in members_of(r, plan.members, plan.users).skip(1) {
            let id = format!("mem{r}-{u}");
            ask(
                s,
                &id,
                &format!(
                    "<iq type='set' id='{id}' to='{room}'><query xmlns='http://jabber.org/protocol/muc#admin'>\
                     <item affiliation='member' jid='{}@{domain}'/></query></iq>",
                    targets::user(u)
                ),
                "room member",
            )
            .await?;
        }
        s.write(&format!(
            "<presence type='unavailable' to='{room}/{nick}'/>"
        ))
        .await?;
    }
    Ok(())
}

async fn settle(server: &Running, secs: u64) {
    wait_quiet(server).await;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    wait_quiet(server).await;
}

pub async fn rooms(server: &mut Running, t: &Target, plan: Plan) -> RoomsResult {
    let mut res = RoomsResult {
        rooms: plan.rooms,
        members: plan.members,
        users: plan.users,
        active_rooms: plan.active.min(plan.rooms),
        ..Default::default()
    };
    if plan.users < plan.members {
        res.error = Some("there must be at least as many users as members of a room".into());
        return res;
    }
    settle(server, 2).await;
    res.rss_start_kib = server.rss_kib();
    // A first login of everyone, so that what logging in leaves behind
    // (allocator pools, caches) is in the base.
    let all = 0..plan.users;
    match logins(t, all.clone(), plan.mech, plan.concurrency).await {
        Ok(s) => drop(s),
        Err(e) => {
            res.error = Some(format!("login failed: {e}"));
            return res;
        }
    }
    settle(server, 3).await;
    res.rss_base_kib = server.rss_kib();

    let t0 = Instant::now();
    let sessions = match logins(t, all, plan.mech, plan.concurrency).await {
        Ok(s) => s,
        Err(e) => {
            res.error = Some(format!("login failed: {e}"));
            return res;
        }
    };
    let mut tasks = Vec::new();
    let plan = std::sync::Arc::new(plan);
    for (me, mut s) in sessions {
        let mine: Vec<usize> = (0..plan.rooms).filter(|r| r % plan.users == me).collect();
        let plan = plan.clone();
        let domain = t.domain.clone();
        tasks.push(tokio::spawn(async move {
            let r = create(&mut s, me, &mine, &plan, &domain).await;
            (s, r)
        }));
    }
    let mut kept = Vec::new();
    for task in tasks {
        match task.await {
            Ok((s, Ok(()))) => kept.push(s),
            Ok((_, Err(e))) => {
                res.error.get_or_insert(e);
            }
            Err(e) => {
                res.error.get_or_insert(e.to_string());
            }
        }
    }
    res.setup_secs = t0.elapsed().as_secs_f64();
    if res.error.is_some() {
        return res;
    }
    drop(kept);
    eprintln!(
        "   {} rooms of {} made in {:.1} s; waiting 65 s for them to go idle",
        plan.rooms, plan.members, res.setup_secs
    );
    settle(server, 65).await;
    res.rss_idle_rooms_kib = server.rss_kib();
    let grown = res.rss_idle_rooms_kib.saturating_sub(res.rss_base_kib) as f64;
    res.rss_per_idle_room_kib = grown / plan.rooms.max(1) as f64;
    res.rss_per_idle_membership_bytes = grown * 1024.0 / (plan.rooms * plan.members).max(1) as f64;

    // The active rooms: their members log in, then join every one of
    // them they are in.
    let active = res.active_rooms;
    // Rooms 0.. have users 0.. as members: one contiguous range.
    let last = (active + plan.members - 1).min(plan.users);
    let sessions = match logins(t, 0..last, plan.mech, plan.concurrency).await {
        Ok(s) => s,
        Err(e) => {
            res.error = Some(format!("login failed: {e}"));
            return res;
        }
    };
    settle(server, 2).await;
    res.rss_logged_in_kib = server.rss_kib();
    let mut tasks = Vec::new();
    for (me, mut s) in sessions {
        let mine: Vec<usize> = (0..active)
            .filter(|&r| members_of(r, plan.members, plan.users).any(|u| u == me))
            .collect();
        let muc = plan.muc_domain.clone();
        tasks.push(tokio::spawn(async move {
            for r in &mine {
                join(&mut s, &room_jid(*r, &muc), &targets::user(me)).await?;
            }
            Ok::<(Session, usize), String>((s, mine.len()))
        }));
    }
    let mut held = Vec::new();
    for task in tasks {
        match task.await {
            Ok(Ok((s, n))) => {
                res.occupants += n;
                held.push(tokio::spawn(s.hold()));
            }
            Ok(Err(e)) => {
                res.error.get_or_insert(e);
            }
            Err(e) => {
                res.error.get_or_insert(e.to_string());
            }
        }
    }
    settle(server, 2).await;
    res.rss_active_kib = server.rss_kib();
    res.rss_per_occupant_kib = res.rss_active_kib.saturating_sub(res.rss_logged_in_kib) as f64
        / res.occupants.max(1) as f64;
    for h in held {
        h.abort();
    }
    if let Err(e) = server.restart().await {
        res.error.get_or_insert(format!("restart: {e}"));
        return res;
    }
    settle(server, 3).await;
    res.rss_after_restart_kib = server.rss_kib();
    res.rss_per_idle_room_after_restart_kib =
        res.rss_after_restart_kib.saturating_sub(res.rss_start_kib) as f64
            / plan.rooms.max(1) as f64;
    res
}

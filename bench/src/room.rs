//! The `room` scenario: one full room. `members` users (30 by default)
//! log in and join one room (the first creates it, takes the instant
//! room and makes the others members: Confab's rooms are members-only;
//! Prosody's and ejabberd's open rooms take the same requests), each
//! with MUC MAM on. Then every member sends groupchat messages at a fixed
//! share of the offered rate, stepped up until a step is not
//! sustainable: a message counts as delivered once per member (its
//! sender's reflection included), so deliveries/s are `members` times
//! the messages/s.

use std::time::Duration;

use crate::client::{Mech, Session, Target};
use crate::mam::{ask, find};
use crate::scenarios::{self, Step};
use crate::targets::{self, Running};

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RoomResult {
    pub members: usize,
    pub room: String,
    pub step_secs: u64,
    pub steps: Vec<Step>,
    /// Highest offered rate of messages (sent by all members together)
    /// with p99 < 50 ms and nothing lost.
    pub max_sustainable_per_sec: u64,
    /// Deliveries per second at that rate.
    pub deliveries_per_sec_at_max: f64,
    pub error: Option<String>,
}

const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Join `room` as `nick`, without history; wait for the subject, which
/// ends a join (XEP-0045 §7.2.15).
pub async fn join(s: &mut Session, room: &str, nick: &str) -> Result<(), String> {
    s.write(&format!(
        "<presence to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>"
    ))
    .await?;
    // The subject ends a join; an error presence from the room refuses it.
    let got = tokio::time::timeout(
        JOIN_TIMEOUT,
        s.read_until("room join", |b| {
            if let Some(at) = find(b, b"<subject") {
                return find(&b[at..], b"</message>").map(|e| at + e + 10);
            }
            let at = find(b, b"type='error'").or_else(|| find(b, b"type=\"error\""))?;
            find(&b[at..], b"</presence>").map(|e| at + e + 11)
        }),
    )
    .await
    .map_err(|_| format!("{nick}: no subject within {JOIN_TIMEOUT:?} of joining {room}"))??;
    if find(&got, b"<subject").is_none() {
        let tail = &got[got.len().saturating_sub(600)..];
        return Err(format!(
            "{nick}: joining {room} refused: {}",
            String::from_utf8_lossy(tail)
        ));
    }
    Ok(())
}

/// How a room run goes.
pub struct Plan<'a> {
    pub muc_domain: String,
    pub members: usize,
    pub mech: Mech,
    /// Logins in flight at once.
    pub concurrency: usize,
    pub rates: &'a [u64],
    pub step_secs: u64,
}

pub async fn room(server: &Running, t: &Target, plan: Plan<'_>) -> RoomResult {
    let Plan {
        muc_domain,
        members,
        mech,
        concurrency,
        rates,
        step_secs,
    } = plan;
    let room = format!("bench@{muc_domain}");
    let mut result = RoomResult {
        members,
        room: room.clone(),
        step_secs,
        ..Default::default()
    };
    let logins = scenarios::login_many(t, 0..members, mech, concurrency, true, false, |s| s).await;
    let mut sessions = Vec::with_capacity(members);
    for r in logins {
        match r {
            Ok(s) => sessions.push(s),
            Err(e) => {
                result.error = Some(format!("login failed: {e}"));
                return result;
            }
        }
    }
    let setup = async {
        let first = &mut sessions[0];
        join(first, &room, &targets::user(0)).await?;
        // The instant room (Prosody keeps a new room locked until then).
        ask(
            first,
            "room-cfg",
            &format!(
                "<iq type='set' id='room-cfg' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>"
            ),
            "room configuration",
        )
        .await?;
        let items: String = (1..members)
            .map(|i| {
                format!(
                    "<item affiliation='member' jid='{}@{}'/>",
                    targets::user(i),
                    t.domain
                )
            })
            .collect();
        ask(
            first,
            "room-members",
            &format!(
                "<iq type='set' id='room-members' to='{room}'><query xmlns='http://jabber.org/protocol/muc#admin'>{items}</query></iq>"
            ),
            "room members",
        )
        .await?;
        for (i, s) in sessions.iter_mut().enumerate().skip(1) {
            join(s, &room, &targets::user(i)).await?;
        }
        Ok::<(), String>(())
    };
    if let Err(e) = setup.await {
        result.error = Some(e);
        return result;
    }
    let r = room.clone();
    let (steps, max) = scenarios::stepped(
        server,
        sessions,
        rates,
        step_secs,
        members as u64,
        move |_| (r.clone(), "groupchat"),
    )
    .await;
    result.deliveries_per_sec_at_max = steps
        .iter()
        .find(|s| s.offered_per_sec == max)
        .map(|s| s.delivered_per_sec)
        .unwrap_or(0.0);
    result.steps = steps;
    result.max_sustainable_per_sec = max;
    result
}

//! The s2s scenario: users on two servers write to each other, both ways,
//! so that everything crosses the one server-to-server link between them
//! (two streams, one each way), in rate steps until one is not
//! sustainable (anything lost, p99 over 50 ms, or the load generator
//! behind). Pairs: Confab–Prosody, Confab–ejabberd, and Prosody–ejabberd
//! for comparison, each pair on fresh servers.

use std::time::{Duration, Instant};

use crate::client::{self, Mech, Session, Target};
use crate::scenarios::{login_many, stepped, Step};
use crate::targets::{self, Running};

#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkResult {
    /// The servers, as "a ↔ b" (a's CPU is the one measured in the steps).
    pub a: String,
    pub b: String,
    /// Users on each side, each writing to its counterpart on the other.
    pub users_per_side: usize,
    /// From the first message to its arrival, both ways: resolving,
    /// connecting, TLS and dialback of the two streams.
    pub link_setup_ms: f64,
    pub steps: Vec<Step>,
    /// Highest offered rate (both directions together) that was
    /// sustainable.
    pub max_sustainable_per_sec: u64,
    pub error: Option<String>,
}

/// Send a marked message from `from` to `to_jid` and wait until `to`
/// reads it.
async fn warm(
    from: &mut Session,
    to: &mut Session,
    to_jid: &str,
    mark: &str,
) -> Result<(), String> {
    from.write(&format!(
        "<message to='{to_jid}' type='chat'><body>{mark}</body></message>"
    ))
    .await?;
    let m = mark.as_bytes().to_vec();
    tokio::time::timeout(
        Duration::from_secs(60),
        to.read_until("the warm-up message", move |b| {
            b.windows(m.len())
                .position(|w| w == m.as_slice())
                .map(|i| i + m.len())
        }),
    )
    .await
    .map_err(|_| format!("{mark}: no warm-up message in 60 s"))?
    .map(|_| ())
}

#[allow(clippy::too_many_arguments)]
pub async fn link(
    a: &Running,
    ta: &Target,
    tb: &Target,
    users_per_side: usize,
    mech: Mech,
    concurrency: usize,
    rates: &[u64],
    step_secs: u64,
) -> LinkResult {
    let mut r = LinkResult {
        a: ta.domain.clone(),
        b: tb.domain.clone(),
        users_per_side,
        link_setup_ms: 0.0,
        steps: Vec::new(),
        max_sustainable_per_sec: 0,
        error: None,
    };
    let n = users_per_side;
    let mut sessions: Vec<Session> = Vec::with_capacity(2 * n);
    for t in [ta, tb] {
        for s in login_many(t, 0..n, mech, concurrency, true, false, |s| s).await {
            match s {
                Ok(s) => sessions.push(s),
                Err(e) => {
                    r.error = Some(format!("login on {}: {e}", t.domain));
                    return r;
                }
            }
        }
    }
    let t0 = Instant::now();
    let (left, right) = sessions.split_at_mut(n);
    let ab = format!("{}@{}", targets::user(0), tb.domain);
    let ba = format!("{}@{}", targets::user(0), ta.domain);
    let warmed = async {
        warm(&mut left[0], &mut right[0], &ab, "warm-a-to-b").await?;
        warm(&mut right[0], &mut left[0], &ba, "warm-b-to-a").await
    }
    .await;
    if let Err(e) = warmed {
        r.error = Some(e);
        return r;
    }
    r.link_setup_ms = t0.elapsed().as_secs_f64() * 1000.0;
    eprintln!("   link up both ways in {:.0} ms", r.link_setup_ms);
    let (da, db) = (ta.domain.clone(), tb.domain.clone());
    let (steps, max) = stepped(a, sessions, rates, step_secs, 1, move |me| {
        if me < n {
            (format!("{}@{db}", targets::user(me)), "chat")
        } else {
            (format!("{}@{da}", targets::user(me - n)), "chat")
        }
    })
    .await;
    r.steps = steps;
    r.max_sustainable_per_sec = max;
    r
}

/// Make a `Target` for `kind`.
pub fn target(kind: targets::Kind) -> Target {
    Target {
        addr: kind.addr(),
        domain: kind.domain().to_string(),
        tls: client::tls_config(),
        keys: Default::default(),
    }
}

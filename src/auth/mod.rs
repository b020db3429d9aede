//! Account credentials and login throttling.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use xmpp_parsers::jid::BareJid;

use crate::sasl::scram::{ScramCredentials, ScramHash};
use crate::sasl::SaslError;
use crate::store::{Account, ScramRecord};

/// SCRAM iteration count for new passwords (RFC 7677 asks for at least 4096).
pub const ITERATIONS: u32 = 4096;

fn record(c: ScramCredentials) -> ScramRecord {
    ScramRecord {
        iterations: c.iterations,
        salt: c.salt,
        stored_key: c.stored_key,
        server_key: c.server_key,
    }
}

pub fn credentials(hash: ScramHash, r: &ScramRecord) -> ScramCredentials {
    ScramCredentials {
        hash,
        iterations: r.iterations,
        salt: r.salt.clone(),
        stored_key: r.stored_key.clone(),
        server_key: r.server_key.clone(),
    }
}

/// A new account record for `jid` with `password`.
pub fn new_account(jid: &BareJid, password: &str) -> Result<Account, SaslError> {
    Ok(Account {
        jid: jid.to_string(),
        scram_sha1: record(ScramCredentials::generate(
            ScramHash::Sha1,
            password,
            ITERATIONS,
        )?),
        scram_sha256: record(ScramCredentials::generate(
            ScramHash::Sha256,
            password,
            ITERATIONS,
        )?),
        disabled: false,
        created: chrono::Utc::now().timestamp(),
    })
}

/// Check a PLAIN password against an account's keys. The key derivation
/// (PBKDF2, a millisecond or two of CPU) runs on the blocking pool, not on
/// a worker that routes other users' stanzas; an unknown account costs the
/// same derivation, so timing does not tell whether it exists.
pub async fn verify_plain(creds: Option<ScramCredentials>, password: String) -> bool {
    blocking(move || match creds {
        Some(c) => c.verify_password(&password),
        None => {
            let _ = ScramCredentials::generate(ScramHash::Sha256, &password, ITERATIONS);
            false
        }
    })
    .await
    .unwrap_or(false)
}

/// Run CPU-heavy work (key derivation) on the blocking pool. `None` if it
/// panicked or the runtime is shutting down.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

/// Replace the keys of an account for a new password.
pub fn set_password(account: &mut Account, password: &str) -> Result<(), SaslError> {
    account.scram_sha1 = record(ScramCredentials::generate(
        ScramHash::Sha1,
        password,
        ITERATIONS,
    )?);
    account.scram_sha256 = record(ScramCredentials::generate(
        ScramHash::Sha256,
        password,
        ITERATIONS,
    )?);
    Ok(())
}

/// Normalise a user name (a JID localpart) and build the account JID.
pub fn account_jid(user: &str, domain: &str) -> Option<BareJid> {
    if user.is_empty() {
        return None;
    }
    let node = xmpp_parsers::jid::NodePart::new(user).ok()?;
    let domain = xmpp_parsers::jid::DomainPart::new(domain).ok()?;
    Some(BareJid::from_parts(Some(&node), &domain))
}

/// Failures decay: one forgiven per this interval.
const DECAY: Duration = Duration::from_secs(30);
/// Delay before answering a failure for an account under attack.
pub const ACCOUNT_DELAY: Duration = Duration::from_secs(2);

/// Failures counted in whole units; one is forgiven per `DECAY` elapsed.
struct Bucket {
    failures: u32,
    /// When the last forgiveness step was taken (or the first failure).
    since: Instant,
}

impl Bucket {
    /// Forgiveness steps due at `now`.
    fn steps(&self, now: Instant) -> u32 {
        let n = now.duration_since(self.since).as_secs() / DECAY.as_secs();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn current(&self, now: Instant) -> u32 {
        self.failures.saturating_sub(self.steps(now))
    }

    /// Apply the forgiveness due, keeping the partial interval.
    fn settle(&mut self, now: Instant) {
        let steps = self.steps(now);
        if steps >= self.failures {
            self.failures = 0;
            self.since = now;
        } else {
            self.failures -= steps;
            self.since += DECAY * steps;
        }
    }
}

/// Counts failed logins per IP address and per account.
pub struct AuthThrottle {
    ip_free: u32,
    account_free: u32,
    ips: Mutex<HashMap<IpAddr, Bucket>>,
    accounts: Mutex<HashMap<String, Bucket>>,
}

fn bump<K: std::hash::Hash + Eq>(m: &Mutex<HashMap<K, Bucket>>, k: K) {
    let now = Instant::now();
    let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
    if m.len() > 100_000 {
        m.retain(|_, b| b.current(now) > 0);
    }
    let b = m.entry(k).or_insert(Bucket {
        failures: 0,
        since: now,
    });
    b.settle(now);
    b.failures = b.failures.saturating_add(1);
}

fn level<K: std::hash::Hash + Eq>(m: &Mutex<HashMap<K, Bucket>>, k: &K) -> u32 {
    let m = m.lock().unwrap_or_else(|p| p.into_inner());
    m.get(k).map(|b| b.current(Instant::now())).unwrap_or(0)
}

impl AuthThrottle {
    pub fn new(ip_free: u32, account_free: u32) -> Self {
        AuthThrottle {
            ip_free,
            account_free,
            ips: Mutex::new(HashMap::new()),
            accounts: Mutex::new(HashMap::new()),
        }
    }

    /// Too many recent failures from this address: refuse for now.
    pub fn ip_blocked(&self, ip: IpAddr) -> bool {
        level(&self.ips, &ip) >= self.ip_free
    }

    /// Too many recent failures for this account: answer failures slowly.
    pub fn account_slowed(&self, jid: &str) -> bool {
        level(&self.accounts, &jid.to_string()) >= self.account_free
    }

    pub fn failure(&self, ip: IpAddr, jid: Option<&str>) {
        bump(&self.ips, ip);
        if let Some(j) = jid {
            bump(&self.accounts, j.to_string());
        }
    }

    pub fn success(&self, jid: &str) {
        let mut m = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(jid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_counts_and_forgives() {
        let t = AuthThrottle::new(3, 2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(!t.ip_blocked(ip));
        t.failure(ip, Some("a@x"));
        t.failure(ip, Some("a@x"));
        assert!(!t.ip_blocked(ip));
        assert!(t.account_slowed("a@x"));
        t.failure(ip, None);
        assert!(t.ip_blocked(ip));
        t.success("a@x");
        assert!(!t.account_slowed("a@x"));
    }

    #[test]
    fn account_jid_normalises() {
        assert_eq!(
            account_jid("Alice", "example.com").unwrap().to_string(),
            "alice@example.com"
        );
        assert!(account_jid("", "example.com").is_none());
        assert!(account_jid("a@b", "example.com").is_none());
    }
}

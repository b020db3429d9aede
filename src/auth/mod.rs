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
/// Most entries kept per table before old ones are forgotten.
const MAX_TRACKED: usize = 100_000;
/// Addresses remembered per account (failed from, or logged in from).
const MAX_ADDRESSES: usize = 4096;
/// Spare evaluations of an account under attack, per `account_free`.
const SPARE_FACTOR: u32 = 10;
/// How long a successful login makes an address known for an account.
const KNOWN_FOR: Duration = Duration::from_secs(30 * 86_400);

/// Failures counted in whole units; one is forgiven per `DECAY` elapsed.
#[derive(Clone, Copy)]
struct Bucket {
    failures: u32,
    /// When the last forgiveness step was taken (or the first failure).
    since: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Bucket {
            failures: 0,
            since: now,
        }
    }

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

    fn bump(&mut self, now: Instant) {
        self.settle(now);
        self.failures = self.failures.saturating_add(1);
    }
}

/// The address a limit applies to: an IPv4 address, or an IPv6 /64 (one
/// host's, or one customer's, usual allocation).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Source(u128);

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(u128::from(u32::from(v4))),
                None => Source((u128::from(v6) >> 64) | (1 << 127)),
            },
        }
    }
}

struct IpState {
    failures: Bucket,
    /// Attempts being evaluated now: counted before they are evaluated.
    in_flight: u32,
}

struct AccountState {
    failures: Bucket,
    in_flight: u32,
    /// Spare evaluations while the account is over its budget, for
    /// addresses that have not failed against it (refilled one per DECAY).
    spare: Bucket,
    /// Addresses that failed against this account, and when.
    failed_from: HashMap<Source, Instant>,
    /// Addresses this account logged in from, and when.
    known: HashMap<Source, Instant>,
}

#[derive(Default)]
struct Tables {
    ips: HashMap<Source, IpState>,
    accounts: HashMap<String, AccountState>,
}

/// Limits login attempts before they are evaluated.
///
/// * Per address: at most `ip_free` recent failures *plus attempts being
///   evaluated* (so 200 simultaneous guesses from one address cannot all be
///   evaluated); beyond that, attempts are refused with
///   `temporary-auth-failure` until failures decay (one per 30 s).
/// * Per account, across all connections: at most `account_free` recent
///   failures plus attempts in flight are evaluated normally. Beyond that
///   the account is under attack, and an attempt is evaluated only when it
///   comes from an address the account logged in from before, or from an
///   address that has not failed against it while a spare evaluation is
///   left (ten times `account_free`, one more per 30 s). So guesses at one
///   account are bounded whatever the number of connections or addresses,
///   and the owner, from a known or untainted address, still gets in.
pub struct AuthThrottle {
    ip_free: u32,
    account_free: u32,
    tables: Mutex<Tables>,
}

/// Why an attempt was not evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// Too many recent failures or attempts from this address.
    Address,
    /// The account is under attack and this address may not try now.
    Account,
}

/// How an attempt counts against its account.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    None,
    /// One of the normal evaluations (in flight).
    Normal,
    /// A known address.
    Known,
    /// A spare evaluation (given back on success).
    Spare,
}

/// One login attempt, counted from before it is evaluated until it is
/// settled; dropped without a verdict (the client went away), it is given
/// back uncounted.
pub struct Attempt<'a> {
    throttle: &'a AuthThrottle,
    source: Source,
    account: Option<String>,
    slot: Slot,
    settled: bool,
}

impl AuthThrottle {
    pub fn new(ip_free: u32, account_free: u32) -> Self {
        AuthThrottle {
            ip_free,
            account_free,
            tables: Mutex::new(Tables::default()),
        }
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A login attempt from `ip` is about to start.
    pub fn begin(&self, ip: IpAddr) -> Result<Attempt<'_>, Throttled> {
        let now = Instant::now();
        let source = Source::from(ip);
        let mut t = self.tables();
        if t.ips.len() > MAX_TRACKED {
            t.ips
                .retain(|_, s| s.in_flight > 0 || s.failures.current(now) > 0);
        }
        let s = t.ips.entry(source).or_insert(IpState {
            failures: Bucket::new(now),
            in_flight: 0,
        });
        if s.failures.current(now).saturating_add(s.in_flight) >= self.ip_free {
            return Err(Throttled::Address);
        }
        s.in_flight += 1;
        Ok(Attempt {
            throttle: self,
            source,
            account: None,
            slot: Slot::None,
            settled: false,
        })
    }
}

impl Attempt<'_> {
    /// The attempt is for `account` (known before the password is
    /// checked): may it be evaluated?
    pub fn account(&mut self, account: &str) -> Result<(), Throttled> {
        let th = self.throttle;
        let now = Instant::now();
        let mut t = th.tables();
        if t.accounts.len() > MAX_TRACKED {
            t.accounts.retain(|_, a| {
                a.in_flight > 0 || a.failures.current(now) > 0 || !a.known.is_empty()
            });
        }
        let a = t
            .accounts
            .entry(account.to_string())
            .or_insert_with(|| AccountState {
                failures: Bucket::new(now),
                in_flight: 0,
                spare: Bucket::new(now),
                failed_from: HashMap::new(),
                known: HashMap::new(),
            });
        a.known.retain(|_, at| now.duration_since(*at) < KNOWN_FOR);
        a.failed_from
            .retain(|_, at| now.duration_since(*at) < DECAY * th.account_free.max(1));
        self.slot = if a.failures.current(now).saturating_add(a.in_flight) < th.account_free {
            a.in_flight += 1;
            Slot::Normal
        } else if a.known.contains_key(&self.source) {
            Slot::Known
        } else if !a.failed_from.contains_key(&self.source)
            && a.spare.current(now) < th.account_free.saturating_mul(SPARE_FACTOR)
        {
            a.spare.bump(now);
            Slot::Spare
        } else {
            return Err(Throttled::Account);
        };
        self.account = Some(account.to_string());
        Ok(())
    }

    /// The credentials were right.
    pub fn succeeded(mut self) {
        self.settle(true);
    }

    /// The credentials were wrong.
    pub fn failed(mut self) {
        self.settle(false);
    }

    fn settle(&mut self, ok: bool) {
        if self.settled {
            return;
        }
        self.settled = true;
        let now = Instant::now();
        let mut t = self.throttle.tables();
        if let Some(s) = t.ips.get_mut(&self.source) {
            s.in_flight = s.in_flight.saturating_sub(1);
            if !ok {
                s.failures.bump(now);
            }
        }
        let Some(name) = &self.account else { return };
        let Some(a) = t.accounts.get_mut(name) else {
            return;
        };
        if self.slot == Slot::Normal {
            a.in_flight = a.in_flight.saturating_sub(1);
        }
        if ok {
            a.failures = Bucket::new(now);
            if self.slot == Slot::Spare {
                a.spare.failures = a.spare.failures.saturating_sub(1);
            }
            if a.known.len() < MAX_ADDRESSES {
                a.known.insert(self.source, now);
            }
        } else {
            a.failures.bump(now);
            if a.failed_from.len() >= MAX_ADDRESSES {
                a.failed_from.clear();
            }
            a.failed_from.insert(self.source, now);
        }
    }

    /// Given back without a verdict.
    fn abandon(&mut self) {
        if self.settled {
            return;
        }
        self.settled = true;
        let mut t = self.throttle.tables();
        if let Some(s) = t.ips.get_mut(&self.source) {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
        if let Some(name) = &self.account {
            if let Some(a) = t.accounts.get_mut(name) {
                match self.slot {
                    Slot::Normal => a.in_flight = a.in_flight.saturating_sub(1),
                    Slot::Spare => a.spare.failures = a.spare.failures.saturating_sub(1),
                    Slot::Known | Slot::None => {}
                }
            }
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.abandon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_count_before_they_are_evaluated() {
        let t = AuthThrottle::new(3, 2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        // Three in flight at once: a fourth is refused before any failed.
        let a: Vec<_> = (0..3).map(|_| t.begin(ip).unwrap()).collect();
        assert_eq!(t.begin(ip).err(), Some(Throttled::Address));
        drop(a);
        // Abandoned attempts count nothing.
        let a = t.begin(ip).unwrap();
        a.failed();
        let a = t.begin(ip).unwrap();
        a.failed();
        let a = t.begin(ip).unwrap();
        a.succeeded();
        t.begin(ip).unwrap().failed();
        assert_eq!(t.begin(ip).err(), Some(Throttled::Address));
        // Another address is not affected.
        assert!(t.begin("127.0.0.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn an_account_under_attack_still_lets_its_owner_in() {
        let t = AuthThrottle::new(100, 3);
        let owner_home: IpAddr = "10.0.0.1".parse().unwrap();
        let mut a = t.begin(owner_home).unwrap();
        a.account("a@x").unwrap();
        a.succeeded();
        // Attackers from many addresses: 3 normal guesses, then one spare
        // guess per fresh address while spares last, then nothing.
        let mut evaluated = 0;
        for i in 0..50u8 {
            for _ in 0..5 {
                let ip = IpAddr::from([192, 168, 0, i]);
                let mut a = t.begin(ip).unwrap();
                if a.account("a@x").is_ok() {
                    evaluated += 1;
                    a.failed();
                }
            }
        }
        assert_eq!(evaluated, 3 + 30, "normal budget plus spares");
        // The owner from the address it used before gets in.
        let mut a = t.begin(owner_home).unwrap();
        assert!(a.account("a@x").is_ok());
        a.succeeded();
        // Once the failures are forgiven by the success, anyone may try.
        let mut a = t.begin("172.16.0.1".parse().unwrap()).unwrap();
        assert!(a.account("a@x").is_ok());
    }

    #[test]
    fn ipv6_addresses_count_per_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::from(a), Source::from(b));
        assert_ne!(Source::from(a), Source::from(c));
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(Source::from(v4), Source::from(mapped));
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

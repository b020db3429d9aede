//! Account credentials and login throttling.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

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

/// Failures decay: one forgiven per this interval (seconds).
const DECAY: u32 = 30;
/// Addresses tracked before those with nothing left to remember are
/// forgotten.
const MAX_IPS: usize = 100_000;
/// Accounts tracked before those with nothing worth remembering are
/// forgotten.
const MAX_ACCOUNTS: usize = 1_000_000;
/// Addresses remembered per account that failed against it.
const MAX_FAILED_FROM: usize = 4096;
/// Addresses an account logged in from, remembered (the most recent).
const MAX_KNOWN: usize = 4;
/// Spare evaluations of an account under attack, per `account_free`.
const SPARE_FACTOR: u32 = 10;
/// How long a successful login makes an address known for an account.
const KNOWN_FOR: u32 = 30 * 86_400;

/// Failures counted in whole units; one is forgiven per `DECAY` elapsed.
/// Times are seconds on the throttle's own clock: entries stay small, as
/// there is one for every account that logged in.
#[derive(Clone, Copy, Default)]
struct Bucket {
    failures: u32,
    /// When the last forgiveness step was taken (or the first failure).
    since: u32,
}

impl Bucket {
    fn new(now: u32) -> Self {
        Bucket {
            failures: 0,
            since: now,
        }
    }

    /// Forgiveness steps due at `now`.
    fn steps(&self, now: u32) -> u32 {
        now.saturating_sub(self.since) / DECAY
    }

    fn current(&self, now: u32) -> u32 {
        self.failures.saturating_sub(self.steps(now))
    }

    /// Apply the forgiveness due, keeping the partial interval.
    fn settle(&mut self, now: u32) {
        let steps = self.steps(now);
        if steps >= self.failures {
            self.failures = 0;
            self.since = now;
        } else {
            self.failures -= steps;
            self.since += DECAY * steps;
        }
    }

    fn bump(&mut self, now: u32) {
        self.settle(now);
        self.failures = self.failures.saturating_add(1);
    }
}

/// The address a limit applies to: an IPv4 address, or an IPv6 /64 (one
/// host's, or one customer's, usual allocation). IPv4 addresses are kept as
/// the /64 of their IPv4-mapped form, which no real IPv6 network uses.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Source(u64);

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        let v4 = |a: std::net::Ipv4Addr| Source(0xffff_0000_0000 | u64::from(u32::from(a)));
        match ip {
            IpAddr::V4(a) => v4(a),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(a) => v4(a),
                None => Source((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

struct IpState {
    failures: Bucket,
    /// Attempts being evaluated now: counted before they are evaluated.
    in_flight: u32,
}

#[derive(Default)]
struct AccountState {
    failures: Bucket,
    /// Spare evaluations while the account is over its budget, for
    /// addresses that have not failed against it (refilled one per DECAY).
    spare: Bucket,
    in_flight: u32,
    /// Addresses this account logged in from, and when.
    known: Vec<(Source, u32)>,
    /// Addresses that failed against this account, and when (only while
    /// it has failures).
    // Boxed: one pointer in every account's entry instead of a map.
    #[allow(clippy::box_collection)]
    failed_from: Option<Box<HashMap<Source, u32>>>,
}

impl AccountState {
    fn forgettable(&self, now: u32) -> bool {
        self.in_flight == 0
            && self.failures.current(now) == 0
            && self.spare.current(now) == 0
            && self
                .known
                .iter()
                .all(|(_, at)| now.saturating_sub(*at) > 7 * 86_400)
    }
}

#[derive(Default)]
struct Tables {
    ips: HashMap<Source, IpState>,
    accounts: HashMap<Box<str>, AccountState>,
    /// Sizes at which the tables are next swept (at least twice what a
    /// sweep left, so sweeping stays cheap when little can be forgotten).
    ips_sweep_at: usize,
    accounts_sweep_at: usize,
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
    epoch: Instant,
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
    account: Option<Box<str>>,
    slot: Slot,
    settled: bool,
}

impl AuthThrottle {
    pub fn new(ip_free: u32, account_free: u32) -> Self {
        AuthThrottle {
            ip_free,
            account_free,
            epoch: Instant::now(),
            tables: Mutex::new(Tables::default()),
        }
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seconds on the throttle's clock.
    fn now(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// A login attempt from `ip` is about to start.
    pub fn begin(&self, ip: IpAddr) -> Result<Attempt<'_>, Throttled> {
        let now = self.now();
        let source = Source::from(ip);
        let mut t = self.tables();
        if t.ips.len() > MAX_IPS.max(t.ips_sweep_at) {
            t.ips
                .retain(|_, s| s.in_flight > 0 || s.failures.current(now) > 0);
            t.ips_sweep_at = t.ips.len() * 2;
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
        let now = th.now();
        let mut t = th.tables();
        if t.accounts.len() > MAX_ACCOUNTS.max(t.accounts_sweep_at) {
            t.accounts.retain(|_, a| !a.forgettable(now));
            t.accounts_sweep_at = t.accounts.len() * 2;
        }
        let a = t
            .accounts
            .entry(account.into())
            .or_insert_with(|| AccountState {
                failures: Bucket::new(now),
                spare: Bucket::new(now),
                ..Default::default()
            });
        a.known
            .retain(|(_, at)| now.saturating_sub(*at) < KNOWN_FOR);
        if let Some(f) = &mut a.failed_from {
            f.retain(|_, at| now.saturating_sub(*at) < DECAY * th.account_free.max(1));
        }
        let failed_here = a
            .failed_from
            .as_ref()
            .is_some_and(|f| f.contains_key(&self.source));
        self.slot = if a.failures.current(now).saturating_add(a.in_flight) < th.account_free {
            a.in_flight += 1;
            Slot::Normal
        } else if a.known.iter().any(|(s, _)| *s == self.source) {
            Slot::Known
        } else if !failed_here
            && a.spare.current(now) < th.account_free.saturating_mul(SPARE_FACTOR)
        {
            a.spare.bump(now);
            Slot::Spare
        } else {
            return Err(Throttled::Account);
        };
        self.account = Some(account.into());
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
        let now = self.throttle.now();
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
            a.failed_from = None;
            if self.slot == Slot::Spare {
                a.spare.failures = a.spare.failures.saturating_sub(1);
            }
            a.known.retain(|(s, _)| *s != self.source);
            if a.known.len() >= MAX_KNOWN {
                a.known.remove(0);
            }
            a.known.push((self.source, now));
            a.known.shrink_to_fit();
        } else {
            a.failures.bump(now);
            let f = a.failed_from.get_or_insert_with(Default::default);
            if f.len() >= MAX_FAILED_FROM {
                f.clear();
            }
            f.insert(self.source, now);
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

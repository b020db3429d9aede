//! The message archive in sled: one tree, `archive`.
//!
//! Keys (JIDs contain no NUL byte):
//! - `L` conversation `\0` id → the message (one log per conversation;
//!   a one-to-one conversation is `p` + the two bare JIDs in order,
//!   separated by NUL). The value is a header byte saying which of the two
//!   parties' views hold the message (bit 0: the first, bit 1: the
//!   second), then from and to (each a 16-bit length and the bytes), then
//!   the message's XML.
//! - `U` user `\0` id → the other party's bare JID: each user's time
//!   index, which answers queries without `with` and holds the user's view.
//! - `M` `hwm` → a high-water mark of the id clock.
//!
//! A message larger than 32 KiB is kept out of the tree, in a file of its
//! own under `archive/` in the data directory (named by its id, written
//! by the sender's task before its record is queued, synced by the next
//! `sync` with the tree), and its
//! record says so (bit 7 of the header). sled keeps up to 16 entries in a
//! leaf and rewrites leaves as they change: large values inside it would
//! be copied over and over, and one user's flood of large messages would
//! slow everyone's archive.
//!
//! Writes go through one writer thread: a message's entries are queued
//! (bounded: a full queue makes writers wait) and the thread inserts them,
//! so the async workers never wait for sled. Plain inserts, not a sled
//! batch: each `apply_batch` writes its own manifest to sled's log and
//! costs several times the inserts themselves. A crash can then leave an
//! index entry without its log entry (or the reverse) for a message that
//! was never acknowledged; reads skip such entries. A barrier through the same
//! queue lets a query see everything appended before it, and a XEP-0198
//! acknowledgement wait for it to be on disk.
//!
//! Ids are microseconds since the Unix epoch, made unique by taking the
//! next microsecond when two messages come in the same one. The clock
//! never goes back across restarts: a mark some seconds ahead of the last
//! id is kept on disk, and the clock starts after it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot};

use xmpp_parsers::jid::BareJid;

use super::sled::{e, SledStore};
use super::{ArchivePage, ArchiveQuery, ArchiveStore, ArchiveWrite, Archived, BoxFuture};
use super::{StoreError, StoreResult};

const HWM_KEY: &[u8] = b"Mhwm";
/// How far ahead of the ids the mark on disk is kept (microseconds): after
/// a restart ids (and the time they stand for) are at most this far ahead
/// of the clock, and the mark is written once per such interval.
const HWM_AHEAD: u64 = 2_000_000;

/// Entries of one message, or a barrier.
enum Job {
    Write(Vec<(Vec<u8>, Vec<u8>)>),
    Barrier(oneshot::Sender<()>),
}

/// Jobs waiting for the writer thread at most.
const QUEUE: usize = 8192;
/// Most jobs applied as one batch.
const MAX_GROUP: usize = 1024;

pub(crate) struct Writer {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Writer {
    pub(crate) fn start(tree: &sled::Tree) -> StoreResult<Writer> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let tree = tree.clone();
        let thread = std::thread::Builder::new()
            .name("confab-archive".into())
            .spawn(move || write_loop(tree, rx))
            .map_err(e)?;
        Ok(Writer {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    fn sender(&self) -> StoreResult<mpsc::Sender<Job>> {
        self.tx
            .lock()
            .map_err(|_| StoreError("archive writer lock poisoned".into()))?
            .clone()
            .ok_or_else(|| StoreError("store closed".into()))
    }

    async fn send(&self, job: Job) -> StoreResult<()> {
        self.sender()?
            .send(job)
            .await
            .map_err(|_| StoreError("archive writer stopped".into()))
    }

    /// Resolves once everything queued before is applied.
    async fn barrier(&self) -> StoreResult<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Barrier(tx)).await?;
        rx.await
            .map_err(|_| StoreError("archive writer stopped".into()))
    }

    /// Stop the thread once it applied what is queued.
    pub(crate) fn stop(&self) {
        if let Ok(mut t) = self.tx.lock() {
            t.take();
        }
        if let Ok(mut t) = self.thread.lock() {
            if let Some(t) = t.take() {
                let _ = t.join();
            }
        }
    }
}

fn write_loop(tree: sled::Tree, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut barriers = Vec::new();
        let mut next = Some(first);
        let mut n = 0;
        while let Some(job) = next.take() {
            match job {
                Job::Write(kvs) => {
                    for (k, v) in kvs {
                        if let Err(err) = tree.insert(k, v) {
                            tracing::error!(error = %err, "archive write failed");
                        }
                    }
                }
                Job::Barrier(b) => barriers.push(b),
            }
            n += 1;
            if n >= MAX_GROUP {
                break;
            }
            next = rx.try_recv().ok();
        }
        for b in barriers {
            let _ = b.send(());
        }
    }
}

pub(crate) struct IdClock {
    last: AtomicU64,
    /// The mark on disk: ids stay below it until it is moved.
    hwm: AtomicU64,
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn decode_u64(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if v.len() == 8 {
        b.copy_from_slice(v);
    }
    u64::from_be_bytes(b)
}

impl IdClock {
    pub(crate) fn open(tree: &sled::Tree) -> StoreResult<IdClock> {
        let hwm = tree.get(HWM_KEY).map_err(e)?.map(|v| decode_u64(&v));
        Ok(IdClock {
            last: AtomicU64::new(hwm.unwrap_or(0)),
            hwm: AtomicU64::new(hwm.unwrap_or(0)),
        })
    }

    fn next(&self) -> u64 {
        let now = now_micros();
        let mut cur = self.last.load(Ordering::Relaxed);
        loop {
            let id = now.max(cur + 1);
            match self
                .last
                .compare_exchange_weak(cur, id, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return id,
                Err(c) => cur = c,
            }
        }
    }
}

/// The log prefix of the conversation of a pair.
fn pair_key(a: &BareJid, b: &BareJid) -> Vec<u8> {
    let (x, y) = if a.as_str() <= b.as_str() {
        (a, b)
    } else {
        (b, a)
    };
    let mut k = Vec::with_capacity(x.as_str().len() + y.as_str().len() + 4);
    k.push(b'L');
    k.push(b'p');
    k.extend_from_slice(x.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(y.as_str().as_bytes());
    k.push(0);
    k
}

/// The view bit of `user` in the pair (a, b).
fn owner_bit(user: &BareJid, a: &BareJid, b: &BareJid) -> u8 {
    let first = if a.as_str() <= b.as_str() { a } else { b };
    let second = if first == a { b } else { a };
    let mut bits = 0;
    if user == first {
        bits |= 1;
    }
    if user == second {
        bits |= 2;
    }
    bits
}

fn user_prefix(user: &BareJid) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.as_str().len() + 10);
    k.push(b'U');
    k.extend_from_slice(user.as_str().as_bytes());
    k.push(0);
    k
}

fn with_id(prefix: &[u8], id: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn encode_record(bits: u8, from: &str, to: &str, xml: &str) -> Vec<u8> {
    let from = &from.as_bytes()[..from.len().min(u16::MAX as usize)];
    let to = &to.as_bytes()[..to.len().min(u16::MAX as usize)];
    let mut v = Vec::with_capacity(5 + from.len() + to.len() + xml.len());
    v.push(bits);
    v.extend_from_slice(&(from.len() as u16).to_be_bytes());
    v.extend_from_slice(from);
    v.extend_from_slice(&(to.len() as u16).to_be_bytes());
    v.extend_from_slice(to);
    v.extend_from_slice(xml.as_bytes());
    v
}

struct Record<'a> {
    bits: u8,
    from: &'a [u8],
    to: &'a [u8],
    xml: &'a [u8],
}

fn decode_record(v: &[u8]) -> Option<Record<'_>> {
    let bits = *v.first()?;
    let flen = u16::from_be_bytes([*v.get(1)?, *v.get(2)?]) as usize;
    let from = v.get(3..3 + flen)?;
    let rest = v.get(3 + flen..)?;
    let tlen = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize;
    let to = rest.get(2..2 + tlen)?;
    let xml = rest.get(2 + tlen..)?;
    Some(Record {
        bits,
        from,
        to,
        xml,
    })
}

/// Messages larger than this are kept in files of their own.
const LARGE: usize = 32 * 1024;
/// Header bit: the message is in its file.
const IN_FILE: u8 = 0x80;
/// Header bits: which views hold the message.
const VIEWS: u8 = 0x03;

fn blob_path(dir: &std::path::Path, id: u64) -> std::path::PathBuf {
    dir.join(format!("{id:016x}.xml"))
}

/// Whether `full` is the address `addr` (a full JID matches exactly).
fn is_full(addr: &[u8], full: &str) -> bool {
    addr == full.as_bytes()
}

/// Where a query's candidates come from.
enum Source {
    /// The conversation's log, seen by the view bit `bit`.
    Log {
        prefix: Vec<u8>,
        bit: u8,
        full: Option<String>,
    },
    /// The user's time index.
    Index { prefix: Vec<u8> },
}

/// The archive tree (and the directory of large messages), for reads that
/// run off the async workers.
struct Reader(sled::Tree, std::sync::Arc<std::path::PathBuf>);

impl Reader {
    fn archived(&self, id: u64, r: &Record<'_>) -> Archived {
        let xml = if r.bits & IN_FILE != 0 {
            match std::fs::read(blob_path(&self.1, id)) {
                Ok(v) => String::from_utf8_lossy(&v).into_owned(),
                Err(err) => {
                    tracing::error!(error = %err, id, "an archived message's file is unreadable");
                    String::new()
                }
            }
        } else {
            String::from_utf8_lossy(r.xml).into_owned()
        };
        Archived {
            id,
            from: String::from_utf8_lossy(r.from).into_owned(),
            to: String::from_utf8_lossy(r.to).into_owned(),
            xml,
        }
    }

    /// The message `id` as `user` sees it, through the user's index.
    fn fetch_via_index(
        &self,
        user: &BareJid,
        id: u64,
        with: &[u8],
    ) -> StoreResult<Option<Archived>> {
        let Ok(with) = BareJid::new(&String::from_utf8_lossy(with)) else {
            return Ok(None);
        };
        let prefix = pair_key(user, &with);
        let bit = owner_bit(user, user, &with);
        let Some(v) = self.0.get(with_id(&prefix, id)).map_err(e)? else {
            return Ok(None);
        };
        Ok(decode_record(&v)
            .filter(|r| r.bits & bit != 0)
            .map(|r| self.archived(id, &r)))
    }

    /// Candidate ids in [lo, hi] in order (reversed with `rev`), each
    /// given to `f` with the value under it; `f` returns `false` to stop.
    fn walk(
        &self,
        prefix: &[u8],
        lo: u64,
        hi: u64,
        rev: bool,
        mut f: impl FnMut(u64, &[u8]) -> bool,
    ) -> StoreResult<()> {
        if lo > hi {
            return Ok(());
        }
        let range = self.0.range(with_id(prefix, lo)..=with_id(prefix, hi));
        let mut step = |kv: sled::Result<(sled::IVec, sled::IVec)>| -> StoreResult<bool> {
            let (k, v) = kv.map_err(e)?;
            let id = decode_u64(k.get(prefix.len()..).unwrap_or_default());
            Ok(f(id, &v))
        };
        if rev {
            for kv in range.rev() {
                if !step(kv)? {
                    break;
                }
            }
        } else {
            for kv in range {
                if !step(kv)? {
                    break;
                }
            }
        }
        Ok(())
    }

    fn run_query(&self, q: &ArchiveQuery) -> StoreResult<ArchivePage> {
        let user = q
            .user
            .clone()
            .ok_or_else(|| StoreError("an archive query needs a user".into()))?;
        let source = match &q.with {
            Some(with) => Source::Log {
                prefix: pair_key(&user, with),
                bit: owner_bit(&user, &user, with),
                full: q.with_full.clone(),
            },
            None => Source::Index {
                prefix: user_prefix(&user),
            },
        };
        let lo = q.start.unwrap_or(0);
        let hi = q.end.unwrap_or(u64::MAX - 1);
        // Whether a candidate is in the result set (and the message, when
        // `fetch`).
        let matches = |id: u64, v: &[u8], fetch: bool| -> StoreResult<Option<Option<Archived>>> {
            match &source {
                Source::Log { bit, full, .. } => {
                    let Some(r) = decode_record(v) else {
                        return Ok(None);
                    };
                    if r.bits & bit == 0 {
                        return Ok(None);
                    }
                    if let Some(f) = full {
                        if !is_full(r.from, f) && !is_full(r.to, f) {
                            return Ok(None);
                        }
                    }
                    Ok(Some(fetch.then(|| self.archived(id, &r))))
                }
                Source::Index { .. } => {
                    if !fetch {
                        return Ok(Some(None));
                    }
                    Ok(self.fetch_via_index(&user, id, v)?.map(Some))
                }
            }
        };
        let prefix = match &source {
            Source::Log { prefix, .. } | Source::Index { prefix } => prefix.clone(),
        };
        if let Some(ids) = &q.ids {
            let mut ids: Vec<u64> = ids
                .iter()
                .copied()
                .filter(|i| *i >= lo && *i <= hi)
                .collect();
            ids.sort_unstable();
            ids.dedup();
            let mut items = Vec::new();
            for id in ids {
                let Some(v) = self.0.get(with_id(&prefix, id)).map_err(e)? else {
                    continue;
                };
                if let Some(Some(a)) = matches(id, &v, true)? {
                    items.push(a);
                }
            }
            let count = items.len();
            let skip = if q.from_end {
                count.saturating_sub(q.max)
            } else {
                0
            };
            items.drain(..skip);
            items.truncate(q.max);
            return Ok(ArchivePage {
                count,
                complete: items.len() == count,
                first_index: skip,
                items,
            });
        }
        // How many of the result set lie in [from, to].
        let count_in = |from: u64, to: u64| -> StoreResult<usize> {
            let mut n = 0usize;
            let mut err = None;
            self.walk(&prefix, from, to, false, |id, v| {
                match matches(id, v, false) {
                    Ok(Some(_)) => {
                        n += 1;
                        true
                    }
                    Ok(None) => true,
                    Err(x) => {
                        err = Some(x);
                        false
                    }
                }
            })?;
            err.map_or(Ok(n), Err)
        };
        let count = count_in(lo, hi)?;
        let plo = q.after.map_or(lo, |a| lo.max(a.saturating_add(1)));
        let phi = q.before.map_or(hi, |b| hi.min(b.saturating_sub(1)));
        let mut items = Vec::new();
        let mut more = false;
        let mut skip = if q.from_end { 0 } else { q.index.unwrap_or(0) };
        let mut err = None;
        if q.before == Some(0) {
            // Before the first possible id: nothing.
        } else {
            self.walk(&prefix, plo, phi, q.from_end, |id, v| {
                match matches(id, v, items.len() < q.max && skip == 0) {
                    Ok(Some(a)) => {
                        if skip > 0 {
                            skip -= 1;
                            return true;
                        }
                        if items.len() >= q.max {
                            more = true;
                            return false;
                        }
                        if let Some(a) = a {
                            items.push(a);
                        }
                        true
                    }
                    Ok(None) => true,
                    Err(x) => {
                        err = Some(x);
                        false
                    }
                }
            })?;
        }
        if let Some(x) = err {
            return Err(x);
        }
        if q.from_end {
            items.reverse();
        }
        // Where the page starts in the result set.
        let first_index = match items.first() {
            Some(first) => count_in(lo, first.id.saturating_sub(1))?,
            None => count,
        };
        Ok(ArchivePage {
            items,
            complete: !more,
            count,
            first_index,
        })
    }
}

impl SledStore {
    pub(super) async fn archive_writer_barrier(&self) -> StoreResult<()> {
        self.archive_writer.barrier().await
    }

    /// An account is deleted: its view goes, and messages no view holds
    /// any more are removed from the logs.
    pub(super) fn remove_archive_view(&self, user: &BareJid) -> StoreResult<()> {
        let prefix = user_prefix(user);
        let mut batch = sled::Batch::default();
        for kv in self.archive.scan_prefix(&prefix) {
            let (k, with) = kv.map_err(e)?;
            batch.remove(k.clone());
            let id = decode_u64(k.get(prefix.len()..).unwrap_or_default());
            let Ok(with) = BareJid::new(&String::from_utf8_lossy(&with)) else {
                continue;
            };
            let lp = pair_key(user, &with);
            let lk = with_id(&lp, id);
            let bit = owner_bit(user, user, &with);
            if let Some(v) = self.archive.get(&lk).map_err(e)? {
                let head = v.first().copied().unwrap_or(0);
                let rest = head & !bit;
                if rest & VIEWS == 0 {
                    batch.remove(lk);
                    if head & IN_FILE != 0 {
                        let _ = std::fs::remove_file(blob_path(&self.archive_files, id));
                    }
                } else {
                    let mut nv = v.to_vec();
                    nv[0] = rest;
                    batch.insert(lk, nv);
                }
            }
        }
        self.archive.apply_batch(batch).map_err(e)
    }
}

impl ArchiveStore for SledStore {
    fn next_id(&self) -> u64 {
        self.archive_clock.next()
    }

    fn append(&self, w: ArchiveWrite) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let (a, b) = (&w.pair.0, &w.pair.1);
            let mut bits = 0u8;
            for o in &w.owners {
                bits |= owner_bit(o, a, b);
            }
            if bits == 0 {
                return Ok(());
            }
            let prefix = pair_key(a, b);
            let mut kvs = Vec::with_capacity(4);
            let record = if w.xml.len() > LARGE {
                let path = blob_path(&self.archive_files, w.id);
                let xml = w.xml.clone().into_bytes();
                let p = path.clone();
                tokio::task::spawn_blocking(move || std::fs::write(&p, &xml))
                    .await
                    .map_err(e)?
                    .map_err(e)?;
                // Synced with the next `sync`, like the tree.
                self.archive_unsynced
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(path);
                encode_record(bits | IN_FILE, &w.from, &w.to, "")
            } else {
                encode_record(bits, &w.from, &w.to, &w.xml)
            };
            kvs.push((with_id(&prefix, w.id), record));
            for o in &w.owners {
                let other = if o == a { b } else { a };
                kvs.push((
                    with_id(&user_prefix(o), w.id),
                    other.as_str().as_bytes().to_vec(),
                ));
                if a == b {
                    break;
                }
            }
            let clock = &self.archive_clock;
            let mark = clock.hwm.load(Ordering::Acquire);
            if w.id >= mark {
                let next = w.id + HWM_AHEAD;
                if clock
                    .hwm
                    .compare_exchange(mark, next, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    kvs.push((HWM_KEY.to_vec(), next.to_be_bytes().to_vec()));
                }
            }
            self.archive_writer.send(Job::Write(kvs)).await
        })
    }

    fn barrier(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.archive_writer.barrier())
    }

    fn sync(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            self.archive_writer.barrier().await?;
            let files = std::mem::take(
                &mut *self
                    .archive_unsynced
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            if !files.is_empty() {
                let dir = self.archive_files.clone();
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    for f in files {
                        match std::fs::File::open(&f) {
                            Ok(f) => f.sync_all()?,
                            // Reclaimed meanwhile.
                            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                            Err(err) => return Err(err),
                        }
                    }
                    std::fs::File::open(&*dir)?.sync_all()
                })
                .await
                .map_err(e)?
                .map_err(e)?;
            }
            self.commit().await
        })
    }

    fn query(&self, q: ArchiveQuery) -> BoxFuture<'_, StoreResult<ArchivePage>> {
        // Reads of a few hundred entries: quick, but a page walk of a
        // large archive should not hold an async worker either.
        let reader = Reader(self.archive.clone(), self.archive_files.clone());
        Box::pin(async move {
            self.archive_writer.barrier().await?;
            tokio::task::spawn_blocking(move || reader.run_query(&q))
                .await
                .map_err(|err| StoreError(format!("archive read failed: {err}")))?
        })
    }

    fn contains(&self, user: &BareJid, id: u64) -> StoreResult<bool> {
        self.archive
            .contains_key(with_id(&user_prefix(user), id))
            .map_err(e)
    }

    fn bounds(&self, user: &BareJid) -> StoreResult<Option<(u64, u64)>> {
        let prefix = user_prefix(user);
        let first = self.archive.scan_prefix(&prefix).next();
        let last = self.archive.scan_prefix(&prefix).next_back();
        match (first, last) {
            (Some(f), Some(l)) => {
                let (fk, _) = f.map_err(e)?;
                let (lk, _) = l.map_err(e)?;
                Ok(Some((
                    decode_u64(fk.get(prefix.len()..).unwrap_or_default()),
                    decode_u64(lk.get(prefix.len()..).unwrap_or_default()),
                )))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> BareJid {
        BareJid::new(s).unwrap()
    }

    async fn write(s: &SledStore, from: &str, to: &str, owners: &[&str], body: &str) -> u64 {
        let id = s.next_id();
        s.append(ArchiveWrite {
            id,
            pair: (jid(from), jid(to)),
            owners: owners.iter().map(|o| jid(o)).collect(),
            from: format!("{from}/r"),
            to: to.to_string(),
            xml: format!("<message><body>{body}</body></message>"),
        })
        .await
        .unwrap();
        id
    }

    fn q(user: &str) -> ArchiveQuery {
        ArchiveQuery {
            user: Some(jid(user)),
            max: 10,
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn views_paging_and_reclaim() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let (a, b, c) = ("a@x", "b@x", "c@x");
        let mut ab = Vec::new();
        for i in 0..25 {
            ab.push(write(&s, a, b, &[a, b], &format!("ab{i}")).await);
        }
        let only_a = write(&s, a, c, &[a], "ac").await;
        // b's view of a.
        let mut q1 = q(b);
        q1.with = Some(jid(a));
        let p = s.query(q1.clone()).await.unwrap();
        assert_eq!(p.count, 25);
        assert_eq!(p.items.len(), 10);
        assert!(!p.complete);
        assert_eq!(p.items[0].id, ab[0]);
        // The last page, from the end.
        q1.from_end = true;
        let p = s.query(q1.clone()).await.unwrap();
        assert_eq!(p.items.last().unwrap().id, ab[24]);
        assert_eq!(p.first_index, 15);
        // Before an id.
        q1.before = Some(ab[5]);
        let p = s.query(q1.clone()).await.unwrap();
        assert_eq!(p.items.len(), 5);
        assert!(p.complete);
        // c never archived it: c's archive is empty; a has 26.
        assert_eq!(s.query(q(c)).await.unwrap().count, 0);
        let mut qa = q(a);
        qa.after = Some(ab[20]);
        let p = s.query(qa).await.unwrap();
        assert_eq!(p.count, 26);
        assert_eq!(p.items.len(), 5);
        assert_eq!(p.items[4].id, only_a);
        assert_eq!(p.first_index, 21);
        // Full JID filter.
        let mut qf = q(b);
        qf.with = Some(jid(a));
        qf.with_full = Some("a@x/other".into());
        assert_eq!(s.query(qf.clone()).await.unwrap().count, 0);
        qf.with_full = Some("a@x/r".into());
        assert_eq!(s.query(qf).await.unwrap().count, 25);
        // ids
        let mut qi = q(b);
        qi.ids = Some(vec![ab[3], only_a, ab[1]]);
        let p = s.query(qi).await.unwrap();
        assert_eq!(
            p.items.iter().map(|i| i.id).collect::<Vec<_>>(),
            vec![ab[1], ab[3]]
        );
        assert_eq!(s.bounds(&jid(a)).unwrap(), Some((ab[0], only_a)));
        s.barrier().await.unwrap();
        // a goes: b keeps the pair's messages, a-c is reclaimed.
        s.remove_archive_view(&jid(a)).unwrap();
        assert_eq!(s.query(q(a)).await.unwrap().count, 0);
        assert_eq!(s.query(q(b)).await.unwrap().count, 25);
        let left = s.archive.scan_prefix(b"L").count();
        assert_eq!(left, 25);
        // A large message lives in a file, and goes with the last view.
        let big = "x".repeat(40_000);
        let big_id = write(&s, b, c, &[b], &big).await;
        let mut qb = q(b);
        qb.ids = Some(vec![big_id]);
        let p = s.query(qb).await.unwrap();
        assert!(p.items[0].xml.contains(&big));
        assert_eq!(
            std::fs::read_dir(dir.path().join("archive"))
                .unwrap()
                .count(),
            1
        );
        s.remove_archive_view(&jid(b)).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("archive"))
                .unwrap()
                .count(),
            0
        );
        // Ids keep growing across a reopen.
        let last = s.next_id();
        drop(s);
        let s = SledStore::open(dir.path()).unwrap();
        assert!(s.next_id() > last);
    }
}

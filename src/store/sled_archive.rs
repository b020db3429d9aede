//! The message archive: messages in an append-only log of their own
//! (`archive_log.rs`), indexes in memory and, in chunks, in sled.
//!
//! Every message is one record in the log. Two kinds of index point into
//! it, each a list of entries (id, place in the log, view bits) in id
//! order under a prefix:
//! - the conversation's log, `Lp` + the two bare JIDs in order, each
//!   followed by NUL (JIDs contain no NUL byte). Its entries say which of
//!   the two parties' views hold the message (bit 0: the first, bit 1:
//!   the second);
//! - each user's time index, `U` + the user's bare JID + NUL: the user's
//!   view, which answers queries without `with`.
//!
//! New entries go to an in-memory table. Once it holds [`FREEZE_ENTRIES`]
//! it is frozen and an index thread writes it to sled, in the tree
//! `archive_index`, as chunks: key prefix + the chunk's first id, value up
//! to [`CHUNK`] packed entries; the chunks of a prefix never overlap.
//! Then it records how far into the log the chunks reach (`Mckpt`). After
//! a crash, the records after that mark are read again into the table:
//! the log is the truth, the chunks a summary of it. So a message costs
//! one append to a file buffer and a few pushes in memory; sled sees a
//! few writes per chunk, not three per message.
//!
//! One writer thread appends: senders queue their messages (bounded: a
//! full queue makes them wait) and never wait for the disk; the thread
//! writes each batch to the file with one system call, then publishes its
//! entries, and looks for the next batch after half a millisecond (so
//! that under load senders do not wake it for every message). A barrier through the same queue lets a query see everything
//! appended before it; `sync` then makes it durable (the log's
//! `fdatasync` and sled's flush, in the store's group commit).
//!
//! Ids are microseconds since the Unix epoch, made unique by taking the
//! next microsecond when two messages come in the same one. The clock
//! never goes back across restarts: a mark some seconds ahead of the last
//! id is kept on disk, and the clock starts after it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{mpsc, oneshot};

use xmpp_parsers::jid::BareJid;

use super::archive_log::{self, Loc, LogFiles, LogWriter, Pos, Rec, COPY};
use super::sled::{e, SledStore};
use super::{ArchivePage, ArchiveQuery, ArchiveStore, ArchiveWrite, Archived, BoxFuture, Hide};
use super::{StoreError, StoreResult};

const HWM_KEY: &[u8] = b"Mhwm";
const CKPT_KEY: &[u8] = b"Mckpt";
/// A compaction under way: the segment copied and the copy's segment.
const COMPACT_KEY: &[u8] = b"Mcompact";
/// Dead bytes of a segment: `D` + segment number → u64 (both big endian).
const DEAD_PREFIX: &[u8] = b"D";
/// A segment of compaction copies: `K` + segment number.
const COPY_PREFIX: &[u8] = b"K";
/// The dead-bytes mark of a segment whose records were all copied: its
/// file is to be deleted.
const GONE: u64 = u64::MAX;
/// How far ahead of the ids the mark on disk is kept (microseconds): after
/// a restart ids (and the time they stand for) are at most this far ahead
/// of the clock, and the mark is written once per such interval.
const HWM_AHEAD: u64 = 2_000_000;

/// Entries the in-memory table holds before it is written to sled (about
/// 30 bytes each in memory; a third of a message's records to read again
/// after a crash).
const FREEZE_ENTRIES: usize = 150_000;
/// Entries in a chunk at most.
const CHUNK: usize = 128;
/// Bytes of an entry in a chunk.
const ENTRY: usize = 21;

/// Jobs waiting for the writer thread at most.
const QUEUE: usize = 8192;
/// Most jobs handled as one batch.
const MAX_GROUP: usize = 1024;
/// How long the writer waits for more jobs after a batch before it
/// sleeps until the next one: what a barrier (an acknowledgement, a
/// query) may wait more.
const LINGER: std::time::Duration = std::time::Duration::from_micros(500);

/// Header bits: which views hold the message.
const VIEWS: u8 = 0x03;

/// One index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    id: u64,
    loc: Loc,
    bits: u8,
}

impl Entry {
    fn put(&self, v: &mut Vec<u8>) {
        v.extend_from_slice(&self.id.to_be_bytes());
        v.extend_from_slice(&self.loc.seg.to_be_bytes());
        v.extend_from_slice(&self.loc.off.to_be_bytes());
        v.extend_from_slice(&self.loc.len.to_be_bytes());
        v.push(self.bits);
    }

    fn get(b: &[u8]) -> Option<Entry> {
        let u32_at = |i: usize| -> Option<u32> {
            Some(u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?))
        };
        Some(Entry {
            id: u64::from_be_bytes(b.get(..8)?.try_into().ok()?),
            loc: Loc {
                seg: u32_at(8)?,
                off: u32_at(12)?,
                len: u32_at(16)?,
            },
            bits: *b.get(20)?,
        })
    }
}

fn decode_chunk(v: &[u8]) -> Vec<Entry> {
    v.chunks_exact(ENTRY).filter_map(Entry::get).collect()
}

fn encode_chunk(entries: &[Entry]) -> Vec<u8> {
    let mut v = Vec::with_capacity(entries.len() * ENTRY);
    for en in entries {
        en.put(&mut v);
    }
    v
}

/// Index entries not yet in sled.
#[derive(Default)]
struct Mem {
    map: HashMap<Vec<u8>, Vec<Entry>>,
    entries: usize,
    /// The log position after the last record indexed here.
    end: Pos,
}

impl Mem {
    fn push(&mut self, prefix: &[u8], en: Entry) {
        match self.map.get_mut(prefix) {
            Some(v) => v.push(en),
            None => {
                self.map.insert(prefix.to_vec(), vec![en]);
            }
        }
        self.entries += 1;
    }

    /// The entries of a message: in its conversation's log and in the
    /// view of each party whose bit is set.
    fn index(&mut self, loc: Loc, id: u64, bits: u8, a: &[u8], b: &[u8]) {
        let conv = pair_key_bytes(a, b);
        self.push(&conv, Entry { id, loc, bits });
        if bits & 1 != 0 {
            self.push(&user_prefix_bytes(a), Entry { id, loc, bits: 1 });
        }
        if bits & 2 != 0 && a != b {
            self.push(&user_prefix_bytes(b), Entry { id, loc, bits: 2 });
        }
    }
}

struct MemState {
    active: Mem,
    /// Tables being written to sled, oldest first.
    frozen: Vec<Arc<Mem>>,
}

/// The index: chunks in sled and the tables in memory.
struct Index {
    tree: sled::Tree,
    mem: RwLock<MemState>,
}

fn chunk_key(prefix: &[u8], id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

impl Index {
    fn read_mem(&self) -> std::sync::RwLockReadGuard<'_, MemState> {
        self.mem.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_mem(&self) -> std::sync::RwLockWriteGuard<'_, MemState> {
        self.mem.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The in-memory entries under `prefix` in [lo, hi], by id.
    fn mem_entries(&self, prefix: &[u8], lo: u64, hi: u64) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::new();
        {
            let m = self.read_mem();
            for mem in m.frozen.iter().map(|f| &**f).chain([&m.active]) {
                if let Some(v) = mem.map.get(prefix) {
                    out.extend(v.iter().filter(|en| en.id >= lo && en.id <= hi));
                }
            }
        }
        out.sort_by_key(|en| en.id);
        out.dedup_by_key(|en| en.id);
        out
    }

    /// The first chunk key to read for entries from `lo` on: the chunk
    /// that may hold `lo`.
    fn start_key(&self, prefix: &[u8], lo: u64) -> StoreResult<Vec<u8>> {
        let k = chunk_key(prefix, lo);
        Ok(match self.tree.range(..=k.clone()).next_back() {
            Some(kv) => {
                let (ck, _) = kv.map_err(e)?;
                if ck.starts_with(prefix) {
                    ck.to_vec()
                } else {
                    k
                }
            }
            None => k,
        })
    }

    /// The entries under `prefix` in [lo, hi] in id order (reversed with
    /// `rev`), each given to `f`, which returns `false` to stop.
    fn walk(
        &self,
        prefix: &[u8],
        lo: u64,
        hi: u64,
        rev: bool,
        mut f: impl FnMut(&Entry) -> StoreResult<bool>,
    ) -> StoreResult<()> {
        if lo > hi {
            return Ok(());
        }
        let mem = self.mem_entries(prefix, lo, hi);
        let range = self
            .tree
            .range(self.start_key(prefix, lo)?..=chunk_key(prefix, hi));
        let chunks: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if rev {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        let mut mem_it: Box<dyn Iterator<Item = &Entry>> = if rev {
            Box::new(mem.iter().rev())
        } else {
            Box::new(mem.iter())
        };
        let first = |x: u64, y: u64| if rev { x > y } else { x < y };
        let mut next_mem = mem_it.next();
        for kv in chunks {
            let (_, v) = kv.map_err(e)?;
            let mut entries = decode_chunk(&v);
            if rev {
                entries.reverse();
            }
            for c in entries.iter().filter(|c| c.id >= lo && c.id <= hi) {
                while let Some(m) = next_mem {
                    if first(m.id, c.id) {
                        if !f(m)? {
                            return Ok(());
                        }
                    } else if m.id != c.id {
                        break;
                    }
                    next_mem = mem_it.next();
                }
                if !f(c)? {
                    return Ok(());
                }
            }
        }
        while let Some(m) = next_mem {
            if !f(m)? {
                return Ok(());
            }
            next_mem = mem_it.next();
        }
        Ok(())
    }

    /// The entry `id` under `prefix`.
    fn find(&self, prefix: &[u8], id: u64) -> StoreResult<Option<Entry>> {
        let mut found = None;
        self.walk(prefix, id, id, false, |en| {
            found = Some(*en);
            Ok(false)
        })?;
        Ok(found)
    }

    /// Add `entries` (sorted, one prefix) to the prefix's chunks.
    fn merge(&self, prefix: &[u8], entries: &[Entry]) -> StoreResult<()> {
        let mut rest = entries;
        let last = self
            .tree
            .scan_prefix(prefix)
            .next_back()
            .transpose()
            .map_err(e)?;
        let mut last = last.map(|(k, v)| (k.to_vec(), decode_chunk(&v)));
        if let Some((_, lv)) = &last {
            let max = lv.last().map_or(0, |en| en.id);
            // Ids at or before the last chunk's end (a crash replayed them,
            // or they were queued late): into the chunk each belongs to.
            let cut = rest.partition_point(|en| en.id <= max);
            for en in &rest[..cut] {
                self.merge_one(prefix, *en)?;
            }
            rest = &rest[cut..];
            if !rest.is_empty() && cut > 0 {
                last = self
                    .tree
                    .scan_prefix(prefix)
                    .next_back()
                    .transpose()
                    .map_err(e)?
                    .map(|(k, v)| (k.to_vec(), decode_chunk(&v)));
            }
        }
        if rest.is_empty() {
            return Ok(());
        }
        // Fill the last chunk, then new ones.
        if let Some((k, mut lv)) = last {
            if lv.len() < CHUNK {
                let take = (CHUNK - lv.len()).min(rest.len());
                lv.extend_from_slice(&rest[..take]);
                self.tree.insert(k, encode_chunk(&lv)).map_err(e)?;
                rest = &rest[take..];
            }
        }
        for c in rest.chunks(CHUNK) {
            self.tree
                .insert(chunk_key(prefix, c[0].id), encode_chunk(c))
                .map_err(e)?;
        }
        Ok(())
    }

    /// Put one entry into the chunk it belongs to (the last chunk that
    /// starts at or before it, or the first).
    fn merge_one(&self, prefix: &[u8], en: Entry) -> StoreResult<()> {
        let k = chunk_key(prefix, en.id);
        let holder = match self.tree.range(..=k).next_back().transpose().map_err(e)? {
            Some((ck, v)) if ck.starts_with(prefix) => Some((ck, v)),
            _ => self
                .tree
                .scan_prefix(prefix)
                .next()
                .transpose()
                .map_err(e)?,
        };
        let Some((ck, v)) = holder else {
            self.tree
                .insert(chunk_key(prefix, en.id), encode_chunk(&[en]))
                .map_err(e)?;
            return Ok(());
        };
        let mut entries = decode_chunk(&v);
        match entries.binary_search_by_key(&en.id, |x| x.id) {
            Ok(_) => return Ok(()),
            Err(i) => entries.insert(i, en),
        }
        self.put_chunk(prefix, &ck, &entries)
    }

    /// Replace the chunk at `old_key` by `entries` (keyed by their first
    /// id; removed when empty).
    fn put_chunk(&self, prefix: &[u8], old_key: &[u8], entries: &[Entry]) -> StoreResult<()> {
        let Some(first) = entries.first() else {
            self.tree.remove(old_key).map_err(e)?;
            return Ok(());
        };
        let nk = chunk_key(prefix, first.id);
        self.tree.insert(&nk, encode_chunk(entries)).map_err(e)?;
        if nk != old_key {
            self.tree.remove(old_key).map_err(e)?;
        }
        Ok(())
    }

    /// Stage in `batch` the chunk at `old_key` replaced by `entries`.
    fn stage_chunk(batch: &mut sled::Batch, prefix: &[u8], old_key: &[u8], entries: &[Entry]) {
        let Some(first) = entries.first() else {
            batch.remove(old_key);
            return;
        };
        let nk = chunk_key(prefix, first.id);
        batch.insert(nk.as_slice(), encode_chunk(entries));
        if nk != old_key {
            batch.remove(old_key);
        }
    }

    /// Edit the entries under `prefix` whose ids are in `ids`: `f` changes
    /// one and says whether it stays. The chunks rewritten go into
    /// `batch` (one prefix per batch: a second edit of the same prefix
    /// would not see the first); the entries removed are returned.
    fn edit(
        &self,
        batch: &mut sled::Batch,
        prefix: &[u8],
        ids: &BTreeSet<u64>,
        mut f: impl FnMut(&mut Entry) -> bool,
    ) -> StoreResult<Vec<Entry>> {
        let (Some(&lo), Some(&hi)) = (ids.first(), ids.last()) else {
            return Ok(Vec::new());
        };
        let mut removed = Vec::new();
        for kv in self
            .tree
            .range(self.start_key(prefix, lo)?..=chunk_key(prefix, hi))
        {
            let (k, v) = kv.map_err(e)?;
            if !k.starts_with(prefix) {
                continue;
            }
            let mut es = decode_chunk(&v);
            let mut changed = false;
            es.retain_mut(|en| {
                if !ids.contains(&en.id) {
                    return true;
                }
                changed = true;
                let keep = f(en);
                if !keep {
                    removed.push(*en);
                }
                keep
            });
            if changed {
                Self::stage_chunk(batch, prefix, &k, &es);
            }
        }
        Ok(removed)
    }

    /// Stage in `batch` the dead bytes of removed entries, added to each
    /// segment's count.
    fn stage_dead(&self, batch: &mut sled::Batch, removed: &[Entry]) -> StoreResult<()> {
        let mut dead: BTreeMap<u32, u64> = BTreeMap::new();
        for en in removed {
            *dead.entry(en.loc.seg).or_default() += u64::from(en.loc.len);
        }
        for (seg, n) in dead {
            let k = dead_key(seg);
            let cur = self.tree.get(&k).map_err(e)?.map_or(0, |v| decode_u64(&v));
            if cur != GONE {
                batch.insert(k, &cur.saturating_add(n).to_be_bytes()[..]);
            }
        }
        Ok(())
    }

    /// Dead bytes of a segment.
    fn dead(&self, seg: u32) -> StoreResult<u64> {
        Ok(self
            .tree
            .get(dead_key(seg))
            .map_err(e)?
            .map_or(0, |v| decode_u64(&v)))
    }

    /// Write a frozen table to sled, and how far it reaches.
    fn persist(&self, mem: &Mem) -> StoreResult<()> {
        for (prefix, entries) in &mem.map {
            let mut entries = entries.clone();
            entries.sort_by_key(|en| en.id);
            entries.dedup_by_key(|en| en.id);
            self.merge(prefix, &entries)?;
        }
        let mut ck = Vec::with_capacity(8);
        ck.extend_from_slice(&mem.end.seg.to_be_bytes());
        ck.extend_from_slice(&mem.end.off.to_be_bytes());
        self.tree.insert(CKPT_KEY, ck).map_err(e)?;
        Ok(())
    }
}

fn dead_key(seg: u32) -> Vec<u8> {
    let mut k = DEAD_PREFIX.to_vec();
    k.extend_from_slice(&seg.to_be_bytes());
    k
}

fn copy_key(seg: u32) -> Vec<u8> {
    let mut k = COPY_PREFIX.to_vec();
    k.extend_from_slice(&seg.to_be_bytes());
    k
}

fn seg_of_key(k: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(k.get(1..5)?.try_into().ok()?))
}

fn decode_ckpt(v: &[u8]) -> Pos {
    let at = |i: usize| {
        v.get(i..i + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_be_bytes)
    };
    Pos {
        seg: at(0),
        off: at(4),
    }
}

/// A message to append.
struct WriteJob {
    id: u64,
    bits: u8,
    a: BareJid,
    b: BareJid,
    from: String,
    to: String,
    xml: String,
    /// A new clock mark to store.
    hwm: Option<u64>,
}

enum Job {
    Write(WriteJob),
    Barrier(oneshot::Sender<StoreResult<()>>),
    /// Remove a user's view (after everything queued before).
    RemoveView(BareJid, oneshot::Sender<StoreResult<()>>),
    /// Hide messages from a user's view (after everything queued before).
    Hide(BareJid, Hide, oneshot::Sender<StoreResult<Option<usize>>>),
    /// Seal the segment being written, then reclaim what is dead.
    Roll,
}

enum IndexJob {
    Persist(Arc<Mem>),
    RemoveView(BareJid, oneshot::Sender<StoreResult<()>>),
    Hide(BareJid, Hide, oneshot::Sender<StoreResult<Option<usize>>>),
    Reclaim,
}

/// The archive of a store.
pub(crate) struct Archive {
    clock: IdClock,
    index: Arc<Index>,
    log: Arc<LogFiles>,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Archive {
    /// Open the archive: the log in `dir`, the index in `tree`; read the
    /// log's records the index does not hold yet.
    pub(crate) fn open(tree: sled::Tree, dir: &Path) -> StoreResult<Archive> {
        let (log, _) = LogFiles::open(dir)
            .map_err(|err| StoreError(format!("cannot open {}: {err}", dir.display())))?;
        // A compaction that did not finish: its copies are not indexed,
        // the old segment still is.
        if let Some(v) = tree.get(COMPACT_KEY).map_err(e)? {
            let copy = decode_ckpt(&v).off;
            log.remove_segment(copy)
                .map_err(|err| StoreError(format!("cannot remove a partial compaction: {err}")))?;
            tree.remove(COMPACT_KEY).map_err(e)?;
        }
        let ckpt = tree
            .get(CKPT_KEY)
            .map_err(e)?
            .map_or(Pos::default(), |v| decode_ckpt(&v));
        let mut active = Mem::default();
        let mut max_id = 0;
        let end = log
            .scan(ckpt, |loc, r| {
                max_id = max_id.max(r.id);
                // Copies were indexed when they were made.
                if r.bits & COPY == 0 {
                    active.index(loc, r.id, r.bits, r.a, r.b);
                }
            })
            .map_err(|err| StoreError(format!("cannot read the archive log: {err}")))?;
        active.end = end;
        if active.entries > 0 {
            tracing::info!(
                entries = active.entries,
                "archive index entries read again from the log"
            );
        }
        let clock = IdClock::open(&tree, max_id)?;
        let writer = LogWriter::create(log.clone())
            .map_err(|err| StoreError(format!("cannot start an archive segment: {err}")))?;
        let index = Arc::new(Index {
            tree,
            mem: RwLock::new(MemState {
                active,
                frozen: Vec::new(),
            }),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let (itx, irx) = std_mpsc::channel();
        // Whatever an earlier run left to reclaim.
        let _ = itx.send(IndexJob::Reclaim);
        let idx = index.clone();
        let ilog = log.clone();
        let roller = tx.downgrade();
        let index_thread = std::thread::Builder::new()
            .name("confab-archive-index".into())
            .spawn(move || index_loop(idx, ilog, irx, roller))
            .map_err(e)?;
        let idx = index.clone();
        let thread = std::thread::Builder::new()
            .name("confab-archive".into())
            .spawn(move || {
                write_loop(idx, writer, rx, &itx);
                drop(itx);
                let _ = index_thread.join();
            })
            .map_err(e)?;
        Ok(Archive {
            clock,
            index,
            log,
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The log's files, for the store's group commit.
    pub(crate) fn log(&self) -> Arc<LogFiles> {
        self.log.clone()
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

    /// Resolves once everything queued before is written (readable).
    pub(crate) async fn barrier(&self) -> StoreResult<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Barrier(tx)).await?;
        rx.await
            .map_err(|_| StoreError("archive writer stopped".into()))?
    }

    /// An account is deleted: its view goes, and the conversations' logs
    /// no longer list it as holding anything.
    pub(crate) async fn remove_view(&self, user: &BareJid) -> StoreResult<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::RemoveView(user.clone(), tx)).await?;
        rx.await
            .map_err(|_| StoreError("archive writer stopped".into()))?
    }

    /// Hide messages from a user's view: `None` when an item named is not
    /// in it (then nothing changed), else how many were hidden.
    pub(crate) async fn hide(&self, user: &BareJid, what: Hide) -> StoreResult<Option<usize>> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Hide(user.clone(), what, tx)).await?;
        rx.await
            .map_err(|_| StoreError("archive writer stopped".into()))?
    }

    /// Stop the threads once they wrote what is queued, and make it
    /// durable.
    pub(crate) fn stop(&self) {
        if let Ok(mut t) = self.tx.lock() {
            t.take();
        }
        if let Ok(mut t) = self.thread.lock() {
            if let Some(t) = t.take() {
                let _ = t.join();
            }
        }
        if let Err(err) = self.log.sync() {
            tracing::error!(error = %err, "archive log sync failed");
        }
    }
}

fn write_loop(
    index: Arc<Index>,
    mut log: LogWriter,
    mut rx: mpsc::Receiver<Job>,
    itx: &std_mpsc::Sender<IndexJob>,
) {
    let mut pending: Vec<(Loc, u64, u8, BareJid, BareJid)> = Vec::new();
    // Publish what is appended: write it to the file, then its entries.
    let publish = |log: &mut LogWriter,
                   pending: &mut Vec<(Loc, u64, u8, BareJid, BareJid)>|
     -> StoreResult<()> {
        let r = log
            .flush()
            .map_err(|err| StoreError(format!("archive write failed: {err}")));
        if r.is_err() {
            pending.clear();
        }
        let frozen = {
            let mut m = index.write_mem();
            for (loc, id, bits, a, b) in pending.drain(..) {
                m.active
                    .index(loc, id, bits, a.as_str().as_bytes(), b.as_str().as_bytes());
            }
            m.active.end = log.end();
            if m.active.entries >= FREEZE_ENTRIES {
                Some(freeze(&mut m))
            } else {
                None
            }
        };
        if let Some(f) = frozen {
            let _ = itx.send(IndexJob::Persist(f));
        }
        r
    };
    let mut lingered = None;
    loop {
        let first = match lingered.take() {
            Some(job) => job,
            None => match rx.blocking_recv() {
                Some(job) => job,
                None => break,
            },
        };
        let mut barriers = Vec::new();
        let mut remove = None;
        let mut roll = false;
        let mut failed = None;
        let mut next = Some(first);
        let mut n = 0;
        while let Some(job) = next.take() {
            match job {
                Job::Write(w) => {
                    if let Some(mark) = w.hwm {
                        if let Err(err) = index.tree.insert(HWM_KEY, &mark.to_be_bytes()[..]) {
                            failed = Some(e(err));
                        }
                    }
                    let rec = Rec {
                        id: w.id,
                        bits: w.bits,
                        a: w.a.as_str(),
                        b: w.b.as_str(),
                        from: &w.from,
                        to: &w.to,
                        xml: w.xml.as_bytes(),
                    };
                    match log.append(&rec) {
                        Ok(loc) => pending.push((loc, w.id, w.bits, w.a, w.b)),
                        Err(err) => {
                            failed = Some(StoreError(format!("archive write failed: {err}")))
                        }
                    }
                }
                Job::Barrier(b) => barriers.push(b),
                Job::RemoveView(user, reply) => {
                    remove = Some(IndexJob::RemoveView(user, reply));
                    break;
                }
                Job::Hide(user, what, reply) => {
                    remove = Some(IndexJob::Hide(user, what, reply));
                    break;
                }
                Job::Roll => {
                    roll = true;
                    break;
                }
            }
            n += 1;
            if n >= MAX_GROUP {
                break;
            }
            next = rx.try_recv().ok();
        }
        if let Err(err) = publish(&mut log, &mut pending) {
            failed = Some(err);
        }
        if let Some(err) = &failed {
            tracing::error!(error = %err, "archive write failed");
        }
        for b in barriers {
            let _ = b.send(failed.clone().map_or(Ok(()), Err));
        }
        if roll {
            // The segment is sealed; once everything in it is in sled (the
            // freeze below), it may be reclaimed.
            match log.roll() {
                Ok(()) => index.write_mem().active.end = log.end(),
                Err(err) => tracing::error!(error = %err, "archive segment roll failed"),
            }
            remove = Some(IndexJob::Reclaim);
        }
        if let Some(job) = remove {
            // Everything before goes to sled first: the removal then
            // sees all of the user's entries, and a replay after a crash
            // never brings back what it removed.
            let f = freeze(&mut index.write_mem());
            let _ = itx.send(IndexJob::Persist(f));
            let _ = itx.send(job);
        }
        // Under load more jobs come in meanwhile: taken after a short
        // sleep, they spare their senders waking this thread for each.
        std::thread::sleep(LINGER);
        match rx.try_recv() {
            Ok(job) => lingered = Some(job),
            Err(mpsc::error::TryRecvError::Empty) => {}
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        }
    }
    if let Err(err) = publish(&mut log, &mut pending) {
        tracing::error!(error = %err, "archive write failed");
    }
    let f = freeze(&mut index.write_mem());
    let _ = itx.send(IndexJob::Persist(f));
}

fn freeze(m: &mut MemState) -> Arc<Mem> {
    let end = m.active.end;
    let f = Arc::new(std::mem::replace(
        &mut m.active,
        Mem {
            end,
            ..Mem::default()
        },
    ));
    m.frozen.push(f.clone());
    f
}

fn index_loop(
    index: Arc<Index>,
    log: Arc<LogFiles>,
    rx: std_mpsc::Receiver<IndexJob>,
    roller: mpsc::WeakSender<Job>,
) {
    // After a removal: seal the segment being written if at least half of
    // it is dead (it is reclaimed after the roll), else reclaim at once.
    let after_removal = |index: &Index, log: &Arc<LogFiles>| {
        let active = log.active();
        let dead = index.dead(active).unwrap_or(0);
        let size = log.segment_len(active).ok().flatten().unwrap_or(0);
        if dead > 0 && dead.saturating_mul(2) >= size {
            if let Some(tx) = roller.upgrade() {
                if tx.try_send(Job::Roll).is_ok() {
                    return;
                }
            }
        }
        if let Err(err) = reclaim(index, log) {
            tracing::error!(error = %err, "archive reclaim failed");
        }
    };
    while let Ok(job) = rx.recv() {
        match job {
            IndexJob::Persist(mem) => match index.persist(&mem) {
                Ok(()) => {
                    index.write_mem().frozen.retain(|f| !Arc::ptr_eq(f, &mem));
                }
                // Kept in memory (and read again from the log after a
                // restart).
                Err(err) => tracing::error!(error = %err, "archive index write failed"),
            },
            IndexJob::RemoveView(user, reply) => {
                let _ = reply.send(remove_view(&index, &log, &user));
                after_removal(&index, &log);
            }
            IndexJob::Hide(user, what, reply) => {
                let r = hide(&index, &log, &user, &what);
                let changed = matches!(r, Ok(Some(n)) if n > 0);
                let _ = reply.send(r);
                if changed {
                    after_removal(&index, &log);
                }
            }
            IndexJob::Reclaim => {
                if let Err(err) = reclaim(&index, &log) {
                    tracing::error!(error = %err, "archive reclaim failed");
                }
            }
        }
    }
}

/// Hide messages from `user`'s view (everything before is in sled): the
/// user's bit goes from the conversation's entries (an entry no view
/// holds any more goes, and its record's bytes count as dead) and the
/// entries go from the user's time index, in one atomic batch. `None`
/// when an item named is not in the view.
fn hide(index: &Index, log: &LogFiles, user: &BareJid, what: &Hide) -> StoreResult<Option<usize>> {
    let up = user_prefix(user);
    let u = user.as_str().as_bytes();
    // Conversation prefix → (the user's bit in it, ids).
    let mut by_conv: HashMap<Vec<u8>, (u8, BTreeSet<u64>)> = HashMap::new();
    let mut uids = BTreeSet::new();
    match what {
        Hide::Conversation(with) => {
            let (a, b) = ordered(user, with);
            let conv = pair_key(a, b);
            let bit = owner_bit(user, a, b);
            let mut ids = BTreeSet::new();
            for kv in index.tree.scan_prefix(&conv) {
                let (_, v) = kv.map_err(e)?;
                ids.extend(
                    decode_chunk(&v)
                        .iter()
                        .filter(|en| en.bits & bit != 0)
                        .map(|en| en.id),
                );
            }
            uids.extend(ids.iter().copied());
            by_conv.insert(conv, (bit, ids));
        }
        Hide::Items(ids) => {
            for &id in ids {
                let Some(en) = index.find(&up, id)? else {
                    return Ok(None);
                };
                uids.insert(id);
                // A record no longer readable is only in the time index.
                let Some(p) = log.read(en.loc, en.id).map_err(e)? else {
                    continue;
                };
                let Some(r) = archive_log::decode(&p) else {
                    continue;
                };
                let bit = u8::from(r.a == u) | (u8::from(r.b == u) << 1);
                by_conv
                    .entry(pair_key_bytes(r.a, r.b))
                    .or_insert_with(|| (bit, BTreeSet::new()))
                    .1
                    .insert(id);
            }
        }
    }
    if uids.is_empty() {
        return Ok(Some(0));
    }
    let mut batch = sled::Batch::default();
    let mut dead = Vec::new();
    for (conv, (bit, ids)) in &by_conv {
        dead.extend(index.edit(&mut batch, conv, ids, |en| {
            en.bits &= !*bit;
            en.bits & VIEWS != 0
        })?);
    }
    index.edit(&mut batch, &up, &uids, |_| false)?;
    index.stage_dead(&mut batch, &dead)?;
    index.tree.apply_batch(batch).map_err(e)?;
    Ok(Some(uids.len()))
}

/// Reclaim the space of dead records in sealed segments: those whose
/// records are all in sled's chunks (before the checkpoint's segment, or
/// compaction copies) and at least half dead. Each is compacted: its live
/// records (an entry points at them and a view holds them) are copied to
/// a new segment, the entries repointed in one atomic batch, and the old
/// file deleted.
fn reclaim(index: &Index, log: &Arc<LogFiles>) -> StoreResult<()> {
    let ckpt = index
        .tree
        .get(CKPT_KEY)
        .map_err(e)?
        .map_or(Pos::default(), |v| decode_ckpt(&v));
    let mut todo = Vec::new();
    for kv in index.tree.scan_prefix(DEAD_PREFIX) {
        let (k, v) = kv.map_err(e)?;
        let Some(seg) = seg_of_key(&k) else {
            continue;
        };
        todo.push((seg, decode_u64(&v)));
    }
    for (seg, dead) in todo {
        if dead == GONE {
            forget_segment(index, log, seg)?;
            continue;
        }
        let copies = index.tree.contains_key(copy_key(seg)).map_err(e)?;
        if seg == log.active() || !(seg < ckpt.seg || copies) {
            continue;
        }
        let Some(size) = log.segment_len(seg).map_err(e)? else {
            index.tree.remove(dead_key(seg)).map_err(e)?;
            continue;
        };
        if dead.saturating_mul(2) >= size {
            compact(index, log, seg)?;
        }
    }
    Ok(())
}

/// Delete a segment nothing points into, and what sled says of it.
fn forget_segment(index: &Index, log: &LogFiles, seg: u32) -> StoreResult<()> {
    log.remove_segment(seg).map_err(e)?;
    index.tree.remove(dead_key(seg)).map_err(e)?;
    index.tree.remove(copy_key(seg)).map_err(e)?;
    Ok(())
}

/// A live record being copied.
struct Live {
    id: u64,
    bits: u8,
    a: String,
    b: String,
    from: String,
    to: String,
    xml: Vec<u8>,
}

fn compact(index: &Index, log: &Arc<LogFiles>, seg: u32) -> StoreResult<()> {
    let mut live = Vec::new();
    let mut failed = None;
    log.scan_segment(seg, |loc, r| {
        let conv = pair_key_bytes(r.a, r.b);
        match index.find(&conv, r.id) {
            Ok(Some(en)) if en.loc == loc && en.bits & VIEWS != 0 => {
                let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                live.push(Live {
                    id: r.id,
                    bits: en.bits,
                    a: s(r.a),
                    b: s(r.b),
                    from: s(r.from),
                    to: s(r.to),
                    xml: r.xml.to_vec(),
                });
            }
            Ok(_) => {}
            Err(err) => failed = Some(err),
        }
    })
    .map_err(e)?;
    if let Some(err) = failed {
        return Err(err);
    }
    let dead_bytes = index.dead(seg)?;
    if live.is_empty() {
        forget_segment(index, log, seg)?;
        tracing::info!(
            segment = seg,
            bytes = dead_bytes,
            "archive segment reclaimed"
        );
        return Ok(());
    }
    let mut w = LogWriter::create_detached(log.clone()).map_err(e)?;
    let copy = w.segment();
    let mut mark = Vec::with_capacity(8);
    mark.extend_from_slice(&seg.to_be_bytes());
    mark.extend_from_slice(&copy.to_be_bytes());
    index.tree.insert(COMPACT_KEY, mark).map_err(e)?;
    index.tree.flush().map_err(e)?;
    // Prefix → id → new place.
    let mut moves: HashMap<Vec<u8>, BTreeMap<u64, Loc>> = HashMap::new();
    for l in &live {
        let loc = w
            .append(&Rec {
                id: l.id,
                bits: l.bits | COPY,
                a: &l.a,
                b: &l.b,
                from: &l.from,
                to: &l.to,
                xml: &l.xml,
            })
            .map_err(e)?;
        let (a, b) = (l.a.as_bytes(), l.b.as_bytes());
        moves
            .entry(pair_key_bytes(a, b))
            .or_default()
            .insert(l.id, loc);
        if l.bits & 1 != 0 {
            moves
                .entry(user_prefix_bytes(a))
                .or_default()
                .insert(l.id, loc);
        }
        if l.bits & 2 != 0 && a != b {
            moves
                .entry(user_prefix_bytes(b))
                .or_default()
                .insert(l.id, loc);
        }
    }
    w.sync_own().map_err(e)?;
    let mut batch = sled::Batch::default();
    for (prefix, m) in &moves {
        let ids: BTreeSet<u64> = m.keys().copied().collect();
        index.edit(&mut batch, prefix, &ids, |en| {
            if let Some(loc) = m.get(&en.id) {
                en.loc = *loc;
            }
            true
        })?;
    }
    batch.insert(dead_key(seg), &GONE.to_be_bytes()[..]);
    batch.insert(copy_key(copy), &[][..]);
    batch.remove(COMPACT_KEY);
    index.tree.apply_batch(batch).map_err(e)?;
    index.tree.flush().map_err(e)?;
    forget_segment(index, log, seg)?;
    tracing::info!(
        segment = seg,
        bytes = dead_bytes,
        copied = live.len(),
        into = copy,
        "archive segment compacted"
    );
    Ok(())
}

/// Remove `user`'s view from the chunks (the tables in memory hold none
/// of it: they were written first). The user's entries say where the
/// messages are; each record names its conversation, whose chunks are
/// then rewritten once each.
fn remove_view(index: &Index, log: &LogFiles, user: &BareJid) -> StoreResult<()> {
    let uprefix = user_prefix(user);
    let mut keys = Vec::new();
    let mut by_conv: HashMap<Vec<u8>, (u8, std::collections::HashSet<u64>)> = HashMap::new();
    for kv in index.tree.scan_prefix(&uprefix) {
        let (k, v) = kv.map_err(e)?;
        keys.push(k);
        for en in decode_chunk(&v) {
            let Some(p) = log.read(en.loc, en.id).map_err(e)? else {
                continue;
            };
            let Some(r) = archive_log::decode(&p) else {
                continue;
            };
            let u = user.as_str().as_bytes();
            let bit = u8::from(r.a == u) | (u8::from(r.b == u) << 1);
            by_conv
                .entry(pair_key_bytes(r.a, r.b))
                .or_insert_with(|| (bit, Default::default()))
                .1
                .insert(en.id);
        }
    }
    for (conv, (bit, ids)) in &by_conv {
        let mut chunks = Vec::new();
        for kv in index.tree.scan_prefix(conv.as_slice()) {
            let (k, v) = kv.map_err(e)?;
            chunks.push((k, decode_chunk(&v)));
        }
        for (k, mut es) in chunks {
            let mut changed = false;
            for en in es.iter_mut().filter(|en| ids.contains(&en.id)) {
                en.bits &= !*bit;
                changed = true;
            }
            if changed {
                let mut batch = sled::Batch::default();
                index.stage_dead(
                    &mut batch,
                    &es.iter()
                        .filter(|en| en.bits & VIEWS == 0)
                        .copied()
                        .collect::<Vec<_>>(),
                )?;
                index.tree.apply_batch(batch).map_err(e)?;
                es.retain(|en| en.bits & VIEWS != 0);
                index.put_chunk(conv, &k, &es)?;
            }
        }
    }
    for k in keys {
        index.tree.remove(k).map_err(e)?;
    }
    Ok(())
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
    /// The clock after the mark in `tree` and after `seen`.
    fn open(tree: &sled::Tree, seen: u64) -> StoreResult<IdClock> {
        let hwm = tree
            .get(HWM_KEY)
            .map_err(e)?
            .map_or(0, |v| decode_u64(&v))
            .max(seen);
        Ok(IdClock {
            last: AtomicU64::new(hwm),
            hwm: AtomicU64::new(hwm),
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

    /// A new mark to store, if `id` reached the current one.
    fn advance(&self, id: u64) -> Option<u64> {
        let mark = self.hwm.load(Ordering::Acquire);
        if id < mark {
            return None;
        }
        let next = id + HWM_AHEAD;
        self.hwm
            .compare_exchange(mark, next, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| next)
    }
}

/// The two JIDs of a pair in order.
fn ordered<'a>(a: &'a BareJid, b: &'a BareJid) -> (&'a BareJid, &'a BareJid) {
    if a.as_str() <= b.as_str() {
        (a, b)
    } else {
        (b, a)
    }
}

/// The log prefix of the conversation of a pair (in order).
fn pair_key_bytes(x: &[u8], y: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(x.len() + y.len() + 4);
    k.extend_from_slice(b"Lp");
    k.extend_from_slice(x);
    k.push(0);
    k.extend_from_slice(y);
    k.push(0);
    k
}

fn pair_key(a: &BareJid, b: &BareJid) -> Vec<u8> {
    let (x, y) = ordered(a, b);
    pair_key_bytes(x.as_str().as_bytes(), y.as_str().as_bytes())
}

/// The view bit of `user` in the pair (a, b).
fn owner_bit(user: &BareJid, a: &BareJid, b: &BareJid) -> u8 {
    let (first, second) = ordered(a, b);
    let mut bits = 0;
    if user == first {
        bits |= 1;
    }
    if user == second {
        bits |= 2;
    }
    bits
}

fn user_prefix_bytes(user: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + 10);
    k.push(b'U');
    k.extend_from_slice(user);
    k.push(0);
    k
}

fn user_prefix(user: &BareJid) -> Vec<u8> {
    user_prefix_bytes(user.as_str().as_bytes())
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

/// What reads need, off the async workers.
struct Reader {
    index: Arc<Index>,
    log: Arc<LogFiles>,
}

impl Reader {
    /// The message an entry points at (`None`: not in the log, which only
    /// a crash before it was acknowledged leaves).
    fn fetch(&self, en: &Entry) -> StoreResult<Option<Archived>> {
        let Some(p) = self.log.read(en.loc, en.id).map_err(e)? else {
            return Ok(None);
        };
        Ok(archive_log::decode(&p).map(|r| Archived {
            id: en.id,
            from: String::from_utf8_lossy(r.from).into_owned(),
            to: String::from_utf8_lossy(r.to).into_owned(),
            xml: String::from_utf8_lossy(r.xml).into_owned(),
        }))
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
        // Whether an entry is in the result set (and the message, when
        // `fetch`).
        let matches = |en: &Entry, fetch: bool| -> StoreResult<Option<Option<Archived>>> {
            if q.mask.as_ref().is_some_and(|m| !m.shows(en.id)) {
                return Ok(None);
            }
            if let Source::Log { bit, full, .. } = &source {
                if en.bits & bit == 0 {
                    return Ok(None);
                }
                if let Some(f) = full {
                    let Some(a) = self.fetch(en)? else {
                        return Ok(None);
                    };
                    if a.from != *f && a.to != *f {
                        return Ok(None);
                    }
                    return Ok(Some(fetch.then_some(a)));
                }
            }
            if !fetch {
                return Ok(Some(None));
            }
            Ok(self.fetch(en)?.map(Some))
        };
        let prefix = match &source {
            Source::Log { prefix, .. } | Source::Index { prefix } => prefix.clone(),
        };
        let index = &self.index;
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
                let Some(en) = index.find(&prefix, id)? else {
                    continue;
                };
                if let Some(Some(a)) = matches(&en, true)? {
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
        let plo = q.after.map_or(lo, |a| lo.max(a.saturating_add(1)));
        let phi = q.before.map_or(hi, |b| hi.min(b.saturating_sub(1)));
        let mut items = Vec::new();
        let mut more = false;
        let mut skip = if q.from_end { 0 } else { q.index.unwrap_or(0) };
        if q.before != Some(0) {
            index.walk(&prefix, plo, phi, q.from_end, |en| {
                if skip > 0 || items.len() >= q.max {
                    if matches(en, false)?.is_none() {
                        return Ok(true);
                    }
                    if skip > 0 {
                        skip -= 1;
                        return Ok(true);
                    }
                    more = true;
                    return Ok(false);
                }
                if let Some(Some(a)) = matches(en, true)? {
                    items.push(a);
                }
                Ok(true)
            })?;
        }
        if q.from_end {
            items.reverse();
        }
        // One walk over the whole result set counts it and finds where
        // the page starts in it.
        let first_id = items.first().map(|a| a.id);
        let mut count = 0usize;
        let mut before_first = 0usize;
        index.walk(&prefix, lo, hi, false, |en| {
            if matches(en, false)?.is_some() {
                count += 1;
                if first_id.is_some_and(|f| en.id < f) {
                    before_first += 1;
                }
            }
            Ok(true)
        })?;
        let first_index = if first_id.is_some() {
            before_first
        } else {
            count
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
    /// An account is deleted: its view goes.
    pub(super) async fn remove_archive_view(&self, user: &BareJid) -> StoreResult<()> {
        self.archive.remove_view(user).await
    }
}

impl ArchiveStore for SledStore {
    fn next_id(&self) -> u64 {
        self.archive.clock.next()
    }

    fn append(&self, w: ArchiveWrite) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let (a, b) = ordered(&w.pair.0, &w.pair.1);
            let mut bits = 0u8;
            for o in &w.owners {
                bits |= owner_bit(o, a, b);
            }
            if bits == 0 {
                return Ok(());
            }
            let job = WriteJob {
                id: w.id,
                bits,
                a: a.clone(),
                b: b.clone(),
                hwm: self.archive.clock.advance(w.id),
                from: w.from,
                to: w.to,
                xml: w.xml,
            };
            self.archive.send(Job::Write(job)).await
        })
    }

    fn barrier(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.archive.barrier())
    }

    fn sync(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            self.archive.barrier().await?;
            // The log's fdatasync runs in the same group commit.
            self.commit().await
        })
    }

    fn query(&self, q: ArchiveQuery) -> BoxFuture<'_, StoreResult<ArchivePage>> {
        // Reads of a few hundred entries: quick, but a page walk of a
        // large archive should not hold an async worker either.
        let reader = Reader {
            index: self.archive.index.clone(),
            log: self.archive.log.clone(),
        };
        Box::pin(async move {
            self.archive.barrier().await?;
            tokio::task::spawn_blocking(move || reader.run_query(&q))
                .await
                .map_err(|err| StoreError(format!("archive read failed: {err}")))?
        })
    }

    fn hide<'a>(
        &'a self,
        user: &'a BareJid,
        what: Hide,
    ) -> BoxFuture<'a, StoreResult<Option<usize>>> {
        Box::pin(async move {
            let r = self.archive.hide(user, what).await?;
            if matches!(r, Some(n) if n > 0) {
                self.commit().await?;
            }
            Ok(r)
        })
    }

    fn get<'a>(
        &'a self,
        user: &'a BareJid,
        id: u64,
    ) -> BoxFuture<'a, StoreResult<Option<Archived>>> {
        let reader = Reader {
            index: self.archive.index.clone(),
            log: self.archive.log.clone(),
        };
        let prefix = user_prefix(user);
        Box::pin(async move {
            let Some(en) = reader.index.find(&prefix, id)? else {
                return Ok(None);
            };
            reader.fetch(&en)
        })
    }

    fn contains(&self, user: &BareJid, id: u64) -> StoreResult<bool> {
        Ok(self.archive.index.find(&user_prefix(user), id)?.is_some())
    }

    fn bounds(&self, user: &BareJid) -> StoreResult<Option<(u64, u64)>> {
        let prefix = user_prefix(user);
        let mut first = None;
        let mut last = None;
        let index = &self.archive.index;
        index.walk(&prefix, 0, u64::MAX - 1, false, |en| {
            first = Some(en.id);
            Ok(false)
        })?;
        index.walk(&prefix, 0, u64::MAX - 1, true, |en| {
            last = Some(en.id);
            Ok(false)
        })?;
        Ok(first.zip(last))
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

    /// Every entry of every chunk under `prefix`, checking the chunks are
    /// in order and do not overlap.
    fn chunk_ids(s: &SledStore, prefix: &[u8]) -> Vec<u64> {
        let mut ids: Vec<u64> = Vec::new();
        for kv in s.archive.index.tree.scan_prefix(prefix) {
            let (k, v) = kv.unwrap();
            let es = decode_chunk(&v);
            assert_eq!(decode_u64(&k[prefix.len()..]), es[0].id);
            assert!(es.windows(2).all(|w| w[0].id < w[1].id));
            if let Some(l) = ids.last() {
                assert!(*l < es[0].id, "chunks overlap");
            }
            ids.extend(es.iter().map(|en| en.id));
        }
        ids
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn views_paging_and_removal() {
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
        assert!(p.items[0].xml.contains("ab0"));
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
        assert!(s.contains(&jid(b), ab[7]).unwrap());
        assert!(!s.contains(&jid(b), only_a).unwrap());
        // A large message, in the log like any other.
        let big = "x".repeat(40_000);
        let big_id = write(&s, b, c, &[b], &big).await;
        let mut qb = q(b);
        qb.ids = Some(vec![big_id]);
        let p = s.query(qb).await.unwrap();
        assert!(p.items[0].xml.contains(&big));
        // a goes: b keeps the pair's messages, a-c is held by no view.
        s.remove_archive_view(&jid(a)).await.unwrap();
        assert_eq!(s.query(q(a)).await.unwrap().count, 0);
        assert_eq!(s.query(q(b)).await.unwrap().count, 26);
        assert!(chunk_ids(&s, &pair_key(&jid(a), &jid(c))).is_empty());
        assert_eq!(chunk_ids(&s, &pair_key(&jid(a), &jid(b))).len(), 25);
        let mut q2 = q(b);
        q2.with = Some(jid(a));
        assert_eq!(s.query(q2.clone()).await.unwrap().count, 25);
        // Ids keep growing across a reopen, and everything is still there.
        let last = s.next_id();
        drop(s);
        let s = SledStore::open(dir.path()).unwrap();
        assert!(s.next_id() > last);
        assert_eq!(s.query(q2).await.unwrap().count, 25);
        assert_eq!(s.query(q(a)).await.unwrap().count, 0);
    }

    fn log_files(dir: &Path) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(dir.join("archive"))
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Hiding is per view and all or nothing; dead records are reclaimed
    /// (the live ones in their segments kept); an unfinished compaction is
    /// undone at the next start.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hide_reclaim_and_unfinished_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c, d) = ("a@x", "b@x", "c@x", "d@x");
        let body = "y".repeat(1000);
        let mut ab = Vec::new();
        let mut cd = Vec::new();
        let junk;
        {
            let s = SledStore::open(dir.path()).unwrap();
            for i in 0..40 {
                ab.push(write(&s, a, b, &[a, b], &format!("{i}{body}")).await);
                if i % 10 == 0 {
                    cd.push(write(&s, c, d, &[c, d], &format!("cd{i}")).await);
                }
            }
            // An id not in a's view: nothing changes.
            let r = s
                .hide(&jid(a), Hide::Items(vec![ab[0], cd[0]]))
                .await
                .unwrap();
            assert_eq!(r, None);
            assert_eq!(s.query(q(a)).await.unwrap().count, 40);
            // a hides two, then the rest: b keeps everything.
            let r = s.hide(&jid(a), Hide::Items(vec![ab[1], ab[3]])).await;
            assert_eq!(r.unwrap(), Some(2));
            let mut qa = q(a);
            qa.with = Some(jid(b));
            assert_eq!(s.query(qa.clone()).await.unwrap().count, 38);
            let r = s.hide(&jid(a), Hide::Conversation(jid(b))).await;
            assert_eq!(r.unwrap(), Some(38));
            assert_eq!(s.query(qa).await.unwrap().count, 0);
            assert_eq!(s.query(q(a)).await.unwrap().count, 0);
            assert_eq!(s.query(q(b)).await.unwrap().count, 40);
            assert_eq!(s.archive.index.dead(s.archive.log.active()).unwrap(), 0);
            let before: u64 = log_files(dir.path()).iter().map(|f| f.1).sum();
            // b too: the a-b records are dead, the segment is sealed and
            // compacted; c-d's records move.
            let r = s.hide(&jid(b), Hide::Conversation(jid(a))).await;
            assert_eq!(r.unwrap(), Some(40));
            let mut after = before;
            for _ in 0..100 {
                after = log_files(dir.path()).iter().map(|f| f.1).sum();
                if after < before / 10 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            assert!(after < before / 10, "{before} → {after}");
            let mut qc = q(c);
            qc.with = Some(jid(d));
            let p = s.query(qc).await.unwrap();
            assert_eq!(p.items.iter().map(|i| i.id).collect::<Vec<_>>(), cd);
            assert!(p.items[3].xml.contains("cd30"));
            // A compaction that stopped half way: its copy is not indexed.
            let copy = s.archive.log.active() + 50;
            junk = format!("{copy:08}.log");
            std::fs::write(dir.path().join("archive").join(&junk), b"junk").unwrap();
            let mut mark = 1u32.to_be_bytes().to_vec();
            mark.extend_from_slice(&copy.to_be_bytes());
            s.archive.index.tree.insert(COMPACT_KEY, mark).unwrap();
            s.archive.index.tree.flush().unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert!(!log_files(dir.path()).iter().any(|(n, _)| *n == junk));
        assert!(s.archive.index.tree.get(COMPACT_KEY).unwrap().is_none());
        let mut qd = q(d);
        qd.with = Some(jid(c));
        assert_eq!(s.query(qd).await.unwrap().count, 4);
        assert_eq!(s.query(q(b)).await.unwrap().count, 0);
    }

    /// Entries not yet in sled are read again from the log after a crash;
    /// chunks never overlap and hold each entry once, whatever the order
    /// entries reach them in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_replay_and_chunk_merging() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = ("a@x", "b@x");
        let mut ids = Vec::new();
        {
            let s = SledStore::open(dir.path()).unwrap();
            for i in 0..300 {
                ids.push(write(&s, a, b, &[a, b], &format!("m{i}")).await);
            }
            s.sync().await.unwrap();
            // A crash: the index in memory is lost, not written to sled.
            let mut m = s.archive.index.write_mem();
            m.active = Mem::default();
            drop(m);
            std::mem::forget(s);
        }
        // The crashed store still holds its directory: open a copy.
        let dir2 = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), dir2.path());
        let s = SledStore::open(dir2.path()).unwrap();
        let mut qa = q(a);
        qa.max = 1000;
        let p = s.query(qa.clone()).await.unwrap();
        assert_eq!(p.items.iter().map(|i| i.id).collect::<Vec<_>>(), ids);
        // Written to sled: chunks, in order, each entry once.
        let f = freeze(&mut s.archive.index.write_mem());
        s.archive.index.persist(&f).unwrap();
        // Again (a replay after a crash mid-way): nothing doubles.
        s.archive.index.persist(&f).unwrap();
        s.archive.index.write_mem().frozen.clear();
        assert_eq!(chunk_ids(&s, &user_prefix(&jid(a))), ids);
        // New entries in memory, after the chunks: one result set.
        for i in 0..20 {
            ids.push(write(&s, a, b, &[a, b], &format!("n{i}")).await);
        }
        let mut page = q(b);
        page.with = Some(jid(a));
        page.max = 50;
        page.after = Some(ids[289]);
        let p = s.query(page.clone()).await.unwrap();
        assert_eq!(p.items.iter().map(|i| i.id).collect::<Vec<_>>(), ids[290..]);
        assert_eq!((p.count, p.first_index, p.complete), (320, 290, true));
        page.after = None;
        page.from_end = true;
        page.before = Some(ids[305]);
        let p = s.query(page).await.unwrap();
        assert_eq!(
            p.items.iter().map(|i| i.id).collect::<Vec<_>>(),
            ids[255..305]
        );
        assert_eq!((p.first_index, p.complete), (255, false));
        ids.truncate(300);
        // Entries older than the chunks' end land in the chunk each
        // belongs to, before the first chunk too.
        let loc = Loc {
            seg: 1,
            off: 0,
            len: 1,
        };
        let prefix = user_prefix(&jid(c_user()));
        let mut m = Mem::default();
        for id in (1000..1600).step_by(2) {
            m.push(&prefix, Entry { id, loc, bits: 1 });
        }
        s.archive.index.persist(&m).unwrap();
        let mut late = Mem::default();
        for id in [1131, 999, 1599, 1131, 1700] {
            late.push(&prefix, Entry { id, loc, bits: 1 });
        }
        s.archive.index.persist(&late).unwrap();
        let got = chunk_ids(&s, &prefix);
        assert_eq!(got.len(), 304);
        for id in [999, 1131, 1599, 1700] {
            assert!(got.contains(&id));
        }
        // Entries whose place holds another record are not shown.
        let p = s.query(qa).await.unwrap();
        assert_eq!(p.items.len(), 320);
        assert_eq!(s.query(q(c_user())).await.unwrap().items.len(), 0);
    }

    fn c_user() -> &'static str {
        "c@x"
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
}

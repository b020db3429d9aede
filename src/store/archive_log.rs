//! The archive's message log: append-only segment files under
//! `archive/` in the data directory, `00000001.log`, `00000002.log`, …
//!
//! A record is a 32-bit payload length and the payload's CRC-32 (both big
//! endian), then the payload: the message's id (u64), its view bits, the
//! conversation's two bare JIDs in order, from and to (each a 16-bit
//! length and the bytes), then the message's XML to the end.
//!
//! One thread appends ([`LogWriter`], owned by the archive's writer); any
//! thread reads a record by its [`Loc`] and gets it back only if its
//! length, checksum and id agree, so a location left over from before a
//! crash never yields another message. A segment is rolled at
//! [`SEGMENT_BYTES`]; every start of the server writes into a new one, so
//! the torn tail of a crash is never written over. [`LogFiles::sync`]
//! makes everything written so far durable (one `fdatasync` per segment
//! written since the last sync, and the directory when a segment was
//! created).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// A segment is rolled once it reaches this size.
pub(crate) const SEGMENT_BYTES: u32 = 64 << 20;
const HEADER: usize = 8;
/// A record's view bit for a copy made by compaction: indexed when it is
/// made, never read again into the index after a crash.
pub(crate) const COPY: u8 = 0x80;
/// Segments kept open for reading at most.
const MAX_READERS: usize = 64;

/// A position in the log: everything before it was written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub seg: u32,
    pub off: u32,
}

/// Where a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    pub seg: u32,
    pub off: u32,
    pub len: u32,
}

/// A message as the log keeps it (`a` ≤ `b`: the conversation).
pub(crate) struct Rec<'a> {
    pub id: u64,
    pub bits: u8,
    pub a: &'a str,
    pub b: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub xml: &'a [u8],
}

/// A record read back.
pub(crate) struct RecRef<'a> {
    pub id: u64,
    pub bits: u8,
    pub a: &'a [u8],
    pub b: &'a [u8],
    pub from: &'a [u8],
    pub to: &'a [u8],
    pub xml: &'a [u8],
}

fn put_str(v: &mut Vec<u8>, s: &str) {
    // JIDs are at most 3071 bytes (RFC 7622); the cut never happens.
    let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    v.extend_from_slice(&(s.len() as u16).to_be_bytes());
    v.extend_from_slice(s);
}

/// Append `rec` to `out` as one record; its length.
fn encode(rec: &Rec<'_>, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.extend_from_slice(&rec.id.to_be_bytes());
    out.push(rec.bits);
    for s in [rec.a, rec.b, rec.from, rec.to] {
        put_str(out, s);
    }
    out.extend_from_slice(rec.xml);
    let payload = &out[start + HEADER..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_be_bytes());
    out.len() - start
}

fn take_str<'a>(v: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = u16::from_be_bytes([*v.first()?, *v.get(1)?]) as usize;
    let s = v.get(2..2 + n)?;
    *v = v.get(2 + n..)?;
    Some(s)
}

/// Decode a payload (checksum already checked).
pub(crate) fn decode(payload: &[u8]) -> Option<RecRef<'_>> {
    let id = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let bits = *payload.get(8)?;
    let mut rest = payload.get(9..)?;
    let a = take_str(&mut rest)?;
    let b = take_str(&mut rest)?;
    let from = take_str(&mut rest)?;
    let to = take_str(&mut rest)?;
    Some(RecRef {
        id,
        bits,
        a,
        b,
        from,
        to,
        xml: rest,
    })
}

/// The record at the start of `buf`, if whole and intact: its payload.
fn checked(buf: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(buf.get(4..HEADER)?.try_into().ok()?);
    let payload = buf.get(HEADER..HEADER + len)?;
    (len >= 9 && crc32fast::hash(payload) == crc).then_some(payload)
}

fn seg_path(dir: &Path, seg: u32) -> PathBuf {
    dir.join(format!("{seg:08}.log"))
}

struct SyncSet {
    /// The segment being written.
    active: Option<(u32, Arc<File>)>,
    /// Segments finished since the last sync.
    rolled: Vec<(u32, Arc<File>)>,
    /// A segment was created since the last sync.
    dir: bool,
}

/// The log's files, shared by the writer, readers and the flusher.
pub(crate) struct LogFiles {
    dir: PathBuf,
    readers: Mutex<HashMap<u32, Arc<File>>>,
    sync: Mutex<SyncSet>,
    /// Written since the last sync.
    dirty: AtomicBool,
    /// The number the next new segment gets.
    next: AtomicU32,
    /// The segment the writer appends to.
    active: AtomicU32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LogFiles {
    /// Open the log in `dir` (created if missing); the number of the last
    /// segment there (0: none). Empty segments are removed.
    pub(crate) fn open(dir: &Path) -> std::io::Result<(Arc<LogFiles>, u32)> {
        std::fs::create_dir_all(dir)?;
        let mut last = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(seg) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if entry.metadata()?.len() == 0 {
                std::fs::remove_file(entry.path())?;
                continue;
            }
            last = last.max(seg);
        }
        let files = LogFiles {
            dir: dir.to_path_buf(),
            readers: Mutex::new(HashMap::new()),
            sync: Mutex::new(SyncSet {
                active: None,
                rolled: Vec::new(),
                dir: false,
            }),
            dirty: AtomicBool::new(false),
            next: AtomicU32::new(last + 1),
            active: AtomicU32::new(0),
        };
        Ok((Arc::new(files), last))
    }

    fn reader(&self, seg: u32) -> std::io::Result<Arc<File>> {
        if let Some(f) = lock(&self.readers).get(&seg) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(seg_path(&self.dir, seg))?);
        let mut readers = lock(&self.readers);
        // One descriptor per segment read lately, not per segment ever.
        if readers.len() >= MAX_READERS {
            readers.clear();
        }
        readers.insert(seg, f.clone());
        Ok(f)
    }

    /// The payload of the record at `loc`, if it is there, intact and
    /// the message `id`.
    pub(crate) fn read(&self, loc: Loc, id: u64) -> std::io::Result<Option<Vec<u8>>> {
        let f = match self.reader(loc.seg) {
            Ok(f) => f,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let mut buf = vec![0; loc.len as usize];
        match f.read_exact_at(&mut buf, u64::from(loc.off)) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(err) => return Err(err),
        }
        let ok = checked(&buf)
            .and_then(decode)
            .is_some_and(|r| r.id == id && HEADER + payload_len(&buf) == buf.len());
        if !ok {
            return Ok(None);
        }
        buf.drain(..HEADER);
        Ok(Some(buf))
    }

    /// Every intact record from `from` on, in log order, with its place;
    /// the position after the last one. A segment is read up to its first
    /// damaged record (a crash's torn tail).
    pub(crate) fn scan(
        &self,
        from: Pos,
        mut f: impl FnMut(Loc, RecRef<'_>),
    ) -> std::io::Result<Pos> {
        let mut segs = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if let Some(seg) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u32>().ok())
            {
                if seg >= from.seg {
                    segs.push(seg);
                }
            }
        }
        segs.sort_unstable();
        let mut end = from;
        for seg in segs {
            let data = std::fs::read(seg_path(&self.dir, seg))?;
            let start = if seg == from.seg {
                from.off as usize
            } else {
                0
            };
            let off = records(&data, seg, start, &mut f);
            end = Pos {
                seg,
                off: off as u32,
            };
        }
        Ok(end)
    }

    /// A number for a new segment (the writer's next, or a compaction's).
    fn alloc(&self) -> u32 {
        self.next.fetch_add(1, Ordering::AcqRel)
    }

    /// The segment the writer appends to.
    pub(crate) fn active(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    /// The bytes of a segment's file (`None`: there is none).
    pub(crate) fn segment_len(&self, seg: u32) -> std::io::Result<Option<u64>> {
        match std::fs::metadata(seg_path(&self.dir, seg)) {
            Ok(m) => Ok(Some(m.len())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Delete a segment's file; its space comes back once no descriptor
    /// of it is left open here.
    pub(crate) fn remove_segment(&self, seg: u32) -> std::io::Result<()> {
        lock(&self.readers).remove(&seg);
        lock(&self.sync).rolled.retain(|(s, _)| *s != seg);
        match std::fs::remove_file(seg_path(&self.dir, seg)) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        File::open(&self.dir)?.sync_all()
    }

    /// Every intact record of one segment, in order, with its place.
    pub(crate) fn scan_segment(
        &self,
        seg: u32,
        mut f: impl FnMut(Loc, RecRef<'_>),
    ) -> std::io::Result<()> {
        let data = match std::fs::read(seg_path(&self.dir, seg)) {
            Ok(d) => d,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(err),
        };
        records(&data, seg, 0, &mut f);
        Ok(())
    }

    /// Make everything written so far durable.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let (files, dir) = {
            let mut s = lock(&self.sync);
            let mut files = std::mem::take(&mut s.rolled);
            files.extend(s.active.clone());
            (files, std::mem::take(&mut s.dir))
        };
        let r = (|| {
            for (_, f) in &files {
                f.sync_data()?;
            }
            if dir {
                File::open(&self.dir)?.sync_all()?;
            }
            Ok(())
        })();
        if r.is_err() {
            // Try again next time.
            let mut s = lock(&self.sync);
            s.rolled.extend(files);
            s.dir |= dir;
            self.dirty.store(true, Ordering::Release);
        }
        r
    }
}

/// Each intact record of segment `seg` (its bytes `data`) from `off` on,
/// up to the first damaged one; the offset after the last.
fn records(data: &[u8], seg: u32, mut off: usize, f: &mut impl FnMut(Loc, RecRef<'_>)) -> usize {
    while let Some(payload) = data.get(off..).and_then(checked) {
        let len = HEADER + payload.len();
        if let Some(r) = decode(payload) {
            f(
                Loc {
                    seg,
                    off: off as u32,
                    len: len as u32,
                },
                r,
            );
        }
        off += len;
    }
    off
}

fn payload_len(buf: &[u8]) -> usize {
    buf.get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, |b| u32::from_be_bytes(b) as usize)
}

/// The appending end of the log (one per process, on one thread).
pub(crate) struct LogWriter {
    files: Arc<LogFiles>,
    /// The writer's (synced by [`LogFiles::sync`]), or a compaction's
    /// (synced by [`LogWriter::sync_own`]).
    tracked: bool,
    seg: u32,
    file: Arc<File>,
    /// Bytes of the segment in the file.
    written: u32,
    /// Records not yet written to the file.
    buf: Vec<u8>,
}

impl LogWriter {
    /// Start the writer's log in a new segment.
    pub(crate) fn create(files: Arc<LogFiles>) -> std::io::Result<LogWriter> {
        Self::start(files, true)
    }

    /// Start a segment for a compaction's copies: numbered among the
    /// writer's, made durable by [`LogWriter::sync_own`].
    pub(crate) fn create_detached(files: Arc<LogFiles>) -> std::io::Result<LogWriter> {
        Self::start(files, false)
    }

    fn start(files: Arc<LogFiles>, tracked: bool) -> std::io::Result<LogWriter> {
        let seg = files.alloc();
        let file = Self::new_segment(&files, seg, tracked)?;
        Ok(LogWriter {
            files,
            tracked,
            seg,
            file,
            written: 0,
            buf: Vec::with_capacity(if tracked { 256 * 1024 } else { 0 }),
        })
    }

    fn new_segment(files: &LogFiles, seg: u32, tracked: bool) -> std::io::Result<Arc<File>> {
        let file = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(seg_path(&files.dir, seg))?,
        );
        if tracked {
            let mut s = lock(&files.sync);
            if let Some(old) = s.active.replace((seg, file.clone())) {
                s.rolled.push(old);
            }
            s.dir = true;
            files.active.store(seg, Ordering::Release);
            files.dirty.store(true, Ordering::Release);
        }
        Ok(file)
    }

    /// The segment written.
    pub(crate) fn segment(&self) -> u32 {
        self.seg
    }

    /// Flush, and make this segment and its name durable (a compaction's).
    pub(crate) fn sync_own(&mut self) -> std::io::Result<()> {
        self.flush()?;
        self.file.sync_data()?;
        File::open(&self.files.dir)?.sync_all()
    }

    /// The position after everything appended.
    pub(crate) fn end(&self) -> Pos {
        Pos {
            seg: self.seg,
            off: self.written + self.buf.len() as u32,
        }
    }

    /// Queue a record; where it will be once [`LogWriter::flush`]ed.
    pub(crate) fn append(&mut self, rec: &Rec<'_>) -> std::io::Result<Loc> {
        let size = self.written as usize + self.buf.len();
        let need = HEADER
            + 9
            + 8
            + rec.a.len()
            + rec.b.len()
            + rec.from.len()
            + rec.to.len()
            + rec.xml.len();
        if size > 0 && size + need > SEGMENT_BYTES as usize && self.tracked {
            self.roll()?;
        }
        let off = self.written + self.buf.len() as u32;
        let len = encode(rec, &mut self.buf) as u32;
        Ok(Loc {
            seg: self.seg,
            off,
            len,
        })
    }

    /// Write what is queued to the file (readers see it; durable at the
    /// next [`LogFiles::sync`]).
    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = self.file.write_all_at(&self.buf, u64::from(self.written));
        // Marked dirty even when the write failed part way.
        self.files.dirty.store(true, Ordering::Release);
        match r {
            Ok(()) => {
                self.written += self.buf.len() as u32;
                self.buf.clear();
                Ok(())
            }
            Err(err) => {
                // What is queued is lost; go on in a fresh segment rather
                // than after a partial write.
                self.buf.clear();
                self.seg = self.files.alloc();
                self.written = 0;
                self.file = Self::new_segment(&self.files, self.seg, self.tracked)?;
                Err(err)
            }
        }
    }

    /// Go on in a new segment (the old one is sealed: written no more).
    pub(crate) fn roll(&mut self) -> std::io::Result<()> {
        self.flush()?;
        self.seg = self.files.alloc();
        self.written = 0;
        self.file = Self::new_segment(&self.files, self.seg, self.tracked)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, xml: &str) -> Rec<'_> {
        Rec {
            id,
            bits: 3,
            a: "a@x",
            b: "b@x",
            from: "a@x/r",
            to: "b@x",
            xml: xml.as_bytes(),
        }
    }

    #[test]
    fn records_round_trip_and_torn_tails_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (files, last) = LogFiles::open(dir.path()).unwrap();
        assert_eq!(last, 0);
        let mut w = LogWriter::create(files.clone()).unwrap();
        let l1 = w.append(&rec(10, "<message>one</message>")).unwrap();
        let l2 = w.append(&rec(11, "<message>two</message>")).unwrap();
        // Not written yet: not readable.
        assert_eq!(files.read(l1, 10).unwrap(), None);
        w.flush().unwrap();
        files.sync().unwrap();
        let p = files.read(l2, 11).unwrap().unwrap();
        let r = decode(&p).unwrap();
        assert_eq!(r.xml, b"<message>two</message>");
        assert_eq!(r.from, b"a@x/r");
        // The wrong id at a place: nothing.
        assert_eq!(files.read(l2, 12).unwrap(), None);
        // A torn record at the end: the scan stops before it.
        let l3 = w.append(&rec(12, "<message>three</message>")).unwrap();
        w.flush().unwrap();
        let path = seg_path(dir.path(), 1);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(u64::from(l3.off + l3.len - 3)).unwrap();
        let mut seen = Vec::new();
        let end = files.scan(Pos::default(), |_, r| seen.push(r.id)).unwrap();
        assert_eq!(seen, vec![10, 11]);
        assert_eq!(
            end,
            Pos {
                seg: 1,
                off: l3.off
            }
        );
        assert_eq!(files.read(l3, 12).unwrap(), None);
        drop(w);
        // Reopened: the next segment is a new file.
        let (_, last) = LogFiles::open(dir.path()).unwrap();
        assert_eq!(last, 1);
    }
}

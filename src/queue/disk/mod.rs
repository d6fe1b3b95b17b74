//! The disk spool: a crash-safe, segmented, append-only log of one pipeline's rows.
//!
//! A sender's 2xx means its rows are on disk: [`DiskSpool`] acknowledges a push only after the
//! rows are written and `fdatasync`ed. Concurrent pushes share one fsync (group commit): a
//! dedicated writer thread takes every request waiting in its channel, appends them all, syncs
//! once and then answers every waiter. Nothing is acknowledged by a timer.
//!
//! # Files in the spool directory
//! - `<first offset, 20 digits>.seg`: the segments, append-only, named by the offset of the
//!   first record written to them. The last one is the active segment; a new one starts when a
//!   record would push the active one past `segment_bytes`.
//! - `cursor`: the first offset not yet committed, 16 bytes: `b"WCUR"`, CRC32C of the next 8
//!   bytes (u32 LE), the offset (u64 LE). Replaced atomically (write `cursor.tmp`, fsync,
//!   rename, fsync the directory). `commit` moves the cursor in memory first; if the file
//!   cannot be written, the next `commit` or `sync` writes it (see [`Queue::commit`]).
//! - `in_flight.json`: the batch a sink is delivering (`{"first","last","job_id"}`), replaced
//!   the same way; absent when nothing is in flight.
//! - `quarantine.log`: corrupt records found on open, one line each:
//!   `time_ms=<ms> segment=<file> position=<byte> offset=<n | unknown | unknown(a-b)>
//!   reason="<why>" len=<bytes> hex=<the raw bytes in hex>`.
//! - `lock`: empty; the process that has the spool open holds an exclusive `flock` on it.
//!   A second open (another process, or this one) fails with [`SpoolError::Locked`] before
//!   anything in the directory is read or changed.
//! - `*.tmp`: half-finished replacements; removed on open.
//!
//! # Record layout (integers little-endian)
//! The magic is the format version. Version 2 is written; version 1 is still read.
//! ```text
//!  0..4   magic b"WSP2" (version 2) or b"WSPL" (version 1)
//!  4..8   row length (u32)
//!  8..12  header CRC32C over bytes 0..8 and 16..24 (magic, length, offset), and in
//!         version 2 also 32..36
//! 12..16  record CRC32C over bytes 16..end (everything after this field)
//! 16..24  offset (u64)
//! 24..32  received_ms (u64)
//! 32..36  version 2 only: records of the same push after this one (u32; 0 ends the push)
//! 36..    the row's bytes (`Row::as_bytes`); from byte 32 in version 1
//! ```
//! A push never spans segments. A version 1 record counts as a push of its own.
//! The header CRC lets a reader trust the length of a record whose body is damaged and skip
//! it, and lets it find the next record after damaged framing (resync: the next position with
//! the magic, a valid header CRC and a valid record CRC).
//!
//! # Recovery on open
//! Segments from the one holding the cursor to the last are read and every CRC checked.
//! - A torn tail (a short header, a short body, bad bytes, or a push whose last record is
//!   missing, at the end of the last segment) is truncated back to the end of the last whole
//!   push: a request is kept whole or dropped whole.
//! - An empty segment file is deleted: it holds no record, so it bounds nothing (a roll whose
//!   directory sync failed can leave one named after an offset the previous segment holds).
//! - A corrupt record with good records after it (or in a segment that is not the last), and a
//!   record whose bytes do not decode as a row, is appended to `quarantine.log` and removed
//!   from its segment (the segment is rewritten without it); reading goes on after it.
//! - A missing or damaged cursor file means delivery starts at the oldest retained record:
//!   rows may be delivered twice, none is lost.
//!
//! Opening never fails because of bad data, only for real I/O errors on the directory.
//!
//! Recovery reads one segment at a time in chunks; memory stays flat. At run time only a few
//! numbers per segment are kept in memory; [`Queue::peek`] reads from disk.
//!
//! # Disk use
//! `max_bytes` bounds the segments' bytes (the small cursor, in-flight and quarantine files are
//! not counted). Queued (uncommitted) bytes above it are refused with `FullBytes`; committed
//! segments kept for replay are deleted early, oldest first, when room is needed. Committed
//! records that share the active segment with queued ones cannot be freed, so `max_bytes`
//! should be a few times `segment_bytes`.

mod files;
mod format;
mod recover;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::VecDeque;
use std::io;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{info, warn};

pub use self::files::{FileOps, RealFiles};
use self::files::{InFlightFile, encode_cursor, segment_path};
use self::format::{Item, record_len, walk};
use self::recover::{Recovered, recover};
use self::writer::{PushRequest, Request, Writer};
use super::{BoxFuture, Entry, InFlight, Offset, PushError, Queue, QueueError, QueueStats, now_ms};
use crate::row::Row;
use crate::sync::lock;

/// Segments roll at this size unless configured otherwise.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Committed segments are kept this long for replay unless configured otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

const CURSOR_MAGIC: [u8; 4] = *b"WCUR";
const CURSOR_FILE: &str = "cursor";
const IN_FLIGHT_FILE: &str = "in_flight.json";
const QUARANTINE_FILE: &str = "quarantine.log";
const LOCK_FILE: &str = "lock";
const READ_CHUNK: usize = 256 * 1024;
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Where and how big a spool is.
#[derive(Debug, Clone)]
pub struct DiskSpoolConfig {
    /// The pipeline's own directory; created if missing.
    pub dir: PathBuf,
    /// Queued (uncommitted) rows at most.
    pub capacity_rows: u64,
    /// Segment bytes on disk at most (see the module docs).
    pub max_bytes: u64,
    /// Segments roll at this size.
    pub segment_bytes: u64,
    /// Committed segments are kept this long after their last write, for replay.
    pub retention: Duration,
}

impl DiskSpoolConfig {
    /// A config with the default segment size and retention.
    pub fn new(dir: impl Into<PathBuf>, capacity_rows: u64, max_bytes: u64) -> DiskSpoolConfig {
        DiskSpoolConfig {
            dir: dir.into(),
            capacity_rows,
            max_bytes,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            retention: DEFAULT_RETENTION,
        }
    }
}

/// Why a spool could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool path {path} is unusable: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Another process (or another spool in this one) has the directory open.
    #[error(
        "spool {} is in use by another weir process (it holds the lock on {}/lock); two processes must not share a spool",
        dir.display(),
        dir.display()
    )]
    Locked { dir: PathBuf },
}

/// What [`DiskSpool::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files after recovery.
    pub segments: usize,
    /// Rows queued (not yet committed) after recovery.
    pub queued_rows: u64,
    /// Corrupt records moved to `quarantine.log`.
    pub quarantined: u64,
    /// Bytes cut off a torn tail.
    pub truncated_bytes: u64,
    /// The cursor file was missing or damaged; delivery restarts at the oldest retained row.
    pub cursor_missing: bool,
    /// The first uncommitted offset.
    pub cursor: Offset,
    /// The offset the next pushed row gets.
    pub next_offset: Offset,
}

/// A crash-safe [`Queue`] kept in a directory of segment files.
pub struct DiskSpool {
    shared: Arc<Shared>,
    /// `None` only while dropping.
    writer: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Orders cursor and in-flight file updates (commit, replay, set_in_flight).
    cursor_lock: tokio::sync::Mutex<()>,
    recovery: RecoveryReport,
    /// The exclusive lock on `dir/lock`; released when the spool is dropped, after the
    /// writer thread has stopped.
    _lock: std::fs::File,
}

impl DiskSpool {
    /// Opens (or creates) the spool in `config.dir`, repairing what a crash left behind.
    pub async fn open(config: DiskSpoolConfig) -> Result<DiskSpool, SpoolError> {
        DiskSpool::open_with(config, Arc::new(RealFiles)).await
    }

    /// Like [`DiskSpool::open`], with every change to the files made through `fs`.
    pub async fn open_with(
        config: DiskSpoolConfig,
        fs: Arc<dyn FileOps>,
    ) -> Result<DiskSpool, SpoolError> {
        let dir = config.dir.clone();
        let cfg = config.clone();
        let recovery_fs = fs.clone();
        let recovered = tokio::task::spawn_blocking(move || recover(&cfg, recovery_fs.as_ref()))
            .await
            .map_err(|e| SpoolError::Io {
                path: dir.clone(),
                source: io::Error::other(e),
            })??;
        let Recovered {
            state,
            active,
            report,
            lock,
        } = recovered;
        let (seg_first, len) = state
            .segments
            .back()
            .map_or((state.next_offset, 0), |s| (s.first, s.len));
        let next = state.next_offset;
        let shared = Arc::new(Shared {
            dir: config.dir.clone(),
            capacity_rows: config.capacity_rows,
            max_bytes: config.max_bytes,
            segment_bytes: config.segment_bytes,
            retention: config.retention,
            state: Mutex::new(state),
            fsyncs: AtomicU64::new(0),
            fsync_last_us: AtomicU64::new(0),
            fsync_total_us: AtomicU64::new(0),
            last_warn: Mutex::new(None),
            last_corrupt_warn: Mutex::new(None),
            fs,
        });
        let sweeper = shared.clone();
        // Retention may have expired while weir was down; a join error only skips the sweep.
        let _ = tokio::task::spawn_blocking(move || sweeper.drop_old_segments(None)).await;
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            shared: shared.clone(),
            file: active,
            seg_first,
            len,
            next,
            dirty: false,
        };
        let thread = std::thread::Builder::new()
            .name("weir-spool-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| SpoolError::Io {
                path: config.dir.clone(),
                source,
            })?;
        Ok(DiskSpool {
            shared,
            writer: Some(tx),
            thread: Some(thread),
            cursor_lock: tokio::sync::Mutex::new(()),
            recovery: report,
            _lock: lock,
        })
    }

    /// What recovery found when this spool was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Segment fsyncs done since open.
    pub fn fsync_count(&self) -> u64 {
        self.shared.fsyncs.load(Ordering::Relaxed)
    }

    /// How long the last segment fsync took.
    pub fn fsync_last(&self) -> Duration {
        Duration::from_micros(self.shared.fsync_last_us.load(Ordering::Relaxed))
    }

    /// Time spent in segment fsyncs since open.
    pub fn fsync_total(&self) -> Duration {
        Duration::from_micros(self.shared.fsync_total_us.load(Ordering::Relaxed))
    }

    async fn push_rows(&self, rows: Vec<Row>) -> Result<(), PushError> {
        if rows.is_empty() {
            return Ok(());
        }
        let incoming = rows.len() as u64;
        let bytes: u64 = rows.iter().map(|r| record_len(r) as u64).sum();
        {
            let mut st = self.shared.lock();
            let queued = st.queued_rows + st.reserved_rows;
            if queued + incoming > self.shared.capacity_rows {
                return Err(PushError::FullRows {
                    queued,
                    capacity: self.shared.capacity_rows,
                    incoming,
                });
            }
            let queued_bytes = st.queued_bytes + st.reserved_bytes;
            let too_long = rows.iter().any(|r| r.encoded_len() > u32::MAX as usize);
            if too_long || queued_bytes + bytes > self.shared.max_bytes {
                return Err(PushError::FullBytes {
                    queued: queued_bytes,
                    capacity: self.shared.max_bytes,
                    incoming: bytes,
                });
            }
            st.reserved_rows += incoming;
            st.reserved_bytes += bytes;
        }
        let (reply, answer) = oneshot::channel();
        let request = Request::Push(PushRequest {
            rows,
            received_ms: now_ms(),
            bytes,
            reply,
        });
        if self.send(request).is_err() {
            self.shared.release(incoming, bytes);
            return Err(PushError::Closed);
        }
        answer.await.unwrap_or(Err(PushError::Closed))
    }

    async fn peek_entries(&self, max: usize, max_bytes: u64) -> Result<Vec<Entry>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let (cursor, spans) = {
            let st = self.shared.lock();
            (st.cursor, st.spans_from(st.read_pos))
        };
        let shared = self.shared.clone();
        blocking(move || {
            let mut out = Vec::new();
            let mut bytes = 0u64;
            walk(&shared.dir, &spans, |_, item| {
                match item {
                    Item::Record {
                        offset,
                        received_ms,
                        row,
                        ..
                    } if offset >= cursor => {
                        let len = row.encoded_len() as u64;
                        if !out.is_empty() && bytes + len > max_bytes {
                            return ControlFlow::Break(());
                        }
                        bytes += len;
                        out.push(Entry {
                            offset,
                            received_ms,
                            row,
                        });
                    }
                    Item::Record { .. } => {}
                    Item::Corrupt { offset, reason, .. } => {
                        // Reported on every peek until committed past: rate-limit it.
                        if due(&mut lock(&shared.last_corrupt_warn), Instant::now()) {
                            warn!(?offset, reason, "spool record unreadable, skipping");
                        }
                    }
                }
                if out.len() >= max {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })?;
            Ok(out)
        })
        .await
    }

    async fn commit_through(&self, through: Offset) -> Result<(), QueueError> {
        let _order = self.cursor_lock.lock().await;
        let (cursor, target, spans) = {
            let st = self.shared.lock();
            let target = through.saturating_add(1).min(st.next_offset);
            (st.cursor, target, st.spans_from(st.read_pos))
        };
        let shared = self.shared.clone();
        if target <= cursor {
            // Already committed in memory; make sure it is on disk too.
            return blocking(move || shared.persist_cursor()).await;
        }
        blocking(move || shared.advance_cursor(target, spans)).await
    }

    async fn rewind(&self, from: Offset) -> Result<u64, QueueError> {
        let _order = self.cursor_lock.lock().await;
        let spans = {
            let mut st = self.shared.lock();
            if from > st.next_offset {
                return Err(QueueError::OffsetAhead {
                    requested: from,
                    next: st.next_offset,
                });
            }
            if from >= st.cursor {
                return Ok(st.queued_rows);
            }
            let oldest = st.segments.front().map_or(st.next_offset, |s| s.first);
            if from < oldest {
                return Err(QueueError::OffsetGone {
                    requested: from,
                    oldest,
                });
            }
            // Keep the segments being re-read from being deleted meanwhile.
            st.pin = Some(from);
            st.spans_between(from, st.read_pos)
        };
        let shared = self.shared.clone();
        let result = blocking(move || shared.move_cursor_back(from, spans)).await;
        self.shared.lock().pin = None;
        result
    }

    async fn record_in_flight(&self, batch: Option<InFlight>) -> Result<(), QueueError> {
        let _order = self.cursor_lock.lock().await;
        let shared = self.shared.clone();
        blocking(move || {
            match &batch {
                Some(b) => {
                    let file = InFlightFile {
                        first: b.first,
                        last: b.last,
                        job_id: b.job_id.clone(),
                    };
                    let bytes = serde_json::to_vec(&file).map_err(io::Error::other)?;
                    shared.fs.replace(&shared.dir, IN_FLIGHT_FILE, &bytes)?;
                }
                None => {
                    match shared.fs.remove(&shared.dir.join(IN_FLIGHT_FILE)) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                        _ => {}
                    }
                    shared.fs.sync_dir(&shared.dir)?;
                }
            }
            shared.lock().in_flight = batch;
            Ok(())
        })
        .await
    }

    async fn sync_all(&self) -> Result<(), QueueError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || QueueError::Io(io::Error::other("spool writer stopped"));
        self.send(Request::Sync(reply)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())??;
        let _order = self.cursor_lock.lock().await;
        let shared = self.shared.clone();
        blocking(move || shared.persist_cursor()).await
    }

    fn send(&self, request: Request) -> Result<(), ()> {
        match &self.writer {
            Some(w) => w.send(request).map_err(|_| ()),
            None => Err(()),
        }
    }
}

/// Stops the writer thread once it has finished the batch in hand (at most one fsync), so
/// the directory can be opened again as soon as the spool is gone.
impl Drop for DiskSpool {
    fn drop(&mut self) {
        self.writer = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Queue for DiskSpool {
    fn push(&self, rows: Vec<Row>) -> BoxFuture<'_, Result<(), PushError>> {
        Box::pin(self.push_rows(rows))
    }

    fn fsync_stats(&self) -> Option<(u64, Duration)> {
        Some((self.fsync_count(), self.fsync_total()))
    }

    fn peek(
        &self,
        max_rows: usize,
        max_bytes: u64,
    ) -> BoxFuture<'_, Result<Vec<Entry>, QueueError>> {
        Box::pin(self.peek_entries(max_rows, max_bytes))
    }

    fn commit(&self, through: Offset) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(self.commit_through(through))
    }

    fn stats(&self) -> QueueStats {
        let st = self.shared.lock();
        QueueStats {
            rows: st.queued_rows,
            bytes: st.queued_bytes,
            capacity_rows: self.shared.capacity_rows,
            capacity_bytes: Some(self.shared.max_bytes),
            oldest_ms: if st.queued_rows == 0 {
                None
            } else {
                st.oldest_ms
            },
            next_offset: st.next_offset,
        }
    }

    fn set_in_flight(&self, batch: Option<InFlight>) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(self.record_in_flight(batch))
    }

    fn in_flight(&self) -> Option<InFlight> {
        self.shared.lock().in_flight.clone()
    }

    /// Moves the delivery cursor back to `from`; never forward (rows at or after the cursor
    /// are queued already). Returns the rows queued afterwards.
    fn replay_from(&self, from: Offset) -> BoxFuture<'_, Result<u64, QueueError>> {
        Box::pin(self.rewind(from))
    }

    fn sync(&self) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(self.sync_all())
    }
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| QueueError::Io(io::Error::other(e)))?
}

/// Whether a rate-limited warning may be logged now; records it if so.
fn due(last: &mut Option<Instant>, now: Instant) -> bool {
    if last.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
        *last = Some(now);
        true
    } else {
        false
    }
}

/// A place in the log: a segment (by first offset) and a byte position in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    seg: Offset,
    at: u64,
}

#[derive(Debug, Clone)]
struct SegmentInfo {
    first: Offset,
    /// Bytes durably written.
    len: u64,
    modified: SystemTime,
}

/// A byte range of one segment to read.
#[derive(Debug, Clone)]
struct Span {
    first: Offset,
    start: u64,
    end: u64,
}

#[derive(Debug)]
struct State {
    segments: VecDeque<SegmentInfo>,
    disk_bytes: u64,
    /// The first offset not yet committed.
    cursor: Offset,
    /// The cursor as the `cursor` file holds it; behind `cursor` after a failed write.
    persisted_cursor: Offset,
    /// Where the first record at or after `cursor` is (or will be written).
    read_pos: Pos,
    next_offset: Offset,
    queued_rows: u64,
    queued_bytes: u64,
    /// Accepted by `push` but not yet written.
    reserved_rows: u64,
    reserved_bytes: u64,
    oldest_ms: Option<u64>,
    in_flight: Option<InFlight>,
    /// Segments holding this offset or later are not deleted (a replay is reading them).
    pin: Option<Offset>,
}

impl State {
    /// Index and byte position of `pos`, moved to the next segment if its own is gone.
    fn resolve(&self, pos: Pos) -> Option<(usize, u64)> {
        match self.segments.binary_search_by_key(&pos.seg, |s| s.first) {
            Ok(i) => Some((i, pos.at)),
            Err(i) if i < self.segments.len() => Some((i, 0)),
            Err(_) => None,
        }
    }

    /// Everything durably written from `pos` on.
    fn spans_from(&self, pos: Pos) -> Vec<Span> {
        let Some((index, at)) = self.resolve(pos) else {
            return Vec::new();
        };
        self.segments
            .iter()
            .enumerate()
            .skip(index)
            .map(|(i, s)| Span {
                first: s.first,
                start: if i == index { at } else { 0 },
                end: s.len,
            })
            .collect()
    }

    /// From the segment holding `from` up to `until`.
    fn spans_between(&self, from: Offset, until: Pos) -> Vec<Span> {
        let start = self
            .segments
            .iter()
            .rposition(|s| s.first <= from)
            .unwrap_or(0);
        let (end_index, end_at) = self.resolve(until).unwrap_or((self.segments.len(), 0));
        self.segments
            .iter()
            .enumerate()
            .skip(start)
            .take_while(|(i, _)| *i <= end_index)
            .map(|(i, s)| Span {
                first: s.first,
                start: 0,
                end: if i == end_index {
                    end_at.min(s.len)
                } else {
                    s.len
                },
            })
            .collect()
    }

    fn end_pos(&self) -> Pos {
        self.segments.back().map_or(
            Pos {
                seg: self.next_offset,
                at: 0,
            },
            |s| Pos {
                seg: s.first,
                at: s.len,
            },
        )
    }
}

struct Shared {
    dir: PathBuf,
    capacity_rows: u64,
    max_bytes: u64,
    segment_bytes: u64,
    retention: Duration,
    state: Mutex<State>,
    fsyncs: AtomicU64,
    fsync_last_us: AtomicU64,
    fsync_total_us: AtomicU64,
    last_warn: Mutex<Option<Instant>>,
    last_corrupt_warn: Mutex<Option<Instant>>,
    /// Every change to the files goes through this.
    fs: Arc<dyn FileOps>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn release(&self, rows: u64, bytes: u64) {
        let mut st = self.lock();
        st.reserved_rows = st.reserved_rows.saturating_sub(rows);
        st.reserved_bytes = st.reserved_bytes.saturating_sub(bytes);
    }

    /// Logs a storage failure, at most once a minute.
    fn warn_unavailable(&self, e: &io::Error) {
        if due(&mut lock(&self.last_warn), Instant::now()) {
            warn!(dir = %self.dir.display(), error = %e, "spool write failed");
        }
    }

    /// Deletes fully committed segments, oldest first: those past retention, and, when
    /// `need` is given, as many more as it takes to fit `need` more bytes under `max_bytes`.
    fn drop_old_segments(&self, need: Option<u64>) {
        let now = SystemTime::now();
        let mut doomed = Vec::new();
        {
            let mut st = self.lock();
            // A restart resumes at the persisted cursor, so its segment must stay.
            let cursor = st.cursor.min(st.persisted_cursor);
            let keep_from = st.pin.map_or(cursor, |p| p.min(cursor));
            while st.segments.len() > 1 && st.segments[1].first <= keep_from {
                let age = now
                    .duration_since(st.segments[0].modified)
                    .unwrap_or(Duration::ZERO);
                let expired = age >= self.retention;
                let short = need.is_some_and(|n| st.disk_bytes + n > self.max_bytes);
                if !expired && !short {
                    break;
                }
                let Some(seg) = st.segments.pop_front() else {
                    break;
                };
                st.disk_bytes -= seg.len;
                doomed.push((seg, !expired));
            }
        }
        if doomed.is_empty() {
            return;
        }
        for (seg, early) in &doomed {
            let path = segment_path(&self.dir, seg.first);
            match self.fs.remove(&path) {
                Ok(()) if *early => {
                    warn!(
                        segment = seg.first,
                        bytes = seg.len,
                        "spool segment evicted early to make room"
                    );
                }
                Ok(()) => info!(segment = seg.first, "spool segment past retention deleted"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!(segment = seg.first, error = %e, "spool segment delete failed"),
            }
        }
        if let Err(e) = self.fs.sync_dir(&self.dir) {
            warn!(error = %e, "spool directory sync failed");
        }
    }

    /// Commits every record before `target` (blocking part of `commit`).
    fn advance_cursor(&self, target: Offset, spans: Vec<Span>) -> Result<(), QueueError> {
        let (mut rows, mut bytes) = (0u64, 0u64);
        let mut next_ms = None;
        let stop = walk(&self.dir, &spans, |_, item| match item.offset() {
            Some(o) if o >= target => {
                next_ms = item.received_ms();
                ControlFlow::Break(())
            }
            offset => {
                rows += u64::from(offset.is_some());
                bytes += item.len();
                ControlFlow::Continue(())
            }
        })?;
        let new_pos = stop.or_else(|| {
            spans.last().map(|s| Pos {
                seg: s.first,
                at: s.end,
            })
        });
        let need_oldest = {
            let mut st = self.lock();
            st.cursor = target;
            if let Some(pos) = new_pos {
                st.read_pos = pos;
            }
            st.queued_rows = st.queued_rows.saturating_sub(rows);
            st.queued_bytes = st.queued_bytes.saturating_sub(bytes);
            st.oldest_ms = next_ms;
            st.queued_rows > 0 && next_ms.is_none()
        };
        if need_oldest {
            // Rows were pushed after the walk began: read the first one's time.
            let spans = {
                let st = self.lock();
                st.spans_from(st.read_pos)
            };
            let mut first_ms = None;
            walk(&self.dir, &spans, |_, item| match item.received_ms() {
                Some(ms) => {
                    first_ms = Some(ms);
                    ControlFlow::Break(())
                }
                None => ControlFlow::Continue(()),
            })?;
            self.lock().oldest_ms = first_ms;
        }
        self.persist_cursor()
    }

    /// Writes the in-memory cursor to the `cursor` file if it is not there yet, then frees
    /// the segments that commit made deletable. Callers hold `cursor_lock`.
    fn persist_cursor(&self) -> Result<(), QueueError> {
        let cursor = {
            let st = self.lock();
            if st.persisted_cursor == st.cursor {
                return Ok(());
            }
            st.cursor
        };
        if let Err(e) = self
            .fs
            .replace(&self.dir, CURSOR_FILE, &encode_cursor(cursor))
        {
            warn!(dir = %self.dir.display(), cursor, error = %e, "spool cursor write failed");
            return Err(e.into());
        }
        self.lock().persisted_cursor = cursor;
        self.drop_old_segments(None);
        Ok(())
    }

    /// Makes records from `from` on queued again (blocking part of `replay_from`).
    fn move_cursor_back(&self, from: Offset, spans: Vec<Span>) -> Result<u64, QueueError> {
        let (mut rows, mut bytes) = (0u64, 0u64);
        let mut first: Option<Pos> = None;
        let mut first_ms = None;
        walk(&self.dir, &spans, |pos, item| {
            if first.is_some() || item.offset().is_some_and(|o| o >= from) {
                first.get_or_insert(pos);
                if first_ms.is_none() {
                    first_ms = item.received_ms();
                }
                rows += u64::from(item.offset().is_some());
                bytes += item.len();
            }
            ControlFlow::Continue(())
        })?;
        self.fs
            .replace(&self.dir, CURSOR_FILE, &encode_cursor(from))?;
        let mut st = self.lock();
        st.cursor = from;
        st.persisted_cursor = from;
        if let Some(pos) = first {
            st.read_pos = pos;
            st.queued_rows += rows;
            st.queued_bytes += bytes;
            if first_ms.is_some() {
                st.oldest_ms = first_ms;
            }
        }
        info!(from, rows, "spool replay");
        Ok(st.queued_rows)
    }
}

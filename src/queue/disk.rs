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
//!   rename, fsync the directory).
//! - `in_flight.json`: the batch a sink is delivering (`{"first","last","job_id"}`), replaced
//!   the same way; absent when nothing is in flight.
//! - `quarantine.log`: corrupt records found on open, one line each:
//!   `time_ms=<ms> segment=<file> position=<byte> offset=<n | unknown | unknown(a-b)>
//!   reason="<why>" len=<bytes> hex=<the raw bytes in hex>`.
//! - `*.tmp`: half-finished replacements; removed on open.
//!
//! # Record layout (integers little-endian)
//! ```text
//!  0..4   magic b"WSPL"
//!  4..8   row length (u32)
//!  8..12  header CRC32C over bytes 0..8 and 16..24 (magic, length, offset)
//! 12..16  record CRC32C over bytes 16..end (everything after this field)
//! 16..24  offset (u64)
//! 24..32  received_ms (u64)
//! 32..    the row's bytes (`Row::as_bytes`)
//! ```
//! The header CRC lets a reader trust the length of a record whose body is damaged and skip
//! it, and lets it find the next record after damaged framing (resync: the next position with
//! the magic, a valid header CRC and a valid record CRC).
//!
//! # Recovery on open
//! Segments from the one holding the cursor to the last are read and every CRC checked.
//! - A torn tail (a short header, a short body or bad bytes after the last good record of the
//!   last segment) is truncated back to the last good record.
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

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{BoxFuture, Entry, InFlight, Offset, PushError, Queue, QueueError, QueueStats, now_ms};
use crate::row::Row;

/// Segments roll at this size unless configured otherwise.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Committed segments are kept this long for replay unless configured otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

const HEADER_LEN: usize = 32;
const MAGIC: [u8; 4] = *b"WSPL";
const CURSOR_MAGIC: [u8; 4] = *b"WCUR";
const CURSOR_FILE: &str = "cursor";
const IN_FLIGHT_FILE: &str = "in_flight.json";
const QUARANTINE_FILE: &str = "quarantine.log";
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
}

impl DiskSpool {
    /// Opens (or creates) the spool in `config.dir`, repairing what a crash left behind.
    pub async fn open(config: DiskSpoolConfig) -> Result<DiskSpool, SpoolError> {
        let dir = config.dir.clone();
        let cfg = config.clone();
        let recovered = tokio::task::spawn_blocking(move || recover(&cfg))
            .await
            .map_err(|e| SpoolError::Io {
                path: dir.clone(),
                source: io::Error::other(e),
            })??;
        let Recovered {
            state,
            active,
            report,
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
            #[cfg(test)]
            fault: Mutex::new(None),
            #[cfg(test)]
            gate: Mutex::new(()),
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

    async fn peek_entries(&self, max: usize) -> Result<Vec<Entry>, QueueError> {
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
            walk(&shared.dir, &spans, |_, item| {
                match item {
                    Item::Record {
                        offset,
                        received_ms,
                        row,
                        ..
                    } if offset >= cursor => out.push(Entry {
                        offset,
                        received_ms,
                        row,
                    }),
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
        if target <= cursor {
            return Ok(());
        }
        let shared = self.shared.clone();
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
                    write_atomic(&shared.dir, IN_FLIGHT_FILE, &bytes)?;
                }
                None => {
                    match fs::remove_file(shared.dir.join(IN_FLIGHT_FILE)) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                        _ => {}
                    }
                    sync_dir(&shared.dir)?;
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
        Ok(())
    }

    fn send(&self, request: Request) -> Result<(), ()> {
        match &self.writer {
            Some(w) => w.send(request).map_err(|_| ()),
            None => Err(()),
        }
    }

    /// Makes the writer fail in the given way until cleared (tests only).
    #[cfg(test)]
    fn inject(&self, fault: Option<Fault>) {
        *lock(&self.shared.fault) = fault;
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

    fn peek(&self, max: usize) -> BoxFuture<'_, Result<Vec<Entry>, QueueError>> {
        Box::pin(self.peek_entries(max))
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent before it can panic, so a poisoned
    // lock is still safe to use.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Shared state

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
    #[cfg(test)]
    fault: Mutex<Option<Fault>>,
    /// Held by a test to keep the writer from starting a group.
    #[cfg(test)]
    gate: Mutex<()>,
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
            let keep_from = st.pin.map_or(st.cursor, |p| p.min(st.cursor));
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
            match fs::remove_file(&path) {
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
        if let Err(e) = sync_dir(&self.dir) {
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
        write_atomic(&self.dir, CURSOR_FILE, &encode_cursor(target))?;
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
        write_atomic(&self.dir, CURSOR_FILE, &encode_cursor(from))?;
        let mut st = self.lock();
        st.cursor = from;
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

// ---------------------------------------------------------------------------------------------
// The writer thread: group commit

#[cfg(test)]
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Writes `keep` bytes of the next group for real, then fails with `kind`.
    Write { keep: usize, kind: io::ErrorKind },
    /// The segment fsync fails.
    Sync,
    /// Creating a new segment fails as on a read-only file system.
    Create,
    /// Like `Write`, and cutting the partial write back fails too.
    WriteAndTruncate { keep: usize },
}

enum Request {
    Push(PushRequest),
    Sync(oneshot::Sender<io::Result<()>>),
}

/// Where a push's outcome goes.
type Reply = oneshot::Sender<Result<(), PushError>>;

struct PushRequest {
    rows: Vec<Row>,
    received_ms: u64,
    bytes: u64,
    reply: Reply,
}

/// Pushes encoded into one buffer, written and synced together.
struct Group {
    buf: Vec<u8>,
    waiters: Vec<(Reply, u64, u64)>,
    rows: u64,
    bytes: u64,
    first_ms: Option<u64>,
    start_next: Offset,
}

impl Group {
    fn new(start_next: Offset) -> Group {
        Group {
            buf: Vec::new(),
            waiters: Vec::new(),
            rows: 0,
            bytes: 0,
            first_ms: None,
            start_next,
        }
    }
}

struct Writer {
    shared: Arc<Shared>,
    file: File,
    seg_first: Offset,
    /// Durable length of the active segment.
    len: u64,
    /// Offset of the next record to encode.
    next: Offset,
    /// A failed write could not be truncated away; nothing is written until it is.
    dirty: bool,
}

impl Writer {
    fn run(mut self, requests: mpsc::Receiver<Request>) {
        while let Ok(first) = requests.recv() {
            #[cfg(test)]
            let gate = lock(&self.shared.gate);
            let mut batch = vec![first];
            batch.extend(requests.try_iter());
            #[cfg(test)]
            drop(gate);
            let mut group = Group::new(self.next);
            for request in batch {
                match request {
                    Request::Push(push) => self.add(&mut group, push),
                    Request::Sync(reply) => {
                        self.flush(&mut group);
                        let result = self.timed_sync().and_then(|()| sync_dir(&self.shared.dir));
                        let _ = reply.send(result);
                    }
                }
            }
            self.flush(&mut group);
        }
    }

    fn add(&mut self, group: &mut Group, push: PushRequest) {
        if self.dirty {
            self.flush(group);
            if let Err(e) = self.repair() {
                return self.refuse(push, PushError::Unavailable(e.to_string()));
            }
        }
        let pending = self.len + group.buf.len() as u64;
        if pending > 0 && pending + push.bytes > self.shared.segment_bytes {
            self.flush(group);
            if self.len > 0
                && let Err(e) = self.roll()
            {
                self.shared.warn_unavailable(&e);
                return self.refuse(push, PushError::Unavailable(e.to_string()));
            }
        }
        if !self.fits(group.buf.len() as u64 + push.bytes) {
            self.flush(group);
            if !self.make_room(push.bytes) {
                let queued = self.shared.lock().queued_bytes;
                let err = PushError::FullBytes {
                    queued,
                    capacity: self.shared.max_bytes,
                    incoming: push.bytes,
                };
                return self.refuse(push, err);
            }
        }
        for row in &push.rows {
            encode_record(&mut group.buf, self.next, push.received_ms, row.as_bytes());
            self.next += 1;
        }
        let rows = push.rows.len() as u64;
        group.rows += rows;
        group.bytes += push.bytes;
        group.first_ms.get_or_insert(push.received_ms);
        group.waiters.push((push.reply, rows, push.bytes));
    }

    fn refuse(&self, push: PushRequest, err: PushError) {
        self.shared.release(push.rows.len() as u64, push.bytes);
        let _ = push.reply.send(Err(err));
    }

    fn fits(&self, bytes: u64) -> bool {
        self.shared.lock().disk_bytes + bytes <= self.shared.max_bytes
    }

    /// Deletes committed segments early to fit `bytes`; rolls a fully committed active
    /// segment first if that is what it takes.
    fn make_room(&mut self, bytes: u64) -> bool {
        self.shared.drop_old_segments(Some(bytes));
        if self.fits(bytes) {
            return true;
        }
        let all_committed = self.shared.lock().cursor >= self.next;
        if all_committed && self.len > 0 {
            match self.roll() {
                Ok(()) => self.shared.drop_old_segments(Some(bytes)),
                Err(e) => self.shared.warn_unavailable(&e),
            }
        }
        self.fits(bytes)
    }

    /// Writes and syncs the group, then answers its waiters.
    fn flush(&mut self, group: &mut Group) {
        if group.waiters.is_empty() {
            return;
        }
        let g = std::mem::replace(group, Group::new(self.next));
        match self.write_and_sync(&g.buf) {
            Ok(()) => {
                self.len += g.buf.len() as u64;
                {
                    let mut st = self.shared.lock();
                    if let Some(seg) = st.segments.back_mut() {
                        seg.len = self.len;
                        seg.modified = SystemTime::now();
                    }
                    st.disk_bytes += g.buf.len() as u64;
                    st.next_offset = self.next;
                    st.queued_rows += g.rows;
                    st.queued_bytes += g.bytes;
                    st.reserved_rows = st.reserved_rows.saturating_sub(g.rows);
                    st.reserved_bytes = st.reserved_bytes.saturating_sub(g.bytes);
                    if st.oldest_ms.is_none() {
                        st.oldest_ms = g.first_ms;
                    }
                }
                for (reply, _, _) in g.waiters {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                self.shared.warn_unavailable(&e);
                self.next = g.start_next;
                if let Err(e) = self.repair() {
                    self.dirty = true;
                    self.shared.warn_unavailable(&e);
                }
                for (reply, rows, bytes) in g.waiters {
                    self.shared.release(rows, bytes);
                    let _ = reply.send(Err(PushError::Unavailable(e.to_string())));
                }
            }
        }
        *group = Group::new(self.next);
    }

    fn write_and_sync(&mut self, buf: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        match *lock(&self.shared.fault) {
            Some(Fault::Write { keep, kind }) => {
                self.file
                    .write_all_at(&buf[..keep.min(buf.len())], self.len)?;
                return Err(io::Error::from(kind));
            }
            Some(Fault::WriteAndTruncate { keep }) => {
                self.file
                    .write_all_at(&buf[..keep.min(buf.len())], self.len)?;
                return Err(io::Error::from(io::ErrorKind::StorageFull));
            }
            _ => {}
        }
        self.file.write_all_at(buf, self.len)?;
        self.timed_sync()
    }

    fn timed_sync(&self) -> io::Result<()> {
        #[cfg(test)]
        if matches!(*lock(&self.shared.fault), Some(Fault::Sync)) {
            return Err(io::Error::other("injected fsync failure"));
        }
        let started = Instant::now();
        self.file.sync_data()?;
        let us = started.elapsed().as_micros() as u64;
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.shared.fsync_last_us.store(us, Ordering::Relaxed);
        self.shared.fsync_total_us.fetch_add(us, Ordering::Relaxed);
        Ok(())
    }

    /// Cuts the active segment back to its last good record, so a failed write never shows.
    fn repair(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if matches!(
            *lock(&self.shared.fault),
            Some(Fault::WriteAndTruncate { .. })
        ) {
            return Err(io::Error::other("injected truncate failure"));
        }
        self.file.set_len(self.len)?;
        self.file.sync_data()?;
        self.dirty = false;
        Ok(())
    }

    /// Starts a new segment at the next offset.
    fn roll(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if matches!(*lock(&self.shared.fault), Some(Fault::Create)) {
            return Err(io::Error::from(io::ErrorKind::ReadOnlyFilesystem));
        }
        let first = self.next;
        let path = segment_path(&self.shared.dir, first);
        // No record at or after `first` exists anywhere, so a leftover file of that name
        // (from a roll whose directory sync failed) holds nothing and may be emptied.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        sync_dir(&self.shared.dir)?;
        {
            let now = SystemTime::now();
            let mut st = self.shared.lock();
            if let Some(last) = st.segments.back_mut() {
                last.modified = now;
            }
            st.segments.push_back(SegmentInfo {
                first,
                len: 0,
                modified: now,
            });
        }
        self.file = file;
        self.seg_first = first;
        self.len = 0;
        info!(segment = self.seg_first, "spool segment started");
        self.shared.drop_old_segments(None);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Record format

fn record_len(row: &Row) -> usize {
    HEADER_LEN + row.encoded_len()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// CRC of magic, length and offset; `rec` holds at least a header.
fn header_crc(rec: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&rec[0..8]), &rec[16..24])
}

fn encode_record(buf: &mut Vec<u8>, offset: Offset, received_ms: u64, row: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(&MAGIC);
    // Rows longer than u32::MAX are refused by `push`.
    buf.extend_from_slice(&(row.len() as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 8]);
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&received_ms.to_le_bytes());
    buf.extend_from_slice(row);
    let rec = &mut buf[start..];
    let hcrc = header_crc(rec);
    let crc = crc32c::crc32c(&rec[16..]);
    rec[8..12].copy_from_slice(&hcrc.to_le_bytes());
    rec[12..16].copy_from_slice(&crc.to_le_bytes());
}

struct Header {
    total: usize,
    offset: Offset,
    received_ms: u64,
}

fn parse_header(b: &[u8]) -> Option<Header> {
    if b.len() < HEADER_LEN || b[0..4] != MAGIC || u32_at(b, 8) != header_crc(b) {
        return None;
    }
    Some(Header {
        total: HEADER_LEN + u32_at(b, 4) as usize,
        offset: u64_at(b, 16),
        received_ms: u64_at(b, 24),
    })
}

/// `rec` is exactly one record.
fn body_ok(rec: &[u8]) -> bool {
    u32_at(rec, 12) == crc32c::crc32c(&rec[16..])
}

/// What a reader finds at a position.
#[derive(Debug)]
enum Item {
    Record {
        offset: Offset,
        received_ms: u64,
        row: Row,
        len: u64,
    },
    /// Bytes that are not a good record. `offset` is known when the header was intact.
    Corrupt {
        offset: Option<Offset>,
        len: u64,
        reason: &'static str,
        raw: Vec<u8>,
    },
}

impl Item {
    fn len(&self) -> u64 {
        match self {
            Item::Record { len, .. } | Item::Corrupt { len, .. } => *len,
        }
    }

    fn offset(&self) -> Option<Offset> {
        match self {
            Item::Record { offset, .. } => Some(*offset),
            Item::Corrupt { offset, .. } => *offset,
        }
    }

    fn received_ms(&self) -> Option<u64> {
        match self {
            Item::Record { received_ms, .. } => Some(*received_ms),
            Item::Corrupt { .. } => None,
        }
    }
}

enum Parsed {
    Item(Item),
    NeedMore,
}

fn corrupt(offset: Option<Offset>, bytes: &[u8], reason: &'static str) -> Parsed {
    Parsed::Item(Item::Corrupt {
        offset,
        len: bytes.len() as u64,
        reason,
        raw: bytes.to_vec(),
    })
}

/// Reads the item at the start of `b` (non-empty). `at_eof`: `b` runs to the end of the data.
fn parse_one(b: &[u8], at_eof: bool) -> Parsed {
    match parse_header(b) {
        Some(h) if b.len() >= h.total => {
            let rec = &b[..h.total];
            if !body_ok(rec) {
                return corrupt(Some(h.offset), rec, "checksum mismatch");
            }
            match Row::from_bytes(&rec[HEADER_LEN..]) {
                Ok(row) => Parsed::Item(Item::Record {
                    offset: h.offset,
                    received_ms: h.received_ms,
                    row,
                    len: h.total as u64,
                }),
                Err(_) => corrupt(Some(h.offset), rec, "row does not decode"),
            }
        }
        Some(h) if at_eof => corrupt(Some(h.offset), b, "truncated record"),
        Some(_) => Parsed::NeedMore,
        None => {
            let reason = if b.len() < HEADER_LEN {
                "truncated header"
            } else {
                "bad header"
            };
            match resync(b) {
                Some(q) => corrupt(None, &b[..q], reason),
                None if at_eof => corrupt(None, b, reason),
                None => Parsed::NeedMore,
            }
        }
    }
}

/// The first position after 0 where a whole, intact record starts.
fn resync(b: &[u8]) -> Option<usize> {
    (1..b.len())
        .filter(|&q| b[q..].starts_with(&MAGIC))
        .find(|&q| {
            parse_header(&b[q..])
                .is_some_and(|h| b.len() - q >= h.total && body_ok(&b[q..q + h.total]))
        })
}

/// Reads items from a byte range of a segment file in chunks.
struct SegmentReader {
    file: File,
    end: u64,
    buf: Vec<u8>,
    buf_pos: u64,
    at: usize,
}

impl SegmentReader {
    fn open(path: &Path, start: u64, end: u64) -> io::Result<SegmentReader> {
        Ok(SegmentReader {
            file: File::open(path)?,
            end,
            buf: Vec::new(),
            buf_pos: start,
            at: 0,
        })
    }

    fn pos(&self) -> u64 {
        self.buf_pos + self.at as u64
    }

    fn next_item(&mut self) -> io::Result<Option<Item>> {
        loop {
            let loaded_end = self.buf_pos + self.buf.len() as u64;
            let at_eof = loaded_end >= self.end;
            let avail = &self.buf[self.at..];
            if avail.is_empty() {
                if at_eof {
                    return Ok(None);
                }
            } else {
                match parse_one(avail, at_eof) {
                    Parsed::Item(item) => {
                        self.at += item.len() as usize;
                        return Ok(Some(item));
                    }
                    // Cannot happen at the end of the data; stop rather than spin.
                    Parsed::NeedMore if at_eof => return Ok(None),
                    Parsed::NeedMore => {}
                }
            }
            self.buf.drain(..self.at);
            self.buf_pos += self.at as u64;
            self.at = 0;
            let start = self.buf_pos + self.buf.len() as u64;
            let want = READ_CHUNK.max(self.buf.len()) as u64;
            let n = (self.end - start).min(want) as usize;
            let old = self.buf.len();
            self.buf.resize(old + n, 0);
            self.file.read_exact_at(&mut self.buf[old..], start)?;
        }
    }
}

/// Reads the spans in order, handing each item and its position to `visit` until it breaks.
/// Returns where it broke. Segments deleted meanwhile are skipped.
fn walk(
    dir: &Path,
    spans: &[Span],
    mut visit: impl FnMut(Pos, Item) -> ControlFlow<()>,
) -> io::Result<Option<Pos>> {
    for span in spans {
        if span.start >= span.end {
            continue;
        }
        let path = segment_path(dir, span.first);
        let mut reader = match SegmentReader::open(&path, span.start, span.end) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        loop {
            let pos = Pos {
                seg: span.first,
                at: reader.pos(),
            };
            let Some(item) = reader.next_item()? else {
                break;
            };
            if visit(pos, item).is_break() {
                return Ok(Some(pos));
            }
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------------
// Small files

fn segment_path(dir: &Path, first: Offset) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

fn parse_segment_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `dir/name` with `bytes`: write a temp file, fsync, rename, fsync the directory.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let file = File::create(&tmp)?;
        file.write_all_at(bytes, 0)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

fn encode_cursor(cursor: Offset) -> [u8; 16] {
    let mut b = [0; 16];
    b[0..4].copy_from_slice(&CURSOR_MAGIC);
    b[8..16].copy_from_slice(&cursor.to_le_bytes());
    let crc = crc32c::crc32c(&b[8..16]);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The cursor, or `None` when the file is missing or damaged.
fn read_cursor(dir: &Path) -> io::Result<Option<Offset>> {
    let b = match fs::read(dir.join(CURSOR_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if b.len() == 16 && b[0..4] == CURSOR_MAGIC && u32_at(&b, 4) == crc32c::crc32c(&b[8..16]) {
        Ok(Some(u64_at(&b, 8)))
    } else {
        warn!(dir = %dir.display(), "spool cursor file is damaged");
        Ok(None)
    }
}

#[derive(Serialize, Deserialize)]
struct InFlightFile {
    first: Offset,
    last: Offset,
    job_id: Option<String>,
}

fn read_in_flight(dir: &Path) -> io::Result<Option<InFlight>> {
    let b = match fs::read(dir.join(IN_FLIGHT_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match serde_json::from_slice::<InFlightFile>(&b) {
        Ok(f) => Ok(Some(InFlight {
            first: f.first,
            last: f.last,
            job_id: f.job_id,
        })),
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "spool in-flight file is damaged");
            Ok(None)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Recovery

struct Recovered {
    state: State,
    active: File,
    report: RecoveryReport,
}

/// A damaged stretch of a segment.
struct Bad {
    pos: u64,
    len: u64,
    /// Exact when the header was intact.
    offset: Option<Offset>,
    /// For a damaged header: the offsets it may have held (first, last if known).
    guess: Option<(Offset, Option<Offset>)>,
    reason: &'static str,
    raw: Vec<u8>,
}

#[derive(Default)]
struct Scan {
    len: u64,
    /// End of the last good record.
    good_end: u64,
    /// End of the last good record before the cursor.
    committed_end: u64,
    last_offset: Option<Offset>,
    bad: Vec<Bad>,
    queued_rows: u64,
    queued_bytes: u64,
    first_queued: Option<(u64, u64)>,
}

fn scan_segment(path: &Path, cursor: Offset, min_offset: Offset) -> io::Result<Scan> {
    let len = fs::metadata(path)?.len();
    let mut reader = SegmentReader::open(path, 0, len)?;
    let mut s = Scan {
        len,
        ..Scan::default()
    };
    let mut next_min = min_offset;
    let mut open_guesses = Vec::new();
    loop {
        let pos = reader.pos();
        let Some(item) = reader.next_item()? else {
            break;
        };
        match item {
            Item::Record {
                offset,
                received_ms,
                len,
                ..
            } if offset >= next_min => {
                for i in open_guesses.drain(..) {
                    if let Some(Bad {
                        guess: Some((_, hi)),
                        ..
                    }) = s.bad.get_mut(i)
                    {
                        *hi = offset.checked_sub(1);
                    }
                }
                next_min = offset + 1;
                s.last_offset = Some(offset);
                s.good_end = pos + len;
                if offset < cursor {
                    s.committed_end = pos + len;
                } else {
                    s.queued_rows += 1;
                    s.queued_bytes += len;
                    s.first_queued.get_or_insert((pos, received_ms));
                }
            }
            Item::Record {
                offset,
                received_ms,
                row,
                len,
            } => {
                let mut raw = Vec::new();
                encode_record(&mut raw, offset, received_ms, row.as_bytes());
                s.bad.push(Bad {
                    pos,
                    len,
                    offset: Some(offset),
                    guess: None,
                    reason: "offset out of order",
                    raw,
                });
            }
            Item::Corrupt {
                offset,
                len,
                reason,
                raw,
            } => {
                let guess = match offset {
                    Some(_) => None,
                    None => {
                        open_guesses.push(s.bad.len());
                        Some((next_min, None))
                    }
                };
                s.bad.push(Bad {
                    pos,
                    len,
                    offset,
                    guess,
                    reason,
                    raw,
                });
            }
        }
    }
    Ok(s)
}

/// Truncates a torn tail and quarantines corrupt records. Returns whether it changed the
/// segment (so it must be scanned again).
fn fix_segment(
    dir: &Path,
    path: &Path,
    scan: &Scan,
    cursor: Offset,
    is_last: bool,
    report: &mut RecoveryReport,
) -> io::Result<bool> {
    let tail_from = if is_last { scan.good_end } else { scan.len };
    let quarantine: Vec<&Bad> = scan
        .bad
        .iter()
        .filter(|b| b.pos < tail_from)
        .filter(|b| match b.offset {
            Some(o) => o >= cursor,
            None => b.pos >= scan.committed_end,
        })
        .collect();
    let truncate = is_last && scan.len > scan.good_end;
    if quarantine.is_empty() && !truncate {
        return Ok(false);
    }
    if truncate {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(scan.good_end)?;
        file.sync_all()?;
        let bytes = scan.len - scan.good_end;
        report.truncated_bytes += bytes;
        warn!(segment = %path.display(), bytes, "spool torn tail truncated");
    }
    if !quarantine.is_empty() {
        append_quarantine(dir, path, &quarantine)?;
        rewrite_without(path, &quarantine)?;
        sync_dir(dir)?;
        for b in &quarantine {
            warn!(segment = %path.display(), position = b.pos, offset = ?b.offset, reason = b.reason, "spool record quarantined");
        }
        report.quarantined += quarantine.len() as u64;
    }
    Ok(true)
}

fn append_quarantine(dir: &Path, segment: &Path, bad: &[&Bad]) -> io::Result<()> {
    let name = segment
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut text = String::new();
    for b in bad {
        let offset = match (b.offset, b.guess) {
            (Some(o), _) => o.to_string(),
            (None, Some((lo, Some(hi)))) if hi >= lo => format!("unknown({lo}-{hi})"),
            _ => "unknown".to_owned(),
        };
        let _ = write!(
            text,
            "time_ms={} segment={name} position={} offset={offset} reason=\"{}\" len={} hex=",
            now_ms(),
            b.pos,
            b.reason,
            b.len
        );
        for byte in &b.raw {
            let _ = write!(text, "{byte:02x}");
        }
        text.push('\n');
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(QUARANTINE_FILE))?;
    io::Write::write_all(&mut file, text.as_bytes())?;
    file.sync_all()
}

/// Rewrites the segment without the given (sorted, disjoint) stretches.
fn rewrite_without(path: &Path, bad: &[&Bad]) -> io::Result<()> {
    let tmp = path.with_extension("seg.tmp");
    let mut src = File::open(path)?;
    let len = src.metadata()?.len();
    let mut dst = File::create(&tmp)?;
    let mut at = 0;
    let mut copy = |src: &mut File, from: u64, to: u64| -> io::Result<()> {
        if to > from {
            src.seek(SeekFrom::Start(from))?;
            io::copy(&mut Read::take(&mut *src, to - from), &mut dst)?;
        }
        Ok(())
    };
    for b in bad {
        copy(&mut src, at, b.pos)?;
        at = b.pos + b.len;
    }
    copy(&mut src, at, len)?;
    dst.sync_all()?;
    fs::rename(&tmp, path)
}

fn recover(cfg: &DiskSpoolConfig) -> Result<Recovered, SpoolError> {
    let dir = cfg.dir.as_path();
    let at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SpoolError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(at(dir))?;
    let mut firsts = Vec::new();
    for entry in fs::read_dir(dir).map_err(at(dir))? {
        let entry = entry.map_err(at(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.ends_with(".tmp") {
            fs::remove_file(entry.path()).map_err(at(&entry.path()))?;
        } else if let Some(first) = parse_segment_name(name) {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();

    let mut report = RecoveryReport::default();
    let cursor_file = read_cursor(dir).map_err(at(&dir.join(CURSOR_FILE)))?;
    let cursor = match cursor_file {
        Some(c) => c,
        None => {
            let oldest = firsts.first().copied().unwrap_or(0);
            if !firsts.is_empty() {
                report.cursor_missing = true;
                warn!(dir = %dir.display(), from = oldest, "spool cursor missing, delivering from the oldest retained row");
            }
            oldest
        }
    };

    let mut segments = VecDeque::new();
    for &first in &firsts {
        let path = segment_path(dir, first);
        let meta = fs::metadata(&path).map_err(at(&path))?;
        segments.push_back(SegmentInfo {
            first,
            len: meta.len(),
            modified: meta.modified().unwrap_or_else(|_| SystemTime::now()),
        });
    }

    let start = firsts.iter().rposition(|&f| f <= cursor).unwrap_or(0);
    let mut read_pos = None;
    let (mut queued_rows, mut queued_bytes, mut oldest_ms) = (0, 0, None);
    let mut min_next = firsts.get(start).copied().unwrap_or(0);
    let count = segments.len();
    for (i, segment) in segments.iter_mut().enumerate().skip(start) {
        let first = segment.first;
        let path = segment_path(dir, first);
        let is_last = i + 1 == count;
        let mut scan = scan_segment(&path, cursor, min_next.max(first)).map_err(at(&path))?;
        for _ in 0..3 {
            if !fix_segment(dir, &path, &scan, cursor, is_last, &mut report).map_err(at(&path))? {
                break;
            }
            scan = scan_segment(&path, cursor, min_next.max(first)).map_err(at(&path))?;
        }
        segment.len = scan.len;
        if let Some(o) = scan.last_offset {
            min_next = o + 1;
        }
        queued_rows += scan.queued_rows;
        queued_bytes += scan.queued_bytes;
        if read_pos.is_none()
            && let Some((at, ms)) = scan.first_queued
        {
            read_pos = Some(Pos { seg: first, at });
            oldest_ms = Some(ms);
        }
    }
    let last_first = segments.back().map_or(0, |s| s.first);
    let next_offset = cursor.max(min_next).max(last_first);

    if segments.is_empty() {
        let path = segment_path(dir, next_offset);
        File::create(&path).map_err(at(&path))?;
        sync_dir(dir).map_err(at(dir))?;
        segments.push_back(SegmentInfo {
            first: next_offset,
            len: 0,
            modified: SystemTime::now(),
        });
    }
    if cursor_file != Some(cursor) {
        write_atomic(dir, CURSOR_FILE, &encode_cursor(cursor)).map_err(at(dir))?;
    }
    let in_flight = read_in_flight(dir).map_err(at(&dir.join(IN_FLIGHT_FILE)))?;
    let active_path = segment_path(dir, segments.back().map_or(next_offset, |s| s.first));
    let active = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&active_path)
        .map_err(at(&active_path))?;

    let mut state = State {
        disk_bytes: segments.iter().map(|s| s.len).sum(),
        segments,
        cursor,
        read_pos: Pos { seg: 0, at: 0 },
        next_offset,
        queued_rows,
        queued_bytes,
        reserved_rows: 0,
        reserved_bytes: 0,
        oldest_ms,
        in_flight,
        pin: None,
    };
    state.read_pos = read_pos.unwrap_or_else(|| state.end_pos());
    report.segments = state.segments.len();
    report.queued_rows = queued_rows;
    report.cursor = cursor;
    report.next_offset = next_offset;
    info!(
        dir = %dir.display(),
        segments = report.segments,
        queued = queued_rows,
        quarantined = report.quarantined,
        truncated_bytes = report.truncated_bytes,
        "spool opened"
    );
    Ok(Recovered {
        state,
        active,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    fn row(i: u64) -> Row {
        Row::from_pairs([("i", i.to_string().as_str())]).expect("a valid row")
    }

    fn rows(range: std::ops::Range<u64>) -> Vec<Row> {
        range.map(row).collect()
    }

    fn config(dir: &Path) -> DiskSpoolConfig {
        DiskSpoolConfig {
            dir: dir.to_path_buf(),
            capacity_rows: 10_000,
            max_bytes: 1 << 24,
            segment_bytes: 1 << 20,
            retention: Duration::from_secs(3600),
        }
    }

    async fn open(cfg: &DiskSpoolConfig) -> DiskSpool {
        DiskSpool::open(cfg.clone()).await.expect("spool opens")
    }

    async fn offsets(q: &DiskSpool) -> Vec<Offset> {
        q.peek(100_000)
            .await
            .expect("peek works")
            .iter()
            .map(|e| e.offset)
            .collect()
    }

    /// The `i` field of every queued row, which tests set to the row's expected offset.
    async fn ids(q: &DiskSpool) -> Vec<u64> {
        q.peek(100_000)
            .await
            .expect("peek works")
            .iter()
            .map(|e| {
                e.row
                    .get("i")
                    .and_then(|f| f.text.parse().ok())
                    .unwrap_or(u64::MAX)
            })
            .collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .expect("dir readable")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        v.sort();
        v
    }

    fn one_record_len() -> u64 {
        record_len(&row(0)) as u64
    }

    #[tokio::test]
    async fn a_push_that_does_not_fit_queues_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(&DiskSpoolConfig {
            capacity_rows: 5,
            ..config(dir.path())
        })
        .await;
        q.push(rows(0..3)).await.unwrap();
        let err = q.push(rows(3..6)).await.unwrap_err();
        assert!(matches!(
            err,
            PushError::FullRows {
                queued: 3,
                capacity: 5,
                incoming: 3
            }
        ));
        assert_eq!(q.stats().rows, 3);
        q.push(rows(3..5)).await.unwrap();
        assert_eq!(offsets(&q).await, vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn byte_capacity_counts_queued_record_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(&DiskSpoolConfig {
            max_bytes: one_record_len() * 2,
            ..config(dir.path())
        })
        .await;
        q.push(rows(0..2)).await.unwrap();
        assert_eq!(q.stats().bytes, one_record_len() * 2);
        assert!(matches!(
            q.push(rows(2..3)).await,
            Err(PushError::FullBytes { .. })
        ));
        assert_eq!(q.stats().rows, 2);
    }

    #[tokio::test]
    async fn rows_leave_only_when_committed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(&config(dir.path())).await;
        q.push(rows(0..4)).await.unwrap();
        let batch = q.peek(3).await.unwrap();
        assert_eq!(
            batch.iter().map(|e| e.offset).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(batch[1].row, row(1));
        assert_eq!(q.stats().rows, 4, "peeking removes nothing");
        q.commit(1).await.unwrap();
        assert_eq!(offsets(&q).await, vec![2, 3]);
        let stats = q.stats();
        assert_eq!(stats.rows, 2);
        assert_eq!(stats.bytes, one_record_len() * 2);
        assert!(stats.oldest_ms.is_some());
        q.commit(u64::MAX).await.unwrap();
        let stats = q.stats();
        assert_eq!((stats.rows, stats.bytes, stats.oldest_ms), (0, 0, None));
        q.push(rows(4..5)).await.unwrap();
        assert_eq!(
            offsets(&q).await,
            vec![4],
            "a commit never reaches rows not yet pushed"
        );
    }

    #[tokio::test]
    async fn offsets_continue_and_committed_rows_stay_gone_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        {
            let q = open(&cfg).await;
            q.push(rows(0..5)).await.unwrap();
            q.commit(2).await.unwrap();
        }
        let q = open(&cfg).await;
        assert_eq!(q.recovery().queued_rows, 2);
        assert_eq!(q.recovery().quarantined, 0);
        assert_eq!(ids(&q).await, vec![3, 4]);
        assert_eq!(q.stats().next_offset, 5);
        q.commit(4).await.unwrap();
        drop(q);
        let q = open(&cfg).await;
        assert_eq!(q.stats().rows, 0);
        q.push(rows(5..6)).await.unwrap();
        assert_eq!(offsets(&q).await, vec![5], "offsets are never reused");
    }

    #[tokio::test]
    async fn the_in_flight_record_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let batch = InFlight {
            first: 3,
            last: 9,
            job_id: Some("job-1".into()),
        };
        {
            let q = open(&cfg).await;
            q.set_in_flight(Some(batch.clone())).await.unwrap();
        }
        let q = open(&cfg).await;
        assert_eq!(q.in_flight(), Some(batch));
        q.set_in_flight(None).await.unwrap();
        drop(q);
        assert_eq!(open(&cfg).await.in_flight(), None);
    }

    // Only the writer thread waits on the gate, never a task, so holding it across the
    // yields below cannot deadlock the runtime.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_pushes_share_one_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let q = Arc::new(open(&config(dir.path())).await);
        let before = q.fsync_count();
        let gate = lock(&q.shared.gate);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..50 {
            let q = q.clone();
            tasks.spawn(async move { q.push(rows(i..i + 1)).await });
        }
        // Hold the writer until every push has handed over its rows.
        while q.shared.lock().reserved_rows < 50 {
            tokio::task::yield_now().await;
        }
        drop(gate);
        while let Some(result) = tasks.join_next().await {
            result.unwrap().unwrap();
        }
        let fsyncs = q.fsync_count() - before;
        assert!(fsyncs <= 2, "50 concurrent pushes took {fsyncs} fsyncs");
        assert_eq!(q.stats().rows, 50);
        assert!(q.fsync_total() >= q.fsync_last());
        let mut got = ids(&q).await;
        got.sort_unstable();
        assert_eq!(got, (0..50).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_torn_tail_is_truncated_and_every_complete_record_survives() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        {
            let q = open(&cfg).await;
            q.push(rows(0..5)).await.unwrap();
        }
        let seg = segment_files(dir.path()).pop().unwrap();
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let q = open(&cfg).await;
        let report = q.recovery().clone();
        assert_eq!(report.truncated_bytes, one_record_len() - 3);
        assert_eq!(report.quarantined, 0);
        assert_eq!(ids(&q).await, vec![0, 1, 2, 3]);
        q.push(rows(4..6)).await.unwrap();
        drop(q);
        let q = open(&cfg).await;
        assert_eq!(q.recovery().truncated_bytes, 0, "the repair was durable");
        assert_eq!(offsets(&q).await, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(ids(&q).await, vec![0, 1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn garbage_after_the_last_record_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        {
            let q = open(&cfg).await;
            q.push(rows(0..2)).await.unwrap();
        }
        let seg = segment_files(dir.path()).pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        io::Write::write_all(&mut f, &[0u8; 100]).unwrap();
        let q = open(&cfg).await;
        assert_eq!(q.recovery().truncated_bytes, 100);
        assert_eq!(ids(&q).await, vec![0, 1]);
    }

    #[tokio::test]
    async fn a_corrupt_record_in_the_middle_is_quarantined_and_the_rest_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        {
            let q = open(&cfg).await;
            q.push(rows(0..10)).await.unwrap();
        }
        let seg = segment_files(dir.path()).pop().unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        // The last byte of record 4's row.
        let at = (one_record_len() * 5 - 1) as usize;
        bytes[at] ^= 0x40;
        fs::write(&seg, &bytes).unwrap();

        let q = open(&cfg).await;
        assert_eq!(q.recovery().quarantined, 1);
        assert_eq!(q.recovery().truncated_bytes, 0);
        assert_eq!(ids(&q).await, vec![0, 1, 2, 3, 5, 6, 7, 8, 9]);
        assert_eq!(offsets(&q).await, vec![0, 1, 2, 3, 5, 6, 7, 8, 9]);
        assert_eq!(q.stats().rows, 9);
        let log = fs::read_to_string(dir.path().join(QUARANTINE_FILE)).unwrap();
        assert_eq!(log.lines().count(), 1);
        assert!(log.contains("offset=4 "), "{log}");
        assert!(log.contains("reason=\"checksum mismatch\""), "{log}");
        assert!(log.contains(&format!("len={}", one_record_len())), "{log}");
        q.push(rows(10..11)).await.unwrap();
        drop(q);

        let q = open(&cfg).await;
        assert_eq!(q.recovery().quarantined, 0, "a record is quarantined once");
        assert_eq!(ids(&q).await, vec![0, 1, 2, 3, 5, 6, 7, 8, 9, 10]);
    }

    #[tokio::test]
    async fn a_damaged_header_is_skipped_by_resyncing_on_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        {
            let q = open(&cfg).await;
            q.push(rows(0..6)).await.unwrap();
        }
        let seg = segment_files(dir.path()).pop().unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        // The length field of record 2.
        bytes[(one_record_len() * 2 + 5) as usize] ^= 0x7f;
        fs::write(&seg, &bytes).unwrap();
        let q = open(&cfg).await;
        assert_eq!(q.recovery().quarantined, 1);
        assert_eq!(ids(&q).await, vec![0, 1, 3, 4, 5]);
        let log = fs::read_to_string(dir.path().join(QUARANTINE_FILE)).unwrap();
        assert!(log.contains("offset=unknown(2-2)"), "{log}");
        assert!(log.contains("reason=\"bad header\""), "{log}");
    }

    #[tokio::test]
    async fn a_missing_cursor_file_redelivers_instead_of_losing_rows() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        {
            let q = open(&cfg).await;
            q.push(rows(0..6)).await.unwrap();
            q.commit(2).await.unwrap();
        }
        fs::remove_file(dir.path().join(CURSOR_FILE)).unwrap();
        let q = open(&cfg).await;
        assert!(q.recovery().cursor_missing);
        assert_eq!(ids(&q).await, vec![0, 1, 2, 3, 4, 5]);
        q.push(rows(6..7)).await.unwrap();
        assert_eq!(offsets(&q).await.last(), Some(&6));
        drop(q);
        let q = open(&cfg).await;
        assert!(!q.recovery().cursor_missing, "the cursor is written again");
    }

    #[tokio::test]
    async fn a_failed_write_is_cut_back_and_the_spool_works_when_space_returns() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let q = open(&cfg).await;
        q.push(rows(0..3)).await.unwrap();
        let seg = segment_files(dir.path()).pop().unwrap();
        let good_len = fs::metadata(&seg).unwrap().len();

        // Half a record reaches the disk, then the disk is full.
        q.inject(Some(Fault::Write {
            keep: 40,
            kind: io::ErrorKind::StorageFull,
        }));
        let err = q.push(rows(3..5)).await.unwrap_err();
        assert!(matches!(err, PushError::Unavailable(_)), "{err:?}");
        assert_eq!(fs::metadata(&seg).unwrap().len(), good_len);
        assert_eq!(q.stats().rows, 3);
        assert_eq!(q.stats().next_offset, 3);

        q.inject(None);
        q.push(rows(3..5)).await.unwrap();
        drop(q);
        let q = open(&cfg).await;
        assert_eq!(q.recovery().truncated_bytes, 0);
        assert_eq!(q.recovery().quarantined, 0);
        assert_eq!(ids(&q).await, vec![0, 1, 2, 3, 4]);
        assert_eq!(offsets(&q).await, vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_partial_write_that_cannot_be_cut_back_blocks_writes_until_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let q = open(&cfg).await;
        q.push(rows(0..2)).await.unwrap();
        // More garbage than the next record is long, so overwriting alone would not hide it.
        let keep = one_record_len() as usize + 20;
        q.inject(Some(Fault::WriteAndTruncate { keep }));
        assert!(matches!(
            q.push(rows(2..4)).await,
            Err(PushError::Unavailable(_))
        ));
        assert!(matches!(
            q.push(rows(2..3)).await,
            Err(PushError::Unavailable(_))
        ));
        q.inject(None);
        q.push(rows(2..3)).await.unwrap();
        drop(q);
        let q = open(&cfg).await;
        assert_eq!(q.recovery().truncated_bytes, 0, "no garbage was left");
        assert_eq!(ids(&q).await, vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn a_failed_fsync_refuses_the_push_and_keeps_earlier_rows() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let q = open(&cfg).await;
        q.push(rows(0..2)).await.unwrap();
        q.inject(Some(Fault::Sync));
        assert!(matches!(
            q.push(rows(2..3)).await,
            Err(PushError::Unavailable(_))
        ));
        q.inject(None);
        q.push(rows(2..3)).await.unwrap();
        q.sync().await.unwrap();
        assert_eq!(ids(&q).await, vec![0, 1, 2]);
        drop(q);
        assert_eq!(ids(&open(&cfg).await).await, vec![0, 1, 2]);
    }

    /// Unmounts the tmpfs when the test ends, however it ends.
    struct Mount(PathBuf);

    impl Drop for Mount {
        fn drop(&mut self) {
            // Lazy, so a file still open somewhere cannot keep the mount alive.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }

    /// Whether plain permissions stop this process from writing (not so for root).
    fn permissions_bind(dir: &Path) -> bool {
        let probe = dir.join("probe");
        fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).unwrap();
        let bound = File::create(&probe).is_err();
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        let _ = fs::remove_file(probe);
        bound
    }

    #[tokio::test]
    async fn a_full_disk_refuses_pushes_until_space_returns() {
        let outer = tempfile::tempdir().unwrap();
        let mount_dir = outer.path().join("tmpfs");
        fs::create_dir(&mount_dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(&mount_dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let _mount = mounted.then(|| Mount(mount_dir.clone()));
        let cfg = config(&mount_dir.join("spool"));
        let q = open(&cfg).await;
        q.push(rows(0..3)).await.unwrap();

        let filler = mount_dir.join("filler");
        if mounted {
            // Take almost all the space: a real ENOSPC, partial writes included.
            let mut f = File::create(&filler).unwrap();
            let chunk = vec![0u8; 4096];
            while io::Write::write_all(&mut f, &chunk).is_ok() {}
        } else {
            // No tmpfs here (no privilege): fail the same way, halfway through a record.
            q.inject(Some(Fault::Write {
                keep: 10,
                kind: io::ErrorKind::StorageFull,
            }));
        }
        let mut refused = false;
        for i in 3..200 {
            match q.push(rows(i..i + 1)).await {
                Ok(()) => {}
                Err(PushError::Unavailable(_)) => {
                    refused = true;
                    break;
                }
                Err(e) => panic!("unexpected push error: {e:?}"),
            }
        }
        assert!(refused, "a full disk must refuse pushes");
        let accepted = q.stats().next_offset;
        let on_disk: u64 = segment_files(&cfg.dir)
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        assert_eq!(
            on_disk,
            (0..accepted)
                .map(|i| record_len(&row(i)) as u64)
                .sum::<u64>(),
            "the refused write left nothing behind"
        );

        if mounted {
            fs::remove_file(&filler).unwrap();
        } else {
            q.inject(None);
        }
        q.push(rows(accepted..accepted + 1)).await.unwrap();
        drop(q);
        let q = open(&cfg).await;
        assert_eq!(q.recovery().truncated_bytes, 0);
        assert_eq!(q.recovery().quarantined, 0);
        assert_eq!(ids(&q).await, (0..=accepted).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_read_only_directory_refuses_new_segments_but_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let cfg = DiskSpoolConfig {
            segment_bytes: one_record_len() * 2,
            ..config(&spool_dir)
        };
        let q = open(&cfg).await;
        q.push(rows(0..2)).await.unwrap();
        let bound = permissions_bind(&spool_dir);
        if bound {
            fs::set_permissions(&spool_dir, fs::Permissions::from_mode(0o555)).unwrap();
        } else {
            // Root ignores permissions: fail segment creation as a read-only mount would.
            q.inject(Some(Fault::Create));
        }
        let err = q.push(rows(2..3)).await.unwrap_err();
        assert!(matches!(err, PushError::Unavailable(_)), "{err:?}");
        assert_eq!(
            ids(&q).await,
            vec![0, 1],
            "what was accepted is still readable"
        );
        if bound {
            fs::set_permissions(&spool_dir, fs::Permissions::from_mode(0o755)).unwrap();
        } else {
            q.inject(None);
        }
        q.push(rows(2..3)).await.unwrap();
        assert_eq!(ids(&q).await, vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn open_names_the_path_when_the_directory_cannot_be_made() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let err = DiskSpool::open(config(&file.join("spool")))
            .await
            .err()
            .expect("a directory under a file cannot exist");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }

    #[tokio::test]
    async fn segments_roll_and_committed_ones_are_deleted_after_retention() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DiskSpoolConfig {
            segment_bytes: one_record_len() * 3,
            retention: Duration::ZERO,
            ..config(dir.path())
        };
        let q = open(&cfg).await;
        for i in 0..9 {
            q.push(rows(i..i + 1)).await.unwrap();
        }
        assert_eq!(segment_files(dir.path()).len(), 3);
        assert_eq!(ids(&q).await, (0..9).collect::<Vec<_>>());
        q.commit(4).await.unwrap();
        let names: Vec<_> = segment_files(dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec!["00000000000000000003.seg", "00000000000000000006.seg"]
        );
        assert_eq!(ids(&q).await, vec![5, 6, 7, 8]);
        assert!(matches!(
            q.replay_from(1).await,
            Err(QueueError::OffsetGone {
                requested: 1,
                oldest: 3
            })
        ));
    }

    #[tokio::test]
    async fn replay_redelivers_retained_rows_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DiskSpoolConfig {
            segment_bytes: one_record_len() * 3,
            ..config(dir.path())
        };
        let q = open(&cfg).await;
        q.push(rows(0..8)).await.unwrap();
        q.commit(6).await.unwrap();
        assert_eq!(ids(&q).await, vec![7]);
        assert!(matches!(
            q.replay_from(9).await,
            Err(QueueError::OffsetAhead {
                requested: 9,
                next: 8
            })
        ));
        assert_eq!(q.replay_from(2).await.unwrap(), 6);
        assert_eq!(ids(&q).await, vec![2, 3, 4, 5, 6, 7]);
        assert_eq!(q.stats().bytes, one_record_len() * 6);
        drop(q);
        let q = open(&cfg).await;
        assert_eq!(ids(&q).await, vec![2, 3, 4, 5, 6, 7]);
        q.commit(7).await.unwrap();
        assert_eq!(q.stats().rows, 0);
        assert_eq!(q.replay_from(0).await.unwrap(), 8);
    }

    #[tokio::test]
    async fn committed_segments_are_evicted_early_when_bytes_run_out() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DiskSpoolConfig {
            segment_bytes: one_record_len() * 2,
            max_bytes: one_record_len() * 4,
            ..config(dir.path())
        };
        let q = open(&cfg).await;
        q.push(rows(0..2)).await.unwrap();
        q.push(rows(2..4)).await.unwrap();
        // Disk is full with queued rows: refused.
        assert!(matches!(
            q.push(rows(4..5)).await,
            Err(PushError::FullBytes { .. })
        ));
        q.commit(3).await.unwrap();
        // Everything is committed but retained; room is made by deleting the oldest.
        q.push(rows(4..6)).await.unwrap();
        q.push(rows(6..8)).await.unwrap();
        assert_eq!(ids(&q).await, vec![4, 5, 6, 7]);
        let on_disk: u64 = segment_files(dir.path())
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        assert!(on_disk <= cfg.max_bytes, "{on_disk} bytes on disk");
    }

    #[tokio::test]
    async fn a_record_that_does_not_decode_as_a_row_is_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        for i in 0..4u64 {
            let good = row(i);
            // Record 2 has intact checksums around bytes that are no row.
            let payload: &[u8] = if i == 2 { &[5, b'a'] } else { good.as_bytes() };
            encode_record(&mut bytes, i, 1_000 + i, payload);
        }
        fs::write(segment_path(dir.path(), 0), &bytes).unwrap();
        let q = open(&config(dir.path())).await;
        assert_eq!(q.recovery().quarantined, 1);
        assert!(q.recovery().cursor_missing);
        assert_eq!(ids(&q).await, vec![0, 1, 3]);
        assert_eq!(q.stats().oldest_ms, Some(1_000));
        let log = fs::read_to_string(dir.path().join(QUARANTINE_FILE)).unwrap();
        assert!(log.contains("offset=2 "), "{log}");
        assert!(log.contains("reason=\"row does not decode\""), "{log}");
        assert!(
            log.trim_end().ends_with("0561"),
            "the raw bytes are kept: {log}"
        );
    }

    #[test]
    fn storage_warnings_are_logged_at_most_once_a_minute() {
        let start = Instant::now();
        let mut last = None;
        assert!(due(&mut last, start));
        assert!(!due(&mut last, start + Duration::from_secs(59)));
        assert!(due(&mut last, start + Duration::from_secs(60)));
        assert!(!due(&mut last, start + Duration::from_secs(61)));
    }

    #[tokio::test]
    async fn a_record_damaged_while_running_is_skipped_and_can_be_committed_past() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(&config(dir.path())).await;
        q.push(rows(0..5)).await.unwrap();
        let seg = segment_files(dir.path()).pop().unwrap();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        // Bit rot in record 2's body, after it was acknowledged.
        f.write_all_at(&[0xff], one_record_len() * 3 - 1).unwrap();
        assert_eq!(ids(&q).await, vec![0, 1, 3, 4]);
        q.commit(3).await.unwrap();
        assert_eq!(ids(&q).await, vec![4]);
        assert_eq!(q.stats().rows, 1);
        assert_eq!(q.stats().bytes, one_record_len());
        q.commit(4).await.unwrap();
        assert_eq!((q.stats().rows, q.stats().bytes), (0, 0));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(u64),
        Peek(usize),
        Commit(u64),
        /// Rewind by this many rows.
        Replay(u64),
        Reopen,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (1u64..5).prop_map(Op::Append),
            2 => (0usize..8).prop_map(Op::Peek),
            2 => (0u64..6).prop_map(Op::Commit),
            1 => (0u64..6).prop_map(Op::Replay),
            1 => Just(Op::Reopen),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        #[test]
        fn the_log_returns_exactly_the_appended_rows_after_the_cursor(
            ops in proptest::collection::vec(op(), 1..20)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let cfg = DiskSpoolConfig {
                    segment_bytes: one_record_len() * 4,
                    ..config(dir.path())
                };
                let mut q = open(&cfg).await;
                // The model: the queued offsets, and the next offset to hand out. Row `i`
                // always carries offset `i`.
                let mut model: VecDeque<u64> = VecDeque::new();
                let mut next = 0u64;
                for op in ops {
                    let cursor = model.front().copied().unwrap_or(next);
                    match op {
                        Op::Append(n) => {
                            q.push(rows(next..next + n)).await.unwrap();
                            model.extend(next..next + n);
                            next += n;
                        }
                        Op::Peek(n) => {
                            let got = q.peek(n).await.unwrap();
                            let want: Vec<u64> = model.iter().take(n).copied().collect();
                            assert_eq!(got.iter().map(|e| e.offset).collect::<Vec<_>>(), want);
                            for e in &got {
                                assert_eq!(e.row, row(e.offset));
                            }
                        }
                        Op::Commit(k) => {
                            let through = cursor + k;
                            q.commit(through).await.unwrap();
                            while model.front().is_some_and(|&o| o <= through) {
                                model.pop_front();
                            }
                        }
                        Op::Replay(k) => {
                            let from = cursor.saturating_sub(k);
                            let queued = q.replay_from(from).await.unwrap();
                            for o in (from..cursor).rev() {
                                model.push_front(o);
                            }
                            assert_eq!(queued, model.len() as u64);
                        }
                        Op::Reopen => {
                            drop(q);
                            q = open(&cfg).await;
                            assert_eq!(q.recovery().quarantined, 0);
                            assert_eq!(q.recovery().truncated_bytes, 0);
                        }
                    }
                    let stats = q.stats();
                    assert_eq!(stats.rows, model.len() as u64);
                    assert_eq!(stats.next_offset, next);
                    let bytes: u64 = model.iter().map(|&i| record_len(&row(i)) as u64).sum();
                    assert_eq!(stats.bytes, bytes);
                    assert_eq!(stats.oldest_ms.is_some(), !model.is_empty());
                    assert_eq!(offsets(&q).await, model.iter().copied().collect::<Vec<_>>());
                }
            });
        }
    }
}

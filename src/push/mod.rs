//! `weir push`: backfills a file (CSV, JSON Lines or JSON) through a pipeline, with the
//! pipeline's own schema, filter, columns, types and sink, in runs of `max_rows_per_run`.
//!
//! The file is read as a queue ([`FileQueue`]) and delivered by the scheduler's own
//! `run_once`, so a push settles an unknown job outcome, isolates rows Celonis refuses and
//! spends the team's persisted job budget exactly as the daemon does. Its state lives in
//! `{data_dir}/push/{pipeline}-{hash}/`, named after the pipeline and the first 16 hex digits
//! of the file's SHA-256: `state.json` (the last record committed and the batch in flight),
//! `dead-letter.csv` (rows refused for their data) and a `lock`. `--resume` continues after
//! the last committed record and settles the batch that was in flight, so no row is sent
//! twice.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::collector::Collector;
use crate::config::{Config, PipelineConfig};
use crate::ingest::parse::Limits;
use crate::ingest::screen::{self, Source, Verdict};
use crate::metrics::Metrics;
use crate::pipeline::{Counters, Pipeline};
use crate::queue::{
    BoxFuture, Entry, InFlight, Offset, PushError, Queue, QueueError, QueueStats, now_ms,
};
use crate::row::Row;
use crate::schedule::{Carry, Outcome, RunReport, backoff, run_once};
use crate::sink::Sink;
use crate::sink::budget::Budgets;
use crate::sink::oauth::Tokens;
use crate::sync::lock;

pub mod watch;

/// The version of `state.json` this weir writes.
const STATE_VERSION: u32 = 1;
/// The state file in a push's directory.
const STATE_FILE: &str = "state.json";
/// Reasons kept for the summary; the rest are counted.
const REASONS_KEPT: usize = 20;

/// What to push and how.
#[derive(Debug, Clone)]
pub struct Options {
    pub pipeline: String,
    pub file: PathBuf,
    /// Continue a push of the same file that stopped.
    pub resume: bool,
    /// Consecutive failed runs before the push gives up (it can be resumed).
    pub max_failures: u32,
}

/// The formats a file can have, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A header line, then one row per record; every value is text.
    Csv,
    /// One JSON object per line (`.jsonl`, `.ndjson`).
    JsonLines,
    /// One JSON array of objects, or one object (read whole into memory).
    Json,
}

impl Format {
    pub fn of(path: &Path) -> Result<Format, Error> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Ok(Format::Csv),
            "jsonl" | "ndjson" => Ok(Format::JsonLines),
            "json" => Ok(Format::Json),
            _ => Err(Error::Format(path.to_path_buf())),
        }
    }
}

/// Why a push could not run or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no pipeline named {name:?} (the config has: {known})")]
    UnknownPipeline { name: String, known: String },
    #[error(
        "{}: cannot tell the format; name the file .csv, .jsonl (or .ndjson) or .json",
        .0.display()
    )]
    Format(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error(
        "{file} was already pushed through pipeline {pipeline} in part ({rows} rows in {jobs} jobs, through record {through}); \
         pass --resume to continue where it stopped, or remove {} to push it again from the start",
        dir.display()
    )]
    Started {
        file: String,
        pipeline: String,
        rows: u64,
        jobs: u64,
        through: String,
        dir: PathBuf,
    },
    #[error(
        "{file} was already pushed completely through pipeline {pipeline} ({rows} rows in {jobs} jobs); remove {} to push it again",
        dir.display()
    )]
    Finished {
        file: String,
        pipeline: String,
        rows: u64,
        jobs: u64,
        dir: PathBuf,
    },
    #[error("another weir push of this file is running (it holds {})", .0.display())]
    Locked(PathBuf),
    #[error("{}: {message}", path.display())]
    State { path: PathBuf, message: String },
    #[error("building the sink of pipeline {pipeline}: {message}")]
    Sink { pipeline: String, message: String },
    #[error(
        "gave up after {failures} failed runs in a row: {error}; rows through the last committed record are delivered, run again with --resume to continue"
    )]
    GaveUp { failures: u32, error: String },
}

/// The persisted progress of one push.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    version: u32,
    pipeline: String,
    /// The file as given the first time (for people reading the state).
    file: String,
    sha256: String,
    bytes: u64,
    /// The last record (0-based, in file order) whose fate is settled: delivered, refused
    /// by the schema or filter, or moved to the dead-letter file.
    committed: Option<Offset>,
    /// Where that record ends in the file.
    committed_byte: u64,
    /// The batch being delivered: settled before anything else on resume.
    in_flight: Option<InFlightState>,
    /// Rows that passed the checks and were committed out (delivered or dead-lettered).
    rows: u64,
    jobs: u64,
    last_job: Option<String>,
    /// Rows the schema or the columns refused, the filter dropped, Celonis refused.
    mismatched: u64,
    filtered: u64,
    dead_lettered: u64,
    /// The first few reasons, with their record numbers.
    reasons: Vec<String>,
    finished: bool,
    /// Time spent pushing, over every attempt.
    elapsed_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct InFlightState {
    first: Offset,
    last: Offset,
    job_id: Option<String>,
}

impl From<&InFlight> for InFlightState {
    fn from(b: &InFlight) -> InFlightState {
        InFlightState {
            first: b.first,
            last: b.last,
            job_id: b.job_id.clone(),
        }
    }
}

impl From<&InFlightState> for InFlight {
    fn from(b: &InFlightState) -> InFlight {
        InFlight {
            first: b.first,
            last: b.last,
            job_id: b.job_id.clone(),
        }
    }
}

/// What one record of the file became.
pub(crate) enum Item {
    Row(Row, Source),
    /// A record that is not a row (a malformed line, a CSV record with the wrong number
    /// of fields): why.
    Bad(String),
}

/// A file (or any reader, such as a zip entry) read record by record: (record number, what
/// it is, the byte where it ends). Shared with `sources::package`, so a package's entries
/// become rows exactly as a pushed file's records do.
pub(crate) enum Records {
    Csv {
        reader: csv::Reader<Box<dyn BufRead + Send>>,
        headers: Vec<String>,
        record: csv::StringRecord,
    },
    Lines {
        reader: Box<dyn BufRead + Send>,
        line: Vec<u8>,
        at: u64,
        limits: Limits,
    },
    Json {
        rows: std::vec::IntoIter<Row>,
        count: u64,
        bytes: u64,
    },
}

impl Records {
    fn open(path: &Path, format: Format, bytes: u64, limits: &Limits) -> Result<Records, Error> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        Records::from_reader(
            Box::new(BufReader::new(file)),
            path,
            format,
            bytes,
            limits,
            crate::config::CsvInput::default(),
        )
    }

    /// Reads `reader` as a file of `format` named `path` (for errors); `bytes` is its size
    /// when known, for progress; `csv` says how CSV is read.
    pub(crate) fn from_reader(
        mut reader: Box<dyn BufRead + Send>,
        path: &Path,
        format: Format,
        bytes: u64,
        limits: &Limits,
        csv: crate::config::CsvInput,
    ) -> Result<Records, Error> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        match format {
            Format::Csv => {
                let mut reader = csv::ReaderBuilder::new()
                    .flexible(true)
                    .delimiter(csv.separator)
                    .quote(csv.quote)
                    .from_reader(reader);
                let headers = reader
                    .headers()
                    .map_err(|e| Error::Parse {
                        path: path.to_path_buf(),
                        message: format!("reading the CSV header: {e}"),
                    })?
                    .iter()
                    .map(|h| h.trim_start_matches('\u{feff}').to_owned())
                    .collect();
                Ok(Records::Csv {
                    reader,
                    headers,
                    record: csv::StringRecord::new(),
                })
            }
            Format::JsonLines => Ok(Records::Lines {
                reader,
                line: Vec::new(),
                at: 0,
                limits: Limits {
                    max_rows: 1,
                    ..*limits
                },
            }),
            Format::Json => {
                let mut body = Vec::with_capacity(bytes.min(64 << 20) as usize);
                reader.read_to_end(&mut body).map_err(io)?;
                let limits = Limits {
                    max_rows: usize::MAX,
                    ..*limits
                };
                let (rows, _) = screen::parse(&body, "application/json", &limits).map_err(|e| {
                    Error::Parse {
                        path: path.to_path_buf(),
                        message: e.to_string(),
                    }
                })?;
                let count = rows.len() as u64;
                Ok(Records::Json {
                    rows: rows.into_iter(),
                    count,
                    bytes,
                })
            }
        }
    }

    /// The next record and where it ends in the file, or `None` at the end.
    pub(crate) fn next(&mut self) -> Result<Option<(Item, u64)>, String> {
        match self {
            Records::Csv {
                reader,
                headers,
                record,
            } => {
                match reader.read_record(record) {
                    Ok(false) => return Ok(None),
                    Ok(true) => {}
                    Err(e) => return Err(format!("reading the CSV: {e}")),
                }
                let end = reader.position().byte();
                if record.len() != headers.len() {
                    return Ok(Some((
                        Item::Bad(format!(
                            "{} fields where the header has {}",
                            record.len(),
                            headers.len()
                        )),
                        end,
                    )));
                }
                let pairs = headers.iter().map(String::as_str).zip(record.iter());
                let item = match Row::from_pairs(pairs) {
                    Ok(row) => Item::Row(row, Source::Text),
                    Err(e) => Item::Bad(e.to_string()),
                };
                Ok(Some((item, end)))
            }
            Records::Lines {
                reader,
                line,
                at,
                limits,
            } => loop {
                line.clear();
                let n = reader
                    .read_until(b'\n', line)
                    .map_err(|e| format!("reading: {e}"))?;
                if n == 0 {
                    return Ok(None);
                }
                *at += n as u64;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let item = match screen::parse(line, "application/json", limits) {
                    Ok((mut rows, source)) if rows.len() == 1 => {
                        Item::Row(rows.pop().expect("one row"), source)
                    }
                    Ok(_) => Item::Bad("a line must hold one JSON object".to_owned()),
                    Err(e) => Item::Bad(e.to_string()),
                };
                return Ok(Some((item, *at)));
            },
            Records::Json { rows, count, bytes } => {
                let left = rows.len() as u64;
                let Some(row) = rows.next() else {
                    return Ok(None);
                };
                let done = *count - left + 1;
                Ok(Some((Item::Row(row, Source::Json), *bytes * done / *count)))
            }
        }
    }
}

/// A read row waiting for its run: its entry and where its record ends.
struct Pending {
    entry: Entry,
    end: u64,
}

/// A record refused before any run, waiting for the commit that passes it.
struct Refused {
    record: Offset,
    end: u64,
    filtered: bool,
    reason: Option<String>,
}

struct Inner {
    records: Records,
    /// The next record's number.
    next_record: Offset,
    /// Where the last record read ends.
    read_byte: u64,
    eof: bool,
    pending: VecDeque<Pending>,
    refused: VecDeque<Refused>,
    state: State,
}

/// A file read as a queue: `peek` reads and screens the next rows, `commit` and
/// `set_in_flight` persist the push's progress in `state.json`. It takes no pushed rows.
pub struct FileQueue {
    config: PipelineConfig,
    path: PathBuf,
    state_path: PathBuf,
    inner: Mutex<Inner>,
}

impl FileQueue {
    /// Reads records until `pending` holds `rows` rows (or `bytes` of row data), or the
    /// file ends.
    fn fill(&self, inner: &mut Inner, rows: usize, bytes: u64) -> Result<(), QueueError> {
        let mut held: u64 = inner
            .pending
            .iter()
            .map(|p| p.entry.row.encoded_len() as u64)
            .sum();
        while !inner.eof && inner.pending.len() < rows && held < bytes {
            let Some((item, end)) = inner.records.next().map_err(|message| {
                QueueError::Io(std::io::Error::other(format!(
                    "{}: {message}",
                    self.path.display()
                )))
            })?
            else {
                inner.eof = true;
                break;
            };
            let record = inner.next_record;
            inner.next_record += 1;
            inner.read_byte = end;
            if inner.state.committed.is_some_and(|c| record <= c) {
                continue;
            }
            let verdict = match item {
                Item::Row(row, source) => screen::judge(&self.config, row, source),
                Item::Bad(reason) => Verdict::Mismatch(reason),
            };
            match verdict {
                Verdict::Keep(row) => {
                    held += row.encoded_len() as u64;
                    inner.pending.push_back(Pending {
                        entry: Entry {
                            offset: record,
                            received_ms: now_ms(),
                            row,
                        },
                        end,
                    });
                }
                Verdict::Mismatch(reason) => inner.refused.push_back(Refused {
                    record,
                    end,
                    filtered: false,
                    reason: Some(reason),
                }),
                Verdict::Filtered(_) => inner.refused.push_back(Refused {
                    record,
                    end,
                    filtered: true,
                    reason: None,
                }),
            }
        }
        Ok(())
    }

    /// Moves refused records up to `through` into the state's counts.
    fn settle_refused(inner: &mut Inner, through: Offset) {
        while inner.refused.front().is_some_and(|r| r.record <= through) {
            let r = inner.refused.pop_front().expect("checked");
            if r.filtered {
                inner.state.filtered += 1;
            } else {
                inner.state.mismatched += 1;
                if inner.state.reasons.len() < REASONS_KEPT
                    && let Some(reason) = r.reason
                {
                    inner
                        .state
                        .reasons
                        .push(format!("record {}: {reason}", r.record + 1));
                }
            }
            inner.state.committed_byte = inner.state.committed_byte.max(r.end);
        }
    }

    fn save(&self, state: &State) -> Result<(), QueueError> {
        let body = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
        crate::durable::replace(&self.state_path, &body)?;
        Ok(())
    }

    /// Called when a run found nothing left: every record is settled, the push is done.
    fn finish(&self, elapsed: Duration) -> Result<State, QueueError> {
        let mut inner = lock(&self.inner);
        if !inner.eof || !inner.pending.is_empty() {
            return Err(QueueError::Io(std::io::Error::other(
                "the push is not finished: rows are left",
            )));
        }
        Self::settle_refused(&mut inner, Offset::MAX);
        let last = inner.next_record.checked_sub(1);
        let read_byte = inner.read_byte;
        let state = &mut inner.state;
        state.committed = last.max(state.committed);
        state.committed_byte = state.committed_byte.max(read_byte);
        state.finished = true;
        state.elapsed_ms += elapsed.as_millis() as u64;
        let state = state.clone();
        drop(inner);
        self.save(&state)?;
        Ok(state)
    }

    /// Adds rows the run moved to the dead-letter file, and the time spent, to the state.
    fn account(&self, dead_lettered: u64, elapsed: Duration) -> Result<(), QueueError> {
        let state = {
            let mut inner = lock(&self.inner);
            inner.state.dead_lettered += dead_lettered;
            inner.state.elapsed_ms += elapsed.as_millis() as u64;
            inner.state.clone()
        };
        self.save(&state)
    }

    fn snapshot(&self) -> State {
        lock(&self.inner).state.clone()
    }
}

impl Queue for FileQueue {
    fn push(&self, _rows: Vec<Row>) -> BoxFuture<'_, Result<(), PushError>> {
        Box::pin(async {
            Err(PushError::Unavailable(
                "a file being pushed takes no other rows".to_owned(),
            ))
        })
    }

    fn peek(
        &self,
        max_rows: usize,
        max_bytes: u64,
    ) -> BoxFuture<'_, Result<Vec<Entry>, QueueError>> {
        Box::pin(async move {
            let mut inner = lock(&self.inner);
            self.fill(&mut inner, max_rows, max_bytes)?;
            let mut out = Vec::new();
            let mut bytes = 0u64;
            for p in inner.pending.iter().take(max_rows) {
                let len = p.entry.row.encoded_len() as u64;
                if !out.is_empty() && bytes + len > max_bytes {
                    break;
                }
                bytes += len;
                out.push(p.entry.clone());
            }
            Ok(out)
        })
    }

    fn commit(&self, through: Offset) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            let state = {
                let mut inner = lock(&self.inner);
                // A commit on resume (a settled batch) may pass rows not read yet.
                while !inner.eof
                    && inner.next_record <= through
                    && inner
                        .pending
                        .back()
                        .is_none_or(|p| p.entry.offset < through)
                {
                    let want = inner.pending.len() + 1;
                    self.fill(&mut inner, want, u64::MAX)?;
                }
                let mut rows = 0;
                let mut end = inner.state.committed_byte;
                while inner
                    .pending
                    .front()
                    .is_some_and(|p| p.entry.offset <= through)
                {
                    let p = inner.pending.pop_front().expect("checked");
                    end = end.max(p.end);
                    rows += 1;
                }
                Self::settle_refused(&mut inner, through);
                let job = inner
                    .state
                    .in_flight
                    .as_ref()
                    .and_then(|b| b.job_id.clone());
                let state = &mut inner.state;
                state.rows += rows;
                state.committed_byte = state.committed_byte.max(end);
                state.committed = Some(state.committed.map_or(through, |c| c.max(through)));
                if let Some(job) = job
                    && state.last_job.as_deref() != Some(&job)
                {
                    state.jobs += 1;
                    state.last_job = Some(job);
                }
                state.clone()
            };
            self.save(&state)
        })
    }

    fn stats(&self) -> QueueStats {
        let inner = lock(&self.inner);
        QueueStats {
            rows: inner.pending.len() as u64,
            bytes: inner
                .pending
                .iter()
                .map(|p| p.entry.row.encoded_len() as u64)
                .sum(),
            capacity_rows: u64::MAX,
            capacity_bytes: None,
            oldest_ms: inner.pending.front().map(|p| p.entry.received_ms),
            next_offset: inner.next_record,
        }
    }

    fn set_in_flight(&self, batch: Option<InFlight>) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            let state = {
                let mut inner = lock(&self.inner);
                inner.state.in_flight = batch.as_ref().map(InFlightState::from);
                inner.state.clone()
            };
            self.save(&state)
        })
    }

    fn in_flight(&self) -> Option<InFlight> {
        lock(&self.inner)
            .state
            .in_flight
            .as_ref()
            .map(InFlight::from)
    }
}

/// Where a push stands, for the progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the file whose records are settled.
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Rows committed (delivered or dead-lettered) so far, over every attempt.
    pub rows: u64,
    pub jobs: u64,
    pub last_job: Option<String>,
}

/// What a push reports as it goes: a progress bar on a terminal, plain lines elsewhere.
pub trait Watch {
    /// The push starts (or resumes at `progress`).
    fn started(&mut self, progress: &Progress, state_dir: &Path, resumed: bool);
    /// A run delivered rows.
    fn delivered(&mut self, progress: &Progress, report: &RunReport);
    /// A run failed; the next one starts after `wait`.
    fn failed(&mut self, progress: &Progress, error: &str, wait: Duration);
    /// The push is over (the summary is printed by the caller).
    fn finished(&mut self, progress: &Progress);
}

/// What a finished push did, over every attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub pipeline: String,
    pub file: String,
    /// Records read from the file.
    pub records: u64,
    /// Rows in jobs that finished DONE.
    pub delivered: u64,
    pub jobs: u64,
    /// Records the schema, a column or the parser refused.
    pub rejected: u64,
    /// Records the filter dropped.
    pub filtered: u64,
    /// Rows the sink refused for their data, moved to the dead-letter file.
    pub dead_lettered: u64,
    /// The first reasons, with their record numbers.
    pub reasons: Vec<String>,
    pub elapsed_ms: u64,
    /// Where the state and the dead-letter file are.
    pub state_dir: String,
}

impl Summary {
    fn of(state: &State, records: u64, state_dir: &Path) -> Summary {
        Summary {
            pipeline: state.pipeline.clone(),
            file: state.file.clone(),
            records,
            delivered: state.rows.saturating_sub(state.dead_lettered),
            jobs: state.jobs,
            rejected: state.mismatched,
            filtered: state.filtered,
            dead_lettered: state.dead_lettered,
            reasons: state.reasons.clone(),
            elapsed_ms: state.elapsed_ms,
            state_dir: state_dir.display().to_string(),
        }
    }

    /// The summary as lines for people.
    pub fn render(&self) -> String {
        let secs = self.elapsed_ms as f64 / 1000.0;
        let rate = if secs > 0.0 {
            format!(", {:.0} rows/s", self.delivered as f64 / secs)
        } else {
            String::new()
        };
        let mut out = format!(
            "pushed {} through pipeline {}: {} read, {} delivered in {}, {secs:.1} s{rate}\n",
            self.file,
            self.pipeline,
            plural(self.records, "record"),
            plural(self.delivered, "row"),
            plural(self.jobs, "job"),
        );
        if self.rejected > 0 {
            out.push_str(&format!(
                "  {} rejected (schema, columns or format):\n",
                plural(self.rejected, "record")
            ));
            for reason in &self.reasons {
                out.push_str(&format!("    {reason}\n"));
            }
            if (self.reasons.len() as u64) < self.rejected {
                out.push_str(&format!(
                    "    … and {} more\n",
                    self.rejected - self.reasons.len() as u64
                ));
            }
        }
        if self.filtered > 0 {
            out.push_str(&format!(
                "  {} dropped by the filter\n",
                plural(self.filtered, "record")
            ));
        }
        if self.dead_lettered > 0 {
            out.push_str(&format!(
                "  {} refused by the sink for their data, in {}/dead-letter.csv\n",
                plural(self.dead_lettered, "row"),
                self.state_dir
            ));
        }
        out
    }
}

/// "1 row", "2 rows".
fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The directory of a push: `{data_dir}/push/{pipeline}-{first 16 hex digits of the hash}`.
pub fn state_dir(data_dir: &Path, pipeline: &str, sha256: &str) -> PathBuf {
    data_dir
        .join("push")
        .join(format!("{pipeline}-{}", &sha256[..16]))
}

/// The SHA-256 of a file, in hex, and its length.
pub fn hash_file(path: &Path) -> Result<(String, u64), Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
    let mut hasher = sha2::Sha256::new();
    let mut bytes = 0u64;
    loop {
        let buf = file.fill_buf().map_err(io)?;
        if buf.is_empty() {
            break;
        }
        hasher.update(buf);
        let n = buf.len();
        bytes += n as u64;
        file.consume(n);
    }
    Ok((hex::encode(hasher.finalize()), bytes))
}

/// Takes the push's lock (an `flock`, released when the process ends).
fn take_lock(dir: &Path) -> Result<File, Error> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked(path)),
        Err(std::fs::TryLockError::Error(source)) => Err(Error::Io { path, source }),
    }
}

fn load_state(path: &Path) -> Result<Option<State>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let state: State = serde_json::from_slice(&bytes).map_err(|e| Error::State {
        path: path.to_path_buf(),
        message: format!("unreadable: {e}"),
    })?;
    if state.version != STATE_VERSION {
        return Err(Error::State {
            path: path.to_path_buf(),
            message: format!(
                "written by another weir (version {}; this one reads {STATE_VERSION})",
                state.version
            ),
        });
    }
    Ok(Some(state))
}

/// Pushes a file through a pipeline until every record is settled. Runs wait for the
/// team's job budget; failed runs are retried with the pipeline's backoff, up to
/// `max_failures` in a row.
pub async fn push(
    config: &Config,
    options: &Options,
    watch: &mut dyn Watch,
) -> Result<Summary, Error> {
    let Some(pipeline_config) = config.pipelines.iter().find(|p| p.name == options.pipeline) else {
        let known: Vec<&str> = config.pipelines.iter().map(|p| p.name.as_str()).collect();
        return Err(Error::UnknownPipeline {
            name: options.pipeline.clone(),
            known: known.join(", "),
        });
    };
    let format = Format::of(&options.file)?;
    let (sha256, bytes) = hash_file(&options.file)?;
    let dir = state_dir(&config.data_dir, &pipeline_config.name, &sha256);
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    let _lock = take_lock(&dir)?;
    let state_path = dir.join(STATE_FILE);
    let file_name = options.file.display().to_string();
    let previous = load_state(&state_path)?;
    let resumed = previous.is_some();
    let state = match previous {
        Some(s) if s.finished => {
            return Err(Error::Finished {
                file: file_name,
                pipeline: s.pipeline,
                rows: s.rows,
                jobs: s.jobs,
                dir,
            });
        }
        Some(s) if !options.resume && (s.committed.is_some() || s.in_flight.is_some()) => {
            return Err(Error::Started {
                file: file_name,
                pipeline: s.pipeline,
                rows: s.rows,
                jobs: s.jobs,
                through: s
                    .committed
                    .map_or("none".to_owned(), |c| (c + 1).to_string()),
                dir,
            });
        }
        Some(s) => s,
        None => State {
            version: STATE_VERSION,
            pipeline: pipeline_config.name.clone(),
            file: file_name,
            sha256: sha256.clone(),
            bytes,
            ..State::default()
        },
    };

    // The push's own copy of the pipeline: its dead letters and column state go to the
    // push's directory, not to the daemon's.
    let mut cfg = pipeline_config.clone();
    cfg.state_dir = dir.clone();
    let limits = crate::ingest::parse_limits(&config.server.limits, config.server.max_body_bytes);
    let records = Records::open(&options.file, format, bytes, &limits)?;
    let queue = Arc::new(FileQueue {
        config: cfg.clone(),
        path: options.file.clone(),
        state_path: state_path.clone(),
        inner: Mutex::new(Inner {
            records,
            next_record: 0,
            read_byte: 0,
            eof: false,
            pending: VecDeque::new(),
            refused: VecDeque::new(),
            state,
        }),
    });
    let pipeline = Arc::new(Pipeline::new(cfg.clone(), queue.clone()));
    let budgets = Arc::new(Budgets::persisted(config.data_dir.join("job-budget")));
    let metrics = Arc::new(Metrics::new(Box::new(Collector::new(
        vec![pipeline.clone()],
        budgets.clone(),
    ))));
    let sink = Sink::new(
        &cfg,
        config.celonis,
        &budgets,
        &Tokens::default(),
        metrics,
        &config.data_dir,
    )
    .map_err(|e| Error::Sink {
        pipeline: cfg.name.clone(),
        message: e.to_string(),
    })?;

    let progress = |q: &FileQueue| {
        let s = q.snapshot();
        Progress {
            bytes_done: s.committed_byte,
            bytes_total: bytes,
            rows: s.rows,
            jobs: s.jobs,
            last_job: s.last_job,
        }
    };
    watch.started(&progress(&queue), &dir, resumed);
    let mut carry = Carry::default();
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let isolated_before = Counters::get(&pipeline.counters.isolated);
        let report = run_once(&pipeline, &sink, &mut carry, cfg.max_rows_per_run).await;
        let isolated = Counters::get(&pipeline.counters.isolated) - isolated_before;
        queue
            .account(isolated, started.elapsed())
            .map_err(|e| Error::State {
                path: state_path.clone(),
                message: e.to_string(),
            })?;
        match report.outcome {
            Outcome::Delivered => {
                failures = 0;
                watch.delivered(&progress(&queue), &report);
            }
            Outcome::Empty | Outcome::Standby => break,
            Outcome::Failed => {
                failures += 1;
                let error = report.error.clone().unwrap_or_default();
                if failures >= options.max_failures {
                    return Err(Error::GaveUp { failures, error });
                }
                let wait = backoff(
                    failures,
                    cfg.retry_initial,
                    cfg.retry_max_interval,
                    report.retry_after,
                );
                watch.failed(&progress(&queue), &error, wait);
                tokio::time::sleep(wait).await;
            }
        }
    }
    let state = queue.finish(Duration::ZERO).map_err(|e| Error::State {
        path: state_path.clone(),
        message: e.to_string(),
    })?;
    watch.finished(&progress(&queue));
    let records = lock(&queue.inner).next_record;
    Ok(Summary::of(&state, records, &dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `state.json` as weir 0.1 writes it (version 1), mid-push with a job in flight.
    const STATE_V1: &str = r#"{
  "version": 1, "pipeline": "orders", "file": "orders.csv",
  "sha256": "9edcd096b7b3ce584109b551d5c017129cf12b2c6ffba581bbfc3c4abeda01db",
  "bytes": 350030, "committed": 9999, "committed_byte": 140013,
  "in_flight": {"first": 10000, "last": 19999, "job_id": "1b9cb1c0-f92d-4dad-abe8-e3400d728810"},
  "rows": 10000, "jobs": 1, "last_job": "f3c1b771-d811-41a7-b5fd-181ca29e1204",
  "mismatched": 0, "filtered": 0, "dead_lettered": 0, "reasons": [],
  "finished": false, "elapsed_ms": 549
}"#;

    #[test]
    fn a_version_1_state_file_is_read_and_another_version_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        std::fs::write(&path, STATE_V1).unwrap();
        let state = load_state(&path).unwrap().unwrap();
        assert_eq!(state.committed, Some(9999));
        assert_eq!(
            state.in_flight.as_ref().map(InFlight::from),
            Some(InFlight {
                first: 10000,
                last: 19999,
                job_id: Some("1b9cb1c0-f92d-4dad-abe8-e3400d728810".into()),
            })
        );
        std::fs::write(&path, STATE_V1.replace("\"version\": 1", "\"version\": 9")).unwrap();
        let e = load_state(&path).unwrap_err().to_string();
        assert!(e.contains("version 9; this one reads 1"), "{e}");
    }

    #[test]
    fn the_format_is_told_by_the_extension_and_an_unknown_one_is_named() {
        assert_eq!(Format::of(Path::new("a.CSV")).unwrap(), Format::Csv);
        assert_eq!(
            Format::of(Path::new("a.ndjson")).unwrap(),
            Format::JsonLines
        );
        assert_eq!(Format::of(Path::new("a.json")).unwrap(), Format::Json);
        let e = Format::of(Path::new("a.xlsx")).unwrap_err().to_string();
        assert!(e.contains("a.xlsx: cannot tell the format"), "{e}");
    }

    #[test]
    fn the_summary_names_counts_with_their_nouns() {
        let s = Summary {
            pipeline: "orders".into(),
            file: "orders.csv".into(),
            records: 3,
            delivered: 1,
            jobs: 1,
            rejected: 1,
            filtered: 1,
            dead_lettered: 0,
            reasons: vec!["record 2: field \"Quantity\" is not an integer".into()],
            elapsed_ms: 500,
            state_dir: "/data/push/orders-0123".into(),
        };
        let text = s.render();
        assert!(text.starts_with(
            "pushed orders.csv through pipeline orders: 3 records read, 1 row delivered in 1 job, 0.5 s, 2 rows/s\n"
        ), "{text}");
        assert!(text.contains("1 record rejected"), "{text}");
        assert!(text.contains("    record 2: field"), "{text}");
        assert!(text.contains("1 record dropped by the filter"), "{text}");
    }
}

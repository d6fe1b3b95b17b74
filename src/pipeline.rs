//! A running pipeline: its validated config, its queue and its counters. Shared read-only
//! (behind an `Arc`) by ingest, the scheduler and the admin API; all mutable parts are atomics
//! or live inside the queue.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::auth_failure::AuthFailures;
use crate::config::{PipelineConfig, Schedule};
use crate::history::History;
use crate::queue::dead_letters::{DeadLetters, FileStore};
use crate::queue::{Queue, now_ms};
use crate::sync::lock;

pub struct Pipeline {
    pub config: PipelineConfig,
    /// Behind [`Pipeline::push`] for ingest and [`Pipeline::queue`] for the worker and the
    /// admin API; `tests/it/tidy.rs` checks that ingest never takes the whole queue.
    queue: Arc<dyn Queue>,
    /// Where rows that cannot be delivered go: the queue's own store when it is shared by
    /// replicas (NATS), else `{state_dir}/dead-letter.csv`.
    dead_letters: Arc<dyn DeadLetters>,
    pub counters: Counters,
    /// When the scheduler will next run this pipeline (ms since the epoch, 0 = unknown).
    next_run_ms: AtomicU64,
    /// Read without a lock on every tick; written only while `persisted` is held.
    paused: AtomicBool,
    health: Mutex<(Health, Option<u64>)>,
    /// The operator-facing state last seen and since when (ms since the epoch).
    state_since: Mutex<(State, u64)>,
    /// What `pipeline.json` holds. Held while the file is written, so the flags in memory and
    /// on disk change together and there is one writer at a time.
    persisted: Mutex<PersistedState>,
    /// The last commit of delivered rows, published by the worker, for `?wait=delivered`.
    delivered: tokio::sync::watch::Sender<Option<DeliveredThrough>>,
    /// Set by a waiting request of an `allow_sync` pipeline: the worker runs now.
    run_wanted: tokio::sync::Notify,
    /// `schedule = "continuous"`: rows were queued (or the pipeline resumed), so the worker
    /// looks again at what is queued.
    queue_changed: tokio::sync::Notify,
}

/// "Offsets up to `through` are committed, delivered in job `job_id`."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredThrough {
    pub through: crate::queue::Offset,
    /// The sink's job id (none for the HTTP sink).
    pub job_id: Option<String>,
    /// When the commit was made (ms since the epoch).
    pub at_ms: u64,
}

/// Row and run counts since the process started.
#[derive(Default)]
pub struct Counters {
    /// Rows queued.
    pub accepted: AtomicU64,
    /// Rows dropped by the schema in `ignore` mode.
    pub ignored: AtomicU64,
    /// Rows of requests refused as a whole (bad input, schema in `reject` mode, full queue).
    pub rejected: AtomicU64,
    /// Rows of replayed deliveries, answered again without being queued again.
    pub duplicate: AtomicU64,
    /// Rows delivered to the sink and committed out of the queue.
    pub delivered: AtomicU64,
    pub runs_ok: AtomicU64,
    pub runs_failed: AtomicU64,
    /// Rows moved to the dead-letter file after `retention`.
    pub dead_lettered: AtomicU64,
    /// Rows that failed alone with a permanent error and were moved to the dead-letter file.
    pub isolated: AtomicU64,
    /// Extra jobs spent isolating bad rows (each half pushed).
    pub isolation_jobs: AtomicU64,
    /// Rows taken out by reconcile or purge.
    pub removed: AtomicU64,
    /// Requests refused, by error code (a small, fixed set of codes).
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Requests refused by the sender check, per reason.
    pub auth_failures: AuthFailures,
    /// Requests refused with 429 by the pipeline's `rate_limit`.
    pub rate_limited: AtomicU64,
    /// Rows accepted and delivered per minute over the last hour.
    pub history: History,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts rows queued, in the total and in this minute's history.
    pub fn accept(&self, n: u64) {
        Counters::add(&self.accepted, n);
        self.history.add_accepted(now_ms(), n);
    }

    /// Counts rows delivered, in the total and in this minute's history.
    pub fn deliver(&self, n: u64) {
        Counters::add(&self.delivered, n);
        self.history.add_delivered(now_ms(), n);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts a refused request under its error code.
    pub fn refuse(&self, code: &'static str) {
        *lock(&self.refused).entry(code).or_default() += 1;
    }

    /// Refused requests by error code.
    pub fn refused(&self) -> Vec<(&'static str, u64)> {
        let map = lock(&self.refused);
        map.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// A pipeline's delivery health, as the worker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    /// Delivering normally.
    Active,
    /// The last run failed; retrying with backoff.
    Failing,
    /// Failing for longer than `suspend_after`; probing once per `retry_max_interval`.
    Suspended,
}

/// What operators see: PAUSED wins over the delivery health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Active,
    Paused,
    Failing,
    Suspended,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "ACTIVE",
            State::Paused => "PAUSED",
            State::Failing => "FAILING",
            State::Suspended => "SUSPENDED",
        }
    }
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.name())
            .finish()
    }
}

impl Pipeline {
    pub fn new(config: PipelineConfig, queue: Arc<dyn Queue>) -> Pipeline {
        let dead_letters = queue
            .dead_letters()
            .unwrap_or_else(|| Arc::new(FileStore::new(config.state_dir.join(DEAD_LETTER_FILE))));
        Pipeline {
            config,
            queue,
            dead_letters,
            counters: Counters::default(),
            next_run_ms: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            health: Mutex::new((Health::Active, None)),
            state_since: Mutex::new((State::Active, now_ms())),
            persisted: Mutex::new(PersistedState::default()),
            delivered: tokio::sync::watch::Sender::new(None),
            run_wanted: tokio::sync::Notify::new(),
            queue_changed: tokio::sync::Notify::new(),
        }
    }

    /// Queues all rows of a request or none (what ingest may do with the queue). Returns an
    /// offset at or after the request's last row: the queue's last offset once the push
    /// resolved. Concurrent pushes may make it later than the request's own last row, so a
    /// waiter on it may wait for a little more, never less.
    pub async fn push(
        &self,
        rows: Vec<crate::row::Row>,
    ) -> Result<crate::queue::Offset, crate::queue::PushError> {
        self.push_delivery(rows, None).await
    }

    /// Whether the queue uses a delivery's name ([`Pipeline::push_delivery`]): ingest builds
    /// one only then.
    pub fn names_deliveries(&self) -> bool {
        self.queue.names_deliveries()
    }

    /// [`Pipeline::push`] with the id the sender gave the delivery, if any, so a shared queue
    /// stores a retry of it once ([`crate::queue::Queue::push_delivery`]).
    pub async fn push_delivery(
        &self,
        rows: Vec<crate::row::Row>,
        delivery: Option<Vec<u8>>,
    ) -> Result<crate::queue::Offset, crate::queue::PushError> {
        match delivery {
            Some(id) => self.queue.push_delivery(rows, id).await?,
            None => self.queue.push(rows).await?,
        }
        if self.config.schedule == Schedule::Continuous {
            self.queue_changed.notify_one();
        }
        Ok(self.queue.stats().next_offset.saturating_sub(1))
    }

    /// Resolves when rows were queued or the pipeline resumed (`schedule = "continuous"`
    /// only; the worker's side of [`Pipeline::push`]).
    pub async fn queue_changed(&self) {
        self.queue_changed.notified().await;
    }

    /// Whether the queue has room for `rows` more rows of `bytes` bytes now (a request that
    /// feeds several pipelines checks every queue before it pushes to any).
    pub fn has_room(&self, rows: u64, bytes: u64) -> bool {
        let s = self.queue.stats();
        s.rows.saturating_add(rows) <= s.capacity_rows
            && s.capacity_bytes
                .is_none_or(|cap| s.bytes.saturating_add(bytes) <= cap)
    }

    /// The worker publishes each commit of delivered rows.
    pub fn publish_delivered(&self, through: crate::queue::Offset, job_id: Option<String>) {
        self.delivered.send_replace(Some(DeliveredThrough {
            through,
            job_id,
            at_ms: now_ms(),
        }));
    }

    /// Commits of delivered rows, as the worker publishes them.
    pub fn delivered(&self) -> tokio::sync::watch::Receiver<Option<DeliveredThrough>> {
        self.delivered.subscribe()
    }

    /// Asks the worker for a run now (a waiting request of an `allow_sync` pipeline).
    pub fn want_run(&self) {
        self.run_wanted.notify_one();
    }

    /// Resolves when a run was asked for (the worker's side of [`Pipeline::want_run`]).
    pub async fn run_wanted(&self) {
        self.run_wanted.notified().await;
    }

    /// The whole queue: for the worker (peek, commit, in flight), the admin API and the
    /// collector. Ingest uses [`Pipeline::push`] only.
    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.queue
    }

    pub fn is_paused(&self) -> bool {
        self.queue
            .shared_pause()
            .unwrap_or_else(|| self.paused.load(Ordering::SeqCst))
    }

    /// Sets the pause flag and persists it in the pipeline's state directory, so a pause
    /// survives a restart. Concurrent calls are serialised: the last one wins in memory and on
    /// disk alike.
    pub fn set_paused(&self, paused: bool) -> std::io::Result<()> {
        let mut persisted = lock(&self.persisted);
        let next = PersistedState {
            paused,
            ..persisted.clone()
        };
        write_state(&self.config.state_dir, &next)?;
        *persisted = next;
        self.paused.store(paused, Ordering::SeqCst);
        drop(persisted);
        self.note_state();
        if self.config.schedule == Schedule::Continuous {
            self.queue_changed.notify_one();
        }
        Ok(())
    }

    /// Loads the persisted pause flag and, if the pipeline was failing when weir stopped,
    /// since when (at start; see [`Pipeline::health`]).
    pub fn load_state(&self) -> std::io::Result<()> {
        let state = read_state(&self.config.state_dir)?;
        let mut persisted = lock(&self.persisted);
        self.paused.store(state.paused, Ordering::SeqCst);
        if let Some(since) = state.failing_since_ms {
            self.set_health_only(Health::Failing, Some(since));
        }
        *persisted = state;
        drop(persisted);
        self.note_state();
        Ok(())
    }

    /// Delivery health and, when failing, since when (ms since the epoch). After a restart
    /// this is the failure clock restored from `pipeline.json`, until the first run.
    pub fn health(&self) -> (Health, Option<u64>) {
        // Another replica delivers a shared queue: its health is the pipeline's.
        if let Some(h) = self.queue.shared_health() {
            return (h.health, h.failing_since_ms);
        }
        *lock(&self.health)
    }

    /// Publishes the worker's health. While the pipeline keeps failing, the first
    /// `failing_since_ms` stays; the start and the end of a failure are persisted, so the
    /// FAILING/SUSPENDED clock survives a restart.
    pub fn set_health(&self, health: Health, failing_since_ms: Option<u64>) {
        let since = self.set_health_only(health, failing_since_ms);
        let mut persisted = lock(&self.persisted);
        if persisted.failing_since_ms.is_some() == since.is_some() {
            return;
        }
        let next = PersistedState {
            failing_since_ms: since,
            ..persisted.clone()
        };
        match write_state(&self.config.state_dir, &next) {
            Ok(()) => *persisted = next,
            Err(e) => {
                tracing::warn!(pipeline = self.name(), error = %e, "persisting the failure clock failed; it restarts with weir");
            }
        }
    }

    /// Sets the health in memory; returns the `failing_since_ms` now in effect.
    fn set_health_only(&self, health: Health, failing_since_ms: Option<u64>) -> Option<u64> {
        let mut current = lock(&self.health);
        let since = match (current.1, failing_since_ms) {
            (Some(first), Some(_)) => Some(first),
            (_, next) => next,
        };
        *current = (health, since);
        drop(current);
        self.note_state();
        since
    }

    /// Records when the state changed, if it did. FAILING counts from the failure clock, so
    /// a restored failure keeps its start.
    fn note_state(&self) {
        let state = self.state();
        let mut seen = lock(&self.state_since);
        if seen.0 != state {
            let since = match state {
                State::Failing => self.health().1.unwrap_or_else(now_ms),
                _ => now_ms(),
            };
            *seen = (state, since);
        }
    }

    /// The state operators see and since when (ms since the epoch; the process start for a
    /// state held since then).
    pub fn state_since(&self) -> (State, u64) {
        self.note_state();
        *lock(&self.state_since)
    }

    pub fn state(&self) -> State {
        if self.is_paused() {
            return State::Paused;
        }
        match self.health().0 {
            Health::Active => State::Active,
            Health::Failing => State::Failing,
            Health::Suspended => State::Suspended,
        }
    }

    /// The dead-letter file of this pipeline (used unless its queue keeps the dead letters).
    pub fn dead_letter_path(&self) -> std::path::PathBuf {
        self.config.state_dir.join(DEAD_LETTER_FILE)
    }

    /// This pipeline's dead letters, wherever they are kept.
    pub fn dead_letters(&self) -> &Arc<dyn DeadLetters> {
        &self.dead_letters
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn set_next_run_ms(&self, ms: u64) {
        self.next_run_ms.store(ms, Ordering::Relaxed);
    }

    pub fn next_run_ms(&self) -> Option<u64> {
        Some(self.next_run_ms.load(Ordering::Relaxed)).filter(|&ms| ms > 0)
    }

    /// Seconds a sender should wait before retrying when the queue is full: until the next
    /// delivery run makes room, between 1 s and 5 min.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = match (self.next_run_ms(), &self.config.schedule) {
            (Some(next), _) => next.saturating_sub(now_ms()).div_ceil(1000),
            (None, Schedule::Every(d)) => d.as_secs(),
            (None, Schedule::Cron(_)) => 60,
            (None, Schedule::Continuous) => self.config.max_wait.as_secs(),
        };
        secs.clamp(1, 300)
    }
}

const STATE_FILE: &str = "pipeline.json";

/// The dead letters of a pipeline whose queue is this process's own, in its state directory.
const DEAD_LETTER_FILE: &str = "dead-letter.csv";

/// The version of `pipeline.json` this weir writes. Version 1 (no `version` field) held only
/// `paused`; version 2 adds `failing_since_ms`.
const STATE_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
struct PersistedState {
    /// Absent in version 1 files.
    #[serde(default = "state_v1")]
    version: u32,
    paused: bool,
    /// When the current run of failures began (ms since the epoch); absent while delivering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failing_since_ms: Option<u64>,
}

fn state_v1() -> u32 {
    1
}

fn read_state(dir: &std::path::Path) -> std::io::Result<PersistedState> {
    match std::fs::read(dir.join(STATE_FILE)) {
        Ok(bytes) => match serde_json::from_slice::<PersistedState>(&bytes) {
            Ok(s) => {
                if s.version > STATE_VERSION {
                    tracing::warn!(dir = %dir.display(), version = s.version, "pipeline state file is from a newer weir; reading the fields this version knows");
                }
                Ok(s)
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "pipeline state file unreadable; starting unpaused");
                Ok(PersistedState::default())
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PersistedState::default()),
        Err(e) => Err(e),
    }
}

/// Writes the state file atomically: temp file, fsync, rename, fsync the directory. The
/// caller holds `Pipeline::persisted`, so there is one writer of the temp file at a time.
fn write_state(dir: &std::path::Path, state: &PersistedState) -> std::io::Result<()> {
    let state = PersistedState {
        version: STATE_VERSION,
        ..state.clone()
    };
    let body = serde_json::to_vec(&state).map_err(std::io::Error::other)?;
    crate::durable::replace(&dir.join(STATE_FILE), &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::queue::memory::MemoryQueue;

    fn pipeline(dir: &std::path::Path) -> Pipeline {
        let text = format!(
            r#"data_dir = "{}"
[server]
listen = "127.0.0.1:0"
[[pipelines]]
name = "orders"
schedule = "1h"
[pipelines.sink]
kind = "http"
base_url = "http://127.0.0.1:9"
"#,
            dir.display()
        );
        let config = Config::load(&text, &Default::default()).unwrap();
        let p = config.pipelines.into_iter().next().unwrap();
        Pipeline::new(p, Arc::new(MemoryQueue::new(10, u64::MAX)))
    }

    fn on_disk(p: &Pipeline) -> serde_json::Value {
        let bytes = std::fs::read(p.config.state_dir.join(STATE_FILE)).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn concurrent_pause_and_resume_leave_the_same_flag_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(dir.path());
        for round in 0..5 {
            std::thread::scope(|s| {
                for i in 0..8 {
                    let p = &p;
                    s.spawn(move || {
                        for j in 0..4 {
                            p.set_paused((i + j + round) % 2 == 0)
                                .expect("every pause and resume succeeds");
                        }
                    });
                }
            });
            assert_eq!(
                on_disk(&p)["paused"],
                serde_json::Value::Bool(p.is_paused()),
                "round {round}"
            );
        }
        assert!(!p.config.state_dir.join("pipeline.json.tmp").exists());
    }

    #[test]
    fn a_version_1_state_file_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(dir.path());
        std::fs::create_dir_all(&p.config.state_dir).unwrap();
        // Written by weir before the file had a version.
        std::fs::write(p.config.state_dir.join(STATE_FILE), br#"{"paused":true}"#).unwrap();
        p.load_state().unwrap();
        assert!(p.is_paused());
        assert_eq!(p.health(), (Health::Active, None));
        p.set_paused(false).unwrap();
        assert_eq!(
            on_disk(&p),
            serde_json::json!({ "version": 2, "paused": false })
        );
    }

    #[test]
    fn the_failure_clock_is_persisted_restored_and_cleared_on_success() {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(dir.path());
        p.set_paused(true).unwrap();
        p.set_health(Health::Failing, Some(1_000));
        // Later failures do not move the start of the failure.
        p.set_health(Health::Suspended, Some(1_005));
        assert_eq!(p.health(), (Health::Suspended, Some(1_000)));
        assert_eq!(
            on_disk(&p),
            serde_json::json!({ "version": 2, "paused": true, "failing_since_ms": 1_000 })
        );

        let restarted = pipeline(dir.path());
        restarted.load_state().unwrap();
        assert!(restarted.is_paused());
        assert_eq!(restarted.health(), (Health::Failing, Some(1_000)));

        restarted.set_health(Health::Active, None);
        assert_eq!(
            on_disk(&restarted),
            serde_json::json!({ "version": 2, "paused": true })
        );
    }
}

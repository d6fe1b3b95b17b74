//! A running pipeline: its validated config, its queue and its counters. Shared read-only
//! (behind an `Arc`) by ingest, the scheduler and the admin API; all mutable parts are atomics
//! or live inside the queue.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::auth_failure::AuthFailures;
use crate::config::{PipelineConfig, Schedule};
use crate::queue::{Queue, now_ms};

pub struct Pipeline {
    pub config: PipelineConfig,
    pub queue: Arc<dyn Queue>,
    pub counters: Counters,
    /// When the scheduler will next run this pipeline (ms since the epoch, 0 = unknown).
    next_run_ms: AtomicU64,
    paused: AtomicBool,
    health: Mutex<(Health, Option<u64>)>,
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
    /// Rows taken out by reconcile or purge.
    pub removed: AtomicU64,
    /// Requests refused, by error code (a small, fixed set of codes).
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Requests refused by the sender check, per reason.
    pub auth_failures: AuthFailures,
    /// Requests refused with 429 by the pipeline's `rate_limit`.
    pub rate_limited: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts a refused request under its error code.
    pub fn refuse(&self, code: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    /// Refused requests by error code.
    pub fn refused(&self) -> Vec<(&'static str, u64)> {
        let map = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// A pipeline's delivery health, as the worker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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
        Pipeline {
            config,
            queue,
            counters: Counters::default(),
            next_run_ms: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            health: Mutex::new((Health::Active, None)),
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Sets the pause flag and persists it in the pipeline's state directory, so a pause
    /// survives a restart.
    pub fn set_paused(&self, paused: bool) -> std::io::Result<()> {
        write_state(&self.config.state_dir, paused)?;
        self.paused.store(paused, Ordering::SeqCst);
        Ok(())
    }

    /// Loads the persisted pause flag (at start).
    pub fn load_state(&self) -> std::io::Result<()> {
        let paused = read_state(&self.config.state_dir)?;
        self.paused.store(paused, Ordering::SeqCst);
        Ok(())
    }

    /// Delivery health and, when failing, since when (ms since the epoch).
    pub fn health(&self) -> (Health, Option<u64>) {
        *self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_health(&self, health: Health, failing_since_ms: Option<u64>) {
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = (health, failing_since_ms);
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

    /// The dead-letter file of this pipeline.
    pub fn dead_letter_path(&self) -> std::path::PathBuf {
        self.config.state_dir.join("dead-letter.csv")
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
        };
        secs.clamp(1, 300)
    }
}

const STATE_FILE: &str = "pipeline.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct PersistedState {
    paused: bool,
}

fn read_state(dir: &std::path::Path) -> std::io::Result<bool> {
    match std::fs::read(dir.join(STATE_FILE)) {
        Ok(bytes) => match serde_json::from_slice::<PersistedState>(&bytes) {
            Ok(s) => Ok(s.paused),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "pipeline state file unreadable; starting unpaused");
                Ok(false)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes the state file atomically: temp file, fsync, rename, fsync the directory.
fn write_state(dir: &std::path::Path, paused: bool) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(&PersistedState { paused }).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(STATE_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

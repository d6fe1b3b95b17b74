//! A running pipeline: its validated config, its queue and its counters. Shared read-only
//! (behind an `Arc`) by ingest, the scheduler and the admin API; all mutable parts are atomics
//! or live inside the queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{PipelineConfig, Schedule};
use crate::ingest::auth::AuthFailures;
use crate::queue::{Queue, now_ms};

pub struct Pipeline {
    pub config: PipelineConfig,
    pub queue: Arc<dyn Queue>,
    pub counters: Counters,
    /// When the scheduler will next run this pipeline (ms since the epoch, 0 = unknown).
    next_run_ms: AtomicU64,
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
    /// Rows delivered to the sink and committed out of the queue.
    pub delivered: AtomicU64,
    pub runs_ok: AtomicU64,
    pub runs_failed: AtomicU64,
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
}

impl Pipeline {
    pub fn new(config: PipelineConfig, queue: Arc<dyn Queue>) -> Pipeline {
        Pipeline {
            config,
            queue,
            counters: Counters::default(),
            next_run_ms: AtomicU64::new(0),
        }
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

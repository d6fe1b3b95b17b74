//! The scheduler: tokio-cron-scheduler ticks each pipeline on its interval or cron
//! expression; one worker task per pipeline runs deliveries one at a time, retries failures
//! with capped exponential backoff and jitter, and answers flush requests.
//!
//! Architecture Invariant: a pipeline never has two runs at once — all runs happen in its
//! single worker task; ticks that arrive during a run are coalesced into at most one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Schedule;
use crate::pipeline::{Counters, Pipeline};
use crate::queue::now_ms;
use crate::sink::Sink;

/// What one run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The batch reached the sink and left the queue.
    Delivered,
    /// Nothing was queued; no job was made.
    Empty,
    /// The batch stays queued; a retry is scheduled.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunReport {
    /// When the run started (ms since the epoch).
    pub at_ms: u64,
    pub rows: usize,
    pub job_id: Option<String>,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub duration_ms: u64,
    /// Server-requested wait before the next attempt, if any (not serialized).
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

/// The delay before retry number `failures` (1-based): `initial · 2^(failures-1)`, capped at
/// `max`, with "equal jitter" (between half and all of it), and never shorter than what the
/// server asked for.
pub fn backoff(
    failures: u32,
    initial: Duration,
    max: Duration,
    asked: Option<Duration>,
) -> Duration {
    let exp = initial.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(30)));
    let capped = exp.min(max);
    let half = capped / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
    let delay = half + Duration::from_millis(jitter);
    delay.max(asked.unwrap_or(Duration::ZERO))
}

/// Takes up to `max_rows_per_run` rows, delivers them, and commits them on success.
pub async fn run_once(p: &Pipeline, sink: &Sink) -> RunReport {
    let started = Instant::now();
    let at_ms = now_ms();
    let mut report = RunReport {
        at_ms,
        rows: 0,
        job_id: None,
        outcome: Outcome::Empty,
        error: None,
        duration_ms: 0,
        retry_after: None,
    };
    match p.queue.peek(p.config.max_rows_per_run).await {
        Err(e) => {
            report.outcome = Outcome::Failed;
            report.error = Some(format!("reading the queue: {e}"));
        }
        Ok(entries) if entries.is_empty() => {}
        Ok(entries) => {
            report.rows = entries.len();
            let last = entries[entries.len() - 1].offset;
            match sink.deliver(&p.config, &entries, p.queue.as_ref()).await {
                Ok(job) => {
                    report.job_id = job;
                    report.outcome = Outcome::Delivered;
                    if let Err(e) = p.queue.commit(last).await {
                        tracing::error!(pipeline = p.name(), error = %e, "committing delivered rows failed; they may be delivered again");
                    }
                    if let Err(e) = p.queue.set_in_flight(None).await {
                        tracing::warn!(pipeline = p.name(), error = %e, "clearing the in-flight record failed");
                    }
                    Counters::add(&p.counters.delivered, entries.len() as u64);
                }
                Err(e) => {
                    report.outcome = Outcome::Failed;
                    report.retry_after = e.retry_after();
                    report.error = Some(e.to_string());
                }
            }
        }
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    match report.outcome {
        Outcome::Failed => {
            Counters::add(&p.counters.runs_failed, 1);
            tracing::warn!(
                pipeline = p.name(),
                rows = report.rows,
                job = report.job_id.as_deref().unwrap_or("-"),
                status = "failed",
                duration_ms = report.duration_ms,
                error = report.error.as_deref().unwrap_or(""),
                "delivery run"
            );
        }
        Outcome::Delivered | Outcome::Empty => {
            Counters::add(&p.counters.runs_ok, 1);
            tracing::info!(
                pipeline = p.name(),
                rows = report.rows,
                job = report.job_id.as_deref().unwrap_or("-"),
                status = if report.outcome == Outcome::Delivered {
                    "delivered"
                } else {
                    "empty"
                },
                duration_ms = report.duration_ms,
                "delivery run"
            );
        }
    }
    report
}

/// Asks the workers for runs. Cheap to clone.
#[derive(Clone, Default)]
pub struct SchedulerHandle {
    flushes: Arc<HashMap<String, mpsc::Sender<oneshot::Sender<RunReport>>>>,
    last_runs: Arc<HashMap<String, Arc<Mutex<Option<RunReport>>>>>,
}

impl SchedulerHandle {
    /// Runs a delivery of `pipeline` now (after any run in progress) and returns its report.
    /// `None` for an unknown pipeline or when weir is shutting down.
    pub async fn flush(&self, pipeline: &str) -> Option<RunReport> {
        let tx = self.flushes.get(pipeline)?;
        let (reply, rx) = oneshot::channel();
        tx.send(reply).await.ok()?;
        rx.await.ok()
    }

    /// The report of the pipeline's last run.
    pub fn last_run(&self, pipeline: &str) -> Option<RunReport> {
        let slot = self.last_runs.get(pipeline)?;
        slot.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Owns the cron scheduler; dropping it does not stop the workers (the stop token does).
pub struct Scheduler {
    cron: JobScheduler,
}

impl Scheduler {
    /// Starts one worker per pipeline and registers its schedule.
    pub async fn start(
        pipelines: Vec<(Arc<Pipeline>, Arc<Sink>)>,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<(Scheduler, SchedulerHandle), tokio_cron_scheduler::JobSchedulerError> {
        let cron = JobScheduler::new().await?;
        let mut flushes = HashMap::new();
        let mut last_runs = HashMap::new();
        for (p, sink) in pipelines {
            let (tick_tx, tick_rx) = mpsc::channel::<()>(1);
            let (flush_tx, flush_rx) = mpsc::channel(16);
            let tick = move |_, _| {
                // A full channel means a tick is already waiting: coalesce.
                let _ = tick_tx.try_send(());
                Box::pin(async {})
                    as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
            };
            let job = match &p.config.schedule {
                Schedule::Every(d) => Job::new_repeated_async(*d, tick)?,
                Schedule::Cron(expr) => Job::new_async(expr.as_str(), tick)?,
            };
            let job_id = cron.add(job).await?;
            let last_run = Arc::new(Mutex::new(None));
            flushes.insert(p.name().to_owned(), flush_tx);
            last_runs.insert(p.name().to_owned(), last_run.clone());
            let worker = Worker {
                pipeline: p.clone(),
                sink,
                cron: cron.clone(),
                job_id,
                last_run,
            };
            let span = tracing::info_span!("pipeline", pipeline = p.name());
            tracker.spawn(worker.run(tick_rx, flush_rx, stop.clone()).instrument(span));
        }
        cron.start().await?;
        Ok((
            Scheduler { cron },
            SchedulerHandle {
                flushes: Arc::new(flushes),
                last_runs: Arc::new(last_runs),
            },
        ))
    }

    /// Stops the ticks.
    pub async fn stop(mut self) {
        if let Err(e) = self.cron.shutdown().await {
            tracing::warn!(error = %e, "stopping the cron scheduler failed");
        }
    }
}

struct Worker {
    pipeline: Arc<Pipeline>,
    sink: Arc<Sink>,
    cron: JobScheduler,
    job_id: uuid::Uuid,
    last_run: Arc<Mutex<Option<RunReport>>>,
}

impl Worker {
    async fn run(
        self,
        mut ticks: mpsc::Receiver<()>,
        mut flushes: mpsc::Receiver<oneshot::Sender<RunReport>>,
        stop: CancellationToken,
    ) {
        let cfg = &self.pipeline.config;
        let mut failures: u32 = 0;
        let mut retry_at: Option<Instant> = None;
        settle_in_flight(&self.pipeline, &self.sink).await;
        self.note_next_tick(retry_at).await;
        loop {
            let reply = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(reply) = flushes.recv() => Some(reply),
                _ = sleep_until(retry_at), if retry_at.is_some() => None,
                Some(()) = ticks.recv(), if retry_at.is_none() => None,
                else => break,
            };
            let report = run_once(&self.pipeline, &self.sink).await;
            if report.outcome == Outcome::Failed {
                failures = failures.saturating_add(1);
                let delay = backoff(
                    failures,
                    cfg.retry_initial,
                    cfg.retry_max_interval,
                    report.retry_after,
                );
                tracing::info!(
                    failures,
                    retry_in_ms = delay.as_millis() as u64,
                    "delivery will be retried"
                );
                retry_at = Some(Instant::now() + delay);
            } else {
                failures = 0;
                retry_at = None;
            }
            *self.last_run.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
            self.note_next_tick(retry_at).await;
            if let Some(reply) = reply {
                let _ = reply.send(report);
            }
        }
        if cfg.drain_on_shutdown {
            let report = run_once(&self.pipeline, &self.sink).await;
            let left = self.pipeline.queue.stats().rows;
            if left > 0 {
                tracing::warn!(
                    rows = left,
                    delivered = report.rows,
                    "rows not delivered before shutdown are lost with the memory queue"
                );
            } else {
                tracing::info!(delivered = report.rows, "queue drained at shutdown");
            }
        }
    }

    /// Publishes when the next run will be: the retry time while retrying, else the next tick.
    async fn note_next_tick(&self, retry_at: Option<Instant>) {
        let ms = match retry_at {
            Some(at) => now_ms() + at.saturating_duration_since(Instant::now()).as_millis() as u64,
            None => {
                let mut cron = self.cron.clone();
                match cron.next_tick_for_job(self.job_id).await {
                    Ok(Some(t)) => t.timestamp_millis().max(0) as u64,
                    _ => 0,
                }
            }
        };
        self.pipeline.set_next_run_ms(ms);
    }
}

/// After a restart: a batch recorded as in flight may already be in the sink. Ask the sink;
/// commit the batch if it arrived, so it is not pushed twice.
async fn settle_in_flight(p: &Pipeline, sink: &Sink) {
    let Some(batch) = p.queue.in_flight() else {
        return;
    };
    match sink.settle(&batch).await {
        Ok(true) => {
            tracing::info!(
                first = batch.first,
                last = batch.last,
                job = batch.job_id.as_deref().unwrap_or("-"),
                "batch in flight at the last stop was delivered; committing it"
            );
            if let Err(e) = p.queue.commit(batch.last).await {
                tracing::error!(error = %e, "committing the settled batch failed; it may be delivered again");
            }
        }
        Ok(false) => {
            tracing::info!(
                first = batch.first,
                last = batch.last,
                "batch in flight at the last stop was not delivered; it will be"
            );
        }
        Err(e) => {
            tracing::warn!(first = batch.first, last = batch.last, error = %e, "cannot tell whether the batch in flight at the last stop was delivered; delivering it again");
        }
    }
    if let Err(e) = p.queue.set_in_flight(None).await {
        tracing::warn!(error = %e, "clearing the in-flight record failed");
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let (initial, max) = (Duration::from_secs(1), Duration::from_secs(60));
        for failures in 1..=12 {
            let full = (initial * 2u32.pow(failures - 1)).min(max);
            let d = backoff(failures, initial, max, None);
            assert!(
                d >= full / 2 && d <= full,
                "failure {failures}: {d:?} not in [{:?}, {full:?}]",
                full / 2
            );
        }
        assert!(backoff(u32::MAX, initial, max, None) <= max);
    }

    #[test]
    fn backoff_honours_a_longer_server_requested_wait() {
        let d = backoff(
            1,
            Duration::from_secs(1),
            Duration::from_secs(60),
            Some(Duration::from_secs(30)),
        );
        assert_eq!(d, Duration::from_secs(30));
    }
}

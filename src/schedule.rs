//! The scheduler: tokio-cron-scheduler ticks each pipeline on its interval or cron
//! expression; one worker task per pipeline runs deliveries one at a time, applies the
//! failure policy (FAILING with capped exponential backoff and jitter, SUSPENDED with one
//! small probe per `retry_max_interval`), moves rows past retention to the dead-letter file,
//! and carries out the operator's commands (flush, reconcile, purge, replay) between runs.
//!
//! Architecture Invariant: a pipeline never has two runs at once — all runs happen in its
//! single worker task; ticks that arrive during a run are coalesced into at most one.

use std::collections::{HashMap, VecDeque};
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

use crate::config::{PipelineConfig, Schedule};
use crate::dead_letter;
use crate::metrics::{Metrics, PipelineLabels};
use crate::pipeline::{Counters, Health, Pipeline};
use crate::queue::{Entry, InFlight, Offset, QueueError, now_ms};
use crate::sink::{Fate, InFlightRecorder, Settled, Sink, SinkError};
use crate::sync::lock;

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
    /// Another replica holds the pipeline's delivery lease (a shared NATS queue): it delivers.
    Standby,
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
    /// The batch was cut (too many distinct fields): run again right away for the rest.
    #[serde(skip)]
    pub cut: bool,
}

/// What one pipeline's runs carry from one to the next (owned by its worker).
#[derive(Debug, Default)]
pub struct Carry {
    /// A delivered batch whose commit did not reach the disk: committed again before the
    /// next push; its in-flight record stays until then.
    pub uncommitted: Option<InFlight>,
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

/// Rows a batch in flight spans.
fn span_rows(batch: &InFlight) -> u64 {
    batch.last.saturating_sub(batch.first).saturating_add(1)
}

/// Clears the in-flight record once its batch's fate is known and persisted.
async fn clear_in_flight(p: &Pipeline) {
    if let Err(e) = p.queue().set_in_flight(None).await {
        tracing::warn!(pipeline = p.name(), error = %e, "clearing the in-flight record failed");
    }
}

/// Commits a delivered batch; on failure keeps its in-flight record and remembers it, so
/// the commit is retried before the next push.
async fn commit_delivered(p: &Pipeline, batch: InFlight, carry: &mut Carry) -> Result<(), String> {
    match p.queue().commit(batch.last).await {
        Ok(()) => {
            p.publish_delivered(batch.last, batch.job_id.clone());
            carry.uncommitted = None;
            clear_in_flight(p).await;
            Ok(())
        }
        Err(e) => {
            let error = format!(
                "committing delivered rows through offset {} failed: {e}; they stay in flight until the cursor is on disk",
                batch.last
            );
            carry.uncommitted = Some(batch);
            Err(error)
        }
    }
}

/// What settling the previous run's batch did, before a new push.
#[derive(Debug, Default)]
struct Settling {
    /// Rows of a batch found delivered (and now committed).
    rows: u64,
    job_id: Option<String>,
}

/// Settles what the previous run (or process) left open, before anything new is pushed:
/// retries a commit that did not persist, then asks the sink about a batch in flight.
/// `Err` means the pipeline must not push yet.
async fn settle_open(p: &Pipeline, sink: &Sink, carry: &mut Carry) -> Result<Settling, String> {
    if let Some(batch) = carry.uncommitted.clone() {
        let rows = span_rows(&batch);
        let job_id = batch.job_id.clone();
        commit_delivered(p, batch, carry).await?;
        tracing::info!(
            pipeline = p.name(),
            rows,
            "delivered rows committed on retry"
        );
        p.counters.deliver(rows);
        return Ok(Settling { rows, job_id });
    }
    let Some(batch) = p.queue().in_flight() else {
        return Ok(Settling::default());
    };
    let job = batch.job_id.clone();
    match sink.settle(&batch).await {
        Ok(Settled::Delivered) => {
            tracing::info!(
                pipeline = p.name(),
                first = batch.first,
                last = batch.last,
                job = job.as_deref().unwrap_or("-"),
                "batch in flight was delivered; committing it"
            );
            let rows = span_rows(&batch);
            commit_delivered(p, batch, carry).await?;
            p.counters.deliver(rows);
            Ok(Settling { rows, job_id: job })
        }
        Ok(Settled::NotDelivered) => {
            tracing::info!(
                pipeline = p.name(),
                first = batch.first,
                last = batch.last,
                "batch in flight was not delivered; it will be"
            );
            clear_in_flight(p).await;
            Ok(Settling::default())
        }
        Err(e) => {
            if e.fate() == Fate::NotDelivered {
                clear_in_flight(p).await;
            }
            Err(format!(
                "settling job {} of the batch in flight (offsets {}..={}): {e}",
                job.as_deref().unwrap_or("-"),
                batch.first,
                batch.last
            ))
        }
    }
}

/// Settles what was left open, then takes up to `max_rows` rows, delivers them, and
/// commits them on success. A batch whose outcome is unknown keeps its in-flight record
/// and is settled before the next push: it is never pushed a second time blindly.
pub async fn run_once(p: &Pipeline, sink: &Sink, carry: &mut Carry, max_rows: usize) -> RunReport {
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
        cut: false,
    };
    match p.queue().lease().await {
        Ok(true) => {}
        Ok(false) => {
            report.outcome = Outcome::Standby;
            tracing::debug!(
                pipeline = p.name(),
                "another replica delivers this pipeline"
            );
            return report;
        }
        Err(e) => {
            report.outcome = Outcome::Failed;
            report.error = Some(format!("taking the delivery lease: {e}"));
            Counters::add(&p.counters.runs_failed, 1);
            tracing::warn!(pipeline = p.name(), error = %e, "delivery waits for the queue");
            return report;
        }
    }
    match settle_open(p, sink, carry).await {
        Err(e) => {
            report.outcome = Outcome::Failed;
            report.error = Some(e);
        }
        Ok(settled) => {
            if settled.rows > 0 {
                report.rows = settled.rows as usize;
                report.job_id = settled.job_id;
                report.outcome = Outcome::Delivered;
            }
            push(p, sink, carry, max_rows, &mut report).await;
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
        Outcome::Standby => {}
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

/// The push part of a run: peek, deliver, commit.
async fn push(
    p: &Pipeline,
    sink: &Sink,
    carry: &mut Carry,
    max_rows: usize,
    report: &mut RunReport,
) {
    let entries = match p.queue().peek(max_rows, p.config.max_bytes_per_run).await {
        Err(e) => {
            report.outcome = Outcome::Failed;
            report.error = Some(format!("reading the queue: {e}"));
            return;
        }
        Ok(entries) if entries.is_empty() => return,
        Ok(entries) => entries,
    };
    match sink
        .deliver(&entries, InFlightRecorder::new(p.queue().as_ref()))
        .await
    {
        Ok(delivered) => {
            let rows = delivered.rows.clamp(1, entries.len());
            let batch = InFlight {
                first: entries[0].offset,
                last: entries[rows - 1].offset,
                job_id: delivered.job_id.clone(),
            };
            report.job_id = delivered.job_id;
            report.rows += rows;
            if let Err(e) = commit_delivered(p, batch, carry).await {
                report.outcome = Outcome::Failed;
                report.error = Some(e);
                return;
            }
            p.counters.deliver(rows as u64);
            report.outcome = Outcome::Delivered;
            if let Some(cut) = delivered.cut {
                tracing::warn!(pipeline = p.name(), rows, queued = entries.len(), error = %cut, "batch cut to max_columns");
                report.error = Some(cut);
                report.cut = true;
            }
        }
        Err(e) if e.bad_data().is_some() => {
            if e.fate() == Fate::NotDelivered {
                clear_in_flight(p).await;
            }
            let fit = sink.fitting_rows(&entries).clamp(1, entries.len());
            let reason = e.bad_data().unwrap_or_default();
            tracing::warn!(pipeline = p.name(), rows = fit, error = %reason, "batch refused for its data; isolating the bad rows");
            isolate(p, sink, carry, &entries[..fit], reason, report).await;
        }
        Err(e) => {
            // A sink that delivered a prefix of the batch (the HTTP sink per row): commit it,
            // so the retry starts at the first row not delivered.
            if let SinkError::Http(h) = &e
                && let Some(through) = h.delivered_through()
            {
                let batch = InFlight {
                    first: entries[0].offset,
                    last: through,
                    job_id: None,
                };
                match commit_delivered(p, batch, carry).await {
                    Ok(()) => {
                        let rows = entries.iter().take_while(|e| e.offset <= through);
                        p.counters.deliver(rows.count() as u64);
                    }
                    Err(error) => tracing::error!(
                        pipeline = p.name(),
                        error,
                        "committing the delivered prefix failed; it is retried before the next push"
                    ),
                }
            }
            report.outcome = Outcome::Failed;
            report.rows += entries.len();
            report.retry_after = e.retry_after();
            report.error = Some(e.to_string());
            match e.fate() {
                Fate::NotDelivered => clear_in_flight(p).await,
                Fate::Unknown => tracing::warn!(
                    pipeline = p.name(),
                    "outcome of the job unknown; it is settled before the next push"
                ),
            }
        }
    }
}

/// The most extra jobs isolating one refused batch of `rows` may spend: `2·⌈log2(rows)⌉`.
pub fn isolation_budget(rows: usize) -> u32 {
    2 * (usize::BITS - rows.saturating_sub(1).leading_zeros())
}

/// What one piece of a refused batch came to.
enum Piece {
    /// Delivered (or dead-lettered) and committed.
    Done,
    /// Refused for its data, with the service's reason.
    Bad(String),
    /// Isolation must stop here: a transient or unknown failure, a failed commit, or the
    /// job budget spent. The rest stays queued for the next run.
    Stop(String, Option<Duration>),
}

/// Bisection over a batch refused for its data, oldest rows first, so what leaves the queue
/// is always a contiguous prefix from the batch start: each half is pushed as its own job
/// (recorded in flight like any batch, so an unknown outcome is settled before the next
/// push); a delivered half is committed; a row refused alone goes to the dead-letter file
/// with the service's reason and is then committed too.
struct Isolation<'a> {
    p: &'a Pipeline,
    sink: &'a Sink,
    carry: &'a mut Carry,
    jobs_left: u32,
    jobs: u64,
    delivered: usize,
    isolated: usize,
    job_id: Option<String>,
}

impl Isolation<'_> {
    /// Isolates the bad rows of `rows`, known to be refused with `reason`.
    fn bad<'s>(
        &'s mut self,
        rows: &'s [Entry],
        reason: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Piece> + Send + 's>> {
        Box::pin(async move {
            if rows.len() == 1 {
                return self.dead_letter(&rows[0], reason).await;
            }
            let (left, right) = rows.split_at(rows.len() / 2);
            match self.try_push(left).await {
                // The left half went through: the right half holds the bad rows.
                Piece::Done => self.bad(right, reason).await,
                Piece::Bad(why) => match self.bad(left, why).await {
                    Piece::Done => match self.try_push(right).await {
                        Piece::Bad(why) => self.bad(right, why).await,
                        other => other,
                    },
                    other => other,
                },
                stop => stop,
            }
        })
    }

    /// Pushes `rows` as one job and commits them if they were delivered.
    async fn try_push(&mut self, rows: &[Entry]) -> Piece {
        if self.jobs_left == 0 {
            return Piece::Stop(
                "isolating bad rows: this batch's job allowance is spent; the rest is isolated in the next run"
                    .into(),
                None,
            );
        }
        self.jobs_left -= 1;
        self.jobs += 1;
        let p = self.p;
        match self
            .sink
            .deliver(rows, InFlightRecorder::new(p.queue().as_ref()))
            .await
        {
            Ok(delivered) => {
                let batch = InFlight {
                    first: rows[0].offset,
                    last: rows[rows.len() - 1].offset,
                    job_id: delivered.job_id.clone(),
                };
                self.job_id = delivered.job_id;
                if let Err(e) = commit_delivered(p, batch, self.carry).await {
                    return Piece::Stop(e, None);
                }
                self.delivered += rows.len();
                p.counters.deliver(rows.len() as u64);
                Piece::Done
            }
            Err(e) => {
                if e.fate() == Fate::NotDelivered {
                    clear_in_flight(p).await;
                }
                match e.bad_data() {
                    Some(reason) => Piece::Bad(reason),
                    None => Piece::Stop(e.to_string(), e.retry_after()),
                }
            }
        }
    }

    /// Moves a row that failed alone to the dead-letter file, then commits it.
    async fn dead_letter(&mut self, row: &Entry, reason: String) -> Piece {
        let p = self.p;
        tracing::warn!(pipeline = p.name(), offset = row.offset, error = %reason, "row refused alone moved to the dead-letter file");
        if let Err(e) = dead_letter::record(p, vec![row.clone()], reason).await {
            return Piece::Stop(format!("writing the dead letters: {e}"), None);
        }
        if let Err(e) = p.queue().commit(row.offset).await {
            return Piece::Stop(
                format!("committing the dead-lettered row {}: {e}", row.offset),
                None,
            );
        }
        Counters::add(&p.counters.dead_lettered, 1);
        Counters::add(&p.counters.isolated, 1);
        self.isolated += 1;
        Piece::Done
    }
}

/// Isolates the bad rows of a batch refused for its data (`reason`), within
/// [`isolation_budget`] extra jobs: every good row is delivered, every row refused alone is
/// dead-lettered. What the budget or a transient failure leaves is retried next run.
async fn isolate(
    p: &Pipeline,
    sink: &Sink,
    carry: &mut Carry,
    rows: &[Entry],
    reason: String,
    report: &mut RunReport,
) {
    let mut run = Isolation {
        p,
        sink,
        carry,
        jobs_left: isolation_budget(rows.len()),
        jobs: 0,
        delivered: 0,
        isolated: 0,
        job_id: None,
    };
    let piece = run.bad(rows, reason).await;
    Counters::add(&p.counters.isolation_jobs, run.jobs);
    tracing::info!(
        pipeline = p.name(),
        rows = rows.len(),
        delivered = run.delivered,
        isolated = run.isolated,
        jobs = run.jobs,
        "bad row isolation"
    );
    report.rows += run.delivered + run.isolated;
    report.job_id = run.job_id.or(report.job_id.take());
    match piece {
        Piece::Done => {
            report.outcome = Outcome::Delivered;
            report.error = Some(format!(
                "{} rows refused for their data moved to the dead-letter file",
                run.isolated
            ));
            // Rows past a max_columns cut, if any, go in the next run right away.
            report.cut = true;
        }
        Piece::Bad(why) | Piece::Stop(why, None) => {
            report.outcome = Outcome::Failed;
            report.error = Some(why);
        }
        Piece::Stop(why, retry_after) => {
            report.outcome = Outcome::Failed;
            report.retry_after = retry_after;
            report.error = Some(why);
        }
    }
}

/// The failure policy of one pipeline, as a pure state machine over `tokio::time::Instant`
/// (so it is tested with paused time).
#[derive(Debug, Clone)]
pub struct Policy {
    initial: Duration,
    max: Duration,
    suspend_after: Duration,
    health: Health,
    failures: u32,
    failing_since: Option<Instant>,
    /// How long the pipeline had been failing before this process started (restored from
    /// `pipeline.json`), counted towards `suspend_after`.
    failed_before: Duration,
    /// When the failure began (ms since the epoch), exactly as restored or first seen, so
    /// every replica shows the same instant.
    since_ms: Option<u64>,
}

impl Policy {
    pub fn new(cfg: &PipelineConfig) -> Policy {
        Policy {
            initial: cfg.retry_initial,
            max: cfg.retry_max_interval,
            suspend_after: cfg.suspend_after,
            health: Health::Active,
            failures: 0,
            failing_since: None,
            failed_before: Duration::ZERO,
            since_ms: None,
        }
    }

    /// Continues a failure that began before a restart, at `since_ms` (wall clock, as
    /// persisted), so `suspend_after` counts across restarts.
    pub fn resumed(mut self, since_ms: Option<u64>) -> Policy {
        if let Some(since_ms) = since_ms {
            self.health = Health::Failing;
            self.failing_since = Some(Instant::now());
            self.failed_before = Duration::from_millis(now_ms().saturating_sub(since_ms));
            self.since_ms = Some(since_ms);
        }
        self
    }

    pub fn health(&self) -> Health {
        self.health
    }

    pub fn failing_since(&self) -> Option<Instant> {
        self.failing_since
            .map(|t| t.checked_sub(self.failed_before).unwrap_or(t))
    }

    /// One successful run (or an empty one) makes the pipeline ACTIVE again.
    pub fn on_success(&mut self) {
        self.health = Health::Active;
        self.failures = 0;
        self.failing_since = None;
        self.failed_before = Duration::ZERO;
        self.since_ms = None;
    }

    /// Records a failed run at `now`; returns how long to wait before the next attempt.
    /// FAILING retries with backoff; after `suspend_after` of continuous failure the
    /// pipeline is SUSPENDED and probes once per `retry_max_interval`.
    pub fn on_failure(&mut self, now: Instant, asked: Option<Duration>) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let since = *self.failing_since.get_or_insert(now);
        self.since_ms.get_or_insert_with(|| {
            now_ms().saturating_sub(Instant::now().saturating_duration_since(now).as_millis() as u64)
        });
        if now.duration_since(since) + self.failed_before >= self.suspend_after {
            self.health = Health::Suspended;
            self.max.max(asked.unwrap_or_default())
        } else {
            self.health = Health::Failing;
            backoff(self.failures, self.initial, self.max, asked)
        }
    }

    /// Takes on the health the replica that delivers a shared queue published, so a
    /// takeover continues its failure clock (and a SUSPENDED pipeline stays suspended).
    pub fn adopt(&mut self, shared: crate::queue::SharedHealth) {
        match shared.failing_since_ms {
            None => self.on_success(),
            Some(since_ms) => {
                self.health = match shared.health {
                    Health::Active => Health::Failing,
                    h => h,
                };
                self.failures = self.failures.max(1);
                self.failing_since = Some(Instant::now());
                self.failed_before = Duration::from_millis(now_ms().saturating_sub(since_ms));
                self.since_ms = Some(since_ms);
            }
        }
    }

    /// When the current failure began, ms since the epoch.
    pub fn failing_since_ms(&self) -> Option<u64> {
        self.since_ms
    }

    /// Rows the next run may take: one small probe while SUSPENDED.
    pub fn batch_size(&self, max_rows_per_run: usize) -> usize {
        match self.health {
            Health::Suspended => 1,
            _ => max_rows_per_run,
        }
    }
}

/// Why an operator command could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no pipeline is named \"{0}\"")]
    UnknownPipeline(String),
    #[error("pipeline is paused: resume it before flushing")]
    Paused,
    #[error("weir is shutting down")]
    Stopping,
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Requeue(#[from] dead_letter::RequeueError),
}

/// The most rows one reconcile call takes out (and returns), so one call never loads the
/// whole queue.
pub const MAX_RECONCILE_PAGE: usize = 10_000;

/// A page of rows taken out of the queue by reconcile.
#[derive(Debug, Clone, Serialize)]
pub struct Reconciled {
    /// Rows in this page.
    #[serde(rename = "pageSize")]
    pub page_size: usize,
    /// Rows still queued after this page was taken.
    pub total: u64,
    pub content: Vec<ReconciledRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReconciledRow {
    pub offset: Offset,
    pub row: crate::row::Row,
}

type Reply<T> = oneshot::Sender<Result<T, ControlError>>;

/// What operators ask a worker to do; carried out between runs, never during one.
enum Command {
    Flush(Reply<RunReport>),
    Reconcile(usize, Reply<Reconciled>),
    Purge(Reply<u64>),
    Replay(Option<Offset>, Reply<Replayed>),
    Requeue(Option<Vec<Offset>>, Reply<u64>),
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Replayed {
    /// The first offset made deliverable again.
    #[serde(rename = "fromOffset")]
    pub from_offset: Offset,
    /// Rows queued now.
    pub queued: u64,
}

/// Asks the workers for runs and operator commands. Cheap to clone.
#[derive(Clone, Default)]
pub struct SchedulerHandle {
    commands: Arc<HashMap<String, mpsc::Sender<Command>>>,
    last_runs: Arc<HashMap<String, RecentRuns>>,
    /// Why a pipeline's worker stopped, once it did (other than at shutdown).
    worker_errors: Arc<HashMap<String, WorkerError>>,
}

/// A pipeline's last [`RECENT_RUNS`] run reports, oldest first.
type RecentRuns = Arc<Mutex<VecDeque<RunReport>>>;

/// How many run reports a pipeline keeps for the admin API.
pub const RECENT_RUNS: usize = 10;

/// Set when a worker ended for any reason but shutdown.
type WorkerError = Arc<Mutex<Option<String>>>;

/// Watches a worker task: if it ends for any reason other than shutdown (a panic included),
/// logs it at error and records why, which turns `/readyz` 503 and shows in the admin API.
async fn supervise(
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    stopped: WorkerError,
) {
    let why = match task.await {
        Ok(()) if stop.is_cancelled() => return,
        Ok(()) => "the worker ended before shutdown".to_owned(),
        Err(e) if e.is_panic() => {
            let panic = e.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            format!("the worker panicked: {message}")
        }
        Err(e) => format!("the worker was cancelled: {e}"),
    };
    tracing::error!(error = %why, "pipeline worker stopped; its rows are no longer delivered");
    *lock(&stopped) = Some(why);
}

impl SchedulerHandle {
    async fn ask<T>(
        &self,
        pipeline: &str,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, ControlError> {
        let tx = self
            .commands
            .get(pipeline)
            .ok_or_else(|| ControlError::UnknownPipeline(pipeline.to_owned()))?;
        let (reply, rx) = oneshot::channel();
        tx.send(make(reply))
            .await
            .map_err(|_| ControlError::Stopping)?;
        rx.await.map_err(|_| ControlError::Stopping)?
    }

    /// Runs a delivery now (after any run in progress) and returns its report.
    pub async fn flush(&self, pipeline: &str) -> Result<RunReport, ControlError> {
        self.ask(pipeline, Command::Flush).await
    }

    /// Takes up to `page_size` (at most [`MAX_RECONCILE_PAGE`]) of the oldest rows out of
    /// the queue and returns them; weir will not deliver them.
    pub async fn reconcile(
        &self,
        pipeline: &str,
        page_size: usize,
    ) -> Result<Reconciled, ControlError> {
        self.ask(pipeline, |r| Command::Reconcile(page_size, r))
            .await
    }

    /// Removes every queued row; returns how many.
    pub async fn purge(&self, pipeline: &str) -> Result<u64, ControlError> {
        self.ask(pipeline, Command::Purge).await
    }

    /// Makes rows from `offset` on (from the oldest retained row when `None`) deliverable
    /// again.
    pub async fn replay(
        &self,
        pipeline: &str,
        offset: Option<Offset>,
    ) -> Result<Replayed, ControlError> {
        self.ask(pipeline, |r| Command::Replay(offset, r)).await
    }

    /// Queues dead-lettered rows again (all, or those with the given offsets); returns how
    /// many. Runs in the worker, so it never races a run writing the file.
    pub async fn requeue(
        &self,
        pipeline: &str,
        offsets: Option<Vec<Offset>>,
    ) -> Result<u64, ControlError> {
        self.ask(pipeline, |r| Command::Requeue(offsets, r)).await
    }

    /// Why the pipeline's worker stopped, if it did (not at shutdown).
    pub fn worker_error(&self, pipeline: &str) -> Option<String> {
        let slot = self.worker_errors.get(pipeline)?;
        lock(slot).clone()
    }

    /// Whether every pipeline's worker is still running.
    pub fn workers_running(&self) -> bool {
        self.worker_errors.values().all(|s| lock(s).is_none())
    }

    /// The report of the pipeline's last run.
    pub fn last_run(&self, pipeline: &str) -> Option<RunReport> {
        let slot = self.last_runs.get(pipeline)?;
        lock(slot).back().cloned()
    }

    /// The reports of the pipeline's last [`RECENT_RUNS`] runs, newest first.
    pub fn recent_runs(&self, pipeline: &str) -> Vec<RunReport> {
        self.last_runs
            .get(pipeline)
            .map(|slot| lock(slot).iter().rev().cloned().collect())
            .unwrap_or_default()
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
        metrics: Arc<Metrics>,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<(Scheduler, SchedulerHandle), tokio_cron_scheduler::JobSchedulerError> {
        let cron = JobScheduler::new().await?;
        let mut commands = HashMap::new();
        let mut last_runs = HashMap::new();
        let mut worker_errors = HashMap::new();
        for (p, sink) in pipelines {
            let (tick_tx, tick_rx) = mpsc::channel::<()>(1);
            let (command_tx, command_rx) = mpsc::channel(16);
            let tick = move |_, _| {
                // A full channel means a tick is already waiting: coalesce.
                let _ = tick_tx.try_send(());
                Box::pin(async {})
                    as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
            };
            let job = match &p.config.schedule {
                Schedule::Every(d) => Job::new_repeated_async(*d, tick)?,
                Schedule::Cron(expr) => Job::new_async(expr.as_str(), tick)?,
                // Runs start when the queue asks for one; the ticks only sweep retention.
                Schedule::Continuous => Job::new_repeated_async(CONTINUOUS_SWEEP, tick)?,
            };
            let job_id = cron.add(job).await?;
            let last_run = Arc::new(Mutex::new(VecDeque::new()));
            commands.insert(p.name().to_owned(), command_tx);
            last_runs.insert(p.name().to_owned(), last_run.clone());
            let worker = Worker {
                policy: Policy::new(&p.config).resumed(p.health().1),
                pipeline: p.clone(),
                sink,
                metrics: metrics.clone(),
                cron: cron.clone(),
                job_id,
                last_run,
                retry_at: None,
                due: None,
                carry: Carry::default(),
                shared: None,
            };
            let stopped = Arc::new(Mutex::new(None));
            worker_errors.insert(p.name().to_owned(), stopped.clone());
            let span = tracing::info_span!("pipeline", pipeline = p.name());
            let task = tokio::spawn(
                worker
                    .run(tick_rx, command_rx, stop.clone())
                    .instrument(span.clone()),
            );
            tracker.spawn(supervise(task, stop.clone(), stopped).instrument(span));
        }
        cron.start().await?;
        Ok((
            Scheduler { cron },
            SchedulerHandle {
                commands: Arc::new(commands),
                last_runs: Arc::new(last_runs),
                worker_errors: Arc::new(worker_errors),
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
    metrics: Arc<Metrics>,
    policy: Policy,
    cron: JobScheduler,
    job_id: uuid::Uuid,
    last_run: RecentRuns,
    /// When the next retry or probe is due, while FAILING or SUSPENDED.
    retry_at: Option<Instant>,
    /// `schedule = "continuous"`: when the queued rows ask for a run (see [`commit_due`]).
    due: Option<Instant>,
    carry: Carry,
    /// The health last shared with the other replicas (a shared queue).
    shared: Option<crate::queue::SharedHealth>,
}

impl Worker {
    async fn run(
        mut self,
        mut ticks: mpsc::Receiver<()>,
        mut commands: mpsc::Receiver<Command>,
        stop: CancellationToken,
    ) {
        if let Err(e) = settle_open(&self.pipeline, &self.sink, &mut self.carry).await {
            tracing::warn!(error = %e, "batch in flight at the last stop not settled yet; settled before the next push");
        }
        self.due = self.continuous_due();
        self.note_next_tick().await;
        let continuous = self.pipeline.config.schedule == Schedule::Continuous;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(command) = commands.recv() => self.command(command).await,
                _ = sleep_until(self.retry_at), if self.retry_at.is_some() => {
                    self.retry_at = None;
                    if !self.pipeline.is_paused() {
                        self.attempt().await;
                    }
                }
                _ = sleep_until(self.due), if self.due.is_some() && self.retry_at.is_none() => {
                    self.due = None;
                    if !self.pipeline.is_paused() {
                        self.attempt().await;
                    }
                }
                // Rows were queued: the due time is looked at again below.
                () = self.pipeline.queue_changed(), if continuous => {}
                () = self.pipeline.run_wanted() => {
                    if !self.pipeline.is_paused() && self.retry_at.is_none() {
                        self.attempt().await;
                    }
                }
                Some(()) = ticks.recv() => {
                    self.sweep().await;
                    if !continuous && !self.pipeline.is_paused() && self.retry_at.is_none() {
                        self.attempt().await;
                    }
                }
                else => break,
            }
            self.due = self.continuous_due();
            self.note_next_tick().await;
        }
        if self.pipeline.config.drain_on_shutdown {
            let report = run_once(
                &self.pipeline,
                &self.sink,
                &mut self.carry,
                self.pipeline.config.max_rows_per_run,
            )
            .await;
            let left = self.pipeline.queue().stats().rows;
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

    /// One delivery run under the failure policy.
    async fn attempt(&mut self) -> RunReport {
        let cfg = &self.pipeline.config;
        // While another replica delivers, its health is ours, should we take over.
        if let Some(shared) = self.pipeline.queue().shared_health() {
            self.policy.adopt(shared);
        }
        let report = run_once(
            &self.pipeline,
            &self.sink,
            &mut self.carry,
            self.policy.batch_size(cfg.max_rows_per_run),
        )
        .await;
        if report.outcome == Outcome::Delivered {
            self.metrics
                .run_duration
                .get_or_create(&PipelineLabels {
                    pipeline: cfg.name.clone(),
                })
                .observe(report.duration_ms as f64 / 1000.0);
        }
        if report.outcome == Outcome::Standby {
            // The holder retries on its own clock; this replica checks again on the schedule.
            self.retry_at = None;
            self.record(&report);
            return report;
        }
        let before = self.policy.health();
        if report.outcome == Outcome::Failed {
            let delay = self.policy.on_failure(Instant::now(), report.retry_after);
            let now = Instant::now();
            // A delay comes partly from the network: never let it overflow the clock.
            self.retry_at = Some(now.checked_add(delay).unwrap_or(now + self.policy.max));
            tracing::info!(state = ?self.policy.health(), retry_in_ms = delay.as_millis() as u64, "delivery will be retried");
        } else {
            self.policy.on_success();
            // A cut batch: the rest is delivered in the next run, right away.
            self.retry_at = report.cut.then(Instant::now);
        }
        let after = self.policy.health();
        if before != after {
            tracing::warn!(from = ?before, to = ?after, "pipeline state changed");
        }
        self.pipeline
            .set_health(after, self.policy.failing_since_ms());
        let (health, failing_since_ms) = self.pipeline.health();
        let shared = crate::queue::SharedHealth {
            health,
            failing_since_ms,
        };
        if self.shared != Some(shared) {
            match self.pipeline.queue().share_health(shared).await {
                Ok(()) => self.shared = Some(shared),
                Err(e) => {
                    tracing::warn!(error = %e, "sharing the delivery health failed; retried after the next run");
                }
            }
        }
        self.record(&report);
        report
    }

    /// Keeps `report` among the recent runs.
    fn record(&self, report: &RunReport) {
        let mut runs = lock(&self.last_run);
        if runs.len() == RECENT_RUNS {
            runs.pop_front();
        }
        runs.push_back(report.clone());
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Flush(reply) => {
                let result = if self.pipeline.is_paused() {
                    Err(ControlError::Paused)
                } else {
                    self.sweep().await;
                    Ok(self.attempt().await)
                };
                let _ = reply.send(result);
            }
            Command::Reconcile(page_size, reply) => {
                let _ = reply.send(self.reconcile(page_size).await);
            }
            Command::Purge(reply) => {
                let _ = reply.send(self.purge().await);
            }
            Command::Replay(offset, reply) => {
                let _ = reply.send(self.replay(offset).await);
            }
            Command::Requeue(offsets, reply) => {
                let requeued = dead_letter::requeue(&self.pipeline, offsets).await;
                let _ = reply.send(requeued.map_err(ControlError::from));
            }
        }
    }

    async fn reconcile(&self, page_size: usize) -> Result<Reconciled, ControlError> {
        let q = &self.pipeline.queue();
        let page: Vec<Entry> = q.peek(page_size.min(MAX_RECONCILE_PAGE), u64::MAX).await?;
        if let Some(last) = page.last() {
            q.commit(last.offset).await?;
        }
        Counters::add(&self.pipeline.counters.removed, page.len() as u64);
        tracing::info!(rows = page.len(), "rows taken out by reconcile");
        Ok(Reconciled {
            page_size: page.len(),
            total: q.stats().rows,
            content: page
                .into_iter()
                .map(|e| ReconciledRow {
                    offset: e.offset,
                    row: e.row,
                })
                .collect(),
        })
    }

    /// Rewinds the queue to `from`, or to the oldest retained row.
    async fn replay(&self, from: Option<Offset>) -> Result<Replayed, ControlError> {
        let q = &self.pipeline.queue();
        let mut offset = from.unwrap_or(0);
        // Without an offset, ask for 0 and take the oldest retained offset the queue names;
        // the second try covers segments removed between the two calls.
        let mut tries = 0;
        loop {
            tries += 1;
            match q.replay_from(offset).await {
                Ok(queued) => {
                    tracing::info!(from = offset, rows = queued, "replay requested");
                    return Ok(Replayed {
                        from_offset: offset,
                        queued,
                    });
                }
                Err(QueueError::OffsetGone { oldest, .. }) if from.is_none() && tries < 3 => {
                    offset = oldest;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn purge(&self) -> Result<u64, ControlError> {
        let q = &self.pipeline.queue();
        let stats = q.stats();
        if stats.rows > 0 {
            q.commit(stats.next_offset.saturating_sub(1)).await?;
        }
        Counters::add(&self.pipeline.counters.removed, stats.rows);
        tracing::warn!(rows = stats.rows, "queue purged");
        Ok(stats.rows)
    }

    /// Moves rows past retention to the dead-letter file.
    async fn sweep(&self) {
        // Only the replica that delivers moves rows out of a shared queue.
        if !matches!(self.pipeline.queue().lease().await, Ok(true)) {
            return;
        }
        let reason = match lock(&self.last_run).back() {
            Some(RunReport { error: Some(e), .. }) => {
                format!("not delivered within retention; last error: {e}")
            }
            _ if self.pipeline.is_paused() => {
                "not delivered within retention: pipeline paused".to_owned()
            }
            _ => "not delivered within retention".to_owned(),
        };
        if let Err(e) = dead_letter::sweep(&self.pipeline, &reason).await {
            tracing::error!(error = %e, "moving expired rows to the dead letters failed");
        }
    }

    /// `schedule = "continuous"`: when the queued rows ask for a run (none while paused or
    /// with nothing queued).
    fn continuous_due(&self) -> Option<Instant> {
        let cfg = &self.pipeline.config;
        if cfg.schedule != Schedule::Continuous || self.pipeline.is_paused() {
            return None;
        }
        let stats = self.pipeline.queue().stats();
        commit_due(
            Queued {
                rows: stats.rows,
                bytes: stats.bytes,
                oldest_ms: stats.oldest_ms,
            },
            CommitPolicy::of(cfg),
            now_ms(),
            Instant::now(),
        )
    }

    /// Publishes when the next run will be: the retry time while retrying, else the next tick
    /// (with `schedule = "continuous"`, when the queued rows ask for one).
    async fn note_next_tick(&self) {
        let ms = match self.retry_at.or(self.due) {
            Some(at) => now_ms() + at.saturating_duration_since(Instant::now()).as_millis() as u64,
            None if self.pipeline.config.schedule == Schedule::Continuous => 0,
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

/// How often a `schedule = "continuous"` pipeline sweeps rows past retention.
const CONTINUOUS_SWEEP: Duration = Duration::from_secs(60);

/// What a pipeline has queued, as `schedule = "continuous"` looks at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    pub rows: u64,
    pub bytes: u64,
    /// When the oldest queued row was accepted (ms since the epoch).
    pub oldest_ms: Option<u64>,
}

/// A pipeline's `max_rows_per_run`, `max_bytes_per_run` and `max_wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitPolicy {
    pub max_rows: u64,
    pub max_bytes: u64,
    pub max_wait: Duration,
}

impl CommitPolicy {
    pub fn of(cfg: &PipelineConfig) -> CommitPolicy {
        CommitPolicy {
            max_rows: cfg.max_rows_per_run as u64,
            max_bytes: cfg.max_bytes_per_run,
            max_wait: cfg.max_wait,
        }
    }
}

/// The commit policy of `schedule = "continuous"` (a pure function): a run is due now once
/// the queued rows reach `max_rows_per_run` or `max_bytes_per_run`, else `max_wait` after the
/// oldest queued row was accepted; nothing is due with nothing queued. `now_ms` is the wall
/// clock `oldest_ms` is measured on, `now` the monotonic instant of the same moment.
pub fn commit_due(
    queued: Queued,
    policy: CommitPolicy,
    now_ms: u64,
    now: Instant,
) -> Option<Instant> {
    if queued.rows == 0 {
        return None;
    }
    if queued.rows >= policy.max_rows || queued.bytes >= policy.max_bytes {
        return Some(now);
    }
    let waited = Duration::from_millis(now_ms.saturating_sub(queued.oldest_ms.unwrap_or(now_ms)));
    let left = policy.max_wait.saturating_sub(waited);
    Some(now.checked_add(left).unwrap_or(now))
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
    fn isolation_spends_at_most_two_jobs_per_halving() {
        assert_eq!(isolation_budget(1), 0);
        assert_eq!(isolation_budget(2), 2);
        assert_eq!(isolation_budget(1000), 20);
        assert_eq!(isolation_budget(1024), 20);
        assert_eq!(isolation_budget(1025), 22);
    }

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
    fn a_continuous_run_is_due_at_a_full_batch_or_max_wait_after_the_oldest_row() {
        let policy = CommitPolicy {
            max_rows: 100,
            max_bytes: 1000,
            max_wait: Duration::from_secs(30),
        };
        let now = Instant::now();
        let queued = |rows, bytes, oldest_ms| Queued {
            rows,
            bytes,
            oldest_ms: Some(oldest_ms),
        };
        let at = 1_000_000;
        assert_eq!(
            commit_due(
                Queued {
                    rows: 0,
                    bytes: 0,
                    oldest_ms: None
                },
                policy,
                at,
                now
            ),
            None
        );
        assert_eq!(commit_due(queued(100, 10, at), policy, at, now), Some(now));
        assert_eq!(commit_due(queued(1, 1000, at), policy, at, now), Some(now));
        assert_eq!(
            commit_due(queued(1, 10, at - 12_000), policy, at, now),
            Some(now + Duration::from_secs(18)),
            "30 s after the oldest row"
        );
        assert_eq!(
            commit_due(queued(1, 10, at - 45_000), policy, at, now),
            Some(now),
            "overdue rows go now"
        );
        assert_eq!(
            commit_due(queued(1, 10, at + 5_000), policy, at, now),
            Some(now + Duration::from_secs(30)),
            "a row from a clock ahead waits max_wait, no longer"
        );
    }

    fn policy(initial: u64, max: u64, suspend: u64) -> Policy {
        Policy {
            initial: Duration::from_secs(initial),
            max: Duration::from_secs(max),
            suspend_after: Duration::from_secs(suspend),
            health: Health::Active,
            failures: 0,
            failing_since: None,
            failed_before: Duration::ZERO,
            since_ms: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_that_began_before_a_restart_counts_towards_suspend_after() {
        // Failing for 50 min before the restart, suspended after 1 h.
        let since_ms = now_ms() - 50 * 60 * 1000;
        let mut p = policy(10, 60, 3600).resumed(Some(since_ms));
        assert_eq!(p.health(), Health::Failing);
        p.on_failure(Instant::now(), None);
        assert_eq!(p.health(), Health::Failing);
        tokio::time::advance(Duration::from_secs(11 * 60)).await;
        p.on_failure(Instant::now(), None);
        assert_eq!(
            p.health(),
            Health::Suspended,
            "61 min of failure in all, across the restart"
        );
        p.on_success();
        assert_eq!(p.health(), Health::Active);
        p.on_failure(Instant::now(), None);
        assert_eq!(
            p.health(),
            Health::Failing,
            "a success clears the old clock"
        );
        assert!(policy(10, 60, 3600).resumed(None).failing_since().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_taking_over_continues_the_shared_failure_and_suspension() {
        let since = now_ms() - 3_000_000;
        let mut p = policy(10, 60, 3600);
        p.adopt(crate::queue::SharedHealth {
            health: Health::Suspended,
            failing_since_ms: Some(since),
        });
        assert_eq!(p.health(), Health::Suspended);
        assert_eq!(p.batch_size(500), 1, "still probing with one row");
        assert_eq!(
            p.failing_since_ms(),
            Some(since),
            "the same instant, exactly"
        );
        p.on_failure(Instant::now(), None);
        assert_eq!(p.failing_since_ms(), Some(since));
        p.adopt(crate::queue::SharedHealth {
            health: Health::Active,
            failing_since_ms: None,
        });
        assert_eq!((p.health(), p.failing_since_ms()), (Health::Active, None));
    }

    #[tokio::test(start_paused = true)]
    async fn failing_backs_off_then_suspends_after_continuous_failure_then_recovers() {
        // retry from 10 s up to 10 min; suspend after 8 h, as the defaults of seed 001.
        let mut p = policy(10, 600, 8 * 3600);
        assert_eq!(p.health(), Health::Active);
        let mut waited = Duration::ZERO;
        let mut delays = vec![];
        while p.health() != Health::Suspended {
            let d = p.on_failure(Instant::now(), None);
            delays.push(d);
            assert!(
                d <= Duration::from_secs(600),
                "backoff is capped at retry_max_interval"
            );
            tokio::time::advance(d).await;
            waited += d;
            assert!(
                waited < Duration::from_secs(9 * 3600),
                "suspends after about suspend_after"
            );
        }
        assert_eq!(
            delays[0].as_secs() / 5,
            1,
            "first retry after 5-10 s: {:?}",
            delays[0]
        );
        assert!(waited >= Duration::from_secs(8 * 3600));
        assert_eq!(
            p.batch_size(300),
            1,
            "a suspended pipeline probes with one small run"
        );
        assert_eq!(
            p.on_failure(Instant::now(), None),
            Duration::from_secs(600),
            "probes once per retry_max_interval"
        );
        assert_eq!(p.health(), Health::Suspended);
        p.on_success();
        assert_eq!(p.health(), Health::Active);
        assert_eq!(p.batch_size(300), 300);
        assert!(p.failing_since().is_none());
        let d = p.on_failure(Instant::now(), None);
        assert!(
            d <= Duration::from_secs(10),
            "backoff starts over after a success: {d:?}"
        );
        assert_eq!(p.health(), Health::Failing);
    }

    #[tokio::test]
    async fn a_worker_that_panics_is_logged_and_reported_stopped() {
        let stopped = WorkerError::default();
        let task = tokio::spawn(async { panic!("boom") });
        supervise(task, CancellationToken::new(), stopped.clone()).await;
        let why = stopped
            .lock()
            .unwrap()
            .clone()
            .expect("recorded as stopped");
        assert!(why.contains("panicked: boom"), "{why}");

        let ended = WorkerError::default();
        supervise(
            tokio::spawn(async {}),
            CancellationToken::new(),
            ended.clone(),
        )
        .await;
        assert!(
            ended.lock().unwrap().is_some(),
            "an early end is a stop too"
        );

        let stop = CancellationToken::new();
        stop.cancel();
        let at_shutdown = WorkerError::default();
        supervise(tokio::spawn(async {}), stop, at_shutdown.clone()).await;
        assert!(
            at_shutdown.lock().unwrap().is_none(),
            "shutdown is not a failure"
        );
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

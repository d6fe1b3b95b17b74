//! The one place that knows every component: builds queues and pipelines from the config,
//! binds the listeners, starts the scheduler (and the emulator when configured), and runs the
//! shutdown protocol.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::admin::{self, AdminState, Readiness};
use crate::config::{Config, EmulatorSettings, QueueConfig};
use crate::emulator::{Emulator, EmulatorConfig};
use crate::ingest::{self, IngestState};
use crate::listener;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::queue::Queue;
use crate::queue::disk::{DiskSpool, DiskSpoolConfig};
use crate::queue::memory::MemoryQueue;
use crate::schedule::{ControlError, RunReport, Scheduler, SchedulerHandle};
use crate::sink::Sink;
use crate::sink::budget::Budgets;
use crate::sink::oauth::Tokens;

/// A running weir.
pub struct App {
    ingest_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    readiness: Readiness,
    metrics: Arc<Metrics>,
    emulator_addr: Option<SocketAddr>,
    /// The in-process emulator; stopped after the deliveries to it.
    emulator: Option<(TaskTracker, CancellationToken)>,
    /// The admin listener; stopped last, so /readyz answers 503 and /metrics stays
    /// scrapeable while weir drains.
    admin: Option<(TaskTracker, CancellationToken)>,
    pipelines: Vec<Arc<Pipeline>>,
    /// Cancelled first at shutdown: ingest answers 503 from then on.
    stopping: CancellationToken,
    /// Cancelled once in-flight requests are done: stops the listener tasks.
    stop_servers: CancellationToken,
    /// Cancelled after the listeners stopped: workers finish their run and exit.
    stop_workers: CancellationToken,
    /// The listener tasks.
    servers: TaskTracker,
    /// The pipeline workers.
    workers: TaskTracker,
    scheduler: Scheduler,
    runs: SchedulerHandle,
    config: Config,
}

impl App {
    /// Builds everything and binds the listeners. Port 0 binds a free port (tests).
    pub async fn start(config: Config) -> anyhow::Result<App> {
        let mut pipelines = Vec::new();
        for p in &config.pipelines {
            let queue = open_queue(p.queue_capacity, &p.queue)
                .await
                .with_context(|| format!("opening the queue of pipeline {}", p.name))?;
            let pipeline = Pipeline::new(p.clone(), queue);
            pipeline.load_state().with_context(|| {
                format!(
                    "reading the state of pipeline {} in {}",
                    p.name,
                    p.state_dir.display()
                )
            })?;
            if pipeline.is_paused() {
                tracing::warn!(
                    pipeline = p.name,
                    "pipeline is paused (persisted); it accepts rows but delivers none"
                );
            }
            pipelines.push(Arc::new(pipeline));
        }
        let stopping = CancellationToken::new();
        let stop_servers = CancellationToken::new();
        let stop_workers = CancellationToken::new();
        let servers = TaskTracker::new();
        let workers_tracker = TaskTracker::new();

        let (emulator_addr, emulator) = match &config.emulator {
            Some(settings) => {
                let (addr, handle) = start_emulator(settings).await?;
                (Some(addr), Some(handle))
            }
            None => (None, None),
        };

        let budgets = Arc::new(Budgets::persisted(config.data_dir.join("job-budget")));
        let metrics = Arc::new(Metrics::new(pipelines.clone(), budgets.clone()));
        let tokens = Tokens::default();
        let mut workers = Vec::new();
        for p in &pipelines {
            let sink = Sink::new(
                &p.config,
                config.celonis,
                &budgets,
                &tokens,
                metrics.clone(),
            )
            .with_context(|| format!("building the sink of pipeline {}", p.name()))?;
            workers.push((p.clone(), Arc::new(sink)));
        }
        let (scheduler, runs) = Scheduler::start(
            workers,
            metrics.clone(),
            &workers_tracker,
            stop_workers.clone(),
        )
        .await
        .context("starting the scheduler")?;

        let readiness = Readiness::default();
        let (admin_addr, admin) = match &config.admin {
            Some(a) => {
                let listener = TcpListener::bind(a.listen)
                    .await
                    .with_context(|| format!("binding admin.listen {}", a.listen))?;
                let addr = listener.local_addr()?;
                let state = AdminState::new(
                    &pipelines,
                    runs.clone(),
                    a.tokens.clone(),
                    metrics.clone(),
                    readiness.clone(),
                );
                let router = admin::router(state);
                let (tracker, stop) = (TaskTracker::new(), CancellationToken::new());
                let token = stop.clone();
                tracker.spawn(async move {
                    let served = axum::serve(listener, router)
                        .with_graceful_shutdown(async move { token.cancelled().await })
                        .await;
                    if let Err(e) = served {
                        tracing::error!(error = %e, "admin listener failed");
                    }
                });
                tracing::info!(listen = %addr, "admin api started");
                (Some(addr), Some((tracker, stop)))
            }
            None => (None, None),
        };

        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding server.listen {}", config.server.listen))?;
        let ingest_addr = listener.local_addr()?;
        let state = IngestState::new(
            &pipelines,
            config.server.max_body_bytes,
            config.server.limits.clone(),
            stopping.clone(),
            metrics.clone(),
        );
        let router = ingest::router(state);
        let settings = listener::Settings::from_limits(&config.server.limits)?;
        let scheme = if settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        servers.spawn(
            listener::serve(listener, router, settings, stop_servers.clone())
                .instrument(tracing::info_span!("ingest listener")),
        );
        readiness.set(true);
        tracing::info!(listen = %ingest_addr, scheme, pipelines = pipelines.len(), "weir started");
        Ok(App {
            ingest_addr,
            admin_addr,
            admin,
            readiness,
            metrics,
            emulator_addr,
            emulator,
            pipelines,
            stopping,
            stop_servers,
            stop_workers,
            servers,
            workers: workers_tracker,
            scheduler,
            runs,
            config,
        })
    }

    pub fn ingest_addr(&self) -> SocketAddr {
        self.ingest_addr
    }

    /// Where the admin API listens, when `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Where the in-process emulator listens, when `[emulator]` is configured.
    pub fn emulator_addr(&self) -> Option<SocketAddr> {
        self.emulator_addr
    }

    pub fn pipeline(&self, name: &str) -> Option<&Arc<Pipeline>> {
        self.pipelines.iter().find(|p| p.name() == name)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs a delivery of `pipeline` now and returns its report.
    pub async fn flush(&self, pipeline: &str) -> Result<RunReport, ControlError> {
        self.runs.flush(pipeline).await
    }

    /// Handle for asking for runs and reading their reports.
    pub fn runs(&self) -> &SchedulerHandle {
        &self.runs
    }

    /// The shutdown protocol: refuse new rows (503), let in-flight requests finish, stop the
    /// ticks, let a running delivery finish, sync the queues — all within `shutdown_grace`.
    pub async fn shutdown(self) {
        let grace = self.config.server.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        self.readiness.set(false);
        self.stopping.cancel();
        self.stop_servers.cancel();
        self.servers.close();
        if tokio::time::timeout_at(deadline, self.servers.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?grace, "requests still running at the end of the grace period");
        }
        self.scheduler.stop().await;
        self.stop_workers.cancel();
        self.workers.close();
        if tokio::time::timeout_at(deadline, self.workers.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?grace, "delivery still running at the end of the grace period");
        }
        stop_task(self.emulator).await;
        for p in &self.pipelines {
            if let Err(e) = p.queue.sync().await {
                tracing::error!(pipeline = p.name(), error = %e, "queue sync at shutdown failed");
            }
        }
        stop_task(self.admin).await;
        tracing::info!("weir stopped");
    }
}

/// Stops a listener started with its own tracker and token, and waits for it.
async fn stop_task(task: Option<(TaskTracker, CancellationToken)>) {
    if let Some((tracker, stop)) = task {
        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }
}

async fn open_queue(capacity_rows: u64, cfg: &QueueConfig) -> anyhow::Result<Arc<dyn Queue>> {
    match cfg {
        QueueConfig::Memory { max_bytes } => {
            Ok(Arc::new(MemoryQueue::new(capacity_rows, *max_bytes)))
        }
        QueueConfig::Disk {
            dir,
            max_bytes,
            segment_bytes,
            retention,
        } => {
            let spool = DiskSpool::open(DiskSpoolConfig {
                dir: dir.clone(),
                capacity_rows,
                max_bytes: *max_bytes,
                segment_bytes: *segment_bytes,
                retention: *retention,
            })
            .await?;
            let r = spool.recovery();
            tracing::info!(
                dir = %dir.display(),
                queued_rows = r.queued_rows,
                segments = r.segments,
                quarantined = r.quarantined,
                truncated_bytes = r.truncated_bytes,
                cursor_missing = r.cursor_missing,
                "disk spool recovered"
            );
            Ok(Arc::new(spool))
        }
    }
}

async fn start_emulator(
    settings: &EmulatorSettings,
) -> anyhow::Result<(SocketAddr, (TaskTracker, CancellationToken))> {
    if let Some(dir) = settings.database.as_ref().and_then(|d| d.parent())
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| {
            format!("creating the emulator database directory {}", dir.display())
        })?;
    }
    let emulator = Emulator::new(EmulatorConfig {
        app_keys: settings
            .app_key
            .iter()
            .map(|k| k.expose().to_owned())
            .collect(),
        database: settings.database.clone(),
        oauth_clients: settings
            .oauth_clients
            .iter()
            .map(|(id, secret)| (id.clone(), secret.expose().to_owned()))
            .collect(),
        token_ttl: settings.token_ttl,
        ..EmulatorConfig::default()
    })
    .context("starting the emulator")?;
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding emulator.listen {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let (tracker, stop) = (TaskTracker::new(), CancellationToken::new());
    let token = stop.clone();
    tracker.spawn(async move {
        if let Err(e) = emulator.serve(listener, token).await {
            tracing::error!(error = %e, "emulator listener failed");
        }
    });
    tracing::info!(listen = %addr, "data push emulator started");
    Ok((addr, (tracker, stop)))
}

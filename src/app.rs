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

use crate::config::{Config, EmulatorSettings, QueueConfig};
use crate::emulator::{Emulator, EmulatorConfig};
use crate::ingest::{self, IngestState};
use crate::listener;
use crate::pipeline::Pipeline;
use crate::queue::Queue;
use crate::queue::memory::MemoryQueue;
use crate::schedule::{RunReport, Scheduler, SchedulerHandle};
use crate::sink::Sink;
use crate::sink::budget::Budgets;

/// A running weir.
pub struct App {
    ingest_addr: SocketAddr,
    emulator_addr: Option<SocketAddr>,
    /// The in-process emulator; stopped last, after the deliveries to it.
    emulator: Option<(TaskTracker, CancellationToken)>,
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
            pipelines.push(Arc::new(Pipeline::new(p.clone(), queue)));
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

        let budgets = Budgets::default();
        let mut workers = Vec::new();
        for p in &pipelines {
            let sink = Sink::new(&p.config, config.celonis, &budgets)
                .with_context(|| format!("building the sink of pipeline {}", p.name()))?;
            workers.push((p.clone(), Arc::new(sink)));
        }
        let (scheduler, runs) = Scheduler::start(workers, &workers_tracker, stop_workers.clone())
            .await
            .context("starting the scheduler")?;

        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding server.listen {}", config.server.listen))?;
        let ingest_addr = listener.local_addr()?;
        let state = IngestState::new(
            &pipelines,
            config.server.max_body_bytes,
            config.server.limits.clone(),
            stopping.clone(),
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
        tracing::info!(listen = %ingest_addr, scheme, pipelines = pipelines.len(), "weir started");
        Ok(App {
            ingest_addr,
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
    pub async fn flush(&self, pipeline: &str) -> Option<RunReport> {
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
        if let Some((tracker, stop)) = self.emulator {
            stop.cancel();
            tracker.close();
            tracker.wait().await;
        }
        for p in &self.pipelines {
            if let Err(e) = p.queue.sync().await {
                tracing::error!(pipeline = p.name(), error = %e, "queue sync at shutdown failed");
            }
        }
        tracing::info!("weir stopped");
    }
}

async fn open_queue(capacity_rows: u64, cfg: &QueueConfig) -> anyhow::Result<Arc<dyn Queue>> {
    match cfg {
        QueueConfig::Memory { max_bytes } => {
            Ok(Arc::new(MemoryQueue::new(capacity_rows, *max_bytes)))
        }
        QueueConfig::Disk { .. } => anyhow::bail!("the disk spool is not available in this build"),
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

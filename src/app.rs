//! The one place that knows every component: builds queues and pipelines from the config,
//! binds the listeners, starts the scheduler (and the emulator when configured), and runs the
//! shutdown protocol.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::admin::{self, AdminState, Readiness};
use crate::collector::Collector;
use crate::config::{Config, EmulatorSettings, QueueConfig};
use crate::dead_letter;
use crate::emulator::{self, EmulatorConfig};
use crate::ingest::{self, IngestState};
use crate::listener;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::preview::Preview;
use crate::queue::Queue;
use crate::queue::disk::{DiskSpool, DiskSpoolConfig};
use crate::queue::memory::MemoryQueue;
use crate::schedule::{ControlError, RunReport, Scheduler, SchedulerHandle};
use crate::shutdown::Stage;
use crate::sink::Sink;
use crate::sink::budget::Budgets;
use crate::sink::oauth::Tokens;
use crate::sink::preview::Previewer;
use crate::sources;

/// A running weir.
pub struct App {
    ingest_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    readiness: Readiness,
    metrics: Arc<Metrics>,
    emulator_addr: Option<SocketAddr>,
    pipelines: Vec<Arc<Pipeline>>,
    /// The ingest listener. Its token also makes ingest answer 503 `shutting_down`.
    ingest: Stage,
    /// The pipeline workers: each finishes the run it is in and exits.
    workers: Stage,
    /// The in-process emulator; stopped after the deliveries to it.
    emulator: Stage,
    /// The admin listener; stopped last, so /readyz answers 503 and /metrics stays
    /// scrapeable while weir drains.
    admin: Stage,
    scheduler: Scheduler,
    runs: SchedulerHandle,
    config: Config,
    /// The ticks of `[[sources]]`; the sources themselves run on the ingest stage.
    sources: Option<tokio_cron_scheduler::JobScheduler>,
}

impl App {
    /// Builds everything and binds the listeners. Port 0 binds a free port (tests).
    pub async fn start(config: Config) -> anyhow::Result<App> {
        let mut pipelines = Vec::new();
        for p in &config.pipelines {
            let queue = open_queue(&p.name, p.queue_capacity, &p.queue)
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
            if let Err(e) = dead_letter::import_local_file(&pipeline).await {
                tracing::error!(pipeline = p.name, error = %e, "this replica's dead-letter file could not be moved to the shared dead letters; it stays where it is");
            }
            pipelines.push(Arc::new(pipeline));
        }
        let (ingest, workers, emulator, admin) =
            (Stage::new(), Stage::new(), Stage::new(), Stage::new());

        let emulator_addr = match &config.emulator {
            Some(settings) => Some(start_emulator(settings, &emulator).await?),
            None => None,
        };

        let budgets = Arc::new(Budgets::persisted(config.data_dir.join("job-budget")));
        // A team pushed to from a pipeline queued on NATS spends one budget across replicas.
        for p in &pipelines {
            if let (crate::config::SinkConfig::Celonis(c), Some(store)) =
                (&p.config.sink, p.queue().shared_store())
            {
                budgets.share(&c.team_key(), store);
            }
        }
        let metrics = Arc::new(Metrics::new(Box::new(Collector::new(
            pipelines.clone(),
            budgets.clone(),
        ))));
        let tokens = Tokens::default();
        let mut sinks = Vec::new();
        let mut previews = ingest::Previews::new();
        for p in &pipelines {
            let sink = Sink::new(
                &p.config,
                config.celonis,
                &budgets,
                &tokens,
                metrics.clone(),
                &config.data_dir,
            )
            .with_context(|| format!("building the sink of pipeline {}", p.name()))?;
            let preview = Previewer::new(&p.config, sink.columns().clone());
            previews.insert(p.name().to_owned(), Arc::new(preview) as Arc<dyn Preview>);
            sinks.push((p.clone(), Arc::new(sink)));
        }
        let (scheduler, runs) =
            Scheduler::start(sinks, metrics.clone(), workers.tracker(), workers.token())
                .await
                .context("starting the scheduler")?;

        let readiness = Readiness::default();
        let admin_addr = match &config.admin {
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
                let tryout = Tryout {
                    pipelines: config
                        .pipelines
                        .iter()
                        .map(|p| (p.name.clone(), p.clone()))
                        .collect(),
                    previews: previews.clone(),
                    limits: ingest::parse_limits(
                        &config.server.limits,
                        config.server.max_body_bytes,
                    ),
                    max_body_bytes: config.server.max_body_bytes,
                };
                let router = admin::router(state.with_tryout(Arc::new(tryout)));
                let settings = listener::Settings {
                    max_connections: a.max_connections,
                    header_read_timeout: a.header_read_timeout,
                    max_header_bytes: a.max_header_bytes,
                    tls: None,
                };
                admin.tracker().spawn(
                    listener::serve(listener, router, settings, admin.token())
                        .instrument(tracing::info_span!("admin listener")),
                );
                tracing::info!(listen = %addr, "admin api started");
                Some(addr)
            }
            None => None,
        };

        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding server.listen {}", config.server.listen))?;
        let ingest_addr = listener.local_addr()?;
        let state = IngestState::new(
            &pipelines,
            &previews,
            config.server.max_body_bytes,
            config.server.limits.clone(),
            ingest.token(),
            metrics.clone(),
        );
        let state = match start_fetches(&config, &pipelines, &tokens, &ingest)? {
            Some(fetcher) => state.with_fetches(fetcher),
            None => state,
        };
        let router = ingest::router(state);
        let settings = listener::Settings::from_limits(&config.server.limits)?;
        let scheme = if settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        ingest.tracker().spawn(
            listener::serve(listener, router, settings, ingest.token())
                .instrument(tracing::info_span!("ingest listener")),
        );
        let sources = start_sources(&config, &pipelines, &tokens, &metrics, &ingest).await?;
        readiness.set(true);
        tracing::info!(listen = %ingest_addr, scheme, pipelines = pipelines.len(), "weir started");
        Ok(App {
            ingest_addr,
            admin_addr,
            readiness,
            metrics,
            emulator_addr,
            pipelines,
            ingest,
            workers,
            emulator,
            admin,
            scheduler,
            runs,
            config,
            sources,
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

    /// The shutdown protocol (ARCHITECTURE.md): not ready → ingest answers 503 and its
    /// listener lets in-flight requests finish → ticks stop → workers finish their run →
    /// the emulator stops → queues are synced → the admin listener stops last. The requests
    /// and deliveries get `shutdown_grace` together.
    pub async fn shutdown(self) {
        let grace = self.config.server.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        self.readiness.set(false);
        if let Some(mut cron) = self.sources
            && let Err(e) = cron.shutdown().await
        {
            tracing::warn!(error = %e, "stopping the source ticks failed");
        }
        if !self.ingest.stop_within(deadline).await {
            tracing::warn!(grace = ?grace, "requests still running at the end of the grace period");
        }
        self.scheduler.stop().await;
        if !self.workers.stop_within(deadline).await {
            tracing::warn!(grace = ?grace, "delivery still running at the end of the grace period");
        }
        self.emulator.stop().await;
        for p in &self.pipelines {
            if let Err(e) = p.queue().sync().await {
                tracing::error!(pipeline = p.name(), error = %e, "queue sync at shutdown failed");
            }
        }
        self.admin.stop().await;
        tracing::info!("weir stopped");
    }
}

async fn open_queue(
    name: &str,
    capacity_rows: u64,
    cfg: &QueueConfig,
) -> anyhow::Result<Arc<dyn Queue>> {
    match cfg {
        QueueConfig::Nats(n) => {
            let q = match crate::queue::nats::NatsQueue::open(name, capacity_rows, n).await {
                Ok(q) => Arc::new(q),
                Err(e) if n.wait_for_nats => {
                    return Ok(crate::queue::waiting::WaitingQueue::start(
                        name,
                        capacity_rows,
                        n,
                        &e,
                    ));
                }
                Err(e) => return Err(e),
            };
            q.start_background();
            tracing::info!(url = %n.url, stream = %n.stream, replicas = n.replicas, "NATS queue opened");
            Ok(q)
        }
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

/// Starts one poller per `[[sources]]` entry on the ingest stage: sources feed queues as
/// ingest does and stop with it.
async fn start_sources(
    config: &Config,
    pipelines: &[Arc<Pipeline>],
    tokens: &Tokens,
    metrics: &Arc<Metrics>,
    stage: &Stage,
) -> anyhow::Result<Option<tokio_cron_scheduler::JobScheduler>> {
    if config.sources.is_empty() {
        return Ok(None);
    }
    let limits = ingest::parse_limits(&config.server.limits, config.server.max_body_bytes);
    let mut pollers = Vec::new();
    for (i, s) in config.sources.iter().enumerate() {
        let pipeline = pipelines
            .iter()
            .find(|p| p.name() == s.pipeline)
            .with_context(|| format!("sources[{i}].pipeline: no pipeline is named {}", s.pipeline))?
            .clone();
        let http = crate::sink::client_builder(s.timeout, s.proxy.as_ref())
            .and_then(|b| b.redirect(sources::redirect_policy()).build())
            .with_context(|| format!("building the HTTP client of sources[{i}]"))?;
        let token = match &s.auth {
            crate::config::HttpAuth::OAuth2(o) => {
                let source = tokens
                    .source(o, s.timeout, s.proxy.as_ref())
                    .with_context(|| format!("building the token client of sources[{i}]"))?;
                Some(Arc::new(SourceToken(source)) as Arc<dyn sources::BearerToken>)
            }
            _ => None,
        };
        pollers.push(sources::Poller {
            config: s.clone(),
            pipeline,
            http,
            token,
            limits,
            index: i,
            metrics: metrics.clone(),
        });
    }
    let cron = sources::start(pollers, stage.tracker(), stage.token())
        .await
        .context("starting the sources")?;
    tracing::info!(sources = config.sources.len(), "sources started");
    Ok(Some(cron))
}

/// The downloads of pipelines with `[pipelines.fetch]`: resumes the pending ones and starts
/// their worker on the ingest stage (they feed queues as ingest does and stop with it).
fn start_fetches(
    config: &Config,
    pipelines: &[Arc<Pipeline>],
    tokens: &Tokens,
    stage: &Stage,
) -> anyhow::Result<Option<Arc<sources::fetch::Fetcher>>> {
    let limits = ingest::parse_limits(&config.server.limits, config.server.max_body_bytes);
    let mut fetches = Vec::new();
    for p in pipelines {
        let Some(f) = &p.config.fetch else { continue };
        let http = crate::sink::client_builder(f.timeout, f.proxy.as_ref())
            .and_then(|b| b.redirect(sources::redirect_policy()).build())
            .with_context(|| {
                format!("building the HTTP client of pipeline {}'s fetch", p.name())
            })?;
        let token = match &f.auth {
            crate::config::HttpAuth::OAuth2(o) => {
                let source = tokens
                    .source(o, f.timeout, f.proxy.as_ref())
                    .with_context(|| {
                        format!("building the token client of pipeline {}'s fetch", p.name())
                    })?;
                Some(Arc::new(SourceToken(source)) as Arc<dyn sources::BearerToken>)
            }
            _ => None,
        };
        fetches.push(sources::fetch::Fetch {
            pipeline: p.clone(),
            config: f.clone(),
            http,
            token,
            limits,
        });
    }
    if fetches.is_empty() {
        return Ok(None);
    }
    let fetcher = Arc::new(sources::fetch::Fetcher::open(fetches, &config.data_dir)?);
    stage.tracker().spawn(
        fetcher
            .clone()
            .run(stage.token())
            .instrument(tracing::info_span!("fetches")),
    );
    Ok(Some(fetcher))
}

/// A source's OAuth token, from the token cache the sinks share.
struct SourceToken(Arc<crate::sink::oauth::TokenSource>);

impl sources::BearerToken for SourceToken {
    fn token(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + '_>>
    {
        Box::pin(async move {
            self.0
                .token()
                .await
                .map(|t| t.expose().to_owned())
                .map_err(|e| e.to_string())
        })
    }
}

/// Starts the in-process emulator of `[emulator]` on `stage`.
async fn start_emulator(settings: &EmulatorSettings, stage: &Stage) -> anyhow::Result<SocketAddr> {
    let config = EmulatorConfig {
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
        pools: settings.pools.clone(),
        finops: settings.finops,
        ..EmulatorConfig::default()
    };
    emulator::start(config, settings.listen, stage.tracker(), stage.token())
        .await
        .context("starting the in-process emulator of [emulator]")
}

/// The admin API's dry runs, through ingest's, with the sink's previews.
struct Tryout {
    pipelines: std::collections::HashMap<String, crate::config::PipelineConfig>,
    previews: ingest::Previews,
    limits: ingest::parse::Limits,
    max_body_bytes: usize,
}

impl admin::Tryout for Tryout {
    fn dry_run(&self, pipeline: &str, body: &[u8], content_type: &str) -> axum::response::Response {
        use axum::response::IntoResponse;
        let (Some(config), Some(preview)) =
            (self.pipelines.get(pipeline), self.previews.get(pipeline))
        else {
            return ingest::IngestError::UnknownPipeline(pipeline.to_owned()).into_response();
        };
        match ingest::dry_run::dry_run(
            config,
            body,
            None,
            content_type,
            &self.limits,
            preview.as_ref(),
        ) {
            Ok(d) => (axum::http::StatusCode::OK, axum::Json(d)).into_response(),
            Err(e) => e.into_response(),
        }
    }

    fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }
}

/// `weir check --sample FILE -p NAME`: a dry run of the file's rows against a pipeline,
/// offline, as `?dry_run=true` answers it (the JSON, pretty). A `.ndjson` or `.jsonl` file is
/// NDJSON, any other JSON. The body limits are the server's.
pub fn dry_run_sample(config: &Config, pipeline: &str, sample: &Path) -> anyhow::Result<String> {
    let p = config.pipeline(pipeline).with_context(|| {
        let names: Vec<&str> = config.pipelines.iter().map(|p| p.name.as_str()).collect();
        format!(
            "no pipeline is named \"{pipeline}\" (pipelines: {})",
            names.join(", ")
        )
    })?;
    let body = std::fs::read(sample)
        .with_context(|| format!("reading the sample {}", sample.display()))?;
    if body.len() > config.server.max_body_bytes {
        anyhow::bail!(
            "the sample {} is larger than server.max_body_bytes ({} bytes)",
            sample.display(),
            config.server.max_body_bytes
        );
    }
    let ndjson = sample
        .extension()
        .is_some_and(|e| e == "ndjson" || e == "jsonl");
    let content_type = if ndjson {
        "application/x-ndjson"
    } else {
        "application/json"
    };
    let preview = Previewer::offline(p)
        .with_context(|| format!("reading the known columns of pipeline {pipeline}"))?;
    let limits = ingest::parse_limits(&config.server.limits, config.server.max_body_bytes);
    let dry = ingest::dry_run::dry_run(p, &body, None, content_type, &limits, &preview)
        .map_err(|e| anyhow::anyhow!("{}: {e}", e.code()))?;
    serde_json::to_string_pretty(&dry).context("rendering the dry run")
}

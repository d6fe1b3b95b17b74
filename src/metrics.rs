//! Every metric weir exports, declared here and nowhere else, in the Prometheus/OpenMetrics
//! text format. Names follow `weir_<subsystem>_<name>_<unit>[_total]`; label values are
//! bounded (pipeline names from the config, fixed codes, HTTP statuses).
//!
//! This module is a leaf: it imports nothing of weir and takes plain values. Events with a
//! distribution (run durations) or labels not known up front (sink calls) are recorded when
//! they happen, into the families of [`Metrics`]. Facts the admin API also shows (counters,
//! queue stats, states, budgets) are read at scrape time by a [`Scrape`] source, which the
//! application wires in (`collector.rs`), and rendered here as a [`Snapshot`], so each fact
//! is counted once.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    pub pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// The source's index in `[[sources]]`.
    pub source: String,
    pub pipeline: String,
    /// acked, empty or failed
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkCallLabels {
    pub pipeline: String,
    /// create, upload, execute, poll, delete, token, request
    pub endpoint: &'static str,
    /// The HTTP status, or `error` when no response came.
    pub status: String,
}

/// Reads the scrape-time facts. Implemented where pipelines, queues and budgets are known.
pub trait Scrape: Send + Sync + std::fmt::Debug {
    fn snapshot(&self) -> Snapshot;
}

/// The scrape-time facts, as plain values.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    pub pipelines: Vec<PipelineSample>,
    /// Job submissions left this UTC hour, per team.
    pub budgets: Vec<(String, u32)>,
}

/// One pipeline's scrape-time facts.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PipelineSample {
    pub pipeline: String,
    /// Rows queued.
    pub accepted: u64,
    /// Rows dropped by the schema or filter.
    pub ignored: u64,
    /// Rows of requests refused as a whole.
    pub rejected: u64,
    /// Rows of replayed deliveries, answered again but not queued twice.
    pub duplicate: u64,
    /// Requests refused, by error code.
    pub refused: Vec<(&'static str, u64)>,
    /// Failed sender checks by reason; `None` when the pipeline checks no sender.
    pub auth_failures: Option<Vec<(&'static str, u64)>>,
    pub delivered: u64,
    pub runs_ok: u64,
    pub runs_failed: u64,
    pub dead_lettered: u64,
    /// Rows isolated by bisection after a permanent error (and dead-lettered).
    pub rows_isolated: u64,
    /// Extra jobs spent isolating bad rows.
    pub isolation_jobs: u64,
    pub removed: u64,
    pub queue_rows: u64,
    pub queue_bytes: u64,
    pub queue_capacity_rows: u64,
    pub queue_oldest_age_seconds: f64,
    /// Every state the pipeline can be in, with `true` for the current one.
    pub states: Vec<(&'static str, bool)>,
    /// fsync count and total time, for queues that fsync.
    pub fsyncs: Option<(u64, f64)>,
}

/// The metrics recorded as events happen, plus the registry that renders everything.
pub struct Metrics {
    registry: Registry,
    pub run_duration: Family<PipelineLabels, Histogram>,
    pub sink_calls: Family<SinkCallLabels, Counter>,
    pub batches_cut: Family<PipelineLabels, Counter>,
    pub unknown_pipeline_requests: Counter,
    pub source_polls: Family<SourceLabels, Counter>,
}

impl Metrics {
    /// The event families, plus `source` read at every scrape.
    pub fn new(source: Box<dyn Scrape>) -> Metrics {
        let mut registry = Registry::default();
        let run_duration = Family::<PipelineLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.05, 2.0, 14))
        });
        registry.register_with_unit(
            "weir_delivery_run_duration",
            "Duration of delivery runs that made a job",
            Unit::Seconds,
            run_duration.clone(),
        );
        let sink_calls = Family::<SinkCallLabels, Counter>::default();
        registry.register(
            "weir_sink_requests",
            "HTTP calls to the sink (Data Push, continuous or HTTP API) by endpoint and status",
            sink_calls.clone(),
        );
        let batches_cut = Family::<PipelineLabels, Counter>::default();
        registry.register(
            "weir_delivery_batches_cut",
            "Runs that delivered only a prefix of their batch because it had more than max_columns distinct fields",
            batches_cut.clone(),
        );
        let unknown_pipeline_requests = Counter::default();
        registry.register(
            "weir_ingest_unknown_pipeline_requests",
            "Requests to /hooks/{name} for a pipeline that does not exist",
            unknown_pipeline_requests.clone(),
        );
        let source_polls = Family::<SourceLabels, Counter>::default();
        registry.register(
            "weir_source_polls",
            "Polls of a [[sources]] dequeue API by outcome: acked (a package queued and acked), empty (nothing to dequeue), failed (not acked: handed out again)",
            source_polls.clone(),
        );
        registry.register_collector(Box::new(ScrapeCollector { source }));
        Metrics {
            registry,
            run_duration,
            sink_calls,
            batches_cut,
            unknown_pipeline_requests,
            source_polls,
        }
    }

    /// Counts one poll of source `index` (its rows are counted in the pipeline's `accepted`).
    pub fn source_poll(&self, index: usize, pipeline: &str, outcome: &'static str) {
        self.source_polls
            .get_or_create(&SourceLabels {
                source: index.to_string(),
                pipeline: pipeline.to_owned(),
                outcome,
            })
            .inc();
    }

    /// The whole exposition, in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// Records one HTTP call of a pipeline's sink.
    pub fn sink_call(&self, pipeline: &str, endpoint: &'static str, status: Option<u16>) {
        self.sink_calls
            .get_or_create(&SinkCallLabels {
                pipeline: pipeline.to_owned(),
                endpoint,
                status: status.map_or_else(|| "error".to_owned(), |s| s.to_string()),
            })
            .inc();
    }
}

impl Metrics {
    /// Counts a run whose batch was cut to fit `max_columns`.
    pub fn batch_cut(&self, pipeline: &str) {
        self.batches_cut
            .get_or_create(&PipelineLabels {
                pipeline: pipeline.to_owned(),
            })
            .inc();
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Renders a [`Scrape`] source's snapshot at every scrape.
#[derive(Debug)]
struct ScrapeCollector {
    source: Box<dyn Scrape>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    pipeline: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    pipeline: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    pipeline: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TeamLabels {
    team: String,
}

/// Encodes one metric family with one value per label set.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    values: Vec<(L, M)>,
) -> Result<(), std::fmt::Error> {
    let Some(first) = values.first() else {
        return Ok(());
    };
    let metric_type = first.1.metric_type();
    let mut family = encoder.encode_descriptor(name, help, unit, metric_type)?;
    for (labels, metric) in &values {
        metric.encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.source.snapshot();
        let label = |p: &PipelineSample| PipelineLabels {
            pipeline: p.pipeline.clone(),
        };
        let outcome = |p: &PipelineSample, outcome: &'static str, n: u64| {
            (
                OutcomeLabels {
                    pipeline: p.pipeline.clone(),
                    outcome,
                },
                ConstCounter::new(n),
            )
        };
        let reason = |p: &PipelineSample, reason: &'static str, n: u64| {
            (
                ReasonLabels {
                    pipeline: p.pipeline.clone(),
                    reason,
                },
                ConstCounter::new(n),
            )
        };
        let mut rows = Vec::new();
        let mut refused = Vec::new();
        let mut delivered = Vec::new();
        let mut runs = Vec::new();
        let mut dead = Vec::new();
        let mut isolated = Vec::new();
        let mut isolation_jobs = Vec::new();
        let mut removed = Vec::new();
        let mut q_rows = Vec::new();
        let mut q_bytes = Vec::new();
        let mut q_cap = Vec::new();
        let mut q_age = Vec::new();
        let mut states = Vec::new();
        let mut fsyncs = Vec::new();
        let mut fsync_secs = Vec::new();
        let mut auth = Vec::new();
        for p in &snapshot.pipelines {
            rows.push(outcome(p, "accepted", p.accepted));
            rows.push(outcome(p, "ignored", p.ignored));
            rows.push(outcome(p, "rejected", p.rejected));
            rows.push(outcome(p, "duplicate", p.duplicate));
            for (r, n) in p.auth_failures.iter().flatten() {
                auth.push(reason(p, r, *n));
            }
            for (r, n) in &p.refused {
                refused.push(reason(p, r, *n));
            }
            delivered.push((label(p), ConstCounter::new(p.delivered)));
            runs.push(outcome(p, "ok", p.runs_ok));
            runs.push(outcome(p, "failed", p.runs_failed));
            dead.push((label(p), ConstCounter::new(p.dead_lettered)));
            isolated.push((label(p), ConstCounter::new(p.rows_isolated)));
            isolation_jobs.push((label(p), ConstCounter::new(p.isolation_jobs)));
            removed.push((label(p), ConstCounter::new(p.removed)));
            q_rows.push((label(p), ConstGauge::new(p.queue_rows as i64)));
            q_bytes.push((label(p), ConstGauge::new(p.queue_bytes as i64)));
            q_cap.push((label(p), ConstGauge::new(p.queue_capacity_rows as i64)));
            q_age.push((label(p), ConstGauge::new(p.queue_oldest_age_seconds)));
            for (state, current) in &p.states {
                states.push((
                    StateLabels {
                        pipeline: p.pipeline.clone(),
                        state,
                    },
                    ConstGauge::new(i64::from(*current)),
                ));
            }
            if let Some((count, seconds)) = p.fsyncs {
                fsyncs.push((label(p), ConstCounter::new(count)));
                fsync_secs.push((label(p), ConstCounter::new(seconds)));
            }
        }
        family(
            &mut e,
            "weir_ingest_rows",
            "Rows by outcome: accepted (queued), ignored (schema or filter), rejected (request refused), duplicate (replayed delivery, not queued again)",
            None,
            rows,
        )?;
        family(
            &mut e,
            "weir_ingest_refused_requests",
            "Requests refused, by error code",
            None,
            refused,
        )?;
        family(
            &mut e,
            "weir_ingest_auth_failures",
            "Requests refused by the sender check, by reason",
            None,
            auth,
        )?;
        family(
            &mut e,
            "weir_delivery_rows",
            "Rows delivered and committed out of the queue",
            None,
            delivered,
        )?;
        family(
            &mut e,
            "weir_delivery_runs",
            "Delivery runs by outcome",
            None,
            runs,
        )?;
        family(
            &mut e,
            "weir_dead_letter_rows",
            "Rows moved to the dead-letter file after retention",
            None,
            dead,
        )?;
        family(
            &mut e,
            "weir_delivery_rows_isolated",
            "Rows that failed alone with a permanent error, moved to the dead-letter file",
            None,
            isolated,
        )?;
        family(
            &mut e,
            "weir_delivery_isolation_jobs",
            "Extra jobs spent isolating bad rows by bisection",
            None,
            isolation_jobs,
        )?;
        family(
            &mut e,
            "weir_queue_removed_rows",
            "Rows taken out by an operator (reconcile, purge)",
            None,
            removed,
        )?;
        family(&mut e, "weir_queue_rows", "Rows queued", None, q_rows)?;
        family(
            &mut e,
            "weir_queue",
            "Bytes queued",
            Some(&Unit::Bytes),
            q_bytes,
        )?;
        family(
            &mut e,
            "weir_queue_capacity_rows",
            "Rows the queue holds at most",
            None,
            q_cap,
        )?;
        family(
            &mut e,
            "weir_queue_oldest_age",
            "Age of the oldest queued row",
            Some(&Unit::Seconds),
            q_age,
        )?;
        family(
            &mut e,
            "weir_pipeline_state",
            "1 for the pipeline's current state",
            None,
            states,
        )?;
        family(
            &mut e,
            "weir_spool_fsyncs",
            "fsyncs done by the disk spool (each acknowledges a group of requests)",
            None,
            fsyncs,
        )?;
        family(
            &mut e,
            "weir_spool_fsync",
            "Time spent in fsync by the disk spool",
            Some(&Unit::Seconds),
            fsync_secs,
        )?;
        let budgets: Vec<_> = snapshot
            .budgets
            .into_iter()
            .map(|(team, left)| (TeamLabels { team }, ConstGauge::new(i64::from(left))))
            .collect();
        family(
            &mut e,
            "weir_celonis_job_budget_remaining",
            "Job submissions left this UTC hour, per team",
            None,
            budgets,
        )?;
        Ok(())
    }
}

/// Renders one line per sample for quick checks in tests: `name{labels} value`.
pub fn sample(exposition: &str, name_and_labels: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(name_and_labels)?;
        let value = rest.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

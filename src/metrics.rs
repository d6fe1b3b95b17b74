//! Every metric weir exports, declared here and nowhere else, in the Prometheus/OpenMetrics
//! text format. Names follow `weir_<subsystem>_<name>_<unit>[_total]`; label values are
//! bounded (pipeline names from the config, fixed codes, HTTP statuses).
//!
//! Counters that the admin API also shows live as atomics in `pipeline::Counters` and are
//! read at scrape time by [`PipelineCollector`], so each fact is counted once. Events with
//! a distribution (run durations) or labels not known up front (sink calls) are recorded
//! when they happen, into the families of [`Metrics`].

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ingest::auth::Failure;
use crate::pipeline::{Counters, Pipeline, State};
use crate::queue::now_ms;
use crate::sink::budget::Budgets;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    pub pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkCallLabels {
    pub pipeline: String,
    /// create, upload, execute, poll, delete, token, request
    pub endpoint: &'static str,
    /// The HTTP status, or `error` when no response came.
    pub status: String,
}

/// The metrics recorded as events happen, plus the registry that renders everything.
pub struct Metrics {
    registry: Registry,
    pub run_duration: Family<PipelineLabels, Histogram>,
    pub sink_calls: Family<SinkCallLabels, Counter>,
    pub batches_cut: Family<PipelineLabels, Counter>,
    pub unknown_pipeline_requests: Counter,
}

impl Metrics {
    pub fn new(pipelines: Vec<Arc<Pipeline>>, budgets: Arc<Budgets>) -> Metrics {
        let mut registry = Registry::default();
        let run_duration = Family::<PipelineLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.05, 2.0, 14))
        });
        registry.register_with_unit(
            "weir_delivery_run_duration",
            "Duration of delivery runs that made a job",
            prometheus_client::registry::Unit::Seconds,
            run_duration.clone(),
        );
        let sink_calls = Family::<SinkCallLabels, Counter>::default();
        registry.register(
            "weir_sink_requests",
            "HTTP calls to the sink (Data Push API) by endpoint and status",
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
        registry.register_collector(Box::new(PipelineCollector { pipelines, budgets }));
        Metrics {
            registry,
            run_duration,
            sink_calls,
            batches_cut,
            unknown_pipeline_requests,
        }
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

/// Reads queue stats, counters and budgets at scrape time.
#[derive(Debug)]
struct PipelineCollector {
    pipelines: Vec<Arc<Pipeline>>,
    budgets: Arc<Budgets>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RowLabels {
    pipeline: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
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
    unit: Option<&prometheus_client::registry::Unit>,
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

impl Collector for PipelineCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let seconds = prometheus_client::registry::Unit::Seconds;
        let bytes = prometheus_client::registry::Unit::Bytes;
        let label = |p: &Pipeline| PipelineLabels {
            pipeline: p.name().to_owned(),
        };
        let mut rows = Vec::new();
        let mut refused = Vec::new();
        let mut delivered = Vec::new();
        let mut runs = Vec::new();
        let mut dead = Vec::new();
        let mut removed = Vec::new();
        let mut q_rows = Vec::new();
        let mut q_bytes = Vec::new();
        let mut q_cap = Vec::new();
        let mut q_age = Vec::new();
        let mut states = Vec::new();
        let mut fsyncs = Vec::new();
        let mut fsync_secs = Vec::new();
        let mut auth = Vec::new();
        let now = now_ms();
        for p in &self.pipelines {
            let c = &p.counters;
            let name = p.name().to_owned();
            for (outcome, counter) in [
                ("accepted", &c.accepted),
                ("ignored", &c.ignored),
                ("rejected", &c.rejected),
            ] {
                rows.push((
                    RowLabels {
                        pipeline: name.clone(),
                        outcome,
                    },
                    ConstCounter::new(Counters::get(counter)),
                ));
            }
            if p.config.auth.is_some() {
                for f in Failure::ALL {
                    auth.push((
                        RefusedLabels {
                            pipeline: name.clone(),
                            reason: f.reason(),
                        },
                        ConstCounter::new(c.auth_failures.get(f)),
                    ));
                }
            }
            for (reason, n) in c.refused() {
                refused.push((
                    RefusedLabels {
                        pipeline: name.clone(),
                        reason,
                    },
                    ConstCounter::new(n),
                ));
            }
            delivered.push((label(p), ConstCounter::new(Counters::get(&c.delivered))));
            runs.push((
                RowLabels {
                    pipeline: name.clone(),
                    outcome: "ok",
                },
                ConstCounter::new(Counters::get(&c.runs_ok)),
            ));
            runs.push((
                RowLabels {
                    pipeline: name.clone(),
                    outcome: "failed",
                },
                ConstCounter::new(Counters::get(&c.runs_failed)),
            ));
            dead.push((label(p), ConstCounter::new(Counters::get(&c.dead_lettered))));
            removed.push((label(p), ConstCounter::new(Counters::get(&c.removed))));
            let stats = p.queue.stats();
            q_rows.push((label(p), ConstGauge::new(stats.rows as i64)));
            q_bytes.push((label(p), ConstGauge::new(stats.bytes as i64)));
            q_cap.push((label(p), ConstGauge::new(stats.capacity_rows as i64)));
            let age = stats
                .oldest_ms
                .map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0);
            q_age.push((label(p), ConstGauge::new(age)));
            let current = p.state();
            for s in [
                State::Active,
                State::Paused,
                State::Failing,
                State::Suspended,
            ] {
                states.push((
                    StateLabels {
                        pipeline: name.clone(),
                        state: s.as_str(),
                    },
                    ConstGauge::new(i64::from(s == current)),
                ));
            }
            if let Some((count, total)) = p.queue.fsync_stats() {
                fsyncs.push((label(p), ConstCounter::new(count)));
                fsync_secs.push((label(p), ConstCounter::new(total.as_secs_f64())));
            }
        }
        family(
            &mut e,
            "weir_ingest_rows",
            "Rows by outcome: accepted (queued), ignored (schema or filter), rejected (request refused)",
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
            "weir_queue_removed_rows",
            "Rows taken out by an operator (reconcile, purge)",
            None,
            removed,
        )?;
        family(&mut e, "weir_queue_rows", "Rows queued", None, q_rows)?;
        family(&mut e, "weir_queue", "Bytes queued", Some(&bytes), q_bytes)?;
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
            Some(&seconds),
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
            Some(&seconds),
            fsync_secs,
        )?;
        let budgets: Vec<_> = self
            .budgets
            .remaining()
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

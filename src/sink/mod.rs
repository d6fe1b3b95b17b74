//! Sinks: where a run's batch goes. Today the Celonis Data Push API; every sink takes a batch
//! of queued entries and either delivers all of it or fails, leaving it queued.
//!
//! Architecture Invariant: sinks never remove rows from a queue; the scheduler commits a
//! batch only after its sink said it was delivered.

pub mod budget;
pub mod celonis;
pub mod csv;
pub mod http;
pub mod oauth;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{CelonisAuth, CelonisLimits, HttpAuth, PipelineConfig, SinkConfig};
use crate::metrics::Metrics;
use crate::queue::{Entry, InFlight, Queue};
use budget::Budgets;
use celonis::{CelonisClient, PushFailure};
use http::{HttpClient, HttpFailure};
use oauth::Tokens;

/// Why a batch was not delivered. The batch stays queued in every case.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("writing CSV: {0}")]
    Csv(#[from] ::csv::Error),
    #[error(transparent)]
    Celonis(#[from] PushFailure),
    #[error(transparent)]
    Http(#[from] HttpFailure),
}

impl SinkError {
    /// A wait the receiving service asked for (e.g. 429 Retry-After).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SinkError::Celonis(p) => p.retry_after(),
            SinkError::Http(h) => h.retry_after(),
            SinkError::Csv(_) => None,
        }
    }
}

/// The HTTP client every sink sends with: weir's user agent and the sink's request timeout.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")))
        .timeout(timeout)
        .build()
}

/// Counts a sink's HTTP calls in the metrics, labelled with its pipeline.
pub struct CallObserver {
    pipeline: String,
    metrics: Arc<Metrics>,
}

impl CallObserver {
    pub fn call(&self, endpoint: &'static str, status: Option<u16>) {
        self.metrics.sink_call(&self.pipeline, endpoint, status);
    }
}

/// A pipeline's sink, ready to deliver.
pub enum Sink {
    Celonis(Box<CelonisClient>),
    Http(HttpClient),
}

impl Sink {
    /// Builds a pipeline's sink. Job budgets are shared per team, OAuth tokens per
    /// (token URL, client id, scopes).
    pub fn new(
        config: &PipelineConfig,
        limits: CelonisLimits,
        budgets: &Budgets,
        tokens: &Tokens,
        metrics: Arc<Metrics>,
    ) -> Result<Sink, reqwest::Error> {
        match &config.sink {
            SinkConfig::Celonis(c) => {
                let budget = budgets.for_team(&c.team_key(), limits);
                let observe = CallObserver {
                    pipeline: config.name.clone(),
                    metrics: metrics.clone(),
                };
                let source = match &c.auth {
                    CelonisAuth::OAuth2(o) => Some(tokens.source(o, c.request_timeout)?),
                    _ => None,
                };
                Ok(Sink::Celonis(Box::new(CelonisClient::new(
                    c.clone(),
                    budget,
                    source,
                    observe,
                )?)))
            }
            SinkConfig::Http(h) => {
                let source = match &h.auth {
                    HttpAuth::OAuth2(o) => Some(tokens.source(o, h.request_timeout)?),
                    _ => None,
                };
                let observe = CallObserver {
                    pipeline: config.name.clone(),
                    metrics,
                };
                Ok(Sink::Http(HttpClient::new(
                    h.clone(),
                    &config.name,
                    source,
                    observe,
                )?))
            }
        }
    }

    /// Finds out whether a batch in flight at the last stop reached the sink (`true`).
    pub async fn settle(&self, batch: &InFlight) -> Result<bool, SinkError> {
        match self {
            Sink::Celonis(client) => Ok(client.settle(batch).await?),
            // An HTTP API has no job to look up: the batch is delivered again.
            Sink::Http(_) => Ok(false),
        }
    }

    /// Delivers the batch (non-empty, oldest first). Returns the sink's job id, if any.
    pub async fn deliver(
        &self,
        config: &PipelineConfig,
        entries: &[Entry],
        queue: &dyn Queue,
    ) -> Result<Option<String>, SinkError> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(None);
        };
        match self {
            Sink::Celonis(client) => {
                let SinkConfig::Celonis(c) = &config.sink else {
                    unreachable!("Sink::new builds a Celonis client only for a Celonis sink")
                };
                let layout =
                    csv::Layout::for_batch(&config.columns, config.schema.as_ref(), entries)
                        .named(&config.name);
                let chunks = csv::write_chunks(&layout, entries, &c.csv, c.chunk_bytes)?;
                let job = client
                    .push(chunks, first.offset, last.offset, queue)
                    .await?;
                Ok(Some(job))
            }
            Sink::Http(client) => {
                client.deliver(config, entries).await?;
                Ok(None)
            }
        }
    }
}

//! Sinks: where a run's batch goes. The Celonis Data Push API, Celonis' Continuous Batch
//! Processing API (`api = "continuous"`) and any HTTP API; every
//! sink takes a batch of queued entries and either delivers it or fails, leaving it queued.
//!
//! Architecture Invariant: sinks never remove rows from a queue. A sink gets only an
//! [`InFlightRecorder`], which can record and clear the batch in flight and nothing else; the
//! scheduler commits a batch only after its sink said it was delivered.

pub mod batch;
pub mod budget;
pub mod celonis;
pub mod continuous;
pub mod csv;
pub mod http;
pub mod oauth;
pub mod parquet;
pub mod preview;
pub mod probe;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::config::{CelonisApi, CelonisAuth, CelonisLimits, HttpAuth, PipelineConfig, SinkConfig};
use crate::metrics::Metrics;
use crate::queue::{Entry, InFlight, Queue, QueueError};
use budget::Budgets;
use celonis::{CelonisClient, PushFailure};
use continuous::{ContinuousClient, UploadFailure};
use csv::ColumnSpec;
use http::{HttpClient, HttpFailure};
use oauth::Tokens;

/// The longest wait a server's `Retry-After` can impose on weir.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A `Retry-After` header: delay-seconds or an HTTP date, clamped to [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, SystemTime::now())
}

/// Parses a `Retry-After` value at wall-clock time `now`: seconds (`120`) or an
/// IMF-fixdate (`Wed, 21 Oct 2015 07:28:00 GMT`; a date in the past means no wait). Every
/// result is at most [`MAX_RETRY_AFTER`], so no server can make weir's clock overflow.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() {
        // All digits: a number too large for u64 is still a (very long) wait.
        value
            .parse::<u64>()
            .map(Duration::from_secs)
            .unwrap_or(MAX_RETRY_AFTER)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Reads at most `limit` bytes of a response body. `Ok((bytes, true))`: the body was longer
/// and the rest was not read.
pub async fn read_limited(
    resp: &mut reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = limit - out.len();
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            return Ok((out, true));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, false))
}

/// Whether weir knows what became of a batch whose delivery failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Nothing reached the sink, or its job is known not to have run (and will not): the
    /// batch is pushed again as a new job.
    NotDelivered,
    /// The job may have run, or it was kept to be executed again (a 429 on execute): the
    /// in-flight record stays, and the job is settled before the pipeline's next push.
    Unknown,
}

/// Why a batch was not delivered. The batch stays queued in every case.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Celonis(#[from] PushFailure),
    #[error(transparent)]
    Continuous(#[from] UploadFailure),
    #[error(transparent)]
    Http(#[from] HttpFailure),
}

impl SinkError {
    /// A wait the receiving service asked for (e.g. 429 Retry-After).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SinkError::Celonis(p) => p.retry_after(),
            SinkError::Continuous(u) => u.retry_after(),
            SinkError::Http(h) => h.retry_after(),
        }
    }

    /// Whether the batch's rows are the cause: some fail whatever is retried, so the worker
    /// isolates them. Returns the service's reason.
    pub fn bad_data(&self) -> Option<String> {
        match self {
            SinkError::Celonis(p) if p.class() == celonis::ErrorClass::BadData => Some(p.reason()),
            SinkError::Continuous(u) if u.bad_data() => Some(u.reason()),
            _ => None,
        }
    }

    /// Whether the batch's fate is known. The HTTP sink records nothing in flight: a failed
    /// request is sent again (at least once).
    pub fn fate(&self) -> Fate {
        match self {
            SinkError::Celonis(p) => p.fate(),
            SinkError::Continuous(u) => u.fate(),
            SinkError::Http(_) => Fate::NotDelivered,
        }
    }
}

/// What a sink may do to its pipeline's queue: record the batch it is delivering (and clear
/// the record). It cannot read or remove rows.
#[derive(Clone, Copy)]
pub struct InFlightRecorder<'a> {
    queue: &'a dyn Queue,
}

impl<'a> InFlightRecorder<'a> {
    pub fn new(queue: &'a dyn Queue) -> InFlightRecorder<'a> {
        InFlightRecorder { queue }
    }

    pub async fn set(&self, batch: InFlight) -> Result<(), QueueError> {
        self.queue.set_in_flight(Some(batch)).await
    }

    pub async fn clear(&self) -> Result<(), QueueError> {
        self.queue.set_in_flight(None).await
    }
}

/// A delivered run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The sink's job id, if any.
    pub job_id: Option<String>,
    /// How many of the batch's first rows were delivered (all, unless the batch was cut).
    pub rows: usize,
    /// Why the batch was cut, if it was: the rest goes in later runs.
    pub cut: Option<String>,
}

/// What became of a batch that was in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// It reached the sink: commit it, push nothing for it.
    Delivered,
    /// It did not (and will not): push it again.
    NotDelivered,
}

/// How many of the batch's first rows one job or upload can take (`max_columns`), their
/// layout, and, when that is not all of them, why the batch was cut (counted in the metrics).
fn fit_columns(
    columns: &ColumnSpec,
    observe: &CallObserver,
    entries: &[Entry],
) -> (
    usize,
    Result<csv::Layout, batch::ColumnsError>,
    Option<String>,
) {
    let (fit, layout) = columns.fit_layout_known(entries);
    let cut = (fit < entries.len()).then(|| {
        observe.columns_cut();
        format!(
            "pipeline {}: the batch has more than max_columns = {} distinct fields; \
             delivered its first {fit} of {} rows, the rest go in the next runs",
            columns.pipeline,
            columns.max_columns,
            entries.len()
        )
    });
    (fit, layout, cut)
}

/// The most bytes of an error body weir reads (and keeps 2 KiB of).
const MAX_ERROR_BODY: usize = 64 << 10;

/// An error answer's body for a message: at most [`MAX_ERROR_BODY`] bytes read, at most
/// 2048 kept (cut at a character boundary, with `…`).
pub async fn error_body(resp: &mut reqwest::Response) -> String {
    let (bytes, _) = read_limited(resp, MAX_ERROR_BODY).await.unwrap_or_default();
    let mut body = String::from_utf8_lossy(&bytes).into_owned();
    if body.len() > 2048 {
        let cut = (0..=2048)
            .rev()
            .find(|&i| body.is_char_boundary(i))
            .unwrap_or(0);
        body.truncate(cut);
        body.push('…');
    }
    body
}

/// The HTTP client every sink sends with: weir's user agent, the sink's request timeout
/// and its proxy.
pub fn http_client(
    timeout: Duration,
    proxy: Option<&crate::config::Proxy>,
) -> Result<reqwest::Client, reqwest::Error> {
    client_builder(timeout, proxy)?.build()
}

/// A client builder with weir's user agent, the timeout and the proxy. With a proxy
/// configured it is the only one used (and `HTTPS_PROXY` / `NO_PROXY` are ignored); without,
/// reqwest honours `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` from the
/// environment.
pub fn client_builder(
    timeout: Duration,
    proxy: Option<&crate::config::Proxy>,
) -> Result<reqwest::ClientBuilder, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")))
        .timeout(timeout);
    if let Some(p) = proxy {
        let mut proxy = reqwest::Proxy::all(p.url.as_str())?
            .no_proxy(reqwest::NoProxy::from_string(&p.no_proxy.join(",")));
        if let Some(user) = &p.username {
            let password = p.password.as_ref().map_or("", |s| s.expose());
            proxy = proxy.basic_auth(user, password);
        }
        builder = builder.proxy(proxy);
    }
    Ok(builder)
}

/// What a 407 from the proxy is told as: which proxy (never its password), and what to check.
pub fn proxy_refusal(proxy: Option<&crate::config::Proxy>) -> String {
    match proxy {
        Some(p) if p.username.is_some() => format!(
            "the proxy {} refused weir's credentials (407 Proxy Authentication Required): check the proxy's username and password",
            p.shown()
        ),
        Some(p) => format!(
            "the proxy {} asks for credentials (407 Proxy Authentication Required): set username and password with its url",
            p.shown()
        ),
        None => "the proxy from the environment (HTTPS_PROXY / HTTP_PROXY) refused weir's credentials (407 Proxy Authentication Required)".to_owned(),
    }
}

/// Whether a failed call was refused by the proxy for its credentials: a 407 to a plain
/// HTTP request, or to the CONNECT of an HTTPS one.
pub fn proxy_refused(sent: &Result<reqwest::Response, reqwest::Error>) -> bool {
    match sent {
        Ok(resp) => resp.status() == reqwest::StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        Err(e) => {
            let mut source: Option<&dyn std::error::Error> = Some(e);
            while let Some(s) = source {
                if s.to_string().contains("proxy authorization required") {
                    return true;
                }
                source = s.source();
            }
            false
        }
    }
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

    /// Counts a batch cut because it had more than `max_columns` distinct columns.
    pub fn columns_cut(&self) {
        self.metrics.batch_cut(&self.pipeline);
    }
}

/// Why a pipeline's sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("reading the table's columns: {0}")]
    Columns(#[from] batch::ColumnsError),
    #[error("the continuous API's client id: {0}")]
    ClientId(#[from] continuous::ClientIdError),
}

/// A pipeline's sink, ready to deliver. Each owns what it needs of the pipeline's config.
pub enum Sink {
    Celonis(Box<CelonisClient>, ColumnSpec),
    Continuous(Box<ContinuousClient>, ColumnSpec),
    Http(HttpClient, ColumnSpec),
}

impl Sink {
    /// Builds a pipeline's sink. Job budgets and upload rates are shared per team, OAuth
    /// tokens per (token URL, client id, scopes). A continuous sink reads (or makes) this
    /// weir's client id in `data_dir`.
    pub fn new(
        config: &PipelineConfig,
        limits: CelonisLimits,
        budgets: &Budgets,
        tokens: &Tokens,
        metrics: Arc<Metrics>,
        data_dir: &std::path::Path,
    ) -> Result<Sink, BuildError> {
        let mut columns = ColumnSpec::of(config);
        match &config.sink {
            SinkConfig::Celonis(c) if c.api == CelonisApi::Continuous => {
                let observe = CallObserver {
                    pipeline: config.name.clone(),
                    metrics,
                };
                let source = match &c.auth {
                    CelonisAuth::OAuth2(o) => {
                        Some(tokens.source(o, c.request_timeout, c.proxy.as_ref())?)
                    }
                    _ => None,
                };
                if columns.columns.is_empty()
                    && columns.schema.as_ref().is_none_or(|s| s.fields.is_empty())
                {
                    columns.known = Some(Arc::new(batch::KnownColumns::load(&config.state_dir)?));
                }
                let client_id = continuous::client_id(data_dir)?;
                let rate = budgets.uploads_for_team(&c.team_key(), limits.uploads_per_second);
                Ok(Sink::Continuous(
                    Box::new(ContinuousClient::new(
                        c.clone(),
                        &client_id,
                        rate,
                        source,
                        observe,
                    )?),
                    columns,
                ))
            }
            SinkConfig::Celonis(c) => {
                let budget = budgets.for_team(&c.team_key(), limits);
                let observe = CallObserver {
                    pipeline: config.name.clone(),
                    metrics: metrics.clone(),
                };
                let source = match &c.auth {
                    CelonisAuth::OAuth2(o) => {
                        Some(tokens.source(o, c.request_timeout, c.proxy.as_ref())?)
                    }
                    _ => None,
                };
                if columns.columns.is_empty()
                    && columns.schema.as_ref().is_none_or(|s| s.fields.is_empty())
                {
                    columns.known = Some(Arc::new(batch::KnownColumns::load(&config.state_dir)?));
                }
                Ok(Sink::Celonis(
                    Box::new(CelonisClient::new(c.clone(), budget, source, observe)?),
                    columns,
                ))
            }
            SinkConfig::Http(h) => {
                let source = match &h.auth {
                    HttpAuth::OAuth2(o) => {
                        Some(tokens.source(o, h.request_timeout, h.proxy.as_ref())?)
                    }
                    _ => None,
                };
                let observe = CallObserver {
                    pipeline: config.name.clone(),
                    metrics,
                };
                Ok(Sink::Http(
                    HttpClient::new(h.clone(), &config.name, source, observe)?,
                    columns,
                ))
            }
        }
    }

    /// Finds out what became of a batch that was in flight (at the last stop, or when a
    /// run ended with an unknown outcome). An error leaves it unknown.
    pub async fn settle(&self, batch: &InFlight) -> Result<Settled, SinkError> {
        match self {
            Sink::Celonis(client, _) => Ok(client.settle(batch).await?),
            // An upload or an HTTP API has no job to look up: the batch is delivered again.
            Sink::Continuous(..) | Sink::Http(..) => Ok(Settled::NotDelivered),
        }
    }

    /// Where the sink's CSV columns come from, sharing its known-columns state.
    pub fn columns(&self) -> &ColumnSpec {
        match self {
            Sink::Celonis(_, columns) | Sink::Continuous(_, columns) | Sink::Http(_, columns) => {
                columns
            }
        }
    }

    /// How many of the batch's first rows one job can take (all but with `max_columns`).
    pub fn fitting_rows(&self, entries: &[Entry]) -> usize {
        match self {
            Sink::Celonis(_, columns) | Sink::Continuous(_, columns) => {
                columns.fitting_rows(entries)
            }
            Sink::Http(..) => entries.len(),
        }
    }

    /// Delivers the batch (non-empty, oldest first), or its longest prefix that fits the
    /// pipeline's limits.
    pub async fn deliver(
        &self,
        entries: &[Entry],
        recorder: InFlightRecorder<'_>,
    ) -> Result<Delivered, SinkError> {
        if entries.is_empty() {
            return Ok(Delivered {
                job_id: None,
                rows: 0,
                cut: None,
            });
        }
        match self {
            Sink::Celonis(client, columns) => {
                let (fit, layout, cut) = fit_columns(columns, client.observe(), entries);
                let entries = &entries[..fit];
                let layout = layout.map_err(PushFailure::Columns)?;
                let job = client.push(&layout, entries, recorder).await?;
                Ok(Delivered {
                    job_id: Some(job),
                    rows: entries.len(),
                    cut,
                })
            }
            Sink::Continuous(client, columns) => {
                let (fit, layout, cut) = fit_columns(columns, client.observe(), entries);
                let entries = &entries[..fit];
                let layout = layout.map_err(UploadFailure::Columns)?;
                let item = client.upload(&layout, entries).await?;
                Ok(Delivered {
                    job_id: Some(item.id),
                    rows: entries.len(),
                    cut,
                })
            }
            Sink::Http(client, columns) => {
                client.deliver(columns, entries).await?;
                Ok(Delivered {
                    job_id: None,
                    rows: entries.len(),
                    cut: None,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_as_seconds_or_an_http_date_and_clamped() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means no wait"
        );
        for huge in [
            "18446744073709551615",
            "99999999999999999999999",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        ] {
            assert_eq!(
                parse_retry_after(huge, now),
                Some(MAX_RETRY_AFTER),
                "{huge}"
            );
        }
        for bad in ["", "soon", "-5", "1.5"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
    }
}

//! Sources: rows weir fetches itself rather than receives. `kind = "poll"` polls a
//! dequeue/ack API (Dynamics 365 FinOps recurring integrations): dequeue a package, download
//! and unpack it ([`package`]), screen its rows as ingest does, queue them all-or-nothing
//! with `Pipeline::push`, then ack. [`fetch`] downloads the files business events name
//! (`[pipelines.fetch]`) the same way. Sources feed queues only; they never talk to sinks.

pub mod fetch;
pub mod package;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use reqwest::Url;
use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{ApiKeyLocation, HttpAuth, OnMismatch, Schedule, SourceConfig, Text};
use crate::ingest::parse::Limits;
use crate::ingest::screen::{self, Verdict};
use crate::pipeline::{Counters, Pipeline};
use package::{PackageError, host};

/// The most bytes of a dequeue answer weir reads.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Gets an OAuth 2.0 access token for a source's `auth` (the caller's token cache).
pub trait BearerToken: Send + Sync {
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>>;
}

/// A source ready to run: its config, its pipeline, its HTTP client and its token.
pub struct Poller {
    pub config: SourceConfig,
    pub pipeline: Arc<Pipeline>,
    /// Built with the source's timeout and proxy; redirects to another host are refused.
    pub http: reqwest::Client,
    pub token: Option<Arc<dyn BearerToken>>,
    pub limits: Limits,
    /// Its index in `[[sources]]`, for logs and metrics.
    pub index: usize,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// What one tick did.
#[derive(Debug, PartialEq, Eq)]
pub enum Polled {
    /// 204 or an empty answer.
    Empty,
    /// Rows queued and the package acked.
    Acked { rows: u64 },
    /// Not acked: it is handed out again.
    Failed(String),
}

/// Why a tick stopped before the ack.
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("{0}")]
    Package(#[from] PackageError),
    #[error("{call} to {host} failed: {detail}")]
    Transport {
        call: &'static str,
        host: String,
        detail: String,
    },
    #[error("{call} to {host} answered HTTP {status}")]
    Status {
        call: &'static str,
        host: String,
        status: u16,
    },
    #[error("{0}")]
    Answer(String),
    #[error("the queue refused the package's rows: {0}")]
    Queue(String),
}

/// Redirects only within the host first asked.
pub fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let first = attempt
            .previous()
            .first()
            .and_then(|u| u.host_str().map(str::to_owned));
        if attempt.previous().len() > 5 {
            attempt.error("too many redirects")
        } else if first.as_deref() == attempt.url().host_str() {
            attempt.follow()
        } else {
            attempt.error("redirect to another host refused")
        }
    })
}

/// Starts one task per source on `tracker`, each polling at once and then on its schedule
/// (each tick takes packages until the API answers 204 or one fails),
/// and stopping when `stop` is cancelled. The returned scheduler makes the ticks; shut it
/// down with the sources.
pub async fn start(
    pollers: Vec<Poller>,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> Result<JobScheduler, JobSchedulerError> {
    let cron = JobScheduler::new().await?;
    for (i, p) in pollers.into_iter().enumerate() {
        let (tick_tx, tick_rx) = mpsc::channel::<()>(1);
        let tick = move |_, _| {
            // A full channel means a tick is already waiting: coalesce.
            let _ = tick_tx.try_send(());
            Box::pin(async {}) as Pin<Box<dyn Future<Output = ()> + Send>>
        };
        let job = match &p.config.schedule {
            Schedule::Cron(expr) => Job::new_async(expr.as_str(), tick)?,
            Schedule::Every(d) => Job::new_repeated_async(*d, tick)?,
            // Refused by the config; polled every 5 minutes if it ever got here.
            Schedule::Continuous => {
                Job::new_repeated_async(std::time::Duration::from_secs(300), tick)?
            }
        };
        cron.add(job).await?;
        let span = tracing::info_span!("source", source = i, pipeline = p.pipeline.name());
        tracker.spawn(p.run(tick_rx, stop.clone()).instrument(span));
    }
    cron.start().await?;
    Ok(cron)
}

impl Poller {
    async fn run(self, mut ticks: mpsc::Receiver<()>, stop: CancellationToken) {
        loop {
            // An acked package may have others behind it: take them until the API has none
            // (or one fails), rather than one per tick.
            loop {
                tokio::select! {
                    polled = self.poll() => if !matches!(polled, Polled::Acked { .. }) { break },
                    () = stop.cancelled() => return,
                }
            }
            tokio::select! {
                tick = ticks.recv() => if tick.is_none() { return },
                () = stop.cancelled() => return,
            }
        }
    }

    /// One tick: dequeue, download, queue, ack. Logs what happened.
    pub async fn poll(&self) -> Polled {
        let polled = match self.try_poll().await {
            Ok(polled) => polled,
            Err(e) => {
                tracing::warn!(error = %e, "package not acked");
                Polled::Failed(e.to_string())
            }
        };
        let outcome = match polled {
            Polled::Acked { .. } => "acked",
            Polled::Empty => "empty",
            Polled::Failed(_) => "failed",
        };
        self.metrics
            .source_poll(self.index, self.pipeline.name(), outcome);
        polled
    }

    async fn try_poll(&self) -> Result<Polled, PollError> {
        let c = &self.config;
        let dequeue_host = host(&c.dequeue_url);
        let request = self
            .authorized(self.http.get(c.dequeue_url.clone()), &c.dequeue_url)
            .await?;
        let response = request.send().await.map_err(|e| PollError::Transport {
            call: "dequeue",
            host: dequeue_host.clone(),
            detail: e.without_url().to_string(),
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(Polled::Empty);
        }
        if !status.is_success() {
            return Err(PollError::Status {
                call: "dequeue",
                host: dequeue_host,
                status: status.as_u16(),
            });
        }
        let answer = read_capped(response, MAX_ANSWER_BYTES, &dequeue_host).await?;
        if answer.iter().all(u8::is_ascii_whitespace) {
            return Ok(Polled::Empty);
        }
        let answer: serde_json::Value = serde_json::from_slice(&answer)
            .map_err(|e| PollError::Answer(format!("the dequeue answer is not JSON: {e}")))?;
        let url = answer
            .get(&c.download_url_field)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                PollError::Answer(format!(
                    "the dequeue answer has no \"{}\" (download_url_field)",
                    c.download_url_field
                ))
            })?;
        let url = Url::parse(url).map_err(|_| {
            PollError::Answer(format!(
                "\"{}\" of the dequeue answer is not a URL",
                c.download_url_field
            ))
        })?;
        let download_host = host(&url);
        // Credentials go only to the host they are for.
        let request = if url.host_str() == c.dequeue_url.host_str() {
            self.authorized(self.http.get(url.clone()), &url).await?
        } else {
            self.http.get(url.clone())
        };
        let body = package::download(request, &url, c.max_bytes).await?;
        let name = url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .unwrap_or("package.zip")
            .to_owned();
        let limits = self.limits;
        let (format, entries, max_bytes) = (c.format, c.entries.clone(), c.max_bytes);
        let read_host = download_host.clone();
        let pkg = tokio::task::spawn_blocking(move || {
            package::read(
                &body, &name, &read_host, format, &entries, max_bytes, &limits,
            )
        })
        .await
        .map_err(|e| PollError::Answer(format!("reading the package failed: {e}")))??;
        let (rows, ignored, filtered) =
            screen_package(&self.pipeline.config, &pkg).map_err(PollError::Answer)?;
        let n = rows.len() as u64;
        if n > 0 {
            self.pipeline
                .push(rows)
                .await
                .map_err(|e| PollError::Queue(e.to_string()))?;
            self.pipeline.counters.accept(n);
        }
        Counters::add(&self.pipeline.counters.ignored, ignored);
        tracing::info!(
            rows = n,
            ignored,
            filtered,
            entries = pkg.entries.len(),
            bytes = pkg.bytes,
            unpacked = pkg.unpacked,
            host = download_host,
            "package queued"
        );
        self.ack(&answer).await?;
        tracing::info!(rows = n, "package acked");
        Ok(Polled::Acked { rows: n })
    }

    async fn ack(&self, answer: &serde_json::Value) -> Result<(), PollError> {
        let text = match &self.config.ack_url {
            Text::Literal(u) => u.clone(),
            Text::Expr(e) => {
                let response = crate::expr::json_value(answer.clone());
                e.eval_text(&[("response", &response)])
                    .map_err(|e| PollError::Answer(format!("ack_url: {e}")))?
            }
        };
        let url =
            Url::parse(&text).map_err(|_| PollError::Answer("ack_url is not a URL".to_owned()))?;
        let ack_host = host(&url);
        let request = self
            .authorized(self.http.post(url.clone()).json(answer), &url)
            .await?;
        let response = request.send().await.map_err(|e| PollError::Transport {
            call: "ack",
            host: ack_host.clone(),
            detail: e.without_url().to_string(),
        })?;
        if !response.status().is_success() {
            return Err(PollError::Status {
                call: "ack",
                host: ack_host,
                status: response.status().as_u16(),
            });
        }
        Ok(())
    }

    async fn authorized(
        &self,
        request: reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<reqwest::RequestBuilder, PollError> {
        authorize(request, &self.config.auth, self.token.as_deref())
            .await
            .map_err(|detail| PollError::Transport {
                call: "token request",
                host: host(url),
                detail,
            })
    }
}

/// Adds an outbound `auth` to a request; an OAuth 2.0 token comes from `token`. The error
/// is why the token request failed.
pub(crate) async fn authorize(
    request: reqwest::RequestBuilder,
    auth: &HttpAuth,
    token: Option<&dyn BearerToken>,
) -> Result<reqwest::RequestBuilder, String> {
    Ok(match auth {
        HttpAuth::None => request,
        HttpAuth::ApiKey {
            location: ApiKeyLocation::Header,
            name,
            value,
        } => request.header(name.as_str(), value.expose()),
        HttpAuth::ApiKey {
            location: ApiKeyLocation::Query,
            name,
            value,
        } => request.query(&[(name.as_str(), value.expose())]),
        HttpAuth::Bearer(t) => request.bearer_auth(t.expose()),
        HttpAuth::Basic { username, password } => {
            request.basic_auth(username, Some(password.expose()))
        }
        HttpAuth::OAuth2(_) => match token {
            Some(t) => request.bearer_auth(t.token().await?),
            None => request,
        },
    })
}

/// A package's rows as ingest would queue them; a mismatch refuses the package when the
/// pipeline's schema is in `reject` mode, and so does a record that is not a row.
/// (rows, ignored, filtered)
pub(crate) fn screen_package(
    config: &crate::config::PipelineConfig,
    pkg: &package::Package,
) -> Result<(Vec<crate::row::Row>, u64, u64), String> {
    let reject = config
        .schema
        .as_ref()
        .is_none_or(|s| s.on_mismatch == OnMismatch::Reject);
    let (mut rows, mut ignored, mut filtered) = (Vec::new(), 0, 0);
    for entry in &pkg.entries {
        if let Some(bad) = entry.bad.first() {
            return Err(format!("entry {}: {bad}", entry.name));
        }
        for (row, source) in &entry.records {
            match screen::judge(config, row.clone(), *source) {
                Verdict::Keep(r) => rows.push(r),
                Verdict::Filtered(_) => filtered += 1,
                Verdict::Mismatch(why) if reject => {
                    return Err(format!("entry {}: {why}", entry.name));
                }
                Verdict::Mismatch(_) => ignored += 1,
            }
        }
    }
    Ok((rows, ignored, filtered))
}

/// Reads a response body up to `max` bytes.
async fn read_capped(
    mut response: reqwest::Response,
    max: usize,
    host: &str,
) -> Result<Vec<u8>, PollError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| PollError::Transport {
        call: "dequeue",
        host: host.to_owned(),
        detail: e.without_url().to_string(),
    })? {
        if body.len() + chunk.len() > max {
            return Err(PollError::Answer(format!(
                "the dequeue answer from {host} is over {max} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

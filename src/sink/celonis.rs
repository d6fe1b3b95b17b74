//! The Celonis Data Push client: one run's batch becomes one job — create, upload CSV chunks,
//! execute, poll until DONE. Follows ../shared/reference/celonis-data-push.md (§4, §5, §8).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Response, StatusCode, header};
use serde::Deserialize;

use super::CallObserver;
use super::budget::JobBudget;
use super::oauth::{OAuthError, TokenSource};
use crate::config::{CelonisAuth, CelonisSink, Secret};
use crate::queue::{InFlight, Offset, Queue, QueueError};

/// Which call of the sequence failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Create,
    Upload,
    Execute,
    Poll,
    Delete,
}

impl Step {
    /// The label of this call in metrics.
    pub fn endpoint(self) -> &'static str {
        match self {
            Step::Create => "create",
            Step::Upload => "upload",
            Step::Execute => "execute",
            Step::Poll => "poll",
            Step::Delete => "delete",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Create => "create job",
            Step::Upload => "upload chunk",
            Step::Execute => "execute job",
            Step::Poll => "poll job",
            Step::Delete => "delete job",
        })
    }
}

/// Why a push did not complete. In every case the batch stays queued.
#[derive(Debug, thiserror::Error)]
pub enum PushFailure {
    #[error("{step}: HTTP {status} ({kind}): {body}")]
    Http {
        step: Step,
        status: u16,
        kind: FailureKind,
        body: String,
        retry_after: Option<Duration>,
    },
    #[error("{step}: {source}")]
    Transport {
        step: Step,
        #[source]
        source: reqwest::Error,
    },
    #[error("{step}: unexpected response: {detail}")]
    BadResponse { step: Step, detail: String },
    #[error("job {job_id} ended {status}: {}", logs.join(" | "))]
    JobFailed {
        job_id: String,
        status: String,
        logs: Vec<String>,
    },
    #[error("job {job_id} was not finished after {}", humantime::format_duration(*timeout))]
    PollTimeout { job_id: String, timeout: Duration },
    #[error("recording the batch in flight: {0}")]
    Queue(#[from] QueueError),
    #[error("{step}: no OAuth token: {source}")]
    Token {
        step: Step,
        #[source]
        source: OAuthError,
    },
}

impl PushFailure {
    /// How long the server asked us to wait (429 `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PushFailure::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// What an HTTP error status means for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// 401/403: the key is wrong or lacks the Data Push permission on the pool.
    Credentials,
    /// 429: over the team's rate limit.
    RateLimited,
    /// 409: the job is not NEW, or another job for the table is running.
    Conflict,
    /// 404: wrong pool id, prefix or URL.
    NotFound,
    /// Other 4xx: the request was refused.
    Refused,
    /// 5xx: the service failed.
    Server,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::Credentials => {
                "credentials rejected: check the key and its Data Push permission on the pool"
            }
            FailureKind::RateLimited => "rate limited",
            FailureKind::Conflict => "conflict",
            FailureKind::NotFound => "not found: check url, api_prefix and data_pool_id",
            FailureKind::Refused => "request refused",
            FailureKind::Server => "server error",
        })
    }
}

/// Classifies an error status (a pure function, so it is tested on its own).
pub fn classify(status: StatusCode) -> FailureKind {
    match status.as_u16() {
        401 | 403 => FailureKind::Credentials,
        429 => FailureKind::RateLimited,
        409 => FailureKind::Conflict,
        404 => FailureKind::NotFound,
        500..=599 => FailureKind::Server,
        _ => FailureKind::Refused,
    }
}

/// The polling delay before poll `i`: 0.1 s, 0.3 s, 0.9 s, then 2 s (as pycelonis does).
pub fn poll_delay(i: u32) -> Duration {
    let ms = 100u64.saturating_mul(3u64.saturating_pow(i));
    Duration::from_millis(ms.min(2000))
}

#[derive(Deserialize)]
struct JobView {
    id: Option<String>,
    status: Option<String>,
    #[serde(default)]
    logs: Option<Vec<String>>,
}

/// A client for one pipeline's sink.
pub struct CelonisClient {
    http: reqwest::Client,
    sink: CelonisSink,
    jobs_url: String,
    budget: Arc<JobBudget>,
    /// With `auth = { kind = "oauth2" }`: the shared token cache.
    tokens: Option<Arc<TokenSource>>,
    observe: CallObserver,
}

impl CelonisClient {
    pub fn new(
        sink: CelonisSink,
        budget: Arc<JobBudget>,
        tokens: Option<Arc<TokenSource>>,
        observe: CallObserver,
    ) -> Result<CelonisClient, reqwest::Error> {
        let http = super::http_client(sink.request_timeout)?;
        let base = sink.base_url.as_str().trim_end_matches('/');
        let jobs_url = format!(
            "{base}{}/api/v1/data-push/{}/jobs",
            sink.api_prefix, sink.data_pool_id
        );
        Ok(CelonisClient {
            http,
            sink,
            jobs_url,
            budget,
            tokens,
            observe,
        })
    }

    pub fn budget(&self) -> &JobBudget {
        &self.budget
    }

    /// The current OAuth token, when the sink uses OAuth.
    async fn token(&self, step: Step) -> Result<Option<Secret>, PushFailure> {
        match &self.tokens {
            None => Ok(None),
            Some(t) => t
                .token()
                .await
                .map(Some)
                .map_err(|source| PushFailure::Token { step, source }),
        }
    }

    fn auth(
        &self,
        req: reqwest::RequestBuilder,
        token: Option<&Secret>,
    ) -> reqwest::RequestBuilder {
        let value = match (&self.sink.auth, token) {
            (CelonisAuth::AppKey(k), _) => format!("AppKey {}", k.expose()),
            (CelonisAuth::ApiKey(k), _) => format!("Bearer {}", k.expose()),
            (CelonisAuth::OAuth2(_), Some(t)) => format!("Bearer {}", t.expose()),
            (CelonisAuth::OAuth2(_), None) => return req,
        };
        req.header(header::AUTHORIZATION, value)
    }

    /// Sends with auth. With OAuth, a 401 drops the token and the request is sent once more
    /// with a fresh one.
    async fn send_authorized(
        &self,
        step: Step,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Response, PushFailure> {
        let token = self.token(step).await?;
        let sent = self.auth(make(), token.as_ref()).send().await;
        let resp = self.observed(step, sent)?;
        match (&self.tokens, token) {
            (Some(tokens), Some(old)) if resp.status() == StatusCode::UNAUTHORIZED => {
                tracing::info!(%step, "oauth token refused, fetching a new one");
                tokens.reject(&old).await;
                let token = self.token(step).await?;
                let sent = self.auth(make(), token.as_ref()).send().await;
                self.observed(step, sent)
            }
            _ => Ok(resp),
        }
    }

    /// Counts one call in the metrics, by endpoint and status.
    fn observed(
        &self,
        step: Step,
        sent: Result<Response, reqwest::Error>,
    ) -> Result<Response, PushFailure> {
        self.observe.call(
            step.endpoint(),
            sent.as_ref().ok().map(|r| r.status().as_u16()),
        );
        sent.map_err(|source| PushFailure::Transport { step, source })
    }

    /// The create-job body: only the fields weir sets, no nulls (§8.2).
    pub fn job_body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({
            "type": self.sink.mode.as_str(),
            "fileType": "CSV",
            "targetName": self.sink.target_name,
            "dataPoolId": self.sink.data_pool_id,
            "csvParsingOptions": super::csv::parsing_options(&self.sink.csv),
        });
        if !self.sink.keys.is_empty() {
            body["keys"] = self.sink.keys.clone().into();
        }
        if let Some(c) = &self.sink.connection_id {
            body["connectionId"] = c.clone().into();
        }
        body
    }

    /// Pushes one batch as one job and waits for it to finish. `first..=last` are the batch's
    /// queue offsets, recorded as in flight before the upload starts. Returns the job id.
    pub async fn push(
        &self,
        chunks: Vec<Vec<u8>>,
        first: Offset,
        last: Offset,
        queue: &dyn Queue,
    ) -> Result<String, PushFailure> {
        self.budget.acquire().await;
        queue
            .set_in_flight(Some(InFlight {
                first,
                last,
                job_id: None,
            }))
            .await?;
        let job_id = self.create().await?;
        queue
            .set_in_flight(Some(InFlight {
                first,
                last,
                job_id: Some(job_id.clone()),
            }))
            .await?;
        let executed = async {
            for chunk in chunks {
                self.upload(&job_id, axum::body::Bytes::from(chunk)).await?;
            }
            self.execute(&job_id).await
        }
        .await;
        if let Err(e) = executed {
            // The job never ran: remove it and its staged chunks.
            self.delete(&job_id).await;
            return Err(e);
        }
        self.wait_done(&job_id).await?;
        Ok(job_id)
    }

    /// Settles a batch that was in flight when weir last stopped. `Ok(true)`: the job
    /// reached DONE, so the batch is in Celonis and must not be pushed again. `Ok(false)`:
    /// it never ran (or failed), so the batch is still to be delivered.
    pub async fn settle(&self, batch: &InFlight) -> Result<bool, PushFailure> {
        let Some(job_id) = &batch.job_id else {
            return Ok(false);
        };
        let url = format!("{}/{job_id}", self.jobs_url);
        let job: JobView = match self.send(Step::Poll, || self.http.get(&url)).await {
            Ok(resp) => resp.json().await.map_err(|e| PushFailure::BadResponse {
                step: Step::Poll,
                detail: format!("body is not a job: {e}"),
            })?,
            Err(PushFailure::Http { status: 404, .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        match job.status.as_deref() {
            Some("DONE") => Ok(true),
            Some("QUEUED" | "RUNNING") => match self.wait_done(job_id).await {
                Ok(()) => Ok(true),
                Err(PushFailure::JobFailed { .. }) => Ok(false),
                Err(e) => Err(e),
            },
            Some("NEW") => {
                self.delete(job_id).await;
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    async fn create(&self) -> Result<String, PushFailure> {
        let url = format!("{}/", self.jobs_url);
        let body = self.job_body();
        let resp = self
            .send(Step::Create, || self.http.post(&url).json(&body))
            .await?;
        let job: JobView = resp.json().await.map_err(|e| PushFailure::BadResponse {
            step: Step::Create,
            detail: format!("body is not a job: {e}"),
        })?;
        job.id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| PushFailure::BadResponse {
                step: Step::Create,
                detail: "the created job has no id".into(),
            })
    }

    /// Uploads one CSV chunk. The chunk is shared, not copied, by each attempt's body.
    async fn upload(&self, job_id: &str, chunk: axum::body::Bytes) -> Result<(), PushFailure> {
        let url = format!("{}/{job_id}/chunks/upserted", self.jobs_url);
        let file_name = format!("{}.csv", self.sink.target_name);
        let part = || {
            reqwest::multipart::Part::stream_with_length(chunk.clone(), chunk.len() as u64)
                .file_name(file_name.clone())
        };
        self.send(Step::Upload, || {
            // "text/csv" always parses; keep the part untyped rather than fail if it did not.
            let part = part().mime_str("text/csv").unwrap_or_else(|_| part());
            self.http
                .post(&url)
                .multipart(reqwest::multipart::Form::new().part("file", part))
        })
        .await?;
        Ok(())
    }

    async fn execute(&self, job_id: &str) -> Result<(), PushFailure> {
        let url = format!("{}/{job_id}", self.jobs_url);
        self.send(Step::Execute, || self.http.post(&url)).await?;
        Ok(())
    }

    /// Polls until DONE (Ok), ERROR or CANCELED (JobFailed), or the poll timeout. Passing
    /// failures of a poll (5xx, 429, network) do not end the wait: the job is already running.
    async fn wait_done(&self, job_id: &str) -> Result<(), PushFailure> {
        let deadline = tokio::time::Instant::now() + self.sink.poll_timeout;
        let url = format!("{}/{job_id}", self.jobs_url);
        let mut i = 0;
        loop {
            tokio::time::sleep(poll_delay(i)).await;
            i = i.saturating_add(1);
            match self.send(Step::Poll, || self.http.get(&url)).await {
                Ok(resp) => {
                    let job: JobView = resp.json().await.map_err(|e| PushFailure::BadResponse {
                        step: Step::Poll,
                        detail: format!("body is not a job: {e}"),
                    })?;
                    match job.status.as_deref() {
                        Some("DONE") => return Ok(()),
                        Some(s @ ("ERROR" | "CANCELED")) => {
                            return Err(PushFailure::JobFailed {
                                job_id: job_id.to_owned(),
                                status: s.to_owned(),
                                logs: job.logs.unwrap_or_default(),
                            });
                        }
                        _ => {}
                    }
                }
                Err(
                    e @ PushFailure::Http {
                        kind:
                            FailureKind::Credentials | FailureKind::NotFound | FailureKind::Refused,
                        ..
                    },
                ) => {
                    return Err(e);
                }
                Err(e) => tracing::warn!(job = job_id, error = %e, "job poll failed, polling on"),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(PushFailure::PollTimeout {
                    job_id: job_id.to_owned(),
                    timeout: self.sink.poll_timeout,
                });
            }
        }
    }

    async fn delete(&self, job_id: &str) {
        let url = format!("{}/{job_id}", self.jobs_url);
        match self
            .send_authorized(Step::Delete, || self.http.delete(&url))
            .await
        {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => tracing::warn!(
                job = job_id,
                status = r.status().as_u16(),
                "deleting unexecuted job failed"
            ),
            Err(e) => tracing::warn!(job = job_id, error = %e, "deleting unexecuted job failed"),
        }
    }

    /// Sends a request with auth; any non-2xx becomes a `PushFailure::Http` carrying the body.
    async fn send(
        &self,
        step: Step,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Response, PushFailure> {
        let resp = self.send_authorized(step, make).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut body = resp.text().await.unwrap_or_default();
        if body.len() > 2048 {
            let cut = (0..=2048)
                .rev()
                .find(|&i| body.is_char_boundary(i))
                .unwrap_or(0);
            body.truncate(cut);
            body.push('…');
        }
        Err(PushFailure::Http {
            step,
            status: status.as_u16(),
            kind: classify(status),
            body,
            retry_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_for_the_operator() {
        assert_eq!(classify(StatusCode::UNAUTHORIZED), FailureKind::Credentials);
        assert_eq!(classify(StatusCode::FORBIDDEN), FailureKind::Credentials);
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS),
            FailureKind::RateLimited
        );
        assert_eq!(classify(StatusCode::CONFLICT), FailureKind::Conflict);
        assert_eq!(classify(StatusCode::NOT_FOUND), FailureKind::NotFound);
        assert_eq!(classify(StatusCode::BAD_REQUEST), FailureKind::Refused);
        assert_eq!(classify(StatusCode::BAD_GATEWAY), FailureKind::Server);
    }

    #[test]
    fn polling_backs_off_like_pycelonis() {
        let delays: Vec<u64> = (0..5).map(|i| poll_delay(i).as_millis() as u64).collect();
        assert_eq!(delays, [100, 300, 900, 2000, 2000]);
        assert_eq!(poll_delay(u32::MAX), Duration::from_secs(2));
    }
}

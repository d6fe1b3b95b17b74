//! The Celonis Data Push client: one run's batch becomes one job — create, upload CSV chunks,
//! execute, poll until DONE. Follows ../shared/reference/celonis-data-push.md (§4, §5, §8).
//!
//! Once a job may have been executed, its outcome is settled, never guessed: the job is
//! polled until it is terminal before the pipeline pushes again, and a job is deleted only
//! when it is known to be NEW and will not be executed again.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Response, StatusCode, header};
use serde::Deserialize;

use super::batch::{self, ColumnsError};
use super::budget::JobBudget;
use super::csv::{Chunks, Layout};
use super::oauth::{OAuthError, TokenSource};
use super::parquet::{ParquetChunkError, ParquetChunks};
use super::{CallObserver, Fate, InFlightRecorder, Settled};
use crate::config::{CelonisAuth, CelonisSink, Dedupe, FileType, Secret, TableSpec};
use crate::queue::{Entry, InFlight, QueueError};
use crate::sync::lock;

/// The most bytes of a job's JSON weir reads.
const MAX_JOB_BODY: usize = 1 << 20;

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
    #[error("writing CSV: {0}")]
    Csv(#[from] ::csv::Error),
    #[error("writing Parquet: {0}")]
    Parquet(#[from] ParquetChunkError),
    #[error("persisting the job budget: {0}")]
    Budget(#[source] std::io::Error),
    #[error("persisting the table's columns: {0}")]
    Columns(#[source] ColumnsError),
    #[error("{step}: {message}")]
    ProxyRefused { step: Step, message: String },
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

    /// Whether retrying can help, and whether the batch's rows are the cause.
    pub fn class(&self) -> ErrorClass {
        match self {
            PushFailure::Http {
                step: Step::Upload,
                status: 400,
                ..
            } => ErrorClass::BadData,
            PushFailure::Http {
                step: Step::Create,
                status: 400,
                ..
            } => ErrorClass::Permanent,
            PushFailure::JobFailed { status, logs, .. }
                if status == "ERROR" && is_data_error(logs) =>
            {
                ErrorClass::BadData
            }
            PushFailure::Parquet(ParquetChunkError::Value { .. }) => ErrorClass::BadData,
            _ => ErrorClass::Transient,
        }
    }

    /// The service's reason for a refused batch, for the dead-letter file: the job's logs,
    /// or the error body's `frontendErrorKey` and `errors[0].error`.
    pub fn reason(&self) -> String {
        match self {
            PushFailure::JobFailed { status, logs, .. } => {
                format!("job ended {status}: {}", logs.join(" | "))
            }
            PushFailure::Http {
                step, status, body, ..
            } => format!("{step}: HTTP {status}: {}", error_text(body)),
            other => other.to_string(),
        }
    }

    /// Whether the job may have run. Before execute nothing ran; an execute refused with a
    /// 4xx other than 409 and 429 did not run. Everything after a sent execute is unknown
    /// until a poll says otherwise (a 429 keeps the job to execute it again).
    pub fn fate(&self) -> Fate {
        match self {
            PushFailure::JobFailed { .. }
            | PushFailure::Queue(_)
            | PushFailure::Csv(_)
            | PushFailure::Parquet(_)
            | PushFailure::Budget(_)
            | PushFailure::Columns(_) => Fate::NotDelivered,
            PushFailure::PollTimeout { .. } => Fate::Unknown,
            PushFailure::Http { step, status, .. } => match step {
                Step::Execute if matches!(status, 409 | 429) || *status >= 500 => Fate::Unknown,
                Step::Poll => Fate::Unknown,
                _ => Fate::NotDelivered,
            },
            PushFailure::Transport { step, .. }
            | PushFailure::BadResponse { step, .. }
            | PushFailure::ProxyRefused { step, .. } => match step {
                Step::Execute | Step::Poll => Fate::Unknown,
                _ => Fate::NotDelivered,
            },
            PushFailure::Token { step, .. } => match step {
                Step::Poll => Fate::Unknown,
                _ => Fate::NotDelivered,
            },
        }
    }
}

/// Which rows a chunk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Upserted,
    Deleted,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Upserted => "upserted",
            Kind::Deleted => "deleted",
        }
    }
}

/// Whether sending the same request again can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// 5xx, 429, timeouts, connection errors, and 401/403 (an operator can fix the key):
    /// retried with backoff.
    Transient,
    /// The request itself is refused (a 400 on create): the same body fails again until
    /// the configuration changes. Retried with backoff, never bisected.
    Permanent,
    /// The batch's data is refused (a 400 on upload, a job that ended ERROR with a data
    /// error in its logs): some rows fail whatever is retried, so they are isolated.
    BadData,
}

/// Whether a job's log lines describe a data error (a row or column the service refused),
/// rather than a failure of the service.
pub fn is_data_error(logs: &[String]) -> bool {
    logs.iter().any(|line| {
        let line = line.to_ascii_lowercase();
        line.contains("row") || line.contains("column")
    })
}

/// Celonis' own words in an error body: `frontendErrorKey`, `errors[0].error` and
/// `errorInformation` or `message`, when the body is such JSON; else the body.
pub fn error_text(body: &str) -> String {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        return body.to_owned();
    };
    let mut parts = Vec::new();
    for field in [
        json.get("frontendErrorKey"),
        json.pointer("/errors/0/error"),
        json.get("errorInformation").or_else(|| json.get("message")),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(text) = field.as_str().filter(|t| !t.is_empty()) {
            parts.push(text.to_owned());
        }
    }
    if parts.is_empty() {
        body.to_owned()
    } else {
        parts.join(": ")
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

/// The create body's `tableSchema`: every column of the CSV with its type, in CSV order;
/// `pkField` marks the sink's `keys`.
fn table_schema(table_name: &str, table: &TableSpec, keys: &[String]) -> serde_json::Value {
    let columns: Vec<serde_json::Value> = table
        .columns
        .iter()
        .map(|c| {
            serde_json::json!({
                "columnName": c.name,
                "columnType": c.ty.as_str(),
                "fieldLength": c.length,
                "decimals": c.decimals,
                "pkField": keys.contains(&c.name),
            })
        })
        .collect();
    serde_json::json!({ "tableName": table_name, "columns": columns })
}

/// The pool's jobs URL, `{url}{api_prefix}/api/v1/data-push/{pool}/jobs` (no trailing slash).
pub fn jobs_url(sink: &CelonisSink) -> String {
    let base = sink.base_url.as_str().trim_end_matches('/');
    format!(
        "{base}{}/api/v1/data-push/{}/jobs",
        sink.api_prefix, sink.data_pool_id
    )
}

/// Adds the sink's `Authorization` header: `AppKey <key>`, `Bearer <key>`, or `Bearer <token>`
/// with OAuth (`token` is the current access token; without one the request goes unsigned).
pub fn authorize(
    req: reqwest::RequestBuilder,
    auth: &CelonisAuth,
    token: Option<&Secret>,
) -> reqwest::RequestBuilder {
    let value = match (auth, token) {
        (CelonisAuth::AppKey(k), _) => format!("AppKey {}", k.expose()),
        (CelonisAuth::ApiKey(k), _) => format!("Bearer {}", k.expose()),
        (CelonisAuth::OAuth2(_), Some(t)) => format!("Bearer {}", t.expose()),
        (CelonisAuth::OAuth2(_), None) => return req,
    };
    req.header(header::AUTHORIZATION, value)
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
    /// Jobs of this process whose every chunk was uploaded: a NEW one among them may be
    /// executed again; any other NEW job is deleted.
    uploaded: Mutex<HashSet<String>>,
}

impl CelonisClient {
    pub fn new(
        sink: CelonisSink,
        budget: Arc<JobBudget>,
        tokens: Option<Arc<TokenSource>>,
        observe: CallObserver,
    ) -> Result<CelonisClient, reqwest::Error> {
        let http = super::http_client(sink.request_timeout, sink.proxy.as_ref())?;
        let jobs_url = jobs_url(&sink);
        Ok(CelonisClient {
            http,
            sink,
            jobs_url,
            budget,
            tokens,
            observe,
            uploaded: Mutex::default(),
        })
    }

    pub fn budget(&self) -> &JobBudget {
        &self.budget
    }

    pub fn observe(&self) -> &CallObserver {
        &self.observe
    }

    fn uploaded(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        lock(&self.uploaded)
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
        authorize(req, &self.sink.auth, token)
    }

    /// Sends with auth. With OAuth, a 401 drops the token and the request is sent once more
    /// with a fresh one.
    async fn send_authorized(
        &self,
        step: Step,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Response, PushFailure> {
        let token = self.token(step).await?;
        self.budget.ready().await;
        let sent = self.auth(make(), token.as_ref()).send().await;
        let resp = self.observed(step, sent)?;
        match (&self.tokens, token) {
            (Some(tokens), Some(old)) if resp.status() == StatusCode::UNAUTHORIZED => {
                tracing::info!(%step, "oauth token refused, fetching a new one");
                tokens.reject(&old).await;
                let token = self.token(step).await?;
                self.budget.ready().await;
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
        if super::proxy_refused(&sent) {
            return Err(PushFailure::ProxyRefused {
                step,
                message: super::proxy_refusal(self.sink.proxy.as_ref()),
            });
        }
        sent.map_err(|source| PushFailure::Transport { step, source })
    }

    /// The create-job body: only the fields weir sets, no nulls (§8.2).
    pub fn job_body(&self, layout: &Layout) -> serde_json::Value {
        let table = layout.table(self.sink.fallback_varchar_length);
        let mut body = serde_json::json!({
            "type": self.sink.mode.as_str(),
            "fileType": self.sink.file_type.as_str(),
            "targetName": self.sink.target_name,
            "dataPoolId": self.sink.data_pool_id,
        });
        if self.sink.file_type == FileType::Csv {
            body["csvParsingOptions"] = super::csv::parsing_options(&self.sink.csv, &table);
        }
        body["tableSchema"] = table_schema(&self.sink.target_name, &table, &self.sink.keys);
        body["fallbackVarcharLength"] = self.sink.fallback_varchar_length.into();
        if !self.sink.keys.is_empty() {
            body["keys"] = self.sink.keys.clone().into();
        }
        if let Some(u) = self.sink.upsert_strategy {
            body["upsertStrategy"] = u.as_str().into();
        }
        if let Some(c) = &self.sink.connection_id {
            body["connectionId"] = c.clone().into();
        }
        body
    }

    /// Pushes one batch as one job and waits for it to finish. The batch's offsets are
    /// recorded as in flight before the job is created, then with the job's id. With keys,
    /// only the latest row of each key is sent (`batch::split`): as an upsert, or in the
    /// deleted chunk (key columns only) when it matches `delete_when`. The CSV chunks are
    /// written one at a time, each just before its upload. Returns the job id.
    pub async fn push(
        &self,
        layout: &Layout,
        entries: &[Entry],
        recorder: InFlightRecorder<'_>,
    ) -> Result<String, PushFailure> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Err(PushFailure::BadResponse {
                step: Step::Create,
                detail: "an empty batch makes no job".into(),
            });
        };
        let (first, last) = (first.offset, last.offset);
        let split = batch::split(
            layout,
            &self.sink.keys,
            self.sink.delete_when.as_ref(),
            self.sink.dedupe,
            entries,
        );
        let server_dedupe = self.server_dedupe();
        let upsert_layout = if server_dedupe {
            layout.clone().with_seq(batch::SEQ_COLUMN)
        } else {
            layout.clone()
        };
        let delete_layout = layout.only(&self.sink.keys);
        self.budget.acquire().await.map_err(PushFailure::Budget)?;
        recorder
            .set(InFlight {
                first,
                last,
                job_id: None,
            })
            .await?;
        let job_id = self.create(&upsert_layout).await?;
        let staged = async {
            recorder
                .set(InFlight {
                    first,
                    last,
                    job_id: Some(job_id.clone()),
                })
                .await?;
            if !split.upserts.is_empty() || split.deletes.is_empty() {
                for chunk in self.chunks(&upsert_layout, &split.upserts) {
                    self.upload(&job_id, Kind::Upserted, axum::body::Bytes::from(chunk?))
                        .await?;
                }
            }
            if !split.deletes.is_empty() {
                for chunk in self.chunks(&delete_layout, &split.deletes) {
                    self.upload(&job_id, Kind::Deleted, axum::body::Bytes::from(chunk?))
                        .await?;
                }
            }
            Ok::<_, PushFailure>(())
        }
        .await;
        if let Err(e) = staged {
            // The job was never executed: remove it and its staged chunks.
            self.delete(&job_id).await;
            return Err(e);
        }
        self.uploaded().insert(job_id.clone());
        self.run(&job_id).await?;
        Ok(job_id)
    }

    /// A batch's chunks in the sink's file type, written one at a time as they are asked for.
    pub fn chunks<'a>(
        &'a self,
        layout: &'a Layout,
        entries: &'a [Entry],
    ) -> Box<dyn Iterator<Item = Result<Vec<u8>, PushFailure>> + Send + 'a> {
        match self.sink.file_type {
            FileType::Csv => Box::new(
                Chunks::new(layout, entries, &self.sink.csv, self.sink.chunk_bytes)
                    .map(|c| c.map_err(PushFailure::from)),
            ),
            FileType::Parquet { rows_per_chunk } => {
                let table = layout.table(self.sink.fallback_varchar_length);
                Box::new(
                    ParquetChunks::new(layout, &table, entries, rows_per_chunk)
                        .map(|c| c.map_err(PushFailure::from)),
                )
            }
        }
    }

    /// Whether Celonis removes a key's duplicates (by `weir_seq`), not weir.
    fn server_dedupe(&self) -> bool {
        !self.sink.keys.is_empty() && self.sink.dedupe == Dedupe::Server
    }

    /// Executes an uploaded job and waits for it. A failure that leaves the job known not
    /// executed deletes it; any other leaves it to be settled.
    async fn run(&self, job_id: &str) -> Result<(), PushFailure> {
        if let Err(e) = self.execute(job_id).await {
            if e.fate() == Fate::NotDelivered {
                self.uploaded().remove(job_id);
                self.delete(job_id).await;
            }
            return Err(e);
        }
        let done = self.wait_done(job_id).await;
        if !matches!(done, Err(ref e) if e.fate() == Fate::Unknown) {
            self.uploaded().remove(job_id);
        }
        done
    }

    /// Settles a batch that was in flight: at the last stop, or when a run of this process
    /// ended with an unknown outcome. Polls the recorded job until it is terminal: DONE is
    /// `Delivered` (the batch must not be pushed again); ERROR, CANCELED or no such job is
    /// `NotDelivered`; a NEW job this process uploaded completely is executed again (no new
    /// upload), any other NEW job is deleted. An error leaves the outcome unknown.
    pub async fn settle(&self, batch: &InFlight) -> Result<Settled, PushFailure> {
        let Some(job_id) = &batch.job_id else {
            return Ok(Settled::NotDelivered);
        };
        let job = match self.get_job(job_id).await {
            Ok(job) => job,
            Err(PushFailure::Http { status: 404, .. }) => {
                self.uploaded().remove(job_id);
                return Ok(Settled::NotDelivered);
            }
            Err(e) => return Err(e),
        };
        let finished = |done: Result<(), PushFailure>| match done {
            Ok(()) => Ok(Settled::Delivered),
            Err(PushFailure::JobFailed { .. }) => Ok(Settled::NotDelivered),
            Err(e) => Err(e),
        };
        match job.status.as_deref() {
            Some("DONE") => {
                self.uploaded().remove(job_id);
                Ok(Settled::Delivered)
            }
            Some("ERROR" | "CANCELED") => {
                self.uploaded().remove(job_id);
                Ok(Settled::NotDelivered)
            }
            Some("QUEUED" | "RUNNING") => {
                let done = self.wait_done(job_id).await;
                if !matches!(done, Err(ref e) if e.fate() == Fate::Unknown) {
                    self.uploaded().remove(job_id);
                }
                finished(done)
            }
            Some("NEW") if self.uploaded().contains(job_id) => {
                tracing::info!(job = %job_id, "executing the uploaded job again");
                finished(self.run(job_id).await)
            }
            Some("NEW") => {
                self.delete(job_id).await;
                Ok(Settled::NotDelivered)
            }
            other => Err(PushFailure::BadResponse {
                step: Step::Poll,
                detail: format!("job status {other:?} is not a Data Push status"),
            }),
        }
    }

    async fn get_job(&self, job_id: &str) -> Result<JobView, PushFailure> {
        let url = format!("{}/{job_id}", self.jobs_url);
        let resp = self.send(Step::Poll, || self.http.get(&url)).await?;
        read_job(Step::Poll, resp).await
    }

    async fn create(&self, layout: &Layout) -> Result<String, PushFailure> {
        let url = format!("{}/", self.jobs_url);
        let body = self.job_body(layout);
        let resp = self
            .send(Step::Create, || self.http.post(&url).json(&body))
            .await?;
        let job = read_job(Step::Create, resp).await?;
        job.id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| PushFailure::BadResponse {
                step: Step::Create,
                detail: "the created job has no id".into(),
            })
    }

    /// Uploads one CSV chunk. The chunk is shared, not copied, by each attempt's body.
    async fn upload(
        &self,
        job_id: &str,
        kind: Kind,
        chunk: axum::body::Bytes,
    ) -> Result<(), PushFailure> {
        let url = format!("{}/{job_id}/chunks/{}", self.jobs_url, kind.as_str());
        let (extension, mime) = match self.sink.file_type {
            FileType::Csv => ("csv", "text/csv"),
            // What pycelonis' upload of a pyarrow file sends.
            FileType::Parquet { .. } => ("parquet", "application/octet-stream"),
        };
        let file_name = format!("{}.{extension}", self.sink.target_name);
        let part = || {
            reqwest::multipart::Part::stream_with_length(chunk.clone(), chunk.len() as u64)
                .file_name(file_name.clone())
        };
        self.send(Step::Upload, || {
            // Both types always parse; keep the part untyped rather than fail if one did not.
            let part = part().mime_str(mime).unwrap_or_else(|_| part());
            self.http
                .post(&url)
                .multipart(reqwest::multipart::Form::new().part("file", part))
        })
        .await?;
        Ok(())
    }

    async fn execute(&self, job_id: &str) -> Result<(), PushFailure> {
        let url = self.execute_url(job_id);
        self.send(Step::Execute, || self.http.post(&url)).await?;
        Ok(())
    }

    /// The execute call: `POST …/jobs/{id}`, with `?duplicateRemovalColumn=weir_seq` when
    /// Celonis removes a key's duplicates.
    pub fn execute_url(&self, job_id: &str) -> String {
        if self.server_dedupe() {
            format!(
                "{}/{job_id}?duplicateRemovalColumn={}",
                self.jobs_url,
                batch::SEQ_COLUMN
            )
        } else {
            format!("{}/{job_id}", self.jobs_url)
        }
    }

    /// Polls until DONE (Ok), ERROR or CANCELED (JobFailed), or the poll timeout. Passing
    /// failures of a poll (5xx, 429, network) do not end the wait: the job is already running.
    async fn wait_done(&self, job_id: &str) -> Result<(), PushFailure> {
        let start = tokio::time::Instant::now();
        let deadline = start.checked_add(self.sink.poll_timeout).unwrap_or(start);
        let mut i = 0;
        loop {
            tokio::time::sleep(poll_delay(i)).await;
            i = i.saturating_add(1);
            match self.get_job(job_id).await {
                Ok(job) => match job.status.as_deref() {
                    Some("DONE") => return Ok(()),
                    Some(s @ ("ERROR" | "CANCELED")) => {
                        return Err(PushFailure::JobFailed {
                            job_id: job_id.to_owned(),
                            status: s.to_owned(),
                            logs: job.logs.unwrap_or_default(),
                        });
                    }
                    _ => {}
                },
                Err(
                    e @ PushFailure::Http {
                        kind:
                            FailureKind::Credentials | FailureKind::NotFound | FailureKind::Refused,
                        ..
                    },
                ) => {
                    return Err(e);
                }
                Err(e @ PushFailure::BadResponse { .. }) => return Err(e),
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

    /// Deletes a job known to be NEW. While the team asked to wait, the job is left alone
    /// instead: a NEW job never runs, and a run must not stall for the wait.
    async fn delete(&self, job_id: &str) {
        if self.budget.deferred() {
            tracing::info!(
                job = job_id,
                "team asked to wait; unexecuted job left undeleted"
            );
            return;
        }
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
        let retry_after = super::retry_after(resp.headers());
        if status == StatusCode::TOO_MANY_REQUESTS {
            // No call of any kind goes to the team before the wait is over.
            self.budget
                .defer(retry_after.unwrap_or(Duration::from_secs(1)));
        }
        let mut resp = resp;
        let body = super::error_body(&mut resp).await;
        Err(PushFailure::Http {
            step,
            status: status.as_u16(),
            kind: classify(status),
            body,
            retry_after,
        })
    }
}

/// Reads a job's JSON, at most [`MAX_JOB_BODY`] bytes of it.
async fn read_job(step: Step, mut resp: Response) -> Result<JobView, PushFailure> {
    let (bytes, more) = super::read_limited(&mut resp, MAX_JOB_BODY)
        .await
        .map_err(|source| PushFailure::Transport { step, source })?;
    if more {
        return Err(PushFailure::BadResponse {
            step,
            detail: format!("the body is larger than {} KiB", MAX_JOB_BODY >> 10),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| PushFailure::BadResponse {
        step,
        detail: format!("body is not a job: {e}"),
    })
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
    fn data_errors_are_told_from_service_failures() {
        let failed = |logs: &[&str]| PushFailure::JobFailed {
            job_id: "j".into(),
            status: "ERROR".into(),
            logs: logs.iter().map(|l| (*l).to_owned()).collect(),
        };
        assert_eq!(
            failed(&["chunk 1, row 3, column Price: the value \"x\" could not be parsed"]).class(),
            ErrorClass::BadData
        );
        assert_eq!(
            failed(&["internal error, try again"]).class(),
            ErrorClass::Transient
        );
        let http = |step, status| PushFailure::Http {
            step,
            status,
            kind: classify(StatusCode::from_u16(status).unwrap()),
            body: r#"{"frontendErrorKey":"INVALID_CHUNK","errors":[{"error":"bad row 3"}]}"#.into(),
            retry_after: None,
        };
        assert_eq!(http(Step::Upload, 400).class(), ErrorClass::BadData);
        assert_eq!(http(Step::Create, 400).class(), ErrorClass::Permanent);
        for status in [401, 403, 429, 500, 503] {
            assert_eq!(http(Step::Upload, status).class(), ErrorClass::Transient);
        }
        assert_eq!(
            http(Step::Upload, 400).reason(),
            "upload chunk: HTTP 400: INVALID_CHUNK: bad row 3"
        );
    }

    #[test]
    fn polling_backs_off_like_pycelonis() {
        let delays: Vec<u64> = (0..5).map(|i| poll_delay(i).as_millis() as u64).collect();
        assert_eq!(delays, [100, 300, 900, 2000, 2000]);
        assert_eq!(poll_delay(u32::MAX), Duration::from_secs(2));
    }
}

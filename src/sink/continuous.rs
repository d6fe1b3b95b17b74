//! The Celonis Continuous Batch Processing client (`api = "continuous"`): each run's batch is
//! one typed Parquet file, uploaded with one multipart `POST …/items`; a 200 with the item's
//! JSON means Celonis has the file. No job, no poll, no job budget; a per-team rate
//! (`[celonis] uploads_per_second`) keeps the uploads polite. Follows
//! ../shared/reference/celonis-continuous-ingestion.md ("The upload call").
//!
//! With `keys`, every row carries weir's order column ([`crate::config::ORDER_COLUMN`], the
//! row's queue offset) named in `duplicateRemovalOrderColumn`, so whichever file Celonis
//! loads last, the latest row of a key wins. That also makes an upload repeated after a lost
//! answer harmless; without keys a repeat appends the rows again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::batch::{self, ColumnsError};
use super::budget::JobBudget;
use super::celonis::{FailureKind, authorize, classify};
use super::csv::Layout;
use super::oauth::{OAuthError, TokenSource};
use super::parquet::{ParquetChunkError, ParquetChunks};
use super::{CallObserver, Fate};
use crate::config::{CelonisSink, Dedupe, Secret};
use crate::queue::Entry;

/// The most bytes of an item's JSON weir reads.
const MAX_ITEM_BODY: usize = 1 << 20;
/// The label of the upload call in metrics.
const ENDPOINT: &str = "continuous_upload";

/// Why an upload did not deliver its batch. In every case the batch stays queued.
#[derive(Debug, thiserror::Error)]
pub enum UploadFailure {
    #[error("upload file: HTTP {status} ({kind}): {body}")]
    Http {
        status: u16,
        kind: FailureKind,
        body: String,
        retry_after: Option<Duration>,
    },
    #[error("upload file: {0}")]
    Transport(#[source] reqwest::Error),
    #[error("upload file: unexpected response: {0}")]
    BadResponse(String),
    #[error("writing Parquet: {0}")]
    Parquet(#[from] ParquetChunkError),
    #[error("persisting the table's columns: {0}")]
    Columns(#[source] ColumnsError),
    #[error("upload file: no OAuth token: {0}")]
    Token(#[source] OAuthError),
    #[error("upload file: {0}")]
    ProxyRefused(String),
}

impl UploadFailure {
    /// How long the server asked us to wait (429 `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            UploadFailure::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the batch's rows are the cause: a 400 (Celonis refuses the file, in plain
    /// text) or a queued value that no longer parses as its column's type. Everything else
    /// (5xx, 429, 401/403, 404, timeouts, connection errors) is retried as it is.
    pub fn bad_data(&self) -> bool {
        matches!(
            self,
            UploadFailure::Http { status: 400, .. }
                | UploadFailure::Parquet(ParquetChunkError::Value { .. })
        )
    }

    /// The service's reason for a refused batch, for the dead-letter file.
    pub fn reason(&self) -> String {
        match self {
            UploadFailure::Http { status, body, .. } => {
                format!(
                    "upload file: HTTP {status}: {}",
                    super::celonis::error_text(body)
                )
            }
            other => other.to_string(),
        }
    }

    /// An upload has no job to look up: whatever happened, the batch is uploaded again
    /// (once its answer is lost, at least once; with keys a repeat changes nothing).
    pub fn fate(&self) -> Fate {
        Fate::NotDelivered
    }
}

/// The 200 answer: the item Celonis made of the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    pub id: String,
    #[serde(default)]
    pub file_name: Option<String>,
    #[serde(default)]
    pub bucket_id: Option<String>,
    #[serde(default)]
    pub flush_status: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
}

/// The upload URL without its query: `{url}/continuous-batch-processing/api/v1/{pool}/items`.
pub fn items_url(sink: &CelonisSink) -> String {
    let base = sink.base_url.as_str().trim_end_matches('/');
    format!(
        "{base}/continuous-batch-processing/api/v1/{}/items",
        sink.data_pool_id
    )
}

/// The upload's query parameters, in the connector's order: `targetName`, `connectionId`
/// (if set), `clientId`, `fallbackVarcharLength`, and with keys `primaryKeys` (comma-separated)
/// and `duplicateRemovalOrderColumn` (weir's order column).
pub fn query(sink: &CelonisSink, client_id: &str) -> Vec<(&'static str, String)> {
    let mut q = vec![("targetName", sink.target_name.clone())];
    if let Some(c) = &sink.connection_id {
        q.push(("connectionId", c.clone()));
    }
    q.push(("clientId", client_id.to_owned()));
    q.push((
        "fallbackVarcharLength",
        sink.fallback_varchar_length.to_string(),
    ));
    if !sink.keys.is_empty() {
        q.push(("primaryKeys", sink.keys.join(",")));
        q.push(("duplicateRemovalOrderColumn", batch::SEQ_COLUMN.to_owned()));
    }
    q
}

/// The layout with weir's order column last. A field of the rows named like it (only
/// possible without `columns` and schema: config refuses a declared one) is left out, so
/// the file never has the column twice.
pub fn with_order_column(layout: &Layout) -> Layout {
    let mut layout = layout.clone();
    if layout.exprs.is_empty()
        && let Some(i) = layout
            .headers
            .iter()
            .position(|h| h.eq_ignore_ascii_case(batch::SEQ_COLUMN))
    {
        tracing::warn!(
            field = %layout.headers[i],
            "a row field named like the order column is not sent"
        );
        layout.headers.remove(i);
        layout.sources.remove(i);
        if i < layout.typings.len() {
            layout.typings.remove(i);
        }
    }
    layout.with_seq(batch::SEQ_COLUMN)
}

/// A client for one pipeline's continuous sink.
pub struct ContinuousClient {
    http: reqwest::Client,
    sink: CelonisSink,
    url: String,
    query: Vec<(&'static str, String)>,
    /// The team's upload rate (and its "not before" after a 429); never a job budget.
    rate: Arc<JobBudget>,
    tokens: Option<Arc<TokenSource>>,
    observe: CallObserver,
}

impl ContinuousClient {
    pub fn new(
        sink: CelonisSink,
        client_id: &str,
        rate: Arc<JobBudget>,
        tokens: Option<Arc<TokenSource>>,
        observe: CallObserver,
    ) -> Result<ContinuousClient, reqwest::Error> {
        Ok(ContinuousClient {
            http: super::http_client(sink.request_timeout, sink.proxy.as_ref())?,
            url: items_url(&sink),
            query: query(&sink, client_id),
            sink,
            rate,
            tokens,
            observe,
        })
    }

    pub fn observe(&self) -> &CallObserver {
        &self.observe
    }

    /// The rows one file carries and their layout: with keys, only the latest row of each
    /// key (arrival order), each with the order column; without, every row.
    fn file(&self, layout: &Layout, entries: &[Entry]) -> (Layout, Vec<Entry>) {
        if self.sink.keys.is_empty() {
            return (layout.clone(), entries.to_vec());
        }
        let split = batch::split(layout, &self.sink.keys, None, Dedupe::Client, entries);
        (with_order_column(layout), split.upserts)
    }

    /// The batch as one Parquet file.
    pub fn parquet(&self, layout: &Layout, entries: &[Entry]) -> Result<Vec<u8>, UploadFailure> {
        let (layout, rows) = self.file(layout, entries);
        let table = layout.table(self.sink.fallback_varchar_length);
        let mut files = ParquetChunks::new(&layout, &table, &rows, rows.len().max(1));
        // One chunk of `rows.len()` rows: the iterator always gives at least one.
        Ok(files.next().transpose()?.unwrap_or_default())
    }

    /// Uploads the batch as one file and returns the item Celonis made of it.
    pub async fn upload(&self, layout: &Layout, entries: &[Entry]) -> Result<Item, UploadFailure> {
        let file = axum::body::Bytes::from(self.parquet(layout, entries)?);
        let file_name = format!("{}.parquet", self.sink.target_name);
        let make = || {
            let part =
                reqwest::multipart::Part::stream_with_length(file.clone(), file.len() as u64)
                    .file_name(file_name.clone());
            // A constant type that always parses; keep the part untyped rather than fail.
            let part = match part.mime_str("application/octet-stream") {
                Ok(p) => p,
                Err(_) => {
                    reqwest::multipart::Part::bytes(file.to_vec()).file_name(file_name.clone())
                }
            };
            self.http
                .post(&self.url)
                .query(&self.query)
                .multipart(reqwest::multipart::Form::new().part("file", part))
        };
        let resp = self.send(make).await?;
        let item = read_item(resp).await?;
        tracing::info!(
            item = %item.id,
            bucket = item.bucket_id.as_deref().unwrap_or("-"),
            flush_status = item.flush_status.as_deref().unwrap_or("-"),
            file = item.file_name.as_deref().unwrap_or("-"),
            rows = entries.len(),
            bytes = file.len(),
            "file uploaded"
        );
        Ok(item)
    }

    async fn token(&self) -> Result<Option<Secret>, UploadFailure> {
        match &self.tokens {
            None => Ok(None),
            Some(t) => t.token().await.map(Some).map_err(UploadFailure::Token),
        }
    }

    /// Sends with auth, at the team's upload rate. With OAuth, a 401 drops the token and
    /// the upload is sent once more with a fresh one. Any non-2xx becomes `Http`.
    async fn send(
        &self,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Response, UploadFailure> {
        let token = self.token().await?;
        self.wait_turn().await;
        let mut resp = self.observed(
            authorize(make(), &self.sink.auth, token.as_ref())
                .send()
                .await,
        )?;
        if let (Some(tokens), Some(old)) = (&self.tokens, token)
            && resp.status() == StatusCode::UNAUTHORIZED
        {
            tracing::info!("oauth token refused, fetching a new one");
            tokens.reject(&old).await;
            let token = self.token().await?;
            self.wait_turn().await;
            resp = self.observed(
                authorize(make(), &self.sink.auth, token.as_ref())
                    .send()
                    .await,
            )?;
        }
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = super::retry_after(resp.headers());
        if status == StatusCode::TOO_MANY_REQUESTS {
            self.rate
                .defer(retry_after.unwrap_or(Duration::from_secs(1)));
        }
        let body = super::error_body(&mut resp).await;
        Err(UploadFailure::Http {
            status: status.as_u16(),
            kind: classify(status),
            body,
            retry_after,
        })
    }

    /// Waits for a server-requested pause to end and for the next upload of the team's rate.
    async fn wait_turn(&self) {
        self.rate.ready().await;
        // An in-memory rate never fails to persist; should it, the upload goes anyway.
        if let Err(e) = self.rate.acquire().await {
            tracing::warn!(error = %e, "upload rate unavailable");
        }
    }

    fn observed(&self, sent: Result<Response, reqwest::Error>) -> Result<Response, UploadFailure> {
        self.observe
            .call(ENDPOINT, sent.as_ref().ok().map(|r| r.status().as_u16()));
        if super::proxy_refused(&sent) {
            return Err(UploadFailure::ProxyRefused(super::proxy_refusal(
                self.sink.proxy.as_ref(),
            )));
        }
        sent.map_err(UploadFailure::Transport)
    }
}

/// Reads the item's JSON, at most [`MAX_ITEM_BODY`] bytes of it. A body cut off by a
/// dropped connection is a transport failure: the upload is repeated.
async fn read_item(mut resp: Response) -> Result<Item, UploadFailure> {
    let (bytes, more) = super::read_limited(&mut resp, MAX_ITEM_BODY)
        .await
        .map_err(UploadFailure::Transport)?;
    if more {
        return Err(UploadFailure::BadResponse(format!(
            "the body is larger than {} KiB",
            MAX_ITEM_BODY >> 10
        )));
    }
    let item: Item = serde_json::from_slice(&bytes)
        .map_err(|e| UploadFailure::BadResponse(format!("body is not an item: {e}")))?;
    if item.id.is_empty() {
        return Err(UploadFailure::BadResponse("the item has no id".into()));
    }
    Ok(item)
}

/// The file that holds this weir's `clientId`, in the data directory.
pub const CLIENT_ID_FILE: &str = "client-id.json";
const CLIENT_ID_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct ClientIdFile {
    version: u32,
    client_id: String,
}

/// Why the client id could not be read or made.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct ClientIdError {
    path: PathBuf,
    problem: String,
}

/// This weir's stable `clientId`: read from `{data_dir}/client-id.json`, or made once
/// (`weir-` and a random UUID) and written there atomically. A file weir cannot read is an
/// error, never silently replaced: a new id would make this weir a new client.
pub fn client_id(data_dir: &Path) -> Result<String, ClientIdError> {
    let path = data_dir.join(CLIENT_ID_FILE);
    let error = |problem: String| ClientIdError {
        path: path.clone(),
        problem,
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let file: ClientIdFile = serde_json::from_slice(&bytes)
                .map_err(|e| error(format!("not a client id file: {e}")))?;
            if file.version != CLIENT_ID_VERSION {
                return Err(error(format!(
                    "version {} is not {CLIENT_ID_VERSION}",
                    file.version
                )));
            }
            if file.client_id.is_empty() {
                return Err(error("the client id is empty".into()));
            }
            Ok(file.client_id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("weir-{}", uuid::Uuid::new_v4());
            write_client_id(&path, &id).map_err(|e| error(e.to_string()))?;
            Ok(id)
        }
        Err(e) => Err(error(e.to_string())),
    }
}

/// Writes the file atomically: temp file, fsync, rename, fsync the directory.
fn write_client_id(path: &Path, id: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let body = serde_json::to_vec(&ClientIdFile {
        version: CLIENT_ID_VERSION,
        client_id: id.to_owned(),
    })
    .map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::{Config, SinkConfig};

    fn sink(extra: &str) -> CelonisSink {
        let text = format!(
            r#"
[[pipelines]]
name = "orders"
[pipelines.sink]
kind = "celonis"
api = "continuous"
url = "https://team.eu-1.celonis.cloud/"
data_pool_id = "8f2c1f9e-0000-4000-8000-000000000001"
target_name = "Orders"
app_key = "k"
{extra}
"#
        );
        let config = Config::load(&text, &HashMap::new()).unwrap();
        match &config.pipelines[0].sink {
            SinkConfig::Celonis(c) => c.clone(),
            SinkConfig::Http(_) => unreachable!("a celonis sink"),
        }
    }

    #[test]
    fn the_upload_url_and_query_follow_the_connector() {
        let s = sink("");
        assert_eq!(
            items_url(&s),
            "https://team.eu-1.celonis.cloud/continuous-batch-processing/api/v1/8f2c1f9e-0000-4000-8000-000000000001/items"
        );
        assert_eq!(
            query(&s, "weir-1"),
            [
                ("targetName", "Orders".to_owned()),
                ("clientId", "weir-1".to_owned()),
                ("fallbackVarcharLength", "255".to_owned()),
            ]
        );
        let s =
            sink("keys = [\"a\", \"b\"]\nconnection_id = \"conn\"\nfallback_varchar_length = 80");
        assert_eq!(
            query(&s, "weir-1"),
            [
                ("targetName", "Orders".to_owned()),
                ("connectionId", "conn".to_owned()),
                ("clientId", "weir-1".to_owned()),
                ("fallbackVarcharLength", "80".to_owned()),
                ("primaryKeys", "a,b".to_owned()),
                ("duplicateRemovalOrderColumn", "weir_seq".to_owned()),
            ]
        );
    }

    #[test]
    fn a_400_is_bad_data_and_every_other_failure_is_retried() {
        let http = |status: u16| UploadFailure::Http {
            status,
            kind: classify(StatusCode::from_u16(status).unwrap()),
            body: "row 3, column Price: not a number".into(),
            retry_after: None,
        };
        assert!(http(400).bad_data());
        assert_eq!(
            http(400).reason(),
            "upload file: HTTP 400: row 3, column Price: not a number"
        );
        for status in [401, 403, 404, 429, 500, 503] {
            assert!(!http(status).bad_data(), "{status}");
        }
        assert!(!UploadFailure::BadResponse("x".into()).bad_data());
        assert_eq!(http(500).fate(), Fate::NotDelivered);
    }

    #[test]
    fn a_row_field_named_like_the_order_column_gives_way_to_it() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let layout = Layout {
            headers: names(&["id", "WEIR_SEQ", "v"]),
            sources: names(&["id", "WEIR_SEQ", "v"]),
            ..Layout::default()
        };
        let file = with_order_column(&layout);
        assert_eq!(file.headers, names(&["id", "v", "weir_seq"]));
        assert_eq!(file.sources, names(&["id", "v", ""]));
        assert_eq!(file.seq, Some(2));
    }

    #[test]
    fn the_client_id_is_made_once_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = client_id(dir.path()).unwrap();
        assert!(first.starts_with("weir-"), "{first}");
        assert_eq!(client_id(dir.path()).unwrap(), first);
        let on_disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(CLIENT_ID_FILE)).unwrap())
                .unwrap();
        assert_eq!(
            on_disk,
            serde_json::json!({"version": 1, "client_id": first})
        );
        std::fs::write(
            dir.path().join(CLIENT_ID_FILE),
            b"{\"version\": 2, \"client_id\": \"x\"}",
        )
        .unwrap();
        let err = client_id(dir.path()).unwrap_err().to_string();
        assert!(err.contains("version 2"), "{err}");
    }
}

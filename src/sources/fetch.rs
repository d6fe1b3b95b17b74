//! Business events with a download URL (`[pipelines.fetch]`): each event row names a file
//! (FinOps' `DownloadURL`, valid for an hour); weir downloads and unpacks it with
//! [`package`](super::package) and queues its rows, all-or-nothing per file, with
//! `Pipeline::push` as ingest does. `mode = "inline"` downloads before the event's answer;
//! `mode = "deferred"` records each download as a pending task in `{data_dir}/fetches.json`
//! (replaced durably) and a worker runs it at once. A task leaves the file only after its
//! rows are queued or it went to the dead-letter file, so a crash resumes it at start-up.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use super::package::{self, PackageError, host};
use super::{BearerToken, authorize, screen_package};
use crate::config::{FetchConfig, FetchMode};
use crate::ingest::parse::Limits;
use crate::ingest::{Fetched, Fetches, IngestError};
use crate::pipeline::{Counters, Pipeline};
use crate::queue::PushError;
use crate::row::{Kind, Row};

/// The version of `fetches.json` this build reads and writes.
const VERSION: u32 = 1;

/// The first wait before a download is tried again; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long the worker waits before offering a file's rows to a full queue again.
const QUEUE_FULL_WAIT: Duration = Duration::from_secs(1);

/// One pipeline's downloads: its config, HTTP client and token.
pub struct Fetch {
    pub pipeline: Arc<Pipeline>,
    pub config: FetchConfig,
    /// Built with the fetch's timeout and proxy; redirects to another host are refused.
    pub http: reqwest::Client,
    pub token: Option<Arc<dyn BearerToken>>,
    pub limits: Limits,
}

/// A download recorded for the worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Task {
    id: u64,
    pipeline: String,
    /// The URL as the event gave it (with its signature); kept only in this file.
    url: String,
    /// The event's `event_fields`, added to each row of the file.
    fields: Vec<EventField>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct EventField {
    name: String,
    kind: String,
    text: String,
}

/// A download an event asks for: its URL and the event fields for its rows.
type Wanted = (Url, Vec<EventField>);

/// `fetches.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    version: u32,
    next_id: u64,
    tasks: Vec<Task>,
}

/// Why a download yielded no rows.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{0}")]
    Package(#[from] PackageError),
    #[error("the file from {host}: {detail}")]
    Rows { host: String, detail: String },
    #[error("the token request for {host} failed: {detail}")]
    Token { host: String, detail: String },
    #[error(transparent)]
    Queue(PushError),
}

impl FetchError {
    /// Worth trying again: a transport error, a 5xx or a 429, a token that did not come.
    fn transient(&self) -> bool {
        match self {
            FetchError::Package(PackageError::Transport { .. }) | FetchError::Token { .. } => true,
            FetchError::Package(PackageError::Status { status, .. }) => {
                *status >= 500 || *status == 429
            }
            _ => false,
        }
    }
}

/// The downloads of every pipeline with `[pipelines.fetch]`, and the pending tasks.
pub struct Fetcher {
    fetches: HashMap<String, Fetch>,
    path: PathBuf,
    pending: Mutex<Pending>,
    wake: Notify,
}

impl Fetcher {
    /// Reads the pending tasks of `{data_dir}/fetches.json` (none when there is no file).
    /// Tasks of a pipeline that no longer fetches are an error: they would be lost.
    pub fn open(fetches: Vec<Fetch>, data_dir: &std::path::Path) -> anyhow::Result<Fetcher> {
        let path = data_dir.join("fetches.json");
        let pending = match std::fs::read(&path) {
            Ok(bytes) => {
                let p: Pending = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!("{} is not a file of pending downloads: {e}", path.display())
                })?;
                if p.version != VERSION {
                    anyhow::bail!(
                        "{} has version {}; this weir reads version {VERSION}",
                        path.display(),
                        p.version
                    );
                }
                p
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Pending {
                version: VERSION,
                next_id: 1,
                tasks: Vec::new(),
            },
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        };
        let fetches: HashMap<String, Fetch> = fetches
            .into_iter()
            .map(|f| (f.pipeline.name().to_owned(), f))
            .collect();
        if let Some(t) = pending
            .tasks
            .iter()
            .find(|t| !fetches.contains_key(&t.pipeline))
        {
            anyhow::bail!(
                "{} holds a pending download of pipeline {}, which has no [pipelines.fetch] now: restore it, or remove the task by hand",
                path.display(),
                t.pipeline
            );
        }
        if !pending.tasks.is_empty() {
            tracing::info!(
                tasks = pending.tasks.len(),
                "resuming pending downloads of business events"
            );
        }
        Ok(Fetcher {
            fetches,
            path,
            pending: Mutex::new(pending),
            wake: Notify::new(),
        })
    }

    /// Runs the pending tasks, oldest first, until `stop` is cancelled (a download cut
    /// short stays pending).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let next = self.pending.lock().await.tasks.first().cloned();
            let Some(task) = next else {
                tokio::select! {
                    () = self.wake.notified() => continue,
                    () = stop.cancelled() => return,
                }
            };
            tokio::select! {
                () = self.run_task(task) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    async fn run_task(&self, task: Task) {
        let Some(fetch) = self.fetches.get(&task.pipeline) else {
            return; // refused by `open`
        };
        let event = fields_row(&task.fields);
        let outcome = match Url::parse(&task.url) {
            Ok(url) => fetch.download_and_queue(&url, event.as_ref()).await,
            Err(_) => Err((
                FetchError::Rows {
                    host: "?".to_owned(),
                    detail: "the event's URL is not a URL".to_owned(),
                },
                1,
            )),
        };
        match outcome {
            Ok(rows) => {
                tracing::info!(pipeline = task.pipeline, rows, "business event file queued");
            }
            Err((FetchError::Queue(e), _)) => {
                // Closing: the task stays pending for the next start.
                tracing::info!(pipeline = task.pipeline, error = %e, "download left pending");
                return;
            }
            Err((e, tries)) => {
                let reason = tried(&e, tries);
                tracing::warn!(pipeline = task.pipeline, error = %e, "business event file dead-lettered");
                let record = failed_event(&task, &fetch.config.url_field);
                if let Err(io) =
                    crate::dead_letter::record_failed_fetch(&fetch.pipeline, record, reason).await
                {
                    tracing::error!(pipeline = task.pipeline, error = %io, "the dead letters cannot be written; the download stays pending");
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                    return;
                }
                Counters::add(&fetch.pipeline.counters.dead_lettered, 1);
            }
        }
        if let Err(e) = self.remove(task.id).await {
            tracing::error!(error = %e, "fetches.json cannot be written; a queued file may be fetched again after a restart");
            tokio::time::sleep(QUEUE_FULL_WAIT).await;
        }
    }

    async fn remove(&self, id: u64) -> std::io::Result<()> {
        let mut pending = self.pending.lock().await;
        let before = pending.tasks.len();
        pending.tasks.retain(|t| t.id != id);
        if pending.tasks.len() == before {
            return Ok(());
        }
        self.persist(&pending).await
    }

    async fn persist(&self, pending: &Pending) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(pending).map_err(std::io::Error::other)?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || crate::durable::replace(&path, &bytes))
            .await
            .map_err(std::io::Error::other)?
    }

    /// The downloads an event asks for: (URL, event fields) of each row `when` accepts and
    /// whose `url_field` is a URL; the number of the other rows.
    fn wanted(fetch: &Fetch, events: &[Row]) -> Result<(Vec<Wanted>, usize), IngestError> {
        let c = &fetch.config;
        let mut wanted = Vec::new();
        let mut ignored = 0;
        for (i, row) in events.iter().enumerate() {
            if let Some(when) = &c.when {
                let value = crate::expr::row_value(row);
                match when.eval_bool(&[("row", &value)]) {
                    Ok(true) => {}
                    Ok(false) => {
                        ignored += 1;
                        continue;
                    }
                    Err(e) => {
                        return Err(IngestError::RowsExpression(format!(
                            "row {i}: fetch.when {:?} failed: {e}",
                            when.source()
                        )));
                    }
                }
            }
            let Some(field) = row.get(&c.url_field).filter(|f| !f.text.is_empty()) else {
                ignored += 1;
                continue;
            };
            let url = Url::parse(field.text)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    IngestError::MalformedBody(format!(
                        "row {i}: \"{}\" is not an http(s) URL",
                        c.url_field
                    ))
                })?;
            let fields = c
                .event_fields
                .iter()
                .filter_map(|name| row.get(name))
                .map(|f| EventField {
                    name: f.name.to_owned(),
                    kind: kind_name(f.kind).to_owned(),
                    text: f.text.to_owned(),
                })
                .collect();
            wanted.push((url, fields));
        }
        Ok((wanted, ignored))
    }
}

impl Fetches for Fetcher {
    fn fetch<'a>(
        &'a self,
        pipeline: &'a Arc<Pipeline>,
        events: Vec<Row>,
    ) -> Pin<Box<dyn Future<Output = Result<Fetched, IngestError>> + Send + 'a>> {
        Box::pin(async move {
            let fetch = self
                .fetches
                .get(pipeline.name())
                .ok_or(IngestError::Internal("no downloader for this pipeline"))?;
            let (wanted, ignored) = Fetcher::wanted(fetch, &events)?;
            Counters::add(&pipeline.counters.ignored, ignored as u64);
            match fetch.config.mode {
                FetchMode::Inline => fetch.inline(wanted, ignored).await,
                FetchMode::Deferred => {
                    let n = wanted.len();
                    if n > 0 {
                        let mut pending = self.pending.lock().await;
                        let before = pending.tasks.len();
                        for (url, fields) in wanted {
                            let id = pending.next_id;
                            pending.next_id += 1;
                            pending.tasks.push(Task {
                                id,
                                pipeline: pipeline.name().to_owned(),
                                url: url.to_string(),
                                fields,
                            });
                        }
                        if let Err(e) = self.persist(&pending).await {
                            pending.tasks.truncate(before);
                            tracing::error!(error = %e, "fetches.json cannot be written");
                            return Err(IngestError::QueueUnavailable(format!(
                                "the pending downloads cannot be recorded: {e}"
                            )));
                        }
                        drop(pending);
                        self.wake.notify_one();
                    }
                    Ok(Fetched {
                        accepted: 0,
                        ignored,
                        fetched: None,
                        fetches_queued: Some(n),
                    })
                }
            }
        })
    }
}

impl Fetch {
    /// `mode = "inline"`: every file is downloaded and read first, then all their rows are
    /// queued in one push, so a failure queues nothing.
    async fn inline(&self, wanted: Vec<Wanted>, ignored: usize) -> Result<Fetched, IngestError> {
        let mut rows = Vec::new();
        let files = wanted.len();
        for (url, fields) in &wanted {
            let event = fields_row(fields);
            let (file_rows, file_ignored) =
                self.download_with_retries(url, event.as_ref())
                    .await
                    .map_err(|(e, tries)| IngestError::FetchFailed(tried(&e, tries)))?;
            Counters::add(&self.pipeline.counters.ignored, file_ignored);
            rows.extend(file_rows);
        }
        let accepted = rows.len();
        if accepted > 0 {
            self.pipeline.push(rows).await.map_err(|e| {
                Counters::add(&self.pipeline.counters.rejected, accepted as u64);
                crate::ingest::push_error(&self.pipeline, e)
            })?;
        }
        self.pipeline.counters.accept(accepted as u64);
        Ok(Fetched {
            accepted,
            ignored,
            fetched: Some(files),
            fetches_queued: None,
        })
    }

    /// Downloads one file (with retries) and queues its rows in one push. Returns how many.
    /// A full or failing queue is offered the same rows again (the file is not downloaded
    /// again); only a closing queue gives up, leaving the task pending.
    async fn download_and_queue(
        &self,
        url: &Url,
        event: Option<&Row>,
    ) -> Result<u64, (FetchError, u32)> {
        let (rows, ignored) = self.download_with_retries(url, event).await?;
        Counters::add(&self.pipeline.counters.ignored, ignored);
        let n = rows.len() as u64;
        if n == 0 {
            return Ok(0);
        }
        loop {
            match self.pipeline.push(rows.clone()).await {
                Ok(_) => break,
                Err(PushError::Closed) => return Err((FetchError::Queue(PushError::Closed), 1)),
                Err(e) => {
                    tracing::warn!(pipeline = self.pipeline.name(), error = %e, "the queue refused a file's rows; offering them again");
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                }
            }
        }
        self.pipeline.counters.accept(n);
        Ok(n)
    }

    /// The rows of the file at `url`, tried `1 + retries` times while the failure is
    /// transient. (rows, ignored by the schema)
    async fn download_with_retries(
        &self,
        url: &Url,
        event: Option<&Row>,
    ) -> Result<(Vec<Row>, u64), (FetchError, u32)> {
        let mut wait = FIRST_BACKOFF;
        let mut tries = 0;
        loop {
            tries += 1;
            match self.download(url, event).await {
                Ok(rows) => return Ok(rows),
                Err(e) if e.transient() && tries <= self.config.retries => {
                    tracing::info!(pipeline = self.pipeline.name(), error = %e, tries, "download failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err((e, tries)),
            }
        }
    }

    async fn download(
        &self,
        url: &Url,
        event: Option<&Row>,
    ) -> Result<(Vec<Row>, u64), FetchError> {
        let c = &self.config;
        let file_host = host(url);
        let request = authorize(self.http.get(url.clone()), &c.auth, self.token.as_deref())
            .await
            .map_err(|detail| FetchError::Token {
                host: file_host.clone(),
                detail,
            })?;
        let body = package::download(request, url, c.max_bytes).await?;
        let name = url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .filter(|s| !s.is_empty())
            .unwrap_or("package.zip")
            .to_owned();
        let limits = self.limits;
        let (format, entries, max_bytes, csv) = (c.format, c.entries.clone(), c.max_bytes, c.csv);
        let read_host = file_host.clone();
        let pkg = tokio::task::spawn_blocking(move || {
            let reading = package::Reading {
                format,
                entries: &entries,
                max_bytes,
                csv,
            };
            package::read_with(&body, &name, &read_host, &reading, &limits)
        })
        .await
        .map_err(|e| FetchError::Rows {
            host: file_host.clone(),
            detail: format!("reading it failed: {e}"),
        })??;
        let (rows, ignored, _filtered) =
            screen_package(&self.pipeline.config, &pkg).map_err(|detail| FetchError::Rows {
                host: file_host.clone(),
                detail,
            })?;
        let rows = match event {
            Some(event) => rows
                .into_iter()
                .map(|r| with_event_fields(&r, event))
                .collect(),
            None => rows,
        };
        Ok((rows, ignored))
    }
}

/// A failed download as the dead-letter file and a 502 say it.
fn tried(e: &FetchError, tries: u32) -> String {
    match tries {
        1 => e.to_string(),
        n => format!("{e} (after {n} tries)"),
    }
}

/// `row` with the fields of `event` it lacks added at its end.
fn with_event_fields(row: &Row, event: &Row) -> Row {
    let mut b = Row::builder();
    for f in row.fields() {
        // Names of a row are unique, so this cannot fail.
        let _ = b.push(f.name, f.kind, f.text);
    }
    for f in event.fields() {
        if row.get(f.name).is_none() {
            let _ = b.push(f.name, f.kind, f.text);
        }
    }
    b.finish()
}

fn fields_row(fields: &[EventField]) -> Option<Row> {
    if fields.is_empty() {
        return None;
    }
    let mut b = Row::builder();
    for f in fields {
        let _ = b.push(&f.name, kind_of(&f.kind), &f.text);
    }
    Some(b.finish())
}

/// What the dead-letter file keeps of a failed download: the URL without its query string
/// (which carries a signature) and the event fields.
fn failed_event(task: &Task, url_field: &str) -> Row {
    let url = match Url::parse(&task.url) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.to_string()
        }
        Err(_) => String::new(),
    };
    let mut b = Row::builder();
    let _ = b.push(url_field, Kind::String, &url);
    for f in &task.fields {
        let _ = b.push(&f.name, kind_of(&f.kind), &f.text);
    }
    b.finish()
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::String => "string",
        Kind::Number => "number",
        Kind::Bool => "bool",
        Kind::Null => "null",
        Kind::Json => "json",
    }
}

fn kind_of(name: &str) -> Kind {
    match name {
        "number" => Kind::Number,
        "bool" => Kind::Bool,
        "null" => Kind::Null,
        "json" => Kind::Json,
        _ => Kind::String,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_lettered_download_keeps_the_host_and_path_but_never_the_query() {
        let task = Task {
            id: 1,
            pipeline: "p".to_owned(),
            url: "https://u:pw@files.example/pkg/1.zip?sig=SECRET&se=2026".to_owned(),
            fields: vec![EventField {
                name: "EntityName".to_owned(),
                kind: "string".to_owned(),
                text: "Customer groups".to_owned(),
            }],
        };
        let row = failed_event(&task, "DownloadURL");
        let text = format!("{row:?}");
        assert!(text.contains("https://files.example/pkg/1.zip"), "{text}");
        assert!(!text.contains("SECRET") && !text.contains("pw"), "{text}");
        assert!(text.contains("Customer groups"), "{text}");
    }

    #[test]
    fn event_fields_are_added_unless_the_file_row_has_them() {
        let file = Row::from_pairs([("ID", "1"), ("EntityName", "own")]).unwrap();
        let event = fields_row(&[
            EventField {
                name: "EntityName".to_owned(),
                kind: "string".to_owned(),
                text: "event".to_owned(),
            },
            EventField {
                name: "BusinessEventId".to_owned(),
                kind: "string".to_owned(),
                text: "E1".to_owned(),
            },
        ])
        .unwrap();
        let row = with_event_fields(&file, &event);
        assert_eq!(row.get("EntityName").unwrap().text, "own");
        assert_eq!(row.get("BusinessEventId").unwrap().text, "E1");
        assert_eq!(row.len(), 3);
    }
}

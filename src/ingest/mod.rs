//! The webhook intake: `/hooks/{pipeline}` turns a request into rows, checks the sender and
//! the data, and queues every row of the request or none of them.
//!
//! Architecture Invariant: ingest never talks to a sink; it only pushes to a pipeline's queue.

pub mod auth;
pub mod client;
pub mod dry_run;
pub mod error;
pub mod parse;
pub mod replay;
pub mod schema;
pub mod screen;
mod shared;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::{
    AuthConfig, AuthMethod, OnMismatch, PipelineConfig, RateLimit, ServerLimits, SuccessResponse,
};
use crate::metrics::Metrics;
use crate::pipeline::{Counters, Pipeline};
use crate::preview::Preview;
use crate::queue::PushError;
use crate::row::Row;
pub use error::IngestError;
use parse::{Limit, Limits, ParseError};
use replay::Replays;
use schema::Source;

type Limiter = governor::DefaultDirectRateLimiter;

/// Bodies larger than this are parsed on tokio's blocking pool, so a costly body never
/// holds an async worker (and with it the admin API and every other request).
const INLINE_PARSE_BYTES: usize = 64 * 1024;

/// A pipeline as ingest sees it.
struct Entry {
    pipeline: Arc<Pipeline>,
    limiter: Option<Arc<Limiter>>,
    /// Delivery ids accepted recently, for senders whose preset names one.
    replays: Option<Arc<Replays>>,
    /// What the sink would send, for dry runs.
    preview: Option<Arc<dyn Preview>>,
}

/// What a pipeline with `[pipelines.fetch]` does with a request's event rows (wired by
/// `app.rs`; the sources module downloads): with `mode = "inline"`, download each file and
/// queue its rows before answering; with `mode = "deferred"`, record the downloads durably
/// for a worker. Either way ingest itself queues none of those rows.
pub trait Fetches: Send + Sync {
    fn fetch<'a>(
        &'a self,
        pipeline: &'a Arc<Pipeline>,
        events: Vec<Row>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Fetched, IngestError>> + Send + 'a>,
    >;
}

/// The answer to a business event: rows queued (inline), events ignored (no URL, or `when`
/// false), and downloads recorded for the worker (deferred).
#[derive(Debug, Default, Serialize)]
pub struct Fetched {
    pub accepted: usize,
    pub ignored: usize,
    /// Inline: the files downloaded and queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched: Option<usize>,
    /// Deferred: the downloads recorded as pending tasks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetches_queued: Option<usize>,
}

/// The pipelines' sinks as dry runs see them, by pipeline name (wired by `app.rs`).
pub type Previews = HashMap<String, Arc<dyn Preview>>;

/// What the ingest router needs: the pipelines by name (with their rate limiters) and the
/// request limits.
#[derive(Clone)]
pub struct IngestState {
    pipelines: Arc<HashMap<String, Entry>>,
    /// Each hook (the URL segment) and its pipelines, in config order: the first checks the
    /// sender and answers.
    hooks: Arc<HashMap<String, Vec<String>>>,
    /// One lock per shared hook: its requests check every queue's room and push in turn.
    hook_locks: Arc<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    max_body_bytes: usize,
    limits: Arc<ServerLimits>,
    /// Body bytes being read, parsed or queued, over all requests: one permit per byte.
    in_flight: Arc<Semaphore>,
    /// Permits of `in_flight` in all.
    in_flight_capacity: usize,
    /// Cancelled when shutdown starts: new requests get 503 from then on.
    stopping: CancellationToken,
    metrics: Arc<Metrics>,
    /// The downloads of pipelines with `[pipelines.fetch]`.
    fetches: Option<Arc<dyn Fetches>>,
}

impl IngestState {
    pub fn new(
        pipelines: &[Arc<Pipeline>],
        previews: &Previews,
        max_body_bytes: usize,
        limits: ServerLimits,
        stopping: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> IngestState {
        let in_flight_capacity = limits
            .max_body_bytes_in_flight
            .min(Semaphore::MAX_PERMITS)
            .min(u32::MAX as usize);
        let mut hooks: HashMap<String, Vec<String>> = HashMap::new();
        for p in pipelines {
            hooks
                .entry(p.config.hook.clone())
                .or_default()
                .push(p.name().to_owned());
        }
        let hook_locks = hooks
            .iter()
            .filter(|(_, members)| members.len() > 1)
            .map(|(h, _)| (h.clone(), Arc::new(tokio::sync::Mutex::new(()))))
            .collect();
        IngestState {
            hooks: Arc::new(hooks),
            hook_locks: Arc::new(hook_locks),
            pipelines: Arc::new(
                pipelines
                    .iter()
                    .map(|p| {
                        let entry = Entry {
                            pipeline: p.clone(),
                            limiter: p.config.rate_limit.map(|r| Arc::new(limiter(r))),
                            replays: p.config.auth.as_ref().and_then(replay::for_auth),
                            preview: previews.get(p.name()).cloned(),
                        };
                        (p.name().to_owned(), entry)
                    })
                    .collect(),
            ),
            max_body_bytes,
            limits: Arc::new(limits),
            in_flight: Arc::new(Semaphore::new(in_flight_capacity)),
            in_flight_capacity,
            stopping,
            metrics,
            fetches: None,
        }
    }

    /// Hands the event rows of pipelines with `[pipelines.fetch]` to `fetches`.
    pub fn with_fetches(mut self, fetches: Arc<dyn Fetches>) -> IngestState {
        self.fetches = Some(fetches);
        self
    }

    fn parse_limits(&self) -> Limits {
        parse_limits(&self.limits, self.max_body_bytes)
    }
}

/// The parsers' limits of a server's config.
pub fn parse_limits(limits: &ServerLimits, max_body_bytes: usize) -> Limits {
    Limits {
        max_rows: limits.max_rows_per_request,
        max_fields_per_row: limits.max_fields_per_row,
        max_field_name_bytes: limits.max_field_name_bytes,
        max_row_bytes: max_body_bytes,
        max_depth: limits.max_depth,
    }
}

/// `count` requests per `per`, refilled evenly, in bursts of up to `count`.
fn limiter(r: RateLimit) -> Limiter {
    let quota = governor::Quota::with_period(r.per / r.count.get())
        .unwrap_or_else(|| governor::Quota::per_second(r.count))
        .allow_burst(r.count);
    governor::RateLimiter::direct(quota)
}

/// The public listener's routes: the hooks and `/healthz`.
pub fn router(state: IngestState) -> Router {
    Router::new()
        .route("/hooks/{name}", any(hook))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state(state)
}

/// What a request that passed every check gets.
enum Answer {
    /// Its rows were queued (or it replays a delivery that was), with an offset at or after
    /// its last row when it queued any.
    Queued(Accepted, Option<crate::queue::Offset>),
    /// `?dry_run=true`: what would happen, with nothing queued.
    DryRun(Box<dry_run::DryRun>),
    /// A request on a shared hook, queued across its pipelines (or, with `dry_run`, the
    /// JSON of what would be).
    Shared(shared::Routed),
    SharedDryRun(serde_json::Value),
    /// A business event: its downloads ran (inline) or were recorded (deferred).
    Fetched(Fetched),
}

/// weir's own query parameters: never a field of a query-string row.
const OWN_PARAMS: [&str; 2] = ["dry_run", "wait"];

/// Whether the query string asks for a dry run (`dry_run=true` or `dry_run=1`).
fn wants_dry_run(query: Option<&str>) -> bool {
    query_param(query, "dry_run").is_some_and(|v| v == "true" || v == "1")
}

/// The first value of the query parameter `name`, as sent (not decoded).
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[derive(Serialize)]
struct Accepted {
    accepted: usize,
    ignored: usize,
}

async fn hook(
    State(state): State<IngestState>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // The pipeline that answers for the hook: its first.
    let lead = state
        .hooks
        .get(&name)
        .and_then(|m| m.first())
        .cloned()
        .unwrap_or_else(|| name.clone());
    match accept(&state, &name, peer, &method, &uri, &headers, body).await {
        Ok(Answer::DryRun(d)) => (StatusCode::OK, axum::Json(d)).into_response(),
        Ok(Answer::SharedDryRun(d)) => (StatusCode::OK, axum::Json(d)).into_response(),
        Ok(Answer::Fetched(f)) => match state.pipelines.get(&lead) {
            Some(entry) => success(&entry.pipeline.config.response, &f),
            None => IngestError::Internal("the pipeline went away").into_response(),
        },
        Ok(Answer::Shared(routed)) => match state.pipelines.get(&lead) {
            Some(entry) => success(&entry.pipeline.config.response, &routed),
            None => IngestError::Internal("the pipeline went away").into_response(),
        },
        Ok(Answer::Queued(a, last)) => match state.pipelines.get(&lead) {
            Some(entry) => match last {
                Some(last) if query_param(uri.query(), "wait") == Some("delivered") => {
                    wait_delivered(&state, &entry.pipeline, a, last).await
                }
                _ => success(&entry.pipeline.config.response, a),
            },
            None => IngestError::Internal("the pipeline went away").into_response(),
        },
        Err(e) => {
            match state.pipelines.get(&lead) {
                Some(entry) => entry.pipeline.counters.refuse(e.code()),
                None => {
                    state.metrics.unknown_pipeline_requests.inc();
                }
            }
            e.into_response()
        }
    }
}

/// `?wait=delivered`: holds the answer until the request's rows are committed in a
/// delivered job (200 with the job id), or answers 202 `queued` after the pipeline's
/// `wait_timeout` (or at shutdown); the rows stay queued then and are delivered later.
/// With `allow_sync`, asks the worker for a run now.
async fn wait_delivered(
    state: &IngestState,
    pipeline: &Pipeline,
    a: Accepted,
    last: crate::queue::Offset,
) -> Response {
    let mut delivered = pipeline.delivered();
    if pipeline.config.allow_sync {
        pipeline.want_run();
    }
    let covered = |d: &Option<crate::pipeline::DeliveredThrough>| {
        d.as_ref().is_some_and(|d| d.through >= last)
    };
    let waited = tokio::select! {
        r = tokio::time::timeout(pipeline.config.wait_timeout, delivered.wait_for(covered)) => {
            r.ok().and_then(|r| r.ok()).and_then(|d| d.clone())
        }
        () = state.stopping.cancelled() => None,
    };
    match waited {
        Some(d) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({
                "accepted": a.accepted,
                "ignored": a.ignored,
                "job_id": d.job_id,
                "delivered_at": humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(d.at_ms)
                ).to_string(),
            })),
        )
            .into_response(),
        None => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({
                "accepted": a.accepted,
                "ignored": a.ignored,
                "status": "queued",
            })),
        )
            .into_response(),
    }
}

/// The answer to a request whose rows were queued (or a replay of one): the pipeline's
/// `response`, by default 202 with `counts` (the counts, or for a shared hook the totals
/// and each pipeline's counts).
fn success(response: &SuccessResponse, counts: impl serde::Serialize) -> Response {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::ACCEPTED);
    if status == StatusCode::NO_CONTENT {
        return status.into_response();
    }
    match &response.body {
        None => (status, axum::Json(counts)).into_response(),
        Some(body) => (
            status,
            [(header::CONTENT_TYPE, response.content_type.clone())],
            body.clone(),
        )
            .into_response(),
    }
}

async fn accept(
    state: &IngestState,
    name: &str,
    peer: SocketAddr,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Answer, IngestError> {
    let members = state
        .hooks
        .get(name)
        .ok_or_else(|| IngestError::UnknownPipeline(name.to_owned()))?;
    let entry = state
        .pipelines
        .get(&members[0])
        .ok_or_else(|| IngestError::UnknownPipeline(name.to_owned()))?;
    let pipeline = &entry.pipeline;
    let group: Option<Vec<Arc<Pipeline>>> = (members.len() > 1).then(|| {
        members
            .iter()
            .filter_map(|m| state.pipelines.get(m).map(|e| e.pipeline.clone()))
            .collect()
    });
    if *method != Method::GET && *method != Method::POST {
        return Err(IngestError::MethodNotAllowed(method.to_string()));
    }
    let limits = &state.limits;
    let forwarded = client::address(
        peer.ip(),
        headers,
        &limits.trusted_proxies,
        limits.forwarded_header,
    );
    // A hop the trusted proxy could not name (`unknown`, an obfuscated `_name`) is refused,
    // never replaced by the proxy's own address: that address may be allowlisted.
    let Ok(client) = forwarded else {
        tracing::warn!(pipeline = name, proxy = %peer.ip(), "forwarded client address unreadable");
        return Err(IngestError::UnknownClient);
    };
    if let Some(allowed) = &pipeline.config.allow_ips
        && !allowed.iter().any(|net| net.contains(&client))
    {
        tracing::warn!(pipeline = name, client = %client, "client address not allowed");
        return Err(IngestError::Forbidden(client));
    }
    if state.stopping.is_cancelled() {
        return Err(IngestError::ShuttingDown);
    }
    // Tokens and passwords are checked before the body is read; signatures need the body.
    let signed = pipeline
        .config
        .auth
        .as_ref()
        .filter(|a| matches!(a.method, AuthMethod::Hmac(_)));
    if let Some(auth) = &pipeline.config.auth
        && signed.is_none()
    {
        sender_check(pipeline, auth, client, headers, uri.query(), &[])?;
    }
    let _permit = reserve_body_bytes(state, &body, headers)?;
    let body = tokio::time::timeout(
        limits.body_read_timeout,
        read_body(body, headers, state.max_body_bytes),
    )
    .await
    .map_err(|_| {
        tracing::warn!(pipeline = name, client = %client, "request body too slow");
        IngestError::RequestTimeout(limits.body_read_timeout)
    })??;
    if let Some(auth) = signed {
        let wire = [body.decoded.as_ref(), body.wire.as_ref()];
        let bodies = if body.compressed {
            &wire[..]
        } else {
            &wire[..1]
        };
        sender_check(pipeline, auth, client, headers, uri.query(), bodies)?;
    }
    let dry = wants_dry_run(uri.query());
    let mut query = uri.query().map(str::to_owned);
    if let Some(AuthMethod::Query(param)) = pipeline.config.auth.as_ref().map(|a| &a.method) {
        query = Some(auth::strip_query_param(
            query.as_deref().unwrap_or(""),
            param,
        ));
    }
    for param in OWN_PARAMS {
        if let Some(q) = &query {
            query = Some(auth::strip_query_param(q, param));
        }
    }
    if let Some(limiter) = &entry.limiter
        && let Err(not_until) = limiter.check()
    {
        use governor::clock::{Clock, DefaultClock};
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        Counters::add(&pipeline.counters.rate_limited, 1);
        tracing::debug!(pipeline = name, client = %client, "rate limited");
        return Err(IngestError::RateLimited {
            retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        });
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let parse_limits = state.parse_limits();
    if let Some(group) = group {
        if query_param(uri.query(), "wait").is_some() {
            return Err(IngestError::MalformedQuery(format!(
                "?wait waits for one pipeline's job, and hook \"{name}\" feeds {}",
                members.join(", ")
            )));
        }
        return accept_shared(state, name, group, &body.decoded, query, content_type, dry).await;
    }
    if pipeline.config.fetch.is_some() {
        if dry || query_param(uri.query(), "wait").is_some() {
            return Err(IngestError::MalformedQuery(format!(
                "pipeline {name} downloads the files its events name: ?dry_run and ?wait do not apply"
            )));
        }
        let fetches = state
            .fetches
            .clone()
            .ok_or(IngestError::Internal("no downloader for this pipeline"))?;
        let (events, _) = shaped_rows(
            &pipeline.config,
            &body.decoded,
            query.as_deref(),
            &content_type,
            &parse_limits,
        )?;
        let fetched = fetches.fetch(pipeline, events).await?;
        return Ok(Answer::Fetched(fetched));
    }
    if dry {
        let preview = entry
            .preview
            .clone()
            .ok_or(IngestError::Internal("no preview of this pipeline's sink"))?;
        let pipeline = pipeline.clone();
        let decoded = body.decoded.clone();
        let run = move || {
            dry_run::dry_run(
                &pipeline.config,
                &decoded,
                query.as_deref(),
                &content_type,
                &parse_limits,
                preview.as_ref(),
            )
        };
        let d = if body.decoded.len() > INLINE_PARSE_BYTES {
            tokio::task::spawn_blocking(run)
                .await
                .map_err(|_| IngestError::Internal("parsing the body failed"))??
        } else {
            run()?
        };
        return Ok(Answer::DryRun(Box::new(d)));
    }
    let mut reservation = None;
    let signed_id = signed.and_then(|auth| replay::delivery_id(auth, headers, &body.decoded));
    if let (Some(replays), Some(id)) = (&entry.replays, &signed_id) {
        match replays.check(id, crate::clock::unix_secs()) {
            replay::Check::New(r) => reservation = Some(r),
            replay::Check::Done(answer) => {
                tracing::info!(pipeline = name, client = %client, "replayed delivery answered again");
                Counters::add(&pipeline.counters.duplicate, answer.accepted as u64);
                return Ok(Answer::Queued(
                    Accepted {
                        accepted: answer.accepted,
                        ignored: answer.ignored,
                    },
                    None,
                ));
            }
            replay::Check::InProgress => return Err(IngestError::DuplicateInProgress),
        }
    }
    let (rows, ignored) = if body.decoded.len() > INLINE_PARSE_BYTES {
        let pipeline = pipeline.clone();
        let decoded = body.decoded.clone();
        tokio::task::spawn_blocking(move || {
            prepare(
                &pipeline,
                &decoded,
                query.as_deref(),
                &content_type,
                &parse_limits,
            )
        })
        .await
        .map_err(|_| IngestError::Internal("parsing the body failed"))??
    } else {
        prepare(
            pipeline,
            &body.decoded,
            query.as_deref(),
            &content_type,
            &parse_limits,
        )?
    };
    // The sender's name for this delivery, for a queue that uses it: the signed delivery id,
    // else an Idempotency-Key with the body it came with (a key reused for other rows must
    // not drop them).
    let delivery = if pipeline.names_deliveries() {
        signed_id.or_else(|| {
            headers.get("idempotency-key").map(|v| {
                [
                    b"idempotency-key ".as_slice(),
                    v.as_bytes(),
                    b"\n",
                    body.decoded.as_ref(),
                ]
                .concat()
            })
        })
    } else {
        None
    };
    let accepted = rows.len();
    let mut last = None;
    if accepted > 0 {
        last = Some(pipeline.push_delivery(rows, delivery).await.map_err(|e| {
            Counters::add(&pipeline.counters.rejected, accepted as u64);
            push_error(pipeline, e)
        })?);
    }
    pipeline.counters.accept(accepted as u64);
    Counters::add(&pipeline.counters.ignored, ignored as u64);
    if let Some(r) = reservation {
        r.accepted(
            replay::Answer { accepted, ignored },
            crate::clock::unix_secs(),
        );
    }
    Ok(Answer::Queued(Accepted { accepted, ignored }, last))
}

/// A request on a shared hook, past the sender check: parsed once (with the first
/// pipeline's `rows`), routed, then queued across the pipelines all-or-nothing. Under the
/// hook's lock every queue's room is checked before any push, so only a storage failure
/// of a later queue (a disk error) can leave earlier pipelines' rows queued; the request then
/// gets 503, and that is logged.
async fn accept_shared(
    state: &IngestState,
    hook: &str,
    group: Vec<Arc<Pipeline>>,
    decoded: &axum::body::Bytes,
    query: Option<String>,
    content_type: String,
    dry: bool,
) -> Result<Answer, IngestError> {
    let limits = state.parse_limits();
    let run = {
        let group = group.clone();
        let decoded = decoded.clone();
        move || -> Result<(Vec<shared::Share>, usize), IngestError> {
            let lead = &group[0].config;
            let (rows, source) =
                shaped_rows(lead, &decoded, query.as_deref(), &content_type, &limits)?;
            shared::route(&group, &rows, source)
        }
    };
    let routed = if decoded.len() > INLINE_PARSE_BYTES {
        tokio::task::spawn_blocking(run)
            .await
            .map_err(|_| IngestError::Internal("parsing the body failed"))?
    } else {
        run()
    };
    if dry {
        return Ok(Answer::SharedDryRun(match routed {
            Ok((shares, unrouted)) => {
                let mut answer =
                    serde_json::to_value(shared::counts(&shares, unrouted)).unwrap_or_default();
                answer["hook"] = hook.into();
                answer["dry_run"] = true.into();
                answer["status"] = group[0].config.response.status.into();
                for s in &shares {
                    if let Some(preview) = state
                        .pipelines
                        .get(s.pipeline.name())
                        .and_then(|e| e.preview.clone())
                    {
                        answer["pipelines"][s.pipeline.name()]["sink"] =
                            serde_json::to_value(preview.preview(&s.rows)).unwrap_or_default();
                    }
                }
                answer
            }
            Err(e) => serde_json::json!({
                "hook": hook,
                "dry_run": true,
                "status": e.parts().0.as_u16(),
                "error": e.code(),
                "message": e.to_string(),
            }),
        }));
    }
    let (shares, unrouted) = routed?;
    let lock = state
        .hook_locks
        .get(hook)
        .cloned()
        .ok_or(IngestError::Internal("no lock for a shared hook"))?;
    let _turn = lock.lock().await;
    for s in &shares {
        let bytes: u64 = s.rows.iter().map(|r| r.encoded_len() as u64).sum();
        if !s.rows.is_empty() && !s.pipeline.has_room(s.rows.len() as u64, bytes) {
            let total: usize = shares.iter().map(|s| s.rows.len()).sum();
            for s in &shares {
                Counters::add(&s.pipeline.counters.rejected, s.rows.len() as u64);
            }
            tracing::warn!(
                hook,
                pipeline = s.pipeline.name(),
                rows = total,
                "queue full"
            );
            return Err(IngestError::QueueFull {
                message: format!(
                    "the queue of pipeline {} cannot take {} more rows now, so no pipeline of hook \"{hook}\" took any",
                    s.pipeline.name(),
                    s.rows.len()
                ),
                retry_after: s.pipeline.retry_after_secs(),
            });
        }
    }
    let counts = shared::counts(&shares, unrouted);
    let mut queued: Vec<String> = Vec::new();
    for s in shares {
        let n = s.rows.len();
        if n > 0 {
            if let Err(e) = s.pipeline.push(s.rows).await {
                Counters::add(&s.pipeline.counters.rejected, n as u64);
                if !queued.is_empty() {
                    tracing::error!(hook, pipeline = s.pipeline.name(), queued = ?queued, error = %e, "a request on a shared hook was queued for some pipelines only");
                }
                return Err(push_error(&s.pipeline, e));
            }
            queued.push(s.pipeline.name().to_owned());
        }
        s.pipeline.counters.accept(n as u64);
        Counters::add(&s.pipeline.counters.ignored, s.ignored as u64);
    }
    Ok(Answer::Shared(counts))
}

/// Takes the body's bytes from the server-wide in-flight budget before any of it is read:
/// its length (Content-Length, 0 without a body), or `max_body_bytes` for a chunked body,
/// and `max_body_bytes` more for a gzip body's decompressed copy. The permit is held until
/// the rows are queued.
fn reserve_body_bytes(
    state: &IngestState,
    body: &Body,
    headers: &HeaderMap,
) -> Result<OwnedSemaphorePermit, IngestError> {
    let limit = state.max_body_bytes;
    let declared = HttpBody::size_hint(body).exact().map_or(limit, |n| {
        usize::try_from(n).unwrap_or(usize::MAX).min(limit)
    });
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity");
    let bytes = if gzip {
        declared.saturating_add(limit)
    } else {
        declared
    };
    // A body larger than the whole budget takes all of it rather than never fitting.
    let permits = u32::try_from(bytes.clamp(1, state.in_flight_capacity)).unwrap_or(u32::MAX);
    state
        .in_flight
        .clone()
        .try_acquire_many_owned(permits)
        .map_err(|_| {
            tracing::warn!(bytes, "request body bytes in flight at the limit");
            IngestError::Busy {
                limit: state.in_flight_capacity,
            }
        })
}

/// Turns a body (or the query string) into the rows to queue and the number ignored: parse,
/// schema, filter. Synchronous, so large bodies can run it on the blocking pool.
fn prepare(
    pipeline: &Pipeline,
    body: &[u8],
    query: Option<&str>,
    content_type: &str,
    limits: &Limits,
) -> Result<(Vec<Row>, usize), IngestError> {
    let (rows, source) = shaped_rows(&pipeline.config, body, query, content_type, limits)?;
    let (rows, ignored) = apply_schema(pipeline, rows, source)?;
    let (rows, filtered) = apply_filter(pipeline, rows);
    Ok((rows, ignored + filtered))
}

/// Runs the pipeline's sender check; a failure is logged and counted with its reason, and
/// answered with a 401 that names none.
fn sender_check(
    pipeline: &Pipeline,
    auth: &AuthConfig,
    client: IpAddr,
    headers: &HeaderMap,
    query: Option<&str>,
    bodies: &[&[u8]],
) -> Result<(), IngestError> {
    let request = auth::Request {
        headers,
        query,
        bodies,
        now: crate::clock::unix_secs(),
    };
    auth::check(auth, &request).map_err(|failure| {
        pipeline.counters.auth_failures.count(failure);
        tracing::warn!(pipeline = pipeline.name(), client = %client, reason = failure.reason(), "sender check failed");
        IngestError::Unauthorized
    })
}

/// A request body: what the parsers read and, for signatures, the bytes as sent.
struct ReadBody {
    decoded: Bytes,
    wire: Bytes,
    compressed: bool,
}

/// Reads the body within `limit` bytes, then decompresses `Content-Encoding: gzip` within
/// `limit` bytes too, so a small gzip bomb is refused with 413 instead of filling memory.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<ReadBody, IngestError> {
    let too_large = || IngestError::BodyTooLarge {
        limit,
        decompressed: false,
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("").trim().to_ascii_lowercase());
    let compressed = match encoding.as_deref() {
        None | Some("identity") => false,
        Some("gzip" | "x-gzip") => true,
        Some(other) => return Err(IngestError::UnsupportedEncoding(other.to_owned())),
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let wire = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let length_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if length_limit {
            too_large()
        } else {
            IngestError::BodyUnreadable(e.to_string())
        }
    })?;
    if !compressed {
        return Ok(ReadBody {
            decoded: wire.clone(),
            wire,
            compressed,
        });
    }
    let input = wire.clone();
    let decoded = tokio::task::spawn_blocking(move || gunzip(&input, limit))
        .await
        .map_err(|_| IngestError::Internal("decompressing the body failed"))?;
    match decoded {
        Gunzip::Ok(decoded) => Ok(ReadBody {
            decoded: decoded.into(),
            wire,
            compressed,
        }),
        Gunzip::TooLarge => Err(IngestError::BodyTooLarge {
            limit,
            decompressed: true,
        }),
        Gunzip::Invalid(e) => Err(IngestError::MalformedBody(format!(
            "the body is not valid gzip: {e}"
        ))),
    }
}

enum Gunzip {
    Ok(Vec<u8>),
    TooLarge,
    Invalid(std::io::Error),
}

/// Decompresses at most `limit + 1` bytes: reading one byte past the limit is how we know
/// the body is too large, without ever holding more.
fn gunzip(input: &[u8], limit: usize) -> Gunzip {
    use std::io::Read;
    let mut out = Vec::new();
    let reader = flate2::read::MultiGzDecoder::new(input);
    match reader.take(limit as u64 + 1).read_to_end(&mut out) {
        Ok(_) if out.len() > limit => Gunzip::TooLarge,
        Ok(_) => Gunzip::Ok(out),
        Err(e) => Gunzip::Invalid(e),
    }
}

/// A parse error as the answer: a limit gets its own code, anything else `otherwise`.
fn parse_refusal(e: ParseError, otherwise: fn(String) -> IngestError) -> IngestError {
    let message = e.to_string();
    match e.limit() {
        Some(Limit::Rows) => IngestError::TooManyRows(message),
        Some(Limit::FieldsPerRow) => IngestError::TooManyFields(message),
        Some(Limit::FieldNameBytes) => IngestError::FieldNameTooLong(message),
        Some(Limit::RowBytes) => IngestError::RowTooLarge(message),
        Some(Limit::Depth) => IngestError::MalformedBody(message),
        None => otherwise(message),
    }
}

fn rows_of(
    body: &[u8],
    query: Option<&str>,
    content_type: &str,
    limits: &Limits,
) -> Result<(Vec<Row>, Source), IngestError> {
    let bad = |e: ParseError| parse_refusal(e, IngestError::MalformedBody);
    if body.is_empty() {
        let query = query.unwrap_or("");
        let row = parse::form_within(query.as_bytes(), "query string", limits)
            .map_err(|e| parse_refusal(e, IngestError::MalformedQuery))?;
        if row.is_empty() {
            return Err(IngestError::NoRows);
        }
        return Ok((vec![row], Source::Text));
    }
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok((parse::json_within(body, limits).map_err(bad)?, Source::Json)),
        "application/x-ndjson"
        | "application/jsonl"
        | "application/x-jsonlines"
        | "application/jsonlines" => Ok((
            parse::ndjson_within(body, limits).map_err(bad)?,
            Source::Json,
        )),
        "application/x-www-form-urlencoded" => Ok((
            vec![parse::form_within(body, "form body", limits).map_err(bad)?],
            Source::Text,
        )),
        _ => Err(IngestError::UnsupportedMediaType(content_type.to_owned())),
    }
}

/// A request's rows: as parsed, or, with the pipeline's `rows` expression, what it makes
/// of the body. The body is then one value for the expression: the JSON document, each
/// NDJSON line in turn (their rows in order), or a form or query string as a map of text.
/// Each map the expression gives becomes a row exactly as a JSON object would (nested
/// objects flattened, every limit applied).
fn shaped_rows(
    config: &PipelineConfig,
    body: &[u8],
    query: Option<&str>,
    content_type: &str,
    limits: &Limits,
) -> Result<(Vec<Row>, Source), IngestError> {
    let Some(expr) = &config.rows else {
        return rows_of(body, query, content_type, limits);
    };
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let bad = |e: serde_json::Error| IngestError::MalformedBody(format!("malformed JSON: {e}"));
    let bodies: Vec<serde_json::Value> =
        if body.is_empty() || mime == "application/x-www-form-urlencoded" {
            // A form or query string: its one row, as a map of text.
            let (rows, _) = rows_of(body, query, content_type, limits)?;
            rows.iter()
                .map(|r| {
                    serde_json::Value::Object(
                        r.fields()
                            .map(|f| {
                                (
                                    f.name.to_owned(),
                                    serde_json::Value::String(f.text.to_owned()),
                                )
                            })
                            .collect(),
                    )
                })
                .collect()
        } else {
            match mime.as_str() {
                "application/json" => vec![serde_json::from_slice(body).map_err(bad)?],
                "application/x-ndjson"
                | "application/jsonl"
                | "application/x-jsonlines"
                | "application/jsonlines" => body
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                    .map(|l| serde_json::from_slice(l).map_err(bad))
                    .collect::<Result<_, _>>()?,
                _ => return Err(IngestError::UnsupportedMediaType(content_type.to_owned())),
            }
        };
    let mut objects = Vec::new();
    for b in bodies {
        let made = expr
            .eval_rows(&crate::expr::json_value(b))
            .map_err(|e| IngestError::RowsExpression(format!("{}: {e}", expr.source())))?;
        objects.extend(made.into_iter().map(serde_json::Value::Object));
    }
    if objects.is_empty() {
        return Ok((Vec::new(), Source::Json));
    }
    let array = serde_json::to_vec(&serde_json::Value::Array(objects)).map_err(|e| {
        IngestError::Internal(if e.is_io() {
            "writing rows"
        } else {
            "rendering rows"
        })
    })?;
    let rows = parse::json_within(&array, limits)
        .map_err(|e| parse_refusal(e, IngestError::MalformedBody))?;
    Ok((rows, Source::Json))
}

/// Checks a row against the pipeline's schema and its columns' types and lengths (the
/// Celonis sink declares every column's type and length: values are checked here): why it
/// does not match, or the row converted to its columns' canonical forms (`None`: unchanged).
fn check_row(
    config: &PipelineConfig,
    row: &Row,
    source: Source,
) -> Result<Option<Row>, schema::Mismatch> {
    let fallback = match &config.sink {
        crate::config::SinkConfig::Celonis(c) => Some(c.fallback_varchar_length),
        crate::config::SinkConfig::Http(_) => None,
    };
    let schema_cfg = config.schema.as_ref();
    if let Some(s) = schema_cfg {
        schema::check(s, row, source).map_err(|m| withheld(config, m))?;
    }
    // Right after the schema check: from here on only the pseudonymised row exists.
    let pseudonymised =
        (!config.pseudonymise.is_empty()).then(|| config.pseudonymise.apply(row.clone()));
    let current = pseudonymised.as_ref().unwrap_or(row);
    match fallback {
        Some(f) => {
            Ok(schema::check_columns(&config.columns, schema_cfg, f, current)?.or(pseudonymised))
        }
        None => Ok(pseudonymised),
    }
}

/// A schema mismatch of a pseudonymised field, without the value it quotes: the clear value
/// must not reach an answer, a log line or a dry run.
fn withheld(config: &PipelineConfig, mut m: schema::Mismatch) -> schema::Mismatch {
    if config.pseudonymise.method(&m.field).is_some()
        && let Some(at) = m.problem.find(" (got ")
    {
        m.problem.truncate(at);
        m.problem
            .push_str(" (the value is not shown: the field is pseudonymised)");
    }
    m
}

/// Keeps the rows that match the schema. In reject mode any mismatch refuses the request;
/// in ignore mode mismatching rows are dropped and counted.
fn apply_schema(
    pipeline: &Pipeline,
    rows: Vec<Row>,
    source: Source,
) -> Result<(Vec<Row>, usize), IngestError> {
    let config = &pipeline.config;
    let checked = config.schema.is_some()
        || matches!(config.sink, crate::config::SinkConfig::Celonis(_))
        || !config.pseudonymise.is_empty();
    if !checked {
        return Ok((rows, 0));
    }
    let on_mismatch = config
        .schema
        .as_ref()
        .map_or(OnMismatch::Reject, |s| s.on_mismatch);
    let total = rows.len();
    let mut kept = Vec::with_capacity(rows.len());
    let mut problems = Vec::new();
    for (i, row) in rows.into_iter().enumerate() {
        match check_row(config, &row, source) {
            Ok(converted) => kept.push(converted.unwrap_or(row)),
            Err(m) => {
                tracing::debug!(pipeline = pipeline.name(), row = i, field = %m.field, problem = %m.problem, "row does not match schema");
                problems.push(format!("row {i}: field \"{}\" {}", m.field, m.problem));
            }
        }
    }
    if !problems.is_empty() && on_mismatch == OnMismatch::Reject {
        Counters::add(&pipeline.counters.rejected, total as u64);
        let shown = problems.len().min(10);
        let mut message = problems[..shown].join("; ");
        if problems.len() > shown {
            message.push_str(&format!("; and {} more rows", problems.len() - shown));
        }
        return Err(IngestError::SchemaMismatch(message));
    }
    let ignored = problems.len();
    Ok((kept, ignored))
}

/// Whether the pipeline's `filter` keeps the row (always, without a filter). A filter that
/// cannot be evaluated on a row (not a bool, say) ignores the row.
fn passes_filter(config: &PipelineConfig, row: &Row) -> bool {
    let Some(filter) = &config.filter else {
        return true;
    };
    let name = crate::expr::pipeline_value(&config.name);
    let value = crate::expr::row_value(row);
    match filter.eval_bool(&[("row", &value), ("pipeline", &name)]) {
        Ok(keep) => keep,
        Err(e) => {
            tracing::debug!(pipeline = config.name, error = %e, "row filter failed; row ignored");
            false
        }
    }
}

/// Keeps the rows for which the pipeline's `filter` is true; the others are ignored and
/// counted.
fn apply_filter(pipeline: &Pipeline, rows: Vec<Row>) -> (Vec<Row>, usize) {
    if pipeline.config.filter.is_none() {
        return (rows, 0);
    }
    let total = rows.len();
    let kept: Vec<Row> = rows
        .into_iter()
        .filter(|row| passes_filter(&pipeline.config, row))
        .collect();
    let ignored = total - kept.len();
    (kept, ignored)
}

/// A queue's refusal as ingest answers it (also for rows the sources queue for a request).
pub fn push_error(pipeline: &Pipeline, e: PushError) -> IngestError {
    match e {
        PushError::FullRows { .. } | PushError::FullBytes { .. } => {
            tracing::warn!(pipeline = pipeline.name(), error = %e, "queue full");
            IngestError::QueueFull {
                message: e.to_string(),
                retry_after: pipeline.retry_after_secs(),
            }
        }
        PushError::Unavailable(_) => IngestError::QueueUnavailable(e.to_string()),
        PushError::Closed => IngestError::ShuttingDown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gz(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn gunzip_allows_exactly_the_limit_and_not_one_byte_more() {
        assert!(matches!(gunzip(&gz(&[b'a'; 100]), 100), Gunzip::Ok(v) if v.len() == 100));
        assert!(matches!(gunzip(&gz(&[b'a'; 101]), 100), Gunzip::TooLarge));
        assert!(matches!(gunzip(b"plain", 100), Gunzip::Invalid(_)));
        let two_members = [gz(b"ab"), gz(b"cd")].concat();
        assert!(matches!(gunzip(&two_members, 100), Gunzip::Ok(v) if v == b"abcd"));
    }
}

//! The admin API, on its own listener: pipeline state, pause/resume, flush, peek, reconcile,
//! replay, purge, dead letters; plus `/healthz`, `/readyz` and `/metrics`, which need no token.
//!
//! Every `/admin` route needs `Authorization: Bearer <token>`; a `read` token may inspect, a
//! `write` token may also change state. Errors use the same `{"error","message"}` body as
//! ingest.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::api_error::ApiError;
use crate::config::{AdminToken, QueueConfig, Scope};
use crate::metrics::Metrics;
use crate::pipeline::{Counters, Pipeline};
use crate::queue::{QueueError, now_ms};

mod page;
use crate::schedule::{ControlError, MAX_RECONCILE_PAGE, RunReport, SchedulerHandle};

/// Rows `GET /admin/pipelines/{name}/rows` returns at most per request.
pub const MAX_PEEK_ROWS: u64 = 400;

/// Every error answer of the admin API, rendered by one [`IntoResponse`] match as the
/// `{"error","message"}` body of [`ApiError`]. README's "Operating it" lists them.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no pipeline is named \"{0}\"")]
    UnknownPipeline(String),
    #[error("no such admin route")]
    NoSuchRoute,
    #[error("this route does not take that method")]
    MethodNotAllowed,
    #[error("send a valid admin token as Authorization: Bearer <token>")]
    Unauthorized,
    #[error("token \"{token}\" has read scope; this route needs write")]
    ReadScopeOnly { token: String },
    #[error("weir is starting or shutting down")]
    NotReady,
    #[error("query parameter {0} is required")]
    MissingParameter(&'static str),
    #[error("query parameter {key}={value:?} must be a whole number up to {max}")]
    BadParameter {
        key: &'static str,
        value: String,
        max: u64,
    },
    #[error(
        "query parameter {key}={value} is above the maximum of {max}; ask for at most {max} at a time"
    )]
    AboveMaximum {
        key: &'static str,
        value: u64,
        max: u64,
    },
    #[error("purging deletes every queued row: repeat with ?confirm=true")]
    ConfirmRequired,
    #[error("could not persist the pause flag: {0}")]
    StateNotSaved(#[source] std::io::Error),
    #[error("cannot read the dead letters: {0}")]
    DeadLetterUnreadable(#[source] std::io::Error),
    #[error("cannot queue the dead-lettered rows again: {0}")]
    RequeueFailed(#[source] crate::dead_letter::RequeueError),
    #[error("pipeline is paused: resume it before flushing")]
    Paused,
    #[error("weir is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Unsupported(&'static str),
    #[error(transparent)]
    OffsetGone(QueueError),
    #[error(transparent)]
    OffsetAhead(QueueError),
    #[error(transparent)]
    QueueFailed(QueueError),
    #[error("the payload is larger than server.max_body_bytes ({limit} bytes)")]
    PayloadTooLarge { limit: usize },
    #[error("the payload could not be read: {0}")]
    PayloadUnreadable(String),
}

impl AdminError {
    /// The HTTP status, the stable code, and the `Retry-After` seconds of each answer.
    pub fn parts(&self) -> (StatusCode, &'static str, Option<u64>) {
        match self {
            AdminError::UnknownPipeline(_) => (StatusCode::NOT_FOUND, "unknown_pipeline", None),
            AdminError::NoSuchRoute => (StatusCode::NOT_FOUND, "not_found", None),
            AdminError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", None)
            }
            AdminError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            AdminError::ReadScopeOnly { .. } => (StatusCode::FORBIDDEN, "forbidden", None),
            AdminError::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready", None),
            AdminError::MissingParameter(_) => (StatusCode::BAD_REQUEST, "missing_parameter", None),
            AdminError::BadParameter { .. } => (StatusCode::BAD_REQUEST, "bad_parameter", None),
            AdminError::AboveMaximum { .. } => (StatusCode::BAD_REQUEST, "above_maximum", None),
            AdminError::ConfirmRequired => (StatusCode::BAD_REQUEST, "confirm_required", None),
            AdminError::StateNotSaved(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "state_not_saved", None)
            }
            AdminError::DeadLetterUnreadable(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "dead_letter_unreadable",
                None,
            ),
            AdminError::RequeueFailed(crate::dead_letter::RequeueError::Queue(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "requeue_failed", Some(5))
            }
            AdminError::RequeueFailed(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "requeue_failed", None)
            }
            AdminError::Paused => (StatusCode::CONFLICT, "paused", None),
            AdminError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down", Some(5)),
            AdminError::Unsupported(_) => (StatusCode::CONFLICT, "unsupported", None),
            AdminError::OffsetGone(_) => (StatusCode::CONFLICT, "offset_gone", None),
            AdminError::OffsetAhead(_) => (StatusCode::BAD_REQUEST, "offset_ahead", None),
            AdminError::QueueFailed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "queue_failed", None),
            AdminError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", None)
            }
            AdminError::PayloadUnreadable(_) => (StatusCode::BAD_REQUEST, "body_unreadable", None),
        }
    }
}

impl From<ControlError> for AdminError {
    fn from(e: ControlError) -> AdminError {
        match e {
            ControlError::UnknownPipeline(n) => AdminError::UnknownPipeline(n),
            ControlError::Paused => AdminError::Paused,
            ControlError::Stopping => AdminError::ShuttingDown,
            ControlError::Queue(QueueError::Unsupported(m)) => AdminError::Unsupported(m),
            ControlError::Queue(q @ QueueError::OffsetGone { .. }) => AdminError::OffsetGone(q),
            ControlError::Queue(q @ QueueError::OffsetAhead { .. }) => AdminError::OffsetAhead(q),
            ControlError::Queue(q @ QueueError::Io(_)) => AdminError::QueueFailed(q),
            ControlError::Requeue(r) => AdminError::RequeueFailed(r),
        }
    }
}

impl From<QueueError> for AdminError {
    fn from(e: QueueError) -> AdminError {
        AdminError::from(ControlError::Queue(e))
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, code, retry_after) = self.parts();
        let mut error = ApiError::new(status, code, self.to_string());
        if let Some(secs) = retry_after {
            error = error.retry_after(secs);
        }
        let mut response = error.into_response();
        if matches!(self, AdminError::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Whether weir is ready for traffic: set once start-up finished, cleared when shutdown starts.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Dry runs of a payload against a pipeline, for the status page's "try a payload" box
/// (`POST /admin/pipelines/{name}/dry-run`). `app.rs` wires in ingest's, so this module never
/// names ingest or the sink.
pub trait Tryout: Send + Sync + 'static {
    /// What `POST /hooks/{pipeline}?dry_run=true` would answer for this body and media
    /// type, without the sender check: a 200 with the rows' verdicts and the sink's
    /// preview, or ingest's own error. The pipeline exists.
    fn dry_run(&self, pipeline: &str, body: &[u8], content_type: &str) -> Response;
    /// The largest body a hook takes (`server.max_body_bytes`).
    fn max_body_bytes(&self) -> usize;
}

/// What the admin router can reach.
#[derive(Clone)]
pub struct AdminState {
    pipelines: Arc<HashMap<String, Arc<Pipeline>>>,
    order: Arc<Vec<String>>,
    runs: SchedulerHandle,
    tokens: Arc<Vec<AdminToken>>,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    tryout: Option<Arc<dyn Tryout>>,
}

impl AdminState {
    pub fn new(
        pipelines: &[Arc<Pipeline>],
        runs: SchedulerHandle,
        tokens: Vec<AdminToken>,
        metrics: Arc<Metrics>,
        readiness: Readiness,
    ) -> AdminState {
        AdminState {
            pipelines: Arc::new(
                pipelines
                    .iter()
                    .map(|p| (p.name().to_owned(), p.clone()))
                    .collect(),
            ),
            order: Arc::new(pipelines.iter().map(|p| p.name().to_owned()).collect()),
            runs,
            tokens: Arc::new(tokens),
            metrics,
            readiness,
            tryout: None,
        }
    }

    /// Serves `POST /admin/pipelines/{name}/dry-run` with `tryout`.
    pub fn with_tryout(mut self, tryout: Arc<dyn Tryout>) -> AdminState {
        self.tryout = Some(tryout);
        self
    }

    fn pipeline(&self, name: &str) -> Result<&Arc<Pipeline>, AdminError> {
        self.pipelines
            .get(name)
            .ok_or_else(|| AdminError::UnknownPipeline(name.to_owned()))
    }
}

pub fn router(state: AdminState) -> Router {
    let read = Router::new()
        .route("/admin/pipelines", get(list))
        .route("/admin/pipelines/{name}", get(show))
        .route("/admin/pipelines/{name}/rows", get(peek))
        .route("/admin/pipelines/{name}/dead-letter", get(dead_letter))
        .route("/admin/pipelines/{name}/history", get(history))
        .route("/admin/pipelines/{name}/chart.svg", get(chart))
        .route("/admin/whoami", get(whoami))
        .route("/admin/pipelines/{name}/dry-run", post(dry_run))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_read));
    let write = Router::new()
        .route("/admin/pipelines/{name}/pause", patch(pause))
        .route("/admin/pipelines/{name}/resume", patch(resume))
        .route("/admin/pipelines/{name}/flush", post(flush))
        .route("/admin/pipelines/{name}/events", patch(reconcile))
        .route("/admin/pipelines/{name}/replay", patch(replay))
        .route("/admin/pipelines/{name}/rows", axum::routing::delete(purge))
        .route("/admin/pipelines/{name}/dead-letter/requeue", post(requeue))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_write));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(page::routes())
        .merge(read)
        .merge(write)
        .fallback(|| async { AdminError::NoSuchRoute })
        .method_not_allowed_fallback(|| async { AdminError::MethodNotAllowed })
        .with_state(state)
}

async fn require_read(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    authorize(&s, Scope::Read, req, next).await
}

async fn require_write(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    authorize(&s, Scope::Write, req, next).await
}

/// Who called, as the token check found them: for handlers that answer about the caller.
#[derive(Clone)]
struct Caller {
    name: String,
    scope: Scope,
}

async fn authorize(s: &AdminState, needed: Scope, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let found = presented.and_then(|p| find_token(&s.tokens, p));
    match found {
        None => {
            tracing::warn!(path = %req.uri().path(), "admin request without a valid token");
            AdminError::Unauthorized.into_response()
        }
        Some(t) if t.scope < needed => AdminError::ReadScopeOnly {
            token: t.name.clone(),
        }
        .into_response(),
        Some(t) => {
            if needed == Scope::Write {
                tracing::info!(token = %t.name, method = %req.method(), path = %req.uri().path(), "admin change");
            }
            req.extensions_mut().insert(Caller {
                name: t.name.clone(),
                scope: t.scope,
            });
            next.run(req).await
        }
    }
}

/// The configured token equal to `presented`. Both sides are hashed with SHA-256 first, so
/// the comparison takes the same time whatever the lengths, and every token is compared
/// without stopping early.
fn find_token<'a>(tokens: &'a [AdminToken], presented: &str) -> Option<&'a AdminToken> {
    let presented = Sha256::digest(presented.as_bytes());
    let mut found = None;
    for t in tokens {
        let equal: Choice = Sha256::digest(t.token.expose().as_bytes())
            .as_slice()
            .ct_eq(presented.as_slice());
        if bool::from(equal) {
            found = Some(t);
        }
    }
    found
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let waiting: Vec<String> = s
        .order
        .iter()
        .filter_map(|name| {
            let p = s.pipelines.get(name)?;
            let what = p.queue().waiting_for()?;
            Some(format!("pipeline {name} waits for {what}"))
        })
        .collect();
    if s.readiness.is_ready() && !waiting.is_empty() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_waiting",
            waiting.join("; "),
        )
        .into_response();
    }
    if s.readiness.is_ready() && s.runs.workers_running() {
        (StatusCode::OK, "ready").into_response()
    } else if s.readiness.is_ready() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "worker_stopped",
            "a pipeline worker stopped: its rows are no longer delivered",
        )
        .into_response()
    } else {
        AdminError::NotReady.into_response()
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[derive(Serialize)]
struct LastRun {
    at: String,
    rows: usize,
    job_id: Option<String>,
    outcome: crate::schedule::Outcome,
    error: Option<String>,
    duration_ms: u64,
}

impl From<RunReport> for LastRun {
    fn from(r: RunReport) -> LastRun {
        LastRun {
            at: rfc3339(r.at_ms),
            rows: r.rows,
            job_id: r.job_id,
            outcome: r.outcome,
            error: r.error,
            duration_ms: r.duration_ms,
        }
    }
}

fn view(s: &AdminState, p: &Pipeline) -> serde_json::Value {
    let stats = p.queue().stats();
    let c = &p.counters;
    let now = now_ms();
    let (_, failing_since) = p.health();
    let (state, state_since) = p.state_since();
    json!({
        "name": p.name(),
        "state": state,
        "state_since": rfc3339(state_since),
        "paused": p.is_paused(),
        "schedule": p.config.schedule.to_string(),
        "queue": {
            "kind": match p.config.queue { QueueConfig::Memory { .. } => "memory", QueueConfig::Disk { .. } => "disk", QueueConfig::Nats(_) => "nats" },
            "rows": stats.rows,
            "bytes": stats.bytes,
            "capacity_rows": stats.capacity_rows,
            "capacity_bytes": stats.capacity_bytes,
            "oldest_age_seconds": stats.oldest_ms.map(|t| now.saturating_sub(t) as f64 / 1000.0),
            "next_offset": stats.next_offset,
        },
        "next_run_at": p.next_run_ms().map(rfc3339),
        "failing_since": failing_since.map(rfc3339),
        "last_run": s.runs.last_run(p.name()).map(LastRun::from),
        "recent_runs": s.runs.recent_runs(p.name()).into_iter().map(LastRun::from).collect::<Vec<_>>(),
        "worker": if s.runs.worker_error(p.name()).is_some() { "stopped" } else { "running" },
        "worker_error": s.runs.worker_error(p.name()),
        "counters": {
            "accepted": Counters::get(&c.accepted),
            "ignored": Counters::get(&c.ignored),
            "rejected": Counters::get(&c.rejected),
            "delivered": Counters::get(&c.delivered),
            "runs_ok": Counters::get(&c.runs_ok),
            "failed_runs": Counters::get(&c.runs_failed),
            "dead_lettered": Counters::get(&c.dead_lettered),
            "removed": Counters::get(&c.removed),
        },
    })
}

async fn list(State(s): State<AdminState>) -> Response {
    let all: Vec<_> = s
        .order
        .iter()
        .filter_map(|n| s.pipelines.get(n))
        .map(|p| view(&s, p))
        .collect();
    axum::Json(json!({ "pipelines": all })).into_response()
}

async fn show(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Response, AdminError> {
    let p = s.pipeline(&name)?;
    Ok(axum::Json(view(&s, p)).into_response())
}

/// The calling token's name and scope, so the status page knows which actions to offer.
async fn whoami(axum::Extension(c): axum::Extension<Caller>) -> Response {
    let scope = match c.scope {
        Scope::Read => "read",
        Scope::Write => "write",
    };
    axum::Json(json!({ "token": c.name, "scope": scope })).into_response()
}

/// `POST /admin/pipelines/{name}/dry-run`: a dry run of the body (read scope: it changes
/// nothing). The body is read up to `server.max_body_bytes` and judged on the blocking pool.
async fn dry_run(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Response, AdminError> {
    s.pipeline(&name)?;
    let tryout = s.tryout.clone().ok_or(AdminError::NoSuchRoute)?;
    let limit = tryout.max_body_bytes();
    let body = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            AdminError::PayloadTooLarge { limit }
        } else {
            AdminError::PayloadUnreadable(e.to_string())
        }
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    tokio::task::spawn_blocking(move || tryout.dry_run(&name, &body, &content_type))
        .await
        .map_err(|e| AdminError::PayloadUnreadable(format!("the dry run failed: {e}")))
}

async fn history(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Response, AdminError> {
    let p = s.pipeline(&name)?;
    let minutes = p.counters.history.last_hour(now_ms());
    Ok(axum::Json(json!({ "minute_ms": 60_000, "minutes": minutes })).into_response())
}

async fn chart(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Response, AdminError> {
    let p = s.pipeline(&name)?;
    let svg = page::chart_svg(&p.counters.history.last_hour(now_ms()));
    Ok((
        [(header::CONTENT_TYPE, "image/svg+xml; charset=utf-8")],
        svg,
    )
        .into_response())
}

async fn pause(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Response, AdminError> {
    set_paused(&s, &name, true).await
}

async fn resume(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Response, AdminError> {
    set_paused(&s, &name, false).await
}

async fn set_paused(s: &AdminState, name: &str, paused: bool) -> Result<Response, AdminError> {
    let p = s.pipeline(name)?;
    // A queue shared by several replicas keeps the flag for all of them first.
    p.queue()
        .share_pause(paused)
        .await
        .map_err(|e| AdminError::StateNotSaved(std::io::Error::other(e.to_string())))?;
    p.set_paused(paused).map_err(AdminError::StateNotSaved)?;
    tracing::warn!(pipeline = name, paused, "pipeline pause flag changed");
    Ok(axum::Json(view(s, p)).into_response())
}

async fn flush(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Response, AdminError> {
    s.pipeline(&name)?;
    let report = s.runs.flush(&name).await.map_err(AdminError::from)?;
    Ok(axum::Json(LastRun::from(report)).into_response())
}

fn number(
    params: &HashMap<String, String>,
    key: &'static str,
    default: Option<u64>,
    max: u64,
) -> Result<u64, AdminError> {
    match params.get(key) {
        None => default.ok_or(AdminError::MissingParameter(key)),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n <= max => Ok(n),
            Ok(n) => Err(AdminError::AboveMaximum { key, value: n, max }),
            Err(_) => Err(AdminError::BadParameter {
                key,
                value: v.clone(),
                max,
            }),
        },
    }
}

async fn peek(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, AdminError> {
    let p = s.pipeline(&name)?;
    let limit = number(&params, "limit", Some(50), MAX_PEEK_ROWS)? as usize;
    let rows = p.queue().peek(limit, u64::MAX).await?;
    let rows: Vec<_> = rows
        .into_iter()
        .map(|e| json!({ "offset": e.offset, "received_at": rfc3339(e.received_ms), "row": e.row }))
        .collect();
    Ok(axum::Json(json!({ "rows": rows })).into_response())
}

async fn reconcile(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, AdminError> {
    s.pipeline(&name)?;
    let page_size = number(&params, "pageSize", Some(50), MAX_RECONCILE_PAGE as u64)? as usize;
    let page = s
        .runs
        .reconcile(&name, page_size)
        .await
        .map_err(AdminError::from)?;
    Ok(axum::Json(page).into_response())
}

async fn replay(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, AdminError> {
    s.pipeline(&name)?;
    let from = params
        .contains_key("fromOffset")
        .then(|| number(&params, "fromOffset", None, u64::MAX))
        .transpose()?;
    let replayed = s.runs.replay(&name, from).await.map_err(AdminError::from)?;
    Ok(axum::Json(replayed).into_response())
}

async fn purge(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, AdminError> {
    s.pipeline(&name)?;
    if params.get("confirm").map(String::as_str) != Some("true") {
        return Err(AdminError::ConfirmRequired);
    }
    let removed = s.runs.purge(&name).await.map_err(AdminError::from)?;
    Ok(axum::Json(json!({ "removed": removed })).into_response())
}

async fn requeue(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, AdminError> {
    s.pipeline(&name)?;
    let offsets = params
        .get("offsets")
        .map(|list| {
            list.split(',')
                .map(|o| {
                    o.trim()
                        .parse::<u64>()
                        .map_err(|_| AdminError::BadParameter {
                            key: "offsets",
                            value: list.clone(),
                            max: u64::MAX,
                        })
                })
                .collect::<Result<Vec<u64>, _>>()
        })
        .transpose()?;
    let requeued = s
        .runs
        .requeue(&name, offsets)
        .await
        .map_err(AdminError::from)?;
    Ok(axum::Json(json!({ "requeued": requeued })).into_response())
}

async fn dead_letter(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Response, AdminError> {
    let p = s.pipeline(&name)?;
    // Streamed from the store in chunks (the file, or the dead-letter stream page by page),
    // so a large download never sits in memory whole.
    let chunks = p
        .dead_letters()
        .download()
        .await
        .map_err(AdminError::DeadLetterUnreadable)?;
    let body = Body::from_stream(chunks);
    let disposition = format!("attachment; filename=\"{name}-dead-letter.csv\"");
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&disposition)
                    .unwrap_or(HeaderValue::from_static("attachment")),
            ),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// One of each answer. A new variant breaks the match below until it is listed here.
    fn every_error() -> Vec<AdminError> {
        let io = || std::io::Error::other("disk gone");
        let all = vec![
            AdminError::UnknownPipeline("orders".into()),
            AdminError::NoSuchRoute,
            AdminError::MethodNotAllowed,
            AdminError::Unauthorized,
            AdminError::ReadScopeOnly {
                token: "dashboard".into(),
            },
            AdminError::NotReady,
            AdminError::MissingParameter("fromOffset"),
            AdminError::BadParameter {
                key: "limit",
                value: "many".into(),
                max: MAX_PEEK_ROWS,
            },
            AdminError::AboveMaximum {
                key: "limit",
                value: 401,
                max: MAX_PEEK_ROWS,
            },
            AdminError::ConfirmRequired,
            AdminError::StateNotSaved(io()),
            AdminError::DeadLetterUnreadable(io()),
            AdminError::RequeueFailed(crate::dead_letter::RequeueError::Store(io())),
            AdminError::RequeueFailed(crate::dead_letter::RequeueError::Queue(
                crate::queue::PushError::FullRows {
                    queued: 1,
                    capacity: 1,
                    incoming: 1,
                },
            )),
            AdminError::Paused,
            AdminError::ShuttingDown,
            AdminError::Unsupported("the memory queue keeps no history"),
            AdminError::OffsetGone(QueueError::OffsetGone {
                requested: 1,
                oldest: 2,
            }),
            AdminError::OffsetAhead(QueueError::OffsetAhead {
                requested: 9,
                next: 3,
            }),
            AdminError::QueueFailed(QueueError::Io(io())),
            AdminError::PayloadTooLarge { limit: 1 << 20 },
            AdminError::PayloadUnreadable("connection reset".into()),
        ];
        for e in &all {
            match e {
                AdminError::UnknownPipeline(_)
                | AdminError::NoSuchRoute
                | AdminError::MethodNotAllowed
                | AdminError::Unauthorized
                | AdminError::ReadScopeOnly { .. }
                | AdminError::NotReady
                | AdminError::MissingParameter(_)
                | AdminError::BadParameter { .. }
                | AdminError::AboveMaximum { .. }
                | AdminError::ConfirmRequired
                | AdminError::StateNotSaved(_)
                | AdminError::DeadLetterUnreadable(_)
                | AdminError::RequeueFailed(_)
                | AdminError::Paused
                | AdminError::ShuttingDown
                | AdminError::Unsupported(_)
                | AdminError::OffsetGone(_)
                | AdminError::OffsetAhead(_)
                | AdminError::QueueFailed(_)
                | AdminError::PayloadTooLarge { .. }
                | AdminError::PayloadUnreadable(_) => {}
            }
        }
        all
    }

    /// The rows of the admin error table in README's "Operating it": (status, code, retry).
    fn readme_table() -> BTreeSet<(u16, String, bool)> {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md is readable");
        let section = readme
            .split("\n## Operating it")
            .nth(1)
            .expect("README has an \"Operating it\" section");
        let table = section
            .split("\n### Admin errors")
            .nth(1)
            .expect("\"Operating it\" has an \"Admin errors\" table");
        table
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                let status = cells.first()?.parse().ok()?;
                let code = cells.get(1)?.trim_matches('`').to_owned();
                let retry = cells.get(2)?.contains("Retry-After");
                Some((status, code, retry))
            })
            .collect()
    }

    #[test]
    fn the_readme_lists_every_admin_error_and_only_those() {
        let from_enum: BTreeSet<(u16, String, bool)> = every_error()
            .iter()
            .map(|e| {
                let (status, code, retry) = e.parts();
                (status.as_u16(), code.to_owned(), retry.is_some())
            })
            .collect();
        assert_eq!(from_enum.len(), every_error().len(), "codes are distinct");
        let from_readme = readme_table();
        let missing: Vec<_> = from_enum.difference(&from_readme).collect();
        let stale: Vec<_> = from_readme.difference(&from_enum).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "README lacks {missing:?}; README has no such error {stale:?}"
        );
    }

    #[tokio::test]
    async fn an_admin_error_renders_the_shared_shape_with_its_headers() {
        let resp = AdminError::ShuttingDown.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "5");
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({"error": "shutting_down", "message": "weir is shutting down"})
        );
        let resp = AdminError::Unauthorized.into_response();
        assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[test]
    fn tokens_match_only_when_equal_whatever_their_length() {
        let tokens = vec![AdminToken {
            name: "operator".into(),
            token: crate::config::Secret::new("write-token-0123456789"),
            scope: Scope::Write,
        }];
        assert!(find_token(&tokens, "write-token-0123456789").is_some());
        for wrong in ["", "w", "write-token-012345678", "write-token-01234567890"] {
            assert!(find_token(&tokens, wrong).is_none(), "{wrong:?}");
        }
    }
}

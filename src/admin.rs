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
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde::Serialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::api_error::ApiError;
use crate::config::{AdminToken, QueueConfig, Scope};
use crate::metrics::Metrics;
use crate::pipeline::{Counters, Pipeline};
use crate::queue::{QueueError, now_ms};
use crate::schedule::{ControlError, RunReport, SchedulerHandle};

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

/// What the admin router can reach.
#[derive(Clone)]
pub struct AdminState {
    pipelines: Arc<HashMap<String, Arc<Pipeline>>>,
    order: Arc<Vec<String>>,
    runs: SchedulerHandle,
    tokens: Arc<Vec<AdminToken>>,
    metrics: Arc<Metrics>,
    readiness: Readiness,
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
        }
    }

    fn pipeline(&self, name: &str) -> Result<&Arc<Pipeline>, ApiError> {
        self.pipelines.get(name).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_pipeline",
                format!("no pipeline is named \"{name}\""),
            )
        })
    }
}

pub fn router(state: AdminState) -> Router {
    let read = Router::new()
        .route("/admin/pipelines", get(list))
        .route("/admin/pipelines/{name}", get(show))
        .route("/admin/pipelines/{name}/rows", get(peek))
        .route("/admin/pipelines/{name}/dead-letter", get(dead_letter))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_read));
    let write = Router::new()
        .route("/admin/pipelines/{name}/pause", patch(pause))
        .route("/admin/pipelines/{name}/resume", patch(resume))
        .route("/admin/pipelines/{name}/flush", post(flush))
        .route("/admin/pipelines/{name}/events", patch(reconcile))
        .route("/admin/pipelines/{name}/replay", patch(replay))
        .route("/admin/pipelines/{name}/rows", axum::routing::delete(purge))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_write));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(read)
        .merge(write)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such admin route")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .with_state(state)
}

async fn require_read(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    authorize(&s, Scope::Read, req, next).await
}

async fn require_write(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    authorize(&s, Scope::Write, req, next).await
}

async fn authorize(s: &AdminState, needed: Scope, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // Compare against every token, without stopping early, in constant time per token.
    let mut found: Option<&AdminToken> = None;
    if let Some(p) = presented {
        for t in s.tokens.iter() {
            if bool::from(t.token.expose().as_bytes().ct_eq(p.as_bytes())) {
                found = Some(t);
            }
        }
    }
    match found {
        None => {
            tracing::warn!(path = %req.uri().path(), "admin request without a valid token");
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send a valid admin token as Authorization: Bearer <token>",
            )
            .into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
        Some(t) if t.scope < needed => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token \"{}\" has read scope; this route needs write",
                t.name
            ),
        )
        .into_response(),
        Some(t) => {
            if needed == Scope::Write {
                tracing::info!(token = %t.name, method = %req.method(), path = %req.uri().path(), "admin change");
            }
            next.run(req).await
        }
    }
}

async fn readyz(State(s): State<AdminState>) -> Response {
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
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "weir is starting or shutting down",
        )
        .into_response()
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
    let stats = p.queue.stats();
    let c = &p.counters;
    let now = now_ms();
    let (_, failing_since) = p.health();
    json!({
        "name": p.name(),
        "state": p.state(),
        "paused": p.is_paused(),
        "schedule": p.config.schedule.to_string(),
        "queue": {
            "kind": match p.config.queue { QueueConfig::Memory { .. } => "memory", QueueConfig::Disk { .. } => "disk" },
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

async fn show(State(s): State<AdminState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let p = s.pipeline(&name)?;
    Ok(axum::Json(view(&s, p)).into_response())
}

async fn pause(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_paused(&s, &name, true)
}

async fn resume(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_paused(&s, &name, false)
}

fn set_paused(s: &AdminState, name: &str, paused: bool) -> Result<Response, ApiError> {
    let p = s.pipeline(name)?;
    p.set_paused(paused).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "state_not_saved",
            format!("could not persist the pause flag: {e}"),
        )
    })?;
    tracing::warn!(pipeline = name, paused, "pipeline pause flag changed");
    Ok(axum::Json(view(s, p)).into_response())
}

async fn flush(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    s.pipeline(&name)?;
    let report = s.runs.flush(&name).await.map_err(control_error)?;
    Ok(axum::Json(LastRun::from(report)).into_response())
}

fn number(
    params: &HashMap<String, String>,
    key: &str,
    default: Option<u64>,
    max: u64,
) -> Result<u64, ApiError> {
    match params.get(key) {
        None => default.ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing_parameter",
                format!("query parameter {key} is required"),
            )
        }),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n <= max => Ok(n),
            _ => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_parameter",
                format!("query parameter {key}={v:?} must be a whole number up to {max}"),
            )),
        },
    }
}

async fn peek(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = s.pipeline(&name)?;
    let limit = number(&params, "limit", Some(50), 1000)? as usize;
    let rows = p
        .queue
        .peek(limit)
        .await
        .map_err(|e| control_error(ControlError::Queue(e)))?;
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
) -> Result<Response, ApiError> {
    s.pipeline(&name)?;
    let page_size = number(&params, "pageSize", Some(50), 10_000)? as usize;
    let page = s
        .runs
        .reconcile(&name, page_size)
        .await
        .map_err(control_error)?;
    Ok(axum::Json(page).into_response())
}

async fn replay(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    s.pipeline(&name)?;
    let from = number(&params, "fromOffset", None, u64::MAX)?;
    let queued = s.runs.replay(&name, from).await.map_err(control_error)?;
    Ok(axum::Json(json!({ "fromOffset": from, "queued": queued })).into_response())
}

async fn purge(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    s.pipeline(&name)?;
    if params.get("confirm").map(String::as_str) != Some("true") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "confirm_required",
            "purging deletes every queued row: repeat with ?confirm=true",
        ));
    }
    let removed = s.runs.purge(&name).await.map_err(control_error)?;
    Ok(axum::Json(json!({ "removed": removed })).into_response())
}

async fn dead_letter(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let p = s.pipeline(&name)?;
    let path = p.dead_letter_path();
    let body = match tokio::fs::read(&path).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            b"offset,received_at,reason,row\n".to_vec()
        }
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "dead_letter_unreadable",
                format!("cannot read the dead-letter file: {e}"),
            ));
        }
    };
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

fn control_error(e: ControlError) -> ApiError {
    match e {
        ControlError::UnknownPipeline(n) => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_pipeline",
            format!("no pipeline is named \"{n}\""),
        ),
        ControlError::Paused => ApiError::new(StatusCode::CONFLICT, "paused", e.to_string()),
        ControlError::Stopping => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            e.to_string(),
        )
        .retry_after(5),
        ControlError::Queue(QueueError::Unsupported(m)) => {
            ApiError::new(StatusCode::CONFLICT, "unsupported", m)
        }
        ControlError::Queue(q @ QueueError::OffsetGone { .. }) => {
            ApiError::new(StatusCode::CONFLICT, "offset_gone", q.to_string())
        }
        ControlError::Queue(q @ QueueError::OffsetAhead { .. }) => {
            ApiError::new(StatusCode::BAD_REQUEST, "offset_ahead", q.to_string())
        }
        ControlError::Queue(q @ QueueError::Io(_)) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "queue_failed",
            q.to_string(),
        ),
    }
}

//! The webhook intake: `/hooks/{pipeline}` turns a request into rows, checks the sender and
//! the data, and queues every row of the request or none of them.
//!
//! Architecture Invariant: ingest never talks to a sink; it only pushes to a pipeline's queue.

pub mod parse;
pub mod schema;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::api_error::ApiError;
use crate::config::OnMismatch;
use crate::metrics::Metrics;
use crate::pipeline::{Counters, Pipeline};
use crate::queue::PushError;
use crate::row::Row;
use parse::ParseError;
use schema::Source;

/// What the ingest router needs: the pipelines by name and the body limit.
#[derive(Clone)]
pub struct IngestState {
    pipelines: Arc<HashMap<String, Arc<Pipeline>>>,
    max_body_bytes: usize,
    /// Cancelled when shutdown starts: new requests get 503 from then on.
    stopping: CancellationToken,
    metrics: Arc<Metrics>,
}

impl IngestState {
    pub fn new(
        pipelines: &[Arc<Pipeline>],
        max_body_bytes: usize,
        stopping: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> IngestState {
        IngestState {
            pipelines: Arc::new(
                pipelines
                    .iter()
                    .map(|p| (p.name().to_owned(), p.clone()))
                    .collect(),
            ),
            max_body_bytes,
            stopping,
            metrics,
        }
    }
}

/// The public listener's routes: the hooks and `/healthz`.
pub fn router(state: IngestState) -> Router {
    Router::new()
        .route("/hooks/{name}", any(hook))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state(state)
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
    match accept(&state, &name, peer, &method, &uri, &headers, body).await {
        Ok(a) => (StatusCode::ACCEPTED, axum::Json(a)).into_response(),
        Err(e) => {
            match state.pipelines.get(&name) {
                Some(p) => p.counters.refuse(e.code),
                None => {
                    state.metrics.unknown_pipeline_requests.inc();
                }
            }
            e.into_response()
        }
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
) -> Result<Accepted, ApiError> {
    let pipeline = state.pipelines.get(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_pipeline",
            format!("no pipeline is named \"{name}\""),
        )
    })?;
    if *method != Method::GET && *method != Method::POST {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed: send rows with GET or POST"),
        ));
    }
    let client = canonical(peer.ip());
    if let Some(allowed) = &pipeline.config.allow_ips
        && !allowed.iter().any(|net| net.contains(&client))
    {
        tracing::warn!(pipeline = name, client = %client, "client address not allowed");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("client address {client} is not allowed to post to this pipeline"),
        ));
    }
    if state.stopping.is_cancelled() {
        return Err(shutting_down());
    }
    let body = read_body(body, headers, state.max_body_bytes).await?;
    let result = rows_of(&body, uri, headers);
    let (rows, source) = match result {
        Ok(parsed) => parsed,
        Err(e) => return Err(e),
    };
    let (rows, ignored) = apply_schema(pipeline, rows, source)?;
    let (rows, filtered) = apply_filter(pipeline, rows);
    let ignored = ignored + filtered;
    let accepted = rows.len();
    if accepted > 0 {
        pipeline.queue.push(rows).await.map_err(|e| {
            Counters::add(&pipeline.counters.rejected, accepted as u64);
            push_error(pipeline, e)
        })?;
    }
    Counters::add(&pipeline.counters.accepted, accepted as u64);
    Counters::add(&pipeline.counters.ignored, ignored as u64);
    Ok(Accepted { accepted, ignored })
}

/// IPv4 peers on a dual-stack socket arrive as `::ffff:a.b.c.d`; allowlists are written
/// with plain IPv4 networks.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "weir is shutting down; retry against another replica or after the restart",
    )
    .retry_after(5)
}

async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than the {limit} bytes allowed"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let length_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if length_limit {
            too_large()
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "body_unreadable",
                format!("could not read the request body: {e}"),
            )
        }
    })
}

fn rows_of(body: &[u8], uri: &Uri, headers: &HeaderMap) -> Result<(Vec<Row>, Source), ApiError> {
    let bad =
        |e: ParseError| ApiError::new(StatusCode::BAD_REQUEST, "malformed_body", e.to_string());
    if body.is_empty() {
        let query = uri.query().unwrap_or("");
        let row = parse::form(query.as_bytes(), "query string").map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_query", e.to_string())
        })?;
        if row.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "no_rows",
                "the request has neither a body nor a query string: send a row as ?field=value or as a JSON, NDJSON or form body",
            ));
        }
        return Ok((vec![row], Source::Text));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok((parse::json(body).map_err(bad)?, Source::Json)),
        "application/x-ndjson"
        | "application/jsonl"
        | "application/x-jsonlines"
        | "application/jsonlines" => Ok((parse::ndjson(body).map_err(bad)?, Source::Json)),
        "application/x-www-form-urlencoded" => Ok((
            vec![parse::form(body, "form body").map_err(bad)?],
            Source::Text,
        )),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type \"{content_type}\" is not supported: use application/json, application/x-ndjson or application/x-www-form-urlencoded"
            ),
        )),
    }
}

/// Keeps the rows that match the schema. In reject mode any mismatch refuses the request;
/// in ignore mode mismatching rows are dropped and counted.
fn apply_schema(
    pipeline: &Pipeline,
    rows: Vec<Row>,
    source: Source,
) -> Result<(Vec<Row>, usize), ApiError> {
    let Some(schema_cfg) = &pipeline.config.schema else {
        return Ok((rows, 0));
    };
    let total = rows.len();
    let mut kept = Vec::with_capacity(rows.len());
    let mut problems = Vec::new();
    for (i, row) in rows.into_iter().enumerate() {
        match schema::check(schema_cfg, &row, source) {
            Ok(()) => kept.push(row),
            Err(m) => {
                tracing::debug!(pipeline = pipeline.name(), row = i, field = %m.field, problem = %m.problem, "row does not match schema");
                problems.push(format!("row {i}: field \"{}\" {}", m.field, m.problem));
            }
        }
    }
    if !problems.is_empty() && schema_cfg.on_mismatch == OnMismatch::Reject {
        Counters::add(&pipeline.counters.rejected, total as u64);
        let shown = problems.len().min(10);
        let mut message = problems[..shown].join("; ");
        if problems.len() > shown {
            message.push_str(&format!("; and {} more rows", problems.len() - shown));
        }
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "schema_mismatch",
            message,
        ));
    }
    let ignored = problems.len();
    Ok((kept, ignored))
}

/// Keeps the rows for which the pipeline's `filter` is true; the others are ignored and
/// counted. A filter that cannot be evaluated on a row (not a bool, say) ignores the row.
fn apply_filter(pipeline: &Pipeline, rows: Vec<Row>) -> (Vec<Row>, usize) {
    let Some(filter) = &pipeline.config.filter else {
        return (rows, 0);
    };
    let name = crate::expr::pipeline_value(pipeline.name());
    let total = rows.len();
    let kept: Vec<Row> = rows
        .into_iter()
        .enumerate()
        .filter(|(i, row)| {
            let value = crate::expr::row_value(row);
            match filter.eval_bool(&[("row", &value), ("pipeline", &name)]) {
                Ok(keep) => keep,
                Err(e) => {
                    tracing::debug!(pipeline = pipeline.name(), row = i, error = %e, "row filter failed; row ignored");
                    false
                }
            }
        })
        .map(|(_, row)| row)
        .collect();
    let ignored = total - kept.len();
    (kept, ignored)
}

fn push_error(pipeline: &Pipeline, e: PushError) -> ApiError {
    match e {
        PushError::FullRows { .. } | PushError::FullBytes { .. } => {
            tracing::warn!(pipeline = pipeline.name(), error = %e, "queue full");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "queue_full", e.to_string())
                .retry_after(pipeline.retry_after_secs())
        }
        PushError::Unavailable(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_unavailable",
            e.to_string(),
        )
        .retry_after(30),
        PushError::Closed => shutting_down(),
    }
}

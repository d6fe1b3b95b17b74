//! The webhook intake: `/hooks/{pipeline}` turns a request into rows, checks the sender and
//! the data, and queues every row of the request or none of them.
//!
//! Architecture Invariant: ingest never talks to a sink; it only pushes to a pipeline's queue.

pub mod auth;
pub mod client;
pub mod parse;
pub mod schema;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::api_error::ApiError;
use crate::config::{AuthConfig, AuthMethod, OnMismatch, RateLimit, ServerLimits};
use crate::metrics::Metrics;
use crate::pipeline::{Counters, Pipeline};
use crate::queue::PushError;
use crate::row::Row;
use parse::ParseError;
use schema::Source;

type Limiter = governor::DefaultDirectRateLimiter;

/// A pipeline as ingest sees it: the pipeline and its rate limiter, if it has one.
type Entry = (Arc<Pipeline>, Option<Arc<Limiter>>);

/// What the ingest router needs: the pipelines by name (with their rate limiters) and the
/// request limits.
#[derive(Clone)]
pub struct IngestState {
    pipelines: Arc<HashMap<String, Entry>>,
    max_body_bytes: usize,
    limits: Arc<ServerLimits>,
    /// Cancelled when shutdown starts: new requests get 503 from then on.
    stopping: CancellationToken,
    metrics: Arc<Metrics>,
}

impl IngestState {
    pub fn new(
        pipelines: &[Arc<Pipeline>],
        max_body_bytes: usize,
        limits: ServerLimits,
        stopping: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> IngestState {
        IngestState {
            pipelines: Arc::new(
                pipelines
                    .iter()
                    .map(|p| {
                        let limiter = p.config.rate_limit.map(|r| Arc::new(limiter(r)));
                        (p.name().to_owned(), (p.clone(), limiter))
                    })
                    .collect(),
            ),
            max_body_bytes,
            limits: Arc::new(limits),
            stopping,
            metrics,
        }
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
                Some((p, _)) => p.counters.refuse(e.code),
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
    let (pipeline, limiter) = state.pipelines.get(name).ok_or_else(|| {
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
    let client = client::address(peer.ip(), headers, &state.limits.trusted_proxies);
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
    let body = tokio::time::timeout(
        state.limits.body_read_timeout,
        read_body(body, headers, state.max_body_bytes),
    )
    .await
    .map_err(|_| {
        tracing::warn!(pipeline = name, client = %client, "request body too slow");
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {}",
                humantime::format_duration(state.limits.body_read_timeout)
            ),
        )
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
    let mut query = uri.query();
    let stripped;
    if let Some(AuthMethod::Query(param)) = pipeline.config.auth.as_ref().map(|a| &a.method) {
        stripped = auth::strip_query_param(query.unwrap_or(""), param);
        query = Some(&stripped);
    }
    if let Some(limiter) = limiter
        && let Err(not_until) = limiter.check()
    {
        use governor::clock::{Clock, DefaultClock};
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        Counters::add(&pipeline.counters.rate_limited, 1);
        tracing::debug!(pipeline = name, client = %client, "rate limited");
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "this pipeline takes no more requests right now; retry after the time in Retry-After",
        )
        .retry_after(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)));
    }
    let (rows, source) = rows_of(&body.decoded, query, headers)?;
    check_counts(&rows, &state.limits)?;
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

/// Runs the pipeline's sender check; a failure is logged and counted with its reason, and
/// answered with a 401 that names none.
fn sender_check(
    pipeline: &Pipeline,
    auth: &AuthConfig,
    client: IpAddr,
    headers: &HeaderMap,
    query: Option<&str>,
    bodies: &[&[u8]],
) -> Result<(), ApiError> {
    let request = auth::Request {
        headers,
        query,
        bodies,
        now: unix_now(),
    };
    auth::check(auth, &request).map_err(|failure| {
        pipeline.counters.auth_failures.count(failure);
        tracing::warn!(pipeline = pipeline.name(), client = %client, reason = failure.reason(), "sender check failed");
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the request did not pass this pipeline's sender check",
        )
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Refuses requests with more rows, or rows with more fields, than the server allows.
fn check_counts(rows: &[Row], limits: &ServerLimits) -> Result<(), ApiError> {
    if rows.len() > limits.max_rows_per_request {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_many_rows",
            format!(
                "the request has {} rows; at most {} are allowed (server.max_rows_per_request)",
                rows.len(),
                limits.max_rows_per_request
            ),
        ));
    }
    if let Some((i, row)) = rows
        .iter()
        .enumerate()
        .find(|(_, r)| r.len() > limits.max_fields_per_row)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_many_fields",
            format!(
                "row {i} has {} fields; at most {} are allowed (server.max_fields_per_row)",
                row.len(),
                limits.max_fields_per_row
            ),
        ));
    }
    Ok(())
}

fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "weir is shutting down; retry against another replica or after the restart",
    )
    .retry_after(5)
}

/// A request body: what the parsers read and, for signatures, the bytes as sent.
struct ReadBody {
    decoded: Bytes,
    wire: Bytes,
    compressed: bool,
}

/// Reads the body within `limit` bytes, then decompresses `Content-Encoding: gzip` within
/// `limit` bytes too, so a small gzip bomb is refused with 413 instead of filling memory.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<ReadBody, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than the {limit} bytes allowed"),
        )
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("").trim().to_ascii_lowercase());
    let compressed = match encoding.as_deref() {
        None | Some("identity") => false,
        Some("gzip" | "x-gzip") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                format!("Content-Encoding \"{other}\" is not supported: send identity or gzip"),
            ));
        }
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
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "body_unreadable",
                format!("could not read the request body: {e}"),
            )
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
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "decompressing the body failed",
            )
        })?;
    match decoded {
        Gunzip::Ok(decoded) => Ok(ReadBody {
            decoded: decoded.into(),
            wire,
            compressed,
        }),
        Gunzip::TooLarge => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than the {limit} bytes allowed once decompressed"),
        )),
        Gunzip::Invalid(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_body",
            format!("the body is not valid gzip: {e}"),
        )),
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

fn rows_of(
    body: &[u8],
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<(Vec<Row>, Source), ApiError> {
    let bad =
        |e: ParseError| ApiError::new(StatusCode::BAD_REQUEST, "malformed_body", e.to_string());
    if body.is_empty() {
        let query = query.unwrap_or("");
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

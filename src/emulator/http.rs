//! The emulator's HTTP edge: data-push routes under both prefixes, the continuous upload,
//! auth, faults, and the `/emulator/` hooks.
//!
//! Status table (reference §3.5): 400/409/413/415 carry `FrontendHandledBackendError`, 404 and
//! 429 a bare JSON string, 401 nothing, 500 an `ExceptionReference`. The continuous upload
//! answers a 400 in plain text, as Celonis does.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, middleware};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tower::Layer;
use tracing::{Instrument, error, info, info_span, warn};
use uuid::Uuid;

use super::faults::{Endpoint, ForcedEnd, parse_fault};
use super::items;
use super::limiter::retry_after_secs;
use super::model::parse_create;
use super::oauth::{self, Verdict};
use super::parquet::read_parquet;
use super::table::{self, ChunkKind};
use super::{
    Chunk, Emulator, EmulatorError, Job, RETAINED_CHUNK_BYTES, Status, evict_chunk_contents, lock,
    now_ms,
};

/// Chunks may be up to 1 GB (reference §7).
const MAX_BODY: usize = 1 << 30;

/// The router, with paths normalised (trailing and doubled slashes) before routing.
pub(super) fn router(emulator: Emulator) -> Router {
    let api = Router::new()
        .route("/{pool}/jobs", get(list_jobs).post(create_job))
        .route(
            "/{pool}/jobs/{id}",
            get(get_job).post(execute_job).delete(delete_job),
        )
        .route("/{pool}/jobs/{id}/chunks", get(list_chunks))
        .route("/{pool}/jobs/{id}/chunks/upserted", post(upload_upserted))
        .route("/{pool}/jobs/{id}/chunks/deleted", post(upload_deleted));
    let hooks = Router::new()
        .route("/emulator/tables/{name}", get(show_table))
        .route("/emulator/jobs", get(show_jobs))
        .route("/emulator/items", get(show_items))
        .route("/emulator/faults", post(add_fault).delete(clear_faults))
        .route("/emulator/oauth", get(show_oauth))
        .route(
            "/emulator/oauth/tokens",
            axum::routing::delete(revoke_tokens),
        )
        .route_layer(middleware::from_fn_with_state(
            emulator.clone(),
            guard_hooks,
        ));
    let finops = if emulator.inner.config.finops.is_some() {
        super::finops::routes().route_layer(middleware::from_fn_with_state(
            emulator.clone(),
            guard_hooks,
        ))
    } else {
        Router::new()
    };
    let inner = Router::new()
        .merge(finops)
        .route(
            "/continuous-batch-processing/api/v1/{pool}/items",
            post(upload_item),
        )
        .nest("/integration/api/v1/data-push", api.clone())
        .nest("/data-ingestion/api/v1/data-push", api)
        .route("/oauth2/token", post(token))
        .merge(hooks)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(emulator);
    Router::new().fallback_service(middleware::from_fn(normalize_path).layer(inner))
}

/// The `/emulator/` hooks take the data-push routes' key when the emulator listens beyond
/// loopback (see [`super::hooks_need_key`]).
async fn guard_hooks(State(emulator): State<Emulator>, request: Request, next: Next) -> Response {
    if emulator.inner.hooks_need_key.load(Ordering::Relaxed)
        && let Err(e) = emulator.authorized(request.headers())
    {
        warn!(path = %request.uri().path(), "emulator hook without a valid key");
        return e.into_response();
    }
    next.run(request).await
}

/// Drops trailing slashes and collapses `//`, so `/jobs/`, `/jobs` and `jobs//{id}` route alike.
async fn normalize_path(mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path.contains("//") || (path.len() > 1 && path.ends_with('/')) {
        let mut normalized = String::with_capacity(path.len() + 1);
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            normalized.push('/');
            normalized.push_str(segment);
        }
        if normalized.is_empty() {
            normalized.push('/');
        }
        if let Some(query) = request.uri().query() {
            normalized.push('?');
            normalized.push_str(query);
        }
        let mut parts = request.uri().clone().into_parts();
        if let Ok(path_and_query) = PathAndQuery::try_from(normalized) {
            parts.path_and_query = Some(path_and_query);
            if let Ok(uri) = Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }
    next.run(request).await
}

/// Every way a request can fail, mapped to the real service's status and body shapes.
#[derive(Debug)]
enum ApiError {
    Unauthorized,
    /// A valid OAuth token without a data-push scope.
    Forbidden,
    Rejected {
        status: StatusCode,
        key: &'static str,
        info: String,
    },
    NotFound(&'static str),
    /// A refusal in plain text (the continuous upload's 400).
    PlainText(StatusCode, String),
    RateLimited {
        retry_after: u64,
    },
    Injected {
        status: StatusCode,
        retry_after: Option<u64>,
    },
    Internal(EmulatorError),
}

impl ApiError {
    fn bad_request(key: &'static str, info: impl Into<String>) -> ApiError {
        ApiError::Rejected {
            status: StatusCode::BAD_REQUEST,
            key,
            info: info.into(),
        }
    }

    fn conflict(key: &'static str, info: impl Into<String>) -> ApiError {
        ApiError::Rejected {
            status: StatusCode::CONFLICT,
            key,
            info: info.into(),
        }
    }
}

impl From<EmulatorError> for ApiError {
    fn from(e: EmulatorError) -> ApiError {
        ApiError::Internal(e)
    }
}

fn frontend_error(status: StatusCode, key: &str, info: &str) -> Response {
    (
        status,
        Json(json!({"frontendErrorKey": key, "errorInformation": info})),
    )
        .into_response()
}

fn exception_reference(status: StatusCode, message: &str) -> Response {
    let body = json!({
        "reference": Uuid::new_v4().to_string(),
        "message": message,
        "shortMessage": message,
    });
    (status, Json(body)).into_response()
}

fn with_retry_after(mut response: Response, secs: Option<u64>) -> Response {
    if let Some(secs) = secs {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED.into_response(),
            ApiError::Forbidden => StatusCode::FORBIDDEN.into_response(),
            ApiError::Rejected { status, key, info } => frontend_error(status, key, &info),
            ApiError::NotFound(what) => (StatusCode::NOT_FOUND, Json(what)).into_response(),
            ApiError::PlainText(status, text) => (status, text).into_response(),
            ApiError::RateLimited { retry_after } => with_retry_after(
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json("too many data push job submissions"),
                )
                    .into_response(),
                Some(retry_after),
            ),
            ApiError::Injected {
                status,
                retry_after,
            } => {
                const MESSAGE: &str = "fault injected by the emulator";
                match status {
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => status.into_response(),
                    StatusCode::NOT_FOUND => (status, Json(MESSAGE)).into_response(),
                    StatusCode::TOO_MANY_REQUESTS => {
                        with_retry_after((status, Json(MESSAGE)).into_response(), retry_after)
                    }
                    s if s.is_server_error() => exception_reference(s, MESSAGE),
                    s => frontend_error(s, "EMULATOR_FAULT", MESSAGE),
                }
            }
            ApiError::Internal(e) => {
                error!(error = %e, "emulator request failed");
                exception_reference(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
            }
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

impl Emulator {
    fn authorized(&self, headers: &HeaderMap) -> ApiResult<()> {
        let Some((scheme, key)) = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
        else {
            return Err(ApiError::Unauthorized);
        };
        let key = key.trim();
        let config = &self.inner.config;
        if !config.oauth_clients.is_empty() && scheme.eq_ignore_ascii_case("Bearer") {
            return match lock(&self.inner.tokens).check(key) {
                Verdict::Valid => Ok(()),
                Verdict::WrongScope => Err(ApiError::Forbidden),
                Verdict::Unknown if config.api_keys.iter().any(|k| k == key) => Ok(()),
                Verdict::Unknown => Err(ApiError::Unauthorized),
            };
        }
        if self.key_accepted(scheme, key) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }

    /// The AppKey / API key rules of the emulator without OAuth.
    fn key_accepted(&self, scheme: &str, key: &str) -> bool {
        let config = &self.inner.config;
        let accepted = if scheme.eq_ignore_ascii_case("AppKey") {
            &config.app_keys
        } else if scheme.eq_ignore_ascii_case("Bearer") {
            &config.api_keys
        } else {
            return false;
        };
        if key.is_empty() {
            return false;
        }
        if config.app_keys.is_empty() && config.api_keys.is_empty() {
            return true;
        }
        accepted.iter().any(|k| k == key)
    }

    /// Auth, then the first pending fault for this endpoint.
    async fn admit(&self, headers: &HeaderMap, endpoint: Endpoint) -> ApiResult<()> {
        self.authorized(headers)?;
        let fault = lock(&self.inner.faults).take_request(endpoint);
        if let Some(fault) = fault {
            info!(?endpoint, status = ?fault.status, delay_ms = fault.delay.as_millis(), "emulator fault injected");
            if !fault.delay.is_zero() {
                self.pause(fault.delay).await;
            }
            if let Some(status) = fault.status {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return Err(ApiError::Injected {
                    status,
                    retry_after: fault.retry_after,
                });
            }
        }
        Ok(())
    }

    /// After a request was carried out: the first pending fault that replaces its answer.
    fn after(&self, endpoint: Endpoint) -> Option<super::faults::RequestFault> {
        let fault = lock(&self.inner.faults).take_after(endpoint)?;
        info!(?endpoint, status = ?fault.status, pad_bytes = ?fault.pad_bytes, "emulator fault injected after the request");
        Some(fault)
    }

    /// Runs `f` on the live (not deleted) job `id` of `pool`, or answers 404.
    fn with_job<T>(
        &self,
        pool: &str,
        id: Uuid,
        f: impl FnOnce(&mut Job) -> ApiResult<T>,
    ) -> ApiResult<T> {
        let mut jobs = lock(&self.inner.jobs);
        let job = jobs
            .iter_mut()
            .find(|job| job.id == id && job.pool == pool && !job.deleted)
            .ok_or(ApiError::NotFound("data push job not found"))?;
        f(job)
    }

    /// Runs `f` on job `id`, deleted or not; `None` if there is no such job.
    fn update_job<T>(&self, id: Uuid, f: impl FnOnce(&mut Job) -> T) -> Option<T> {
        lock(&self.inner.jobs)
            .iter_mut()
            .find(|job| job.id == id)
            .map(f)
    }
}

impl Emulator {
    /// The pool of a path, lowercase: a UUID, and one of the configured `pools` when there
    /// are any; anything else is an unknown pool (404).
    fn pool_key(&self, pool: &str) -> ApiResult<String> {
        let unknown = || ApiError::NotFound("data pool not found");
        Uuid::parse_str(pool).map_err(|_| unknown())?;
        let key = pool.to_lowercase();
        match &self.inner.config.pools {
            Some(pools) if !pools.iter().any(|p| p.eq_ignore_ascii_case(&key)) => Err(unknown()),
            _ => Ok(key),
        }
    }
}

fn job_id(id: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound("data push job not found"))
}

fn not_new(job: &Job) -> ApiError {
    ApiError::conflict(
        "DATA_PUSH_JOB_NOT_NEW",
        format!(
            "data push job {} is {}; create a new data push job for new executions",
            job.id,
            job.status.as_str()
        ),
    )
}

async fn create_job(
    State(emulator): State<Emulator>,
    Path(pool): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    emulator.admit(&headers, Endpoint::Create).await?;
    let pool_key = emulator.pool_key(&pool)?;
    let request = parse_create(&body, &pool).map_err(|e| ApiError::bad_request(e.key, e.info))?;
    let raw = std::str::from_utf8(&body)
        .ok()
        .and_then(|text| RawValue::from_string(text.to_owned()).ok())
        .ok_or_else(|| ApiError::bad_request("INVALID_JSON", "the body is not valid JSON"))?;
    let job = Job {
        id: Uuid::new_v4(),
        pool: pool_key,
        request: raw,
        echo: request.echo,
        spec: request.spec,
        status: Status::New,
        logs: Vec::new(),
        modified_ms: now_ms(),
        executed_ms: None,
        chunks: Vec::new(),
        deleted: false,
    };
    let response = job.to_json(&pool);
    info!(job = %job.id, pool = %job.pool, "emulator job created");
    lock(&emulator.inner.jobs).push(job);
    Ok(Json(response))
}

async fn list_jobs(
    State(emulator): State<Emulator>,
    Path(pool): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    emulator.admit(&headers, Endpoint::Other).await?;
    let pool_key = emulator.pool_key(&pool)?;
    let jobs = lock(&emulator.inner.jobs)
        .iter()
        .filter(|job| job.pool == pool_key && !job.deleted)
        .map(|job| job.to_json(&pool))
        .collect();
    Ok(Json(Value::Array(jobs)))
}

async fn get_job(
    State(emulator): State<Emulator>,
    Path((pool, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    emulator.admit(&headers, Endpoint::Get).await?;
    let pool_key = emulator.pool_key(&pool)?;
    let id = job_id(&id)?;
    let mut view = emulator.with_job(&pool_key, id, |job| Ok(job.to_json(&pool)))?;
    if let Some(n) = emulator.after(Endpoint::Get).and_then(|f| f.pad_bytes) {
        view["padding"] = Value::from("x".repeat(n));
    }
    Ok(Json(view))
}

async fn delete_job(
    State(emulator): State<Emulator>,
    Path((pool, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    emulator.admit(&headers, Endpoint::Other).await?;
    let pool_key = emulator.pool_key(&pool)?;
    let id = job_id(&id)?;
    emulator.with_job(&pool_key, id, |job| {
        job.deleted = true;
        job.modified_ms = now_ms();
        Ok(())
    })?;
    info!(job = %id, "emulator job deleted");
    Ok(StatusCode::OK)
}

fn chunk_json(job_id: Uuid, chunk: &Chunk) -> Value {
    json!({
        "id": chunk.id.to_string(),
        "creationDate": chunk.created_ms,
        "type": chunk.kind.as_str(),
        "pushJobId": job_id.to_string(),
        "checksum": chunk.checksum,
    })
}

async fn list_chunks(
    State(emulator): State<Emulator>,
    Path((pool, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    emulator.admit(&headers, Endpoint::Other).await?;
    let pool_key = emulator.pool_key(&pool)?;
    let id = job_id(&id)?;
    emulator.with_job(&pool_key, id, |job| {
        Ok(Json(Value::Array(
            job.chunks.iter().map(|c| chunk_json(job.id, c)).collect(),
        )))
    })
}

async fn upload_upserted(
    State(emulator): State<Emulator>,
    Path((pool, id)): Path<(String, String)>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Json<Value>> {
    upload(emulator, pool, id, headers, multipart, ChunkKind::Upsert).await
}

async fn upload_deleted(
    State(emulator): State<Emulator>,
    Path((pool, id)): Path<(String, String)>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Json<Value>> {
    upload(emulator, pool, id, headers, multipart, ChunkKind::Delete).await
}

async fn upload(
    emulator: Emulator,
    pool: String,
    id: String,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
    kind: ChunkKind,
) -> ApiResult<Json<Value>> {
    emulator.admit(&headers, Endpoint::Upload).await?;
    let pool_key = emulator.pool_key(&pool)?;
    let id = job_id(&id)?;
    emulator.with_job(&pool_key, id, |job| match job.status {
        Status::New => Ok(()),
        _ => Err(not_new(job)),
    })?;
    let is_multipart = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        });
    if !is_multipart {
        return Err(ApiError::Rejected {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            key: "UNSUPPORTED_MEDIA_TYPE",
            info: "chunks must be sent as multipart/form-data with a part named file".into(),
        });
    }
    let mut multipart =
        multipart.map_err(|e| ApiError::bad_request("INVALID_MULTIPART", e.body_text()))?;
    let multipart_error = |e: axum::extract::multipart::MultipartError| ApiError::Rejected {
        status: e.status(),
        key: "INVALID_MULTIPART",
        info: e.body_text(),
    };
    let mut file = None;
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        if file.is_none() && field.name() == Some("file") {
            file = Some(field.bytes().await.map_err(multipart_error)?);
        }
    }
    let content = file.ok_or_else(|| {
        ApiError::bad_request("FILE_MISSING", "the multipart part named file is required")
    })?;
    let bytes = content.len();
    let chunk = Chunk {
        id: Uuid::new_v4(),
        kind,
        created_ms: now_ms(),
        checksum: format!("{:08x}", crc32c::crc32c(&content)),
        content: Some(content),
    };
    let response = emulator.with_job(&pool_key, id, |job| {
        // Checked again: the job may have been executed while the body arrived.
        if job.status != Status::New {
            return Err(not_new(job));
        }
        let response = chunk_json(job.id, &chunk);
        job.chunks.push(chunk);
        job.modified_ms = now_ms();
        Ok(response)
    })?;
    evict_chunk_contents(&mut lock(&emulator.inner.jobs), RETAINED_CHUNK_BYTES);
    info!(job = %id, kind = kind.as_str(), bytes, "emulator chunk uploaded");
    Ok(Json(response))
}

/// The execute call's query; the body (empty or `{}`) is ignored.
#[derive(Debug, Deserialize)]
struct ExecuteQuery {
    #[serde(rename = "duplicateRemovalColumn")]
    duplicate_removal_column: Option<String>,
}

async fn execute_job(
    State(emulator): State<Emulator>,
    Path((pool, id)): Path<(String, String)>,
    Query(query): Query<ExecuteQuery>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    emulator.admit(&headers, Endpoint::Execute).await?;
    let pool_key = emulator.pool_key(&pool)?;
    let id = job_id(&id)?;
    let forced = {
        let mut jobs = lock(&emulator.inner.jobs);
        let index = jobs
            .iter()
            .position(|job| job.id == id && job.pool == pool_key && !job.deleted)
            .ok_or(ApiError::NotFound("data push job not found"))?;
        let job = &jobs[index];
        if job.status != Status::New {
            return Err(not_new(job));
        }
        let target = job.spec.target_name.to_lowercase();
        let busy = jobs.iter().any(|other| {
            other.id != id
                && other.pool == pool_key
                && matches!(other.status, Status::Queued | Status::Running)
                && other.spec.target_name.to_lowercase() == target
                && other.spec.connection_id == job.spec.connection_id
        });
        if busy {
            return Err(ApiError::conflict(
                "JOB_ALREADY_RUNNING",
                format!(
                    "another data push job for table {} is queued or running",
                    job.spec.target_name
                ),
            ));
        }
        lock(&emulator.inner.limiter)
            .try_acquire(tokio::time::Instant::now(), now_ms())
            .map_err(|wait| {
                warn!(job = %id, "emulator rate limit reached");
                ApiError::RateLimited {
                    retry_after: retry_after_secs(wait),
                }
            })?;
        let job = &mut jobs[index];
        job.spec.duplicate_removal_column =
            query.duplicate_removal_column.filter(|c| !c.is_empty());
        job.set_status(Status::Queued);
        job.executed_ms = Some(now_ms());
        let mut faults = lock(&emulator.inner.faults);
        (
            faults.take_job_end(),
            faults.take_job_running(),
            faults.bad_values(),
        )
    };
    info!(job = %id, "emulator job submitted");
    let task = run_job(emulator.clone(), id, forced);
    emulator
        .inner
        .tracker
        .spawn(task.instrument(info_span!("emulator_job", job = %id)));
    if let Some(fault) = emulator.after(Endpoint::Execute)
        && let Some(status) = fault.status
    {
        return Err(ApiError::Injected {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            retry_after: fault.retry_after,
        });
    }
    Ok(StatusCode::OK)
}

/// QUEUED → RUNNING → DONE/ERROR (or the forced end), waiting `step_delay` in each of the
/// first two, plus an injected extra time in RUNNING.
async fn run_job(
    emulator: Emulator,
    id: Uuid,
    (forced, extra_running, bad_values): (Option<ForcedEnd>, Option<Duration>, Vec<String>),
) {
    let step = emulator.inner.config.step_delay;
    emulator.pause(step).await;
    let work = emulator.update_job(id, |job| {
        job.set_status(Status::Running);
        let chunks: Vec<(ChunkKind, Bytes)> = job
            .chunks
            .iter()
            .filter_map(|c| Some((c.kind, c.content.clone()?)))
            .collect();
        (job.spec.clone(), chunks)
    });
    let Some((spec, chunks)) = work else {
        return;
    };
    emulator
        .pause(step + extra_running.unwrap_or_default())
        .await;
    let mut warnings = Vec::new();
    let bad = injected_bad_value(&spec, &chunks, &bad_values);
    let (status, log) = match forced {
        None if bad.is_some() => (Status::Error, bad.unwrap_or_default()),
        Some(ForcedEnd::Error) => (
            Status::Error,
            "the job failed because a fault was injected into the emulator".to_owned(),
        ),
        Some(ForcedEnd::Canceled) => (
            Status::Canceled,
            "the job was canceled because a fault was injected into the emulator".to_owned(),
        ),
        None => {
            let applied = emulator
                .with_db(move |conn| {
                    let chunks: Vec<(ChunkKind, &[u8])> =
                        chunks.iter().map(|(k, c)| (*k, c.as_ref())).collect();
                    table::apply_job(conn, &spec, &chunks)
                })
                .await;
            match applied {
                Ok(Ok(applied)) => {
                    warnings = applied.warnings;
                    info!(
                        rows_upserted = applied.rows_upserted,
                        rows_deleted = applied.rows_deleted,
                        "emulator job done"
                    );
                    (
                        Status::Done,
                        format!(
                            "table {}: {} rows upserted, {} rows deleted",
                            applied.table, applied.rows_upserted, applied.rows_deleted
                        ),
                    )
                }
                Ok(Err(failure)) => {
                    warn!(error = %failure, "emulator job failed");
                    (Status::Error, failure.to_string())
                }
                Err(e) => {
                    error!(error = %e, "emulator job failed");
                    (Status::Error, format!("internal emulator error: {e}"))
                }
            }
        }
    };
    emulator.update_job(id, |job| {
        job.logs.append(&mut warnings);
        job.logs.push(log);
        job.set_status(status);
    });
}

/// The data error log of the first chunk value that is one of the injected `bad_values`.
fn injected_bad_value(
    spec: &super::model::JobSpec,
    chunks: &[(ChunkKind, Bytes)],
    bad_values: &[String],
) -> Option<String> {
    if bad_values.is_empty() {
        return None;
    }
    for (i, (_, content)) in chunks.iter().enumerate() {
        let Ok(parsed) = super::chunk::parse_csv(content, &spec.csv) else {
            continue;
        };
        for (r, row) in parsed.rows.iter().enumerate() {
            for (value, column) in row.iter().zip(&parsed.headers) {
                if bad_values.contains(value) {
                    return Some(format!(
                        "chunk {}, row {}, column {column}: the value {value:?} could not be parsed (injected fault)",
                        i + 1,
                        r + 1
                    ));
                }
            }
        }
    }
    None
}

/// An answer that never comes: its body fails at once, so the server drops the connection.
struct LostAnswer;

impl axum::body::HttpBody for LostAnswer {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(Some(Err(std::io::Error::other(
            "the emulator dropped the answer (injected fault)",
        ))))
    }
}

/// Why an uploaded file was not applied: the file (a 400) or the emulator's database (a 500).
enum Refusal {
    Data(String),
    Database(rusqlite::Error),
}

/// `POST /continuous-batch-processing/api/v1/{pool}/items`: applies one Parquet file at once
/// and answers with the item (see [`super::items`]).
async fn upload_item(
    State(emulator): State<Emulator>,
    Path(pool): Path<String>,
    Query(query): Query<items::ItemsQuery>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Response> {
    emulator.admit(&headers, Endpoint::Items).await?;
    let pool_key = emulator.pool_key(&pool)?;
    let refused = |text: String| ApiError::PlainText(StatusCode::BAD_REQUEST, text);
    let upload = items::parse_query(query).map_err(refused)?;
    let mut multipart = multipart.map_err(|e| refused(e.body_text()))?;
    let mut file = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| refused(e.body_text()))?
    {
        if file.is_none() && field.name() == Some("file") {
            let name = field.file_name().unwrap_or("file.parquet").to_owned();
            file = Some((
                name,
                field.bytes().await.map_err(|e| refused(e.body_text()))?,
            ));
        }
    }
    let (file_name, content) =
        file.ok_or_else(|| refused("the multipart part named file is required".into()))?;
    let bad_values = lock(&emulator.inner.faults).bad_values();
    let spec = upload.spec.clone();
    // Parsing and applying the file are blocking work, done on the database's thread.
    let applied = emulator
        .with_db(move |conn| {
            if !bad_values.is_empty() {
                let parsed = read_parquet(content.clone()).map_err(Refusal::Data)?;
                if let Some(bad) = items::injected_bad_value(&parsed, &bad_values) {
                    return Err(Refusal::Data(bad));
                }
            }
            table::apply_job(conn, &spec, &[(ChunkKind::Upsert, &content)]).map_err(|f| match f {
                table::JobFailure::Sqlite(e) => Refusal::Database(e),
                f => Refusal::Data(f.to_string()),
            })
        })
        .await?;
    let applied = match applied {
        Ok(applied) => applied,
        Err(Refusal::Database(e)) => return Err(EmulatorError::from(e).into()),
        Err(Refusal::Data(why)) => {
            warn!(error = %why, "emulator refused an uploaded file");
            return Err(refused(why));
        }
    };
    let item = lock(&emulator.inner.items).add(
        &upload,
        &file_name,
        &pool_key,
        &applied.table,
        applied.rows_upserted,
    );
    info!(item = %item["id"], table = %applied.table, rows = applied.rows_upserted, "emulator file applied");
    if let Some(fault) = emulator.after(Endpoint::Items) {
        if fault.lost_answer {
            return Ok(Response::new(axum::body::Body::new(LostAnswer)));
        }
        if let Some(status) = fault.status {
            return Err(ApiError::Injected {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                retry_after: fault.retry_after,
            });
        }
    }
    Ok(Json(item).into_response())
}

/// `GET /emulator/items`: every continuous upload applied, oldest first.
async fn show_items(State(emulator): State<Emulator>) -> Json<Value> {
    Json(Value::Array(lock(&emulator.inner.items).log().to_vec()))
}

/// `?connectionId=` names a data connection's table; without it, the pool's global schema.
#[derive(Debug, Deserialize)]
struct TableQuery {
    #[serde(rename = "connectionId")]
    connection_id: Option<String>,
}

async fn show_table(
    State(emulator): State<Emulator>,
    Path(name): Path<String>,
    Query(query): Query<TableQuery>,
) -> ApiResult<Json<Value>> {
    let name = table::storage_name(
        query.connection_id.filter(|c| !c.is_empty()).as_deref(),
        &name,
    );
    let dump = emulator
        .with_db(move |conn| table::read_table(conn, &name))
        .await?
        .map_err(EmulatorError::from)?
        .ok_or(ApiError::NotFound("table not found"))?;
    Ok(Json(table::dump_json(dump)))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JobRecord<'a> {
    id: String,
    data_pool_id: &'a str,
    request: &'a RawValue,
    status: &'static str,
    logs: &'a [String],
    executed_at: Option<u64>,
    chunks: Vec<ChunkRecord>,
}

#[derive(Serialize)]
struct ChunkRecord {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    /// `None` once evicted to bound memory.
    content: Option<String>,
}

async fn show_jobs(State(emulator): State<Emulator>) -> ApiResult<Response> {
    let body = {
        let jobs = lock(&emulator.inner.jobs);
        let records: Vec<JobRecord<'_>> = jobs
            .iter()
            .map(|job| JobRecord {
                id: job.id.to_string(),
                data_pool_id: &job.pool,
                request: &job.request,
                status: job.status.as_str(),
                logs: &job.logs,
                executed_at: job.executed_ms,
                chunks: job
                    .chunks
                    .iter()
                    .map(|c| ChunkRecord {
                        id: c.id.to_string(),
                        kind: c.kind.as_str(),
                        content: c
                            .content
                            .as_ref()
                            .map(|b| String::from_utf8_lossy(b).into_owned()),
                    })
                    .collect(),
            })
            .collect();
        serde_json::to_vec(&records)
    };
    let body = body.map_err(|e| ApiError::Internal(EmulatorError::Serialize(e)))?;
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}

async fn add_fault(State(emulator): State<Emulator>, body: Bytes) -> ApiResult<Json<Value>> {
    let (fault, count) =
        parse_fault(&body).map_err(|info| ApiError::bad_request("INVALID_FAULT", info))?;
    let mut faults = lock(&emulator.inner.faults);
    faults.push(fault, count);
    info!(count, "emulator fault queued");
    Ok(Json(json!({"queued": faults.len()})))
}

async fn clear_faults(State(emulator): State<Emulator>) -> Json<Value> {
    lock(&emulator.inner.faults).clear();
    info!("emulator faults cleared");
    Json(json!({"queued": 0}))
}

/// `POST /oauth2/token`: the client credentials grant.
async fn token(State(emulator): State<Emulator>, request: Request) -> Response {
    let headers = request.headers().clone();
    let params = match oauth::parameters(request).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    if params.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth::oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only grant_type=client_credentials is supported",
        );
    }
    let config = &emulator.inner.config;
    let known = oauth::client_credentials(&headers, &params).is_some_and(|(id, secret)| {
        config
            .oauth_clients
            .iter()
            .any(|(i, s)| *i == id && *s == secret)
    });
    if !known {
        warn!("emulator token request with unknown client credentials");
        return oauth::oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    }
    let scopes: Vec<String> = params
        .get("scope")
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let scope = scopes.join(" ");
    let ttl = config.token_ttl;
    let access_token = lock(&emulator.inner.tokens).issue(ttl, scopes);
    info!(scope = %scope, "emulator issued an oauth token");
    Json(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": ttl.as_secs(),
        "scope": scope,
    }))
    .into_response()
}

/// `GET /emulator/oauth`: how many tokens were issued.
async fn show_oauth(State(emulator): State<Emulator>) -> Json<Value> {
    Json(json!({"issued": lock(&emulator.inner.tokens).issued}))
}

/// `DELETE /emulator/oauth/tokens`: every issued token stops working (as if expired).
async fn revoke_tokens(State(emulator): State<Emulator>) -> Json<Value> {
    lock(&emulator.inner.tokens).revoke_all();
    info!("emulator revoked every oauth token");
    Json(json!({"revoked": true}))
}

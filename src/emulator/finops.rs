//! A Dynamics 365 FinOps recurring-integrations emulator: a queue of generated zip packages
//! behind `GET /api/connector/dequeue/{activityId}` and `POST /api/connector/ack/{activityId}`
//! (seed 003), the packages' download URLs, and test hooks under `/emulator/finops` to
//! queue packages, read counts and slow or fail the ack. Business events with a download URL
//! too: `POST /emulator/finops/events` makes a package and answers the business event whose
//! `DownloadURL` (signed, as a blob URL is) serves it; `POST …/files/{id}/expire` makes that
//! link answer 403, as an expired one does.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Emulator, lock};

/// One package: its correlation id and its entities (file name, CSV text).
struct Package {
    id: Uuid,
    pop_receipt: Uuid,
    entities: Vec<(String, String)>,
}

/// The queue and what was done with it.
#[derive(Default)]
pub(super) struct Finops {
    queue: VecDeque<Package>,
    dequeues: u64,
    downloads: u64,
    /// Ack requests received (counted before any delay).
    acks_started: u64,
    /// Packages removed by an ack.
    acks: u64,
    ack_delay: Duration,
    /// Answer acks with this status (and keep the package) instead of 200.
    ack_status: Option<u16>,
    /// The packages behind business events' download URLs.
    files: HashMap<Uuid, EventFile>,
    /// Download requests of those files received (counted before any delay).
    file_requests: u64,
    /// Those files served.
    file_downloads: u64,
    file_delay: Duration,
    /// Answer this many file downloads with `file_status` before serving them.
    file_failures: u32,
    file_status: u16,
}

/// The package a business event names.
struct EventFile {
    entities: Vec<(String, String)>,
    /// Its link answers 403, as one past its hour does.
    expired: bool,
}

/// The signature of every download URL, standing in for a SAS token.
const SIGNATURE: &str = "sig=secret-signature&se=2099-01-01T00%3A00%3A00Z";

impl Finops {
    /// `n` sample packages, each with a customer-groups and a vendor-groups entity.
    pub(super) fn with_samples(n: u32) -> Finops {
        let mut f = Finops::default();
        for i in 0..n {
            f.queue.push_back(Package {
                id: Uuid::new_v4(),
                pop_receipt: Uuid::new_v4(),
                entities: vec![
                    (
                        "Customer groups.csv".to_owned(),
                        format!(
                            "CustomerGroupId,Description,dataAreaId\nCG{i}A,Wholesale,usmf\nCG{i}B,Retail,usmf\n"
                        ),
                    ),
                    (
                        "Vendor groups.csv".to_owned(),
                        format!("VendorGroupId,Description,dataAreaId\nVG{i},Services,usmf\n"),
                    ),
                ],
            });
        }
        f
    }
}

pub(super) fn routes() -> Router<Emulator> {
    Router::new()
        .route("/api/connector/dequeue/{activity}", get(dequeue))
        .route("/api/connector/ack/{activity}", post(ack))
        .route("/emulator/finops/download/{id}", get(download))
        .route("/emulator/finops", get(show))
        .route("/emulator/finops/events", post(add_event))
        .route("/emulator/finops/files/{id}", get(file))
        .route("/emulator/finops/files/{id}/expire", post(expire))
        .route("/emulator/finops/packages", post(add_package))
        .route(
            "/emulator/finops/faults",
            post(set_faults).delete(clear_faults),
        )
}

async fn dequeue(
    State(emulator): State<Emulator>,
    Path(_activity): Path<String>,
    headers: HeaderMap,
) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned();
    let mut f = lock(&emulator.inner.finops);
    f.dequeues += 1;
    let Some(p) = f.queue.front() else {
        return StatusCode::NO_CONTENT.into_response();
    };
    // The signature stands in for the SAS token of a real blob URL.
    let answer = json!({
        "CorrelationId": p.id.to_string(),
        "PopReceipt": p.pop_receipt.to_string(),
        "DownloadLocation": format!("http://{host}/emulator/finops/download/{}?sig=secret-signature", p.id),
        "IsDownloadFileExisting": true,
        "FileDownloadErrorMessage": null,
        "LastDequeueDateTime": chrono_like_now(),
    });
    Json(answer).into_response()
}

async fn download(State(emulator): State<Emulator>, Path(id): Path<String>) -> Response {
    let entities = {
        let mut f = lock(&emulator.inner.finops);
        let Some(p) = f.queue.iter().find(|p| p.id.to_string() == id) else {
            return (StatusCode::NOT_FOUND, "no such package").into_response();
        };
        let entities = p.entities.clone();
        f.downloads += 1;
        entities
    };
    match zip_package(&entities) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/zip")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Manifest.xml, PackageHeader.xml and the entities (each with a UTF-8 BOM, as FinOps
/// writes them), deflated.
fn zip_package(entities: &[(String, String)]) -> Result<Vec<u8>, zip::result::ZipError> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let mut manifest = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<DataManagementPackageManifest><DataEntityList>",
    );
    for (name, _) in entities {
        let entity = name.trim_end_matches(".csv");
        manifest.push_str(&format!(
            "<DataManagementPackageEntityData><EntityName>{entity}</EntityName><DefaultRefreshType>FullPush</DefaultRefreshType></DataManagementPackageEntityData>"
        ));
    }
    manifest.push_str("</DataEntityList></DataManagementPackageManifest>\n");
    w.start_file("Manifest.xml", opts)?;
    w.write_all(manifest.as_bytes())?;
    w.start_file("PackageHeader.xml", opts)?;
    w.write_all(
        b"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<DataManagementPackageHeader><PackageType>DataPackage</PackageType><PackageVersion>2</PackageVersion></DataManagementPackageHeader>\n",
    )?;
    for (name, csv) in entities {
        w.start_file(name.as_str(), opts)?;
        w.write_all(b"\xEF\xBB\xBF")?;
        w.write_all(csv.as_bytes())?;
    }
    Ok(w.finish()?.into_inner())
}

async fn ack(
    State(emulator): State<Emulator>,
    Path(_activity): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let (delay, status) = {
        let mut f = lock(&emulator.inner.finops);
        f.acks_started += 1;
        (f.ack_delay, f.ack_status)
    };
    if !delay.is_zero() {
        emulator.pause(delay).await;
    }
    if let Some(s) = status {
        return StatusCode::from_u16(s)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response();
    }
    let Some(id) = body.get("CorrelationId").and_then(Value::as_str) else {
        return (StatusCode::BAD_REQUEST, "the ack body needs CorrelationId").into_response();
    };
    let mut f = lock(&emulator.inner.finops);
    let before = f.queue.len();
    f.queue.retain(|p| p.id.to_string() != id);
    if f.queue.len() == before {
        return (StatusCode::NOT_FOUND, "no such package").into_response();
    }
    f.acks += 1;
    StatusCode::OK.into_response()
}

async fn show(State(emulator): State<Emulator>) -> Json<Value> {
    let f = lock(&emulator.inner.finops);
    Json(json!({
        "queued": f.queue.len(),
        "dequeues": f.dequeues,
        "downloads": f.downloads,
        "acks_started": f.acks_started,
        "acks": f.acks,
        "files": f.files.len(),
        "file_requests": f.file_requests,
        "file_downloads": f.file_downloads,
    }))
}

/// `{"entities": {"Customer groups.csv": "ID,Name\n1,a\n"}}`, in order.
#[derive(Deserialize)]
struct NewPackage {
    entities: serde_json::Map<String, Value>,
}

async fn add_package(State(emulator): State<Emulator>, Json(p): Json<NewPackage>) -> Response {
    let mut entities = Vec::new();
    for (name, csv) in p.entities {
        let Some(text) = csv.as_str() else {
            return (StatusCode::BAD_REQUEST, "each entity is CSV text").into_response();
        };
        entities.push((name, text.to_owned()));
    }
    let id = Uuid::new_v4();
    lock(&emulator.inner.finops).queue.push_back(Package {
        id,
        pop_receipt: Uuid::new_v4(),
        entities,
    });
    (
        StatusCode::CREATED,
        Json(json!({ "CorrelationId": id.to_string() })),
    )
        .into_response()
}

/// A business event's package: `{"entity": "Customer groups", "entities": {…}}`, both
/// optional (the sample customer- and vendor-groups package by default).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewEvent {
    entity: Option<String>,
    entities: Option<serde_json::Map<String, Value>>,
}

/// Makes a package and answers the business event that names it, as FinOps posts it.
async fn add_event(
    State(emulator): State<Emulator>,
    headers: HeaderMap,
    body: Option<Json<NewEvent>>,
) -> Response {
    let e = body.map(|Json(e)| e).unwrap_or_default();
    let entities = match e.entities {
        None => Finops::with_samples(1)
            .queue
            .pop_front()
            .map(|p| p.entities)
            .unwrap_or_default(),
        Some(map) => {
            let mut entities = Vec::new();
            for (name, csv) in map {
                let Some(text) = csv.as_str() else {
                    return (StatusCode::BAD_REQUEST, "each entity is CSV text").into_response();
                };
                entities.push((name, text.to_owned()));
            }
            entities
        }
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned();
    let id = Uuid::new_v4();
    lock(&emulator.inner.finops).files.insert(
        id,
        EventFile {
            entities,
            expired: false,
        },
    );
    let event = json!({
        "BusinessEventId": "DataExportCompleted",
        "EventId": Uuid::new_v4().to_string(),
        "EntityName": e.entity.unwrap_or_else(|| "Customer groups".to_owned()),
        "DownloadURL": format!("http://{host}/emulator/finops/files/{id}?{SIGNATURE}"),
        "EventTime": chrono_like_now(),
        "FileId": id.to_string(),
    });
    (StatusCode::CREATED, Json(event)).into_response()
}

async fn file(
    State(emulator): State<Emulator>,
    Path(id): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let (delay, fail) = {
        let mut f = lock(&emulator.inner.finops);
        f.file_requests += 1;
        let fail = (f.file_failures > 0).then_some(f.file_status);
        f.file_failures = f.file_failures.saturating_sub(1);
        (f.file_delay, fail)
    };
    if let Some(status) = fail {
        return StatusCode::from_u16(status)
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            .into_response();
    }
    if !delay.is_zero() {
        emulator.pause(delay).await;
    }
    let entities = {
        let mut f = lock(&emulator.inner.finops);
        let file = Uuid::parse_str(&id).ok().and_then(|id| f.files.get(&id));
        let Some(file) = file else {
            return (StatusCode::NOT_FOUND, "no such file").into_response();
        };
        if file.expired || query.as_deref() != Some(SIGNATURE) {
            return (
                StatusCode::FORBIDDEN,
                "AuthenticationFailed: the signature is not valid or has expired",
            )
                .into_response();
        }
        let entities = file.entities.clone();
        f.file_downloads += 1;
        entities
    };
    match zip_package(&entities) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/zip")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn expire(State(emulator): State<Emulator>, Path(id): Path<String>) -> StatusCode {
    let mut f = lock(&emulator.inner.finops);
    match Uuid::parse_str(&id)
        .ok()
        .and_then(|id| f.files.get_mut(&id))
    {
        Some(file) => {
            file.expired = true;
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckFaults {
    ack_delay_ms: Option<u64>,
    ack_status: Option<u16>,
    /// Holds each business event file download this long before answering.
    file_delay_ms: Option<u64>,
    /// Answers the next this many file downloads with `file_status` (default 503).
    file_failures: Option<u32>,
    file_status: Option<u16>,
}

async fn set_faults(State(emulator): State<Emulator>, Json(faults): Json<AckFaults>) -> StatusCode {
    let mut f = lock(&emulator.inner.finops);
    f.ack_delay = Duration::from_millis(faults.ack_delay_ms.unwrap_or(0));
    f.ack_status = faults.ack_status;
    f.file_delay = Duration::from_millis(faults.file_delay_ms.unwrap_or(0));
    f.file_failures = faults.file_failures.unwrap_or(0);
    f.file_status = faults.file_status.unwrap_or(503);
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(emulator): State<Emulator>) -> StatusCode {
    let mut f = lock(&emulator.inner.finops);
    f.ack_delay = Duration::ZERO;
    f.ack_status = None;
    f.file_delay = Duration::ZERO;
    f.file_failures = 0;
    StatusCode::NO_CONTENT
}

/// Now as FinOps writes it: `2026-12-03T14:00:00Z`, to the second.
fn chrono_like_now() -> String {
    let secs = super::now_ms() / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 as a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn days_become_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_790), (2026, 12, 3));
    }
}

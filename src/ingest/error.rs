//! Every way `/hooks/{pipeline}` refuses a request: one variant per row of README's "Input
//! and answers" table, and one match that gives each its status, code and `Retry-After`.

use std::net::IpAddr;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api_error::ApiError;

/// Why ingest refused a request. The message is for humans; the code is stable.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("no pipeline is named \"{0}\"")]
    UnknownPipeline(String),
    #[error("{0} is not allowed: send rows with GET or POST")]
    MethodNotAllowed(String),
    #[error("client address {0} is not allowed to post to this pipeline")]
    Forbidden(IpAddr),
    #[error(
        "a trusted proxy forwarded a client address that cannot be read (\"unknown\" or an obfuscated name), so allow_ips cannot be checked"
    )]
    UnknownClient,
    #[error("the request did not pass this pipeline's sender check")]
    Unauthorized,
    #[error("this pipeline takes no more requests right now; retry after the time in Retry-After")]
    RateLimited { retry_after: u64 },
    #[error("the request body did not arrive within {}", humantime::format_duration(*.0))]
    RequestTimeout(Duration),
    #[error("Content-Encoding \"{0}\" is not supported: send identity or gzip")]
    UnsupportedEncoding(String),
    #[error("could not read the request body: {0}")]
    BodyUnreadable(String),
    #[error("request body is larger than the {limit} bytes allowed{}", if *.decompressed { " once decompressed" } else { "" })]
    BodyTooLarge { limit: usize, decompressed: bool },
    #[error(
        "weir is reading {limit} bytes of request bodies already (server.max_body_bytes_in_flight); retry after the time in Retry-After"
    )]
    Busy { limit: usize },
    #[error("{0}")]
    MalformedBody(String),
    #[error("{0}")]
    MalformedQuery(String),
    #[error("the pipeline's rows expression failed on this body: {0}")]
    RowsExpression(String),
    #[error("{0}")]
    Unrouted(String),
    /// `[pipelines.fetch]` with `mode = "inline"`: the download failed (host and status,
    /// never the URL's query string).
    #[error("{0}")]
    FetchFailed(String),
    #[error(
        "the request has neither a body nor a query string: send a row as ?field=value or as a JSON, NDJSON or form body"
    )]
    NoRows,
    #[error(
        "Content-Type \"{0}\" is not supported: use application/json, application/x-ndjson or application/x-www-form-urlencoded"
    )]
    UnsupportedMediaType(String),
    #[error("{0}")]
    TooManyRows(String),
    #[error("{0}")]
    TooManyFields(String),
    #[error("{0}")]
    FieldNameTooLong(String),
    #[error("{0}")]
    RowTooLarge(String),
    #[error("{0}")]
    SchemaMismatch(String),
    #[error("{message}")]
    QueueFull { message: String, retry_after: u64 },
    #[error("{0}")]
    QueueUnavailable(String),
    #[error(
        "a request with the same delivery id is being queued right now; retry after the time in Retry-After"
    )]
    DuplicateInProgress,
    #[error("weir is shutting down; retry against another replica or after the restart")]
    ShuttingDown,
    #[error("{0}")]
    Internal(&'static str),
}

impl IngestError {
    /// The status, the stable code and the seconds for `Retry-After`: the one status table.
    pub fn parts(&self) -> (StatusCode, &'static str, Option<u64>) {
        use IngestError as E;
        match self {
            E::UnknownPipeline(_) => (StatusCode::NOT_FOUND, "unknown_pipeline", None),
            E::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", None),
            E::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", None),
            E::UnknownClient => (StatusCode::FORBIDDEN, "unknown_client", None),
            E::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            E::RateLimited { retry_after } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                Some(*retry_after),
            ),
            E::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout", None),
            E::UnsupportedEncoding(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                None,
            ),
            E::BodyUnreadable(_) => (StatusCode::BAD_REQUEST, "body_unreadable", None),
            E::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", None),
            E::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "busy", Some(1)),
            E::MalformedBody(_) => (StatusCode::BAD_REQUEST, "malformed_body", None),
            E::MalformedQuery(_) => (StatusCode::BAD_REQUEST, "malformed_query", None),
            E::NoRows => (StatusCode::BAD_REQUEST, "no_rows", None),
            E::RowsExpression(_) => (StatusCode::BAD_REQUEST, "rows_expression_failed", None),
            E::Unrouted(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unrouted", None),
            E::FetchFailed(_) => (StatusCode::BAD_GATEWAY, "fetch_failed", None),
            E::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                None,
            ),
            E::TooManyRows(_) => (StatusCode::BAD_REQUEST, "too_many_rows", None),
            E::TooManyFields(_) => (StatusCode::BAD_REQUEST, "too_many_fields", None),
            E::FieldNameTooLong(_) => (StatusCode::BAD_REQUEST, "field_name_too_long", None),
            E::RowTooLarge(_) => (StatusCode::BAD_REQUEST, "row_too_large", None),
            E::SchemaMismatch(_) => (StatusCode::UNPROCESSABLE_ENTITY, "schema_mismatch", None),
            E::QueueFull { retry_after, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_full",
                Some(*retry_after),
            ),
            E::QueueUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_unavailable",
                Some(30),
            ),
            E::DuplicateInProgress => (
                StatusCode::SERVICE_UNAVAILABLE,
                "duplicate_in_progress",
                Some(1),
            ),
            E::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down", Some(5)),
            E::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        }
    }

    /// The stable code: the `error` of the body and the label of the refusal counters.
    pub fn code(&self) -> &'static str {
        self.parts().1
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let (status, code, retry_after) = self.parts();
        let error = ApiError::new(status, code, self.to_string());
        match retry_after {
            Some(secs) => error.retry_after(secs).into_response(),
            None => error.into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// One value of every variant. Adding a variant fails to compile in `listed` below until
    /// it is added here too.
    fn every_variant() -> Vec<IngestError> {
        use IngestError as E;
        let s = || String::from("x");
        vec![
            E::UnknownPipeline(s()),
            E::MethodNotAllowed(s()),
            E::Forbidden(IpAddr::from([127, 0, 0, 1])),
            E::UnknownClient,
            E::Unauthorized,
            E::RateLimited { retry_after: 1 },
            E::RequestTimeout(Duration::from_secs(1)),
            E::UnsupportedEncoding(s()),
            E::BodyUnreadable(s()),
            E::BodyTooLarge {
                limit: 1,
                decompressed: false,
            },
            E::Busy { limit: 1 },
            E::MalformedBody(s()),
            E::MalformedQuery(s()),
            E::RowsExpression(s()),
            E::Unrouted(s()),
            E::FetchFailed(s()),
            E::NoRows,
            E::UnsupportedMediaType(s()),
            E::TooManyRows(s()),
            E::TooManyFields(s()),
            E::FieldNameTooLong(s()),
            E::RowTooLarge(s()),
            E::SchemaMismatch(s()),
            E::QueueFull {
                message: s(),
                retry_after: 1,
            },
            E::QueueUnavailable(s()),
            E::DuplicateInProgress,
            E::ShuttingDown,
            E::Internal("x"),
        ]
    }

    #[allow(dead_code)]
    fn listed(e: &IngestError) {
        use IngestError as E;
        match e {
            E::UnknownPipeline(_)
            | E::MethodNotAllowed(_)
            | E::Forbidden(_)
            | E::UnknownClient
            | E::Unauthorized
            | E::RateLimited { .. }
            | E::RequestTimeout(_)
            | E::UnsupportedEncoding(_)
            | E::BodyUnreadable(_)
            | E::BodyTooLarge { .. }
            | E::Busy { .. }
            | E::MalformedBody(_)
            | E::MalformedQuery(_)
            | E::RowsExpression(_)
            | E::Unrouted(_)
            | E::FetchFailed(_)
            | E::NoRows
            | E::UnsupportedMediaType(_)
            | E::TooManyRows(_)
            | E::TooManyFields(_)
            | E::FieldNameTooLong(_)
            | E::RowTooLarge(_)
            | E::SchemaMismatch(_)
            | E::QueueFull { .. }
            | E::QueueUnavailable(_)
            | E::DuplicateInProgress
            | E::ShuttingDown
            | E::Internal(_) => {}
        }
    }

    /// The (status, code, Retry-After) rows of README's "Input and answers" status table.
    fn readme_table() -> BTreeSet<(u16, String, bool)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).expect("README.md readable");
        let section = readme
            .split("\n## Input and answers")
            .nth(1)
            .expect("README has an \"Input and answers\" section");
        let section = section.split("\n## ").next().unwrap_or(section);
        let mut rows = BTreeSet::new();
        let mut in_table = false;
        for line in section.lines() {
            if line.starts_with("| case | status | `error` |") {
                in_table = true;
                continue;
            }
            if !in_table || line.starts_with("|---") {
                continue;
            }
            if !line.starts_with('|') {
                break;
            }
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (status, code) = (cells[2], cells[3]);
            if code.is_empty() {
                continue; // 202, or an answer hyper gives before ingest runs
            }
            let number: u16 = status[..3].parse().expect("status starts with a number");
            let codes: Vec<&str> = code.split('`').skip(1).step_by(2).collect();
            assert_eq!(codes.len(), 1, "one code per row in README's table: {line}");
            rows.insert((number, codes[0].to_owned(), status.contains("Retry-After")));
        }
        assert!(!rows.is_empty(), "README's status table not found");
        rows
    }

    #[test]
    fn readmes_status_table_and_the_error_enum_agree_both_ways() {
        let table = readme_table();
        let variants: BTreeSet<(u16, String, bool)> = every_variant()
            .iter()
            .map(|e| {
                let (status, code, retry) = e.parts();
                (status.as_u16(), code.to_owned(), retry.is_some())
            })
            .collect();
        for v in &variants {
            assert!(table.contains(v), "README's table lacks {v:?}");
        }
        for row in &table {
            assert!(variants.contains(row), "no IngestError variant for {row:?}");
        }
    }

    #[test]
    fn the_body_is_the_shared_error_shape_with_retry_after() {
        let response = IngestError::ShuttingDown.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "5");
    }
}

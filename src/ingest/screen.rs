//! Screening rows that do not arrive over HTTP (`weir push` files, `weir check --sample`):
//! a body parsed the way a request's is, and each row judged exactly as ingest judges it
//! (schema, the columns' types and lengths, the filter).

use super::parse::Limits;
use super::{IngestError, check_row, passes_filter, rows_of};
use crate::config::PipelineConfig;
use crate::row::Row;

pub use super::schema::Source;

/// What ingest makes of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Queued as this row (converted to its columns' canonical forms where they have any).
    Keep(Row),
    /// It does not match the schema or a column: why.
    Mismatch(String),
    /// The pipeline's filter drops it (the row as converted).
    Filtered(Row),
}

/// Judges one row as ingest does.
pub fn judge(config: &PipelineConfig, row: Row, source: Source) -> Verdict {
    match check_row(config, &row, source) {
        Err(m) => Verdict::Mismatch(format!("field \"{}\" {}", m.field, m.problem)),
        Ok(converted) => {
            let row = converted.unwrap_or(row);
            if passes_filter(config, &row) {
                Verdict::Keep(row)
            } else {
                Verdict::Filtered(row)
            }
        }
    }
}

/// Parses a body of the given media type (JSON, NDJSON, form) as a request's body is
/// parsed, with the same limits and errors.
pub fn parse(
    body: &[u8],
    content_type: &str,
    limits: &Limits,
) -> Result<(Vec<Row>, Source), IngestError> {
    rows_of(body, None, content_type, limits)
}

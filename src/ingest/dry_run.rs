//! `?dry_run=true` and `weir check --sample`: a request's rows as parsed, each row's verdict
//! (accepted, schema mismatch, filtered out) and what the sink would send for the accepted
//! ones. Nothing is queued, counted or remembered.

use serde::Serialize;

use super::schema::Source;
use super::screen::{Verdict, judge};
use super::{IngestError, parse::Limits, shaped_rows};
use crate::config::{OnMismatch, PipelineConfig};
use crate::preview::{Preview, SinkPreview};
use crate::row::Row;

/// The answer to a dry run.
#[derive(Debug, Serialize)]
pub struct DryRun {
    pub pipeline: String,
    pub dry_run: bool,
    /// What a real request would be answered: the pipeline's success status, or 422 when
    /// a row does not match the schema and `on_mismatch = "reject"`.
    pub status: u16,
    /// Rows a real request would queue (0 when it would be refused with 422).
    pub accepted: usize,
    /// Rows a real request would ignore (schema in ignore mode, filter).
    pub ignored: usize,
    pub rows: Vec<RowVerdict>,
    /// The table and the CSV of the rows whose verdict is `accepted`.
    #[serde(flatten)]
    pub sink: SinkPreview,
}

#[derive(Debug, Serialize)]
pub struct RowVerdict {
    pub row: Row,
    /// `accepted`, `schema_mismatch` or `filtered_out`.
    pub verdict: &'static str,
    /// Why, for a schema mismatch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Parses a request like ingest does (the same limits and errors), judges each row and
/// previews what the sink would send. Synchronous, so a large body can run it on the
/// blocking pool.
pub fn dry_run(
    config: &PipelineConfig,
    body: &[u8],
    query: Option<&str>,
    content_type: &str,
    limits: &Limits,
    preview: &dyn Preview,
) -> Result<DryRun, IngestError> {
    let (rows, source): (Vec<Row>, Source) =
        shaped_rows(config, body, query, content_type, limits)?;
    let mut verdicts = Vec::with_capacity(rows.len());
    let mut kept = Vec::new();
    let mut mismatches = 0;
    for row in rows {
        let (row, verdict, reason) = match judge(config, row.clone(), source) {
            Verdict::Keep(kept_row) => {
                kept.push(kept_row.clone());
                (kept_row, "accepted", None)
            }
            Verdict::Mismatch(reason) => {
                mismatches += 1;
                (
                    config.pseudonymise.apply(row),
                    "schema_mismatch",
                    Some(reason),
                )
            }
            Verdict::Filtered(converted) => (converted, "filtered_out", None),
        };
        verdicts.push(RowVerdict {
            row,
            verdict,
            reason,
        });
    }
    let rejected = mismatches > 0
        && config
            .schema
            .as_ref()
            .map_or(OnMismatch::Reject, |s| s.on_mismatch)
            == OnMismatch::Reject;
    let total = verdicts.len();
    Ok(DryRun {
        pipeline: config.name.clone(),
        dry_run: true,
        status: if rejected {
            422
        } else {
            config.response.status
        },
        accepted: if rejected { 0 } else { kept.len() },
        ignored: if rejected { 0 } else { total - kept.len() },
        rows: verdicts,
        sink: preview.preview(&kept),
    })
}

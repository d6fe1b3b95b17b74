//! One URL for several tables: pipelines with the same `hook` share `/hooks/{hook}`. The
//! body is parsed once (with the first pipeline's `rows`), each pipeline's `filter` routes
//! the rows as received, each pipeline's schema judges the rows routed to it, and the request
//! is queued all-or-nothing across them: every check, and room in every queue, comes first.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::schema::Source;
use super::{IngestError, check_row, passes_filter};
use crate::config::OnMismatch;
use crate::pipeline::{Counters, Pipeline};
use crate::row::Row;

/// One pipeline's share of a request.
pub(super) struct Share {
    pub pipeline: Arc<Pipeline>,
    /// The rows it queues, converted and pseudonymised.
    pub rows: Vec<Row>,
    /// Rows its filter or its schema (in ignore mode) dropped.
    pub ignored: usize,
}

/// What a request on a shared hook did.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Routed {
    /// Rows queued, over every pipeline (a row two pipelines take counts twice).
    pub accepted: usize,
    /// Rows no pipeline took.
    pub ignored: usize,
    pub unrouted: usize,
    pub pipelines: BTreeMap<String, PipelineCounts>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct PipelineCounts {
    pub accepted: usize,
    pub ignored: usize,
}

/// Routes the parsed rows to the group's pipelines. A row goes to each pipeline whose filter
/// it passes (as received: before that pipeline's conversion and pseudonymisation); there
/// its schema and columns judge it. A mismatch in a pipeline with `on_mismatch = "reject"`
/// refuses the whole request (422), as unrouted rows do with `unrouted = "reject"`.
pub(super) fn route(
    group: &[Arc<Pipeline>],
    rows: &[Row],
    source: Source,
) -> Result<(Vec<Share>, usize), IngestError> {
    let mut taken = vec![false; rows.len()];
    let mut shares = Vec::with_capacity(group.len());
    let mut problems = Vec::new();
    for p in group {
        let config = &p.config;
        let reject = config
            .schema
            .as_ref()
            .map_or(OnMismatch::Reject, |s| s.on_mismatch)
            == OnMismatch::Reject;
        let mut kept = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            if !passes_filter(config, row) {
                continue;
            }
            match check_row(config, row, source) {
                Ok(converted) => {
                    taken[i] = true;
                    kept.push(converted.unwrap_or_else(|| row.clone()));
                }
                Err(m) if reject => problems.push(format!(
                    "pipeline {}: row {i}: field \"{}\" {}",
                    config.name, m.field, m.problem
                )),
                Err(_) => {}
            }
        }
        shares.push(Share {
            pipeline: p.clone(),
            ignored: rows.len() - kept.len(),
            rows: kept,
        });
    }
    if !problems.is_empty() {
        for s in &shares {
            Counters::add(&s.pipeline.counters.rejected, s.rows.len() as u64);
        }
        let shown = problems.len().min(10);
        let mut message = problems[..shown].join("; ");
        if problems.len() > shown {
            message.push_str(&format!("; and {} more", problems.len() - shown));
        }
        return Err(IngestError::SchemaMismatch(message));
    }
    let unrouted = taken.iter().filter(|t| !**t).count();
    if unrouted > 0 && group[0].config.unrouted_reject {
        let first = taken.iter().position(|t| !*t).unwrap_or(0);
        let names: Vec<&str> = group.iter().map(|p| p.name()).collect();
        return Err(IngestError::Unrouted(format!(
            "{unrouted} of {} rows (the first is row {first}) match no pipeline of hook \"{}\" ({}), and unrouted = \"reject\"",
            rows.len(),
            group[0].config.hook,
            names.join(", ")
        )));
    }
    Ok((shares, unrouted))
}

/// The counts of a routed request, for its answer.
pub(super) fn counts(shares: &[Share], unrouted: usize) -> Routed {
    Routed {
        accepted: shares.iter().map(|s| s.rows.len()).sum(),
        ignored: unrouted,
        unrouted,
        pipelines: shares
            .iter()
            .map(|s| {
                (
                    s.pipeline.name().to_owned(),
                    PipelineCounts {
                        accepted: s.rows.len(),
                        ignored: s.ignored,
                    },
                )
            })
            .collect(),
    }
}

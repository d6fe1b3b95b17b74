//! The sink's side of a dry run: the layout, `tableSchema` columns and CSV chunks one run
//! would send for some rows, computed by the same code a run uses, without writing the
//! known-columns state or sending anything.

use std::sync::Arc;

use super::batch::{self, ColumnsError, KnownColumns};
use super::csv::{Chunks, ColumnSpec, write_chunks};
use crate::config::{BodyMode, Dedupe, PipelineConfig, SinkConfig};
use crate::preview::{Preview, PreviewColumn, SinkPreview};
use crate::queue::{Entry, now_ms};
use crate::row::Row;

/// A pipeline's sink as a dry run sees it.
pub struct Previewer {
    sink: SinkConfig,
    columns: ColumnSpec,
}

impl Previewer {
    /// Shares the sink's column state (`columns` from [`super::Sink::columns`]).
    pub fn new(config: &PipelineConfig, columns: ColumnSpec) -> Previewer {
        Previewer {
            sink: config.sink.clone(),
            columns,
        }
    }

    /// For `weir check --sample`: reads the pipeline's known columns, if any, as a
    /// running weir would, and never writes them.
    pub fn offline(config: &PipelineConfig) -> Result<Previewer, ColumnsError> {
        let mut columns = ColumnSpec::of(config);
        let fixed = !columns.columns.is_empty()
            || columns
                .schema
                .as_ref()
                .is_some_and(|s| !s.fields.is_empty());
        if matches!(config.sink, SinkConfig::Celonis(_)) && !fixed {
            columns.known = Some(Arc::new(KnownColumns::load(&config.state_dir)?));
        }
        Ok(Previewer::new(config, columns))
    }
}

fn text(chunk: Vec<u8>) -> String {
    String::from_utf8_lossy(&chunk).into_owned()
}

impl Preview for Previewer {
    fn preview(&self, rows: &[Row]) -> SinkPreview {
        // The offsets the rows would get are not known before they are queued: a dry run
        // counts them from 0 (they only show in `weir_seq`).
        let received_ms = now_ms();
        let entries: Vec<Entry> = rows
            .iter()
            .enumerate()
            .map(|(i, row)| Entry {
                offset: i as u64,
                received_ms,
                row: row.clone(),
            })
            .collect();
        let layout = self.columns.layout_preview(&entries);
        match &self.sink {
            SinkConfig::Celonis(c) => {
                let server_dedupe = !c.keys.is_empty() && c.dedupe == Dedupe::Server;
                let upsert_layout = if server_dedupe {
                    layout.clone().with_seq(batch::SEQ_COLUMN)
                } else {
                    layout.clone()
                };
                let columns = upsert_layout
                    .table(c.fallback_varchar_length)
                    .columns
                    .into_iter()
                    .map(|d| PreviewColumn {
                        key: c.keys.contains(&d.name),
                        name: d.name,
                        ty: d.ty.as_str(),
                        length: d.length,
                        decimals: d.decimals,
                    })
                    .collect();
                let mut out = SinkPreview {
                    sink: "celonis",
                    table: Some(c.target_name.clone()),
                    columns,
                    ..SinkPreview::default()
                };
                if entries.is_empty() {
                    return out; // an empty batch makes no job
                }
                let split =
                    batch::split(&layout, &c.keys, c.delete_when.as_ref(), c.dedupe, &entries);
                if !split.upserts.is_empty() || split.deletes.is_empty() {
                    out.csv = Chunks::new(&upsert_layout, &split.upserts, &c.csv, c.chunk_bytes)
                        .filter_map(Result::ok)
                        .map(text)
                        .collect();
                }
                if !split.deletes.is_empty() {
                    let delete_layout = layout.only(&c.keys);
                    out.deleted_csv =
                        Chunks::new(&delete_layout, &split.deletes, &c.csv, c.chunk_bytes)
                            .filter_map(Result::ok)
                            .map(text)
                            .collect();
                }
                out
            }
            SinkConfig::Http(h) => {
                let mut out = SinkPreview {
                    sink: "http",
                    ..SinkPreview::default()
                };
                if matches!(h.body, BodyMode::Csv) && !entries.is_empty() {
                    out.csv = write_chunks(&layout, &entries, &h.csv, u64::MAX)
                        .map(|chunks| chunks.into_iter().map(text).collect())
                        .unwrap_or_default();
                }
                out
            }
        }
    }
}

//! The sink's side of a dry run: the layout, `tableSchema` columns and CSV chunks one run
//! would send for some rows, computed by the same code a run uses, without writing the
//! known-columns state or sending anything.

use std::sync::Arc;

use super::batch::{self, ColumnsError, KnownColumns};
use super::csv::{Chunks, ColumnSpec, write_chunks};
use super::parquet::ParquetChunks;
use crate::config::{BodyMode, CelonisApi, Dedupe, FileType, PipelineConfig, SinkConfig};
use crate::preview::{ChunkSummary, Preview, PreviewColumn, SinkPreview};
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
                // Continuous uploads always carry the order column with keys.
                let server_dedupe = !c.keys.is_empty()
                    && (c.dedupe == Dedupe::Server || c.api == CelonisApi::Continuous);
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
                let delete_layout = layout.only(&c.keys);
                let sides = [
                    (
                        &upsert_layout,
                        &split.upserts,
                        !split.upserts.is_empty() || split.deletes.is_empty(),
                    ),
                    (&delete_layout, &split.deletes, !split.deletes.is_empty()),
                ];
                for (i, (layout, rows, sent)) in sides.into_iter().enumerate() {
                    if !sent {
                        continue;
                    }
                    match c.file_type {
                        FileType::Csv => {
                            let csv = Chunks::new(layout, rows, &c.csv, c.chunk_bytes)
                                .filter_map(Result::ok)
                                .map(text)
                                .collect();
                            *if i == 0 {
                                &mut out.csv
                            } else {
                                &mut out.deleted_csv
                            } = csv;
                        }
                        FileType::Parquet { rows_per_chunk } => {
                            let table = layout.table(c.fallback_varchar_length);
                            let summary = ParquetChunks::new(layout, &table, rows, rows_per_chunk)
                                .filter_map(Result::ok)
                                .enumerate()
                                .map(|(n, chunk)| ChunkSummary {
                                    rows: rows
                                        .len()
                                        .saturating_sub(n * rows_per_chunk)
                                        .min(rows_per_chunk),
                                    bytes: chunk.len(),
                                })
                                .collect();
                            *if i == 0 {
                                &mut out.parquet
                            } else {
                                &mut out.deleted_parquet
                            } = summary;
                        }
                    }
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

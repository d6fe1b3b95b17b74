//! CSV against Parquet chunks for the same typed batch: bytes uploaded per row and CPU time per
//! row of writing them, with weir's own writers (`write_chunks`, `ParquetChunks`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use weir::config::{ColumnType, CsvOptions, DEFAULT_ROWS_PER_CHUNK, Typing};
use weir::sink::csv::{Layout, write_chunks};
use weir::sink::parquet::ParquetChunks;

use crate::csvbench::entries;

pub struct FormatResult {
    pub rows: usize,
    pub csv_ns_per_row: f64,
    pub parquet_ns_per_row: f64,
    pub csv_bytes_per_row: f64,
    pub parquet_bytes_per_row: f64,
}

/// Best of `reps` interleaved runs of each, on `n` rows of the load benchmark's orders with
/// Quantity as INTEGER and Price as FLOAT.
pub fn measure(n: usize, reps: usize) -> anyhow::Result<FormatResult> {
    let entries = entries(n)?;
    let mut layout = Layout::for_batch(&[], None, &entries);
    layout.typings = layout
        .headers
        .iter()
        .map(|h| {
            let ty = match h.as_str() {
                "Quantity" => Some(ColumnType::Integer),
                "Price" => Some(ColumnType::Float),
                _ => None,
            };
            (
                Typing {
                    ty,
                    ..Typing::default()
                },
                None,
            )
        })
        .collect();
    let table = layout.table(255);
    let opts = CsvOptions::default();
    let csv = || write_chunks(&layout, &entries, &opts, 64 << 20);
    let parquet = || {
        ParquetChunks::new(&layout, &table, &entries, DEFAULT_ROWS_PER_CHUNK)
            .collect::<Result<Vec<_>, _>>()
    };
    let csv_bytes: usize = csv()?.iter().map(Vec::len).sum();
    let parquet_bytes: usize = parquet()?.iter().map(Vec::len).sum();
    let (mut best_csv, mut best_parquet) = (Duration::MAX, Duration::MAX);
    for _ in 0..reps {
        let t = Instant::now();
        black_box(csv()?);
        best_csv = best_csv.min(t.elapsed());
        let t = Instant::now();
        black_box(parquet()?);
        best_parquet = best_parquet.min(t.elapsed());
    }
    Ok(FormatResult {
        rows: n,
        csv_ns_per_row: best_csv.as_nanos() as f64 / n as f64,
        parquet_ns_per_row: best_parquet.as_nanos() as f64 / n as f64,
        csv_bytes_per_row: csv_bytes as f64 / n as f64,
        parquet_bytes_per_row: parquet_bytes as f64 / n as f64,
    })
}

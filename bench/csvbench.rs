//! CSV writing alone: `weir::sink::csv::write_chunks` against the csv crate writing the same
//! records directly, in this process, on the same rows ingest would build.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use weir::config::CsvOptions;
use weir::queue::Entry;
use weir::sink::csv::{Layout, write_chunks};

use crate::load::row_json;

/// Weir's default chunk size: 64 MiB.
const CHUNK_BYTES: u64 = 64 << 20;

pub struct CsvResult {
    pub rows: usize,
    pub weir_rows_per_s: f64,
    pub csv_rows_per_s: f64,
    /// Bytes of CSV per row (header excluded).
    pub bytes_per_row: f64,
}

impl CsvResult {
    pub fn ratio(&self) -> f64 {
        self.weir_rows_per_s / self.csv_rows_per_s
    }
}

/// The queued entries for `n` rows of [`row_json`], parsed as ingest parses them.
pub fn entries(n: usize) -> anyhow::Result<Vec<Entry>> {
    (0..n as u64)
        .map(|i| {
            let mut rows = weir::ingest::parse::json(row_json(i).as_bytes())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let row = rows.pop().context("one row")?;
            Ok(Entry {
                offset: i,
                received_ms: 0,
                row,
            })
        })
        .collect()
}

/// The baseline: a csv crate writer, configured as weir's defaults are, given each record as
/// a slice of its cells (borrowed from the rows before the clock starts).
fn csv_crate(headers: &[String], records: &[Vec<&str>]) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    w.write_record(headers)?;
    for r in records {
        w.write_record(r)?;
    }
    Ok(w.into_inner().map_err(|e| e.into_error())?)
}

/// Best of `reps` interleaved runs of each.
pub fn measure(n: usize, reps: usize) -> anyhow::Result<CsvResult> {
    let entries = entries(n)?;
    let layout = Layout::for_batch(&[], None, &entries);
    let records: Vec<Vec<&str>> = entries
        .iter()
        .map(|e| e.row.fields().map(|f| f.text).collect())
        .collect();
    let opts = CsvOptions::default();

    let weir_out = write_chunks(&layout, &entries, &opts, CHUNK_BYTES)?;
    let csv_out = csv_crate(&layout.headers, &records)?;
    if weir_out.len() != 1 || weir_out[0] != csv_out {
        bail!("weir's CSV differs from the csv crate's for the same records");
    }
    let header_len = csv_out.iter().position(|&b| b == b'\n').unwrap_or(0) + 1;

    let (mut best_weir, mut best_csv) = (Duration::MAX, Duration::MAX);
    for _ in 0..reps {
        let t = Instant::now();
        black_box(write_chunks(
            &layout,
            black_box(&entries),
            &opts,
            CHUNK_BYTES,
        )?);
        best_weir = best_weir.min(t.elapsed());
        let t = Instant::now();
        black_box(csv_crate(&layout.headers, black_box(&records))?);
        best_csv = best_csv.min(t.elapsed());
    }
    Ok(CsvResult {
        rows: n,
        weir_rows_per_s: n as f64 / best_weir.as_secs_f64(),
        csv_rows_per_s: n as f64 / best_csv.as_secs_f64(),
        bytes_per_row: (csv_out.len() - header_len) as f64 / n as f64,
    })
}

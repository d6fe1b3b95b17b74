//! The dead-letter file: rows that could not be delivered within `retention` are moved out of
//! the queue into `{state_dir}/dead-letter.csv` with their offset, arrival time and the
//! reason, never silently dropped. The admin API serves the file for download.

use std::fs::OpenOptions;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use crate::pipeline::{Counters, Pipeline};
use crate::queue::{Entry, QueueError, now_ms};

/// Rows read per step while sweeping.
const SWEEP_PAGE: usize = 1000;

/// Moves every queued row older than the pipeline's retention to its dead-letter file.
/// Returns how many rows were moved.
pub async fn sweep(p: &Pipeline, reason: &str) -> Result<u64, QueueError> {
    let retention_ms = p.config.retention.as_millis() as u64;
    let cutoff = now_ms().saturating_sub(retention_ms);
    let mut moved = 0u64;
    loop {
        let stats = p.queue.stats();
        if stats.oldest_ms.is_none_or(|t| t >= cutoff) {
            break;
        }
        let page = p.queue.peek(SWEEP_PAGE, u64::MAX).await?;
        let expired: Vec<Entry> = page
            .iter()
            .take_while(|e| e.received_ms < cutoff)
            .cloned()
            .collect();
        let Some(last) = expired.last().map(|e| e.offset) else {
            break;
        };
        let path = p.dead_letter_path();
        let reason = reason.to_owned();
        let n = expired.len() as u64;
        tokio::task::spawn_blocking(move || append(&path, &expired, &reason))
            .await
            .map_err(std::io::Error::other)??;
        p.queue.commit(last).await?;
        Counters::add(&p.counters.dead_lettered, n);
        moved += n;
        if (n as usize) < page.len() {
            break;
        }
    }
    if moved > 0 {
        tracing::warn!(pipeline = p.name(), rows = moved, retention = %humantime::format_duration(p.config.retention), reason, "rows not delivered within retention moved to the dead-letter file");
    }
    Ok(moved)
}

/// Appends rows that failed alone with a permanent error to the dead-letter file (fsynced)
/// with the service's reason. The caller commits them out of the queue afterwards: a crash
/// between the two leaves them in both (delivered again, and dead-lettered twice if they
/// fail again), never in neither.
pub async fn record(p: &Pipeline, rows: Vec<Entry>, reason: String) -> std::io::Result<()> {
    let path = p.dead_letter_path();
    tokio::task::spawn_blocking(move || append(&path, &rows, &reason))
        .await
        .map_err(std::io::Error::other)?
}

/// Appends rows as CSV records `offset,received_at,reason,row` (row as JSON). Writes the
/// header when the file is new. The file is fsynced before the rows leave the queue.
fn append(path: &Path, rows: &[Entry], reason: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let new = !path.exists();
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let mut w = csv::Writer::from_writer(&file);
    if new {
        w.write_record(["offset", "received_at", "reason", "row"])?;
    }
    for e in rows {
        let at =
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(e.received_ms))
                .to_string();
        let row = serde_json::to_string(&e.row).map_err(std::io::Error::other)?;
        w.write_record([e.offset.to_string().as_str(), &at, reason, &row])?;
    }
    w.flush()?;
    drop(w);
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Row;

    #[test]
    fn dead_letters_are_csv_with_offset_time_reason_and_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dl").join("dead-letter.csv");
        let e = |offset, id: &str| Entry {
            offset,
            received_ms: 0,
            row: Row::from_pairs([("id", id)]).unwrap(),
        };
        append(&path, &[e(3, "a")], "HTTP 500").unwrap();
        append(&path, &[e(4, "b,\"c\"")], "paused").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("offset,received_at,reason,row\n3,1970-01-01T00:00:00.000Z,HTTP 500,"),
            "{text}"
        );
        let records: Vec<Vec<String>> = csv::Reader::from_path(&path)
            .unwrap()
            .records()
            .map(|r| r.unwrap().iter().map(str::to_owned).collect())
            .collect();
        assert_eq!(records.len(), 2, "one header, two rows");
        assert_eq!(
            records[1],
            [
                "4",
                "1970-01-01T00:00:00.000Z",
                "paused",
                r#"{"id":"b,\"c\""}"#
            ]
        );
    }
}

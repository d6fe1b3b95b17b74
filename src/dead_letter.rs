//! The dead-letter file: rows that could not be delivered within `retention` are moved out of
//! the queue into `{state_dir}/dead-letter.csv` with their offset, arrival time and the
//! reason, never silently dropped. The admin API serves the file for download.

use std::fs::OpenOptions;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::pipeline::{Counters, Pipeline};
use crate::queue::{Entry, Offset, PushError, QueueError, now_ms};
use crate::row::{Kind, Row};

/// Rows read per step while sweeping.
const SWEEP_PAGE: usize = 1000;

/// Moves every queued row older than the pipeline's retention to its dead-letter file.
/// Returns how many rows were moved.
pub async fn sweep(p: &Pipeline, reason: &str) -> Result<u64, QueueError> {
    let retention_ms = p.config.retention.as_millis() as u64;
    let cutoff = now_ms().saturating_sub(retention_ms);
    let mut moved = 0u64;
    loop {
        let stats = p.queue().stats();
        if stats.oldest_ms.is_none_or(|t| t >= cutoff) {
            break;
        }
        let page = p.queue().peek(SWEEP_PAGE, u64::MAX).await?;
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
        p.queue().commit(last).await?;
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

/// The offset column of a download that failed (`[pipelines.fetch]`): its record holds the
/// event (the URL without its query string), not rows, so it is never queued again.
pub const FAILED_FETCH: &str = "fetch";

/// Appends a download that failed after its retries, fsynced: `event` is what the event
/// row said (the URL without its query string) and `reason` names the host and the status.
pub async fn record_failed_fetch(p: &Pipeline, event: Row, reason: String) -> std::io::Result<()> {
    let path = p.dead_letter_path();
    tokio::task::spawn_blocking(move || {
        let entry = Entry {
            offset: 0,
            received_ms: now_ms(),
            row: event,
        };
        append_as(&path, &[entry], &reason, Some(FAILED_FETCH))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Why dead-lettered rows could not be queued again. The file is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum RequeueError {
    #[error("the dead-letter file: {0}")]
    File(#[from] std::io::Error),
    #[error("dead-letter record {offset}: the row is not a JSON object of fields: {detail}")]
    BadRecord { offset: String, detail: String },
    #[error(transparent)]
    Queue(#[from] PushError),
}

/// Queues dead-lettered rows again (all of them, or those with the given offsets), as new
/// rows at the end of the queue, then rewrites the file without them. A crash between the
/// two leaves them queued and still in the file, never in neither. Returns how many.
pub async fn requeue(p: &Pipeline, offsets: Option<Vec<Offset>>) -> Result<u64, RequeueError> {
    let path = p.dead_letter_path();
    let read_path = path.clone();
    let records = tokio::task::spawn_blocking(move || read_records(&read_path))
        .await
        .map_err(std::io::Error::other)??;
    let wanted = |r: &csv::StringRecord| {
        r.get(0) != Some(FAILED_FETCH)
            && offsets.as_ref().is_none_or(|o| {
                r.get(0)
                    .and_then(|v| v.parse::<Offset>().ok())
                    .is_some_and(|v| o.contains(&v))
            })
    };
    let (chosen, kept): (Vec<_>, Vec<_>) = records.into_iter().partition(wanted);
    if chosen.is_empty() {
        return Ok(0);
    }
    let rows = chosen
        .iter()
        .map(|r| {
            row_from_json(r.get(3).unwrap_or_default()).map_err(|detail| RequeueError::BadRecord {
                offset: r.get(0).unwrap_or_default().to_owned(),
                detail,
            })
        })
        .collect::<Result<Vec<Row>, _>>()?;
    let n = rows.len() as u64;
    p.queue().push(rows).await?;
    p.counters.accept(n);
    tokio::task::spawn_blocking(move || rewrite(&path, &kept))
        .await
        .map_err(std::io::Error::other)??;
    tracing::info!(
        pipeline = p.name(),
        rows = n,
        "dead-lettered rows queued again"
    );
    Ok(n)
}

/// The file's records (without the header); none when there is no file.
fn read_records(path: &Path) -> std::io::Result<Vec<csv::StringRecord>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    csv::Reader::from_reader(file)
        .records()
        .map(|r| r.map_err(std::io::Error::other))
        .collect()
}

/// Replaces the file with `records` (and the header), atomically: a temporary file,
/// fsynced, renamed over it, and the directory fsynced.
fn rewrite(path: &Path, records: &[csv::StringRecord]) -> std::io::Result<()> {
    let tmp = path.with_extension("csv.tmp");
    {
        let file = std::fs::File::create(&tmp)?;
        let mut w = csv::Writer::from_writer(&file);
        w.write_record(["offset", "received_at", "reason", "row"])?;
        for r in records {
            w.write_record(r)?;
        }
        w.flush()?;
        drop(w);
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A JSON object's fields in their order, each value as its raw text.
struct Fields(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Fields, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads a row back from the JSON the file holds, with each value's kind and exact text.
fn row_from_json(text: &str) -> Result<Row, String> {
    let Fields(fields) = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut b = Row::builder();
    for (name, raw) in &fields {
        let raw = raw.get();
        let (kind, value) = match raw.as_bytes().first() {
            Some(b'"') => (
                Kind::String,
                serde_json::from_str::<String>(raw).map_err(|e| e.to_string())?,
            ),
            Some(b't' | b'f') => (Kind::Bool, raw.to_owned()),
            Some(b'n') => (Kind::Null, String::new()),
            Some(b'[' | b'{') => (Kind::Json, raw.to_owned()),
            _ => (Kind::Number, raw.to_owned()),
        };
        b.push(name, kind, &value).map_err(|e| e.to_string())?;
    }
    Ok(b.finish())
}

/// Appends rows as CSV records `offset,received_at,reason,row` (row as JSON). Writes the
/// header when the file is new. The file is fsynced before the rows leave the queue.
fn append(path: &Path, rows: &[Entry], reason: &str) -> std::io::Result<()> {
    append_as(path, rows, reason, None)
}

/// [`append`], with `offset` written in place of each row's offset when given.
fn append_as(
    path: &Path,
    rows: &[Entry],
    reason: &str,
    offset: Option<&str>,
) -> std::io::Result<()> {
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
        let off = offset.map_or_else(|| e.offset.to_string(), str::to_owned);
        w.write_record([off.as_str(), &at, reason, &row])?;
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
    fn a_dead_lettered_row_reads_back_with_its_kinds_and_exact_text() {
        let mut b = Row::builder();
        b.push("id", Kind::String, "a,\"b\"").unwrap();
        b.push("price", Kind::Number, "1.50").unwrap();
        b.push("ok", Kind::Bool, "true").unwrap();
        b.push("none", Kind::Null, "").unwrap();
        b.push("tags", Kind::Json, "[1,2]").unwrap();
        let row = b.finish();
        let json = serde_json::to_string(&row).unwrap();
        assert_eq!(row_from_json(&json).unwrap(), row);
        assert!(row_from_json("[1]").is_err());
    }

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

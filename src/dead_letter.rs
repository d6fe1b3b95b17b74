//! Dead letters: rows that could not be delivered within `retention`, or that the sink refused
//! alone for their data, are moved out of the queue into the pipeline's dead-letter store with
//! their offset, arrival time and the reason, never silently dropped; and queued again from
//! there. The store is `{state_dir}/dead-letter.csv` for a queue this process owns, the
//! `{stream}_dead` stream for a NATS queue ([`crate::queue::dead_letters`]); the admin API
//! downloads either as the same CSV.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::pipeline::{Counters, Pipeline};
use crate::queue::dead_letters::{DeadLetter, FileStore};
use crate::queue::{Entry, Offset, PushError, QueueError, now_ms};
use crate::row::{Kind, Row};

/// Rows read per step while sweeping.
const SWEEP_PAGE: usize = 1000;

/// Moves every queued row older than the pipeline's retention to its dead letters.
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
        let n = expired.len() as u64;
        p.dead_letters()
            .append(records(&expired, reason, None)?)
            .await?;
        p.queue().commit(last).await?;
        Counters::add(&p.counters.dead_lettered, n);
        moved += n;
        if (n as usize) < page.len() {
            break;
        }
    }
    if moved > 0 {
        tracing::warn!(pipeline = p.name(), rows = moved, retention = %humantime::format_duration(p.config.retention), reason, "rows not delivered within retention moved to the dead letters");
    }
    Ok(moved)
}

/// Appends rows that failed alone with a permanent error to the dead letters (the file
/// fsynced, the stream's publishes acknowledged) with the service's reason. The caller commits
/// them out of the queue afterwards: a crash between the two leaves them in both (delivered
/// again, and dead-lettered twice if they fail again), never in neither.
pub async fn record(p: &Pipeline, rows: Vec<Entry>, reason: String) -> std::io::Result<()> {
    p.dead_letters()
        .append(records(&rows, &reason, None)?)
        .await
}

/// The offset column of a download that failed (`[pipelines.fetch]`): its record holds the
/// event (the URL without its query string), not rows, so it is never queued again.
pub const FAILED_FETCH: &str = "fetch";

/// Appends a download that failed after its retries, durably: `event` is what the event
/// row said (the URL without its query string) and `reason` names the host and the status.
pub async fn record_failed_fetch(p: &Pipeline, event: Row, reason: String) -> std::io::Result<()> {
    let entry = Entry {
        offset: 0,
        received_ms: now_ms(),
        row: event,
    };
    p.dead_letters()
        .append(records(&[entry], &reason, Some(FAILED_FETCH))?)
        .await
}

/// Dead-letter records of `rows` with `reason`, and `offset` written in place of each row's
/// offset when given.
fn records(rows: &[Entry], reason: &str, offset: Option<&str>) -> std::io::Result<Vec<DeadLetter>> {
    rows.iter()
        .map(|e| {
            Ok(DeadLetter {
                offset: offset.map_or_else(|| e.offset.to_string(), str::to_owned),
                received_ms: e.received_ms,
                reason: reason.to_owned(),
                row: serde_json::to_string(&e.row).map_err(std::io::Error::other)?,
            })
        })
        .collect()
}

/// Records appended to a shared store per step of an import.
const IMPORT_PAGE: usize = 1000;

/// At start, for a pipeline whose queue keeps its dead letters (NATS): moves the records of a
/// `dead-letter.csv` this replica kept before (an older weir, or the same pipeline on a local
/// queue) into that store, then renames the file to `dead-letter.csv.imported`. A crash
/// between the two imports them again at the next start (listed twice, never lost). Returns
/// how many records moved.
pub async fn import_local_file(p: &Pipeline) -> std::io::Result<u64> {
    if p.queue().dead_letters().is_none() {
        return Ok(0);
    }
    let file = FileStore::new(p.dead_letter_path());
    let Some(records) = file.records().await? else {
        return Ok(0);
    };
    let n = records.len() as u64;
    for page in records.chunks(IMPORT_PAGE) {
        p.dead_letters().append(page.to_vec()).await?;
    }
    let imported = file.path().with_extension("csv.imported");
    tokio::fs::rename(file.path(), &imported).await?;
    tracing::info!(pipeline = p.name(), rows = n, file = %imported.display(), "this replica's dead-letter file moved to the shared dead letters");
    Ok(n)
}

/// Why dead-lettered rows could not be queued again. The dead letters are unchanged in
/// every case.
#[derive(Debug, thiserror::Error)]
pub enum RequeueError {
    #[error("the dead letters: {0}")]
    Store(#[from] std::io::Error),
    #[error("dead-letter record {offset}: the row is not a JSON object of fields: {detail}")]
    BadRecord { offset: String, detail: String },
    #[error(transparent)]
    Queue(#[from] PushError),
}

/// Queues dead-lettered rows again (all of them, or those with the given offsets), as new
/// rows at the end of the queue, then takes them out of the dead letters. A crash between the
/// two leaves them queued and still listed, never in neither. Returns how many.
pub async fn requeue(p: &Pipeline, offsets: Option<Vec<Offset>>) -> Result<u64, RequeueError> {
    let store = p.dead_letters();
    let wanted = |offset: &str| {
        offset != FAILED_FETCH
            && offsets.as_ref().is_none_or(|o| {
                offset
                    .parse::<Offset>()
                    .ok()
                    .is_some_and(|v| o.contains(&v))
            })
    };
    let chosen: Vec<_> = store
        .list()
        .await?
        .into_iter()
        .filter(|r| wanted(&r.offset))
        .collect();
    if chosen.is_empty() {
        return Ok(0);
    }
    let rows = chosen
        .iter()
        .map(|r| {
            row_from_json(&r.row).map_err(|detail| RequeueError::BadRecord {
                offset: r.offset.clone(),
                detail,
            })
        })
        .collect::<Result<Vec<Row>, _>>()?;
    let n = rows.len() as u64;
    p.queue().push(rows).await?;
    p.counters.accept(n);
    store.remove(chosen).await?;
    tracing::info!(
        pipeline = p.name(),
        rows = n,
        "dead-lettered rows queued again"
    );
    Ok(n)
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

    #[tokio::test]
    async fn a_replicas_own_dead_letter_file_moves_to_the_shared_store_once_byte_for_byte() {
        use crate::queue::dead_letters::{DeadLetters, FileStore};
        let server = crate::queue::nats::tests::server();
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"data_dir = "{}"
[server]
listen = "127.0.0.1:0"
[[pipelines]]
name = "orders"
schedule = "1h"
queue = {{ kind = "nats", url = "{}", stream = "WEIR_orders" }}
[pipelines.sink]
kind = "http"
base_url = "http://127.0.0.1:9"
"#,
            dir.path().display(),
            server.url
        );
        let config = crate::config::Config::load(&text, &Default::default()).unwrap();
        let cfg = config.pipelines.into_iter().next().unwrap();
        let crate::config::QueueConfig::Nats(n) = &cfg.queue else {
            panic!("a NATS queue")
        };
        let queue = crate::queue::nats::NatsQueue::open("orders", 100, n)
            .await
            .unwrap();
        let p = Pipeline::new(cfg, std::sync::Arc::new(queue));
        assert_eq!(import_local_file(&p).await.unwrap(), 0, "no file");

        // What this replica wrote before its dead letters were shared.
        let file = FileStore::new(p.dead_letter_path());
        let entry = |offset, id: &str| Entry {
            offset,
            received_ms: 1_764_876_543_210 + offset,
            row: Row::from_pairs([("id", id), ("note", "a,\"b\"")]).unwrap(),
        };
        file.append(records(&[entry(3, "a"), entry(4, "b")], "HTTP 400: \"x\"", None).unwrap())
            .await
            .unwrap();
        let written = std::fs::read(p.dead_letter_path()).unwrap();

        assert_eq!(import_local_file(&p).await.unwrap(), 2);
        assert!(!p.dead_letter_path().exists());
        assert!(p.dead_letter_path().with_extension("csv.imported").exists());
        assert_eq!(import_local_file(&p).await.unwrap(), 0, "moved once");
        assert_eq!(
            crate::queue::dead_letters::tests::downloaded(p.dead_letters().as_ref()).await,
            String::from_utf8(written).unwrap()
        );
        assert_eq!(requeue(&p, Some(vec![4])).await.unwrap(), 1);
        let left = p.dead_letters().list().await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].offset, "3");
        assert_eq!(p.queue().stats().rows, 1, "the requeued row is queued");
    }
}

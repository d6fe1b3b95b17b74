//! Where a pipeline's dead letters are kept: the [`DeadLetters`] store behind one interface,
//! the CSV every store downloads as, and [`FileStore`], the `dead-letter.csv` file of a queue
//! this process owns (memory, disk). A queue shared by several replicas names a store of its
//! own ([`super::Queue::dead_letters`]), so every replica reads and writes the same records.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::Stream;

use super::BoxFuture;
use crate::sync::lock;

/// The CSV header every download starts with.
pub const HEADER: [&str; 4] = ["offset", "received_at", "reason", "row"];

/// One dead-lettered record: the four columns of the CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The row's offset in its queue, or `fetch` for a failed download (never queued again).
    pub offset: String,
    /// When the row was accepted (ms since the epoch).
    pub received_ms: u64,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The row as a JSON object.
    pub row: String,
}

/// A stored record as [`DeadLetters::list`] returns it: what a requeue needs, and the key
/// [`DeadLetters::remove`] takes it back by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Where the store holds it (the record's index in the file, a stream sequence).
    pub key: u64,
    /// The offset column.
    pub offset: String,
    /// The row column (JSON).
    pub row: String,
}

/// A download: the CSV in chunks, so its size never sits in memory.
pub type Chunks = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// A pipeline's dead letters. Every caller (the retention sweep, isolation, failed fetches,
/// requeue, the admin download) goes through this, whichever store is behind it.
pub trait DeadLetters: Send + Sync + 'static {
    /// Appends records, oldest first. Resolves once they are durable (the file fsynced, the
    /// stream's publishes acknowledged), so the caller may then take the rows out of the queue.
    fn append(&self, records: Vec<DeadLetter>) -> BoxFuture<'_, std::io::Result<()>>;

    /// Every record, oldest first.
    fn list(&self) -> BoxFuture<'_, std::io::Result<Vec<Listed>>>;

    /// Takes listed records out (a record already gone is skipped).
    fn remove(&self, records: Vec<Listed>) -> BoxFuture<'_, std::io::Result<()>>;

    /// The CSV of every record, header first. An error to open the store is returned before
    /// the first chunk; a later one ends the stream.
    fn download(&self) -> BoxFuture<'_, std::io::Result<Chunks>>;
}

/// The CSV of `records` (and the header first when `header`), exactly as the file holds them.
pub fn encode(records: &[DeadLetter], header: bool) -> std::io::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    if header {
        w.write_record(HEADER)?;
    }
    for r in records {
        let at =
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(r.received_ms))
                .to_string();
        w.write_record([r.offset.as_str(), &at, &r.reason, &r.row])?;
    }
    w.into_inner().map_err(|e| e.into_error())
}

/// The header line alone: the download of a store that holds nothing.
pub fn header_only() -> Bytes {
    Bytes::from_static(b"offset,received_at,reason,row\n")
}

/// The dead-letter file, `{state_dir}/dead-letter.csv`: one CSV record per dead letter,
/// appended and fsynced; a removal rewrites it atomically.
#[derive(Clone)]
pub struct FileStore {
    path: PathBuf,
    /// Held by every write (in the blocking pool), so a removal's rewrite never loses a
    /// record appended meanwhile.
    writing: Arc<Mutex<()>>,
}

impl FileStore {
    pub fn new(path: PathBuf) -> FileStore {
        FileStore {
            path,
            writing: Arc::new(Mutex::new(())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every record of the file, whole (`None` when there is no file).
    pub async fn records(&self) -> std::io::Result<Option<Vec<DeadLetter>>> {
        self.blocking(|path| {
            if !path.exists() {
                return Ok(None);
            }
            read_records(path)?
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let text = r.get(1).unwrap_or_default();
                    let at = humantime::parse_rfc3339(text)
                        .ok()
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .ok_or_else(|| {
                            std::io::Error::other(format!(
                                "{} record {}: received_at {text:?} is not an RFC 3339 time",
                                path.display(),
                                i + 1
                            ))
                        })?;
                    Ok(DeadLetter {
                        offset: r.get(0).unwrap_or_default().to_owned(),
                        received_ms: at.as_millis() as u64,
                        reason: r.get(2).unwrap_or_default().to_owned(),
                        row: r.get(3).unwrap_or_default().to_owned(),
                    })
                })
                .collect::<std::io::Result<Vec<_>>>()
                .map(Some)
        })
        .await
    }

    /// Runs `f` on the blocking pool with the write lock held.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Path) -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let (path, writing) = (self.path.clone(), self.writing.clone());
        tokio::task::spawn_blocking(move || {
            let _held = lock(&writing);
            f(&path)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

impl DeadLetters for FileStore {
    fn append(&self, records: Vec<DeadLetter>) -> BoxFuture<'_, std::io::Result<()>> {
        Box::pin(self.blocking(move |path| append(path, &records)))
    }

    fn list(&self) -> BoxFuture<'_, std::io::Result<Vec<Listed>>> {
        Box::pin(self.blocking(|path| {
            Ok(read_records(path)?
                .iter()
                .enumerate()
                .map(|(i, r)| Listed {
                    key: i as u64,
                    offset: r.get(0).unwrap_or_default().to_owned(),
                    row: r.get(3).unwrap_or_default().to_owned(),
                })
                .collect())
        }))
    }

    fn remove(&self, records: Vec<Listed>) -> BoxFuture<'_, std::io::Result<()>> {
        Box::pin(self.blocking(move |path| {
            // Appends only add at the end and every rewrite holds the lock: a listed record is
            // still at its index, and is removed only if it still says the same.
            let kept: Vec<csv::StringRecord> = read_records(path)?
                .into_iter()
                .enumerate()
                .filter(|(i, r)| {
                    !records.iter().any(|l| {
                        l.key == *i as u64
                            && r.get(0) == Some(l.offset.as_str())
                            && r.get(3) == Some(l.row.as_str())
                    })
                })
                .map(|(_, r)| r)
                .collect();
            rewrite(path, &kept)
        }))
    }

    fn download(&self) -> BoxFuture<'_, std::io::Result<Chunks>> {
        Box::pin(async move {
            // Streamed from the file in chunks, so a large file never sits in memory whole.
            let chunks: Chunks = match tokio::fs::File::open(&self.path).await {
                Ok(file) => Box::pin(tokio_util::io::ReaderStream::new(file)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Box::pin(futures_util::stream::iter([Ok(header_only())]))
                }
                Err(e) => return Err(e),
            };
            Ok(chunks)
        })
    }
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
        w.write_record(HEADER)?;
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

/// Appends records as CSV records `offset,received_at,reason,row`. Writes the header when
/// the file is new. The file is fsynced before the rows leave the queue.
fn append(path: &Path, records: &[DeadLetter]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let new = !path.exists();
    let bytes = encode(records, new)?;
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(&bytes)?;
    file.sync_all()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn record(offset: &str, id: &str, reason: &str) -> DeadLetter {
        DeadLetter {
            offset: offset.into(),
            received_ms: 0,
            reason: reason.into(),
            row: serde_json::json!({ "id": id }).to_string(),
        }
    }

    /// A store's whole download, as text.
    pub(crate) async fn downloaded(store: &dyn DeadLetters) -> String {
        use futures_util::StreamExt;
        let mut chunks = store.download().await.unwrap();
        let mut text = Vec::new();
        while let Some(chunk) = chunks.next().await {
            text.extend_from_slice(&chunk.unwrap());
        }
        String::from_utf8(text).unwrap()
    }

    #[tokio::test]
    async fn dead_letters_are_csv_with_offset_time_reason_and_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dl").join("dead-letter.csv");
        let store = FileStore::new(path.clone());
        assert_eq!(
            downloaded(&store).await,
            "offset,received_at,reason,row\n",
            "no file yet: the header alone"
        );
        store
            .append(vec![record("3", "a", "HTTP 500")])
            .await
            .unwrap();
        store
            .append(vec![record("4", "b,\"c\"", "paused")])
            .await
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("offset,received_at,reason,row\n3,1970-01-01T00:00:00.000Z,HTTP 500,"),
            "{text}"
        );
        assert_eq!(downloaded(&store).await, text, "the download is the file");
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
        assert_eq!(
            text.as_bytes(),
            encode(
                &[
                    record("3", "a", "HTTP 500"),
                    record("4", "b,\"c\"", "paused")
                ],
                true
            )
            .unwrap(),
            "appends and one encoding write the same bytes"
        );
    }

    #[tokio::test]
    async fn a_removal_takes_only_the_listed_records_and_keeps_one_appended_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("dead-letter.csv"));
        store
            .append(vec![
                record("0", "a", "r"),
                record("1", "b", "r"),
                record("2", "c", "r"),
            ])
            .await
            .unwrap();
        let listed = store.list().await.unwrap();
        assert_eq!(listed.iter().map(|l| l.key).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(listed[1].offset, "1");
        assert_eq!(listed[1].row, r#"{"id":"b"}"#);
        store.append(vec![record("3", "d", "r")]).await.unwrap();
        store
            .remove(vec![listed[0].clone(), listed[2].clone()])
            .await
            .unwrap();
        let offsets: Vec<String> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.offset)
            .collect();
        assert_eq!(offsets, ["1", "3"]);
        // A stale listing (the record at key 0 is another one now) removes nothing.
        store.remove(vec![listed[0].clone()]).await.unwrap();
        assert_eq!(store.list().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn the_file_reads_back_whole_with_each_time_to_the_millisecond() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("dead-letter.csv"));
        assert_eq!(store.records().await.unwrap(), None);
        let written = vec![
            DeadLetter {
                received_ms: 1_764_876_543_210,
                ..record("5", "a", "HTTP 400: \"x\"")
            },
            record("fetch", "b", "HTTP 403 from files.example"),
        ];
        store.append(written.clone()).await.unwrap();
        assert_eq!(store.records().await.unwrap(), Some(written));
        std::fs::write(
            store.path(),
            "offset,received_at,reason,row\n1,yesterday,r,{}\n",
        )
        .unwrap();
        let err = store.records().await.unwrap_err();
        assert!(err.to_string().contains("record 1: received_at"), "{err}");
    }
}

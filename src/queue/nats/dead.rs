//! The dead letters of a NATS pipeline: a JetStream stream `{stream}_dead` beside the rows'
//! stream, one message per record on `{stream}_dead.rows`, so every replica appends to,
//! downloads and requeues from the same records.
//!
//! - **A record** is `{"v":1,"offset":"3","received_ms":…,"reason":"…","row":{…}}`: the four
//!   columns of the CSV, the row as its JSON. A record of another version is refused, not
//!   misread.
//! - **Append** publishes every record with its acknowledgement awaited (within
//!   `publish_timeout`), as the file's fsync is, before the caller commits the rows out.
//! - **Download and list** read the stream from its first sequence with an ephemeral pull
//!   consumer, [`PAGE`] messages at a time; the download renders each page as CSV, the same
//!   bytes the file would hold, so memory stays bounded.
//! - **Remove** deletes messages by sequence (a requeue pushes the rows first, so a crash
//!   between leaves them in both, never in neither).

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::queue::BoxFuture;
use crate::queue::dead_letters::{Chunks, DeadLetter, DeadLetters, Listed, encode, header_only};

/// Messages read per step of a download or a listing.
const PAGE: usize = 256;

/// The record a message holds, as written.
#[derive(Serialize)]
struct Written<'a> {
    v: u32,
    offset: &'a str,
    received_ms: u64,
    reason: &'a str,
    row: &'a RawValue,
}

/// The record a message holds, as read.
#[derive(Deserialize)]
struct Read {
    offset: String,
    received_ms: u64,
    reason: String,
    row: Box<RawValue>,
}

/// Just the version, read first so a newer record is named, not misread.
#[derive(Deserialize)]
struct Version {
    v: u32,
}

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// A message's payload for `record`.
fn to_payload(record: &DeadLetter) -> std::io::Result<Bytes> {
    let row: &RawValue = serde_json::from_str(&record.row)
        .map_err(|e| io(format!("a dead-lettered row is not JSON: {e}")))?;
    let bytes = serde_json::to_vec(&Written {
        v: 1,
        offset: &record.offset,
        received_ms: record.received_ms,
        reason: &record.reason,
        row,
    })
    .map_err(io)?;
    Ok(Bytes::from(bytes))
}

/// The record in the message at `sequence`.
fn from_payload(sequence: u64, payload: &[u8]) -> std::io::Result<DeadLetter> {
    let bad = |e: serde_json::Error| {
        io(format!(
            "dead-letter stream sequence {sequence} is not a record: {e}"
        ))
    };
    let Version { v } = serde_json::from_slice(payload).map_err(bad)?;
    if v != 1 {
        return Err(io(format!(
            "dead-letter stream sequence {sequence} is a record of version {v}, newer than this weir reads"
        )));
    }
    let r: Read = serde_json::from_slice(payload).map_err(bad)?;
    Ok(DeadLetter {
        offset: r.offset,
        received_ms: r.received_ms,
        reason: r.reason,
        row: r.row.get().to_owned(),
    })
}

/// The dead-letter stream of one pipeline.
#[derive(Clone)]
pub(super) struct StreamStore {
    js: jetstream::Context,
    stream: stream::Stream,
    subject: String,
    url: String,
    publish_timeout: Duration,
}

impl StreamStore {
    /// Finds or creates the stream `name` (`{stream}_dead`) with the queue's `replicas`.
    /// Dead letters stay until they are requeued: the stream has no limits.
    pub(super) async fn open(
        js: jetstream::Context,
        name: String,
        replicas: usize,
        url: &str,
        publish_timeout: Duration,
    ) -> anyhow::Result<StreamStore> {
        let subject = format!("{name}.rows");
        let handle = js
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                retention: stream::RetentionPolicy::Limits,
                num_replicas: replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                anyhow::anyhow!("opening the dead-letter stream {name} on NATS at {url}: {e}")
            })?;
        Ok(StreamStore {
            js,
            stream: handle,
            subject,
            url: url.to_owned(),
            publish_timeout,
        })
    }

    fn nats(&self, e: impl std::fmt::Display) -> std::io::Error {
        io(format!(
            "the dead-letter stream on NATS at {}: {e}",
            self.url
        ))
    }

    async fn publish(&self, records: Vec<DeadLetter>) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        if self.js.client().connection_state() != async_nats::connection::State::Connected {
            return Err(self.nats("not connected"));
        }
        let payloads = records
            .iter()
            .map(to_payload)
            .collect::<std::io::Result<Vec<_>>>()?;
        let deadline = Instant::now() + self.publish_timeout;
        let late = || {
            self.nats(format!(
                "no acknowledgement within {:?}",
                self.publish_timeout
            ))
        };
        // Every publish in flight at once; all acknowledgements awaited.
        let mut acks = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let sent =
                tokio::time::timeout_at(deadline, self.js.publish(self.subject.clone(), payload))
                    .await
                    .map_err(|_| late())?;
            acks.push(sent.map_err(|e| self.nats(e))?);
        }
        for ack in acks {
            tokio::time::timeout_at(deadline, ack)
                .await
                .map_err(|_| late())?
                .map_err(|e| self.nats(e))?;
        }
        Ok(())
    }

    /// A reader from the stream's first sequence, or `None` when the stream holds nothing.
    async fn reader(&self) -> std::io::Result<Option<consumer::PullConsumer>> {
        let info = self.stream.get_info().await.map_err(|e| self.nats(e))?;
        if info.state.messages == 0 {
            return Ok(None);
        }
        let reader = self
            .stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| self.nats(e))?;
        Ok(Some(reader))
    }

    /// The next page of records with their sequences, and whether more follow.
    async fn page(
        &self,
        reader: &consumer::PullConsumer,
    ) -> std::io::Result<(Vec<(u64, DeadLetter)>, bool)> {
        let mut batch = reader
            .fetch()
            .max_messages(PAGE)
            .messages()
            .await
            .map_err(|e| self.nats(e))?;
        let mut out = Vec::new();
        let mut more = false;
        while let Some(msg) = batch.next().await {
            let msg = msg.map_err(|e| self.nats(e))?;
            let info = msg.info().map_err(|e| self.nats(e))?;
            more = info.pending > 0;
            let sequence = info.stream_sequence;
            out.push((sequence, from_payload(sequence, &msg.payload)?));
        }
        Ok((out, more))
    }

    /// Deletes the reader (it would expire by itself after its inactivity threshold).
    fn done_with(&self, reader: consumer::PullConsumer) {
        let stream = self.stream.clone();
        let name = reader.cached_info().name.clone();
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
    }

    async fn all(&self) -> std::io::Result<Vec<Listed>> {
        let Some(reader) = self.reader().await? else {
            return Ok(Vec::new());
        };
        let mut listed = Vec::new();
        let read = async {
            loop {
                let (page, more) = self.page(&reader).await?;
                let empty = page.is_empty();
                listed.extend(page.into_iter().map(|(key, r)| Listed {
                    key,
                    offset: r.offset,
                    row: r.row,
                }));
                if !more || empty {
                    return Ok::<(), std::io::Error>(());
                }
            }
        }
        .await;
        self.done_with(reader);
        read.map(|()| listed)
    }

    async fn delete(&self, records: Vec<Listed>) -> std::io::Result<()> {
        for r in records {
            match self.stream.delete_message(r.key).await {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        stream::DeleteMessageErrorKind::JetStream(j)
                            if j.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND
                                || j.error_code() == jetstream::ErrorCode::SEQUENCE_NOT_FOUND
                    ) => {}
                Err(e) => return Err(self.nats(e)),
            }
        }
        Ok(())
    }

    async fn csv(&self) -> std::io::Result<Chunks> {
        let Some(reader) = self.reader().await? else {
            return Ok(Box::pin(futures_util::stream::iter([Ok(header_only())])));
        };
        // Header first, then one chunk per page until the last record.
        let start = Some((self.clone(), reader, true));
        let chunks = futures_util::stream::unfold(start, |state| async move {
            let (store, reader, first) = state?;
            let (page, more) = match store.page(&reader).await {
                Ok(read) => read,
                Err(e) => {
                    store.done_with(reader);
                    return Some((Err(e), None));
                }
            };
            let records: Vec<DeadLetter> = page.into_iter().map(|(_, r)| r).collect();
            let chunk = encode(&records, first).map(Bytes::from);
            if more && !records.is_empty() {
                Some((chunk, Some((store, reader, false))))
            } else {
                store.done_with(reader);
                Some((chunk, None))
            }
        });
        Ok(Box::pin(chunks))
    }
}

impl DeadLetters for StreamStore {
    fn append(&self, records: Vec<DeadLetter>) -> BoxFuture<'_, std::io::Result<()>> {
        Box::pin(self.publish(records))
    }

    fn list(&self) -> BoxFuture<'_, std::io::Result<Vec<Listed>>> {
        Box::pin(self.all())
    }

    fn remove(&self, records: Vec<Listed>) -> BoxFuture<'_, std::io::Result<()>> {
        Box::pin(self.delete(records))
    }

    fn download(&self) -> BoxFuture<'_, std::io::Result<Chunks>> {
        Box::pin(self.csv())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::dead_letters::FileStore;
    use crate::queue::dead_letters::tests::downloaded;
    use crate::queue::nats::tests::server;

    fn record(offset: &str, id: &str, reason: &str, at: u64) -> DeadLetter {
        DeadLetter {
            offset: offset.into(),
            received_ms: at,
            reason: reason.into(),
            row: serde_json::json!({ "id": id, "n": 1.50, "tags": [1, 2] }).to_string(),
        }
    }

    async fn open(url: &str) -> StreamStore {
        let client = async_nats::connect(url).await.unwrap();
        StreamStore::open(
            jetstream::new(client),
            "WEIR_dl_dead".to_owned(),
            1,
            url,
            Duration::from_secs(2),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn the_stream_downloads_the_same_csv_the_file_holds_across_pages() {
        let server = server();
        let a = open(&server.url).await;
        assert_eq!(
            downloaded(&a).await,
            "offset,received_at,reason,row\n",
            "an empty stream: the header alone"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = FileStore::new(dir.path().join("dead-letter.csv"));
        // More than two pages, appended in three calls, with a reason that needs quoting.
        let records: Vec<DeadLetter> = (0..(2 * PAGE + 7))
            .map(|i| {
                record(
                    &i.to_string(),
                    &format!("r{i},\"q\""),
                    "HTTP 400: \"bad\", row 1",
                    1_700_000_000_123 + i as u64,
                )
            })
            .collect();
        for part in [&records[..5], &records[5..300], &records[300..]] {
            a.append(part.to_vec()).await.unwrap();
            file.append(part.to_vec()).await.unwrap();
        }
        let fetch = DeadLetter {
            offset: "fetch".into(),
            ..record(
                "x",
                "https://files.example/a.zip",
                "HTTP 403 from files.example",
                5,
            )
        };
        a.append(vec![fetch.clone()]).await.unwrap();
        file.append(vec![fetch]).await.unwrap();

        // Another replica, its own connection, reads the same records.
        let b = open(&server.url).await;
        let from_file = std::fs::read_to_string(file.path()).unwrap();
        assert_eq!(downloaded(&b).await, from_file);
        let listed = b.list().await.unwrap();
        assert_eq!(listed.len(), records.len() + 1);
        assert_eq!(listed[3].offset, "3");
        assert_eq!(listed[3].row, records[3].row, "the row's exact text");
        assert_eq!(listed.last().unwrap().offset, "fetch");
    }

    #[tokio::test]
    async fn removed_records_are_gone_for_every_replica_and_a_second_removal_is_harmless() {
        let server = server();
        let a = open(&server.url).await;
        let b = open(&server.url).await;
        a.append(
            (0..4)
                .map(|i| record(&i.to_string(), "x", "r", 0))
                .collect(),
        )
        .await
        .unwrap();
        let listed = b.list().await.unwrap();
        let chosen = vec![listed[1].clone(), listed[2].clone()];
        b.remove(chosen.clone()).await.unwrap();
        a.remove(chosen).await.unwrap();
        let left: Vec<String> = a
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.offset)
            .collect();
        assert_eq!(left, ["0", "3"]);
        let text = downloaded(&a).await;
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.lines().nth(2).unwrap().starts_with("3,"), "{text}");
    }

    #[tokio::test]
    async fn a_record_of_a_newer_version_is_refused_not_misread() {
        let server = server();
        let a = open(&server.url).await;
        a.js.publish(a.subject.clone(), Bytes::from_static(br#"{"v":2,"x":1}"#))
            .await
            .unwrap()
            .await
            .unwrap();
        let err = a.list().await.unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
        let err = match a.download().await {
            Ok(mut chunks) => chunks.next().await.unwrap().unwrap_err(),
            Err(e) => e,
        };
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[tokio::test]
    async fn an_append_to_a_lost_server_fails_and_says_where() {
        let server = server();
        let a = open(&server.url).await;
        drop(server);
        let err = a.append(vec![record("0", "x", "r", 0)]).await.unwrap_err();
        assert!(err.to_string().contains("dead-letter stream"), "{err}");
    }
}

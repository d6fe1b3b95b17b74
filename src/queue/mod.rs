//! The bounded, ordered queue of rows each pipeline keeps between ingest and delivery.
//!
//! [`Queue`] is the one interface ingest, the scheduler and the admin API use; they never know
//! which backend is behind it. Backends: [`memory::MemoryQueue`] (fast, lost on restart) and
//! [`disk::DiskSpool`] (a crash-safe, segmented log on disk) and [`nats::NatsQueue`] (a
//! NATS JetStream stream shared by several replicas).
//!
//! Every row gets an [`Offset`] when it is pushed: a per-pipeline number that only grows.
//! Rows leave a queue only through [`Queue::commit`], once a sink has delivered them.

#[cfg(test)]
pub(crate) mod contract;
pub mod dead_letters;
pub mod disk;
pub mod memory;
pub mod nats;
pub mod waiting;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::row::Row;

/// A row's position in its pipeline's queue. Offsets only grow; the first row gets 0.
pub type Offset = u64;

/// The future type the trait methods return, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A queued row with its offset and the time it was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub offset: Offset,
    /// When ingest accepted the row, in milliseconds since the Unix epoch.
    pub received_ms: u64,
    pub row: Row,
}

/// What a queue holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    pub rows: u64,
    pub bytes: u64,
    pub capacity_rows: u64,
    /// `None` when the backend does not bound bytes.
    pub capacity_bytes: Option<u64>,
    /// Acceptance time of the oldest queued row (ms since the epoch), if any.
    pub oldest_ms: Option<u64>,
    /// The offset the next pushed row will get.
    pub next_offset: Offset,
}

/// The batch a sink is delivering, recorded before the upload starts so that after a crash
/// weir knows which rows may already have reached the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    pub first: Offset,
    pub last: Offset,
    /// The sink's job id (a Celonis Data Push job), once it exists.
    pub job_id: Option<String>,
}

/// Why rows could not be pushed. Nothing of the request was queued in any case.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("queue is full: it holds {queued} of {capacity} rows and cannot take {incoming} more")]
    FullRows {
        queued: u64,
        capacity: u64,
        incoming: u64,
    },
    #[error("queue is full: it holds {queued} of {capacity} bytes and cannot take {incoming} more")]
    FullBytes {
        queued: u64,
        capacity: u64,
        incoming: u64,
    },
    /// The backend cannot store anything now (disk full, read-only, I/O error).
    #[error("queue storage is unavailable: {0}")]
    Unavailable(String),
    /// The queue is shutting down.
    #[error("queue is closed")]
    Closed,
}

/// Errors of reading, committing or rewinding.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue storage failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("offset {requested} is no longer retained (oldest retained offset is {oldest})")]
    OffsetGone { requested: Offset, oldest: Offset },
    #[error("offset {requested} has not been written yet (next offset is {next})")]
    OffsetAhead { requested: Offset, next: Offset },
}

/// A bounded FIFO of rows. All methods take `&self`; backends synchronise internally.
pub trait Queue: Send + Sync + 'static {
    /// Queues all rows or none of them. Resolves once the rows are as durable as the
    /// backend makes them (for the disk spool: fsynced), so a 2xx can be sent.
    fn push(&self, rows: Vec<Row>) -> BoxFuture<'_, Result<(), PushError>>;

    /// Whether [`Queue::push_delivery`] uses the delivery's name (a queue several replicas
    /// share), so the caller builds the name only then.
    fn names_deliveries(&self) -> bool {
        false
    }

    /// [`Queue::push`] for the rows of a delivery the sender named (its delivery id or
    /// `Idempotency-Key`), so a queue shared by several replicas stores a retry of it once,
    /// whichever replica takes the retry. Local queues push as usual (the pipeline's replay
    /// memory answers a retry there).
    fn push_delivery(
        &self,
        rows: Vec<Row>,
        delivery: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), PushError>> {
        let _ = delivery;
        self.push(rows)
    }

    /// The oldest queued rows, oldest first, without removing them: at most `max_rows` rows
    /// and at most `max_bytes` of row data (`Row::encoded_len`), except that a batch always
    /// holds the oldest row even when that row alone is larger. Never returns a row at or
    /// below the last offset passed to [`Queue::commit`], even if that commit failed to persist.
    fn peek(
        &self,
        max_rows: usize,
        max_bytes: u64,
    ) -> BoxFuture<'_, Result<Vec<Entry>, QueueError>>;

    /// Removes every queued row whose offset is `<= through`.
    ///
    /// The removal takes effect in memory at once, whatever happens on disk: `peek` no longer
    /// returns those rows. A backend that persists its cursor returns `Err(QueueError::Io)`
    /// when writing it fails (disk full, too many open files); the rows stay removed, and a
    /// restart before the cursor reaches the disk delivers them again. A later `commit` with
    /// the same or a lower offset, or [`Queue::sync`], retries the write and returns `Ok`
    /// once the cursor is on disk. So a caller that must know the rows are committed for
    /// good keeps its in-flight record and retries `commit(through)` until it returns `Ok`.
    fn commit(&self, through: Offset) -> BoxFuture<'_, Result<(), QueueError>>;

    /// What the queue holds now.
    fn stats(&self) -> QueueStats;

    /// Records the batch being delivered (or clears the record with `None`).
    fn set_in_flight(&self, batch: Option<InFlight>) -> BoxFuture<'_, Result<(), QueueError>>;

    /// The batch that was in flight when the process last stopped, if any.
    fn in_flight(&self) -> Option<InFlight>;

    /// Takes or keeps this process's right to deliver from the queue (checked before every
    /// run). A queue only this process uses always grants it; one shared by several replicas
    /// (NATS) grants it to one replica at a time, and after a takeover [`Queue::in_flight`]
    /// returns the batch the previous holder left open.
    fn lease(&self) -> BoxFuture<'_, Result<bool, QueueError>> {
        Box::pin(async { Ok(true) })
    }

    /// The pause flag every process using this queue shares, or `None` when the queue is
    /// this process's own (the pipeline's state file holds the flag then).
    fn shared_pause(&self) -> Option<bool> {
        None
    }

    /// Stores the shared pause flag (a no-op for a queue this process owns).
    fn share_pause(&self, paused: bool) -> BoxFuture<'_, Result<(), QueueError>> {
        let _ = paused;
        Box::pin(async { Ok(()) })
    }

    /// The delivery health the replica that delivers shared, while another replica delivers
    /// (a shared queue); `None` while this process delivers, and for a queue it owns.
    fn shared_health(&self) -> Option<SharedHealth> {
        None
    }

    /// Shares this process's delivery health with the other replicas (a no-op for a queue
    /// this process owns).
    fn share_health(&self, health: SharedHealth) -> BoxFuture<'_, Result<(), QueueError>> {
        let _ = health;
        Box::pin(async { Ok(()) })
    }

    /// A key-value store every process using this queue shares (for a team's job budget),
    /// or `None` for a queue this process owns.
    fn shared_store(&self) -> Option<std::sync::Arc<dyn SharedStore>> {
        None
    }

    /// What the queue still waits for before it takes rows (`/readyz` is 503 meanwhile), or
    /// `None` when it is ready.
    fn waiting_for(&self) -> Option<String> {
        None
    }

    /// Makes rows from `from` on deliverable again (those still retained).
    fn replay_from(&self, from: Offset) -> BoxFuture<'_, Result<u64, QueueError>> {
        let _ = from;
        Box::pin(async {
            Err(QueueError::Unsupported(
                "replay needs the disk spool: the memory queue forgets delivered rows",
            ))
        })
    }

    /// Where the dead letters of this queue's pipeline go when the queue names a store of its
    /// own: one every replica sharing the queue reads and writes (NATS). `None` (local queues):
    /// the pipeline's `dead-letter.csv` file.
    fn dead_letters(&self) -> Option<Arc<dyn dead_letters::DeadLetters>> {
        None
    }

    /// fsyncs done so far and the time they took, for backends that fsync.
    fn fsync_stats(&self) -> Option<(u64, Duration)> {
        None
    }

    /// Flushes whatever is buffered to stable storage (called at shutdown), including a
    /// cursor whose write failed in `commit`.
    fn sync(&self) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A pipeline's delivery health as the replica that delivers shares it, so every replica
/// shows, and a replica that takes over continues, the same FAILING/SUSPENDED clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedHealth {
    pub health: crate::pipeline::Health,
    /// When the current run of failures began (ms since the epoch).
    pub failing_since_ms: Option<u64>,
}

/// A record of a [`SharedStore`]: its value and its revision.
pub type Revisioned = (Vec<u8>, u64);

/// Records every process using a shared queue reads and writes with compare-and-swap.
pub trait SharedStore: Send + Sync + 'static {
    /// The value of `key` and its revision, or `None` when it was never written.
    fn load(&self, key: String) -> BoxFuture<'_, Result<Option<Revisioned>, QueueError>>;

    /// Writes `value` if `key` is still at `revision` (0: never written). `Ok(false)` when
    /// another process wrote it first: load it again and retry.
    fn store(
        &self,
        key: String,
        value: Vec<u8>,
        revision: u64,
    ) -> BoxFuture<'_, Result<bool, QueueError>>;

    /// Where the records live, for messages.
    fn describe(&self) -> String;
}

impl PushError {
    /// A hint for the sender's `Retry-After` when the error is temporary.
    pub fn is_full(&self) -> bool {
        matches!(
            self,
            PushError::FullRows { .. } | PushError::FullBytes { .. }
        )
    }
}

pub use crate::clock::now_ms;

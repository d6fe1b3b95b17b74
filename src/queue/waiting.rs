//! A NATS queue that could not be opened at start (`wait_for_nats = true`): until NATS is
//! reached it answers as a lost NATS does (a push is refused as unavailable, so ingest
//! answers 503 with `Retry-After`; delivery stands by; `/readyz` is 503), while a background
//! task keeps opening the real queue with backoff. Once it is open, every call goes to it.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use super::dead_letters::{Chunks, DeadLetter, DeadLetters, Listed};
use super::nats::NatsQueue;
use super::{
    BoxFuture, Entry, InFlight, Offset, PushError, Queue, QueueError, QueueStats, Revisioned,
    SharedHealth, SharedStore,
};
use crate::config::NatsQueueConfig;
use crate::row::Row;

/// The first wait between attempts to open the queue; it doubles up to [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(500);
const MAX_WAIT: Duration = Duration::from_secs(10);

pub struct WaitingQueue {
    /// The queue, once open (shared with the job budget's [`LaterStore`]).
    inner: Arc<OnceLock<Arc<NatsQueue>>>,
    url: String,
    capacity_rows: u64,
    max_bytes: u64,
}

impl WaitingQueue {
    /// A queue that opens `cfg`'s stream as soon as NATS answers (`first_error` is why the
    /// first attempt failed, logged once here).
    pub fn start(
        name: &str,
        capacity_rows: u64,
        cfg: &NatsQueueConfig,
        first_error: &anyhow::Error,
    ) -> Arc<WaitingQueue> {
        tracing::warn!(pipeline = name, url = %cfg.url, error = %first_error, "NATS is not reachable; weir starts anyway (wait_for_nats) and is not ready until it is");
        let q = Arc::new(WaitingQueue {
            inner: Arc::new(OnceLock::new()),
            url: cfg.url.clone(),
            capacity_rows,
            max_bytes: cfg.max_bytes,
        });
        let weak: Weak<WaitingQueue> = Arc::downgrade(&q);
        let (name, cfg) = (name.to_owned(), cfg.clone());
        tokio::spawn(async move {
            let mut wait = FIRST_WAIT;
            for attempt in 1u64.. {
                tokio::time::sleep(wait).await;
                if weak.strong_count() == 0 {
                    return;
                }
                match NatsQueue::open(&name, capacity_rows, &cfg).await {
                    Ok(opened) => {
                        let opened = Arc::new(opened);
                        opened.start_background();
                        let Some(q) = weak.upgrade() else { return };
                        let _ = q.inner.set(opened);
                        tracing::info!(pipeline = %name, url = %cfg.url, stream = %cfg.stream, "NATS reached; the queue is open");
                        return;
                    }
                    Err(e) => {
                        // Every attempt at first, then one in ten, so the log names the cause.
                        if attempt < 5 || attempt.is_multiple_of(10) {
                            tracing::warn!(pipeline = %name, url = %cfg.url, error = %e, attempt, "still waiting for NATS");
                        }
                        wait = (wait * 2).min(MAX_WAIT);
                    }
                }
            }
        });
        q
    }

    fn open(&self) -> Option<&Arc<NatsQueue>> {
        self.inner.get()
    }

    fn waiting(&self) -> String {
        format!("waiting for NATS at {}", self.url)
    }

    fn not_open(&self) -> QueueError {
        QueueError::Io(std::io::Error::other(self.waiting()))
    }
}

impl Queue for WaitingQueue {
    fn push(&self, rows: Vec<Row>) -> BoxFuture<'_, Result<(), PushError>> {
        match self.open() {
            Some(q) => q.push(rows),
            None => Box::pin(async { Err(PushError::Unavailable(self.waiting())) }),
        }
    }

    fn names_deliveries(&self) -> bool {
        true
    }

    fn push_delivery(
        &self,
        rows: Vec<Row>,
        delivery: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), PushError>> {
        match self.open() {
            Some(q) => q.push_delivery(rows, delivery),
            None => Box::pin(async { Err(PushError::Unavailable(self.waiting())) }),
        }
    }

    fn peek(
        &self,
        max_rows: usize,
        max_bytes: u64,
    ) -> BoxFuture<'_, Result<Vec<Entry>, QueueError>> {
        match self.open() {
            Some(q) => q.peek(max_rows, max_bytes),
            None => Box::pin(async { Err(self.not_open()) }),
        }
    }

    fn commit(&self, through: Offset) -> BoxFuture<'_, Result<(), QueueError>> {
        match self.open() {
            Some(q) => q.commit(through),
            None => Box::pin(async { Err(self.not_open()) }),
        }
    }

    fn stats(&self) -> QueueStats {
        match self.open() {
            Some(q) => q.stats(),
            None => QueueStats {
                capacity_rows: self.capacity_rows,
                capacity_bytes: Some(self.max_bytes),
                ..QueueStats::default()
            },
        }
    }

    fn set_in_flight(&self, batch: Option<InFlight>) -> BoxFuture<'_, Result<(), QueueError>> {
        match self.open() {
            Some(q) => q.set_in_flight(batch),
            None => Box::pin(async { Err(self.not_open()) }),
        }
    }

    fn in_flight(&self) -> Option<InFlight> {
        self.open().and_then(|q| q.in_flight())
    }

    /// Not granted before NATS is reached: there is nothing to deliver from yet.
    fn lease(&self) -> BoxFuture<'_, Result<bool, QueueError>> {
        match self.open() {
            Some(q) => q.lease(),
            None => Box::pin(async { Ok(false) }),
        }
    }

    fn shared_pause(&self) -> Option<bool> {
        self.open().and_then(|q| q.shared_pause())
    }

    fn share_pause(&self, paused: bool) -> BoxFuture<'_, Result<(), QueueError>> {
        match self.open() {
            Some(q) => q.share_pause(paused),
            None => Box::pin(async { Err(self.not_open()) }),
        }
    }

    fn shared_health(&self) -> Option<SharedHealth> {
        self.open().and_then(|q| q.shared_health())
    }

    fn share_health(&self, health: SharedHealth) -> BoxFuture<'_, Result<(), QueueError>> {
        match self.open() {
            Some(q) => q.share_health(health),
            None => Box::pin(async { Err(self.not_open()) }),
        }
    }

    /// The shared store as soon as NATS is reached; asked for before that (the job budget is
    /// set up at start), it refuses every call until then.
    fn shared_store(&self) -> Option<Arc<dyn SharedStore>> {
        Some(Arc::new(LaterStore {
            queue: self.inner.clone(),
            url: self.url.clone(),
        }))
    }

    /// The shared dead letters as soon as NATS is reached; until then every call to them
    /// fails naming the URL (a replica's own file is never written instead).
    fn dead_letters(&self) -> Option<Arc<dyn DeadLetters>> {
        Some(Arc::new(LaterDeadLetters {
            queue: self.inner.clone(),
            url: self.url.clone(),
        }))
    }

    fn replay_from(&self, from: Offset) -> BoxFuture<'_, Result<u64, QueueError>> {
        match self.open() {
            Some(q) => q.replay_from(from),
            None => Box::pin(async { Err(self.not_open()) }),
        }
    }

    fn waiting_for(&self) -> Option<String> {
        match self.open() {
            Some(q) => q.waiting_for(),
            None => Some(format!("NATS at {}", self.url)),
        }
    }

    fn sync(&self) -> BoxFuture<'_, Result<(), QueueError>> {
        match self.open() {
            Some(q) => q.sync(),
            None => Box::pin(async { Ok(()) }),
        }
    }
}

/// The shared store of a queue that may not be open yet.
struct LaterStore {
    queue: Arc<OnceLock<Arc<NatsQueue>>>,
    url: String,
}

impl LaterStore {
    fn opened(&self) -> Result<Arc<dyn SharedStore>, QueueError> {
        self.queue
            .get()
            .and_then(|q| q.shared_store())
            .ok_or_else(|| {
                QueueError::Io(std::io::Error::other(format!(
                    "waiting for NATS at {}",
                    self.url
                )))
            })
    }
}

impl SharedStore for LaterStore {
    fn load(&self, key: String) -> BoxFuture<'_, Result<Option<Revisioned>, QueueError>> {
        Box::pin(async move { self.opened()?.load(key).await })
    }

    fn store(
        &self,
        key: String,
        value: Vec<u8>,
        revision: u64,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        Box::pin(async move { self.opened()?.store(key, value, revision).await })
    }

    fn describe(&self) -> String {
        format!("the shared bucket on NATS at {}", self.url)
    }
}

/// The dead letters of a queue that may not be open yet.
struct LaterDeadLetters {
    queue: Arc<OnceLock<Arc<NatsQueue>>>,
    url: String,
}

impl LaterDeadLetters {
    fn opened(&self) -> std::io::Result<Arc<dyn DeadLetters>> {
        self.queue
            .get()
            .and_then(|q| q.dead_letters())
            .ok_or_else(|| std::io::Error::other(format!("waiting for NATS at {}", self.url)))
    }
}

impl DeadLetters for LaterDeadLetters {
    fn append(&self, records: Vec<DeadLetter>) -> BoxFuture<'_, std::io::Result<()>> {
        Box::pin(async move { self.opened()?.append(records).await })
    }

    fn list(&self) -> BoxFuture<'_, std::io::Result<Vec<Listed>>> {
        Box::pin(async move { self.opened()?.list().await })
    }

    fn remove(&self, records: Vec<Listed>) -> BoxFuture<'_, std::io::Result<()>> {
        Box::pin(async move { self.opened()?.remove(records).await })
    }

    fn download(&self) -> BoxFuture<'_, std::io::Result<Chunks>> {
        Box::pin(async move { self.opened()?.download().await })
    }
}

//! The in-memory queue: a bounded `VecDeque` behind a mutex. Fast, and lost on restart.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::{BoxFuture, Entry, InFlight, Offset, PushError, Queue, QueueError, QueueStats, now_ms};
use crate::row::Row;
use crate::sync::lock;

/// The memory queue's byte bound unless configured otherwise: 100 000 rows of up to 1 MiB
/// each would otherwise be allowed to take 100 GB.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Bounded in rows and in bytes (encoded row size).
pub struct MemoryQueue {
    inner: Mutex<Inner>,
    capacity_rows: u64,
    capacity_bytes: u64,
}

struct Inner {
    entries: VecDeque<Entry>,
    bytes: u64,
    next_offset: Offset,
    in_flight: Option<InFlight>,
}

impl MemoryQueue {
    pub fn new(capacity_rows: u64, capacity_bytes: u64) -> MemoryQueue {
        MemoryQueue {
            inner: Mutex::new(Inner {
                entries: VecDeque::new(),
                bytes: 0,
                next_offset: 0,
                in_flight: None,
            }),
            capacity_rows,
            capacity_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the deque half-updated (every
        // mutation is a single push/pop), so a poisoned lock is still safe to use.
        lock(&self.inner)
    }

    fn push_now(&self, rows: Vec<Row>) -> Result<(), PushError> {
        let incoming = rows.len() as u64;
        let incoming_bytes: u64 = rows.iter().map(|r| r.encoded_len() as u64).sum();
        let mut inner = self.lock();
        let queued = inner.entries.len() as u64;
        if queued + incoming > self.capacity_rows {
            return Err(PushError::FullRows {
                queued,
                capacity: self.capacity_rows,
                incoming,
            });
        }
        if inner.bytes + incoming_bytes > self.capacity_bytes {
            return Err(PushError::FullBytes {
                queued: inner.bytes,
                capacity: self.capacity_bytes,
                incoming: incoming_bytes,
            });
        }
        let received_ms = now_ms();
        inner.bytes += incoming_bytes;
        for row in rows {
            let offset = inner.next_offset;
            inner.next_offset += 1;
            inner.entries.push_back(Entry {
                offset,
                received_ms,
                row,
            });
        }
        Ok(())
    }
}

impl Queue for MemoryQueue {
    fn push(&self, rows: Vec<Row>) -> BoxFuture<'_, Result<(), PushError>> {
        let result = self.push_now(rows);
        Box::pin(async move { result })
    }

    fn peek(
        &self,
        max_rows: usize,
        max_bytes: u64,
    ) -> BoxFuture<'_, Result<Vec<Entry>, QueueError>> {
        let inner = self.lock();
        let mut entries = Vec::new();
        let mut bytes = 0u64;
        for e in inner.entries.iter().take(max_rows) {
            let len = e.row.encoded_len() as u64;
            if !entries.is_empty() && bytes + len > max_bytes {
                break;
            }
            bytes += len;
            entries.push(e.clone());
        }
        drop(inner);
        Box::pin(async move { Ok(entries) })
    }

    fn commit(&self, through: Offset) -> BoxFuture<'_, Result<(), QueueError>> {
        let mut inner = self.lock();
        while inner.entries.front().is_some_and(|e| e.offset <= through) {
            if let Some(e) = inner.entries.pop_front() {
                inner.bytes -= e.row.encoded_len() as u64;
            }
        }
        drop(inner);
        Box::pin(async { Ok(()) })
    }

    fn stats(&self) -> QueueStats {
        let inner = self.lock();
        QueueStats {
            rows: inner.entries.len() as u64,
            bytes: inner.bytes,
            capacity_rows: self.capacity_rows,
            capacity_bytes: Some(self.capacity_bytes),
            oldest_ms: inner.entries.front().map(|e| e.received_ms),
            next_offset: inner.next_offset,
        }
    }

    fn set_in_flight(&self, batch: Option<InFlight>) -> BoxFuture<'_, Result<(), QueueError>> {
        self.lock().in_flight = batch;
        Box::pin(async { Ok(()) })
    }

    fn in_flight(&self) -> Option<InFlight> {
        self.lock().in_flight.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::contract::{Subject, queue_contract};

    fn subject(rows: u64, bytes: u64) -> BoxFuture<'static, Subject> {
        Box::pin(async move {
            Subject {
                queue: Box::new(MemoryQueue::new(rows, bytes)),
                _keep: Box::new(()),
            }
        })
    }

    queue_contract!(subject);

    fn rows(n: usize) -> Vec<Row> {
        (0..n)
            .map(|i| Row::from_pairs([("i", i.to_string().as_str())]).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn byte_capacity_is_enforced() {
        let one = rows(1)[0].encoded_len() as u64;
        let q = MemoryQueue::new(100, one * 2);
        q.push(rows(2)).await.unwrap();
        assert!(matches!(
            q.push(rows(1)).await,
            Err(PushError::FullBytes { .. })
        ));
    }

    #[tokio::test]
    async fn rows_leave_only_when_committed_in_order() {
        let q = MemoryQueue::new(10, DEFAULT_MAX_BYTES);
        q.push(rows(4)).await.unwrap();
        let batch = q.peek(3, u64::MAX).await.unwrap();
        assert_eq!(
            batch.iter().map(|e| e.offset).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(q.stats().rows, 4, "peeking removes nothing");
        q.commit(1).await.unwrap();
        let rest = q.peek(10, u64::MAX).await.unwrap();
        assert_eq!(
            rest.iter().map(|e| e.offset).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(
            q.stats().bytes,
            rest.iter().map(|e| e.row.encoded_len() as u64).sum::<u64>()
        );
    }

    #[tokio::test]
    async fn replay_is_refused_by_the_memory_queue() {
        let q = MemoryQueue::new(10, DEFAULT_MAX_BYTES);
        assert!(matches!(
            q.replay_from(0).await,
            Err(QueueError::Unsupported(_))
        ));
    }
}

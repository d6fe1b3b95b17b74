//! The [`Queue`] contract, written once and run against every backend.
//!
//! Each check is an `async fn` that takes a [`Factory`]: it builds fresh queues with the
//! capacities a check needs. [`queue_contract!`] turns every check into a `#[tokio::test]`,
//! so a backend joins the suite with one line in its test module:
//! `crate::queue::contract::queue_contract!(factory);`

use std::any::Any;

use super::{BoxFuture, InFlight, Offset, PushError, Queue, QueueError};
use crate::row::Row;

/// A queue under test, and whatever must live as long as it (a temporary directory).
pub(crate) struct Subject {
    pub queue: Box<dyn Queue>,
    pub _keep: Box<dyn Any + Send>,
}

/// Builds an empty queue bounded to `rows` rows and `bytes` bytes (as the backend counts
/// them in `QueueStats::bytes`).
pub(crate) type Factory = fn(rows: u64, bytes: u64) -> BoxFuture<'static, Subject>;

const BIG: u64 = 1 << 30;

fn row(i: u64) -> Row {
    Row::from_pairs([("i", i.to_string().as_str())]).expect("a valid row")
}

fn rows(range: std::ops::Range<u64>) -> Vec<Row> {
    range.map(row).collect()
}

async fn offsets(q: &dyn Queue) -> Vec<Offset> {
    q.peek(usize::MAX, u64::MAX)
        .await
        .expect("peek works")
        .iter()
        .map(|e| e.offset)
        .collect()
}

pub(crate) async fn offsets_start_at_zero_and_only_grow(make: Factory) {
    let s = make(100, BIG).await;
    let q = s.queue.as_ref();
    assert_eq!(q.stats().next_offset, 0);
    q.push(rows(0..3)).await.unwrap();
    q.push(rows(3..5)).await.unwrap();
    let got = q.peek(100, u64::MAX).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.offset).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert!(
        got.iter().all(|e| e.row == row(e.offset)),
        "rows in push order"
    );
    q.commit(4).await.unwrap();
    q.push(rows(5..6)).await.unwrap();
    assert_eq!(
        offsets(q).await,
        vec![5],
        "offsets are not reused after a commit"
    );
    assert_eq!(q.stats().next_offset, 6);
}

pub(crate) async fn peek_removes_nothing_and_commit_removes_through_its_offset(make: Factory) {
    let s = make(100, BIG).await;
    let q = s.queue.as_ref();
    q.push(rows(0..4)).await.unwrap();
    let batch = q.peek(3, u64::MAX).await.unwrap();
    assert_eq!(batch.len(), 3);
    assert_eq!(q.stats().rows, 4, "peeking removes nothing");
    assert_eq!(offsets(q).await, vec![0, 1, 2, 3]);
    q.commit(1).await.unwrap();
    assert_eq!(offsets(q).await, vec![2, 3]);
    q.commit(1).await.unwrap();
    assert_eq!(
        offsets(q).await,
        vec![2, 3],
        "committing again changes nothing"
    );
    let stats = q.stats();
    assert_eq!(stats.rows, 2);
    assert!(stats.oldest_ms.is_some());
    q.commit(u64::MAX).await.unwrap();
    let stats = q.stats();
    assert_eq!((stats.rows, stats.bytes, stats.oldest_ms), (0, 0, None));
    q.push(rows(4..5)).await.unwrap();
    assert_eq!(
        offsets(q).await,
        vec![4],
        "a commit never reaches rows not yet pushed"
    );
}

pub(crate) async fn a_push_beyond_the_row_capacity_queues_none_of_its_rows(make: Factory) {
    let s = make(5, BIG).await;
    let q = s.queue.as_ref();
    q.push(rows(0..3)).await.unwrap();
    let err = q.push(rows(3..6)).await.unwrap_err();
    assert!(
        matches!(
            err,
            PushError::FullRows {
                queued: 3,
                capacity: 5,
                incoming: 3
            }
        ),
        "{err:?}"
    );
    assert!(err.is_full());
    assert_eq!((q.stats().rows, q.stats().next_offset), (3, 3));
    q.push(rows(3..5)).await.unwrap();
    assert_eq!(offsets(q).await, vec![0, 1, 2, 3, 4]);
    q.commit(0).await.unwrap();
    q.push(rows(5..6)).await.unwrap();
    assert_eq!(q.stats().rows, 5, "a commit makes room");
}

pub(crate) async fn a_push_beyond_the_byte_capacity_queues_none_of_its_rows(make: Factory) {
    let one = {
        let s = make(100, BIG).await;
        s.queue.push(rows(0..1)).await.unwrap();
        s.queue.stats().bytes
    };
    assert!(one > 0, "a row takes bytes");
    let s = make(100, one * 3).await;
    let q = s.queue.as_ref();
    assert_eq!(q.stats().capacity_bytes, Some(one * 3));
    q.push(rows(0..2)).await.unwrap();
    assert_eq!(q.stats().bytes, one * 2);
    let err = q.push(rows(2..4)).await.unwrap_err();
    assert!(matches!(err, PushError::FullBytes { .. }), "{err:?}");
    assert_eq!((q.stats().rows, q.stats().bytes), (2, one * 2));
    q.push(rows(2..3)).await.unwrap();
    assert_eq!(offsets(q).await, vec![0, 1, 2]);
}

pub(crate) async fn a_batch_stops_at_max_bytes_but_always_holds_the_oldest_row(make: Factory) {
    let s = make(100, BIG).await;
    let q = s.queue.as_ref();
    let big = Row::from_pairs([("i", "0"), ("pad", "x".repeat(1000).as_str())]).unwrap();
    let mut batch = vec![big.clone()];
    batch.extend(rows(1..6));
    q.push(batch).await.unwrap();
    let small = row(1).encoded_len() as u64;
    let got = q.peek(100, 10).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.offset).collect::<Vec<_>>(),
        vec![0],
        "a row larger than the limit still makes a batch, alone"
    );
    assert_eq!(got[0].row, big);
    q.commit(0).await.unwrap();
    let got = q.peek(100, small * 3).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.offset).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "as many rows as fit in the limit"
    );
    let got = q.peek(2, small * 3).await.unwrap();
    assert_eq!(got.len(), 2, "the row limit applies too");
    assert!(q.peek(0, u64::MAX).await.unwrap().is_empty());
}

pub(crate) async fn the_in_flight_record_is_kept_until_cleared(make: Factory) {
    let s = make(100, BIG).await;
    let q = s.queue.as_ref();
    assert_eq!(q.in_flight(), None);
    let batch = InFlight {
        first: 0,
        last: 4,
        job_id: Some("job-1".into()),
    };
    q.set_in_flight(Some(batch.clone())).await.unwrap();
    assert_eq!(q.in_flight(), Some(batch));
    q.set_in_flight(None).await.unwrap();
    assert_eq!(q.in_flight(), None);
}

pub(crate) async fn replay_redelivers_retained_rows_or_is_refused(make: Factory) {
    let s = make(100, BIG).await;
    let q = s.queue.as_ref();
    q.push(rows(0..4)).await.unwrap();
    q.commit(1).await.unwrap();
    match q.replay_from(0).await {
        Ok(queued) => {
            assert_eq!(queued, 4);
            assert_eq!(offsets(q).await, vec![0, 1, 2, 3]);
            assert!(matches!(
                q.replay_from(9).await,
                Err(QueueError::OffsetAhead { .. })
            ));
        }
        Err(QueueError::Unsupported(_)) => {
            assert_eq!(
                offsets(q).await,
                vec![2, 3],
                "a refused replay changes nothing"
            );
        }
        Err(e) => panic!("replay failed: {e}"),
    }
}

/// Runs every check of the contract against the backend `factory` builds.
macro_rules! queue_contract {
    ($factory:expr) => {
        mod contract {
            use super::*;
            use $crate::queue::contract as c;

            #[tokio::test]
            async fn offsets_start_at_zero_and_only_grow() {
                c::offsets_start_at_zero_and_only_grow($factory).await
            }

            #[tokio::test]
            async fn peek_removes_nothing_and_commit_removes_through_its_offset() {
                c::peek_removes_nothing_and_commit_removes_through_its_offset($factory).await
            }

            #[tokio::test]
            async fn a_push_beyond_the_row_capacity_queues_none_of_its_rows() {
                c::a_push_beyond_the_row_capacity_queues_none_of_its_rows($factory).await
            }

            #[tokio::test]
            async fn a_push_beyond_the_byte_capacity_queues_none_of_its_rows() {
                c::a_push_beyond_the_byte_capacity_queues_none_of_its_rows($factory).await
            }

            #[tokio::test]
            async fn a_batch_stops_at_max_bytes_but_always_holds_the_oldest_row() {
                c::a_batch_stops_at_max_bytes_but_always_holds_the_oldest_row($factory).await
            }

            #[tokio::test]
            async fn the_in_flight_record_is_kept_until_cleared() {
                c::the_in_flight_record_is_kept_until_cleared($factory).await
            }

            #[tokio::test]
            async fn replay_redelivers_retained_rows_or_is_refused() {
                c::replay_redelivers_retained_rows_or_is_refused($factory).await
            }
        }
    };
}
pub(crate) use queue_contract;

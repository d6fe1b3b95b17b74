//! The spool's unit tests, over real files in temporary directories. Disk failures are
//! injected through [`FaultyFs`], the spool's file-operations seam.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use super::files::FileOps;
use super::format::encode_record;
use super::*;

/// How [`FaultyFs`] fails, until cleared.
#[derive(Debug, Clone, Copy)]
pub(super) enum Fault {
    /// Writes `keep` bytes of the next segment write for real, then fails with `kind`.
    Write { keep: usize, kind: io::ErrorKind },
    /// Like `Write` (with a full disk), and cutting the partial write back fails too.
    WriteAndTruncate { keep: usize },
    /// `fdatasync` of a segment fails.
    Sync,
    /// Creating a segment fails as on a read-only file system.
    Create,
    /// Directory fsyncs fail (so do replacements, which end with one).
    SyncDir,
    /// Replacing a small file (the cursor, the in-flight record) fails with this error.
    Replace(i32),
}

/// The real file system, failing on demand.
#[derive(Default)]
pub(super) struct FaultyFs {
    fault: Mutex<Option<Fault>>,
    /// Held by a test to stop the writer before it writes a group.
    pub(super) gate: Mutex<()>,
}

impl FaultyFs {
    pub(super) fn inject(&self, fault: Option<Fault>) {
        *lock(&self.fault) = fault;
    }

    fn fault(&self) -> Option<Fault> {
        *lock(&self.fault)
    }
}

impl FileOps for FaultyFs {
    fn create(&self, path: &Path) -> io::Result<File> {
        if matches!(self.fault(), Some(Fault::Create)) {
            return Err(io::Error::from(io::ErrorKind::ReadOnlyFilesystem));
        }
        RealFiles.create(path)
    }

    fn write_at(&self, file: &File, buf: &[u8], at: u64) -> io::Result<()> {
        drop(lock(&self.gate));
        match self.fault() {
            Some(Fault::Write { keep, kind }) => {
                file.write_all_at(&buf[..keep.min(buf.len())], at)?;
                Err(io::Error::from(kind))
            }
            Some(Fault::WriteAndTruncate { keep }) => {
                file.write_all_at(&buf[..keep.min(buf.len())], at)?;
                Err(io::Error::from(io::ErrorKind::StorageFull))
            }
            _ => file.write_all_at(buf, at),
        }
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        if matches!(self.fault(), Some(Fault::Sync)) {
            return Err(io::Error::other("injected fsync failure"));
        }
        file.sync_data()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if matches!(self.fault(), Some(Fault::SyncDir)) {
            return Err(io::Error::other("injected directory fsync failure"));
        }
        RealFiles.sync_dir(dir)
    }

    fn replace(&self, dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
        if let Some(Fault::Replace(errno)) = self.fault() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        RealFiles.replace(dir, name, bytes)
    }

    fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
        if matches!(self.fault(), Some(Fault::WriteAndTruncate { .. })) {
            return Err(io::Error::other("injected truncate failure"));
        }
        file.set_len(len)
    }
}

fn subject(rows: u64, bytes: u64) -> BoxFuture<'static, crate::queue::contract::Subject> {
    Box::pin(async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let queue = DiskSpool::open(DiskSpoolConfig {
            capacity_rows: rows,
            max_bytes: bytes,
            ..config(dir.path())
        })
        .await
        .expect("spool opens");
        crate::queue::contract::Subject {
            queue: Box::new(queue),
            _keep: Box::new(dir),
        }
    })
}

crate::queue::contract::queue_contract!(subject);

async fn open_faulty(cfg: &DiskSpoolConfig) -> (DiskSpool, Arc<FaultyFs>) {
    let faults = Arc::new(FaultyFs::default());
    let spool = DiskSpool::open_with(cfg.clone(), faults.clone())
        .await
        .expect("spool opens");
    (spool, faults)
}

fn row(i: u64) -> Row {
    Row::from_pairs([("i", i.to_string().as_str())]).expect("a valid row")
}

fn rows(range: std::ops::Range<u64>) -> Vec<Row> {
    range.map(row).collect()
}

fn config(dir: &Path) -> DiskSpoolConfig {
    DiskSpoolConfig {
        dir: dir.to_path_buf(),
        capacity_rows: 10_000,
        max_bytes: 1 << 24,
        segment_bytes: 1 << 20,
        retention: Duration::from_secs(3600),
    }
}

async fn open(cfg: &DiskSpoolConfig) -> DiskSpool {
    DiskSpool::open(cfg.clone()).await.expect("spool opens")
}

async fn offsets(q: &DiskSpool) -> Vec<Offset> {
    q.peek(100_000, u64::MAX)
        .await
        .expect("peek works")
        .iter()
        .map(|e| e.offset)
        .collect()
}

/// The `i` field of every queued row, which tests set to the row's expected offset.
async fn ids(q: &DiskSpool) -> Vec<u64> {
    q.peek(100_000, u64::MAX)
        .await
        .expect("peek works")
        .iter()
        .map(|e| {
            e.row
                .get("i")
                .and_then(|f| f.text.parse().ok())
                .unwrap_or(u64::MAX)
        })
        .collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("dir readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

fn one_record_len() -> u64 {
    record_len(&row(0)) as u64
}

#[tokio::test]
async fn byte_capacity_counts_queued_record_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&DiskSpoolConfig {
        max_bytes: one_record_len() * 2,
        ..config(dir.path())
    })
    .await;
    q.push(rows(0..2)).await.unwrap();
    assert_eq!(q.stats().bytes, one_record_len() * 2);
    assert!(matches!(
        q.push(rows(2..3)).await,
        Err(PushError::FullBytes { .. })
    ));
    assert_eq!(q.stats().rows, 2);
}

#[tokio::test]
async fn rows_leave_only_when_committed_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&config(dir.path())).await;
    q.push(rows(0..4)).await.unwrap();
    let batch = q.peek(3, u64::MAX).await.unwrap();
    assert_eq!(
        batch.iter().map(|e| e.offset).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(batch[1].row, row(1));
    assert_eq!(q.stats().rows, 4, "peeking removes nothing");
    q.commit(1).await.unwrap();
    assert_eq!(offsets(&q).await, vec![2, 3]);
    let stats = q.stats();
    assert_eq!(stats.rows, 2);
    assert_eq!(stats.bytes, one_record_len() * 2);
    assert!(stats.oldest_ms.is_some());
    q.commit(u64::MAX).await.unwrap();
    let stats = q.stats();
    assert_eq!((stats.rows, stats.bytes, stats.oldest_ms), (0, 0, None));
    q.push(rows(4..5)).await.unwrap();
    assert_eq!(
        offsets(&q).await,
        vec![4],
        "a commit never reaches rows not yet pushed"
    );
}

#[tokio::test]
async fn offsets_continue_and_committed_rows_stay_gone_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    {
        let q = open(&cfg).await;
        q.push(rows(0..5)).await.unwrap();
        q.commit(2).await.unwrap();
    }
    let q = open(&cfg).await;
    assert_eq!(q.recovery().queued_rows, 2);
    assert_eq!(q.recovery().quarantined, 0);
    assert_eq!(ids(&q).await, vec![3, 4]);
    assert_eq!(q.stats().next_offset, 5);
    q.commit(4).await.unwrap();
    drop(q);
    let q = open(&cfg).await;
    assert_eq!(q.stats().rows, 0);
    q.push(rows(5..6)).await.unwrap();
    assert_eq!(offsets(&q).await, vec![5], "offsets are never reused");
}

#[tokio::test]
async fn the_in_flight_record_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let batch = InFlight {
        first: 3,
        last: 9,
        job_id: Some("job-1".into()),
    };
    {
        let q = open(&cfg).await;
        q.set_in_flight(Some(batch.clone())).await.unwrap();
    }
    let q = open(&cfg).await;
    assert_eq!(q.in_flight(), Some(batch));
    q.set_in_flight(None).await.unwrap();
    drop(q);
    assert_eq!(open(&cfg).await.in_flight(), None);
}

// Only the writer thread waits on the gate, never a task, so holding it across the
// yields below cannot deadlock the runtime.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_share_one_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let (q, faults) = open_faulty(&config(dir.path())).await;
    let q = Arc::new(q);
    let before = q.fsync_count();
    let gate = lock(&faults.gate);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let q = q.clone();
        tasks.spawn(async move { q.push(rows(i..i + 1)).await });
    }
    // Hold the writer until every push has handed over its rows.
    while q.shared.lock().reserved_rows < 50 {
        tokio::task::yield_now().await;
    }
    drop(gate);
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    let fsyncs = q.fsync_count() - before;
    assert!(fsyncs <= 2, "50 concurrent pushes took {fsyncs} fsyncs");
    assert_eq!(q.stats().rows, 50);
    assert!(q.fsync_total() >= q.fsync_last());
    let mut got = ids(&q).await;
    got.sort_unstable();
    assert_eq!(got, (0..50).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_torn_tail_is_truncated_and_every_complete_record_survives() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    {
        let q = open(&cfg).await;
        for i in 0..5 {
            q.push(rows(i..i + 1)).await.unwrap();
        }
    }
    let seg = segment_files(dir.path()).pop().unwrap();
    let len = fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let q = open(&cfg).await;
    let report = q.recovery().clone();
    assert_eq!(report.truncated_bytes, one_record_len() - 3);
    assert_eq!(report.quarantined, 0);
    assert_eq!(ids(&q).await, vec![0, 1, 2, 3]);
    q.push(rows(4..6)).await.unwrap();
    drop(q);
    let q = open(&cfg).await;
    assert_eq!(q.recovery().truncated_bytes, 0, "the repair was durable");
    assert_eq!(offsets(&q).await, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(ids(&q).await, vec![0, 1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn garbage_after_the_last_record_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    {
        let q = open(&cfg).await;
        q.push(rows(0..2)).await.unwrap();
    }
    let seg = segment_files(dir.path()).pop().unwrap();
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    io::Write::write_all(&mut f, &[0u8; 100]).unwrap();
    let q = open(&cfg).await;
    assert_eq!(q.recovery().truncated_bytes, 100);
    assert_eq!(ids(&q).await, vec![0, 1]);
}

#[tokio::test]
async fn a_corrupt_record_in_the_middle_is_quarantined_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    {
        let q = open(&cfg).await;
        q.push(rows(0..10)).await.unwrap();
    }
    let seg = segment_files(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    // The last byte of record 4's row.
    let at = (one_record_len() * 5 - 1) as usize;
    bytes[at] ^= 0x40;
    fs::write(&seg, &bytes).unwrap();

    let q = open(&cfg).await;
    assert_eq!(q.recovery().quarantined, 1);
    assert_eq!(q.recovery().truncated_bytes, 0);
    assert_eq!(ids(&q).await, vec![0, 1, 2, 3, 5, 6, 7, 8, 9]);
    assert_eq!(offsets(&q).await, vec![0, 1, 2, 3, 5, 6, 7, 8, 9]);
    assert_eq!(q.stats().rows, 9);
    let log = fs::read_to_string(dir.path().join(QUARANTINE_FILE)).unwrap();
    assert_eq!(log.lines().count(), 1);
    assert!(log.contains("offset=4 "), "{log}");
    assert!(log.contains("reason=\"checksum mismatch\""), "{log}");
    assert!(log.contains(&format!("len={}", one_record_len())), "{log}");
    q.push(rows(10..11)).await.unwrap();
    drop(q);

    let q = open(&cfg).await;
    assert_eq!(q.recovery().quarantined, 0, "a record is quarantined once");
    assert_eq!(ids(&q).await, vec![0, 1, 2, 3, 5, 6, 7, 8, 9, 10]);
}

#[tokio::test]
async fn a_damaged_header_is_skipped_by_resyncing_on_the_next_record() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    {
        let q = open(&cfg).await;
        q.push(rows(0..6)).await.unwrap();
    }
    let seg = segment_files(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    // The length field of record 2.
    bytes[(one_record_len() * 2 + 5) as usize] ^= 0x7f;
    fs::write(&seg, &bytes).unwrap();
    let q = open(&cfg).await;
    assert_eq!(q.recovery().quarantined, 1);
    assert_eq!(ids(&q).await, vec![0, 1, 3, 4, 5]);
    let log = fs::read_to_string(dir.path().join(QUARANTINE_FILE)).unwrap();
    assert!(log.contains("offset=unknown(2-2)"), "{log}");
    assert!(log.contains("reason=\"bad header\""), "{log}");
}

#[tokio::test]
async fn a_missing_cursor_file_redelivers_instead_of_losing_rows() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    {
        let q = open(&cfg).await;
        q.push(rows(0..6)).await.unwrap();
        q.commit(2).await.unwrap();
    }
    fs::remove_file(dir.path().join(CURSOR_FILE)).unwrap();
    let q = open(&cfg).await;
    assert!(q.recovery().cursor_missing);
    assert_eq!(ids(&q).await, vec![0, 1, 2, 3, 4, 5]);
    q.push(rows(6..7)).await.unwrap();
    assert_eq!(offsets(&q).await.last(), Some(&6));
    drop(q);
    let q = open(&cfg).await;
    assert!(!q.recovery().cursor_missing, "the cursor is written again");
}

#[tokio::test]
async fn a_failed_write_is_cut_back_and_the_spool_works_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (q, faults) = open_faulty(&cfg).await;
    q.push(rows(0..3)).await.unwrap();
    let seg = segment_files(dir.path()).pop().unwrap();
    let good_len = fs::metadata(&seg).unwrap().len();

    // Half a record reaches the disk, then the disk is full.
    faults.inject(Some(Fault::Write {
        keep: 40,
        kind: io::ErrorKind::StorageFull,
    }));
    let err = q.push(rows(3..5)).await.unwrap_err();
    assert!(matches!(err, PushError::Unavailable(_)), "{err:?}");
    assert_eq!(fs::metadata(&seg).unwrap().len(), good_len);
    assert_eq!(q.stats().rows, 3);
    assert_eq!(q.stats().next_offset, 3);

    faults.inject(None);
    q.push(rows(3..5)).await.unwrap();
    drop(q);
    let q = open(&cfg).await;
    assert_eq!(q.recovery().truncated_bytes, 0);
    assert_eq!(q.recovery().quarantined, 0);
    assert_eq!(ids(&q).await, vec![0, 1, 2, 3, 4]);
    assert_eq!(offsets(&q).await, vec![0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn a_partial_write_that_cannot_be_cut_back_blocks_writes_until_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (q, faults) = open_faulty(&cfg).await;
    q.push(rows(0..2)).await.unwrap();
    // More garbage than the next record is long, so overwriting alone would not hide it.
    let keep = one_record_len() as usize + 20;
    faults.inject(Some(Fault::WriteAndTruncate { keep }));
    assert!(matches!(
        q.push(rows(2..4)).await,
        Err(PushError::Unavailable(_))
    ));
    assert!(matches!(
        q.push(rows(2..3)).await,
        Err(PushError::Unavailable(_))
    ));
    faults.inject(None);
    q.push(rows(2..3)).await.unwrap();
    drop(q);
    let q = open(&cfg).await;
    assert_eq!(q.recovery().truncated_bytes, 0, "no garbage was left");
    assert_eq!(ids(&q).await, vec![0, 1, 2]);
}

#[tokio::test]
async fn a_failed_fsync_refuses_the_push_and_keeps_earlier_rows() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (q, faults) = open_faulty(&cfg).await;
    q.push(rows(0..2)).await.unwrap();
    faults.inject(Some(Fault::Sync));
    assert!(matches!(
        q.push(rows(2..3)).await,
        Err(PushError::Unavailable(_))
    ));
    faults.inject(None);
    q.push(rows(2..3)).await.unwrap();
    q.sync().await.unwrap();
    assert_eq!(ids(&q).await, vec![0, 1, 2]);
    drop(q);
    assert_eq!(ids(&open(&cfg).await).await, vec![0, 1, 2]);
}

/// Unmounts the tmpfs when the test ends, however it ends.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        // Lazy, so a file still open somewhere cannot keep the mount alive.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Whether plain permissions stop this process from writing (not so for root).
fn permissions_bind(dir: &Path) -> bool {
    let probe = dir.join("probe");
    fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).unwrap();
    let bound = File::create(&probe).is_err();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    let _ = fs::remove_file(probe);
    bound
}

#[tokio::test]
async fn a_full_disk_refuses_pushes_until_space_returns() {
    let outer = tempfile::tempdir().unwrap();
    let mount_dir = outer.path().join("tmpfs");
    fs::create_dir(&mount_dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mount_dir)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _mount = mounted.then(|| Mount(mount_dir.clone()));
    let cfg = config(&mount_dir.join("spool"));
    let (q, faults) = open_faulty(&cfg).await;
    q.push(rows(0..3)).await.unwrap();

    let filler = mount_dir.join("filler");
    if mounted {
        // Take almost all the space: a real ENOSPC, partial writes included.
        let mut f = File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while io::Write::write_all(&mut f, &chunk).is_ok() {}
    } else {
        // No tmpfs here (no privilege): fail the same way, halfway through a record.
        faults.inject(Some(Fault::Write {
            keep: 10,
            kind: io::ErrorKind::StorageFull,
        }));
    }
    let mut refused = false;
    for i in 3..200 {
        match q.push(rows(i..i + 1)).await {
            Ok(()) => {}
            Err(PushError::Unavailable(_)) => {
                refused = true;
                break;
            }
            Err(e) => panic!("unexpected push error: {e:?}"),
        }
    }
    assert!(refused, "a full disk must refuse pushes");
    let accepted = q.stats().next_offset;
    let on_disk: u64 = segment_files(&cfg.dir)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(
        on_disk,
        (0..accepted)
            .map(|i| record_len(&row(i)) as u64)
            .sum::<u64>(),
        "the refused write left nothing behind"
    );

    if mounted {
        fs::remove_file(&filler).unwrap();
    } else {
        faults.inject(None);
    }
    q.push(rows(accepted..accepted + 1)).await.unwrap();
    drop(q);
    let q = open(&cfg).await;
    assert_eq!(q.recovery().truncated_bytes, 0);
    assert_eq!(q.recovery().quarantined, 0);
    assert_eq!(ids(&q).await, (0..=accepted).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_read_only_directory_refuses_new_segments_but_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let cfg = DiskSpoolConfig {
        segment_bytes: one_record_len() * 2,
        ..config(&spool_dir)
    };
    let (q, faults) = open_faulty(&cfg).await;
    q.push(rows(0..2)).await.unwrap();
    let bound = permissions_bind(&spool_dir);
    if bound {
        fs::set_permissions(&spool_dir, fs::Permissions::from_mode(0o555)).unwrap();
    } else {
        // Root ignores permissions: fail segment creation as a read-only mount would.
        faults.inject(Some(Fault::Create));
    }
    let err = q.push(rows(2..3)).await.unwrap_err();
    assert!(matches!(err, PushError::Unavailable(_)), "{err:?}");
    assert_eq!(
        ids(&q).await,
        vec![0, 1],
        "what was accepted is still readable"
    );
    if bound {
        fs::set_permissions(&spool_dir, fs::Permissions::from_mode(0o755)).unwrap();
    } else {
        faults.inject(None);
    }
    q.push(rows(2..3)).await.unwrap();
    assert_eq!(ids(&q).await, vec![0, 1, 2]);
}

#[tokio::test]
async fn open_names_the_path_when_the_directory_cannot_be_made() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    fs::write(&file, b"x").unwrap();
    let err = DiskSpool::open(config(&file.join("spool")))
        .await
        .err()
        .expect("a directory under a file cannot exist");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

#[tokio::test]
async fn segments_roll_and_committed_ones_are_deleted_after_retention() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DiskSpoolConfig {
        segment_bytes: one_record_len() * 3,
        retention: Duration::ZERO,
        ..config(dir.path())
    };
    let q = open(&cfg).await;
    for i in 0..9 {
        q.push(rows(i..i + 1)).await.unwrap();
    }
    assert_eq!(segment_files(dir.path()).len(), 3);
    assert_eq!(ids(&q).await, (0..9).collect::<Vec<_>>());
    q.commit(4).await.unwrap();
    let names: Vec<_> = segment_files(dir.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["00000000000000000003.seg", "00000000000000000006.seg"]
    );
    assert_eq!(ids(&q).await, vec![5, 6, 7, 8]);
    assert!(matches!(
        q.replay_from(1).await,
        Err(QueueError::OffsetGone {
            requested: 1,
            oldest: 3
        })
    ));
}

#[tokio::test]
async fn replay_redelivers_retained_rows_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DiskSpoolConfig {
        segment_bytes: one_record_len() * 3,
        ..config(dir.path())
    };
    let q = open(&cfg).await;
    q.push(rows(0..8)).await.unwrap();
    q.commit(6).await.unwrap();
    assert_eq!(ids(&q).await, vec![7]);
    assert!(matches!(
        q.replay_from(9).await,
        Err(QueueError::OffsetAhead {
            requested: 9,
            next: 8
        })
    ));
    assert_eq!(q.replay_from(2).await.unwrap(), 6);
    assert_eq!(ids(&q).await, vec![2, 3, 4, 5, 6, 7]);
    assert_eq!(q.stats().bytes, one_record_len() * 6);
    drop(q);
    let q = open(&cfg).await;
    assert_eq!(ids(&q).await, vec![2, 3, 4, 5, 6, 7]);
    q.commit(7).await.unwrap();
    assert_eq!(q.stats().rows, 0);
    assert_eq!(q.replay_from(0).await.unwrap(), 8);
}

#[tokio::test]
async fn committed_segments_are_evicted_early_when_bytes_run_out() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DiskSpoolConfig {
        segment_bytes: one_record_len() * 2,
        max_bytes: one_record_len() * 4,
        ..config(dir.path())
    };
    let q = open(&cfg).await;
    q.push(rows(0..2)).await.unwrap();
    q.push(rows(2..4)).await.unwrap();
    // Disk is full with queued rows: refused.
    assert!(matches!(
        q.push(rows(4..5)).await,
        Err(PushError::FullBytes { .. })
    ));
    q.commit(3).await.unwrap();
    // Everything is committed but retained; room is made by deleting the oldest.
    q.push(rows(4..6)).await.unwrap();
    q.push(rows(6..8)).await.unwrap();
    assert_eq!(ids(&q).await, vec![4, 5, 6, 7]);
    let on_disk: u64 = segment_files(dir.path())
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert!(on_disk <= cfg.max_bytes, "{on_disk} bytes on disk");
}

#[tokio::test]
async fn a_record_that_does_not_decode_as_a_row_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    for i in 0..4u64 {
        let good = row(i);
        // Record 2 has intact checksums around bytes that are no row.
        let payload: &[u8] = if i == 2 { &[5, b'a'] } else { good.as_bytes() };
        encode_record(&mut bytes, i, 1_000 + i, 0, payload);
    }
    fs::write(segment_path(dir.path(), 0), &bytes).unwrap();
    let q = open(&config(dir.path())).await;
    assert_eq!(q.recovery().quarantined, 1);
    assert!(q.recovery().cursor_missing);
    assert_eq!(ids(&q).await, vec![0, 1, 3]);
    assert_eq!(q.stats().oldest_ms, Some(1_000));
    let log = fs::read_to_string(dir.path().join(QUARANTINE_FILE)).unwrap();
    assert!(log.contains("offset=2 "), "{log}");
    assert!(log.contains("reason=\"row does not decode\""), "{log}");
    assert!(
        log.trim_end().ends_with("0561"),
        "the raw bytes are kept: {log}"
    );
}

#[test]
fn storage_warnings_are_logged_at_most_once_a_minute() {
    let start = Instant::now();
    let mut last = None;
    assert!(due(&mut last, start));
    assert!(!due(&mut last, start + Duration::from_secs(59)));
    assert!(due(&mut last, start + Duration::from_secs(60)));
    assert!(!due(&mut last, start + Duration::from_secs(61)));
}

#[tokio::test]
async fn a_record_damaged_while_running_is_skipped_and_can_be_committed_past() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&config(dir.path())).await;
    q.push(rows(0..5)).await.unwrap();
    let seg = segment_files(dir.path()).pop().unwrap();
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    // Bit rot in record 2's body, after it was acknowledged.
    f.write_all_at(&[0xff], one_record_len() * 3 - 1).unwrap();
    assert_eq!(ids(&q).await, vec![0, 1, 3, 4]);
    q.commit(3).await.unwrap();
    assert_eq!(ids(&q).await, vec![4]);
    assert_eq!(q.stats().rows, 1);
    assert_eq!(q.stats().bytes, one_record_len());
    q.commit(4).await.unwrap();
    assert_eq!((q.stats().rows, q.stats().bytes), (0, 0));
}

#[derive(Debug, Clone)]
enum Op {
    Append(u64),
    Peek(usize),
    Commit(u64),
    /// Rewind by this many rows.
    Replay(u64),
    Reopen,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        3 => (1u64..5).prop_map(Op::Append),
        2 => (0usize..8).prop_map(Op::Peek),
        2 => (0u64..6).prop_map(Op::Commit),
        1 => (0u64..6).prop_map(Op::Replay),
        1 => Just(Op::Reopen),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    #[test]
    fn the_log_returns_exactly_the_appended_rows_after_the_cursor(
        ops in proptest::collection::vec(op(), 1..20)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let cfg = DiskSpoolConfig {
                segment_bytes: one_record_len() * 4,
                ..config(dir.path())
            };
            let mut q = open(&cfg).await;
            // The model: the queued offsets, and the next offset to hand out. Row `i`
            // always carries offset `i`.
            let mut model: VecDeque<u64> = VecDeque::new();
            let mut next = 0u64;
            for op in ops {
                let cursor = model.front().copied().unwrap_or(next);
                match op {
                    Op::Append(n) => {
                        q.push(rows(next..next + n)).await.unwrap();
                        model.extend(next..next + n);
                        next += n;
                    }
                    Op::Peek(n) => {
                        let got = q.peek(n, u64::MAX).await.unwrap();
                        let want: Vec<u64> = model.iter().take(n).copied().collect();
                        assert_eq!(got.iter().map(|e| e.offset).collect::<Vec<_>>(), want);
                        for e in &got {
                            assert_eq!(e.row, row(e.offset));
                        }
                    }
                    Op::Commit(k) => {
                        let through = cursor + k;
                        q.commit(through).await.unwrap();
                        while model.front().is_some_and(|&o| o <= through) {
                            model.pop_front();
                        }
                    }
                    Op::Replay(k) => {
                        let from = cursor.saturating_sub(k);
                        let queued = q.replay_from(from).await.unwrap();
                        for o in (from..cursor).rev() {
                            model.push_front(o);
                        }
                        assert_eq!(queued, model.len() as u64);
                    }
                    Op::Reopen => {
                        drop(q);
                        q = open(&cfg).await;
                        assert_eq!(q.recovery().quarantined, 0);
                        assert_eq!(q.recovery().truncated_bytes, 0);
                    }
                }
                let stats = q.stats();
                assert_eq!(stats.rows, model.len() as u64);
                assert_eq!(stats.next_offset, next);
                let bytes: u64 = model.iter().map(|&i| record_len(&row(i)) as u64).sum();
                assert_eq!(stats.bytes, bytes);
                assert_eq!(stats.oldest_ms.is_some(), !model.is_empty());
                assert_eq!(offsets(&q).await, model.iter().copied().collect::<Vec<_>>());
            }
        });
    }
}

const ENOSPC: i32 = 28;
const EMFILE: i32 = 24;

#[tokio::test]
async fn a_request_torn_by_a_crash_is_dropped_whole_and_earlier_requests_survive() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    {
        let q = open(&cfg).await;
        q.push(rows(0..2)).await.unwrap();
        q.push(rows(2..6)).await.unwrap();
    }
    // The crash came before the last record of the second request reached the disk.
    let seg = segment_files(dir.path()).pop().unwrap();
    let len = fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let q = open(&cfg).await;
    assert_eq!(
        ids(&q).await,
        vec![0, 1],
        "no part of a torn request is kept"
    );
    assert_eq!(q.recovery().truncated_bytes, one_record_len() * 4 - 3);
    assert_eq!(q.stats().next_offset, 2);
    q.push(rows(2..3)).await.unwrap();
    drop(q);
    let q = open(&cfg).await;
    assert_eq!(q.recovery().truncated_bytes, 0);
    assert_eq!(ids(&q).await, vec![0, 1, 2]);
}

#[tokio::test]
async fn a_spool_written_in_the_version_1_format_opens_with_every_row_intact() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool-v1");
    let dir = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(&fixture).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let cfg = config(dir.path());
    let q = open(&cfg).await;
    let report = q.recovery().clone();
    assert_eq!((report.quarantined, report.truncated_bytes), (0, 0));
    assert!(!report.cursor_missing);
    assert_eq!((report.cursor, report.next_offset), (2, 7));
    let expect = |i: u64| {
        let mut b = Row::builder();
        b.push("id", crate::row::Kind::String, &i.to_string())
            .unwrap();
        b.push("name", crate::row::Kind::String, &format!("Zoë, \"{i}\""))
            .unwrap();
        b.push("amount", crate::row::Kind::Number, &format!("{i}.50"))
            .unwrap();
        b.finish()
    };
    let got = q.peek(100, u64::MAX).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.offset).collect::<Vec<_>>(),
        vec![2, 3, 4, 5, 6]
    );
    for e in &got {
        assert_eq!(e.row, expect(e.offset));
    }
    assert_eq!(
        q.stats().bytes,
        got.iter()
            .map(|e| 32 + e.row.encoded_len() as u64)
            .sum::<u64>(),
        "version 1 records have 32-byte headers"
    );
    // New rows go after the old ones in the current format; both read back after a restart.
    q.push(vec![expect(7)]).await.unwrap();
    drop(q);
    let q = open(&cfg).await;
    assert_eq!(q.recovery().truncated_bytes, 0);
    let got = q.peek(100, u64::MAX).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.offset).collect::<Vec<_>>(),
        vec![2, 3, 4, 5, 6, 7]
    );
    assert!(got.iter().all(|e| e.row == expect(e.offset)));
    q.commit(6).await.unwrap();
    assert_eq!(offsets(&q).await, vec![7]);
}

#[tokio::test]
async fn a_commit_whose_cursor_write_fails_stays_committed_and_a_later_commit_persists_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (q, faults) = open_faulty(&cfg).await;
    q.push(rows(0..4)).await.unwrap();
    faults.inject(Some(Fault::Replace(ENOSPC)));
    assert!(matches!(q.commit(1).await, Err(QueueError::Io(_))));
    assert_eq!(
        offsets(&q).await,
        vec![2, 3],
        "the committed rows are not offered again"
    );
    assert_eq!(q.stats().rows, 2);
    faults.inject(Some(Fault::Replace(EMFILE)));
    assert!(
        matches!(q.commit(1).await, Err(QueueError::Io(_))),
        "the same commit retries the write and reports that it still fails"
    );
    assert!(matches!(q.commit(0).await, Err(QueueError::Io(_))));
    faults.inject(None);
    q.commit(1).await.unwrap();
    drop(q);
    let q = open(&cfg).await;
    assert_eq!(ids(&q).await, vec![2, 3], "the cursor reached the disk");
}

#[tokio::test]
async fn sync_persists_a_cursor_whose_write_failed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (q, faults) = open_faulty(&cfg).await;
    q.push(rows(0..3)).await.unwrap();
    faults.inject(Some(Fault::Replace(ENOSPC)));
    assert!(q.commit(0).await.is_err());
    assert!(
        q.sync().await.is_err(),
        "sync reports the cursor is not on disk"
    );
    faults.inject(None);
    q.sync().await.unwrap();
    drop(q);
    assert_eq!(ids(&open(&cfg).await).await, vec![1, 2]);
}

#[tokio::test]
async fn a_failed_segment_roll_leaves_no_empty_segment_that_hides_queued_rows() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DiskSpoolConfig {
        segment_bytes: one_record_len() * 3,
        ..config(dir.path())
    };
    let (q, faults) = open_faulty(&cfg).await;
    q.push(rows(0..2)).await.unwrap();
    // Two more rows need a new segment: it is created, but the directory sync fails.
    faults.inject(Some(Fault::SyncDir));
    assert!(matches!(
        q.push(rows(2..4)).await,
        Err(PushError::Unavailable(_))
    ));
    faults.inject(None);
    // One row still fits the old segment, so it goes there with offset 2.
    q.push(rows(2..3)).await.unwrap();
    q.push(rows(3..4)).await.unwrap();
    q.commit(1).await.unwrap();
    drop(q);
    let q = open(&cfg).await;
    assert_eq!(ids(&q).await, vec![2, 3]);
    assert_eq!(q.stats().next_offset, 4);
    assert!(
        segment_files(dir.path())
            .iter()
            .all(|p| fs::metadata(p).unwrap().len() > 0),
        "no empty segment is left"
    );
}

#[tokio::test]
async fn an_empty_segment_file_never_hides_queued_rows_or_lets_offsets_be_reused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    {
        let q = open(&cfg).await;
        for i in 0..3 {
            q.push(rows(i..i + 1)).await.unwrap();
        }
        q.commit(0).await.unwrap();
    }
    // Left by a roll whose directory sync failed and whose removal never happened.
    File::create(segment_path(dir.path(), 1)).unwrap();
    let q = open(&cfg).await;
    assert_eq!(ids(&q).await, vec![1, 2]);
    assert_eq!(q.stats().next_offset, 3);
    q.push(rows(3..4)).await.unwrap();
    drop(q);
    assert_eq!(ids(&open(&cfg).await).await, vec![1, 2, 3]);
}

#[tokio::test]
async fn a_second_open_of_a_spool_in_use_fails_naming_the_directory_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let q = open(&cfg).await;
    q.push(rows(0..2)).await.unwrap();
    // A replacement the live spool is in the middle of.
    fs::write(dir.path().join("cursor.tmp"), b"half").unwrap();
    let err = DiskSpool::open(cfg.clone())
        .await
        .err()
        .expect("the spool is in use");
    assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
    assert!(
        dir.path().join("cursor.tmp").exists(),
        "the second open touched nothing"
    );
    assert_eq!(ids(&q).await, vec![0, 1]);
    drop(q);
    let q = open(&cfg).await;
    assert_eq!(ids(&q).await, vec![0, 1], "the lock goes with the spool");
}

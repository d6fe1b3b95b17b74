//! The disk spool's recovery on an arbitrary segment file: opening never panics and never
//! fails for bad data, everything it then reads back decodes, and it still accepts and
//! returns a new row.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::queue::Queue;
use weir::queue::disk::{DiskSpool, DiskSpoolConfig};
use weir::row::Row;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("00000000000000000000.seg"), data).expect("segment written");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let spool = DiskSpool::open(DiskSpoolConfig::new(dir.path(), 1_000_000, 1 << 30))
            .await
            .expect("bad data never stops the spool from opening");
        let before = spool.peek(usize::MAX, u64::MAX).await.expect("recovered records are readable");
        let row = Row::from_pairs([("id", "after-recovery")]).expect("valid row");
        spool.push(vec![row.clone()]).await.expect("a recovered spool accepts rows");
        let after = spool.peek(usize::MAX, u64::MAX).await.expect("readable");
        assert_eq!(after.len(), before.len() + 1);
        assert_eq!(after.last().map(|e| &e.row), Some(&row));
        assert!(after.windows(2).all(|w| w[0].offset < w[1].offset), "offsets only grow");
    });
});

//! JSON bodies, including the flattening of nested objects: never panics, and every row it
//! returns has non-empty, unique field names that survive the row encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::row::Row;

fuzz_target!(|data: &[u8]| {
    if let Ok(rows) = weir::ingest::parse::json(data) {
        for row in rows {
            let mut names = std::collections::HashSet::new();
            for f in row.fields() {
                assert!(!f.name.is_empty());
                assert!(names.insert(f.name.to_owned()), "duplicate {}", f.name);
            }
            assert_eq!(Row::from_bytes(row.as_bytes()).unwrap(), row);
        }
    }
});

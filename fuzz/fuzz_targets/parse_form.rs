//! Query strings and form bodies: never panics; names are non-empty and unique.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for what in ["query string", "form body"] {
        if let Ok(row) = weir::ingest::parse::form(data, what) {
            let mut names = std::collections::HashSet::new();
            for f in row.fields() {
                assert!(!f.name.is_empty());
                assert!(names.insert(f.name.to_owned()));
            }
        }
    }
});

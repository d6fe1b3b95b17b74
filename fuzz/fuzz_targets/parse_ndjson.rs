//! NDJSON bodies: never panics; each row equals what the JSON parser makes of its line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(rows) = weir::ingest::parse::ndjson(data) {
        let text = std::str::from_utf8(data).unwrap();
        let lines: Vec<&str> = text
            .split('\n')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(rows.len(), lines.len());
        for (row, line) in rows.iter().zip(lines) {
            assert_eq!(
                weir::ingest::parse::json(line.as_bytes()).unwrap(),
                vec![row.clone()]
            );
        }
    }
});

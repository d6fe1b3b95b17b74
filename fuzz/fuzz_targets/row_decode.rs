//! The row decoder on arbitrary bytes: never panics, and what it accepts re-encodes to the
//! same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(row) = weir::row::Row::from_bytes(data) {
        assert_eq!(row.as_bytes(), data);
    }
});

//! The CSV writer: rows parsed from the fuzz input (NDJSON), written with a separator the
//! first byte picks, read back by the csv crate with the same options, give back every
//! value exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::config::CsvOptions;
use weir::queue::Entry;
use weir::sink::csv::{Layout, write_chunks};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let Ok(rows) = weir::ingest::parse::ndjson(body) else {
        return;
    };
    let entries: Vec<Entry> = rows
        .into_iter()
        .enumerate()
        .map(|(i, row)| Entry {
            offset: i as u64,
            received_ms: 0,
            row,
        })
        .collect();
    let opts = CsvOptions {
        separator: [b',', b';', b'\t', b'|'][usize::from(pick % 4)],
        ..CsvOptions::default()
    };
    let layout = Layout::for_batch(&[], None, &entries);
    let chunk_bytes = u64::from(pick / 4) * 16 + 1;
    let chunks =
        write_chunks(&layout, &entries, &opts, chunk_bytes).expect("writing to memory works");
    let mut read_back = Vec::new();
    for chunk in &chunks {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(opts.separator)
            .has_headers(true)
            .from_reader(chunk.as_slice());
        let headers: Vec<String> = reader
            .headers()
            .unwrap()
            .iter()
            .map(str::to_owned)
            .collect();
        if !layout.headers.is_empty() {
            assert_eq!(headers, layout.headers);
        }
        for record in reader.records() {
            read_back.push(
                record
                    .unwrap()
                    .iter()
                    .map(str::to_owned)
                    .collect::<Vec<_>>(),
            );
        }
    }
    if layout.headers.is_empty() {
        return;
    }
    assert_eq!(read_back.len(), entries.len());
    for (record, entry) in read_back.iter().zip(&entries) {
        for (value, source) in record.iter().zip(&layout.sources) {
            let expected = entry.row.get(source).map_or("", |f| f.text);
            assert_eq!(value, expected);
        }
    }
});

//! Tidy checks over the source tree: rules of ARCHITECTURE.md and STYLE.md that a test can
//! hold, so they stay true by construction rather than by care.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            found.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
    found
}

#[test]
fn every_rust_file_opens_with_a_line_saying_what_it_is_for() {
    let mut files = Vec::new();
    for dir in ["src", "tests", "bench", "fuzz"] {
        files.extend(rust_files(&root().join(dir)));
    }
    assert!(files.len() > 50, "found only {} files", files.len());
    let missing: Vec<_> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().starts_with("//!"))
        .map(|f| f.strip_prefix(root()).unwrap().display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading //! line: {missing:?}"
    );
}

#[test]
fn ingest_only_pushes_to_a_queue_and_never_takes_or_commits_rows() {
    let files = rust_files(&root().join("src/ingest"));
    assert!(files.len() >= 5, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for forbidden in [
            ".queue()",
            ".commit(",
            ".peek(",
            ".set_in_flight(",
            "replay_from(",
        ] {
            assert!(
                !text.contains(forbidden),
                "{} uses {forbidden}: ingest may only push (Pipeline::push)",
                file.display()
            );
        }
    }
}

#[test]
fn the_emulator_depends_on_no_other_weir_module() {
    let files = rust_files(&root().join("src/emulator"));
    assert!(files.len() >= 8, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, line) in text.lines().enumerate() {
            let uses_weir = line.contains("crate::") && !line.contains("crate::emulator");
            assert!(
                !uses_weir,
                "{}:{}: the emulator must stay its own crate in all but name: {line}",
                file.display(),
                i + 1
            );
        }
    }
}

#[test]
fn sources_feed_queues_and_never_name_the_sink_module() {
    let files = rust_files(&root().join("src/sources"));
    assert!(files.len() >= 2, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for forbidden in ["crate::sink", "sink::", ".queue()", ".commit("] {
            assert!(
                !text.contains(forbidden),
                "{} uses {forbidden}: sources only push rows (Pipeline::push), as ingest does",
                file.display()
            );
        }
    }
}

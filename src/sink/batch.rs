//! What a keyed batch sends: the latest row of each key wins (arrival order), and a key whose
//! latest row matches `delete_when` goes in the deleted chunk instead. Also the columns a
//! table without column config has seen, persisted so their order never changes.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::csv::Layout;
use crate::config::Dedupe;
use crate::expr::{self, Expr};
use crate::queue::Entry;

/// The column `dedupe = "server"` adds: the row's queue offset, which only grows.
pub const SEQ_COLUMN: &str = crate::config::ORDER_COLUMN;

/// A batch as one job sends it. Committing still covers every row of the batch: a row left
/// out was superseded by a later row of its key, which is sent.
#[derive(Debug, Default)]
pub struct Split {
    pub upserts: Vec<Entry>,
    pub deletes: Vec<Entry>,
}

/// Splits a batch by key. `keys` are CSV column names of `layout`. Without keys, every row
/// is an upsert. With `Dedupe::Client` only a key's latest row is kept; with
/// `Dedupe::Server` every upsert of a key whose latest row is an upsert is kept (Celonis
/// keeps the greatest `weir_seq`). Either way a key is upserted or deleted, never both.
pub fn split(
    layout: &Layout,
    keys: &[String],
    delete_when: Option<&Expr>,
    dedupe: Dedupe,
    entries: &[Entry],
) -> Split {
    if keys.is_empty() {
        return Split {
            upserts: entries.to_vec(),
            deletes: Vec::new(),
        };
    }
    let pipeline = expr::pipeline_value(&layout.pipeline);
    let key_of =
        |e: &Entry| -> Vec<String> { keys.iter().map(|k| cell(layout, &pipeline, e, k)).collect() };
    let deleted = |e: &Entry| -> bool {
        let Some(when) = delete_when else {
            return false;
        };
        let row = expr::row_value(&e.row);
        when.eval_bool(&[("row", &row)]).unwrap_or_else(|err| {
            tracing::warn!(offset = e.offset, error = %err, "delete_when failed on a row, sent as an upsert");
            false
        })
    };
    let rows: Vec<(Vec<String>, bool)> = entries.iter().map(|e| (key_of(e), deleted(e))).collect();
    let mut latest: HashMap<&[String], usize> = HashMap::new();
    for (i, (key, _)) in rows.iter().enumerate() {
        latest.insert(key.as_slice(), i);
    }
    let mut out = Split::default();
    for (i, (e, (key, delete))) in entries.iter().zip(&rows).enumerate() {
        let last = latest[key.as_slice()];
        let last_deletes = rows[last].1;
        if i == last {
            if *delete {
                out.deletes.push(e.clone());
            } else {
                out.upserts.push(e.clone());
            }
        } else if dedupe == Dedupe::Server && !last_deletes && !*delete {
            out.upserts.push(e.clone());
        }
    }
    out
}

/// The text a row gives the column named `header` (empty when it has no such field).
fn cell(layout: &Layout, pipeline: &cel::Value, e: &Entry, header: &str) -> String {
    let Some(i) = layout.headers.iter().position(|h| h == header) else {
        return String::new();
    };
    if let Some((_, x)) = layout.exprs.iter().find(|(j, _)| *j == i) {
        let row = expr::row_value(&e.row);
        return x
            .eval_text(&[("row", &row), ("pipeline", pipeline)])
            .unwrap_or_default();
    }
    let source = &layout.sources[i];
    e.row
        .fields()
        .find(|f| f.name == source)
        .map(|f| f.text.to_owned())
        .unwrap_or_default()
}

/// The file that holds a table's columns.
pub const COLUMNS_FILE: &str = "columns.json";
const COLUMNS_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct ColumnsFile {
    version: u32,
    columns: Vec<String>,
}

/// The columns a pipeline without column config has sent so far, in the order first sent,
/// persisted in `{state_dir}/columns.json` so a restart keeps the order.
#[derive(Debug)]
pub struct KnownColumns {
    dir: PathBuf,
    columns: Mutex<Vec<String>>,
}

/// Why the column state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ColumnsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a columns file: {detail}")]
    Format { path: String, detail: String },
}

impl KnownColumns {
    /// Reads the state; a missing file (an older weir, or a new pipeline) starts empty.
    pub fn load(dir: &Path) -> Result<KnownColumns, ColumnsError> {
        let path = dir.join(COLUMNS_FILE);
        let columns = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: ColumnsFile =
                    serde_json::from_slice(&bytes).map_err(|e| ColumnsError::Format {
                        path: path.display().to_string(),
                        detail: e.to_string(),
                    })?;
                if file.version != COLUMNS_VERSION {
                    return Err(ColumnsError::Format {
                        path: path.display().to_string(),
                        detail: format!("version {} is newer than this weir", file.version),
                    });
                }
                file.columns
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(ColumnsError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        Ok(KnownColumns {
            dir: dir.to_owned(),
            columns: Mutex::new(columns),
        })
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.columns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The known columns followed by the new names of `seen`, in order. When that adds a
    /// name, the state is written (atomically) before this returns.
    pub fn extend(&self, seen: &[String]) -> Result<Vec<String>, ColumnsError> {
        let mut columns = self.lock();
        let mut next = columns.clone();
        for name in seen {
            if !next.contains(name) {
                next.push(name.clone());
            }
        }
        if next.len() != columns.len() {
            self.write(&next).map_err(|source| ColumnsError::Io {
                path: self.dir.join(COLUMNS_FILE).display().to_string(),
                source,
            })?;
            columns.clone_from(&next);
        }
        Ok(next)
    }

    fn write(&self, columns: &[String]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let file = ColumnsFile {
            version: COLUMNS_VERSION,
            columns: columns.to_vec(),
        };
        let tmp = self.dir.join(format!("{COLUMNS_FILE}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(&file).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(COLUMNS_FILE))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Row;

    fn entry(offset: u64, fields: &[(&str, &str)]) -> Entry {
        Entry {
            offset,
            received_ms: 0,
            row: Row::from_pairs(fields.iter().copied()).unwrap(),
        }
    }

    fn layout() -> Layout {
        Layout {
            headers: vec!["id".into(), "v".into(), "op".into()],
            sources: vec!["id".into(), "v".into(), "op".into()],
            ..Layout::default()
        }
    }

    fn offsets(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.offset).collect()
    }

    #[test]
    fn the_latest_row_of_a_key_wins_and_a_delete_decides_only_when_latest() {
        let when = Expr::compile("row.op == 'delete'", &["row"]).unwrap();
        let entries = vec![
            entry(0, &[("id", "1"), ("v", "a")]),
            entry(1, &[("id", "1"), ("op", "delete")]),
            entry(2, &[("id", "2"), ("op", "delete")]),
            entry(3, &[("id", "2"), ("v", "b")]),
            entry(4, &[("id", "3"), ("v", "c")]),
            entry(5, &[("id", "3"), ("v", "d")]),
        ];
        let keys = ["id".to_owned()];
        let s = split(&layout(), &keys, Some(&when), Dedupe::Client, &entries);
        assert_eq!(offsets(&s.upserts), [3, 5]);
        assert_eq!(offsets(&s.deletes), [1]);
        let s = split(&layout(), &keys, Some(&when), Dedupe::Server, &entries);
        assert_eq!(
            offsets(&s.upserts),
            [3, 4, 5],
            "server dedupe sends every upsert"
        );
        assert_eq!(offsets(&s.deletes), [1]);
        let s = split(&layout(), &[], None, Dedupe::Client, &entries);
        assert_eq!(s.upserts.len(), 6, "without keys every row is sent");
    }

    #[test]
    fn known_columns_keep_their_order_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let known = KnownColumns::load(dir.path()).unwrap();
        assert!(known.snapshot().is_empty(), "no file is an empty state");
        let cols = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(known.extend(&cols(&["a", "b"])).unwrap(), ["a", "b"]);
        assert_eq!(
            known.extend(&cols(&["c", "b", "a"])).unwrap(),
            ["a", "b", "c"]
        );
        let again = KnownColumns::load(dir.path()).unwrap();
        assert_eq!(again.snapshot(), ["a", "b", "c"]);
        std::fs::write(
            dir.path().join(COLUMNS_FILE),
            br#"{"version":9,"columns":[]}"#,
        )
        .unwrap();
        assert!(KnownColumns::load(dir.path()).is_err());
    }
}

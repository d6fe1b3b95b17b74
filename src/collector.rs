//! The scrape-time source of `/metrics`: reads every pipeline's counters, queue stats and
//! state, and the job budgets, into the plain [`Snapshot`] that `metrics.rs` renders.
//! It lives beside `app.rs` because it reads pipelines, queues and sinks, which the leaf
//! `metrics` module must not know.

use std::sync::Arc;

use crate::auth_failure::Failure;
use crate::metrics::{PipelineSample, Scrape, Snapshot};
use crate::pipeline::{Counters, Pipeline, State};
use crate::queue::now_ms;
use crate::sink::budget::Budgets;

/// Reads queue stats, counters and budgets at scrape time.
#[derive(Debug)]
pub struct Collector {
    pipelines: Vec<Arc<Pipeline>>,
    budgets: Arc<Budgets>,
}

impl Collector {
    pub fn new(pipelines: Vec<Arc<Pipeline>>, budgets: Arc<Budgets>) -> Collector {
        Collector { pipelines, budgets }
    }
}

impl Scrape for Collector {
    fn snapshot(&self) -> Snapshot {
        let now = now_ms();
        Snapshot {
            pipelines: self.pipelines.iter().map(|p| sample(p, now)).collect(),
            budgets: self.budgets.remaining(),
        }
    }
}

fn sample(p: &Pipeline, now: u64) -> PipelineSample {
    let c = &p.counters;
    let stats = p.queue().stats();
    let current = p.state();
    PipelineSample {
        pipeline: p.name().to_owned(),
        accepted: Counters::get(&c.accepted),
        ignored: Counters::get(&c.ignored),
        rejected: Counters::get(&c.rejected),
        duplicate: Counters::get(&c.duplicate),
        refused: c.refused(),
        auth_failures: p.config.auth.as_ref().map(|_| {
            Failure::ALL
                .into_iter()
                .map(|f| (f.reason(), c.auth_failures.get(f)))
                .collect()
        }),
        delivered: Counters::get(&c.delivered),
        runs_ok: Counters::get(&c.runs_ok),
        runs_failed: Counters::get(&c.runs_failed),
        dead_lettered: Counters::get(&c.dead_lettered),
        rows_isolated: Counters::get(&c.isolated),
        isolation_jobs: Counters::get(&c.isolation_jobs),
        removed: Counters::get(&c.removed),
        queue_rows: stats.rows,
        queue_bytes: stats.bytes,
        queue_capacity_rows: stats.capacity_rows,
        queue_oldest_age_seconds: stats
            .oldest_ms
            .map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0),
        states: [
            State::Active,
            State::Paused,
            State::Failing,
            State::Suspended,
        ]
        .into_iter()
        .map(|s| (s.as_str(), s == current))
        .collect(),
        fsyncs: p
            .queue()
            .fsync_stats()
            .map(|(count, total)| (count, total.as_secs_f64())),
    }
}

#[cfg(test)]
mod tests {
    //! The module boundaries ARCHITECTURE.md promises, checked by reading `src/`.

    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    fn src() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("src/ entry").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The file's text up to its `#[cfg(test)] mod …`: what the built library contains.
    fn non_test_code(path: &Path) -> String {
        let text = std::fs::read_to_string(path).expect("source file is readable");
        let lines: Vec<&str> = text.lines().collect();
        let end = (0..lines.len())
            .find(|&i| {
                lines[i].trim() == "#[cfg(test)]"
                    && lines[i + 1..]
                        .iter()
                        .find(|l| !l.trim().is_empty())
                        .is_some_and(|l| l.trim_start().starts_with("mod "))
            })
            .unwrap_or(lines.len());
        lines[..end].join("\n")
    }

    /// The top-level weir modules a piece of code names through `crate::`.
    fn crate_refs(code: &str) -> BTreeSet<String> {
        let mut refs = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group[..group.find('}').unwrap_or(group.len())]
                    .split(',')
                    .collect(),
                None => vec![rest],
            };
            for name in names {
                let name: String = name
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    refs.insert(name);
                }
            }
        }
        refs
    }

    /// The top-level module a file under `src/` belongs to.
    fn module_of(path: &Path) -> String {
        let rel = path.strip_prefix(src()).expect("file under src/");
        let first = rel.components().next().expect("non-empty path");
        let first = first.as_os_str().to_string_lossy();
        first.strip_suffix(".rs").unwrap_or(&first).to_owned()
    }

    fn graph() -> BTreeMap<String, BTreeSet<String>> {
        let mut files = Vec::new();
        rust_files(&src(), &mut files);
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in files {
            let module = module_of(&f);
            let refs = crate_refs(&non_test_code(&f));
            graph
                .entry(module.clone())
                .or_default()
                .extend(refs.into_iter().filter(|r| *r != module));
        }
        graph
    }

    fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(m) = todo.pop() {
            for next in graph.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    }

    #[test]
    fn metrics_is_a_leaf_that_imports_nothing_of_weir() {
        let text = std::fs::read_to_string(src().join("metrics.rs")).expect("metrics.rs");
        assert!(
            !text.contains("crate::") && !text.contains("super::"),
            "metrics.rs must take plain values, not weir types"
        );
    }

    #[test]
    fn ingest_and_sink_never_name_each_other() {
        let mut files = Vec::new();
        rust_files(&src(), &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).expect("source file");
            let refs = crate_refs(&text);
            match module_of(&f).as_str() {
                "ingest" => assert!(!refs.contains("sink"), "{} uses crate::sink", f.display()),
                "sink" => assert!(
                    !refs.contains("ingest"),
                    "{} uses crate::ingest",
                    f.display()
                ),
                _ => {}
            }
        }
    }

    #[test]
    fn ingest_and_sink_never_reach_each_other_through_other_modules() {
        let graph = graph();
        assert!(graph.contains_key("ingest") && graph.contains_key("sink"));
        let from_ingest = reaches(&graph, "ingest");
        assert!(
            !from_ingest.contains("sink"),
            "ingest reaches sink through {from_ingest:?}"
        );
        let from_sink = reaches(&graph, "sink");
        assert!(
            !from_sink.contains("ingest"),
            "sink reaches ingest through {from_sink:?}"
        );
    }

    #[test]
    fn the_reference_reader_sees_grouped_and_nested_paths() {
        let refs = crate_refs("use crate::{config::X, queue};\nlet a = crate::expr::f();");
        assert_eq!(
            refs,
            ["config", "expr", "queue"]
                .map(String::from)
                .into_iter()
                .collect()
        );
    }
}

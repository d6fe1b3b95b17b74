//! How cost grows: intake against connections, disk spool recovery against backlog, intake
//! with a large backlog queued, and memory per queued row against row width. Each is a small
//! table in BENCHMARKS.md and a plot (`bench/plot.py` draws them from `growth.json`).

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::load::{self, Load, WrkResult};
use crate::scenarios::{Env, Target, median};

/// Connection counts of the sweep.
pub const CONNECTIONS: [u32; 6] = [1, 8, 32, 64, 128, 512];

/// Intake of one-row JSON requests at each connection count: the median of the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Sweep {
    pub connections: Vec<u32>,
    pub limit: Vec<WrkResult>,
    pub memory: Vec<WrkResult>,
    pub disk: Vec<WrkResult>,
}

impl Sweep {
    /// The three results at `connections`, if the sweep has them.
    pub fn at(&self, connections: u32) -> Option<(WrkResult, WrkResult, WrkResult)> {
        let i = self.connections.iter().position(|&c| c == connections)?;
        Some((self.limit[i], self.memory[i], self.disk[i]))
    }
}

/// Each target runs on one server per round, every connection count in turn after one
/// warm-up; the rounds alternate the order of the targets.
pub fn sweep(env: &Env, threads: u32, seconds: u32, rounds: u32) -> anyhow::Result<Sweep> {
    let body = &load::bodies()[1];
    let targets = [Target::Limit, Target::Memory, Target::Disk];
    // runs[target][connection index] = one result per round
    let mut runs = vec![vec![Vec::new(); CONNECTIONS.len()]; targets.len()];
    for round in 0..rounds {
        for k in 0..targets.len() {
            let t = (k + round as usize) % targets.len();
            let target = targets[t];
            let tag = format!("sweep-{}", target.name());
            let mut proc = env.start(target, &tag, None, None, true)?;
            let dir = env.work.join(&tag);
            let warm = Load {
                threads,
                connections: 32,
                seconds: 1,
            };
            load::wrk(&dir, proc.addr, body, warm)?;
            for (c, &connections) in CONNECTIONS.iter().enumerate() {
                let load = Load {
                    // wrk needs at least one connection per thread.
                    threads: threads.min(connections),
                    connections,
                    seconds,
                };
                let r = load::wrk(&dir, proc.addr, body, load)
                    .with_context(|| format!("{} at {connections} connections", target.name()))?;
                println!(
                    "   round {} {:<12} {connections:>3} connections {:>9.0} req/s  p99 {:>8.0} µs",
                    round + 1,
                    target.name(),
                    r.req_per_s,
                    r.p99_us
                );
                runs[t][c].push(r);
            }
            proc.check_alive()?;
            drop(proc);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let medians = |t: usize| -> Vec<WrkResult> { runs[t].iter().map(|r| median(r)).collect() };
    Ok(Sweep {
        connections: CONNECTIONS.to_vec(),
        limit: medians(0),
        memory: medians(1),
        disk: medians(2),
    })
}

/// Disk spool start-up after a crash against the rows it holds, and intake with a backlog.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    /// (rows queued, spawn to `/healthz` after a SIGKILL, in ms).
    pub points: Vec<(u64, f64)>,
    /// Rows queued in the busy spool of the intake comparison.
    pub backlog_rows: u64,
    /// One-row JSON intake of an empty spool and of one holding `backlog_rows`, medians of
    /// alternating runs.
    pub empty: WrkResult,
    pub backlog: WrkResult,
}

/// Fills one disk spool step by step to each of `backlogs`, killing and restarting weir at
/// each step; at `backlog_rows` it also compares intake against an empty spool.
pub fn recovery(
    env: &Env,
    backlogs: &[u64],
    backlog_rows: u64,
    load: Load,
    rounds: u32,
) -> anyhow::Result<Recovery> {
    let body = &load::bodies()[1];
    let tag = "recovery";
    let mut proc = env.start(Target::Disk, tag, None, None, true)?;
    let mut queued = 0u64;
    let mut points = Vec::new();
    let mut steps: Vec<u64> = backlogs.to_vec();
    steps.push(backlog_rows);
    steps.sort_unstable();
    steps.dedup();
    let mut intake = None;
    for rows in steps {
        env.rt
            .block_on(load::fill(proc.addr, queued, rows - queued, 1000, 4))?;
        queued = rows;
        if rows == backlog_rows {
            // The fill left a gigabyte of dirty pages: written back first, so the kernel's
            // writeback does not compete with the spools' fsyncs while they are measured.
            std::process::Command::new("sync")
                .status()
                .context("running sync")?;
            intake = Some(compare_intake(env, &proc, body, load, rounds)?);
        }
        if backlogs.contains(&rows) {
            proc = env.restart(proc, tag)?;
            let ms = proc.ready_after.as_secs_f64() * 1000.0;
            println!("   {rows:>9} rows queued: spawn to /healthz after SIGKILL {ms:.0} ms");
            points.push((rows, ms));
        }
    }
    proc.check_alive()?;
    drop(proc);
    let _ = std::fs::remove_dir_all(env.work.join(tag));
    let (empty, backlog) = intake.context("the intake comparison ran")?;
    Ok(Recovery {
        points,
        backlog_rows,
        empty,
        backlog,
    })
}

/// One-row JSON intake of a fresh disk spool and of `busy`, alternating, medians.
fn compare_intake(
    env: &Env,
    busy: &crate::procs::Proc,
    body: &load::Body,
    load: Load,
    rounds: u32,
) -> anyhow::Result<(WrkResult, WrkResult)> {
    let tag = "recovery-empty";
    let empty = env.start(Target::Disk, tag, None, None, true)?;
    let dir = env.work.join(tag);
    let warm = Load { seconds: 1, ..load };
    load::wrk(&dir, empty.addr, body, warm)?;
    load::wrk(&dir, busy.addr, body, warm)?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_empty in order {
            let addr = if is_empty { empty.addr } else { busy.addr };
            let r = load::wrk(&dir, addr, body, load)?;
            println!(
                "   round {} {} {:>9.0} req/s  p99 {:>8.0} µs",
                round + 1,
                if is_empty {
                    "empty spool   "
                } else {
                    "spool with backlog"
                },
                r.req_per_s,
                r.p99_us
            );
            if is_empty { &mut a } else { &mut b }.push(r);
        }
    }
    drop(empty);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((median(&a), median(&b)))
}

/// Memory per queued row of one row width (memory queue).
#[derive(Debug, Clone, Serialize)]
pub struct Width {
    pub fields: u32,
    pub rows: u64,
    /// Each row's JSON object text, per row.
    pub raw_per_row: f64,
    /// RSS above idle once the rows are queued, per row.
    pub rss_per_row: f64,
}

pub fn widths(env: &Env, fields: &[u32], rows: u64) -> anyhow::Result<Vec<Width>> {
    let mut out = Vec::new();
    for &f in fields {
        let tag = format!("width-{f}");
        let proc = env.start(Target::Memory, &tag, None, None, true)?;
        std::thread::sleep(Duration::from_millis(300));
        let idle = proc.memory()?;
        // About 400 kB per request, under weir's 1 MiB body limit at any width.
        let per_request = (400_000 / (u64::from(f) * 22)).clamp(1, 1000);
        let raw = env
            .rt
            .block_on(load::fill_wide(proc.addr, 0, rows, per_request, 4, f))?;
        let full = proc.memory()?;
        let w = Width {
            fields: f,
            rows,
            raw_per_row: raw as f64 / rows as f64,
            rss_per_row: full.rss.saturating_sub(idle.rss) as f64 / rows as f64,
        };
        println!(
            "   {f:>3} fields: raw {:.0} B/row, RSS above idle {:.0} B/row ({:.2}×)",
            w.raw_per_row,
            w.rss_per_row,
            w.rss_per_row / w.raw_per_row
        );
        drop(proc);
        let _ = std::fs::remove_dir_all(env.work.join(&tag));
        out.push(w);
    }
    Ok(out)
}

//! The measurements, in the order they run: start-up and idle memory, CSV and Parquet
//! writing, intake under wrk (every queue, the NATS ones included), intake against
//! connections, memory with a 1M-row backlog and against row width, disk spool recovery
//! against backlog, delivery to the emulator against batch size, and the same batch delivered
//! with each Celonis API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::load::{self, Load, WrkResult};
use crate::procs::{Memory, Proc, free_addr, get_status};
use crate::report::{
    ApiDelivery, Backlog, Delivery, Ingest, Machine, MemoryResults, Report, Startup, StartupSet,
};
use crate::{csvbench, formats, growth, work_dir};

const APP_KEY: &str = "bench-app-key";
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

#[derive(clap::Args)]
pub struct RunArgs {
    /// The weir binary under test (a release build).
    #[arg(long)]
    weir: PathBuf,
    /// Where to write the Markdown report.
    #[arg(long)]
    out: PathBuf,
    /// Scratch directory for configs, spools and logs (emptied first).
    #[arg(long)]
    work: PathBuf,
    #[arg(long, default_value_t = 32)]
    connections: u32,
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Seconds of each measured wrk run (each server's first follows a 1 s warm-up).
    #[arg(long, default_value_t = 2)]
    seconds: u32,
    /// Rounds over all intake scenarios, alternating the order of the servers; the median
    /// of each counts.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Where the plots go (PNG files drawn by bench/plot.py from growth.json).
    #[arg(long, default_value = "bench/plots")]
    plots: PathBuf,
    /// Rows in the memory and largest delivery measurements.
    #[arg(long, default_value_t = 1_000_000)]
    backlog: u64,
    /// The run's date, as the report prints it.
    #[arg(long, default_value = "")]
    date: String,
    /// The load generator's version line.
    #[arg(long, default_value = "wrk")]
    wrk_version: String,
}

/// Which server a scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Limit,
    Memory,
    Disk,
    /// weir on a NATS JetStream stream, one nats-server node.
    Nats,
    /// weir on a stream with three replicas on a three-node NATS cluster.
    Nats3,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Limit => "limit",
            Target::Memory => "weir-memory",
            Target::Disk => "weir-disk",
            Target::Nats => "weir-nats",
            Target::Nats3 => "weir-nats3",
        }
    }
}

pub struct Env {
    weir: PathBuf,
    bench: PathBuf,
    pub work: PathBuf,
    pub rt: tokio::runtime::Runtime,
}

/// The run whose requests per second are the median of `runs` (its latencies with it).
pub fn median(runs: &[WrkResult]) -> WrkResult {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.req_per_s.total_cmp(&b.req_per_s));
    sorted[sorted.len() / 2]
}

impl Env {
    /// Kills `prev` (SIGKILL: a crash) and starts weir again on its directory `tag`, with the
    /// same config and spool; returns once `/healthz` answers (`ready_after` is the time from
    /// the spawn).
    pub fn restart(&self, prev: Proc, tag: &str) -> anyhow::Result<Proc> {
        let addr = prev.addr;
        let name = prev.name.clone();
        drop(prev);
        let dir = self.work.join(tag);
        let config = dir.join("weir.toml").to_string_lossy().into_owned();
        let mut weir = Proc::spawn(&name, &self.weir, &["serve", "-c", &config], addr, &dir)?;
        weir.wait_for("/healthz", 200)?;
        Ok(weir)
    }

    /// Starts `target` in a fresh directory and waits until it answers: until its first 202
    /// (which queues one row) or, with `quiet`, until `/healthz` answers (queues nothing).
    pub fn start(
        &self,
        target: Target,
        tag: &str,
        admin: Option<SocketAddr>,
        sink: Option<SocketAddr>,
        quiet: bool,
    ) -> anyhow::Result<Proc> {
        self.start_with(target, tag, admin, sink, quiet, REPLACE)
    }

    /// [`Env::start`] with `sink_lines` in the sink table instead of `mode = "REPLACE"`.
    fn start_with(
        &self,
        target: Target,
        tag: &str,
        admin: Option<SocketAddr>,
        sink: Option<SocketAddr>,
        quiet: bool,
        sink_lines: &str,
    ) -> anyhow::Result<Proc> {
        let dir = work_dir(&self.work, tag)?;
        let addr = free_addr()?;
        let mut proc = match target {
            Target::Limit => {
                let listen = addr.to_string();
                Proc::spawn(
                    target.name(),
                    &self.bench,
                    &["limit", "--listen", &listen],
                    addr,
                    &dir,
                )?
            }
            Target::Memory | Target::Disk | Target::Nats | Target::Nats3 => {
                let (nats, nats_url) = match target {
                    Target::Nats => {
                        let naddr = free_addr()?;
                        let store = dir.join("nats");
                        let port = naddr.port().to_string();
                        let store_arg = store.to_string_lossy().into_owned();
                        let mut n = Proc::spawn(
                            "nats-server",
                            Path::new("nats-server"),
                            &["-a", "127.0.0.1", "-p", &port, "-js", "-sd", &store_arg],
                            naddr,
                            &dir,
                        )?;
                        n.wait_for_port()?;
                        let url = format!("nats://{}", n.addr);
                        (Some(n), Some(url))
                    }
                    Target::Nats3 => {
                        let (n, url) = nats_cluster(&dir)?;
                        (Some(n), Some(url))
                    }
                    _ => (None, None),
                };
                let config = dir.join("weir.toml");
                std::fs::write(
                    &config,
                    weir_toml(&dir, addr, target, admin, sink, sink_lines, nats_url),
                )?;
                let config = config.to_string_lossy().into_owned();
                let mut weir = Proc::spawn(
                    target.name(),
                    &self.weir,
                    &["serve", "-c", &config],
                    addr,
                    &dir,
                )?;
                weir.companion = nats.map(Box::new);
                weir
            }
        };
        match (quiet, target) {
            (true, Target::Memory | Target::Disk | Target::Nats | Target::Nats3) => {
                proc.wait_for("/healthz", 200)?
            }
            _ => proc.wait_for("/hooks/bench?OrderId=0", 202)?,
        };
        Ok(proc)
    }
}

/// Three clustered nats-servers with JetStream on loopback, once JetStream has a meta leader:
/// node 0, which stops nodes 1 and 2 after itself (its companions), and the client URL of
/// all three.
fn nats_cluster(dir: &Path) -> anyhow::Result<(Proc, String)> {
    let client: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect::<Result<_, _>>()?;
    let routes: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect::<Result<_, _>>()?;
    let monitor = free_addr()?;
    let all_routes = routes
        .iter()
        .map(|a| format!("nats://{a}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for i in 0..3 {
        let store = dir.join(format!("nats-{i}"));
        let (port, store, name, route) = (
            client[i].port().to_string(),
            store.to_string_lossy().into_owned(),
            format!("node-{i}"),
            format!("nats://{}", routes[i]),
        );
        let monitor_port = monitor.port().to_string();
        let mut args = vec![
            "-a",
            "127.0.0.1",
            "-p",
            &port,
            "-js",
            "-sd",
            &store,
            "-n",
            &name,
            "--cluster_name",
            "weir-bench",
            "--cluster",
            &route,
            "--routes",
            &all_routes,
        ];
        if i == 0 {
            args.extend(["-m", &monitor_port]);
        }
        let mut n = Proc::spawn(
            &format!("nats-server-{i}"),
            Path::new("nats-server"),
            &args,
            client[i],
            dir,
        )?;
        n.wait_for_port()?;
        nodes.push(n);
    }
    // JetStream answers once the cluster's meta group has elected a leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_status(monitor, "/healthz").ok() != Some(200) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the NATS cluster's JetStream was not ready within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = client
        .iter()
        .map(|a| format!("nats://{a}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut last = nodes.pop().expect("three nodes");
    while let Some(mut n) = nodes.pop() {
        n.companion = Some(Box::new(last));
        last = n;
    }
    Ok((last, url))
}

/// The sink lines of every scenario but the API comparison.
const REPLACE: &str = "mode = \"REPLACE\"";

/// A weir config with one pipeline, `bench`, that takes everything the run sends: the queue
/// never fills (a 503 would make the numbers meaningless), and no delivery runs unless the
/// admin API asks for one.
fn weir_toml(
    dir: &Path,
    listen: SocketAddr,
    target: Target,
    admin: Option<SocketAddr>,
    sink: Option<SocketAddr>,
    sink_lines: &str,
    nats_url: Option<String>,
) -> String {
    let queue = match target {
        Target::Nats => format!(
            "{{ kind = \"nats\", url = \"{}\", stream = \"WEIR_bench\", max_bytes = \"8GiB\" }}",
            nats_url.unwrap_or_default()
        ),
        Target::Nats3 => format!(
            "{{ kind = \"nats\", url = \"{}\", stream = \"WEIR_bench\", replicas = 3, max_bytes = \"4GiB\" }}",
            nats_url.unwrap_or_default()
        ),
        Target::Disk => format!(
            "{{ kind = \"disk\", dir = {:?}, max_bytes = \"64GiB\" }}",
            dir.join("spool").display().to_string()
        ),
        // Far more than a run sends: a full queue's 503 would end the run.
        _ => "{ kind = \"memory\", max_bytes = \"8GiB\" }".to_owned(),
    };
    let admin = admin.map_or(String::new(), |a| {
        format!(
            "[admin]\nlisten = \"{a}\"\ntokens = [{{ token = \"{ADMIN_TOKEN}\", scope = \"write\" }}]\n"
        )
    });
    // Without an emulator the sink points at a closed port; no run is ever started then.
    let sink = sink.map_or("127.0.0.1:9".to_owned(), |s| s.to_string());
    format!(
        r#"data_dir = {data:?}

[server]
listen = "{listen}"
shutdown_grace = "1s"

{admin}
[[pipelines]]
name = "bench"
queue_capacity = 100000000
queue = {queue}
schedule = "1h"
max_rows_per_run = 10000000
max_bytes_per_run = "4GiB"
retry_initial = "30m"
retry_max_interval = "1h"

[pipelines.sink]
kind = "celonis"
url = "http://{sink}"
data_pool_id = "00000000-0000-4000-8000-000000000001"
target_name = "bench"
{sink_lines}
app_key = "{APP_KEY}"
request_timeout = "10m"
"#,
        data = dir.join("data").display().to_string(),
    )
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let bench = std::env::current_exe().context("locating weir-bench")?;
    std::fs::create_dir_all(&args.work)?;
    let env = Env {
        weir: args
            .weir
            .canonicalize()
            .context("locating the weir binary")?,
        bench,
        work: args.work.canonicalize()?,
        rt: tokio::runtime::Runtime::new()?,
    };
    let load = Load {
        threads: args.threads,
        connections: args.connections,
        seconds: args.seconds,
    };
    let load_start = loadavg();
    println!("== start-up and idle memory");
    let startup = startup(&env)?;
    println!("== CSV writing");
    let csv = csvbench::measure(200_000, 7)?;
    println!(
        "   weir {:.0} rows/s, csv crate {:.0} rows/s",
        csv.weir_rows_per_s, csv.csv_rows_per_s
    );
    println!("== Parquet vs CSV chunks");
    let formats = formats::measure(200_000, 5)?;
    println!(
        "   CSV {:.0} ns/row {:.1} B/row, Parquet {:.0} ns/row {:.1} B/row",
        formats.csv_ns_per_row,
        formats.csv_bytes_per_row,
        formats.parquet_ns_per_row,
        formats.parquet_bytes_per_row
    );
    println!("== intake ({} rounds)", args.rounds);
    let ingest = ingest(&env, load, args.rounds)?;
    println!("== memory with a {}-row backlog", args.backlog);
    let memory = memory(&env, args.backlog)?;
    println!("== delivery to the emulator");
    let mut sizes = vec![1_000, 10_000, 100_000, args.backlog];
    sizes.sort_unstable();
    sizes.dedup();
    let delivery = delivery(&env, &sizes)?;
    println!("== the same batch with each Celonis API");
    let apis = apis(&env, 100_000, 3)?;
    println!("== intake against connections ({} rounds)", args.rounds);
    let sweep = growth::sweep(&env, args.threads, args.seconds, args.rounds)?;
    println!("== disk spool recovery against backlog");
    let recovery = growth::recovery(
        &env,
        &[100_000, 1_000_000, 10_000_000],
        5_000_000,
        load,
        args.rounds,
    )?;
    println!("== memory per queued row against row width");
    let widths = growth::widths(&env, &[5, 20, 100], 200_000)?;
    let plot_data = serde_json::json!({
        "sweep": &sweep,
        "recovery": &recovery,
        "widths": &widths,
        "delivery": delivery.iter().map(|d| serde_json::json!({
            "rows": d.rows, "upload_ms": d.upload_ms, "done_ms": d.done_ms,
            "upload_cpu_ms": d.upload_cpu.as_secs_f64() * 1000.0,
        })).collect::<Vec<_>>(),
    });
    std::fs::create_dir_all(&args.plots)?;
    let data = args.plots.join("growth.json");
    std::fs::write(&data, serde_json::to_vec_pretty(&plot_data)?)
        .with_context(|| format!("writing {}", data.display()))?;

    let report = Report {
        machine: Machine {
            date: args.date,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu: cpu_model(),
            load_start,
            load_end: loadavg(),
            wrk: args.wrk_version,
        },
        load,
        rounds: args.rounds,
        startup,
        csv,
        formats,
        ingest,
        memory,
        delivery,
        apis,
        sweep,
        recovery,
        widths,
    };
    let md = report.markdown();
    println!("\n{md}");
    std::fs::write(&args.out, md).with_context(|| format!("writing {}", args.out.display()))?;
    println!("written to {}", args.out.display());
    let missed = report.missed();
    if !missed.is_empty() {
        println!("targets missed: {}", missed.join("; "));
    }
    Ok(())
}

fn startup(env: &Env) -> anyhow::Result<StartupSet> {
    let one = |target: Target| -> anyhow::Result<Startup> {
        let mut times = Vec::new();
        let mut rss = Vec::new();
        for i in 0..3 {
            let proc = env.start(
                target,
                &format!("startup-{}-{i}", target.name()),
                None,
                None,
                false,
            )?;
            times.push(proc.ready_after);
            std::thread::sleep(Duration::from_millis(300));
            rss.push(proc.memory()?.rss);
        }
        times.sort();
        rss.sort();
        Ok(Startup {
            to_first_202: times[1],
            idle_rss: rss[1],
        })
    };
    Ok(StartupSet {
        limit: one(Target::Limit)?,
        memory: one(Target::Memory)?,
        disk: one(Target::Disk)?,
    })
}

fn ingest(env: &Env, load: Load, rounds: u32) -> anyhow::Result<Vec<Ingest>> {
    let warmup = Load { seconds: 1, ..load };
    let targets = [
        Target::Limit,
        Target::Memory,
        Target::Disk,
        Target::Nats,
        Target::Nats3,
    ];
    let bodies = load::bodies();
    // runs[body][target] = one result per round
    let mut runs = vec![vec![Vec::new(); targets.len()]; bodies.len()];
    for round in 0..rounds {
        for (b, body) in bodies.iter().enumerate() {
            // Each round starts with another server, so none always runs first or last.
            for k in 0..targets.len() {
                let t = (k + round as usize) % targets.len();
                let target = targets[t];
                let tag = format!("ingest-{}-{b}", target.name());
                let mut proc = env.start(target, &tag, None, None, true)?;
                let dir = env.work.join(&tag);
                load::wrk(&dir, proc.addr, body, warmup)?;
                let r = load::wrk(&dir, proc.addr, body, load)
                    .with_context(|| format!("{} with {}", target.name(), body.name))?;
                proc.check_alive()?;
                println!(
                    "   round {} {:<12} {:<26} {:>9.0} req/s  p50 {:>7.0} µs  p99 {:>7.0} µs",
                    round + 1,
                    target.name(),
                    body.name,
                    r.req_per_s,
                    r.p50_us,
                    r.p99_us
                );
                drop(proc);
                // Spools can be large; keep the disk free for the next runs.
                let _ = std::fs::remove_dir_all(&dir);
                runs[b][t].push(r);
            }
        }
    }
    Ok(bodies
        .iter()
        .zip(runs)
        .map(|(body, r)| Ingest {
            body: body.name,
            rows: body.rows,
            limit: median(&r[0]),
            memory: median(&r[1]),
            disk: median(&r[2]),
            nats: median(&r[3]),
            nats3: median(&r[4]),
        })
        .collect())
}

fn memory(env: &Env, backlog: u64) -> anyhow::Result<MemoryResults> {
    let first = (backlog / 10).max(1);
    let one = |target: Target| -> anyhow::Result<(Backlog, u64)> {
        let tag = format!("memory-{}", target.name());
        let mut proc = env.start(target, &tag, None, None, true)?;
        std::thread::sleep(Duration::from_millis(300));
        let idle = proc.memory()?;
        let raw_a = env.rt.block_on(load::fill(proc.addr, 0, first, 1000, 4))?;
        let at_first = proc.memory()?;
        let raw_b = env
            .rt
            .block_on(load::fill(proc.addr, first, backlog - first, 1000, 4))?;
        let at_full = proc.memory()?;
        proc.check_alive()?;
        println!(
            "   {:<12} idle {} MiB, {first} rows {} MiB, {backlog} rows {} MiB (peak {} MiB)",
            target.name(),
            idle.rss >> 20,
            at_first.rss >> 20,
            at_full.rss >> 20,
            at_full.peak >> 20
        );
        drop(proc);
        let _ = std::fs::remove_dir_all(env.work.join(&tag));
        Ok((
            Backlog {
                idle,
                at_first,
                at_full,
            },
            raw_a + raw_b,
        ))
    };
    let (mem, raw) = one(Target::Memory)?;
    let (disk, _) = one(Target::Disk)?;
    Ok(MemoryResults {
        first,
        rows: backlog,
        raw_bytes_per_row: raw as f64 / backlog as f64,
        memory: mem,
        disk,
    })
}

#[derive(serde::Deserialize)]
struct LastRun {
    rows: u64,
    outcome: String,
    error: Option<String>,
    duration_ms: u64,
}

/// Flushes pipeline `bench` through the admin API at `admin` and returns the run.
async fn flush_run(
    client: &reqwest::Client,
    admin: std::net::SocketAddr,
) -> anyhow::Result<LastRun> {
    let resp = client
        .post(format!("http://{admin}/admin/pipelines/bench/flush"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .error_for_status()?;
    Ok(resp.json().await?)
}

/// A `weir emulator` process in its own work directory `name`, answering, with its address.
fn emulator(env: &Env, name: &str) -> anyhow::Result<(Proc, std::net::SocketAddr)> {
    let dir = work_dir(&env.work, name)?;
    let emu_addr = free_addr()?;
    let listen = emu_addr.to_string();
    let db = dir.join("emulator.db").to_string_lossy().into_owned();
    let mut emulator = Proc::spawn(
        "emulator",
        &env.weir,
        &[
            "emulator",
            "--listen",
            &listen,
            "--database",
            &db,
            "--app-key",
            APP_KEY,
        ],
        emu_addr,
        &dir,
    )?;
    emulator.wait_for("/emulator/tables/none", 404)?;
    Ok((emulator, emu_addr))
}

fn delivery(env: &Env, sizes: &[u64]) -> anyhow::Result<Vec<Delivery>> {
    let (mut emulator, emu_addr) = emulator(env, "emulator")?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let mut out = Vec::new();
    for &n in sizes {
        let admin = free_addr()?;
        let tag = format!("delivery-{n}");
        let proc = env.start(Target::Memory, &tag, Some(admin), Some(emu_addr), true)?;
        std::thread::sleep(Duration::from_millis(300));
        let idle = proc.memory()?.rss;
        env.rt.block_on(load::fill(proc.addr, 0, n, 1000, 4))?;
        let before = proc.memory()?;
        let flush = |expect: &str| -> anyhow::Result<(LastRun, Memory, Duration)> {
            proc.reset_peak()?;
            let cpu = proc.cpu_time()?;
            let run = env.rt.block_on(flush_run(&client, admin))?;
            let cpu = proc.cpu_time()?.saturating_sub(cpu);
            if run.outcome != expect || run.rows != n {
                bail!(
                    "delivery of {n} rows: expected a {expect} run of {n} rows, got {} of {} ({})",
                    run.outcome,
                    run.rows,
                    run.error.as_deref().unwrap_or("")
                );
            }
            Ok((run, proc.memory()?, cpu))
        };
        // CSV + upload: the emulator refuses the execute call once, so the run ends right
        // after the upload (the job is deleted; the rows stay queued).
        env.rt.block_on(async {
            client
                .post(format!("http://{emu_addr}/emulator/faults"))
                .json(&serde_json::json!({"status": 500, "count": 1, "endpoint": "execute"}))
                .send()
                .await?
                .error_for_status()
        })?;
        let (upload, upload_mem, upload_cpu) = flush("failed")?;
        env.rt.block_on(async {
            client
                .delete(format!("http://{emu_addr}/emulator/faults"))
                .send()
                .await?
                .error_for_status()
        })?;
        // The whole run: create, upload, execute, poll until DONE.
        let (done, done_mem, _) = flush("delivered")?;
        println!(
            "   {n:>8} rows: CSV + upload {} ms ({} ms of weir's CPU), to DONE {} ms, RSS {} MiB before, peak {} MiB",
            upload.duration_ms,
            upload_cpu.as_millis(),
            done.duration_ms,
            before.rss >> 20,
            done_mem.peak.max(upload_mem.peak) >> 20
        );
        out.push(Delivery {
            rows: n,
            idle,
            upload_ms: upload.duration_ms,
            upload_cpu,
            done_ms: done.duration_ms,
            rss_before: before.rss,
            peak_upload: upload_mem.peak,
            peak_done: done_mem.peak,
        });
        drop(proc);
    }
    emulator.check_alive()?;
    Ok(out)
}

/// `weir-bench apis`: only the API comparison.
#[derive(clap::Args)]
pub struct ApisArgs {
    /// The weir binary under test (a release build).
    #[arg(long)]
    weir: PathBuf,
    /// Scratch directory for configs and logs.
    #[arg(long)]
    work: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    rows: u64,
    #[arg(long, default_value_t = 3)]
    reps: u32,
}

pub fn apis_only(args: ApisArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.work)?;
    let env = Env {
        weir: args
            .weir
            .canonicalize()
            .context("locating the weir binary")?,
        bench: std::env::current_exe().context("locating weir-bench")?,
        work: args.work.canonicalize()?,
        rt: tokio::runtime::Runtime::new()?,
    };
    let a = apis(&env, args.rows, args.reps)?;
    println!(
        "{} rows: data-push {:.0} rows/s ({} ms), continuous {:.0} rows/s ({} ms)",
        a.rows,
        a.rows_per_s(a.data_push_ms),
        a.data_push_ms,
        a.rows_per_s(a.continuous_ms),
        a.continuous_ms
    );
    Ok(())
}

/// The same append batch delivered with `api = "data-push"` (Parquet, the job polled until
/// DONE) and with `api = "continuous"` (one upload) to a `weir emulator` process, best of
/// `reps` runs each; each run refills the queue first.
fn apis(env: &Env, rows: u64, reps: u32) -> anyhow::Result<ApiDelivery> {
    let (mut emulator, emu_addr) = emulator(env, "apis-emulator")?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let best = |api: &str, lines: &str| -> anyhow::Result<u64> {
        let admin = free_addr()?;
        let proc = env.start_with(
            Target::Memory,
            &format!("apis-{api}"),
            Some(admin),
            Some(emu_addr),
            true,
            lines,
        )?;
        let mut best = u64::MAX;
        for rep in 0..reps {
            env.rt
                .block_on(load::fill(proc.addr, u64::from(rep) * rows, rows, 1000, 4))?;
            let run = env.rt.block_on(flush_run(&client, admin))?;
            if run.outcome != "delivered" || run.rows != rows {
                bail!(
                    "{api}: expected a delivered run of {rows} rows, got {} of {} ({})",
                    run.outcome,
                    run.rows,
                    run.error.as_deref().unwrap_or("")
                );
            }
            best = best.min(run.duration_ms);
        }
        println!("   {api:<10} {rows} rows: best run {best} ms");
        Ok(best)
    };
    let data_push_ms = best("data-push", "mode = \"DELTA\"\nfile_type = \"parquet\"")?;
    let continuous_ms = best("continuous", "api = \"continuous\"")?;
    emulator.check_alive()?;
    Ok(ApiDelivery {
        rows,
        data_push_ms,
        continuous_ms,
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

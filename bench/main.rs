//! weir-bench: the benchmark harness behind `bash bench/run.sh`. It measures weir
//! against baselines on the same machine in the same run — a bare axum server for intake,
//! the csv crate for CSV writing — and writes the ratios to BENCHMARKS.md.
//!
//! Built only with `--features bench`, so `cargo test` and CI never compile it.

// The harness reports progress and results on stdout.
#![allow(clippy::print_stdout)]
// A binary crate: `pub` marks what its modules share with each other.
#![allow(unreachable_pub)]
// clippy.toml bans std's Instant so weir's code uses tokio's (paused time in tests). The
// harness measures real wall time and never runs under paused time.
#![allow(clippy::disallowed_types)]

mod csvbench;
mod formats;
mod growth;
mod limit;
mod load;
mod procs;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "weir-bench",
    about = "weir's benchmark harness (see bench/run.sh)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The limit: a bare axum server whose handler reads the body and answers 202.
    Limit {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// Runs every benchmark and writes the table.
    Run(scenarios::RunArgs),
    /// Only the CSV writing comparison (quick to profile).
    Csv {
        #[arg(long, default_value_t = 200_000)]
        rows: usize,
        #[arg(long, default_value_t = 7)]
        reps: usize,
    },
    /// Only the Celonis API comparison: one batch delivered with data-push and continuous.
    Apis(scenarios::ApisArgs),
    /// CSV against Parquet chunks: bytes per row and CPU per row of writing them.
    Formats {
        #[arg(long, default_value_t = 200_000)]
        rows: usize,
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Limit { listen } => limit::serve(listen),
        Command::Run(args) => scenarios::run(args),
        Command::Apis(args) => scenarios::apis_only(args),
        Command::Csv { rows, reps } => csvbench::measure(rows, reps).map(|r| {
            println!(
                "weir write_chunks: {:.0} rows/s, csv crate: {:.0} rows/s, ratio {:.2}",
                r.weir_rows_per_s,
                r.csv_rows_per_s,
                r.ratio()
            );
        }),
        Command::Formats { rows, reps } => formats::measure(rows, reps).map(|r| {
            println!(
                "{} rows: CSV {:.0} ns/row, {:.1} bytes/row; Parquet {:.0} ns/row, {:.1} bytes/row; Parquet/CSV time {:.2}, bytes {:.2}",
                r.rows,
                r.csv_ns_per_row,
                r.csv_bytes_per_row,
                r.parquet_ns_per_row,
                r.parquet_bytes_per_row,
                r.parquet_ns_per_row / r.csv_ns_per_row,
                r.parquet_bytes_per_row / r.csv_bytes_per_row
            );
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where the harness keeps its configs, spools and logs.
pub fn work_dir(base: &std::path::Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = base.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

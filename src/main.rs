//! The `weir` command: parse the CLI, load the config, set up logging, run, map errors to
//! exit codes.

// The CLI is the one place that writes to stdout (`weir check`, `weir emulator query`).
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use weir::config::{Config, DEFAULT_CONFIG_PATH};

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "A self-hosted webhook buffer that batches rows into Celonis Data Push jobs"
)]
struct Cli {
    /// Log format: human-readable text or JSON lines for collectors. RUST_LOG sets the level.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// Config file [default: $WEIR_CONFIG, else config/weir.toml]
        #[arg(short, long, env = "WEIR_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Load and validate the config, print each pipeline's resolved settings (secrets masked).
    Check {
        /// Config file [default: $WEIR_CONFIG, else config/weir.toml]
        #[arg(short, long, env = "WEIR_CONFIG")]
        config: Option<PathBuf>,
        /// A payload file (JSON, or NDJSON for .ndjson/.jsonl) to dry-run against a
        /// pipeline: prints the rows, their verdicts, the table and the CSV as JSON.
        #[arg(long, requires = "pipeline")]
        sample: Option<PathBuf>,
        /// The pipeline the sample is for.
        #[arg(short, long, requires = "sample")]
        pipeline: Option<String>,
        /// Also contact each Celonis sink with its credentials and list its pool's jobs:
        /// prints `ok` or the exact problem per pipeline, exits 1 if any failed.
        #[arg(long, conflicts_with = "sample")]
        online: bool,
    },
    /// Backfill a file (.csv, .jsonl or .json) through a pipeline in runs of
    /// max_rows_per_run, with the pipeline's checks, columns and sink; --resume continues
    /// a push that stopped, without sending a row twice.
    Push {
        /// Config file [default: $WEIR_CONFIG, else config/weir.toml]
        #[arg(short, long, env = "WEIR_CONFIG")]
        config: Option<PathBuf>,
        /// The pipeline to push through.
        #[arg(short, long)]
        pipeline: String,
        /// Continue the push of this file that stopped (its state is in
        /// {data_dir}/push/{pipeline}-{hash}/).
        #[arg(long)]
        resume: bool,
        /// Failed runs in a row before giving up (the push can then be resumed).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
        max_failures: u32,
        /// Print the summary as JSON instead of lines.
        #[arg(long)]
        json: bool,
        /// The file: CSV with a header line, JSON Lines, or a JSON array of objects.
        file: PathBuf,
    },
    /// Run the built-in Celonis Data Push emulator on its own, or query its tables.
    #[command(args_conflicts_with_subcommands = true)]
    Emulator {
        #[command(flatten)]
        run: EmulatorArgs,
        #[command(subcommand)]
        command: Option<EmulatorCommand>,
    },
}

#[derive(clap::Args)]
struct EmulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8900")]
    listen: std::net::SocketAddr,
    /// SQLite file holding the pushed tables.
    #[arg(long, default_value = "data/emulator.db")]
    database: PathBuf,
    /// Accept only this application key (`Authorization: AppKey …`); without it any key is accepted.
    #[arg(long, env = "WEIR_EMULATOR_APP_KEY")]
    app_key: Option<String>,
    /// A data pool id that exists (repeatable); with any, other pools answer 404. Without,
    /// every UUID names a pool.
    #[arg(long = "pool", value_name = "UUID", value_parser = parse_pool)]
    pools: Vec<String>,
    /// Also serve a Dynamics 365 FinOps dequeue/ack API (`/api/connector/dequeue/{id}`,
    /// `/api/connector/ack/{id}`) with generated zip packages.
    #[arg(long)]
    finops: bool,
    /// Sample packages queued at start with --finops.
    #[arg(long, default_value_t = 1, requires = "finops")]
    finops_packages: u32,
}

/// A data pool id: a UUID, lowercase.
fn parse_pool(text: &str) -> Result<String, String> {
    if uuid::Uuid::parse_str(text).is_ok() {
        Ok(text.to_lowercase())
    } else {
        Err(format!("{text:?} is not a data pool id (a UUID)"))
    }
}

#[derive(Subcommand)]
enum EmulatorCommand {
    /// Run a read-only SQL query against the emulator's tables and print the rows.
    Query {
        /// e.g. "SELECT * FROM pushCSV"
        sql: String,
        /// SQLite file holding the pushed tables.
        #[arg(long, default_value = "data/emulator.db")]
        database: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A push shows its own progress: only warnings and errors are logged by default.
    let default_level = match cli.command {
        Command::Push { .. } => "warn",
        _ => "info,tokio_cron_scheduler=warn",
    };
    init_tracing(cli.log_format, default_level);
    match cli.command {
        Command::Check {
            config,
            sample,
            pipeline,
            online,
        } => match (sample, pipeline) {
            (Some(sample), Some(pipeline)) => check_sample(config, &sample, &pipeline),
            _ => check(config, online),
        },
        Command::Push {
            config,
            pipeline,
            resume,
            max_failures,
            json,
            file,
        } => push(
            config,
            weir::push::Options {
                pipeline,
                file,
                resume,
                max_failures,
            },
            json,
        ),
        Command::Emulator {
            command: Some(EmulatorCommand::Query { sql, database }),
            ..
        } => query(&database, &sql),
        Command::Emulator { run, command: None } => match emulator(run) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("weir: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config } => match serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("weir: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colours only on a terminal: a journal, a file or a collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn config_path(arg: Option<PathBuf>) -> PathBuf {
    arg.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

fn load(path: &std::path::Path) -> Result<Config, String> {
    let env: HashMap<String, String> = std::env::vars().collect();
    Config::from_file(path, &env).map_err(|e| format!("{}: invalid config:\n{e}", path.display()))
}

fn check(config: Option<PathBuf>, online: bool) -> ExitCode {
    let path = config_path(config);
    let config = match load(&path) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", weir::config::describe(&config));
    if !online {
        println!("{}: ok", path.display());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("weir: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reports = runtime.block_on(weir::sink::probe::probe_all(&config));
    print!("{}", weir::sink::probe::render(&reports));
    let failed = reports.iter().filter(|r| r.failed()).count();
    if failed == 0 {
        println!("{}: ok", path.display());
        ExitCode::SUCCESS
    } else {
        println!(
            "{}: {failed} of {} pipelines failed the online check",
            path.display(),
            reports.len()
        );
        ExitCode::FAILURE
    }
}

fn check_sample(config: Option<PathBuf>, sample: &std::path::Path, pipeline: &str) -> ExitCode {
    let path = config_path(config);
    let config = match load(&path) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    match weir::app::dry_run_sample(&config, pipeline, sample) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weir: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn push(config: Option<PathBuf>, options: weir::push::Options, json: bool) -> ExitCode {
    let path = config_path(config);
    let config = match load(&path) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("weir: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut watch = weir::push::watch::for_stderr();
    match runtime.block_on(weir::push::push(&config, &options, watch.as_mut())) {
        Ok(summary) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&summary).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(summary) => {
            print!("{}", summary.render());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weir: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    let path = config_path(config);
    let config = load(&path).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let app = weir::app::App::start(config).await?;
        weir::shutdown::signal().await;
        app.shutdown().await;
        Ok(())
    })
}

fn emulator(args: EmulatorArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let config = weir::emulator::EmulatorConfig {
            app_keys: args.app_key.into_iter().collect(),
            database: Some(args.database),
            pools: (!args.pools.is_empty()).then_some(args.pools),
            finops: args.finops.then_some(args.finops_packages),
            ..Default::default()
        };
        let stage = weir::shutdown::Stage::new();
        weir::emulator::start(config, args.listen, stage.tracker(), stage.token()).await?;
        weir::shutdown::signal().await;
        stage.stop().await;
        Ok(())
    })
}

fn query(database: &std::path::Path, sql: &str) -> ExitCode {
    if !database.exists() {
        eprintln!(
            "weir: no emulator database at {} (run `weir serve` or `weir emulator` first, or pass --database)",
            database.display()
        );
        return ExitCode::FAILURE;
    }
    match weir::emulator::query(database, sql) {
        Ok(rows) => {
            print!("{}", weir::emulator::render_table(&rows));
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("weir: {message}");
            ExitCode::FAILURE
        }
    }
}

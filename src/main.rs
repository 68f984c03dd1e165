//! The `landfall` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use landfall::config::Config;
use landfall::demo::{self, DemoOptions};
use landfall::merge::Merger;
use landfall::metrics::Metrics;
use landfall::service::Service;
use landfall::sink::BigQuery;

#[derive(Parser)]
#[command(name = "landfall", version, about = "Exactly-once CDC from Kafka (AWS DMS JSON) into BigQuery")]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "LANDFALL_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge (and the periodic merge) until SIGTERM or SIGINT.
    Run {
        #[arg(long, short, env = "LANDFALL_CONFIG")]
        config: PathBuf,
    },
    /// Check a config file without connecting to anything.
    Validate {
        #[arg(long, short, env = "LANDFALL_CONFIG")]
        config: PathBuf,
    },
    /// Merge log tables into final tables now.
    Merge {
        #[arg(long, short, env = "LANDFALL_CONFIG")]
        config: PathBuf,
        /// Ignore the watermark and merge the whole log.
        #[arg(long)]
        full: bool,
        /// Only this final table.
        #[arg(long)]
        table: Option<String>,
    },
    /// Inspect the dead letters recorded in the WAL (the service must be stopped).
    Dlq {
        #[arg(long, short, env = "LANDFALL_CONFIG")]
        config: PathBuf,
    },
    /// Run the whole pipeline on local parts and verify the result.
    Demo {
        /// BigQuery REST endpoint of the local emulator (`make demo` starts one).
        #[arg(long, env = "LANDFALL_BQ_ENDPOINT")]
        endpoint: String,
        #[arg(long, env = "LANDFALL_BQ_PROJECT", default_value = "landfall-local")]
        project: String,
        #[arg(long, default_value = "landfall_demo")]
        dataset: String,
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        /// Full-load rows per table.
        #[arg(long, default_value_t = 1000)]
        load_rows: usize,
        /// CDC changes after the full load.
        #[arg(long, default_value_t = 6000)]
        changes: usize,
        #[arg(long, default_value_t = 0.05)]
        duplicate_rate: f64,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
    },
}

/// Logs go to stderr; `LANDFALL_LOG` takes an env-filter (e.g. `debug`).
fn init_logging(json: bool, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LANDFALL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
}

async fn main_result(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { config } => {
            let cfg = Config::load(&config)?;
            println!("{}: valid ({} table(s), topics {:?})", config.display(), cfg.tables.len(), cfg.kafka.topics);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config } => {
            let cfg = Arc::new(Config::load(&config)?);
            tracing::info!(config = ?cfg, "starting");
            let service = Service::start(cfg).await?;
            let summary = service.metrics.clone();
            tokio::select! {
                _ = shutdown_signal() => tracing::info!("signal received; shutting down"),
                _ = wait_finished(&service) => tracing::error!("the pipeline stopped on its own"),
            }
            let stopped = service.stop().await?;
            summary.log_summary();
            tracing::info!(?stopped, "stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Merge { config, full, table } => {
            let cfg = Arc::new(Config::load(&config)?);
            let bq = BigQuery::connect(&cfg.bigquery).await?;
            let (_tx, rx) = tokio::sync::watch::channel(false);
            let merger = Merger::new(bq, cfg.clone(), Arc::new(Metrics::default()), rx);
            let mut failed = false;
            for t in cfg.tables.iter().filter(|t| table.as_ref().is_none_or(|n| n == &t.final_table)) {
                match merger.merge_table(t, full).await {
                    Ok(r) => println!("{}: {} rows changed", r.table, r.affected_rows),
                    Err(e) => {
                        eprintln!("{e}");
                        failed = true;
                    }
                }
            }
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::Dlq { config } => {
            let cfg = Config::load(&config)?;
            let wal = landfall::log::Wal::open(&cfg.wal.path)?;
            let mut n = 0;
            for d in wal.dead_letters() {
                let d = d?;
                n += 1;
                println!("{}/{}@{}\t{} bytes\t{}", d.topic, d.partition, d.offset, d.payload_len, d.reason);
            }
            println!("{n} dead letter(s)");
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { endpoint, project, dataset, seed, load_rows, changes, duplicate_rate, partitions } => {
            let ok = demo::run(DemoOptions { endpoint, project, dataset, seed, load_rows, changes, duplicate_rate, partitions }).await?;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

async fn wait_finished(service: &Service) {
    while !service.is_finished() {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own report; its logs are only warnings unless asked.
    let default = if matches!(cli.command, Command::Demo { .. }) { "warn" } else { "info,librdkafka=warn,rdkafka=warn" };
    init_logging(cli.log_json, default);
    match main_result(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("landfall: {e:#}");
            ExitCode::from(2)
        }
    }
}

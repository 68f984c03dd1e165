//! The `landfall` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use landfall::bench;
use landfall::config::Config;
use landfall::demo::{self, DemoOptions};
use landfall::dlq;
use landfall::merge::Merger;
use landfall::metrics::Metrics;
use landfall::mock_kafka;
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
enum DlqAction {
    /// One line per dead letter: id, stage, size, replayed or not, reason.
    List,
    /// Everything recorded of a dead letter: its message (key, headers,
    /// value), stage, reason and refused row. By id
    /// (`topic/partition@offset#id`), or by position (`topic/partition@offset`)
    /// for every letter of that message.
    Show { id: String },
    /// Re-drive dead letters through the normal path after a fix: their
    /// messages are decoded again with the current config (a row BigQuery
    /// refused whose message was not kept is shipped again as it was built).
    Replay {
        /// Ids or positions to replay (see `show`); none with --all.
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum DdlAction {
    /// Let the merge of a final table go on after its source table was
    /// dropped (and re-created, or the config fixed): the changes after the
    /// drop are merged from the next merge on. Safe while the service runs.
    Resume {
        /// The final table, as in its `[[tables]]` entry.
        #[arg(long)]
        table: String,
    },
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
    /// Act on source DDL (docs/design.md, "DDL control records").
    Ddl {
        #[arg(long, short, env = "LANDFALL_CONFIG")]
        config: PathBuf,
        #[command(subcommand)]
        action: DdlAction,
    },
    /// Inspect dead letters and re-drive them after a fix (the service must be stopped).
    Dlq {
        #[arg(long, short, env = "LANDFALL_CONFIG")]
        config: PathBuf,
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Crash-recovery drill: kill -9 the bridge at random moments and at every
    /// failpoint, take over with a second bridge, then verify (feature `drill`).
    #[cfg(feature = "drill")]
    Drill {
        /// The BigQuery emulator to use; unset: the drill starts one itself
        /// (with this checkout's scripts/bq-emulator.sh).
        #[arg(long, env = "LANDFALL_BQ_ENDPOINT")]
        endpoint: Option<String>,
        #[arg(long, env = "LANDFALL_BQ_PROJECT", default_value = "landfall-local")]
        project: String,
        /// Replays a run exactly; random if unset (printed either way).
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, default_value_t = 50)]
        rounds: usize,
        /// Skip the failpoint rounds.
        #[arg(long)]
        no_failpoints: bool,
        /// Skip the two-bridge takeover.
        #[arg(long)]
        no_takeover: bool,
        #[arg(long, default_value_t = 300)]
        load_rows: usize,
        #[arg(long, default_value_t = 5000)]
        changes: usize,
        #[arg(long, default_value_t = 0.05)]
        duplicate_rate: f64,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Simulate DMS's default stream (no transaction details, ordered by
        /// timestamp) instead of one with transaction details.
        #[arg(long)]
        no_transaction_details: bool,
        /// Keep config, WALs and logs here (default: a temp dir, kept on failure).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Print one JSON object instead of the human report.
        #[arg(long)]
        json: bool,
    },
    /// Serve a mock Kafka cluster for drills and benchmarks (internal).
    #[command(hide = true)]
    MockKafka {
        /// `name` or `name:partitions`; repeatable.
        #[arg(long, required = true)]
        topic: Vec<String>,
        /// Partitions of a topic given without a count.
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// The broker's group.initial.rebalance.delay.ms (default 3000).
        #[arg(long)]
        rebalance_delay_ms: Option<i32>,
        #[arg(long)]
        ready_file: PathBuf,
    },
    /// Measure throughput, latency, memory, recovery and MERGE cost on local
    /// parts (docs/performance.md). `make bench` runs it against the emulator.
    Bench {
        #[command(flatten)]
        opts: bench::BenchOptions,
        /// Seconds-long phases with small volumes, to check the harness.
        #[arg(long)]
        quick: bool,
        /// Print the results as one JSON object instead of the report.
        #[arg(long)]
        json: bool,
        /// Also write the JSON object to this file.
        #[arg(long)]
        out: Option<PathBuf>,
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
        /// Run the stream with DMS transaction details, without (DMS's
        /// default), or both one after the other.
        #[arg(long, value_enum, default_value_t = Details::Both)]
        transaction_details: Details,
    },
}

/// Whether simulated streams carry DMS transaction details.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Details {
    On,
    Off,
    Both,
}

/// Logs go to stderr; `LANDFALL_LOG` takes an env-filter (e.g. `debug`).
fn init_logging(json: bool, default: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("LANDFALL_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// SIGTERM and SIGINT, registered when created (so a signal that arrives
/// while the service is still starting is not lost, nor fatal).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
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
            // Signals are caught from here on, also while starting up.
            let mut signals = Signals::install()?;
            // Starting talks to BigQuery (tables) and may wait a request
            // timeout on an unreachable one: a signal meanwhile ends the
            // start at once. Nothing has been consumed or acknowledged yet,
            // and every WAL write so far was durable on its own.
            let service = tokio::select! {
                started = Service::start(cfg) => started?,
                _ = signals.recv() => {
                    tracing::info!("signal received while starting; nothing was consumed: exiting");
                    std::process::exit(0);
                }
            };
            let summary = service.metrics.clone();
            tokio::select! {
                _ = signals.recv() => tracing::info!("signal received; shutting down"),
                _ = wait_finished(&service) => tracing::error!("the pipeline stopped on its own"),
            }
            let stopped = service.stop().await?;
            summary.log_summary();
            tracing::info!(?stopped, "stopped");
            // Exit now rather than through the runtime's drop, which would
            // wait for blocking work that may hang on an unreachable peer
            // (closing the Kafka consumer): everything acknowledged is durable.
            std::process::exit(if stopped == landfall::pipeline::Stopped::Abandoned { 3 } else { 0 });
        }
        Command::Merge { config, full, table } => {
            let cfg = Arc::new(Config::load(&config)?);
            let bq = BigQuery::connect(&cfg.bigquery).await?;
            let (_tx, rx) = tokio::sync::watch::channel(false);
            let merger = Merger::new(bq, cfg.clone(), Arc::new(Metrics::default()), rx);
            let mut failed = false;
            for t in cfg.tables.iter().filter(|t| table.as_ref().is_none_or(|n| n == &t.final_table)) {
                match merger.merge_table(t, full).await {
                    Ok(r) if r.paused_by_drop.is_some() => {
                        eprintln!(
                            "{}: PAUSED: its source table was dropped ({} rows deleted now); run `landfall ddl resume --table {}` once it is re-created or removed",
                            r.table, r.truncated_rows, r.table
                        );
                        failed = true;
                    }
                    Ok(r) => println!("{}: {} rows changed", r.table, r.affected_rows),
                    Err(e) => {
                        eprintln!("{e}");
                        failed = true;
                    }
                }
            }
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::Ddl { config, action: DdlAction::Resume { table } } => {
            let cfg = Arc::new(Config::load(&config)?);
            let Some(t) = cfg.tables.iter().find(|t| t.final_table == table) else {
                eprintln!("no [[tables]] entry has final_table = {table:?}");
                return Ok(ExitCode::FAILURE);
            };
            let bq = BigQuery::connect(&cfg.bigquery).await?;
            let (_tx, rx) = tokio::sync::watch::channel(false);
            let merger = Merger::new(bq, cfg.clone(), Arc::new(Metrics::default()), rx);
            match merger.resume_table(t).await? {
                Some(dropped) => println!("{table}: resumed after the drop at {dropped}; the next merge applies the changes after it"),
                None => println!("{table}: not paused (no drop-table waits for a resume)"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { config, action } => {
            let cfg = Config::load(&config)?;
            let wal = landfall::log::Wal::open(&cfg.wal.path)?;
            match action {
                DlqAction::List => {
                    let mut n = 0;
                    for d in wal.dead_letters() {
                        let d = d?;
                        n += 1;
                        let state = if wal.replayed_at(&d)?.is_some() { "replayed" } else { "open" };
                        let size = d.message.as_ref().map_or_else(|| "message not kept".to_owned(), |m| format!("{} bytes", m.value_len));
                        println!("{}\t{}\t{size}\t{state}\t{}", dlq::id(&d), d.stage.name(), d.reason);
                    }
                    println!("{n} dead letter(s)");
                }
                DlqAction::Show { id } => {
                    let found: Vec<_> =
                        wal.dead_letters().filter(|d| d.as_ref().map_or(true, |d| dlq::names(&id, d))).collect::<Result<_, _>>()?;
                    anyhow::ensure!(!found.is_empty(), "no dead letter {id} (see `landfall dlq list`)");
                    for d in found {
                        show_dead_letter(&wal, &d)?;
                    }
                }
                DlqAction::Replay { ids, all } => {
                    anyhow::ensure!(all || !ids.is_empty(), "name dead letters to replay, or pass --all");
                    let bq = BigQuery::connect(&cfg.bigquery).await?;
                    bq.ensure_all(&cfg).await?;
                    let metrics = Arc::new(Metrics::default());
                    let (_abort, rx) = tokio::sync::watch::channel(false);
                    let sink: Arc<dyn landfall::sink::Sink> =
                        Arc::new(landfall::sink::BigQuerySink::new(bq, &cfg.bigquery, rx, metrics.clone()));
                    let results = dlq::replay(&cfg, &wal, &sink, &metrics, |d| all || ids.iter().any(|n| dlq::names(n, d))).await?;
                    let mut failing = 0;
                    for (id, r) in &results {
                        println!("{id}\t{r:?}");
                        failing += usize::from(matches!(r, dlq::Replayed::StillFailing { .. }));
                    }
                    println!("{} replayed, {failing} still failing", results.len() - failing);
                    if failing > 0 {
                        return Ok(ExitCode::FAILURE);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::MockKafka { topic, partitions, rebalance_delay_ms, ready_file } => {
            let topics =
                topic.iter().map(|t| mock_kafka::parse_topic(t, partitions)).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?;
            mock_kafka::serve(&mock_kafka::ServeOptions { topics, rebalance_delay_ms }, &ready_file)?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "drill")]
        Command::Drill {
            endpoint,
            project,
            seed,
            rounds,
            no_failpoints,
            no_takeover,
            load_rows,
            changes,
            duplicate_rate,
            partitions,
            no_transaction_details,
            work_dir,
            json,
        } => {
            let seed = seed.unwrap_or_else(rand::random);
            let emulator = match endpoint {
                Some(_) => None,
                None => Some(landfall::drill::emulator::Emulator::start().await?),
            };
            let endpoint = endpoint.or_else(|| emulator.as_ref().map(|e| e.endpoint.clone())).unwrap_or_default();
            if !json {
                println!("landfall drill: seed {seed} (replay with --seed {seed}), {rounds} kill rounds");
            }
            let report = landfall::drill::run(landfall::drill::DrillOptions {
                endpoint,
                project,
                seed,
                rounds,
                failpoints: !no_failpoints,
                takeover: !no_takeover,
                load_rows,
                changes,
                duplicate_rate,
                partitions,
                transaction_details: !no_transaction_details,
                work_dir,
                exe: std::env::current_exe()?,
            })
            .await?;
            drop(emulator);
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.table_report);
                println!(
                    "\nkills: {} (failpoints hit: {:?}, missed: {:?}), takeover: {}, graceful shutdown: {}",
                    report.kills, report.failpoints_hit, report.failpoints_missed, report.takeover, report.graceful_shutdown_ok
                );
                println!(
                    "changes: {} ({} messages with duplicates); duplicates absorbed by the WAL: {}, by the MERGE: {}",
                    report.changes_produced,
                    report.messages_produced,
                    report.duplicates_absorbed_by_wal,
                    report.duplicates_absorbed_by_merge
                );
                println!(
                    "lost: {}, duplicate rows in final tables: {}, elapsed {:.0}s",
                    report.lost, report.duplicate_rows_in_final, report.elapsed_seconds
                );
                println!("{} (seed {seed}; work files: {})", if report.verified { "VERIFIED" } else { "FAILED" }, report.work_dir);
            }
            Ok(if report.verified { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Bench { mut opts, quick, json, out } => {
            opts.exe = std::env::current_exe()?;
            if quick {
                opts = opts.quick();
            }
            let report = bench::run(opts).await?;
            let object = serde_json::to_string(&report)?;
            if let Some(path) = out {
                std::fs::write(&path, format!("{object}\n"))?;
                eprintln!("bench: results written to {}", path.display());
            }
            if json {
                println!("{object}");
            } else {
                print!("{}", report.human());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { endpoint, project, dataset, seed, load_rows, changes, duplicate_rate, partitions, transaction_details } => {
            let transaction_details = match transaction_details {
                Details::Both => None,
                Details::On => Some(true),
                Details::Off => Some(false),
            };
            let ok = demo::run(DemoOptions {
                endpoint,
                project,
                dataset,
                seed,
                load_rows,
                changes,
                duplicate_rate,
                partitions,
                transaction_details,
            })
            .await?;
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
    let quiet = match &cli.command {
        Command::Demo { .. } | Command::Bench { .. } => true,
        #[cfg(feature = "drill")]
        Command::Drill { .. } => true,
        Command::MockKafka { .. } => true,
        _ => false,
    };
    let default = if quiet { "warn" } else { "info,librdkafka=warn,rdkafka=warn" };
    init_logging(cli.log_json, default);
    match main_result(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("landfall: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Prints one dead letter for `landfall dlq show`.
fn show_dead_letter(wal: &landfall::log::Wal, d: &landfall::log::DeadLetter) -> anyhow::Result<()> {
    let text = |bytes: &[u8]| match std::str::from_utf8(bytes) {
        Ok(t) => t.to_owned(),
        Err(_) => format!("(not UTF-8; first bytes) {:02x?}", &bytes[..bytes.len().min(256)]),
    };
    println!("id: {}\nstage: {}\nreason: {}\nrecorded at (ms): {}", dlq::id(d), d.stage.name(), d.reason, d.at_ms);
    if let Some(at) = wal.replayed_at(d)? {
        println!("replayed at (ms): {at}");
    }
    match &d.message {
        None => println!("message: not kept (a row refused when re-shipped after a restart)"),
        Some(m) => {
            println!("message timestamp (ms): {}", m.timestamp_ms.map_or("none".into(), |t| t.to_string()));
            println!("message key: {}", m.key.as_deref().map_or("none".into(), text));
            for (name, v) in &m.headers {
                println!("header {name}: {}", v.as_deref().map_or("null".into(), text));
            }
            if m.has_value {
                println!("value: {} bytes, blake3 {}", m.value_len, blake3::Hash::from(m.value_hash).to_hex());
                println!("{}", text(&m.value_prefix));
            } else {
                println!("value: none (a Kafka tombstone)");
            }
        }
    }
    if let Some(r) = &d.row {
        println!("refused row for {}:\n{}", if r.table.is_empty() { "(table not recorded)" } else { &r.table }, text(&r.json));
    }
    println!();
    Ok(())
}

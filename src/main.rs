//! The `landfall` command line: a thin layer over the library, one library
//! call per subcommand; the reports print themselves.

/// jemalloc, as Vector and TiKV use: the bridge allocates and frees a few
/// buffers per change, and glibc's malloc spent about a third of the CPU on
/// them (docs/performance.md, "Profile").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's compiled-in options, read before `main` runs
/// (docs/performance.md, "Allocator arenas and decay"):
/// - `narenas:1` instead of four arenas per CPU. Rows are decoded on
///   blocking-pool threads and freed on the runtime's workers once landed; an
///   arena per thread kept each one's freed pages resident. Each thread still
///   allocates from its own cache, so the arena's lock is taken only to refill
///   or flush it.
/// - `dirty_decay_ms:1000` instead of 10 s: freed pages go back to the kernel
///   after a second, not ten.
///
/// Over the bench's 1M backlog this took the peak RSS from 222-227 MB to
/// about 185 MB at the same throughput. Operators can override it:
/// `_RJEM_MALLOC_CONF` in the environment is read after this string.
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: Option<&'static u8> = Some(&b"narenas:1,dirty_decay_ms:1000\0"[0]);

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use landfall::config::Config;
use landfall::dead_letter;
#[cfg(feature = "harness")]
use landfall::harness::{bench, demo, mock_kafka};
use landfall::merge::command as merge_command;
use landfall::service;

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
enum DeadLetterAction {
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
enum TablesAction {
    /// Write the [[tables]] section from an export of the source's catalog
    /// (CSV or JSON of the query in docs/tables-import.md) to stdout.
    Import {
        /// The export file.
        #[arg(long)]
        from: PathBuf,
        /// The source engine: mysql (also Aurora MySQL) or postgres (also Aurora PostgreSQL).
        #[arg(long)]
        engine: landfall::catalog::Engine,
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
    /// Where the bridge stands, per partition and table: asks the running
    /// service (observability.listen), else reads the WAL and Kafka.
    Status {
        #[arg(long, short, env = "LANDFALL_CONFIG")]
        config: PathBuf,
        /// Print one JSON object instead of the tables.
        #[arg(long)]
        json: bool,
    },
    /// Generate configuration from the source database's catalog.
    Tables {
        #[command(subcommand)]
        action: TablesAction,
    },
    /// Check a config file without connecting to anything.
    Validate {
        #[arg(long, short, env = "LANDFALL_CONFIG")]
        config: PathBuf,
    },
    /// Connect to Kafka and BigQuery and print a checklist of what works
    /// (DNS, TCP, TLS, authentication, topics, group; credentials, dataset,
    /// tables, permissions). Changes nothing. Exits 1 if any line fails.
    Check {
        #[arg(long, short, env = "LANDFALL_CONFIG")]
        config: PathBuf,
        /// Print one JSON object instead of the checklist.
        #[arg(long)]
        json: bool,
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
        action: DeadLetterAction,
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
    #[cfg(feature = "harness")]
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
    #[cfg(feature = "harness")]
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
    #[cfg(feature = "harness")]
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
        #[arg(long, value_enum, default_value_t = demo::Details::Both)]
        transaction_details: demo::Details,
    },
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

fn status(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn main_result(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { config } => {
            let cfg = Config::load(&config)?;
            println!("{}: valid ({} table(s), topics {:?})", config.display(), cfg.tables.len(), cfg.kafka.topics);
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config, json } => {
            let report = landfall::check::run(&Config::load(&config)?).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(status(report.ok))
        }
        Command::Run { config } => {
            // Whatever the service creates (the WAL's files, sled's later
            // snapshots) is its owner's alone (docs/security.md).
            #[cfg(unix)]
            // SAFETY: umask only sets the process's file mode mask; it cannot fail.
            unsafe {
                libc::umask(0o077);
            }
            let cfg = Arc::new(Config::load(&config)?);
            tracing::info!(config = ?cfg, "starting");
            let end = service::run_until_signal(cfg).await?;
            // Exit now rather than through the runtime's drop, which would
            // wait for blocking work that may hang on an unreachable peer
            // (closing the Kafka consumer): everything acknowledged is durable.
            std::process::exit(end.exit_code());
        }
        Command::Tables { action: TablesAction::Import { from, engine } } => {
            let text = std::fs::read_to_string(&from).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", from.display()))?;
            print!("{}", landfall::catalog::import(engine, &text)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config, json } => {
            let report = landfall::status::read(&Config::load(&config)?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report.status)?);
            } else {
                print!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Merge { config, full, table } => {
            let run = merge_command::merge_now(&Arc::new(Config::load(&config)?), full, table.as_deref()).await?;
            run.print();
            Ok(status(!run.failed()))
        }
        Command::Ddl { config, action: DdlAction::Resume { table } } => {
            match merge_command::resume(&Arc::new(Config::load(&config)?), &table).await {
                Ok(resumed) => println!("{resumed}"),
                Err(e @ merge_command::ResumeError::NoSuchTable(_)) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e.into()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { config, action } => {
            let cfg = Config::load(&config)?;
            match action {
                DeadLetterAction::List => print!("{}", dead_letter::Listing::read(&landfall::wal::Wal::open(&cfg.wal.path)?)?),
                DeadLetterAction::Show { id } => print!("{}", dead_letter::Shown::read(&landfall::wal::Wal::open(&cfg.wal.path)?, &id)?),
                DeadLetterAction::Replay { ids, all } => {
                    let report = dead_letter::replay_command(&cfg, &ids, all).await?;
                    print!("{report}");
                    return Ok(status(report.still_failing() == 0));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "harness")]
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
            if !json {
                println!("landfall drill: seed {seed} (replay with --seed {seed}), {rounds} kill rounds");
            }
            let report = landfall::harness::drill::run(landfall::harness::drill::DrillOptions {
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
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{report}");
            }
            Ok(status(report.verified))
        }
        #[cfg(feature = "harness")]
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
        #[cfg(feature = "harness")]
        Command::Demo { endpoint, project, dataset, seed, load_rows, changes, duplicate_rate, partitions, transaction_details } => {
            let ok = demo::run(demo::DemoOptions {
                endpoint,
                project,
                dataset,
                seed,
                load_rows,
                changes,
                duplicate_rate,
                partitions,
                transaction_details: transaction_details.runs(),
            })
            .await?;
            Ok(status(ok))
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The harness commands print their own reports; their logs are only
    // warnings unless asked.
    let quiet = match &cli.command {
        #[cfg(feature = "harness")]
        Command::Demo { .. } | Command::Bench { .. } | Command::MockKafka { .. } => true,
        #[cfg(feature = "drill")]
        Command::Drill { .. } => true,
        _ => false,
    };
    let default = if matches!(cli.command, Command::Check { .. }) {
        // The checklist says what failed; librdkafka's retries would only
        // repeat it.
        "error,librdkafka=off,rdkafka=off"
    } else if quiet {
        "warn"
    } else {
        "info,librdkafka=warn,rdkafka=warn"
    };
    init_logging(cli.log_json, default);
    match main_result(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("landfall: {e:#}");
            ExitCode::from(2)
        }
    }
}

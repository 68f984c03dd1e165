//! Crash-recovery drills and fault injection (cargo feature `drill`).
//!
//! `landfall drill` proves the exactly-once claim the way an operator would:
//! a mock Kafka cluster runs in its own long-lived process ([`kafka`]) so the
//! bridge can die without taking the broker with it; a seeded simulated
//! source database publishes DMS messages with duplicates; the bridge runs as
//! a child process and is killed with SIGKILL at random moments, then at
//! every [`crate::failpoint`] in turn; two bridges share the group and one is
//! killed so the other takes over; finally a bridge catches up and is stopped
//! with SIGTERM (it must exit 0). Then the tables are merged and compared with
//! the model row for row. The seed replays a run exactly.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::config::Config;
use crate::failpoint;
use crate::harness::demo::demo_config_toml;
use crate::harness::mock_kafka as kafka;
use crate::harness::sim::{verify, PositionFormat, SimMessage, SimOptions, Simulator};
use crate::merge::Merger;
use crate::metrics::Metrics;
use crate::pipeline::{committed_offsets, COUNTER_DUPLICATES_ABSORBED};
use crate::sink::client::cell;
use crate::sink::BigQuery;
use crate::wal::Wal;

pub struct DrillOptions {
    /// The BigQuery emulator to use; none: the drill starts one for the run.
    pub endpoint: Option<String>,
    pub project: String,
    pub seed: u64,
    /// Random SIGKILL rounds.
    pub rounds: usize,
    /// Also kill at every failpoint.
    pub failpoints: bool,
    /// Also run two bridges in one group and kill one.
    pub takeover: bool,
    pub load_rows: usize,
    pub changes: usize,
    pub duplicate_rate: f64,
    pub partitions: i32,
    /// Whether the simulated stream carries DMS transaction details (then
    /// ordered by MySQL binlog position); without them, DMS's default
    /// (ordered by timestamp, identified by Kafka position).
    pub transaction_details: bool,
    /// Where the work files go (config, WALs, logs); a temp dir if unset.
    pub work_dir: Option<PathBuf>,
    /// The `landfall` binary to run as the bridge (built with `drill`).
    pub exe: PathBuf,
}

/// The machine-readable result (`landfall drill --json`).
#[derive(Debug, Serialize, Default)]
pub struct DrillReport {
    pub seed: u64,
    pub rounds: usize,
    pub kills: usize,
    pub failpoints_hit: Vec<String>,
    pub failpoints_missed: Vec<String>,
    pub takeover: bool,
    pub graceful_shutdown_ok: bool,
    pub changes_produced: usize,
    pub messages_produced: usize,
    pub duplicates_absorbed_by_wal: u64,
    pub duplicates_absorbed_by_merge: u64,
    pub lost: usize,
    pub duplicate_rows_in_final: usize,
    pub tables_matching: usize,
    pub tables_total: usize,
    pub verified: bool,
    pub elapsed_seconds: f64,
    pub work_dir: String,
    #[serde(skip)]
    pub table_report: String,
}

impl std::fmt::Display for DrillReport {
    /// The human report `landfall drill` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.table_report)?;
        writeln!(
            f,
            "\nkills: {} (failpoints hit: {:?}, missed: {:?}), takeover: {}, graceful shutdown: {}",
            self.kills, self.failpoints_hit, self.failpoints_missed, self.takeover, self.graceful_shutdown_ok
        )?;
        writeln!(
            f,
            "changes: {} ({} messages with duplicates); duplicates absorbed by the WAL: {}, by the MERGE: {}",
            self.changes_produced, self.messages_produced, self.duplicates_absorbed_by_wal, self.duplicates_absorbed_by_merge
        )?;
        writeln!(
            f,
            "lost: {}, duplicate rows in final tables: {}, elapsed {:.0}s",
            self.lost, self.duplicate_rows_in_final, self.elapsed_seconds
        )?;
        writeln!(f, "{} (seed {}; work files: {})", if self.verified { "VERIFIED" } else { "FAILED" }, self.seed, self.work_dir)
    }
}

struct Bridge {
    child: Child,
}

impl Bridge {
    fn spawn(exe: &Path, config: &Path, failpoint: Option<&str>, log: &Path) -> anyhow::Result<Bridge> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(exe);
        cmd.arg("run").arg("--config").arg(config).stdin(Stdio::null()).stdout(out).stderr(err).kill_on_drop(true);
        cmd.env("LANDFALL_LOG", "info,librdkafka=warn,rdkafka=warn");
        match failpoint {
            Some(f) => cmd.env("LANDFALL_FAILPOINT", f),
            None => cmd.env_remove("LANDFALL_FAILPOINT"),
        };
        Ok(Bridge { child: cmd.spawn()? })
    }

    /// SIGKILL; true if it was still running.
    async fn kill9(mut self) -> anyhow::Result<bool> {
        let running = self.child.try_wait()?.is_none();
        self.child.kill().await?;
        Ok(running)
    }

    /// SIGTERM, then the exit code (None: killed by a signal or timed out).
    async fn terminate(mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        if let Some(pid) = self.child.id() {
            // SAFETY: sending a signal to our own child has no memory-safety preconditions.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => Ok(status?.code()),
            Err(_) => {
                self.child.kill().await?;
                Ok(None)
            }
        }
    }

    /// Waits for the process to die by itself; the signal that killed it, if any.
    async fn wait_died(mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        use std::os::unix::process::ExitStatusExt;
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => Ok(status?.signal()),
            Err(_) => {
                self.child.kill().await?;
                Ok(None)
            }
        }
    }
}

async fn wait_caught_up(cfg: &Config, kafka: &kafka::KafkaProcess, timeout: Duration) -> anyhow::Result<()> {
    let target = kafka.high_watermarks()?;
    let start = Instant::now();
    loop {
        let committed = committed_offsets(cfg, &kafka.topic, kafka.partitions)?;
        if committed.iter().zip(&target).all(|(c, t)| c >= t) {
            return Ok(());
        }
        anyhow::ensure!(start.elapsed() < timeout, "not caught up after {timeout:?}: committed {committed:?}, targets {target:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn chunks(msgs: Vec<SimMessage>, n: usize) -> Vec<Vec<SimMessage>> {
    let size = msgs.len().div_ceil(n.max(1)).max(1);
    let mut out: Vec<Vec<SimMessage>> = msgs.chunks(size).map(<[SimMessage]>::to_vec).collect();
    out.resize(n, Vec::new());
    out
}

async fn scalar(bq: &BigQuery, sql: &str) -> anyhow::Result<u64> {
    let resp = bq.query(sql).await?;
    Ok(resp.rows.as_ref().and_then(|r| r.first()).and_then(|r| cell(r, 0)).and_then(|s| s.parse().ok()).unwrap_or(0))
}

/// Runs a drill and verifies the result.
pub async fn run(opts: DrillOptions) -> anyhow::Result<DrillReport> {
    let t0 = Instant::now();
    let mut temp = None;
    let work: PathBuf = match &opts.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            let t = tempfile::Builder::new().prefix("landfall-drill").tempdir()?;
            let path = t.path().to_owned();
            temp = Some(t);
            path
        }
    };
    let emulator = match &opts.endpoint {
        Some(_) => None,
        None => Some(tokio::task::spawn_blocking(crate::harness::emulator::Emulator::start).await??),
    };
    let endpoint = opts.endpoint.clone().or_else(|| emulator.as_ref().map(|e| e.endpoint.clone())).unwrap_or_default();
    let topic = "dms.drill";
    let kafka = kafka::KafkaProcess::start(&opts.exe, &work, topic, opts.partitions).await?;
    let dataset = format!("drill_{}_{}", opts.seed, std::process::id());
    let sim_opts =
        if opts.transaction_details { SimOptions::ordered_by(PositionFormat::Mysql) } else { SimOptions::without_transaction_details() };
    let tables = crate::harness::sim::tables_for(&sim_opts);
    let write_config = |name: &str, wal: &str| -> anyhow::Result<(PathBuf, Config)> {
        let text = demo_config_toml(&kafka.bootstrap, &endpoint, &opts.project, &dataset, &work.join(wal), &tables)
            .replace("dms.sales", topic)
            .replace("group_id = \"landfall-demo\"", "group_id = \"landfall-drill\"")
            .replace("interval = \"0s\"", "interval = \"2s\"");
        let path = work.join(name);
        std::fs::write(&path, &text)?;
        Ok((path, Config::from_toml(&text)?))
    };
    let (config_a, cfg) = write_config("landfall.toml", "wal")?;
    let (config_b, _) = write_config("landfall-b.toml", "wal-b")?;
    let log = work.join("bridge.log");
    let cfg = Arc::new(cfg);
    let bq = BigQuery::connect(&cfg.bigquery).await?;
    bq.ensure_all(&cfg).await?;

    let mut sim = Simulator::with_options(opts.seed, sim_opts);
    let mut msgs = sim.full_load(opts.load_rows);
    msgs.extend(sim.changes(opts.changes));
    sim.duplicate(&mut msgs, opts.duplicate_rate);
    sim.republish(&mut msgs, 2);
    let changes_produced = sim.produced;
    let messages_produced = msgs.len();
    let points: Vec<&str> = if opts.failpoints { failpoint::ALL.to_vec() } else { Vec::new() };
    // One chunk of the stream per kill round and failpoint, two for the
    // takeover, and the last for the final bridge (which must consume).
    let phases = opts.rounds + points.len() + 2 * usize::from(opts.takeover) + 1;
    let mut parts = chunks(msgs, phases).into_iter();
    let mut rng = StdRng::seed_from_u64(opts.seed ^ 0x5eed);
    let mut report = DrillReport { seed: opts.seed, rounds: opts.rounds, takeover: opts.takeover, ..Default::default() };

    let steps = opts.rounds + points.len() + usize::from(opts.takeover) + 2;
    let mut progress = crate::progress::Progress::new("drill", steps as u64);
    for round in 0..opts.rounds {
        progress.step(format_args!("kill -9 round {}", round + 1));
        kafka.produce(&parts.next().unwrap_or_default())?;
        let bridge = Bridge::spawn(&opts.exe, &config_a, None, &log)?;
        let after = Duration::from_millis(rng.random_range(300..7_000));
        tokio::time::sleep(after).await;
        if bridge.kill9().await? {
            report.kills += 1;
        }
        tracing::info!(round, after = ?after, "kill -9");
    }
    for point in &points {
        progress.step(format_args!("failpoint {point}"));
        kafka.produce(&parts.next().unwrap_or_default())?;
        let bridge = Bridge::spawn(&opts.exe, &config_a, Some(point), &log)?;
        match bridge.wait_died(Duration::from_secs(90)).await? {
            Some(sig) if sig == libc::SIGKILL => {
                report.kills += 1;
                report.failpoints_hit.push((*point).to_owned());
            }
            other => {
                tracing::warn!(point, ?other, "failpoint not hit");
                report.failpoints_missed.push((*point).to_owned());
            }
        }
    }
    if opts.takeover {
        progress.step("two-bridge takeover");
        // Two bridges in one group, each with its own WAL; kill one, the
        // other takes over its partitions.
        kafka.produce(&parts.next().unwrap_or_default())?;
        let a = Bridge::spawn(&opts.exe, &config_a, None, &log)?;
        let b = Bridge::spawn(&opts.exe, &config_b, None, &log)?;
        tokio::time::sleep(Duration::from_millis(rng.random_range(4_000..8_000))).await;
        if a.kill9().await? {
            report.kills += 1;
        }
        kafka.produce(&parts.next().unwrap_or_default())?;
        wait_caught_up(&cfg, &kafka, Duration::from_secs(300)).await?;
        anyhow::ensure!(b.terminate(Duration::from_secs(60)).await? == Some(0), "the surviving bridge did not exit cleanly");
    }
    progress.step("last bridge: catch up, SIGTERM");
    kafka.produce(&parts.flatten().collect::<Vec<_>>())?;
    let last = Bridge::spawn(&opts.exe, &config_a, None, &log)?;
    let caught_up = wait_caught_up(&cfg, &kafka, Duration::from_secs(600)).await;
    let code = last.terminate(Duration::from_secs(60)).await?;
    report.graceful_shutdown_ok = code == Some(0);
    caught_up?;
    kafka.stop().await;

    // Merge everything and compare with the model.
    progress.step("merge and verify");
    progress.finish();
    let (_keep, rx) = tokio::sync::watch::channel(false);
    let merger = Merger::new(bq.clone(), cfg.clone(), Arc::new(Metrics::default()), rx);
    for r in merger.merge_all(false).await {
        r?;
    }
    let verdicts = verify::verify_all(&bq, &cfg.tables, &sim.model).await.map_err(anyhow::Error::msg)?;
    for t in &cfg.tables {
        let sql = format!("SELECT COUNT(*) - COUNT(DISTINCT `_landfall_key`) FROM `{}.{}.{}`", bq.project, bq.dataset, t.log_table);
        report.duplicates_absorbed_by_merge += scalar(&bq, &sql).await?;
    }
    for wal in ["wal", "wal-b"] {
        if work.join(wal).exists() {
            report.duplicates_absorbed_by_wal += Wal::open(&work.join(wal))?.counter(COUNTER_DUPLICATES_ABSORBED)?;
        }
    }
    report.changes_produced = changes_produced;
    report.messages_produced = messages_produced;
    report.lost = verdicts.iter().map(|v| v.missing_keys).sum();
    report.duplicate_rows_in_final = verdicts.iter().map(|v| v.duplicate_keys).sum();
    report.tables_total = verdicts.len();
    report.tables_matching = verdicts.iter().filter(|v| v.matches()).count();
    report.verified = report.tables_matching == report.tables_total
        && report.failpoints_missed.is_empty()
        && report.graceful_shutdown_ok
        && report.lost == 0
        && report.duplicate_rows_in_final == 0;
    report.table_report = verify::report(&verdicts);
    report.elapsed_seconds = t0.elapsed().as_secs_f64();
    report.work_dir = work.display().to_string();
    if !report.verified {
        // Keep the evidence (config, WALs, bridge.log) for the operator.
        if let Some(t) = temp {
            let _ = t.keep();
        }
    }
    Ok(report)
}

//! `landfall bench`: throughput, latency, memory and recovery, measured in
//! one run on one mock Kafka broker and one BigQuery emulator, and reported
//! as ratios against the raw limits of the two (docs/performance.md).
//!
//! The phases, in order:
//!
//! 1. a DMS full load of `messages` rows is produced to `bench.backlog`
//!    (enough partitions to stay under the mock broker's ~5 MiB per
//!    partition; the high watermarks are checked), and `bq_messages` rows to
//!    `bench.bq`;
//! 2. (a) a plain group consumer reads the backlog and drops it;
//! 3. (b) `landfall run` with the `discard` sink works through the backlog;
//!    its peak RSS and WAL size are read;
//! 4. (e) `landfall run` into a blackhole insertAll endpoint (the fault
//!    proxy answering every insertAll with success at once, rows dropped;
//!    dataset and table calls go to the emulator) works through the first
//!    `blackhole_messages` of the backlog: the bridge with its HTTP path,
//!    gzip and insertAll answers, against (b); then (f) the same with
//!    `blackhole_latency_ms` (150 ms) before each answer, as BigQuery across
//!    clouds: how much of the latency the bridge hides;
//! 5. (c) `landfall run` into the emulator reads `bench.bq`;
//! 6. (d) a minimal insertAll client sends the same rows, same request size
//!    and concurrency, into a fresh dataset;
//! 7. latency: a steady stream at `latency_rate` per second for
//!    `latency_seconds` through the bridge into the emulator; the bridge
//!    reports produce-to-landed percentiles;
//! 8. recovery: the WAL state a kill -9 after the pending flush leaves
//!    (`recovery_pending` records, the same ones the bridge would write) is
//!    built, and the time from starting the bridge to its first commit is taken;
//! 9. MERGE: an incremental merge of the same new changes over a log with 1x
//!    and with 10x history;
//! 10. burst: `burst_messages` DMS inserts of ~5 MB each (one large text
//!     column), all produced before the bridge starts, then `landfall run`
//!     with the `discard` sink and the default byte bounds works through them;
//!     its peak RSS is read and set against `pipeline.max_inflight_bytes`. The
//!     mock broker keeps ~5 MiB per partition (and a message over half of that
//!     makes the one before it unreadable), so each message has a partition of
//!     its own; the high watermarks are checked. `--only-burst` runs just this
//!     phase.
//!
//! The bridge runs as a child process (`landfall run`), the broker as another
//! (`landfall mock-kafka`), so the figures are the bridge's own.

pub mod bridge;
pub mod raw;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use serde::Serialize;
use serde_json::Value;

use crate::config::{Config, TableConfig};
use crate::harness::demo::send;
use crate::harness::mock_kafka::KafkaProcess;
use crate::harness::sim::{SimMessage, Simulator};
use crate::merge::Merger;
use crate::metrics::Metrics;
use crate::pipeline::{pending_record, plan, Msg, Plan};
use crate::sink::{BigQuery, LogRow};
use crate::wal::{Wal, WalBatch};
use bridge::{dir_bytes, watch, Bridge, Commits};

const BACKLOG: &str = "bench.backlog";
const BQ_TOPIC: &str = "bench.bq";
const LATENCY_TOPIC: &str = "bench.latency";
const BURST_TOPIC: &str = "bench.burst";
/// Bytes per mock partition the generator aims at (the broker keeps ~5 MiB).
const PARTITION_BUDGET: f64 = 3.0 * 1024.0 * 1024.0;

/// The options of `landfall bench` (the command line parses straight into them).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// BigQuery REST endpoint of the local emulator.
    #[arg(long, env = "LANDFALL_BQ_ENDPOINT")]
    pub endpoint: String,
    #[arg(long, env = "LANDFALL_BQ_PROJECT", default_value = "landfall-local")]
    pub project: String,
    /// Backlog for the raw consumer and the discard sink (peak RSS is taken here).
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Messages through the bridge into the emulator (and sent raw).
    #[arg(long, default_value_t = 30_000)]
    pub bq_messages: u64,
    #[arg(long, default_value_t = 100_000)]
    pub recovery_pending: u64,
    /// Backlog messages through the bridge into the blackhole endpoint
    /// (without and with latency).
    #[arg(long, default_value_t = 200_000)]
    pub blackhole_messages: u64,
    /// Delay of every insertAll answer in the latency phase (f), in ms.
    #[arg(long, default_value_t = 150)]
    pub blackhole_latency_ms: u64,
    /// Steady produce rate of the latency phase (messages per second).
    #[arg(long, default_value_t = 1_000)]
    pub latency_rate: u64,
    #[arg(long, default_value_t = 10)]
    pub latency_seconds: u64,
    /// Log rows of history for the 1x MERGE; 10x has ten times as many.
    #[arg(long, default_value_t = 10_000)]
    pub merge_history: u64,
    /// New changes each MERGE folds in.
    #[arg(long, default_value_t = 2_000)]
    pub merge_new: u64,
    /// Work files (configs, WALs, bridge logs).
    #[arg(long, default_value = "target/bench")]
    pub work_dir: PathBuf,
    /// The `landfall` binary that runs the broker and the bridge.
    #[arg(skip)]
    pub exe: PathBuf,
    #[arg(long, default_value_t = 5)]
    pub seed: u64,
    /// Large messages in the burst phase (one partition each).
    #[arg(long, default_value_t = 1_000)]
    pub burst_messages: u64,
    /// Bytes of the large text column of each burst message (the message is
    /// a few hundred bytes more: just under `pipeline.max_message_bytes`).
    #[arg(long, default_value_t = 4_999_000)]
    pub burst_text_bytes: usize,
    /// Run only the burst phase (its keys in the report, the rest zero).
    #[arg(long)]
    pub only_burst: bool,
}

impl BenchOptions {
    /// A run of a few seconds per phase, to check the harness itself.
    pub fn quick(mut self) -> Self {
        self.messages = 20_000;
        self.bq_messages = 5_000;
        self.blackhole_messages = 10_000;
        self.recovery_pending = 5_000;
        self.latency_rate = 200;
        self.latency_seconds = 3;
        self.merge_history = 1_000;
        self.merge_new = 300;
        self.burst_messages = 12;
        self
    }
}

/// Every figure, with the keys docs/performance.md explains.
#[derive(Debug, Clone, Serialize, Default)]
pub struct BenchReport {
    pub raw_consume_msgs_per_s: f64,
    pub raw_consume_mb_per_s: f64,
    pub discard_msgs_per_s: f64,
    pub discard_mb_per_s: f64,
    pub bigquery_msgs_per_s: f64,
    pub bigquery_mb_per_s: f64,
    pub emulator_raw_rows_per_s: f64,
    pub emulator_raw_mb_per_s: f64,
    pub ratio_discard_vs_raw: f64,
    pub ratio_bigquery_vs_emulator_raw: f64,
    /// (e) and (f): the bridge into the blackhole endpoint, without and
    /// with `blackhole_latency_ms` per insertAll; (e) / (b) and (f) / (e).
    pub blackhole_msgs_per_s: f64,
    pub blackhole_latency_msgs_per_s: f64,
    pub blackhole_latency_ms: u64,
    pub blackhole_messages: u64,
    pub ratio_http_vs_discard: f64,
    pub ratio_latency_vs_no_latency: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_rate_msgs_per_s: u64,
    pub peak_rss_mb: f64,
    pub peak_rss_mb_bigquery: f64,
    /// Peak RSS of the bridge in phase (f): with 150 ms per insertAll the
    /// most rows are in flight (reported, no target: the bound on memory is
    /// `pipeline.max_inflight_bytes`, checked by the burst phase).
    pub peak_rss_mb_blackhole_latency: f64,
    pub wal_bytes_per_change: f64,
    pub request_bytes_per_change_plain: f64,
    pub request_bytes_per_change_gzip: f64,
    pub ratio_gzip_vs_plain: f64,
    pub recovery_seconds_100k_pending: f64,
    pub recovery_pending_records: u64,
    pub merge_seconds_1x: f64,
    pub merge_seconds_10x: f64,
    pub ratio_merge_10x_vs_1x: f64,
    pub backlog_messages: u64,
    pub backlog_partitions: i32,
    pub message_bytes_avg: f64,
    pub bigquery_messages: u64,
    /// The burst phase: messages, their average size, the bridge's peak RSS,
    /// the configured in-flight bound and the ratio of the two, the bridge's
    /// own high-water mark of in-flight message bytes, and the rate.
    pub burst_messages: u64,
    pub burst_message_bytes_avg: f64,
    pub burst_peak_rss_mb: f64,
    pub burst_max_inflight_bytes: u64,
    pub burst_ratio_peak_rss_vs_inflight_bound: f64,
    pub burst_inflight_bytes_max: f64,
    pub burst_mb_per_s: f64,
    pub elapsed_seconds: f64,
}

impl BenchReport {
    /// The targets of docs/performance.md: (name, met, what was measured).
    pub fn targets(&self) -> Vec<(&'static str, bool, String)> {
        vec![
            ("b/a >= 0.25", self.ratio_discard_vs_raw >= 0.25, format!("{:.2}", self.ratio_discard_vs_raw)),
            ("c/d >= 0.9", self.ratio_bigquery_vs_emulator_raw >= 0.9, format!("{:.2}", self.ratio_bigquery_vs_emulator_raw)),
            ("HTTP path (e/b) >= 0.8", self.ratio_http_vs_discard >= 0.8, format!("{:.2}", self.ratio_http_vs_discard)),
            (
                "latency hidden (f/e) >= 0.9",
                self.ratio_latency_vs_no_latency >= 0.9,
                format!("{:.2} at {} ms per insertAll", self.ratio_latency_vs_no_latency, self.blackhole_latency_ms),
            ),
            ("peak RSS <= 200 MB", self.peak_rss_mb <= 200.0, format!("{:.0} MB", self.peak_rss_mb)),
            (
                "recovery (100k pending) <= 2 s",
                self.recovery_seconds_100k_pending <= 2.0,
                format!("{:.2} s for {} records", self.recovery_seconds_100k_pending, self.recovery_pending_records),
            ),
            ("MERGE 10x <= 1.5 x 1x", self.ratio_merge_10x_vs_1x <= 1.5, format!("{:.2}", self.ratio_merge_10x_vs_1x)),
            ("gzip <= 0.35 x plain", self.ratio_gzip_vs_plain <= 0.35, format!("{:.2}", self.ratio_gzip_vs_plain)),
            (
                "burst peak RSS <= 24 x in-flight bound",
                self.burst_ratio_peak_rss_vs_inflight_bound <= BURST_RSS_RATIO_BOUND,
                format!("{:.1}x ({:.0} MB)", self.burst_ratio_peak_rss_vs_inflight_bound, self.burst_peak_rss_mb),
            ),
        ]
    }

    fn burst_line(&self) -> String {
        format!(
            "burst: {} messages of {:.1} MB, {:.1} MB/s; peak RSS {:.0} MB = {:.1}x max_inflight_bytes ({:.0} MiB); \
             in flight at most {:.1} MiB\n",
            self.burst_messages,
            self.burst_message_bytes_avg / 1e6,
            self.burst_mb_per_s,
            self.burst_peak_rss_mb,
            self.burst_ratio_peak_rss_vs_inflight_bound,
            self.burst_max_inflight_bytes as f64 / MIB,
            self.burst_inflight_bytes_max / MIB,
        )
    }

    pub fn human(&self) -> String {
        if self.backlog_messages == 0 {
            // --only-burst
            let (name, met, got) = self.targets().pop().unwrap_or_default();
            return format!(
                "landfall bench (burst only)\n\n{}\ntarget {name:<32} {:<6} {got}\n\nelapsed {:.0} s\n",
                self.burst_line(),
                if met { "met" } else { "MISSED" },
                self.elapsed_seconds
            );
        }
        let mut s = format!(
            "landfall bench: {} backlog messages ({:.0} B avg) on {} partitions, {} into the emulator\n\n\
             (a) raw consume        {:>10.0} msgs/s {:>7.1} MB/s\n\
             (b) bridge -> discard  {:>10.0} msgs/s {:>7.1} MB/s   b/a = {:.2}\n\
             (e) bridge -> blackhole{:>10.0} msgs/s                e/b = {:.2} (insertAll answered at once)\n\
             (f) bridge -> blackhole{:>10.0} msgs/s                f/e = {:.2} ({} ms per insertAll)\n\
             (c) bridge -> emulator {:>10.0} msgs/s {:>7.1} MB/s\n\
             (d) emulator insertAll {:>10.0} rows/s {:>7.1} MB/s   c/d = {:.2}\n\n\
             latency produce -> landed at {} msgs/s: p50 {:.0} ms, p99 {:.0} ms\n\
             peak RSS: {:.0} MB (discard, backlog), {:.0} MB (emulator), {:.0} MB (blackhole with latency)\n\
             WAL: {:.0} bytes per change\n\
             insertAll bytes per change: {:.0} plain JSON, {:.0} gzip ({:.2}x)\n\
             recovery with {} pending: {:.2} s to the first new commit\n\
             MERGE: {:.2} s with 1x history, {:.2} s with 10x ({:.2}x)\n",
            self.backlog_messages,
            self.message_bytes_avg,
            self.backlog_partitions,
            self.bigquery_messages,
            self.raw_consume_msgs_per_s,
            self.raw_consume_mb_per_s,
            self.discard_msgs_per_s,
            self.discard_mb_per_s,
            self.ratio_discard_vs_raw,
            self.blackhole_msgs_per_s,
            self.ratio_http_vs_discard,
            self.blackhole_latency_msgs_per_s,
            self.ratio_latency_vs_no_latency,
            self.blackhole_latency_ms,
            self.bigquery_msgs_per_s,
            self.bigquery_mb_per_s,
            self.emulator_raw_rows_per_s,
            self.emulator_raw_mb_per_s,
            self.ratio_bigquery_vs_emulator_raw,
            self.latency_rate_msgs_per_s,
            self.latency_p50_ms,
            self.latency_p99_ms,
            self.peak_rss_mb,
            self.peak_rss_mb_bigquery,
            self.peak_rss_mb_blackhole_latency,
            self.wal_bytes_per_change,
            self.request_bytes_per_change_plain,
            self.request_bytes_per_change_gzip,
            self.ratio_gzip_vs_plain,
            self.recovery_pending_records,
            self.recovery_seconds_100k_pending,
            self.merge_seconds_1x,
            self.merge_seconds_10x,
            self.ratio_merge_10x_vs_1x,
        );
        s.push_str(&self.burst_line());
        s.push('\n');
        for (name, met, got) in self.targets() {
            s.push_str(&format!("target {name:<32} {:<6} {got}\n", if met { "met" } else { "MISSED" }));
        }
        s.push_str(&format!("\nelapsed {:.0} s\n", self.elapsed_seconds));
        s
    }
}

fn producer(bootstrap: &str, linger_ms: u32) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", linger_ms.to_string())
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()?)
}

/// A DMS full load of `n` rows (spread over the simulator's tables), handed
/// out in chunks so the whole load is never in memory.
fn full_load(seed: u64, n: u64, mut each: impl FnMut(&[SimMessage]) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut sim = Simulator::new(seed);
    let per_table_chunk = 1000u64;
    let tables = sim.tables().len() as u64;
    let mut left = n;
    while left > 0 {
        let mut msgs = sim.full_load(per_table_chunk as usize);
        msgs.truncate(left.min(per_table_chunk * tables) as usize);
        left -= msgs.len() as u64;
        each(&msgs)?;
        // Only the messages are needed, not the model of the source.
        sim.model.values_mut().for_each(|m| m.clear());
    }
    Ok(())
}

fn produce_all(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, msgs: &[SimMessage]) -> anyhow::Result<()> {
    for m in msgs {
        send(p, topic, Some(&m.key), Some(&m.payload))?;
    }
    Ok(())
}

fn f(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

/// Runs every phase; see the module docs.
pub async fn run(opts: BenchOptions) -> anyhow::Result<BenchReport> {
    let started = Instant::now();
    let work = &opts.work_dir;
    std::fs::create_dir_all(work)?;
    let tables = crate::harness::sim::tables();
    if opts.only_burst {
        let mut r = BenchReport::default();
        let kafka = KafkaProcess::start_with(&opts.exe, work, &[(BURST_TOPIC, opts.burst_messages.max(1) as i32)], Some(0)).await?;
        let ctx = Ctx { work, bootstrap: &kafka.bootstrap, endpoint: &opts.endpoint, project: &opts.project, tables: &tables };
        burst(&opts, &ctx, &mut r).await?;
        kafka.stop().await;
        r.elapsed_seconds = started.elapsed().as_secs_f64();
        return Ok(r);
    }
    let mut r = BenchReport { backlog_messages: opts.messages, bigquery_messages: opts.bq_messages, ..Default::default() };

    // 1. Data: size the backlog's partitions from a sample of the messages.
    let mut sample_bytes = 0usize;
    let mut sample_n = 0usize;
    full_load(opts.seed, 3_000, |m| {
        sample_n += m.len();
        sample_bytes += m.iter().map(|m| m.payload.len()).sum::<usize>();
        Ok(())
    })?;
    r.message_bytes_avg = sample_bytes as f64 / sample_n.max(1) as f64;
    let partitions = ((opts.messages as f64 * (r.message_bytes_avg + 64.0) / PARTITION_BUDGET).ceil() as i32).max(4);
    r.backlog_partitions = partitions;
    let kafka = KafkaProcess::start_with(
        &opts.exe,
        work,
        &[(BACKLOG, partitions), (BQ_TOPIC, 8), (LATENCY_TOPIC, 8), (BURST_TOPIC, opts.burst_messages.max(1) as i32)],
        Some(0),
    )
    .await?;
    let bootstrap = kafka.bootstrap.clone();
    let p = producer(&bootstrap, 20)?;
    eprintln!("bench: producing {} messages to {partitions} partitions", opts.messages);
    full_load(opts.seed, opts.messages, |m| produce_all(&p, BACKLOG, m))?;
    full_load(opts.seed + 1, opts.bq_messages, |m| produce_all(&p, BQ_TOPIC, m))?;
    p.flush(Duration::from_secs(120))?;
    let kept = high_watermark_sum(&bootstrap, BACKLOG, partitions)?;
    anyhow::ensure!(
        kept == opts.messages as i64,
        "the mock broker kept {kept} of {} backlog messages (its ~5 MiB per partition limit); use more partitions",
        opts.messages
    );

    let ctx = Ctx { work, bootstrap: &bootstrap, endpoint: &opts.endpoint, project: &opts.project, tables: &tables };
    let stamp = crate::wal::now_ms();

    // 2. (a) raw consume.
    eprintln!("bench: (a) raw consume");
    let (_, raw_cfg) = ctx.phase("raw", BACKLOG, "unused", true)?;
    let kcfg = raw_cfg.kafka.clone();
    let target = opts.messages;
    let a = tokio::task::spawn_blocking(move || raw::consume(&kcfg, target)).await??;
    r.raw_consume_msgs_per_s = a.per_s();
    r.raw_consume_mb_per_s = a.mb_per_s();
    eprintln!("bench: (a) {:.0} msgs/s", r.raw_consume_msgs_per_s);

    // 3. (b) the bridge into the discard sink.
    eprintln!("bench: (b) bridge -> discard");
    let (path, cfg) = ctx.phase("discard", BACKLOG, "unused", true)?;
    let mut b = Bridge::spawn(&opts.exe, &path, work.join("bridge-discard.log"))?;
    let commits = Commits::new(&bootstrap, &cfg.kafka.group_id, BACKLOG, partitions)?;
    let prog = watch(&mut b, &commits, opts.messages as i64, Duration::from_secs(1800)).await?;
    r.peak_rss_mb = b.peak_rss_mb()?;
    let started_b = b.started;
    drop(commits);
    let summary = b.stop().await?;
    anyhow::ensure!(f(&summary, "consumed") as u64 >= opts.messages, "the discard run consumed {} messages", f(&summary, "consumed"));
    r.discard_msgs_per_s = prog.rate(opts.messages as i64, started_b);
    r.discard_mb_per_s = r.discard_msgs_per_s * r.message_bytes_avg / 1e6;
    r.ratio_discard_vs_raw = r.discard_msgs_per_s / r.raw_consume_msgs_per_s.max(1e-9);
    r.wal_bytes_per_change = dir_bytes(&cfg.wal.path) as f64 / opts.messages as f64;
    eprintln!("bench: (b) {:.0} msgs/s, peak RSS {:.0} MB", r.discard_msgs_per_s, r.peak_rss_mb);

    // 3b. (e), (f) the bridge into a blackhole insertAll endpoint.
    blackhole(&opts, &ctx, partitions, stamp, &mut r).await?;

    // 4. (c) the bridge into the emulator.
    eprintln!("bench: (c) bridge -> emulator");
    let dataset = format!("bench_{stamp}");
    let (path, cfg) = ctx.phase("bigquery", BQ_TOPIC, &dataset, false)?;
    let mut c = Bridge::spawn(&opts.exe, &path, work.join("bridge-bigquery.log"))?;
    let commits = Commits::new(&bootstrap, &cfg.kafka.group_id, BQ_TOPIC, 8)?;
    let prog = watch(&mut c, &commits, opts.bq_messages as i64, Duration::from_secs(1800)).await?;
    r.peak_rss_mb_bigquery = c.peak_rss_mb()?;
    let started_c = c.started;
    drop(commits);
    let summary = c.stop().await?;
    r.bigquery_msgs_per_s = prog.rate(opts.bq_messages as i64, started_c);
    r.bigquery_mb_per_s = r.bigquery_msgs_per_s * r.message_bytes_avg / 1e6;
    let landed = f(&summary, "landed").max(1.0);
    r.request_bytes_per_change_plain = f(&summary, "request_bytes_plain") / landed;
    r.request_bytes_per_change_gzip = f(&summary, "request_bytes_sent") / landed;
    r.ratio_gzip_vs_plain = r.request_bytes_per_change_gzip / r.request_bytes_per_change_plain.max(1e-9);
    eprintln!("bench: (c) {:.0} msgs/s", r.bigquery_msgs_per_s);

    // 5. (d) the emulator's own insertAll rate for the same rows.
    eprintln!("bench: (d) emulator insertAll");
    let raw_dataset = format!("bench_raw_{stamp}");
    let (_, raw_bq_cfg) = ctx.phase("raw-bq", BQ_TOPIC, &raw_dataset, false)?;
    let bq = BigQuery::connect(&raw_bq_cfg.bigquery).await?;
    bq.ensure_all(&raw_bq_cfg).await?;
    let rows = log_rows(&raw_bq_cfg, opts.seed + 1, opts.bq_messages)?;
    let d = raw::insert_all(
        &bq,
        &rows,
        raw_bq_cfg.bigquery.max_rows_per_request,
        raw_bq_cfg.bigquery.max_inflight_requests.min(RAW_INSERT_CONCURRENCY),
        raw_bq_cfg.bigquery.gzip_level,
    )
    .await?;
    r.emulator_raw_rows_per_s = d.per_s();
    r.emulator_raw_mb_per_s = d.mb_per_s();
    r.ratio_bigquery_vs_emulator_raw = r.bigquery_msgs_per_s / r.emulator_raw_rows_per_s.max(1e-9);
    eprintln!("bench: (d) {:.0} rows/s", r.emulator_raw_rows_per_s);

    // 6. Latency at a steady rate, into the emulator.
    eprintln!("bench: latency at {} msgs/s for {} s", opts.latency_rate, opts.latency_seconds);
    let (path, cfg) = ctx.phase("latency", LATENCY_TOPIC, &dataset, false)?;
    let (p50, p99) = latency(&opts, &bootstrap, &path, &cfg).await?;
    r.latency_rate_msgs_per_s = opts.latency_rate;
    r.latency_p50_ms = p50;
    r.latency_p99_ms = p99;

    // 7. Recovery with pending records.
    eprintln!("bench: recovery with {} pending records", opts.recovery_pending);
    let (path, cfg) = ctx.phase("recovery", BACKLOG, "unused", true)?;
    r.recovery_pending_records = build_pending(&cfg, &bootstrap, partitions, opts.recovery_pending)?;
    let mut rb = Bridge::spawn(&opts.exe, &path, work.join("bridge-recovery.log"))?;
    let commits = Commits::new(&bootstrap, &cfg.kafka.group_id, BACKLOG, partitions)?;
    let prog = watch(&mut rb, &commits, 1, Duration::from_secs(600)).await?;
    r.recovery_seconds_100k_pending = prog.first_at.duration_since(rb.started).as_secs_f64();
    drop(commits);
    let summary = rb.stop().await?;
    anyhow::ensure!(
        f(&summary, "recovered") as u64 >= r.recovery_pending_records,
        "the bridge re-shipped {} of {} pending records",
        f(&summary, "recovered"),
        r.recovery_pending_records
    );

    // 8. MERGE over 1x and 10x history.
    eprintln!("bench: MERGE with 1x and 10x history");
    let mut merge_secs = Vec::new();
    for scale in [1u64, 10] {
        let ds = format!("bench_merge{scale}x_{stamp}");
        let (_, mcfg) = ctx.phase(&format!("merge{scale}x"), BQ_TOPIC, &ds, false)?;
        merge_secs.push(merge_time(&mcfg, opts.seed + 10 + scale, opts.merge_history * scale, opts.merge_new).await?);
    }
    r.merge_seconds_1x = merge_secs[0];
    r.merge_seconds_10x = merge_secs[1];
    r.ratio_merge_10x_vs_1x = r.merge_seconds_10x / r.merge_seconds_1x.max(1e-9);

    // 9. A burst of large messages against the byte bounds.
    burst(&opts, &ctx, &mut r).await?;

    kafka.stop().await;
    r.elapsed_seconds = started.elapsed().as_secs_f64();
    Ok(r)
}

/// Phases (e) and (f) (see the module docs): the first `blackhole_messages`
/// of the backlog through the bridge into the fault proxy as a blackhole,
/// with no delay and with `blackhole_latency_ms` per insertAll.
async fn blackhole(opts: &BenchOptions, ctx: &Ctx<'_>, partitions: i32, stamp: u64, r: &mut BenchReport) -> anyhow::Result<()> {
    let upstream = ctx.endpoint.trim_end_matches('/').trim_end_matches("/bigquery/v2");
    let proxy = crate::harness::proxy::FaultProxy::start(upstream).await?;
    let endpoint = proxy.endpoint();
    let bctx = Ctx { endpoint: &endpoint, ..*ctx };
    let n = opts.blackhole_messages.min(opts.messages).max(1);
    let mut rates = Vec::new();
    for (name, delay) in [("blackhole", 0), ("blackhole-latency", opts.blackhole_latency_ms)] {
        eprintln!("bench: ({}) bridge -> blackhole, {delay} ms per insertAll, {n} messages", if delay == 0 { 'e' } else { 'f' });
        proxy.set_blackhole(Some(Duration::from_millis(delay)));
        let before = proxy.stats().blackholed_requests;
        let (path, cfg) = bctx.phase(name, BACKLOG, &format!("bench_bh_{stamp}"), false)?;
        let mut b = Bridge::spawn(&opts.exe, &path, ctx.work.join(format!("bridge-{name}.log")))?;
        let commits = Commits::new(ctx.bootstrap, &cfg.kafka.group_id, BACKLOG, partitions)?;
        let prog = watch(&mut b, &commits, n as i64, Duration::from_secs(1800)).await?;
        let started = b.started;
        drop(commits);
        if delay > 0 {
            r.peak_rss_mb_blackhole_latency = b.peak_rss_mb()?;
        }
        b.stop().await?;
        anyhow::ensure!(proxy.stats().blackholed_requests > before, "no insertAll reached the blackhole in phase {name}");
        let rate = prog.rate(n as i64, started);
        eprintln!("bench: ({name}) {rate:.0} msgs/s");
        rates.push(rate);
    }
    r.blackhole_messages = n;
    r.blackhole_latency_ms = opts.blackhole_latency_ms;
    r.blackhole_msgs_per_s = rates[0];
    r.blackhole_latency_msgs_per_s = rates[1];
    r.ratio_http_vs_discard = rates[0] / r.discard_msgs_per_s.max(1e-9);
    r.ratio_latency_vs_no_latency = rates[1] / rates[0].max(1e-9);
    Ok(())
}

/// Requests in flight when the MERGE phase loads its history and changes.
const MERGE_LOAD_CONCURRENCY: usize = 4;
/// Requests in flight of the minimal client (d). The one-process emulator
/// queues what it is sent: 64 at once timed a request out (5 s) in a
/// `make bench` run on 2026-12-07, and 16 is where the bridge's own c/d was
/// measured against it.
const RAW_INSERT_CONCURRENCY: usize = 16;

/// MiB, for the report.
const MIB: f64 = 1024.0 * 1024.0;

/// The most peak RSS may be in the burst, as a multiple of
/// `pipeline.max_inflight_bytes`, with the defaults: 768 MiB (docs/performance.md,
/// "Memory": measured 20.5x, 655 MB).
pub const BURST_RSS_RATIO_BOUND: f64 = 24.0;

/// Phase 9 (see the module docs): `burst_messages` messages of ~5 MB, one
/// per partition of `bench.burst` (the mock broker keeps ~5 MiB per
/// partition), all waiting before the bridge starts, through the bridge into
/// the discard sink.
async fn burst(opts: &BenchOptions, ctx: &Ctx<'_>, r: &mut BenchReport) -> anyhow::Result<()> {
    use rdkafka::producer::BaseRecord;
    let n = opts.burst_messages.max(1);
    let partitions = n as i32;
    eprintln!("bench: burst of {n} messages of ~{:.1} MB, produced before the bridge starts", opts.burst_text_bytes as f64 / 1e6);
    let (path, cfg) = ctx.phase("burst", BURST_TOPIC, "unused", true)?;
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", ctx.bootstrap)
        .set("linger.ms", "0")
        .set("message.max.bytes", "10000000")
        .set("enable.idempotence", "true")
        .create()?;
    let mut bytes = 0u64;
    for i in 0..n {
        let m = crate::harness::sim::large_text_change(i as i64 + 1, opts.burst_text_bytes);
        bytes += m.payload.len() as u64;
        let record = BaseRecord::to(BURST_TOPIC).partition(i as i32).key(&m.key).payload(&m.payload);
        p.send(record).map_err(|(e, _)| e)?;
        if i % 16 == 15 {
            p.flush(Duration::from_secs(120))?;
        }
    }
    p.flush(Duration::from_secs(120))?;
    drop(p);
    let kept = high_watermark_sum(ctx.bootstrap, BURST_TOPIC, partitions)?;
    anyhow::ensure!(kept == n as i64, "the mock broker holds {kept} of {n} burst messages");
    let mut b = Bridge::spawn(&opts.exe, &path, ctx.work.join("bridge-burst.log"))?;
    let commits = Commits::new(ctx.bootstrap, &cfg.kafka.group_id, BURST_TOPIC, partitions)?;
    let prog = watch(&mut b, &commits, n as i64, Duration::from_secs(3600)).await?;
    r.burst_peak_rss_mb = b.peak_rss_mb()?;
    let started = b.started;
    drop(commits);
    let summary = b.stop().await?;
    anyhow::ensure!(f(&summary, "consumed") as u64 >= n, "the burst run consumed {} of {n} messages", f(&summary, "consumed"));
    anyhow::ensure!(
        f(&summary, "dead_lettered") == 0.0,
        "burst messages were dead-lettered; see {}",
        ctx.work.join("bridge-burst.log").display()
    );
    r.burst_messages = n;
    r.burst_message_bytes_avg = bytes as f64 / n as f64;
    r.burst_max_inflight_bytes = cfg.pipeline.max_inflight_bytes as u64;
    r.burst_ratio_peak_rss_vs_inflight_bound = r.burst_peak_rss_mb * MIB / cfg.pipeline.max_inflight_bytes as f64;
    r.burst_inflight_bytes_max = f(&summary, "inflight_bytes_max");
    r.burst_mb_per_s = prog.rate(n as i64, started) * r.burst_message_bytes_avg / 1e6;
    eprintln!("bench: burst peak RSS {:.0} MB ({:.1}x the in-flight bound)", r.burst_peak_rss_mb, r.burst_ratio_peak_rss_vs_inflight_bound);
    Ok(())
}

/// What every phase's configuration shares.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    work: &'a Path,
    bootstrap: &'a str,
    endpoint: &'a str,
    project: &'a str,
    tables: &'a [TableConfig],
}

impl Ctx<'_> {
    /// The configuration of phase `name` (group `bench-NAME`, a fresh WAL
    /// `wal-NAME`), written to `NAME.toml` and parsed like any other.
    fn phase(&self, name: &str, topic: &str, dataset: &str, discard: bool) -> anyhow::Result<(PathBuf, Config)> {
        let wal = self.work.join(format!("wal-{name}"));
        let _ = std::fs::remove_dir_all(&wal);
        let mut text = crate::harness::demo::demo_config_toml(self.bootstrap, self.endpoint, self.project, dataset, &wal, self.tables)
            .replace("group_id = \"landfall-demo\"", &format!("group_id = \"bench-{name}\""))
            .replace("topics = [\"dms.sales\"]", &format!("topics = [\"{topic}\"]"))
            // The pipeline's own defaults, not the demo's short batch wait.
            .replace("batch_max_wait = \"20ms\"\n", "")
            // A short overlap (it must exceed the request timeout) keeps the
            // MERGE phase's wait for it short.
            .replace("request_timeout = \"30s\"", "request_timeout = \"5s\"")
            .replace("overlap = \"5m\"", "overlap = \"6s\"");
        if discard {
            text.push_str("\n[sink]\nkind = \"discard\"\n");
        }
        let cfg = Config::from_toml(&text)?;
        let path = self.work.join(format!("{name}.toml"));
        std::fs::write(&path, text)?;
        Ok((path, cfg))
    }
}

fn high_watermark_sum(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let mut sum = 0;
    for p in 0..partitions {
        sum += c.fetch_watermarks(topic, p, Duration::from_secs(10))?.1;
    }
    Ok(sum)
}

/// The log rows the bridge would ship for `msgs`, grouped by log table.
fn rows_of(cfg: &Config, msgs: &[SimMessage]) -> anyhow::Result<Vec<(String, Vec<LogRow>)>> {
    let metrics = Metrics::default();
    let mut rows = Vec::new();
    for (offset, m) in msgs.iter().enumerate() {
        let msg = Msg {
            topic: BQ_TOPIC.into(),
            partition: 0,
            offset: offset as i64,
            payload: Some(m.payload.clone()),
            produced_ms: None,
            ..Default::default()
        };
        match plan(cfg, &msg, &metrics) {
            Plan::Rows(r) => rows.extend(r),
            other => anyhow::bail!("a generated message did not become rows: {other:?}"),
        }
    }
    Ok(crate::pipeline::group(rows))
}

/// The log rows of the full load [`run`] produced to `bench.bq`.
fn log_rows(cfg: &Config, seed: u64, n: u64) -> anyhow::Result<Vec<(String, Vec<LogRow>)>> {
    let mut msgs = Vec::new();
    full_load(seed, n, |m| {
        msgs.extend_from_slice(m);
        Ok(())
    })?;
    rows_of(cfg, &msgs)
}

/// Steady produce at `latency_rate` for `latency_seconds` through a running
/// bridge; returns the bridge's produce-to-landed p50 and p99 (ms).
async fn latency(opts: &BenchOptions, bootstrap: &str, config: &Path, cfg: &Config) -> anyhow::Result<(f64, f64)> {
    let mut bridge = Bridge::spawn(&opts.exe, config, opts.work_dir.join("bridge-latency.log"))?;
    let commits = Commits::new(bootstrap, &cfg.kafka.group_id, LATENCY_TOPIC, 8)?;
    let p = producer(bootstrap, 1)?;
    let mut sim = Simulator::new(opts.seed + 2);
    let total = opts.latency_rate * opts.latency_seconds;
    let mut msgs = sim.full_load(100);
    msgs.extend(sim.changes(total as usize));
    // A first message, landed before the clock starts: the group join is not latency.
    produce_all(&p, LATENCY_TOPIC, &msgs[..1])?;
    p.flush(Duration::from_secs(10))?;
    watch(&mut bridge, &commits, 1, Duration::from_secs(120)).await?;
    let tick = Duration::from_millis(10);
    let per_tick = (opts.latency_rate as f64 * tick.as_secs_f64()).max(1.0);
    let mut interval = tokio::time::interval(tick);
    let (mut sent, start) = (1usize, Instant::now());
    let end = (total as usize + 1).min(msgs.len());
    while sent < end {
        interval.tick().await;
        let due = (1 + (start.elapsed().as_secs_f64() / tick.as_secs_f64() * per_tick) as usize).min(end);
        if due > sent {
            produce_all(&p, LATENCY_TOPIC, &msgs[sent..due])?;
            sent = due;
        }
    }
    p.flush(Duration::from_secs(30))?;
    watch(&mut bridge, &commits, sent as i64, Duration::from_secs(600)).await?;
    drop(commits);
    let summary = bridge.stop().await?;
    anyhow::ensure!(f(&summary, "latency_samples") as usize >= sent, "the bridge recorded {} latencies", f(&summary, "latency_samples"));
    Ok((f(&summary, "latency_p50_ms"), f(&summary, "latency_p99_ms")))
}

/// Writes to the WAL what a bridge killed right after its pending flush
/// leaves: pending records for the first `n` messages of the backlog (the
/// same keys and rows [`crate::pipeline`] writes). Returns the record count.
fn build_pending(cfg: &Config, bootstrap: &str, partitions: i32, n: u64) -> anyhow::Result<u64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", "bench-reader").create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(BACKLOG, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let wal = Wal::open(&cfg.wal.path)?;
    let metrics = Metrics::default();
    let mut batch = WalBatch::default();
    let (mut read, mut records) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(300);
    while read < n {
        anyhow::ensure!(Instant::now() < deadline, "read {read} of {n} messages for the recovery phase");
        let Some(m) = c.poll(Duration::from_millis(100)) else { continue };
        let m = m?;
        let msg = Msg {
            topic: BACKLOG.into(),
            partition: m.partition(),
            offset: m.offset(),
            payload: m.payload().map(<[u8]>::to_vec),
            produced_ms: None,
            ..Default::default()
        };
        read += 1;
        if let Plan::Rows(rows) = plan(cfg, &msg, &metrics) {
            for (table, row) in rows {
                let ship = row;
                batch.pending(&ship.key, pending_record(&table, &ship));
                records += 1;
            }
        }
        if read % 10_000 == 0 {
            wal.flush(&std::mem::take(&mut batch))?;
        }
    }
    wal.flush(&batch)?;
    drop(wal);
    Ok(records)
}

/// Lands `history` rows of a full load and merges them; then, once the
/// merge overlap has passed, lands `new` changes to those rows and times the
/// incremental merge that folds them in.
async fn merge_time(cfg: &Config, seed: u64, history: u64, new: u64) -> anyhow::Result<f64> {
    let bq = BigQuery::connect(&cfg.bigquery).await?;
    bq.ensure_all(cfg).await?;
    // Loading is not what is timed here, and the emulator (one Python
    // process) times requests out when the whole ceiling of the adaptive
    // limit (64) arrives at once with no adaptation in front of it.
    let (max_rows, concurrency) = (cfg.bigquery.max_rows_per_request, cfg.bigquery.max_inflight_requests.min(MERGE_LOAD_CONCURRENCY));
    let mut sim = Simulator::new(seed);
    let loaded = sim.full_load((history / sim.tables().len() as u64).max(1) as usize);
    raw::insert_all(&bq, &rows_of(cfg, &loaded)?, max_rows, concurrency, cfg.bigquery.gzip_level).await?;
    drop(loaded);
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let cfg = Arc::new(cfg.clone());
    let merger = Merger::new(bq.clone(), cfg.clone(), Arc::new(Metrics::default()), rx);
    for res in merger.merge_all(false).await {
        res?;
    }
    let changes = sim.changes(new as usize);
    tokio::time::sleep(cfg.merge.overlap + Duration::from_millis(500)).await;
    raw::insert_all(&bq, &rows_of(&cfg, &changes)?, max_rows, concurrency, cfg.bigquery.gzip_level).await?;
    let started = Instant::now();
    for res in merger.merge_all(false).await {
        res?;
    }
    Ok(started.elapsed().as_secs_f64())
}

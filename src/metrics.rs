//! Counters, and the periodic summary line that prints them. The same
//! values are served in the Prometheus text format by [`crate::observe`]
//! (`/metrics`), which reads them at each scrape.
//!
//! Every counter only grows, except the gauges `paused_tables` (a set of
//! names) and `inflight_bytes` (whose high-water mark `inflight_bytes_max`
//! only grows). `landfall run` logs a summary every
//! `observability.summary_interval`, with the commit point of every partition.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram as Buckets};

use crate::source::message::Msg;
use crate::source::tracker::TopicPartition;

#[derive(Default, Debug)]
pub struct Metrics {
    /// Messages read from Kafka.
    pub consumed: AtomicU64,
    /// Changes whose key the WAL already held (redeliveries, re-publications).
    pub duplicates_absorbed: AtomicU64,
    /// Rows handed to insertAll (counting each row once, however often retried).
    pub shipped: AtomicU64,
    /// Rows BigQuery accepted and the WAL marked landed.
    pub landed: AtomicU64,
    /// Messages and rows recorded as dead letters; and by the stage that
    /// refused them (`decode`: the message; `bigquery`: a row BigQuery refused).
    pub dead_lettered: AtomicU64,
    pub dead_lettered_decode: AtomicU64,
    pub dead_lettered_bigquery: AtomicU64,
    /// Changes that arrived without DMS transaction details
    /// (`IncludeTransactionDetails=false`): their identity includes the Kafka
    /// position (docs/design.md, "Change identity").
    pub changes_without_transaction_details: AtomicU64,
    /// Tables already warned about changes without transaction details.
    pub warned_without_transaction_details: Mutex<std::collections::BTreeSet<String>>,
    /// Control records read (every kind), and by kind (`truncate-table`,
    /// `add-column`, ...).
    pub control_records: AtomicU64,
    pub control_kinds: Mutex<BTreeMap<String, u64>>,
    /// Truncate and drop-table control records of routed tables, planned as
    /// marker rows of their log tables (a redelivery counts again).
    pub truncates: AtomicU64,
    pub table_drops: AtomicU64,
    /// DDL of routed tables reported but not applied (rename-table,
    /// add-column, drop-column, rename-column, change-columns,
    /// column-type-change), each with a WARN naming the table and what to do.
    pub ddl_reported: AtomicU64,
    /// Columns schema evolution added to a table (final and log table;
    /// `[schema] evolve = "add-columns"`).
    pub schema_columns_added: AtomicU64,
    /// Merges skipped because the table's source was dropped and the
    /// operator has not resumed it yet (one per table per merge attempt).
    pub merges_paused: AtomicU64,
    /// The final tables whose merge is paused by a drop-table right now
    /// (a gauge: a table leaves it when it is resumed).
    pub paused_tables: Mutex<std::collections::BTreeSet<String>>,
    /// Changes for unrouted tables acknowledged without shipping (non-strict routing).
    pub skipped: AtomicU64,
    /// insertAll requests sent, those retried, and those that failed as a
    /// whole (an HTTP error or timeout: retried, or split to find a bad row).
    pub requests: AtomicU64,
    pub request_retries: AtomicU64,
    pub request_failures: AtomicU64,
    /// Seconds per insertAll request, answered or failed.
    pub request_seconds: Seconds,
    /// insertAll responses with an error entry that names no row of the
    /// request: nothing was marked landed and the request was re-sent.
    pub untrusted_responses: AtomicU64,
    /// Rows refused with "no such field" soon after their table's schema
    /// changed, re-sent instead of dead-lettered (`bigquery.schema_propagation_wait`).
    pub schema_propagation_retries: AtomicU64,
    /// insertAll body bytes: as plain JSON, and as sent (gzipped).
    pub request_bytes_plain: AtomicU64,
    pub request_bytes_sent: AtomicU64,
    /// Milliseconds from a message's Kafka timestamp (produce time) to the
    /// moment its changes are landed (durably marked) and its offset may be
    /// committed.
    pub latency: Latency,
    /// Rows re-shipped from the WAL at start.
    pub recovered: AtomicU64,
    /// WAL writes that failed with an I/O error (and were retried).
    pub wal_errors: AtomicU64,
    /// Partition revokes (rebalances), and those whose wait for in-flight
    /// changes ran out (`pipeline.shutdown_timeout`): the next owner re-reads
    /// what was still in flight.
    pub revokes: AtomicU64,
    pub revokes_timed_out: AtomicU64,
    /// The adaptive insertAll concurrency limit (src/sink/concurrency.rs).
    pub concurrency_limit: AtomicU64,
    /// MSK IAM tokens made for the group consumer, and refreshes that failed.
    pub kafka_tokens: Arc<TokenStats>,
    /// Offset commits issued.
    pub commits: AtomicU64,
    /// MERGE statements run, rows they changed, and failed attempts.
    pub merges: AtomicU64,
    pub merged_rows: AtomicU64,
    pub merge_failures: AtomicU64,
    /// Per final table: merges done and failed, rows changed, the last
    /// merge's duration and when the last one succeeded.
    pub table_merges: Mutex<BTreeMap<String, TableMerges>>,
    /// Message bytes read and not yet through their ship task (the batch
    /// being read plus the batches in flight), bounded by
    /// `pipeline.max_inflight_bytes` plus one message; and its high-water mark.
    pub inflight_bytes: AtomicU64,
    pub inflight_bytes_max: AtomicU64,
    /// Last committed offset per partition.
    pub committed: Mutex<Vec<(TopicPartition, i64)>>,
    /// Per partition: the next offset to read after the last message read,
    /// and the high watermark (from librdkafka's statistics).
    pub consumed_offsets: Mutex<BTreeMap<TopicPartition, i64>>,
    pub high_watermarks: Mutex<BTreeMap<TopicPartition, i64>>,
    /// When the pipeline began consuming (after recovery) and when a
    /// commit point last moved forward (ms since the epoch; 0: not yet).
    pub consuming_since_ms: AtomicU64,
    pub last_commit_advance_ms: AtomicU64,
}

/// Messages of a partition behind its commit point (none committed: all).
pub fn lag(high_watermark: i64, commit_point: Option<i64>) -> i64 {
    (high_watermark - commit_point.unwrap_or(0)).max(0)
}

/// What the merges of one final table did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableMerges {
    pub merges: u64,
    pub failures: u64,
    pub rows: u64,
    pub last_seconds: f64,
    /// ms since the epoch; 0: never.
    pub last_success_ms: u64,
    /// The watermark the last merge left (µs since the epoch).
    pub watermark_micros: Option<i64>,
}

/// A histogram of durations in seconds (5 ms to about 3 minutes), as
/// `/metrics` serves it.
#[derive(Debug)]
pub struct Seconds(pub Buckets);

impl Default for Seconds {
    fn default() -> Self {
        Seconds(Buckets::new(exponential_buckets(0.005, 2.0, 16)))
    }
}

impl Seconds {
    pub fn observe(&self, d: Duration) {
        self.0.observe(d.as_secs_f64());
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Locks `m`, also after a panic elsewhere poisoned it (the values are counters).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub type SharedMetrics = Arc<Metrics>;

/// SASL/OAUTHBEARER tokens handed to librdkafka, and refreshes that failed
/// (src/source/msk_iam.rs).
#[derive(Default, Debug)]
pub struct TokenStats {
    pub refreshes: AtomicU64,
    pub failures: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }

    /// Sets the `inflight_bytes` gauge and raises its high-water mark.
    pub fn set_inflight_bytes(&self, n: usize) {
        self.inflight_bytes.store(n as u64, Relaxed);
        self.inflight_bytes_max.fetch_max(n as u64, Relaxed);
    }

    pub fn record_commits(&self, points: &[(TopicPartition, i64)]) {
        let mut c = lock(&self.committed);
        let mut advanced = false;
        for (tp, off) in points {
            match c.iter_mut().find(|(t, _)| t == tp) {
                Some(entry) => {
                    advanced |= *off > entry.1;
                    entry.1 = *off;
                }
                None => {
                    advanced = true;
                    c.push((tp.clone(), *off));
                }
            }
        }
        c.sort();
        if advanced {
            self.last_commit_advance_ms.store(now_ms(), Relaxed);
        }
    }

    /// The next offset to read, per partition, after a batch was read.
    pub fn record_consumed(&self, batch: &[Msg]) {
        // A batch spans few partitions: their maxima first, one map key each.
        let mut read: Vec<(&str, i32, i64)> = Vec::new();
        for m in batch {
            match read.iter_mut().find(|(t, p, _)| *t == m.topic && *p == m.partition) {
                Some(e) => e.2 = e.2.max(m.offset + 1),
                None => read.push((&m.topic, m.partition, m.offset + 1)),
            }
        }
        let mut c = lock(&self.consumed_offsets);
        for (topic, partition, next) in read {
            let e = c.entry((topic.to_owned(), partition)).or_insert(next);
            *e = (*e).max(next);
        }
    }

    /// High watermarks from librdkafka's statistics.
    pub fn record_high_watermarks(&self, marks: impl IntoIterator<Item = (TopicPartition, i64)>) {
        let mut h = lock(&self.high_watermarks);
        for (tp, hw) in marks {
            h.insert(tp, hw);
        }
    }

    /// Messages behind per partition: high watermark minus commit point
    /// (partitions whose high watermark is known).
    pub fn lag(&self) -> Vec<(TopicPartition, i64)> {
        let committed = lock(&self.committed).clone();
        let marks = lock(&self.high_watermarks);
        marks.iter().map(|(tp, hw)| (tp.clone(), lag(*hw, committed.iter().find(|(t, _)| t == tp).map(|(_, o)| *o)))).collect()
    }

    /// Counts a dead letter under its stage (`Stage::name`: `decode` or `bigquery`).
    pub fn dead_letter(&self, stage: &str) {
        Self::add(&self.dead_lettered, 1);
        Self::add(if stage == "bigquery" { &self.dead_lettered_bigquery } else { &self.dead_lettered_decode }, 1);
    }

    /// Counts a control record of `kind`.
    pub fn control_record(&self, kind: &str) {
        Self::add(&self.control_records, 1);
        *lock(&self.control_kinds).entry(kind.to_owned()).or_default() += 1;
    }

    pub fn merge_succeeded(&self, table: &str, rows: u64, took: Duration, watermark_micros: Option<i64>) {
        let mut t = lock(&self.table_merges);
        let m = t.entry(table.to_owned()).or_default();
        m.watermark_micros = watermark_micros.or(m.watermark_micros);
        m.merges += 1;
        m.rows += rows;
        m.last_seconds = took.as_secs_f64();
        m.last_success_ms = now_ms();
    }

    pub fn merge_failed(&self, table: &str) {
        lock(&self.table_merges).entry(table.to_owned()).or_default().failures += 1;
    }

    /// Counts a change without transaction details; logs a warning the first
    /// time a table has one.
    pub fn change_without_transaction_details(&self, source_table: &str) {
        Self::add(&self.changes_without_transaction_details, 1);
        let mut warned = self.warned_without_transaction_details.lock().unwrap_or_else(|e| e.into_inner());
        if !warned.contains(source_table) {
            warned.insert(source_table.to_owned());
            tracing::warn!(
                table = source_table,
                "changes arrive without DMS transaction details (IncludeTransactionDetails=false): a change is identified by its \
                 content and Kafka position, and a copy published inside its own transaction after a later change of the same row \
                 cannot be told from a genuine repeat. Set IncludeTransactionDetails=true on the DMS Kafka endpoint (README, \
                 \"Recommended DMS settings\"). Counted in changes_without_transaction_details."
            );
        }
    }

    /// Logs one line with every counter.
    pub fn log_summary(&self) {
        let g = Self::get;
        let paused: Vec<String> = self.paused_tables.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        let latency = self.latency.snapshot();
        let committed: Vec<String> =
            self.committed.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|((t, p), o)| format!("{t}/{p}={o}")).collect();
        tracing::info!(
            consumed = g(&self.consumed),
            duplicates_absorbed = g(&self.duplicates_absorbed),
            shipped = g(&self.shipped),
            landed = g(&self.landed),
            dead_lettered = g(&self.dead_lettered),
            control_records = g(&self.control_records),
            truncates = g(&self.truncates),
            table_drops = g(&self.table_drops),
            ddl_reported = g(&self.ddl_reported),
            schema_columns_added = g(&self.schema_columns_added),
            merges_paused = g(&self.merges_paused),
            paused_tables = %paused.join(","),
            changes_without_transaction_details = g(&self.changes_without_transaction_details),
            skipped = g(&self.skipped),
            requests = g(&self.requests),
            request_retries = g(&self.request_retries),
            concurrency_limit = g(&self.concurrency_limit),
            untrusted_responses = g(&self.untrusted_responses),
            schema_propagation_retries = g(&self.schema_propagation_retries),
            recovered = g(&self.recovered),
            revokes = g(&self.revokes),
            revokes_timed_out = g(&self.revokes_timed_out),
            merges = g(&self.merges),
            merged_rows = g(&self.merged_rows),
            merge_failures = g(&self.merge_failures),
            wal_errors = g(&self.wal_errors),
            request_bytes_plain = g(&self.request_bytes_plain),
            request_bytes_sent = g(&self.request_bytes_sent),
            inflight_bytes = g(&self.inflight_bytes),
            inflight_bytes_max = g(&self.inflight_bytes_max),
            latency_samples = latency.len(),
            latency_p50_ms = latency.value_at_quantile(0.50),
            latency_p99_ms = latency.value_at_quantile(0.99),
            latency_max_ms = latency.max(),
            committed = %committed.join(","),
            "summary"
        );
    }
}

/// A histogram of latencies in milliseconds (1 ms to 1 day, 2 significant
/// digits) for the summary's percentiles, and the same samples in seconds in
/// buckets (10 ms to about 1.5 days) for `/metrics`.
#[derive(Debug)]
pub struct Latency(Mutex<Histogram<u64>>, pub Buckets);

impl Default for Latency {
    fn default() -> Self {
        Latency(
            Mutex::new(Histogram::new_with_bounds(1, 86_400_000, 2).expect("static histogram bounds are valid")),
            Buckets::new(exponential_buckets(0.01, 2.0, 24)),
        )
    }
}

impl Latency {
    /// Records `now - t` for each produce time `t` (Unix milliseconds).
    pub fn record_since(&self, produced_ms: &[i64], now_ms: i64) {
        if produced_ms.is_empty() {
            return;
        }
        let mut h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for &t in produced_ms {
            let ms = now_ms.saturating_sub(t).max(1) as u64;
            h.saturating_record(ms);
            self.1.observe(ms as f64 / 1000.0);
        }
    }

    pub fn snapshot(&self) -> Histogram<u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Resolves when `rx` holds `true`; never, if its sender is dropped first
/// (a dropped sender means nobody will ever ask to stop).
pub async fn signalled(mut rx: tokio::sync::watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

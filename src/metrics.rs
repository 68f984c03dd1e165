//! Counters, and the periodic summary line that prints them.
//!
//! Every counter only grows. `landfall run` logs a summary every
//! `observability.summary_interval`, with the commit point of every partition.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

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
    /// Messages and rows recorded as dead letters.
    pub dead_lettered: AtomicU64,
    /// Control records acknowledged.
    pub control_records: AtomicU64,
    /// Changes for unrouted tables acknowledged without shipping (non-strict routing).
    pub skipped: AtomicU64,
    /// insertAll requests sent, and those retried.
    pub requests: AtomicU64,
    pub request_retries: AtomicU64,
    /// Rows re-shipped from the WAL at start.
    pub recovered: AtomicU64,
    /// WAL writes that failed with an I/O error (and were retried).
    pub wal_errors: AtomicU64,
    /// Offset commits issued.
    pub commits: AtomicU64,
    /// MERGE statements run, rows they changed, and failed attempts.
    pub merges: AtomicU64,
    pub merged_rows: AtomicU64,
    pub merge_failures: AtomicU64,
    /// Last committed offset per partition.
    pub committed: Mutex<Vec<(TopicPartition, i64)>>,
}

pub type SharedMetrics = Arc<Metrics>;

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }

    pub fn record_commits(&self, points: &[(TopicPartition, i64)]) {
        let mut c = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        for (tp, off) in points {
            match c.iter_mut().find(|(t, _)| t == tp) {
                Some(entry) => entry.1 = *off,
                None => c.push((tp.clone(), *off)),
            }
        }
        c.sort();
    }

    /// Logs one line with every counter.
    pub fn log_summary(&self) {
        let g = Self::get;
        let committed: Vec<String> =
            self.committed.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|((t, p), o)| format!("{t}/{p}={o}")).collect();
        tracing::info!(
            consumed = g(&self.consumed),
            duplicates_absorbed = g(&self.duplicates_absorbed),
            shipped = g(&self.shipped),
            landed = g(&self.landed),
            dead_lettered = g(&self.dead_lettered),
            control_records = g(&self.control_records),
            skipped = g(&self.skipped),
            requests = g(&self.requests),
            request_retries = g(&self.request_retries),
            recovered = g(&self.recovered),
            merges = g(&self.merges),
            merged_rows = g(&self.merged_rows),
            merge_failures = g(&self.merge_failures),
            wal_errors = g(&self.wal_errors),
            committed = %committed.join(","),
            "summary"
        );
    }
}

/// Resolves when `rx` holds `true`; never, if its sender is dropped first
/// (a dropped sender means nobody will ever ask to stop).
pub async fn signalled(mut rx: tokio::sync::watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

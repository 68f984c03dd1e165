//! Merge: folding each CDC log table into its final table.
//!
//! A merge of one table:
//!
//! 1. reads the table's watermark `W` from the state table (none: from the start);
//! 2. finds `H`, the newest `_landfall_ingested` at or after `W - overlap`;
//! 3. records the newest delete per key in the window as a tombstone
//!    ([`sql::tombstone_statement`]), then runs the MERGE
//!    ([`sql::merge_statement`]) over `[W - overlap, H]`, leaving out changes
//!    no newer than their key's tombstone (so a replayed old change never
//!    brings a deleted row back);
//! 4. stores `H` as the new watermark.
//!
//! The cost of a merge is bounded by the rows ingested since the previous
//! one (plus the overlap), not by the log's history. The MERGE is idempotent
//! and monotonic per key, so a crash between 3 and 4, a rerun, or a full
//! merge (`landfall merge --full`) changes nothing that is already right.
//!
//! At most one mutating statement per table runs at a time from this process
//! (a lock per table); a failed merge is retried with backoff and counted, and
//! never stops delivery: the bridge keeps landing rows in the log meanwhile.
//! The log table is never deleted from (rows in the streaming buffer cannot
//! be mutated); its retention is partition expiration.

pub mod sql;
#[cfg(test)]
mod sql_check;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gcp_bigquery_client::error::BQError;
use tokio::sync::{watch, Mutex};

use crate::config::{Config, TableConfig};
use crate::decode::ident::{IdentError, Quoted};
use crate::metrics::{signalled, Metrics, SharedMetrics};
use crate::sink::client::{cell, classify, redact, BigQuery, Failure};
use sql::{MergeTarget, Window};

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("merge of {table} failed: {message}")]
    Query { table: String, message: String },
    #[error("merge of {table}: {source}")]
    Identifier { table: String, source: IdentError },
    #[error("merge of {table} interrupted by shutdown")]
    Shutdown { table: String },
}

/// What one merge did.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeReport {
    pub table: String,
    pub window: Option<Window>,
    /// Rows of the final table inserted, updated or deleted.
    pub affected_rows: u64,
}

pub struct Merger {
    bq: BigQuery,
    cfg: Arc<Config>,
    locks: HashMap<String, Mutex<()>>,
    metrics: SharedMetrics,
    shutdown: watch::Receiver<bool>,
}

/// Attempts of one statement before the merge is reported failed (the next
/// interval tries again).
const ATTEMPTS: u32 = 6;

fn is_retryable(e: &BQError) -> bool {
    match classify(e) {
        Failure::Transient(_) => true,
        Failure::Invalid(msg) => {
            let m = msg.to_ascii_lowercase();
            m.contains("could not serialize access") || m.contains("concurrent update") || m.contains("quota") || m.contains("rate limit")
        }
    }
}

impl Merger {
    pub fn new(bq: BigQuery, cfg: Arc<Config>, metrics: SharedMetrics, shutdown: watch::Receiver<bool>) -> Merger {
        let locks = cfg.tables.iter().map(|t| (t.final_table.clone(), Mutex::new(()))).collect();
        Merger { bq, cfg, locks, metrics, shutdown }
    }

    /// Runs `sql`, retrying transient errors (incl. concurrent-update
    /// conflicts and quota errors) with backoff.
    async fn run(&self, table: &str, sql: &str) -> Result<gcp_bigquery_client::model::query_response::QueryResponse, MergeError> {
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=ATTEMPTS {
            match self.bq.query(sql).await {
                Ok(r) => return Ok(r),
                Err(e) if attempt < ATTEMPTS && is_retryable(&e) => {
                    Metrics::add(&self.metrics.merge_failures, 1);
                    tracing::warn!(table, attempt, error = %redact(&e), "merge statement failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = signalled(self.shutdown.clone()) => return Err(MergeError::Shutdown { table: table.into() }),
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                Err(e) => {
                    Metrics::add(&self.metrics.merge_failures, 1);
                    return Err(MergeError::Query { table: table.into(), message: redact(&e) });
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn scalar_i64(&self, table: &str, sql: &str) -> Result<Option<i64>, MergeError> {
        let resp = self.run(table, sql).await?;
        let v = resp.rows.as_ref().and_then(|rows| rows.first()).and_then(|r| cell(r, 0));
        Ok(v.and_then(|s| s.parse::<i64>().ok()))
    }

    /// Merges one table. `full` ignores the watermark and reads the whole log.
    #[tracing::instrument(skip_all, fields(table = %t.final_table, full))]
    pub async fn merge_table(&self, t: &TableConfig, full: bool) -> Result<MergeReport, MergeError> {
        let name = t.final_table.as_str();
        let ident = |source| MergeError::Identifier { table: name.into(), source };
        let _guard = match self.locks.get(name) {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let target = MergeTarget::new(
            &self.bq.project,
            &self.bq.dataset,
            &t.log_table,
            &t.final_table,
            &t.primary_key,
            &t.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        )
        .and_then(|m| m.keep_when_missing(&t.keep_when_missing))
        .map_err(ident)?;
        let state = Quoted::table_path(&self.bq.project, &self.bq.dataset, &self.cfg.bigquery.state_table).map_err(ident)?;
        let watermark =
            if full { None } else { self.scalar_i64(name, &sql::read_watermark_statement(&state, name).map_err(ident)?).await? };
        let overlap = self.cfg.merge.overlap.as_micros() as i64;
        let from = watermark.map(|w| w.saturating_sub(overlap));
        let Some(to) = self.scalar_i64(name, &sql::max_ingested_statement(&target.log, from)).await? else {
            return Ok(MergeReport { table: name.into(), window: None, affected_rows: 0 });
        };
        let window = Window { from_micros: from, to_micros: to };
        // Tombstones first: a crash between the two statements is repaired
        // by the next merge, which runs both again over the same window.
        self.run(name, &sql::tombstone_statement(&target, &window)).await?;
        let resp = self.run(name, &sql::merge_statement(&target, &window)).await?;
        let affected = resp.num_dml_affected_rows.as_deref().and_then(|n| n.parse().ok()).unwrap_or(0);
        crate::failpoint::hit(crate::failpoint::MID_MERGE);
        // The watermark never moves backwards (a full merge may see less).
        let new_mark = watermark.map_or(to, |w| w.max(to));
        self.run(name, &sql::write_watermark_statement(&state, name, new_mark).map_err(ident)?).await?;
        Metrics::add(&self.metrics.merges, 1);
        Metrics::add(&self.metrics.merged_rows, affected);
        tracing::info!(table = name, affected_rows = affected, from = ?window.from_micros, to = window.to_micros, "merged");
        Ok(MergeReport { table: name.into(), window: Some(window), affected_rows: affected })
    }

    /// Merges every configured table, one after the other.
    pub async fn merge_all(&self, full: bool) -> Vec<Result<MergeReport, MergeError>> {
        let mut out = Vec::with_capacity(self.cfg.tables.len());
        for t in &self.cfg.tables {
            out.push(self.merge_table(t, full).await);
        }
        out
    }

    /// Merges every table each `merge.interval` until shutdown. Failures are
    /// logged and counted; the next interval tries again.
    pub async fn run_periodic(self: Arc<Self>) {
        let interval = self.cfg.merge.interval;
        if interval.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                biased;
                _ = signalled(self.shutdown.clone()) => return,
                _ = tick.tick() => {}
            }
            for t in &self.cfg.tables {
                if *self.shutdown.borrow() {
                    return;
                }
                if let Err(e) = self.merge_table(t, false).await {
                    tracing::error!(error = %e, "merge failed; delivery continues, the next interval retries");
                }
            }
        }
    }
}

//! Merge: folding each CDC log table into its final table.
//!
//! A merge of one table:
//!
//! 1. reads the table's watermark `W` from the state table (none: from the start);
//! 2. finds `H`, the newest `_landfall_ingested` at or after `W - overlap`;
//! 3. records the newest truncate and drop-table markers of the window in
//!    the table's state row ([`sql::ddl_record_statement`]) and deletes the
//!    final rows not newer than the truncation point
//!    ([`sql::truncate_statement`]); if the table's newest drop is newer
//!    than the one the operator last resumed from, the merge stops here,
//!    paused (below);
//! 4. records the newest delete per key in the window as a tombstone
//!    ([`sql::tombstone_statement`]), then runs the MERGE
//!    ([`sql::merge_statement`]) over `[W - overlap, H]`, leaving out changes
//!    no newer than their key's tombstone or the truncation point (so a
//!    replayed old change never brings a deleted or truncated row back);
//! 5. stores `H` as the new watermark.
//!
//! Every statement is idempotent and each one's effect is recorded before a
//! later one depends on it, so a crash between any two (or a rerun, or a
//! full merge) is repaired by the next merge over the same window.
//!
//! **Paused tables.** A drop-table stops a table's merge until the operator
//! runs `landfall ddl resume` ([`Merger::resume_table`]). While paused, a
//! merge logs an ERROR, counts `merges_paused`, and changes nothing; the
//! watermark stays before the drop, so nothing landed meanwhile is skipped:
//! the first merge after the resume reads everything since. The log rows
//! must outlive the pause (`bigquery.log_partition_expiration`).
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

pub mod command;
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
    /// Rows deleted because the source table was truncated or dropped.
    pub truncated_rows: u64,
    /// Set when the table's merge is paused by a drop-table: the ordering
    /// value of the drop. Nothing was merged and the watermark did not move.
    pub paused_by_drop: Option<String>,
    /// The table's watermark after this merge (µs since the epoch; none:
    /// nothing merged yet): every change ingested before `watermark -
    /// merge.overlap` is in the final table.
    pub watermark_micros: Option<i64>,
}

pub struct Merger {
    bq: BigQuery,
    cfg: Arc<Config>,
    locks: HashMap<String, Mutex<()>>,
    metrics: SharedMetrics,
    shutdown: watch::Receiver<bool>,
}

/// How many times a merge re-runs its window for columns added meanwhile.
const REMERGES: usize = 3;

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

    /// A merger outside the service (`landfall merge`, `ddl resume`, the
    /// harness): its own counters, and nothing ever asks it to stop early.
    pub fn one_shot(bq: BigQuery, cfg: Arc<Config>) -> Merger {
        let (_never, rx) = watch::channel(false);
        Merger::new(bq, cfg, Arc::new(crate::metrics::Metrics::default()), rx)
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

    /// The cells of the first row of `sql`'s answer (NULL as None).
    async fn first_row(&self, table: &str, sql: &str, width: usize) -> Result<Vec<Option<String>>, MergeError> {
        let resp = self.run(table, sql).await?;
        let row = resp.rows.as_ref().and_then(|rows| rows.first());
        Ok((0..width).map(|i| row.and_then(|r| cell(r, i))).collect())
    }

    /// The newest drop of the table that the operator has not resumed from.
    async fn unresumed_drop(&self, name: &str, state: &Quoted) -> Result<Option<String>, MergeError> {
        let ident = |source| MergeError::Identifier { table: name.into(), source };
        let cells = self.first_row(name, &sql::read_drop_statement(state, name).map_err(ident)?, 2).await?;
        Ok(match (cells[0].clone(), cells[1].as_deref()) {
            (Some(dropped), resumed) if resumed.is_none_or(|r| r < dropped.as_str()) => Some(dropped),
            _ => None,
        })
    }

    /// Says loudly that `t`'s merge is paused by a drop, and counts it.
    fn paused(&self, t: &TableConfig, window: Option<Window>, dropped: String, truncated_rows: u64) -> MergeReport {
        let name = t.final_table.as_str();
        Metrics::add(&self.metrics.merges_paused, 1);
        self.metrics.paused_tables.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned());
        tracing::error!(
            table = name,
            source = %t.source,
            dropped_at = %dropped,
            log_partition_expiration = ?self.cfg.bigquery.log_partition_expiration,
            "merge PAUSED: the source table was dropped; its final table was emptied as of the drop and changes after it \
             stay in the log table, unmerged. Re-create the source table (or remove it from the config), then run \
             `landfall ddl resume --table {name}`. Resume before the log's partitions expire (log_partition_expiration), \
             or the changes after the drop are lost to the final table"
        );
        MergeReport {
            table: name.into(),
            window,
            affected_rows: truncated_rows,
            truncated_rows,
            paused_by_drop: Some(dropped),
            watermark_micros: None,
        }
    }

    /// Lets the merge of `t` go on after a drop-table (the operator's
    /// `landfall ddl resume`): the drop recorded for it is resumed from, and
    /// the next merge applies the changes after it. Returns the drop's
    /// ordering value, or `None` if no drop was recorded. A drop that lands
    /// later pauses the table again.
    pub async fn resume_table(&self, t: &TableConfig) -> Result<Option<String>, MergeError> {
        let name = t.final_table.as_str();
        let ident = |source| MergeError::Identifier { table: name.into(), source };
        let _guard = match self.locks.get(name) {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let state = Quoted::table_path(&self.bq.project, &self.bq.dataset, &self.cfg.bigquery.state_table).map_err(ident)?;
        let Some(dropped) = self.unresumed_drop(name, &state).await? else {
            return Ok(None);
        };
        self.run(name, &sql::resume_statement(&state, name).map_err(ident)?).await?;
        self.metrics.paused_tables.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        tracing::warn!(table = name, dropped_at = %dropped, "merge resumed after a drop-table: the next merge applies the changes after it");
        Ok(Some(dropped))
    }

    async fn scalar_i64(&self, table: &str, sql: &str) -> Result<Option<i64>, MergeError> {
        let resp = self.run(table, sql).await?;
        let v = resp.rows.as_ref().and_then(|rows| rows.first()).and_then(|r| cell(r, 0));
        Ok(v.and_then(|s| s.parse::<i64>().ok()))
    }

    /// Merges one table. `full` ignores the watermark and reads the whole log.
    #[tracing::instrument(skip_all, fields(table = %t.final_table, full))]
    pub async fn merge_table(&self, t: &TableConfig, full: bool) -> Result<MergeReport, MergeError> {
        let started = std::time::Instant::now();
        let result = self.merge_once(t, full).await;
        match &result {
            Ok(r) if r.paused_by_drop.is_none() => {
                self.metrics.merge_succeeded(&r.table, r.affected_rows, started.elapsed(), r.watermark_micros)
            }
            Ok(_) => {}
            Err(_) => self.metrics.merge_failed(&t.final_table),
        }
        result
    }

    async fn merge_once(&self, t: &TableConfig, full: bool) -> Result<MergeReport, MergeError> {
        let name = t.final_table.as_str();
        let ident = |source| MergeError::Identifier { table: name.into(), source };
        let _guard = match self.locks.get(name) {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let mut target = self.target(t, &t.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>())?;
        let state = Quoted::table_path(&self.bq.project, &self.bq.dataset, &self.cfg.bigquery.state_table).map_err(ident)?;
        // Paused by a drop found earlier: nothing to do until the operator resumes.
        if let Some(dropped) = self.unresumed_drop(name, &state).await? {
            return Ok(self.paused(t, None, dropped, 0));
        }
        self.metrics.paused_tables.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        let watermark =
            if full { None } else { self.scalar_i64(name, &sql::read_watermark_statement(&state, name).map_err(ident)?).await? };
        let overlap = self.cfg.merge.overlap.as_micros() as i64;
        let from = watermark.map(|w| w.saturating_sub(overlap));
        let Some(to) = self.scalar_i64(name, &sql::max_ingested_statement(&target.log, from)).await? else {
            return Ok(MergeReport {
                table: name.into(),
                window: None,
                affected_rows: 0,
                truncated_rows: 0,
                paused_by_drop: None,
                watermark_micros: watermark,
            });
        };
        let window = Window { from_micros: from, to_micros: to };
        // Read after the window is fixed: a column that rows of the window
        // carry was in both tables before those rows were (the pipeline
        // adds it to the final table, then to the log, then ships).
        if self.evolving() {
            target = self.target(t, &self.merge_columns(t).await?)?;
        }
        let count = |resp: &gcp_bigquery_client::model::query_response::QueryResponse| -> u64 {
            resp.num_dml_affected_rows.as_deref().and_then(|n| n.parse().ok()).unwrap_or(0)
        };
        // Truncates and drops first: recorded in the state row, then the
        // final rows they remove are deleted. Each statement is idempotent and
        // reads what the previous one recorded, so a crash between any two is
        // repaired by the next merge, which runs them all again over the
        // same window (the watermark moves only at the end).
        let mut truncated_rows = 0;
        if let (Some(record), Some(truncate)) = (sql::ddl_record_statement(&target, &window), sql::truncate_statement(&target)) {
            // It touches the state row only when the window holds a marker;
            // then (and after a crash, when the same window is read again)
            // the final table is scanned for rows to delete.
            if count(&self.run(name, &record).await?) > 0 {
                truncated_rows = count(&self.run(name, &truncate).await?);
            }
            if truncated_rows > 0 {
                tracing::warn!(table = name, rows = truncated_rows, "deleted final rows older than the source table's truncate or drop");
            }
        }
        if let Some(dropped) = self.unresumed_drop(name, &state).await? {
            return Ok(self.paused(t, Some(window), dropped, truncated_rows));
        }
        // Tombstones next: a crash between them and the MERGE is repaired
        // the same way.
        self.run(name, &sql::tombstone_statement(&target, &window)).await?;
        let resp = self.run(name, &sql::merge_statement(&target, &window)).await?;
        let affected = count(&resp) + truncated_rows;
        // A column added while the MERGE ran (rows carrying it may be in the
        // window): the window is merged again with it, the changes the final
        // rows hold included, before the watermark moves past them.
        for _ in 0..REMERGES {
            if !self.evolving() {
                break;
            }
            let columns = self.merge_columns(t).await?;
            if columns.len() == target.columns.len() {
                break;
            }
            tracing::info!(
                table = name,
                columns = columns.len() - target.columns.len(),
                "columns were added during the merge: merging its window again with them"
            );
            target = MergeTarget { reapply_equal: true, ..self.target(t, &columns)? };
            self.run(name, &sql::merge_statement(&target, &window)).await?;
        }
        crate::failpoint::hit(crate::failpoint::MID_MERGE);
        // The watermark never moves backwards (a full merge may see less).
        let new_mark = watermark.map_or(to, |w| w.max(to));
        self.run(name, &sql::write_watermark_statement(&state, name, new_mark).map_err(ident)?).await?;
        Metrics::add(&self.metrics.merges, 1);
        Metrics::add(&self.metrics.merged_rows, affected);
        tracing::info!(table = name, affected_rows = affected, from = ?window.from_micros, to = window.to_micros, "merged");
        Ok(MergeReport {
            table: name.into(),
            window: Some(window),
            affected_rows: affected,
            truncated_rows,
            paused_by_drop: None,
            watermark_micros: Some(new_mark),
        })
    }

    fn evolving(&self) -> bool {
        self.cfg.schema.evolve == crate::config::Evolve::AddColumns
    }

    /// The MERGE of `t` carrying `columns`.
    fn target(&self, t: &TableConfig, columns: &[String]) -> Result<MergeTarget, MergeError> {
        let ident = |source| MergeError::Identifier { table: t.final_table.clone(), source };
        MergeTarget::new(&self.bq.project, &self.bq.dataset, &t.log_table, &t.final_table, &t.primary_key, columns)
            .and_then(|m| m.keep_when_missing(&t.keep_when_missing))
            .and_then(|m| m.with_state(&self.bq.project, &self.bq.dataset, &self.cfg.bigquery.state_table, &t.final_table))
            .map_err(ident)
    }

    /// The columns a MERGE of `t` carries with schema evolution: the
    /// configured ones, then the source columns both its log and final
    /// table hold (added by the pipeline, in this run or an earlier one),
    /// in log-table order. A name that is not a valid column name is left
    /// out (it never reaches SQL).
    async fn merge_columns(&self, t: &TableConfig) -> Result<Vec<String>, MergeError> {
        let failed = |e: crate::sink::schema::SchemaError| MergeError::Query { table: t.final_table.clone(), message: e.to_string() };
        let mut columns: Vec<String> = t.columns.iter().map(|c| c.name.clone()).collect();
        let in_final = self.bq.source_columns(&t.final_table).await.map_err(failed)?;
        for c in self.bq.source_columns(&t.log_table).await.map_err(failed)? {
            let known = |have: &[String]| have.iter().any(|h| h.eq_ignore_ascii_case(&c.name));
            if !known(&columns)
                && in_final.iter().any(|f| f.name.eq_ignore_ascii_case(&c.name))
                && crate::decode::ident::validate_column(&c.name).is_ok()
            {
                columns.push(c.name);
            }
        }
        Ok(columns)
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

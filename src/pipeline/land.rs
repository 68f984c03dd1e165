//! The WAL flush of a batch's pending records, then steps 3 and 4: ship the
//! rows with insertAll (insertId = dedup key), and flush their outcomes
//! (landed marks; for refused rows, rejection marks and dead letters, which
//! are then shipped to the dead-letter table the same way) in one WAL batch.
//! A key is resolved only once that flush has returned.

use std::sync::Arc;
use std::time::Duration;

use crate::decode::Rejection;
use crate::key::DedupKey;
use crate::metrics::Metrics;
use crate::sink::{RowOutcome, Sink, SinkError};
use crate::table::LogRow;
use crate::wal::{now_ms, Wal, WalBatch, WalError};

use super::letters::{dead_letter_row, refused_row_letter};
use super::prepare::{pending_record, Groups, Origins};
use super::PipelineError;

pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, WalError> + Send + 'static) -> Result<T, PipelineError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| PipelineError::Task(e.to_string()))?.map_err(PipelineError::from)
}

/// Flushes `batch` to the WAL (durable on return). An I/O error (a full disk, a failing
/// device) is retried with backoff for as long as it lasts: meanwhile nothing
/// is consumed or acknowledged, and the error is logged with what to do.
/// Other WAL errors (damage) are fatal.
pub async fn flush_durably(wal: &Wal, batch: WalBatch, metrics: &Metrics) -> Result<(), PipelineError> {
    let mut delay = Duration::from_millis(100);
    // Shared with each attempt, not copied: a batch holds every row's JSON.
    let batch = Arc::new(batch);
    loop {
        let (w, b) = (wal.clone(), batch.clone());
        match blocking(move || w.flush(&b)).await {
            Ok(()) => return Ok(()),
            Err(PipelineError::Wal(WalError::Io(e))) => {
                Metrics::add(&metrics.wal_errors, 1);
                tracing::error!(
                    error = %e,
                    retry_in = ?delay,
                    "WAL write failed (disk full or failing?): not consuming or acknowledging anything until it succeeds; free space under wal.path"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// What [`ship_and_land`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Shipped {
    /// Every row is resolved, durably: landed, or refused and dead-lettered.
    Resolved(Resolved),
    /// A shutdown interrupted the shipping: nothing was acknowledged, and
    /// the rows stay pending in the WAL (re-shipped at the next start).
    Interrupted,
}

/// The rows [`ship_and_land`] resolved.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Every key resolved (rows landed or dead-lettered, and the dead
    /// letters' own rows): the messages waiting for them can complete.
    pub keys: Vec<DedupKey>,
    /// Rows that landed in their table (dead-letter rows included).
    pub landed: usize,
    /// Rows BigQuery refused, now dead letters.
    pub dead_lettered: usize,
}

/// Steps 3 and 4: ships `groups` (already pending in the WAL), flushes the
/// outcomes, and returns what it resolved. `origins` names the message of
/// each row, for the dead letter of a row BigQuery refuses.
pub async fn ship_and_land(
    wal: &Wal,
    sink: &Arc<dyn Sink>,
    dead_letter_table: &str,
    groups: Groups,
    origins: &Origins,
    metrics: &Metrics,
) -> Result<Shipped, PipelineError> {
    let shipped = futures::future::join_all(groups.iter().map(|(table, rows)| sink.ship(table, rows))).await;
    crate::failpoint::hit(crate::failpoint::AFTER_INSERT_ALL);
    let mut batch = WalBatch::default();
    let mut resolved = Vec::new();
    let mut dead = Vec::new();
    let now = now_ms();
    for ((table, rows), outcome) in groups.iter().zip(shipped) {
        let outcome = match outcome {
            Ok(o) => o,
            Err(SinkError::Shutdown) => return Ok(Shipped::Interrupted),
        };
        for (row, o) in rows.iter().zip(outcome) {
            match o {
                RowOutcome::Landed => {
                    batch.landed(&row.key, now);
                    resolved.push(row.key);
                }
                RowOutcome::Rejected(reason) if table != dead_letter_table => {
                    tracing::warn!(table, key = %row.key, reason, "row rejected by BigQuery; dead-lettering it");
                    let origin = origins.of(row).await;
                    let mut d = refused_row_letter(table, row, origin.as_deref(), Rejection::RejectedBySink(reason).to_string());
                    d.at_ms = now;
                    batch.rejected(&row.key, now);
                    resolved.push(row.key);
                    dead.push(d);
                }
                RowOutcome::Rejected(reason) => {
                    // The dead-letter table refused the dead letter itself: it
                    // stays in the WAL's dead-letter store, durable and listed
                    // by `landfall dlq list`; nothing is lost.
                    tracing::error!(key = %row.key, reason, "dead-letter table rejected a dead letter; it is kept in the WAL only");
                    batch.rejected(&row.key, now);
                    resolved.push(row.key);
                }
            }
        }
    }
    let landed = resolved.len().saturating_sub(dead.len());
    Metrics::add(&metrics.landed, landed as u64);
    if !dead.is_empty() {
        // Record the dead letters (and their rows as pending) in the same
        // durable batch as the rejection marks, then ship them.
        let rows: Vec<LogRow> = dead.iter().map(dead_letter_row).collect();
        for (d, r) in dead.iter().zip(&rows) {
            batch.dead_letter(d);
            batch.pending(&r.key, pending_record(dead_letter_table, r));
        }
        for d in &dead {
            metrics.dead_letter(d.stage.name());
        }
        flush_durably(wal, batch, metrics).await?;
        crate::failpoint::hit(crate::failpoint::AFTER_LANDED_FLUSH);
        let more =
            Box::pin(ship_and_land(wal, sink, dead_letter_table, vec![(dead_letter_table.to_owned(), rows)], &Origins::new(), metrics))
                .await?;
        return Ok(match more {
            Shipped::Resolved(more) => {
                resolved.extend(more.keys);
                Shipped::Resolved(Resolved { keys: resolved, landed: landed + more.landed, dead_lettered: dead.len() + more.dead_lettered })
            }
            Shipped::Interrupted => Shipped::Interrupted,
        });
    }
    flush_durably(wal, batch, metrics).await?;
    crate::failpoint::hit(crate::failpoint::AFTER_LANDED_FLUSH);
    Ok(Shipped::Resolved(Resolved { keys: resolved, landed, dead_lettered: 0 }))
}

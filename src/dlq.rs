//! Dead letters: inspecting them and re-driving them after a fix.
//!
//! A dead letter is recorded durably in the WAL (with the message's value, or
//! its first 256 KiB plus length and hash) and in the BigQuery dead-letter
//! table, before its offset becomes committable. `landfall dlq list|show`
//! reads the WAL's copy; `landfall dlq replay` decodes the recorded value
//! again with the current config (say, after adding a column), ships the
//! rows through the same WAL -> insertAll -> landed path as live traffic,
//! and marks the dead letter replayed. A dead letter that still fails keeps
//! its state and is reported with the new reason. The dead-letter table is
//! append-only (a log); the WAL records what was replayed.

use std::sync::Arc;

use crate::config::Config;
use crate::log::{now_ms, DeadLetter, Wal, WalBatch, WalError};
use crate::metrics::Metrics;
use crate::pipeline::{commit_durably, group, pending_record, plan, ship_and_land, Msg, PipelineError, Plan};
use crate::sink::{ShipRow, Sink, SinkError};

/// `topic/partition@offset`, how dead letters are named on the command line.
pub fn id(d: &DeadLetter) -> String {
    format!("{}/{}@{}", d.topic, d.partition, d.offset)
}

/// What became of one dead letter in a replay.
#[derive(Debug, Clone, PartialEq)]
pub enum Replayed {
    /// Its rows landed (or it is now acknowledged without rows).
    Landed { rows: usize },
    /// It still cannot become a row.
    StillFailing { reason: String },
    /// Only a prefix of the value was kept: re-drive it from Kafka instead.
    Truncated,
    /// Replayed earlier already.
    AlreadyReplayed,
}

/// Re-drives the dead letters `select` picks. The service must be stopped
/// (the WAL is opened by one process at a time).
pub async fn replay(
    cfg: &Config,
    wal: &Wal,
    sink: &Arc<dyn Sink>,
    metrics: &Metrics,
    select: impl Fn(&DeadLetter) -> bool,
) -> Result<Vec<(String, Replayed)>, PipelineError> {
    let letters: Vec<DeadLetter> = wal.dead_letters().collect::<Result<Vec<_>, WalError>>()?;
    let mut out = Vec::new();
    for d in letters.into_iter().filter(|d| select(d)) {
        if wal.replayed_at(&d)?.is_some() {
            out.push((id(&d), Replayed::AlreadyReplayed));
            continue;
        }
        if d.payload_len as usize != d.payload_prefix.len() {
            out.push((id(&d), Replayed::Truncated));
            continue;
        }
        let payload = if d.payload_len == 0 && d.reason.contains("tombstone") { None } else { Some(d.payload_prefix.clone()) };
        let msg = Msg { topic: d.topic.clone(), partition: d.partition, offset: d.offset, payload, produced_ms: None };
        let result = match plan(cfg, &msg, metrics) {
            Plan::Dead(again) => Replayed::StillFailing { reason: again.reason },
            Plan::Ack => {
                let mut b = WalBatch::default();
                b.dead_letter_replayed(&d, now_ms());
                commit_durably(wal, b, metrics).await?;
                Replayed::Landed { rows: 0 }
            }
            Plan::Rows(rows) => {
                // The same discipline as live traffic: pending first (this
                // overrides a `rejected` mark of the same key), then ship.
                let rows: Vec<(String, ShipRow)> = rows.into_iter().map(|(t, r)| (t, ShipRow { key: r.key, json: r.json })).collect();
                let mut b = WalBatch::default();
                for (table, row) in &rows {
                    b.pending(&row.key, &pending_record(table, row)?);
                }
                commit_durably(wal, b, metrics).await?;
                let n = rows.len();
                let this = Metrics::default();
                let shipped = ship_and_land(wal, sink, &cfg.bigquery.dead_letter_table, group(rows), &this).await?;
                Metrics::add(&metrics.landed, Metrics::get(&this.landed));
                Metrics::add(&metrics.dead_lettered, Metrics::get(&this.dead_lettered));
                match shipped {
                    Err(SinkError::Shutdown) => return Err(PipelineError::Task("replay interrupted".into())),
                    Ok(_) if Metrics::get(&this.dead_lettered) > 0 => {
                        // BigQuery rejected a row again: it is a new dead letter.
                        Replayed::StillFailing { reason: "BigQuery rejected the row again (see the new dead letter)".into() }
                    }
                    Ok(_) => {
                        let mut b = WalBatch::default();
                        b.dead_letter_replayed(&d, now_ms());
                        commit_durably(wal, b, metrics).await?;
                        Replayed::Landed { rows: n }
                    }
                }
            }
        };
        out.push((id(&d), result));
    }
    Ok(out)
}

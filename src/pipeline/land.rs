//! The WAL flush of a batch's pending records, then steps 3 and 4: ship the
//! rows with insertAll (insertId = dedup key), and flush their outcomes
//! (landed marks; for refused rows, rejection marks and dead letters, which
//! are then shipped to the dead-letter table the same way) in one WAL batch.
//! A key is resolved only once that flush has returned.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::Config;
use crate::decode::row::{self, Coords};
use crate::decode::Rejection;
use crate::key::DedupKey;
use crate::metrics::Metrics;
use crate::sink::{RowOutcome, Sink, SinkError};
use crate::source::kafka;
use crate::table::LogRow;
use crate::wal::{now_ms, PendingRecord, Wal, WalBatch, WalError};

use super::letters::{dead_letter_row, refused_row_letter};
use super::prepare::{plan, Plan};
use super::{Msg, PipelineError};

/// The message each row to ship came from: the dead letter of a row
/// BigQuery refuses keeps that message. Rows re-shipped after a restart have
/// no message in memory; with [`Origins::reading_kafka`] it is read from
/// Kafka again (and checked to be the one that built the row).
#[derive(Default)]
pub struct Origins {
    known: HashMap<DedupKey, Arc<Msg>>,
    reread: Option<Arc<Config>>,
    /// Set when a read from Kafka failed: the others are not tried (a
    /// broker that is down would cost each refused row the read timeout).
    reread_failed: std::sync::atomic::AtomicBool,
}

impl Origins {
    pub fn new() -> Origins {
        Origins::default()
    }

    /// No message in memory: read a refused row's message from Kafka again.
    pub fn reading_kafka(cfg: Arc<Config>) -> Origins {
        Origins { reread: Some(cfg), ..Origins::default() }
    }

    pub fn insert(&mut self, key: DedupKey, msg: Arc<Msg>) {
        self.known.insert(key, msg);
    }

    /// The message of `row`, if it is at hand or can be read again.
    async fn of(&self, row: &LogRow) -> Option<Arc<Msg>> {
        if let Some(m) = self.known.get(&row.key) {
            return Some(m.clone());
        }
        use std::sync::atomic::Ordering::Relaxed;
        let cfg = self.reread.clone().filter(|_| !self.reread_failed.load(Relaxed))?;
        let at = coords_of(&row.json);
        let key = row.key;
        let read = tokio::task::spawn_blocking(move || {
            let msg = kafka::read_one(&cfg.kafka, &at.topic, at.partition, at.offset, Duration::from_secs(10))?;
            // The offset may hold another message now (a re-created topic).
            Some(match plan(&cfg, &msg, &Metrics::default()) {
                Plan::Rows(rows) if rows.iter().any(|(_, r)| r.key == key) => Some(Arc::new(msg)),
                _ => None,
            })
        })
        .await
        .ok()
        .flatten();
        if read.is_none() {
            self.reread_failed.store(true, Relaxed);
            tracing::warn!(key = %row.key, "could not read a refused row's message from Kafka again; its dead letter (and any later one of this recovery) keeps the row only");
        }
        read.flatten()
    }
}

impl FromIterator<(DedupKey, Arc<Msg>)> for Origins {
    fn from_iter<I: IntoIterator<Item = (DedupKey, Arc<Msg>)>>(iter: I) -> Origins {
        Origins { known: iter.into_iter().collect(), ..Origins::default() }
    }
}

pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, WalError> + Send + 'static) -> Result<T, PipelineError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| PipelineError::Task(e.to_string()))?.map_err(PipelineError::from)
}

/// Flushes `batch` to the WAL (durable on return). An I/O error (a full disk, a failing
/// device) is retried with backoff for as long as it lasts: meanwhile nothing
/// is consumed or acknowledged, and the error is logged with what to do.
/// Other WAL errors (damage) are fatal.
pub async fn flush_durably(wal: &Wal, batch: WalBatch, metrics: &Metrics) -> Result<(), PipelineError> {
    let mut delay = Duration::from_millis(100);
    loop {
        let (w, b) = (wal.clone(), batch.clone());
        match blocking(move || w.flush(b)).await {
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

/// Rows grouped by destination table.
pub type Groups = Vec<(String, Vec<LogRow>)>;

pub fn group(rows: impl IntoIterator<Item = (String, LogRow)>) -> Groups {
    let mut map: HashMap<String, Vec<LogRow>> = HashMap::new();
    for (table, row) in rows {
        map.entry(table).or_default().push(row);
    }
    let mut v: Groups = map.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
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
                    let mut d = refused_row_letter(table, row, origin.as_deref(), Rejection::RejectedBySink(reason).to_string())?;
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
            batch.pending(&r.key, &pending_record(dead_letter_table, r)?);
        }
        Metrics::add(&metrics.dead_lettered, dead.len() as u64);
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

/// The Kafka coordinates a log row records.
pub(super) fn coords_of(json: &Map<String, Value>) -> Coords {
    Coords {
        topic: json.get(row::COL_TOPIC).and_then(Value::as_str).unwrap_or("").to_owned(),
        partition: json.get(row::COL_PARTITION).and_then(Value::as_i64).unwrap_or(-1) as i32,
        offset: json.get(row::COL_OFFSET).and_then(Value::as_i64).unwrap_or(-1),
    }
}

/// The WAL record of a row to ship. A row that does not serialize is an
/// error, never an empty record (which recovery would refuse as damaged).
pub fn pending_record(table: &str, row: &LogRow) -> Result<PendingRecord, PipelineError> {
    let json = serde_json::to_vec(&row.json).map_err(|e| PipelineError::RowEncode {
        table: table.to_owned(),
        key: row.key.to_hex(),
        message: e.to_string(),
    })?;
    Ok(PendingRecord { table: table.to_owned(), row: json, written_at_ms: now_ms() })
}

//! Recovery at start: every pending WAL record is shipped again with its
//! original insertId (and its outcome flushed) before anything new is
//! consumed, in chunks bounded like live batches.

use std::sync::Arc;

use crate::config::Config;
use crate::key::DedupKey;
use crate::metrics::Metrics;
use crate::sink::Sink;
use crate::table::LogRow;
use crate::wal::{PendingRecord, Wal};

use super::land::{blocking, ship_and_land, Shipped};
use super::prepare::{group, Origins};
use super::PipelineError;

/// How recovery ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovered {
    /// Every pending record was re-shipped and resolved; how many.
    Complete(usize),
    /// A shutdown interrupted it; what is left stays pending.
    Interrupted,
}

/// Re-ships every pending WAL record with its original insertId.
pub async fn recover(wal: &Wal, sink: &Arc<dyn Sink>, cfg: &Arc<Config>, metrics: &Metrics) -> Result<Recovered, PipelineError> {
    // Re-shipped in chunks of at most CHUNK rows and about
    // `pipeline.max_inflight_bytes` of rows (plus one row).
    const CHUNK: usize = 20_000;
    let max_bytes = cfg.pipeline.max_inflight_bytes;
    let mut total = 0;
    loop {
        let w = wal.clone();
        let chunk: Vec<(DedupKey, PendingRecord)> = blocking(move || {
            let (mut chunk, mut bytes) = (Vec::new(), 0usize);
            for item in w.pending() {
                let (key, rec) = item?;
                bytes += rec.row.len();
                chunk.push((key, rec));
                if chunk.len() >= CHUNK || bytes >= max_bytes {
                    break;
                }
            }
            Ok(chunk)
        })
        .await?;
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        let mut rows = Vec::with_capacity(n);
        for (key, rec) in chunk {
            let row =
                LogRow::from_text(key, &rec.row).map_err(|e| PipelineError::BadRecord { key: key.to_hex(), message: e.to_string() })?;
            rows.push((rec.table, row));
        }
        tracing::info!(records = n, "re-shipping pending WAL records");
        let origins = Origins::reading_kafka(cfg.clone());
        if ship_and_land(wal, sink, &cfg.bigquery.dead_letter_table, group(rows), &origins, metrics).await? == Shipped::Interrupted {
            return Ok(Recovered::Interrupted);
        }
        Metrics::add(&metrics.recovered, n as u64);
        total += n;
    }
    Ok(Recovered::Complete(total))
}

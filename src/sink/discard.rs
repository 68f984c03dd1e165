//! The `discard` sink: accepts every row and drops it.
//!
//! Selected with `[sink] kind = "discard"`. Everything before it is the real
//! bridge: Kafka consumption, decoding, blake3 keys, the sled WAL with its
//! flushes, landed marks and offset commits. Only the network hop to BigQuery
//! is gone, so a run into it measures the bridge's own cost (`landfall bench`)
//! and tells apart a slow bridge from a slow endpoint.
//!
//! Guarantee: none beyond the WAL's. Rows are marked landed without going
//! anywhere, and their offsets are committed: a group run with this sink
//! has consumed its messages for good. Never point it at a production
//! consumer group.

use async_trait::async_trait;

use super::insert::{LogRow, RowOutcome, Sink, SinkError};
use crate::metrics::{Metrics, SharedMetrics};

pub struct DiscardSink {
    metrics: SharedMetrics,
}

impl DiscardSink {
    pub fn new(metrics: SharedMetrics) -> Self {
        DiscardSink { metrics }
    }
}

#[async_trait]
impl Sink for DiscardSink {
    async fn ship(&self, _table: &str, rows: &[LogRow]) -> Result<Vec<RowOutcome>, SinkError> {
        Metrics::add(&self.metrics.shipped, rows.len() as u64);
        Ok(vec![RowOutcome::Landed; rows.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::DedupKey;

    #[tokio::test]
    async fn every_row_lands_and_is_counted() {
        let metrics = SharedMetrics::default();
        let sink = DiscardSink::new(metrics.clone());
        let rows: Vec<LogRow> = (0..3u8).map(|i| LogRow::new(DedupKey([i; 32]), &Default::default())).collect();
        assert_eq!(sink.ship("t", &rows).await.unwrap(), vec![RowOutcome::Landed; 3]);
        assert_eq!(Metrics::get(&metrics.shipped), 3);
    }
}

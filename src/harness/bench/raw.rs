//! The two limits the bridge sits between, measured without the bridge:
//! a plain group consumer that drops what it reads (the Kafka side), and a
//! minimal insertAll client sending the same rows in the same request sizes
//! (the BigQuery side).

use std::time::{Duration, Instant};

use futures::StreamExt;
use gcp_bigquery_client::model::table_data_insert_all_request::TableDataInsertAllRequestGzipped;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::KafkaConfig;
use crate::sink::request::gzip_body;
use crate::sink::{BigQuery, LogRow};

/// A measured rate: items and payload bytes over a time span.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub items: u64,
    pub bytes: u64,
    pub seconds: f64,
}

impl Rate {
    pub fn per_s(&self) -> f64 {
        self.items as f64 / self.seconds.max(1e-3)
    }
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-3)
    }
}

/// Reads `target` messages with a group consumer configured as the bridge's
/// (same librdkafka settings), doing nothing with them. Timed from the first
/// message to the last, so the group join is not counted.
pub fn consume(kafka: &KafkaConfig, target: u64) -> anyhow::Result<Rate> {
    let consumer: BaseConsumer = crate::source::kafka::client_config(kafka).create()?;
    let topics: Vec<&str> = kafka.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut n, mut bytes, mut first) = (0u64, 0u64, None);
    while n < target {
        anyhow::ensure!(Instant::now() < deadline, "raw consumer read {n} of {target} messages in 600 s");
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                n += 1;
                bytes += m.payload_len() as u64;
            }
            Some(Err(e)) => tracing::warn!(error = %e, "raw consumer error"),
            None => {}
        }
    }
    let seconds = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    Ok(Rate { items: n, bytes, seconds })
}

/// Sends `rows` per table in requests of `max_rows`, `concurrency` at a time,
/// serialized and gzipped (at `level`: the bridge's `bigquery.gzip_level`)
/// per request as the bridge does, and counts the rows BigQuery accepted.
pub async fn insert_all(
    bq: &BigQuery,
    tables: &[(String, Vec<LogRow>)],
    max_rows: usize,
    concurrency: usize,
    level: u32,
) -> anyhow::Result<Rate> {
    let now = crate::decode::value::format_timestamp_micros(crate::wal::now_ms() as i64 * 1000);
    let mut requests = Vec::new();
    for (table, rows) in tables {
        let indices: Vec<usize> = (0..rows.len()).collect();
        for chunk in indices.chunks(max_rows) {
            requests.push((table.as_str(), rows.as_slice(), chunk.to_vec()));
        }
    }
    let started = Instant::now();
    let now = &now;
    let results: Vec<anyhow::Result<(u64, u64)>> = futures::stream::iter(requests)
        .map(|(table, rows, chunk)| async move {
            let n = chunk.len() as u64;
            let body = gzip_body(rows, &chunk, now, level)?;
            let sent = body.plain_len as u64;
            let resp = bq
                .client
                .tabledata()
                .insert_all_gzipped(&bq.project, &bq.dataset, table, TableDataInsertAllRequestGzipped::new(body.gzipped))
                .await?;
            let failed = resp.insert_errors.map_or(0, |e| e.len() as u64);
            anyhow::ensure!(failed == 0, "the emulator refused {failed} rows of {table}");
            Ok((n, sent))
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let (mut items, mut bytes) = (0, 0);
    for r in results {
        let (n, b) = r?;
        items += n;
        bytes += b;
    }
    Ok(Rate { items, bytes, seconds })
}

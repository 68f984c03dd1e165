//! The service's HTTP listener (`[observability] listen`): what an operator
//! and an orchestrator ask a running landfall.
//!
//! * `GET /metrics`: every counter, gauge and histogram of [`Metrics`] and
//!   the WAL, in the Prometheus text format (encoded by `prometheus-client`,
//!   read at each scrape). docs/operations.md lists them with alert rules.
//! * `GET /health/live`: 200 while the process serves requests.
//! * `GET /health/ready`: 200 when the bridge consumes and keeps up: it has
//!   finished recovery and joined its group, and either a commit point moved
//!   forward within `observability.ready_within` or there is nothing to do
//!   (no message behind a known high watermark, nothing pending or in
//!   flight). Otherwise 503 with the reason.
//! * `GET /status`: the same facts as one JSON object ([`Status`]).
//!
//! The listener only reads shared state: it takes no lock the pipeline holds
//! across I/O, and a slow or hostile client cannot stall the bridge.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::metrics::{lag, lock, Metrics, SharedMetrics};
use crate::wal::{now_ms, Wal};

/// What the listener reads.
#[derive(Clone)]
pub struct Observed {
    pub metrics: SharedMetrics,
    pub wal: Wal,
    pub ready_within: Duration,
}

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed").field("ready_within", &self.ready_within).finish_non_exhaustive()
    }
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (observability.listen): {source}; pick a free address or remove the setting")]
pub struct ListenError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr`; the listener then runs until `shutdown` (see [`serve`]).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr).await.map_err(|source| ListenError { addr, source })
}

/// Serves the endpoints on `listener` until the task is aborted (the
/// service does that once it has stopped).
pub async fn serve(listener: TcpListener, observed: Observed) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(observed.clone()));
    let state = Arc::new((observed, registry));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "observability listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&state.0, &state.1, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // A client that hangs up early is not the service's problem.
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn answer(observed: &Observed, registry: &Registry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => text(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", body),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "could not encode the metrics\n".into()),
            }
        }
        "/health/live" => text(StatusCode::OK, "text/plain", "live\n".into()),
        "/health/ready" => match readiness(observed, now_ms()) {
            Ok(()) => text(StatusCode::OK, "text/plain", "ready\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {why}\n")),
        },
        "/status" => match serde_json::to_string_pretty(&Status::read(observed, now_ms())) {
            Ok(json) => text(StatusCode::OK, "application/json", json + "\n"),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
        },
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics, /health/live, /health/ready, /status\n".into()),
    }
}

/// Ready, or why not (see the module docs).
pub fn readiness(observed: &Observed, now_ms: u64) -> Result<(), String> {
    let m = &observed.metrics;
    let since = m.consuming_since_ms.load(Relaxed);
    if since == 0 {
        return Err("starting: re-shipping pending WAL records or joining the consumer group".into());
    }
    let behind: i64 = m.lag().iter().map(|(_, n)| n).sum();
    let pending = observed.wal.pending_count();
    let inflight = Metrics::get(&m.inflight_bytes);
    if behind == 0 && pending == 0 && inflight == 0 {
        return Ok(());
    }
    let last = m.last_commit_advance_ms.load(Relaxed).max(since);
    let quiet = Duration::from_millis(now_ms.saturating_sub(last));
    if quiet <= observed.ready_within {
        return Ok(());
    }
    Err(format!(
        "no commit point moved for {}s (observability.ready_within = {}s) with {behind} message(s) behind, {pending} row(s) pending in the WAL and {inflight} byte(s) in flight",
        quiet.as_secs(),
        observed.ready_within.as_secs()
    ))
}

/// One partition in `/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// The next offset to read after the last message read.
    pub consumed: Option<i64>,
    /// The commit point: every change before it is landed or dead-lettered.
    pub committed: Option<i64>,
    pub high_watermark: Option<i64>,
    /// Messages behind: high watermark minus commit point.
    pub lag: Option<i64>,
}

/// One final table in `/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableStatus {
    pub table: String,
    pub merges: u64,
    pub merge_failures: u64,
    pub merged_rows: u64,
    pub last_merge_seconds: f64,
    /// ms since the epoch; none: no merge succeeded yet.
    pub last_merge_success_ms: Option<u64>,
    /// The merge watermark (µs since the epoch): every change ingested
    /// before it minus `merge.overlap` is in the final table; none: unknown
    /// or nothing merged yet.
    #[serde(default)]
    pub merge_watermark_micros: Option<i64>,
    pub paused_by_drop: bool,
}

/// `/status`: where the bridge stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub ready: bool,
    pub not_ready_because: Option<String>,
    pub partitions: Vec<PartitionStatus>,
    pub tables: Vec<TableStatus>,
    pub wal_pending_rows: usize,
    pub wal_oldest_pending_age_seconds: Option<f64>,
    pub wal_bytes: Option<u64>,
    pub dead_letters: u64,
    pub landed_rows: u64,
    /// Why the tables' merge state is missing (the service stopped and
    /// BigQuery's state table could not be read), if it is.
    #[serde(default)]
    pub merge_state_unavailable: Option<String>,
}

impl Status {
    pub fn read(observed: &Observed, now_ms: u64) -> Status {
        let m = &observed.metrics;
        let ready = readiness(observed, now_ms);
        let committed = lock(&m.committed).clone();
        let consumed = lock(&m.consumed_offsets).clone();
        let marks = lock(&m.high_watermarks).clone();
        let mut keys: Vec<(String, i32)> = committed.iter().map(|(tp, _)| tp.clone()).collect();
        keys.extend(consumed.keys().cloned());
        keys.extend(marks.keys().cloned());
        keys.sort();
        keys.dedup();
        let partitions = keys
            .into_iter()
            .map(|tp| {
                let c = committed.iter().find(|(t, _)| *t == tp).map(|(_, o)| *o);
                let hw = marks.get(&tp).copied();
                PartitionStatus {
                    consumed: consumed.get(&tp).copied(),
                    committed: c,
                    high_watermark: hw,
                    lag: hw.map(|hw| lag(hw, c)),
                    topic: tp.0,
                    partition: tp.1,
                }
            })
            .collect();
        let paused = lock(&m.paused_tables).clone();
        let tables = m
            .table_merges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(t, s)| TableStatus {
                table: t.clone(),
                merges: s.merges,
                merge_failures: s.failures,
                merged_rows: s.rows,
                last_merge_seconds: s.last_seconds,
                last_merge_success_ms: (s.last_success_ms > 0).then_some(s.last_success_ms),
                merge_watermark_micros: s.watermark_micros,
                paused_by_drop: paused.contains(t),
            })
            .collect();
        Status {
            ready: ready.is_ok(),
            not_ready_because: ready.err(),
            partitions,
            tables,
            wal_pending_rows: observed.wal.pending_count(),
            wal_oldest_pending_age_seconds: observed.wal.oldest_pending_ms().map(|t| now_ms.saturating_sub(t) as f64 / 1000.0),
            wal_bytes: observed.wal.size_on_disk().ok(),
            dead_letters: Metrics::get(&m.dead_lettered),
            landed_rows: Metrics::get(&m.landed),
            merge_state_unavailable: None,
        }
    }
}

type Enc<'a> = DescriptorEncoder<'a>;

fn counter(enc: &mut Enc<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(enc: &mut Enc<'_>, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

/// One metric family with a label set per row.
fn family(enc: &mut Enc<'_>, name: &str, help: &str, kind: MetricType, rows: &[(Vec<(&str, String)>, f64)]) -> std::fmt::Result {
    if rows.is_empty() {
        return Ok(());
    }
    let mut fam = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in rows {
        let m = fam.encode_family(labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(*v as u64).encode(m)?,
            _ => ConstGauge::new(*v).encode(m)?,
        }
    }
    Ok(())
}

impl Collector for Observed {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let m = &self.metrics;
        let g = Metrics::get;
        let e = &mut enc;
        counter(e, "landfall_consumed_messages", "Messages read from Kafka.", g(&m.consumed))?;
        counter(
            e,
            "landfall_duplicates_absorbed",
            "Changes not shipped because the WAL already held their key.",
            g(&m.duplicates_absorbed),
        )?;
        counter(e, "landfall_shipped_rows", "Rows handed to insertAll (once each, however often retried).", g(&m.shipped))?;
        counter(e, "landfall_landed_rows", "Rows BigQuery accepted and the WAL marked landed.", g(&m.landed))?;
        family(
            e,
            "landfall_dead_letters",
            "Messages and rows recorded as dead letters, by the stage that refused them.",
            MetricType::Counter,
            &[
                (vec![("stage", "decode".into())], g(&m.dead_lettered_decode) as f64),
                (vec![("stage", "bigquery".into())], g(&m.dead_lettered_bigquery) as f64),
            ],
        )?;
        counter(
            e,
            "landfall_changes_without_transaction_details",
            "Changes that arrived without DMS transaction details.",
            g(&m.changes_without_transaction_details),
        )?;
        let kinds: Vec<_> = lock(&m.control_kinds).iter().map(|(k, n)| (vec![("kind", k.clone())], *n as f64)).collect();
        family(e, "landfall_control_records", "DMS control records read, by kind.", MetricType::Counter, &kinds)?;
        counter(e, "landfall_ddl_reported", "DDL of routed tables reported but not applied.", g(&m.ddl_reported))?;
        counter(e, "landfall_schema_columns_added", "Columns schema evolution added to final and log tables.", g(&m.schema_columns_added))?;
        counter(e, "landfall_skipped_changes", "Changes of unrouted tables acknowledged without shipping.", g(&m.skipped))?;
        counter(e, "landfall_insert_all_requests", "insertAll requests sent.", g(&m.requests))?;
        counter(e, "landfall_insert_all_retries", "insertAll requests that were retries.", g(&m.request_retries))?;
        counter(
            e,
            "landfall_insert_all_failures",
            "insertAll requests that failed as a whole (retried or split).",
            g(&m.request_failures),
        )?;
        counter(
            e,
            "landfall_insert_all_untrusted_responses",
            "insertAll responses that could not be tied to their rows (re-sent).",
            g(&m.untrusted_responses),
        )?;
        counter(
            e,
            "landfall_schema_propagation_retries",
            "Rows re-sent because a new column was not visible to streaming yet.",
            g(&m.schema_propagation_retries),
        )?;
        counter(e, "landfall_insert_all_plain_bytes", "insertAll body bytes as plain JSON.", g(&m.request_bytes_plain))?;
        counter(e, "landfall_insert_all_sent_bytes", "insertAll body bytes as sent (gzipped).", g(&m.request_bytes_sent))?;
        let h = &m.request_seconds.0;
        h.encode(e.encode_descriptor("landfall_insert_all_request_seconds", "Seconds per insertAll request.", None, h.metric_type())?)?;
        let h = &m.latency.1;
        h.encode(e.encode_descriptor(
            "landfall_produce_to_landed_seconds",
            "Seconds from a message's Kafka timestamp to its changes being landed.",
            None,
            h.metric_type(),
        )?)?;
        counter(e, "landfall_recovered_rows", "Pending WAL rows re-shipped at start.", g(&m.recovered))?;
        counter(e, "landfall_wal_write_errors", "WAL writes that failed with an I/O error (retried).", g(&m.wal_errors))?;
        counter(e, "landfall_revokes", "Partition revokes (rebalances).", g(&m.revokes))?;
        counter(e, "landfall_revokes_timed_out", "Revokes whose wait for in-flight changes ran out.", g(&m.revokes_timed_out))?;
        counter(e, "landfall_kafka_auth_tokens", "MSK IAM tokens made for the group consumer.", g(&m.kafka_tokens.refreshes))?;
        counter(
            e,
            "landfall_kafka_auth_token_failures",
            "MSK IAM token refreshes that failed (no credentials; librdkafka retries in 10 s).",
            g(&m.kafka_tokens.failures),
        )?;
        counter(e, "landfall_offset_commits", "Kafka offset commits issued.", g(&m.commits))?;
        counter(e, "landfall_merge_statement_failures", "Failed MERGE statement attempts (retried).", g(&m.merge_failures))?;
        counter(e, "landfall_merges_paused", "Merges skipped because the source table was dropped.", g(&m.merges_paused))?;
        gauge(
            e,
            "landfall_insert_all_concurrency_limit",
            "insertAll requests allowed in flight now (adaptive: follows latency and backpressure).",
            g(&m.concurrency_limit) as f64,
        )?;
        gauge(e, "landfall_inflight_bytes", "Message bytes read and not yet landed.", g(&m.inflight_bytes) as f64)?;
        gauge(e, "landfall_inflight_bytes_max", "High-water mark of landfall_inflight_bytes.", g(&m.inflight_bytes_max) as f64)?;
        gauge(e, "landfall_wal_pending_rows", "Rows pending in the WAL (written, not yet landed).", self.wal.pending_count() as f64)?;
        gauge(
            e,
            "landfall_wal_landed_keys",
            "Landed (or rejected) keys the WAL holds to absorb redeliveries until wal.retention prunes them.",
            self.wal.resolved_count() as f64,
        )?;
        let oldest = self.wal.oldest_pending_ms().map_or(0.0, |t| now_ms().saturating_sub(t) as f64 / 1000.0);
        gauge(e, "landfall_wal_oldest_pending_age_seconds", "Age of the oldest row pending in the WAL (0: none).", oldest)?;
        if let Ok(bytes) = self.wal.size_on_disk() {
            gauge(e, "landfall_wal_bytes", "The WAL's size on disk.", bytes as f64)?;
        }
        let ready = readiness(self, now_ms()).is_ok();
        gauge(e, "landfall_ready", "1 when /health/ready answers 200.", if ready { 1.0 } else { 0.0 })?;

        let tp_labels = |(t, p): &(String, i32)| vec![("topic", t.clone()), ("partition", p.to_string())];
        let committed = lock(&m.committed).clone();
        let rows: Vec<_> = committed.iter().map(|(tp, o)| (tp_labels(tp), *o as f64)).collect();
        family(e, "landfall_partition_commit_point", "Commit point: every change before it is landed.", MetricType::Gauge, &rows)?;
        let consumed: Vec<_> = lock(&m.consumed_offsets).iter().map(|(tp, o)| (tp_labels(tp), *o as f64)).collect();
        family(e, "landfall_partition_consumed_offset", "Next offset to read after the last message read.", MetricType::Gauge, &consumed)?;
        let marks: Vec<_> = lock(&m.high_watermarks).iter().map(|(tp, o)| (tp_labels(tp), *o as f64)).collect();
        family(e, "landfall_partition_high_watermark", "High watermark (librdkafka statistics).", MetricType::Gauge, &marks)?;
        let lags: Vec<_> = m.lag().iter().map(|(tp, n)| (tp_labels(tp), *n as f64)).collect();
        family(e, "landfall_partition_lag", "Messages behind: high watermark minus commit point.", MetricType::Gauge, &lags)?;

        let merges = lock(&m.table_merges).clone();
        let table = |t: &String| vec![("table", t.clone())];
        let rows: Vec<_> = merges.iter().map(|(t, s)| (table(t), s.merges as f64)).collect();
        family(e, "landfall_merges", "Merges that completed, per final table.", MetricType::Counter, &rows)?;
        let rows: Vec<_> = merges.iter().map(|(t, s)| (table(t), s.failures as f64)).collect();
        family(e, "landfall_merge_failures", "Merges that failed, per final table.", MetricType::Counter, &rows)?;
        let rows: Vec<_> = merges.iter().map(|(t, s)| (table(t), s.rows as f64)).collect();
        family(e, "landfall_merged_rows", "Final-table rows the merges changed.", MetricType::Counter, &rows)?;
        let rows: Vec<_> = merges.iter().map(|(t, s)| (table(t), s.last_seconds)).collect();
        family(e, "landfall_merge_last_duration_seconds", "Duration of the last completed merge.", MetricType::Gauge, &rows)?;
        let rows: Vec<_> =
            merges.iter().filter(|(_, s)| s.last_success_ms > 0).map(|(t, s)| (table(t), s.last_success_ms as f64 / 1000.0)).collect();
        family(e, "landfall_merge_last_success_timestamp_seconds", "When the last merge completed (Unix time).", MetricType::Gauge, &rows)?;
        let rows: Vec<_> = merges.iter().filter_map(|(t, s)| s.watermark_micros.map(|w| (table(t), w as f64 / 1_000_000.0))).collect();
        family(
            e,
            "landfall_merge_watermark_timestamp_seconds",
            "The merge watermark (Unix time): changes ingested before it minus merge.overlap are in the final table.",
            MetricType::Gauge,
            &rows,
        )?;
        let paused: Vec<_> = lock(&m.paused_tables).iter().map(|t| (table(t), 1.0)).collect();
        family(e, "landfall_merge_paused", "1 for a final table whose merge waits for `landfall ddl resume`.", MetricType::Gauge, &paused)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_after_recovery_while_commit_points_move_or_nothing_is_left_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let o =
            Observed { metrics: Arc::new(Metrics::default()), wal: Wal::open(dir.path()).unwrap(), ready_within: Duration::from_secs(60) };
        let now = now_ms();
        assert!(readiness(&o, now).unwrap_err().contains("starting"), "not ready before recovery ends");
        o.metrics.consuming_since_ms.store(now - 120_000, Relaxed);
        assert_eq!(readiness(&o, now), Ok(()), "nothing to do is ready, however long ago anything moved");
        // Messages behind, and no commit point moved for longer than ready_within.
        o.metrics.record_high_watermarks([(("t".to_owned(), 0), 50)]);
        let why = readiness(&o, now).unwrap_err();
        assert!(why.contains("50 message(s) behind") && why.contains("ready_within = 60s"), "{why}");
        // A commit point moves: ready again, though messages are still behind.
        o.metrics.record_commits(&[(("t".to_owned(), 0), 10)]);
        assert_eq!(readiness(&o, now_ms()), Ok(()));
        assert_eq!(o.metrics.lag(), vec![(("t".to_owned(), 0), 40)]);
        // Caught up, but bytes in flight and no progress for too long: not ready.
        o.metrics.record_commits(&[(("t".to_owned(), 0), 50)]);
        o.metrics.set_inflight_bytes(1000);
        let later = now_ms() + 61_000;
        assert!(readiness(&o, later).unwrap_err().contains("1000 byte(s) in flight"));
        o.metrics.set_inflight_bytes(0);
        assert_eq!(readiness(&o, later), Ok(()));
    }
}

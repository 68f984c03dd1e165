//! The driver: Kafka -> decode -> WAL -> BigQuery -> landed -> offset commit.
//!
//! # The order of durability steps (docs/design.md, invariants 1-3)
//!
//! For every batch of messages:
//!
//! 1. each message is decoded into log rows, or into a dead-letter row with
//!    its reason; every row has its dedup key;
//! 2. rows whose key the WAL already resolved are not shipped again (their
//!    messages complete at once); rows whose key is in flight wait for it;
//!    the rest are written to the WAL as pending, **flushed**;
//! 3. the rows are shipped with insertAll, insertId = dedup key;
//! 4. accepted rows are marked landed, rejected rows are recorded as dead
//!    letters and shipped to the dead-letter table, and the marks are
//!    **flushed** in one WAL batch;
//! 5. only then are the messages complete in the commit tracker, and the
//!    commit point of a partition (the lowest incomplete offset) is committed.
//!
//! On start, pending WAL records are re-shipped with their original insertIds
//! before anything new is consumed.
//!
//! Memory is bounded, in messages and in bytes: at most
//! `pipeline.max_inflight_batches` batches of at most
//! `pipeline.batch_max_messages` messages are between Kafka and BigQuery; a
//! batch is closed once its message values reach `pipeline.batch_max_bytes`
//! (one larger message is a batch of its own), and nothing is read from Kafka
//! while the values of the batch being read plus those of every batch whose
//! ship task has not ended reach `pipeline.max_inflight_bytes`. So those
//! bytes never exceed `max_inflight_bytes` plus one message (gauge
//! `inflight_bytes`, high-water mark `inflight_bytes_max`). Everything a batch
//! holds (its messages, kept for the dead letter of a row BigQuery refuses;
//! decoded rows, pending records, insertAll bodies) is a small multiple of
//! its message bytes and is dropped when its ship task ends; the measured
//! peak RSS per in-flight byte is in docs/performance.md ("Memory"). A log row
//! larger than `bigquery.max_request_bytes` can never be sent: its message is
//! dead-lettered whole by [`plan`], before anything of it reaches the WAL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::config::Config;
use crate::decode::row::{self, Coords, COL_KEY};
use crate::decode::{dms, Control, ControlKind, Decoded, Rejection};
use crate::key::DedupKey;
use crate::log::{now_ms, DeadLetter, KafkaMessage, KeyState, PendingRecord, RefusedRow, Stage, Wal, WalBatch, WalError};
use crate::metrics::{Metrics, SharedMetrics};
use crate::sink::{RowOutcome, ShipRow, Sink, SinkError};
use crate::source::kafka::{self, RebalanceEvent, SourceError};
pub use crate::source::message::Msg;
use crate::source::progress::{self, SharedProgress};
use crate::source::tracker::TopicPartition;
use crate::table::*;

/// The WAL counter of changes not shipped because their key was already
/// landed or in flight (survives restarts and kill -9).
pub const COUNTER_DUPLICATES_ABSORBED: &str = "duplicates_absorbed";

/// Dead letters keep at most this much of the message value (plus its hash and length).
pub const DEAD_LETTER_PAYLOAD_LIMIT: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("WAL record {key} holds a row that is not JSON ({message}); the WAL is damaged")]
    BadRecord { key: String, message: String },
    #[error("a WAL task failed: {0}")]
    Task(String),
    #[error(
        "a row for {table} (key {key}) cannot be serialized as JSON ({message}); nothing was written or acknowledged for it. \
         This is a bug: report it with this message; a restart re-reads the message from the last committed offset"
    )]
    RowEncode { table: String, key: String, message: String },
}

/// Where the bridge stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Shut down cleanly: everything read was landed and committed.
    Drained,
    /// Shut down with changes in flight (drain timeout): they are pending in
    /// the WAL or will be redelivered; nothing was acknowledged for them.
    Interrupted,
    /// The shutdown itself did not finish within its bound and was left
    /// behind (`service::Service::stop`); as safe as `Interrupted`.
    Abandoned,
}

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
    async fn of(&self, row: &ShipRow) -> Option<Arc<Msg>> {
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

/// What becomes of one message.
#[derive(Debug)]
pub enum Plan {
    /// Rows for log tables.
    Rows(Vec<(String, row::LogRow)>),
    /// A dead letter, to be recorded and shipped to the dead-letter table.
    Dead(Box<DeadLetter>),
    /// Nothing to ship (a reported control record, an unrouted table in non-strict mode).
    Ack,
}

/// Decides what becomes of a message. Never panics.
pub fn plan(cfg: &Config, msg: &Msg, metrics: &Metrics) -> Plan {
    let at = Coords { topic: msg.topic.clone(), partition: msg.partition, offset: msg.offset };
    let result = (|| {
        let payload = msg.payload.as_deref().ok_or(Rejection::EmptyValue)?;
        if payload.len() > cfg.pipeline.max_message_bytes {
            return Err(Rejection::TooLarge { size: payload.len(), max: cfg.pipeline.max_message_bytes });
        }
        match dms::decode(payload, &cfg.pipeline.before_image_field)? {
            Decoded::Control(control) => plan_control(cfg, &control, &at, metrics),
            Decoded::Row(change) => match cfg.route(&change.schema, &change.table) {
                Some(route) => {
                    let rows = row::build(&change, route, &at)?;
                    // A row BigQuery can never take would otherwise be written
                    // to the WAL, shipped, refused and dead-lettered on its
                    // own, leaving the rest of its change (the delete half of
                    // a primary-key change) applied: the message goes whole.
                    for r in &rows {
                        let size = crate::sink::insert::row_request_bytes(&r.json);
                        if size > cfg.bigquery.max_request_bytes {
                            return Err(Rejection::RowTooLarge {
                                table: route.log_table.clone(),
                                size,
                                max: cfg.bigquery.max_request_bytes,
                            });
                        }
                    }
                    if !change.has_transaction_details() {
                        metrics.change_without_transaction_details(&route.source);
                    }
                    Ok(Plan::Rows(rows.into_iter().map(|r| (route.log_table.clone(), r)).collect()))
                }
                None if cfg.pipeline.strict_routing => Err(Rejection::Unrouted(format!("{}.{}", change.schema, change.table))),
                None => {
                    Metrics::add(&metrics.skipped, 1);
                    Ok(Plan::Ack)
                }
            },
        }
    })();
    match result {
        Ok(p) => p,
        Err(rejection) => Plan::Dead(Box::new(dead_letter(msg, rejection.to_string()))),
    }
}

/// A DMS control record (docs/design.md, "DDL control records"):
///
/// * a truncate or drop-table of a routed table becomes a marker row of its
///   log table, shipped through the WAL like any change, so it reaches the
///   MERGE durably and in order (the MERGE empties the final table as of it;
///   a drop also pauses the table's merge until the operator resumes it);
/// * the other DDL kinds are reported (WARN naming the table, what the
///   record carries and what to do; counted in `ddl_reported`) and acknowledged;
/// * `create-table`, and anything for a table that is not routed, is logged
///   and acknowledged: a control record is never dead-lettered for its table.
fn plan_control(cfg: &Config, control: &Control, at: &Coords, metrics: &Metrics) -> Result<Plan, Rejection> {
    Metrics::add(&metrics.control_records, 1);
    let table = control.table_name();
    let route = match (&control.schema, &control.table) {
        (Some(schema), Some(name)) => cfg.route(schema, name),
        _ => None,
    };
    let (topic, partition, offset) = (&at.topic, at.partition, at.offset);
    match (control.kind, route) {
        (ControlKind::Truncate | ControlKind::DropTable, Some(route)) => {
            let Some(row) = row::build_control(control, route, at)? else { return Ok(Plan::Ack) };
            if control.kind == ControlKind::Truncate {
                Metrics::add(&metrics.truncates, 1);
                tracing::warn!(table, final_table = %route.final_table, topic = %topic, partition, offset,
                    "source table truncated: its final table is emptied as of the truncate at the next merge");
            } else {
                Metrics::add(&metrics.table_drops, 1);
                tracing::error!(table, final_table = %route.final_table, topic = %topic, partition, offset,
                    "source table DROPPED: its final table is emptied as of the drop and its merge is paused at the next merge; \
                     changes after the drop stay in the log table. Re-create or remove the table in the config, then run \
                     `landfall ddl resume --table {}` (README, \"DDL\")", route.final_table);
            }
            Ok(Plan::Rows(vec![(route.log_table.clone(), row)]))
        }
        (ControlKind::Truncate | ControlKind::DropTable, None) if control.table.is_none() => {
            Err(Rejection::ControlWithoutTable(control.operation.clone()))
        }
        (ControlKind::CreateTable, _) | (_, None) => {
            tracing::info!(operation = control.operation, table, routed = route.is_some(), topic = %topic, partition, offset,
                "DMS control record acknowledged");
            Ok(Plan::Ack)
        }
        (kind, Some(route)) => {
            Metrics::add(&metrics.ddl_reported, 1);
            tracing::warn!(operation = control.operation, table, final_table = %route.final_table,
                details = control.details.as_deref().unwrap_or("(none: IncludeControlDetails is off)"),
                action = kind.operator_action(), topic = %topic, partition, offset,
                "source table DDL reported, not applied");
            Ok(Plan::Ack)
        }
    }
}

/// The message as a dead letter keeps it: key, headers, timestamp, and the
/// value (its first [`DEAD_LETTER_PAYLOAD_LIMIT`] bytes, with length and hash).
pub fn kept_message(msg: &Msg) -> KafkaMessage {
    let value = msg.payload.as_deref().unwrap_or_default();
    KafkaMessage {
        key: msg.key.clone(),
        headers: msg.headers.clone(),
        timestamp_ms: msg.produced_ms,
        has_value: msg.payload.is_some(),
        value_prefix: value[..value.len().min(DEAD_LETTER_PAYLOAD_LIMIT)].to_vec(),
        value_len: value.len() as u64,
        value_hash: *blake3::hash(value).as_bytes(),
    }
}

/// A message that could not become a row ([`Stage::Decode`]).
pub fn dead_letter(msg: &Msg, reason: String) -> DeadLetter {
    letter(msg.coords(), Stage::Decode, reason, Some(kept_message(msg)), None)
}

/// A row BigQuery refused, with the message it came from when that is at
/// hand (not for a row re-shipped after a restart whose message could not
/// be read again).
pub fn refused_row_letter(table: &str, row: &ShipRow, msg: Option<&Msg>, reason: String) -> Result<DeadLetter, PipelineError> {
    let at = msg.map(Msg::coords).unwrap_or_else(|| coords_of(&row.json));
    let json = serde_json::to_vec(&row.json).map_err(|e| PipelineError::RowEncode {
        table: table.to_owned(),
        key: row.key.to_hex(),
        message: e.to_string(),
    })?;
    Ok(letter(at, Stage::BigQuery, reason, msg.map(kept_message), Some(RefusedRow { table: table.to_owned(), key: row.key.0, json })))
}

fn letter(at: Coords, stage: Stage, reason: String, message: Option<KafkaMessage>, row: Option<RefusedRow>) -> DeadLetter {
    let id = DedupKey::of_dead_letter(
        &at,
        message.as_ref().and_then(|m| m.timestamp_ms),
        message.as_ref().map(|m| &m.value_hash),
        row.as_ref().map(|r| DedupKey(r.key)).as_ref(),
    );
    DeadLetter { id: id.0, topic: at.topic, partition: at.partition, offset: at.offset, stage, reason, message, row, at_ms: now_ms() }
}

/// The dead-letter table row of a dead letter (its `_landfall_key` is the
/// letter's id). Message value and refused row are kept up to
/// [`DEAD_LETTER_PAYLOAD_LIMIT`] bytes each (the WAL keeps the whole row).
pub fn dead_letter_row(d: &DeadLetter) -> ShipRow {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    let key = DedupKey(d.id);
    let mut json = Map::new();
    json.insert(COL_KEY.into(), Value::String(key.to_hex()));
    json.insert(COL_DL_TOPIC.into(), Value::String(d.topic.clone()));
    json.insert(COL_DL_PARTITION.into(), Value::from(d.partition));
    json.insert(COL_DL_OFFSET.into(), Value::from(d.offset));
    json.insert(COL_DL_STAGE.into(), Value::String(d.stage.name().into()));
    json.insert(COL_DL_REASON.into(), Value::String(d.reason.clone()));
    if let Some(m) = &d.message {
        if m.has_value {
            json.insert(COL_DL_PAYLOAD.into(), Value::String(B64.encode(&m.value_prefix)));
        }
        json.insert(COL_DL_PAYLOAD_LEN.into(), Value::from(m.value_len));
        json.insert(COL_DL_PAYLOAD_HASH.into(), Value::String(blake3::Hash::from(m.value_hash).to_hex().to_string()));
        if let Some(k) = &m.key {
            json.insert(COL_DL_MESSAGE_KEY.into(), Value::String(B64.encode(k)));
        }
        if !m.headers.is_empty() {
            let headers: Vec<Value> =
                m.headers.iter().map(|(name, v)| serde_json::json!([name, v.as_ref().map(|v| B64.encode(v))])).collect();
            json.insert(COL_DL_HEADERS.into(), Value::String(Value::Array(headers).to_string()));
        }
        if let Some(t) = m.timestamp_ms {
            json.insert(COL_DL_MESSAGE_TS.into(), Value::String(crate::decode::value::format_timestamp_micros(t.saturating_mul(1000))));
        }
    }
    if let Some(r) = &d.row {
        json.insert(COL_DL_TABLE.into(), Value::String(r.table.clone()));
        let text = String::from_utf8_lossy(&r.json[..r.json.len().min(DEAD_LETTER_PAYLOAD_LIMIT)]).into_owned();
        json.insert(COL_DL_ROW.into(), Value::String(text));
    }
    json.insert(COL_DL_AT.into(), Value::String(crate::decode::value::format_timestamp_micros(d.at_ms as i64 * 1000)));
    ShipRow { key, json }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, WalError> + Send + 'static) -> Result<T, PipelineError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| PipelineError::Task(e.to_string()))?.map_err(PipelineError::from)
}

/// Commits `batch` to the WAL, durably. An I/O error (a full disk, a failing
/// device) is retried with backoff for as long as it lasts: meanwhile nothing
/// is consumed or acknowledged, and the error is logged with what to do.
/// Other WAL errors (damage) are fatal.
pub async fn commit_durably(wal: &Wal, batch: WalBatch, metrics: &Metrics) -> Result<(), PipelineError> {
    let mut delay = Duration::from_millis(100);
    loop {
        let (w, b) = (wal.clone(), batch.clone());
        match blocking(move || w.commit(b)).await {
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
pub type Groups = Vec<(String, Vec<ShipRow>)>;

pub fn group(rows: impl IntoIterator<Item = (String, ShipRow)>) -> Groups {
    let mut map: HashMap<String, Vec<ShipRow>> = HashMap::new();
    for (table, row) in rows {
        map.entry(table).or_default().push(row);
    }
    let mut v: Groups = map.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Steps 3 and 4: ships `groups` (already pending in the WAL), records the
/// outcomes durably, and returns the keys that are now resolved.
/// `origins` names the message of each row, for the dead letter of a row
/// BigQuery refuses.
pub async fn ship_and_land(
    wal: &Wal,
    sink: &Arc<dyn Sink>,
    dead_letter_table: &str,
    groups: Groups,
    origins: &Origins,
    metrics: &Metrics,
) -> Result<Result<Vec<DedupKey>, SinkError>, PipelineError> {
    let shipped = futures::future::join_all(groups.iter().map(|(table, rows)| sink.ship(table, rows))).await;
    crate::failpoint::hit(crate::failpoint::AFTER_INSERT_ALL);
    let mut batch = WalBatch::default();
    let mut resolved = Vec::new();
    let mut dead = Vec::new();
    let now = now_ms();
    for ((table, rows), outcome) in groups.iter().zip(shipped) {
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => return Ok(Err(e)),
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
    Metrics::add(&metrics.landed, resolved.len().saturating_sub(dead.len()) as u64);
    if !dead.is_empty() {
        // Record the dead letters (and their rows as pending) in the same
        // durable batch as the rejection marks, then ship them.
        let rows: Vec<ShipRow> = dead.iter().map(dead_letter_row).collect();
        for (d, r) in dead.iter().zip(&rows) {
            batch.dead_letter(d);
            batch.pending(&r.key, &pending_record(dead_letter_table, r)?);
        }
        Metrics::add(&metrics.dead_lettered, dead.len() as u64);
        commit_durably(wal, batch, metrics).await?;
        crate::failpoint::hit(crate::failpoint::AFTER_LANDED_FLUSH);
        let more =
            Box::pin(ship_and_land(wal, sink, dead_letter_table, vec![(dead_letter_table.to_owned(), rows)], &Origins::new(), metrics))
                .await?;
        return Ok(more.map(|keys| {
            resolved.extend(keys);
            resolved
        }));
    }
    commit_durably(wal, batch, metrics).await?;
    crate::failpoint::hit(crate::failpoint::AFTER_LANDED_FLUSH);
    Ok(Ok(resolved))
}

/// The Kafka coordinates a log row records.
fn coords_of(json: &Map<String, Value>) -> Coords {
    Coords {
        topic: json.get(row::COL_TOPIC).and_then(Value::as_str).unwrap_or("").to_owned(),
        partition: json.get(row::COL_PARTITION).and_then(Value::as_i64).unwrap_or(-1) as i32,
        offset: json.get(row::COL_OFFSET).and_then(Value::as_i64).unwrap_or(-1),
    }
}

/// The WAL record of a row to ship. A row that does not serialize is an
/// error, never an empty record (which recovery would refuse as damaged).
pub fn pending_record(table: &str, row: &ShipRow) -> Result<PendingRecord, PipelineError> {
    let json = serde_json::to_vec(&row.json).map_err(|e| PipelineError::RowEncode {
        table: table.to_owned(),
        key: row.key.to_hex(),
        message: e.to_string(),
    })?;
    Ok(PendingRecord { table: table.to_owned(), row: json, written_at_ms: now_ms() })
}

/// The bytes a message counts against `pipeline.batch_max_bytes` and
/// `pipeline.max_inflight_bytes`: its value.
pub fn msg_bytes(m: &Msg) -> usize {
    m.payload.as_ref().map_or(0, Vec::len)
}

/// Re-ships every pending WAL record with its original insertId.
/// Returns how many were recovered.
pub async fn recover(
    wal: &Wal,
    sink: &Arc<dyn Sink>,
    cfg: &Arc<Config>,
    metrics: &Metrics,
) -> Result<Result<usize, SinkError>, PipelineError> {
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
            let json: Map<String, Value> =
                serde_json::from_slice(&rec.row).map_err(|e| PipelineError::BadRecord { key: key.to_hex(), message: e.to_string() })?;
            rows.push((rec.table, ShipRow { key, json }));
        }
        tracing::info!(records = n, "re-shipping pending WAL records");
        let origins = Origins::reading_kafka(cfg.clone());
        match ship_and_land(wal, sink, &cfg.bigquery.dead_letter_table, group(rows), &origins, metrics).await? {
            Ok(_) => {}
            Err(e) => return Ok(Err(e)),
        }
        Metrics::add(&metrics.recovered, n as u64);
        total += n;
    }
    Ok(Ok(total))
}

/// A ship task's end: its keys are already resolved in the shared progress.
struct BatchDone {
    result: Result<Result<(), SinkError>, PipelineError>,
    /// The message bytes of the batch, released now that its task is over.
    bytes: usize,
}

/// Runs the bridge until `shutdown` turns true (or a fatal error).
/// `abort` is raised when draining times out; the sink given here must watch it.
pub async fn run(
    cfg: Arc<Config>,
    wal: Wal,
    sink: Arc<dyn Sink>,
    metrics: SharedMetrics,
    mut shutdown: watch::Receiver<bool>,
    abort: watch::Sender<bool>,
) -> Result<Stopped, PipelineError> {
    match recover(&wal, &sink, &cfg, &metrics).await? {
        Ok(n) if n > 0 => tracing::info!(records = n, "recovery complete"),
        Ok(_) => {}
        Err(SinkError::Shutdown) => return Ok(Stopped::Interrupted),
    }
    let progress = SharedProgress::default();
    let (consumer, ctx) = kafka::subscribe(&cfg.kafka, progress.clone(), cfg.pipeline.shutdown_timeout, metrics.clone())?;
    let consumer = Arc::new(consumer);
    let (done_tx, mut done_rx) = mpsc::channel::<BatchDone>(cfg.pipeline.max_inflight_batches + 1);
    let mut batches_in_flight = 0usize;
    // Message bytes of the batches whose ship task has not ended, and of
    // the batch being read: their sum is held under max_inflight_bytes
    // (plus the one message that reaches it).
    let mut shipping_bytes = 0usize;
    let mut batch_bytes = 0usize;
    let mut batch: Vec<Msg> = Vec::with_capacity(cfg.pipeline.batch_max_messages);
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut summary = tokio::time::interval(cfg.observability.summary_interval);
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prune = tokio::time::interval(cfg.wal.prune_interval);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = *shutdown.borrow();
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    // Commit points are re-sent every few seconds: a failed async commit is
    // then repaired even when no new change moves the point.
    let mut recommit = tokio::time::interval(Duration::from_secs(2));
    recommit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if stopping && batch.is_empty() && batches_in_flight == 0 {
            break;
        }
        let p = &cfg.pipeline;
        let batch_full = batch.len() >= p.batch_max_messages || batch_bytes >= p.batch_max_bytes;
        let can_read =
            !stopping && batches_in_flight < p.max_inflight_batches && !batch_full && shipping_bytes + batch_bytes < p.max_inflight_bytes;
        let flush_now = !batch.is_empty() && (batch_full || stopping || deadline.is_some_and(|d| d <= tokio::time::Instant::now()));
        if flush_now && batches_in_flight < cfg.pipeline.max_inflight_batches {
            let msgs = std::mem::take(&mut batch);
            let bytes = std::mem::take(&mut batch_bytes);
            deadline = None;
            let produced: Vec<i64> = msgs.iter().filter_map(|m| m.produced_ms).collect();
            let span = tracing::debug_span!("prepare_batch", messages = msgs.len());
            let Prepared { groups, wal_batch, origins } = prepare(&cfg, &wal, &metrics, &progress, msgs).instrument(span).await?;
            if groups.is_empty() {
                // Nothing to ship: only counters (and dead letters already
                // resolved) to make durable before the messages complete.
                commit_durably(&wal, wal_batch, &metrics).await?;
                commit_ready(&consumer, &progress, &metrics);
                metrics.latency.record_since(&produced, now_ms() as i64);
                metrics.set_inflight_bytes(shipping_bytes);
            } else {
                commit_ready(&consumer, &progress, &metrics);
                batches_in_flight += 1;
                shipping_bytes += bytes;
                let (wal, sink, metrics, tx) = (wal.clone(), sink.clone(), metrics.clone(), done_tx.clone());
                let (progress, consumer) = (progress.clone(), consumer.clone());
                let dlq = cfg.bigquery.dead_letter_table.clone();
                let rows: usize = groups.iter().map(|(_, r)| r.len()).sum();
                let span = tracing::info_span!("ship_batch", rows, tables = groups.len());
                // The batch's own task makes its pending records durable, ships
                // them and lands them, while the loop reads and prepares the next
                // batch. Its messages are registered as waiting for its keys, so
                // neither they nor a duplicate of one of its changes complete
                // before all of that is done.
                tokio::spawn(
                    async move {
                        let result = async {
                            commit_durably(&wal, wal_batch, &metrics).await?;
                            crate::failpoint::hit(crate::failpoint::AFTER_WAL_PENDING);
                            ship_and_land(&wal, &sink, &dlq, groups, &origins, &metrics).await
                        }
                        .await
                        .map(|r| {
                            r.map(|keys| {
                                // Step 5: complete the messages, commit.
                                progress::lock(&progress).resolve(&keys);
                                commit_ready(&consumer, &progress, &metrics);
                                metrics.latency.record_since(&produced, now_ms() as i64);
                            })
                        });
                        let _ = tx.send(BatchDone { result, bytes }).await;
                    }
                    .instrument(span),
                );
            }
            continue;
        }
        let sleep_until = deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            biased;
            Some(done) = done_rx.recv() => {
                batches_in_flight -= 1;
                shipping_bytes = shipping_bytes.saturating_sub(done.bytes);
                metrics.set_inflight_bytes(shipping_bytes + batch_bytes);
                match done.result? {
                    Ok(()) => {}
                    Err(SinkError::Shutdown) => {
                        // Aborted: what was in flight stays pending in the WAL.
                        return Ok(Stopped::Interrupted);
                    }
                }
            }
            _ = shutdown.changed(), if !stopping => {
                stopping = true;
                drain_deadline = Some(tokio::time::Instant::now() + cfg.pipeline.shutdown_timeout);
                tracing::info!(in_flight = batches_in_flight, timeout = ?cfg.pipeline.shutdown_timeout, "shutdown requested: draining in-flight batches");
            }
            _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(tokio::time::Instant::now)), if drain_deadline.is_some() => {
                // Bounded shutdown: give up on what is still in flight. It is
                // pending in the WAL (or was never written) and its offsets
                // were not committed, so the next start re-ships it.
                let _ = abort.send(true);
                tracing::warn!(in_flight = batches_in_flight, "shutdown timeout: leaving in-flight changes pending in the WAL");
                commit_ready(&consumer, &progress, &metrics);
                metrics.log_summary();
                return Ok(Stopped::Interrupted);
            }
            msg = consumer.recv(), if can_read => {
                if drain_rebalance_events(&ctx, &mut batch) {
                    batch_bytes = batch.iter().map(msg_bytes).sum();
                }
                match msg {
                    Ok(m) => {
                        Metrics::add(&metrics.consumed, 1);
                        if batch.is_empty() {
                            deadline = Some(tokio::time::Instant::now() + cfg.pipeline.batch_max_wait);
                        }
                        let m = Msg::from_kafka(&m);
                        batch_bytes += msg_bytes(&m);
                        batch.push(m);
                        metrics.set_inflight_bytes(shipping_bytes + batch_bytes);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consume error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            // Only while a batch could be dispatched: a past deadline with every
            // slot taken would otherwise spin.
            _ = tokio::time::sleep_until(sleep_until), if deadline.is_some() && batches_in_flight < cfg.pipeline.max_inflight_batches => {}
            _ = summary.tick() => metrics.log_summary(),
            _ = recommit.tick() => {
                if let Err(e) = kafka::commit(&consumer, &committed_points(&progress)) {
                    tracing::debug!(error = %e, "offset re-commit not sent");
                }
            }
            _ = prune.tick() => {
                let w = wal.clone();
                let before = now_ms().saturating_sub(cfg.wal.retention.as_millis() as u64);
                match blocking(move || w.prune(before)).await {
                    Ok(n) if n > 0 => tracing::info!(pruned = n, "pruned landed WAL records past retention"),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    // Everything read has landed: commit the final points. A synchronous
    // commit can wait forever while the coordinator is unreachable, so the
    // commit is asynchronous and the consumer is served for a bounded time to
    // deliver it (a message read meanwhile is not acknowledged: redelivered
    // later, absorbed by the WAL).
    if let Err(e) = kafka::commit(&consumer, &committed_points(&progress)) {
        tracing::warn!(error = %e, "final offset commit failed; the next start re-reads and the WAL absorbs the duplicates");
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await;
    metrics.log_summary();
    Ok(Stopped::Drained)
}

/// Drops messages of revoked partitions that were read but not yet prepared
/// (the rebalance callback already settled their partitions' progress; the
/// next owner reads them again). Returns whether any was dropped.
fn drain_rebalance_events(ctx: &kafka::SourceContext, batch: &mut Vec<Msg>) -> bool {
    let events: Vec<RebalanceEvent> = std::mem::take(&mut *ctx.events.lock().unwrap_or_else(|e| e.into_inner()));
    let before = batch.len();
    for e in events {
        if let RebalanceEvent::Revoked(parts) = e {
            batch.retain(|m| !parts.iter().any(|(t, p)| t == &m.topic && *p == m.partition));
        }
    }
    batch.len() != before
}

/// The commit points handed out so far (to re-send them).
fn committed_points(progress: &SharedProgress) -> Vec<(TopicPartition, i64)> {
    progress::lock(progress).tracker.commit_points().into_iter().filter_map(|(tp, o)| o.map(|o| (tp, o))).collect()
}

/// Commits the commit points that moved forward.
fn commit_ready(consumer: &kafka::Source, progress: &SharedProgress, metrics: &Metrics) {
    let points = progress::lock(progress).tracker.take_commits();
    if points.is_empty() {
        return;
    }
    match kafka::commit(consumer, &points) {
        Ok(()) => {
            Metrics::add(&metrics.commits, 1);
            metrics.record_commits(&points);
        }
        Err(e) => tracing::warn!(error = %e, "offset commit failed; a later commit covers it"),
    }
}

/// A prepared batch: the rows to ship, and the WAL batch that must be
/// durable before they are shipped (their pending records, dead letters,
/// counters).
struct Prepared {
    groups: Groups,
    wal_batch: WalBatch,
    origins: Origins,
}

/// Steps 1 and 2 for a batch: plans every message, registers what each waits
/// for, and builds the WAL batch of its new rows (which the caller commits,
/// durably, before shipping them).
async fn prepare(cfg: &Config, wal: &Wal, metrics: &Metrics, progress: &SharedProgress, msgs: Vec<Msg>) -> Result<Prepared, PipelineError> {
    // Decoding needs no lock.
    let plans: Vec<(Msg, Plan)> = msgs
        .into_iter()
        .map(|m| {
            let p = plan(cfg, &m, metrics);
            (m, p)
        })
        .collect();
    let mut wal_batch = WalBatch::default();
    let mut to_ship: Vec<(String, ShipRow)> = Vec::new();
    let mut absorbed = 0u64;
    let mut origins = Origins::new();
    {
        let mut p = progress::lock(progress);
        for (msg, plan) in plans {
            let mut reg = p.begin((msg.topic.clone(), msg.partition), msg.offset);
            let msg = Arc::new(msg);
            let rows: Vec<(String, ShipRow)> = match plan {
                Plan::Ack => Vec::new(),
                Plan::Rows(rows) => rows.into_iter().map(|(t, r)| (t, ShipRow { key: r.key, json: r.json })).collect(),
                Plan::Dead(d) => {
                    tracing::warn!(topic = %d.topic, partition = d.partition, offset = d.offset, reason = %d.reason, "dead-lettering message");
                    let row = dead_letter_row(&d);
                    if wal.state(&row.key)? == KeyState::Absent && !p.is_in_flight(&row.key) {
                        wal_batch.dead_letter(&d);
                        Metrics::add(&metrics.dead_lettered, 1);
                    }
                    vec![(cfg.bigquery.dead_letter_table.clone(), row)]
                }
            };
            for (table, row) in rows {
                if p.is_in_flight(&row.key) {
                    p.wait_for(&mut reg, row.key);
                    absorbed += 1;
                    continue;
                }
                match wal.state(&row.key)? {
                    KeyState::Resolved => absorbed += 1,
                    KeyState::Absent | KeyState::Pending => {
                        wal_batch.pending(&row.key, &pending_record(&table, &row)?);
                        p.wait_for(&mut reg, row.key);
                        if table != cfg.bigquery.dead_letter_table {
                            origins.insert(row.key, msg.clone());
                        }
                        to_ship.push((table, row));
                    }
                }
            }
            p.finish(reg);
        }
    }
    Metrics::add(&metrics.duplicates_absorbed, absorbed);
    if absorbed > 0 {
        wal_batch.add_to_counter(COUNTER_DUPLICATES_ABSORBED, absorbed);
    }
    Ok(Prepared { groups: group(to_ship), wal_batch, origins })
}

/// Consumer group lag helper for tests and the demo: the committed offset
/// of every partition of `topic` for the group in `cfg`.
pub fn committed_offsets(cfg: &Config, topic: &str, partitions: i32) -> Result<Vec<i64>, rdkafka::error::KafkaError> {
    let consumer: rdkafka::consumer::BaseConsumer = kafka::client_config(&cfg.kafka).create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let c = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok((0..partitions)
        .map(|p| match c.find_partition(topic, p).map(|e| e.offset()) {
            Some(rdkafka::Offset::Offset(o)) => o,
            _ => 0,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::row::COL_OP;

    /// BigQuery refusing every row (the dead-letter table's rows too).
    struct RefuseAll;

    #[async_trait::async_trait]
    impl Sink for RefuseAll {
        async fn ship(&self, _table: &str, rows: &[ShipRow]) -> Result<Vec<RowOutcome>, SinkError> {
            Ok(rows.iter().map(|_| RowOutcome::Rejected("insertAll invalid: no".into())).collect())
        }
    }

    fn log_row(key: u8, offset: i64) -> ShipRow {
        let mut json = Map::new();
        json.insert(row::COL_TOPIC.into(), Value::from("dms"));
        json.insert(row::COL_PARTITION.into(), Value::from(0));
        json.insert(row::COL_OFFSET.into(), Value::from(offset));
        ShipRow { key: DedupKey([key; 32]), json }
    }

    /// Issue 10, item 3: the two rows of one primary-key change, both refused,
    /// are two dead letters (the previous code keyed letters by position: the
    /// second overwrote the first).
    #[tokio::test]
    async fn two_refused_rows_of_one_message_are_two_dead_letters_keeping_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path()).unwrap();
        let sink: Arc<dyn Sink> = Arc::new(RefuseAll);
        let msg = Arc::new(Msg {
            topic: "dms".into(),
            offset: 7,
            key: Some(b"k".to_vec()),
            payload: Some(b"{\"the\":\"change\"}".to_vec()),
            produced_ms: Some(1_000),
            ..Default::default()
        });
        let rows = vec![log_row(1, 7), log_row(2, 7)];
        let origins: Origins = rows.iter().map(|r| (r.key, msg.clone())).collect();
        let mut b = WalBatch::default();
        for r in &rows {
            b.pending(&r.key, &pending_record("t_log", r).unwrap());
        }
        wal.commit(b).unwrap();
        let metrics = Metrics::default();
        let resolved = ship_and_land(&wal, &sink, "dead_letters", vec![("t_log".into(), rows)], &origins, &metrics).await.unwrap().unwrap();
        assert_eq!(resolved.len(), 4, "two rows, two dead-letter rows (refused too: kept in the WAL only)");
        let letters: Vec<DeadLetter> = wal.dead_letters().map(Result::unwrap).collect();
        assert_eq!(letters.len(), 2);
        assert_ne!(letters[0].id, letters[1].id);
        let mut refused: Vec<[u8; 32]> = letters.iter().map(|d| d.row.as_ref().unwrap().key).collect();
        refused.sort();
        assert_eq!(refused, vec![[1; 32], [2; 32]]);
        for d in &letters {
            assert_eq!((d.offset, d.stage), (7, Stage::BigQuery));
            assert_eq!(d.message.as_ref().unwrap().value_prefix, msg.payload.clone().unwrap(), "the original message, not the row");
        }
    }

    /// A row refused when re-shipped after a restart (no origin at hand)
    /// keeps the row and the coordinates the row records.
    #[tokio::test]
    async fn a_refused_row_without_its_message_keeps_the_row_and_its_coordinates() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path()).unwrap();
        let sink: Arc<dyn Sink> = Arc::new(RefuseAll);
        let metrics = Metrics::default();
        ship_and_land(&wal, &sink, "dead_letters", vec![("t_log".into(), vec![log_row(3, 9)])], &Origins::new(), &metrics)
            .await
            .unwrap()
            .unwrap();
        let d = wal.dead_letters().next().unwrap().unwrap();
        assert_eq!((d.topic.as_str(), d.offset, d.message.is_none()), ("dms", 9, true));
        assert_eq!(d.row.as_ref().map(|r| (r.table.as_str(), r.key)), Some(("t_log", [3; 32])));
    }

    fn config() -> Config {
        Config::from_toml(
            r#"
[kafka]
bootstrap_servers = "localhost:9092"
group_id = "landfall"
topics = ["dms"]
[wal]
path = "/tmp/wal"
[bigquery]
project = "landfall-local"
dataset = "d"
endpoint = "http://127.0.0.1:9050/bigquery/v2"
auth = { method = "none" }
[[tables]]
source = "sales.customers"
log_table = "customers_log"
final_table = "customers"
primary_key = ["id"]
columns = [ { name = "id", type = "INT64" }, { name = "name", type = "STRING" } ]
"#,
        )
        .unwrap()
    }

    fn msg(op: &str, table: &str, offset: i64) -> Msg {
        let text = format!(
            r#"{{"metadata":{{"timestamp":"2026-11-27T03:28:32Z","record-type":"control","operation":"{op}","schema-name":"sales","table-name":"{table}"}}}}"#
        );
        Msg { topic: "dms".into(), partition: 0, offset, payload: Some(text.into_bytes()), produced_ms: None, ..Default::default() }
    }

    #[test]
    fn ddl_control_records_become_markers_or_reports_and_are_never_dead_lettered() {
        let (cfg, metrics) = (config(), Metrics::default());
        // Truncate and drop-table of a routed table: one marker row for its log table.
        for (op, code) in [("truncate-table", "T"), ("truncate", "T"), ("drop-table", "X")] {
            match plan(&cfg, &msg(op, "customers", 1), &metrics) {
                Plan::Rows(rows) => {
                    assert_eq!(rows.len(), 1, "{op}");
                    assert_eq!(rows[0].0, "customers_log");
                    assert_eq!(rows[0].1.json[COL_OP], code);
                    assert!(!rows[0].1.json.contains_key("id"), "a marker has no key columns");
                }
                other => panic!("{op}: {other:?}"),
            }
        }
        assert_eq!((Metrics::get(&metrics.truncates), Metrics::get(&metrics.table_drops)), (2, 1));
        // The rest are reported (counted) and acknowledged.
        for op in ["rename-table", "add-column", "drop-column", "rename-column", "change-columns", "column-type-change"] {
            assert!(matches!(plan(&cfg, &msg(op, "customers", 2), &metrics), Plan::Ack), "{op}");
        }
        assert_eq!(Metrics::get(&metrics.ddl_reported), 6);
        // create-table, and any DDL of a table that is not routed, is acknowledged (even with strict routing).
        assert!(cfg.pipeline.strict_routing);
        assert!(matches!(plan(&cfg, &msg("create-table", "customers", 3), &metrics), Plan::Ack));
        for op in ["truncate-table", "drop-table", "add-column"] {
            assert!(matches!(plan(&cfg, &msg(op, "elsewhere", 4), &metrics), Plan::Ack), "{op}");
        }
        assert_eq!(Metrics::get(&metrics.ddl_reported), 6, "unrouted tables are not reported");
        assert_eq!(Metrics::get(&metrics.control_records), 3 + 6 + 1 + 3);
        // A truncate that names no table cannot be applied: dead-lettered with the reason.
        let nameless = Msg {
            payload: Some(
                br#"{"metadata":{"timestamp":"2026-11-27T03:28:32Z","record-type":"control","operation":"truncate-table"}}"#.to_vec(),
            ),
            ..msg("truncate", "customers", 5)
        };
        match plan(&cfg, &nameless, &metrics) {
            Plan::Dead(d) => assert!(d.reason.contains("names no table"), "{}", d.reason),
            other => panic!("{other:?}"),
        }
    }

    fn config_with_request_limit(max_request_bytes: usize) -> Config {
        let tables = crate::sim::tables();
        let mut cfg = crate::demo::demo_config_for(
            "127.0.0.1:9092",
            "http://127.0.0.1:9050/bigquery/v2",
            "landfall-local",
            "d",
            std::path::Path::new("wal"),
            "dms",
            &tables,
        )
        .unwrap();
        cfg.bigquery.max_request_bytes = max_request_bytes;
        cfg
    }

    fn big_msg(offset: i64, payload: Vec<u8>) -> Msg {
        Msg { topic: "dms".into(), partition: 0, offset, payload: Some(payload), ..Default::default() }
    }

    #[test]
    fn a_row_larger_than_the_request_limit_is_dead_lettered_whole_at_plan_time() {
        // Today's code planned it as a row: it was written to the WAL, shipped,
        // refused by the sink, and only then dead-lettered on its own.
        let cfg = config_with_request_limit(100_000);
        let metrics = Metrics::default();
        let big = crate::sim::large_text_change(1, 150_000).payload;
        let Plan::Dead(d) = plan(&cfg, &big_msg(7, big.clone()), &metrics) else {
            panic!("a 150 kB row was planned for a 100 kB request limit")
        };
        let size = crate::sink::insert::row_request_bytes(&{
            let Plan::Rows(rows) = plan(&config_with_request_limit(9_000_000), &big_msg(7, big.clone()), &metrics) else {
                panic!("rows under the default limit")
            };
            rows[0].1.json.clone()
        });
        assert!(size > 150_000, "{size}");
        for part in [size.to_string().as_str(), "100000", "bigquery.max_request_bytes", "customers_log", "whole change"] {
            assert!(d.reason.contains(part), "`{part}` not in: {}", d.reason);
        }
        // The dead letter is the message's, not the row's.
        let m = d.message.as_ref().unwrap();
        assert_eq!((d.offset, m.value_len as usize, m.value_hash), (7, big.len(), *blake3::hash(&big).as_bytes()));
        // A row within the limit is planned as a row.
        let small = crate::sim::large_text_change(2, 50_000).payload;
        assert!(matches!(plan(&cfg, &big_msg(8, small), &metrics), Plan::Rows(r) if r.len() == 1));
    }

    #[test]
    fn a_row_that_serializes_becomes_a_pending_record_holding_its_json() {
        let mut json = Map::new();
        json.insert("a".into(), Value::from(1));
        let rec = pending_record("t", &ShipRow { key: DedupKey([1; 32]), json }).unwrap();
        assert_eq!((rec.table.as_str(), rec.row.as_slice()), ("t", br#"{"a":1}"#.as_slice()));
    }
}

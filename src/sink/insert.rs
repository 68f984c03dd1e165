//! Shipping rows with `tabledata.insertAll`.
//!
//! Guarantee: [`Sink::ship`] returns an outcome for every row only when that
//! row is either accepted by BigQuery ([`RowOutcome::Landed`]) or rejected
//! permanently with a reason ([`RowOutcome::Rejected`]); it never reports a
//! row it did not get an answer for. Transient failures (429, 5xx, timeouts,
//! connection errors, rows answered `stopped`) are retried with exponential
//! backoff and jitter until they succeed or shutdown is requested, in which
//! case nothing is reported and the caller acknowledges nothing.
//!
//! Requests hold at most `max_rows_per_request` rows and `max_request_bytes`
//! bytes (of plain JSON); the insertId of every row is its dedup key. Bodies
//! are gzipped (`Content-Encoding: gzip`), serialized straight from the rows.
//! Memory: every request of a [`Sink::ship`] call builds its body before it
//! waits for one of the `max_inflight_requests` permits, so the bodies alive at
//! once are at most one gzipped copy of the rows being shipped (a retry
//! rebuilds its body after the previous one is dropped); the rows themselves
//! are bounded by `pipeline.max_inflight_bytes` (`src/pipeline.rs`). A request BigQuery
//! refuses as a whole (HTTP 400, HTTP 413, or any other 4xx answered with a
//! body that is not BigQuery's JSON, see [`classify_insert_all`]) is split in
//! halves until the bad row is alone, which is then rejected with the status,
//! a short sanitized start of the body and the size of its request; so one
//! bad row never blocks the others. Non-JSON 5xx answers are transient.
//!
//! A response is read by [`interpret`] as a whole: a row landed only if the
//! response is trusted and has no error entry for it. An error entry without
//! an `index`, or with one outside the request, makes the response untrusted:
//! no row of it is marked landed, the same rows go again with the same
//! insertIds after a backoff (insertId and the MERGE's key dedup absorb a copy
//! BigQuery may have kept), and the answer is counted in
//! `untrusted_responses`. Rows answered `stopped` next to a rejected row are
//! re-sent at once; a response that landed or rejected no row is followed by
//! a backoff, so the sender never busy-loops.
//!
//! A row refused with "no such field" within `bigquery.schema_propagation_wait`
//! of a schema change of its table (columns landfall added, or a table found
//! modified that recently) is re-sent with backoff instead of rejected: the
//! streaming path can take minutes to see new columns. After the wait the
//! refusal stands and the row is dead-lettered.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use gcp_bigquery_client::model::table_data_insert_all_response_insert_errors::TableDataInsertAllResponseInsertErrors;
use rand::Rng;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{watch, Semaphore};

use super::client::{classify_insert_all, BigQuery, Failure};
use crate::config::BigQueryConfig;
use crate::decode::row::COL_INGESTED;
use crate::decode::value::format_timestamp_micros;
use crate::metrics::{signalled, Metrics, SharedMetrics};
pub use crate::table::LogRow;

#[derive(Debug, Clone, PartialEq)]
pub enum RowOutcome {
    Landed,
    Rejected(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("shutdown requested while shipping; nothing was acknowledged")]
    Shutdown,
}

#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Ships `rows` to `table`, returning one outcome per row in order.
    async fn ship(&self, table: &str, rows: &[LogRow]) -> Result<Vec<RowOutcome>, SinkError>;
}

/// Limits and retry policy of the BigQuery sink.
#[derive(Debug, Clone)]
pub struct ShipPolicy {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub gzip_level: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub schema_propagation_wait: Duration,
}

impl From<&BigQueryConfig> for ShipPolicy {
    fn from(c: &BigQueryConfig) -> Self {
        ShipPolicy {
            max_rows: c.max_rows_per_request,
            max_bytes: c.max_request_bytes,
            gzip_level: c.gzip_level,
            initial_delay: c.retry_initial_delay,
            max_delay: c.retry_max_delay,
            schema_propagation_wait: c.schema_propagation_wait,
        }
    }
}

pub struct BigQuerySink {
    bq: BigQuery,
    policy: ShipPolicy,
    permits: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    metrics: SharedMetrics,
}

/// Per-row overhead of the request envelope, for size estimates.
const ROW_OVERHEAD: usize = 100;

impl BigQuerySink {
    pub fn new(bq: BigQuery, cfg: &BigQueryConfig, shutdown: watch::Receiver<bool>, metrics: SharedMetrics) -> Self {
        BigQuerySink { bq, policy: ShipPolicy::from(cfg), permits: Arc::new(Semaphore::new(cfg.max_inflight_requests)), shutdown, metrics }
    }

    async fn backoff(&self, attempt: u32) -> Result<(), SinkError> {
        let base = self.policy.initial_delay.saturating_mul(1u32 << attempt.min(16)).min(self.policy.max_delay);
        // Full jitter in [base/2, base].
        let jittered = base.mul_f64(rand::rng().random_range(0.5..=1.0));
        if *self.shutdown.borrow() {
            return Err(SinkError::Shutdown);
        }
        tokio::select! {
            _ = tokio::time::sleep(jittered) => Ok(()),
            _ = signalled(self.shutdown.clone()) => Err(SinkError::Shutdown),
        }
    }

    /// Whether a row refused with `reason` is one BigQuery's streaming path
    /// may accept once a recent schema change of `table` has propagated.
    fn not_propagated_yet(&self, table: &str, reason: &str) -> bool {
        reason.contains("no such field") && self.bq.schema_changed_within(table, self.policy.schema_propagation_wait)
    }

    /// Sends the rows at `indices` until each has a final outcome.
    async fn send(&self, table: &str, rows: &[LogRow], indices: Vec<usize>, out: &mut [Option<RowOutcome>]) -> Result<(), SinkError> {
        let mut todo = indices;
        let mut attempt = 0u32;
        while !todo.is_empty() {
            let (result, size) = {
                // The permit first, then the stamp (docs/design.md, invariant
                // 10): `_landfall_ingested` is taken when the request is about
                // to go, never before a wait for a permit, so a row is visible
                // within one request timeout of its stamp however long requests
                // queued. The body is built under the permit too, so at most
                // `max_inflight_requests` bodies are in memory.
                let _permit = self.permits.acquire().await.map_err(|_| SinkError::Shutdown)?;
                let now = format_timestamp_micros(crate::wal::now_ms() as i64 * 1000);
                let body = gzip_body(rows, &todo, &now, self.policy.gzip_level).map_err(|e| {
                    // Writing into memory cannot fail; treat it as shutdown rather than guess.
                    tracing::error!(error = %e, "could not build an insertAll body");
                    SinkError::Shutdown
                })?;
                let size = (body.plain_len, body.gzipped.len());
                Metrics::add(&self.metrics.requests, 1);
                Metrics::add(&self.metrics.request_bytes_plain, body.plain_len as u64);
                Metrics::add(&self.metrics.request_bytes_sent, body.gzipped.len() as u64);
                if attempt > 0 {
                    Metrics::add(&self.metrics.request_retries, 1);
                }
                (self.bq.insert_all_gzipped(table, body.gzipped).await, size)
            };
            match result {
                Ok(resp) => match interpret(resp.insert_errors.as_deref().unwrap_or_default(), todo.len()) {
                    Answer::Untrusted(why) => {
                        // Nothing is marked landed: the same rows go again with
                        // the same insertIds (insertId and the MERGE's key dedup
                        // absorb any copy BigQuery already kept).
                        Metrics::add(&self.metrics.untrusted_responses, 1);
                        tracing::warn!(
                            table,
                            rows = todo.len(),
                            attempt,
                            why,
                            "insertAll response cannot be tied to its rows; re-sending the request"
                        );
                        self.backoff(attempt).await?;
                        attempt += 1;
                    }
                    Answer::Rows(answers) => {
                        let mut again = Vec::new();
                        let mut only_stopped = true;
                        for (&row, answer) in todo.iter().zip(answers) {
                            match answer {
                                RowAnswer::Landed => out[row] = Some(RowOutcome::Landed),
                                RowAnswer::Rejected(reason) if self.not_propagated_yet(table, &reason) => {
                                    Metrics::add(&self.metrics.schema_propagation_retries, 1);
                                    tracing::warn!(
                                        table,
                                        reason,
                                        wait = ?self.policy.schema_propagation_wait,
                                        "row refused for a field the table's recent schema change added; BigQuery's streaming path may not see it yet: re-sending"
                                    );
                                    only_stopped = false;
                                    again.push(row);
                                }
                                RowAnswer::Rejected(reason) => out[row] = Some(RowOutcome::Rejected(reason)),
                                RowAnswer::Retry { stopped } => {
                                    only_stopped &= stopped;
                                    again.push(row);
                                }
                            }
                        }
                        // Rows answered `stopped` next to a rejected row are re-sent at
                        // once; without progress (every row answered again) or with
                        // other transient reasons, only after a backoff: never a busy loop.
                        let progress = again.len() < todo.len();
                        if !again.is_empty() && (!only_stopped || !progress) {
                            tracing::warn!(table, rows = again.len(), attempt, progress, "insertAll rows failed transiently; retrying");
                            self.backoff(attempt).await?;
                            attempt += 1;
                        }
                        todo = again;
                    }
                },
                Err(e) => match classify_insert_all(&e) {
                    Failure::Transient(why) => {
                        tracing::warn!(table, rows = todo.len(), attempt, error = %why, "insertAll failed; retrying with backoff");
                        self.backoff(attempt).await?;
                        attempt += 1;
                    }
                    Failure::Invalid(why) if todo.len() == 1 => {
                        out[todo[0]] = Some(RowOutcome::Rejected(format!(
                            "insertAll refused the row: {why} (its request was {} bytes of JSON, {} gzipped)",
                            size.0, size.1
                        )));
                        todo.clear();
                    }
                    Failure::Invalid(why) => {
                        tracing::warn!(table, rows = todo.len(), error = %why, "insertAll refused the request; splitting it");
                        let right = todo.split_off(todo.len() / 2);
                        Box::pin(self.send(table, rows, std::mem::take(&mut todo), out)).await?;
                        Box::pin(self.send(table, rows, right, out)).await?;
                    }
                },
            }
        }
        Ok(())
    }
}

/// A gzipped insertAll request body and the length of its plain JSON.
pub struct Body {
    pub gzipped: Vec<u8>,
    pub plain_len: usize,
}

/// Serializes the insertAll request for `rows[indices]` straight into a gzip
/// stream: no row is copied, `_landfall_ingested` is added on the way, and
/// the insertId of each row is its dedup key.
pub fn gzip_body(rows: &[LogRow], indices: &[usize], ingested: &str, level: u32) -> std::io::Result<Body> {
    let mut out = Counting { inner: GzEncoder::new(Vec::new(), Compression::new(level)), written: 0 };
    serde_json::to_writer(&mut out, &Request { rows, indices, ingested })?;
    Ok(Body { plain_len: out.written, gzipped: out.inner.finish()? })
}

/// `{"skipInvalidRows":false,"ignoreUnknownValues":false,"rows":[{"insertId":..,"json":{..}}]}`
struct Request<'a> {
    rows: &'a [LogRow],
    indices: &'a [usize],
    ingested: &'a str,
}

impl Serialize for Request<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("skipInvalidRows", &false)?;
        m.serialize_entry("ignoreUnknownValues", &false)?;
        m.serialize_entry("rows", &Rows(self))?;
        m.end()
    }
}

struct Rows<'a, 'b>(&'b Request<'a>);

impl Serialize for Rows<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut seq = s.serialize_seq(Some(r.indices.len()))?;
        for &i in r.indices {
            seq.serialize_element(&Row { row: &r.rows[i], ingested: r.ingested })?;
        }
        seq.end()
    }
}

struct Row<'a> {
    row: &'a LogRow,
    ingested: &'a str,
}

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("insertId", &self.row.key.to_hex())?;
        m.serialize_entry("json", &Json(self))?;
        m.end()
    }
}

struct Json<'a, 'b>(&'b Row<'a>);

impl Serialize for Json<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let json = &self.0.row.json;
        let mut m = s.serialize_map(Some(json.len() + 1))?;
        for (k, v) in json.iter().filter(|(k, _)| k.as_str() != COL_INGESTED) {
            m.serialize_entry(k, v)?;
        }
        m.serialize_entry(COL_INGESTED, self.0.ingested)?;
        m.end()
    }
}

/// Counts the bytes written through it.
struct Counting<W> {
    inner: W,
    written: usize,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Row-level reasons worth re-sending the row for.
fn is_retryable_reason(reason: &str) -> bool {
    matches!(reason, "stopped" | "timeout" | "backendError" | "internalError" | "rateLimitExceeded" | "")
}

/// What one insertAll response says about the rows of its request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// One answer per row of the request, in request order.
    Rows(Vec<RowAnswer>),
    /// An error entry cannot be tied to a row (no `index`, or one out of
    /// range): which rows it is about is unknown, so no row of the response
    /// may be counted as landed.
    Untrusted(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum RowAnswer {
    Landed,
    /// Permanently refused, with `insertAll {reason} at `location`: {message}`.
    Rejected(String),
    /// Re-send the row; `stopped` when every reason was "stopped" (the row
    /// is fine, another row of the request was not).
    Retry {
        stopped: bool,
    },
}

/// Interprets the `insertErrors` of an insertAll response to a request of
/// `rows` rows. Pure: no I/O, never panics. A row without an error entry
/// landed; a row with any permanent reason is rejected; other rows are
/// retried. Several entries for one index are merged.
pub fn interpret(errors: &[TableDataInsertAllResponseInsertErrors], rows: usize) -> Answer {
    // (reason, " at `location`: message") per error, per row.
    let mut per_row: Vec<Option<Vec<(String, String)>>> = vec![None; rows];
    for (n, e) in errors.iter().enumerate() {
        let Some(i) = e.index else {
            return Answer::Untrusted(format!("insertErrors entry {n} has no index ({} rows sent)", rows));
        };
        let Some(slot) = usize::try_from(i).ok().and_then(|i| per_row.get_mut(i)) else {
            return Answer::Untrusted(format!("insertErrors entry {n} has index {i}, outside the {rows} rows sent"));
        };
        let reasons = slot.get_or_insert_with(Vec::new);
        for p in e.errors.iter().flatten() {
            let at = p.location.as_deref().filter(|l| !l.is_empty()).map(|l| format!(" at `{l}`")).unwrap_or_default();
            reasons.push((p.reason.clone().unwrap_or_default(), format!("{at}: {}", p.message.as_deref().unwrap_or_default())));
        }
    }
    Answer::Rows(
        per_row
            .into_iter()
            .map(|r| match r {
                None => RowAnswer::Landed,
                // An entry without errors says the row failed, not why: re-send it.
                Some(reasons) if reasons.is_empty() => RowAnswer::Retry { stopped: false },
                Some(reasons) => match reasons.iter().find(|(r, _)| !is_retryable_reason(r)) {
                    Some((reason, message)) => RowAnswer::Rejected(format!("insertAll {reason}{message}")),
                    None => RowAnswer::Retry { stopped: reasons.iter().all(|(r, _)| r == "stopped") },
                },
            })
            .collect(),
    )
}

/// The bytes a row takes in an insertAll request (its JSON plus the
/// envelope estimate), counted without building the JSON. A row that does not
/// serialize counts as too large for any request.
pub fn row_request_bytes(json: &Map<String, Value>) -> usize {
    let mut counter = Counting { inner: std::io::sink(), written: 0 };
    match serde_json::to_writer(&mut counter, json) {
        Ok(()) => counter.written + ROW_OVERHEAD,
        Err(_) => usize::MAX / 2,
    }
}

/// Splits rows into requests within the row and byte limits. Rows that are
/// too large on their own are returned separately.
pub fn plan_requests(rows: &[LogRow], max_rows: usize, max_bytes: usize) -> (Vec<Vec<usize>>, Vec<(usize, usize)>) {
    let mut requests = Vec::new();
    let mut oversized = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for (i, row) in rows.iter().enumerate() {
        let size = row_request_bytes(&row.json);
        if size > max_bytes {
            oversized.push((i, size));
            continue;
        }
        if !current.is_empty() && (current.len() >= max_rows || bytes + size > max_bytes) {
            requests.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(i);
        bytes += size;
    }
    if !current.is_empty() {
        requests.push(current);
    }
    (requests, oversized)
}

#[async_trait]
impl Sink for BigQuerySink {
    async fn ship(&self, table: &str, rows: &[LogRow]) -> Result<Vec<RowOutcome>, SinkError> {
        let mut out: Vec<Option<RowOutcome>> = vec![None; rows.len()];
        let (requests, oversized) = plan_requests(rows, self.policy.max_rows, self.policy.max_bytes);
        for (i, size) in oversized {
            out[i] = Some(RowOutcome::Rejected(format!(
                "row is {size} bytes, over the insertAll request limit of {} bytes",
                self.policy.max_bytes
            )));
        }
        Metrics::add(&self.metrics.shipped, rows.len() as u64);
        // Requests run concurrently (bounded by the semaphore); each writes
        // only its own rows' outcomes.
        let results = futures::future::join_all(requests.into_iter().map(|indices| async move {
            let mut local: Vec<Option<RowOutcome>> = vec![None; rows.len()];
            self.send(table, rows, indices, &mut local).await.map(|_| local)
        }))
        .await;
        for r in results {
            for (i, o) in r?.into_iter().enumerate() {
                if o.is_some() {
                    out[i] = o;
                }
            }
        }
        Ok(out.into_iter().map(|o| o.unwrap_or_else(|| RowOutcome::Rejected("no outcome (internal error)".into()))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::DedupKey;

    fn row(n: usize) -> LogRow {
        let mut json = Map::new();
        json.insert("v".into(), Value::String("x".repeat(n)));
        LogRow { key: DedupKey([n as u8; 32]), json }
    }

    #[test]
    fn requests_respect_row_and_byte_limits() {
        let rows: Vec<LogRow> = (0..10).map(|_| row(100)).collect();
        let (reqs, big) = plan_requests(&rows, 4, 1_000_000);
        assert_eq!(reqs.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
        assert!(big.is_empty());
        let (reqs, _) = plan_requests(&rows, 500, 700);
        assert!(reqs.iter().all(|r| r.len() <= 3), "{reqs:?}");
        assert_eq!(reqs.iter().map(Vec::len).sum::<usize>(), 10);
        let mut rows = rows;
        rows.push(row(5000));
        let (_, big) = plan_requests(&rows, 500, 1000);
        assert_eq!(big.len(), 1);
        assert_eq!(big[0].0, 10);
    }

    fn entry(index: Option<i32>, reasons: &[&str]) -> TableDataInsertAllResponseInsertErrors {
        use gcp_bigquery_client::model::error_proto::ErrorProto;
        let errors = reasons
            .iter()
            .map(|r| ErrorProto { reason: Some(r.to_string()), message: Some(format!("m-{r}")), ..Default::default() })
            .collect();
        TableDataInsertAllResponseInsertErrors { index, errors: Some(errors) }
    }

    #[test]
    fn rows_without_an_error_entry_landed_and_reasons_decide_the_rest() {
        let errs = [entry(Some(1), &["invalid"]), entry(Some(0), &["stopped"]), entry(Some(3), &["backendError"])];
        let Answer::Rows(a) = interpret(&errs, 4) else { panic!("untrusted") };
        assert_eq!(a[0], RowAnswer::Retry { stopped: true });
        assert_eq!(a[1], RowAnswer::Rejected("insertAll invalid: m-invalid".into()));
        assert_eq!(a[2], RowAnswer::Landed);
        assert_eq!(a[3], RowAnswer::Retry { stopped: false });
        assert_eq!(interpret(&[], 2), Answer::Rows(vec![RowAnswer::Landed, RowAnswer::Landed]));
    }

    #[test]
    fn an_error_entry_that_names_no_row_makes_the_whole_response_untrusted() {
        // Today's code skipped these entries and counted every row as landed.
        for errs in [
            vec![entry(None, &["invalid"])],
            vec![entry(Some(0), &["stopped"]), entry(Some(2), &["invalid"])],
            vec![entry(Some(-1), &["stopped"])],
            vec![entry(Some(i32::MAX), &["backendError"])],
        ] {
            assert!(matches!(interpret(&errs, 2), Answer::Untrusted(_)), "{errs:?}");
        }
        let Answer::Untrusted(why) = interpret(&[entry(Some(5), &["x"])], 2) else { panic!() };
        assert!(why.contains("index 5") && why.contains("2 rows"), "{why}");
    }

    #[test]
    fn duplicate_entries_for_one_row_are_merged() {
        let errs = [entry(Some(0), &["stopped"]), entry(Some(0), &["invalid"]), entry(Some(1), &["stopped"]), entry(Some(1), &["timeout"])];
        let Answer::Rows(a) = interpret(&errs, 2) else { panic!("untrusted") };
        assert!(matches!(a[0], RowAnswer::Rejected(_)));
        assert_eq!(a[1], RowAnswer::Retry { stopped: false });
        // An entry without errors: failed, reason unknown, re-sent.
        let bare = TableDataInsertAllResponseInsertErrors { index: Some(0), errors: None };
        assert_eq!(interpret(&[bare], 1), Answer::Rows(vec![RowAnswer::Retry { stopped: false }]));
    }
}

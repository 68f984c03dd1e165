//! The BigQuery sink: ships rows with `tabledata.insertAll`, driving the
//! request building of [`super::request`] and the answer reading of
//! [`super::response`], with retries, backoff and the concurrency limit.
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
//! How many requests are in flight at once is [`super::concurrency`]'s
//! adaptive limit (at most `max_inflight_requests`): it follows latency and
//! backpressure; nothing about ordering or acknowledgement depends on it.
//! Memory: every request of a [`Sink::ship`] call builds its body after it
//! took its permit, so the bodies alive at once are at most one gzipped copy
//! of the rows being shipped (a retry
//! rebuilds its body after the previous one is dropped); the rows themselves
//! are bounded by `pipeline.max_inflight_bytes` (`src/pipeline/run.rs`). A request BigQuery
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

use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use tokio::sync::watch;

use super::client::{classify_insert_all, BigQuery, Failure, InsertAllError};
use super::concurrency::{Concurrency, Outcome};
use super::request::{gzip_body, plan_requests};
use super::response::{interpret, Answer, RowAnswer};
use super::schema::SchemaError;
use crate::config::{BigQueryConfig, ColumnConfig, TableConfig};
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

    /// Schema evolution: makes `columns` exist in `table`'s final and log
    /// tables ([`BigQuery::add_columns`]), returning them with the types the
    /// tables hold. A sink without tables takes them as given.
    async fn add_columns(&self, table: &TableConfig, columns: &[ColumnConfig]) -> Result<Vec<ColumnConfig>, SchemaError> {
        let _ = table;
        Ok(columns.to_vec())
    }
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

/// What an insertAll's result says to the concurrency limit: an answer,
/// backpressure (429, 5xx, timeouts, connection errors: transient failures),
/// or neither (a refused request).
fn outcome_of<T>(result: &Result<T, InsertAllError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Answered,
        Err(e) => match classify_insert_all(e) {
            Failure::Transient(_) => Outcome::Backpressure,
            Failure::Invalid(_) => Outcome::Neutral,
        },
    }
}

pub struct BigQuerySink {
    bq: BigQuery,
    policy: ShipPolicy,
    concurrency: Concurrency,
    shutdown: watch::Receiver<bool>,
    metrics: SharedMetrics,
    /// For a log table schema evolution finds missing.
    log_partition_expiration: Duration,
}

impl BigQuerySink {
    pub fn new(bq: BigQuery, cfg: &BigQueryConfig, shutdown: watch::Receiver<bool>, metrics: SharedMetrics) -> Self {
        let concurrency = Concurrency::new(cfg.max_inflight_requests, cfg.adaptive_concurrency);
        // The limit moves only when a request ends (then it is stored again).
        metrics.concurrency_limit.store(concurrency.limit() as u64, std::sync::atomic::Ordering::Relaxed);
        BigQuerySink {
            bq,
            policy: ShipPolicy::from(cfg),
            concurrency,
            shutdown,
            metrics,
            log_partition_expiration: cfg.log_partition_expiration,
        }
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
                // the limit's bodies are in memory.
                let permit = tokio::select! {
                    p = self.concurrency.acquire() => p,
                    _ = signalled(self.shutdown.clone()) => return Err(SinkError::Shutdown),
                };
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
                let sent = std::time::Instant::now();
                let result = self.bq.insert_all_gzipped(table, body.gzipped).await;
                self.metrics.request_seconds.observe(sent.elapsed());
                if result.is_err() {
                    Metrics::add(&self.metrics.request_failures, 1);
                }
                permit.done(outcome_of(&result));
                self.metrics.concurrency_limit.store(self.concurrency.limit() as u64, std::sync::atomic::Ordering::Relaxed);
                (result, size)
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

#[async_trait]
impl Sink for BigQuerySink {
    async fn add_columns(&self, table: &TableConfig, columns: &[ColumnConfig]) -> Result<Vec<ColumnConfig>, SchemaError> {
        self.bq.add_columns(table, columns, self.log_partition_expiration).await
    }

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

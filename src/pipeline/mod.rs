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
//!
//! # Files, in the order a batch goes through them
//!
//! * [`evolve`]: step 1 with schema evolution: [`plan_all`] ([`evolve::plan_each`], then
//!   [`evolve::evolve_planned`]) plans a batch,
//!   adding the columns its messages need first;
//! * [`prepare`]: steps 1 and 2: [`plan`] decides what becomes of a message
//!   (rows, a dead letter, or nothing), [`prepare::prepare`] registers what
//!   each message waits for and builds the WAL batch of the new rows (their
//!   pending records, grouped by table, with the message of each: [`Origins`]);
//! * [`letters`]: the dead letters of messages and of refused rows;
//! * [`land`]: the WAL flush of pending records, then steps 3 and 4
//!   ([`ship_and_land`]);
//! * [`commit`]: step 5, the Kafka offset commits;
//! * [`recover`]: re-shipping the WAL's pending records at start;
//! * [`run`](mod@run): the select loop that reads batches and runs the steps.
//!
//! "Flush" is always the WAL's (durable on disk); "commit" is always Kafka's
//! (an offset acknowledged to the consumer group).

pub mod commit;
pub mod evolve;
pub mod land;
pub mod letters;
pub mod prepare;
pub mod recover;
pub mod run;
#[cfg(test)]
mod tests;

pub use crate::source::message::Msg;
pub use commit::committed_offsets;
pub use evolve::plan_all;
pub use land::{flush_durably, ship_and_land, Resolved, Shipped};
pub use letters::{dead_letter, dead_letter_row, kept_message, refused_row_letter, DEAD_LETTER_PAYLOAD_LIMIT};
pub use prepare::{group, msg_bytes, pending_record, plan, Evolution, Groups, NewColumn, Origins, Plan};
pub use recover::{recover, Recovered};
pub use run::run;

use crate::source::kafka::SourceError;
use crate::wal::WalError;

/// The WAL counter of changes not shipped because their key was already
/// landed or in flight (survives restarts and kill -9).
pub const COUNTER_DUPLICATES_ABSORBED: &str = "duplicates_absorbed";

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
    /// Shutdown came while a batch waited for schema evolution: nothing of
    /// the batch was begun or acknowledged (its messages are read again).
    #[error("shutdown requested while columns were being added; the batch was not begun")]
    Shutdown,
}

/// Where the bridge stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

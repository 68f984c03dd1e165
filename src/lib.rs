//! landfall: exactly-once change-data-capture from Kafka into BigQuery.
//!
//! # Layout
//!
//! The modules follow the path a change takes through the bridge:
//!
//! * [`source`]: the Kafka consumer, message coordinates, and the
//!   per-partition commit tracker that never lets a committed offset pass a
//!   change that is not yet landed.
//! * [`decode`]: the AWS DMS JSON envelope into a typed [`decode::Change`],
//!   identifier validation, conversion of values to BigQuery column types,
//!   and the log-table rows of a change.
//! * [`key`]: the content-hash dedup key (blake3) of a change.
//! * [`wal`]: the sled write-ahead log: pending records, landed marks, dead letters.
//! * [`sink`]: BigQuery: table creation and `tabledata.insertAll` shipping.
//! * [`merge`]: the MERGE that folds a CDC log table into its final table.
//! * [`table`]: the BigQuery table contract (the log-table row, columns and
//!   table names), shared by decode, sink and merge.
//! * [`dead_letter`]: listing dead letters and re-driving them after a fix.
//! * [`pipeline`]: the driver that ties the stages together, one file per
//!   durability step (prepare -> WAL flush -> insertAll -> landed flush ->
//!   Kafka offset commit).
//! * [`service`]: the pipeline plus the merge timer, as `landfall run` runs them.
//! * [`status`]: `landfall status`, from the running service or from the WAL and Kafka.
//! * [`catalog`]: `landfall tables import`, the `[[tables]]` section from the
//!   source's catalog.
//! * [`config`], [`metrics`], [`observe`]: the TOML configuration, the
//!   counters, and the HTTP listener serving them (`/metrics`, health, status).
//! * [`progress`]: progress of long commands (a bar on a terminal, lines otherwise).
//! * [`failpoint`]: kill points for crash drills (armed by feature `drill`).
//!
//! Beside the stages, behind the `harness` feature and never in a production
//! build, is the `harness`: the demo, the simulated source database and its
//! check, the out-of-process mock broker, the benchmark and the crash drills.
//!
//! The exactly-once argument lives in `docs/design.md`; every module that
//! guards one of its invariants says so in its own docs.

pub mod catalog;
pub mod check;
pub mod config;
pub mod dead_letter;
pub mod decode;
pub mod failpoint;
#[cfg(feature = "harness")]
pub mod harness;
pub mod key;
pub mod merge;
pub mod metrics;
pub mod observe;
pub mod pipeline;
pub mod progress;
pub mod service;
pub mod sink;
pub mod source;
pub mod status;
pub mod table;
pub mod wal;

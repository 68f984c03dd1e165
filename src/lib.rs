//! landfall: exactly-once change-data-capture from Kafka into BigQuery.
//!
//! # Layout
//!
//! The modules follow the path a change takes through the bridge:
//!
//! * [`source`]: the Kafka consumer and the per-partition commit tracker that
//!   never lets a committed offset pass a change that is not yet landed.
//! * [`decode`]: the AWS DMS JSON envelope into a typed [`decode::Change`],
//!   identifier validation, and conversion of values to BigQuery column types.
//! * [`key`]: the content-hash dedup key (blake3) of a change.
//! * [`log`]: the sled write-ahead log: pending records, landed marks, dead letters.
//! * [`table`]: the BigQuery table contract: log-table, tombstone and
//!   dead-letter columns and names, shared by decode, sink and merge.
//! * [`sink`]: BigQuery: table creation and `tabledata.insertAll` shipping.
//! * [`dlq`]: inspecting dead letters and re-driving them after a fix.
//! * [`merge`]: the MERGE that folds a CDC log table into its final table.
//! * [`service`]: the pipeline plus the merge timer, as `landfall run` runs them.
//! * [`pipeline`]: the driver that ties the stages together and owns the
//!   ordering of durability steps (WAL flush -> insertAll -> landed flush -> commit).
//! * [`config`], [`metrics`]: the TOML configuration and the counters.
//! * [`failpoint`]: kill points for crash drills (feature `drill`).
//! * [`bench`]: `landfall bench`, the benchmark harness (docs/performance.md);
//!   [`mock_kafka`] is the out-of-process mock broker it and the drills use.
//! * [`sim`]: a simulated source database (DMS messages plus the model of the
//!   expected final state) and the verification against BigQuery, used by
//!   `landfall demo` and the tests.
//!
//! The exactly-once argument lives in `docs/design.md`; every module that
//! guards one of its invariants says so in its own docs.

pub mod bench;
pub mod config;
pub mod decode;
pub mod demo;
pub mod dlq;
#[cfg(feature = "drill")]
pub mod drill;
pub mod failpoint;
pub mod key;
pub mod log;
pub mod merge;
pub mod metrics;
pub mod mock_kafka;
pub mod pipeline;
pub mod service;
pub mod sim;
pub mod sink;
pub mod source;
pub mod table;

//! The harness: everything that runs landfall on local parts instead of
//! carrying production data. Compiled only with the `harness` feature (the
//! `drill` feature turns it on too); `cargo build --release` without
//! features contains none of it.
//!
//! * [`demo`]: `landfall demo`, the whole pipeline on a mock Kafka cluster and
//!   the BigQuery emulator, verified; its helpers also set up the end-to-end
//!   tests.
//! * [`sim`]: the simulated source database (DMS messages plus the model of
//!   what each source table holds) and the check of the final tables against
//!   it, sharing no code with the stages it checks.
//! * [`emulator`]: a BigQuery emulator of its own (for a drill, or a test
//!   binary), started with the project's scripts.
//! * [`mock_kafka`]: librdkafka's mock cluster in its own process, so that a
//!   bridge can be killed without taking the broker with it.
//! * [`bench`]: `landfall bench`, the benchmark (docs/performance.md).
//! * [`drill`]: `landfall drill`, kill -9 crash drills (feature `drill`,
//!   which also arms the failpoints).
//! * [`proxy`]: the BigQuery fault proxy the fault-injection tests put in
//!   front of the emulator; as a blackhole for insertAll, the benchmark's
//!   HTTP path and latency phases.

pub mod bench;
pub mod demo;
#[cfg(feature = "drill")]
pub mod drill;
pub mod emulator;
pub mod mock_kafka;
pub mod proxy;
pub mod sim;

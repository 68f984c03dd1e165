//! Sink: BigQuery. Table creation ([`schema`]), the client and its error
//! classification ([`client`]), and shipping rows with insertAll, split as
//! request building ([`request`]), answer reading ([`response`]) and the
//! sink that drives them with retries and backoff ([`insert`]).
//! [`access`] asks BigQuery what landfall may do (`landfall check`).
//! [`discard`] drops rows instead (`[sink] kind = "discard"`), to measure the
//! bridge without an endpoint.

pub mod access;
pub mod client;
pub mod concurrency;
pub mod discard;
pub mod insert;
pub mod request;
pub mod response;
pub mod schema;

pub use client::BigQuery;
pub use discard::DiscardSink;
pub use insert::{BigQuerySink, LogRow, RowOutcome, Sink, SinkError};

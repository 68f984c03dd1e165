//! Sink: BigQuery. Table creation ([`schema`]), the client and its error
//! classification ([`client`]), and shipping rows with insertAll ([`insert`]).

pub mod client;
pub mod insert;
pub mod schema;

pub use client::BigQuery;
pub use insert::{BigQuerySink, RowOutcome, ShipRow, Sink, SinkError};

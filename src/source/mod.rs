//! Source: the Kafka consumer and the per-partition commit tracker.

pub mod kafka;
pub mod message;
pub mod progress;
pub mod tracker;

//! Source: the Kafka consumer and the per-partition commit tracker.

pub mod auth;
pub mod kafka;
pub mod message;
pub mod msk_iam;
pub mod progress;
pub mod tracker;

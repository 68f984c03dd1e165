//! The Kafka consumer: a consumer-group member that never auto-commits.
//!
//! landfall owns the commit discipline: `enable.auto.commit` and
//! `enable.auto.offset.store` are off, and offsets are committed explicitly
//! from the [`super::tracker::Tracker`]'s commit points only. Rebalance
//! events are queued for the pipeline, which drops revoked partitions'
//! tracking state.

use std::sync::{Arc, Mutex};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::tracker::TopicPartition;
use crate::config::KafkaConfig;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot create the Kafka consumer: {0}. Check kafka.bootstrap_servers and kafka.properties")]
    Create(rdkafka::error::KafkaError),
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe { topics: Vec<String>, source: rdkafka::error::KafkaError },
}

#[derive(Debug, Clone, PartialEq)]
pub enum RebalanceEvent {
    Assigned(Vec<TopicPartition>),
    Revoked(Vec<TopicPartition>),
}

/// Queues rebalance events and logs client errors without their secrets
/// (librdkafka never puts SASL passwords into its error strings).
#[derive(Default, Clone)]
pub struct SourceContext {
    pub events: Arc<Mutex<Vec<RebalanceEvent>>>,
}

fn partitions(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect()
}

impl ClientContext for SourceContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = partitions(tpl);
            tracing::info!(?parts, "partitions revoked");
            self.events.lock().unwrap_or_else(|e| e.into_inner()).push(RebalanceEvent::Revoked(parts));
        }
    }

    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts = partitions(tpl);
                tracing::info!(?parts, "partitions assigned");
                self.events.lock().unwrap_or_else(|e| e.into_inner()).push(RebalanceEvent::Assigned(parts));
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!(n = offsets.count(), "offsets committed"),
            // A failed commit is retried by the next commit of a later point;
            // a redelivery of what it covered is absorbed by the WAL.
            // The pipeline re-sends its commit points every few seconds.
            Err(e) => tracing::warn!(error = %e, "offset commit failed; it will be re-sent"),
        }
    }
}

pub type Source = StreamConsumer<SourceContext>;

/// The librdkafka configuration landfall uses, from `[kafka]`.
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap_servers)
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", cfg.session_timeout.as_millis().to_string())
        .set("enable.partition.eof", "false");
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

pub fn subscribe(cfg: &KafkaConfig) -> Result<(Source, SourceContext), SourceError> {
    let ctx = SourceContext::default();
    let consumer: Source = client_config(cfg).create_with_context(ctx.clone()).map_err(SourceError::Create)?;
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|source| SourceError::Subscribe { topics: cfg.topics.clone(), source })?;
    Ok((consumer, ctx))
}

/// Commits `points` (next offset to consume, per partition) asynchronously.
pub fn commit(consumer: &Source, points: &[(TopicPartition, i64)]) -> KafkaResult<()> {
    if points.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in points {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    consumer.commit(&tpl, CommitMode::Async)
}

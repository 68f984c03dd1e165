//! The Kafka consumer: a consumer-group member that never auto-commits.
//!
//! landfall owns the commit discipline: `enable.auto.commit` and
//! `enable.auto.offset.store` are off, and offsets are committed explicitly
//! from the [`super::tracker::Tracker`]'s commit points only.
//!
//! On a revoke, the rebalance callback waits (at most
//! `pipeline.shutdown_timeout`) until the revoked partitions have nothing in
//! flight, commits their commit points, and only then lets the partitions go,
//! so the next owner starts where this one stopped. What is still in flight
//! after the timeout is not committed: the next owner re-reads it.
//!
//! librdkafka runs that callback inside the consumer's poll, i.e. on the
//! tokio worker that polls the stream. The wait therefore leaves the async
//! scheduler first (`block_in_place`: the worker's other tasks move to a
//! fresh worker), so the ship tasks it waits for keep running even on a
//! runtime with a single worker.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use std::time::{Duration, Instant};

pub use super::auth::client_config;
use super::auth::ClientAuth;
use super::progress::{self, SharedProgress};
use super::tracker::TopicPartition;
use crate::config::KafkaConfig;
use crate::metrics::{Metrics, SharedMetrics};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot create the Kafka consumer: {0}. Check kafka.bootstrap_servers and kafka.properties")]
    Create(rdkafka::error::KafkaError),
    #[error(transparent)]
    Auth(#[from] super::msk_iam::MskIamError),
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe { topics: Vec<String>, source: rdkafka::error::KafkaError },
}

#[derive(Debug, Clone, PartialEq)]
pub enum RebalanceEvent {
    Assigned(Vec<TopicPartition>),
    Revoked(Vec<TopicPartition>),
}

/// Queues rebalance events, logs client errors without their secrets
/// (librdkafka never puts SASL passwords into its error strings) and makes
/// MSK IAM tokens when `kafka.auth` asks for them.
#[derive(Default, Clone)]
pub struct SourceContext {
    pub auth: ClientAuth,
    pub events: Arc<Mutex<Vec<RebalanceEvent>>>,
    pub progress: SharedProgress,
    pub revoke_timeout: Duration,
    pub metrics: SharedMetrics,
    /// Set when the consumer is being closed (shutdown): the revoke that
    /// closing triggers neither waits nor commits synchronously, so a close
    /// with the broker or BigQuery gone is not held up by it.
    pub closing: Arc<AtomicBool>,
}

/// Runs the blocking `wait` without stalling the async runtime it may be
/// called from (a rebalance callback runs inside a tokio task's poll).
pub(crate) fn wait_outside_the_scheduler<T>(wait: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
        // A current-thread runtime cannot lend its thread; the wait is bounded
        // by `revoke_timeout` (the service always runs multi-threaded).
        _ => wait(),
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect()
}

impl ClientContext for SourceContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(&self, _: Option<&str>) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        self.auth.oauth_token()
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
    }

    /// librdkafka's statistics (every `statistics.interval.ms`): the high
    /// watermark of each partition, for the lag `/metrics` reports.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let marks = statistics.topics.into_iter().flat_map(|(topic, t)| {
            t.partitions
                .into_iter()
                .filter(|(p, part)| *p >= 0 && part.hi_offset >= 0)
                .map(move |(p, part)| ((topic.clone(), p), part.hi_offset))
        });
        self.metrics.record_high_watermarks(marks);
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = partitions(tpl);
            // Land and commit what is in flight for these partitions first.
            // Ship tasks resolve keys on other threads meanwhile.
            let closing = self.closing.load(Ordering::SeqCst);
            let deadline = if closing { Instant::now() } else { Instant::now() + self.revoke_timeout };
            let (outstanding, points) = wait_outside_the_scheduler(|| loop {
                let (outstanding, points) = {
                    let p = progress::lock(&self.progress);
                    (p.tracker.outstanding_in(&parts), p.tracker.points_in(&parts))
                };
                if outstanding == 0 || Instant::now() >= deadline {
                    break (outstanding, points);
                }
                std::thread::sleep(Duration::from_millis(20));
            });
            Metrics::add(&self.metrics.revokes, 1);
            if outstanding > 0 && !closing {
                Metrics::add(&self.metrics.revokes_timed_out, 1);
            }
            if !points.is_empty() {
                let mut tpl = TopicPartitionList::new();
                for ((t, p), o) in &points {
                    let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
                }
                let mode = if closing { CommitMode::Async } else { CommitMode::Sync };
                if let Err(e) = consumer.commit(&tpl, mode) {
                    tracing::warn!(error = %e, "commit on revoke failed; the next owner re-reads from the previous commit");
                }
            }
            let mut p = progress::lock(&self.progress);
            for tp in &parts {
                p.tracker.revoke(tp);
            }
            drop(p);
            tracing::info!(?parts, left_in_flight = outstanding, committed = ?points, "partitions revoked");
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

/// The consumer. Closing a Kafka consumer blocks (it leaves the group and
/// may wait for an unreachable coordinator), so when the last handle drops
/// the close runs on a blocking thread, never on an async worker, and the
/// revoke it triggers does not wait ([`SourceContext::closing`]).
pub struct Consumer(Option<Source>);

impl Deref for Consumer {
    type Target = Source;
    fn deref(&self) -> &Source {
        self.0.as_ref().expect("the consumer is present until dropped")
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.context().closing.store(true, Ordering::SeqCst);
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn_blocking(move || drop(c));
                }
                Err(_) => drop(c),
            }
        }
    }
}

/// Reads the one message at `offset` of `topic`/`partition` again, without
/// joining the group or committing anything: for the dead letter of a row
/// whose message is no longer in memory (re-shipped after a restart; its
/// offset was never committed, so the message is normally still retained).
/// `None` when it cannot be read within `timeout` (retention removed it, the
/// broker is unreachable). Blocking: call it off the async runtime.
pub fn read_one(cfg: &KafkaConfig, topic: &str, partition: i32, offset: i64, timeout: Duration) -> Option<crate::source::message::Msg> {
    use rdkafka::Message as _;
    let consumer = super::auth::base_consumer(cfg, Default::default()).ok()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset)).ok()?;
    consumer.assign(&tpl).ok()?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) if m.offset() == offset => return Some(crate::source::message::Msg::from_kafka(&m)),
            // Past it (compacted away) or before it: not there.
            Some(Ok(m)) if m.offset() > offset => return None,
            _ => {}
        }
    }
    None
}

pub fn subscribe(
    cfg: &KafkaConfig,
    progress: SharedProgress,
    revoke_timeout: Duration,
    metrics: SharedMetrics,
) -> Result<(Consumer, SourceContext), SourceError> {
    let auth = ClientAuth::new(cfg, metrics.kafka_tokens.clone())?;
    let ctx = SourceContext { auth, events: Default::default(), progress, revoke_timeout, metrics, closing: Default::default() };
    let mut config = client_config(cfg);
    if !cfg.properties.contains_key("statistics.interval.ms") {
        // Partition high watermarks for the lag in /metrics.
        config.set("statistics.interval.ms", "5000");
    }
    let consumer: Source = config.create_with_context(ctx.clone()).map_err(SourceError::Create)?;
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(|source| SourceError::Subscribe { topics: cfg.topics.clone(), source })?;
    Ok((Consumer(Some(consumer)), ctx))
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

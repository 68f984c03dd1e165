//! Step 5: Kafka offset commits. A partition's commit point is the lowest
//! offset whose message is not complete (source/tracker.rs); it is committed
//! only after every key its messages wait for was flushed as resolved.

use std::time::Duration;

use rdkafka::consumer::Consumer;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::source::kafka::{self, RebalanceEvent};
use crate::source::progress::{self, SharedProgress};
use crate::source::tracker::TopicPartition;

use super::Msg;

/// Drops messages of revoked partitions that were read but not yet prepared
/// (the rebalance callback already settled their partitions' progress; the
/// next owner reads them again). Returns the partitions revoked since the
/// last call, so that a batch being planned meanwhile drops theirs too
/// ([`drop_revoked`]).
pub(super) fn drain_rebalance_events(ctx: &kafka::SourceContext, batch: &mut Vec<Msg>) -> Vec<TopicPartition> {
    let events: Vec<RebalanceEvent> = std::mem::take(&mut *ctx.events.lock().unwrap_or_else(|e| e.into_inner()));
    let mut revoked = Vec::new();
    for e in events {
        if let RebalanceEvent::Revoked(parts) = e {
            revoked.extend(parts);
        }
    }
    drop_revoked(batch, &revoked, |m| m);
    revoked
}

/// Drops the items (messages, or messages with their plans) of `revoked` partitions.
pub(super) fn drop_revoked<T>(items: &mut Vec<T>, revoked: &[TopicPartition], msg: impl Fn(&T) -> &Msg) {
    if !revoked.is_empty() {
        items.retain(|i| {
            let m = msg(i);
            !revoked.iter().any(|(t, p)| t == &m.topic && *p == m.partition)
        });
    }
}

/// The commit points handed out so far (to re-send them).
pub(super) fn committed_points(progress: &SharedProgress) -> Vec<(TopicPartition, i64)> {
    progress::lock(progress).tracker.commit_points().into_iter().filter_map(|(tp, o)| o.map(|o| (tp, o))).collect()
}

/// Commits the commit points that moved forward.
pub(super) fn commit_ready(consumer: &kafka::Source, progress: &SharedProgress, metrics: &Metrics) {
    let points = progress::lock(progress).tracker.take_commits();
    if points.is_empty() {
        return;
    }
    match kafka::commit(consumer, &points) {
        Ok(()) => {
            Metrics::add(&metrics.commits, 1);
            metrics.record_commits(&points);
        }
        Err(e) => tracing::warn!(error = %e, "offset commit failed; a later commit covers it"),
    }
}

/// Consumer group lag helper for tests and the demo: the committed offset
/// of every partition of `topic` for the group in `cfg`.
pub fn committed_offsets(cfg: &Config, topic: &str, partitions: i32) -> Result<Vec<i64>, crate::source::auth::ClientError> {
    let consumer = crate::source::auth::base_consumer(&cfg.kafka, Default::default())?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let c = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok((0..partitions)
        .map(|p| match c.find_partition(topic, p).map(|e| e.offset()) {
            Some(rdkafka::Offset::Offset(o)) => o,
            _ => 0,
        })
        .collect())
}

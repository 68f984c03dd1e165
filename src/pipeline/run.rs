//! The select loop: reads messages into batches (bounded in messages and
//! bytes), plans each batch (decodes it on a thread of the blocking pool,
//! then adds the columns it needs on a task) while it reads the next,
//! prepares the planned batch, and hands it to a task of its own
//! that flushes its pending records, ships and lands them, then completes
//! its messages and commits. It also drains on shutdown (bounded), re-sends
//! commit points, prunes the WAL and logs the counters' summary.
//!
//! One batch is planned at a time and batches are prepared in the order
//! they were read, so the WAL, the in-flight keys and the commit point see
//! them exactly as without the planning task. A partition revoked while its
//! messages were being planned is settled by the rebalance callback without
//! them (they are not registered yet); they are dropped before the batch is
//! prepared, and the next owner reads them again. A batch whose planning
//! ends in a shutdown (schema evolution was waiting for BigQuery) is never
//! registered, so the batch read behind it is dropped too: nothing read after
//! an unbegun batch lands, and the commit point cannot pass it.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::config::Config;
use crate::metrics::{Metrics, SharedMetrics};
use crate::sink::Sink;
use crate::source::kafka;
use crate::source::progress::{self, SharedProgress};
use crate::source::tracker::TopicPartition;
use crate::wal::{now_ms, Wal, WalBatch};

use super::commit::{commit_ready, committed_points, drain_rebalance_events, drop_revoked};
use super::evolve::{evolve_planned, plan_each};
use super::land::{blocking, flush_durably, ship_and_land, Shipped};
use super::prepare::{msg_bytes, prepare, Groups, Origins, Plan, Prepared};
use super::recover::{recover, Recovered};
use super::{Msg, PipelineError, Stopped};

/// A ship task's end: its keys are already resolved in the shared progress.
struct BatchDone {
    result: Result<Shipped, PipelineError>,
    /// The message bytes of the batch, released now that its task is over.
    bytes: usize,
}

/// What planning a batch gives: the config to go on with (grown by schema
/// evolution) and each message with its plan.
type PlannedBatch = (Arc<Config>, Result<Vec<(Msg, Plan)>, PipelineError>);

/// A batch being planned (decoded) on a task of its own.
struct Planning {
    task: tokio::task::JoinHandle<PlannedBatch>,
    /// Its message bytes, counted in flight from the moment it was read.
    bytes: usize,
    produced: Vec<i64>,
}

/// The planned batch, once its task ends (never, without one).
async fn planned_batch(planning: &mut Option<Planning>) -> Result<PlannedBatch, tokio::task::JoinError> {
    match planning {
        Some(p) => (&mut p.task).await,
        None => std::future::pending().await,
    }
}

/// What a batch's ship task needs.
struct Ship {
    wal: Wal,
    sink: Arc<dyn Sink>,
    metrics: SharedMetrics,
    progress: SharedProgress,
    consumer: Arc<kafka::Consumer>,
    dead_letter_table: String,
}

impl Ship {
    /// Spawns the batch's own task: it makes the pending records durable,
    /// ships them and lands them, while the loop reads and prepares the next
    /// batch. Its messages are registered as waiting for its keys, so
    /// neither they nor a duplicate of one of its changes complete before
    /// all of that is done.
    fn spawn(self, groups: Groups, wal_batch: WalBatch, origins: Origins, produced: Vec<i64>, bytes: usize, tx: mpsc::Sender<BatchDone>) {
        let rows: usize = groups.iter().map(|(_, r)| r.len()).sum();
        let span = tracing::info_span!("ship_batch", rows, tables = groups.len());
        let Ship { wal, sink, metrics, progress, consumer, dead_letter_table } = self;
        tokio::spawn(
            async move {
                let started = std::time::Instant::now();
                let result = async {
                    flush_durably(&wal, wal_batch, &metrics).await?;
                    crate::failpoint::hit(crate::failpoint::AFTER_WAL_PENDING);
                    let flushed = started.elapsed();
                    let shipped = ship_and_land(&wal, &sink, &dead_letter_table, groups, &origins, &metrics).await;
                    tracing::debug!(
                        wal_flush_ms = flushed.as_millis() as u64,
                        ship_and_land_ms = (started.elapsed() - flushed).as_millis() as u64,
                        "batch shipped"
                    );
                    shipped
                }
                .await;
                if let Ok(Shipped::Resolved(resolved)) = &result {
                    // Step 5: complete the messages, commit.
                    progress::lock(&progress).resolve(&resolved.keys);
                    commit_ready(&consumer, &progress, &metrics);
                    metrics.latency.record_since(&produced, now_ms() as i64);
                }
                let _ = tx.send(BatchDone { result, bytes }).await;
            }
            .instrument(span),
        );
    }
}

/// Whether the batch being read takes another message: it is not full (in
/// messages or bytes), and the bytes in flight are under their bound.
fn room(p: &crate::config::PipelineConfig, messages: usize, batch_bytes: usize, shipping_bytes: usize) -> bool {
    messages < p.batch_max_messages && batch_bytes < p.batch_max_bytes && shipping_bytes + batch_bytes < p.max_inflight_bytes
}

/// Runs the bridge until `shutdown` turns true (or a fatal error).
/// `abort` is raised when draining times out; the sink given here must watch it.
pub async fn run(
    cfg: Arc<Config>,
    wal: Wal,
    sink: Arc<dyn Sink>,
    metrics: SharedMetrics,
    mut shutdown: watch::Receiver<bool>,
    abort: watch::Sender<bool>,
) -> Result<Stopped, PipelineError> {
    match recover(&wal, &sink, &cfg, &metrics).await? {
        Recovered::Complete(0) => {}
        Recovered::Complete(n) => tracing::info!(records = n, "recovery complete"),
        Recovered::Interrupted => return Ok(Stopped::Interrupted),
    }
    metrics.consuming_since_ms.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
    // The config messages are planned with: schema evolution grows it.
    let mut live = cfg.clone();
    let progress = SharedProgress::default();
    let (consumer, ctx) = kafka::subscribe(&cfg.kafka, progress.clone(), cfg.pipeline.shutdown_timeout, metrics.clone())?;
    let consumer = Arc::new(consumer);
    let (done_tx, mut done_rx) = mpsc::channel::<BatchDone>(cfg.pipeline.max_inflight_batches + 1);
    let mut batches_in_flight = 0usize;
    // Message bytes of the batches whose ship task has not ended, and of
    // the batch being read: their sum is held under max_inflight_bytes
    // (plus the one message that reaches it).
    let mut shipping_bytes = 0usize;
    let mut batch_bytes = 0usize;
    let mut batch: Vec<Msg> = Vec::with_capacity(cfg.pipeline.batch_max_messages);
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut summary = tokio::time::interval(cfg.observability.summary_interval);
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prune = tokio::time::interval(cfg.wal.prune_interval);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = *shutdown.borrow();
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    // Commit points are re-sent every few seconds: a failed async commit is
    // then repaired even when no new change moves the point.
    let mut recommit = tokio::time::interval(Duration::from_secs(2));
    recommit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One stream for the whole run: `recv()` registers and drops a waker
    // slot per message.
    let mut messages = consumer.stream();
    // The batch being planned (at most one), and the partitions revoked
    // meanwhile, whose messages it drops before it is prepared.
    let mut planning: Option<Planning> = None;
    let mut revoked_while_planning: Vec<TopicPartition> = Vec::new();

    // Whether the batch being read is to be planned now: it is full, its
    // wait is over, or the bridge is stopping.
    macro_rules! flush_due {
        () => {
            !batch.is_empty()
                && (batch.len() >= cfg.pipeline.batch_max_messages
                    || batch_bytes >= cfg.pipeline.batch_max_bytes
                    || stopping
                    || deadline.is_some_and(|d| d <= tokio::time::Instant::now()))
        };
    }
    // Step 1 on a task of its own: the loop reads the next batch (and
    // prepares the one before) while this one is decoded. One batch is
    // planned at a time, so batches are prepared in the order they were
    // read, each with the config the batches before it left (schema
    // evolution). Its bytes count in flight from now on.
    macro_rules! start_planning {
        () => {{
            let msgs = std::mem::take(&mut batch);
            let bytes = std::mem::take(&mut batch_bytes);
            if let Some(d) = deadline {
                tracing::debug!(
                    read_ms = (tokio::time::Instant::now() + cfg.pipeline.batch_max_wait - d).as_millis() as u64,
                    messages = msgs.len(),
                    "batch read"
                );
            }
            deadline = None;
            let produced: Vec<i64> = msgs.iter().filter_map(|m| m.produced_ms).collect();
            metrics.record_consumed(&msgs);
            batches_in_flight += 1;
            shipping_bytes += bytes;
            let span = tracing::debug_span!("plan_batch", messages = msgs.len());
            let (mut with, sink, metrics, shutdown) = (live.clone(), sink.clone(), metrics.clone(), shutdown.clone());
            // Decoding starts at once on a thread of its own: a task spawned
            // here would wait in this worker's LIFO slot (not stolen by the
            // other worker) until the loop yields, after the prepare below.
            let (c, m) = (with.clone(), metrics.clone());
            let decoding = tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let planned = plan_each(&c, msgs, &m);
                tracing::debug!(plan_ms = started.elapsed().as_millis() as u64, "batch decoded");
                planned
            });
            let task = tokio::spawn(
                async move {
                    let planned = match decoding.await {
                        Ok(planned) => evolve_planned(&mut with, &*sink, planned, &metrics, &shutdown).await,
                        Err(e) => Err(PipelineError::Task(e.to_string())),
                    };
                    (with, planned)
                }
                .instrument(span),
            );
            planning = Some(Planning { task, bytes, produced });
        }};
    }

    loop {
        if stopping && batch.is_empty() && batches_in_flight == 0 {
            break;
        }
        let p = &cfg.pipeline;
        let can_read = !stopping && batches_in_flight < p.max_inflight_batches && room(p, batch.len(), batch_bytes, shipping_bytes);
        let flush_now = flush_due!();
        if flush_now && batches_in_flight < cfg.pipeline.max_inflight_batches && planning.is_none() {
            start_planning!();
            continue;
        }
        let sleep_until = deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            biased;
            Some(done) = done_rx.recv() => {
                batches_in_flight -= 1;
                shipping_bytes = shipping_bytes.saturating_sub(done.bytes);
                metrics.set_inflight_bytes(shipping_bytes + batch_bytes);
                if done.result? == Shipped::Interrupted {
                    // Aborted: what was in flight stays pending in the WAL.
                    return Ok(Stopped::Interrupted);
                }
            }
            planned = planned_batch(&mut planning), if planning.is_some() => {
                let Planning { bytes, produced, .. } = planning.take().expect("the branch runs only while a batch is planned");
                let (grown, planned) = planned.map_err(|e| PipelineError::Task(e.to_string()))?;
                live = grown;
                let mut planned = match planned {
                    Ok(planned) => planned,
                    Err(PipelineError::Shutdown) => {
                        // Schema evolution was waiting for BigQuery: nothing of
                        // the batch was begun, so it is left for the next start.
                        batches_in_flight -= 1;
                        shipping_bytes = shipping_bytes.saturating_sub(bytes);
                        // Its messages were never registered, so nothing read
                        // after them may land: the commit point would pass
                        // them (the tracker allows gaps). The batch being read
                        // is dropped unplanned and read again at the next start
                        // (no later batch was planned: one is planned at a time).
                        batch.clear();
                        batch_bytes = 0;
                        deadline = None;
                        metrics.set_inflight_bytes(shipping_bytes);
                        if !stopping {
                            stopping = true;
                            drain_deadline = Some(tokio::time::Instant::now() + cfg.pipeline.shutdown_timeout);
                        }
                        tracing::info!(
                            in_flight = batches_in_flight,
                            "shutdown while columns were being added: the batch (and the one read behind it) is read again at the next start"
                        );
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                // Partitions revoked while the batch was planned: the
                // rebalance callback settled them without its messages
                // (not yet registered), and the next owner reads them again.
                revoked_while_planning.extend(drain_rebalance_events(&ctx, &mut batch));
                batch_bytes = batch.iter().map(msg_bytes).sum();
                drop_revoked(&mut planned, &std::mem::take(&mut revoked_while_planning), |(m, _)| m);
                // The next batch, if it is ready, is planned while this one
                // is prepared.
                if flush_due!() && batches_in_flight < cfg.pipeline.max_inflight_batches {
                    start_planning!();
                }
                let span = tracing::debug_span!("prepare_batch", messages = planned.len());
                let started = std::time::Instant::now();
                let Prepared { groups, wal_batch, origins } = prepare(&live, &wal, &metrics, &progress, planned).instrument(span).await?;
                tracing::debug!(prepare_ms = started.elapsed().as_millis() as u64, in_flight = batches_in_flight, "batch prepared");
                if groups.is_empty() {
                    // Nothing to ship: only counters (and dead letters already
                    // resolved) to make durable before the messages complete.
                    flush_durably(&wal, wal_batch, &metrics).await?;
                    commit_ready(&consumer, &progress, &metrics);
                    metrics.latency.record_since(&produced, now_ms() as i64);
                    batches_in_flight -= 1;
                    shipping_bytes = shipping_bytes.saturating_sub(bytes);
                    metrics.set_inflight_bytes(shipping_bytes + batch_bytes);
                } else {
                    commit_ready(&consumer, &progress, &metrics);
                    let ship = Ship { wal: wal.clone(), sink: sink.clone(), metrics: metrics.clone(), progress: progress.clone(), consumer: consumer.clone(), dead_letter_table: cfg.bigquery.dead_letter_table.clone() };
                    ship.spawn(groups, wal_batch, origins, produced, bytes, done_tx.clone());
                }
            }
            _ = shutdown.changed(), if !stopping => {
                stopping = true;
                drain_deadline = Some(tokio::time::Instant::now() + cfg.pipeline.shutdown_timeout);
                tracing::info!(in_flight = batches_in_flight, timeout = ?cfg.pipeline.shutdown_timeout, "shutdown requested: draining in-flight batches");
            }
            _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(tokio::time::Instant::now)), if drain_deadline.is_some() => {
                // Bounded shutdown: give up on what is still in flight. It is
                // pending in the WAL (or was never written) and its offsets
                // were not committed, so the next start re-ships it.
                let _ = abort.send(true);
                tracing::warn!(in_flight = batches_in_flight, "shutdown timeout: leaving in-flight changes pending in the WAL");
                commit_ready(&consumer, &progress, &metrics);
                metrics.log_summary();
                return Ok(Stopped::Interrupted);
            }
            msg = messages.next(), if can_read => {
                // The first message woke the loop; what librdkafka already
                // holds is taken without a trip through the select (one
                // wake per message cost more than decoding it).
                let mut next = msg.expect("kafka streams never end");
                loop {
                    match next {
                        Ok(m) => {
                            let revoked = drain_rebalance_events(&ctx, &mut batch);
                            if !revoked.is_empty() {
                                batch_bytes = batch.iter().map(msg_bytes).sum();
                                if planning.is_some() {
                                    revoked_while_planning.extend(revoked);
                                }
                            }
                            Metrics::add(&metrics.consumed, 1);
                            if batch.is_empty() {
                                deadline = Some(tokio::time::Instant::now() + cfg.pipeline.batch_max_wait);
                            }
                            let m = Msg::from_kafka(&m);
                            batch_bytes += msg_bytes(&m);
                            batch.push(m);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "kafka consume error");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            break;
                        }
                    }
                    // Room is checked before polling: a message polled is a message taken.
                    if !room(&cfg.pipeline, batch.len(), batch_bytes, shipping_bytes) {
                        break;
                    }
                    match messages.next().now_or_never() {
                        Some(Some(m)) => next = m,
                        _ => break,
                    }
                }
                metrics.set_inflight_bytes(shipping_bytes + batch_bytes);
            }
            // Only while a batch could be dispatched: a past deadline with every
            // slot taken, or with a batch still being planned, would otherwise spin.
            _ = tokio::time::sleep_until(sleep_until), if deadline.is_some() && batches_in_flight < cfg.pipeline.max_inflight_batches && planning.is_none() => {}
            _ = summary.tick() => metrics.log_summary(),
            _ = recommit.tick() => {
                if let Err(e) = kafka::commit(&consumer, &committed_points(&progress)) {
                    tracing::debug!(error = %e, "offset re-commit not sent");
                }
            }
            _ = prune.tick() => {
                let w = wal.clone();
                let before = now_ms().saturating_sub(cfg.wal.retention.as_millis() as u64);
                match blocking(move || w.prune(before)).await {
                    Ok(n) if n > 0 => tracing::info!(pruned = n, "pruned landed WAL records past retention"),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    // Everything read has landed: commit the final points. A synchronous
    // commit can wait forever while the coordinator is unreachable, so the
    // commit is asynchronous and the consumer is served for a bounded time to
    // deliver it (a message read meanwhile is not acknowledged: redelivered
    // later, absorbed by the WAL).
    if let Err(e) = kafka::commit(&consumer, &committed_points(&progress)) {
        tracing::warn!(error = %e, "final offset commit failed; the next start re-reads and the WAL absorbs the duplicates");
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await;
    metrics.log_summary();
    Ok(Stopped::Drained)
}

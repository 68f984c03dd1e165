//! Replay safety: after everything is merged and the WAL has pruned its keys,
//! the consumer group is reset to the earliest offsets and every message is
//! replayed (to an endpoint that keeps every copy). Merges run while the
//! replay is under way; after each, the final tables still equal the source:
//! no row goes back to an older value, no deleted row comes back.

mod support;

use std::time::Duration;

use landfall::harness::demo::{run_until_caught_up, wait_caught_up};
use landfall::harness::proxy::FaultProxy;
use landfall::harness::sim::Simulator;
use landfall::service::Service;
use landfall::wal::Wal;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_whole_topic_changes_nothing() {
    let proxy = FaultProxy::start(support::endpoint().trim_end_matches("/bigquery/v2")).await.unwrap();
    proxy.set_strip_insert_ids(true);
    let stack = support::Stack::start("replay", 4, "", &[(&support::endpoint(), &proxy.endpoint())]).await;
    let (kafka, cfg) = (&stack.kafka, &stack.cfg);
    let mut sim = Simulator::new(31);
    let mut msgs = sim.full_load(100);
    msgs.extend(sim.changes(2_000));
    kafka.produce(&msgs).unwrap();
    run_until_caught_up(cfg, kafka, Duration::from_secs(300)).await.unwrap();
    stack.merge_and_verify(&sim.model).await;

    // Retention has pruned every landed key; the group is reset to the start.
    let pruned = Wal::open(&cfg.wal.path).unwrap().prune(u64::MAX).unwrap();
    assert!(pruned >= sim.produced, "pruned {pruned}");
    // As an operator would: join the group, take every partition, commit 0.
    let c: BaseConsumer = landfall::source::kafka::client_config(&cfg.kafka).create().unwrap();
    c.subscribe(&[&kafka.topic]).unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..kafka.partitions {
        tpl.add_partition_offset(&kafka.topic, p, Offset::Offset(0)).unwrap();
    }
    let mut attempt = 0;
    loop {
        let _ = c.poll(Duration::from_millis(200));
        if c.assignment().map(|a| a.count()).unwrap_or(0) == kafka.partitions as usize && c.commit(&tpl, CommitMode::Sync).is_ok() {
            break;
        }
        attempt += 1;
        assert!(attempt < 150, "cannot reset the group's offsets");
    }
    drop(c);

    // Replay, merging (and checking) while it runs.
    let service = Service::start(cfg.clone()).await.unwrap();
    let mut checks = 0;
    while wait_caught_up(cfg, kafka, &service, Duration::from_millis(1)).await.is_err() {
        tokio::time::sleep(Duration::from_millis(700)).await;
        stack.merge_and_verify(&sim.model).await;
        checks += 1;
        assert!(checks < 200, "replay did not finish");
    }
    service.stop().await.unwrap();
    let copies = stack.log_copies().await;
    assert!(copies as usize >= sim.produced, "the replay really landed a second copy of every change ({copies})");
    stack.merge_and_verify(&sim.model).await;
}

//! WAL I/O errors (a full disk): the bridge stops consuming and
//! acknowledging, says what is wrong, loses nothing, and carries on by itself
//! once writes succeed again.

mod support;

use std::time::Duration;

use landfall::harness::demo::wait_caught_up;
use landfall::harness::sim::Simulator;
use landfall::metrics::Metrics;
use landfall::pipeline::committed_offsets;
use landfall::service::Service;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_pauses_the_bridge_and_it_recovers_when_space_returns() {
    let stack = support::Stack::start("walfaults", 3, "", &[]).await;
    let (kafka, cfg) = (&stack.kafka, &stack.cfg);
    let mut sim = Simulator::new(13);
    let mut msgs = sim.full_load(50);
    msgs.extend(sim.changes(600));
    kafka.produce(&msgs[..300]).unwrap();

    let service = Service::start(cfg.clone()).await.unwrap();
    wait_caught_up(cfg, kafka, &service, Duration::from_secs(120)).await.unwrap();
    let before = committed_offsets(cfg, &kafka.topic, kafka.partitions).unwrap();

    // The disk fills up: every WAL write fails until further notice.
    service.wal.inject_io_errors(u32::MAX);
    kafka.produce(&msgs[300..]).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(Metrics::get(&service.metrics.wal_errors) > 0, "the failures were seen");
    assert_eq!(committed_offsets(cfg, &kafka.topic, kafka.partitions).unwrap(), before, "nothing acknowledged while the WAL cannot write");
    assert!(!service.is_finished(), "the bridge waits instead of dying");

    // Space returns.
    service.wal.inject_io_errors(0);
    wait_caught_up(cfg, kafka, &service, Duration::from_secs(120)).await.unwrap();
    service.stop().await.unwrap();
    stack.merge_and_verify(&sim.model).await;
}

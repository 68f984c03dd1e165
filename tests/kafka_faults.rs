//! Kafka faults without a crash: the broker goes down and comes back,
//! OffsetCommit requests fail, and a second group member joins and leaves in
//! the middle of the stream (two rebalances). The final tables equal the model.

mod support;

use std::time::Duration;

use landfall::harness::demo::wait_caught_up;
use landfall::harness::sim::Simulator;
use landfall::service::Service;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_and_failing_offset_commits_lose_nothing() {
    let stack = support::Stack::start("kfaults", 4, "", &[]).await;
    let (kafka, cfg) = (&stack.kafka, &stack.cfg);
    let mut sim = Simulator::new(11);
    let mut first = sim.full_load(100);
    first.extend(sim.changes(800));
    kafka.produce(&first).unwrap();

    let service = Service::start(cfg.clone()).await.unwrap();
    wait_caught_up(cfg, kafka, &service, Duration::from_secs(120)).await.unwrap();

    // The broker goes away for a while, with new changes waiting behind it.
    kafka.produce(&sim.changes(400)).unwrap();
    kafka.cluster.broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    kafka.cluster.broker_up(1).unwrap();
    wait_caught_up(cfg, kafka, &service, Duration::from_secs(120)).await.unwrap();

    // The next OffsetCommit requests fail; later commits cover them.
    let errors = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR; 6];
    kafka.cluster.request_errors(RDKafkaApiKey::OffsetCommit, &errors);
    kafka.produce(&sim.changes(400)).unwrap();
    wait_caught_up(cfg, kafka, &service, Duration::from_secs(120)).await.unwrap();
    assert!(!service.is_finished(), "the bridge survived the faults");
    service.stop().await.unwrap();
    stack.merge_and_verify(&sim.model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalances_in_the_middle_of_the_stream_lose_nothing() {
    let stack = support::Stack::start("rebalance", 6, "", &[]).await;
    let (kafka, cfg) = (&stack.kafka, &stack.cfg);
    let mut sim = Simulator::new(12);
    let mut msgs = sim.full_load(100);
    msgs.extend(sim.changes(1500));
    kafka.produce(&msgs[..800]).unwrap();

    let service = Service::start(cfg.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    // A second member joins the group (taking partitions away from the
    // bridge mid-stream) and later leaves again without committing anything.
    kafka.produce(&msgs[800..1200]).unwrap();
    support::intrude(kafka, &cfg.kafka.group_id, Duration::from_secs(8)).await;
    kafka.produce(&msgs[1200..]).unwrap();
    wait_caught_up(cfg, kafka, &service, Duration::from_secs(180)).await.unwrap();
    service.stop().await.unwrap();
    stack.merge_and_verify(&sim.model).await;
}

//! Kafka faults without a crash: the broker goes down and comes back,
//! OffsetCommit requests fail, and a second group member joins and leaves in
//! the middle of the stream (two rebalances). The final tables equal the model.

mod support;

use std::time::Duration;

use landfall::demo::{merger, wait_caught_up, LocalKafka};
use landfall::service::Service;
use landfall::sim::{verify, Simulator};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::ClientConfig;

async fn verify_model(cfg: &landfall::config::Config, bq: &landfall::sink::BigQuery, sim: &Simulator) {
    let cfg = std::sync::Arc::new(cfg.clone());
    for r in merger(bq, &cfg).merge_all(false).await {
        r.unwrap();
    }
    let verdicts = verify::verify_all(bq, &cfg.tables, &sim.model).await.unwrap();
    assert!(verdicts.iter().all(|v| v.matches()), "{}", verify::report(&verdicts));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_and_failing_offset_commits_lose_nothing() {
    let kafka = LocalKafka::start("dms.kfaults", 4).unwrap();
    let wal = tempfile::tempdir().unwrap();
    let dataset = support::unique_dataset("kfaults");
    let cfg = support::config(&kafka, wal.path(), &dataset, "");
    let bq = support::bigquery(&cfg).await;
    let mut sim = Simulator::new(11);
    let mut first = sim.full_load(100);
    first.extend(sim.changes(800));
    kafka.produce(&first).unwrap();

    let service = Service::start(cfg.clone()).await.unwrap();
    wait_caught_up(&cfg, &kafka, &service, Duration::from_secs(120)).await.unwrap();

    // The broker goes away for a while, with new changes waiting behind it.
    kafka.produce(&sim.changes(400)).unwrap();
    kafka.cluster.broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    kafka.cluster.broker_up(1).unwrap();
    wait_caught_up(&cfg, &kafka, &service, Duration::from_secs(120)).await.unwrap();

    // The next OffsetCommit requests fail; later commits cover them.
    let errors = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR; 6];
    kafka.cluster.request_errors(RDKafkaApiKey::OffsetCommit, &errors);
    kafka.produce(&sim.changes(400)).unwrap();
    wait_caught_up(&cfg, &kafka, &service, Duration::from_secs(120)).await.unwrap();
    assert!(!service.is_finished(), "the bridge survived the faults");
    service.stop().await.unwrap();
    verify_model(&cfg, &bq, &sim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalances_in_the_middle_of_the_stream_lose_nothing() {
    let kafka = LocalKafka::start("dms.rebalance", 6).unwrap();
    let wal = tempfile::tempdir().unwrap();
    let dataset = support::unique_dataset("rebalance");
    let cfg = support::config(&kafka, wal.path(), &dataset, "");
    let bq = support::bigquery(&cfg).await;
    let mut sim = Simulator::new(12);
    let mut msgs = sim.full_load(100);
    msgs.extend(sim.changes(1500));
    kafka.produce(&msgs[..800]).unwrap();

    let service = Service::start(cfg.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    // A second member joins the group (taking partitions away from the
    // bridge mid-stream) and later leaves again without committing anything.
    let intruder: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("group.id", &cfg.kafka.group_id)
        .set("session.timeout.ms", "6000")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    intruder.subscribe(&[&kafka.topic]).unwrap();
    kafka.produce(&msgs[800..1200]).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(8), intruder.recv()).await;
    drop(intruder);
    kafka.produce(&msgs[1200..]).unwrap();
    wait_caught_up(&cfg, &kafka, &service, Duration::from_secs(180)).await.unwrap();
    service.stop().await.unwrap();
    verify_model(&cfg, &bq, &sim).await;
}

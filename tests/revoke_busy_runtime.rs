//! A revoke on a runtime with a single worker (a 1-vCPU host). librdkafka
//! runs the rebalance callback inside the consumer's poll, on the worker
//! that polls the stream; the callback waits for the revoked partitions'
//! in-flight changes to land. That wait must not stop the very tasks it
//! waits for: with the worker blocked, every revoke would time out and the
//! next owner would redo the work.

mod support;

use std::time::Duration;

use landfall::harness::demo::wait_caught_up;
use landfall::harness::proxy::{Fault, FaultProxy, Target};
use landfall::harness::sim::Simulator;
use landfall::metrics::Metrics;
use landfall::service::Service;

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_revoke_on_a_one_worker_runtime_lands_what_is_in_flight() {
    let proxy = FaultProxy::start(support::endpoint().trim_end_matches("/bigquery/v2")).await.unwrap();
    let stack = support::Stack::start(
        "revoke1",
        4,
        "",
        &[
            (&support::endpoint(), &proxy.endpoint()),
            ("batch_max_wait = \"20ms\"", "batch_max_wait = \"20ms\"\nshutdown_timeout = \"15s\""),
        ],
    )
    .await;
    let (kafka, cfg) = (&stack.kafka, &stack.cfg);
    let mut sim = Simulator::new(31);
    let mut msgs = sim.full_load(50);
    msgs.extend(sim.changes(600));
    kafka.produce(&msgs[..300]).unwrap();
    let service = Service::start(cfg.clone()).await.unwrap();
    wait_caught_up(cfg, kafka, &service, Duration::from_secs(120)).await.unwrap();

    // New changes whose insertAll requests take 3 s each: batches are in
    // flight when a second member joins and the bridge's partitions are revoked.
    for _ in 0..16 {
        proxy.push(Fault::Delay { target: Target::InsertAll, by: Duration::from_secs(3) });
    }
    kafka.produce(&msgs[300..]).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    support::intrude(kafka, &cfg.kafka.group_id, Duration::from_secs(10)).await;
    wait_caught_up(cfg, kafka, &service, Duration::from_secs(180)).await.unwrap();
    let metrics = service.metrics.clone();
    service.stop().await.unwrap();
    assert!(Metrics::get(&metrics.revokes) >= 1, "the second member caused a revoke");
    assert_eq!(Metrics::get(&metrics.revokes_timed_out), 0, "a revoke waited out its timeout: the runtime was blocked");
    stack.merge_and_verify(&sim.model).await;
}

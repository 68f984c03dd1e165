//! BigQuery faults without a crash, injected by the fault proxy in front of
//! the emulator: 429/500/503, timeouts, connection resets before and after
//! the request reached BigQuery, per-row `invalid`/`stopped`/`backendError`
//! answers, MERGE serialization conflicts and quota errors, and an endpoint
//! that ignores insertIds entirely.

mod support;

use std::sync::Arc;
use std::time::Duration;

use landfall::harness::demo::run_until_caught_up;
use landfall::harness::proxy::{Fault, FaultProxy, Target};
use landfall::harness::sim::Simulator;
use landfall::merge::Merger;
use landfall::metrics::Metrics;

/// The emulator's base URL without the `/bigquery/v2` suffix.
fn upstream() -> String {
    support::endpoint().trim_end_matches("/bigquery/v2").to_owned()
}

fn status(target: Target, code: u16, reason: &str, message: &str) -> Fault {
    Fault::Status { target, code, reason: reason.into(), message: message.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_insert_all_failures_are_retried_and_land_exactly_once() {
    let proxy = FaultProxy::start(&upstream()).await.unwrap();
    let stack = support::Stack::start(
        "bqfaults",
        3,
        "",
        &[(&support::endpoint(), &proxy.endpoint()), ("request_timeout = \"30s\"", "request_timeout = \"2s\"")],
    )
    .await;
    let (kafka, cfg) = (&stack.kafka, &stack.cfg);
    let mut sim = Simulator::new(21);
    let mut msgs = sim.full_load(60);
    msgs.extend(sim.changes(900));
    sim.duplicate(&mut msgs, 0.05);
    kafka.produce(&msgs).unwrap();

    let faults = vec![
        status(Target::InsertAll, 429, "rateLimitExceeded", "Exceeded rate limits"),
        status(Target::InsertAll, 500, "backendError", "internal error"),
        status(Target::InsertAll, 503, "backendError", "service unavailable"),
        Fault::Reset { target: Target::InsertAll },
        Fault::ForwardThenReset { target: Target::InsertAll },
        Fault::Delay { target: Target::InsertAll, by: Duration::from_secs(3) },
        Fault::RowsBackendError,
        Fault::ForwardThenReset { target: Target::InsertAll },
    ];
    let n = faults.len() as u64;
    for f in faults {
        proxy.push(f);
    }
    let m = run_until_caught_up(cfg, kafka, Duration::from_secs(300)).await.unwrap();
    assert_eq!(proxy.stats().faults_injected, n, "every fault was hit");
    assert!(Metrics::get(&m.request_retries) >= n - 1, "retries: {}", Metrics::get(&m.request_retries));
    assert_eq!(Metrics::get(&m.dead_lettered), 0, "transient faults never dead-letter");
    stack.merge_and_verify(&sim.model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_answered_invalid_is_dead_lettered_and_the_stopped_ones_are_resent() {
    let proxy = FaultProxy::start(&upstream()).await.unwrap();
    let stack = support::Stack::start("invalidrow", 1, "", &[(&support::endpoint(), &proxy.endpoint())]).await;
    let (kafka, cfg, bq) = (&stack.kafka, &stack.cfg, &stack.bq);
    let mut sim = Simulator::new(22);
    let msgs = sim.full_load(5);
    kafka.produce(&msgs).unwrap();
    proxy.push(Fault::InvalidRow { invalid_index: 1 });
    let m = run_until_caught_up(cfg, kafka, Duration::from_secs(120)).await.unwrap();
    assert_eq!(Metrics::get(&m.dead_lettered), 1);
    // The other rows landed after being re-sent, and so did the dead letter's
    // row in the dead-letter table.
    assert_eq!(Metrics::get(&m.landed), msgs.len() as u64 - 1 + 1);
    let dl = support::rows(bq, &format!("SELECT reason FROM {}", stack.table(&cfg.bigquery.dead_letter_table))).await;
    assert_eq!(dl.len(), 1);
    assert!(dl[0][0].as_deref().unwrap().contains("injected invalid row"), "{dl:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_conflicts_and_quota_errors_are_retried_and_counted() {
    let proxy = FaultProxy::start(&upstream()).await.unwrap();
    let stack = support::Stack::start("mergefaults", 2, "", &[(&support::endpoint(), &proxy.endpoint())]).await;
    let (kafka, cfg, bq) = (&stack.kafka, &stack.cfg, &stack.bq);
    let mut sim = Simulator::new(23);
    let mut msgs = sim.full_load(30);
    msgs.extend(sim.changes(300));
    kafka.produce(&msgs).unwrap();
    run_until_caught_up(cfg, kafka, Duration::from_secs(120)).await.unwrap();

    proxy.push(status(
        Target::Merge,
        400,
        "invalidQuery",
        "Could not serialize access to table landfall-local:x.customers due to concurrent update",
    ));
    proxy.push(status(Target::Merge, 403, "quotaExceeded", "Quota exceeded: too many DML statements outstanding"));
    proxy.push(status(Target::Merge, 503, "backendError", "unavailable"));
    let metrics = Arc::new(Metrics::default());
    let (_keep, rx) = tokio::sync::watch::channel(false);
    let merger = Merger::new(bq.clone(), cfg.clone(), metrics.clone(), rx);
    for r in merger.merge_all(false).await {
        r.unwrap();
    }
    assert_eq!(Metrics::get(&metrics.merge_failures), 3, "each failure is counted");
    assert_eq!(Metrics::get(&metrics.merges), cfg.tables.len() as u64, "and every table still merged");
    stack.verify(&sim.model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_never_dedups_still_gives_exact_final_tables() {
    let proxy = FaultProxy::start(&upstream()).await.unwrap();
    proxy.set_strip_insert_ids(true);
    let stack = support::Stack::start("nodedup", 3, "", &[(&support::endpoint(), &proxy.endpoint())]).await;
    let (kafka, cfg) = (&stack.kafka, &stack.cfg);
    let mut sim = Simulator::new(24);
    let mut msgs = sim.full_load(80);
    msgs.extend(sim.changes(1200));
    sim.duplicate(&mut msgs, 0.05);
    kafka.produce(&msgs).unwrap();
    // Ambiguous successes: the rows land but the bridge does not hear so and
    // sends them again, and BigQuery keeps both copies.
    for _ in 0..4 {
        proxy.push(Fault::ForwardThenReset { target: Target::InsertAll });
    }
    run_until_caught_up(cfg, kafka, Duration::from_secs(300)).await.unwrap();
    assert!(proxy.stats().insert_ids_stripped > 0);
    assert!(stack.log_copies().await > 0, "the log holds duplicate copies for the MERGE to absorb");
    stack.merge_and_verify(&sim.model).await;
}

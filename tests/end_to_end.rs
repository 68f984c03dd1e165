//! End to end on real parts: mock Kafka (a real Kafka-protocol broker) ->
//! landfall -> BigQuery emulator -> MERGE, checked row for row against the
//! simulated source database.

mod support;

use std::time::Duration;

use landfall::demo::{merger, run_until_caught_up};
use landfall::metrics::Metrics;
use landfall::sim::{verify, Simulator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_changes_with_duplicates_and_a_restart_land_exactly_once() {
    let stack = support::Stack::start("e2e", 8, "", &[]).await;
    let (kafka, cfg, bq) = (&stack.kafka, &stack.cfg, &stack.bq);

    let mut sim = Simulator::new(42);
    let mut first = sim.full_load(400);
    first.extend(sim.changes(5_000));
    let dups_first = sim.duplicate(&mut first, 0.05);
    let mut second = sim.changes(5_000);
    let dups_second = sim.duplicate(&mut second, 0.05);
    let deletes = first.iter().chain(&second).filter(|m| String::from_utf8_lossy(&m.payload).contains("\"delete\"")).count();
    assert!(sim.produced >= 11_000 && deletes > 1000, "a realistic mix: {} changes, {deletes} deletes", sim.produced);

    kafka.produce(&first).unwrap();
    let m1 = run_until_caught_up(cfg, kafka, Duration::from_secs(300)).await.unwrap();
    // The bridge was stopped here; a new one resumes from the committed offsets.
    kafka.produce(&second).unwrap();
    let m2 = run_until_caught_up(cfg, kafka, Duration::from_secs(300)).await.unwrap();

    let consumed = Metrics::get(&m1.consumed) + Metrics::get(&m2.consumed);
    assert_eq!(consumed as usize, first.len() + second.len(), "every message consumed exactly once across the restart");
    let absorbed = Metrics::get(&m1.duplicates_absorbed) + Metrics::get(&m2.duplicates_absorbed);
    assert_eq!(absorbed as usize, dups_first + dups_second, "every duplicate delivery absorbed by the WAL");
    let landed = Metrics::get(&m1.landed) + Metrics::get(&m2.landed);
    assert_eq!(landed as usize, sim.produced, "one landed row per distinct change");

    assert_eq!(stack.log_copies().await, 0, "each log table holds each change once");
    stack.merge_and_verify(&sim.model).await;
    let verdicts = verify::verify_all(bq, &cfg.tables, &sim.model).await.unwrap();
    assert!(verdicts.iter().all(|v| v.source_rows > 100));

    // A second merge is incremental (reads from the watermark) and changes nothing.
    for r in merger(bq, cfg).merge_all(false).await {
        let r = r.unwrap();
        assert!(r.window.unwrap().from_micros.is_some(), "second merge starts at the watermark");
        assert_eq!(r.affected_rows, 0, "{} changed on a repeated merge", r.table);
    }
    stack.verify(&sim.model).await;
}

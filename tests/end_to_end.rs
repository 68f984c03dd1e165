//! End to end on real parts: mock Kafka (a real Kafka-protocol broker) ->
//! landfall -> BigQuery emulator -> MERGE, checked row for row against the
//! simulated source database.

mod support;

use std::time::Duration;

use landfall::harness::demo::{merger, run_until_caught_up};
use landfall::harness::sim::{verify, Simulator};
use landfall::metrics::Metrics;

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
    // Every copy has transaction details, so the WAL recognises each one. The
    // counter counts rows: a copy of a primary-key change absorbs two.
    assert!(absorbed as usize >= dups_first + dups_second, "every duplicate delivery absorbed by the WAL: {absorbed}");
    let landed = Metrics::get(&m1.landed) + Metrics::get(&m2.landed);
    assert_eq!(landed as usize, sim.produced + sim.primary_key_changes, "one landed row per distinct change (two per key change)");

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

/// One oracle run: every column type, every transaction shape, duplicates,
/// re-published ranges and the bad messages the stream was built with; the
/// final tables must equal the source (0 missing, 0 extra, 0 differing) and
/// the dead-letter table must hold exactly the bad messages.
async fn oracle_run(name: &str, seed: u64, opts: landfall::harness::sim::SimOptions, no_insert_id_dedup: bool) {
    use landfall::harness::proxy::{Fault, FaultProxy, Target};
    let opts = landfall::harness::sim::SimOptions { dead_letters: true, every_type: true, ..opts };
    let tables = landfall::harness::sim::tables_for(&opts);
    let proxy = if no_insert_id_dedup {
        let upstream = support::endpoint().trim_end_matches("/bigquery/v2").to_owned();
        let p = FaultProxy::start(&upstream).await.unwrap();
        p.set_strip_insert_ids(true);
        Some(p)
    } else {
        None
    };
    let replace: Vec<(String, String)> = proxy.iter().map(|p| (support::endpoint(), p.endpoint())).collect();
    let replace: Vec<(&str, &str)> = replace.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let stack = support::Stack::start_for(name, 4, "", &replace, &tables).await;
    let (kafka, cfg) = (&stack.kafka, &stack.cfg);

    let mut sim = Simulator::with_options(seed, opts);
    let mut first = sim.full_load(30);
    first.extend(sim.changes(1_000));
    sim.duplicate(&mut first, 0.05);
    sim.republish(&mut first, 3);
    let mut second = sim.changes(800);
    sim.duplicate(&mut second, 0.05);
    sim.republish(&mut second, 3);
    assert_eq!(sim.expected_dead_letters().len(), 10);

    kafka.produce(&first).unwrap();
    if let Some(p) = &proxy {
        // Ambiguous successes: the rows land, the bridge does not hear so and
        // sends them again, and the endpoint keeps both copies.
        for _ in 0..3 {
            p.push(Fault::ForwardThenReset { target: Target::InsertAll });
        }
    }
    run_until_caught_up(cfg, kafka, Duration::from_secs(300)).await.unwrap();
    kafka.produce(&second).unwrap();
    run_until_caught_up(cfg, kafka, Duration::from_secs(300)).await.unwrap();
    if let Some(p) = &proxy {
        assert!(p.stats().insert_ids_stripped > 0);
    }
    for r in merger(&stack.bq, cfg).merge_all(false).await {
        r.unwrap();
    }
    let verdicts = verify::verify_all(&stack.bq, &cfg.tables, &sim.model).await.unwrap();
    let report = verify::report(&verdicts);
    eprintln!("{report}");
    for v in &verdicts {
        assert!(v.source_rows > 10, "{report}");
        assert_eq!((v.missing_keys, v.extra_keys, v.differing_values, v.duplicate_keys), (0, 0, 0, 0), "{}:\n{report}", v.table);
    }
    stack.verify_dead_letters(&sim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oracle_every_type_and_transaction_shape_without_transaction_details() {
    oracle_run("oracle_plain", 101, landfall::harness::sim::SimOptions::without_transaction_details(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oracle_every_type_and_transaction_shape_with_transaction_details_ordered_by_lsn() {
    oracle_run(
        "oracle_lsn",
        102,
        landfall::harness::sim::SimOptions::ordered_by(landfall::harness::sim::PositionFormat::Postgresql),
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oracle_through_an_endpoint_that_never_dedups_insert_ids() {
    oracle_run("oracle_nodedup", 103, landfall::harness::sim::SimOptions::without_transaction_details(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oracle_with_transaction_details_ordered_by_timestamp() {
    oracle_run("oracle_txts", 104, landfall::harness::sim::SimOptions::default(), false).await;
}

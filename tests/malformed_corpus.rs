//! The checked-in corpus of bad and hostile messages (`tests/corpus/malformed/`,
//! one file per kind, expected reasons in `expected.tsv`), plus a Kafka
//! tombstone and every kind of DMS control record, driven through the running
//! bridge between good messages: no panic, no stuck partition, every bad
//! message in the dead-letter table with its reason, every good one in its
//! final table, control records acknowledged without a row (truncate and
//! drop-table for a table that is not routed).

mod support;

use std::collections::HashMap;
use std::time::Duration;

use landfall::decode::dms::CONTROL_OPERATIONS;
use landfall::harness::demo::run_until_caught_up;
use landfall::harness::sim::Simulator;
use landfall::metrics::Metrics;

fn corpus() -> Vec<(String, Vec<u8>, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/malformed");
    let manifest = std::fs::read_to_string(dir.join("expected.tsv")).unwrap();
    manifest
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (file, expect) = l.split_once('\t').unwrap();
            (file.to_owned(), std::fs::read(dir.join(file)).unwrap(), expect.to_owned())
        })
        .collect()
}

fn widget(id: i64) -> Vec<u8> {
    format!(
        r#"{{"data":{{"id":{id},"label":"w{id}"}},"metadata":{{"timestamp":"2026-11-27T03:00:00.{id:06}Z","record-type":"data","operation":"insert","schema-name":"sales","table-name":"widgets"}}}}"#
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_message_is_dead_lettered_with_its_reason_and_nothing_stalls() {
    let corpus = corpus();
    assert!(corpus.len() >= 30, "the corpus has {} kinds", corpus.len());
    let stack = support::Stack::start(
        "corpus",
        2,
        support::WIDGETS,
        &[("batch_max_wait = \"20ms\"", "batch_max_wait = \"20ms\"\nmax_message_bytes = 100000")],
    )
    .await;
    let (kafka, cfg, bq) = (&stack.kafka, &stack.cfg, &stack.bq);
    let mut sim = Simulator::new(41);
    let mut good = sim.full_load(20);
    good.extend(sim.changes(200));

    // All bad messages share one key, so they sit in one partition between good ones.
    let key = Some(&b"hostile"[..]);
    kafka.produce(&good[..100]).unwrap();
    kafka.produce_raw(key, Some(&widget(1))).unwrap();
    for (_, bytes, _) in &corpus {
        kafka.produce_raw(key, Some(bytes)).unwrap();
    }
    kafka.produce_raw(key, None).unwrap();
    for op in CONTROL_OPERATIONS {
        // A truncate or drop-table of a routed table empties its final table
        // (tests/ddl.rs): here they name a table that is not routed, which is
        // acknowledged like the rest, never dead-lettered.
        let table = if ["truncate-table", "truncate", "drop-table"].contains(op) { "gadgets" } else { "widgets" };
        let control = format!(
            r#"{{"metadata":{{"timestamp":"2026-11-27T03:00:00Z","record-type":"control","operation":"{op}","schema-name":"sales","table-name":"{table}"}}}}"#
        );
        kafka.produce_raw(key, Some(control.as_bytes())).unwrap();
    }
    kafka.produce_raw(key, Some(&widget(2))).unwrap();
    kafka.flush().unwrap();
    kafka.produce(&good[100..]).unwrap();

    let m = run_until_caught_up(cfg, kafka, Duration::from_secs(300)).await.unwrap();
    assert_eq!(Metrics::get(&m.dead_lettered) as usize, corpus.len() + 1, "every bad message (and the tombstone)");
    assert_eq!(Metrics::get(&m.control_records) as usize, CONTROL_OPERATIONS.len());

    // Where each bad message ended up in Kafka.
    let offsets: HashMap<Vec<u8>, i64> = support::read_all(kafka).into_iter().filter_map(|m| Some((m.payload?, m.offset))).collect();
    let rows = support::rows(bq, &format!("SELECT `offset`, reason FROM {}", stack.table(&cfg.bigquery.dead_letter_table))).await;
    let reasons: HashMap<i64, String> =
        rows.into_iter().map(|r| (r[0].as_deref().unwrap().parse().unwrap(), r[1].clone().unwrap())).collect();
    assert_eq!(reasons.len(), corpus.len() + 1);
    for (file, bytes, expect) in &corpus {
        let offset = offsets[bytes];
        let reason = reasons.get(&offset).unwrap_or_else(|| panic!("{file} (offset {offset}) is not in the dead-letter table"));
        assert!(reason.contains(expect.as_str()), "{file}: reason {reason:?} lacks {expect:?}");
    }
    assert!(reasons.values().any(|r| r.contains("Kafka tombstone")), "the tombstone is dead-lettered");

    stack.merge_and_verify(&sim.model).await;
    let widgets = support::rows(bq, &format!("SELECT id FROM {} ORDER BY id", stack.table("widgets"))).await;
    assert_eq!(widgets, vec![vec![Some("1".to_owned())], vec![Some("2".to_owned())]], "good messages around the bad ones landed");
}

//! Merge semantics as a model check, against the emulator: any sequence of
//! changes, delivered with duplicates, reordered across partitions and
//! replayed, landed in chunks with merges in between, gives the final state
//! of the model that applies the changes in source order.

mod support;

use std::collections::BTreeMap;

use landfall::decode::row::{build, Coords};
use landfall::decode::{dms, Decoded};
use landfall::harness::demo::merger;
use landfall::metrics::Metrics;
use landfall::sink::{BigQuerySink, LogRow, Sink};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as PropConfig, TestRunner};

#[derive(Debug, Clone)]
enum Change {
    Upsert(i64, u8),
    Delete(i64),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![3 => (0i64..6, any::<u8>()).prop_map(|(k, v)| Change::Upsert(k, v)), 1 => (0i64..6).prop_map(Change::Delete)]
}

fn payload(c: &Change, position: usize) -> Vec<u8> {
    let (op, id, label) = match c {
        Change::Upsert(k, v) => ("update", *k, format!("v{v}")),
        Change::Delete(k) => ("delete", *k, String::new()),
    };
    format!(
        r#"{{"data":{{"id":{id},"label":"{label}"}},"metadata":{{"timestamp":"2026-11-27T03:00:00Z","record-type":"data","operation":"{op}","schema-name":"sales","table-name":"widgets","stream-position":"bin.000001:{position}"}}}}"#
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_state_equals_source_order_whatever_the_delivery() {
    let stack = support::Stack::start("mergemodel", 1, support::WIDGETS_BY_POSITION, &[]).await;
    let route = stack.cfg.tables.iter().find(|t| t.source == "sales.widgets").unwrap().clone();
    let (_abort, rx) = tokio::sync::watch::channel(false);
    let sink = BigQuerySink::new(stack.bq.clone(), &stack.cfg.bigquery, rx, std::sync::Arc::new(Metrics::default()));
    let merger = merger(&stack.bq, &stack.cfg);

    // Six generated cases (each one ships and merges against the emulator),
    // from proptest's default (random) seed; a failure prints the case.
    let mut runner = TestRunner::new(PropConfig::default());
    let strategy = (
        proptest::collection::vec(change(), 1..25),
        any::<proptest::sample::Index>(),
        proptest::collection::vec(any::<proptest::sample::Index>(), 0..10),
        1usize..4,
    );
    let cases: Vec<_> = (0..6).map(|_| strategy.new_tree(&mut runner).unwrap().current()).collect();

    for (n, (changes, shuffle_seed, dups, chunks)) in cases.into_iter().enumerate() {
        // The model: apply in source order.
        let mut model: BTreeMap<i64, String> = BTreeMap::new();
        let mut rows: Vec<LogRow> = Vec::new();
        for (pos, c) in changes.iter().enumerate() {
            match c {
                Change::Upsert(k, v) => model.insert(*k + 100 * n as i64, format!("v{v}")),
                Change::Delete(k) => model.remove(&(*k + 100 * n as i64)),
            };
            // Ids are offset per case so the cases do not see each other.
            let shifted = match c {
                Change::Upsert(k, v) => Change::Upsert(k + 100 * n as i64, *v),
                Change::Delete(k) => Change::Delete(k + 100 * n as i64),
            };
            let Decoded::Row(ch) = dms::decode(&payload(&shifted, pos + 1), "before-image").unwrap() else { panic!() };
            let partition = (pos % 3) as i32;
            let r = build(&ch, &route, &Coords { topic: "t".into(), partition, offset: pos as i64 }).unwrap().remove(0);
            rows.push(r);
        }
        // Delivery: duplicates (re-sent under new insertIds, as after a replay),
        // then a deterministic shuffle, landed in chunks with merges between.
        for d in &dups {
            let mut copy = rows[d.index(rows.len())].clone();
            copy.key = landfall::key::DedupKey([rows.len() as u8 ^ 0x5a; 32]);
            rows.push(copy);
        }
        let seed = shuffle_seed.index(1_000_003);
        rows.sort_by_key(|r| (r.key.0[0] as usize * 7919 + seed) % 1_000_003);
        let size = rows.len().div_ceil(chunks);
        for chunk in rows.chunks(size) {
            sink.ship(&route.log_table, chunk).await.unwrap();
            merger.merge_table(&route, false).await.unwrap();
        }
        let actual: BTreeMap<i64, String> = support::rows(
            &stack.bq,
            &format!("SELECT id, label FROM {} WHERE id >= {} AND id < {}", stack.table("widgets"), 100 * n, 100 * n + 100),
        )
        .await
        .into_iter()
        .map(|r| (r[0].as_deref().unwrap().parse::<i64>().unwrap(), r[1].clone().unwrap()))
        .collect();
        assert_eq!(actual, model, "case {n}: changes {changes:?}, {chunks} chunks");
    }
}

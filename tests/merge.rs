//! The MERGE against the emulator: de-duplicates by key, keeps the latest
//! change per primary key, never lets an older change overwrite a newer one,
//! and reads incrementally from its watermark.

mod support;

use landfall::decode::row::{build, Coords, COL_KEY};
use landfall::decode::{dms, Decoded};
use landfall::harness::demo::merger;
use landfall::key::DedupKey;
use landfall::metrics::Metrics;
use landfall::sink::{BigQuerySink, LogRow, RowOutcome, Sink};

fn change(op: &str, id: i64, label: &str, position: u64) -> Vec<u8> {
    format!(
        r#"{{"data":{{"id":{id},"label":"{label}"}},"metadata":{{"timestamp":"2026-11-27T03:00:00Z","record-type":"data","operation":"{op}","schema-name":"sales","table-name":"widgets","stream-position":"bin.000001:{position}","transaction-id":"{position}","transaction-record-id":1}}}}"#
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_is_deduplicated_monotonic_and_incremental() {
    // A short overlap, so that step 5 can put a delete outside the merge window.
    let stack = support::Stack::start(
        "merge",
        1,
        support::WIDGETS_BY_POSITION,
        &[("overlap = \"5m\"", "overlap = \"6s\""), ("request_timeout = \"30s\"", "request_timeout = \"5s\"")],
    )
    .await;
    let (cfg, bq) = (&stack.cfg, &stack.bq);
    let route = cfg.tables.iter().find(|t| t.source == "sales.widgets").unwrap().clone();
    let (_abort, rx) = tokio::sync::watch::channel(false);
    let sink = BigQuerySink::new(bq.clone(), &cfg.bigquery, rx, std::sync::Arc::new(Metrics::default()));
    let merger = merger(bq, cfg);
    let mut offset = 0;
    let mut ship = |payload: Vec<u8>, insert_id: Option<DedupKey>| {
        offset += 1;
        let Decoded::Row(c) = dms::decode(&payload, "before-image").unwrap() else { panic!() };
        let mut rows = build(&c, &route, &Coords { topic: "t".into(), partition: 0, offset }).unwrap();
        let r = rows.remove(0);
        LogRow::new(insert_id.unwrap_or(r.key), &r.json())
    };
    let final_rows = || async { support::rows(bq, &format!("SELECT id, label FROM {} ORDER BY id", stack.table("widgets"))).await };
    let row = |id: &str, label: &str| vec![Some(id.to_owned()), Some(label.to_owned())];

    // 1. Two keys; the newer change of id 1 wins within one merge.
    let batch = vec![
        ship(change("insert", 1, "v1", 10), None),
        ship(change("update", 1, "v2", 20), None),
        ship(change("insert", 2, "a", 11), None),
    ];
    assert_eq!(sink.ship(&route.log_table, &batch).await.unwrap(), vec![RowOutcome::Landed; 3]);
    let first = merger.merge_table(&route, false).await.unwrap();
    assert_eq!(first.window.unwrap().from_micros, None, "first merge reads from the start");
    assert_eq!(final_rows().await, vec![row("1", "v2"), row("2", "a")]);

    // 2. An older change arriving later does not overwrite the newer one;
    //    the same change under a second insertId counts once.
    let dup = ship(change("update", 1, "v2", 20), Some(DedupKey([7; 32])));
    assert_eq!(
        dup.json()[COL_KEY],
        batch[1].json()[COL_KEY],
        "the same change (same transaction details) at another offset: same dedup key"
    );
    let late = vec![ship(change("update", 1, "old", 15), None), dup, ship(change("delete", 2, "a", 5), None)];
    sink.ship(&route.log_table, &late).await.unwrap();
    let second = merger.merge_table(&route, false).await.unwrap();
    assert!(second.window.unwrap().from_micros.is_some(), "incremental: starts at the watermark minus the overlap");
    assert_eq!(second.affected_rows, 0, "nothing newer arrived");
    assert_eq!(final_rows().await, vec![row("1", "v2"), row("2", "a")]);

    // 3. A newer delete deletes; an older re-insert seen with it does not resurrect.
    let more = vec![
        ship(change("delete", 2, "a", 30), None),
        ship(change("insert", 2, "zombie", 12), None),
        ship(change("update", 1, "v3", 40), None),
    ];
    sink.ship(&route.log_table, &more).await.unwrap();
    let third = merger.merge_table(&route, false).await.unwrap();
    assert_eq!(third.affected_rows, 2);
    assert_eq!(final_rows().await, vec![row("1", "v3")]);

    // 4. Merging again, or the whole log, changes nothing (idempotent).
    assert_eq!(merger.merge_table(&route, false).await.unwrap().affected_rows, 0);
    assert_eq!(merger.merge_table(&route, true).await.unwrap().affected_rows, 0);
    assert_eq!(final_rows().await, vec![row("1", "v3")]);

    // 5. Replay safety: once the delete of id 2 is behind the watermark (out
    //    of every later window), an old change of id 2 replayed later still
    //    does not bring it back: its tombstone is newer.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let replayed = vec![ship(change("update", 2, "replayed", 25), None), ship(change("insert", 4, "new", 60), None)];
    sink.ship(&route.log_table, &replayed).await.unwrap();
    let fifth = merger.merge_table(&route, false).await.unwrap();
    assert_eq!(fifth.affected_rows, 1, "only id 4 is new");
    assert_eq!(final_rows().await, vec![row("1", "v3"), row("4", "new")]);
    // A re-insert newer than the delete does bring it back.
    sink.ship(&route.log_table, &[ship(change("insert", 2, "reborn", 70), None)]).await.unwrap();
    merger.merge_table(&route, false).await.unwrap();
    assert_eq!(final_rows().await, vec![row("1", "v3"), row("2", "reborn"), row("4", "new")]);
}

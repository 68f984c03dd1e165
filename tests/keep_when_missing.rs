//! `keep_when_missing` against the emulator: DMS messages -> decode -> log
//! rows -> insertAll -> MERGE. A keep column that an update leaves out keeps
//! the final table's value (across merges and within one merge window); an
//! explicit value replaces it; a missing column that is not a keep column is
//! NULL; inserts are full images, and a delete forgets the kept value.

mod support;

use landfall::decode::row::{build, Coords};
use landfall::decode::{dms, Decoded};
use landfall::harness::demo::merger;
use landfall::metrics::Metrics;
use landfall::sink::{BigQuerySink, LogRow, RowOutcome, Sink};

const DOCS: &str = r#"
[[tables]]
source = "app.docs"
log_table = "docs_log"
final_table = "docs"
primary_key = ["id"]
order_by = "mysql-binlog"
keep_when_missing = ["body", "meta"]
columns = [ { name = "id", type = "INT64" }, { name = "label", type = "STRING" }, { name = "body", type = "STRING" }, { name = "meta", type = "JSON" } ]
"#;

/// A DMS message for `app.docs`; `data` is the JSON object's inside.
fn msg(op: &str, data: &str, position: u64) -> Vec<u8> {
    format!(
        r#"{{"data":{{{data}}},"metadata":{{"timestamp":"2026-11-27T03:00:00Z","record-type":"data","operation":"{op}","schema-name":"app","table-name":"docs","stream-position":"bin.000001:{position}"}}}}"#
    )
    .into_bytes()
}

type Row = (i64, Option<String>, Option<String>, Option<String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_columns_survive_updates_that_leave_them_out() {
    let stack = support::Stack::start("keep", 1, DOCS, &[]).await;
    let (cfg, bq) = (&stack.cfg, &stack.bq);
    let route = cfg.tables.iter().find(|t| t.source == "app.docs").unwrap().clone();
    let (_abort, rx) = tokio::sync::watch::channel(false);
    let sink = BigQuerySink::new(bq.clone(), &cfg.bigquery, rx, std::sync::Arc::new(Metrics::default()));
    let merger = merger(bq, cfg);
    let mut offset = 0;
    let mut ship = |payload: Vec<u8>| {
        offset += 1;
        let Decoded::Row(c) = dms::decode(&payload, "before-image").unwrap() else { panic!() };
        build(&c, &route, &Coords { topic: "t".into(), partition: 0, offset }).unwrap().remove(0)
    };
    let land_and_merge = |rows: Vec<LogRow>| {
        let (sink, merger, route) = (&sink, &merger, &route);
        async move {
            assert_eq!(sink.ship(&route.log_table, &rows).await.unwrap(), vec![RowOutcome::Landed; rows.len()]);
            merger.merge_table(route, false).await.unwrap()
        }
    };
    let final_rows = || async {
        support::rows(
            bq,
            &format!("SELECT id, label, body, IF(meta IS NULL, NULL, TO_JSON_STRING(meta)) FROM {} ORDER BY id", stack.table("docs")),
        )
        .await
        .into_iter()
        .map(|r| (r[0].as_deref().unwrap().parse().unwrap(), r[1].clone(), r[2].clone(), r[3].clone()))
        .collect::<Vec<Row>>()
    };
    let row = |id: i64, label: Option<&str>, body: Option<&str>, meta: Option<&str>| -> Row {
        (id, label.map(Into::into), body.map(Into::into), meta.map(Into::into))
    };

    // 1. Inserts are full images: id 2 has no body (NULL), id 3 no meta.
    land_and_merge(vec![
        ship(msg("insert", r#""id":1,"label":"a","body":"B1","meta":{"v":1}"#, 10)),
        ship(msg("insert", r#""id":2,"label":"b""#, 11)),
        ship(msg("load", r#""id":3,"label":"c","body":"B3""#, 12)),
    ])
    .await;
    assert_eq!(
        final_rows().await,
        vec![row(1, Some("a"), Some("B1"), Some(r#"{"v":1}"#)), row(2, Some("b"), None, None), row(3, Some("c"), Some("B3"), None)]
    );

    // 2. Across merges: an update without the keep columns keeps them; a
    //    missing `label` (not a keep column) becomes NULL.
    land_and_merge(vec![ship(msg("update", r#""id":1,"label":"a2""#, 20)), ship(msg("update", r#""id":3"#, 21))]).await;
    assert_eq!(
        final_rows().await,
        vec![row(1, Some("a2"), Some("B1"), Some(r#"{"v":1}"#)), row(2, Some("b"), None, None), row(3, None, Some("B3"), None)]
    );

    // 3. An explicit value replaces a kept one (one keep column given, the other kept);
    //    an explicit null sets NULL.
    land_and_merge(vec![
        ship(msg("update", r#""id":1,"label":"a3","body":"B1-new""#, 30)),
        ship(msg("update", r#""id":3,"label":"c3","body":null"#, 31)),
    ])
    .await;
    assert_eq!(
        final_rows().await,
        vec![row(1, Some("a3"), Some("B1-new"), Some(r#"{"v":1}"#)), row(2, Some("b"), None, None), row(3, Some("c3"), None, None)]
    );

    // 4. Several changes of one key in one merge window.
    land_and_merge(vec![
        // Insert with body, then update without it: the insert's body.
        ship(msg("insert", r#""id":10,"label":"x","body":"X","meta":[1]"#, 40)),
        ship(msg("update", r#""id":10,"label":"x2""#, 41)),
        // Update with body, then update without it: the first update's body; meta kept from the final row.
        ship(msg("update", r#""id":1,"label":"a4","body":"Y""#, 42)),
        ship(msg("update", r#""id":1,"label":"a5""#, 43)),
        // Insert with body, delete, insert without it: NULL.
        ship(msg("insert", r#""id":11,"label":"r","body":"R","meta":{"r":1}"#, 44)),
        ship(msg("delete", r#""id":11,"label":"r","body":"R""#, 45)),
        ship(msg("insert", r#""id":11,"label":"r2""#, 46)),
        // Insert with body, delete, an update without it: the deleted body does not come back.
        ship(msg("insert", r#""id":12,"label":"z","body":"Z""#, 47)),
        ship(msg("delete", r#""id":12"#, 48)),
        ship(msg("update", r#""id":12,"label":"z2""#, 49)),
    ])
    .await;
    assert_eq!(
        final_rows().await,
        vec![
            row(1, Some("a5"), Some("Y"), Some(r#"{"v":1}"#)),
            row(2, Some("b"), None, None),
            row(3, Some("c3"), None, None),
            row(10, Some("x2"), Some("X"), Some("[1]")),
            row(11, Some("r2"), None, None),
            row(12, Some("z2"), None, None),
        ]
    );

    // 5. Across merges with a delete in between: the tombstone forgets the
    //    kept value, so a later update without it (a row DMS re-creates) is NULL,
    //    and a re-insert without it is NULL too.
    land_and_merge(vec![ship(msg("delete", r#""id":1"#, 50)), ship(msg("delete", r#""id":10"#, 51))]).await;
    land_and_merge(vec![ship(msg("update", r#""id":1,"label":"back""#, 60)), ship(msg("insert", r#""id":10,"label":"again""#, 61))]).await;
    let rows = final_rows().await;
    assert_eq!(rows[0], row(1, Some("back"), None, None));
    assert_eq!(rows[3], row(10, Some("again"), None, None));

    // 6. An older change that arrives late never overwrites a kept value with
    //    its own, and a merge of everything again changes nothing.
    land_and_merge(vec![ship(msg("update", r#""id":3,"label":"c3","body":"stale""#, 25))]).await;
    let before = final_rows().await;
    assert_eq!(before[2], row(3, Some("c3"), None, None));
    assert_eq!(merger.merge_table(&route, true).await.unwrap().affected_rows, 0);
    assert_eq!(final_rows().await, before);
}

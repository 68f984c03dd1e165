//! Bad input: a poison message (not JSON), a Kafka tombstone, and a row that
//! BigQuery rejects are dead-lettered with their reasons, in the WAL and in
//! the dead-letter table; the partition keeps flowing and its offset moves
//! past them; every good message lands.

mod support;

use std::time::Duration;

use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;
use landfall::harness::demo::{merger, run_until_caught_up, LocalKafka};
use landfall::harness::sim::{verify, Simulator};
use landfall::metrics::Metrics;
use landfall::sink::schema::log_table_fields;
use landfall::wal::{Stage, Wal};

fn widget(id: i64, label: &str, micros: u32) -> Vec<u8> {
    format!(
        r#"{{"data":{{"id":{id},"label":"{label}"}},"metadata":{{"timestamp":"2026-11-27T03:00:00.{micros:06}Z","record-type":"data","operation":"insert","partition-key-type":"primary-key","schema-name":"sales","table-name":"widgets"}}}}"#
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_and_rejected_rows_are_dead_lettered_and_the_partition_keeps_flowing() {
    let kafka = LocalKafka::start("dms.dead", 3).unwrap();
    let wal_dir = tempfile::tempdir().unwrap();
    let dataset = support::unique_dataset("dead");
    let cfg = support::config(&kafka, wal_dir.path(), &dataset, support::WIDGETS);

    // Schema drift: the widgets log table exists with `label` as INT64, so
    // BigQuery rejects a row whose label is not a number.
    let bq = landfall::sink::BigQuery::connect(&cfg.bigquery).await.unwrap();
    bq.ensure_dataset().await.unwrap();
    let route = cfg.tables.iter().find(|t| t.source == "sales.widgets").unwrap();
    let fields: Vec<TableFieldSchema> =
        log_table_fields(route).into_iter().map(|f| if f.name == "label" { TableFieldSchema::integer("label") } else { f }).collect();
    bq.ensure_table(&route.log_table, fields, None, None).await.unwrap();
    let bq = support::bigquery(&cfg).await;

    let mut sim = Simulator::new(3);
    let mut msgs = sim.full_load(30);
    msgs.extend(sim.changes(200));
    kafka.produce(&msgs[..100]).unwrap();
    let w = Some(&b"widget"[..]);
    kafka.produce_raw(w, Some(b"not json {")).unwrap();
    kafka.produce_raw(w, Some(&widget(1, "7", 1))).unwrap();
    kafka.produce_raw(w, Some(&widget(2, "seven", 2))).unwrap();
    kafka.produce_raw(w, None).unwrap();
    kafka.produce_raw(w, Some(&widget(3, "8", 3))).unwrap();
    kafka.flush().unwrap();
    kafka.produce(&msgs[100..]).unwrap();

    // Caught up = every partition's committed offset is at its high watermark:
    // the partition with the bad messages moved past them.
    let m = run_until_caught_up(&cfg, &kafka, Duration::from_secs(300)).await.unwrap();
    assert_eq!(Metrics::get(&m.dead_lettered), 3);

    let dl = support::rows(
        &bq,
        &format!(
            "SELECT `offset`, reason, payload_length FROM `{}.{}.{}` ORDER BY `offset`",
            bq.project, dataset, cfg.bigquery.dead_letter_table
        ),
    )
    .await;
    assert_eq!(dl.len(), 3, "{dl:?}");
    let reasons: Vec<String> = dl.iter().map(|r| r[1].clone().unwrap()).collect();
    assert!(reasons[0].contains("not valid JSON"), "{reasons:?}");
    assert!(reasons[1].contains("BigQuery rejected the row") && reasons[1].contains("label"), "{reasons:?}");
    assert!(reasons[2].contains("no value"), "{reasons:?}");

    let wal = Wal::open(&cfg.wal.path).unwrap();
    let recorded: Vec<_> = wal.dead_letters().map(Result::unwrap).collect();
    assert_eq!(recorded.len(), 3);
    assert_eq!(recorded[0].message.as_ref().unwrap().value_prefix, b"not json {");
    // The row BigQuery refused keeps the message it came from (key and
    // value), its stage, and the row itself.
    let refused = &recorded[1];
    assert_eq!(refused.stage, Stage::BigQuery);
    let m = refused.message.as_ref().expect("the original message is kept");
    assert_eq!((m.key.as_deref(), m.value_prefix.as_slice()), (Some(&b"widget"[..]), widget(2, "seven", 2).as_slice()));
    let row = refused.row.as_ref().unwrap();
    assert_eq!(row.table, "widgets_log");
    assert!(String::from_utf8_lossy(&row.json).contains("seven"));
    assert_eq!(
        recorded.iter().map(|d| d.offset.to_string()).collect::<Vec<_>>(),
        dl.iter().map(|r| r[0].clone().unwrap()).collect::<Vec<_>>(),
        "the WAL and the dead-letter table agree"
    );
    drop(wal);

    for r in merger(&bq, &cfg).merge_all(false).await {
        r.unwrap();
    }
    let widgets = support::rows(&bq, &format!("SELECT id, label FROM `{}.{}.widgets` ORDER BY id", bq.project, dataset)).await;
    assert_eq!(widgets, vec![vec![Some("1".into()), Some("7".into())], vec![Some("3".into()), Some("8".into())]]);
    let sim_tables: Vec<_> = cfg.tables.iter().filter(|t| t.source != "sales.widgets").cloned().collect();
    let verdicts = verify::verify_all(&bq, &sim_tables, &sim.model).await.unwrap();
    assert!(verdicts.iter().all(|v| v.matches()), "{}", verify::report(&verdicts));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_replayed_after_the_config_is_fixed() {
    let stack = support::Stack::start("dlqreplay", 1, support::WIDGETS, &[]).await;
    let (kafka, cfg) = (&stack.kafka, &stack.cfg);
    let with_colour = |id: i64| {
        format!(
            r#"{{"data":{{"id":{id},"label":"w","colour":"red"}},"metadata":{{"timestamp":"2026-11-27T03:00:00.{id:06}Z","record-type":"data","operation":"insert","schema-name":"sales","table-name":"widgets"}}}}"#
        )
    };
    let w = Some(&b"w"[..]);
    kafka.produce_raw(w, Some(with_colour(1).as_bytes())).unwrap();
    kafka.produce_raw(w, Some(b"still not json")).unwrap();
    kafka.produce_raw(w, Some(&widget(2, "plain", 2))).unwrap();
    kafka.flush().unwrap();
    let m = run_until_caught_up(cfg, kafka, Duration::from_secs(120)).await.unwrap();
    assert_eq!(Metrics::get(&m.dead_lettered), 2);

    // The operator adds the column to the config, then re-drives.
    let fixed = support::config_with(
        kafka,
        stack.wal.path(),
        &stack.dataset,
        &support::WIDGETS.replace(
            r#"{ name = "label", type = "STRING" } ]"#,
            r#"{ name = "label", type = "STRING" }, { name = "colour", type = "STRING" } ]"#,
        ),
        &[],
    );
    let bq = support::bigquery(&fixed).await;
    let wal = Wal::open(&fixed.wal.path).unwrap();
    let metrics = std::sync::Arc::new(Metrics::default());
    let (_abort, rx) = tokio::sync::watch::channel(false);
    let sink: std::sync::Arc<dyn landfall::sink::Sink> =
        std::sync::Arc::new(landfall::sink::BigQuerySink::new(bq.clone(), &fixed.bigquery, rx, metrics.clone()));
    let results = landfall::dead_letter::replay(&fixed, &wal, &sink, &metrics, |_| true).await.unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].1, landfall::dead_letter::Replayed::Landed { rows: 1 }, "{results:?}");
    assert!(
        matches!(&results[1].1, landfall::dead_letter::Replayed::StillFailing { reason } if reason.contains("not valid JSON")),
        "{results:?}"
    );
    // A second replay does not ship it again.
    let again = landfall::dead_letter::replay(&fixed, &wal, &sink, &metrics, |_| true).await.unwrap();
    assert_eq!(again[0].1, landfall::dead_letter::Replayed::AlreadyReplayed);
    drop(wal);

    for r in merger(&bq, &fixed).merge_all(false).await {
        r.unwrap();
    }
    let widgets = support::rows(&bq, &format!("SELECT id, colour FROM {} ORDER BY id", stack.table("widgets"))).await;
    assert_eq!(widgets, vec![vec![Some("1".into()), Some("red".into())], vec![Some("2".into()), None]]);
}

fn widget_at(op: &str, id: i64, label: &str, second: u32) -> Vec<u8> {
    format!(
        r#"{{"data":{{"id":{id},"label":"{label}"}},"metadata":{{"timestamp":"2026-11-27T03:00:{second:02}.000000Z","record-type":"data","operation":"{op}","partition-key-type":"primary-key","schema-name":"sales","table-name":"widgets"}}}}"#
    )
    .into_bytes()
}

/// A replay over `cfg`'s WAL and BigQuery, as `landfall dlq replay --all` runs it.
async fn replay_all(
    cfg: &std::sync::Arc<landfall::config::Config>,
    bq: &landfall::sink::BigQuery,
) -> Vec<(String, landfall::dead_letter::Replayed)> {
    let wal = Wal::open(&cfg.wal.path).unwrap();
    let metrics = std::sync::Arc::new(Metrics::default());
    let (_abort, rx) = tokio::sync::watch::channel(false);
    let sink: std::sync::Arc<dyn landfall::sink::Sink> =
        std::sync::Arc::new(landfall::sink::BigQuerySink::new(bq.clone(), &cfg.bigquery, rx, metrics.clone()));
    landfall::dead_letter::replay(cfg, &wal, &sink, &metrics, |_| true).await.unwrap()
}

/// Issue 10, item 1: rows BigQuery refused are re-driven from their original
/// messages once the table is fixed, and land where the source order puts
/// them. (The previous code kept the log row as the letter's payload and
/// decoded it as a DMS message on replay: every such letter failed forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_refused_by_bigquery_are_replayed_after_the_table_is_fixed_and_merged_in_source_order() {
    let kafka = LocalKafka::start("dms.refusedreplay", 1).unwrap();
    let wal_dir = tempfile::tempdir().unwrap();
    let dataset = support::unique_dataset("refusedreplay");
    let cfg = support::config(&kafka, wal_dir.path(), &dataset, support::WIDGETS);
    // Schema drift: the log table has `label` as INT64.
    let bq = landfall::sink::BigQuery::connect(&cfg.bigquery).await.unwrap();
    bq.ensure_dataset().await.unwrap();
    let route = cfg.tables.iter().find(|t| t.source == "sales.widgets").unwrap();
    let drifted: Vec<TableFieldSchema> =
        log_table_fields(route).into_iter().map(|f| if f.name == "label" { TableFieldSchema::integer("label") } else { f }).collect();
    bq.ensure_table(&route.log_table, drifted, None, None).await.unwrap();
    let bq = support::bigquery(&cfg).await;

    let k = Some(&b"w"[..]);
    kafka.produce_with_headers(k, Some(&widget_at("insert", 1, "seven", 1)), &[("trace", Some(b"t-1")), ("empty", None)]).unwrap();
    kafka.produce_raw(k, Some(&widget_at("insert", 2, "eight", 2))).unwrap();
    kafka.produce_raw(k, Some(&widget_at("insert", 3, "9", 3))).unwrap();
    kafka.flush().unwrap();
    let m = run_until_caught_up(&cfg, &kafka, Duration::from_secs(120)).await.unwrap();
    assert_eq!(Metrics::get(&m.dead_lettered), 2, "ids 1 and 2 refused by BigQuery");
    {
        let wal = Wal::open(&cfg.wal.path).unwrap();
        let letters: Vec<_> = wal.dead_letters().map(Result::unwrap).collect();
        assert_eq!(letters.iter().map(|d| (d.offset, d.stage)).collect::<Vec<_>>(), vec![(0, Stage::BigQuery), (1, Stage::BigQuery)]);
        let first = letters[0].message.as_ref().unwrap();
        assert_eq!(first.headers, vec![("trace".to_owned(), Some(b"t-1".to_vec())), ("empty".to_owned(), None)], "headers are kept");
        assert!(first.timestamp_ms.is_some());
    }
    for r in merger(&bq, &cfg).merge_all(false).await {
        r.unwrap();
    }

    // The operator fixes the table (re-created with the configured types),
    // and the source goes on: id 1 is updated after its refused insert.
    bq.query(&format!("DROP TABLE `{}.{}.{}`", bq.project, dataset, route.log_table)).await.unwrap();
    let bq = support::bigquery(&cfg).await;
    kafka.produce_raw(k, Some(&widget_at("update", 1, "later", 5))).unwrap();
    kafka.flush().unwrap();
    run_until_caught_up(&cfg, &kafka, Duration::from_secs(120)).await.unwrap();

    let results = replay_all(&cfg, &bq).await;
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|(_, r)| *r == landfall::dead_letter::Replayed::Landed { rows: 1 }), "{results:?}");
    assert!(replay_all(&cfg, &bq).await.iter().all(|(_, r)| *r == landfall::dead_letter::Replayed::AlreadyReplayed));
    for r in merger(&bq, &cfg).merge_all(false).await {
        r.unwrap();
    }
    // The source: 1 inserted as "seven" then updated to "later"; 2 "eight"; 3 "9".
    // The replayed insert of 1 is older than its update: it changes nothing.
    let widgets = support::rows(&bq, &format!("SELECT id, label FROM `{}.{}.widgets` ORDER BY id", bq.project, dataset)).await;
    let row = |id: &str, label: &str| vec![Some(id.to_owned()), Some(label.to_owned())];
    assert_eq!(widgets, vec![row("1", "later"), row("2", "eight"), row("3", "9")]);
}

/// Issue 10, item 3: a re-created topic reuses offsets; a new poison message
/// at a reused offset is a new dead letter, recorded and shipped, not taken
/// for the old one. (The previous code keyed letters by position alone: the
/// second was absorbed without a record and its offset committed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_poison_message_at_an_offset_a_recreated_topic_reuses_is_dead_lettered_too() {
    let wal_dir = tempfile::tempdir().unwrap();
    let dataset = support::unique_dataset("recreated");
    let mut configs = Vec::new();
    for poison in [&b"first incarnation, not json"[..], &b"second incarnation, not json"[..]] {
        // A fresh cluster: the same topic name, offsets from 0 again.
        let kafka = LocalKafka::start("dms.recreated", 1).unwrap();
        let cfg = support::config(&kafka, wal_dir.path(), &dataset, support::WIDGETS);
        let _ = support::bigquery(&cfg).await;
        kafka.produce_raw(Some(b"w"), Some(poison)).unwrap();
        kafka.produce_raw(Some(b"w"), Some(&widget(1, "a", 1))).unwrap();
        kafka.flush().unwrap();
        let m = run_until_caught_up(&cfg, &kafka, Duration::from_secs(120)).await.unwrap();
        assert_eq!(Metrics::get(&m.dead_lettered), 1, "{}", String::from_utf8_lossy(poison));
        configs.push(cfg);
    }
    let cfg = &configs[1];
    let wal = Wal::open(&cfg.wal.path).unwrap();
    let letters: Vec<_> = wal.dead_letters().map(Result::unwrap).collect();
    let mut values: Vec<_> = letters.iter().map(|d| (d.offset, d.message.as_ref().unwrap().value_prefix.clone())).collect();
    // Letters of one position are in id order.
    values.sort();
    assert_eq!(values, vec![(0, b"first incarnation, not json".to_vec()), (0, b"second incarnation, not json".to_vec())]);
    let bq = support::bigquery(cfg).await;
    let table = format!("`{}.{}.{}`", bq.project, dataset, cfg.bigquery.dead_letter_table);
    let rows = support::rows(&bq, &format!("SELECT `offset`, SAFE_CONVERT_BYTES_TO_STRING(payload) FROM {table} ORDER BY 2")).await;
    assert_eq!(
        rows,
        vec![
            vec![Some("0".into()), Some("first incarnation, not json".into())],
            vec![Some("0".into()), Some("second incarnation, not json".into())]
        ]
    );
}

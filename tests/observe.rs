//! The observability listener of a running bridge (`[observability] listen`):
//! `/metrics` in the Prometheus text format with values that move as changes
//! land (per-partition commit point, consumed offset, high watermark and lag;
//! landed rows; dead letters by stage; control records by kind; insertAll and
//! produce-to-landed histograms; WAL gauges; per-table merges), `/health/live`,
//! `/health/ready`, and `/status` as JSON; `landfall status` against the
//! running service and a stopped one.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use landfall::harness::demo::wait_caught_up;
use landfall::service::Service;

fn widget(id: i64) -> Vec<u8> {
    format!(
        r#"{{"data":{{"id":{id},"label":"w{id}"}},"metadata":{{"timestamp":"2026-11-27T03:00:00.{id:06}Z","record-type":"data","operation":"insert","schema-name":"sales","table-name":"widgets"}}}}"#
    )
    .into_bytes()
}

/// Every sample of a scrape: `name{labels}` -> value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_status_follow_the_bridge() {
    let extra = "[observability]\nlisten = \"127.0.0.1:0\"\nsummary_interval = \"10s\"\n";
    // The demo config has an [observability] section: replace it with ours.
    let stack = support::Stack::start("observe", 1, support::WIDGETS, &[("[observability]\nsummary_interval = \"10s\"\n", extra)]).await;
    let (kafka, cfg) = (&stack.kafka, &stack.cfg);
    let service = Service::start(cfg.clone()).await.unwrap();
    let base = format!("http://{}", service.observe_addr.expect("the listener is bound"));

    assert_eq!(get(&format!("{base}/health/live")).await, (200, "live\n".into()));
    let (status, body) = get(&format!("{base}/nowhere")).await;
    assert_eq!(status, 404, "{body}");
    let first = samples(&get(&format!("{base}/metrics")).await.1);
    assert_eq!(first.get("landfall_landed_rows_total"), Some(&0.0), "{first:?}");

    // 20 widgets, one message no table routes to a row (a bad value), one control record.
    for id in 1..=20 {
        kafka.produce_raw(Some(b"k"), Some(&widget(id))).unwrap();
    }
    kafka.produce_raw(Some(b"k"), Some(br#"{"data":{"id":"x","label":"bad"},"metadata":{"timestamp":"2026-11-27T03:00:01Z","record-type":"data","operation":"insert","schema-name":"sales","table-name":"widgets"}}"#)).unwrap();
    kafka
        .produce_raw(Some(b"k"), Some(br#"{"metadata":{"timestamp":"2026-11-27T03:00:02Z","record-type":"control","operation":"add-column","schema-name":"sales","table-name":"widgets"}}"#))
        .unwrap();
    wait_caught_up(cfg, kafka, &service, Duration::from_secs(120)).await.unwrap();
    let route = cfg.tables.iter().find(|t| t.source == "sales.widgets").unwrap();

    // The high watermark comes from librdkafka's statistics (every 5 s): wait for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let m = loop {
        let m = samples(&get(&format!("{base}/metrics")).await.1);
        if m.get(r#"landfall_partition_high_watermark{topic="dms.observe",partition="0"}"#) == Some(&22.0) || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let at = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no sample {k} in {m:?}"));
    assert_eq!(at("landfall_consumed_messages_total"), 22.0);
    assert_eq!(at("landfall_landed_rows_total"), 21.0, "20 widgets and the dead letter's row");
    assert_eq!(at(r#"landfall_dead_letters_total{stage="decode"}"#), 1.0);
    assert_eq!(at(r#"landfall_dead_letters_total{stage="bigquery"}"#), 0.0);
    assert_eq!(at(r#"landfall_control_records_total{kind="add-column"}"#), 1.0);
    assert_eq!(at(r#"landfall_partition_commit_point{topic="dms.observe",partition="0"}"#), 22.0);
    assert_eq!(at(r#"landfall_partition_consumed_offset{topic="dms.observe",partition="0"}"#), 22.0);
    assert_eq!(at(r#"landfall_partition_high_watermark{topic="dms.observe",partition="0"}"#), 22.0);
    assert_eq!(at(r#"landfall_partition_lag{topic="dms.observe",partition="0"}"#), 0.0);
    assert!(at("landfall_insert_all_requests_total") >= 2.0, "widgets and the dead-letter table");
    assert_eq!(at("landfall_insert_all_request_seconds_count"), at("landfall_insert_all_requests_total"));
    assert_eq!(at("landfall_produce_to_landed_seconds_count"), 22.0, "every message's latency");
    assert_eq!(at("landfall_wal_pending_rows"), 0.0);
    assert_eq!(at("landfall_wal_landed_keys"), 21.0, "the keys held to absorb redeliveries: 20 widgets and the dead letter's row");
    assert_eq!(at("landfall_wal_oldest_pending_age_seconds"), 0.0);
    assert!(at("landfall_wal_bytes") > 0.0);
    assert_eq!(at("landfall_ready"), 1.0);
    assert_eq!(get(&format!("{base}/health/ready")).await, (200, "ready\n".into()));

    // A merge by the service's own merger is counted per table.
    let own = landfall::merge::Merger::new(stack.bq.clone(), cfg.clone(), service.metrics.clone(), tokio::sync::watch::channel(false).1);
    let merged = own.merge_table(route, false).await.unwrap();
    let watermark = merged.watermark_micros.expect("a merge that read rows sets the watermark");
    let m = samples(&get(&format!("{base}/metrics")).await.1);
    assert_eq!(m.get(r#"landfall_merge_watermark_timestamp_seconds{table="widgets"}"#), Some(&(watermark as f64 / 1e6)), "{m:?}");
    assert_eq!(m.get(r#"landfall_merges_total{table="widgets"}"#), Some(&1.0), "{m:?}");
    assert_eq!(m.get(r#"landfall_merged_rows_total{table="widgets"}"#), Some(&20.0), "{m:?}");
    assert!(m.get(r#"landfall_merge_last_success_timestamp_seconds{table="widgets"}"#).is_some_and(|t| *t > 1.7e9), "{m:?}");

    // /status: the same facts as JSON.
    let (code, body) = get(&format!("{base}/status")).await;
    assert_eq!(code, 200);
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["ready"], true, "{s}");
    assert_eq!(s["partitions"][0]["committed"], 22, "{s}");
    assert_eq!(s["partitions"][0]["lag"], 0, "{s}");
    assert_eq!(s["tables"][0]["table"], "widgets", "{s}");
    assert_eq!(s["tables"][0]["merged_rows"], 20, "{s}");
    assert_eq!(s["tables"][0]["merge_watermark_micros"], watermark, "{s}");
    assert_eq!(s["dead_letters"], 1, "{s}");

    // `landfall status` against the running service: it asks the listener.
    let mut asking = (**cfg).clone();
    asking.observability.listen = service.observe_addr;
    let report = landfall::status::read(&asking).await.unwrap();
    assert!(matches!(report.source, landfall::status::Source::Service(_)), "{:?}", report.source);
    assert_eq!(report.status.partitions[0].committed, Some(22));
    let shown = report.to_string();
    assert!(shown.contains("ready") && shown.contains("dms.observe/0") && shown.contains("widgets"), "{shown}");
    let mark_text = landfall::decode::value::format_timestamp_micros(watermark);
    assert!(shown.contains(&mark_text), "the watermark {mark_text} in:\n{shown}");
    // A running service without a listener holds the WAL: said, not waited for.
    let mut unreachable = (**cfg).clone();
    unreachable.observability.listen = None;
    let busy = landfall::status::read(&unreachable).await.unwrap_err().to_string();
    assert!(busy.contains("set observability.listen"), "{busy}");

    service.stop().await.unwrap();

    // The service stopped: the WAL and Kafka say where it stands.
    let report = landfall::status::read(cfg).await.unwrap();
    assert_eq!(report.source, landfall::status::Source::Stopped);
    let p = &report.status.partitions[0];
    assert_eq!((p.topic.as_str(), p.partition, p.committed, p.high_watermark, p.lag), ("dms.observe", 0, Some(22), Some(22), Some(0)));
    assert_eq!((report.status.wal_pending_rows, report.status.dead_letters), (0, 1));
    assert!(report.to_string().contains("not running"), "{report}");
    // ... and BigQuery's merge-state table where each table's merge stands.
    assert_eq!(report.status.merge_state_unavailable, None);
    let t = report.status.tables.iter().find(|t| t.table == "widgets").expect("the merged table");
    assert_eq!((t.merge_watermark_micros, t.paused_by_drop), (Some(watermark), false));
    assert!(t.last_merge_success_ms.is_some_and(|ms| ms > 1_700_000_000_000), "{t:?}");
    assert!(report.to_string().contains(&mark_text), "{report}");
    // BigQuery unreachable: the rest is still reported, and the table state is said to be missing.
    let mut no_bq = (**cfg).clone();
    no_bq.bigquery.endpoint = Some("http://127.0.0.1:9/bigquery/v2".into());
    let report = landfall::status::read(&no_bq).await.unwrap();
    assert_eq!(report.status.partitions[0].committed, Some(22));
    assert!(report.status.tables.is_empty());
    let why = report.status.merge_state_unavailable.clone().expect("said why");
    assert!(report.to_string().contains("merge state: unavailable"), "{report}");
    assert!(!why.is_empty());
}

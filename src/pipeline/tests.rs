//! Unit tests of the pipeline's steps (no Kafka, no BigQuery).

use std::sync::Arc;

use serde_json::{Map, Value};

use super::*;
use crate::config::Config;
use crate::decode::row::{self, COL_OP};
use crate::key::DedupKey;
use crate::metrics::Metrics;
use crate::sink::{RowOutcome, Sink, SinkError};
use crate::table::LogRow;
use crate::wal::{DeadLetter, Stage, Wal, WalBatch};

/// BigQuery refusing every row (the dead-letter table's rows too).
struct RefuseAll;

#[async_trait::async_trait]
impl Sink for RefuseAll {
    async fn ship(&self, _table: &str, rows: &[LogRow]) -> Result<Vec<RowOutcome>, SinkError> {
        Ok(rows.iter().map(|_| RowOutcome::Rejected("insertAll invalid: no".into())).collect())
    }
}

fn log_row(key: u8, offset: i64) -> LogRow {
    let mut json = Map::new();
    json.insert(row::COL_TOPIC.into(), Value::from("dms"));
    json.insert(row::COL_PARTITION.into(), Value::from(0));
    json.insert(row::COL_OFFSET.into(), Value::from(offset));
    LogRow::new(DedupKey([key; 32]), &json)
}

/// Issue 10, item 3: the two rows of one primary-key change, both refused,
/// are two dead letters (the previous code keyed letters by position: the
/// second overwrote the first).
#[tokio::test]
async fn two_refused_rows_of_one_message_are_two_dead_letters_keeping_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path()).unwrap();
    let sink: Arc<dyn Sink> = Arc::new(RefuseAll);
    let msg = Arc::new(Msg {
        topic: "dms".into(),
        offset: 7,
        key: Some(b"k".to_vec()),
        payload: Some(b"{\"the\":\"change\"}".to_vec()),
        produced_ms: Some(1_000),
        ..Default::default()
    });
    let rows = vec![log_row(1, 7), log_row(2, 7)];
    let origins: Origins = rows.iter().map(|r| (r.key, msg.clone())).collect();
    let mut b = WalBatch::default();
    for r in &rows {
        b.pending(&r.key, pending_record("t_log", r));
    }
    wal.flush(&b).unwrap();
    let metrics = Metrics::default();
    let Shipped::Resolved(resolved) =
        ship_and_land(&wal, &sink, "dead_letters", vec![("t_log".into(), rows)], &origins, &metrics).await.unwrap()
    else {
        panic!("interrupted")
    };
    assert_eq!(resolved.keys.len(), 4, "two rows, two dead-letter rows (refused too: kept in the WAL only)");
    let letters: Vec<DeadLetter> = wal.dead_letters().map(Result::unwrap).collect();
    assert_eq!(letters.len(), 2);
    assert_ne!(letters[0].id, letters[1].id);
    let mut refused: Vec<[u8; 32]> = letters.iter().map(|d| d.row.as_ref().unwrap().key).collect();
    refused.sort();
    assert_eq!(refused, vec![[1; 32], [2; 32]]);
    for d in &letters {
        assert_eq!((d.offset, d.stage), (7, Stage::BigQuery));
        assert_eq!(d.message.as_ref().unwrap().value_prefix, msg.payload.clone().unwrap(), "the original message, not the row");
    }
}

/// A row refused when re-shipped after a restart (no origin at hand)
/// keeps the row and the coordinates the row records.
#[tokio::test]
async fn a_refused_row_without_its_message_keeps_the_row_and_its_coordinates() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path()).unwrap();
    let sink: Arc<dyn Sink> = Arc::new(RefuseAll);
    let metrics = Metrics::default();
    let shipped =
        ship_and_land(&wal, &sink, "dead_letters", vec![("t_log".into(), vec![log_row(3, 9)])], &Origins::new(), &metrics).await.unwrap();
    assert!(matches!(shipped, Shipped::Resolved(_)), "{shipped:?}");
    let d = wal.dead_letters().next().unwrap().unwrap();
    assert_eq!((d.topic.as_str(), d.offset, d.message.is_none()), ("dms", 9, true));
    assert_eq!(d.row.as_ref().map(|r| (r.table.as_str(), r.key)), Some(("t_log", [3; 32])));
}

pub(super) fn config() -> Config {
    Config::from_toml(
        r#"
[kafka]
bootstrap_servers = "localhost:9092"
group_id = "landfall"
topics = ["dms"]
[wal]
path = "/tmp/wal"
[bigquery]
project = "landfall-local"
dataset = "d"
endpoint = "http://127.0.0.1:9050/bigquery/v2"
auth = { method = "none" }
[[tables]]
source = "sales.customers"
log_table = "customers_log"
final_table = "customers"
primary_key = ["id"]
columns = [ { name = "id", type = "INT64" }, { name = "name", type = "STRING" } ]
"#,
    )
    .unwrap()
}

fn msg(op: &str, table: &str, offset: i64) -> Msg {
    let text = format!(
        r#"{{"metadata":{{"timestamp":"2026-11-27T03:28:32Z","record-type":"control","operation":"{op}","schema-name":"sales","table-name":"{table}"}}}}"#
    );
    Msg { topic: "dms".into(), partition: 0, offset, payload: Some(text.into_bytes()), produced_ms: None, ..Default::default() }
}

#[test]
fn ddl_control_records_become_markers_or_reports_and_are_never_dead_lettered() {
    let (cfg, metrics) = (config(), Metrics::default());
    // Truncate and drop-table of a routed table: one marker row for its log table.
    for (op, code) in [("truncate-table", "T"), ("truncate", "T"), ("drop-table", "X")] {
        match plan(&cfg, &msg(op, "customers", 1), &metrics) {
            Plan::Rows(rows) => {
                assert_eq!(rows.len(), 1, "{op}");
                assert_eq!(rows[0].0, "customers_log");
                assert_eq!(rows[0].1.json()[COL_OP], code);
                assert!(!rows[0].1.json().contains_key("id"), "a marker has no key columns");
            }
            other => panic!("{op}: {other:?}"),
        }
    }
    assert_eq!((Metrics::get(&metrics.truncates), Metrics::get(&metrics.table_drops)), (2, 1));
    // The rest are reported (counted) and acknowledged.
    for op in ["rename-table", "add-column", "drop-column", "rename-column", "change-columns", "column-type-change"] {
        assert!(matches!(plan(&cfg, &msg(op, "customers", 2), &metrics), Plan::Ack), "{op}");
    }
    assert_eq!(Metrics::get(&metrics.ddl_reported), 6);
    // create-table, and any DDL of a table that is not routed, is acknowledged (even with strict routing).
    assert!(cfg.pipeline.strict_routing);
    assert!(matches!(plan(&cfg, &msg("create-table", "customers", 3), &metrics), Plan::Ack));
    for op in ["truncate-table", "drop-table", "add-column"] {
        assert!(matches!(plan(&cfg, &msg(op, "elsewhere", 4), &metrics), Plan::Ack), "{op}");
    }
    assert_eq!(Metrics::get(&metrics.ddl_reported), 6, "unrouted tables are not reported");
    assert_eq!(Metrics::get(&metrics.control_records), 3 + 6 + 1 + 3);
    // A truncate that names no table cannot be applied: dead-lettered with the reason.
    let nameless = Msg {
        payload: Some(
            br#"{"metadata":{"timestamp":"2026-11-27T03:28:32Z","record-type":"control","operation":"truncate-table"}}"#.to_vec(),
        ),
        ..msg("truncate", "customers", 5)
    };
    match plan(&cfg, &nameless, &metrics) {
        Plan::Dead(d) => assert!(d.reason.contains("names no table"), "{}", d.reason),
        other => panic!("{other:?}"),
    }
}

fn config_with_request_limit(max_request_bytes: usize) -> Config {
    let mut cfg = config();
    cfg.bigquery.max_request_bytes = max_request_bytes;
    cfg
}

/// A DMS insert into `sales.customers` whose `name` is `text_bytes` long.
fn large_text_change(id: i64, text_bytes: usize) -> Vec<u8> {
    let name = "réseau 返品 ".repeat(text_bytes / 20 + 1).chars().take(text_bytes / 2).collect::<String>();
    let name = format!("{name}{}", "x".repeat(text_bytes.saturating_sub(name.len())));
    serde_json::to_vec(&serde_json::json!({
        "data": { "id": id, "name": name },
        "metadata": {
            "timestamp": "2026-11-27T10:00:00.000000Z", "record-type": "data", "operation": "insert",
            "partition-key-type": "schema-table", "schema-name": "sales", "table-name": "customers"
        }
    }))
    .unwrap()
}

fn big_msg(offset: i64, payload: Vec<u8>) -> Msg {
    Msg { topic: "dms".into(), partition: 0, offset, payload: Some(payload), ..Default::default() }
}

#[test]
fn a_row_larger_than_the_request_limit_is_dead_lettered_whole_at_plan_time() {
    // Today's code planned it as a row: it was written to the WAL, shipped,
    // refused by the sink, and only then dead-lettered on its own.
    let cfg = config_with_request_limit(100_000);
    let metrics = Metrics::default();
    let big = large_text_change(1, 150_000);
    let Plan::Dead(d) = plan(&cfg, &big_msg(7, big.clone()), &metrics) else {
        panic!("a 150 kB row was planned for a 100 kB request limit")
    };
    let size = crate::sink::request::row_request_bytes(&{
        let Plan::Rows(rows) = plan(&config_with_request_limit(9_000_000), &big_msg(7, big.clone()), &metrics) else {
            panic!("rows under the default limit")
        };
        rows[0].1.clone()
    });
    assert!(size > 150_000, "{size}");
    for part in [size.to_string().as_str(), "100000", "bigquery.max_request_bytes", "customers_log", "whole change"] {
        assert!(d.reason.contains(part), "`{part}` not in: {}", d.reason);
    }
    // The dead letter is the message's, not the row's.
    let m = d.message.as_ref().unwrap();
    assert_eq!((d.offset, m.value_len as usize, m.value_hash), (7, big.len(), *blake3::hash(&big).as_bytes()));
    // A row within the limit is planned as a row.
    let small = large_text_change(2, 50_000);
    assert!(matches!(plan(&cfg, &big_msg(8, small), &metrics), Plan::Rows(r) if r.len() == 1));
}

#[test]
fn a_row_that_serializes_becomes_a_pending_record_holding_its_json() {
    let mut json = Map::new();
    json.insert("a".into(), Value::from(1));
    let rec = pending_record("t", &LogRow::new(DedupKey([1; 32]), &json));
    assert_eq!((rec.table.as_str(), rec.row.as_slice()), ("t", br#"{"a":1}"#.as_slice()));
}

/// A DMS change of `sales.customers` carrying `data`.
fn change_msg(offset: i64, data: Value) -> Msg {
    let payload = serde_json::to_vec(&serde_json::json!({
        "data": data,
        "metadata": {
            "timestamp": "2026-11-27T10:00:00.000000Z", "record-type": "data", "operation": "update",
            "partition-key-type": "schema-table", "schema-name": "sales", "table-name": "customers",
            "transaction-id": "7", "transaction-record-id": offset.to_string(), "stream-position": format!("00000003.0000{offset:04}")
        }
    }))
    .unwrap();
    big_msg(offset, payload)
}

/// An `add-column` control record of `sales.customers` whose details define `columns`.
fn add_column_msg(offset: i64, columns: Value) -> Msg {
    let payload = serde_json::to_vec(&serde_json::json!({
        "control": { "table-def": { "columns": columns } },
        "metadata": {
            "timestamp": "2026-11-27T10:00:00.000000Z", "record-type": "control", "operation": "add-column",
            "partition-key-type": "task-id", "schema-name": "sales", "table-name": "customers"
        }
    }))
    .unwrap();
    big_msg(offset, payload)
}

fn evolving() -> Config {
    let mut cfg = config();
    cfg.schema.evolve = crate::config::Evolve::AddColumns;
    cfg
}

#[test]
fn an_unconfigured_column_is_a_dead_letter_when_evolution_is_off_and_an_evolution_when_on() {
    let metrics = Metrics::default();
    let m = change_msg(1, serde_json::json!({"id": 1, "name": "a", "Score": 5, "note": "n"}));
    match plan(&config(), &m, &metrics) {
        Plan::Dead(d) => assert!(d.reason.contains("`Score` is not configured") && d.reason.contains("add-columns"), "{}", d.reason),
        other => panic!("{other:?}"),
    }
    match plan(&evolving(), &m, &metrics) {
        Plan::Evolve(e) => {
            assert_eq!((e.source.as_str(), e.from_control), ("sales.customers", false));
            let names: Vec<_> = e.columns.iter().map(|c| (c.name.as_str(), c.defined)).collect();
            assert_eq!(names, vec![("Score", None), ("note", None)]);
        }
        other => panic!("{other:?}"),
    }
    // A name that can never be a column is still the message's rejection.
    let bad = change_msg(2, serde_json::json!({"id": 1, "_landfall_op": "D"}));
    assert!(matches!(plan(&evolving(), &bad, &metrics), Plan::Dead(d) if d.reason.contains("reserved")));
}

#[test]
fn an_add_column_record_defines_the_types_and_is_acknowledged_once_its_columns_exist() {
    let metrics = Metrics::default();
    let cols =
        serde_json::json!({"id": {"type": "INT4"}, "score": {"type": "INT8"}, "price": {"type": "NUMERIC", "precision": 40, "scale": 2}});
    let m = add_column_msg(3, cols);
    let mut cfg = evolving();
    let Plan::Evolve(e) = plan(&cfg, &m, &metrics) else { panic!("an add-column with new columns evolves") };
    use crate::decode::ColumnType;
    let got: Vec<_> = e.columns.iter().map(|c| (c.name.as_str(), c.defined)).collect();
    // (Definitions in the record's order; serde_json's maps sort by name.)
    assert_eq!(got, vec![("price", Some(ColumnType::Bignumeric)), ("score", Some(ColumnType::Int64))]);
    assert!(e.from_control);
    assert_eq!(Metrics::get(&metrics.control_records), 0, "counted when planned for the last time");
    super::evolve::adopt(&mut cfg, "sales.customers", vec![crate::config::ColumnConfig::new("score", ColumnType::Int64)]);
    super::evolve::adopt(&mut cfg, "sales.customers", vec![crate::config::ColumnConfig::new("price", ColumnType::Bignumeric)]);
    assert!(matches!(plan(&cfg, &m, &metrics), Plan::Ack));
    assert_eq!((Metrics::get(&metrics.control_records), Metrics::get(&metrics.ddl_reported)), (1, 0));
    // Evolution off: reported, as before.
    assert!(matches!(plan(&config(), &m, &metrics), Plan::Ack));
    assert_eq!(Metrics::get(&metrics.ddl_reported), 1);
}

/// A sink that records the columns it was asked to add and answers as told.
struct Columns {
    asked: std::sync::Mutex<Vec<Vec<(String, crate::decode::ColumnType)>>>,
    answer: fn(usize) -> Result<(), crate::sink::schema::SchemaError>,
}

#[async_trait::async_trait]
impl Sink for Columns {
    async fn ship(&self, _table: &str, rows: &[LogRow]) -> Result<Vec<RowOutcome>, SinkError> {
        Ok(vec![RowOutcome::Landed; rows.len()])
    }
    async fn add_columns(
        &self,
        _table: &crate::config::TableConfig,
        columns: &[crate::config::ColumnConfig],
    ) -> Result<Vec<crate::config::ColumnConfig>, crate::sink::schema::SchemaError> {
        let mut asked = self.asked.lock().unwrap();
        asked.push(columns.iter().map(|c| (c.name.clone(), c.ty)).collect());
        (self.answer)(asked.len()).map(|()| columns.to_vec())
    }
}

fn transient() -> crate::sink::schema::SchemaError {
    crate::sink::schema::SchemaError::Api { what: "table customers".into(), message: "HTTP 503".into(), transient: true }
}

#[tokio::test]
async fn a_batch_waits_for_its_columns_then_carries_them_and_the_config_keeps_them() {
    let sink = Columns { asked: Default::default(), answer: |n| if n == 1 { Err(transient()) } else { Ok(()) } };
    let metrics = Metrics::default();
    let mut cfg = Arc::new(evolving());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let msgs = vec![
        change_msg(1, serde_json::json!({"id": 1, "name": "a"})),
        add_column_msg(2, serde_json::json!({"score": {"type": "INT8"}})),
        change_msg(3, serde_json::json!({"id": 1, "name": "a", "score": 5, "note": "n"})),
    ];
    let planned = super::plan_all(&mut cfg, &sink, msgs, &metrics, &rx).await.unwrap();
    // One call per table, retried once after the transient failure; the
    // control record's type wins over the default for `score`.
    use crate::decode::ColumnType::{Int64, String as Str};
    let want = vec![("score".to_owned(), Int64), ("note".to_owned(), Str)];
    assert_eq!(*sink.asked.lock().unwrap(), vec![want.clone(), want]);
    assert_eq!(Metrics::get(&metrics.schema_columns_added), 2);
    let names: Vec<_> = cfg.tables[0].columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["id", "name", "score", "note"]);
    assert!(matches!(&planned[1].1, Plan::Ack));
    let Plan::Rows(rows) = &planned[2].1 else { panic!("{:?}", planned[2].1) };
    assert_eq!((rows[0].1.json()["score"].clone(), rows[0].1.json()["note"].clone()), (Value::from(5), Value::from("n")));
    let Plan::Rows(first) = &planned[0].1 else { panic!("{:?}", planned[0].1) };
    assert!(!first[0].1.json().contains_key("score"), "planned before the columns, as it was");
}

#[tokio::test]
async fn a_refusal_dead_letters_the_changes_naming_the_columns_and_acknowledges_the_record() {
    let sink = Columns {
        asked: Default::default(),
        answer: |_| {
            Err(crate::sink::schema::SchemaError::Api {
                what: "table customers".into(),
                message: "HTTP 400: too many columns".into(),
                transient: false,
            })
        },
    };
    let metrics = Metrics::default();
    let mut cfg = Arc::new(evolving());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let msgs =
        vec![add_column_msg(1, serde_json::json!({"score": {"type": "INT8"}})), change_msg(2, serde_json::json!({"id": 1, "score": 5}))];
    let planned = super::plan_all(&mut cfg, &sink, msgs, &metrics, &rx).await.unwrap();
    assert!(matches!(&planned[0].1, Plan::Ack));
    let Plan::Dead(d) = &planned[1].1 else { panic!("{:?}", planned[1].1) };
    for part in ["score", "sales.customers", "too many columns"] {
        assert!(d.reason.contains(part), "`{part}` not in {}", d.reason);
    }
    assert_eq!(cfg.tables[0].columns.len(), 2, "nothing adopted");
    assert_eq!(Metrics::get(&metrics.schema_columns_added), 0);
}

#[tokio::test]
async fn shutdown_while_columns_cannot_be_added_ends_the_batch_unbegun() {
    let sink = Columns { asked: Default::default(), answer: |_| Err(transient()) };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut cfg = Arc::new(evolving());
    let metrics = Metrics::default();
    let stop = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        tx.send(true).unwrap();
    });
    let got = super::plan_all(&mut cfg, &sink, vec![change_msg(1, serde_json::json!({"id": 1, "score": 5}))], &metrics, &rx).await;
    assert!(matches!(got, Err(PipelineError::Shutdown)), "{:?}", got.map(|p| p.len()));
    assert!(sink.asked.lock().unwrap().len() >= 2, "retried until the shutdown");
    stop.await.unwrap();
}

#[tokio::test]
async fn a_large_batch_planned_on_two_threads_keeps_message_order_and_plans() {
    // 301 messages (above the two-thread threshold, an odd count): changes,
    // with a message that is not JSON every seventh.
    let (cfg, metrics) = (config(), Metrics::default());
    let msgs: Vec<Msg> = (0..301)
        .map(|i| {
            if i % 7 == 3 {
                big_msg(i, b"{not json".to_vec())
            } else {
                change_msg(i, serde_json::json!({"id": i, "name": format!("n{i}")}))
            }
        })
        .collect();
    // A dead letter carries the time it was made: compared by what it says.
    let summary = |p: &Plan| match p {
        Plan::Dead(d) => format!("dead {} {}", d.offset, d.reason),
        other => format!("{other:?}"),
    };
    let one_at_a_time: Vec<String> = msgs.iter().map(|m| summary(&plan(&cfg, m, &metrics))).collect();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let mut live = Arc::new(config());
    let planned = super::plan_all(&mut live, &RefuseAll, msgs, &metrics, &rx).await.unwrap();
    let offsets: Vec<i64> = planned.iter().map(|(m, _)| m.offset).collect();
    assert_eq!(offsets, (0..301).collect::<Vec<i64>>(), "messages stay in order");
    let plans: Vec<String> = planned.iter().map(|(_, p)| summary(p)).collect();
    assert_eq!(plans, one_at_a_time, "each message gets the plan it gets alone");
    assert_eq!(plans.iter().filter(|p| p.starts_with("dead ")).count(), 43, "the bad messages are dead letters: {}", &plans[3]);
    assert!(plans[0].starts_with("Rows"), "{}", &plans[0]);
}

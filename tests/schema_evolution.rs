//! Schema evolution against the emulator (`[schema] evolve = "add-columns"`;
//! docs/design.md, "Schema evolution"): columns the source gains mid-stream
//! (announced by an `add-column` control record with their types, or only
//! carried by the changes) are added to the log and final tables while the
//! service runs, the changes carrying them land and merge, and the final
//! tables equal the source; a restart keeps using them; with evolution off
//! such a change is a dead letter naming the column. The oracle is the
//! simulator's own table list and model (source-native values), never
//! landfall's decoder.

mod support;

use std::time::Duration;

use landfall::decode::ColumnType;
use landfall::harness::demo::wait_caught_up;
use landfall::harness::sim::{value, verify, Simulator, SourceValue};
use landfall::merge::sql::{merge_statement, MergeTarget, Window};
use landfall::metrics::Metrics;
use landfall::service::Service;
use rand::Rng;
use serde_json::json;

const EVOLVE: &str = "\n[schema]\nevolve = \"add-columns\"\n";
const CUSTOMERS: &str = "sales.customers";

async fn verify_against(stack: &support::Stack, sim: &Simulator) {
    for r in landfall::harness::demo::merger(&stack.bq, &stack.cfg).merge_all(false).await {
        r.unwrap();
    }
    let verdicts = verify::verify_all(&stack.bq, sim.tables(), &sim.model).await.unwrap();
    let report = verify::report(&verdicts);
    for v in &verdicts {
        assert_eq!((v.missing_keys, v.extra_keys, v.differing_values, v.duplicate_keys), (0, 0, 0, 0), "{}:\n{report}", v.table);
    }
}

/// The BigQuery type of each of `names` in `table` (None: no such column).
async fn types_of(stack: &support::Stack, table: &str, names: &[&str]) -> Vec<Option<ColumnType>> {
    let cols = stack.bq.source_columns(table).await.unwrap();
    names.iter().map(|n| cols.iter().find(|c| c.name == *n).map(|c| c.ty.clone().unwrap())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_added_mid_stream_land_and_merge_without_a_restart_and_survive_one() {
    support::init_logs();
    let stack = support::Stack::start("evolve", 1, EVOLVE, &[]).await;
    let (kafka, cfg) = (&stack.kafka, &stack.cfg);
    let mut sim = Simulator::new(41);
    let wait = Duration::from_secs(240);
    let service = Service::start(cfg.clone()).await.unwrap();

    // Before: the configured columns only.
    let mut before = sim.full_load(20);
    before.extend(sim.changes(200));
    kafka.produce(&before).unwrap();
    wait_caught_up(cfg, kafka, &service, wait).await.unwrap();

    // ALTER TABLE customers ADD COLUMN c_score BIGINT, ADD COLUMN c_price
    // DECIMAL(20,4): DMS announces it (IncludeControlDetails), then changes carry them.
    let record = sim.add_column_record(
        CUSTOMERS,
        json!({
            "id": {"type": "INT8"}, "name": {"type": "WSTRING", "length": 200}, "email": {"type": "WSTRING", "length": 200},
            "active": {"type": "BOOLEAN"}, "updated_at": {"type": "DATETIME", "scale": 3},
            "c_score": {"type": "INT8"}, "c_price": {"type": "NUMERIC", "precision": 20, "scale": 4},
        }),
    );
    sim.add_column(CUSTOMERS, "c_score", ColumnType::Int64, |r| SourceValue::Int(r.random()));
    sim.add_column(CUSTOMERS, "c_price", ColumnType::Numeric, |r| SourceValue::Decimal(value::gen_decimal(r, 16, 4)));
    let mut typed = vec![record];
    typed.extend(sim.changes(300));
    kafka.produce(&typed).unwrap();
    wait_caught_up(cfg, kafka, &service, wait).await.unwrap();

    // ALTER TABLE orders ADD COLUMN c_memo TEXT, with no control details:
    // only the changes carry it, and it gets [schema] default_type (STRING).
    sim.add_column("sales.orders", "c_memo", ColumnType::String, |r| SourceValue::Text(value::gen_text(r)));
    let untyped = sim.changes(300);
    kafka.produce(&untyped).unwrap();
    wait_caught_up(cfg, kafka, &service, wait).await.unwrap();

    let m = service.metrics.clone();
    assert_eq!(Metrics::get(&m.schema_columns_added), 3);
    assert_eq!(Metrics::get(&m.dead_lettered), 0, "nothing waited in the dead letters for its column");
    assert_eq!(Metrics::get(&m.ddl_reported), 0, "the add-column was applied, not reported");
    assert!(!service.is_finished());
    // Types: from the control record, else the default; in both tables.
    for table in ["customers", "customers_log"] {
        assert_eq!(types_of(&stack, table, &["c_score", "c_price"]).await, vec![Some(ColumnType::Int64), Some(ColumnType::Numeric)]);
    }
    for table in ["orders", "orders_log"] {
        assert_eq!(types_of(&stack, table, &["c_memo"]).await, vec![Some(ColumnType::String)]);
    }
    // The config file never named them: the one-shot merger finds them in BigQuery.
    assert!(cfg.tables.iter().all(|t| t.columns.iter().all(|c| !["c_score", "c_price", "c_memo"].contains(&c.name.as_str()))));
    verify_against(&stack, &sim).await;
    let with_score =
        support::scalar(&stack.bq, &format!("SELECT COUNT(*) FROM {} WHERE c_score IS NOT NULL", stack.table("customers"))).await;
    assert!(with_score > 10, "rows carry the new column: {with_score}");
    assert_eq!(service.stop().await.unwrap(), landfall::pipeline::Stopped::Drained);

    // A restart with the same config file: the added columns are read back
    // from BigQuery, so the changes carrying them land at once.
    let service = Service::start(cfg.clone()).await.unwrap();
    let after = sim.changes(200);
    kafka.produce(&after).unwrap();
    wait_caught_up(cfg, kafka, &service, wait).await.unwrap();
    let m = service.metrics.clone();
    assert_eq!((Metrics::get(&m.schema_columns_added), Metrics::get(&m.dead_lettered)), (0, 0));
    assert_eq!(service.stop().await.unwrap(), landfall::pipeline::Stopped::Drained);
    verify_against(&stack, &sim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_evolution_off_a_change_with_a_new_column_is_a_dead_letter_naming_it() {
    support::init_logs();
    let stack = support::Stack::start("evolve_off", 1, "", &[]).await;
    let (kafka, cfg) = (&stack.kafka, &stack.cfg);
    let mut sim = Simulator::new(42);
    let mut msgs = sim.full_load(5);
    sim.add_column(CUSTOMERS, "c_score", ColumnType::Int64, |r| SourceValue::Int(r.random_range(1..100)));
    msgs.extend(sim.changes(60));
    kafka.produce(&msgs).unwrap();
    let metrics = landfall::harness::demo::run_until_caught_up(cfg, kafka, Duration::from_secs(240)).await.unwrap();
    assert!(Metrics::get(&metrics.dead_lettered) > 0);
    assert_eq!(Metrics::get(&metrics.schema_columns_added), 0);
    let reasons = support::rows(&stack.bq, &format!("SELECT DISTINCT reason FROM {}", stack.table(&cfg.bigquery.dead_letter_table))).await;
    assert!(!reasons.is_empty());
    for r in &reasons {
        let r = r[0].as_deref().unwrap_or("");
        assert!(r.contains("`c_score` is not configured") && r.contains("evolve"), "{r}");
    }
    assert_eq!(types_of(&stack, "customers", &["c_score"]).await, vec![None], "no column added");
}

/// The MERGE's re-run for columns added while it ran (src/merge, "columns
/// were added during the merge"): a MERGE whose column set lacked a column
/// leaves it NULL in rows it applied, a normal MERGE never fixes that (the
/// change is not newer than what the row holds), and the re-applying one
/// does, changing nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remerge_fills_in_a_column_the_first_merge_of_the_window_did_not_know() {
    support::init_logs();
    let stack = support::Stack::start("evolve_remerge", 1, EVOLVE, &[]).await;
    let (kafka, cfg, bq) = (&stack.kafka, &stack.cfg, &stack.bq);
    let mut sim = Simulator::new(43);
    sim.add_column(CUSTOMERS, "c_score", ColumnType::String, |r| SourceValue::Int(r.random_range(1..1_000_000)));
    let mut msgs = sim.full_load(15);
    msgs.extend(sim.changes(120));
    kafka.produce(&msgs).unwrap();
    landfall::harness::demo::run_until_caught_up(cfg, kafka, Duration::from_secs(240)).await.unwrap();
    let t = cfg.tables.iter().find(|t| t.source == CUSTOMERS).unwrap();
    let target = |with_score: bool| {
        let mut cols: Vec<String> = t.columns.iter().map(|c| c.name.clone()).collect();
        if with_score {
            cols.push("c_score".into());
        }
        MergeTarget::new(&bq.project, &bq.dataset, &t.log_table, &t.final_table, &t.primary_key, &cols).unwrap()
    };
    let now_micros = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    let window = Window { from_micros: None, to_micros: now_micros + 86_400_000_000 };
    let scored =
        || async { support::scalar(bq, &format!("SELECT COUNT(*) FROM {} WHERE c_score IS NOT NULL", stack.table("customers"))).await };
    let table =
        || async { support::rows(bq, &format!("SELECT TO_JSON_STRING(t) FROM {} AS t ORDER BY id", stack.table("customers"))).await };
    bq.query(&merge_statement(&target(false), &window)).await.unwrap();
    assert_eq!(scored().await, 0, "the first MERGE did not know c_score");
    bq.query(&merge_statement(&target(true), &window)).await.unwrap();
    assert_eq!(scored().await, 0, "a normal MERGE applies only newer changes");
    bq.query(&merge_statement(&MergeTarget { reapply_equal: true, ..target(true) }, &window)).await.unwrap();
    let filled = scored().await;
    assert!(filled > 5, "{filled}");
    let once = table().await;
    bq.query(&merge_statement(&MergeTarget { reapply_equal: true, ..target(true) }, &window)).await.unwrap();
    assert_eq!(table().await, once, "re-applying the same changes again changes nothing");
    // And it is what the source holds.
    let verdicts = verify::verify_all(bq, &sim.tables()[..1], &sim.model).await.unwrap();
    assert!(verdicts[0].matches(), "{}", verify::report(&verdicts));
}

/// A sink that records the Kafka offset of every row it lands, and whose
/// tables take new columns only when `columns_ok` (else BigQuery answers
/// 503 to every attempt, as while it is unreachable).
struct Recording {
    landed: std::sync::Mutex<Vec<i64>>,
    columns_ok: bool,
}

#[async_trait::async_trait]
impl landfall::sink::Sink for Recording {
    async fn ship(
        &self,
        _table: &str,
        rows: &[landfall::sink::LogRow],
    ) -> Result<Vec<landfall::sink::RowOutcome>, landfall::sink::SinkError> {
        let mut landed = self.landed.lock().unwrap();
        for r in rows {
            let row: serde_json::Value = serde_json::from_slice(r.text()).unwrap();
            landed.push(row[landfall::table::COL_OFFSET].as_i64().unwrap_or_else(|| panic!("no offset in {row}")));
        }
        Ok(vec![landfall::sink::RowOutcome::Landed; rows.len()])
    }
    async fn add_columns(
        &self,
        _table: &landfall::config::TableConfig,
        columns: &[landfall::config::ColumnConfig],
    ) -> Result<Vec<landfall::config::ColumnConfig>, landfall::sink::schema::SchemaError> {
        if self.columns_ok {
            Ok(columns.to_vec())
        } else {
            Err(landfall::sink::schema::SchemaError::Api { what: "table customers".into(), message: "HTTP 503".into(), transient: true })
        }
    }
}

/// One DMS update of `sales.customers` row `id` (with `extra` columns).
fn customer_update(id: i64, extra: serde_json::Value) -> Vec<u8> {
    let mut data = json!({"id": id, "name": format!("n{id}"), "email": "e@x", "active": true, "updated_at": "2026-11-27 10:00:00.000"});
    data.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::to_vec(&json!({
        "data": data,
        "metadata": {
            "timestamp": "2026-11-27T10:00:00.000000Z", "record-type": "data", "operation": "update",
            "partition-key-type": "schema-table", "schema-name": "sales", "table-name": "customers",
            "transaction-id": "7", "transaction-record-id": id.to_string(), "stream-position": format!("00000003.0000{id:04}")
        }
    }))
    .unwrap()
}

/// A shutdown while a batch waits for its columns leaves that batch unbegun
/// (never registered), so no batch read after it may land: were one to land,
/// the partition's commit point would pass the waiting batch's messages and
/// they would never be read again. Here batch 1 (offset 0) needs a column
/// BigQuery cannot add, batch 2 (offset 1) needs none and is read behind it;
/// after the shutdown nothing is committed, and the next start lands both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_while_a_batch_waits_for_its_columns_lands_no_batch_behind_it() {
    support::init_logs();
    let stack = support::Stack::start(
        "evolve_stop",
        1,
        EVOLVE,
        &[("batch_max_wait = \"20ms\"", "batch_max_wait = \"20ms\"\nbatch_max_messages = 1\nshutdown_timeout = \"10s\"")],
    )
    .await;
    let (kafka, cfg) = (&stack.kafka, &stack.cfg);
    kafka.produce_raw(Some(b"1"), Some(&customer_update(1, json!({"c_score": 5})))).unwrap();
    kafka.produce_raw(Some(b"2"), Some(&customer_update(2, json!({})))).unwrap();
    kafka.flush().unwrap();

    let run = |columns_ok: bool| {
        let sink = std::sync::Arc::new(Recording { landed: Default::default(), columns_ok });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (abort, _) = tokio::sync::watch::channel(false);
        let wal = landfall::wal::Wal::open(&cfg.wal.path).unwrap();
        let task = tokio::spawn(landfall::pipeline::run(cfg.clone(), wal, sink.clone(), Default::default(), stopped, abort));
        (sink, stop, task)
    };
    let committed = || landfall::pipeline::committed_offsets(cfg, &kafka.topic, 1).unwrap()[0];

    // Both batches read, the first waiting for its column: then the shutdown.
    let (sink, stop, task) = run(false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!task.is_finished());
    stop.send(true).unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(20), task).await.expect("bounded shutdown").unwrap().unwrap();
    assert_eq!(stopped, landfall::pipeline::Stopped::Drained);
    assert_eq!(*sink.landed.lock().unwrap(), Vec::<i64>::new(), "a batch behind the unbegun one landed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(committed(), 0, "the commit point passed the batch that waited for its column");

    // The next start (BigQuery takes the column now) reads and lands both.
    let (sink, stop, task) = run(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while committed() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "not committed: {:?} landed", sink.landed.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(*sink.landed.lock().unwrap(), vec![0, 1]);
}

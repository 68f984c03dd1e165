//! Shared set-up of the end-to-end tests: a BigQuery emulator for this test
//! binary (the one `LANDFALL_BQ_ENDPOINT` names, else one started for this
//! process; never skipped: an emulator that cannot start fails the test),
//! a fresh dataset and WAL directory per test, and the demo's config.

#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use landfall::config::Config;
use landfall::harness::demo::{demo_config_toml, LocalKafka};
use landfall::sink::BigQuery;

/// Logs of the code under test, on stderr, when `LANDFALL_TEST_LOG` is set
/// (an env-filter such as `info`).
pub fn init_logs() {
    if let Ok(filter) = std::env::var("LANDFALL_TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).with_test_writer().try_init();
    }
}

/// The emulator's REST base URL. Each test binary starts its own (a fresh
/// catalog: the emulator slows down with every table it holds), which stops
/// by itself when the binary exits.
pub fn endpoint() -> String {
    init_logs();
    if let Ok(e) = std::env::var("LANDFALL_BQ_ENDPOINT") {
        return e;
    }
    static EMULATOR: std::sync::OnceLock<landfall::harness::emulator::Emulator> = std::sync::OnceLock::new();
    EMULATOR
        .get_or_init(|| {
            landfall::harness::emulator::Emulator::start_owned()
                .unwrap_or_else(|e| panic!("cannot start the BigQuery emulator for the end-to-end tests: {e:#}"))
        })
        .endpoint
        .clone()
}

pub fn project() -> String {
    std::env::var("LANDFALL_BQ_PROJECT").unwrap_or_else(|_| "landfall-local".into())
}

/// A dataset name no other test (or earlier run) uses.
pub fn unique_dataset(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}_{}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), nanos)
}

/// The demo config (the simulated tables) plus `extra` TOML, for a fresh dataset.
pub fn config(kafka: &LocalKafka, wal: &Path, dataset: &str, extra: &str) -> Arc<Config> {
    config_with(kafka, wal, dataset, extra, &[])
}

/// Like [`config`], with textual replacements applied to the demo config first.
pub fn config_with(kafka: &LocalKafka, wal: &Path, dataset: &str, extra: &str, replace: &[(&str, &str)]) -> Arc<Config> {
    config_for(kafka, wal, dataset, extra, replace, &landfall::harness::sim::tables())
}

/// Like [`config_with`], routing `tables` (e.g. `sim::tables_for(&opts)`).
pub fn config_for(
    kafka: &LocalKafka,
    wal: &Path,
    dataset: &str,
    extra: &str,
    replace: &[(&str, &str)],
    tables: &[landfall::config::TableConfig],
) -> Arc<Config> {
    let mut text = demo_config_toml(&kafka.bootstrap_servers(), &endpoint(), &project(), dataset, wal, tables)
        .replace("\"dms.sales\"", &format!("\"{}\"", kafka.topic));
    for (from, to) in replace {
        assert!(text.contains(from), "{from:?} not in the demo config");
        text = text.replace(from, to);
    }
    text.push_str(extra);
    Arc::new(Config::from_toml(&text).unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}")))
}

pub async fn bigquery(cfg: &Config) -> BigQuery {
    let bq = BigQuery::connect(&cfg.bigquery).await.expect("connect to the emulator");
    bq.ensure_all(cfg).await.expect("create dataset and tables");
    bq
}

/// Runs one query and returns its rows as strings (NULL as None).
pub async fn rows(bq: &BigQuery, sql: &str) -> Vec<Vec<Option<String>>> {
    let resp = bq.query(sql).await.unwrap_or_else(|e| panic!("query failed: {e}\n{sql}"));
    let width = resp.schema.as_ref().and_then(|s| s.fields.as_ref()).map_or(0, Vec::len);
    resp.rows.unwrap_or_default().iter().map(|r| (0..width).map(|i| landfall::sink::client::cell(r, i)).collect()).collect()
}

pub async fn scalar(bq: &BigQuery, sql: &str) -> i64 {
    let r = rows(bq, sql).await;
    r.first()
        .and_then(|row| row.first().cloned().flatten())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no integer from {sql}: {r:?}"))
}

/// Reads every message of the topic back (without a group), with its coordinates.
pub fn read_all(kafka: &LocalKafka) -> Vec<landfall::pipeline::Msg> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("group.id", "landfall-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..kafka.partitions {
        tpl.add_partition_offset(&kafka.topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let total: i64 = kafka.high_watermarks().unwrap().iter().sum();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while (out.len() as i64) < total && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(std::time::Duration::from_millis(200)) {
            out.push(landfall::pipeline::Msg::from_kafka(&m));
        }
    }
    assert_eq!(out.len() as i64, total, "read back every message");
    out
}

/// A routed table that is not part of the simulator, for hand-made messages.
macro_rules! widgets {
    () => {
        r#"
[[tables]]
source = "sales.widgets"
log_table = "widgets_log"
final_table = "widgets"
primary_key = ["id"]
columns = [ { name = "id", type = "INT64" }, { name = "label", type = "STRING" } ]
"#
    };
}
pub const WIDGETS: &str = widgets!();

/// A second member of `group` on `topic` (a rebalance for the bridge),
/// which reads for up to `wait` and then leaves without committing.
pub async fn intrude(kafka: &LocalKafka, group: &str, wait: std::time::Duration) {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let intruder: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("group.id", group)
        .set("session.timeout.ms", "6000")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    intruder.subscribe(&[&kafka.topic]).unwrap();
    let _ = tokio::time::timeout(wait, intruder.recv()).await;
}

/// [`WIDGETS`] ordered by MySQL binlog position (the tests' messages carry
/// `stream-position` and share one timestamp).
pub const WIDGETS_BY_POSITION: &str = concat!(widgets!(), "order_by = \"mysql-binlog\"\n");

/// Everything a test needs: a mock Kafka topic, a WAL directory, a fresh
/// dataset with its tables, and the config tying them together.
pub struct Stack {
    pub kafka: LocalKafka,
    pub wal: tempfile::TempDir,
    pub dataset: String,
    pub cfg: Arc<Config>,
    pub bq: BigQuery,
}

impl Stack {
    pub async fn start(name: &str, partitions: i32, extra: &str, replace: &[(&str, &str)]) -> Stack {
        Stack::start_for(name, partitions, extra, replace, &landfall::harness::sim::tables()).await
    }

    /// A stack routing `tables` (the simulator's tables for its options).
    pub async fn start_for(
        name: &str,
        partitions: i32,
        extra: &str,
        replace: &[(&str, &str)],
        tables: &[landfall::config::TableConfig],
    ) -> Stack {
        let kafka = LocalKafka::start(&format!("dms.{name}"), partitions).unwrap();
        let wal = tempfile::tempdir().unwrap();
        let dataset = unique_dataset(name);
        let cfg = config_for(&kafka, wal.path(), &dataset, extra, replace, tables);
        let bq = bigquery(&cfg).await;
        Stack { kafka, wal, dataset, cfg, bq }
    }

    /// `project.dataset.table`, backtick-quoted.
    pub fn table(&self, name: &str) -> String {
        format!("`{}.{}.{}`", self.bq.project, self.dataset, name)
    }

    /// Copies of changes in the log tables beyond the first (what the MERGE absorbs).
    pub async fn log_copies(&self) -> i64 {
        let mut copies = 0;
        for t in &self.cfg.tables {
            copies +=
                scalar(&self.bq, &format!("SELECT COUNT(*) - COUNT(DISTINCT `_landfall_key`) FROM {}", self.table(&t.log_table))).await;
        }
        copies
    }

    /// Merges every table and asserts that the final tables equal `model`.
    pub async fn merge_and_verify(&self, model: &landfall::harness::sim::Model) {
        for r in landfall::harness::demo::merger(&self.bq, &self.cfg).merge_all(false).await {
            r.unwrap();
        }
        self.verify(model).await;
    }

    /// Asserts that the simulator's final tables equal `model`.
    pub async fn verify(&self, model: &landfall::harness::sim::Model) {
        let tables: Vec<_> = self.cfg.tables.iter().filter(|t| model.contains_key(&t.source)).cloned().collect();
        let verdicts = landfall::harness::sim::verify::verify_all(&self.bq, &tables, model).await.unwrap();
        assert!(
            verdicts.iter().all(|v| v.matches()),
            "final tables differ from the source:\n{}",
            landfall::harness::sim::verify::report(&verdicts)
        );
    }

    /// Asserts that the dead-letter table holds exactly the dead letters
    /// the simulator built into the stream.
    pub async fn verify_dead_letters(&self, sim: &landfall::harness::sim::Simulator) {
        let v = landfall::harness::sim::verify::verify_dead_letters(
            &self.bq,
            &self.cfg.bigquery.dead_letter_table,
            sim.expected_dead_letters(),
        )
        .await
        .unwrap();
        assert!(v.matches(), "dead letters differ from the ones the stream was built with: {v:#?}");
        if v.repeated > 0 || v.copies > 0 {
            eprintln!("dead letters: {} recorded again under another key, {} copies of one key", v.repeated, v.copies);
        }
    }
}

//! `landfall demo`: the whole pipeline on local parts, verified.
//!
//! An in-process librdkafka mock cluster (a real Kafka-protocol broker) and a
//! local BigQuery emulator (started by `make demo`) stand in for MSK and
//! BigQuery. The simulated source database (every column type, transactions
//! whose changes share a timestamp, repeated content, primary-key changes)
//! publishes DMS messages with duplicate deliveries, re-published ranges and
//! a few messages built to be dead letters; the bridge runs, is stopped and
//! started again in the middle, the tables are merged, and every final table
//! is compared with the source rows by the simulator's own oracle, which
//! shares no code with landfall's decoder. It runs twice: with DMS's defaults
//! (no transaction details, timestamp ordering) and with
//! `IncludeTransactionDetails=true` (ordered by PostgreSQL LSN). The helpers here ([`LocalKafka`], [`demo_config`], [`run_until_caught_up`])
//! are also what the end-to-end tests use.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

use crate::config::{Config, TableConfig};
use crate::harness::sim::{verify, PositionFormat, SimMessage, SimOptions, Simulator};
use crate::merge::Merger;
use crate::metrics::Metrics;
use crate::pipeline::{committed_offsets, Stopped};
use crate::service::Service;
use crate::sink::BigQuery;

/// A mock Kafka cluster in this process, with one topic.
pub struct LocalKafka {
    // Declared first so it is dropped before the cluster it talks to.
    producer: ThreadedProducer<DefaultProducerContext>,
    pub cluster: MockCluster<'static, DefaultProducerContext>,
    pub topic: String,
    pub partitions: i32,
}

impl LocalKafka {
    /// A one-broker mock cluster with `topic`. A consumer group's first join
    /// is served at once (librdkafka's mock broker waits 3 s by default, the
    /// `group.initial.rebalance.delay.ms` of a real broker, and every test
    /// restarts bridges many times). The broker lives as long as the process.
    pub fn start(topic: &str, partitions: i32) -> anyhow::Result<LocalKafka> {
        // The safe API has no setter for the delay: the cluster is reached
        // through a client handle that owns it, which is kept for the rest
        // of the process (so the cluster can be `'static`).
        let owner: &'static BaseProducer = Box::leak(Box::new(ClientConfig::new().set("test.mock.num.brokers", "1").create()?));
        // SAFETY: the handle belongs to `owner`, which is never dropped; the
        // function only stores the value in the cluster's defaults.
        unsafe {
            let mcluster = rdkafka::bindings::rd_kafka_handle_mock_cluster(owner.client().native_ptr());
            anyhow::ensure!(!mcluster.is_null(), "no mock cluster handle");
            rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(mcluster, 0);
        }
        let cluster = owner.client().mock_cluster().ok_or_else(|| anyhow::anyhow!("librdkafka did not create a mock cluster"))?;
        cluster.create_topic(topic, partitions, 1)?;
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .create()?;
        Ok(LocalKafka { cluster, topic: topic.into(), partitions, producer })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Produces `msgs` keyed by primary key (as DMS does) and waits for delivery.
    pub fn produce(&self, msgs: &[SimMessage]) -> anyhow::Result<()> {
        for m in msgs {
            self.produce_raw(Some(&m.key), Some(&m.payload))?;
        }
        self.producer.flush(Duration::from_secs(30))?;
        Ok(())
    }

    /// Produces one message with any key and value (or none).
    pub fn produce_raw(&self, key: Option<&[u8]>, payload: Option<&[u8]>) -> anyhow::Result<()> {
        send(&self.producer, &self.topic, key, payload)
    }

    /// Produces one message with headers (a name may repeat; `None` is a null value).
    pub fn produce_with_headers(
        &self,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> anyhow::Result<()> {
        use rdkafka::message::{Header, OwnedHeaders};
        let mut h = OwnedHeaders::new();
        for (name, value) in headers {
            h = h.insert(Header { key: name, value: *value });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic).headers(h);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        self.producer.send(record).map_err(|(e, _)| e)?;
        Ok(())
    }

    pub fn flush(&self) -> anyhow::Result<()> {
        self.producer.flush(Duration::from_secs(30))?;
        Ok(())
    }

    /// The high watermark (next offset) of every partition.
    pub fn high_watermarks(&self) -> anyhow::Result<Vec<i64>> {
        let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", self.bootstrap_servers()).create()?;
        (0..self.partitions).map(|p| Ok(c.fetch_watermarks(&self.topic, p, Duration::from_secs(10))?.1)).collect()
    }
}

/// Sends one message, waiting while the producer's queue is full.
pub fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> anyhow::Result<()> {
    let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(p) = payload {
        record = record.payload(p);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((e, r)) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) => {
                producer.poll(Duration::from_millis(50));
                record = r;
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

/// The demo's configuration, as TOML (parsed and validated like any other).
pub fn demo_config_toml(bootstrap: &str, endpoint: &str, project: &str, dataset: &str, wal: &Path, tables: &[TableConfig]) -> String {
    let mut s = format!(
        r#"[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "landfall-demo"
topics = ["dms.sales"]
session_timeout = "6s"

[wal]
path = "{wal}"
retention = "1h"

[bigquery]
project = "{project}"
dataset = "{dataset}"
endpoint = "{endpoint}"
auth = {{ method = "none" }}
request_timeout = "30s"
retry_initial_delay = "50ms"
retry_max_delay = "2s"

[merge]
interval = "0s"
overlap = "5m"

[pipeline]
batch_max_wait = "20ms"

[observability]
summary_interval = "10s"
"#,
        wal = wal.display()
    );
    for t in tables {
        s.push_str(&format!(
            "\n[[tables]]\nsource = \"{}\"\nlog_table = \"{}\"\nfinal_table = \"{}\"\nprimary_key = {:?}\ncolumns = [\n",
            t.source, t.log_table, t.final_table, t.primary_key
        ));
        for c in &t.columns {
            // A validated config fills the encoding in everywhere; it is a key of BYTES columns only.
            let encoding = match c.bytes_encoding {
                Some(e) if c.ty == crate::decode::ColumnType::Bytes => format!(", bytes_encoding = \"{}\"", e.name()),
                _ => String::new(),
            };
            s.push_str(&format!("  {{ name = \"{}\", type = \"{}\"{encoding} }},\n", c.name, c.ty.sql_name()));
        }
        s.push_str("]\n");
        if let Some(order_by) = t.order_by {
            s.push_str(&format!("order_by = \"{}\"\n", order_by.name()));
        }
        if !t.keep_when_missing.is_empty() {
            s.push_str(&format!("keep_when_missing = {:?}\n", t.keep_when_missing));
        }
    }
    s
}

pub fn demo_config(bootstrap: &str, endpoint: &str, project: &str, dataset: &str, wal: &Path, topic: &str) -> anyhow::Result<Config> {
    demo_config_for(bootstrap, endpoint, project, dataset, wal, topic, &crate::harness::sim::tables())
}

/// [`demo_config`] for the given tables.
pub fn demo_config_for(
    bootstrap: &str,
    endpoint: &str,
    project: &str,
    dataset: &str,
    wal: &Path,
    topic: &str,
    tables: &[TableConfig],
) -> anyhow::Result<Config> {
    let text = demo_config_toml(bootstrap, endpoint, project, dataset, wal, tables).replace("dms.sales", topic);
    Ok(Config::from_toml(&text)?)
}

/// Waits until the group's committed offsets reach the topic's high watermarks.
pub async fn wait_caught_up(cfg: &Config, kafka: &LocalKafka, service: &Service, timeout: Duration) -> anyhow::Result<()> {
    let target = kafka.high_watermarks()?;
    let start = Instant::now();
    loop {
        if service.is_finished() {
            anyhow::bail!("the bridge stopped before catching up");
        }
        let committed = committed_offsets(cfg, &kafka.topic, kafka.partitions)?;
        if committed.iter().zip(&target).all(|(c, t)| c >= t) {
            return Ok(());
        }
        if start.elapsed() > timeout {
            anyhow::bail!("not caught up after {timeout:?}: committed {committed:?}, high watermarks {target:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts the service, waits until it has committed everything in the topic, stops it.
pub async fn run_until_caught_up(cfg: &Arc<Config>, kafka: &LocalKafka, timeout: Duration) -> anyhow::Result<Arc<Metrics>> {
    let service = Service::start(cfg.clone()).await?;
    let caught_up = wait_caught_up(cfg, kafka, &service, timeout).await;
    let metrics = service.metrics.clone();
    let stopped = service.stop().await?;
    caught_up?;
    anyhow::ensure!(stopped == Stopped::Drained, "bridge did not drain: {stopped:?}");
    Ok(metrics)
}

/// A merger outside the service (as `landfall merge` runs it).
pub fn merger(bq: &BigQuery, cfg: &Arc<Config>) -> Merger {
    Merger::one_shot(bq.clone(), cfg.clone())
}

/// Whether simulated streams carry DMS transaction details (`--transaction-details`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Details {
    On,
    Off,
    Both,
}

impl Details {
    /// [`DemoOptions::transaction_details`]: one scenario, or both (`None`).
    pub fn runs(self) -> Option<bool> {
        match self {
            Details::Both => None,
            Details::On => Some(true),
            Details::Off => Some(false),
        }
    }
}

pub struct DemoOptions {
    pub endpoint: String,
    pub project: String,
    pub dataset: String,
    pub seed: u64,
    pub load_rows: usize,
    pub changes: usize,
    pub duplicate_rate: f64,
    pub partitions: i32,
    /// Run the stream with DMS transaction details (`Some(true)`), without
    /// (`Some(false)`), or both one after the other (`None`).
    pub transaction_details: Option<bool>,
}

/// Runs the demo; returns whether every table and the dead letters matched.
pub async fn run(opts: DemoOptions) -> anyhow::Result<bool> {
    let mut scenarios = Vec::new();
    if opts.transaction_details != Some(true) {
        scenarios.push(("DMS defaults: no transaction details, ordered by timestamp", "plain", SimOptions::without_transaction_details()));
    }
    if opts.transaction_details != Some(false) {
        let details = SimOptions::ordered_by(PositionFormat::Postgresql);
        scenarios.push(("IncludeTransactionDetails=true, ordered by PostgreSQL LSN", "txd", details));
    }
    let mut ok = true;
    for (title, suffix, sim_opts) in scenarios {
        println!("\n=== {title} ===");
        ok &= run_scenario(&opts, &format!("{}_{suffix}", opts.dataset), sim_opts).await?;
    }
    println!(
        "\n{}",
        if ok {
            "RESULT: MATCH (every final table equals the source; every dead letter is one the stream was built with)"
        } else {
            "RESULT: MISMATCH"
        }
    );
    Ok(ok)
}

async fn run_scenario(opts: &DemoOptions, dataset: &str, sim_opts: SimOptions) -> anyhow::Result<bool> {
    let wal_dir = tempfile::Builder::new().prefix("landfall-demo-wal").tempdir()?;
    let kafka = LocalKafka::start("dms.sales", opts.partitions)?;
    let sim_opts = SimOptions { dead_letters: true, every_type: true, ..sim_opts };
    let tables = crate::harness::sim::tables_for(&sim_opts);
    let mut cfg =
        demo_config_for(&kafka.bootstrap_servers(), &opts.endpoint, &opts.project, dataset, wal_dir.path(), "dms.sales", &tables)?;
    // The source gains a column between the two runs (below).
    cfg.schema.evolve = crate::config::Evolve::AddColumns;
    let cfg = Arc::new(cfg);
    println!("landfall demo: mock Kafka at {}, BigQuery emulator at {}, dataset {dataset}", kafka.bootstrap_servers(), opts.endpoint);

    let mut sim = Simulator::with_options(opts.seed, sim_opts);
    let mut first = sim.full_load(opts.load_rows);
    first.extend(sim.changes(opts.changes / 2));
    let dup1 = sim.duplicate(&mut first, opts.duplicate_rate);
    // ALTER TABLE orders ADD COLUMN gift_message: DMS's add-column record
    // (IncludeControlDetails), then changes carrying the column. The config
    // does not name it: schema evolution adds it while the bridge runs.
    let (evolved_table, evolved_column) = ("sales.orders", "gift_message");
    let mut second = vec![sim.add_column_record(
        evolved_table,
        serde_json::json!({
            "order_id": {"type": "INT8"}, "customer_id": {"type": "INT8"}, "status": {"type": "WSTRING", "length": 20},
            "amount": {"type": "NUMERIC", "precision": 12, "scale": 2},
            evolved_column: {"type": "WSTRING", "length": 200},
        }),
    )];
    sim.add_column(evolved_table, evolved_column, crate::decode::ColumnType::String, |r| {
        crate::harness::sim::SourceValue::Text(crate::harness::sim::value::gen_text(r))
    });
    second.extend(sim.changes(opts.changes - opts.changes / 2));
    let dup2 = sim.duplicate(&mut second, opts.duplicate_rate);
    let republished = sim.republish(&mut second, 2);
    println!(
        "source: {} tables, {} changes ({} load rows per table), {} duplicate deliveries, {} re-published messages, {} messages built to be dead letters, seed {}",
        sim.tables().len(),
        sim.produced,
        opts.load_rows,
        dup1 + dup2,
        republished,
        sim.expected_dead_letters().len(),
        opts.seed
    );

    let t0 = Instant::now();
    kafka.produce(&first)?;
    let m1 = run_until_caught_up(&cfg, &kafka, Duration::from_secs(300)).await?;
    println!("run 1: {} messages consumed, landed and committed; bridge stopped (restart in the middle)", Metrics::get(&m1.consumed));
    kafka.produce(&second)?;
    let m2 = run_until_caught_up(&cfg, &kafka, Duration::from_secs(300)).await?;
    println!(
        "run 2: {} messages consumed, landed and committed; {} column added mid-stream ({evolved_table}.{evolved_column}, not in the config: schema evolution)",
        Metrics::get(&m2.consumed),
        Metrics::get(&m2.schema_columns_added)
    );
    let dups = Metrics::get(&m1.duplicates_absorbed) + Metrics::get(&m2.duplicates_absorbed);
    let landed = Metrics::get(&m1.landed) + Metrics::get(&m2.landed);
    let dead = Metrics::get(&m1.dead_lettered) + Metrics::get(&m2.dead_lettered);
    let plain = Metrics::get(&m1.changes_without_transaction_details) + Metrics::get(&m2.changes_without_transaction_details);
    println!("WAL: {landed} rows landed, {dups} duplicate deliveries absorbed before shipping, {dead} dead letters, {plain} changes without transaction details");

    // Merge with the same code `landfall merge` runs.
    let bq = BigQuery::connect(&cfg.bigquery).await?;
    for r in merger(&bq, &cfg).merge_all(false).await {
        let r = r?;
        println!("merged {}: {} rows changed", r.table, r.affected_rows);
    }
    // The oracle's own tables (with the added column), not landfall's config.
    let verdicts = verify::verify_all(&bq, sim.tables(), &sim.model).await.map_err(anyhow::Error::msg)?;
    let dead_letters =
        verify::verify_dead_letters(&bq, &cfg.bigquery.dead_letter_table, sim.expected_dead_letters()).await.map_err(anyhow::Error::msg)?;
    println!("elapsed: {:.1}s\n", t0.elapsed().as_secs_f64());
    print!("{}", verify::report(&verdicts));
    println!(
        "dead letters: {} expected, {} in the table, {} missing, {} unexpected: {}",
        dead_letters.expected,
        dead_letters.found,
        dead_letters.missing.len(),
        dead_letters.unexpected.len(),
        if dead_letters.matches() { "MATCH" } else { "MISMATCH" }
    );
    for m in dead_letters.missing.iter().chain(&dead_letters.unexpected) {
        println!("  {m}");
    }
    Ok(verdicts.iter().all(|v| v.matches()) && dead_letters.matches())
}

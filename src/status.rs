//! `landfall status`: where the bridge stands, per partition and table.
//!
//! With the service running and `observability.listen` set, it asks the
//! service (`GET /status`, [`crate::observe::Status`]). Otherwise it reads
//! what is durable: the WAL (pending rows, the oldest one's age, size, dead
//! letters) and, from Kafka, the group's committed offset and the high
//! watermark of every partition of the configured topics, and from
//! BigQuery's merge-state table each table's merge watermark, last merge and
//! whether a drop-table paused it (or why that could not be read). The WAL
//! is opened by one process at a time: a service that runs without a
//! reachable listener is reported as such, never waited for.

use std::time::Duration;

use rdkafka::consumer::Consumer;

use crate::config::Config;
use crate::observe::{PartitionStatus, Status, TableStatus};
use crate::wal::{now_ms, Wal, WalError};

/// Where a [`Report`] comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The running service's listener.
    Service(String),
    /// The WAL and Kafka, the service being stopped.
    Stopped,
}

/// What `landfall status` prints.
#[derive(Debug, Clone)]
pub struct Report {
    pub source: Source,
    pub status: Status,
}

/// Why `landfall status` could not say.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "the service holds the WAL at {path} and answers no /status (set observability.listen, or stop the service to read the WAL): {source}"
    )]
    Busy { path: String, source: WalError },
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("cannot read the group's offsets from Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    KafkaClient(#[from] crate::source::auth::ClientError),
    #[error("the status task failed: {0}")]
    Task(String),
}

/// Asks the running service, else reads the WAL and Kafka.
pub async fn read(cfg: &Config) -> Result<Report, StatusError> {
    if let Some(addr) = cfg.observability.listen.filter(|a| a.port() != 0) {
        // A wildcard listen address is reached on loopback.
        let host = if addr.ip().is_unspecified() { std::net::SocketAddr::new([127, 0, 0, 1].into(), addr.port()) } else { addr };
        let url = format!("http://{host}/status");
        let asked = async {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().ok()?;
            client.get(&url).send().await.ok()?.error_for_status().ok()?.json::<Status>().await.ok()
        };
        if let Some(status) = asked.await {
            return Ok(Report { source: Source::Service(url), status });
        }
    }
    let owned = cfg.clone();
    let mut report = match tokio::task::spawn_blocking(move || offline(&owned)).await {
        Ok(r) => r?,
        Err(e) => return Err(StatusError::Task(e.to_string())),
    };
    match tokio::time::timeout(MERGE_STATE_WAIT, merge_state(cfg)).await {
        Ok(Ok(tables)) => report.status.tables = tables,
        Ok(Err(why)) => report.status.merge_state_unavailable = Some(why),
        Err(_) => report.status.merge_state_unavailable = Some(format!("BigQuery did not answer within {MERGE_STATE_WAIT:?}")),
    }
    Ok(report)
}

/// How long a stopped service's status waits for BigQuery's merge state.
const MERGE_STATE_WAIT: Duration = Duration::from_secs(20);

/// Each configured table's merge state as BigQuery's state table holds it:
/// the watermark, when it was last written (the last merge), and whether a
/// drop-table not resumed from pauses the merge.
async fn merge_state(cfg: &Config) -> Result<Vec<TableStatus>, String> {
    if cfg.sink.kind == crate::config::SinkKind::Discard {
        return Ok(Vec::new());
    }
    let bq = crate::sink::BigQuery::connect(&cfg.bigquery).await.map_err(|e| e.to_string())?;
    let state = crate::decode::ident::Quoted::table_path(&bq.project, &bq.dataset, &cfg.bigquery.state_table).map_err(|e| e.to_string())?;
    let sql = format!(
        "SELECT final_table, UNIX_MICROS(watermark), UNIX_MILLIS(updated_at), dropped_order, resumed_order FROM {state} ORDER BY final_table"
    );
    let resp = bq.query(&sql).await.map_err(|e| format!("reading {}: {}", cfg.bigquery.state_table, crate::sink::client::redact(&e)))?;
    let mut tables = Vec::new();
    for row in resp.rows.as_deref().unwrap_or_default() {
        let cell = |i| crate::sink::client::cell(row, i);
        let Some(table) = cell(0).filter(|t| cfg.tables.iter().any(|c| &c.final_table == t)) else { continue };
        let (dropped, resumed) = (cell(3), cell(4));
        tables.push(TableStatus {
            table,
            merges: 0,
            merge_failures: 0,
            merged_rows: 0,
            last_merge_seconds: 0.0,
            last_merge_success_ms: cell(2).and_then(|v| v.parse().ok()),
            merge_watermark_micros: cell(1).and_then(|v| v.parse().ok()),
            paused_by_drop: dropped.is_some_and(|d| resumed.is_none_or(|r| r < d)),
        });
    }
    Ok(tables)
}

/// The durable facts, with the service stopped.
fn offline(cfg: &Config) -> Result<Report, StatusError> {
    let wal = Wal::open(&cfg.wal.path).map_err(|source| {
        if source.is_locked() {
            StatusError::Busy { path: cfg.wal.path.display().to_string(), source }
        } else {
            StatusError::Wal(source)
        }
    })?;
    let now = now_ms();
    let dead_letters = wal.dead_letters().filter(|d| d.is_ok()).count() as u64;
    let consumer = crate::source::auth::base_consumer(&cfg.kafka, Default::default())?;
    let mut partitions = Vec::new();
    for topic in &cfg.kafka.topics {
        let meta = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let count = meta.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len() as i32);
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..count {
            tpl.add_partition(topic, p);
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
        for p in 0..count {
            let c = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(rdkafka::Offset::Offset(o)) => Some(o),
                _ => None,
            };
            let hw = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).ok().map(|(_, hi)| hi);
            partitions.push(PartitionStatus {
                topic: topic.clone(),
                partition: p,
                consumed: None,
                committed: c,
                high_watermark: hw,
                lag: hw.map(|hw| crate::metrics::lag(hw, c)),
            });
        }
    }
    let status = Status {
        ready: false,
        not_ready_because: Some("the service is not running".into()),
        partitions,
        tables: Vec::new(),
        wal_pending_rows: wal.pending_count(),
        wal_oldest_pending_age_seconds: wal.oldest_pending_ms().map(|t| now.saturating_sub(t) as f64 / 1000.0),
        wal_bytes: wal.size_on_disk().ok(),
        dead_letters,
        landed_rows: 0,
        merge_state_unavailable: None,
    };
    Ok(Report { source: Source::Stopped, status })
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.status;
        let opt = |v: Option<i64>| v.map_or("-".to_owned(), |v| v.to_string());
        match &self.source {
            Source::Service(url) => {
                writeln!(f, "landfall status (asked the running service: {url})")?;
                match &s.not_ready_because {
                    None => writeln!(f, "ready")?,
                    Some(why) => writeln!(f, "NOT READY: {why}")?,
                }
            }
            Source::Stopped => writeln!(f, "landfall status (the service is not running: read from the WAL and Kafka)")?,
        }
        writeln!(f, "\n{:<32} {:>12} {:>12} {:>15} {:>10}", "partition", "consumed", "committed", "high watermark", "lag")?;
        for p in &s.partitions {
            let name = format!("{}/{}", p.topic, p.partition);
            writeln!(f, "{name:<32} {:>12} {:>12} {:>15} {:>10}", opt(p.consumed), opt(p.committed), opt(p.high_watermark), opt(p.lag))?;
        }
        if !s.tables.is_empty() {
            // A stopped service's counters are gone: only the state table's facts.
            let running = matches!(self.source, Source::Service(_));
            writeln!(
                f,
                "\n{:<32} {:>8} {:>9} {:>12} {:>14}  {:<14} watermark",
                "table", "merges", "failures", "merged rows", "last merge (s)", "last success"
            )?;
            for t in &s.tables {
                let last = match t.last_merge_success_ms {
                    Some(ms) => format!("{:.0} s ago", (now_ms().saturating_sub(ms)) as f64 / 1000.0),
                    None => "never".into(),
                };
                let mark = t.merge_watermark_micros.map_or("-".to_owned(), crate::decode::value::format_timestamp_micros);
                let paused = if t.paused_by_drop { "  PAUSED (landfall ddl resume)" } else { "" };
                let count = |v: u64| if running { v.to_string() } else { "-".into() };
                let took = if running { format!("{:.1}", t.last_merge_seconds) } else { "-".into() };
                writeln!(
                    f,
                    "{:<32} {:>8} {:>9} {:>12} {:>14}  {last:<14} {mark}{paused}",
                    t.table,
                    count(t.merges),
                    count(t.merge_failures),
                    count(t.merged_rows),
                    took
                )?;
            }
        }
        if let Some(why) = &s.merge_state_unavailable {
            writeln!(f, "\nmerge state: unavailable ({why})")?;
        }
        let oldest = s.wal_oldest_pending_age_seconds.map_or("none".to_owned(), |a| format!("{a:.1} s"));
        let bytes = s.wal_bytes.map_or("?".to_owned(), |b| b.to_string());
        writeln!(
            f,
            "\nWAL: {} pending row(s), oldest pending {oldest}, {bytes} bytes; dead letters: {}",
            s.wal_pending_rows, s.dead_letters
        )?;
        Ok(())
    }
}

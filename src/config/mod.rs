//! Configuration: one TOML file, unknown keys rejected, defaults named below.
//!
//! `Config::load` reads and parses the file, expands `${VAR}` references to
//! environment variables (so secrets need not be written into the file), and
//! runs [`Config::validate`], whose errors name the offending key.
//!
//! Secrets (librdkafka properties whose name mentions a password, secret or
//! key) are never printed: [`Config`]'s `Debug` output redacts them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::decode::ident;
use crate::decode::{BytesEncoding, ColumnType, OrderBy};

mod kafka;
pub use kafka::{KafkaAuth, KafkaConfig};

/// A configuration error, naming the key that is wrong and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub wal: WalConfig,
    pub bigquery: BigQueryConfig,
    #[serde(default)]
    pub sink: SinkConfig,
    #[serde(default)]
    pub tables: Vec<TableConfig>,
    #[serde(default)]
    pub merge: MergeConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub observability: ObservabilityConfig,
    #[serde(default)]
    pub schema: SchemaConfig,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalConfig {
    /// Directory of the sled database. Must be on durable local storage.
    pub path: PathBuf,
    /// How long landed records are kept for deduplication of redeliveries.
    /// Must exceed the time within which a change can be redelivered (see
    /// docs/design.md, "WAL retention").
    #[serde(default = "default_wal_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// How often landed records older than `retention` are pruned.
    #[serde(default = "default_prune_interval", with = "humantime_serde")]
    pub prune_interval: Duration,
    /// Upper bound of sled's page cache, in bytes (the bulk of the bridge's memory).
    #[serde(default = "default_wal_cache_bytes")]
    pub cache_bytes: u64,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BigQueryConfig {
    pub project: String,
    pub dataset: String,
    /// Dataset location (e.g. "EU", "us-east1"), used when creating the dataset.
    #[serde(default = "default_location")]
    pub location: String,
    /// Base URL of the BigQuery v2 REST API, for an emulator
    /// (e.g. `http://127.0.0.1:9050/bigquery/v2`). Unset: Google's endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub auth: Auth,
    /// Table that receives dead letters (messages that cannot become rows).
    #[serde(default = "default_dead_letter_table")]
    pub dead_letter_table: String,
    /// Table that holds the merge watermark of every final table.
    #[serde(default = "default_state_table")]
    pub state_table: String,
    /// Rows per insertAll request (BigQuery recommends 500).
    #[serde(default = "default_max_rows")]
    pub max_rows_per_request: usize,
    /// Bytes per insertAll request; BigQuery's hard limit is 10 MB.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// gzip level of insertAll request bodies: 1 fastest .. 9 smallest
    /// (0 keeps the gzip framing but does not compress).
    #[serde(default = "default_gzip_level")]
    pub gzip_level: u32,
    /// insertAll requests in flight at once, over all tables, at most (the
    /// adaptive limit's ceiling; with `adaptive_concurrency = false`, the
    /// fixed number).
    #[serde(default = "default_max_inflight_requests")]
    pub max_inflight_requests: usize,
    /// Whether the number of requests in flight follows latency and
    /// backpressure (src/sink/concurrency.rs); false: always the maximum.
    #[serde(default = "default_true")]
    pub adaptive_concurrency: bool,
    /// Timeout of one HTTP request.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// First retry delay of a transient error; doubles up to `retry_max_delay`.
    #[serde(default = "default_retry_initial", with = "humantime_serde")]
    pub retry_initial_delay: Duration,
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max_delay: Duration,
    /// Partition expiration of log tables (their retention). Must exceed the
    /// merge interval plus overlap by a wide margin.
    #[serde(default = "default_log_expiration", with = "humantime_serde")]
    pub log_partition_expiration: Duration,
    /// For how long after a table's schema changed (landfall added columns,
    /// or found the table modified that recently) a row refused with "no such
    /// field" is re-sent instead of dead-lettered: BigQuery's streaming path
    /// can take minutes to see new columns. `0s` dead-letters at once.
    #[serde(default = "default_schema_propagation_wait", with = "humantime_serde")]
    pub schema_propagation_wait: Duration,
}

/// Where rows go once they are in the WAL.
#[derive(Clone, Copy, Debug, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SinkKind {
    /// `tabledata.insertAll` into the `[bigquery]` dataset (the service).
    #[default]
    Bigquery,
    /// Accept and drop every row; BigQuery is never contacted and no merge
    /// runs. For measuring the bridge itself (see `src/sink/discard.rs`):
    /// offsets are committed as if the rows had landed.
    Discard,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    #[serde(default)]
    pub kind: SinkKind,
}

/// How landfall authenticates to BigQuery.
#[derive(Clone, Debug, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, tag = "method", rename_all = "kebab-case")]
pub enum Auth {
    /// A service-account JSON key file. It must not be readable by group
    /// or others (as ssh refuses such private keys), unless
    /// `allow_readable_key_file = true`.
    ServiceAccountKey {
        key_file: PathBuf,
        #[serde(default)]
        allow_readable_key_file: bool,
    },
    /// Application default credentials (GOOGLE_APPLICATION_CREDENTIALS,
    /// gcloud user credentials, or the metadata server).
    #[default]
    ApplicationDefault,
    /// No credentials: only allowed together with `bigquery.endpoint` (emulators).
    None,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// `schema.table` as DMS names it in `metadata.schema-name` / `table-name`.
    pub source: String,
    /// The CDC log table every change is appended to.
    pub log_table: String,
    /// The table the MERGE keeps equal to the source table.
    pub final_table: String,
    pub primary_key: Vec<String>,
    /// The source columns, in order, with their BigQuery types.
    pub columns: Vec<ColumnConfig>,
    /// What orders this table's changes; unset: `pipeline.order_by`.
    #[serde(default)]
    pub order_by: Option<OrderBy>,
    /// Columns for which a value missing from an update keeps the final
    /// table's current value instead of writing NULL (DMS leaves unchanged
    /// LOB columns out in limited LOB mode, PostgreSQL leaves out unchanged
    /// TOAST columns). Inserts and loads are full images: there a missing
    /// column is NULL.
    #[serde(default)]
    pub keep_when_missing: Vec<String>,
}

impl TableConfig {
    /// A route with the defaults for everything optional.
    pub fn new(source: &str, log_table: &str, final_table: &str, primary_key: &[&str], columns: Vec<ColumnConfig>) -> TableConfig {
        TableConfig {
            source: source.into(),
            log_table: log_table.into(),
            final_table: final_table.into(),
            primary_key: primary_key.iter().map(|k| (*k).to_owned()).collect(),
            columns,
            order_by: None,
            keep_when_missing: Vec::new(),
        }
    }

    /// The effective ordering ([`Config::from_toml`] fills in the global default).
    pub fn order_by(&self) -> OrderBy {
        self.order_by.unwrap_or_default()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
    /// For BYTES columns: how values are written; unset: `pipeline.bytes_encoding`.
    #[serde(default)]
    pub bytes_encoding: Option<BytesEncoding>,
}

impl ColumnConfig {
    pub fn new(name: &str, ty: ColumnType) -> ColumnConfig {
        ColumnConfig { name: name.into(), ty, bytes_encoding: None }
    }

    /// The effective encoding of a BYTES column.
    pub fn bytes_encoding(&self) -> BytesEncoding {
        self.bytes_encoding.unwrap_or_default()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeConfig {
    /// How often the service merges every table. `0s` disables the timer
    /// (merge on demand with `landfall merge`).
    #[serde(default = "default_merge_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How far before the previous watermark a merge reads again, to cover
    /// rows that became visible late. Must exceed `bigquery.request_timeout`
    /// plus the clock skew between the landfall processes that stamp rows
    /// (docs/design.md, "Merge watermark", invariant 10).
    #[serde(default = "default_merge_overlap", with = "humantime_serde")]
    pub overlap: Duration,
}

impl Default for MergeConfig {
    fn default() -> Self {
        Self { interval: default_merge_interval(), overlap: default_merge_overlap() }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Messages per batch: one WAL flush per batch.
    #[serde(default = "default_batch_messages")]
    pub batch_max_messages: usize,
    /// How long a batch waits to fill up.
    #[serde(default = "default_batch_wait", with = "humantime_serde")]
    pub batch_max_wait: Duration,
    /// Batches between the WAL and BigQuery at once. A batch is done only
    /// when its slowest insertAll is, so with 150 ms between clouds fewer
    /// (4, then 8) left the request limit unused (docs/performance.md,
    /// "f/e"). Memory stays bounded by `max_inflight_bytes`.
    #[serde(default = "default_inflight_batches")]
    pub max_inflight_batches: usize,
    /// Message bytes per batch: a batch is closed once its messages' values
    /// add up to this much (a single larger message is a batch of its own).
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// Message bytes between Kafka and the end of their ship task: the batch
    /// being read plus every batch in flight. Nothing more is read from Kafka
    /// while they add up to this much, so it is exceeded by at most one
    /// message (docs/performance.md, "Memory").
    #[serde(default = "default_max_inflight_bytes")]
    pub max_inflight_bytes: usize,
    /// Messages larger than this are dead-lettered (BigQuery's row limit is 10 MB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// A change for a table with no `[[tables]]` entry is dead-lettered when
    /// true, acknowledged and counted as skipped when false.
    #[serde(default = "default_true")]
    pub strict_routing: bool,
    /// How long a shutdown (SIGTERM, SIGINT) waits for in-flight changes to
    /// land and be committed before giving up on them (they stay pending in
    /// the WAL and are re-shipped on the next start).
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// The top-level field DMS puts the before image under
    /// (`BeforeImageSettings.FieldName` of the DMS endpoint).
    #[serde(default = "default_before_image_field")]
    pub before_image_field: String,
    /// What orders changes (docs/design.md, "Ordering"): `timestamp` (the
    /// default; works with and without DMS transaction details), or the
    /// source engine's log position with `IncludeTransactionDetails=true`:
    /// `mysql-binlog`, `postgresql-lsn`, `sqlserver-lsn`, `oracle-scn`.
    /// Each `[[tables]]` entry may override it.
    #[serde(default)]
    pub order_by: OrderBy,
    /// How BYTES values are written in messages: `hex` (DMS's default, with
    /// or without the `0x` prefix) or `base64`. Each column may override it.
    #[serde(default)]
    pub bytes_encoding: BytesEncoding,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            batch_max_messages: default_batch_messages(),
            batch_max_wait: default_batch_wait(),
            max_inflight_batches: default_inflight_batches(),
            batch_max_bytes: default_batch_max_bytes(),
            max_inflight_bytes: default_max_inflight_bytes(),
            max_message_bytes: default_max_message_bytes(),
            strict_routing: true,
            before_image_field: default_before_image_field(),
            shutdown_timeout: default_shutdown_timeout(),
            order_by: OrderBy::default(),
            bytes_encoding: BytesEncoding::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// Period of the summary log line with every counter.
    #[serde(default = "default_summary_interval", with = "humantime_serde")]
    pub summary_interval: Duration,
    /// Address of the HTTP listener serving `/metrics` (Prometheus),
    /// `/health/live`, `/health/ready` and `/status`; none: no listener.
    /// Port 0 picks a free port (logged at start).
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
    /// `/health/ready` answers 503 when there is work (messages behind,
    /// rows pending or in flight) and no commit point moved forward for this long.
    #[serde(default = "default_ready_within", with = "humantime_serde")]
    pub ready_within: Duration,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        Self { summary_interval: default_summary_interval(), listen: None, ready_within: default_ready_within() }
    }
}

/// Schema evolution (`[schema]`; docs/design.md, "Schema evolution").
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    /// What a column that is not configured does: `off` dead-letters its
    /// message (naming the column); `add-columns` adds it to the final and
    /// log tables and lands the message once BigQuery has the column.
    #[serde(default)]
    pub evolve: Evolve,
    /// The type of an added column when no `add-column` control record
    /// defined it (`IncludeControlDetails` off, or the record came later).
    #[serde(default = "default_evolve_type")]
    pub default_type: ColumnType,
}

impl Default for SchemaConfig {
    fn default() -> Self {
        SchemaConfig { evolve: Evolve::default(), default_type: default_evolve_type() }
    }
}

/// `schema.evolve`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Evolve {
    #[default]
    Off,
    AddColumns,
}

fn default_evolve_type() -> ColumnType {
    ColumnType::String
}

fn default_ready_within() -> Duration {
    Duration::from_secs(300)
}

/// The WAL's page cache unless `wal.cache_bytes` says otherwise. sled's
/// resident memory runs several times its cache setting (measured: ~95 MB at
/// 8 MiB, ~155 MB at 16 MiB, ~270 MB at 64 MiB after 1M changes), and a
/// larger cache buys less than it costs (16 -> 64 MiB: about a fifth faster).
/// 8 MiB keeps the bridge within 256 MB over a 1M-message backlog.
pub const DEFAULT_WAL_CACHE_BYTES: u64 = 8 * 1024 * 1024;

fn default_wal_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_prune_interval() -> Duration {
    Duration::from_secs(600)
}
fn default_wal_cache_bytes() -> u64 {
    DEFAULT_WAL_CACHE_BYTES
}
fn default_location() -> String {
    "US".into()
}
fn default_dead_letter_table() -> String {
    "landfall_dead_letters".into()
}
fn default_state_table() -> String {
    "landfall_merge_state".into()
}
fn default_max_rows() -> usize {
    500
}
fn default_max_request_bytes() -> usize {
    9_000_000
}
/// Level 2 (zlib-rs's fast deflate): 0.16-0.19x of the plain JSON, against
/// 0.15-0.17x at 6 for about a third of the CPU; level 1 (deflate_quick)
/// gave 0.24x (docs/performance.md, "e/b").
fn default_gzip_level() -> u32 {
    2
}
/// The adaptive limit's ceiling. A batch of 2,000 changes over several
/// tables is several requests of a few hundred rows, and 8 batches are in
/// flight: 16 requests of ~330 rows carried only ~35,000 rows/s at 150 ms of
/// cross-cloud latency, 64 lets every request of those batches be in flight
/// at once (docs/performance.md, "f/e"). Memory does not grow with it: rows
/// in flight stay bounded by `pipeline.max_inflight_bytes`.
fn default_max_inflight_requests() -> usize {
    64
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_schema_propagation_wait() -> Duration {
    Duration::from_secs(600)
}
fn default_retry_initial() -> Duration {
    Duration::from_millis(200)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(30)
}
fn default_log_expiration() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
fn default_merge_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_merge_overlap() -> Duration {
    Duration::from_secs(600)
}
fn default_batch_messages() -> usize {
    2000
}
fn default_batch_wait() -> Duration {
    Duration::from_millis(50)
}
fn default_inflight_batches() -> usize {
    16
}
/// 8 MiB: about one insertAll request's worth of rows per batch.
pub const DEFAULT_BATCH_MAX_BYTES: usize = 8 * 1024 * 1024;
/// 32 MiB: four full batches of `batch_max_bytes`; with messages of a few
/// hundred bytes the message bound (`max_inflight_batches` x
/// `batch_max_messages`) binds first.
pub const DEFAULT_MAX_INFLIGHT_BYTES: usize = 32 * 1024 * 1024;
fn default_batch_max_bytes() -> usize {
    DEFAULT_BATCH_MAX_BYTES
}
fn default_max_inflight_bytes() -> usize {
    DEFAULT_MAX_INFLIGHT_BYTES
}
fn default_max_message_bytes() -> usize {
    5_000_000
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_before_image_field() -> String {
    "before-image".into()
}
fn default_true() -> bool {
    true
}
fn default_summary_interval() -> Duration {
    Duration::from_secs(30)
}

impl Config {
    /// Reads, expands `${VAR}` and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.to_owned(), message },
            other => other,
        })
    }

    /// Parses and validates config text (environment references expanded).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: PathBuf::from("<inline>"), message: e.to_string() })?;
        config.expand_env()?;
        config.validate()?;
        config.resolve_defaults();
        Ok(config)
    }

    /// Fills per-table and per-column settings left unset with the global ones.
    fn resolve_defaults(&mut self) {
        let (order_by, bytes_encoding) = (self.pipeline.order_by, self.pipeline.bytes_encoding);
        for t in &mut self.tables {
            t.order_by.get_or_insert(order_by);
            for c in &mut t.columns {
                c.bytes_encoding.get_or_insert(bytes_encoding);
            }
        }
    }

    fn expand_env(&mut self) -> Result<(), ConfigError> {
        for (name, value) in self.kafka.properties.iter_mut() {
            *value = expand_env_refs(value).map_err(|m| invalid(format!("kafka.properties.\"{name}\""), m))?;
        }
        if let Auth::ServiceAccountKey { key_file, .. } = &mut self.bigquery.auth {
            let expanded = expand_env_refs(&key_file.to_string_lossy()).map_err(|m| invalid("bigquery.auth.key_file", m))?;
            *key_file = PathBuf::from(expanded);
        }
        Ok(())
    }

    /// Cross-field checks. Every error names the key to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        if self.wal.retention < Duration::from_secs(60) {
            return Err(invalid("wal.retention", "must be at least 1m (it bounds redelivery deduplication)"));
        }
        let bq = &self.bigquery;
        ident::validate_project(&bq.project).map_err(|e| invalid("bigquery.project", e.to_string()))?;
        ident::validate_dataset(&bq.dataset).map_err(|e| invalid("bigquery.dataset", e.to_string()))?;
        ident::validate_table(&bq.dead_letter_table).map_err(|e| invalid("bigquery.dead_letter_table", e.to_string()))?;
        ident::validate_table(&bq.state_table).map_err(|e| invalid("bigquery.state_table", e.to_string()))?;
        if bq.auth == Auth::None && bq.endpoint.is_none() {
            return Err(invalid(
                "bigquery.auth",
                "method \"none\" is only allowed with bigquery.endpoint (an emulator); use \"application-default\" or \"service-account-key\"",
            ));
        }
        if let Some(endpoint) = &bq.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(invalid("bigquery.endpoint", "must be an http:// or https:// URL"));
            }
        }
        if bq.max_rows_per_request == 0 || bq.max_rows_per_request > 50_000 {
            return Err(invalid("bigquery.max_rows_per_request", "must be between 1 and 50000 (500 recommended)"));
        }
        if bq.max_request_bytes < 1024 || bq.max_request_bytes > 10_000_000 {
            return Err(invalid("bigquery.max_request_bytes", "must be between 1 KiB and 10 MB (BigQuery's limit)"));
        }
        if bq.gzip_level > 9 {
            return Err(invalid("bigquery.gzip_level", "must be between 0 (store only) and 9"));
        }
        if bq.max_inflight_requests == 0 {
            return Err(invalid("bigquery.max_inflight_requests", "must be at least 1"));
        }
        if bq.retry_initial_delay.is_zero() || bq.retry_max_delay < bq.retry_initial_delay {
            return Err(invalid("bigquery.retry_max_delay", "must be >= retry_initial_delay > 0"));
        }
        if self.merge.overlap <= bq.request_timeout {
            return Err(invalid(
                "merge.overlap",
                format!(
                    "must exceed bigquery.request_timeout ({}) so that no row becomes visible behind the watermark",
                    humantime::format_duration(bq.request_timeout)
                ),
            ));
        }
        if bq.log_partition_expiration <= self.merge.interval + self.merge.overlap {
            return Err(invalid("bigquery.log_partition_expiration", "must exceed merge.interval + merge.overlap"));
        }
        if self.observability.ready_within.is_zero() {
            return Err(invalid("observability.ready_within", "must be greater than 0"));
        }
        if self.observability.summary_interval.is_zero() {
            return Err(invalid("observability.summary_interval", "must be greater than 0"));
        }
        if self.wal.prune_interval.is_zero() {
            return Err(invalid("wal.prune_interval", "must be greater than 0"));
        }
        let p = &self.pipeline;
        if p.batch_max_messages == 0 {
            return Err(invalid("pipeline.batch_max_messages", "must be at least 1"));
        }
        if p.max_inflight_batches == 0 {
            return Err(invalid("pipeline.max_inflight_batches", "must be at least 1"));
        }
        if p.max_message_bytes == 0 || p.max_message_bytes > 10_000_000 {
            return Err(invalid("pipeline.max_message_bytes", "must be between 1 and 10 MB (BigQuery's row limit)"));
        }
        if p.batch_max_bytes == 0 {
            return Err(invalid("pipeline.batch_max_bytes", "must be at least 1 (a larger message is a batch of its own)"));
        }
        if p.max_inflight_bytes < p.batch_max_bytes {
            return Err(invalid(
                "pipeline.max_inflight_bytes",
                format!("must be at least pipeline.batch_max_bytes ({}), or no batch could fill up", p.batch_max_bytes),
            ));
        }
        self.validate_tables()
    }

    fn validate_tables(&self) -> Result<(), ConfigError> {
        let mut sources = std::collections::HashSet::new();
        let mut tables = std::collections::HashSet::new();
        for reserved in [&self.bigquery.dead_letter_table, &self.bigquery.state_table] {
            tables.insert(reserved.clone());
        }
        for (i, t) in self.tables.iter().enumerate() {
            let key = |field: &str| format!("tables[{i}].{field}");
            let Some((schema, table)) = t.source.split_once('.') else {
                return Err(invalid(key("source"), "must be `schema.table`"));
            };
            if schema.is_empty() || table.is_empty() {
                return Err(invalid(key("source"), "must be `schema.table`"));
            }
            if !sources.insert(t.source.clone()) {
                return Err(invalid(key("source"), format!("`{}` is routed twice", t.source)));
            }
            let tombstones = crate::table::tombstone_table_name(&t.final_table);
            for (field, name) in [("log_table", &t.log_table), ("final_table", &t.final_table), ("final_table", &tombstones)] {
                ident::validate_table(name).map_err(|e| invalid(key(field), e.to_string()))?;
                if !tables.insert(name.clone()) {
                    return Err(invalid(
                        key(field),
                        format!("table `{name}` is used twice (landfall also uses `<final_table>__tombstones`)"),
                    ));
                }
            }
            if t.columns.is_empty() {
                return Err(invalid(key("columns"), "list the source table's columns"));
            }
            let mut names = std::collections::HashSet::new();
            for (j, c) in t.columns.iter().enumerate() {
                ident::validate_column(&c.name).map_err(|e| invalid(format!("tables[{i}].columns[{j}].name"), e.to_string()))?;
                if !names.insert(c.name.to_ascii_lowercase()) {
                    return Err(invalid(format!("tables[{i}].columns[{j}].name"), format!("column `{}` listed twice", c.name)));
                }
            }
            if t.primary_key.is_empty() {
                return Err(invalid(key("primary_key"), "list at least one primary-key column"));
            }
            for pk in &t.primary_key {
                if !t.columns.iter().any(|c| &c.name == pk) {
                    return Err(invalid(key("primary_key"), format!("`{pk}` is not one of the table's columns")));
                }
            }
            for (j, c) in t.columns.iter().enumerate() {
                if c.bytes_encoding.is_some() && c.ty != ColumnType::Bytes {
                    return Err(invalid(format!("tables[{i}].columns[{j}].bytes_encoding"), "applies to BYTES columns only"));
                }
            }
            if t.keep_when_missing.len() > crate::table::MAX_KEEP_WHEN_MISSING {
                return Err(invalid(
                    key("keep_when_missing"),
                    format!("at most {} columns (a log row records them as bits of one INT64)", crate::table::MAX_KEEP_WHEN_MISSING),
                ));
            }
            for (j, keep) in t.keep_when_missing.iter().enumerate() {
                if t.keep_when_missing[..j].contains(keep) {
                    return Err(invalid(key("keep_when_missing"), format!("`{keep}` is named twice")));
                }
                if !t.columns.iter().any(|c| &c.name == keep) {
                    return Err(invalid(key("keep_when_missing"), format!("`{keep}` is not one of the table's columns")));
                }
                if t.primary_key.contains(keep) {
                    return Err(invalid(key("keep_when_missing"), format!("`{keep}` is a primary-key column (every change carries it)")));
                }
            }
        }
        Ok(())
    }

    /// The route of a source table, if configured.
    pub fn route(&self, schema: &str, table: &str) -> Option<&TableConfig> {
        self.tables.iter().find(|t| t.source.split_once('.').is_some_and(|(s, n)| s == schema && n == table))
    }
}

/// Expands references in a config value: `${NAME}` is the environment
/// variable `NAME`; `${file:PATH}` is the content of the file at `PATH`
/// (itself expanded for `${NAME}`, e.g. `${file:${CREDENTIALS_DIRECTORY}/kafka-password}`
/// for a systemd credential), with surrounding whitespace trimmed. `$${` is
/// a literal `${`. Errors name the variable or the file, never a value.
pub fn expand_env_refs(value: &str) -> Result<String, String> {
    expand_refs(value, true)
}

fn expand_refs(value: &str, files: bool) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(pos) = rest.find("${") {
        if pos > 0 && rest.as_bytes()[pos - 1] == b'$' {
            out.push_str(&rest[..pos - 1]);
            out.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        // The matching `}`: a file path may hold `${NAME}` references.
        let mut depth = 0usize;
        let end = after
            .char_indices()
            .find(|&(i, c)| match c {
                '{' if after[..i].ends_with('$') => {
                    depth += 1;
                    false
                }
                '}' if depth > 0 => {
                    depth -= 1;
                    false
                }
                '}' => true,
                _ => false,
            })
            .map(|(i, _)| i)
            .ok_or_else(|| "unterminated `${` reference".to_string())?;
        let inner = &after[..end];
        match inner.strip_prefix("file:") {
            Some(_) if !files => return Err("`${file:...}` cannot appear inside a file path".into()),
            Some(path) => out.push_str(&read_secret_file(&expand_refs(path, false)?)?),
            None => {
                let var = std::env::var(inner).map_err(|_| format!("environment variable `{inner}` is not set"))?;
                out.push_str(&var);
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The trimmed content of a secret file (`${file:PATH}`); an error names
/// the path and what went wrong, never any of the content.
fn read_secret_file(path: &str) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read secret file `{path}`: {}", e.kind()))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("secret file `{path}` is not UTF-8 text"))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("secret file `{path}` is empty"));
    }
    Ok(trimmed.to_owned())
}

/// True for librdkafka property names whose values are secrets.
pub fn is_secret_property(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "secret", "key", "token", "jaas"].iter().any(|s| n.contains(s))
}

pub(crate) struct Redacted<'a>(&'a BTreeMap<String, String>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in self.0 {
            if is_secret_property(k) {
                m.entry(k, &"<redacted>");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("kafka", &self.kafka)
            .field("wal", &self.wal.path)
            .field("bigquery.project", &self.bigquery.project)
            .field("bigquery.dataset", &self.bigquery.dataset)
            .field("bigquery.endpoint", &self.bigquery.endpoint)
            .field("bigquery.auth", &self.bigquery.auth)
            .field("sink", &self.sink.kind)
            .field("tables", &self.tables.iter().map(|t| &t.source).collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = r#"
[kafka]
bootstrap_servers = "localhost:9092"
group_id = "landfall"
topics = ["dms"]
[kafka.properties]
"security.protocol" = "SASL_SSL"
"sasl.mechanism" = "SCRAM-SHA-512"
"sasl.username" = "landfall"
"sasl.password" = "${LANDFALL_TEST_SECRET}"

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
"#;

    #[test]
    fn example_parses_and_expands_env_secrets() {
        // Tests run in parallel in one process: every test that sets this
        // variable sets the same value.
        std::env::set_var("LANDFALL_TEST_SECRET", "hunter2");
        let c = Config::from_toml(EXAMPLE).unwrap();
        assert_eq!(c.kafka.properties["sasl.password"], "hunter2");
        assert_eq!(c.bigquery.max_rows_per_request, 500);
        assert_eq!(c.route("sales", "customers").unwrap().final_table, "customers");
        assert!(c.route("sales", "orders").is_none());
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "secret leaked into Debug: {debug}");
    }

    #[test]
    fn sink_kind_defaults_to_bigquery_and_discard_is_selectable() {
        std::env::set_var("LANDFALL_TEST_SECRET", "hunter2");
        assert_eq!(Config::from_toml(EXAMPLE).unwrap().sink.kind, SinkKind::Bigquery);
        let discard = format!("{EXAMPLE}\n[sink]\nkind = \"discard\"\n");
        assert_eq!(Config::from_toml(&discard).unwrap().sink.kind, SinkKind::Discard);
        let err = Config::from_toml(&format!("{EXAMPLE}\n[sink]\nkind = \"blackhole\"\n")).unwrap_err().to_string();
        assert!(err.contains("blackhole") && err.contains("discard"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let text = EXAMPLE.replace("[wal]", "[wal]\nretension = \"1d\"");
        std::env::set_var("LANDFALL_TEST_SECRET", "hunter2");
        let err = Config::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("retension"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        std::env::set_var("LANDFALL_TEST_SECRET", "hunter2");
        let cases = [
            (EXAMPLE.replace("endpoint = \"http://127.0.0.1:9050/bigquery/v2\"\n", ""), "bigquery.auth"),
            (EXAMPLE.replace("primary_key = [\"id\"]", "primary_key = [\"nope\"]"), "tables[0].primary_key"),
            (EXAMPLE.replace("\"security.protocol\"", "\"enable.auto.commit\""), "enable.auto.commit"),
            (EXAMPLE.replace("log_table = \"customers_log\"", "log_table = \"bad name; drop\""), "tables[0].log_table"),
            (EXAMPLE.replace("name = \"name\"", "name = \"id\""), "tables[0].columns[1].name"),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(key), "expected `{key}` in: {err}");
        }
    }

    #[test]
    fn byte_bounds_default_and_are_validated() {
        std::env::set_var("LANDFALL_TEST_SECRET", "hunter2");
        let c = Config::from_toml(EXAMPLE).unwrap();
        assert_eq!((c.pipeline.batch_max_bytes, c.pipeline.max_inflight_bytes), (DEFAULT_BATCH_MAX_BYTES, DEFAULT_MAX_INFLIGHT_BYTES));
        let with = |p: &str| format!("{EXAMPLE}\n[pipeline]\n{p}\n");
        let c = Config::from_toml(&with("batch_max_bytes = 1000\nmax_inflight_bytes = 4000")).unwrap();
        assert_eq!((c.pipeline.batch_max_bytes, c.pipeline.max_inflight_bytes), (1000, 4000));
        for (p, key) in [
            ("batch_max_bytes = 0", "pipeline.batch_max_bytes"),
            ("batch_max_bytes = 2000\nmax_inflight_bytes = 1000", "pipeline.max_inflight_bytes"),
        ] {
            let err = Config::from_toml(&with(p)).unwrap_err().to_string();
            assert!(err.contains(key), "expected `{key}` in: {err}");
        }
    }

    #[test]
    fn keep_when_missing_is_validated() {
        std::env::set_var("LANDFALL_TEST_SECRET", "hunter2");
        let with = |keep: &str| EXAMPLE.replace("primary_key = [\"id\"]", &format!("primary_key = [\"id\"]\nkeep_when_missing = {keep}"));
        assert_eq!(Config::from_toml(&with(r#"["name"]"#)).unwrap().tables[0].keep_when_missing, vec!["name".to_string()]);
        for (keep, why) in
            [(r#"["nope"]"#, "not one of the table's columns"), (r#"["id"]"#, "primary-key column"), (r#"["name", "name"]"#, "named twice")]
        {
            let err = Config::from_toml(&with(keep)).unwrap_err().to_string();
            assert!(err.contains("tables[0].keep_when_missing") && err.contains(why), "{keep}: {err}");
        }
        let many = format!("{:?}", vec!["name"; 64]);
        let err = Config::from_toml(&with(&many)).unwrap_err().to_string();
        assert!(err.contains("at most 63"), "{err}");
    }

    #[test]
    fn missing_env_var_is_named() {
        let text = EXAMPLE.replace("LANDFALL_TEST_SECRET", "LANDFALL_SURELY_UNSET_VAR");
        let err = Config::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("LANDFALL_SURELY_UNSET_VAR") && err.contains("sasl.password"), "{err}");
    }

    #[test]
    fn shipped_example_config_is_valid() {
        // As systemd hands the unit's credentials over (deploy/landfall.service).
        let creds = tempfile::tempdir().unwrap();
        std::fs::write(creds.path().join("kafka-password"), "s3cret-for-test\n").unwrap();
        std::env::set_var("CREDENTIALS_DIRECTORY", creds.path());
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let c = Config::load(&root.join("docs/landfall.example.toml")).unwrap();
        assert_eq!(c.tables.len(), 2);
        assert_eq!(c.kafka.properties["sasl.password"], "s3cret-for-test");
        let Auth::ServiceAccountKey { key_file, allow_readable_key_file: false } = &c.bigquery.auth else {
            panic!("{:?}", c.bigquery.auth)
        };
        assert_eq!(key_file, &creds.path().join("bigquery-key.json"));
        assert!(!format!("{c:?}").contains("s3cret-for-test"));
        // Every credential the unit loads is one the example config reads, and the other way round.
        let unit = std::fs::read_to_string(root.join("deploy/landfall.service")).unwrap();
        let loaded: Vec<&str> =
            unit.lines().filter_map(|l| l.strip_prefix("LoadCredential=")).map(|l| l.split(':').next().unwrap()).collect();
        let example = std::fs::read_to_string(root.join("docs/landfall.example.toml")).unwrap();
        let read: Vec<&str> = example
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split("${CREDENTIALS_DIRECTORY}/").skip(1))
            .map(|rest| rest.split(['}', '"']).next().unwrap())
            .collect();
        assert_eq!(loaded, read);
        assert_eq!(loaded, vec!["kafka-password", "bigquery-key.json"]);
    }

    #[test]
    fn env_expansion_escapes() {
        std::env::set_var("LANDFALL_TEST_X", "v");
        assert_eq!(expand_env_refs("a${LANDFALL_TEST_X}b$${c}").unwrap(), "avb${c}");
        assert!(expand_env_refs("${unterminated").is_err());
    }

    #[test]
    fn file_references_read_trimmed_secrets_and_errors_never_show_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kafka-password"), "  s3cr3t-Value\n").unwrap();
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        std::env::set_var("LANDFALL_TEST_CREDENTIALS_DIRECTORY", dir.path());
        let d = dir.path().display();
        assert_eq!(expand_env_refs(&format!("${{file:{d}/kafka-password}}")).unwrap(), "s3cr3t-Value");
        // systemd's LoadCredential= form: the directory from the environment.
        assert_eq!(expand_env_refs("pw=${file:${LANDFALL_TEST_CREDENTIALS_DIRECTORY}/kafka-password}!").unwrap(), "pw=s3cr3t-Value!");
        let missing = expand_env_refs(&format!("${{file:{d}/nope}}")).unwrap_err();
        assert!(missing.contains(&format!("{d}/nope")) && missing.contains("not found"), "{missing}");
        assert!(expand_env_refs(&format!("${{file:{d}/empty}}")).unwrap_err().contains("is empty"));
        assert!(expand_env_refs("${file:${file:/etc/passwd}}").is_err(), "no file inside a file path");
        // Through the config: the value is used, and never shown.
        let toml = EXAMPLE.replace("${LANDFALL_TEST_SECRET}", "${file:${LANDFALL_TEST_CREDENTIALS_DIRECTORY}/kafka-password}");
        let c = Config::from_toml(&toml).unwrap();
        assert_eq!(c.kafka.properties["sasl.password"], "s3cr3t-Value");
        assert!(!format!("{c:?}").contains("s3cr3t"), "a secret in the config's Debug");
        let bad = Config::from_toml(&toml.replace("kafka-password", "missing")).err().unwrap().to_string();
        assert!(bad.contains("sasl.password") && bad.contains("missing") && !bad.contains("s3cr3t"), "{bad}");
    }
}

//! A simulated source database and the independent check of BigQuery against it.
//!
//! [`Simulator`] plays a source database replicated by AWS DMS: from a seed it
//! makes a deterministic stream of DMS JSON messages and keeps the model of
//! what each source table holds, in source-native values ([`SourceValue`]:
//! decimal text, raw bytes, JSON documents, timestamps with nanoseconds as
//! the source writes them). [`verify`] reads the final tables and compares
//! them with the model through the oracle's own canonical forms
//! ([`value`]). Nothing here calls landfall's decoder, value conversion or
//! key derivation: a check that shares the code under test proves nothing.
//!
//! The stream: a full load, then source transactions of 1-6 changes whose
//! messages share `metadata.timestamp`, with the shapes that make identity
//! and ordering hard: a row updated B -> A -> B (identical first and last
//! content), inserted, deleted and inserted again with identical content,
//! updated several times, primary-key changes (`before-image` with the old
//! key), re-inserts of deleted keys. Optionally DMS transaction details
//! (`transaction-id`, `transaction-record-id`, `stream-position` in one of four
//! engine formats). Then [`Simulator::duplicate`] and [`Simulator::republish`]
//! add redeliveries and re-publications.
//!
//! Two shapes are undecidable without transaction details, and the simulator
//! never makes them:
//! * an exact copy of a change placed after a later change of the same row
//!   that carries the same timestamp (it looks exactly like a genuine
//!   B -> A -> B), so a copy of a row's last change in its transaction goes
//!   anywhere after the transaction, a copy of an earlier one only after a
//!   later-timestamp change of that row, and re-published ranges are runs of
//!   whole transactions appended right after the run;
//! * re-using a primary key inside the transaction that changed it away
//!   (landfall orders the implied delete of the old key after every change
//!   with the same timestamp): a key changed away is not touched again in
//!   that transaction.
//!
//! Used by `landfall demo`, `landfall drill`, the bench and the end-to-end tests.

pub mod value;
pub mod verify;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

pub use value::SourceValue;

use crate::config::{ColumnConfig, TableConfig};
use crate::decode::{ColumnType, OrderBy};

pub const SOURCE_SCHEMA: &str = "sales";
/// The table with a column of every BigQuery type.
pub const EVERY_TYPE: &str = "sales.every_type";

/// The engine whose log positions `metadata.stream-position` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionFormat {
    /// `mysql-bin-changelog.000123:4567` (decimal; the file number rolls over).
    Mysql,
    /// `00000199/FFFFF2A0` (hexadecimal LSN, crossing `..99` -> `..A0`).
    Postgresql,
    /// `0000002A:000001A0:0003` (hexadecimal).
    Sqlserver,
    /// A decimal SCN that grows a digit.
    Oracle,
}

impl PositionFormat {
    /// The `order_by` that reads this format.
    pub fn order_by(self) -> OrderBy {
        match self {
            PositionFormat::Mysql => OrderBy::MysqlBinlog,
            PositionFormat::Postgresql => OrderBy::PostgresqlLsn,
            PositionFormat::Sqlserver => OrderBy::SqlserverLsn,
            PositionFormat::Oracle => OrderBy::OracleScn,
        }
    }
}

/// What the simulated stream contains.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// DMS `IncludeTransactionDetails`.
    pub transaction_details: bool,
    /// The format of `stream-position` (with transaction details).
    pub positions: PositionFormat,
    /// The tables' `order_by` (None: the global default, timestamp).
    pub order_by: Option<OrderBy>,
    /// Include the table with every column type (`sales.every_type`).
    pub every_type: bool,
    /// Add a few messages that must be dead-lettered (see [`Simulator::expected_dead_letters`]).
    pub dead_letters: bool,
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions { transaction_details: true, positions: PositionFormat::Mysql, order_by: None, every_type: true, dead_letters: false }
    }
}

impl SimOptions {
    /// DMS's defaults: no transaction details, timestamp ordering.
    pub fn without_transaction_details() -> SimOptions {
        SimOptions { transaction_details: false, ..SimOptions::default() }
    }

    /// Transaction details with positions in `format`, ordered by them.
    pub fn ordered_by(format: PositionFormat) -> SimOptions {
        SimOptions { transaction_details: true, positions: format, order_by: Some(format.order_by()), ..SimOptions::default() }
    }
}

/// The simulated tables with the default options, as landfall's config routes them.
pub fn tables() -> Vec<TableConfig> {
    tables_for(&SimOptions::default())
}

/// The simulated tables for `opts` (with its `order_by`).
pub fn tables_for(opts: &SimOptions) -> Vec<TableConfig> {
    fn cols(c: &[(&str, ColumnType)]) -> Vec<ColumnConfig> {
        c.iter().map(|(n, t)| ColumnConfig::new(n, *t)).collect()
    }
    use ColumnType::*;
    let mut t = vec![
        TableConfig::new(
            &format!("{SOURCE_SCHEMA}.customers"),
            "customers_log",
            "customers",
            &["id"],
            cols(&[("id", Int64), ("name", String), ("email", String), ("active", Bool), ("updated_at", Timestamp)]),
        ),
        TableConfig::new(
            &format!("{SOURCE_SCHEMA}.orders"),
            "orders_log",
            "orders",
            &["order_id"],
            cols(&[("order_id", Int64), ("customer_id", Int64), ("status", String), ("amount", Numeric), ("note", Json)]),
        ),
        TableConfig::new(
            &format!("{SOURCE_SCHEMA}.order_items"),
            "order_items_log",
            "order_items",
            &["order_id", "line"],
            cols(&[("order_id", Int64), ("line", Int64), ("sku", String), ("qty", Int64), ("price", Float64)]),
        ),
    ];
    if opts.every_type {
        t.push(TableConfig::new(
            EVERY_TYPE,
            "every_type_log",
            "every_type",
            &["id", "region"],
            cols(&[
                ("id", Int64),
                ("region", String),
                ("c_int64", Int64),
                ("c_numeric", Numeric),
                ("c_bignumeric", Bignumeric),
                ("c_float64", Float64),
                ("c_string", String),
                ("c_bool", Bool),
                ("c_bytes", Bytes),
                ("c_json", Json),
                ("c_timestamp", Timestamp),
                ("c_date", Date),
                ("c_datetime", Datetime),
                ("c_time", Time),
            ]),
        ));
    }
    for table in &mut t {
        table.order_by = opts.order_by;
    }
    t
}

/// One DMS message: Kafka key (the primary key, as DMS partitions by it) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct SimMessage {
    pub table: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
}

/// A DMS `insert` of one `sales.customers` row (as [`tables`] configures it)
/// whose `name` is text taking `text_bytes` in the message: a row with one large text column
/// (a document, a LOB), for the memory bounds' tests and benchmark. The text is
/// words drawn from `id`, so two messages differ; the change is not in any
/// model.
pub fn large_text_change(id: i64, text_bytes: usize) -> SimMessage {
    const WORDS: &[&str] =
        &["order", "shipped", "invoice", "customer", "réseau", "返品", "pending", "the", "of", "and", "quantity", "\"quoted\"", "line\n"];
    let mut rng = StdRng::seed_from_u64(id as u64);
    let mut text = String::with_capacity(text_bytes + 16);
    // `json` counts the text as the message holds it (quotes and newlines escaped).
    let mut json = 0;
    loop {
        let word = WORDS[rng.random_range(0..WORDS.len())];
        let escaped = word.len() + word.matches(['"', '\n']).count() + 1;
        if json + escaped > text_bytes {
            break;
        }
        text.push_str(word);
        text.push(' ');
        json += escaped;
    }
    text.extend(std::iter::repeat_n('x', text_bytes - json));
    let envelope = json!({
        "data": {
            "id": id,
            "name": text,
            "email": format!("customer{id}@example.com"),
            "active": true,
            "updated_at": "2026-11-27T10:00:00.000000Z",
        },
        "metadata": {
            "timestamp": format!("2026-11-27T10:00:{:02}.{:06}Z", (id / 1_000_000) % 60, id % 1_000_000),
            "record-type": "data",
            "operation": "insert",
            "partition-key-type": "primary-key",
            "schema-name": SOURCE_SCHEMA,
            "table-name": "customers",
        },
    });
    let payload = serde_json::to_vec(&envelope).expect("json");
    SimMessage { table: format!("{SOURCE_SCHEMA}.customers"), key: id.to_string().into_bytes(), payload }
}

/// A source row: column -> value; NULL columns are absent.
pub type Row = BTreeMap<String, SourceValue>;
/// The model: per source table, primary key (canonical text) -> row.
pub type Model = BTreeMap<String, BTreeMap<String, Row>>;

/// A message the stream was built to contain that landfall must dead-letter.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedDeadLetter {
    pub payload: Vec<u8>,
    /// What the dead letter's reason must mention.
    pub reason_contains: &'static str,
    pub what: &'static str,
}

/// The primary key's canonical text (the verification keys rows the same way).
pub fn pk_text(t: &TableConfig, row: &Row) -> String {
    t.primary_key.iter().map(|k| row.get(k).map(SourceValue::expected).unwrap_or_default()).collect::<Vec<_>>().join("|")
}

/// Position state per format.
#[derive(Debug, Clone)]
struct Positions {
    mysql: (u32, u64),
    lsn: u64,
    sqlserver: (u32, u32, u16),
    scn: u64,
}

pub struct Simulator {
    rng: StdRng,
    opts: SimOptions,
    tables: Vec<TableConfig>,
    pub model: Model,
    /// Deleted rows per table, candidates for re-insertion.
    deleted: BTreeMap<String, Vec<Row>>,
    /// `metadata.timestamp` of the current transaction (nanoseconds).
    clock_nanos: i128,
    positions: Positions,
    transaction_id: u64,
    /// The previous transaction's id and record count.
    prev_transaction: (u64, u64),
    next_id: i64,
    /// Whether messages carry DMS transaction details (stream-position etc.).
    pub transaction_details: bool,
    /// Distinct changes produced (messages before duplication, without dead letters).
    pub produced: usize,
    /// Primary-key changes among them (landfall lands two rows for each:
    /// the implied delete of the old key and the new row).
    pub primary_key_changes: usize,
    /// Bad messages that must be dead-lettered (never copied).
    dead_letters: Vec<ExpectedDeadLetter>,
    bad_payloads: HashSet<Vec<u8>>,
    /// Messages per transaction (by [`transaction_tag`]): the first that
    /// many messages of a transaction in a stream are its originals.
    txn_lengths: HashMap<String, usize>,
    /// Columns added at the source ([`Simulator::add_column`]): table index,
    /// name and value generator.
    added_columns: Vec<(usize, String, ValueGen)>,
}

/// Makes one source value of a column.
type ValueGen = fn(&mut StdRng) -> SourceValue;

/// The per-transaction state of [`Simulator::changes`].
struct Txn {
    timestamp: String,
    records: u64,
    messages: usize,
    /// Keys changed away by a primary-key change in this transaction: not
    /// touched again in it (see the module docs).
    gone: BTreeSet<(usize, String)>,
}

impl Simulator {
    pub fn new(seed: u64) -> Simulator {
        Simulator::with_options(seed, SimOptions::default())
    }

    pub fn with_options(seed: u64, opts: SimOptions) -> Simulator {
        let tables = tables_for(&opts);
        let model = tables.iter().map(|t| (t.source.clone(), BTreeMap::new())).collect();
        Simulator {
            rng: StdRng::seed_from_u64(seed),
            transaction_details: opts.transaction_details,
            opts,
            tables,
            model,
            deleted: BTreeMap::new(),
            clock_nanos: 1_795_750_000_000_000_000,
            positions: Positions { mysql: (123, 4), lsn: (0x199u64 << 32) | 0xFFFF_0000, sqlserver: (0x2A, 0x199, 1), scn: 9_999_700 },
            transaction_id: 5000,
            prev_transaction: (0, 0),
            next_id: 1,
            produced: 0,
            primary_key_changes: 0,
            dead_letters: Vec::new(),
            bad_payloads: HashSet::new(),
            txn_lengths: HashMap::new(),
            added_columns: Vec::new(),
        }
    }

    /// The source table `table` gains column `name` (`ALTER TABLE ... ADD
    /// COLUMN`, NULL in the rows it holds): rows written from now on carry
    /// values from `generate` (now and then NULL, left out as DMS does), and
    /// [`Simulator::tables`] (the oracle's tables) lists it as `ty`.
    pub fn add_column(&mut self, table: &str, name: &str, ty: ColumnType, generate: fn(&mut StdRng) -> SourceValue) {
        let i = self.tables.iter().position(|t| t.source == table).expect("a simulated table");
        self.tables[i].columns.push(ColumnConfig::new(name, ty));
        self.added_columns.push((i, name.to_owned(), generate));
    }

    /// The `add-column` control record DMS publishes for `table` with
    /// `IncludeControlDetails`: `columns` are the table's column
    /// definitions as the record carries them (name -> `{"type": ...}`).
    /// DMS does not document that part's layout; this is the shape
    /// `src/decode/column_defs.rs` reads (any nesting, objects keyed by
    /// column name). Control records are keyed by task, not by row.
    pub fn add_column_record(&mut self, table: &str, columns: Value) -> SimMessage {
        let (schema, name) = table.split_once('.').expect("schema.table");
        let payload = json!({
            "control": { "table-def": { "columns": columns } },
            "metadata": {
                "timestamp": format_utc_micros(self.clock_nanos),
                "record-type": "control",
                "operation": "add-column",
                "partition-key-type": "task-id",
                "schema-name": schema,
                "table-name": name,
            }
        });
        SimMessage { table: table.to_owned(), key: b"task-1".to_vec(), payload: serde_json::to_vec(&payload).expect("json") }
    }

    pub fn tables(&self) -> &[TableConfig] {
        &self.tables
    }

    pub fn options(&self) -> &SimOptions {
        &self.opts
    }

    /// The dead letters the stream was built to contain so far.
    pub fn expected_dead_letters(&self) -> &[ExpectedDeadLetter] {
        &self.dead_letters
    }

    /// A fresh row with a new primary key.
    fn random_row(&mut self, table: usize) -> Row {
        let id = self.next_id;
        self.next_id += 1;
        let mut row = self.random_values(table);
        row.extend(self.key_for(table, id));
        row
    }

    fn key_for(&mut self, table: usize, id: i64) -> Row {
        let mut k = Row::new();
        match table {
            0 => {
                k.insert("id".into(), SourceValue::Int(id));
            }
            1 => {
                k.insert("order_id".into(), SourceValue::Int(id));
            }
            2 => {
                k.insert("order_id".into(), SourceValue::Int(id / 4));
                k.insert("line".into(), SourceValue::Int(id % 4));
            }
            _ => {
                // Spread over the whole INT64 range now and then.
                let id = if id % 7 == 3 { id.wrapping_mul(1_317_624_576_693_539_401) } else { id };
                k.insert("id".into(), SourceValue::Int(id));
                let region = ["eu", "us-east", "ÄÖ", "ap \"south\""][self.rng.random_range(0..4)];
                k.insert("region".into(), SourceValue::Text(region.into()));
            }
        }
        k
    }

    /// Non-key columns with fresh values; NULLs are left out, as DMS does.
    fn random_values(&mut self, table: usize) -> Row {
        use value::*;
        let r = &mut self.rng;
        let mut m = Row::new();
        let put = |m: &mut Row, k: &str, v: SourceValue| {
            m.insert(k.into(), v);
        };
        match table {
            0 => {
                put(&mut m, "name", SourceValue::Text(format!("customer-{}", r.random_range(0..1_000_000))));
                if r.random_bool(0.8) {
                    put(&mut m, "email", SourceValue::Text(format!("c{}@example.com", r.random_range(0..1_000_000))));
                }
                put(&mut m, "active", SourceValue::Bool(r.random_bool(0.7)));
                let unix_nanos = (1_700_000_000_000i128 + i128::from(r.random_range(0..100_000_000_000i64))) * 1_000_000;
                put(
                    &mut m,
                    "updated_at",
                    SourceValue::Timestamp(Timestamp { unix_nanos, offset_minutes: 0, digits: 3, style: TsStyle::Plain }),
                );
            }
            1 => {
                put(&mut m, "customer_id", SourceValue::Int(r.random_range(1..5000)));
                let status = ["new", "paid", "shipped", "cancelled", "returned"][r.random_range(0..5)];
                put(&mut m, "status", SourceValue::Text(status.into()));
                let amount = format!("{}.{:02}", r.random_range(0..100_000), r.random_range(0..100));
                put(&mut m, "amount", SourceValue::Decimal(amount));
                if r.random_bool(0.5) {
                    put(&mut m, "note", SourceValue::Json(json!({"gift": r.random_bool(0.5), "tags": ["a", "b"]})));
                }
            }
            2 => {
                put(&mut m, "sku", SourceValue::Text(format!("SKU-{:05}", r.random_range(0..99_999))));
                put(&mut m, "qty", SourceValue::Int(r.random_range(1..20)));
                put(&mut m, "price", SourceValue::Float(r.random_range(1..100_000) as f64 / 4.0));
            }
            _ => {
                type Generate = fn(&mut StdRng) -> SourceValue;
                let columns: [(&str, Generate); 12] = [
                    ("c_int64", |r| {
                        SourceValue::Int(match r.random_range(0..8) {
                            0 => i64::MIN,
                            1 => i64::MAX,
                            2 => r.random(),
                            _ => r.random_range(-1000..1000),
                        })
                    }),
                    // NUMERIC: 29 integer and 9 fraction digits.
                    ("c_numeric", |r| SourceValue::Decimal(gen_decimal(r, 29, 9))),
                    // BIGNUMERIC: BigQuery holds 38 fraction digits and
                    // |v| < 5.78e38, but the emulator (DuckDB DECIMAL(38,18))
                    // rejects more than 20 integer digits and silently rounds
                    // past 18 fraction digits: generated within what it keeps
                    // exactly. landfall's unit tests cover the full range.
                    ("c_bignumeric", |r| SourceValue::Decimal(gen_decimal(r, 20, 18))),
                    ("c_float64", |r| SourceValue::Float(gen_float(r))),
                    ("c_string", |r| SourceValue::Text(gen_text(r))),
                    ("c_bool", |r| SourceValue::Bool(r.random())),
                    ("c_bytes", |r| SourceValue::Bytes(gen_bytes(r))),
                    ("c_json", |r| SourceValue::Json(gen_json(r, 2))),
                    ("c_timestamp", |r| SourceValue::Timestamp(gen_timestamp(r))),
                    ("c_date", |r| SourceValue::Date(gen_date(r))),
                    ("c_datetime", |r| SourceValue::Datetime(gen_datetime(r))),
                    ("c_time", |r| SourceValue::Time(gen_time(r))),
                ];
                for (name, gen) in columns {
                    if r.random_bool(0.88) {
                        let v = gen(r);
                        put(&mut m, name, v);
                    }
                }
            }
        }
        for (t, name, generate) in &self.added_columns {
            if *t == table && r.random_bool(0.9) {
                let v = generate(r);
                put(&mut m, name, v);
            }
        }
        m
    }

    fn next_position(&mut self) -> String {
        let p = &mut self.positions;
        match self.opts.positions {
            PositionFormat::Mysql => {
                p.mysql.1 += self.rng.random_range(20..400);
                format!("mysql-bin-changelog.{:06}:{}", p.mysql.0, p.mysql.1)
            }
            PositionFormat::Postgresql => {
                p.lsn += self.rng.random_range(1..400);
                format!("{:08X}/{:08X}", p.lsn >> 32, p.lsn & 0xFFFF_FFFF)
            }
            PositionFormat::Sqlserver => {
                let s = format!("{:08X}:{:08X}:{:04X}", p.sqlserver.0, p.sqlserver.1, p.sqlserver.2);
                p.sqlserver.2 += 1;
                s
            }
            PositionFormat::Oracle => {
                p.scn += self.rng.random_range(1..20);
                p.scn.to_string()
            }
        }
    }

    /// Starts a transaction: a new `metadata.timestamp` shared by its changes,
    /// and (with details) a new transaction id; log files roll over now and then.
    fn begin(&mut self) -> Txn {
        self.clock_nanos += i128::from(self.rng.random_range(1..2_000_000i64)) / 1000 * 1000;
        let p = &mut self.positions;
        if self.rng.random_bool(0.03) {
            p.mysql = (p.mysql.0 + 1, 4);
        }
        if self.rng.random_bool(0.03) {
            // A WAL segment switch: the high half moves (..199 -> ..19A .. 1A0).
            p.lsn = (p.lsn & !0xFFFF_FFFF) + (1u64 << 32) + u64::from(self.rng.random_range(0..0x200u32));
        }
        if self.rng.random_bool(0.03) {
            p.sqlserver = (p.sqlserver.0 + 1, self.rng.random_range(1..0x20), 1);
        } else {
            p.sqlserver = (p.sqlserver.0, p.sqlserver.1 + self.rng.random_range(1..0x40), 1);
        }
        self.transaction_id += self.rng.random_range(1..5);
        Txn { timestamp: format_utc_micros(self.clock_nanos), records: 0, messages: 0, gone: BTreeSet::new() }
    }

    fn end(&mut self, txn: &Txn) {
        self.prev_transaction = (self.transaction_id, txn.records);
        if txn.messages > 0 {
            let id = if self.opts.transaction_details { json!(self.transaction_id) } else { Value::Null };
            self.txn_lengths.insert(format!("{}|{}", json!(txn.timestamp), id), txn.messages);
        }
    }

    fn metadata(&self, table: usize, operation: &str, timestamp: &str) -> Map<String, Value> {
        let (schema, name) = self.tables[table].source.split_once('.').expect("schema.table");
        let v = json!({
            "timestamp": timestamp,
            "record-type": "data",
            "operation": operation,
            "partition-key-type": "primary-key",
            "schema-name": schema,
            "table-name": name,
        });
        let Value::Object(m) = v else { unreachable!() };
        m
    }

    fn render_row(&mut self, row: &Row) -> Map<String, Value> {
        let mut m = Map::new();
        for (k, v) in row {
            m.insert(k.clone(), v.to_dms(&mut self.rng));
        }
        m
    }

    /// One change message of `txn`; `before` is the before image (the old
    /// primary key), if any.
    fn message(&mut self, txn: &mut Txn, table: usize, operation: &str, data: &Row, before: Option<&Row>) -> SimMessage {
        let rendered = self.render_row(data);
        self.message_rendered(txn, table, operation, data, rendered, before)
    }

    /// Like [`Self::message`] with `data` already rendered (to repeat a
    /// change's exact bytes inside one transaction).
    fn message_rendered(
        &mut self,
        txn: &mut Txn,
        table: usize,
        operation: &str,
        data: &Row,
        rendered: Map<String, Value>,
        before: Option<&Row>,
    ) -> SimMessage {
        let mut metadata = self.metadata(table, operation, &txn.timestamp);
        if self.opts.transaction_details {
            txn.records += 1;
            let position = self.next_position();
            metadata.insert("transaction-id".into(), json!(self.transaction_id));
            metadata.insert("transaction-record-id".into(), json!(txn.records));
            metadata.insert("prev-transaction-id".into(), json!(self.prev_transaction.0));
            metadata.insert("prev-transaction-record-id".into(), json!(self.prev_transaction.1));
            metadata.insert("commit-timestamp".into(), json!(txn.timestamp));
            metadata.insert("stream-position".into(), json!(position));
        }
        let mut envelope = Map::new();
        envelope.insert("data".into(), Value::Object(rendered));
        envelope.insert("metadata".into(), Value::Object(metadata));
        if let Some(b) = before {
            envelope.insert("before-image".into(), Value::Object(self.render_row(b)));
        }
        let payload = serde_json::to_vec(&Value::Object(envelope)).expect("json");
        self.produced += 1;
        txn.messages += 1;
        let t = &self.tables[table];
        SimMessage { table: t.source.clone(), key: pk_text(t, data).into_bytes(), payload }
    }

    fn key_only(&self, table: usize, row: &Row) -> Row {
        self.tables[table].primary_key.iter().filter_map(|k| row.get(k).map(|v| (k.clone(), v.clone()))).collect()
    }

    /// The full-load phase: `rows` rows per table, operation `load`, one
    /// timestamp per few rows.
    pub fn full_load(&mut self, rows: usize) -> Vec<SimMessage> {
        let mut out = Vec::new();
        for table in 0..self.tables.len() {
            let mut txn = self.begin();
            for i in 0..rows {
                if i % 5 == 4 {
                    self.end(&txn);
                    txn = self.begin();
                }
                let row = self.random_row(table);
                let pk = pk_text(&self.tables[table], &row);
                out.push(self.message(&mut txn, table, "load", &row, None));
                self.insert_model(table, pk, row);
            }
            self.end(&txn);
        }
        out
    }

    fn insert_model(&mut self, table: usize, pk: String, row: Row) {
        let src = self.tables[table].source.clone();
        self.model.get_mut(&src).expect("table").insert(pk, row);
    }

    fn remove_model(&mut self, table: usize, pk: &str) -> Option<Row> {
        let src = self.tables[table].source.clone();
        self.model.get_mut(&src).expect("table").remove(pk)
    }

    /// A row of `table` that exists and was not changed away in `txn`.
    fn pick_existing(&mut self, table: usize, txn: &Txn) -> Option<(String, Row)> {
        let rows = &self.model[&self.tables[table].source];
        if rows.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..rows.len());
        let (pk, row) = rows.iter().nth(i).map(|(k, v)| (k.clone(), v.clone()))?;
        (!txn.gone.contains(&(table, pk.clone()))).then_some((pk, row))
    }

    /// A deleted row of `table` that may be inserted again in `txn`.
    fn pick_deleted(&mut self, table: usize, txn: &Txn) -> Option<Row> {
        let src = self.tables[table].source.clone();
        let list = self.deleted.get_mut(&src).filter(|d| !d.is_empty())?;
        let i = self.rng.random_range(0..list.len());
        let pk = pk_text(&self.tables[table], &list[i]);
        if txn.gone.contains(&(table, pk.clone())) || self.model[&src].contains_key(&pk) {
            return None;
        }
        Some(list.swap_remove(i))
    }

    fn update_of(&mut self, table: usize, row: &Row) -> Row {
        let mut new = self.key_only(table, row);
        new.extend(self.random_values(table));
        new
    }

    /// One step of a transaction (one to three changes).
    fn step(&mut self, txn: &mut Txn, table: usize, out: &mut Vec<SimMessage>) {
        let roll = self.rng.random_range(0..100);
        let existing = self.pick_existing(table, txn);
        match (roll, existing) {
            (0..=19, _) | (_, None) => {
                // Insert: a new key, or sometimes a key deleted earlier.
                let row = match self.rng.random_bool(0.3).then(|| self.pick_deleted(table, txn)).flatten() {
                    Some(old) => {
                        let mut row = self.key_only(table, &old);
                        row.extend(self.random_values(table));
                        row
                    }
                    None => self.random_row(table),
                };
                let pk = pk_text(&self.tables[table], &row);
                out.push(self.message(txn, table, "insert", &row, None));
                self.insert_model(table, pk, row);
            }
            (20..=54, Some((pk, row))) => {
                let new = self.update_of(table, &row);
                let before = self.rng.random_bool(0.3).then(|| self.key_only(table, &row));
                out.push(self.message(txn, table, "update", &new, before.as_ref()));
                self.insert_model(table, pk, new);
            }
            (55..=69, Some((pk, row))) => {
                out.push(self.message(txn, table, "delete", &row, None));
                self.remove_model(table, &pk);
                let src = self.tables[table].source.clone();
                self.deleted.entry(src).or_default().push(row);
            }
            (70..=77, Some((pk, row))) => {
                // B -> A -> B: the first and last change have identical content.
                let b = self.update_of(table, &row);
                let a = self.update_of(table, &row);
                let rb = self.render_row(&b);
                out.push(self.message_rendered(txn, table, "update", &b, rb.clone(), None));
                out.push(self.message(txn, table, "update", &a, None));
                out.push(self.message_rendered(txn, table, "update", &b, rb, None));
                self.insert_model(table, pk, b);
            }
            (78..=83, Some((pk, row))) => {
                // Several updates of one row.
                let mut last = row;
                for _ in 0..self.rng.random_range(2..=3) {
                    last = self.update_of(table, &last);
                    out.push(self.message(txn, table, "update", &last, None));
                }
                self.insert_model(table, pk, last);
            }
            (84..=89, _) => {
                // Insert, delete and insert again with identical content.
                let row = self.random_row(table);
                let pk = pk_text(&self.tables[table], &row);
                let r = self.render_row(&row);
                out.push(self.message_rendered(txn, table, "insert", &row, r.clone(), None));
                out.push(self.message_rendered(txn, table, "delete", &row, r.clone(), None));
                out.push(self.message_rendered(txn, table, "insert", &row, r, None));
                self.insert_model(table, pk, row);
            }
            (_, Some((pk, row))) => {
                // Primary-key change: the old key goes, the new key arrives
                // (usually in another partition).
                let id = self.next_id;
                self.next_id += 1;
                let mut new = row.clone();
                if self.rng.random_bool(0.5) {
                    new.extend(self.random_values(table));
                }
                new.extend(self.key_for(table, id));
                let new_pk = pk_text(&self.tables[table], &new);
                let before = self.key_only(table, &row);
                out.push(self.message(txn, table, "update", &new, Some(&before)));
                self.primary_key_changes += 1;
                self.remove_model(table, &pk);
                txn.gone.insert((table, pk));
                self.insert_model(table, new_pk, new);
            }
        }
    }

    /// CDC changes (at least `n`): transactions of 1-6 changes over one or two
    /// tables, in the shapes listed in the module docs.
    pub fn changes(&mut self, n: usize) -> Vec<SimMessage> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            let mut txn = self.begin();
            let size = self.rng.random_range(1..=6);
            let first = self.rng.random_range(0..self.tables.len());
            let second = self.rng.random_range(0..self.tables.len());
            let start = out.len();
            while out.len() - start < size {
                let table = if self.rng.random_bool(0.7) { first } else { second };
                self.step(&mut txn, table, &mut out);
            }
            self.end(&txn);
        }
        if self.opts.dead_letters && self.opts.every_type {
            self.add_dead_letters(&mut out);
        }
        out
    }

    /// Inserts of fresh keys with values landfall must refuse, at
    /// transaction boundaries of `out`. The model never gets them.
    fn add_dead_letters(&mut self, out: &mut Vec<SimMessage>) {
        let table = self.tables.iter().position(|t| t.source == EVERY_TYPE).expect("every_type table");
        let bad: [(&str, &str, &'static str, &'static str); 5] = [
            ("c_numeric", "1.0000000001", "column `c_numeric`", "NUMERIC with 10 fraction digits"),
            ("c_bytes", "\"0xZZ01\"", "column `c_bytes`", "BYTES that are not hexadecimal"),
            ("c_json", "\"{not json\"", "column `c_json`", "a JSON column whose text is not JSON"),
            ("c_int64", "9223372036854775808", "column `c_int64`", "a value too large for INT64"),
            ("ID", "1", "ambiguous", "`ID` and `id` in one message"),
        ];
        for (column, raw, reason, what) in bad {
            let id = self.next_id;
            self.next_id += 1;
            self.clock_nanos += 1000;
            let ts = format_utc_micros(self.clock_nanos);
            let metadata = Value::Object(self.metadata(table, "insert", &ts));
            let key = format!("{id}|dead");
            // Written as text so the offending digits appear verbatim.
            let text = format!(
                r#"{{"data":{{"id":{id},"region":"dead","{column}":{raw}}},"metadata":{}}}"#,
                serde_json::to_string(&metadata).expect("json")
            );
            let payload = text.into_bytes();
            let at = self.boundary(out);
            out.insert(at, SimMessage { table: EVERY_TYPE.into(), key: key.into_bytes(), payload: payload.clone() });
            self.bad_payloads.insert(payload.clone());
            self.dead_letters.push(ExpectedDeadLetter { payload, reason_contains: reason, what });
        }
    }

    /// A random index of `msgs` at a transaction boundary.
    fn boundary(&mut self, msgs: &[SimMessage]) -> usize {
        let bounds = self.transaction_bounds(msgs);
        bounds[self.rng.random_range(0..bounds.len())]
    }

    /// Per message: its transaction tag and whether it is one of the
    /// transaction's originals (the first `length` messages with the tag).
    fn classify(&self, msgs: &[SimMessage]) -> Vec<(Option<String>, bool)> {
        let mut seen: HashMap<Option<String>, usize> = HashMap::new();
        msgs.iter()
            .map(|m| {
                let tag = transaction_tag(&m.payload);
                let n = seen.entry(tag.clone()).or_default();
                *n += 1;
                let len = tag.as_ref().and_then(|t| self.txn_lengths.get(t)).copied().unwrap_or(1);
                (tag, *n <= len)
            })
            .collect()
    }

    /// Indexes where no transaction's originals are open (every transaction
    /// begun before has all its original messages before), plus `msgs.len()`.
    fn transaction_bounds(&self, msgs: &[SimMessage]) -> Vec<usize> {
        let class = self.classify(msgs);
        let mut left: HashMap<&Option<String>, usize> = HashMap::new();
        let mut open = 0usize;
        let mut out = vec![0];
        for (i, (tag, original)) in class.iter().enumerate() {
            if *original {
                let len = tag.as_ref().and_then(|t| self.txn_lengths.get(t)).copied().unwrap_or(1);
                let l = left.entry(tag).or_insert_with(|| {
                    open += 1;
                    len
                });
                *l -= 1;
                if *l == 0 {
                    open -= 1;
                }
            }
            if open == 0 {
                out.push(i + 1);
            }
        }
        out.dedup();
        out
    }

    /// Repeats about `rate` of the messages (as DMS or Kafka redeliver), each
    /// placed after the end of its original's transaction. A copy of a change
    /// that is not its row's last in the transaction is only placed after a
    /// later change of that row with a later timestamp (same key, so same
    /// partition): right after the transaction it would look exactly like a
    /// genuine B -> A -> B. Returns how many were added.
    pub fn duplicate(&mut self, msgs: &mut Vec<SimMessage>, rate: f64) -> usize {
        let class = self.classify(msgs);
        let mut inserts: Vec<(usize, SimMessage)> = Vec::new();
        for i in 0..msgs.len() {
            if self.bad_payloads.contains(&msgs[i].payload) || !self.rng.random_bool(rate) {
                continue;
            }
            let tag = &class[i].0;
            // The end of the original's transaction.
            let mut end = i + 1;
            let mut last_of_key = true;
            let mut seen = 0;
            for (j, (t, original)) in class.iter().enumerate().skip(i + 1) {
                if t == tag && *original {
                    end = j + 1;
                    if msgs[j].key == msgs[i].key {
                        last_of_key = false;
                    }
                }
                seen += 1;
                if seen > 400 {
                    break;
                }
            }
            let mut earliest = end;
            if !last_of_key {
                match (end..msgs.len()).find(|&j| msgs[j].key == msgs[i].key && class[j].0 != *tag && class[j].1) {
                    Some(j) => earliest = j + 1,
                    None => continue,
                }
            }
            let at = (earliest + self.rng.random_range(0..50)).min(msgs.len());
            inserts.push((at, msgs[i].clone()));
        }
        let added = inserts.len();
        // From the back, so every index still means the original position.
        inserts.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
        for (at, m) in inserts {
            msgs.insert(at, m);
        }
        added
    }

    /// Re-publishes `ranges` contiguous ranges of the stream (as DMS does
    /// after a task restart): each an exact copy of a run of whole
    /// transactions, appended right after the run, once to three times.
    /// Returns how many messages were added.
    pub fn republish(&mut self, msgs: &mut Vec<SimMessage>, ranges: usize) -> usize {
        let mut added = 0;
        for _ in 0..ranges {
            let bounds = self.transaction_bounds(msgs);
            if bounds.len() < 2 {
                break;
            }
            let a = self.rng.random_range(0..bounds.len() - 1);
            let b = (a + self.rng.random_range(1..=8)).min(bounds.len() - 1);
            let (start, end) = (bounds[a], bounds[b]);
            let copy: Vec<SimMessage> = msgs[start..end].iter().filter(|m| !self.bad_payloads.contains(&m.payload)).cloned().collect();
            let times = self.rng.random_range(1..=3);
            let mut at = end;
            for _ in 0..times {
                msgs.splice(at..at, copy.iter().cloned());
                at += copy.len();
                added += copy.len();
            }
        }
        added
    }
}

/// What identifies a message's transaction in the stream: its `metadata.timestamp`
/// (and transaction id, if any).
fn transaction_tag(payload: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let m = v.get("metadata")?;
    Some(format!("{}|{}", m.get("timestamp")?, m.get("transaction-id").unwrap_or(&Value::Null)))
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (as DMS writes `metadata.timestamp`).
fn format_utc_micros(nanos: i128) -> String {
    let t = value::Timestamp { unix_nanos: nanos / 1000 * 1000, offset_minutes: 0, digits: 6, style: value::TsStyle::IsoZ };
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(msgs: &[SimMessage]) -> Vec<Value> {
        msgs.iter().map(|m| serde_json::from_slice::<Value>(&m.payload).unwrap()).collect()
    }

    #[test]
    fn deterministic_and_every_shape_present() {
        let mut a = Simulator::new(7);
        let mut b = Simulator::new(7);
        let (mut ma, mut mb) = (a.full_load(20), b.full_load(20));
        ma.extend(a.changes(800));
        mb.extend(b.changes(800));
        assert_eq!(ma, mb);
        assert_eq!(a.model, b.model);
        let vals = ops(&ma);
        let kinds: HashSet<String> = vals.iter().map(|v| v["metadata"]["operation"].as_str().unwrap().to_owned()).collect();
        for op in ["load", "insert", "update", "delete"] {
            assert!(kinds.contains(op), "{op} missing");
        }
        // Changes sharing a timestamp, primary-key changes, identical content
        // repeated within one transaction.
        let mut by_ts: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
        for v in &vals {
            by_ts.entry(v["metadata"]["timestamp"].as_str().unwrap().to_owned()).or_default().push(v);
        }
        assert!(by_ts.values().any(|t| t.len() >= 4));
        assert!(vals.iter().any(|v| v.get("before-image").is_some_and(|b| b.get("id").is_some() && b["id"] != v["data"]["id"])));
        assert!(by_ts
            .values()
            .any(|t| t.iter().enumerate().any(|(i, x)| t[i + 1..]
                .iter()
                .any(|y| x["data"] == y["data"] && x["metadata"]["operation"] == y["metadata"]["operation"]))));
        // Every type is there.
        let every = &a.model[EVERY_TYPE];
        for c in &a.tables()[3].columns {
            assert!(every.values().any(|r| r.contains_key(&c.name)), "{} never set", c.name);
        }
    }

    #[test]
    fn duplicates_are_exact_copies_after_their_transaction() {
        let mut s = Simulator::with_options(1, SimOptions::without_transaction_details());
        let mut msgs = s.changes(1000);
        let original = msgs.clone();
        let before = msgs.len();
        let added = s.duplicate(&mut msgs, 0.05);
        assert!(added > 20 && added < 120, "{added}");
        assert_eq!(msgs.len(), before + added);
        let distinct: HashSet<&Vec<u8>> = msgs.iter().map(|m| &m.payload).collect();
        let original_distinct: HashSet<&Vec<u8>> = original.iter().map(|m| &m.payload).collect();
        assert_eq!(distinct, original_distinct);
        // No copy lands inside its own transaction: per transaction, the
        // first messages of that transaction in the stream are its original run.
        let mut originals: BTreeMap<Option<String>, Vec<&Vec<u8>>> = BTreeMap::new();
        for m in &original {
            originals.entry(transaction_tag(&m.payload)).or_default().push(&m.payload);
        }
        let mut seen: BTreeMap<Option<String>, Vec<&Vec<u8>>> = BTreeMap::new();
        for m in &msgs {
            seen.entry(transaction_tag(&m.payload)).or_default().push(&m.payload);
        }
        for (tag, run) in &originals {
            assert_eq!(&seen[tag][..run.len()], &run[..], "a copy inside transaction {tag:?}");
        }
    }

    #[test]
    fn republication_copies_whole_transactions() {
        let mut s = Simulator::with_options(2, SimOptions::without_transaction_details());
        let mut msgs = s.changes(500);
        let n = msgs.len();
        let added = s.republish(&mut msgs, 4);
        assert!(added > 0);
        assert_eq!(msgs.len(), n + added);
    }

    #[test]
    fn positions_increase_in_every_format() {
        for f in [PositionFormat::Mysql, PositionFormat::Postgresql, PositionFormat::Sqlserver, PositionFormat::Oracle] {
            let mut s = Simulator::with_options(3, SimOptions::ordered_by(f));
            let msgs = s.changes(3000);
            let pos: Vec<String> = ops(&msgs).iter().map(|v| v["metadata"]["stream-position"].as_str().unwrap().to_owned()).collect();
            // The oracle's own reading of each format.
            let num = |p: &str| -> u128 {
                match f {
                    PositionFormat::Mysql => {
                        let (file, off) = p.split_once(':').unwrap();
                        let seq: u128 = file.rsplit_once('.').unwrap().1.parse().unwrap();
                        (seq << 64) + off.parse::<u128>().unwrap()
                    }
                    PositionFormat::Postgresql => {
                        let (hi, lo) = p.split_once('/').unwrap();
                        (u128::from_str_radix(hi, 16).unwrap() << 32) + u128::from_str_radix(lo, 16).unwrap()
                    }
                    PositionFormat::Sqlserver => u128::from_str_radix(&p.replace(':', ""), 16).unwrap(),
                    PositionFormat::Oracle => p.parse().unwrap(),
                }
            };
            assert!(pos.windows(2).all(|w| num(&w[0]) < num(&w[1])), "{f:?}");
            // ... and a plain text sort would get some of them wrong.
            match f {
                PositionFormat::Mysql | PositionFormat::Oracle => {
                    assert!(pos.windows(2).any(|w| w[0] > w[1]), "{f:?}: a text sort would get it right")
                }
                _ => {
                    assert!(pos.windows(2).any(|w| w[0].contains("9/") && w[1].contains("A/") || w[0].contains('9') && w[1].contains('A')))
                }
            }
        }
    }

    #[test]
    fn dead_letters_are_extra_messages_the_model_never_gets() {
        let opts = SimOptions { dead_letters: true, ..SimOptions::without_transaction_details() };
        let mut s = Simulator::with_options(4, opts);
        let mut msgs = s.changes(300);
        assert_eq!(s.expected_dead_letters().len(), 5);
        let text = String::from_utf8(s.expected_dead_letters()[0].payload.clone()).unwrap();
        assert!(text.contains("\"c_numeric\":1.0000000001"), "{text}");
        let before = msgs.len();
        s.duplicate(&mut msgs, 0.2);
        s.republish(&mut msgs, 5);
        for d in s.expected_dead_letters() {
            assert_eq!(msgs.iter().filter(|m| m.payload == d.payload).count(), 1, "never copied");
        }
        assert!(msgs.len() > before);
        assert!(s.model[EVERY_TYPE].keys().all(|k| !k.ends_with("|dead")));
    }
}

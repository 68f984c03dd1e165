//! A simulated source database and the check of BigQuery against it.
//!
//! [`Simulator`] plays an Aurora database replicated by AWS DMS: from a seed
//! it makes a deterministic stream of DMS JSON messages (full load, then
//! inserts, updates, deletes and re-inserts of deleted keys), keeps the model
//! of what each source table holds afterwards, and can repeat messages to
//! imitate duplicate deliveries. [`verify`] reads the final tables and
//! compares them with the model row for row.
//!
//! Used by `landfall demo`, the end-to-end tests and (later) the drill.

pub mod verify;

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

use crate::config::{ColumnConfig, TableConfig};
use crate::decode::ColumnType;

pub const SOURCE_SCHEMA: &str = "sales";

/// The simulated tables, as landfall's config routes them.
pub fn tables() -> Vec<TableConfig> {
    fn cols(c: &[(&str, ColumnType)]) -> Vec<ColumnConfig> {
        c.iter().map(|(n, t)| ColumnConfig::new(n, *t)).collect()
    }
    use ColumnType::*;
    vec![
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
    ]
}

/// One DMS message: Kafka key (the primary key, as DMS partitions by it) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct SimMessage {
    pub table: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
}

/// The model: per source table, primary key (as text) -> row.
pub type Model = BTreeMap<String, BTreeMap<String, Map<String, Value>>>;

pub struct Simulator {
    rng: StdRng,
    tables: Vec<TableConfig>,
    pub model: Model,
    /// Deleted keys per table, candidates for re-insertion.
    deleted: BTreeMap<String, Vec<Map<String, Value>>>,
    clock_micros: i64,
    position: u64,
    next_id: i64,
    /// Whether messages carry DMS transaction details (stream-position etc.).
    pub transaction_details: bool,
    pub produced: usize,
}

fn pk_text(t: &TableConfig, row: &Map<String, Value>) -> String {
    t.primary_key.iter().map(|k| row.get(k).map(|v| v.to_string()).unwrap_or_default()).collect::<Vec<_>>().join("|")
}

impl Simulator {
    pub fn new(seed: u64) -> Simulator {
        let tables = tables();
        let model = tables.iter().map(|t| (t.source.clone(), BTreeMap::new())).collect();
        Simulator {
            rng: StdRng::seed_from_u64(seed),
            tables,
            model,
            deleted: BTreeMap::new(),
            clock_micros: 1_795_750_000_000_000,
            position: 4,
            next_id: 1,
            transaction_details: true,
            produced: 0,
        }
    }

    pub fn tables(&self) -> &[TableConfig] {
        &self.tables
    }

    fn timestamp(&mut self) -> String {
        self.clock_micros += self.rng.random_range(1..2_000);
        crate::decode::value::format_timestamp_micros(self.clock_micros)
    }

    fn random_row(&mut self, table: usize) -> Map<String, Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut row = self.random_values(table);
        match table {
            0 => {
                row.insert("id".into(), json!(id));
            }
            1 => {
                row.insert("order_id".into(), json!(id));
            }
            _ => {
                row.insert("order_id".into(), json!(id / 4));
                row.insert("line".into(), json!(id % 4));
            }
        }
        row
    }

    /// Non-key columns with fresh values; NULLs are left out, as DMS does.
    fn random_values(&mut self, table: usize) -> Map<String, Value> {
        let r = &mut self.rng;
        let mut m = Map::new();
        match table {
            0 => {
                m.insert("name".into(), json!(format!("customer-{}", r.random_range(0..1_000_000))));
                if r.random_bool(0.8) {
                    m.insert("email".into(), json!(format!("c{}@example.com", r.random_range(0..1_000_000))));
                }
                m.insert("active".into(), json!(r.random_bool(0.7)));
                let ms = 1_700_000_000_000i64 + r.random_range(0..100_000_000_000i64);
                let ts = crate::decode::value::format_timestamp_micros(ms * 1000);
                m.insert("updated_at".into(), json!(ts.replace('T', " ").trim_end_matches("000Z").to_string()));
            }
            1 => {
                m.insert("customer_id".into(), json!(r.random_range(1..5000)));
                let status = ["new", "paid", "shipped", "cancelled", "returned"][r.random_range(0..5)];
                m.insert("status".into(), json!(status));
                m.insert("amount".into(), json!(format!("{}.{:02}", r.random_range(0..100_000), r.random_range(0..100))));
                if r.random_bool(0.5) {
                    m.insert("note".into(), json!({"gift": r.random_bool(0.5), "tags": ["a", "b"]}));
                }
            }
            _ => {
                m.insert("sku".into(), json!(format!("SKU-{:05}", r.random_range(0..99_999))));
                m.insert("qty".into(), json!(r.random_range(1..20)));
                m.insert("price".into(), json!(r.random_range(1..100_000) as f64 / 4.0));
            }
        }
        m
    }

    fn message(&mut self, table: usize, operation: &str, data: &Map<String, Value>) -> SimMessage {
        let t = &self.tables[table];
        let (schema, name) = t.source.split_once('.').expect("schema.table");
        let (schema, name) = (schema.to_owned(), name.to_owned());
        let key = pk_text(t, data).into_bytes();
        let source = t.source.clone();
        let timestamp = self.timestamp();
        let mut metadata = json!({
            "timestamp": timestamp,
            "record-type": "data",
            "operation": operation,
            "partition-key-type": "primary-key",
            "schema-name": schema,
            "table-name": name,
        });
        if self.transaction_details {
            self.position += self.rng.random_range(1..400);
            let m = metadata.as_object_mut().expect("object");
            m.insert("transaction-id".into(), json!(self.position / 7));
            m.insert("commit-timestamp".into(), json!(timestamp));
            m.insert(
                "stream-position".into(),
                json!(format!("mysql-bin-changelog.000{}:{}:0", 10 + self.position / 100_000, self.position)),
            );
        }
        let payload = serde_json::to_vec(&json!({"data": data, "metadata": metadata})).expect("json");
        self.produced += 1;
        SimMessage { table: source, key, payload }
    }

    /// The full-load phase: `rows` rows per table, operation `load`.
    pub fn full_load(&mut self, rows: usize) -> Vec<SimMessage> {
        let mut out = Vec::new();
        for table in 0..self.tables.len() {
            for _ in 0..rows {
                let row = self.random_row(table);
                let src = self.tables[table].source.clone();
                let pk = pk_text(&self.tables[table], &row);
                out.push(self.message(table, "load", &row));
                self.model.get_mut(&src).expect("table").insert(pk, row);
            }
        }
        out
    }

    /// `n` CDC changes: inserts, updates, deletes and re-inserts of deleted keys.
    pub fn changes(&mut self, n: usize) -> Vec<SimMessage> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let table = self.rng.random_range(0..self.tables.len());
            let src = self.tables[table].source.clone();
            let existing = self.model[&src].len();
            let roll = self.rng.random_range(0..100);
            if existing == 0 || roll < 25 {
                // Insert: a new key, or sometimes a key deleted earlier.
                let reinsert = self.deleted.get_mut(&src).filter(|d| !d.is_empty()).is_some() && self.rng.random_bool(0.3);
                let row = if reinsert {
                    let deleted = self.deleted.get_mut(&src).expect("checked");
                    let i = self.rng.random_range(0..deleted.len());
                    let mut row = deleted.swap_remove(i);
                    let fresh = self.random_values(table);
                    for (k, v) in fresh {
                        row.insert(k, v);
                    }
                    row
                } else {
                    self.random_row(table)
                };
                let pk = pk_text(&self.tables[table], &row);
                out.push(self.message(table, "insert", &row));
                self.model.get_mut(&src).expect("table").insert(pk, row);
            } else if roll < 80 {
                let i = self.rng.random_range(0..existing);
                let (pk, mut row) = self.model[&src].iter().nth(i).map(|(k, v)| (k.clone(), v.clone())).expect("index");
                let mut key_only = Map::new();
                for k in &self.tables[table].primary_key {
                    key_only.insert(k.clone(), row[k].clone());
                }
                let fresh = self.random_values(table);
                row = key_only;
                row.extend(fresh);
                out.push(self.message(table, "update", &row));
                self.model.get_mut(&src).expect("table").insert(pk, row);
            } else {
                let i = self.rng.random_range(0..existing);
                let (pk, row) = self.model[&src].iter().nth(i).map(|(k, v)| (k.clone(), v.clone())).expect("index");
                out.push(self.message(table, "delete", &row));
                self.model.get_mut(&src).expect("table").remove(&pk);
                self.deleted.entry(src).or_default().push(row);
            }
        }
        out
    }

    /// Repeats about `rate` of the messages, each a little later in the
    /// stream (as DMS does after a task restart). Returns how many were added.
    pub fn duplicate(&mut self, msgs: &mut Vec<SimMessage>, rate: f64) -> usize {
        let picks: Vec<usize> = (0..msgs.len()).filter(|_| self.rng.random_bool(rate)).collect();
        let mut added = 0;
        for (shift, i) in picks.into_iter().enumerate() {
            let src = i + shift;
            let copy = msgs[src].clone();
            let at = (src + 1 + self.rng.random_range(0..50)).min(msgs.len());
            msgs.insert(at, copy);
            added += 1;
        }
        added
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{dms, row, Decoded};

    #[test]
    fn deterministic_and_decodable() {
        let mut a = Simulator::new(7);
        let mut b = Simulator::new(7);
        let (mut ma, mut mb) = (a.full_load(20), b.full_load(20));
        ma.extend(a.changes(500));
        mb.extend(b.changes(500));
        assert_eq!(ma, mb);
        assert_eq!(a.model, b.model);
        let routes = tables();
        for (i, m) in ma.iter().enumerate() {
            let Decoded::Row(c) = dms::decode(&m.payload, "before-image").unwrap() else { panic!() };
            let route = routes.iter().find(|t| t.source == format!("{}.{}", c.schema, c.table)).unwrap();
            row::build(&c, route, &row::Coords { topic: "t".into(), partition: 0, offset: i as i64 }).unwrap();
        }
        let ops: std::collections::HashSet<String> = ma
            .iter()
            .map(|m| serde_json::from_slice::<Value>(&m.payload).unwrap()["metadata"]["operation"].as_str().unwrap().to_owned())
            .collect();
        for op in ["load", "insert", "update", "delete"] {
            assert!(ops.contains(op), "{op} missing");
        }
    }

    #[test]
    fn duplicates_are_exact_copies() {
        let mut s = Simulator::new(1);
        let mut msgs = s.changes(1000);
        let before = msgs.len();
        let added = s.duplicate(&mut msgs, 0.05);
        assert!(added > 20 && added < 100, "{added}");
        assert_eq!(msgs.len(), before + added);
        let distinct: std::collections::HashSet<&Vec<u8>> = msgs.iter().map(|m| &m.payload).collect();
        assert_eq!(distinct.len(), before);
    }
}

//! The BigQuery table contract: the names and columns of the tables landfall
//! writes and reads (CDC log tables, final tables, tombstone tables, the
//! dead-letter table). Decode builds log rows with these columns, the sink
//! creates the tables, the merge reads them: one definition for all three.

use serde_json::{Map, Value};

use crate::decode::ident::Quoted;
use crate::key::DedupKey;

/// A row of a CDC log table, keyed by its dedup key (also its insertId):
/// what decode builds, the WAL keeps pending, and the sink ships.
///
/// The row is held as the JSON text of its object, encoded once when it is
/// built: the WAL record, the request size and the insertAll body all use
/// those bytes as they are (encoding the row for each of them was a quarter
/// of the bridge's CPU, and a map per row in flight most of its memory).
#[derive(Clone, PartialEq, Eq)]
pub struct LogRow {
    pub key: DedupKey,
    /// Every column but `_landfall_ingested` (stamped per send attempt), as
    /// the text of one JSON object, each name once ([`RowText`], or a
    /// serde_json encoding of a map): it starts with `{` and ends with `}`.
    text: Box<[u8]>,
}

impl LogRow {
    /// The row of `json`, encoded (its `_landfall_ingested`, if any, is left out).
    pub fn new(key: DedupKey, json: &Map<String, Value>) -> LogRow {
        let text = if json.contains_key(COL_INGESTED) {
            let mut json = json.clone();
            json.remove(COL_INGESTED);
            encode(&json)
        } else {
            encode(json)
        };
        LogRow { key, text: text.into_boxed_slice() }
    }

    /// The row of JSON object text kept earlier (a pending WAL record, a
    /// refused row): it is parsed, so that text that is not one JSON object
    /// is an error here, never a malformed request body later.
    pub fn from_text(key: DedupKey, text: &[u8]) -> Result<LogRow, serde_json::Error> {
        let json: Map<String, Value> = serde_json::from_slice(text)?;
        Ok(LogRow::new(key, &json))
    }

    /// The row's JSON object text.
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    /// The row as a JSON map (parsed again: for dead letters and tests, not
    /// the hot path).
    pub fn json(&self) -> Map<String, Value> {
        serde_json::from_slice(&self.text).unwrap_or_default()
    }
}

/// A log row's JSON object text, written field by field (what decode builds
/// on the hot path: no map per row, no copy of the source's strings).
///
/// The caller writes each name once and never `_landfall_ingested` (stamped
/// per send attempt): the names are the bookkeeping columns and the
/// configured (validated, distinct) source columns.
pub struct RowText {
    buf: Vec<u8>,
}

impl Default for RowText {
    fn default() -> Self {
        Self::new()
    }
}

impl RowText {
    pub fn new() -> RowText {
        let mut buf = Vec::with_capacity(320);
        buf.push(b'{');
        RowText { buf }
    }

    fn name(&mut self, name: &str) {
        debug_assert!(name != COL_INGESTED, "stamped per send attempt, never kept");
        if self.buf.len() > 1 {
            self.buf.push(b',');
        }
        // Writing JSON into memory cannot fail.
        let _ = serde_json::to_writer(&mut self.buf, name);
        self.buf.push(b':');
    }

    /// Writes `name: value`.
    pub fn value(&mut self, name: &str, value: &Value) {
        self.name(name);
        let _ = serde_json::to_writer(&mut self.buf, value);
    }

    /// Writes `name: "text"` (escaped).
    pub fn str(&mut self, name: &str, text: &str) {
        self.name(name);
        let _ = serde_json::to_writer(&mut self.buf, text);
    }

    /// Writes `name: "<hex>"` of 32 key bytes, as [`DedupKey::to_hex`] spells them.
    pub fn key(&mut self, name: &str, key: &DedupKey) {
        self.name(name);
        self.buf.push(b'"');
        self.buf.extend_from_slice(&key.hex());
        self.buf.push(b'"');
    }

    /// Writes `name: n`.
    pub fn int(&mut self, name: &str, n: i64) {
        self.name(name);
        use std::io::Write;
        let _ = write!(self.buf, "{n}");
    }

    /// The row of `key` with the fields written.
    pub fn finish(mut self, key: DedupKey) -> LogRow {
        self.buf.push(b'}');
        LogRow { key, text: self.buf.into_boxed_slice() }
    }
}

/// A map's JSON text. serde_json cannot fail to encode a `Map<String, Value>`
/// into memory (its keys are strings and a `Value` always serializes), so
/// there is no error to carry.
fn encode(json: &Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let _ = serde_json::to_writer(&mut out, json);
    out
}

impl std::fmt::Debug for LogRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogRow").field("key", &self.key).field("json", &String::from_utf8_lossy(&self.text)).finish()
    }
}

/// Log-table bookkeeping columns (every log row has them; the source
/// columns follow as configured).
pub const COL_KEY: &str = "_landfall_key";
pub const COL_OP: &str = "_landfall_op";
pub const COL_ORDER: &str = "_landfall_order";
pub const COL_INGESTED: &str = "_landfall_ingested";
pub const COL_SOURCE_TS: &str = "_landfall_source_ts";
pub const COL_TOPIC: &str = "_landfall_topic";
pub const COL_PARTITION: &str = "_landfall_partition";
pub const COL_OFFSET: &str = "_landfall_offset";
/// INT64 bitmask: bit `i` set = `keep_when_missing[i]` was absent from this
/// update (so it is unchanged). NULL (left out) when no bit is set.
pub const COL_MISSING: &str = "_landfall_missing";

/// At most this many `keep_when_missing` columns per table (bits of an INT64).
pub const MAX_KEEP_WHEN_MISSING: usize = 63;

/// The tombstone table of a final table.
pub fn tombstone_table_name(final_table: &str) -> String {
    format!("{final_table}__tombstones")
}

/// `CREATE TABLE IF NOT EXISTS` for a final table, keyed (NOT ENFORCED, as
/// BigQuery allows) and clustered by its primary key.
pub fn create_final_table_statement(target: &Quoted, columns: &[(Quoted, &'static str)], primary_key: &[Quoted]) -> String {
    let mut defs: Vec<String> = columns.iter().map(|(c, ty)| format!("{c} {ty}")).collect();
    defs.push(format!("{} STRING", Quoted::internal(COL_ORDER)));
    defs.push(format!("{} STRING", Quoted::internal(COL_KEY)));
    let pk = primary_key.iter().map(Quoted::as_str).collect::<Vec<_>>().join(", ");
    defs.push(format!("PRIMARY KEY ({pk}) NOT ENFORCED"));
    let cluster = primary_key.iter().take(4).map(Quoted::as_str).collect::<Vec<_>>().join(", ");
    format!("CREATE TABLE IF NOT EXISTS {target} (\n  {}\n) CLUSTER BY {cluster}", defs.join(",\n  "))
}

/// Dead-letter table columns (besides `_landfall_key` and `_landfall_ingested`).
pub const COL_DL_TOPIC: &str = "topic";
pub const COL_DL_PARTITION: &str = "partition";
pub const COL_DL_OFFSET: &str = "offset";
pub const COL_DL_REASON: &str = "reason";
pub const COL_DL_PAYLOAD: &str = "payload";
pub const COL_DL_PAYLOAD_LEN: &str = "payload_length";
pub const COL_DL_PAYLOAD_HASH: &str = "payload_blake3";
pub const COL_DL_AT: &str = "dead_lettered_at";
/// `decode` or `bigquery`: which step refused it.
pub const COL_DL_STAGE: &str = "stage";
/// The Kafka message key (BYTES).
pub const COL_DL_MESSAGE_KEY: &str = "message_key";
/// The Kafka headers as JSON text: `[[name, base64 value or null], ...]`.
pub const COL_DL_HEADERS: &str = "message_headers";
pub const COL_DL_MESSAGE_TS: &str = "message_timestamp";
/// For a row BigQuery refused: its log table, and the row as JSON text.
pub const COL_DL_TABLE: &str = "log_table";
pub const COL_DL_ROW: &str = "refused_row";

//! The BigQuery table contract: the names and columns of the tables landfall
//! writes and reads (CDC log tables, final tables, tombstone tables, the
//! dead-letter table). Decode builds log rows with these columns, the sink
//! creates the tables, the merge reads them: one definition for all three.

use serde_json::{Map, Value};

use crate::decode::ident::Quoted;
use crate::key::DedupKey;

/// A row of a CDC log table, keyed by its dedup key (also its insertId):
/// what decode builds, the WAL keeps pending, and the sink ships.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRow {
    pub key: DedupKey,
    /// Every column but `_landfall_ingested`, which is stamped per send attempt.
    pub json: Map<String, Value>,
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

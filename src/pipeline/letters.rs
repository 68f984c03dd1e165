//! Dead letters as the pipeline builds them: a message that could not
//! become a row ([`dead_letter`]), a row BigQuery refused
//! ([`refused_row_letter`]), and the dead-letter table's row of either
//! ([`dead_letter_row`]). Every letter keeps its Kafka message when it is at
//! hand (key, headers, timestamp, the value or its first
//! [`DEAD_LETTER_PAYLOAD_LIMIT`] bytes with length and hash).

use serde_json::{Map, Value};

use crate::decode::row::Coords;
use crate::key::DedupKey;
use crate::table::*;
use crate::wal::{now_ms, DeadLetter, KafkaMessage, RefusedRow, Stage};

use super::Msg;

/// Dead letters keep at most this much of the message value (plus its hash and length).
pub const DEAD_LETTER_PAYLOAD_LIMIT: usize = 256 * 1024;

/// The message as a dead letter keeps it: key, headers, timestamp, and the
/// value (its first [`DEAD_LETTER_PAYLOAD_LIMIT`] bytes, with length and hash).
pub fn kept_message(msg: &Msg) -> KafkaMessage {
    let value = msg.payload.as_deref().unwrap_or_default();
    KafkaMessage {
        key: msg.key.clone(),
        headers: msg.headers.clone(),
        timestamp_ms: msg.produced_ms,
        has_value: msg.payload.is_some(),
        value_prefix: value[..value.len().min(DEAD_LETTER_PAYLOAD_LIMIT)].to_vec(),
        value_len: value.len() as u64,
        value_hash: *blake3::hash(value).as_bytes(),
    }
}

/// A message that could not become a row ([`Stage::Decode`]).
pub fn dead_letter(msg: &Msg, reason: String) -> DeadLetter {
    letter(msg.coords(), Stage::Decode, reason, Some(kept_message(msg)), None)
}

/// A row BigQuery refused, with the message it came from when that is at
/// hand (not for a row re-shipped after a restart whose message could not
/// be read again).
pub fn refused_row_letter(table: &str, row: &LogRow, msg: Option<&Msg>, reason: String) -> DeadLetter {
    let at = msg.map(Msg::coords).unwrap_or_else(|| coords_of(&row.json()));
    let json = row.text().to_vec();
    letter(at, Stage::BigQuery, reason, msg.map(kept_message), Some(RefusedRow { table: table.to_owned(), key: row.key.0, json }))
}

fn letter(at: Coords, stage: Stage, reason: String, message: Option<KafkaMessage>, row: Option<RefusedRow>) -> DeadLetter {
    let id = DedupKey::of_dead_letter(
        &at,
        message.as_ref().and_then(|m| m.timestamp_ms),
        message.as_ref().map(|m| &m.value_hash),
        row.as_ref().map(|r| DedupKey(r.key)).as_ref(),
    );
    DeadLetter { id: id.0, topic: at.topic, partition: at.partition, offset: at.offset, stage, reason, message, row, at_ms: now_ms() }
}

/// The dead-letter table row of a dead letter (its `_landfall_key` is the
/// letter's id). Message value and refused row are kept up to
/// [`DEAD_LETTER_PAYLOAD_LIMIT`] bytes each (the WAL keeps the whole row).
pub fn dead_letter_row(d: &DeadLetter) -> LogRow {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    let key = DedupKey(d.id);
    let mut json = Map::new();
    json.insert(COL_KEY.into(), Value::String(key.to_hex()));
    json.insert(COL_DL_TOPIC.into(), Value::String(d.topic.clone()));
    json.insert(COL_DL_PARTITION.into(), Value::from(d.partition));
    json.insert(COL_DL_OFFSET.into(), Value::from(d.offset));
    json.insert(COL_DL_STAGE.into(), Value::String(d.stage.name().into()));
    json.insert(COL_DL_REASON.into(), Value::String(d.reason.clone()));
    if let Some(m) = &d.message {
        if m.has_value {
            json.insert(COL_DL_PAYLOAD.into(), Value::String(B64.encode(&m.value_prefix)));
        }
        json.insert(COL_DL_PAYLOAD_LEN.into(), Value::from(m.value_len));
        json.insert(COL_DL_PAYLOAD_HASH.into(), Value::String(blake3::Hash::from(m.value_hash).to_hex().to_string()));
        if let Some(k) = &m.key {
            json.insert(COL_DL_MESSAGE_KEY.into(), Value::String(B64.encode(k)));
        }
        if !m.headers.is_empty() {
            let headers: Vec<Value> =
                m.headers.iter().map(|(name, v)| serde_json::json!([name, v.as_ref().map(|v| B64.encode(v))])).collect();
            json.insert(COL_DL_HEADERS.into(), Value::String(Value::Array(headers).to_string()));
        }
        if let Some(t) = m.timestamp_ms {
            json.insert(COL_DL_MESSAGE_TS.into(), Value::String(crate::decode::value::format_timestamp_micros(t.saturating_mul(1000))));
        }
    }
    if let Some(r) = &d.row {
        json.insert(COL_DL_TABLE.into(), Value::String(r.table.clone()));
        let text = String::from_utf8_lossy(&r.json[..r.json.len().min(DEAD_LETTER_PAYLOAD_LIMIT)]).into_owned();
        json.insert(COL_DL_ROW.into(), Value::String(text));
    }
    json.insert(COL_DL_AT.into(), Value::String(crate::decode::value::format_timestamp_micros(d.at_ms as i64 * 1000)));
    LogRow::new(key, &json)
}

/// The Kafka coordinates a log row records.
pub(super) fn coords_of(json: &Map<String, Value>) -> Coords {
    Coords {
        topic: json.get(COL_TOPIC).and_then(Value::as_str).unwrap_or("").to_owned(),
        partition: json.get(COL_PARTITION).and_then(Value::as_i64).unwrap_or(-1) as i32,
        offset: json.get(COL_OFFSET).and_then(Value::as_i64).unwrap_or(-1),
    }
}

//! A decoded change -> the row(s) appended to its CDC log table.
//!
//! Log table columns: landfall's bookkeeping columns (`_landfall_*`, below)
//! followed by the source columns as configured. The row carries its dedup
//! key (also its insertId) and its ordering value, so the MERGE can
//! de-duplicate and pick the latest change per primary key from the log alone.
//!
//! An update that changes the primary key (detected through the before image)
//! becomes two rows: a delete of the old key and an upsert of the new one.

use serde_json::{Map, Value};

use super::{ident, value, Change, Op, Rejection};
use crate::config::TableConfig;
use crate::key::DedupKey;

pub const COL_KEY: &str = "_landfall_key";
pub const COL_OP: &str = "_landfall_op";
pub const COL_ORDER: &str = "_landfall_order";
pub const COL_INGESTED: &str = "_landfall_ingested";
pub const COL_SOURCE_TS: &str = "_landfall_source_ts";
pub const COL_TOPIC: &str = "_landfall_topic";
pub const COL_PARTITION: &str = "_landfall_partition";
pub const COL_OFFSET: &str = "_landfall_offset";

/// Where a message was read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Coords {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A row for a log table, keyed by its dedup key.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRow {
    pub key: DedupKey,
    /// Every column but `_landfall_ingested`, which is stamped per send attempt.
    pub json: Map<String, Value>,
}

/// The total order of changes to one primary key, as a string compared
/// byte-wise (docs/design.md, "Ordering"):
///
/// 1. `p` + the source log position (`metadata.stream-position`) with every
///    run of decimal digits compared by numeric value, when the envelope has one;
///    else `t` + `metadata.timestamp` in microseconds, zero-padded;
/// 2. then the Kafka partition and offset, zero-padded, as tie-breakers.
pub fn order_value(change: &Change, partition: i32, offset: i64) -> String {
    let mut out = String::with_capacity(64);
    match &change.stream_position {
        Some(pos) => {
            out.push('p');
            push_natural(&mut out, pos);
        }
        None => {
            out.push('t');
            // Shift so that timestamps before 1970 still sort correctly.
            let shifted = (change.timestamp_micros as i128) + (1i128 << 62);
            out.push_str(&format!("{shifted:020}"));
        }
    }
    out.push_str(&format!("/{:010}/{:020}", partition.max(0), offset.max(0)));
    out
}

/// Appends `s` with every run of ASCII digits replaced by its length (two
/// digits) and its value without leading zeros, so that byte-wise comparison
/// orders digit runs numerically ("9" < "10").
fn push_natural(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let digits = s[start..i].trim_start_matches('0');
            let digits = if digits.is_empty() { "0" } else { digits };
            // '~' marks a number; runs longer than 99 digits compare as text.
            out.push('~');
            out.push_str(&format!("{:02}", digits.len().min(99)));
            out.push_str(digits);
        } else {
            let c = s[i..].chars().next().unwrap_or('?');
            out.push(c);
            i += c.len_utf8();
        }
    }
}

/// Builds the log row(s) of a change for the table `route`.
pub fn build(change: &Change, route: &TableConfig, at: &Coords) -> Result<Vec<LogRow>, Rejection> {
    let columns = convert_columns(&change.data, route)?;
    let pk = primary_key(&columns, route)?;
    let order = order_value(change, at.partition, at.offset);
    let mut rows = Vec::with_capacity(2);
    if change.op == Op::Upsert {
        if let Some(before) = &change.before {
            // A before image with the whole old key: did the key change?
            let old = convert_columns(before, route)?;
            if let Ok(old_pk) = primary_key(&old, route) {
                if old_pk != pk {
                    let key = DedupKey::of_change(change, 1);
                    let mut old_row = old_pk.into_iter().collect::<Map<_, _>>();
                    bookkeeping(&mut old_row, key, Op::Delete, &order, change, at);
                    rows.push(LogRow { key, json: old_row });
                }
            }
        }
    }
    let key = DedupKey::of_change(change, 0);
    let mut json = columns;
    bookkeeping(&mut json, key, change.op, &order, change, at);
    rows.push(LogRow { key, json });
    Ok(rows)
}

fn bookkeeping(row: &mut Map<String, Value>, key: DedupKey, op: Op, order: &str, change: &Change, at: &Coords) {
    row.insert(COL_KEY.into(), Value::String(key.to_hex()));
    row.insert(COL_OP.into(), Value::String(op.code().into()));
    row.insert(COL_ORDER.into(), Value::String(order.to_owned()));
    row.insert(COL_SOURCE_TS.into(), Value::String(value::format_timestamp_micros(change.timestamp_micros)));
    row.insert(COL_TOPIC.into(), Value::String(at.topic.clone()));
    row.insert(COL_PARTITION.into(), Value::from(at.partition));
    row.insert(COL_OFFSET.into(), Value::from(at.offset));
}

/// Maps message columns onto the configured ones and converts their values.
fn convert_columns(data: &Map<String, Value>, route: &TableConfig) -> Result<Map<String, Value>, Rejection> {
    let mut out = Map::new();
    for (name, v) in data {
        let column =
            route.columns.iter().find(|c| &c.name == name).or_else(|| route.columns.iter().find(|c| c.name.eq_ignore_ascii_case(name)));
        let Some(column) = column else {
            ident::validate_column(name)?;
            return Err(Rejection::UnknownColumn { table: route.source.clone(), column: name.clone() });
        };
        let converted = value::convert(column.ty, v).map_err(|message| Rejection::BadValue { column: column.name.clone(), message })?;
        if !converted.is_null() {
            out.insert(column.name.clone(), converted);
        }
    }
    Ok(out)
}

/// The primary-key columns of a converted row, in configured order.
fn primary_key(columns: &Map<String, Value>, route: &TableConfig) -> Result<Vec<(String, Value)>, Rejection> {
    route
        .primary_key
        .iter()
        .map(|k| match columns.get(k) {
            Some(v) if !v.is_null() => Ok((k.clone(), v.clone())),
            _ => Err(Rejection::MissingPrimaryKey(k.clone())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ColumnConfig;
    use crate::decode::{dms, ColumnType, Decoded};

    fn route() -> TableConfig {
        TableConfig {
            source: "s.t".into(),
            log_table: "t_log".into(),
            final_table: "t".into(),
            primary_key: vec!["id".into()],
            columns: vec![
                ColumnConfig { name: "id".into(), ty: ColumnType::Int64 },
                ColumnConfig { name: "name".into(), ty: ColumnType::String },
            ],
        }
    }

    fn change(op: &str, data: &str, extra: &str) -> Change {
        let text = format!(
            r#"{{"data":{data}{extra},"metadata":{{"timestamp":"2026-11-27T03:28:32Z","record-type":"data","operation":"{op}","schema-name":"s","table-name":"t"}}}}"#
        );
        match dms::decode(text.as_bytes(), "before-image").unwrap() {
            Decoded::Row(c) => c,
            other => panic!("{other:?}"),
        }
    }

    fn at(offset: i64) -> Coords {
        Coords { topic: "dms".into(), partition: 3, offset }
    }

    #[test]
    fn builds_a_row_with_bookkeeping() {
        let rows = build(&change("insert", r#"{"id":"7","name":"x"}"#, ""), &route(), &at(9)).unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0].json;
        assert_eq!(r["id"], 7);
        assert_eq!(r[COL_OP], "U");
        assert_eq!(r[COL_KEY], rows[0].key.to_hex());
        assert_eq!(r[COL_OFFSET], 9);
        assert!(r[COL_ORDER].as_str().unwrap().starts_with('t'));
    }

    #[test]
    fn missing_columns_are_null_and_unknown_ones_rejected() {
        let rows = build(&change("update", r#"{"id":1}"#, ""), &route(), &at(1)).unwrap();
        assert!(!rows[0].json.contains_key("name"));
        let err = build(&change("update", r#"{"id":1,"extra":2}"#, ""), &route(), &at(1)).unwrap_err();
        assert!(matches!(err, Rejection::UnknownColumn { .. }), "{err}");
        let err = build(&change("update", r#"{"id":1,"x; DROP TABLE t":2}"#, ""), &route(), &at(1)).unwrap_err();
        assert!(matches!(err, Rejection::Identifier(_)), "{err}");
        let err = build(&change("delete", r#"{"name":"n"}"#, ""), &route(), &at(1)).unwrap_err();
        assert_eq!(err, Rejection::MissingPrimaryKey("id".into()));
        let err = build(&change("insert", r#"{"id":"one"}"#, ""), &route(), &at(1)).unwrap_err();
        assert!(matches!(err, Rejection::BadValue { .. }), "{err}");
    }

    #[test]
    fn primary_key_change_becomes_delete_plus_upsert() {
        let c = change("update", r#"{"id":2,"name":"x"}"#, r#","before-image":{"id":1}"#);
        let rows = build(&c, &route(), &at(5)).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].json["id"].clone(), rows[0].json[COL_OP].clone()), (Value::from(1), Value::from("D")));
        assert_eq!((rows[1].json["id"].clone(), rows[1].json[COL_OP].clone()), (Value::from(2), Value::from("U")));
        assert_ne!(rows[0].key, rows[1].key);
        // Same key in the before image: one row.
        let c = change("update", r#"{"id":2,"name":"x"}"#, r#","before-image":{"id":2}"#);
        assert_eq!(build(&c, &route(), &at(5)).unwrap().len(), 1);
    }

    #[test]
    fn order_compares_positions_numerically_then_offsets() {
        let mut a = change("update", r#"{"id":1}"#, "");
        let mut b = a.clone();
        a.stream_position = Some("bin.000009:900".into());
        b.stream_position = Some("bin.000010:15".into());
        assert!(order_value(&a, 0, 99) < order_value(&b, 0, 1));
        b.stream_position = a.stream_position.clone();
        assert!(order_value(&a, 0, 9) < order_value(&b, 0, 10));
        let (mut c, mut d) = (a.clone(), a.clone());
        c.stream_position = None;
        d.stream_position = None;
        c.timestamp_micros = 999;
        d.timestamp_micros = 1000;
        assert!(order_value(&c, 0, 50) < order_value(&d, 0, 1));
        d.timestamp_micros = -5;
        assert!(order_value(&d, 0, 1) < order_value(&c, 0, 1));
    }
}

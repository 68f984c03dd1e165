//! A decoded change -> the row(s) appended to its CDC log table.
//!
//! Log table columns: landfall's bookkeeping columns (`_landfall_*`, below)
//! followed by the source columns as configured. The row carries its dedup
//! key (also its insertId) and its ordering value, so the MERGE can
//! de-duplicate and pick the latest change per primary key from the log alone.
//!
//! An update that changes the primary key (detected through the before image)
//! becomes two rows: a delete of the old key and an upsert of the new one.
//!
//! A truncate or drop-table control record becomes one marker row
//! ([`build_control`]): `_landfall_op` `T` or `X`, its own dedup key, an
//! ordering value of the table's form, and no source columns. The MERGE
//! removes every change not newer than it (docs/design.md, "DDL control records").

use std::borrow::Cow;
use std::fmt::Write;

use serde_json::{Map, Value};

use super::{ident, position, value, Change, Control, Op, OrderBy, Rejection};
use crate::config::TableConfig;
use crate::key::DedupKey;

pub use crate::table::{
    COL_INGESTED, COL_KEY, COL_MISSING, COL_OFFSET, COL_OP, COL_ORDER, COL_PARTITION, COL_SOURCE_TS, COL_TOPIC, MAX_KEEP_WHEN_MISSING,
};

pub use crate::source::message::Coords;

pub use crate::table::{LogRow, RowText};

pub use crate::key::Part;

/// The total order of changes to one primary key, as a string compared
/// byte-wise (docs/design.md, "Ordering"). One table uses one form, fixed by
/// its `order_by`, so two forms are never compared:
///
/// * `timestamp`: `t`, `metadata.timestamp` in microseconds, the [`Part`],
///   then the Kafka partition and offset;
/// * a position format: `p`, the normalized `metadata.stream-position`
///   ([`super::position`]), `transaction-record-id`, the [`Part`], then the
///   Kafka partition and offset. A change without a position is rejected,
///   except a full-load row (`load`), which sorts before every position.
pub fn order_value(change: &Change, order_by: OrderBy, part: Part, partition: i32, offset: i64) -> Result<String, Rejection> {
    let of = OrderOf {
        timestamp_micros: change.timestamp_micros,
        stream_position: change.stream_position.as_deref(),
        transaction_record_id: change.transaction_record_id.as_deref(),
        full_load: change.operation == "load",
    };
    of.value(order_by, part, partition, offset)
}

/// What the ordering value of a change or control record is made of.
struct OrderOf<'a> {
    timestamp_micros: i64,
    stream_position: Option<&'a str>,
    transaction_record_id: Option<&'a str>,
    /// A DMS `load` row: without a position it sorts before every position.
    full_load: bool,
}

impl OrderOf<'_> {
    fn value(&self, order_by: OrderBy, part: Part, partition: i32, offset: i64) -> Result<String, Rejection> {
        let mut out = String::with_capacity(96);
        match order_by {
            OrderBy::Timestamp => {
                // Shift so that timestamps before 1970 still sort correctly.
                let shifted = (self.timestamp_micros as i128) + (1i128 << 62);
                let _ = write!(out, "t{shifted:020}");
            }
            _ if self.stream_position.is_none() && self.full_load => {
                // Full-load rows carry no log position; DMS applies the changes
                // cached during the load after it, so they sort before every
                // position ('!' < any digit), among themselves by timestamp.
                let shifted = (self.timestamp_micros as i128) + (1i128 << 62);
                let _ = write!(out, "p!{shifted:020}");
            }
            format => {
                let pos = self.stream_position.ok_or_else(|| Rejection::BadMetadata {
                field: "stream-position",
                message: format!(
                    "missing, but the table is ordered by {} positions (enable IncludeTransactionDetails on the DMS endpoint, or set order_by = \"timestamp\")",
                    format.name()
                ),
            })?;
                let normalized =
                    position::normalize(format, pos).map_err(|message| Rejection::BadMetadata { field: "stream-position", message })?;
                let record = match self.transaction_record_id {
                    None => 0,
                    Some(r) => r.trim().parse::<u64>().map_err(|_| Rejection::BadMetadata {
                        field: "transaction-record-id",
                        message: "must be a non-negative integer".into(),
                    })?,
                };
                let _ = write!(out, "p{normalized}/{record:020}");
            }
        }
        // Writing into a String cannot fail.
        let _ = write!(out, "/{}/{:010}/{:020}", part as u8, partition.max(0), offset.max(0));
        Ok(out)
    }
}

/// The marker row a truncate or drop-table control record becomes in the
/// log table of `route`: `_landfall_op` `T` (truncate) or `X` (drop-table),
/// its dedup key ([`DedupKey::of_control`]) and its ordering value (the
/// table's `order_by`, [`Part::Control`]), and no source columns. Other
/// kinds have no row (`None`). Like a change, a marker without what its
/// table's ordering needs (a timestamp; a position of the configured format)
/// is rejected, never ordered another way.
pub fn build_control(control: &Control, route: &TableConfig, at: &Coords) -> Result<Option<LogRow>, Rejection> {
    let Some(op) = control.kind.marker_op() else {
        return Ok(None);
    };
    let micros = control.timestamp_micros.ok_or(Rejection::BadMetadata { field: "timestamp", message: "missing".into() })?;
    let of = OrderOf {
        timestamp_micros: micros,
        stream_position: control.stream_position.as_deref(),
        transaction_record_id: control.transaction_record_id.as_deref(),
        full_load: false,
    };
    let order = of.value(route.order_by(), Part::Control, at.partition, at.offset)?;
    let key = DedupKey::of_control(control, at);
    let mut row = RowText::new();
    row.key(COL_KEY, &key);
    row.str(COL_OP, op);
    row.str(COL_ORDER, &order);
    row.str(COL_SOURCE_TS, &value::format_timestamp_micros(micros));
    row.str(COL_TOPIC, &at.topic);
    row.int(COL_PARTITION, i64::from(at.partition));
    row.int(COL_OFFSET, at.offset);
    Ok(Some(row.finish(key)))
}

/// Builds the log row(s) of a change for the table `route`.
pub fn build(change: &Change, route: &TableConfig, at: &Coords) -> Result<Vec<LogRow>, Rejection> {
    let columns = convert_columns(&change.data, route)?;
    let pk = primary_key(&columns, route)?;
    let order_by = route.order_by();
    let mut rows = Vec::with_capacity(2);
    if change.op == Op::Upsert {
        if let Some(before) = &change.before {
            // A before image with the whole old key: did the key change?
            let old = convert_columns(before, route)?;
            if let Ok(old_pk) = primary_key(&old, route) {
                if old_pk != pk {
                    let key = DedupKey::of_change(change, at, Part::OldKeyDelete);
                    let order = order_value(change, order_by, Part::OldKeyDelete, at.partition, at.offset)?;
                    let mut old_row = RowText::new();
                    bookkeeping(&mut old_row, &key, Op::Delete, &order, change, at);
                    for (name, v) in route.primary_key.iter().zip(old_pk) {
                        old_row.value(name, v);
                    }
                    rows.push(old_row.finish(key));
                }
            }
        }
    }
    let key = DedupKey::of_change(change, at, Part::Change);
    let order = order_value(change, order_by, Part::Change, at.partition, at.offset)?;
    let mut row = RowText::new();
    bookkeeping(&mut row, &key, change.op, &order, change, at);
    for (name, v) in &columns {
        row.value(name, v);
    }
    if let Some(mask) = missing_keep_columns(change, route) {
        row.int(COL_MISSING, mask);
    }
    rows.push(row.finish(key));
    Ok(rows)
}

fn bookkeeping(row: &mut RowText, key: &DedupKey, op: Op, order: &str, change: &Change, at: &Coords) {
    row.key(COL_KEY, key);
    row.str(COL_OP, op.code());
    row.str(COL_ORDER, order);
    row.str(COL_SOURCE_TS, &value::format_timestamp_micros(change.timestamp_micros));
    row.str(COL_TOPIC, &at.topic);
    row.int(COL_PARTITION, i64::from(at.partition));
    row.int(COL_OFFSET, at.offset);
}

/// The `keep_when_missing` columns a DMS `update` leaves out, as a bitmask
/// (bit `i`: `route.keep_when_missing[i]`), or `None` when there are none.
/// Only an update can mean "unchanged" by leaving a column out: an insert or
/// load is a full image (a missing column is NULL) and a delete ends the row.
/// A column present with a JSON `null` is present: it sets NULL. Names match
/// as in [`convert_columns`] (exactly, or ignoring ASCII case).
fn missing_keep_columns(change: &Change, route: &TableConfig) -> Option<i64> {
    if change.op != Op::Upsert || change.operation != "update" {
        return None;
    }
    let mut mask = 0i64;
    for (i, keep) in route.keep_when_missing.iter().take(MAX_KEEP_WHEN_MISSING).enumerate() {
        if !change.data.keys().any(|name| name == keep || name.eq_ignore_ascii_case(keep)) {
            mask |= 1 << i;
        }
    }
    (mask != 0).then_some(mask)
}

/// A change's columns, converted: each configured column's name and its
/// value, in message order, NULLs left out (BigQuery reads a missing column
/// as NULL). A value written as it came is borrowed from the message.
type Columns<'a> = Vec<(&'a str, Cow<'a, Value>)>;

/// Maps message columns onto the configured ones and converts their values.
///
/// A message name matches a configured column exactly or, failing that,
/// ignoring ASCII case (sources differ in how they case names). Two message
/// names that land on one column (`{"ID":1,"id":2}`) are ambiguous: rejected,
/// like duplicate keys, rather than guessed.
fn convert_columns<'a>(data: &'a Map<String, Value>, route: &'a TableConfig) -> Result<Columns<'a>, Rejection> {
    let mut out: Columns<'a> = Vec::with_capacity(data.len());
    let mut seen: Vec<(&str, &str)> = Vec::with_capacity(data.len());
    for (name, v) in data {
        let column =
            route.columns.iter().find(|c| &c.name == name).or_else(|| route.columns.iter().find(|c| c.name.eq_ignore_ascii_case(name)));
        let Some(column) = column else {
            ident::validate_column(name)?;
            return Err(Rejection::UnknownColumn { table: route.source.clone(), column: name.clone() });
        };
        if let Some((other, _)) = seen.iter().find(|(_, c)| *c == column.name) {
            return Err(Rejection::AmbiguousColumn { column: column.name.clone(), first: (*other).to_owned(), second: name.clone() });
        }
        seen.push((name, &column.name));
        let converted =
            value::convert_borrowed(column, v).map_err(|message| Rejection::BadValue { column: column.name.clone(), message })?;
        if !converted.is_null() {
            out.push((&column.name, converted));
        }
    }
    Ok(out)
}

/// The columns of `change` (its data, then its before image) that `route`
/// does not configure, matched as in [`convert_columns`], in message order,
/// one per name ignoring ASCII case. Each is a valid column name: a name
/// that is not is the message's rejection, as without schema evolution.
pub fn unknown_columns(change: &Change, route: &TableConfig) -> Result<Vec<String>, Rejection> {
    let mut out: Vec<String> = Vec::new();
    for name in change.data.keys().chain(change.before.iter().flat_map(|b| b.keys())) {
        let known = route.columns.iter().any(|c| c.name.eq_ignore_ascii_case(name));
        if !known && !out.iter().any(|o| o.eq_ignore_ascii_case(name)) {
            ident::validate_column(name)?;
            out.push(name.clone());
        }
    }
    Ok(out)
}

/// The primary-key values of a converted row, in configured order.
fn primary_key<'c>(columns: &'c Columns<'_>, route: &TableConfig) -> Result<Vec<&'c Value>, Rejection> {
    route
        .primary_key
        .iter()
        .map(|k| match columns.iter().find(|(name, _)| name == k) {
            Some((_, v)) if !v.is_null() => Ok(v.as_ref()),
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
        TableConfig::new(
            "s.t",
            "t_log",
            "t",
            &["id"],
            vec![ColumnConfig::new("id", ColumnType::Int64), ColumnConfig::new("name", ColumnType::String)],
        )
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
        let r = &rows[0].json();
        assert_eq!(r["id"], 7);
        assert_eq!(r[COL_OP], "U");
        assert_eq!(r[COL_KEY], rows[0].key.to_hex());
        assert_eq!(r[COL_OFFSET], 9);
        assert!(r[COL_ORDER].as_str().unwrap().starts_with('t'));
    }

    #[test]
    fn missing_columns_are_null_and_unknown_ones_rejected() {
        let rows = build(&change("update", r#"{"id":1}"#, ""), &route(), &at(1)).unwrap();
        assert!(!rows[0].json().contains_key("name"));
        let err = build(&change("update", r#"{"id":1,"extra":2}"#, ""), &route(), &at(1)).unwrap_err();
        assert!(matches!(err, Rejection::UnknownColumn { .. }), "{err}");
        let err = build(&change("update", r#"{"id":1,"x; DROP TABLE t":2}"#, ""), &route(), &at(1)).unwrap_err();
        assert!(matches!(err, Rejection::Identifier(_)), "{err}");
        let err = build(&change("delete", r#"{"name":"n"}"#, ""), &route(), &at(1)).unwrap_err();
        assert_eq!(err, Rejection::MissingPrimaryKey("id".into()));
        let err = build(&change("insert", r#"{"id":"one"}"#, ""), &route(), &at(1)).unwrap_err();
        assert!(matches!(err, Rejection::BadValue { .. }), "{err}");
        let err = build(&change("insert", r#"{"ID":1,"id":2}"#, ""), &route(), &at(1)).unwrap_err();
        assert!(matches!(err, Rejection::AmbiguousColumn { .. }), "{err}");
        assert!(err.to_string().contains("`ID`") && err.to_string().contains("`id`"), "{err}");
        // One spelling in another case is fine.
        assert_eq!(build(&change("insert", r#"{"ID":1,"NAME":"x"}"#, ""), &route(), &at(1)).unwrap()[0].json()["name"], "x");
    }

    #[test]
    fn updates_record_the_keep_columns_they_leave_out() {
        let mut route = route();
        route.columns.push(ColumnConfig::new("doc", ColumnType::String));
        route.keep_when_missing = vec!["name".into(), "doc".into()];
        let mask_in = |route: &TableConfig, op: &str, data: &str| {
            build(&change(op, data, ""), route, &at(1)).unwrap()[0].json().get(COL_MISSING).cloned()
        };
        let mask = |op: &str, data: &str| mask_in(&route, op, data);
        assert_eq!(mask("update", r#"{"id":1}"#), Some(Value::from(3)));
        assert_eq!(mask("update", r#"{"id":1,"name":"x"}"#), Some(Value::from(2)));
        assert_eq!(mask("update", r#"{"id":1,"DOC":"d"}"#), Some(Value::from(1)), "names match ignoring case");
        assert_eq!(mask("update", r#"{"id":1,"name":null,"doc":"d"}"#), None, "an explicit null is a value");
        // Full images and deletes never keep.
        assert_eq!(mask("insert", r#"{"id":1}"#), None);
        assert_eq!(mask("load", r#"{"id":1}"#), None);
        assert_eq!(mask("delete", r#"{"id":1}"#), None);
        // Without keep columns nothing is recorded.
        route.keep_when_missing.clear();
        assert_eq!(mask_in(&route, "update", r#"{"id":1}"#), None);
    }

    #[test]
    fn primary_key_change_becomes_delete_plus_upsert() {
        let c = change("update", r#"{"id":2,"name":"x"}"#, r#","before-image":{"id":1}"#);
        let rows = build(&c, &route(), &at(5)).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].json()["id"].clone(), rows[0].json()[COL_OP].clone()), (Value::from(1), Value::from("D")));
        assert_eq!((rows[1].json()["id"].clone(), rows[1].json()[COL_OP].clone()), (Value::from(2), Value::from("U")));
        assert_ne!(rows[0].key, rows[1].key);
        // Same key in the before image: one row.
        let c = change("update", r#"{"id":2,"name":"x"}"#, r#","before-image":{"id":2}"#);
        assert_eq!(build(&c, &route(), &at(5)).unwrap().len(), 1);
    }

    #[test]
    fn order_compares_positions_by_value_then_record_then_offsets() {
        let ord = |c: &Change, f: OrderBy, part: Part, p: i32, o: i64| order_value(c, f, part, p, o).unwrap();
        let mut a = change("update", r#"{"id":1}"#, "");
        let mut b = a.clone();
        a.stream_position = Some("bin.000009:900".into());
        b.stream_position = Some("bin.000010:15".into());
        assert!(ord(&a, OrderBy::MysqlBinlog, Part::Change, 0, 99) < ord(&b, OrderBy::MysqlBinlog, Part::Change, 0, 1));
        b.stream_position = a.stream_position.clone();
        a.transaction_record_id = Some("2".into());
        b.transaction_record_id = Some("10".into());
        assert!(ord(&a, OrderBy::MysqlBinlog, Part::Change, 0, 99) < ord(&b, OrderBy::MysqlBinlog, Part::Change, 0, 1));
        b.transaction_record_id = a.transaction_record_id.clone();
        assert!(ord(&a, OrderBy::MysqlBinlog, Part::Change, 0, 9) < ord(&b, OrderBy::MysqlBinlog, Part::Change, 0, 10));
        a.stream_position = Some("0/00000199".into());
        b.stream_position = Some("0/000001A0".into());
        assert!(ord(&a, OrderBy::PostgresqlLsn, Part::Change, 0, 9) < ord(&b, OrderBy::PostgresqlLsn, Part::Change, 0, 1));
        let (mut c, mut d) = (a.clone(), a.clone());
        c.timestamp_micros = 999;
        d.timestamp_micros = 1000;
        assert!(ord(&c, OrderBy::Timestamp, Part::Change, 0, 50) < ord(&d, OrderBy::Timestamp, Part::Change, 0, 1));
        d.timestamp_micros = -5;
        assert!(ord(&d, OrderBy::Timestamp, Part::Change, 0, 1) < ord(&c, OrderBy::Timestamp, Part::Change, 0, 1));
        // The delete of an old key sorts after every change with its timestamp, in any partition.
        assert!(ord(&c, OrderBy::Timestamp, Part::Change, 7, 99) < ord(&c, OrderBy::Timestamp, Part::OldKeyDelete, 0, 1));
    }

    fn control(op: &str, extra: &str) -> crate::decode::Control {
        let text = format!(
            r#"{{"metadata":{{"timestamp":"2026-11-27T03:28:32Z","record-type":"control","operation":"{op}","schema-name":"s","table-name":"t"{extra}}}}}"#
        );
        match dms::decode(text.as_bytes(), "before-image").unwrap() {
            Decoded::Control(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncate_and_drop_markers_are_ordered_like_the_changes_around_them() {
        let order = |row: &LogRow| row.json()[COL_ORDER].as_str().unwrap().to_owned();
        // Timestamp ordering: after every change with its timestamp (any
        // partition), before every later change.
        let marker = build_control(&control("truncate-table", ""), &route(), &at(5)).unwrap().unwrap();
        assert_eq!(marker.json()[COL_OP], "T");
        assert_eq!(marker.json()[COL_KEY], marker.key.to_hex());
        assert!(!marker.json().contains_key("id") && !marker.json().contains_key("name"), "no source columns");
        let same_ts = change("insert", r#"{"id":1}"#, "");
        let mut later = same_ts.clone();
        later.timestamp_micros += 1;
        assert!(order_value(&same_ts, OrderBy::Timestamp, Part::Change, 9, 99).unwrap() < order(&marker));
        assert!(order_value(&same_ts, OrderBy::Timestamp, Part::OldKeyDelete, 9, 99).unwrap() < order(&marker));
        assert!(order(&marker) < order_value(&later, OrderBy::Timestamp, Part::Change, 0, 0).unwrap());
        let drop = build_control(&control("drop-table", ""), &route(), &at(6)).unwrap().unwrap();
        assert_eq!(drop.json()[COL_OP], "X");
        // Position ordering: by its stream position, between the changes before and after it.
        let mut route = route();
        route.order_by = Some(OrderBy::MysqlBinlog);
        let marker = build_control(&control("truncate", r#","stream-position":"bin.000002:500""#), &route, &at(5)).unwrap().unwrap();
        let mut c = change("insert", r#"{"id":1}"#, "");
        c.stream_position = Some("bin.000002:499".into());
        assert!(order_value(&c, OrderBy::MysqlBinlog, Part::Change, 0, 99).unwrap() < order(&marker));
        c.stream_position = Some("bin.000002:501".into());
        assert!(order(&marker) < order_value(&c, OrderBy::MysqlBinlog, Part::Change, 0, 1).unwrap());
        // Full-load rows (no position) sort before it.
        let load = change("load", r#"{"id":1}"#, "");
        assert!(order_value(&load, OrderBy::MysqlBinlog, Part::Change, 0, 99).unwrap() < order(&marker));
        // A marker without the position its table's ordering needs is rejected, never ordered another way.
        let err = build_control(&control("truncate-table", ""), &route, &at(5)).unwrap_err();
        assert!(matches!(err, Rejection::BadMetadata { field: "stream-position", .. }), "{err}");
        // Reported kinds have no row.
        for op in ["create-table", "rename-table", "add-column", "drop-column", "rename-column"] {
            assert_eq!(build_control(&control(op, ""), &route, &at(5)).unwrap(), None, "{op}");
        }
    }

    #[test]
    fn position_ordering_rejects_changes_without_or_with_foreign_positions() {
        let mut c = change("update", r#"{"id":1}"#, "");
        let err = order_value(&c, OrderBy::PostgresqlLsn, Part::Change, 0, 1).unwrap_err();
        assert!(err.to_string().contains("IncludeTransactionDetails"), "{err}");
        c.stream_position = Some("mysql-bin.000001:4".into());
        assert!(order_value(&c, OrderBy::PostgresqlLsn, Part::Change, 0, 1).is_err());
        let mut route = route();
        route.order_by = Some(OrderBy::PostgresqlLsn);
        assert!(matches!(build(&c, &route, &at(1)), Err(Rejection::BadMetadata { field: "stream-position", .. })));
        // Full-load rows have no position: they sort before every change.
        let load = change("load", r#"{"id":1}"#, "");
        let first = order_value(&load, OrderBy::PostgresqlLsn, Part::Change, 9, 9).unwrap();
        c.stream_position = Some("0/0".into());
        assert!(first < order_value(&c, OrderBy::PostgresqlLsn, Part::Change, 0, 0).unwrap());
    }
}

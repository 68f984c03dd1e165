//! The AWS DMS JSON envelope.
//!
//! ```json
//! {"data": {"id": 1, "name": "a"},
//!  "metadata": {"timestamp": "2026-11-27T03:28:32.123456Z", "record-type": "data",
//!               "operation": "update", "partition-key-type": "primary-key",
//!               "schema-name": "sales", "table-name": "customers",
//!               "transaction-id": 12, "commit-timestamp": "...", "stream-position": "..."},
//!  "before-image": {"id": 1}}
//! ```
//!
//! `load`, `insert` and `update` are upserts, `delete` is a delete; a column
//! missing from `data` is NULL. Control records (record-type `control`) are
//! returned as [`Decoded::Control`] with their kind and the metadata that
//! orders them; a truncate is also recognised under record-type `data`
//! (operation `truncate` or `truncate-table`), so no legitimate truncate is
//! dead-lettered whichever way it is labelled. Anything else is a [`Rejection`].

use serde_json::{Map, Value};

use super::{json, value, Change, Control, ControlKind, Decoded, Op, Rejection};

/// The DMS control operations (record-type `control`). DMS's Kafka
/// documentation lists the first eight; it names no truncate operation, so
/// both spellings a truncate may carry are accepted (docs/design.md, "DDL
/// control records").
pub const CONTROL_OPERATIONS: &[&str] = &[
    "create-table",
    "rename-table",
    "drop-table",
    "change-columns",
    "add-column",
    "drop-column",
    "rename-column",
    "column-type-change",
    "truncate-table",
    "truncate",
];

/// At most this many characters of a control record's details are kept for its log line.
const CONTROL_DETAILS_LIMIT: usize = 512;

/// Decodes one message value. `before_image_field` is the top-level field
/// DMS puts the before image under (`BeforeImageSettings.FieldName`).
pub fn decode(payload: &[u8], before_image_field: &str) -> Result<Decoded, Rejection> {
    let text = std::str::from_utf8(payload).map_err(|e| Rejection::NotUtf8(e.to_string()))?;
    // The envelope is taken apart by hand, not through serde: serde_json's
    // `Value -> struct` path hands numbers to visitors as f64 when their
    // text looks like a float's, which loses digits
    // (`86483451298251.63` came back as `...251.62`).
    let Value::Object(mut root) = parse_message(text)? else {
        return Err(Rejection::NotEnvelope("top level is not a JSON object".into()));
    };
    let m = match root.remove("metadata") {
        Some(Value::Object(m)) => m,
        None => return Err(Rejection::NotEnvelope("missing field `metadata`".into())),
        Some(_) => return Err(Rejection::NotEnvelope("`metadata` is not an object".into())),
    };
    let field = |name: &str| m.get(name);
    let record_type = required_str(field("record-type"), "record-type")?;
    let operation = required_str(field("operation"), "operation")?;
    let schema = optional_str(field("schema-name"), "schema-name")?;
    let table = optional_str(field("table-name"), "table-name")?;
    let truncate_as_data = record_type == "data" && ControlKind::of(&operation) == Some(ControlKind::Truncate);
    match record_type.as_str() {
        "control" => control(&m, &root, operation, schema, table).map(Decoded::Control),
        "data" if truncate_as_data => control(&m, &root, operation, schema, table).map(Decoded::Control),
        "data" => {
            let op = match operation.as_str() {
                "load" | "insert" | "update" => Op::Upsert,
                "delete" => Op::Delete,
                _ => return Err(Rejection::UnknownOperation(operation)),
            };
            let schema = schema.ok_or(Rejection::BadMetadata { field: "schema-name", message: "missing".into() })?;
            let table = table.ok_or(Rejection::BadMetadata { field: "table-name", message: "missing".into() })?;
            let timestamp = required_str(field("timestamp"), "timestamp")?;
            let timestamp_micros =
                value::parse_timestamp_micros(&timestamp).map_err(|message| Rejection::BadMetadata { field: "timestamp", message })?;
            let commit_timestamp = optional_str(field("commit-timestamp"), "commit-timestamp")?;
            let stream_position = optional_str(field("stream-position"), "stream-position")?;
            let transaction_id = optional_scalar(field("transaction-id"), "transaction-id")?;
            let transaction_record_id = optional_scalar(field("transaction-record-id"), "transaction-record-id")?;
            let data = match root.remove("data") {
                Some(Value::Object(map)) => map,
                Some(Value::Null) | None => return Err(Rejection::NotEnvelope("`data` is missing".into())),
                Some(_) => return Err(Rejection::NotEnvelope("`data` is not an object".into())),
            };
            let before = match root.remove(before_image_field) {
                Some(Value::Object(map)) => Some(map),
                None | Some(Value::Null) => None,
                Some(_) => return Err(Rejection::NotEnvelope(format!("`{before_image_field}` is not an object"))),
            };
            Ok(Decoded::Row(Change {
                schema,
                table,
                op,
                operation,
                data,
                before,
                timestamp,
                timestamp_micros,
                commit_timestamp,
                stream_position,
                transaction_id,
                transaction_record_id,
            }))
        }
        other => Err(Rejection::UnknownRecordType(other.to_owned())),
    }
}

/// A control record: its kind and the metadata that names and orders it.
/// A missing or invalid timestamp is kept as `None` here; the kinds that
/// need it (truncate, drop-table) are rejected when their row is built.
fn control(
    m: &Map<String, Value>,
    root: &Map<String, Value>,
    operation: String,
    schema: Option<String>,
    table: Option<String>,
) -> Result<Control, Rejection> {
    let Some(kind) = ControlKind::of(&operation) else {
        return Err(Rejection::UnknownControlOperation(operation));
    };
    let field = |name: &str| m.get(name);
    let timestamp = optional_str(field("timestamp"), "timestamp")?;
    let timestamp_micros = match &timestamp {
        Some(t) => match value::parse_timestamp_micros(t) {
            Ok(micros) => Some(micros),
            // Only a marker is ordered by it; a reported record is still reported.
            Err(message) if kind.marker_op().is_some() => return Err(Rejection::BadMetadata { field: "timestamp", message }),
            Err(_) => None,
        },
        None => None,
    };
    // What DMS adds with IncludeControlDetails (table and column definitions),
    // shown to the operator, bounded and with control characters escaped.
    let details = (!root.is_empty()).then(|| {
        let text = Value::Object(root.clone()).to_string();
        let mut shown: String = text.chars().take(CONTROL_DETAILS_LIMIT).flat_map(char::escape_debug).collect();
        if text.chars().count() > CONTROL_DETAILS_LIMIT {
            shown.push('…');
        }
        shown
    });
    Ok(Control {
        kind,
        operation,
        schema,
        table,
        timestamp,
        timestamp_micros,
        commit_timestamp: optional_str(field("commit-timestamp"), "commit-timestamp")?,
        stream_position: optional_str(field("stream-position"), "stream-position")?,
        transaction_id: optional_scalar(field("transaction-id"), "transaction-id")?,
        transaction_record_id: optional_scalar(field("transaction-record-id"), "transaction-record-id")?,
        column_defs: if kind.defines_columns() { super::column_defs::column_defs(root) } else { Vec::new() },
        details,
    })
}

/// Parses a message: strict JSON, plus bare `NaN`, `Infinity` and
/// `-Infinity` tokens (written by some producers for non-finite floats),
/// which become strings marked with [`json::NON_FINITE_MARK`].
fn parse_message(text: &str) -> Result<Value, Rejection> {
    match json::parse_strict(text) {
        Ok(v) => Ok(v),
        Err(first) => match json::rewrite_non_finite(text) {
            Some(rewritten) => json::parse_strict(&rewritten).map_err(|_| Rejection::NotJson(first)),
            None => Err(Rejection::NotJson(first)),
        },
    }
}

fn required_str(v: Option<&Value>, field: &'static str) -> Result<String, Rejection> {
    optional_str(v, field)?.ok_or(Rejection::BadMetadata { field, message: "missing".into() })
}

fn optional_str(v: Option<&Value>, field: &'static str) -> Result<Option<String>, Rejection> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Rejection::BadMetadata { field, message: "must be a string".into() }),
    }
}

fn optional_scalar(v: Option<&Value>, field: &'static str) -> Result<Option<String>, Rejection> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(Rejection::BadMetadata { field, message: "must be a string or number".into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(op: &str, data: &str) -> Vec<u8> {
        format!(
            r#"{{"data":{data},"metadata":{{"timestamp":"2026-11-27T03:28:32.123456Z","record-type":"data","operation":"{op}","partition-key-type":"primary-key","schema-name":"sales","table-name":"customers"}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn upserts_and_deletes() {
        for (op, expect) in [("load", Op::Upsert), ("insert", Op::Upsert), ("update", Op::Upsert), ("delete", Op::Delete)] {
            let Decoded::Row(c) = decode(&msg(op, r#"{"id":1}"#), "before-image").unwrap() else { panic!() };
            assert_eq!(c.op, expect);
            assert_eq!(c.operation, op);
            assert_eq!((c.schema.as_str(), c.table.as_str()), ("sales", "customers"));
            assert_eq!(c.timestamp_micros, 1_795_750_112_123_456);
            assert_eq!(c.data["id"], 1);
        }
    }

    #[test]
    fn transaction_details_and_before_image() {
        let text = r#"{"data":{"id":2},"before-image":{"id":1},"metadata":{"timestamp":"2026-11-27T03:28:32Z","record-type":"data","operation":"update","schema-name":"s","table-name":"t","transaction-id":77,"transaction-record-id":3,"commit-timestamp":"2026-11-27T03:28:31.5Z","stream-position":"mysql-bin.000024:373:1"}}"#;
        let Decoded::Row(c) = decode(text.as_bytes(), "before-image").unwrap() else { panic!() };
        assert_eq!(c.transaction_id.as_deref(), Some("77"));
        assert_eq!(c.transaction_record_id.as_deref(), Some("3"));
        assert_eq!(c.stream_position.as_deref(), Some("mysql-bin.000024:373:1"));
        assert_eq!(c.commit_timestamp.as_deref(), Some("2026-11-27T03:28:31.5Z"));
        assert_eq!(c.before.unwrap()["id"], 1);
    }

    #[test]
    fn numbers_keep_their_digits_and_bare_non_finite_tokens_are_marked() {
        let data = r#"{"id":12345678901234567890123,"amount":83764483.396630768,"tie":86483451298251.63,"f":NaN,"g":-Infinity,"s":"NaN \" Infinity"}"#;
        let Decoded::Row(c) = decode(&msg("insert", data), "before-image").unwrap() else { panic!() };
        assert_eq!(c.data["id"].to_string(), "12345678901234567890123");
        assert_eq!(c.data["amount"].to_string(), "83764483.396630768");
        // A float's shortest form is ambiguous here (.62 and .63 both round-trip).
        assert_eq!(c.data["tie"].to_string(), "86483451298251.63");
        assert_eq!(c.data["f"], Value::String(format!("{}NaN", json::NON_FINITE_MARK)));
        assert_eq!(c.data["g"], Value::String(format!("{}-Infinity", json::NON_FINITE_MARK)));
        assert_eq!(c.data["s"], "NaN \" Infinity");
    }

    #[test]
    fn control_records_are_recognised() {
        for op in CONTROL_OPERATIONS {
            let text = format!(
                r#"{{"metadata":{{"timestamp":"2026-11-27T03:28:32Z","record-type":"control","operation":"{op}","schema-name":"s","table-name":"t"}}}}"#
            );
            assert!(matches!(decode(text.as_bytes(), "before-image").unwrap(), Decoded::Control(_)), "{op}");
        }
    }

    fn control(op: &str, record_type: &str, extra: &str) -> Result<Decoded, Rejection> {
        let text = format!(
            r#"{{"metadata":{{"timestamp":"2026-11-27T03:28:32.5Z","record-type":"{record_type}","operation":"{op}","partition-key-type":"task-id","schema-name":"sales","table-name":"widgets"{extra}}}}}"#
        );
        decode(text.as_bytes(), "before-image")
    }

    #[test]
    fn ddl_control_records_decode_with_their_kind_and_ordering_metadata() {
        let kinds = [
            ("truncate-table", ControlKind::Truncate),
            ("truncate", ControlKind::Truncate),
            ("drop-table", ControlKind::DropTable),
            ("create-table", ControlKind::CreateTable),
            ("rename-table", ControlKind::RenameTable),
            ("add-column", ControlKind::AddColumn),
            ("drop-column", ControlKind::DropColumn),
            ("rename-column", ControlKind::RenameColumn),
            ("change-columns", ControlKind::ChangeColumns),
            ("column-type-change", ControlKind::ColumnTypeChange),
        ];
        assert_eq!(kinds.len(), CONTROL_OPERATIONS.len(), "every control operation has a kind");
        for (op, kind) in kinds {
            let Decoded::Control(c) = control(op, "control", "").unwrap() else { panic!("{op}") };
            assert_eq!((c.kind, c.operation.as_str()), (kind, op));
            assert_eq!((c.schema.as_deref(), c.table.as_deref()), (Some("sales"), Some("widgets")));
            assert_eq!(c.timestamp_micros, Some(1_795_750_112_500_000));
            assert_eq!(kind.marker_op().is_some(), matches!(kind, ControlKind::Truncate | ControlKind::DropTable), "{op}");
        }
        // Transaction details, as on changes.
        let tx = r#","transaction-id":77,"transaction-record-id":1,"stream-position":"0/1A0","commit-timestamp":"2026-11-27T03:28:31Z""#;
        let Decoded::Control(c) = control("truncate-table", "control", tx).unwrap() else { panic!() };
        assert!(c.has_transaction_details());
        assert_eq!((c.stream_position.as_deref(), c.transaction_id.as_deref()), (Some("0/1A0"), Some("77")));
        // A truncate labelled as a data record is still a truncate, not a dead letter.
        for op in ["truncate", "truncate-table"] {
            let Decoded::Control(c) = control(op, "data", "").unwrap() else { panic!("{op}") };
            assert_eq!(c.kind, ControlKind::Truncate);
        }
        // Details (IncludeControlDetails) are kept, bounded, for the log line.
        let text = format!(
            r#"{{"data":{{"column":"{}\u0007"}},"metadata":{{"timestamp":"2026-11-27T03:28:32Z","record-type":"control","operation":"add-column","schema-name":"s","table-name":"t"}}}}"#,
            "x".repeat(600)
        );
        let Decoded::Control(c) = decode(text.as_bytes(), "before-image").unwrap() else { panic!() };
        let details = c.details.unwrap();
        assert!(details.starts_with(r#"{\"data\":{\"column\":\"xxx"#) && details.ends_with('…') && details.len() < 700, "{details}");
        // A marker needs a valid timestamp (it orders it); a reported record does not.
        let bad = |op: &str| {
            decode(
                format!(
                    r#"{{"metadata":{{"timestamp":"soon","record-type":"control","operation":"{op}","schema-name":"s","table-name":"t"}}}}"#
                )
                .as_bytes(),
                "before-image",
            )
        };
        assert!(matches!(bad("truncate-table"), Err(Rejection::BadMetadata { field: "timestamp", .. })));
        assert!(matches!(bad("drop-table"), Err(Rejection::BadMetadata { field: "timestamp", .. })));
        assert!(matches!(bad("rename-table"), Ok(Decoded::Control(Control { timestamp_micros: None, .. }))));
        // Unknown control operations are still rejected, naming the record type.
        let err = control("vacuum", "control", "").unwrap_err().to_string();
        assert!(err.contains("unknown control operation `vacuum`"), "{err}");
    }

    #[test]
    fn bad_input_is_rejected_with_a_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"\xff\xfe".to_vec(), "UTF-8"),
            (b"not json".to_vec(), "not valid JSON"),
            (b"[1,2]".to_vec(), "not a JSON object"),
            (b"{\"data\":{}}".to_vec(), "DMS envelope"),
            (msg("upsert", "{}"), "unknown data operation"),
            (msg("insert", "[1]"), "not an object"),
            (msg("insert", "null"), "missing"),
            (br#"{"data":{},"metadata":{"timestamp":"x","record-type":"data","operation":"insert","schema-name":"s","table-name":"t"}}"#.to_vec(), "metadata.timestamp"),
            (br#"{"data":{},"metadata":{"timestamp":"2026-11-27T03:28:32Z","record-type":"ddl","operation":"insert"}}"#.to_vec(), "record-type"),
            (br#"{"data":{},"metadata":{"timestamp":"2026-11-27T03:28:32Z","record-type":"data","operation":"insert","table-name":"t"}}"#.to_vec(), "schema-name"),
            ("[".repeat(10_000).into_bytes(), "not valid JSON"),
            (msg("insert", r#"{"id":NaNa}"#), "not valid JSON"),
            (msg("insert", r#"{"id":1,"id":2}"#), "duplicate key \"id\""),
            (br#"{"data":{},"data":{},"metadata":{}}"#.to_vec(), "duplicate key"),
        ];
        for (bytes, expect) in cases {
            let err = decode(&bytes, "before-image").unwrap_err().to_string();
            assert!(err.contains(expect), "expected {expect:?} in {err:?}");
        }
    }
}

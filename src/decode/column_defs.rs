//! Column definitions carried by DMS control records, for schema evolution.
//!
//! With `IncludeControlDetails`, DMS adds "table and column definitions" to
//! its control records. The layout of that part is not documented, so it is
//! read tolerantly: anywhere in the record outside `metadata` (at most
//! [`MAX_DEPTH`] levels down), a column is
//!
//! * an entry `"<name>": {"type": "<type>", ...}` of an object, or
//! * an element `{"name" | "column-name": "<name>", "type": "<type>", ...}` of an array,
//!
//! with optional `precision`/`scale` (numbers or numeric strings). The type
//! is a DMS data type (`INT4`, `NUMERIC`, `WSTRING`, ...) or an SQL type name
//! (`varchar(20)`, `decimal(12,2)`, `bigint`); [`ColumnDef::bigquery_type`]
//! maps it, and a type it does not know maps to nothing (the configured
//! default applies). Names are only ever compared with configured names and
//! validated before they are used as column names.
//!
//! Nothing here fails: a record whose details are missing or unreadable
//! simply defines no columns.

use serde_json::{Map, Value};

use super::ColumnType;

/// How deep the details are searched for definitions.
pub const MAX_DEPTH: usize = 6;
/// At most this many definitions are read from one record.
pub const MAX_DEFS: usize = 4096;

/// One column as a control record defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    /// The type as the record names it.
    pub source_type: String,
    pub precision: Option<u32>,
    pub scale: Option<u32>,
}

/// Every column definition in `root` (the record without its `metadata`),
/// first definition of a name wins.
pub fn column_defs(root: &Map<String, Value>) -> Vec<ColumnDef> {
    let mut out = Vec::new();
    for v in root.values() {
        walk(v, 0, &mut out);
    }
    out
}

fn walk(v: &Value, depth: usize, out: &mut Vec<ColumnDef>) {
    if depth > MAX_DEPTH || out.len() >= MAX_DEFS {
        return;
    }
    match v {
        Value::Object(m) => {
            for (name, inner) in m {
                if let Some(def) = inner.as_object().and_then(|d| definition(name, d)) {
                    push(out, def);
                } else {
                    walk(inner, depth + 1, out);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                let named = item.as_object().and_then(|d| {
                    let name = d.get("name").or_else(|| d.get("column-name")).or_else(|| d.get("column_name"))?.as_str()?;
                    definition(name, d)
                });
                match named {
                    Some(def) => push(out, def),
                    None => walk(item, depth + 1, out),
                }
            }
        }
        _ => {}
    }
}

fn push(out: &mut Vec<ColumnDef>, def: ColumnDef) {
    if out.len() < MAX_DEFS && !out.iter().any(|d| d.name == def.name) {
        out.push(def);
    }
}

/// `d` as the definition of column `name`, if it names a type.
fn definition(name: &str, d: &Map<String, Value>) -> Option<ColumnDef> {
    let ty = ["type", "data-type", "data_type", "dataType"].iter().find_map(|k| d.get(*k)?.as_str())?;
    if name.is_empty() || ty.trim().is_empty() {
        return None;
    }
    let number = |k: &str| -> Option<u32> {
        match d.get(k)? {
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    };
    Some(ColumnDef { name: name.to_owned(), source_type: ty.trim().to_owned(), precision: number("precision"), scale: number("scale") })
}

impl ColumnDef {
    /// The BigQuery type for this definition, if the type is one landfall
    /// maps (the DMS data types, and common MySQL/PostgreSQL type names).
    /// Decimals: NUMERIC when they fit (at most 29 integer and 9 fraction
    /// digits), BIGNUMERIC when they fit that (38 and 38), else STRING
    /// (exact text, never a rounded number). No precision: BIGNUMERIC.
    pub fn bigquery_type(&self) -> Option<ColumnType> {
        use ColumnType::*;
        let lower = self.source_type.to_ascii_lowercase();
        let (base, args) = match lower.split_once('(') {
            Some((b, rest)) => (b.trim(), rest.trim_end_matches(')')),
            None => (lower.trim(), ""),
        };
        let mut nums = args.split(',').map(|a| a.trim().parse::<u32>().ok());
        let (p_arg, s_arg) = (nums.next().flatten(), nums.next().flatten());
        let decimal = |p: Option<u32>, s: Option<u32>| match (p, s.unwrap_or(0)) {
            (Some(p), s) if p >= s && p - s <= 29 && s <= 9 => Numeric,
            (Some(p), s) if p >= s && p - s <= 38 && s <= 38 => Bignumeric,
            (Some(_), _) => String,
            (None, _) => Bignumeric,
        };
        let unsigned = lower.contains("unsigned");
        Some(match base.split_whitespace().next().unwrap_or("") {
            // DMS data types.
            "int1" | "int2" | "int4" | "int8" | "uint1" | "uint2" | "uint4" => Int64,
            "uint8" => Numeric,
            "real4" | "real8" => Float64,
            "numeric" | "decimal" | "number" => decimal(self.precision.or(p_arg), self.scale.or(s_arg)),
            "string" | "wstring" | "clob" | "nclob" => String,
            "bytes" | "blob" => Bytes,
            "boolean" | "bool" => Bool,
            "date" => Date,
            "time" => Time,
            "datetime" => Datetime,
            // SQL type names (MySQL, PostgreSQL).
            "tinyint" if args == "1" => Bool,
            "bigint" if unsigned => Numeric,
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "int16" | "int32" | "int64" | "serial" | "bigserial"
            | "smallserial" => Int64,
            "float" | "double" | "real" | "float4" | "float8" => Float64,
            "char" | "varchar" | "nchar" | "nvarchar" | "text" | "tinytext" | "mediumtext" | "longtext" | "character" | "uuid" | "enum"
            | "set" | "citext" => String,
            "binary" | "varbinary" | "tinyblob" | "mediumblob" | "longblob" | "bytea" => Bytes,
            "json" | "jsonb" => Json,
            "timestamp" | "timestamptz" if lower.contains("without time zone") => Datetime,
            "timestamp" | "timestamptz" => Timestamp,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defs(v: Value) -> Vec<ColumnDef> {
        column_defs(v.as_object().unwrap())
    }

    #[test]
    fn definitions_are_found_keyed_by_name_or_in_arrays() {
        let found = defs(json!({
            "control": {"table-def": {"columns": {
                "id": {"type": "INT8", "nullable": false},
                "price": {"type": "NUMERIC", "precision": 12, "scale": "2"}
            }, "primary-key": ["id"]}},
            "data": {"columns": [{"name": "note", "type": "varchar(40)"}, {"column-name": "id", "type": "INT4"}]}
        }));
        let names: Vec<(&str, &str)> = found.iter().map(|d| (d.name.as_str(), d.source_type.as_str())).collect();
        assert_eq!(names, [("id", "INT8"), ("price", "NUMERIC"), ("note", "varchar(40)")]);
        assert_eq!((found[1].precision, found[1].scale), (Some(12), Some(2)));
    }

    #[test]
    fn records_without_definitions_define_nothing() {
        assert!(defs(json!({"data": {"id": 1, "name": "x"}})).is_empty());
        assert!(defs(json!({"control": {"type": "add-column"}})).is_empty(), "a bare `type` string is no definition");
        assert!(defs(json!({})).is_empty());
    }

    #[test]
    fn deep_and_huge_details_are_bounded() {
        let mut v = json!({"c": {"type": "INT4"}});
        for _ in 0..50 {
            v = json!({ "x": v });
        }
        assert!(defs(json!({ "data": v })).is_empty(), "deeper than MAX_DEPTH is not searched");
        let many: Map<String, Value> = (0..10_000).map(|i| (format!("c{i}"), json!({"type": "INT4"}))).collect();
        assert_eq!(defs(json!({ "data": many })).len(), MAX_DEFS);
    }

    #[test]
    fn types_map_to_bigquery_types() {
        let ty = |t: &str, p: Option<u32>, s: Option<u32>| {
            ColumnDef { name: "c".into(), source_type: t.into(), precision: p, scale: s }.bigquery_type()
        };
        use ColumnType::*;
        assert_eq!(ty("INT4", None, None), Some(Int64));
        assert_eq!(ty("UINT8", None, None), Some(Numeric));
        assert_eq!(ty("REAL8", None, None), Some(Float64));
        assert_eq!(ty("NUMERIC", Some(12), Some(2)), Some(Numeric));
        assert_eq!(ty("NUMERIC", Some(40), Some(10)), Some(Bignumeric));
        assert_eq!(ty("NUMERIC", Some(65), Some(0)), Some(String));
        assert_eq!(ty("decimal(38,9)", None, None), Some(Numeric));
        assert_eq!(ty("WSTRING", None, None), Some(String));
        assert_eq!(ty("BLOB", None, None), Some(Bytes));
        assert_eq!(ty("tinyint(1)", None, None), Some(Bool));
        assert_eq!(ty("bigint unsigned", None, None), Some(Numeric));
        assert_eq!(ty("jsonb", None, None), Some(Json));
        assert_eq!(ty("timestamp without time zone", None, None), Some(Datetime));
        assert_eq!(ty("timestamptz", None, None), Some(Timestamp));
        assert_eq!(ty("DATETIME", None, None), Some(Datetime));
        assert_eq!(ty("geometry", None, None), None);
    }
}

//! `landfall tables import`: the `[[tables]]` section from an export of the
//! source database's catalog, so a 200-table schema is not typed by hand.
//!
//! The export is the CSV (with a header row) or JSON (an array of objects)
//! output of the query in docs/tables-import.md for MySQL / Aurora MySQL or
//! PostgreSQL / Aurora PostgreSQL: one row per column with `table_schema`,
//! `table_name`, `column_name`, `ordinal_position`, `data_type`,
//! `column_type`, `numeric_precision`, `numeric_scale`, `is_primary_key` and
//! `key_position` (header names in any case; empty, `NULL` or `\N` is no
//! value). Each source type maps to one BigQuery type ([`map_type`]; the
//! table is in docs/tables-import.md); a type with no safe mapping, or a
//! table without a primary key, is an error naming it: nothing is guessed.
//! What is written is checked by the same validation as any config.

use std::collections::BTreeMap;

use crate::config::{ColumnConfig, TableConfig};
use crate::decode::ColumnType;

/// The source database's engine (its catalog's type names differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Mysql,
    Postgres,
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Engine, String> {
        match s.to_ascii_lowercase().as_str() {
            "mysql" | "aurora-mysql" | "mariadb" => Ok(Engine::Mysql),
            "postgres" | "postgresql" | "aurora-postgresql" => Ok(Engine::Postgres),
            other => Err(format!("unknown engine {other:?}: mysql or postgres")),
        }
    }
}

/// Why an export could not become `[[tables]]`.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ImportError {
    #[error("the export is neither a JSON array of objects nor CSV with a header row: {0}")]
    Format(String),
    #[error("row {row} of the export lacks `{field}` (see docs/tables-import.md for the query)")]
    Missing { row: usize, field: &'static str },
    #[error("row {row}: `{field}` = {value:?} is not {what}")]
    Bad { row: usize, field: &'static str, value: String, what: &'static str },
    #[error("{table}.{column}: {reason}")]
    Type { table: String, column: String, reason: String },
    #[error(
        "{0} has no primary key: landfall merges by primary key. Add one at the source, or write its [[tables]] entry by hand with a unique, non-null key"
    )]
    NoPrimaryKey(String),
    #[error("the export holds no column")]
    Empty,
    #[error("the tables written from the export do not validate (a name BigQuery or landfall refuses?): {0}")]
    Invalid(String),
}

/// One column of the export.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogColumn {
    pub schema: String,
    pub table: String,
    pub column: String,
    pub position: u32,
    pub data_type: String,
    pub column_type: String,
    pub precision: Option<u32>,
    pub scale: Option<u32>,
    pub key_position: Option<u32>,
}

/// Reads the export: JSON if it starts with `[`, else CSV.
pub fn parse(text: &str) -> Result<Vec<CatalogColumn>, ImportError> {
    let rows: Vec<BTreeMap<String, String>> = if text.trim_start().starts_with('[') {
        let items: Vec<serde_json::Map<String, serde_json::Value>> =
            serde_json::from_str(text).map_err(|e| ImportError::Format(e.to_string()))?;
        items
            .into_iter()
            .map(|o| {
                o.into_iter()
                    .map(|(k, v)| {
                        let v = match v {
                            serde_json::Value::String(s) => s,
                            serde_json::Value::Null => String::new(),
                            other => other.to_string(),
                        };
                        (k.to_ascii_lowercase(), v)
                    })
                    .collect()
            })
            .collect()
    } else {
        let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(text.as_bytes());
        let headers: Vec<String> =
            reader.headers().map_err(|e| ImportError::Format(e.to_string()))?.iter().map(|h| h.to_ascii_lowercase()).collect();
        let mut out = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| ImportError::Format(e.to_string()))?;
            out.push(headers.iter().cloned().zip(record.iter().map(str::to_owned)).collect());
        }
        out
    };
    let mut cols = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let row = i + 1;
        let value = |field: &'static str| r.get(field).map(String::as_str).filter(|v| !v.is_empty() && *v != "NULL" && *v != "\\N");
        let text = |field: &'static str| value(field).map(str::to_owned).ok_or(ImportError::Missing { row, field });
        let number = |field: &'static str| -> Result<Option<u32>, ImportError> {
            value(field)
                .map(|v| v.parse::<u32>().map_err(|_| ImportError::Bad { row, field, value: v.to_owned(), what: "a whole number" }))
                .transpose()
        };
        let is_key = match value("is_primary_key").map(str::to_ascii_lowercase).as_deref() {
            None | Some("0" | "f" | "false" | "no" | "n") => false,
            Some("1" | "t" | "true" | "yes" | "y") => true,
            Some(v) => return Err(ImportError::Bad { row, field: "is_primary_key", value: v.to_owned(), what: "a boolean" }),
        };
        let position = number("ordinal_position")?.ok_or(ImportError::Missing { row, field: "ordinal_position" })?;
        cols.push(CatalogColumn {
            schema: text("table_schema")?,
            table: text("table_name")?,
            column: text("column_name")?,
            position,
            data_type: text("data_type")?.to_ascii_lowercase(),
            column_type: value("column_type").unwrap_or("").to_ascii_lowercase(),
            precision: number("numeric_precision")?,
            scale: number("numeric_scale")?,
            key_position: if is_key { Some(number("key_position")?.unwrap_or(position)) } else { None },
        });
    }
    Ok(cols)
}

/// A DECIMAL(p, s): NUMERIC holds 29 integer and 9 fraction digits,
/// BIGNUMERIC 38 and 38.
fn decimal(precision: Option<u32>, scale: Option<u32>, default_precision: u32) -> Result<ColumnType, String> {
    let (p, s) = (precision.unwrap_or(default_precision), scale.unwrap_or(0));
    let int = p.saturating_sub(s);
    if s <= 9 && int <= 29 {
        Ok(ColumnType::Numeric)
    } else if s <= 38 && int <= 38 {
        Ok(ColumnType::Bignumeric)
    } else {
        Err(format!(
            "DECIMAL({p},{s}) fits neither NUMERIC (29 integer, 9 fraction digits) nor BIGNUMERIC (38, 38): map it to STRING by hand"
        ))
    }
}

/// The BigQuery type of a source column (docs/tables-import.md).
pub fn map_type(engine: Engine, c: &CatalogColumn) -> Result<ColumnType, String> {
    use ColumnType::*;
    let t = c.data_type.as_str();
    let full = c.column_type.as_str();
    Ok(match engine {
        Engine::Mysql => match t {
            "tinyint" if full.starts_with("tinyint(1)") => Bool,
            "bit" if full == "bit(1)" || full == "bit" => Bool,
            "bit" => {
                return Err(format!(
                    "{full}: a bit string has no lossless mapping; map it by hand (INT64 or BYTES) after checking how DMS sends it"
                ))
            }
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "year" => Int64,
            "bigint" if full.contains("unsigned") => Numeric,
            "bigint" => Int64,
            "decimal" | "numeric" | "dec" | "fixed" => decimal(c.precision, c.scale, 10)?,
            "float" | "double" | "real" | "double precision" => Float64,
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set" => String,
            "json" => Json,
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => Bytes,
            "date" => Date,
            "datetime" => Datetime,
            "timestamp" => Timestamp,
            "time" => Time,
            "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring" | "multipolygon" | "geometrycollection" => {
                return Err(format!("spatial type {t}: no mapping; leave the column out or map it by hand"))
            }
            other => return Err(format!("type {other:?} ({full}) has no mapping; write the column by hand")),
        },
        Engine::Postgres => match t {
            "smallint" | "integer" | "bigint" => Int64,
            "numeric" | "decimal" if c.precision.is_none() => Bignumeric,
            "numeric" | "decimal" => decimal(c.precision, c.scale, 38)?,
            "real" | "double precision" => Float64,
            "boolean" => Bool,
            "character varying"
            | "character"
            | "text"
            | "uuid"
            | "citext"
            | "name"
            | "inet"
            | "cidr"
            | "macaddr"
            | "interval"
            | "money"
            | "xml"
            | "time with time zone"
            | "user-defined"
            | "array" => String,
            "json" | "jsonb" => Json,
            "bytea" => Bytes,
            "date" => Date,
            "timestamp without time zone" => Datetime,
            "timestamp with time zone" => Timestamp,
            "time without time zone" => Time,
            other => return Err(format!("type {other:?} has no mapping; write the column by hand")),
        },
    })
}

/// The `[[tables]]` entries of an export, tables in name order, columns in
/// source order. Final tables are named after the source table, prefixed
/// with its schema when the export spans several schemas.
pub fn tables(engine: Engine, columns: &[CatalogColumn]) -> Result<Vec<TableConfig>, ImportError> {
    if columns.is_empty() {
        return Err(ImportError::Empty);
    }
    let mut by_table: BTreeMap<(String, String), Vec<&CatalogColumn>> = BTreeMap::new();
    for c in columns {
        by_table.entry((c.schema.clone(), c.table.clone())).or_default().push(c);
    }
    let schemas: std::collections::BTreeSet<&str> = columns.iter().map(|c| c.schema.as_str()).collect();
    let mut out = Vec::new();
    for ((schema, table), mut cols) in by_table {
        cols.sort_by_key(|c| c.position);
        let mut key: Vec<&CatalogColumn> = cols.iter().copied().filter(|c| c.key_position.is_some()).collect();
        if key.is_empty() {
            return Err(ImportError::NoPrimaryKey(format!("{schema}.{table}")));
        }
        key.sort_by_key(|c| c.key_position);
        let mut configured = Vec::new();
        for c in &cols {
            let ty = map_type(engine, c).map_err(|reason| ImportError::Type {
                table: format!("{schema}.{table}"),
                column: c.column.clone(),
                reason,
            })?;
            configured.push(ColumnConfig::new(&c.column, ty));
        }
        let name = if schemas.len() > 1 { format!("{schema}_{table}") } else { table.clone() };
        let pk: Vec<&str> = key.iter().map(|c| c.column.as_str()).collect();
        out.push(TableConfig::new(&format!("{schema}.{table}"), &format!("{name}_log"), &name, &pk, configured));
    }
    Ok(out)
}

fn quote(s: &str) -> String {
    // A TOML basic string: the JSON escaping of a string is valid TOML.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The `[[tables]]` section as TOML.
pub fn to_toml(tables: &[TableConfig]) -> String {
    let mut s = String::new();
    for t in tables {
        s.push_str(&format!(
            "\n[[tables]]\nsource = {}\nlog_table = {}\nfinal_table = {}\nprimary_key = [{}]\ncolumns = [\n",
            quote(&t.source),
            quote(&t.log_table),
            quote(&t.final_table),
            t.primary_key.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ")
        ));
        for c in &t.columns {
            s.push_str(&format!("  {{ name = {}, type = \"{}\" }},\n", quote(&c.name), c.ty.sql_name()));
        }
        s.push_str("]\n");
    }
    s
}

/// `landfall tables import`: the `[[tables]]` section for the export `text`,
/// checked by the config's own validation.
pub fn import(engine: Engine, text: &str) -> Result<String, ImportError> {
    let tables = tables(engine, &parse(text)?)?;
    let section = to_toml(&tables);
    let check = format!(
        "[kafka]\nbootstrap_servers = \"x:9092\"\ngroup_id = \"g\"\ntopics = [\"t\"]\n[wal]\npath = \"/tmp/w\"\n\
         [bigquery]\nproject = \"landfall-check\"\ndataset = \"check\"\n{section}"
    );
    crate::config::Config::from_toml(&check).map_err(|e| ImportError::Invalid(e.to_string()))?;
    Ok(format!(
        "# [[tables]] imported from the source's catalog ({} table(s)); review the types (docs/tables-import.md).\n{section}",
        tables.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(data_type: &str, column_type: &str, p: Option<u32>, s: Option<u32>) -> CatalogColumn {
        CatalogColumn {
            schema: "sales".into(),
            table: "t".into(),
            column: "c".into(),
            position: 1,
            data_type: data_type.into(),
            column_type: column_type.into(),
            precision: p,
            scale: s,
            key_position: None,
        }
    }

    #[test]
    fn types_map_by_engine_and_precision_and_the_rest_is_refused_by_name() {
        use ColumnType::*;
        let my = |t: &str, full: &str, p, s| map_type(Engine::Mysql, &col(t, full, p, s));
        assert_eq!(my("tinyint", "tinyint(1)", None, None), Ok(Bool));
        assert_eq!(my("tinyint", "tinyint(4)", None, None), Ok(Int64));
        assert_eq!(my("bigint", "bigint unsigned", None, None), Ok(Numeric), "2^64-1 does not fit INT64");
        assert_eq!(my("decimal", "decimal(38,9)", Some(38), Some(9)), Ok(Numeric));
        assert_eq!(my("decimal", "decimal(30,0)", Some(30), Some(0)), Ok(Bignumeric), "30 integer digits");
        assert_eq!(my("decimal", "decimal(20,10)", Some(20), Some(10)), Ok(Bignumeric), "10 fraction digits");
        assert_eq!(my("decimal", "decimal(65,30)", Some(65), Some(30)), Ok(Bignumeric));
        assert!(my("decimal", "decimal(65,0)", Some(65), Some(0)).unwrap_err().contains("STRING"));
        assert_eq!(my("json", "json", None, None), Ok(Json));
        assert_eq!(my("longblob", "longblob", None, None), Ok(Bytes));
        assert_eq!(my("datetime", "datetime(6)", None, None), Ok(Datetime));
        assert_eq!(my("timestamp", "timestamp(6)", None, None), Ok(Timestamp));
        assert!(my("point", "point", None, None).unwrap_err().contains("spatial"));
        assert!(my("bit", "bit(8)", None, None).unwrap_err().contains("bit(8)"));
        let pg = |t: &str, p, s| map_type(Engine::Postgres, &col(t, "", p, s));
        assert_eq!(pg("numeric", None, None), Ok(Bignumeric));
        assert_eq!(pg("numeric", Some(12), Some(2)), Ok(Numeric));
        assert_eq!(pg("timestamp with time zone", None, None), Ok(Timestamp));
        assert_eq!(pg("timestamp without time zone", None, None), Ok(Datetime));
        assert_eq!(pg("jsonb", None, None), Ok(Json));
        assert_eq!(pg("bytea", None, None), Ok(Bytes));
        assert!(pg("tsvector", None, None).unwrap_err().contains("tsvector"));
    }

    #[test]
    fn csv_and_json_exports_become_tables_with_their_keys_in_key_order() {
        let csv = "TABLE_SCHEMA,TABLE_NAME,COLUMN_NAME,ORDINAL_POSITION,DATA_TYPE,COLUMN_TYPE,NUMERIC_PRECISION,NUMERIC_SCALE,IS_PRIMARY_KEY,KEY_POSITION\n\
                   sales,lines,sku,3,varchar,varchar(40),NULL,NULL,0,NULL\n\
                   sales,lines,line,2,int,int,10,0,1,2\n\
                   sales,lines,order_id,1,bigint,bigint,19,0,1,1\n";
        let t = tables(Engine::Mysql, &parse(csv).unwrap()).unwrap();
        let section = import(Engine::Mysql, csv).unwrap();
        assert!(section.contains("primary_key = [\"order_id\", \"line\"]"), "{section}");
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].source.as_str(), t[0].final_table.as_str(), t[0].log_table.as_str()), ("sales.lines", "lines", "lines_log"));
        assert_eq!(t[0].primary_key, vec!["order_id", "line"]);
        assert_eq!(t[0].columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), vec!["order_id", "line", "sku"]);
        let json = r#"[{"table_schema":"public","table_name":"t","column_name":"id","ordinal_position":1,"data_type":"uuid","is_primary_key":true,"key_position":1},
                       {"table_schema":"audit","table_name":"t","column_name":"id","ordinal_position":1,"data_type":"integer","is_primary_key":"t","key_position":null}]"#;
        let t = tables(Engine::Postgres, &parse(json).unwrap()).unwrap();
        assert_eq!(t.iter().map(|t| t.final_table.as_str()).collect::<Vec<_>>(), vec!["audit_t", "public_t"], "two schemas: prefixed");
        assert_eq!(t[0].columns[0].ty, ColumnType::Int64);
        assert_eq!(t[1].columns[0].ty, ColumnType::String);
    }

    #[test]
    fn a_table_without_a_key_or_an_unmappable_column_is_an_error_naming_it() {
        let csv = "table_schema,table_name,column_name,ordinal_position,data_type,is_primary_key\nsales,logs,msg,1,text,0\n";
        assert!(matches!(tables(Engine::Mysql, &parse(csv).unwrap()), Err(ImportError::NoPrimaryKey(t)) if t == "sales.logs"));
        let csv = "table_schema,table_name,column_name,ordinal_position,data_type,column_type,is_primary_key\nsales,p,id,1,int,int,1\nsales,p,at,2,point,point,0\n";
        let e = tables(Engine::Mysql, &parse(csv).unwrap()).unwrap_err().to_string();
        assert!(e.starts_with("sales.p.at: spatial"), "{e}");
        assert!(matches!(parse("table_schema,table_name\nsales,t\n"), Err(ImportError::Missing { row: 1, .. })));
    }
}

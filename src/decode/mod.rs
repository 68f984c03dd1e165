//! Decode: Kafka message bytes -> typed changes -> BigQuery log rows.
//!
//! Nothing here panics on input: every way a message can be wrong is a
//! [`Rejection`] with a reason, and the pipeline dead-letters it. Names taken
//! from messages are only compared with configured names; they never reach SQL.

pub mod column_defs;
pub mod dms;
pub mod ident;
pub mod json;
pub mod position;
pub mod row;
pub mod value;

use serde::Deserialize;
use serde_json::{Map, Value};

/// What a change does to its row in the final table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// DMS `load`, `insert`, `update`: the row now has these values.
    Upsert,
    /// DMS `delete`: the row is gone.
    Delete,
}

impl Op {
    /// The value of the log table's `_landfall_op` column.
    pub fn code(self) -> &'static str {
        match self {
            Op::Upsert => "U",
            Op::Delete => "D",
        }
    }
}

/// One row change as the source database made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub schema: String,
    pub table: String,
    pub op: Op,
    /// The source operation as DMS named it (`load`, `insert`, `update`, `delete`).
    pub operation: String,
    /// Column values after the change (for a delete: the deleted row or its key).
    /// A column missing here is NULL (DMS omits NULLs by default).
    pub data: Map<String, Value>,
    /// The before image, when DMS was configured to send one.
    pub before: Option<Map<String, Value>>,
    /// `metadata.timestamp` (RFC 3339): when DMS built the message.
    pub timestamp: String,
    /// The same, in microseconds since the epoch.
    pub timestamp_micros: i64,
    pub commit_timestamp: Option<String>,
    /// `metadata.stream-position`: the source log position, when present.
    pub stream_position: Option<String>,
    pub transaction_id: Option<String>,
    pub transaction_record_id: Option<String>,
}

impl Change {
    /// Whether DMS sent transaction details that name this change in the
    /// source (`IncludeTransactionDetails=true`): a transaction id and the
    /// change's record number within it.
    pub fn has_transaction_details(&self) -> bool {
        self.transaction_id.is_some() && self.transaction_record_id.is_some()
    }
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Row(Change),
    /// A DMS control record (DDL): a truncate or drop-table becomes a marker
    /// row of its table's log (`row::build_control`); the rest are reported
    /// and acknowledged (docs/design.md, "DDL control records").
    Control(Control),
}

/// What a DMS control record says happened to a source table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlKind {
    /// Every row of the table is gone; the table stays (`truncate-table`,
    /// also accepted as `truncate`).
    Truncate,
    /// The table is gone (`drop-table`).
    DropTable,
    /// `create-table`: informational (a re-created table's rows follow as changes).
    CreateTable,
    /// `rename-table`, `add-column`, `drop-column`, `rename-column`,
    /// `change-columns`, `column-type-change`: reported, not applied.
    RenameTable,
    AddColumn,
    DropColumn,
    RenameColumn,
    ChangeColumns,
    ColumnTypeChange,
}

impl ControlKind {
    /// The kind of a DMS control operation name, if it is one.
    pub fn of(operation: &str) -> Option<ControlKind> {
        Some(match operation {
            "truncate-table" | "truncate" => ControlKind::Truncate,
            "drop-table" => ControlKind::DropTable,
            "create-table" => ControlKind::CreateTable,
            "rename-table" => ControlKind::RenameTable,
            "add-column" => ControlKind::AddColumn,
            "drop-column" => ControlKind::DropColumn,
            "rename-column" => ControlKind::RenameColumn,
            "change-columns" => ControlKind::ChangeColumns,
            "column-type-change" => ControlKind::ColumnTypeChange,
            _ => return None,
        })
    }

    /// Whether the record's details can define columns that schema
    /// evolution adds (`add-column`, `change-columns`, `create-table`).
    pub fn defines_columns(self) -> bool {
        matches!(self, ControlKind::AddColumn | ControlKind::ChangeColumns | ControlKind::CreateTable)
    }

    /// The log table's `_landfall_op` of the marker row this kind becomes,
    /// for the kinds that remove rows (truncate and drop-table).
    pub fn marker_op(self) -> Option<&'static str> {
        match self {
            ControlKind::Truncate => Some(OP_TRUNCATE),
            ControlKind::DropTable => Some(OP_DROP_TABLE),
            _ => None,
        }
    }

    /// What the operator should do about a reported kind (for its WARN log).
    pub fn operator_action(self) -> &'static str {
        match self {
            ControlKind::Truncate | ControlKind::DropTable | ControlKind::CreateTable => "none",
            ControlKind::RenameTable => {
                "changes now arrive under the new name: route it ([[tables]] source), or they are dead-lettered \
                 (strict routing) or skipped; the final table keeps the rows landed under the old name"
            }
            ControlKind::AddColumn => {
                "changes that carry the new column are dead-lettered until it is configured: add it to the table's \
                 columns, restart, then `landfall dlq replay --all`"
            }
            ControlKind::DropColumn => {
                "later changes leave the column out: it becomes NULL in the final table (a keep_when_missing column \
                 keeps its last value); remove it from the config when you no longer want it"
            }
            ControlKind::RenameColumn => {
                "changes with the new name are dead-lettered and the old name becomes NULL: rename the column in \
                 the config and the final table, restart, then `landfall dlq replay --all`"
            }
            ControlKind::ChangeColumns | ControlKind::ColumnTypeChange => {
                "values of the new type that do not fit the configured type are dead-lettered: change the \
                 column's type in the config and the tables, restart, then `landfall dlq replay --all`"
            }
        }
    }
}

/// `_landfall_op` of a truncate marker in a log table.
pub const OP_TRUNCATE: &str = "T";
/// `_landfall_op` of a drop-table marker in a log table.
pub const OP_DROP_TABLE: &str = "X";

/// A DMS control record: the metadata that names and orders it.
#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    pub kind: ControlKind,
    /// The operation as DMS named it.
    pub operation: String,
    pub schema: Option<String>,
    pub table: Option<String>,
    /// `metadata.timestamp`, when present and valid (required for the
    /// kinds that become marker rows: it orders them).
    pub timestamp: Option<String>,
    pub timestamp_micros: Option<i64>,
    pub commit_timestamp: Option<String>,
    pub stream_position: Option<String>,
    pub transaction_id: Option<String>,
    pub transaction_record_id: Option<String>,
    /// A short, printable rendering of what the record carries besides its
    /// metadata (`IncludeControlDetails`: table and column definitions), for
    /// the operator's log line. Never used for anything else.
    pub details: Option<String>,
    /// The column definitions in the record's details (the kinds that
    /// define columns: [`ControlKind::defines_columns`]), for schema
    /// evolution's types; empty without `IncludeControlDetails`.
    pub column_defs: Vec<column_defs::ColumnDef>,
}

impl Control {
    /// Whether DMS named this record in the source (as [`Change::has_transaction_details`]).
    pub fn has_transaction_details(&self) -> bool {
        self.transaction_id.is_some() && self.transaction_record_id.is_some()
    }

    /// `schema.table` for log lines (escaped, bounded).
    pub fn table_name(&self) -> String {
        let part = |s: &Option<String>| s.as_deref().map(ident::shown).unwrap_or_default();
        format!("{}.{}", part(&self.schema), part(&self.table))
    }
}

/// Why a message cannot become a row. The text is recorded with the dead letter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("message has no value (Kafka tombstone)")]
    EmptyValue,
    #[error("message is {size} bytes, more than the configured maximum of {max}")]
    TooLarge { size: usize, max: usize },
    #[error(
        "its row for `{table}` is {size} bytes in an insertAll request, more than bigquery.max_request_bytes ({max}): \
         it can never be sent, so the whole change is dead-lettered. To load it, raise bigquery.max_request_bytes (BigQuery \
         takes up to 10000000) and have DMS send the row again (reload the table), or shrink the source value"
    )]
    RowTooLarge { table: String, size: usize, max: usize },
    #[error("message is not valid UTF-8: {0}")]
    NotUtf8(String),
    #[error("message is not valid JSON: {0}")]
    NotJson(String),
    #[error("not an AWS DMS envelope: {0}")]
    NotEnvelope(String),
    #[error("unknown record-type `{0}`")]
    UnknownRecordType(String),
    #[error("unknown data operation `{0}`")]
    UnknownOperation(String),
    #[error("unknown control operation `{0}`")]
    UnknownControlOperation(String),
    #[error("control record `{0}` names no table")]
    ControlWithoutTable(String),
    #[error("table `{0}` is not routed (no [[tables]] entry) and routing is strict")]
    Unrouted(String),
    #[error("{0}")]
    Identifier(#[from] ident::IdentError),
    #[error("column `{column}` is not configured for table `{table}` (add it to the table's columns, or set `[schema] evolve = \"add-columns\"`)")]
    UnknownColumn { table: String, column: String },
    #[error("column `{column}` is named twice in one message (`{first}` and `{second}` differ only by case): ambiguous")]
    AmbiguousColumn { column: String, first: String, second: String },
    #[error("primary-key column `{0}` is missing or NULL")]
    MissingPrimaryKey(String),
    #[error("column `{column}`: {message}")]
    BadValue { column: String, message: String },
    #[error("metadata.{field}: {message}")]
    BadMetadata { field: &'static str, message: String },
    #[error("BigQuery rejected the row: {0}")]
    RejectedBySink(String),
}

/// How a BYTES column's values are written in the message
/// (`pipeline.bytes_encoding`, overridable per column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BytesEncoding {
    /// Hexadecimal with an optional `0x`/`0X` prefix: what DMS sends for
    /// LOB/RAW data by default (`NoHexPrefix=false` adds the prefix).
    #[default]
    Hex,
    /// Standard base64 (with padding).
    Base64,
}

impl BytesEncoding {
    /// The name in the config file.
    pub fn name(self) -> &'static str {
        match self {
            BytesEncoding::Hex => "hex",
            BytesEncoding::Base64 => "base64",
        }
    }
}

/// What orders the changes of one table (`pipeline.order_by`, overridable
/// per table). See docs/design.md, "Ordering".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OrderBy {
    /// `metadata.timestamp`, then the Kafka partition and offset. Works with
    /// and without DMS transaction details; positions are never compared.
    #[default]
    Timestamp,
    /// `metadata.stream-position` as a MySQL binlog position
    /// (`<file>.<sequence>:<offset>[:...]`), then `transaction-record-id`.
    MysqlBinlog,
    /// A PostgreSQL LSN (`XXXXXXXX/XXXXXXXX`, hexadecimal).
    PostgresqlLsn,
    /// A SQL Server LSN (`XXXXXXXX:XXXXXXXX:XXXX`, hexadecimal).
    SqlserverLsn,
    /// An Oracle SCN (decimal).
    OracleScn,
}

impl OrderBy {
    /// The name in the config file.
    pub fn name(self) -> &'static str {
        match self {
            OrderBy::Timestamp => "timestamp",
            OrderBy::MysqlBinlog => "mysql-binlog",
            OrderBy::PostgresqlLsn => "postgresql-lsn",
            OrderBy::SqlserverLsn => "sqlserver-lsn",
            OrderBy::OracleScn => "oracle-scn",
        }
    }
}

/// A BigQuery column type, as written in the config (`type = "INT64"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ColumnType {
    String,
    #[serde(alias = "INTEGER")]
    Int64,
    #[serde(alias = "FLOAT")]
    Float64,
    Numeric,
    Bignumeric,
    #[serde(alias = "BOOLEAN")]
    Bool,
    Timestamp,
    Date,
    Datetime,
    Time,
    Json,
    Bytes,
}

impl ColumnType {
    /// The type name in DDL and in the REST table schema.
    pub fn sql_name(self) -> &'static str {
        match self {
            ColumnType::String => "STRING",
            ColumnType::Int64 => "INT64",
            ColumnType::Float64 => "FLOAT64",
            ColumnType::Numeric => "NUMERIC",
            ColumnType::Bignumeric => "BIGNUMERIC",
            ColumnType::Bool => "BOOL",
            ColumnType::Timestamp => "TIMESTAMP",
            ColumnType::Date => "DATE",
            ColumnType::Datetime => "DATETIME",
            ColumnType::Time => "TIME",
            ColumnType::Json => "JSON",
            ColumnType::Bytes => "BYTES",
        }
    }
}

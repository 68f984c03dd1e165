//! Creating the dataset and tables landfall writes to, when they are missing.
//!
//! * log tables: bookkeeping columns + the source columns, all NULLABLE, day-
//!   partitioned on `_landfall_ingested` with partition expiration (their
//!   retention: landfall never deletes from a log table);
//! * final tables (created with DDL, `PRIMARY KEY (...) NOT ENFORCED`,
//!   clustered by the key): the source columns + `_landfall_order` (the
//!   ordering value of the change that wrote the row, so an older change can
//!   never overwrite it) + `_landfall_key`;
//! * the dead-letter table and the merge-state table (watermarks, and each
//!   table's truncation point and drop state).
//!
//! Log tables take truncate and drop-table marker rows too: only the
//! bookkeeping columns are set, the source columns (primary key included)
//! are NULL, which every log column allows.
//!
//! A table that exists but lacks a configured column gets it added (BigQuery
//! allows adding NULLABLE columns); no column is ever dropped or retyped.
//! Schema evolution ([`BigQuery::add_columns`]) adds a column to the final
//! table first and to the log table second: a row can carry the column only
//! once the log table has it, and by then the final table has it too.

use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::clustering::Clustering;
use gcp_bigquery_client::model::dataset::Dataset;
use gcp_bigquery_client::model::field_type::FieldType;
use gcp_bigquery_client::model::table::Table;
use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;
use gcp_bigquery_client::model::table_schema::TableSchema;
use gcp_bigquery_client::model::time_partitioning::TimePartitioning;

use super::client::{classify, redact, BigQuery, Failure};
use crate::config::{ColumnConfig, Config, TableConfig};
use crate::decode::ident::Quoted;
use crate::decode::ColumnType;
use crate::table::*;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot create or read {what} in BigQuery: {message}. Check the project, dataset and the credentials' permissions (bigquery.dataEditor)")]
    Api {
        what: String,
        message: String,
        /// Worth trying again: a network error, a 5xx or 429, a concurrent
        /// change of the same table (409, 412).
        transient: bool,
    },
    #[error("column `{column}` of {table} has BigQuery type {ty}, which landfall does not write; give the column a type landfall writes (README, \"Types\") or leave it out of the source's changes")]
    Unsupported { table: String, column: String, ty: String },
}

impl SchemaError {
    /// Whether the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, SchemaError::Api { transient: true, .. })
    }
}

fn api(what: impl Into<String>) -> impl FnOnce(BQError) -> SchemaError {
    let what = what.into();
    move |e| {
        let conflict = matches!(&e, BQError::ResponseError { error } if [409, 412].contains(&error.error.code));
        let transient = conflict || matches!(classify(&e), Failure::Transient(_));
        SchemaError::Api { what, message: redact(&e), transient }
    }
}

fn is_not_found(e: &BQError) -> bool {
    matches!(e, BQError::ResponseError { error } if error.error.code == 404)
}

fn is_conflict(e: &BQError) -> bool {
    matches!(e, BQError::ResponseError { error } if error.error.code == 409)
}

fn field(name: &str, ty: ColumnType) -> TableFieldSchema {
    let ft = match ty {
        ColumnType::String => FieldType::String,
        ColumnType::Int64 => FieldType::Int64,
        ColumnType::Float64 => FieldType::Float64,
        ColumnType::Numeric => FieldType::Numeric,
        ColumnType::Bignumeric => FieldType::Bignumeric,
        ColumnType::Bool => FieldType::Bool,
        ColumnType::Timestamp => FieldType::Timestamp,
        ColumnType::Date => FieldType::Date,
        ColumnType::Datetime => FieldType::Datetime,
        ColumnType::Time => FieldType::Time,
        ColumnType::Json => FieldType::Json,
        ColumnType::Bytes => FieldType::Bytes,
    };
    TableFieldSchema::new(name, ft)
}

/// The type landfall writes a BigQuery column as; `None` for the types it
/// never writes (RECORD, GEOGRAPHY, INTERVAL).
fn column_type(ft: &FieldType) -> Option<ColumnType> {
    Some(match ft {
        FieldType::String => ColumnType::String,
        FieldType::Bytes => ColumnType::Bytes,
        FieldType::Integer | FieldType::Int64 => ColumnType::Int64,
        FieldType::Float | FieldType::Float64 => ColumnType::Float64,
        FieldType::Numeric => ColumnType::Numeric,
        FieldType::Bignumeric => ColumnType::Bignumeric,
        FieldType::Boolean | FieldType::Bool => ColumnType::Bool,
        FieldType::Timestamp => ColumnType::Timestamp,
        FieldType::Date => ColumnType::Date,
        FieldType::Time => ColumnType::Time,
        FieldType::Datetime => ColumnType::Datetime,
        FieldType::Json => ColumnType::Json,
        FieldType::Record | FieldType::Struct | FieldType::Geography | FieldType::Interval => return None,
    })
}

/// A source column as a BigQuery table holds it: its name, and its type if
/// landfall writes that type (else the type's name).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceColumn {
    pub name: String,
    pub ty: Result<ColumnType, String>,
}

pub fn log_table_fields(t: &TableConfig) -> Vec<TableFieldSchema> {
    let mut f = vec![
        field(COL_KEY, ColumnType::String),
        field(COL_OP, ColumnType::String),
        field(COL_ORDER, ColumnType::String),
        field(COL_INGESTED, ColumnType::Timestamp),
        field(COL_SOURCE_TS, ColumnType::Timestamp),
        field(COL_TOPIC, ColumnType::String),
        field(COL_PARTITION, ColumnType::Int64),
        field(COL_OFFSET, ColumnType::Int64),
        field(COL_MISSING, ColumnType::Int64),
    ];
    f.extend(t.columns.iter().map(|c| field(&c.name, c.ty)));
    f
}

pub fn final_table_fields(t: &TableConfig) -> Vec<TableFieldSchema> {
    let mut f: Vec<_> = t.columns.iter().map(|c| field(&c.name, c.ty)).collect();
    f.push(field(COL_ORDER, ColumnType::String));
    f.push(field(COL_KEY, ColumnType::String));
    f
}

/// Primary key + the ordering value of the newest delete of that key.
pub fn tombstone_fields(t: &TableConfig) -> Vec<TableFieldSchema> {
    let mut f: Vec<_> =
        t.primary_key.iter().filter_map(|k| t.columns.iter().find(|c| &c.name == k)).map(|c| field(&c.name, c.ty)).collect();
    f.push(field(COL_ORDER, ColumnType::String));
    f
}

pub fn dead_letter_fields() -> Vec<TableFieldSchema> {
    vec![
        field(COL_KEY, ColumnType::String),
        field(COL_INGESTED, ColumnType::Timestamp),
        field(COL_DL_TOPIC, ColumnType::String),
        field(COL_DL_PARTITION, ColumnType::Int64),
        field(COL_DL_OFFSET, ColumnType::Int64),
        field(COL_DL_REASON, ColumnType::String),
        field(COL_DL_PAYLOAD, ColumnType::Bytes),
        field(COL_DL_PAYLOAD_LEN, ColumnType::Int64),
        field(COL_DL_PAYLOAD_HASH, ColumnType::String),
        field(COL_DL_AT, ColumnType::Timestamp),
        field(COL_DL_STAGE, ColumnType::String),
        field(COL_DL_MESSAGE_KEY, ColumnType::Bytes),
        field(COL_DL_HEADERS, ColumnType::String),
        field(COL_DL_MESSAGE_TS, ColumnType::Timestamp),
        field(COL_DL_TABLE, ColumnType::String),
        field(COL_DL_ROW, ColumnType::String),
    ]
}

/// One row per final table: the merge watermark, and its DDL state
/// (docs/design.md, "DDL control records"): the ordering value of its newest
/// truncate or drop (`truncated_order`), of its newest drop
/// (`dropped_order`), and of the drop the operator last resumed from
/// (`resumed_order`). An existing state table gets the DDL columns added.
pub fn state_fields() -> Vec<TableFieldSchema> {
    vec![
        field("final_table", ColumnType::String),
        field("watermark", ColumnType::Timestamp),
        field("updated_at", ColumnType::Timestamp),
        field("truncated_order", ColumnType::String),
        field("dropped_order", ColumnType::String),
        field("resumed_order", ColumnType::String),
    ]
}

impl BigQuery {
    pub async fn ensure_dataset(&self) -> Result<(), SchemaError> {
        match self.client.dataset().get(&self.project, &self.dataset).await {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(api(format!("dataset {}", self.dataset))(e)),
        }
        let ds = Dataset::new(&self.project, &self.dataset).location(&self.location);
        match self.client.dataset().create(ds).await {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(api(format!("dataset {}", self.dataset))(e)),
        }
    }

    /// Creates `table` with `fields` if missing; adds missing fields if not.
    pub async fn ensure_table(
        &self,
        table: &str,
        fields: Vec<TableFieldSchema>,
        partition: Option<TimePartitioning>,
        cluster_by: Option<Vec<String>>,
    ) -> Result<(), SchemaError> {
        let what = || format!("table {}.{}", self.dataset, table);
        match self.client.table().get(&self.project, &self.dataset, table, None).await {
            Ok(existing) => {
                let have: Vec<String> =
                    existing.schema.fields.as_ref().map(|f| f.iter().map(|f| f.name.to_ascii_lowercase()).collect()).unwrap_or_default();
                let missing: Vec<TableFieldSchema> = fields.into_iter().filter(|f| !have.contains(&f.name.to_ascii_lowercase())).collect();
                // Another process (a `dlq replay`, an operator) may have
                // changed it moments ago: streaming may not see that yet.
                if let Some(ms) = existing.last_modified_time.as_deref().and_then(|t| t.parse::<u64>().ok()) {
                    self.schema_changed(table, std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms));
                }
                if missing.is_empty() {
                    return Ok(());
                }
                tracing::info!(table, added = ?missing.iter().map(|f| &f.name).collect::<Vec<_>>(), "adding columns");
                let mut all = existing.schema.fields.clone().unwrap_or_default();
                all.extend(missing);
                let mut patched = existing;
                patched.schema = TableSchema::new(all);
                self.client.table().patch(&self.project, &self.dataset, table, patched).await.map_err(api(what()))?;
                self.schema_changed(table, std::time::SystemTime::now());
                Ok(())
            }
            Err(e) if is_not_found(&e) => {
                let mut t = Table::new(&self.project, &self.dataset, table, TableSchema::new(fields));
                if let Some(p) = partition {
                    t = t.time_partitioning(p);
                }
                if let Some(cols) = cluster_by {
                    t = t.clustering(Clustering { fields: Some(cols.into_iter().take(4).collect()) });
                }
                match self.client.table().create(t).await {
                    Ok(_) => Ok(()),
                    Err(e) if is_conflict(&e) => Ok(()),
                    Err(e) => Err(api(what())(e)),
                }
            }
            Err(e) => Err(api(what())(e)),
        }
    }

    /// Creates a final table with DDL (for its primary key), or adds missing columns.
    pub async fn ensure_final_table(&self, t: &TableConfig) -> Result<(), SchemaError> {
        match self.client.table().get(&self.project, &self.dataset, &t.final_table, None).await {
            Ok(_) => self.ensure_table(&t.final_table, final_table_fields(t), None, None).await,
            Err(e) if is_not_found(&e) => {
                let what = || format!("table {}.{}", self.dataset, t.final_table);
                let bad = |e: crate::decode::ident::IdentError| SchemaError::Api { what: what(), message: e.to_string(), transient: false };
                let target = Quoted::table_path(&self.project, &self.dataset, &t.final_table).map_err(bad)?;
                let columns = t
                    .columns
                    .iter()
                    .map(|c| Quoted::column(&c.name).map(|q| (q, c.ty.sql_name())))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(bad)?;
                let pk = t.primary_key.iter().map(|c| Quoted::column(c)).collect::<Result<Vec<_>, _>>().map_err(bad)?;
                let sql = create_final_table_statement(&target, &columns, &pk);
                self.query(&sql).await.map_err(api(what()))?;
                Ok(())
            }
            Err(e) => Err(api(format!("table {}.{}", self.dataset, t.final_table))(e)),
        }
    }

    /// The source columns of `table` (its columns but landfall's own
    /// `_landfall_` ones), in table order; empty if the table does not exist.
    pub async fn source_columns(&self, table: &str) -> Result<Vec<SourceColumn>, SchemaError> {
        match self.client.table().get(&self.project, &self.dataset, table, None).await {
            Ok(t) => Ok(t
                .schema
                .fields
                .unwrap_or_default()
                .into_iter()
                .filter(|f| !f.name.to_ascii_lowercase().starts_with("_landfall_"))
                .map(|f| SourceColumn {
                    ty: column_type(&f.r#type).ok_or_else(|| format!("{:?}", f.r#type).to_ascii_uppercase()),
                    name: f.name,
                })
                .collect()),
            Err(e) if is_not_found(&e) => Ok(Vec::new()),
            Err(e) => Err(api(format!("table {}.{}", self.dataset, table))(e)),
        }
    }

    /// Schema evolution: makes `columns` exist in `t`'s final table, then
    /// in its log table (in that order: a row can carry a column only once
    /// the log table has it, and then the final table has it too). A column
    /// either table already has keeps the type it has there (an earlier try,
    /// another process or an operator added it), so the columns returned,
    /// one per column asked for, carry the types BigQuery holds. Nothing is
    /// dropped or retyped. Safe to call again after any failure.
    pub async fn add_columns(
        &self,
        t: &TableConfig,
        columns: &[ColumnConfig],
        log_partition_expiration: std::time::Duration,
    ) -> Result<Vec<ColumnConfig>, SchemaError> {
        let mut present = self.source_columns(&t.final_table).await?;
        present.extend(self.source_columns(&t.log_table).await?);
        let mut actual = Vec::with_capacity(columns.len());
        for c in columns {
            let ty = match present.iter().find(|p| p.name.eq_ignore_ascii_case(&c.name)) {
                None => c.ty,
                Some(SourceColumn { ty: Ok(ty), .. }) => *ty,
                Some(SourceColumn { ty: Err(ty), name }) => {
                    return Err(SchemaError::Unsupported { table: t.final_table.clone(), column: name.clone(), ty: ty.clone() })
                }
            };
            actual.push(ColumnConfig { ty, ..c.clone() });
        }
        let mut grown = t.clone();
        grown.columns.extend(actual.iter().cloned());
        self.ensure_final_table(&grown).await?;
        let expiration = TimePartitioning::per_day().field(COL_INGESTED).expiration_ms(log_partition_expiration);
        self.ensure_table(&t.log_table, log_table_fields(&grown), Some(expiration), None).await?;
        Ok(actual)
    }

    /// Creates the dataset and every table the config names.
    pub async fn ensure_all(&self, cfg: &Config) -> Result<(), SchemaError> {
        self.ensure_dataset().await?;
        let expiration = TimePartitioning::per_day().field(COL_INGESTED).expiration_ms(cfg.bigquery.log_partition_expiration);
        for t in &cfg.tables {
            self.ensure_table(&t.log_table, log_table_fields(t), Some(expiration.clone()), None).await?;
            self.ensure_final_table(t).await?;
            self.ensure_table(&tombstone_table_name(&t.final_table), tombstone_fields(t), None, Some(t.primary_key.clone())).await?;
        }
        self.ensure_table(
            &cfg.bigquery.dead_letter_table,
            dead_letter_fields(),
            Some(TimePartitioning::per_day().field(COL_INGESTED)),
            None,
        )
        .await?;
        self.ensure_table(&cfg.bigquery.state_table, state_fields(), None, None).await?;
        Ok(())
    }
}

//! Comparing BigQuery's final tables with the simulator's model.
//!
//! Both sides are brought to one canonical text per value (by column type),
//! so the comparison is exact: integers as integers, NUMERIC without trailing
//! zeros, TIMESTAMP as microseconds, JSON re-serialized, NULL as NULL.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Model;
use crate::config::TableConfig;
use crate::decode::ident::Quoted;
use crate::decode::{value, ColumnType};
use crate::sink::client::cell;
use crate::sink::BigQuery;

/// The verdict for one table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableVerdict {
    pub table: String,
    pub source_rows: usize,
    pub final_rows: usize,
    pub source_checksum: String,
    pub final_checksum: String,
    /// Keys whose rows differ (missing, extra, or other values), at most 10.
    pub differing_keys: Vec<String>,
    pub differing_total: usize,
    /// Keys of the source missing from the final table (lost changes or
    /// deletes applied wrongly), and keys in the final table the source lacks.
    pub missing_keys: usize,
    pub extra_keys: usize,
    /// Primary keys present more than once in the final table.
    pub duplicate_keys: usize,
}

impl TableVerdict {
    pub fn matches(&self) -> bool {
        self.differing_total == 0 && self.duplicate_keys == 0 && self.source_rows == self.final_rows
    }
}

const NULL: &str = "NULL";

/// Canonical text of a model value (as DMS sent it) for a column type.
fn canon_model(ty: ColumnType, v: Option<&Value>) -> String {
    match v.map(|v| value::convert_as(ty, crate::decode::BytesEncoding::Hex, v)) {
        None | Some(Ok(Value::Null)) => NULL.into(),
        Some(Err(e)) => format!("<invalid: {e}>"),
        Some(Ok(v)) => canon(
            ty,
            &match v {
                Value::String(s) => s,
                other => other.to_string(),
            },
        ),
    }
}

/// Canonical text of a value in BigQuery's string form (query results).
fn canon(ty: ColumnType, s: &str) -> String {
    match ty {
        ColumnType::Int64 => s.parse::<i64>().map(|i| i.to_string()).unwrap_or_else(|_| s.into()),
        ColumnType::Float64 => s.parse::<f64>().map(|f| format!("{f:?}")).unwrap_or_else(|_| s.into()),
        ColumnType::Bool => s.to_ascii_lowercase(),
        ColumnType::Numeric | ColumnType::Bignumeric => {
            let s = s.trim_start_matches('+');
            if s.contains('.') {
                s.trim_end_matches('0').trim_end_matches('.').to_owned()
            } else {
                s.to_owned()
            }
        }
        ColumnType::Timestamp => timestamp_micros(s).map(|m| m.to_string()).unwrap_or_else(|| s.into()),
        ColumnType::Json => serde_json::from_str::<Value>(s).map(|v| v.to_string()).unwrap_or_else(|_| s.into()),
        _ => s.to_owned(),
    }
}

/// Microseconds from RFC 3339 text or BigQuery's epoch-seconds text
/// (`1795748400.123456`, possibly in scientific notation).
fn timestamp_micros(s: &str) -> Option<i64> {
    if let Ok(m) = value::parse_timestamp_micros(s) {
        return Some(m);
    }
    if !s.contains(['e', 'E']) {
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let neg = int.starts_with('-');
        let secs: i64 = int.parse().ok()?;
        let mut f = frac.to_owned();
        f.truncate(6);
        while f.len() < 6 {
            f.push('0');
        }
        let micros: i64 = f.parse().ok()?;
        return Some(secs * 1_000_000 + if neg { -micros } else { micros });
    }
    s.parse::<f64>().ok().map(|f| (f * 1e6).round() as i64)
}

fn checksum(rows: &BTreeMap<String, String>) -> String {
    let mut h = blake3::Hasher::new();
    for (k, v) in rows {
        h.update(k.as_bytes());
        h.update(&[0x1e]);
        h.update(v.as_bytes());
        h.update(&[0x1d]);
    }
    h.finalize().to_hex()[..16].to_owned()
}

/// The primary key of a row of canonical values (in `t.columns` order).
fn key_of(t: &TableConfig, values: &[String]) -> String {
    t.primary_key
        .iter()
        .filter_map(|k| t.columns.iter().position(|c| &c.name == k).map(|i| values[i].as_str()))
        .collect::<Vec<_>>()
        .join("|")
}

/// Reads `t`'s final table and compares it with `model` (keyed by source name).
pub async fn verify_table(bq: &BigQuery, t: &TableConfig, model: &Model) -> Result<TableVerdict, String> {
    let target = Quoted::table_path(&bq.project, &bq.dataset, &t.final_table).map_err(|e| e.to_string())?;
    let cols: Vec<Quoted> = t.columns.iter().map(|c| Quoted::column(&c.name)).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let list = cols.iter().map(Quoted::as_str).collect::<Vec<_>>().join(", ");
    let sql = format!("SELECT {list} FROM {target}");
    let mut actual: BTreeMap<String, String> = BTreeMap::new();
    let mut duplicate_keys = 0;
    let mut final_rows = 0;
    let mut resp = bq.query(&sql).await.map_err(|e| e.to_string())?;
    let job_id = resp.job_reference.as_ref().and_then(|r| r.job_id.clone());
    loop {
        for row in resp.rows.take().unwrap_or_default() {
            final_rows += 1;
            let values: Vec<String> =
                t.columns.iter().enumerate().map(|(i, c)| cell(&row, i).map(|s| canon(c.ty, &s)).unwrap_or_else(|| NULL.into())).collect();
            if actual.insert(key_of(t, &values), values.join("\u{1f}")).is_some() {
                duplicate_keys += 1;
            }
        }
        let (Some(token), Some(job)) = (resp.page_token.clone(), job_id.clone()) else { break };
        let params = gcp_bigquery_client::model::get_query_results_parameters::GetQueryResultsParameters {
            page_token: Some(token),
            location: Some(bq.location.clone()),
            ..Default::default()
        };
        let r = bq.client.job().get_query_results(&bq.project, &job, params).await.map_err(|e| e.to_string())?;
        resp.rows = r.rows;
        resp.page_token = r.page_token;
    }
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for row in model.get(&t.source).map(|m| m.values()).into_iter().flatten() {
        let values: Vec<String> = t.columns.iter().map(|c| canon_model(c.ty, row.get(&c.name))).collect();
        expected.insert(key_of(t, &values), values.join("\u{1f}"));
    }
    let mut differing: Vec<String> = Vec::new();
    let (mut missing_keys, mut extra_keys) = (0, 0);
    for (k, v) in &expected {
        match actual.get(k) {
            None => {
                missing_keys += 1;
                differing.push(k.clone());
            }
            Some(a) if a != v => differing.push(k.clone()),
            Some(_) => {}
        }
    }
    for k in actual.keys() {
        if !expected.contains_key(k) {
            extra_keys += 1;
            differing.push(k.clone());
        }
    }
    differing.sort();
    Ok(TableVerdict {
        table: t.final_table.clone(),
        source_rows: expected.len(),
        final_rows,
        source_checksum: checksum(&expected),
        final_checksum: checksum(&actual),
        differing_total: differing.len(),
        differing_keys: differing.into_iter().take(10).collect(),
        missing_keys,
        extra_keys,
        duplicate_keys,
    })
}

/// Verifies every table, returning the verdicts.
pub async fn verify_all(bq: &BigQuery, tables: &[TableConfig], model: &Model) -> Result<Vec<TableVerdict>, String> {
    let mut out = Vec::new();
    for t in tables {
        out.push(verify_table(bq, t, model).await?);
    }
    Ok(out)
}

/// A side-by-side report, one line per table, with MATCH or the differing keys.
pub fn report(verdicts: &[TableVerdict]) -> String {
    let mut s = format!(
        "{:<14} {:>12} {:>12}  {:<16}  {:<16}  {}\n",
        "table", "source rows", "final rows", "source checksum", "final checksum", "verdict"
    );
    for v in verdicts {
        let verdict = if v.matches() {
            "MATCH".to_owned()
        } else {
            format!(
                "MISMATCH: {} differing key(s){}{}",
                v.differing_total,
                if v.differing_keys.is_empty() { String::new() } else { format!(" e.g. {}", v.differing_keys.join(", ")) },
                if v.duplicate_keys > 0 { format!(", {} duplicate key(s)", v.duplicate_keys) } else { String::new() }
            )
        };
        s.push_str(&format!(
            "{:<14} {:>12} {:>12}  {:<16}  {:<16}  {}\n",
            v.table, v.source_rows, v.final_rows, v.source_checksum, v.final_checksum, verdict
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_forms_agree_across_sides() {
        assert_eq!(
            canon_model(ColumnType::Timestamp, Some(&json!("2026-11-27 03:00:00.123"))),
            canon(ColumnType::Timestamp, "1795748400.123")
        );
        assert_eq!(canon_model(ColumnType::Numeric, Some(&json!("12.50"))), canon(ColumnType::Numeric, "12.5"));
        assert_eq!(canon_model(ColumnType::Numeric, Some(&json!("12.00"))), canon(ColumnType::Numeric, "12"));
        assert_eq!(canon_model(ColumnType::Float64, Some(&json!(2.25))), canon(ColumnType::Float64, "2.25"));
        assert_eq!(
            canon_model(ColumnType::Json, Some(&json!({"b": 1, "a": [true]}))),
            canon(ColumnType::Json, "{\"a\": [true], \"b\": 1}")
        );
        assert_eq!(canon_model(ColumnType::String, None), NULL);
        assert_eq!(timestamp_micros("1.7957484E9"), Some(1_795_748_400_000_000));
    }
}

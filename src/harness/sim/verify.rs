//! Comparing BigQuery's final tables with the simulator's model: the oracle.
//!
//! Both sides are brought to one canonical text per value by the oracle's
//! own functions ([`super::value`]): the expected side from the source-native
//! values, the actual side from BigQuery's query answer. Nothing here calls
//! landfall's decoder or value conversion. TIMESTAMP columns are read as
//! `UNIX_MICROS(col)`: exact, where the plain column comes back as epoch
//! seconds through a double (the emulator loses microseconds on large dates).

use std::collections::BTreeMap;

use base64::Engine;

use super::value::canon_bigquery;
use super::{ExpectedDeadLetter, Model};
use crate::config::TableConfig;
use crate::decode::ident::Quoted;
use crate::decode::ColumnType;
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
    /// Keys present on both sides whose values differ.
    pub differing_values: usize,
    /// Primary keys present more than once in the final table.
    pub duplicate_keys: usize,
    /// Per column: how many rows differ there, and the first example
    /// (`key: expected != actual`).
    pub column_mismatches: BTreeMap<String, (usize, String)>,
}

impl TableVerdict {
    pub fn matches(&self) -> bool {
        self.differing_total == 0 && self.duplicate_keys == 0 && self.source_rows == self.final_rows
    }
}

const NULL: &str = "NULL";

fn checksum(rows: &BTreeMap<String, Vec<String>>) -> String {
    let mut h = blake3::Hasher::new();
    for (k, v) in rows {
        h.update(k.as_bytes());
        h.update(&[0x1e]);
        h.update(v.join("\u{1f}").as_bytes());
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
    let list = cols
        .iter()
        .zip(&t.columns)
        .map(|(q, c)| if c.ty == ColumnType::Timestamp { format!("UNIX_MICROS({0}) AS {0}", q.as_str()) } else { q.as_str().to_owned() })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("SELECT {list} FROM {target}");
    let mut actual: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut duplicate_keys = 0;
    let mut final_rows = 0;
    let mut resp = bq.query(&sql).await.map_err(|e| e.to_string())?;
    let job_id = resp.job_reference.as_ref().and_then(|r| r.job_id.clone());
    loop {
        for row in resp.rows.take().unwrap_or_default() {
            final_rows += 1;
            let values: Vec<String> = t
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| match cell(&row, i) {
                    None => NULL.into(),
                    Some(s) => canon_bigquery(c.ty, &s).unwrap_or_else(|e| format!("<{e}>")),
                })
                .collect();
            if actual.insert(key_of(t, &values), values).is_some() {
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
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in model.get(&t.source).map(|m| m.values()).into_iter().flatten() {
        let values: Vec<String> = t.columns.iter().map(|c| row.get(&c.name).map_or_else(|| NULL.to_owned(), |v| v.expected())).collect();
        expected.insert(key_of(t, &values), values);
    }
    let mut differing: Vec<String> = Vec::new();
    let (mut missing_keys, mut extra_keys, mut differing_values) = (0, 0, 0);
    let mut column_mismatches: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (k, v) in &expected {
        match actual.get(k) {
            None => {
                missing_keys += 1;
                differing.push(k.clone());
            }
            Some(a) if a != v => {
                differing_values += 1;
                differing.push(k.clone());
                for ((c, e), a) in t.columns.iter().zip(v).zip(a) {
                    if e != a {
                        let entry = column_mismatches.entry(c.name.clone()).or_insert_with(|| (0, format!("{k}: {e:?} != {a:?}")));
                        entry.0 += 1;
                    }
                }
            }
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
        differing_values,
        duplicate_keys,
        column_mismatches,
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
                "MISMATCH: {} missing, {} extra, {} differing{}{}{}",
                v.missing_keys,
                v.extra_keys,
                v.differing_values,
                if v.differing_keys.is_empty() { String::new() } else { format!(" e.g. {}", v.differing_keys.join(", ")) },
                if v.duplicate_keys > 0 { format!(", {} duplicate key(s)", v.duplicate_keys) } else { String::new() },
                v.column_mismatches.iter().map(|(c, (n, ex))| format!("\n    column {c}: {n} row(s), e.g. {ex}")).collect::<String>()
            )
        };
        s.push_str(&format!(
            "{:<14} {:>12} {:>12}  {:<16}  {:<16}  {}\n",
            v.table, v.source_rows, v.final_rows, v.source_checksum, v.final_checksum, verdict
        ));
    }
    s
}

/// What the dead-letter table holds against what the stream was built to contain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeadLetterVerdict {
    pub expected: usize,
    pub found: usize,
    /// Rows repeating a dead letter's key (re-sent to an endpoint without insertId dedup).
    pub copies: usize,
    /// Rows that repeat an expected dead letter under a different key.
    pub repeated: usize,
    /// Expected dead letters with no matching row (or a reason that does not say why).
    pub missing: Vec<String>,
    /// Rows that match no expected dead letter (reason and payload prefix).
    pub unexpected: Vec<String>,
}

impl DeadLetterVerdict {
    pub fn matches(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.expected + self.repeated == self.found
    }
}

/// Reads the dead-letter table `table` and matches each row to one expected
/// dead letter by payload (the table may hold a prefix) and reason.
pub async fn verify_dead_letters(bq: &BigQuery, table: &str, expected: &[ExpectedDeadLetter]) -> Result<DeadLetterVerdict, String> {
    let target = Quoted::table_path(&bq.project, &bq.dataset, table).map_err(|e| e.to_string())?;
    let resp = bq.query(&format!("SELECT `reason`, `payload` FROM {target}")).await.map_err(|e| e.to_string())?;
    let mut rows: Vec<(String, Vec<u8>)> = Vec::new();
    for r in resp.rows.unwrap_or_default() {
        let reason = cell(&r, 0).unwrap_or_default();
        let payload = cell(&r, 1).and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok()).unwrap_or_default();
        rows.push((reason, payload));
    }
    let mut v = DeadLetterVerdict { expected: expected.len(), found: rows.len(), ..Default::default() };
    let mut used = vec![false; rows.len()];
    for e in expected {
        let hit = rows.iter().enumerate().position(|(i, (reason, payload))| {
            !used[i] && !payload.is_empty() && e.payload.starts_with(payload) && reason.contains(e.reason_contains)
        });
        match hit {
            Some(i) => used[i] = true,
            None => v.missing.push(format!("{} (reason should mention {:?})", e.what, e.reason_contains)),
        }
    }
    for (i, (reason, payload)) in rows.iter().enumerate() {
        if !used[i] && expected.iter().any(|e| !payload.is_empty() && e.payload.starts_with(payload) && reason.contains(e.reason_contains))
        {
            // The same bad message recorded again under another key (e.g.
            // dead-lettered again after a restart): not a foreign dead letter.
            v.repeated += 1;
        } else if !used[i] {
            v.unexpected.push(format!("{reason} [{}]", String::from_utf8_lossy(&payload[..payload.len().min(120)])));
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::super::value::*;
    use super::*;
    use crate::config::ColumnConfig;

    #[test]
    fn keys_come_from_canonical_values() {
        let t = TableConfig::new(
            "s.t",
            "l",
            "f",
            &["id", "region"],
            vec![
                ColumnConfig::new("id", ColumnType::Int64),
                ColumnConfig::new("x", ColumnType::Numeric),
                ColumnConfig::new("region", ColumnType::String),
            ],
        );
        let values = vec![canon_bigquery(ColumnType::Int64, "7").unwrap(), "1.5".into(), "eu".into()];
        assert_eq!(key_of(&t, &values), "7|eu");
        let mut row = super::super::Row::new();
        row.insert("id".into(), SourceValue::Int(7));
        row.insert("region".into(), SourceValue::Text("eu".into()));
        assert_eq!(super::super::pk_text(&t, &row), "7|eu");
    }

    #[test]
    fn nine_digit_fractions_truncate_to_the_microsecond() {
        let ts = SourceValue::Timestamp(Timestamp {
            unix_nanos: 1_795_748_400_123_456_999,
            offset_minutes: 0,
            digits: 9,
            style: TsStyle::Plain,
        });
        assert_eq!(ts.expected(), canon_bigquery(ColumnType::Timestamp, "1795748400123456").unwrap());
        let t = SourceValue::Time(TimeOfDay { nanos: 1_999_999_999, digits: 9 });
        assert_eq!(t.expected(), canon_bigquery(ColumnType::Time, "00:00:01.999999").unwrap());
        assert_ne!(t.expected(), canon_bigquery(ColumnType::Time, "00:00:02").unwrap(), "never rounded up");
    }
}

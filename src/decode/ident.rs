//! BigQuery identifier validation and quoting.
//!
//! Guarantee: every identifier that reaches SQL text went through one of the
//! `validate_*` functions here and is emitted by [`quote`], so it is a
//! backtick-quoted run of letters, digits, `_` (and `-` for tables). Names that
//! arrive in messages (source schema, table and column names) are only ever
//! compared against configured names; a message carrying one that is not a
//! valid identifier is dead-lettered by the decoder.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{}` is not a valid BigQuery {kind} name: {why}", printable(.name))]
pub struct IdentError {
    pub kind: &'static str,
    pub name: String,
    pub why: &'static str,
}

/// At most 64 characters of a name, with control characters escaped, for messages.
pub fn shown(name: &str) -> String {
    printable(name)
}

fn printable(name: &str) -> String {
    let mut s: String = name.chars().take(64).flat_map(char::escape_debug).collect();
    if name.chars().count() > 64 {
        s.push('…');
    }
    s
}

/// Prefix reserved for landfall's own bookkeeping columns.
pub const RESERVED_PREFIX: &str = "_landfall_";

/// Column name prefixes BigQuery reserves.
const BIGQUERY_RESERVED: &[&str] = &["_table_", "_file_", "_partition", "_row_timestamp", "__root__", "_colon_", "_change_"];

fn err(kind: &'static str, name: &str, why: &'static str) -> IdentError {
    IdentError { kind, name: name.to_owned(), why }
}

/// A column: ASCII letter or `_` first, then letters, digits, `_`; at most 300 characters.
pub fn validate_column(name: &str) -> Result<(), IdentError> {
    const K: &str = "column";
    if name.is_empty() || name.len() > 300 {
        return Err(err(K, name, "must be 1 to 300 characters"));
    }
    let first = name.as_bytes()[0];
    if !(first.is_ascii_alphabetic() || first == b'_') {
        return Err(err(K, name, "must start with a letter or underscore"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(err(K, name, "may contain only letters, digits and underscores"));
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with(RESERVED_PREFIX) {
        return Err(err(K, name, "the prefix `_landfall_` is reserved for landfall's own columns"));
    }
    if BIGQUERY_RESERVED.iter().any(|p| lower.starts_with(p)) {
        return Err(err(K, name, "starts with a prefix BigQuery reserves"));
    }
    Ok(())
}

/// A table: letters, digits, `_` and `-`; 1 to 1024 characters.
pub fn validate_table(name: &str) -> Result<(), IdentError> {
    if name.is_empty() || name.len() > 1024 {
        return Err(err("table", name, "must be 1 to 1024 characters"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(err("table", name, "may contain only letters, digits, `_` and `-`"));
    }
    Ok(())
}

/// A dataset: letters, digits and `_`; 1 to 1024 characters.
pub fn validate_dataset(name: &str) -> Result<(), IdentError> {
    if name.is_empty() || name.len() > 1024 {
        return Err(err("dataset", name, "must be 1 to 1024 characters"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(err("dataset", name, "may contain only letters, digits and `_`"));
    }
    Ok(())
}

/// A project id: 6 to 30 lowercase letters, digits and `-`, starting with a
/// letter; optionally domain-scoped (`example.com:my-project`).
pub fn validate_project(name: &str) -> Result<(), IdentError> {
    const K: &str = "project";
    let id = match name.rsplit_once(':') {
        Some((domain, id)) => {
            if domain.is_empty() || !domain.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-') {
                return Err(err(K, name, "domain prefix may contain only lowercase letters, digits, `.` and `-`"));
            }
            id
        }
        None => name,
    };
    if id.len() < 6 || id.len() > 30 {
        return Err(err(K, name, "must be 6 to 30 characters"));
    }
    if !id.as_bytes()[0].is_ascii_lowercase() {
        return Err(err(K, name, "must start with a lowercase letter"));
    }
    if !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') || id.ends_with('-') {
        return Err(err(K, name, "may contain only lowercase letters, digits and `-`, not ending in `-`"));
    }
    Ok(())
}

/// A validated identifier, quoted for SQL. Construct only through the
/// validating constructors so that unchecked text cannot reach SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quoted(String);

impl Quoted {
    pub fn column(name: &str) -> Result<Quoted, IdentError> {
        validate_column(name)?;
        Ok(Quoted(format!("`{name}`")))
    }

    /// One of landfall's own bookkeeping columns (`_landfall_*`); the names
    /// are constants of this crate, checked here all the same.
    pub fn internal(name: &'static str) -> Quoted {
        assert!(
            name.starts_with(RESERVED_PREFIX) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "internal column names are landfall constants"
        );
        Quoted(format!("`{name}`"))
    }

    /// `project.dataset.table`, quoted as one path.
    pub fn table_path(project: &str, dataset: &str, table: &str) -> Result<Quoted, IdentError> {
        validate_project(project)?;
        validate_dataset(dataset)?;
        validate_table(table)?;
        Ok(Quoted(format!("`{project}.{dataset}.{table}`")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Quoted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns() {
        for ok in ["id", "_x", "Name_2", "a".repeat(300).as_str()] {
            validate_column(ok).unwrap();
        }
        for bad in ["", "1a", "a-b", "a b", "a`b", "x;drop table t", "é", "_landfall_key", "_PARTITIONTIME", &"a".repeat(301)] {
            assert!(validate_column(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tables_datasets_projects() {
        validate_table("orders-2024_log").unwrap();
        assert!(validate_table("a.b").is_err());
        assert!(validate_table("a`b").is_err());
        validate_dataset("cdc_1").unwrap();
        assert!(validate_dataset("cdc-1").is_err());
        validate_project("landfall-local").unwrap();
        validate_project("example.com:my-proj").unwrap();
        for bad in ["abc", "Landfall-local", "1andfall", "landfall-", "a`bcdefg", "my proj x"] {
            assert!(validate_project(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(Quoted::column("id").unwrap().as_str(), "`id`");
        assert_eq!(Quoted::table_path("landfall-local", "d", "t").unwrap().as_str(), "`landfall-local.d.t`");
        assert!(Quoted::column("a`; DROP").is_err());
    }

    #[test]
    fn error_message_escapes_control_characters() {
        let e = validate_column("a\nb\u{202e}").unwrap_err().to_string();
        assert!(!e.contains('\n') && !e.contains('\u{202e}'), "{e}");
    }
}

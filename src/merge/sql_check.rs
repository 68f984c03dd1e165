//! Checks a statement from the builder in [`super::sql`] with a real SQL
//! parser (`sqlparser`, BigQuery dialect): it must parse as exactly one
//! `MERGE` (or, for [`check_delete`], one `DELETE`), every word it contains
//! that is not backtick-quoted must be the builder's own vocabulary
//! (keywords, aliases, functions, the state table's columns), every quoted
//! word must be a name the caller passed in or one of landfall's own, and
//! every string literal must be one the builder writes (`'D'`, `'U'`, `'T'`,
//! `'X'`, a timestamp) or one the caller allows (a final table's validated
//! name, the key of its state row).
//!
//! So a name taken from a message can reach the SQL only quoted, and nothing
//! in a name can end the statement or open a second one.
//!
//! Test-only code: compiled into the unit tests, and included by path into the
//! `merge_sql` fuzz target (`fuzz/fuzz_targets/merge_sql.rs`).

use sqlparser::ast::Statement;
use sqlparser::dialect::BigQueryDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

/// Every unquoted word the MERGE and tombstone builders write.
const VOCABULARY: &[&str] = &[
    "MERGE",
    "AS",
    "T",
    "S",
    "L",
    "TB",
    "USING",
    "SELECT",
    "FROM",
    "EXCEPT",
    "WHERE",
    "QUALIFY",
    "ROW_NUMBER",
    "OVER",
    "PARTITION",
    "BY",
    "ORDER",
    "DESC",
    "TIMESTAMP",
    "AND",
    "OR",
    "IS",
    "NOT",
    "NULL",
    "LEFT",
    "JOIN",
    "ON",
    "WHEN",
    "MATCHED",
    "THEN",
    "DELETE",
    "UPDATE",
    "SET",
    "INSERT",
    "VALUES",
    "_landfall_rn",
    // keep_when_missing
    "IF",
    "IFNULL",
    "FIRST_VALUE",
    "ROWS",
    "BETWEEN",
    "UNBOUNDED",
    "PRECEDING",
    "FOLLOWING",
    // truncate and drop-table markers, the state row
    "IN",
    "MAX",
    "final_table",
    "truncated_order",
    "dropped_order",
];

/// The builder's numbered aliases (`_landfall_kv3`, `_landfall_ko3`): a fixed
/// prefix and digits only, so they cannot carry a name.
fn is_numbered_alias(word: &str) -> bool {
    ["_landfall_kv", "_landfall_ko"]
        .iter()
        .any(|p| word.strip_prefix(p).is_some_and(|n| !n.is_empty() && n.len() <= 2 && n.bytes().all(|b| b.is_ascii_digit())))
}

/// landfall's own quoted columns.
const INTERNAL: &[&str] = &["_landfall_key", "_landfall_op", "_landfall_order", "_landfall_ingested", "_landfall_missing"];

/// `names`: every identifier the statement was built from (table paths as
/// `project.dataset.table`, and columns). Each must appear, and only quoted.
pub fn check_merge(sql: &str, names: &[String]) -> Result<(), String> {
    check_merge_with(sql, names, &[])
}

/// As [`check_merge`], also allowing the string literals `literals`.
pub fn check_merge_with(sql: &str, names: &[String], literals: &[&str]) -> Result<(), String> {
    check(sql, names, literals, "MERGE", |s| matches!(s, Statement::Merge { .. }))
}

/// As [`check_merge_with`], for one `DELETE`.
pub fn check_delete(sql: &str, names: &[String], literals: &[&str]) -> Result<(), String> {
    check(sql, names, literals, "DELETE", |s| matches!(s, Statement::Delete { .. }))
}

fn check(sql: &str, names: &[String], literals: &[&str], kind: &str, is_kind: impl Fn(&Statement) -> bool) -> Result<(), String> {
    let statements = Parser::parse_sql(&BigQueryDialect, sql).map_err(|e| format!("does not parse: {e}"))?;
    match statements.as_slice() {
        [s] if is_kind(s) => {}
        [_] => return Err(format!("parses, but not as a {kind}")),
        many => return Err(format!("{} statements, not one", many.len())),
    }
    let tokens = Tokenizer::new(&BigQueryDialect, sql).tokenize().map_err(|e| format!("does not tokenize: {e}"))?;
    let mut seen = Vec::new();
    for token in &tokens {
        match token {
            Token::Word(w) => match w.quote_style {
                None if VOCABULARY.contains(&w.value.as_str()) || is_numbered_alias(&w.value) => {}
                None => return Err(format!("unquoted word {:?} is not the builder's own", w.value)),
                Some('`') if names.contains(&w.value) || INTERNAL.contains(&w.value.as_str()) => seen.push(w.value.as_str()),
                Some('`') => return Err(format!("quoted name {:?} was not passed in", w.value)),
                Some(q) => return Err(format!("name {:?} quoted with {q}", w.value)),
            },
            Token::SingleQuotedString(s) if ["D", "U", "T", "X"].contains(&s.as_str()) || is_timestamp(s) => {}
            Token::SingleQuotedString(s) if literals.contains(&s.as_str()) => {}
            Token::SingleQuotedString(s) => return Err(format!("string literal {s:?} is not the builder's own")),
            Token::SemiColon => return Err("contains `;`".into()),
            _ => {}
        }
    }
    match names.iter().find(|n| !seen.contains(&n.as_str())) {
        Some(missing) => Err(format!("name {missing:?} does not appear quoted")),
        None => Ok(()),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, as `format_timestamp_micros` writes it
/// (the year may be signed or longer for out-of-range microseconds).
fn is_timestamp(s: &str) -> bool {
    s.ends_with('Z') && s.bytes().all(|b| b.is_ascii_digit() || b"-+:.TZ".contains(&b)) && s.contains('T')
}

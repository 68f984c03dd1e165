//! Arbitrary identifiers and window values into the MERGE builder: either the
//! names are refused, or both statements parse (sqlparser, BigQuery dialect)
//! as exactly one MERGE in which every name from the input appears, and only
//! backtick-quoted; see `src/merge/sql_check.rs` for every rule checked.
#![no_main]

use landfall::merge::sql::{merge_statement, tombstone_statement, tombstone_table_name, MergeTarget, Window};
use libfuzzer_sys::fuzz_target;

#[path = "../../src/merge/sql_check.rs"]
mod sql_check;

fn names(columns: &[String], tables: &[&str]) -> Vec<String> {
    columns.iter().cloned().chain(tables.iter().map(|t| format!("landfall-local.cdc.{t}"))).collect()
}

fuzz_target!(|input: (String, String, Vec<String>, u8, Option<i64>, i64, u8)| {
    let (log, target, mut columns, pk_len, from, to, keep_bits) = input;
    columns.sort();
    columns.dedup();
    if columns.is_empty() {
        return;
    }
    let pk: Vec<String> = columns.iter().take(1 + pk_len as usize % columns.len()).cloned().collect();
    // keep_when_missing: some non-key columns, picked by the bits of `keep_bits`.
    let keep: Vec<String> = columns
        .iter()
        .skip(pk.len())
        .enumerate()
        .filter(|(j, _)| keep_bits & (1 << (j % 8)) != 0)
        .map(|(_, c)| c.clone())
        .take(63)
        .collect();
    let Ok(t) = MergeTarget::new("landfall-local", "cdc", &log, &target, &pk, &columns).and_then(|t| t.keep_when_missing(&keep)) else {
        return;
    };
    let window = Window { from_micros: from, to_micros: to };
    let tombstones = tombstone_table_name(&target);
    let merge = merge_statement(&t, &window);
    if let Err(e) = sql_check::check_merge(&merge, &names(&columns, &[&log, &target, &tombstones])) {
        panic!("{e}\n{merge}");
    }
    let tomb = tombstone_statement(&t, &window);
    if let Err(e) = sql_check::check_merge(&tomb, &names(&pk, &[&log, &tombstones])) {
        panic!("{e}\n{tomb}");
    }
});

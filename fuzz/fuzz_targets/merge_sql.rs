//! Arbitrary identifiers and window values into the MERGE builder (checks::merge_sql).
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;
#[path = "../../src/merge/sql_check.rs"]
#[allow(dead_code)]
mod sql_check;

libfuzzer_sys::fuzz_target!(|input: checks::MergeSqlInput| checks::merge_sql(input));

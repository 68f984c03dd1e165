//! Arbitrary bytes as a WAL record (checks::wal_record).
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;
#[path = "../../src/merge/sql_check.rs"]
#[allow(dead_code)]
mod sql_check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::wal_record(data));

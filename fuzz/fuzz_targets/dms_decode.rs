//! Arbitrary bytes as a Kafka message value (checks::dms_decode).
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;
#[path = "../../src/merge/sql_check.rs"]
#[allow(dead_code)]
mod sql_check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::dms_decode(data));

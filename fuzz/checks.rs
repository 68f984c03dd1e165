//! The fuzz targets' checks, one function per target. The same code runs in
//! two drivers: libFuzzer (`fuzz/fuzz_targets/`, `make fuzz`: coverage-guided,
//! release build) and the smoke run in `make test` (`tests/fuzz_smoke.rs`:
//! the seeds, the local corpus and crash artifacts, then random mutations of
//! them, in the tests' own build). A check panics when a property fails.
//!
//! The including crate declares this file and `src/merge/sql_check.rs` as
//! modules `checks` and `sql_check`.

use landfall::config::{ColumnConfig, TableConfig};
use landfall::decode::row::{build, Coords};
use landfall::decode::{dms, ColumnType, Decoded, OrderBy};
use landfall::merge::sql::{merge_statement, tombstone_statement, tombstone_table_name, MergeTarget, Window};
use landfall::wal::record::{decode, decode_dead_letter, decode_key_list, encode, encode_key_list, key_list_holds};
use landfall::wal::{DeadLetter, PendingBatch, Record};

/// Arbitrary bytes as a Kafka message value: decoding and row building must
/// return a row or a rejection, never panic.
pub fn dms_decode(data: &[u8]) {
    let Ok(Decoded::Row(change)) = dms::decode(data, "before-image") else { return };
    use ColumnType::*;
    let columns = [
        ("id", Int64),
        ("name", String),
        ("amount", Numeric),
        ("big", Bignumeric),
        ("at", Timestamp),
        ("doc", Json),
        ("ok", Bool),
        ("f", Float64),
        ("d", Date),
        ("dt", Datetime),
        ("t", Time),
        ("b", Bytes),
    ]
    .iter()
    .map(|(n, t)| ColumnConfig::new(n, *t))
    .collect();
    let source = format!("{}.{}", change.schema, change.table);
    let mut route = TableConfig::new(&source, "t_log", "t", &["id"], columns);
    let at = Coords { topic: "t".into(), partition: 0, offset: 0 };
    let _ = build(&change, &route, &at);
    // The same change under each position format: a row or a rejection.
    for order_by in [OrderBy::MysqlBinlog, OrderBy::PostgresqlLsn, OrderBy::SqlserverLsn, OrderBy::OracleScn] {
        route.order_by = Some(order_by);
        let _ = build(&change, &route, &at);
    }
}

/// Arbitrary bytes as a WAL record: decoding returns a record or an error,
/// never panics, and never allocates without bound (the decoder's limit).
pub fn wal_record(data: &[u8]) {
    if let Ok(r) = decode::<Record>(data) {
        // What decodes survives a round trip (and always encodes: it fit the limit).
        let bytes = encode(&r).expect("a decoded record encodes");
        assert_eq!(decode::<Record>(&bytes).as_ref(), Ok(&r));
    }
    let _ = decode::<DeadLetter>(data);
    let _ = decode_dead_letter(data);
    if let Ok(b) = decode::<PendingBatch>(data) {
        let bytes = encode(&b).expect("a decoded record encodes");
        assert_eq!(decode::<PendingBatch>(&bytes).as_ref(), Ok(&b));
    }
    if let Ok(keys) = decode_key_list(data) {
        // A key list that decodes is sorted: it re-encodes to the same bytes,
        // and holds each of its keys.
        let mut list: Vec<[u8; 32]> = keys.chunks_exact(32).map(|k| k.try_into().unwrap()).collect();
        assert!(list.iter().all(|k| key_list_holds(keys, k)));
        let bytes = encode_key_list(&mut list).expect("a decoded key list encodes");
        assert_eq!(&bytes[1..], keys);
    }
}

/// The input of [`merge_sql`]: log table, final table, columns, primary-key
/// length, window start and end, `keep_when_missing` bits.
pub type MergeSqlInput = (String, String, Vec<String>, u8, Option<i64>, i64, u8);

fn names(columns: &[String], tables: &[&str]) -> Vec<String> {
    columns.iter().cloned().chain(tables.iter().map(|t| format!("landfall-local.cdc.{t}"))).collect()
}

/// Arbitrary identifiers and window values into the MERGE builder: either the
/// names are refused, or both statements parse (sqlparser, BigQuery dialect)
/// as exactly one MERGE in which every name from the input appears, and only
/// backtick-quoted; see `src/merge/sql_check.rs` for every rule checked.
pub fn merge_sql(input: MergeSqlInput) {
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
    if let Err(e) = crate::sql_check::check_merge(&merge, &names(&columns, &[&log, &target, &tombstones])) {
        panic!("{e}\n{merge}");
    }
    let tomb = tombstone_statement(&t, &window);
    if let Err(e) = crate::sql_check::check_merge(&tomb, &names(&pk, &[&log, &tombstones])) {
        panic!("{e}\n{tomb}");
    }
}

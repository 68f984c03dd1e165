//! Arbitrary bytes as a Kafka message value: decoding and row building must
//! return a row or a rejection, never panic.
#![no_main]

use landfall::config::{ColumnConfig, TableConfig};
use landfall::decode::row::{build, Coords};
use landfall::decode::{dms, ColumnType, Decoded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Decoded::Row(change)) = dms::decode(data, "before-image") else { return };
    use ColumnType::*;
    let columns = [("id", Int64), ("name", String), ("amount", Numeric), ("at", Timestamp), ("doc", Json), ("ok", Bool), ("f", Float64), ("d", Date), ("b", Bytes)]
        .iter()
        .map(|(n, t)| ColumnConfig { name: (*n).into(), ty: *t })
        .collect();
    let route = TableConfig {
        source: format!("{}.{}", change.schema, change.table),
        log_table: "t_log".into(),
        final_table: "t".into(),
        primary_key: vec!["id".into()],
        columns,
    };
    let _ = build(&change, &route, &Coords { topic: "t".into(), partition: 0, offset: 0 });
});

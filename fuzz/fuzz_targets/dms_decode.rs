//! Arbitrary bytes as a Kafka message value: decoding and row building must
//! return a row or a rejection, never panic.
#![no_main]

use landfall::config::{ColumnConfig, TableConfig};
use landfall::decode::row::{build, Coords};
use landfall::decode::{dms, ColumnType, Decoded, OrderBy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});

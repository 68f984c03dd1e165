//! `landfall tables import`: a catalog export of each engine (MySQL CSV and
//! PostgreSQL JSON of the simulated `sales` schema, `tests/corpus/catalog/`)
//! becomes a `[[tables]]` section that `landfall validate` accepts and that
//! carries the simulator's stream end to end: the final tables equal the
//! source rows.

mod support;

use std::process::Command;
use std::time::Duration;

use landfall::config::{Config, TableConfig};
use landfall::harness::demo::{demo_config_toml, run_until_caught_up};
use landfall::harness::sim::Simulator;

/// A route's source, log and final table, key, and columns with their types.
type Shape = (String, String, String, Vec<String>, Vec<(String, &'static str)>);

/// What a route says, comparable.
fn shape(tables: &[TableConfig]) -> Vec<Shape> {
    let mut v: Vec<_> = tables
        .iter()
        .map(|t| {
            let cols = t.columns.iter().map(|c| (c.name.clone(), c.ty.sql_name())).collect();
            (t.source.clone(), t.log_table.clone(), t.final_table.clone(), t.primary_key.clone(), cols)
        })
        .collect();
    v.sort();
    v
}

/// `landfall tables import`, then `landfall validate` of a config holding
/// its output; the validated config's tables.
fn import_and_validate(file: &str, engine: &str, work: &std::path::Path) -> Vec<TableConfig> {
    let export = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/catalog").join(file);
    let out = Command::new(env!("CARGO_BIN_EXE_landfall"))
        .args(["tables", "import", "--engine", engine, "--from"])
        .arg(&export)
        .output()
        .unwrap();
    let section = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "import failed: {}", String::from_utf8_lossy(&out.stderr));
    let header = demo_config_toml("127.0.0.1:9092", "http://127.0.0.1:9050/bigquery/v2", "landfall-local", "d", &work.join("wal"), &[]);
    let path = work.join(format!("{engine}.toml"));
    std::fs::write(&path, format!("{header}{section}")).unwrap();
    let validated = Command::new(env!("CARGO_BIN_EXE_landfall")).args(["validate", "--config"]).arg(&path).output().unwrap();
    assert!(validated.status.success(), "validate refused it: {}\n{section}", String::from_utf8_lossy(&validated.stderr));
    Config::load(&path).unwrap().tables
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_exports_of_mysql_and_postgres_become_tables_that_carry_the_demo_stream() {
    let work = tempfile::tempdir().unwrap();
    let expected = shape(&landfall::harness::sim::tables());
    let mysql = import_and_validate("mysql-sales.csv", "mysql", work.path());
    assert_eq!(shape(&mysql), expected, "MySQL's types map to the simulator's columns");
    let postgres = import_and_validate("postgres-sales.json", "postgres", work.path());
    assert_eq!(shape(&postgres), expected, "PostgreSQL's types map to the simulator's columns");

    // The imported routes carry a stream with every column type, duplicates
    // and a restart, and the final tables equal the source rows.
    let stack = support::Stack::start_for("tblimport", 3, "", &[], &mysql).await;
    let (kafka, cfg) = (&stack.kafka, &stack.cfg);
    let mut sim = Simulator::new(7);
    let mut msgs = sim.full_load(80);
    msgs.extend(sim.changes(800));
    sim.duplicate(&mut msgs, 0.05);
    let half = msgs.len() / 2;
    kafka.produce(&msgs[..half]).unwrap();
    run_until_caught_up(cfg, kafka, Duration::from_secs(300)).await.unwrap();
    kafka.produce(&msgs[half..]).unwrap();
    run_until_caught_up(cfg, kafka, Duration::from_secs(300)).await.unwrap();
    stack.merge_and_verify(&sim.model).await;
}

#[test]
fn an_export_with_an_unmappable_type_fails_naming_the_column() {
    let work = tempfile::tempdir().unwrap();
    let export = work.path().join("bad.csv");
    std::fs::write(
        &export,
        "table_schema,table_name,column_name,ordinal_position,data_type,column_type,is_primary_key\nsales,shops,id,1,int,int,1\nsales,shops,location,2,point,point,0\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_landfall"))
        .args(["tables", "import", "--engine", "mysql", "--from"])
        .arg(&export)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("sales.shops.location: spatial type point"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing half-written to stdout");
}

//! The crash-recovery drill, short: >= 10 random kill -9 rounds, a kill at
//! every failpoint, a two-bridge takeover and a SIGTERM shutdown, all through
//! the real `landfall` binary as a child process, verified row for row.

mod support;

use std::process::Command;

/// Runs `landfall drill ARGS --json`; its exit status, JSON report and stderr.
fn drill(args: &[&str]) -> (std::process::ExitStatus, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_landfall"))
        .arg("drill")
        .args(args)
        .arg("--json")
        .env("LANDFALL_BQ_ENDPOINT", support::endpoint())
        .env("LANDFALL_BQ_PROJECT", support::project())
        .output()
        .expect("run landfall drill");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = stdout.lines().last().unwrap_or_else(|| panic!("no report; stderr:\n{stderr}"));
    let r: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}\nstderr:\n{stderr}"));
    (out.status, r, stderr)
}

#[test]
fn drill_with_kills_failpoints_and_takeover_verifies() {
    let (status, r, stderr) = drill(&["--rounds", "10", "--changes", "2500", "--load-rows", "150", "--seed", "20261127"]);
    for key in [
        "seed",
        "rounds",
        "kills",
        "changes_produced",
        "duplicates_absorbed_by_wal",
        "duplicates_absorbed_by_merge",
        "lost",
        "duplicate_rows_in_final",
        "tables_matching",
        "tables_total",
        "verified",
    ] {
        assert!(r.get(key).is_some(), "report lacks {key}: {r}");
    }
    assert_eq!(r["seed"], 20261127);
    assert_eq!(r["rounds"], 10);
    assert_eq!(r["failpoints_missed"], serde_json::json!([]), "{r}");
    assert_eq!(r["failpoints_hit"].as_array().unwrap().len(), landfall::failpoint::ALL.len(), "{r}");
    assert!(r["kills"].as_u64().unwrap() >= 10, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicate_rows_in_final"], 0, "{r}");
    assert_eq!(r["tables_matching"], r["tables_total"], "{r}");
    assert!(r["duplicates_absorbed_by_wal"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["graceful_shutdown_ok"], true, "{r}");
    assert_eq!(r["verified"], true, "{r}\nstderr:\n{stderr}");
    assert!(status.success());
    // Progress, one line per step on a stderr that is not a terminal.
    let steps = 10 + landfall::failpoint::ALL.len() + 1 + 2;
    for line in [format!("drill: 1/{steps} kill -9 round 1"), format!("drill: {steps}/{steps} merge and verify")] {
        assert!(stderr.contains(&line), "no `{line}` in stderr:\n{stderr}");
    }
}

/// The same drill on DMS's default stream: no transaction details, so a
/// change is identified by its Kafka position and ordered by timestamp; the
/// copies and re-published ranges become log rows of their own, and the
/// final tables must still equal the source.
#[test]
fn drill_without_transaction_details_verifies() {
    let (status, r, stderr) = drill(&[
        "--rounds",
        "6",
        "--no-failpoints",
        "--no-takeover",
        "--changes",
        "2000",
        "--load-rows",
        "100",
        "--seed",
        "20261128",
        "--no-transaction-details",
    ]);
    assert!(r["kills"].as_u64().unwrap() >= 6, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicate_rows_in_final"], 0, "{r}");
    assert_eq!(r["tables_matching"], r["tables_total"], "{r}");
    assert_eq!(r["verified"], true, "{r}\nstderr:\n{stderr}");
    assert!(status.success());
}

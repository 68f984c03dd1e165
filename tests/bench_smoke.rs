//! A smoke run of the benchmark harness (`landfall bench --quick`): every
//! phase runs on small volumes through the real binary, the mock broker and
//! the emulator, and the JSON report holds every figure. The figures of a
//! debug build on small volumes are not checked against the targets; that is
//! `make bench`'s job (docs/performance.md).

mod support;

use std::process::Command;

#[test]
fn bench_quick_reports_every_figure() {
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_landfall"))
        .args(["bench", "--quick", "--json", "--work-dir"])
        .arg(work.path())
        .env("LANDFALL_BQ_ENDPOINT", support::endpoint())
        .env("LANDFALL_BQ_PROJECT", support::project())
        .output()
        .expect("run landfall bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {}\nstderr:\n{stderr}", out.status);
    let line = stdout.lines().last().unwrap_or_else(|| panic!("no report; stderr:\n{stderr}"));
    let r: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}\nstderr:\n{stderr}"));
    let num = |k: &str| r.get(k).and_then(serde_json::Value::as_f64).unwrap_or_else(|| panic!("report lacks {k}: {r}"));
    // Every key the issue names, measured (positive), not defaulted.
    for key in [
        "raw_consume_msgs_per_s",
        "discard_msgs_per_s",
        "bigquery_msgs_per_s",
        "emulator_raw_rows_per_s",
        "ratio_discard_vs_raw",
        "ratio_bigquery_vs_emulator_raw",
        "blackhole_msgs_per_s",
        "blackhole_latency_msgs_per_s",
        "ratio_http_vs_discard",
        "ratio_latency_vs_no_latency",
        "latency_p50_ms",
        "latency_p99_ms",
        "peak_rss_mb",
        "wal_bytes_per_change",
        "request_bytes_per_change_plain",
        "request_bytes_per_change_gzip",
        "recovery_seconds_100k_pending",
        "merge_seconds_1x",
        "merge_seconds_10x",
        "burst_peak_rss_mb",
        "burst_ratio_peak_rss_vs_inflight_bound",
        "burst_inflight_bytes_max",
    ] {
        let v = num(key);
        assert!(v.is_finite() && v > 0.0, "{key} = {v}: {r}");
    }
    assert!(num("latency_p99_ms") >= num("latency_p50_ms"), "{r}");
    assert!(num("request_bytes_per_change_gzip") < num("request_bytes_per_change_plain"), "{r}");
    assert_eq!(num("backlog_messages"), 20_000.0);
    assert_eq!(num("burst_messages"), 12.0);
    assert!(num("recovery_pending_records") >= 5_000.0, "{r}");
    // The ratios are what they say.
    let ratio = num("discard_msgs_per_s") / num("raw_consume_msgs_per_s");
    assert!((num("ratio_discard_vs_raw") - ratio).abs() < 1e-9 * ratio.max(1.0), "{r}");
    let ratio = num("blackhole_latency_msgs_per_s") / num("blackhole_msgs_per_s");
    assert!((num("ratio_latency_vs_no_latency") - ratio).abs() < 1e-9 * ratio.max(1.0), "{r}");
    assert_eq!((num("blackhole_messages"), num("blackhole_latency_ms")), (10_000.0, 150.0), "{r}");
}

//! `landfall check` as an operator runs it: the binary, its exit code and
//! its JSON, against the local broker and the emulator, and against parts
//! that do not answer.

mod support;

use std::path::Path;
use std::process::Command;

use landfall::harness::demo::{demo_config_toml, LocalKafka};
use serde_json::Value;

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("landfall.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `landfall check --json`: (exit code, the checks by name).
fn check(config: &Path) -> (i32, Value, Vec<(String, String, String)>) {
    let out = Command::new(env!("CARGO_BIN_EXE_landfall")).args(["check", "--json", "--config"]).arg(config).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr)));
    let lines = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                format!("{} {}", l["part"].as_str().unwrap(), l["check"].as_str().unwrap()),
                l["verdict"].as_str().unwrap().to_owned(),
                l["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (out.status.code().unwrap(), report, lines)
}

fn find<'a>(lines: &'a [(String, String, String)], name: &str) -> &'a (String, String, String) {
    lines.iter().find(|l| l.0 == name).unwrap_or_else(|| panic!("no line {name:?} in {lines:#?}"))
}

/// The demo config for the local broker and emulator, a dataset and a WAL in `dir`.
fn local_config(kafka: &LocalKafka, dir: &Path, dataset: &str) -> String {
    demo_config_toml(
        &kafka.bootstrap_servers(),
        &support::endpoint(),
        &support::project(),
        dataset,
        &dir.join("wal"),
        &landfall::harness::sim::tables(),
    )
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_against_the_local_broker_and_emulator() {
    let kafka = LocalKafka::start("check.ok", 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dataset = support::unique_dataset("check_ok");
    let text = local_config(&kafka, dir.path(), &dataset).replace("\"dms.sales\"", "\"check.ok\"");
    let config = write_config(dir.path(), &text);

    // Before the first start: the dataset is missing, which is a warning
    // (landfall creates it), not a failure.
    let (code, report, lines) = check(&config);
    assert_eq!(code, 0, "{lines:#?}");
    assert_eq!(report["ok"], true);
    assert_eq!(find(&lines, &format!("bigquery dataset {dataset}")).1, "warn");
    let bootstrap = kafka.bootstrap_servers();
    let first = bootstrap.split(',').next().unwrap();
    assert_eq!(find(&lines, &format!("kafka resolve {first}")).1, "pass");
    assert_eq!(find(&lines, &format!("kafka connect {first}")).1, "pass");
    assert_eq!(find(&lines, "kafka TLS handshake").1, "skip", "plaintext: not used");
    assert_eq!(find(&lines, "kafka brokers answer").1, "pass");
    let topic = find(&lines, "kafka topic check.ok");
    assert_eq!((topic.1.as_str(), topic.2.as_str()), ("pass", "3 partition(s)"));
    let group = find(&lines, "kafka group landfall-demo");
    assert_eq!(group.1, "pass", "{group:?}");
    assert!(group.2.contains("0 of 3"), "{group:?}");
    assert_eq!(find(&lines, "bigquery query jobs").1, "pass");

    // Once the service has created its tables: every table and the
    // permissions on them (the emulator answers tables.testIamPermissions).
    let cfg = landfall::config::Config::load(&config).unwrap();
    support::bigquery(&cfg).await;
    let (code, _, lines) = check(&config);
    assert_eq!(code, 0, "{lines:#?}");
    assert!(lines.iter().all(|l| l.1 != "fail" && l.1 != "warn"), "{lines:#?}");
    assert_eq!(find(&lines, &format!("bigquery dataset {dataset}")).1, "pass");
    for t in &cfg.tables {
        assert_eq!(find(&lines, &format!("bigquery table {}", t.log_table)).1, "pass");
        assert_eq!(find(&lines, &format!("bigquery table {}", t.final_table)).1, "pass");
    }
    let perms = find(&lines, "bigquery permissions");
    assert_eq!(perms.1, "pass", "{perms:?}");
    assert!(perms.2.contains("bigquery.tables.updateData"), "{perms:?}");

    // The human checklist says the same.
    let out = Command::new(env!("CARGO_BIN_EXE_landfall")).args(["check", "--config"]).arg(&config).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(
        text.contains("PASS  kafka") && text.contains("topic check.ok") && text.lines().last().unwrap().starts_with("ready:"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_and_says_where_when_nothing_answers() {
    let dir = tempfile::tempdir().unwrap();
    let kafka_port = closed_port();
    let bq_port = closed_port();
    let text = demo_config_toml(
        &format!("127.0.0.1:{kafka_port},no-such-broker.invalid:9092"),
        &format!("http://127.0.0.1:{bq_port}/bigquery/v2"),
        "landfall-local",
        "nowhere",
        &dir.path().join("wal"),
        &landfall::harness::sim::tables(),
    )
    .replace("retry_max_delay = \"2s\"", "retry_max_delay = \"2s\"\nrequest_timeout = \"5s\"")
    .replace("request_timeout = \"30s\"\n", "");
    let config = write_config(dir.path(), &text);
    let (code, report, lines) = check(&config);
    assert_eq!(code, 1, "{lines:#?}");
    assert_eq!(report["ok"], false);
    assert_eq!(find(&lines, &format!("kafka resolve 127.0.0.1:{kafka_port}")).1, "pass");
    let connect = find(&lines, &format!("kafka connect 127.0.0.1:{kafka_port}"));
    assert_eq!(connect.1, "fail");
    assert!(connect.2.contains("refused"), "{connect:?}");
    let dns = find(&lines, "kafka resolve no-such-broker.invalid:9092");
    assert_eq!(dns.1, "fail");
    assert!(dns.2.contains("does not resolve"), "{dns:?}");
    // What needs a broker is not checked, and says why.
    let topic = find(&lines, "kafka topic dms.sales");
    assert_eq!(topic.1, "skip");
    assert!(topic.2.contains("not reached"), "{topic:?}");
    let dataset = find(&lines, "bigquery dataset nowhere");
    assert_eq!(dataset.1, "fail");
    assert!(dataset.2.contains(&format!("127.0.0.1:{bq_port}")), "the endpoint is named: {dataset:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_fails_its_line_only() {
    let kafka = LocalKafka::start("check.present", 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = local_config(&kafka, dir.path(), &support::unique_dataset("check_topic"))
        .replace("topics = [\"dms.sales\"]", "topics = [\"check.present\", \"check.absent\"]");
    let config = write_config(dir.path(), &text);
    let (code, _, lines) = check(&config);
    assert_eq!(code, 1, "{lines:#?}");
    assert_eq!(find(&lines, "kafka topic check.present").1, "pass");
    let absent = find(&lines, "kafka topic check.absent");
    assert_eq!(absent.1, "fail");
    assert!(absent.2.contains("does not exist"), "{absent:?}");
    let failed: Vec<_> = lines.iter().filter(|l| l.1 == "fail").collect();
    assert_eq!(failed.len(), 1, "only the absent topic fails: {failed:#?}");
}

/// The mock cluster has a plaintext listener only (tests/kafka_auth.rs):
/// a TLS client and a SASL client against it show which line fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_sasl_failures_land_on_their_own_lines() {
    let kafka = LocalKafka::start("check.tls", 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = local_config(&kafka, dir.path(), &support::unique_dataset("check_tls")).replace("\"dms.sales\"", "\"check.tls\"");
    let with = |protocol: &str| {
        base.replace(
            "[wal]",
            &format!(
                "[kafka.properties]\n\"security.protocol\" = \"{protocol}\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
                 \"sasl.username\" = \"landfall\"\n\"sasl.password\" = \"never-printed-pw\"\n\n[wal]"
            ),
        )
    };
    let config = write_config(dir.path(), &with("SASL_SSL"));
    let (code, report, lines) = check(&config);
    assert_eq!(code, 1);
    let tls = find(&lines, "kafka TLS handshake");
    assert_eq!(tls.1, "fail");
    // librdkafka says "SSL handshake failed: ..." or "... in state SSL_HANDSHAKE".
    assert!(tls.2.contains("SSL handshake failed") || tls.2.contains("SSL_HANDSHAKE"), "{tls:?}");
    assert_eq!(find(&lines, "kafka authentication").1, "skip");
    assert!(!report.to_string().contains("never-printed-pw"), "the SASL password is in the report");

    let config = write_config(dir.path(), &with("SASL_PLAINTEXT"));
    let (code, report, lines) = check(&config);
    assert_eq!(code, 1);
    assert_eq!(find(&lines, "kafka TLS handshake").1, "skip");
    let auth = find(&lines, "kafka authentication");
    assert_eq!(auth.1, "fail");
    assert!(auth.2.contains("SASL SCRAM-SHA-512") && auth.2.contains("SASL"), "{auth:?}");
    assert!(!report.to_string().contains("never-printed-pw"), "the SASL password is in the report");
}

//! `landfall check`: connects to every part of a deployment and says, line
//! by line, what works and what does not, before any data moves.
//!
//! Kafka ([`kafka`]): each bootstrap address resolves and accepts a TCP
//! connection, the TLS handshake, authentication (and, for MSK IAM, the AWS
//! credentials behind the token), the brokers' metadata, each topic and its
//! partitions, and the group coordinator (the group's committed offsets).
//! BigQuery ([`bigquery`]): credentials, the dataset, every table the config
//! names, the IAM permissions landfall needs on each (through
//! `tables.testIamPermissions`), and query jobs (a dry run).
//!
//! Nothing is changed on either side: no message is consumed, no offset
//! committed, nothing created. A line is `pass`, `warn` (works, but needs
//! attention: e.g. a table landfall will create), `fail`, or `skip` (not
//! checked, and why: not configured, not reached, not offered by the
//! endpoint). The verdict fails if any line fails. Details never contain
//! secrets: they come from librdkafka's and BigQuery's error texts, which
//! name hosts and reasons, passed through the sink's redaction.

pub mod bigquery;
pub mod kafka;

use std::fmt;

use serde::Serialize;

use crate::config::Config;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
    Skip,
}

/// One line of the checklist.
#[derive(Clone, Debug, Serialize)]
pub struct Line {
    /// `kafka` or `bigquery`.
    pub part: &'static str,
    /// What was checked, e.g. `topic dms.sales`.
    pub check: String,
    pub verdict: Verdict,
    /// What was found, or what to do.
    pub detail: String,
}

impl Line {
    pub fn new(part: &'static str, check: impl Into<String>, verdict: Verdict, detail: impl Into<String>) -> Line {
        Line { part, check: check.into(), verdict, detail: detail.into() }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// No line failed.
    pub ok: bool,
    pub checks: Vec<Line>,
}

/// Runs every check of `cfg`. Never fails itself: what cannot be checked is
/// a line that says so.
pub async fn run(cfg: &Config) -> Report {
    let kafka_cfg = cfg.kafka.clone();
    let kafka = tokio::task::spawn_blocking(move || kafka::check(&kafka_cfg));
    let bigquery = bigquery::check(cfg).await;
    let mut checks = kafka.await.unwrap_or_else(|e| vec![Line::new("kafka", "checks", Verdict::Fail, format!("the check panicked: {e}"))]);
    checks.extend(bigquery);
    Report { ok: checks.iter().all(|l| l.verdict != Verdict::Fail), checks }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.checks.iter().map(|l| l.check.chars().count()).max().unwrap_or(0);
        for l in &self.checks {
            let v = match l.verdict {
                Verdict::Pass => "PASS",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
                Verdict::Skip => "SKIP",
            };
            writeln!(f, "{v}  {:<8}  {:<width$}  {}", l.part, l.check, l.detail)?;
        }
        let count = |v| self.checks.iter().filter(|l| l.verdict == v).count();
        writeln!(
            f,
            "{}: {} passed, {} warnings, {} failed, {} not checked",
            if self.ok { "ready" } else { "NOT READY" },
            count(Verdict::Pass),
            count(Verdict::Warn),
            count(Verdict::Fail),
            count(Verdict::Skip),
        )
    }
}

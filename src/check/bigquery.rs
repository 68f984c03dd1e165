//! The BigQuery lines of `landfall check`.

use gcp_bigquery_client::error::BQError;

use super::{Line, Verdict};
use crate::config::{Auth, Config};
use crate::sink::access::{AccessError, TABLE_PERMISSIONS};
use crate::sink::client::{classify, Failure};
use crate::sink::BigQuery;

const PART: &str = "bigquery";

fn line(check: impl Into<String>, verdict: Verdict, detail: impl Into<String>) -> Line {
    Line::new(PART, check, verdict, detail)
}

fn code(e: &BQError) -> Option<i64> {
    match e {
        BQError::ResponseError { error } => Some(error.error.code),
        BQError::RequestError(r) => r.status().map(|s| i64::from(s.as_u16())),
        _ => None,
    }
}

fn describe(e: &BQError, endpoint: &str) -> String {
    let text = match classify(e) {
        Failure::Transient(s) | Failure::Invalid(s) => s,
    };
    match code(e) {
        None => format!("{text} ({endpoint})"),
        Some(403) => format!("{text}: the identity lacks a role here (docs/security.md lists the ones landfall needs)"),
        Some(401) => format!("{text}: the credentials were refused"),
        Some(_) => text,
    }
}

/// Every table the config makes landfall write or read.
fn tables(cfg: &Config) -> Vec<String> {
    let mut t: Vec<String> = cfg.tables.iter().flat_map(|t| [t.log_table.clone(), t.final_table.clone()]).collect();
    t.push(cfg.bigquery.dead_letter_table.clone());
    t.push(cfg.bigquery.state_table.clone());
    let mut seen = std::collections::HashSet::new();
    t.retain(|n| seen.insert(n.clone()));
    t
}

pub async fn check(cfg: &Config) -> Vec<Line> {
    let mut lines = Vec::new();
    let b = &cfg.bigquery;
    let endpoint = b.endpoint.clone().unwrap_or_else(|| "https://bigquery.googleapis.com".into());
    let names = tables(cfg);
    let skip_rest = |lines: &mut Vec<Line>, why: &str| {
        lines.push(line(format!("dataset {}", b.dataset), Verdict::Skip, why));
        skip_rest_after_dataset(lines, &names, why);
    };
    let how = match &b.auth {
        Auth::None => None,
        Auth::ServiceAccountKey { key_file, .. } => Some(format!("service-account key {}", key_file.display())),
        Auth::ApplicationDefault => Some("application default credentials".to_owned()),
    };
    let bq = match BigQuery::connect(b).await {
        Ok(bq) => bq,
        Err(e) => {
            lines.push(line("credentials", Verdict::Fail, e.to_string()));
            skip_rest(&mut lines, "no client");
            return lines;
        }
    };
    match (&how, bq.check_credentials().await) {
        (None, _) => lines.push(line("credentials", Verdict::Skip, "none used (bigquery.auth = none: an emulator)")),
        (Some(how), Ok(())) => lines.push(line("credentials", Verdict::Pass, format!("token obtained ({how})"))),
        (Some(how), Err(e)) => {
            lines.push(line("credentials", Verdict::Fail, format!("no token from {how}: {}", describe(&e, &endpoint))));
            skip_rest(&mut lines, "no credentials");
            return lines;
        }
    }

    let dataset = format!("dataset {}", b.dataset);
    match bq.client.dataset().get(&b.project, &b.dataset).await {
        Ok(d) => {
            lines.push(line(dataset, Verdict::Pass, format!("exists in {} (location {})", b.project, d.location.as_deref().unwrap_or("?"))))
        }
        Err(e) if code(&e) == Some(404) => {
            lines.push(line(
                dataset,
                Verdict::Warn,
                format!("does not exist: landfall creates it at start in {} (needs bigquery.datasets.create on the project)", b.location),
            ));
            for t in &names {
                lines.push(line(format!("table {t}"), Verdict::Skip, "its dataset does not exist yet"));
            }
            lines.push(line("permissions", Verdict::Skip, "no table to ask yet"));
            lines.push(query_jobs(&bq, &endpoint).await);
            return lines;
        }
        Err(e) => {
            lines.push(line(dataset, Verdict::Fail, describe(&e, &endpoint)));
            skip_rest_after_dataset(&mut lines, &names, "the dataset could not be read");
            return lines;
        }
    }

    let mut existing = Vec::new();
    for t in &names {
        let check = format!("table {t}");
        match bq.client.table().get(&b.project, &b.dataset, t, None).await {
            Ok(_) => {
                existing.push(t.clone());
                lines.push(line(check, Verdict::Pass, "exists"));
            }
            Err(e) if code(&e) == Some(404) => lines.push(line(
                check,
                Verdict::Warn,
                "does not exist yet: landfall creates it at start (needs bigquery.tables.create on the dataset)",
            )),
            Err(e) => lines.push(line(check, Verdict::Fail, describe(&e, &endpoint))),
        }
    }
    lines.push(permissions(&bq, &existing).await);
    lines.push(query_jobs(&bq, &endpoint).await);
    lines
}

fn skip_rest_after_dataset(lines: &mut Vec<Line>, names: &[String], why: &str) {
    for t in names {
        lines.push(line(format!("table {t}"), Verdict::Skip, why));
    }
    lines.push(line("permissions", Verdict::Skip, why));
    lines.push(line("query jobs", Verdict::Skip, why));
}

async fn permissions(bq: &BigQuery, tables: &[String]) -> Line {
    if tables.is_empty() {
        return line("permissions", Verdict::Skip, "no table to ask yet");
    }
    let mut missing = Vec::new();
    for t in tables {
        match bq.table_permissions(t, TABLE_PERMISSIONS).await {
            Ok(granted) => {
                let lacks: Vec<&str> = TABLE_PERMISSIONS.iter().copied().filter(|p| !granted.iter().any(|g| g == p)).collect();
                if !lacks.is_empty() {
                    missing.push(format!("{t}: {}", lacks.join(", ")));
                }
            }
            Err(AccessError::NotOffered(status)) => {
                return line(
                    "permissions",
                    Verdict::Skip,
                    format!("not checked: the endpoint does not offer tables.testIamPermissions (HTTP {status})"),
                )
            }
            Err(e) => return line("permissions", Verdict::Fail, format!("{t}: {e}")),
        }
    }
    if missing.is_empty() {
        line("permissions", Verdict::Pass, format!("{} on all {} existing table(s)", TABLE_PERMISSIONS.join(", "), tables.len()))
    } else {
        line("permissions", Verdict::Fail, format!("missing {} (roles/bigquery.dataEditor on the dataset grants them)", missing.join("; ")))
    }
}

async fn query_jobs(bq: &BigQuery, endpoint: &str) -> Line {
    match bq.dry_run().await {
        Ok(()) => line("query jobs", Verdict::Pass, "a dry-run query was accepted (bigquery.jobs.create, for the MERGE)"),
        Err(e) if code(&e) == Some(403) => line(
            "query jobs",
            Verdict::Fail,
            format!("{}: the MERGE needs bigquery.jobs.create (roles/bigquery.jobUser on the project)", describe(&e, endpoint)),
        ),
        Err(e) => line("query jobs", Verdict::Fail, describe(&e, endpoint)),
    }
}

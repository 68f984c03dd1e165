//! The one-shot merge commands: `landfall merge` (merge now, outside the
//! service's timer) and `landfall ddl resume` (let a merge paused by a
//! drop-table go on). Both take the same per-table lock as the timer, so
//! they are safe while the service runs.

use std::sync::Arc;

use crate::config::Config;
use crate::progress::Progress;
use crate::sink::client::{BigQuery, ClientError};

use super::{MergeError, MergeReport, Merger};

/// What `landfall merge` did, per table.
pub struct MergeRun(Vec<Result<MergeReport, MergeError>>);

impl MergeRun {
    /// True when a table failed or is paused (the command exits non-zero).
    pub fn failed(&self) -> bool {
        self.0.iter().any(|r| r.as_ref().map_or(true, |r| r.paused_by_drop.is_some()))
    }

    /// Prints one line per table: what changed on stdout, failures and
    /// paused tables (with what to do) on stderr.
    pub fn print(&self) {
        for r in &self.0 {
            match r {
                Ok(r) if r.paused_by_drop.is_some() => eprintln!(
                    "{}: PAUSED: its source table was dropped ({} rows deleted now); run `landfall ddl resume --table {}` once it is re-created or removed",
                    r.table, r.truncated_rows, r.table
                ),
                Ok(r) => println!("{}: {} rows changed", r.table, r.affected_rows),
                Err(e) => eprintln!("{e}"),
            }
        }
    }
}

/// `landfall merge`: merges every table (only `table`, a final table's name,
/// if given) once; `full` ignores the watermarks and merges the whole logs.
pub async fn merge_now(cfg: &Arc<Config>, full: bool, table: Option<&str>) -> Result<MergeRun, ClientError> {
    let merger = Merger::one_shot(BigQuery::connect(&cfg.bigquery).await?, cfg.clone());
    let tables: Vec<_> = cfg.tables.iter().filter(|t| table.is_none_or(|n| n == t.final_table)).collect();
    let mut progress = Progress::new(if full { "merge --full" } else { "merge" }, tables.len() as u64);
    let mut out = Vec::new();
    for t in tables {
        out.push(merger.merge_table(t, full).await);
        progress.step(&t.final_table);
    }
    progress.finish();
    Ok(MergeRun(out))
}

/// What `landfall ddl resume` did.
pub enum Resumed {
    /// The merge goes on after the drop at this ordering value.
    AfterDrop { table: String, dropped: String },
    /// No drop-table waited for a resume.
    NotPaused { table: String },
}

impl std::fmt::Display for Resumed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resumed::AfterDrop { table, dropped } => {
                write!(f, "{table}: resumed after the drop at {dropped}; the next merge applies the changes after it")
            }
            Resumed::NotPaused { table } => write!(f, "{table}: not paused (no drop-table waits for a resume)"),
        }
    }
}

/// Why `landfall ddl resume` failed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("no [[tables]] entry has final_table = {0:?}")]
    NoSuchTable(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Merge(#[from] MergeError),
}

/// `landfall ddl resume --table T`.
pub async fn resume(cfg: &Arc<Config>, table: &str) -> Result<Resumed, ResumeError> {
    let t = cfg.tables.iter().find(|t| t.final_table == table).ok_or_else(|| ResumeError::NoSuchTable(table.to_owned()))?;
    let merger = Merger::one_shot(BigQuery::connect(&cfg.bigquery).await?, cfg.clone());
    Ok(match merger.resume_table(t).await? {
        Some(dropped) => Resumed::AfterDrop { table: table.to_owned(), dropped },
        None => Resumed::NotPaused { table: table.to_owned() },
    })
}

//! Step 1 with schema evolution (`[schema] evolve = "add-columns"`;
//! docs/design.md, "Schema evolution"): a batch's messages are planned, and
//! those that carry columns their table does not configure ([`Plan::Evolve`])
//! wait while the sink adds the columns (final table first, then log table),
//! then are planned again with the grown config, which the pipeline keeps
//! from then on.
//!
//! Guarantees:
//!
//! * nothing of a message that needs a column reaches the WAL before
//!   BigQuery has the column in both tables, so the insertAll of its rows
//!   can succeed (after the streaming path sees the column:
//!   `bigquery.schema_propagation_wait`) and the MERGE, which reads the
//!   column set after the rows are in the log (`src/merge`), carries it;
//! * a column is added, never dropped or retyped; its type is the one a
//!   control record defined (`IncludeControlDetails`), else
//!   `schema.default_type`; a column BigQuery already has keeps its type;
//! * transient failures are retried with backoff until shutdown, which ends
//!   the batch before any of it began ([`PipelineError::Shutdown`]: nothing
//!   is acknowledged, the messages are read again after a restart); a
//!   refusal dead-letters the changes that needed the columns (naming them
//!   and why), and acknowledges a control record, as without evolution;
//! * messages keep their order: those that needed no column are planned
//!   with the config as it was, the same rows they would get after.
//!
//! With evolution off this is [`plan`] for every message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{ColumnConfig, Config, Evolve};
use crate::metrics::{signalled, Metrics};
use crate::sink::Sink;

use super::letters::dead_letter;
use super::prepare::{plan, unevolved, Evolution, Plan};
use super::{Msg, PipelineError};

/// How long the first retry of a transient failure waits; doubled up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(30);

/// Batches at least this large are planned on two threads.
const PLAN_IN_TWO_FROM: usize = 256;

/// [`plan`] for each message, in order. Decoding is most of the consume
/// loop's work, and [`plan`] is a pure function of the message: a large batch
/// is planned in two halves at once, the second on a scoped thread, so that
/// both cores decode.
pub fn plan_each(cfg: &Config, mut msgs: Vec<Msg>, metrics: &Metrics) -> Vec<(Msg, Plan)> {
    let seq = |msgs: Vec<Msg>| -> Vec<(Msg, Plan)> {
        msgs.into_iter()
            .map(|m| {
                let p = plan(cfg, &m, metrics);
                (m, p)
            })
            .collect()
    };
    if msgs.len() < PLAN_IN_TWO_FROM {
        return seq(msgs);
    }
    let second = msgs.split_off(msgs.len() / 2);
    std::thread::scope(|s| {
        let other = s.spawn(|| seq(second));
        let mut planned = seq(msgs);
        planned.extend(other.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        planned
    })
}

/// Plans `msgs`, adding the columns they need first (see the module docs).
/// `cfg` is replaced by the grown config when columns were added.
pub async fn plan_all(
    cfg: &mut Arc<Config>,
    sink: &dyn Sink,
    msgs: Vec<Msg>,
    metrics: &Metrics,
    shutdown: &watch::Receiver<bool>,
) -> Result<Vec<(Msg, Plan)>, PipelineError> {
    let planned = plan_each(cfg, msgs, metrics);
    evolve_planned(cfg, sink, planned, metrics, shutdown).await
}

/// The second half of [`plan_all`], for messages [`plan_each`] planned with
/// `cfg`: adds the columns they need and plans those messages again.
pub async fn evolve_planned(
    cfg: &mut Arc<Config>,
    sink: &dyn Sink,
    mut planned: Vec<(Msg, Plan)>,
    metrics: &Metrics,
    shutdown: &watch::Receiver<bool>,
) -> Result<Vec<(Msg, Plan)>, PipelineError> {
    if cfg.schema.evolve == Evolve::Off || !planned.iter().any(|(_, p)| matches!(p, Plan::Evolve(_))) {
        return Ok(planned);
    }
    let wanted = wanted_columns(cfg, planned.iter().filter_map(|(_, p)| if let Plan::Evolve(e) = p { Some(&**e) } else { None }));
    let mut grown: Config = (**cfg).clone();
    let mut refused: HashMap<String, String> = HashMap::new();
    for (source, columns) in wanted {
        let Some(route) = cfg.tables.iter().find(|t| t.source == source) else { continue };
        match add_with_retries(sink, route, &columns, shutdown).await? {
            Ok(actual) => {
                let names: Vec<String> = actual.iter().map(|c| format!("{} {}", c.name, c.ty.sql_name())).collect();
                tracing::warn!(table = %source, final_table = %route.final_table, log_table = %route.log_table, added = ?names,
                    "schema evolution: columns added to the final and log tables; add them to the config's [[tables]] \
                     to keep them across a new dataset (a restart reads them from BigQuery)");
                Metrics::add(&metrics.schema_columns_added, actual.len() as u64);
                adopt(&mut grown, &source, actual);
            }
            Err(reason) => {
                tracing::error!(table = %source, columns = ?columns.iter().map(|c| &c.name).collect::<Vec<_>>(), reason = %reason,
                    "schema evolution: BigQuery refused the new columns; the changes that carry them are dead-lettered");
                refused.insert(source, reason);
            }
        }
    }
    let grown = Arc::new(grown);
    for (msg, p) in planned.iter_mut() {
        let Plan::Evolve(e) = p else { continue };
        *p = match refused.get(&e.source) {
            Some(reason) => fallback(msg, e, &format!("BigQuery refused them: {reason}")),
            None => match plan(&grown, msg, metrics) {
                Plan::Evolve(again) => fallback(msg, &again, "they are still missing after they were added"),
                other => other,
            },
        };
    }
    *cfg = grown;
    Ok(planned)
}

/// What becomes of a message whose columns could not be added: a change is
/// dead-lettered (naming the columns and why); a control record is
/// acknowledged (it is never dead-lettered for its table).
fn fallback(msg: &Msg, e: &Evolution, why: &str) -> Plan {
    if e.from_control {
        tracing::error!(table = %e.source, offset = msg.offset, partition = msg.partition, why,
            "schema evolution: a control record's columns were not added; the record is acknowledged");
        Plan::Ack
    } else {
        Plan::Dead(Box::new(dead_letter(msg, format!("{} ({why})", unevolved(e)))))
    }
}

/// The columns to add per table, in the order messages name them: a type
/// a control record defines wins over none (a change carries no types),
/// else `schema.default_type`.
fn wanted_columns<'a>(cfg: &Config, evolutions: impl Iterator<Item = &'a Evolution>) -> Vec<(String, Vec<ColumnConfig>)> {
    let mut out: Vec<(String, Vec<(ColumnConfig, bool)>)> = Vec::new();
    for e in evolutions {
        let at = match out.iter().position(|(s, _)| s == &e.source) {
            Some(i) => i,
            None => {
                out.push((e.source.clone(), Vec::new()));
                out.len() - 1
            }
        };
        let columns = &mut out[at].1;
        for c in &e.columns {
            let ty = c.defined.unwrap_or(cfg.schema.default_type);
            match columns.iter_mut().find(|(have, _)| have.name.eq_ignore_ascii_case(&c.name)) {
                Some((have, defined)) if !*defined && c.defined.is_some() => {
                    have.ty = ty;
                    *defined = true;
                }
                Some(_) => {}
                None => columns.push((ColumnConfig::new(&c.name, ty), c.defined.is_some())),
            }
        }
    }
    out.into_iter().map(|(s, cols)| (s, cols.into_iter().map(|(c, _)| c).collect())).collect()
}

/// Adds `columns` through the sink, retrying transient failures with
/// backoff; `Ok(Err(reason))` is a refusal, `Err(Shutdown)` a shutdown.
async fn add_with_retries(
    sink: &dyn Sink,
    route: &crate::config::TableConfig,
    columns: &[ColumnConfig],
    shutdown: &watch::Receiver<bool>,
) -> Result<Result<Vec<ColumnConfig>, String>, PipelineError> {
    let mut delay = FIRST_DELAY;
    loop {
        match sink.add_columns(route, columns).await {
            Ok(actual) => return Ok(Ok(actual)),
            Err(e) if e.is_transient() => {
                tracing::warn!(table = %route.source, error = %e, retry_in = ?delay, "schema evolution: adding columns failed; retrying");
                if *shutdown.borrow() {
                    return Err(PipelineError::Shutdown);
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = signalled(shutdown.clone()) => return Err(PipelineError::Shutdown),
                }
                delay = (delay * 2).min(MAX_DELAY);
            }
            Err(e) => return Ok(Err(e.to_string())),
        }
    }
}

/// Adds `columns` to the route of `source` in `cfg` (BYTES columns written
/// as `pipeline.bytes_encoding`, as configured columns are by default).
pub fn adopt(cfg: &mut Config, source: &str, columns: Vec<ColumnConfig>) {
    let encoding = cfg.pipeline.bytes_encoding;
    if let Some(t) = cfg.tables.iter_mut().find(|t| t.source == source) {
        for mut c in columns {
            if !t.columns.iter().any(|have| have.name.eq_ignore_ascii_case(&c.name)) {
                c.bytes_encoding.get_or_insert(encoding);
                t.columns.push(c);
            }
        }
    }
}

/// At start (`evolve = "add-columns"`): the columns an earlier run added,
/// read from each log table (the last table a column is added to), join
/// the config, with the types BigQuery holds. A column of a type landfall
/// does not write is left out with a warning.
pub async fn adopt_existing(cfg: &Config, bq: &crate::sink::BigQuery) -> Result<Config, crate::sink::schema::SchemaError> {
    let mut grown = cfg.clone();
    if cfg.schema.evolve == Evolve::Off {
        return Ok(grown);
    }
    for t in &cfg.tables {
        let mut found = Vec::new();
        for c in bq.source_columns(&t.log_table).await? {
            if t.columns.iter().any(|have| have.name.eq_ignore_ascii_case(&c.name)) {
                continue;
            }
            match c.ty {
                Ok(ty) => found.push(ColumnConfig::new(&c.name, ty)),
                Err(ty) => tracing::warn!(table = %t.source, column = %c.name, ty,
                    "a log table column has a type landfall does not write; it stays out of the config"),
            }
        }
        if !found.is_empty() {
            tracing::info!(table = %t.source, columns = ?found.iter().map(|c| &c.name).collect::<Vec<_>>(),
                "schema evolution: columns added by an earlier run are used (they are not in the config file)");
            adopt(&mut grown, &t.source, found);
        }
    }
    Ok(grown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::ColumnType;
    use crate::pipeline::prepare::NewColumn;

    fn evolution(source: &str, cols: &[(&str, Option<ColumnType>)]) -> Evolution {
        Evolution {
            source: source.into(),
            columns: cols.iter().map(|(n, t)| NewColumn { name: (*n).into(), defined: *t }).collect(),
            from_control: false,
        }
    }

    #[test]
    fn a_defined_type_wins_over_the_default_and_names_match_ignoring_case() {
        let mut cfg = crate::pipeline::tests::config();
        cfg.schema.default_type = ColumnType::String;
        let es = [
            evolution("sales.customers", &[("note", None), ("score", None)]),
            evolution("sales.customers", &[("SCORE", Some(ColumnType::Int64)), ("note", Some(ColumnType::Json))]),
            evolution("sales.customers", &[("score", Some(ColumnType::Float64))]),
        ];
        let wanted = wanted_columns(&cfg, es.iter());
        assert_eq!(wanted.len(), 1);
        let cols: Vec<(String, ColumnType)> = wanted[0].1.iter().map(|c| (c.name.clone(), c.ty)).collect();
        // The first definition wins; a later one does not retype it.
        assert_eq!(cols, vec![("note".into(), ColumnType::Json), ("score".into(), ColumnType::Int64)]);
    }

    #[test]
    fn adopt_adds_only_new_columns_with_the_pipeline_bytes_encoding() {
        let mut cfg = crate::pipeline::tests::config();
        let before = cfg.tables[0].columns.len();
        let existing = cfg.tables[0].columns[0].name.to_ascii_uppercase();
        let source = cfg.tables[0].source.clone();
        adopt(&mut cfg, &source, vec![ColumnConfig::new(&existing, ColumnType::Json), ColumnConfig::new("blob", ColumnType::Bytes)]);
        let t = &cfg.tables[0];
        assert_eq!(t.columns.len(), before + 1);
        assert_eq!(t.columns.last().unwrap().name, "blob");
        assert_eq!(t.columns.last().unwrap().bytes_encoding, Some(cfg.pipeline.bytes_encoding));
    }
}

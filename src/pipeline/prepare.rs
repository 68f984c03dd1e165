//! Steps 1 and 2 of a batch: each message is planned (decoded into log rows
//! with their dedup keys, a dead letter with its reason, or nothing to ship);
//! rows whose key the WAL already resolved are absorbed, rows whose key is in
//! flight wait for it, and the rest become the batch's pending WAL records.
//! Nothing here writes: the caller flushes the WAL batch before shipping.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Evolve, TableConfig};
use crate::decode::row::{self, Coords};
use crate::decode::{dms, Control, ControlKind, Decoded, Rejection};
use crate::key::DedupKey;
use crate::metrics::Metrics;
use crate::source::kafka;
use crate::source::progress::{self, SharedProgress};
use crate::table::LogRow;
use crate::wal::{now_ms, DeadLetter, KeyState, PendingRecord, Wal, WalBatch};

use super::letters::{coords_of, dead_letter, dead_letter_row};
use super::{Msg, PipelineError, COUNTER_DUPLICATES_ABSORBED};

/// What becomes of one message.
#[derive(Debug)]
pub enum Plan {
    /// Rows for log tables.
    Rows(Vec<(String, row::LogRow)>),
    /// A dead letter, to be recorded and shipped to the dead-letter table.
    Dead(Box<DeadLetter>),
    /// Nothing to ship (a reported control record, an unrouted table in non-strict mode).
    Ack,
    /// Columns to add to a table first (`[schema] evolve = "add-columns"`):
    /// the message is planned again once they exist ([`super::evolve`]).
    Evolve(Box<Evolution>),
}

/// Columns a message needs that its table's route does not configure.
#[derive(Debug, Clone, PartialEq)]
pub struct Evolution {
    /// The route's `source` (`schema.table`).
    pub source: String,
    pub columns: Vec<NewColumn>,
    /// From a control record (which is acknowledged, never dead-lettered,
    /// if its columns cannot be added), not from a change.
    pub from_control: bool,
}

/// One column to add, with the type its control record gave it, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct NewColumn {
    pub name: String,
    pub defined: Option<crate::decode::ColumnType>,
}

/// Decides what becomes of a message. Never panics.
pub fn plan(cfg: &Config, msg: &Msg, metrics: &Metrics) -> Plan {
    let at = Coords { topic: msg.topic.clone(), partition: msg.partition, offset: msg.offset };
    let result = (|| {
        let payload = msg.payload.as_deref().ok_or(Rejection::EmptyValue)?;
        if payload.len() > cfg.pipeline.max_message_bytes {
            return Err(Rejection::TooLarge { size: payload.len(), max: cfg.pipeline.max_message_bytes });
        }
        match dms::decode(payload, &cfg.pipeline.before_image_field)? {
            Decoded::Control(control) => plan_control(cfg, &control, &at, metrics),
            Decoded::Row(change) => match cfg.route(&change.schema, &change.table) {
                Some(route) => {
                    if cfg.schema.evolve == Evolve::AddColumns {
                        let unknown = row::unknown_columns(&change, route)?;
                        if !unknown.is_empty() {
                            let columns = unknown.into_iter().map(|name| NewColumn { name, defined: None }).collect();
                            return Ok(Plan::Evolve(Box::new(Evolution { source: route.source.clone(), columns, from_control: false })));
                        }
                    }
                    let rows = row::build(&change, route, &at)?;
                    // A row BigQuery can never take would otherwise be written
                    // to the WAL, shipped, refused and dead-lettered on its
                    // own, leaving the rest of its change (the delete half of
                    // a primary-key change) applied: the message goes whole.
                    for r in &rows {
                        let size = crate::sink::request::row_request_bytes(r);
                        if size > cfg.bigquery.max_request_bytes {
                            return Err(Rejection::RowTooLarge {
                                table: route.log_table.clone(),
                                size,
                                max: cfg.bigquery.max_request_bytes,
                            });
                        }
                    }
                    if !change.has_transaction_details() {
                        metrics.change_without_transaction_details(&route.source);
                    }
                    Ok(Plan::Rows(rows.into_iter().map(|r| (route.log_table.clone(), r)).collect()))
                }
                None if cfg.pipeline.strict_routing => Err(Rejection::Unrouted(format!("{}.{}", change.schema, change.table))),
                None => {
                    Metrics::add(&metrics.skipped, 1);
                    Ok(Plan::Ack)
                }
            },
        }
    })();
    match result {
        Ok(p) => p,
        Err(rejection) => Plan::Dead(Box::new(dead_letter(msg, rejection.to_string()))),
    }
}

/// A DMS control record (docs/design.md, "DDL control records"):
///
/// * a truncate or drop-table of a routed table becomes a marker row of its
///   log table, shipped through the WAL like any change, so it reaches the
///   MERGE durably and in order (the MERGE empties the final table as of it;
///   a drop also pauses the table's merge until the operator resumes it);
/// * the other DDL kinds are reported (WARN naming the table, what the
///   record carries and what to do; counted in `ddl_reported`) and acknowledged;
/// * `create-table`, and anything for a table that is not routed, is logged
///   and acknowledged: a control record is never dead-lettered for its table;
/// * with `[schema] evolve = "add-columns"`, a record that defines columns
///   (`add-column`, `change-columns`, `create-table` with
///   `IncludeControlDetails`) of a routed table that it does not configure
///   becomes [`Plan::Evolve`], with the types it gives them; planned again
///   once they exist, an `add-column` whose columns all exist is logged and
///   acknowledged (nothing left to do).
fn plan_control(cfg: &Config, control: &Control, at: &Coords, metrics: &Metrics) -> Result<Plan, Rejection> {
    let table = control.table_name();
    let route = match (&control.schema, &control.table) {
        (Some(schema), Some(name)) => cfg.route(schema, name),
        _ => None,
    };
    let (topic, partition, offset) = (&at.topic, at.partition, at.offset);
    if let (Some(route), Evolve::AddColumns) = (route, cfg.schema.evolve) {
        if control.kind.defines_columns() && !control.column_defs.is_empty() {
            let columns = new_columns(control, route, at);
            if !columns.is_empty() {
                // Counted once, when it is planned for the last time.
                return Ok(Plan::Evolve(Box::new(Evolution { source: route.source.clone(), columns, from_control: true })));
            }
            if control.kind == ControlKind::AddColumn {
                metrics.control_record(&control.operation);
                tracing::info!(operation = control.operation, table, final_table = %route.final_table, topic = %topic, partition, offset,
                    "source table gained columns: they are in the log and final tables (schema evolution)");
                return Ok(Plan::Ack);
            }
        } else if control.kind == ControlKind::AddColumn {
            metrics.control_record(&control.operation);
            tracing::info!(operation = control.operation, table, final_table = %route.final_table, topic = %topic, partition, offset,
                "source table gained a column (the record does not say which: IncludeControlDetails is off); schema evolution \
                 adds it when a change carries it, as [schema] default_type");
            return Ok(Plan::Ack);
        }
    }
    metrics.control_record(&control.operation);
    match (control.kind, route) {
        (ControlKind::Truncate | ControlKind::DropTable, Some(route)) => {
            let Some(row) = row::build_control(control, route, at)? else { return Ok(Plan::Ack) };
            if control.kind == ControlKind::Truncate {
                Metrics::add(&metrics.truncates, 1);
                tracing::warn!(table, final_table = %route.final_table, topic = %topic, partition, offset,
                    "source table truncated: its final table is emptied as of the truncate at the next merge");
            } else {
                Metrics::add(&metrics.table_drops, 1);
                tracing::error!(table, final_table = %route.final_table, topic = %topic, partition, offset,
                    "source table DROPPED: its final table is emptied as of the drop and its merge is paused at the next merge; \
                     changes after the drop stay in the log table. Re-create or remove the table in the config, then run \
                     `landfall ddl resume --table {}` (README, \"DDL\")", route.final_table);
            }
            Ok(Plan::Rows(vec![(route.log_table.clone(), row)]))
        }
        (ControlKind::Truncate | ControlKind::DropTable, None) if control.table.is_none() => {
            Err(Rejection::ControlWithoutTable(control.operation.clone()))
        }
        (ControlKind::CreateTable, _) | (_, None) => {
            tracing::info!(operation = control.operation, table, routed = route.is_some(), topic = %topic, partition, offset,
                "DMS control record acknowledged");
            Ok(Plan::Ack)
        }
        (kind, Some(route)) => {
            Metrics::add(&metrics.ddl_reported, 1);
            tracing::warn!(operation = control.operation, table, final_table = %route.final_table,
                details = control.details.as_deref().unwrap_or("(none: IncludeControlDetails is off)"),
                action = kind.operator_action(), topic = %topic, partition, offset,
                "source table DDL reported, not applied");
            Ok(Plan::Ack)
        }
    }
}

/// The columns `control` defines that `route` does not configure, each with
/// the BigQuery type its definition maps to (none: the configured default).
/// A name that is not a valid column name is left out with a warning (the
/// changes that carry it are dead-lettered for it); a configured column the
/// record defines with another type keeps its type (never retyped), with a
/// warning.
fn new_columns(control: &Control, route: &TableConfig, at: &Coords) -> Vec<NewColumn> {
    let mut out: Vec<NewColumn> = Vec::new();
    for def in &control.column_defs {
        let defined = def.bigquery_type();
        if let Some(have) = route.columns.iter().find(|c| c.name.eq_ignore_ascii_case(&def.name)) {
            if defined.is_some_and(|ty| ty != have.ty) {
                tracing::warn!(table = %route.source, column = %have.name, configured = have.ty.sql_name(), source_type = %def.source_type,
                    offset = at.offset, "a control record defines a configured column with another type: the column keeps its type (never retyped)");
            }
            continue;
        }
        if let Err(e) = crate::decode::ident::validate_column(&def.name) {
            tracing::warn!(table = %route.source, error = %e, offset = at.offset, "a control record defines a column that cannot be added");
            continue;
        }
        if !out.iter().any(|c| c.name.eq_ignore_ascii_case(&def.name)) {
            out.push(NewColumn { name: def.name.clone(), defined });
        }
    }
    out
}

/// The bytes a message counts against `pipeline.batch_max_bytes` and
/// `pipeline.max_inflight_bytes`: its value.
pub fn msg_bytes(m: &Msg) -> usize {
    m.payload.as_ref().map_or(0, Vec::len)
}

/// A prepared batch: the rows to ship, and the WAL batch that must be
/// durable before they are shipped (their pending records, dead letters,
/// counters).
pub struct Prepared {
    pub groups: Groups,
    pub wal_batch: WalBatch,
    pub origins: Origins,
}

/// Steps 1 and 2 for a batch: takes every message's plan
/// ([`super::evolve::plan_all`]), registers what each waits for, and builds
/// the WAL batch of its new rows (which the caller commits, durably, before
/// shipping them).
pub async fn prepare(
    cfg: &Config,
    wal: &Wal,
    metrics: &Metrics,
    progress: &SharedProgress,
    plans: Vec<(Msg, Plan)>,
) -> Result<Prepared, PipelineError> {
    let mut wal_batch = WalBatch::default();
    let mut to_ship: Vec<(String, LogRow)> = Vec::new();
    let mut absorbed = 0u64;
    let mut origins = Origins::new();
    {
        let mut p = progress::lock(progress);
        for (msg, plan) in plans {
            let mut reg = p.begin((msg.topic.clone(), msg.partition), msg.offset);
            let msg = Arc::new(msg);
            let rows: Vec<(String, LogRow)> = match plan {
                Plan::Ack => Vec::new(),
                Plan::Rows(rows) => rows.into_iter().collect(),
                // plan_all plans these again; one that is left is a bug, and
                // its message is kept as a dead letter, never acknowledged.
                Plan::Evolve(e) => dead_rows(cfg, wal, metrics, &p, &mut wal_batch, &dead_letter(&msg, unevolved(&e)))?,
                Plan::Dead(d) => dead_rows(cfg, wal, metrics, &p, &mut wal_batch, &d)?,
            };
            for (table, row) in rows {
                if p.is_in_flight(&row.key) {
                    p.wait_for(&mut reg, row.key);
                    absorbed += 1;
                    continue;
                }
                match wal.state(&row.key)? {
                    KeyState::Resolved => absorbed += 1,
                    KeyState::Absent | KeyState::Pending => {
                        wal_batch.pending(&row.key, pending_record(&table, &row));
                        p.wait_for(&mut reg, row.key);
                        if table != cfg.bigquery.dead_letter_table {
                            origins.insert(row.key, msg.clone());
                        }
                        to_ship.push((table, row));
                    }
                }
            }
            p.finish(reg);
        }
    }
    Metrics::add(&metrics.duplicates_absorbed, absorbed);
    if absorbed > 0 {
        wal_batch.add_to_counter(COUNTER_DUPLICATES_ABSORBED, absorbed);
    }
    Ok(Prepared { groups: group(to_ship), wal_batch, origins })
}

/// The dead-letter table's row of `d`; the dead letter goes into the WAL
/// batch unless the WAL or a batch in flight already has it.
fn dead_rows(
    cfg: &Config,
    wal: &Wal,
    metrics: &Metrics,
    p: &progress::Progress,
    wal_batch: &mut WalBatch,
    d: &DeadLetter,
) -> Result<Vec<(String, LogRow)>, PipelineError> {
    tracing::warn!(topic = %d.topic, partition = d.partition, offset = d.offset, reason = %d.reason, "dead-lettering message");
    let row = dead_letter_row(d);
    if wal.state(&row.key)? == KeyState::Absent && !p.is_in_flight(&row.key) {
        wal_batch.dead_letter(d);
        metrics.dead_letter(d.stage.name());
    }
    Ok(vec![(cfg.bigquery.dead_letter_table.clone(), row)])
}

/// The dead-letter reason of a message whose columns were not added.
pub fn unevolved(e: &Evolution) -> String {
    let names: Vec<&str> = e.columns.iter().map(|c| c.name.as_str()).collect();
    format!(
        "columns {} are not configured for table `{}` and were not added by schema evolution (see the log's schema evolution errors); \
         add them to the table's columns, then `landfall dlq replay`",
        names.join(", "),
        e.source
    )
}

/// The message each row to ship came from: the dead letter of a row
/// BigQuery refuses keeps that message. Rows re-shipped after a restart have
/// no message in memory; with [`Origins::reading_kafka`] it is read from
/// Kafka again (and checked to be the one that built the row).
#[derive(Default)]
pub struct Origins {
    known: HashMap<DedupKey, Arc<Msg>>,
    reread: Option<Arc<Config>>,
    /// Set when a read from Kafka failed: the others are not tried (a
    /// broker that is down would cost each refused row the read timeout).
    reread_failed: std::sync::atomic::AtomicBool,
}

impl Origins {
    pub fn new() -> Origins {
        Origins::default()
    }

    /// No message in memory: read a refused row's message from Kafka again.
    pub fn reading_kafka(cfg: Arc<Config>) -> Origins {
        Origins { reread: Some(cfg), ..Origins::default() }
    }

    pub fn insert(&mut self, key: DedupKey, msg: Arc<Msg>) {
        self.known.insert(key, msg);
    }

    /// The message of `row`, if it is at hand or can be read again.
    pub(super) async fn of(&self, row: &LogRow) -> Option<Arc<Msg>> {
        if let Some(m) = self.known.get(&row.key) {
            return Some(m.clone());
        }
        use std::sync::atomic::Ordering::Relaxed;
        let cfg = self.reread.clone().filter(|_| !self.reread_failed.load(Relaxed))?;
        let at = coords_of(&row.json());
        let key = row.key;
        let read = tokio::task::spawn_blocking(move || {
            let msg = kafka::read_one(&cfg.kafka, &at.topic, at.partition, at.offset, Duration::from_secs(10))?;
            // The offset may hold another message now (a re-created topic).
            Some(match plan(&cfg, &msg, &Metrics::default()) {
                Plan::Rows(rows) if rows.iter().any(|(_, r)| r.key == key) => Some(Arc::new(msg)),
                _ => None,
            })
        })
        .await
        .ok()
        .flatten();
        if read.is_none() {
            self.reread_failed.store(true, Relaxed);
            tracing::warn!(key = %row.key, "could not read a refused row's message from Kafka again; its dead letter (and any later one of this recovery) keeps the row only");
        }
        read.flatten()
    }
}

impl FromIterator<(DedupKey, Arc<Msg>)> for Origins {
    fn from_iter<I: IntoIterator<Item = (DedupKey, Arc<Msg>)>>(iter: I) -> Origins {
        Origins { known: iter.into_iter().collect(), ..Origins::default() }
    }
}

/// Rows grouped by destination table.
pub type Groups = Vec<(String, Vec<LogRow>)>;

pub fn group(rows: impl IntoIterator<Item = (String, LogRow)>) -> Groups {
    let mut map: HashMap<String, Vec<LogRow>> = HashMap::new();
    for (table, row) in rows {
        map.entry(table).or_default().push(row);
    }
    let mut v: Groups = map.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The WAL record of a row to ship: the row's JSON text, as it was encoded
/// when the row was built.
pub fn pending_record(table: &str, row: &LogRow) -> PendingRecord {
    PendingRecord { table: table.to_owned(), row: row.text().to_vec(), written_at_ms: now_ms() }
}

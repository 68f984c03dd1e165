//! Steps 1 and 2 of a batch: each message is planned (decoded into log rows
//! with their dedup keys, a dead letter with its reason, or nothing to ship);
//! rows whose key the WAL already resolved are absorbed, rows whose key is in
//! flight wait for it, and the rest become the batch's pending WAL records.
//! Nothing here writes: the caller flushes the WAL batch before shipping.

use std::sync::Arc;

use crate::config::Config;
use crate::decode::row::{self, Coords};
use crate::decode::{dms, Control, ControlKind, Decoded, Rejection};
use crate::metrics::Metrics;
use crate::source::progress::{self, SharedProgress};
use crate::table::LogRow;
use crate::wal::{DeadLetter, KeyState, Wal, WalBatch};

use super::land::{group, pending_record, Groups, Origins};
use super::letters::{dead_letter, dead_letter_row};
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
                    let rows = row::build(&change, route, &at)?;
                    // A row BigQuery can never take would otherwise be written
                    // to the WAL, shipped, refused and dead-lettered on its
                    // own, leaving the rest of its change (the delete half of
                    // a primary-key change) applied: the message goes whole.
                    for r in &rows {
                        let size = crate::sink::insert::row_request_bytes(&r.json);
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
///   and acknowledged: a control record is never dead-lettered for its table.
fn plan_control(cfg: &Config, control: &Control, at: &Coords, metrics: &Metrics) -> Result<Plan, Rejection> {
    Metrics::add(&metrics.control_records, 1);
    let table = control.table_name();
    let route = match (&control.schema, &control.table) {
        (Some(schema), Some(name)) => cfg.route(schema, name),
        _ => None,
    };
    let (topic, partition, offset) = (&at.topic, at.partition, at.offset);
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

/// Steps 1 and 2 for a batch: plans every message, registers what each waits
/// for, and builds the WAL batch of its new rows (which the caller commits,
/// durably, before shipping them).
pub async fn prepare(
    cfg: &Config,
    wal: &Wal,
    metrics: &Metrics,
    progress: &SharedProgress,
    msgs: Vec<Msg>,
) -> Result<Prepared, PipelineError> {
    // Decoding needs no lock.
    let plans: Vec<(Msg, Plan)> = msgs
        .into_iter()
        .map(|m| {
            let p = plan(cfg, &m, metrics);
            (m, p)
        })
        .collect();
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
                Plan::Dead(d) => {
                    tracing::warn!(topic = %d.topic, partition = d.partition, offset = d.offset, reason = %d.reason, "dead-lettering message");
                    let row = dead_letter_row(&d);
                    if wal.state(&row.key)? == KeyState::Absent && !p.is_in_flight(&row.key) {
                        wal_batch.dead_letter(&d);
                        Metrics::add(&metrics.dead_lettered, 1);
                    }
                    vec![(cfg.bigquery.dead_letter_table.clone(), row)]
                }
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
                        wal_batch.pending(&row.key, &pending_record(&table, &row)?);
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

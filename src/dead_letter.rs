//! Dead letters: inspecting them and re-driving them after a fix.
//!
//! A dead letter is recorded durably in the WAL and in the BigQuery
//! dead-letter table before its offset becomes committable. It keeps the
//! Kafka message it came from (key, headers, timestamp, the value or its
//! first 256 KiB plus length and hash) whatever stage refused it, the stage
//! (`decode`, or `bigquery` for a row BigQuery refused, with that row), and
//! the reason. `landfall dlq list|show` reads the WAL's copy.
//!
//! `landfall dlq replay` re-drives a letter through the path live traffic
//! takes (WAL pending -> insertAll -> landed), after the config or the table
//! was fixed:
//!
//! * a letter with its whole message: the message is decoded again with the
//!   current config; rows whose key already landed are not shipped again,
//!   rows whose key was rejected are shipped again under the same key (the
//!   pending record overrides the rejection mark);
//! * a row BigQuery refused whose message was not at hand (refused when it
//!   was re-shipped after a restart): the row is shipped again as it was
//!   built, to the same table.
//!
//! Re-driven rows keep the ordering value of their change, so the MERGE
//! places them where the source had them: older than a later change of the
//! same key, they change nothing; newer, they apply. A letter that still
//! fails keeps its state and is reported with the new reason (a row refused
//! again is recorded again under the same id). The dead-letter table is
//! append-only (a log); the WAL records what was replayed.

use std::sync::Arc;

use crate::config::Config;
use crate::key::DedupKey;
use crate::metrics::Metrics;
use crate::pipeline::{flush_durably, group, pending_record, plan_all, ship_and_land, Msg, Origins, PipelineError, Plan, Shipped};
use crate::progress::Progress;
use crate::sink::{LogRow, Sink};
use crate::wal::{now_ms, DeadLetter, KafkaMessage, RefusedRow, Wal, WalBatch, WalError};

/// `topic/partition@offset`: the message a dead letter came from.
pub fn position(d: &DeadLetter) -> String {
    format!("{}/{}@{}", d.topic, d.partition, d.offset)
}

/// `topic/partition@offset#id`, how a dead letter is named on the command
/// line (a message can have two: the rows of a primary-key change).
pub fn id(d: &DeadLetter) -> String {
    format!("{}#{}", position(d), &DedupKey(d.id).to_hex()[..12])
}

/// Whether `name` (an [`id`], or a [`position`] for every letter of that
/// message) names `d`.
pub fn names(name: &str, d: &DeadLetter) -> bool {
    name == id(d) || name == position(d)
}

/// What became of one dead letter in a replay.
#[derive(Debug, Clone, PartialEq)]
pub enum Replayed {
    /// Its rows landed (or it is now acknowledged without rows).
    Landed { rows: usize },
    /// It still cannot become a landed row.
    StillFailing { reason: String },
    /// Only a prefix of the value was kept: re-drive it from Kafka instead.
    Truncated,
    /// Neither its message nor a row it could ship again was kept (a
    /// letter of an earlier landfall): re-drive it from Kafka instead.
    NotKept,
    /// Replayed earlier already.
    AlreadyReplayed,
}

/// Re-drives the dead letters `select` picks. The service must be stopped
/// (the WAL is opened by one process at a time).
pub async fn replay(
    cfg: &Config,
    wal: &Wal,
    sink: &Arc<dyn Sink>,
    metrics: &Metrics,
    select: impl Fn(&DeadLetter) -> bool,
) -> Result<Vec<(String, Replayed)>, PipelineError> {
    replay_reporting(cfg, wal, sink, metrics, select, |_| Progress::hidden()).await
}

/// [`replay`], reporting each letter to the progress `start` makes for the
/// number of letters selected.
async fn replay_reporting(
    cfg: &Config,
    wal: &Wal,
    sink: &Arc<dyn Sink>,
    metrics: &Metrics,
    select: impl Fn(&DeadLetter) -> bool,
    start: impl FnOnce(u64) -> Progress,
) -> Result<Vec<(String, Replayed)>, PipelineError> {
    let letters: Vec<DeadLetter> = wal.dead_letters().collect::<Result<Vec<_>, WalError>>()?.into_iter().filter(|d| select(d)).collect();
    let mut progress = start(letters.len() as u64);
    let mut out = Vec::new();
    // With schema evolution, a letter's columns are added as the service
    // would add them; the config grows for the letters after it.
    let mut live = Arc::new(cfg.clone());
    for d in letters {
        let result = if wal.replayed_at(&d)?.is_some() {
            Replayed::AlreadyReplayed
        } else {
            match (&d.message, &d.row) {
                (Some(m), _) if !m.is_whole() => Replayed::Truncated,
                (Some(m), _) => redrive_message(&mut live, wal, sink, metrics, &d, m).await?,
                (None, Some(r)) if !r.table.is_empty() => reship_row(cfg, wal, sink, metrics, &d, r).await?,
                (None, _) => Replayed::NotKept,
            }
        };
        progress.step(format_args!("{} {result:?}", id(&d)));
        out.push((id(&d), result));
    }
    progress.finish();
    Ok(out)
}

/// Decodes the letter's message again with the current config and ships
/// the rows that did not land.
async fn redrive_message(
    live: &mut Arc<Config>,
    wal: &Wal,
    sink: &Arc<dyn Sink>,
    metrics: &Metrics,
    d: &DeadLetter,
    m: &KafkaMessage,
) -> Result<Replayed, PipelineError> {
    let msg = Msg {
        topic: d.topic.clone(),
        partition: d.partition,
        offset: d.offset,
        key: m.key.clone(),
        headers: m.headers.clone(),
        payload: m.has_value.then(|| m.value_prefix.clone()),
        produced_ms: m.timestamp_ms,
    };
    // Nothing stops a replay early: it runs to the end or fails.
    let (_never, no_shutdown) = tokio::sync::watch::channel(false);
    let (msg, planned) = plan_all(live, &**sink, vec![msg], metrics, &no_shutdown)
        .await?
        .pop()
        .ok_or(PipelineError::Task("a message lost its plan".into()))?;
    let cfg: &Config = live;
    match planned {
        Plan::Dead(again) => Ok(Replayed::StillFailing { reason: again.reason }),
        Plan::Evolve(e) => Ok(Replayed::StillFailing { reason: crate::pipeline::prepare::unevolved(&e) }),
        Plan::Ack => {
            mark_replayed(wal, d, metrics).await?;
            Ok(Replayed::Landed { rows: 0 })
        }
        Plan::Rows(rows) => {
            let msg = Arc::new(msg);
            let mut ship = Vec::new();
            for (table, r) in rows {
                // A sibling row that landed (one row of a primary-key change
                // refused, the other not) is not shipped again.
                if !wal.is_landed(&r.key)? {
                    ship.push((table, r));
                }
            }
            let origins: Origins = ship.iter().map(|(_, r)| (r.key, msg.clone())).collect();
            ship_pending(cfg, wal, sink, metrics, d, ship, &origins).await
        }
    }
}

/// Ships a refused row again, as it was built.
async fn reship_row(
    cfg: &Config,
    wal: &Wal,
    sink: &Arc<dyn Sink>,
    metrics: &Metrics,
    d: &DeadLetter,
    r: &RefusedRow,
) -> Result<Replayed, PipelineError> {
    let row = LogRow::from_text(DedupKey(r.key), &r.json)
        .map_err(|e| PipelineError::BadRecord { key: DedupKey(r.key).to_hex(), message: e.to_string() })?;
    ship_pending(cfg, wal, sink, metrics, d, vec![(r.table.clone(), row)], &Origins::new()).await
}

/// The same discipline as live traffic: pending first (this overrides a
/// `rejected` mark of the same key), then ship, then land; the letter is
/// marked replayed when every row landed.
async fn ship_pending(
    cfg: &Config,
    wal: &Wal,
    sink: &Arc<dyn Sink>,
    metrics: &Metrics,
    d: &DeadLetter,
    rows: Vec<(String, LogRow)>,
    origins: &Origins,
) -> Result<Replayed, PipelineError> {
    let mut b = WalBatch::default();
    for (table, row) in &rows {
        b.pending(&row.key, pending_record(table, row));
    }
    flush_durably(wal, b, metrics).await?;
    let n = rows.len();
    match ship_and_land(wal, sink, &cfg.bigquery.dead_letter_table, group(rows), origins, metrics).await? {
        Shipped::Interrupted => Err(PipelineError::Task("replay interrupted".into())),
        Shipped::Resolved(r) if r.dead_lettered > 0 => {
            // Recorded again, under the same id, with BigQuery's new reason.
            let again = wal.dead_letter(d)?.map(|x| x.reason);
            Ok(Replayed::StillFailing { reason: again.unwrap_or_else(|| "BigQuery rejected a row again (see the new dead letter)".into()) })
        }
        Shipped::Resolved(_) => {
            mark_replayed(wal, d, metrics).await?;
            Ok(Replayed::Landed { rows: n })
        }
    }
}

async fn mark_replayed(wal: &Wal, d: &DeadLetter, metrics: &Metrics) -> Result<(), PipelineError> {
    let mut b = WalBatch::default();
    b.dead_letter_replayed(d, now_ms());
    flush_durably(wal, b, metrics).await
}

/// `landfall dlq list`: one line per dead letter (id, stage, size, open or
/// replayed, reason), then the count.
pub struct Listing(Vec<(DeadLetter, bool)>);

impl Listing {
    pub fn read(wal: &Wal) -> Result<Listing, WalError> {
        let mut out = Vec::new();
        for d in wal.dead_letters() {
            let d = d?;
            let replayed = wal.replayed_at(&d)?.is_some();
            out.push((d, replayed));
        }
        Ok(Listing(out))
    }
}

impl std::fmt::Display for Listing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (d, replayed) in &self.0 {
            let state = if *replayed { "replayed" } else { "open" };
            let size = d.message.as_ref().map_or_else(|| "message not kept".to_owned(), |m| format!("{} bytes", m.value_len));
            writeln!(f, "{}\t{}\t{size}\t{state}\t{}", id(d), d.stage.name(), d.reason)?;
        }
        writeln!(f, "{} dead letter(s)", self.0.len())
    }
}

/// `landfall dlq show`: everything recorded of the letters a name (an
/// [`id`] or a [`position`]) picks.
pub struct Shown(Vec<(DeadLetter, Option<u64>)>);

/// Why `landfall dlq show` or `replay` found nothing to act on.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("no dead letter {0} (see `landfall dlq list`)")]
    NoSuchLetter(String),
    #[error("name dead letters to replay, or pass --all")]
    NothingNamed,
    #[error(transparent)]
    Wal(#[from] WalError),
}

impl Shown {
    pub fn read(wal: &Wal, name: &str) -> Result<Shown, SelectError> {
        let mut out = Vec::new();
        for d in wal.dead_letters() {
            let d = d?;
            if names(name, &d) {
                let replayed = wal.replayed_at(&d)?;
                out.push((d, replayed));
            }
        }
        if out.is_empty() {
            return Err(SelectError::NoSuchLetter(name.to_owned()));
        }
        Ok(Shown(out))
    }
}

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = |bytes: &[u8]| match std::str::from_utf8(bytes) {
            Ok(t) => t.to_owned(),
            Err(_) => format!("(not UTF-8; first bytes) {:02x?}", &bytes[..bytes.len().min(256)]),
        };
        for (d, replayed) in &self.0 {
            writeln!(f, "id: {}\nstage: {}\nreason: {}\nrecorded at (ms): {}", id(d), d.stage.name(), d.reason, d.at_ms)?;
            if let Some(at) = replayed {
                writeln!(f, "replayed at (ms): {at}")?;
            }
            match &d.message {
                None => writeln!(f, "message: not kept (a row refused when re-shipped after a restart)")?,
                Some(m) => {
                    writeln!(f, "message timestamp (ms): {}", m.timestamp_ms.map_or("none".into(), |t| t.to_string()))?;
                    writeln!(f, "message key: {}", m.key.as_deref().map_or("none".into(), text))?;
                    for (name, v) in &m.headers {
                        writeln!(f, "header {name}: {}", v.as_deref().map_or("null".into(), text))?;
                    }
                    if m.has_value {
                        writeln!(f, "value: {} bytes, blake3 {}", m.value_len, blake3::Hash::from(m.value_hash).to_hex())?;
                        writeln!(f, "{}", text(&m.value_prefix))?;
                    } else {
                        writeln!(f, "value: none (a Kafka tombstone)")?;
                    }
                }
            }
            if let Some(r) = &d.row {
                writeln!(f, "refused row for {}:\n{}", if r.table.is_empty() { "(table not recorded)" } else { &r.table }, text(&r.json))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// What `landfall dlq replay` did: one line per letter, then the totals.
pub struct ReplayReport(pub Vec<(String, Replayed)>);

impl ReplayReport {
    /// Letters that still cannot land (the command then exits non-zero).
    pub fn still_failing(&self) -> usize {
        self.0.iter().filter(|(_, r)| matches!(r, Replayed::StillFailing { .. })).count()
    }
}

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (id, r) in &self.0 {
            writeln!(f, "{id}\t{r:?}")?;
        }
        let failing = self.still_failing();
        writeln!(f, "{} replayed, {failing} still failing", self.0.len() - failing)
    }
}

/// Why `landfall dlq replay` stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Select(#[from] SelectError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Client(#[from] crate::sink::client::ClientError),
    #[error(transparent)]
    Schema(#[from] crate::sink::schema::SchemaError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// `landfall dlq replay`: opens the WAL (the service must be stopped),
/// connects to BigQuery, creates what is missing, and re-drives the letters
/// `names` picks (every letter with `all`).
pub async fn replay_command(cfg: &Config, names_given: &[String], all: bool) -> Result<ReplayReport, ReplayError> {
    if !all && names_given.is_empty() {
        return Err(SelectError::NothingNamed.into());
    }
    let wal = Wal::open(&cfg.wal.path)?;
    let bq = crate::sink::BigQuery::connect(&cfg.bigquery).await?;
    bq.ensure_all(cfg).await?;
    let cfg = &crate::pipeline::evolve::adopt_existing(cfg, &bq).await?;
    let metrics = Arc::new(Metrics::default());
    let (_abort, rx) = tokio::sync::watch::channel(false);
    let sink: Arc<dyn Sink> = Arc::new(crate::sink::BigQuerySink::new(bq, &cfg.bigquery, rx, metrics.clone()));
    let select = |d: &DeadLetter| all || names_given.iter().any(|n| names(n, d));
    let results = replay_reporting(cfg, &wal, &sink, &metrics, select, |n| Progress::new("dlq replay", n)).await?;
    Ok(ReplayReport(results))
}

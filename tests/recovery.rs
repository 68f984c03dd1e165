//! Restart after a crash between the WAL write and the landed mark: pending
//! WAL records are re-shipped with their original insertIds before anything
//! new is consumed, and nothing is duplicated in the final tables.

mod support;

use std::sync::Arc;
use std::time::Duration;

use landfall::harness::demo::run_until_caught_up;
use landfall::harness::sim::Simulator;
use landfall::metrics::{Metrics, SharedMetrics};
use landfall::pipeline::{pending_record, plan, Plan};
use landfall::sink::{BigQuerySink, LogRow, RowOutcome, Sink};
use landfall::wal::{Wal, WalBatch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_wal_records_are_reshipped_with_their_insert_ids_and_land_once() {
    let stack = support::Stack::start("recovery", 4, "", &[]).await;
    let (kafka, cfg, bq) = (&stack.kafka, &stack.cfg, &stack.bq);

    let mut sim = Simulator::new(9);
    let mut msgs = sim.full_load(100);
    msgs.extend(sim.changes(1_500));
    kafka.produce(&msgs).unwrap();
    let read = support::read_all(kafka);

    // The crash: the first 600 messages were decoded and written to the WAL
    // (flushed); the first 300 of those were also accepted by insertAll; no
    // landed mark was written and no offset committed.
    let metrics: SharedMetrics = Arc::new(Metrics::default());
    let mut pending: Vec<(String, LogRow)> = Vec::new();
    {
        let wal = Wal::open(&cfg.wal.path).unwrap();
        let mut batch = WalBatch::default();
        for m in &read[..600] {
            let Plan::Rows(rows) = plan(cfg, m, &metrics) else { panic!("simulated messages are rows") };
            for (table, row) in rows {
                batch.pending(&row.key, pending_record(&table, &row));
                pending.push((table, row));
            }
        }
        wal.flush(&batch).unwrap();
        // A primary-key change is two rows (the old key's delete and the new row).
        assert!(pending.len() >= 600);
        assert_eq!(wal.pending_count(), pending.len());
    }
    let (_abort, abort_rx) = tokio::sync::watch::channel(false);
    let sink = BigQuerySink::new(bq.clone(), &cfg.bigquery, abort_rx, metrics.clone());
    // One request per table, so that the restart below follows within
    // seconds: the emulator, like BigQuery, dedups insertIds for ~60 s.
    for t in &cfg.tables {
        let rows: Vec<LogRow> = pending[..300].iter().filter(|(table, _)| table == &t.log_table).map(|(_, r)| r.clone()).collect();
        let n = rows.len();
        assert_eq!(sink.ship(&t.log_table, &rows).await.unwrap(), vec![RowOutcome::Landed; n]);
    }

    // Restart: recovery first, then consumption from offset 0.
    let m = run_until_caught_up(cfg, kafka, Duration::from_secs(300)).await.unwrap();
    assert_eq!(Metrics::get(&m.recovered) as usize, pending.len(), "every pending record re-shipped");
    assert_eq!(Metrics::get(&m.consumed) as usize, msgs.len(), "consumption resumed from the committed offset (none)");
    assert_eq!(
        Metrics::get(&m.duplicates_absorbed) as usize,
        pending.len(),
        "redelivered messages of recovered records are not shipped again"
    );
    assert_eq!(Wal::open(&cfg.wal.path).unwrap().pending_count(), 0);

    // Same insertIds: the emulator dropped the re-sent copies, so each key is
    // in the log once (a new insertId would have stored a second row).
    assert_eq!(stack.log_copies().await, 0, "a re-shipped row got a new insertId");
    stack.merge_and_verify(&sim.model).await;
}

/// BigQuery refusing every row.
struct RefuseAll;

#[async_trait::async_trait]
impl Sink for RefuseAll {
    async fn ship(&self, _table: &str, rows: &[LogRow]) -> Result<Vec<RowOutcome>, landfall::sink::SinkError> {
        Ok(rows.iter().map(|_| RowOutcome::Rejected("insertAll invalid: refused for the test".into())).collect())
    }
}

/// Issue 10, item 1: a row refused when it is re-shipped after a restart
/// (its message no longer in memory) is dead-lettered with its original
/// message, read from Kafka again (its offset was never committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_refused_when_reshipped_after_a_restart_keeps_its_message_read_again_from_kafka() {
    let stack = support::Stack::start("rereadorigin", 1, support::WIDGETS, &[]).await;
    let (kafka, cfg) = (&stack.kafka, &stack.cfg);
    let value = br#"{"data":{"id":5,"label":"x"},"metadata":{"timestamp":"2026-11-27T03:00:00Z","record-type":"data","operation":"insert","schema-name":"sales","table-name":"widgets"}}"#;
    kafka.produce_with_headers(Some(b"k5"), Some(value), &[("origin", Some(b"aurora"))]).unwrap();
    kafka.flush().unwrap();
    let read = support::read_all(kafka);
    let metrics: SharedMetrics = Arc::new(Metrics::default());
    let wal = Wal::open(&cfg.wal.path).unwrap();
    let Plan::Rows(rows) = plan(cfg, &read[0], &metrics) else { panic!("a widget change is a row") };
    let mut batch = WalBatch::default();
    for (table, row) in &rows {
        batch.pending(&row.key, pending_record(table, row));
    }
    wal.flush(&batch).unwrap();

    let sink: Arc<dyn Sink> = Arc::new(RefuseAll);
    let recovered = landfall::pipeline::recover(&wal, &sink, cfg, &metrics).await.unwrap();
    assert!(matches!(recovered, landfall::pipeline::Recovered::Complete(_)), "{recovered:?}");
    let letters: Vec<_> = wal.dead_letters().map(Result::unwrap).collect();
    assert_eq!(letters.len(), 1);
    let m = letters[0].message.as_ref().expect("the message was read from Kafka again");
    assert_eq!((m.key.as_deref(), m.value_prefix.as_slice()), (Some(&b"k5"[..]), &value[..]));
    assert_eq!(m.headers, vec![("origin".to_owned(), Some(b"aurora".to_vec()))]);
    assert_eq!(letters[0].row.as_ref().unwrap().table, "widgets_log");
}

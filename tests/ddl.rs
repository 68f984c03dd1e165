//! DMS DDL control records against the emulator, through `pipeline::plan`
//! (decode -> log rows), insertAll and the MERGE:
//!
//! * a truncate empties the final table as of its position, and no change
//!   from before it (merged late, replayed, redelivered) brings a row back;
//! * a drop-table empties the final table as of the drop and pauses the
//!   table's merge (changes after it stay in the log) until the operator
//!   resumes it; then the changes after the drop (the re-created table) land.
//!
//! Expected rows come from what the test's source did, never from landfall.

mod support;

use landfall::harness::demo::merger;
use landfall::metrics::Metrics;
use landfall::pipeline::{plan, Msg, Plan};
use landfall::sink::{BigQuerySink, LogRow, RowOutcome, Sink};

/// A DMS message for `sales.widgets` at binlog position `position`.
fn change(op: &str, id: i64, label: &str, position: u64) -> Vec<u8> {
    format!(
        r#"{{"data":{{"id":{id},"label":"{label}"}},"metadata":{{"timestamp":"2026-11-27T03:00:00Z","record-type":"data","operation":"{op}","schema-name":"sales","table-name":"widgets","stream-position":"bin.000001:{position}","transaction-id":"{position}","transaction-record-id":1}}}}"#
    )
    .into_bytes()
}

/// A DMS control record for `sales.widgets` at binlog position `position`.
fn control(op: &str, position: u64) -> Vec<u8> {
    format!(
        r#"{{"metadata":{{"timestamp":"2026-11-27T03:00:00Z","record-type":"control","operation":"{op}","partition-key-type":"task-id","schema-name":"sales","table-name":"widgets","stream-position":"bin.000001:{position}","transaction-id":"{position}","transaction-record-id":1}}}}"#
    )
    .into_bytes()
}

struct Harness {
    stack: support::Stack,
    /// Kept so the sink never sees its abort channel closed.
    _abort: tokio::sync::watch::Sender<bool>,
    sink: BigQuerySink,
    metrics: Metrics,
    offset: i64,
}

impl Harness {
    async fn start(name: &str) -> Harness {
        let stack = support::Stack::start(name, 1, support::WIDGETS_BY_POSITION, &[]).await;
        let (abort, rx) = tokio::sync::watch::channel(false);
        let sink = BigQuerySink::new(stack.bq.clone(), &stack.cfg.bigquery, rx, std::sync::Arc::new(Metrics::default()));
        Harness { stack, _abort: abort, sink, metrics: Metrics::default(), offset: 0 }
    }

    /// Plans each message as the bridge does (each at the next offset) and
    /// lands the log rows it yields.
    async fn land(&mut self, messages: &[Vec<u8>]) {
        let mut groups: Vec<(String, Vec<LogRow>)> = Vec::new();
        for payload in messages {
            self.offset += 1;
            let msg = Msg {
                topic: "dms".into(),
                partition: 0,
                offset: self.offset,
                payload: Some(payload.clone()),
                produced_ms: None,
                ..Default::default()
            };
            match plan(&self.stack.cfg, &msg, &self.metrics) {
                Plan::Rows(rows) => {
                    for (table, r) in rows {
                        match groups.iter_mut().find(|(t, _)| *t == table) {
                            Some((_, v)) => v.push(r),
                            None => groups.push((table, vec![r])),
                        }
                    }
                }
                Plan::Ack => {}
                Plan::Dead(d) => panic!("dead-lettered: {}", d.reason),
                Plan::Evolve(e) => panic!("schema evolution is off here: {e:?}"),
            }
        }
        for (table, rows) in groups {
            assert_eq!(self.sink.ship(&table, &rows).await.unwrap(), vec![RowOutcome::Landed; rows.len()]);
        }
    }

    fn widgets(&self) -> landfall::config::TableConfig {
        self.stack.cfg.tables.iter().find(|t| t.source == "sales.widgets").unwrap().clone()
    }

    async fn merge(&self, full: bool) -> landfall::merge::MergeReport {
        merger(&self.stack.bq, &self.stack.cfg).merge_table(&self.widgets(), full).await.unwrap()
    }

    async fn final_rows(&self) -> Vec<(i64, String)> {
        support::rows(&self.stack.bq, &format!("SELECT id, label FROM {} ORDER BY id", self.stack.table("widgets")))
            .await
            .into_iter()
            .map(|r| (r[0].as_deref().unwrap().parse().unwrap(), r[1].clone().unwrap()))
            .collect()
    }
}

fn rows(expected: &[(i64, &str)]) -> Vec<(i64, String)> {
    expected.iter().map(|(id, label)| (*id, (*label).to_owned())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_empties_the_final_table_and_older_changes_never_bring_rows_back() {
    let mut h = Harness::start("ddl_truncate").await;

    // 1. The source inserts three rows; merged.
    h.land(&[change("insert", 1, "a", 10), change("insert", 2, "b", 11), change("insert", 3, "c", 12)]).await;
    h.merge(false).await;
    assert_eq!(h.final_rows().await, rows(&[(1, "a"), (2, "b"), (3, "c")]));

    // 2. TRUNCATE at 20, then the source inserts 4 and re-inserts 2.
    h.land(&[control("truncate-table", 20), change("insert", 4, "d", 21), change("insert", 2, "b2", 22)]).await;
    h.merge(false).await;
    assert_eq!(h.final_rows().await, rows(&[(2, "b2"), (4, "d")]), "only what the source inserted after the truncate");

    // 3. Old changes of truncated rows arrive again (a DMS re-publication
    //    lands them at new offsets): an update of 1 and the insert of 3.
    h.land(&[change("update", 1, "a-old", 15), change("insert", 3, "c", 12)]).await;
    h.merge(false).await;
    assert_eq!(h.final_rows().await, rows(&[(2, "b2"), (4, "d")]), "an old change never brings a truncated row back");

    // 4. Changes before and after a truncate in one merge window; the
    //    truncate's own copy redelivered (same change, second offset).
    h.land(&[
        change("insert", 5, "e", 30),
        change("update", 4, "d2", 31),
        control("truncate", 32),
        change("insert", 6, "f", 33),
        control("truncate", 32),
        change("update", 5, "e-old", 31),
    ])
    .await;
    h.merge(false).await;
    assert_eq!(h.final_rows().await, rows(&[(6, "f")]));

    // 5. Merging again, or the whole log, changes nothing.
    assert_eq!(h.merge(false).await.affected_rows, 0);
    assert_eq!(h.merge(true).await.affected_rows, 0);
    assert_eq!(h.final_rows().await, rows(&[(6, "f")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_table_empties_the_final_table_and_pauses_its_merge_until_resumed() {
    let mut h = Harness::start("ddl_drop").await;
    h.land(&[change("insert", 1, "a", 10), change("insert", 2, "b", 11)]).await;
    h.merge(false).await;
    assert_eq!(h.final_rows().await, rows(&[(1, "a"), (2, "b")]));

    // The source table is dropped and re-created; new rows follow.
    h.land(&[control("drop-table", 20), control("create-table", 21), change("insert", 7, "g", 22), change("insert", 8, "h", 23)]).await;
    let paused = h.merge(false).await;
    assert_eq!(h.final_rows().await, rows(&[]), "the dropped table's rows are gone, the re-created table's not yet applied");
    assert!(paused.paused_by_drop.is_some(), "{paused:?}");
    assert_eq!(paused.truncated_rows, 2);

    // Paused: further merges change nothing and say so; nothing is lost meanwhile.
    h.land(&[change("update", 7, "g2", 24)]).await;
    let merger = merger(&h.stack.bq, &h.stack.cfg);
    let again = merger.merge_table(&h.widgets(), false).await.unwrap();
    assert!(again.paused_by_drop.is_some() && again.window.is_none(), "{again:?}");
    assert_eq!(h.final_rows().await, rows(&[]));

    // The operator resumes: the changes after the drop (the re-created table) land.
    assert!(merger.resume_table(&h.widgets()).await.unwrap().is_some());
    assert_eq!(merger.resume_table(&h.widgets()).await.unwrap(), None, "resuming twice is harmless");
    let resumed = h.merge(false).await;
    assert!(resumed.paused_by_drop.is_none(), "{resumed:?}");
    assert_eq!(h.final_rows().await, rows(&[(7, "g2"), (8, "h")]));

    // A replayed change from before the drop never brings its row back.
    h.land(&[change("insert", 1, "a", 10), change("update", 2, "b-old", 12)]).await;
    h.merge(false).await;
    assert_eq!(h.final_rows().await, rows(&[(7, "g2"), (8, "h")]));

    // A second drop pauses the table again.
    h.land(&[control("drop-table", 30), change("insert", 9, "i", 31)]).await;
    assert!(h.merge(false).await.paused_by_drop.is_some());
    assert_eq!(h.final_rows().await, rows(&[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_killed_after_recording_a_truncate_is_completed_by_the_next() {
    use landfall::merge::sql::{ddl_record_statement, MergeTarget, Window};
    let mut h = Harness::start("ddl_crash").await;
    h.land(&[change("insert", 1, "a", 10), change("insert", 2, "b", 11)]).await;
    h.merge(false).await;
    h.land(&[control("truncate-table", 20), change("insert", 3, "c", 21)]).await;

    // A merge records the truncate in the state table and is killed before
    // it deletes anything (and before its watermark moves).
    let (bq, cfg, t) = (&h.stack.bq, &h.stack.cfg, h.widgets());
    let target = MergeTarget::new(&bq.project, &bq.dataset, &t.log_table, &t.final_table, &t.primary_key, &["id".into(), "label".into()])
        .and_then(|m| m.with_state(&bq.project, &bq.dataset, &cfg.bigquery.state_table, &t.final_table))
        .unwrap();
    let record = ddl_record_statement(&target, &Window { from_micros: None, to_micros: i64::MAX / 4 }).unwrap();
    bq.query(&record).await.unwrap();
    assert_eq!(h.final_rows().await, rows(&[(1, "a"), (2, "b")]), "nothing deleted yet");

    // The next merge reads the same window, finds the marker again and finishes the job.
    h.merge(false).await;
    assert_eq!(h.final_rows().await, rows(&[(3, "c")]));
}

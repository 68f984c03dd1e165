//! The merge window cannot skip a landed row (docs/design.md, invariant 10):
//! a row whose request waited for a permit longer than the overlap, while
//! another landfall process landed later rows and a merge moved the
//! watermark past them, is still merged.
//!
//! The durations are scaled down: the overlap is 1 s (below the request
//! timeout, which config validation would refuse; the merger is given the
//! config directly) and the wait is 4 s. In production the same shape is a
//! slowdown where requests queue for their permits (429 backoffs, a stalled
//! front end) longer than `merge.overlap` while another process keeps
//! landing and merging.

mod support;

use std::sync::Arc;
use std::time::Duration;

use landfall::decode::row::{build, Coords};
use landfall::decode::{dms, Decoded};
use landfall::harness::proxy::{Fault, FaultProxy, Target};
use landfall::metrics::Metrics;
use landfall::sink::{BigQuerySink, RowOutcome, Sink};

fn change(id: i64, label: &str, position: u64) -> Vec<u8> {
    format!(
        r#"{{"data":{{"id":{id},"label":"{label}"}},"metadata":{{"timestamp":"2026-11-27T03:00:00Z","record-type":"data","operation":"insert","schema-name":"sales","table-name":"widgets","stream-position":"bin.000001:{position}","transaction-id":"{position}","transaction-record-id":1}}}}"#
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_waited_for_its_permit_past_the_overlap_is_still_merged() {
    let upstream = support::endpoint().trim_end_matches("/bigquery/v2").to_owned();
    let proxy = FaultProxy::start(&upstream).await.unwrap();
    let stack = support::Stack::start("mergewindow", 1, support::WIDGETS_BY_POSITION, &[(&support::endpoint(), &proxy.endpoint())]).await;
    let route = stack.cfg.tables.iter().find(|t| t.source == "sales.widgets").unwrap().clone();
    let row = |id: i64, label: &str| {
        let Decoded::Row(c) = dms::decode(&change(id, label, id as u64 * 10), "before-image").unwrap() else { panic!() };
        build(&c, &route, &Coords { topic: "t".into(), partition: 0, offset: id }).unwrap().remove(0)
    };
    let (_keep, rx) = tokio::sync::watch::channel(false);
    // Process 1: one request at a time. Process 2: another landfall process
    // writing the same log table.
    let mut one_at_a_time = stack.cfg.bigquery.clone();
    one_at_a_time.max_inflight_requests = 1;
    let p1 = Arc::new(BigQuerySink::new(stack.bq.clone(), &one_at_a_time, rx.clone(), Arc::new(Metrics::default())));
    let p2 = BigQuerySink::new(stack.bq.clone(), &stack.cfg.bigquery, rx, Arc::new(Metrics::default()));
    let mut cfg = (*stack.cfg).clone();
    cfg.merge.overlap = Duration::from_secs(1);
    let merger = landfall::harness::demo::merger(&stack.bq, &Arc::new(cfg));

    // Process 1's permit is held by a request the proxy stalls for 4 s (to
    // the dead-letter table, so that it is not part of the merged table).
    proxy.push(Fault::Delay { target: Target::InsertAll, by: Duration::from_secs(4) });
    let stalled = {
        let (p1, dlq) = (p1.clone(), stack.cfg.bigquery.dead_letter_table.clone());
        let msg = landfall::pipeline::Msg { topic: "t".into(), payload: Some(b"x".to_vec()), ..Default::default() };
        let d = landfall::pipeline::dead_letter(&msg, "test".into());
        tokio::spawn(async move { p1.ship(&dlq, &[landfall::pipeline::dead_letter_row(&d)]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Row 1 waits behind it for process 1's only permit.
    let waiting = {
        let (p1, log, r) = (p1.clone(), route.log_table.clone(), row(1, "waited"));
        tokio::spawn(async move { p1.ship(&log, &[r]).await })
    };
    // Meanwhile process 2 lands row 2, more than the overlap later, and a
    // merge moves the watermark to it.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(!waiting.is_finished(), "row 1 is still waiting for its permit");
    assert_eq!(p2.ship(&route.log_table, &[row(2, "quick")]).await.unwrap(), vec![RowOutcome::Landed]);
    merger.merge_table(&route, false).await.unwrap();

    assert_eq!(stalled.await.unwrap().unwrap(), vec![RowOutcome::Landed]);
    assert_eq!(waiting.await.unwrap().unwrap(), vec![RowOutcome::Landed]);
    let report = merger.merge_table(&route, false).await.unwrap();
    let got = support::rows(&stack.bq, &format!("SELECT id, label FROM {} ORDER BY id", stack.table("widgets"))).await;
    let want = vec![vec![Some("1".into()), Some("waited".into())], vec![Some("2".into()), Some("quick".into())]];
    // Stamped before the permit wait, row 1 lay 1.5 s before row 2, behind
    // the second window (from the watermark minus 1 s): merged never.
    assert_eq!(got, want, "the row that waited for its permit is merged (second window {:?})", report.window);
}

//! insertAll answers that do not say plainly what happened to each row,
//! injected by the fault proxy in front of the emulator and sent through the
//! real `BigQuerySink`: an error entry that names no row of the request, a
//! response where every row is `stopped`, a 413 and an HTML 400 from a front
//! end, and a non-JSON 502. Every test checks, by `_landfall_key`, that the
//! rows are in the log table exactly once (or not at all when rejected).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use landfall::harness::proxy::{Fault, FaultProxy, ProxyStats, Target};
use landfall::key::DedupKey;
use landfall::metrics::Metrics;
use landfall::sink::insert::{BigQuerySink, LogRow, RowOutcome, Sink};
use serde_json::{Map, Value};

const LOG: &str = "widgets_log";
const INITIAL_DELAY: Duration = Duration::from_millis(200);

struct Fixture {
    proxy: FaultProxy,
    stack: support::Stack,
    sink: BigQuerySink,
    metrics: Arc<Metrics>,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

async fn fixture(name: &str) -> Fixture {
    let upstream = support::endpoint().trim_end_matches("/bigquery/v2").to_owned();
    let proxy = FaultProxy::start(&upstream).await.unwrap();
    let stack = support::Stack::start(name, 1, support::WIDGETS, &[(&support::endpoint(), &proxy.endpoint())]).await;
    let mut bq_cfg = stack.cfg.bigquery.clone();
    bq_cfg.retry_initial_delay = INITIAL_DELAY;
    bq_cfg.retry_max_delay = Duration::from_secs(2);
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let sink = BigQuerySink::new(stack.bq.clone(), &bq_cfg, rx, metrics.clone());
    Fixture { proxy, stack, sink, metrics, _shutdown: tx }
}

/// `n` widget rows for the log table, with distinct keys.
fn rows(seed: u8, n: usize) -> Vec<LogRow> {
    (0..n)
        .map(|i| {
            let mut k = [seed; 32];
            k[0] = i as u8;
            let key = DedupKey(k);
            let mut json = Map::new();
            json.insert("_landfall_key".into(), Value::String(key.to_hex()));
            json.insert("_landfall_op".into(), Value::String("upsert".into()));
            json.insert("id".into(), Value::from(i as i64));
            json.insert("label".into(), Value::String(format!("w{i}")));
            LogRow::new(key, &json)
        })
        .collect()
}

impl Fixture {
    async fn ship(&self, rows: &[LogRow]) -> Vec<RowOutcome> {
        // Bounded: today's code retried some of these answers forever.
        tokio::time::timeout(Duration::from_secs(60), self.sink.ship(LOG, rows))
            .await
            .expect("ship did not finish within 60 s")
            .expect("ship")
    }

    /// (rows, distinct keys) of the log table, and whether its keys are exactly those of `rows`.
    async fn log_holds(&self, rows: &[LogRow]) -> (i64, i64, bool) {
        let table = self.stack.table(LOG);
        let n = support::scalar(&self.stack.bq, &format!("SELECT COUNT(*) FROM {table}")).await;
        let distinct = support::scalar(&self.stack.bq, &format!("SELECT COUNT(DISTINCT `_landfall_key`) FROM {table}")).await;
        let mut keys: Vec<String> = support::rows(&self.stack.bq, &format!("SELECT DISTINCT `_landfall_key` FROM {table}"))
            .await
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect();
        keys.sort();
        let mut want: Vec<String> = rows.iter().map(|r| r.key.to_hex()).collect();
        want.sort();
        (n, distinct, keys == want)
    }

    fn stats(&self) -> ProxyStats {
        self.proxy.stats()
    }
}

fn landed(n: usize) -> Vec<RowOutcome> {
    vec![RowOutcome::Landed; n]
}

fn html(code: u16, text: &str) -> Fault {
    let body = format!("<html>\r\n<head><title>{code} {text}</title></head>\r\n<body><center><h1>{code} {text}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n");
    Fault::RawStatus { target: Target::InsertAll, code, content_type: "text/html".into(), body }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_entry_naming_no_row_is_not_trusted_and_the_request_is_resent() {
    let f = fixture("untrusted").await;
    let rows = rows(1, 4);
    let before = f.stats().insert_all_requests;
    f.proxy.push(Fault::UnusableErrorEntry { index: None });
    f.proxy.push(Fault::UnusableErrorEntry { index: Some(99) });
    assert_eq!(f.ship(&rows).await, landed(4));
    // Both answers inserted nothing; had they been trusted, every row would
    // have counted as landed and none would be in the table.
    assert_eq!(f.log_holds(&rows).await, (4, 4, true), "each row exactly once");
    assert_eq!(f.stats().insert_all_requests - before, 3, "two untrusted answers, then the request that landed");
    assert_eq!(f.stats().faults_injected, 2);
    assert_eq!(Metrics::get(&f.metrics.untrusted_responses), 2);
    assert_eq!(Metrics::get(&f.metrics.request_retries), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_all_answered_stopped_are_resent_only_after_a_backoff() {
    let f = fixture("allstopped").await;
    let rows = rows(2, 3);
    for _ in 0..3 {
        f.proxy.push(Fault::AllStopped);
    }
    let start = Instant::now();
    assert_eq!(f.ship(&rows).await, landed(3));
    let elapsed = start.elapsed();
    // Backoffs of attempts 0, 1, 2 are at least half of 1, 2, 4 initial delays.
    let at_least = INITIAL_DELAY.mul_f64(0.5 * (1.0 + 2.0 + 4.0));
    assert!(elapsed >= at_least, "three answers without progress took {elapsed:?}, less than the backoff floor {at_least:?}");
    assert_eq!(f.stats().faults_injected, 3);
    assert_eq!(f.log_holds(&rows).await, (3, 3, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_splits_the_request_in_halves_and_the_rows_land() {
    let f = fixture("toolarge").await;
    let rows = rows(3, 4);
    let before = f.stats().insert_all_requests;
    f.proxy.push(html(413, "Request Entity Too Large"));
    assert_eq!(f.ship(&rows).await, landed(4));
    assert_eq!(f.stats().insert_all_requests - before, 3, "the refused request, then its two halves");
    assert_eq!(f.log_holds(&rows).await, (4, 4, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_for_a_lone_row_rejects_it_naming_the_size() {
    let f = fixture("toolargerow").await;
    let rows = rows(4, 2);
    let before = f.stats().insert_all_requests;
    f.proxy.set_persistent(Some(html(413, "Request Entity Too Large")));
    let out = f.ship(&rows).await;
    f.proxy.set_persistent(None);
    for o in &out {
        let RowOutcome::Rejected(reason) = o else { panic!("{out:?}") };
        assert!(reason.contains("HTTP 413") && reason.contains("bytes of JSON"), "{reason}");
        assert!(!reason.contains('\n') && reason.len() < 400, "short, one line: {reason}");
    }
    assert_eq!(f.stats().insert_all_requests - before, 3, "the pair, then each row alone");
    assert_eq!(f.log_holds(&[]).await, (0, 0, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_html_400_for_a_single_row_rejects_it_with_the_status() {
    let f = fixture("html400").await;
    let rows = rows(5, 1);
    f.proxy.push(html(400, "Bad Request"));
    let out = f.ship(&rows).await;
    let [RowOutcome::Rejected(reason)] = &out[..] else { panic!("{out:?}") };
    assert!(reason.contains("HTTP 400") && reason.contains("text/html") && reason.contains("400 Bad Request"), "{reason}");
    assert_eq!(f.log_holds(&[]).await, (0, 0, true));
}

/// Not new behaviour: a guard that the non-JSON mapping keeps 5xx transient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_json_502_is_retried_and_the_rows_land_once() {
    let f = fixture("html502").await;
    let rows = rows(6, 2);
    let before = f.stats().insert_all_requests;
    f.proxy.push(html(502, "Bad Gateway"));
    assert_eq!(f.ship(&rows).await, landed(2));
    assert_eq!(f.stats().insert_all_requests - before, 2, "retried whole, not split");
    assert_eq!(f.log_holds(&rows).await, (2, 2, true));
}

/// Issue 10, item 1: right after landfall adds a column (a restart with a new
/// column in the config, or `dlq replay`), BigQuery's streaming path may
/// refuse rows naming it ("no such field") for minutes. Those rows are
/// re-sent within `bigquery.schema_propagation_wait`, not dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_refused_for_a_column_landfall_just_added_are_resent_until_it_propagates() {
    let f = fixture("propagation").await;
    let route = f.stack.cfg.tables.iter().find(|t| t.log_table == LOG).unwrap();
    let mut fields = landfall::sink::schema::log_table_fields(route);
    fields.push(gcp_bigquery_client::model::table_field_schema::TableFieldSchema::string("colour"));
    f.stack.bq.ensure_table(LOG, fields, None, None).await.unwrap();
    let rows = rows(7, 3);
    f.proxy.push(Fault::NoSuchField { field: "colour".into() });
    f.proxy.push(Fault::NoSuchField { field: "colour".into() });
    assert_eq!(f.ship(&rows).await, landed(3), "the previous code dead-lettered all three");
    assert_eq!(f.stats().faults_injected, 2);
    assert_eq!(Metrics::get(&f.metrics.schema_propagation_retries), 6);
    assert_eq!(f.log_holds(&rows).await, (3, 3, true));
}

/// Not new behaviour: without a recent schema change, "no such field" is final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_such_field_refusal_without_a_recent_schema_change_is_final() {
    let f = fixture("nosuchfield").await;
    let rows = rows(8, 2);
    f.proxy.push(Fault::NoSuchField { field: "colour".into() });
    for o in f.ship(&rows).await {
        let RowOutcome::Rejected(reason) = o else { panic!("{o:?}") };
        assert!(reason.contains("no such field: colour"), "{reason}");
    }
    assert_eq!(Metrics::get(&f.metrics.schema_propagation_retries), 0);
    assert_eq!(f.log_holds(&[]).await, (0, 0, true));
}

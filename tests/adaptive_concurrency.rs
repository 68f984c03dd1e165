//! The adaptive insertAll concurrency (src/sink/concurrency.rs) through the
//! real `BigQuerySink` and the fault proxy: under steady load the limit
//! climbs, a 429 storm cuts it down, and it recovers after; a latency step
//! cuts it, and it climbs again once the new latency is the usual one.
//! Every row shipped meanwhile ends `Landed` (the blackhole accepts what it
//! is sent; exactly-once landing under faults is tests/bq_faults.rs's).

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use landfall::harness::proxy::{Fault, FaultProxy, Target};
use landfall::key::DedupKey;
use landfall::metrics::Metrics;
use landfall::sink::concurrency::INITIAL_LIMIT;
use landfall::sink::insert::{BigQuerySink, LogRow, RowOutcome, Sink};
use serde_json::{Map, Value};

const LOG: &str = "widgets_log";

fn rows(task: usize, round: usize, n: usize) -> Vec<LogRow> {
    (0..n)
        .map(|i| {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(task as u64).to_be_bytes());
            k[8..16].copy_from_slice(&(round as u64).to_be_bytes());
            k[16..24].copy_from_slice(&(i as u64).to_be_bytes());
            let key = DedupKey(k);
            let mut json = Map::new();
            json.insert("_landfall_key".into(), Value::String(key.to_hex()));
            json.insert("_landfall_op".into(), Value::String("upsert".into()));
            json.insert("id".into(), Value::from(i as i64));
            LogRow::new(key, &json)
        })
        .collect()
}

/// The limit over `d`: (lowest, highest, last).
async fn watch_limit(metrics: &Metrics, d: Duration) -> (u64, u64, u64) {
    let end = Instant::now() + d;
    let (mut lo, mut hi) = (u64::MAX, 0);
    let mut last = 0;
    while Instant::now() < end {
        last = metrics.concurrency_limit.load(Ordering::Relaxed);
        lo = lo.min(last);
        hi = hi.max(last);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (lo, hi, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_follows_backpressure_and_latency_and_recovers() {
    let upstream = support::endpoint().trim_end_matches("/bigquery/v2").to_owned();
    let proxy = FaultProxy::start(&upstream).await.unwrap();
    let stack = support::Stack::start("adaptive", 1, support::WIDGETS, &[(&support::endpoint(), &proxy.endpoint())]).await;
    let mut cfg = stack.cfg.bigquery.clone();
    cfg.max_inflight_requests = 32;
    cfg.adaptive_concurrency = true;
    cfg.max_rows_per_request = 20;
    cfg.retry_initial_delay = Duration::from_millis(20);
    cfg.retry_max_delay = Duration::from_millis(200);
    let metrics = Arc::new(Metrics::default());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let sink = Arc::new(BigQuerySink::new(stack.bq.clone(), &cfg, rx, metrics.clone()));
    proxy.set_blackhole(Some(Duration::from_millis(20)));

    // More requests offered than the maximum: 48 shippers of one request each.
    let stop = Arc::new(AtomicBool::new(false));
    let mut shippers = Vec::new();
    for task in 0..48 {
        let (sink, stop) = (sink.clone(), stop.clone());
        shippers.push(tokio::spawn(async move {
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                let batch = rows(task, round, 20);
                let out = sink.ship(LOG, &batch).await.expect("ship");
                assert!(out.iter().all(|o| *o == RowOutcome::Landed), "{out:?}");
                round += 1;
            }
            round
        }));
    }

    // Steady: the limit climbs from where it starts.
    let (_, _, steady) = watch_limit(&metrics, Duration::from_secs(3)).await;
    assert!(steady >= INITIAL_LIMIT as u64 + 6, "the limit did not climb under load: {steady}");

    // A 429 storm: it backs off to (nearly) one request.
    proxy.set_blackhole(None);
    proxy.set_persistent(Some(Fault::Status {
        target: Target::InsertAll,
        code: 429,
        reason: "rateLimitExceeded".into(),
        message: "storm".into(),
    }));
    let (storm_low, _, _) = watch_limit(&metrics, Duration::from_secs(2)).await;
    assert!(storm_low <= 2, "the limit stayed at {storm_low} through a 429 storm (from {steady})");

    // The storm ends: it recovers.
    proxy.set_persistent(None);
    proxy.set_blackhole(Some(Duration::from_millis(20)));
    let (_, _, recovered) = watch_limit(&metrics, Duration::from_secs(3)).await;
    assert!(recovered >= storm_low + 6, "no recovery after the storm: {storm_low} -> {recovered}");

    // A latency step (20 ms -> 600 ms): it backs off, then climbs again at
    // the new latency. The step is large and the windows long because on a
    // loaded machine (the test lanes run side by side on 2 cores) the round
    // trips "at 20 ms" average far more: a 250 ms step watched for 1.5 s was
    // once not twice the average in time (a run of `make test`, 2026-12-06).
    proxy.set_blackhole(Some(Duration::from_millis(600)));
    let (step_low, _, _) = watch_limit(&metrics, Duration::from_secs(3)).await;
    assert!(step_low < recovered, "the latency step did not cut the limit: {recovered} -> {step_low}");
    let (_, _, after) = watch_limit(&metrics, Duration::from_secs(8)).await;
    assert!(after > step_low, "no climb at the new latency: {step_low} -> {after}");

    stop.store(true, Ordering::Relaxed);
    proxy.set_blackhole(Some(Duration::ZERO));
    for s in shippers {
        assert!(s.await.unwrap() > 0);
    }
    assert!(proxy.stats().blackholed_requests > 100);
}

//! Memory bounded in bytes (docs/design.md, "Failure modes"): with large
//! messages waiting in Kafka and a slow sink, the message bytes between Kafka
//! and the end of their ship task never exceed `pipeline.max_inflight_bytes`
//! plus one message, and a message larger than `pipeline.batch_max_bytes`
//! still goes through, as a batch of its own.
//!
//! The real run loop (`pipeline::run`) against an in-process mock Kafka, a
//! real WAL, and a sink that holds every request for a while and records how
//! many rows it holds at once. No BigQuery (the emulator is not needed).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use landfall::harness::demo::{demo_config_for, LocalKafka};
use landfall::metrics::{Metrics, SharedMetrics};
use landfall::pipeline::{self, Stopped};
use landfall::sink::{LogRow, RowOutcome, Sink, SinkError};
use landfall::wal::Wal;

/// Lands every row after `delay`, keeping the most rows it held at once and
/// the most rows of one call.
#[derive(Default)]
struct SlowSink {
    delay: Duration,
    holding: AtomicUsize,
    max_holding: AtomicUsize,
    max_per_call: AtomicUsize,
    landed: AtomicUsize,
}

#[async_trait]
impl Sink for SlowSink {
    async fn ship(&self, _table: &str, rows: &[LogRow]) -> Result<Vec<RowOutcome>, SinkError> {
        let now = self.holding.fetch_add(rows.len(), SeqCst) + rows.len();
        self.max_holding.fetch_max(now, SeqCst);
        self.max_per_call.fetch_max(rows.len(), SeqCst);
        tokio::time::sleep(self.delay).await;
        self.holding.fetch_sub(rows.len(), SeqCst);
        self.landed.fetch_add(rows.len(), SeqCst);
        Ok(vec![RowOutcome::Landed; rows.len()])
    }
}

struct Run {
    metrics: SharedMetrics,
    sink: Arc<SlowSink>,
    largest: usize,
    messages: usize,
}

/// Produces `messages` DMS inserts of `text_bytes` each over `partitions`
/// partitions, runs the bridge with the given byte bounds until every one is
/// committed, and stops it.
async fn run(name: &str, messages: usize, text_bytes: usize, partitions: i32, batch_max_bytes: usize, max_inflight_bytes: usize) -> Run {
    let kafka = LocalKafka::start(name, partitions).unwrap();
    let msgs: Vec<_> = (0..messages as i64).map(|i| landfall::harness::sim::large_text_change(i + 1, text_bytes)).collect();
    let largest = msgs.iter().map(|m| m.payload.len()).max().unwrap();
    // The mock broker keeps ~5 MiB per partition: stay well under it.
    assert!(largest * messages / partitions as usize <= 3 * 1024 * 1024, "too much data per mock partition");
    kafka.produce(&msgs).unwrap();
    assert_eq!(kafka.high_watermarks().unwrap().iter().sum::<i64>(), messages as i64, "the mock broker dropped messages");

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = demo_config_for(
        &kafka.bootstrap_servers(),
        "http://127.0.0.1:1/bigquery/v2",
        "landfall-local",
        "unused",
        &dir.path().join("wal"),
        name,
        &landfall::harness::sim::tables(),
    )
    .unwrap();
    // Only the byte bounds limit the batches here.
    cfg.pipeline.batch_max_messages = 2000;
    cfg.pipeline.max_inflight_batches = 4;
    cfg.pipeline.batch_max_bytes = batch_max_bytes;
    cfg.pipeline.max_inflight_bytes = max_inflight_bytes;
    let cfg = Arc::new(cfg);
    let wal = Wal::open(&cfg.wal.path).unwrap();
    let sink = Arc::new(SlowSink { delay: Duration::from_millis(150), ..Default::default() });
    let metrics: SharedMetrics = Arc::new(Metrics::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (abort_tx, _abort_rx) = tokio::sync::watch::channel(false);
    let bridge = tokio::spawn(pipeline::run(cfg.clone(), wal, sink.clone(), metrics.clone(), stop_rx, abort_tx));

    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let committed: i64 = pipeline::committed_offsets(&cfg, name, partitions).unwrap().iter().sum();
        if committed >= messages as i64 {
            break;
        }
        assert!(!bridge.is_finished(), "the bridge stopped early");
        assert!(Instant::now() < deadline, "{committed} of {messages} messages committed in 180 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_tx.send(true).unwrap();
    assert_eq!(bridge.await.unwrap().unwrap(), Stopped::Drained);
    Run { metrics, sink, largest, messages }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_bytes_never_exceed_the_bound_plus_one_message() {
    // 40 messages of ~600 kB (24 MB) waiting; at most 2.5 MB in flight.
    let (batch_max, inflight_max) = (1_000_000, 2_500_000);
    let r = run("membound", 40, 600_000, 20, batch_max, inflight_max).await;
    assert_eq!(r.sink.landed.load(SeqCst), r.messages);
    let high = Metrics::get(&r.metrics.inflight_bytes_max) as usize;
    assert!(high <= inflight_max + r.largest, "{high} bytes in flight at once; bound {inflight_max} + one message {}", r.largest);
    // The bound was reached (the reader was held back by it, not by anything else).
    assert!(high >= inflight_max, "only {high} bytes were ever in flight: the test did not exercise the bound");
    assert_eq!(Metrics::get(&r.metrics.inflight_bytes), 0, "nothing is in flight after a drain");
    // Independently of the gauge: the rows the sink held at once fit the same
    // bound (each row is one message; today's code had every message read
    // within a batch wait in flight at once).
    let rows_bound = (inflight_max + r.largest) / (r.largest * 9 / 10);
    let held = r.sink.max_holding.load(SeqCst);
    assert!(held <= rows_bound, "the sink held {held} rows of ~{} bytes at once (at most {rows_bound} fit the bound)", r.largest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_the_batch_bound_ships_alone() {
    // Every message (~300 kB) is larger than a batch may be (100 kB).
    let r = run("membatch", 12, 300_000, 4, 100_000, 1_000_000).await;
    assert_eq!(r.sink.landed.load(SeqCst), r.messages, "every message made progress");
    assert_eq!(r.sink.max_per_call.load(SeqCst), 1, "a batch holds one message when that one passes the batch bound");
    let high = Metrics::get(&r.metrics.inflight_bytes_max) as usize;
    assert!(high <= 1_000_000 + r.largest, "{high}");
}

/// The `landfall` binary runs with one jemalloc arena and a one-second dirty
/// decay (src/main.rs, `MALLOC_CONF`; docs/performance.md, "Allocator arenas
/// and decay"). jemalloc's own statistics, printed at exit when the
/// environment asks for them (general section only), name the options in effect; without the
/// compiled-in string they read 4 arenas per CPU and 10000 ms.
#[test]
fn the_binary_runs_with_one_arena_and_a_short_decay() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_landfall"))
        .arg("--help")
        .env("_RJEM_MALLOC_CONF", "stats_print:true,stats_print_opts:mdablxe")
        .output()
        .expect("run landfall --help");
    assert!(out.status.success(), "landfall --help failed: {out:?}");
    let stats = String::from_utf8_lossy(&out.stderr);
    let opt = |name: &str| {
        stats
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("opt.{name}: ")).map(str::to_owned))
            .unwrap_or_else(|| panic!("jemalloc printed no opt.{name}; stderr: {stats}"))
    };
    assert_eq!(opt("narenas"), "1");
    assert!(opt("dirty_decay_ms").starts_with("1000"), "dirty_decay_ms: {}", opt("dirty_decay_ms"));
}

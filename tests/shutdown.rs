//! A shutdown with both ends gone: the broker is down and BigQuery answers
//! nothing, with batches in flight. `Service::stop` (what `landfall run` does
//! on SIGTERM) must return within `pipeline.shutdown_timeout` plus its
//! grace, leaving the unfinished changes pending in the WAL or unacknowledged
//! in Kafka; a later start finishes them.

mod support;

use std::time::{Duration, Instant};

use landfall::harness::demo::{run_until_caught_up, wait_caught_up};
use landfall::harness::proxy::{Fault, FaultProxy, Target};
use landfall::harness::sim::Simulator;
use landfall::pipeline::Stopped;
use landfall::service::{Service, STOP_GRACE};

#[test]
fn shutdown_is_bounded_with_kafka_and_bigquery_both_gone() {
    // A runtime of our own, so that the test ends even if a blocking close of
    // the consumer is still waiting for the (revived) broker.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let proxy = FaultProxy::start(support::endpoint().trim_end_matches("/bigquery/v2")).await.unwrap();
        let timeout = Duration::from_secs(4);
        let stack = support::Stack::start(
            "shutdown",
            4,
            "",
            &[
                (&support::endpoint(), &proxy.endpoint()),
                ("batch_max_wait = \"20ms\"", "batch_max_wait = \"20ms\"\nshutdown_timeout = \"4s\""),
            ],
        )
        .await;
        let (kafka, cfg) = (&stack.kafka, &stack.cfg);
        let mut sim = Simulator::new(32);
        let mut msgs = sim.full_load(50);
        msgs.extend(sim.changes(500));
        kafka.produce(&msgs[..250]).unwrap();
        let service = Service::start(cfg.clone()).await.unwrap();
        wait_caught_up(cfg, kafka, &service, Duration::from_secs(120)).await.unwrap();

        // BigQuery stops answering (every request hangs), new changes arrive
        // and are in flight, then the broker goes down too.
        proxy.set_persistent(Some(Fault::Delay { target: Target::Any, by: Duration::from_secs(600) }));
        kafka.produce(&msgs[250..]).unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        kafka.cluster.broker_down(1).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;

        let t0 = Instant::now();
        let stopped = service.stop().await.unwrap();
        let took = t0.elapsed();
        assert_ne!(stopped, Stopped::Drained, "nothing could land");
        assert!(
            took <= timeout + STOP_GRACE + Duration::from_secs(2),
            "stop took {took:?} with shutdown_timeout {timeout:?}: it must be bounded whatever is unreachable"
        );

        // Both come back: a new start finishes what was left. (In this test's
        // process, requests abandoned by the stop still hold the WAL until
        // their HTTP timeout; `landfall run` exits instead.)
        kafka.cluster.broker_up(1).unwrap();
        proxy.set_persistent(None);
        let free = Instant::now();
        while landfall::wal::Wal::open(&cfg.wal.path).is_err() {
            assert!(free.elapsed() < Duration::from_secs(120), "the abandoned shutdown never released the WAL");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        run_until_caught_up(cfg, kafka, Duration::from_secs(180)).await.unwrap();
        stack.merge_and_verify(&sim.model).await;
    });
    rt.shutdown_timeout(Duration::from_secs(10));
}

/// The same through the real binary: `landfall run`, SIGTERM, with the
/// out-of-process broker killed and BigQuery hanging (insertAll and the
/// periodic MERGE). The process must exit within `shutdown_timeout` plus the
/// grace: not wait for a MERGE's HTTP timeout, nor in the runtime's teardown
/// for a consumer close that cannot finish.
#[test]
fn landfall_run_exits_on_sigterm_with_kafka_and_bigquery_both_gone() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_landfall"));
        let work = tempfile::tempdir().unwrap();
        let kafka = landfall::harness::mock_kafka::KafkaProcess::start(&exe, work.path(), "dms.sigterm", 4).await.unwrap();
        let proxy = FaultProxy::start(support::endpoint().trim_end_matches("/bigquery/v2")).await.unwrap();
        // The merge timer runs, so a MERGE is waiting on BigQuery too.
        let text = run_config(&kafka.bootstrap, &proxy, &work, "sigterm").replace("interval = \"0s\"", "interval = \"1s\"");
        let cfg = landfall::config::Config::from_toml(&text).unwrap();
        support::bigquery(&cfg).await;
        let mut bridge = spawn_run(&exe, &work, &text);
        let mut sim = Simulator::new(33);
        let mut msgs = sim.full_load(50);
        msgs.extend(sim.changes(400));
        kafka.produce(&msgs[..200]).unwrap();
        // Running, not starting: wait until it has committed offsets (a
        // loaded machine can take longer than a few seconds to start).
        let deadline = Instant::now() + Duration::from_secs(120);
        while landfall::pipeline::committed_offsets(&cfg, "dms.sigterm", 4).map_or(true, |o| o.iter().all(|&o| o == 0)) {
            assert!(Instant::now() < deadline, "the bridge committed nothing within 120 s");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        proxy.set_persistent(Some(Fault::Delay { target: Target::Any, by: Duration::from_secs(600) }));
        kafka.produce(&msgs[200..]).unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        kafka.stop().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(bridge.try_wait().unwrap().is_none(), "the bridge is still running before SIGTERM");

        let (status, took, bridge_log) = sigterm(&mut bridge, &work).await;
        let tail: String = bridge_log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        let status = status.unwrap_or_else(|_| panic!("no exit 60 s after SIGTERM; log tail:\n{tail}")).unwrap();
        assert!(status.code().is_some(), "exited by itself, not killed: {status:?}");
        assert!(
            took <= Duration::from_secs(4) + STOP_GRACE + Duration::from_secs(3),
            "exit took {took:?} after SIGTERM with shutdown_timeout 4s; log tail:\n{tail}"
        );
    });
    rt.shutdown_timeout(Duration::from_secs(10));
}

/// SIGTERM while `landfall run` is still starting, with BigQuery answering
/// nothing: it exits within the bound instead of waiting for the table
/// requests' timeout (30 s in this config; the previous code waited for it).
#[test]
fn landfall_run_exits_on_sigterm_while_starting_against_an_unreachable_bigquery() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_landfall"));
        let work = tempfile::tempdir().unwrap();
        let kafka = landfall::harness::mock_kafka::KafkaProcess::start(&exe, work.path(), "dms.sigstart", 1).await.unwrap();
        let proxy = FaultProxy::start(support::endpoint().trim_end_matches("/bigquery/v2")).await.unwrap();
        proxy.set_persistent(Some(Fault::Delay { target: Target::Any, by: Duration::from_secs(600) }));
        let mut bridge = spawn_run(&exe, &work, &run_config(&kafka.bootstrap, &proxy, &work, "sigstart"));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(bridge.try_wait().unwrap().is_none(), "still starting (its first BigQuery request hangs)");
        let (status, took, bridge_log) = sigterm(&mut bridge, &work).await;
        let status = status.unwrap_or_else(|_| panic!("no exit 60 s after SIGTERM; log:\n{bridge_log}")).unwrap();
        assert_eq!(status.code(), Some(0), "a clean exit: {status:?}\n{bridge_log}");
        assert!(took <= Duration::from_secs(4) + STOP_GRACE, "exit took {took:?} after SIGTERM while starting; log:\n{bridge_log}");
        kafka.stop().await;
    });
    rt.shutdown_timeout(Duration::from_secs(10));
}

/// The demo config for `landfall run` against `kafka` and BigQuery through
/// `proxy`, on topic `dms.<name>`, with a 4 s `shutdown_timeout`.
fn run_config(kafka: &str, proxy: &FaultProxy, work: &tempfile::TempDir, name: &str) -> String {
    landfall::harness::demo::demo_config_toml(
        kafka,
        &proxy.endpoint(),
        &support::project(),
        &support::unique_dataset(name),
        &work.path().join("wal"),
        &landfall::harness::sim::tables(),
    )
    .replace("dms.sales", &format!("dms.{name}"))
    .replace("batch_max_wait = \"20ms\"", "batch_max_wait = \"20ms\"\nshutdown_timeout = \"4s\"")
}

/// Starts `landfall run` with config `text`, logging to `bridge.log` in `work`.
fn spawn_run(exe: &std::path::Path, work: &tempfile::TempDir, text: &str) -> tokio::process::Child {
    let config = work.path().join("landfall.toml");
    std::fs::write(&config, text).unwrap();
    let log = std::fs::File::create(work.path().join("bridge.log")).unwrap();
    tokio::process::Command::new(exe)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Sends SIGTERM and waits up to 60 s: the exit (or the timeout), how long
/// it took, and the bridge's log.
async fn sigterm(
    bridge: &mut tokio::process::Child,
    work: &tempfile::TempDir,
) -> (Result<std::io::Result<std::process::ExitStatus>, tokio::time::error::Elapsed>, Duration, String) {
    let t0 = Instant::now();
    // SAFETY: sending a signal to our own child has no memory-safety preconditions.
    unsafe {
        libc::kill(bridge.id().unwrap() as i32, libc::SIGTERM);
    }
    let status = tokio::time::timeout(Duration::from_secs(60), bridge.wait()).await;
    let took = t0.elapsed();
    (status, took, std::fs::read_to_string(work.path().join("bridge.log")).unwrap_or_default())
}

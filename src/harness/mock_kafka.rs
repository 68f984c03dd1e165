//! A mock Kafka cluster in its own process, so a bridge can be killed without
//! taking the broker (and its committed offsets) with it, and so the memory
//! the broker holds is not counted against the bridge (the drills and the
//! benchmark use it).
//!
//! `landfall mock-kafka --topic T[:N] ... --partitions N --ready-file F`
//! starts librdkafka's mock cluster, creates the topics (`N` partitions each,
//! `--partitions` where a topic gives none), writes its bootstrap address to
//! `F`, and takes fault commands on stdin, one per line:
//!
//! * `broker-down` / `broker-up`: take the (single) broker down and up;
//! * `commit-errors N`: fail the next N OffsetCommit requests;
//! * `clear`: remove injected request errors;
//! * `exit` (or end of input): stop.

use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::ClientConfig;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command};

use crate::harness::sim::SimMessage;

/// `--rebalance-delay-ms D` sets the broker's `group.initial.rebalance.delay.ms`
/// (the mock's default is 3 s, as Apache Kafka's).
pub struct ServeOptions {
    pub topics: Vec<(String, i32)>,
    pub rebalance_delay_ms: Option<i32>,
}

/// `name` or `name:partitions`.
pub fn parse_topic(arg: &str, default_partitions: i32) -> Result<(String, i32), String> {
    match arg.rsplit_once(':') {
        Some((name, n)) => Ok((name.to_owned(), n.parse().map_err(|_| format!("bad partition count in {arg:?}"))?)),
        None => Ok((arg.to_owned(), default_partitions)),
    }
}

/// The child side: serve a mock cluster until stdin closes.
pub fn serve(opts: &ServeOptions, ready_file: &Path) -> anyhow::Result<()> {
    // A producer handle that owns the mock cluster, so that its raw handle is
    // reachable for the one setting the safe API lacks.
    let owner: BaseProducer = ClientConfig::new().set("test.mock.num.brokers", "1").create()?;
    let cluster = owner.client().mock_cluster().ok_or_else(|| anyhow::anyhow!("librdkafka did not create a mock cluster"))?;
    if let Some(ms) = opts.rebalance_delay_ms {
        // SAFETY: the handle belongs to `owner`, which outlives this call; the
        // function only stores the value in the cluster's defaults.
        unsafe {
            let mcluster = rdkafka::bindings::rd_kafka_handle_mock_cluster(owner.client().native_ptr());
            anyhow::ensure!(!mcluster.is_null(), "no mock cluster handle");
            rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(mcluster, ms);
        }
    }
    for (topic, partitions) in &opts.topics {
        cluster.create_topic(topic, *partitions, 1)?;
    }
    let tmp = ready_file.with_extension("tmp");
    std::fs::write(&tmp, cluster.bootstrap_servers())?;
    std::fs::rename(&tmp, ready_file)?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("broker-down"), _) => cluster.broker_down(1)?,
            (Some("broker-up"), _) => cluster.broker_up(1)?,
            (Some("commit-errors"), n) => {
                let n: usize = n.and_then(|n| n.parse().ok()).unwrap_or(1);
                let errors = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR; n];
                cluster.request_errors(RDKafkaApiKey::OffsetCommit, &errors);
            }
            (Some("clear"), _) => cluster.clear_request_errors(RDKafkaApiKey::OffsetCommit),
            (Some("exit"), _) => break,
            (None, _) => {}
            (Some(other), _) => eprintln!("mock-kafka: unknown command {other:?}"),
        }
    }
    Ok(())
}

/// The parent side: a handle on the mock-kafka child process.
pub struct KafkaProcess {
    producer: ThreadedProducer<DefaultProducerContext>,
    child: Child,
    stdin: Option<ChildStdin>,
    pub bootstrap: String,
    pub topic: String,
    pub partitions: i32,
}

impl KafkaProcess {
    /// A mock cluster with one topic, in a child process running `exe mock-kafka`.
    pub async fn start(exe: &Path, work: &Path, topic: &str, partitions: i32) -> anyhow::Result<KafkaProcess> {
        Self::start_with(exe, work, &[(topic, partitions)], None).await
    }

    /// Several topics (the first is the one [`KafkaProcess::produce`] writes to),
    /// and optionally the group initial rebalance delay.
    pub async fn start_with(
        exe: &Path,
        work: &Path,
        topics: &[(&str, i32)],
        rebalance_delay_ms: Option<i32>,
    ) -> anyhow::Result<KafkaProcess> {
        let (topic, partitions) = topics.first().copied().ok_or_else(|| anyhow::anyhow!("no topic"))?;
        let ready = work.join("kafka.bootstrap");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::File::create(work.join("kafka.log"))?;
        let mut args: Vec<String> = vec!["mock-kafka".into()];
        for (t, n) in topics {
            args.extend(["--topic".into(), format!("{t}:{n}")]);
        }
        args.extend(["--partitions".into(), partitions.to_string()]);
        if let Some(ms) = rebalance_delay_ms {
            args.extend(["--rebalance-delay-ms".into(), ms.to_string()]);
        }
        let mut child = Command::new(exe)
            .args(&args)
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let bootstrap = loop {
            if let Ok(s) = std::fs::read_to_string(&ready) {
                break s;
            }
            anyhow::ensure!(child.try_wait()?.is_none(), "mock-kafka exited early; see {}", work.join("kafka.log").display());
            anyhow::ensure!(std::time::Instant::now() < deadline, "mock-kafka did not start within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .create()?;
        Ok(KafkaProcess { producer, child, stdin, bootstrap, topic: topic.into(), partitions })
    }

    pub async fn command(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| anyhow::anyhow!("mock-kafka stdin closed"))?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    pub fn produce(&self, msgs: &[SimMessage]) -> anyhow::Result<()> {
        for m in msgs {
            crate::harness::demo::send(&self.producer, &self.topic, Some(&m.key), Some(&m.payload))?;
        }
        self.producer.flush(Duration::from_secs(60))?;
        Ok(())
    }

    pub fn high_watermarks(&self) -> anyhow::Result<Vec<i64>> {
        let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &self.bootstrap).create()?;
        (0..self.partitions).map(|p| Ok(c.fetch_watermarks(&self.topic, p, Duration::from_secs(10))?.1)).collect()
    }

    pub async fn stop(mut self) {
        // The producer first, so it does not report the broker going away.
        drop(self.producer);
        drop(self.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

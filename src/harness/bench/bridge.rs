//! The bridge under measurement: `landfall run` in a child process (so its
//! peak RSS is its own), and a watcher of its consumer group's commits.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use tokio::process::{Child, Command};

/// A running `landfall run`.
pub struct Bridge {
    child: Child,
    pub log: PathBuf,
    pub started: Instant,
}

impl Bridge {
    pub fn spawn(exe: &Path, config: &Path, log: PathBuf) -> anyhow::Result<Bridge> {
        let out = std::fs::File::create(&log)?;
        let child = Command::new(exe)
            .args(["--log-json", "run", "--config"])
            .arg(config)
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()?;
        Ok(Bridge { child, log, started: Instant::now() })
    }

    fn pid(&self) -> anyhow::Result<i32> {
        Ok(self.child.id().ok_or_else(|| anyhow::anyhow!("the bridge has exited; see {}", self.log.display()))? as i32)
    }

    /// Peak resident set size so far (`VmHWM`), in MiB.
    pub fn peak_rss_mb(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?))?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc status"))?;
        Ok(kb / 1024.0)
    }

    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!("the bridge exited ({status}); see {}", self.log.display());
        }
        Ok(())
    }

    /// SIGTERM, wait for a clean exit, and return the last summary line's fields.
    pub async fn stop(mut self) -> anyhow::Result<Value> {
        // SAFETY: sending a signal to our own child has no memory-safety preconditions.
        unsafe {
            libc::kill(self.pid()?, libc::SIGTERM);
        }
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await??;
        anyhow::ensure!(status.success(), "the bridge exited with {status}; see {}", self.log.display());
        last_summary(&self.log)
    }
}

/// The fields of the last `summary` line of a JSON log.
pub fn last_summary(log: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(log)?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| {
            let fields = v.get("fields")?;
            (fields.get("message")?.as_str()? == "summary").then(|| fields.clone())
        })
        .ok_or_else(|| anyhow::anyhow!("no summary line in {}", log.display()))
}

/// Reads the committed offsets of a group (without joining it).
pub struct Commits {
    consumer: BaseConsumer,
    tpl: TopicPartitionList,
}

impl Commits {
    pub fn new(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> anyhow::Result<Commits> {
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        Ok(Commits { consumer, tpl })
    }

    /// The sum of the committed offsets (messages acknowledged so far).
    pub fn total(&self) -> anyhow::Result<i64> {
        let c = self.consumer.committed_offsets(self.tpl.clone(), Duration::from_secs(10))?;
        Ok(c.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o } else { 0 }).sum())
    }
}

/// When the commits of a run moved: the first time any was seen, and when
/// they reached the target.
pub struct Progress {
    pub first_at: Instant,
    pub first_total: i64,
    pub done_at: Instant,
}

impl Progress {
    /// Messages per second between the first observed commit and the last,
    /// so start-up and the group join are not counted. When the first commit
    /// seen already covered everything (a run too short to measure), the
    /// rate over the whole run from `started`, start-up included.
    pub fn rate(&self, target: i64, started: Instant) -> f64 {
        if self.first_total >= target {
            return target as f64 / self.done_at.duration_since(started).as_secs_f64().max(1e-3);
        }
        (target - self.first_total) as f64 / self.done_at.duration_since(self.first_at).as_secs_f64().max(1e-3)
    }
}

/// Polls `commits` until they reach `target`, checking the bridge is alive.
pub async fn watch(bridge: &mut Bridge, commits: &Commits, target: i64, timeout: Duration) -> anyhow::Result<Progress> {
    let deadline = Instant::now() + timeout;
    let mut first: Option<(Instant, i64)> = None;
    loop {
        let total = commits.total()?;
        let now = Instant::now();
        if total > 0 && first.is_none() {
            first = Some((now, total));
        }
        if total >= target {
            let (first_at, first_total) = first.unwrap_or((now, total));
            return Ok(Progress { first_at, first_total, done_at: now });
        }
        bridge.check_running()?;
        anyhow::ensure!(
            now < deadline,
            "the bridge committed {total} of {target} messages within {timeout:?}; see {}",
            bridge.log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Bytes of every file under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

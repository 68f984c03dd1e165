//! The running service: the bridge pipeline plus the periodic merge.
//!
//! `landfall run` is [`Service::start`], a wait for SIGTERM/SIGINT, and
//! [`Service::stop`]. The demo and the tests use the same calls.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, SinkKind};
use crate::log::Wal;
use crate::merge::Merger;
use crate::metrics::{Metrics, SharedMetrics};
use crate::pipeline::{self, PipelineError, Stopped};
use crate::sink::{BigQuery, BigQuerySink, DiscardSink, Sink};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Wal(#[from] crate::log::WalError),
    #[error(transparent)]
    Client(#[from] crate::sink::client::ClientError),
    #[error(transparent)]
    Schema(#[from] crate::sink::schema::SchemaError),
}

pub struct Service {
    pub metrics: SharedMetrics,
    /// The WAL the pipeline writes (shared handle), for inspection and fault injection.
    pub wal: Wal,
    shutdown: watch::Sender<bool>,
    pipeline: JoinHandle<Result<Stopped, PipelineError>>,
    /// The periodic merge (none with the discard sink).
    merge_task: Option<JoinHandle<()>>,
    shutdown_timeout: std::time::Duration,
}

/// What [`Service::stop`] allows beyond `pipeline.shutdown_timeout` for the
/// final commit, closing the consumer and the merge timer.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl Service {
    /// Opens the WAL, connects to BigQuery, creates missing tables, and starts
    /// the pipeline (which first re-ships pending WAL records) and the merge
    /// timer. With `[sink] kind = "discard"` BigQuery is not contacted.
    pub async fn start(cfg: Arc<Config>) -> Result<Service, StartError> {
        let wal = Wal::open_with(&cfg.wal.path, cfg.wal.cache_bytes)?;
        pin_settings(&wal, &cfg)?;
        let metrics: SharedMetrics = Arc::new(Metrics::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (abort, abort_rx) = watch::channel(false);
        let (sink, merge_task): (Arc<dyn Sink>, _) = match cfg.sink.kind {
            SinkKind::Bigquery => {
                let bq = BigQuery::connect(&cfg.bigquery).await?;
                bq.ensure_all(&cfg).await?;
                let merger = Arc::new(Merger::new(bq.clone(), cfg.clone(), metrics.clone(), shutdown_rx.clone()));
                let sink = Arc::new(BigQuerySink::new(bq, &cfg.bigquery, abort_rx, metrics.clone()));
                (sink, Some(tokio::spawn(merger.run_periodic())))
            }
            SinkKind::Discard => {
                tracing::warn!("sink kind \"discard\": rows are dropped and their offsets committed; BigQuery is not contacted");
                (Arc::new(DiscardSink::new(metrics.clone())), None)
            }
        };
        let shutdown_timeout = cfg.pipeline.shutdown_timeout;
        let pipeline = tokio::spawn(pipeline::run(cfg, wal.clone(), sink, metrics.clone(), shutdown_rx, abort));
        Ok(Service { metrics, wal, shutdown, pipeline, merge_task, shutdown_timeout })
    }

    /// True once the pipeline has stopped (e.g. on a fatal error).
    pub fn is_finished(&self) -> bool {
        self.pipeline.is_finished()
    }

    /// Stops consuming, lands what is in flight, commits, and waits: at most
    /// `pipeline.shutdown_timeout` plus [`STOP_GRACE`], whatever is
    /// unreachable. Past that, what is still running is abandoned
    /// ([`Stopped::Abandoned`]): nothing it did not finish was acknowledged,
    /// and the WAL is consistent at any point (the kill -9 drills).
    pub async fn stop(self) -> Result<Stopped, PipelineError> {
        let _ = self.shutdown.send(true);
        let (pipeline, merge_task) = (self.pipeline, self.merge_task);
        let stopping = async move {
            let result = match pipeline.await {
                Ok(r) => r,
                Err(e) => Err(PipelineError::Task(e.to_string())),
            };
            if let Some(merge) = merge_task {
                let _ = merge.await;
            }
            result
        };
        match tokio::time::timeout(self.shutdown_timeout + STOP_GRACE, stopping).await {
            Ok(result) => result,
            Err(_) => {
                tracing::error!(
                    timeout = ?self.shutdown_timeout + STOP_GRACE,
                    "shutdown did not finish in time (Kafka or BigQuery unreachable?); abandoning it: unfinished changes stay pending in the WAL or are redelivered"
                );
                Ok(Stopped::Abandoned)
            }
        }
    }
}

/// Refuses to start when a setting the WAL's keys or the tables' ordering
/// values depend on changed since they were written (docs/design.md,
/// "Ordering": two orderings are never compared).
pub fn pin_settings(wal: &Wal, cfg: &Config) -> Result<(), crate::log::WalError> {
    for t in &cfg.tables {
        wal.pin_setting(&format!("order_by:{}", t.final_table), t.order_by().name())?;
    }
    Ok(())
}

//! The running service: the bridge pipeline plus the periodic merge.
//!
//! `landfall run` is [`Service::start`], a wait for SIGTERM/SIGINT, and
//! [`Service::stop`]. The demo and the tests use the same calls.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::log::Wal;
use crate::merge::Merger;
use crate::metrics::{Metrics, SharedMetrics};
use crate::pipeline::{self, PipelineError, Stopped};
use crate::sink::{BigQuery, BigQuerySink, Sink};

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
    pub bq: BigQuery,
    pub merger: Arc<Merger>,
    /// The WAL the pipeline writes (shared handle), for inspection and fault injection.
    pub wal: Wal,
    shutdown: watch::Sender<bool>,
    pipeline: JoinHandle<Result<Stopped, PipelineError>>,
    merge_task: JoinHandle<()>,
}

impl Service {
    /// Opens the WAL, connects to BigQuery, creates missing tables, and starts
    /// the pipeline (which first re-ships pending WAL records) and the merge timer.
    pub async fn start(cfg: Arc<Config>) -> Result<Service, StartError> {
        let wal = Wal::open(&cfg.wal.path)?;
        let bq = BigQuery::connect(&cfg.bigquery).await?;
        bq.ensure_all(&cfg).await?;
        let metrics: SharedMetrics = Arc::new(Metrics::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (abort, abort_rx) = watch::channel(false);
        let sink: Arc<dyn Sink> = Arc::new(BigQuerySink::new(bq.clone(), &cfg.bigquery, abort_rx, metrics.clone()));
        let merger = Arc::new(Merger::new(bq.clone(), cfg.clone(), metrics.clone(), shutdown_rx.clone()));
        let merge_task = tokio::spawn(merger.clone().run_periodic());
        let pipeline = tokio::spawn(pipeline::run(cfg, wal.clone(), sink, metrics.clone(), shutdown_rx, abort));
        Ok(Service { metrics, bq, merger, wal, shutdown, pipeline, merge_task })
    }

    /// True once the pipeline has stopped (e.g. on a fatal error).
    pub fn is_finished(&self) -> bool {
        self.pipeline.is_finished()
    }

    /// Stops consuming, lands what is in flight, commits, and waits.
    pub async fn stop(self) -> Result<Stopped, PipelineError> {
        let _ = self.shutdown.send(true);
        let result = match self.pipeline.await {
            Ok(r) => r,
            Err(e) => Err(PipelineError::Task(e.to_string())),
        };
        let _ = self.merge_task.await;
        result
    }
}

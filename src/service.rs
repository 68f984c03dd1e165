//! The running service: the bridge pipeline plus the periodic merge.
//!
//! `landfall run` is [`run_until_signal`]: [`Service::start`], a wait for
//! SIGTERM/SIGINT or for the pipeline to end on its own
//! ([`Service::finished`]), and [`Service::stop`]. The demo and the tests use
//! the same calls.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, SinkKind};
use crate::merge::Merger;
use crate::metrics::{Metrics, SharedMetrics};
use crate::pipeline::{self, PipelineError, Stopped};
use crate::sink::{BigQuery, BigQuerySink, DiscardSink, Sink};
use crate::wal::Wal;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
    #[error(transparent)]
    Client(#[from] crate::sink::client::ClientError),
    #[error(transparent)]
    Schema(#[from] crate::sink::schema::SchemaError),
    #[error(transparent)]
    Listen(#[from] crate::observe::ListenError),
}

pub struct Service {
    pub metrics: SharedMetrics,
    /// The WAL the pipeline writes (shared handle), for inspection and fault injection.
    pub wal: Wal,
    shutdown: watch::Sender<bool>,
    pipeline: JoinHandle<Result<Stopped, PipelineError>>,
    /// Becomes true when the pipeline task ends (or is dropped, if it panics).
    finished: watch::Receiver<bool>,
    /// The periodic merge (none with the discard sink).
    merge_task: Option<JoinHandle<()>>,
    /// The address `/metrics`, `/health/*` and `/status` are served on
    /// (`observability.listen`; with port 0, the port picked).
    pub observe_addr: Option<std::net::SocketAddr>,
    observe_task: Option<JoinHandle<()>>,
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
        // The listener first: health checks answer (not ready) while the
        // tables are created and pending records re-shipped.
        let (observe_addr, observe_task) = match cfg.observability.listen {
            None => (None, None),
            Some(addr) => {
                let listener = crate::observe::bind(addr).await?;
                let bound = listener.local_addr().ok();
                tracing::info!(addr = ?bound, "serving /metrics, /health/live, /health/ready and /status");
                let observed =
                    crate::observe::Observed { metrics: metrics.clone(), wal: wal.clone(), ready_within: cfg.observability.ready_within };
                (bound, Some(tokio::spawn(crate::observe::serve(listener, observed))))
            }
        };
        let (abort, abort_rx) = watch::channel(false);
        let mut cfg = cfg;
        let (sink, merge_task): (Arc<dyn Sink>, _) = match cfg.sink.kind {
            SinkKind::Bigquery => {
                let bq = BigQuery::connect(&cfg.bigquery).await?;
                bq.ensure_all(&cfg).await?;
                // Columns schema evolution added in an earlier run.
                cfg = Arc::new(crate::pipeline::evolve::adopt_existing(&cfg, &bq).await?);
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
        let (finished_tx, finished) = watch::channel(false);
        let run = pipeline::run(cfg, wal.clone(), sink, metrics.clone(), shutdown_rx, abort);
        let pipeline = tokio::spawn(async move {
            let stopped = run.await;
            let _ = finished_tx.send(true);
            stopped
        });
        Ok(Service { metrics, wal, shutdown, pipeline, finished, merge_task, observe_addr, observe_task, shutdown_timeout })
    }

    /// True once the pipeline has stopped (e.g. on a fatal error).
    pub fn is_finished(&self) -> bool {
        self.pipeline.is_finished()
    }

    /// Resolves when the pipeline stops on its own (a fatal error); [`stop`](Self::stop)
    /// then returns why.
    pub async fn finished(&self) {
        let mut finished = self.finished.clone();
        // An error means the task ended without sending (it panicked): finished too.
        let _ = finished.wait_for(|done| *done).await;
    }

    /// Stops consuming, lands what is in flight, commits, and waits: at most
    /// `pipeline.shutdown_timeout` plus [`STOP_GRACE`], whatever is
    /// unreachable. Past that, what is still running is abandoned
    /// ([`Stopped::Abandoned`]): nothing it did not finish was acknowledged,
    /// and the WAL is consistent at any point (the kill -9 drills).
    pub async fn stop(self) -> Result<Stopped, PipelineError> {
        let _ = self.shutdown.send(true);
        let (pipeline, merge_task, observe_task) = (self.pipeline, self.merge_task, self.observe_task);
        // The listener answers until the stop is over (a drain is not a death).
        let _observe = observe_task.map(AbortOnDrop);
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

/// Aborts its task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How [`run_until_signal`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// A signal arrived while starting (creating tables, which may wait a
    /// request timeout on an unreachable BigQuery): nothing had been
    /// consumed or acknowledged, and every WAL write was durable on its own.
    SignalWhileStarting,
    /// A signal asked the running service to stop.
    Signalled(Stopped),
    /// The pipeline stopped on its own (a fatal error, logged).
    PipelineEnded(Stopped),
}

impl RunEnd {
    /// The process exit status: 3 when the stop had to abandon work in
    /// flight (nothing unfinished was acknowledged), 0 otherwise.
    pub fn exit_code(self) -> i32 {
        match self {
            RunEnd::Signalled(Stopped::Abandoned) | RunEnd::PipelineEnded(Stopped::Abandoned) => 3,
            _ => 0,
        }
    }
}

/// SIGTERM and SIGINT, registered when created (so a signal that arrives
/// while the service is still starting is not lost, nor fatal).
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// The next SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Why `landfall run` could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot install the signal handlers: {0}")]
    Signals(#[from] std::io::Error),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// `landfall run`: starts the service and runs it until SIGTERM or SIGINT
/// (or until the pipeline stops on its own), then stops it, logging the
/// counters' summary. Signals are caught from the start, also while starting.
pub async fn run_until_signal(cfg: Arc<Config>) -> Result<RunEnd, RunError> {
    let mut signals = Signals::install()?;
    let service = tokio::select! {
        started = Service::start(cfg) => started?,
        _ = signals.recv() => {
            tracing::info!("signal received while starting; nothing was consumed: exiting");
            return Ok(RunEnd::SignalWhileStarting);
        }
    };
    let signalled = tokio::select! {
        _ = signals.recv() => { tracing::info!("signal received; shutting down"); true }
        _ = service.finished() => { tracing::error!("the pipeline stopped on its own"); false }
    };
    let summary = service.metrics.clone();
    let stopped = service.stop().await?;
    summary.log_summary();
    tracing::info!(?stopped, "stopped");
    Ok(if signalled { RunEnd::Signalled(stopped) } else { RunEnd::PipelineEnded(stopped) })
}

/// Refuses to start when a setting the WAL's keys or the tables' ordering
/// values depend on changed since they were written (docs/design.md,
/// "Ordering": two orderings are never compared).
pub fn pin_settings(wal: &Wal, cfg: &Config) -> Result<(), crate::wal::WalError> {
    for t in &cfg.tables {
        wal.pin_setting(&format!("order_by:{}", t.final_table), t.order_by().name())?;
    }
    Ok(())
}

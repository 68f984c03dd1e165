//! How landfall's Kafka clients authenticate, for every client it makes
//! (the group consumer, and the short-lived ones of `status`, `check`, dead
//! letter re-reads and commits on shutdown).
//!
//! With `kafka.auth = { method = "properties" }` librdkafka does it all from
//! `kafka.properties`. With `aws-msk-iam`, [`client_config`] adds SASL_SSL
//! and OAUTHBEARER and the client's context answers librdkafka's token
//! refresh requests from [`super::msk_iam`]. librdkafka asks for the first
//! token when the client is created, but only a poll serves that request:
//! [`base_consumer`] polls once before returning, so a client used only for
//! metadata or offsets (which never polls) has its token before it connects.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::OAuthToken;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::ClientContext;

use super::msk_iam::{MskIam, MskIamError, TokenStats};
use crate::config::{KafkaAuth, KafkaConfig};

/// The token source of one client (none unless `kafka.auth` needs one),
/// and the client's latest errors (for `landfall check`, which tells a TLS
/// failure from an authentication failure by them).
#[derive(Clone, Default)]
pub struct ClientAuth {
    iam: Option<Arc<MskIam>>,
    errors: Arc<Mutex<Vec<String>>>,
}

/// Errors a client keeps (the latest).
const KEPT_ERRORS: usize = 16;

impl ClientAuth {
    /// For `cfg`; `stats` counts the tokens (the service's go to `/metrics`).
    pub fn new(cfg: &KafkaConfig, stats: Arc<TokenStats>) -> Result<ClientAuth, MskIamError> {
        let iam = match &cfg.auth {
            KafkaAuth::Properties => None,
            KafkaAuth::AwsMskIam { region, profile } => Some(Arc::new(MskIam::new(region, profile.as_deref(), stats)?)),
        };
        Ok(ClientAuth { iam, errors: Default::default() })
    }

    pub fn msk_iam(&self) -> Option<&MskIam> {
        self.iam.as_deref()
    }

    /// The client's latest errors, oldest first (librdkafka's texts: they
    /// name brokers and reasons, never passwords).
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record_error(&self, error: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() == KEPT_ERRORS {
            errors.remove(0);
        }
        errors.push(error);
    }

    /// librdkafka's token refresh callback.
    pub fn oauth_token(&self) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        match &self.iam {
            Some(iam) => iam.oauth_token(),
            None => Err("SASL/OAUTHBEARER needs kafka.auth = { method = \"aws-msk-iam\" }".into()),
        }
    }
}

impl ClientContext for ClientAuth {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
        self.record_error(format!("{error}: {reason}"));
    }

    fn generate_oauth_token(&self, _: Option<&str>) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        self.oauth_token()
    }
}

impl ConsumerContext for ClientAuth {}

/// The librdkafka configuration landfall uses, from `[kafka]`.
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap_servers)
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", cfg.session_timeout.as_millis().to_string())
        .set("enable.partition.eof", "false")
        // librdkafka prefetches up to 64 MB by default; the bridge keeps only
        // `pipeline.max_inflight_batches` batches in flight anyway, so a
        // smaller read-ahead bounds memory at no cost in throughput.
        // `kafka.properties` may override it.
        .set("queued.max.messages.kbytes", "16384")
        // Once that read-ahead is full, librdkafka postpones the next fetch of
        // a partition by this long (default 1 s): a consumer a little slower
        // than the fetcher then reads at most the read-ahead per backoff, 16
        // MiB/s, whatever it could do (docs/performance.md, "the fetch
        // backoff"). 20 ms lifts that cap far above the bridge.
        .set("fetch.queue.backoff.ms", "20");
    if let KafkaAuth::AwsMskIam { .. } = cfg.auth {
        c.set("security.protocol", "SASL_SSL").set("sasl.mechanism", "OAUTHBEARER");
    }
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot create a Kafka client: {0}. Check kafka.bootstrap_servers and kafka.properties")]
    Create(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Auth(#[from] MskIamError),
}

/// A consumer in the group of `cfg` that is not subscribed to anything
/// (for metadata, offsets and single reads), with its first token served.
/// Blocking while a token is made: call it off the async runtime.
pub fn base_consumer(cfg: &KafkaConfig, stats: Arc<TokenStats>) -> Result<BaseConsumer<ClientAuth>, ClientError> {
    let auth = ClientAuth::new(cfg, stats)?;
    let with_token = auth.msk_iam().is_some();
    let consumer: BaseConsumer<ClientAuth> = client_config(cfg).create_with_context(auth)?;
    if with_token {
        // Serves the refresh request librdkafka queued at creation.
        let _ = consumer.poll(Duration::ZERO);
    }
    Ok(consumer)
}

//! The BigQuery client: authentication, endpoint, and error classification.
//!
//! Production talks to Google's endpoint with a service-account key or
//! application default credentials; `bigquery.endpoint` points the same code
//! at an emulator. Tokens and key contents never appear in logs or errors.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::get_query_results_parameters::GetQueryResultsParameters;
use gcp_bigquery_client::model::query_request::QueryRequest;
use gcp_bigquery_client::model::query_response::QueryResponse;
use gcp_bigquery_client::Client;

use crate::config::{Auth, BigQueryConfig};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read the service-account key file {path}: {message}. Check bigquery.auth.key_file")]
    KeyFile { path: String, message: String },
    #[error("cannot set up application default credentials: {0}. Set GOOGLE_APPLICATION_CREDENTIALS or run on GCP with a service account")]
    Adc(String),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// How a failed request should be handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Retry after a backoff: 429, 5xx, timeouts, connection errors, auth
    /// refresh errors, and errors that need the operator (403, 404) but lose
    /// nothing by waiting.
    Transient(String),
    /// The request itself is invalid (HTTP 400): retrying it unchanged fails again.
    Invalid(String),
}

/// Classifies an error of the BigQuery client.
pub fn classify(e: &BQError) -> Failure {
    match e {
        BQError::ResponseError { error } => {
            let code = error.error.code;
            let msg = format!("HTTP {code}: {}", error.error.message);
            if code == 400 {
                Failure::Invalid(msg)
            } else {
                Failure::Transient(msg)
            }
        }
        BQError::RequestError(r) => {
            let kind = if r.is_timeout() {
                "timeout"
            } else if r.is_connect() {
                "connection error"
            } else if r.is_decode() {
                "unreadable response"
            } else {
                "request error"
            };
            match r.status() {
                Some(s) if s.as_u16() == 400 => Failure::Invalid(format!("HTTP 400 ({kind})")),
                Some(s) => Failure::Transient(format!("HTTP {} ({kind})", s.as_u16())),
                None => Failure::Transient(kind.to_string()),
            }
        }
        BQError::SerializationError(e) => Failure::Invalid(format!("serialization: {e}")),
        // Authentication errors: a token refresh may succeed later. The
        // message of these errors does not contain the key or the token.
        other => Failure::Transient(other.to_string()),
    }
}

/// A fixed token for emulators (`auth = { method = "none" }`).
#[derive(Clone)]
struct NoAuth;

#[async_trait]
impl Authenticator for NoAuth {
    async fn access_token(&self) -> Result<String, BQError> {
        Ok("landfall-emulator".into())
    }
}

/// The BigQuery side of landfall: a client plus where things live.
#[derive(Clone)]
pub struct BigQuery {
    pub client: Arc<Client>,
    pub project: String,
    pub dataset: String,
    pub location: String,
    /// How long one jobs.query call waits for its result (half the request timeout, at most 10 s).
    pub query_wait: Duration,
}

impl BigQuery {
    pub async fn connect(cfg: &BigQueryConfig) -> Result<BigQuery, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(cfg.max_inflight_requests.max(4))
            .build()
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let mut builder = gcp_bigquery_client::client_builder::ClientBuilder::new();
        builder.with_client(http);
        if let Some(endpoint) = &cfg.endpoint {
            builder.with_v2_base_url(endpoint.trim_end_matches('/').to_owned());
        }
        let client = match &cfg.auth {
            Auth::None => builder.build_from_authenticator(Arc::new(NoAuth)).await.map_err(|e| ClientError::Http(redact(&e)))?,
            Auth::ServiceAccountKey { key_file } => {
                let path = key_file.to_string_lossy().into_owned();
                if let Err(e) = std::fs::metadata(key_file) {
                    return Err(ClientError::KeyFile { path, message: e.to_string() });
                }
                builder.build_from_service_account_key_file(&path).await.map_err(|e| ClientError::KeyFile { path, message: redact(&e) })?
            }
            Auth::ApplicationDefault => {
                builder.build_from_application_default_credentials().await.map_err(|e| ClientError::Adc(redact(&e)))?
            }
        };
        Ok(BigQuery {
            client: Arc::new(client),
            project: cfg.project.clone(),
            dataset: cfg.dataset.clone(),
            location: cfg.location.clone(),
            query_wait: (cfg.request_timeout / 2).clamp(Duration::from_millis(500), Duration::from_secs(10)),
        })
    }

    /// Runs one standard-SQL statement and waits for it to finish.
    pub async fn query(&self, sql: &str) -> Result<QueryResponse, BQError> {
        let mut req = QueryRequest::new(sql);
        // Answer within the HTTP timeout; longer queries are polled below.
        req.timeout_ms = Some(self.query_wait.as_millis() as i32);
        req.location = Some(self.location.clone());
        let mut resp = self.client.job().query(&self.project, req).await?;
        while resp.job_complete == Some(false) {
            let Some(job_id) = resp.job_reference.as_ref().and_then(|r| r.job_id.clone()) else { break };
            tokio::time::sleep(Duration::from_millis(200)).await;
            let params = GetQueryResultsParameters { location: Some(self.location.clone()), ..Default::default() };
            let r = self.client.job().get_query_results(&self.project, &job_id, params).await?;
            resp = QueryResponse {
                job_complete: r.job_complete,
                job_reference: r.job_reference,
                rows: r.rows,
                schema: r.schema,
                total_rows: r.total_rows,
                num_dml_affected_rows: r.num_dml_affected_rows,
                errors: r.errors,
                page_token: r.page_token,
                ..resp
            };
        }
        Ok(resp)
    }
}

/// An error's text with anything that looks like a bearer token or key removed.
pub fn redact(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    if s.contains("-----BEGIN") || s.contains("private_key") {
        return "credential error (details withheld: they contain key material)".into();
    }
    s.split_whitespace().map(|w| if w.starts_with("ya29.") || w.len() > 100 { "<redacted>" } else { w }).collect::<Vec<_>>().join(" ")
}

/// Reads a query result cell as a string (BigQuery returns every scalar as a string).
pub fn cell(row: &gcp_bigquery_client::model::table_row::TableRow, i: usize) -> Option<String> {
    let v = row.columns.as_ref()?.get(i)?.value.as_ref()?;
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        assert_eq!(redact(&"token ya29.abcdef rejected"), "token <redacted> rejected");
        assert!(!redact(&"bad key -----BEGIN PRIVATE KEY----- MIIE").contains("MIIE"));
    }
}

//! The BigQuery client: authentication, endpoint, and error classification.
//!
//! Production talks to Google's endpoint with a service-account key or
//! application default credentials; `bigquery.endpoint` points the same code
//! at an emulator. Tokens and key contents never appear in logs or errors.
//!
//! insertAll is sent by [`BigQuery::insert_all_gzipped`] rather than by the
//! crate: gcp-bigquery-client 0.28 turns an error answer whose body is not
//! BigQuery's JSON (a 413 from a front end, an HTML 400 or 502) into a
//! `reqwest` decode error without status or body, so that it could only be
//! retried blindly. [`classify_insert_all`] maps such answers by status.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::error::{BQError, ResponseError};
use gcp_bigquery_client::model::get_query_results_parameters::GetQueryResultsParameters;
use gcp_bigquery_client::model::query_request::QueryRequest;
use gcp_bigquery_client::model::query_response::QueryResponse;
use gcp_bigquery_client::model::table_data_insert_all_response::TableDataInsertAllResponse;
use gcp_bigquery_client::Client;

use crate::config::{Auth, BigQueryConfig};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read the service-account key file {path}: {message}. Check bigquery.auth.key_file")]
    KeyFile { path: String, message: String },
    #[error(
        "the service-account key file {path} is readable by group or others (mode {mode:o}): anyone on this host could act as \
         the service account. Run `chmod 600 {path}` (or pass it as a systemd credential, README \"Deploying\"); to use it \
         anyway set `allow_readable_key_file = true` in bigquery.auth"
    )]
    KeyFileReadable { path: String, mode: u32 },
    #[error("cannot set up application default credentials: {0}. Set GOOGLE_APPLICATION_CREDENTIALS or run on GCP with a service account")]
    Adc(String),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// Refuses a key file that group or others may read (as ssh refuses such
/// private keys), unless `allow`ed: then it is used with a warning.
pub fn key_file_is_private(key_file: &std::path::Path, allow: bool) -> Result<(), ClientError> {
    let path = key_file.to_string_lossy().into_owned();
    let meta = std::fs::metadata(key_file).map_err(|e| ClientError::KeyFile { path: path.clone(), message: e.to_string() })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            if !allow {
                return Err(ClientError::KeyFileReadable { path, mode });
            }
            tracing::warn!(
                path,
                mode = format!("{mode:o}"),
                "the service-account key file is readable by group or others (allowed by allow_readable_key_file)"
            );
        }
    }
    let _ = (meta, allow);
    Ok(())
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
            // 413: the request is too large; halves of it may not be.
            if code == 400 || code == 413 {
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

/// An insertAll that failed.
#[derive(Debug, thiserror::Error)]
pub enum InsertAllError {
    #[error(transparent)]
    Client(#[from] BQError),
    /// An answer that is not BigQuery's JSON: `prefix` is the start of the
    /// body, whitespace collapsed, printable characters only, redacted.
    #[error("HTTP {status} {reason} with a non-JSON body ({content_type}): {prefix:?}")]
    Unreadable { status: u16, reason: &'static str, content_type: String, prefix: String },
}

/// Longest body prefix kept in an [`InsertAllError::Unreadable`].
const BODY_PREFIX_CHARS: usize = 120;

/// Classifies a failed insertAll. Non-JSON answers: 413 and other 4xx are
/// [`Failure::Invalid`] (the request is split until the row at fault is
/// alone, which is then rejected), except the ones that are not about the
/// request (401, 403, 404: they need the operator; 408, 429: wait), which
/// are transient like 5xx and an unreadable 2xx.
pub fn classify_insert_all(e: &InsertAllError) -> Failure {
    match e {
        InsertAllError::Client(e) => classify(e),
        InsertAllError::Unreadable { status, .. } if (400..500).contains(status) && ![401, 403, 404, 408, 429].contains(status) => {
            Failure::Invalid(e.to_string())
        }
        InsertAllError::Unreadable { .. } => Failure::Transient(e.to_string()),
    }
}

/// Interprets an insertAll answer: a success parses as the response, an
/// error as BigQuery's JSON error if it is one, and as
/// [`InsertAllError::Unreadable`] otherwise.
pub fn insert_all_answer(status: u16, content_type: &str, body: &[u8]) -> Result<TableDataInsertAllResponse, InsertAllError> {
    if (200..300).contains(&status) {
        if let Ok(r) = serde_json::from_slice(body) {
            return Ok(r);
        }
    } else if let Ok(error) = serde_json::from_slice::<ResponseError>(body) {
        return Err(BQError::ResponseError { error }.into());
    }
    let reason = reqwest::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    Err(InsertAllError::Unreadable { status, reason, content_type: sanitize(content_type, 60), prefix: sanitize_body(body) })
}

/// The start of a body, safe to log: printable characters, whitespace collapsed, redacted.
fn sanitize_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(4 * BODY_PREFIX_CHARS)]);
    redact(&sanitize(&text, BODY_PREFIX_CHARS))
}

fn sanitize(s: &str, max_chars: usize) -> String {
    let printable: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    printable.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(max_chars).collect()
}

/// The OAuth scope gcp-bigquery-client asks for.
const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";

/// A yup-oauth2 authenticator (service-account key, ADC, or gcloud's
/// authorized user), as gcp-bigquery-client builds it.
#[derive(Clone)]
struct Yup(yup_oauth2::authenticator::DefaultAuthenticator);

#[async_trait]
impl Authenticator for Yup {
    async fn access_token(&self) -> Result<String, BQError> {
        Ok(self.0.token(&[SCOPE]).await?.token().ok_or(BQError::NoToken)?.to_string())
    }
}

/// Application default credentials the way gcp-bigquery-client 0.28 reads
/// them: gcloud's authorized-user file if GOOGLE_APPLICATION_CREDENTIALS (or
/// the default path) holds one, else yup-oauth2's flow (key file or metadata server).
async fn application_default() -> Result<Yup, BQError> {
    let path = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").map(std::path::PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".config/gcloud/application_default_credentials.json"))
    });
    if let Some(contents) = match path {
        Some(p) => tokio::fs::read_to_string(p).await.ok(),
        None => None,
    } {
        let is_user = serde_json::from_str::<serde_json::Value>(&contents).ok().is_some_and(|v| v["type"] == "authorized_user");
        if is_user {
            let secret = serde_json::from_str(&contents)?;
            let auth = yup_oauth2::AuthorizedUserAuthenticator::builder(secret)
                .build()
                .await
                .map_err(BQError::InvalidAuthorizedUserAuthenticator)?;
            return Ok(Yup(auth));
        }
    }
    let opts = yup_oauth2::ApplicationDefaultCredentialsFlowOpts::default();
    let auth = match yup_oauth2::ApplicationDefaultCredentialsAuthenticator::builder(opts).await {
        yup_oauth2::authenticator::ApplicationDefaultCredentialsTypes::InstanceMetadata(a) => a.build().await,
        yup_oauth2::authenticator::ApplicationDefaultCredentialsTypes::ServiceAccount(a) => a.build().await,
    };
    Ok(Yup(auth.map_err(BQError::InvalidApplicationDefaultCredentialsAuthenticator)?))
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

/// `s` percent-encoded for a URL path (identifiers are validated, but a
/// domain-scoped project has a `:`).
pub(super) fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"*-._".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// The BigQuery side of landfall: a client plus where things live.
#[derive(Clone)]
pub struct BigQuery {
    pub client: Arc<Client>,
    /// The HTTP client, authenticator and base URL `client` uses, for insertAll.
    pub(super) http: reqwest::Client,
    pub(super) auth: Arc<dyn Authenticator>,
    pub(super) base_url: String,
    pub project: String,
    pub dataset: String,
    pub location: String,
    /// How long one jobs.query call waits for its result (half the request timeout, at most 10 s).
    pub query_wait: Duration,
    /// When each table's schema last changed, as far as this process knows
    /// (columns it added, or the table's `lastModifiedTime` when it checked).
    schema_changes: Arc<std::sync::Mutex<std::collections::HashMap<String, std::time::SystemTime>>>,
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
        builder.with_client(http.clone());
        let base_url = cfg.endpoint.as_deref().unwrap_or("https://bigquery.googleapis.com/bigquery/v2").trim_end_matches('/').to_owned();
        builder.with_v2_base_url(base_url.clone());
        let auth: Arc<dyn Authenticator> = match &cfg.auth {
            Auth::None => Arc::new(NoAuth),
            Auth::ServiceAccountKey { key_file, allow_readable_key_file } => {
                let path = key_file.to_string_lossy().into_owned();
                key_file_is_private(key_file, *allow_readable_key_file)?;
                let key = yup_oauth2::read_service_account_key(key_file)
                    .await
                    .map_err(|e| ClientError::KeyFile { path: path.clone(), message: redact(&e) })?;
                let auth = yup_oauth2::ServiceAccountAuthenticator::builder(key)
                    .build()
                    .await
                    .map_err(|e| ClientError::KeyFile { path, message: redact(&e) })?;
                Arc::new(Yup(auth))
            }
            Auth::ApplicationDefault => Arc::new(application_default().await.map_err(|e| ClientError::Adc(redact(&e)))?),
        };
        let client = builder.build_from_authenticator(auth.clone()).await.map_err(|e| ClientError::Http(redact(&e)))?;
        Ok(BigQuery {
            client: Arc::new(client),
            http,
            auth,
            base_url,
            project: cfg.project.clone(),
            dataset: cfg.dataset.clone(),
            location: cfg.location.clone(),
            query_wait: (cfg.request_timeout / 2).clamp(Duration::from_millis(500), Duration::from_secs(10)),
            schema_changes: Default::default(),
        })
    }

    /// Notes that `table`'s schema changed at `at` (keeps the latest).
    pub fn schema_changed(&self, table: &str, at: std::time::SystemTime) {
        let mut m = self.schema_changes.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry(table.to_owned()).or_insert(at);
        *e = (*e).max(at);
    }

    /// Whether `table`'s schema changed less than `wait` ago, as far as this
    /// process knows.
    pub fn schema_changed_within(&self, table: &str, wait: Duration) -> bool {
        let m = self.schema_changes.lock().unwrap_or_else(|e| e.into_inner());
        m.get(table).is_some_and(|at| at.elapsed().map_or(true, |d| d < wait))
    }

    /// Sends one gzipped insertAll body, as gcp-bigquery-client's
    /// `insert_all_gzipped` does, keeping the status and the start of the
    /// body of an answer that is not BigQuery's JSON.
    pub async fn insert_all_gzipped(&self, table: &str, gzipped: Vec<u8>) -> Result<TableDataInsertAllResponse, InsertAllError> {
        let enc = path_segment;
        let url =
            format!("{}/projects/{}/datasets/{}/tables/{}/insertAll", self.base_url, enc(&self.project), enc(&self.dataset), enc(table));
        let token = self.auth.access_token().await?;
        let resp = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_ENCODING, "gzip")
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .bearer_auth(token)
            .body(gzipped)
            .send()
            .await
            .map_err(BQError::from)?;
        let status = resp.status().as_u16();
        let content_type = resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let body = resp.bytes().await.map_err(BQError::from)?;
        insert_all_answer(status, &content_type, &body)
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

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_can_read_is_refused_unless_allowed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.json");
        std::fs::write(&key, "{}").unwrap();
        for (mode, refused) in [(0o600, false), (0o400, false), (0o640, true), (0o604, true), (0o644, true)] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            match key_file_is_private(&key, false) {
                Err(ClientError::KeyFileReadable { mode: m, .. }) if refused => assert_eq!(m, mode),
                Ok(()) if !refused => {}
                other => panic!("mode {mode:o}: {other:?}"),
            }
            assert!(key_file_is_private(&key, true).is_ok(), "allowed explicitly: mode {mode:o}");
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let msg = key_file_is_private(&key, false).unwrap_err().to_string();
        assert!(msg.contains("chmod 600") && msg.contains("allow_readable_key_file") && msg.contains("644"), "{msg}");
        assert!(matches!(key_file_is_private(&dir.path().join("nope"), true), Err(ClientError::KeyFile { .. })));
    }

    #[test]
    fn non_json_insert_all_answers_keep_their_status_and_a_short_clean_prefix() {
        let html = b"<html>\r\n<head><title>400 Bad Request</title></head>\n<body>bad \x1b[31m request</body></html>";
        let e = insert_all_answer(400, "text/html", html).unwrap_err();
        let Failure::Invalid(why) = classify_insert_all(&e) else { panic!("{e}") };
        assert!(
            why.contains("HTTP 400 Bad Request") && why.contains("text/html") && why.contains("<title>400 Bad Request</title>"),
            "{why}"
        );
        assert!(!why.contains('\n') && !why.contains('\x1b'), "{why}");
        let long = "x".repeat(10_000);
        let e = insert_all_answer(413, "text/html", long.as_bytes()).unwrap_err();
        let Failure::Invalid(why) = classify_insert_all(&e) else { panic!("{e}") };
        assert!(why.contains("413 Payload Too Large") && why.len() < 300, "{why}");
        for status in [502, 503, 429, 408, 403, 200] {
            let e = insert_all_answer(status, "text/html", b"<html>oops</html>").unwrap_err();
            assert!(matches!(classify_insert_all(&e), Failure::Transient(_)), "{status}: {e}");
        }
    }

    #[test]
    fn json_insert_all_answers_parse_as_before() {
        let ok = insert_all_answer(200, "application/json", br#"{"kind":"k","insertErrors":[{"index":0,"errors":[]}]}"#).unwrap();
        assert_eq!(ok.insert_errors.unwrap().len(), 1);
        let err = br#"{"error":{"code":413,"message":"too big","errors":[],"status":"X"}}"#;
        let e = insert_all_answer(413, "application/json", err).unwrap_err();
        assert_eq!(classify_insert_all(&e), Failure::Invalid("HTTP 413: too big".into()));
        let err = br#"{"error":{"code":503,"message":"down","errors":[]}}"#;
        assert!(matches!(classify_insert_all(&insert_all_answer(503, "", err).unwrap_err()), Failure::Transient(_)));
    }

    #[test]
    fn redaction() {
        assert_eq!(redact(&"token ya29.abcdef rejected"), "token <redacted> rejected");
        assert!(!redact(&"bad key -----BEGIN PRIVATE KEY----- MIIE").contains("MIIE"));
    }
}

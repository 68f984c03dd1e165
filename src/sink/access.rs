//! What the configured identity may do in BigQuery, asked without changing
//! anything (for `landfall check`): a token, the dataset and tables, the
//! IAM permissions on each table (`tables.testIamPermissions`), and whether
//! it may run query jobs (a dry run).

use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::query_request::QueryRequest;

use super::client::{path_segment, redact, BigQuery};

/// The table permissions landfall uses: read the schema, stream rows
/// (insertAll), read rows (the MERGE), change rows (the MERGE into final
/// tables) and add columns (schema evolution).
pub const TABLE_PERMISSIONS: &[&str] =
    &["bigquery.tables.get", "bigquery.tables.getData", "bigquery.tables.updateData", "bigquery.tables.update"];

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The endpoint has no permission check (HTTP 404 or 501 on the call).
    #[error("the endpoint does not offer tables.testIamPermissions (HTTP {0})")]
    NotOffered(u16),
    #[error("HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error("{0}")]
    Request(String),
}

#[derive(serde::Deserialize)]
struct Granted {
    #[serde(default)]
    permissions: Vec<String>,
}

impl BigQuery {
    /// Whether a token can be had (the token itself is dropped, never shown).
    pub async fn check_credentials(&self) -> Result<(), BQError> {
        self.auth.access_token().await.map(drop)
    }

    /// Which of `permissions` the caller holds on `table` (of the dataset).
    pub async fn table_permissions(&self, table: &str, permissions: &[&str]) -> Result<Vec<String>, AccessError> {
        let (p, d, t) = (path_segment(&self.project), path_segment(&self.dataset), path_segment(table));
        let url = format!("{}/projects/{p}/datasets/{d}/tables/{t}:testIamPermissions", self.base_url);
        let token = self.auth.access_token().await.map_err(|e| AccessError::Request(redact(&e)))?;
        let resp = self
            .http
            .post(url)
            .bearer_auth(token)
            .json(&serde_json::json!({ "permissions": permissions }))
            .send()
            .await
            .map_err(|e| AccessError::Request(redact(&e)))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| AccessError::Request(redact(&e)))?;
        match status {
            200 => serde_json::from_slice::<Granted>(&body)
                .map(|g| g.permissions)
                .map_err(|e| AccessError::Request(format!("unreadable answer: {e}"))),
            404 | 501 => Err(AccessError::NotOffered(status)),
            _ => {
                let text = String::from_utf8_lossy(&body);
                let message = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| text.chars().take(200).collect());
                Err(AccessError::Http { status, message: redact(&message) })
            }
        }
    }

    /// A dry run of a trivial query: needs `bigquery.jobs.create` on the
    /// project, as the MERGE does; runs nothing.
    pub async fn dry_run(&self) -> Result<(), BQError> {
        let mut req = QueryRequest::new("SELECT 1");
        req.dry_run = Some(true);
        req.location = Some(self.location.clone());
        self.client.job().query(&self.project, req).await.map(drop)
    }
}

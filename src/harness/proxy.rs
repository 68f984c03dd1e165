//! A fault-injecting HTTP/1.1 reverse proxy for the BigQuery REST API, used by tests
//! and drills. It sits between landfall's `gcp-bigquery-client` and a BigQuery REST
//! emulator and forwards every request (path and query unchanged) unless a fault says
//! otherwise, so a drill can show that the sink stays exactly-once under each failure.
//!
//! Faults (each one-shot from [`FaultProxy::push`], or for every matching request from
//! [`FaultProxy::set_persistent`]) model:
//! - [`Fault::Status`]: BigQuery refusing a call (429 quota, 500/503 backend, 400 ...)
//!   before applying it. Nothing reaches the emulator.
//! - [`Fault::Delay`]: a slow call. With a delay above the client's timeout it models a
//!   timeout whose request *still lands*: the forward runs in its own task, so it reaches
//!   the emulator after the delay even if the client has given up and retried.
//! - [`Fault::Reset`]: the connection dies before the request reached BigQuery.
//! - [`Fault::ForwardThenReset`]: the ambiguous case. BigQuery applied the call but the
//!   response is lost; the client must retry without duplicating.
//! - [`Fault::InvalidRow`]: one bad row in an insertAll; BigQuery rejects it ("invalid")
//!   and every other row of the request ("stopped"), inserting nothing.
//! - [`Fault::RowsBackendError`]: a transient per-row failure of a whole insertAll.
//! - [`Fault::AllStopped`]: every row of an insertAll answered "stopped", none "invalid".
//! - [`Fault::NoSuchField`]: every row refused for naming a column BigQuery's streaming
//!   path does not see (yet), as right after the column was added.
//! - [`Fault::UnusableErrorEntry`]: an insertAll answer whose error entry names no row
//!   of the request (no index, or one out of range), inserting nothing.
//! - [`Fault::RawStatus`]: an answer that is not BigQuery's JSON (a front end's 413
//!   "Request Entity Too Large", an HTML 400 or 502), without forwarding.
//!
//! [`FaultProxy::set_strip_insert_ids`] models an endpoint that never dedups by insertId.
//! [`FaultProxy::set_blackhole`] turns it into a blackhole for insertAll: each request is
//! read whole and answered success (every row accepted, none stored) after a fixed delay,
//! before any fault or inspection, while every other call still goes to the emulator. The
//! benchmark measures the bridge's HTTP path and its tolerance of latency with it
//! (docs/performance.md); no test of landing uses it (rows are dropped).
//! Request bodies are inspected as JSON: a gzip-encoded body (landfall gzips insertAll) is
//! decompressed and forwarded as plain JSON; a non-JSON body is forwarded untouched (it
//! never matches [`Target::Merge`] and is never stripped).
//! A connection is "reset" by failing hyper's service future: hyper then closes the
//! socket without writing any response, and the client sees an incomplete message.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{header, HeaderMap, Request, Response, StatusCode};
use serde_json::{json, Value};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Reply = Result<Response<Full<Bytes>>, BoxError>;

/// Which requests a fault applies to.
#[derive(Clone, Debug)]
pub enum Target {
    /// POST to a path ending in `/insertAll` (tabledata.insertAll).
    InsertAll,
    /// POST to a path ending in `/queries` (jobs.query), MERGE statements included.
    Query,
    /// A [`Target::Query`] whose body's `query` starts (after whitespace) with `MERGE`.
    Merge,
    /// Every request.
    Any,
}

#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this HTTP status and a BigQuery-style JSON error body
    /// `{"error":{"code","message","errors":[{"reason","message"}],"status"}}`, without forwarding.
    Status { target: Target, code: u16, reason: String, message: String },
    /// Wait this long, then forward (use a delay longer than the client's request timeout
    /// to model a timeout; the forward happens even if the client has hung up).
    Delay { target: Target, by: Duration },
    /// Close the connection without any response, without forwarding.
    Reset { target: Target },
    /// Forward the request (BigQuery applies it), then close the connection without the response.
    ForwardThenReset { target: Target },
    /// insertAll only: do not forward; answer 200 with insertErrors where row `invalid_index`
    /// has reason "invalid" and every other row has reason "stopped". An out-of-range index
    /// leaves every row "stopped".
    InvalidRow { invalid_index: usize },
    /// insertAll only: do not forward; answer 200 with every row failing with "backendError".
    RowsBackendError,
    /// insertAll only: do not forward; answer 200 with every row failing with "stopped".
    AllStopped,
    /// insertAll only: do not forward; answer 200 with every row refused as BigQuery
    /// refuses a row naming a column its streaming path does not know (yet):
    /// reason "invalid", message "no such field: <field>.".
    NoSuchField { field: String },
    /// insertAll only: do not forward; answer 200 with a single insertErrors entry
    /// (reason "invalid") whose `index` is this one, or absent when `None`.
    UnusableErrorEntry { index: Option<i64> },
    /// Answer with this status, `Content-Type` and body verbatim, without forwarding.
    RawStatus { target: Target, code: u16, content_type: String, body: String },
}

impl Fault {
    fn applies_to(&self, kind: &Kind) -> bool {
        let target = match self {
            Fault::Status { target, .. }
            | Fault::Delay { target, .. }
            | Fault::Reset { target }
            | Fault::ForwardThenReset { target }
            | Fault::RawStatus { target, .. } => target,
            Fault::InvalidRow { .. }
            | Fault::RowsBackendError
            | Fault::AllStopped
            | Fault::NoSuchField { .. }
            | Fault::UnusableErrorEntry { .. } => &Target::InsertAll,
        };
        match target {
            Target::InsertAll => kind.insert_all,
            Target::Query => kind.query,
            Target::Merge => kind.merge,
            Target::Any => true,
        }
    }
}

/// A snapshot of the proxy's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    pub requests: u64,
    pub insert_all_requests: u64,
    /// jobs.query requests, MERGE included.
    pub query_requests: u64,
    pub faults_injected: u64,
    /// Rows whose insertId was removed before forwarding.
    pub insert_ids_stripped: u64,
    /// insertAll requests the blackhole answered, and their body bytes (as sent).
    pub blackholed_requests: u64,
    pub blackholed_bytes: u64,
}

struct Kind {
    insert_all: bool,
    query: bool,
    merge: bool,
}

struct Inner {
    upstream: String,
    client: reqwest::Client,
    queue: Mutex<VecDeque<Fault>>,
    persistent: Mutex<Option<Fault>>,
    strip_insert_ids: AtomicBool,
    /// Answer insertAll without forwarding, after this delay (`None`: off).
    blackhole: Mutex<Option<Duration>>,
    blackholed_requests: AtomicU64,
    blackholed_bytes: AtomicU64,
    requests: AtomicU64,
    insert_all_requests: AtomicU64,
    query_requests: AtomicU64,
    faults_injected: AtomicU64,
    insert_ids_stripped: AtomicU64,
}

/// The running proxy. Dropping it stops the listener and its open connections.
pub struct FaultProxy {
    addr: SocketAddr,
    inner: Arc<Inner>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1:0 and forwards every request to `upstream_base`
    /// (e.g. "http://127.0.0.1:43000"), path and query unchanged.
    pub async fn start(upstream_base: &str) -> std::io::Result<FaultProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let client = reqwest::Client::builder().no_proxy().build().map_err(std::io::Error::other)?;
        let inner = Arc::new(Inner {
            upstream: upstream_base.trim_end_matches('/').to_string(),
            client,
            queue: Mutex::new(VecDeque::new()),
            persistent: Mutex::new(None),
            strip_insert_ids: AtomicBool::new(false),
            blackhole: Mutex::new(None),
            blackholed_requests: AtomicU64::new(0),
            blackholed_bytes: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            insert_all_requests: AtomicU64::new(0),
            query_requests: AtomicU64::new(0),
            faults_injected: AtomicU64::new(0),
            insert_ids_stripped: AtomicU64::new(0),
        });
        let shared = inner.clone();
        let accept_task = tokio::spawn(async move {
            // Dropping the JoinSet (when this task is aborted) aborts every connection task.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "fault proxy: accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                while conns.try_join_next().is_some() {}
                let _ = stream.set_nodelay(true);
                let inner = shared.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(inner.clone(), req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "fault proxy: connection closed");
                    }
                });
            }
        });
        Ok(FaultProxy { addr, inner, accept_task })
    }

    /// Base URL for gcp-bigquery-client: "http://127.0.0.1:PORT/bigquery/v2".
    pub fn endpoint(&self) -> String {
        format!("http://{}/bigquery/v2", self.addr)
    }

    /// Queues a one-shot fault for the next request matching its target. Queued faults
    /// are taken in FIFO order (the oldest one matching a request wins) and take
    /// precedence over the persistent fault.
    pub fn push(&self, fault: Fault) {
        lock(&self.inner.queue).push_back(fault);
    }

    /// Applies `fault` to every matching request until cleared with `None`.
    pub fn set_persistent(&self, fault: Option<Fault>) {
        *lock(&self.inner.persistent) = fault;
    }

    /// When on, `insertId` is removed from every row of every forwarded insertAll body.
    pub fn set_strip_insert_ids(&self, on: bool) {
        self.inner.strip_insert_ids.store(on, Relaxed);
    }

    /// `Some(delay)`: every insertAll is answered success after `delay`
    /// without reaching the emulator (rows are dropped); `None`: off.
    pub fn set_blackhole(&self, delay: Option<Duration>) {
        *lock(&self.inner.blackhole) = delay;
    }

    pub fn stats(&self) -> ProxyStats {
        let i = &self.inner;
        ProxyStats {
            requests: i.requests.load(Relaxed),
            insert_all_requests: i.insert_all_requests.load(Relaxed),
            query_requests: i.query_requests.load(Relaxed),
            faults_injected: i.faults_injected.load(Relaxed),
            insert_ids_stripped: i.insert_ids_stripped.load(Relaxed),
            blackholed_requests: i.blackholed_requests.load(Relaxed),
            blackholed_bytes: i.blackholed_bytes.load(Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Reply {
    let (mut parts, body) = req.into_parts();
    let mut body = body.collect().await?.to_bytes();
    let blackhole = *lock(&inner.blackhole);
    if let Some(delay) = blackhole.filter(|_| parts.method == hyper::Method::POST && parts.uri.path().ends_with("/insertAll")) {
        inner.blackholed_requests.fetch_add(1, Relaxed);
        inner.blackholed_bytes.fetch_add(body.len() as u64, Relaxed);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        return Ok(json_response(StatusCode::OK, &json!({"kind": "bigquery#tableDataInsertAllResponse"})));
    }
    let gzipped = parts.headers.get(header::CONTENT_ENCODING).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    if gzipped {
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain)?;
        body = Bytes::from(plain);
        parts.headers.remove(header::CONTENT_ENCODING);
        parts.headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    }
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let post = parts.method == hyper::Method::POST;
    let path = parts.uri.path();
    let query = post && path.ends_with("/queries");
    let merge = query
        && json
            .as_ref()
            .and_then(|v| v.get("query"))
            .and_then(Value::as_str)
            .is_some_and(|q| q.trim_start().get(..5).is_some_and(|head| head.eq_ignore_ascii_case("MERGE")));
    let kind = Kind { insert_all: post && path.ends_with("/insertAll"), query, merge };
    inner.requests.fetch_add(1, Relaxed);
    if kind.insert_all {
        inner.insert_all_requests.fetch_add(1, Relaxed);
    }
    if kind.query {
        inner.query_requests.fetch_add(1, Relaxed);
    }

    let fault = {
        let mut queue = lock(&inner.queue);
        match queue.iter().position(|f| f.applies_to(&kind)) {
            Some(i) => queue.remove(i),
            None => lock(&inner.persistent).clone().filter(|f| f.applies_to(&kind)),
        }
    };
    let rows = json.as_ref().and_then(|v| v.get("rows")).and_then(Value::as_array).map(Vec::len);
    let Some(fault) = fault else {
        return forward(&inner, parts, body, &kind).await;
    };
    if matches!(fault, Fault::InvalidRow { .. } | Fault::RowsBackendError | Fault::AllStopped | Fault::NoSuchField { .. }) && rows.is_none()
    {
        tracing::warn!("fault proxy: insertAll body has no rows array; forwarding instead");
        return forward(&inner, parts, body, &kind).await;
    }
    inner.faults_injected.fetch_add(1, Relaxed);
    tracing::info!(?fault, path, "fault proxy: injecting");
    match fault {
        Fault::Status { code, reason, message, .. } => Ok(error_response(code, &reason, &message)),
        Fault::Reset { .. } => Err("fault proxy: injected connection reset".into()),
        Fault::ForwardThenReset { .. } => {
            let upstream = forward(&inner, parts, body, &kind).await;
            tracing::info!(ok = upstream.is_ok(), "fault proxy: forwarded, now dropping the response");
            Err("fault proxy: injected reset after forwarding".into())
        }
        Fault::Delay { by, .. } => {
            // Own task: the request still reaches upstream if the client hangs up meanwhile.
            let task = tokio::spawn(async move {
                tokio::time::sleep(by).await;
                forward(&inner, parts, body, &kind).await
            });
            task.await?
        }
        Fault::InvalidRow { invalid_index } => {
            Ok(insert_errors(rows.unwrap_or(0), |i| if i == invalid_index { ("invalid", "injected invalid row") } else { ("stopped", "") }))
        }
        Fault::RowsBackendError => Ok(insert_errors(rows.unwrap_or(0), |_| ("backendError", "injected backend error"))),
        Fault::AllStopped => Ok(insert_errors(rows.unwrap_or(0), |_| ("stopped", ""))),
        Fault::NoSuchField { field } => {
            let errors: Vec<Value> = (0..rows.unwrap_or(0))
                .map(|i| json!({"index": i, "errors": [{"reason": "invalid", "location": field, "debugInfo": "", "message": format!("no such field: {field}.")}]}))
                .collect();
            Ok(json_response(StatusCode::OK, &json!({"kind": "bigquery#tableDataInsertAllResponse", "insertErrors": errors})))
        }
        Fault::UnusableErrorEntry { index } => {
            let mut entry = json!({"errors": [{"reason": "invalid", "location": "", "message": "injected unusable error entry"}]});
            if let Some(i) = index {
                entry["index"] = json!(i);
            }
            Ok(json_response(StatusCode::OK, &json!({"kind": "bigquery#tableDataInsertAllResponse", "insertErrors": [entry]})))
        }
        Fault::RawStatus { code, content_type, body, .. } => {
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if let Ok(v) = header::HeaderValue::from_str(&content_type) {
                resp.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            Ok(resp)
        }
    }
}

async fn forward(inner: &Inner, parts: hyper::http::request::Parts, body: Bytes, kind: &Kind) -> Reply {
    let mut body = body;
    if kind.insert_all && inner.strip_insert_ids.load(Relaxed) {
        if let Ok(mut v) = serde_json::from_slice::<Value>(&body) {
            let mut stripped = 0;
            for row in v.get_mut("rows").and_then(Value::as_array_mut).into_iter().flatten() {
                if row.as_object_mut().and_then(|r| r.remove("insertId")).is_some() {
                    stripped += 1;
                }
            }
            if stripped > 0 {
                inner.insert_ids_stripped.fetch_add(stripped, Relaxed);
                body = Bytes::from(serde_json::to_vec(&v)?);
            }
        }
    }
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{}", inner.upstream, path_and_query);
    let headers = copy_headers(&parts.headers, &[header::HOST, header::CONTENT_LENGTH]);
    let sent = inner.client.request(parts.method, &url).headers(headers).body(body).send().await;
    let resp = match sent {
        Ok(resp) => resp,
        Err(e) => {
            tracing::warn!(error = %e, %url, "fault proxy: upstream unreachable");
            return Ok(error_response(502, "backendError", &format!("fault proxy: upstream: {e}")));
        }
    };
    let status = resp.status();
    let headers = copy_headers(resp.headers(), &[header::CONTENT_LENGTH]);
    let bytes = resp.bytes().await?;
    let mut out = Response::new(Full::new(bytes));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(out)
}

/// Copies headers, dropping hop-by-hop ones and `extra`.
fn copy_headers(from: &HeaderMap, extra: &[header::HeaderName]) -> HeaderMap {
    let hop = [header::CONNECTION, header::TRANSFER_ENCODING, header::TE, header::TRAILER, header::UPGRADE];
    let mut out = HeaderMap::new();
    for (name, value) in from {
        if !hop.contains(name) && !extra.contains(name) && name.as_str() != "keep-alive" {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json; charset=UTF-8"));
    resp
}

fn error_response(code: u16, reason: &str, message: &str) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let grpc = match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        501 => "NOT_IMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    };
    let body = json!({"error": {
        "code": status.as_u16(),
        "message": message,
        "errors": [{"message": message, "domain": "global", "reason": reason}],
        "status": grpc,
    }});
    json_response(status, &body)
}

fn insert_errors(rows: usize, per_row: impl Fn(usize) -> (&'static str, &'static str)) -> Response<Full<Bytes>> {
    let errors: Vec<Value> = (0..rows)
        .map(|i| {
            let (reason, message) = per_row(i);
            json!({"index": i, "errors": [{"reason": reason, "location": "", "debugInfo": "", "message": message}]})
        })
        .collect();
    json_response(StatusCode::OK, &json!({"kind": "bigquery#tableDataInsertAllResponse", "insertErrors": errors}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    type Seen = Arc<Mutex<Vec<(String, Value)>>>;
    const INSERT: &str = "/bigquery/v2/projects/p/datasets/d/tables/t/insertAll";
    const QUERIES: &str = "/bigquery/v2/projects/p/queries";

    /// An upstream that records (path+query, JSON body) and answers a canned insertAll response.
    async fn upstream() -> (String, Seen) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen: Seen = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let record = record.clone();
                        async move {
                            let pq = req.uri().path_and_query().unwrap().to_string();
                            let body = req.into_body().collect().await?.to_bytes();
                            let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            record.lock().unwrap().push((pq, v));
                            let canned = json!({"kind": "bigquery#tableDataInsertAllResponse"});
                            Ok::<_, hyper::Error>(json_response(StatusCode::OK, &canned))
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                });
            }
        });
        (base, seen)
    }

    async fn setup() -> (FaultProxy, Seen, String, reqwest::Client) {
        let (base, seen) = upstream().await;
        let proxy = FaultProxy::start(&base).await.unwrap();
        let origin = proxy.endpoint().trim_end_matches("/bigquery/v2").to_string();
        (proxy, seen, origin, reqwest::Client::builder().no_proxy().build().unwrap())
    }

    fn rows3() -> Value {
        json!({"rows": [{"insertId": "a", "json": {"x": 1}}, {"insertId": "b", "json": {"x": 2}},
                        {"insertId": "c", "json": {"x": 3}}]})
    }

    async fn post(c: &reqwest::Client, url: String, body: &Value) -> reqwest::Result<(u16, Value)> {
        let resp = c.post(url).json(body).send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await?))
    }

    #[tokio::test]
    async fn the_blackhole_answers_insert_all_itself_after_its_delay_and_forwards_the_rest() {
        let (proxy, seen, origin, c) = setup().await;
        proxy.set_blackhole(Some(Duration::from_millis(150)));
        let started = std::time::Instant::now();
        let (code, body) = post(&c, format!("{origin}{INSERT}"), &rows3()).await.unwrap();
        assert_eq!((code, body["kind"].as_str()), (200, Some("bigquery#tableDataInsertAllResponse")));
        assert!(body.get("insertErrors").is_none(), "{body}");
        assert!(started.elapsed() >= Duration::from_millis(150), "answered before the delay");
        assert!(seen.lock().unwrap().is_empty(), "the blackhole forwarded an insertAll");
        // Everything else still reaches the upstream.
        let (code, _) = post(&c, format!("{origin}/bigquery/v2/projects/p/queries"), &json!({"query": "SELECT 1"})).await.unwrap();
        assert_eq!(code, 200);
        assert_eq!(seen.lock().unwrap().len(), 1);
        let stats = proxy.stats();
        assert_eq!(stats.blackholed_requests, 1);
        assert_eq!(stats.blackholed_bytes, serde_json::to_vec(&rows3()).unwrap().len() as u64);
        proxy.set_blackhole(None);
        post(&c, format!("{origin}{INSERT}"), &rows3()).await.unwrap();
        assert_eq!(seen.lock().unwrap().len(), 2, "off again: forwarded");
    }

    #[tokio::test]
    async fn forwards_and_status_fault_is_one_shot() {
        let (proxy, seen, origin, c) = setup().await;
        let (code, body) = post(&c, format!("{origin}{INSERT}?a=1"), &rows3()).await.unwrap();
        assert_eq!((code, body["kind"].as_str()), (200, Some("bigquery#tableDataInsertAllResponse")));
        assert_eq!(seen.lock().unwrap()[0], (format!("{INSERT}?a=1"), rows3()));

        let target = Target::InsertAll;
        proxy.push(Fault::Status { target, code: 503, reason: "backendError".into(), message: "down".into() });
        let (code, body) = post(&c, format!("{origin}{INSERT}"), &rows3()).await.unwrap();
        assert_eq!((code, body["error"]["errors"][0]["reason"].as_str()), (503, Some("backendError")));
        assert_eq!(body["error"]["status"], "UNAVAILABLE");
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert_eq!(post(&c, format!("{origin}{INSERT}"), &rows3()).await.unwrap().0, 200);
        assert_eq!(seen.lock().unwrap().len(), 2);
        let stats = proxy.stats();
        assert_eq!((stats.requests, stats.insert_all_requests, stats.faults_injected), (3, 3, 1));
    }

    #[tokio::test]
    async fn reset_drops_connection_without_forwarding() {
        let (proxy, seen, origin, c) = setup().await;
        proxy.push(Fault::Reset { target: Target::Any });
        let err = post(&c, format!("{origin}{INSERT}"), &rows3()).await.unwrap_err();
        assert!(err.is_request() && err.status().is_none(), "{err:?}");
        assert!(seen.lock().unwrap().is_empty());
        assert_eq!(post(&c, format!("{origin}{INSERT}"), &rows3()).await.unwrap().0, 200);
    }

    #[tokio::test]
    async fn forward_then_reset_reaches_upstream_but_client_errors() {
        let (proxy, seen, origin, c) = setup().await;
        proxy.push(Fault::ForwardThenReset { target: Target::InsertAll });
        let err = post(&c, format!("{origin}{INSERT}"), &rows3()).await.unwrap_err();
        assert!(err.is_request() && err.status().is_none(), "{err:?}");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn invalid_row_and_backend_error_answer_without_forwarding() {
        let (proxy, seen, origin, c) = setup().await;
        proxy.push(Fault::InvalidRow { invalid_index: 1 });
        proxy.push(Fault::RowsBackendError);
        let reasons = |body: &Value| -> Vec<String> {
            let errs = body["insertErrors"].as_array().unwrap();
            errs.iter().map(|e| e["errors"][0]["reason"].as_str().unwrap().to_string()).collect()
        };
        let (code, body) = post(&c, format!("{origin}{INSERT}"), &rows3()).await.unwrap();
        assert_eq!((code, reasons(&body)), (200, vec!["stopped".into(), "invalid".into(), "stopped".into()]));
        assert_eq!(body["insertErrors"][1]["index"], 1);
        let (_, body) = post(&c, format!("{origin}{INSERT}"), &rows3()).await.unwrap();
        assert_eq!(reasons(&body), vec!["backendError"; 3]);
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn all_stopped_unusable_entry_and_raw_status_answer_without_forwarding() {
        let (proxy, seen, origin, c) = setup().await;
        proxy.push(Fault::AllStopped);
        proxy.push(Fault::UnusableErrorEntry { index: None });
        proxy.push(Fault::UnusableErrorEntry { index: Some(7) });
        let html = "<html><body>413 Request Entity Too Large</body></html>";
        proxy.push(Fault::RawStatus { target: Target::InsertAll, code: 413, content_type: "text/html".into(), body: html.into() });
        let (_, body) = post(&c, format!("{origin}{INSERT}"), &rows3()).await.unwrap();
        let errs = body["insertErrors"].as_array().unwrap();
        assert!(errs.len() == 3 && errs.iter().all(|e| e["errors"][0]["reason"] == "stopped"), "{body}");
        let (_, body) = post(&c, format!("{origin}{INSERT}"), &rows3()).await.unwrap();
        assert!(body["insertErrors"][0].get("index").is_none() && body["insertErrors"].as_array().unwrap().len() == 1, "{body}");
        let (_, body) = post(&c, format!("{origin}{INSERT}"), &rows3()).await.unwrap();
        assert_eq!(body["insertErrors"][0]["index"], 7);
        let resp = c.post(format!("{origin}{INSERT}")).json(&rows3()).send().await.unwrap();
        assert_eq!((resp.status().as_u16(), resp.headers()[header::CONTENT_TYPE].to_str().unwrap().to_owned()), (413, "text/html".into()));
        assert_eq!(resp.text().await.unwrap(), html);
        assert!(seen.lock().unwrap().is_empty());
        assert_eq!(proxy.stats().faults_injected, 4);
    }

    #[tokio::test]
    async fn strips_insert_ids() {
        let (proxy, seen, origin, c) = setup().await;
        proxy.set_strip_insert_ids(true);
        post(&c, format!("{origin}{INSERT}"), &rows3()).await.unwrap();
        let forwarded = seen.lock().unwrap()[0].1.clone();
        let rows = forwarded["rows"].as_array().unwrap();
        assert!(rows.iter().all(|r| r.get("insertId").is_none() && r.get("json").is_some()));
        assert_eq!(proxy.stats().insert_ids_stripped, 3);
    }

    #[tokio::test]
    async fn merge_target_matches_only_merge_queries_and_persistent_applies_until_cleared() {
        let (proxy, seen, origin, c) = setup().await;
        let fault = Fault::Status { target: Target::Merge, code: 500, reason: "x".into(), message: "m".into() };
        proxy.set_persistent(Some(fault));
        let select = json!({"query": "SELECT 1"});
        let merge = json!({"query": "\n  merge INTO t USING s ON true WHEN MATCHED THEN DELETE"});
        assert_eq!(post(&c, format!("{origin}{QUERIES}"), &select).await.unwrap().0, 200);
        assert_eq!(post(&c, format!("{origin}{INSERT}"), &rows3()).await.unwrap().0, 200);
        assert_eq!(post(&c, format!("{origin}{QUERIES}"), &merge).await.unwrap().0, 500);
        assert_eq!(post(&c, format!("{origin}{QUERIES}"), &merge).await.unwrap().0, 500);
        proxy.set_persistent(None);
        assert_eq!(post(&c, format!("{origin}{QUERIES}"), &merge).await.unwrap().0, 200);
        assert_eq!(seen.lock().unwrap().len(), 3);
        let stats = proxy.stats();
        assert_eq!((stats.query_requests, stats.insert_all_requests, stats.faults_injected), (4, 1, 2));
    }

    #[tokio::test]
    async fn delay_delays_then_forwards() {
        let (proxy, seen, origin, c) = setup().await;
        proxy.push(Fault::Delay { target: Target::Query, by: Duration::from_millis(300) });
        let start = Instant::now();
        assert_eq!(post(&c, format!("{origin}{QUERIES}"), &json!({"query": "SELECT 1"})).await.unwrap().0, 200);
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}

//! `veil proxy`: the KServe v2 REST API on the client's own machine, for clients that know nothing of Veil.
//!
//! `tritonclient`, KServe's SDK, `curl` or any HTTP library talk plain KServe v2 to this proxy on
//! loopback; the proxy verifies the enclave, seals every request before it leaves the process, and opens
//! and checks every answer before handing it back. The clients change nothing but the URL.
//!
//! Two modes, as for `veil infer`:
//!
//! - **Attested-key** (a client policy): every route travels inside Oblivious HTTP
//!   ([`crate::oblivious::ObliviousClient`]) to a key that a verified attestation document committed to.
//!   The verification is cached until the policy's age or the document's certificate runs out; when the
//!   relay says a request did not decapsulate (HTTP 422: the enclave's keys changed), the proxy verifies
//!   afresh and, if the key configuration is a new one, sends the request again, once. Answers for a model
//!   must name the digest the policy lists for it.
//! - **KMS envelope** (a KMS key): inference requests are sealed under KMS data keys for the model's
//!   digest (from the policy, or from the enclave's verified attestation document at start-up); the other
//!   routes are the parent's (unauthenticated, and carry no client data).
//!
//! Nothing is forwarded for a model the policy does not list, or (attested-key mode) while the enclave
//! fails verification: the client gets a v2 error (`{"error": "..."}`) with 502 (the enclave failed a
//! check, which the message names, or its answer did not open) or 503 (the server could not be reached).
//! In KMS envelope mode the policy is checked once, at start, and KMS's key policy binds each request.
//! Inference that fails in a way that may succeed again (the remote unreachable or restarting: 503, 429,
//! a connection closed before an answer) is retried under the client's [`crate::RetryPolicy`], each
//! attempt sealed or encapsulated afresh ([`crate::retry`]); health and metadata routes are not.
//! On loopback, requests a web page could make (an `Origin`, or a `Host` that is not this proxy) are
//! refused. Request and response bodies are never logged.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use veil_protocol::envelope::{AnswerReceipt, ModelRef, Outcome, RequestMeta};
use veil_protocol::v2::HEADER_LENGTH_HEADER;

use crate::evidence::ReceiptSink;
use crate::kms::{OpenedAnswer, Session};
use crate::oblivious::{MODEL_DIGEST_HEADER, ObliviousClient, ObliviousError};
use crate::retry::{Retried, Retries, Verdict};
use crate::{Client, ClientError};

mod route;

pub use route::Route;

/// Largest request body accepted by default: 8 MiB, the parent's own default limit (a larger body would
/// be sealed and sent only for the parent to refuse it).
pub const DEFAULT_MAX_BODY: usize = 8 << 20;

/// How requests are sealed.
#[allow(missing_debug_implementations)] // a KMS session prints nothing useful; `Proxy`'s Debug names the mode
pub enum Mode {
    /// Attested-key mode: Oblivious HTTP to the verified gateway.
    Attested(ObliviousClient),
    /// KMS envelope mode: a KMS session, and the digest each model must have.
    Kms { client: Client, session: tokio::sync::Mutex<Session>, models: BTreeMap<String, [u8; 48]> },
}

/// The proxy's state: one remote, one mode.
pub struct Proxy {
    mode: Mode,
    max_body: usize,
    /// Where each answer's evidence bundle goes (`--receipts DIR`).
    receipts: Option<Arc<ReceiptSink>>,
    /// The port it listens on, when only loopback clients are served: requests must name a loopback
    /// host and that port (against DNS rebinding), and carry no `Origin` (no browser page may use it).
    loopback_port: Option<u16>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match &self.mode {
            Mode::Attested(_) => "attested-key",
            Mode::Kms { .. } => "kms",
        };
        f.debug_struct("Proxy").field("mode", &mode).field("max_body", &self.max_body).finish()
    }
}

/// A v2 error response: `{"error": message}` with `status`, as KServe and Triton servers answer.
pub fn v2_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

impl Proxy {
    /// A proxy in `mode`, accepting request bodies up to `max_body` bytes. With `loopback_port`, only
    /// requests addressed to a loopback host on that port are served, and none from a web page.
    pub fn new(mode: Mode, max_body: usize, loopback_port: Option<u16>) -> Proxy {
        Proxy { mode, max_body, loopback_port, receipts: None }
    }

    /// Keeps each answer's evidence bundle in `sink`'s directory.
    pub fn with_receipts(mut self, sink: Arc<ReceiptSink>) -> Proxy {
        self.receipts = Some(sink);
        self
    }

    /// Refuses what a web page could send: any request with an `Origin`, and (DNS rebinding) any whose
    /// `Host` is not a loopback address on the proxy's port.
    fn refuse_browsers(&self, headers: &HeaderMap) -> Option<Response> {
        let port = self.loopback_port?;
        if headers.contains_key(header::ORIGIN) {
            return Some(v2_error(
                StatusCode::FORBIDDEN,
                "veil proxy: requests from web pages (with an Origin header) are refused; KServe clients send none",
            ));
        }
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        let ok = ["127.0.0.1", "localhost", "[::1]"].iter().any(|name| host == format!("{name}:{port}"));
        if !ok {
            let shown: String = host.chars().take(64).collect();
            return Some(v2_error(
                StatusCode::FORBIDDEN,
                &format!(
                    "veil proxy: Host {shown:?} is not this proxy (127.0.0.1:{port}, localhost:{port} or [::1]:{port})"
                ),
            ));
        }
        None
    }

    /// The router: every path goes to [`Proxy::handle`].
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new().fallback(handle).with_state(self)
    }

    async fn answer(&self, method: Method, uri: Uri, headers: HeaderMap, body: Body) -> (Option<Route>, Response) {
        if let Some(refused) = self.refuse_browsers(&headers) {
            return (None, refused);
        }
        let (route, version) = match Route::of(&method, uri.path()) {
            Ok(r) => r,
            Err((status, m)) => return (None, v2_error(status, &m)),
        };
        if let Some(m) = route.model()
            && !m.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            let m = "model names are letters, digits, '.', '_' and '-'";
            return (Some(route), v2_error(StatusCode::BAD_REQUEST, m));
        }
        if matches!(route, Route::Infer { .. }) {
            let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase);
            if let Some(ct) = ct
                && !ct.starts_with("application/json")
                && !ct.starts_with("application/octet-stream")
            {
                let shown: String = ct.chars().take(64).collect();
                let m = format!(
                    "content type {shown:?} is not served: send the v2 request as application/json, or with \
                     Inference-Header-Content-Length as application/octet-stream"
                );
                return (Some(route), v2_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, &m));
            }
        }
        if headers.get(header::CONTENT_ENCODING).is_some_and(|v| v.as_bytes() != b"identity") {
            let m = "compressed request bodies are not accepted: send the request uncompressed (tritonclient: no \
                     request_compression_algorithm)";
            return (Some(route), v2_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, m));
        }
        let body = match http_body_util::Limited::new(body, self.max_body).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                let m = format!("the request body is larger than the proxy's limit of {} bytes", self.max_body);
                return (Some(route), v2_error(StatusCode::PAYLOAD_TOO_LARGE, &m));
            }
            Err(_) => return (Some(route), v2_error(StatusCode::BAD_REQUEST, "the request body could not be read")),
        };
        let keep = self.receipts.as_ref();
        let response = match &self.mode {
            Mode::Attested(oblivious) => {
                attested(oblivious, &method, &route, version.as_deref(), &headers, body, keep).await
            }
            Mode::Kms { client, session, models } => {
                kms(client, session, models, &route, version.as_deref(), &headers, body, keep).await
            }
        };
        (Some(route), response)
    }
}

async fn handle(State(proxy): State<Arc<Proxy>>, method: Method, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let shown_method = method.clone();
    let (route, response) = proxy.answer(method, uri, headers, body).await;
    // Never the bodies: the route, the model's name, the status and the time.
    tracing::info!(
        method = %shown_method,
        route = route.as_ref().map_or("unknown", Route::label),
        model = route.as_ref().and_then(Route::model).unwrap_or(""),
        status = response.status().as_u16(),
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// The request headers that travel (inside the seal): what the body is, and nothing that identifies the
/// client's software or machine.
fn forwarded(headers: &HeaderMap) -> Vec<(&'static str, &[u8])> {
    let mut out = Vec::with_capacity(2);
    if let Some(v) = headers.get(header::CONTENT_TYPE) {
        out.push(("content-type", v.as_bytes()));
    }
    if let Some(v) = headers.get(HEADER_LENGTH_HEADER) {
        out.push((HEADER_LENGTH_HEADER, v.as_bytes()));
    }
    out
}

fn not_in_policy(model: &str, listed: &BTreeMap<String, [u8; 48]>) -> Response {
    let names: Vec<&str> = listed.keys().map(String::as_str).collect();
    let shown: String = model.chars().take(64).collect();
    v2_error(
        StatusCode::NOT_FOUND,
        &format!(
            "veil proxy: model {shown:?} is not in the proxy's policy (it lists: {}); nothing was forwarded",
            if names.is_empty() { "none".to_owned() } else { names.join(", ") }
        ),
    )
}

/// An answer (status, type, binary header length, digest) as the client receives it.
fn v2_answer(
    status: u16,
    content_type: Option<&[u8]>,
    header_length: Option<&[u8]>,
    digest: Option<&[u8]>,
    body: Vec<u8>,
) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let h = response.headers_mut();
    for (name, value) in
        [("content-type", content_type), (HEADER_LENGTH_HEADER, header_length), (MODEL_DIGEST_HEADER, digest)]
    {
        if let Some(v) = value.and_then(|v| HeaderValue::from_bytes(v).ok()) {
            h.insert(name, v);
        }
    }
    response
}

/// Keeps an answer's receipt in the background (the answer does not wait for its bundle).
fn keep_receipt(sink: Option<&Arc<ReceiptSink>>, client: &Client, receipt: Option<AnswerReceipt>) {
    let (Some(sink), Some(receipt)) = (sink, receipt) else { return };
    let (sink, client) = (Arc::clone(sink), client.clone());
    tokio::spawn(async move {
        if let Err(e) = sink.keep(&client, &receipt).await {
            tracing::warn!(error = %e, "veil proxy: an answer's evidence was not kept");
        }
    });
}

/// Attested-key mode: the whole request inside OHTTP.
async fn attested(
    oblivious: &ObliviousClient,
    method: &Method,
    route: &Route,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
    keep: Option<&Arc<ReceiptSink>>,
) -> Response {
    if let Some(v) = version
        && !v.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return v2_error(StatusCode::NOT_FOUND, "model versions are numbers (Veil serves version \"1\")");
    }
    let expected = match route.model() {
        None => None,
        Some(m) => match oblivious.policy().models.get(m) {
            Some(d) => Some(*d),
            None => return not_in_policy(m, &oblivious.policy().models),
        },
    };
    let digest = expected.map(hex::encode);
    let mut fwd = forwarded(headers);
    if let Some(d) = &digest {
        fwd.push((MODEL_DIGEST_HEADER, d.as_bytes()));
    }
    // Inference is retried as `veil infer` retries it, each attempt encapsulated afresh; health and metadata
    // are not (a readiness probe must see "not ready" when the enclave is not).
    let mut retries = Retries::new(oblivious.client().retry_policy());
    let sent = loop {
        let sent = oblivious.send(method.as_str(), &route.path(version), &fwd, &body).await;
        let Route::Infer { model } = route else { break sent };
        let delay = match &sent {
            Err(e) => retries.next(e.verdict(), e, &mut log_retry(model)),
            Ok(r) => match r.retry_verdict() {
                Verdict::Final => None,
                verdict => retries.next(verdict, &r.retry_reason(), &mut log_retry(model)),
            },
        };
        match delay {
            None => break sent,
            Some(delay) => {
                drop(sent);
                tokio::time::sleep(delay).await;
            }
        }
    };
    drop(body);
    let mut r = match sent {
        Ok(r) => r,
        Err(e) => return oblivious_error(&e),
    };
    keep_receipt(keep, oblivious.client(), r.receipt.take());
    if let Some(want) = &expected
        && r.status == 200
        && r.model_sha384().as_ref() != Some(want)
    {
        let got = r.model_sha384().map_or_else(|| "none".to_owned(), hex::encode);
        return v2_error(
            StatusCode::BAD_GATEWAY,
            &format!(
                "veil proxy: check model_sha384 failed: the answer came from model digest {got}, the policy expects {}",
                hex::encode(want)
            ),
        );
    }
    // Errors reach KServe clients as v2 errors (`{"error": ...}`), whatever shape the enclave gave them
    // (RFC 9457 problem details for a date problem, say).
    if r.status != 200 && r.error_message().is_some() && !has_error_field(&r.body) {
        let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
        return v2_error(status, &r.error_message().unwrap_or_default());
    }
    let header_length = r.header(HEADER_LENGTH_HEADER).map(<[u8]>::to_vec);
    let content_type = r.header("content-type").map(<[u8]>::to_vec);
    let digest_header = r.header(MODEL_DIGEST_HEADER).map(<[u8]>::to_vec);
    let status = r.status;
    let body = r.body;
    v2_answer(status, content_type.as_deref(), header_length.as_deref(), digest_header.as_deref(), body)
}

fn has_error_field(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .is_some_and(|v| v.get("error").is_some_and(|e| e.is_string()))
}

/// What the client sees when attested-key mode fails before an answer: nothing was forwarded, or the
/// answer did not open.
fn oblivious_error(e: &ObliviousError) -> Response {
    match e {
        ObliviousError::Untrusted(u) => v2_error(
            StatusCode::BAD_GATEWAY,
            &format!(
                "veil proxy: the enclave failed the policy, check {}: {u}; nothing was forwarded",
                u.failed_check()
            ),
        ),
        ObliviousError::Keys(m) => v2_error(
            StatusCode::BAD_GATEWAY,
            &format!(
                "veil proxy: check ohttp_keys failed: the gateway's key configuration is unusable: {m}; nothing was forwarded"
            ),
        ),
        ObliviousError::Fetch(c) => client_error(c),
        ObliviousError::Reverification(inner) => match inner.as_ref() {
            ObliviousError::Fetch(c) if c.is_connection() => {
                v2_error(StatusCode::SERVICE_UNAVAILABLE, &format!("veil proxy: {e}"))
            }
            ObliviousError::Untrusted(u) => v2_error(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "veil proxy: the enclave failed the policy on verifying again, check {}: {e}",
                    u.failed_check()
                ),
            ),
            _ => v2_error(StatusCode::BAD_GATEWAY, &format!("veil proxy: {e}")),
        },
        other => v2_error(StatusCode::BAD_GATEWAY, &format!("veil proxy: {other}")),
    }
}

/// A failure talking to the remote: 503 when it cannot be reached (or says it is unavailable), else 502.
fn client_error(e: &ClientError) -> Response {
    let status = match e {
        e if e.is_connection() => StatusCode::SERVICE_UNAVAILABLE,
        // What clients act on keeps its status: come back later, or send less.
        ClientError::Unauthenticated { status, .. }
            if [StatusCode::SERVICE_UNAVAILABLE, StatusCode::PAYLOAD_TOO_LARGE, StatusCode::TOO_MANY_REQUESTS]
                .contains(status) =>
        {
            *status
        }
        ClientError::Enclave { .. } => e.status().unwrap_or(StatusCode::BAD_GATEWAY),
        _ => StatusCode::BAD_GATEWAY,
    };
    v2_error(status, &format!("veil proxy: {e}"))
}

/// Logs a retry the proxy is about to make (the model, the attempt, the wait and what failed; never data).
fn log_retry(model: &str) -> impl FnMut(Retried<'_>) + Send + '_ {
    move |r: Retried<'_>| tracing::info!(model, retry = r.retry, delay_ms = r.delay.as_millis() as u64, reason = %r.reason, "veil proxy: retrying")
}

/// One KMS-mode inference attempt: sealed, sent, opened. A failure comes with its retry verdict, what
/// failed (for the log) and the response the client gets if it is not retried.
async fn kms_attempt(
    client: &Client,
    session: &tokio::sync::Mutex<Session>,
    model: &ModelRef,
    body: &[u8],
    header_length: Option<u64>,
) -> Result<OpenedAnswer, (Verdict, String, Response)> {
    let sealed = session.lock().await.seal(model, body, RequestMeta { inference_header_length: header_length }).await;
    let (wire, call) = sealed.map_err(|e| {
        let response = v2_error(StatusCode::BAD_GATEWAY, &format!("veil proxy: KMS: {e}"));
        (Verdict::Final, String::new(), response)
    })?;
    let answer =
        client.post_sealed(&model.name, wire).await.map_err(|e| (e.verdict(), e.to_string(), client_error(&e)))?;
    call.open(answer).map_err(|e| {
        let response =
            v2_error(StatusCode::BAD_GATEWAY, &format!("veil proxy: the enclave's answer did not open: {e}"));
        (Verdict::Final, String::new(), response)
    })
}

/// KMS envelope mode: inference sealed under a KMS data key; the other routes from the parent.
#[allow(clippy::too_many_arguments)]
async fn kms(
    client: &Client,
    session: &tokio::sync::Mutex<Session>,
    models: &BTreeMap<String, [u8; 48]>,
    route: &Route,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
    keep: Option<&Arc<ReceiptSink>>,
) -> Response {
    if let Some(v) = version
        && v != "1"
    {
        return v2_error(
            StatusCode::NOT_FOUND,
            &format!("model version {v:?} is not served (Veil serves version \"1\")"),
        );
    }
    let expected = match route.model() {
        None => None,
        Some(m) => match models.get(m) {
            Some(d) => Some(ModelRef { name: m.to_owned(), sha384: *d }),
            None => return not_in_policy(m, models),
        },
    };
    let ok_empty = || v2_answer(200, None, None, None, Vec::new());
    match (route, expected) {
        (Route::ServerMetadata, _) => {
            let body = serde_json::json!({"name": "veil", "version": env!("CARGO_PKG_VERSION"), "extensions": ["binary_tensor_data"]});
            v2_answer(200, Some(b"application/json"), None, None, serde_json::to_vec(&body).unwrap_or_default())
        }
        (Route::Live, _) => match client.get("/healthz").await {
            Ok(_) => ok_empty(),
            Err(e) => client_error(&e),
        },
        (Route::Ready, _) => match client.get("/readyz").await {
            Ok(_) => ok_empty(),
            Err(e) => client_error(&e),
        },
        (Route::ModelMetadata { model } | Route::ModelReady { model }, Some(m)) => {
            let meta = match client.model_metadata(model).await {
                Ok(b) => b,
                Err(e) => return client_error(&e),
            };
            // Unauthenticated (the parent relays it), but it must at least name the digest expected.
            let named = serde_json::from_slice::<serde_json::Value>(&meta)
                .ok()
                .and_then(|v| v.pointer("/parameters/sha384").and_then(|d| d.as_str()).map(str::to_owned));
            if named.as_deref() != Some(hex::encode(m.sha384).as_str()) {
                return v2_error(
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "veil proxy: check model_sha384 failed: the server's metadata for {model:?} names another model digest than the expected {}",
                        hex::encode(m.sha384)
                    ),
                );
            }
            if matches!(route, Route::ModelReady { .. }) {
                return ok_empty();
            }
            v2_answer(200, Some(b"application/json"), None, None, meta)
        }
        (Route::Infer { .. }, Some(model)) => {
            let header_length = match headers
                .get(HEADER_LENGTH_HEADER)
                .map(|v| v.to_str().ok().and_then(|t| t.trim().parse::<u64>().ok()))
            {
                None => None,
                Some(Some(n)) => Some(n),
                Some(None) => {
                    return v2_error(
                        StatusCode::BAD_REQUEST,
                        "the Inference-Header-Content-Length header is not a number of bytes",
                    );
                }
            };
            // Sealed afresh for every attempt (a new request id and nonce): see `crate::retry`.
            let mut retries = Retries::new(client.retry_policy());
            let mut opened = loop {
                let failed = match kms_attempt(client, session, &model, &body, header_length).await {
                    Ok(opened) => match &opened.outcome {
                        // The enclave opened the request and is unavailable (over its byte budget, say).
                        Outcome::Error(e) => {
                            let verdict = crate::retry::enclave_verdict(e.kind, e.retry_after_secs);
                            let why = format!("the enclave answered: {}", e.message);
                            match retries.next(verdict, &why, &mut log_retry(&model.name)) {
                                Some(delay) => Err(delay),
                                None => Ok(opened),
                            }
                        }
                        Outcome::Answer { .. } => Ok(opened),
                    },
                    Err((verdict, why, response)) => match retries.next(verdict, &why, &mut log_retry(&model.name)) {
                        Some(delay) => Err(delay),
                        None => return response,
                    },
                };
                match failed {
                    Ok(opened) => break opened,
                    Err(delay) => tokio::time::sleep(delay).await,
                }
            };
            drop(body);
            keep_receipt(keep, client, opened.receipt.take());
            let digest = hex::encode(opened.model_sha384);
            match &opened.outcome {
                Outcome::Answer { inference_header_length } => {
                    let n = inference_header_length.map(|n| n.to_string());
                    let content_type: &[u8] =
                        if n.is_some() { b"application/octet-stream" } else { b"application/json" };
                    v2_answer(
                        200,
                        Some(content_type),
                        n.as_deref().map(str::as_bytes),
                        Some(digest.as_bytes()),
                        opened.body().to_vec(),
                    )
                }
                Outcome::Error(e) => {
                    let status =
                        StatusCode::from_u16(e.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    v2_error(status, &e.message)
                }
            }
        }
        (_, None) => v2_error(StatusCode::INTERNAL_SERVER_ERROR, "veil proxy: a model route without a model"),
    }
}

//! The client-facing HTTP API.
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/models/{model}/infer` | the enclave's answer to the (opaque) body |
//! | `GET /v1/models/{model}` | model metadata (v2 JSON) |
//! | `GET /v1/attestation?nonce=HEX` | a fresh attestation document (CBOR) carrying the nonce |
//! | `GET /.well-known/ohttp-gateway` | the enclave's OHTTP key configuration list (`application/ohttp-keys`, RFC 9540) |
//! | `POST /.well-known/ohttp-gateway` | relays a `message/ohttp-req` to the enclave, answers its `message/ohttp-res` (RFC 9458) |
//! | `GET /v1/audit/attestation[?boot=HEX \| ?sha384=HEX]` | the attestation document certifying a boot's receipt key (CBOR) |
//! | `GET /v1/audit/head[?boot=HEX]` | a boot's latest signed tree head (COSE_Sign1) |
//! | `GET /v1/audit/proof?seq=N[&boot=HEX]` | an inclusion proof of receipt `seq` under a signed tree head (JSON) |
//! | `GET /healthz` | 200 while the parent runs |
//! | `GET /readyz` | 200 when the enclave answers and every model is loaded, else 503 |
//! | `GET /metrics` | Prometheus text |
//!
//! Errors are JSON `{"error": "...", "kind": "..."}` with the status the one table in
//! `veil_protocol::error` gives the kind (400 bad request, 403 KMS refused, 404 unknown model, 413 too
//! large, 502 protocol, 503 unavailable or overloaded, with `Retry-After`, 504 no answer in time), and 408
//! for a body slower than the read timeout ([`crate::serve`]). Nothing
//! the parent answers is authenticated: clients treat these errors as the parent's word. What the enclave
//! says about a request's contents travels sealed inside a 200 answer, so the parent never sees it.
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::BytesMut;
use serde::Deserialize;
use serde_bytes::ByteBuf;
use veil_protocol::message::{EnclaveRequest, EnclaveResponse, MAX_MODEL_NAME};
use veil_runtime::transport::{Listener, Stream};

use crate::audit::{AuditLog, ProofError};
use crate::link::{EnclaveLink, LinkError};
use crate::metrics::{ErrorLabels, Metrics, RequestLabels, RouteLabels};

/// Longest attestation nonce accepted, in bytes (hex doubles it).
pub const MAX_NONCE_BYTES: usize = 64;

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub link: EnclaveLink,
    pub metrics: Metrics,
    /// Model names configured on this parent (the only values the metrics' model label takes).
    pub models: Vec<String>,
    pub request_timeout: Duration,
    /// The enclave's receipts and tree heads.
    pub audit: Arc<AuditLog>,
}

/// Builds the router.
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/models/{model}/infer", post(infer))
        .route("/v1/models/{model}", get(metadata))
        .route("/v1/attestation", get(attestation))
        .route(veil_protocol::ohttp::GATEWAY_PATH, get(ohttp_keys).post(ohttp_relay))
        .route("/v1/audit/attestation", get(audit_attestation))
        .route("/v1/audit/head", get(audit_head))
        .route("/v1/audit/proof", get(audit_proof))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Counts a request in flight and records its outcome when dropped (also when the client goes away).
struct Track<'a> {
    state: &'a AppState,
    route: &'static str,
    model: String,
    start: Instant,
    status: u16,
    error: Option<&'static str>,
}

impl<'a> Track<'a> {
    fn new(state: &'a AppState, route: &'static str, model: Option<&str>) -> Self {
        state.metrics.in_flight.inc();
        let model = match model {
            Some(m) if state.models.iter().any(|x| x == m) => m.to_owned(),
            Some(_) => "other".to_owned(),
            None => String::new(),
        };
        // 499: the client closed the connection before an answer (nginx's convention).
        Track { state, route, model, start: Instant::now(), status: 499, error: Some("client_closed") }
    }

    fn finish(&mut self, response: Response, error: Option<&'static str>) -> Response {
        self.status = response.status().as_u16();
        self.error = error;
        response
    }
}

impl Drop for Track<'_> {
    fn drop(&mut self) {
        let m = &self.state.metrics;
        m.in_flight.dec();
        m.latency.get_or_create(&RouteLabels { route: self.route }).observe(self.start.elapsed().as_secs_f64());
        m.requests
            .get_or_create(&RequestLabels { route: self.route, model: self.model.clone(), status: self.status })
            .inc();
        if let Some(kind) = self.error {
            m.errors.get_or_create(&ErrorLabels { route: self.route, kind }).inc();
        }
    }
}

fn error_response(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message, "kind": kind }))).into_response()
}

/// Turns a link outcome into a response and the error label to count.
fn relay_outcome(
    outcome: Result<(EnclaveResponse, BytesMut), LinkError>,
    ok: impl FnOnce(EnclaveResponse, BytesMut) -> Option<Response>,
) -> (Response, Option<&'static str>) {
    match outcome {
        Ok((EnclaveResponse::Error(e), _)) => {
            let status = StatusCode::from_u16(e.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut r = error_response(status, e.kind.label(), &e.message);
            if let Some(secs) = e.retry_after_secs
                && let Ok(v) = HeaderValue::from_str(&secs.to_string())
            {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            (r, Some(e.kind.label()))
        }
        Ok((other, attachment)) => match ok(other, attachment) {
            Some(r) => (r, None),
            None => (
                error_response(StatusCode::BAD_GATEWAY, "protocol", "the enclave answered with an unexpected message"),
                Some("protocol"),
            ),
        },
        Err(e @ LinkError::Unavailable(_)) => {
            let mut r = error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &e.to_string());
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            (r, Some("enclave_unavailable"))
        }
        Err(e @ LinkError::Timeout(_)) => {
            (error_response(StatusCode::GATEWAY_TIMEOUT, "timeout", &e.to_string()), Some("timeout"))
        }
        Err(LinkError::TooLarge(m)) => {
            (error_response(StatusCode::PAYLOAD_TOO_LARGE, "too_large", &m), Some("too_large"))
        }
    }
}

fn model_name_ok(model: &str) -> bool {
    !model.is_empty() && model.len() <= MAX_MODEL_NAME
}

fn bad_model_name() -> Response {
    error_response(StatusCode::BAD_REQUEST, "bad_request", "model names are 1 to 128 bytes")
}

fn bytes_response(content_type: &'static str, body: BytesMut) -> Response {
    let mut r = body.freeze().into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A body that could not be read (over `--max-body-bytes`, or cut off), as the API's JSON error.
fn body_rejection(r: &axum::extract::rejection::BytesRejection) -> (Response, &'static str) {
    if crate::serve::is_body_timeout(r) {
        // The client took too long to send its body (crate::serve): say so, and close the connection.
        let mut response = error_response(StatusCode::REQUEST_TIMEOUT, "timeout", &r.body_text());
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return (response, "body_timeout");
    }
    let status = r.status();
    let (kind, label) = if status == StatusCode::PAYLOAD_TOO_LARGE {
        ("too_large", "too_large")
    } else {
        ("bad_request", "bad_request")
    };
    (error_response(status, kind, &r.body_text()), label)
}

async fn infer(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let mut track = Track::new(&state, "infer", Some(&model));
    let body = match body {
        Ok(b) => b,
        Err(r) => {
            let (response, label) = body_rejection(&r);
            return track.finish(response, Some(label));
        }
    };
    if !model_name_ok(&model) {
        return track.finish(bad_model_name(), Some("bad_request"));
    }
    if body.is_empty() {
        let r = error_response(StatusCode::BAD_REQUEST, "bad_request", "empty request body");
        return track.finish(r, Some("bad_request"));
    }
    // The body is opaque: it goes to the enclave as it came, written from the buffer it arrived in.
    let outcome = state.link.call_with(&EnclaveRequest::Infer { model }, body, state.request_timeout).await;
    let (r, e) = relay_outcome(outcome, |resp, attachment| match resp {
        EnclaveResponse::Infer => Some(bytes_response("application/octet-stream", attachment)),
        _ => None,
    });
    track.finish(r, e)
}

async fn metadata(State(state): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    let mut track = Track::new(&state, "metadata", Some(&model));
    if !model_name_ok(&model) {
        return track.finish(bad_model_name(), Some("bad_request"));
    }
    let outcome =
        state.link.call_with(&EnclaveRequest::ModelMetadata { model }, Bytes::new(), state.request_timeout).await;
    let (r, e) = relay_outcome(outcome, |resp, attachment| match resp {
        EnclaveResponse::ModelMetadata => Some(bytes_response("application/json", attachment)),
        _ => None,
    });
    track.finish(r, e)
}

#[derive(Debug, Deserialize)]
struct AttestationQuery {
    nonce: Option<String>,
}

/// Parses the `nonce` query parameter: hex, 1 to [`MAX_NONCE_BYTES`] bytes.
pub fn parse_nonce(nonce: Option<&str>) -> Result<Vec<u8>, String> {
    let hex_nonce = nonce.ok_or("missing nonce: ask for /v1/attestation?nonce=HEX with 1 to 64 random bytes")?;
    if hex_nonce.len() > MAX_NONCE_BYTES * 2 {
        return Err(format!("nonce is too long: at most {MAX_NONCE_BYTES} bytes ({} hex digits)", MAX_NONCE_BYTES * 2));
    }
    let bytes = hex::decode(hex_nonce).map_err(|e| format!("nonce is not hex: {e}"))?;
    if bytes.is_empty() {
        return Err("nonce is empty".into());
    }
    Ok(bytes)
}

async fn attestation(State(state): State<Arc<AppState>>, Query(q): Query<AttestationQuery>) -> Response {
    let mut track = Track::new(&state, "attestation", None);
    let nonce = match parse_nonce(q.nonce.as_deref()) {
        Ok(n) => n,
        Err(m) => return track.finish(error_response(StatusCode::BAD_REQUEST, "bad_request", &m), Some("bad_request")),
    };
    let request = EnclaveRequest::Attestation { nonce: ByteBuf::from(nonce) };
    let outcome = state.link.call_with(&request, Bytes::new(), state.request_timeout).await;
    let (r, e) = relay_outcome(outcome, |resp, attachment| match resp {
        EnclaveResponse::Attestation => Some(bytes_response("application/cbor", attachment)),
        _ => None,
    });
    track.finish(r, e)
}

/// The gateway's key configuration, from the enclave: clients check its digest against a verified
/// attestation document before using it, so the parent cannot substitute keys of its own.
async fn ohttp_keys(State(state): State<Arc<AppState>>) -> Response {
    let mut track = Track::new(&state, "ohttp_keys", None);
    let outcome = state.link.call_with(&EnclaveRequest::OhttpKeys, Bytes::new(), state.request_timeout).await;
    let (r, e) = relay_outcome(outcome, |resp, attachment| match resp {
        EnclaveResponse::OhttpKeys => Some(bytes_response(veil_protocol::ohttp::KEYS_MEDIA_TYPE, attachment)),
        _ => None,
    });
    track.finish(r, e)
}

/// The relay of attested-key mode: the body goes to the enclave as it came; the parent learns neither the
/// route nor the model asked for, so this route's metrics carry no model label.
async fn ohttp_relay(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let mut track = Track::new(&state, "ohttp", None);
    let body = match body {
        Ok(b) => b,
        Err(r) => {
            let (response, label) = body_rejection(&r);
            return track.finish(response, Some(label));
        }
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.trim().eq_ignore_ascii_case(veil_protocol::ohttp::REQUEST_MEDIA_TYPE) {
        let r = error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_request",
            "an OHTTP request is sent with Content-Type: message/ohttp-req (RFC 9458)",
        );
        return track.finish(r, Some("bad_request"));
    }
    if body.is_empty() {
        let r = error_response(StatusCode::BAD_REQUEST, "bad_request", "empty request body");
        return track.finish(r, Some("bad_request"));
    }
    let outcome = state.link.call_with(&EnclaveRequest::Ohttp, body, state.request_timeout).await;
    let (r, e) = relay_outcome(outcome, |resp, attachment| match resp {
        EnclaveResponse::Ohttp => {
            let mut r = bytes_response(veil_protocol::ohttp::RESPONSE_MEDIA_TYPE, attachment);
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
            Some(r)
        }
        _ => None,
    });
    track.finish(r, e)
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    boot: Option<String>,
    seq: Option<String>,
    sha384: Option<String>,
}

fn parse_boot(boot: Option<&str>) -> Result<Option<[u8; 16]>, Box<Response>> {
    let Some(text) = boot else { return Ok(None) };
    hex::decode(text).ok().and_then(|b| <[u8; 16]>::try_from(b).ok()).map(Some).ok_or_else(|| {
        Box::new(error_response(StatusCode::BAD_REQUEST, "bad_request", "boot is a boot id: 32 hex digits"))
    })
}

/// The attestation document that certifies a boot's receipt key: what an evidence bundle carries. Public
/// (it holds no secret); the client checks its digest against the receipt's, so the parent cannot swap it.
async fn audit_attestation(State(state): State<Arc<AppState>>, Query(q): Query<AuditQuery>) -> Response {
    if let Some(text) = q.sha384.as_deref() {
        let Some(digest) = hex::decode(text).ok().and_then(|b| <[u8; 48]>::try_from(b).ok()) else {
            return error_response(StatusCode::BAD_REQUEST, "bad_request", "sha384 is a SHA-384: 96 hex digits");
        };
        let audit = Arc::clone(&state.audit);
        return match tokio::task::spawn_blocking(move || audit.document_by_digest(&digest)).await {
            Ok(Some(doc)) => bytes_response("application/cbor", BytesMut::from(&doc[..])),
            _ => error_response(StatusCode::NOT_FOUND, "not_found", "no attestation document with that SHA-384 here"),
        };
    }
    let boot = match parse_boot(q.boot.as_deref()) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    match state.audit.document(boot) {
        Some(doc) => bytes_response("application/cbor", BytesMut::from(&doc[..])),
        None => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "no attestation document for that boot (receipts off, the enclave not ready, or an unknown boot)",
        ),
    }
}

/// The latest signed tree head of a boot (RFC 9052's media type for a COSE_Sign1).
async fn audit_head(State(state): State<Arc<AppState>>, Query(q): Query<AuditQuery>) -> Response {
    let boot = match parse_boot(q.boot.as_deref()) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    match state.audit.latest_head(boot) {
        Some(head) => bytes_response("application/cose; cose-type=\"cose-sign1\"", BytesMut::from(&head[..])),
        None => error_response(StatusCode::NOT_FOUND, "not_found", "no signed tree head for that boot yet"),
    }
}

/// An inclusion proof of a receipt under the first signed tree head that covers it (RFC 9162 §2.1.3).
async fn audit_proof(State(state): State<Arc<AppState>>, Query(q): Query<AuditQuery>) -> Response {
    let boot = match parse_boot(q.boot.as_deref()) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let Some(seq) = q.seq.as_deref().and_then(|s| s.parse::<u64>().ok()) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "seq is the receipt's sequence number: /v1/audit/proof?seq=N",
        );
    };
    let audit = Arc::clone(&state.audit);
    let proof = match tokio::task::spawn_blocking(move || audit.proof(boot, seq)).await {
        Ok(p) => p,
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string()),
    };
    match proof {
        Ok(p) => {
            use base64::Engine;
            Json(serde_json::json!({
                "boot": hex::encode(p.boot),
                "leaf_index": p.leaf_index,
                "tree_size": p.tree_size,
                "tree_head": base64::engine::general_purpose::STANDARD.encode(&p.tree_head),
                "path": p.path.iter().map(hex::encode).collect::<Vec<_>>(),
            }))
            .into_response()
        }
        Err(e @ (ProofError::NotYetCovered(_) | ProofError::Busy)) => {
            let mut r = error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &e.to_string());
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            r
        }
        Err(e @ (ProofError::NoLog | ProofError::UnknownBoot(_) | ProofError::NotLogged { .. })) => {
            error_response(StatusCode::NOT_FOUND, "not_found", &e.to_string())
        }
        Err(e @ ProofError::Unreadable(..)) => {
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string())
        }
    }
}

async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let timeout = state.request_timeout.min(Duration::from_secs(2));
    match state.link.call(&EnclaveRequest::Status, timeout).await {
        Ok(EnclaveResponse::Status { ready: true, models, kms_calls }) => {
            Json(serde_json::json!({ "ready": true, "models": models, "kms_calls": kms_calls })).into_response()
        }
        Ok(EnclaveResponse::Status { ready: false, models, .. }) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                serde_json::json!({ "ready": false, "reason": "the enclave is loading its models", "models": models }),
            ),
        )
            .into_response(),
        Ok(_) => error_response(StatusCode::BAD_GATEWAY, "protocol", "the enclave answered with an unexpected message"),
        Err(e) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "ready": false, "reason": e.to_string() })))
                .into_response()
        }
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.enclave_connections.set(state.link.live_connections() as i64);
    let mut r = state.metrics.encode().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

/// Lets axum serve on any Veil transport (tcp or unix).
#[derive(Debug)]
pub struct HttpListener(pub Listener);

impl axum::serve::Listener for HttpListener {
    type Io = Stream;
    type Addr = String;

    async fn accept(&mut self) -> (Stream, String) {
        loop {
            match self.0.accept().await {
                Ok(accepted) => return accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "http: accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<String> {
        Ok(self.0.local_address()?.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_checked_with_reasons() {
        assert!(parse_nonce(None).unwrap_err().contains("missing nonce"));
        assert!(parse_nonce(Some("")).unwrap_err().contains("empty"));
        assert!(parse_nonce(Some("zz")).unwrap_err().contains("not hex"));
        assert!(parse_nonce(Some(&"ab".repeat(65))).unwrap_err().contains("too long"));
        assert_eq!(parse_nonce(Some("00ff")).unwrap(), vec![0, 255]);
    }
}

//! The HTTP side of the client: one small hyper client over plain TCP.
//!
//! Nothing here sends inference plaintext: the only inference call is [`Client::infer`], which takes a
//! [`crate::kms::Session`] and seals the request before it leaves the process. Errors keep apart what the
//! enclave said (authenticated, inside the seal: [`ClientError::Enclave`]) from what the parent or anything
//! between said (unauthenticated: [`ClientError::Unauthenticated`]), since the parent can make up any error
//! it likes.
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::{Client as HyperClient, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

use crate::retry::RetryPolicy;

/// Largest response body the client accepts (an attestation document is ~5 KiB, a MiniLM answer ~1 MiB).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Why a call to the parent failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The base URL is not an `http://host:port` URL.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The server could not be reached: nothing was sent.
    #[error("could not reach {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The connection closed after the request was sent, before a whole answer came back: the request
    /// may have been run (see [`crate::retry`] for why retrying inference is still safe).
    #[error("the connection to {url} closed before an answer (the request may have been run): {source}")]
    Disconnected {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No answer within the time limit.
    #[error("no answer from {url} within {0:?}", .timeout)]
    Timeout { url: String, timeout: Duration },
    /// The parent (or something between it and us) answered with an error status. Nothing authenticates
    /// this: a hostile parent can make up any message, so do not act on it as if the enclave had said it.
    #[error("the parent said, not authenticated by the enclave: {message} (HTTP {status})")]
    Unauthenticated { status: StatusCode, message: String, retry_after: Option<u64> },
    /// The enclave refused the request, in its sealed answer: this message is the enclave's own. When the
    /// model ran and refused the input, the refusal has its signed receipt (whose response digest is over
    /// no bytes), as an answer does.
    #[error("the enclave refused the request: {message} ({kind})")]
    Enclave {
        kind: veil_protocol::error::ErrorKind,
        message: String,
        retry_after: Option<u32>,
        receipt: Option<Box<veil_protocol::envelope::AnswerReceipt>>,
    },
    /// KMS, or sealing and opening the envelope, failed.
    #[error("{0}")]
    Kms(String),
    /// The answer was larger than the client accepts.
    #[error("answer from {url} is larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge { url: String },
}

impl ClientError {
    /// True when the failure is about reaching the server rather than what it said.
    pub fn is_connection(&self) -> bool {
        matches!(self, ClientError::Connect { .. } | ClientError::Disconnected { .. } | ClientError::Timeout { .. })
    }

    /// The HTTP status the failure stands for, when it has one (the enclave's kinds map through the one
    /// table in `veil_protocol::error`).
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Unauthenticated { status, .. } => Some(*status),
            ClientError::Enclave { kind, .. } => StatusCode::from_u16(kind.http_status()).ok(),
            _ => None,
        }
    }
}

/// A handle on one Veil parent (cheap to clone; connections are pooled).
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: HyperClient<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    retry: RetryPolicy,
}

impl Client {
    /// A client for the parent at `base` (`http://host:port`), with a 60 s timeout per call, and inference
    /// retried by [`RetryPolicy::default`].
    pub fn new(base: &str) -> Result<Self, ClientError> {
        let trimmed = base.trim_end_matches('/');
        let uri: Uri = trimmed.parse().map_err(|e: hyper::http::uri::InvalidUri| ClientError::InvalidUrl {
            url: base.to_owned(),
            reason: e.to_string(),
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(ClientError::InvalidUrl {
                    url: base.to_owned(),
                    reason: "https is terminated in front of the parent (load balancer); talk http to the parent, \
                             or put a TLS proxy in front"
                        .into(),
                });
            }
            _ => {
                return Err(ClientError::InvalidUrl {
                    url: base.to_owned(),
                    reason: "expected http://HOST:PORT".into(),
                });
            }
        }
        if uri.host().is_none() {
            return Err(ClientError::InvalidUrl { url: base.to_owned(), reason: "no host".into() });
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        // Idle connections are dropped before the parent's own idle limit (its --header-timeout-secs, 30 s by
        // default) closes them: a request sent on a connection the parent is closing fails as a disconnect,
        // which is retried, and may have run.
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(20))
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        Ok(Self { base: trimmed.to_owned(), http, timeout: Duration::from_secs(60), retry: RetryPolicy::default() })
    }

    /// Sets how inference calls are retried ([`RetryPolicy::none`]: never).
    pub fn with_retries(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// How inference calls are retried.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Sets the time limit for each call.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The base URL this client talks to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Posts an already sealed envelope to `model`'s inference route and returns the sealed answer. The
    /// library's own callers seal first ([`Client::infer`]); this is the wire step only, never plaintext.
    pub(crate) async fn post_sealed(&self, model: &str, sealed: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        let path = format!("/v1/models/{}/infer", encode_segment(model));
        self.call(Method::POST, &path, Bytes::from(sealed)).await
    }

    /// Fetches a model's metadata (v2 model metadata JSON: inputs, outputs, datatypes, shapes).
    ///
    /// Unauthenticated: the parent relays it and could alter it. The digest that counts is the one in a
    /// verified attestation document, and the one each sealed answer carries.
    pub async fn model_metadata(&self, model: &str) -> Result<Vec<u8>, ClientError> {
        let path = format!("/v1/models/{}", encode_segment(model));
        self.call(Method::GET, &path, Bytes::new()).await
    }

    /// Fetches a fresh attestation document (COSE_Sign1, CBOR) that carries `nonce`.
    ///
    /// The bytes are unverified: check them with `veil_protocol::attestation` before trusting anything in them.
    pub async fn attestation(&self, nonce: &[u8]) -> Result<Vec<u8>, ClientError> {
        let path = format!("/v1/attestation?nonce={}", hex::encode(nonce));
        self.call(Method::GET, &path, Bytes::new()).await
    }

    /// Fetches a plain GET path (e.g. `/healthz`, `/metrics`) and returns the body.
    pub async fn get(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        self.call(Method::GET, path, Bytes::new()).await
    }

    /// Fetches the OHTTP gateway's key configuration list (`application/ohttp-keys`). Unauthenticated: a
    /// client uses it only once a verified attestation document commits to exactly these bytes.
    pub async fn ohttp_keys(&self) -> Result<Vec<u8>, ClientError> {
        self.call(Method::GET, veil_protocol::ohttp::GATEWAY_PATH, Bytes::new()).await
    }

    /// Posts an OHTTP encapsulated request (already encrypted) and returns the encapsulated response.
    pub(crate) async fn post_ohttp(&self, encapsulated: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        self.call_typed(
            Method::POST,
            veil_protocol::ohttp::GATEWAY_PATH,
            Bytes::from(encapsulated),
            veil_protocol::ohttp::REQUEST_MEDIA_TYPE,
        )
        .await
    }

    async fn call(&self, method: Method, path: &str, body: Bytes) -> Result<Vec<u8>, ClientError> {
        self.call_typed(method, path, body, "application/octet-stream").await
    }

    async fn call_typed(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}{}", self.base, path);
        let request = Request::builder()
            .method(method)
            .uri(&url)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .map_err(|e| ClientError::InvalidUrl { url: url.clone(), reason: e.to_string() })?;
        let exchange = async {
            // hyper's pool sends again by itself a request that found its pooled connection closed before
            // a byte went out; what fails here either never connected, or was (perhaps) sent.
            let response = self.http.request(request).await.map_err(|e| {
                if e.is_connect() {
                    ClientError::Connect { url: url.clone(), source: chain(&e).into() }
                } else {
                    ClientError::Disconnected { url: url.clone(), source: chain(&e).into() }
                }
            })?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(crate::retry::parse_retry_after_now);
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        ClientError::TooLarge { url: url.clone() }
                    } else {
                        ClientError::Disconnected { url: url.clone(), source: e }
                    }
                })?
                .to_bytes();
            if !status.is_success() {
                return Err(ClientError::Unauthenticated { status, message: error_message(&body), retry_after });
            }
            // No copy when the collected body is one buffer of its own.
            Ok(Vec::from(body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout { url, timeout: self.timeout }),
        }
    }
}

/// An error and its causes on one line ("client error (Connect): tcp connect error: Connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// The text of an error body: the `error` field of a JSON body, else the body as (lossy) text.
fn error_message(body: &[u8]) -> String {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(serde_json::Value::String(s)) = map.get("error")
    {
        return s.clone();
    }
    let text = String::from_utf8_lossy(body);
    text.chars().take(2000).collect()
}

/// Percent-encodes a model name for use as one path segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_urls_with_reasons() {
        let err = Client::new("ftp://x").unwrap_err().to_string();
        assert!(err.contains("expected http://HOST:PORT"), "{err}");
        let err = Client::new("https://x:1").unwrap_err().to_string();
        assert!(err.contains("https"), "{err}");
        assert!(Client::new("http://127.0.0.1:8080/").is_ok());
    }

    #[test]
    fn model_names_are_one_path_segment() {
        assert_eq!(encode_segment("iris"), "iris");
        assert_eq!(encode_segment("a/b?c"), "a%2Fb%3Fc");
    }

    #[test]
    fn error_message_prefers_json_error_field() {
        assert_eq!(error_message(br#"{"error":"unknown model"}"#), "unknown model");
        assert_eq!(error_message(b"plain"), "plain");
    }
}

//! The SDK's HTTP client, implemented over the parent's byte relay with TLS inside the enclave.
//!
//! Why our own `HttpClient` (approach (a)) rather than a loopback forwarder feeding the SDK's stock rustls
//! client (approach (b)): the enclave has no network stack worth the name (loopback may not even be up in
//! a minimal image), and a forwarder would add a listening socket that any process in the enclave could
//! use. Here the SDK's request goes straight into hyper 1, over tokio-rustls (ring provider: no aws-lc, no
//! OpenSSL), over a `HostRequest::KmsRelay` connection: one TLS session per KMS call, no DNS (the endpoint
//! is fixed in configuration; the parent resolves it and can only drop or delay the ciphertext), and the
//! certificate is checked for the real KMS host name against the pinned Amazon roots (plus, in development
//! builds with the mock NSM only, the mock KMS's CA). KMS calls are rare (one per data key, cached by the
//! caller), so no connection pool.
use std::sync::Arc;
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use veil_runtime::transport::Address;

use super::parent;

/// Largest KMS answer read (a Decrypt answer with a recipient is a few KiB).
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Default time to open the relay and finish the TLS handshake, when the SDK gives none.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends the SDK's requests to one fixed endpoint through the parent's relay.
#[derive(Clone)]
pub(crate) struct RelayHttpClient {
    inner: Arc<Inner>,
}

struct Inner {
    host_addr: Address,
    /// `host:port` as the parent's allow-list knows it.
    endpoint: String,
    /// The host part, for SNI and certificate checks, and to refuse requests for any other host.
    host: String,
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for RelayHttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHttpClient").field("endpoint", &self.inner.endpoint).finish_non_exhaustive()
    }
}

impl RelayHttpClient {
    pub(crate) fn new(host_addr: Address, endpoint: String, host: String, tls: Arc<rustls::ClientConfig>) -> Self {
        let tls = tokio_rustls::TlsConnector::from(tls);
        Self { inner: Arc::new(Inner { host_addr, endpoint, host, tls }) }
    }
}

impl HttpClient for RelayHttpClient {
    fn http_connector(&self, settings: &HttpConnectorSettings, _components: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(RelayConnector {
            inner: Arc::clone(&self.inner),
            connect_timeout: settings.connect_timeout().unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            read_timeout: settings.read_timeout(),
        })
    }
}

#[derive(Clone)]
struct RelayConnector {
    inner: Arc<Inner>,
    connect_timeout: Duration,
    read_timeout: Option<Duration>,
}

impl std::fmt::Debug for RelayConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConnector").field("endpoint", &self.inner.endpoint).finish_non_exhaustive()
    }
}

impl HttpConnector for RelayConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let this = self.clone();
        HttpConnectorFuture::new(async move {
            match this.read_timeout {
                Some(t) => tokio::time::timeout(t, this.send(request))
                    .await
                    .map_err(|_| ConnectorError::timeout(format!("no answer from KMS within {t:?}").into()))?,
                None => this.send(request).await,
            }
        })
    }
}

impl RelayConnector {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, ConnectorError> {
        let request = request.try_into_http1x().map_err(|e| ConnectorError::user(e.into()))?;
        let (mut parts, body) = request.into_parts();
        // Only the configured endpoint: an SDK or endpoint-resolver surprise must not turn into a request for
        // another host over a connection whose certificate was checked for this one.
        let authority =
            parts.uri.authority().cloned().ok_or_else(|| ConnectorError::user("request without a host".into()))?;
        if parts.uri.scheme_str() != Some("https") || authority.host() != self.inner.host {
            return Err(ConnectorError::user(
                format!("refusing a KMS request for {authority} (only {} is configured)", self.inner.endpoint).into(),
            ));
        }
        // hyper's connection-level client sends the URI as given: make it origin-form, with a Host header.
        if !parts.headers.contains_key(http::header::HOST) {
            let value = http::HeaderValue::from_str(authority.as_str()).map_err(|e| ConnectorError::user(e.into()))?;
            parts.headers.insert(http::header::HOST, value);
        }
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        parts.uri = path.parse().map_err(|e: http::uri::InvalidUri| ConnectorError::user(e.into()))?;
        let request = http::Request::from_parts(parts, body);

        let tls = tokio::time::timeout(self.connect_timeout, self.connect()).await.map_err(|_| {
            ConnectorError::timeout(format!("could not reach KMS within {:?}", self.connect_timeout).into())
        })??;
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, SdkBody>(TokioIo::new(tls))
            .await
            .map_err(|e| ConnectorError::io(e.into()))?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "KMS connection ended with an error");
            }
        });
        let result = async {
            let response = sender.send_request(request).await.map_err(|e| ConnectorError::io(e.into()))?;
            let (parts, body) = response.into_parts();
            let body = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| ConnectorError::io(format!("reading KMS's answer: {e}").into()))?
                .to_bytes();
            let response = http::Response::from_parts(parts, SdkBody::from(body));
            HttpResponse::try_from(response).map_err(|e| ConnectorError::other(e.into(), None))
        }
        .await;
        driver.abort();
        result
    }

    async fn connect(
        &self,
    ) -> Result<tokio_rustls::client::TlsStream<veil_runtime::transport::Stream>, ConnectorError> {
        let stream = parent::open_relay(&self.inner.host_addr, &self.inner.endpoint, self.connect_timeout)
            .await
            .map_err(|e| ConnectorError::io(e.to_string().into()))?;
        let name = ServerName::try_from(self.inner.host.clone()).map_err(|e| ConnectorError::user(e.into()))?;
        // A certificate failure is not retryable: it means the relay does not lead to KMS.
        self.inner.tls.connect(name, stream).await.map_err(|e| {
            if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
                ConnectorError::other(format!("TLS with KMS failed: {e}").into(), None)
            } else {
                ConnectorError::io(format!("TLS with KMS failed: {e}").into())
            }
        })
    }
}

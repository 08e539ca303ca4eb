//! A mock AWS KMS for off-hardware runs and tests. **Trusted by nobody**: it keeps its keys in a plain file.
//!
//! It speaks the real KMS JSON 1.1 protocol (`POST /`, `X-Amz-Target: TrentService.*`) over HTTPS, so the
//! real `aws-sdk-kms` client and the AWS CLI talk to it with an endpoint URL. What makes it worth having
//! (moto and LocalStack do neither): it verifies a `Recipient` attestation document with Veil's verifier
//! against the mock NSM root it is given, and it enforces key-policy conditions on
//! `kms:RecipientAttestation:ImageSha384` / `PCR0..PCR8` as KMS does, answering with a
//! `CiphertextForRecipient` shaped exactly like KMS's.
//!
//! It also enforces *who* may do what, so that "only the enclave role may decrypt" is tested for real:
//! each access key maps to a principal ARN ([`Config::principals`]), key policies are evaluated against
//! that caller, grants ([`grants`]) can add permissions but never lift an explicit `Deny`, aliases
//! ([`alias`]) work wherever KMS takes them, and `Recipient` documents older than five minutes on the
//! mock's clock are refused.
//!
//! Pieces, each testable alone: [`principal`] (callers and how policies name them), [`policy`] (key
//! policy evaluation), [`grants`], [`alias`], [`cms`] (the `CiphertextForRecipient` builder), [`blob`]
//! (the mock's ciphertext format), [`store`] (the persistent key file), [`tls`] (its CA).
//! [`MockKms::start`] runs it in-process; the `veil-mock-kms` binary wraps that. See `docs/MOCK_KMS.md`.
#![forbid(unsafe_code)]

pub mod alias;
pub mod blob;
pub mod cms;
pub mod grants;
pub mod policy;
pub mod principal;
mod server;
mod sigv4;
pub mod store;
pub mod tls;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode};
use veil_protocol::attestation::{TrustAnchor, Verifier};
use veil_runtime::transport::{Address, Listener};

pub use principal::Principal;
pub use server::{KmsError, MAX_ATTESTATION, MAX_BODY, MAX_CIPHERTEXT, MAX_PLAINTEXT, RECIPIENT_MAX_AGE};

/// Most connections served at once; more are closed on accept (a hostile client cannot exhaust the process).
pub const MAX_CONNECTIONS: usize = 512;

/// How to run the mock.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (`tcp://HOST:PORT`, port 0 for any; or `unix://PATH`).
    pub listen: Address,
    /// The state directory: `keys.json`, `ca.pem`, `ca.key.pem`, `server.pem`, `server.key.pem`.
    pub state_dir: PathBuf,
    /// Roots that `Recipient` attestation documents must chain to (PEM), e.g. the mock NSM's root.
    pub attestation_roots: Vec<TrustAnchor>,
    /// The region in ARNs and in the SigV4 credential scope it accepts.
    pub region: String,
    /// The account that holds the mock's keys (in ARNs).
    pub account: String,
    /// Access key id → the principal it belongs to (what IAM would know). Every request's access key must
    /// be one of them (else `UnrecognizedClientException`). When empty (the default, kept for callers that
    /// predate principals), every caller is the account root `arn:aws:iam::ACCOUNT:root`, which key
    /// policies naming one role will then refuse.
    pub principals: BTreeMap<String, Principal>,
    /// The mock's clock: it dates keys, aliases and grants, and judges `Recipient` documents' age.
    pub clock: Clock,
    /// Extra DNS names or IP addresses for the server certificate (besides `localhost`, `127.0.0.1`).
    pub hostnames: Vec<String>,
    /// `(access key id, secret access key)`: when set, SigV4 signatures are verified and other access keys
    /// refused. When `None` (the default), any credentials are accepted, but the header must be well formed.
    pub credentials: Option<(String, zeroize::Zeroizing<String>)>,
    /// Key ids (UUIDs) that must exist: created at start, with the account's default key policy, when the
    /// store does not have them. Mock only (real KMS chooses key ids): for fixtures that name a key ARN in
    /// advance, such as an enclave image's configuration.
    pub fixture_keys: Vec<String>,
}

impl Config {
    /// A configuration with the defaults: region `us-east-1`, account `111122223333`.
    pub fn new(listen: Address, state_dir: impl Into<PathBuf>, attestation_root: TrustAnchor) -> Self {
        Self {
            listen,
            state_dir: state_dir.into(),
            attestation_roots: vec![attestation_root],
            region: "us-east-1".to_owned(),
            account: "111122223333".to_owned(),
            principals: BTreeMap::new(),
            clock: Clock::system(),
            hostnames: Vec::new(),
            credentials: None,
            fixture_keys: Vec::new(),
        }
    }

    /// Maps `access_key` to the principal `arn` (checked), as `--principal ACCESS_KEY=ARN` does.
    pub fn with_principal(mut self, access_key: &str, arn: &str) -> Result<Self, StartError> {
        check_access_key(access_key)?;
        let p = Principal::parse(arn).map_err(|e| StartError::Config(e.to_string()))?;
        self.principals.insert(access_key.to_owned(), p);
        Ok(self)
    }
}

/// An access key id as AWS makes them: 16 to 128 characters, letters and digits.
fn check_access_key(access_key: &str) -> Result<(), StartError> {
    if !(16..=128).contains(&access_key.len()) || !access_key.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(StartError::Config(format!(
            "access key id {access_key:?}: AWS access key ids are 16 to 128 letters and digits"
        )));
    }
    Ok(())
}

/// The mock's clock: the system clock, shifted by a fixed offset (tests move it to age documents).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    offset_ms: i64,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// The system clock plus `secs` (negative: behind).
    pub fn shifted_by_secs(secs: i64) -> Self {
        Self { offset_ms: secs.saturating_mul(1000) }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        let system = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        u64::try_from(system.saturating_add(self.offset_ms)).unwrap_or(0)
    }

    /// Seconds since the Unix epoch, as KMS dates things (JSON numbers with a fraction).
    pub fn now_secs(&self) -> f64 {
        // u64 ms → f64 loses nothing below 2^53 ms (year 287396).
        #[allow(clippy::cast_precision_loss)]
        let ms = self.now_ms() as f64;
        ms / 1000.0
    }
}

/// Why the mock could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The state directory could not be created.
    #[error("state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key store could not be loaded.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The TLS identity could not be made or loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Binding the listener failed.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// The mock KMS, running.
#[derive(Debug)]
pub struct Handle {
    /// `https://127.0.0.1:PORT` (TCP) or `unix://PATH`.
    pub endpoint: String,
    /// The bound address.
    pub address: Address,
    /// The CA certificate (PEM) that clients must trust.
    pub ca_pem: String,
    /// Path of `ca.pem`.
    pub ca_file: PathBuf,
    /// The region it serves.
    pub region: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// Stops accepting and waits for the accept loop to end (the port is then free for a restart).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// The ready-file JSON: `{"endpoint", "ca_file", "region"}`.
    pub fn ready_json(&self) -> serde_json::Value {
        serde_json::json!({"endpoint": self.endpoint, "ca_file": self.ca_file, "region": self.region})
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The mock KMS.
#[derive(Debug)]
pub struct MockKms;

impl MockKms {
    /// Loads the state, binds, and serves in a background task of the current Tokio runtime.
    pub async fn start(config: Config) -> Result<Handle, StartError> {
        if config.attestation_roots.is_empty() {
            return Err(StartError::Config("at least one attestation root is required".into()));
        }
        if config.account.len() != 12 || !config.account.bytes().all(|c| c.is_ascii_digit()) {
            return Err(StartError::Config("the account must be 12 digits".into()));
        }
        if config.region.is_empty() || !config.region.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
            return Err(StartError::Config("the region must be letters, digits and dashes".into()));
        }
        for access_key in config.principals.keys() {
            check_access_key(access_key)?;
        }
        // With principals, every accepted access key needs one, the verified one included.
        if let Some((verified, _)) = &config.credentials
            && !config.principals.is_empty()
            && !config.principals.contains_key(verified)
        {
            return Err(StartError::Config(format!(
                "the access key whose signatures are verified ({verified}) has no principal, while others do"
            )));
        }
        if config.principals.is_empty() {
            tracing::warn!(account = %config.account, "no principals configured: every caller is the account root");
        }
        create_state_dir(&config.state_dir)?;
        // Absolute, so that the ready file's `ca_file` means the same thing to every reader.
        let state_dir = std::fs::canonicalize(&config.state_dir)
            .map_err(|source| StartError::StateDir { path: config.state_dir.clone(), source })?;
        let config = Config { state_dir, ..config };
        let mut store = store::KeyStore::open(&config.state_dir.join("keys.json"))?;
        for id in &config.fixture_keys {
            server::ensure_fixture_key(&mut store, id, &config.account, config.clock.now_secs())
                .map_err(|e| StartError::Config(format!("fixture key {id:?}: {e}")))?;
        }
        let identity = tls::load_or_create(&config.state_dir, &config.hostnames)?;
        let listener = Listener::bind(&config.listen)
            .await
            .map_err(|source| StartError::Listen { address: config.listen.to_string(), source })?;
        let address = listener
            .local_address()
            .map_err(|source| StartError::Listen { address: config.listen.to_string(), source })?;
        let endpoint = match &address {
            Address::Tcp(hp) => format!("https://{hp}"),
            other => other.to_string(),
        };
        tracing::info!(%endpoint, keys = store.keys().len(), "mock KMS listening (NOT AWS: for off-hardware runs only)");
        let state = Arc::new(server::State {
            region: config.region.clone(),
            account: config.account.clone(),
            store: Mutex::new(store),
            roots: config.attestation_roots.clone(),
            verifier: Verifier::new(),
            credentials: config.credentials.clone(),
            principals: config.principals.clone(),
            clock: config.clock,
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(identity.config.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(serve(listener, acceptor, state, rx));
        Ok(Handle {
            endpoint,
            address,
            ca_pem: identity.ca_pem,
            ca_file: config.state_dir.join("ca.pem"),
            region: config.region,
            shutdown: Some(tx),
            task,
        })
    }
}

fn create_state_dir(dir: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| StartError::StateDir { path: dir.to_owned(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err)
}

async fn serve(
    listener: Listener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: server::Shared,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_CONNECTIONS {
            tracing::warn!(%peer, "too many connections; closing this one");
            continue;
        }
        let acceptor = acceptor.clone();
        let state = state.clone();
        connections.spawn(async move {
            let tls = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
            // A client that stalls mid-headers is dropped after hyper's header timeout (30 s).
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    connections.shutdown().await;
}

fn respond(status: u16, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"));
    response
}

fn error_response(e: &KmsError) -> Response<Full<Bytes>> {
    let mut response = respond(e.status, &e.body());
    if let Ok(v) = hyper::header::HeaderValue::from_str(e.name) {
        response.headers_mut().insert("x-amzn-ErrorType", v);
    }
    response
}

async fn handle(
    state: server::Shared,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    Ok(match handle_inner(&state, req).await {
        Ok(v) => respond(200, &v),
        Err(e) => {
            if e.status >= 500 {
                tracing::error!(error = %e, "internal error");
            }
            error_response(&e)
        }
    })
}

async fn handle_inner(
    state: &server::State,
    req: Request<hyper::body::Incoming>,
) -> Result<serde_json::Value, KmsError> {
    let (parts, body) = req.into_parts();
    if parts.method != hyper::Method::POST || parts.uri.path() != "/" {
        return Err(KmsError::new("UnknownOperationException", "the KMS protocol is POST / with X-Amz-Target"));
    }
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let target = header("x-amz-target")
        .and_then(|t| t.strip_prefix("TrentService."))
        .ok_or_else(|| KmsError::new("UnknownOperationException", "X-Amz-Target must be TrentService.OPERATION"))?
        .to_owned();
    match header("content-type").map(|c| c.split(';').next().unwrap_or("").trim()) {
        Some("application/x-amz-json-1.1" | "application/x-amz-json-1.0") => {}
        _ => return Err(KmsError::validation("Content-Type must be application/x-amz-json-1.1")),
    }
    let sig = sigv4::check_authorization(header("authorization"), &state.region)?;
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|_| KmsError::new("SerializationException", format!("the body must be at most {MAX_BODY} bytes")))?
        .to_bytes();
    if let Some((access_key, secret)) = &state.credentials {
        sigv4::verify_signature(&sig, &parts, &body, &state.region, access_key, secret)?;
    }
    let caller = state.caller(sig.access_key())?;
    let request: serde_json::Value = if body.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| KmsError::new("SerializationException", format!("the body is not JSON: {e}")))?
    };
    let result = server::dispatch(state, &caller, &target, &request);
    match &result {
        Ok(_) => tracing::debug!(operation = %target, caller = %caller, "ok"),
        Err(e) => tracing::info!(operation = %target, caller = %caller, error = e.name, "refused"),
    }
    result
}

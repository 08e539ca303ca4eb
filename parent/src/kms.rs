//! KMS support on the parent: a byte relay to allow-listed KMS endpoints, and AWS credentials for the
//! enclave.
//!
//! The parent is untrusted, and this module is built so that it does not need to be trusted:
//!
//! - **Relay.** The enclave's TLS session with KMS runs inside the enclave; the parent only copies the
//!   encrypted bytes ([`KmsServices::relay`]). It cannot read the data key or forge KMS's answer. It refuses
//!   (and logs) any endpoint not on its `--kms-endpoint` allow-list, so a compromised enclave image cannot use
//!   the parent as an open proxy; connect and idle timeouts bound every relay.
//! - **Credentials.** The instance role's temporary credentials, from IMDSv2 (token first, then the role's
//!   credentials), or off hardware from the environment. They are cached and refreshed well before they
//!   expire. Credentials are not secret from the parent (it can read IMDS itself); what protects the data
//!   keys is the key policy's attestation conditions, which only the enclave can satisfy. They are still
//!   never logged.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use veil_protocol::message::{ErrorKind, ErrorReply, HostResponse};
use veil_runtime::conn::FrameWriter;
use veil_runtime::transport::Stream;
use zeroize::Zeroizing;

/// Where the parent gets AWS credentials for the enclave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CredentialsSource {
    /// The instance role, through IMDSv2 (on EC2).
    Imds,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally AWS_SESSION_TOKEN (off hardware).
    Env,
    /// None: the enclave's credential requests are refused.
    None,
    /// Fixed credentials given in code ([`KmsServices::with_static_credentials`]), for tests and embedding;
    /// not offered on the command line, where a secret would show in the process list.
    #[value(skip)]
    Static,
}

/// The parent's KMS flags (flattened into `veil-parent`'s arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct KmsRelayArgs {
    /// A KMS endpoint the enclave may reach through the parent, as HOST:PORT (repeat for more), e.g.
    /// kms.eu-west-1.amazonaws.com:443; or HOST:PORT=ADDRESS:PORT to connect the name the enclave asks for
    /// to another address (a VPC endpoint, or the mock KMS off hardware). TLS ends in the enclave, which
    /// checks the certificate for the name it asked for, so a route can only lead to something that holds
    /// that name's certificate. Without any, the KMS relay is disabled.
    #[arg(long = "kms-endpoint", env = "VEIL_KMS_ENDPOINTS", value_delimiter = ',')]
    pub kms_endpoints: Vec<String>,
    /// Where AWS credentials for the enclave come from: imds (the instance role, on EC2), env (the
    /// AWS_* environment variables, off hardware) or none.
    #[arg(long = "credentials", env = "VEIL_CREDENTIALS", value_enum, default_value = "none")]
    pub credentials: CredentialsSource,
    /// Base URL of the instance metadata service (IMDSv2).
    #[arg(long = "imds-url", env = "VEIL_IMDS_URL", default_value = "http://169.254.169.254")]
    pub imds_url: String,
    /// Milliseconds to wait when connecting to a KMS endpoint for the enclave.
    #[arg(long = "kms-connect-timeout-ms", default_value_t = 5000)]
    pub kms_connect_timeout_ms: u64,
    /// Seconds a KMS relay may sit idle (no byte either way) before it is closed.
    #[arg(long = "kms-idle-timeout-secs", default_value_t = 60)]
    pub kms_idle_timeout_secs: u64,
}

/// Validated KMS settings.
#[derive(Debug, Clone)]
pub struct KmsRelayConfig {
    /// Allowed endpoints, `host:port`, host lower-cased.
    pub endpoints: Vec<String>,
    /// Where each allowed endpoint is connected to, when not to itself.
    pub routes: std::collections::HashMap<String, String>,
    pub credentials: CredentialsSource,
    /// IMDS base URL (scheme http, host, optional port; no path).
    pub imds: http::Uri,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KmsConfigError(String);

impl KmsRelayConfig {
    /// Validates the flags. Endpoints must be `host:port` with a DNS name or IP and a non-zero port.
    pub fn from_args(args: &KmsRelayArgs) -> Result<Self, KmsConfigError> {
        let mut endpoints = Vec::new();
        let mut routes = std::collections::HashMap::new();
        for spec in &args.kms_endpoints {
            let bad = || {
                KmsConfigError(format!(
                    "--kms-endpoint {spec:?}: expected HOST:PORT (e.g. kms.eu-west-1.amazonaws.com:443) or \
                     HOST:PORT=ADDRESS:PORT"
                ))
            };
            let (name, to) = match spec.split_once('=') {
                Some((n, t)) => (n, Some(normalize_endpoint(t).ok_or_else(bad)?)),
                None => (spec.as_str(), None),
            };
            let e = normalize_endpoint(name).ok_or_else(bad)?;
            if let Some(to) = to {
                routes.insert(e.clone(), to);
            }
            if !endpoints.contains(&e) {
                endpoints.push(e);
            }
        }
        let imds: http::Uri =
            args.imds_url.parse().map_err(|e| KmsConfigError(format!("--imds-url {:?}: {e}", args.imds_url)))?;
        if imds.scheme_str() != Some("http") || imds.host().is_none() || !imds.path().trim_end_matches('/').is_empty() {
            return Err(KmsConfigError(format!("--imds-url {:?}: expected http://HOST[:PORT]", args.imds_url)));
        }
        Ok(Self {
            endpoints,
            routes,
            credentials: args.credentials,
            imds,
            connect_timeout: Duration::from_millis(args.kms_connect_timeout_ms.max(1)),
            idle_timeout: Duration::from_secs(args.kms_idle_timeout_secs.max(1)),
        })
    }
}

/// `host:port`, lower-cased host, or `None` when it is not that shape.
fn normalize_endpoint(e: &str) -> Option<String> {
    let (host, port) = e.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    (host_ok && port != 0).then(|| format!("{}:{port}", host.to_ascii_lowercase()))
}

/// Relays running at once, at most (the enclave needs one per KMS call in flight).
const MAX_RELAYS: usize = 32;

/// Refresh credentials this long before they expire (IMDS rotates them well before; the enclave refreshes
/// its own copy five minutes before).
const CREDENTIALS_REFRESH_MARGIN: Duration = Duration::from_secs(15 * 60);

/// The running KMS services: the relay and the credentials cache.
#[derive(Debug)]
pub struct KmsServices {
    config: KmsRelayConfig,
    relays: Arc<tokio::sync::Semaphore>,
    cached: tokio::sync::Mutex<Option<Creds>>,
    fixed: Option<Creds>,
}

#[derive(Clone)]
struct Creds {
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
    expiration: Option<u64>,
}

impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Creds").field("expiration", &self.expiration).finish_non_exhaustive()
    }
}

/// Why credentials could not be had. Never carries credential values.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("this parent serves no AWS credentials (--credentials none)")]
    NotConfigured,
    #[error("AWS credentials: {0} is not set")]
    MissingEnv(&'static str),
    #[error("instance metadata service: {0}")]
    Imds(String),
}

impl KmsServices {
    pub fn new(config: KmsRelayConfig) -> Self {
        Self {
            config,
            relays: Arc::new(tokio::sync::Semaphore::new(MAX_RELAYS)),
            cached: tokio::sync::Mutex::new(None),
            fixed: None,
        }
    }

    /// As [`KmsServices::new`], serving these fixed credentials (no expiry) whatever `--credentials` said.
    pub fn with_static_credentials(
        mut config: KmsRelayConfig,
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
    ) -> Self {
        config.credentials = CredentialsSource::Static;
        let fixed = Creds {
            access_key_id,
            secret_access_key: Zeroizing::new(secret_access_key),
            session_token: session_token.map(Zeroizing::new),
            expiration: None,
        };
        Self { fixed: Some(fixed), ..Self::new(config) }
    }

    /// The validated configuration.
    pub fn config(&self) -> &KmsRelayConfig {
        &self.config
    }

    /// Answers a `HostRequest::Credentials`.
    pub async fn credentials_answer(&self) -> HostResponse {
        match self.credentials().await {
            Ok(c) => HostResponse::Credentials {
                access_key_id: c.access_key_id.clone(),
                secret_access_key: c.secret_access_key.to_string(),
                session_token: c.session_token.as_ref().map(|t| t.to_string()),
                expiration: c.expiration,
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot serve AWS credentials to the enclave");
                let kind = if matches!(e, CredentialsError::NotConfigured) {
                    ErrorKind::Unavailable
                } else {
                    ErrorKind::Internal
                };
                HostResponse::Error(ErrorReply::new(kind, e.to_string()))
            }
        }
    }

    async fn credentials(&self) -> Result<Creds, CredentialsError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            let fresh =
                c.expiration.is_none_or(|exp| exp > now_secs().saturating_add(CREDENTIALS_REFRESH_MARGIN.as_secs()));
            if fresh && self.config.credentials == CredentialsSource::Imds {
                return Ok(c.clone());
            }
        }
        let creds = match self.config.credentials {
            CredentialsSource::None => return Err(CredentialsError::NotConfigured),
            CredentialsSource::Static => self.fixed.clone().ok_or(CredentialsError::NotConfigured)?,
            // The environment is read every time: cheap, and a changed variable takes effect.
            CredentialsSource::Env => from_env()?,
            CredentialsSource::Imds => {
                let c = tokio::time::timeout(Duration::from_secs(10), imds_credentials(&self.config.imds))
                    .await
                    .map_err(|_| CredentialsError::Imds("no answer within 10 s".into()))??;
                tracing::info!(expiration = ?c.expiration, "AWS credentials fetched from IMDSv2");
                c
            }
        };
        *cached = Some(creds.clone());
        Ok(creds)
    }

    /// Serves a `HostRequest::KmsRelay` on `stream` (request id `id`): refuses endpoints not on the
    /// allow-list, otherwise connects, answers `RelayReady` and copies bytes both ways until either side
    /// closes or the relay idles out. Consumes the connection.
    pub async fn relay(&self, mut stream: Stream, peer: &str, id: u64, endpoint: &str, max_frame: usize) {
        let refuse = |kind, message: String| HostResponse::Error(ErrorReply::new(kind, message));
        let allowed = normalize_endpoint(endpoint).filter(|e| self.config.endpoints.contains(e));
        let answer = match allowed {
            None => {
                let shown: String = endpoint.chars().filter(|c| !c.is_control()).take(100).collect();
                tracing::warn!(%peer, endpoint = %shown, "KMS relay refused: endpoint not on the allow-list");
                Err(refuse(
                    ErrorKind::BadRequest,
                    if self.config.endpoints.is_empty() {
                        "this parent relays no KMS traffic (no --kms-endpoint configured)".to_owned()
                    } else {
                        format!("KMS endpoint {shown:?} is not on this parent's allow-list")
                    },
                ))
            }
            Some(target) => match Arc::clone(&self.relays).try_acquire_owned() {
                Err(_) => {
                    Err(refuse(ErrorKind::Unavailable, format!("too many KMS relays open (at most {MAX_RELAYS})")))
                }
                Ok(permit) => {
                    let address = self.config.routes.get(&target).unwrap_or(&target).clone();
                    match tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(&address)).await {
                        Ok(Ok(upstream)) => Ok((upstream, permit, target)),
                        Ok(Err(e)) => {
                            tracing::warn!(%peer, endpoint = %target, error = %e, "KMS relay: connect failed");
                            Err(refuse(ErrorKind::Unavailable, format!("cannot connect to {target}: {e}")))
                        }
                        Err(_) => {
                            tracing::warn!(%peer, endpoint = %target, "KMS relay: connect timed out");
                            Err(refuse(
                                ErrorKind::Unavailable,
                                format!("no connection to {target} within {:?}", self.config.connect_timeout),
                            ))
                        }
                    }
                }
            },
        };
        let (upstream, _permit, target) = match answer {
            Ok(ok) => ok,
            Err(reply) => {
                let _ = FrameWriter::new(&mut stream, max_frame).send(id, &reply, b"").await;
                return;
            }
        };
        if FrameWriter::new(&mut stream, max_frame).send(id, &HostResponse::RelayReady, b"").await.is_err() {
            return;
        }
        let _ = upstream.set_nodelay(true);
        let started = Instant::now();
        let result = pipe(stream, upstream, self.config.idle_timeout).await;
        match result {
            Ok((up, down)) => tracing::info!(%peer, endpoint = %target, bytes_to_kms = up, bytes_from_kms = down,
                elapsed_ms = started.elapsed().as_millis() as u64, "KMS relay closed"),
            Err(e) => tracing::info!(%peer, endpoint = %target, error = %e,
                elapsed_ms = started.elapsed().as_millis() as u64, "KMS relay ended"),
        }
    }
}

/// Copies both ways (`tokio::io::copy_bidirectional`) until both sides close, or until nothing has moved
/// for `idle`.
async fn pipe(a: Stream, b: TcpStream, idle: Duration) -> std::io::Result<(u64, u64)> {
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut a = Activity { inner: a, epoch, last: Arc::clone(&last) };
    let mut b = Activity { inner: b, epoch, last: Arc::clone(&last) };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let tick = (idle / 4).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            r = &mut copy => return r,
            _ = tokio::time::sleep(tick) => {
                let quiet = epoch.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if quiet >= idle {
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("idle for {idle:?}")));
                }
            }
        }
    }
}

/// A stream that records when bytes last moved through it.
struct Activity<S> {
    inner: S,
    epoch: Instant,
    last: Arc<AtomicU64>,
}

impl<S> Activity<S> {
    fn touch(&self) {
        self.last.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn from_env() -> Result<Creds, CredentialsError> {
    let get = |name: &'static str| std::env::var(name).ok().filter(|v| !v.is_empty());
    Ok(Creds {
        access_key_id: get("AWS_ACCESS_KEY_ID").ok_or(CredentialsError::MissingEnv("AWS_ACCESS_KEY_ID"))?,
        secret_access_key: Zeroizing::new(
            get("AWS_SECRET_ACCESS_KEY").ok_or(CredentialsError::MissingEnv("AWS_SECRET_ACCESS_KEY"))?,
        ),
        session_token: get("AWS_SESSION_TOKEN").map(Zeroizing::new),
        expiration: None,
    })
}

/// Largest IMDS answer read (a credentials document is about 1.5 KiB).
const MAX_IMDS_BODY: usize = 64 * 1024;

/// IMDSv2: a session token (PUT), the role name, then the role's credentials.
async fn imds_credentials(base: &http::Uri) -> Result<Creds, CredentialsError> {
    let token = imds_call(base, http::Method::PUT, "/latest/api/token", None).await?;
    let token = Zeroizing::new(String::from_utf8(token.to_vec()).map_err(|_| imds_err("the token is not text"))?);
    let roles = imds_call(base, http::Method::GET, "/latest/meta-data/iam/security-credentials/", Some(&token)).await?;
    let roles = String::from_utf8(roles.to_vec()).map_err(|_| imds_err("the role list is not text"))?;
    let role = roles
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or_else(|| imds_err("this instance has no IAM role"))?;
    if !role.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b)) || role.len() > 128 {
        return Err(imds_err("the role name is not a valid IAM role name"));
    }
    let doc = Zeroizing::new(
        imds_call(base, http::Method::GET, &format!("/latest/meta-data/iam/security-credentials/{role}"), Some(&token))
            .await?
            .to_vec(),
    );
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Doc {
        code: Option<String>,
        access_key_id: String,
        secret_access_key: String,
        token: Option<String>,
        expiration: Option<String>,
    }
    let doc: Doc = serde_json::from_slice(&doc).map_err(|_| imds_err("the credentials document does not parse"))?;
    let secret = Zeroizing::new(doc.secret_access_key);
    let token = doc.token.map(Zeroizing::new);
    if let Some(code) = &doc.code
        && code != "Success"
    {
        return Err(imds_err(&format!("credentials code {:?}", code.chars().take(40).collect::<String>())));
    }
    let expiration = match &doc.expiration {
        None => None,
        Some(s) => Some(parse_rfc3339_utc(s).ok_or_else(|| imds_err("the expiration is not an RFC 3339 UTC time"))?),
    };
    Ok(Creds { access_key_id: doc.access_key_id, secret_access_key: secret, session_token: token, expiration })
}

fn imds_err(m: &str) -> CredentialsError {
    CredentialsError::Imds(m.to_owned())
}

async fn imds_call(
    base: &http::Uri,
    method: http::Method,
    path: &str,
    token: Option<&str>,
) -> Result<bytes::Bytes, CredentialsError> {
    let host = base.host().ok_or_else(|| imds_err("no host"))?;
    let port = base.port_u16().unwrap_or(80);
    let tcp =
        TcpStream::connect((host, port)).await.map_err(|e| imds_err(&format!("cannot connect to {base}: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(tcp))
        .await
        .map_err(|e| imds_err(&e.to_string()))?;
    let driver = tokio::spawn(conn);
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, base.authority().map_or(host, |a| a.as_str()))
        .header(http::header::CONNECTION, "close");
    request = match token {
        // Six hours: the longest IMDS allows; one token serves the three calls anyway.
        None => request.header("X-aws-ec2-metadata-token-ttl-seconds", "21600"),
        Some(t) => request.header("X-aws-ec2-metadata-token", t),
    };
    let request = request.body(Empty::new()).map_err(|e| imds_err(&e.to_string()))?;
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| imds_err(&e.to_string()))?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_IMDS_BODY)
            .collect()
            .await
            .map_err(|e| imds_err(&format!("reading the answer: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(imds_err(&format!("{path} answered HTTP {}", status.as_u16())));
        }
        Ok(body)
    }
    .await;
    driver.abort();
    result
}

/// IMDS's `Expiration` (`2026-11-25T04:41:48Z`; any RFC 3339 time) as Unix seconds.
fn parse_rfc3339_utc(s: &str) -> Option<u64> {
    veil_protocol::time::parse_rfc3339(s).ok().map(|since_epoch| since_epoch.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_utc("2026-11-25T04:41:48Z"), Some(1_795_581_708));
        assert_eq!(parse_rfc3339_utc("2000-02-29T12:00:00.123Z"), Some(951_825_600));
        for bad in [
            "",
            "2026-11-25",
            "2026-11-25T04:41:48",
            "2026-13-01T00:00:00Z",
            "x026-11-25T04:41:48Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_rfc3339_utc(bad), None, "{bad}");
        }
        // IMDS writes UTC, but an offset is still the same instant.
        assert_eq!(parse_rfc3339_utc("2026-11-25T05:41:48+01:00"), Some(1_795_581_708));
    }

    #[test]
    fn endpoints_are_normalized_and_checked() {
        assert_eq!(
            normalize_endpoint("KMS.eu-west-1.amazonaws.com:443").as_deref(),
            Some("kms.eu-west-1.amazonaws.com:443")
        );
        for bad in ["kms.eu-west-1.amazonaws.com", ":443", "host:0", "host:99999", "ho st:443", "a/b:443", "[::1]:443"]
        {
            assert_eq!(normalize_endpoint(bad), None, "{bad}");
        }
    }
}

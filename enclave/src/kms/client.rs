//! [`KmsClient`]: KMS `Decrypt` with `Recipient`, from inside the enclave.
//!
//! Each call makes a fresh attestation document carrying the enclave's RSA public key, sends it with the
//! request, and unwraps the `CiphertextForRecipient` KMS returns: the data key never exists in plaintext
//! outside the enclave, and KMS releases it only if the document's PCRs satisfy the key policy.
//!
//! Retries: the SDK's standard mode (exponential backoff with full jitter, a retry token bucket) retries
//! throttling, 5xx answers and transient I/O failures, at most `--kms-max-attempts` times; the whole call,
//! retries included, is bounded by `--kms-timeout-secs`, so "KMS down" becomes an error in bounded time.
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{self, ProvideCredentials, error::CredentialsError, future};
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::config::{BehaviorVersion, IdentityCache, Region, SharedCredentialsProvider, SharedHttpClient};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::operation::decrypt::DecryptError;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeyEncryptionMechanism, RecipientInfo};
use veil_protocol::error::clip;
use veil_protocol::message::ErrorKind;
use veil_runtime::transport::Address;
use zeroize::Zeroizing;

use super::cms::{self, CmsError};
use super::connector::RelayHttpClient;
use super::parent::{self, ParentError};
use super::rsa_key::{RecipientKey, RsaKeyError};
use crate::nsm::{Nsm, NsmError};

/// Credentials are fetched again when they expire within this margin (the instance role's rotate hours
/// before expiry; five minutes covers a slow KMS call with retries).
pub const CREDENTIALS_REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Largest ciphertext blob accepted from a client (KMS ciphertexts are at most 6 KiB).
pub const MAX_CIPHERTEXT_BLOB: usize = 6144;

/// The enclave's KMS client settings: from the image's configuration (`crate::config::KmsSettings`), plus,
/// in development builds only, the mock KMS's CA.
#[derive(Debug, Clone)]
pub struct KmsConfig {
    /// AWS region of the KMS keys, e.g. eu-west-1.
    pub region: String,
    /// KMS endpoint as HOST:PORT (default kms.REGION.amazonaws.com:443). The parent relays only to the
    /// endpoints on its own --kms-endpoint allow-list; TLS runs inside the enclave either way.
    pub endpoint: Option<String>,
    /// DEVELOPMENT BUILDS AND THE MOCK NSM ONLY: an extra CA certificate (PEM) to trust for the endpoint,
    /// the mock KMS's. Refused by production builds, and with the real NSM: a production enclave trusts
    /// only the pinned Amazon roots for KMS (see `roots`).
    pub ca_file: Option<PathBuf>,
    /// Upper bound on one KMS call, retries included, in seconds.
    pub timeout_secs: u64,
    /// Attempts per KMS call (1 = no retries); throttling, 5xx and I/O failures are retried with jittered
    /// exponential backoff.
    pub max_attempts: u32,
}

impl KmsConfig {
    /// A configuration for `region` with defaults for the rest.
    pub fn new(region: impl Into<String>) -> Self {
        Self { region: region.into(), endpoint: None, ca_file: None, timeout_secs: 20, max_attempts: 4 }
    }

    /// The client settings for the image's configuration.
    pub fn from_settings(k: &crate::config::KmsSettings) -> Self {
        Self {
            region: k.region.clone(),
            endpoint: Some(k.endpoint.clone()),
            ca_file: None,
            timeout_secs: k.timeout_secs,
            max_attempts: k.max_attempts,
        }
    }
}

/// Why a KMS operation failed. `Display` is what a client may see: clear, and free of secrets (no key
/// material, no credentials, no plaintext; AWS's own denial messages name the failed condition, not data).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// The KMS client is misconfigured (startup).
    #[error("KMS client configuration: {0}")]
    Config(String),
    /// KMS denied access: typically the key policy's attestation conditions (PCRs) do not match.
    #[error("KMS refused the key: {0}")]
    Refused(String),
    /// The ciphertext, key or encryption context do not go together.
    #[error("the data key does not decrypt under this key and encryption context")]
    InvalidCiphertext,
    /// KMS cannot use the key (disabled, not found, wrong usage, pending deletion, ...).
    #[error("KMS cannot use the key: {0}")]
    KeyUnusable(String),
    /// The request itself was refused by the enclave before any KMS call.
    #[error("invalid KMS request: {0}")]
    BadRequest(String),
    /// Throttling, 5xx, timeouts, network or relay failures, after the bounded retries.
    #[error("KMS unavailable, try again")]
    Unavailable,
    /// The parent gave no usable credentials.
    #[error("no usable AWS credentials for KMS (from the parent's host services)")]
    Credentials,
    /// The NSM could not produce an attestation document.
    #[error("could not create an attestation document for KMS: {0}")]
    Attestation(#[from] NsmError),
    /// KMS's answer did not open with the enclave's key, or had the wrong shape.
    #[error("KMS's answer could not be used: {0}")]
    Answer(String),
}

impl KmsError {
    /// A copy of a definitive refusal (the key policy, the ciphertext or the key itself): what the enclave
    /// may remember for a while instead of asking KMS again. Transient failures give `None`.
    pub fn definitive(&self) -> Option<KmsError> {
        match self {
            KmsError::Refused(m) => Some(KmsError::Refused(m.clone())),
            KmsError::InvalidCiphertext => Some(KmsError::InvalidCiphertext),
            KmsError::KeyUnusable(m) => Some(KmsError::KeyUnusable(m.clone())),
            KmsError::BadRequest(m) => Some(KmsError::BadRequest(m.clone())),
            _ => None,
        }
    }

    /// How this error maps onto the enclave protocol's error kinds.
    pub fn kind(&self) -> ErrorKind {
        match self {
            KmsError::Refused(_) => ErrorKind::Forbidden,
            KmsError::InvalidCiphertext | KmsError::KeyUnusable(_) | KmsError::BadRequest(_) => ErrorKind::BadRequest,
            KmsError::Unavailable | KmsError::Credentials => ErrorKind::Unavailable,
            KmsError::Config(_) | KmsError::Attestation(_) | KmsError::Answer(_) => ErrorKind::Internal,
        }
    }
}

impl From<RsaKeyError> for KmsError {
    fn from(e: RsaKeyError) -> Self {
        KmsError::Config(e.to_string())
    }
}

/// The enclave's KMS client. Cheap to share (`Arc` it); calls may run concurrently.
#[derive(Debug)]
pub struct KmsClient {
    sdk: aws_sdk_kms::Client,
    key: Arc<RecipientKey>,
    nsm: Arc<dyn Nsm>,
    endpoint: String,
}

impl KmsClient {
    /// Builds the client: generates the RSA recipient key (on a blocking thread), sets up TLS roots, the
    /// relay connector and the parent credentials provider. Makes no network call.
    pub async fn new(config: &KmsConfig, host_addr: Address, nsm: Arc<dyn Nsm>) -> Result<Self, KmsError> {
        let key = tokio::task::spawn_blocking(RecipientKey::generate)
            .await
            .map_err(|_| KmsError::Config("RSA key generation did not finish".into()))??;
        Self::with_recipient_key(config, host_addr, nsm, key)
    }

    /// As [`KmsClient::new`], with a given recipient key: for tests with fixed vectors. Production code
    /// uses `new`, whose key is generated inside the enclave.
    pub fn with_recipient_key(
        config: &KmsConfig,
        host_addr: Address,
        nsm: Arc<dyn Nsm>,
        key: RecipientKey,
    ) -> Result<Self, KmsError> {
        let region = config.region.clone();
        if region.is_empty() || region.len() > 32 || !region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(KmsError::Config(format!("{region:?} is not an AWS region name")));
        }
        let endpoint = config.endpoint.clone().unwrap_or_else(|| format!("kms.{region}.amazonaws.com:443"));
        let (host, port) = split_endpoint(&endpoint)?;
        if config.ca_file.is_some() && !(cfg!(feature = "dev") && nsm.is_mock()) {
            return Err(KmsError::Config(
                "an extra KMS CA is for the mock KMS, in development builds with the mock NSM only; a production \
                 enclave trusts only the pinned Amazon roots for KMS"
                    .into(),
            ));
        }
        let tls = tls_config(config.ca_file.as_deref())?;
        let http = RelayHttpClient::new(host_addr.clone(), endpoint.clone(), host.clone(), tls);
        let url = if port == 443 { format!("https://{host}") } else { format!("https://{host}:{port}") };
        let total = Duration::from_secs(config.timeout_secs);
        let sdk_config = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region))
            .endpoint_url(url)
            .http_client(SharedHttpClient::new(http))
            .credentials_provider(SharedCredentialsProvider::new(ParentCredentialsProvider::new(host_addr)))
            // Our provider caches and refreshes ahead of expiry itself; a second cache would hide that.
            .identity_cache(IdentityCache::no_cache())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(config.max_attempts)
                    .with_initial_backoff(Duration::from_millis(100))
                    .with_max_backoff(Duration::from_secs(2)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5).min(total))
                    .operation_attempt_timeout(Duration::from_secs(10).min(total))
                    .operation_timeout(total)
                    .build(),
            )
            .build();
        Ok(Self { sdk: aws_sdk_kms::Client::from_conf(sdk_config), key: Arc::new(key), nsm, endpoint })
    }

    /// The recipient public key (SubjectPublicKeyInfo DER) that goes into attestation documents.
    pub fn recipient_public_key(&self) -> &[u8] {
        self.key.public_key_spki_der()
    }

    /// The KMS endpoint (`host:port`) this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Decrypts a KMS ciphertext (an encrypted data key) with `Recipient`: returns the plaintext, zeroized
    /// on drop. `key_id` is optional for symmetric keys (the ciphertext names its key).
    pub async fn decrypt_data_key(
        &self,
        ciphertext_blob: &[u8],
        encryption_context: &BTreeMap<String, String>,
        key_id: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        if ciphertext_blob.is_empty() || ciphertext_blob.len() > MAX_CIPHERTEXT_BLOB {
            return Err(KmsError::BadRequest(format!(
                "the encrypted data key is {} bytes (KMS ciphertexts are 1 to {MAX_CIPHERTEXT_BLOB})",
                ciphertext_blob.len()
            )));
        }
        if let Some(k) = key_id
            && (k.is_empty() || k.len() > 2048)
        {
            return Err(KmsError::BadRequest("the key id is empty or longer than 2048 characters".into()));
        }
        // A fresh document per call: KMS checks its freshness, and the NSM is cheap.
        let nsm = Arc::clone(&self.nsm);
        let key = Arc::clone(&self.key);
        let document =
            tokio::task::spawn_blocking(move || nsm.attestation(None, None, Some(key.public_key_spki_der())))
                .await
                .map_err(|_| KmsError::Answer("attestation task failed".into()))??;
        let recipient = RecipientInfo::builder()
            .key_encryption_algorithm(KeyEncryptionMechanism::RsaesOaepSha256)
            .attestation_document(Blob::new(document))
            .build();
        let context: HashMap<String, String> = encryption_context.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let answer = self
            .sdk
            .decrypt()
            .ciphertext_blob(Blob::new(ciphertext_blob.to_vec()))
            .set_encryption_context((!context.is_empty()).then_some(context))
            .set_key_id(key_id.map(str::to_owned))
            .recipient(recipient)
            .send()
            .await
            .map_err(map_sdk_error)?;
        if let Some(plain) = answer.plaintext {
            // With a Recipient, KMS never returns the plaintext; an answer that does is not from KMS's
            // attested path, and its key is not used.
            let mut plain = plain.into_inner();
            zeroize::Zeroize::zeroize(&mut plain);
            return Err(KmsError::Answer("KMS returned a plaintext key instead of CiphertextForRecipient".into()));
        }
        let blob = answer
            .ciphertext_for_recipient
            .ok_or_else(|| KmsError::Answer("no CiphertextForRecipient in KMS's answer".into()))?;
        let key = Arc::clone(&self.key);
        tokio::task::spawn_blocking(move || cms::unwrap(blob.as_ref(), &key))
            .await
            .map_err(|_| KmsError::Answer("unwrap task failed".into()))?
            .map_err(|e: CmsError| {
                tracing::warn!(error = %e, "CiphertextForRecipient could not be unwrapped");
                KmsError::Answer("the CiphertextForRecipient does not open with this enclave's key".into())
            })
    }
}

fn split_endpoint(endpoint: &str) -> Result<(String, u16), KmsError> {
    let bad = || KmsError::Config(format!("--kms-endpoint {endpoint:?} is not HOST:PORT"));
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if !ok || port == 0 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

fn tls_config(extra_ca: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, KmsError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = super::roots::kms_roots().map_err(KmsError::Config)?;
    if let Some(path) = extra_ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| KmsError::Config(format!("--kms-ca {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(KmsError::Config(format!("--kms-ca {}: no certificate in the file", path.display())));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| KmsError::Config(format!("--kms-ca {}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| KmsError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Maps the SDK's error onto [`KmsError`]. The detail goes to the log (it names codes and statuses, never
/// secrets); the client sees the short, fixed wording.
fn map_sdk_error(e: SdkError<DecryptError, aws_sdk_kms::config::http::HttpResponse>) -> KmsError {
    // Identity resolution (our parent credentials provider) fails before anything is sent; the SDK wraps
    // that error, so look for it down the source chain.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if err.is::<CredentialsError>() {
            tracing::warn!(error = %aws_smithy_types::error::display::DisplayErrorContext(&e), "no credentials for KMS");
            return KmsError::Credentials;
        }
        source = err.source();
    }
    match &e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            let status = service.raw().status().as_u16();
            let code = err.code().unwrap_or("");
            let message = clip(err.message().unwrap_or(""), 300);
            tracing::warn!(status, code, message = %message, "KMS Decrypt failed");
            match err {
                DecryptError::InvalidCiphertextException(_) | DecryptError::IncorrectKeyException(_) => {
                    KmsError::InvalidCiphertext
                }
                DecryptError::DisabledException(_)
                | DecryptError::NotFoundException(_)
                | DecryptError::InvalidKeyUsageException(_)
                | DecryptError::KmsInvalidStateException(_)
                | DecryptError::InvalidGrantTokenException(_) => KmsError::KeyUnusable(message),
                _ if code == "AccessDeniedException" || status == 403 => {
                    KmsError::Refused(if message.is_empty() { "access denied".into() } else { message })
                }
                _ if code == "UnrecognizedClientException" || code == "InvalidSignatureException" => {
                    KmsError::Credentials
                }
                _ => KmsError::Unavailable,
            }
        }
        SdkError::ConstructionFailure(_) => {
            tracing::warn!(error = %aws_smithy_types::error::display::DisplayErrorContext(&e), "KMS request could not be built");
            KmsError::Answer("the KMS request could not be built".into())
        }
        _ => {
            tracing::warn!(error = %aws_smithy_types::error::display::DisplayErrorContext(&e), "KMS unreachable");
            KmsError::Unavailable
        }
    }
}

/// AWS credentials from the parent (`HostRequest::Credentials`), cached and refreshed
/// [`CREDENTIALS_REFRESH_MARGIN`] before they expire.
#[derive(Debug)]
pub(crate) struct ParentCredentialsProvider {
    host_addr: Address,
    cached: tokio::sync::Mutex<Option<Credentials>>,
}

impl ParentCredentialsProvider {
    pub(crate) fn new(host_addr: Address) -> Self {
        Self { host_addr, cached: tokio::sync::Mutex::new(None) }
    }

    async fn get(&self) -> provider::Result {
        // Holding the lock across the fetch: concurrent callers wait for one fetch instead of each asking.
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            let fresh = match c.expiry() {
                None => true,
                Some(at) => at.duration_since(SystemTime::now()).is_ok_and(|left| left > CREDENTIALS_REFRESH_MARGIN),
            };
            if fresh {
                return Ok(c.clone());
            }
        }
        let got =
            parent::fetch_credentials(&self.host_addr, Duration::from_secs(10)).await.map_err(|e: ParentError| {
                tracing::warn!(error = %e, "no AWS credentials from the parent");
                CredentialsError::provider_error(e)
            })?;
        let creds = Credentials::new(
            got.access_key_id.clone(),
            got.secret_access_key.as_str(),
            got.session_token.as_deref().cloned(),
            got.expiration,
            "veil-parent",
        );
        *cached = Some(creds.clone());
        Ok(creds)
    }
}

impl ProvideCredentials for ParentCredentialsProvider {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.get())
    }
}

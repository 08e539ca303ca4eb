//! Client-side KMS envelope: data keys from KMS `GenerateDataKey`, kept for a bounded session, sealing
//! each request for the enclave and opening its answer.
//!
//! The client never needs to trust the parent, nor even the enclave's claims: KMS releases the data key to
//! an enclave only if its attestation document matches the key policy's PCR conditions
//! (`veil kms policy`). The data key stays in this process (zeroized on drop); the parent sees ciphertext.
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use veil_protocol::envelope::{DataKey, EnvelopeError, RequestTag, Sealer};
use zeroize::Zeroizing;

use crate::{Client, ClientError};

/// Where KMS is and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct KmsConfig {
    /// AWS region (default: from the environment, else us-east-1).
    pub region: Option<String>,
    /// Endpoint URL override (`https://...`), e.g. the mock KMS off hardware.
    pub endpoint_url: Option<String>,
    /// Extra CA certificate (PEM) to trust for the endpoint, e.g. the mock KMS's. Real KMS needs none.
    pub ca_pem: Option<Vec<u8>>,
    /// Fixed credentials (access key, secret), e.g. for the mock KMS; otherwise the usual AWS chain
    /// (environment, profile, instance role).
    pub static_credentials: Option<(String, String)>,
}

/// Why a KMS call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    #[error("KMS GenerateDataKey failed: {0}")]
    GenerateDataKey(String),
    #[error("KMS answered without {0}")]
    Incomplete(&'static str),
    #[error("invalid KMS configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}

/// Builds an `aws-sdk-kms` client (rustls with ring; credentials from the usual AWS chain).
pub async fn kms_client(config: &KmsConfig) -> Result<aws_sdk_kms::Client, KmsError> {
    use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
    let mut trust = TrustStore::default();
    if let Some(pem) = &config.ca_pem {
        trust = trust.with_pem_certificate(pem.clone());
    }
    let tls_context =
        TlsContext::builder().with_trust_store(trust).build().map_err(|e| KmsError::Config(e.to_string()))?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .tls_context(tls_context)
        .build_https();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
    if let Some((access, secret)) = &config.static_credentials {
        loader = loader.credentials_provider(aws_sdk_kms::config::Credentials::new(
            access,
            secret,
            None,
            None,
            "veil-static",
        ));
    }
    if let Some(region) = &config.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &config.endpoint_url {
        if !url.starts_with("https://") {
            return Err(KmsError::Config(format!("{url}: the KMS endpoint must be https://")));
        }
        loader = loader.endpoint_url(url);
    }
    let shared = loader.load().await;
    if shared.region().is_none() {
        return Err(KmsError::Config("no AWS region: pass --kms-region or set AWS_REGION".into()));
    }
    Ok(aws_sdk_kms::Client::new(&shared))
}

/// Limits of one session (one data key).
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Requests sealed under one data key before a new one is made.
    pub max_requests: u64,
    /// Age of a data key before a new one is made (keep it under the enclave's key cache TTL).
    pub max_age: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits { max_requests: 10_000, max_age: Duration::from_secs(10 * 60) }
    }
}

struct Grant {
    key: DataKey,
    encrypted: Vec<u8>,
    created: Instant,
    used: u64,
}

/// A client session: a KMS key, an encryption context, and the current data key (renewed when used up).
pub struct Session {
    kms: aws_sdk_kms::Client,
    key_id: String,
    context: BTreeMap<String, String>,
    limits: SessionLimits,
    grant: Option<Grant>,
    generated: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("key_id", &self.key_id).field("data_keys", &self.generated).finish()
    }
}

impl Session {
    /// A session under KMS key `key_id`, binding `context` (the KMS encryption context) into every data key.
    pub fn new(
        kms: aws_sdk_kms::Client,
        key_id: &str,
        context: BTreeMap<String, String>,
        limits: SessionLimits,
    ) -> Session {
        Session { kms, key_id: key_id.to_owned(), context, limits, grant: None, generated: 0 }
    }

    /// Data keys generated so far (KMS calls).
    pub fn data_keys_generated(&self) -> u64 {
        self.generated
    }

    async fn grant(&mut self) -> Result<&mut Grant, KmsError> {
        let stale = match &self.grant {
            Some(g) => g.used >= self.limits.max_requests || g.created.elapsed() >= self.limits.max_age,
            None => true,
        };
        if stale {
            let mut req = self.kms.generate_data_key().key_id(&self.key_id).key_spec(DataKeySpec::Aes256);
            for (k, v) in &self.context {
                req = req.encryption_context(k, v);
            }
            let out = req
                .send()
                .await
                .map_err(|e| KmsError::GenerateDataKey(aws_sdk_kms::error::DisplayErrorContext(e).to_string()))?;
            let plaintext = Zeroizing::new(out.plaintext().ok_or(KmsError::Incomplete("Plaintext"))?.as_ref().to_vec());
            let encrypted =
                out.ciphertext_blob().map(Blob::as_ref).ok_or(KmsError::Incomplete("CiphertextBlob"))?.to_vec();
            self.grant = Some(Grant { key: DataKey::new(&plaintext)?, encrypted, created: Instant::now(), used: 0 });
            self.generated += 1;
        }
        self.grant.as_mut().ok_or(KmsError::Incomplete("a data key"))
    }

    /// Seals `plaintext` for `model`; returns the wire bytes and what opens the answer.
    pub async fn seal(&mut self, model: &str, plaintext: &[u8]) -> Result<(Vec<u8>, SealedCall), KmsError> {
        let key_id = self.key_id.clone();
        let context = self.context.clone();
        let grant = self.grant().await?;
        grant.used += 1;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let sealer = Sealer {
            key: &grant.key,
            key_id: &key_id,
            encrypted_data_key: &grant.encrypted,
            encryption_context: &context,
        };
        let (wire, tag) = sealer.seal_request(model, plaintext, now)?;
        Ok((wire, SealedCall { tag, model: model.to_owned() }))
    }

    /// Opens the enclave's answer to a call made with [`Session::seal`]. The data key used for the call
    /// must still be current (answers are opened before the next seal renews it; callers do so).
    pub fn open(&self, call: &SealedCall, body: &[u8]) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let grant = self.grant.as_ref().ok_or(KmsError::Incomplete("a data key"))?;
        let sealer = Sealer {
            key: &grant.key,
            key_id: &self.key_id,
            encrypted_data_key: &grant.encrypted,
            encryption_context: &self.context,
        };
        Ok(sealer.open_response(&call.model, &call.tag, body)?)
    }
}

/// What ties an answer to its sealed request.
#[derive(Debug, Clone)]
pub struct SealedCall {
    tag: RequestTag,
    model: String,
}

impl Client {
    /// Sends one v2 request sealed under `session`'s data key, and returns the opened v2 answer.
    ///
    /// Errors about the request itself (it does not fit the model) come back sealed, are opened here, and
    /// are returned as [`ClientError::Status`] with status 400.
    pub async fn infer_sealed(
        &self,
        session: &mut Session,
        model: &str,
        body: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let (wire, call) = session.seal(model, body).await.map_err(|e| ClientError::Kms(e.to_string()))?;
        let answer = self.infer(model, &wire).await?;
        let plain =
            session.open(&call, &answer).map_err(|e| ClientError::Kms(format!("cannot open the answer: {e}")))?;
        // The enclave's sealed errors are `{"error": ..., "kind": ...}` (keys in that order); answers start
        // with `{"model_name"`. Looking at the first bytes spares parsing every (possibly large) answer.
        if plain.starts_with(br#"{"error""#)
            && let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(&plain)
            && let (Some(error), None) = (map.get("error").and_then(|e| e.as_str()), map.get("outputs"))
        {
            let status = match map.get("kind").and_then(|k| k.as_str()) {
                Some("not_found") => hyper::StatusCode::NOT_FOUND,
                Some("internal") => hyper::StatusCode::INTERNAL_SERVER_ERROR,
                _ => hyper::StatusCode::BAD_REQUEST,
            };
            return Err(ClientError::Status { status, message: error.to_owned() });
        }
        Ok(plain)
    }
}

/// Encrypts a model file under a fresh data key of `key_id` (streamed, chunk by chunk), writing `output`
/// atomically. `progress` prints a line every 10% for large files.
pub async fn encrypt_model_file(
    kms: &aws_sdk_kms::Client,
    key_id: &str,
    context: BTreeMap<String, String>,
    input: &std::path::Path,
    output: &std::path::Path,
    chunk_size: u32,
    progress: bool,
) -> Result<u64, KmsError> {
    use std::io::{Read, Write};
    use veil_protocol::model_file::ModelSealer;
    let io =
        |what: &str, p: &std::path::Path, e: std::io::Error| KmsError::Config(format!("{what} {}: {e}", p.display()));
    let file = std::fs::File::open(input).map_err(|e| io("cannot read", input, e))?;
    let len = file.metadata().map_err(|e| io("cannot read", input, e))?.len();
    let mut req = kms.generate_data_key().key_id(key_id).key_spec(DataKeySpec::Aes256);
    for (k, v) in &context {
        req = req.encryption_context(k, v);
    }
    let out = req
        .send()
        .await
        .map_err(|e| KmsError::GenerateDataKey(aws_sdk_kms::error::DisplayErrorContext(e).to_string()))?;
    let plaintext = Zeroizing::new(out.plaintext().ok_or(KmsError::Incomplete("Plaintext"))?.as_ref().to_vec());
    let encrypted = out.ciphertext_blob().map(Blob::as_ref).ok_or(KmsError::Incomplete("CiphertextBlob"))?.to_vec();
    let (mut sealer, start) = ModelSealer::new(&plaintext, key_id, &encrypted, context, len, chunk_size)?;
    drop(plaintext);
    let tmp = output.with_extension("partial");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| io("cannot create", &tmp, e))?);
    let werr = |e: std::io::Error| KmsError::Config(format!("writing {}: {e}", tmp.display()));
    w.write_all(&start).map_err(werr)?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, file);
    let mut chunk = Zeroizing::new(vec![0u8; chunk_size as usize]);
    let (mut done, mut next_report) = (0u64, len / 10);
    loop {
        let want = (len - done).min(u64::from(chunk_size)) as usize;
        r.read_exact(&mut chunk[..want]).map_err(|e| io("the model changed while reading", input, e))?;
        w.write_all(&sealer.seal_chunk(&chunk[..want])?).map_err(werr)?;
        done += want as u64;
        if progress && len > (64 << 20) && done >= next_report {
            eprintln!("veil: encrypted {} of {} MiB", done >> 20, len >> 20);
            next_report += len / 10;
        }
        if done >= len {
            break;
        }
    }
    w.flush().map_err(werr)?;
    w.into_inner().map_err(|e| werr(e.into_error()))?.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, output).map_err(|e| io("cannot write", output, e))?;
    Ok(len)
}

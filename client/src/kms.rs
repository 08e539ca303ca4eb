//! Client-side KMS envelope: data keys from KMS `GenerateDataKey`, kept for a bounded session, sealing
//! each request for the enclave and opening its answer.
//!
//! The client never needs to trust the parent, nor even the enclave's claims: KMS releases the data key to
//! an enclave only if its attestation document matches the key policy's PCR conditions
//! (`veil kms policy`). The data key stays in this process (zeroized on drop); the parent sees ciphertext.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use veil_protocol::envelope::{
    AnswerReceipt, DataKey, EnvelopeError, ModelRef, Outcome, RequestMeta, RequestTag, Sealer,
};
use veil_protocol::random::SystemRandom;
use zeroize::Zeroizing;

use crate::retry::Retried;
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
    key: Arc<GrantKey>,
    created: Instant,
    used: u64,
}

/// A data key and what names it: shared by the grant and every call sealed under it, so that an answer
/// opens with the key its request was sealed with even after the session has moved on to a new one.
struct GrantKey {
    key: DataKey,
    encrypted: Vec<u8>,
    /// The key's ARN as KMS named it in its answer (what the enclave's configuration lists).
    key_arn: String,
    context: BTreeMap<String, String>,
}

impl GrantKey {
    fn sealer(&self) -> Sealer<'_> {
        Sealer {
            key: &self.key,
            key_id: &self.key_arn,
            encrypted_data_key: &self.encrypted,
            encryption_context: &self.context,
        }
    }
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

/// KMS `GenerateDataKey` (AES-256) under `key_id` with `context`: the plaintext key (wiped on drop), the
/// encrypted blob, and the key's ARN as KMS names it in its answer, whatever the caller named (id, alias,
/// alias ARN): that ARN is what the enclave's configuration lists and what it asks KMS with.
async fn generate_data_key(
    kms: &aws_sdk_kms::Client,
    key_id: &str,
    context: &BTreeMap<String, String>,
) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>, String), KmsError> {
    let mut req = kms.generate_data_key().key_id(key_id).key_spec(DataKeySpec::Aes256);
    for (k, v) in context {
        req = req.encryption_context(k, v);
    }
    let out = req
        .send()
        .await
        .map_err(|e| KmsError::GenerateDataKey(aws_sdk_kms::error::DisplayErrorContext(e).to_string()))?;
    let plaintext = Zeroizing::new(out.plaintext().ok_or(KmsError::Incomplete("Plaintext"))?.as_ref().to_vec());
    let encrypted = out.ciphertext_blob().map(Blob::as_ref).ok_or(KmsError::Incomplete("CiphertextBlob"))?.to_vec();
    let key_arn = out.key_id().ok_or(KmsError::Incomplete("KeyId"))?.to_owned();
    Ok((plaintext, encrypted, key_arn))
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
            let (plaintext, encrypted, key_arn) = generate_data_key(&self.kms, &self.key_id, &self.context).await?;
            let key = GrantKey { key: DataKey::new(&plaintext)?, encrypted, key_arn, context: self.context.clone() };
            self.grant = Some(Grant { key: Arc::new(key), created: Instant::now(), used: 0 });
            self.generated += 1;
        }
        self.grant.as_mut().ok_or(KmsError::Incomplete("a data key"))
    }

    /// Seals a v2 request `body` for `model` (its name and the SHA-384 the caller expects it to have);
    /// returns the wire bytes and what opens the answer. Only this step needs the session exclusively
    /// (it may ask KMS for a new data key); answers open without it ([`SealedCall::open`]).
    pub async fn seal(
        &mut self,
        model: &ModelRef,
        body: &[u8],
        meta: RequestMeta,
    ) -> Result<(Vec<u8>, SealedCall), KmsError> {
        let grant = self.grant().await?;
        grant.used += 1;
        let key = Arc::clone(&grant.key);
        let now = veil_protocol::time::now_unix();
        let (wire, tag) = key.sealer().seal_request(model, body, meta, now, &SystemRandom::new())?;
        Ok((wire, SealedCall { tag, key }))
    }

    /// Opens the enclave's answer to a call made with [`Session::seal`] (the same as [`SealedCall::open`]).
    pub fn open(&self, call: &SealedCall, body: Vec<u8>) -> Result<OpenedAnswer, KmsError> {
        call.open(body)
    }
}

/// What ties an answer to its sealed request, and the data key that opens it.
#[derive(Clone)]
pub struct SealedCall {
    tag: RequestTag,
    key: Arc<GrantKey>,
}

impl std::fmt::Debug for SealedCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedCall").finish_non_exhaustive()
    }
}

impl SealedCall {
    /// Opens the enclave's answer, in place in `body`.
    pub fn open(&self, body: Vec<u8>) -> Result<OpenedAnswer, KmsError> {
        let mut buf = Zeroizing::new(body);
        let base = buf.as_ptr() as usize;
        let opened = self.key.sealer().open_answer(&self.tag, &mut buf)?;
        // The body is a sub-slice of `buf`: keep its place, to hand out the buffer without copying it.
        let start = opened.body.as_ptr() as usize - base;
        let range = start..start + opened.body.len();
        let (outcome, model_sha384, receipt) = (opened.meta.outcome, opened.meta.model_sha384, opened.meta.receipt);
        Ok(OpenedAnswer { buf, range, outcome, model_sha384, receipt })
    }
}

/// An opened sealed answer: how the request ended, as the enclave said, and the digest of the model that
/// answered.
pub struct OpenedAnswer {
    buf: Zeroizing<Vec<u8>>,
    range: std::ops::Range<usize>,
    /// The enclave's outcome: the answer, or its (authenticated) error.
    pub outcome: Outcome,
    /// The SHA-384 of the model that answered (the one the request was sealed for).
    pub model_sha384: [u8; 48],
    /// The enclave's signed receipt for this answer, and its salt (`None` when the enclave's receipts
    /// are off).
    pub receipt: Option<AnswerReceipt>,
}

impl std::fmt::Debug for OpenedAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedAnswer").field("outcome", &self.outcome).field("len", &self.range.len()).finish()
    }
}

impl OpenedAnswer {
    /// The answer's body (a v2 response), empty for an error.
    pub fn body(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }
}

/// A v2 answer the enclave authenticated: the body and the digest of the model that answered.
#[derive(Debug)]
pub struct Answer {
    opened: OpenedAnswer,
}

impl Answer {
    /// The v2 response (JSON).
    pub fn body(&self) -> &[u8] {
        self.opened.body()
    }

    /// The SHA-384 of the model that answered.
    pub fn model_sha384(&self) -> &[u8; 48] {
        &self.opened.model_sha384
    }

    /// The enclave's signed receipt for this answer and its salt, when the enclave signs receipts
    /// ([`crate::evidence`] makes an evidence bundle of it).
    pub fn receipt(&self) -> Option<&AnswerReceipt> {
        self.opened.receipt.as_ref()
    }
}

impl Client {
    /// Sends one v2 request (JSON) sealed under `session`'s data key for `model` (its name and the SHA-384
    /// the caller expects: from a verified attestation document, a policy, or the model's publisher), and
    /// returns the enclave's authenticated answer. The plaintext never leaves this process unsealed.
    ///
    /// An enclave that loaded any other model cannot open the request. The enclave's refusals once it held
    /// the data key come back sealed, and are [`ClientError::Enclave`]; anything else the parent answers is
    /// [`ClientError::Unauthenticated`]. Failures that may succeed again are retried under the client's
    /// [`crate::RetryPolicy`], each attempt sealed afresh (a new request id and nonce): see [`crate::retry`].
    pub async fn infer(&self, session: &mut Session, model: &ModelRef, body: &[u8]) -> Result<Answer, ClientError> {
        self.infer_observed(session, model, body, &mut |_| {}).await
    }

    /// [`Client::infer`], telling `observe` of each retry before it is made (for counters and logs).
    pub async fn infer_observed(
        &self,
        session: &mut Session,
        model: &ModelRef,
        body: &[u8],
        observe: &mut (dyn FnMut(Retried<'_>) + Send),
    ) -> Result<Answer, ClientError> {
        let mut retries = crate::retry::Retries::new(self.retry_policy());
        loop {
            let outcome = self.infer_once(session, model, body).await;
            let delay = match &outcome {
                Ok(_) => None,
                Err(e) => retries.next(e.verdict(), e, observe),
            };
            let Some(delay) = delay else { return outcome };
            drop(outcome);
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt: sealed, sent, opened.
    async fn infer_once(&self, session: &mut Session, model: &ModelRef, body: &[u8]) -> Result<Answer, ClientError> {
        let (wire, call) =
            session.seal(model, body, RequestMeta::default()).await.map_err(|e| ClientError::Kms(e.to_string()))?;
        let sealed = self.post_sealed(&model.name, wire).await?;
        let mut opened =
            session.open(&call, sealed).map_err(|e| ClientError::Kms(format!("cannot open the answer: {e}")))?;
        let Outcome::Error(e) = &opened.outcome else { return Ok(Answer { opened }) };
        Err(ClientError::Enclave {
            kind: e.kind,
            message: e.message.clone(),
            retry_after: e.retry_after_secs,
            receipt: opened.receipt.take().map(Box::new),
        })
    }
}

/// Encrypts a model file for the model `name` under a fresh data key of `key_id` (streamed, chunk by
/// chunk), writing `output` atomically. `progress` prints a line every 10% for large files. Returns the
/// plaintext's length and the key's ARN (what the enclave's configuration must name).
#[allow(clippy::too_many_arguments)] // the operator's choices, each of them
pub async fn encrypt_model_file(
    kms: &aws_sdk_kms::Client,
    name: &str,
    key_id: &str,
    context: BTreeMap<String, String>,
    input: &std::path::Path,
    output: &std::path::Path,
    chunk_size: u32,
    progress: bool,
) -> Result<(u64, String), KmsError> {
    let io =
        |what: &str, p: &std::path::Path, e: std::io::Error| KmsError::Config(format!("{what} {}: {e}", p.display()));
    let file = std::fs::File::open(input).map_err(|e| io("cannot read", input, e))?;
    let len = file.metadata().map_err(|e| io("cannot read", input, e))?.len();
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    let what = input.display().to_string();
    let key_arn = encrypt_stream(kms, name, key_id, context, reader, len, &what, output, chunk_size, progress).await?;
    Ok((len, key_arn))
}

/// [`encrypt_model_file`] from a reader of `len` bytes (`what` names it in errors): the fleet keys of
/// attested-key mode are sealed this way, straight from memory, never written in the clear.
#[allow(clippy::too_many_arguments)]
pub async fn encrypt_stream(
    kms: &aws_sdk_kms::Client,
    name: &str,
    key_id: &str,
    context: BTreeMap<String, String>,
    mut reader: impl std::io::Read,
    len: u64,
    what: &str,
    output: &std::path::Path,
    chunk_size: u32,
    progress: bool,
) -> Result<String, KmsError> {
    use std::io::Write;
    use veil_protocol::model_file::ModelSealer;
    let io =
        |what: &str, p: &std::path::Path, e: std::io::Error| KmsError::Config(format!("{what} {}: {e}", p.display()));
    let (plaintext, encrypted, key_arn) = generate_data_key(kms, key_id, &context).await?;
    let (mut sealer, start) =
        ModelSealer::new(&plaintext, name, &key_arn, &encrypted, context, len, chunk_size, &SystemRandom::new())?;
    drop(plaintext);
    let tmp = output.with_extension("partial");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| io("cannot create", &tmp, e))?);
    let werr = |e: std::io::Error| KmsError::Config(format!("writing {}: {e}", tmp.display()));
    w.write_all(&start).map_err(werr)?;
    let mut chunk = Zeroizing::new(vec![0u8; chunk_size as usize]);
    let (mut done, mut next_report) = (0u64, len / 10);
    loop {
        let want = (len - done).min(u64::from(chunk_size)) as usize;
        reader
            .read_exact(&mut chunk[..want])
            .map_err(|e| KmsError::Config(format!("{what} changed while reading: {e}")))?;
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
    Ok(key_arn)
}

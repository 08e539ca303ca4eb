//! Attested-key mode, the client's side: Oblivious HTTP (RFC 9458) to a key the client has verified.
//!
//! Before anything is sent, [`ObliviousClient::gateway`] fetches the gateway's key configuration list
//! (`/.well-known/ohttp-gateway`) and a fresh attestation document (with a random nonce), and verifies the
//! document against the client's policy ([`crate::trust::ClientPolicy`]): the chain to the trusted root,
//! one accepted image's PCRs, the age, debug mode, the expected models' digests, and that the commitment
//! covers exactly the key list served. Only then is the key used. The verified key is cached until the
//! policy's maximum age or the document's leaf certificate runs out, whichever comes first.
//!
//! Each request is a Binary HTTP request for the KServe v2 API, with a `Date` (RFC 9458 §6.5.1) and the
//! model digest the policy expects (`Veil-Model-Sha384`), padded and encapsulated; the answer names the
//! digest of the model that answered. No AWS credentials, no KMS call.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use veil_protocol::attestation::{VerifiedDocument, Verifier};
use veil_protocol::ohttp::{self, KeyConfig, OhttpError, bhttp};
use veil_protocol::random::SystemRandom;

use crate::retry::{Retried, Verdict};
use crate::trust::{ClientPolicy, Untrusted};
use crate::{Client, ClientError};

use veil_protocol::envelope::AnswerReceipt;
pub use veil_protocol::ohttp::MODEL_DIGEST_HEADER;
use veil_protocol::ohttp::{RECEIPT_SALT_TRAILER, RECEIPT_TRAILER};

/// Largest key configuration list accepted.
const MAX_KEY_LIST: usize = 64 * 1024;

/// Why attested-key mode failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObliviousError {
    /// The parent could not be reached, or answered an error (unauthenticated).
    #[error(transparent)]
    Fetch(#[from] ClientError),
    /// The enclave failed the client's policy: nothing was sent.
    #[error("the enclave is not trusted: {0}")]
    Untrusted(#[from] Untrusted),
    /// The key configuration list is malformed or holds no usable key.
    #[error("the gateway's key configuration is unusable: {0}")]
    Keys(String),
    /// The policy does not name the model asked for.
    #[error("the policy lists no model {model:?} (it lists: {listed}); add it with its digest")]
    ModelNotInPolicy { model: String, listed: String },
    /// Encapsulation, or opening the response, failed.
    #[error("OHTTP: {0}")]
    Ohttp(#[from] OhttpError),
    /// The response decrypted but is not a valid Binary HTTP response, or contradicts the request.
    #[error("the enclave's response is invalid: {0}")]
    Response(String),
    /// The relay said a request did not decapsulate (the keys changed?), and verifying the enclave again
    /// failed. The first request was sent, to the key verified before.
    #[error("the relay said the enclave's keys changed (HTTP 422), and verifying it again failed: {0}")]
    Reverification(Box<ObliviousError>),
    /// The clock or the random generator failed.
    #[error("{0}")]
    System(&'static str),
}

impl ObliviousError {
    /// Whether a request that failed this way may be sent again (see [`crate::retry`]): when what failed
    /// was reaching the enclave (fetching, or verifying it again after its keys changed), as for
    /// [`ClientError::verdict`]. A policy failure, or an answer that does not open, is final.
    pub fn verdict(&self) -> Verdict {
        match self {
            ObliviousError::Fetch(e) => e.verdict(),
            ObliviousError::Reverification(e) => e.verdict(),
            _ => Verdict::Final,
        }
    }

    /// True when the failure is the enclave's attestation failing the policy.
    pub fn is_untrusted(&self) -> bool {
        match self {
            ObliviousError::Untrusted(_) | ObliviousError::Keys(_) => true,
            ObliviousError::Reverification(e) => e.is_untrusted(),
            _ => false,
        }
    }
}

/// A gateway whose key configuration a verified attestation document committed to.
#[derive(Debug, Clone)]
pub struct VerifiedGateway {
    /// The key requests are encapsulated to (the first in the list with a suite this client speaks).
    pub key_config: KeyConfig,
    /// SHA-384 of the key list served (and committed to).
    pub key_list_sha384: [u8; 48],
    /// Which accepted image the enclave is.
    pub image: String,
    /// The models the enclave's commitment lists, with their digests.
    pub models: BTreeMap<String, [u8; 48]>,
    pub module_id: String,
    /// Until when (ms since the epoch) the verification is reused.
    pub valid_until_ms: u64,
}

fn now_ms() -> Result<u64, ObliviousError> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .map_err(|_| ObliviousError::System("the system clock is before 1970"))
}

/// Fetches and verifies the gateway's keys (see the module documentation).
pub async fn verify_gateway(
    client: &Client,
    policy: &ClientPolicy,
    verifier: &Verifier,
) -> Result<VerifiedGateway, ObliviousError> {
    verify_gateway_document(client, policy, verifier).await.map(|(g, _)| g)
}

/// [`verify_gateway`], with the verified document (for reports: `veil proxy --check`).
pub async fn verify_gateway_document(
    client: &Client,
    policy: &ClientPolicy,
    verifier: &Verifier,
) -> Result<(VerifiedGateway, VerifiedDocument), ObliviousError> {
    let key_list = client.ohttp_keys().await?;
    if key_list.len() > MAX_KEY_LIST {
        return Err(ObliviousError::Keys(format!("{} bytes, more than {MAX_KEY_LIST}", key_list.len())));
    }
    let configs = KeyConfig::decode_list(&key_list).map_err(|e| ObliviousError::Keys(e.to_string()))?;
    let key_config = configs
        .into_iter()
        .find(|c| c.preferred_suite().is_some())
        .ok_or_else(|| ObliviousError::Keys("no key offers HKDF-SHA256 with AES-GCM or ChaCha20-Poly1305".into()))?;
    let nonce = veil_protocol::random::array::<32>(&SystemRandom::new())
        .map_err(|_| ObliviousError::System("the system random number generator failed"))?;
    let document = client.attestation(&nonce).await?;
    let now = now_ms()?;
    let (verified, image) = policy.verify(verifier, &document, now, &nonce, Some(&key_list))?;
    let commitment = verified
        .commitment()
        .ok_or_else(|| ObliviousError::Response("the verified document carries no commitment".into()))?;
    let leaf_not_after_ms =
        verified.certificates().last().map(|c| u64::try_from(c.not_after).unwrap_or(0).saturating_mul(1000));
    let by_age = verified.timestamp_ms().saturating_add(policy.max_age.as_millis() as u64);
    let gateway = VerifiedGateway {
        key_config,
        key_list_sha384: veil_protocol::attestation::UserDataCommitment::sha384(&key_list),
        image,
        models: commitment.models.iter().map(|m| (m.name.clone(), m.sha384)).collect(),
        module_id: verified.module_id().to_owned(),
        valid_until_ms: leaf_not_after_ms.map_or(by_age, |l| l.min(by_age)),
    };
    Ok((gateway, verified))
}

/// A response from the enclave, decrypted: authenticated by the OHTTP response key.
#[derive(Debug)]
pub struct ObliviousResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// The enclave's signed receipt and its salt, from the response's trailer fields (inference only,
    /// when the enclave signs receipts).
    pub receipt: Option<AnswerReceipt>,
}

impl ObliviousResponse {
    /// Whether the enclave's answer asks to be tried again: its 503 or 429, with its `Retry-After` (this
    /// answer is authenticated: only the enclave could have made it).
    pub fn retry_verdict(&self) -> Verdict {
        let retry_after = self
            .header("retry-after")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(crate::retry::parse_retry_after_now);
        let status = hyper::StatusCode::from_u16(self.status).unwrap_or(hyper::StatusCode::OK);
        crate::retry::status_verdict(status, retry_after)
    }

    /// What a retry after this answer says of it (for logs).
    pub(crate) fn retry_reason(&self) -> String {
        format!("the enclave answered HTTP {}: {}", self.status, self.error_message().unwrap_or_default())
    }

    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// The digest of the model that answered, when the response names one.
    pub fn model_sha384(&self) -> Option<[u8; 48]> {
        self.header(MODEL_DIGEST_HEADER).and_then(|v| hex::decode(v).ok()).and_then(|b| b.try_into().ok())
    }

    /// The error message of a JSON error response (`{"error": ...}`), if it is one.
    pub fn error_message(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v.get("error")
            .and_then(|e| e.as_str())
            .map(str::to_owned)
            .or_else(|| v.get("title").and_then(|e| e.as_str()).map(str::to_owned))
    }
}

/// The receipt in a response's trailer fields (`veil-receipt`, base64; `veil-receipt-salt`, hex), if any.
fn receipt_from_trailers(response: &bhttp::Response<'_>) -> Result<Option<AnswerReceipt>, ObliviousError> {
    use base64::Engine;
    let (Some(receipt), Some(salt)) = (response.trailer(RECEIPT_TRAILER), response.trailer(RECEIPT_SALT_TRAILER))
    else {
        return Ok(None);
    };
    let bad = |what: &str| ObliviousError::Response(format!("the answer's {what} trailer is malformed"));
    let receipt = base64::engine::general_purpose::STANDARD.decode(receipt).map_err(|_| bad(RECEIPT_TRAILER))?;
    let salt: [u8; 32] =
        hex::decode(salt).ok().and_then(|s| s.try_into().ok()).ok_or_else(|| bad(RECEIPT_SALT_TRAILER))?;
    Ok(Some(AnswerReceipt { receipt, salt: zeroize::Zeroizing::new(salt) }))
}

/// A client of attested-key mode: one parent (or load balancer), one policy, the verification cached.
#[derive(Debug)]
pub struct ObliviousClient {
    client: Client,
    policy: ClientPolicy,
    verifier: Verifier,
    cached: tokio::sync::Mutex<Option<Arc<VerifiedGateway>>>,
}

impl ObliviousClient {
    pub fn new(client: Client, policy: ClientPolicy) -> ObliviousClient {
        ObliviousClient { client, policy, verifier: Verifier::new(), cached: tokio::sync::Mutex::new(None) }
    }

    /// A client that sends to `client` (another enclave of the same fleet, say) with a gateway verified
    /// already: the key configuration is the same for every enclave that holds the fleet key, so one
    /// verification covers them all. Re-verifies (against `client`) once it expires.
    pub fn with_verified(client: Client, policy: ClientPolicy, gateway: Arc<VerifiedGateway>) -> ObliviousClient {
        ObliviousClient { client, policy, verifier: Verifier::new(), cached: tokio::sync::Mutex::new(Some(gateway)) }
    }

    /// The policy.
    pub fn policy(&self) -> &ClientPolicy {
        &self.policy
    }

    /// The HTTP client (to the relay).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The verified gateway: the cached verification while it holds, else a fresh one.
    pub async fn gateway(&self) -> Result<Arc<VerifiedGateway>, ObliviousError> {
        let mut cached = self.cached.lock().await;
        if let Some(g) = cached.as_ref()
            && now_ms()? < g.valid_until_ms
        {
            return Ok(Arc::clone(g));
        }
        let fresh = Arc::new(verify_gateway(&self.client, &self.policy, &self.verifier).await?);
        *cached = Some(Arc::clone(&fresh));
        Ok(fresh)
    }

    /// Forgets the cached verification (the next request verifies again).
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }

    /// Forgets the cached verification if it is still the one of key list `key_list_sha384` (a request
    /// that found those keys stale); one that another request has verified since is kept.
    async fn forget_stale(&self, key_list_sha384: &[u8; 48]) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|g| &g.key_list_sha384 == key_list_sha384) {
            *cached = None;
        }
    }

    /// Sends one request to the enclave through OHTTP: `method` and `path` of the KServe v2 API, with
    /// `headers` and `body`. Adds `Date`; retries once with the enclave's own `Date` if the enclave
    /// refuses the client's clock (RFC 9458 §6.5.2).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) -> Result<ObliviousResponse, ObliviousError> {
        let mut gateway = self.gateway().await?;
        let now_secs = now_ms()? / 1000;
        let first = match self.exchange(&gateway, method, path, headers, body, now_secs).await {
            // The relay says the gateway could not decapsulate the request (RFC 9458 §5.2: unknown key, or
            // not decryptable): the enclave's keys may have changed (a restart, a rotation). Verify afresh
            // (once for all the requests that found the same stale keys); if the verified key list is a new
            // one, send once more. The 422 is the relay's word: the first request may have been answered
            // and the answer dropped, so the enclave can see it twice (under two verified keys), never more.
            Err(ObliviousError::Fetch(ClientError::Unauthenticated { status, message, retry_after }))
                if status == hyper::StatusCode::UNPROCESSABLE_ENTITY =>
            {
                let before = gateway.key_list_sha384;
                self.forget_stale(&before).await;
                gateway = self.gateway().await.map_err(|e| ObliviousError::Reverification(Box::new(e)))?;
                if gateway.key_list_sha384 == before {
                    return Err(ObliviousError::Fetch(ClientError::Unauthenticated { status, message, retry_after }));
                }
                self.exchange(&gateway, method, path, headers, body, now_secs).await?
            }
            other => other?,
        };
        let date_problem = first.status == 400
            && first.header("content-type").is_some_and(|c| c.starts_with(b"application/problem+json"))
            && String::from_utf8_lossy(&first.body).contains("http-problem-types#date");
        if !date_problem {
            return Ok(first);
        }
        let Some(theirs) = first
            .header("date")
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(veil_protocol::time::parse_http_date)
        else {
            return Ok(first);
        };
        self.exchange(&gateway, method, path, headers, body, theirs).await
    }

    async fn exchange(
        &self,
        gateway: &VerifiedGateway,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
        date_secs: u64,
    ) -> Result<ObliviousResponse, ObliviousError> {
        let date = veil_protocol::time::format_http_date(date_secs).ok_or(ObliviousError::System("bad clock"))?;
        let mut all: Vec<(&str, &[u8])> = vec![("date", date.as_bytes())];
        if !body.is_empty() && !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("content-type")) {
            all.push(("content-type", b"application/json"));
        }
        all.extend_from_slice(headers);
        let inner = zeroize::Zeroizing::new(bhttp::encode_request(method, "https", "veil", path, &all, body, true));
        let (encapsulated, context) = ohttp::encapsulate(&gateway.key_config, &inner, &SystemRandom::new())?;
        drop(inner);
        let mut sealed = self.client.post_ohttp(encapsulated).await?;
        let opened = context.open_in_place(&mut sealed)?;
        let response = bhttp::parse_response(opened).map_err(|e| ObliviousError::Response(e.to_string()))?;
        let receipt = receipt_from_trailers(&response)?;
        let out = ObliviousResponse {
            status: response.status,
            headers: response
                .headers
                .iter()
                .map(|f| (String::from_utf8_lossy(f.name).to_ascii_lowercase(), f.value.to_vec()))
                .collect(),
            body: response.content.as_slice().to_vec(),
            receipt,
        };
        zeroize::Zeroize::zeroize(&mut sealed);
        Ok(out)
    }

    /// Runs inference on `model` with a v2 request (JSON), naming the digest the policy expects: the
    /// enclave refuses (400) if it serves another model under that name. Returns the response, whose
    /// [`ObliviousResponse::model_sha384`] is the digest that answered. Failures that may succeed again
    /// (the parent unreachable, a 503 from the parent or, authenticated, from the enclave) are retried under
    /// the client's [`crate::RetryPolicy`], each attempt encapsulated afresh: see [`crate::retry`].
    pub async fn infer(&self, model: &str, request_json: &[u8]) -> Result<ObliviousResponse, ObliviousError> {
        self.infer_observed(model, request_json, &mut |_| {}).await
    }

    /// [`ObliviousClient::infer`], telling `observe` of each retry before it is made.
    pub async fn infer_observed(
        &self,
        model: &str,
        request_json: &[u8],
        observe: &mut (dyn FnMut(Retried<'_>) + Send),
    ) -> Result<ObliviousResponse, ObliviousError> {
        let mut retries = crate::retry::Retries::new(self.client.retry_policy());
        loop {
            let outcome = self.infer_once(model, request_json).await;
            let delay = match &outcome {
                Err(e) => retries.next(e.verdict(), e, observe),
                // An authenticated 503 or 429 from the enclave itself (inside the encapsulation).
                Ok(response) => match response.retry_verdict() {
                    Verdict::Final => None,
                    verdict => retries.next(verdict, &response.retry_reason(), observe),
                },
            };
            let Some(delay) = delay else { return outcome };
            drop(outcome);
            tokio::time::sleep(delay).await;
        }
    }

    async fn infer_once(&self, model: &str, request_json: &[u8]) -> Result<ObliviousResponse, ObliviousError> {
        let expected = self.policy.models.get(model).ok_or_else(|| ObliviousError::ModelNotInPolicy {
            model: model.to_owned(),
            listed: self.policy.models.keys().cloned().collect::<Vec<_>>().join(", "),
        })?;
        let digest = hex::encode(expected);
        let path = format!("/v2/models/{model}/infer");
        let response = self.send("POST", &path, &[(MODEL_DIGEST_HEADER, digest.as_bytes())], request_json).await?;
        if response.status == 200 && response.model_sha384().as_ref() != Some(expected) {
            return Err(ObliviousError::Response(format!(
                "the answer names model digest {:?}, not the {digest} asked for",
                response.model_sha384().map(hex::encode)
            )));
        }
        Ok(response)
    }
}

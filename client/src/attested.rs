//! What a client learns from the enclave's attestation before it sends anything: a fresh document, verified
//! (chain to the trusted root, signature, freshness, the client's own nonce, the expected PCRs), and the
//! model digests its commitment lists.
//!
//! The digest of the model a client expects is bound into every sealed request: an enclave that loaded
//! anything else cannot open it. This module is one of the three ways a client gets that digest (the others
//! are a policy file and being told it, `--expect-model-sha384`).
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use veil_protocol::attestation::{Policy, Rejected, TrustAnchor, VerifiedDocument, verify};

use crate::{Client, ClientError};

/// Why no verified digest came out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestedError {
    /// The document could not be fetched.
    #[error("could not fetch an attestation document: {0}")]
    Fetch(#[from] ClientError),
    /// The document did not verify; the report names the failed check.
    #[error("the enclave's attestation document did not verify: {}", .0.error)]
    Rejected(Box<Rejected>),
    /// The document verified but carries no Veil commitment.
    #[error("the attestation document verified but carries no Veil commitment (user_data): {0}")]
    NoCommitment(String),
    /// The commitment does not list the model.
    #[error("the enclave's attestation lists no model {model:?} (it serves: {served})")]
    ModelNotListed { model: String, served: String },
    /// The system clock or random generator failed.
    #[error("{0}")]
    System(&'static str),
}

/// Fetches a document carrying a fresh random nonce and verifies it under `policy` (its nonce is set
/// here). `policy` fixes the root, the PCRs and the maximum age.
pub async fn fetch_verified(client: &Client, policy: Policy) -> Result<VerifiedDocument, AttestedError> {
    let nonce = veil_protocol::random::array::<32>(&veil_protocol::random::SystemRandom::new())
        .map_err(|_| AttestedError::System("the system random number generator failed"))?;
    let policy = policy.expect_nonce(&nonce).map_err(|_| AttestedError::System("the nonce is refused"))?;
    let document = client.attestation(&nonce).await?;
    verify(&document, &policy).map_err(|r| AttestedError::Rejected(Box::new(r)))
}

/// A policy at the current time: `root`, documents at most `max_age` old.
pub fn policy_now(root: TrustAnchor, max_age: Duration) -> Result<Policy, AttestedError> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| AttestedError::System("the system clock is before 1970"))?
        .as_millis() as u64;
    Ok(Policy::new(now_ms).with_root(root).with_max_age(max_age))
}

/// The SHA-384 the verified document's commitment lists for `model`.
pub fn model_digest(document: &VerifiedDocument, model: &str) -> Result<[u8; 48], AttestedError> {
    let commitment = document
        .commitment()
        .ok_or_else(|| AttestedError::NoCommitment("user_data is absent or not a Veil commitment".into()))?;
    commitment.models.iter().find(|m| m.name == model).map(|m| m.sha384).ok_or_else(|| AttestedError::ModelNotListed {
        model: model.to_owned(),
        served: commitment.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
    })
}

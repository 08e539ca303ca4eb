//! The enclave's own errors, and their one mapping to the wire.
//!
//! Inside the enclave a failure keeps its type (a KMS refusal stays a [`KmsError`], a replay stays a
//! replay) until it leaves: [`EnclaveError::to_reply`] is the only place that turns one into the wire's
//! [`ErrorReply`] (`kind` and message), and `veil_protocol::error` is the only table from kinds to HTTP
//! statuses. Messages name what was wrong, never values, keys or plaintext.
use veil_protocol::envelope::EnvelopeError;
use veil_protocol::error::{ErrorKind, ErrorReply};
use veil_protocol::ohttp::OhttpError;

use crate::kms::KmsError;

/// Seconds a client is told to wait before retrying an overloaded enclave.
pub const RETRY_AFTER_SECS: u32 = 1;

/// Why the enclave refused or failed a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnclaveError {
    /// The sealed envelope is malformed, or does not open.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The request does not fit the model (or is not a v2 request).
    #[error("{0}")]
    BadRequest(String),
    /// No such model.
    #[error("{0}")]
    NotFound(String),
    /// The model is not loaded yet.
    #[error("model {0:?} is still loading")]
    Loading(String),
    /// The client expects another model than the one this enclave loaded.
    #[error(
        "the request is for model {model:?} with SHA-384 {expected}, but this enclave serves SHA-384 {loaded}: \
         get the current digest from a verified attestation document"
    )]
    WrongModel { model: String, expected: String, loaded: String },
    /// A request id already seen inside the replay window.
    #[error("this request id was already used: replayed request refused")]
    Replayed,
    /// `issued_at` too far from the enclave's clock.
    #[error(
        "the request was issued {0}s away from the enclave's clock, outside the replay window; check the client's clock"
    )]
    OutsideWindow(u64),
    /// The data key has sealed its budget of requests.
    #[error("this data key has sealed its maximum number of requests; start a new session (a new data key)")]
    KeyExhausted,
    /// A KMS key this enclave's configuration does not accept for requests.
    #[error("this enclave does not accept requests sealed under KMS key {0:?} (see its configuration's request_keys)")]
    KeyNotAccepted(String),
    /// KMS failed or refused.
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// KMS did not answer in time (waiting for another request's call included).
    #[error("KMS did not answer within {0:?}; try again")]
    KmsTimeout(std::time::Duration),
    /// A bounded resource is full (request bytes in flight, key cache, replay records): try again.
    #[error("the enclave is busy ({0}); try again shortly")]
    Overloaded(&'static str),
    /// The request is larger than the enclave takes.
    #[error("{0}")]
    TooLarge(String),
    /// An OHTTP request that did not decapsulate (attested-key mode).
    #[error("OHTTP: {0}")]
    Ohttp(veil_protocol::ohttp::OhttpError),
    /// Something inside the enclave failed.
    #[error("{0}")]
    Internal(String),
}

impl EnclaveError {
    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EnclaveError::Envelope(EnvelopeError::Random | EnvelopeError::TooLarge) => ErrorKind::Internal,
            EnclaveError::Envelope(_)
            | EnclaveError::BadRequest(_)
            | EnclaveError::WrongModel { .. }
            | EnclaveError::Replayed
            | EnclaveError::OutsideWindow(_)
            | EnclaveError::KeyExhausted => ErrorKind::BadRequest,
            EnclaveError::KeyNotAccepted(_) => ErrorKind::Forbidden,
            EnclaveError::NotFound(_) => ErrorKind::NotFound,
            EnclaveError::Loading(_) | EnclaveError::Overloaded(_) | EnclaveError::KmsTimeout(_) => {
                ErrorKind::Unavailable
            }
            EnclaveError::Kms(k) => k.kind(),
            EnclaveError::TooLarge(_) => ErrorKind::TooLarge,
            EnclaveError::Internal(_) => ErrorKind::Internal,
            EnclaveError::Ohttp(e) => match e {
                OhttpError::UnknownKeyId(_) | OhttpError::Unsupported { .. } | OhttpError::RequestDecrypt => {
                    ErrorKind::Unprocessable
                }
                OhttpError::Random => ErrorKind::Internal,
                OhttpError::TooLarge(_) => ErrorKind::TooLarge,
                _ => ErrorKind::BadRequest,
            },
        }
    }

    /// The wire form: the one place an enclave error becomes a kind and a message.
    pub fn to_reply(&self) -> ErrorReply {
        let reply = ErrorReply::new(self.kind(), self.to_string());
        match self.kind() {
            ErrorKind::Unavailable => reply.retry_after(RETRY_AFTER_SECS),
            _ => reply,
        }
    }

    /// A short stable label for logs and counters.
    pub fn label(&self) -> &'static str {
        match self {
            EnclaveError::Envelope(EnvelopeError::Decrypt) => "decrypt",
            EnclaveError::Envelope(_) => "envelope",
            EnclaveError::BadRequest(_) => "bad_request",
            EnclaveError::NotFound(_) => "not_found",
            EnclaveError::Loading(_) => "loading",
            EnclaveError::WrongModel { .. } => "wrong_model",
            EnclaveError::Replayed => "replayed",
            EnclaveError::OutsideWindow(_) => "outside_window",
            EnclaveError::KeyExhausted => "key_exhausted",
            EnclaveError::KeyNotAccepted(_) => "key_not_accepted",
            EnclaveError::Kms(_) => "kms",
            EnclaveError::KmsTimeout(_) => "kms_timeout",
            EnclaveError::Overloaded(_) => "overloaded",
            EnclaveError::TooLarge(_) => "too_large",
            EnclaveError::Internal(_) => "internal",
            EnclaveError::Ohttp(OhttpError::UnknownKeyId(_)) => "ohttp_key_id",
            EnclaveError::Ohttp(OhttpError::RequestDecrypt) => "ohttp_decrypt",
            EnclaveError::Ohttp(_) => "ohttp",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_says_when_to_come_back_and_kms_refusals_are_forbidden() {
        let r = EnclaveError::Overloaded("request bytes in flight").to_reply();
        assert_eq!((r.kind, r.retry_after_secs), (ErrorKind::Unavailable, Some(RETRY_AFTER_SECS)));
        let r = EnclaveError::Kms(KmsError::Refused("PCR0 does not match".into())).to_reply();
        assert_eq!(r.kind, ErrorKind::Forbidden);
        assert!(r.message.contains("KMS refused the key: PCR0"), "{}", r.message);
        assert_eq!(EnclaveError::Replayed.to_reply().kind, ErrorKind::BadRequest);
    }
}

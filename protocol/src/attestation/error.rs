//! Typed errors of the attestation module.
//!
//! Messages name the field or check and the values involved (PCRs, lengths, times: all public in an
//! attestation document), never anything secret: there is nothing secret in a document.

/// Why bytes could not be decoded as a Nitro attestation document (before any cryptography).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Larger than [`super::MAX_DOCUMENT_LEN`].
    #[error("document is {len} bytes, more than the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// Not well-formed CBOR, or not the CBOR shape the field needs.
    #[error("malformed CBOR in {context} at byte {offset}: {reason}")]
    Cbor { context: &'static str, offset: usize, reason: &'static str },
    /// The outer structure is not a COSE_Sign1.
    #[error("not a COSE_Sign1 structure: {0}")]
    NotCoseSign1(&'static str),
    /// The protected header is not exactly `{1: -35}` (alg ES384).
    #[error("protected header: {0}")]
    ProtectedHeader(&'static str),
    /// The COSE payload is detached (`nil`): attestation documents always carry it.
    #[error("payload is detached (nil); an attestation document must carry its payload")]
    DetachedPayload,
    /// The signature is not 96 bytes (ES384 r||s).
    #[error("signature is {0} bytes; ES384 needs exactly 96 (r||s)")]
    SignatureLength(usize),
    /// A required payload field is missing.
    #[error("payload field {0:?} is missing")]
    MissingField(&'static str),
    /// A payload field appears twice.
    #[error("payload field {0:?} appears more than once")]
    DuplicateField(&'static str),
    /// The payload has a key that is not one of the nine documented ones.
    #[error("payload has an unknown field {0:?}")]
    UnknownField(String),
    /// A payload field is outside its documented size range.
    #[error("payload field {field:?} is {len} long, outside {min}..={max}")]
    FieldSize { field: &'static str, len: usize, min: usize, max: usize },
    /// A payload field has a value it may not have.
    #[error("payload field {field:?}: {reason}")]
    FieldValue { field: &'static str, reason: String },
    /// Bytes follow the document.
    #[error("{0} trailing byte(s) after the document")]
    TrailingBytes(usize),
}

/// Why a certificate in the chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    #[error("not a valid X.509 DER certificate: {0}")]
    Malformed(String),
    #[error("not an X.509 v3 certificate")]
    NotV3,
    #[error("signature algorithm {0} is not ecdsa-with-SHA384")]
    SignatureAlgorithm(String),
    #[error("public key is not an EC P-384 key")]
    PublicKey,
    #[error("issuer name does not match the subject of the certificate above it")]
    IssuerMismatch,
    #[error("signature does not verify with the issuer's public key")]
    BadSignature,
    #[error("basic constraints: {0}")]
    BasicConstraints(&'static str),
    #[error("key usage: {0}")]
    KeyUsage(&'static str),
    #[error("unsupported critical extension {0}")]
    UnknownCriticalExtension(String),
}

/// The first check that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The bytes are not a well-formed attestation document.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// `cabundle[0]` is not the trusted root.
    #[error("root: cabundle[0] (SHA-256 {found}) is not the trusted root {expected_name} (SHA-256 {expected})")]
    UntrustedRoot { found: String, expected: String, expected_name: String },
    /// A certificate in the chain is invalid (`position` 0 is the root, the last is the leaf).
    #[error("certificate chain: {which} ({subject}): {reason}")]
    Certificate { position: usize, which: String, subject: String, reason: CertError },
    /// A certificate is not valid at the verification time.
    #[error("certificate validity: {which} ({subject}) is valid {not_before} to {not_after}, not at {at}")]
    CertificateTime {
        position: usize,
        which: String,
        subject: String,
        not_before: String,
        not_after: String,
        at: String,
    },
    /// The COSE_Sign1 signature does not verify with the leaf certificate's key.
    #[error("signature: the COSE_Sign1 ES384 signature does not verify with the leaf certificate's key")]
    BadSignature,
    /// PCR0, PCR1 and PCR2 are all zero (an enclave run with `--debug-mode`) and debug was not allowed.
    #[error(
        "debug mode: PCR0, PCR1 and PCR2 are all zero (enclave ran in debug mode); refused unless debug is allowed"
    )]
    DebugMode,
    /// A PCR differs from the expected value (or is absent).
    #[error("PCR{index}: expected {expected}, got {}", actual.as_deref().unwrap_or("nothing (PCR absent)"))]
    PcrMismatch { index: u8, expected: String, actual: Option<String> },
    /// The document's nonce differs from the caller's.
    #[error("nonce: expected {expected}, got {}", actual.as_deref().unwrap_or("no nonce"))]
    NonceMismatch { expected: String, actual: Option<String> },
    /// The document is older than the caller allows.
    #[error("freshness: document is {age_ms} ms old, more than the {max_ms} ms allowed")]
    TooOld { age_ms: u64, max_ms: u64 },
    /// The document is dated after the verification time (beyond the allowed clock skew).
    #[error("freshness: document is dated {ahead_ms} ms after the verification time (more than {skew_ms} ms of skew)")]
    FromTheFuture { ahead_ms: u64, skew_ms: u64 },
    /// `user_data` is not a Veil commitment, or does not commit to what the caller expects.
    #[error("user_data commitment: {0}")]
    Commitment(String),
}

/// Problems with a caller-supplied input (a root certificate, an expected PCR).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("root certificate: {0}")]
    Root(String),
    #[error("expected PCR{index}: {reason}")]
    Pcr { index: u16, reason: String },
    #[error("expected nonce is {0} bytes, more than 1024")]
    Nonce(usize),
    #[error("expected model: {0}")]
    Model(String),
}

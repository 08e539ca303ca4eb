//! The messages exchanged between the parent and the enclave.
//!
//! Two links cross the trust boundary, both over vsock on Nitro hardware:
//!
//! - **Client traffic** (parent dials the enclave): [`EnclaveRequest`] → [`EnclaveResponse`]. Each message
//!   carries a request id, so many requests are in flight on one connection and answers come back in any
//!   order. Inference bodies are sealed envelopes: opaque bytes to the parent.
//! - **Host services** (enclave dials the parent): [`HostRequest`] → [`HostResponse`]. The enclave has no
//!   disk and no network, so it asks the parent for model bytes (in chunks: models can be gigabytes), AWS
//!   credentials and a byte relay to KMS. Everything the parent answers here is hostile input to the
//!   enclave and is checked there.
//!
//! # Layout
//!
//! Every frame's payload (see [`crate::frame`]) is one message:
//!
//! ```text
//! payload    = u16 version (big-endian) ‖ u64 id (big-endian) ‖ body (CBOR) ‖ attachment
//! ```
//!
//! The fixed ten-byte prefix lets a receiver name the request (to refuse it, say, when it is over a memory
//! budget) without decoding anything. The body is one CBOR item (serde's externally tagged enums, in
//! snake case); what follows it is the *attachment*: the opaque bytes a message carries (a sealed request
//! or answer, a model chunk, a document). Attachments are never CBOR-encoded, so a body of megabytes is
//! written from and read into one buffer, never copied into or out of an encoding. A message whose kind
//! carries no attachment must end with its body: trailing bytes are refused.
//!
//! A peer speaking another version gets [`ProtoError::Version`] and the connection closes.
use std::ops::Range;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_bytes::ByteBuf;

pub use crate::error::{ErrorKind, ErrorReply};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 2;

/// Bytes before the CBOR body: version and id.
pub const PREFIX_LEN: usize = 10;

/// Most bytes one [`HostRequest::ModelChunk`] may ask for: 4 MiB keeps frames small and memory flat.
pub const MAX_MODEL_CHUNK: u32 = 4 * 1024 * 1024;

/// Longest model name accepted anywhere (names appear in URLs, logs and metrics labels).
pub const MAX_MODEL_NAME: usize = 128;

/// What a model name may be, said once for every command line and file that takes one.
pub const MODEL_NAME_RULE: &str = "model names are 1-128 characters of A-Z a-z 0-9 _ - .";

/// True for a valid model name (see [`MODEL_NAME_RULE`]).
pub fn is_valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_MODEL_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// A message body: which kinds carry an attachment.
pub trait Body: Serialize + DeserializeOwned {
    /// True when a message of this kind carries an attachment (possibly empty) after its body.
    fn takes_attachment(&self) -> bool;
    /// The kind's name, for errors that say which answer came instead of the expected one.
    fn name(&self) -> &'static str;
}

/// What the parent asks of the enclave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnclaveRequest {
    /// Run inference; the attachment is the sealed request (opaque to the parent).
    Infer { model: String },
    /// Describe a model's inputs and outputs (Open Inference Protocol model metadata, JSON).
    ModelMetadata { model: String },
    /// A fresh attestation document carrying the client's nonce.
    Attestation { nonce: ByteBuf },
    /// Is the enclave ready, and what does it serve?
    Status,
    /// Attested-key mode: the attachment is an OHTTP encapsulated request (`message/ohttp-req`, RFC 9458),
    /// opaque to the parent, which does not even learn the model or route asked for.
    Ohttp,
    /// The OHTTP key configuration list the enclave serves (`application/ohttp-keys`).
    OhttpKeys,
}

impl Body for EnclaveRequest {
    fn takes_attachment(&self) -> bool {
        matches!(self, EnclaveRequest::Infer { .. } | EnclaveRequest::Ohttp)
    }

    fn name(&self) -> &'static str {
        match self {
            EnclaveRequest::Infer { .. } => "Infer",
            EnclaveRequest::ModelMetadata { .. } => "ModelMetadata",
            EnclaveRequest::Attestation { .. } => "Attestation",
            EnclaveRequest::Status => "Status",
            EnclaveRequest::Ohttp => "Ohttp",
            EnclaveRequest::OhttpKeys => "OhttpKeys",
        }
    }
}

/// What the enclave answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnclaveResponse {
    /// The sealed answer (or sealed error) is the attachment: opaque to the parent.
    Infer,
    /// Model metadata JSON is the attachment.
    ModelMetadata,
    /// An attestation document (COSE_Sign1, CBOR) is the attachment.
    Attestation,
    /// Readiness, the models served, and how many data keys the enclave has asked KMS for.
    Status {
        ready: bool,
        models: Vec<String>,
        #[serde(default)]
        kms_calls: u64,
    },
    /// The request failed, in the clear: only failures that are not about a request's contents (a malformed
    /// envelope, a data key KMS refused, an overloaded enclave) travel this way.
    Error(ErrorReply),
    /// The attachment is an OHTTP encapsulated response (`message/ohttp-res`).
    Ohttp,
    /// The attachment is the OHTTP key configuration list (`application/ohttp-keys`).
    OhttpKeys,
}

impl Body for EnclaveResponse {
    fn takes_attachment(&self) -> bool {
        matches!(
            self,
            EnclaveResponse::Infer
                | EnclaveResponse::ModelMetadata
                | EnclaveResponse::Attestation
                | EnclaveResponse::Ohttp
                | EnclaveResponse::OhttpKeys
        )
    }

    fn name(&self) -> &'static str {
        match self {
            EnclaveResponse::Infer => "Infer",
            EnclaveResponse::ModelMetadata => "ModelMetadata",
            EnclaveResponse::Attestation => "Attestation",
            EnclaveResponse::Status { .. } => "Status",
            EnclaveResponse::Error(_) => "Error",
            EnclaveResponse::Ohttp => "Ohttp",
            EnclaveResponse::OhttpKeys => "OhttpKeys",
        }
    }
}

/// What the enclave asks of the parent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostRequest {
    /// The size of a model file the parent serves.
    ModelInfo { name: String },
    /// A slice of a model file: at most [`MAX_MODEL_CHUNK`] bytes from `offset`.
    ModelChunk { name: String, offset: u64, len: u32 },
    /// AWS credentials for the enclave's KMS calls (the instance role's, through IMDSv2 on EC2).
    Credentials,
    /// Turn this connection into a raw byte relay to `endpoint` (`host:port`, e.g.
    /// `kms.eu-west-1.amazonaws.com:443`). After [`HostResponse::RelayReady`] the connection carries the
    /// enclave's TLS bytes, which terminate inside the enclave; the parent only copies them, and refuses
    /// endpoints that are not on its allow-list.
    KmsRelay { endpoint: String },
    /// Evidence for the audit log: the attachment is records (`veil_protocol::evidence::log`) of the boot
    /// `boot`, numbered from `first`. The parent stores them in order and answers with the number of the
    /// next record it expects; the enclave keeps and resends whatever is not acknowledged.
    Audit { boot: ByteBuf, first: u64 },
}

impl Body for HostRequest {
    fn takes_attachment(&self) -> bool {
        matches!(self, HostRequest::Audit { .. })
    }

    fn name(&self) -> &'static str {
        match self {
            HostRequest::ModelInfo { .. } => "ModelInfo",
            HostRequest::ModelChunk { .. } => "ModelChunk",
            HostRequest::Credentials => "Credentials",
            HostRequest::KmsRelay { .. } => "KmsRelay",
            HostRequest::Audit { .. } => "Audit",
        }
    }
}

/// What the parent answers to the enclave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostResponse {
    ModelInfo {
        size: u64,
    },
    /// The chunk's bytes are the attachment.
    ModelChunk,
    /// Temporary AWS credentials. `expiration` is Unix seconds, when known.
    Credentials {
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
        expiration: Option<u64>,
    },
    /// The relay is open: from the next byte on, the connection is a raw pipe to the endpoint.
    RelayReady,
    /// Audit records stored: every record before `next` is in the log.
    Audit {
        next: u64,
    },
    Error(ErrorReply),
}

impl Body for HostResponse {
    fn takes_attachment(&self) -> bool {
        matches!(self, HostResponse::ModelChunk)
    }

    fn name(&self) -> &'static str {
        match self {
            HostResponse::ModelInfo { .. } => "ModelInfo",
            HostResponse::ModelChunk => "ModelChunk",
            HostResponse::Credentials { .. } => "Credentials",
            HostResponse::RelayReady => "RelayReady",
            HostResponse::Audit { .. } => "Audit",
            HostResponse::Error(_) => "Error",
        }
    }
}

impl From<ErrorReply> for EnclaveResponse {
    fn from(e: ErrorReply) -> Self {
        EnclaveResponse::Error(e)
    }
}

impl From<ErrorReply> for HostResponse {
    fn from(e: ErrorReply) -> Self {
        HostResponse::Error(e)
    }
}

/// A refusal of a whole connection's traffic (bad frame, undecodable message): kind `protocol`.
pub fn protocol_error(message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorKind::Protocol, message)
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// Shorter than the fixed prefix.
    #[error("malformed message: {0} bytes, shorter than the {PREFIX_LEN}-byte prefix")]
    Short(usize),
    /// Not well-formed CBOR, or not the shape of any message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Bytes follow a message whose kind carries no attachment.
    #[error("malformed message: {kind} carries no attachment, but {len} bytes follow it")]
    Trailing { kind: &'static str, len: usize },
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {got} (this side speaks {PROTOCOL_VERSION})")]
    Version { got: u16 },
    /// Encoding failed (cannot happen for well-typed messages, but is not assumed away).
    #[error("could not encode message: {0}")]
    Encode(String),
}

/// Reads the prefix: the version and the id, without looking at the body.
pub fn peek_prefix(payload: &[u8]) -> Result<(u16, u64), ProtoError> {
    let prefix: &[u8; PREFIX_LEN] =
        payload.get(..PREFIX_LEN).and_then(|p| p.try_into().ok()).ok_or(ProtoError::Short(payload.len()))?;
    let version = u16::from_be_bytes([prefix[0], prefix[1]]);
    let mut id = [0u8; 8];
    id.copy_from_slice(&prefix[2..]);
    Ok((version, u64::from_be_bytes(id)))
}

/// The head of a message: prefix and CBOR body, ready to be followed on the wire by the attachment.
pub fn encode_head<T: Body>(id: u64, body: &T) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    ciborium::into_writer(body, &mut out).map_err(|e| ProtoError::Encode(e.to_string()))?;
    Ok(out)
}

/// A whole message (head and attachment) in one buffer: for tests and tools that build frames by hand.
pub fn encode<T: Body>(id: u64, body: &T, attachment: &[u8]) -> Result<Vec<u8>, ProtoError> {
    let mut out = encode_head(id, body)?;
    out.extend_from_slice(attachment);
    Ok(out)
}

/// A decoded message: its id, its body, and where in the payload its attachment lies.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<T> {
    pub id: u64,
    pub body: T,
    /// The attachment's range in the payload (empty for kinds without one).
    pub attachment: Range<usize>,
}

/// Decodes a message, refusing other versions, and trailing bytes after kinds that take no attachment.
pub fn decode<T: Body>(payload: &[u8]) -> Result<Decoded<T>, ProtoError> {
    let (version, id) = peek_prefix(payload)?;
    if version != PROTOCOL_VERSION {
        return Err(ProtoError::Version { got: version });
    }
    let rest = &payload[PREFIX_LEN..];
    let mut cursor = rest;
    // ciborium reads definite-length byte strings in bounded segments, so a length field larger than the
    // (already bounded) frame fails at end of input rather than allocating; recursion is capped too.
    let body: T = ciborium::from_reader(&mut cursor).map_err(|e| ProtoError::Malformed(describe_cbor_error(&e)))?;
    let start = payload.len() - cursor.len();
    if !body.takes_attachment() && start != payload.len() {
        return Err(ProtoError::Trailing { kind: body.name(), len: payload.len() - start });
    }
    Ok(Decoded { id, body, attachment: start..payload.len() })
}

fn describe_cbor_error<E: std::fmt::Debug>(e: &ciborium::de::Error<E>) -> String {
    match e {
        ciborium::de::Error::Io(_) => "unexpected end of input".to_owned(),
        ciborium::de::Error::Syntax(offset) => format!("CBOR syntax error at byte {}", offset + PREFIX_LEN),
        ciborium::de::Error::Semantic(offset, msg) => match offset {
            Some(o) => format!("{msg} (at byte {})", o + PREFIX_LEN),
            None => msg.clone(),
        },
        ciborium::de::Error::RecursionLimitExceeded => "nested too deeply".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_request_with_its_attachment() {
        let reqs = [
            (EnclaveRequest::Infer { model: "iris".into() }, &b"sealed bytes"[..]),
            (EnclaveRequest::ModelMetadata { model: "iris".into() }, &b""[..]),
            (EnclaveRequest::Attestation { nonce: ByteBuf::from(vec![9; 32]) }, &b""[..]),
            (EnclaveRequest::Status, &b""[..]),
        ];
        for (i, (r, attachment)) in reqs.iter().enumerate() {
            let bytes = encode(i as u64, r, attachment).unwrap();
            let back: Decoded<EnclaveRequest> = decode(&bytes).unwrap();
            assert_eq!(back.id, i as u64);
            assert_eq!(&back.body, r);
            assert_eq!(&bytes[back.attachment], *attachment);
        }
        let chunk = encode(3, &HostResponse::ModelChunk, &[7u8; 100]).unwrap();
        let back: Decoded<HostResponse> = decode(&chunk).unwrap();
        assert_eq!(back.attachment.len(), 100);
    }

    #[test]
    fn refuses_trailing_bytes_after_kinds_without_attachment() {
        let mut bytes = encode(7, &EnclaveRequest::Status, b"").unwrap();
        bytes.push(0);
        assert_eq!(decode::<EnclaveRequest>(&bytes).unwrap_err(), ProtoError::Trailing { kind: "Status", len: 1 });
    }

    #[test]
    fn refuses_other_versions_and_names_them() {
        let mut bytes = encode(3, &EnclaveRequest::Status, b"").unwrap();
        bytes[..2].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(decode::<EnclaveRequest>(&bytes).unwrap_err(), ProtoError::Version { got: 9 });
        assert_eq!(peek_prefix(&bytes).unwrap(), (9, 3));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        assert_eq!(decode::<EnclaveRequest>(b"\x00\x02").unwrap_err(), ProtoError::Short(2));
        for body in
            [&b""[..], b"\xff", b"\x84\x01", b"hello world", &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]]
        {
            let mut payload = encode_head(1, &EnclaveRequest::Status).unwrap()[..PREFIX_LEN].to_vec();
            payload.extend_from_slice(body);
            let err = decode::<EnclaveRequest>(&payload).unwrap_err();
            assert!(matches!(err, ProtoError::Malformed(_)), "{body:?}: {err}");
        }
    }

    #[test]
    fn model_names_follow_the_rule() {
        assert!(is_valid_model_name("breast_cancer-2.onnx"));
        for bad in ["", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(!is_valid_model_name(bad), "{bad:?}");
        }
    }
}

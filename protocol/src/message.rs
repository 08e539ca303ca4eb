//! The messages exchanged between the parent and the enclave, as versioned CBOR.
//!
//! Two links cross the trust boundary, both over vsock on Nitro hardware:
//!
//! - **Client traffic** (parent dials the enclave): [`EnclaveRequest`] → [`EnclaveResponse`]. Each message
//!   carries a request id, so many requests are in flight on one connection and answers come back in any
//!   order. Inference bodies are opaque bytes to the parent: today Open Inference Protocol JSON, after the
//!   KMS envelope lands, ciphertext. The parent's code does not change between the two.
//! - **Host services** (enclave dials the parent): [`HostRequest`] → [`HostResponse`]. The enclave has no
//!   disk and no network, so it asks the parent for model bytes (in chunks: models can be gigabytes).
//!   Everything the parent answers here is hostile input to the enclave and is checked there.
//!
//! Every message is a [`Message`]: `{v: protocol version, id: request id, body}`. A peer speaking another
//! version gets [`ProtoError::Version`] and the connection closes. Decoding refuses trailing bytes.
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_bytes::ByteBuf;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Most bytes one [`HostRequest::ModelChunk`] may ask for: 4 MiB keeps frames small and memory flat.
pub const MAX_MODEL_CHUNK: u32 = 4 * 1024 * 1024;

/// Longest model name accepted anywhere (names appear in URLs, logs and metrics labels).
pub const MAX_MODEL_NAME: usize = 128;

/// What a model name may be, said once for every command line that takes one.
pub const MODEL_NAME_RULE: &str = "model names are 1-128 characters of A-Z a-z 0-9 _ - .";

/// True for a valid model name (see [`MODEL_NAME_RULE`]).
pub fn is_valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_MODEL_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// One message on either link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message<T> {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub v: u16,
    /// Request id chosen by the requester; the answer carries the same id.
    pub id: u64,
    /// The request or response.
    pub body: T,
}

/// What the parent asks of the enclave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnclaveRequest {
    /// Run inference. `body` is opaque to the parent.
    Infer { model: String, body: ByteBuf },
    /// Describe a model's inputs and outputs (Open Inference Protocol model metadata, JSON).
    ModelMetadata { model: String },
    /// A fresh attestation document carrying the client's nonce.
    Attestation { nonce: ByteBuf },
    /// Is the enclave ready, and what does it serve?
    Status,
}

/// What the enclave answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnclaveResponse {
    /// The inference answer (opaque to the parent).
    Infer { body: ByteBuf },
    /// Model metadata JSON.
    ModelMetadata { body: ByteBuf },
    /// An attestation document (COSE_Sign1, CBOR).
    Attestation { document: ByteBuf },
    /// Readiness, the models served, and how many data keys the enclave has asked KMS for.
    Status {
        ready: bool,
        models: Vec<String>,
        #[serde(default)]
        kms_calls: u64,
    },
    /// The request failed.
    Error(ErrorReply),
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
}

/// What the parent answers to the enclave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostResponse {
    ModelInfo {
        size: u64,
    },
    ModelChunk {
        data: ByteBuf,
    },
    /// Temporary AWS credentials. `expiration` is Unix seconds, when known.
    Credentials {
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
        expiration: Option<u64>,
    },
    /// The relay is open: from the next byte on, the connection is a raw pipe to the endpoint.
    RelayReady,
    Error(ErrorReply),
}

impl HostResponse {
    /// The answer's kind, for errors that say which answer came instead of the expected one.
    pub fn name(&self) -> &'static str {
        match self {
            HostResponse::ModelInfo { .. } => "ModelInfo",
            HostResponse::ModelChunk { .. } => "ModelChunk",
            HostResponse::Credentials { .. } => "Credentials",
            HostResponse::RelayReady => "RelayReady",
            HostResponse::Error(_) => "Error",
        }
    }
}

/// A failure, as it crosses the link: a kind for programs and a message for people.
///
/// Messages never carry secrets or request data: they name what was wrong (an input's name, an expected
/// shape), not the values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

/// Kinds of failure; the parent maps them to HTTP statuses and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request was malformed or does not fit the model (HTTP 400).
    BadRequest,
    /// No such model (HTTP 404).
    NotFound,
    /// The request is too large (HTTP 413).
    TooLarge,
    /// Not ready yet, or overloaded (HTTP 503).
    Unavailable,
    /// Inference or another internal step failed (HTTP 500).
    Internal,
    /// The peer spoke a version or message this side does not understand.
    Protocol,
}

impl ErrorKind {
    /// The HTTP status this kind maps to.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::TooLarge => 413,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal | ErrorKind::Protocol => 500,
        }
    }

    /// A short stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
            ErrorKind::Protocol => "protocol",
        }
    }
}

impl ErrorReply {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.label())
    }
}

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// Not well-formed CBOR, or not the shape of any message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Well-formed, but bytes follow the message.
    #[error("malformed message: {0} trailing bytes after the message")]
    Trailing(usize),
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {got} (this side speaks {PROTOCOL_VERSION})")]
    Version { got: u16 },
    /// Encoding failed (cannot happen for well-typed messages, but is not assumed away).
    #[error("could not encode message: {0}")]
    Encode(String),
}

/// Encodes a message body with the current version and the given id.
pub fn encode<T: Serialize>(id: u64, body: &T) -> Result<Vec<u8>, ProtoError> {
    #[derive(Serialize)]
    struct Out<'a, T> {
        v: u16,
        id: u64,
        body: &'a T,
    }
    let mut out = Vec::with_capacity(64);
    ciborium::into_writer(&Out { v: PROTOCOL_VERSION, id, body }, &mut out)
        .map_err(|e| ProtoError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes a message, refusing other versions and trailing bytes.
///
/// On a version mismatch the id is still returned inside the error path where it can be read, so that an
/// answer can name the request; see [`peek_id`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<Message<T>, ProtoError> {
    let mut cursor = bytes;
    // ciborium reads definite-length byte strings in bounded segments, so a length field larger than the
    // (already bounded) frame fails at end of input rather than allocating; recursion is capped too.
    let msg: Message<T> = ciborium::from_reader(&mut cursor).map_err(|e| {
        // A version check first: a message from a future peer may not even have today's body shape.
        match peek_version(bytes) {
            Some(v) if v != PROTOCOL_VERSION => ProtoError::Version { got: v },
            _ => ProtoError::Malformed(describe_cbor_error(&e)),
        }
    })?;
    if !cursor.is_empty() {
        return Err(ProtoError::Trailing(cursor.len()));
    }
    if msg.v != PROTOCOL_VERSION {
        return Err(ProtoError::Version { got: msg.v });
    }
    Ok(msg)
}

/// Reads the `id` of a message whose body may not decode, so an error answer can still name the request.
pub fn peek_id(bytes: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Head {
        id: u64,
    }
    ciborium::from_reader::<Head, _>(bytes).ok().map(|h| h.id)
}

fn peek_version(bytes: &[u8]) -> Option<u16> {
    #[derive(Deserialize)]
    struct Head {
        v: u16,
    }
    ciborium::from_reader::<Head, _>(bytes).ok().map(|h| h.v)
}

fn describe_cbor_error<E: std::fmt::Debug>(e: &ciborium::de::Error<E>) -> String {
    match e {
        ciborium::de::Error::Io(_) => "unexpected end of input".to_owned(),
        ciborium::de::Error::Syntax(offset) => format!("CBOR syntax error at byte {offset}"),
        ciborium::de::Error::Semantic(offset, msg) => match offset {
            Some(o) => format!("{msg} (at byte {o})"),
            None => msg.clone(),
        },
        ciborium::de::Error::RecursionLimitExceeded => "nested too deeply".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_request() {
        let reqs = [
            EnclaveRequest::Infer { model: "iris".into(), body: ByteBuf::from(vec![1, 2, 3]) },
            EnclaveRequest::ModelMetadata { model: "iris".into() },
            EnclaveRequest::Attestation { nonce: ByteBuf::from(vec![9; 32]) },
            EnclaveRequest::Status,
        ];
        for (i, r) in reqs.iter().enumerate() {
            let bytes = encode(i as u64, r).unwrap();
            let back: Message<EnclaveRequest> = decode(&bytes).unwrap();
            assert_eq!(back.id, i as u64);
            assert_eq!(&back.body, r);
        }
    }

    #[test]
    fn refuses_trailing_bytes() {
        let mut bytes = encode(7, &EnclaveRequest::Status).unwrap();
        bytes.push(0);
        assert!(matches!(decode::<EnclaveRequest>(&bytes), Err(ProtoError::Trailing(1))));
    }

    #[test]
    fn refuses_other_versions_and_names_them() {
        #[derive(Serialize)]
        struct Future {
            v: u16,
            id: u64,
            body: &'static str,
        }
        let mut bytes = Vec::new();
        ciborium::into_writer(&Future { v: 9, id: 3, body: "new_thing" }, &mut bytes).unwrap();
        let err = decode::<EnclaveRequest>(&bytes).unwrap_err();
        assert!(matches!(err, ProtoError::Version { got: 9 }), "{err}");
        assert_eq!(peek_id(&bytes), Some(3));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for garbage in
            [&b""[..], b"\xff", b"\x84\x01", b"hello world", &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]]
        {
            let err = decode::<EnclaveRequest>(garbage).unwrap_err();
            assert!(matches!(err, ProtoError::Malformed(_)), "{garbage:?}: {err}");
        }
    }
}

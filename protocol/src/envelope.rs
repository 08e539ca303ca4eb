//! The KMS envelope: how a client seals an inference request so that only an attested enclave can open it,
//! and how the enclave seals the answer back.
//!
//! Pure: this module encrypts and decrypts bytes; it never talks to KMS. The client gets a data key from
//! KMS `GenerateDataKey`; the enclave gets the same data key back from KMS `Decrypt` with its attestation
//! document as `Recipient`, which KMS grants only when the key policy's PCR conditions match the enclave.
//!
//! ```text
//! prk          = HKDF-SHA256-Extract(salt = "veil/v1 envelope", ikm = data key)
//! request key  = HKDF-Expand(prk, "veil/v1 request"  ‖ request_id, 32)
//! response key = HKDF-Expand(prk, "veil/v1 response" ‖ request_id, 32)
//! aad          = "veil/v1" ‖ u8 direction ‖ u16 len ‖ model ‖ request_id (16) ‖ u16 len ‖ key_id ‖ u64 issued_at
//! ciphertext   = AES-256-GCM(key, nonce (12, random), plaintext, aad)
//! ```
//!
//! Every request has its own 16-byte random id and so its own keys: a nonce can never repeat under a key.
//! The associated data binds the protocol version, the direction, the model name, the request id and the
//! KMS key id, so a sealed request cannot be replayed against another model, turned into an answer, or
//! moved under another key. `issued_at` (Unix seconds, set by the client) is bound too: the enclave refuses
//! requests outside its replay window (a few minutes), and within it refuses any request id it has already
//! seen for the same data key, so a recorded request cannot be played again.
//! The KMS encryption context is bound by KMS itself into the encrypted data key.
//!
//! On the wire (the body of `POST /v1/models/{model}/infer`), CBOR:
//! `{"v": 1, "key_id": tstr, "encrypted_data_key": bstr, "encryption_context": {tstr: tstr},
//!   "request_id": bstr .size 16, "issued_at": uint, "nonce": bstr .size 12, "ciphertext": bstr}`; the answer:
//! `{"v": 1, "request_id": bstr .size 16, "nonce": bstr .size 12, "ciphertext": bstr}`.
use std::collections::BTreeMap;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, KeyType, Prk, Salt};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use zeroize::{Zeroize, Zeroizing};

/// The envelope format version this build writes and reads.
pub const ENVELOPE_VERSION: u16 = 1;
/// Bytes in a data key (AES-256).
pub const DATA_KEY_LEN: usize = 32;
/// Bytes in a request id.
pub const REQUEST_ID_LEN: usize = 16;
/// Longest KMS key id accepted (an alias ARN is at most 2048 characters).
pub const MAX_KEY_ID: usize = 2048;
/// Largest encrypted data key accepted (KMS ciphertext blobs are at most 6144 bytes).
pub const MAX_ENCRYPTED_DATA_KEY: usize = 6144;
/// Most encryption context pairs, and the longest key or value.
pub const MAX_CONTEXT_PAIRS: usize = 16;
pub const MAX_CONTEXT_LEN: usize = 256;

const SALT: &[u8] = b"veil/v1 envelope";
const TAG_LEN: usize = 16;

/// A sealed request, as the client sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SealedRequest {
    pub v: u16,
    pub key_id: String,
    pub encrypted_data_key: ByteBuf,
    pub encryption_context: BTreeMap<String, String>,
    pub request_id: ByteBuf,
    /// When the client sealed it, Unix seconds.
    pub issued_at: u64,
    pub nonce: ByteBuf,
    pub ciphertext: ByteBuf,
}

/// A sealed answer, as the enclave returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SealedResponse {
    pub v: u16,
    pub request_id: ByteBuf,
    pub nonce: ByteBuf,
    pub ciphertext: ByteBuf,
}

/// Why an envelope was refused. Messages name what was wrong, never key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    #[error("malformed envelope: {0}")]
    Malformed(String),
    #[error("unsupported envelope version {0} (this side speaks {ENVELOPE_VERSION})")]
    Version(u16),
    #[error("envelope field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    /// Authentication failed: wrong key, wrong model, tampered or truncated ciphertext. One error for all,
    /// on purpose: telling them apart would help an attacker.
    #[error("the envelope does not decrypt: wrong key, wrong model or request id, or tampered ciphertext")]
    Decrypt,
    #[error("the system random number generator failed")]
    Random,
}

fn field(field: &'static str, reason: impl Into<String>) -> EnvelopeError {
    EnvelopeError::Field { field, reason: reason.into() }
}

/// Which way a message goes; part of both the key and the associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Request = 1,
    Response = 2,
}

struct Len32;
impl KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// One data key. Holding one means holding the data key: keep it inside the enclave or the client. The
/// key bytes are zeroized when it drops; the per-request keys are derived on demand and live only for the
/// call that needs them.
pub struct DataKey {
    key: Zeroizing<[u8; DATA_KEY_LEN]>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// Derives the envelope keys from a 32-byte data key (KMS `GenerateDataKey` with `KeySpec=AES_256`).
    pub fn new(data_key: &[u8]) -> Result<DataKey, EnvelopeError> {
        if data_key.len() != DATA_KEY_LEN {
            return Err(field("data key", format!("must be {DATA_KEY_LEN} bytes, got {}", data_key.len())));
        }
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        key.copy_from_slice(data_key);
        Ok(DataKey { key })
    }

    fn prk(&self) -> Prk {
        Salt::new(HKDF_SHA256, SALT).extract(&self.key[..])
    }

    fn aead(&self, direction: Direction, request_id: &[u8]) -> Result<LessSafeKey, EnvelopeError> {
        let label: &[u8] = match direction {
            Direction::Request => b"veil/v1 request",
            Direction::Response => b"veil/v1 response",
        };
        let info = [label, request_id];
        let prk = self.prk();
        let okm = prk.expand(&info, Len32).map_err(|_| EnvelopeError::Decrypt)?;
        let mut key = Zeroizing::new([0u8; 32]);
        okm.fill(&mut key[..]).map_err(|_| EnvelopeError::Decrypt)?;
        let unbound = UnboundKey::new(&AES_256_GCM, &key[..]).map_err(|_| EnvelopeError::Decrypt)?;
        Ok(LessSafeKey::new(unbound))
    }
}

fn aad(direction: Direction, model: &str, request_id: &[u8], key_id: &str, issued_at: u64) -> Vec<u8> {
    let mut a = Vec::with_capacity(24 + model.len() + request_id.len() + key_id.len());
    a.extend_from_slice(b"veil/v1");
    a.push(direction as u8);
    a.extend_from_slice(&(model.len() as u16).to_be_bytes());
    a.extend_from_slice(model.as_bytes());
    a.extend_from_slice(request_id);
    a.extend_from_slice(&(key_id.len() as u16).to_be_bytes());
    a.extend_from_slice(key_id.as_bytes());
    a.extend_from_slice(&issued_at.to_be_bytes());
    a
}

fn random<const N: usize>() -> Result<[u8; N], EnvelopeError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| EnvelopeError::Random)?;
    Ok(b)
}

fn seal(key: &LessSafeKey, aad: &[u8], plaintext: &[u8]) -> Result<([u8; NONCE_LEN], Vec<u8>), EnvelopeError> {
    let nonce = random::<NONCE_LEN>()?;
    let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
    buf.extend_from_slice(plaintext);
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
        .map_err(|_| EnvelopeError::Decrypt)?;
    Ok((nonce, buf))
}

fn open(key: &LessSafeKey, aad: &[u8], nonce: &[u8], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| field("nonce", format!("must be {NONCE_LEN} bytes")))?;
    if ciphertext.len() < TAG_LEN {
        return Err(EnvelopeError::Decrypt);
    }
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let len = key
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
        .map_err(|_| EnvelopeError::Decrypt)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// What a client needs to seal requests under one data key.
#[derive(Debug)]
pub struct Sealer<'a> {
    pub key: &'a DataKey,
    pub key_id: &'a str,
    pub encrypted_data_key: &'a [u8],
    pub encryption_context: &'a BTreeMap<String, String>,
}

impl Sealer<'_> {
    /// Seals a plaintext request for `model`, issued at `issued_at` (Unix seconds, now). Returns the wire
    /// bytes and the request id and time (both needed to open the answer).
    pub fn seal_request(
        &self,
        model: &str,
        plaintext: &[u8],
        issued_at: u64,
    ) -> Result<(Vec<u8>, RequestTag), EnvelopeError> {
        let request_id = random::<REQUEST_ID_LEN>()?;
        let key = self.key.aead(Direction::Request, &request_id)?;
        let (nonce, ciphertext) =
            seal(&key, &aad(Direction::Request, model, &request_id, self.key_id, issued_at), plaintext)?;
        let sealed = SealedRequest {
            v: ENVELOPE_VERSION,
            key_id: self.key_id.to_owned(),
            encrypted_data_key: ByteBuf::from(self.encrypted_data_key.to_vec()),
            encryption_context: self.encryption_context.clone(),
            request_id: ByteBuf::from(request_id.to_vec()),
            issued_at,
            nonce: ByteBuf::from(nonce.to_vec()),
            ciphertext: ByteBuf::from(ciphertext),
        };
        let mut out = Vec::new();
        ciborium::into_writer(&sealed, &mut out).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        Ok((out, RequestTag { request_id, issued_at }))
    }

    /// Opens the enclave's answer to the request `tag` names, for `model`.
    pub fn open_response(
        &self,
        model: &str,
        tag: &RequestTag,
        body: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        let sealed: SealedResponse = decode(body)?;
        if sealed.v != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version(sealed.v));
        }
        if sealed.request_id.as_slice() != tag.request_id {
            return Err(field("request_id", "the answer is for another request"));
        }
        let key = self.key.aead(Direction::Response, &tag.request_id)?;
        let aad = aad(Direction::Response, model, &tag.request_id, self.key_id, tag.issued_at);
        open(&key, &aad, &sealed.nonce, &sealed.ciphertext)
    }
}

/// What identifies a sealed request to its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTag {
    pub request_id: [u8; REQUEST_ID_LEN],
    pub issued_at: u64,
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, EnvelopeError> {
    let mut cursor = bytes;
    let v: T = ciborium::from_reader(&mut cursor).map_err(|e| {
        EnvelopeError::Malformed(match e {
            ciborium::de::Error::Io(_) => "truncated".to_owned(),
            ciborium::de::Error::Syntax(o) => format!("CBOR syntax error at byte {o}"),
            ciborium::de::Error::Semantic(_, m) => m,
            ciborium::de::Error::RecursionLimitExceeded => "nested too deeply".to_owned(),
        })
    })?;
    if !cursor.is_empty() {
        return Err(EnvelopeError::Malformed(format!("{} trailing bytes", cursor.len())));
    }
    Ok(v)
}

/// Parses and checks a sealed request's fields (not its ciphertext): the enclave does this first, then
/// asks KMS for the data key, then calls [`open_request`].
pub fn parse_request(body: &[u8]) -> Result<SealedRequest, EnvelopeError> {
    let r: SealedRequest = decode(body)?;
    if r.v != ENVELOPE_VERSION {
        return Err(EnvelopeError::Version(r.v));
    }
    if r.key_id.is_empty() || r.key_id.len() > MAX_KEY_ID {
        return Err(field("key_id", format!("must be 1 to {MAX_KEY_ID} bytes")));
    }
    if r.encrypted_data_key.is_empty() || r.encrypted_data_key.len() > MAX_ENCRYPTED_DATA_KEY {
        return Err(field("encrypted_data_key", format!("must be 1 to {MAX_ENCRYPTED_DATA_KEY} bytes")));
    }
    if r.encryption_context.len() > MAX_CONTEXT_PAIRS {
        return Err(field("encryption_context", format!("at most {MAX_CONTEXT_PAIRS} pairs")));
    }
    if r.encryption_context.iter().any(|(k, v)| k.is_empty() || k.len() > MAX_CONTEXT_LEN || v.len() > MAX_CONTEXT_LEN)
    {
        return Err(field(
            "encryption_context",
            format!("keys must be 1 to {MAX_CONTEXT_LEN} bytes, values at most {MAX_CONTEXT_LEN}"),
        ));
    }
    if r.request_id.len() != REQUEST_ID_LEN {
        return Err(field("request_id", format!("must be {REQUEST_ID_LEN} bytes")));
    }
    if r.nonce.len() != NONCE_LEN {
        return Err(field("nonce", format!("must be {NONCE_LEN} bytes")));
    }
    if r.ciphertext.len() < TAG_LEN {
        return Err(field("ciphertext", "shorter than its authentication tag (truncated)"));
    }
    Ok(r)
}

/// Opens a parsed request with the data key KMS released for it.
pub fn open_request(key: &DataKey, model: &str, request: &SealedRequest) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let k = key.aead(Direction::Request, &request.request_id)?;
    let aad = aad(Direction::Request, model, &request.request_id, &request.key_id, request.issued_at);
    open(&k, &aad, &request.nonce, &request.ciphertext)
}

/// Seals the enclave's answer to `request` for `model`.
pub fn seal_response(
    key: &DataKey,
    model: &str,
    request: &SealedRequest,
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let k = key.aead(Direction::Response, &request.request_id)?;
    let aad = aad(Direction::Response, model, &request.request_id, &request.key_id, request.issued_at);
    let (nonce, ciphertext) = seal(&k, &aad, plaintext)?;
    let sealed = SealedResponse {
        v: ENVELOPE_VERSION,
        request_id: request.request_id.clone(),
        nonce: ByteBuf::from(nonce.to_vec()),
        ciphertext: ByteBuf::from(ciphertext),
    };
    let mut out = Vec::new();
    ciborium::into_writer(&sealed, &mut out).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    Ok(out)
}

/// Zeroizes a buffer that held plaintext (a convenience for callers holding plain `Vec`s).
pub fn wipe(buf: &mut Vec<u8>) {
    buf.zeroize();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (DataKey, BTreeMap<String, String>) {
        let ctx = BTreeMap::from([("tenant".to_owned(), "hospital-a".to_owned())]);
        (DataKey::new(&[7u8; 32]).unwrap(), ctx)
    }

    #[test]
    fn round_trip_both_ways() {
        let (key, ctx) = setup();
        let sealer = Sealer { key: &key, key_id: "k1", encrypted_data_key: b"blob", encryption_context: &ctx };
        let (wire, id) = sealer.seal_request("iris", b"{\"inputs\":[]}", 1_700_000_000).unwrap();
        let parsed = parse_request(&wire).unwrap();
        assert_eq!(parsed.encryption_context, ctx);
        assert_eq!(&open_request(&key, "iris", &parsed).unwrap()[..], b"{\"inputs\":[]}");
        let answer = seal_response(&key, "iris", &parsed, b"{\"outputs\":[]}").unwrap();
        assert_eq!(&sealer.open_response("iris", &id, &answer).unwrap()[..], b"{\"outputs\":[]}");
        // The plaintext is nowhere in the wire bytes.
        assert!(!wire.windows(8).any(|w| w == b"\"inputs\""));
    }

    #[test]
    fn binding_to_model_key_id_and_direction() {
        let (key, ctx) = setup();
        let sealer = Sealer { key: &key, key_id: "k1", encrypted_data_key: b"blob", encryption_context: &ctx };
        let (wire, id) = sealer.seal_request("iris", b"x", 1_700_000_000).unwrap();
        let parsed = parse_request(&wire).unwrap();
        assert_eq!(open_request(&key, "minilm", &parsed).unwrap_err(), EnvelopeError::Decrypt);
        let mut other_time = parsed.clone();
        other_time.issued_at += 1;
        assert_eq!(open_request(&key, "iris", &other_time).unwrap_err(), EnvelopeError::Decrypt);
        let mut other_key_id = parsed.clone();
        other_key_id.key_id = "k2".into();
        assert_eq!(open_request(&key, "iris", &other_key_id).unwrap_err(), EnvelopeError::Decrypt);
        let wrong = DataKey::new(&[8u8; 32]).unwrap();
        assert_eq!(open_request(&wrong, "iris", &parsed).unwrap_err(), EnvelopeError::Decrypt);
        // A request cannot pass as an answer (other key, other direction in the AAD).
        let as_answer = SealedResponse {
            v: 1,
            request_id: parsed.request_id.clone(),
            nonce: parsed.nonce.clone(),
            ciphertext: parsed.ciphertext.clone(),
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&as_answer, &mut bytes).unwrap();
        assert_eq!(sealer.open_response("iris", &id, &bytes).unwrap_err(), EnvelopeError::Decrypt);
    }

    #[test]
    fn tampering_and_truncation_are_refused() {
        let (key, ctx) = setup();
        let sealer = Sealer { key: &key, key_id: "k1", encrypted_data_key: b"blob", encryption_context: &ctx };
        let (wire, _) = sealer.seal_request("iris", b"hello world", 1_700_000_000).unwrap();
        let parsed = parse_request(&wire).unwrap();
        for i in 0..parsed.ciphertext.len() {
            let mut t = parsed.clone();
            t.ciphertext[i] ^= 1;
            assert_eq!(open_request(&key, "iris", &t).unwrap_err(), EnvelopeError::Decrypt, "byte {i}");
        }
        for cut in 0..wire.len() {
            assert!(parse_request(&wire[..cut]).is_err(), "cut {cut}");
        }
        let mut short = parsed.clone();
        short.ciphertext.truncate(parsed.ciphertext.len() - 1);
        assert_eq!(open_request(&key, "iris", &short).unwrap_err(), EnvelopeError::Decrypt);
    }

    #[test]
    fn fields_are_bounded_with_reasons() {
        let (key, ctx) = setup();
        let sealer = Sealer { key: &key, key_id: "k1", encrypted_data_key: b"blob", encryption_context: &ctx };
        let (wire, _) = sealer.seal_request("iris", b"x", 1_700_000_000).unwrap();
        let base = parse_request(&wire).unwrap();
        let enc = |r: &SealedRequest| {
            let mut b = Vec::new();
            ciborium::into_writer(r, &mut b).unwrap();
            b
        };
        let mut r = base.clone();
        r.v = 2;
        assert_eq!(parse_request(&enc(&r)).unwrap_err(), EnvelopeError::Version(2));
        let mut r = base.clone();
        r.request_id = ByteBuf::from(vec![0; 3]);
        assert!(parse_request(&enc(&r)).unwrap_err().to_string().contains("request_id"));
        let mut r = base.clone();
        r.encrypted_data_key = ByteBuf::from(vec![0; MAX_ENCRYPTED_DATA_KEY + 1]);
        assert!(parse_request(&enc(&r)).unwrap_err().to_string().contains("encrypted_data_key"));
        let mut r = base;
        r.key_id = String::new();
        assert!(parse_request(&enc(&r)).unwrap_err().to_string().contains("key_id"));
        assert!(matches!(parse_request(b"\xff\x00").unwrap_err(), EnvelopeError::Malformed(_)));
        assert!(DataKey::new(&[0; 16]).is_err());
    }
}

//! The KMS envelope (version 2): how a client seals an inference request so that only an attested enclave
//! that loaded the model the client expects can open it, and how the enclave seals the answer back.
//!
//! Pure: this module encrypts and decrypts bytes; it never talks to KMS. The client gets a data key from
//! KMS `GenerateDataKey`; the enclave gets the same data key back from KMS `Decrypt` with its attestation
//! document as `Recipient`, which KMS grants only when the key policy's PCR conditions match the enclave.
//!
//! ```text
//! prk          = HKDF-SHA256-Extract(salt = "veil/v2 envelope", ikm = data key)
//! request key  = HKDF-Expand(prk, "veil/v2 request"  ‖ request_id, 32)
//! answer key   = HKDF-Expand(prk, "veil/v2 response" ‖ request_id, 32)
//! aad          = "veil/v2" ‖ u8 direction (1 request, 2 answer) ‖ u16 len ‖ model ‖ model_sha384 (48)
//!                ‖ request_id (16) ‖ u16 len ‖ key_id ‖ u64 issued_at
//! plaintext    = padded(body, meta)                       (see crate::pad: lengths, body, meta, zeros)
//! ciphertext   = AES-256-GCM(key, nonce (12, random), plaintext, aad)
//! ```
//!
//! Every request has its own 16-byte random id and so its own keys: a nonce can never repeat under a key.
//! The associated data binds the protocol version, the direction, the model's name **and the SHA-384 of
//! the model the client expects**, the request id, the KMS key id and the issue time. The enclave builds
//! the associated data with the digest of the model it actually loaded, so an enclave that loaded anything
//! else cannot open the request; a sealed request cannot be replayed against another model, turned into an
//! answer, or moved under another key. `issued_at` (Unix seconds, set by the client) lets the enclave
//! refuse requests outside its replay window. The KMS encryption context is bound by KMS itself into the
//! encrypted data key.
//!
//! Both the request's and the answer's plaintext are padded to size buckets ([`crate::pad`]), so the
//! parent learns a bucket, not a length. The answer's `meta` says how the request ended, as a typed value
//! ([`Outcome`]): the answer, or an error (`kind`, `message`). Errors about a request's contents, and every
//! refusal the enclave makes once it holds the data key, travel sealed, so a client can tell an error the
//! enclave authenticated from anything the parent made up.
//!
//! On the wire (the body of `POST /v1/models/{model}/infer`), canonical CBOR maps, keys in this order:
//!
//! ```text
//! request = {"v": 2, "key_id": tstr, "encrypted_data_key": bstr, "encryption_context": {* tstr => tstr},
//!            "model_sha384": bstr .size 48, "request_id": bstr .size 16, "issued_at": uint,
//!            "nonce": bstr .size 12, "ciphertext": bstr}
//! answer  = {"v": 2, "request_id": bstr .size 16, "nonce": bstr .size 12, "ciphertext": bstr}
//! request meta = {? "inference_header_length": uint}
//! answer meta  = {"model_sha384": bstr .size 48, "outcome": "answer", ? "inference_header_length": uint,
//!                 ? receipt}
//!              / {"model_sha384": bstr .size 48, "outcome": "error", "kind": tstr, "message": tstr,
//!                 ? "retry_after_secs": uint, ? receipt}
//! receipt      = ("receipt": bstr (a COSE_Sign1, crate::evidence), "receipt_salt": bstr .size 32)
//! ```
//!
//! Version 1 (no model digest, no padding, errors sniffed from JSON) is retired: nothing reads it.
//!
//! Why one long file: the request and answer sides share the key schedule, the associated data and the
//! padding layout, and a reviewer checks the construction in one place; the tests are at the end. The
//! metas' CBOR codecs (no cryptography) are in [`meta`].
use std::collections::BTreeMap;
use std::ops::Range;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, KeyType, Salt};
use zeroize::Zeroizing;

use crate::cbor::{CborError, Len, Reader, write_bytes, write_head, write_text};
use crate::error::{ErrorReply, clip};
use crate::pad::{self, PadError};
use crate::random::{self, RandomSource};

mod meta;

pub use meta::{AnswerMeta, AnswerReceipt, Outcome, RequestMeta};

/// The envelope format version this build writes and reads.
pub const ENVELOPE_VERSION: u64 = 2;
/// Bytes in a data key (AES-256).
pub const DATA_KEY_LEN: usize = 32;
/// Bytes in a request id.
pub const REQUEST_ID_LEN: usize = 16;
/// Bytes in an AES-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Bytes in a model digest (SHA-384).
pub const DIGEST_LEN: usize = 48;
/// Bytes in an AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Longest KMS key id accepted (an alias ARN is at most 2048 characters).
pub const MAX_KEY_ID: usize = 2048;
/// Largest encrypted data key accepted (KMS ciphertext blobs are at most 6144 bytes).
pub const MAX_ENCRYPTED_DATA_KEY: usize = 6144;
/// Most encryption context pairs, and the longest key or value.
pub const MAX_CONTEXT_PAIRS: usize = 16;
pub const MAX_CONTEXT_LEN: usize = 256;
/// Largest `meta` map accepted.
pub const MAX_META: usize = 4096;
/// Longest model name bound into the associated data.
pub const MAX_MODEL_NAME: usize = 128;

const SALT: &[u8] = b"veil/v2 envelope";
/// Room reserved in front of an answer's plaintext for the answer map's CBOR head (at most 74 bytes).
const ANSWER_PREFIX_ROOM: usize = 80;
/// Room kept after an answer's body for its meta (the outcome, an error's message of at most
/// [`crate::error::MAX_ERROR_MESSAGE`] bytes, and a receipt with its salt: under 1 KiB besides the
/// message), so that encoding the meta never moves the plaintext to a larger allocation and leaves the
/// old one unwiped.
pub const ANSWER_META_ROOM: usize = crate::error::MAX_ERROR_MESSAGE + 1024;

/// Why an envelope was refused. Messages name what was wrong, never key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    #[error("malformed envelope: {0}")]
    Malformed(String),
    #[error("unsupported envelope version {0} (this side speaks {ENVELOPE_VERSION})")]
    Version(u64),
    #[error("envelope field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    /// Authentication failed: wrong key, wrong model, tampered or truncated ciphertext. One error for all,
    /// on purpose: telling them apart would help an attacker.
    #[error(
        "the envelope does not decrypt: wrong key, another model or model digest, another request id, or tampered ciphertext"
    )]
    Decrypt,
    /// The plaintext authenticated but is not laid out as padding requires (a broken peer).
    #[error("the sealed plaintext is malformed: {0}")]
    Padding(#[from] PadError),
    /// The plaintext authenticated but its `meta` is not what this version writes.
    #[error("the sealed plaintext's meta is malformed: {0}")]
    Meta(String),
    #[error("the system random number generator failed")]
    Random,
    #[error("the plaintext is too large to seal")]
    TooLarge,
}

impl From<random::RandomError> for EnvelopeError {
    fn from(_: random::RandomError) -> Self {
        EnvelopeError::Random
    }
}

fn field(field: &'static str, reason: impl Into<String>) -> EnvelopeError {
    EnvelopeError::Field { field, reason: reason.into() }
}

fn malformed(e: CborError) -> EnvelopeError {
    EnvelopeError::Malformed(format!("{} (at byte {})", e.reason, e.offset))
}

/// Which way a message goes; part of both the key and the associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Request = 1,
    Answer = 2,
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
    /// A data key from its 32 bytes (KMS `GenerateDataKey` with `KeySpec=AES_256`).
    pub fn new(data_key: &[u8]) -> Result<DataKey, EnvelopeError> {
        if data_key.len() != DATA_KEY_LEN {
            return Err(field("data key", format!("must be {DATA_KEY_LEN} bytes, got {}", data_key.len())));
        }
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        key.copy_from_slice(data_key);
        Ok(DataKey { key })
    }

    fn aead(&self, direction: Direction, request_id: &[u8; REQUEST_ID_LEN]) -> Result<LessSafeKey, EnvelopeError> {
        let label: &[u8] = match direction {
            Direction::Request => b"veil/v2 request",
            Direction::Answer => b"veil/v2 response",
        };
        let info = [label, &request_id[..]];
        let prk = Salt::new(HKDF_SHA256, SALT).extract(&self.key[..]);
        let okm = prk.expand(&info, Len32).map_err(|_| EnvelopeError::Decrypt)?;
        let mut key = Zeroizing::new([0u8; 32]);
        okm.fill(&mut key[..]).map_err(|_| EnvelopeError::Decrypt)?;
        let unbound = UnboundKey::new(&AES_256_GCM, &key[..]).map_err(|_| EnvelopeError::Decrypt)?;
        Ok(LessSafeKey::new(unbound))
    }
}

/// The model a request is for: its name (the route) and the SHA-384 the client expects it to have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    pub name: String,
    pub sha384: [u8; DIGEST_LEN],
}

fn aad(
    direction: Direction,
    model: &ModelRef,
    request_id: &[u8; REQUEST_ID_LEN],
    key_id: &str,
    issued_at: u64,
) -> Vec<u8> {
    let mut a = Vec::with_capacity(96 + model.name.len() + key_id.len());
    a.extend_from_slice(b"veil/v2");
    a.push(direction as u8);
    a.extend_from_slice(&(model.name.len() as u16).to_be_bytes());
    a.extend_from_slice(model.name.as_bytes());
    a.extend_from_slice(&model.sha384);
    a.extend_from_slice(request_id);
    a.extend_from_slice(&(key_id.len() as u16).to_be_bytes());
    a.extend_from_slice(key_id.as_bytes());
    a.extend_from_slice(&issued_at.to_be_bytes());
    a
}

fn check_model(model: &ModelRef) -> Result<(), EnvelopeError> {
    if model.name.is_empty() || model.name.len() > MAX_MODEL_NAME {
        return Err(field("model", format!("names are 1 to {MAX_MODEL_NAME} bytes")));
    }
    Ok(())
}

/// The clear fields of a sealed request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader {
    pub key_id: String,
    pub encrypted_data_key: Vec<u8>,
    pub encryption_context: BTreeMap<String, String>,
    /// The SHA-384 of the model the client expects to answer.
    pub model_sha384: [u8; DIGEST_LEN],
    pub request_id: [u8; REQUEST_ID_LEN],
    /// When the client sealed it, Unix seconds.
    pub issued_at: u64,
    pub nonce: [u8; NONCE_LEN],
}

/// A parsed sealed request: its header, and where its ciphertext lies in the body it was parsed from
/// (so that the enclave can open it in place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRequest {
    pub header: RequestHeader,
    pub ciphertext: Range<usize>,
}

/// Parses and checks a sealed request's clear fields (not its ciphertext): the enclave does this first,
/// then asks KMS for the data key, then calls [`open_request_in_place`].
pub fn parse_request(body: &[u8]) -> Result<ParsedRequest, EnvelopeError> {
    let mut r = Reader::new(body);
    if r.map().map_err(malformed)? != Len::Definite(9) {
        return Err(EnvelopeError::Malformed("a request is a map of 9 entries".into()));
    }
    expect_key(&mut r, "v")?;
    let v = r.uint().map_err(malformed)?;
    if v != ENVELOPE_VERSION {
        return Err(EnvelopeError::Version(v));
    }
    expect_key(&mut r, "key_id")?;
    let key_id = r.text().map_err(malformed)?;
    if key_id.is_empty() || key_id.len() > MAX_KEY_ID {
        return Err(field("key_id", format!("must be 1 to {MAX_KEY_ID} bytes")));
    }
    expect_key(&mut r, "encrypted_data_key")?;
    let edk = r.bytes().map_err(malformed)?;
    if edk.is_empty() || edk.len() > MAX_ENCRYPTED_DATA_KEY {
        return Err(field("encrypted_data_key", format!("must be 1 to {MAX_ENCRYPTED_DATA_KEY} bytes")));
    }
    expect_key(&mut r, "encryption_context")?;
    let pairs = match r.map().map_err(malformed)? {
        Len::Definite(n) if n <= MAX_CONTEXT_PAIRS as u64 => n,
        _ => return Err(field("encryption_context", format!("a map of at most {MAX_CONTEXT_PAIRS} pairs"))),
    };
    let mut encryption_context = BTreeMap::new();
    for _ in 0..pairs {
        let k = r.text().map_err(malformed)?;
        let v = r.text().map_err(malformed)?;
        if k.is_empty() || k.len() > MAX_CONTEXT_LEN || v.len() > MAX_CONTEXT_LEN {
            return Err(field(
                "encryption_context",
                format!("keys must be 1 to {MAX_CONTEXT_LEN} bytes, values at most {MAX_CONTEXT_LEN}"),
            ));
        }
        if encryption_context.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(field("encryption_context", "a key appears twice"));
        }
    }
    expect_key(&mut r, "model_sha384")?;
    let model_sha384 = fixed::<DIGEST_LEN>(&mut r, "model_sha384")?;
    expect_key(&mut r, "request_id")?;
    let request_id = fixed::<REQUEST_ID_LEN>(&mut r, "request_id")?;
    expect_key(&mut r, "issued_at")?;
    let issued_at = r.uint().map_err(malformed)?;
    expect_key(&mut r, "nonce")?;
    let nonce = fixed::<NONCE_LEN>(&mut r, "nonce")?;
    expect_key(&mut r, "ciphertext")?;
    let ciphertext = r.bytes().map_err(malformed)?;
    let end = r.offset();
    if ciphertext.len() < TAG_LEN {
        return Err(field("ciphertext", "shorter than its authentication tag (truncated)"));
    }
    if !r.is_empty() {
        return Err(EnvelopeError::Malformed(format!("{} trailing bytes", body.len() - end)));
    }
    let header = RequestHeader {
        key_id: key_id.to_owned(),
        encrypted_data_key: edk.to_vec(),
        encryption_context,
        model_sha384,
        request_id,
        issued_at,
        nonce,
    };
    Ok(ParsedRequest { header, ciphertext: end - ciphertext.len()..end })
}

fn expect_key(r: &mut Reader<'_>, want: &'static str) -> Result<(), EnvelopeError> {
    let k = r.text().map_err(malformed)?;
    if k != want {
        return Err(EnvelopeError::Malformed(format!("expected key {want:?}, found {:?}", clip(k, 40))));
    }
    Ok(())
}

fn fixed<const N: usize>(r: &mut Reader<'_>, name: &'static str) -> Result<[u8; N], EnvelopeError> {
    r.bytes().map_err(malformed)?.try_into().map_err(|_| field(name, format!("must be {N} bytes")))
}

/// A request opened by [`open_request_in_place`]: where its body lies in the buffer it was opened in, its
/// meta, and the sealer for its answer. Only opening builds one, so an answer can only be sealed for a
/// request that authenticated.
#[derive(Debug)]
pub struct OpenedRequest {
    /// The plaintext body's range in the buffer given to [`open_request_in_place`].
    pub body: Range<usize>,
    pub meta: RequestMeta,
    pub answer: AnswerSealer,
}

/// Opens a parsed request in place, in the `body` buffer it was parsed from, with the data key KMS
/// released for it, for the model the enclave loaded (`model`, with the digest of the bytes it loaded).
pub fn open_request_in_place(
    key: &DataKey,
    model: &ModelRef,
    parsed: &ParsedRequest,
    body: &mut [u8],
) -> Result<OpenedRequest, EnvelopeError> {
    check_model(model)?;
    let h = &parsed.header;
    let k = key.aead(Direction::Request, &h.request_id)?;
    let aad = aad(Direction::Request, model, &h.request_id, &h.key_id, h.issued_at);
    let ciphertext = body.get_mut(parsed.ciphertext.clone()).ok_or(EnvelopeError::Decrypt)?;
    let plain = k
        .open_in_place(Nonce::assume_unique_for_key(h.nonce), Aad::from(aad), ciphertext)
        .map_err(|_| EnvelopeError::Decrypt)?;
    let answer = AnswerSealer::new(key, model, h)?;
    let (plain_body, meta) = pad::unpad(plain)?;
    let meta = RequestMeta::decode(meta)?;
    let start = parsed.ciphertext.start + pad::LENGTHS_LEN;
    Ok(OpenedRequest { body: start..start + plain_body.len(), meta, answer })
}

/// Seals answers to one request. Built by opening the request ([`OpenedRequest::answer`]), or, for a
/// request that did not open, as an [`ErrorSealer`] that can seal only errors.
pub struct AnswerSealer {
    key: LessSafeKey,
    aad: Vec<u8>,
    request_id: [u8; REQUEST_ID_LEN],
    model_sha384: [u8; DIGEST_LEN],
}

impl std::fmt::Debug for AnswerSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerSealer").finish_non_exhaustive()
    }
}

/// A sealed answer: the wire bytes are `buf[start..]`.
#[derive(Debug)]
pub struct SealedAnswer {
    pub buf: Vec<u8>,
    pub start: usize,
}

impl SealedAnswer {
    /// The wire bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Where the enclave writes an answer's body before sealing it, in the buffer the sealed answer will be
/// sent from (no copy between serializing and sending).
#[derive(Debug)]
pub struct AnswerBody {
    buf: Vec<u8>,
}

impl AnswerBody {
    /// An empty body with room reserved in front, `capacity` bytes of body expected.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(ANSWER_PREFIX_ROOM + pad::LENGTHS_LEN + capacity + ANSWER_META_ROOM);
        buf.resize(ANSWER_PREFIX_ROOM + pad::LENGTHS_LEN, 0);
        AnswerBody { buf }
    }

    /// The buffer to append the body to.
    pub fn writer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The body written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[ANSWER_PREFIX_ROOM + pad::LENGTHS_LEN..]
    }

    /// Wipes what was written (an answer that will not be sent).
    pub fn clear(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.buf[ANSWER_PREFIX_ROOM..]);
        self.buf.truncate(ANSWER_PREFIX_ROOM + pad::LENGTHS_LEN);
    }
}

impl Drop for AnswerBody {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.buf);
    }
}

impl AnswerSealer {
    fn new(key: &DataKey, model: &ModelRef, h: &RequestHeader) -> Result<Self, EnvelopeError> {
        Ok(AnswerSealer {
            key: key.aead(Direction::Answer, &h.request_id)?,
            aad: aad(Direction::Answer, model, &h.request_id, &h.key_id, h.issued_at),
            request_id: h.request_id,
            model_sha384: model.sha384,
        })
    }

    /// Seals the answer written into `body`, with its receipt.
    pub fn seal_answer(
        &self,
        body: AnswerBody,
        inference_header_length: Option<u64>,
        receipt: Option<AnswerReceipt>,
        rng: &dyn RandomSource,
    ) -> Result<SealedAnswer, EnvelopeError> {
        let meta = AnswerMeta {
            model_sha384: self.model_sha384,
            outcome: Outcome::Answer { inference_header_length },
            receipt,
        };
        self.seal(body, &meta, rng)
    }

    /// Seals an error about the request, for the client's eyes only (with its receipt when the model ran).
    pub fn seal_error(
        &self,
        error: &ErrorReply,
        receipt: Option<AnswerReceipt>,
        rng: &dyn RandomSource,
    ) -> Result<SealedAnswer, EnvelopeError> {
        let meta = AnswerMeta { model_sha384: self.model_sha384, outcome: Outcome::Error(error.clone()), receipt };
        self.seal(AnswerBody::with_capacity(0), &meta, rng)
    }

    fn seal(
        &self,
        mut body: AnswerBody,
        meta: &AnswerMeta,
        rng: &dyn RandomSource,
    ) -> Result<SealedAnswer, EnvelopeError> {
        let start = ANSWER_PREFIX_ROOM;
        let body_len = body.buf.len() - start - pad::LENGTHS_LEN;
        meta.encode(&mut body.buf);
        pad::finish_in_place(&mut body.buf, start, body_len)?;
        let nonce = random::array::<NONCE_LEN>(rng)?;
        let mut buf = std::mem::take(&mut body.buf);
        // Encrypted where it lies: no copy of the plaintext is made.
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&self.aad), &mut buf[start..])
            .map_err(|_| EnvelopeError::TooLarge)?;
        buf.extend_from_slice(tag.as_ref());
        let ciphertext_len = buf.len() - start;
        // The map's head goes right in front of the ciphertext, in the room reserved for it.
        let mut head = Vec::with_capacity(ANSWER_PREFIX_ROOM);
        write_head(&mut head, 5, 4);
        write_text(&mut head, "v");
        write_head(&mut head, 0, ENVELOPE_VERSION);
        write_text(&mut head, "request_id");
        write_bytes(&mut head, &self.request_id);
        write_text(&mut head, "nonce");
        write_bytes(&mut head, &nonce);
        write_text(&mut head, "ciphertext");
        write_head(&mut head, 2, ciphertext_len as u64);
        if head.len() > ANSWER_PREFIX_ROOM {
            return Err(EnvelopeError::TooLarge);
        }
        let start = ANSWER_PREFIX_ROOM - head.len();
        buf[start..ANSWER_PREFIX_ROOM].copy_from_slice(&head);
        Ok(SealedAnswer { buf, start })
    }
}

/// Seals errors for a request that did not open (it did not authenticate, or was refused before opening)
/// while the enclave held its data key: the client can still tell the enclave's word from the parent's.
/// It cannot seal an answer.
#[derive(Debug)]
pub struct ErrorSealer(AnswerSealer);

impl ErrorSealer {
    /// For the request `parsed`, on behalf of the model the enclave loaded.
    pub fn new(key: &DataKey, model: &ModelRef, parsed: &ParsedRequest) -> Result<Self, EnvelopeError> {
        check_model(model)?;
        Ok(ErrorSealer(AnswerSealer::new(key, model, &parsed.header)?))
    }

    /// Seals `error`.
    pub fn seal_error(&self, error: &ErrorReply, rng: &dyn RandomSource) -> Result<SealedAnswer, EnvelopeError> {
        self.0.seal_error(error, None, rng)
    }
}

/// What a client needs to seal requests under one data key.
#[derive(Debug)]
pub struct Sealer<'a> {
    pub key: &'a DataKey,
    pub key_id: &'a str,
    pub encrypted_data_key: &'a [u8],
    pub encryption_context: &'a BTreeMap<String, String>,
}

/// What identifies a sealed request to its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTag {
    pub request_id: [u8; REQUEST_ID_LEN],
    pub issued_at: u64,
    pub model: ModelRef,
}

/// An answer opened by [`Sealer::open_answer`]: the outcome and digest, and the body borrowed from the
/// buffer it was opened in.
#[derive(Debug)]
pub struct OpenedAnswer<'a> {
    pub meta: AnswerMeta,
    pub body: &'a [u8],
}

impl Sealer<'_> {
    /// Seals a request `body` (with its `meta`) for `model`, issued at `issued_at` (Unix seconds, now).
    /// Returns the wire bytes and what opens the answer.
    pub fn seal_request(
        &self,
        model: &ModelRef,
        body: &[u8],
        meta: RequestMeta,
        issued_at: u64,
        rng: &dyn RandomSource,
    ) -> Result<(Vec<u8>, RequestTag), EnvelopeError> {
        check_model(model)?;
        if self.key_id.is_empty() || self.key_id.len() > MAX_KEY_ID {
            return Err(field("key_id", format!("must be 1 to {MAX_KEY_ID} bytes")));
        }
        let request_id = random::array::<REQUEST_ID_LEN>(rng)?;
        let nonce = random::array::<NONCE_LEN>(rng)?;
        let mut meta_bytes = Vec::with_capacity(32);
        meta.encode(&mut meta_bytes);
        let content = pad::LENGTHS_LEN + body.len() + meta_bytes.len();
        let ciphertext_len = pad::bucket(content) + TAG_LEN;

        let mut out = Vec::with_capacity(256 + self.encrypted_data_key.len() + ciphertext_len);
        write_head(&mut out, 5, 9);
        write_text(&mut out, "v");
        write_head(&mut out, 0, ENVELOPE_VERSION);
        write_text(&mut out, "key_id");
        write_text(&mut out, self.key_id);
        write_text(&mut out, "encrypted_data_key");
        write_bytes(&mut out, self.encrypted_data_key);
        write_text(&mut out, "encryption_context");
        write_head(&mut out, 5, self.encryption_context.len() as u64);
        for (k, v) in self.encryption_context {
            write_text(&mut out, k);
            write_text(&mut out, v);
        }
        write_text(&mut out, "model_sha384");
        write_bytes(&mut out, &model.sha384);
        write_text(&mut out, "request_id");
        write_bytes(&mut out, &request_id);
        write_text(&mut out, "issued_at");
        write_head(&mut out, 0, issued_at);
        write_text(&mut out, "nonce");
        write_bytes(&mut out, &nonce);
        write_text(&mut out, "ciphertext");
        write_head(&mut out, 2, ciphertext_len as u64);

        // The plaintext is copied once, into the buffer it is then encrypted in.
        let start = out.len();
        out.extend_from_slice(&[0u8; pad::LENGTHS_LEN]);
        out.extend_from_slice(body);
        out.extend_from_slice(&meta_bytes);
        pad::finish_in_place(&mut out, start, body.len())?;
        let key = self.key.aead(Direction::Request, &request_id)?;
        let aad = aad(Direction::Request, model, &request_id, self.key_id, issued_at);
        match key.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut out[start..]) {
            Ok(tag) => out.extend_from_slice(tag.as_ref()),
            Err(_) => {
                zeroize::Zeroize::zeroize(&mut out);
                return Err(EnvelopeError::TooLarge);
            }
        }
        Ok((out, RequestTag { request_id, issued_at, model: model.clone() }))
    }

    /// Opens the enclave's answer to the request `tag` names, in place in `body`.
    pub fn open_answer<'b>(&self, tag: &RequestTag, body: &'b mut [u8]) -> Result<OpenedAnswer<'b>, EnvelopeError> {
        let mut r = Reader::new(body);
        if r.map().map_err(malformed)? != Len::Definite(4) {
            return Err(EnvelopeError::Malformed("an answer is a map of 4 entries".into()));
        }
        expect_key(&mut r, "v")?;
        let v = r.uint().map_err(malformed)?;
        if v != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version(v));
        }
        expect_key(&mut r, "request_id")?;
        let request_id = fixed::<REQUEST_ID_LEN>(&mut r, "request_id")?;
        if request_id != tag.request_id {
            return Err(field("request_id", "the answer is for another request"));
        }
        expect_key(&mut r, "nonce")?;
        let nonce = fixed::<NONCE_LEN>(&mut r, "nonce")?;
        expect_key(&mut r, "ciphertext")?;
        let len = r.bytes().map_err(malformed)?.len();
        let end = r.offset();
        if !r.is_empty() {
            return Err(EnvelopeError::Malformed(format!("{} trailing bytes", body.len() - end)));
        }
        let key = self.key.aead(Direction::Answer, &tag.request_id)?;
        let aad = aad(Direction::Answer, &tag.model, &tag.request_id, self.key_id, tag.issued_at);
        let plain = key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut body[end - len..end])
            .map_err(|_| EnvelopeError::Decrypt)?;
        let (body, meta) = pad::unpad(plain)?;
        let meta = AnswerMeta::decode(meta)?;
        if meta.model_sha384 != tag.model.sha384 {
            // Cannot happen for an answer that authenticated (the digest is in the associated data), but
            // the check costs nothing and keeps the meaning plain.
            return Err(EnvelopeError::Meta("the answer names another model digest".into()));
        }
        Ok(OpenedAnswer { meta, body })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::random::SystemRandom;

    fn setup() -> (DataKey, BTreeMap<String, String>, ModelRef) {
        let ctx = BTreeMap::from([("tenant".to_owned(), "hospital-a".to_owned())]);
        (DataKey::new(&[7u8; 32]).unwrap(), ctx, ModelRef { name: "iris".into(), sha384: [3u8; 48] })
    }

    fn seal(sealer: &Sealer<'_>, model: &ModelRef, body: &[u8]) -> (Vec<u8>, RequestTag) {
        sealer.seal_request(model, body, RequestMeta::default(), 1_700_000_000, &SystemRandom::new()).unwrap()
    }

    #[test]
    fn round_trip_both_ways_in_place() {
        let (key, ctx, model) = setup();
        let sealer = Sealer { key: &key, key_id: "k1", encrypted_data_key: b"blob", encryption_context: &ctx };
        let (mut wire, tag) = seal(&sealer, &model, b"{\"inputs\":[]}");
        let parsed = parse_request(&wire).unwrap();
        assert_eq!(parsed.header.encryption_context, ctx);
        assert_eq!(parsed.header.model_sha384, model.sha384);
        let opened = open_request_in_place(&key, &model, &parsed, &mut wire).unwrap();
        assert_eq!(&wire[opened.body.clone()], b"{\"inputs\":[]}");
        let mut body = AnswerBody::with_capacity(16);
        body.writer().extend_from_slice(b"{\"outputs\":[]}");
        let sealed = opened.answer.seal_answer(body, None, None, &SystemRandom::new()).unwrap();
        let mut answer = sealed.bytes().to_vec();
        let got = sealer.open_answer(&tag, &mut answer).unwrap();
        assert_eq!(got.body, b"{\"outputs\":[]}");
        assert_eq!(
            got.meta,
            AnswerMeta {
                model_sha384: model.sha384,
                outcome: Outcome::Answer { inference_header_length: None },
                receipt: None
            }
        );
    }

    /// The largest receipt the enclave can make: the longest issuer and model name the claims accept.
    pub(crate) fn largest_receipt() -> AnswerReceipt {
        let claims = crate::evidence::ReceiptClaims {
            issuer: "i".repeat(crate::evidence::claims::MAX_ISSUER_LEN),
            issued_at: u64::MAX,
            boot_prefix: [0xff; 8],
            model: "m".repeat(crate::message::MAX_MODEL_NAME),
            model_sha384: [0xff; 48],
            request_digest: [0xff; 32],
            response_digest: [0xff; 32],
            mode: crate::evidence::Mode::Ohttp,
            attestation_sha384: [0xff; 48],
            seq: u64::MAX,
            prev: [0xff; 32],
        };
        let receipt = crate::evidence::ReceiptKey::from_seed(&[1; 32]).unwrap().sign(&claims.encode());
        AnswerReceipt { receipt, salt: Zeroizing::new([0xff; 32]) }
    }

    #[test]
    fn an_answers_meta_with_the_largest_receipt_fits_the_room_kept_for_it() {
        // Finding of review: the meta is encoded after the body, in the body's buffer; if it outgrew the room
        // kept, the buffer would move and leave a freed copy of the answer's plaintext behind.
        let meta = AnswerMeta {
            model_sha384: [0xff; 48],
            outcome: Outcome::Answer { inference_header_length: Some(u64::MAX) },
            receipt: Some(largest_receipt()),
        };
        let mut out = Vec::new();
        meta.encode(&mut out);
        assert!(out.len() <= ANSWER_META_ROOM, "{} bytes of meta, {ANSWER_META_ROOM} kept", out.len());
        let mut body = AnswerBody::with_capacity(5000);
        body.writer().extend_from_slice(&[7; 5000]);
        let before = (body.buf.as_ptr(), body.buf.capacity());
        meta.encode(&mut body.buf);
        assert_eq!((body.buf.as_ptr(), body.buf.capacity()), before, "the meta moved the answer's buffer");
        // An error's meta too, with the longest message and a receipt (finding of review: the room was
        // sized for answers only).
        let message = "m".repeat(crate::error::MAX_ERROR_MESSAGE + 100);
        let e = ErrorReply::new(ErrorKind::BadRequest, message).retry_after(u32::MAX);
        let meta =
            AnswerMeta { model_sha384: [0xff; 48], outcome: Outcome::Error(e), receipt: Some(largest_receipt()) };
        let mut out = Vec::new();
        meta.encode(&mut out);
        assert!(out.len() <= ANSWER_META_ROOM, "{} bytes of error meta, {ANSWER_META_ROOM} kept", out.len());
    }

    #[test]
    fn an_enclave_with_another_model_digest_cannot_open() {
        let (key, ctx, model) = setup();
        let sealer = Sealer { key: &key, key_id: "k1", encrypted_data_key: b"blob", encryption_context: &ctx };
        let (mut wire, _) = seal(&sealer, &model, b"x");
        let parsed = parse_request(&wire).unwrap();
        let other = ModelRef { name: "iris".into(), sha384: [4u8; 48] };
        assert_eq!(open_request_in_place(&key, &other, &parsed, &mut wire).unwrap_err(), EnvelopeError::Decrypt);
        let renamed = ModelRef { name: "iris2".into(), sha384: model.sha384 };
        let (mut wire, _) = seal(&sealer, &model, b"x");
        assert_eq!(open_request_in_place(&key, &renamed, &parsed, &mut wire).unwrap_err(), EnvelopeError::Decrypt);
    }

    #[test]
    fn sealed_errors_are_typed_and_pad_like_small_answers() {
        let (key, ctx, model) = setup();
        let sealer = Sealer { key: &key, key_id: "k1", encrypted_data_key: b"blob", encryption_context: &ctx };
        let rng = SystemRandom::new();
        let (mut wire, tag) = seal(&sealer, &model, b"{}");
        let parsed = parse_request(&wire).unwrap();
        let opened = open_request_in_place(&key, &model, &parsed, &mut wire).unwrap();
        let e = ErrorReply::new(ErrorKind::BadRequest, "input \"x\": expected shape [1, 30]");
        let sealed_error = opened.answer.seal_error(&e, None, &rng).unwrap();
        let mut small = AnswerBody::with_capacity(64);
        small.writer().extend_from_slice(
            br#"{"model_name":"iris","outputs":[{"name":"label","shape":[1],"datatype":"INT64","data":[1]}]}"#,
        );
        let sealed_answer = opened.answer.seal_answer(small, None, None, &rng).unwrap();
        assert_eq!(sealed_error.bytes().len(), sealed_answer.bytes().len());
        let mut b = sealed_error.bytes().to_vec();
        assert_eq!(sealer.open_answer(&tag, &mut b).unwrap().meta.outcome, Outcome::Error(e));
    }

    #[test]
    fn tampering_anywhere_fails() {
        let (key, ctx, model) = setup();
        let sealer = Sealer { key: &key, key_id: "k1", encrypted_data_key: b"blob", encryption_context: &ctx };
        let (wire, _) = seal(&sealer, &model, b"hello");
        let parsed = parse_request(&wire).unwrap();
        for i in parsed.ciphertext.clone() {
            let mut t = wire.clone();
            t[i] ^= 1;
            assert_eq!(open_request_in_place(&key, &model, &parsed, &mut t).unwrap_err(), EnvelopeError::Decrypt);
        }
        // Clear fields bound into the associated data: key id, issue time, request id.
        let mut h = parsed.clone();
        h.header.issued_at += 1;
        assert_eq!(open_request_in_place(&key, &model, &h, &mut wire.clone()).unwrap_err(), EnvelopeError::Decrypt);
        let mut h = parsed.clone();
        h.header.key_id = "k2".into();
        assert_eq!(open_request_in_place(&key, &model, &h, &mut wire.clone()).unwrap_err(), EnvelopeError::Decrypt);
        let mut h = parsed.clone();
        h.header.request_id[0] ^= 1;
        assert_eq!(open_request_in_place(&key, &model, &h, &mut wire.clone()).unwrap_err(), EnvelopeError::Decrypt);
        let other_key = DataKey::new(&[8u8; 32]).unwrap();
        assert_eq!(
            open_request_in_place(&other_key, &model, &parsed, &mut wire.clone()).unwrap_err(),
            EnvelopeError::Decrypt
        );
    }

    #[test]
    fn answers_are_bound_to_their_request() {
        let (key, ctx, model) = setup();
        let sealer = Sealer { key: &key, key_id: "k1", encrypted_data_key: b"blob", encryption_context: &ctx };
        let rng = SystemRandom::new();
        let (mut w1, t1) = seal(&sealer, &model, b"one");
        let (_, t2) = seal(&sealer, &model, b"two");
        let p1 = parse_request(&w1).unwrap();
        let o1 = open_request_in_place(&key, &model, &p1, &mut w1).unwrap();
        let mut a1 = o1.answer.seal_answer(AnswerBody::with_capacity(0), None, None, &rng).unwrap().bytes().to_vec();
        assert!(sealer.open_answer(&t2, &mut a1.clone()).unwrap_err().to_string().contains("another request"));
        // A request sealed under the same id cannot be turned into an answer: directions differ.
        let mut t1_other_model = t1.clone();
        t1_other_model.model.sha384 = [9; 48];
        assert_eq!(sealer.open_answer(&t1_other_model, &mut a1).unwrap_err(), EnvelopeError::Decrypt);
    }

    #[test]
    fn malformed_requests_name_the_field() {
        let (key, ctx, model) = setup();
        let sealer = Sealer { key: &key, key_id: "k1", encrypted_data_key: b"blob", encryption_context: &ctx };
        let (wire, _) = seal(&sealer, &model, b"x");
        assert!(matches!(parse_request(b"\xff\x00").unwrap_err(), EnvelopeError::Malformed(_)));
        assert!(matches!(parse_request(&wire[..wire.len() - 5]).unwrap_err(), EnvelopeError::Malformed(_)));
        let mut extra = wire.clone();
        extra.push(0);
        assert!(parse_request(&extra).unwrap_err().to_string().contains("trailing"));
        // Version 1 is retired.
        let mut v1 = wire.clone();
        v1[3] = 1;
        assert_eq!(parse_request(&v1).unwrap_err(), EnvelopeError::Version(1));
        assert!(DataKey::new(&[0; 16]).is_err());
    }
}

//! Oblivious HTTP (RFC 9458): key configurations, and the encapsulation of requests and responses, for
//! attested-key mode.
//!
//! The enclave is the Oblivious Gateway (and the target behind it), the parent is the relay, and a client
//! encrypts straight to a key the enclave's attestation document commits to. One suite family is
//! supported: DHKEM(X25519, HKDF-SHA256) with HKDF-SHA256, and AES-256-GCM, ChaCha20-Poly1305 or
//! AES-128-GCM as the AEAD (the gateway advertises the first two; AES-128-GCM is accepted by the client
//! side, for gateways such as RFC 9458's example that offer it).
//!
//! Wire formats (RFC 9458 §3 and §4):
//!
//! ```text
//! key config         = key_id(1) ‖ kem_id(2) ‖ public_key(32) ‖ suites_len(2) ‖ (kdf_id(2) ‖ aead_id(2))*
//! application/ohttp-keys = (u16 length ‖ key config)*
//! encapsulated request   = key_id(1) ‖ kem_id(2) ‖ kdf_id(2) ‖ aead_id(2) ‖ enc(32) ‖ HPKE ciphertext
//! encapsulated response  = response_nonce(max(Nn, Nk)) ‖ AEAD ciphertext
//! ```
//!
//! The request is opened with HPKE (the `hpke` crate: RFC 9180, pure Rust); the response key is derived
//! from the HPKE context's exported secret with HKDF-SHA256 (`hkdf`), and the response is sealed with
//! `ring`'s AEADs in place, so a large answer is encrypted where it lies. Why not the `ohttp` crate: its
//! pure-Rust backend offers no AES-256-GCM, cannot import a private key (so neither a fleet key nor
//! RFC 9458's worked example), and draws its randomness internally (docs/PROTOCOL.md, "Attested-key mode").
//!
//! No clock, no I/O: randomness comes from a [`RandomSource`] the caller passes.
use hpke::{
    Deserializable, OpModeR, OpModeS, Serializable,
    aead::{Aead as HpkeAead, AesGcm128, AesGcm256, ChaCha20Poly1305},
    kdf::HkdfSha256,
    kem::{Kem as _, X25519HkdfSha256},
};
use zeroize::{Zeroize, Zeroizing};

use crate::random::{RandomError, RandomSource};

pub mod bhttp;

/// HPKE KEM id of DHKEM(X25519, HKDF-SHA256).
pub const KEM_X25519_SHA256: u16 = 0x0020;
/// HPKE KDF id of HKDF-SHA256.
pub const KDF_HKDF_SHA256: u16 = 0x0001;
/// HPKE AEAD ids.
pub const AEAD_AES_128_GCM: u16 = 0x0001;
pub const AEAD_AES_256_GCM: u16 = 0x0002;
pub const AEAD_CHACHA20_POLY1305: u16 = 0x0003;
/// What the gateway advertises, in order of preference.
pub const GATEWAY_AEADS: [u16; 2] = [AEAD_AES_256_GCM, AEAD_CHACHA20_POLY1305];

/// Media types (RFC 9458 §9).
pub const KEYS_MEDIA_TYPE: &str = "application/ohttp-keys";
pub const REQUEST_MEDIA_TYPE: &str = "message/ohttp-req";
pub const RESPONSE_MEDIA_TYPE: &str = "message/ohttp-res";
/// Where the gateway and its keys are (RFC 9540).
pub const GATEWAY_PATH: &str = "/.well-known/ohttp-gateway";

/// Inside the encapsulation: the request header in which a client names the model digest it expects, and
/// the response header carrying the digest of the model that answered (96 hex digits).
pub const MODEL_DIGEST_HEADER: &str = "veil-model-sha384";
/// Inside the encapsulation: the trailer field of an inference answer carrying its signed receipt
/// (base64 of the COSE_Sign1, `crate::evidence`).
pub const RECEIPT_TRAILER: &str = "veil-receipt";
/// Inside the encapsulation: the trailer field carrying the receipt's salt (64 hex digits), for the
/// client's eyes only.
pub const RECEIPT_SALT_TRAILER: &str = "veil-receipt-salt";

const REQUEST_LABEL: &[u8] = b"message/bhttp request";
const RESPONSE_LABEL: &[u8] = b"message/bhttp response";
/// Encapsulated request header: key id, KEM, KDF, AEAD.
pub const HEADER_LEN: usize = 7;
/// X25519 encapsulated key and public key length.
pub const ENC_LEN: usize = 32;
/// AEAD tag length (all three AEADs).
pub const TAG_LEN: usize = 16;
/// Length of one key configuration of this suite family with `n` symmetric suites.
pub const fn key_config_len(n: usize) -> usize {
    1 + 2 + ENC_LEN + 2 + 4 * n
}
/// Most key configurations accepted in one `application/ohttp-keys` list (rotation needs two or three).
pub const MAX_KEY_CONFIGS: usize = 16;
/// Most symmetric suites accepted in one key configuration.
pub const MAX_SUITES: usize = 16;

/// Why an OHTTP message or key configuration was refused. The messages name what was wrong and carry no
/// secret (nor any plaintext: there is none before decapsulation succeeds).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OhttpError {
    #[error("encapsulated message of {len} bytes is truncated (at least {min} bytes)")]
    Truncated { len: usize, min: usize },
    #[error("unknown key identifier {0}")]
    UnknownKeyId(u8),
    #[error("unsupported HPKE suite: KEM {kem:#06x}, KDF {kdf:#06x}, AEAD {aead:#06x}")]
    Unsupported { kem: u16, kdf: u16, aead: u16 },
    #[error("the encapsulated request did not decrypt under this key (tampered, or for another key)")]
    RequestDecrypt,
    #[error("the encapsulated response did not decrypt (tampered, truncated, or for another request)")]
    ResponseDecrypt,
    #[error("invalid public key")]
    PublicKey,
    #[error("invalid key configuration: {0}")]
    KeyConfig(String),
    #[error("the random number generator failed")]
    Random,
    #[error("message of {0} bytes is too large to encapsulate")]
    TooLarge(usize),
}

impl From<RandomError> for OhttpError {
    fn from(_: RandomError) -> Self {
        OhttpError::Random
    }
}

/// (Nk, Nn) of an AEAD, or `None` if unsupported.
fn aead_sizes(aead: u16) -> Option<(usize, usize)> {
    match aead {
        AEAD_AES_128_GCM => Some((16, 12)),
        AEAD_AES_256_GCM | AEAD_CHACHA20_POLY1305 => Some((32, 12)),
        _ => None,
    }
}

/// Length of the response nonce (and of the exported secret) for an AEAD: `max(Nn, Nk)`.
pub fn response_nonce_len(aead: u16) -> Option<usize> {
    aead_sizes(aead).map(|(nk, nn)| nk.max(nn))
}

fn ring_algorithm(aead: u16) -> Option<&'static ring::aead::Algorithm> {
    match aead {
        AEAD_AES_128_GCM => Some(&ring::aead::AES_128_GCM),
        AEAD_AES_256_GCM => Some(&ring::aead::AES_256_GCM),
        AEAD_CHACHA20_POLY1305 => Some(&ring::aead::CHACHA20_POLY1305),
        _ => None,
    }
}

/// One symmetric suite of a key configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suite {
    pub kdf: u16,
    pub aead: u16,
}

/// One key configuration (RFC 9458 §3.1) of the suite family this crate speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyConfig {
    pub key_id: u8,
    pub public_key: [u8; ENC_LEN],
    /// In the order listed (the first one this side supports is the one a client uses).
    pub suites: Vec<Suite>,
}

impl KeyConfig {
    /// The configuration's bytes (no length prefix).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(key_config_len(self.suites.len()));
        v.push(self.key_id);
        v.extend_from_slice(&KEM_X25519_SHA256.to_be_bytes());
        v.extend_from_slice(&self.public_key);
        v.extend_from_slice(&((self.suites.len() * 4) as u16).to_be_bytes());
        for s in &self.suites {
            v.extend_from_slice(&s.kdf.to_be_bytes());
            v.extend_from_slice(&s.aead.to_be_bytes());
        }
        v
    }

    /// Parses one configuration (no length prefix). `Ok(None)` for a well-formed configuration of a KEM
    /// this crate does not speak (a client skips it).
    pub fn decode(bytes: &[u8]) -> Result<Option<KeyConfig>, OhttpError> {
        let bad = |why: &str| OhttpError::KeyConfig(why.to_owned());
        if bytes.len() < 3 {
            return Err(bad("shorter than its key id and KEM"));
        }
        let key_id = bytes[0];
        let kem = u16::from_be_bytes([bytes[1], bytes[2]]);
        if kem != KEM_X25519_SHA256 {
            return Ok(None);
        }
        let rest = &bytes[3..];
        if rest.len() < ENC_LEN + 2 {
            return Err(bad("truncated public key"));
        }
        let mut public_key = [0u8; ENC_LEN];
        public_key.copy_from_slice(&rest[..ENC_LEN]);
        let n = usize::from(u16::from_be_bytes([rest[ENC_LEN], rest[ENC_LEN + 1]]));
        let algs = &rest[ENC_LEN + 2..];
        if n != algs.len() {
            return Err(bad("symmetric algorithms length does not match the configuration's length"));
        }
        if n == 0 || n % 4 != 0 || n / 4 > MAX_SUITES {
            return Err(bad("symmetric algorithms must be 1 to 16 (KDF, AEAD) pairs"));
        }
        let suites = algs
            .chunks_exact(4)
            .map(|c| Suite { kdf: u16::from_be_bytes([c[0], c[1]]), aead: u16::from_be_bytes([c[2], c[3]]) })
            .collect();
        Ok(Some(KeyConfig { key_id, public_key, suites }))
    }

    /// Encodes a list as `application/ohttp-keys`.
    pub fn encode_list(configs: &[KeyConfig]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in configs {
            let bytes = c.encode();
            out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
            out.extend_from_slice(&bytes);
        }
        out
    }

    /// Parses an `application/ohttp-keys` list. Any encoding error refuses the whole list (RFC 9458 §3.2);
    /// configurations of other KEMs are skipped.
    pub fn decode_list(bytes: &[u8]) -> Result<Vec<KeyConfig>, OhttpError> {
        let mut out = Vec::new();
        let mut rest = bytes;
        let mut seen = 0usize;
        while !rest.is_empty() {
            seen += 1;
            if seen > MAX_KEY_CONFIGS {
                return Err(OhttpError::KeyConfig(format!("more than {MAX_KEY_CONFIGS} key configurations")));
            }
            if rest.len() < 2 {
                return Err(OhttpError::KeyConfig("truncated length prefix".into()));
            }
            let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            let body = rest.get(2..2 + n).ok_or_else(|| OhttpError::KeyConfig("truncated key configuration".into()))?;
            if let Some(c) = KeyConfig::decode(body)? {
                out.push(c);
            }
            rest = &rest[2 + n..];
        }
        if out.is_empty() {
            return Err(OhttpError::KeyConfig("no key configuration of DHKEM(X25519, HKDF-SHA256)".into()));
        }
        Ok(out)
    }

    /// The suite a client uses: the first listed that this crate supports.
    pub fn preferred_suite(&self) -> Option<Suite> {
        self.suites.iter().copied().find(|s| s.kdf == KDF_HKDF_SHA256 && aead_sizes(s.aead).is_some())
    }
}

type PrivateKey = <X25519HkdfSha256 as hpke::Kem>::PrivateKey;
type PublicKey = <X25519HkdfSha256 as hpke::Kem>::PublicKey;
type EncappedKey = <X25519HkdfSha256 as hpke::Kem>::EncappedKey;

/// A gateway's key: an X25519 private key (zeroized on drop by `hpke`), its identifier and suites.
pub struct GatewayKey {
    key_id: u8,
    secret: PrivateKey,
    config: KeyConfig,
}

impl std::fmt::Debug for GatewayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayKey").field("config", &self.config).finish_non_exhaustive()
    }
}

impl GatewayKey {
    /// A fresh key from 32 bytes of `rng` (RFC 9180 DeriveKeyPair).
    pub fn generate(key_id: u8, aeads: &[u16], rng: &dyn RandomSource) -> Result<GatewayKey, OhttpError> {
        let mut ikm = Zeroizing::new([0u8; 32]);
        rng.fill(ikm.as_mut())?;
        let (secret, public) = X25519HkdfSha256::derive_keypair(ikm.as_ref());
        Ok(Self::assemble(key_id, aeads, secret, &public))
    }

    /// A key from its 32-byte X25519 private key (a fleet key, or a test vector).
    pub fn from_secret(key_id: u8, aeads: &[u16], secret: &[u8]) -> Result<GatewayKey, OhttpError> {
        let secret = PrivateKey::from_bytes(secret).map_err(|_| OhttpError::KeyConfig("invalid private key".into()))?;
        let public = X25519HkdfSha256::sk_to_pk(&secret);
        Ok(Self::assemble(key_id, aeads, secret, &public))
    }

    fn assemble(key_id: u8, aeads: &[u16], secret: PrivateKey, public: &PublicKey) -> GatewayKey {
        let mut public_key = [0u8; ENC_LEN];
        public_key.copy_from_slice(&public.to_bytes());
        let suites = aeads.iter().map(|&aead| Suite { kdf: KDF_HKDF_SHA256, aead }).collect();
        GatewayKey { key_id, secret, config: KeyConfig { key_id, public_key, suites } }
    }

    /// The private key's bytes (to store it encrypted, as `veil ohttp keygen` does).
    pub fn secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.secret.to_bytes().to_vec())
    }

    pub fn key_id(&self) -> u8 {
        self.key_id
    }

    /// The public key configuration.
    pub fn config(&self) -> &KeyConfig {
        &self.config
    }
}

/// A gateway: the keys it serves (one, or two side by side while rotating), dispatched on key id.
#[derive(Debug)]
pub struct Gateway {
    keys: Vec<GatewayKey>,
    key_list: Vec<u8>,
}

impl Gateway {
    /// A gateway serving `keys` (distinct key ids, at least one).
    pub fn new(keys: Vec<GatewayKey>) -> Result<Gateway, OhttpError> {
        if keys.is_empty() || keys.len() > MAX_KEY_CONFIGS {
            return Err(OhttpError::KeyConfig(format!("a gateway serves 1 to {MAX_KEY_CONFIGS} keys")));
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.key_id == k.key_id) {
                return Err(OhttpError::KeyConfig(format!("key identifier {} is used twice", k.key_id)));
            }
        }
        let configs: Vec<KeyConfig> = keys.iter().map(|k| k.config.clone()).collect();
        let key_list = KeyConfig::encode_list(&configs);
        Ok(Gateway { keys, key_list })
    }

    /// The `application/ohttp-keys` body: exactly the bytes the attestation commitment hashes.
    pub fn key_list(&self) -> &[u8] {
        &self.key_list
    }

    /// Opens an encapsulated request (RFC 9458 §4.3, gateway side): the Binary HTTP request (wiped on
    /// drop) and what seals the response.
    pub fn decapsulate(&self, enc_request: &[u8]) -> Result<(Zeroizing<Vec<u8>>, ResponseContext), OhttpError> {
        let min = HEADER_LEN + ENC_LEN + TAG_LEN;
        if enc_request.len() < min {
            return Err(OhttpError::Truncated { len: enc_request.len(), min });
        }
        let header = &enc_request[..HEADER_LEN];
        let key_id = header[0];
        let kem = u16::from_be_bytes([header[1], header[2]]);
        let kdf = u16::from_be_bytes([header[3], header[4]]);
        let aead = u16::from_be_bytes([header[5], header[6]]);
        let key = self.keys.iter().find(|k| k.key_id == key_id).ok_or(OhttpError::UnknownKeyId(key_id))?;
        if kem != KEM_X25519_SHA256
            || kdf != KDF_HKDF_SHA256
            || !key.config.suites.iter().any(|s| s.kdf == kdf && s.aead == aead)
        {
            return Err(OhttpError::Unsupported { kem, kdf, aead });
        }
        let enc_bytes = &enc_request[HEADER_LEN..HEADER_LEN + ENC_LEN];
        let ciphertext = &enc_request[HEADER_LEN + ENC_LEN..];
        let enc = EncappedKey::from_bytes(enc_bytes).map_err(|_| OhttpError::RequestDecrypt)?;
        let info = [REQUEST_LABEL, &[0u8], header].concat();
        let secret_len = response_nonce_len(aead).ok_or(OhttpError::Unsupported { kem, kdf, aead })?;
        let mut secret = Zeroizing::new(vec![0u8; secret_len]);
        fn open<A: HpkeAead>(
            sk: &PrivateKey,
            enc: &EncappedKey,
            info: &[u8],
            ct: &[u8],
            secret: &mut [u8],
        ) -> Result<Vec<u8>, OhttpError> {
            let mut ctx = hpke::setup_receiver::<A, HkdfSha256, X25519HkdfSha256>(&OpModeR::Base, sk, enc, info)
                .map_err(|_| OhttpError::RequestDecrypt)?;
            let pt = ctx.open(ct, b"").map_err(|_| OhttpError::RequestDecrypt)?;
            ctx.export(RESPONSE_LABEL, secret).map_err(|_| OhttpError::RequestDecrypt)?;
            Ok(pt)
        }
        let plaintext = match aead {
            AEAD_AES_128_GCM => open::<AesGcm128>(&key.secret, &enc, &info, ciphertext, &mut secret),
            AEAD_AES_256_GCM => open::<AesGcm256>(&key.secret, &enc, &info, ciphertext, &mut secret),
            AEAD_CHACHA20_POLY1305 => open::<ChaCha20Poly1305>(&key.secret, &enc, &info, ciphertext, &mut secret),
            _ => Err(OhttpError::Unsupported { kem, kdf, aead }),
        }?;
        let mut enc_arr = [0u8; ENC_LEN];
        enc_arr.copy_from_slice(enc_bytes);
        Ok((Zeroizing::new(plaintext), ResponseContext { aead, enc: enc_arr, secret }))
    }
}

/// What seals (gateway) or opens (client) the response to one request: the AEAD, the request's
/// encapsulated key and the exported secret (wiped on drop).
pub struct ResponseContext {
    aead: u16,
    enc: [u8; ENC_LEN],
    secret: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ResponseContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseContext").field("aead", &self.aead).finish_non_exhaustive()
    }
}

impl ResponseContext {
    /// The request's encapsulated key: fresh for every request, so what the enclave's replay window keys on.
    pub fn enc(&self) -> &[u8; ENC_LEN] {
        &self.enc
    }

    /// The AEAD the request chose.
    pub fn aead(&self) -> u16 {
        self.aead
    }

    /// Length of the response nonce that [`ResponseContext::seal_in_place`] expects at the buffer's start.
    pub fn nonce_len(&self) -> usize {
        self.secret.len()
    }

    fn key(&self, response_nonce: &[u8]) -> Result<(ring::aead::LessSafeKey, ring::aead::Nonce), OhttpError> {
        let (nk, nn) = aead_sizes(self.aead).ok_or(OhttpError::ResponseDecrypt)?;
        let mut salt = Vec::with_capacity(ENC_LEN + response_nonce.len());
        salt.extend_from_slice(&self.enc);
        salt.extend_from_slice(response_nonce);
        let (_, prk) = hkdf::Hkdf::<sha2::Sha256>::extract(Some(&salt), &self.secret);
        let mut key = Zeroizing::new(vec![0u8; nk]);
        let mut nonce = [0u8; 12];
        prk.expand(b"key", &mut key).map_err(|_| OhttpError::ResponseDecrypt)?;
        prk.expand(b"nonce", &mut nonce[..nn]).map_err(|_| OhttpError::ResponseDecrypt)?;
        let algorithm = ring_algorithm(self.aead).ok_or(OhttpError::ResponseDecrypt)?;
        let unbound = ring::aead::UnboundKey::new(algorithm, &key).map_err(|_| OhttpError::ResponseDecrypt)?;
        Ok((ring::aead::LessSafeKey::new(unbound), ring::aead::Nonce::assume_unique_for_key(nonce)))
    }

    /// Seals a response in place (RFC 9458 §4.4): `buf` holds [`ResponseContext::nonce_len`] bytes of room
    /// followed by the Binary HTTP response; the room is filled with a fresh response nonce and the tag is
    /// appended, so `buf` becomes the encapsulated response.
    pub fn seal_in_place(&self, buf: &mut Vec<u8>, rng: &dyn RandomSource) -> Result<(), OhttpError> {
        let n = self.nonce_len();
        if buf.len() < n {
            return Err(OhttpError::Truncated { len: buf.len(), min: n });
        }
        rng.fill(&mut buf[..n])?;
        self.seal_with_nonce_in_place(buf)
    }

    /// [`ResponseContext::seal_in_place`] with the nonce already in the buffer's first bytes (known-answer
    /// tests only: a nonce must never repeat).
    pub fn seal_with_nonce_in_place(&self, buf: &mut Vec<u8>) -> Result<(), OhttpError> {
        let n = self.nonce_len();
        let (key, nonce) = self.key(&buf[..n])?;
        let (_, body) = buf.split_at_mut(n);
        let tag = key
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::empty(), body)
            .map_err(|_| OhttpError::TooLarge(body.len()))?;
        buf.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens an encapsulated response in place (client side): returns the Binary HTTP response, a slice of
    /// `buf`.
    pub fn open_in_place<'a>(&self, buf: &'a mut [u8]) -> Result<&'a mut [u8], OhttpError> {
        let n = self.nonce_len();
        if buf.len() < n + TAG_LEN {
            return Err(OhttpError::Truncated { len: buf.len(), min: n + TAG_LEN });
        }
        let (nonce_bytes, ciphertext) = buf.split_at_mut(n);
        let (key, nonce) = self.key(nonce_bytes)?;
        key.open_in_place(nonce, ring::aead::Aad::empty(), ciphertext).map_err(|_| OhttpError::ResponseDecrypt)
    }
}

/// An RNG for `hpke` that yields 32 bytes drawn up front from a fallible [`RandomSource`] (the ephemeral
/// key's input keying material: all `hpke` asks for when encapsulating to X25519), and past those, an
/// HKDF-SHA256 expansion of them, so that it never fails and never repeats.
struct SeededRng {
    seed: Zeroizing<[u8; 32]>,
    served: usize,
    counter: u64,
}

impl rand_core::TryRng for SeededRng {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        let mut written = 0;
        while written < dst.len() {
            if self.served < 32 {
                let n = (32 - self.served).min(dst.len() - written);
                dst[written..written + n].copy_from_slice(&self.seed[self.served..self.served + n]);
                self.served += n;
                written += n;
            } else {
                self.counter += 1;
                let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, self.seed.as_ref());
                let mut block = Zeroizing::new([0u8; 32]);
                // 32 bytes is far below HKDF-SHA256's 8160-byte maximum: cannot fail.
                let _ = hk.expand(&self.counter.to_be_bytes(), block.as_mut());
                let n = 32.min(dst.len() - written);
                dst[written..written + n].copy_from_slice(&block[..n]);
                written += n;
            }
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for SeededRng {}

impl Drop for SeededRng {
    fn drop(&mut self) {
        self.seed.zeroize();
    }
}

/// Encapsulates a Binary HTTP request to `config` (RFC 9458 §4.3, client side) with its preferred suite:
/// the encapsulated request and what opens the response.
pub fn encapsulate(
    config: &KeyConfig,
    request: &[u8],
    rng: &dyn RandomSource,
) -> Result<(Vec<u8>, ResponseContext), OhttpError> {
    let suite = config.preferred_suite().ok_or(OhttpError::Unsupported {
        kem: KEM_X25519_SHA256,
        kdf: config.suites.first().map_or(0, |s| s.kdf),
        aead: config.suites.first().map_or(0, |s| s.aead),
    })?;
    let public = PublicKey::from_bytes(&config.public_key).map_err(|_| OhttpError::PublicKey)?;
    let mut header = [0u8; HEADER_LEN];
    header[0] = config.key_id;
    header[1..3].copy_from_slice(&KEM_X25519_SHA256.to_be_bytes());
    header[3..5].copy_from_slice(&suite.kdf.to_be_bytes());
    header[5..7].copy_from_slice(&suite.aead.to_be_bytes());
    let info = [REQUEST_LABEL, &[0u8], &header[..]].concat();
    let secret_len = response_nonce_len(suite.aead).ok_or(OhttpError::Unsupported {
        kem: KEM_X25519_SHA256,
        kdf: suite.kdf,
        aead: suite.aead,
    })?;
    let mut secret = Zeroizing::new(vec![0u8; secret_len]);
    let mut seed = Zeroizing::new([0u8; 32]);
    rng.fill(seed.as_mut())?;
    let mut csprng = SeededRng { seed, served: 0, counter: 0 };
    fn seal<A: HpkeAead>(
        pk: &PublicKey,
        info: &[u8],
        pt: &[u8],
        secret: &mut [u8],
        csprng: &mut SeededRng,
    ) -> Result<(Vec<u8>, Vec<u8>), OhttpError> {
        let mut rng = rand_core::UnwrapErr(csprng);
        let (enc, mut ctx) =
            hpke::setup_sender_with_rng::<A, HkdfSha256, X25519HkdfSha256>(&OpModeS::Base, pk, info, &mut rng)
                .map_err(|_| OhttpError::PublicKey)?;
        let ct = ctx.seal(pt, b"").map_err(|_| OhttpError::TooLarge(pt.len()))?;
        ctx.export(RESPONSE_LABEL, secret).map_err(|_| OhttpError::TooLarge(pt.len()))?;
        Ok((enc.to_bytes().to_vec(), ct))
    }
    let (enc, ct) = match suite.aead {
        AEAD_AES_128_GCM => seal::<AesGcm128>(&public, &info, request, &mut secret, &mut csprng),
        AEAD_AES_256_GCM => seal::<AesGcm256>(&public, &info, request, &mut secret, &mut csprng),
        AEAD_CHACHA20_POLY1305 => seal::<ChaCha20Poly1305>(&public, &info, request, &mut secret, &mut csprng),
        aead => Err(OhttpError::Unsupported { kem: KEM_X25519_SHA256, kdf: suite.kdf, aead }),
    }?;
    let mut enc_arr = [0u8; ENC_LEN];
    enc_arr.copy_from_slice(&enc);
    let mut out = Vec::with_capacity(HEADER_LEN + ENC_LEN + ct.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&enc);
    out.extend_from_slice(&ct);
    Ok((out, ResponseContext { aead: suite.aead, enc: enc_arr, secret }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SystemRandom;

    #[test]
    fn round_trip_every_aead_and_tampering_is_refused() {
        let rng = SystemRandom::new();
        for aead in [AEAD_AES_256_GCM, AEAD_CHACHA20_POLY1305, AEAD_AES_128_GCM] {
            let gateway = Gateway::new(vec![GatewayKey::generate(7, &[aead], &rng).unwrap()]).unwrap();
            let config = KeyConfig::decode_list(gateway.key_list()).unwrap().remove(0);
            let (enc_req, client) = encapsulate(&config, b"hello gateway", &rng).unwrap();
            let (plain, server) = gateway.decapsulate(&enc_req).unwrap();
            assert_eq!(plain.as_slice(), b"hello gateway");
            assert_eq!(server.enc(), client.enc());
            let mut buf = vec![0u8; server.nonce_len()];
            buf.extend_from_slice(b"hello client");
            server.seal_in_place(&mut buf, &rng).unwrap();
            let mut tampered = buf.clone();
            let last = tampered.len() - 1;
            tampered[last] ^= 1;
            assert_eq!(client.open_in_place(&mut tampered), Err(OhttpError::ResponseDecrypt));
            assert_eq!(client.open_in_place(&mut buf).unwrap(), b"hello client");
            let mut bad = enc_req.clone();
            bad[HEADER_LEN + ENC_LEN + 1] ^= 1;
            assert_eq!(gateway.decapsulate(&bad).err(), Some(OhttpError::RequestDecrypt));
        }
    }

    #[test]
    fn wrong_key_id_unknown_suite_and_truncation_are_named() {
        let rng = SystemRandom::new();
        let gateway = Gateway::new(vec![GatewayKey::generate(1, &GATEWAY_AEADS, &rng).unwrap()]).unwrap();
        let config = KeyConfig::decode_list(gateway.key_list()).unwrap().remove(0);
        let (enc_req, _) = encapsulate(&config, b"x", &rng).unwrap();
        let mut other = enc_req.clone();
        other[0] = 9;
        assert_eq!(gateway.decapsulate(&other).err(), Some(OhttpError::UnknownKeyId(9)));
        let mut suite = enc_req.clone();
        suite[6] = 0x01; // AES-128-GCM: not offered by this key
        assert!(matches!(gateway.decapsulate(&suite), Err(OhttpError::Unsupported { aead: 1, .. })));
        assert!(matches!(gateway.decapsulate(&enc_req[..20]), Err(OhttpError::Truncated { .. })));
    }

    #[test]
    fn key_lists_refuse_bad_encodings_whole_and_skip_other_kems() {
        let rng = SystemRandom::new();
        let key = GatewayKey::generate(3, &GATEWAY_AEADS, &rng).unwrap();
        let mut list = vec![0u8, 5, 9, 0x00, 0x10, 0xaa, 0xbb]; // a P-256 configuration, skipped
        list.extend_from_slice(&KeyConfig::encode_list(std::slice::from_ref(key.config())));
        assert_eq!(KeyConfig::decode_list(&list).unwrap(), vec![key.config().clone()]);
        let good = KeyConfig::encode_list(std::slice::from_ref(key.config()));
        for cut in 1..good.len() {
            assert!(KeyConfig::decode_list(&good[..cut]).is_err(), "cut at {cut}");
        }
        // The symmetric algorithms length (bytes 37..39 of the list: prefix, id, KEM, key) no longer matches.
        let mut bad_len = good.clone();
        bad_len[38] = 7;
        assert!(KeyConfig::decode_list(&bad_len).is_err());
        assert!(KeyConfig::decode_list(&[]).is_err());
    }

    #[test]
    fn gateway_keys_need_distinct_ids() {
        let rng = SystemRandom::new();
        let a = GatewayKey::generate(1, &GATEWAY_AEADS, &rng).unwrap();
        let b = GatewayKey::generate(1, &GATEWAY_AEADS, &rng).unwrap();
        assert!(Gateway::new(vec![a, b]).is_err());
        assert!(Gateway::new(vec![]).is_err());
    }

    #[test]
    fn the_seeded_rng_serves_its_seed_then_an_expansion_that_does_not_repeat() {
        use rand_core::TryRng;
        let mut r = SeededRng { seed: Zeroizing::new([7u8; 32]), served: 0, counter: 0 };
        let mut a = [0u8; 40];
        r.try_fill_bytes(&mut a).unwrap();
        assert_eq!(&a[..32], &[7u8; 32]);
        let mut b = [0u8; 32];
        r.try_fill_bytes(&mut b).unwrap();
        assert_ne!(&a[32..40], &b[..8]);
    }
}

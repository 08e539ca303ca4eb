//! The claims of receipts and tree heads: CWT claims sets (RFC 8392) with EAT's `eat_profile` (RFC 9711),
//! each a closed map in CBOR's deterministic encoding (RFC 8949 §4.2.1: definite lengths, shortest heads,
//! keys in bytewise order of their encodings).
//!
//! ```text
//! receipt = {
//!   1: tstr,              ; iss: the enclave's NSM module id
//!   6: uint,              ; iat: when the answer was made, Unix seconds
//!   7: bstr .size 16,     ; cti: boot id (8 bytes) ‖ sequence number (u64, big-endian)
//!   265: RECEIPT_PROFILE, ; eat_profile
//!   -65537: tstr,         ; model: the model's name
//!   -65538: bstr .size 48,; model_sha384: SHA-384 of the model file as loaded
//!   -65539: bstr .size 32,; request_digest: HMAC-SHA-256(salt, request plaintext)
//!   -65540: bstr .size 32,; response_digest: HMAC-SHA-256(salt, answer plaintext)
//!   -65541: tstr,         ; mode: "kms" (KMS envelope) or "ohttp" (attested-key mode)
//!   -65542: bstr .size 48,; attestation_sha384: SHA-384 of the attestation document certifying the key
//!   -65543: uint,         ; seq: this receipt's number in its boot, from 0
//!   -65544: bstr .size 32 ; prev: RFC 9162 leaf hash of receipt seq-1 (32 zero bytes for seq 0)
//! }
//! tree_head = {
//!   1: tstr, 6: uint, 265: TREE_HEAD_PROFILE,
//!   -65542: bstr .size 48,; attestation_sha384
//!   -65545: uint,         ; tree_size: receipts covered (seq 0 .. tree_size-1)
//!   -65546: bstr .size 32 ; root_hash: RFC 9162 Merkle tree hash of those receipts
//! }
//! ```
//!
//! No claim says whether the answer was an answer or an error: the parent stores receipts in the clear,
//! and what it may learn of a request is its size bucket and timing (DESIGN invariant 9). In attested-key
//! mode the status is inside the answer plaintext the salted digest covers (the Binary HTTP response's
//! content: an answer, or the error's JSON). In KMS envelope mode a refusal travels in the sealed answer's
//! meta, and its receipt's response digest is over no bytes: the receipt shows the model ran on that
//! request and made no answer; the client holds the refusal itself, sealed.
//!
//! Private claim keys (below -65536, RFC 8392 §9.1) carry what the registered claims cannot; the mapping to
//! EphemeralML's AIR v1 is in `docs/AUDITING.md`. Decoding refuses unknown keys, missing keys, another
//! profile and any other encoding of the same values: re-encoding must give back the same bytes.
use super::{EvidenceError, Hash};
use crate::cbor::{CborError, Len, Reader, write_bytes, write_head, write_text};
use crate::error::clip;

/// `eat_profile` of a receipt.
pub const RECEIPT_PROFILE: &str = "https://example.invalid/veil/eat/receipt/v1";
/// `eat_profile` of a signed tree head.
pub const TREE_HEAD_PROFILE: &str = "https://example.invalid/veil/eat/tree-head/v1";
/// Longest issuer (module id) accepted; the NSM's module ids are about 40 characters.
pub const MAX_ISSUER_LEN: usize = 256;

const ISS: i64 = 1;
const IAT: i64 = 6;
const CTI: i64 = 7;
const EAT_PROFILE: i64 = 265;
const MODEL: i64 = -65537;
const MODEL_SHA384: i64 = -65538;
const REQUEST_DIGEST: i64 = -65539;
const RESPONSE_DIGEST: i64 = -65540;
const MODE: i64 = -65541;
const ATTESTATION_SHA384: i64 = -65542;
const SEQ: i64 = -65543;
const PREV: i64 = -65544;
const TREE_SIZE: i64 = -65545;
const ROOT_HASH: i64 = -65546;

/// Which confidential path the request came by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// KMS envelope mode: sealed under a KMS data key.
    Kms,
    /// Attested-key mode: Oblivious HTTP to the attested gateway key.
    Ohttp,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Kms => "kms",
            Mode::Ohttp => "ohttp",
        }
    }
}

/// What a receipt says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptClaims {
    /// The enclave's NSM module id.
    pub issuer: String,
    /// When the answer was made, Unix seconds.
    pub issued_at: u64,
    /// The boot's id (its first 8 bytes are in `cti`).
    pub boot_prefix: [u8; 8],
    pub model: String,
    pub model_sha384: [u8; 48],
    pub request_digest: Hash,
    pub response_digest: Hash,
    pub mode: Mode,
    pub attestation_sha384: [u8; 48],
    pub seq: u64,
    pub prev: Hash,
}

/// What a signed tree head says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeHeadClaims {
    pub issuer: String,
    pub issued_at: u64,
    pub attestation_sha384: [u8; 48],
    pub tree_size: u64,
    pub root_hash: Hash,
}

fn write_key(out: &mut Vec<u8>, key: i64) {
    if key >= 0 {
        write_head(out, 0, key as u64);
    } else {
        write_head(out, 1, (-1 - key) as u64);
    }
}

fn write_common(out: &mut Vec<u8>, entries: u64, issuer: &str, issued_at: u64) {
    write_head(out, 5, entries);
    write_key(out, ISS);
    write_text(out, issuer);
    write_key(out, IAT);
    write_head(out, 0, issued_at);
}

impl ReceiptClaims {
    /// `cti`: the boot prefix and the sequence number.
    pub fn cti(&self) -> [u8; 16] {
        let mut cti = [0u8; 16];
        cti[..8].copy_from_slice(&self.boot_prefix);
        cti[8..].copy_from_slice(&self.seq.to_be_bytes());
        cti
    }

    /// The deterministic encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(384 + self.issuer.len() + self.model.len());
        write_common(&mut out, 12, &self.issuer, self.issued_at);
        write_key(&mut out, CTI);
        write_bytes(&mut out, &self.cti());
        write_key(&mut out, EAT_PROFILE);
        write_text(&mut out, RECEIPT_PROFILE);
        write_key(&mut out, MODEL);
        write_text(&mut out, &self.model);
        write_key(&mut out, MODEL_SHA384);
        write_bytes(&mut out, &self.model_sha384);
        write_key(&mut out, REQUEST_DIGEST);
        write_bytes(&mut out, &self.request_digest);
        write_key(&mut out, RESPONSE_DIGEST);
        write_bytes(&mut out, &self.response_digest);
        write_key(&mut out, MODE);
        write_text(&mut out, self.mode.label());
        write_key(&mut out, ATTESTATION_SHA384);
        write_bytes(&mut out, &self.attestation_sha384);
        write_key(&mut out, SEQ);
        write_head(&mut out, 0, self.seq);
        write_key(&mut out, PREV);
        write_bytes(&mut out, &self.prev);
        out
    }

    /// The claims of a receipt's bytes (a COSE_Sign1) WITHOUT checking its signature: to find the key and
    /// the document that can check it, to name files, and to show it to people. Never for decisions.
    pub fn peek(receipt: &[u8]) -> Result<ReceiptClaims, EvidenceError> {
        let signed = super::cose::SignedObject::parse(receipt, "receipt")?;
        ReceiptClaims::decode(signed.unverified_payload())
    }

    /// Decodes a receipt's payload strictly (closed map, this profile, canonical bytes).
    pub fn decode(bytes: &[u8]) -> Result<ReceiptClaims, EvidenceError> {
        let mut c = Claims::open(bytes, "receipt claims", 12)?;
        let (issuer, issued_at) = c.common()?;
        c.key(CTI)?;
        let cti: [u8; 16] = c.fixed("cti")?;
        c.profile(RECEIPT_PROFILE)?;
        c.key(MODEL)?;
        let model = c.text("model")?;
        if !crate::message::is_valid_model_name(&model) {
            return Err(c.bad(format!("model: {}", crate::message::MODEL_NAME_RULE)));
        }
        c.key(MODEL_SHA384)?;
        let model_sha384 = c.fixed("model_sha384")?;
        c.key(REQUEST_DIGEST)?;
        let request_digest = c.fixed("request_digest")?;
        c.key(RESPONSE_DIGEST)?;
        let response_digest = c.fixed("response_digest")?;
        c.key(MODE)?;
        let mode = match c.text("mode")?.as_str() {
            "kms" => Mode::Kms,
            "ohttp" => Mode::Ohttp,
            other => return Err(c.bad(format!("unknown mode {:?}", clip(other, 48)))),
        };
        c.key(ATTESTATION_SHA384)?;
        let attestation_sha384 = c.fixed("attestation_sha384")?;
        c.key(SEQ)?;
        let seq = c.uint("seq")?;
        c.key(PREV)?;
        let prev = c.fixed("prev")?;
        c.end()?;
        let mut boot_prefix = [0u8; 8];
        boot_prefix.copy_from_slice(&cti[..8]);
        let claims = ReceiptClaims {
            issuer,
            issued_at,
            boot_prefix,
            model,
            model_sha384,
            request_digest,
            response_digest,
            mode,
            attestation_sha384,
            seq,
            prev,
        };
        if cti[8..] != seq.to_be_bytes() {
            return Err(c.bad("cti does not end with the sequence number".into()));
        }
        if claims.encode() != bytes {
            return Err(c.bad("not in the deterministic encoding".into()));
        }
        Ok(claims)
    }
}

impl TreeHeadClaims {
    /// The deterministic encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.issuer.len());
        write_common(&mut out, 6, &self.issuer, self.issued_at);
        write_key(&mut out, EAT_PROFILE);
        write_text(&mut out, TREE_HEAD_PROFILE);
        write_key(&mut out, ATTESTATION_SHA384);
        write_bytes(&mut out, &self.attestation_sha384);
        write_key(&mut out, TREE_SIZE);
        write_head(&mut out, 0, self.tree_size);
        write_key(&mut out, ROOT_HASH);
        write_bytes(&mut out, &self.root_hash);
        out
    }

    /// Decodes a tree head's payload strictly.
    pub fn decode(bytes: &[u8]) -> Result<TreeHeadClaims, EvidenceError> {
        let mut c = Claims::open(bytes, "tree head claims", 6)?;
        let (issuer, issued_at) = c.common()?;
        c.profile(TREE_HEAD_PROFILE)?;
        c.key(ATTESTATION_SHA384)?;
        let attestation_sha384 = c.fixed("attestation_sha384")?;
        c.key(TREE_SIZE)?;
        let tree_size = c.uint("tree_size")?;
        c.key(ROOT_HASH)?;
        let root_hash = c.fixed("root_hash")?;
        c.end()?;
        let claims = TreeHeadClaims { issuer, issued_at, attestation_sha384, tree_size, root_hash };
        if claims.encode() != bytes {
            return Err(c.bad("not in the deterministic encoding".into()));
        }
        Ok(claims)
    }
}

/// Which profile a claims set declares, without decoding the rest: lets a reader tell a receipt from a
/// tree head before choosing the decoder (the record kind in the log says it too; both must agree).
pub fn profile_of(payload: &[u8]) -> Option<&str> {
    let mut r = Reader::new(payload);
    let Ok(Len::Definite(n)) = r.map() else { return None };
    for _ in 0..n.min(16) {
        let key = r.int().ok()?;
        if key == i128::from(EAT_PROFILE) {
            return r.text().ok();
        }
        r.skip().ok()?;
    }
    None
}

/// A strict reader of one claims map.
struct Claims<'a> {
    r: Reader<'a>,
    what: &'static str,
}

impl<'a> Claims<'a> {
    fn open(bytes: &'a [u8], what: &'static str, entries: u64) -> Result<Self, EvidenceError> {
        let mut c = Claims { r: Reader::new(bytes), what };
        match c.r.map() {
            Ok(Len::Definite(n)) if n == entries => Ok(c),
            Ok(_) => Err(c.bad(format!("must be a map of exactly {entries} claims"))),
            Err(e) => Err(c.cbor(e)),
        }
    }

    fn bad(&self, reason: String) -> EvidenceError {
        EvidenceError::malformed(self.what, reason)
    }

    fn cbor(&self, e: CborError) -> EvidenceError {
        self.bad(format!("{} at byte {}", e.reason, e.offset))
    }

    fn key(&mut self, want: i64) -> Result<(), EvidenceError> {
        let got = self.r.int().map_err(|e| self.cbor(e))?;
        if got != i128::from(want) {
            return Err(self.bad(format!("expected claim {want} here, found {got}")));
        }
        Ok(())
    }

    fn common(&mut self) -> Result<(String, u64), EvidenceError> {
        self.key(ISS)?;
        let issuer = self.text("iss")?;
        if issuer.is_empty() || issuer.len() > MAX_ISSUER_LEN || issuer.chars().any(char::is_control) {
            return Err(self.bad(format!("iss must be 1 to {MAX_ISSUER_LEN} printable characters")));
        }
        self.key(IAT)?;
        let iat = self.uint("iat")?;
        Ok((issuer, iat))
    }

    fn profile(&mut self, want: &str) -> Result<(), EvidenceError> {
        self.key(EAT_PROFILE)?;
        let got = self.r.text().map_err(|e| self.cbor(e))?;
        if got != want {
            return Err(self.bad(format!("eat_profile is {:?}, expected {want:?}", clip(got, 48))));
        }
        Ok(())
    }

    fn text(&mut self, name: &str) -> Result<String, EvidenceError> {
        let t = self.r.text().map_err(|e| self.bad(format!("{name}: {} at byte {}", e.reason, e.offset)))?;
        Ok(t.to_owned())
    }

    fn uint(&mut self, name: &str) -> Result<u64, EvidenceError> {
        self.r.uint().map_err(|e| self.bad(format!("{name}: {} at byte {}", e.reason, e.offset)))
    }

    fn fixed<const N: usize>(&mut self, name: &str) -> Result<[u8; N], EvidenceError> {
        let b = self.r.bytes().map_err(|e| self.bad(format!("{name}: {} at byte {}", e.reason, e.offset)))?;
        b.try_into().map_err(|_| self.bad(format!("{name} is {} bytes, must be {N}", b.len())))
    }

    fn end(&self) -> Result<(), EvidenceError> {
        if self.r.is_empty() { Ok(()) } else { Err(self.bad("bytes after the claims map".into())) }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn receipt() -> ReceiptClaims {
        ReceiptClaims {
            issuer: "i-0123456789abcdef0-enc0123456789abcdef".into(),
            issued_at: 1_796_000_000,
            boot_prefix: [0xb0; 8],
            model: "iris".into(),
            model_sha384: [1; 48],
            request_digest: [2; 32],
            response_digest: [3; 32],
            mode: Mode::Kms,
            attestation_sha384: [4; 48],
            seq: 70_000,
            prev: [5; 32],
        }
    }

    #[test]
    fn receipts_round_trip_with_keys_in_deterministic_order() {
        let c = receipt();
        let bytes = c.encode();
        assert_eq!(ReceiptClaims::decode(&bytes).unwrap(), c);
        assert_eq!(profile_of(&bytes), Some(RECEIPT_PROFILE));
        // iss (0x01) first, iat (0x06), cti (0x07), eat_profile (0x19 0x01 0x09), then -65537 (0x3a 00 01 00 00).
        assert_eq!(&bytes[..2], &[0xac, 0x01]);
        let model_key = bytes.windows(5).position(|w| w == [0x3a, 0, 1, 0, 0]).unwrap();
        let profile_key = bytes.windows(3).position(|w| w == [0x19, 0x01, 0x09]).unwrap();
        assert!(profile_key < model_key);
    }

    #[test]
    fn tree_heads_round_trip_and_are_not_receipts() {
        let t = TreeHeadClaims {
            issuer: "i-mock".into(),
            issued_at: 5,
            attestation_sha384: [9; 48],
            tree_size: 1000,
            root_hash: [8; 32],
        };
        let bytes = t.encode();
        assert_eq!(TreeHeadClaims::decode(&bytes).unwrap(), t);
        assert_eq!(profile_of(&bytes), Some(TREE_HEAD_PROFILE));
        assert!(ReceiptClaims::decode(&bytes).is_err());
        assert!(TreeHeadClaims::decode(&receipt().encode()).is_err());
    }

    #[test]
    fn refuses_other_profiles_unknown_modes_and_long_forms() {
        let bytes = receipt().encode();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert!(text.contains("receipt/v1"));
        let other = bytes
            .windows(RECEIPT_PROFILE.len())
            .position(|w| w == RECEIPT_PROFILE.as_bytes())
            .map(|at| {
                let mut b = bytes.clone();
                b[at + RECEIPT_PROFILE.len() - 1] = b'2';
                b
            })
            .unwrap();
        assert!(ReceiptClaims::decode(&other).unwrap_err().to_string().contains("eat_profile"));
        let mut c = receipt();
        c.mode = Mode::Ohttp;
        let mut b = c.encode();
        let at = b.windows(5).position(|w| w == b"ohttp").unwrap();
        b[at] = b'x';
        assert!(ReceiptClaims::decode(&b).unwrap_err().to_string().contains("unknown mode"));
        // iat as a 4-byte integer: the same value, not the same bytes.
        let mut c = receipt();
        c.issued_at = 5;
        let b = c.encode();
        let iat_at = b.iter().position(|&x| x == 0x06).unwrap() + 1;
        let mut long = b.clone();
        long.splice(iat_at..iat_at + 1, [0x1a, 0, 0, 0, 5]);
        assert!(ReceiptClaims::decode(&long).unwrap_err().to_string().contains("deterministic"));
        for cut in 0..b.len() {
            assert!(ReceiptClaims::decode(&b[..cut]).is_err());
        }
    }
}

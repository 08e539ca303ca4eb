//! Evidence: a signed receipt for every answer, signed tree heads over all receipts of an enclave boot,
//! and the audit log that holds them, so that an auditor can show long after the fact which code answered
//! each request, with which model, and that no receipt was made up, dropped or reordered.
//!
//! Pure like the rest of the crate: it signs, hashes, encodes and checks bytes; the enclave holds the key
//! and the chain state, the parent writes the files, the `veil` CLI reads them.
//!
//! - [`cose`]: COSE_Sign1 (RFC 9052) with EdDSA over Ed25519 (RFC 8032), the envelope of receipts and
//!   tree heads, strictly parsed (one byte form per value).
//! - [`claims`]: the CWT claims (RFC 8392, with EAT's `eat_profile`, RFC 9711) of a receipt and of a tree
//!   head, as closed, deterministically encoded maps.
//! - [`merkle`]: RFC 9162's Merkle tree: leaf and node hashes, roots, inclusion proofs, the compact
//!   frontier the enclave keeps and the full store the parent answers proofs from.
//! - [`log`]: the audit log's records (an RFC 8742 CBOR sequence) and their reader.
//! - [`bundle`]: the evidence bundle a client keeps (receipt, salt, the certifying attestation document,
//!   optionally an inclusion proof), as JSON.
//! - [`verify`]: checking a receipt against its attestation document at the document's own time, and the
//!   audit log's chains, tree heads, gaps and order ([`verify::AuditVerifier`]).
//!
//! The formats are specified in `docs/PROTOCOL.md` §11 and what they prove in `docs/AUDITING.md`.

mod audit;
pub mod bundle;
pub mod claims;
pub mod cose;
pub mod log;
pub mod merkle;
pub mod verify;

pub use claims::{Mode, ReceiptClaims, TreeHeadClaims};
pub use cose::{ReceiptKey, SignedObject};

/// SHA-256, the hash of RFC 9162's tree and of the receipts' chain.
pub type Hash = [u8; 32];

/// Bytes of a receipt's salt: the key of its request and response digests, given only to the client.
pub const SALT_LEN: usize = 32;

/// The salted digest of a request or answer plaintext: HMAC-SHA-256 (RFC 2104) keyed with the salt. Whoever
/// lacks the salt cannot confirm a guess of a low-entropy input from a receipt in the log.
pub fn salted_digest(salt: &[u8; SALT_LEN], plaintext: &[u8]) -> Hash {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, salt);
    let tag = ring::hmac::sign(&key, plaintext);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// SHA-384 of `data` (the digest receipts name attestation documents and models by).
pub fn sha384(data: &[u8]) -> [u8; 48] {
    let d = ring::digest::digest(&ring::digest::SHA384, data);
    let mut out = [0u8; 48];
    out.copy_from_slice(d.as_ref());
    out
}

/// The identity of one enclave boot (one receipt key): the first 16 bytes of SHA-256 of its Ed25519 public
/// key. Names the boot's directory in the audit log and prefixes its receipts' `cti`.
pub fn boot_id(receipt_public_key: &[u8; 32]) -> [u8; 16] {
    let d = ring::digest::digest(&ring::digest::SHA256, receipt_public_key);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d.as_ref()[..16]);
    out
}

/// Why evidence was refused: the name of the check, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// The bytes are not the format (COSE_Sign1, claims, record, bundle) they should be.
    #[error("{what} is malformed: {reason}")]
    Malformed { what: &'static str, reason: String },
    /// The Ed25519 signature does not verify with the attested key.
    #[error("the {what}'s signature does not verify with the receipt key the attestation document commits to")]
    Signature { what: &'static str },
    /// A Merkle inclusion proof does not lead to the signed root.
    #[error("inclusion proof: {0}")]
    Inclusion(String),
}

impl EvidenceError {
    pub(crate) fn malformed(what: &'static str, reason: impl Into<String>) -> Self {
        EvidenceError::Malformed { what, reason: reason.into() }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn salted_digest_is_rfc4231_hmac_sha256() {
        // RFC 4231 test case 2 ("Jefe" / "what do ya want for nothing?"), with the key zero-padded to the
        // 32-byte salt: HMAC pads short keys with zeros to the block size, so the tag is the RFC's.
        let mut salt = [0u8; 32];
        salt[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            hex::encode(salted_digest(&salt, b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

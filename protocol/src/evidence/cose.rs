//! COSE_Sign1 (RFC 9052 §4.2) with EdDSA over Ed25519 (RFC 8032; COSE algorithm -8), as receipts and tree
//! heads use it: tagged (CBOR tag 18), the protected header exactly `{1: -8, 3: 61}` (algorithm EdDSA,
//! content type `application/cwt`), an empty unprotected header, the CWT claims as the payload, and a
//! 64-byte signature over `Sig_structure = ["Signature1", protected, h'', payload]`.
//!
//! Parsing is strict: one byte form per signed object (definite lengths, shortest heads, nothing after the
//! array), because the receipts' hash chain and the Merkle tree hash those bytes, and two encodings of one
//! receipt would be two leaves. Nothing in the unprotected header is accepted: it is not signed.
//!
//! Signing is ed25519-dalek's (pure Rust, its secret wiped on drop, and about a fifth faster than ring's
//! on the development machine: docs/BENCHMARKS.md "Receipts"); verifying is ring's. Ed25519 signatures
//! are deterministic, so the two agree byte for byte (RFC 8032 §7.1's vectors, below, check both).
use ed25519_dalek::Signer;
use ring::signature::{ED25519, UnparsedPublicKey};
use zeroize::Zeroizing;

use super::EvidenceError;
use crate::cbor::{Len, Reader, write_bytes, write_head, write_text};
use crate::random::{RandomError, RandomSource};

/// CBOR tag of a COSE_Sign1 object.
pub const COSE_SIGN1_TAG: u64 = 18;
/// The protected header every receipt and tree head carries: `{1: -8, 3: 61}`.
pub const PROTECTED_HEADER: [u8; 6] = [0xa2, 0x01, 0x27, 0x03, 0x18, 0x3d];
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Largest signed object accepted (receipts and tree heads are a few hundred bytes).
pub const MAX_SIGNED_LEN: usize = 4096;

/// The enclave's receipt signing key: Ed25519, made at boot from the enclave's random source (the kernel
/// RNG, seeded by the NSM), never leaving the enclave. Its public half is in the attestation commitment.
pub struct ReceiptKey {
    pair: ed25519_dalek::SigningKey,
    public: [u8; 32],
}

impl std::fmt::Debug for ReceiptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptKey").field("public", &hex::encode(self.public)).finish_non_exhaustive()
    }
}

impl ReceiptKey {
    /// A new key from 32 random bytes of `rng` (the seed is wiped once the key is made).
    pub fn generate(rng: &dyn RandomSource) -> Result<ReceiptKey, RandomError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill(seed.as_mut())?;
        Self::from_seed(&seed).map_err(|_| RandomError)
    }

    /// The key whose RFC 8032 private key (seed) is `seed` (tests and known-answer vectors).
    pub fn from_seed(seed: &[u8; 32]) -> Result<ReceiptKey, EvidenceError> {
        let pair = ed25519_dalek::SigningKey::from_bytes(seed);
        let public = pair.verifying_key().to_bytes();
        Ok(ReceiptKey { pair, public })
    }

    /// The raw public key (RFC 8032 encoding).
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public
    }

    /// Signs `payload` (encoded CWT claims) as a tagged COSE_Sign1.
    pub fn sign(&self, payload: &[u8]) -> Vec<u8> {
        let signature = self.pair.sign(&sig_structure(&PROTECTED_HEADER, payload)).to_bytes();
        let mut out = Vec::with_capacity(payload.len() + 96);
        write_head(&mut out, 6, COSE_SIGN1_TAG);
        write_head(&mut out, 4, 4);
        write_bytes(&mut out, &PROTECTED_HEADER);
        write_head(&mut out, 5, 0);
        write_bytes(&mut out, payload);
        write_bytes(&mut out, &signature);
        out
    }
}

/// `Sig_structure` for COSE_Sign1 with an empty external AAD (RFC 9052 §4.4).
fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(protected.len() + payload.len() + 24);
    write_head(&mut s, 4, 4);
    write_text(&mut s, "Signature1");
    write_bytes(&mut s, protected);
    write_bytes(&mut s, &[]);
    write_bytes(&mut s, payload);
    s
}

/// A parsed COSE_Sign1 whose signature has not been checked: its payload is reachable only through
/// [`SignedObject::verify`], or, for display and for finding the key, the loudly named
/// [`SignedObject::unverified_payload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedObject<'a> {
    bytes: &'a [u8],
    payload: &'a [u8],
    signature: [u8; SIGNATURE_LEN],
}

impl<'a> SignedObject<'a> {
    /// Parses `bytes` (exactly one tagged COSE_Sign1 in the one form [`ReceiptKey::sign`] writes).
    pub fn parse(bytes: &'a [u8], what: &'static str) -> Result<SignedObject<'a>, EvidenceError> {
        let bad = |reason: String| EvidenceError::malformed(what, reason);
        if bytes.len() > MAX_SIGNED_LEN {
            return Err(bad(format!("{} bytes, more than the {MAX_SIGNED_LEN} accepted", bytes.len())));
        }
        let mut r = Reader::new(bytes);
        let cbor = |e: crate::cbor::CborError| bad(format!("{} at byte {}", e.reason, e.offset));
        if !r.next_is_tag() || r.tag().map_err(cbor)? != COSE_SIGN1_TAG {
            return Err(bad("not a tagged COSE_Sign1 (tag 18)".into()));
        }
        if r.array().map_err(cbor)? != Len::Definite(4) {
            return Err(bad("a COSE_Sign1 is an array of exactly 4 items".into()));
        }
        let protected = r.bytes().map_err(cbor)?;
        if protected != PROTECTED_HEADER {
            return Err(bad(format!(
                "the protected header must be {{1: -8, 3: 61}} (EdDSA, application/cwt), found {}",
                hex::encode(&protected[..protected.len().min(32)])
            )));
        }
        if r.map().map_err(cbor)? != Len::Definite(0) {
            return Err(bad("the unprotected header must be empty (it is not signed)".into()));
        }
        let payload = r.bytes().map_err(cbor)?;
        let signature: [u8; SIGNATURE_LEN] = r
            .bytes()
            .map_err(cbor)?
            .try_into()
            .map_err(|_| bad(format!("the signature must be {SIGNATURE_LEN} bytes (Ed25519)")))?;
        if !r.is_empty() {
            return Err(bad(format!("{} bytes after the COSE_Sign1", r.remaining())));
        }
        let object = SignedObject { bytes, payload, signature };
        // One byte form: what was read must be exactly what signing writes (shortest heads).
        if object.reencode() != bytes {
            return Err(bad("not in the canonical form (non-shortest lengths)".into()));
        }
        Ok(object)
    }

    fn reencode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes.len());
        write_head(&mut out, 6, COSE_SIGN1_TAG);
        write_head(&mut out, 4, 4);
        write_bytes(&mut out, &PROTECTED_HEADER);
        write_head(&mut out, 5, 0);
        write_bytes(&mut out, self.payload);
        write_bytes(&mut out, &self.signature);
        out
    }

    /// The whole object's bytes (what the chain and the Merkle tree hash).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The payload before its signature is checked: for display and diagnostics only, never for decisions.
    pub fn unverified_payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Checks the Ed25519 signature with `public_key` and returns the payload it covers.
    pub fn verify(&self, public_key: &[u8; 32], what: &'static str) -> Result<&'a [u8], EvidenceError> {
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&sig_structure(&PROTECTED_HEADER, self.payload), &self.signature)
            .map_err(|_| EvidenceError::Signature { what })?;
        Ok(self.payload)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key() -> ReceiptKey {
        ReceiptKey::from_seed(&[7; 32]).unwrap()
    }

    #[test]
    fn signs_and_verifies_and_every_flipped_byte_is_refused() {
        let k = key();
        let signed = k.sign(b"\xa1\x01\x63abc");
        let parsed = SignedObject::parse(&signed, "receipt").unwrap();
        assert_eq!(parsed.verify(k.public_key(), "receipt").unwrap(), b"\xa1\x01\x63abc");
        for i in 0..signed.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = signed.clone();
                b[i] ^= bit;
                let ok = SignedObject::parse(&b, "receipt").and_then(|p| p.verify(k.public_key(), "receipt"));
                assert!(ok.is_err(), "flipping bit {bit:#x} of byte {i} went unnoticed");
            }
        }
        let other = ReceiptKey::from_seed(&[8; 32]).unwrap();
        assert_eq!(parsed.verify(other.public_key(), "receipt"), Err(EvidenceError::Signature { what: "receipt" }));
    }

    #[test]
    fn rfc8032_tests_1_and_2_sign_with_dalek_and_verify_with_ring() {
        // RFC 8032 §7.1, TEST 1 (empty message) and TEST 2 (one byte): each seed gives the published public
        // key and the published signature (the COSE layer adds the Sig_structure on top of this primitive),
        // and ring, which verifies receipts, accepts the signature ed25519-dalek made.
        let vectors = [
            (
                "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
                "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
                "",
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b\
                 d25bf5f0595bbe24655141438e7a100b",
            ),
            (
                "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
                "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
                "72",
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c\
                 387b2eaeb4302aeeb00d291612bb0c00",
            ),
        ];
        for (seed, public, message, signature) in vectors {
            let seed: [u8; 32] = hex::decode(seed).unwrap().try_into().unwrap();
            let k = ReceiptKey::from_seed(&seed).unwrap();
            assert_eq!(hex::encode(k.public_key()), public);
            let message = hex::decode(message).unwrap();
            let made = k.pair.sign(&message).to_bytes();
            assert_eq!(hex::encode(made), signature);
            UnparsedPublicKey::new(&ED25519, k.public_key()).verify(&message, &made).unwrap();
        }
    }

    #[test]
    fn refuses_untagged_unprotected_trailing_and_long_forms() {
        let k = key();
        let signed = k.sign(b"\xa0");
        // Untagged.
        assert!(SignedObject::parse(&signed[1..], "receipt").is_err());
        // A parameter in the unprotected header.
        let mut unprot = signed.clone();
        let at = 1 + 1 + 7; // tag, array head, protected bstr (1 + 6)
        assert_eq!(unprot[at], 0xa0);
        unprot.splice(at..at + 1, [0xa1, 0x04, 0x41, 0x00]);
        assert!(SignedObject::parse(&unprot, "receipt").unwrap_err().to_string().contains("unprotected"));
        // Trailing bytes.
        let mut trailing = signed.clone();
        trailing.push(0);
        assert!(SignedObject::parse(&trailing, "receipt").is_err());
        // The payload's length in a longer head than needed.
        let mut long = signed.clone();
        let p = at + 1;
        assert_eq!(long[p], 0x41);
        long.splice(p..p + 1, [0x58, 0x01]);
        assert!(SignedObject::parse(&long, "receipt").unwrap_err().to_string().contains("canonical"));
    }
}

//! `CiphertextForRecipient`, built the way AWS KMS builds it.
//!
//! KMS answers a request with `Recipient` by wrapping the plaintext in a CMS EnvelopedData (RFC 5652) for the
//! RSA key found in the attestation document's `public_key`. We reproduce its exact shape, checked against
//! the real KMS blobs in `tests/vectors/` (see `docs/MOCK_KMS.md`), so that code which unwraps real KMS answers
//! unwraps ours with no special case:
//!
//! ```text
//! ContentInfo (BER, indefinite length) { id-envelopedData,
//!   [0] EnvelopedData (indefinite) { version 2,
//!     SET { KeyTransRecipientInfo { version 2,
//!             rid [0] subjectKeyIdentifier = SHA-256 of the recipient's SubjectPublicKeyInfo DER,
//!             id-RSAES-OAEP { [0] sha256, [1] mgf1(sha256) },
//!             encryptedKey = RSAES-OAEP-SHA256(content-encryption key) } },
//!     EncryptedContentInfo (indefinite) { id-data, aes256-CBC(IV),
//!       [0] constructed (indefinite) { OCTET STRING ciphertext, in chunks of 1000 bytes } } } }
//! ```
//!
//! The content is encrypted with a fresh AES-256 key in CBC mode with PKCS#7 padding and a random IV.

use aes::cipher::{BlockModeEncrypt, KeyIvInit, block_padding::Pkcs7};
use rsa::pkcs8::DecodePublicKey;
use veil_protocol::der::tlv;
use zeroize::Zeroizing;

/// Largest recipient key accepted, in bits: bounds the cost of a hostile document's key.
pub const MAX_RSA_BITS: usize = 4096;
/// Smallest recipient key accepted, in bits (KMS requires RSA 2048 or larger).
pub const MIN_RSA_BITS: usize = 2048;

/// KMS splits the encrypted content into OCTET STRINGs of this many bytes (seen in its larger blobs).
const CHUNK: usize = 1000;
const OID_ENVELOPED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03];
const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
const OID_RSAES_OAEP: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07];
const OID_MGF1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];

/// Why a `CiphertextForRecipient` could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CmsError {
    /// The document's `public_key` is not a DER SubjectPublicKeyInfo of an RSA key.
    #[error("the attestation document's public_key is not a DER SubjectPublicKeyInfo of an RSA key")]
    NotRsaSpki,
    /// The RSA key's size is outside what KMS accepts.
    #[error("the recipient RSA key has {0} bits; {MIN_RSA_BITS}..={MAX_RSA_BITS} are accepted")]
    KeySize(usize),
    /// RSA-OAEP encryption failed.
    #[error("RSAES-OAEP encryption to the recipient key failed")]
    Encrypt,
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// Wraps `plaintext` for the RSA key whose DER SubjectPublicKeyInfo is `recipient_spki`, as KMS does.
pub fn ciphertext_for_recipient(recipient_spki: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CmsError> {
    use ring::rand::SecureRandom;
    use rsa::traits::PublicKeyParts;

    let public = rsa::PublicKey::from_public_key_der(recipient_spki).map_err(|_| CmsError::NotRsaSpki)?;
    let bits = public.size() * 8;
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(CmsError::KeySize(bits));
    }
    let rng = ring::rand::SystemRandom::new();
    let mut cek = Zeroizing::new([0u8; 32]);
    let mut iv = [0u8; 16];
    rng.fill(cek.as_mut()).map_err(|_| CmsError::Random)?;
    rng.fill(&mut iv).map_err(|_| CmsError::Random)?;

    let encrypted_key = public.oaep_encrypt::<rsa::sha2::Sha256>(cek.as_ref()).map_err(|_| CmsError::Encrypt)?;
    let content =
        cbc::Encryptor::<aes::Aes256>::new((&*cek).into(), (&iv).into()).encrypt_padded_vec::<Pkcs7>(plaintext);

    let ski = ring::digest::digest(&ring::digest::SHA256, recipient_spki);
    Ok(build(ski.as_ref(), &encrypted_key, &iv, &content))
}

/// Assembles the BER; pure, so that tests can compare it byte for byte with KMS's layout.
fn build(ski: &[u8], encrypted_key: &[u8], iv: &[u8], content: &[u8]) -> Vec<u8> {
    let sha256_alg = tlv(0x30, &[tlv(0x06, OID_SHA256), vec![0x05, 0x00]].concat());
    let oaep_params = tlv(
        0x30,
        &[tlv(0xa0, &sha256_alg), tlv(0xa1, &tlv(0x30, &[tlv(0x06, OID_MGF1), sha256_alg.clone()].concat()))].concat(),
    );
    let key_enc_alg = tlv(0x30, &[tlv(0x06, OID_RSAES_OAEP), oaep_params].concat());
    let ktri = tlv(0x30, &[vec![0x02, 0x01, 0x02], tlv(0x80, ski), key_enc_alg, tlv(0x04, encrypted_key)].concat());
    let recipient_infos = tlv(0x31, &ktri);
    let content_alg = tlv(0x30, &[tlv(0x06, OID_AES256_CBC), tlv(0x04, iv)].concat());
    let encrypted_content_info =
        indefinite(0x30, &[tlv(0x06, OID_DATA), content_alg, indefinite(0xa0, &chunks(content))].concat());
    let enveloped = indefinite(0x30, &[vec![0x02, 0x01, 0x02], recipient_infos, encrypted_content_info].concat());
    indefinite(0x30, &[tlv(0x06, OID_ENVELOPED_DATA), indefinite(0xa0, &enveloped)].concat())
}

/// The ciphertext as OCTET STRINGs of at most [`CHUNK`] bytes each, as KMS splits it.
fn chunks(content: &[u8]) -> Vec<u8> {
    content.chunks(CHUNK).flat_map(|c| tlv(0x04, c)).collect()
}

/// An indefinite-length constructed TLV, closed by end-of-contents (as KMS writes its outer layers).
fn indefinite(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 4);
    out.extend_from_slice(&[tag, 0x80]);
    out.extend_from_slice(value);
    out.extend_from_slice(&[0x00, 0x00]);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The layout is KMS's: rebuilding the edgebitio vector from its parts gives the same bytes.
    #[test]
    fn build_matches_a_real_kms_blob_byte_for_byte() {
        let real = include_bytes!("../../tests/vectors/edgebitio-enclaver-cms/ciphertext_for_recipient.ber");
        let ski = &real[33..65];
        let encrypted_key = &real[131..387];
        let iv = &real[415..431];
        let content = &real[435..451];
        assert_eq!(build(ski, encrypted_key, iv, content), real.to_vec());
    }

    #[test]
    fn refuses_a_key_that_is_not_rsa_spki() {
        assert_eq!(ciphertext_for_recipient(b"not a key", b"x"), Err(CmsError::NotRsaSpki));
        assert_eq!(ciphertext_for_recipient(&[], b"x"), Err(CmsError::NotRsaSpki));
    }

    #[test]
    fn content_is_split_into_1000_byte_chunks() {
        let c = chunks(&[1u8; 2112]);
        assert_eq!(c.len(), 2112 + 4 + 4 + 2);
        assert_eq!(c[..4], [0x04, 0x82, 0x03, 0xe8]);
        assert_eq!(c[2008..2011], [0x04, 0x70, 1]);
        assert!(chunks(&[]).is_empty());
    }

    #[test]
    fn long_lengths_use_the_shortest_form() {
        assert_eq!(tlv(0x04, &[0u8; 0x80])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(tlv(0x04, &[0u8; 0x100])[..4], [0x04, 0x82, 0x01, 0x00]);
        assert_eq!(tlv(0x04, &[0u8; 0x7f])[..2], [0x04, 0x7f]);
    }
}

//! Unwrapping KMS's `CiphertextForRecipient`: CMS `EnvelopedData` (RFC 5652), BER with indefinite lengths,
//! one `KeyTransRecipientInfo` with RSAES-OAEP-SHA-256, content encrypted with AES-256-CBC.
//!
//! `cms` 0.3 (pre-release) because 0.2 only reads DER and KMS emits indefinite-length BER. The blob comes
//! from KMS through TLS that terminates in the enclave, so the parent cannot forge it; it is still parsed as
//! hostile input: bounded in size, every algorithm checked, no panics.
//!
//! Errors: structural problems (not CMS, wrong algorithms, missing pieces) are named, since they describe
//! public data. Everything past the structure (the RSA unwrap, the CBC padding, the content length) fails
//! with one [`CmsError::Decrypt`], so no caller can tell which cryptographic step failed.
use cms::cert::x509::spki::AlgorithmIdentifierOwned;
use cms::content_info::ContentInfo;
use cms::der::asn1::{ObjectIdentifier, OctetString};
use cms::der::{Decode, Encode};
use cms::enveloped_data::{EnvelopedData, RecipientInfo};
use zeroize::Zeroizing;

use super::rsa_key::RecipientKey;

/// Largest blob accepted. KMS `Decrypt` returns at most 4096 bytes of plaintext, so its envelope for an
/// RSA-2048 recipient stays well under 8 KiB; 64 KiB is generous and still bounded.
pub const MAX_BLOB_BYTES: usize = 64 * 1024;

const ID_ENVELOPED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.3");
const ID_RSAES_OAEP: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.7");
const ID_MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
const ID_P_SPECIFIED: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.9");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const ID_AES256_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.42");

/// Why a `CiphertextForRecipient` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CmsError {
    /// Empty, or larger than [`MAX_BLOB_BYTES`].
    #[error("CiphertextForRecipient is {0} bytes (expected 1 to {MAX_BLOB_BYTES})")]
    Size(usize),
    /// Not BER/DER of the expected ASN.1 shape.
    #[error("CiphertextForRecipient is not a well-formed CMS structure: {0}")]
    Malformed(&'static str),
    /// Well-formed, but not what KMS produces for an RSAES_OAEP_SHA_256 recipient.
    #[error("CiphertextForRecipient uses an unexpected structure or algorithm: {0}")]
    Unsupported(&'static str),
    /// The envelope does not open with this enclave's key. Deliberately one error for every cryptographic
    /// failure (RSA, padding, length): no oracle.
    #[error("CiphertextForRecipient does not decrypt with this enclave's recipient key")]
    Decrypt,
}

/// The parts of the envelope, as parsed (public data: all of it is ciphertext).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The content-encryption key, RSA-OAEP-encrypted to the recipient key.
    pub encrypted_key: Vec<u8>,
    /// The AES-256-CBC initialisation vector.
    pub iv: [u8; 16],
    /// The AES-256-CBC ciphertext (PKCS#7 padded).
    pub ciphertext: Vec<u8>,
}

/// Parses a `CiphertextForRecipient` without decrypting it.
pub fn parse(blob: &[u8]) -> Result<Envelope, CmsError> {
    if blob.is_empty() || blob.len() > MAX_BLOB_BYTES {
        return Err(CmsError::Size(blob.len()));
    }
    let info = ContentInfo::from_ber(blob).map_err(|_| CmsError::Malformed("not a CMS ContentInfo"))?;
    if info.content_type != ID_ENVELOPED_DATA {
        return Err(CmsError::Unsupported("content type is not EnvelopedData"));
    }
    // The content is held as raw value bytes; re-wrap it with a definite length and read it with BER rules
    // (its own insides may still use indefinite lengths).
    let inner = info.content.to_der().map_err(|_| CmsError::Malformed("EnvelopedData content"))?;
    let data = EnvelopedData::from_ber(&inner).map_err(|_| CmsError::Malformed("not an EnvelopedData"))?;

    let mut recipients = data.recip_infos.0.iter();
    let (Some(recipient), None) = (recipients.next(), recipients.next()) else {
        return Err(CmsError::Unsupported("expected exactly one recipient"));
    };
    let RecipientInfo::Ktri(ktri) = recipient else {
        return Err(CmsError::Unsupported("the recipient is not a key-transport (RSA) recipient"));
    };
    check_oaep_sha256(&ktri.key_enc_alg)?;

    let content = &data.encrypted_content;
    if content.content_enc_alg.oid != ID_AES256_CBC {
        return Err(CmsError::Unsupported("content encryption is not AES-256-CBC"));
    }
    let iv_any = content.content_enc_alg.parameters.as_ref().ok_or(CmsError::Malformed("AES-CBC without an IV"))?;
    let iv_octets: OctetString =
        iv_any.decode_as().map_err(|_| CmsError::Malformed("AES-CBC IV is not an OCTET STRING"))?;
    let iv: [u8; 16] =
        iv_octets.as_bytes().try_into().map_err(|_| CmsError::Malformed("AES-CBC IV is not 16 bytes"))?;
    let ciphertext = content
        .encrypted_content
        .as_ref()
        .ok_or(CmsError::Unsupported("no encrypted content (detached content is not supported)"))?
        .as_bytes()
        .to_vec();
    if ciphertext.is_empty() || ciphertext.len() % 16 != 0 {
        return Err(CmsError::Malformed("AES-CBC ciphertext is not a whole number of blocks"));
    }
    Ok(Envelope { encrypted_key: ktri.enc_key.as_bytes().to_vec(), iv, ciphertext })
}

/// RSAES-OAEP with SHA-256, MGF1 with SHA-256, and the empty label: what KMS uses for
/// `RSAES_OAEP_SHA_256`. The parameters' defaults are SHA-1, so absent parameters are refused.
fn check_oaep_sha256(alg: &AlgorithmIdentifierOwned) -> Result<(), CmsError> {
    if alg.oid != ID_RSAES_OAEP {
        return Err(CmsError::Unsupported("key transport is not RSAES-OAEP"));
    }
    let params = alg.parameters.as_ref().ok_or(CmsError::Unsupported("RSAES-OAEP with default (SHA-1) parameters"))?;
    let der = params.to_der().map_err(|_| CmsError::Malformed("RSAES-OAEP parameters"))?;
    let params = rsa::pkcs1::RsaOaepParamsOwned::from_der(&der)
        .map_err(|_| CmsError::Malformed("RSAES-OAEP parameters do not parse"))?;
    if params.hash.oid != ID_SHA256 {
        return Err(CmsError::Unsupported("RSAES-OAEP hash is not SHA-256"));
    }
    let mgf_hash = params.mask_gen.parameters.as_ref().map(|a| a.oid);
    if params.mask_gen.oid != ID_MGF1 || mgf_hash != Some(ID_SHA256) {
        return Err(CmsError::Unsupported("RSAES-OAEP mask generation is not MGF1 with SHA-256"));
    }
    let label_empty = params.p_source.parameters.as_ref().is_none_or(|p| p.value().is_empty());
    if params.p_source.oid != ID_P_SPECIFIED || !label_empty {
        return Err(CmsError::Unsupported("RSAES-OAEP with a label"));
    }
    Ok(())
}

/// Parses and decrypts a `CiphertextForRecipient` with the enclave's recipient key: the KMS plaintext
/// (a data key, typically 32 bytes), zeroized on drop.
pub fn unwrap(blob: &[u8], key: &RecipientKey) -> Result<Zeroizing<Vec<u8>>, CmsError> {
    let env = parse(blob)?;
    let cek = key.oaep_sha256_decrypt(&env.encrypted_key).ok_or(CmsError::Decrypt)?;
    if cek.len() != 32 {
        return Err(CmsError::Decrypt);
    }
    decrypt_aes256_cbc(&cek, &env.iv, &env.ciphertext).ok_or(CmsError::Decrypt)
}

fn decrypt_aes256_cbc(key: &[u8], iv: &[u8; 16], ciphertext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    use cbc::cipher::{BlockModeDecrypt, KeyIvInit, block_padding::Pkcs7};
    let decryptor = cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv).ok()?;
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let len = decryptor.decrypt_padded::<Pkcs7>(&mut buf).ok()?.len();
    buf.truncate(len);
    Some(buf)
}

//! The mock's `CiphertextBlob` format (KMS's own is opaque, so any self-describing format will do).
//!
//! ```text
//! version (1 byte, 0x01) | key id length (1 byte) | key id (ASCII UUID) | nonce (12 bytes) | AES-256-GCM ciphertext+tag
//! ```
//!
//! The associated data binds the format version, the key id and the encryption context in canonical form
//! (a JSON object with its keys sorted), so a blob opens only under the key and the exact context it was
//! made with: KMS's documented behaviour (a wrong context is `InvalidCiphertextException`).

use std::collections::BTreeMap;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// The only format version written and read.
pub const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"veil-mock-kms ciphertext v1\0";

/// Why a blob could not be made or opened. Deliberately vague on open: KMS says only "invalid ciphertext".
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlobError {
    /// The bytes are not a blob of this format.
    #[error("the ciphertext is not a blob made by this KMS")]
    Malformed,
    /// Authentication failed: wrong key, wrong encryption context, or tampered bytes.
    #[error("the ciphertext does not authenticate with its key and the given encryption context")]
    Authentication,
    /// The random number generator or the cipher failed.
    #[error("encryption failed")]
    Crypto,
}

/// The key id a blob names, read without decrypting (to find the key and check its policy first).
pub fn key_id(blob: &[u8]) -> Result<&str, BlobError> {
    let (&version, rest) = blob.split_first().ok_or(BlobError::Malformed)?;
    if version != VERSION {
        return Err(BlobError::Malformed);
    }
    let (&len, rest) = rest.split_first().ok_or(BlobError::Malformed)?;
    let id = rest.get(..usize::from(len)).ok_or(BlobError::Malformed)?;
    std::str::from_utf8(id).map_err(|_| BlobError::Malformed)
}

/// Canonical associated data: domain, key id, and the context as sorted JSON.
fn aad(key_id: &str, context: &BTreeMap<String, String>) -> Result<Vec<u8>, BlobError> {
    let mut aad = DOMAIN.to_vec();
    aad.extend_from_slice(key_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&serde_json::to_vec(context).map_err(|_| BlobError::Crypto)?);
    Ok(aad)
}

/// Encrypts `plaintext` under `material` (the key's 32 bytes), binding `key_id` and `context`.
pub fn seal(
    key_id: &str,
    material: &[u8; 32],
    context: &BTreeMap<String, String>,
    plaintext: &[u8],
) -> Result<Vec<u8>, BlobError> {
    let id_len = u8::try_from(key_id.len()).map_err(|_| BlobError::Crypto)?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, material).map_err(|_| BlobError::Crypto)?);
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| BlobError::Crypto)?;
    let mut sealed = plaintext.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad(key_id, context)?), &mut sealed)
        .map_err(|_| BlobError::Crypto)?;
    let mut out = Vec::with_capacity(2 + key_id.len() + NONCE_LEN + sealed.len());
    out.push(VERSION);
    out.push(id_len);
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Decrypts a blob made by [`seal`] with the same key and context.
pub fn open(
    blob: &[u8],
    material: &[u8; 32],
    context: &BTreeMap<String, String>,
) -> Result<Zeroizing<Vec<u8>>, BlobError> {
    let id = key_id(blob)?;
    let rest = blob.get(2 + id.len()..).ok_or(BlobError::Malformed)?;
    if rest.len() < NONCE_LEN + AES_256_GCM.tag_len() {
        return Err(BlobError::Malformed);
    }
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| BlobError::Malformed)?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, material).map_err(|_| BlobError::Crypto)?);
    let mut buf = Zeroizing::new(sealed.to_vec());
    let len =
        key.open_in_place(nonce, Aad::from(aad(id, context)?), &mut buf).map_err(|_| BlobError::Authentication)?.len();
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn round_trip_and_binding() {
        let material = [7u8; 32];
        let id = "1234abcd-12ab-34cd-56ef-1234567890ab";
        let c = ctx(&[("b", "2"), ("a", "1")]);
        let blob = seal(id, &material, &c, b"secret").unwrap();
        assert_eq!(key_id(&blob).unwrap(), id);
        assert_eq!(open(&blob, &material, &c).unwrap().as_slice(), b"secret");
        assert_eq!(open(&blob, &material, &ctx(&[("a", "1")])), Err(BlobError::Authentication));
        assert_eq!(open(&blob, &material, &ctx(&[])), Err(BlobError::Authentication));
        assert_eq!(open(&blob, &[8u8; 32], &c), Err(BlobError::Authentication));
        let mut tampered = blob.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(open(&tampered, &material, &c), Err(BlobError::Authentication));
    }

    #[test]
    fn hostile_blobs_are_refused_without_panic() {
        let material = [7u8; 32];
        for blob in [&b""[..], &[1], &[1, 200], &[2, 0], &[1, 0, 1, 2, 3], &[1, 1, 0xff]] {
            assert_eq!(open(blob, &material, &BTreeMap::new()), Err(BlobError::Malformed), "{blob:?}");
        }
    }
}

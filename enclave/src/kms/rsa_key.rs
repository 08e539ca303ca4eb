//! The enclave's ephemeral RSA-2048 key pair: the `Recipient` key for KMS `Decrypt`.
//!
//! KMS encrypts the plaintext it returns (`CiphertextForRecipient`) to the RSA public key found in the
//! `public_key` field of the attestation document the enclave presents. The private half is generated at
//! boot from the kernel RNG (on Nitro, fed by the NSM: DESIGN.md invariant 4), lives only in the enclave's
//! memory, is never serialized, logged or sent anywhere, and is zeroized when dropped (the `rsa` crate
//! zeroizes its private components on drop).
//!
//! `rsa` 0.10 (pure Rust, constant-time `crypto-bigint` arithmetic) rather than 0.9, which carries the
//! Marvin timing advisory RUSTSEC-2023-0071.
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::rand_core::{TryCryptoRng, TryRng};
use rsa::{Oaep, PrivateKey as RsaPrivateKey};
use zeroize::Zeroizing;

/// Modulus size of the recipient key. KMS accepts 2048-bit and larger; 2048 keeps boot fast.
pub const RECIPIENT_KEY_BITS: usize = 2048;

/// The enclave's RSA key pair for KMS `Recipient`.
pub struct RecipientKey {
    private: RsaPrivateKey,
    /// SubjectPublicKeyInfo, DER: what goes into the attestation document's `public_key` (294 bytes for
    /// RSA-2048, well under the NSM's 1024-byte limit).
    spki_der: Vec<u8>,
}

impl std::fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key: only which public key this is.
        f.debug_struct("RecipientKey").field("spki_der_len", &self.spki_der.len()).finish_non_exhaustive()
    }
}

/// Why the recipient key could not be made or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RsaKeyError {
    /// Key generation failed (the RNG failed, or the `rsa` crate refused).
    #[error("could not generate the enclave's RSA recipient key")]
    Generate,
    /// The public key could not be encoded as SubjectPublicKeyInfo.
    #[error("could not encode the RSA public key")]
    Encode,
    /// A PKCS#8 key given for tests did not parse.
    #[error("not an RSA PKCS#8 private key")]
    Pkcs8,
}

impl RecipientKey {
    /// Generates a fresh RSA-2048 key pair from the kernel RNG.
    ///
    /// This takes a noticeable fraction of a second in release builds (prime search); call it once at boot,
    /// on a blocking thread.
    pub fn generate() -> Result<Self, RsaKeyError> {
        let mut rng = KernelRng(ring::rand::SystemRandom::new());
        let private = RsaPrivateKey::new(&mut rng, RECIPIENT_KEY_BITS).map_err(|_| RsaKeyError::Generate)?;
        Self::from_private(private)
    }

    /// Loads a key from PKCS#8 DER. For test vectors only: a production enclave generates its key, because
    /// a key that existed outside the enclave is not the enclave's secret.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, RsaKeyError> {
        let private = RsaPrivateKey::from_pkcs8_der(der).map_err(|_| RsaKeyError::Pkcs8)?;
        Self::from_private(private)
    }

    fn from_private(private: RsaPrivateKey) -> Result<Self, RsaKeyError> {
        let spki_der =
            private.to_public_key().to_public_key_der().map_err(|_| RsaKeyError::Encode)?.as_bytes().to_vec();
        Ok(Self { private, spki_der })
    }

    /// The public key as SubjectPublicKeyInfo DER, for the attestation document's `public_key`.
    pub fn public_key_spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// RSAES-OAEP with SHA-256 (and MGF1-SHA-256, empty label) decryption, blinded with the kernel RNG.
    ///
    /// Errors carry nothing: whether the padding or the length was wrong is not reported anywhere (no
    /// oracle), callers get `None`.
    pub(crate) fn oaep_sha256_decrypt(&self, ciphertext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let mut rng = KernelRng(ring::rand::SystemRandom::new());
        self.private.decrypt_blinded(&mut rng, Oaep::<rsa::sha2::Sha256>::new(), ciphertext).ok().map(Zeroizing::new)
    }
}

/// The kernel RNG (getrandom, through `ring`), as the `rand_core` RNG the `rsa` crate wants. The same
/// source the rest of the enclave uses (docs/SECURITY.md, invariant 4): never anything from the parent.
struct KernelRng(ring::rand::SystemRandom);

/// The kernel RNG failed (it does not, once the kernel is seeded; but it is not assumed away).
#[derive(Debug, thiserror::Error)]
#[error("the kernel random number generator failed")]
struct RngFailed;

impl TryRng for KernelRng {
    type Error = RngFailed;

    fn try_next_u32(&mut self) -> Result<u32, RngFailed> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, RngFailed> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), RngFailed> {
        ring::rand::SecureRandom::fill(&self.0, dst).map_err(|_| RngFailed)
    }
}

impl TryCryptoRng for KernelRng {}

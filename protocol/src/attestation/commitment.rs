//! The `user_data` commitment: what the enclave binds into each attestation document.
//!
//! A CBOR map with text keys, in this order, definite lengths, shortest-form integers (the encoding
//! is canonical, and decoding refuses any other encoding of the same value, so a commitment has exactly
//! one byte form):
//!
//! ```text
//! {
//!   "v": 3,                                  ; format version
//!   "ohttp_keys_sha384": bstr .size 48 / null,
//!                                            ; SHA-384 of the exact application/ohttp-keys bytes the
//!                                            ; enclave serves (attested-key mode, RFC 9458)
//!   "receipt_key": bstr .size 32 / null,     ; the Ed25519 public key (RFC 8032) the enclave signs
//!                                            ; receipts and tree heads with (null: receipts off)
//!   "recipient_rsa_spki_sha384": bstr .size 48 / null,
//!                                            ; SHA-384 of the DER SubjectPublicKeyInfo of the
//!                                            ; enclave's RSA key for KMS Recipient
//!   "models": [* {"name": tstr, "sha384": bstr .size 48}],
//!                                            ; 0..=6 models, sorted by name, names unique,
//!                                            ; 1..=60 bytes of [A-Za-z0-9._-]
//!   "config_sha384": bstr .size 48           ; SHA-384 of the runtime configuration (see docs)
//! }
//! ```
//!
//! The whole encoding fits in the NSM's 1024-byte `user_data`. See `docs/ATTESTATION.md`.

use super::document::MAX_OPTIONAL_FIELD_LEN;
use crate::cbor::{CborError, Len, Reader, write_bytes, write_head, write_null, write_text};

/// The only version this code writes and reads.
pub const COMMITMENT_VERSION: u64 = 3;
/// Most models in one commitment.
pub const MAX_MODELS: usize = 6;
/// Longest model name, in bytes.
/// (60: six models of 60-byte names, the receipt key and the digests fill the NSM's 1024 bytes.)
pub const MAX_MODEL_NAME_LEN: usize = 60;

/// One loaded model: its name and the SHA-384 of its decrypted bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDigest {
    pub name: String,
    pub sha384: [u8; 48],
}

/// The decoded `user_data` commitment (format version 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDataCommitment {
    /// SHA-384 of the enclave's OHTTP key configuration list (`application/ohttp-keys`, exactly as served
    /// at `/.well-known/ohttp-gateway`), if it serves attested-key mode.
    pub ohttp_keys_sha384: Option<[u8; 48]>,
    /// The Ed25519 public key that signs this boot's receipts and tree heads, if receipts are on.
    pub receipt_key: Option<[u8; 32]>,
    /// SHA-384 of the DER SubjectPublicKeyInfo of the enclave's RSA recipient key, if it has one.
    pub recipient_rsa_spki_sha384: Option<[u8; 48]>,
    /// Loaded models, sorted by name.
    pub models: Vec<ModelDigest>,
    /// SHA-384 of the enclave's runtime configuration.
    pub config_sha384: [u8; 48],
}

/// Why a commitment could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommitmentError {
    #[error("malformed commitment CBOR at byte {offset}: {reason}")]
    Cbor { offset: usize, reason: &'static str },
    #[error("unsupported commitment version {0} (this build reads version 3)")]
    Version(u64),
    #[error("commitment field {field:?}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("commitment is not in canonical form (fields out of order, or non-shortest encoding)")]
    NotCanonical,
    #[error("commitment encodes to {0} bytes, more than the 1024 that user_data holds")]
    TooLarge(usize),
}

fn cbor(e: CborError) -> CommitmentError {
    CommitmentError::Cbor { offset: e.offset, reason: e.reason }
}

fn field(field: &'static str, reason: impl Into<String>) -> CommitmentError {
    CommitmentError::Field { field, reason: reason.into() }
}

impl UserDataCommitment {
    /// SHA-384 of a DER SubjectPublicKeyInfo, for [`UserDataCommitment::recipient_rsa_spki_sha384`].
    pub fn sha384(data: &[u8]) -> [u8; 48] {
        crate::evidence::sha384(data)
    }

    /// Encodes in the canonical form. Sorts `models` by name; refuses invalid names, duplicates, too many
    /// models, and anything that would not fit in 1024 bytes.
    pub fn encode(&self) -> Result<Vec<u8>, CommitmentError> {
        let mut models: Vec<&ModelDigest> = self.models.iter().collect();
        models.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        check_models(&models)?;
        let mut out = Vec::with_capacity(256);
        write_head(&mut out, 5, 6);
        write_text(&mut out, "v");
        write_head(&mut out, 0, COMMITMENT_VERSION);
        write_text(&mut out, "ohttp_keys_sha384");
        match &self.ohttp_keys_sha384 {
            Some(k) => write_bytes(&mut out, k),
            None => write_null(&mut out),
        }
        write_text(&mut out, "receipt_key");
        match &self.receipt_key {
            Some(k) => write_bytes(&mut out, k),
            None => write_null(&mut out),
        }
        write_text(&mut out, "recipient_rsa_spki_sha384");
        match &self.recipient_rsa_spki_sha384 {
            Some(d) => write_bytes(&mut out, d),
            None => write_null(&mut out),
        }
        write_text(&mut out, "models");
        write_head(&mut out, 4, models.len() as u64);
        for m in &models {
            write_head(&mut out, 5, 2);
            write_text(&mut out, "name");
            write_text(&mut out, &m.name);
            write_text(&mut out, "sha384");
            write_bytes(&mut out, &m.sha384);
        }
        write_text(&mut out, "config_sha384");
        write_bytes(&mut out, &self.config_sha384);
        if out.len() > MAX_OPTIONAL_FIELD_LEN {
            return Err(CommitmentError::TooLarge(out.len()));
        }
        Ok(out)
    }

    /// Decodes strictly: version 3 only, exactly the six keys in order, exact sizes, and only the
    /// canonical encoding (re-encoding must give back the same bytes).
    pub fn decode(bytes: &[u8]) -> Result<Self, CommitmentError> {
        if bytes.len() > MAX_OPTIONAL_FIELD_LEN {
            return Err(CommitmentError::TooLarge(bytes.len()));
        }
        let mut r = Reader::new(bytes);
        if r.map().map_err(cbor)? != Len::Definite(6) {
            return Err(field("commitment", "must be a map of exactly 6 entries"));
        }
        key(&mut r, "v")?;
        let v = r.uint().map_err(cbor)?;
        if v != COMMITMENT_VERSION {
            return Err(CommitmentError::Version(v));
        }
        key(&mut r, "ohttp_keys_sha384")?;
        let ohttp_keys_sha384 = optional_fixed::<48>(&mut r, "ohttp_keys_sha384")?;
        key(&mut r, "receipt_key")?;
        let receipt_key = optional_fixed::<32>(&mut r, "receipt_key")?;
        key(&mut r, "recipient_rsa_spki_sha384")?;
        let recipient_rsa_spki_sha384 = optional_fixed::<48>(&mut r, "recipient_rsa_spki_sha384")?;
        key(&mut r, "models")?;
        let Len::Definite(n) = r.array().map_err(cbor)? else {
            return Err(field("models", "must be a definite-length array"));
        };
        if n > MAX_MODELS as u64 {
            return Err(field("models", format!("{n} models, at most {MAX_MODELS}")));
        }
        let mut models = Vec::new();
        for _ in 0..n {
            if r.map().map_err(cbor)? != Len::Definite(2) {
                return Err(field("models", "each model must be a map {name, sha384}"));
            }
            key(&mut r, "name")?;
            let name = r.text().map_err(cbor)?.to_owned();
            key(&mut r, "sha384")?;
            let sha384 = fixed::<48>(&mut r, "models.sha384")?;
            models.push(ModelDigest { name, sha384 });
        }
        key(&mut r, "config_sha384")?;
        let config_sha384 = fixed::<48>(&mut r, "config_sha384")?;
        if !r.is_empty() {
            return Err(field("commitment", "trailing bytes after the map"));
        }
        let refs: Vec<&ModelDigest> = models.iter().collect();
        check_models(&refs)?;
        for pair in refs.windows(2) {
            if let [a, b] = pair
                && a.name.as_bytes() >= b.name.as_bytes()
            {
                return Err(field("models", "not sorted by name"));
            }
        }
        let c = UserDataCommitment { ohttp_keys_sha384, receipt_key, recipient_rsa_spki_sha384, models, config_sha384 };
        if c.encode()? != bytes {
            return Err(CommitmentError::NotCanonical);
        }
        Ok(c)
    }

    /// A JSON view with hex strings, for `veil attest show --json` and reports.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "v": COMMITMENT_VERSION,
            "ohttp_keys_sha384": self.ohttp_keys_sha384.map(hex::encode),
            "receipt_key": self.receipt_key.map(hex::encode),
            "recipient_rsa_spki_sha384": self.recipient_rsa_spki_sha384.map(hex::encode),
            "models": self.models.iter().map(|m| serde_json::json!({"name": m.name, "sha384": hex::encode(m.sha384)})).collect::<Vec<_>>(),
            "config_sha384": hex::encode(self.config_sha384),
        })
    }
}

fn check_models(models: &[&ModelDigest]) -> Result<(), CommitmentError> {
    if models.len() > MAX_MODELS {
        return Err(field("models", format!("{} models, at most {MAX_MODELS}", models.len())));
    }
    for m in models {
        let ok_len = (1..=MAX_MODEL_NAME_LEN).contains(&m.name.len());
        let ok_chars = m.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok_len || !ok_chars {
            return Err(field(
                "models.name",
                format!(
                    "{:?} must be 1..={MAX_MODEL_NAME_LEN} bytes of [A-Za-z0-9._-]",
                    super::document::printable(&m.name, 70)
                ),
            ));
        }
    }
    for pair in models.windows(2) {
        if let [a, b] = pair
            && a.name == b.name
        {
            return Err(field("models", format!("model {:?} appears twice", a.name)));
        }
    }
    Ok(())
}

fn key(r: &mut Reader<'_>, expected: &'static str) -> Result<(), CommitmentError> {
    let k = r.text().map_err(cbor)?;
    if k != expected {
        return Err(field(
            expected,
            format!("expected key {expected:?} here, found {:?}", super::document::printable(k, 40)),
        ));
    }
    Ok(())
}

fn fixed<const N: usize>(r: &mut Reader<'_>, name: &'static str) -> Result<[u8; N], CommitmentError> {
    let b = r.bytes().map_err(cbor)?;
    b.try_into().map_err(|_| field(name, format!("is {} bytes, must be {N}", b.len())))
}

fn optional_fixed<const N: usize>(r: &mut Reader<'_>, name: &'static str) -> Result<Option<[u8; N]>, CommitmentError> {
    if r.next_is_null() {
        r.null().map_err(cbor)?;
        return Ok(None);
    }
    fixed::<N>(r, name).map(Some)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> UserDataCommitment {
        UserDataCommitment {
            ohttp_keys_sha384: Some([7; 48]),
            receipt_key: Some([6; 32]),
            recipient_rsa_spki_sha384: Some([9; 48]),
            models: vec![
                ModelDigest { name: "minilm".into(), sha384: [2; 48] },
                ModelDigest { name: "iris".into(), sha384: [1; 48] },
            ],
            config_sha384: [3; 48],
        }
    }

    #[test]
    fn round_trips_and_sorts_models() {
        let bytes = sample().encode().unwrap();
        let back = UserDataCommitment::decode(&bytes).unwrap();
        assert_eq!(back.models[0].name, "iris");
        assert_eq!(back.ohttp_keys_sha384, Some([7; 48]));
        assert_eq!(back.encode().unwrap(), bytes);
    }

    #[test]
    fn largest_commitment_fits_in_user_data() {
        let mut c = sample();
        c.models = (0..MAX_MODELS)
            .map(|i| ModelDigest { name: format!("{i}{}", "m".repeat(MAX_MODEL_NAME_LEN - 1)), sha384: [0; 48] })
            .collect();
        assert!(c.encode().unwrap().len() <= 1024);
        c.models.push(ModelDigest { name: "x".into(), sha384: [0; 48] });
        assert!(matches!(c.encode(), Err(CommitmentError::Field { field: "models", .. })));
    }

    #[test]
    fn refuses_other_versions_noncanonical_and_bad_names() {
        let mut bytes = sample().encode().unwrap();
        // "v": 3 sits at bytes 1..=3: a1 'v' 03 -> versions 1 and 2 (retired formats) and 4.
        assert_eq!(&bytes[1..4], &[0x61, b'v', 0x03]);
        for other in [1u8, 2, 4] {
            bytes[3] = other;
            assert_eq!(UserDataCommitment::decode(&bytes), Err(CommitmentError::Version(u64::from(other))));
        }
        // Non-shortest encoding of 3 (0x18 0x03).
        let mut long = vec![0xa6, 0x61, b'v', 0x18, 0x03];
        long.extend_from_slice(&sample().encode().unwrap()[4..]);
        assert_eq!(UserDataCommitment::decode(&long), Err(CommitmentError::NotCanonical));
        let mut bad = sample();
        bad.models[0].name = "../etc".into();
        assert!(matches!(bad.encode(), Err(CommitmentError::Field { field: "models.name", .. })));
        let mut dup = sample();
        dup.models[1].name = "minilm".into();
        assert!(matches!(dup.encode(), Err(CommitmentError::Field { field: "models", .. })));
    }

    #[test]
    fn refuses_wrong_sizes_and_trailing_bytes() {
        let mut bytes = sample().encode().unwrap();
        bytes.push(0);
        assert!(matches!(UserDataCommitment::decode(&bytes), Err(CommitmentError::Field { field: "commitment", .. })));
        let c = UserDataCommitment {
            ohttp_keys_sha384: None,
            receipt_key: None,
            recipient_rsa_spki_sha384: None,
            models: vec![],
            config_sha384: [0; 48],
        };
        let mut enc = c.encode().unwrap();
        let last = enc.len() - 49;
        enc[last] = 0x58; // bstr with 1-byte length follows: breaks the size
        assert!(UserDataCommitment::decode(&enc).is_err());
    }
}

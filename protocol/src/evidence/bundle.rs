//! The evidence bundle: what a client keeps for each answer, and hands an auditor with (or without) the
//! plaintexts. JSON, so that it reads in any language and survives the archives of years:
//!
//! ```json
//! {"format": "veil-evidence/1",
//!  "receipt": "<base64: the receipt, a COSE_Sign1>",
//!  "salt": "<hex: the 32-byte key of the receipt's request and response digests>",
//!  "attestation_document": "<base64: the Nitro attestation document that certifies the receipt key>",
//!  "inclusion": {"tree_head": "<base64: a signed tree head>", "tree_size": 1000, "leaf_index": 17,
//!                "path": ["<hex: 32 bytes>", ...]}}
//! ```
//!
//! `inclusion` is optional: the proof, from the parent's `GET /v1/audit/proof`, that the receipt is in the
//! audit log under a tree head the enclave signed. The salt is the client's to share: with it, a receipt
//! in the log can be tied to the client's plaintexts; without it, nobody can test a guess of them.
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{EvidenceError, Hash, SALT_LEN};

/// The `format` of this version.
pub const BUNDLE_FORMAT: &str = "veil-evidence/1";
/// Largest bundle read.
pub const MAX_BUNDLE_LEN: usize = 256 * 1024;
/// Most hashes in an inclusion path (a tree of 2^64 leaves needs 64).
pub const MAX_PATH_LEN: usize = 64;

/// An inclusion proof of the bundle's receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inclusion {
    pub tree_head: Vec<u8>,
    pub tree_size: u64,
    pub leaf_index: u64,
    pub path: Vec<Hash>,
}

/// A decoded bundle. The salt is wiped when the bundle drops, and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    pub receipt: Vec<u8>,
    pub salt: Zeroizing<[u8; SALT_LEN]>,
    pub attestation_document: Vec<u8>,
    pub inclusion: Option<Inclusion>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("receipt_len", &self.receipt.len())
            .field("attestation_document_len", &self.attestation_document.len())
            .field("inclusion", &self.inclusion.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleJson {
    format: String,
    receipt: String,
    salt: String,
    attestation_document: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inclusion: Option<InclusionJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InclusionJson {
    tree_head: String,
    tree_size: u64,
    leaf_index: u64,
    path: Vec<String>,
}

fn bad(reason: impl Into<String>) -> EvidenceError {
    EvidenceError::malformed("evidence bundle", reason)
}

fn b64(field: &str, text: &str) -> Result<Vec<u8>, EvidenceError> {
    STANDARD.decode(text.trim()).map_err(|e| bad(format!("{field} is not base64: {e}")))
}

fn hex32(field: &str, text: &str) -> Result<[u8; 32], EvidenceError> {
    hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| bad(format!("{field} is not 32 bytes of hex")))
}

impl Bundle {
    /// The JSON form (pretty-printed, a newline at the end).
    pub fn to_json(&self) -> String {
        let json = BundleJson {
            format: BUNDLE_FORMAT.into(),
            receipt: STANDARD.encode(&self.receipt),
            salt: hex::encode(self.salt.as_ref()),
            attestation_document: STANDARD.encode(&self.attestation_document),
            inclusion: self.inclusion.as_ref().map(|i| InclusionJson {
                tree_head: STANDARD.encode(&i.tree_head),
                tree_size: i.tree_size,
                leaf_index: i.leaf_index,
                path: i.path.iter().map(hex::encode).collect(),
            }),
        };
        let mut s = serde_json::to_string_pretty(&json).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Reads a bundle (at most [`MAX_BUNDLE_LEN`] bytes of JSON). Only the form is checked here; what it
    /// proves is [`super::verify::verify_receipt`]'s to say.
    pub fn from_json(bytes: &[u8]) -> Result<Bundle, EvidenceError> {
        if bytes.len() > MAX_BUNDLE_LEN {
            return Err(bad(format!("{} bytes, more than the {MAX_BUNDLE_LEN} accepted", bytes.len())));
        }
        let json: BundleJson = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if json.format != BUNDLE_FORMAT {
            return Err(bad(format!(
                "format is {:?}; this build reads {BUNDLE_FORMAT:?}",
                json.format.chars().take(40).collect::<String>()
            )));
        }
        let inclusion = match json.inclusion {
            None => None,
            Some(i) => {
                if i.path.len() > MAX_PATH_LEN {
                    return Err(bad(format!("inclusion.path has {} hashes, at most {MAX_PATH_LEN}", i.path.len())));
                }
                let path = i.path.iter().map(|h| hex32("inclusion.path", h)).collect::<Result<_, _>>()?;
                Some(Inclusion {
                    tree_head: b64("inclusion.tree_head", &i.tree_head)?,
                    tree_size: i.tree_size,
                    leaf_index: i.leaf_index,
                    path,
                })
            }
        };
        Ok(Bundle {
            receipt: b64("receipt", &json.receipt)?,
            salt: Zeroizing::new(hex32("salt", &json.salt)?),
            attestation_document: b64("attestation_document", &json.attestation_document)?,
            inclusion,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_fields_and_formats() {
        let b = Bundle {
            receipt: vec![1, 2, 3],
            salt: Zeroizing::new([7; 32]),
            attestation_document: vec![9; 40],
            inclusion: Some(Inclusion { tree_head: vec![4], tree_size: 3, leaf_index: 1, path: vec![[5; 32]] }),
        };
        let json = b.to_json();
        assert_eq!(Bundle::from_json(json.as_bytes()).unwrap(), b);
        let extra = json.replacen("{", "{\"plaintext\": \"x\",", 1);
        assert!(Bundle::from_json(extra.as_bytes()).unwrap_err().to_string().contains("plaintext"));
        let other = json.replace(BUNDLE_FORMAT, "veil-evidence/2");
        assert!(Bundle::from_json(other.as_bytes()).unwrap_err().to_string().contains("format"));
        let short_salt = json.replace(&hex::encode([7u8; 32]), "0707");
        assert!(Bundle::from_json(short_salt.as_bytes()).unwrap_err().to_string().contains("salt"));
    }
}

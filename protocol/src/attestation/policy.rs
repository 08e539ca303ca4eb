//! What a document must satisfy: the trusted root ([`TrustAnchor`]) and the expectations ([`Policy`]).
//!
//! Everything here is checked when it is set (PCR indexes and lengths, nonce and digest sizes, the root's
//! own profile), so that a policy that exists is one the checks in `checks.rs` can apply as they stand.

use std::collections::BTreeMap;
use std::time::Duration;

use super::chain;
use super::document::{MAX_OPTIONAL_FIELD_LEN, PCR_LEN};
use super::error::PolicyError;

/// The AWS Nitro Enclaves Root-G1 certificate (DER), as published by AWS in
/// `AWS_NitroEnclaves_Root-G1.zip`.
const AWS_ROOT_G1_DER: &[u8] = include_bytes!("aws_root_g1.der");

/// SHA-256 of the embedded AWS root certificate, pinned independently of its bytes: a document is accepted
/// under the default root only if `cabundle[0]` hashes to this value *and* equals the embedded certificate.
pub const AWS_ROOT_G1_SHA256: [u8; 32] = [
    0x64, 0x1a, 0x03, 0x21, 0xa3, 0xe2, 0x44, 0xef, 0xe4, 0x56, 0x46, 0x31, 0x95, 0xd6, 0x06, 0x31, 0x7e, 0xd7, 0xcd,
    0xcc, 0x3c, 0x17, 0x56, 0xe0, 0x98, 0x93, 0xf3, 0xc6, 0x8f, 0x79, 0xbb, 0x5b,
];

/// A root certificate that documents must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustAnchor {
    der: Vec<u8>,
    sha256: [u8; 32],
    name: String,
    aws: bool,
}

impl TrustAnchor {
    /// The AWS Nitro Enclaves Root-G1 (embedded, pinned by SHA-256). The default of every [`Policy`].
    pub fn aws_nitro_root_g1() -> Self {
        TrustAnchor {
            der: AWS_ROOT_G1_DER.to_vec(),
            // The pinned value, not a hash of the embedded bytes: if they ever disagreed, nothing would verify.
            sha256: AWS_ROOT_G1_SHA256,
            name: "AWS Nitro Enclaves Root-G1".into(),
            aws: true,
        }
    }

    /// Another root (a mock root, for off-hardware runs): a self-signed ECDSA P-384 CA certificate, DER.
    pub fn from_der(der: &[u8]) -> Result<Self, PolicyError> {
        let cert = chain::parse(der).map_err(|e| PolicyError::Root(e.to_string()))?;
        chain::check_profile(&cert, Some(0)).map_err(|e| PolicyError::Root(e.to_string()))?;
        chain::check_link(&cert, &cert, Some(0), None)
            .map_err(|e| PolicyError::Root(format!("not validly self-signed: {e}")))?;
        let sha256: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, der)
            .as_ref()
            .try_into()
            .map_err(|_| PolicyError::Root("hash length".into()))?;
        let aws = sha256 == AWS_ROOT_G1_SHA256;
        let name = if aws { "AWS Nitro Enclaves Root-G1".to_owned() } else { cert.subject().to_string() };
        Ok(TrustAnchor { der: der.to_vec(), sha256, name, aws })
    }

    /// Same as [`TrustAnchor::from_der`], from a PEM `CERTIFICATE` block.
    pub fn from_pem(pem: &[u8]) -> Result<Self, PolicyError> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem)
            .map_err(|e| PolicyError::Root(format!("not a PEM certificate: {e}")))?;
        if block.label != "CERTIFICATE" {
            return Err(PolicyError::Root(format!("PEM block is {:?}, not CERTIFICATE", block.label)));
        }
        Self::from_der(&block.contents)
    }

    /// SHA-256 of the root certificate's DER.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// Subject (or well-known name) of the root.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True for the AWS Nitro Enclaves Root-G1.
    pub fn is_aws_root_g1(&self) -> bool {
        self.aws
    }

    /// The root certificate, DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }
}

/// What a document must satisfy. Build with [`Policy::new`] and the `with_`/`expect_` methods.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(super) root: TrustAnchor,
    pub(super) at_ms: u64,
    /// Index (0..=31) to value (48 bytes).
    pub(super) expected_pcrs: BTreeMap<u8, Vec<u8>>,
    pub(super) nonce: Option<Vec<u8>>,
    pub(super) max_age_ms: Option<u64>,
    pub(super) max_future_skew_ms: u64,
    pub(super) allow_debug: bool,
    pub(super) expected_models: BTreeMap<String, [u8; 48]>,
    pub(super) expected_config: Option<[u8; 48]>,
    pub(super) expected_ohttp_keys: Option<[u8; 48]>,
}

impl Policy {
    /// Verification at `at_unix_ms` (milliseconds since the Unix epoch) against the AWS root, with no
    /// expected PCRs, no nonce, no age limit, and debug-mode documents refused.
    ///
    /// The time is the caller's: this module never reads a clock (the CLI passes the wall clock unless
    /// told otherwise; tests pass a document's own timestamp).
    pub fn new(at_unix_ms: u64) -> Self {
        Policy {
            root: TrustAnchor::aws_nitro_root_g1(),
            at_ms: at_unix_ms,
            expected_pcrs: BTreeMap::new(),
            nonce: None,
            max_age_ms: None,
            max_future_skew_ms: 60_000,
            allow_debug: false,
            expected_models: BTreeMap::new(),
            expected_config: None,
            expected_ohttp_keys: None,
        }
    }

    /// Trusts `root` instead of the AWS root (for documents of a mock NSM).
    pub fn with_root(mut self, root: TrustAnchor) -> Self {
        self.root = root;
        self
    }

    /// Requires PCR `index` to equal `value` (48 bytes).
    pub fn expect_pcr(mut self, index: u16, value: &[u8]) -> Result<Self, PolicyError> {
        let i = u8::try_from(index)
            .ok()
            .filter(|i| *i < 32)
            .ok_or_else(|| PolicyError::Pcr { index, reason: "index must be 0..=31".into() })?;
        if value.len() != PCR_LEN {
            return Err(PolicyError::Pcr {
                index,
                reason: format!("value is {} bytes, not 48 (SHA-384)", value.len()),
            });
        }
        self.expected_pcrs.insert(i, value.to_vec());
        Ok(self)
    }

    /// Requires the document's nonce to equal `nonce`.
    pub fn expect_nonce(mut self, nonce: &[u8]) -> Result<Self, PolicyError> {
        if nonce.len() > MAX_OPTIONAL_FIELD_LEN {
            return Err(PolicyError::Nonce(nonce.len()));
        }
        self.nonce = Some(nonce.to_vec());
        Ok(self)
    }

    /// Refuses documents older than `max_age` at the verification time.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age_ms = Some(u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// How far in the future a document's timestamp may be (clock skew), when a maximum age is set.
    /// Default: 60 s.
    pub fn with_max_future_skew(mut self, skew: Duration) -> Self {
        self.max_future_skew_ms = u64::try_from(skew.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Requires `user_data` to be a Veil commitment ([`super::UserDataCommitment`]) naming model `name`
    /// with SHA-384 `sha384`. Repeatable, one per model.
    pub fn expect_model(mut self, name: &str, sha384: &[u8]) -> Result<Self, PolicyError> {
        let digest: [u8; 48] = sha384
            .try_into()
            .map_err(|_| PolicyError::Model(format!("{name:?}: digest is {} bytes, not 48 (SHA-384)", sha384.len())))?;
        if name.is_empty() || name.len() > super::MAX_MODEL_NAME_LEN {
            return Err(PolicyError::Model(format!("{name:?}: a model name is 1 to 64 bytes")));
        }
        self.expected_models.insert(name.to_owned(), digest);
        Ok(self)
    }

    /// Requires `user_data` to be a Veil commitment whose runtime configuration digest is `sha384`.
    pub fn expect_config_sha384(mut self, sha384: &[u8]) -> Result<Self, PolicyError> {
        let digest: [u8; 48] = sha384
            .try_into()
            .map_err(|_| PolicyError::Model(format!("config digest is {} bytes, not 48 (SHA-384)", sha384.len())))?;
        self.expected_config = Some(digest);
        Ok(self)
    }

    /// Requires `user_data` to be a Veil commitment to exactly this OHTTP key configuration list (the
    /// `application/ohttp-keys` bytes a client was served, hashed here with SHA-384).
    pub fn expect_ohttp_keys(mut self, key_list: &[u8]) -> Self {
        self.expected_ohttp_keys = Some(super::UserDataCommitment::sha384(key_list));
        self
    }

    /// Accepts documents of enclaves run in debug mode (PCR0/1/2 zero). Their memory is readable by the
    /// parent, so nothing confidential should go to them: for development only.
    pub fn allow_debug(mut self, allow: bool) -> Self {
        self.allow_debug = allow;
        self
    }

    /// The trusted root.
    pub fn root(&self) -> &TrustAnchor {
        &self.root
    }

    /// The verification time (ms since the Unix epoch).
    pub fn at_ms(&self) -> u64 {
        self.at_ms
    }
}

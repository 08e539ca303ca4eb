//! The verifier: from bytes (or an [`UnverifiedDocument`]) and a [`Policy`] to a [`VerifiedDocument`], with
//! a [`Report`] naming every check either way.
//!
//! Fail-closed: a [`VerifiedDocument`] exists only if every check passed; its fields are private and
//! the only constructor is in this file, after the last check. When a check fails, the remaining checks
//! still run where their inputs exist, so that a report says, for example, both "expired" and "PCR0
//! differs"; but the error returned is the first failure, in the order the checks are listed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::chain::{self, CertificateSummary};
use super::document::{Claims, MAX_OPTIONAL_FIELD_LEN, PCR_LEN, UnverifiedDocument};
use super::error::{PolicyError, VerifyError};
use crate::time::{format_unix_millis, format_unix_seconds};

/// The AWS Nitro Enclaves Root-G1 certificate (DER), as published by AWS in
/// `AWS_NitroEnclaves_Root-G1.zip`.
const AWS_ROOT_G1_DER: &[u8] = include_bytes!("aws_root_g1.der");

/// SHA-256 of [`AWS_ROOT_G1_DER`], pinned independently of the embedded bytes: a document is accepted
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
    root: TrustAnchor,
    at_ms: u64,
    expected_pcrs: BTreeMap<u8, Vec<u8>>,
    nonce: Option<Vec<u8>>,
    max_age_ms: Option<u64>,
    max_future_skew_ms: u64,
    allow_debug: bool,
    expected_models: BTreeMap<String, [u8; 48]>,
    expected_config: Option<[u8; 48]>,
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

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Passed,
    Failed,
    /// Not run: not asked for (no expected nonce), or its input could not be decoded.
    Skipped,
}

/// One named check and what it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable name: `decode`, `root`, `chain`, `validity`, `signature`, `debug_mode`, `pcrN`, `nonce`,
    /// `freshness`, `commitment`.
    pub name: String,
    pub status: CheckStatus,
    /// What was checked and found, for people.
    pub detail: String,
}

/// Every check of one verification, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// True only if no check failed.
    pub verified: bool,
    /// Verification time, ms since the Unix epoch, and as text.
    pub at_ms: u64,
    pub at: String,
    /// The trusted root: name and SHA-256.
    pub root: String,
    pub root_sha256: String,
    pub checks: Vec<Check>,
    /// The first failure's message (`None` when verified).
    pub error: Option<String>,
}

impl Report {
    /// The first failed check.
    pub fn first_failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| c.status == CheckStatus::Failed)
    }

    /// The check called `name`.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// A document that passed every check of a [`Policy`]. Only [`verify`] and [`UnverifiedDocument::verify`]
/// make one.
#[derive(Debug, Clone)]
pub struct VerifiedDocument {
    claims: Claims,
    certificates: Vec<CertificateSummary>,
    report: Report,
}

impl VerifiedDocument {
    pub fn module_id(&self) -> &str {
        &self.claims.module_id
    }
    /// When the NSM made the document (ms since the Unix epoch).
    pub fn timestamp_ms(&self) -> u64 {
        self.claims.timestamp_ms
    }
    /// Every PCR in the document.
    pub fn pcrs(&self) -> &BTreeMap<u8, Vec<u8>> {
        &self.claims.pcrs
    }
    pub fn pcr(&self, index: u8) -> Option<&[u8]> {
        self.claims.pcrs.get(&index).map(Vec::as_slice)
    }
    pub fn public_key(&self) -> Option<&[u8]> {
        self.claims.public_key.as_deref()
    }
    pub fn user_data(&self) -> Option<&[u8]> {
        self.claims.user_data.as_deref()
    }
    pub fn nonce(&self) -> Option<&[u8]> {
        self.claims.nonce.as_deref()
    }
    /// True if PCR0, PCR1 and PCR2 are zero (accepted only because the policy allowed debug mode).
    pub fn is_debug(&self) -> bool {
        is_debug(&self.claims)
    }
    /// The chain, root first, leaf last.
    pub fn certificates(&self) -> &[CertificateSummary] {
        &self.certificates
    }
    /// All the verified payload fields.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }
    /// `user_data` decoded as a Veil commitment, if it is one.
    pub fn commitment(&self) -> Option<super::UserDataCommitment> {
        self.claims.user_data.as_deref().and_then(|u| super::UserDataCommitment::decode(u).ok())
    }
    pub fn report(&self) -> &Report {
        &self.report
    }
}

/// Verification failed: the first failure, and the full report.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}")]
pub struct Rejected {
    pub error: VerifyError,
    /// Boxed: a report is a few hundred bytes, and `Result<_, Rejected>` travels by value.
    pub report: Box<Report>,
}

/// Decodes and verifies `bytes` (a COSE_Sign1 attestation document) under `policy`.
#[allow(clippy::result_large_err)] // returned once per verification; boxing buys nothing here
pub fn verify(bytes: &[u8], policy: &Policy) -> Result<VerifiedDocument, Rejected> {
    verify_with(bytes, policy, None)
}

/// A verifier that remembers which certificate signatures it has already checked (see `LinkCache` in
/// `chain.rs`): for clients that verify many documents from the same enclaves. Outcomes are identical to
/// [`verify`]; only the repeated ECDSA work on the shared root → regional → zonal → instance chain is
/// saved. Share one between threads freely (`Sync`).
#[derive(Debug, Default)]
pub struct Verifier {
    cache: chain::LinkCache,
}

impl Verifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Same as [`verify`], with the signature memo.
    #[allow(clippy::result_large_err)]
    pub fn verify(&self, bytes: &[u8], policy: &Policy) -> Result<VerifiedDocument, Rejected> {
        verify_with(bytes, policy, Some(&self.cache))
    }
}

#[allow(clippy::result_large_err)]
fn verify_with(bytes: &[u8], policy: &Policy, cache: Option<&chain::LinkCache>) -> Result<VerifiedDocument, Rejected> {
    match UnverifiedDocument::parse(bytes) {
        Ok(doc) => doc.verify_inner(policy, cache),
        Err(e) => {
            let mut run = Run::new(policy);
            run.fail("decode", e.to_string(), VerifyError::Decode(e));
            for name in ["root", "chain", "validity", "signature", "debug_mode"] {
                run.skip(name, "the document could not be decoded");
            }
            for i in policy.expected_pcrs.keys() {
                run.skip(&format!("pcr{i}"), "the document could not be decoded");
            }
            run.skip("nonce", "the document could not be decoded");
            run.skip("freshness", "the document could not be decoded");
            run.skip("commitment", "the document could not be decoded");
            Err(run.into_rejected())
        }
    }
}

/// Collects checks; remembers the first error.
struct Run {
    report: Report,
    first: Option<VerifyError>,
}

impl Run {
    fn new(policy: &Policy) -> Self {
        Run {
            report: Report {
                verified: false,
                at_ms: policy.at_ms,
                at: format_unix_millis(policy.at_ms),
                root: policy.root.name.clone(),
                root_sha256: hex::encode(policy.root.sha256),
                checks: Vec::new(),
                error: None,
            },
            first: None,
        }
    }
    fn push(&mut self, name: &str, status: CheckStatus, detail: String) {
        self.report.checks.push(Check { name: name.to_owned(), status, detail });
    }
    fn pass(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, CheckStatus::Passed, detail.into());
    }
    fn skip(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, CheckStatus::Skipped, detail.into());
    }
    fn fail(&mut self, name: &str, detail: String, error: VerifyError) {
        self.push(name, CheckStatus::Failed, detail);
        if self.first.is_none() {
            self.first = Some(error);
        }
    }
    fn fail_with(&mut self, name: &str, error: VerifyError) {
        self.fail(name, error.to_string(), error);
    }
    fn into_rejected(mut self) -> Rejected {
        let error = self.first.unwrap_or(VerifyError::BadSignature);
        self.report.verified = false;
        self.report.error = Some(error.to_string());
        Rejected { error, report: Box::new(self.report) }
    }
}

fn check_commitment(user_data: Option<&[u8]>, policy: &Policy) -> Result<String, String> {
    let ud = user_data.ok_or("the document has no user_data")?;
    let c = super::UserDataCommitment::decode(ud).map_err(|e| format!("user_data is not a Veil commitment: {e}"))?;
    for (name, digest) in &policy.expected_models {
        match c.models.iter().find(|m| &m.name == name) {
            Some(m) if &m.sha384 == digest => {}
            Some(m) => {
                return Err(format!(
                    "model {name:?}: expected SHA-384 {}, got {}",
                    hex::encode(digest),
                    hex::encode(m.sha384)
                ));
            }
            None => {
                let loaded: Vec<&str> = c.models.iter().map(|m| m.name.as_str()).collect();
                return Err(format!("model {name:?} is not in the commitment (loaded: {loaded:?})"));
            }
        }
    }
    if let Some(expected) = &policy.expected_config
        && &c.config_sha384 != expected
    {
        return Err(format!(
            "configuration: expected SHA-384 {}, got {}",
            hex::encode(expected),
            hex::encode(c.config_sha384)
        ));
    }
    Ok(format!(
        "user_data commits to {} model(s){}",
        c.models.len(),
        if policy.expected_config.is_some() { " and the expected configuration" } else { "" }
    ))
}

fn is_debug(claims: &Claims) -> bool {
    // A missing PCR counts as zero: absence must not pass for a measured image.
    [0u8, 1, 2].iter().all(|i| claims.pcrs.get(i).is_none_or(|v| v.iter().all(|b| *b == 0)))
}

impl UnverifiedDocument {
    /// Verifies this decoded document under `policy`.
    #[allow(clippy::result_large_err)]
    pub fn verify(self, policy: &Policy) -> Result<VerifiedDocument, Rejected> {
        self.verify_inner(policy, None)
    }

    #[allow(clippy::result_large_err)]
    fn verify_inner(self, policy: &Policy, cache: Option<&chain::LinkCache>) -> Result<VerifiedDocument, Rejected> {
        let mut run = Run::new(policy);
        run.pass(
            "decode",
            format!(
                "COSE_Sign1 ({}), ES384, all nine payload fields well-formed",
                if self.tagged { "tagged" } else { "untagged" }
            ),
        );
        let claims = &self.claims;

        // root: cabundle[0] is the trust anchor, by fingerprint and by bytes.
        let ders: Vec<&[u8]> =
            claims.cabundle.iter().map(Vec::as_slice).chain(std::iter::once(claims.certificate.as_slice())).collect();
        let root_der = ders.first().copied().unwrap_or_default();
        let root_sha = ring::digest::digest(&ring::digest::SHA256, root_der);
        if root_sha.as_ref() == policy.root.sha256 && root_der == policy.root.der.as_slice() {
            run.pass(
                "root",
                format!("cabundle[0] is {} (SHA-256 {})", policy.root.name, hex::encode(policy.root.sha256)),
            );
        } else {
            run.fail_with(
                "root",
                VerifyError::UntrustedRoot {
                    found: hex::encode(root_sha),
                    expected: hex::encode(policy.root.sha256),
                    expected_name: policy.root.name.clone(),
                },
            );
        }

        // chain: parse every certificate, then each link from the root down.
        let count = ders.len();
        let parsed: Vec<_> = ders.iter().map(|der| chain::parse(der)).collect();
        let name_of = |i: usize| -> String {
            match parsed.get(i) {
                Some(Ok(c)) => c.subject().to_string(),
                _ => "unparsable".into(),
            }
        };
        let mut chain_ok = true;
        for (i, p) in parsed.iter().enumerate() {
            if let Err(e) = p {
                run.fail_with(
                    "chain",
                    VerifyError::Certificate {
                        position: i,
                        which: chain::role(i, count),
                        subject: "unparsable".into(),
                        reason: e.clone(),
                    },
                );
                chain_ok = false;
                break;
            }
        }
        let certs: Vec<_> = parsed.iter().filter_map(|p| p.as_ref().ok()).collect();
        if chain_ok {
            for i in 1..count {
                let (Some(parent), Some(child)) = (certs.get(i - 1), certs.get(i)) else {
                    break;
                };
                // CAs below certificate i, not counting the leaf.
                let cas_below = if i + 1 == count { None } else { Some(count - 2 - i) };
                if let Err(reason) = chain::check_link(parent, child, cas_below, cache) {
                    run.fail_with(
                        "chain",
                        VerifyError::Certificate {
                            position: i,
                            which: chain::role(i, count),
                            subject: name_of(i),
                            reason,
                        },
                    );
                    chain_ok = false;
                    break;
                }
            }
            if chain_ok {
                // The root's own profile (it is trusted by pinning, but must still be a CA).
                if let Some(Err(reason)) =
                    certs.first().map(|root| chain::check_profile(root, Some(count.saturating_sub(2))))
                {
                    run.fail_with(
                        "chain",
                        VerifyError::Certificate { position: 0, which: "root".into(), subject: name_of(0), reason },
                    );
                    chain_ok = false;
                }
            }
            if chain_ok {
                run.pass("chain", format!("{count} certificates, each ECDSA P-384/SHA-384 signed by the one above, CA constraints and key usage as required"));
            }
        }

        // validity: every certificate at the verification time.
        if certs.len() == count {
            let at_s = i64::try_from(policy.at_ms / 1000).unwrap_or(i64::MAX);
            let mut ok = true;
            for (i, c) in certs.iter().enumerate() {
                let (nb, na) = (c.validity().not_before.timestamp(), c.validity().not_after.timestamp());
                if at_s < nb || at_s > na {
                    run.fail_with(
                        "validity",
                        VerifyError::CertificateTime {
                            position: i,
                            which: chain::role(i, count),
                            subject: name_of(i),
                            not_before: format_unix_seconds(nb),
                            not_after: format_unix_seconds(na),
                            at: format_unix_millis(policy.at_ms),
                        },
                    );
                    ok = false;
                    break;
                }
            }
            if ok {
                let leaf = certs.last().map(|c| c.validity().not_after.timestamp()).unwrap_or_default();
                run.pass(
                    "validity",
                    format!(
                        "all {count} certificates valid at {}; the leaf expires {}",
                        format_unix_millis(policy.at_ms),
                        format_unix_seconds(leaf)
                    ),
                );
            }
        } else {
            run.skip("validity", "a certificate could not be parsed");
        }

        // signature: COSE_Sign1 ES384 over the Sig_structure with the leaf's key.
        match certs.last().filter(|_| certs.len() == count).map(|leaf| chain::p384_key(leaf)) {
            Some(Ok(key)) => {
                let ok = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P384_SHA384_FIXED, key)
                    .verify(&self.sig_structure(), &self.signature)
                    .is_ok();
                if ok {
                    run.pass("signature", "COSE_Sign1 ES384 signature verifies with the leaf certificate's key");
                } else {
                    run.fail_with("signature", VerifyError::BadSignature);
                }
            }
            Some(Err(reason)) => {
                run.fail_with(
                    "signature",
                    VerifyError::Certificate {
                        position: count - 1,
                        which: "leaf".into(),
                        subject: name_of(count - 1),
                        reason,
                    },
                );
            }
            None => run.skip("signature", "the leaf certificate could not be parsed"),
        }

        // debug_mode
        if !is_debug(claims) {
            run.pass("debug_mode", "PCR0, PCR1 and PCR2 are measured (not a debug-mode enclave)");
        } else if policy.allow_debug {
            run.pass("debug_mode", "PCR0, PCR1 and PCR2 are zero (debug mode), accepted because debug was allowed");
        } else {
            run.fail_with("debug_mode", VerifyError::DebugMode);
        }

        // expected PCRs
        for (i, expected) in &policy.expected_pcrs {
            let name = format!("pcr{i}");
            match claims.pcrs.get(i) {
                Some(actual) if actual == expected => run.pass(&name, format!("PCR{i} = {}", hex::encode(actual))),
                actual => run.fail_with(
                    &name,
                    VerifyError::PcrMismatch {
                        index: *i,
                        expected: hex::encode(expected),
                        actual: actual.map(hex::encode),
                    },
                ),
            }
        }

        // nonce
        match &policy.nonce {
            None => run.skip("nonce", "no expected nonce given"),
            Some(expected) if claims.nonce.as_ref() == Some(expected) => {
                run.pass("nonce", format!("nonce = {}", hex::encode(expected)))
            }
            Some(expected) => run.fail_with(
                "nonce",
                VerifyError::NonceMismatch {
                    expected: hex::encode(expected),
                    actual: claims.nonce.as_ref().map(hex::encode),
                },
            ),
        }

        // freshness
        match policy.max_age_ms {
            None => run.skip(
                "freshness",
                format!("no maximum age given (document made {})", format_unix_millis(claims.timestamp_ms)),
            ),
            Some(max_ms) => {
                let ts = claims.timestamp_ms;
                if ts > policy.at_ms.saturating_add(policy.max_future_skew_ms) {
                    run.fail_with(
                        "freshness",
                        VerifyError::FromTheFuture { ahead_ms: ts - policy.at_ms, skew_ms: policy.max_future_skew_ms },
                    );
                } else {
                    let age_ms = policy.at_ms.saturating_sub(ts);
                    if age_ms > max_ms {
                        run.fail_with("freshness", VerifyError::TooOld { age_ms, max_ms });
                    } else {
                        run.pass("freshness", format!("document is {age_ms} ms old (at most {max_ms} ms allowed)"));
                    }
                }
            }
        }

        // commitment
        if policy.expected_models.is_empty() && policy.expected_config.is_none() {
            run.skip("commitment", "no expected model or configuration digest given");
        } else {
            match check_commitment(claims.user_data.as_deref(), policy) {
                Ok(detail) => run.pass("commitment", detail),
                Err(reason) => run.fail_with("commitment", VerifyError::Commitment(reason)),
            }
        }

        if run.first.is_some() {
            return Err(run.into_rejected());
        }
        let certificates =
            certs.iter().zip(&ders).enumerate().map(|(i, (c, der))| chain::summary(c, der, i, count)).collect();
        run.report.verified = true;
        Ok(VerifiedDocument { claims: self.claims, certificates, report: run.report })
    }

    /// Summaries of the certificates (root first, leaf last), each parsed independently; for display.
    pub fn certificates(&self) -> Vec<Result<CertificateSummary, super::error::CertError>> {
        let ders: Vec<&[u8]> = self
            .claims
            .cabundle
            .iter()
            .map(Vec::as_slice)
            .chain(std::iter::once(self.claims.certificate.as_slice()))
            .collect();
        let count = ders.len();
        ders.iter().enumerate().map(|(i, der)| chain::parse(der).map(|c| chain::summary(&c, der, i, count))).collect()
    }

    /// True if PCR0, PCR1 and PCR2 are zero (debug mode). Unverified, like everything here.
    pub fn is_debug(&self) -> bool {
        is_debug(&self.claims)
    }
}

//! The verifier: from bytes (or an [`UnverifiedDocument`]) and a [`Policy`] to a [`VerifiedDocument`], with
//! a [`Report`] naming every check either way.
//!
//! Fail-closed: a [`VerifiedDocument`] exists only if every check passed. Its fields are private to this
//! file, and the one place that builds it needs an [`AllPassed`], which only `report.rs` can make, and only
//! when no check failed. The checks themselves are `checks.rs`, one function each; this file runs all of
//! them, in the order they are reported, even after a failure where their inputs exist, so that a report
//! says, for example, both "expired" and "PCR0 differs". The error returned is the first failure.

use std::collections::BTreeMap;

use super::chain::{self, CertificateSummary};
use super::checks::{self, Chain};
use super::document::{Claims, UnverifiedDocument};
use super::policy::Policy;
use super::report::{AllPassed, Outcomes, Rejected, Report};

/// A document that passed every check of a [`Policy`]. Only [`verify`] and [`UnverifiedDocument::verify`]
/// make one.
#[derive(Debug, Clone)]
pub struct VerifiedDocument {
    claims: Claims,
    certificates: Vec<CertificateSummary>,
    report: Report,
}

impl VerifiedDocument {
    /// The only constructor: `passed` proves that every check of the report passed.
    fn new(passed: AllPassed, claims: Claims, certificates: Vec<CertificateSummary>) -> Self {
        VerifiedDocument { claims, certificates, report: passed.into_report() }
    }

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
        checks::is_debug(&self.claims)
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
        Err(e) => Err(Outcomes::undecodable(e, policy)),
    }
}

impl UnverifiedDocument {
    /// Verifies this decoded document under `policy`.
    #[allow(clippy::result_large_err)]
    pub fn verify(self, policy: &Policy) -> Result<VerifiedDocument, Rejected> {
        self.verify_inner(policy, None)
    }

    #[allow(clippy::result_large_err)]
    fn verify_inner(self, policy: &Policy, cache: Option<&chain::LinkCache>) -> Result<VerifiedDocument, Rejected> {
        let claims = &self.claims;
        let chain = Chain::of(claims);
        let outcomes = Outcomes {
            decode: checks::decode(&self),
            root: checks::root(&chain, &policy.root),
            chain: checks::chain(&chain, cache),
            validity: checks::validity(&chain, policy.at_ms),
            signature: checks::signature(&self, &chain),
            debug_mode: checks::debug_mode(claims, policy.allow_debug),
            pcrs: policy.expected_pcrs.iter().map(|(i, expected)| (*i, checks::pcr(*i, expected, claims))).collect(),
            nonce: checks::nonce(policy.nonce.as_deref(), claims),
            freshness: checks::freshness(claims, policy),
            commitment: checks::commitment(claims, policy),
        };
        let passed = outcomes.conclude(policy)?;
        let certificates = chain.summaries();
        Ok(VerifiedDocument::new(passed, self.claims, certificates))
    }

    /// Summaries of the certificates (root first, leaf last), each parsed independently; for display.
    pub fn certificates(&self) -> Vec<Result<CertificateSummary, super::error::CertError>> {
        let ders = checks::ders(&self.claims);
        let count = ders.len();
        ders.iter().enumerate().map(|(i, der)| chain::parse(der).map(|c| chain::summary(&c, der, i, count))).collect()
    }

    /// True if PCR0, PCR1 and PCR2 are zero (debug mode). Unverified, like everything here.
    pub fn is_debug(&self) -> bool {
        checks::is_debug(&self.claims)
    }
}

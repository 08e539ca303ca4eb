//! The checks, one function each, named as the report names them: [`decode`], [`root`], [`chain`],
//! [`validity`], [`signature`], [`debug_mode`], [`pcr`] (`pcrN`), [`nonce`], [`freshness`], [`commitment`].
//!
//! Each looks at what it needs of the document and the policy and returns an [`Outcome`]; none depends on
//! another's result, so that a report says, for example, both "expired" and "PCR0 differs". A check whose
//! input could not be decoded (a certificate that does not parse) is skipped, not passed. The order in
//! which they run and are reported, and what becomes of their outcomes, is `verify.rs`'s and `report.rs`'s.

use x509_parser::certificate::X509Certificate;

use super::chain::{self, CertificateSummary, LinkCache};
use super::document::{Claims, UnverifiedDocument};
use super::error::{CertError, VerifyError};
use super::policy::{Policy, TrustAnchor};
use super::report::Outcome;
use crate::time::{format_unix_millis, format_unix_seconds};

/// The certificates of a document, root (`cabundle[0]`) first and leaf (`certificate`) last, each parsed
/// once for all the checks that need them.
pub(super) struct Chain<'a> {
    ders: Vec<&'a [u8]>,
    parsed: Vec<Result<X509Certificate<'a>, CertError>>,
}

impl<'a> Chain<'a> {
    pub(super) fn of(claims: &'a Claims) -> Self {
        let ders = ders(claims);
        let parsed = ders.iter().map(|der| chain::parse(der)).collect();
        Chain { ders, parsed }
    }

    fn len(&self) -> usize {
        self.ders.len()
    }

    /// Every certificate, if every one parsed.
    fn certificates(&self) -> Option<Vec<&X509Certificate<'a>>> {
        self.parsed.iter().map(|p| p.as_ref().ok()).collect()
    }

    fn subject(&self, position: usize) -> String {
        match self.parsed.get(position) {
            Some(Ok(c)) => c.subject().to_string(),
            _ => "unparsable".into(),
        }
    }

    /// Summaries of every certificate that parsed (all of them, once `chain` passed).
    pub(super) fn summaries(&self) -> Vec<CertificateSummary> {
        let count = self.len();
        self.parsed
            .iter()
            .zip(&self.ders)
            .enumerate()
            .filter_map(|(i, (p, der))| p.as_ref().ok().map(|c| chain::summary(c, der, i, count)))
            .collect()
    }
}

/// The DER of every certificate, root first, leaf last.
pub(super) fn ders(claims: &Claims) -> Vec<&[u8]> {
    claims.cabundle.iter().map(Vec::as_slice).chain(std::iter::once(claims.certificate.as_slice())).collect()
}

/// True if PCR0, PCR1 and PCR2 are zero (debug mode). A missing PCR counts as zero: absence must not pass
/// for a measured image.
pub(super) fn is_debug(claims: &Claims) -> bool {
    [0u8, 1, 2].iter().all(|i| claims.pcrs.get(i).is_none_or(|v| v.iter().all(|b| *b == 0)))
}

/// `decode`: reached only with a decoded document (the undecodable path is `Outcomes::undecodable`).
pub(super) fn decode(doc: &UnverifiedDocument) -> Outcome {
    Outcome::Passed(format!(
        "COSE_Sign1 ({}), ES384, all nine payload fields well-formed",
        if doc.tagged { "tagged" } else { "untagged" }
    ))
}

/// `root`: `cabundle[0]` is the trust anchor, by fingerprint and by bytes.
pub(super) fn root(chain: &Chain<'_>, anchor: &TrustAnchor) -> Outcome {
    let root_der = chain.ders.first().copied().unwrap_or_default();
    let root_sha = ring::digest::digest(&ring::digest::SHA256, root_der);
    if root_sha.as_ref() == anchor.sha256() && root_der == anchor.der() {
        Outcome::Passed(format!("cabundle[0] is {} (SHA-256 {})", anchor.name(), hex::encode(anchor.sha256())))
    } else {
        Outcome::fail(VerifyError::UntrustedRoot {
            found: hex::encode(root_sha),
            expected: hex::encode(anchor.sha256()),
            expected_name: anchor.name().to_owned(),
        })
    }
}

/// `chain`: every certificate parses; each is signed by the one above it, with matching names and the
/// profile its place requires; and the root itself (trusted by pinning) is still a CA.
pub(super) fn chain(chain: &Chain<'_>, cache: Option<&LinkCache>) -> Outcome {
    let count = chain.len();
    let certificate_error = |position: usize, subject: String, reason: CertError| {
        Outcome::fail(VerifyError::Certificate { position, which: chain::role(position, count), subject, reason })
    };
    if let Some((i, Err(reason))) = chain.parsed.iter().enumerate().find(|(_, p)| p.is_err()) {
        return certificate_error(i, "unparsable".into(), reason.clone());
    }
    let certs = chain.certificates().unwrap_or_default();
    for (i, pair) in certs.windows(2).enumerate() {
        let (parent, child, position) = (pair[0], pair[1], i + 1);
        // CAs below the child, not counting the leaf; `None` for the leaf itself.
        let cas_below = if position + 1 == count { None } else { Some(count - 2 - position) };
        if let Err(reason) = chain::check_link(parent, child, cas_below, cache) {
            return certificate_error(position, chain.subject(position), reason);
        }
    }
    if let Some(Err(reason)) = certs.first().map(|root| chain::check_profile(root, Some(count.saturating_sub(2)))) {
        return certificate_error(0, chain.subject(0), reason);
    }
    Outcome::Passed(format!(
        "{count} certificates, each ECDSA P-384/SHA-384 signed by the one above, CA constraints and key usage as required"
    ))
}

/// `validity`: every certificate is valid at the verification time.
pub(super) fn validity(chain: &Chain<'_>, at_ms: u64) -> Outcome {
    let Some(certs) = chain.certificates() else {
        return Outcome::Skipped("a certificate could not be parsed".into());
    };
    let count = certs.len();
    let at_s = i64::try_from(at_ms / 1000).unwrap_or(i64::MAX);
    for (i, c) in certs.iter().enumerate() {
        let (not_before, not_after) = (c.validity().not_before.timestamp(), c.validity().not_after.timestamp());
        if at_s < not_before || at_s > not_after {
            return Outcome::fail(VerifyError::CertificateTime {
                position: i,
                which: chain::role(i, count),
                subject: chain.subject(i),
                not_before: format_unix_seconds(not_before),
                not_after: format_unix_seconds(not_after),
                at: format_unix_millis(at_ms),
            });
        }
    }
    let leaf_expires = certs.last().map(|c| c.validity().not_after.timestamp()).unwrap_or_default();
    Outcome::Passed(format!(
        "all {count} certificates valid at {}; the leaf expires {}",
        format_unix_millis(at_ms),
        format_unix_seconds(leaf_expires)
    ))
}

/// `signature`: the COSE_Sign1 ES384 signature over the Sig_structure verifies with the leaf's key.
pub(super) fn signature(doc: &UnverifiedDocument, chain: &Chain<'_>) -> Outcome {
    let Some(leaf) = chain.certificates().and_then(|certs| certs.last().copied()) else {
        return Outcome::Skipped("the leaf certificate could not be parsed".into());
    };
    match chain::p384_key(leaf) {
        Ok(key) => {
            let verified = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P384_SHA384_FIXED, key)
                .verify(&doc.sig_structure(), &doc.signature)
                .is_ok();
            if verified {
                Outcome::Passed("COSE_Sign1 ES384 signature verifies with the leaf certificate's key".into())
            } else {
                Outcome::fail(VerifyError::BadSignature)
            }
        }
        Err(reason) => {
            let position = chain.len() - 1;
            Outcome::fail(VerifyError::Certificate {
                position,
                which: "leaf".into(),
                subject: chain.subject(position),
                reason,
            })
        }
    }
}

/// `debug_mode`: PCR0, PCR1 and PCR2 are measured, unless the policy allows debug-mode enclaves.
pub(super) fn debug_mode(claims: &Claims, allow_debug: bool) -> Outcome {
    if !is_debug(claims) {
        Outcome::Passed("PCR0, PCR1 and PCR2 are measured (not a debug-mode enclave)".into())
    } else if allow_debug {
        Outcome::Passed("PCR0, PCR1 and PCR2 are zero (debug mode), accepted because debug was allowed".into())
    } else {
        Outcome::fail(VerifyError::DebugMode)
    }
}

/// `pcrN`: PCR `index` is the expected value.
pub(super) fn pcr(index: u8, expected: &[u8], claims: &Claims) -> Outcome {
    match claims.pcrs.get(&index) {
        Some(actual) if actual == expected => Outcome::Passed(format!("PCR{index} = {}", hex::encode(actual))),
        actual => Outcome::fail(VerifyError::PcrMismatch {
            index,
            expected: hex::encode(expected),
            actual: actual.map(hex::encode),
        }),
    }
}

/// `nonce`: the document carries the expected nonce (skipped when none is expected).
pub(super) fn nonce(expected: Option<&[u8]>, claims: &Claims) -> Outcome {
    match expected {
        None => Outcome::Skipped("no expected nonce given".into()),
        Some(expected) if claims.nonce.as_deref() == Some(expected) => {
            Outcome::Passed(format!("nonce = {}", hex::encode(expected)))
        }
        Some(expected) => Outcome::fail(VerifyError::NonceMismatch {
            expected: hex::encode(expected),
            actual: claims.nonce.as_ref().map(hex::encode),
        }),
    }
}

/// `freshness`: the document is at most the maximum age old and not from the future beyond the allowed
/// skew (skipped when no maximum age is given).
pub(super) fn freshness(claims: &Claims, policy: &Policy) -> Outcome {
    let made = claims.timestamp_ms;
    let Some(max_ms) = policy.max_age_ms else {
        return Outcome::Skipped(format!("no maximum age given (document made {})", format_unix_millis(made)));
    };
    if made > policy.at_ms.saturating_add(policy.max_future_skew_ms) {
        return Outcome::fail(VerifyError::FromTheFuture {
            ahead_ms: made - policy.at_ms,
            skew_ms: policy.max_future_skew_ms,
        });
    }
    let age_ms = policy.at_ms.saturating_sub(made);
    if age_ms > max_ms {
        Outcome::fail(VerifyError::TooOld { age_ms, max_ms })
    } else {
        Outcome::Passed(format!("document is {age_ms} ms old (at most {max_ms} ms allowed)"))
    }
}

/// `commitment`: `user_data` is a Veil commitment naming every expected model with its digest, and the
/// expected configuration digest (skipped when the policy expects neither).
pub(super) fn commitment(claims: &Claims, policy: &Policy) -> Outcome {
    if policy.expected_models.is_empty() && policy.expected_config.is_none() && policy.expected_ohttp_keys.is_none() {
        return Outcome::Skipped("no expected model, configuration or OHTTP key digest given".into());
    }
    match commitment_matches(claims.user_data.as_deref(), policy) {
        Ok(detail) => Outcome::Passed(detail),
        Err(reason) => Outcome::fail(VerifyError::Commitment(reason)),
    }
}

fn commitment_matches(user_data: Option<&[u8]>, policy: &Policy) -> Result<String, String> {
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
    if let Some(expected) = &policy.expected_ohttp_keys {
        match &c.ohttp_keys_sha384 {
            Some(got) if got == expected => {}
            Some(got) => {
                return Err(format!(
                    "OHTTP key configuration: the keys served hash to SHA-384 {}, the enclave committed to {}",
                    hex::encode(expected),
                    hex::encode(got)
                ));
            }
            None => return Err("OHTTP key configuration: this enclave commits to no OHTTP keys".into()),
        }
    }
    Ok(format!(
        "user_data commits to {} model(s){}{}",
        c.models.len(),
        if policy.expected_config.is_some() { " and the expected configuration" } else { "" },
        if policy.expected_ohttp_keys.is_some() { ", and to the OHTTP keys served" } else { "" }
    ))
}

//! Checking evidence, offline and at its own time.
//!
//! A receipt is worth what the attestation document that certifies its key is worth, so everything starts
//! with [`certify`]: the document verified **at its own timestamp** (the leaf certificate lives three hours,
//! evidence must live years; what matters is that the chain was valid when the NSM signed), against the
//! root and the accepted images' PCRs, and its commitment read for the receipt key. Then
//! [`verify_receipt`] checks one client's bundle and [`AuditVerifier`] a whole audit log, record by record.
//! Every check has a name, and every failure says what was expected and what was found.
use std::collections::BTreeMap;

use serde::Serialize;

pub use super::audit::{AuditReport, AuditSummary, AuditVerifier, BootSummary, Finding};
use super::bundle::Bundle;
use super::claims::{Mode, ReceiptClaims, TreeHeadClaims};
use super::cose::SignedObject;
use super::{Hash, boot_id, merkle, salted_digest, sha384};
use crate::attestation::{Check, CheckStatus, Policy, Report, TrustAnchor, UnverifiedDocument, Verifier};

/// How far a receipt's `iat` may be before its document's timestamp (the NSM's and the enclave's clocks
/// are one clock, read a moment apart; whole seconds against milliseconds).
pub(super) const CLOCK_SLACK_SECS: u64 = 2;
/// How far in the verifier's future a receipt may be dated.
pub(super) const FUTURE_SKEW_SECS: u64 = 300;

/// An accepted enclave image: its PCRs, and optionally its configuration digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedImage {
    pub name: String,
    pub pcrs: BTreeMap<u16, [u8; 48]>,
    pub config_sha384: Option<[u8; 48]>,
}

/// What evidence must satisfy.
#[derive(Debug, Clone)]
pub struct EvidencePolicy {
    pub root: TrustAnchor,
    /// Accept debug-mode enclaves (all-zero PCRs: they prove nothing).
    pub allow_debug: bool,
    /// Accepted images; empty: any PCRs (the report says the PCRs were not checked against a policy).
    pub images: Vec<AcceptedImage>,
    /// Accepted models by name; empty: any model the document commits to.
    pub models: BTreeMap<String, [u8; 48]>,
}

impl EvidencePolicy {
    /// Under `root`, no image or model pinned, debug mode refused.
    pub fn root_only(root: TrustAnchor) -> Self {
        EvidencePolicy { root, allow_debug: false, images: Vec::new(), models: BTreeMap::new() }
    }
}

/// A receipt key certified by a verified attestation document.
#[derive(Debug, Clone, Serialize)]
pub struct CertifiedKey {
    #[serde(serialize_with = "as_hex")]
    pub key: [u8; 32],
    #[serde(serialize_with = "as_hex")]
    pub document_sha384: [u8; 48],
    /// The boot id of the key (SHA-256 of it, first 16 bytes).
    #[serde(serialize_with = "as_hex")]
    pub boot: [u8; 16],
    pub module_id: String,
    pub timestamp_ms: u64,
    /// PCR index → value (hex).
    pub pcrs: BTreeMap<u8, String>,
    /// The accepted image that matched (`None` when no image is pinned).
    pub image: Option<String>,
    pub debug: bool,
    /// Models the document commits to: name → SHA-384.
    #[serde(skip)]
    pub models: BTreeMap<String, [u8; 48]>,
    /// The attestation verifier's report (at the document's own time).
    #[serde(skip)]
    pub report: Report,
}

fn as_hex<S: serde::Serializer, T: AsRef<[u8]>>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v))
}

/// Why a document does not certify a receipt key: the failed check's name and the attestation report.
#[derive(Debug, Clone)]
pub struct NotCertified {
    pub check: String,
    pub message: String,
    pub report: Option<Box<Report>>,
}

/// Verifies `document` at its own timestamp under `policy` and reads the receipt key its commitment names.
pub fn certify(document: &[u8], policy: &EvidencePolicy, verifier: &Verifier) -> Result<CertifiedKey, NotCertified> {
    let unverified = UnverifiedDocument::parse(document).map_err(|e| NotCertified {
        check: "attestation.decode".into(),
        message: format!("the attestation document does not decode: {e}"),
        report: None,
    })?;
    let at_ms = unverified.unverified_claims().timestamp_ms;
    let base = Policy::new(at_ms).with_root(policy.root.clone()).allow_debug(policy.allow_debug);
    let mut first_failure = None;
    let images: Vec<Option<&AcceptedImage>> =
        if policy.images.is_empty() { vec![None] } else { policy.images.iter().map(Some).collect() };
    for image in images {
        let mut p = base.clone();
        if let Some(img) = image {
            for (i, v) in &img.pcrs {
                p = p.expect_pcr(*i, v).map_err(|e| internal(e.to_string()))?;
            }
            if let Some(c) = &img.config_sha384 {
                p = p.expect_config_sha384(c).map_err(|e| internal(e.to_string()))?;
            }
        }
        match verifier.verify(document, &p) {
            Ok(doc) => {
                let Some(commitment) = doc.commitment() else {
                    return Err(NotCertified {
                        check: "commitment".into(),
                        message: "the document's user_data is not a Veil commitment".into(),
                        report: Some(Box::new(doc.report().clone())),
                    });
                };
                let Some(key) = commitment.receipt_key else {
                    return Err(NotCertified {
                        check: "commitment".into(),
                        message: "the document commits to no receipt key (receipts are off in this enclave)".into(),
                        report: Some(Box::new(doc.report().clone())),
                    });
                };
                return Ok(CertifiedKey {
                    key,
                    document_sha384: sha384(document),
                    boot: boot_id(&key),
                    module_id: doc.module_id().to_owned(),
                    timestamp_ms: doc.timestamp_ms(),
                    pcrs: doc.pcrs().iter().map(|(i, v)| (*i, hex::encode(v))).collect(),
                    image: image.map(|i| i.name.clone()),
                    debug: doc.is_debug(),
                    models: commitment.models.iter().map(|m| (m.name.clone(), m.sha384)).collect(),
                    report: doc.report().clone(),
                });
            }
            Err(rejected) => {
                if first_failure.is_none() {
                    let check = rejected.report.first_failure().map_or("attestation".into(), |c| c.name.clone());
                    let prefix = image.map(|i| format!(" (image {})", i.name)).unwrap_or_default();
                    first_failure = Some(NotCertified {
                        check: format!("attestation.{check}"),
                        message: format!("the attestation document fails check {check}{prefix}: {}", rejected.error),
                        report: Some(rejected.report),
                    });
                }
            }
        }
    }
    Err(first_failure.unwrap_or_else(|| internal("no image to check".into())))
}

fn internal(message: String) -> NotCertified {
    NotCertified { check: "policy".into(), message, report: None }
}

/// One receipt's claims as a report shows them.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiptView {
    pub seq: u64,
    pub issued_at: u64,
    pub issued_at_text: String,
    pub issuer: String,
    pub model: String,
    pub model_sha384: String,
    pub mode: Mode,
    pub attestation_sha384: String,
}

impl From<&ReceiptClaims> for ReceiptView {
    fn from(c: &ReceiptClaims) -> Self {
        ReceiptView {
            seq: c.seq,
            issued_at: c.issued_at,
            issued_at_text: crate::time::format_unix_seconds(c.issued_at.min(i64::MAX as u64) as i64),
            issuer: c.issuer.clone(),
            model: c.model.clone(),
            model_sha384: hex::encode(c.model_sha384),
            mode: c.mode,
            attestation_sha384: hex::encode(c.attestation_sha384),
        }
    }
}

/// The outcome of [`verify_receipt`].
#[derive(Debug, Clone, Serialize)]
pub struct ReceiptReport {
    pub verified: bool,
    pub checks: Vec<Check>,
    /// The first failure, as a sentence.
    pub error: Option<String>,
    /// The receipt's claims (from its payload; trustworthy only when `verified`).
    pub receipt: Option<ReceiptView>,
    /// The certifying document, when it verified.
    pub certified_by: Option<CertifiedKey>,
    /// The attestation verifier's own report of the document (at the document's time).
    pub attestation: Option<Report>,
}

struct Checks(Vec<Check>);

impl Checks {
    fn push(&mut self, name: &str, status: CheckStatus, detail: impl Into<String>) {
        self.0.push(Check { name: name.into(), status, detail: detail.into() });
    }
    fn pass(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, CheckStatus::Passed, detail);
    }
    fn fail(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, CheckStatus::Failed, detail);
    }
    fn skip(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, CheckStatus::Skipped, detail);
    }
    fn check(&mut self, name: &str, result: Result<String, String>) -> bool {
        match result {
            Ok(d) => {
                self.pass(name, d);
                true
            }
            Err(d) => {
                self.fail(name, d);
                false
            }
        }
    }
}

/// Checks that the receipt's model is one its document commits to, and one the policy accepts.
pub(super) fn model_check(
    claims: &ReceiptClaims,
    key: &CertifiedKey,
    policy: &EvidencePolicy,
) -> Result<String, String> {
    match key.models.get(&claims.model) {
        Some(d) if *d == claims.model_sha384 => {}
        Some(d) => {
            return Err(format!(
                "model {}: the receipt says SHA-384 {}, the attestation document commits to {}",
                claims.model,
                hex::encode(claims.model_sha384),
                hex::encode(d)
            ));
        }
        None => {
            return Err(format!("model {}: the attestation document commits to no model of that name", claims.model));
        }
    }
    if policy.models.is_empty() {
        return Ok(format!(
            "{} {} (committed by the document; no model pinned by a policy)",
            claims.model,
            hex::encode(claims.model_sha384)
        ));
    }
    match policy.models.get(&claims.model) {
        Some(d) if *d == claims.model_sha384 => Ok(format!("{} {} (the policy's)", claims.model, hex::encode(d))),
        Some(d) => Err(format!(
            "model {}: expected SHA-384 {} (the policy), got {}",
            claims.model,
            hex::encode(d),
            hex::encode(claims.model_sha384)
        )),
        None => Err(format!("model {}: the policy does not list this model", claims.model)),
    }
}

/// The receipt's own time against its key's certification and the verifier's clock.
pub(super) fn time_check(claims: &ReceiptClaims, key: &CertifiedKey, now_unix: u64) -> Result<String, String> {
    let at = |t: u64| crate::time::format_unix_seconds(t.min(i64::MAX as u64) as i64);
    let doc_secs = key.timestamp_ms / 1000;
    if claims.issued_at.saturating_add(CLOCK_SLACK_SECS) < doc_secs {
        Err(format!("the receipt is dated {}, before its key was certified ({})", at(claims.issued_at), at(doc_secs)))
    } else if claims.issued_at > now_unix.saturating_add(FUTURE_SKEW_SECS) {
        Err(format!("the receipt is dated {}, after this machine's clock ({})", at(claims.issued_at), at(now_unix)))
    } else {
        Ok(at(claims.issued_at))
    }
}

/// The receipt belongs to the boot of the certified key: its `cti` starts with the key's boot id, and its
/// issuer is the document's module.
pub(super) fn identity_check(claims: &ReceiptClaims, key: &CertifiedKey) -> Result<String, String> {
    if claims.boot_prefix != key.boot[..8] {
        return Err(format!(
            "the receipt's cti names boot {}, the certified key's boot is {}",
            hex::encode(claims.boot_prefix),
            hex::encode(&key.boot[..8])
        ));
    }
    if claims.issuer != key.module_id {
        return Err(format!(
            "the receipt's issuer is {:?}, the document's module is {:?}",
            claims.issuer, key.module_id
        ));
    }
    Ok(format!("{} (boot {})", claims.issuer, hex::encode(key.boot)))
}

/// The plaintext check: the salted digest of `plaintext` against the receipt's.
fn digest_check(what: &str, salt: &[u8; 32], plaintext: &[u8], claimed: &Hash) -> Result<String, String> {
    let got = salted_digest(salt, plaintext);
    if &got == claimed {
        Ok(format!("the {what} ({} bytes) is the one the receipt names", plaintext.len()))
    } else {
        Err(format!(
            "the {what} is not the one the receipt names: expected digest {}, the file's is {} ({} bytes; it \
             must hold the exact bytes, as `veil infer --output` writes them)",
            hex::encode(claimed),
            hex::encode(got),
            plaintext.len()
        ))
    }
}

/// Verifies a client's evidence bundle: the document at its own time, the receipt's signature with the key
/// it certifies, the model, and, when given, the plaintexts and the inclusion proof. `now_unix` only bounds
/// how far in the future a receipt may be dated: nothing here expires.
pub fn verify_receipt(
    bundle: &Bundle,
    request: Option<&[u8]>,
    response: Option<&[u8]>,
    policy: &EvidencePolicy,
    verifier: &Verifier,
    now_unix: u64,
) -> ReceiptReport {
    let (mut c, mut report, claims) = match decoded(bundle) {
        Ok(d) => d,
        Err(report) => return *report,
    };
    let doc_digest = sha384(&bundle.attestation_document);
    if !c.check(
        "attestation.digest",
        if doc_digest == claims.attestation_sha384 {
            Ok(format!("the bundle's document is the one the receipt names ({})", hex::encode(doc_digest)))
        } else {
            Err(format!(
                "the receipt names document {}, the bundle holds {}",
                hex::encode(claims.attestation_sha384),
                hex::encode(doc_digest)
            ))
        },
    ) {
        return finish(report, c);
    }
    let key = match certify(&bundle.attestation_document, policy, verifier) {
        Ok(k) => k,
        Err(nc) => {
            c.fail(&nc.check, nc.message);
            report.attestation = nc.report.map(|r| *r);
            return finish(report, c);
        }
    };
    c.pass(
        "attestation",
        format!(
            "verified at its own time ({}) under {}{}",
            crate::time::format_unix_millis(key.timestamp_ms),
            policy.root.name(),
            match (&key.image, key.debug) {
                (_, true) => ", DEBUG MODE allowed".to_owned(),
                (Some(i), _) => format!(", PCRs of image {i}"),
                (None, _) => ", PCRs not checked against a policy".to_owned(),
            }
        ),
    );
    report.attestation = Some(key.report.clone());
    c.pass("commitment", format!("the document commits to receipt key {}", hex::encode(key.key)));
    check_receipt(&mut c, bundle, &claims, &key, request, response, policy, now_unix);
    report.certified_by = Some(key);
    finish(report, c)
}

/// The checks of a receipt against an already certified key (the signature first: nothing the claims
/// say is taken as checked unless it verifies).
#[allow(clippy::too_many_arguments)]
fn check_receipt(
    c: &mut Checks,
    bundle: &Bundle,
    claims: &ReceiptClaims,
    key: &CertifiedKey,
    request: Option<&[u8]>,
    response: Option<&[u8]>,
    policy: &EvidencePolicy,
    now_unix: u64,
) {
    let signed = SignedObject::parse(&bundle.receipt, "receipt")
        .and_then(|s| s.verify(&key.key, "receipt").map(|_| ()))
        .map(|()| "Ed25519, with the certified key".to_owned())
        .map_err(|e| e.to_string());
    if !c.check("signature", signed) {
        for name in ["identity", "time", "model", "request", "response", "inclusion"] {
            c.skip(name, "not checked: the signature does not verify, so nothing the receipt says is the enclave's");
        }
        return;
    }
    c.check("identity", identity_check(claims, key));
    c.check("time", time_check(claims, key, now_unix));
    c.check("model", model_check(claims, key, policy));
    match request {
        Some(r) => {
            c.check("request", digest_check("request", &bundle.salt, r, &claims.request_digest));
        }
        None => c.skip("request", "no request file given (--request)"),
    }
    match response {
        Some(r) => {
            c.check("response", digest_check("response", &bundle.salt, r, &claims.response_digest));
        }
        None => c.skip("response", "no response file given (--response)"),
    }
    match &bundle.inclusion {
        None => c.skip("inclusion", "no inclusion proof in the bundle (veil receipt prove adds one)"),
        Some(inc) => {
            c.check("inclusion", inclusion_check(&bundle.receipt, claims, inc, key));
        }
    }
}

/// Checks a bundle whose document was certified before (a client keeping many receipts of one boot):
/// everything [`verify_receipt`] checks after the attestation, against `key`.
pub fn verify_receipt_with(
    bundle: &Bundle,
    key: &CertifiedKey,
    request: Option<&[u8]>,
    response: Option<&[u8]>,
    policy: &EvidencePolicy,
    now_unix: u64,
) -> ReceiptReport {
    let (mut c, mut report, claims) = match decoded(bundle) {
        Ok(d) => d,
        Err(report) => return *report,
    };
    let digest = sha384(&bundle.attestation_document);
    if digest != key.document_sha384 || claims.attestation_sha384 != key.document_sha384 {
        c.fail("attestation.digest", "the bundle's document is not the certified one");
        return finish(report, c);
    }
    check_receipt(&mut c, bundle, &claims, key, request, response, policy, now_unix);
    report.certified_by = Some(key.clone());
    finish(report, c)
}

/// The start of every receipt check: the receipt decoded (its claims, not yet checked), or the report of
/// a receipt that does not decode.
fn decoded(bundle: &Bundle) -> Result<(Checks, ReceiptReport, ReceiptClaims), Box<ReceiptReport>> {
    let mut c = Checks(Vec::new());
    let mut report = ReceiptReport {
        verified: false,
        checks: Vec::new(),
        error: None,
        receipt: None,
        certified_by: None,
        attestation: None,
    };
    match ReceiptClaims::peek(&bundle.receipt) {
        Ok(claims) => {
            c.pass("receipt.decode", format!("receipt seq {} of a boot of {}", claims.seq, claims.issuer));
            report.receipt = Some(ReceiptView::from(&claims));
            Ok((c, report, claims))
        }
        Err(e) => {
            c.fail("receipt.decode", e.to_string());
            Err(Box::new(finish(report, c)))
        }
    }
}

fn finish(mut report: ReceiptReport, c: Checks) -> ReceiptReport {
    report.verified = !c.0.iter().any(|x| x.status == CheckStatus::Failed);
    report.error =
        c.0.iter().find(|x| x.status == CheckStatus::Failed).map(|x| format!("check {} failed: {}", x.name, x.detail));
    report.checks = c.0;
    report
}

fn inclusion_check(
    receipt: &[u8],
    claims: &ReceiptClaims,
    inc: &super::bundle::Inclusion,
    key: &CertifiedKey,
) -> Result<String, String> {
    let head = SignedObject::parse(&inc.tree_head, "tree head").map_err(|e| e.to_string())?;
    let payload = head.verify(&key.key, "tree head").map_err(|e| e.to_string())?;
    let head = TreeHeadClaims::decode(payload).map_err(|e| e.to_string())?;
    if head.attestation_sha384 != key.document_sha384 || head.issuer != key.module_id {
        return Err("the tree head names another attestation document or module than the receipt's".into());
    }
    if head.tree_size != inc.tree_size || inc.leaf_index != claims.seq {
        return Err(format!(
            "the proof is for leaf {} of a tree of {}, but the receipt is seq {} and the tree head covers {}",
            inc.leaf_index, inc.tree_size, claims.seq, head.tree_size
        ));
    }
    merkle::verify_inclusion(&merkle::leaf_hash(receipt), claims.seq, head.tree_size, &inc.path, &head.root_hash)
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "in the audit log under a tree head of {} receipts signed {}",
        head.tree_size,
        crate::time::format_unix_seconds(head.issued_at.min(i64::MAX as u64) as i64)
    ))
}

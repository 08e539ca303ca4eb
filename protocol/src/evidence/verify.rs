//! Checking evidence, offline and at its own time.
//!
//! A receipt is worth what the attestation document that certifies its key is worth, so everything starts
//! with [`certify`]: the document verified **at its own timestamp** (the leaf certificate lives three hours,
//! evidence must live years; what matters is that the chain was valid when the NSM signed), against the
//! root and the accepted images' PCRs, and its commitment read for the receipt key. Then
//! [`verify_receipt`] checks one client's bundle and [`AuditVerifier`] a whole audit log, record by record.
//! Every check has a name, and every failure says what was expected and what was found.
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::bundle::Bundle;
use super::claims::{Mode, ReceiptClaims, TreeHeadClaims};
use super::cose::SignedObject;
use super::log::{Record, RecordError, RecordKind};
use super::{EvidenceError, Hash, merkle, salted_digest, sha384};
use crate::attestation::{Check, CheckStatus, Policy, Report, TrustAnchor, UnverifiedDocument, Verifier};

/// How far a receipt's `iat` may be before its document's timestamp (the NSM's and the enclave's clocks
/// are one clock, read a moment apart; whole seconds against milliseconds).
const CLOCK_SLACK_SECS: u64 = 2;
/// How far in the verifier's future a receipt may be dated.
const FUTURE_SKEW_SECS: u64 = 300;

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
    pub status: u16,
    pub mode: Mode,
    pub attestation_sha384: String,
}

impl From<&ReceiptClaims> for ReceiptView {
    fn from(c: &ReceiptClaims) -> Self {
        ReceiptView {
            seq: c.seq,
            issued_at: c.issued_at,
            issued_at_text: crate::time::format_unix_seconds(c.issued_at as i64),
            issuer: c.issuer.clone(),
            model: c.model.clone(),
            model_sha384: hex::encode(c.model_sha384),
            status: c.status,
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
    fn pass(&mut self, name: &str, detail: impl Into<String>) {
        self.0.push(Check { name: name.into(), status: CheckStatus::Passed, detail: detail.into() });
    }
    fn fail(&mut self, name: &str, detail: impl Into<String>) {
        self.0.push(Check { name: name.into(), status: CheckStatus::Failed, detail: detail.into() });
    }
    fn skip(&mut self, name: &str, detail: impl Into<String>) {
        self.0.push(Check { name: name.into(), status: CheckStatus::Skipped, detail: detail.into() });
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
fn model_check(claims: &ReceiptClaims, key: &CertifiedKey, policy: &EvidencePolicy) -> Result<String, String> {
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
    let mut c = Checks(Vec::new());
    let mut report = ReceiptReport {
        verified: false,
        checks: Vec::new(),
        error: None,
        receipt: None,
        certified_by: None,
        attestation: None,
    };
    let finish = |mut report: ReceiptReport, c: Checks| {
        report.verified = !c.0.iter().any(|x| x.status == CheckStatus::Failed);
        report.error =
            c.0.iter()
                .find(|x| x.status == CheckStatus::Failed)
                .map(|x| format!("check {} failed: {}", x.name, x.detail));
        report.checks = c.0;
        report
    };
    let decoded = SignedObject::parse(&bundle.receipt, "receipt")
        .and_then(|s| ReceiptClaims::decode(s.unverified_payload()).map(|claims| (s, claims)));
    let (signed, claims) = match decoded {
        Ok(d) => d,
        Err(e) => {
            c.fail("receipt.decode", e.to_string());
            return finish(report, c);
        }
    };
    c.pass("receipt.decode", format!("receipt seq {} of a boot of {}", claims.seq, claims.issuer));
    report.receipt = Some(ReceiptView::from(&claims));
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
    let signature_ok = c.check(
        "signature",
        signed
            .verify(&key.key, "receipt")
            .map(|_| "Ed25519, with the certified key".to_owned())
            .map_err(|e| e.to_string()),
    );
    c.check(
        "issuer",
        if claims.issuer == key.module_id {
            Ok(claims.issuer.clone())
        } else {
            Err(format!("the receipt's issuer is {:?}, the document's module is {:?}", claims.issuer, key.module_id))
        },
    );
    let doc_secs = key.timestamp_ms / 1000;
    c.check(
        "time",
        if claims.issued_at + CLOCK_SLACK_SECS < doc_secs {
            Err(format!(
                "the receipt is dated {}, before its key was certified ({})",
                crate::time::format_unix_seconds(claims.issued_at as i64),
                crate::time::format_unix_seconds(doc_secs as i64)
            ))
        } else if claims.issued_at > now_unix + FUTURE_SKEW_SECS {
            Err(format!(
                "the receipt is dated {}, after this machine's clock ({})",
                crate::time::format_unix_seconds(claims.issued_at as i64),
                crate::time::format_unix_seconds(now_unix as i64)
            ))
        } else {
            Ok(crate::time::format_unix_seconds(claims.issued_at as i64))
        },
    );
    c.check("model", model_check(&claims, &key, policy));
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
            let r = inclusion_check(&bundle.receipt, &claims, inc, &key);
            c.check("inclusion", r);
        }
    }
    if signature_ok {
        report.certified_by = Some(key);
    }
    finish(report, c)
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
    if head.attestation_sha384 != key.document_sha384 {
        return Err("the tree head names another attestation document than the receipt's".into());
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
        crate::time::format_unix_seconds(head.issued_at as i64)
    ))
}

/// What an audit-log verification found wrong (or worth saying).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `gap`, `reordered`, `duplicate`, `chain`, `tree_head`, `signature`, `malformed`, `attestation`,
    /// `policy`, `uncovered` (a warning: receipts after the last tree head).
    pub kind: &'static str,
    pub boot: String,
    /// File and byte offset, when the finding is about one record.
    pub location: Option<String>,
    pub seq: Option<u64>,
    pub message: String,
    /// False for warnings: they do not fail the verification.
    pub error: bool,
}

/// One boot as the summary shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BootSummary {
    pub boot: String,
    pub module_id: Option<String>,
    pub attested_at: Option<String>,
    pub image: Option<String>,
    pub pcrs: BTreeMap<u8, String>,
    pub receipts: u64,
    pub tree_heads: u64,
    /// Receipts covered by the last tree head that verified.
    pub covered: u64,
}

/// Requests per model, per image, statuses and time span.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditSummary {
    pub receipts: u64,
    pub tree_heads: u64,
    pub boots: Vec<BootSummary>,
    /// "name sha384" → receipts.
    pub per_model: BTreeMap<String, u64>,
    /// "pcr0 pcr1 pcr2" (hex) → receipts.
    pub per_pcrs: BTreeMap<String, u64>,
    pub per_status: BTreeMap<u16, u64>,
    pub per_mode: BTreeMap<String, u64>,
    pub first: Option<String>,
    pub last: Option<String>,
}

/// The outcome of an audit-log verification.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub verified: bool,
    pub findings: Vec<Finding>,
    pub summary: AuditSummary,
}

/// A boot's stream, as it is read.
struct Boot {
    name: String,
    key: Option<CertifiedKey>,
    /// Leaf hash by sequence number.
    leaves: BTreeMap<u64, Hash>,
    /// (seq, prev) of each receipt, for the chain check once all are in.
    links: Vec<(u64, Hash, Option<String>)>,
    max_seq: Option<u64>,
    heads: Vec<(TreeHeadClaims, Option<String>)>,
    records: u64,
}

/// Verifies an audit log, record by record, one boot after another (the caller reads the files):
/// `begin_boot`, then each record (or read error) in file order, then `end_boot`; `finish` at the end.
pub struct AuditVerifier<'p> {
    policy: &'p EvidencePolicy,
    verifier: &'p Verifier,
    now_unix: u64,
    boot: Option<Boot>,
    findings: Vec<Finding>,
    summary: AuditSummary,
    seen_documents: BTreeSet<[u8; 48]>,
    span: (Option<u64>, Option<u64>),
}

impl std::fmt::Debug for AuditVerifier<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditVerifier").field("findings", &self.findings.len()).finish_non_exhaustive()
    }
}

impl<'p> AuditVerifier<'p> {
    pub fn new(policy: &'p EvidencePolicy, verifier: &'p Verifier, now_unix: u64) -> Self {
        AuditVerifier {
            policy,
            verifier,
            now_unix,
            boot: None,
            findings: Vec::new(),
            summary: AuditSummary::default(),
            seen_documents: BTreeSet::new(),
            span: (None, None),
        }
    }

    fn find(&mut self, kind: &'static str, location: Option<&str>, seq: Option<u64>, message: String) {
        let boot = self.boot.as_ref().map_or_else(String::new, |b| b.name.clone());
        self.findings.push(Finding { kind, boot, location: location.map(str::to_owned), seq, message, error: true });
    }

    /// A boot's stream starts (a directory of the log).
    pub fn begin_boot(&mut self, name: &str) {
        self.end_boot();
        self.boot = Some(Boot {
            name: name.to_owned(),
            key: None,
            leaves: BTreeMap::new(),
            links: Vec::new(),
            max_seq: None,
            heads: Vec::new(),
            records: 0,
        });
    }

    /// A record that could not be read.
    pub fn record_error(&mut self, location: &str, e: &RecordError) {
        let what = if e.truncated { "the file ends inside a record (cut short)" } else { "unreadable record" };
        self.find("malformed", Some(location), None, format!("{what}: {}", e.error));
    }

    /// The next record of the current boot's stream.
    pub fn record(&mut self, location: &str, record: Record<'_>) {
        let Some(boot) = self.boot.as_mut() else { return };
        let index = boot.records;
        boot.records += 1;
        match (record.kind, index) {
            (RecordKind::Attestation, 0) => self.attestation(location, record.bytes),
            (RecordKind::Attestation, _) => {
                self.find("malformed", Some(location), None, "an attestation document after the start of a boot".into())
            }
            (_, 0) => self.find(
                "attestation",
                Some(location),
                None,
                "the boot's log does not start with the attestation document that certifies its key".into(),
            ),
            (RecordKind::Receipt, _) => self.receipt(location, record.bytes),
            (RecordKind::TreeHead, _) => self.tree_head(location, record.bytes),
        }
    }

    fn attestation(&mut self, location: &str, bytes: &[u8]) {
        match certify(bytes, self.policy, self.verifier) {
            Ok(key) => {
                if !self.seen_documents.insert(key.document_sha384) {
                    self.find(
                        "duplicate",
                        Some(location),
                        None,
                        "this boot's attestation document appears in another boot's log too".into(),
                    );
                }
                if let Some(b) = self.boot.as_mut() {
                    b.key = Some(key);
                }
            }
            Err(nc) => self.find("attestation", Some(location), None, format!("check {}: {}", nc.check, nc.message)),
        }
    }

    fn receipt(&mut self, location: &str, bytes: &[u8]) {
        let Some(key) = self.boot.as_ref().and_then(|b| b.key.clone()) else {
            self.find(
                "attestation",
                Some(location),
                None,
                "a receipt with no verified attestation document before it".into(),
            );
            return;
        };
        let parsed = SignedObject::parse(bytes, "receipt").and_then(|s| {
            let payload = s.verify(&key.key, "receipt")?;
            ReceiptClaims::decode(payload)
        });
        let claims = match parsed {
            Ok(c) => c,
            Err(e @ EvidenceError::Signature { .. }) => {
                return self.find("signature", Some(location), None, e.to_string());
            }
            Err(e) => return self.find("malformed", Some(location), None, e.to_string()),
        };
        let seq = Some(claims.seq);
        if claims.attestation_sha384 != key.document_sha384 || claims.issuer != key.module_id {
            return self.find(
                "attestation",
                Some(location),
                seq,
                "the receipt names another attestation document or module than its boot's".into(),
            );
        }
        if claims.issued_at + CLOCK_SLACK_SECS < key.timestamp_ms / 1000
            || claims.issued_at > self.now_unix + FUTURE_SKEW_SECS
        {
            self.find(
                "time",
                Some(location),
                seq,
                format!(
                    "the receipt is dated {}, outside its boot's lifetime",
                    crate::time::format_unix_seconds(claims.issued_at as i64)
                ),
            );
        }
        if let Err(m) = model_check(&claims, &key, self.policy) {
            self.find("policy", Some(location), seq, m);
        }
        let Some(boot) = self.boot.as_mut() else { return };
        let leaf = merkle::leaf_hash(bytes);
        if boot.leaves.contains_key(&claims.seq) {
            let name = boot.name.clone();
            self.findings.push(Finding {
                kind: "duplicate",
                boot: name,
                location: Some(location.into()),
                seq,
                message: format!("receipt seq {} appears twice", claims.seq),
                error: true,
            });
            return;
        }
        if let Some(max) = boot.max_seq
            && claims.seq < max
        {
            let name = boot.name.clone();
            self.findings.push(Finding {
                kind: "reordered",
                boot: name,
                location: Some(location.into()),
                seq,
                message: format!(
                    "receipt seq {} appears after seq {max}: the log is not in sequence order",
                    claims.seq
                ),
                error: true,
            });
        }
        boot.max_seq = Some(boot.max_seq.map_or(claims.seq, |m| m.max(claims.seq)));
        boot.leaves.insert(claims.seq, leaf);
        boot.links.push((claims.seq, claims.prev, Some(location.to_owned())));
        let s = &mut self.summary;
        s.receipts += 1;
        *s.per_model.entry(format!("{} {}", claims.model, hex::encode(claims.model_sha384))).or_default() += 1;
        let pcrs = (0u8..3).map(|i| key.pcrs.get(&i).cloned().unwrap_or_default()).collect::<Vec<_>>().join(" ");
        *s.per_pcrs.entry(pcrs).or_default() += 1;
        *s.per_status.entry(claims.status).or_default() += 1;
        *s.per_mode.entry(claims.mode.label().to_owned()).or_default() += 1;
        self.span.0 = Some(self.span.0.map_or(claims.issued_at, |t| t.min(claims.issued_at)));
        self.span.1 = Some(self.span.1.map_or(claims.issued_at, |t| t.max(claims.issued_at)));
    }

    fn tree_head(&mut self, location: &str, bytes: &[u8]) {
        let Some(key) = self.boot.as_ref().and_then(|b| b.key.clone()) else {
            self.find(
                "attestation",
                Some(location),
                None,
                "a tree head with no verified attestation document before it".into(),
            );
            return;
        };
        let parsed = SignedObject::parse(bytes, "tree head").and_then(|s| {
            let payload = s.verify(&key.key, "tree head")?;
            TreeHeadClaims::decode(payload)
        });
        match parsed {
            Ok(h) if h.attestation_sha384 != key.document_sha384 || h.issuer != key.module_id => self.find(
                "attestation",
                Some(location),
                None,
                "the tree head names another attestation document or module than its boot's".into(),
            ),
            Ok(h) => {
                self.summary.tree_heads += 1;
                if let Some(b) = self.boot.as_mut() {
                    b.heads.push((h, Some(location.to_owned())));
                }
            }
            Err(e @ EvidenceError::Signature { .. }) => self.find("signature", Some(location), None, e.to_string()),
            Err(e) => self.find("malformed", Some(location), None, e.to_string()),
        }
    }

    /// The current boot's stream has ended: check its chain, gaps and tree heads.
    pub fn end_boot(&mut self) {
        let Some(boot) = self.boot.take() else { return };
        let mut findings = Vec::new();
        let mut find =
            |kind: &'static str, location: Option<String>, seq: Option<u64>, message: String, error: bool| {
                findings.push(Finding { kind, boot: boot.name.clone(), location, seq, message, error });
            };
        if boot.records == 0 {
            find("malformed", None, None, "the boot's log is empty".into(), true);
        }
        // Gaps: every sequence number up to the highest seen must be there.
        if let Some(max) = boot.max_seq {
            let mut missing_from: Option<u64> = None;
            for s in 0..=max + 1 {
                let present = s > max || boot.leaves.contains_key(&s);
                match (present, missing_from) {
                    (false, None) => missing_from = Some(s),
                    (true, Some(a)) => {
                        let range =
                            if a == s - 1 { format!("seq {a} is") } else { format!("seq {a} to {} are", s - 1) };
                        find("gap", None, Some(a), format!("{range} missing from the log"), true);
                        missing_from = None;
                    }
                    _ => {}
                }
            }
        }
        // The chain: each receipt names the leaf hash of the one before it.
        for (seq, prev, location) in &boot.links {
            let expected = if *seq == 0 { Some([0u8; 32]) } else { boot.leaves.get(&(seq - 1)).copied() };
            match expected {
                Some(e) if e == *prev => {}
                Some(_) => find(
                    "chain",
                    location.clone(),
                    Some(*seq),
                    format!(
                        "receipt seq {seq} does not name receipt seq {} as its predecessor: the receipt before it was altered or replaced",
                        seq.saturating_sub(1)
                    ),
                    true,
                ),
                None => {} // a gap, reported above
            }
        }
        // Tree heads: each must be the root of exactly the receipts before it, in sequence order.
        let mut covered = 0;
        let mut last_size = 0;
        for (head, location) in &boot.heads {
            if head.tree_size < last_size {
                find(
                    "tree_head",
                    location.clone(),
                    None,
                    format!("a tree head of {} receipts after one of {last_size}", head.tree_size),
                    true,
                );
            }
            last_size = last_size.max(head.tree_size);
            let leaves: Option<Vec<Hash>> = (0..head.tree_size).map(|s| boot.leaves.get(&s).copied()).collect();
            match leaves {
                None => find(
                    "tree_head",
                    location.clone(),
                    None,
                    format!(
                        "the tree head signed for {} receipts cannot be matched: receipts it covers are missing from the log",
                        head.tree_size
                    ),
                    true,
                ),
                Some(l) => {
                    let root = merkle::root(&l);
                    if root == head.root_hash {
                        covered = covered.max(head.tree_size);
                    } else {
                        find(
                            "tree_head",
                            location.clone(),
                            None,
                            format!(
                                "the tree head signed for {} receipts has root {}; the log's receipts give {}: the log was altered",
                                head.tree_size,
                                hex::encode(head.root_hash),
                                hex::encode(root)
                            ),
                            true,
                        );
                    }
                }
            }
        }
        let total = boot.max_seq.map_or(0, |m| m + 1);
        if total > covered && boot.key.is_some() {
            find(
                "uncovered",
                None,
                Some(covered),
                format!(
                    "receipts seq {covered} to {} are not covered by a signed tree head: the enclave signs one within \
                     seconds, so the log was read while the enclave ran, or was cut after them",
                    total - 1
                ),
                false,
            );
        }
        self.findings.extend(findings);
        let key = boot.key.as_ref();
        self.summary.boots.push(BootSummary {
            boot: boot.name.clone(),
            module_id: key.map(|k| k.module_id.clone()),
            attested_at: key.map(|k| crate::time::format_unix_millis(k.timestamp_ms)),
            image: key.and_then(|k| k.image.clone()),
            pcrs: key.map(|k| k.pcrs.clone()).unwrap_or_default(),
            receipts: boot.leaves.len() as u64,
            tree_heads: boot.heads.len() as u64,
            covered,
        });
    }

    /// The report: verified when no finding is an error.
    pub fn finish(mut self) -> AuditReport {
        self.end_boot();
        self.summary.first = self.span.0.map(|t| crate::time::format_unix_seconds(t as i64));
        self.summary.last = self.span.1.map(|t| crate::time::format_unix_seconds(t as i64));
        AuditReport { verified: !self.findings.iter().any(|f| f.error), findings: self.findings, summary: self.summary }
    }
}

//! Verifying a whole audit log, record by record, in one pass and in memory that does not grow with the
//! log: receipts are checked as they come and folded into a Merkle [`Frontier`] in sequence order, so
//! each signed tree head is compared with the root of exactly the receipts before it when the frontier
//! reaches its size. Only receipts that arrive ahead of a missing one are held (to report the gap and
//! their own chain), and only tree heads ahead of the frontier.
//!
//! An honest log (the enclave numbers the records and the parent writes them in order) has every receipt
//! in sequence, each tree head right after the last receipt it covers, and at most a short tail after the
//! last head (the enclave signs one every `tree_head_every` receipts and `tree_head_secs` seconds).
//! Everything else is a finding, named by boot, file and byte offset, and sequence number.
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::claims::{ReceiptClaims, TreeHeadClaims};
use super::cose::SignedObject;
use super::log::{Record, RecordError, RecordKind};
use super::merkle::{self, Frontier};
use super::verify::{CertifiedKey, EvidencePolicy, certify, identity_check, model_check, time_check};
use super::{EvidenceError, Hash};
use crate::attestation::Verifier;

/// What an audit-log verification found wrong (or worth saying).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `gap`, `reordered`, `duplicate`, `chain`, `tree_head`, `signature`, `malformed`, `attestation`,
    /// `identity`, `time`, `policy`, `uncovered` (a warning when the tail after the last tree head is as
    /// short as an honest enclave leaves it; an error when it is longer).
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

/// Requests per model, per image, per mode, and the time span.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditSummary {
    pub receipts: u64,
    pub tree_heads: u64,
    pub boots: Vec<BootSummary>,
    /// "name sha384" → receipts.
    pub per_model: BTreeMap<String, u64>,
    /// "pcr0 pcr1 pcr2" (hex) → receipts.
    pub per_pcrs: BTreeMap<String, u64>,
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

/// A receipt that arrived ahead of one still missing.
#[derive(Debug)]
struct Held {
    leaf: Hash,
    prev: Hash,
    issued_at: u64,
    location: String,
}

/// A boot's stream, as it is read.
struct Boot {
    name: String,
    key: Option<CertifiedKey>,
    records: u64,
    /// Receipts folded in so far, in sequence order: the next expected is `tree.size()`.
    tree: Frontier,
    last_leaf: Hash,
    /// Receipts ahead of a missing one, by sequence number.
    held: BTreeMap<u64, Held>,
    max_seq: Option<u64>,
    /// Signed tree heads not reached yet, by size: their root and where they are.
    heads_ahead: BTreeMap<u64, (Hash, String)>,
    head_sizes: BTreeSet<u64>,
    heads: u64,
    covered: u64,
    /// `iat` of the first receipt no tree head covers, and of the last receipt.
    uncovered_since: Option<u64>,
    last_iat: u64,
    receipts: u64,
}

/// Verifies an audit log, record by record, one boot after another (the caller reads the files):
/// `begin_boot`, then each record (or read error) in file order, then `end_boot`; `finish` at the end.
pub struct AuditVerifier<'p> {
    policy: &'p EvidencePolicy,
    verifier: &'p Verifier,
    now_unix: u64,
    every: u64,
    secs: u64,
    boot: Option<Boot>,
    findings: Vec<Finding>,
    summary: AuditSummary,
    seen_keys: BTreeSet<[u8; 32]>,
    span: (Option<u64>, Option<u64>),
}

impl std::fmt::Debug for AuditVerifier<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditVerifier").field("findings", &self.findings.len()).finish_non_exhaustive()
    }
}

/// How long after the last tree head an honest enclave's tail may run, beyond its cadence (its clock is
/// read in whole seconds, and a head is signed on the next tick of its pump).
const CADENCE_SLACK_SECS: u64 = 5;

impl<'p> AuditVerifier<'p> {
    /// A verifier for an enclave with the default cadence of tree heads (every 1000 receipts, 10 s).
    pub fn new(policy: &'p EvidencePolicy, verifier: &'p Verifier, now_unix: u64) -> Self {
        AuditVerifier {
            policy,
            verifier,
            now_unix,
            every: 1000,
            secs: 10,
            boot: None,
            findings: Vec::new(),
            summary: AuditSummary::default(),
            seen_keys: BTreeSet::new(),
            span: (None, None),
        }
    }

    /// The enclave's cadence of tree heads (its configuration's `tree_head_every`, `tree_head_secs`): a
    /// tail after the last head longer than that means heads were removed.
    pub fn with_cadence(mut self, every: u64, secs: u64) -> Self {
        self.every = every.max(1);
        self.secs = secs.max(1);
        self
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
            records: 0,
            tree: Frontier::new(),
            last_leaf: [0; 32],
            held: BTreeMap::new(),
            max_seq: None,
            heads_ahead: BTreeMap::new(),
            head_sizes: BTreeSet::new(),
            heads: 0,
            covered: 0,
            uncovered_since: None,
            last_iat: 0,
            receipts: 0,
        });
    }

    /// A record that could not be read. `last_file`: the error is in the boot's last file. A last file
    /// that ends inside a record is what a machine crash mid-write leaves of a boot that never wrote again
    /// (the parent cuts such a tail only when it appends to that boot once more): a note, not an error.
    /// That hides nothing a parent could not hide by cutting the file at a record boundary, which only
    /// outside evidence (a client's bundle, a copied tree head) shows (AUDITING.md §4).
    pub fn record_error(&mut self, location: &str, e: &RecordError, last_file: bool) {
        if e.truncated && last_file {
            self.find(
                "truncated_tail",
                Some(location),
                None,
                format!("the boot's last file ends inside a record (a write cut short by a crash): {}", e.error),
            );
            if let Some(f) = self.findings.last_mut() {
                f.error = false;
            }
            return;
        }
        let what = if e.truncated { "the file ends inside a record (cut short)" } else { "unreadable record" };
        self.find("malformed", Some(location), None, format!("{what}: {}", e.error));
    }

    /// A file of the log that could not be read at all (not a regular file, too large, no permission):
    /// everything in it is missing from the verification, which the error says.
    pub fn unreadable_file(&mut self, location: &str, why: String) {
        self.find("unreadable", Some(location), None, why);
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
                if !self.seen_keys.insert(key.key) {
                    self.find(
                        "duplicate",
                        Some(location),
                        None,
                        "another boot of the log has the same receipt key".into(),
                    );
                }
                if let Some(b) = self.boot.as_mut() {
                    b.key = Some(key);
                }
            }
            Err(nc) => self.find("attestation", Some(location), None, format!("check {}: {}", nc.check, nc.message)),
        }
    }

    /// The checks of one receipt on its own: its signature, whose boot it is, its time, its model.
    fn checked_receipt(&mut self, location: &str, bytes: &[u8], key: &CertifiedKey) -> Option<ReceiptClaims> {
        let parsed = SignedObject::parse(bytes, "receipt").and_then(|s| {
            let payload = s.verify(&key.key, "receipt")?;
            ReceiptClaims::decode(payload)
        });
        let claims = match parsed {
            Ok(c) => c,
            Err(e @ EvidenceError::Signature { .. }) => {
                self.find("signature", Some(location), None, e.to_string());
                return None;
            }
            Err(e) => {
                self.find("malformed", Some(location), None, e.to_string());
                return None;
            }
        };
        let seq = Some(claims.seq);
        if claims.attestation_sha384 != key.document_sha384 {
            self.find(
                "attestation",
                Some(location),
                seq,
                "the receipt names another attestation document than its boot's".into(),
            );
            return None;
        }
        if let Err(m) = identity_check(&claims, key) {
            self.find("identity", Some(location), seq, m);
            return None;
        }
        if let Err(m) = time_check(&claims, key, self.now_unix) {
            self.find("time", Some(location), seq, m);
        }
        if let Err(m) = model_check(&claims, key, self.policy) {
            self.find("policy", Some(location), seq, m);
        }
        Some(claims)
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
        let Some(claims) = self.checked_receipt(location, bytes, &key) else { return };
        let seq = claims.seq;
        let leaf = merkle::leaf_hash(bytes);
        let Some(boot) = self.boot.as_mut() else { return };
        let next = boot.tree.size();
        // (kind, message, the location when it is not this receipt's)
        let mut problems: Vec<(&'static str, String, Option<String>)> = Vec::new();
        if seq < next || boot.held.contains_key(&seq) {
            problems.push(("duplicate", format!("receipt seq {seq} appears twice"), None));
        } else {
            if let Some(max) = boot.max_seq
                && seq < max
            {
                let m = format!("receipt seq {seq} appears after seq {max}: the log is not in sequence order");
                problems.push(("reordered", m, None));
            }
            boot.max_seq = Some(boot.max_seq.map_or(seq, |m| m.max(seq)));
            let held = Held { leaf, prev: claims.prev, issued_at: claims.issued_at, location: location.to_owned() };
            boot.held.insert(seq, held);
            // Fold in every receipt that is now next in sequence, checking each one's link to the last.
            while let Some(h) = boot.held.remove(&boot.tree.size()) {
                let s = boot.tree.size();
                if h.prev != boot.last_leaf {
                    let m = format!(
                        "receipt seq {s} does not name receipt seq {} as its predecessor: the receipt before it was \
                         altered or replaced",
                        s.saturating_sub(1)
                    );
                    problems.push(("chain", m, Some(h.location.clone())));
                }
                boot.last_leaf = h.leaf;
                boot.tree.push(h.leaf);
                boot.uncovered_since.get_or_insert(h.issued_at);
                boot.last_iat = boot.last_iat.max(h.issued_at);
                // A tree head that came ahead of its receipts (a gap, or receipts out of order) is matched once
                // they are all in.
                if let Some((root, at)) = boot.heads_ahead.remove(&boot.tree.size())
                    && let Some((kind, m)) = compare_head(boot, &root)
                {
                    problems.push((kind, m, Some(at)));
                }
            }
            boot.receipts += 1;
            let s = &mut self.summary;
            s.receipts += 1;
            *s.per_model.entry(format!("{} {}", claims.model, hex::encode(claims.model_sha384))).or_default() += 1;
            let pcrs = (0u8..3).map(|i| key.pcrs.get(&i).cloned().unwrap_or_default()).collect::<Vec<_>>().join(" ");
            *s.per_pcrs.entry(pcrs).or_default() += 1;
            *s.per_mode.entry(claims.mode.label().to_owned()).or_default() += 1;
            self.span.0 = Some(self.span.0.map_or(claims.issued_at, |t| t.min(claims.issued_at)));
            self.span.1 = Some(self.span.1.map_or(claims.issued_at, |t| t.max(claims.issued_at)));
        }
        for (kind, message, at) in problems {
            self.find(kind, Some(at.as_deref().unwrap_or(location)), Some(seq), message);
        }
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
        let head = match parsed {
            Ok(h) => h,
            Err(e @ EvidenceError::Signature { .. }) => {
                return self.find("signature", Some(location), None, e.to_string());
            }
            Err(e) => return self.find("malformed", Some(location), None, e.to_string()),
        };
        if head.attestation_sha384 != key.document_sha384 || head.issuer != key.module_id {
            let m = "the tree head names another attestation document or module than its boot's".into();
            return self.find("attestation", Some(location), None, m);
        }
        self.summary.tree_heads += 1;
        let Some(boot) = self.boot.as_mut() else { return };
        boot.heads += 1;
        let size = head.tree_size;
        let problem = if !boot.head_sizes.insert(size) {
            Some(("duplicate", format!("a second tree head for {size} receipts")))
        } else if size < boot.tree.size() {
            Some((
                "tree_head",
                format!(
                    "a tree head for {size} receipts after receipt seq {}: out of place (the enclave's come right after \
                     the last receipt they cover)",
                    boot.tree.size() - 1
                ),
            ))
        } else if size == boot.tree.size() {
            compare_head(boot, &head.root_hash)
        } else {
            // Kept until the frontier reaches its size (receipts it covers are still to come, or missing).
            boot.heads_ahead.insert(size, (head.root_hash, location.to_owned()));
            None
        };
        if let Some((kind, message)) = problem {
            self.find(kind, Some(location), None, message);
        }
    }

    /// The current boot's stream has ended: gaps, heads never reached, the tail after the last head.
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
        // Gaps: between the frontier and each run of held receipts.
        let mut missing_from = boot.tree.size();
        let mut prev_held: Option<(u64, Hash)> = None;
        for (&s, h) in &boot.held {
            if s > missing_from {
                let range = if s - 1 == missing_from {
                    format!("seq {missing_from} is")
                } else {
                    format!("seq {missing_from} to {} are", s - 1)
                };
                find("gap", None, Some(missing_from), format!("{range} missing from the log"), true);
            }
            // The chain among held receipts, where neighbours are both present.
            if let Some((p, leaf)) = prev_held
                && p + 1 == s
                && h.prev != leaf
            {
                find(
                    "chain",
                    Some(h.location.clone()),
                    Some(s),
                    format!("receipt seq {s} does not name receipt seq {p} as its predecessor"),
                    true,
                );
            }
            prev_held = Some((s, h.leaf));
            missing_from = s.saturating_add(1);
        }
        for (size, (_, location)) in &boot.heads_ahead {
            find(
                "tree_head",
                Some(location.clone()),
                None,
                format!(
                    "the tree head signed for {size} receipts cannot be matched: receipts it covers are missing from \
                     the log ({} in sequence)",
                    boot.tree.size()
                ),
                true,
            );
        }
        let total = boot.tree.size();
        if total > boot.covered && boot.key.is_some() {
            let count = total - boot.covered;
            let span = boot.uncovered_since.map_or(0, |t| boot.last_iat.saturating_sub(t));
            let too_long = count > self.every || span > self.secs + CADENCE_SLACK_SECS;
            let message = if too_long {
                format!(
                    "receipts seq {} to {} ({count} receipts over {span} s) are not covered by a signed tree head: the \
                     enclave signs one every {} receipts and {} s, so tree heads were removed from the log",
                    boot.covered,
                    total - 1,
                    self.every,
                    self.secs
                )
            } else {
                format!(
                    "receipts seq {} to {} are not covered by a signed tree head: the log was read while the enclave ran, \
                     the enclave stopped before its next one, or the log was cut after them",
                    boot.covered,
                    total - 1
                )
            };
            find("uncovered", None, Some(boot.covered), message, too_long);
        }
        self.findings.extend(findings);
        let key = boot.key.as_ref();
        self.summary.boots.push(BootSummary {
            boot: boot.name.clone(),
            module_id: key.map(|k| k.module_id.clone()),
            attested_at: key.map(|k| crate::time::format_unix_millis(k.timestamp_ms)),
            image: key.and_then(|k| k.image.clone()),
            pcrs: key.map(|k| k.pcrs.clone()).unwrap_or_default(),
            receipts: boot.receipts,
            tree_heads: boot.heads,
            covered: boot.covered,
        });
    }

    /// The report: verified when no finding is an error.
    pub fn finish(mut self) -> AuditReport {
        self.end_boot();
        let at = |t: u64| crate::time::format_unix_seconds(t.min(i64::MAX as u64) as i64);
        self.summary.first = self.span.0.map(at);
        self.summary.last = self.span.1.map(at);
        AuditReport { verified: !self.findings.iter().any(|f| f.error), findings: self.findings, summary: self.summary }
    }
}

/// Compares a tree head's root with the frontier's (which has exactly the head's size), and records the
/// coverage. A problem to report, if any.
fn compare_head(boot: &mut Boot, root: &Hash) -> Option<(&'static str, String)> {
    let got = boot.tree.root();
    if &got == root {
        boot.covered = boot.tree.size();
        boot.uncovered_since = None;
        return None;
    }
    Some((
        "tree_head",
        format!(
            "the tree head signed for {} receipts has root {}; the log's receipts give {}: the log was altered",
            boot.tree.size(),
            hex::encode(root),
            hex::encode(got)
        ),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::ReceiptKey;
    use super::*;
    use crate::attestation::{Report, TrustAnchor};

    /// A boot whose key is taken as certified (the attestation part is tested with real documents in
    /// tests/tests/evidence.rs): its receipts and tree heads.
    struct Boot {
        key: ReceiptKey,
        certified: CertifiedKey,
        tree: Frontier,
        prev: Hash,
    }

    impl Boot {
        fn new() -> Boot {
            let key = ReceiptKey::from_seed(&[5; 32]).unwrap();
            let certified = CertifiedKey {
                key: *key.public_key(),
                document_sha384: [4; 48],
                boot: super::super::boot_id(key.public_key()),
                module_id: "i-test".into(),
                timestamp_ms: 1_000_000,
                pcrs: BTreeMap::new(),
                image: None,
                debug: false,
                models: BTreeMap::from([("iris".to_owned(), [1; 48])]),
                report: Report {
                    verified: true,
                    at_ms: 0,
                    at: String::new(),
                    root: String::new(),
                    root_sha256: String::new(),
                    checks: vec![],
                    error: None,
                },
            };
            Boot { key, certified, tree: Frontier::new(), prev: [0; 32] }
        }

        fn receipt(&mut self, seq: u64, issued_at: u64) -> Vec<u8> {
            let mut prefix = [0u8; 8];
            prefix.copy_from_slice(&self.certified.boot[..8]);
            let claims = ReceiptClaims {
                issuer: "i-test".into(),
                issued_at,
                boot_prefix: prefix,
                seq,
                prev: self.prev,
                ..crate::evidence::claims::tests::receipt()
            };
            let r = self.key.sign(&claims.encode());
            self.prev = merkle::leaf_hash(&r);
            self.tree.push(self.prev);
            r
        }

        fn head(&self) -> Vec<u8> {
            let head = TreeHeadClaims {
                issuer: "i-test".into(),
                issued_at: 1001,
                attestation_sha384: [4; 48],
                tree_size: self.tree.size(),
                root_hash: self.tree.root(),
            };
            self.key.sign(&head.encode())
        }
    }

    /// `records` (receipts and heads) verified as one boot whose key is certified, cadence (every, secs).
    fn verify(boot: &Boot, records: &[(RecordKind, Vec<u8>)], cadence: (u64, u64)) -> AuditReport {
        let policy = EvidencePolicy::root_only(TrustAnchor::aws_nitro_root_g1());
        let verifier = Verifier::new();
        let mut v = AuditVerifier::new(&policy, &verifier, 2000).with_cadence(cadence.0, cadence.1);
        v.begin_boot("boot");
        if let Some(b) = v.boot.as_mut() {
            b.key = Some(boot.certified.clone());
            b.records = 1;
        }
        for (i, (kind, bytes)) in records.iter().enumerate() {
            v.record(&format!("record {i}"), Record { kind: *kind, bytes });
        }
        v.finish()
    }

    fn errors(r: &AuditReport) -> Vec<&'static str> {
        r.findings.iter().filter(|f| f.error).map(|f| f.kind).collect()
    }

    #[test]
    fn a_long_log_verifies_in_one_pass_with_every_head_matched() {
        // 6,000 receipts and a tree head after every 7: a verifier that recomputed each head's root from the
        // start (as the first one did, found by review) would hash about 2.6 million times here.
        let mut boot = Boot::new();
        let mut records = Vec::new();
        for seq in 0..6_000u64 {
            records.push((RecordKind::Receipt, boot.receipt(seq, 1000)));
            if (seq + 1) % 7 == 0 {
                records.push((RecordKind::TreeHead, boot.head()));
            }
        }
        let r = verify(&boot, &records, (7, 10));
        assert!(r.verified, "{:?}", &r.findings[..r.findings.len().min(3)]);
        assert_eq!(r.summary.boots[0].covered, 6_000 - 6_000 % 7);
        assert_eq!(r.summary.tree_heads, 6_000 / 7);
    }

    #[test]
    fn stripping_the_tree_heads_from_a_long_tail_is_found() {
        // Finding of review: a parent that removes every tree head after some point leaves a tail of
        // uncovered receipts longer than the enclave's cadence allows.
        let mut boot = Boot::new();
        let mut records = Vec::new();
        for seq in 0..50u64 {
            records.push((RecordKind::Receipt, boot.receipt(seq, 1000 + seq)));
            if (seq + 1) % 10 == 0 && seq < 20 {
                records.push((RecordKind::TreeHead, boot.head()));
            }
        }
        let r = verify(&boot, &records, (10, 5));
        let f = r.findings.iter().find(|f| f.kind == "uncovered").unwrap();
        assert!(f.error && f.message.contains("tree heads were removed"), "{f:?}");
        // The same tail within the cadence (a log read while the enclave runs) is a note only.
        let honest = verify(&boot, &records[..records.len() - 25], (10, 5));
        assert!(honest.verified, "{:?}", honest.findings);
        assert!(honest.findings.iter().any(|f| f.kind == "uncovered" && !f.error));
    }

    #[test]
    fn duplicate_and_misplaced_tree_heads_and_receipts_are_named() {
        let mut boot = Boot::new();
        let r0 = boot.receipt(0, 1000);
        let h1 = boot.head();
        let r1 = boot.receipt(1, 1000);
        let r2 = boot.receipt(2, 1000);
        let h3 = boot.head();
        use RecordKind::{Receipt as R, TreeHead as H};
        // A head repeated.
        let rep = verify(
            &boot,
            &[(R, r0.clone()), (H, h1.clone()), (H, h1.clone()), (R, r1.clone()), (R, r2.clone()), (H, h3.clone())],
            (10, 10),
        );
        assert_eq!(errors(&rep), ["duplicate"]);
        // A head moved after receipts it does not cover.
        let moved = verify(
            &boot,
            &[(R, r0.clone()), (R, r1.clone()), (H, h1.clone()), (R, r2.clone()), (H, h3.clone())],
            (10, 10),
        );
        assert_eq!(errors(&moved), ["tree_head"]);
        assert!(moved.findings[0].message.contains("out of place"), "{:?}", moved.findings);
        // A receipt repeated.
        let dup = verify(&boot, &[(R, r0.clone()), (R, r0), (R, r1), (R, r2), (H, h3)], (10, 10));
        assert!(errors(&dup).contains(&"duplicate"), "{:?}", dup.findings);
    }

    #[test]
    fn a_receipt_with_the_largest_sequence_number_is_a_gap_not_an_overflow() {
        // Finding of review: `seq + 1` on u64::MAX, and a loop over every missing number.
        let mut boot = Boot::new();
        let r0 = boot.receipt(0, 1000);
        let last = boot.receipt(u64::MAX, 1000);
        let r = verify(&boot, &[(RecordKind::Receipt, r0), (RecordKind::Receipt, last)], (10, 10));
        let gap = r.findings.iter().find(|f| f.kind == "gap").unwrap();
        assert!(gap.message.contains(&format!("seq 1 to {} are missing", u64::MAX - 1)), "{gap:?}");
    }

    #[test]
    fn a_receipt_of_another_boot_under_the_same_document_digest_is_refused() {
        // Its cti names another boot than the certified key's.
        let mut boot = Boot::new();
        let r0 = boot.receipt(0, 1000);
        let mut other = Boot::new();
        other.certified.boot = [9; 16];
        let r = verify(&other, &[(RecordKind::Receipt, r0)], (10, 10));
        assert_eq!(errors(&r), ["identity"]);
    }
}

//! Evidence on the client's and the auditor's side: turning an answer's receipt into an evidence bundle,
//! adding an inclusion proof from the parent's audit log, and verifying bundles and whole audit logs
//! offline (`veil receipt`, `veil audit`, `veil infer --receipt`, `veil proxy --receipts`).
//!
//! The parent serves the attestation document a bundle needs and the inclusion proofs, and is trusted with
//! neither: the receipt (authenticated inside the sealed answer) names the document by digest, and the
//! proof leads to a tree head the enclave signed.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use veil_protocol::attestation::Verifier;
use veil_protocol::envelope::AnswerReceipt;
use veil_protocol::evidence::bundle::{Bundle, Inclusion, MAX_BUNDLE_LEN};
use veil_protocol::evidence::claims::ReceiptClaims;
use veil_protocol::evidence::log::{MAX_RECORD_LEN, RecordReader};
use veil_protocol::evidence::verify::{
    AuditReport, AuditVerifier, CertifiedKey, EvidencePolicy, verify_receipt, verify_receipt_with,
};
use veil_protocol::evidence::{boot_id, sha384};

use crate::trust::ClientPolicy;
use crate::{Client, ClientError};

/// Why evidence could not be gathered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    #[error(transparent)]
    Fetch(#[from] ClientError),
    #[error("the receipt is malformed: {0}")]
    Receipt(String),
    #[error(
        "the parent serves attestation document {served}, but the receipt names {named}: the parent substituted \
         one"
    )]
    OtherDocument { named: String, served: String },
    #[error("the parent's inclusion proof is malformed: {0}")]
    Proof(String),
}

/// The policy evidence is checked against: a client policy's root, images and models (its age limit is
/// for live documents and plays no part: evidence is verified at its own time).
pub fn evidence_policy(policy: &ClientPolicy) -> EvidencePolicy {
    EvidencePolicy {
        root: policy.root.clone(),
        allow_debug: policy.allow_debug,
        images: policy.images.clone(),
        models: policy.models.clone(),
    }
}

/// Builds evidence bundles from answers, fetching each boot's attestation document once.
#[derive(Debug, Default)]
pub struct BundleMaker {
    documents: Mutex<HashMap<[u8; 48], Vec<u8>>>,
}

impl BundleMaker {
    pub fn new() -> Self {
        Self::default()
    }

    /// The bundle of `receipt`: with the attestation document it names, from `client`'s parent (whose
    /// digest must be the receipt's).
    pub async fn bundle(&self, client: &Client, receipt: &AnswerReceipt) -> Result<Bundle, EvidenceError> {
        let claims = ReceiptClaims::peek(&receipt.receipt).map_err(|e| EvidenceError::Receipt(e.to_string()))?;
        let cached = self.documents.lock().ok().and_then(|d| d.get(&claims.attestation_sha384).cloned());
        let document = match cached {
            Some(d) => d,
            None => {
                let path = format!("/v1/audit/attestation?sha384={}", hex::encode(claims.attestation_sha384));
                let d = client.get(&path).await?;
                let served = sha384(&d);
                if served != claims.attestation_sha384 {
                    return Err(EvidenceError::OtherDocument {
                        named: hex::encode(claims.attestation_sha384),
                        served: hex::encode(served),
                    });
                }
                if let Ok(mut docs) = self.documents.lock() {
                    docs.insert(served, d.clone());
                }
                d
            }
        };
        Ok(Bundle {
            receipt: receipt.receipt.clone(),
            salt: receipt.salt.clone(),
            attestation_document: document,
            inclusion: None,
        })
    }
}

/// Keeps the evidence of many answers in a directory (`veil proxy --receipts DIR`): one bundle per
/// receipt, named `<boot>-<seq>.json`. Each boot's certifying document is verified once against the
/// policy; each receipt's signature against the key it certifies.
#[derive(Debug)]
pub struct ReceiptSink {
    dir: PathBuf,
    policy: EvidencePolicy,
    maker: BundleMaker,
    verifier: Verifier,
    /// Receipt keys already certified, by document digest.
    certified: Mutex<HashMap<[u8; 48], CertifiedKey>>,
    written: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

impl ReceiptSink {
    /// A sink writing into `dir` (created if needed), checking against `policy`.
    pub fn new(dir: PathBuf, policy: EvidencePolicy) -> std::io::Result<ReceiptSink> {
        std::fs::create_dir_all(&dir)?;
        Ok(ReceiptSink {
            dir,
            policy,
            maker: BundleMaker::new(),
            verifier: Verifier::new(),
            certified: Mutex::new(HashMap::new()),
            written: Default::default(),
            failed: Default::default(),
        })
    }

    /// Bundles written, and receipts that could not be kept.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.written.load(Relaxed), self.failed.load(Relaxed))
    }

    /// Keeps `receipt` (of an answer from `client`'s parent): its bundle, checked, written. The path.
    pub async fn keep(&self, client: &Client, receipt: &AnswerReceipt) -> Result<PathBuf, String> {
        let kept = self.keep_inner(client, receipt).await;
        let counter = if kept.is_ok() { &self.written } else { &self.failed };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        kept
    }

    async fn keep_inner(&self, client: &Client, receipt: &AnswerReceipt) -> Result<PathBuf, String> {
        let bundle = self.maker.bundle(client, receipt).await.map_err(|e| e.to_string())?;
        let digest = sha384(&bundle.attestation_document);
        let known = self.certified.lock().ok().and_then(|c| c.get(&digest).cloned());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let report = match &known {
            // The document was certified for an earlier receipt: everything else is checked again.
            Some(key) => verify_receipt_with(&bundle, key, None, None, &self.policy, now),
            None => verify_receipt(&bundle, None, None, &self.policy, &self.verifier, now),
        };
        if !report.verified {
            return Err(report.error.unwrap_or_else(|| "the evidence does not verify".into()));
        }
        if known.is_none()
            && let (Some(key), Ok(mut c)) = (report.certified_by, self.certified.lock())
        {
            c.insert(digest, key);
        }
        let name = bundle_file_name(&bundle).ok_or("the receipt does not decode")?;
        let path = self.dir.join(name);
        write_bundle(&path, &bundle).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }
}

/// The inclusion proof of `bundle`'s receipt, from the parent's audit log (`GET /v1/audit/proof`). The
/// proof is not trusted here: `verify_receipt` checks it against the tree head the enclave signed.
pub async fn fetch_inclusion(client: &Client, bundle: &Bundle) -> Result<Inclusion, EvidenceError> {
    use base64::Engine;
    let claims = ReceiptClaims::peek(&bundle.receipt).map_err(|e| EvidenceError::Receipt(e.to_string()))?;
    let key = veil_protocol::attestation::UnverifiedDocument::parse(&bundle.attestation_document)
        .ok()
        .and_then(|d| d.unverified_claims().user_data.clone())
        .and_then(|u| veil_protocol::attestation::UserDataCommitment::decode(&u).ok())
        .and_then(|c| c.receipt_key)
        .ok_or_else(|| EvidenceError::Receipt("the bundle's attestation document names no receipt key".into()))?;
    let path = format!("/v1/audit/proof?seq={}&boot={}", claims.seq, hex::encode(boot_id(&key)));
    let body = client.get(&path).await?;
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| EvidenceError::Proof(e.to_string()))?;
    let field = |name: &str| v.get(name).ok_or_else(|| EvidenceError::Proof(format!("no {name}")));
    let tree_head = base64::engine::general_purpose::STANDARD
        .decode(field("tree_head")?.as_str().unwrap_or_default())
        .map_err(|e| EvidenceError::Proof(format!("tree_head: {e}")))?;
    let path = field("path")?
        .as_array()
        .ok_or_else(|| EvidenceError::Proof("path is not a list".into()))?
        .iter()
        .take(veil_protocol::evidence::bundle::MAX_PATH_LEN + 1)
        .map(|h| {
            h.as_str()
                .and_then(|s| hex::decode(s).ok())
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| EvidenceError::Proof("a path entry is not 32 bytes of hex".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Inclusion {
        tree_head,
        tree_size: field("tree_size")?.as_u64().ok_or_else(|| EvidenceError::Proof("tree_size".into()))?,
        leaf_index: field("leaf_index")?.as_u64().ok_or_else(|| EvidenceError::Proof("leaf_index".into()))?,
        path,
    })
}

/// Reads an evidence bundle file (at most [`MAX_BUNDLE_LEN`] bytes).
pub fn read_bundle(path: &Path) -> Result<Bundle, String> {
    let bytes = read_bounded(path, MAX_BUNDLE_LEN as u64)?;
    Bundle::from_json(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads a file of at most `max` bytes (a device or a pipe that never ends stops there too).
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > max {
        return Err(format!("{} is more than the {max} bytes read", path.display()));
    }
    Ok(bytes)
}

/// The largest audit-log file verified: `veil-parent` rotates files at `--audit-rotate-bytes` (at most
/// 1 GiB), and a file can pass that by one batch.
pub const MAX_LOG_FILE_LEN: u64 = (1 << 30) + (64 << 20);

/// The regular files of a boot directory ending in `.cborseq`, sorted; anything else of that name (a
/// symbolic link, a pipe, a device: a parent's trap for the verifier) is returned apart, unread.
fn log_files(boot_dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), String> {
    let (mut files, mut odd) = (Vec::new(), Vec::new());
    for f in std::fs::read_dir(boot_dir).map_err(|e| format!("cannot read {}: {e}", boot_dir.display()))? {
        let f = f.map_err(|e| format!("cannot read {}: {e}", boot_dir.display()))?;
        let path = f.path();
        if path.extension().is_none_or(|x| x != "cborseq") {
            continue;
        }
        // `DirEntry::file_type` does not follow symbolic links.
        if f.file_type().is_ok_and(|t| t.is_file()) { files.push(path) } else { odd.push(path) }
    }
    files.sort();
    odd.sort();
    Ok((files, odd))
}

/// Writes `bundle` to `path` atomically (a temporary file renamed over it).
pub fn write_bundle(path: &Path, bundle: &Bundle) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bundle.to_json())?;
    std::fs::rename(&tmp, path)
}

/// A file name for a bundle in a directory of bundles: `<boot prefix>-<seq>.json`.
pub fn bundle_file_name(bundle: &Bundle) -> Option<String> {
    let c = ReceiptClaims::peek(&bundle.receipt).ok()?;
    Some(format!("{}-{:012}.json", hex::encode(c.boot_prefix), c.seq))
}

/// One boot directory of an audit log: its name, its log files in order, and the entries named like log
/// files that are not regular files (reported, never read).
pub type BootFiles = (String, Vec<PathBuf>, Vec<PathBuf>);

/// The boot directories of an audit log, oldest first (by their attestation documents' timestamps, read
/// unverified for ordering only), and each one's files in order.
pub fn audit_layout(dir: &Path) -> Result<Vec<BootFiles>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read the audit log {}: {e}", dir.display()))?;
    let mut boots = Vec::new();
    for e in entries {
        let e = e.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let path = e.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
        // Boot directories are directories, not links to somewhere else.
        if !e.file_type().is_ok_and(|t| t.is_dir()) || !name.starts_with("boot-") {
            continue;
        }
        let (files, odd) = log_files(&path)?;
        // The first record only: the boot's attestation document.
        let started = files
            .first()
            .and_then(|f| read_head(f, MAX_RECORD_LEN as u64 + 16))
            .and_then(|b| {
                RecordReader::new(&b).next().and_then(|r| r.ok()).and_then(|r| {
                    veil_protocol::attestation::UnverifiedDocument::parse(r.bytes)
                        .ok()
                        .map(|d| d.unverified_claims().timestamp_ms)
                })
            })
            .unwrap_or(u64::MAX);
        boots.push((started, name, files, odd));
    }
    if boots.is_empty() {
        return Err(format!(
            "{} holds no boot-* directory: is it a Veil audit log (veil-parent --audit-log)?",
            dir.display()
        ));
    }
    boots.sort();
    Ok(boots.into_iter().map(|(_, n, f, o)| (n, f, o)).collect())
}

/// The first `max` bytes of a file (fewer if it is shorter).
fn read_head(path: &Path, max: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path).ok()?.take(max).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// Verifies a whole audit log directory offline: every record of every boot, in file order. `cadence` is
/// the enclave's (`tree_head_every`, `tree_head_secs`).
pub fn verify_audit_log(
    dir: &Path,
    policy: &EvidencePolicy,
    now_unix: u64,
    cadence: (u64, u64),
) -> Result<AuditReport, String> {
    let layout = audit_layout(dir)?;
    let verifier = Verifier::new();
    let mut audit = AuditVerifier::new(policy, &verifier, now_unix).with_cadence(cadence.0, cadence.1);
    for (boot, files, odd) in &layout {
        audit.begin_boot(boot);
        let shown = |file: &PathBuf| file.strip_prefix(dir).unwrap_or(file).display().to_string();
        for file in odd {
            audit.unreadable_file(&shown(file), "not a regular file (a link, a pipe or a device): not read".into());
        }
        for (i, file) in files.iter().enumerate() {
            // A file that cannot be read is a finding, not the end of the audit: a parent must not turn
            // "the evidence is wrong" into "could not read the evidence" with one chmod.
            let bytes = match read_bounded(file, MAX_LOG_FILE_LEN) {
                Ok(b) => b,
                Err(e) => {
                    audit.unreadable_file(&shown(file), e);
                    continue;
                }
            };
            let shown = shown(file);
            let last_file = i + 1 == files.len();
            let mut reader = RecordReader::new(&bytes);
            loop {
                let at = reader.offset();
                match reader.next_record() {
                    None => break,
                    Some(Ok(record)) => audit.record(&format!("{shown} @ byte {at}"), record),
                    Some(Err(e)) => audit.record_error(&format!("{shown} @ byte {}", e.offset), &e, last_file),
                }
            }
        }
        audit.end_boot();
    }
    Ok(audit.finish())
}

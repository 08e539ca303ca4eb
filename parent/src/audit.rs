//! The audit log: the receipts and signed tree heads the enclave hands over, appended to files, and the
//! inclusion proofs clients ask for.
//!
//! The parent is untrusted, and nothing here needs trusting: the enclave signs every record, and the
//! next tree head it signs shows any receipt this log dropped, reordered or altered. What this module
//! owes an honest operator is durability and order: records are written in the order the enclave numbers
//! them, each batch flushed (and by default `fdatasync`ed) before it is acknowledged, so that the enclave
//! keeps and resends what was not; a record number already stored is skipped, so a resend after a
//! reconnection writes nothing twice.
//!
//! Layout, with `--audit-log DIR` (one directory per enclave boot, rotated files named by the number of
//! their first record; a boot's records are the concatenation of its files in name order):
//!
//! ```text
//! DIR/boot-<32 hex: the boot id>/0000000000000000.cborseq     records 0..k
//!                                /000000000000xxxx.cborseq     records k.. (after --audit-rotate-bytes)
//! ```
//!
//! In memory, per boot seen: the attestation document, the signed tree heads (a few hundred bytes each)
//! and, with a directory, the Merkle tree's levels (64 bytes per receipt) for proofs. Without a directory
//! only the current boot's document and latest tree head are kept, for `GET /v1/audit/attestation` and
//! `/v1/audit/head`; there are no proofs and nothing is written.
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use veil_protocol::evidence::Hash;

use crate::metrics::AuditLabels;
use veil_protocol::evidence::claims::{ReceiptClaims, TreeHeadClaims};
use veil_protocol::evidence::cose::SignedObject;
use veil_protocol::evidence::log::{RecordKind, RecordReader, write_record};
use veil_protocol::evidence::merkle::{self, Store};

/// Default size at which a file is closed and the next one started.
pub const DEFAULT_ROTATE_BYTES: u64 = 64 << 20;

/// Why records were not stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("the audit records are malformed: {0}")]
    Malformed(String),
    #[error("the audit log could not be written: {0}")]
    Io(#[from] std::io::Error),
}

/// An inclusion proof, as `GET /v1/audit/proof` answers it.
#[derive(Debug, Clone)]
pub struct Proof {
    pub boot: [u8; 16],
    pub leaf_index: u64,
    pub tree_size: u64,
    pub tree_head: Vec<u8>,
    pub path: Vec<Hash>,
}

/// Why there is no proof.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("this parent keeps no audit log (start it with --audit-log DIR)")]
    NoLog,
    #[error("no boot {0} in the audit log")]
    UnknownBoot(String),
    #[error("receipt seq {seq} is not in the audit log of boot {boot} (it holds {held})")]
    NotLogged { boot: String, seq: u64, held: u64 },
    #[error("receipt seq {0} is logged but no signed tree head covers it yet: ask again in a few seconds")]
    NotYetCovered(u64),
    #[error("the audit log of boot {0} cannot be read: {1}")]
    Unreadable(String, String),
}

/// One boot's log.
#[derive(Debug, Default)]
struct BootLog {
    /// The number of the next record expected.
    next: u64,
    document: Option<Vec<u8>>,
    /// Signed tree heads: (tree size, bytes), in order.
    heads: Vec<(u64, Vec<u8>)>,
    /// The receipts' tree (with a directory only).
    tree: Store,
    /// The file being appended to.
    file: Option<File>,
    /// False once a record could not be placed in the tree (a gap in what the enclave sent): proofs stop.
    tree_whole: bool,
}

/// The audit log.
#[derive(Debug)]
pub struct AuditLog {
    dir: Option<PathBuf>,
    rotate_bytes: u64,
    fsync: bool,
    inner: Mutex<Inner>,
    metrics: Option<(Family<AuditLabels, Counter>, Counter)>,
}

#[derive(Debug, Default)]
struct Inner {
    boots: HashMap<[u8; 16], BootLog>,
    current: Option<[u8; 16]>,
}

fn boot_dir_name(boot: &[u8; 16]) -> String {
    format!("boot-{}", hex::encode(boot))
}

impl AuditLog {
    /// A log in `dir` (created if needed), or, with `None`, a log that stores nothing.
    pub fn new(dir: Option<PathBuf>, rotate_bytes: u64, fsync: bool) -> Result<AuditLog, AuditError> {
        if let Some(d) = &dir {
            std::fs::create_dir_all(d)?;
        }
        Ok(AuditLog {
            dir,
            rotate_bytes: rotate_bytes.max(4096),
            fsync,
            inner: Mutex::new(Inner::default()),
            metrics: None,
        })
    }

    /// Counts what is stored (and what fails) in the parent's metrics.
    pub fn with_metrics(mut self, metrics: &crate::metrics::Metrics) -> AuditLog {
        self.metrics = Some((metrics.audit_records.clone(), metrics.audit_failures.clone()));
        self
    }

    /// Stores records, counting them (see [`AuditLog::append`]).
    pub fn append_counted(&self, boot: &[u8], first: u64, records: &[u8]) -> Result<u64, AuditError> {
        let result = self.append(boot, first, records);
        if let Some((stored, failures)) = &self.metrics {
            match &result {
                Ok(_) => {
                    for r in RecordReader::new(records).flatten() {
                        let kind = match r.kind {
                            RecordKind::Attestation => "attestation",
                            RecordKind::Receipt => "receipt",
                            RecordKind::TreeHead => "tree_head",
                        };
                        stored.get_or_create(&AuditLabels { kind }).inc();
                    }
                }
                Err(_) => {
                    failures.inc();
                }
            }
        }
        result
    }

    /// The directory, when it keeps one.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Stores `records` (numbered from `first`) of boot `boot`: the number of the next record it expects.
    pub fn append(&self, boot: &[u8], first: u64, records: &[u8]) -> Result<u64, AuditError> {
        let boot: [u8; 16] =
            boot.try_into().map_err(|_| AuditError::Malformed(format!("a boot id is 16 bytes, got {}", boot.len())))?;
        let mut parsed = Vec::new();
        for r in RecordReader::new(records) {
            parsed.push(r.map_err(|e| AuditError::Malformed(e.error.to_string()))?);
        }
        let mut inner =
            self.inner.lock().map_err(|_| AuditError::Malformed("the audit log's lock is poisoned".into()))?;
        inner.current = Some(boot);
        let log = match inner.boots.entry(boot) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(match &self.dir {
                Some(d) => recover(&d.join(boot_dir_name(&boot)))?,
                None => BootLog { tree_whole: true, ..BootLog::default() },
            }),
        };
        if first > log.next {
            tracing::warn!(
                boot = %hex::encode(boot), expected = log.next, got = first,
                "audit log: records before this batch never arrived; the gap will show in verification"
            );
            log.next = first;
        }
        let mut out = Vec::with_capacity(records.len());
        for (i, record) in parsed.iter().enumerate() {
            let number = first + i as u64;
            if number < log.next {
                continue; // already stored: a resend
            }
            index(&boot, log, record.kind, record.bytes, self.dir.is_some());
            write_record(&mut out, record.kind, record.bytes);
            log.next = number + 1;
        }
        if let Some(dir) = &self.dir
            && !out.is_empty()
        {
            self.write(&dir.join(boot_dir_name(&boot)), log, &out)?;
        }
        Ok(log.next)
    }

    /// Appends encoded records to the boot's current file, rotating first if it is full.
    fn write(&self, dir: &Path, log: &mut BootLog, bytes: &[u8]) -> Result<(), AuditError> {
        let first_number = log.next - count(bytes);
        let full = match &log.file {
            Some(f) => f.metadata()?.len() >= self.rotate_bytes,
            None => true,
        };
        if full {
            std::fs::create_dir_all(dir)?;
            let path = dir.join(format!("{first_number:016}.cborseq"));
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            log.file = Some(file);
        }
        let Some(file) = log.file.as_mut() else { return Ok(()) };
        file.write_all(bytes)?;
        if self.fsync {
            file.sync_data()?;
        }
        Ok(())
    }

    /// The attestation document of `boot` (default: the current boot).
    pub fn document(&self, boot: Option<[u8; 16]>) -> Option<Vec<u8>> {
        let inner = self.inner.lock().ok()?;
        let boot = boot.or(inner.current)?;
        inner.boots.get(&boot).and_then(|b| b.document.clone())
    }

    /// The latest signed tree head of `boot` (default: the current boot).
    pub fn latest_head(&self, boot: Option<[u8; 16]>) -> Option<Vec<u8>> {
        let inner = self.inner.lock().ok()?;
        let boot = boot.or(inner.current)?;
        inner.boots.get(&boot).and_then(|b| b.heads.last().map(|(_, h)| h.clone()))
    }

    /// The current boot.
    pub fn current(&self) -> Option<[u8; 16]> {
        self.inner.lock().ok().and_then(|i| i.current)
    }

    /// An inclusion proof of receipt `seq` of `boot` (default: the current boot), under the first signed
    /// tree head that covers it. A boot this process has not seen is read from its directory.
    pub fn proof(&self, boot: Option<[u8; 16]>, seq: u64) -> Result<Proof, ProofError> {
        let Some(dir) = &self.dir else { return Err(ProofError::NoLog) };
        let mut inner = self.inner.lock().map_err(|_| ProofError::NoLog)?;
        let boot = boot.or(inner.current).ok_or_else(|| ProofError::UnknownBoot("(none yet)".into()))?;
        let shown = hex::encode(boot);
        let log = match inner.boots.entry(boot) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let path = dir.join(boot_dir_name(&boot));
                if !path.is_dir() {
                    return Err(ProofError::UnknownBoot(shown));
                }
                e.insert(recover(&path).map_err(|e| ProofError::Unreadable(shown.clone(), e.to_string()))?)
            }
        };
        if seq >= log.tree.size() {
            return Err(ProofError::NotLogged { boot: shown, seq, held: log.tree.size() });
        }
        let Some((size, head)) = log.heads.iter().find(|(size, _)| *size > seq) else {
            return Err(ProofError::NotYetCovered(seq));
        };
        let path = log.tree.inclusion_path(seq, *size).ok_or(ProofError::NotYetCovered(seq))?;
        Ok(Proof { boot, leaf_index: seq, tree_size: *size, tree_head: head.clone(), path })
    }
}

/// Keeps what proofs and the API need of a record (`keep_tree`: the receipts' tree, for a log on disk).
fn index(boot: &[u8; 16], log: &mut BootLog, kind: RecordKind, bytes: &[u8], keep_tree: bool) {
    match kind {
        RecordKind::Attestation => log.document = Some(bytes.to_vec()),
        RecordKind::TreeHead => {
            let size = SignedObject::parse(bytes, "tree head")
                .ok()
                .and_then(|s| TreeHeadClaims::decode(s.unverified_payload()).ok())
                .map(|c| c.tree_size);
            if let Some(size) = size {
                if !keep_tree {
                    log.heads.clear();
                }
                log.heads.push((size, bytes.to_vec()));
            }
        }
        RecordKind::Receipt if keep_tree => {
            let seq = SignedObject::parse(bytes, "receipt")
                .ok()
                .and_then(|s| ReceiptClaims::decode(s.unverified_payload()).ok())
                .map(|c| c.seq);
            if seq == Some(log.tree.size()) && log.tree_whole {
                log.tree.push(merkle::leaf_hash(bytes));
            } else if log.tree_whole {
                tracing::warn!(boot = %hex::encode(boot), ?seq, expected = log.tree.size(), "audit log: a receipt out of sequence; no proofs past it");
                log.tree_whole = false;
            }
        }
        RecordKind::Receipt => {}
    }
}

/// Records in `bytes` (already checked to parse).
fn count(bytes: &[u8]) -> u64 {
    RecordReader::new(bytes).count() as u64
}

/// Reads a boot's directory back (after a restart of the parent): its records, its tree and heads, and
/// where to append. A file cut short inside a record (a crash while appending) is truncated to its last
/// whole record; the enclave resends the rest.
fn recover(dir: &Path) -> Result<BootLog, AuditError> {
    let mut log = BootLog { tree_whole: true, ..BootLog::default() };
    if !dir.is_dir() {
        return Ok(log);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cborseq"))
        .collect();
    files.sort();
    let boot = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("boot-"))
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .unwrap_or_default();
    for (i, path) in files.iter().enumerate() {
        let bytes = std::fs::read(path)?;
        let mut reader = RecordReader::new(&bytes);
        let mut good = 0;
        while let Some(r) = reader.next_record() {
            match r {
                Ok(record) => {
                    index(&boot, &mut log, record.kind, record.bytes, true);
                    log.next += 1;
                    good = reader.offset();
                }
                Err(e) if e.truncated && i + 1 == files.len() => {
                    tracing::warn!(file = %path.display(), at = e.offset, "audit log: truncating a record cut short");
                    OpenOptions::new().write(true).open(path)?.set_len(good as u64)?;
                    break;
                }
                Err(e) => return Err(AuditError::Malformed(format!("{}: {}", path.display(), e.error))),
            }
        }
        if i + 1 == files.len() {
            log.file = Some(OpenOptions::new().append(true).open(path)?);
        }
    }
    Ok(log)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use veil_protocol::evidence::{Mode, ReceiptClaims, ReceiptKey, TreeHeadClaims};

    use super::*;

    const BOOT: [u8; 16] = [0xb0; 16];

    /// A boot's records as an enclave sends them: a stand-in document, `n` signed receipts and a tree head
    /// after every `every`.
    fn stream(n: u64, every: u64) -> Vec<Vec<u8>> {
        let key = ReceiptKey::from_seed(&[3; 32]).unwrap();
        let mut out = vec![record(RecordKind::Attestation, b"document")];
        let mut tree = merkle::Frontier::new();
        let mut prev = [0u8; 32];
        for seq in 0..n {
            let claims = ReceiptClaims {
                issuer: "i-test".into(),
                issued_at: 1,
                boot_prefix: [0xb0; 8],
                model: "iris".into(),
                model_sha384: [1; 48],
                request_digest: [2; 32],
                response_digest: [3; 32],
                status: 200,
                mode: Mode::Kms,
                attestation_sha384: [4; 48],
                seq,
                prev,
            };
            let receipt = key.sign(&claims.encode());
            prev = merkle::leaf_hash(&receipt);
            tree.push(prev);
            out.push(record(RecordKind::Receipt, &receipt));
            if (seq + 1) % every == 0 {
                let head = TreeHeadClaims {
                    issuer: "i-test".into(),
                    issued_at: 2,
                    attestation_sha384: [4; 48],
                    tree_size: tree.size(),
                    root_hash: tree.root(),
                };
                out.push(record(RecordKind::TreeHead, &key.sign(&head.encode())));
            }
        }
        out
    }

    fn record(kind: RecordKind, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_record(&mut out, kind, bytes);
        out
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut f: Vec<PathBuf> =
            std::fs::read_dir(dir.join(boot_dir_name(&BOOT))).unwrap().map(|e| e.unwrap().path()).collect();
        f.sort();
        f
    }

    fn logged(dir: &Path) -> Vec<u8> {
        files(dir).iter().flat_map(|f| std::fs::read(f).unwrap()).collect()
    }

    #[test]
    fn records_are_stored_once_in_order_across_resends_rotations_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let records = stream(9, 4);
        let all: Vec<u8> = records.concat();
        let log = AuditLog::new(Some(dir.path().to_path_buf()), 4096, true).unwrap();
        // Records 0..5, then 3..8 again (a resend after a lost acknowledgement), then the rest.
        assert_eq!(log.append(&BOOT, 0, &records[..5].concat()).unwrap(), 5);
        assert_eq!(log.append(&BOOT, 3, &records[3..8].concat()).unwrap(), 8);
        // A parent restart: a new log over the same directory picks up where the files end.
        drop(log);
        let log = AuditLog::new(Some(dir.path().to_path_buf()), 4096, true).unwrap();
        assert_eq!(log.append(&BOOT, 8, &records[8..].concat()).unwrap(), records.len() as u64);
        assert_eq!(logged(dir.path()), all, "every record once, in order");
        // Proofs: receipt 5 is covered by the head over 8 receipts, receipt 8 by none yet.
        let p = log.proof(None, 5).unwrap();
        assert_eq!((p.leaf_index, p.tree_size), (5, 8));
        let leaves: Vec<Hash> = RecordReader::new(&all)
            .filter_map(|r| r.ok())
            .filter(|r| r.kind == RecordKind::Receipt)
            .map(|r| merkle::leaf_hash(r.bytes))
            .collect();
        merkle::verify_inclusion(&leaves[5], 5, 8, &p.path, &merkle::root(&leaves[..8])).unwrap();
        assert_eq!(log.proof(None, 8).unwrap_err(), ProofError::NotYetCovered(8));
        assert!(matches!(log.proof(None, 9).unwrap_err(), ProofError::NotLogged { .. }));
        assert!(matches!(log.proof(Some([1; 16]), 0).unwrap_err(), ProofError::UnknownBoot(_)));
        assert_eq!(log.document(None).unwrap(), b"document");
    }

    #[test]
    fn a_record_cut_short_by_a_crash_is_truncated_and_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let records = stream(3, 3);
        let log = AuditLog::new(Some(dir.path().to_path_buf()), DEFAULT_ROTATE_BYTES, false).unwrap();
        log.append(&BOOT, 0, &records[..3].concat()).unwrap();
        drop(log);
        // The crash: half of record 3 reached the file, and the enclave never got an acknowledgement.
        let file = files(dir.path()).pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all(&records[3][..records[3].len() / 2]).unwrap();
        drop(f);
        let log = AuditLog::new(Some(dir.path().to_path_buf()), DEFAULT_ROTATE_BYTES, false).unwrap();
        assert_eq!(log.append(&BOOT, 3, &records[3..].concat()).unwrap(), records.len() as u64);
        assert_eq!(logged(dir.path()), records.concat());
    }

    #[test]
    fn without_a_directory_only_the_document_and_latest_head_are_kept() {
        let log = AuditLog::new(None, DEFAULT_ROTATE_BYTES, false).unwrap();
        let records = stream(4, 2);
        assert_eq!(log.append(&BOOT, 0, &records.concat()).unwrap(), records.len() as u64);
        assert_eq!(log.document(None).unwrap(), b"document");
        assert!(log.latest_head(None).is_some());
        assert_eq!(log.proof(None, 0).unwrap_err(), ProofError::NoLog);
        // Malformed input from the enclave side is an error, not a panic.
        assert!(matches!(log.append(&BOOT, 0, b"\x82\x09"), Err(AuditError::Malformed(_))));
        assert!(matches!(log.append(&[1; 3], 0, b""), Err(AuditError::Malformed(_))));
    }
}

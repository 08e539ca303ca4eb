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
//! For proofs, each boot's directory also holds `leaves.sha256`: the receipts' RFC 9162 leaf hashes, 32
//! bytes each, in sequence order (derived data, rebuilt from the records whenever the parent reads a
//! boot back). In memory, per boot seen: the attestation document, the signed tree heads (a few hundred
//! bytes each), and the Merkle tree above chunks of 256 leaves (a quarter of a byte per receipt; a proof
//! reads at most two chunks' leaf hashes from the file). Without a directory only the current boot's
//! document and latest tree head are kept, for `GET /v1/audit/attestation` and `/v1/audit/head`; there
//! are no proofs and nothing is written.
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use veil_protocol::evidence::Hash;

use crate::metrics::AuditLabels;
use veil_protocol::evidence::claims::{ReceiptClaims, TreeHeadClaims};
use veil_protocol::evidence::cose::SignedObject;
use veil_protocol::evidence::log::{MAX_RECORD_LEN, RecordKind, RecordReader, write_record};
use veil_protocol::evidence::merkle::{self, LeafSource, Store};

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
    /// Another proof for an earlier boot is reading its log: one such read at a time, so that a flood of
    /// proof requests for old boots cannot tie up the threads the enclave's appends need.
    #[error("another request is reading an earlier boot's log: ask again in a few seconds")]
    Busy,
}

/// One boot's log.
#[derive(Debug, Default)]
struct BootLog {
    /// The number of the next record expected.
    next: u64,
    document: Option<Vec<u8>>,
    /// Signed tree heads: (tree size, bytes), in order.
    heads: Vec<(u64, Vec<u8>)>,
    /// The receipts' tree (with a directory only), and where the leaf hashes it does not keep are.
    tree: Store,
    leaves: Leaves,
    /// Leaf hashes indexed but not yet appended to `leaves.sha256`.
    new_leaves: Vec<Hash>,
    /// The file being appended to.
    file: Option<File>,
    /// False once a record could not be placed in the tree (a gap in what the enclave sent): proofs stop.
    tree_whole: bool,
}

/// Leaves of a tree in chunks of 2^this: the Merkle tree the parent keeps in memory is 1/256 of the leaves.
const CHUNK_LOG2: u32 = 8;
/// The file of a boot's leaf hashes.
const LEAVES_FILE: &str = "leaves.sha256";

/// Where a boot's leaf hashes are read from, for proofs.
#[derive(Debug, Default)]
enum Leaves {
    /// Not kept (no directory): no proofs.
    #[default]
    None,
    /// `leaves.sha256` in the boot's directory.
    File(PathBuf),
    /// In memory (a boot read back for a proof, whose file could not be trusted to match).
    Memory(Vec<Hash>),
}

impl LeafSource for Leaves {
    fn leaves(&self, start: u64, len: u64) -> Option<Vec<Hash>> {
        match self {
            Leaves::None => None,
            Leaves::Memory(v) => v.leaves(start, len),
            Leaves::File(path) => {
                use std::io::Seek;
                let mut f = File::open(path).ok()?;
                f.seek(std::io::SeekFrom::Start(start.checked_mul(32)?)).ok()?;
                let mut buf = vec![0u8; usize::try_from(len.checked_mul(32)?).ok()?];
                f.read_exact(&mut buf).ok()?;
                Some(buf.chunks_exact(32).map(|c| c.try_into().unwrap_or([0; 32])).collect())
            }
        }
    }
}

/// The audit log.
#[derive(Debug)]
pub struct AuditLog {
    dir: Option<PathBuf>,
    rotate_bytes: u64,
    fsync: bool,
    inner: Mutex<Inner>,
    /// The last boot read back for a proof.
    old: Mutex<OldBoot>,
    metrics: Option<(Family<AuditLabels, Counter>, Counter)>,
}

#[derive(Debug, Default)]
struct Inner {
    boots: HashMap<[u8; 16], BootLog>,
    current: Option<[u8; 16]>,
}

/// A boot read back for proofs (not one being written).
type OldBoot = Option<([u8; 16], BootLog)>;

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
            old: Mutex::new(None),
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
                Some(d) => recover(&d.join(boot_dir_name(&boot)), true)?,
                None => BootLog { tree_whole: true, ..BootLog::default() },
            }),
        };
        let next = if first > log.next {
            tracing::warn!(
                boot = %hex::encode(boot), expected = log.next, got = first,
                "audit log: records before this batch never arrived; the gap will show in verification"
            );
            first
        } else {
            log.next
        };
        // What is new in this batch (a resend repeats records already stored: they are skipped).
        let skip = usize::try_from(next - first).unwrap_or(usize::MAX);
        let new = parsed.get(skip..).unwrap_or(&[]);
        if new.is_empty() {
            return Ok(log.next);
        }
        let after = next
            .checked_add(new.len() as u64)
            .ok_or_else(|| AuditError::Malformed(format!("record number {next} plus {} overflows", new.len())))?;
        let mut out = Vec::with_capacity(records.len());
        for record in new {
            write_record(&mut out, record.kind, record.bytes);
        }
        // Stored first, counted after: a batch that fails to reach the disk changes nothing, so the
        // enclave's resend of it is written, not skipped.
        if let Some(dir) = &self.dir {
            self.write(&dir.join(boot_dir_name(&boot)), log, &out, next)?;
        }
        for record in new {
            index(&boot, log, record.kind, record.bytes, self.dir.is_some());
        }
        log.next = after;
        if let Some(dir) = &self.dir {
            flush_leaves(&dir.join(boot_dir_name(&boot)), log);
        }
        Ok(log.next)
    }

    /// Appends encoded records (the first of them record number `first`) to the boot's current file,
    /// rotating first if it is full. A failed write is undone (the file cut back to where it was) and the
    /// file closed, so that nothing half-written stays in the log.
    fn write(&self, dir: &Path, log: &mut BootLog, bytes: &[u8], first: u64) -> Result<(), AuditError> {
        let full = match &log.file {
            Some(f) => f.metadata()?.len() >= self.rotate_bytes,
            None => true,
        };
        if full {
            let new_dir = !dir.is_dir();
            std::fs::create_dir_all(dir)?;
            let path = dir.join(format!("{first:016}.cborseq"));
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            if self.fsync {
                // The new file's name, and a new boot's directory, must survive a crash too.
                File::open(dir)?.sync_all()?;
                if new_dir && let Some(parent) = dir.parent() {
                    File::open(parent)?.sync_all()?;
                }
            }
            log.file = Some(file);
        }
        let Some(file) = log.file.as_mut() else { return Ok(()) };
        let before = file.metadata()?.len();
        let written = file.write_all(bytes).and_then(|()| if self.fsync { file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            let _ = file.set_len(before);
            log.file = None;
            return Err(e.into());
        }
        Ok(())
    }

    /// The attestation document of `boot` (default: the current boot).
    pub fn document(&self, boot: Option<[u8; 16]>) -> Option<Vec<u8>> {
        let inner = self.inner.lock().ok()?;
        let boot = boot.or(inner.current)?;
        inner.boots.get(&boot).and_then(|b| b.document.clone())
    }

    /// The attestation document whose SHA-384 is `sha384`, of any boot this parent has seen or keeps (what
    /// a client behind a load balancer, or after a restart, needs for a receipt's bundle).
    pub fn document_by_digest(&self, sha384: &[u8; 48]) -> Option<Vec<u8>> {
        let matches = |d: &Vec<u8>| veil_protocol::evidence::sha384(d) == *sha384;
        if let Ok(inner) = self.inner.lock()
            && let Some(doc) = inner.boots.values().filter_map(|b| b.document.as_ref()).find(|d| matches(d))
        {
            return Some(doc.clone());
        }
        // Each boot's first record, read from its first file (not under the lock the enclave's appends take).
        let dir = self.dir.as_ref()?;
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            // A stray entry (a file, lost+found) is not a boot: it must not end the search.
            let Some(first) = sorted_files(&entry.path()).ok().and_then(|f| f.into_iter().next()) else { continue };
            let mut head = Vec::new();
            let read = File::open(&first).and_then(|f| f.take(MAX_RECORD_LEN as u64 + 16).read_to_end(&mut head));
            if read.is_err() {
                continue;
            }
            if let Some(Ok(r)) = RecordReader::new(&head).next()
                && r.kind == RecordKind::Attestation
                && matches(&r.bytes.to_vec())
            {
                return Some(r.bytes.to_vec());
            }
        }
        None
    }

    /// The latest signed tree head of `boot` (default: the current boot).
    pub fn latest_head(&self, boot: Option<[u8; 16]>) -> Option<Vec<u8>> {
        let inner = self.inner.lock().ok()?;
        let boot = boot.or(inner.current)?;
        inner.boots.get(&boot).and_then(|b| b.heads.last().map(|(_, h)| h.clone()))
    }

    /// An inclusion proof of receipt `seq` of `boot` (default: the current boot), under the first signed
    /// tree head that covers it. A boot this process is not writing is read from its directory, read-only
    /// and without holding the lock the enclave's appends take, and kept (one at a time) for further proofs.
    pub fn proof(&self, boot: Option<[u8; 16]>, seq: u64) -> Result<Proof, ProofError> {
        let Some(dir) = &self.dir else { return Err(ProofError::NoLog) };
        {
            let inner = self.inner.lock().map_err(|_| ProofError::NoLog)?;
            let boot = boot.or(inner.current).ok_or_else(|| ProofError::UnknownBoot("(none yet)".into()))?;
            if let Some(log) = inner.boots.get(&boot) {
                return proof_of(boot, log, seq);
            }
        }
        let Some(boot) = boot else { return Err(ProofError::UnknownBoot("(none yet)".into())) };
        let shown = hex::encode(boot);
        let mut old = match self.old.try_lock() {
            Ok(old) => old,
            Err(std::sync::TryLockError::WouldBlock) => return Err(ProofError::Busy),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        };
        if let Some((b, log)) = old.as_ref()
            && *b == boot
        {
            return proof_of(boot, log, seq);
        }
        let path = dir.join(boot_dir_name(&boot));
        if !path.is_dir() {
            return Err(ProofError::UnknownBoot(shown));
        }
        let log = recover(&path, false).map_err(|e| ProofError::Unreadable(shown, e.to_string()))?;
        let proof = proof_of(boot, &log, seq);
        *old = Some((boot, log));
        proof
    }
}

/// Appends the leaf hashes indexed since the last flush to the boot's `leaves.sha256` (derived data: on a
/// failure, proofs stop for this boot until the parent reads it back and rebuilds the file).
fn flush_leaves(dir: &Path, log: &mut BootLog) {
    if log.new_leaves.is_empty() {
        return;
    }
    let path = dir.join(LEAVES_FILE);
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(&log.new_leaves.concat()));
    log.new_leaves.clear();
    match written {
        Ok(()) => {
            if matches!(log.leaves, Leaves::None) {
                log.leaves = Leaves::File(path);
            }
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "audit log: the leaf hashes could not be written; no proofs for this boot until a restart");
            log.tree_whole = false;
        }
    }
}

/// The proof of receipt `seq` in `log`.
fn proof_of(boot: [u8; 16], log: &BootLog, seq: u64) -> Result<Proof, ProofError> {
    if seq >= log.tree.size() {
        return Err(ProofError::NotLogged { boot: hex::encode(boot), seq, held: log.tree.size() });
    }
    let Some((size, head)) = log.heads.iter().find(|(size, _)| *size > seq) else {
        return Err(ProofError::NotYetCovered(seq));
    };
    if !log.tree_whole {
        return Err(ProofError::Unreadable(
            hex::encode(boot),
            "the log has a gap or its leaf hashes are missing".into(),
        ));
    }
    let path = log
        .tree
        .inclusion_path(seq, *size, &log.leaves)
        .ok_or_else(|| ProofError::Unreadable(hex::encode(boot), "its leaf hashes cannot be read".into()))?;
    Ok(Proof { boot, leaf_index: seq, tree_size: *size, tree_head: head.clone(), path })
}

/// A boot directory's record files, in order (by the number of their first record).
fn sorted_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cborseq"))
        .collect();
    files.sort();
    Ok(files)
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
                let leaf = merkle::leaf_hash(bytes);
                log.tree.push(leaf);
                log.new_leaves.push(leaf);
            } else if log.tree_whole {
                tracing::warn!(boot = %hex::encode(boot), ?seq, expected = log.tree.size(), "audit log: a receipt out of sequence; no proofs past it");
                log.tree_whole = false;
            }
        }
        RecordKind::Receipt => {}
    }
}

/// Reads a boot's directory back: its records, tree and heads, and (`writable`: the parent is about to
/// append to this boot again, after a restart) where to append.
///
/// When writable: a last file that ends inside its last record (a crash while appending; at most one
/// record's worth of bytes after the last whole record) is cut back to its last whole record, and the
/// enclave resends the rest. A file damaged anywhere else is moved aside (`.damaged`, kept for the
/// auditor) rather than appended to, and reading goes on with the next file, which names the number of
/// its first record. Read-only (for proofs) nothing is changed.
fn recover(dir: &Path, writable: bool) -> Result<BootLog, AuditError> {
    let mut log = BootLog { tree_whole: true, tree: Store::with_chunks(CHUNK_LOG2), ..BootLog::default() };
    if !dir.is_dir() {
        return Ok(log);
    }
    let files = sorted_files(dir)?;
    let boot = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("boot-"))
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .unwrap_or_default();
    let mut last_good: Option<PathBuf> = None;
    for (i, path) in files.iter().enumerate() {
        let named: Option<u64> = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok());
        if let Some(n) = named
            && n > log.next
        {
            log.next = n; // records before this file were lost (a damaged file moved aside)
            log.tree_whole = false;
        }
        let bytes = std::fs::read(path)?;
        let mut reader = RecordReader::new(&bytes);
        let mut good = 0;
        let mut damaged = false;
        while let Some(r) = reader.next_record() {
            match r {
                Ok(record) => {
                    index(&boot, &mut log, record.kind, record.bytes, true);
                    log.next += 1;
                    good = reader.offset();
                }
                Err(e) => {
                    let tail = bytes.len() - good;
                    let cut_short = e.truncated && i + 1 == files.len() && tail <= MAX_RECORD_LEN + 16;
                    if writable && cut_short {
                        tracing::warn!(file = %path.display(), at = e.offset, "audit log: truncating a record cut short");
                        OpenOptions::new().write(true).open(path)?.set_len(good as u64)?;
                    } else if writable {
                        tracing::error!(file = %path.display(), at = e.offset, error = %e.error, "audit log: a damaged file is moved aside");
                        damaged = true;
                    }
                    break;
                }
            }
        }
        if damaged {
            // Never over an earlier damaged copy of the same file: `.damaged`, `.damaged.1`, ...
            let mut aside = path.with_extension("cborseq.damaged");
            let mut n = 0;
            while aside.exists() {
                n += 1;
                aside = path.with_extension(format!("cborseq.damaged.{n}"));
            }
            std::fs::rename(path, &aside)?;
            log.tree_whole = false;
        } else {
            last_good = Some(path.clone());
        }
    }
    if writable
        && let Some(path) = last_good
        && files.last() == Some(&path)
    {
        log.file = Some(OpenOptions::new().append(true).open(&path)?);
    }
    // The leaf hashes, as read from the records: the file is rewritten when the boot is written again;
    // read back for proofs only, it is used if it has exactly those hashes' length (else they are held in
    // memory for this boot).
    let leaves = std::mem::take(&mut log.new_leaves);
    let sidecar = dir.join(LEAVES_FILE);
    if writable {
        std::fs::write(&sidecar, leaves.concat())?;
        log.leaves = Leaves::File(sidecar);
    } else if std::fs::metadata(&sidecar).is_ok_and(|m| m.len() == leaves.len() as u64 * 32) {
        log.leaves = Leaves::File(sidecar);
    } else {
        log.leaves = Leaves::Memory(leaves);
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
        sorted_files(&dir.join(boot_dir_name(&BOOT))).unwrap()
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
        // The leaf hashes file beside the records holds exactly the receipts' leaf hashes.
        let sidecar = std::fs::read(dir.path().join(boot_dir_name(&BOOT)).join(LEAVES_FILE)).unwrap();
        assert_eq!(sidecar, leaves.concat());
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
    fn proofs_past_the_first_chunks_read_their_leaves_from_the_file_and_verify() {
        // The tree in memory stops at chunks of 256 leaves: proofs of receipts in complete chunks read the
        // leaf hashes from leaves.sha256, before and after a restart (which rebuilds the file).
        let dir = tempfile::tempdir().unwrap();
        let records = stream(700, 300);
        let log = AuditLog::new(Some(dir.path().to_path_buf()), DEFAULT_ROTATE_BYTES, false).unwrap();
        log.append(&BOOT, 0, &records.concat()).unwrap();
        let leaves: Vec<Hash> = records
            .iter()
            .filter_map(|r| RecordReader::new(r).next().and_then(|r| r.ok()))
            .filter(|r| r.kind == RecordKind::Receipt)
            .map(|r| merkle::leaf_hash(r.bytes))
            .collect();
        let check = |log: &AuditLog| {
            for seq in [0u64, 255, 256, 299, 300, 511, 598, 599] {
                let p = log.proof(None, seq).unwrap();
                let root = merkle::root(&leaves[..p.tree_size as usize]);
                merkle::verify_inclusion(&leaves[seq as usize], seq, p.tree_size, &p.path, &root).unwrap();
            }
            assert_eq!(log.proof(None, 600).unwrap_err(), ProofError::NotYetCovered(600));
        };
        check(&log);
        drop(log);
        std::fs::write(dir.path().join(boot_dir_name(&BOOT)).join(LEAVES_FILE), b"garbage").unwrap();
        let log = AuditLog::new(Some(dir.path().to_path_buf()), DEFAULT_ROTATE_BYTES, false).unwrap();
        log.append(&BOOT, records.len() as u64, &[]).unwrap();
        check(&log);
    }

    #[test]
    fn a_failed_write_is_written_on_the_resend_not_skipped() {
        // Finding of review: the log counted a batch as stored before writing it, so the enclave's resend
        // after a failed write was skipped as a duplicate and acknowledged, and the records were lost.
        let dir = tempfile::tempdir().unwrap();
        let records = stream(6, 3);
        let log = AuditLog::new(Some(dir.path().to_path_buf()), 4096, true).unwrap();
        assert_eq!(log.append(&BOOT, 0, &records[..2].concat()).unwrap(), 2);
        // The next file cannot be created (a directory stands where it would go): the write fails.
        let log = AuditLog { rotate_bytes: 1, ..log };
        let blocker = dir.path().join(boot_dir_name(&BOOT)).join(format!("{:016}.cborseq", 2));
        std::fs::create_dir(&blocker).unwrap();
        assert!(matches!(log.append(&BOOT, 2, &records[2..5].concat()), Err(AuditError::Io(_))));
        // The enclave resends the same batch once the disk is writable again: it is written.
        std::fs::remove_dir(&blocker).unwrap();
        assert_eq!(log.append(&BOOT, 2, &records[2..5].concat()).unwrap(), 5);
        assert_eq!(log.append(&BOOT, 5, &records[5..].concat()).unwrap(), records.len() as u64);
        assert_eq!(logged(dir.path()), records.concat());
    }

    #[test]
    fn a_damaged_file_is_moved_aside_and_the_files_after_it_are_kept() {
        // Finding of review: a record damaged in the middle of a file made every later append fail, and a
        // damaged length byte could be taken for a cut tail and everything after it deleted.
        let dir = tempfile::tempdir().unwrap();
        let records = stream(12, 4);
        let log = AuditLog::new(Some(dir.path().to_path_buf()), 4096, false).unwrap();
        for (i, r) in records.iter().enumerate() {
            log.append(&BOOT, i as u64, r).unwrap();
        }
        drop(log);
        let files = files(dir.path());
        assert!(files.len() >= 2, "rotation made several files: {files:?}");
        // The first file's second record gets a broken kind.
        let mut first = std::fs::read(&files[0]).unwrap();
        let at = records[0].len() + 1;
        first[at] = 0x19;
        std::fs::write(&files[0], &first).unwrap();
        let log = AuditLog::new(Some(dir.path().to_path_buf()), 4096, false).unwrap();
        // The enclave carries on from where it was: the parent takes the next records.
        let next = records.len() as u64;
        let more = stream(13, 4);
        assert_eq!(log.append(&BOOT, next, &more[next as usize]).unwrap(), next + 1);
        let after: Vec<PathBuf> =
            std::fs::read_dir(dir.path().join(boot_dir_name(&BOOT))).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(after.iter().any(|p| p.to_string_lossy().ends_with(".cborseq.damaged")), "{after:?}");
        for f in &files[1..] {
            assert!(f.exists(), "{} was deleted", f.display());
        }
    }

    #[test]
    fn a_proof_for_an_old_boot_reads_it_back_without_changing_it() {
        // Finding of review: proofs for boots the parent is not writing loaded them for appending (under the
        // lock the enclave's appends take), and could truncate their files.
        let dir = tempfile::tempdir().unwrap();
        let records = stream(4, 2);
        let log = AuditLog::new(Some(dir.path().to_path_buf()), DEFAULT_ROTATE_BYTES, false).unwrap();
        log.append(&BOOT, 0, &records.concat()).unwrap();
        drop(log);
        // A cut record at the end of the old boot's file: a proof must not "repair" it.
        let file = files(dir.path()).pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all(&records[1][..10]).unwrap();
        drop(f);
        let size = std::fs::metadata(&file).unwrap().len();
        let log = AuditLog::new(Some(dir.path().to_path_buf()), DEFAULT_ROTATE_BYTES, false).unwrap();
        log.append(&[0xc0; 16], 0, &stream(1, 1).concat()).unwrap();
        let p = log.proof(Some(BOOT), 1).unwrap();
        assert_eq!((p.leaf_index, p.tree_size), (1, 2));
        assert_eq!(std::fs::metadata(&file).unwrap().len(), size, "a proof changed an old boot's file");
        // It is found by its document's digest too, from the directory.
        let doc = log.document_by_digest(&veil_protocol::evidence::sha384(b"document")).unwrap();
        assert_eq!(doc, b"document");
    }

    #[test]
    fn old_boots_are_found_past_stray_entries_and_read_one_at_a_time() {
        // Findings of review: a stray entry in the log directory ended the search for a document by its
        // digest; and proofs for old boots queued without bound behind one lock.
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(Some(dir.path().to_path_buf()), DEFAULT_ROTATE_BYTES, false).unwrap();
        log.append(&BOOT, 0, &stream(2, 2).concat()).unwrap();
        drop(log);
        std::fs::write(dir.path().join("0-notes.txt"), b"not a boot").unwrap();
        std::fs::create_dir(dir.path().join("0-lost+found")).unwrap();
        let log = AuditLog::new(Some(dir.path().to_path_buf()), DEFAULT_ROTATE_BYTES, false).unwrap();
        let doc = log.document_by_digest(&veil_protocol::evidence::sha384(b"document"));
        assert_eq!(doc.as_deref(), Some(&b"document"[..]));
        let held = log.old.lock().unwrap();
        assert_eq!(log.proof(Some(BOOT), 0).unwrap_err(), ProofError::Busy);
        drop(held);
        assert_eq!(log.proof(Some(BOOT), 0).unwrap().leaf_index, 0);
    }

    #[test]
    fn record_numbers_that_would_overflow_are_refused_and_the_log_goes_on() {
        let log = AuditLog::new(None, DEFAULT_ROTATE_BYTES, false).unwrap();
        let records = stream(2, 2);
        assert!(matches!(log.append(&BOOT, u64::MAX, &records.concat()), Err(AuditError::Malformed(_))));
        assert_eq!(log.append(&[0xc1; 16], 0, &records.concat()).unwrap(), records.len() as u64);
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

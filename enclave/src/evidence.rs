//! Evidence inside the enclave: the receipt key, a signed receipt for every request the model ran, the
//! receipts' hash chain and Merkle tree, signed tree heads, and the queue that hands them to the parent's
//! audit log.
//!
//! One lock orders everything: a receipt takes the next sequence number, names the leaf hash of the receipt
//! before it, is signed, enters the tree and the queue, all under [`Evidence`]'s mutex, so the chain, the
//! tree and the stream the parent receives have one order. Signing under the lock costs one Ed25519
//! signature (tens of microseconds) of serialization; the rest (the salted digests of the plaintexts) is
//! done before taking it. The state is O(log n) however long the enclave runs: the tree is a
//! [`Frontier`], and the queue holds only what the parent has not acknowledged.
//!
//! The parent is not trusted with any of it. It may drop, reorder or rewrite what it stores; the next tree
//! head the enclave signs (every `tree_head_every` receipts, and `tree_head_secs` after any receipt not yet
//! covered) shows it. What the enclave does to keep honest parents honest: it resends what was not
//! acknowledged after a reconnection, and once `max_backlog` records wait it refuses new requests (503)
//! rather than answer without a record.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use veil_protocol::attestation::UnverifiedDocument;
use veil_protocol::envelope::AnswerReceipt;
use veil_protocol::evidence::log::{RecordKind, write_record};
use veil_protocol::evidence::merkle::{self, Frontier};
use veil_protocol::evidence::{
    Hash, Mode, ReceiptClaims, ReceiptKey, SALT_LEN, TreeHeadClaims, boot_id, salted_digest,
};
use veil_protocol::random::RandomSource;
use veil_protocol::time::now_unix;
use zeroize::Zeroizing;

use crate::config::AuditSettings;
use crate::error::EnclaveError;

/// A receipt as the client gets it: the signed receipt and the salt of its digests (the same type the
/// sealed answer carries; its `Debug` prints no salt).
pub type IssuedReceipt = AnswerReceipt;

/// Makes the receipt of an answer from the answer's plaintext (the OHTTP path issues it once the response
/// content is written).
pub type IssueReceipt<'a> = &'a dyn Fn(&[u8]) -> Result<IssuedReceipt, EnclaveError>;

/// Most bytes of records sent to the parent in one message (less when frames are smaller, and halved
/// while a parent keeps refusing: it may take smaller frames than the enclave).
const MAX_BATCH_BYTES: usize = 1 << 20;

/// The boot's chain, tree and queue.
#[derive(Debug)]
struct State {
    /// The attestation document certifying the key, its digest and module id, once the enclave is ready.
    document_sha384: [u8; 48],
    issuer: String,
    next_seq: u64,
    prev: Hash,
    tree: Frontier,
    /// Receipts covered by the last tree head.
    covered: u64,
    /// When the oldest receipt not covered by a tree head was made.
    uncovered_since: Option<Instant>,
    /// Encoded records the parent has not acknowledged, the first of them record number `queue_first`
    /// (shared, so that a batch is assembled outside the lock the request path takes).
    queue: VecDeque<Arc<Vec<u8>>>,
    queue_first: u64,
}

/// The enclave's evidence: its receipt key and its boot's state.
#[derive(Debug)]
pub struct Evidence {
    key: ReceiptKey,
    boot: [u8; 16],
    settings: AuditSettings,
    state: Mutex<Option<State>>,
    backlog: AtomicUsize,
    /// Set once by [`Evidence::start`] (read per request by [`Evidence::admit`], without the lock).
    started: AtomicBool,
    wake: tokio::sync::Notify,
}

impl Evidence {
    /// A new receipt key from `rng` (the kernel RNG, seeded by the NSM). Receipts start with [`Evidence::start`].
    pub fn new(settings: AuditSettings, rng: &dyn RandomSource) -> Result<Evidence, EnclaveError> {
        let key = ReceiptKey::generate(rng)
            .map_err(|_| EnclaveError::Internal("the random number generator failed making the receipt key".into()))?;
        let boot = boot_id(key.public_key());
        Ok(Evidence {
            key,
            boot,
            settings,
            state: Mutex::new(None),
            backlog: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// The public key the attestation commitment names.
    pub fn public_key(&self) -> &[u8; 32] {
        self.key.public_key()
    }

    /// This boot's id (the audit log's directory name for it).
    pub fn boot_id(&self) -> &[u8; 16] {
        &self.boot
    }

    /// Starts the boot's log with `document`, an attestation document committing to the receipt key (and,
    /// made once every model is loaded, to the models): record 0, and the digest every receipt names.
    pub fn start(&self, document: Vec<u8>) -> Result<(), EnclaveError> {
        let parsed = UnverifiedDocument::parse(&document).map_err(|e| {
            EnclaveError::Internal(format!("the NSM's document for the receipt key does not decode: {e}"))
        })?;
        let mut record = Vec::with_capacity(document.len() + 8);
        write_record(&mut record, RecordKind::Attestation, &document);
        let state = State {
            document_sha384: veil_protocol::evidence::sha384(&document),
            issuer: parsed.unverified_claims().module_id.clone(),
            next_seq: 0,
            prev: [0; 32],
            tree: Frontier::new(),
            covered: 0,
            uncovered_since: None,
            queue: VecDeque::from([Arc::new(record)]),
            queue_first: 0,
        };
        let mut guard = self.state.lock().map_err(|_| poisoned())?;
        if guard.is_some() {
            return Err(EnclaveError::Internal("the receipt log was already started".into()));
        }
        *guard = Some(state);
        self.backlog.store(1, Ordering::Release);
        self.started.store(true, Ordering::Release);
        drop(guard);
        self.wake.notify_one();
        Ok(())
    }

    /// True once [`Evidence::start`] has run.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Refuses a new request while the parent has not taken `max_backlog` records (503: try later), and
    /// before the log has started (no receipt could be signed: the model must not run for nothing).
    pub fn admit(&self) -> Result<(), EnclaveError> {
        if !self.started() {
            return Err(EnclaveError::Loading("the receipt log".into()));
        }
        if self.backlog.load(Ordering::Acquire) >= self.settings.max_backlog {
            return Err(EnclaveError::Overloaded("the parent's audit log is not taking receipts"));
        }
        Ok(())
    }

    /// Signs the receipt of one answer: `request` and `response` are the plaintexts the client sent and
    /// receives (the body of each).
    pub fn issue(
        &self,
        model: &str,
        model_sha384: &[u8; 48],
        request: &[u8],
        response: &[u8],
        mode: Mode,
        rng: &dyn RandomSource,
    ) -> Result<IssuedReceipt, EnclaveError> {
        let mut salt = Zeroizing::new([0u8; SALT_LEN]);
        rng.fill(salt.as_mut()).map_err(|_| EnclaveError::Internal("the random number generator failed".into()))?;
        let request_digest = salted_digest(&salt, request);
        let response_digest = salted_digest(&salt, response);
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.boot[..8]);
        let mut guard = self.state.lock().map_err(|_| poisoned())?;
        let state = guard.as_mut().ok_or_else(|| EnclaveError::Loading("the receipt log".into()))?;
        let claims = ReceiptClaims {
            issuer: state.issuer.clone(),
            issued_at: now_unix(),
            boot_prefix: prefix,
            model: model.to_owned(),
            model_sha384: *model_sha384,
            request_digest,
            response_digest,
            mode,
            attestation_sha384: state.document_sha384,
            seq: state.next_seq,
            prev: state.prev,
        };
        let receipt = self.key.sign(&claims.encode());
        let leaf = merkle::leaf_hash(&receipt);
        state.prev = leaf;
        state.tree.push(leaf);
        state.next_seq += 1;
        state.uncovered_since.get_or_insert_with(Instant::now);
        let mut record = Vec::with_capacity(receipt.len() + 8);
        write_record(&mut record, RecordKind::Receipt, &receipt);
        state.queue.push_back(Arc::new(record));
        if state.next_seq - state.covered >= self.settings.tree_head_every {
            self.sign_tree_head(state);
        }
        self.backlog.store(state.queue.len(), Ordering::Release);
        drop(guard);
        self.wake.notify_one();
        Ok(IssuedReceipt { receipt, salt })
    }

    /// Signs a tree head over every receipt so far and queues it after them.
    fn sign_tree_head(&self, state: &mut State) {
        let head = TreeHeadClaims {
            issuer: state.issuer.clone(),
            issued_at: now_unix(),
            attestation_sha384: state.document_sha384,
            tree_size: state.tree.size(),
            root_hash: state.tree.root(),
        };
        let signed = self.key.sign(&head.encode());
        let mut record = Vec::with_capacity(signed.len() + 8);
        write_record(&mut record, RecordKind::TreeHead, &signed);
        state.queue.push_back(Arc::new(record));
        state.covered = state.tree.size();
        state.uncovered_since = None;
    }

    /// Signs a tree head if receipts have waited `tree_head_secs` uncovered (or, with `force`, if any are
    /// uncovered at all: at shutdown).
    pub fn tree_head_if_due(&self, force: bool) {
        let Ok(mut guard) = self.state.lock() else { return };
        let Some(state) = guard.as_mut() else { return };
        let due = state
            .uncovered_since
            .is_some_and(|t| force || t.elapsed() >= Duration::from_secs(self.settings.tree_head_secs));
        if due && state.tree.size() > state.covered {
            self.sign_tree_head(state);
            self.backlog.store(state.queue.len(), Ordering::Release);
        }
    }

    /// Records waiting for the parent.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Acquire)
    }

    /// The next batch to send: the number of its first record, how many records it holds, and the records
    /// (at most `limit` bytes, at least one record). Only the records' handles are taken under the lock;
    /// the bytes are copied after.
    fn batch(&self, limit: usize) -> Option<(u64, u64, Vec<u8>)> {
        let (first, records) = {
            let guard = self.state.lock().ok()?;
            let state = guard.as_ref()?;
            let mut size = 0;
            let mut records = Vec::new();
            for r in &state.queue {
                if !records.is_empty() && size + r.len() > limit {
                    break;
                }
                size += r.len();
                records.push(Arc::clone(r));
            }
            (state.queue_first, records)
        };
        if records.is_empty() {
            return None;
        }
        let mut bytes = Vec::with_capacity(records.iter().map(|r| r.len()).sum());
        records.iter().for_each(|r| bytes.extend_from_slice(r));
        Some((first, records.len() as u64, bytes))
    }

    /// The parent has stored every record before `next`.
    fn acknowledge(&self, next: u64) {
        let Ok(mut guard) = self.state.lock() else { return };
        let Some(state) = guard.as_mut() else { return };
        while state.queue_first < next && !state.queue.is_empty() {
            state.queue.pop_front();
            state.queue_first += 1;
        }
        self.backlog.store(state.queue.len(), Ordering::Release);
    }

    /// Hands the queue to the parent, for as long as the enclave runs: one batch at a time over its own
    /// host-services connection, each acknowledged before it leaves the queue; a broken connection is
    /// reopened and what was not acknowledged is sent again. Also signs the time-driven tree heads.
    pub async fn pump(&self, parent: veil_runtime::transport::Address, max_frame: usize) {
        let mut host: Option<crate::host::HostClient> = None;
        let mut backoff = Duration::from_millis(100);
        // Room for the message's head in a frame of `max_frame`; halved (to one record) on failures.
        let ceiling = MAX_BATCH_BYTES.min(max_frame.saturating_sub(1024)).max(1);
        let mut limit = ceiling;
        loop {
            self.tree_head_if_due(false);
            let Some((first, count, records)) = self.batch(limit) else {
                let woken = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await.is_ok();
                // Gather what follows the first record into the same batch: at a trickle of requests this
                // turns a parent write and fdatasync per request into one per delay.
                if woken && self.settings.batch_delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(self.settings.batch_delay_ms)).await;
                }
                continue;
            };
            if host.is_none() {
                match crate::host::HostClient::connect(&parent, max_frame, Duration::from_secs(1)).await {
                    Ok(h) => host = Some(h),
                    Err(e) => {
                        tracing::warn!(error = %e, backlog = self.backlog(), "audit log: the parent is not reachable; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            let Some(h) = host.as_mut() else { continue };
            match tokio::time::timeout(Duration::from_secs(30), h.audit(&self.boot, first, &records)).await {
                // The parent acknowledged records it was never sent: a lie (or a parent confused about
                // the boot), and nothing may leave the queue on its word. The same records go again, on a
                // new connection.
                Ok(Ok(next)) if next > first.saturating_add(count) => {
                    tracing::warn!(
                        first,
                        count,
                        next,
                        "audit log: the parent acknowledged records it was not sent; reconnecting"
                    );
                    host = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Ok(Ok(next)) if next > first => {
                    backoff = Duration::from_millis(100);
                    limit = (limit.saturating_mul(2)).min(ceiling);
                    self.acknowledge(next);
                    // Under steady load, too, records travel in batches at most every batch delay: a
                    // batch costs both processes a round trip and the parent a write and a sync,
                    // whatever its size. Only a full batch (a backlog) goes on without the pause.
                    if records.len() < limit / 2 && self.settings.batch_delay_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(self.settings.batch_delay_ms)).await;
                    }
                }
                Ok(Ok(next)) => {
                    // No progress: a parent that will not store records gets no busy loop from us.
                    tracing::warn!(
                        first,
                        next,
                        backlog = self.backlog(),
                        "audit log: the parent took none of the records"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, backlog = self.backlog(), batch_bytes = records.len(), "audit log: the parent did not take the records; reconnecting");
                    host = None;
                    limit = (limit / 2).max(1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(_) => {
                    tracing::warn!(
                        backlog = self.backlog(),
                        "audit log: the parent did not answer within 30 s; reconnecting"
                    );
                    host = None;
                }
            }
        }
    }

    /// At shutdown: a last tree head over every receipt, and up to `patience` for the parent to take the
    /// queue.
    pub async fn flush(&self, patience: Duration) {
        self.tree_head_if_due(true);
        self.wake.notify_one();
        let deadline = Instant::now() + patience;
        while self.backlog() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn poisoned() -> EnclaveError {
    EnclaveError::Internal("the receipt state is poisoned".into())
}

#[cfg(all(test, feature = "dev"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use veil_protocol::attestation::{ModelDigest, TrustAnchor, UserDataCommitment, Verifier};
    use veil_protocol::evidence::log::{RecordKind, RecordReader};
    use veil_protocol::evidence::verify::{AuditVerifier, EvidencePolicy};
    use veil_protocol::random::SystemRandom;

    use super::*;
    use crate::nsm::{MockNsm, MockPcrs, Nsm};

    /// An evidence state started with a mock NSM's document that commits to its key, and the mock root.
    fn started(settings: AuditSettings, dir: &std::path::Path) -> (Evidence, TrustAnchor) {
        let evidence = Evidence::new(settings, &SystemRandom::new()).unwrap();
        let nsm = MockNsm::load_or_create(dir, MockPcrs::from_image_digest(&[7; 48])).unwrap();
        let commitment = UserDataCommitment {
            ohttp_keys_sha384: None,
            receipt_key: Some(*evidence.public_key()),
            recipient_rsa_spki_sha384: None,
            models: vec![ModelDigest { name: "iris".into(), sha384: [1; 48] }],
            config_sha384: [2; 48],
        };
        let doc = nsm.attestation(Some(&commitment.encode().unwrap()), Some(evidence.boot_id()), None).unwrap();
        evidence.start(doc).unwrap();
        let root = TrustAnchor::from_pem(&std::fs::read(nsm.root_pem_path()).unwrap()).unwrap();
        (evidence, root)
    }

    fn queued(e: &Evidence) -> Vec<u8> {
        e.batch(usize::MAX).map(|(_, _, b)| b).unwrap_or_default()
    }

    #[test]
    fn receipts_chain_tree_heads_follow_every_n_and_the_queue_verifies_as_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let settings = AuditSettings { tree_head_every: 3, ..AuditSettings::default() };
        let (e, root) = started(settings, dir.path());
        let rng = SystemRandom::new();
        for i in 0..7u8 {
            let r = e.issue("iris", &[1; 48], &[i], b"answer", Mode::Kms, &rng).unwrap();
            assert!(queued(&e).windows(r.receipt.len()).any(|w| w == r.receipt.as_slice()));
        }
        let bytes = queued(&e);
        let kinds: Vec<RecordKind> = RecordReader::new(&bytes).map(|r| r.unwrap().kind).collect();
        use RecordKind::{Attestation as A, Receipt as R, TreeHead as H};
        assert_eq!(kinds, [A, R, R, R, H, R, R, R, H, R]);
        // The queue, read as a log by the auditor's verifier: every chain link and tree head checks, and the
        // last receipt is reported as not covered yet.
        let policy = EvidencePolicy::root_only(root);
        let verifier = Verifier::new();
        let mut audit = AuditVerifier::new(&policy, &verifier, u64::MAX / 2);
        audit.begin_boot("boot");
        for r in RecordReader::new(&bytes) {
            audit.record("queue", r.unwrap());
        }
        let report = audit.finish();
        assert!(report.verified, "{:?}", report.findings);
        assert_eq!(report.summary.receipts, 7);
        assert_eq!(report.summary.boots[0].covered, 6);
        assert_eq!(report.findings.iter().filter(|f| f.kind == "uncovered").count(), 1);
        // A forced head (shutdown) covers the rest.
        e.tree_head_if_due(true);
        assert_eq!(e.backlog(), 11);
    }

    #[test]
    fn acknowledged_records_leave_the_queue_and_a_full_backlog_refuses_new_requests() {
        let dir = tempfile::tempdir().unwrap();
        let settings = AuditSettings { tree_head_every: 1000, max_backlog: 16, ..AuditSettings::default() };
        let (e, _) = started(settings, dir.path());
        let rng = SystemRandom::new();
        assert!(e.admit().is_ok());
        for i in 0..15u8 {
            e.issue("iris", &[1; 48], &[i], b"a", Mode::Ohttp, &rng).unwrap();
        }
        assert_eq!(e.backlog(), 16);
        let refused = e.admit().unwrap_err();
        assert!(refused.to_string().contains("audit log"), "{refused}");
        assert_eq!(refused.kind(), veil_protocol::error::ErrorKind::Unavailable);
        // The parent stores the first ten: they leave the queue, and the next batch starts at record 10.
        e.acknowledge(10);
        assert_eq!(e.backlog(), 6);
        assert_eq!(e.batch(usize::MAX).unwrap().0, 10);
        // A small limit still sends one record; a larger one as many as fit.
        let one = e.batch(1).unwrap().2;
        assert_eq!(RecordReader::new(&one).count(), 1);
        assert!(e.admit().is_ok());
        // Past the queue's end the queue empties, no further (the pump never passes on such a claim: see
        // a_parent_acknowledging_records_it_was_not_sent_takes_nothing_from_the_queue).
        e.acknowledge(u64::MAX);
        assert_eq!(e.backlog(), 0);
        assert!(e.batch(usize::MAX).is_none());
    }

    #[tokio::test]
    async fn a_parent_acknowledging_records_it_was_not_sent_takes_nothing_from_the_queue() {
        // Finding of review: the pump let any `next` past the batch pop the queue, so a parent answering
        // `next = u64::MAX` silently dropped records (and tree heads) it had never been sent.
        use veil_protocol::message::{Body, HostRequest, HostResponse};
        use veil_runtime::conn::{FrameReader, FrameWriter};
        use veil_runtime::transport::{Address, Listener};
        let dir = tempfile::tempdir().unwrap();
        let settings = AuditSettings { tree_head_every: 1000, batch_delay_ms: 0, ..AuditSettings::default() };
        let (e, _) = started(settings, dir.path());
        let rng = SystemRandom::new();
        for i in 0..3u8 {
            e.issue("iris", &[1; 48], &[i], b"a", Mode::Ohttp, &rng).unwrap();
        }
        assert_eq!(e.backlog(), 4);
        let addr: Address = format!("unix://{}", dir.path().join("host.sock").display()).parse().unwrap();
        let listener = Listener::bind(&addr).await.unwrap();
        let e = Arc::new(e);
        let pump = tokio::spawn({
            let e = Arc::clone(&e);
            async move { e.pump(addr, 1 << 20).await }
        });
        // Each connection: one batch; the first two are answered with lies, the third honestly.
        let mut batches = Vec::new();
        for (n, lie) in [Some(u64::MAX), Some(5), None].into_iter().enumerate() {
            let (mut stream, _) = listener.accept().await.unwrap();
            let (id, body, records) =
                FrameReader::new(&mut stream, 1 << 20).recv::<HostRequest>().await.unwrap().into_parts();
            let HostRequest::Audit { first, .. } = body else { panic!("not an audit batch: {}", body.name()) };
            let count = RecordReader::new(&records).count() as u64;
            batches.push((first, count));
            let next = lie.unwrap_or(first + count);
            FrameWriter::new(&mut stream, 1 << 20).send(id, &HostResponse::Audit { next }, &[]).await.unwrap();
            if lie.is_some() {
                // The lie takes nothing: the same four records wait, and come again on a new connection.
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert_eq!(e.backlog(), 4, "after lie {n}");
            }
        }
        assert_eq!(batches, vec![(0, 4), (0, 4), (0, 4)]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while e.backlog() > 0 {
            assert!(Instant::now() < deadline, "the honest acknowledgement emptied nothing");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        pump.abort();
    }

    #[test]
    fn receipts_before_the_log_started_are_refused_not_unchained() {
        let e = Evidence::new(AuditSettings::default(), &SystemRandom::new()).unwrap();
        let err = e.issue("iris", &[1; 48], b"q", b"a", Mode::Kms, &SystemRandom::new()).unwrap_err();
        assert!(matches!(err, EnclaveError::Loading(_)), "{err}");
        assert!(!e.started());
        // Nor is a request admitted to run the model for a receipt that could not be signed.
        assert!(matches!(e.admit().unwrap_err(), EnclaveError::Loading(_)));
    }
}

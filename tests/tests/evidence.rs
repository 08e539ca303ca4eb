//! Evidence end to end: signed receipts for answers in both modes, the parent's audit log, and the
//! auditor's offline checks (`veil receipt verify`, `veil audit verify`), against everything a parent or
//! an archive could do to them: flip bytes, drop, delete or swap records, and time (a receipt outlives its
//! document's three-hour certificate). Real binaries over real sockets; receipts are also read by pycose
//! (tests/python/receipt_verify.py), another COSE implementation.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use veil_client::evidence::{read_bundle, verify_audit_log};
use veil_protocol::attestation::{Policy, TrustAnchor, UnverifiedDocument, Verifier, verify};
use veil_protocol::evidence::bundle::Bundle;
use veil_protocol::evidence::log::{RecordKind, RecordReader, write_record};
use veil_protocol::evidence::verify::{AuditReport, EvidencePolicy, verify_receipt};
use veil_tests::{Stack, StackOptions, Transport, references};

/// Tree heads a second after a receipt, so tests need not wait ten.
const FAST_HEADS: &str = "\n[audit]\ntree_head_secs = 1\n";
/// The cadence of those tree heads, for the auditor (every 1000 receipts, 1 s).
const CADENCE: (u64, u64) = (1000, 1);

fn stack(models: &[&str], extra: &str) -> Stack {
    let mut o = StackOptions::new(Transport::Unix, models);
    o.enclave_config = format!("{FAST_HEADS}{extra}");
    Stack::start(o).unwrap()
}

fn veil(stack: &Stack, args: &[&str]) -> std::process::Output {
    Command::new(veil_tests::bin("veil").unwrap())
        .envs(stack.client_env())
        .env("VEIL_URL", &stack.url)
        .args(args)
        .output()
        .unwrap()
}

fn request_file(stack: &Stack, model: &str, case: usize) -> PathBuf {
    let path = stack.dir.path().join(format!("{model}-{case}.request.json"));
    std::fs::write(&path, serde_json::to_vec(&references(model).unwrap()["cases"][case]["request"]).unwrap()).unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `veil infer` with `--receipt` and `--output`, in KMS envelope mode or (with the stack's policy)
/// attested-key mode: the bundle's path.
fn infer_with_receipt(stack: &Stack, model: &str, attested: bool, n: usize) -> (PathBuf, PathBuf, PathBuf) {
    let input = request_file(stack, model, 0);
    let bundle = stack.dir.path().join(format!("{model}-{n}.receipt.json"));
    let output = stack.dir.path().join(format!("{model}-{n}.answer.json"));
    let policy = stack.client_policy();
    let mut args =
        vec!["infer", "--model", model, "--input", s(&input), "--output", s(&output), "--receipt", s(&bundle)];
    if attested {
        args.extend(["--policy", s(&policy)]);
    }
    let out = veil(stack, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (bundle, input, output)
}

fn root(stack: &Stack) -> TrustAnchor {
    TrustAnchor::from_pem(&std::fs::read(stack.mock_root_pem()).unwrap()).unwrap()
}

fn audit_dir(stack: &mut Stack) -> PathBuf {
    stack.inner().audit_log.clone()
}

/// Waits until the audit log's last record is a tree head covering `receipts` receipts.
fn wait_for_head(dir: &Path, receipts: u64, root: &TrustAnchor) -> AuditReport {
    let policy = EvidencePolicy::root_only(root.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let report = verify_audit_log(dir, &policy, now(), CADENCE).unwrap();
        let covered: u64 = report.summary.boots.iter().map(|b| b.covered).sum();
        if covered >= receipts || std::time::Instant::now() > deadline {
            return report;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Waits until the audit log holds `receipts` receipts (covered by a tree head or not).
fn wait_for_receipts(dir: &Path, receipts: u64, root: &TrustAnchor) {
    let policy = EvidencePolicy::root_only(root.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let logged = verify_audit_log(dir, &policy, now(), CADENCE).map(|r| r.summary.receipts).unwrap_or(0);
        if logged >= receipts {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{logged} of {receipts} receipts in the log after 30 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

fn failed_check(report: &veil_protocol::evidence::verify::ReceiptReport) -> String {
    report
        .checks
        .iter()
        .find(|c| c.status == veil_protocol::attestation::CheckStatus::Failed)
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

#[test]
fn an_auditor_verifies_a_dev_stacks_evidence_offline_in_both_modes() {
    let mut stack = stack(&["breast_cancer", "iris"], "");
    let policy = stack.client_policy();
    let (kms_bundle, kms_req, kms_answer) = infer_with_receipt(&stack, "breast_cancer", false, 0);
    let (oh_bundle, oh_req, oh_answer) = infer_with_receipt(&stack, "iris", true, 1);
    // A request the model refuses (a bad tensor) is answered, sealed, with a receipt too (the refusal's).
    let bad = stack.dir.path().join("bad.json");
    // (Well formed, so `veil infer` sends it; iris takes [3, 2], so the model refuses [2, 2].)
    std::fs::write(&bad, br#"{"inputs":[{"name":"float_input","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}]}"#)
        .unwrap();
    let out = veil(&stack, &["infer", "--policy", s(&policy), "--model", "iris", "--input", s(&bad)]);
    assert!(!out.status.success());
    // The client verifies each bundle, with its plaintexts, and so does pycose.
    for (bundle, req, answer, mode) in
        [(&kms_bundle, &kms_req, &kms_answer, "kms"), (&oh_bundle, &oh_req, &oh_answer, "ohttp")]
    {
        let out = veil(
            &stack,
            &[
                "receipt",
                "verify",
                s(bundle),
                "--policy",
                s(&policy),
                "--request",
                s(req),
                "--response",
                s(answer),
                "--json",
            ],
        );
        let v = json(&out);
        assert!(out.status.success(), "{v}");
        assert_eq!(v["verified"], true);
        assert_eq!(v["receipt"]["mode"], mode);
        for check in ["signature", "attestation", "model", "request", "response"] {
            let c = v["checks"].as_array().unwrap().iter().find(|c| c["name"] == check).unwrap();
            assert_eq!(c["status"], "passed", "{check}: {v}");
        }
        let py = Command::new(veil_tests::test_python())
            .arg(veil_tests::repo_root().join("tests/python/receipt_verify.py"))
            .args([s(bundle), "--request", s(req), "--response", s(answer)])
            .output()
            .unwrap();
        assert!(
            py.status.success(),
            "pycose: {} {}",
            String::from_utf8_lossy(&py.stdout),
            String::from_utf8_lossy(&py.stderr)
        );
        // The wrong plaintext is caught: the other mode's request.
        let other = if mode == "kms" { &oh_req } else { &kms_req };
        let out = veil(&stack, &["receipt", "verify", s(bundle), "--policy", s(&policy), "--request", s(other)]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("FAIL  request"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // Once a tree head covers them, the bundles get their inclusion proofs, which pycose checks too.
    let dir = audit_dir(&mut stack);
    wait_for_head(&dir, 3, &root(&stack));
    for bundle in [&kms_bundle, &oh_bundle] {
        let out = veil(&stack, &["receipt", "prove", s(bundle), "--policy", s(&policy), "--wait", "20"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = veil(&stack, &["receipt", "verify", s(bundle), "--policy", s(&policy), "--json"]);
        assert!(out.status.success());
        let v = json(&out);
        let inclusion = v["checks"].as_array().unwrap().iter().find(|c| c["name"] == "inclusion").unwrap().clone();
        assert_eq!(inclusion["status"], "passed", "{v}");
        let py = Command::new(veil_tests::test_python())
            .arg(veil_tests::repo_root().join("tests/python/receipt_verify.py"))
            .arg(s(bundle))
            .output()
            .unwrap();
        let pv: Value = serde_json::from_slice(&py.stdout).unwrap();
        assert_eq!(pv["checks"]["inclusion"], true, "{pv}");
    }
    // The auditor, with the log directory, the mock root (in the policy) and the policy: everything.
    let out = veil(&stack, &["audit", "verify", s(&dir), "--policy", s(&policy), "--tree-head-secs", "1", "--json"]);
    let v = json(&out);
    assert!(out.status.success(), "{v}");
    let summary = &v["summary"];
    assert_eq!(summary["receipts"], 3, "{v}");
    assert_eq!(summary["per_mode"]["kms"], 1);
    assert_eq!(summary["per_mode"]["ohttp"], 2);
    let iris = format!("iris {}", hex::encode(stack.digest("iris")));
    assert_eq!(summary["per_model"][&iris], 2, "{v}");
    assert_eq!(summary["boots"].as_array().unwrap().len(), 1);
    // The same in text, as the README shows it.
    let out = veil(&stack, &["audit", "verify", s(&dir), "--policy", s(&policy), "--tree-head-secs", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("VERIFIED") && text.contains("3 receipts"), "{text}");
}

#[test]
fn a_models_refusal_keeps_its_evidence_bundle_in_both_modes() {
    let stack = stack(&["iris"], "");
    let policy = stack.client_policy();
    // Well formed, so `veil infer` sends it; iris takes [3, 2], so the model refuses [2, 2].
    let bad = stack.dir.path().join("bad.json");
    std::fs::write(&bad, br#"{"inputs":[{"name":"float_input","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}]}"#)
        .unwrap();
    let empty = stack.dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    for attested in [false, true] {
        let bundle = stack.dir.path().join(format!("refusal-{attested}.receipt.json"));
        let mut args = vec!["infer", "--model", "iris", "--input", s(&bad), "--receipt", s(&bundle)];
        if attested {
            args.extend(["--policy", s(&policy)]);
        }
        let out = veil(&stack, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "attested={attested}: the model refused: {stderr}");
        assert!(stderr.contains("evidence (receipt seq"), "attested={attested}: {stderr}");
        // The receipt names the request the model refused; in KMS envelope mode the sealed refusal carries
        // no answer bytes, so its response digest is over none.
        let mut verify = vec!["receipt", "verify", s(&bundle), "--policy", s(&policy), "--request", s(&bad), "--json"];
        if !attested {
            verify.extend(["--response", s(&empty)]);
        }
        let out = veil(&stack, &verify);
        let v = json(&out);
        assert!(out.status.success(), "attested={attested}: {v}");
        assert_eq!(v["receipt"]["mode"], if attested { "ohttp" } else { "kms" });
        let request = v["checks"].as_array().unwrap().iter().find(|c| c["name"] == "request").unwrap().clone();
        assert_eq!(request["status"], "passed", "{v}");
        // And not another request.
        let other = request_file(&stack, "iris", 0);
        let out = veil(&stack, &["receipt", "verify", s(&bundle), "--policy", s(&policy), "--request", s(&other)]);
        assert_eq!(out.status.code(), Some(1), "attested={attested}");
    }
}

/// The evidence of one answer, with its inclusion proof, and the stack it came from.
fn one_proven_bundle() -> (Stack, Bundle, PathBuf) {
    let mut stack = stack(&["iris"], "");
    let (path, _, _) = infer_with_receipt(&stack, "iris", true, 0);
    wait_for_head(&audit_dir(&mut stack), 1, &root(&stack));
    let out = veil(
        &stack,
        &["receipt", "prove", s(&path), "--wait", "20", "--any-image", "--root", s(&stack.mock_root_pem())],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bundle = read_bundle(&path).unwrap();
    (stack, bundle, path)
}

#[test]
fn every_flipped_byte_of_a_receipt_or_its_tree_head_fails_naming_the_check() {
    let (stack, bundle, _) = one_proven_bundle();
    let policy = EvidencePolicy::root_only(root(&stack));
    let verifier = Verifier::new();
    assert!(verify_receipt(&bundle, None, None, &policy, &verifier, now()).verified);
    for i in 0..bundle.receipt.len() {
        let mut b = bundle.clone();
        b.receipt[i] ^= 0x01;
        let r = verify_receipt(&b, None, None, &policy, &verifier, now());
        assert!(!r.verified, "receipt byte {i} flipped, still verified");
        let check = failed_check(&r);
        assert!(
            ["receipt.decode", "attestation.digest", "signature", "inclusion"].contains(&check.as_str()),
            "byte {i}: {check}"
        );
    }
    let inclusion = bundle.inclusion.clone().unwrap();
    for i in 0..inclusion.tree_head.len() {
        let mut b = bundle.clone();
        b.inclusion.as_mut().unwrap().tree_head[i] ^= 0x80;
        let r = verify_receipt(&b, None, None, &policy, &verifier, now());
        assert_eq!(failed_check(&r), "inclusion", "tree head byte {i}");
    }
    // The document: a sample of its bytes (every one would take minutes; each flip is caught by the
    // document's own checks or by the receipt's digest of it).
    for i in (0..bundle.attestation_document.len()).step_by(97) {
        let mut b = bundle.clone();
        b.attestation_document[i] ^= 0x01;
        let r = verify_receipt(&b, None, None, &policy, &verifier, now());
        assert_eq!(failed_check(&r), "attestation.digest", "document byte {i}");
    }
    // A salt flipped: the plaintexts no longer match.
    let req = serde_json::to_vec(&references("iris").unwrap()["cases"][0]["request"]).unwrap();
    assert!(verify_receipt(&bundle, Some(&req), None, &policy, &verifier, now()).verified);
    let mut b = bundle.clone();
    b.salt[3] ^= 1;
    assert_eq!(failed_check(&verify_receipt(&b, Some(&req), None, &policy, &verifier, now())), "request");
}

#[test]
fn a_receipt_verifies_a_day_and_a_year_after_its_documents_certificate_expired() {
    let (stack, bundle, _) = one_proven_bundle();
    let root = root(&stack);
    let doc_ms = UnverifiedDocument::parse(&bundle.attestation_document).unwrap().unverified_claims().timestamp_ms;
    let verifier = Verifier::new();
    for later in [24 * 3600u64, 365 * 24 * 3600] {
        // The mock leaf lives about three hours, like AWS's: well expired at these times.
        let at = doc_ms / 1000 + 3 * 3600 + later;
        let live = verify(&bundle.attestation_document, &Policy::new(at * 1000).with_root(root.clone()));
        let rejected = live.expect_err("a live check of the document fails this late");
        assert_eq!(rejected.report.first_failure().unwrap().name, "validity");
        let r = verify_receipt(&bundle, None, None, &EvidencePolicy::root_only(root.clone()), &verifier, at);
        assert!(r.verified, "{} s after: {:?}", later, r.error);
    }
}

/// Copies an audit log to a fresh directory (to tamper with).
fn copy_log(from: &Path, to: &Path) {
    for boot in std::fs::read_dir(from).unwrap() {
        let boot = boot.unwrap().path();
        let target = to.join(boot.file_name().unwrap());
        std::fs::create_dir_all(&target).unwrap();
        for f in std::fs::read_dir(&boot).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, target.join(f.file_name().unwrap())).unwrap();
        }
    }
}

/// The one log file of a one-boot log.
fn log_file(dir: &Path) -> PathBuf {
    let boot = std::fs::read_dir(dir).unwrap().next().unwrap().unwrap().path();
    // The boot directory also holds the parent's leaf-hash index (`leaves.sha256`), which
    // is not evidence; the records are in the `.cborseq` files.
    let mut files: Vec<PathBuf> = std::fs::read_dir(boot)
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cborseq"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.pop().unwrap()
}

/// A log of `n` receipts and at least one tree head over them all, and its root.
fn log_with_receipts(n: usize) -> (Stack, PathBuf, TrustAnchor) {
    let mut stack = stack(&["iris"], "");
    let oblivious = veil_client::oblivious::ObliviousClient::new(
        veil_client::Client::new(&stack.url).unwrap(),
        veil_client::trust::ClientPolicy::load(&stack.client_policy()).unwrap(),
    );
    let body = serde_json::to_vec(&references("iris").unwrap()["cases"][0]["request"]).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for _ in 0..n {
        let r = rt.block_on(oblivious.infer("iris", &body)).unwrap();
        assert_eq!(r.status, 200);
        assert!(r.receipt.is_some());
    }
    let root = root(&stack);
    let dir = audit_dir(&mut stack);
    let report = wait_for_head(&dir, n as u64, &root);
    assert!(report.verified, "{:?}", report.findings);
    (stack, dir, root)
}

fn records(file: &Path) -> Vec<(RecordKind, Vec<u8>)> {
    let bytes = std::fs::read(file).unwrap();
    RecordReader::new(&bytes).map(|r| r.map(|r| (r.kind, r.bytes.to_vec())).unwrap()).collect()
}

fn write_records(file: &Path, records: &[(RecordKind, Vec<u8>)]) {
    let mut out = Vec::new();
    for (k, b) in records {
        write_record(&mut out, *k, b);
    }
    std::fs::write(file, out).unwrap();
}

fn kinds(report: &AuditReport) -> Vec<&'static str> {
    report.findings.iter().filter(|f| f.error).map(|f| f.kind).collect()
}

#[test]
fn every_flipped_byte_of_a_log_files_receipts_and_tree_heads_fails_audit_verification() {
    let (stack, dir, root) = log_with_receipts(3);
    let policy = EvidencePolicy::root_only(root);
    let file = log_file(&dir);
    let original = std::fs::read(&file).unwrap();
    // Where the document record ends: every byte after it belongs to a receipt or a tree head.
    let doc_end = {
        let mut r = RecordReader::new(&original);
        r.next().unwrap().unwrap();
        r.offset()
    };
    let tampered = stack.dir.path().join("tampered");
    copy_log(&dir, &tampered);
    let target = log_file(&tampered);
    let step = if std::env::var("VEIL_EXHAUSTIVE").is_ok() { 1 } else { 3 };
    let mut positions: Vec<usize> = (doc_end..original.len()).step_by(step).collect();
    positions.extend((0..doc_end).step_by(211));
    for i in positions {
        let mut bytes = original.clone();
        bytes[i] ^= 0x01;
        std::fs::write(&target, &bytes).unwrap();
        let report = verify_audit_log(&tampered, &policy, now(), CADENCE).unwrap();
        assert!(!report.verified, "log byte {i} flipped, still verified");
        assert!(!kinds(&report).is_empty(), "byte {i}: no finding named");
    }
}

#[test]
fn a_crash_cut_tail_is_a_note_and_links_pipes_and_devices_are_findings_never_read() {
    let (stack, dir, root) = log_with_receipts(2);
    let policy = EvidencePolicy::root_only(root);
    // A machine crash mid-write: the boot's last file ends inside a record, and the enclave is gone so
    // the parent never appends (and cuts the tail) again. The honest log still verifies, with a note.
    let torn = stack.dir.path().join("torn");
    copy_log(&dir, &torn);
    let file = log_file(&torn);
    let all = records(&file);
    let mut bytes = std::fs::read(&file).unwrap();
    let mut extra = Vec::new();
    write_record(&mut extra, RecordKind::Receipt, &all.iter().find(|r| r.0 == RecordKind::Receipt).unwrap().1);
    bytes.extend_from_slice(&extra[..extra.len() / 2]);
    std::fs::write(&file, &bytes).unwrap();
    let report = verify_audit_log(&torn, &policy, now(), CADENCE).unwrap();
    assert!(report.verified, "{:?}", report.findings);
    let note = report.findings.iter().find(|f| f.kind == "truncated_tail").expect("the cut is reported");
    assert!(!note.error);
    // The same cut in a file that is not the boot's last is an error: the parent wrote on after it.
    let later = file.with_file_name("9999999999999999.cborseq");
    std::fs::write(&later, b"").unwrap();
    let report = verify_audit_log(&torn, &policy, now(), CADENCE).unwrap();
    assert!(!report.verified && kinds(&report).contains(&"malformed"), "{:?}", report.findings);
    std::fs::remove_file(&later).unwrap();

    // Named like log files, but a link to an endless device, and a pipe nobody writes: reported, unread
    // (reading either would never end), and the audit fails rather than hangs or exhausts memory.
    let trapped = stack.dir.path().join("trapped");
    copy_log(&dir, &trapped);
    let boot = log_file(&trapped).parent().unwrap().to_path_buf();
    std::os::unix::fs::symlink("/dev/zero", boot.join("zzzzzzzzzzzzzzzzzzz1.cborseq")).unwrap();
    let fifo = boot.join("zzzzzzzzzzzzzzzzzzz2.cborseq");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let report = verify_audit_log(&trapped, &policy, now(), CADENCE).unwrap();
    assert!(!report.verified);
    let unread: Vec<_> = report.findings.iter().filter(|f| f.kind == "unreadable").collect();
    assert_eq!(unread.len(), 2, "{:?}", report.findings);
    // Through the CLI: "the evidence is wrong" (1), not "could not read the evidence" (2).
    let out = veil(&stack, &["audit", "verify", s(&trapped), "--any-image", "--root", s(&stack.mock_root_pem())]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn deleting_or_swapping_log_entries_is_named_by_sequence_number() {
    let (stack, dir, root) = log_with_receipts(5);
    let policy = EvidencePolicy::root_only(root);
    let tampered = stack.dir.path().join("tampered");
    copy_log(&dir, &tampered);
    let file = log_file(&tampered);
    let all = records(&file);
    let receipt_at = |n: usize| all.iter().enumerate().filter(|(_, r)| r.0 == RecordKind::Receipt).nth(n).unwrap().0;
    // Deleted: receipt seq 2.
    let mut deleted = all.clone();
    deleted.remove(receipt_at(2));
    write_records(&file, &deleted);
    let report = verify_audit_log(&tampered, &policy, now(), CADENCE).unwrap();
    assert!(!report.verified);
    let gap = report.findings.iter().find(|f| f.kind == "gap").unwrap();
    assert_eq!(gap.seq, Some(2), "{:?}", report.findings);
    assert!(gap.message.contains("seq 2 is missing"), "{}", gap.message);
    // Swapped: receipts seq 1 and 2.
    let mut swapped = all.clone();
    swapped.swap(receipt_at(1), receipt_at(2));
    write_records(&file, &swapped);
    let report = verify_audit_log(&tampered, &policy, now(), CADENCE).unwrap();
    assert!(!report.verified);
    let reordered = report.findings.iter().find(|f| f.kind == "reordered").unwrap();
    assert_eq!(reordered.seq, Some(1), "{:?}", report.findings);
    assert!(reordered.message.contains("appears after seq 2"), "{}", reordered.message);
    // The CLI names them too, and exits 1.
    write_records(&file, &deleted);
    let out = veil(&stack, &["audit", "verify", s(&tampered), "--any-image", "--root", s(&stack.mock_root_pem())]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("gap") && text.contains("seq 2 is missing"), "{text}");
}

#[test]
fn a_parent_that_drops_receipts_is_caught_by_the_next_tree_head() {
    let (stack, dir, root) = log_with_receipts(4);
    let policy = EvidencePolicy::root_only(root);
    let tampered = stack.dir.path().join("tampered");
    copy_log(&dir, &tampered);
    let file = log_file(&tampered);
    // What a parent that silently drops the last receipts before a tree head would have stored.
    let all = records(&file);
    let head = all.iter().position(|r| r.0 == RecordKind::TreeHead).unwrap();
    let mut dropped = all.clone();
    dropped.remove(head - 1);
    write_records(&file, &dropped);
    let report = verify_audit_log(&tampered, &policy, now(), CADENCE).unwrap();
    assert!(!report.verified);
    let caught = report.findings.iter().find(|f| f.kind == "tree_head").unwrap();
    assert!(caught.message.contains("missing from the log"), "{}", caught.message);
    // A parent that keeps the count honest by putting an earlier receipt in the dropped one's place
    // is caught by the same tree head (and the duplicate).
    let mut replaced = all.clone();
    replaced[head - 1] = replaced[head - 2].clone();
    write_records(&file, &replaced);
    let report = verify_audit_log(&tampered, &policy, now(), CADENCE).unwrap();
    assert!(kinds(&report).contains(&"tree_head") && kinds(&report).contains(&"duplicate"), "{:?}", report.findings);
}

#[test]
fn a_debug_mode_enclaves_receipts_are_refused_unless_allowed() {
    let zero = "0".repeat(96);
    let mut o = StackOptions::new(Transport::Unix, &["iris"]);
    o.enclave_config = FAST_HEADS.into();
    o.enclave_args = ["0", "1", "2"].iter().flat_map(|i| ["--mock-pcr".to_owned(), format!("{i}={zero}")]).collect();
    o.start_enclave = false;
    let mut stack = Stack::start(o).unwrap();
    // The stack's key policy names the enclave's real mock PCRs: rewritten for the debug measurements before
    // the enclave starts (it needs KMS for its model, and KMS envelope mode for the requests).
    let measurements = stack.dir.path().join("debug-measurements.json");
    std::fs::write(
        &measurements,
        serde_json::json!({"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": zero, "PCR1": zero, "PCR2": zero}}).to_string(),
    )
    .unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(stack.put_debug_policy_from(&measurements))
        .unwrap();
    stack.start_enclave().unwrap();
    stack.wait_ready(std::time::Duration::from_secs(120)).unwrap();
    let input = request_file(&stack, "iris", 0);
    let bundle = stack.dir.path().join("debug.receipt.json");
    let digest = hex::encode(stack.digest("iris"));
    let infer = ["infer", "--model", "iris", "--input", s(&input), "--expect-model-sha384", &digest];
    let out = veil(&stack, &infer);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // --receipt refuses to keep evidence that does not verify: debug mode is refused by default.
    let out = veil(&stack, &[&infer[..], &["--receipt", s(&bundle)]].concat());
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("debug_mode"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!bundle.exists());
    // The log's receipts: refused without --allow-debug, accepted (and labelled) with it.
    let dir = stack.dir.path().join("audit");
    let root = root(&stack);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let strict = verify_audit_log(&dir, &EvidencePolicy::root_only(root.clone()), now(), CADENCE).unwrap();
    assert!(!strict.verified);
    assert!(
        strict.findings.iter().any(|f| f.kind == "attestation" && f.message.contains("debug_mode")),
        "{:?}",
        strict.findings
    );
    let out = veil(
        &stack,
        &[
            "audit",
            "verify",
            s(&dir),
            "--any-image",
            "--root",
            s(&stack.mock_root_pem()),
            "--allow-debug",
            "--tree-head-secs",
            "1",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn an_enclave_restart_starts_a_new_boot_and_the_log_verifies_across_both() {
    let mut stack = stack(&["iris"], "");
    let policy = stack.client_policy();
    infer_with_receipt(&stack, "iris", true, 0);
    // The receipt reaches the parent's log in the enclave's next batch (within `batch_delay_ms`); the
    // kill comes once it is there, long before any tree head would.
    let dir = audit_dir(&mut stack);
    wait_for_receipts(&dir, 1, &root(&stack));
    stack.kill_enclave();
    stack.start_enclave().unwrap();
    stack.wait_ready(std::time::Duration::from_secs(120)).unwrap();
    // The new boot has a new key and certifying document; the old bundle still verifies, and so does the
    // new one; the parent serves the new boot's document now.
    let (second, _, _) = infer_with_receipt(&stack, "iris", true, 1);
    let first = stack.dir.path().join("iris-0.receipt.json");
    for b in [&first, &second] {
        let out = veil(&stack, &["receipt", "verify", s(b), "--policy", s(&policy)]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }
    assert_ne!(read_bundle(&first).unwrap().attestation_document, read_bundle(&second).unwrap().attestation_document);
    let report = wait_for_head(&dir, 1, &root(&stack));
    assert!(report.verified, "{:?}", report.findings);
    assert_eq!(report.summary.boots.len(), 2);
    assert!(report.summary.boots.iter().all(|b| b.receipts == 1), "{:?}", report.summary.boots);
    // The first enclave was killed (SIGKILL, as a crash or `nitro-cli terminate-enclave` would) within a
    // second of its receipt, before any tree head: its receipt is logged but not covered, which the
    // verification notes without failing; the second boot's receipt is covered.
    let (old, new) = (&report.summary.boots[0], &report.summary.boots[1]);
    assert_eq!((old.covered, new.covered), (0, 1), "{:?}", report.summary.boots);
    let note = report.findings.iter().find(|f| f.kind == "uncovered").unwrap();
    assert!(!note.error && note.boot == old.boot, "{note:?}");
}

//! The cost of evidence: what a signed receipt adds to each request, side by side in one run.
//!
//! 1. **In the enclave, in process**: [`veil_enclave::evidence::Evidence::issue`] for iris-sized and
//!    MiniLM-sized plaintexts (the request and answer bodies of the benchmark cases, JSON and binary), and
//!    its parts: the two salted digests (HMAC-SHA-256 over the plaintexts), and the Ed25519 signature with
//!    the chain, tree and queue under the lock.
//! 2. **In the parent**: appending one receipt to the audit log, with and without `fdatasync`.
//! 3. **End to end**: two stacks of the same release binaries, one signing receipts (and its parent keeping
//!    the audit log), one with `[audit] receipts = false`, measured in interleaved rounds in both modes on
//!    iris and MiniLM: the difference of their p50s is what receipts cost a client.
//!
//! Prints tables and writes `target/bench/evidence.json`. Run with scripts/bench.sh, or
//! `cargo bench -p veil-tests --bench evidence` after `cargo build --release --workspace --bins`.
mod common;

use std::time::Instant;

use common::{Measurement, attested_target, measure_interleaved, sealed_target, summarize};
use serde_json::{Value, json};
use veil_enclave::config::AuditSettings;
use veil_enclave::evidence::Evidence;
use veil_enclave::nsm::{MockNsm, MockPcrs, Nsm};
use veil_protocol::attestation::{ModelDigest, UserDataCommitment};
use veil_protocol::evidence::{Mode, salted_digest};
use veil_protocol::random::SystemRandom;
use veil_tests::{Stack, StackOptions, Transport, references};

/// Times `f` `n` times (after `n / 10` warm-up calls).
fn time(n: usize, mut f: impl FnMut()) -> Measurement {
    for _ in 0..n / 10 {
        f();
    }
    let start = Instant::now();
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f();
        lat.push(t.elapsed());
    }
    summarize(lat, start.elapsed())
}

/// An evidence state started with a mock document (what the enclave runs, minus the NSM's cost at boot).
fn evidence(dir: &std::path::Path) -> Evidence {
    let settings = AuditSettings { max_backlog: usize::MAX, ..AuditSettings::default() };
    let e = Evidence::new(settings, &SystemRandom::new()).unwrap();
    let nsm = MockNsm::load_or_create(dir, MockPcrs::from_image_digest(&[7; 48])).unwrap();
    let commitment = UserDataCommitment {
        ohttp_keys_sha384: None,
        receipt_key: Some(*e.public_key()),
        recipient_rsa_spki_sha384: None,
        models: vec![ModelDigest { name: "iris".into(), sha384: [1; 48] }],
        config_sha384: [2; 48],
    };
    e.start(nsm.attestation(Some(&commitment.encode().unwrap()), Some(e.boot_id()), None).unwrap()).unwrap();
    e
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 0.2 } else { 1.0 };
    let n = |x: usize| ((x as f64) * scale).max(20.0) as usize;
    let dir = tempfile::tempdir().unwrap();
    let rng = SystemRandom::new();
    let mut results = serde_json::Map::new();
    let mut rows = Vec::new();

    // 1 and 2: in process. Plaintexts of the benchmark cases, as the enclave sees them.
    let iris_req = serde_json::to_vec(&references("iris").unwrap()["cases"][1]["request"]).unwrap();
    let minilm_case = references("minilm").unwrap()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "seq128")
        .unwrap()
        .clone();
    let minilm_req = serde_json::to_vec(&minilm_case["request"]).unwrap();
    let sizes = [
        ("iris", iris_req.clone(), vec![b'x'; 300]),
        ("minilm-json", minilm_req.clone(), vec![b'1'; 600_000]),
        ("minilm-binary", minilm_req.clone(), vec![7u8; 128 * 384 * 4 + 200]),
    ];
    let e = evidence(dir.path());
    let salt = [9u8; 32];
    // The floor: one Ed25519 COSE_Sign1 over a receipt-sized payload, nothing else.
    let key = veil_protocol::evidence::cose::ReceiptKey::generate(&rng).unwrap();
    let payload = vec![0x5a; 330];
    let sign_only = time(n(5000), || {
        std::hint::black_box(key.sign(&payload));
    });
    results.insert("ed25519_cose_sign1".to_owned(), json!(sign_only));
    for (name, req, answer) in &sizes {
        let digests = time(n(5000), || {
            std::hint::black_box(salted_digest(&salt, req));
            std::hint::black_box(salted_digest(&salt, answer));
        });
        let issue = time(n(5000), || {
            std::hint::black_box(e.issue("iris", &[1; 48], req, answer, Mode::Kms, &rng).unwrap());
        });
        rows.push(format!(
            "| {name:<13} | {:>7} B | {:>7} B | {:>9.1} | {:>9.1} | {:>9.1} |",
            req.len(),
            answer.len(),
            digests.p50_us,
            issue.p50_us - digests.p50_us,
            issue.p50_us
        ));
        results.insert(
            format!("issue_{name}"),
            json!({"request_bytes": req.len(), "answer_bytes": answer.len(), "digests": digests, "issue": issue}),
        );
    }
    // The parent: one receipt appended (a batch of one: the worst case; batches amortize the sync).
    let receipt = e.issue("iris", &[1; 48], b"q", b"a", Mode::Kms, &rng).unwrap().receipt;
    let mut record = Vec::new();
    veil_protocol::evidence::log::write_record(
        &mut record,
        veil_protocol::evidence::log::RecordKind::Receipt,
        &receipt,
    );
    let mut parent_rows = Vec::new();
    for fsync in [false, true] {
        let log_dir = dir.path().join(format!("audit-{fsync}"));
        let log = veil_parent::audit::AuditLog::new(Some(log_dir), 1 << 30, fsync).unwrap();
        let boot = [5u8; 16];
        let mut next = log.append(&boot, 0, &record).unwrap();
        let m = time(n(if fsync { 500 } else { 5000 }), || {
            next = log.append(&boot, next, &record).unwrap();
        });
        parent_rows.push(format!("| append one receipt, fsync {fsync:<5} | {:>9.1} | {:>9.1} |", m.p50_us, m.p99_us));
        results.insert(format!("parent_append_fsync_{fsync}"), json!(m));
    }

    // 3: end to end, receipts on (with the parent's audit log) against receipts off.
    let start = |extra: &str, parent_args: &[&str]| {
        let mut o = StackOptions::new(Transport::Unix, &["iris", "minilm"]);
        o.enclave_config = extra.to_owned();
        o.parent_args = parent_args.iter().map(|a| (*a).to_owned()).collect();
        Stack::start(o).expect("start a stack (build release binaries first)")
    };
    let off = start("\n[audit]\nreceipts = false\n", &[]);
    let nosync = start("", &["--audit-no-fsync"]);
    let on = start("", &[]);
    let mut e2e_rows = Vec::new();
    let plan = [("iris", iris_req.clone(), 20, 2000), ("minilm", minilm_req.clone(), 10, 120)];
    for (model, body, warmup, per) in plan {
        let on_kms = sealed_target(&on, model, body.clone());
        let nosync_kms = sealed_target(&nosync, model, body.clone());
        let off_kms = sealed_target(&off, model, body.clone());
        let on_oh = attested_target(&on, model, body.clone(), None);
        let nosync_oh = attested_target(&nosync, model, body.clone(), None);
        let off_oh = attested_target(&off, model, body.clone(), None);
        eprintln!(
            "{model}: receipts on (fsync), on (no fsync) and off, both modes, {} requests each in 10 interleaved rounds",
            n(per)
        );
        let targets: Vec<common::Target<'_>> = vec![
            ("kms_on", &on_kms),
            ("kms_nosync", &nosync_kms),
            ("kms_off", &off_kms),
            ("ohttp_on", &on_oh),
            ("ohttp_nosync", &nosync_oh),
            ("ohttp_off", &off_oh),
        ];
        let m = measure_interleaved(1, warmup, n(per), 10, &targets);
        for mode in ["kms", "ohttp"] {
            let p50 = |v: &str| m[format!("{mode}_{v}").as_str()].p50_us;
            let (on, nosync, off) = (p50("on"), p50("nosync"), p50("off"));
            e2e_rows.push(format!(
                "| {model:<6} | {mode:<5} | {on:>9.1} | {nosync:>9.1} | {off:>9.1} | {:>+9.1} | {:>+9.1} | {:>6.3} |",
                on - off,
                nosync - off,
                on / off
            ));
        }
        results.insert(format!("e2e_{model}"), json!(m));
    }
    // Under load: iris at concurrency 16, where the two cores are saturated and every microsecond of CPU a
    // receipt costs (in the enclave, and the records' trip to the parent's log) shows in throughput.
    let mut load_rows = Vec::new();
    {
        let conc = 16;
        let on_kms = sealed_target(&on, "iris", iris_req.clone());
        let off_kms = sealed_target(&off, "iris", iris_req.clone());
        let on_oh = attested_target(&on, "iris", iris_req.clone(), None);
        let off_oh = attested_target(&off, "iris", iris_req.clone(), None);
        eprintln!("iris at concurrency {conc}: receipts on and off, both modes, {} requests per thread", n(400));
        let targets: Vec<common::Target<'_>> =
            vec![("kms_on", &on_kms), ("kms_off", &off_kms), ("ohttp_on", &on_oh), ("ohttp_off", &off_oh)];
        let m = measure_interleaved(conc, 200, n(400), 10, &targets);
        for mode in ["kms", "ohttp"] {
            let (a, b) = (&m[format!("{mode}_on").as_str()], &m[format!("{mode}_off").as_str()]);
            load_rows.push(format!(
                "| iris   | {mode:<5} | {:>9.0} | {:>9.0} | {:>6.3} | {:>9.0} | {:>9.0} |",
                a.throughput_rps,
                b.throughput_rps,
                a.throughput_rps / b.throughput_rps,
                a.p50_us,
                b.p50_us
            ));
        }
        results.insert(format!("load_iris_c{conc}"), json!(m));
    }
    let root = veil_protocol::attestation::TrustAnchor::from_pem(&std::fs::read(on.mock_root_pem()).unwrap()).unwrap();
    let policy = veil_protocol::evidence::verify::EvidencePolicy::root_only(root);
    let report =
        veil_client::evidence::verify_audit_log(&on.dir.path().join("audit"), &policy, u64::MAX / 2, (1000, 10))
            .unwrap();
    let audit_receipts = report.summary.receipts;

    println!("\nIn the enclave, per receipt (p50, µs):");
    println!("| plaintexts    | request   | answer    | digests   | sign+log  | total     |");
    println!("|---------------|-----------|-----------|-----------|-----------|-----------|");
    rows.iter().for_each(|r| println!("{r}"));
    println!(
        "(the Ed25519 COSE_Sign1 alone, ed25519-dalek: p50 {:.1} µs, p99 {:.1} µs)",
        sign_only.p50_us, sign_only.p99_us
    );
    println!("\nIn the parent (µs):");
    println!("| step                              | p50       | p99       |");
    println!("|-----------------------------------|-----------|-----------|");
    parent_rows.iter().for_each(|r| println!("{r}"));
    println!("\nEnd to end, c1 p50 (µs), receipts on (audit log kept, with and without fdatasync) against off:");
    println!("| model  | mode  | on        | no fsync  | off       | on - off  | nf - off  | on/off |");
    println!("|--------|-------|-----------|-----------|-----------|-----------|-----------|--------|");
    e2e_rows.iter().for_each(|r| println!("{r}"));
    println!("\nUnder load, concurrency 16: answers per second and p50 (µs), receipts on against off:");
    println!("| model  | mode  | rps on    | rps off   | on/off | p50 on    | p50 off   |");
    println!("|--------|-------|-----------|-----------|--------|-----------|-----------|");
    load_rows.iter().for_each(|r| println!("{r}"));
    println!(
        "\n(the receipts-on stack's audit log: {audit_receipts} receipts, {} offline after the run)",
        if report.verified { "verified" } else { "NOT verified" }
    );
    let out = Value::Object(
        [
            ("bench".to_owned(), json!("evidence")),
            ("quick".to_owned(), json!(quick)),
            ("results".to_owned(), Value::Object(results)),
            ("audit_log_receipts".to_owned(), json!(audit_receipts)),
        ]
        .into_iter()
        .collect(),
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| veil_tests::repo_root().join("target"));
    let bench_dir = target.join("bench");
    std::fs::create_dir_all(&bench_dir).unwrap();
    std::fs::write(bench_dir.join("evidence.json"), serde_json::to_vec_pretty(&out).unwrap()).unwrap();
    println!("wrote {}", bench_dir.join("evidence.json").display());
}

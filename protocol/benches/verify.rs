//! Attestation verification time per document, over the 18 real Nitro documents in `tests/vectors`.
//!
//! `cargo bench -p veil-shared --bench verify` prints a table and writes
//! `target/bench/attestation.json` (per-document p50/p99 in microseconds, and the totals).
//! Each document is verified in full (decode, root pin, 4 chain signatures, validity, COSE ES384
//! signature, debug mode, all PCRs) at its own timestamp. "cold" is `verify` (nothing cached: five
//! ECDSA P-384 verifications); "warm" is `Verifier::verify` after one earlier verification of the same
//! document, as for a client's next document from the same enclave (certificate signatures memoised,
//! everything else checked again: one P-384 verification). `--quick` runs fewer iterations.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Instant;

use base64::Engine as _;
use veil_protocol::attestation::{Policy, UnverifiedDocument, Verifier, verify};

const WARMUP: usize = 20;
const RUNS: usize = 300;
/// With `--quick` (scripts/bench.sh --quick): a smoke test.
const QUICK_RUNS: usize = 30;

fn main() {
    let runs = if std::env::args().any(|a| a == "--quick") { QUICK_RUNS } else { RUNS };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("tests/vectors");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("MANIFEST.json")).unwrap()).unwrap();
    let mut rows = Vec::new();
    let mut all = Vec::new();
    let mut all_warm = Vec::new();
    println!(
        "{:<64} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "document", "bytes", "cold p50", "cold p99", "warm p50", "warm p99", "parse p50"
    );
    for e in manifest.as_array().unwrap() {
        if e["note"].as_str().unwrap_or("").contains("NEGATIVE") {
            continue;
        }
        let file = e["file"].as_str().unwrap();
        let raw = std::fs::read(dir.join(file)).unwrap();
        let text = || String::from_utf8(raw.clone()).unwrap().split_whitespace().collect::<String>();
        let bytes = match e["encoding"].as_str().unwrap() {
            "raw" => raw.clone(),
            "hex" => hex::decode(text()).unwrap(),
            _ => base64::engine::general_purpose::STANDARD.decode(text()).unwrap(),
        };
        let mut policy = Policy::new(e["timestamp_ms"].as_u64().unwrap()).allow_debug(true);
        for (k, v) in e["pcrs"].as_object().unwrap() {
            policy = policy.expect_pcr(k.parse().unwrap(), &hex::decode(v.as_str().unwrap()).unwrap()).unwrap();
        }
        for _ in 0..WARMUP {
            verify(&bytes, &policy).unwrap();
        }
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            let doc = verify(std::hint::black_box(&bytes), &policy).unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(doc);
        }
        // Warm: a client's second document from the same enclave (certificate signatures memoised by
        // `Verifier`; the COSE signature, names, profile, validity and PCRs are still checked).
        let verifier = Verifier::new();
        verifier.verify(&bytes, &policy).unwrap();
        let mut warm = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            std::hint::black_box(verifier.verify(std::hint::black_box(&bytes), &policy).unwrap());
            warm.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let mut parse = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            std::hint::black_box(UnverifiedDocument::parse(std::hint::black_box(&bytes)).unwrap());
            parse.push(t.elapsed().as_secs_f64() * 1e6);
        }
        all.extend_from_slice(&times);
        all_warm.extend_from_slice(&warm);
        let (p50, p99, parse50) = (pct(&mut times, 50.0), pct(&mut times, 99.0), pct(&mut parse, 50.0));
        let (w50, w99) = (pct(&mut warm, 50.0), pct(&mut warm, 99.0));
        println!(
            "{:<64} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            short(file),
            bytes.len(),
            p50,
            p99,
            w50,
            w99,
            parse50
        );
        rows.push(serde_json::json!({"file": file, "bytes": bytes.len(), "cold_p50_us": p50, "cold_p99_us": p99,
            "warm_p50_us": w50, "warm_p99_us": w99, "parse_p50_us": parse50}));
    }
    let (p50, p99) = (pct(&mut all, 50.0), pct(&mut all, 99.0));
    let (w50, w99) = (pct(&mut all_warm, 50.0), pct(&mut all_warm, 99.0));
    println!("{:<64} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1}   (µs)", "ALL (18 documents)", "", p50, p99, w50, w99);
    let mut one = Vec::with_capacity(runs);
    let pk = one_p384_verification_us(&mut one, runs);
    println!("one ECDSA P-384 verification (ring): p50 {pk:.1} µs");
    let out = serde_json::json!({
        "benchmark": "attestation verification (veil_protocol::attestation::verify), full chain + COSE, per document",
        "runs_per_document": runs,
        "documents": rows,
        "all_cold": {"p50_us": p50, "p99_us": p99},
        "all_warm": {"p50_us": w50, "p99_us": w99},
        "one_p384_verify_p50_us": pk,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "target_us": 1000,
    });
    // Cargo runs benches with the package directory as the working directory; write under the target dir.
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let path = target.join("bench/attestation.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_vec_pretty(&out).unwrap()).unwrap();
    println!("wrote {}", path.display());
}

/// The floor under any verifier that uses ring: one ECDSA P-384 signature check (a leaf certificate's).
fn one_p384_verification_us(times: &mut Vec<f64>, runs: usize) -> f64 {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/vectors/yawn-nitro-attest/tests/fixtures/attestation.cose");
    let doc = UnverifiedDocument::parse(&std::fs::read(dir).unwrap()).unwrap();
    let c = doc.unverified_claims();
    let issuer = x509_parser::parse_x509_certificate(c.cabundle.last().unwrap()).unwrap().1;
    let leaf = x509_parser::parse_x509_certificate(&c.certificate).unwrap().1;
    let key = issuer.tbs_certificate.subject_pki.subject_public_key.data.to_vec();
    let tbs = leaf.tbs_certificate.as_ref().to_vec();
    let sig = leaf.signature_value.data.to_vec();
    let pk = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P384_SHA384_ASN1, key);
    for _ in 0..runs {
        let t = Instant::now();
        pk.verify(&tbs, &sig).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    pct(times, 50.0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

fn short(file: &str) -> String {
    if file.len() > 64 { format!("…{}", &file[file.len() - 63..]) } else { file.to_owned() }
}

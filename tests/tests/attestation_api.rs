//! Attestation over the API: `GET /v1/attestation?nonce=HEX` through the real parent and enclave (mock NSM).
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use veil_protocol::attestation::{Policy, TrustAnchor, UserDataCommitment, verify};
use veil_tests::{Stack, StackOptions, Transport, http_get};

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn documents_carry_the_nonce_and_commit_to_the_loaded_models() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris", "breast_cancer"])).unwrap();
    let nonce = [0x5a_u8; 32];
    let (status, doc) = http_get(&stack.url, &format!("/v1/attestation?nonce={}", hex::encode(nonce))).unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&doc));

    // Verifies under the mock root the enclave wrote, with the nonce we sent, fresh.
    let root = TrustAnchor::from_pem(&std::fs::read(stack.mock_root_pem()).unwrap()).unwrap();
    let policy =
        Policy::new(now_ms()).with_root(root).expect_nonce(&nonce).unwrap().with_max_age(Duration::from_secs(60));
    let verified = verify(&doc, &policy).unwrap_or_else(|r| panic!("rejected: {r:?}"));
    assert_eq!(verified.nonce(), Some(&nonce[..]));

    // The commitment names each model with the digest its metadata reports.
    let commitment = UserDataCommitment::decode(verified.user_data().expect("user_data")).unwrap();
    assert_eq!(commitment.models.len(), 2);
    for m in &commitment.models {
        let (status, meta) = http_get(&stack.url, &format!("/v1/models/{}", m.name)).unwrap();
        assert_eq!(status, 200);
        let meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
        assert_eq!(meta["parameters"]["sha384"], hex::encode(m.sha384), "{}", m.name);
    }
    let names: Vec<&str> = commitment.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["breast_cancer", "iris"]);

    // Another nonce does not match this document.
    let other = Policy::new(now_ms())
        .with_root(TrustAnchor::from_pem(&std::fs::read(stack.mock_root_pem()).unwrap()).unwrap())
        .expect_nonce(&[1u8; 32])
        .unwrap();
    let rejected = verify(&doc, &other).unwrap_err();
    assert!(format!("{rejected:?}").to_lowercase().contains("nonce"), "{rejected:?}");
}

#[test]
fn mock_documents_never_pass_the_default_aws_root() {
    let stack = Stack::start(StackOptions::new(Transport::Tcp, &["iris"])).unwrap();
    let (status, doc) = http_get(&stack.url, "/v1/attestation?nonce=00112233").unwrap();
    assert_eq!(status, 200);
    let rejected = verify(&doc, &Policy::new(now_ms())).unwrap_err();
    let failure = rejected.report.first_failure().expect("a failed check").clone();
    assert!(failure.name.contains("chain") || failure.name.contains("root"), "{failure:?}");
}

#[test]
fn the_cli_verifies_a_running_server() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["breast_cancer"])).unwrap();
    let veil = veil_tests::bin("veil").unwrap();
    let out = std::process::Command::new(&veil)
        .args(["attest", "verify", "--url", &stack.url, "--root"])
        .arg(stack.mock_root_pem())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // Without the mock root the same server fails verification (exit 1), never passes.
    let out = std::process::Command::new(&veil).args(["attest", "verify", "--url", &stack.url]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
}

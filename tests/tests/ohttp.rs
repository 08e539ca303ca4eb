//! Attested-key mode (Oblivious HTTP, RFC 9458) end to end, and what a hostile parent can try against it:
//! serve other keys, replay an old attestation document, front an enclave of other PCRs, replay, tamper
//! with, truncate or flood encapsulated requests. Real binaries over real sockets; the client is Veil's
//! own library and CLI (tests/tests/ohttp_interop.rs runs a client on another HPKE implementation).
#![allow(clippy::unwrap_used)]

use veil_client::oblivious::{ObliviousClient, ObliviousError};
use veil_client::trust::ClientPolicy;
use veil_protocol::ohttp::{self, KeyConfig, bhttp};
use veil_protocol::random::SystemRandom;
use veil_tests::hostile::{Lie, hostile_parent};
use veil_tests::{Stack, StackOptions, Transport, http_get, http_raw_typed, references};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn policy(stack: &Stack) -> ClientPolicy {
    ClientPolicy::load(&stack.client_policy()).unwrap()
}

fn client(url: &str, policy: ClientPolicy) -> ObliviousClient {
    ObliviousClient::new(veil_client::Client::new(url).unwrap(), policy)
}

fn case(model: &str) -> serde_json::Value {
    references(model).unwrap()["cases"][0].clone()
}

#[test]
fn veil_infer_with_a_policy_gets_correct_answers_without_any_aws_credentials() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["breast_cancer", "iris"])).unwrap();
    for model in ["breast_cancer", "iris"] {
        let c = case(model);
        let input = stack.dir.path().join(format!("{model}.json"));
        std::fs::write(&input, serde_json::to_vec(&c["request"]).unwrap()).unwrap();
        // A clean environment: no AWS credentials, no KMS settings, nothing of the stack's but its URL.
        let out = std::process::Command::new(veil_tests::bin("veil").unwrap())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args(["infer", "--url", &stack.url, "--policy"])
            .arg(stack.client_policy())
            .args(["--model", model, "--input"])
            .arg(&input)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{model}: {stderr}");
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        veil_tests::compare_outputs(&got, &c).unwrap_or_else(|e| panic!("{model}: {e}"));
        assert!(stderr.contains(&hex::encode(stack.digest(model))), "{stderr}");
        assert!(stderr.contains("attested-key mode"), "{stderr}");
    }
    // Zero KMS calls for any of it: the enclave's count is the model keys' only.
    let before: serde_json::Value = serde_json::from_slice(&http_get(&stack.url, "/readyz").unwrap().1).unwrap();
    let policy = policy(&stack);
    let oblivious = client(&stack.url, policy);
    rt().block_on(async {
        for _ in 0..5 {
            let r = oblivious.infer("iris", &serde_json::to_vec(&case("iris")["request"]).unwrap()).await.unwrap();
            assert_eq!(r.status, 200);
        }
    });
    let after: serde_json::Value = serde_json::from_slice(&http_get(&stack.url, "/readyz").unwrap().1).unwrap();
    assert_eq!(before["kms_calls"], after["kms_calls"], "attested-key requests made KMS calls");
}

#[test]
fn the_other_v2_routes_answer_inside_the_encapsulation() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let oblivious = client(&stack.url, policy(&stack));
    rt().block_on(async {
        let meta = oblivious.send("GET", "/v2/models/iris", &[], b"").await.unwrap();
        assert_eq!(meta.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&meta.body).unwrap();
        assert_eq!(v["name"], "iris", "{v}");
        assert_eq!(meta.model_sha384(), Some(stack.digest("iris")));
        assert_eq!(oblivious.send("GET", "/v2/health/ready", &[], b"").await.unwrap().status, 200);
        assert_eq!(oblivious.send("GET", "/v2/models/iris/ready", &[], b"").await.unwrap().status, 200);
        let missing = oblivious.send("GET", "/v2/models/resnet", &[], b"").await.unwrap();
        assert_eq!(missing.status, 404);
        assert!(missing.error_message().unwrap().contains("resnet"), "{:?}", missing.error_message());
        let wrong = oblivious.send("POST", "/v2/models/iris/infer", &[("veil-model-sha384", &[b'a'; 96])], b"{}").await;
        let wrong = wrong.unwrap();
        assert_eq!(wrong.status, 400);
        assert!(wrong.error_message().unwrap().contains("SHA-384"), "{:?}", wrong.error_message());
        // Malformed v2 JSON: a sealed 400 naming the problem, the model's digest still named.
        let bad = oblivious.send("POST", "/v2/models/iris/infer", &[], b"{not json").await.unwrap();
        assert_eq!(bad.status, 400);
        assert_eq!(bad.model_sha384(), Some(stack.digest("iris")));
    });
    // The parent's metrics count the OHTTP route without a model: it never learns one.
    let (_, metrics) = http_get(&stack.url, "/metrics").unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    let ohttp_lines: Vec<&str> = metrics.lines().filter(|l| l.contains("route=\"ohttp\"")).collect();
    assert!(!ohttp_lines.is_empty(), "{metrics}");
    assert!(ohttp_lines.iter().all(|l| !l.contains("iris")), "{ohttp_lines:?}");
}

#[test]
fn binary_tensor_data_travels_inside_the_encapsulation_both_ways() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let oblivious = client(&stack.url, policy(&stack));
    let case = case("iris");
    let (body, n) = veil_tests::binary_request(&case["request"]);
    let n = n.to_string();
    fn typed(length: &[u8]) -> Vec<(&'static str, &[u8])> {
        vec![("content-type", b"application/octet-stream"), ("inference-header-content-length", length)]
    }
    rt().block_on(async {
        let r = oblivious.send("POST", "/v2/models/iris/infer", &typed(n.as_bytes()), &body).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.error_message());
        assert_eq!(r.header("content-type"), Some(&b"application/octet-stream"[..]));
        let length: u64 =
            std::str::from_utf8(r.header("inference-header-content-length").unwrap()).unwrap().parse().unwrap();
        let read = veil_protocol::v2::response::read(&r.body, Some(length)).unwrap();
        for want in case["outputs"].as_array().unwrap() {
            let (_, raw) = read.binary.iter().find(|(name, _)| name == want["name"].as_str().unwrap()).unwrap();
            let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, raw));
            assert_eq!(digest, want["sha256_le"].as_str().unwrap(), "{}", want["name"]);
        }
        // A header length that is no number, or beyond the body: sealed 400s that say so.
        let r = oblivious.send("POST", "/v2/models/iris/infer", &typed(b"twelve"), &body).await.unwrap();
        assert_eq!(r.status, 400);
        assert!(r.error_message().unwrap().contains("not a number of bytes"), "{:?}", r.error_message());
        let r = oblivious.send("POST", "/v2/models/iris/infer", &typed(b"999999"), &body).await.unwrap();
        assert_eq!(r.status, 400);
        assert!(
            r.error_message().unwrap().contains("Inference-Header-Content-Length is 999999"),
            "{:?}",
            r.error_message()
        );
    });
}

#[test]
fn a_parent_serving_other_keys_is_caught_before_a_single_request_is_sent() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    // The parent's own key, in a perfectly valid configuration: it could read everything sent to it.
    let own = ohttp::GatewayKey::generate(0, &ohttp::GATEWAY_AEADS, &SystemRandom::new()).unwrap();
    let keys = KeyConfig::encode_list(std::slice::from_ref(own.config()));
    let (url, seen) = hostile_parent(stack.url.clone(), Lie::Keys(keys));
    let oblivious = client(&url, policy(&stack));
    let err = rt().block_on(oblivious.infer("iris", b"{}")).unwrap_err();
    let ObliviousError::Untrusted(u) = &err else { panic!("not refused as untrusted: {err}") };
    assert_eq!(u.failed_check(), "commitment", "{u}");
    assert!(u.to_string().contains("OHTTP key configuration"), "{u}");
    assert_eq!(seen.posts(), 0, "a request reached the relay");
    // The CLI says so with its own exit code, and names the check.
    let input = stack.dir.path().join("req.json");
    std::fs::write(&input, serde_json::to_vec(&case("iris")["request"]).unwrap()).unwrap();
    let out = std::process::Command::new(veil_tests::bin("veil").unwrap())
        .args(["infer", "--url", &url, "--policy"])
        .arg(stack.client_policy())
        .args(["--model", "iris", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("check commitment"));
    assert_eq!(seen.posts(), 0);
}

#[test]
fn a_parent_replaying_an_old_attestation_document_is_caught() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let old = rt().block_on(veil_client::Client::new(&stack.url).unwrap().attestation(&[7u8; 32])).unwrap();
    let (url, seen) = hostile_parent(stack.url.clone(), Lie::Document(old));
    let err = rt().block_on(client(&url, policy(&stack)).infer("iris", b"{}")).unwrap_err();
    let ObliviousError::Untrusted(u) = &err else { panic!("not refused as untrusted: {err}") };
    assert_eq!(u.failed_check(), "nonce", "{u}");
    assert_eq!(seen.posts(), 0);
}

#[test]
fn an_enclave_of_other_pcrs_is_refused_and_a_roll_out_accepts_either_image() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let text = std::fs::read_to_string(stack.client_policy()).unwrap();
    let mut file: veil_client::trust::PolicyFile = toml::from_str(&text).unwrap();
    let real = file.images[0].clone();
    let mut other = real.clone();
    other.name = Some("next release".into());
    other.pcr0 = "ab".repeat(48);
    file.images = vec![other.clone()];
    let base = stack.client_policy().parent().unwrap().to_path_buf();
    let only_other = ClientPolicy::from_file(file.clone(), &base).unwrap();
    let err = rt().block_on(client(&stack.url, only_other).infer("iris", b"{}")).unwrap_err();
    let ObliviousError::Untrusted(u) = &err else { panic!("not refused: {err}") };
    assert_eq!(u.failed_check(), "pcr0", "{u}");
    // During a roll-out the policy lists both images: the enclave matches the second.
    file.images = vec![other, real];
    let both = ClientPolicy::from_file(file, &base).unwrap();
    let oblivious = client(&stack.url, both);
    let gateway = rt().block_on(oblivious.gateway()).unwrap();
    assert_eq!(gateway.image, "veil dev (mock PCRs)");
}

/// Encapsulates a request for `path` to the stack's first key, the way any OHTTP client would.
fn encapsulate(url: &str, method: &str, path: &str, body: &[u8]) -> (Vec<u8>, ohttp::ResponseContext) {
    let (_, keys) = http_get(url, ohttp::GATEWAY_PATH).unwrap();
    let config = KeyConfig::decode_list(&keys).unwrap().remove(0);
    let inner = bhttp::encode_request(method, "https", "veil", path, &[], body, true);
    ohttp::encapsulate(&config, &inner, &SystemRandom::new()).unwrap()
}

fn post(url: &str, body: &[u8]) -> (u16, Vec<u8>) {
    http_raw_typed(url, "POST", ohttp::GATEWAY_PATH, Some(ohttp::REQUEST_MEDIA_TYPE), body).unwrap()
}

fn open_status(context: &ohttp::ResponseContext, mut sealed: Vec<u8>) -> u16 {
    bhttp::parse_response(context.open_in_place(&mut sealed).unwrap()).unwrap().status
}

#[test]
fn a_replayed_encapsulated_request_is_refused_and_fresh_ones_served() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let body = serde_json::to_vec(&case("iris")["request"]).unwrap();
    let (enc, context) = encapsulate(&stack.url, "POST", "/v2/models/iris/infer", &body);
    let (status, sealed) = post(&stack.url, &enc);
    assert_eq!(status, 200);
    assert_eq!(open_status(&context, sealed), 200);
    for _ in 0..3 {
        let (status, answer) = post(&stack.url, &enc);
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&answer));
        assert!(String::from_utf8_lossy(&answer).contains("replayed"), "{}", String::from_utf8_lossy(&answer));
    }
    let (fresh, context) = encapsulate(&stack.url, "POST", "/v2/models/iris/infer", &body);
    let (status, sealed) = post(&stack.url, &fresh);
    assert_eq!((status, open_status(&context, sealed)), (200, 200));
}

#[test]
fn tampered_truncated_misaddressed_and_oversized_requests_get_clear_errors_and_others_are_served() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let body = serde_json::to_vec(&case("iris")["request"]).unwrap();
    let fresh = || encapsulate(&stack.url, "POST", "/v2/models/iris/infer", &body).0;
    let mut tampered = fresh();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let mut key_id = fresh();
    key_id[0] = 0x7f;
    let mut suite = fresh();
    suite[6] = 0x01; // AES-128-GCM: not offered by this gateway
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("tampered", tampered, 422),
        ("unknown key id", key_id, 422),
        ("unknown suite", suite, 422),
        ("truncated", fresh()[..40].to_vec(), 400),
        ("oversized", vec![0u8; 9 << 20], 413),
    ];
    for (what, enc, want) in cases {
        let (status, answer) = post(&stack.url, &enc);
        assert_eq!(status, want, "{what}: {}", String::from_utf8_lossy(&answer));
        let v: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {v}");
    }
    // Not OHTTP at all.
    let (status, _) = http_raw_typed(&stack.url, "POST", ohttp::GATEWAY_PATH, Some("application/json"), b"{}").unwrap();
    assert_eq!(status, 415);
    // And the enclave still serves everyone else.
    let (enc, context) = encapsulate(&stack.url, "POST", "/v2/models/iris/infer", &body);
    let (status, sealed) = post(&stack.url, &enc);
    assert_eq!((status, open_status(&context, sealed)), (200, 200));
}

#[test]
fn two_enclaves_of_one_image_and_fleet_key_serve_the_same_keys_and_either_answers() {
    let mut options = StackOptions::new(Transport::Unix, &["iris"]);
    options.ohttp_fleet_key = true;
    let mut stack = Stack::start(options).unwrap();
    let replica = stack.inner().start_replica(1).unwrap();
    let (_, keys_a) = http_get(&stack.url, ohttp::GATEWAY_PATH).unwrap();
    let (_, keys_b) = http_get(&replica.url, ohttp::GATEWAY_PATH).unwrap();
    assert_eq!(keys_a, keys_b, "the two enclaves serve different key configurations");
    assert_eq!(KeyConfig::decode_list(&keys_a).unwrap()[0].key_id, 1);
    let policy = policy(&stack);
    let body = serde_json::to_vec(&case("iris")["request"]).unwrap();
    rt().block_on(async {
        // Verified against the first enclave, sent to the second.
        let a = client(&stack.url, policy.clone());
        let verified = a.gateway().await.unwrap();
        let b = ObliviousClient::with_verified(
            veil_client::Client::new(&replica.url).unwrap(),
            policy.clone(),
            verified.clone(),
        );
        let answer = b.infer("iris", &body).await.unwrap();
        assert_eq!(answer.status, 200);
        veil_tests::compare_outputs(&serde_json::from_slice(&answer.body).unwrap(), &case("iris")).unwrap();
        // And the second enclave's own attestation commits to the same keys.
        let own = client(&replica.url, policy).gateway().await.unwrap();
        assert_eq!(own.key_list_sha384, verified.key_list_sha384);
    });
}

#[test]
fn without_a_fleet_key_each_enclave_has_its_own_boot_key() {
    let mut stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let replica = stack.inner().start_replica(1).unwrap();
    let (_, keys_a) = http_get(&stack.url, ohttp::GATEWAY_PATH).unwrap();
    let (_, keys_b) = http_get(&replica.url, ohttp::GATEWAY_PATH).unwrap();
    assert_ne!(keys_a, keys_b);
    // A request encapsulated to the first enclave's key does not open at the second.
    let (enc, _) = encapsulate(&stack.url, "GET", "/v2/health/ready", b"");
    let (status, _) = post(&replica.url, &enc);
    assert_eq!(status, 422);
}

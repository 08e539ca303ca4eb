//! The confidential flow end to end: mock KMS, enclave (mock NSM) and parent as real processes; clients
//! seal requests under KMS data keys that only the attested enclave can obtain.
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_kms::types::DataKeySpec;
use serde_json::{Value, json};
use veil_client::{Client, ClientError};
use veil_protocol::envelope::{self, DataKey, Sealer};
use veil_tests::{Stack, StackOptions, Transport, compare_outputs, http_get, references};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn kms_calls(stack: &Stack) -> u64 {
    let (_, body) = http_get(&stack.url, "/readyz").unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    v["kms_calls"].as_u64().unwrap_or_else(|| panic!("no kms_calls in {v}"))
}

/// A data key straight from KMS, for tests that seal by hand: (plaintext, blob).
async fn data_key(stack: &Stack, context: &BTreeMap<String, String>) -> (Vec<u8>, Vec<u8>) {
    let k = stack.kms.as_ref().unwrap();
    let mut req = k.client().await.unwrap().generate_data_key().key_id(&k.key_id).key_spec(DataKeySpec::Aes256);
    for (a, b) in context {
        req = req.encryption_context(a, b);
    }
    let out = req.send().await.unwrap();
    (out.plaintext().unwrap().as_ref().to_vec(), out.ciphertext_blob().unwrap().as_ref().to_vec())
}

#[test]
fn sealed_requests_give_the_reference_answers_with_one_kms_call_per_data_key() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris", "breast_cancer"]).with_kms()).unwrap();
    let client = Client::new(&stack.url).unwrap();
    let before = kms_calls(&stack);
    rt().block_on(async {
        let mut session = stack.session(BTreeMap::from([("tenant".into(), "hospital-a".into())])).await.unwrap();
        for model in ["iris", "breast_cancer"] {
            let refs = references(model).unwrap();
            for case in refs["cases"].as_array().unwrap() {
                for _ in 0..5 {
                    let answer = client
                        .infer_sealed(&mut session, model, &serde_json::to_vec(&case["request"]).unwrap())
                        .await
                        .unwrap();
                    compare_outputs(&serde_json::from_slice(&answer).unwrap(), case).unwrap();
                }
            }
        }
        assert_eq!(session.data_keys_generated(), 1);
        // Errors about the request come back sealed, and the client opens them.
        let bad = json!({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]});
        let err =
            client.infer_sealed(&mut session, "breast_cancer", &serde_json::to_vec(&bad).unwrap()).await.unwrap_err();
        match err {
            ClientError::Status { status, message } => {
                assert_eq!(status.as_u16(), 400);
                assert!(message.contains("expected shape [-1, 30]"), "{message}");
            }
            other => panic!("{other}"),
        }
    });
    // 30 requests and an error under one data key: one KMS call by the enclave.
    assert_eq!(kms_calls(&stack) - before, 1);
    // A plaintext request is refused: the enclave accepts only sealed envelopes.
    let refs = references("iris").unwrap();
    let (status, body) = veil_tests::http_raw(
        &stack.url,
        "POST",
        "/v1/models/iris/infer",
        &serde_json::to_vec(&refs["cases"][0]["request"]).unwrap(),
    )
    .unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("malformed envelope"));
}

#[test]
fn tampered_replayed_truncated_and_wrong_context_envelopes_are_refused_and_service_goes_on() {
    let stack = Stack::start(StackOptions::new(Transport::Tcp, &["breast_cancer"]).with_kms()).unwrap();
    let client = Client::new(&stack.url).unwrap();
    let refs = references("breast_cancer").unwrap();
    let case = &refs["cases"][0];
    let plain = serde_json::to_vec(&case["request"]).unwrap();
    let key_id = stack.kms.as_ref().unwrap().key_id.clone();
    rt().block_on(async {
        let ctx = BTreeMap::from([("tenant".to_owned(), "a".to_owned())]);
        let (dk, blob) = data_key(&stack, &ctx).await;
        let key = DataKey::new(&dk).unwrap();
        let sealer = Sealer { key: &key, key_id: &key_id, encrypted_data_key: &blob, encryption_context: &ctx };
        let refused = |e: ClientError, want: &str| match e {
            ClientError::Status { status, message } => {
                assert_eq!(status.as_u16(), 400, "{message}");
                assert!(message.contains(want), "{message:?} should say {want:?}");
            }
            other => panic!("{other}"),
        };
        let ok = |answer: Vec<u8>, tag| {
            let opened = sealer.open_response("breast_cancer", &tag, &answer).unwrap();
            compare_outputs(&serde_json::from_slice(&opened).unwrap(), case).unwrap();
        };

        // A good one, then the same bytes again: replay.
        let (wire, tag) = sealer.seal_request("breast_cancer", &plain, now()).unwrap();
        ok(client.infer("breast_cancer", &wire).await.unwrap(), tag);
        refused(client.infer("breast_cancer", &wire).await.unwrap_err(), "replayed");

        // Tampered ciphertext.
        let (wire, _) = sealer.seal_request("breast_cancer", &plain, now()).unwrap();
        let mut parsed = envelope::parse_request(&wire).unwrap();
        parsed.ciphertext[3] ^= 0x40;
        let mut tampered = Vec::new();
        ciborium::into_writer(&parsed, &mut tampered).unwrap();
        refused(client.infer("breast_cancer", &tampered).await.unwrap_err(), "does not decrypt");

        // Truncated.
        let (wire, _) = sealer.seal_request("breast_cancer", &plain, now()).unwrap();
        refused(client.infer("breast_cancer", &wire[..wire.len() - 7]).await.unwrap_err(), "malformed envelope");

        // Sent to another model than it was sealed for.
        let (wire, _) = sealer.seal_request("iris", &plain, now()).unwrap();
        refused(client.infer("breast_cancer", &wire).await.unwrap_err(), "does not decrypt");

        // Too old: outside the replay window.
        let (wire, _) = sealer.seal_request("breast_cancer", &plain, now() - 3600).unwrap();
        refused(client.infer("breast_cancer", &wire).await.unwrap_err(), "outside the replay window");

        // A wrong encryption context: KMS will not release the key.
        let wrong = BTreeMap::from([("tenant".to_owned(), "b".to_owned())]);
        let liar = Sealer { key: &key, key_id: &key_id, encrypted_data_key: &blob, encryption_context: &wrong };
        let (wire, _) = liar.seal_request("breast_cancer", &plain, now()).unwrap();
        refused(
            client.infer("breast_cancer", &wire).await.unwrap_err(),
            "does not decrypt under this key and encryption context",
        );

        // And the enclave still serves.
        let (wire, tag) = sealer.seal_request("breast_cancer", &plain, now()).unwrap();
        ok(client.infer("breast_cancer", &wire).await.unwrap(), tag);
    });
}

#[test]
fn a_key_policy_for_other_pcrs_is_a_clear_denial() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"]).with_kms()).unwrap();
    let kms = stack.kms.clone().unwrap();
    // The policy now names another image's PCR0.
    let mut m: Value = serde_json::from_slice(&std::fs::read(&kms.measurements_file).unwrap()).unwrap();
    m["Measurements"]["PCR0"] = json!("ab".repeat(48));
    let other = stack.dir.path().join("other-measurements.json");
    std::fs::write(&other, serde_json::to_vec(&m).unwrap()).unwrap();
    let client = Client::new(&stack.url).unwrap();
    let refs = references("iris").unwrap();
    let body = serde_json::to_vec(&refs["cases"][0]["request"]).unwrap();
    rt().block_on(async {
        kms.put_policy_from(&other).await.unwrap();
        let mut session = stack.session(BTreeMap::new()).await.unwrap();
        match client.infer_sealed(&mut session, "iris", &body).await.unwrap_err() {
            ClientError::Status { status, message } => {
                assert_eq!(status.as_u16(), 400);
                assert!(message.contains("KMS refused the key"), "{message}");
                assert!(message.contains("kms:RecipientAttestation:ImageSha384"), "{message}");
            }
            other => panic!("{other}"),
        }
        // The right policy again: served.
        kms.put_policy_from(&kms.measurements_file).await.unwrap();
        let mut session = stack.session(BTreeMap::new()).await.unwrap();
        let answer = client.infer_sealed(&mut session, "iris", &body).await.unwrap();
        compare_outputs(&serde_json::from_slice(&answer).unwrap(), &refs["cases"][0]).unwrap();
    });
}

#[test]
fn kms_down_is_an_error_within_a_bound_and_service_resumes() {
    let mut stack = Stack::start(StackOptions::new(Transport::Unix, &["breast_cancer"]).with_kms()).unwrap();
    let client = Client::new(&stack.url).unwrap();
    let refs = references("breast_cancer").unwrap();
    let case = &refs["cases"][0];
    let plain = serde_json::to_vec(&case["request"]).unwrap();
    let key_id = stack.kms.as_ref().unwrap().key_id.clone();
    let rt = rt();
    // A data key the enclave has not seen yet, obtained while KMS is up.
    let ctx = BTreeMap::new();
    let (dk, blob) = rt.block_on(data_key(&stack, &ctx));
    let key = DataKey::new(&dk).unwrap();
    let sealer = Sealer { key: &key, key_id: &key_id, encrypted_data_key: &blob, encryption_context: &ctx };

    stack.kill_kms();
    let (wire, _) = sealer.seal_request("breast_cancer", &plain, now()).unwrap();
    let t = Instant::now();
    let err = rt.block_on(client.infer("breast_cancer", &wire)).unwrap_err();
    let took = t.elapsed();
    match err {
        ClientError::Status { status, message } => {
            assert_eq!(status.as_u16(), 503, "{message}");
            assert!(message.contains("KMS"), "{message}");
        }
        other => panic!("{other}"),
    }
    // --kms-timeout-secs 5 in the test stack: the bound holds with margin for slow machines.
    assert!(took < Duration::from_secs(15), "the KMS error took {took:?}");

    stack.restart_kms().unwrap();
    let (wire, tag) = sealer.seal_request("breast_cancer", &plain, now()).unwrap();
    let answer = rt.block_on(client.infer("breast_cancer", &wire)).unwrap();
    let opened = sealer.open_response("breast_cancer", &tag, &answer).unwrap();
    compare_outputs(&serde_json::from_slice(&opened).unwrap(), case).unwrap();
}

#[test]
fn the_parent_relays_no_plaintext_and_no_data_key() {
    let mut opts = StackOptions::new(Transport::Unix, &["breast_cancer"]).with_kms();
    opts.record = true;
    let stack = Stack::start(opts).unwrap();
    let client = Client::new(&stack.url).unwrap();
    let refs = references("breast_cancer").unwrap();
    let key_id = stack.kms.as_ref().unwrap().key_id.clone();
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    rt().block_on(async {
        let ctx = BTreeMap::from([("tenant".to_owned(), "a".to_owned())]);
        let (dk, blob) = data_key(&stack, &ctx).await;
        let key = DataKey::new(&dk).unwrap();
        let sealer = Sealer { key: &key, key_id: &key_id, encrypted_data_key: &blob, encryption_context: &ctx };
        secrets.push(("data key".into(), dk.clone()));
        for case in refs["cases"].as_array().unwrap() {
            let plain = serde_json::to_vec(&case["request"]).unwrap();
            let (wire, tag) = sealer.seal_request("breast_cancer", &plain, now()).unwrap();
            let answer = client.infer("breast_cancer", &wire).await.unwrap();
            let opened = sealer.open_response("breast_cancer", &tag, &answer).unwrap();
            // What must never cross the parent: the request JSON, the answer JSON, and distinctive values.
            secrets.push(("request".into(), plain));
            secrets.push(("answer".into(), opened.to_vec()));
            let first = case["request"]["inputs"][0]["data"][0].to_string();
            secrets.push(("an input value".into(), first.into_bytes()));
            let out = case["outputs"][1]["data"][0].as_f64().unwrap() as f32;
            secrets.push(("an output value".into(), format!("{out}").into_bytes()));
        }
    });
    let recorded = stack.recorded();
    assert!(recorded.len() > 10_000, "the proxies recorded only {} bytes", recorded.len());
    for (what, needle) in &secrets {
        assert!(
            !recorded.windows(needle.len()).any(|w| w == &needle[..]),
            "{what} appears in the bytes the parent relayed"
        );
    }
    // Proof the recorder sees what crosses: the model's name and the KMS endpoint go by in the clear.
    assert!(recorded.windows(13).any(|w| w == b"breast_cancer"));
}

/// `veil infer --help` says the key may be an alias: through the CLI, the client's GenerateDataKey and the
/// enclave's Decrypt (whose KeyId is the alias the envelope names) both resolve it.
#[test]
fn veil_infer_seals_under_an_alias_name_or_alias_arn() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["breast_cancer"]).with_kms()).unwrap();
    let kms = stack.kms.clone().unwrap();
    let refs = references("breast_cancer").unwrap();
    let case = &refs["cases"][0];
    let file = stack.dir.path().join("req.json");
    std::fs::write(&file, serde_json::to_vec(&case["request"]).unwrap()).unwrap();
    rt().block_on(async {
        let client = kms.client().await.unwrap();
        client.create_alias().alias_name("alias/veil-test").target_key_id(&kms.key_id).send().await.unwrap();
    });
    let help = std::process::Command::new(veil_tests::bin("veil").unwrap()).args(["infer", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("alias/NAME or alias ARN"), "the help says so");
    let infer = |key: &str| {
        std::process::Command::new(veil_tests::bin("veil").unwrap())
            .args(["infer", "--url", &stack.url, "--model", "breast_cancer", "--kms-key-id", key, "--input"])
            .arg(&file)
            .envs(stack.client_env())
            .output()
            .unwrap()
    };
    for key in ["alias/veil-test".to_owned(), format!("arn:aws:kms:{}:111122223333:alias/veil-test", kms.region)] {
        let out = infer(&key);
        assert!(out.status.success(), "{key}: {}", String::from_utf8_lossy(&out.stderr));
        compare_outputs(&serde_json::from_slice(&out.stdout).unwrap(), case).unwrap();
    }
    // The alias really was what named the key: without it, the same command fails, saying why.
    rt().block_on(async {
        kms.client().await.unwrap().delete_alias().alias_name("alias/veil-test").send().await.unwrap();
    });
    let out = infer("alias/veil-test");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("alias/veil-test is not found"), "{stderr}");
}

/// The key policy `veil kms policy` writes, enforced per principal by the mock: the parent's role (whose
/// credentials the enclave uses) and the client's role get no data key from a plain Decrypt.
#[test]
fn neither_the_parent_role_nor_a_client_decrypts_without_the_enclave() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"]).with_kms()).unwrap();
    let kms = stack.kms.clone().unwrap();
    rt().block_on(async {
        let (_, blob) = data_key(&stack, &BTreeMap::new()).await;
        let parent_config = veil_client::kms::KmsConfig {
            static_credentials: Some((veil_tests::TEST_PARENT_ACCESS_KEY.into(), veil_tests::TEST_SECRET_KEY.into())),
            ..kms.client_config()
        };
        let parent = veil_client::kms::kms_client(&parent_config).await.unwrap();
        for (who, client) in [("parent", parent), ("client", kms.client().await.unwrap())] {
            let err = client
                .decrypt()
                .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(blob.clone()))
                .send()
                .await
                .unwrap_err()
                .into_service_error();
            assert_eq!(aws_sdk_kms::error::ProvideErrorMetadata::code(&err), Some("AccessDeniedException"), "{who}");
            let message = aws_sdk_kms::error::ProvideErrorMetadata::message(&err).unwrap_or_default().to_owned();
            assert!(message.contains("NoDecryptWithoutAttestation"), "{who}: {message}");
        }
    });
}

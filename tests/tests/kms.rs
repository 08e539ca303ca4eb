//! The confidential flow end to end: mock KMS, enclave (mock NSM) and parent as real processes; clients
//! seal requests under KMS data keys that only the attested enclave can obtain, for the model digest they
//! expect.
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use veil_client::{Client, ClientError};
use veil_protocol::envelope::{self, DataKey, ModelRef, Outcome, RequestMeta, RequestTag, Sealer};
use veil_protocol::error::ErrorKind;
use veil_protocol::random::SystemRandom;
use veil_tests::{Stack, StackOptions, Transport, compare_outputs, http_get, http_raw, references};

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

/// Seals by hand under one data key, as a client library would.
struct HandSealer {
    key: DataKey,
    key_arn: String,
    blob: Vec<u8>,
    context: BTreeMap<String, String>,
}

impl HandSealer {
    async fn new(stack: &Stack, context: BTreeMap<String, String>) -> HandSealer {
        let (dk, blob) = stack.data_key(&context).await.unwrap();
        HandSealer { key: DataKey::new(&dk).unwrap(), key_arn: stack.kms.key_arn.clone(), blob, context }
    }

    fn sealer(&self) -> Sealer<'_> {
        Sealer {
            key: &self.key,
            key_id: &self.key_arn,
            encrypted_data_key: &self.blob,
            encryption_context: &self.context,
        }
    }

    fn seal(&self, model: &ModelRef, plain: &[u8], issued_at: u64) -> (Vec<u8>, RequestTag) {
        self.sealer().seal_request(model, plain, RequestMeta::default(), issued_at, &SystemRandom::new()).unwrap()
    }

    /// Posts `wire` and returns the enclave's opened outcome, or the parent's clear error.
    fn post(
        &self,
        stack: &Stack,
        model: &str,
        wire: &[u8],
        tag: &RequestTag,
    ) -> Result<(Outcome, Vec<u8>), (u16, Value)> {
        let (status, body) = http_raw(&stack.url, "POST", &format!("/v1/models/{model}/infer"), wire).unwrap();
        if status != 200 {
            return Err((
                status,
                serde_json::from_slice(&body).unwrap_or(json!({"raw": String::from_utf8_lossy(&body)})),
            ));
        }
        let mut body = body;
        match self.sealer().open_answer(tag, &mut body) {
            Ok(opened) => Ok((opened.meta.outcome, opened.body.to_vec())),
            Err(e) => Err((200, json!({"does_not_open": e.to_string()}))),
        }
    }
}

fn sealed_error(reply: Result<(Outcome, Vec<u8>), (u16, Value)>, want: &str) {
    match reply {
        Ok((Outcome::Error(e), _)) => assert!(e.message.contains(want), "{:?} should say {want:?}", e.message),
        other => panic!("expected a sealed error saying {want:?}, got {other:?}"),
    }
}

fn clear_error(reply: Result<(Outcome, Vec<u8>), (u16, Value)>, status: u16, want: &str) {
    match reply {
        Err((s, body)) => {
            assert_eq!(s, status, "{body}");
            assert!(body["error"].as_str().unwrap_or_default().contains(want), "{body} should say {want:?}");
        }
        other => panic!("expected the parent's {status} saying {want:?}, got {other:?}"),
    }
}

#[test]
fn sealed_requests_give_the_reference_answers_with_one_kms_call_per_data_key() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris", "breast_cancer"])).unwrap();
    let client = Client::new(&stack.url).unwrap();
    let before = kms_calls(&stack);
    rt().block_on(async {
        let mut session = stack.session(BTreeMap::from([("tenant".into(), "hospital-a".into())])).await.unwrap();
        for model in ["iris", "breast_cancer"] {
            let refs = references(model).unwrap();
            for case in refs["cases"].as_array().unwrap() {
                for _ in 0..5 {
                    let body = serde_json::to_vec(&case["request"]).unwrap();
                    let answer = client.infer(&mut session, &stack.model_ref(model), &body).await.unwrap();
                    assert_eq!(
                        answer.model_sha384(),
                        &stack.digest(model),
                        "the answer names the digest that answered"
                    );
                    compare_outputs(&serde_json::from_slice(answer.body()).unwrap(), case).unwrap();
                }
            }
        }
        assert_eq!(session.data_keys_generated(), 1);
        // Errors about the request come back sealed: the client knows the enclave said them.
        let bad = json!({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]});
        let err = client
            .infer(&mut session, &stack.model_ref("breast_cancer"), &serde_json::to_vec(&bad).unwrap())
            .await
            .unwrap_err();
        match err {
            ClientError::Enclave { kind, message, .. } => {
                assert_eq!(kind, ErrorKind::BadRequest);
                assert!(message.contains("expected shape [-1, 30]"), "{message}");
            }
            other => panic!("{other}"),
        }
    });
    // 30 requests and an error under one data key: one KMS call by the enclave.
    assert_eq!(kms_calls(&stack) - before, 1);
    // A plaintext request is refused: the enclave accepts only sealed envelopes.
    let refs = references("iris").unwrap();
    let (status, body) = http_raw(
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
    let stack = Stack::start(StackOptions::new(Transport::Tcp, &["breast_cancer"])).unwrap();
    let refs = references("breast_cancer").unwrap();
    let case = &refs["cases"][0];
    let plain = serde_json::to_vec(&case["request"]).unwrap();
    let model = stack.model_ref("breast_cancer");
    rt().block_on(async {
        let hand = HandSealer::new(&stack, BTreeMap::from([("tenant".to_owned(), "a".to_owned())])).await;
        let ok = |reply: Result<(Outcome, Vec<u8>), (u16, Value)>| match reply {
            Ok((Outcome::Answer { .. }, body)) => {
                compare_outputs(&serde_json::from_slice(&body).unwrap(), case).unwrap()
            }
            other => panic!("{other:?}"),
        };

        // A good one, then the same bytes again: replay, refused by the enclave, sealed.
        let (wire, tag) = hand.seal(&model, &plain, now());
        ok(hand.post(&stack, "breast_cancer", &wire, &tag));
        sealed_error(hand.post(&stack, "breast_cancer", &wire, &tag), "replayed");

        // Tampered ciphertext: the enclave holds the key, so it says so sealed.
        let (mut wire, tag) = hand.seal(&model, &plain, now());
        let parsed = envelope::parse_request(&wire).unwrap();
        wire[parsed.ciphertext.start + 3] ^= 0x40;
        sealed_error(hand.post(&stack, "breast_cancer", &wire, &tag), "does not decrypt");

        // Truncated: not an envelope, in the clear.
        let (wire, tag) = hand.seal(&model, &plain, now());
        clear_error(hand.post(&stack, "breast_cancer", &wire[..wire.len() - 7], &tag), 400, "malformed envelope");

        // Sent to another model than it was sealed for.
        let iris = ModelRef { name: "iris".into(), sha384: model.sha384 };
        let (wire, tag) = hand.seal(&iris, &plain, now());
        match hand.post(&stack, "breast_cancer", &wire, &tag) {
            // The enclave sealed its refusal for the model it routed to, which is not the one the client
            // asked for: the client cannot open it, and takes nothing from it.
            Err((200, v)) => assert!(v["does_not_open"].as_str().unwrap().contains("does not decrypt"), "{v}"),
            other => panic!("{other:?}"),
        }

        // Too old: outside the replay window.
        let (wire, tag) = hand.seal(&model, &plain, now() - 3600);
        sealed_error(hand.post(&stack, "breast_cancer", &wire, &tag), "outside the replay window");

        // Another model digest than the one loaded: refused, naming both.
        let wrong = ModelRef { name: "breast_cancer".into(), sha384: [7; 48] };
        let (wire, tag) = hand.seal(&wrong, &plain, now());
        sealed_error(hand.post(&stack, "breast_cancer", &wire, &tag), "but this enclave serves SHA-384");

        // A wrong encryption context: KMS will not release the key, so the enclave cannot seal its refusal.
        let liar = HandSealer {
            key: DataKey::new(&[0u8; 32]).unwrap(),
            key_arn: hand.key_arn.clone(),
            blob: hand.blob.clone(),
            context: BTreeMap::from([("tenant".to_owned(), "b".to_owned())]),
        };
        let (wire, tag) = liar.seal(&model, &plain, now());
        clear_error(
            liar.post(&stack, "breast_cancer", &wire, &tag),
            400,
            "does not decrypt under this key and encryption context",
        );

        // And the enclave still serves.
        let (wire, tag) = hand.seal(&model, &plain, now());
        ok(hand.post(&stack, "breast_cancer", &wire, &tag));
    });
}

#[test]
fn a_key_policy_for_other_pcrs_is_a_clear_denial() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    // The policy now names another image's PCR0.
    let mut m: Value = serde_json::from_slice(&std::fs::read(&stack.kms.measurements_file).unwrap()).unwrap();
    m["Measurements"]["PCR0"] = json!("ab".repeat(48));
    let other = stack.dir.path().join("other-measurements.json");
    std::fs::write(&other, serde_json::to_vec(&m).unwrap()).unwrap();
    let client = Client::new(&stack.url).unwrap();
    let refs = references("iris").unwrap();
    let body = serde_json::to_vec(&refs["cases"][0]["request"]).unwrap();
    rt().block_on(async {
        stack.put_policy_from(&other).await.unwrap();
        let mut session = stack.session(BTreeMap::new()).await.unwrap();
        match client.infer(&mut session, &stack.model_ref("iris"), &body).await.unwrap_err() {
            // KMS's refusal reaches the client through the parent: not authenticated, and said so.
            e @ ClientError::Unauthenticated { .. } => {
                assert_eq!(e.status().map(|s| s.as_u16()), Some(403));
                let message = e.to_string();
                assert!(message.starts_with("the parent said, not authenticated by the enclave:"), "{message}");
                assert!(message.contains("KMS refused the key"), "{message}");
                assert!(message.contains("kms:RecipientAttestation:ImageSha384"), "{message}");
            }
            other => panic!("{other}"),
        }
        // The right policy again: served.
        stack.put_policy_from(&stack.kms.measurements_file).await.unwrap();
        let mut session = stack.session(BTreeMap::new()).await.unwrap();
        let answer = client.infer(&mut session, &stack.model_ref("iris"), &body).await.unwrap();
        compare_outputs(&serde_json::from_slice(answer.body()).unwrap(), &refs["cases"][0]).unwrap();
    });
}

#[test]
fn kms_down_is_an_error_within_a_bound_and_service_resumes() {
    let mut stack = Stack::start(StackOptions::new(Transport::Unix, &["breast_cancer"])).unwrap();
    let refs = references("breast_cancer").unwrap();
    let case = &refs["cases"][0];
    let plain = serde_json::to_vec(&case["request"]).unwrap();
    let model = stack.model_ref("breast_cancer");
    let rt = rt();
    // A data key the enclave has not seen yet, obtained while KMS is up.
    let hand = rt.block_on(HandSealer::new(&stack, BTreeMap::new()));

    stack.kill_kms();
    let (wire, tag) = hand.seal(&model, &plain, now());
    let t = Instant::now();
    let reply = hand.post(&stack, "breast_cancer", &wire, &tag);
    let took = t.elapsed();
    clear_error(reply, 503, "KMS");
    // The test stack's KMS timeout is 5 s: the bound holds with margin for slow machines.
    assert!(took < Duration::from_secs(15), "the KMS error took {took:?}");

    stack.restart_kms().unwrap();
    let (wire, tag) = hand.seal(&model, &plain, now());
    match hand.post(&stack, "breast_cancer", &wire, &tag) {
        Ok((Outcome::Answer { .. }, body)) => compare_outputs(&serde_json::from_slice(&body).unwrap(), case).unwrap(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_parent_relays_no_plaintext_and_no_data_key() {
    let mut opts = StackOptions::new(Transport::Unix, &["breast_cancer"]);
    opts.record = true;
    let stack = Stack::start(opts).unwrap();
    let refs = references("breast_cancer").unwrap();
    let model = stack.model_ref("breast_cancer");
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    rt().block_on(async {
        let hand = HandSealer::new(&stack, BTreeMap::from([("tenant".to_owned(), "a".to_owned())])).await;
        secrets.push(("data key".into(), stack.data_key(&hand.context).await.unwrap().0));
        for case in refs["cases"].as_array().unwrap() {
            let plain = serde_json::to_vec(&case["request"]).unwrap();
            let (wire, tag) = hand.seal(&model, &plain, now());
            let Ok((Outcome::Answer { .. }, opened)) = hand.post(&stack, "breast_cancer", &wire, &tag) else {
                panic!("not answered")
            };
            // What must never cross the parent: the request JSON, the answer JSON, and distinctive values.
            secrets.push(("request".into(), plain));
            secrets.push(("answer".into(), opened));
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

/// `veil infer --help` says the key may be an alias: the client's GenerateDataKey resolves it, and the
/// envelope then names the key's ARN (what KMS answered), which the enclave's configuration accepts.
#[test]
fn veil_infer_seals_under_an_alias_name_or_alias_arn() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["breast_cancer"])).unwrap();
    let kms = stack.kms.clone();
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
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let kms = stack.kms.clone();
    rt().block_on(async {
        let (_, blob) = stack.data_key(&BTreeMap::new()).await.unwrap();
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

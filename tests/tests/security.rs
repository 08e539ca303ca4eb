//! Regression tests for the findings of the security review that need a whole stack, each named after its
//! finding (docs/SECURITY.md, "Findings"). Unit-level regressions live next to the code they test
//! (`finding_*` in enclave/src and protocol/src).
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use veil_client::{Client, ClientError};
use veil_protocol::envelope::{self, DataKey, ModelRef, RequestMeta, Sealer};
use veil_protocol::random::SystemRandom;
use veil_tests::{Reply, Stack, StackOptions, Transport, http_get, http_raw, references};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Finding 1: the parent could serve a plaintext model, or a file under another name or another KMS key,
/// under a configured name, and the enclave loaded it. Now the enclave refuses to become ready, says why,
/// and serves nothing half-loaded.
#[test]
fn finding_1_the_enclave_refuses_a_model_file_the_parent_substitutes() {
    let mut stack = Stack::start(StackOptions::new(Transport::Unix, &["breast_cancer", "iris"])).unwrap();
    let served = stack.inner().model_files.iter().find(|(n, _)| n == "breast_cancer").unwrap().1.clone();
    let original = std::fs::read(&served).unwrap();
    let iris_file = stack.inner().model_files.iter().find(|(n, _)| n == "iris").unwrap().1.clone();
    let substitutes: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a plaintext ONNX file",
            std::fs::read(veil_tests::model_path("breast_cancer").unwrap()).unwrap(),
            "the parent served a plaintext file",
        ),
        // A file encrypted under the same key for another model: its header names the other model.
        ("another model's encrypted file", std::fs::read(&iris_file).unwrap(), "encrypted for model \"iris\""),
        ("a truncated file", original[..original.len() - 100].to_vec(), "its header says"),
    ];
    for (what, bytes, why) in substitutes {
        stack.kill_enclave();
        std::fs::write(&served, &bytes).unwrap();
        let err = stack.start_enclave().unwrap_err().to_string();
        assert!(err.contains(why), "{what}: the enclave should say {why:?}, said:\n{err}");
        assert!(err.contains("does not serve a half-loaded model set") || err.contains("exited"), "{what}: {err}");
        assert_ne!(http_get(&stack.url, "/readyz").unwrap().0, 200, "{what}: never ready");
    }
    // The right file again: served.
    stack.kill_enclave();
    std::fs::write(&served, &original).unwrap();
    stack.start_enclave().unwrap();
    let refs = references("breast_cancer").unwrap();
    let (status, got) =
        stack.infer("breast_cancer", &serde_json::to_vec(&refs["cases"][0]["request"]).unwrap()).unwrap();
    assert_eq!(status, 200, "{got}");
}

/// Finding 1, the client's side: a request is bound to the model digest the client expects, so a
/// request for another digest cannot be opened by this enclave (and it says so, sealed).
#[test]
fn finding_1_a_request_for_another_model_digest_is_not_answered() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["breast_cancer"])).unwrap();
    let refs = references("breast_cancer").unwrap();
    let body = serde_json::to_vec(&refs["cases"][0]["request"]).unwrap();
    let client = Client::new(&stack.url).unwrap();
    rt().block_on(async {
        let mut session = stack.session(BTreeMap::new()).await.unwrap();
        let other = ModelRef { name: "breast_cancer".into(), sha384: [0x42; 48] };
        match client.infer(&mut session, &other, &body).await.unwrap_err() {
            ClientError::Enclave { message, .. } => {
                assert!(message.contains(&hex::encode(stack.digest("breast_cancer"))), "{message}")
            }
            other => panic!("{other}"),
        }
    });
}

/// A fake parent: answers every request with `status` and `body`, and records what it received.
fn fake_parent(status: u16, body: Value) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<u8>>> = Default::default();
    let recorded = Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut req = vec![0u8; len];
            let _ = reader.read_exact(&mut req);
            recorded.lock().unwrap().extend_from_slice(&req);
            let text = body.to_string();
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    (url, seen)
}

/// Finding 5: the client could not tell the enclave's errors from errors the parent made up ("input X:
/// expected shape ...", "KMS refused the key: PCR0 ..."). And finding 2: the client library could send
/// plaintext to the parent. A lying parent now gets the plaintext never, and its errors are reported as
/// the parent's word.
#[test]
fn finding_5_and_2_errors_the_parent_makes_up_are_marked_and_it_never_sees_plaintext() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["breast_cancer"])).unwrap();
    let refs = references("breast_cancer").unwrap();
    let body = serde_json::to_vec(&refs["cases"][0]["request"]).unwrap();
    let forged = "KMS refused the key: the key policy's kms:RecipientAttestation:PCR0 condition does not match";
    let (url, seen) = fake_parent(403, json!({"error": forged, "kind": "forbidden"}));
    let client = Client::new(&url).unwrap();
    rt().block_on(async {
        let mut session = stack.session(BTreeMap::new()).await.unwrap();
        let err = client.infer(&mut session, &stack.model_ref("breast_cancer"), &body).await.unwrap_err();
        assert!(matches!(err, ClientError::Unauthenticated { .. }), "{err}");
        assert!(err.to_string().starts_with("the parent said, not authenticated by the enclave:"), "{err}");
    });
    // The CLI says the same, and exits 1.
    let input = stack.dir.path().join("req.json");
    std::fs::write(&input, &body).unwrap();
    let out = std::process::Command::new(veil_tests::bin("veil").unwrap())
        .args(["infer", "--url", &url, "--model", "breast_cancer", "--input"])
        .arg(&input)
        .args(["--expect-model-sha384", &hex::encode(stack.digest("breast_cancer"))])
        .envs(stack.client_env())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the parent said, not authenticated by the enclave: KMS refused the key"), "{stderr}");
    // What the parent received: sealed envelopes, never the request.
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    assert!(!seen.windows(body.len()).any(|w| w == &body[..]), "the request reached the parent in the clear");
    let first_value = refs["cases"][0]["request"]["inputs"][0]["data"][0].to_string();
    assert!(!seen.windows(first_value.len()).any(|w| w == first_value.as_bytes()));
}

/// Finding 6: ciphertext lengths revealed the data (a BOOL's true/false differed by a byte, numbers their
/// digits, errors were shorter than answers). Sealed plaintexts are now padded to buckets.
#[test]
fn finding_6_ciphertext_lengths_do_not_reveal_the_data() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["datatypes", "iris"])).unwrap();
    let request = |b: bool, n: i64| {
        serde_json::to_vec(&json!({"inputs": [
            {"name": "f64", "shape": [2], "datatype": "FP64", "data": [0.1, -2.5]},
            {"name": "i32", "shape": [2], "datatype": "INT32", "data": [2, -7]},
            {"name": "b", "shape": [2], "datatype": "BOOL", "data": [b, false]},
            {"name": "f32", "shape": [2], "datatype": "FP32", "data": [1.5, -0.25]},
            {"name": "i64", "shape": [2], "datatype": "INT64", "data": [n, 3]},
        ]}))
        .unwrap()
    };
    // Requests that differ in one BOOL, or in a number's digits, seal to equal lengths...
    let lens: Vec<usize> = [request(true, 1), request(false, 1), request(true, 1_000_000_000_000)]
        .iter()
        .map(|r| stack.seal("datatypes", r).unwrap().0.len())
        .collect();
    assert!(lens.windows(2).all(|w| w[0] == w[1]), "sealed request lengths differ: {lens:?}");
    assert_ne!(request(true, 1).len(), request(false, 1).len(), "the plaintexts do differ");
    // ...and so do their answers, as the parent relays them.
    let wire_len = |body: &[u8], model: &str| {
        let (wire, _) = stack.seal(model, body).unwrap();
        let (status, answer) = http_raw(&stack.url, "POST", &format!("/v1/models/{model}/infer"), &wire).unwrap();
        assert_eq!(status, 200);
        answer.len()
    };
    let a = wire_len(&request(true, 1), "datatypes");
    let b = wire_len(&request(false, 1_000_000_000_000), "datatypes");
    assert_eq!(a, b, "answers to different values relay as different lengths");
    // An error and a small answer look alike too.
    let iris = references("iris").unwrap();
    let small_answer = wire_len(&serde_json::to_vec(&iris["cases"][0]["request"]).unwrap(), "iris");
    let error = wire_len(br#"{"inputs":[{"name":"float_input","shape":[1,1],"datatype":"FP32","data":[1]}]}"#, "iris");
    assert_eq!(small_answer, error, "an error is distinguishable from an answer by its length");
    match stack.send("iris", br#"{"inputs":[]}"#).unwrap() {
        Reply::Sealed { outcome: envelope::Outcome::Error(e), .. } => {
            assert!(e.message.contains("no inputs"), "{}", e.message)
        }
        other => panic!("{other:?}"),
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Finding 4: anyone who reaches the API could exhaust the enclave's memory and the account's KMS quota:
/// requests under one garbage data key queued holding their bodies, each made its own KMS call, and the
/// wait was not bounded. Now: 256 concurrent 8 MiB requests under one garbage data key keep the enclave's
/// memory within its configured budget, cost KMS at most a few calls, and a legitimate request is
/// answered within two seconds during the flood.
#[test]
fn finding_4_a_flood_under_one_garbage_data_key_is_bounded() {
    let budget: u64 = 128 << 20;
    let mut opts = StackOptions::new(Transport::Unix, &["breast_cancer"]);
    opts.parent_args = vec!["--max-body-bytes".into(), "9000000".into(), "--connections".into(), "4".into()];
    opts.enclave_config = format!("[limits]\nmax_request_bytes_in_flight = {budget}\n");
    let mut stack = Stack::start(opts).unwrap();
    let enclave_pid = stack.inner().pid(veil_client::devstack::Role::Enclave).unwrap();
    let rss_before = rss_kib(enclave_pid, "VmRSS:");
    // One garbage data key, under the stack's (accepted) KMS key: KMS will refuse it.
    let key = DataKey::new(&[9u8; 32]).unwrap();
    let ctx = BTreeMap::new();
    let garbage = vec![0xabu8; 200];
    let sealer =
        Sealer { key: &key, key_id: &stack.kms.key_arn, encrypted_data_key: &garbage, encryption_context: &ctx };
    let big = vec![b'7'; 8 << 20];
    let (flood, _) = sealer
        .seal_request(
            &stack.model_ref("breast_cancer"),
            &big[..(8 << 20) - 4096],
            RequestMeta::default(),
            now(),
            &SystemRandom::new(),
        )
        .unwrap();
    assert!(flood.len() <= 9_000_000, "{}", flood.len());
    let refs = references("breast_cancer").unwrap();
    let legit = serde_json::to_vec(&refs["cases"][0]["request"]).unwrap();
    // The legitimate client's session is under way before the flood (its data key is in the enclave's
    // cache), as a real client's is: what is measured is the flood's effect, not a first KMS call.
    let (status, got) = stack.infer("breast_cancer", &legit).unwrap();
    assert_eq!(status, 200, "{got}");
    let url = stack.url.clone();
    let kms_before = {
        let (_, b) = http_get(&stack.url, "/readyz").unwrap();
        serde_json::from_slice::<Value>(&b).unwrap()["kms_calls"].as_u64().unwrap()
    };
    let statuses: Mutex<BTreeMap<u16, usize>> = Default::default();
    let mut legit_latencies = Vec::new();
    std::thread::scope(|s| {
        let flood = &flood;
        for _ in 0..256 {
            let (url, statuses) = (&url, &statuses);
            s.spawn(move || {
                let status = http_raw(url, "POST", "/v1/models/breast_cancer/infer", flood).map(|r| r.0).unwrap_or(0);
                *statuses.lock().unwrap().entry(status).or_default() += 1;
            });
        }
        // While the flood is on: legitimate requests, each answered within two seconds.
        // The client seals first (its KMS session is its own business), then the request is timed.
        let sealed: Vec<_> = (0..5).map(|_| stack.seal("breast_cancer", &legit).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(300));
        for (wire, tag) in sealed {
            let t = Instant::now();
            let (status, answer) = http_raw(&url, "POST", "/v1/models/breast_cancer/infer", &wire).unwrap();
            legit_latencies.push(t.elapsed());
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
            let (outcome, body) = stack.open(&tag, &answer).unwrap();
            assert!(matches!(outcome, envelope::Outcome::Answer { .. }), "{outcome:?}");
            veil_tests::compare_outputs(&serde_json::from_slice(&body).unwrap(), &refs["cases"][0]).unwrap();
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let hwm = rss_kib(enclave_pid, "VmHWM:");
    let grown = hwm.saturating_sub(rss_before) << 10;
    let statuses = statuses.into_inner().unwrap();
    let kms_after = {
        let (_, b) = http_get(&stack.url, "/readyz").unwrap();
        serde_json::from_slice::<Value>(&b).unwrap()["kms_calls"].as_u64().unwrap()
    };
    eprintln!("flood: statuses {statuses:?}, enclave memory grew {} MiB, legit {legit_latencies:?}", grown >> 20);
    // Every flood request was refused (KMS refuses the key: 400; over the budget: 503), none answered.
    assert_eq!(statuses.values().sum::<usize>(), 256);
    assert!(statuses.keys().all(|s| *s == 400 || *s == 503), "{statuses:?}");
    assert!(kms_after - kms_before <= 3, "KMS was asked {} times", kms_after - kms_before);
    // The budget bounds the bodies; allow 64 MiB for everything else a process grows (allocator, stacks).
    assert!(grown <= budget + (64 << 20), "the enclave grew {} MiB, over its {} MiB budget", grown >> 20, budget >> 20);
    for l in &legit_latencies {
        assert!(*l < Duration::from_secs(2), "a legitimate request took {l:?} during the flood");
    }
}

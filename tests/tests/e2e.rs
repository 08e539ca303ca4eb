//! End to end: the real `veil-parent` and `veil-enclave` binaries on real sockets, driven over HTTP.
//!
//! Outputs are compared with Python onnxruntime's for the same inputs (tests/data/references, made by
//! scripts/make_references.py), over both TCP and Unix-socket links between parent and enclave.
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use veil_tests::{Stack, StackOptions, Transport, compare_outputs, http_get, http_raw, references};

/// A sealed request through the stack (the enclave accepts nothing else), opened answer or error as JSON.
fn infer(stack: &Stack, model: &str, body: &[u8]) -> (u16, Value) {
    stack.infer(model, body).expect("request")
}

/// An unsealed body posted as it is (what a confused or hostile client might send).
fn post_raw(stack: &Stack, model: &str, body: &[u8]) -> (u16, Value) {
    let (status, bytes) = http_raw(&stack.url, "POST", &format!("/v1/models/{model}/infer"), body).expect("request");
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
    (status, v)
}

fn check_references(stack: &Stack, model: &str) {
    let refs = references(model).expect("references");
    let cases = refs["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    for case in cases {
        let body = serde_json::to_vec(&case["request"]).unwrap();
        let (status, got) = infer(stack, model, &body);
        assert_eq!(status, 200, "{model}/{}: {got}", case["name"]);
        assert_eq!(got["model_name"], model);
        if let Err(diff) = compare_outputs(&got, case) {
            panic!("{model}/{}: {diff}", case["name"]);
        }
    }
}

#[test]
fn outputs_match_onnxruntime_over_tcp() {
    let stack = Stack::start(StackOptions::new(Transport::Tcp, &["iris", "minilm", "breast_cancer"])).unwrap();
    check_references(&stack, "iris");
    check_references(&stack, "minilm");
    check_references(&stack, "breast_cancer");
}

#[test]
fn outputs_match_onnxruntime_over_unix_sockets() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris", "breast_cancer"])).unwrap();
    check_references(&stack, "iris");
    check_references(&stack, "breast_cancer");
}

#[test]
fn the_client_cli_round_trips_a_request() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["breast_cancer"])).unwrap();
    let refs = references("breast_cancer").unwrap();
    let case = &refs["cases"][0];
    let file = stack.dir.path().join("req.json");
    std::fs::write(&file, serde_json::to_vec(&case["request"]).unwrap()).unwrap();
    let out = std::process::Command::new(veil_tests::bin("veil").unwrap())
        .args(["infer", "--url", &stack.url, "--model", "breast_cancer", "--input"])
        .arg(&file)
        .envs(stack.client_env())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    compare_outputs(&got, case).unwrap();

    // A request the server refuses: exit code 1 and the server's reason on stderr.
    let bad = stack.dir.path().join("bad.json");
    std::fs::write(&bad, br#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#).unwrap();
    let out = std::process::Command::new(veil_tests::bin("veil").unwrap())
        .args(["infer", "--url", &stack.url, "--model", "breast_cancer", "--input"])
        .arg(&bad)
        .envs(stack.client_env())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("expected shape [-1, 30]"), "{stderr}");
}

#[test]
fn bad_tensors_get_errors_that_say_what_was_expected() {
    let stack = Stack::start(StackOptions::new(Transport::Tcp, &["iris"])).unwrap();
    let ok_input = json!({"name": "float_input", "shape": [3, 2], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]});
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"inputs": [{"name": "wrong", "shape": [3, 2], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}),
            400,
            "unknown input \"wrong\"; model \"iris\" takes: float_input",
        ),
        (
            json!({"inputs": [{"name": "float_input", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}),
            400,
            "expected shape [3, 2]",
        ),
        (
            json!({"inputs": [{"name": "float_input", "shape": [3, 2], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]}]}),
            400,
            "expected datatype FP32, got INT64",
        ),
        (
            json!({"inputs": [{"name": "float_input", "shape": [3, 2], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}]}),
            400,
            "needs 6 elements, data has 5",
        ),
        (
            json!({"inputs": [{"name": "float_input", "shape": [3, 2], "datatype": "FP32", "data": [1, 2, "x", 4, 5, 6]}]}),
            400,
            "element 2 is not FP32: not a number",
        ),
        (
            json!({"inputs": [ok_input.clone()], "outputs": [{"name": "nope"}]}),
            400,
            "unknown output \"nope\"; model \"iris\" has: label, probabilities",
        ),
        (json!({"inputs": []}), 400, "no inputs"),
        (json!({"nothing": 1}), 400, "missing field `inputs`"),
    ];
    for (body, status, want) in cases {
        let (got_status, got) = infer(&stack, "iris", &serde_json::to_vec(&body).unwrap());
        assert_eq!(got_status, status, "{body}: {got}");
        let msg = got["error"].as_str().unwrap_or_default();
        assert!(msg.contains(want), "{body}: got {msg:?}, want {want:?}");
        assert_eq!(got["kind"], "bad_request");
    }
    let (status, got) = infer(&stack, "iris", b"{not json");
    assert_eq!(status, 400, "{got}");
    assert!(got["error"].as_str().unwrap().contains("not a valid Open Inference Protocol"));

    // Unknown model: 404 that lists what is served.
    let (status, got) = infer(&stack, "resnet", &serde_json::to_vec(&json!({"inputs": [ok_input.clone()]})).unwrap());
    assert_eq!(status, 404, "{got}");
    assert_eq!(got["error"], "unknown model \"resnet\"; this enclave serves: iris");

    // Choosing outputs returns only those.
    let (status, got) = infer(
        &stack,
        "iris",
        &serde_json::to_vec(&json!({"inputs": [ok_input], "outputs": [{"name": "label"}]})).unwrap(),
    );
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(got["outputs"][0]["name"], "label");

    // Metadata names inputs, outputs and the model's digest.
    let (status, body) = http_get(&stack.url, "/v1/models/iris").unwrap();
    assert_eq!(status, 200);
    let meta: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(meta["inputs"][0], json!({"name": "float_input", "datatype": "FP32", "shape": [3, 2]}));
    assert_eq!(meta["parameters"]["sha384"].as_str().unwrap().len(), 96);
}

#[test]
fn oversized_bodies_get_413_and_the_server_keeps_serving() {
    let mut opts = StackOptions::new(Transport::Tcp, &["breast_cancer"]);
    opts.parent_args = vec!["--max-body-bytes".into(), "4096".into()];
    let stack = Stack::start(opts).unwrap();
    let (status, _) = http_raw(&stack.url, "POST", "/v1/models/breast_cancer/infer", &vec![b' '; 10_000]).unwrap();
    assert_eq!(status, 413);
    let refs = references("breast_cancer").unwrap();
    let (status, got) = infer(&stack, "breast_cancer", &serde_json::to_vec(&refs["cases"][0]["request"]).unwrap());
    assert_eq!(status, 200, "{got}");
}

#[test]
fn concurrent_requests_are_all_answered_correctly() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["breast_cancer", "iris"])).unwrap();
    let bc = references("breast_cancer").unwrap();
    let iris = references("iris").unwrap();
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for i in 0..32 {
            let (model, refs) = if i % 2 == 0 { ("breast_cancer", &bc) } else { ("iris", &iris) };
            let stack = &stack;
            handles.push(s.spawn(move || {
                let cases = refs["cases"].as_array().unwrap();
                let case = &cases[i % cases.len()];
                let (status, got) = infer(stack, model, &serde_json::to_vec(&case["request"]).unwrap());
                assert_eq!(status, 200, "{got}");
                compare_outputs(&got, case).unwrap();
            }));
        }
        for h in handles {
            h.join().unwrap();
        }
    });
}

#[test]
fn enclave_down_gives_503_quickly_and_service_resumes() {
    let mut opts = StackOptions::new(Transport::Tcp, &["breast_cancer"]);
    opts.start_enclave = false;
    let mut stack = Stack::start(opts).unwrap();
    let refs = references("breast_cancer").unwrap();
    let body = serde_json::to_vec(&refs["cases"][0]["request"]).unwrap();

    let t = Instant::now();
    let (status, got) = infer(&stack, "breast_cancer", &body);
    assert_eq!(status, 503, "{got}");
    assert!(t.elapsed() < Duration::from_secs(3), "503 took {:?}", t.elapsed());
    assert!(got["error"].as_str().unwrap().contains("enclave unavailable"), "{got}");
    assert_eq!(http_get(&stack.url, "/readyz").unwrap().0, 503);
    assert_eq!(http_get(&stack.url, "/healthz").unwrap().0, 200);

    stack.start_enclave().unwrap();
    let (status, got) = infer(&stack, "breast_cancer", &body);
    assert_eq!(status, 200, "{got}");

    // A crash while connections are pooled: the next request is refused quickly, not hung.
    stack.kill_enclave();
    let t = Instant::now();
    let (status, _) = infer(&stack, "breast_cancer", &body);
    assert_eq!(status, 503);
    assert!(t.elapsed() < Duration::from_secs(3), "503 took {:?}", t.elapsed());
    stack.start_enclave().unwrap();
    let (status, got) = infer(&stack, "breast_cancer", &body);
    assert_eq!(status, 200, "{got}");
}

#[test]
fn a_client_that_disconnects_mid_request_harms_nobody() {
    let stack = Stack::start(StackOptions::new(Transport::Tcp, &["minilm", "breast_cancer"])).unwrap();
    let hostport = stack.url.trim_start_matches("http://").to_owned();
    // Half a body, then gone.
    {
        let mut s = std::net::TcpStream::connect(&hostport).unwrap();
        s.write_all(
            b"POST /v1/models/breast_cancer/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"inputs\":",
        )
        .unwrap();
    }
    // A whole slow request (MiniLM, 128 tokens), then gone before the answer.
    let minilm = references("minilm").unwrap();
    let plain = serde_json::to_vec(&minilm["cases"][2]["request"]).unwrap();
    for _ in 0..4 {
        let (big, _) = stack.seal("minilm", &plain).unwrap();
        let mut s = std::net::TcpStream::connect(&hostport).unwrap();
        let head = format!("POST /v1/models/minilm/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", big.len());
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&big).unwrap();
    }
    let refs = references("breast_cancer").unwrap();
    let (status, got) = infer(&stack, "breast_cancer", &serde_json::to_vec(&refs["cases"][1]["request"]).unwrap());
    assert_eq!(status, 200, "{got}");
    compare_outputs(&got, &refs["cases"][1]).unwrap();
    // Nothing stays counted in flight once the abandoned requests are dropped or finished.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = http_get(&stack.url, "/metrics").unwrap();
        let text = String::from_utf8_lossy(&metrics).to_string();
        // This GET itself is not counted in flight (metrics are not tracked), so 0 means all done.
        if text.contains("veil_parent_in_flight_requests 0") {
            break;
        }
        assert!(Instant::now() < deadline, "requests still in flight:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_count_requests_errors_and_latency() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let refs = references("iris").unwrap();
    for _ in 0..3 {
        assert_eq!(infer(&stack, "iris", &serde_json::to_vec(&refs["cases"][0]["request"]).unwrap()).0, 200);
    }
    // About the request itself: sealed by the enclave, so the parent sees (and counts) a 200.
    assert_eq!(infer(&stack, "iris", b"{}").0, 400);
    // About the envelope: in the clear, counted as such.
    assert_eq!(post_raw(&stack, "iris", b"{}").0, 400);
    assert_eq!(infer(&stack, "some-other-model", b"{}").0, 404);
    let (status, body) = http_get(&stack.url, "/metrics").unwrap();
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    for want in [
        "veil_parent_requests_total{route=\"infer\",model=\"iris\",status=\"200\"} 4",
        "veil_parent_requests_total{route=\"infer\",model=\"iris\",status=\"400\"} 1",
        // Unknown model names never become label values (no cardinality blow-up from clients).
        "veil_parent_requests_total{route=\"infer\",model=\"other\",status=\"404\"} 1",
        "veil_parent_errors_total{route=\"infer\",kind=\"bad_request\"} 1",
        "veil_parent_errors_total{route=\"infer\",kind=\"not_found\"} 1",
        "veil_parent_request_duration_seconds_count{route=\"infer\"} 6",
        "veil_parent_in_flight_requests 0",
        "veil_parent_enclave_connections",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn attestation_nonce_is_checked_before_the_enclave_is_asked() {
    let stack = Stack::start(StackOptions::new(Transport::Tcp, &["iris"])).unwrap();
    for (path, want) in [
        ("/v1/attestation", "missing nonce"),
        ("/v1/attestation?nonce=xyz", "not hex"),
        ("/v1/attestation?nonce=", "empty"),
    ] {
        let (status, body) = http_get(&stack.url, path).unwrap();
        assert_eq!(status, 400, "{path}");
        assert!(String::from_utf8_lossy(&body).contains(want), "{path}: {}", String::from_utf8_lossy(&body));
    }
    let long = format!("/v1/attestation?nonce={}", "ab".repeat(65));
    let (status, body) = http_get(&stack.url, &long).unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("too long"));
}

#[test]
fn the_parent_relays_bodies_without_reading_them() {
    // Whatever bytes the client sends reach the enclave unchanged: here a body that is no envelope at all
    // comes back as the enclave's own parse error, which proves the parent did not look at it.
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let (status, got) = post_raw(&stack, "iris", &[0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(status, 400);
    assert!(got["error"].as_str().unwrap().contains("malformed envelope"), "{got}");
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().read(&mut []);
}

#[test]
fn every_carried_datatype_crosses_the_path_intact() {
    // models/datatypes: f64*2, i32+1, not b, -f32, i64² (see its make_model.py).
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["datatypes"])).unwrap();
    let request = json!({"inputs": [
        {"name": "f64", "shape": [2], "datatype": "FP64", "data": [0.1, -2.5]},
        {"name": "i32", "shape": [2], "datatype": "INT32", "data": [2147483646, -7]},
        {"name": "b", "shape": [2], "datatype": "BOOL", "data": [true, false]},
        {"name": "f32", "shape": [2], "datatype": "FP32", "data": [1.5, -0.25]},
        {"name": "i64", "shape": [2], "datatype": "INT64", "data": [3, -3037000499i64]},
    ]});
    let (status, got) = infer(&stack, "datatypes", &serde_json::to_vec(&request).unwrap());
    assert_eq!(status, 200, "{got}");
    let out = |name: &str| got["outputs"].as_array().unwrap().iter().find(|o| o["name"] == name).unwrap().clone();
    assert_eq!(
        out("f64_doubled"),
        json!({"name": "f64_doubled", "shape": [2], "datatype": "FP64", "data": [0.2, -5.0]})
    );
    assert_eq!(
        out("i32_plus_one"),
        json!({"name": "i32_plus_one", "shape": [2], "datatype": "INT32", "data": [2147483647, -6]})
    );
    assert_eq!(out("b_not"), json!({"name": "b_not", "shape": [2], "datatype": "BOOL", "data": [false, true]}));
    assert_eq!(
        out("f32_negated"),
        json!({"name": "f32_negated", "shape": [2], "datatype": "FP32", "data": [-1.5, 0.25]})
    );
    // Beyond 2^53: integers travel as integers, never through a float.
    assert_eq!(
        out("i64_squared"),
        json!({"name": "i64_squared", "shape": [2], "datatype": "INT64", "data": [9, 9223372030926249001i64]})
    );

    // INT32 out of range is the client's error, named.
    let mut bad = request.clone();
    bad["inputs"][1]["data"] = json!([2147483648i64, 0]);
    let (status, got) = infer(&stack, "datatypes", &serde_json::to_vec(&bad).unwrap());
    assert_eq!(status, 400);
    assert!(got["error"].as_str().unwrap().contains("input \"i32\": element 0 is not INT32: out of range"), "{got}");
    // A missing input names the ones the model takes.
    let mut missing = request.clone();
    missing["inputs"].as_array_mut().unwrap().remove(2);
    let (status, got) = infer(&stack, "datatypes", &serde_json::to_vec(&missing).unwrap());
    assert_eq!(status, 400);
    assert!(
        got["error"]
            .as_str()
            .unwrap()
            .contains("missing input \"b\"; model \"datatypes\" takes: f64, i32, b, f32, i64"),
        "{got}"
    );
}

//! `veil proxy` with clients that know nothing of Veil: NVIDIA's `tritonclient` (tests/python, pinned in
//! the test venv) and `curl`, against the real `veil` binary in front of a real stack, on real sockets.
//! Answers are checked against Python onnxruntime's (tests/data/references), binary tensors bit for bit.
//! And what the proxy does when the parent lies: nothing leaves it (the hostile parent counts every
//! encapsulated request that reaches it).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use veil_protocol::v2::response;
use veil_tests::hostile::{Lie, hostile_parent};
use veil_tests::{Stack, StackOptions, Transport, bin, free_port, http_get, references, repo_root, test_python};

const SAMPLES: [&str; 3] = ["iris", "minilm", "breast_cancer"];

/// A running `veil proxy`, killed on drop.
struct Proxy {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// `veil proxy --remote REMOTE --listen 127.0.0.1:PORT ARGS...`, once it answers.
    fn start(remote: &str, args: &[&str], env: &[(String, String)]) -> Proxy {
        Proxy::start_on(free_port().unwrap(), remote, args, env)
    }

    fn start_on(port: u16, remote: &str, args: &[&str], env: &[(String, String)]) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("proxy.log");
        let child = Command::new(bin("veil").unwrap())
            .args(["proxy", "--remote", remote, "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut p = Proxy { child, port, log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(p.child.try_wait().unwrap().is_none(), "veil proxy exited: {}", p.log());
            assert!(Instant::now() < deadline, "veil proxy did not listen: {}", p.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    fn hostport(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `triton_client.py ARGS...`: its JSON line, or a panic with what it said.
fn triton(args: &[&str]) -> Value {
    let out = Command::new(test_python())
        .arg(repo_root().join("tests/python/triton_client.py"))
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(line).unwrap_or_else(|_| {
        panic!("triton_client.py {args:?} printed no JSON: {stdout} {}", String::from_utf8_lossy(&out.stderr))
    });
    assert!(out.status.success() && v["ok"] == true, "triton_client.py {args:?}: {v}");
    v
}

fn references_dir() -> String {
    repo_root().join("tests/data/references").display().to_string()
}

fn policy_args(stack: &Stack) -> Vec<String> {
    vec!["--policy".into(), stack.client_policy().display().to_string()]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn tritonclient_gets_onnxruntimes_answers_through_the_proxy_binary_and_json() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &SAMPLES)).unwrap();
    let proxy = Proxy::start(&stack.url, &strs(&policy_args(&stack)), &[]);
    let mut args =
        vec!["check", &proxy.hostport(), &references_dir()].into_iter().map(str::to_owned).collect::<Vec<_>>();
    args.extend(SAMPLES.iter().map(|s| s.to_string()));
    let out = triton(&strs(&args));
    assert!(out["inferences"].as_u64().unwrap() >= 2 * SAMPLES.len() as u64, "{out}");
    // The proxy's log names routes and statuses, never tensor data.
    let log = proxy.log();
    assert!(log.contains("route=\"infer\"") || log.contains("route=infer"), "{log}");
    for case in &references("iris").unwrap()["cases"].as_array().unwrap()[..1] {
        let first = case["request"]["inputs"][0]["data"][0].to_string();
        assert!(!log.contains(&format!("[{first}")), "the proxy logged tensor data: {log}");
    }
}

#[test]
fn fp16_bf16_and_bytes_tensors_cross_the_whole_path_as_binary_and_as_json() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["more_types"])).unwrap();
    let proxy = Proxy::start(&stack.url, &strs(&policy_args(&stack)), &[]);
    let out = triton(&["more_types", &proxy.hostport()]);
    assert_eq!(out["inferences"], 2, "{out}");
}

#[test]
fn sixteen_concurrent_tritonclients_all_get_correct_answers() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let proxy = Proxy::start(&stack.url, &strs(&policy_args(&stack)), &[]);
    let out = triton(&["load", &proxy.hostport(), &references_dir(), "iris", "16", "10"]);
    assert_eq!(out["inferences"], 160, "{out}");
}

#[test]
fn curl_with_a_binary_body_gets_raw_floats_back_and_they_are_onnxruntimes() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["minilm"])).unwrap();
    let proxy = Proxy::start(&stack.url, &strs(&policy_args(&stack)), &[]);
    let case = references("minilm").unwrap()["cases"][0].clone();
    let (body, n) = veil_tests::binary_request(&case["request"]);
    let dir = tempfile::tempdir().unwrap();
    let (req, headers) = (dir.path().join("req.bin"), dir.path().join("headers.txt"));
    std::fs::write(&req, &body).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "-D"])
        .arg(&headers)
        .args(["-H", "Content-Type: application/octet-stream", "-H", &format!("Inference-Header-Content-Length: {n}")])
        .arg("--data-binary")
        .arg(format!("@{}", req.display()))
        .arg(format!("{}/v2/models/minilm/infer", proxy.url()))
        .output()
        .unwrap();
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let head = std::fs::read_to_string(&headers).unwrap().to_ascii_lowercase();
    let length: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("inference-header-content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no Inference-Header-Content-Length in {head}"));
    assert!(head.contains("content-type: application/octet-stream"), "{head}");
    assert!(head.contains("veil-model-sha384:"), "{head}");
    let read = response::read(&out.stdout, Some(length)).unwrap();
    for want in case["outputs"].as_array().unwrap() {
        let (_, raw) = read.binary.iter().find(|(name, _)| name == want["name"].as_str().unwrap()).unwrap();
        let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, raw));
        assert_eq!(digest, want["sha256_le"].as_str().unwrap(), "{} is not onnxruntime's, bit for bit", want["name"]);
    }
    // About four bytes a float, where JSON takes about twelve.
    let floats: u64 =
        case["outputs"].as_array().unwrap().iter().map(|o| o["data"].as_array().unwrap().len() as u64).sum();
    assert!((out.stdout.len() as u64) < floats * 4 + 4096, "{} bytes for {floats} floats", out.stdout.len());
}

#[test]
fn the_proxy_forwards_nothing_to_a_parent_serving_other_keys_and_names_the_check() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    // Keys the enclave never committed to.
    use veil_protocol::ohttp;
    let own =
        ohttp::GatewayKey::generate(0, &ohttp::GATEWAY_AEADS, &veil_protocol::random::SystemRandom::new()).unwrap();
    let keys = ohttp::KeyConfig::encode_list(std::slice::from_ref(own.config()));
    let (url, seen) = hostile_parent(stack.url.clone(), Lie::Keys(keys));
    let proxy = Proxy::start(&url, &strs(&policy_args(&stack)), &[]);
    let (status, body) = veil_tests::http_raw_typed(
        &proxy.url(),
        "POST",
        "/v2/models/iris/infer",
        Some("application/json"),
        &serde_json::to_vec(&references("iris").unwrap()["cases"][0]["request"]).unwrap(),
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 502, "{v}");
    assert!(v["error"].as_str().unwrap().contains("check commitment"), "{v}");
    assert!(v["error"].as_str().unwrap().contains("nothing was forwarded"), "{v}");
    let (status, _) = http_get(&proxy.url(), "/v2/health/ready").unwrap();
    assert_eq!(status, 502);
    assert_eq!(seen.posts(), 0, "a request left the proxy for an unverified key");
}

#[test]
fn the_proxy_refuses_an_old_document_and_other_pcrs_before_sending_anything() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let old = rt().block_on(veil_client::Client::new(&stack.url).unwrap().attestation(&[7; 32])).unwrap();
    let (url, seen) = hostile_parent(stack.url.clone(), Lie::Document(old));
    let proxy = Proxy::start(&url, &strs(&policy_args(&stack)), &[]);
    let (status, body) = http_get(&proxy.url(), "/v2/models/iris").unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 502, "{v}");
    assert!(v["error"].as_str().unwrap().contains("check nonce"), "{v}");
    assert_eq!(seen.posts(), 0);

    // A policy for another image (PCR0 differs): --check says so with the verifier's exit code.
    let text = std::fs::read_to_string(stack.client_policy()).unwrap();
    let pcr0 = text.lines().find(|l| l.trim_start().starts_with("pcr0")).unwrap();
    let other = text.replace(pcr0, &format!("pcr0 = \"{}\"", "ab".repeat(48)));
    let dir = tempfile::tempdir().unwrap();
    let other_policy = dir.path().join("other.toml");
    std::fs::write(&other_policy, other).unwrap();
    let out = Command::new(bin("veil").unwrap())
        .args(["proxy", "--check", "--remote", &stack.url, "--policy"])
        .arg(&other_policy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("check pcr0"), "{}", String::from_utf8_lossy(&out.stderr));
    let good = Command::new(bin("veil").unwrap())
        .args(["proxy", "--check", "--remote", &stack.url, "--policy"])
        .arg(stack.client_policy())
        .output()
        .unwrap();
    assert_eq!(good.status.code(), Some(0), "{}", String::from_utf8_lossy(&good.stderr));
    assert!(String::from_utf8_lossy(&good.stdout).contains("VERIFIED"), "{}", String::from_utf8_lossy(&good.stdout));
    let unreachable = Command::new(bin("veil").unwrap())
        .args(["proxy", "--check", "--remote", &format!("http://127.0.0.1:{}", free_port().unwrap()), "--policy"])
        .arg(stack.client_policy())
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(3));
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn infer_iris(proxy: &Proxy) -> (u16, Value) {
    let body = serde_json::to_vec(&references("iris").unwrap()["cases"][0]["request"]).unwrap();
    let (status, b) =
        veil_tests::http_raw_typed(&proxy.url(), "POST", "/v2/models/iris/infer", Some("application/json"), &body)
            .unwrap();
    (status, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

#[test]
fn an_enclave_restart_with_new_keys_is_verified_again_and_a_proxy_restart_serves_again() {
    let mut stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    // An honest relay that counts what passes.
    let (url, seen) = hostile_parent(stack.url.clone(), Lie::Nothing);
    let mut proxy = Proxy::start(&url, &strs(&policy_args(&stack)), &[]);
    assert_eq!(infer_iris(&proxy).0, 200);
    assert_eq!((seen.attestations(), seen.posts()), (1, 1), "one verification, one request");
    // A new enclave has a new boot key: the relay answers 422 for the old one, the proxy verifies the new
    // enclave and sends again.
    stack.kill_enclave();
    stack.start_enclave().unwrap();
    stack.wait_ready(Duration::from_secs(60)).unwrap();
    let (status, v) = infer_iris(&proxy);
    assert_eq!(status, 200, "{v}: {}", proxy.log());
    assert_eq!((seen.attestations(), seen.posts()), (2, 3), "a 422, a verification, the request again");
    // The proxy itself restarts on the same port.
    let port = proxy.port;
    proxy.stop();
    let proxy = Proxy::start_on(port, &url, &strs(&policy_args(&stack)), &[]);
    assert_eq!(infer_iris(&proxy).0, 200);
}

#[test]
fn the_proxy_retries_a_503_sealed_afresh_in_both_modes_and_not_with_retries_0() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let key = stack.client_env().iter().find(|(k, _)| k == "VEIL_KMS_KEY_ID").unwrap().1.clone();
    for kms in [false, true] {
        let mut args = policy_args(&stack);
        if kms {
            args.extend(["--kms-key-id".to_owned(), key.clone()]);
        }
        let env = if kms { stack.client_env() } else { Vec::new() };
        // A parent whose enclave is restarting: two 503s, then answers.
        let (url, seen) = hostile_parent(stack.url.clone(), Lie::Unavailable(2));
        let proxy = Proxy::start(&url, &strs(&args), &env);
        let (status, v) = infer_iris(&proxy);
        assert_eq!(status, 200, "kms={kms}: {v}: {}", proxy.log());
        assert_eq!(seen.refused(), 2, "kms={kms}");
        let bodies = seen.post_bodies();
        assert_eq!(bodies.len(), 3, "kms={kms}: two refused attempts and the answered one");
        assert!(
            bodies[0] != bodies[1] && bodies[1] != bodies[2] && bodies[0] != bodies[2],
            "kms={kms}: each retry is sealed afresh, never the same bytes again"
        );
        assert_eq!(proxy.log().matches("veil proxy: retrying").count(), 2, "kms={kms}: {}", proxy.log());
        // --retries 0: the client gets the parent's 503.
        let (url, seen) = hostile_parent(stack.url.clone(), Lie::Unavailable(1));
        args.extend(["--retries".to_owned(), "0".to_owned()]);
        let proxy = Proxy::start(&url, &strs(&args), &env);
        let (status, v) = infer_iris(&proxy);
        assert_eq!(status, 503, "kms={kms}: {v}");
        assert_eq!((seen.refused(), seen.post_bodies().len()), (1, 1), "kms={kms}: no second attempt");
    }
}

#[test]
fn a_relay_that_always_says_422_gets_one_verification_per_request_and_no_resend() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let (url, seen) = hostile_parent(stack.url.clone(), Lie::Undecapsulable);
    let proxy = Proxy::start(&url, &strs(&policy_args(&stack)), &[]);
    for n in 1..=3 {
        let (status, v) = infer_iris(&proxy);
        assert_eq!(status, 502, "{v}");
        assert!(v["error"].as_str().unwrap().contains("HTTP 422"), "{v}");
        // The keys did not change: no second send, and one more verification, per request.
        assert_eq!((seen.posts(), seen.attestations()), (n, 1 + n));
    }
}

#[test]
fn a_client_disconnecting_mid_request_leaves_the_proxy_serving_others() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let proxy = Proxy::start(&stack.url, &strs(&policy_args(&stack)), &[]);
    for _ in 0..5 {
        // Half a body, then gone.
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        s.write_all(b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inputs\":").unwrap();
        drop(s);
        // A whole request, gone before the answer.
        let body = serde_json::to_vec(&references("iris").unwrap()["cases"][0]["request"]).unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        let head = format!("POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body).unwrap();
        drop(s);
    }
    let (status, v) = infer_iris(&proxy);
    assert_eq!(status, 200, "{v}");
}

/// One raw HTTP/1.1 request to the proxy with these header lines: the status.
fn raw_status(port: u16, head: &str, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(format!("{head}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
fn web_pages_cannot_use_the_proxy_by_origin_or_by_dns_rebinding() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let proxy = Proxy::start(&stack.url, &strs(&policy_args(&stack)), &[]);
    let body = serde_json::to_vec(&references("iris").unwrap()["cases"][0]["request"]).unwrap();
    let port = proxy.port;
    let post = "POST /v2/models/iris/infer HTTP/1.1\r\n";
    let ok = format!("{post}Host: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n");
    assert_eq!(raw_status(port, &ok, &body), 200);
    let named = format!("{post}Host: localhost:{port}\r\n");
    assert_eq!(raw_status(port, &named, &body), 200);
    // A page's fetch (even "no-cors" with text/plain) carries an Origin.
    let page = format!("{post}Host: 127.0.0.1:{port}\r\nOrigin: https://evil.example\r\nContent-Type: text/plain\r\n");
    assert_eq!(raw_status(port, &page, &body), 403);
    // A rebound name reaches loopback, but names another host.
    let rebound = format!("{post}Host: evil.example:{port}\r\nContent-Type: application/json\r\n");
    assert_eq!(raw_status(port, &rebound, &body), 403);
    // And a form post is no v2 request.
    let form = format!("{post}Host: 127.0.0.1:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\n");
    assert_eq!(raw_status(port, &form, &body), 415);
}

#[test]
fn kms_envelope_mode_serves_tritonclient_too() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris", "breast_cancer"])).unwrap();
    let mut args = policy_args(&stack);
    args.push("--kms-key-id".into());
    args.push(stack.client_env().iter().find(|(k, _)| k == "VEIL_KMS_KEY_ID").unwrap().1.clone());
    let proxy = Proxy::start(&stack.url, &strs(&args), &stack.client_env());
    let out = triton(&["check", &proxy.hostport(), &references_dir(), "iris", "breast_cancer"]);
    assert!(out["inferences"].as_u64().unwrap() >= 4, "{out}");
}

#[test]
fn listening_beyond_loopback_needs_an_explicit_flag() {
    let out = Command::new(bin("veil").unwrap())
        .args(["proxy", "--remote", "http://127.0.0.1:9", "--policy", "/nonexistent.toml", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--allow-remote-clients"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_proxy_keeps_every_answers_evidence_in_both_modes() {
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (attested_dir, kms_dir) = (dir.path().join("attested"), dir.path().join("kms"));
    let mut args = policy_args(&stack);
    args.extend(["--receipts".into(), attested_dir.display().to_string()]);
    let attested = Proxy::start(&stack.url, &strs(&args), &[]);
    let mut args = policy_args(&stack);
    args.extend([
        "--kms-key-id".into(),
        stack.client_env().iter().find(|(k, _)| k == "VEIL_KMS_KEY_ID").unwrap().1.clone(),
        "--receipts".into(),
        kms_dir.display().to_string(),
    ]);
    let kms = Proxy::start(&stack.url, &strs(&args), &stack.client_env());
    for proxy in [&attested, &kms] {
        for _ in 0..3 {
            assert_eq!(infer_iris(proxy).0, 200, "{}", proxy.log());
        }
    }
    // The bundles are written beside the answers (not before them): wait for all six.
    let policy = veil_client::trust::ClientPolicy::load(&stack.client_policy()).unwrap();
    let evidence = veil_client::evidence::evidence_policy(&policy);
    let verifier = veil_protocol::attestation::Verifier::new();
    for (d, mode, proxy) in [(&attested_dir, "ohttp", &attested), (&kms_dir, "kms", &kms)] {
        let deadline = Instant::now() + Duration::from_secs(20);
        let files = loop {
            let files: Vec<PathBuf> =
                std::fs::read_dir(d).map(|r| r.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
            if files.len() >= 3 || Instant::now() > deadline {
                break files;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(files.len(), 3, "{mode}: {files:?}\n{}", proxy.log());
        let mut seqs = Vec::new();
        for f in files {
            let bundle = veil_client::evidence::read_bundle(&f).unwrap();
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            let report =
                veil_protocol::evidence::verify::verify_receipt(&bundle, None, None, &evidence, &verifier, now);
            assert!(report.verified, "{mode} {}: {:?}", f.display(), report.error);
            let receipt = report.receipt.unwrap();
            assert_eq!(format!("{:?}", receipt.mode).to_lowercase(), mode);
            seqs.push(receipt.seq);
        }
        seqs.sort();
        seqs.dedup();
        assert_eq!(seqs.len(), 3, "one bundle per answer: {seqs:?}");
    }
}

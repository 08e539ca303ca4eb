//! `veil dev`: the whole stack from one command, its JSON endpoints, and a clean stop on SIGTERM.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use veil_tests::{compare_outputs, http_raw, references};

fn alive(pid: u64) -> bool {
    // A zombie counts as gone: it has exited.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn veil_dev_serves_prints_endpoints_and_stops_on_sigterm() {
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(veil_tests::bin("veil").unwrap())
        .args(["dev", "--port", "0", "--json", "--state-dir"])
        .arg(state.path())
        .env("ORT_DYLIB_PATH", veil_tests::ort_dylib().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let endpoints: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));

    // The endpoints scripts need: the URL, each model with its file, the mock root.
    let url = endpoints["url"].as_str().unwrap();
    let models = endpoints["models"].as_array().unwrap();
    for name in ["breast_cancer", "iris", "minilm"] {
        let m = models.iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("{name} missing: {endpoints}"));
        assert!(std::path::Path::new(m["file"].as_str().unwrap()).is_file());
    }
    assert!(std::path::Path::new(endpoints["mock_root"].as_str().unwrap()).is_file());
    // The status file is there as soon as the line that names it (finding of review: it came after).
    assert!(std::path::Path::new(endpoints["status_file"].as_str().unwrap()).is_file());
    assert_eq!(endpoints["nsm"], "mock");
    // The KMS side: a mock KMS, a key, its policy from the enclave's measurements, encrypted models.
    let kms = &endpoints["kms"];
    assert!(kms["endpoint"].as_str().unwrap().starts_with("https://127.0.0.1:"));
    assert!(std::path::Path::new(kms["ca_file"].as_str().unwrap()).is_file());
    let policy: serde_json::Value =
        serde_json::from_slice(&std::fs::read(kms["policy_file"].as_str().unwrap()).unwrap()).unwrap();
    assert!(policy.to_string().contains("kms:RecipientAttestation:ImageSha384"));
    for m in models {
        assert!(m["file"].as_str().unwrap().ends_with(".onnx.veil"), "{m}");
    }

    // It serves a sealed request from the real client, with the environment it printed.
    let refs = references("breast_cancer").unwrap();
    let case = &refs["cases"][0];
    let input = state.path().join("req.json");
    std::fs::write(&input, serde_json::to_vec(&case["request"]).unwrap()).unwrap();
    let mut cmd = Command::new(veil_tests::bin("veil").unwrap());
    cmd.args(["infer", "--url", url, "--model", "breast_cancer", "--input"]).arg(&input);
    for (k, v) in endpoints["env"].as_object().unwrap() {
        cmd.env(k, v.as_str().unwrap());
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    compare_outputs(&serde_json::from_slice(&out.stdout).unwrap(), case).unwrap();
    // A plaintext request is refused: the enclave accepts only sealed envelopes.
    let (status, body) =
        http_raw(url, "POST", "/v1/models/breast_cancer/infer", &serde_json::to_vec(&case["request"]).unwrap())
            .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("malformed envelope"));
    // It keeps an audit log where --json says: the boot's directory, with the answer's receipt in it.
    let audit = std::path::Path::new(endpoints["audit_log"].as_str().unwrap());
    let boots: Vec<_> = std::fs::read_dir(audit).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(boots.len(), 1, "{boots:?}");
    assert!(boots[0].file_name().unwrap().to_str().unwrap().starts_with("boot-"), "{boots:?}");

    // SIGTERM stops veil dev and both children.
    let pids = [
        endpoints["pids"]["parent"].as_u64().unwrap(),
        endpoints["pids"]["enclave"].as_u64().unwrap(),
        endpoints["pids"]["kms"].as_u64().unwrap(),
    ];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "veil dev did not stop within 15 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "veil dev exited with {status}");
    for pid in pids {
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) {
            assert!(Instant::now() < deadline, "child {pid} still running after veil dev stopped");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert!(http_raw(url, "GET", "/healthz", b"").is_err(), "the parent still answers");
}

#[test]
fn veil_dev_without_models_says_what_to_do() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(veil_tests::bin("veil").unwrap())
        .args(["dev", "--port", "0", "--models-dir"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no models to serve") && stderr.contains("scripts/setup.sh"), "{stderr}");
}

#[test]
fn veil_dev_appends_enclave_settings_and_keeps_its_own_tables() {
    let state = tempfile::tempdir().unwrap();
    let veil = || {
        let mut c = Command::new(veil_tests::bin("veil").unwrap());
        c.env("ORT_DYLIB_PATH", veil_tests::ort_dylib().unwrap());
        c
    };
    // A table veil dev writes itself is refused before anything starts, naming it.
    let own = state.path().join("own.toml");
    std::fs::write(&own, "[kms]\nregion = \"us-east-1\"\n").unwrap();
    let out = veil().args(["dev", "--port", "0", "--enclave-config"]).arg(&own).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[kms] is written by veil dev"), "{stderr}");

    // Other settings reach the enclave: with receipts off, an answer carries none.
    let settings = state.path().join("settings.toml");
    std::fs::write(&settings, "[audit]\nreceipts = false\n\n[limits]\nreplay_window_secs = 30\n").unwrap();
    let iris = veil_tests::model_path("iris").unwrap();
    std::fs::create_dir(state.path().join("none")).unwrap();
    let mut child = veil()
        .args(["dev", "--port", "0", "--json", "--models-dir"])
        .arg(state.path().join("none"))
        .arg("--model")
        .arg(format!("iris={}", iris.display()))
        .arg("--enclave-config")
        .arg(&settings)
        .arg("--state-dir")
        .arg(state.path().join("stack"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let endpoints: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    let config = std::fs::read_to_string(state.path().join("stack").join("enclave.toml")).unwrap();
    assert!(config.contains("replay_window_secs = 30") && config.contains("[kms]"), "{config}");
    let input = state.path().join("req.json");
    std::fs::write(&input, serde_json::to_vec(&references("iris").unwrap()["cases"][0]["request"]).unwrap()).unwrap();
    let mut cmd = veil();
    cmd.args(["infer", "--url", endpoints["url"].as_str().unwrap(), "--model", "iris", "--input"])
        .arg(&input)
        .arg("--receipt")
        .arg(state.path().join("receipt.json"));
    for (k, v) in endpoints["env"].as_object().unwrap() {
        cmd.env(k, v.as_str().unwrap());
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the enclave sent no receipt"), "{stderr}");
    assert!(!state.path().join("receipt.json").exists());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    child.wait().unwrap();
}

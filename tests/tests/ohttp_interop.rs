//! Attested-key mode against an independent client: tests/python/ohttp_client.py, an Oblivious HTTP
//! (RFC 9458) and Binary HTTP (RFC 9292) client on pyhpke, a different HPKE implementation from the Rust
//! `hpke` crate Veil uses, with Python's standard library for HTTP. It first reproduces RFC 9458
//! Appendix A byte for byte (so it is right on its own), then talks to a real stack: reference answers for
//! iris and breast_cancer under AES-256-GCM and ChaCha20-Poly1305 with the answering model's digest, a
//! request with no Veil header, model metadata and readiness, truncated Binary HTTP (RFC 9292 §3.8), a
//! wrong model digest (refused inside the encapsulation), and a tampered ciphertext (refused in the clear).
//!
//! The Python is `VEIL_TEST_PYTHON`, a venv with tests/python/requirements.txt that scripts/test.sh
//! creates; without it these tests fail (they never pass by skipping).
#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use veil_protocol::ohttp::bhttp;
use veil_tests::{Stack, StackOptions, Transport, compare_outputs, references, repo_root};

fn python() -> PathBuf {
    veil_tests::test_python()
}

/// What one run of the client gave: exit code, stdout, stderr.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The one JSON line `infer` prints.
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("client output is not one JSON line ({e}): {self}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\nstdout: {}\nstderr: {}", self.code, self.stdout, self.stderr)
    }
}

fn client(python: &Path, args: &[OsString]) -> Run {
    let out = Command::new(python)
        .arg(repo_root().join("tests/python/ohttp_client.py"))
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("running {} (VEIL_TEST_PYTHON): {e}", python.display()));
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `ohttp_client.py get` of `path`.
fn get(python: &Path, stack: &Stack, path: &str, extra: &[&str]) -> Run {
    let mut args: Vec<OsString> = vec!["get".into(), stack.url.clone().into(), path.into()];
    args.extend(extra.iter().map(OsString::from));
    client(python, &args)
}

/// `ohttp_client.py infer` for `model` with `request` (written to a file in the stack's directory).
fn infer(python: &Path, stack: &Stack, model: &str, request: &Value, extra: &[&str]) -> Run {
    let file = stack.dir.path().join(format!("request-{model}.json"));
    std::fs::write(&file, serde_json::to_vec(request).unwrap()).unwrap();
    let mut args: Vec<OsString> = vec!["infer".into(), stack.url.clone().into(), model.into(), file.into()];
    args.extend(extra.iter().map(OsString::from));
    client(python, &args)
}

fn digest_hex(stack: &Stack, model: &str) -> String {
    hex::encode(stack.digest(model))
}

/// A decapsulated 200 whose outputs match the reference case, from the model `model` with its digest.
fn assert_answer(run: &Run, stack: &Stack, model: &str, case: &Value, what: &str) {
    assert_eq!(run.code, Some(0), "{what}: {run}");
    let out = run.json();
    assert_eq!(out["layer"], "target", "{what}: {out}");
    assert_eq!(out["status"], 200, "{what}: {out}");
    assert_eq!(out["headers"]["content-type"], "application/json", "{what}: {out}");
    assert_eq!(out["headers"]["veil-model-sha384"], digest_hex(stack, model), "{what}: the answering model's digest");
    assert_eq!(out["body"]["model_name"], model, "{what}: {out}");
    if let Err(diff) = compare_outputs(&out["body"], case) {
        panic!("{what}: {diff}");
    }
}

#[test]
fn rfc9458_appendix_a_is_reproduced_byte_for_byte() {
    let python = python();
    let vector = repo_root().join("protocol/tests/vectors/rfc9458-appendix-a.json");
    let run = client(&python, &["vector".into(), vector.clone().into()]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("ok: Encapsulated Request, byte for byte"), "{run}");
    assert!(run.stdout.contains("ok: decapsulated response"), "{run}");

    // The check can fail: one bit off in the expected Encapsulated Request is a mismatch and exit 1.
    let mut v: Value = serde_json::from_slice(&std::fs::read(&vector).unwrap()).unwrap();
    let mut wrong = hex::decode(v["encapsulated_request"].as_str().unwrap()).unwrap();
    *wrong.last_mut().unwrap() ^= 1;
    v["encapsulated_request"] = hex::encode(wrong).into();
    let dir = tempfile::tempdir().unwrap();
    let altered = dir.path().join("altered.json");
    std::fs::write(&altered, serde_json::to_vec(&v).unwrap()).unwrap();
    let run = client(&python, &["vector".into(), altered.into()]);
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.stdout.contains("MISMATCH: Encapsulated Request"), "{run}");
}

#[test]
fn reference_answers_under_aes_256_gcm_and_chacha20_poly1305() {
    let python = python();
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris", "breast_cancer"])).unwrap();
    for model in ["iris", "breast_cancer"] {
        let digest = digest_hex(&stack, model);
        let refs = references(model).unwrap();
        let cases = refs["cases"].as_array().unwrap();
        assert!(!cases.is_empty(), "{model}: no reference cases");
        for case in cases {
            // ChaCha20-Poly1305 requests carry Binary HTTP padding too.
            for (aead, pad) in [("aes256", "0"), ("chacha", "61")] {
                let what = format!("{model}/{} with {aead}", case["name"]);
                let run = infer(
                    &python,
                    &stack,
                    model,
                    &case["request"],
                    &["--aead", aead, "--sha384", &digest, "--pad", pad],
                );
                assert_answer(&run, &stack, model, case, &what);
            }
        }
    }
}

#[test]
fn a_request_with_no_veil_header_is_served() {
    let python = python();
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let refs = references("iris").unwrap();
    let case = &refs["cases"][0];
    let dump = stack.dir.path().join("request.bhttp");
    let run = infer(
        &python,
        &stack,
        "iris",
        &case["request"],
        &["--no-veil-headers", "--no-date", "--dump-request", dump.to_str().unwrap()],
    );

    // What was sent, read with Veil's own parser: content-type and nothing else.
    let sent = std::fs::read(&dump).unwrap();
    let parsed = bhttp::parse_request(&sent).unwrap();
    let names: Vec<&[u8]> = parsed.headers.iter().map(|f| f.name).collect();
    assert_eq!(names, [b"content-type".as_slice()], "the request's header fields");
    assert_eq!((parsed.method, parsed.path), ("POST", "/v2/models/iris/infer"));

    assert_answer(&run, &stack, "iris", case, "no Veil header");
}

#[test]
fn a_wrong_model_digest_is_refused_inside_the_encapsulation() {
    let python = python();
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let loaded = digest_hex(&stack, "iris");
    // Another model's digest: the loaded one with its last digit changed.
    let mut wrong = loaded.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    let refs = references("iris").unwrap();
    let run = infer(&python, &stack, "iris", &refs["cases"][0]["request"], &["--sha384", &wrong]);

    // Decapsulated (exit 0): the refusal is the target's, sealed for the client.
    assert_eq!(run.code, Some(0), "{run}");
    let out = run.json();
    assert_eq!(out["layer"], "target", "{out}");
    assert_eq!(out["status"], 400, "{out}");
    let error = out["body"]["error"].as_str().unwrap_or_else(|| panic!("no error message: {out}"));
    assert!(error.contains(&wrong), "the error names the digest asked for: {error}");
    assert!(error.contains(&loaded), "the error names the digest loaded: {error}");
    assert!(out["body"].get("outputs").is_none(), "{out}");
    assert_eq!(out["headers"]["veil-model-sha384"], loaded, "the refusing model's digest: {out}");
}

#[test]
fn a_flipped_ciphertext_byte_gets_a_clear_422() {
    let python = python();
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let refs = references("iris").unwrap();
    let case = &refs["cases"][0];
    let digest = digest_hex(&stack, "iris");

    // The same request untampered is answered: the refusal below is the flipped byte's doing.
    let run = infer(&python, &stack, "iris", &case["request"], &["--sha384", &digest]);
    assert_answer(&run, &stack, "iris", case, "untampered");

    let run = infer(&python, &stack, "iris", &case["request"], &["--sha384", &digest, "--tamper"]);
    assert_eq!(run.code, Some(3), "refused in the clear: {run}");
    let out = run.json();
    assert_eq!(out["layer"], "gateway", "{out}");
    assert_eq!(out["status"], 422, "{out}");
    assert_eq!(out["body"]["kind"], "unprocessable", "{out}");
    let error = out["body"]["error"].as_str().unwrap_or_else(|| panic!("no error message: {out}"));
    assert!(error.contains("did not decrypt"), "{error}");
}

#[test]
fn model_metadata_and_readiness_are_served() {
    let python = python();
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let digest = digest_hex(&stack, "iris");
    let run = get(&python, &stack, "/v2/models/iris", &["--aead", "chacha", "--sha384", &digest]);
    assert_eq!(run.code, Some(0), "{run}");
    let out = run.json();
    assert_eq!((&out["layer"], &out["status"]), (&"target".into(), &200.into()), "{out}");
    assert_eq!(out["body"]["name"], "iris", "{out}");
    assert_eq!(out["body"]["inputs"][0]["name"], "float_input", "{out}");
    assert_eq!(out["headers"]["veil-model-sha384"], digest, "{out}");

    let run = get(&python, &stack, "/v2/health/ready", &[]);
    assert_eq!(run.code, Some(0), "{run}");
    let out = run.json();
    assert_eq!((&out["layer"], &out["status"]), (&"target".into(), &200.into()), "{out}");
}

#[test]
fn a_truncated_request_is_answered() {
    let python = python();
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let refs = references("iris").unwrap();
    let case = &refs["cases"][0];
    let dump = stack.dir.path().join("request.bhttp");
    let digest = digest_hex(&stack, "iris");
    let run = infer(
        &python,
        &stack,
        "iris",
        &case["request"],
        &["--truncate", "--sha384", &digest, "--dump-request", dump.to_str().unwrap()],
    );
    // The request ends with its content: no trailer section (RFC 9292 §3.8).
    let sent = std::fs::read(&dump).unwrap();
    let content = serde_json::to_vec(&case["request"]).unwrap();
    assert!(sent.ends_with(&content), "the request does not end with its content");
    assert_answer(&run, &stack, "iris", case, "truncated");
}

/// Found by this client: a request that ended before its content section (RFC 9292 §3.8 truncation, as in
/// RFC 9458 Appendix A's own request) made the enclave's OHTTP task panic (the content's offset was taken
/// from a static empty slice outside the decrypted buffer), so the parent answered 504 after its timeout.
/// Unit test: `enclave/src/ohttp.rs`, `a_request_truncated_before_its_content_is_opened_not_a_panic`.
#[test]
fn a_request_truncated_before_its_content_is_answered() {
    let python = python();
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let run = get(&python, &stack, "/v2/health/ready", &["--truncate"]);
    assert_eq!(run.code, Some(0), "{run}");
    let out = run.json();
    assert_eq!((&out["layer"], &out["status"]), (&"target".into(), &200.into()), "{out}");
}

//! `veil attest verify` and `veil attest show`, run as the real binary on the real vectors. Every run
//! passes the verification time (`--at`): nothing depends on the wall clock.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors")
}

fn veil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_veil")).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

struct Vector {
    path: String,
    timestamp_ms: u64,
    debug: bool,
    negative: bool,
    pcrs: Vec<(String, String)>,
    nonce: Option<String>,
    module_id: String,
}

fn manifest() -> Vec<Vector> {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vectors().join("MANIFEST.json")).unwrap()).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|e| Vector {
            path: vectors().join(e["file"].as_str().unwrap()).to_str().unwrap().to_owned(),
            timestamp_ms: e["timestamp_ms"].as_u64().unwrap(),
            debug: e["debug_mode"].as_bool().unwrap(),
            negative: e["note"].as_str().unwrap_or("").contains("NEGATIVE"),
            pcrs: e["pcrs"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect(),
            nonce: e["nonce_hex"].as_str().map(str::to_owned),
            module_id: e["module_id"].as_str().unwrap().to_owned(),
        })
        .collect()
}

fn at(v: &Vector) -> String {
    format!("@{}.{:03}", v.timestamp_ms / 1000, v.timestamp_ms % 1000)
}

fn production() -> Vector {
    manifest().into_iter().find(|v| v.path.ends_with("yawn-nitro-attest/tests/fixtures/attestation.cose")).unwrap()
}

#[test]
fn every_real_document_verifies_in_every_encoding_with_its_pcrs() {
    let docs: Vec<Vector> = manifest().into_iter().filter(|v| !v.negative).collect();
    assert_eq!(docs.len(), 18);
    for v in docs {
        let at = at(&v);
        let mut args = vec!["attest", "verify", v.path.as_str(), "--at", at.as_str()];
        let pcr_args: Vec<String> = v.pcrs.iter().map(|(i, h)| format!("{i}={h}")).collect();
        for p in &pcr_args {
            args.extend(["--expect-pcr", p.as_str()]);
        }
        if v.debug {
            args.push("--allow-debug");
        }
        if let Some(n) = &v.nonce {
            args.extend(["--nonce", n.as_str()]);
        }
        let o = veil(&args);
        assert_eq!(o.status.code(), Some(0), "{}\n{}", v.path, text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("VERIFIED: every check passed"), "{out}");
        assert!(out.contains(&v.module_id));
    }
}

#[test]
fn at_document_uses_the_documents_timestamp_and_now_fails_on_validity() {
    let v = production();
    let o = veil(&["attest", "verify", &v.path, "--at", "document"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("the document's own timestamp"));
    // Without --at, the wall clock is used, and a 2025 leaf certificate has long expired.
    let o = veil(&["attest", "verify", &v.path]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("FAIL  validity"), "{}", text(&o));
    // An RFC 3339 time just after the leaf expired (2025-01-06T19:07:05Z).
    let o = veil(&["attest", "verify", &v.path, "--at", "2025-01-06T19:07:06Z"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("certificate validity: leaf"), "{}", text(&o));
}

#[test]
fn a_wrong_pcr_names_the_pcr_with_both_values() {
    let v = production();
    let wrong = "ab".repeat(48);
    let actual = &v.pcrs.iter().find(|(i, _)| i == "0").unwrap().1;
    let o = veil(&["attest", "verify", &v.path, "--at", &at(&v), "--expect-pcr", &format!("0={wrong}")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains(&format!("PCR0: expected {wrong}, got {actual}")), "{}", text(&o));
}

#[test]
fn measurements_files_are_checked() {
    let v = production();
    let dir = tempfile::tempdir().unwrap();
    let pcr = |i: &str| v.pcrs.iter().find(|(k, _)| k == i).unwrap().1.clone();
    let good = serde_json::json!({"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": pcr("0"), "PCR1": pcr("1"), "PCR2": pcr("2")}});
    let path = dir.path().join("measurements.json");
    std::fs::write(&path, good.to_string()).unwrap();
    let o = veil(&["attest", "verify", &v.path, "--at", &at(&v), "--measurements", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for i in ["pcr0", "pcr1", "pcr2"] {
        assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("PASS  {i}")));
    }
    let mut bad = good.clone();
    bad["Measurements"]["PCR2"] = serde_json::Value::String("00".repeat(48));
    std::fs::write(&path, bad.to_string()).unwrap();
    let o = veil(&["attest", "verify", &v.path, "--at", &at(&v), "--measurements", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("PCR2: expected 0000"), "{}", text(&o));
    // A measurements file that is not one: usage error.
    std::fs::write(&path, "{\"PCR0\": \"00\"}").unwrap();
    let o = veil(&["attest", "verify", &v.path, "--at", &at(&v), "--measurements", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("Measurements"), "{}", text(&o));
}

#[test]
fn debug_documents_need_allow_debug() {
    let v = manifest().into_iter().find(|v| v.debug && !v.negative).unwrap();
    let o = veil(&["attest", "verify", &v.path, "--at", &at(&v)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("FAIL  debug_mode"), "{}", text(&o));
    let o = veil(&["attest", "verify", &v.path, "--at", &at(&v), "--allow-debug"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn the_negative_vector_fails_on_the_signature_and_a_wrong_nonce_fails() {
    let v = manifest().into_iter().find(|v| v.negative).unwrap();
    let o = veil(&["attest", "verify", &v.path, "--at", &at(&v), "--allow-debug"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("FAIL  signature"), "{}", text(&o));
    let p = production();
    let o = veil(&["attest", "verify", &p.path, "--at", &at(&p), "--nonce", "00112233"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("nonce: expected 00112233, got no nonce"), "{}", text(&o));
}

#[test]
fn json_reports_name_every_check() {
    let v = production();
    let o = veil(&[
        "attest",
        "verify",
        &v.path,
        "--at",
        &at(&v),
        "--json",
        "--expect-pcr",
        &format!("1={}", "cd".repeat(48)),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["verified"], false);
    let checks = json["report"]["checks"].as_array().unwrap();
    let pcr1 = checks.iter().find(|c| c["name"] == "pcr1").unwrap();
    assert_eq!(pcr1["status"], "failed");
    assert!(json["document"].is_null());
    let o = veil(&["attest", "verify", &v.path, "--at", &at(&v), "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["verified"], true);
    assert_eq!(json["document"]["module_id"], v.module_id.as_str());
    assert_eq!(json["document"]["certificates"].as_array().unwrap().len(), 5);
}

#[test]
fn bad_input_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.txt");
    std::fs::write(&junk, "this is not an attestation document").unwrap();
    let o = veil(&["attest", "verify", junk.to_str().unwrap(), "--at", "document"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("neither CBOR"), "{}", text(&o));
    let o = veil(&["attest", "verify", "/nonexistent/doc.cbor"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("cannot open /nonexistent/doc.cbor"));
    let v = production();
    for bad in [["--expect-pcr", "0=zz"], ["--at", "yesterday"], ["--max-age", "5 parsecs"], ["--nonce", "xyz"]] {
        let o = veil(&["attest", "verify", &v.path, bad[0], bad[1]]);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", text(&o));
    }
    let o = veil(&["attest", "verify"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // A truncated document decodes to a named failure, exit 1 (the input was read; the document is bad).
    let raw = std::fs::read(&v.path).unwrap();
    let cut = dir.path().join("cut.cbor");
    std::fs::write(&cut, &raw[..raw.len() / 2]).unwrap();
    let o = veil(&["attest", "verify", cut.to_str().unwrap(), "--at", &at(&v)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("FAIL  decode"));
    // `show` cannot show what it cannot decode: exit 2.
    let o = veil(&["attest", "show", cut.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn a_foreign_root_is_used_only_when_named() {
    let v = production();
    let aws_pem = vectors().join("aws-root-g1/root.pem");
    let o = veil(&["attest", "verify", &v.path, "--at", &at(&v), "--root", aws_pem.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = veil(&["attest", "verify", &v.path, "--at", &at(&v), "--root", v.path.as_str()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn show_prints_the_document_for_people() {
    let v = manifest().into_iter().find(|v| v.path.ends_with("sample_attestation_doc_full.bin")).unwrap();
    let o = veil(&["attest", "show", &v.path]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("NOT VERIFIED"));
    assert!(out.contains(&v.module_id));
    assert!(out.contains("debug mode  YES"));
    assert!(out.contains("[0] root            C=US, O=Amazon, OU=AWS, CN=aws.nitro-enclaves"), "{out}");
    assert!(out.contains("leaf"));
    assert!(out.contains(&format!("nonce       6 bytes: {}", v.nonce.as_ref().unwrap())), "{out}");
    let o = veil(&["attest", "show", &v.path, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["verified"], false);
    assert_eq!(json["pcrs"].as_object().unwrap().len(), 16);
    assert_eq!(json["certificates"][4]["role"], "leaf");
}

#[test]
fn an_unreachable_server_is_exit_3() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let o = veil(&["attest", "verify", "--url", &format!("http://127.0.0.1:{port}")]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("Is the server running?"));
}

/// A one-request HTTP server that checks the nonce in the query and answers with `body`.
fn serve_once(body: Vec<u8>, expect_nonce: String) -> (String, std::thread::JoinHandle<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&req).to_string();
        let ok = head.starts_with(&format!("GET /v1/attestation?nonce={expect_nonce} "));
        let status = if ok { "200 OK" } else { "400 Bad Request" };
        let body = if ok { body } else { b"bad nonce".to_vec() };
        write!(
            s,
            "HTTP/1.1 {status}\r\ncontent-type: application/cbor\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
        ok
    });
    (url, handle)
}

#[test]
fn url_mode_sends_the_nonce_and_verifies_the_answer() {
    // A real document with a nonce, served as if fresh: the client must send exactly that nonce.
    let v = manifest().into_iter().find(|v| v.path.ends_with("nitro-stag-attestation.txt")).unwrap();
    let doc = std::fs::read(&v.path).unwrap(); // base64: the client detects the encoding of answers too
    let nonce = v.nonce.clone().unwrap_or_default();
    let with_nonce = manifest()
        .into_iter()
        .find(|v| v.nonce.as_ref().is_some_and(|n| n.len() >= 16) && !v.negative && !v.debug)
        .unwrap();
    let doc2 = std::fs::read(&with_nonce.path).unwrap();
    let nonce2 = with_nonce.nonce.clone().unwrap();
    let (url, server) = serve_once(doc2, nonce2.clone());
    let o = veil(&["attest", "verify", "--url", &url, "--nonce", &nonce2, "--at", &at(&with_nonce)]);
    assert!(server.join().unwrap(), "the client did not send the nonce");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("PASS  nonce"));
    // Without --nonce the client picks a random one, so a replayed document fails the nonce check...
    // and our one-shot server answers 400 to an unexpected nonce: exit 1 with the server's message.
    let (url, server) = serve_once(doc, nonce);
    let o = veil(&["attest", "verify", "--url", &url, "--at", &at(&v)]);
    assert!(!server.join().unwrap());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("bad nonce"), "{}", text(&o));
}

#[test]
fn commitment_expectations_fail_on_documents_without_a_veil_commitment() {
    let v = production();
    let o =
        veil(&["attest", "verify", &v.path, "--at", &at(&v), "--expect-model", &format!("iris={}", "11".repeat(48))]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("FAIL  commitment"), "{}", text(&o));
    let o = veil(&["attest", "verify", &v.path, "--expect-model", "iris=1111"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = veil(&["attest", "verify", &v.path, "--expect-config", "11"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

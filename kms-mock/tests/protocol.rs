//! The wire protocol under hostile or sloppy clients, and the `veil-mock-kms` binary.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIDMOCK/20260101/us-east-1/kms/aws4_request, \
    SignedHeaders=content-type;host;x-amz-date;x-amz-target, \
    Signature=0000000000000000000000000000000000000000000000000000000000000000";

/// Sends raw HTTP/1.1 over TLS (trusting only `ca_pem`); returns (status, JSON body).
async fn raw(endpoint: &str, ca_pem: &str, head: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let host = endpoint.strip_prefix("https://").unwrap();
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes()).unwrap();
    roots.add(ca).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(host).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    let request = format!("{head}Host: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    tls.write_all(request.as_bytes()).await.unwrap();
    // The server may answer (and close) before reading an oversized body: ignore write errors.
    let _ = tls.write_all(body).await;
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

fn kms_head(target: &str, auth: Option<&str>) -> String {
    let mut head = format!(
        "POST / HTTP/1.1\r\nContent-Type: application/x-amz-json-1.1\r\nX-Amz-Target: TrentService.{target}\r\n"
    );
    if let Some(a) = auth {
        head.push_str(&format!("Authorization: {a}\r\n"));
    }
    head
}

#[tokio::test]
async fn errors_have_aws_shapes_and_hostile_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let kms = start_kms(dir.path().join("kms"), root(&nsm(dir.path(), "nsm", 1)), "tcp://127.0.0.1:0").await;
    let call = |target: &str, auth: Option<&str>, body: Vec<u8>| {
        let (endpoint, ca, head) = (kms.endpoint.clone(), kms.ca_pem.clone(), kms_head(target, auth));
        async move { raw(&endpoint, &ca, &head, &body).await }
    };

    let (status, body) = call("GenerateRandom", Some(AUTH), br#"{"NumberOfBytes": 8}"#.to_vec()).await;
    assert_eq!(status, 200);
    assert!(body["Plaintext"].is_string());

    let other_region = AUTH.replace("us-east-1", "eu-west-1");
    let other_service = AUTH.replace("/kms/", "/s3/");
    let cases: Vec<(&str, Option<&str>, Vec<u8>, &str)> = vec![
        ("GenerateRandom", None, b"{}".to_vec(), "MissingAuthenticationTokenException"),
        ("GenerateRandom", Some("Bearer x"), b"{}".to_vec(), "IncompleteSignatureException"),
        ("GenerateRandom", Some(&other_region), b"{}".to_vec(), "InvalidSignatureException"),
        ("GenerateRandom", Some(&other_service), b"{}".to_vec(), "InvalidSignatureException"),
        ("DeleteEverything", Some(AUTH), b"{}".to_vec(), "UnknownOperationException"),
        ("GenerateRandom", Some(AUTH), b"{not json".to_vec(), "SerializationException"),
        ("GenerateRandom", Some(AUTH), b"[1]".to_vec(), "SerializationException"),
        ("GenerateRandom", Some(AUTH), vec![b' '; veil_mock_kms::MAX_BODY + 1], "SerializationException"),
        ("GenerateRandom", Some(AUTH), br#"{"NumberOfBytes": 0}"#.to_vec(), "ValidationException"),
        ("GenerateRandom", Some(AUTH), br#"{"NumberOfBytes": "8"}"#.to_vec(), "ValidationException"),
        ("Decrypt", Some(AUTH), br#"{"CiphertextBlob": "%%%"}"#.to_vec(), "ValidationException"),
        ("Decrypt", Some(AUTH), br#"{"CiphertextBlob": "AAAA"}"#.to_vec(), "InvalidCiphertextException"),
        ("Encrypt", Some(AUTH), br#"{"KeyId": "alias/x", "Plaintext": "AA=="}"#.to_vec(), "NotFoundException"),
        ("CreateKey", Some(AUTH), br#"{"Policy": "{}"}"#.to_vec(), "MalformedPolicyDocumentException"),
        ("CreateKey", Some(AUTH), br#"{"KeySpec": "RSA_2048"}"#.to_vec(), "ValidationException"),
        ("GenerateRandom", Some(AUTH),
         br#"{"NumberOfBytes": 8, "Recipient": {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_1", "AttestationDocument": "AA=="}}"#.to_vec(),
         "ValidationException"),
        ("GenerateRandom", Some(AUTH),
         br#"{"NumberOfBytes": 8, "Recipient": {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": "AAAA"}}"#.to_vec(),
         "AccessDeniedException"),
        // Aliases, grants and pagination under hostile input.
        ("CreateAlias", Some(AUTH), br#"{"AliasName": 7, "TargetKeyId": "x"}"#.to_vec(), "ValidationException"),
        ("CreateAlias", Some(AUTH), br#"{"AliasName": "alias/aws/x", "TargetKeyId": "x"}"#.to_vec(), "InvalidAliasNameException"),
        ("DeleteAlias", Some(AUTH), br#"{}"#.to_vec(), "ValidationException"),
        ("ListAliases", Some(AUTH), br#"{"Limit": 0}"#.to_vec(), "ValidationException"),
        ("ListKeys", Some(AUTH), br#"{"Marker": "-1"}"#.to_vec(), "InvalidMarkerException"),
        ("ListGrants", Some(AUTH), br#"{}"#.to_vec(), "ValidationException"),
        ("CreateGrant", Some(AUTH), br#"{"KeyId": "00000000-0000-4000-8000-000000000000", "GranteePrincipal": "arn:aws:iam::111122223333:root", "Operations": ["Decrypt"]}"#.to_vec(), "NotFoundException"),
        ("RetireGrant", Some(AUTH), br#"{"GrantToken": "not-a-token"}"#.to_vec(), "InvalidGrantTokenException"),
        ("RevokeGrant", Some(AUTH), br#"{"KeyId": "00000000-0000-4000-8000-000000000000", "GrantId": "00"}"#.to_vec(), "NotFoundException"),
        ("Decrypt", Some(AUTH), format!(r#"{{"CiphertextBlob": "AAAA", "GrantTokens": [{}]}}"#, ["\"t\""; 11].join(",")).into_bytes(), "ValidationException"),
        ("DescribeKey", Some(AUTH), br#"{"KeyId": "arn:aws:kms:us-east-1:111122223333:keys/x"}"#.to_vec(), "NotFoundException"),
    ];
    for (target, auth, body, expected) in cases {
        let (status, answer) = call(target, auth, body).await;
        assert_eq!(status, 400, "{target} {auth:?}: {answer}");
        assert_eq!(answer["__type"], expected, "{target} {auth:?}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()), "{answer}");
    }

    // Encrypt's plaintext limit (and, below, grants and policies on a key that exists).
    let created = call("CreateKey", Some(AUTH), b"{}".to_vec()).await.1;
    let key_id = created["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
    // Grants with hostile parts, on a key that exists.
    for (body, expected) in [
        (
            serde_json::json!({"KeyId": key_id, "GranteePrincipal": "arn:aws:iam::111122223333:root", "Operations": "Decrypt"}),
            "ValidationException",
        ),
        (
            serde_json::json!({"KeyId": key_id, "GranteePrincipal": "arn:aws:iam::111122223333:root", "Operations": vec!["Decrypt"; 33]}),
            "ValidationException",
        ),
        (
            serde_json::json!({"KeyId": key_id, "GranteePrincipal": "arn:aws:iam::111122223333:root", "Operations": [1]}),
            "ValidationException",
        ),
        (
            serde_json::json!({"KeyId": key_id, "GranteePrincipal": "x".repeat(5000), "Operations": ["Decrypt"]}),
            "InvalidArnException",
        ),
        (
            serde_json::json!({"KeyId": key_id, "GranteeServicePrincipal": "ebs.amazonaws.com", "Operations": ["Decrypt"]}),
            "ValidationException",
        ),
        (
            serde_json::json!({"KeyId": key_id, "GranteePrincipal": "arn:aws:iam::111122223333:root", "Operations": ["Decrypt"],
            "Constraints": {"EncryptionContextSubset": {"k": 1}}}),
            "ValidationException",
        ),
        (
            serde_json::json!({"KeyId": key_id, "GranteePrincipal": "arn:aws:iam::111122223333:root", "Operations": ["Decrypt"],
            "Constraints": {"SourceArn": "arn:aws:ec2:us-east-1:111122223333:volume/vol-1"}}),
            "ValidationException",
        ),
        (
            serde_json::json!({"KeyId": key_id, "GranteePrincipal": "arn:aws:iam::111122223333:root", "Operations": ["Decrypt"], "Name": "has space"}),
            "ValidationException",
        ),
    ] {
        let (status, answer) = call("CreateGrant", Some(AUTH), body.to_string().into_bytes()).await;
        assert_eq!((status, answer["__type"].as_str()), (400, Some(expected)), "{body}: {answer}");
    }
    // Key policies over KMS's 32 KiB are LimitExceededException, as in KMS.
    let body = serde_json::json!({"KeyId": key_id, "Policy": "x".repeat(40_000)}).to_string().into_bytes();
    let (status, answer) = call("PutKeyPolicy", Some(AUTH), body).await;
    assert_eq!((status, answer["__type"].as_str()), (400, Some("LimitExceededException")), "{answer}");
    use base64::Engine as _;
    let big = base64::engine::general_purpose::STANDARD.encode(vec![0u8; veil_mock_kms::MAX_PLAINTEXT + 1]);
    let body = serde_json::json!({"KeyId": key_id, "Plaintext": big}).to_string().into_bytes();
    let (status, answer) = call("Encrypt", Some(AUTH), body).await;
    assert_eq!((status, answer["__type"].as_str()), (400, Some("ValidationException")), "{answer}");
}

#[tokio::test]
async fn the_binary_writes_its_ready_file_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let enclave = nsm(dir.path(), "nsm", 1);
    let ready = dir.path().join("ready.json");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_veil-mock-kms"))
        .arg("--listen")
        .arg("tcp://127.0.0.1:0")
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--attestation-root")
        .arg(enclave.root_pem_path())
        .arg("--ready-file")
        .arg(&ready)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !ready.exists() {
        assert!(std::time::Instant::now() < deadline, "no ready file");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(&ready).unwrap()).unwrap();
    assert_eq!(info["region"], "us-east-1");
    let endpoint = info["endpoint"].as_str().unwrap();
    assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");
    let ca_file = info["ca_file"].as_str().unwrap();
    let ca = std::fs::read_to_string(ca_file).unwrap();
    let (status, body) = raw(endpoint, &ca, &kms_head("ListKeys", Some(AUTH)), b"{}").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["Keys"], serde_json::json!([]));
    {
        use std::os::unix::fs::PermissionsExt;
        let state = dir.path().join("state");
        assert_eq!(std::fs::metadata(state.join("server.key.pem")).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(state.join("ca.key.pem")).unwrap().permissions().mode() & 0o777, 0o600);
    }
    child.kill().await.unwrap();
}

#[test]
fn help_explains_the_flags() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_veil-mock-kms")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--state-dir",
        "--attestation-root",
        "--region",
        "--account",
        "--hostname",
        "--ready-file",
        "--principal",
        "NOT AWS",
    ] {
        assert!(text.contains(flag), "missing {flag} in:\n{text}");
    }
}

#[test]
fn the_binary_refuses_a_malformed_principal_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let enclave = nsm(dir.path(), "nsm", 1);
    for (flag, says) in [
        ("AKIAVEILTEST00000000", "expected ACCESS_KEY=ARN"),
        ("AKIAVEILTEST00000000=arn:aws:iam::111122223333:group/x", "is not a principal ARN"),
        ("short=arn:aws:iam::111122223333:role/x", "16 to 128 letters and digits"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_veil-mock-kms"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--attestation-root")
            .arg(enclave.root_pem_path())
            .args(["--principal", flag])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{flag}: {stderr}");
    }
}

//! The enclave's KMS client end to end, without AWS: the real `aws-sdk-kms` over our relay connector,
//! through a fake parent that records every byte it relays, to a local HTTPS server (rustls, a CA made with
//! rcgen) that answers like KMS. Shows TLS terminating inside the enclave (the relay sees no plaintext),
//! SigV4 and `Recipient` on the wire, `CiphertextForRecipient` unwrapped, credentials from the parent and
//! refreshed before expiry, bounded retries, and clear errors.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use veil_enclave::kms::{KmsClient, KmsConfig, KmsError, RecipientKey};
use veil_enclave::nsm::{MockNsm, MockPcrs, Nsm, NsmError};
use veil_protocol::message::{ErrorKind, ErrorReply, HostRequest, HostResponse};
use veil_runtime::conn::{FrameReader, FrameWriter};
use veil_runtime::transport::Address;

fn vector(path: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors").join(path)).unwrap()
}

fn edgebit_key() -> RecipientKey {
    RecipientKey::from_pkcs8_der(&vector("edgebitio-enclaver-cms/recipient_private_key.pkcs8.der")).unwrap()
}

/// One canned KMS answer: HTTP status and JSON body.
#[derive(Clone)]
struct Answer(u16, String);

fn success() -> Answer {
    let blob = vector("edgebitio-enclaver-cms/ciphertext_for_recipient.ber");
    Answer(
        200,
        serde_json::json!({
            "CiphertextForRecipient": B64.encode(blob),
            "KeyId": "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        })
        .to_string(),
    )
}

fn error(status: u16, kind: &str, message: &str) -> Answer {
    Answer(status, serde_json::json!({ "__type": kind, "message": message }).to_string())
}

/// A local "KMS": TLS with a certificate for `localhost` from a fresh CA; answers from a script (the last
/// answer repeats), and records each request (head and body).
struct FakeKms {
    port: u16,
    ca_pem: PathBuf,
    requests: Requests,
}

/// Each request KMS received: the head (request line and headers) and the body.
type Requests = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

async fn fake_kms(dir: &Path, script: Vec<Answer>) -> FakeKms {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca_pem = dir.join("kms-ca.pem");
    std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&requests);
    let script = Arc::new(Mutex::new(script));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, seen, script) = (acceptor.clone(), Arc::clone(&seen), Arc::clone(&script));
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else { return };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8(head).unwrap();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                    })
                    .expect("the SDK sends a Content-Length");
                let mut body = vec![0u8; len];
                s.read_exact(&mut body).await.unwrap();
                seen.lock().unwrap().push((head, body));
                let Answer(status, json) = {
                    let mut script = script.lock().unwrap();
                    if script.len() > 1 { script.remove(0) } else { script[0].clone() }
                };
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: test-{status}\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{json}",
                    json.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    FakeKms { port, ca_pem, requests }
}

/// What the fake parent saw.
#[derive(Default)]
struct ParentLog {
    credential_requests: AtomicUsize,
    relays: Mutex<Vec<String>>,
    /// Every byte relayed, both directions.
    relayed: Mutex<Vec<u8>>,
}

/// A fake parent: serves credentials (expiring `expires_in` from now) and relays to `127.0.0.1:kms_port`
/// whatever endpoint is asked (it records which), keeping a copy of every byte.
async fn fake_parent(kms_port: u16, expires_in: Duration) -> (Address, Arc<ParentLog>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: Address = format!("tcp://{}", listener.local_addr().unwrap()).parse().unwrap();
    let log = Arc::new(ParentLog::default());
    let seen = Arc::clone(&log);
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let msg = FrameReader::new(&mut s, 1 << 16).recv::<HostRequest>().await.unwrap();
                match msg.body {
                    HostRequest::Credentials => {
                        seen.credential_requests.fetch_add(1, Ordering::SeqCst);
                        let exp = SystemTime::now() + expires_in;
                        let reply = HostResponse::Credentials {
                            access_key_id: "ASIAEXAMPLEEXAMPLE01".into(),
                            secret_access_key: "c2VjcmV0LXNlY3JldC1zZWNyZXQ=".into(),
                            session_token: Some("dG9rZW4tdG9rZW4tdG9rZW4=".into()),
                            expiration: Some(exp.duration_since(UNIX_EPOCH).unwrap().as_secs()),
                        };
                        FrameWriter::new(&mut s, 1 << 16).send(msg.id, &reply, b"").await.unwrap();
                    }
                    HostRequest::KmsRelay { endpoint } => {
                        seen.relays.lock().unwrap().push(endpoint);
                        let Ok(up) = TcpStream::connect(("127.0.0.1", kms_port)).await else {
                            let e = HostResponse::Error(ErrorReply::new(ErrorKind::Unavailable, "connect failed"));
                            let _ = FrameWriter::new(&mut s, 1 << 16).send(msg.id, &e, b"").await;
                            return;
                        };
                        FrameWriter::new(&mut s, 1 << 16).send(msg.id, &HostResponse::RelayReady, b"").await.unwrap();
                        record_pipe(s, up, seen).await;
                    }
                    other => panic!("unexpected host request {other:?}"),
                }
            });
        }
    });
    (addr, log)
}

async fn record_pipe(a: TcpStream, b: TcpStream, log: Arc<ParentLog>) {
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = b.into_split();
    let l1 = Arc::clone(&log);
    let up = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = ar.read(&mut buf).await {
            if n == 0 || bw.write_all(&buf[..n]).await.is_err() {
                break;
            }
            l1.relayed.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        let _ = bw.shutdown().await;
    });
    let mut buf = [0u8; 4096];
    while let Ok(n) = br.read(&mut buf).await {
        if n == 0 || aw.write_all(&buf[..n]).await.is_err() {
            break;
        }
        log.relayed.lock().unwrap().extend_from_slice(&buf[..n]);
    }
    let _ = aw.shutdown().await;
    let _ = up.await;
}

fn mock_nsm(dir: &Path) -> Arc<dyn Nsm> {
    Arc::new(MockNsm::load_or_create(&dir.join("nsm"), MockPcrs::from_image_digest(&[7u8; 48])).unwrap())
}

fn config(kms: &FakeKms, max_attempts: u32, timeout_secs: u64) -> KmsConfig {
    KmsConfig {
        region: "eu-west-1".into(),
        endpoint: Some(format!("localhost:{}", kms.port)),
        ca_file: Some(kms.ca_pem.clone()),
        timeout_secs,
        max_attempts,
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    kms: FakeKms,
    parent: Arc<ParentLog>,
    client: KmsClient,
}

async fn setup(script: Vec<Answer>, expires_in: Duration, max_attempts: u32, timeout_secs: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let kms = fake_kms(dir.path(), script).await;
    let (addr, parent) = fake_parent(kms.port, expires_in).await;
    let client = KmsClient::with_recipient_key(
        &config(&kms, max_attempts, timeout_secs),
        addr,
        mock_nsm(dir.path()),
        edgebit_key(),
    )
    .unwrap();
    Setup { _dir: dir, kms, parent, client }
}

fn context() -> BTreeMap<String, String> {
    BTreeMap::from([("veil:model".to_owned(), "iris".to_owned())])
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn decrypt_with_recipient_through_the_relay_with_tls_inside() {
    let s = setup(vec![success()], Duration::from_secs(3600), 3, 20).await;
    let plain = s.client.decrypt_data_key(b"opaque-kms-ciphertext", &context(), Some("alias/veil")).await.unwrap();
    assert_eq!(plain.as_slice(), b"Hello, World");

    // What KMS received: a SigV4-signed Decrypt with a Recipient carrying an attestation document that
    // holds the enclave's RSA public key.
    let requests = s.kms.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    let (head, body) = &requests[0];
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("POST / HTTP/1.1\r\n"), "{head}");
    assert!(lower.contains("x-amz-target: trentservice.decrypt\r\n"), "{head}");
    assert!(lower.contains("content-type: application/x-amz-json-1.1"), "{head}");
    assert!(head.contains("AWS4-HMAC-SHA256 Credential=ASIAEXAMPLEEXAMPLE01/"), "{head}");
    assert!(head.contains("/eu-west-1/kms/aws4_request"), "{head}");
    assert!(lower.contains("x-amz-security-token: dg9rzw4tdg9rzw4tdg9rzw4="), "{head}");
    assert!(lower.contains(&format!("host: localhost:{}\r\n", s.kms.port)), "{head}");
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(json["CiphertextBlob"], B64.encode(b"opaque-kms-ciphertext"));
    assert_eq!(json["KeyId"], "alias/veil");
    assert_eq!(json["EncryptionContext"]["veil:model"], "iris");
    assert_eq!(json["Recipient"]["KeyEncryptionAlgorithm"], "RSAES_OAEP_SHA_256");
    let document = B64.decode(json["Recipient"]["AttestationDocument"].as_str().unwrap()).unwrap();
    assert_eq!(document[0], 0x84, "an untagged COSE_Sign1");
    let spki = s.client.recipient_public_key().to_vec();
    assert_eq!(spki, edgebit_key().public_key_spki_der());
    assert!(contains(&document, &spki), "the document's public_key is the recipient key");

    // What the parent saw: one relay to the configured endpoint, and only TLS records.
    assert_eq!(*s.parent.relays.lock().unwrap(), [format!("localhost:{}", s.kms.port)]);
    let relayed = s.parent.relayed.lock().unwrap().clone();
    assert!(relayed.len() > 1000, "{}", relayed.len());
    for plaintext in [
        &b"TrentService"[..],
        b"Decrypt",
        b"AWS4-HMAC",
        b"ASIAEXAMPLE",
        b"CiphertextForRecipient",
        b"HTTP/1.1",
        &spki[..40],
    ] {
        assert!(!contains(&relayed, plaintext), "the relay saw plaintext {:?}", String::from_utf8_lossy(plaintext));
    }
    assert!(!contains(&relayed, &document[document.len() - 96..]), "the relay saw the attestation signature");
    assert_eq!(relayed[0], 0x16, "a TLS handshake record comes first");
}

#[tokio::test]
async fn credentials_come_from_the_parent_cached_and_refreshed_before_expiry() {
    // An hour left: one fetch serves both calls.
    let s = setup(vec![success()], Duration::from_secs(3600), 3, 20).await;
    for _ in 0..2 {
        s.client.decrypt_data_key(b"blob", &BTreeMap::new(), None).await.unwrap();
    }
    assert_eq!(s.parent.credential_requests.load(Ordering::SeqCst), 1);
    // Two minutes left: inside the five-minute margin, so each call fetches fresh credentials.
    let s = setup(vec![success()], Duration::from_secs(120), 3, 20).await;
    for _ in 0..2 {
        s.client.decrypt_data_key(b"blob", &BTreeMap::new(), None).await.unwrap();
    }
    assert_eq!(s.parent.credential_requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_policy_denial_is_a_clear_error_without_retries() {
    let msg = "User: arn:aws:sts::111122223333:assumed-role/veil/i-0abc is not authorized to perform: kms:Decrypt \
               because the key policy's kms:RecipientAttestation:PCR0 condition does not match";
    let s = setup(vec![error(400, "AccessDeniedException", msg)], Duration::from_secs(3600), 3, 20).await;
    let err = s.client.decrypt_data_key(b"blob", &context(), None).await.unwrap_err();
    assert!(matches!(err, KmsError::Refused(_)), "{err:?}");
    assert_eq!(err.to_string(), format!("KMS refused the key: {msg}"));
    assert_eq!(err.kind(), ErrorKind::Forbidden);
    assert_eq!(s.kms.requests.lock().unwrap().len(), 1, "a denial is not retried");
}

#[tokio::test]
async fn an_invalid_ciphertext_is_named_as_such() {
    let s = setup(vec![error(400, "InvalidCiphertextException", "")], Duration::from_secs(3600), 3, 20).await;
    let err = s.client.decrypt_data_key(b"blob", &context(), None).await.unwrap_err();
    assert_eq!(err.to_string(), "the data key does not decrypt under this key and encryption context");
    assert_eq!(s.kms.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn throttling_and_5xx_are_retried_within_a_bound() {
    // Throttled, then a 500, then success: three attempts, one answer.
    let script =
        vec![error(400, "ThrottlingException", "Rate exceeded"), error(500, "KMSInternalException", "oops"), success()];
    let s = setup(script, Duration::from_secs(3600), 3, 20).await;
    let plain = s.client.decrypt_data_key(b"blob", &context(), None).await.unwrap();
    assert_eq!(plain.as_slice(), b"Hello, World");
    assert_eq!(s.kms.requests.lock().unwrap().len(), 3);

    // Always throttled: exactly max_attempts tries, then "unavailable".
    let s = setup(vec![error(400, "ThrottlingException", "Rate exceeded")], Duration::from_secs(3600), 3, 20).await;
    let started = Instant::now();
    let err = s.client.decrypt_data_key(b"blob", &context(), None).await.unwrap_err();
    assert_eq!(err.to_string(), "KMS unavailable, try again");
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(s.kms.requests.lock().unwrap().len(), 3);
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
}

#[tokio::test]
async fn kms_down_gives_an_error_within_the_time_bound() {
    let dir = tempfile::tempdir().unwrap();
    let kms = fake_kms(dir.path(), vec![success()]).await;
    // The parent relays to a port where nothing listens.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let (addr, parent) = fake_parent(dead, Duration::from_secs(3600)).await;
    let client =
        KmsClient::with_recipient_key(&config(&kms, 10, 3), addr, mock_nsm(dir.path()), edgebit_key()).unwrap();
    let started = Instant::now();
    let err = client.decrypt_data_key(b"blob", &context(), None).await.unwrap_err();
    assert_eq!(err.to_string(), "KMS unavailable, try again");
    assert!(started.elapsed() < Duration::from_secs(5), "bounded by --kms-timeout-secs: {:?}", started.elapsed());
    assert!(parent.relays.lock().unwrap().len() >= 2, "retried");
}

#[tokio::test]
async fn an_untrusted_certificate_stops_the_call_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let kms = fake_kms(dir.path(), vec![success()]).await;
    let (addr, _parent) = fake_parent(kms.port, Duration::from_secs(3600)).await;
    // Without --kms-ca the mock's CA is not trusted: a parent relaying to an impostor gets nowhere.
    let mut cfg = config(&kms, 2, 5);
    cfg.ca_file = None;
    let client = KmsClient::with_recipient_key(&cfg, addr, mock_nsm(dir.path()), edgebit_key()).unwrap();
    let err = client.decrypt_data_key(b"blob", &context(), None).await.unwrap_err();
    assert_eq!(err.to_string(), "KMS unavailable, try again");
    assert!(kms.requests.lock().unwrap().is_empty(), "no request crossed an unverified TLS session");
}

/// An NSM that claims to be real hardware (for configuration checks only).
#[derive(Debug)]
struct NotMock;

impl Nsm for NotMock {
    fn attestation(&self, _: Option<&[u8]>, _: Option<&[u8]>, _: Option<&[u8]>) -> Result<Vec<u8>, NsmError> {
        Err(NsmError::Unavailable)
    }
    fn random(&self, _: &mut [u8]) -> Result<(), NsmError> {
        Err(NsmError::Unavailable)
    }
    fn describe_pcr(&self, _: u16) -> Result<Vec<u8>, NsmError> {
        Err(NsmError::Unavailable)
    }
    fn is_mock(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn configuration_is_checked() {
    let addr: Address = "tcp://127.0.0.1:1".parse().unwrap();
    let with = |region: Option<&str>, endpoint: Option<&str>, ca: Option<&str>| KmsConfig {
        region: region.unwrap_or("").to_owned(),
        endpoint: endpoint.map(str::to_owned),
        ca_file: ca.map(PathBuf::from),
        timeout_secs: 5,
        max_attempts: 2,
    };
    let nsm: Arc<dyn Nsm> = Arc::new(NotMock);
    let fails = |cfg: KmsConfig, nsm: Arc<dyn Nsm>| {
        KmsClient::with_recipient_key(&cfg, addr.clone(), nsm, edgebit_key()).unwrap_err().to_string()
    };
    // The mock KMS's CA is refused with a real NSM, whatever the file holds.
    let e = fails(with(Some("eu-west-1"), None, Some("/nonexistent.pem")), Arc::clone(&nsm));
    assert!(e.contains("an extra KMS CA is for the mock KMS"), "{e}");
    assert!(fails(with(None, None, None), Arc::clone(&nsm)).contains("not an AWS region"));
    assert!(fails(with(Some("eu west 1"), None, None), Arc::clone(&nsm)).contains("not an AWS region"));
    assert!(fails(with(Some("eu-west-1"), Some("kms.example.com"), None), Arc::clone(&nsm)).contains("HOST:PORT"));
    // Defaults: the regional endpoint on 443.
    let c =
        KmsClient::with_recipient_key(&with(Some("eu-west-1"), None, None), addr.clone(), nsm, edgebit_key()).unwrap();
    assert_eq!(c.endpoint(), "kms.eu-west-1.amazonaws.com:443");
    // An oversized blob never reaches KMS.
    let e = c.decrypt_data_key(&vec![0u8; 7000], &BTreeMap::new(), None).await.unwrap_err();
    assert!(matches!(e, KmsError::BadRequest(_)), "{e}");
}

#[tokio::test]
async fn a_parent_without_credentials_gives_a_clear_error_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let kms = fake_kms(dir.path(), vec![success()]).await;
    // A parent that refuses credentials (as `--credentials none` does).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: Address = format!("tcp://{}", listener.local_addr().unwrap()).parse().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let msg = FrameReader::new(&mut s, 1 << 16).recv::<HostRequest>().await.unwrap();
            let e =
                HostResponse::Error(ErrorReply::new(ErrorKind::Unavailable, "this parent serves no AWS credentials"));
            FrameWriter::new(&mut s, 1 << 16).send(msg.id, &e, b"").await.unwrap();
        }
    });
    let client =
        KmsClient::with_recipient_key(&config(&kms, 3, 10), addr, mock_nsm(dir.path()), edgebit_key()).unwrap();
    let started = Instant::now();
    let err = client.decrypt_data_key(b"blob", &context(), None).await.unwrap_err();
    assert!(matches!(err, KmsError::Credentials), "{err:?}");
    assert_eq!(err.to_string(), "no usable AWS credentials for KMS (from the parent's host services)");
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(kms.requests.lock().unwrap().is_empty(), "no unsigned request is sent");
}

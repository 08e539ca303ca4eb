//! End to end, off hardware: the enclave's `KmsClient` → the real parent's KMS relay (allow-list) → the
//! mock KMS (`veil-mock-kms`), which verifies the mock NSM's attestation document and enforces the key
//! policy's PCR0 condition like KMS, answering with a real `CiphertextForRecipient`.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use veil_enclave::kms::{KmsClient, KmsConfig, KmsError, RecipientKey};
use veil_enclave::nsm::{MockNsm, MockPcrs, Nsm};
use veil_mock_kms::store::{KeyStore, StoredKey};
use veil_parent::kms::{KmsRelayArgs, KmsRelayConfig, KmsServices};
use veil_protocol::attestation::TrustAnchor;
use veil_runtime::transport::{Address, Listener};

const KEY_ID: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";

fn recipient_key() -> RecipientKey {
    let der = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/vectors/edgebitio-enclaver-cms/recipient_private_key.pkcs8.der"
    ));
    RecipientKey::from_pkcs8_der(&der.unwrap()).unwrap()
}

/// The policy shape the docs recommend: `Decrypt` only for an enclave whose PCR0 is `pcr0_hex`.
fn policy(pcr0_hex: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
             "Action": ["kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy"], "Resource": "*"},
            {"Sid": "enclave-decrypt", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:role/veil-enclave"},
             "Action": "kms:Decrypt", "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": pcr0_hex}}}
        ]
    })
    .to_string()
}

struct Stack {
    _dir: tempfile::TempDir,
    _kms: veil_mock_kms::Handle,
    _stop: tokio::sync::watch::Sender<bool>,
    client: KmsClient,
    ciphertext: Vec<u8>,
    data_key: [u8; 32],
}

fn context() -> BTreeMap<String, String> {
    BTreeMap::from([("veil:model".to_owned(), "iris".to_owned())])
}

/// A mock KMS holding one key whose policy pins `policy_pcr0` (None: the enclave's own PCR0), a real parent
/// relaying to it only, and a `KmsClient` for a mock-NSM enclave.
async fn stack(policy_pcr0: Option<&str>) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let nsm = MockNsm::load_or_create(&dir.path().join("nsm"), MockPcrs::from_image_digest(&[1u8; 48])).unwrap();
    let pcr0 = hex::encode(nsm.describe_pcr(0).unwrap());
    let root = TrustAnchor::from_pem(&std::fs::read(nsm.root_pem_path()).unwrap()).unwrap();

    // The key, stored before the mock starts; the data key sealed under it as KMS would.
    let material = [0x42u8; 32];
    let data_key = [0x17u8; 32];
    let state = dir.path().join("kms");
    std::fs::create_dir_all(&state).unwrap();
    let mut store = KeyStore::open(&state.join("keys.json")).unwrap();
    let policy = policy(policy_pcr0.unwrap_or(&pcr0));
    store.insert(StoredKey::new(KEY_ID.into(), 1.7e9, "e2e".into(), policy, &material)).unwrap();
    let ciphertext = veil_mock_kms::blob::seal(KEY_ID, &material, &context(), &data_key).unwrap();
    // The parent's credentials belong to a session of the role the policy lets decrypt.
    let config = veil_mock_kms::Config::new("tcp://127.0.0.1:0".parse().unwrap(), &state, root)
        .with_principal("AKIDMOCKMOCKMOCK", "arn:aws:sts::111122223333:assumed-role/veil-enclave/i-0123456789abcdef0")
        .unwrap();
    let kms = veil_mock_kms::MockKms::start(config).await.unwrap();
    let endpoint = kms.endpoint.strip_prefix("https://").unwrap().to_owned();

    // The real parent host services: relay to the mock only, fixed credentials.
    let args = KmsRelayArgs {
        kms_endpoints: vec![endpoint.clone()],
        credentials: veil_parent::kms::CredentialsSource::None,
        imds_url: "http://169.254.169.254".into(),
        kms_connect_timeout_ms: 2000,
        kms_idle_timeout_secs: 10,
    };
    let services = KmsServices::with_static_credentials(
        KmsRelayConfig::from_args(&args).unwrap(),
        "AKIDMOCKMOCKMOCK".into(),
        "mock-secret".into(),
        None,
    );
    let listener = Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap()).await.unwrap();
    let host: Address = listener.local_address().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(veil_parent::host::serve_with_kms(
        listener,
        Arc::new(HashMap::new()),
        Some(Arc::new(services)),
        1 << 20,
        rx,
    ));

    let config = KmsConfig {
        region: kms.region.clone(),
        endpoint: Some(endpoint),
        ca_file: Some(kms.ca_file.clone()),
        timeout_secs: 10,
        max_attempts: 2,
    };
    let nsm: Arc<dyn Nsm> = Arc::new(nsm);
    let client = KmsClient::with_recipient_key(&config, host, nsm, recipient_key()).unwrap();
    Stack { _dir: dir, _kms: kms, _stop: stop, client, ciphertext, data_key }
}

#[tokio::test]
async fn the_mock_kms_releases_the_data_key_to_the_attested_enclave() {
    let s = stack(None).await;
    let key = s.client.decrypt_data_key(&s.ciphertext, &context(), Some(KEY_ID)).await.unwrap();
    assert_eq!(key.as_slice(), &s.data_key);
    // Without a key id too (the ciphertext names its key).
    let key = s.client.decrypt_data_key(&s.ciphertext, &context(), None).await.unwrap();
    assert_eq!(key.as_slice(), &s.data_key);
}

#[tokio::test]
async fn a_policy_for_another_image_is_refused_by_name() {
    let s = stack(Some(&"ab".repeat(48))).await;
    let err = s.client.decrypt_data_key(&s.ciphertext, &context(), None).await.unwrap_err();
    assert!(matches!(err, KmsError::Refused(_)), "{err:?}");
    let shown = err.to_string();
    assert!(shown.starts_with("KMS refused the key: "), "{shown}");
    assert!(shown.contains("PCR0"), "the client learns which condition failed: {shown}");
}

#[tokio::test]
async fn another_encryption_context_does_not_decrypt() {
    let s = stack(None).await;
    let other = BTreeMap::from([("veil:model".to_owned(), "resnet".to_owned())]);
    let err = s.client.decrypt_data_key(&s.ciphertext, &other, None).await.unwrap_err();
    assert_eq!(err.to_string(), "the data key does not decrypt under this key and encryption context");
}

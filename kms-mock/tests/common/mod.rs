//! Test helpers shared by the mock KMS integration tests.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use aes::cipher::{BlockModeDecrypt, KeyIvInit, block_padding::Pkcs7};
use cms::content_info::ContentInfo;
use cms::der::{Decode, Encode, asn1::ObjectIdentifier, asn1::OctetString};
use cms::enveloped_data::{EnvelopedData, RecipientIdentifier, RecipientInfo};
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use veil_enclave::nsm::{MockNsm, MockPcrs, Nsm};
use veil_mock_kms::{Clock, Config, Handle, MockKms};
use veil_protocol::attestation::TrustAnchor;

pub const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors");

/// The edgebitio vector's RSA-2048 key: a fixed recipient key (generating one in a debug build is slow).
pub fn recipient_key() -> rsa::PrivateKey {
    let der = std::fs::read(format!("{VECTORS}/edgebitio-enclaver-cms/recipient_private_key.pkcs8.der")).unwrap();
    rsa::PrivateKey::from_pkcs8_der(&der).unwrap()
}

pub fn spki_der(key: &rsa::PrivateKey) -> Vec<u8> {
    key.to_public_key().to_public_key_der().unwrap().as_bytes().to_vec()
}

/// Unwraps a `CiphertextForRecipient` independently of the mock's builder: `cms` parses the BER, `rsa`
/// undoes RSAES-OAEP-SHA256, `cbc` the AES-256-CBC content. Checks KMS's algorithm identifiers on the way.
pub fn unwrap_cms(ber: &[u8], key: &rsa::PrivateKey) -> Vec<u8> {
    let ci = ContentInfo::from_ber(ber).unwrap();
    assert_eq!(ci.content_type, ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.3"));
    let ed = EnvelopedData::from_ber(&ci.content.to_der().unwrap()).unwrap();
    assert_eq!(ed.recip_infos.0.len(), 1);
    let Some(RecipientInfo::Ktri(ktri)) = ed.recip_infos.0.get(0) else { panic!("not a KeyTransRecipientInfo") };
    assert_eq!(ktri.key_enc_alg.oid, ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.7"), "RSAES-OAEP");
    let RecipientIdentifier::SubjectKeyIdentifier(ski) = &ktri.rid else { panic!("KMS uses subjectKeyIdentifier") };
    let spki = spki_der(key);
    assert_eq!(ski.0.as_bytes(), ring::digest::digest(&ring::digest::SHA256, &spki).as_ref());
    let cek = key.oaep_decrypt::<rsa::sha2::Sha256>(ktri.enc_key.as_bytes()).unwrap();
    let eci = &ed.encrypted_content;
    assert_eq!(eci.content_type, ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1"), "id-data");
    assert_eq!(eci.content_enc_alg.oid, ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.42"), "aes256-CBC");
    let iv: OctetString = eci.content_enc_alg.parameters.as_ref().unwrap().decode_as().unwrap();
    let ct = eci.encrypted_content.as_ref().unwrap().as_bytes();
    cbc::Decryptor::<aes::Aes256>::new_from_slices(&cek, iv.as_bytes())
        .unwrap()
        .decrypt_padded_vec::<Pkcs7>(ct)
        .unwrap()
}

/// A mock NSM in `dir/name` whose PCRs derive from `image`.
pub fn nsm(dir: &Path, name: &str, image: u8) -> MockNsm {
    MockNsm::load_or_create(&dir.join(name), MockPcrs::from_image_digest(&[image; 48])).unwrap()
}

pub fn attestation(nsm: &MockNsm, spki: &[u8]) -> Vec<u8> {
    nsm.attestation(None, None, Some(spki)).unwrap()
}

pub fn root(nsm: &MockNsm) -> TrustAnchor {
    TrustAnchor::from_pem(&std::fs::read(nsm.root_pem_path()).unwrap()).unwrap()
}

pub async fn start_kms(state_dir: PathBuf, root: TrustAnchor, listen: &str) -> Handle {
    MockKms::start(Config::new(listen.parse().unwrap(), state_dir, root)).await.unwrap()
}

/// The account that holds the keys.
pub const ACCOUNT: &str = "111122223333";
/// The callers of [`start_kms_with_principals`]: (access key id, principal ARN).
pub const ADMIN: (&str, &str) = ("AKIAVEILADMIN0000000", "arn:aws:iam::111122223333:role/veil-admin");
/// The enclave's credentials are its parent instance role's: a session of that role.
pub const ENCLAVE: (&str, &str) =
    ("AKIAVEILENCLAVE00000", "arn:aws:sts::111122223333:assumed-role/veil-enclave/i-0123456789abcdef0");
/// The role key policies name for the enclave.
pub const ENCLAVE_ROLE: &str = "arn:aws:iam::111122223333:role/veil-enclave";
/// A client in its own account (cross-account use: it names the key by ARN).
pub const CLIENT: (&str, &str) = ("AKIAVEILCLIENT000000", "arn:aws:iam::444455556666:role/hospital");
/// Another principal of the key's account (a grantee).
pub const HELPER: (&str, &str) = ("AKIAVEILHELPER000000", "arn:aws:iam::111122223333:role/helper");

/// A mock KMS whose callers are [`ADMIN`], [`ENCLAVE`], [`CLIENT`] and [`HELPER`], on `clock`.
pub async fn start_kms_with_principals(state_dir: PathBuf, root: TrustAnchor, clock: Clock) -> Handle {
    let mut config = Config::new("tcp://127.0.0.1:0".parse().unwrap(), state_dir, root);
    for (key, arn) in [ADMIN, ENCLAVE, CLIENT, HELPER] {
        config = config.with_principal(key, arn).unwrap();
    }
    config.clock = clock;
    MockKms::start(config).await.unwrap()
}

/// An SDK client signing with `who`'s access key.
pub fn sdk_as(handle: &Handle, who: (&str, &str)) -> aws_sdk_kms::Client {
    sdk_client_with(handle, who.0, "any-secret")
}

/// nitro-cli's measurements JSON for PCR0, PCR1, PCR2 (and PCR8 if set) of `pcrs`.
pub fn write_measurements(path: &Path, pcrs: &MockPcrs) -> PathBuf {
    let mut m = serde_json::Map::new();
    m.insert("HashAlgorithm".into(), serde_json::json!("Sha384 { ... }"));
    for i in [0u16, 1, 2, 8] {
        let v = pcrs.get(i).unwrap();
        if i < 3 || v.iter().any(|b| *b != 0) {
            m.insert(format!("PCR{i}"), serde_json::json!(hex::encode(v)));
        }
    }
    std::fs::write(path, serde_json::to_vec(&serde_json::json!({"Measurements": m})).unwrap()).unwrap();
    path.to_owned()
}

/// The policy `veil kms policy` writes for `measurements` (and `also`), naming [`ENCLAVE_ROLE`], [`CLIENT`]
/// and [`ADMIN`].
pub fn veil_policy(measurements: &Path, also: &[PathBuf]) -> String {
    let args = veil_client::policy::PolicyArgs {
        measurements: measurements.to_owned(),
        also: also.to_vec(),
        account: ACCOUNT.into(),
        enclave_role: ENCLAVE_ROLE.into(),
        clients: vec![CLIENT.1.into()],
        admin: Some(ADMIN.1.into()),
        pcrs: vec![],
        allow_debug: false,
        output: None,
    };
    veil_client::policy::build_policy(&args).unwrap().to_string()
}

/// The code and message of a failed SDK call (code "?" and the whole error when KMS did not answer).
pub fn code_and_message<E, R>(err: aws_sdk_kms::error::SdkError<E, R>) -> (String, String)
where
    E: aws_sdk_kms::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_kms::error::ProvideErrorMetadata as _;
    match err.code() {
        Some(code) => (code.to_owned(), err.message().unwrap_or("").to_owned()),
        None => ("?".to_owned(), aws_sdk_kms::error::DisplayErrorContext(&err).to_string()),
    }
}
/// The real `aws-sdk-kms` client, TLS by rustls + ring, trusting only the mock's CA.
pub fn sdk_client(handle: &Handle) -> aws_sdk_kms::Client {
    sdk_client_with(handle, "AKIDMOCK", "mock-secret")
}

/// [`sdk_client`] with the given access key id and secret.
pub fn sdk_client_with(handle: &Handle, access_key: &str, secret: &str) -> aws_sdk_kms::Client {
    use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .tls_context(
            TlsContext::builder()
                .with_trust_store(TrustStore::empty().with_pem_certificate(handle.ca_pem.as_bytes()))
                .build()
                .unwrap(),
        )
        .build_https();
    let config = aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new("us-east-1"))
        .endpoint_url(&handle.endpoint)
        .credentials_provider(aws_sdk_kms::config::Credentials::new(access_key, secret, None, None, "test"))
        .http_client(http)
        .timeout_config(
            aws_sdk_kms::config::timeout::TimeoutConfig::builder()
                .connect_timeout(std::time::Duration::from_secs(2))
                .operation_timeout(std::time::Duration::from_secs(10))
                .build(),
        )
        .retry_config(aws_sdk_kms::config::retry::RetryConfig::standard().with_max_attempts(1))
        .build();
    aws_sdk_kms::Client::from_conf(config)
}

//! The real `aws-sdk-kms` client against the mock KMS over HTTPS.
#![allow(clippy::unwrap_used)]

mod common;

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeyEncryptionMechanism, RecipientInfo};
use common::*;

fn recipient(document: Vec<u8>) -> RecipientInfo {
    RecipientInfo::builder()
        .key_encryption_algorithm(KeyEncryptionMechanism::RsaesOaepSha256)
        .attestation_document(Blob::new(document))
        .build()
}

/// A key policy in the shape the Veil docs recommend: admin actions for the account, `Decrypt` only for an
/// enclave whose PCR0 is `pcr0_hex`.
fn nitro_policy(pcr0_hex: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
             "Action": ["kms:CreateKey", "kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy", "kms:GenerateDataKey", "kms:Encrypt"],
             "Resource": "*"},
            {"Sid": "enclave-decrypt", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:role/veil-enclave"},
             "Action": "kms:Decrypt", "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": pcr0_hex}}}
        ]
    })
    .to_string()
}

#[tokio::test]
async fn create_generate_decrypt_round_trip_and_context_binding() {
    let dir = tempfile::tempdir().unwrap();
    let nsm = nsm(dir.path(), "nsm", 1);
    let kms = start_kms(dir.path().join("kms"), root(&nsm), "tcp://127.0.0.1:0").await;
    assert!(kms.endpoint.starts_with("https://127.0.0.1:"));
    let client = sdk_client(&kms);

    let created = client.create_key().description("test key").send().await.unwrap();
    let meta = created.key_metadata().unwrap();
    let key_id = meta.key_id().to_owned();
    assert_eq!(meta.arn().unwrap(), format!("arn:aws:kms:us-east-1:111122223333:key/{key_id}"));
    assert!(meta.enabled());
    assert_eq!(meta.key_usage().unwrap().as_str(), "ENCRYPT_DECRYPT");
    assert_eq!(meta.key_spec().unwrap().as_str(), "SYMMETRIC_DEFAULT");

    let described = client.describe_key().key_id(meta.arn().unwrap()).send().await.unwrap();
    assert_eq!(described.key_metadata().unwrap().key_id(), key_id);
    assert_eq!(described.key_metadata().unwrap().description(), Some("test key"));

    let dk = client
        .generate_data_key()
        .key_id(&key_id)
        .key_spec(DataKeySpec::Aes256)
        .encryption_context("model", "iris")
        .send()
        .await
        .unwrap();
    let plaintext = dk.plaintext().unwrap().as_ref().to_vec();
    assert_eq!(plaintext.len(), 32);
    assert_eq!(dk.key_id().unwrap(), meta.arn().unwrap());
    let blob = dk.ciphertext_blob().unwrap().clone();

    let dec = client.decrypt().ciphertext_blob(blob.clone()).encryption_context("model", "iris").send().await.unwrap();
    assert_eq!(dec.plaintext().unwrap().as_ref(), plaintext.as_slice());
    assert_eq!(dec.key_id().unwrap(), meta.arn().unwrap());
    assert_eq!(dec.encryption_algorithm().unwrap().as_str(), "SYMMETRIC_DEFAULT");

    // Wrong and missing encryption context: the typed error the SDK gives for KMS's.
    for ctx in [Some(("model", "minilm")), None] {
        let mut req = client.decrypt().ciphertext_blob(blob.clone());
        if let Some((k, v)) = ctx {
            req = req.encryption_context(k, v);
        }
        let err = req.send().await.unwrap_err().into_service_error();
        assert!(err.is_invalid_ciphertext_exception(), "{err:?}");
    }

    // Encrypt / Decrypt of caller data.
    let enc = client.encrypt().key_id(&key_id).plaintext(Blob::new(b"hello".to_vec())).send().await.unwrap();
    let dec = client.decrypt().ciphertext_blob(enc.ciphertext_blob().unwrap().clone()).send().await.unwrap();
    assert_eq!(dec.plaintext().unwrap().as_ref(), b"hello");

    // GenerateRandom.
    let r = client.generate_random().number_of_bytes(48).send().await.unwrap();
    assert_eq!(r.plaintext().unwrap().as_ref().len(), 48);
    let err = client.generate_random().number_of_bytes(1025).send().await.unwrap_err().into_service_error();
    assert_eq!(err.meta().code(), Some("ValidationException"), "{err:?}");

    // An unknown key is NotFoundException.
    let err = client.describe_key().key_id("00000000-0000-4000-8000-000000000000").send().await.unwrap_err();
    assert!(err.into_service_error().is_not_found_exception());
}

#[tokio::test]
async fn recipient_gets_ciphertext_for_recipient_and_policy_pcrs_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let enclave = nsm(dir.path(), "nsm", 1);
    let kms = start_kms_with_principals(dir.path().join("kms"), root(&enclave), veil_mock_kms::Clock::system()).await;
    // The administrator makes keys and data keys; the enclave role (a session of it) decrypts.
    let client = sdk_as(&kms, ADMIN);
    let enclave_role = sdk_as(&kms, ENCLAVE);
    let key = recipient_key();
    let spki = spki_der(&key);
    let pcr0 = hex::encode_upper(enclave.pcrs().get(0).unwrap());

    let key_id = client
        .create_key()
        .policy(nitro_policy(&pcr0))
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_id()
        .to_owned();
    let policy = client.get_key_policy().key_id(&key_id).policy_name("default").send().await.unwrap();
    assert_eq!(policy.policy().unwrap(), nitro_policy(&pcr0));

    let dk = client.generate_data_key().key_id(&key_id).number_of_bytes(32).send().await.unwrap();
    let data_key = dk.plaintext().unwrap().as_ref().to_vec();
    let blob = dk.ciphertext_blob().unwrap().clone();

    // Without Recipient, the policy's PCR0 condition cannot hold.
    let err = enclave_role.decrypt().ciphertext_blob(blob.clone()).send().await.unwrap_err().into_service_error();
    assert_eq!(err.meta().code(), Some("AccessDeniedException"));
    assert!(err.meta().message().unwrap().contains("requires a Recipient attestation document"), "{err:?}");

    // With the enclave's document: CiphertextForRecipient, no Plaintext, and it unwraps to the data key.
    let dec = enclave_role
        .decrypt()
        .ciphertext_blob(blob.clone())
        .recipient(recipient(attestation(&enclave, &spki)))
        .send()
        .await
        .unwrap();
    assert!(dec.plaintext().is_none());
    assert_eq!(unwrap_cms(dec.ciphertext_for_recipient().unwrap().as_ref(), &key), data_key);

    // GenerateDataKey and GenerateRandom with Recipient.
    let dk2 = client
        .generate_data_key()
        .key_id(&key_id)
        .key_spec(DataKeySpec::Aes256)
        .recipient(recipient(attestation(&enclave, &spki)))
        .send()
        .await
        .unwrap();
    assert!(dk2.plaintext().is_none());
    let wrapped = unwrap_cms(dk2.ciphertext_for_recipient().unwrap().as_ref(), &key);
    assert_eq!(wrapped.len(), 32);
    let r = client
        .generate_random()
        .number_of_bytes(1024)
        .recipient(recipient(attestation(&enclave, &spki)))
        .send()
        .await
        .unwrap();
    assert!(r.plaintext().is_none());
    assert_eq!(unwrap_cms(r.ciphertext_for_recipient().unwrap().as_ref(), &key).len(), 1024);

    // A policy pinning another PCR0: a clear denial naming the condition.
    let wrong = hex::encode([0x42u8; 48]);
    client.put_key_policy().key_id(&key_id).policy_name("default").policy(nitro_policy(&wrong)).send().await.unwrap();
    let err = enclave_role
        .decrypt()
        .ciphertext_blob(blob.clone())
        .recipient(recipient(attestation(&enclave, &spki)))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(err.meta().code(), Some("AccessDeniedException"), "{err:?}");
    let message = err.meta().message().unwrap();
    assert!(
        message.contains(
            "the key policy's condition kms:RecipientAttestation:PCR0 does not match the attestation document"
        ),
        "{message}"
    );

    // A debug-mode enclave (PCR0..2 zero), same root: the PCR0 condition refuses it, by name.
    let debug = veil_enclave::nsm::MockNsm::load_or_create(
        &dir.path().join("nsm"),
        veil_enclave::nsm::MockPcrs::from_image_digest(&[1; 48])
            .with(0, [0; 48])
            .unwrap()
            .with(1, [0; 48])
            .unwrap()
            .with(2, [0; 48])
            .unwrap(),
    )
    .unwrap();
    let err = enclave_role
        .decrypt()
        .ciphertext_blob(blob.clone())
        .recipient(recipient(attestation(&debug, &spki)))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(err.meta().code(), Some("AccessDeniedException"), "{err:?}");
    assert!(err.meta().message().unwrap().contains("kms:RecipientAttestation:PCR0 does not match"), "{err:?}");

    // A document from another mock root (another "machine"): refused before any policy is read.
    client.put_key_policy().key_id(&key_id).policy_name("default").policy(nitro_policy(&pcr0)).send().await.unwrap();
    let stranger = nsm(dir.path(), "other-nsm", 1);
    assert_eq!(stranger.pcrs().get(0), enclave.pcrs().get(0), "same image, different root");
    let err = enclave_role
        .decrypt()
        .ciphertext_blob(blob.clone())
        .recipient(recipient(attestation(&stranger, &spki)))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(err.meta().code(), Some("AccessDeniedException"), "{err:?}");
    assert!(err.meta().message().unwrap().contains("did not verify"), "{err:?}");

    // A document whose public_key is not an RSA key.
    let err = enclave_role
        .decrypt()
        .ciphertext_blob(blob)
        .recipient(recipient(attestation(&enclave, b"not a key")))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(err.meta().code(), Some("ValidationException"), "{err:?}");
}

#[tokio::test]
async fn restart_on_the_same_port_and_state_keeps_keys_and_down_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let enclave = nsm(dir.path(), "nsm", 1);
    let state = dir.path().join("kms");
    let kms = start_kms(state.clone(), root(&enclave), "tcp://127.0.0.1:0").await;
    let port = kms.endpoint.rsplit(':').next().unwrap().to_owned();
    let ca_before = kms.ca_pem.clone();
    let client = sdk_client(&kms);
    let key_id = client.create_key().send().await.unwrap().key_metadata().unwrap().key_id().to_owned();
    let enc = client
        .encrypt()
        .key_id(&key_id)
        .plaintext(Blob::new(b"survives".to_vec()))
        .encryption_context("k", "v")
        .send()
        .await
        .unwrap();
    kms.stop().await;

    // Down: an error, quickly.
    let started = std::time::Instant::now();
    let err = client.list_keys().send().await.unwrap_err();
    assert!(err.as_service_error().is_none(), "a dispatch failure, not a KMS answer: {err:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());

    // Back on the same port and state: same CA, same keys; the old client works again.
    let kms = start_kms(state, root(&enclave), &format!("tcp://127.0.0.1:{port}")).await;
    assert_eq!(kms.ca_pem, ca_before);
    let dec = client
        .decrypt()
        .ciphertext_blob(enc.ciphertext_blob().unwrap().clone())
        .encryption_context("k", "v")
        .send()
        .await
        .unwrap();
    assert_eq!(dec.plaintext().unwrap().as_ref(), b"survives");
    let keys = client.list_keys().send().await.unwrap();
    assert_eq!(keys.keys().len(), 1);
    assert_eq!(keys.keys()[0].key_id(), Some(key_id.as_str()));
    kms.stop().await;
}

#[tokio::test]
async fn list_keys_paginates() {
    let dir = tempfile::tempdir().unwrap();
    let enclave = nsm(dir.path(), "nsm", 1);
    let kms = start_kms(dir.path().join("kms"), root(&enclave), "tcp://127.0.0.1:0").await;
    let client = sdk_client(&kms);
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(client.create_key().send().await.unwrap().key_metadata().unwrap().key_id().to_owned());
    }
    let mut seen = Vec::new();
    let mut marker = None;
    let mut pages = 0;
    loop {
        let page = client.list_keys().limit(2).set_marker(marker.clone()).send().await.unwrap();
        pages += 1;
        seen.extend(page.keys().iter().map(|k| k.key_id().unwrap().to_owned()));
        if !page.truncated() {
            break;
        }
        marker = page.next_marker().map(str::to_owned);
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created);
}

#[tokio::test]
async fn signatures_are_verified_when_credentials_are_configured() {
    let dir = tempfile::tempdir().unwrap();
    let enclave = nsm(dir.path(), "nsm", 1);
    let mut config =
        veil_mock_kms::Config::new("tcp://127.0.0.1:0".parse().unwrap(), dir.path().join("kms"), root(&enclave));
    config.credentials = Some(("AKIDVEIL".to_owned(), zeroize::Zeroizing::new("s3cret".to_owned())));
    let kms = veil_mock_kms::MockKms::start(config).await.unwrap();

    let good = sdk_client_with(&kms, "AKIDVEIL", "s3cret");
    let key_id = good.create_key().send().await.unwrap().key_metadata().unwrap().key_id().to_owned();
    let enc = good
        .encrypt()
        .key_id(&key_id)
        .plaintext(Blob::new(b"x".to_vec()))
        .encryption_context("a b", "c  d")
        .send()
        .await
        .unwrap();
    assert!(enc.ciphertext_blob().is_some());

    let err = sdk_client_with(&kms, "AKIDVEIL", "wrong").list_keys().send().await.unwrap_err().into_service_error();
    assert_eq!(err.meta().code(), Some("InvalidSignatureException"), "{err:?}");
    let err = sdk_client_with(&kms, "AKIDOTHER", "s3cret").list_keys().send().await.unwrap_err().into_service_error();
    assert_eq!(err.meta().code(), Some("UnrecognizedClientException"), "{err:?}");

    // With principals, the verified access key must be one of them.
    let mut config =
        veil_mock_kms::Config::new("tcp://127.0.0.1:0".parse().unwrap(), dir.path().join("kms2"), root(&enclave))
            .with_principal(ADMIN.0, ADMIN.1)
            .unwrap();
    config.credentials = Some(("AKIDVEILVERIFIED0000".to_owned(), zeroize::Zeroizing::new("s3cret".to_owned())));
    let err = veil_mock_kms::MockKms::start(config.clone()).await.unwrap_err();
    assert!(err.to_string().contains("has no principal"), "{err}");
    let config = config.with_principal("AKIDVEILVERIFIED0000", ENCLAVE.1).unwrap();
    let kms = veil_mock_kms::MockKms::start(config).await.unwrap();
    let err = sdk_as(&kms, ADMIN).list_keys().send().await.unwrap_err().into_service_error();
    assert_eq!(err.meta().code(), Some("UnrecognizedClientException"), "only the verified key is accepted");
    sdk_client_with(&kms, "AKIDVEILVERIFIED0000", "s3cret").list_keys().send().await.unwrap();
}

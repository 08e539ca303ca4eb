//! Who may do what, through the real `aws-sdk-kms`: callers as principals, the key policy `veil kms policy`
//! writes, grants against it (finding 7), and the age of `Recipient` documents.
#![allow(clippy::unwrap_used)]

mod common;

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, GrantOperation, KeyEncryptionMechanism, RecipientInfo};
use common::*;
use veil_enclave::nsm::{MockNsm, MockPcrs};
use veil_mock_kms::Clock;

fn recipient(document: Vec<u8>) -> RecipientInfo {
    RecipientInfo::builder()
        .key_encryption_algorithm(KeyEncryptionMechanism::RsaesOaepSha256)
        .attestation_document(Blob::new(document))
        .build()
}

/// The image the key policy pins.
const IMAGE: [u8; 48] = [1; 48];

/// A mock NSM in `dir/nsm` (one root for all of them) with these PCRs.
fn enclave_with(dir: &std::path::Path, pcrs: MockPcrs) -> MockNsm {
    MockNsm::load_or_create(&dir.join("nsm"), pcrs).unwrap()
}

/// A document of `nsm` for the fixed recipient key.
fn doc(nsm: &MockNsm) -> RecipientInfo {
    recipient(attestation(nsm, &spki_der(&recipient_key())))
}

async fn create_key(admin: &aws_sdk_kms::Client, policy: Option<String>) -> (String, String) {
    let out = admin.create_key().set_policy(policy).send().await.unwrap();
    let meta = out.key_metadata().unwrap();
    (meta.key_id().to_owned(), meta.arn().unwrap().to_owned())
}

#[tokio::test]
async fn only_the_enclave_role_decrypts_and_only_with_a_matching_document() {
    let dir = tempfile::tempdir().unwrap();
    let enclave_nsm = enclave_with(dir.path(), MockPcrs::from_image_digest(&IMAGE));
    let kms = start_kms_with_principals(dir.path().join("kms"), root(&enclave_nsm), Clock::system()).await;
    let (admin, enclave, client) = (sdk_as(&kms, ADMIN), sdk_as(&kms, ENCLAVE), sdk_as(&kms, CLIENT));
    let measurements = write_measurements(&dir.path().join("m.json"), enclave_nsm.pcrs());
    let (key_id, key_arn) = create_key(&admin, Some(veil_policy(&measurements, &[]))).await;

    // The client, in another account, names the key by ARN; a bare id means a key of its own account.
    let (code, _) = code_and_message(
        client.generate_data_key().key_id(&key_id).key_spec(DataKeySpec::Aes256).send().await.unwrap_err(),
    );
    assert_eq!(code, "NotFoundException");
    let dk = client.generate_data_key().key_id(&key_arn).key_spec(DataKeySpec::Aes256).send().await.unwrap();
    let data_key = dk.plaintext().unwrap().as_ref().to_vec();
    let blob = dk.ciphertext_blob().unwrap().clone();

    // The enclave role with its own document: the data key, wrapped for the document's key only.
    let out = enclave.decrypt().ciphertext_blob(blob.clone()).recipient(doc(&enclave_nsm)).send().await.unwrap();
    assert!(out.plaintext().is_none());
    assert_eq!(unwrap_cms(out.ciphertext_for_recipient().unwrap().as_ref(), &recipient_key()), data_key);

    // The enclave role without a document: the explicit Deny.
    let (code, message) = code_and_message(enclave.decrypt().ciphertext_blob(blob.clone()).send().await.unwrap_err());
    assert_eq!(code, "AccessDeniedException");
    assert!(message.contains("explicit Deny") && message.contains("NoDecryptWithoutAttestation"), "{message}");

    // Anyone else: refused with or without the enclave's genuine document (not named by any Allow).
    for (who, caller) in [(&client, CLIENT), (&admin, ADMIN)] {
        for with_doc in [false, true] {
            let mut req = who.decrypt().ciphertext_blob(blob.clone());
            if with_doc {
                req = req.recipient(doc(&enclave_nsm));
            }
            let (code, message) = code_and_message(req.send().await.unwrap_err());
            assert_eq!(code, "AccessDeniedException", "{}", caller.1);
            assert!(message.contains(caller.1), "the denial names the caller: {message}");
        }
    }

    // The enclave role with another image's document, a debug one, one differing in PCR0 only: denied.
    let other_image = enclave_with(dir.path(), MockPcrs::from_image_digest(&[2; 48]));
    let debug = enclave_with(
        dir.path(),
        MockPcrs::from_image_digest(&IMAGE)
            .with(0, [0; 48])
            .unwrap()
            .with(1, [0; 48])
            .unwrap()
            .with(2, [0; 48])
            .unwrap(),
    );
    let pcr0_only = enclave_with(dir.path(), MockPcrs::from_image_digest(&IMAGE).with(0, [0x42; 48]).unwrap());
    for (what, nsm) in [("another image", &other_image), ("debug mode", &debug), ("PCR0 only", &pcr0_only)] {
        let (code, message) = code_and_message(
            enclave.decrypt().ciphertext_blob(blob.clone()).recipient(doc(nsm)).send().await.unwrap_err(),
        );
        assert_eq!(code, "AccessDeniedException", "{what}");
        assert!(message.contains("explicit Deny") && message.contains("NoDecryptUnless"), "{what}: {message}");
    }

    // Nobody may create a grant, the administrator included.
    let (code, message) = code_and_message(
        admin
            .create_grant()
            .key_id(&key_id)
            .grantee_principal(HELPER.1)
            .operations(GrantOperation::Decrypt)
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "AccessDeniedException");
    assert!(message.contains("NoGrants"), "{message}");

    // An access key the mock does not know.
    let (code, _) =
        code_and_message(sdk_client_with(&kms, "AKIAUNKNOWNUNKNOWN00", "x").list_keys().send().await.unwrap_err());
    assert_eq!(code, "UnrecognizedClientException");
}

/// Finding 7: a grant carries no conditions, so with the old policy (a `Null` Deny, and `kms:Create*` for
/// the admin) a grantee could get data keys with any enclave's document. Grants made before the Veil
/// policy was put in place survive it; the policy's explicit Denies must still hold against them.
#[tokio::test]
async fn finding_7_grants_cannot_bypass_the_pcr_conditions() {
    let dir = tempfile::tempdir().unwrap();
    let enclave_nsm = enclave_with(dir.path(), MockPcrs::from_image_digest(&IMAGE));
    let kms = start_kms_with_principals(dir.path().join("kms"), root(&enclave_nsm), Clock::system()).await;
    let (admin, helper) = (sdk_as(&kms, ADMIN), sdk_as(&kms, HELPER));

    // With AWS's default policy, the administrator grants the helper role everything a grant can carry.
    let (key_id, _) = create_key(&admin, None).await;
    let grant = admin
        .create_grant()
        .key_id(&key_id)
        .grantee_principal(HELPER.1)
        .operations(GrantOperation::Decrypt)
        .operations(GrantOperation::GenerateDataKey)
        .operations(GrantOperation::ReEncryptFrom)
        .operations(GrantOperation::CreateGrant)
        .send()
        .await
        .unwrap();
    let grant_id = grant.grant_id().unwrap().to_owned();
    let dk = helper.generate_data_key().key_id(&key_id).key_spec(DataKeySpec::Aes256).send().await.unwrap();
    let blob = dk.ciphertext_blob().unwrap().clone();
    let plain = helper.decrypt().ciphertext_blob(blob.clone()).send().await.unwrap();
    assert_eq!(plain.plaintext().unwrap().as_ref(), dk.plaintext().unwrap().as_ref(), "the grant works");

    // Then the Veil policy. The grant is still there ...
    let measurements = write_measurements(&dir.path().join("m.json"), enclave_nsm.pcrs());
    admin.put_key_policy().key_id(&key_id).policy(veil_policy(&measurements, &[])).send().await.unwrap();
    let listed = admin.list_grants().key_id(&key_id).send().await.unwrap();
    assert_eq!(listed.grants().len(), 1);

    // ... and releases nothing without matching PCRs: no document, a debug document, a document right in
    // every PCR but PCR0 (a single Deny listing all PCRs would have let this one through), or right in
    // every PCR but PCR2.
    let (code, message) = code_and_message(helper.decrypt().ciphertext_blob(blob.clone()).send().await.unwrap_err());
    assert_eq!(code, "AccessDeniedException");
    assert!(message.contains("NoDecryptWithoutAttestation"), "{message}");
    let debug = enclave_with(
        dir.path(),
        MockPcrs::from_image_digest(&IMAGE)
            .with(0, [0; 48])
            .unwrap()
            .with(1, [0; 48])
            .unwrap()
            .with(2, [0; 48])
            .unwrap(),
    );
    let pcr0_only = enclave_with(dir.path(), MockPcrs::from_image_digest(&IMAGE).with(0, [0x42; 48]).unwrap());
    let pcr2_only = enclave_with(dir.path(), MockPcrs::from_image_digest(&IMAGE).with(2, [0x42; 48]).unwrap());
    for (what, nsm, statement) in [
        ("debug", &debug, "NoDecryptUnless"),
        ("PCR0 only", &pcr0_only, "NoDecryptUnlessImageSha384Matches"),
        ("PCR2 only", &pcr2_only, "NoDecryptUnlessPcr2Matches"),
    ] {
        let (code, message) = code_and_message(
            helper.decrypt().ciphertext_blob(blob.clone()).recipient(doc(nsm)).send().await.unwrap_err(),
        );
        assert_eq!(code, "AccessDeniedException", "{what}");
        assert!(message.contains("explicit Deny") && message.contains(statement), "{what}: {message}");
    }

    // Neither can the grant be extended or used to move ciphertexts to another key.
    let (code, message) = code_and_message(
        helper
            .create_grant()
            .key_id(&key_id)
            .grantee_principal(HELPER.1)
            .operations(GrantOperation::Decrypt)
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "AccessDeniedException");
    assert!(message.contains("NoGrants"), "{message}");

    // With the reviewed image's document the grant still "allows" Decrypt, but what KMS returns is the
    // data key wrapped for that document's key: only an enclave running the reviewed image opens it.
    let out = helper.decrypt().ciphertext_blob(blob.clone()).recipient(doc(&enclave_nsm)).send().await.unwrap();
    assert!(out.plaintext().is_none());
    assert!(out.ciphertext_for_recipient().is_some());

    // The administrator may revoke the old grant (and should: docs/OPERATING.md).
    admin.revoke_grant().key_id(&key_id).grant_id(&grant_id).send().await.unwrap();
    let (code, _) =
        code_and_message(helper.decrypt().ciphertext_blob(blob).recipient(doc(&enclave_nsm)).send().await.unwrap_err());
    assert_eq!(code, "AccessDeniedException");
}

/// During a roll-out two releases are accepted, and a document must match one of them in full: a grantee
/// (which no Allow's conditions constrain) cannot mix PCR0 of one release with PCR2 of the other.
#[tokio::test]
async fn a_roll_out_policy_accepts_each_release_whole_and_no_mix_even_for_a_grantee() {
    let dir = tempfile::tempdir().unwrap();
    let old = MockPcrs::from_image_digest(&[1; 48]);
    let new = MockPcrs::from_image_digest(&[2; 48]);
    let old_nsm = enclave_with(dir.path(), old.clone());
    let kms = start_kms_with_principals(dir.path().join("kms"), root(&old_nsm), Clock::system()).await;
    let (admin, helper, enclave) = (sdk_as(&kms, ADMIN), sdk_as(&kms, HELPER), sdk_as(&kms, ENCLAVE));
    let (key_id, _) = create_key(&admin, None).await;
    admin
        .create_grant()
        .key_id(&key_id)
        .grantee_principal(HELPER.1)
        .operations(GrantOperation::Decrypt)
        .send()
        .await
        .unwrap();
    let blob = admin.encrypt().key_id(&key_id).plaintext(Blob::new(vec![7u8; 32])).send().await.unwrap();
    let blob = blob.ciphertext_blob().unwrap().clone();
    let m_old = write_measurements(&dir.path().join("old.json"), &old);
    let m_new = write_measurements(&dir.path().join("new.json"), &new);
    admin.put_key_policy().key_id(&key_id).policy(veil_policy(&m_old, &[m_new])).send().await.unwrap();

    let new_nsm = enclave_with(dir.path(), new.clone());
    let mixed = enclave_with(dir.path(), old.clone().with(2, *new.get(2).unwrap()).unwrap());
    for nsm in [&old_nsm, &new_nsm] {
        for who in [&enclave, &helper] {
            let out = who.decrypt().ciphertext_blob(blob.clone()).recipient(doc(nsm)).send().await.unwrap();
            assert_eq!(unwrap_cms(out.ciphertext_for_recipient().unwrap().as_ref(), &recipient_key()), vec![7u8; 32]);
        }
    }
    for who in [&enclave, &helper] {
        let (code, message) = code_and_message(
            who.decrypt().ciphertext_blob(blob.clone()).recipient(doc(&mixed)).send().await.unwrap_err(),
        );
        assert_eq!(code, "AccessDeniedException");
        assert!(message.contains("explicit Deny"), "{message}");
    }
}

#[tokio::test]
async fn recipient_documents_older_than_five_minutes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let enclave_nsm = enclave_with(dir.path(), MockPcrs::from_image_digest(&IMAGE));
    // The same document, judged by mocks whose clocks run 4m50s and 5m10s ahead.
    for (n, (shift, fresh)) in [(290, true), (310, false)].into_iter().enumerate() {
        let kms = start_kms_with_principals(
            dir.path().join(format!("kms{n}")),
            root(&enclave_nsm),
            Clock::shifted_by_secs(shift),
        )
        .await;
        let (admin, enclave) = (sdk_as(&kms, ADMIN), sdk_as(&kms, ENCLAVE));
        let (key_id, _) = create_key(&admin, None).await;
        let blob = admin.encrypt().key_id(&key_id).plaintext(Blob::new(b"k".to_vec())).send().await.unwrap();
        let result = enclave
            .decrypt()
            .ciphertext_blob(blob.ciphertext_blob().unwrap().clone())
            .recipient(doc(&enclave_nsm))
            .send()
            .await;
        if fresh {
            assert!(result.unwrap().ciphertext_for_recipient().is_some());
        } else {
            let (code, message) = code_and_message(result.unwrap_err());
            assert_eq!(code, "AccessDeniedException", "{shift}");
            assert!(
                message.contains("did not verify") && message.contains("more than the 300000 ms allowed"),
                "{shift}: {message}"
            );
        }
        kms.stop().await;
    }
}

#[tokio::test]
async fn key_policies_keep_their_lockout_safety_check_and_other_accounts_have_no_keys_here() {
    let dir = tempfile::tempdir().unwrap();
    let nsm = enclave_with(dir.path(), MockPcrs::from_image_digest(&IMAGE));
    let kms = start_kms_with_principals(dir.path().join("kms"), root(&nsm), Clock::system()).await;
    let (admin, client) = (sdk_as(&kms, ADMIN), sdk_as(&kms, CLIENT));
    let (key_id, _) = create_key(&admin, None).await;

    // A policy that would not let the caller change it again: refused, unless the check is bypassed.
    let locked = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"AWS": ENCLAVE_ROLE}, "Action": "kms:*", "Resource": "*"}]})
    .to_string();
    let (code, message) =
        code_and_message(admin.put_key_policy().key_id(&key_id).policy(&locked).send().await.unwrap_err());
    assert_eq!(code, "MalformedPolicyDocumentException");
    assert!(message.contains("will not allow you to update the key policy"), "{message}");
    let (code, _) = code_and_message(admin.create_key().policy(&locked).send().await.unwrap_err());
    assert_eq!(code, "MalformedPolicyDocumentException");
    admin
        .put_key_policy()
        .key_id(&key_id)
        .policy(&locked)
        .bypass_policy_lockout_safety_check(true)
        .send()
        .await
        .unwrap();
    let (code, _) = code_and_message(admin.get_key_policy().key_id(&key_id).send().await.unwrap_err());
    assert_eq!(code, "AccessDeniedException", "locked out, as asked");

    // A principal of another account lists no keys here and creates none.
    assert!(client.list_keys().send().await.unwrap().keys().is_empty());
    assert_eq!(admin.list_keys().send().await.unwrap().keys().len(), 1);
    let (code, _) = code_and_message(client.create_key().send().await.unwrap_err());
    assert_eq!(code, "AccessDeniedException");
}

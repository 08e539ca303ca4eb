//! Grants through the real `aws-sdk-kms`: CreateGrant, ListGrants, RevokeGrant, RetireGrant, and how a
//! grant's operations and constraints decide what its grantee may do.
#![allow(clippy::unwrap_used)]

mod common;

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, GrantConstraints, GrantOperation};
use common::*;
use veil_mock_kms::Clock;

/// A key whose policy lets only the admin role do anything: whatever the helper role may do, a grant gave it.
async fn admin_only_key(admin: &aws_sdk_kms::Client) -> String {
    let policy = serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ADMIN.1}, "Action": "kms:*", "Resource": "*"}]})
    .to_string();
    admin.create_key().policy(policy).send().await.unwrap().key_metadata().unwrap().key_id().to_owned()
}

#[tokio::test]
async fn a_grant_gives_its_grantee_its_operations_within_its_constraints_until_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let enclave = nsm(dir.path(), "nsm", 1);
    let kms = start_kms_with_principals(dir.path().join("kms"), root(&enclave), Clock::system()).await;
    let (admin, helper, client) = (sdk_as(&kms, ADMIN), sdk_as(&kms, HELPER), sdk_as(&kms, CLIENT));
    let key = admin_only_key(&admin).await;

    let (code, _) = code_and_message(
        helper.generate_data_key().key_id(&key).key_spec(DataKeySpec::Aes256).send().await.unwrap_err(),
    );
    assert_eq!(code, "AccessDeniedException", "nothing before the grant");

    let grant = admin
        .create_grant()
        .key_id(&key)
        .grantee_principal(HELPER.1)
        .operations(GrantOperation::GenerateDataKey)
        .operations(GrantOperation::Decrypt)
        .constraints(GrantConstraints::builder().encryption_context_subset("tenant", "a").build())
        .name("helper-tenant-a")
        .send()
        .await
        .unwrap();
    let grant_id = grant.grant_id().unwrap().to_owned();
    assert_eq!(grant_id.len(), 64);
    let token = grant.grant_token().unwrap().to_owned();

    // Within the constraint: allowed (with or without the grant token, the mock is consistent at once).
    let dk = helper
        .generate_data_key()
        .key_id(&key)
        .key_spec(DataKeySpec::Aes256)
        .encryption_context("tenant", "a")
        .encryption_context("request", "1")
        .grant_tokens(&token)
        .send()
        .await
        .unwrap();
    let blob = dk.ciphertext_blob().unwrap().clone();
    let dec = helper
        .decrypt()
        .ciphertext_blob(blob.clone())
        .encryption_context("tenant", "a")
        .encryption_context("request", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(dec.plaintext().unwrap().as_ref(), dk.plaintext().unwrap().as_ref());
    // Outside it, another operation, or another principal: denied.
    let (code, message) = code_and_message(
        helper
            .generate_data_key()
            .key_id(&key)
            .key_spec(DataKeySpec::Aes256)
            .encryption_context("tenant", "b")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "AccessDeniedException");
    assert!(message.contains("no grant allows it"), "{message}");
    let (code, _) =
        code_and_message(helper.encrypt().key_id(&key).plaintext(Blob::new(b"x".to_vec())).send().await.unwrap_err());
    assert_eq!(code, "AccessDeniedException");
    let key_arn = format!("arn:aws:kms:us-east-1:{ACCOUNT}:key/{key}");
    let (code, _) = code_and_message(
        client
            .generate_data_key()
            .key_id(&key_arn)
            .key_spec(DataKeySpec::Aes256)
            .encryption_context("tenant", "a")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "AccessDeniedException");

    // Retrying with the same Name returns the same grant; ListGrants shows it as KMS does.
    let again = admin
        .create_grant()
        .key_id(&key)
        .grantee_principal(HELPER.1)
        .operations(GrantOperation::GenerateDataKey)
        .operations(GrantOperation::Decrypt)
        .constraints(GrantConstraints::builder().encryption_context_subset("tenant", "a").build())
        .name("helper-tenant-a")
        .send()
        .await
        .unwrap();
    assert_eq!(again.grant_id(), Some(grant_id.as_str()));
    assert_ne!(again.grant_token(), Some(token.as_str()), "a fresh token every time");
    let listed = admin.list_grants().key_id(&key).send().await.unwrap();
    assert_eq!(listed.grants().len(), 1);
    let g = &listed.grants()[0];
    assert_eq!(g.grant_id(), Some(grant_id.as_str()));
    assert_eq!(g.key_id(), Some(key_arn.as_str()));
    assert_eq!(g.grantee_principal(), Some(HELPER.1));
    assert_eq!(g.name(), Some("helper-tenant-a"));
    assert_eq!(g.issuing_account(), Some("arn:aws:iam::111122223333:root"));
    assert_eq!(g.operations(), [GrantOperation::GenerateDataKey, GrantOperation::Decrypt]);
    let subset = g.constraints().unwrap().encryption_context_subset().unwrap();
    assert_eq!(subset.get("tenant").map(String::as_str), Some("a"));
    let (code, _) = code_and_message(helper.list_grants().key_id(&key).send().await.unwrap_err());
    assert_eq!(code, "AccessDeniedException", "listing grants needs kms:ListGrants in the key policy");

    // Revoked: gone, and so is the permission; revoking again is NotFoundException.
    admin.revoke_grant().key_id(&key).grant_id(&grant_id).send().await.unwrap();
    let (code, _) = code_and_message(
        helper
            .decrypt()
            .ciphertext_blob(blob)
            .encryption_context("tenant", "a")
            .encryption_context("request", "1")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "AccessDeniedException");
    assert!(admin.list_grants().key_id(&key).send().await.unwrap().grants().is_empty());
    let (code, _) = code_and_message(admin.revoke_grant().key_id(&key).grant_id(&grant_id).send().await.unwrap_err());
    assert_eq!(code, "NotFoundException");
}

#[tokio::test]
async fn grant_inputs_are_checked_and_grants_can_be_retired_and_delegated() {
    let dir = tempfile::tempdir().unwrap();
    let enclave = nsm(dir.path(), "nsm", 1);
    let kms = start_kms_with_principals(dir.path().join("kms"), root(&enclave), Clock::system()).await;
    let (admin, helper, client) = (sdk_as(&kms, ADMIN), sdk_as(&kms, HELPER), sdk_as(&kms, CLIENT));
    let key = admin_only_key(&admin).await;
    let grant = |grantee: &str| admin.create_grant().key_id(&key).grantee_principal(grantee);

    let cases = [
        (
            code_and_message(grant(HELPER.1).operations(GrantOperation::Sign).send().await.unwrap_err()),
            "ValidationException",
        ),
        (code_and_message(grant(HELPER.1).send().await.unwrap_err()), "ValidationException"),
        (
            code_and_message(grant("helper").operations(GrantOperation::Decrypt).send().await.unwrap_err()),
            "InvalidArnException",
        ),
        (
            code_and_message(grant("*").operations(GrantOperation::Decrypt).send().await.unwrap_err()),
            "InvalidArnException",
        ),
        (
            code_and_message(
                grant(HELPER.1).operations(GrantOperation::Decrypt).grant_tokens("forged").send().await.unwrap_err(),
            ),
            "InvalidGrantTokenException",
        ),
        (
            code_and_message(
                admin
                    .create_grant()
                    .key_id("alias/anything")
                    .grantee_principal(HELPER.1)
                    .operations(GrantOperation::Decrypt)
                    .send()
                    .await
                    .unwrap_err(),
            ),
            "NotFoundException",
        ),
        (
            code_and_message(
                grant(HELPER.1).operations(GrantOperation::Decrypt).dry_run(true).send().await.unwrap_err(),
            ),
            "DryRunOperationException",
        ),
        (
            code_and_message(admin.revoke_grant().key_id(&key).grant_id("nope").send().await.unwrap_err()),
            "InvalidGrantIdException",
        ),
    ];
    for ((code, message), expected) in cases {
        assert_eq!(code, expected, "{message}");
    }
    assert!(admin.list_grants().key_id(&key).send().await.unwrap().grants().is_empty(), "DryRun made nothing");

    // A grantee with CreateGrant may pass on a subset of its operations, with at least its constraints.
    let parent = grant(HELPER.1)
        .operations(GrantOperation::Encrypt)
        .operations(GrantOperation::CreateGrant)
        .constraints(GrantConstraints::builder().encryption_context_subset("tenant", "a").build())
        .retiring_principal(CLIENT.1)
        .send()
        .await
        .unwrap();
    let sub = |ops: &[GrantOperation], tenant: Option<&str>| {
        let mut r = helper.create_grant().key_id(&key).grantee_principal(CLIENT.1).set_operations(Some(ops.to_vec()));
        if let Some(t) = tenant {
            r = r.constraints(GrantConstraints::builder().encryption_context_subset("tenant", t).build());
        }
        r.send()
    };
    let (code, _) = code_and_message(sub(&[GrantOperation::Decrypt], Some("a")).await.unwrap_err());
    assert_eq!(code, "AccessDeniedException", "not an operation of its own grant");
    let (code, _) = code_and_message(sub(&[GrantOperation::Encrypt], None).await.unwrap_err());
    assert_eq!(code, "AccessDeniedException", "looser than its own constraint");
    let child = sub(&[GrantOperation::Encrypt], Some("a")).await.unwrap();
    let key_arn = format!("arn:aws:kms:us-east-1:{ACCOUNT}:key/{key}");
    client
        .encrypt()
        .key_id(&key_arn)
        .plaintext(Blob::new(b"x".to_vec()))
        .encryption_context("tenant", "a")
        .send()
        .await
        .unwrap();

    // Retiring. The child's grantee (of another account) lacks RetireGrant and is not its retiring
    // principal: refused. A principal of the issuing account may retire it (by token).
    let (code, _) =
        code_and_message(client.retire_grant().grant_token(child.grant_token().unwrap()).send().await.unwrap_err());
    assert_eq!(code, "AccessDeniedException");
    admin.retire_grant().grant_token(child.grant_token().unwrap()).send().await.unwrap();
    let (code, _) = code_and_message(
        client
            .encrypt()
            .key_id(&key_arn)
            .plaintext(Blob::new(b"x".to_vec()))
            .encryption_context("tenant", "a")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "AccessDeniedException");
    // The parent's retiring principal (of another account) retires it by key ARN and grant id.
    client.retire_grant().key_id(&key_arn).grant_id(parent.grant_id().unwrap()).send().await.unwrap();
    assert!(admin.list_grants().key_id(&key).send().await.unwrap().grants().is_empty());
    let (code, _) =
        code_and_message(admin.retire_grant().grant_token(parent.grant_token().unwrap()).send().await.unwrap_err());
    assert_eq!(code, "NotFoundException");

    // Grants survive a restart.
    grant(HELPER.1).operations(GrantOperation::DescribeKey).send().await.unwrap();
    kms.stop().await;
    let kms = start_kms_with_principals(dir.path().join("kms"), root(&enclave), Clock::system()).await;
    sdk_as(&kms, HELPER).describe_key().key_id(&key).send().await.unwrap();
}

//! Aliases through the real `aws-sdk-kms`: CreateAlias, ListAliases, UpdateAlias, DeleteAlias, and alias
//! names and ARNs wherever KMS takes them (and nowhere else).
#![allow(clippy::unwrap_used)]

mod common;

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use common::*;
use veil_mock_kms::Clock;

#[tokio::test]
async fn aliases_name_keys_in_cryptographic_operations_and_describe_key() {
    let dir = tempfile::tempdir().unwrap();
    let enclave = nsm(dir.path(), "nsm", 1);
    let kms = start_kms_with_principals(dir.path().join("kms"), root(&enclave), Clock::system()).await;
    let admin = sdk_as(&kms, ADMIN);
    let key = admin.create_key().send().await.unwrap().key_metadata().unwrap().clone();
    let (key_id, key_arn) = (key.key_id().to_owned(), key.arn().unwrap().to_owned());
    admin.create_alias().alias_name("alias/veil-data").target_key_id(&key_arn).send().await.unwrap();
    let alias_arn = format!("arn:aws:kms:us-east-1:{ACCOUNT}:alias/veil-data");

    for name in ["alias/veil-data", alias_arn.as_str()] {
        let described = admin.describe_key().key_id(name).send().await.unwrap();
        assert_eq!(described.key_metadata().unwrap().key_id(), key_id, "{name}");
        let dk = admin.generate_data_key().key_id(name).key_spec(DataKeySpec::Aes256).send().await.unwrap();
        assert_eq!(dk.key_id(), Some(key_arn.as_str()), "answers name the key ARN, not the alias");
        let enc = admin.encrypt().key_id(name).plaintext(Blob::new(b"x".to_vec())).send().await.unwrap();
        for blob in [dk.ciphertext_blob().unwrap(), enc.ciphertext_blob().unwrap()] {
            let dec = admin.decrypt().key_id(name).ciphertext_blob(blob.clone()).send().await.unwrap();
            assert_eq!(dec.key_id(), Some(key_arn.as_str()));
        }
    }

    let listed = admin.list_aliases().send().await.unwrap();
    assert_eq!(listed.aliases().len(), 1);
    let a = &listed.aliases()[0];
    assert_eq!(a.alias_name(), Some("alias/veil-data"));
    assert_eq!(a.alias_arn(), Some(alias_arn.as_str()));
    assert_eq!(a.target_key_id(), Some(key_id.as_str()));
    assert!(a.creation_date().is_some() && a.last_updated_date().is_some());

    // Key policies take a key id or key ARN only, as in KMS.
    for call in [
        code_and_message(admin.get_key_policy().key_id("alias/veil-data").send().await.unwrap_err()),
        code_and_message(admin.get_key_policy().key_id(&alias_arn).send().await.unwrap_err()),
        code_and_message(admin.put_key_policy().key_id("alias/veil-data").policy("{}").send().await.unwrap_err()),
    ] {
        assert_eq!(call.0, "NotFoundException", "{}", call.1);
        assert!(call.1.contains("not an alias"), "{}", call.1);
    }

    // Unknown aliases, and aliases of another region or account.
    for name in [
        "alias/nope",
        "arn:aws:kms:eu-west-1:111122223333:alias/veil-data",
        "arn:aws:kms:us-east-1:444455556666:alias/veil-data",
    ] {
        let err = admin.generate_data_key().key_id(name).key_spec(DataKeySpec::Aes256).send().await.unwrap_err();
        let (code, message) = code_and_message(err);
        assert_eq!(code, "NotFoundException", "{name}: {message}");
    }
    let (_, message) = code_and_message(admin.describe_key().key_id("alias/nope").send().await.unwrap_err());
    assert_eq!(message, "Alias arn:aws:kms:us-east-1:111122223333:alias/nope is not found.");

    // An alias name resolves in the caller's account: a client of another account has no such alias.
    let client = sdk_as(&kms, CLIENT);
    let (code, _) = code_and_message(client.describe_key().key_id("alias/veil-data").send().await.unwrap_err());
    assert_eq!(code, "NotFoundException");
    assert!(client.list_aliases().send().await.unwrap().aliases().is_empty());
}

#[tokio::test]
async fn alias_lifecycle_and_kms_validation_rules() {
    let dir = tempfile::tempdir().unwrap();
    let enclave = nsm(dir.path(), "nsm", 1);
    let kms = start_kms_with_principals(dir.path().join("kms"), root(&enclave), Clock::system()).await;
    let admin = sdk_as(&kms, ADMIN);
    let k1 = admin.create_key().send().await.unwrap().key_metadata().unwrap().key_id().to_owned();
    let k2 = admin.create_key().send().await.unwrap().key_metadata().unwrap().key_id().to_owned();

    // Name rules and their error shapes.
    for (name, expected) in [
        ("veil", "InvalidAliasNameException"),
        ("alias/", "InvalidAliasNameException"),
        ("alias/aws/ebs", "InvalidAliasNameException"),
        ("alias/with space", "ValidationException"),
        ("alias/colon:", "ValidationException"),
    ] {
        let err = admin.create_alias().alias_name(name).target_key_id(&k1).send().await.unwrap_err();
        let (code, message) = code_and_message(err);
        assert_eq!(code, expected, "{name:?}: {message}");
    }
    let long = format!("alias/{}", "a".repeat(251));
    let (code, _) =
        code_and_message(admin.create_alias().alias_name(&long).target_key_id(&k1).send().await.unwrap_err());
    assert_eq!(code, "ValidationException");
    // Targets are key ids or key ARNs, and must exist.
    let (code, _) = code_and_message(
        admin.create_alias().alias_name("alias/x").target_key_id("alias/other").send().await.unwrap_err(),
    );
    assert_eq!(code, "NotFoundException");
    let (code, _) = code_and_message(
        admin
            .create_alias()
            .alias_name("alias/x")
            .target_key_id("00000000-0000-4000-8000-000000000000")
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "NotFoundException");

    admin.create_alias().alias_name("alias/current").target_key_id(&k1).send().await.unwrap();
    let (code, message) =
        code_and_message(admin.create_alias().alias_name("alias/current").target_key_id(&k2).send().await.unwrap_err());
    assert_eq!(code, "AlreadyExistsException");
    assert!(message.contains("alias/current"), "{message}");

    // A blob of k1, then the alias moves to k2: Decrypt with the alias as KeyId is now the wrong key.
    let blob = admin.encrypt().key_id("alias/current").plaintext(Blob::new(b"x".to_vec())).send().await.unwrap();
    let blob = blob.ciphertext_blob().unwrap().clone();
    admin.update_alias().alias_name("alias/current").target_key_id(&k2).send().await.unwrap();
    let (code, _) = code_and_message(
        admin.decrypt().key_id("alias/current").ciphertext_blob(blob.clone()).send().await.unwrap_err(),
    );
    assert_eq!(code, "IncorrectKeyException");
    let listed = admin.list_aliases().key_id(&k2).send().await.unwrap();
    assert_eq!(listed.aliases()[0].target_key_id(), Some(k2.as_str()));
    assert!(admin.list_aliases().key_id(&k1).send().await.unwrap().aliases().is_empty());
    let (code, _) =
        code_and_message(admin.update_alias().alias_name("alias/none").target_key_id(&k1).send().await.unwrap_err());
    assert_eq!(code, "NotFoundException");

    // Pagination.
    for n in 0..4 {
        admin.create_alias().alias_name(format!("alias/page-{n}")).target_key_id(&k1).send().await.unwrap();
    }
    let mut seen = Vec::new();
    let mut marker = None;
    loop {
        let page = admin.list_aliases().limit(2).set_marker(marker.clone()).send().await.unwrap();
        seen.extend(page.aliases().iter().map(|a| a.alias_name().unwrap().to_owned()));
        if !page.truncated() {
            break;
        }
        marker = page.next_marker().map(str::to_owned);
    }
    assert_eq!(seen, ["alias/current", "alias/page-0", "alias/page-1", "alias/page-2", "alias/page-3"]);
    let (code, _) = code_and_message(admin.list_aliases().marker("garbage").send().await.unwrap_err());
    assert_eq!(code, "InvalidMarkerException");
    let (code, _) = code_and_message(admin.list_aliases().limit(101).send().await.unwrap_err());
    assert_eq!(code, "ValidationException");

    // Delete; then the name is free and unknown.
    admin.delete_alias().alias_name("alias/current").send().await.unwrap();
    let (code, _) = code_and_message(admin.describe_key().key_id("alias/current").send().await.unwrap_err());
    assert_eq!(code, "NotFoundException");
    let (code, _) = code_and_message(admin.delete_alias().alias_name("alias/current").send().await.unwrap_err());
    assert_eq!(code, "NotFoundException");

    // Aliases survive a restart, like keys.
    kms.stop().await;
    let kms = start_kms_with_principals(dir.path().join("kms"), root(&enclave), Clock::system()).await;
    let admin = sdk_as(&kms, ADMIN);
    assert_eq!(admin.list_aliases().send().await.unwrap().aliases().len(), 4);
    admin.describe_key().key_id("alias/page-0").send().await.unwrap();
}

#[tokio::test]
async fn alias_management_needs_the_key_policy_to_allow_it() {
    let dir = tempfile::tempdir().unwrap();
    let enclave = nsm(dir.path(), "nsm", 1);
    let kms = start_kms_with_principals(dir.path().join("kms"), root(&enclave), Clock::system()).await;
    let (admin, helper) = (sdk_as(&kms, ADMIN), sdk_as(&kms, HELPER));
    // Only the admin role may manage this key (no account statement, so no delegation to the helper).
    let policy = serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ADMIN.1}, "Action": "kms:*", "Resource": "*"}]})
    .to_string();
    let key = admin.create_key().policy(policy).send().await.unwrap().key_metadata().unwrap().key_id().to_owned();
    let (code, message) =
        code_and_message(helper.create_alias().alias_name("alias/mine").target_key_id(&key).send().await.unwrap_err());
    assert_eq!(code, "AccessDeniedException");
    assert!(message.contains("kms:CreateAlias") && message.contains(HELPER.1), "{message}");
    admin.create_alias().alias_name("alias/mine").target_key_id(&key).send().await.unwrap();
    let (code, _) = code_and_message(helper.delete_alias().alias_name("alias/mine").send().await.unwrap_err());
    assert_eq!(code, "AccessDeniedException");
    // Resolving an alias is no permission: the key policy still decides.
    let (code, _) = code_and_message(
        helper.generate_data_key().key_id("alias/mine").key_spec(DataKeySpec::Aes256).send().await.unwrap_err(),
    );
    assert_eq!(code, "AccessDeniedException");
}

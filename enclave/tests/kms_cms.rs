//! `CiphertextForRecipient` unwrapping against real KMS vectors (tests/vectors), and hostile blobs.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use veil_enclave::kms::RecipientKey;
use veil_enclave::kms::cms::{self, CmsError};

fn vector(path: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors").join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn edgebit() -> (Vec<u8>, RecipientKey) {
    let blob = vector("edgebitio-enclaver-cms/ciphertext_for_recipient.ber");
    let key = RecipientKey::from_pkcs8_der(&vector("edgebitio-enclaver-cms/recipient_private_key.pkcs8.der")).unwrap();
    (blob, key)
}

#[test]
fn edgebitio_vector_decrypts_to_hello_world() {
    let (blob, key) = edgebit();
    let plain = cms::unwrap(&blob, &key).unwrap();
    assert_eq!(plain.as_slice(), b"Hello, World");
    assert_eq!(plain.as_slice(), vector("edgebitio-enclaver-cms/expected_plaintext.txt").as_slice());
}

#[test]
fn aws_sdk_c_vectors_parse_to_the_expected_parts() {
    for suffix in ["", "_w_ctx"] {
        let env = cms::parse(&vector(&format!("aws-nitro-enclaves-sdk-c-cms/input_ber{suffix}.bin"))).unwrap();
        assert_eq!(env.encrypted_key, vector(&format!("aws-nitro-enclaves-sdk-c-cms/encrypted_key_out{suffix}.bin")));
        assert_eq!(env.iv.as_slice(), vector(&format!("aws-nitro-enclaves-sdk-c-cms/iv_out{suffix}.bin")));
        assert_eq!(env.ciphertext, vector(&format!("aws-nitro-enclaves-sdk-c-cms/ciphertext_out{suffix}.bin")));
    }
}

#[test]
fn a_wrong_key_is_one_generic_error() {
    let (blob, _) = edgebit();
    let other = RecipientKey::generate().unwrap();
    assert_eq!(other.public_key_spki_der().len(), 294, "RSA-2048 SubjectPublicKeyInfo");
    assert_eq!(cms::unwrap(&blob, &other).unwrap_err(), CmsError::Decrypt);
    // The AWS vectors were made for a key nobody has: the same error, not a distinction.
    let aws = vector("aws-nitro-enclaves-sdk-c-cms/input_ber.bin");
    assert_eq!(cms::unwrap(&aws, &other).unwrap_err(), CmsError::Decrypt);
}

#[test]
fn tampered_ciphertext_fails_without_saying_where() {
    let (blob, key) = edgebit();
    let env = cms::parse(&blob).unwrap();
    // Flip a byte of the content ciphertext, of the IV, of the encrypted key: always the same error
    // (padding failures and RSA failures are indistinguishable to the caller).
    for needle in [&env.ciphertext[..], &env.iv[..], &env.encrypted_key[..]] {
        let at = blob.windows(needle.len()).position(|w| w == needle).unwrap() + needle.len() - 1;
        let mut bad = blob.clone();
        bad[at] ^= 0x01;
        assert_eq!(cms::unwrap(&bad, &key).unwrap_err(), CmsError::Decrypt, "byte {at}");
    }
}

#[test]
fn truncated_and_mutated_blobs_never_panic() {
    let (blob, key) = edgebit();
    for len in 0..blob.len() {
        let err = cms::unwrap(&blob[..len], &key).unwrap_err();
        if len == 0 {
            assert_eq!(err, CmsError::Size(0));
        }
    }
    let mut refused = 0;
    for i in 0..blob.len() {
        for x in [0x01u8, 0xff] {
            let mut bad = blob.clone();
            bad[i] ^= x;
            // Refused, or opened: never a panic. CBC is malleable (a flipped IV bit flips the same plaintext
            // bit), which is why the blob's integrity comes from the TLS session with KMS, not from CMS.
            match cms::unwrap(&bad, &key) {
                Err(_) => refused += 1,
                Ok(plain) => assert_eq!(plain.len(), 12, "byte {i} ^ {x:#x}"),
            }
        }
    }
    assert!(refused > blob.len(), "most mutations must be refused ({refused})");
}

#[test]
fn oversized_and_foreign_structures_are_named() {
    let (_, key) = edgebit();
    let big = vec![0x30u8; cms::MAX_BLOB_BYTES + 1];
    assert_eq!(cms::unwrap(&big, &key).unwrap_err(), CmsError::Size(cms::MAX_BLOB_BYTES + 1));
    assert!(matches!(cms::parse(b"not asn.1 at all").unwrap_err(), CmsError::Malformed(_)));
    // A ContentInfo of type `data` (1.2.840.113549.1.7.1), not EnvelopedData.
    let data_ci = [
        0x30, 0x11, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01, 0xa0, 0x04, 0x04, 0x02, 0x68,
        0x69,
    ];
    let err = cms::parse(&data_ci).unwrap_err();
    assert!(matches!(err, CmsError::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("EnvelopedData"), "{err}");
}

#[test]
fn recipient_key_debug_shows_no_private_material() {
    let (_, key) = edgebit();
    let shown = format!("{key:?}");
    assert!(shown.starts_with("RecipientKey"), "{shown}");
    assert!(!shown.contains("BoxedUint") && shown.len() < 80, "{shown}");
}

//! `CiphertextForRecipient`: the mock's blobs and real KMS blobs open with the same, independent code.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

#[test]
fn real_kms_vector_decrypts_with_the_test_unwrapper() {
    let ber = std::fs::read(format!("{VECTORS}/edgebitio-enclaver-cms/ciphertext_for_recipient.ber")).unwrap();
    let expected = std::fs::read(format!("{VECTORS}/edgebitio-enclaver-cms/expected_plaintext.txt")).unwrap();
    assert_eq!(unwrap_cms(&ber, &recipient_key()), expected);
    assert_eq!(expected, b"Hello, World");
}

#[test]
fn mock_blobs_decrypt_with_the_same_unwrapper_at_every_size() {
    let key = recipient_key();
    let spki = spki_der(&key);
    // Sizes around the AES block and KMS's 1000-byte chunks, up to GenerateRandom's 1024 and Encrypt's 4096.
    for len in [1usize, 15, 16, 32, 999, 1000, 1024, 4096] {
        let plaintext: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let ber = veil_mock_kms::cms::ciphertext_for_recipient(&spki, &plaintext).unwrap();
        assert_eq!(unwrap_cms(&ber, &key), plaintext, "len {len}");
    }
}

#[test]
fn each_blob_uses_a_fresh_content_key_and_iv() {
    let spki = spki_der(&recipient_key());
    let a = veil_mock_kms::cms::ciphertext_for_recipient(&spki, b"same").unwrap();
    let b = veil_mock_kms::cms::ciphertext_for_recipient(&spki, b"same").unwrap();
    assert_eq!(a.len(), b.len());
    assert_ne!(a, b);
}

#[test]
fn aws_sdk_c_vectors_parse_with_the_same_parser() {
    use cms::content_info::ContentInfo;
    use cms::der::{Decode, Encode, asn1::OctetString};
    use cms::enveloped_data::{EnvelopedData, RecipientInfo};
    let dir = format!("{VECTORS}/aws-nitro-enclaves-sdk-c-cms");
    for suffix in ["", "_w_ctx"] {
        let read = |name: &str| std::fs::read(format!("{dir}/{name}{suffix}.bin")).unwrap();
        let ci = ContentInfo::from_ber(&read("input_ber")).unwrap();
        let ed = EnvelopedData::from_ber(&ci.content.to_der().unwrap()).unwrap();
        let Some(RecipientInfo::Ktri(ktri)) = ed.recip_infos.0.get(0) else { panic!("ktri") };
        assert_eq!(ktri.enc_key.as_bytes(), read("encrypted_key_out"));
        let iv: OctetString = ed.encrypted_content.content_enc_alg.parameters.as_ref().unwrap().decode_as().unwrap();
        assert_eq!(iv.as_bytes(), read("iv_out"));
        assert_eq!(ed.encrypted_content.encrypted_content.as_ref().unwrap().as_bytes(), read("ciphertext_out"));
    }
}

/// The enclave's own unwrap (the code that opens real KMS answers in production) opens the mock's blobs.
#[test]
fn the_enclave_unwraps_mock_blobs() {
    let der = std::fs::read(format!("{VECTORS}/edgebitio-enclaver-cms/recipient_private_key.pkcs8.der")).unwrap();
    let enclave_key = veil_enclave::kms::RecipientKey::from_pkcs8_der(&der).unwrap();
    let data_key = [0x5au8; 32];
    let ber = veil_mock_kms::cms::ciphertext_for_recipient(enclave_key.public_key_spki_der(), &data_key).unwrap();
    assert_eq!(veil_enclave::kms::cms::unwrap(&ber, &enclave_key).unwrap().as_slice(), &data_key);
}

//! What a hostile *client* can make the enclave decrypt: a client holds its data key, so it can seal any
//! plaintext at all, not only what `Sealer` writes. The input is that plaintext; the target seals it
//! unpadded and unchecked, following the construction `envelope.rs` documents (with ring, not the crate),
//! and the enclave's side parses and opens it. Never panics; what opens is exactly one valid padded form
//! (`pad::unpad` accepts it and the body is the one unpad finds), and a valid padded form with an empty
//! request meta always opens.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};
use veil_fuzz::{DATA_KEY, ENCRYPTED_DATA_KEY, ISSUED_AT, KEY_ID, MODEL_NAME, MODEL_SHA384, data_key, model};
use veil_protocol::cbor::{write_bytes, write_head, write_text};
use veil_protocol::envelope::{EnvelopeError, open_request_in_place, parse_request};
use veil_protocol::pad;

const REQUEST_ID: [u8; 16] = [0x5a; 16];
const NONCE: [u8; 12] = [0xa5; 12];

/// The sealed request for `plaintext`, built from the documented construction.
fn seal_raw(plaintext: &[u8]) -> Vec<u8> {
    let prk = Salt::new(HKDF_SHA256, b"veil/v2 envelope").extract(&DATA_KEY);
    let okm = prk.expand(&[b"veil/v2 request", &REQUEST_ID], &AES_256_GCM).expect("32 bytes");
    let key = LessSafeKey::new(UnboundKey::from(okm));
    let mut aad = b"veil/v2\x01".to_vec();
    aad.extend_from_slice(&(MODEL_NAME.len() as u16).to_be_bytes());
    aad.extend_from_slice(MODEL_NAME.as_bytes());
    aad.extend_from_slice(&MODEL_SHA384);
    aad.extend_from_slice(&REQUEST_ID);
    aad.extend_from_slice(&(KEY_ID.len() as u16).to_be_bytes());
    aad.extend_from_slice(KEY_ID.as_bytes());
    aad.extend_from_slice(&ISSUED_AT.to_be_bytes());
    let mut ct = plaintext.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(NONCE), Aad::from(aad), &mut ct).expect("seals");

    let mut out = Vec::new();
    write_head(&mut out, 5, 9);
    write_text(&mut out, "v");
    write_head(&mut out, 0, 2);
    write_text(&mut out, "key_id");
    write_text(&mut out, KEY_ID);
    write_text(&mut out, "encrypted_data_key");
    write_bytes(&mut out, ENCRYPTED_DATA_KEY);
    write_text(&mut out, "encryption_context");
    write_head(&mut out, 5, 0);
    write_text(&mut out, "model_sha384");
    write_bytes(&mut out, &MODEL_SHA384);
    write_text(&mut out, "request_id");
    write_bytes(&mut out, &REQUEST_ID);
    write_text(&mut out, "issued_at");
    write_head(&mut out, 0, ISSUED_AT);
    write_text(&mut out, "nonce");
    write_bytes(&mut out, &NONCE);
    write_text(&mut out, "ciphertext");
    write_bytes(&mut out, &ct);
    out
}

fuzz_target!(|data: &[u8]| {
    let mut wire = seal_raw(data);
    let parsed = parse_request(&wire).expect("a well-formed request parses");
    let opened = open_request_in_place(&data_key(), &model(), &parsed, &mut wire);
    let unpadded = pad::unpad(data);
    match (&opened, &unpadded) {
        (Ok(o), Ok((body, _))) => assert_eq!(&&wire[o.body.clone()], body),
        (Ok(_), Err(e)) => panic!("a plaintext that does not unpad opened ({e})"),
        (Err(EnvelopeError::Decrypt), _) => panic!("a correctly sealed request did not authenticate"),
        (Err(e), Ok((_, meta))) if *meta == [0xa0] => panic!("a valid padded form with an empty meta was refused: {e}"),
        (Err(_), _) => {}
    }
});

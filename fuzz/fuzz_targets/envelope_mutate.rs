//! A real sealed request (fixed data key), mutated by the fuzzer's edits (see `veil_fuzz::apply_edits`),
//! then parsed and opened as the enclave would. Never panics, and never opens a message whose
//! authenticated parts changed: if a mutant opens, its plaintext and every field bound into the associated
//! data are the original's. What may differ is what the envelope does not authenticate on purpose: the
//! encrypted data key and the encryption context (KMS binds those to the data key it releases), the clear
//! `model_sha384` (a hint: the associated data binds the digest of the model the *enclave* loaded, which
//! the enclave compares with the hint before opening), and the CBOR spelling of equal values. An enclave
//! holding another model digest, or serving the model under another name, opens nothing.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use veil_fuzz::{apply_edits, data_key, model, seal_request};
use veil_protocol::envelope::{
    EnvelopeError, ModelRef, ParsedRequest, RequestMeta, open_request_in_place, parse_request,
};

struct Fixture {
    wire: Vec<u8>,
    parsed: ParsedRequest,
    body: Vec<u8>,
    meta: RequestMeta,
}

fn fixtures() -> &'static [Fixture] {
    static F: OnceLock<Vec<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let key = data_key();
        let cases: [(Vec<u8>, RequestMeta); 4] = [
            (
                br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1.5]}]}"#.to_vec(),
                RequestMeta::default(),
            ),
            (Vec::new(), RequestMeta::default()),
            (vec![b'7'; 1500], RequestMeta { inference_header_length: Some(12) }),
            (b"binary\x00tensor".to_vec(), RequestMeta { inference_header_length: Some(u64::MAX) }),
        ];
        cases
            .into_iter()
            .zip(1..)
            .map(|((body, meta), seed)| {
                let (wire, _) = seal_request(&key, &body, meta, seed);
                let parsed = parse_request(&wire).expect("the fixture parses");
                Fixture { wire, parsed, body, meta }
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, edits)) = data.split_first() else { return };
    let f = &fixtures()[usize::from(which) % fixtures().len()];
    let mut wire = f.wire.clone();
    apply_edits(&mut wire, edits);
    let Ok(parsed) = parse_request(&wire) else { return };
    let key = data_key();

    let mut other = model();
    other.sha384[usize::from(which) % 48] ^= 1;
    let renamed = ModelRef { name: format!("{}x", model().name), sha384: model().sha384 };
    for wrong in [other, renamed] {
        let err = open_request_in_place(&key, &wrong, &parsed, &mut wire.clone()).expect_err("another model opened");
        assert!(matches!(err, EnvelopeError::Decrypt), "{err}");
    }

    let mut buf = wire.clone();
    match open_request_in_place(&key, &model(), &parsed, &mut buf) {
        Ok(opened) => {
            let (a, b) = (&parsed.header, &f.parsed.header);
            assert_eq!(
                (&a.key_id, a.request_id, a.issued_at, a.nonce),
                (&b.key_id, b.request_id, b.issued_at, b.nonce),
                "a mutant with other authenticated fields opened"
            );
            assert_eq!(&buf[opened.body], &f.body[..], "a mutant opened to another body");
            assert_eq!(opened.meta, f.meta);
            assert_eq!(wire[parsed.ciphertext.clone()], f.wire[f.parsed.ciphertext.clone()]);
        }
        Err(e) => assert!(wire != f.wire, "the unmutated fixture did not open: {e}"),
    }
});

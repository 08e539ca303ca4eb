//! The client's side of the KMS envelope v2: `Sealer::open_answer` on what comes back through the
//! untrusted parent. Mode 0 (first byte even): the rest of the input is the answer, opened with the
//! fixture key and request tag. Mode 1: a real sealed answer, mutated by the fuzzer's edits. Never
//! panics, and nothing opens but a fixture answer: every byte of an answer is authenticated, so whatever
//! opens has a fixture's body and meta.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use veil_fuzz::{ENCRYPTED_DATA_KEY, KEY_ID, apply_edits, context, data_key, sealed_answer};
use veil_protocol::envelope::{AnswerMeta, DataKey, RequestTag, Sealer};

struct Fixture {
    wire: Vec<u8>,
    body: Vec<u8>,
    meta: AnswerMeta,
}

struct Fixtures {
    key: DataKey,
    tag: RequestTag,
    answers: Vec<Fixture>,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let key = data_key();
        let mut tag = None;
        let ctx = context();
        let answers = [(&b"{\"outputs\":[]}"[..], None), (&b""[..], Some(0)), (&[b'a'; 1200][..], Some(7))]
            .into_iter()
            .zip(1..)
            .map(|((body, ihl), seed)| {
                let (wire, t) = sealed_answer(&key, body, ihl, seed);
                let sealer = Sealer {
                    key: &key,
                    key_id: KEY_ID,
                    encrypted_data_key: ENCRYPTED_DATA_KEY,
                    encryption_context: &ctx,
                };
                let meta = sealer.open_answer(&t, &mut wire.clone()).expect("the fixture opens").meta;
                tag = Some(t);
                Fixture { wire, body: body.to_vec(), meta }
            })
            .collect();
        Fixtures { key, tag: tag.expect("fixtures"), answers }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let f = fixtures();
    let mut wire = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let Some((&which, edits)) = rest.split_first() else { return };
        let mut w = f.answers[usize::from(which) % f.answers.len()].wire.clone();
        apply_edits(&mut w, edits);
        w
    };
    let ctx = context();
    let sealer =
        Sealer { key: &f.key, key_id: KEY_ID, encrypted_data_key: ENCRYPTED_DATA_KEY, encryption_context: &ctx };
    if let Ok(opened) = sealer.open_answer(&f.tag, &mut wire) {
        assert!(
            f.answers.iter().any(|a| a.body == opened.body && a.meta == opened.meta),
            "an answer that is no fixture's opened"
        );
    }
});

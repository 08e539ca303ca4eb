//! Fixtures shared by the fuzz targets and by the corpus generator (`examples/make_corpus.rs`): one fixed
//! data key, key id, encryption context and model, a deterministic random source, and the real sealed
//! messages built from them. Targets and seeds agree on these, so a seed that is a real sealed request is
//! one the target's key opens, and the fuzzer starts from messages that get past every parsing step.
//!
//! Nothing here is secret or random: a crash must reproduce from its artifact alone.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use veil_protocol::envelope::{
    AnswerBody, DataKey, ModelRef, ParsedRequest, RequestMeta, RequestTag, Sealer, open_request_in_place, parse_request,
};
use veil_protocol::model_file::ModelSealer;
use veil_protocol::random::{RandomError, RandomSource};

/// The data key every envelope target seals and opens with.
pub const DATA_KEY: [u8; 32] = [0x42; 32];
/// The KMS key id of the fixtures.
pub const KEY_ID: &str = "arn:aws:kms:eu-west-1:111122223333:key/fuzz";
/// A stand-in for KMS's encrypted data key blob (opaque to Veil).
pub const ENCRYPTED_DATA_KEY: &[u8] = b"kms-ciphertext-blob-stand-in";
/// Issue time of the fixture requests (Unix seconds).
pub const ISSUED_AT: u64 = 1_750_000_000;
/// The model the fixtures are sealed for.
pub const MODEL_NAME: &str = "iris";
/// The SHA-384 the fixtures expect the model to have.
pub const MODEL_SHA384: [u8; 48] = [0x33; 48];
/// Plaintext bytes per chunk of the fixture model file (small, so a short file has several chunks).
pub const MODEL_CHUNK: u32 = 32;

/// The model of the fixtures.
pub fn model() -> ModelRef {
    ModelRef { name: MODEL_NAME.to_owned(), sha384: MODEL_SHA384 }
}

/// The encryption context of the fixtures.
pub fn context() -> BTreeMap<String, String> {
    BTreeMap::from([("tenant".to_owned(), "hospital-a".to_owned()), ("purpose".to_owned(), "fuzz".to_owned())])
}

/// A deterministic "random" source: a counter run through SplitMix64. Never use it outside tests.
#[derive(Debug)]
pub struct CountingRandom(AtomicU64);

impl CountingRandom {
    pub fn new(seed: u64) -> Self {
        CountingRandom(AtomicU64::new(seed))
    }
}

impl RandomSource for CountingRandom {
    fn fill(&self, out: &mut [u8]) -> Result<(), RandomError> {
        for chunk in out.chunks_mut(8) {
            let mut z = self.0.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
        Ok(())
    }
}

/// The fixed data key.
pub fn data_key() -> DataKey {
    DataKey::new(&DATA_KEY).expect("a 32-byte key")
}

/// Seals `body` (with `meta`) as the fixtures' client would, deterministically: `seed` picks the request id
/// and nonce. Give each fixture its own seed (0 is [`sealed_answer`]'s), so that no two fixtures share a
/// nonce under one key, as no real client would.
pub fn seal_request(key: &DataKey, body: &[u8], meta: RequestMeta, seed: u64) -> (Vec<u8>, RequestTag) {
    let ctx = context();
    let sealer = Sealer { key, key_id: KEY_ID, encrypted_data_key: ENCRYPTED_DATA_KEY, encryption_context: &ctx };
    sealer.seal_request(&model(), body, meta, ISSUED_AT, &CountingRandom::new(seed << 32)).expect("the fixture seals")
}

/// Opens the one request all answer fixtures answer (sealed with seed 0) and seals `answer` back, its nonce
/// from `seed`: the answer's wire bytes and the tag that opens them (the same tag for every seed).
pub fn sealed_answer(
    key: &DataKey,
    answer: &[u8],
    inference_header_length: Option<u64>,
    seed: u64,
) -> (Vec<u8>, RequestTag) {
    let (mut wire, tag) = seal_request(key, b"{\"inputs\":[]}", RequestMeta::default(), 0);
    let parsed = parse_request(&wire).expect("the fixture parses");
    let opened = open_request_in_place(key, &model(), &parsed, &mut wire).expect("the fixture opens");
    let mut body = AnswerBody::with_capacity(answer.len());
    body.writer().extend_from_slice(answer);
    let sealed = opened
        .answer
        .seal_answer(body, inference_header_length, &CountingRandom::new(!seed))
        .expect("the fixture seals");
    (sealed.bytes().to_vec(), tag)
}

/// A whole encrypted model file (VEILMDL2) of `plaintext`, in [`MODEL_CHUNK`]-byte chunks.
pub fn model_file(plaintext: &[u8]) -> Vec<u8> {
    let (mut sealer, mut out) = ModelSealer::new(
        &DATA_KEY,
        MODEL_NAME,
        KEY_ID,
        ENCRYPTED_DATA_KEY,
        context(),
        plaintext.len() as u64,
        MODEL_CHUNK,
        &CountingRandom::new(3),
    )
    .expect("the fixture header is valid");
    let mut chunks: Vec<&[u8]> = plaintext.chunks(MODEL_CHUNK as usize).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    for c in chunks {
        out.extend_from_slice(&sealer.seal_chunk(c).expect("the fixture chunk seals"));
    }
    out
}

/// The plaintext of the fixture model file: 100 bytes, so four chunks, the last one short.
pub fn model_plaintext() -> Vec<u8> {
    (0..100u8).map(|i| i.wrapping_mul(37)).collect()
}

/// Applies the fuzzer's `edits` to `buf`. Each edit is four bytes: an operation, a big-endian position
/// (modulo the buffer's length, plus one for inserts) and a value. Operations: 0 XOR a byte with the value
/// (a zero value is made 1, so the byte always changes), 1 insert the value, 2 delete a byte, 3 truncate,
/// 4 overwrite a byte. A trailing partial edit is ignored.
pub fn apply_edits(buf: &mut Vec<u8>, edits: &[u8]) {
    for e in edits.chunks_exact(4) {
        let pos = usize::from(u16::from_be_bytes([e[1], e[2]]));
        let value = e[3];
        match e[0] % 5 {
            0 if !buf.is_empty() => {
                let i = pos % buf.len();
                buf[i] ^= value.max(1);
            }
            1 => {
                let i = pos % (buf.len() + 1);
                buf.insert(i, value);
            }
            2 if !buf.is_empty() => {
                let i = pos % buf.len();
                buf.remove(i);
            }
            3 => {
                let i = pos % (buf.len() + 1);
                buf.truncate(i);
            }
            4 if !buf.is_empty() => {
                let i = pos % buf.len();
                buf[i] = value;
            }
            _ => {}
        }
    }
}

/// Re-encodes a parsed request canonically (shortest heads, the documented key order), with the
/// ciphertext taken from `wire`. A request Veil seals is its own canonical encoding.
pub fn encode_request(parsed: &ParsedRequest, wire: &[u8]) -> Vec<u8> {
    use veil_protocol::cbor::{write_bytes, write_head, write_text};
    let h = &parsed.header;
    let mut out = Vec::new();
    write_head(&mut out, 5, 9);
    write_text(&mut out, "v");
    write_head(&mut out, 0, veil_protocol::envelope::ENVELOPE_VERSION);
    write_text(&mut out, "key_id");
    write_text(&mut out, &h.key_id);
    write_text(&mut out, "encrypted_data_key");
    write_bytes(&mut out, &h.encrypted_data_key);
    write_text(&mut out, "encryption_context");
    write_head(&mut out, 5, h.encryption_context.len() as u64);
    for (k, v) in &h.encryption_context {
        write_text(&mut out, k);
        write_text(&mut out, v);
    }
    write_text(&mut out, "model_sha384");
    write_bytes(&mut out, &h.model_sha384);
    write_text(&mut out, "request_id");
    write_bytes(&mut out, &h.request_id);
    write_text(&mut out, "issued_at");
    write_head(&mut out, 0, h.issued_at);
    write_text(&mut out, "nonce");
    write_bytes(&mut out, &h.nonce);
    write_text(&mut out, "ciphertext");
    write_bytes(&mut out, &wire[parsed.ciphertext.clone()]);
    out
}

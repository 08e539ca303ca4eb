//! Fixtures shared by the fuzz targets and by the corpus generator (`examples/make_corpus.rs`): one fixed
//! data key, key id, encryption context and model, a deterministic random source, and the real sealed
//! messages built from them; for attested-key mode, fixed OHTTP gateway keys (RFC 9458's example key and
//! two Veil-style fleet keys) and real encapsulated requests and responses. Targets and seeds agree on these, so a seed that is a real sealed request is
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
use veil_protocol::ohttp::{
    self, AEAD_AES_128_GCM, AEAD_AES_256_GCM, AEAD_CHACHA20_POLY1305, Gateway, GatewayKey, KeyConfig, ResponseContext,
    Suite, bhttp,
};
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
        .seal_answer(body, inference_header_length, None, &CountingRandom::new(!seed))
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

/// RFC 9458 Appendix A, transcribed from `protocol/tests/vectors/rfc9458-appendix-a.json` (the corpus
/// generator checks that the two agree): the gateway's key, its configuration, and the worked request and
/// response, in hex.
pub mod rfc9458 {
    use veil_protocol::ohttp::{AEAD_AES_128_GCM, AEAD_CHACHA20_POLY1305};

    pub const KEY_ID: u8 = 1;
    /// The AEADs the example's key configuration lists, in its order.
    pub const AEADS: [u16; 2] = [AEAD_AES_128_GCM, AEAD_CHACHA20_POLY1305];
    pub const SK_R: &str = "3c168975674b2fa8e465970b79c8dcf09f1c741626480bd4c6162fc5b6a98e1a";
    pub const KEY_CONFIG: &str =
        "01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e79815500080001000100010003";
    pub const REQUEST: &str = "00034745540568747470730b6578616d706c652e636f6d012f";
    pub const ENCAPSULATED_REQUEST: &str = "010020000100014b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad19dec96c2\
        08b4726374e469135906992e1268c594d2a10c695d858c40a026e7965e7d86b83dd440b2c0185204b4d63525";
    pub const RESPONSE: &str = "0140c8";
    pub const RESPONSE_NONCE: &str = "c789e7151fcba46158ca84b04464910d";
    pub const ENCAPSULATED_RESPONSE: &str = "c789e7151fcba46158ca84b04464910d86f9013e404feea014e7be4a441f234f857fbd";
}

/// Decodes the fixtures' hex (panics on a typo: fixtures only).
pub fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit")).collect()
}

/// Veil-style fleet keys (key id, X25519 private key), each offering `ohttp::GATEWAY_AEADS`: two, as a
/// gateway serves while rotating, so that a request for one key relabelled with the other's id is tried.
pub const OHTTP_KEYS: [(u8, [u8; 32]); 2] = [(7, [0x51; 32]), (8, [0x52; 32])];

/// The gateways of the OHTTP targets: 0 is RFC 9458's (its example key, AES-128-GCM and
/// ChaCha20-Poly1305), 1 is Veil's (the two [`OHTTP_KEYS`], AES-256-GCM and ChaCha20-Poly1305).
pub fn ohttp_gateways() -> [Gateway; 2] {
    let rfc = GatewayKey::from_secret(rfc9458::KEY_ID, &rfc9458::AEADS, &unhex(rfc9458::SK_R)).expect("RFC key");
    let veil = OHTTP_KEYS
        .iter()
        .map(|(id, sk)| GatewayKey::from_secret(*id, &ohttp::GATEWAY_AEADS, sk).expect("fixture key"))
        .collect();
    [Gateway::new(vec![rfc]).expect("one key"), Gateway::new(veil).expect("distinct key ids")]
}

/// One real exchange with a gateway of [`ohttp_gateways`]: the Binary HTTP request, as encapsulated, the
/// context that opens its response (the client's), and the response the gateway sealed for it.
pub struct OhttpExchange {
    /// Index into [`ohttp_gateways`].
    pub gateway: usize,
    pub key_id: u8,
    pub aead: u16,
    /// The Binary HTTP request.
    pub request: Vec<u8>,
    pub encapsulated_request: Vec<u8>,
    /// The client's context (for the RFC's own request, whose ephemeral key `encapsulate` cannot
    /// reproduce, a second decapsulation's: client and gateway derive the same key from the same secret).
    pub client: ResponseContext,
    /// The gateway's context, from decapsulating the request.
    pub gateway_context: ResponseContext,
    /// The Binary HTTP response.
    pub response: Vec<u8>,
    pub encapsulated_response: Vec<u8>,
}

/// The header fields of a Veil client's inference request (`client/src/oblivious.rs`).
fn veil_request(path: &str, body: &[u8]) -> Vec<u8> {
    let date = veil_protocol::time::format_http_date(ISSUED_AT).expect("a date");
    let digest: String = MODEL_SHA384.iter().map(|b| format!("{b:02x}")).collect();
    let mut headers: Vec<(&str, &[u8])> = vec![("date", date.as_bytes())];
    if !body.is_empty() {
        headers.push(("content-type", b"application/json"));
    }
    headers.push(("veil-model-sha384", digest.as_bytes()));
    bhttp::encode_request(if body.is_empty() { "GET" } else { "POST" }, "https", "veil", path, &headers, body, true)
}

/// A response as the enclave writes it (`enclave/src/ohttp.rs`), `room` bytes of nonce first.
fn veil_response(room: usize, status: u16, content: &[u8]) -> Vec<u8> {
    let digest: String = MODEL_SHA384.iter().map(|b| format!("{b:02x}")).collect();
    let headers: [(&str, &[u8]); 2] = [("content-type", b"application/json"), ("veil-model-sha384", digest.as_bytes())];
    let mut w = bhttp::ResponseWriter::new(room, status, &headers, content.len());
    w.content().extend_from_slice(content);
    w.finish().expect("a small response")
}

/// The real exchanges of the OHTTP targets: RFC 9458's own (byte for byte), then requests a Veil client
/// encapsulates (deterministically, each with its own seed) to both gateways, with every AEAD each offers,
/// and the responses the gateway seals back. Checks each as it builds it.
pub fn ohttp_exchanges() -> Vec<OhttpExchange> {
    let gateways = ohttp_gateways();
    let mut out = Vec::new();

    // RFC 9458 Appendix A: the gateway's context, with the RFC's response nonce.
    let (request, server) = gateways[0].decapsulate(&unhex(rfc9458::ENCAPSULATED_REQUEST)).expect("the RFC request");
    assert_eq!(*request, unhex(rfc9458::REQUEST));
    let (_, client) = gateways[0].decapsulate(&unhex(rfc9458::ENCAPSULATED_REQUEST)).expect("the RFC request");
    let mut sealed = unhex(rfc9458::RESPONSE_NONCE);
    sealed.extend_from_slice(&unhex(rfc9458::RESPONSE));
    server.seal_with_nonce_in_place(&mut sealed).expect("seals");
    assert_eq!(sealed, unhex(rfc9458::ENCAPSULATED_RESPONSE), "the RFC's response");
    out.push(OhttpExchange {
        gateway: 0,
        key_id: rfc9458::KEY_ID,
        aead: AEAD_AES_128_GCM,
        request: request.to_vec(),
        encapsulated_request: unhex(rfc9458::ENCAPSULATED_REQUEST),
        client,
        gateway_context: server,
        response: unhex(rfc9458::RESPONSE),
        encapsulated_response: sealed,
    });

    let infer = br#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#;
    let large =
        format!(r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"BYTES","data":["{}"]}}]}}"#, "7".repeat(3000));
    let cases: [(usize, u8, u16, Vec<u8>); 6] = [
        (0, rfc9458::KEY_ID, AEAD_AES_128_GCM, veil_request("/v2/health/ready", b"")),
        (0, rfc9458::KEY_ID, AEAD_CHACHA20_POLY1305, veil_request("/v2/models/iris/infer", infer)),
        (1, OHTTP_KEYS[0].0, AEAD_AES_256_GCM, veil_request("/v2/models/iris/infer", infer)),
        (1, OHTTP_KEYS[0].0, AEAD_CHACHA20_POLY1305, veil_request("/v2/models/iris", b"")),
        (1, OHTTP_KEYS[1].0, AEAD_AES_256_GCM, Vec::new()),
        (1, OHTTP_KEYS[1].0, AEAD_AES_256_GCM, veil_request("/v2/models/iris/infer", large.as_bytes())),
    ];
    for ((gateway, key_id, aead, request), seed) in cases.into_iter().zip(1u64..) {
        let list = KeyConfig::decode_list(gateways[gateway].key_list()).expect("the gateway's list");
        let mut config = list.into_iter().find(|c| c.key_id == key_id).expect("the key");
        // A client uses the first suite listed that it supports: list only the one wanted.
        config.suites = vec![Suite { kdf: ohttp::KDF_HKDF_SHA256, aead }];
        let rng = CountingRandom::new(0x0417_0000_0000_0000 | seed << 32);
        let (encapsulated_request, client) = ohttp::encapsulate(&config, &request, &rng).expect("encapsulates");
        let (opened, server) = gateways[gateway].decapsulate(&encapsulated_request).expect("decapsulates");
        assert_eq!(*opened, request);
        assert_eq!((server.enc(), server.aead()), (client.enc(), aead));
        let outputs = format!(
            r#"{{"model_name":"iris","outputs":[{{"name":"y","shape":[1],"datatype":"INT64","data":[{seed}]}}]}}"#
        );
        let mut sealed = veil_response(server.nonce_len(), if seed == 4 { 404 } else { 200 }, outputs.as_bytes());
        let response = sealed[server.nonce_len()..].to_vec();
        server.seal_in_place(&mut sealed, &CountingRandom::new(!(0x0417_0000_0000_0000 | seed << 32))).expect("seals");
        assert_eq!(client.open_in_place(&mut sealed.clone()).expect("opens"), &response[..]);
        out.push(OhttpExchange {
            gateway,
            key_id,
            aead,
            request,
            encapsulated_request,
            client,
            gateway_context: server,
            response,
            encapsulated_response: sealed,
        });
    }
    out
}

//! Veil's OHTTP layer against RFC 9458's worked example (Appendix A), and its Binary HTTP reader and writer
//! against the `bhttp` crate, an independent implementation of RFC 9292.
#![allow(clippy::unwrap_used)]
use veil_protocol::ohttp::{self, Gateway, GatewayKey, KeyConfig, OhttpError, bhttp};
use veil_protocol::random::{RandomError, RandomSource, SystemRandom};

fn vector() -> serde_json::Value {
    serde_json::from_str(include_str!("vectors/rfc9458-appendix-a.json")).unwrap()
}

fn hex(v: &serde_json::Value, key: &str) -> Vec<u8> {
    hex::decode(v[key].as_str().unwrap()).unwrap()
}

/// The RFC's gateway: its key, with the two AEADs its configuration lists.
fn rfc_gateway(v: &serde_json::Value) -> Gateway {
    let key =
        GatewayKey::from_secret(1, &[ohttp::AEAD_AES_128_GCM, ohttp::AEAD_CHACHA20_POLY1305], &hex(v, "skR")).unwrap();
    Gateway::new(vec![key]).unwrap()
}

#[test]
fn rfc9458_key_config_is_reproduced_and_parsed() {
    let v = vector();
    let gateway = rfc_gateway(&v);
    let config = hex(&v, "key_config");
    assert_eq!(&gateway.key_list()[2..], config.as_slice());
    assert_eq!(&gateway.key_list()[..2], &(config.len() as u16).to_be_bytes());
    let parsed = KeyConfig::decode(&config).unwrap().unwrap();
    assert_eq!(parsed.key_id, 1);
    assert_eq!(parsed.public_key.to_vec(), hex(&v, "pkR"));
    // A client takes the first suite it supports: AES-128-GCM here.
    assert_eq!(parsed.preferred_suite().unwrap().aead, ohttp::AEAD_AES_128_GCM);
}

#[test]
fn rfc9458_request_is_decapsulated_and_response_reproduced_byte_for_byte() {
    let v = vector();
    let gateway = rfc_gateway(&v);
    let (request, context) = gateway.decapsulate(&hex(&v, "encapsulated_request")).unwrap();
    assert_eq!(request.as_slice(), hex(&v, "request").as_slice());
    assert_eq!(context.enc().to_vec(), hex(&v, "pkE"));
    // The gateway's sealing, with the RFC's response nonce in place of a random one.
    let mut buf = hex(&v, "response_nonce");
    assert_eq!(buf.len(), context.nonce_len());
    buf.extend_from_slice(&hex(&v, "response"));
    context.seal_with_nonce_in_place(&mut buf).unwrap();
    assert_eq!(buf, hex(&v, "encapsulated_response"));
    // And the client's opening of the RFC's response (the same context, as the client derives it).
    let mut enc_response = hex(&v, "encapsulated_response");
    assert_eq!(context.open_in_place(&mut enc_response).unwrap(), hex(&v, "response").as_slice());
    // The inner messages are what the RFC says they are.
    let parsed = bhttp::parse_request(&request).unwrap();
    assert_eq!((parsed.method, parsed.authority, parsed.path), ("GET", &b"example.com"[..], "/"));
    assert_eq!(bhttp::parse_response(&hex(&v, "response")).unwrap().status, 200);
}

#[test]
fn rfc9458_gateway_refuses_altered_requests_with_named_errors() {
    let v = vector();
    let gateway = rfc_gateway(&v);
    let good = hex(&v, "encapsulated_request");
    let mut key_id = good.clone();
    key_id[0] = 2;
    assert_eq!(gateway.decapsulate(&key_id).err(), Some(OhttpError::UnknownKeyId(2)));
    let mut aead = good.clone();
    aead[6] = 2; // AES-256-GCM: not in the RFC key's configuration
    assert!(matches!(gateway.decapsulate(&aead), Err(OhttpError::Unsupported { aead: 2, .. })));
    for i in [7, 40, good.len() - 1] {
        let mut bit = good.clone();
        bit[i] ^= 0x80;
        assert_eq!(gateway.decapsulate(&bit).err(), Some(OhttpError::RequestDecrypt), "byte {i}");
    }
    assert!(matches!(gateway.decapsulate(&good[..good.len() - 17]), Err(OhttpError::RequestDecrypt)));
    assert!(matches!(gateway.decapsulate(&good[..50]), Err(OhttpError::Truncated { .. })));
}

#[test]
fn veil_client_requests_to_the_rfc_key_are_opened_by_the_rfc_gateway() {
    let v = vector();
    let gateway = rfc_gateway(&v);
    let config = KeyConfig::decode(&hex(&v, "key_config")).unwrap().unwrap();
    let (enc_request, client) = ohttp::encapsulate(&config, &hex(&v, "request"), &SystemRandom::new()).unwrap();
    assert_eq!(
        &enc_request[..7],
        &hex(&v, "encapsulated_request")[..7],
        "same header: key 1, X25519, SHA-256, AES-128"
    );
    assert_eq!(enc_request.len(), hex(&v, "encapsulated_request").len());
    let (request, server) = gateway.decapsulate(&enc_request).unwrap();
    assert_eq!(request.as_slice(), hex(&v, "request").as_slice());
    let mut buf = vec![0u8; server.nonce_len()];
    buf.extend_from_slice(&hex(&v, "response"));
    server.seal_in_place(&mut buf, &SystemRandom::new()).unwrap();
    assert_eq!(client.open_in_place(&mut buf).unwrap(), hex(&v, "response").as_slice());
}

struct Failing;
impl RandomSource for Failing {
    fn fill(&self, _: &mut [u8]) -> Result<(), RandomError> {
        Err(RandomError)
    }
}

#[test]
fn a_failing_random_source_is_an_error_not_a_weak_key() {
    let v = vector();
    let config = KeyConfig::decode(&hex(&v, "key_config")).unwrap().unwrap();
    assert_eq!(ohttp::encapsulate(&config, b"x", &Failing).err(), Some(OhttpError::Random));
    assert_eq!(GatewayKey::generate(1, &ohttp::GATEWAY_AEADS, &Failing).err(), Some(OhttpError::Random));
}

#[test]
fn veil_requests_read_by_the_bhttp_crate_and_its_requests_read_by_veil() {
    let body = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1.5]}]}"#;
    for pad in [false, true] {
        let ours = bhttp::encode_request(
            "POST",
            "https",
            "veil.example",
            "/v2/models/iris/infer",
            &[("content-type", b"application/json"), ("veil-model-sha384", b"ab")],
            body,
            pad,
        );
        let theirs = ::bhttp::Message::read_bhttp(&mut std::io::Cursor::new(&ours[..])).unwrap();
        assert_eq!(theirs.control().method(), Some(&b"POST"[..]));
        assert_eq!(theirs.control().path(), Some(&b"/v2/models/iris/infer"[..]));
        assert_eq!(theirs.header().get(b"veil-model-sha384"), Some(&b"ab"[..]));
        assert_eq!(theirs.content(), body);
    }
    for mode in [::bhttp::Mode::KnownLength, ::bhttp::Mode::IndeterminateLength] {
        let mut m = ::bhttp::Message::request(
            b"POST".to_vec(),
            b"https".to_vec(),
            b"veil.example".to_vec(),
            b"/v2/models/iris/infer".to_vec(),
        );
        m.put_header("content-type", "application/json");
        m.write_content(&body[..10]);
        m.write_content(&body[10..]);
        m.put_trailer("x-trailer", "t");
        let mut enc = Vec::new();
        m.write_bhttp(mode, &mut enc).unwrap();
        enc.extend_from_slice(&[0u8; 100]);
        let ours = bhttp::parse_request(&enc).unwrap();
        assert_eq!((ours.method, ours.path), ("POST", "/v2/models/iris/infer"));
        assert_eq!(ours.header("content-type"), Some(&b"application/json"[..]));
        assert_eq!(ours.content.as_slice(), body, "{mode:?}");
    }
}

#[test]
fn veil_responses_read_by_the_bhttp_crate_and_its_responses_read_by_veil() {
    for size in [0usize, 70, 20_000] {
        let mut w = bhttp::ResponseWriter::new(32, 422, &[("content-type", b"application/json")], size);
        w.content().extend(std::iter::repeat_n(b'7', size));
        let buf = w.finish().unwrap();
        let theirs = ::bhttp::Message::read_bhttp(&mut std::io::Cursor::new(&buf[32..])).unwrap();
        assert_eq!(theirs.control().status().map(|s| s.code()), Some(422));
        assert_eq!(theirs.header().get(b"content-type"), Some(&b"application/json"[..]));
        assert_eq!(theirs.content().len(), size);
    }
    for mode in [::bhttp::Mode::KnownLength, ::bhttp::Mode::IndeterminateLength] {
        let mut m = ::bhttp::Message::response(::bhttp::StatusCode::try_from(503u16).unwrap());
        m.put_header("retry-after", "1");
        m.write_content(b"{\"error\":\"busy\"}");
        let mut enc = Vec::new();
        m.write_bhttp(mode, &mut enc).unwrap();
        let ours = bhttp::parse_response(&enc).unwrap();
        assert_eq!(ours.status, 503);
        assert_eq!(ours.header("retry-after"), Some(&b"1"[..]));
        assert_eq!(ours.content.as_slice(), b"{\"error\":\"busy\"}");
    }
}

//! `application/ohttp-keys` lists (RFC 9458 §3), as the parent serves them at
//! `/.well-known/ohttp-gateway`, read by `KeyConfig::decode_list` (the client reads them before it checks
//! them against the attested commitment).
//!
//! The verdict is compared with an independent reading of the RFC's layout with Veil's documented bounds
//! (at most 16 configurations, of which at least one of DHKEM(X25519, HKDF-SHA256); 1 to 16 symmetric
//! suites each; configurations of other KEMs skipped; any encoding error refuses the whole list): the list
//! is accepted exactly when that reading accepts it, and then re-encoding what was decoded gives, byte for
//! byte, the length-prefixed X25519 configurations of the input (the encoding of a configuration of this
//! KEM is its only one), which decode back equal. Each decoded configuration re-encodes alone to its
//! `key_config_len`, and the suite a client picks is the first listed with HKDF-SHA256 and a known AEAD.
//! Encapsulating to the first one works or fails typed (no usable suite, or a public key HPKE refuses),
//! with the header the configuration and suite dictate; and when its key is one of the fixture gateways'
//! (the seeds are their lists), that gateway opens the request, or refuses it for the reason the header
//! gives.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use veil_fuzz::{CountingRandom, ohttp_gateways};
use veil_protocol::ohttp::{
    self, ENC_LEN, Gateway, HEADER_LEN, KDF_HKDF_SHA256, KEM_X25519_SHA256, KeyConfig, MAX_KEY_CONFIGS, MAX_SUITES,
    OhttpError, TAG_LEN, key_config_len,
};

fn gateways() -> &'static [(Gateway, Vec<KeyConfig>)] {
    static G: OnceLock<Vec<(Gateway, Vec<KeyConfig>)>> = OnceLock::new();
    G.get_or_init(|| {
        ohttp_gateways()
            .into_iter()
            .map(|g| {
                let list = KeyConfig::decode_list(g.key_list()).expect("the gateway's list");
                (g, list)
            })
            .collect()
    })
}

/// The independent reading: the length-prefixed entries of the X25519 configurations, or `None` for a list
/// Veil must refuse.
fn model(data: &[u8]) -> Option<Vec<&[u8]>> {
    let be16 = |b: &[u8], i: usize| usize::from(u16::from_be_bytes([b[i], b[i + 1]]));
    let (mut at, mut entries, mut kept) = (0usize, 0usize, Vec::new());
    while at < data.len() {
        entries += 1;
        if entries > MAX_KEY_CONFIGS || data.len() - at < 2 {
            return None;
        }
        let end = at + 2 + be16(data, at);
        let body = data.get(at + 2..end)?;
        if body.len() < 3 {
            return None;
        }
        if be16(body, 1) == usize::from(KEM_X25519_SHA256) {
            if body.len() < 3 + ENC_LEN + 2 {
                return None;
            }
            let suites_len = be16(body, 3 + ENC_LEN);
            if suites_len != body.len() - (3 + ENC_LEN + 2) || suites_len == 0 || suites_len % 4 != 0 {
                return None;
            }
            if suites_len / 4 > MAX_SUITES {
                return None;
            }
            kept.push(&data[at..end]);
        }
        at = end;
    }
    if kept.is_empty() { None } else { Some(kept) }
}

fuzz_target!(|data: &[u8]| {
    let decoded = KeyConfig::decode_list(data);
    let expected = model(data);
    let list = match (decoded, expected) {
        (Ok(list), Some(kept)) => {
            assert_eq!(
                KeyConfig::encode_list(&list),
                kept.concat(),
                "the re-encoding is not the input's X25519 entries"
            );
            list
        }
        (Err(e), None) => {
            assert!(matches!(e, OhttpError::KeyConfig(_)), "refused with another error: {e}");
            return;
        }
        (Ok(list), None) => panic!("accepted a list the RFC's layout and Veil's bounds refuse: {list:?}"),
        (Err(e), Some(_)) => panic!("refused a valid list: {e}"),
    };
    assert!((1..=MAX_KEY_CONFIGS).contains(&list.len()));
    assert_eq!(KeyConfig::decode_list(&KeyConfig::encode_list(&list)).as_ref(), Ok(&list));
    for c in &list {
        assert!((1..=MAX_SUITES).contains(&c.suites.len()));
        let one = c.encode();
        assert_eq!(one.len(), key_config_len(c.suites.len()));
        assert_eq!(KeyConfig::decode(&one).as_ref(), Ok(&Some(c.clone())));
        let usable = |aead: u16| {
            matches!(aead, ohttp::AEAD_AES_128_GCM | ohttp::AEAD_AES_256_GCM | ohttp::AEAD_CHACHA20_POLY1305)
        };
        assert_eq!(c.preferred_suite(), c.suites.iter().copied().find(|s| s.kdf == KDF_HKDF_SHA256 && usable(s.aead)));
    }

    let c = &list[0];
    let probe = b"probe";
    let (enc_request, client) = match ohttp::encapsulate(c, probe, &CountingRandom::new(data.len() as u64)) {
        Ok(r) => r,
        Err(OhttpError::Unsupported { .. }) => {
            assert!(c.preferred_suite().is_none(), "a usable suite was refused");
            return;
        }
        Err(OhttpError::PublicKey) => return,
        Err(e) => panic!("encapsulating failed with another error: {e}"),
    };
    let suite = c.preferred_suite().expect("encapsulated with a suite");
    assert_eq!(enc_request.len(), HEADER_LEN + ENC_LEN + probe.len() + TAG_LEN);
    assert_eq!(enc_request[0], c.key_id);
    assert_eq!(enc_request[1..7], [KEM_X25519_SHA256, suite.kdf, suite.aead].map(u16::to_be_bytes).concat());
    for (gateway, configs) in gateways() {
        let Some(theirs) = configs.iter().find(|t| t.public_key == c.public_key) else { continue };
        let got = gateway.decapsulate(&enc_request);
        let offered = configs.iter().find(|t| t.key_id == c.key_id);
        match offered {
            None => assert_eq!(got.err(), Some(OhttpError::UnknownKeyId(c.key_id))),
            Some(t) if !t.suites.contains(&suite) => {
                assert_eq!(
                    got.err(),
                    Some(OhttpError::Unsupported { kem: KEM_X25519_SHA256, kdf: suite.kdf, aead: suite.aead })
                )
            }
            // The id names this key: it opens. Another key of the gateway cannot.
            Some(t) if t.public_key == theirs.public_key => {
                let (plain, server) = got.expect("the gateway opens a request to its own key");
                assert_eq!(*plain, probe[..]);
                assert_eq!((server.enc(), server.aead()), (client.enc(), client.aead()));
            }
            Some(_) => assert_eq!(got.err(), Some(OhttpError::RequestDecrypt)),
        }
    }
});

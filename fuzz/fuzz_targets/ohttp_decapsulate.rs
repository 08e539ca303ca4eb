//! Encapsulated OHTTP requests (RFC 9458 §4.3), as the relay (the parent) can send them, decapsulated by
//! two fixed gateways (`veil_fuzz::ohttp_gateways`: RFC 9458's example key; two Veil-style fleet keys with
//! AES-256-GCM and ChaCha20-Poly1305). The input's first byte picks the mode: below 0x80, the rest is the
//! message itself; from 0x80, it picks a real encapsulated request (`veil_fuzz::ohttp_exchanges`: the RFC's
//! own, and Veil client requests with every AEAD each gateway offers), and the rest are edits applied to it
//! (`veil_fuzz::apply_edits`).
//!
//! Every byte of an encapsulated request is authenticated: the header (key id, KEM, KDF, AEAD) is in the
//! HPKE info, the encapsulated key in the KEM context, the rest is AEAD ciphertext. So the property is
//! exact: a gateway decapsulates nothing but a real request for one of its keys, unmodified, and then to
//! that request's plaintext, with a response context that agrees with the client's. Every other message is
//! refused with the typed error that its length and header alone determine (truncated, unknown key id,
//! unsupported suite, or else "did not decrypt"), never with a panic or another error.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use veil_fuzz::{OhttpExchange, apply_edits, ohttp_exchanges, ohttp_gateways};
use veil_protocol::ohttp::{
    ENC_LEN, Gateway, HEADER_LEN, KDF_HKDF_SHA256, KEM_X25519_SHA256, KeyConfig, OhttpError, TAG_LEN,
};

struct Fixture {
    gateways: [Gateway; 2],
    /// Each gateway's key configurations, as it publishes them.
    configs: [Vec<KeyConfig>; 2],
    exchanges: Vec<OhttpExchange>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let gateways = ohttp_gateways();
        let configs = [0, 1].map(|g| KeyConfig::decode_list(gateways[g].key_list()).expect("the gateway's list"));
        Fixture { gateways, configs, exchanges: ohttp_exchanges() }
    })
}

/// The refusal a gateway publishing `configs` owes a message that is not one of its real requests, from
/// the message's length and header alone (RFC 9458 §4.3, in the order Veil checks).
fn expected_refusal(configs: &[KeyConfig], msg: &[u8]) -> OhttpError {
    let min = HEADER_LEN + ENC_LEN + TAG_LEN;
    if msg.len() < min {
        return OhttpError::Truncated { len: msg.len(), min };
    }
    let be16 = |i: usize| u16::from_be_bytes([msg[i], msg[i + 1]]);
    let (key_id, kem, kdf, aead) = (msg[0], be16(1), be16(3), be16(5));
    let Some(config) = configs.iter().find(|c| c.key_id == key_id) else {
        return OhttpError::UnknownKeyId(key_id);
    };
    if kem != KEM_X25519_SHA256
        || kdf != KDF_HKDF_SHA256
        || !config.suites.iter().any(|s| s.kdf == kdf && s.aead == aead)
    {
        return OhttpError::Unsupported { kem, kdf, aead };
    }
    OhttpError::RequestDecrypt
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let f = fixture();
    let msg = if mode < 0x80 {
        rest.to_vec()
    } else {
        let mut m = f.exchanges[usize::from(mode - 0x80) % f.exchanges.len()].encapsulated_request.clone();
        apply_edits(&mut m, rest);
        m
    };
    for (g, gateway) in f.gateways.iter().enumerate() {
        let real = f.exchanges.iter().find(|x| x.gateway == g && x.encapsulated_request == msg);
        match gateway.decapsulate(&msg) {
            Ok((plain, context)) => {
                let x = real.unwrap_or_else(|| panic!("gateway {g} decapsulated a message that is no real request"));
                assert_eq!(*plain, x.request, "a real request decapsulated to another plaintext");
                assert_eq!((context.enc(), context.aead()), (x.client.enc(), x.aead));
                assert_eq!(context.nonce_len(), x.client.nonce_len());
                assert_eq!(msg[0], x.key_id);
                // The contexts agree: what this one seals, the client's opens (the nonce is fixed, and so
                // is the probe: a repeat seals the same bytes).
                let mut buf = vec![0x5a; context.nonce_len()];
                buf.extend_from_slice(b"probe");
                context.seal_with_nonce_in_place(&mut buf).expect("a probe seals");
                assert_eq!(
                    x.client.open_in_place(&mut buf).expect("the client opens the gateway's response"),
                    b"probe"
                );
            }
            Err(e) => {
                assert!(real.is_none(), "gateway {g} refused one of its real requests: {e}");
                assert_eq!(e, expected_refusal(&f.configs[g], &msg), "gateway {g}, message of {} bytes", msg.len());
            }
        }
    }
});

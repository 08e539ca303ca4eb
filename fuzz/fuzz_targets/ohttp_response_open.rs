//! Encapsulated OHTTP responses (RFC 9458 §4.4), as the relay (the parent) can hand them to a client,
//! opened by the client contexts of real exchanges (`veil_fuzz::ohttp_exchanges`: RFC 9458's own, whose
//! response is reproduced byte for byte, and Veil client requests to both fixture gateways with every
//! AEAD). The input's first byte picks an exchange (its low six bits) and a mode (its top two):
//!
//! - 0 and 1: that exchange's real encapsulated response, with the rest of the input as edits
//!   (`veil_fuzz::apply_edits`);
//! - 2: the rest of the input itself, as a response;
//! - 3: the rest of the input as a Binary HTTP response, sealed by that exchange's gateway context.
//!
//! Every message (modes 0 to 2) is offered to every exchange's client: a response opens only for the
//! request it answers, only unmodified, and then to exactly the response the gateway sealed; anything else
//! is refused as truncated (shorter than a nonce and a tag) or as not decrypting, never otherwise. In mode
//! 3, the client opens what its gateway sealed to the same bytes, the sealed length is the nonce, the
//! message and a tag, no other client opens it, and neither does any change of one byte.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use veil_fuzz::{CountingRandom, OhttpExchange, apply_edits, ohttp_exchanges};
use veil_protocol::ohttp::{OhttpError, TAG_LEN};

fn exchanges() -> &'static [OhttpExchange] {
    static X: OnceLock<Vec<OhttpExchange>> = OnceLock::new();
    X.get_or_init(ohttp_exchanges)
}

/// What a client owes a response that is not its own: a refusal, typed by length alone.
fn refusal(y: &OhttpExchange, len: usize) -> OhttpError {
    let min = y.client.nonce_len() + TAG_LEN;
    if len < min { OhttpError::Truncated { len, min } } else { OhttpError::ResponseDecrypt }
}

/// Offers `msg` to every exchange's client.
fn open_everywhere(xs: &[OhttpExchange], msg: &[u8]) {
    for (j, y) in xs.iter().enumerate() {
        let mut buf = msg.to_vec();
        match y.client.open_in_place(&mut buf) {
            Ok(plain) => {
                assert!(msg == y.encapsulated_response, "client {j} opened a response that is not its real one");
                assert_eq!(plain, &y.response[..], "client {j} opened its response to other bytes");
            }
            Err(e) => {
                assert!(msg != y.encapsulated_response, "client {j} refused its real response: {e}");
                assert_eq!(e, refusal(y, msg.len()), "client {j}, response of {} bytes", msg.len());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let xs = exchanges();
    let i = usize::from(selector & 0x3f) % xs.len();
    let x = &xs[i];
    match selector >> 6 {
        0 | 1 => {
            let mut msg = x.encapsulated_response.clone();
            apply_edits(&mut msg, rest);
            open_everywhere(xs, &msg);
        }
        2 => open_everywhere(xs, rest),
        _ => {
            let n = x.gateway_context.nonce_len();
            let mut sealed = vec![0u8; n];
            sealed.extend_from_slice(rest);
            // A nonce per input (this is a test: the same input seals to the same bytes).
            let seed =
                rest.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
            x.gateway_context.seal_in_place(&mut sealed, &CountingRandom::new(seed)).expect("a short response seals");
            assert_eq!(sealed.len(), n + rest.len() + TAG_LEN);
            for (j, y) in xs.iter().enumerate() {
                let mut buf = sealed.clone();
                let got = y.client.open_in_place(&mut buf);
                if j == i {
                    assert_eq!(got.expect("the client opens what its gateway sealed"), rest);
                } else {
                    assert_eq!(got.err(), Some(refusal(y, sealed.len())), "client {j} and {i}'s response");
                }
            }
            let at = (seed % sealed.len() as u64) as usize;
            let mut flipped = sealed.clone();
            flipped[at] ^= 1 << (seed >> 61);
            assert_eq!(x.client.open_in_place(&mut flipped).err(), Some(OhttpError::ResponseDecrypt), "byte {at}");
        }
    }
});

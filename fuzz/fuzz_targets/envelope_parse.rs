//! The KMS envelope v2 request parser (`envelope::parse_request`), on hostile bytes: it runs in the
//! enclave on whatever the parent relays, before any key is asked for. Never panics; whatever parses
//! respects every documented bound, re-encodes canonically to bytes that parse to the same request, and
//! goes through `open_request_in_place` with the fixture key without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_fuzz::{data_key, encode_request, model};
use veil_protocol::envelope::{
    MAX_CONTEXT_LEN, MAX_CONTEXT_PAIRS, MAX_ENCRYPTED_DATA_KEY, MAX_KEY_ID, TAG_LEN, open_request_in_place,
    parse_request,
};
use veil_protocol::pad;

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = parse_request(data) else { return };
    let h = &parsed.header;
    assert!(!h.key_id.is_empty() && h.key_id.len() <= MAX_KEY_ID);
    assert!(!h.encrypted_data_key.is_empty() && h.encrypted_data_key.len() <= MAX_ENCRYPTED_DATA_KEY);
    assert!(h.encryption_context.len() <= MAX_CONTEXT_PAIRS);
    assert!(
        h.encryption_context
            .iter()
            .all(|(k, v)| !k.is_empty() && k.len() <= MAX_CONTEXT_LEN && v.len() <= MAX_CONTEXT_LEN)
    );
    assert_eq!(parsed.ciphertext.end, data.len());
    assert!(parsed.ciphertext.len() >= TAG_LEN);

    let canonical = encode_request(&parsed, data);
    let again = parse_request(&canonical).expect("a canonical re-encoding parses");
    assert_eq!(again.header, parsed.header);
    assert_eq!(canonical[again.ciphertext.clone()], data[parsed.ciphertext.clone()]);
    assert_eq!(encode_request(&again, &canonical), canonical);

    let mut buf = data.to_vec();
    if let Ok(opened) = open_request_in_place(&data_key(), &model(), &parsed, &mut buf) {
        // Only a fixture request (or one whose unauthenticated fields were changed) gets here.
        assert!(opened.body.start >= parsed.ciphertext.start + pad::LENGTHS_LEN);
        assert!(opened.body.end + TAG_LEN <= parsed.ciphertext.end);
    }
});

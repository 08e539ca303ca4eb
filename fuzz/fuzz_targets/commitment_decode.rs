//! The user_data commitment decoder: never panics, and whatever decodes re-encodes to the same bytes
//! (one encoding per value).
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_protocol::attestation::UserDataCommitment;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = UserDataCommitment::decode(data) {
        assert_eq!(c.encode().expect("a decoded commitment encodes"), data);
    }
});

//! Link messages: every input decoded as each of the four message types (the enclave decodes
//! `EnclaveRequest` and `HostResponse` from the untrusted parent; the parent decodes the other two).
//! Never panics. Whatever decodes re-encodes (canonically) to a message that decodes to the same id, body
//! and attachment, and re-encoding that gives the same bytes again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_protocol::message::{
    Body, EnclaveRequest, EnclaveResponse, HostRequest, HostResponse, PREFIX_LEN, PROTOCOL_VERSION, ProtoError, decode,
    encode, peek_prefix,
};

fn round_trip<T: Body + PartialEq + std::fmt::Debug>(data: &[u8]) {
    let d = match decode::<T>(data) {
        Ok(d) => d,
        Err(ProtoError::Short(n)) => {
            assert!(n == data.len() && n < PREFIX_LEN);
            return;
        }
        Err(ProtoError::Version { got }) => {
            assert_ne!(got, PROTOCOL_VERSION);
            return;
        }
        Err(_) => return,
    };
    assert_eq!(peek_prefix(data), Ok((PROTOCOL_VERSION, d.id)));
    assert!(d.attachment.start >= PREFIX_LEN && d.attachment.end == data.len());
    if !d.body.takes_attachment() {
        assert!(d.attachment.is_empty());
    }
    let attachment = &data[d.attachment.clone()];
    let again = encode(d.id, &d.body, attachment).expect("a decoded message encodes");
    let d2 = decode::<T>(&again).expect("a re-encoded message decodes");
    assert_eq!(d2.id, d.id);
    assert_eq!(d2.body, d.body);
    assert_eq!(&again[d2.attachment.clone()], attachment);
    assert_eq!(encode(d2.id, &d2.body, attachment).expect("encodes"), again);
}

fuzz_target!(|data: &[u8]| {
    round_trip::<EnclaveRequest>(data);
    round_trip::<EnclaveResponse>(data);
    round_trip::<HostRequest>(data);
    round_trip::<HostResponse>(data);
});

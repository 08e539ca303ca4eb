//! Padding (`pad::unpad` and `pad::pad`). Never panics. A padded plaintext has exactly one form: whatever
//! unpads pads back to the same bytes. And any body and meta pad to their bucket and unpad to themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_protocol::pad::{LENGTHS_LEN, MIN_BUCKET, bucket, pad, unpad};

fuzz_target!(|data: &[u8]| {
    if let Ok((body, meta)) = unpad(data) {
        assert_eq!(pad(body, meta).expect("what unpads pads"), data);
    }
    // The first byte splits the rest into body and meta.
    let Some((&split, rest)) = data.split_first() else { return };
    let at = usize::from(split).min(rest.len());
    let (body, meta) = rest.split_at(rest.len() - at);
    let padded = pad(body, meta).expect("small inputs pad");
    let content = LENGTHS_LEN + body.len() + meta.len();
    assert_eq!(padded.len(), bucket(content));
    assert!(padded.len() >= content.max(MIN_BUCKET));
    assert_eq!(bucket(padded.len()), padded.len());
    assert_eq!(unpad(&padded), Ok((body, meta)));
});

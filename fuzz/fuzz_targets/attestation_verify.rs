//! Full verification of hostile bytes at a fixed time (the time of the seed corpus's yawn-nitro-attest
//! document), with an expected PCR and nonce: never panics, and never accepts a document that breaks the
//! policy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_protocol::attestation::{Policy, Verifier, verify};

const AT_MS: u64 = 1_736_179_625_472;

fuzz_target!(|data: &[u8]| {
    let strict = Policy::new(AT_MS);
    let lax = Policy::new(AT_MS).allow_debug(true);
    let pinned = Policy::new(AT_MS)
        .allow_debug(true)
        .expect_pcr(0, &[0u8; 48])
        .and_then(|p| p.expect_nonce(b"fuzz"))
        .expect("static policy");
    if let Ok(doc) = verify(data, &strict) {
        assert!(!doc.is_debug());
        assert!(doc.report().verified);
    }
    let cached = Verifier::new();
    let a = verify(data, &lax).is_ok();
    let b = cached.verify(data, &lax).is_ok();
    let c = cached.verify(data, &lax).is_ok();
    assert_eq!(a, b);
    assert_eq!(b, c);
    if let Ok(doc) = verify(data, &pinned) {
        assert_eq!(doc.pcr(0), Some(&[0u8; 48][..]));
        assert_eq!(doc.nonce(), Some(&b"fuzz"[..]));
    }
});

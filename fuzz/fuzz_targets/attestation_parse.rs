//! Decoding hostile bytes as an attestation document: never panics, and whatever decodes respects every
//! documented bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_protocol::attestation::{
    MAX_CABUNDLE_LEN, MAX_CERT_LEN, MAX_DOCUMENT_LEN, MAX_OPTIONAL_FIELD_LEN, MAX_PCRS, PCR_LEN, UnverifiedDocument,
};

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = UnverifiedDocument::parse(data) else { return };
    assert!(data.len() <= MAX_DOCUMENT_LEN);
    let c = doc.unverified_claims();
    assert!(!c.pcrs.is_empty() && c.pcrs.len() <= MAX_PCRS);
    assert!(c.pcrs.values().all(|v| v.len() == PCR_LEN));
    assert!(!c.cabundle.is_empty() && c.cabundle.len() <= MAX_CABUNDLE_LEN);
    assert!(c.cabundle.iter().chain(std::iter::once(&c.certificate)).all(|d| !d.is_empty() && d.len() <= MAX_CERT_LEN));
    for f in [&c.public_key, &c.user_data, &c.nonce] {
        assert!(f.as_ref().is_none_or(|v| v.len() <= MAX_OPTIONAL_FIELD_LEN));
    }
    assert!(c.module_id.chars().all(|ch| ch.is_ascii_graphic()));
    // Certificate summaries parse each DER independently: must not panic either.
    let _ = doc.certificates();
    let _ = doc.is_debug();
});

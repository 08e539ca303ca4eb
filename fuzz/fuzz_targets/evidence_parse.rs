//! Everything an auditor reads from an audit log or an evidence bundle, which a parent (or an archive)
//! could have written: COSE_Sign1 objects, receipt and tree-head claims, log records, bundles. Never
//! panics; whatever decodes re-encodes to the same bytes (one encoding per value, since the chain and the
//! Merkle tree hash the bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_protocol::attestation::{TrustAnchor, Verifier};
use veil_protocol::evidence::bundle::Bundle;
use veil_protocol::evidence::claims::{ReceiptClaims, TreeHeadClaims, profile_of};
use veil_protocol::evidence::cose::SignedObject;
use veil_protocol::evidence::log::{RecordReader, write_record};
use veil_protocol::evidence::verify::{EvidencePolicy, verify_receipt};

fuzz_target!(|data: &[u8]| {
    if let Ok(signed) = SignedObject::parse(data, "receipt") {
        assert_eq!(signed.bytes(), data);
        let _ = signed.verify(&[7; 32], "receipt");
        let _ = ReceiptClaims::decode(signed.unverified_payload());
    }
    let _ = profile_of(data);
    if let Ok(c) = ReceiptClaims::decode(data) {
        assert_eq!(c.encode(), data, "a receipt's claims have one encoding");
    }
    if let Ok(c) = TreeHeadClaims::decode(data) {
        assert_eq!(c.encode(), data, "a tree head's claims have one encoding");
    }
    // Records: each one read, written again and read back, is the same record; the reader always ends.
    let mut reader = RecordReader::new(data);
    let mut steps = 0;
    loop {
        match reader.next_record() {
            None => break,
            Some(Ok(r)) => {
                let mut again = Vec::new();
                write_record(&mut again, r.kind, r.bytes);
                let back = RecordReader::new(&again).next_record().expect("one record").expect("it reads");
                assert_eq!((back.kind, back.bytes), (r.kind, r.bytes));
            }
            Some(Err(_)) => assert_eq!(reader.offset(), data.len(), "the reader stops at a bad record"),
        }
        steps += 1;
        assert!(steps <= data.len() + 1, "the record reader does not end");
    }
    if let Ok(b) = Bundle::from_json(data) {
        assert_eq!(Bundle::from_json(b.to_json().as_bytes()).ok(), Some(b.clone()));
        // The whole check of a bundle, as `veil receipt verify` runs it: never panics, whatever the claims
        // say (a forged receipt's iat or seq of u64::MAX among them), and never verifies garbage.
        let policy = EvidencePolicy::root_only(TrustAnchor::aws_nitro_root_g1());
        let report = verify_receipt(&b, Some(data), Some(data), &policy, &Verifier::new(), u64::MAX);
        assert!(!report.verified || report.certified_by.is_some());
    }
});

//! Systematic mutations of a real document, and hand-built malformed payloads: every one must be refused
//! with the right reason, and none may panic.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use veil_protocol::attestation::{
    CertError, CheckStatus, DecodeError, Policy, UnverifiedDocument, VerifyError, verify,
};

/// yawn-nitro-attest's document: production mode, untagged, definite-length payload map.
const TS_MS: u64 = 1_736_179_625_472;

fn document() -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/vectors/yawn-nitro-attest/tests/fixtures/attestation.cose");
    std::fs::read(p).unwrap()
}

fn policy() -> Policy {
    Policy::new(TS_MS)
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn the_fixture_verifies_unmodified() {
    let doc = document();
    assert_eq!(UnverifiedDocument::parse(&doc).unwrap().unverified_claims().timestamp_ms, TS_MS);
    verify(&doc, &policy()).unwrap();
}

/// Flipping any single bit anywhere must be caught (payload, headers and signature are all covered by
/// the signature or by the strict decoder), without a panic.
#[test]
fn every_single_byte_mutation_is_refused() {
    let doc = document();
    // One flip per byte, walking the bit position along the document so that every bit position is
    // exercised in every region (two flips per byte doubles the run time for little more coverage).
    for i in 0..doc.len() {
        let mask = 1u8 << (i % 8);
        let mut m = doc.clone();
        m[i] ^= mask;
        let result = verify(&m, &policy());
        assert!(result.is_err(), "flipping {mask:#04x} at byte {i} was accepted");
    }
}

#[test]
fn a_mutated_signature_fails_the_signature_check() {
    let doc = document();
    for back in [1, 20, 48, 49, 96] {
        let mut m = doc.clone();
        let i = m.len() - back;
        m[i] ^= 0x55;
        let err = verify(&m, &policy()).unwrap_err();
        assert_eq!(err.error, VerifyError::BadSignature, "byte {i}");
        assert_eq!(err.report.first_failure().unwrap().name, "signature");
    }
    // A signature of the wrong length is a decode error.
    let mut short = doc.clone();
    let sig_head = short.len() - 98; // 0x58 0x60 then 96 bytes
    assert_eq!(&short[sig_head..sig_head + 2], &[0x58, 0x60]);
    short[sig_head + 1] = 0x5f;
    short.pop();
    assert_eq!(verify(&short, &policy()).unwrap_err().error, VerifyError::Decode(DecodeError::SignatureLength(95)));
}

#[test]
fn a_mutated_protected_header_is_refused_by_name() {
    let doc = document();
    assert_eq!(&doc[..6], &[0x84, 0x44, 0xa1, 0x01, 0x38, 0x22]);
    let mut es256 = doc.clone();
    es256[4] = 0x26; // alg -7 (ES256), one byte shorter: pad the header with the same length
    es256[5] = 0x26;
    let err = verify(&es256, &policy()).unwrap_err();
    assert!(matches!(err.error, VerifyError::Decode(DecodeError::ProtectedHeader(_))), "{}", err.error);
    let mut other_key = doc.clone();
    other_key[3] = 0x04; // {4: -35}: kid instead of alg
    assert_eq!(
        verify(&other_key, &policy()).unwrap_err().error,
        VerifyError::Decode(DecodeError::ProtectedHeader("its only entry must be alg (1)"))
    );
    let mut alg_384_other = doc.clone();
    alg_384_other[5] = 0x23; // alg -36 (ES512)
    assert_eq!(
        verify(&alg_384_other, &policy()).unwrap_err().error,
        VerifyError::Decode(DecodeError::ProtectedHeader("alg is not ES384 (-35)"))
    );
}

#[test]
fn a_mutated_payload_field_fails_the_signature() {
    let doc = document();
    let claims = UnverifiedDocument::parse(&doc).unwrap().unverified_claims().clone();
    // Change one hex digit of the module id (still printable), and one byte of PCR0.
    let at = find(&doc, claims.module_id.as_bytes()) + 5;
    let mut m = doc.clone();
    m[at] = if m[at] == b'0' { b'1' } else { b'0' };
    assert_eq!(verify(&m, &policy()).unwrap_err().error, VerifyError::BadSignature);
    let pcr0 = claims.pcrs.get(&0).unwrap();
    let at = find(&doc, pcr0);
    let mut m = doc.clone();
    m[at] ^= 1;
    let err = verify(&m, &policy().expect_pcr(0, pcr0).unwrap()).unwrap_err();
    assert_eq!(err.error, VerifyError::BadSignature);
    assert_eq!(err.report.check("pcr0").unwrap().status, CheckStatus::Failed);
}

#[test]
fn each_mutated_certificate_is_refused_at_its_position() {
    let doc = document();
    let claims = UnverifiedDocument::parse(&doc).unwrap().unverified_claims().clone();
    let mut chain: Vec<Vec<u8>> = claims.cabundle.clone();
    chain.push(claims.certificate.clone());
    for (position, der) in chain.iter().enumerate() {
        let start = find(&doc, der);
        // The last byte of the DER is inside the certificate's own signature value.
        let mut m = doc.clone();
        m[start + der.len() - 1] ^= 1;
        let err = verify(&m, &policy()).unwrap_err();
        if position == 0 {
            assert!(matches!(err.error, VerifyError::UntrustedRoot { .. }), "{}", err.error);
        } else {
            match &err.error {
                VerifyError::Certificate { position: p, reason: CertError::BadSignature, .. } => {
                    assert_eq!(*p, position)
                }
                other => panic!("certificate {position}: {other}"),
            }
        }
        // A byte of the subject public key (near the middle of the TBS): that certificate's own signature
        // fails first (or, for the root, the pin).
        let mut m = doc.clone();
        m[start + der.len() / 2] ^= 1;
        let err = verify(&m, &policy()).unwrap_err();
        if position == 0 {
            assert!(matches!(err.error, VerifyError::UntrustedRoot { .. }), "{}", err.error);
        } else {
            assert!(
                matches!(&err.error, VerifyError::Certificate { position: p, .. } if *p == position),
                "certificate {position}: {}",
                err.error
            );
        }
    }
}

#[test]
fn swapped_or_reordered_certificates_are_refused() {
    let doc = document();
    let claims = UnverifiedDocument::parse(&doc).unwrap().unverified_claims().clone();
    // Swap regional (709 bytes) and instance (712 bytes) is not length-preserving; swap zonal and instance
    // by rebuilding the document.
    let mut reordered = claims.clone();
    reordered.cabundle.swap(2, 3);
    let err = verify(&rebuild(&doc, &reordered), &policy()).unwrap_err();
    assert!(matches!(err.error, VerifyError::Certificate { reason: CertError::IssuerMismatch, .. }), "{}", err.error);
    // Drop an intermediate.
    let mut short = claims.clone();
    short.cabundle.remove(2);
    let err = verify(&rebuild(&doc, &short), &policy()).unwrap_err();
    assert!(matches!(err.error, VerifyError::Certificate { reason: CertError::IssuerMismatch, .. }), "{}", err.error);
    // The leaf used as a CA: appended to cabundle, it makes the chain too long for the path length
    // constraints (and it is not a CA either).
    let mut leaf_as_ca = claims.clone();
    leaf_as_ca.cabundle.push(claims.certificate.clone());
    let err = verify(&rebuild(&doc, &leaf_as_ca), &policy()).unwrap_err();
    // The regional CA's path length (2) no longer covers the CAs below it.
    assert!(
        matches!(err.error, VerifyError::Certificate { reason: CertError::BasicConstraints(_), .. }),
        "{}",
        err.error
    );
}

// ---- hand-built documents (decoding only: their signatures are garbage) ----

fn head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    match arg {
        0..=23 => out.push(m | arg as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, arg as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(arg as u16).to_be_bytes());
        }
        _ => {
            out.push(m | 26);
            out.extend_from_slice(&(arg as u32).to_be_bytes());
        }
    }
}
fn bstr(out: &mut Vec<u8>, b: &[u8]) {
    head(out, 2, b.len() as u64);
    out.extend_from_slice(b);
}
fn tstr(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A payload field: a key and its already-encoded value.
type Field = (String, Vec<u8>);

fn fields_of(c: &veil_protocol::attestation::Claims) -> Vec<Field> {
    let mut f = Vec::new();
    let mut v = Vec::new();
    tstr(&mut v, &c.module_id);
    f.push(("module_id".into(), std::mem::take(&mut v)));
    tstr(&mut v, &c.digest);
    f.push(("digest".into(), std::mem::take(&mut v)));
    head(&mut v, 0, c.timestamp_ms);
    if c.timestamp_ms > u64::from(u32::MAX) {
        v.clear();
        v.push(0x1b);
        v.extend_from_slice(&c.timestamp_ms.to_be_bytes());
    }
    f.push(("timestamp".into(), std::mem::take(&mut v)));
    head(&mut v, 5, c.pcrs.len() as u64);
    for (i, p) in &c.pcrs {
        head(&mut v, 0, u64::from(*i));
        bstr(&mut v, p);
    }
    f.push(("pcrs".into(), std::mem::take(&mut v)));
    bstr(&mut v, &c.certificate);
    f.push(("certificate".into(), std::mem::take(&mut v)));
    head(&mut v, 4, c.cabundle.len() as u64);
    for cert in &c.cabundle {
        bstr(&mut v, cert);
    }
    f.push(("cabundle".into(), std::mem::take(&mut v)));
    for (k, o) in [("public_key", &c.public_key), ("user_data", &c.user_data), ("nonce", &c.nonce)] {
        match o {
            Some(b) => bstr(&mut v, b),
            None => v.push(0xf6),
        }
        f.push((k.into(), std::mem::take(&mut v)));
    }
    f
}

fn cose(fields: &[Field], signature: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    head(&mut payload, 5, fields.len() as u64);
    for (k, v) in fields {
        tstr(&mut payload, k);
        payload.extend_from_slice(v);
    }
    let mut out = vec![0x84];
    bstr(&mut out, &[0xa1, 0x01, 0x38, 0x22]);
    out.push(0xa0);
    bstr(&mut out, &payload);
    bstr(&mut out, signature);
    out
}

/// The document with its payload rebuilt from `claims` (and the original, now wrong, signature).
fn rebuild(doc: &[u8], claims: &veil_protocol::attestation::Claims) -> Vec<u8> {
    cose(&fields_of(claims), &doc[doc.len() - 96..])
}

fn decode_error(fields: &[Field]) -> DecodeError {
    match UnverifiedDocument::parse(&cose(fields, &[0; 96])) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    }
}

#[test]
fn the_rebuilt_document_round_trips() {
    // Sanity check of the test's own encoder: re-encoding the real claims gives back the real document.
    let doc = document();
    let claims = UnverifiedDocument::parse(&doc).unwrap().unverified_claims().clone();
    assert_eq!(rebuild(&doc, &claims), doc);
}

#[test]
fn payload_fields_are_checked_for_presence_type_and_size() {
    let doc = document();
    let claims = UnverifiedDocument::parse(&doc).unwrap().unverified_claims().clone();
    let base = fields_of(&claims);

    for missing in
        ["module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle", "public_key", "user_data", "nonce"]
    {
        let f: Vec<Field> = base.iter().filter(|(k, _)| k != missing).cloned().collect();
        assert_eq!(decode_error(&f), DecodeError::MissingField(missing));
    }
    let mut dup = base.clone();
    dup[8] = ("module_id".into(), base[0].1.clone());
    assert_eq!(decode_error(&dup), DecodeError::DuplicateField("module_id"));
    let mut unknown = base.clone();
    unknown[8] = ("nonce\u{1b}[31m".into(), vec![0xf6]);
    assert_eq!(decode_error(&unknown), DecodeError::UnknownField("nonce\\u{1b}[31m".into()));

    let with = |key: &str, value: Vec<u8>| -> Vec<Field> {
        base.iter().map(|(k, v)| if k == key { (k.clone(), value.clone()) } else { (k.clone(), v.clone()) }).collect()
    };
    let enc = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = Vec::new();
        f(&mut v);
        v
    };
    // Optional fields: 1024 bytes is fine, 1025 is not; a text string is the wrong type.
    let f = with("user_data", enc(&|v| bstr(v, &[0; 1024])));
    assert!(UnverifiedDocument::parse(&cose(&f, &[0; 96])).is_ok());
    let f = with("user_data", enc(&|v| bstr(v, &[0; 1025])));
    assert_eq!(decode_error(&f), DecodeError::FieldSize { field: "user_data", len: 1025, min: 0, max: 1024 });
    let f = with("nonce", enc(&|v| tstr(v, "abc")));
    assert!(matches!(decode_error(&f), DecodeError::Cbor { context: "nonce", reason: "expected a byte string", .. }));
    let f = with("digest", enc(&|v| tstr(v, "SHA256")));
    assert!(matches!(decode_error(&f), DecodeError::FieldValue { field: "digest", .. }));
    let f = with("module_id", enc(&|v| tstr(v, "i-123\n-enc")));
    assert!(matches!(decode_error(&f), DecodeError::FieldValue { field: "module_id", .. }));
    let f = with("module_id", enc(&|v| tstr(v, "")));
    assert!(matches!(decode_error(&f), DecodeError::FieldSize { field: "module_id", len: 0, .. }));
    let f = with("timestamp", enc(&|v| head(v, 0, 0)));
    assert!(matches!(decode_error(&f), DecodeError::FieldValue { field: "timestamp", .. }));
    let f = with("timestamp", enc(&|v| head(v, 1, 5)));
    assert!(matches!(decode_error(&f), DecodeError::Cbor { context: "timestamp", .. }));
    // PCRs: index 32, 32-byte value, duplicates, empty map, 33 entries.
    let f = with(
        "pcrs",
        enc(&|v| {
            head(v, 5, 1);
            head(v, 0, 32);
            bstr(v, &[0; 48]);
        }),
    );
    assert!(matches!(decode_error(&f), DecodeError::FieldValue { field: "pcrs", .. }));
    let f = with(
        "pcrs",
        enc(&|v| {
            head(v, 5, 1);
            head(v, 0, 0);
            bstr(v, &[0; 32]);
        }),
    );
    assert!(matches!(decode_error(&f), DecodeError::FieldValue { field: "pcrs", .. }));
    let f = with(
        "pcrs",
        enc(&|v| {
            head(v, 5, 2);
            head(v, 0, 0);
            bstr(v, &[0; 48]);
            head(v, 0, 0);
            bstr(v, &[0; 48]);
        }),
    );
    assert!(matches!(decode_error(&f), DecodeError::FieldValue { field: "pcrs", .. }));
    let f = with("pcrs", enc(&|v| head(v, 5, 0)));
    assert_eq!(decode_error(&f), DecodeError::FieldSize { field: "pcrs", len: 0, min: 1, max: 32 });
    // Certificates: empty, too large, too many, an empty bundle.
    let f = with("certificate", enc(&|v| bstr(v, &[])));
    assert!(matches!(decode_error(&f), DecodeError::FieldSize { field: "certificate", len: 0, .. }));
    let f = with("certificate", enc(&|v| bstr(v, &[0x30; 1025])));
    assert!(matches!(decode_error(&f), DecodeError::FieldSize { field: "certificate", len: 1025, .. }));
    let f = with(
        "cabundle",
        enc(&|v| {
            head(v, 4, 9);
            for _ in 0..9 {
                bstr(v, &[0x30; 8]);
            }
        }),
    );
    assert!(matches!(decode_error(&f), DecodeError::FieldSize { field: "cabundle", len: 9, .. }));
    let f = with("cabundle", enc(&|v| head(v, 4, 0)));
    assert!(matches!(decode_error(&f), DecodeError::FieldSize { field: "cabundle", len: 0, .. }));
    // A garbage certificate decodes (it is only bytes) but fails the chain with a reason, no panic.
    let f = with("certificate", enc(&|v| bstr(v, &[0x30, 0x03, 0x02, 0x01, 0x00])));
    let err = verify(&cose(&f, &[0; 96]), &policy()).unwrap_err();
    assert!(
        matches!(err.error, VerifyError::Certificate { position: 4, reason: CertError::Malformed(_), .. }),
        "{}",
        err.error
    );
    assert_eq!(err.report.check("signature").unwrap().status, CheckStatus::Skipped);
}

#[test]
fn cose_structure_is_checked() {
    let doc = document();
    let mut five = doc.clone();
    five[0] = 0x85;
    five.push(0xf6);
    assert!(matches!(verify(&five, &policy()).unwrap_err().error, VerifyError::Decode(DecodeError::NotCoseSign1(_))));
    let mut map = doc.clone();
    map[0] = 0xa2;
    assert!(matches!(verify(&map, &policy()).unwrap_err().error, VerifyError::Decode(DecodeError::NotCoseSign1(_))));
    // Detached payload.
    let mut detached = vec![0x84];
    bstr(&mut detached, &[0xa1, 0x01, 0x38, 0x22]);
    detached.extend_from_slice(&[0xa0, 0xf6]);
    bstr(&mut detached, &[0; 96]);
    assert_eq!(verify(&detached, &policy()).unwrap_err().error, VerifyError::Decode(DecodeError::DetachedPayload));
    // Deeply nested junk in the unprotected header is bounded, not recursed into forever.
    let mut deep = vec![0x84];
    bstr(&mut deep, &[0xa1, 0x01, 0x38, 0x22]);
    deep.extend_from_slice(&[0xa1, 0x01]);
    deep.extend(std::iter::repeat_n(0x81, 5000));
    deep.push(0x00);
    assert!(matches!(
        verify(&deep, &policy()).unwrap_err().error,
        VerifyError::Decode(DecodeError::Cbor { reason: "nested too deeply", .. })
    ));
    // An indefinite-length outer array is the same COSE_Sign1 (the signature covers only the protected
    // header and the payload); a missing break byte is not.
    let mut indefinite = doc.clone();
    indefinite[0] = 0x9f;
    indefinite.push(0xff);
    verify(&indefinite, &policy()).unwrap();
    indefinite.pop();
    assert!(matches!(verify(&indefinite, &policy()).unwrap_err().error, VerifyError::Decode(DecodeError::Cbor { .. })));
    // Non-empty unprotected headers are ignored (they are not signed), and the document still verifies.
    let mut unprot = vec![0x84];
    unprot.extend_from_slice(&doc[1..6]);
    unprot.extend_from_slice(&[0xa1, 0x04, 0x41, 0x00]); // {4 (kid): h'00'}
    unprot.extend_from_slice(&doc[7..]);
    verify(&unprot, &policy()).unwrap();
}

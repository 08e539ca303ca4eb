//! Veil's bounded reader against AWS's own code, on the real documents in `tests/vectors`.
//!
//! The verifier decodes hostile documents with its own reader (`veil_protocol::cbor`, see
//! docs/ATTESTATION.md §1 for why). This test checks that it reads every real document exactly as AWS's
//! crates do: `aws-nitro-enclaves-cose` (`CoseSign1::from_bytes`, ciborium inside) for the COSE_Sign1, and
//! `aws-nitro-enclaves-nsm-api` (`AttestationDoc::from_binary`, serde_cbor inside) for the payload. It
//! compares the payload bytes, the protected header, the signature and every payload field; it checks the
//! COSE signature with AWS's verification (ring underneath, as in the enclave's mock NSM) against Veil's
//! `signature` check; and it walks single-bit flips of one document to show that Veil's reader never
//! accepts what AWS's refuses, and says where (and why) it refuses what AWS's accepts.
//!
//! AWS's crates are dev-dependencies of veil-protocol only: the verifier itself never links them.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use aws_nitro_enclaves_cose::CoseSign1;
use aws_nitro_enclaves_cose::crypto::{Hash, MessageDigest, SignatureAlgorithm, SigningPublicKey};
use aws_nitro_enclaves_cose::error::CoseError;
use aws_nitro_enclaves_cose::header_map::{CborInteger, CborValue};
use aws_nitro_enclaves_nsm_api::api::{AttestationDoc, Digest};
use base64::Engine as _;
use veil_protocol::attestation::{CheckStatus, Claims, DecodeError, Policy, UnverifiedDocument, verify};

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors")
}

/// One attestation document of MANIFEST.json (the fields this test needs).
#[derive(Debug)]
struct Vector {
    file: String,
    bytes: Vec<u8>,
    timestamp_ms: u64,
    negative: bool,
}

fn vectors() -> Vec<Vector> {
    let dir = vectors_dir();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("MANIFEST.json")).unwrap()).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let file = e["file"].as_str().unwrap().to_owned();
            let raw = std::fs::read(dir.join(&file)).unwrap();
            let text = || String::from_utf8(raw.clone()).unwrap().split_whitespace().collect::<String>();
            let bytes = match e["encoding"].as_str().unwrap() {
                "raw" => raw.clone(),
                "hex" => hex::decode(text()).unwrap(),
                "b64" => base64::engine::general_purpose::STANDARD.decode(text()).unwrap(),
                other => panic!("{file}: unknown encoding {other}"),
            };
            Vector {
                negative: e["note"].as_str().unwrap_or("").contains("NEGATIVE"),
                timestamp_ms: e["timestamp_ms"].as_u64().unwrap(),
                file,
                bytes,
            }
        })
        .collect()
}

fn real_documents() -> Vec<Vector> {
    let docs: Vec<Vector> = vectors().into_iter().filter(|v| !v.negative).collect();
    assert_eq!(docs.len(), 18, "the manifest lists 18 real documents");
    docs
}

// ---- AWS's side: the crate's crypto traits, backed by ring ---------------------------------------------

/// The leaf certificate's P-384 key (uncompressed point), for `aws-nitro-enclaves-cose`'s verification.
///
/// ring verifies a signature over a *message* (it hashes inside ECDSA) and has no API for a precomputed
/// digest, so the crate's digest step is [`HashedByRing`]: it passes the Sig_structure through and ring's
/// ES384 hashes it with SHA-384. The enclave's mock NSM signs with the same construction.
struct RingEs384PublicKey(Vec<u8>);

impl SigningPublicKey for RingEs384PublicKey {
    fn get_parameters(&self) -> Result<(SignatureAlgorithm, MessageDigest), CoseError> {
        Ok((SignatureAlgorithm::ES384, MessageDigest::Sha384))
    }

    fn verify(&self, sig_structure: &[u8], signature: &[u8]) -> Result<bool, CoseError> {
        let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P384_SHA384_FIXED, &self.0);
        Ok(key.verify(sig_structure, signature).is_ok())
    }
}

struct HashedByRing;

impl Hash for HashedByRing {
    fn hash(digest: MessageDigest, data: &[u8]) -> Result<Vec<u8>, CoseError> {
        match digest {
            MessageDigest::Sha384 => Ok(data.to_vec()),
            other => Err(CoseError::UnsupportedError(format!("{other:?}: only ES384 here"))),
        }
    }
}

fn leaf_key(certificate_der: &[u8]) -> RingEs384PublicKey {
    let (_, cert) = x509_parser::parse_x509_certificate(certificate_der).unwrap();
    RingEs384PublicKey(cert.public_key().subject_public_key.data.to_vec())
}

/// The four COSE_Sign1 fields exactly as AWS's `CoseSign1` holds them. The struct keeps them private;
/// its `Serialize` impl hands them over as serde values (no CBOR is read here).
#[derive(Debug)]
struct AwsCose {
    protected: Vec<u8>,
    unprotected: CborValue,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

fn aws_fields(cose: &CoseSign1) -> AwsCose {
    let CborValue::Array(parts) = CborValue::serialized(cose).unwrap() else { panic!("CoseSign1 is not an array") };
    let [CborValue::Bytes(protected), unprotected, CborValue::Bytes(payload), CborValue::Bytes(signature)] =
        <[CborValue; 4]>::try_from(parts).unwrap()
    else {
        panic!("CoseSign1 fields are not [bstr, map, bstr, bstr]")
    };
    AwsCose { protected, unprotected, payload, signature }
}

/// What AWS's crates make of a document: its COSE fields and its payload, or the first error.
fn aws_read(bytes: &[u8]) -> Result<(CoseSign1, AwsCose, AttestationDoc), String> {
    let cose = CoseSign1::from_bytes(bytes).map_err(|e| format!("aws-nitro-enclaves-cose: {e}"))?;
    let fields = aws_fields(&cose);
    let doc = AttestationDoc::from_binary(&fields.payload).map_err(|e| format!("nsm-api: {e:?}"))?;
    Ok((cose, fields, doc))
}

/// Veil's `signature` check on `bytes` (the chain, validity and the rest are checked too, but only this
/// one is looked at).
fn veil_signature(bytes: &[u8], at_ms: u64) -> CheckStatus {
    match verify(bytes, &Policy::new(at_ms).allow_debug(true)) {
        Ok(doc) => doc.report().check("signature").unwrap().status,
        Err(rejected) => rejected.report.check("signature").unwrap().status,
    }
}

/// Every field both readers report, compared; `what` names the document in the failure message.
fn assert_same_claims(what: &str, veil: &Claims, aws: &AttestationDoc) {
    assert_eq!(veil.module_id, aws.module_id, "{what}: module_id");
    assert_eq!(aws.digest, Digest::SHA384, "{what}: digest");
    assert_eq!(veil.digest, "SHA384", "{what}: digest");
    assert_eq!(veil.timestamp_ms, aws.timestamp, "{what}: timestamp");
    let aws_pcrs: BTreeMap<usize, &[u8]> = aws.pcrs.iter().map(|(i, v)| (*i, v.as_slice())).collect();
    let veil_pcrs: BTreeMap<usize, &[u8]> = veil.pcrs.iter().map(|(i, v)| (usize::from(*i), v.as_slice())).collect();
    assert_eq!(veil_pcrs, aws_pcrs, "{what}: pcrs");
    assert_eq!(veil.certificate, aws.certificate.as_slice(), "{what}: certificate");
    let aws_cabundle: Vec<&[u8]> = aws.cabundle.iter().map(|c| c.as_slice()).collect();
    assert_eq!(veil.cabundle.iter().map(Vec::as_slice).collect::<Vec<_>>(), aws_cabundle, "{what}: cabundle");
    assert_eq!(veil.public_key.as_deref(), aws.public_key.as_deref().map(|b| b.as_slice()), "{what}: public_key");
    assert_eq!(veil.user_data.as_deref(), aws.user_data.as_deref().map(|b| b.as_slice()), "{what}: user_data");
    assert_eq!(veil.nonce.as_deref(), aws.nonce.as_deref().map(|b| b.as_slice()), "{what}: nonce");
}

/// ES384 in a protected header, as AWS's `HeaderMap` reads it.
fn assert_es384(what: &str, cose: &CoseSign1) {
    let (protected, _) = cose.get_protected_and_payload::<HashedByRing>(None).unwrap();
    let alg = protected.get(&CborValue::Integer(CborInteger::from(1))).unwrap();
    assert_eq!(alg, &CborValue::Integer(CborInteger::from(-35)), "{what}: alg");
}

#[test]
fn both_readers_agree_on_every_real_document() {
    for v in real_documents() {
        let what = v.file.as_str();
        let veil = UnverifiedDocument::parse(&v.bytes).unwrap_or_else(|e| panic!("{what}: Veil: {e}"));
        let (cose, aws, doc) = aws_read(&v.bytes).unwrap_or_else(|e| panic!("{what}: {e}"));

        assert_eq!(veil.unverified_payload(), aws.payload.as_slice(), "{what}: payload bytes");
        assert_eq!(cose.get_payload::<HashedByRing>(None).unwrap(), aws.payload, "{what}: get_payload");
        assert_eq!(veil.protected_header(), aws.protected.as_slice(), "{what}: protected header");
        assert_eq!(veil.protected_header(), [0xa1, 0x01, 0x38, 0x22], "{what}: protected header is {{1: -35}}");
        assert_es384(what, &cose);
        assert_eq!(veil.signature().as_slice(), aws.signature.as_slice(), "{what}: signature");
        // Veil ignores the unprotected header (it is not signed); every real one is empty.
        assert_eq!(aws.unprotected, CborValue::Map(vec![]), "{what}: unprotected header");
        assert!(!veil.is_tagged(), "{what}: the NSM sends documents untagged");
        // AWS's encoder writes the document back byte for byte.
        assert_eq!(cose.as_bytes(false).unwrap(), v.bytes, "{what}: CoseSign1::as_bytes");

        assert_same_claims(what, veil.unverified_claims(), &doc);
    }
}

/// nsm-api's `to_binary()` (what the mock NSM uses) writes a definite-length map; two of the real
/// documents come from NSMs that write an indefinite-length one (`0xbf`). Both readers accept both.
#[test]
fn nsm_api_re_encodes_every_definite_length_payload_byte_for_byte() {
    let mut indefinite = Vec::new();
    for v in real_documents() {
        let veil = UnverifiedDocument::parse(&v.bytes).unwrap();
        let payload = veil.unverified_payload();
        let again = AttestationDoc::from_binary(payload).unwrap().to_binary();
        match payload[0] {
            0xa9 => assert_eq!(again, payload, "{}: to_binary", v.file),
            0xbf => {
                assert_eq!(again[0], 0xa9, "{}", v.file);
                assert_eq!(again[1..], payload[1..payload.len() - 1], "{}: same entries, definite length", v.file);
                indefinite.push(v.file);
            }
            other => panic!("{}: payload map head {other:#04x}", v.file),
        }
    }
    assert_eq!(
        indefinite,
        [
            "mystenlabs-fastcrypto/VALID_PCR16_ATTESTATION.hex",
            "base-nitro-validator/hinted_real_attestation_repaired.cose"
        ]
    );
}

#[test]
fn aws_signature_verification_agrees_with_veils_on_every_real_document() {
    for v in real_documents() {
        let what = v.file.as_str();
        let (cose, _, doc) = aws_read(&v.bytes).unwrap();
        let key = leaf_key(&doc.certificate);
        assert!(cose.verify_signature::<HashedByRing>(&key).unwrap(), "{what}: AWS's COSE verification");
        assert_eq!(veil_signature(&v.bytes, v.timestamp_ms), CheckStatus::Passed, "{what}: Veil's signature check");

        // One bit of the signature flipped: both refuse.
        let mut m = v.bytes.clone();
        let last = m.len() - 1;
        m[last] ^= 0x01;
        let (cose, _, _) = aws_read(&m).unwrap();
        assert!(!cose.verify_signature::<HashedByRing>(&key).unwrap(), "{what}: AWS, flipped signature");
        assert_eq!(veil_signature(&m, v.timestamp_ms), CheckStatus::Failed, "{what}: Veil, flipped signature");
    }
}

#[test]
fn the_negative_vector_is_read_alike_and_refused_by_both_on_its_signature() {
    let v = vectors().into_iter().find(|v| v.negative).unwrap();
    let veil = UnverifiedDocument::parse(&v.bytes).unwrap();
    let (cose, aws, doc) = aws_read(&v.bytes).unwrap();
    assert_eq!(veil.unverified_payload(), aws.payload.as_slice());
    assert_eq!(veil.signature().as_slice(), aws.signature.as_slice());
    assert_same_claims(&v.file, veil.unverified_claims(), &doc);
    assert!(!cose.verify_signature::<HashedByRing>(&leaf_key(&doc.certificate)).unwrap());
    assert_eq!(veil_signature(&v.bytes, v.timestamp_ms), CheckStatus::Failed);
}

/// The published base64 lost three bytes inside the payload, so the payload's byte-string length runs
/// past the end of the document: both readers refuse it at the COSE level.
#[test]
fn the_broken_as_published_document_is_refused_by_both() {
    let broken =
        std::fs::read(vectors_dir().join("base-nitro-validator/hinted_real_attestation_as_published.cose")).unwrap();
    let veil = UnverifiedDocument::parse(&broken).unwrap_err();
    assert!(matches!(veil, DecodeError::Cbor { context: "COSE_Sign1", .. }), "Veil: {veil}");
    let aws = CoseSign1::from_bytes(&broken).unwrap_err();
    assert!(matches!(aws, CoseError::SerializationError(_)), "AWS: {aws}");
}

/// Single-bit flips over the whole of one real document (every bit of every byte). Wherever Veil's
/// reader accepts a mutant, AWS's accepts it too and reads the same fields: Veil is never the looser of
/// the two here. Where AWS's accepts and Veil's refuses, Veil's reason is one of the checks it makes on
/// purpose (docs/ATTESTATION.md §1), and AWS's own signature verification refuses the mutant anyway: on a
/// signed document the difference never changes the outcome of a verification.
#[test]
fn veils_reader_is_never_looser_than_aws_on_bit_flips_and_its_extra_refusals_are_deliberate() {
    let v = real_documents().into_iter().find(|v| v.file.starts_with("yawn-nitro-attest/")).unwrap();
    let key = leaf_key(&UnverifiedDocument::parse(&v.bytes).unwrap().unverified_claims().certificate);
    let mut only_veil_refuses: BTreeMap<&'static str, usize> = BTreeMap::new();
    for i in 0..v.bytes.len() {
        for bit in 0..8 {
            let mut m = v.bytes.clone();
            m[i] ^= 1 << bit;
            let what = format!("bit {bit} of byte {i}");
            match (UnverifiedDocument::parse(&m), aws_read(&m)) {
                (Ok(veil), Ok((cose, aws, doc))) => {
                    assert_eq!(veil.unverified_payload(), aws.payload.as_slice(), "{what}");
                    assert_eq!(veil.protected_header(), aws.protected.as_slice(), "{what}");
                    assert_eq!(veil.signature().as_slice(), aws.signature.as_slice(), "{what}");
                    assert_es384(&what, &cose);
                    assert_same_claims(&what, veil.unverified_claims(), &doc);
                }
                (Ok(_), Err(aws)) => panic!("{what}: Veil accepts what AWS refuses ({aws})"),
                (Err(veil), Ok((cose, _, _))) => {
                    let reason =
                        deliberate_refusal(&veil).unwrap_or_else(|| panic!("{what}: only Veil refuses: {veil}"));
                    *only_veil_refuses.entry(reason).or_default() += 1;
                    assert!(!matches!(cose.verify_signature::<HashedByRing>(&key), Ok(true)), "{what}: signature");
                }
                (Err(_), Err(_)) => {}
            }
        }
    }
    eprintln!("mutants that only Veil's reader refuses, by reason: {only_veil_refuses:#?}");
    // Every kind occurs in this document: if one stops occurring, a reader changed and this list (and
    // docs/ATTESTATION.md §1) must say so.
    assert_eq!(only_veil_refuses.len(), DELIBERATE.len(), "{only_veil_refuses:#?}");
}

/// What Veil's reader refuses on purpose and AWS's readers accept.
const DELIBERATE: [&str; 6] = [
    // aws-nitro-enclaves-cose only checks that the protected header is a map; it compares `alg` with the
    // key when verifying.
    "protected header other than {1: -35}",
    // serde hands a byte string to a field that wants text, and text to one that wants bytes: serde_cbor
    // then takes `module_id`, `digest` or a key as a byte string, or a PCR as a text string.
    "a byte string for text, or text for a byte string",
    // serde ignores unknown keys, and a missing `Option` is `None`: a renamed `nonce` reads as no nonce.
    "an unknown key",
    // serde's BTreeMap keeps the last of two entries with the same PCR index.
    "a PCR index twice",
    "module_id not printable ASCII",
    "timestamp 0 or above 2^63-1",
];

fn deliberate_refusal(e: &DecodeError) -> Option<&'static str> {
    let reason = match e {
        DecodeError::ProtectedHeader(_) => DELIBERATE[0],
        DecodeError::Cbor { reason: "expected a text string" | "expected a byte string", .. } => DELIBERATE[1],
        DecodeError::UnknownField(_) => DELIBERATE[2],
        DecodeError::FieldValue { field: "pcrs", reason } if reason.contains("more than once") => DELIBERATE[3],
        DecodeError::FieldValue { field: "module_id", .. } => DELIBERATE[4],
        DecodeError::FieldValue { field: "timestamp", .. } => DELIBERATE[5],
        _ => return None,
    };
    Some(reason)
}

// ---- Hand-built documents: the differences bit flips cannot reach ----------------------------------------

/// A COSE_Sign1 with the given unprotected header and payload (the signature is zeros: these tests compare
/// decoding only).
fn cose_document(unprotected: CborValue, payload: CborValue) -> Vec<u8> {
    let mut payload_bytes = Vec::new();
    ciborium::into_writer(&payload, &mut payload_bytes).unwrap();
    let cose = CborValue::Array(vec![
        CborValue::Bytes(vec![0xa1, 0x01, 0x38, 0x22]),
        unprotected,
        CborValue::Bytes(payload_bytes),
        CborValue::Bytes(vec![0; 96]),
    ]);
    let mut out = Vec::new();
    ciborium::into_writer(&cose, &mut out).unwrap();
    out
}

/// The payload of a real document as an ordered list of (key, value), to edit.
fn real_payload() -> Vec<(CborValue, CborValue)> {
    let v = real_documents().into_iter().find(|v| v.file.starts_with("yawn-nitro-attest/")).unwrap();
    let veil = UnverifiedDocument::parse(&v.bytes).unwrap();
    let CborValue::Map(entries) = ciborium::from_reader(veil.unverified_payload()).unwrap() else { panic!() };
    entries
}

fn text(s: &str) -> CborValue {
    CborValue::Text(s.into())
}

fn edit(key: &str, f: impl FnOnce(&mut CborValue)) -> CborValue {
    let mut entries = real_payload();
    f(&mut entries.iter_mut().find(|(k, _)| *k == text(key)).unwrap().1);
    CborValue::Map(entries)
}

fn empty() -> CborValue {
    CborValue::Map(vec![])
}

#[test]
fn hand_built_documents_show_the_remaining_differences() {
    // The unedited payload, re-encoded: both accept, and agree.
    let base = cose_document(empty(), CborValue::Map(real_payload()));
    let (_, _, doc) = aws_read(&base).unwrap();
    assert_same_claims("base", UnverifiedDocument::parse(&base).unwrap().unverified_claims(), &doc);

    // Accepted by AWS's readers, refused by Veil's: (what, unprotected header, payload, Veil's error).
    let pcrs = |f: fn(&mut Vec<(CborValue, CborValue)>)| {
        edit("pcrs", |v| {
            let CborValue::Map(pcrs) = v else { panic!() };
            f(pcrs)
        })
    };
    let without_nonce = || CborValue::Map(real_payload().into_iter().filter(|(k, _)| *k != text("nonce")).collect());
    let mut deep = CborValue::Array(vec![]);
    for _ in 0..20 {
        deep = CborValue::Array(vec![deep]);
    }
    let cases: Vec<(&str, CborValue, CborValue, &str)> = vec![
        ("nonce key missing", empty(), without_nonce(), "payload field \"nonce\" is missing"),
        (
            "an extra key",
            empty(),
            {
                let mut e = real_payload();
                e.push((text("extra"), CborValue::Integer(1.into())));
                CborValue::Map(e)
            },
            "payload field \"payload\": map has 10 entries, more than the 9 known fields",
        ),
        (
            "digest SHA256",
            empty(),
            edit("digest", |v| *v = text("SHA256")),
            "payload field \"digest\": \"SHA256\" is not SHA384",
        ),
        (
            "PCR0 of 47 bytes",
            empty(),
            pcrs(|p| p[0].1 = CborValue::Bytes(vec![0; 47])),
            "payload field \"pcrs\": PCR0 is 47 bytes, not 48 (SHA-384)",
        ),
        (
            "PCR index 1000",
            empty(),
            pcrs(|p| p[0].0 = CborValue::Integer(1000.into())),
            "payload field \"pcrs\": PCR index 1000 is not in 0..=31",
        ),
        ("no PCRs", empty(), pcrs(Vec::clear), "payload field \"pcrs\" is 0 long, outside 1..=32"),
        (
            "empty cabundle",
            empty(),
            edit("cabundle", |v| *v = CborValue::Array(vec![])),
            "payload field \"cabundle\" is 0 long, outside 1..=8",
        ),
        (
            "a 1025-byte nonce",
            empty(),
            edit("nonce", |v| *v = CborValue::Bytes(vec![1; 1025])),
            "payload field \"nonce\" is 1025 long, outside 0..=1024",
        ),
        (
            "unprotected header nested 20 deep",
            CborValue::Map(vec![(CborValue::Integer(4.into()), deep)]),
            CborValue::Map(real_payload()),
            "malformed CBOR in COSE_Sign1 at byte 16: nested too deeply",
        ),
    ];
    for (what, unprotected, payload, veil_error) in cases {
        let m = cose_document(unprotected, payload);
        assert!(aws_read(&m).is_ok(), "{what}: AWS refuses: {:?}", aws_read(&m).err());
        assert_eq!(UnverifiedDocument::parse(&m).unwrap_err().to_string(), veil_error, "{what}");
    }
    // What AWS reads in two of them: no nonce at all, and a digest the NSM never uses.
    let (_, _, doc) = aws_read(&cose_document(
        empty(),
        CborValue::Map(real_payload().into_iter().filter(|(k, _)| *k != text("nonce")).collect()),
    ))
    .unwrap();
    assert_eq!(doc.nonce, None);
    let (_, _, doc) = aws_read(&cose_document(empty(), edit("digest", |v| *v = text("SHA256")))).unwrap();
    assert_eq!(doc.digest, Digest::SHA256);

    // Refused by both: a repeated payload key (serde's derive refuses duplicate fields).
    let mut twice: Vec<_> = real_payload().into_iter().filter(|(k, _)| *k != text("nonce")).collect();
    twice.insert(1, (text("module_id"), text("i-0123456789abcdef0-enc0123456789abcdef")));
    let m = cose_document(empty(), CborValue::Map(twice));
    assert_eq!(UnverifiedDocument::parse(&m).unwrap_err(), DecodeError::DuplicateField("module_id"));
    assert!(aws_read(&m).is_err());

    // The one place where Veil's reader is the more lenient: a repeated label in the unprotected header.
    // AWS's HeaderMap refuses it (RFC 9052 forbids repeated labels in a header map); Veil only checks that
    // the unprotected header is a well-formed map and reads nothing from it (it is not signed).
    let label = || CborValue::Integer(4.into());
    let unprotected = CborValue::Map(vec![(label(), CborValue::Bytes(vec![])), (label(), CborValue::Bytes(vec![1]))]);
    let m = cose_document(unprotected, CborValue::Map(real_payload()));
    assert!(CoseSign1::from_bytes(&m).is_err());
    assert!(UnverifiedDocument::parse(&m).is_ok());
}

//! The verifier against the real Nitro documents in `tests/vectors` (see its README and MANIFEST.json).
//!
//! Every test passes the time explicitly (a document's own timestamp, or a time just outside its leaf's
//! validity): nothing here depends on the wall clock.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use veil_protocol::attestation::{
    AWS_ROOT_G1_SHA256, CheckStatus, DecodeError, Policy, TrustAnchor, UnverifiedDocument, Verifier, VerifyError,
    verify,
};

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors")
}

#[derive(Debug, Clone)]
struct Entry {
    file: String,
    bytes: Vec<u8>,
    timestamp_ms: u64,
    module_id: String,
    pcrs: Vec<(u16, Vec<u8>)>,
    debug: bool,
    negative: bool,
    leaf_not_before_s: i64,
    leaf_not_after_s: i64,
    public_key: Option<Vec<u8>>,
    user_data: Option<Vec<u8>>,
    nonce: Option<Vec<u8>>,
}

fn decode_file(raw: &[u8], encoding: &str) -> Vec<u8> {
    let text = || String::from_utf8(raw.to_vec()).unwrap().split_whitespace().collect::<String>();
    match encoding {
        "raw" => raw.to_vec(),
        "hex" => hex::decode(text()).unwrap(),
        "b64" => base64::engine::general_purpose::STANDARD.decode(text()).unwrap(),
        other => panic!("unknown encoding {other}"),
    }
}

/// `2022-10-13T11:58:02+00:00` → Unix seconds (the manifest's format).
fn parse_utc(s: &str) -> i64 {
    i64::try_from(veil_protocol::time::parse_rfc3339(s).unwrap().as_secs()).unwrap()
}

fn manifest() -> Vec<Entry> {
    let dir = vectors_dir();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("MANIFEST.json")).unwrap()).unwrap();
    let opt_hex = |v: &serde_json::Value| v.as_str().map(|s| hex::decode(s).unwrap());
    json.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let file = e["file"].as_str().unwrap().to_owned();
            let raw = std::fs::read(dir.join(&file)).unwrap();
            let bytes = decode_file(&raw, e["encoding"].as_str().unwrap());
            let mut pcrs: Vec<(u16, Vec<u8>)> = e["pcrs"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.parse().unwrap(), hex::decode(v.as_str().unwrap()).unwrap()))
                .collect();
            pcrs.sort();
            Entry {
                negative: e["note"].as_str().unwrap_or("").contains("NEGATIVE"),
                file,
                bytes,
                timestamp_ms: e["timestamp_ms"].as_u64().unwrap(),
                module_id: e["module_id"].as_str().unwrap().to_owned(),
                pcrs,
                debug: e["debug_mode"].as_bool().unwrap(),
                leaf_not_before_s: parse_utc(e["leaf_not_before"].as_str().unwrap()),
                leaf_not_after_s: parse_utc(e["leaf_not_after"].as_str().unwrap()),
                public_key: opt_hex(&e["public_key_hex"]),
                user_data: opt_hex(&e["user_data_hex"]),
                nonce: opt_hex(&e["nonce_hex"]),
            }
        })
        .collect()
}

fn real_documents() -> Vec<Entry> {
    let docs: Vec<Entry> = manifest().into_iter().filter(|e| !e.negative).collect();
    assert_eq!(docs.len(), 18, "the manifest lists 18 real documents");
    docs
}

fn negative_document() -> Entry {
    manifest().into_iter().find(|e| e.negative).unwrap()
}

/// A production (non-debug) document, for the mutation tests.
fn production_document() -> Entry {
    real_documents()
        .into_iter()
        .find(|e| e.file.ends_with("yawn-nitro-attest/tests/fixtures/attestation.cose"))
        .unwrap()
}

fn policy_at(e: &Entry) -> Policy {
    Policy::new(e.timestamp_ms).allow_debug(e.debug)
}

#[test]
fn all_18_real_documents_verify_at_their_own_timestamp_with_every_pcr_and_nonce() {
    for e in real_documents() {
        let mut policy = policy_at(&e);
        for (i, v) in &e.pcrs {
            policy = policy.expect_pcr(*i, v).unwrap();
        }
        if let Some(n) = &e.nonce {
            policy = policy.expect_nonce(n).unwrap();
        }
        let doc = verify(&e.bytes, &policy).unwrap_or_else(|r| panic!("{}: {}\n{:#?}", e.file, r.error, r.report));
        assert_eq!(doc.module_id(), e.module_id, "{}", e.file);
        assert_eq!(doc.timestamp_ms(), e.timestamp_ms);
        assert_eq!(doc.pcrs().len(), e.pcrs.len());
        assert_eq!(doc.public_key().map(<[u8]>::to_vec), e.public_key, "{}", e.file);
        assert_eq!(doc.user_data().map(<[u8]>::to_vec), e.user_data, "{}", e.file);
        assert_eq!(doc.nonce().map(<[u8]>::to_vec), e.nonce, "{}", e.file);
        assert_eq!(doc.is_debug(), e.debug, "{}", e.file);
        assert!(doc.report().verified);
        assert!(doc.report().checks.iter().all(|c| c.status != CheckStatus::Failed));
        assert_eq!(doc.certificates().first().unwrap().sha256, hex::encode(AWS_ROOT_G1_SHA256));
        assert_eq!(doc.certificates().last().unwrap().role, "leaf");
    }
}

#[test]
fn every_real_document_fails_outside_its_leaf_validity() {
    for e in real_documents() {
        for at_s in [e.leaf_not_after_s + 1, e.leaf_not_before_s - 1] {
            let at_ms = u64::try_from(at_s).unwrap() * 1000;
            let err = verify(&e.bytes, &Policy::new(at_ms).allow_debug(true)).unwrap_err();
            match &err.error {
                VerifyError::CertificateTime { which, .. } => {
                    // Intermediates may expire earlier than the leaf, but never later than it starts.
                    if at_s < e.leaf_not_before_s {
                        assert_eq!(which, "leaf", "{}", e.file);
                    }
                }
                other => panic!("{}: expected a validity failure at {at_s}, got {other}", e.file),
            }
            assert_eq!(err.report.first_failure().unwrap().name, "validity");
            // The other checks still ran and passed: the report says precisely what was wrong.
            assert_eq!(err.report.check("signature").unwrap().status, CheckStatus::Passed);
        }
    }
}

#[test]
fn the_negative_vector_fails_on_its_signature() {
    let e = negative_document();
    let err = verify(&e.bytes, &policy_at(&e)).unwrap_err();
    assert_eq!(err.error, VerifyError::BadSignature);
    assert_eq!(err.report.check("chain").unwrap().status, CheckStatus::Passed);
    assert_eq!(err.report.check("signature").unwrap().status, CheckStatus::Failed);
}

#[test]
fn the_broken_as_published_document_fails_to_decode_and_the_repaired_one_verifies() {
    let dir = vectors_dir().join("base-nitro-validator");
    let broken = std::fs::read(dir.join("hinted_real_attestation_as_published.cose")).unwrap();
    let repaired = std::fs::read(dir.join("hinted_real_attestation_repaired.cose")).unwrap();
    let ts = UnverifiedDocument::parse(&repaired).unwrap().unverified_claims().timestamp_ms;
    let err = verify(&broken, &Policy::new(ts)).unwrap_err();
    match &err.error {
        VerifyError::Decode(DecodeError::Cbor { .. } | DecodeError::UnknownField(_)) => {}
        other => panic!("expected a decode failure, got {other}"),
    }
    assert_eq!(err.report.first_failure().unwrap().name, "decode");
    assert_eq!(err.report.check("signature").unwrap().status, CheckStatus::Skipped);
    verify(&repaired, &Policy::new(ts)).unwrap();
}

#[test]
fn debug_mode_documents_are_refused_unless_allowed() {
    let debug_docs: Vec<Entry> = real_documents().into_iter().filter(|e| e.debug).collect();
    assert!(debug_docs.len() >= 5);
    for e in debug_docs {
        let err = verify(&e.bytes, &Policy::new(e.timestamp_ms)).unwrap_err();
        assert_eq!(err.error, VerifyError::DebugMode, "{}", e.file);
        assert!(verify(&e.bytes, &Policy::new(e.timestamp_ms).allow_debug(true)).unwrap().is_debug());
    }
}

#[test]
fn a_wrong_pcr_is_refused_and_named() {
    let e = production_document();
    let (_, pcr0) = e.pcrs.iter().find(|(i, _)| *i == 0).unwrap().clone();
    let mut wrong = pcr0.clone();
    wrong[47] ^= 1;
    let policy = policy_at(&e).expect_pcr(0, &wrong).unwrap();
    let err = verify(&e.bytes, &policy).unwrap_err();
    assert_eq!(
        err.error,
        VerifyError::PcrMismatch { index: 0, expected: hex::encode(&wrong), actual: Some(hex::encode(&pcr0)) }
    );
    assert!(err.to_string().contains(&format!("expected {}, got {}", hex::encode(&wrong), hex::encode(&pcr0))));
    // A PCR the document does not have at all (PCR16 is absent from a 16-PCR document).
    let err = verify(&e.bytes, &policy_at(&e).expect_pcr(16, &[0; 48]).unwrap()).unwrap_err();
    assert!(matches!(err.error, VerifyError::PcrMismatch { index: 16, actual: None, .. }));
}

#[test]
fn a_wrong_or_missing_nonce_is_refused() {
    let with_nonce = real_documents().into_iter().find(|e| e.nonce.as_ref().is_some_and(|n| !n.is_empty())).unwrap();
    let mut wrong = with_nonce.nonce.clone().unwrap();
    wrong[0] ^= 0xff;
    let err = verify(&with_nonce.bytes, &policy_at(&with_nonce).expect_nonce(&wrong).unwrap()).unwrap_err();
    assert!(matches!(err.error, VerifyError::NonceMismatch { actual: Some(_), .. }), "{}", err.error);
    let without = production_document();
    assert!(without.nonce.is_none());
    let err = verify(&without.bytes, &policy_at(&without).expect_nonce(b"fresh").unwrap()).unwrap_err();
    assert_eq!(err.error, VerifyError::NonceMismatch { expected: hex::encode(b"fresh"), actual: None });
}

#[test]
fn freshness_refuses_old_and_future_documents() {
    let e = production_document();
    let ts = e.timestamp_ms;
    let ok = policy_at(&e).with_max_age(Duration::from_secs(300));
    verify(&e.bytes, &ok).unwrap();
    let late = Policy::new(ts + 600_000).with_max_age(Duration::from_secs(300));
    assert_eq!(verify(&e.bytes, &late).unwrap_err().error, VerifyError::TooOld { age_ms: 600_000, max_ms: 300_000 });
    // A document dated 2 minutes after the verification time: the leaf is not valid yet either (NSM leaves
    // start seconds before the document), so the first failure is `validity`; `freshness` fails too.
    let early = Policy::new(ts - 120_000).with_max_age(Duration::from_secs(300));
    let err = verify(&e.bytes, &early).unwrap_err();
    assert!(matches!(err.error, VerifyError::CertificateTime { .. }));
    let freshness = err.report.check("freshness").unwrap();
    assert_eq!(freshness.status, CheckStatus::Failed);
    assert_eq!(freshness.detail, VerifyError::FromTheFuture { ahead_ms: 120_000, skew_ms: 60_000 }.to_string());
    // Within the skew (1 s ahead, leaf already valid) it passes.
    verify(&e.bytes, &Policy::new(ts - 1_000).with_max_age(Duration::from_secs(300))).unwrap();
}

#[test]
fn another_root_is_used_only_when_named() {
    let e = production_document();
    // The AWS root loaded from its PEM is recognised as such.
    let pem = std::fs::read(vectors_dir().join("aws-root-g1/root.pem")).unwrap();
    let aws = TrustAnchor::from_pem(&pem).unwrap();
    assert!(aws.is_aws_root_g1());
    assert_eq!(aws, TrustAnchor::aws_nitro_root_g1());
    verify(&e.bytes, &policy_at(&e).with_root(aws)).unwrap();
    // Naming any other root makes real documents fail on the root check.
    let regional = &UnverifiedDocument::parse(&e.bytes).unwrap().unverified_claims().cabundle[1].clone();
    let other = TrustAnchor::from_der(regional);
    // The regional CA is not self-signed, so it cannot be a root at all.
    assert!(other.is_err());
}

#[test]
fn tagged_documents_verify_and_other_tags_are_refused() {
    let e = production_document();
    let mut tagged = vec![0xd2];
    tagged.extend_from_slice(&e.bytes);
    let doc = UnverifiedDocument::parse(&tagged).unwrap();
    assert!(doc.is_tagged());
    verify(&tagged, &policy_at(&e)).unwrap();
    tagged[0] = 0xd1; // tag 17, COSE_Mac0
    assert!(matches!(
        verify(&tagged, &policy_at(&e)).unwrap_err().error,
        VerifyError::Decode(DecodeError::NotCoseSign1(_))
    ));
}

#[test]
fn oversized_truncated_and_trailing_input_is_refused() {
    let e = production_document();
    let big = vec![0u8; 16 * 1024 + 1];
    assert_eq!(
        verify(&big, &policy_at(&e)).unwrap_err().error,
        VerifyError::Decode(DecodeError::TooLarge { len: 16385, max: 16384 })
    );
    let mut trailing = e.bytes.clone();
    trailing.push(0);
    assert_eq!(
        verify(&trailing, &policy_at(&e)).unwrap_err().error,
        VerifyError::Decode(DecodeError::TrailingBytes(1))
    );
    for cut in [0, 1, 5, 100, e.bytes.len() / 2, e.bytes.len() - 1] {
        let err = verify(&e.bytes[..cut], &policy_at(&e)).unwrap_err();
        assert!(matches!(err.error, VerifyError::Decode(_)), "cut at {cut}: {}", err.error);
    }
}

#[test]
fn the_report_serializes_to_json_with_named_checks() {
    let e = negative_document();
    let err = verify(&e.bytes, &policy_at(&e).expect_pcr(0, &[0; 48]).unwrap()).unwrap_err();
    let json = serde_json::to_value(&err.report).unwrap();
    assert_eq!(json["verified"], false);
    let names: Vec<&str> = json["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["decode", "root", "chain", "validity", "signature", "debug_mode", "pcr0", "nonce", "freshness", "commitment"]
    );
    assert_eq!(json["checks"][4]["status"], "failed");
    assert_eq!(json["checks"][7]["status"], "skipped");
    assert!(json["error"].as_str().unwrap().starts_with("signature:"));
}

#[test]
fn every_pcr16_document_reports_17_pcrs_and_indefinite_maps_decode() {
    let e = real_documents().into_iter().find(|e| e.file.contains("VALID_PCR16")).unwrap();
    let doc = verify(&e.bytes, &policy_at(&e)).unwrap();
    assert_eq!(doc.pcrs().len(), 17);
    assert!(doc.pcr(16).is_some());
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn the_caching_verifier_gives_the_same_outcomes_and_still_catches_tampering() {
    let verifier = Verifier::new();
    for round in 0..2 {
        for e in real_documents() {
            let doc = verifier
                .verify(&e.bytes, &policy_at(&e))
                .unwrap_or_else(|r| panic!("round {round} {}: {}", e.file, r.error));
            assert_eq!(doc.module_id(), e.module_id);
            // Time is never cached.
            let late = u64::try_from(e.leaf_not_after_s + 1).unwrap() * 1000;
            let err = verifier.verify(&e.bytes, &Policy::new(late).allow_debug(true)).unwrap_err();
            assert!(matches!(err.error, VerifyError::CertificateTime { .. }));
        }
    }
    // With the whole chain memoised, a modified intermediate is new bytes: it is checked, and refused.
    let e = production_document();
    let claims = UnverifiedDocument::parse(&e.bytes).unwrap().unverified_claims().clone();
    let at = find(&e.bytes, &claims.cabundle[2]).unwrap() + claims.cabundle[2].len() - 1;
    let mut m = e.bytes.clone();
    m[at] ^= 1;
    let err = verifier.verify(&m, &policy_at(&e)).unwrap_err();
    assert!(matches!(err.error, VerifyError::Certificate { position: 2, .. }), "{}", err.error);
    // And the COSE signature is never memoised.
    let e = negative_document();
    assert_eq!(verifier.verify(&e.bytes, &policy_at(&e)).unwrap_err().error, VerifyError::BadSignature);
}

#[test]
fn commitment_expectations_refuse_user_data_that_is_not_a_commitment() {
    // Real third-party documents carry their own user_data formats (or none): asking for a Veil model
    // must fail on the commitment check, with the reason.
    let e =
        real_documents().into_iter().find(|e| e.user_data.as_ref().is_some_and(|u| u.len() > 10) && !e.debug).unwrap();
    let err = verify(&e.bytes, &policy_at(&e).expect_model("iris", &[0; 48]).unwrap()).unwrap_err();
    match &err.error {
        VerifyError::Commitment(reason) => {
            assert!(reason.contains("not a Veil commitment"), "{reason}")
        }
        other => panic!("{other}"),
    }
    let e = production_document();
    assert!(e.user_data.is_none());
    let err = verify(&e.bytes, &policy_at(&e).expect_config_sha384(&[1; 48]).unwrap()).unwrap_err();
    assert_eq!(err.error, VerifyError::Commitment("the document has no user_data".into()));
    assert!(Policy::new(0).expect_model("iris", &[0; 47]).is_err());
    assert!(Policy::new(0).expect_model("", &[0; 48]).is_err());
}

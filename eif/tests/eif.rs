//! Tests of veil-eif against an EIF writer, a CRC and PCR formulas written independently here,
//! from the format description (not by calling the crate), so that a mistake in the crate cannot
//! cancel itself out.
#![allow(clippy::unwrap_used)]

use ring::digest::{SHA384, digest};
use veil_eif::{
    BuildInfo, EifBuilder, EifError, EifIdentity, Measurements, SectionKind, SignatureCheck, Signer, read_eif,
    read_eif_bytes,
};

// ---------------------------------------------------------------- independent reference code

/// Bitwise CRC-32/ISO-HDLC (no table), written separately from the crate's.
fn ref_crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = 0u32.wrapping_sub(crc & 1);
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// PCR = SHA-384(48 zero bytes || SHA-384(data)).
fn ref_pcr(data: &[u8]) -> String {
    let inner = digest(&SHA384, data);
    let mut buf = vec![0u8; 48];
    buf.extend_from_slice(inner.as_ref());
    hex::encode(digest(&SHA384, &buf))
}

/// PCR `index` of `m` as hex (every image measures PCR0, PCR1 and PCR2).
fn pcr_hex(m: &Measurements, index: u16) -> String {
    hex::encode(m.pcr(index).unwrap())
}

/// Writes an EIF by hand: header, then (type, flags=0, size, data) per section, CRC over all
/// but the CRC field.
fn ref_eif(sections: &[(u16, &[u8])]) -> Vec<u8> {
    let mut offsets = [0u64; 32];
    let mut sizes = [0u64; 32];
    let mut off = 548u64;
    for (i, (_, d)) in sections.iter().enumerate() {
        offsets[i] = off;
        sizes[i] = d.len() as u64;
        off += 12 + d.len() as u64;
    }
    let mut out = Vec::new();
    out.extend_from_slice(b".eif");
    out.extend_from_slice(&4u16.to_be_bytes()); // version
    out.extend_from_slice(&0u16.to_be_bytes()); // flags
    out.extend_from_slice(&(1u64 << 30).to_be_bytes()); // default_mem
    out.extend_from_slice(&2u64.to_be_bytes()); // default_cpus
    out.extend_from_slice(&0u16.to_be_bytes()); // reserved
    out.extend_from_slice(&(sections.len() as u16).to_be_bytes());
    for o in offsets {
        out.extend_from_slice(&o.to_be_bytes());
    }
    for s in sizes {
        out.extend_from_slice(&s.to_be_bytes());
    }
    out.extend_from_slice(&0u32.to_be_bytes()); // unused
    assert_eq!(out.len(), 544);
    out.extend_from_slice(&[0; 4]); // crc, filled below
    for (t, d) in sections {
        out.extend_from_slice(&t.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&(d.len() as u64).to_be_bytes());
        out.extend_from_slice(d);
    }
    fix_crc(&mut out);
    out
}

fn fix_crc(eif: &mut [u8]) {
    let mut covered = eif[..544].to_vec();
    covered.extend_from_slice(&eif[548..]);
    let crc = ref_crc32(&covered);
    eif[544..548].copy_from_slice(&crc.to_be_bytes());
}

const KERNEL: &[u8] = b"synthetic bzImage \x00\x01\x02 kernel bytes";
const CMDLINE: &str = "reboot=k panic=30 pci=off nomodules console=ttyS0 random.trust_cpu=on";
fn ramdisk(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn identity() -> EifIdentity {
    EifIdentity {
        image_name: "veil-enclave".into(),
        image_version: "0.1.0".into(),
        build: BuildInfo {
            build_time: "1970-01-01T00:00:00+00:00".into(),
            build_tool: "veil eif build".into(),
            build_tool_version: "0.1.0".into(),
            operating_system: "Linux".into(),
            kernel_version: "6.1".into(),
        },
        docker_info: serde_json::Value::Null,
        custom: serde_json::json!({"git": "abc123"}),
    }
}

// ---------------------------------------------------------------- PCRs

#[test]
fn pcrs_of_a_hand_written_eif_match_the_independent_formula() {
    let rd0 = ramdisk(1, 200_000); // spans several of the reader's 64 KiB chunks
    let rd1 = ramdisk(2, 777);
    let rd2 = ramdisk(3, 5);
    let meta = br#"{"ImageName":"x"}"#;
    let eif = ref_eif(&[(1, KERNEL), (2, CMDLINE.as_bytes()), (5, meta), (3, &rd0), (3, &rd1), (3, &rd2)]);

    let info = read_eif_bytes(&eif).unwrap();
    let m = info.measurements;
    let cat = |parts: &[&[u8]]| parts.concat();
    assert_eq!(pcr_hex(&m, 0), ref_pcr(&cat(&[KERNEL, CMDLINE.as_bytes(), &rd0, &rd1, &rd2])));
    assert_eq!(pcr_hex(&m, 1), ref_pcr(&cat(&[KERNEL, CMDLINE.as_bytes(), &rd0])));
    assert_eq!(pcr_hex(&m, 2), ref_pcr(&cat(&[&rd1, &rd2])));
    assert_eq!(m.pcr(8), None);
    // The metadata is not measured: PCR0 is not the hash with it included.
    assert_ne!(pcr_hex(&m, 0), ref_pcr(&cat(&[KERNEL, CMDLINE.as_bytes(), meta, &rd0, &rd1, &rd2])));
    // And one hash over the concatenation, not one extend per section.
    let mut chained = [0u8; 48].to_vec();
    for part in [KERNEL, CMDLINE.as_bytes(), &rd0[..], &rd1[..], &rd2[..]] {
        let mut buf = chained.clone();
        buf.extend_from_slice(digest(&SHA384, part).as_ref());
        chained = digest(&SHA384, &buf).as_ref().to_vec();
    }
    assert_ne!(pcr_hex(&m, 0), hex::encode(chained));

    assert_eq!(info.version, 4);
    assert_eq!(info.cmdline, CMDLINE);
    assert_eq!(info.total_size, eif.len() as u64);
    let kinds: Vec<_> = info.sections.iter().map(|s| s.kind).collect();
    use SectionKind::*;
    assert_eq!(kinds, [Kernel, Cmdline, Metadata, Ramdisk, Ramdisk, Ramdisk]);
    assert_eq!(
        info.sections[3].offset,
        548 + 12 + KERNEL.len() as u64 + 12 + CMDLINE.len() as u64 + 12 + meta.len() as u64
    );
    assert_eq!(info.sections[3].sha384, hex::encode(digest(&SHA384, &rd0)));
    assert_eq!(info.metadata.unwrap()["ImageName"], "x");
}

#[test]
fn single_ramdisk_gives_pcr2_of_nothing_and_pcr1_equal_to_pcr0() {
    let rd = ramdisk(9, 1000);
    let eif = ref_eif(&[(1, KERNEL), (2, CMDLINE.as_bytes()), (3, &rd)]);
    let m = read_eif_bytes(&eif).unwrap().measurements;
    assert_eq!(m.pcr(0), m.pcr(1));
    assert_eq!(pcr_hex(&m, 2), ref_pcr(b""));
}

#[test]
fn pcr0_to_2_do_not_depend_on_metadata_or_header_defaults() {
    let rd0 = ramdisk(1, 100);
    let rd1 = ramdisk(2, 100);
    let a = EifBuilder::new(KERNEL, CMDLINE).unwrap().ramdisk(&rd0).ramdisk(&rd1);
    let b = EifBuilder::new(KERNEL, CMDLINE)
        .unwrap()
        .ramdisk(&rd0)
        .ramdisk(&rd1)
        .metadata(&identity())
        .unwrap()
        .defaults(4 << 30, 8);
    let (mut va, mut vb) = (Vec::new(), Vec::new());
    let ma = a.write_to(&mut va).unwrap().measurements;
    let mb = b.write_to(&mut vb).unwrap().measurements;
    assert_ne!(va, vb);
    assert_eq!(ma, mb);
}

// ---------------------------------------------------------------- the builder

#[test]
fn builder_writes_exactly_the_reference_layout() {
    let rd0 = ramdisk(1, 3000);
    let rd1 = ramdisk(2, 10);
    let id = identity();
    let meta = serde_json::to_vec(&id).unwrap();
    let mut built = Vec::new();
    let out = EifBuilder::new(KERNEL, CMDLINE)
        .unwrap()
        .ramdisk(&rd0)
        .ramdisk(&rd1)
        .metadata(&id)
        .unwrap()
        .write_to(&mut built)
        .unwrap();
    let reference = ref_eif(&[(1, KERNEL), (2, CMDLINE.as_bytes()), (5, &meta), (3, &rd0), (3, &rd1)]);
    assert_eq!(built, reference, "builder output differs from the hand-written EIF");
    assert_eq!(out.size, built.len() as u64);
    assert_eq!(out.crc32, u32::from_be_bytes(built[544..548].try_into().unwrap()));
    assert_eq!(out.measurements, read_eif_bytes(&built).unwrap().measurements);
    // The metadata JSON has nitro-cli's field names.
    let text = String::from_utf8(meta).unwrap();
    for key in [
        "\"ImageName\"",
        "\"ImageVersion\"",
        "\"BuildMetadata\"",
        "\"BuildTime\"",
        "\"DockerInfo\"",
        "\"CustomMetadata\"",
    ] {
        assert!(text.contains(key), "{key} missing from {text}");
    }
}

#[test]
fn builds_are_byte_for_byte_reproducible() {
    let rd = ramdisk(5, 4096);
    let build = || {
        let mut v = Vec::new();
        EifBuilder::new(KERNEL, CMDLINE).unwrap().ramdisk(&rd).metadata(&identity()).unwrap().write_to(&mut v).unwrap();
        v
    };
    assert_eq!(build(), build());
}

#[test]
fn aarch64_flag_is_written_and_read() {
    let rd = ramdisk(5, 10);
    let mut v = Vec::new();
    EifBuilder::new(KERNEL, CMDLINE).unwrap().ramdisk(&rd).arch(veil_eif::Arch::Aarch64).write_to(&mut v).unwrap();
    assert_eq!(&v[6..8], &[0, 1]);
    assert_eq!(read_eif_bytes(&v).unwrap().arch, veil_eif::Arch::Aarch64);
}

// ---------------------------------------------------------------- hostile and damaged input

fn small_eif() -> Vec<u8> {
    ref_eif(&[(1, KERNEL), (2, CMDLINE.as_bytes()), (3, &ramdisk(1, 64)), (3, &ramdisk(2, 64))])
}

#[test]
fn every_truncation_is_a_clear_error() {
    let eif = small_eif();
    for len in 0..eif.len() {
        let err = read_eif_bytes(&eif[..len]).expect_err("truncated must fail");
        match err {
            EifError::BadMagic { .. } => assert!(len < 4, "len {len}: {err}"),
            EifError::Truncated { ref what, offset, needed, available } => {
                assert!(available < needed, "len {len}: {err}");
                assert!(offset <= len as u64, "len {len}: {err}");
                assert!(!what.is_empty());
            }
            other => panic!("len {len}: expected truncation, got {other}"),
        }
    }
}

#[test]
fn truncation_message_names_the_section_and_offsets() {
    let eif = small_eif();
    let cut = eif.len() - 10; // inside the last ramdisk
    let err = read_eif_bytes(&eif[..cut]).unwrap_err().to_string();
    assert!(err.contains("section 3 (ramdisk) data"), "{err}");
    assert!(err.contains("needs 64 bytes"), "{err}");
    assert!(err.contains("after 54"), "{err}");
}

#[test]
fn a_flipped_byte_in_any_section_is_a_crc_mismatch() {
    let eif = small_eif();
    for pos in [548 + 12 + 3, eif.len() - 1, 548 + 2 /* a section header's flags field */] {
        let mut bad = eif.clone();
        bad[pos] ^= 0x40;
        let err = read_eif_bytes(&bad).unwrap_err();
        assert!(matches!(err, EifError::CrcMismatch { .. }), "pos {pos}: {err}");
        assert!(err.to_string().contains("corrupted or was modified"));
    }
}

#[test]
fn a_tampered_ramdisk_with_a_recomputed_crc_reads_but_changes_pcr0_and_pcr2_only() {
    // The CRC is no defence against tampering; the PCRs are.
    let eif = small_eif();
    let good = read_eif_bytes(&eif).unwrap().measurements;
    let mut bad = eif.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    fix_crc(&mut bad);
    let m = read_eif_bytes(&bad).unwrap().measurements;
    assert_ne!(m.pcr(0), good.pcr(0));
    assert_eq!(m.pcr(1), good.pcr(1));
    assert_ne!(m.pcr(2), good.pcr(2));
}

#[test]
fn header_and_layout_violations_are_named() {
    let eif = small_eif();
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = eif.clone();
        f(&mut v);
        fix_crc(&mut v);
        read_eif_bytes(&v).unwrap_err()
    };
    // Magic.
    let e = with(&|v| v[0] = b'x');
    assert!(matches!(e, EifError::BadMagic { ref found } if found == "78656966"), "{e}");
    // Version.
    let e = with(&|v| v[5] = 9);
    assert!(matches!(e, EifError::UnsupportedVersion(9)), "{e}");
    // Too many sections (before any allocation sized by it).
    let e = with(&|v| v[26..28].copy_from_slice(&0xffffu16.to_be_bytes()));
    assert!(matches!(e, EifError::TooManySections(0xffff)), "{e}");
    // Fewer sections declared than present: table entry 3 is non-zero.
    let e = with(&|v| v[26..28].copy_from_slice(&3u16.to_be_bytes()));
    assert!(matches!(e, EifError::StraySectionTableEntry { index: 3, .. }), "{e}");
    // Table says a different offset for section 1.
    let e = with(&|v| v[28 + 8..28 + 16].copy_from_slice(&999u64.to_be_bytes()));
    assert!(matches!(e, EifError::SectionTableMismatch { index: 1, declared_offset: 999, .. }), "{e}");
    assert!(e.to_string().contains("section 1 (cmdline)"), "{e}");
    // Unknown section type in section 2's header.
    let s2 = 548 + 12 + KERNEL.len() + 12 + CMDLINE.len();
    let e = with(&|v| v[s2..s2 + 2].copy_from_slice(&7u16.to_be_bytes()));
    assert!(matches!(e, EifError::UnknownSectionType { index: 2, raw: 7, .. }), "{e}");
    let e = with(&|v| v[s2..s2 + 2].copy_from_slice(&0u16.to_be_bytes()));
    assert!(matches!(e, EifError::UnknownSectionType { index: 2, raw: 0, .. }), "{e}");
    // A second kernel.
    let e = with(&|v| v[s2..s2 + 2].copy_from_slice(&1u16.to_be_bytes()));
    assert!(matches!(e, EifError::UnexpectedSection { index: 2, found: SectionKind::Kernel, .. }), "{e}");
    // Trailing bytes.
    let e = with(&|v| v.extend_from_slice(b"extra"));
    assert!(matches!(e, EifError::TrailingData { offset, .. } if offset == eif.len() as u64), "{e}");
}

#[test]
fn hostile_sizes_do_not_allocate_and_are_reported() {
    // A cmdline claiming 2^63 bytes: refused by its limit before allocating.
    let mut v = small_eif();
    let cmd_hdr = 548 + 12 + KERNEL.len();
    let huge = 1u64 << 63;
    v[cmd_hdr + 4..cmd_hdr + 12].copy_from_slice(&huge.to_be_bytes());
    v[28 + 32 * 8 + 8..28 + 32 * 8 + 16].copy_from_slice(&huge.to_be_bytes()); // table agrees
    fix_crc(&mut v);
    let e = read_eif_bytes(&v).unwrap_err();
    assert!(matches!(e, EifError::SectionTooLarge { index: 1, kind: SectionKind::Cmdline, .. }), "{e}");

    // A ramdisk claiming u64::MAX - 10 bytes: streamed, so it is simply truncated (no allocation),
    // or refused as overflowing; never a panic or an OOM.
    let mut v = small_eif();
    let rd_hdr = 548 + 12 + KERNEL.len() + 12 + CMDLINE.len();
    let big = u64::MAX - 10;
    v[rd_hdr + 4..rd_hdr + 12].copy_from_slice(&big.to_be_bytes());
    v[28 + 32 * 8 + 16..28 + 32 * 8 + 24].copy_from_slice(&big.to_be_bytes());
    fix_crc(&mut v);
    let e = read_eif_bytes(&v).unwrap_err();
    assert!(matches!(e, EifError::OffsetOverflow { index: 2 }), "{e}");

    let mut v = small_eif();
    let big = 1u64 << 40;
    v[rd_hdr + 4..rd_hdr + 12].copy_from_slice(&big.to_be_bytes());
    v[28 + 32 * 8 + 16..28 + 32 * 8 + 24].copy_from_slice(&big.to_be_bytes());
    fix_crc(&mut v);
    let e = read_eif_bytes(&v).unwrap_err();
    assert!(matches!(e, EifError::Truncated { needed, .. } if needed == big), "{e}");
}

#[test]
fn random_corruption_never_panics() {
    // A small deterministic fuzz: flip, overwrite and truncate with a xorshift generator.
    let eif = small_eif();
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for _ in 0..3000 {
        let mut v = eif.clone();
        for _ in 0..(next() % 4 + 1) {
            let pos = (next() % v.len() as u64) as usize;
            v[pos] = next() as u8;
        }
        if next() % 3 == 0 {
            fix_crc(&mut v);
        }
        let _ = read_eif_bytes(&v);
    }
}

#[test]
fn streams_from_a_reader_in_small_pieces() {
    struct Trickle<'a>(&'a [u8]);
    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(7).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let eif = small_eif();
    assert_eq!(read_eif(Trickle(&eif)).unwrap().measurements, read_eif_bytes(&eif).unwrap().measurements);
}

// ---------------------------------------------------------------- signing and PCR8

fn test_signer() -> (Signer, rcgen::KeyPair, rcgen::Certificate) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["veil-eif-test".into()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "Veil EIF test signer");
    let cert = params.self_signed(&key).unwrap();
    let signer = Signer::from_pem(key.serialize_pem().as_bytes(), cert.pem().as_bytes()).unwrap();
    (signer, key, cert)
}

#[test]
fn signed_eif_has_pcr8_of_the_certificate_and_a_valid_signature() {
    let (signer, _key, cert) = test_signer();
    let rd0 = ramdisk(1, 500);
    let rd1 = ramdisk(2, 500);
    let mut v = Vec::new();
    let out = EifBuilder::new(KERNEL, CMDLINE)
        .unwrap()
        .ramdisk(&rd0)
        .ramdisk(&rd1)
        .metadata(&identity())
        .unwrap()
        .sign(&signer)
        .write_to(&mut v)
        .unwrap();
    let info = read_eif_bytes(&v).unwrap();
    let expected_pcr8 = ref_pcr(cert.der());
    assert_eq!(hex::encode(info.measurements.pcr(8).unwrap()), expected_pcr8);
    assert_eq!(out.measurements, info.measurements);
    // PCR0-2 are the same as unsigned.
    let mut u = Vec::new();
    let unsigned = EifBuilder::new(KERNEL, CMDLINE).unwrap().ramdisk(&rd0).ramdisk(&rd1).write_to(&mut u).unwrap();
    assert_eq!(
        (unsigned.measurements.pcr(0), unsigned.measurements.pcr(1), unsigned.measurements.pcr(2)),
        (info.measurements.pcr(0), info.measurements.pcr(1), info.measurements.pcr(2))
    );
    let sig = info.signature.unwrap();
    assert_eq!(sig.check, SignatureCheck::Valid);
    assert!(sig.subject.contains("Veil EIF test signer"), "{}", sig.subject);
    assert_eq!(info.sections.last().unwrap().kind, SectionKind::Signature);
    let json = info.measurements.to_json();
    assert_eq!(json["Measurements"]["PCR8"], expected_pcr8);
}

#[test]
fn signature_over_another_pcr0_is_reported_invalid() {
    // Move a valid signature section onto an image with a different ramdisk: the COSE signature
    // still verifies, but it is for another PCR0.
    let (signer, _, _) = test_signer();
    let rd0 = ramdisk(1, 50);
    let mut a = Vec::new();
    EifBuilder::new(KERNEL, CMDLINE).unwrap().ramdisk(&rd0).sign(&signer).write_to(&mut a).unwrap();
    let info = read_eif_bytes(&a).unwrap();
    let sig_sec = info.sections.last().unwrap();
    let sig_bytes = a[(sig_sec.offset + 12) as usize..].to_vec();
    let other = ramdisk(7, 50);
    let forged = ref_eif(&[(1, KERNEL), (2, CMDLINE.as_bytes()), (3, &other), (4, &sig_bytes)]);
    let finfo = read_eif_bytes(&forged).unwrap();
    match finfo.signature.unwrap().check {
        SignatureCheck::Invalid(why) => assert!(why.contains("signature is for PCR0"), "{why}"),
        other => panic!("expected invalid, got {other:?}"),
    }
    // Corrupting the signature bytes themselves (last byte of the COSE signature) fails the ECDSA
    // check. The COSE bytes are stored as an array of small ints; the last element is the last
    // byte of the section.
    let mut bad = a.clone();
    let last = bad.len() - 1;
    bad[last] = if bad[last] == 0x00 { 0x01 } else { 0x00 };
    fix_crc(&mut bad);
    match read_eif_bytes(&bad) {
        Ok(i) => assert!(matches!(i.signature.unwrap().check, SignatureCheck::Invalid(_))),
        Err(e) => assert!(matches!(e, EifError::BadSignatureSection { .. }), "{e}"),
    }
}

#[test]
fn sec1_keys_work_and_mismatched_keys_are_refused() {
    let (_, key, cert) = test_signer();
    // Extract the SEC1 ECPrivateKey from the PKCS#8 DER: it is the content of the OCTET STRING
    // that follows the AlgorithmIdentifier (tag 0x04 at the top level of the outer SEQUENCE).
    let p8 = key.serialize_der();
    let sec1 = {
        // outer: 30 81 xx | 02 01 00 | 30 len ... | 04 81? len content
        let mut i = 2 + usize::from(p8[1] & 0x80 != 0) * usize::from(p8[1] & 0x7f);
        i += 3; // version
        let alg_len = usize::from(p8[i + 1]);
        i += 2 + alg_len;
        assert_eq!(p8[i], 0x04);
        let (len, hdr) = if p8[i + 1] & 0x80 != 0 { (usize::from(p8[i + 2]), 3) } else { (usize::from(p8[i + 1]), 2) };
        p8[i + hdr..i + hdr + len].to_vec()
    };
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&sec1);
    let sec1_pem = format!("-----BEGIN EC PRIVATE KEY-----\n{b64}\n-----END EC PRIVATE KEY-----\n");
    let signer = Signer::from_pem(sec1_pem.as_bytes(), cert.pem().as_bytes()).unwrap();
    assert_eq!(signer.pcr8().to_hex(), ref_pcr(cert.der()));

    let (_, other_key, _) = test_signer();
    let err = Signer::from_pem(other_key.serialize_pem().as_bytes(), cert.pem().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");

    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let err = Signer::from_pem(p256.serialize_pem().as_bytes(), cert.pem().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("P-384"), "{err}");
}

#[test]
fn undecodable_signature_sections_are_errors_with_the_offset() {
    let rd = ramdisk(1, 10);
    let eif = ref_eif(&[(1, KERNEL), (2, CMDLINE.as_bytes()), (3, &rd), (4, b"\x9f not cbor")]);
    let e = read_eif_bytes(&eif).unwrap_err();
    assert!(matches!(e, EifError::BadSignatureSection { index: 3, .. }), "{e}");
    assert!(e.to_string().contains("section 3 (signature) at offset"), "{e}");
}

// ---------------------------------------------------------------- vectors made by AWS's own code

/// Measurements as nitro-cli prints them, from a vector file.
fn vector_measurements(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/data/{name}.measurements.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

const VECTOR_CMDLINE: &str = "reboot=k panic=30 pci=off nomodules console=ttyS0";

#[test]
fn reads_an_unsigned_eif_built_by_aws_with_awss_pcrs() {
    let info = read_eif_bytes(&vector("aws-unsigned.eif")).unwrap();
    assert_eq!(info.measurements.to_json(), vector_measurements("aws-unsigned"));
    assert_eq!(info.version, 4);
    assert_eq!(info.cmdline, VECTOR_CMDLINE);
    assert_eq!(info.default_mem, 1 << 30);
    assert_eq!(info.default_cpus, 2);
    let meta = info.metadata.unwrap();
    assert_eq!(meta["BuildMetadata"]["BuildTime"], "2023-11-14T22:13:20+00:00");
    assert!(info.signature.is_none());
}

#[test]
fn reads_a_signed_eif_built_by_aws_with_pcr8_and_a_valid_signature() {
    let info = read_eif_bytes(&vector("aws-signed.eif")).unwrap();
    assert_eq!(info.measurements.to_json(), vector_measurements("aws-signed"));
    let sig = info.signature.unwrap();
    assert_eq!(sig.check, SignatureCheck::Valid);
    assert!(sig.subject.contains("Veil CLI test signer"), "{}", sig.subject);
}

#[test]
fn builder_reproduces_awss_unsigned_eif_byte_for_byte() {
    let (kernel, init, app) = (vector("kernel"), vector("init.cpio"), vector("app.cpio"));
    let id = EifIdentity {
        image_name: "veil-enclave".into(),
        image_version: "1.0".into(),
        build: BuildInfo {
            build_time: "2023-11-14T22:13:20+00:00".into(),
            build_tool: "veil eif build".into(),
            build_tool_version: "0.1.0".into(),
            operating_system: "Linux".into(),
            kernel_version: "unknown".into(),
        },
        docker_info: serde_json::Value::Null,
        custom: serde_json::Value::Null,
    };
    let mut mine = Vec::new();
    EifBuilder::new(&kernel, VECTOR_CMDLINE)
        .unwrap()
        .ramdisk(&init)
        .ramdisk(&app)
        .metadata(&id)
        .unwrap()
        .write_to(&mut mine)
        .unwrap();
    assert!(mine == vector("aws-unsigned.eif"), "veil-eif's EIF differs from AWS's for the same inputs");
}

#[test]
fn the_aws_vectors_pcrs_match_the_independent_formula() {
    let (kernel, init, app) = (vector("kernel"), vector("init.cpio"), vector("app.cpio"));
    let m = vector_measurements("aws-unsigned");
    let cat = [&kernel[..], VECTOR_CMDLINE.as_bytes(), &init, &app].concat();
    assert_eq!(m["Measurements"]["PCR0"], ref_pcr(&cat));
    assert_eq!(m["Measurements"]["PCR1"], ref_pcr(&[&kernel[..], VECTOR_CMDLINE.as_bytes(), &init].concat()));
    assert_eq!(m["Measurements"]["PCR2"], ref_pcr(&app));
}

//! The X.509 side: the certificate chain `cabundle[0]` (root) → … → `certificate` (leaf).
//!
//! Nitro chains are fixed in shape: every certificate is ECDSA P-384 signed with SHA-384, every CA has
//! critical basic constraints with `cA` true and a key usage with `keyCertSign`, and the leaf is not a
//! CA. We accept exactly that profile, which keeps the code small (no algorithm agility to get wrong).
//! Revocation is not checked: AWS publishes CRLs, but fetching them is I/O, and the chain is short-lived
//! (the leaf lives about three hours).

use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{OID_SIG_ECDSA_WITH_SHA384, OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_KEY_USAGE};
use x509_parser::prelude::FromDer;

use super::error::CertError;

/// DER prefix of a SubjectPublicKeyInfo for an uncompressed P-384 point:
/// SEQUENCE { SEQUENCE { id-ecPublicKey, secp384r1 }, BIT STRING (0 unused bits) 0x04 ... }.
const P384_SPKI_PREFIX: [u8; 24] = [
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00,
    0x22, 0x03, 0x62, 0x00, 0x04,
];
const P384_SPKI_LEN: usize = 120;

/// What a person (or a report) needs to know about one certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CertificateSummary {
    /// 0 is the root; the last one is the leaf.
    pub position: usize,
    /// `root`, `intermediate N` or `leaf`.
    pub role: String,
    pub subject: String,
    pub issuer: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// SHA-256 of the DER, hex.
    pub sha256: String,
}

pub(crate) fn role(position: usize, count: usize) -> String {
    if position == 0 {
        "root".into()
    } else if position + 1 == count {
        "leaf".into()
    } else {
        format!("intermediate {position}")
    }
}

pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(CertError::Malformed(format!("{} trailing byte(s)", rest.len()))),
        Err(e) => Err(CertError::Malformed(e.to_string())),
    }
}

pub(crate) fn summary(cert: &X509Certificate<'_>, der: &[u8], position: usize, count: usize) -> CertificateSummary {
    CertificateSummary {
        position,
        role: role(position, count),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, der)),
    }
}

/// The uncompressed P-384 point of a certificate's key (97 bytes, `04 || x || y`), or an error if the key
/// is anything else.
pub(crate) fn p384_key<'c>(cert: &X509Certificate<'c>) -> Result<&'c [u8], CertError> {
    let raw = cert.tbs_certificate.subject_pki.raw;
    if raw.len() != P384_SPKI_LEN || !raw.starts_with(&P384_SPKI_PREFIX) {
        return Err(CertError::PublicKey);
    }
    raw.get(P384_SPKI_PREFIX.len() - 1..).ok_or(CertError::PublicKey)
}

/// Checks certificate `child` against its issuer `parent` (signature, names, algorithm), and the
/// child's own profile: `cas_below` is how many CA certificates sit between it and the leaf (`None` for
/// the leaf itself).
pub(crate) fn check_link(
    parent: &X509Certificate<'_>,
    child: &X509Certificate<'_>,
    cas_below: Option<usize>,
    cache: Option<&LinkCache>,
) -> Result<(), CertError> {
    if child.issuer().as_raw() != parent.subject().as_raw() {
        return Err(CertError::IssuerMismatch);
    }
    let key = p384_key(parent)?;
    let sig = &child.signature_value;
    if sig.unused_bits != 0 {
        return Err(CertError::BadSignature);
    }
    let cache_key = cache.map(|_| LinkCache::key(parent.as_raw(), child.as_raw()));
    let cached = matches!((cache, &cache_key), (Some(c), Some(k)) if c.contains(k));
    if !cached {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P384_SHA384_ASN1, key)
            .verify(child.tbs_certificate.as_ref(), &sig.data)
            .map_err(|_| CertError::BadSignature)?;
        if let (Some(c), Some(k)) = (cache, cache_key) {
            c.insert(k);
        }
    }
    check_profile(child, cas_below)
}

/// Memo of certificate signatures already checked: "these exact child bytes carry a valid signature by
/// the key in these exact issuer bytes". That fact is a pure function of the two DER encodings, so
/// remembering it changes no outcome; names, profile and validity are still checked every time. Bounded:
/// cleared when full. A client verifying documents from the same enclave shares the root, regional,
/// zonal and instance certificates (and often the leaf) between documents, so warm verification costs one
/// ECDSA P-384 verification (the COSE signature) instead of five.
#[derive(Debug, Default)]
pub(crate) struct LinkCache {
    seen: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
}

impl LinkCache {
    const MAX_ENTRIES: usize = 1024;

    fn key(parent: &[u8], child: &[u8]) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"veil-attestation-link-v1\0");
        ctx.update(&(parent.len() as u64).to_be_bytes());
        ctx.update(parent);
        ctx.update(child);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    fn contains(&self, key: &[u8; 32]) -> bool {
        // A poisoned lock is a miss: fail towards doing the work, never towards skipping it.
        self.seen.lock().map(|s| s.contains(key)).unwrap_or(false)
    }

    fn insert(&self, key: [u8; 32]) {
        if let Ok(mut s) = self.seen.lock() {
            if s.len() >= Self::MAX_ENTRIES {
                s.clear();
            }
            s.insert(key);
        }
    }
}

/// Version, algorithms, key type and extensions of one certificate.
pub(crate) fn check_profile(cert: &X509Certificate<'_>, cas_below: Option<usize>) -> Result<(), CertError> {
    if cert.version().0 != 2 {
        return Err(CertError::NotV3);
    }
    let outer = &cert.signature_algorithm;
    let inner = &cert.tbs_certificate.signature;
    if outer.algorithm != OID_SIG_ECDSA_WITH_SHA384 || outer.parameters.is_some() {
        return Err(CertError::SignatureAlgorithm(outer.algorithm.to_id_string()));
    }
    if inner != outer {
        return Err(CertError::SignatureAlgorithm(format!(
            "{} (differs from the outer algorithm)",
            inner.algorithm.to_id_string()
        )));
    }
    p384_key(cert)?;
    for ext in cert.extensions() {
        if ext.critical && ext.oid != OID_X509_EXT_BASIC_CONSTRAINTS && ext.oid != OID_X509_EXT_KEY_USAGE {
            return Err(CertError::UnknownCriticalExtension(ext.oid.to_id_string()));
        }
    }
    let bc = cert.basic_constraints().map_err(|_| CertError::BasicConstraints("malformed or repeated"))?;
    let ku = cert.key_usage().map_err(|_| CertError::KeyUsage("malformed or repeated"))?;
    match cas_below {
        Some(below) => {
            let bc = bc.ok_or(CertError::BasicConstraints("a CA certificate must have basic constraints"))?;
            if !bc.value.ca {
                return Err(CertError::BasicConstraints("cA is false on a certificate that issues others"));
            }
            if let Some(max) = bc.value.path_len_constraint
                && usize::try_from(max).is_ok_and(|max| below > max)
            {
                return Err(CertError::BasicConstraints("path length constraint exceeded"));
            }
            let ku = ku.ok_or(CertError::KeyUsage("a CA certificate must have a key usage extension"))?;
            if !ku.value.key_cert_sign() {
                return Err(CertError::KeyUsage("keyCertSign is not set on a certificate that issues others"));
            }
        }
        None => {
            if bc.is_some_and(|bc| bc.value.ca) {
                return Err(CertError::BasicConstraints("the leaf certificate must not be a CA"));
            }
            if let Some(ku) = ku
                && !ku.value.digital_signature()
            {
                return Err(CertError::KeyUsage("digitalSignature is not set on the signing certificate"));
            }
        }
    }
    Ok(())
}

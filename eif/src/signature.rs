//! The signature section: PCR8 and the PCR0 signature of signed EIFs.
//!
//! When `nitro-cli build-enclave` gets `--signing-certificate` and `--private-key`, it appends a
//! signature section holding, in CBOR (serde_cbor's encoding), a list of `PcrSignature`s:
//!
//! ```text
//! [ { "signing_certificate": <PEM text as an array of byte values>,
//!     "signature":           <COSE_Sign1 bytes as an array of byte values> } ]
//! ```
//!
//! The COSE_Sign1 (RFC 9052, untagged) signs the CBOR payload
//! `{ "register_index": 0, "register_value": <PCR0 as an array of byte values> }` with the
//! certificate's key; the protected header holds only the algorithm (`{1: -35}`, ES384, for the
//! P-384 keys AWS documents).
//!
//! **PCR8 is the measurement of the certificate, not of the signature**:
//! `PCR8 = SHA-384(0^48 || SHA-384(certificate DER))`. nitro-cli parses the PEM with OpenSSL and
//! hashes `to_der()` of the result; for a certificate that is valid DER (which X.509 requires)
//! that is exactly the base64-decoded PEM body, which is what this module hashes after checking
//! that the body parses as a certificate. The signature itself is not measured: the hypervisor
//! checks it at launch, and PCR8 then tells a verifier *who* signed.

use base64::Engine as _;
use ring::signature::{self as rsig, KeyPair as _};
use veil_protocol::der::tlv;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::cbor::{self, Value, enc};
use crate::measure::{PCR_LEN, Pcr};

/// COSE algorithm numbers (RFC 9053).
const COSE_ES256: i64 = -7;
const COSE_ES384: i64 = -35;
const COSE_ES512: i64 = -36;

/// What the signature section says, decoded and checked as far as this crate can.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SignatureInfo {
    /// PCR8: the measurement of the signing certificate.
    pub pcr8: Pcr,
    /// The signing certificate's subject, in RFC 4514 form.
    pub subject: String,
    /// Its issuer, in RFC 4514 form.
    pub issuer: String,
    /// Its serial number, hex.
    pub serial: String,
    /// Start of its validity, RFC 2822 text (as x509-parser renders ASN.1 times).
    pub not_before: String,
    /// End of its validity.
    pub not_after: String,
    /// Start of validity, Unix seconds (for comparing with a clock the caller owns).
    pub not_before_unix: i64,
    /// End of validity, Unix seconds.
    pub not_after_unix: i64,
    /// SHA-256 fingerprint of the DER certificate, hex (what most tools display).
    pub sha256_fingerprint: String,
    /// The certificate as PEM (re-encoded from its DER).
    #[serde(skip)]
    pub certificate_pem: String,
    /// Whether the COSE_Sign1 signature over PCR0 verifies with the certificate's key.
    pub check: SignatureCheck,
    /// Number of `PcrSignature` entries (nitro-cli writes exactly one, for PCR0).
    pub entries: usize,
}

/// Result of checking the COSE_Sign1 over PCR0 against the certificate's public key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", content = "detail", rename_all = "snake_case")]
pub enum SignatureCheck {
    /// The signature verifies, and its payload names PCR0 with the value this crate computed.
    Valid,
    /// The signature or its payload is wrong; the text says how.
    Invalid(String),
    /// The algorithm is one this crate cannot verify (ES512: ring has no P-521).
    Unsupported(String),
}

/// Decodes a signature section, computes PCR8 and checks the PCR0 signature against `pcr0`.
///
/// Errors are for sections that cannot be decoded at all (bad CBOR, no certificate, a certificate
/// that is not X.509); a decodable section whose signature is wrong is reported in
/// [`SignatureInfo::check`] instead, so that `describe` can still show who claims to have signed.
pub(crate) fn parse_section(section: &[u8], pcr0: &Pcr) -> Result<SignatureInfo, String> {
    let top = cbor::decode(section)?;
    let Value::Array(entries) = &top else {
        return Err(format!("expected a CBOR array of PCR signatures, found {}", top.kind()));
    };
    let first = entries.first().ok_or_else(|| "the list of PCR signatures is empty".to_string())?;
    let cert_pem = first
        .get("signing_certificate")
        .ok_or_else(|| "the first PCR signature has no \"signing_certificate\" field".to_string())?
        .as_byte_vec()
        .map_err(|e| format!("\"signing_certificate\": {e}"))?;
    let cose = first
        .get("signature")
        .ok_or_else(|| "the first PCR signature has no \"signature\" field".to_string())?
        .as_byte_vec()
        .map_err(|e| format!("\"signature\": {e}"))?;

    let der = certificate_der_from_pem(&cert_pem)?;
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| format!("the signing certificate is not valid X.509 DER: {e}"))?;
    let check = verify_cose(&cose, &cert, pcr0);
    let validity = cert.validity();
    Ok(SignatureInfo {
        pcr8: Pcr::of_blob(&der),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string().replace(':', ""),
        not_before: validity.not_before.to_string(),
        not_after: validity.not_after.to_string(),
        not_before_unix: validity.not_before.timestamp(),
        not_after_unix: validity.not_after.timestamp(),
        sha256_fingerprint: hex::encode(ring::digest::digest(&ring::digest::SHA256, &der)),
        certificate_pem: der_to_pem("CERTIFICATE", &der),
        check,
        entries: entries.len(),
    })
}

/// Finds the first PEM block with one of `labels` and returns its base64-decoded body.
fn pem_block(pem: &[u8], labels: &[&str]) -> Result<(String, Vec<u8>), String> {
    let text = std::str::from_utf8(pem).map_err(|_| "the PEM text is not UTF-8".to_string())?;
    for label in labels {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        if let Some(start) = text.find(&begin) {
            let body_start = start + begin.len();
            let body_len =
                text[body_start..].find(&end).ok_or_else(|| format!("PEM block \"{label}\" has no END line"))?;
            let body: String =
                text[body_start..body_start + body_len].chars().filter(|c| !c.is_ascii_whitespace()).collect();
            let der = base64::engine::general_purpose::STANDARD
                .decode(body.as_bytes())
                .map_err(|e| format!("PEM block \"{label}\" is not valid base64: {e}"))?;
            return Ok(((*label).to_string(), der));
        }
    }
    Err(format!("no PEM block labelled {} found", labels.join(" or ")))
}

/// The DER of the first `CERTIFICATE` PEM block.
pub(crate) fn certificate_der_from_pem(pem: &[u8]) -> Result<Vec<u8>, String> {
    pem_block(pem, &["CERTIFICATE"]).map(|(_, der)| der).map_err(|e| format!("signing certificate: {e}"))
}

fn der_to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn cbor_int(v: &Value<'_>) -> Option<i64> {
    match v {
        Value::Uint(n) => i64::try_from(*n).ok(),
        Value::Nint(n) => i64::try_from(*n).ok().map(|n| -1 - n),
        _ => None,
    }
}

/// The `Sig_structure` a COSE_Sign1 signature covers (RFC 9052 §4.4), with empty external AAD.
fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(protected.len() + payload.len() + 32);
    enc::array(&mut out, 4);
    enc::text(&mut out, "Signature1");
    enc::bytes(&mut out, protected);
    enc::bytes(&mut out, &[]);
    enc::bytes(&mut out, payload);
    out
}

fn verify_cose(cose: &[u8], cert: &X509Certificate<'_>, pcr0: &Pcr) -> SignatureCheck {
    let invalid = |s: String| SignatureCheck::Invalid(s);
    let top = match cbor::decode(cose) {
        Ok(v) => v,
        Err(e) => return invalid(format!("COSE_Sign1 is not valid CBOR: {e}")),
    };
    // Tag 18 (COSE_Sign1) is optional; nitro-cli writes it untagged.
    let inner = match &top {
        Value::Tag(18, v) => v.as_ref(),
        v => v,
    };
    let Value::Array(parts) = inner else {
        return invalid(format!("COSE_Sign1 must be an array, found {}", inner.kind()));
    };
    let [Value::Bytes(protected), _unprotected, Value::Bytes(payload), Value::Bytes(sig)] = parts.as_slice() else {
        return invalid("COSE_Sign1 must be [protected bstr, unprotected map, payload bstr, signature bstr]".into());
    };
    let alg = match cbor::decode(protected).ok().as_ref().and_then(|h| match h {
        Value::Map(entries) => entries.iter().find(|(k, _)| cbor_int(k) == Some(1)).and_then(|(_, v)| cbor_int(v)),
        _ => None,
    }) {
        Some(a) => a,
        None => return invalid("the COSE protected header names no algorithm (label 1)".into()),
    };
    let verify_alg: &dyn rsig::VerificationAlgorithm = match alg {
        COSE_ES384 => &rsig::ECDSA_P384_SHA384_FIXED,
        COSE_ES256 => &rsig::ECDSA_P256_SHA256_FIXED,
        COSE_ES512 => {
            return SignatureCheck::Unsupported("ES512 (P-521) signatures cannot be checked by this tool".into());
        }
        other => return invalid(format!("unexpected COSE algorithm {other}")),
    };
    let spki = cert.public_key();
    let key = rsig::UnparsedPublicKey::new(verify_alg, spki.subject_public_key.data.as_ref());
    if key.verify(&sig_structure(protected, payload), sig).is_err() {
        return invalid("the COSE_Sign1 signature does not verify with the signing certificate's public key".into());
    }
    // The signature is genuine; now check it signs *this* image's PCR0.
    let payload = match cbor::decode(payload) {
        Ok(v) => v,
        Err(e) => return invalid(format!("signed payload is not valid CBOR: {e}")),
    };
    let index = payload.get("register_index").and_then(cbor_int);
    let value = payload.get("register_value").map(Value::as_byte_vec);
    match (index, value) {
        (Some(0), Some(Ok(v))) if v == pcr0.0 => SignatureCheck::Valid,
        (Some(0), Some(Ok(v))) => {
            invalid(format!("the signature is for PCR0 {} but this image's PCR0 is {}", hex::encode(v), pcr0.to_hex()))
        }
        (Some(i), _) => invalid(format!("the signature is for PCR{i}, expected PCR0")),
        _ => invalid("the signed payload is not {register_index, register_value}".into()),
    }
}

/// A P-384 signing key and its certificate, ready to sign an EIF the way nitro-cli does.
///
/// Only ECDSA P-384 is supported, which is what the AWS documentation creates
/// (`openssl ecparam -name secp384r1 -genkey`). Note that ECDSA signatures are randomized, so
/// two signed builds of the same inputs differ in the signature bytes (and hence the CRC), while
/// every PCR, PCR8 included, stays the same.
pub struct Signer {
    key: rsig::EcdsaKeyPair,
    cert_pem: Vec<u8>,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Signer").field("pcr8", &Pcr::of_blob(&self.cert_der)).finish_non_exhaustive()
    }
}

/// DER OIDs used to wrap a SEC1 key into PKCS#8 for ring.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_SECP384R1: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// Wraps a SEC1 `ECPrivateKey` (P-384) in a PKCS#8 `PrivateKeyInfo`, the only form ring reads.
fn sec1_to_pkcs8(sec1: &[u8]) -> Vec<u8> {
    let mut alg = OID_EC_PUBLIC_KEY.to_vec();
    alg.extend_from_slice(OID_SECP384R1);
    let mut body = vec![0x02, 0x01, 0x00]; // version 0
    body.extend(tlv(0x30, &alg));
    body.extend(tlv(0x04, sec1));
    tlv(0x30, &body)
}

impl Signer {
    /// Loads a P-384 private key (PEM `EC PRIVATE KEY` or `PRIVATE KEY`) and its certificate
    /// (PEM), and checks that they belong together.
    pub fn from_pem(key_pem: &[u8], cert_pem: &[u8]) -> Result<Self, crate::EifError> {
        let err = crate::EifError::Signing;
        let (label, key_der) =
            pem_block(key_pem, &["EC PRIVATE KEY", "PRIVATE KEY"]).map_err(|e| err(format!("private key: {e}")))?;
        let pkcs8 = if label == "EC PRIVATE KEY" { sec1_to_pkcs8(&key_der) } else { key_der };
        let rng = ring::rand::SystemRandom::new();
        let key = rsig::EcdsaKeyPair::from_pkcs8(&rsig::ECDSA_P384_SHA384_FIXED_SIGNING, &pkcs8, &rng).map_err(
            |e| {
                err(format!(
                    "private key: not an ECDSA P-384 key that includes its public key ({e}); create one with `openssl ecparam -name secp384r1 -genkey -out key.pem`"
                ))
            },
        )?;
        let cert_der = certificate_der_from_pem(cert_pem).map_err(err)?;
        let (_, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|e| err(format!("signing certificate is not valid X.509 DER: {e}")))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key().as_ref() {
            return Err(err(
                "the signing certificate's public key does not match the private key: pass the certificate issued for this key".into(),
            ));
        }
        // Store the certificate as canonical PEM of exactly the DER we measure.
        let cert_pem = der_to_pem("CERTIFICATE", &cert_der).into_bytes();
        Ok(Self { key, cert_pem, cert_der })
    }

    /// PCR8 for images signed with this certificate.
    pub fn pcr8(&self) -> Pcr {
        Pcr::of_blob(&self.cert_der)
    }

    /// The signature section for an image whose PCR0 is `pcr0`.
    pub(crate) fn signature_section(&self, pcr0: &Pcr) -> Result<Vec<u8>, crate::EifError> {
        let mut payload = Vec::with_capacity(2 * PCR_LEN + 40);
        enc::map(&mut payload, 2);
        enc::text(&mut payload, "register_index");
        enc::uint(&mut payload, 0);
        enc::text(&mut payload, "register_value");
        enc::byte_array(&mut payload, &pcr0.0);

        let mut protected = Vec::new();
        enc::map(&mut protected, 1);
        enc::uint(&mut protected, 1);
        enc::nint(&mut protected, (-1 - COSE_ES384) as u64);

        let rng = ring::rand::SystemRandom::new();
        let sig = self
            .key
            .sign(&rng, &sig_structure(&protected, &payload))
            .map_err(|_| crate::EifError::Signing("ECDSA signing failed".into()))?;

        let mut cose = Vec::new();
        enc::array(&mut cose, 4);
        enc::bytes(&mut cose, &protected);
        enc::map(&mut cose, 0);
        enc::bytes(&mut cose, &payload);
        enc::bytes(&mut cose, sig.as_ref());

        let mut section = Vec::new();
        enc::array(&mut section, 1);
        enc::map(&mut section, 2);
        enc::text(&mut section, "signing_certificate");
        enc::byte_array(&mut section, &self.cert_pem);
        enc::text(&mut section, "signature");
        enc::byte_array(&mut section, &cose);
        Ok(section)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sec1_wrapping_produces_the_pkcs8_prefix_openssl_writes() {
        // `openssl pkcs8 -topk8 -nocrypt` of a P-384 SEC1 key starts with
        // 30 81 b6 02 01 00 30 10 06 07 2a8648ce3d0201 06 05 2b81040022 04 81 9e 30 81 9b.
        let sec1 = {
            let mut v = vec![0x30, 0x81, 0x9b];
            v.extend(std::iter::repeat_n(0u8, 0x9b));
            v
        };
        let p8 = sec1_to_pkcs8(&sec1);
        assert_eq!(
            &p8[..28],
            &[
                0x30, 0x81, 0xb6, 0x02, 0x01, 0x00, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
                0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, 0x04, 0x81, 0x9e, 0x30
            ]
        );
    }

    #[test]
    fn pem_errors_name_what_is_missing() {
        let e = certificate_der_from_pem(b"hello").expect_err("no block");
        assert!(e.contains("CERTIFICATE"), "{e}");
        let e = certificate_der_from_pem(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----")
            .expect_err("bad base64");
        assert!(e.contains("base64"), "{e}");
    }
}

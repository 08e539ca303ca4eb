//! Decoding a Nitro attestation document: COSE_Sign1 (RFC 9052 §4.2) around a CBOR payload map.
//!
//! Decoding checks structure, types and sizes only. Nothing decoded here is trustworthy until
//! [`super::verify()`] has checked the chain and signature; hence the type name and the loud accessor
//! [`UnverifiedDocument::unverified_claims`].
//!
//! The limits follow the NSM API's documented payload schema (`attestation_process.md` §3.2), widened where
//! real hardware was seen to differ (zero-length `public_key`).

use std::collections::BTreeMap;

use super::error::DecodeError;
use crate::cbor::{CborError, Len, Reader};

/// Largest accepted document (real ones are 4.4 to 7.6 KiB; three 1024-byte optional fields included).
pub const MAX_DOCUMENT_LEN: usize = 16 * 1024;
/// Most certificates accepted in `cabundle` (AWS sends 4: root, regional, zonal, instance).
pub const MAX_CABUNDLE_LEN: usize = 8;
/// Largest accepted certificate, per the NSM schema (`bstr .size (1..1024)`).
pub const MAX_CERT_LEN: usize = 1024;
/// Largest `public_key`, `user_data` and `nonce`, per AWS's documentation (real hardware accepts 1024).
pub const MAX_OPTIONAL_FIELD_LEN: usize = 1024;
/// Most PCRs in one document (the NSM has 32).
pub const MAX_PCRS: usize = 32;
/// Size of a SHA-384 PCR value.
pub const PCR_LEN: usize = 48;
/// Longest `module_id` accepted (real ones are 39 characters).
pub const MAX_MODULE_ID_LEN: usize = 256;
/// COSE algorithm identifier of ES384 (ECDSA P-384 with SHA-384).
const COSE_ALG_ES384: i128 = -35;
/// CBOR tag of COSE_Sign1.
const COSE_SIGN1_TAG: u64 = 18;

/// The payload fields of an attestation document, as decoded, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Claims {
    /// Enclave module id, `i-<instance>-enc<enclave>`.
    pub module_id: String,
    /// Digest algorithm of the PCRs: always `SHA384` here (others are refused).
    pub digest: String,
    /// When the NSM made the document: milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// PCR index → 48-byte value.
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    /// The leaf (signing) certificate, DER.
    pub certificate: Vec<u8>,
    /// The issuing chain, DER, root first.
    pub cabundle: Vec<Vec<u8>>,
    /// Optional public key (`None` when CBOR `null`).
    pub public_key: Option<Vec<u8>>,
    /// Optional user data (`None` when CBOR `null`).
    pub user_data: Option<Vec<u8>>,
    /// Optional nonce (`None` when CBOR `null`).
    pub nonce: Option<Vec<u8>>,
}

/// A document that decoded cleanly. Nothing in it is verified: use it to show a document to a person,
/// or pass it to [`UnverifiedDocument::verify`].
#[derive(Debug, Clone)]
pub struct UnverifiedDocument {
    pub(crate) tagged: bool,
    pub(crate) protected: Vec<u8>,
    pub(crate) payload: Vec<u8>,
    pub(crate) signature: [u8; 96],
    pub(crate) claims: Claims,
}

impl UnverifiedDocument {
    /// Decodes a COSE_Sign1 attestation document (tagged with tag 18 or untagged), checking every payload
    /// field's presence, type and size. Panic-free and bounded on any input.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_DOCUMENT_LEN {
            return Err(DecodeError::TooLarge { len: bytes.len(), max: MAX_DOCUMENT_LEN });
        }
        let cose = |e: CborError| DecodeError::Cbor { context: "COSE_Sign1", offset: e.offset, reason: e.reason };
        let mut r = Reader::new(bytes);
        let tagged = if r.next_is_tag() {
            let tag = r.tag().map_err(cose)?;
            if tag != COSE_SIGN1_TAG {
                return Err(DecodeError::NotCoseSign1("tagged with a tag other than 18 (COSE_Sign1)"));
            }
            true
        } else {
            false
        };
        let items = r.array().map_err(|_| DecodeError::NotCoseSign1("not a CBOR array"))?;
        if let Len::Definite(n) = items
            && n != 4
        {
            return Err(DecodeError::NotCoseSign1("array does not have 4 elements"));
        }
        let protected = r.bytes().map_err(cose)?;
        check_protected_header(protected)?;
        // The unprotected header is not covered by the signature, so nothing in it can be relied on;
        // it must be a well-formed map, and its contents are ignored.
        skip_map(&mut r).map_err(cose)?;
        if r.next_is_null() {
            return Err(DecodeError::DetachedPayload);
        }
        let payload = r.bytes().map_err(cose)?;
        let signature = r.bytes().map_err(cose)?;
        if items == Len::Indefinite && !r.at_break().map_err(cose)? {
            return Err(DecodeError::NotCoseSign1("array does not have 4 elements"));
        }
        if !r.is_empty() {
            return Err(DecodeError::TrailingBytes(bytes.len() - r.offset()));
        }
        let signature: [u8; 96] = signature.try_into().map_err(|_| DecodeError::SignatureLength(signature.len()))?;
        let claims = parse_payload(payload)?;
        Ok(UnverifiedDocument { tagged, protected: protected.to_vec(), payload: payload.to_vec(), signature, claims })
    }

    /// The decoded payload. **Unverified**: anyone can write these values. Only show them, or use
    /// [`super::VerifiedDocument`] after verification.
    pub fn unverified_claims(&self) -> &Claims {
        &self.claims
    }

    /// Whether the document carried the COSE_Sign1 tag (18).
    pub fn is_tagged(&self) -> bool {
        self.tagged
    }

    /// The COSE protected header, as the bytes of its `bstr` (decoding checked it is exactly `{1: -35}`).
    pub fn protected_header(&self) -> &[u8] {
        &self.protected
    }

    /// The payload, as the bytes of its `bstr`. **Unverified**, like [`Self::unverified_claims`].
    pub fn unverified_payload(&self) -> &[u8] {
        &self.payload
    }

    /// The COSE signature (P-384 `r‖s`), not yet checked.
    pub fn signature(&self) -> &[u8; 96] {
        &self.signature
    }

    /// The COSE Sig_structure that the signature covers: `["Signature1", protected, h'', payload]`.
    pub(crate) fn sig_structure(&self) -> Vec<u8> {
        use crate::cbor::{write_bytes, write_head, write_text};
        let mut out = Vec::with_capacity(self.protected.len() + self.payload.len() + 32);
        write_head(&mut out, 4, 4);
        write_text(&mut out, "Signature1");
        write_bytes(&mut out, &self.protected);
        write_bytes(&mut out, &[]);
        write_bytes(&mut out, &self.payload);
        out
    }
}

/// Skips one map (checking first that it is a map), bounded by the reader's depth limit.
fn skip_map(r: &mut Reader<'_>) -> Result<(), CborError> {
    r.clone().map()?;
    r.skip()
}

/// The protected header must be exactly the map `{1: -35}`: alg ES384 and nothing else (in particular no
/// `crit`, whose semantics we would have to honour).
fn check_protected_header(protected: &[u8]) -> Result<(), DecodeError> {
    if protected.is_empty() {
        return Err(DecodeError::ProtectedHeader("empty; it must name the algorithm ES384"));
    }
    let mut r = Reader::new(protected);
    let bad = |_| DecodeError::ProtectedHeader("not a CBOR map {1: alg}");
    let len = r.map().map_err(bad)?;
    if len != Len::Definite(1) {
        return Err(DecodeError::ProtectedHeader("must contain exactly one entry, alg (1)"));
    }
    if r.int().map_err(bad)? != 1 {
        return Err(DecodeError::ProtectedHeader("its only entry must be alg (1)"));
    }
    if r.int().map_err(|_| DecodeError::ProtectedHeader("alg is not an integer"))? != COSE_ALG_ES384 {
        return Err(DecodeError::ProtectedHeader("alg is not ES384 (-35)"));
    }
    if !r.is_empty() {
        return Err(DecodeError::ProtectedHeader("trailing bytes after the header map"));
    }
    Ok(())
}

const FIELDS: [&str; 9] =
    ["module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle", "public_key", "user_data", "nonce"];

fn parse_payload(payload: &[u8]) -> Result<Claims, DecodeError> {
    let mut r = Reader::new(payload);
    let cbor =
        |context: &'static str| move |e: CborError| DecodeError::Cbor { context, offset: e.offset, reason: e.reason };
    let len = r.map().map_err(cbor("payload"))?;
    if let Len::Definite(n) = len
        && n > FIELDS.len() as u64
    {
        return Err(DecodeError::FieldValue {
            field: "payload",
            reason: format!("map has {n} entries, more than the 9 known fields"),
        });
    }

    let mut module_id = None;
    let mut digest = None;
    let mut timestamp = None;
    let mut pcrs = None;
    let mut certificate = None;
    let mut cabundle = None;
    let mut public_key = None;
    let mut user_data = None;
    let mut nonce = None;
    let mut seen = 0usize;
    loop {
        match len {
            Len::Definite(n) if seen as u64 == n => break,
            Len::Indefinite if r.at_break().map_err(cbor("payload"))? => break,
            _ => {}
        }
        seen += 1;
        if seen > FIELDS.len() {
            return Err(DecodeError::FieldValue {
                field: "payload",
                reason: "more entries than the 9 known fields".into(),
            });
        }
        let key = r.text().map_err(cbor("payload key"))?;
        let Some(&field) = FIELDS.iter().find(|f| **f == key) else {
            return Err(DecodeError::UnknownField(printable(key, 64)));
        };
        let dup = || DecodeError::DuplicateField(field);
        match field {
            "module_id" => {
                let v = r.text().map_err(cbor("module_id"))?;
                size("module_id", v.len(), 1, MAX_MODULE_ID_LEN)?;
                if !v.chars().all(|c| c.is_ascii_graphic()) {
                    return Err(DecodeError::FieldValue {
                        field: "module_id",
                        reason: "contains characters other than printable ASCII".into(),
                    });
                }
                set(&mut module_id, v.to_owned()).map_err(|_| dup())?;
            }
            "digest" => {
                let v = r.text().map_err(cbor("digest"))?;
                if v != "SHA384" {
                    return Err(DecodeError::FieldValue {
                        field: "digest",
                        reason: format!("{:?} is not SHA384", printable(v, 16)),
                    });
                }
                set(&mut digest, v.to_owned()).map_err(|_| dup())?;
            }
            "timestamp" => {
                let v = r.uint().map_err(cbor("timestamp"))?;
                if v == 0 || v > i64::MAX as u64 {
                    return Err(DecodeError::FieldValue {
                        field: "timestamp",
                        reason: format!("{v} is not a plausible time in milliseconds"),
                    });
                }
                set(&mut timestamp, v).map_err(|_| dup())?;
            }
            "pcrs" => {
                let v = parse_pcrs(&mut r)?;
                set(&mut pcrs, v).map_err(|_| dup())?;
            }
            "certificate" => {
                let v = r.bytes().map_err(cbor("certificate"))?;
                size("certificate", v.len(), 1, MAX_CERT_LEN)?;
                set(&mut certificate, v.to_vec()).map_err(|_| dup())?;
            }
            "cabundle" => {
                let v = parse_cabundle(&mut r)?;
                set(&mut cabundle, v).map_err(|_| dup())?;
            }
            "public_key" => set(&mut public_key, optional_bytes(&mut r, "public_key")?).map_err(|_| dup())?,
            "user_data" => set(&mut user_data, optional_bytes(&mut r, "user_data")?).map_err(|_| dup())?,
            "nonce" => set(&mut nonce, optional_bytes(&mut r, "nonce")?).map_err(|_| dup())?,
            _ => return Err(DecodeError::UnknownField(field.to_owned())),
        }
    }
    if !r.is_empty() {
        return Err(DecodeError::FieldValue {
            field: "payload",
            reason: format!("{} trailing byte(s) after the map", payload.len() - r.offset()),
        });
    }
    Ok(Claims {
        module_id: module_id.ok_or(DecodeError::MissingField("module_id"))?,
        digest: digest.ok_or(DecodeError::MissingField("digest"))?,
        timestamp_ms: timestamp.ok_or(DecodeError::MissingField("timestamp"))?,
        pcrs: pcrs.ok_or(DecodeError::MissingField("pcrs"))?,
        certificate: certificate.ok_or(DecodeError::MissingField("certificate"))?,
        cabundle: cabundle.ok_or(DecodeError::MissingField("cabundle"))?,
        // AWS always sends the three optional keys (null when unset); their absence means someone else
        // wrote this map.
        public_key: public_key.ok_or(DecodeError::MissingField("public_key"))?,
        user_data: user_data.ok_or(DecodeError::MissingField("user_data"))?,
        nonce: nonce.ok_or(DecodeError::MissingField("nonce"))?,
    })
}

fn set<T>(slot: &mut Option<T>, value: T) -> Result<(), ()> {
    if slot.is_some() {
        return Err(());
    }
    *slot = Some(value);
    Ok(())
}

fn size(field: &'static str, len: usize, min: usize, max: usize) -> Result<(), DecodeError> {
    if len < min || len > max {
        return Err(DecodeError::FieldSize { field, len, min, max });
    }
    Ok(())
}

/// `bstr / null`. Zero-length byte strings occur in real documents and are kept as `Some(empty)`.
fn optional_bytes(r: &mut Reader<'_>, field: &'static str) -> Result<Option<Vec<u8>>, DecodeError> {
    let cbor = |e: CborError| DecodeError::Cbor { context: field, offset: e.offset, reason: e.reason };
    if r.next_is_null() {
        r.null().map_err(cbor)?;
        return Ok(None);
    }
    let v = r.bytes().map_err(cbor)?;
    size(field, v.len(), 0, MAX_OPTIONAL_FIELD_LEN)?;
    Ok(Some(v.to_vec()))
}

fn parse_pcrs(r: &mut Reader<'_>) -> Result<BTreeMap<u8, Vec<u8>>, DecodeError> {
    let cbor = |e: CborError| DecodeError::Cbor { context: "pcrs", offset: e.offset, reason: e.reason };
    let len = r.map().map_err(cbor)?;
    let mut pcrs = BTreeMap::new();
    loop {
        match len {
            Len::Definite(n) if pcrs.len() as u64 == n => break,
            Len::Indefinite if r.at_break().map_err(cbor)? => break,
            _ => {}
        }
        if pcrs.len() >= MAX_PCRS {
            return Err(DecodeError::FieldSize { field: "pcrs", len: pcrs.len() + 1, min: 1, max: MAX_PCRS });
        }
        let index = r.uint().map_err(cbor)?;
        let index = u8::try_from(index).ok().filter(|i| usize::from(*i) < MAX_PCRS).ok_or_else(|| {
            DecodeError::FieldValue { field: "pcrs", reason: format!("PCR index {index} is not in 0..=31") }
        })?;
        let value = r.bytes().map_err(cbor)?;
        if value.len() != PCR_LEN {
            return Err(DecodeError::FieldValue {
                field: "pcrs",
                reason: format!("PCR{index} is {} bytes, not 48 (SHA-384)", value.len()),
            });
        }
        if pcrs.insert(index, value.to_vec()).is_some() {
            return Err(DecodeError::FieldValue {
                field: "pcrs",
                reason: format!("PCR{index} appears more than once"),
            });
        }
    }
    if pcrs.is_empty() {
        return Err(DecodeError::FieldSize { field: "pcrs", len: 0, min: 1, max: MAX_PCRS });
    }
    Ok(pcrs)
}

fn parse_cabundle(r: &mut Reader<'_>) -> Result<Vec<Vec<u8>>, DecodeError> {
    let cbor = |e: CborError| DecodeError::Cbor { context: "cabundle", offset: e.offset, reason: e.reason };
    let len = r.array().map_err(cbor)?;
    let mut certs = Vec::new();
    loop {
        match len {
            Len::Definite(n) if certs.len() as u64 == n => break,
            Len::Indefinite if r.at_break().map_err(cbor)? => break,
            _ => {}
        }
        if certs.len() >= MAX_CABUNDLE_LEN {
            return Err(DecodeError::FieldSize {
                field: "cabundle",
                len: certs.len() + 1,
                min: 1,
                max: MAX_CABUNDLE_LEN,
            });
        }
        let cert = r.bytes().map_err(cbor)?;
        size("cabundle", cert.len(), 1, MAX_CERT_LEN)?;
        certs.push(cert.to_vec());
    }
    if certs.is_empty() {
        return Err(DecodeError::FieldSize { field: "cabundle", len: 0, min: 1, max: MAX_CABUNDLE_LEN });
    }
    Ok(certs)
}

/// Truncated, escaped form of attacker-chosen text, safe to put in an error message or a terminal.
pub(crate) fn printable(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).flat_map(char::escape_debug).collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

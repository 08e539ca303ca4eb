//! AWS Signature Version 4 on the mock's requests: the `Authorization` header's shape (credential scope
//! for this region and `kms`), and, when the mock was given credentials, the signature itself over the
//! canonical request. HTTP authentication only: nothing here knows keys, policies or operations.
use zeroize::Zeroizing;

use crate::server::KmsError;

/// The parts of a SigV4 `Authorization` header.
#[derive(Debug)]
pub(crate) struct SigV4<'a> {
    access_key: &'a str,
    date: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

impl SigV4<'_> {
    /// The access key id of the credential scope.
    pub(crate) fn access_key(&self) -> &str {
        self.access_key
    }
}

/// Checks the SigV4 `Authorization` header's shape: `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/kms/aws4_request,
/// SignedHeaders=..., Signature=HEX`, with this KMS's region. The signature is checked by [`verify_signature`],
/// and only when the mock was given credentials.
pub(crate) fn check_authorization<'a>(header: Option<&'a str>, region: &str) -> Result<SigV4<'a>, KmsError> {
    let header = header.ok_or_else(|| {
        KmsError::new("MissingAuthenticationTokenException", "the request has no SigV4 Authorization header")
    })?;
    let incomplete = |why: &str| KmsError::new("IncompleteSignatureException", format!("Authorization header: {why}"));
    let rest =
        header.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| incomplete("the algorithm must be AWS4-HMAC-SHA256"))?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let credential = credential.ok_or_else(|| incomplete("Credential is missing"))?;
    let signed_headers = signed_headers.ok_or_else(|| incomplete("SignedHeaders is missing"))?;
    let signature = signature.ok_or_else(|| incomplete("Signature is missing"))?;
    if signature.len() != 64 || !signature.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(incomplete("Signature must be 64 hex digits"));
    }
    if !signed_headers.split(';').any(|h| h == "host") {
        return Err(incomplete("SignedHeaders must include host"));
    }
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key, date, scope_region, service, terminal] = scope[..] else {
        return Err(incomplete("Credential must be ACCESS_KEY/DATE/REGION/SERVICE/aws4_request"));
    };
    if access_key.is_empty()
        || date.len() != 8
        || !date.bytes().all(|c| c.is_ascii_digit())
        || terminal != "aws4_request"
    {
        return Err(incomplete("Credential must be ACCESS_KEY/YYYYMMDD/REGION/SERVICE/aws4_request"));
    }
    if service != "kms" {
        return Err(KmsError::new(
            "InvalidSignatureException",
            format!("credential scope names service {service:?}, not kms"),
        ));
    }
    if scope_region != region {
        return Err(KmsError::new(
            "InvalidSignatureException",
            format!("credential scope names region {scope_region:?}; this KMS serves {region:?}"),
        ));
    }
    Ok(SigV4 { access_key, date, signed_headers, signature })
}

/// Recomputes the SigV4 signature (canonical request → string to sign → HMAC chain from the secret) and
/// compares it in constant time. Request time is not checked against the clock (no replay protection).
pub(crate) fn verify_signature(
    sig: &SigV4<'_>,
    parts: &hyper::http::request::Parts,
    body: &[u8],
    region: &str,
    access_key: &str,
    secret: &str,
) -> Result<(), KmsError> {
    use ring::hmac;
    let invalid = |why: &str| KmsError::new("InvalidSignatureException", why.to_owned());
    if sig.access_key != access_key {
        return Err(KmsError::new("UnrecognizedClientException", "the access key id is not known to this KMS"));
    }
    let amz_date = parts
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| invalid("X-Amz-Date is required"))?;
    if !amz_date.starts_with(sig.date) {
        return Err(invalid("X-Amz-Date does not match the credential scope's date"));
    }
    let mut canonical_headers = String::new();
    for name in sig.signed_headers.split(';') {
        let values: Vec<String> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().map(|s| s.split_whitespace().collect::<Vec<_>>().join(" ")))
            .collect::<Result<_, _>>()
            .map_err(|_| invalid("a signed header is not text"))?;
        if values.is_empty() {
            return Err(invalid("a signed header is missing"));
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let mut query: Vec<&str> = parts.uri.query().unwrap_or("").split('&').filter(|q| !q.is_empty()).collect();
    query.sort_unstable();
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        parts.method,
        parts.uri.path(),
        query.join("&"),
        canonical_headers,
        sig.signed_headers,
        hex::encode(ring::digest::digest(&ring::digest::SHA256, body))
    );
    let scope = format!("{}/{region}/kms/aws4_request", sig.date);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, canonical_request.as_bytes()))
    );
    let mut key = Zeroizing::new(format!("AWS4{secret}").into_bytes());
    for part in [sig.date, region, "kms", "aws4_request"] {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), part.as_bytes());
        key = Zeroizing::new(tag.as_ref().to_vec());
    }
    let given = hex::decode(sig.signature).map_err(|_| invalid("Signature must be hex"))?;
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, &key), string_to_sign.as_bytes(), &given)
        .map_err(|_| invalid("the request signature does not match (check the secret access key)"))
}

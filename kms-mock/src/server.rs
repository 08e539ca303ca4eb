//! The KMS JSON 1.1 endpoint: HTTP parsing, SigV4 header checks, and the operations.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::blob;
use crate::policy::{KeyPolicy, RequestContext};
use crate::store::{KeyStore, StoredKey};
use veil_protocol::attestation::{Policy as AttestationPolicy, TrustAnchor, Verifier};

/// Largest request body accepted (KMS's own largest input, a 6 KiB ciphertext or 32 KiB policy, fits).
pub const MAX_BODY: usize = 64 * 1024;
/// Largest `Encrypt` plaintext (as KMS).
pub const MAX_PLAINTEXT: usize = 4096;
/// Largest ciphertext blob accepted by `Decrypt` (as KMS).
pub const MAX_CIPHERTEXT: usize = 6144;
/// Largest attestation document accepted in `Recipient`.
pub const MAX_ATTESTATION: usize = veil_protocol::attestation::MAX_DOCUMENT_LEN;

/// An AWS-shaped error: `{"__type": name, "message": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {message}")]
pub struct KmsError {
    /// The `__type`, e.g. `AccessDeniedException`.
    pub name: &'static str,
    /// Human-readable; never contains key material or plaintext.
    pub message: String,
    /// HTTP status (400 for client errors, 500 for `KMSInternalException`).
    pub status: u16,
}

impl KmsError {
    pub(crate) fn new_pub(name: &'static str, message: impl Into<String>) -> Self {
        Self::new(name, message)
    }
    fn new(name: &'static str, message: impl Into<String>) -> Self {
        Self { name, message: message.into(), status: 400 }
    }
    pub(crate) fn validation(message: impl Into<String>) -> Self {
        Self::new("ValidationException", message)
    }
    fn denied(message: impl Into<String>) -> Self {
        Self::new("AccessDeniedException", message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new("NotFoundException", message)
    }
    fn invalid_ciphertext() -> Self {
        Self::new("InvalidCiphertextException", "the ciphertext is invalid or does not match the encryption context")
    }
    fn internal(message: impl Into<String>) -> Self {
        Self { name: "KMSInternalException", message: message.into(), status: 500 }
    }
    /// The JSON body KMS sends.
    pub fn body(&self) -> Value {
        json!({"__type": self.name, "message": self.message})
    }
}

/// Everything the operations share.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) region: String,
    pub(crate) account: String,
    pub(crate) store: Mutex<KeyStore>,
    pub(crate) roots: Vec<TrustAnchor>,
    pub(crate) verifier: Verifier,
    /// `(access key id, secret)` to verify SigV4 signatures with; `None` accepts any.
    pub(crate) credentials: Option<(String, Zeroizing<String>)>,
}

/// A key id is a lowercase UUID: returns it if so.
pub(crate) fn valid_key_id(id: &str) -> Option<&str> {
    let b = id.as_bytes();
    let ok = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) { *c == b'-' } else { c.is_ascii_digit() || (b'a'..=b'f').contains(c) }
        });
    ok.then_some(id)
}

fn new_key_id() -> Result<String, KmsError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| KmsError::internal("random generator failed"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]))
}

fn random_bytes(n: usize) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    use ring::rand::SecureRandom;
    let mut out = Zeroizing::new(vec![0u8; n]);
    ring::rand::SystemRandom::new().fill(&mut out).map_err(|_| KmsError::internal("random generator failed"))?;
    Ok(out)
}

fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn decode_b64(field: &str, value: &str, max: usize) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    if value.len() > max.div_ceil(3) * 4 + 4 {
        return Err(KmsError::validation(format!("{field} is longer than {max} bytes")));
    }
    let bytes =
        Zeroizing::new(B64.decode(value).map_err(|_| KmsError::validation(format!("{field} is not valid base64")))?);
    if bytes.is_empty() || bytes.len() > max {
        return Err(KmsError::validation(format!("{field} must be 1..={max} bytes")));
    }
    Ok(bytes)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Recipient {
    key_encryption_algorithm: Option<String>,
    attestation_document: Option<String>,
}

/// The verified recipient: its RSA public key and its PCRs, for conditions.
struct VerifiedRecipient {
    public_key: Vec<u8>,
    pcrs: BTreeMap<u8, Vec<u8>>,
}

impl State {
    fn arn(&self, key_id: &str) -> String {
        format!("arn:aws:kms:{}:{}:key/{}", self.region, self.account, key_id)
    }

    /// Resolves a `KeyId` given as a UUID or a key ARN of this region and account.
    fn resolve(&self, key_id: Option<&str>) -> Result<String, KmsError> {
        let key_id = key_id.ok_or_else(|| KmsError::validation("KeyId is required"))?;
        if key_id.is_empty() || key_id.len() > 2048 {
            return Err(KmsError::validation("KeyId must be 1..=2048 characters"));
        }
        let id = match key_id.strip_prefix(&format!("arn:aws:kms:{}:{}:key/", self.region, self.account)) {
            Some(id) => id,
            None if key_id.starts_with("arn:") => {
                return Err(KmsError::not_found(format!("key {key_id} is not in this region and account")));
            }
            None if key_id.starts_with("alias/") => {
                return Err(KmsError::not_found("aliases are not supported by the mock KMS; use the key id or ARN"));
            }
            None => key_id,
        };
        let id = valid_key_id(id).ok_or_else(|| KmsError::not_found(format!("invalid key id {key_id:?}")))?;
        let store = self.store.lock().map_err(|_| KmsError::internal("key store lock poisoned"))?;
        if store.get(id).is_none() {
            return Err(KmsError::not_found(format!("key '{}' does not exist", self.arn(id))));
        }
        Ok(id.to_owned())
    }

    fn key(&self, id: &str) -> Result<StoredKey, KmsError> {
        let store = self.store.lock().map_err(|_| KmsError::internal("key store lock poisoned"))?;
        store.get(id).cloned().ok_or_else(|| KmsError::not_found(format!("key '{}' does not exist", self.arn(id))))
    }

    fn authorize(&self, key: &StoredKey, action: &str, ctx: &RequestContext) -> Result<(), KmsError> {
        let policy = KeyPolicy::parse(&key.policy).map_err(|e| KmsError::internal(e.to_string()))?;
        policy.evaluate(&self.account, action, ctx).map_err(|d| {
            tracing::info!(key_id = %key.key_id, action, reason = %d, "denied by key policy");
            KmsError::denied(format!("{d} (key {})", self.arn(&key.key_id)))
        })
    }

    /// Checks a `Recipient`: the algorithm, then the document with the same verifier as everywhere, against
    /// the configured root(s), at the current time.
    fn verify_recipient(&self, recipient: &Value) -> Result<VerifiedRecipient, KmsError> {
        let r: Recipient = serde_json::from_value(recipient.clone())
            .map_err(|e| KmsError::validation(format!("Recipient is malformed: {e}")))?;
        match r.key_encryption_algorithm.as_deref() {
            Some("RSAES_OAEP_SHA_256") => {}
            other => {
                return Err(KmsError::validation(format!(
                    "Recipient.KeyEncryptionAlgorithm must be RSAES_OAEP_SHA_256, got {other:?}"
                )));
            }
        }
        let doc =
            r.attestation_document.ok_or_else(|| KmsError::validation("Recipient.AttestationDocument is required"))?;
        let doc = decode_b64("Recipient.AttestationDocument", &doc, MAX_ATTESTATION)?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let mut first_error = None;
        for root in &self.roots {
            // Like KMS, a debug-mode document (PCR0..2 all zero) is accepted here: it is the key policy's
            // PCR conditions that refuse it, with a message naming the condition.
            let policy = AttestationPolicy::new(now_ms).with_root(root.clone()).allow_debug(true);
            match self.verifier.verify(&doc, &policy) {
                Ok(verified) => {
                    let public_key = verified
                        .public_key()
                        .filter(|k| !k.is_empty())
                        .ok_or_else(|| KmsError::validation("the attestation document has no public_key"))?
                        .to_vec();
                    return Ok(VerifiedRecipient { public_key, pcrs: verified.pcrs().clone() });
                }
                Err(rejected) => {
                    first_error.get_or_insert(rejected.error.to_string());
                }
            }
        }
        let why = first_error.unwrap_or_else(|| "no attestation root is configured".to_owned());
        tracing::info!(reason = %why, "recipient attestation document refused");
        Err(KmsError::denied(format!("the Recipient attestation document did not verify: {why}")))
    }

    fn for_recipient(recipient: &VerifiedRecipient, plaintext: &[u8]) -> Result<String, KmsError> {
        let cms = crate::cms::ciphertext_for_recipient(&recipient.public_key, plaintext)
            .map_err(|e| KmsError::validation(e.to_string()))?;
        Ok(B64.encode(cms))
    }
}

fn str_field<'a>(req: &'a Value, name: &str) -> Result<Option<&'a str>, KmsError> {
    match req.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(KmsError::validation(format!("{name} must be a string"))),
    }
}

fn int_field(req: &Value, name: &str) -> Result<Option<i64>, KmsError> {
    match req.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| KmsError::validation(format!("{name} must be an integer"))),
    }
}

fn encryption_context(req: &Value) -> Result<BTreeMap<String, String>, KmsError> {
    match req.get("EncryptionContext") {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) if !k.is_empty() => Ok((k.clone(), s.clone())),
                _ => Err(KmsError::validation("EncryptionContext must map non-empty strings to strings")),
            })
            .collect(),
        Some(_) => Err(KmsError::validation("EncryptionContext must be an object")),
    }
}

fn check_algorithm(req: &Value) -> Result<(), KmsError> {
    match str_field(req, "EncryptionAlgorithm")? {
        None | Some("SYMMETRIC_DEFAULT") => Ok(()),
        Some(other) => {
            Err(KmsError::validation(format!("EncryptionAlgorithm {other:?} is not valid for a SYMMETRIC_DEFAULT key")))
        }
    }
}

fn check_dry_run(req: &Value) -> Result<(), KmsError> {
    if req.get("DryRun").and_then(Value::as_bool) == Some(true) {
        return Err(KmsError::new("DryRunOperationException", "the request would have succeeded (DryRun)"));
    }
    Ok(())
}

/// Runs one operation. `target` is the part after `TrentService.`.
pub(crate) fn dispatch(state: &State, target: &str, req: &Value) -> Result<Value, KmsError> {
    if !req.is_object() {
        return Err(KmsError::new("SerializationException", "the request body must be a JSON object"));
    }
    match target {
        "CreateKey" => create_key(state, req),
        "DescribeKey" => describe_key(state, req),
        "ListKeys" => list_keys(state, req),
        "GenerateDataKey" => generate_data_key(state, req),
        "Encrypt" => encrypt(state, req),
        "Decrypt" => decrypt(state, req),
        "GenerateRandom" => generate_random(state, req),
        "GetKeyPolicy" => get_key_policy(state, req),
        "PutKeyPolicy" => put_key_policy(state, req),
        _ => Err(KmsError::new("UnknownOperationException", format!("the mock KMS does not implement {target:?}"))),
    }
}

fn metadata(state: &State, key: &StoredKey) -> Value {
    json!({
        "AWSAccountId": state.account,
        "KeyId": key.key_id,
        "Arn": state.arn(&key.key_id),
        "CreationDate": key.creation_date,
        "Enabled": true,
        "Description": key.description,
        "KeyUsage": "ENCRYPT_DECRYPT",
        "KeyState": "Enabled",
        "Origin": "AWS_KMS",
        "KeyManager": "CUSTOMER",
        "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
        "KeySpec": "SYMMETRIC_DEFAULT",
        "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
        "MultiRegion": false,
    })
}

fn create_key(state: &State, req: &Value) -> Result<Value, KmsError> {
    let policy = match str_field(req, "Policy")? {
        Some(p) => {
            KeyPolicy::parse(p).map_err(|e| KmsError::new("MalformedPolicyDocumentException", e.to_string()))?;
            p.to_owned()
        }
        None => KeyPolicy::default_for_account(&state.account),
    };
    let description = str_field(req, "Description")?.unwrap_or("").to_owned();
    if description.len() > 8192 {
        return Err(KmsError::validation("Description must be at most 8192 characters"));
    }
    if let Some(u) = str_field(req, "KeyUsage")?.filter(|u| *u != "ENCRYPT_DECRYPT") {
        return Err(KmsError::validation(format!(
            "KeyUsage {u:?} is not supported by the mock (ENCRYPT_DECRYPT only)"
        )));
    }
    for field in ["KeySpec", "CustomerMasterKeySpec"] {
        if let Some(s) = str_field(req, field)?.filter(|s| *s != "SYMMETRIC_DEFAULT") {
            return Err(KmsError::validation(format!(
                "{field} {s:?} is not supported by the mock (SYMMETRIC_DEFAULT only)"
            )));
        }
    }
    let material = random_bytes(32)?;
    let mut m = Zeroizing::new([0u8; 32]);
    m.copy_from_slice(&material);
    let key = StoredKey::new(new_key_id()?, now_secs(), description, policy, &m);
    let out = json!({"KeyMetadata": metadata(state, &key)});
    let mut store = state.store.lock().map_err(|_| KmsError::internal("key store lock poisoned"))?;
    if store.keys().len() >= crate::store::MAX_KEYS {
        return Err(KmsError::new("LimitExceededException", "the mock's key store is full"));
    }
    tracing::info!(key_id = %key.key_id, "key created");
    store.insert(key).map_err(|e| KmsError::internal(e.to_string()))?;
    Ok(out)
}

fn describe_key(state: &State, req: &Value) -> Result<Value, KmsError> {
    let id = state.resolve(str_field(req, "KeyId")?)?;
    let key = state.key(&id)?;
    state.authorize(&key, "kms:DescribeKey", &RequestContext::new())?;
    Ok(json!({"KeyMetadata": metadata(state, &key)}))
}

fn list_keys(state: &State, req: &Value) -> Result<Value, KmsError> {
    let limit = int_field(req, "Limit")?.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(KmsError::validation("Limit must be 1..=1000"));
    }
    let start = match str_field(req, "Marker")? {
        None => 0,
        Some(m) => m.parse::<usize>().map_err(|_| KmsError::validation("Marker is not one this KMS gave"))?,
    };
    let store = state.store.lock().map_err(|_| KmsError::internal("key store lock poisoned"))?;
    let all = store.keys();
    let end = start.saturating_add(usize::try_from(limit).unwrap_or(1000)).min(all.len());
    let keys: Vec<Value> = all
        .get(start..end)
        .unwrap_or(&[])
        .iter()
        .map(|k| json!({"KeyId": k.key_id, "KeyArn": state.arn(&k.key_id)}))
        .collect();
    let mut out = json!({"Keys": keys, "Truncated": end < all.len()});
    if end < all.len() {
        out["NextMarker"] = json!(end.to_string());
    }
    Ok(out)
}

fn recipient_of(state: &State, req: &Value) -> Result<Option<VerifiedRecipient>, KmsError> {
    match req.get("Recipient") {
        None | Some(Value::Null) => Ok(None),
        Some(r) => state.verify_recipient(r).map(Some),
    }
}

fn generate_data_key(state: &State, req: &Value) -> Result<Value, KmsError> {
    let id = state.resolve(str_field(req, "KeyId")?)?;
    let len = match (str_field(req, "KeySpec")?, int_field(req, "NumberOfBytes")?) {
        (Some("AES_256"), None) => 32,
        (Some("AES_128"), None) => 16,
        (Some(other), None) => {
            return Err(KmsError::validation(format!("KeySpec {other:?} must be AES_256 or AES_128")));
        }
        (None, Some(n)) if (1..=1024).contains(&n) => usize::try_from(n).unwrap_or(32),
        (None, Some(_)) => return Err(KmsError::validation("NumberOfBytes must be 1..=1024")),
        (None, None) => return Err(KmsError::validation("one of KeySpec or NumberOfBytes is required")),
        (Some(_), Some(_)) => return Err(KmsError::validation("give KeySpec or NumberOfBytes, not both")),
    };
    let context = encryption_context(req)?;
    let recipient = recipient_of(state, req)?;
    let key = state.key(&id)?;
    let mut ctx = RequestContext::new();
    ctx.set_encryption_context(&context);
    if let Some(r) = &recipient {
        ctx.set_attestation(&r.pcrs);
    }
    state.authorize(&key, "kms:GenerateDataKey", &ctx)?;
    check_dry_run(req)?;
    let material = key.material().ok_or_else(|| KmsError::internal("damaged key material"))?;
    let data_key = random_bytes(len)?;
    let blob = blob::seal(&id, &material, &context, &data_key).map_err(|e| KmsError::internal(e.to_string()))?;
    let mut out = json!({"KeyId": state.arn(&id), "CiphertextBlob": B64.encode(blob)});
    match &recipient {
        Some(r) => out["CiphertextForRecipient"] = json!(State::for_recipient(r, &data_key)?),
        None => out["Plaintext"] = json!(B64.encode(&*data_key)),
    }
    Ok(out)
}

fn encrypt(state: &State, req: &Value) -> Result<Value, KmsError> {
    let id = state.resolve(str_field(req, "KeyId")?)?;
    let plaintext = str_field(req, "Plaintext")?.ok_or_else(|| KmsError::validation("Plaintext is required"))?;
    let plaintext = decode_b64("Plaintext", plaintext, MAX_PLAINTEXT)?;
    check_algorithm(req)?;
    let context = encryption_context(req)?;
    let key = state.key(&id)?;
    let mut ctx = RequestContext::new();
    ctx.set_encryption_context(&context);
    state.authorize(&key, "kms:Encrypt", &ctx)?;
    check_dry_run(req)?;
    let material = key.material().ok_or_else(|| KmsError::internal("damaged key material"))?;
    let blob = blob::seal(&id, &material, &context, &plaintext).map_err(|e| KmsError::internal(e.to_string()))?;
    Ok(json!({"KeyId": state.arn(&id), "CiphertextBlob": B64.encode(blob), "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}))
}

fn decrypt(state: &State, req: &Value) -> Result<Value, KmsError> {
    let ciphertext =
        str_field(req, "CiphertextBlob")?.ok_or_else(|| KmsError::validation("CiphertextBlob is required"))?;
    let ciphertext = decode_b64("CiphertextBlob", ciphertext, MAX_CIPHERTEXT)?;
    check_algorithm(req)?;
    let context = encryption_context(req)?;
    let blob_key = blob::key_id(&ciphertext).map_err(|_| KmsError::invalid_ciphertext())?;
    let blob_key = valid_key_id(blob_key).ok_or_else(KmsError::invalid_ciphertext)?.to_owned();
    if let Some(given) = str_field(req, "KeyId")? {
        let given = state.resolve(Some(given))?;
        if given != blob_key {
            return Err(KmsError::new(
                "IncorrectKeyException",
                "the ciphertext was not encrypted under the KMS key given in KeyId",
            ));
        }
    }
    let key = state.key(&blob_key).map_err(|_| KmsError::invalid_ciphertext())?;
    let recipient = recipient_of(state, req)?;
    let mut ctx = RequestContext::new();
    ctx.set_encryption_context(&context);
    if let Some(r) = &recipient {
        ctx.set_attestation(&r.pcrs);
    }
    state.authorize(&key, "kms:Decrypt", &ctx)?;
    check_dry_run(req)?;
    let material = key.material().ok_or_else(|| KmsError::internal("damaged key material"))?;
    let plaintext = blob::open(&ciphertext, &material, &context).map_err(|_| KmsError::invalid_ciphertext())?;
    let mut out = json!({"KeyId": state.arn(&blob_key), "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"});
    match &recipient {
        Some(r) => out["CiphertextForRecipient"] = json!(State::for_recipient(r, &plaintext)?),
        None => out["Plaintext"] = json!(B64.encode(&*plaintext)),
    }
    Ok(out)
}

fn generate_random(state: &State, req: &Value) -> Result<Value, KmsError> {
    let n = int_field(req, "NumberOfBytes")?.ok_or_else(|| KmsError::validation("NumberOfBytes is required"))?;
    let n = usize::try_from(n)
        .ok()
        .filter(|n| (1..=1024).contains(n))
        .ok_or_else(|| KmsError::validation("NumberOfBytes must be 1..=1024"))?;
    if str_field(req, "CustomKeyStoreId")?.is_some() {
        return Err(KmsError::new("CustomKeyStoreNotFoundException", "the mock KMS has no custom key stores"));
    }
    let recipient = recipient_of(state, req)?;
    let bytes = random_bytes(n)?;
    Ok(match &recipient {
        Some(r) => json!({"CiphertextForRecipient": State::for_recipient(r, &bytes)?}),
        None => json!({"Plaintext": B64.encode(&*bytes)}),
    })
}

fn policy_name(req: &Value) -> Result<(), KmsError> {
    match str_field(req, "PolicyName")? {
        None | Some("default") => Ok(()),
        Some(_) => Err(KmsError::not_found("the only key policy name is \"default\"")),
    }
}

fn get_key_policy(state: &State, req: &Value) -> Result<Value, KmsError> {
    let id = state.resolve(str_field(req, "KeyId")?)?;
    policy_name(req)?;
    let key = state.key(&id)?;
    state.authorize(&key, "kms:GetKeyPolicy", &RequestContext::new())?;
    Ok(json!({"Policy": key.policy, "PolicyName": "default"}))
}

fn put_key_policy(state: &State, req: &Value) -> Result<Value, KmsError> {
    let id = state.resolve(str_field(req, "KeyId")?)?;
    policy_name(req)?;
    let policy = str_field(req, "Policy")?.ok_or_else(|| KmsError::validation("Policy is required"))?;
    KeyPolicy::parse(policy).map_err(|e| KmsError::new("MalformedPolicyDocumentException", e.to_string()))?;
    let key = state.key(&id)?;
    state.authorize(&key, "kms:PutKeyPolicy", &RequestContext::new())?;
    let mut store = state.store.lock().map_err(|_| KmsError::internal("key store lock poisoned"))?;
    store.set_policy(&id, policy.to_owned()).map_err(|e| KmsError::internal(e.to_string()))?;
    tracing::info!(key_id = %id, "key policy replaced");
    Ok(json!({}))
}

/// The parts of a SigV4 `Authorization` header.
#[derive(Debug)]
pub(crate) struct SigV4<'a> {
    access_key: &'a str,
    date: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
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

/// Shared state handle for the HTTP layer.
pub(crate) type Shared = Arc<State>;

//! The KMS JSON 1.1 endpoint: request fields, callers, and the operations (SigV4 is `crate::sigv4`).
//!
//! Every operation runs as a caller (a [`Principal`], from the request's access key) and is authorized
//! the way KMS does it: the key policy first (an explicit `Deny` ends it), then, for operations a grant may
//! carry, the key's grants. Key identifiers are resolved per operation as KMS documents: cryptographic
//! operations and `DescribeKey` take a key id, key ARN, alias name or alias ARN; management operations
//! (key policies, grants, alias targets) take a key id or key ARN only.
//!
//! Why one long file: it is the mock's operations (resolve, authorize, operate), every operation short and
//! in the same shape, so that what the mock enforces can be compared with KMS's
//! documentation operation by operation; the policy, grant, alias and blob formats live in their modules.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::Clock;
use crate::alias::{self, Alias};
use crate::blob;
use crate::grants::{self, Constraints, Grant};
use crate::policy::{KeyPolicy, RequestContext};
use crate::principal::Principal;
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
/// Oldest `Recipient` attestation document accepted, measured on the mock's clock (see docs/MOCK_KMS.md:
/// AWS does not publish KMS's limit; this is the mock's, so that callers must present fresh documents).
pub const RECIPIENT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(300);

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
    pub(crate) fn new(name: &'static str, message: impl Into<String>) -> Self {
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
    fn input((name, message): (&'static str, String)) -> Self {
        Self::new(name, message)
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
    /// Access key id → principal. Empty: every caller is the account root.
    pub(crate) principals: BTreeMap<String, Principal>,
    pub(crate) clock: Clock,
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

fn fill_random(out: &mut [u8]) -> Result<(), KmsError> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new().fill(out).map_err(|_| KmsError::internal("random generator failed"))
}

/// Makes sure a key with id `id` (a UUID) exists, creating it with the account's default policy.
pub(crate) fn ensure_fixture_key(
    store: &mut crate::store::KeyStore,
    id: &str,
    account: &str,
    now_secs: f64,
) -> Result<(), String> {
    let id = valid_key_id(id).ok_or("not a key id (a UUID in lowercase hex)")?;
    if store.get(id).is_some() {
        return Ok(());
    }
    let mut m = Zeroizing::new([0u8; 32]);
    fill_random(m.as_mut()).map_err(|e| e.to_string())?;
    let key =
        StoredKey::new(id.to_owned(), now_secs, "fixture key".into(), KeyPolicy::default_for_account(account), &m);
    store.insert(key).map_err(|e| e.to_string())?;
    tracing::info!(key_id = %id, "fixture key created");
    Ok(())
}

fn new_key_id() -> Result<String, KmsError> {
    let mut b = [0u8; 16];
    fill_random(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]))
}

fn random_bytes(n: usize) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    let mut out = Zeroizing::new(vec![0u8; n]);
    fill_random(&mut out)?;
    Ok(out)
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

/// How an operation takes its `KeyId`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyRef {
    /// Key id or key ARN only (key policies, grants, alias targets).
    KeyOnly,
    /// Also an alias name (`alias/NAME`) or alias ARN (cryptographic operations, `DescribeKey`).
    KeyOrAlias,
}

/// What a `KeyId` names: a key id, or an alias name (`alias/NAME`).
enum Named<'a> {
    Key(&'a str),
    Alias(&'a str),
}

/// Which rule let a request through (for the log).
#[derive(Debug)]
enum Via {
    KeyPolicy,
    Grant,
}

impl State {
    fn arn(&self, key_id: &str) -> String {
        format!("arn:aws:kms:{}:{}:key/{}", self.region, self.account, key_id)
    }

    fn alias_arn(&self, name: &str) -> String {
        format!("arn:aws:kms:{}:{}:{}", self.region, self.account, name)
    }

    fn store(&self) -> Result<MutexGuard<'_, KeyStore>, KmsError> {
        self.store.lock().map_err(|_| KmsError::internal("key store lock poisoned"))
    }

    /// The principal whose access key signed the request.
    pub(crate) fn caller(&self, access_key: &str) -> Result<Principal, KmsError> {
        if self.principals.is_empty() {
            return Ok(Principal::account_root(&self.account));
        }
        self.principals.get(access_key).cloned().ok_or_else(|| {
            KmsError::new("UnrecognizedClientException", "The security token included in the request is invalid.")
        })
    }

    /// Resolves a `KeyId` to a key's UUID, as `how` allows. Bare ids and alias names resolve in the
    /// caller's account (as in KMS: another account's key needs its ARN).
    fn resolve(&self, caller: &Principal, key_id: Option<&str>, how: KeyRef) -> Result<String, KmsError> {
        let key_id = key_id.ok_or_else(|| KmsError::validation("KeyId is required"))?;
        if key_id.is_empty() || key_id.len() > 2048 {
            return Err(KmsError::validation("KeyId must be 1..=2048 characters"));
        }
        let here = format!("arn:aws:kms:{}:{}:", self.region, self.account);
        let invalid = || KmsError::not_found(format!("Invalid keyId {key_id}"));
        // What it names, and whether it names it in the mock's account.
        let (target, own_account) = if let Some(resource) = key_id.strip_prefix(&here) {
            match resource.split_once('/') {
                Some(("key", id)) => (Named::Key(id), true),
                Some(("alias", _)) => (Named::Alias(resource), true),
                _ => return Err(invalid()),
            }
        } else if key_id.starts_with("arn:") {
            return Err(KmsError::not_found(format!("key {key_id} is not in this region and account")));
        } else if key_id.starts_with("alias/") {
            (Named::Alias(key_id), caller.account() == self.account)
        } else {
            (Named::Key(key_id), caller.account() == self.account)
        };
        match target {
            Named::Key(id) => {
                if !own_account {
                    return Err(KmsError::not_found(format!(
                        "key '{key_id}' does not exist in the caller's account {}; use the key ARN",
                        caller.account()
                    )));
                }
                let id = valid_key_id(id).ok_or_else(invalid)?;
                if self.store()?.get(id).is_none() {
                    return Err(KmsError::not_found(format!("Key '{}' does not exist", self.arn(id))));
                }
                Ok(id.to_owned())
            }
            Named::Alias(_) if how == KeyRef::KeyOnly => Err(KmsError::not_found(format!(
                "Invalid keyId {key_id}: this operation takes a key id or key ARN, not an alias"
            ))),
            Named::Alias(name) if !own_account => Err(KmsError::not_found(format!(
                "Alias arn:aws:kms:{}:{}:{name} is not found.",
                self.region,
                caller.account()
            ))),
            Named::Alias(name) => {
                alias::check_name(name).map_err(|_| invalid())?;
                let store = self.store()?;
                let found = store.alias(name).map(|a| a.target_key_id.clone());
                found.ok_or_else(|| KmsError::not_found(format!("Alias {} is not found.", self.alias_arn(name))))
            }
        }
    }

    fn key(&self, id: &str) -> Result<StoredKey, KmsError> {
        let store = self.store()?;
        store.get(id).cloned().ok_or_else(|| KmsError::not_found(format!("Key '{}' does not exist", self.arn(id))))
    }

    /// Authorizes `action` (e.g. `kms:Decrypt`) on `key` for `caller`: the key policy, then (for grantable
    /// operations, and unless the policy explicitly denied) the key's grants, with the request's context.
    fn authorize(
        &self,
        caller: &Principal,
        key: &StoredKey,
        action: &str,
        ctx: &RequestContext,
        context: &BTreeMap<String, String>,
    ) -> Result<Via, KmsError> {
        let policy = KeyPolicy::parse(&key.policy).map_err(|e| KmsError::internal(e.to_string()))?;
        let denied = match policy.evaluate(caller, action, ctx) {
            Ok(()) => return Ok(Via::KeyPolicy),
            Err(d) => d,
        };
        let operation = action.strip_prefix("kms:").unwrap_or(action);
        let grantable = operation != "CreateGrant" && grants::SYMMETRIC_OPERATIONS.contains(&operation);
        if !denied.explicit && grantable {
            let store = self.store()?;
            if let Some(g) =
                store.grants().iter().find(|g| g.key_id == key.key_id && g.allows(caller, operation, context))
            {
                tracing::info!(key_id = %key.key_id, action, caller = %caller, grant_id = %g.grant_id, "allowed by a grant");
                return Ok(Via::Grant);
            }
        }
        tracing::info!(key_id = %key.key_id, action, caller = %caller, reason = %denied, "denied");
        let grants_too = if !denied.explicit && grantable { "; no grant allows it either" } else { "" };
        Err(KmsError::denied(format!("{denied}{grants_too} (caller {caller}, key {})", self.arn(&key.key_id))))
    }

    /// Checks a `Recipient`: the algorithm, then the document with the same verifier as everywhere, against
    /// the configured root(s), at the mock's time, no older than [`RECIPIENT_MAX_AGE`].
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
        let mut first_error = None;
        for root in &self.roots {
            // Like KMS, a debug-mode document (PCR0..2 all zero) is accepted here: it is the key policy's
            // PCR conditions that refuse it, with a message naming the condition.
            let policy = AttestationPolicy::new(self.clock.now_ms())
                .with_root(root.clone())
                .allow_debug(true)
                .with_max_age(RECIPIENT_MAX_AGE);
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

fn required<'a>(req: &'a Value, name: &str) -> Result<&'a str, KmsError> {
    str_field(req, name)?.ok_or_else(|| KmsError::validation(format!("{name} is required")))
}

fn int_field(req: &Value, name: &str) -> Result<Option<i64>, KmsError> {
    match req.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| KmsError::validation(format!("{name} must be an integer"))),
    }
}

fn bool_field(req: &Value, name: &str) -> Result<bool, KmsError> {
    match req.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(KmsError::validation(format!("{name} must be a boolean"))),
    }
}

/// `Limit` in `1..=max` (default `default`) and `Marker` (an index this mock gave, else `InvalidMarkerException`).
fn page(req: &Value, default: i64, max: i64) -> Result<(usize, usize), KmsError> {
    let limit = int_field(req, "Limit")?.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(KmsError::validation(format!("Limit must be 1..={max}")));
    }
    let start = match str_field(req, "Marker")? {
        None => 0,
        Some(m) => m
            .parse::<usize>()
            .map_err(|_| KmsError::new("InvalidMarkerException", "the Marker is not one this KMS gave"))?,
    };
    Ok((start, usize::try_from(limit).unwrap_or(1)))
}

/// One page of `items` from `start`: the page, and the next marker if more remain.
fn paginate<T>(items: &[T], start: usize, limit: usize) -> (&[T], Option<String>) {
    let end = start.saturating_add(limit).min(items.len());
    let page = items.get(start.min(end)..end).unwrap_or(&[]);
    (page, (end < items.len()).then(|| end.to_string()))
}

fn string_map(value: Option<&Value>, name: &str) -> Result<BTreeMap<String, String>, KmsError> {
    match value {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) if !k.is_empty() => Ok((k.clone(), s.clone())),
                _ => Err(KmsError::validation(format!("{name} must map non-empty strings to strings"))),
            })
            .collect(),
        Some(_) => Err(KmsError::validation(format!("{name} must be an object"))),
    }
}

fn encryption_context(req: &Value) -> Result<BTreeMap<String, String>, KmsError> {
    string_map(req.get("EncryptionContext"), "EncryptionContext")
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
    if bool_field(req, "DryRun")? {
        return Err(KmsError::new("DryRunOperationException", "the request would have succeeded (DryRun)"));
    }
    Ok(())
}

/// `GrantTokens`: at most 10 tokens this mock could have made. They are not needed (the mock has no
/// eventual consistency) and grant nothing by themselves.
fn check_grant_tokens(req: &Value) -> Result<(), KmsError> {
    let invalid = || KmsError::new("InvalidGrantTokenException", "the grant token is not valid");
    match req.get("GrantTokens") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(tokens)) if tokens.len() <= grants::MAX_GRANT_TOKENS => {
            for t in tokens {
                let t = t.as_str().ok_or_else(|| KmsError::validation("GrantTokens must be strings"))?;
                grants::token_grant_id(t).ok_or_else(invalid)?;
            }
            Ok(())
        }
        Some(_) => Err(KmsError::validation(format!(
            "GrantTokens must be a list of at most {} strings",
            grants::MAX_GRANT_TOKENS
        ))),
    }
}

/// The condition keys every request offers: `kms:CallerAccount`.
fn base_context(caller: &Principal) -> RequestContext {
    let mut ctx = RequestContext::new();
    ctx.set("kms:CallerAccount", caller.account());
    ctx
}

/// The key policy lockout safety check of `CreateKey` and `PutKeyPolicy`: the new policy must let the
/// caller call `PutKeyPolicy` again, unless `BypassPolicyLockoutSafetyCheck` is true.
fn lockout_check(policy: &KeyPolicy, caller: &Principal, req: &Value) -> Result<(), KmsError> {
    if bool_field(req, "BypassPolicyLockoutSafetyCheck")? {
        return Ok(());
    }
    policy.evaluate(caller, "kms:PutKeyPolicy", &base_context(caller)).map_err(|_| {
        KmsError::new(
            "MalformedPolicyDocumentException",
            "The new key policy will not allow you to update the key policy in the future.",
        )
    })
}

fn parse_policy(text: &str) -> Result<KeyPolicy, KmsError> {
    KeyPolicy::parse(text).map_err(|e| {
        let name = if e.is_too_long() { "LimitExceededException" } else { "MalformedPolicyDocumentException" };
        KmsError::new(name, e.to_string())
    })
}

/// Runs one operation for `caller`. `target` is the part after `TrentService.`.
pub(crate) fn dispatch(state: &State, caller: &Principal, target: &str, req: &Value) -> Result<Value, KmsError> {
    if !req.is_object() {
        return Err(KmsError::new("SerializationException", "the request body must be a JSON object"));
    }
    match target {
        "CreateKey" => create_key(state, caller, req),
        "DescribeKey" => describe_key(state, caller, req),
        "ListKeys" => list_keys(state, caller, req),
        "GenerateDataKey" => generate_data_key(state, caller, req),
        "Encrypt" => encrypt(state, caller, req),
        "Decrypt" => decrypt(state, caller, req),
        "GenerateRandom" => generate_random(state, req),
        "GetKeyPolicy" => get_key_policy(state, caller, req),
        "PutKeyPolicy" => put_key_policy(state, caller, req),
        "CreateAlias" => create_alias(state, caller, req),
        "UpdateAlias" => update_alias(state, caller, req),
        "DeleteAlias" => delete_alias(state, caller, req),
        "ListAliases" => list_aliases(state, caller, req),
        "CreateGrant" => create_grant(state, caller, req),
        "ListGrants" => list_grants(state, caller, req),
        "RevokeGrant" => revoke_grant(state, caller, req),
        "RetireGrant" => retire_grant(state, caller, req),
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

fn create_key(state: &State, caller: &Principal, req: &Value) -> Result<Value, KmsError> {
    if caller.account() != state.account {
        return Err(KmsError::denied(format!(
            "the mock KMS holds the keys of account {} only; {caller} would create its key in its own account",
            state.account
        )));
    }
    let policy = match str_field(req, "Policy")? {
        Some(p) => {
            lockout_check(&parse_policy(p)?, caller, req)?;
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
    let mut m = Zeroizing::new([0u8; 32]);
    fill_random(m.as_mut())?;
    let key = StoredKey::new(new_key_id()?, state.clock.now_secs(), description, policy, &m);
    let out = json!({"KeyMetadata": metadata(state, &key)});
    let mut store = state.store()?;
    if store.keys().len() >= crate::store::MAX_KEYS {
        return Err(KmsError::new("LimitExceededException", "the mock's key store is full"));
    }
    tracing::info!(key_id = %key.key_id, caller = %caller, "key created");
    store.insert(key).map_err(|e| KmsError::internal(e.to_string()))?;
    Ok(out)
}

fn describe_key(state: &State, caller: &Principal, req: &Value) -> Result<Value, KmsError> {
    check_grant_tokens(req)?;
    let id = state.resolve(caller, str_field(req, "KeyId")?, KeyRef::KeyOrAlias)?;
    let key = state.key(&id)?;
    state.authorize(caller, &key, "kms:DescribeKey", &base_context(caller), &BTreeMap::new())?;
    Ok(json!({"KeyMetadata": metadata(state, &key)}))
}

fn list_keys(state: &State, caller: &Principal, req: &Value) -> Result<Value, KmsError> {
    let (start, limit) = page(req, 100, 1000)?;
    // ListKeys lists the caller's own account: a caller of another account has no keys here.
    let store = state.store()?;
    let all = if caller.account() == state.account { store.keys() } else { &[] };
    let (keys, next) = paginate(all, start, limit);
    let keys: Vec<Value> = keys.iter().map(|k| json!({"KeyId": k.key_id, "KeyArn": state.arn(&k.key_id)})).collect();
    let mut out = json!({"Keys": keys, "Truncated": next.is_some()});
    if let Some(next) = next {
        out["NextMarker"] = json!(next);
    }
    Ok(out)
}

fn recipient_of(state: &State, req: &Value) -> Result<Option<VerifiedRecipient>, KmsError> {
    match req.get("Recipient") {
        None | Some(Value::Null) => Ok(None),
        Some(r) => state.verify_recipient(r).map(Some),
    }
}

fn generate_data_key(state: &State, caller: &Principal, req: &Value) -> Result<Value, KmsError> {
    check_grant_tokens(req)?;
    let id = state.resolve(caller, str_field(req, "KeyId")?, KeyRef::KeyOrAlias)?;
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
    let mut ctx = base_context(caller);
    ctx.set_encryption_context(&context);
    if let Some(r) = &recipient {
        ctx.set_attestation(&r.pcrs);
    }
    state.authorize(caller, &key, "kms:GenerateDataKey", &ctx, &context)?;
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

fn encrypt(state: &State, caller: &Principal, req: &Value) -> Result<Value, KmsError> {
    check_grant_tokens(req)?;
    let id = state.resolve(caller, str_field(req, "KeyId")?, KeyRef::KeyOrAlias)?;
    let plaintext = decode_b64("Plaintext", required(req, "Plaintext")?, MAX_PLAINTEXT)?;
    check_algorithm(req)?;
    let context = encryption_context(req)?;
    let key = state.key(&id)?;
    let mut ctx = base_context(caller);
    ctx.set_encryption_context(&context);
    state.authorize(caller, &key, "kms:Encrypt", &ctx, &context)?;
    check_dry_run(req)?;
    let material = key.material().ok_or_else(|| KmsError::internal("damaged key material"))?;
    let blob = blob::seal(&id, &material, &context, &plaintext).map_err(|e| KmsError::internal(e.to_string()))?;
    Ok(json!({"KeyId": state.arn(&id), "CiphertextBlob": B64.encode(blob), "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}))
}

fn decrypt(state: &State, caller: &Principal, req: &Value) -> Result<Value, KmsError> {
    check_grant_tokens(req)?;
    let ciphertext = decode_b64("CiphertextBlob", required(req, "CiphertextBlob")?, MAX_CIPHERTEXT)?;
    check_algorithm(req)?;
    let context = encryption_context(req)?;
    let blob_key = blob::key_id(&ciphertext).map_err(|_| KmsError::invalid_ciphertext())?;
    let blob_key = valid_key_id(blob_key).ok_or_else(KmsError::invalid_ciphertext)?.to_owned();
    if let Some(given) = str_field(req, "KeyId")? {
        let given = state.resolve(caller, Some(given), KeyRef::KeyOrAlias)?;
        if given != blob_key {
            return Err(KmsError::new(
                "IncorrectKeyException",
                "the ciphertext was not encrypted under the KMS key given in KeyId",
            ));
        }
    }
    let key = state.key(&blob_key).map_err(|_| KmsError::invalid_ciphertext())?;
    let recipient = recipient_of(state, req)?;
    let mut ctx = base_context(caller);
    ctx.set_encryption_context(&context);
    if let Some(r) = &recipient {
        ctx.set_attestation(&r.pcrs);
    }
    let via = state.authorize(caller, &key, "kms:Decrypt", &ctx, &context)?;
    check_dry_run(req)?;
    let material = key.material().ok_or_else(|| KmsError::internal("damaged key material"))?;
    let plaintext = blob::open(&ciphertext, &material, &context).map_err(|_| KmsError::invalid_ciphertext())?;
    tracing::debug!(key_id = %blob_key, caller = %caller, ?via, attested = recipient.is_some(), "decrypted");
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

fn get_key_policy(state: &State, caller: &Principal, req: &Value) -> Result<Value, KmsError> {
    let id = state.resolve(caller, str_field(req, "KeyId")?, KeyRef::KeyOnly)?;
    policy_name(req)?;
    let key = state.key(&id)?;
    state.authorize(caller, &key, "kms:GetKeyPolicy", &base_context(caller), &BTreeMap::new())?;
    Ok(json!({"Policy": key.policy, "PolicyName": "default"}))
}

fn put_key_policy(state: &State, caller: &Principal, req: &Value) -> Result<Value, KmsError> {
    let id = state.resolve(caller, str_field(req, "KeyId")?, KeyRef::KeyOnly)?;
    policy_name(req)?;
    let text = required(req, "Policy")?;
    let policy = parse_policy(text)?;
    let key = state.key(&id)?;
    state.authorize(caller, &key, "kms:PutKeyPolicy", &base_context(caller), &BTreeMap::new())?;
    lockout_check(&policy, caller, req)?;
    let mut store = state.store()?;
    store.set_policy(&id, text.to_owned()).map_err(|e| KmsError::internal(e.to_string()))?;
    tracing::info!(key_id = %id, caller = %caller, "key policy replaced");
    Ok(json!({}))
}

/// Aliases live in the caller's account: only callers of the mock's account have any here.
fn own_account(state: &State, caller: &Principal) -> Result<(), KmsError> {
    if caller.account() == state.account {
        return Ok(());
    }
    Err(KmsError::not_found(format!(
        "aliases are resources of the caller's account {}, and the mock holds account {} only",
        caller.account(),
        state.account
    )))
}

fn alias_name(req: &Value) -> Result<&str, KmsError> {
    let name = required(req, "AliasName")?;
    alias::check_name(name).map_err(KmsError::input)?;
    Ok(name)
}

fn create_alias(state: &State, caller: &Principal, req: &Value) -> Result<Value, KmsError> {
    own_account(state, caller)?;
    let name = alias_name(req)?;
    let target = state.resolve(caller, Some(required(req, "TargetKeyId")?), KeyRef::KeyOnly)?;
    let key = state.key(&target)?;
    // KMS also needs kms:CreateAlias on the alias in an IAM policy: the mock has no IAM (allowed).
    state.authorize(caller, &key, "kms:CreateAlias", &base_context(caller), &BTreeMap::new())?;
    let mut store = state.store()?;
    if store.alias(name).is_some() {
        return Err(KmsError::new(
            "AlreadyExistsException",
            format!("An alias with the name {} already exists", state.alias_arn(name)),
        ));
    }
    if store.aliases().len() >= alias::MAX_ALIASES
        || store.aliases().iter().filter(|a| a.target_key_id == target).count() >= alias::MAX_ALIASES_PER_KEY
    {
        return Err(KmsError::new(
            "LimitExceededException",
            format!(
                "a key may have at most {} aliases (the mock: {} in all)",
                alias::MAX_ALIASES_PER_KEY,
                alias::MAX_ALIASES
            ),
        ));
    }
    let now = state.clock.now_secs();
    let alias = Alias {
        alias_name: name.to_owned(),
        target_key_id: target.clone(),
        creation_date: now,
        last_updated_date: now,
    };
    store.insert_alias(alias).map_err(|e| KmsError::internal(e.to_string()))?;
    tracing::info!(alias = name, key_id = %target, caller = %caller, "alias created");
    Ok(json!({}))
}

fn existing_alias(state: &State, name: &str) -> Result<Alias, KmsError> {
    let store = state.store()?;
    let found = store.alias(name).cloned();
    found.ok_or_else(|| KmsError::not_found(format!("Alias {} is not found.", state.alias_arn(name))))
}

fn update_alias(state: &State, caller: &Principal, req: &Value) -> Result<Value, KmsError> {
    own_account(state, caller)?;
    let name = alias_name(req)?;
    let current = existing_alias(state, name)?;
    let target = state.resolve(caller, Some(required(req, "TargetKeyId")?), KeyRef::KeyOnly)?;
    // kms:UpdateAlias on the current key and on the new one (every key of the mock has the same type).
    state.authorize(
        caller,
        &state.key(&current.target_key_id)?,
        "kms:UpdateAlias",
        &base_context(caller),
        &BTreeMap::new(),
    )?;
    let new_key = state.key(&target)?;
    state.authorize(caller, &new_key, "kms:UpdateAlias", &base_context(caller), &BTreeMap::new())?;
    let mut store = state.store()?;
    if target != current.target_key_id
        && store.aliases().iter().filter(|a| a.target_key_id == target).count() >= alias::MAX_ALIASES_PER_KEY
    {
        return Err(KmsError::new(
            "LimitExceededException",
            format!("a key may have at most {} aliases", alias::MAX_ALIASES_PER_KEY),
        ));
    }
    store.retarget_alias(name, &target, state.clock.now_secs()).map_err(|e| KmsError::internal(e.to_string()))?;
    tracing::info!(alias = name, from = %current.target_key_id, to = %target, caller = %caller, "alias updated");
    Ok(json!({}))
}

fn delete_alias(state: &State, caller: &Principal, req: &Value) -> Result<Value, KmsError> {
    own_account(state, caller)?;
    let name = alias_name(req)?;
    let current = existing_alias(state, name)?;
    state.authorize(
        caller,
        &state.key(&current.target_key_id)?,
        "kms:DeleteAlias",
        &base_context(caller),
        &BTreeMap::new(),
    )?;
    state.store()?.remove_alias(name).map_err(|e| KmsError::internal(e.to_string()))?;
    tracing::info!(alias = name, caller = %caller, "alias deleted");
    Ok(json!({}))
}

fn list_aliases(state: &State, caller: &Principal, req: &Value) -> Result<Value, KmsError> {
    let (start, limit) = page(req, 50, 100)?;
    let key = match str_field(req, "KeyId")? {
        Some(k) => Some(state.resolve(caller, Some(k), KeyRef::KeyOnly)?),
        None => None,
    };
    let store = state.store()?;
    let all: Vec<&Alias> = if caller.account() == state.account {
        store.aliases().iter().filter(|a| key.as_ref().is_none_or(|k| *k == a.target_key_id)).collect()
    } else {
        Vec::new()
    };
    let (aliases, next) = paginate(&all, start, limit);
    let aliases: Vec<Value> = aliases
        .iter()
        .map(|a| {
            json!({
                "AliasName": a.alias_name,
                "AliasArn": state.alias_arn(&a.alias_name),
                "TargetKeyId": a.target_key_id,
                "CreationDate": a.creation_date,
                "LastUpdatedDate": a.last_updated_date,
            })
        })
        .collect();
    let mut out = json!({"Aliases": aliases, "Truncated": next.is_some()});
    if let Some(next) = next {
        out["NextMarker"] = json!(next);
    }
    Ok(out)
}

fn principal_arn(req: &Value, name: &str) -> Result<Option<Principal>, KmsError> {
    let Some(arn) = str_field(req, name)? else { return Ok(None) };
    Principal::parse(arn).map(Some).map_err(|e| KmsError::new("InvalidArnException", format!("{name}: {e}")))
}

fn grant_constraints(req: &Value) -> Result<Option<Constraints>, KmsError> {
    let c = match req.get("Constraints") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(c)) => c,
        Some(_) => return Err(KmsError::validation("Constraints must be an object")),
    };
    if c.get("SourceArn").is_some_and(|v| !v.is_null()) {
        return Err(KmsError::validation("the SourceArn grant constraint is not supported by the mock"));
    }
    let mut out = Constraints::default();
    for (field, slot) in [
        ("EncryptionContextEquals", &mut out.encryption_context_equals),
        ("EncryptionContextSubset", &mut out.encryption_context_subset),
    ] {
        if let Some(v) = c.get(field).filter(|v| !v.is_null()) {
            let map = string_map(Some(v), field)?;
            grants::check_constraint_context(field, &map).map_err(KmsError::input)?;
            *slot = Some(map);
        }
    }
    Ok(Some(out))
}

fn create_grant(state: &State, caller: &Principal, req: &Value) -> Result<Value, KmsError> {
    check_grant_tokens(req)?;
    let id = state.resolve(caller, str_field(req, "KeyId")?, KeyRef::KeyOnly)?;
    for field in ["GranteeServicePrincipal", "RetiringServicePrincipal"] {
        if str_field(req, field)?.is_some() {
            return Err(KmsError::validation(format!("{field}: service principals are not supported by the mock")));
        }
    }
    let grantee =
        principal_arn(req, "GranteePrincipal")?.ok_or_else(|| KmsError::validation("GranteePrincipal is required"))?;
    let retiring = principal_arn(req, "RetiringPrincipal")?;
    let operations: Vec<String> = match req.get("Operations") {
        Some(Value::Array(ops)) if ops.len() <= 32 => ops
            .iter()
            .map(|o| o.as_str().map(str::to_owned).ok_or_else(|| KmsError::validation("Operations must be strings")))
            .collect::<Result<_, _>>()?,
        Some(Value::Array(_)) => return Err(KmsError::validation("Operations is too long")),
        None | Some(Value::Null) => return Err(KmsError::validation("Operations is required")),
        Some(_) => return Err(KmsError::validation("Operations must be a list")),
    };
    let operations = grants::check_operations(&operations).map_err(KmsError::input)?;
    let constraints = grant_constraints(req)?.filter(|c| c.constraint_type().is_some());
    let name = str_field(req, "Name")?.map(str::to_owned);
    if let Some(n) = &name {
        grants::check_name(n).map_err(KmsError::input)?;
    }
    let key = state.key(&id)?;

    // kms:CreateGrant from the key policy, with the grant's condition keys; or from a grant that carries
    // CreateGrant, for at most its own operations and at least its own constraints.
    let mut ctx = base_context(caller);
    ctx.set("kms:GranteePrincipal", grantee.arn());
    if let Some(r) = &retiring {
        ctx.set("kms:RetiringPrincipal", r.arn());
    }
    ctx.set("kms:GrantIsForAWSResource", "false");
    if let Some(t) = constraints.as_ref().and_then(Constraints::constraint_type) {
        ctx.set("kms:GrantConstraintType", t);
    }
    let policy = KeyPolicy::parse(&key.policy).map_err(|e| KmsError::internal(e.to_string()))?;
    if let Err(denied) = policy.evaluate(caller, "kms:CreateGrant", &ctx) {
        let store = state.store()?;
        let parent = (!denied.explicit)
            .then(|| {
                store.grants().iter().find(|g| {
                    g.key_id == id
                        && g.grantee_matches(caller)
                        && g.operations.iter().any(|o| o == "CreateGrant")
                        && operations.iter().all(|o| g.operations.contains(o))
                        && constraints.clone().unwrap_or_default().at_least_as_strict_as(g.constraints.as_ref())
                })
            })
            .flatten();
        if parent.is_none() {
            tracing::info!(key_id = %id, caller = %caller, reason = %denied, "CreateGrant denied");
            return Err(KmsError::denied(format!(
                "{denied}{} (caller {caller}, key {})",
                if denied.explicit { "" } else { "; no grant of the caller allows creating this grant either" },
                state.arn(&id)
            )));
        }
    }
    check_dry_run(req)?;

    let mut random = [0u8; 32];
    fill_random(&mut random)?;
    let mut store = state.store()?;
    let same = |g: &&Grant| {
        g.key_id == id
            && g.name == name
            && g.grantee_principal == grantee.arn()
            && g.retiring_principal.as_deref() == retiring.as_ref().map(Principal::arn)
            && g.operations == operations
            && g.constraints == constraints
    };
    // With a Name, retrying identical parameters returns the existing grant (with a fresh token).
    if name.is_some()
        && let Some(existing) = store.grants().iter().find(same)
    {
        let grant_id = existing.grant_id.clone();
        return Ok(json!({"GrantId": grant_id, "GrantToken": grants::token(&grant_id, &random)}));
    }
    if store.grants().iter().filter(|g| g.key_id == id).count() >= grants::MAX_GRANTS_PER_KEY {
        return Err(KmsError::new(
            "LimitExceededException",
            format!("a key holds at most {} grants in the mock", grants::MAX_GRANTS_PER_KEY),
        ));
    }
    let mut gid = [0u8; 32];
    fill_random(&mut gid)?;
    let grant = Grant {
        grant_id: hex::encode(gid),
        key_id: id.clone(),
        name,
        grantee_principal: grantee.arn().to_owned(),
        retiring_principal: retiring.as_ref().map(|r| r.arn().to_owned()),
        operations,
        constraints,
        creation_date: state.clock.now_secs(),
        issuing_account: format!("arn:aws:iam::{}:root", state.account),
    };
    let grant_id = grant.grant_id.clone();
    tracing::info!(key_id = %id, grant_id = %grant_id, grantee = %grantee, operations = ?grant.operations, caller = %caller, "grant created");
    store.insert_grant(grant).map_err(|e| KmsError::internal(e.to_string()))?;
    Ok(json!({"GrantId": grant_id, "GrantToken": grants::token(&grant_id, &random)}))
}

fn grant_entry(state: &State, g: &Grant) -> Value {
    let mut v = json!({
        "KeyId": state.arn(&g.key_id),
        "GrantId": g.grant_id,
        "CreationDate": g.creation_date,
        "GranteePrincipal": g.grantee_principal,
        "IssuingAccount": g.issuing_account,
        "Operations": g.operations,
    });
    if let Some(n) = &g.name {
        v["Name"] = json!(n);
    }
    if let Some(r) = &g.retiring_principal {
        v["RetiringPrincipal"] = json!(r);
    }
    if let Some(c) = &g.constraints {
        v["Constraints"] = json!(c);
    }
    v
}

fn grant_id_field(req: &Value) -> Result<&str, KmsError> {
    let id = required(req, "GrantId")?;
    if !grants::valid_grant_id(id) {
        return Err(KmsError::new("InvalidGrantIdException", "the GrantId is not valid"));
    }
    Ok(id)
}

fn list_grants(state: &State, caller: &Principal, req: &Value) -> Result<Value, KmsError> {
    let (start, limit) = page(req, 50, 100)?;
    let id = state.resolve(caller, str_field(req, "KeyId")?, KeyRef::KeyOnly)?;
    let only_grant = match str_field(req, "GrantId")? {
        Some(_) => Some(grant_id_field(req)?),
        None => None,
    };
    let only_grantee = str_field(req, "GranteePrincipal")?;
    let key = state.key(&id)?;
    state.authorize(caller, &key, "kms:ListGrants", &base_context(caller), &BTreeMap::new())?;
    let store = state.store()?;
    let all: Vec<&Grant> = store
        .grants()
        .iter()
        .filter(|g| g.key_id == id)
        .filter(|g| only_grant.is_none_or(|x| g.grant_id == x))
        .filter(|g| only_grantee.is_none_or(|x| g.grantee_principal == x))
        .collect();
    let (grants, next) = paginate(&all, start, limit);
    let grants: Vec<Value> = grants.iter().map(|g| grant_entry(state, g)).collect();
    let mut out = json!({"Grants": grants, "Truncated": next.is_some()});
    if let Some(next) = next {
        out["NextMarker"] = json!(next);
    }
    Ok(out)
}

fn revoke_grant(state: &State, caller: &Principal, req: &Value) -> Result<Value, KmsError> {
    let id = state.resolve(caller, str_field(req, "KeyId")?, KeyRef::KeyOnly)?;
    let grant_id = grant_id_field(req)?;
    let key = state.key(&id)?;
    state.authorize(caller, &key, "kms:RevokeGrant", &base_context(caller), &BTreeMap::new())?;
    let mut store = state.store()?;
    if !store.grants().iter().any(|g| g.grant_id == grant_id && g.key_id == id) {
        return Err(KmsError::not_found(format!("Grant ID {grant_id} not found for key {}", state.arn(&id))));
    }
    check_dry_run(req)?;
    store.remove_grant(grant_id).map_err(|e| KmsError::internal(e.to_string()))?;
    tracing::info!(key_id = %id, grant_id, caller = %caller, "grant revoked");
    Ok(json!({}))
}

fn retire_grant(state: &State, caller: &Principal, req: &Value) -> Result<Value, KmsError> {
    let (grant_id, key_id) = match str_field(req, "GrantToken")? {
        Some(token) => {
            let id = grants::token_grant_id(token)
                .ok_or_else(|| KmsError::new("InvalidGrantTokenException", "the grant token is not valid"))?;
            (id, None)
        }
        None => {
            let key = state.resolve(caller, str_field(req, "KeyId")?, KeyRef::KeyOnly)?;
            (grant_id_field(req)?, Some(key))
        }
    };
    let mut store = state.store()?;
    let grant = store
        .grants()
        .iter()
        .find(|g| g.grant_id == grant_id && key_id.as_ref().is_none_or(|k| *k == g.key_id))
        .cloned()
        .ok_or_else(|| KmsError::not_found(format!("Grant ID {grant_id} not found")))?;
    if !grant.retirable_by(caller) {
        return Err(KmsError::denied(format!(
            "{caller} may not retire grant {grant_id}: it is not the retiring principal, nor a grantee allowed RetireGrant, nor of the issuing account"
        )));
    }
    check_dry_run(req)?;
    store.remove_grant(grant_id).map_err(|e| KmsError::internal(e.to_string()))?;
    tracing::info!(key_id = %grant.key_id, grant_id, caller = %caller, "grant retired");
    Ok(json!({}))
}

/// Shared state handle for the HTTP layer.
pub(crate) type Shared = Arc<State>;

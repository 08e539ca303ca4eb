//! Key policy evaluation: the subset of IAM policy logic that KMS key policies with Nitro conditions need.
//!
//! Rules, as AWS documents them: an explicit `Deny` that applies wins; otherwise some `Allow` must apply;
//! otherwise the request is denied. A statement applies when its `Principal`, its `Action` and every
//! condition in its `Condition` block match. Supported condition operators: `StringEquals`,
//! `StringEqualsIgnoreCase`, `StringNotEquals`, `StringNotEqualsIgnoreCase` (and their `...IfExists` forms);
//! a value list matches if any value matches. A condition key absent from the request does not match
//! (`StringNotEquals` on an absent key matches, as in IAM). Anything else is refused when the policy is
//! stored (`MalformedPolicyDocumentException`), so evaluation never meets an element it does not understand.
//!
//! Denials say *why*, naming the first condition that failed in an `Allow` statement that otherwise
//! applied, because "denied" alone is what makes PCR mistakes so hard to find with the real KMS.

use std::collections::BTreeMap;

use serde_json::Value;

/// Largest policy document accepted, as KMS (32 KiB).
pub const MAX_POLICY_LEN: usize = 32 * 1024;

/// What a request offers to the conditions: lowercase condition key → value.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    values: BTreeMap<String, String>,
}

impl RequestContext {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a condition key (matched case-insensitively, as IAM does for key names).
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.values.insert(key.to_ascii_lowercase(), value.into());
    }

    /// Adds the Nitro keys from a verified document's PCRs: `kms:RecipientAttestation:PCR0..PCR8` and
    /// `...:ImageSha384` (which is PCR0, per AWS), as lowercase hex.
    pub fn set_attestation(&mut self, pcrs: &BTreeMap<u8, Vec<u8>>) {
        for (index, value) in pcrs.range(0..=8) {
            self.set(&format!("kms:RecipientAttestation:PCR{index}"), hex::encode(value));
        }
        if let Some(pcr0) = pcrs.get(&0) {
            self.set("kms:RecipientAttestation:ImageSha384", hex::encode(pcr0));
        }
    }

    /// Adds `kms:EncryptionContext:KEY` for each pair of the request's encryption context.
    pub fn set_encryption_context(&mut self, context: &BTreeMap<String, String>) {
        for (k, v) in context {
            self.set(&format!("kms:EncryptionContext:{k}"), v.clone());
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.values.get(&key.to_ascii_lowercase()).map(String::as_str)
    }
}

/// A parsed key policy.
#[derive(Debug, Clone)]
pub struct KeyPolicy {
    statements: Vec<Statement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone)]
struct Statement {
    sid: Option<String>,
    effect: Effect,
    principals: Vec<String>,
    actions: Vec<String>,
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone)]
struct Condition {
    operator: Operator,
    if_exists: bool,
    key: String,
    values: Vec<String>,
}

/// Named as in IAM, hence the common prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)]
enum Operator {
    StringEquals,
    StringEqualsIgnoreCase,
    StringNotEquals,
    StringNotEqualsIgnoreCase,
    /// `Null`: value "true" matches when the key is absent, "false" when it is present.
    Null,
}

/// Why a policy document was refused when stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed key policy: {0}")]
pub struct MalformedPolicy(pub String);

/// Why a request was denied: a message for `AccessDeniedException`, naming the reason (never key material).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Denied(pub String);

fn malformed(why: impl Into<String>) -> MalformedPolicy {
    MalformedPolicy(why.into())
}

/// A string or a list of strings, as IAM allows for most elements.
fn strings(value: &Value, what: &str) -> Result<Vec<String>, MalformedPolicy> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| malformed(format!("{what} must be strings"))))
            .collect(),
        _ => Err(malformed(format!("{what} must be a string or a non-empty list of strings"))),
    }
}

impl KeyPolicy {
    /// Parses and checks a policy document; refuses what the evaluator would not understand.
    pub fn parse(text: &str) -> Result<Self, MalformedPolicy> {
        if text.len() > MAX_POLICY_LEN {
            return Err(malformed(format!("longer than {MAX_POLICY_LEN} bytes")));
        }
        let doc: Value = serde_json::from_str(text).map_err(|e| malformed(format!("not JSON: {e}")))?;
        let obj = doc.as_object().ok_or_else(|| malformed("the document must be a JSON object"))?;
        for key in obj.keys() {
            if !matches!(key.as_str(), "Version" | "Id" | "Statement") {
                return Err(malformed(format!("unsupported element {key:?}")));
            }
        }
        let statements = match obj.get("Statement") {
            Some(Value::Array(items)) => items.iter().collect::<Vec<_>>(),
            Some(one @ Value::Object(_)) => vec![one],
            _ => return Err(malformed("Statement must be an object or a list of objects")),
        };
        let statements = statements.into_iter().map(Statement::parse).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { statements })
    }

    /// The AWS default key policy: the account root may do everything (`kms:*`).
    pub fn default_for_account(account: &str) -> String {
        serde_json::json!({
            "Version": "2012-10-17",
            "Id": "key-default-1",
            "Statement": [{
                "Sid": "Enable IAM User Permissions",
                "Effect": "Allow",
                "Principal": {"AWS": format!("arn:aws:iam::{account}:root")},
                "Action": "kms:*",
                "Resource": "*"
            }]
        })
        .to_string()
    }

    /// Decides whether the mock's caller (of `account`) may perform `action` (e.g. `kms:Decrypt`).
    pub fn evaluate(&self, account: &str, action: &str, ctx: &RequestContext) -> Result<(), Denied> {
        let mut allowed = false;
        let mut failed_condition: Option<String> = None;
        for st in &self.statements {
            if !st.principal_matches(account) || !st.action_matches(action) {
                continue;
            }
            let failed = st.conditions.iter().find(|c| !c.matches(ctx));
            match (&st.effect, failed) {
                (Effect::Deny, None) => {
                    let sid = st.sid.as_deref().map(|s| format!(" (statement {s:?})")).unwrap_or_default();
                    return Err(Denied(format!("{action} is denied by an explicit Deny in the key policy{sid}")));
                }
                (Effect::Allow, None) => allowed = true,
                (Effect::Allow, Some(c)) => {
                    failed_condition.get_or_insert_with(|| c.describe_failure(ctx));
                }
                (Effect::Deny, Some(_)) => {}
            }
        }
        if allowed {
            return Ok(());
        }
        Err(Denied(match failed_condition {
            Some(why) => format!("{action} is not allowed: {why}"),
            None => format!(
                "{action} is not allowed: no statement of the key policy allows it for arn:aws:iam::{account}:root"
            ),
        }))
    }
}

impl Statement {
    fn parse(value: &Value) -> Result<Self, MalformedPolicy> {
        let obj = value.as_object().ok_or_else(|| malformed("each Statement must be an object"))?;
        for key in obj.keys() {
            if !matches!(key.as_str(), "Sid" | "Effect" | "Principal" | "Action" | "Resource" | "Condition") {
                return Err(malformed(format!("unsupported statement element {key:?}")));
            }
        }
        let sid = obj.get("Sid").and_then(Value::as_str).map(str::to_owned);
        let effect = match obj.get("Effect").and_then(Value::as_str) {
            Some("Allow") => Effect::Allow,
            Some("Deny") => Effect::Deny,
            _ => return Err(malformed("Effect must be \"Allow\" or \"Deny\"")),
        };
        let principals = match obj.get("Principal") {
            Some(Value::String(s)) if s == "*" => vec!["*".to_owned()],
            Some(Value::Object(p)) => {
                if p.keys().any(|k| k != "AWS") {
                    return Err(malformed("only AWS principals are supported"));
                }
                strings(p.get("AWS").unwrap_or(&Value::Null), "Principal.AWS")?
            }
            _ => return Err(malformed("Principal must be \"*\" or {\"AWS\": ...}")),
        };
        let actions = strings(obj.get("Action").unwrap_or(&Value::Null), "Action")?;
        if let Some(resource) = obj.get("Resource") {
            strings(resource, "Resource")?;
        }
        let mut conditions = Vec::new();
        if let Some(block) = obj.get("Condition") {
            let block = block.as_object().ok_or_else(|| malformed("Condition must be an object"))?;
            for (op_name, keys) in block {
                let (base, if_exists) = match op_name.strip_suffix("IfExists") {
                    Some(base) => (base, true),
                    None => (op_name.as_str(), false),
                };
                let operator = match base {
                    "StringEquals" => Operator::StringEquals,
                    "StringEqualsIgnoreCase" => Operator::StringEqualsIgnoreCase,
                    "StringNotEquals" => Operator::StringNotEquals,
                    "StringNotEqualsIgnoreCase" => Operator::StringNotEqualsIgnoreCase,
                    "Null" if !if_exists => Operator::Null,
                    _ => return Err(malformed(format!("unsupported condition operator {op_name:?}"))),
                };
                let keys = keys.as_object().ok_or_else(|| malformed(format!("{op_name} must be an object")))?;
                for (key, values) in keys {
                    conditions.push(Condition {
                        operator,
                        if_exists,
                        key: key.clone(),
                        values: strings(values, "condition values")?,
                    });
                }
            }
        }
        Ok(Self { sid, effect, principals, actions, conditions })
    }

    /// The mock has one caller, its account's root; it also stands for any IAM principal of that account.
    fn principal_matches(&self, account: &str) -> bool {
        let prefix = format!("arn:aws:iam::{account}:");
        self.principals.iter().any(|p| p == "*" || p == account || p.starts_with(&prefix))
    }

    fn action_matches(&self, action: &str) -> bool {
        self.actions.iter().any(|pattern| glob_matches(&pattern.to_ascii_lowercase(), &action.to_ascii_lowercase()))
    }
}

impl Condition {
    fn matches(&self, ctx: &RequestContext) -> bool {
        if self.operator == Operator::Null {
            let absent = ctx.get(&self.key).is_none();
            return self.values.iter().any(|v| v.eq_ignore_ascii_case(if absent { "true" } else { "false" }));
        }
        let Some(actual) = ctx.get(&self.key) else {
            return self.if_exists
                || matches!(self.operator, Operator::StringNotEquals | Operator::StringNotEqualsIgnoreCase);
        };
        let any_equal = |ignore_case: bool| {
            self.values.iter().any(|v| if ignore_case { v.eq_ignore_ascii_case(actual) } else { v == actual })
        };
        match self.operator {
            Operator::StringEquals => any_equal(false),
            Operator::StringEqualsIgnoreCase => any_equal(true),
            Operator::StringNotEquals => !any_equal(false),
            Operator::StringNotEqualsIgnoreCase => !any_equal(true),
            // Answered before the key lookup; kept here so the match stays exhaustive.
            Operator::Null => false,
        }
    }

    fn describe_failure(&self, ctx: &RequestContext) -> String {
        let recipient = self.key.to_ascii_lowercase().starts_with("kms:recipientattestation:");
        match ctx.get(&self.key) {
            None if recipient => format!(
                "the key policy's condition {} requires a Recipient attestation document, and the request has none",
                self.key
            ),
            None => format!("the key policy's condition {} has no value in this request", self.key),
            Some(_) if recipient => {
                format!("the key policy's condition {} does not match the attestation document", self.key)
            }
            Some(_) => format!("the key policy's condition {} does not match the request", self.key),
        }
    }
}

/// `*` matches any run of characters, `?` one character (IAM action patterns).
fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ACCOUNT: &str = "111122223333";

    fn nitro_policy(pcr0: &str) -> KeyPolicy {
        KeyPolicy::parse(
            &serde_json::json!({
                "Version": "2012-10-17",
                "Statement": [
                    {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
                     "Action": ["kms:Create*", "kms:Describe*", "kms:GetKeyPolicy", "kms:PutKeyPolicy", "kms:Encrypt",
                                "kms:GenerateDataKey"], "Resource": "*"},
                    {"Sid": "enclave", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:role/enclave"},
                     "Action": "kms:Decrypt", "Resource": "*",
                     "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": pcr0}}}
                ]
            })
            .to_string(),
        )
        .unwrap()
    }

    fn attested(pcr0: u8) -> RequestContext {
        let mut ctx = RequestContext::new();
        ctx.set_attestation(&[(0u8, vec![pcr0; 48]), (1, vec![1; 48])].into_iter().collect());
        ctx
    }

    #[test]
    fn default_policy_allows_everything_for_the_account() {
        let p = KeyPolicy::parse(&KeyPolicy::default_for_account(ACCOUNT)).unwrap();
        assert_eq!(p.evaluate(ACCOUNT, "kms:Decrypt", &RequestContext::new()), Ok(()));
        let err = p.evaluate("999999999999", "kms:Decrypt", &RequestContext::new()).unwrap_err();
        assert!(err.0.contains("no statement"), "{err}");
    }

    #[test]
    fn pcr_condition_matches_ignoring_case_and_names_the_key_when_it_does_not() {
        let p = nitro_policy(&hex::encode_upper([0xabu8; 48]));
        assert_eq!(p.evaluate(ACCOUNT, "kms:Decrypt", &attested(0xab)), Ok(()));
        let err = p.evaluate(ACCOUNT, "kms:Decrypt", &attested(0xac)).unwrap_err();
        assert_eq!(
            err.0,
            "kms:Decrypt is not allowed: the key policy's condition kms:RecipientAttestation:PCR0 does not match the attestation document"
        );
        let err = p.evaluate(ACCOUNT, "kms:Decrypt", &RequestContext::new()).unwrap_err();
        assert!(err.0.contains("requires a Recipient attestation document"), "{err}");
        assert_eq!(p.evaluate(ACCOUNT, "kms:GenerateDataKey", &RequestContext::new()), Ok(()));
        assert!(p.evaluate(ACCOUNT, "kms:GenerateRandom", &RequestContext::new()).is_err());
    }

    #[test]
    fn image_sha384_is_pcr0_and_string_equals_is_case_sensitive() {
        let pcr0 = hex::encode([0xabu8; 48]);
        let doc = serde_json::json!({"Statement": {"Effect": "Allow", "Principal": "*", "Action": "kms:*",
            "Condition": {"StringEquals": {"kms:RecipientAttestation:ImageSha384": pcr0.to_uppercase()}}}});
        let p = KeyPolicy::parse(&doc.to_string()).unwrap();
        assert!(p.evaluate(ACCOUNT, "kms:Decrypt", &attested(0xab)).is_err());
        let doc = serde_json::json!({"Statement": {"Effect": "Allow", "Principal": "*", "Action": "kms:*",
            "Condition": {"StringEquals": {"kms:RecipientAttestation:ImageSha384": [pcr0, "00"]}}}});
        let p = KeyPolicy::parse(&doc.to_string()).unwrap();
        assert_eq!(p.evaluate(ACCOUNT, "kms:Decrypt", &attested(0xab)), Ok(()));
    }

    #[test]
    fn explicit_deny_wins() {
        let doc = serde_json::json!({"Statement": [
            {"Effect": "Allow", "Principal": {"AWS": ["arn:aws:iam::111122223333:root"]}, "Action": "kms:*"},
            {"Sid": "no-plain-decrypt", "Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt",
             "Condition": {"StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": hex::encode([0xab; 48])}}}
        ]});
        let p = KeyPolicy::parse(&doc.to_string()).unwrap();
        let err = p.evaluate(ACCOUNT, "kms:Decrypt", &RequestContext::new()).unwrap_err();
        assert!(err.0.contains("explicit Deny") && err.0.contains("no-plain-decrypt"), "{err}");
        assert_eq!(p.evaluate(ACCOUNT, "kms:Decrypt", &attested(0xab)), Ok(()));
        assert_eq!(p.evaluate(ACCOUNT, "kms:Encrypt", &RequestContext::new()), Ok(()));
    }

    #[test]
    fn encryption_context_condition() {
        let doc = serde_json::json!({"Statement": {"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt",
            "Condition": {"StringEquals": {"kms:EncryptionContext:model": "iris"}}}});
        let p = KeyPolicy::parse(&doc.to_string()).unwrap();
        let mut ctx = RequestContext::new();
        ctx.set_encryption_context(&[("model".to_owned(), "iris".to_owned())].into_iter().collect());
        assert_eq!(p.evaluate(ACCOUNT, "kms:Decrypt", &ctx), Ok(()));
        let err = p.evaluate(ACCOUNT, "kms:Decrypt", &RequestContext::new()).unwrap_err();
        assert!(err.0.contains("kms:EncryptionContext:model"), "{err}");
    }

    #[test]
    fn unsupported_elements_are_refused_when_stored() {
        for doc in [
            "nope",
            "[]",
            r#"{"Statement": []}"#.replace("[]", "3").as_str(),
            r#"{"Statement": {"Effect": "Maybe", "Principal": "*", "Action": "kms:*"}}"#,
            r#"{"Statement": {"Effect": "Allow", "Principal": "*", "NotAction": "kms:*"}}"#,
            r#"{"Statement": {"Effect": "Allow", "Principal": {"Service": "x"}, "Action": "kms:*"}}"#,
            r#"{"Statement": {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Condition": {"NumericLessThan": {"a": "1"}}}}"#,
            r#"{"Statement": {"Effect": "Allow", "Principal": "*", "Action": []}}"#,
        ] {
            assert!(KeyPolicy::parse(doc).is_err(), "{doc}");
        }
        assert!(KeyPolicy::parse(&"x".repeat(MAX_POLICY_LEN + 1)).is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_matches("kms:*", "kms:decrypt"));
        assert!(glob_matches("*", "kms:decrypt"));
        assert!(glob_matches("kms:generate*", "kms:generatedatakey"));
        assert!(glob_matches("kms:?ncrypt", "kms:encrypt"));
        assert!(!glob_matches("kms:generate*", "kms:decrypt"));
        assert!(!glob_matches("kms:decrypt", "kms:decrypt2"));
    }
}

#[cfg(test)]
mod null_operator_tests {
    use super::*;

    #[test]
    fn null_denies_decrypt_without_attestation_and_only_then() {
        let policy = KeyPolicy::parse(
            &serde_json::json!({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "kms:*", "Resource": "*"},
                {"Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
                 "Condition": {"Null": {"kms:RecipientAttestation:ImageSha384": "true"}}}
            ]})
            .to_string(),
        )
        .unwrap();
        let plain = RequestContext::default();
        let err = policy.evaluate("111122223333", "kms:Decrypt", &plain).unwrap_err();
        assert!(err.0.to_lowercase().contains("deny"), "{err}");
        policy.evaluate("111122223333", "kms:GenerateDataKey", &plain).unwrap();
    }
}

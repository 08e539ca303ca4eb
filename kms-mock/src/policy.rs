//! Key policy evaluation: the subset of IAM policy logic that KMS key policies with Nitro conditions need.
//!
//! Rules, as AWS documents them: an explicit `Deny` that applies wins; otherwise some `Allow` must apply;
//! otherwise the request is denied (and the server may still find a grant that allows it: a grant can add
//! an `Allow`, never lift an explicit `Deny`). A statement applies when its `Principal` names the caller
//! (see [`crate::principal`]), its `Action` matches, and every condition in its `Condition` block holds.
//! Supported condition operators: `StringEquals`, `StringEqualsIgnoreCase`, `StringNotEquals`,
//! `StringNotEqualsIgnoreCase`, `Bool` (and their `...IfExists` forms), and `Null`. For the positive
//! operators a value list matches if any value matches; for the negated ones the request value must differ
//! from every value ("none of these"). A condition key absent from the request does not match, except
//! under a negated operator, where it does (as in IAM: a `Deny` with `StringNotEquals` also applies to a
//! request without the key). Several keys under one operator, and several operators, must *all* hold.
//! Anything else is refused when the policy is stored (`MalformedPolicyDocumentException`), so evaluation
//! never meets an element it does not understand.
//!
//! Denials say *why*, naming the first condition that failed in an `Allow` statement that otherwise
//! applied, because "denied" alone is what makes PCR mistakes so hard to find with the real KMS.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::principal::{Principal, PrincipalPattern};

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
    principals: Vec<PrincipalPattern>,
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
    /// `Bool`: `"true"`/`"false"`, compared without case.
    Bool,
    /// `Null`: value "true" matches when the key is absent, "false" when it is present.
    Null,
}

/// Why a policy document was refused when stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed key policy: {0}")]
pub struct MalformedPolicy(pub String);

impl MalformedPolicy {
    /// Whether the document was refused for its length (KMS answers that with `LimitExceededException`).
    pub fn is_too_long(&self) -> bool {
        self.0.starts_with(TOO_LONG)
    }
}

const TOO_LONG: &str = "longer than";

/// Why a request was denied: a message for `AccessDeniedException`, naming the reason (never key material).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct Denied {
    /// An explicit `Deny` applied (nothing can lift it); otherwise no `Allow` did (a grant still might).
    pub explicit: bool,
    /// The reason.
    pub message: String,
}

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
            return Err(malformed(format!("{TOO_LONG} {MAX_POLICY_LEN} bytes")));
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

    /// Decides whether `caller` may perform `action` (e.g. `kms:Decrypt`) by this policy alone.
    pub fn evaluate(&self, caller: &Principal, action: &str, ctx: &RequestContext) -> Result<(), Denied> {
        let mut allowed = false;
        let mut failed_condition: Option<String> = None;
        for st in &self.statements {
            if !st.principals.iter().any(|p| p.matches(caller)) || !st.action_matches(action) {
                continue;
            }
            let failed = st.conditions.iter().find(|c| !c.matches(ctx));
            match (&st.effect, failed) {
                (Effect::Deny, None) => {
                    // Name the statement and the condition keys that made it apply (a PCR, say).
                    let mut why: Vec<String> = st.sid.iter().map(|s| format!("statement {s:?}")).collect();
                    let mut keys: Vec<&str> = st.conditions.iter().map(|c| c.key.as_str()).collect();
                    keys.dedup();
                    if !keys.is_empty() {
                        why.push(format!("condition {}", keys.join(", ")));
                    }
                    let why = if why.is_empty() { String::new() } else { format!(" ({})", why.join(", ")) };
                    return Err(Denied {
                        explicit: true,
                        message: format!("{action} is denied by an explicit Deny in the key policy{why}"),
                    });
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
        Err(Denied {
            explicit: false,
            message: match failed_condition {
                Some(why) => format!("{action} is not allowed: {why}"),
                None => format!("{action} is not allowed: no statement of the key policy allows it for {caller}"),
            },
        })
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
            Some(Value::String(s)) if s == "*" => vec![PrincipalPattern::Anyone],
            Some(Value::Object(p)) => {
                if p.keys().any(|k| k != "AWS") {
                    return Err(malformed("only AWS principals are supported (no Service or Federated)"));
                }
                strings(p.get("AWS").unwrap_or(&Value::Null), "Principal.AWS")?
                    .iter()
                    .map(|v| PrincipalPattern::parse(v))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        malformed(format!("Policy contains a statement with one or more invalid principals: {e}"))
                    })?
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
                    "Bool" => Operator::Bool,
                    "Null" if !if_exists => Operator::Null,
                    _ => return Err(malformed(format!("unsupported condition operator {op_name:?}"))),
                };
                let keys = keys.as_object().ok_or_else(|| malformed(format!("{op_name} must be an object")))?;
                for (key, values) in keys {
                    let values = strings(values, "condition values")?;
                    if matches!(operator, Operator::Bool | Operator::Null)
                        && values.iter().any(|v| !v.eq_ignore_ascii_case("true") && !v.eq_ignore_ascii_case("false"))
                    {
                        return Err(malformed(format!("{op_name} takes \"true\" or \"false\"")));
                    }
                    conditions.push(Condition { operator, if_exists, key: key.clone(), values });
                }
            }
        }
        Ok(Self { sid, effect, principals, actions, conditions })
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
            Operator::StringEqualsIgnoreCase | Operator::Bool => any_equal(true),
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

    fn root() -> Principal {
        Principal::account_root(ACCOUNT)
    }

    fn enclave() -> Principal {
        Principal::parse("arn:aws:sts::111122223333:assumed-role/enclave/i-0123456789abcdef0").unwrap()
    }

    fn client() -> Principal {
        Principal::parse("arn:aws:iam::111122223333:role/client").unwrap()
    }

    fn nitro_policy(pcr0: &str) -> KeyPolicy {
        KeyPolicy::parse(
            &serde_json::json!({
                "Version": "2012-10-17",
                "Statement": [
                    {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
                     "Action": ["kms:Describe*", "kms:GetKeyPolicy", "kms:PutKeyPolicy", "kms:Encrypt",
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
    fn default_policy_allows_everything_for_the_account_and_nothing_for_others() {
        let p = KeyPolicy::parse(&KeyPolicy::default_for_account(ACCOUNT)).unwrap();
        assert_eq!(p.evaluate(&root(), "kms:Decrypt", &RequestContext::new()), Ok(()));
        assert_eq!(p.evaluate(&client(), "kms:Decrypt", &RequestContext::new()), Ok(()), "delegated to IAM");
        let stranger = Principal::parse("arn:aws:iam::999999999999:root").unwrap();
        let err = p.evaluate(&stranger, "kms:Decrypt", &RequestContext::new()).unwrap_err();
        assert!(!err.explicit);
        assert!(err.message.contains("no statement") && err.message.contains("999999999999"), "{err}");
    }

    #[test]
    fn a_statement_naming_a_role_applies_to_that_role_only() {
        let p = nitro_policy(&hex::encode([0xabu8; 48]));
        assert_eq!(p.evaluate(&enclave(), "kms:Decrypt", &attested(0xab)), Ok(()));
        for other in [root(), client()] {
            let err = p.evaluate(&other, "kms:Decrypt", &attested(0xab)).unwrap_err();
            assert!(!err.explicit && err.message.contains("no statement"), "{other}: {err}");
        }
        // The account statement covers the enclave role too, for what it lists.
        assert_eq!(p.evaluate(&enclave(), "kms:DescribeKey", &RequestContext::new()), Ok(()));
    }

    #[test]
    fn pcr_condition_matches_ignoring_case_and_names_the_key_when_it_does_not() {
        let p = nitro_policy(&hex::encode_upper([0xabu8; 48]));
        assert_eq!(p.evaluate(&enclave(), "kms:Decrypt", &attested(0xab)), Ok(()));
        let err = p.evaluate(&enclave(), "kms:Decrypt", &attested(0xac)).unwrap_err();
        assert_eq!(
            err.message,
            "kms:Decrypt is not allowed: the key policy's condition kms:RecipientAttestation:PCR0 does not match the attestation document"
        );
        let err = p.evaluate(&enclave(), "kms:Decrypt", &RequestContext::new()).unwrap_err();
        assert!(err.message.contains("requires a Recipient attestation document"), "{err}");
        assert_eq!(p.evaluate(&root(), "kms:GenerateDataKey", &RequestContext::new()), Ok(()));
        assert!(p.evaluate(&root(), "kms:GenerateRandom", &RequestContext::new()).is_err());
    }

    #[test]
    fn image_sha384_is_pcr0_and_string_equals_is_case_sensitive() {
        let pcr0 = hex::encode([0xabu8; 48]);
        let doc = serde_json::json!({"Statement": {"Effect": "Allow", "Principal": "*", "Action": "kms:*",
            "Condition": {"StringEquals": {"kms:RecipientAttestation:ImageSha384": pcr0.to_uppercase()}}}});
        let p = KeyPolicy::parse(&doc.to_string()).unwrap();
        assert!(p.evaluate(&root(), "kms:Decrypt", &attested(0xab)).is_err());
        let doc = serde_json::json!({"Statement": {"Effect": "Allow", "Principal": "*", "Action": "kms:*",
            "Condition": {"StringEquals": {"kms:RecipientAttestation:ImageSha384": [pcr0, "00"]}}}});
        let p = KeyPolicy::parse(&doc.to_string()).unwrap();
        assert_eq!(p.evaluate(&root(), "kms:Decrypt", &attested(0xab)), Ok(()));
    }

    #[test]
    fn explicit_deny_wins_and_says_so() {
        let doc = serde_json::json!({"Statement": [
            {"Effect": "Allow", "Principal": {"AWS": ["arn:aws:iam::111122223333:root"]}, "Action": "kms:*"},
            {"Sid": "no-plain-decrypt", "Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt",
             "Condition": {"StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": hex::encode([0xab; 48])}}}
        ]});
        let p = KeyPolicy::parse(&doc.to_string()).unwrap();
        let err = p.evaluate(&root(), "kms:Decrypt", &RequestContext::new()).unwrap_err();
        assert!(err.explicit, "a negated operator applies when the key is absent");
        assert!(err.message.contains("explicit Deny") && err.message.contains("no-plain-decrypt"), "{err}");
        let err = p.evaluate(&root(), "kms:Decrypt", &attested(0xac)).unwrap_err();
        assert!(err.explicit, "{err}");
        assert_eq!(p.evaluate(&root(), "kms:Decrypt", &attested(0xab)), Ok(()));
        assert_eq!(p.evaluate(&root(), "kms:Encrypt", &RequestContext::new()), Ok(()));
    }

    /// Several keys under one operator must all hold: a `Deny` listing PCR0 and PCR1 together applies only
    /// when both differ. That is IAM's rule, and the reason `veil kms policy` writes one `Deny` per PCR.
    #[test]
    fn keys_under_one_operator_are_anded_also_in_a_deny() {
        let doc = serde_json::json!({"Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt"},
            {"Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt",
             "Condition": {"StringNotEqualsIgnoreCase": {
                 "kms:RecipientAttestation:PCR0": hex::encode([0xab; 48]),
                 "kms:RecipientAttestation:PCR1": hex::encode([1; 48])}}}
        ]});
        let p = KeyPolicy::parse(&doc.to_string()).unwrap();
        // PCR0 wrong, PCR1 right: this single Deny does not apply.
        assert_eq!(p.evaluate(&root(), "kms:Decrypt", &attested(0xac)), Ok(()));
        let mut both_wrong = RequestContext::new();
        both_wrong.set_attestation(&[(0u8, vec![0xac; 48]), (1, vec![2; 48])].into_iter().collect());
        assert!(p.evaluate(&root(), "kms:Decrypt", &both_wrong).unwrap_err().explicit);
        // A list under a negated operator means "none of these".
        let doc = serde_json::json!({"Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt"},
            {"Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt",
             "Condition": {"StringNotEquals": {"kms:RecipientAttestation:PCR0": [hex::encode([0xab; 48]), hex::encode([0xcd; 48])]}}}
        ]});
        let p = KeyPolicy::parse(&doc.to_string()).unwrap();
        assert_eq!(p.evaluate(&root(), "kms:Decrypt", &attested(0xab)), Ok(()));
        assert_eq!(p.evaluate(&root(), "kms:Decrypt", &attested(0xcd)), Ok(()));
        assert!(p.evaluate(&root(), "kms:Decrypt", &attested(0xef)).unwrap_err().explicit);
    }

    #[test]
    fn bool_and_caller_account_conditions() {
        let doc = serde_json::json!({"Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "kms:CreateGrant",
             "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}, "StringEquals": {"kms:CallerAccount": ACCOUNT}}}
        ]});
        let p = KeyPolicy::parse(&doc.to_string()).unwrap();
        let mut ctx = RequestContext::new();
        ctx.set("kms:CallerAccount", ACCOUNT);
        ctx.set("kms:GrantIsForAWSResource", "false");
        assert!(p.evaluate(&root(), "kms:CreateGrant", &ctx).is_err());
        ctx.set("kms:GrantIsForAWSResource", "TRUE");
        assert_eq!(p.evaluate(&root(), "kms:CreateGrant", &ctx), Ok(()));
        ctx.set("kms:CallerAccount", "444455556666");
        assert!(p.evaluate(&root(), "kms:CreateGrant", &ctx).is_err());
        assert!(KeyPolicy::parse(&doc.to_string().replace("\"true\"", "\"yes\"")).is_err());
    }

    #[test]
    fn encryption_context_condition() {
        let doc = serde_json::json!({"Statement": {"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt",
            "Condition": {"StringEquals": {"kms:EncryptionContext:model": "iris"}}}});
        let p = KeyPolicy::parse(&doc.to_string()).unwrap();
        let mut ctx = RequestContext::new();
        ctx.set_encryption_context(&[("model".to_owned(), "iris".to_owned())].into_iter().collect());
        assert_eq!(p.evaluate(&root(), "kms:Decrypt", &ctx), Ok(()));
        let err = p.evaluate(&root(), "kms:Decrypt", &RequestContext::new()).unwrap_err();
        assert!(err.message.contains("kms:EncryptionContext:model"), "{err}");
    }

    #[test]
    fn unsupported_elements_and_invalid_principals_are_refused_when_stored() {
        for doc in [
            "nope",
            "[]",
            r#"{"Statement": []}"#.replace("[]", "3").as_str(),
            r#"{"Statement": {"Effect": "Maybe", "Principal": "*", "Action": "kms:*"}}"#,
            r#"{"Statement": {"Effect": "Allow", "Principal": "*", "NotAction": "kms:*"}}"#,
            r#"{"Statement": {"Effect": "Allow", "Principal": {"Service": "x"}, "Action": "kms:*"}}"#,
            r#"{"Statement": {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:role/*"}, "Action": "kms:*"}}"#,
            r#"{"Statement": {"Effect": "Allow", "Principal": {"AWS": "bob"}, "Action": "kms:*"}}"#,
            r#"{"Statement": {"Effect": "Allow", "Action": "kms:*"}}"#,
            r#"{"Statement": {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Condition": {"NumericLessThan": {"a": "1"}}}}"#,
            r#"{"Statement": {"Effect": "Allow", "Principal": "*", "Action": []}}"#,
        ] {
            assert!(KeyPolicy::parse(doc).is_err(), "{doc}");
        }
        let err =
            KeyPolicy::parse(r#"{"Statement": {"Effect": "Allow", "Principal": {"AWS": "bob"}, "Action": "kms:*"}}"#)
                .unwrap_err();
        assert!(err.0.contains("invalid principals") && !err.is_too_long(), "{err}");
        assert!(KeyPolicy::parse(&"x".repeat(MAX_POLICY_LEN + 1)).unwrap_err().is_too_long());
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
        let err = policy.evaluate(&root(), "kms:Decrypt", &RequestContext::new()).unwrap_err();
        assert!(err.explicit, "{err}");
        assert_eq!(policy.evaluate(&root(), "kms:Decrypt", &attested(1)), Ok(()));
        policy.evaluate(&root(), "kms:GenerateDataKey", &RequestContext::new()).unwrap();
    }
}

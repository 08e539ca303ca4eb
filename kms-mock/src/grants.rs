//! Grants: what `CreateGrant` accepts, and whether a grant allows a request.
//!
//! A grant lets its grantee principal perform some operations on one key, optionally only with a given
//! encryption context (`EncryptionContextEquals`, `EncryptionContextSubset`). KMS weighs grants together
//! with the key policy (and IAM policies): a request is allowed when something allows it **and nothing
//! explicitly denies it**. So a grant adds permissions, and can never lift a key policy's explicit `Deny`
//! (AWS: "No AWS principal has any permissions to a KMS key unless that permission is provided explicitly
//! and never denied"). The server evaluates the key policy first and consults grants only on an implicit
//! denial ([`crate::policy::Denied::explicit`] false).
//!
//! Grant tokens exist in KMS for eventual consistency; the mock is consistent at once, so a token is
//! checked for shape and never needed (and never enough: permission comes from the grant existing).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::principal::{Principal, PrincipalPattern};

/// Most grants one key holds (KMS allows 50,000; the mock keeps its file small).
pub const MAX_GRANTS_PER_KEY: usize = 1000;
/// Most encryption context pairs in one constraint (as KMS).
pub const MAX_CONSTRAINT_PAIRS: usize = 8;
/// Longest encryption context value in a constraint (as KMS).
pub const MAX_CONSTRAINT_VALUE: usize = 384;
/// Most grant tokens in one request (as KMS).
pub const MAX_GRANT_TOKENS: usize = 10;

/// Grant operations that a symmetric encryption key supports.
pub const SYMMETRIC_OPERATIONS: &[&str] = &[
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "CreateGrant",
    "RetireGrant",
    "DescribeKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
];

/// Grant operations of KMS that need another kind of key (asymmetric or HMAC).
const OTHER_KEY_OPERATIONS: &[&str] =
    &["Sign", "Verify", "GetPublicKey", "GenerateMac", "VerifyMac", "DeriveSharedSecret"];

/// Operations to which an encryption context constraint does not apply (KMS: "the constraint doesn't apply
/// to these operations").
const UNCONSTRAINED: &[&str] = &["DescribeKey", "RetireGrant"];

/// A grant's encryption context constraints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Constraints {
    /// The request's encryption context must be exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context_equals: Option<BTreeMap<String, String>>,
    /// The request's encryption context must include these pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context_subset: Option<BTreeMap<String, String>>,
}

impl Constraints {
    fn hold(&self, context: &BTreeMap<String, String>) -> bool {
        self.encryption_context_equals.as_ref().is_none_or(|e| e == context)
            && self.encryption_context_subset.as_ref().is_none_or(|s| is_subset(s, context))
    }

    /// Whether every context these constraints allow is also allowed by `parent` (KMS: a grant made
    /// with a grant's CreateGrant permission needs "an equally strict or stricter" constraint).
    pub fn at_least_as_strict_as(&self, parent: Option<&Constraints>) -> bool {
        let Some(parent) = parent else { return true };
        let equals_ok = match &parent.encryption_context_equals {
            None => true,
            Some(e) => self.encryption_context_equals.as_ref() == Some(e),
        };
        let subset_ok = match &parent.encryption_context_subset {
            None => true,
            Some(s) => {
                self.encryption_context_equals.as_ref().is_some_and(|e| is_subset(s, e))
                    || self.encryption_context_subset.as_ref().is_some_and(|c| is_subset(s, c))
            }
        };
        equals_ok && subset_ok
    }

    /// `EncryptionContextEquals` or `EncryptionContextSubset` (for `kms:GrantConstraintType`), if one is set.
    pub fn constraint_type(&self) -> Option<&'static str> {
        match (&self.encryption_context_equals, &self.encryption_context_subset) {
            (Some(_), _) => Some("EncryptionContextEquals"),
            (None, Some(_)) => Some("EncryptionContextSubset"),
            (None, None) => None,
        }
    }
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

/// One grant, as stored and as `ListGrants` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    /// 64 hex digits.
    pub grant_id: String,
    /// The key's UUID.
    pub key_id: String,
    /// The optional friendly name (CreateGrant's idempotency handle).
    pub name: Option<String>,
    /// Who gets the permissions (an ARN).
    pub grantee_principal: String,
    /// Who may retire the grant (an ARN), if anyone besides the defaults.
    pub retiring_principal: Option<String>,
    /// Operation names, e.g. `Decrypt`.
    pub operations: Vec<String>,
    /// Encryption context constraints.
    pub constraints: Option<Constraints>,
    /// Seconds since the Unix epoch.
    pub creation_date: f64,
    /// The account that created it: `arn:aws:iam::ACCOUNT:root`.
    pub issuing_account: String,
}

impl Grant {
    /// Whether this grant lets `caller` perform `operation` (`Decrypt`, not `kms:Decrypt`) with this request
    /// encryption context.
    pub fn allows(&self, caller: &Principal, operation: &str, context: &BTreeMap<String, String>) -> bool {
        self.grantee_matches(caller)
            && self.operations.iter().any(|o| o == operation)
            && (UNCONSTRAINED.contains(&operation) || self.constraints.as_ref().is_none_or(|c| c.hold(context)))
    }

    /// Whether `caller` is the grantee (a role grantee covers its sessions, an account grantee its principals).
    pub fn grantee_matches(&self, caller: &Principal) -> bool {
        PrincipalPattern::parse(&self.grantee_principal).is_ok_and(|p| p.matches(caller))
    }

    /// Whether `caller` may retire this grant: its retiring principal, its grantee if the grant includes
    /// `RetireGrant`, or (the mock's reading of "the account in which the grant is created", without IAM)
    /// a principal of the issuing account.
    pub fn retirable_by(&self, caller: &Principal) -> bool {
        let retiring = self.retiring_principal.as_deref().and_then(|r| PrincipalPattern::parse(r).ok());
        retiring.is_some_and(|p| p.matches(caller))
            || (self.grantee_matches(caller) && self.operations.iter().any(|o| o == "RetireGrant"))
            || self.issuing_account == format!("arn:aws:iam::{}:root", caller.account())
    }
}

/// Why a `CreateGrant` input was refused: `(AWS error name, message)`.
pub type InputError = (&'static str, String);

/// Checks a grant's `Operations`: known, supported by a symmetric key, no duplicates kept.
pub fn check_operations(ops: &[String]) -> Result<Vec<String>, InputError> {
    if ops.is_empty() {
        return Err(("ValidationException", "Operations must list at least one operation".into()));
    }
    let mut out: Vec<String> = Vec::new();
    for op in ops {
        if OTHER_KEY_OPERATIONS.contains(&op.as_str()) {
            return Err((
                "ValidationException",
                format!("the grant operation {op} is not supported by a symmetric encryption KMS key"),
            ));
        }
        if !SYMMETRIC_OPERATIONS.contains(&op.as_str()) {
            return Err(("ValidationException", format!("{op:?} is not a grant operation")));
        }
        if !out.contains(op) {
            out.push(op.clone());
        }
    }
    Ok(out)
}

/// Checks one constraint's encryption context: at most 8 pairs, values of at most 384 characters.
pub fn check_constraint_context(name: &str, ctx: &BTreeMap<String, String>) -> Result<(), InputError> {
    if ctx.len() > MAX_CONSTRAINT_PAIRS {
        return Err(("ValidationException", format!("{name} may have at most {MAX_CONSTRAINT_PAIRS} pairs")));
    }
    if ctx.iter().any(|(k, v)| k.is_empty() || v.chars().count() > MAX_CONSTRAINT_VALUE) {
        return Err((
            "ValidationException",
            format!("{name}: keys must be non-empty and values at most {MAX_CONSTRAINT_VALUE} characters"),
        ));
    }
    Ok(())
}

/// A grant name: 1..=256 characters of `[a-zA-Z0-9:/_-]` (KMS's pattern).
pub fn check_name(name: &str) -> Result<(), InputError> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b":/_-".contains(&b));
    if ok { Ok(()) } else { Err(("ValidationException", "Name must be 1 to 256 characters of [a-zA-Z0-9:/_-]".into())) }
}

/// A grant id is 64 lowercase hex digits.
pub fn valid_grant_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The token handed out with a grant: its id, a dot, and 64 random hex digits (fresh at every CreateGrant).
pub fn token(grant_id: &str, random: &[u8; 32]) -> String {
    format!("{grant_id}.{}", hex::encode(random))
}

/// The grant id inside a token this mock made, if it is one.
pub fn token_grant_id(token: &str) -> Option<&str> {
    let (id, rest) = token.split_once('.')?;
    (valid_grant_id(id) && valid_grant_id(rest)).then_some(id)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn grant(ops: &[&str], constraints: Option<Constraints>) -> Grant {
        Grant {
            grant_id: "ab".repeat(32),
            key_id: "1234abcd-12ab-34cd-56ef-1234567890ab".into(),
            name: None,
            grantee_principal: "arn:aws:iam::111122223333:role/helper".into(),
            retiring_principal: Some("arn:aws:iam::111122223333:role/janitor".into()),
            operations: ops.iter().map(|s| s.to_string()).collect(),
            constraints,
            creation_date: 1.0,
            issuing_account: "arn:aws:iam::111122223333:root".into(),
        }
    }

    fn principal(arn: &str) -> Principal {
        Principal::parse(arn).unwrap()
    }

    #[test]
    fn a_grant_allows_its_grantee_its_operations_within_its_constraints() {
        let helper = principal("arn:aws:sts::111122223333:assumed-role/helper/s1");
        let other = principal("arn:aws:iam::111122223333:role/other");
        let g = grant(&["Decrypt", "DescribeKey"], None);
        assert!(g.allows(&helper, "Decrypt", &ctx(&[])));
        assert!(!g.allows(&other, "Decrypt", &ctx(&[])));
        assert!(!g.allows(&helper, "Encrypt", &ctx(&[])));

        let subset = Constraints { encryption_context_subset: Some(ctx(&[("tenant", "a")])), ..Default::default() };
        let g = grant(&["Decrypt", "DescribeKey"], Some(subset));
        assert!(g.allows(&helper, "Decrypt", &ctx(&[("tenant", "a"), ("x", "y")])));
        assert!(!g.allows(&helper, "Decrypt", &ctx(&[("tenant", "b")])));
        assert!(!g.allows(&helper, "Decrypt", &ctx(&[])));
        assert!(g.allows(&helper, "DescribeKey", &ctx(&[])), "constraints do not apply to DescribeKey");

        let equals = Constraints { encryption_context_equals: Some(ctx(&[("tenant", "a")])), ..Default::default() };
        let g = grant(&["Decrypt"], Some(equals));
        assert!(g.allows(&helper, "Decrypt", &ctx(&[("tenant", "a")])));
        assert!(!g.allows(&helper, "Decrypt", &ctx(&[("tenant", "a"), ("x", "y")])));
    }

    #[test]
    fn retiring_and_strictness_rules() {
        // A grantee of another account, to tell the rules apart (any principal of the issuing account may
        // retire: the mock's reading of "the account in which the grant is created" without IAM).
        let foreign = |ops: &[&str]| Grant {
            grantee_principal: "arn:aws:iam::444455556666:role/helper".into(),
            retiring_principal: Some("arn:aws:iam::444455556666:role/janitor".into()),
            ..grant(ops, None)
        };
        let helper = principal("arn:aws:iam::444455556666:role/helper");
        assert!(foreign(&["Decrypt"]).retirable_by(&principal("arn:aws:iam::444455556666:role/janitor")));
        assert!(!foreign(&["Decrypt"]).retirable_by(&helper), "no RetireGrant in it");
        assert!(foreign(&["Decrypt", "RetireGrant"]).retirable_by(&helper));
        assert!(foreign(&["Decrypt"]).retirable_by(&principal("arn:aws:iam::111122223333:role/anyone")));
        assert!(!foreign(&["Decrypt"]).retirable_by(&principal("arn:aws:iam::444455556666:role/other")));

        let subset = Constraints { encryption_context_subset: Some(ctx(&[("a", "1")])), ..Default::default() };
        let wider =
            Constraints { encryption_context_subset: Some(ctx(&[("a", "1"), ("b", "2")])), ..Default::default() };
        let equals =
            Constraints { encryption_context_equals: Some(ctx(&[("a", "1"), ("b", "2")])), ..Default::default() };
        assert!(wider.at_least_as_strict_as(Some(&subset)));
        assert!(equals.at_least_as_strict_as(Some(&subset)));
        assert!(!subset.at_least_as_strict_as(Some(&wider)));
        assert!(!Constraints::default().at_least_as_strict_as(Some(&subset)));
        assert!(!wider.at_least_as_strict_as(Some(&equals)));
        assert!(equals.at_least_as_strict_as(Some(&equals)));
        assert!(Constraints::default().at_least_as_strict_as(None));
    }

    #[test]
    fn inputs_are_checked() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(check_operations(&s(&["Decrypt", "Decrypt", "Encrypt"])).unwrap(), s(&["Decrypt", "Encrypt"]));
        assert!(check_operations(&[]).is_err());
        assert!(check_operations(&s(&["Sign"])).unwrap_err().1.contains("symmetric"));
        assert!(check_operations(&s(&["decrypt"])).is_err(), "names are case-sensitive");
        assert!(check_name("veil-grant_1:a/b").is_ok());
        assert!(check_name("").is_err() && check_name("a b").is_err() && check_name(&"a".repeat(257)).is_err());
        let big: BTreeMap<String, String> = (0..9).map(|i| (i.to_string(), "v".into())).collect();
        assert!(check_constraint_context("EncryptionContextSubset", &big).is_err());
        assert!(check_constraint_context("x", &ctx(&[("k", &"v".repeat(385))])).is_err());
        let t = token(&"ab".repeat(32), &[7u8; 32]);
        assert_eq!(token_grant_id(&t), Some("ab".repeat(32).as_str()));
        assert_eq!(token_grant_id("garbage"), None);
        assert_eq!(token_grant_id(&format!("{}.xyz", "ab".repeat(32))), None);
    }
}

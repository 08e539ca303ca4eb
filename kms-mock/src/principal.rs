//! Who is calling: AWS principals, their ARNs, and how a key policy's or a grant's principal names them.
//!
//! Real KMS learns the caller from the SigV4 signature (IAM knows whose access key it is). The mock has no
//! IAM: it maps access key ids to principal ARNs from its configuration (`--principal AKID=ARN`), and an
//! unconfigured mock treats every caller as the account root (see [`crate::Config::principals`]).
//!
//! Matching a policy's principal against the caller follows what AWS documents for key policies:
//!
//! - `"*"` (or `{"AWS": "*"}`): anyone.
//! - an exact IAM user, role or assumed-role-session ARN: that principal; a **role** ARN also matches the
//!   role's sessions (`arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION`), which is how an instance role's
//!   credentials appear to KMS.
//! - the account (`arn:aws:iam::ACCOUNT:root` or the bare 12-digit id): in AWS this does not mean the root
//!   user alone, it *delegates* to IAM: every principal of that account whose IAM policies allow the
//!   action. The mock has no IAM policies, so it takes the permissive reading: **every principal of that
//!   account**, as if each one had an IAM policy allowing everything. A statement naming one role applies
//!   to that role only, so "only the enclave role may decrypt" is tested for real.

use std::fmt;

/// Longest principal ARN accepted (IAM's limit for user and role ARNs is 2048).
pub const MAX_ARN_LEN: usize = 2048;

/// A principal ARN that is not one the mock understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{arn:?} is not a principal ARN: {why}")]
pub struct InvalidPrincipal {
    /// What was given (cut to a printable length).
    pub arn: String,
    /// What is wrong with it.
    pub why: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// `arn:aws:iam::ACCOUNT:root`.
    Root,
    /// `arn:aws:iam::ACCOUNT:user/PATH/NAME`.
    User,
    /// `arn:aws:iam::ACCOUNT:role/PATH/NAME`; `name` is the last path segment.
    Role { name: String },
    /// `arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION`; `role` is NAME.
    AssumedRole { role: String },
}

/// An AWS principal (the caller of a request, or one named by a policy or a grant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    arn: String,
    account: String,
    kind: Kind,
}

fn is_account(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// IAM's characters for names and paths (`[\w+=,.@-]`), plus `/` between path segments.
fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b)
}

impl Principal {
    /// Parses `arn:aws:iam::ACCOUNT:root|user/...|role/...` or `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`.
    pub fn parse(arn: &str) -> Result<Self, InvalidPrincipal> {
        let fail = |why| InvalidPrincipal { arn: arn.chars().take(200).collect(), why };
        if arn.is_empty() || arn.len() > MAX_ARN_LEN {
            return Err(fail("a principal ARN is 1 to 2048 characters"));
        }
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let [prefix, partition, service, region, account, resource] = parts[..] else {
            return Err(fail("expected arn:aws:SERVICE::ACCOUNT:RESOURCE"));
        };
        if prefix != "arn" || partition != "aws" {
            return Err(fail("only the aws partition is known to the mock (arn:aws:...)"));
        }
        if !region.is_empty() {
            return Err(fail("IAM and STS principal ARNs have no region"));
        }
        if !is_account(account) {
            return Err(fail("the account must be 12 digits"));
        }
        let segments_ok =
            |rest: &str| !rest.is_empty() && rest.split('/').all(|s| !s.is_empty() && s.bytes().all(is_name_char));
        let kind = match (service, resource) {
            ("iam", "root") => Kind::Root,
            ("iam", r) if r.starts_with("user/") && segments_ok(&r[5..]) => Kind::User,
            ("iam", r) if r.starts_with("role/") && segments_ok(&r[5..]) => {
                let name = r.rsplit('/').next().unwrap_or_default().to_owned();
                Kind::Role { name }
            }
            ("sts", r) if r.starts_with("assumed-role/") => {
                let rest = &r["assumed-role/".len()..];
                match rest.split('/').collect::<Vec<_>>()[..] {
                    [role, session] if segments_ok(role) && segments_ok(session) => {
                        Kind::AssumedRole { role: role.to_owned() }
                    }
                    _ => return Err(fail("an assumed-role ARN is arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION")),
                }
            }
            ("iam" | "sts", _) => {
                return Err(fail("expected root, user/NAME, role/NAME (iam) or assumed-role/ROLE/SESSION (sts)"));
            }
            _ => return Err(fail("principals are iam or sts ARNs")),
        };
        Ok(Self { arn: arn.to_owned(), account: account.to_owned(), kind })
    }

    /// The root of `account` (12 digits, checked by the caller).
    pub fn account_root(account: &str) -> Self {
        Self { arn: format!("arn:aws:iam::{account}:root"), account: account.to_owned(), kind: Kind::Root }
    }

    /// The ARN, as configured.
    pub fn arn(&self) -> &str {
        &self.arn
    }

    /// The principal's account (12 digits).
    pub fn account(&self) -> &str {
        &self.account
    }

    /// Whether this is an account root (`arn:aws:iam::ACCOUNT:root`).
    pub fn is_account_root(&self) -> bool {
        self.kind == Kind::Root
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn)
    }
}

/// How a key policy's `Principal` element, or a grant's grantee, names principals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalPattern {
    /// `"*"`: anyone.
    Anyone,
    /// `arn:aws:iam::ACCOUNT:root` or `ACCOUNT`: the account (delegation to IAM; see the module notes).
    Account(String),
    /// One principal; a role also covers its sessions.
    Exact(Principal),
}

impl PrincipalPattern {
    /// Parses a principal as a key policy writes it: `*`, a 12-digit account, or a principal ARN.
    pub fn parse(value: &str) -> Result<Self, InvalidPrincipal> {
        if value == "*" {
            return Ok(Self::Anyone);
        }
        if is_account(value) {
            return Ok(Self::Account(value.to_owned()));
        }
        let p = Principal::parse(value)?;
        Ok(if p.is_account_root() { Self::Account(p.account) } else { Self::Exact(p) })
    }

    /// Whether `caller` is among the principals this names.
    pub fn matches(&self, caller: &Principal) -> bool {
        match self {
            Self::Anyone => true,
            Self::Account(account) => caller.account == *account,
            Self::Exact(p) => {
                p.arn == caller.arn
                    || match (&p.kind, &caller.kind) {
                        (Kind::Role { name }, Kind::AssumedRole { role }) => {
                            p.account == caller.account && name == role
                        }
                        _ => false,
                    }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p(arn: &str) -> Principal {
        Principal::parse(arn).unwrap()
    }

    #[test]
    fn parses_the_principal_forms_and_refuses_the_rest() {
        assert!(p("arn:aws:iam::111122223333:root").is_account_root());
        assert_eq!(p("arn:aws:iam::111122223333:role/service/veil-parent").account(), "111122223333");
        p("arn:aws:iam::111122223333:user/alice");
        p("arn:aws:sts::111122223333:assumed-role/veil-parent/i-0123456789abcdef0");
        for bad in [
            "",
            "root",
            "arn:aws:iam::1111:root",
            "arn:aws-cn:iam::111122223333:root",
            "arn:aws:iam:us-east-1:111122223333:role/x",
            "arn:aws:iam::111122223333:role/",
            "arn:aws:iam::111122223333:role/a//b",
            "arn:aws:iam::111122223333:role/*",
            "arn:aws:iam::111122223333:group/admins",
            "arn:aws:sts::111122223333:assumed-role/only-role",
            "arn:aws:sts::111122223333:assumed-role/r/s/t",
            "arn:aws:s3:::bucket",
        ] {
            assert!(Principal::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Principal::parse(&format!("arn:aws:iam::111122223333:user/{}", "a".repeat(MAX_ARN_LEN))).is_err());
    }

    #[test]
    fn patterns_match_like_key_policies() {
        let enclave_session = p("arn:aws:sts::111122223333:assumed-role/veil-parent/i-0abc");
        let client = p("arn:aws:iam::111122223333:role/hospital");
        let stranger = p("arn:aws:iam::444455556666:role/veil-parent");
        let role = PrincipalPattern::parse("arn:aws:iam::111122223333:role/ops/veil-parent").unwrap();
        assert!(role.matches(&enclave_session), "a role names its sessions, whatever its path");
        assert!(!role.matches(&client));
        assert!(!role.matches(&stranger), "same role name, other account");
        let account = PrincipalPattern::parse("arn:aws:iam::111122223333:root").unwrap();
        assert_eq!(account, PrincipalPattern::parse("111122223333").unwrap());
        assert!(account.matches(&client) && account.matches(&enclave_session));
        assert!(!account.matches(&stranger));
        assert!(PrincipalPattern::parse("*").unwrap().matches(&stranger));
        let session = PrincipalPattern::parse("arn:aws:sts::111122223333:assumed-role/veil-parent/i-0abc").unwrap();
        assert!(session.matches(&enclave_session));
        assert!(!session.matches(&p("arn:aws:sts::111122223333:assumed-role/veil-parent/i-0def")));
        let user = PrincipalPattern::parse("arn:aws:iam::111122223333:user/hospital").unwrap();
        assert!(!user.matches(&client), "a user is not the role of the same name");
    }
}

//! Alias names, as KMS defines them.
//!
//! An alias name is 1 to 256 characters of letters, digits, `/`, `_` and `-`; it begins with `alias/`
//! followed by a name, and customer aliases may not begin with `alias/aws/` (reserved for AWS managed
//! keys). Names are compared exactly. An alias is unique in its account and Region, and points at one key
//! of that account and Region; a key may have several aliases.
//!
//! Errors as the KMS API reports them: a name outside the length or character rules is the framework's
//! `ValidationException`; a name that fits them but is not a customer alias (no `alias/` prefix, nothing
//! after it, or `alias/aws/`) is `InvalidAliasNameException`.

use serde::{Deserialize, Serialize};

/// Longest alias name (as KMS).
pub const MAX_ALIAS_NAME: usize = 256;
/// Most aliases one key may have (KMS's quota).
pub const MAX_ALIASES_PER_KEY: usize = 50;
/// Most aliases in the mock (bounds its file and `ListAliases`).
pub const MAX_ALIASES: usize = 10_000;

/// One alias.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alias {
    /// `alias/NAME`.
    pub alias_name: String,
    /// The key's UUID.
    pub target_key_id: String,
    /// Seconds since the Unix epoch.
    pub creation_date: f64,
    /// Seconds since the Unix epoch (UpdateAlias changes it).
    pub last_updated_date: f64,
}

/// Why an alias name was refused: `(AWS error name, message)`.
pub type NameError = (&'static str, String);

/// Checks an alias name for `CreateAlias` (and the name given to `UpdateAlias` and `DeleteAlias`).
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > MAX_ALIAS_NAME {
        return Err(("ValidationException", format!("AliasName must be 1 to {MAX_ALIAS_NAME} characters")));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b)) {
        return Err((
            "ValidationException",
            "AliasName can contain only alphanumeric characters, forward slashes (/), underscores (_), and dashes (-)"
                .into(),
        ));
    }
    match name.strip_prefix("alias/") {
        None => Err(("InvalidAliasNameException", format!("{name:?} must begin with alias/ followed by a name"))),
        Some("") => Err(("InvalidAliasNameException", "alias/ must be followed by a name".into())),
        Some(_) if name.starts_with("alias/aws/") => {
            Err(("InvalidAliasNameException", "the alias/aws/ prefix is reserved for AWS managed keys".into()))
        }
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kms_rules() {
        for ok in ["alias/veil", "alias/Veil_Models-2", "alias/a/b/c", "alias/awsome", "alias/aws"] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for (bad, error) in [
            ("", "ValidationException"),
            ("alias/has space", "ValidationException"),
            ("alias/ünïcode", "ValidationException"),
            ("alias/colon:no", "ValidationException"),
            ("veil", "InvalidAliasNameException"),
            ("Alias/veil", "InvalidAliasNameException"),
            ("alias/", "InvalidAliasNameException"),
            ("alias/aws/ebs", "InvalidAliasNameException"),
        ] {
            assert_eq!(check_name(bad).map_err(|e| e.0), Err(error), "{bad:?}");
        }
        assert_eq!(check_name(&format!("alias/{}", "a".repeat(250))), Ok(()));
        assert_eq!(check_name(&format!("alias/{}", "a".repeat(251))).map_err(|e| e.0), Err("ValidationException"));
    }
}

//! The record of a verification: one [`Check`] per check, in order, in a [`Report`]; and the proof that
//! every check passed, which only this module can make.
//!
//! The checks (`checks.rs`) each return an [`Outcome`]; the verifier collects them in [`Outcomes`], a struct
//! with one field per check rather than a list, so that the compiler refuses a verification that leaves a
//! check out, in either the decoded or the undecodable path. [`Outcomes::conclude`] turns them into either a
//! [`Rejected`] (the first failure, in the order the checks are listed, and the full report) or an
//! [`AllPassed`]: the only way to get one, and the only input `VerifiedDocument` is built from.

use serde::Serialize;

use super::error::{DecodeError, VerifyError};
use super::policy::Policy;
use crate::time::format_unix_millis;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Passed,
    Failed,
    /// Not run: not asked for (no expected nonce), or its input could not be decoded.
    Skipped,
}

/// One named check and what it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable name: `decode`, `root`, `chain`, `validity`, `signature`, `debug_mode`, `pcrN`, `nonce`,
    /// `freshness`, `commitment`.
    pub name: String,
    pub status: CheckStatus,
    /// What was checked and found, for people.
    pub detail: String,
}

/// Every check of one verification, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// True only if no check failed.
    pub verified: bool,
    /// Verification time, ms since the Unix epoch, and as text.
    pub at_ms: u64,
    pub at: String,
    /// The trusted root: name and SHA-256.
    pub root: String,
    pub root_sha256: String,
    pub checks: Vec<Check>,
    /// The first failure's message (`None` when verified).
    pub error: Option<String>,
}

impl Report {
    /// The first failed check.
    pub fn first_failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| c.status == CheckStatus::Failed)
    }

    /// The check called `name`.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// Verification failed: the first failure, and the full report.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}")]
pub struct Rejected {
    pub error: VerifyError,
    /// Boxed: a report is a few hundred bytes, and `Result<_, Rejected>` travels by value.
    pub report: Box<Report>,
}

/// What one check found.
#[derive(Debug)]
pub(super) enum Outcome {
    Passed(String),
    Failed { detail: String, error: VerifyError },
    Skipped(String),
}

impl Outcome {
    /// Failed with `error`, whose message is the detail.
    pub(super) fn fail(error: VerifyError) -> Self {
        Outcome::Failed { detail: error.to_string(), error }
    }
}

/// One outcome per check, in the order the report lists them.
#[derive(Debug)]
pub(super) struct Outcomes {
    pub(super) decode: Outcome,
    pub(super) root: Outcome,
    pub(super) chain: Outcome,
    pub(super) validity: Outcome,
    pub(super) signature: Outcome,
    pub(super) debug_mode: Outcome,
    /// `pcrN`, one per expected PCR, by index.
    pub(super) pcrs: Vec<(u8, Outcome)>,
    pub(super) nonce: Outcome,
    pub(super) freshness: Outcome,
    pub(super) commitment: Outcome,
}

/// Proof that every check of a verification passed. Its field is private to this module, and only
/// [`Outcomes::conclude`] makes one.
#[derive(Debug)]
pub(super) struct AllPassed(Report);

impl AllPassed {
    /// The report, `verified` and with no failed check.
    pub(super) fn into_report(self) -> Report {
        self.0
    }
}

impl Outcomes {
    /// The report of a document that could not be decoded: `decode` failed, every other check skipped.
    pub(super) fn undecodable(error: DecodeError, policy: &Policy) -> Rejected {
        const WHY: &str = "the document could not be decoded";
        let skipped = || Outcome::Skipped(WHY.into());
        let outcomes = Outcomes {
            decode: Outcome::Failed { detail: error.to_string(), error: VerifyError::Decode(error.clone()) },
            root: skipped(),
            chain: skipped(),
            validity: skipped(),
            signature: skipped(),
            debug_mode: skipped(),
            pcrs: policy.expected_pcrs.keys().map(|i| (*i, skipped())).collect(),
            nonce: skipped(),
            freshness: skipped(),
            commitment: skipped(),
        };
        let (report, _) = outcomes.into_report(policy);
        Rejected { error: VerifyError::Decode(error), report: Box::new(report) }
    }

    /// Proof that every check passed, or the first failure.
    #[allow(clippy::result_large_err)] // as `verify`: returned once per verification
    pub(super) fn conclude(self, policy: &Policy) -> Result<AllPassed, Rejected> {
        match self.into_report(policy) {
            (report, None) => Ok(AllPassed(report)),
            (report, Some(error)) => Err(Rejected { error, report: Box::new(report) }),
        }
    }

    /// The report, and the first failure in the order of the checks.
    fn into_report(self, policy: &Policy) -> (Report, Option<VerifyError>) {
        let Outcomes { decode, root, chain, validity, signature, debug_mode, pcrs, nonce, freshness, commitment } =
            self;
        let named = [
            ("decode".to_owned(), decode),
            ("root".to_owned(), root),
            ("chain".to_owned(), chain),
            ("validity".to_owned(), validity),
            ("signature".to_owned(), signature),
            ("debug_mode".to_owned(), debug_mode),
        ]
        .into_iter()
        .chain(pcrs.into_iter().map(|(i, outcome)| (format!("pcr{i}"), outcome)))
        .chain([
            ("nonce".to_owned(), nonce),
            ("freshness".to_owned(), freshness),
            ("commitment".to_owned(), commitment),
        ]);
        let mut first = None;
        let mut checks = Vec::new();
        for (name, outcome) in named {
            let (status, detail) = match outcome {
                Outcome::Passed(detail) => (CheckStatus::Passed, detail),
                Outcome::Skipped(detail) => (CheckStatus::Skipped, detail),
                Outcome::Failed { detail, error } => {
                    first.get_or_insert(error);
                    (CheckStatus::Failed, detail)
                }
            };
            checks.push(Check { name, status, detail });
        }
        let report = Report {
            verified: first.is_none(),
            at_ms: policy.at_ms,
            at: format_unix_millis(policy.at_ms),
            root: policy.root.name().to_owned(),
            root_sha256: hex::encode(policy.root.sha256()),
            checks,
            error: first.as_ref().map(ToString::to_string),
        };
        (report, first)
    }
}

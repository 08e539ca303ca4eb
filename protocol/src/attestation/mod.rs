//! Fail-closed verification of AWS Nitro Enclaves attestation documents, and the `user_data` commitment.
//!
//! Pure: no I/O and no clock. The caller passes the bytes and the time; nothing here panics on any input,
//! and every size is bounded before anything is allocated (see the `MAX_*` constants).
//!
//! The flow is two types (STYLE.md item 4):
//!
//! 1. [`UnverifiedDocument::parse`] decodes a COSE_Sign1 (tagged or untagged) and its nine payload fields,
//!    checking types and sizes. Its contents are reachable only through the loudly named
//!    [`UnverifiedDocument::unverified_claims`], for display (`veil attest show`).
//! 2. [`verify`] (or [`UnverifiedDocument::verify`]) checks, in order and by name: `decode`, `root`
//!    (`cabundle[0]` is the trusted root, by SHA-256 and bytes), `chain` (each certificate ECDSA
//!    P-384/SHA-384 signed by the one above, names, basic constraints, key usage), `validity` (every
//!    certificate at the given time), `signature` (COSE ES384 with the leaf key), `debug_mode`, `pcrN` for
//!    each expected PCR, `nonce`, `freshness`, `commitment` (the `user_data` commitment, when the
//!    policy expects models or a configuration digest). Only if all pass does it build a
//!    [`VerifiedDocument`], whose accessors give the PCRs, module id, timestamp, public key, user data
//!    and nonce. Either way there is a [`Report`] (serde-serializable) naming each check.
//!
//! Files: `document.rs` decodes; `policy.rs` holds the root and the expectations; `checks.rs` has one
//! function per check, named as the report names it; `report.rs` collects their outcomes and alone can
//! make the proof that all passed, which `verify.rs` needs to build a [`VerifiedDocument`]; `chain.rs` is
//! the X.509 profile; `commitment.rs` the `user_data` format.
//!
//! ```no_run
//! use veil_protocol::attestation::{verify, Policy};
//! # fn demo(document: &[u8], expected_pcr0: &[u8], nonce: &[u8], now_ms: u64) -> Result<(), Box<dyn std::error::Error>> {
//! let policy = Policy::new(now_ms).expect_pcr(0, expected_pcr0)?.expect_nonce(nonce)?
//!     .with_max_age(std::time::Duration::from_secs(300));
//! match verify(document, &policy) {
//!     Ok(doc) => println!("verified {} ({} PCRs)", doc.module_id(), doc.pcrs().len()),
//!     Err(rejected) => println!("refused: {}", rejected.error),
//! }
//! # Ok(()) }
//! ```
//!
//! The format of `user_data` that Veil's enclave writes is [`UserDataCommitment`]; see `docs/ATTESTATION.md`.

mod chain;
mod checks;
mod commitment;
mod document;
mod error;
mod policy;
mod report;
mod verify;

pub use chain::CertificateSummary;
pub use commitment::{
    COMMITMENT_VERSION, CommitmentError, MAX_MODEL_NAME_LEN, MAX_MODELS, ModelDigest, UserDataCommitment,
};
pub use document::{
    Claims, MAX_CABUNDLE_LEN, MAX_CERT_LEN, MAX_DOCUMENT_LEN, MAX_MODULE_ID_LEN, MAX_OPTIONAL_FIELD_LEN, MAX_PCRS,
    PCR_LEN, UnverifiedDocument,
};
pub use error::{CertError, DecodeError, PolicyError, VerifyError};
pub use policy::{AWS_ROOT_G1_SHA256, Policy, TrustAnchor};
pub use report::{Check, CheckStatus, Rejected, Report};
pub use verify::{VerifiedDocument, Verifier, verify};

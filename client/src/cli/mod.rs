//! Subcommands of the `veil` CLI, one module each.
//!
//! Exit codes are shared by every subcommand so scripts can tell failures apart:
//! [`EXIT_OK`], [`EXIT_FAILED`] (the server or a check said no), [`EXIT_USAGE`] (bad input on our side),
//! [`EXIT_CONNECT`] (the server could not be reached), [`EXIT_UNVERIFIED`] (the enclave's attestation did not
//! verify, so nothing was sent).
pub mod attest;
pub mod dev;
pub mod eif;
pub mod evidence;
pub mod infer;
pub mod kms;
pub mod load;
pub mod model;
pub mod ohttp;
pub mod policy;
pub mod proxy;

/// Everything worked.
pub const EXIT_OK: u8 = 0;
/// The server answered with an error, or a verification failed.
pub const EXIT_FAILED: u8 = 1;
/// The command line or an input file is wrong.
pub const EXIT_USAGE: u8 = 2;
/// The server could not be reached, or did not answer in time.
pub const EXIT_CONNECT: u8 = 3;
/// The enclave's attestation did not verify: nothing was sent.
pub const EXIT_UNVERIFIED: u8 = 4;

//! Subcommands of the `veil` CLI, one module each.
pub mod attest;
pub mod eif;

//! `veil attest`: verify and show attestation documents (being written).
use clap::Subcommand;

/// Verify or show Nitro attestation documents.
#[derive(Debug, Subcommand)]
pub enum AttestCommand {}

/// Runs an `attest` subcommand and returns the process exit code.
pub fn run(cmd: AttestCommand) -> anyhow::Result<std::process::ExitCode> {
    match cmd {}
}

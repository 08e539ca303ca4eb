//! `veil eif`: measure, describe and build Enclave Image Files (being written).
use clap::Subcommand;

/// Measure, describe and build Enclave Image Files.
#[derive(Debug, Subcommand)]
pub enum EifCommand {}

/// Runs an `eif` subcommand and returns the process exit code.
pub fn run(cmd: EifCommand) -> anyhow::Result<std::process::ExitCode> {
    match cmd {}
}

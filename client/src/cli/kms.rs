//! `veil kms`: KMS set-up for Veil, starting with the key policy that releases data keys only to an
//! attested enclave (built by `veil_client::policy`).
use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use veil_client::policy::{PolicyArgs, build_policy};

/// KMS set-up for Veil.
#[derive(Debug, Subcommand)]
pub enum KmsCommand {
    /// Write a key policy that lets clients create data keys and lets only the attested enclave decrypt.
    Policy(PolicyArgs),
}

/// Runs a `kms` subcommand.
pub fn run(cmd: KmsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KmsCommand::Policy(args) => {
            let policy = build_policy(&args)?;
            let text = serde_json::to_string_pretty(&policy)? + "\n";
            match &args.output {
                Some(path) => std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?,
                None => std::io::stdout().lock().write_all(text.as_bytes())?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

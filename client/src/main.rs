//! `veil`: the command line for Veil's clients, auditors and operators.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// The subcommands live in the binary, not the library: the library's surface is what other programs use
// (the client, sessions, policies, the dev stack), the CLI's is its flags. Inside a binary, `pub` means
// crate-wide, so the lint about unreachable `pub` items does not apply.
#[allow(unreachable_pub)]
mod cli;

/// Veil: confidential inference on AWS Nitro Enclaves.
///
/// Clients send inference requests through an untrusted parent to an enclave; auditors verify
/// attestation documents and measure enclave images; operators build images and run a dev stack.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send an inference request (Open Inference Protocol JSON) and print the answer.
    Infer(cli::infer::InferArgs),
    /// Print a model's metadata (inputs, outputs, datatypes, shapes, digest).
    Metadata(cli::infer::MetadataArgs),
    /// Load a deployment with sealed requests: latency percentiles, throughput, errors, wrong answers.
    Load(cli::load::LoadArgs),
    /// Serve the KServe v2 API locally for unmodified clients; every request verified and sealed.
    Proxy(cli::proxy::ProxyArgs),
    /// Start the whole off-hardware stack (enclave with mock NSM, parent, sample models).
    Dev(cli::dev::DevArgs),
    /// Verify or show attestation documents.
    Attest {
        #[command(subcommand)]
        command: cli::attest::AttestCommand,
    },
    /// KMS set-up: key policies that release data keys only to an attested enclave.
    Kms {
        #[command(subcommand)]
        command: cli::kms::KmsCommand,
    },
    /// Encrypt model files so that only an attested enclave can load them.
    Model {
        #[command(subcommand)]
        command: cli::model::ModelCommand,
    },
    /// Client policies for attested-key mode: which images, models and root a client accepts.
    Policy {
        #[command(subcommand)]
        command: cli::policy::PolicyCommand,
    },
    /// Attested-key mode's keys (Oblivious HTTP): fleet keys, and a gateway's key configuration.
    Ohttp {
        #[command(subcommand)]
        command: cli::ohttp::OhttpCommand,
    },
    /// Check evidence bundles: an answer's signed receipt against the attestation that certifies its key.
    Receipt {
        #[command(subcommand)]
        command: cli::evidence::ReceiptCommand,
    },
    /// Check audit logs: every receipt, hash chain and signed tree head, offline.
    Audit {
        #[command(subcommand)]
        command: cli::evidence::AuditCommand,
    },
    /// Measure, describe and build Enclave Image Files (EIF).
    Eif {
        #[command(subcommand)]
        command: cli::eif::EifCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Infer(a) => cli::infer::run_infer(a),
        Command::Metadata(a) => cli::infer::run_metadata(a),
        Command::Load(a) => cli::load::run(a),
        Command::Dev(a) => cli::dev::run(a),
        Command::Proxy(a) => cli::proxy::run(a),
        Command::Attest { command } => cli::attest::run(command),
        Command::Eif { command } => cli::eif::run(command),
        Command::Kms { command } => cli::kms::run(command),
        Command::Model { command } => cli::model::run(command),
        Command::Policy { command } => cli::policy::run(command),
        Command::Ohttp { command } => cli::ohttp::run(command),
        Command::Receipt { command } => cli::evidence::run_receipt(command),
        Command::Audit { command } => cli::evidence::run_audit(command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("veil: {e:#}");
            ExitCode::from(cli::EXIT_USAGE)
        }
    }
}

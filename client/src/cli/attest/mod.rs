//! `veil attest verify` and `veil attest show`: attestation documents for auditors and clients.
//!
//! Verification is `veil_protocol::attestation` (pure, no clock); this module reads files or asks a server,
//! reads the wall clock (unless `--at` says otherwise), and turns the report into text or JSON:
//!
//! - `mod.rs` (here): the flags, and the two commands from flags to exit code;
//! - `input.rs`: everything the user gives: document and measurements files (encoding sniffed), `--at`,
//!   `--max-age`, `--expect-*`, `--root`, all validated before any network call;
//! - `fetch.rs`: the document from a file or from a server (`--url`, with a nonce), on its own runtime;
//! - `render.rs`: the report and the document as text for people or as JSON for scripts.
//!
//! Exit codes (shared by the CLI): 0 every check passed (or, for `show`, the document decoded);
//! 1 a check failed, or the server answered with an error; 2 bad usage or undecodable input;
//! 3 the server could not be reached.

mod fetch;
mod input;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use veil_protocol::attestation::{Policy, UnverifiedDocument, VerifyError, verify};

use self::fetch::{Fetched, fetch};
use self::input::{At, Expectations};
pub(crate) use self::render::clean;
pub(crate) use self::render::report_and_document;
use super::{EXIT_FAILED, EXIT_OK};

/// Verify or show Nitro attestation documents.
#[derive(Debug, Subcommand)]
pub enum AttestCommand {
    /// Verify an attestation document: signature, certificate chain to the AWS root, PCRs, nonce, age.
    ///
    /// Every check is named in the output; the command exits 0 only if all of them pass, 1 if one
    /// fails (the output says which, and why: e.g. "PCR0: expected X, got Y"), 2 if the input is
    /// unusable, 3 if the server cannot be reached.
    ///
    /// The document comes from a FILE (raw CBOR, base64 or hex, detected; `-` reads standard input) or
    /// from a running server (--url), which is asked for a fresh document carrying a nonce (yours with
    /// --nonce, or 32 random bytes): the nonce check then proves the document is fresh.
    #[command(after_help = VERIFY_EXAMPLES)]
    Verify(VerifyArgs),

    /// Print an attestation document for people: module id, time, PCRs, certificates, and the decoded
    /// user_data commitment (models, keys, configuration digest).
    ///
    /// Nothing printed is verified: anyone can write any of it. Use `veil attest verify` to check it.
    #[command(after_help = SHOW_EXAMPLES)]
    Show(ShowArgs),
}

const VERIFY_EXAMPLES: &str = "\
Examples:
  # A live server, with PCRs from the release's nitro-cli measurements (nonce generated for you):
  veil attest verify --url http://10.0.0.5:8080 --measurements measurements.json \\
      --expect-model iris=<SHA-384 of the decrypted model>

  # A saved document, at the time it was made (documents' leaf certificates live about 3 hours):
  veil attest verify doc.cbor --at document --expect-pcr 0=f4d48b81...8b

  # A document at a given time, from a mock NSM (veil dev), as JSON for scripts:
  veil attest verify doc.b64 --root .veil/mock-root.pem --at 2025-01-06T16:10:00Z --json

--at accepts RFC 3339 (2025-01-06T16:07:05Z), @UNIX_SECONDS, or 'document' (the document's own timestamp).
--max-age accepts 500ms, 30s, 5m, 2h (or plain seconds).";

const SHOW_EXAMPLES: &str = "\
Examples:
  veil attest show doc.cbor
  veil attest show --url http://127.0.0.1:8080 --json";

/// Where the document comes from.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Document file: raw CBOR, base64 or hex (detected). `-` reads standard input.
    #[arg(value_name = "FILE", required_unless_present = "url", conflicts_with = "url")]
    pub file: Option<PathBuf>,

    /// Ask a running Veil parent (http://HOST:PORT) for a fresh document instead of reading a file.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,

    /// Nonce, hex (at most 1024 bytes). With --url it is sent to the server (default: 32 random
    /// bytes) and then required in the document; with a file it is required in the document.
    #[arg(long, value_name = "HEX")]
    pub nonce: Option<String>,
}

/// Arguments of `veil attest verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Require PCR N to equal HEX (48 bytes, 96 hex digits). Repeatable.
    #[arg(long = "expect-pcr", value_name = "N=HEX")]
    pub expect_pcr: Vec<String>,

    /// Require the PCRs of a measurements file, as printed by `nitro-cli build-enclave` or
    /// `veil eif pcrs`: {"Measurements": {"HashAlgorithm": ..., "PCR0": HEX, "PCR1": ..., "PCR2": ...}}.
    #[arg(long, value_name = "FILE")]
    pub measurements: Option<PathBuf>,

    /// Require the user_data commitment to name model NAME with this SHA-384 (96 hex digits), as
    /// `veil metadata` and the release notes print it. Repeatable.
    #[arg(long = "expect-model", value_name = "NAME=SHA384")]
    pub expect_model: Vec<String>,

    /// Require the user_data commitment's runtime configuration digest (SHA-384, hex).
    #[arg(long = "expect-config", value_name = "SHA384")]
    pub expect_config: Option<String>,

    /// Verify at this time instead of now: RFC 3339, @UNIX_SECONDS, or `document`.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,

    /// Refuse documents older than this at the verification time (e.g. 5m).
    #[arg(long = "max-age", value_name = "DURATION")]
    pub max_age: Option<String>,

    /// Accept documents of enclaves run in debug mode (PCR0/1/2 all zero). Their memory is readable
    /// by the host: never send secrets to them.
    #[arg(long)]
    pub allow_debug: bool,

    /// Trust this root certificate (PEM) instead of the AWS Nitro Enclaves Root-G1, e.g. the mock root
    /// that `veil dev` writes. Documents are then trusted only as far as that root is.
    #[arg(long, value_name = "PEM")]
    pub root: Option<PathBuf>,

    /// Print the report as JSON (every check with its status and detail, and the document).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `veil attest show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs an `attest` subcommand and returns the process exit code.
pub fn run(cmd: AttestCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AttestCommand::Verify(args) => run_verify(args),
        AttestCommand::Show(args) => run_show(args),
    }
}

fn run_verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    // Validate every flag before any network call.
    let expected = Expectations::from_args(&args)?;
    if let Some(root) = &expected.root
        && !root.is_aws_root_g1()
    {
        eprintln!(
            "veil attest: trusting a root that is not AWS's: {} (SHA-256 {})",
            clean(root.name()),
            hex::encode(root.sha256())
        );
    }

    let (bytes, nonce) = match fetch(&args.source)? {
        Fetched::Document { bytes, nonce } => (bytes, nonce),
        Fetched::Exit(code) => return Ok(code),
    };
    let at = expected.at;
    let at_ms = match at {
        Some(At::Millis(ms)) => ms,
        Some(At::Document) => match UnverifiedDocument::parse(&bytes) {
            Ok(doc) => doc.unverified_claims().timestamp_ms,
            // Undecodable: the time does not matter, the decode check fails.
            Err(_) => 0,
        },
        None => now_ms()?,
    };
    let policy = policy(expected, at_ms, nonce.as_deref(), args.allow_debug)?;

    let outcome = verify(&bytes, &policy);
    render::verification(&outcome, args.json, at == Some(At::Document))?;
    match outcome {
        Ok(_) => Ok(ExitCode::from(EXIT_OK)),
        Err(rejected) => {
            eprintln!("veil attest: verification FAILED: {}", clean(&rejected.error.to_string()));
            if matches!(rejected.error, VerifyError::UntrustedRoot { .. }) && args.root.is_none() {
                eprintln!(
                    "(Documents of a mock NSM, as `veil dev` runs, verify only with --root naming its mock-root.pem.)"
                );
            }
            Ok(ExitCode::from(EXIT_FAILED))
        }
    }
}

/// The verification policy: the flags' expectations, at `at_ms`, requiring `nonce` if there is one.
fn policy(expected: Expectations, at_ms: u64, nonce: Option<&[u8]>, allow_debug: bool) -> anyhow::Result<Policy> {
    let mut policy = Policy::new(at_ms).allow_debug(allow_debug);
    if let Some(root) = expected.root {
        policy = policy.with_root(root);
    }
    for (i, v) in &expected.pcrs {
        policy = policy.expect_pcr(*i, v).map_err(|e| anyhow!("{e}"))?;
    }
    if let Some(n) = nonce {
        policy = policy.expect_nonce(n).map_err(|e| anyhow!("{e}"))?;
    }
    if let Some(d) = expected.max_age {
        policy = policy.with_max_age(d);
    }
    for (name, digest) in &expected.models {
        policy = policy.expect_model(name, digest).map_err(|e| anyhow!("--expect-model: {e}"))?;
    }
    if let Some(c) = &expected.config {
        policy = policy.expect_config_sha384(c).map_err(|e| anyhow!("--expect-config: {e}"))?;
    }
    Ok(policy)
}

/// The wall clock, the verification time unless `--at` gives one: the only clock `veil attest` reads.
fn now_ms() -> anyhow::Result<u64> {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).context("the system clock is before 1970")?;
    u64::try_from(d.as_millis()).context("the system clock is out of range")
}

fn run_show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let bytes = match fetch(&args.source)? {
        Fetched::Document { bytes, .. } => bytes,
        Fetched::Exit(code) => return Ok(code),
    };
    let doc = UnverifiedDocument::parse(&bytes).map_err(|e| anyhow!("cannot decode the document: {e}"))?;
    render::document(&bytes, &doc, args.json)?;
    Ok(ExitCode::from(EXIT_OK))
}

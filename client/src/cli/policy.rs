//! `veil policy new`: the client's policy file for attested-key mode.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

/// Client policies.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Write a policy from nitro-cli measurements and model digests.
    New(NewArgs),
    /// Check a policy file and print what it accepts.
    Show(ShowArgs),
}

/// Write a client policy: what `veil infer --policy` accepts from an enclave before it sends anything.
#[derive(Debug, Args)]
#[command(after_help = "\
A policy lists the accepted images (the PCRs of each: `nitro-cli build-enclave` or `veil eif pcrs`
prints them as measurements JSON; give --measurements once per image during a roll-out), the models and
their SHA-384 digests (`veil model encrypt` prints them), the oldest attestation document accepted, and
the root of trust: AWS's Nitro Enclaves root, unless --insecure-mock-root names a mock NSM's root for a
development stack. Debug-mode enclaves are refused unless --allow-debug.

Examples:
  veil policy new --measurements image.json --model-sha384 breast_cancer=$DIGEST -o policy.toml
  veil policy new --measurements old.json --measurements new.json --model breast_cancer=model.onnx -o policy.toml
  veil policy new --measurements /tmp/veil-dev/measurements.json --model iris=iris.onnx \\
                  --insecure-mock-root /tmp/veil-dev/mock-nsm/mock-root.pem -o dev-policy.toml")]
pub struct NewArgs {
    /// A measurements file (nitro-cli JSON) of an accepted image (repeatable: roll-outs), optionally
    /// named as NAME=FILE.
    #[arg(long = "measurements", required = true, value_name = "[NAME=]FILE")]
    pub measurements: Vec<String>,
    /// A model and its plaintext ONNX file, whose SHA-384 is computed here (repeatable).
    #[arg(long = "model", value_name = "NAME=FILE")]
    pub models: Vec<String>,
    /// A model and its SHA-384 (96 hex digits) (repeatable).
    #[arg(long = "model-sha384", value_name = "NAME=HEX")]
    pub model_digests: Vec<String>,
    /// Oldest attestation document accepted, in seconds.
    #[arg(long, default_value_t = 300)]
    pub max_age: u64,
    /// Accept enclaves in debug mode (the parent can read their memory). Development only.
    #[arg(long)]
    pub allow_debug: bool,
    /// Trust this mock NSM root (PEM) instead of AWS's. INSECURE: for development stacks only.
    #[arg(long, value_name = "PEM")]
    pub insecure_mock_root: Option<PathBuf>,
    /// Where to write the policy (default: standard output).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

/// Check a policy file.
#[derive(Debug, Args)]
pub struct ShowArgs {
    pub policy: PathBuf,
}

/// Runs a `policy` subcommand.
pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::New(a) => new(a),
        PolicyCommand::Show(a) => show(a),
    }
}

fn split<'a>(s: &'a str, flag: &str) -> anyhow::Result<(&'a str, &'a str)> {
    s.split_once('=')
        .filter(|(n, v)| !n.is_empty() && !v.is_empty())
        .with_context(|| format!("{flag} {s:?}: expected NAME=VALUE"))
}

fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    let mut images = Vec::new();
    for m in &args.measurements {
        let (name, path) = match m.split_once('=') {
            Some((n, p)) if !n.is_empty() => (Some(n.to_owned()), PathBuf::from(p)),
            _ => (None, PathBuf::from(m)),
        };
        let measurements = veil_client::policy::read_measurements(&path)?;
        let name = name.or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()));
        images.push((name, measurements));
    }
    let mut models = Vec::new();
    for m in &args.models {
        let (name, path) = split(m, "--model")?;
        let bytes = std::fs::read(path).with_context(|| format!("--model {name}: cannot read {path}"))?;
        let d = ring::digest::digest(&ring::digest::SHA384, &bytes);
        let mut out = [0u8; 48];
        out.copy_from_slice(d.as_ref());
        models.push((name.to_owned(), out));
    }
    for m in &args.model_digests {
        let (name, hex_digest) = split(m, "--model-sha384")?;
        let d: [u8; 48] = hex::decode(hex_digest.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .with_context(|| format!("--model-sha384 {name}: a SHA-384 is 96 hex digits"))?;
        models.push((name.to_owned(), d));
    }
    anyhow::ensure!(!models.is_empty(), "name the expected models: --model NAME=FILE or --model-sha384 NAME=HEX");
    let text = veil_client::trust::new_policy_file(
        images,
        models,
        Duration::from_secs(args.max_age),
        args.allow_debug,
        args.insecure_mock_root.clone(),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    // Check what is written the way `veil infer --policy` will read it.
    let file: veil_client::trust::PolicyFile = toml::from_str(&text)?;
    let base = args.output.as_ref().and_then(|p| p.parent()).map(PathBuf::from).unwrap_or_else(|| ".".into());
    veil_client::trust::ClientPolicy::from_file(file, &base)
        .map_err(|e| anyhow::anyhow!("the policy would be invalid: {e}"))?;
    match &args.output {
        Some(p) => {
            std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
            eprintln!("veil: wrote {}", p.display());
        }
        None => print!("{text}"),
    }
    if args.insecure_mock_root.is_some() {
        eprintln!(
            "veil: WARNING: this policy trusts a MOCK root: anyone can make documents under it; development only"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let p = veil_client::trust::ClientPolicy::load(&args.policy)?;
    println!("root: {}{}", p.root.name(), if p.mock_root { " (INSECURE: a mock root)" } else { "" });
    println!(
        "max age: {} s; debug-mode enclaves: {}",
        p.max_age.as_secs(),
        if p.allow_debug { "accepted" } else { "refused" }
    );
    for image in &p.images {
        println!("image {}:", image.name);
        for (i, v) in &image.pcrs {
            println!("  PCR{i} {}", hex::encode(v));
        }
        if let Some(c) = &image.config_sha384 {
            println!("  config {}", hex::encode(c));
        }
    }
    for (name, d) in &p.models {
        println!("model {name}: {}", hex::encode(d));
    }
    Ok(ExitCode::SUCCESS)
}

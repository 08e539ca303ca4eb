//! `veil model encrypt`: seal a model file so that only an attested enclave can load it.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use veil_protocol::model_file::{DEFAULT_CHUNK, MAX_CHUNK};

use super::infer::KmsArgs;

/// Model files at rest.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Encrypt a model under a fresh KMS data key (streamed: models may be gigabytes).
    Encrypt(EncryptArgs),
}

/// Encrypt an ONNX model for Veil.
#[derive(Debug, Args)]
#[command(after_help = "\
The output holds the model in authenticated 1 MiB chunks and, in its header, the KMS-encrypted data key.
The parent serves the file as it is; the enclave asks KMS for the data key with its attestation document,
so only an enclave whose PCRs match the key policy can decrypt it, and it reports the SHA-384 of the
plaintext model in its attestation documents.

Example:
  veil model encrypt --kms-key-id alias/veil-models --input breast_cancer.onnx --output breast_cancer.onnx.veil")]
pub struct EncryptArgs {
    /// The model file.
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the encrypted model (default: INPUT.veil).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Plaintext bytes per chunk.
    #[arg(long, default_value_t = DEFAULT_CHUNK)]
    pub chunk_size: u32,
    #[command(flatten)]
    pub kms: KmsArgs,
}

/// Runs a `model` subcommand.
pub fn run(cmd: ModelCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ModelCommand::Encrypt(args) => encrypt(args),
    }
}

fn encrypt(args: EncryptArgs) -> anyhow::Result<ExitCode> {
    let key_id =
        args.kms.kms_key_id.clone().context("--kms-key-id is required: the model is sealed under a KMS key")?;
    if args.chunk_size == 0 || args.chunk_size > MAX_CHUNK {
        bail!("--chunk-size must be 1 to {MAX_CHUNK}");
    }
    let output = args.output.clone().unwrap_or_else(|| {
        let mut p = args.input.clone().into_os_string();
        p.push(".veil");
        PathBuf::from(p)
    });
    let ca_pem = match &args.kms.kms_ca {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    let config = crate::kms::KmsConfig {
        region: args.kms.kms_region.clone(),
        endpoint_url: args.kms.kms_endpoint.clone(),
        ca_pem,
        static_credentials: None,
    };
    let context = args.kms.context.iter().cloned().collect();
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let len = rt.block_on(async {
        let kms = crate::kms::kms_client(&config).await?;
        crate::kms::encrypt_model_file(&kms, &key_id, context, &args.input, &output, args.chunk_size, true).await
    })?;
    eprintln!(
        "veil: wrote {} ({} bytes of model, {:.1}s); serve it with veil-parent --model NAME={}",
        output.display(),
        len,
        started.elapsed().as_secs_f64(),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

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
The output holds the model in authenticated 1 MiB chunks and, in its header, the model's name and the
KMS-encrypted data key. The parent serves the file as it is; the enclave loads it only under that name,
only if its configuration names that KMS key ARN for the model, and asks KMS for the data key with its
attestation document, so only an enclave whose PCRs match the key policy can decrypt it. It reports the
SHA-384 of the plaintext model in its attestation documents; this command prints it too, for the
configuration's optional `sha384` pin and for clients' policies.

Example:
  veil model encrypt --kms-key-id alias/veil-models --input breast_cancer.onnx --output breast_cancer.onnx.veil")]
pub struct EncryptArgs {
    /// The model file.
    #[arg(long)]
    pub input: PathBuf,
    /// The model's name, as the enclave's configuration and clients call it (default: the input's file stem).
    #[arg(long, value_parser = model_name)]
    pub name: Option<String>,
    /// Where to write the encrypted model (default: INPUT.veil).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Plaintext bytes per chunk.
    #[arg(long, default_value_t = DEFAULT_CHUNK)]
    pub chunk_size: u32,
    #[command(flatten)]
    pub kms: KmsArgs,
}

fn model_name(s: &str) -> Result<String, String> {
    if veil_protocol::message::is_valid_model_name(s) {
        Ok(s.to_owned())
    } else {
        Err(veil_protocol::message::MODEL_NAME_RULE.into())
    }
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
    let name = match &args.name {
        Some(n) => n.clone(),
        None => {
            let stem = args.input.file_name().and_then(|s| s.to_str()).unwrap_or_default();
            let stem = stem.split('.').next().unwrap_or_default().to_owned();
            model_name(&stem).map_err(|e| anyhow::anyhow!("--name is needed: the file name gives {stem:?}, and {e}"))?
        }
    };
    let output = args.output.clone().unwrap_or_else(|| {
        let mut p = args.input.clone().into_os_string();
        p.push(".veil");
        PathBuf::from(p)
    });
    let ca_pem = match &args.kms.kms_ca {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    let config = veil_client::kms::KmsConfig {
        region: args.kms.kms_region.clone(),
        endpoint_url: args.kms.kms_endpoint.clone(),
        ca_pem,
        static_credentials: None,
    };
    let context = args.kms.context.iter().cloned().collect();
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let sha384 = sha384_of(&args.input)?;
    let (len, key_arn) = rt.block_on(async {
        let kms = veil_client::kms::kms_client(&config).await?;
        veil_client::kms::encrypt_model_file(&kms, &name, &key_id, context, &args.input, &output, args.chunk_size, true)
            .await
    })?;
    eprintln!(
        "veil: wrote {} ({len} bytes of model {name:?}, {:.1}s); serve it with veil-parent --model {name}={}\n\
         In the enclave's configuration:\n  [[models]]\n  name = \"{name}\"\n  kms_key_arn = \"{key_arn}\"\n  sha384 = \"{}\"",
        output.display(),
        started.elapsed().as_secs_f64(),
        output.display(),
        hex::encode(sha384),
    );
    Ok(ExitCode::SUCCESS)
}

/// SHA-384 of a file, streamed.
fn sha384_of(path: &std::path::Path) -> anyhow::Result<[u8; 48]> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA384);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    let mut out = [0u8; 48];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

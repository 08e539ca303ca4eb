//! `veil model encrypt`: seal a model file so that only an attested enclave can load it.
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use aws_sdk_kms::types::DataKeySpec;
use clap::{Args, Subcommand};
use veil_shared::model_envelope::{DEFAULT_CHUNK, MAX_CHUNK, ModelSealer};
use zeroize::Zeroizing;

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
    let key_id = args.kms.kms_key_id.clone().context("--kms-key-id is required: the model is sealed under a KMS key")?;
    if args.chunk_size == 0 || args.chunk_size > MAX_CHUNK {
        bail!("--chunk-size must be 1 to {MAX_CHUNK}");
    }
    let input = std::fs::File::open(&args.input).with_context(|| format!("cannot read {}", args.input.display()))?;
    let len = input.metadata()?.len();
    let output = args.output.clone().unwrap_or_else(|| {
        let mut p = args.input.clone().into_os_string();
        p.push(".veil");
        PathBuf::from(p)
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let ca_pem = match &args.kms.kms_ca {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    let config = crate::kms::KmsConfig { region: args.kms.kms_region.clone(), endpoint_url: args.kms.kms_endpoint.clone(), ca_pem };
    let context: std::collections::BTreeMap<String, String> = args.kms.context.iter().cloned().collect();
    let (plaintext_key, encrypted_key) = rt.block_on(async {
        let kms = crate::kms::kms_client(&config).await?;
        let mut req = kms.generate_data_key().key_id(&key_id).key_spec(DataKeySpec::Aes256);
        for (k, v) in &context {
            req = req.encryption_context(k, v);
        }
        let out = req
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("KMS GenerateDataKey failed: {}", aws_sdk_kms::error::DisplayErrorContext(e)))?;
        let p = Zeroizing::new(out.plaintext().context("KMS answered without Plaintext")?.as_ref().to_vec());
        let c = out.ciphertext_blob().context("KMS answered without CiphertextBlob")?.as_ref().to_vec();
        anyhow::Ok((p, c))
    })?;
    let (mut sealer, start) = ModelSealer::new(&plaintext_key, &key_id, &encrypted_key, context, len, args.chunk_size)?;
    drop(plaintext_key);
    let tmp = output.with_extension("partial");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?);
    out.write_all(&start)?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, input);
    let mut chunk = Zeroizing::new(vec![0u8; args.chunk_size as usize]);
    let mut done: u64 = 0;
    let mut next_report = len / 10;
    let started = std::time::Instant::now();
    loop {
        let want = (len - done).min(u64::from(args.chunk_size)) as usize;
        reader.read_exact(&mut chunk[..want]).with_context(|| format!("{} changed while reading", args.input.display()))?;
        out.write_all(&sealer.seal_chunk(&chunk[..want])?)?;
        done += want as u64;
        if len > (64 << 20) && done >= next_report {
            eprintln!("veil: encrypted {} of {} MiB", done >> 20, len >> 20);
            next_report += len / 10;
        }
        if done >= len {
            break;
        }
    }
    out.flush()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, &output).with_context(|| format!("cannot write {}", output.display()))?;
    eprintln!(
        "veil: wrote {} ({} bytes of model, {:.1}s); serve it with veil-parent --model NAME={}",
        output.display(),
        len,
        started.elapsed().as_secs_f64(),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

//! `veil ohttp keygen` and `veil ohttp keys`: fleet keys of attested-key mode.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use veil_protocol::ohttp::{GATEWAY_AEADS, GatewayKey, KeyConfig};
use veil_protocol::random::SystemRandom;

use super::infer::KmsArgs;

/// Oblivious HTTP keys.
#[derive(Debug, Subcommand)]
pub enum OhttpCommand {
    /// Make a fleet key: an HPKE (X25519) private key sealed under a KMS key, for every enclave of a fleet.
    Keygen(KeygenArgs),
    /// Fetch and print a gateway's key configuration (unverified: `veil infer --policy` verifies it).
    Keys(KeysArgs),
}

/// Make a fleet key for attested-key mode.
#[derive(Debug, Args)]
#[command(after_help = "\
The private key is generated here, sealed under a fresh data key of --kms-key-id (the file format of
`veil model encrypt`, bound to --name) and written to --output; it is never written in the clear. The
parent serves the file (`veil-parent --ohttp-key NAME=FILE`); each enclave asks KMS for its data key with
its attestation document, so only enclaves whose PCRs the key policy names can open it, and all of them
serve the same key configuration: a client that verified one can send to any.

The command prints the key configuration (RFC 9458, hex) and the entry to add to the enclave's
configuration, which pins the public key: an image serves exactly the keys it was built with.
Rotation: make a key with a new --key-id, list both in the configuration, roll out, then drop the old
one (docs/OPERATING.md, \"Rotating the fleet key\").

Example:
  veil ohttp keygen --kms-key-id alias/veil-models --key-id 1 -o ohttp-key-1.veil")]
pub struct KeygenArgs {
    /// The key identifier (RFC 9458 §3.1), 0 to 255; distinct for keys served side by side.
    #[arg(long, default_value_t = 1)]
    pub key_id: u8,
    /// The name the parent serves the file under and the configuration names (default: ohttp-key-KEYID).
    #[arg(long)]
    pub name: Option<String>,
    /// Where to write the sealed key.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    #[command(flatten)]
    pub kms: KmsArgs,
}

/// Print a gateway's key configuration.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// The parent's URL.
    #[arg(long, env = "VEIL_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
}

/// Runs an `ohttp` subcommand.
pub fn run(cmd: OhttpCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        OhttpCommand::Keygen(a) => keygen(a),
        OhttpCommand::Keys(a) => keys(a),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let key_id = args.kms.kms_key_id.clone().context("--kms-key-id is required: the key is sealed under a KMS key")?;
    let name = args.name.clone().unwrap_or_else(|| format!("ohttp-key-{}", args.key_id));
    anyhow::ensure!(
        veil_protocol::message::is_valid_model_name(&name),
        "--name {name:?}: {}",
        veil_protocol::message::MODEL_NAME_RULE
    );
    let key = GatewayKey::generate(args.key_id, &GATEWAY_AEADS, &SystemRandom::new())?;
    let secret = key.secret_bytes();
    let rt = runtime()?;
    let key_arn = rt.block_on(async {
        let ca_pem = match &args.kms.kms_ca {
            Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
            None => None,
        };
        let kms = veil_client::kms::kms_client(&veil_client::kms::KmsConfig {
            region: args.kms.kms_region.clone(),
            endpoint_url: args.kms.kms_endpoint.clone(),
            ca_pem,
            static_credentials: None,
        })
        .await?;
        let context = args.kms.context.iter().cloned().collect();
        let arn = veil_client::kms::encrypt_stream(
            &kms,
            &name,
            &key_id,
            context,
            std::io::Cursor::new(secret.as_slice()),
            secret.len() as u64,
            "the generated key",
            &args.output,
            veil_protocol::model_file::DEFAULT_CHUNK,
            false,
        )
        .await?;
        anyhow::Ok(arn)
    })?;
    drop(secret);
    let config = key.config();
    let list = KeyConfig::encode_list(std::slice::from_ref(config));
    println!("# key configuration (application/ohttp-keys), key id {}:", config.key_id);
    println!("#   {}", hex::encode(&list));
    println!("# Add to the enclave's configuration (docker/enclave.toml), and serve the file with");
    println!("#   veil-parent --ohttp-key {name}={}", args.output.display());
    println!("[[ohttp.keys]]");
    println!("key_id = {}", config.key_id);
    println!("file = \"{name}\"");
    println!("kms_key_arn = \"{key_arn}\"");
    println!("public_key = \"{}\"", hex::encode(config.public_key));
    eprintln!("veil: wrote {} (sealed under {key_arn})", args.output.display());
    Ok(ExitCode::SUCCESS)
}

fn keys(args: KeysArgs) -> anyhow::Result<ExitCode> {
    let client = veil_client::Client::new(&args.url)?;
    let list = match runtime()?.block_on(client.ohttp_keys()) {
        Ok(l) => l,
        Err(e) => return Ok(super::infer::report(&e)),
    };
    let configs = KeyConfig::decode_list(&list)?;
    println!(
        "application/ohttp-keys ({} bytes, SHA-384 {}), UNVERIFIED:",
        list.len(),
        hex::encode(veil_protocol::attestation::UserDataCommitment::sha384(&list))
    );
    for c in configs {
        let suites: Vec<String> = c.suites.iter().map(|s| format!("KDF {:#06x} AEAD {:#06x}", s.kdf, s.aead)).collect();
        println!("  key id {}: X25519 {} ({})", c.key_id, hex::encode(c.public_key), suites.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

//! `veil-mock-kms`: the mock AWS KMS as a process (for `veil dev` and scripts). See `docs/MOCK_KMS.md`.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use veil_protocol::attestation::TrustAnchor;
use veil_runtime::transport::Address;

/// A mock AWS KMS for off-hardware runs: the real KMS JSON protocol over HTTPS, with key policies that
/// check Nitro attestation (PCR) conditions. NOT AWS: it keeps its keys in a plain file. Trusted by nobody.
///
/// Point any KMS client at it with an endpoint URL and its CA:
///
///   AWS_CA_BUNDLE=STATE/ca.pem aws --endpoint-url https://127.0.0.1:PORT kms create-key
///
/// Callers: each --principal ACCESS_KEY=ARN says whose an access key is (IAM's job in AWS), and key
/// policies and grants are then evaluated for that principal; other access keys are refused. Without
/// any --principal, every caller is the account root (arn:aws:iam::ACCOUNT:root), whom a key policy
/// that names a role does not cover.
///
/// By default any secret is accepted (the SigV4 header must be present and well formed, for the region
/// given here; the signature is not checked). With --access-key and --secret-key (or
/// VEIL_MOCK_KMS_SECRET_KEY), that key's signatures are verified and other access keys refused.
#[derive(Debug, Parser)]
#[command(name = "veil-mock-kms", version)]
struct Args {
    /// Where to listen: tcp://HOST:PORT (port 0 picks a free one; see --ready-file) or unix://PATH.
    #[arg(long, default_value = "tcp://127.0.0.1:0", env = "VEIL_MOCK_KMS_LISTEN")]
    listen: Address,
    /// State directory: keys.json (the keys, 0600), ca.pem (trust this), server certificate and keys.
    /// Created if missing; reuse it across restarts to keep keys and CA.
    #[arg(long, env = "VEIL_MOCK_KMS_STATE_DIR")]
    state_dir: PathBuf,
    /// Root certificate (PEM) that Recipient attestation documents must chain to: the mock NSM's
    /// mock-root.pem. Repeat to accept several.
    #[arg(long = "attestation-root", required = true)]
    attestation_roots: Vec<PathBuf>,
    /// AWS region, used in key ARNs and required in the SigV4 credential scope.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// AWS account id that holds the keys (in key ARNs).
    #[arg(long, default_value = "111122223333")]
    account: String,
    /// ACCESS_KEY=ARN: requests signed with this access key id come from this principal
    /// (arn:aws:iam::ACCOUNT:root|user/NAME|role/NAME, arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION).
    /// Repeatable; once any is given, unknown access keys are refused.
    #[arg(long = "principal", value_name = "ACCESS_KEY=ARN")]
    principals: Vec<String>,
    /// Extra DNS name or IP address for the server certificate (localhost and 127.0.0.1 are always in).
    #[arg(long)]
    hostname: Vec<String>,
    /// Verify SigV4 signatures, and accept only this access key id (needs --secret-key).
    #[arg(long, requires = "secret_key")]
    access_key: Option<String>,
    /// The secret access key that signatures must be made with (prefer the environment variable).
    #[arg(long, env = "VEIL_MOCK_KMS_SECRET_KEY", hide_env_values = true, requires = "access_key")]
    secret_key: Option<String>,
    /// Once listening, write {"endpoint", "ca_file", "region"} here (atomically).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Make sure a key with this id (a UUID) exists, creating it with the account's default policy if
    /// not (repeatable). Mock only: real KMS chooses key ids; this is for fixtures that name a key ARN in
    /// advance, such as an enclave image's configuration file.
    #[arg(long = "fixture-key", value_name = "KEY_ID")]
    fixture_keys: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut roots = Vec::new();
    for path in &args.attestation_roots {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        roots.push(TrustAnchor::from_pem(&pem).with_context(|| format!("{} is not a usable root", path.display()))?);
    }
    let mut config = veil_mock_kms::Config::new(args.listen, &args.state_dir, roots.remove(0));
    config.attestation_roots.extend(roots);
    config.region = args.region;
    config.account = args.account;
    for p in &args.principals {
        let (access_key, arn) =
            p.split_once('=').with_context(|| format!("--principal {p:?}: expected ACCESS_KEY=ARN"))?;
        config = config.with_principal(access_key, arn).with_context(|| format!("--principal {p:?}"))?;
    }
    config.hostnames = args.hostname;
    config.fixture_keys = args.fixture_keys;
    config.credentials = args.access_key.zip(args.secret_key.map(zeroize::Zeroizing::new));
    let handle = veil_mock_kms::MockKms::start(config).await?;
    if let Some(path) = &args.ready_file {
        let json = serde_json::to_vec_pretty(&handle.ready_json())?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{}", handle.ready_json());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    handle.stop().await;
    Ok(())
}

//! `veil-enclave`: the binary that runs inside the Nitro Enclave.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use veil_enclave::host::HostClient;
use veil_enclave::keys::KeyCacheLimits;
use veil_enclave::kms::{KmsClient, KmsConfig};
use veil_enclave::model::{Model, SessionOptions};
use veil_enclave::nsm::{HardwareNsm, MockNsm, MockPcrs, Nsm};
use veil_enclave::sealed::{BoxFuture, KeySource, Unsealer};
use veil_enclave::server::{self, AttestFn, Enclave, Limits};
use veil_protocol::attestation::{MAX_MODELS, ModelDigest, UserDataCommitment};
use veil_protocol::message::{ErrorKind, ErrorReply};
use veil_runtime::transport::{Address, Listener};

/// The Veil enclave: serves confidential inference from inside an AWS Nitro Enclave.
///
/// It listens for the parent's relayed client traffic, fetches its models from the parent's host
/// services at boot (an enclave has no disk and no network), and runs them in ONNX Runtime.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "\
Examples:
  On Nitro hardware (the defaults):
    veil-enclave --model breast_cancer
  Off hardware, next to `veil-parent --host-listen unix:///tmp/veil/host.sock`:
    veil-enclave --listen unix:///tmp/veil/enclave.sock --parent unix:///tmp/veil/host.sock --model iris

ONNX Runtime is loaded at run time from ORT_DYLIB_PATH (scripts/setup.sh fetches libonnxruntime.so.1.31.1)."
)]
struct Args {
    /// Where to listen for the parent (vsock://any:PORT on hardware; tcp:// or unix:// off hardware).
    #[arg(long, env = "VEIL_ENCLAVE_LISTEN", default_value = "vsock://any:5000")]
    listen: Address,
    /// The parent's host-services address, for model bytes (CID 3 is the parent on Nitro hardware).
    #[arg(long, env = "VEIL_PARENT_ADDR", default_value = "vsock://3:5001")]
    parent: Address,
    /// A model to fetch from the parent and serve, by name (repeat, or comma-separate in VEIL_MODELS).
    #[arg(long = "model", env = "VEIL_MODELS", value_delimiter = ',', required_unless_present = "mock_measurements", value_parser = model_name)]
    models: Vec<String>,
    /// The NSM: `hardware` (/dev/nsm, inside a Nitro Enclave) or `mock` (off hardware: documents chain to
    /// a generated MOCK root that no real verifier or KMS key policy trusts).
    #[arg(long, env = "VEIL_NSM", default_value = "hardware", value_parser = ["hardware", "mock"])]
    nsm: String,
    /// With `--nsm mock`: directory of the mock root (mock-root.pem, mock-root.key.pem; created if absent).
    #[arg(long, env = "VEIL_MOCK_ROOT_DIR", required_if_eq("nsm", "mock"))]
    mock_root_dir: Option<PathBuf>,
    /// With `--nsm mock`: set a mock PCR, as N=HEX (96 hex digits; repeatable). Default: PCR0-2 derived
    /// from this binary's bytes.
    #[arg(long = "mock-pcr", value_parser = pcr_arg)]
    mock_pcrs: Vec<(u16, [u8; 48])>,
    /// With `--nsm mock`: create the mock root if needed, print this binary's mock PCRs as nitro-cli's
    /// measurements JSON (for `veil kms policy`), and exit.
    #[arg(long, requires = "mock_root_dir")]
    mock_measurements: bool,
    #[command(flatten)]
    kms: KmsConfig,
    /// Path of libonnxruntime.so (1.31.x).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_dylib: Option<PathBuf>,
    /// Threads ONNX Runtime uses within one inference.
    #[arg(long, env = "VEIL_INTRA_OP_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    intra_op_threads: u16,
    /// Sessions per model, i.e. inferences that run at once per model.
    #[arg(long, env = "VEIL_SESSIONS", default_value_t = default_sessions(), value_parser = clap::value_parser!(u16).range(1..=256))]
    sessions: u16,
    /// Largest frame accepted from or sent to the parent, in bytes.
    #[arg(long, env = "VEIL_MAX_FRAME_BYTES", default_value_t = veil_protocol::frame::DEFAULT_MAX_FRAME, value_parser = frame_size)]
    max_frame_bytes: usize,
    /// Largest model file accepted from the parent, in bytes.
    #[arg(long, env = "VEIL_MAX_MODEL_BYTES", default_value_t = 8 << 30)]
    max_model_bytes: u64,
    /// How long to keep trying to reach the parent's host services at boot, in seconds.
    #[arg(long, default_value_t = 60)]
    parent_patience_secs: u64,
    /// Write a JSON file with the bound address once listening (for scripts and tests).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Async worker threads (socket I/O; inference runs on a separate blocking pool). Default: one per core.
    #[arg(long, env = "VEIL_ENCLAVE_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    worker_threads: Option<u16>,
    /// Log format on stderr.
    #[arg(long, env = "VEIL_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn default_sessions() -> u16 {
    std::thread::available_parallelism().map(|n| n.get().min(64) as u16).unwrap_or(2)
}

fn model_name(s: &str) -> Result<String, String> {
    if veil_protocol::message::is_valid_model_name(s) {
        Ok(s.to_owned())
    } else {
        Err(veil_protocol::message::MODEL_NAME_RULE.into())
    }
}

fn pcr_arg(s: &str) -> Result<(u16, [u8; 48]), String> {
    let (n, h) = s.split_once('=').ok_or("expected N=HEX")?;
    let n: u16 = n.parse().map_err(|_| format!("PCR index {n:?} is not a number"))?;
    let bytes = hex::decode(h).map_err(|e| format!("PCR{n}: {e}"))?;
    let v: [u8; 48] = bytes.try_into().map_err(|_| format!("PCR{n}: expected 48 bytes (96 hex digits)"))?;
    Ok((n, v))
}

fn frame_size(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if (1024..=veil_protocol::frame::LIMIT_MAX_FRAME).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be from 1024 to {}", veil_protocol::frame::LIMIT_MAX_FRAME))
    }
}

/// KMS `Decrypt` with `Recipient`, as the enclave's source of data keys.
#[derive(Debug)]
struct KmsKeys(Arc<KmsClient>);

impl KeySource for KmsKeys {
    fn data_key<'a>(
        &'a self,
        key_id: &'a str,
        encrypted_data_key: &'a [u8],
        encryption_context: &'a std::collections::BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<zeroize::Zeroizing<Vec<u8>>, ErrorReply>> {
        Box::pin(async move {
            self.0
                .decrypt_data_key(encrypted_data_key, encryption_context, Some(key_id))
                .await
                .map_err(|e| ErrorReply::new(e.kind(), e.to_string()))
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (format, threads) = (args.log_format.clone(), args.worker_threads);
    veil_runtime::process::run_daemon("veil-enclave", &format, "info,ort=warn", threads, || run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.mock_measurements {
        anyhow::ensure!(args.nsm == "mock", "--mock-measurements needs --nsm mock");
        let nsm = open_nsm(&args)?;
        let mut m = serde_json::Map::new();
        m.insert("HashAlgorithm".into(), serde_json::json!("Sha384 { ... }"));
        for i in [0u16, 1, 2] {
            m.insert(format!("PCR{i}"), serde_json::json!(hex::encode(nsm.describe_pcr(i)?)));
        }
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "Measurements": m }))?);
        return Ok(());
    }
    let dylib = args.ort_dylib.clone().context(
        "ONNX Runtime is not configured: set ORT_DYLIB_PATH or --ort-dylib to libonnxruntime.so.1.31.1 \
         (scripts/setup.sh fetches it)",
    )?;
    anyhow::ensure!(dylib.is_file(), "ONNX Runtime library {} does not exist (run scripts/setup.sh)", dylib.display());
    let env = ort::init_from(&dylib)
        .with_context(|| format!("could not load ONNX Runtime from {}", dylib.display()))?
        .with_name("veil-enclave")
        .build()
        .map_err(|e| anyhow::anyhow!("could not start ONNX Runtime: {e}"))?;

    anyhow::ensure!(
        args.models.len() <= MAX_MODELS,
        "at most {} models per enclave (the attestation commitment lists each one's digest)",
        MAX_MODELS
    );
    let nsm = open_nsm(&args)?;
    // Requests are only ever accepted sealed: without KMS there is no way to open them, so no start.
    anyhow::ensure!(
        args.kms.region.is_some(),
        "no KMS configured: pass --kms-region (and --kms-endpoint when not the regional default); the enclave \
         accepts only requests sealed under KMS data keys"
    );
    let kms = Some(Arc::new(KmsClient::new(&args.kms, args.parent.clone(), Arc::clone(&nsm)).await?));
    let recipient_sha384 = kms.as_ref().map(|k| UserDataCommitment::sha384(k.recipient_public_key()));
    let config_sha384 = config_digest(&args);
    tracing::info!(config_sha384 = %hex::encode(config_sha384), "runtime configuration digest");
    let attest: AttestFn = {
        let nsm = Arc::clone(&nsm);
        Box::new(move |nonce: &[u8], models: &[(String, [u8; 48])]| {
            let commitment = UserDataCommitment {
                x25519: None,
                recipient_rsa_spki_sha384: recipient_sha384,
                models: models
                    .iter()
                    .map(|(name, sha384)| ModelDigest { name: name.clone(), sha384: *sha384 })
                    .collect(),
                config_sha384,
            };
            let user_data = commitment
                .encode()
                .map_err(|e| ErrorReply::new(ErrorKind::Internal, format!("cannot encode the commitment: {e}")))?;
            nsm.attestation(Some(&user_data), Some(nonce), None)
                .map_err(|e| ErrorReply::new(ErrorKind::Internal, format!("the NSM failed: {e}")))
        })
    };
    let limits = Limits { max_frame: args.max_frame_bytes, ..Limits::default() };
    let keys: Option<Arc<dyn KeySource>> = kms.clone().map(|k| Arc::new(KmsKeys(k)) as Arc<dyn KeySource>);
    let kms_timeout = Duration::from_secs(args.kms.timeout_secs + 5);
    let mut enclave = Enclave::new(args.models.clone(), Some(attest), limits);
    if let Some(keys) = &keys {
        enclave =
            enclave.with_unsealer(Arc::new(Unsealer::new(Arc::clone(keys), KeyCacheLimits::default(), kms_timeout)));
    }
    let enclave = Arc::new(enclave);
    let listener =
        Listener::bind(&args.listen).await.with_context(|| format!("could not listen on {}", args.listen))?;
    let bound = listener.local_address()?;
    tracing::info!(listen = %bound, models = ?args.models, "veil-enclave listening");
    if let Some(path) = &args.ready_file {
        write_ready_file(path, &serde_json::json!({ "listen": bound.to_string(), "nsm": args.nsm }))?;
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let loader = {
        let enclave = Arc::clone(&enclave);
        let options = SessionOptions { intra_op_threads: args.intra_op_threads.into(), sessions: args.sessions.into() };
        let patience = Duration::from_secs(args.parent_patience_secs);
        let (parent, models, max_frame, max_model) =
            (args.parent.clone(), args.models.clone(), args.max_frame_bytes, args.max_model_bytes);
        tokio::spawn(async move {
            let mut host = HostClient::connect(&parent, max_frame, patience).await?;
            for name in models {
                let mut fetched = host.fetch_model(&name, max_model).await?;
                if veil_enclave::model_file::is_encrypted(&fetched.bytes) {
                    let keys = keys.as_deref().ok_or_else(|| {
                        anyhow::anyhow!("model {name:?} is encrypted, but no KMS is configured (--kms-region)")
                    })?;
                    fetched.sha384 = veil_enclave::model_file::decrypt_in_place(&mut fetched.bytes, keys, kms_timeout)
                        .await
                        .with_context(|| format!("model {name:?}"))?;
                    tracing::info!(model = name, sha384 = %hex::encode(fetched.sha384), "model decrypted");
                } else if keys.is_some() {
                    tracing::warn!(
                        model = name,
                        "model file is not encrypted: the parent can read and swap it (encrypt it with `veil model encrypt`)"
                    );
                }
                let env = env.clone();
                let model = tokio::task::spawn_blocking(move || {
                    Model::load(&env, &name, &fetched.bytes, fetched.sha384, options)
                })
                .await??;
                tracing::info!(model = model.name(), sha384 = %hex::encode(model.sha384()), "model loaded");
                enclave.add_model(model);
            }
            tracing::info!("all models loaded; ready");
            anyhow::Ok(())
        })
    };
    let server = tokio::spawn(server::serve(listener, Arc::clone(&enclave), stop_rx));

    tokio::select! {
        loaded = loader => match loaded {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.context("loading models failed")),
            Err(e) => anyhow::bail!("model loader crashed: {e}"),
        },
        _ = veil_runtime::process::shutdown_signal() => {
            tracing::info!("shutting down before models loaded");
            return Ok(());
        }
    }
    veil_runtime::process::shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    Ok(())
}

/// Opens the NSM the arguments name. Fails closed: `hardware` without /dev/nsm is an error, never a
/// silent fall-back to the mock.
fn open_nsm(args: &Args) -> anyhow::Result<Arc<dyn Nsm>> {
    if args.nsm == "mock" {
        let dir = args.mock_root_dir.as_ref().context("--nsm mock needs --mock-root-dir")?;
        let mut pcrs = MockPcrs::from_current_exe()?;
        for (n, v) in &args.mock_pcrs {
            pcrs = pcrs.with(*n, *v)?;
        }
        let nsm = MockNsm::load_or_create(dir, pcrs)?;
        tracing::warn!(
            mock_root = %nsm.root_pem_path().display(),
            module_id = nsm.module_id(),
            "MOCK NSM: attestation documents chain to a mock root; for development only"
        );
        Ok(Arc::new(nsm))
    } else {
        Ok(Arc::new(HardwareNsm::open()?))
    }
}

/// SHA-384 of the runtime configuration that shapes what the enclave does with a request: the models it
/// serves, its limits, its threading, its NSM kind and its version. Addresses are left out (they differ
/// per deployment and the parent controls the network anyway). The canonical form is a JSON object
/// with sorted keys, as written below; docs/PROTOCOL.md lists the fields.
fn config_digest(args: &Args) -> [u8; 48] {
    let mut models = args.models.clone();
    models.sort();
    // serde_json's map is ordered by key, so this serialization is canonical.
    let config = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": veil_protocol::message::PROTOCOL_VERSION,
        "models": models,
        "nsm": args.nsm,
        "intra_op_threads": args.intra_op_threads,
        "sessions": args.sessions,
        "max_frame_bytes": args.max_frame_bytes,
        "max_model_bytes": args.max_model_bytes,
        "kms_region": args.kms.region,
        "kms_endpoint": args.kms.endpoint,
    });
    let bytes = serde_json::to_vec(&config).unwrap_or_default();
    let d = ring::digest::digest(&ring::digest::SHA384, &bytes);
    let mut out = [0u8; 48];
    out.copy_from_slice(d.as_ref());
    out
}

fn write_ready_file(path: &std::path::Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(value)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

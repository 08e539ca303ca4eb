//! `veil-enclave`: the binary that runs inside the Nitro Enclave.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use veil_enclave::config::{self, EnclaveConfig};
use veil_enclave::error::EnclaveError;
use veil_enclave::evidence::Evidence;
use veil_enclave::host::HostClient;
use veil_enclave::kms::{KmsClient, KmsConfig, KmsError};
use veil_enclave::model::{Model, SessionOptions};
use veil_enclave::nsm::{HardwareNsm, NOT_A_DEVELOPMENT_BUILD, Nsm, NsmKind};
use veil_enclave::ohttp::OhttpGateway;
use veil_enclave::sealed::{BoxFuture, KeySource, Unsealer};
use veil_enclave::server::{self, Limits};
use veil_enclave::service::{AttestFn, Enclave};
use veil_protocol::attestation::{ModelDigest, UserDataCommitment};
use veil_protocol::ohttp::GatewayKey;
use veil_runtime::transport::{Address, Listener};

/// The Veil enclave: serves confidential inference from inside an AWS Nitro Enclave.
///
/// What it serves comes from its configuration file, baked into the image (so covered by PCR0 and PCR2,
/// and hashed into every attestation document): the models, the KMS key each is encrypted under, the KMS
/// region and endpoint, the limits. It listens for the parent's relayed client traffic, fetches its
/// (encrypted) models from the parent's host services at boot (an enclave has no disk and no network),
/// asks KMS for their keys with its attestation document, and runs them in ONNX Runtime.
#[derive(Debug, Parser)]
#[command(version = version(), after_help = "\
Examples:
  On Nitro hardware (the image's entrypoint; the configuration is in the image):
    veil-enclave --config /etc/veil/enclave.toml
  Print the configuration's SHA-384 (what attestation documents commit to) and exit:
    veil-enclave --config enclave.toml --check-config
  Off hardware, a development build, next to `veil-parent --host-listen unix:///tmp/veil/host.sock`:
    veil-enclave --config dev.toml --nsm mock --mock-root-dir /tmp/veil/mock-nsm \\
                 --listen unix:///tmp/veil/enclave.sock --parent unix:///tmp/veil/host.sock

ONNX Runtime is loaded at run time from ORT_DYLIB_PATH (scripts/setup.sh fetches libonnxruntime.so.1.31.1).
The configuration's format: docs/OPERATING.md, \"The enclave's configuration\".")]
struct Args {
    /// The enclave's configuration file (TOML), from the image.
    #[arg(long, env = "VEIL_ENCLAVE_CONFIG", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Check the configuration, print its SHA-384 and exit.
    #[arg(long)]
    check_config: bool,
    /// Where to listen for the parent (vsock://any:PORT on hardware; tcp:// or unix:// off hardware).
    #[arg(long, env = "VEIL_ENCLAVE_LISTEN", default_value = "vsock://any:5000")]
    listen: Address,
    /// The parent's host-services address (CID 3 is the parent on Nitro hardware).
    #[arg(long, env = "VEIL_PARENT_ADDR", default_value = "vsock://3:5001")]
    parent: Address,
    /// The NSM: `hardware` (/dev/nsm, inside a Nitro Enclave) or, in development builds only, `mock`.
    #[arg(long, env = "VEIL_NSM", value_enum, default_value_t = NsmKind::Hardware)]
    nsm: NsmKind,
    /// Development builds, with `--nsm mock`: directory of the mock root (mock-root.pem,
    /// mock-root.key.pem; created if absent).
    #[arg(long, env = "VEIL_MOCK_ROOT_DIR", hide = !veil_enclave::DEVELOPMENT_BUILD)]
    mock_root_dir: Option<PathBuf>,
    /// Development builds, with `--nsm mock`: set a mock PCR, as N=HEX (96 hex digits; repeatable).
    /// Default: PCR0-2 derived from this binary's bytes.
    #[arg(long = "mock-pcr", value_parser = pcr_arg, hide = !veil_enclave::DEVELOPMENT_BUILD)]
    mock_pcrs: Vec<(u16, [u8; 48])>,
    /// Development builds, with `--nsm mock`: create the mock root if needed, print this binary's mock PCRs
    /// as nitro-cli's measurements JSON (for `veil kms policy`), and exit.
    #[arg(long, requires = "mock_root_dir", hide = !veil_enclave::DEVELOPMENT_BUILD)]
    mock_measurements: bool,
    /// Development builds, with `--nsm mock`: trust this CA certificate (PEM) for the KMS endpoint too (the
    /// mock KMS's). A production build trusts only the pinned Amazon roots.
    #[arg(long, env = "VEIL_DEV_KMS_CA", hide = !veil_enclave::DEVELOPMENT_BUILD)]
    dev_kms_ca: Option<PathBuf>,
    /// Path of libonnxruntime.so (1.31.x).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_dylib: Option<PathBuf>,
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

fn version() -> &'static str {
    if veil_enclave::DEVELOPMENT_BUILD {
        concat!(env!("CARGO_PKG_VERSION"), " (development build: mock NSM, not for production)")
    } else {
        env!("CARGO_PKG_VERSION")
    }
}

fn pcr_arg(s: &str) -> Result<(u16, [u8; 48]), String> {
    let (n, h) = s.split_once('=').ok_or("expected N=HEX")?;
    let n: u16 = n.parse().map_err(|_| format!("PCR index {n:?} is not a number"))?;
    let bytes = hex::decode(h).map_err(|e| format!("PCR{n}: {e}"))?;
    let v: [u8; 48] = bytes.try_into().map_err(|_| format!("PCR{n}: expected 48 bytes (96 hex digits)"))?;
    Ok((n, v))
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
    ) -> BoxFuture<'a, Result<zeroize::Zeroizing<Vec<u8>>, KmsError>> {
        Box::pin(async move { self.0.decrypt_data_key(encrypted_data_key, encryption_context, Some(key_id)).await })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (format, threads) = (args.log_format.clone(), args.worker_threads);
    veil_runtime::process::run_daemon("veil-enclave", &format, "info,ort=warn", threads, || run(args))
}

fn refuse_development_options(args: &Args) -> anyhow::Result<()> {
    let asked = args.nsm == NsmKind::Mock
        || args.mock_root_dir.is_some()
        || !args.mock_pcrs.is_empty()
        || args.mock_measurements
        || args.dev_kms_ca.is_some();
    anyhow::ensure!(!asked || veil_enclave::DEVELOPMENT_BUILD, "{NOT_A_DEVELOPMENT_BUILD}");
    anyhow::ensure!(
        args.nsm == NsmKind::Mock
            || (args.mock_root_dir.is_none() && args.mock_pcrs.is_empty() && args.dev_kms_ca.is_none()),
        "--mock-root-dir, --mock-pcr and --dev-kms-ca go with --nsm mock"
    );
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    refuse_development_options(&args)?;
    if args.mock_measurements {
        return print_mock_measurements(&args);
    }
    let config = Arc::new(EnclaveConfig::load(&args.config, veil_enclave::DEVELOPMENT_BUILD)?);
    if args.check_config {
        println!("{}", hex::encode(config.sha384));
        return Ok(());
    }
    tracing::info!(
        config = %args.config.display(),
        config_sha384 = %hex::encode(config.sha384),
        models = ?config.model_names(),
        kms_endpoint = %config.kms.endpoint,
        development_build = veil_enclave::DEVELOPMENT_BUILD,
        "configuration loaded from the image"
    );
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

    let nsm = open_nsm(&args)?;
    let mut kms_config = KmsConfig::from_settings(&config.kms);
    kms_config.ca_file = args.dev_kms_ca.clone();
    let kms = Arc::new(KmsClient::new(&kms_config, args.parent.clone(), Arc::clone(&nsm)).await?);
    let recipient_sha384 = UserDataCommitment::sha384(kms.recipient_public_key());
    let evidence = if config.audit.receipts {
        let evidence = Evidence::new(config.audit.clone(), &veil_protocol::random::SystemRandom::new())?;
        tracing::info!(
            receipt_key = %hex::encode(evidence.public_key()),
            boot = %hex::encode(evidence.boot_id()),
            "receipts: key generated at boot"
        );
        Some(Arc::new(evidence))
    } else {
        tracing::warn!("receipts are off in this configuration ([audit] receipts = false): answers carry no evidence");
        None
    };
    let attest: AttestFn = {
        let (nsm, config_sha384) = (Arc::clone(&nsm), config.sha384);
        let receipt_key = evidence.as_ref().map(|e| *e.public_key());
        Box::new(move |nonce: &[u8], models: &[(String, [u8; 48])], ohttp_keys_sha384: Option<[u8; 48]>| {
            let commitment = UserDataCommitment {
                ohttp_keys_sha384,
                receipt_key,
                recipient_rsa_spki_sha384: Some(recipient_sha384),
                models: models
                    .iter()
                    .map(|(name, sha384)| ModelDigest { name: name.clone(), sha384: *sha384 })
                    .collect(),
                config_sha384,
            };
            let user_data = commitment
                .encode()
                .map_err(|e| EnclaveError::Internal(format!("cannot encode the commitment: {e}")))?;
            nsm.attestation(Some(&user_data), Some(nonce), None)
                .map_err(|e| EnclaveError::Internal(format!("the NSM failed: {e}")))
        })
    };
    let keys: Arc<dyn KeySource> = Arc::new(KmsKeys(Arc::clone(&kms)));
    let kms_timeout = Duration::from_secs(config.kms.timeout_secs + 5);
    let unsealer = Unsealer::new(Arc::clone(&keys), Arc::clone(&config), kms_timeout);
    let enclave = Arc::new(Enclave::new(Arc::clone(&config), unsealer, attest, evidence.clone()));
    if config.ohttp.enabled && config.ohttp.keys.is_empty() {
        let gateway = OhttpGateway::boot_key(&config.ohttp, &veil_protocol::random::SystemRandom::new())?;
        tracing::info!(
            key_list_sha384 = %hex::encode(gateway.key_list_sha384()),
            "attested-key mode: OHTTP key generated at boot (key id 0)"
        );
        enclave.set_ohttp(gateway);
    }
    let limits = Limits { max_frame: config.limits.max_frame_bytes, ..Limits::default() };
    tracing::info!(budget_bytes = enclave.budget().total(), "request bytes in flight are bounded");
    let listener =
        Listener::bind(&args.listen).await.with_context(|| format!("could not listen on {}", args.listen))?;
    let bound = listener.local_address()?;
    tracing::info!(listen = %bound, "veil-enclave listening");
    if let Some(path) = &args.ready_file {
        let ready = veil_runtime::ready::EnclaveReady {
            listen: bound.to_string(),
            nsm: args.nsm.as_str().to_owned(),
            config_sha384: hex::encode(config.sha384),
            development_build: veil_enclave::DEVELOPMENT_BUILD,
        };
        veil_runtime::ready::write(path, &ready)?;
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let loader = {
        let enclave = Arc::clone(&enclave);
        let options = SessionOptions {
            intra_op_threads: config.inference.intra_op_threads.into(),
            sessions: config.inference.sessions.into(),
        };
        let patience = Duration::from_secs(args.parent_patience_secs);
        let parent = args.parent.clone();
        let config = Arc::clone(&config);
        tokio::spawn(async move {
            let mut host = HostClient::connect(&parent, config.limits.max_frame_bytes, patience).await?;
            if config.ohttp.enabled && !config.ohttp.keys.is_empty() {
                let gateway = load_fleet_keys(&config, &mut host, keys.as_ref(), kms_timeout).await?;
                tracing::info!(
                    key_ids = ?config.ohttp.keys.iter().map(|k| k.key_id).collect::<Vec<_>>(),
                    key_list_sha384 = %hex::encode(gateway.key_list_sha384()),
                    "attested-key mode: fleet OHTTP keys opened"
                );
                enclave.set_ohttp(gateway);
            }
            for m in &config.models {
                let mut fetched = host.fetch_model(&m.name, config.limits.max_model_bytes).await?;
                let sha384 = veil_enclave::model_file::prepare(
                    m,
                    &mut fetched.bytes,
                    fetched.sha384,
                    keys.as_ref(),
                    kms_timeout,
                )
                .await?;
                let (env, name) = (env.clone(), m.name.clone());
                let model =
                    tokio::task::spawn_blocking(move || Model::load(&env, &name, &fetched.bytes, sha384, options))
                        .await??;
                tracing::info!(model = model.name(), sha384 = %hex::encode(model.sha384()), "model loaded");
                enclave.add_model(model);
            }
            enclave.start_evidence().context("starting the receipts' log")?;
            if let Some(evidence) = enclave.evidence() {
                let (evidence, parent, max_frame) =
                    (Arc::clone(evidence), parent.clone(), config.limits.max_frame_bytes);
                tokio::spawn(async move { evidence.pump(parent, max_frame).await });
            }
            tracing::info!("all models loaded; ready");
            anyhow::Ok(())
        })
    };
    let server = tokio::spawn(server::serve(listener, Arc::clone(&enclave), limits, stop_rx));

    tokio::select! {
        loaded = loader => match loaded {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.context("loading models failed; the enclave does not serve a half-loaded model set")),
            Err(e) => anyhow::bail!("model loader crashed: {e}"),
        },
        _ = veil_runtime::process::shutdown_signal() => {
            tracing::info!("shutting down before models loaded");
            return Ok(());
        }
    }
    veil_runtime::process::shutdown_signal().await;
    tracing::info!("shutting down: draining requests in flight");
    let _ = stop_tx.send(true);
    let _ = server.await;
    if let Some(evidence) = &evidence {
        // A last tree head over every receipt, and a moment for the parent to store it.
        evidence.flush(Duration::from_secs(5)).await;
        tracing::info!(backlog = evidence.backlog(), "receipts: final tree head signed");
    }
    Ok(())
}

/// Fetches each configured fleet key from the parent, opens it with the KMS key the configuration names
/// (exactly as an encrypted model), and checks it against the public key the configuration pins.
async fn load_fleet_keys(
    config: &EnclaveConfig,
    host: &mut HostClient,
    keys: &dyn KeySource,
    kms_timeout: Duration,
) -> anyhow::Result<OhttpGateway> {
    let mut out = Vec::with_capacity(config.ohttp.keys.len());
    for k in &config.ohttp.keys {
        let mut fetched =
            host.fetch_model(&k.file, 64 * 1024).await.with_context(|| format!("OHTTP key file {:?}", k.file))?;
        let as_file = veil_enclave::config::ModelConfig {
            name: k.file.clone(),
            source: veil_enclave::config::ModelSource::Kms { key_arn: k.kms_key_arn.clone() },
            sha384: None,
        };
        veil_enclave::model_file::prepare(&as_file, &mut fetched.bytes, fetched.sha384, keys, kms_timeout)
            .await
            .with_context(|| format!("OHTTP key {} (file {:?})", k.key_id, k.file))?;
        let key = GatewayKey::from_secret(k.key_id, &veil_protocol::ohttp::GATEWAY_AEADS, &fetched.bytes)
            .map_err(|e| anyhow::anyhow!("OHTTP key {} (file {:?}): {e}", k.key_id, k.file))?;
        anyhow::ensure!(
            key.config().public_key == k.public_key,
            "OHTTP key {} (file {:?}): its public key is {}, but the configuration pins {}: the parent served another key",
            k.key_id,
            k.file,
            hex::encode(key.config().public_key),
            hex::encode(k.public_key)
        );
        out.push(key);
    }
    Ok(OhttpGateway::new(out, &config.ohttp)?)
}

/// Opens the NSM the arguments name. Fails closed: `hardware` without /dev/nsm is an error, never a
/// silent fall-back to the mock (which production builds do not even contain).
fn open_nsm(args: &Args) -> anyhow::Result<Arc<dyn Nsm>> {
    match args.nsm {
        NsmKind::Hardware => Ok(Arc::new(HardwareNsm::open()?)),
        NsmKind::Mock => open_mock_nsm(args),
    }
}

#[cfg(feature = "dev")]
fn open_mock_nsm(args: &Args) -> anyhow::Result<Arc<dyn Nsm>> {
    use veil_enclave::nsm::{MockNsm, MockPcrs};
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
}

#[cfg(not(feature = "dev"))]
fn open_mock_nsm(_: &Args) -> anyhow::Result<Arc<dyn Nsm>> {
    anyhow::bail!("{NOT_A_DEVELOPMENT_BUILD}")
}

fn print_mock_measurements(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.nsm == NsmKind::Mock, "--mock-measurements needs --nsm mock");
    let nsm = open_nsm(args)?;
    let mut m = serde_json::Map::new();
    m.insert("HashAlgorithm".into(), serde_json::json!("Sha384 { ... }"));
    for i in [0u16, 1, 2] {
        m.insert(format!("PCR{i}"), serde_json::json!(hex::encode(nsm.describe_pcr(i)?)));
    }
    println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "Measurements": m }))?);
    Ok(())
}

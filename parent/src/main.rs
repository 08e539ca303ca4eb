//! `veil-parent`: the parent-instance proxy.
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use veil_parent::audit::AuditLog;
use veil_parent::host::HostServices;
use veil_parent::http::{AppState, HttpListener, router};
use veil_parent::kms::{KmsRelayArgs, KmsRelayConfig, KmsServices};
use veil_parent::link::EnclaveLink;
use veil_parent::metrics::Metrics;
use veil_runtime::transport::{Address, Listener};

/// The Veil parent: serves clients over HTTP and relays their (opaque) requests to the enclave.
///
/// It runs outside the enclave and is trusted with nothing: it only moves bytes it cannot read, and serves
/// the enclave the model files it names.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "\
Examples:
  On Nitro hardware (enclave CID 16):
    veil-parent --enclave vsock://16:5000 --model breast_cancer=/var/lib/veil/breast_cancer.onnx
  Off hardware:
    veil-parent --listen tcp://127.0.0.1:8080 --enclave unix:///tmp/veil/enclave.sock \\
                --host-listen unix:///tmp/veil/host.sock --model iris=$HOME/.cache/veil/models/iris.onnx"
)]
struct Args {
    /// Where to serve the client HTTP API.
    #[arg(long, env = "VEIL_LISTEN", default_value = "tcp://0.0.0.0:8080")]
    listen: Address,
    /// The enclave's address.
    #[arg(long, env = "VEIL_ENCLAVE_ADDR", default_value = "vsock://16:5000")]
    enclave: Address,
    /// Where to serve host services (model files) to the enclave.
    #[arg(long, env = "VEIL_HOST_LISTEN", default_value = "vsock://any:5001")]
    host_listen: Address,
    /// A model file to serve to the enclave, as NAME=PATH (repeat for more).
    #[arg(long = "model", env = "VEIL_MODEL_FILES", value_delimiter = ',', value_parser = model_file)]
    models: Vec<(String, PathBuf)>,
    /// An OHTTP fleet key file (`veil ohttp keygen`) to serve to the enclave, as NAME=PATH, NAME being the
    /// `file` of its `[[ohttp.keys]]` entry in the enclave's configuration (repeat while rotating).
    #[arg(long = "ohttp-key", env = "VEIL_OHTTP_KEY_FILES", value_delimiter = ',', value_parser = model_file)]
    ohttp_keys: Vec<(String, PathBuf)>,
    /// Long-lived connections to the enclave per lane (requests are multiplexed over them): one lane for
    /// frames up to 64 KiB, one for larger ones, so small requests never queue behind large bodies.
    #[arg(long, env = "VEIL_CONNECTIONS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    connections: u16,
    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, env = "VEIL_MAX_BODY_BYTES", default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// Largest frame exchanged with the enclave, in bytes (must exceed --max-body-bytes).
    #[arg(long, env = "VEIL_MAX_FRAME_BYTES", default_value_t = veil_protocol::frame::DEFAULT_MAX_FRAME)]
    max_frame_bytes: usize,
    /// Seconds to wait for the enclave's answer before 504.
    #[arg(long, env = "VEIL_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    request_timeout_secs: u64,
    /// Milliseconds to wait when dialing the enclave before 503.
    #[arg(long, default_value_t = 1000)]
    connect_timeout_ms: u64,
    /// Seconds a client has to send a request's head (also: the longest a keep-alive connection stays
    /// idle); a client that trickles it is disconnected.
    #[arg(long, env = "VEIL_HEADER_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout_secs: u64,
    /// Seconds a client has to send a request's body once its head arrived; a body still arriving then
    /// gets 408 and the connection is closed.
    #[arg(long, env = "VEIL_BODY_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout_secs: u64,
    #[command(flatten)]
    kms: KmsRelayArgs,
    /// Write a JSON file with the bound addresses once listening (for scripts and tests).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Async worker threads (socket I/O; inference runs on a separate blocking pool). Default: one per core.
    #[arg(long, env = "VEIL_PARENT_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    worker_threads: Option<u16>,
    /// Log format on stderr.
    #[arg(long, env = "VEIL_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Keep the enclave's audit log in this directory: its signed receipts and tree heads, one
    /// subdirectory per enclave boot, append-only files rotated at --audit-rotate-bytes. It holds no
    /// plaintext. Without it, receipts are acknowledged and not kept (and /v1/audit/proof answers 404).
    #[arg(long, env = "VEIL_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
    /// Start a new audit-log file after this many bytes (4 KiB to 1 GiB: `veil audit verify` reads each
    /// file whole).
    #[arg(long, env = "VEIL_AUDIT_ROTATE_BYTES", default_value_t = veil_parent::audit::DEFAULT_ROTATE_BYTES,
          value_parser = clap::value_parser!(u64).range(4096..=1 << 30))]
    audit_rotate_bytes: u64,
    /// Do not fdatasync each batch of audit records before acknowledging it (faster; a machine crash can
    /// lose the last batches, which the next tree head then shows as missing).
    #[arg(long)]
    audit_no_fsync: bool,
}

fn model_file(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected NAME=PATH"))?;
    if !veil_protocol::message::is_valid_model_name(name) {
        return Err(format!("{name:?}: {}", veil_protocol::message::MODEL_NAME_RULE));
    }
    Ok((name.to_owned(), PathBuf::from(path)))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (format, threads) = (args.log_format.clone(), args.worker_threads);
    veil_runtime::process::run_daemon("veil-parent", &format, "info", threads, || run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.max_frame_bytes > args.max_body_bytes + 1024,
        "--max-frame-bytes ({}) must exceed --max-body-bytes ({}) by at least 1 KiB of framing",
        args.max_frame_bytes,
        args.max_body_bytes
    );
    let mut files = HashMap::new();
    for (name, path) in &args.models {
        let meta =
            std::fs::metadata(path).with_context(|| format!("model {name:?}: cannot read {}", path.display()))?;
        anyhow::ensure!(meta.is_file() && meta.len() > 0, "model {name:?}: {} is not a non-empty file", path.display());
        anyhow::ensure!(files.insert(name.clone(), path.clone()).is_none(), "model {name:?} is named twice");
    }
    for (name, path) in &args.ohttp_keys {
        let meta =
            std::fs::metadata(path).with_context(|| format!("OHTTP key {name:?}: cannot read {}", path.display()))?;
        anyhow::ensure!(
            meta.is_file() && meta.len() > 0,
            "OHTTP key {name:?}: {} is not a non-empty file",
            path.display()
        );
        anyhow::ensure!(
            files.insert(name.clone(), path.clone()).is_none(),
            "{name:?} names both a model and an OHTTP key file, or a key file twice"
        );
    }
    let model_names: Vec<String> = args.models.iter().map(|(n, _)| n.clone()).collect();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let host_listener =
        Listener::bind(&args.host_listen).await.with_context(|| format!("could not listen on {}", args.host_listen))?;
    let host_bound = host_listener.local_address()?;
    let kms = if args.kms.kms_endpoints.is_empty() {
        None
    } else {
        let config = KmsRelayConfig::from_args(&args.kms)?;
        tracing::info!(endpoints = ?config.endpoints, credentials = ?config.credentials, "KMS relay enabled");
        Some(Arc::new(KmsServices::new(config)))
    };
    let metrics = Metrics::new();
    let shown = args.audit_log.as_deref().map(|d| d.display().to_string()).unwrap_or_default();
    let audit = AuditLog::new(args.audit_log.clone(), args.audit_rotate_bytes, !args.audit_no_fsync)
        .with_context(|| format!("--audit-log {shown}"))?;
    let audit = Arc::new(audit.with_metrics(&metrics));
    match &args.audit_log {
        Some(dir) => tracing::info!(dir = %dir.display(), "audit log: keeping the enclave's receipts and tree heads"),
        None => tracing::info!("audit log: not kept (no --audit-log); receipts are acknowledged and dropped"),
    }
    let services = HostServices { files: Arc::new(files), kms, audit: Arc::clone(&audit) };
    let host_task = tokio::spawn(veil_parent::host::serve_services(
        host_listener,
        Arc::new(services),
        args.max_frame_bytes,
        stop_rx,
    ));

    let state = Arc::new(AppState {
        link: EnclaveLink::new(
            args.enclave.clone(),
            args.connections.into(),
            args.max_frame_bytes,
            Duration::from_millis(args.connect_timeout_ms),
        ),
        metrics,
        models: model_names.clone(),
        request_timeout: Duration::from_secs(args.request_timeout_secs),
        audit,
    });
    let http_listener =
        Listener::bind(&args.listen).await.with_context(|| format!("could not listen on {}", args.listen))?;
    let http_bound = http_listener.local_address()?;
    let url = match &http_bound {
        Address::Tcp(hp) => format!("http://{}", hp.replace("0.0.0.0", "127.0.0.1")),
        other => other.to_string(),
    };
    tracing::info!(http = %url, enclave = %args.enclave, host_services = %host_bound, models = ?model_names, "veil-parent listening");
    if let Some(path) = &args.ready_file {
        let ready = veil_runtime::ready::ParentReady {
            url: url.clone(),
            listen: http_bound.to_string(),
            host_listen: host_bound.to_string(),
        };
        veil_runtime::ready::write(path, &ready)?;
    }
    let app = router(state, args.max_body_bytes);
    let timeouts = veil_parent::serve::Timeouts {
        header: Duration::from_secs(args.header_timeout_secs),
        body: Duration::from_secs(args.body_timeout_secs),
        drain: Duration::from_secs(args.request_timeout_secs.saturating_add(5)),
    };
    veil_parent::serve::serve(HttpListener(http_listener), app, timeouts, veil_runtime::process::shutdown_signal())
        .await
        .context("HTTP server failed")?;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), host_task).await;
    Ok(())
}

//! `veil proxy`: a local KServe v2 endpoint that verifies and seals (see `veil_client::proxy`).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use veil_client::Client;
use veil_client::evidence::ReceiptSink;
use veil_client::oblivious::{ObliviousClient, ObliviousError, verify_gateway_document};
use veil_client::proxy::{DEFAULT_MAX_BODY, Mode, Proxy};
use veil_client::trust::ClientPolicy;
use veil_protocol::attestation::{TrustAnchor, Verifier};
use veil_protocol::evidence::verify::EvidencePolicy;
use veil_protocol::time::format_unix_millis;

use super::infer::{KmsArgs, report};
use super::{EXIT_CONNECT, EXIT_FAILED, EXIT_UNVERIFIED, EXIT_USAGE};

/// Serve the KServe v2 REST API locally: every request verified and sealed before it leaves.
#[derive(Debug, Args)]
#[command(after_help = "\
Unmodified KServe v2 and Triton clients (tritonclient, KServe's SDK, curl) point at the proxy instead of
a server, and get Veil's guarantees without a line changed:

  veil proxy --remote http://veil.example.com:8080 --policy policy.toml
  python3 -c 'import tritonclient.http as h; c = h.InferenceServerClient(\"127.0.0.1:8000\"); ...'

Routes: GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{model}, /v2/models/{model}/ready,
POST /v2/models/{model}/infer, and the /versions/{v} forms (Veil serves version 1). JSON tensors and the
binary tensor data extension (Inference-Header-Content-Length) both travel inside the seal.

Modes:
  --policy FILE    attested-key mode (the default; no AWS credentials). The enclave's attestation is
                   verified against the policy before anything is forwarded, again when the cached
                   verification ages out, and again when the enclave's keys change. Every route travels
                   inside Oblivious HTTP; the parent learns neither the route nor the model.
  --kms-key-id K   KMS envelope mode: inference requests sealed under KMS data keys for the model's
                   digest (from --policy if given, else from the enclave's attestation verified at start
                   against --root). The policy is checked once, at start; KMS's key policy then decides
                   which enclave can open each request. Health and metadata come from the parent,
                   unauthenticated.

Inference requests that fail in a way that may succeed again (the server unreachable or restarting:
the connection closed before an answer, 503 or 429) are sent again, sealed afresh, up to --retries
times with exponential backoff, honouring Retry-After; a timeout never is. Clients see the last
attempt's answer. Health and metadata routes are not retried: a readiness probe sees \"not ready\"
while the enclave is not.

Nothing is forwarded for a model the policy does not list, or while verification fails: clients get a
v2 error ({\"error\": \"...\"}) with 502 naming the failed check, or 503 if the server cannot be reached.
Logs (stderr; VEIL_LOG=debug for more) carry routes, models, statuses and times, never tensor data.

The proxy listens on loopback only, and refuses requests a web page could make (an Origin header, or a
Host that is not this proxy), unless --allow-remote-clients: then anyone who can reach the port can use
the enclave with your policy (and, in KMS mode, your AWS credentials), in clear text to the proxy.

--check verifies the enclave, prints the report and exits: 0 verified, 3 unreachable, 4 not trusted.")]
pub struct ProxyArgs {
    /// The Veil server (its parent, or a load balancer in front of a fleet): http://HOST:PORT.
    #[arg(long, env = "VEIL_URL")]
    pub remote: String,
    /// The client policy (`veil policy new`): accepted images, models and digests, root, maximum age.
    #[arg(long, env = "VEIL_POLICY")]
    pub policy: Option<PathBuf>,
    /// Where to serve the KServe v2 API.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Allow --listen on an address other than loopback (read the warning above first).
    #[arg(long)]
    pub allow_remote_clients: bool,
    /// Verify the enclave, print the report, and exit (0 verified, 3 unreachable, 4 not trusted).
    #[arg(long)]
    pub check: bool,
    /// With --check: print the report as JSON.
    #[arg(long, requires = "check")]
    pub json: bool,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY)]
    pub max_body_bytes: usize,
    /// Seconds to wait for each answer from the server.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Retries of an inference request that failed in a way that may succeed again (the server
    /// unreachable, the connection closed before an answer, 503 or 429; never a timeout), each sealed
    /// afresh, with exponential backoff and `Retry-After` honoured (docs/RELIABILITY.md). 0: none.
    #[arg(long, default_value_t = veil_client::RetryPolicy::default().max_retries)]
    pub retries: u32,
    /// KMS mode without --policy: the root the attestation must chain to (PEM; default AWS's Nitro root).
    #[arg(long, env = "VEIL_ATTESTATION_ROOT")]
    pub root: Option<PathBuf>,
    /// KMS mode without --policy: oldest attestation document accepted, in seconds.
    #[arg(long, default_value_t = 300)]
    pub max_age: u64,
    /// Keep every answer's evidence bundle in this directory (`<boot>-<seq>.json`: the enclave's signed
    /// receipt, its salt and the certifying attestation document), for `veil receipt verify`. Each is
    /// checked against the policy (or --root) before it is written.
    #[arg(long)]
    pub receipts: Option<PathBuf>,
    #[command(flatten)]
    pub kms: KmsArgs,
}

fn usage(message: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("veil: {message}");
    Ok(ExitCode::from(EXIT_USAGE))
}

/// Runs `veil proxy`.
pub fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    if args.policy.is_none() && args.kms.kms_key_id.is_none() {
        return usage("give --policy FILE (attested-key mode) or --kms-key-id KEY (KMS envelope mode)");
    }
    if !args.listen.ip().is_loopback() && !args.allow_remote_clients && !args.check {
        return usage(format!(
            "--listen {} is not a loopback address: the proxy takes plaintext from whoever connects; add \
             --allow-remote-clients if that is what you want",
            args.listen
        ));
    }
    let client = match Client::new(&args.remote) {
        Ok(c) => c
            .with_timeout(Duration::from_secs(args.timeout))
            .with_retries(veil_client::RetryPolicy::default().with_max_retries(args.retries)),
        Err(e) => return Ok(report(&e)),
    };
    let policy = match &args.policy {
        None => None,
        Some(p) => match ClientPolicy::load(p) {
            Ok(p) => Some(p),
            Err(e) => return usage(e),
        },
    };
    if policy.as_ref().is_some_and(|p| p.mock_root) {
        eprintln!("veil: WARNING: the policy trusts a MOCK attestation root (development only)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match (args.kms.kms_key_id.is_some(), policy) {
            (true, policy) => kms_mode(args, client, policy).await,
            (false, Some(policy)) => attested_mode(args, client, policy).await,
            (false, None) => usage("give --policy FILE (attested-key mode) or --kms-key-id KEY (KMS envelope mode)"),
        }
    })
}

async fn attested_mode(args: ProxyArgs, client: Client, policy: ClientPolicy) -> anyhow::Result<ExitCode> {
    if args.check {
        return Ok(check_attested(&client, &policy, args.json).await);
    }
    let oblivious = ObliviousClient::new(client, policy);
    match oblivious.gateway().await {
        Ok(g) => eprintln!(
            "veil proxy: verified the enclave (image {}, module {}, OHTTP key {}; models: {})",
            g.image,
            g.module_id,
            g.key_config.key_id,
            g.models.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
        // Serve anyway: every request verifies again and is refused (502/503) until the enclave passes.
        Err(e) => {
            eprintln!("veil proxy: WARNING: the enclave does not verify yet ({e}); nothing is forwarded until it does")
        }
    }
    let evidence = veil_client::evidence::evidence_policy(oblivious.policy());
    serve(args, Mode::Attested(oblivious), "attested-key mode", evidence).await
}

async fn kms_mode(args: ProxyArgs, client: Client, policy: Option<ClientPolicy>) -> anyhow::Result<ExitCode> {
    // The digests requests are sealed for: the policy's, or the verified document's.
    let evidence: EvidencePolicy;
    let (models, what) = match &policy {
        Some(p) => {
            let nonce = veil_protocol::random::array::<32>(&veil_protocol::random::SystemRandom::new())
                .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
            let document = match client.attestation(&nonce).await {
                Ok(d) => d,
                Err(e) => return Ok(report(&e)),
            };
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
            match p.verify(&Verifier::new(), &document, now, &nonce, None) {
                Ok((verified, image)) => {
                    if args.check {
                        super::attest::report_and_document(verified.report(), Some(&verified), args.json, false)?;
                        return Ok(ExitCode::SUCCESS);
                    }
                    evidence = veil_client::evidence::evidence_policy(p);
                    (p.models.clone(), format!("image {image}"))
                }
                Err(u) => return Ok(untrusted(&u, args.json)),
            }
        }
        None => {
            eprintln!(
                "veil proxy: WARNING: KMS envelope mode without --policy: the model digests come from whichever \
                 enclave answers this first attestation request (checked against --root only, not against any \
                 image's PCRs); give --policy to pin the images and digests"
            );
            let root = match &args.root {
                None => TrustAnchor::aws_nitro_root_g1(),
                Some(p) => match std::fs::read(p)
                    .map_err(|e| e.to_string())
                    .and_then(|pem| TrustAnchor::from_pem(&pem).map_err(|e| e.to_string()))
                {
                    Ok(r) => r,
                    Err(e) => return usage(format!("--root {}: {e}", p.display())),
                },
            };
            evidence = EvidencePolicy::root_only(root.clone());
            let attestation_policy = veil_client::attested::policy_now(root, Duration::from_secs(args.max_age))?;
            match veil_client::attested::fetch_verified(&client, attestation_policy).await {
                Ok(verified) => {
                    if args.check {
                        super::attest::report_and_document(verified.report(), Some(&verified), args.json, false)?;
                        return Ok(ExitCode::SUCCESS);
                    }
                    let models = verified
                        .commitment()
                        .map(|c| c.models.iter().map(|m| (m.name.clone(), m.sha384)).collect())
                        .unwrap_or_default();
                    (models, format!("module {}", verified.module_id()))
                }
                Err(veil_client::attested::AttestedError::Fetch(e)) => return Ok(report(&e)),
                Err(e) => {
                    eprintln!("veil: {e}; nothing was sent");
                    return Ok(ExitCode::from(EXIT_UNVERIFIED));
                }
            }
        }
    };
    let session = match args.kms.session().await {
        Ok(Some(s)) => s,
        Ok(None) => return usage("--kms-key-id is required for KMS envelope mode"),
        Err(m) => return usage(m),
    };
    eprintln!(
        "veil proxy: KMS envelope mode, {what}; sealing for models: {}",
        models
            .iter()
            .map(|(n, d): (&String, &[u8; 48])| format!("{n} ({}...)", &hex::encode(d)[..16]))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mode = Mode::Kms { client, session: tokio::sync::Mutex::new(session), models };
    serve(args, mode, "KMS envelope mode", evidence).await
}

/// `--check` in attested-key mode: the report of a fresh verification.
async fn check_attested(client: &Client, policy: &ClientPolicy, json: bool) -> ExitCode {
    match verify_gateway_document(client, policy, &Verifier::new()).await {
        Ok((g, verified)) => {
            if let Err(e) = super::attest::report_and_document(verified.report(), Some(&verified), json, false) {
                eprintln!("veil: {e:#}");
                return ExitCode::from(EXIT_FAILED);
            }
            if !json {
                println!("  image       {} (accepted by the policy)", g.image);
                println!(
                    "  ohttp key   id {} (key list SHA-384 {})",
                    g.key_config.key_id,
                    hex::encode(g.key_list_sha384)
                );
                println!("  verified until {}", format_unix_millis(g.valid_until_ms));
            }
            ExitCode::SUCCESS
        }
        Err(ObliviousError::Untrusted(u)) => untrusted(&u, json),
        Err(ObliviousError::Fetch(e)) => report(&e),
        Err(e) => {
            eprintln!("veil: {e}");
            ExitCode::from(EXIT_UNVERIFIED)
        }
    }
}

fn untrusted(u: &veil_client::trust::Untrusted, json: bool) -> ExitCode {
    let list = match u {
        veil_client::trust::Untrusted::Rejected(list) => list.as_slice(),
        _ => &[],
    };
    for (image, rejected) in list {
        if !json {
            println!("Image {image}:");
        }
        let _ = super::attest::report_and_document(&rejected.report, None, json, false);
    }
    eprintln!("veil: the enclave failed the policy, check {}: {u}", u.failed_check());
    ExitCode::from(EXIT_UNVERIFIED)
}

async fn serve(args: ProxyArgs, mode: Mode, what: &str, evidence: EvidencePolicy) -> anyhow::Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VEIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("veil: cannot listen on {}: {e}", args.listen);
            return Ok(ExitCode::from(EXIT_CONNECT));
        }
    };
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        eprintln!(
            "veil proxy: WARNING: listening on {local}, not loopback: anyone who reaches this port sends requests \
             with your policy{}, in clear text to this proxy",
            if matches!(mode, Mode::Kms { .. }) { " and your AWS credentials" } else { "" }
        );
    }
    let loopback_port = (!args.allow_remote_clients).then_some(local.port());
    let mut proxy = Proxy::new(mode, args.max_body_bytes, loopback_port);
    if let Some(dir) = &args.receipts {
        match ReceiptSink::new(dir.clone(), evidence) {
            Ok(sink) => {
                eprintln!("veil proxy: keeping every answer's evidence in {}", dir.display());
                proxy = proxy.with_receipts(Arc::new(sink));
            }
            Err(e) => return usage(format!("--receipts {}: {e}", dir.display())),
        }
    }
    let proxy = Arc::new(proxy);
    eprintln!("veil proxy: serving KServe v2 on http://{local} ({what}, forwarding to {})", args.remote);
    // No Nagle: small answers go out at once, not after the client's delayed ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, proxy.router()).with_graceful_shutdown(shutdown()).await?;
    eprintln!("veil proxy: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C or SIGTERM: stop accepting, finish what is in flight.
async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

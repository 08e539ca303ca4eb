//! `veil infer` and `veil metadata`: talk to a running Veil parent.
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::{EXIT_CONNECT, EXIT_FAILED, EXIT_UNVERIFIED, EXIT_USAGE};
use veil_client::{Client, ClientError};
use veil_protocol::attestation::TrustAnchor;
use veil_protocol::envelope::ModelRef;
use veil_protocol::evidence::verify::{EvidencePolicy, verify_receipt};

/// Largest input file `veil infer` reads.
const MAX_INPUT_BYTES: u64 = 256 << 20;

/// Send one Open Inference Protocol (KServe v2) request and print the response.
#[derive(Debug, Args)]
#[command(after_help = "\
The input is a v2 inference request:
  {\"inputs\": [{\"name\": \"input\", \"shape\": [1, 30], \"datatype\": \"FP32\", \"data\": [...]}]}
Optionally with \"outputs\": [{\"name\": \"probabilities\"}] to choose outputs, and an \"id\".

Two modes:
  --policy FILE    attested-key mode (Oblivious HTTP, RFC 9458): no AWS credentials. A fresh attestation
                   document is verified against the policy (`veil policy new`: root, accepted images'
                   PCRs, models and digests, maximum age), it must commit to the gateway's OHTTP keys,
                   and only then is the request encrypted to that key. The verification is cached until
                   the policy's maximum age.
  --kms-key-id K   KMS envelope mode: the request is sealed under a KMS data key (a key id, ARN,
                   alias/NAME or alias ARN) for the model's SHA-384, so only an enclave that loaded exactly
                   that model can open it. The digest comes from --expect-model-sha384, or else from the
                   enclave's attestation document, fetched with a fresh nonce and verified (chain to
                   --root, default AWS's Nitro root; at most --max-age old) before anything is sent.
Either way the answer says which model digest answered.

Examples:
  veil infer --policy policy.toml --model breast_cancer --input request.json
  veil infer --url http://127.0.0.1:8080 --kms-key-id alias/veil --model breast_cancer --input request.json
  echo '{...}' | veil infer --url http://127.0.0.1:8080 --model iris --input -
  veil infer --model iris --input req.json --expect-model-sha384 $(jq -r .sha384 iris.json)

A request that fails in a way that may succeed again (the parent unreachable, the connection
closed before an answer, 503 or 429) is sent again, sealed afresh, up to --retries times with
exponential backoff, honouring Retry-After; a timeout never is (docs/RELIABILITY.md). Each retry
is said on stderr.

Evidence: --receipt FILE writes the answer's evidence bundle (the enclave's signed receipt, its salt,
and the attestation document certifying the receipt key), checked (with the request and the answer)
before it is written; the model's refusals of an input have one too (in KMS envelope mode over an
empty answer: verify it with --response pointing at an empty file). An auditor
verifies it with `veil receipt verify FILE`, and with --request/--response the plaintexts, which
--output keeps byte for byte (stdout adds a newline, and --pretty reformats).

Errors name who said them: \"the enclave refused the request: ...\" came sealed from the enclave;
\"the parent said, not authenticated by the enclave: ...\" could have been made up by the parent.

Exit codes: 0 answered, 1 refused (by the enclave or the parent), 2 bad input or usage, 3 server
unreachable, 4 the enclave's attestation did not verify or failed the policy (nothing was sent; the
message names the check that failed).")]
pub struct InferArgs {
    /// The parent's URL.
    #[arg(long, env = "VEIL_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The model to run.
    #[arg(long)]
    pub model: String,
    /// The v2 request as a JSON file, or `-` for standard input.
    #[arg(long)]
    pub input: PathBuf,
    /// Pretty-print the response.
    #[arg(long)]
    pub pretty: bool,
    /// Write the answer's exact bytes to this file instead of printing it (what `veil receipt verify
    /// --response` checks).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Write the answer's evidence bundle here: the enclave's signed receipt, its salt (keep it: with it,
    /// the receipt can be tied to your plaintexts) and the attestation document certifying the key.
    #[arg(long)]
    pub receipt: Option<PathBuf>,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Retries of a request that failed in a way that may succeed again (the parent unreachable, 503 or
    /// 429; never a timeout), each sealed afresh, with exponential backoff and `Retry-After` honoured
    /// (docs/RELIABILITY.md). 0: none.
    #[arg(long, default_value_t = veil_client::RetryPolicy::default().max_retries)]
    pub retries: u32,
    /// The SHA-384 (96 hex digits) of the model the request is for. Without it, the digest is read from
    /// the enclave's verified attestation document.
    #[arg(long, value_parser = sha384_arg)]
    pub expect_model_sha384: Option<[u8; 48]>,
    /// The root the enclave's attestation must chain to (PEM; default: AWS's Nitro Enclaves Root-G1). Off
    /// hardware: the mock root `veil dev` prints (and exports as VEIL_ATTESTATION_ROOT).
    #[arg(long, env = "VEIL_ATTESTATION_ROOT")]
    pub root: Option<PathBuf>,
    /// Oldest attestation document accepted, in seconds.
    #[arg(long, default_value_t = 300)]
    pub max_age: u64,
    /// Attested-key mode: the client policy (`veil policy new`) the enclave must satisfy. The KMS options
    /// are then not used.
    #[arg(long, env = "VEIL_POLICY")]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub kms: KmsArgs,
}

pub fn sha384_arg(s: &str) -> Result<[u8; 48], String> {
    let bytes = hex::decode(s.trim()).map_err(|e| format!("not hex: {e}"))?;
    bytes.try_into().map_err(|_| "a SHA-384 is 96 hex digits".to_owned())
}

/// KMS envelope options: with `--kms-key-id`, the request is sealed so only an attested enclave opens it.
#[derive(Debug, Clone, Args)]
pub struct KmsArgs {
    /// Seal the request under a data key of this KMS key: key id, key ARN, alias/NAME or alias ARN (an
    /// alias name resolves in the caller's account; from another account than the enclave's, give an
    /// ARN). Required: a Veil enclave accepts only sealed requests.
    #[arg(long, env = "VEIL_KMS_KEY_ID")]
    pub kms_key_id: Option<String>,
    /// KMS region (default: AWS_REGION).
    #[arg(long, env = "VEIL_KMS_REGION")]
    pub kms_region: Option<String>,
    /// KMS endpoint URL, to override the regional one (e.g. the mock KMS of `veil dev`).
    #[arg(long, env = "VEIL_KMS_ENDPOINT")]
    pub kms_endpoint: Option<String>,
    /// A CA certificate (PEM) to trust for the KMS endpoint (the mock KMS's; real KMS needs none).
    #[arg(long, env = "VEIL_KMS_CA")]
    pub kms_ca: Option<PathBuf>,
    /// KMS encryption context pair KEY=VALUE, bound into the data key (repeatable).
    #[arg(long = "context", value_parser = context_pair)]
    pub context: Vec<(String, String)>,
}

fn context_pair(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected KEY=VALUE")?;
    if k.is_empty() {
        return Err("empty context key".into());
    }
    Ok((k.to_owned(), v.to_owned()))
}

impl KmsArgs {
    /// A KMS session, when a key id is given.
    pub async fn session(&self) -> Result<Option<veil_client::kms::Session>, String> {
        Ok(self.kms_client().await?.and_then(|kms| self.session_with(kms)))
    }

    /// A session under the key id, with this SDK client (shared by many sessions).
    pub fn session_with(&self, kms: aws_sdk_kms::Client) -> Option<veil_client::kms::Session> {
        let key_id = self.kms_key_id.as_ref()?;
        let context = self.context.iter().cloned().collect();
        Some(veil_client::kms::Session::new(kms, key_id, context, veil_client::kms::SessionLimits::default()))
    }

    /// The KMS SDK client these options name, when a key id is given.
    pub async fn kms_client(&self) -> Result<Option<aws_sdk_kms::Client>, String> {
        if self.kms_key_id.is_none() {
            return Ok(None);
        }
        let ca_pem = match &self.kms_ca {
            Some(p) => Some(std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?),
            None => None,
        };
        let config = veil_client::kms::KmsConfig {
            region: self.kms_region.clone(),
            endpoint_url: self.kms_endpoint.clone(),
            ca_pem,
            static_credentials: None,
        };
        Ok(Some(veil_client::kms::kms_client(&config).await.map_err(|e| e.to_string())?))
    }
}

/// Print a model's metadata: its inputs and outputs, names, datatypes and shapes.
#[derive(Debug, Args)]
pub struct MetadataArgs {
    /// The parent's URL.
    #[arg(long, env = "VEIL_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The model.
    pub model: String,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Reports a client error on stderr and picks the exit code.
pub fn report(e: &ClientError) -> ExitCode {
    eprintln!("veil: {e}");
    if let ClientError::Unauthenticated { status, .. } = e
        && status.is_server_error()
    {
        eprintln!("veil: (if the enclave is restarting or busy, try again shortly)");
    }
    if e.is_connection() {
        ExitCode::from(EXIT_CONNECT)
    } else if matches!(e, ClientError::InvalidUrl { .. }) {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

fn read_input(path: &PathBuf) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .take(MAX_INPUT_BYTES + 1)
            .read_to_end(&mut body)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
    } else {
        let f = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        f.take(MAX_INPUT_BYTES + 1)
            .read_to_end(&mut body)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    }
    if body.len() as u64 > MAX_INPUT_BYTES {
        return Err(format!("{} is larger than {MAX_INPUT_BYTES} bytes", path.display()));
    }
    Ok(body)
}

/// Reads a v2 request (a file, or `-` for standard input) and checks it here, so that a typo is reported
/// before anything leaves this machine. `Err(code)`: said why on stderr.
pub fn read_request(path: &PathBuf) -> Result<Vec<u8>, ExitCode> {
    let body = read_input(path).map_err(|m| {
        eprintln!("veil: {m}");
        ExitCode::from(EXIT_USAGE)
    })?;
    if let Err(e) = veil_protocol::v2::parse_request(&body)
        .and_then(|r| r.inputs.iter().try_for_each(|i| veil_protocol::v2::check_input(i).map(|_| ())))
    {
        eprintln!("veil: {}: {e}", path.display());
        return Err(ExitCode::from(EXIT_USAGE));
    }
    Ok(body)
}

/// Runs `veil infer`.
pub fn run_infer(args: InferArgs) -> anyhow::Result<ExitCode> {
    let body = match read_request(&args.input) {
        Ok(b) => b,
        Err(code) => return Ok(code),
    };
    let client = match Client::new(&args.url) {
        Ok(c) => c
            .with_timeout(Duration::from_secs(args.timeout))
            .with_retries(veil_client::RetryPolicy::default().with_max_retries(args.retries)),
        Err(e) => return Ok(report(&e)),
    };
    if let Some(policy) = &args.policy {
        return run_attested_key(&args, policy, client, &body);
    }
    if args.kms.kms_key_id.is_none() {
        eprintln!(
            "veil: --kms-key-id (or VEIL_KMS_KEY_ID) is required: the enclave accepts only requests sealed under \
             a KMS data key (`veil dev` prints the settings for its mock KMS)"
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let rt = runtime()?;
    rt.block_on(async {
        let sha384 =
            match kms_model_digest(&client, &args.model, args.expect_model_sha384, args.root.as_deref(), args.max_age)
                .await?
            {
                Ok(d) => d,
                Err(code) => return Ok(code),
            };
        let mut session = match args.kms.session().await {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(ExitCode::from(EXIT_USAGE)),
            Err(m) => {
                eprintln!("veil: {m}");
                return Ok(ExitCode::from(EXIT_USAGE));
            }
        };
        let model = ModelRef { name: args.model.clone(), sha384 };
        match client.infer_observed(&mut session, &model, &body, &mut say_retry).await {
            Ok(answer) => {
                emit(answer.body(), &args)?;
                eprintln!(
                    "veil: answered by model {:?}, SHA-384 {} (sealed: authenticated by the enclave)",
                    model.name,
                    hex::encode(answer.model_sha384())
                );
                let policy = EvidencePolicy::root_only(anchor(args.root.as_deref())?);
                Ok(save_receipt(&args, &client, answer.receipt(), &policy, &body, answer.body()).await)
            }
            Err(e) => {
                // The model refused the input: the refusal has its receipt too (over an empty answer).
                if let ClientError::Enclave { receipt: Some(receipt), .. } = &e
                    && args.receipt.is_some()
                {
                    let policy = EvidencePolicy::root_only(anchor(args.root.as_deref())?);
                    save_receipt(&args, &client, Some(receipt), &policy, &body, &[]).await;
                }
                Ok(report(&e))
            }
        }
    })
}

/// The model digest KMS envelope mode seals for: `expected` when given, else the one the enclave's
/// attestation document commits to, fetched with a fresh nonce and verified (chain to `root`, default AWS's
/// Nitro root; at most `max_age_secs` old). `Err(code)`: said why on stderr, nothing was sent.
pub async fn kms_model_digest(
    client: &Client,
    model: &str,
    expected: Option<[u8; 48]>,
    root: Option<&std::path::Path>,
    max_age_secs: u64,
) -> anyhow::Result<Result<[u8; 48], ExitCode>> {
    if let Some(d) = expected {
        return Ok(Ok(d));
    }
    let policy = veil_client::attested::policy_now(anchor(root)?, Duration::from_secs(max_age_secs))?;
    let verified = match veil_client::attested::fetch_verified(client, policy).await {
        Ok(d) => d,
        Err(veil_client::attested::AttestedError::Fetch(e)) => return Ok(Err(report(&e))),
        Err(e) => {
            eprintln!("veil: {e}; nothing was sent");
            return Ok(Err(ExitCode::from(EXIT_UNVERIFIED)));
        }
    };
    Ok(veil_client::attested::model_digest(&verified, model).map_err(|e| {
        eprintln!("veil: {e}; nothing was sent");
        ExitCode::from(EXIT_UNVERIFIED)
    }))
}

/// The root attestation documents must chain to: `--root`'s PEM, or AWS's Nitro root.
/// The root attestation documents must chain to: `root` (PEM) if given, else AWS's Nitro root.
pub(super) fn anchor(root: Option<&std::path::Path>) -> anyhow::Result<TrustAnchor> {
    Ok(match root {
        None => TrustAnchor::aws_nitro_root_g1(),
        Some(p) => {
            let pem = std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read --root {}: {e}", p.display()))?;
            TrustAnchor::from_pem(&pem).map_err(|e| anyhow::anyhow!("--root {}: {e}", p.display()))?
        }
    })
}

/// Reads a client policy (attested-key mode), warning when it trusts a mock root. `Err(code)`: said why.
pub fn load_policy(path: &std::path::Path) -> Result<veil_client::trust::ClientPolicy, ExitCode> {
    let policy = veil_client::trust::ClientPolicy::load(path).map_err(|e| {
        eprintln!("veil: {e}");
        ExitCode::from(EXIT_USAGE)
    })?;
    if policy.mock_root {
        eprintln!("veil: WARNING: the policy trusts a MOCK attestation root (development only)");
    }
    Ok(policy)
}

/// Reports why the gateway of attested-key mode could not be verified (nothing was sent), and its exit code.
pub fn unverified_gateway(e: veil_client::oblivious::ObliviousError) -> ExitCode {
    use veil_client::oblivious::ObliviousError;
    match e {
        ObliviousError::Fetch(e) => report(&e),
        ObliviousError::Untrusted(u) => {
            eprintln!("veil: the enclave failed the policy, check {}: {u}; nothing was sent", u.failed_check());
            ExitCode::from(EXIT_UNVERIFIED)
        }
        e => {
            eprintln!("veil: {e}; nothing was sent");
            ExitCode::from(EXIT_UNVERIFIED)
        }
    }
}

/// `veil infer --policy`: attested-key mode.
fn run_attested_key(
    args: &InferArgs,
    policy: &std::path::Path,
    client: Client,
    body: &[u8],
) -> anyhow::Result<ExitCode> {
    use veil_client::oblivious::{ObliviousClient, ObliviousError};
    let policy = match load_policy(policy) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let oblivious = ObliviousClient::new(client, policy);
    runtime()?.block_on(async {
        let gateway = match oblivious.gateway().await {
            Ok(g) => g,
            Err(e) => return Ok(unverified_gateway(e)),
        };
        match oblivious.infer_observed(&args.model, body, &mut say_retry).await {
            Ok(r) if r.status == 200 => {
                emit(&r.body, args)?;
                eprintln!(
                    "veil: answered by model {:?}, SHA-384 {} (attested-key mode: image {}, OHTTP key {})",
                    args.model,
                    r.model_sha384().map(hex::encode).unwrap_or_default(),
                    gateway.image,
                    gateway.key_config.key_id
                );
                let evidence = veil_client::evidence::evidence_policy(oblivious.policy());
                Ok(save_receipt(args, oblivious.client(), r.receipt.as_ref(), &evidence, body, &r.body).await)
            }
            Ok(r) => {
                // The model refused the input: the refusal has its receipt too, when the model ran.
                if args.receipt.is_some() && r.receipt.is_some() {
                    let evidence = veil_client::evidence::evidence_policy(oblivious.policy());
                    save_receipt(args, oblivious.client(), r.receipt.as_ref(), &evidence, body, &r.body).await;
                }
                eprintln!(
                    "veil: the enclave answered HTTP {}: {} (inside the encryption: authenticated by the enclave)",
                    r.status,
                    r.error_message().unwrap_or_else(|| String::from_utf8_lossy(&r.body).into_owned())
                );
                Ok(ExitCode::from(EXIT_FAILED))
            }
            Err(ObliviousError::Fetch(e)) => Ok(report(&e)),
            Err(e @ ObliviousError::ModelNotInPolicy { .. }) => {
                eprintln!("veil: {e}; nothing was sent");
                Ok(ExitCode::from(EXIT_USAGE))
            }
            Err(e) => {
                eprintln!("veil: {e}");
                Ok(ExitCode::from(EXIT_FAILED))
            }
        }
    })
}

/// Says on stderr that a request is sent again, and why.
pub fn say_retry(r: veil_client::retry::Retried<'_>) {
    eprintln!("veil: retry {} in {:.1} s, after: {}", r.retry, r.delay.as_secs_f64(), r.reason);
}

/// Runs `veil metadata`.
pub fn run_metadata(args: MetadataArgs) -> anyhow::Result<ExitCode> {
    let client = match Client::new(&args.url) {
        Ok(c) => c,
        Err(e) => return Ok(report(&e)),
    };
    match runtime()?.block_on(client.model_metadata(&args.model)) {
        Ok(body) => {
            print_json(&body, true)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(report(&e)),
    }
}

/// The answer: to `--output` byte for byte, or printed.
fn emit(body: &[u8], args: &InferArgs) -> anyhow::Result<()> {
    match &args.output {
        Some(path) => std::fs::write(path, body).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display())),
        None => print_json(body, args.pretty),
    }
}

/// With `--receipt`: the answer's evidence bundle, verified, written. Exit code 1 when the enclave sent no
/// receipt or the evidence does not verify (the answer itself was already printed).
async fn save_receipt(
    args: &InferArgs,
    client: &Client,
    receipt: Option<&veil_protocol::envelope::AnswerReceipt>,
    policy: &EvidencePolicy,
    request: &[u8],
    answer: &[u8],
) -> ExitCode {
    let Some(path) = &args.receipt else { return ExitCode::SUCCESS };
    let Some(receipt) = receipt else {
        eprintln!(
            "veil: the enclave sent no receipt (its configuration turns receipts off); nothing written to {}",
            path.display()
        );
        return ExitCode::from(EXIT_FAILED);
    };
    let bundle = match veil_client::evidence::BundleMaker::new().bundle(client, receipt).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("veil: could not gather the evidence: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // With both plaintexts at hand: the receipt must name exactly them.
    let verifier = veil_protocol::attestation::Verifier::new();
    let report = verify_receipt(&bundle, Some(request), Some(answer), policy, &verifier, now);
    if !report.verified {
        eprintln!(
            "veil: the answer's evidence does not verify ({}); nothing written",
            report.error.unwrap_or_default()
        );
        return ExitCode::from(EXIT_FAILED);
    }
    if let Err(e) = veil_client::evidence::write_bundle(path, &bundle) {
        eprintln!("veil: cannot write {}: {e}", path.display());
        return ExitCode::from(EXIT_USAGE);
    }
    let seq = report.receipt.map(|r| r.seq).unwrap_or_default();
    eprintln!("veil: evidence (receipt seq {seq}, verified) written to {}", path.display());
    ExitCode::SUCCESS
}

fn print_json(body: &[u8], pretty: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if pretty {
        let v: serde_json::Value = serde_json::from_slice(body)?;
        serde_json::to_writer_pretty(&mut out, &v)?;
    } else {
        out.write_all(body)?;
    }
    out.write_all(b"\n")?;
    Ok(())
}

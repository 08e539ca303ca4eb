//! `veil attest verify` and `veil attest show`: attestation documents for auditors and clients.
//!
//! Verification is `veil_protocol::attestation` (pure, no clock); this module reads files or asks a server,
//! reads the wall clock (unless `--at` says otherwise), and turns the report into text or JSON.
//!
//! Exit codes (shared by the CLI): 0 every check passed (or, for `show`, the document decoded);
//! 1 a check failed, or the server answered with an error; 2 bad usage or undecodable input;
//! 3 the server could not be reached.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::json;
use veil_protocol::attestation::{
    CheckStatus, Policy, Report, TrustAnchor, UnverifiedDocument, UserDataCommitment, VerifiedDocument, verify,
};
use veil_protocol::measurements::Measurements;
use veil_protocol::time::{format_unix_millis, format_unix_seconds, parse_rfc3339};

use super::{EXIT_CONNECT, EXIT_FAILED, EXIT_OK};

/// Largest input file read (a document is at most 16 KiB; base64 makes that about 22 KiB).
const MAX_INPUT_LEN: u64 = 64 * 1024;
/// Nonce size when `--url` is used without `--nonce`.
const NONCE_LEN: usize = 32;

/// Verify or show Nitro attestation documents.
#[derive(Debug, Subcommand)]
pub enum AttestCommand {
    /// Verify an attestation document: signature, certificate chain to the AWS root, PCRs, nonce, age.
    ///
    /// Every check is named in the output; the command exits 0 only if all of them pass, 1 if one
    /// fails (the output says which, and why: e.g. "PCR0: expected X, got Y"), 2 if the input is
    /// unusable, 3 if the server cannot be reached.
    ///
    /// The document comes from a FILE (raw CBOR, base64 or hex, detected; `-` reads standard input) or
    /// from a running server (--url), which is asked for a fresh document carrying a nonce (yours with
    /// --nonce, or 32 random bytes): the nonce check then proves the document is fresh.
    #[command(after_help = VERIFY_EXAMPLES)]
    Verify(VerifyArgs),

    /// Print an attestation document for people: module id, time, PCRs, certificates, and the decoded
    /// user_data commitment (models, keys, configuration digest).
    ///
    /// Nothing printed is verified: anyone can write any of it. Use `veil attest verify` to check it.
    #[command(after_help = SHOW_EXAMPLES)]
    Show(ShowArgs),
}

const VERIFY_EXAMPLES: &str = "\
Examples:
  # A live server, with PCRs from the release's nitro-cli measurements (nonce generated for you):
  veil attest verify --url http://10.0.0.5:8080 --measurements measurements.json \\
      --expect-model iris=<SHA-384 of the decrypted model>

  # A saved document, at the time it was made (documents' leaf certificates live about 3 hours):
  veil attest verify doc.cbor --at document --expect-pcr 0=f4d48b81...8b

  # A document at a given time, from a mock NSM (veil dev), as JSON for scripts:
  veil attest verify doc.b64 --root .veil/mock-root.pem --at 2025-01-06T16:10:00Z --json

--at accepts RFC 3339 (2025-01-06T16:07:05Z), @UNIX_SECONDS, or 'document' (the document's own timestamp).
--max-age accepts 500ms, 30s, 5m, 2h (or plain seconds).";

const SHOW_EXAMPLES: &str = "\
Examples:
  veil attest show doc.cbor
  veil attest show --url http://127.0.0.1:8080 --json";

/// Where the document comes from.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Document file: raw CBOR, base64 or hex (detected). `-` reads standard input.
    #[arg(value_name = "FILE", required_unless_present = "url", conflicts_with = "url")]
    pub file: Option<PathBuf>,

    /// Ask a running Veil parent (http://HOST:PORT) for a fresh document instead of reading a file.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,

    /// Nonce, hex (at most 1024 bytes). With --url it is sent to the server (default: 32 random
    /// bytes) and then required in the document; with a file it is required in the document.
    #[arg(long, value_name = "HEX")]
    pub nonce: Option<String>,
}

/// Arguments of `veil attest verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Require PCR N to equal HEX (48 bytes, 96 hex digits). Repeatable.
    #[arg(long = "expect-pcr", value_name = "N=HEX")]
    pub expect_pcr: Vec<String>,

    /// Require the PCRs of a measurements file, as printed by `nitro-cli build-enclave` or
    /// `veil eif pcrs`: {"Measurements": {"HashAlgorithm": ..., "PCR0": HEX, "PCR1": ..., "PCR2": ...}}.
    #[arg(long, value_name = "FILE")]
    pub measurements: Option<PathBuf>,

    /// Require the user_data commitment to name model NAME with this SHA-384 (96 hex digits), as
    /// `veil metadata` and the release notes print it. Repeatable.
    #[arg(long = "expect-model", value_name = "NAME=SHA384")]
    pub expect_model: Vec<String>,

    /// Require the user_data commitment's runtime configuration digest (SHA-384, hex).
    #[arg(long = "expect-config", value_name = "SHA384")]
    pub expect_config: Option<String>,

    /// Verify at this time instead of now: RFC 3339, @UNIX_SECONDS, or `document`.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,

    /// Refuse documents older than this at the verification time (e.g. 5m).
    #[arg(long = "max-age", value_name = "DURATION")]
    pub max_age: Option<String>,

    /// Accept documents of enclaves run in debug mode (PCR0/1/2 all zero). Their memory is readable
    /// by the host: never send secrets to them.
    #[arg(long)]
    pub allow_debug: bool,

    /// Trust this root certificate (PEM) instead of the AWS Nitro Enclaves Root-G1, e.g. the mock root
    /// that `veil dev` writes. Documents are then trusted only as far as that root is.
    #[arg(long, value_name = "PEM")]
    pub root: Option<PathBuf>,

    /// Print the report as JSON (every check with its status and detail, and the document).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `veil attest show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs an `attest` subcommand and returns the process exit code.
pub fn run(cmd: AttestCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AttestCommand::Verify(args) => run_verify(args),
        AttestCommand::Show(args) => run_show(args),
    }
}

/// The document's bytes, and the nonce to require (if any).
enum Fetched {
    Document {
        bytes: Vec<u8>,
        nonce: Option<Vec<u8>>,
    },
    /// Already reported; exit with this code.
    Exit(ExitCode),
}

fn fetch(source: &SourceArgs) -> anyhow::Result<Fetched> {
    let nonce = source
        .nonce
        .as_deref()
        .map(|h| {
            let n = hex::decode(h.trim()).map_err(|e| anyhow!("--nonce {h:?} is not hex: {e}"))?;
            if n.len() > 1024 {
                bail!("--nonce is {} bytes; the NSM accepts at most 1024", n.len());
            }
            Ok(n)
        })
        .transpose()?;
    match (&source.file, &source.url) {
        (Some(path), None) => Ok(Fetched::Document { bytes: decode_input(&read_input(path)?)?, nonce }),
        (None, Some(url)) => {
            let nonce = match nonce {
                Some(n) => n,
                None => random_nonce()?,
            };
            let client = crate::Client::new(url).map_err(|e| anyhow!("{e}"))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            match runtime.block_on(client.attestation(&nonce)) {
                Ok(body) => {
                    let bytes = decode_input(&body).with_context(|| format!("the answer of {url}"))?;
                    Ok(Fetched::Document { bytes, nonce: Some(nonce) })
                }
                Err(e) if e.is_connection() => {
                    eprintln!(
                        "veil attest: {e}\nIs the server running? Check the URL (http://HOST:PORT of the Veil parent)."
                    );
                    Ok(Fetched::Exit(ExitCode::from(EXIT_CONNECT)))
                }
                Err(e) => {
                    eprintln!("veil attest: {e}");
                    Ok(Fetched::Exit(ExitCode::from(EXIT_FAILED)))
                }
            }
        }
        _ => bail!("give either a document FILE or --url, not both"),
    }
}

fn random_nonce() -> anyhow::Result<Vec<u8>> {
    use ring::rand::SecureRandom;
    let mut n = vec![0u8; NONCE_LEN];
    ring::rand::SystemRandom::new().fill(&mut n).map_err(|_| anyhow!("the system random number generator failed"))?;
    Ok(n)
}

fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if path == Path::new("-") {
        std::io::stdin().take(MAX_INPUT_LEN + 1).read_to_end(&mut buf).context("reading standard input")?;
    } else {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        file.take(MAX_INPUT_LEN + 1)
            .read_to_end(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    if buf.len() as u64 > MAX_INPUT_LEN {
        bail!("{} is larger than {MAX_INPUT_LEN} bytes: not an attestation document", path.display());
    }
    Ok(buf)
}

/// Raw CBOR (starts with a 4-element array or tag 18), or else hex, or else base64 (standard or URL-safe,
/// padded or not), ignoring whitespace.
fn decode_input(input: &[u8]) -> anyhow::Result<Vec<u8>> {
    match input.first() {
        None => bail!("the input is empty"),
        Some(0x84 | 0x9f | 0xd2) => return Ok(input.to_vec()),
        _ => {}
    }
    let text: String = std::str::from_utf8(input)
        .map_err(|_| anyhow!("the input is neither CBOR (COSE_Sign1), hex nor base64"))?
        .split_whitespace()
        .collect();
    if text.len().is_multiple_of(2)
        && text.bytes().all(|b| b.is_ascii_hexdigit())
        && let Ok(b) = hex::decode(&text)
    {
        return Ok(b);
    }
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        if let Ok(b) = engine.decode(&text) {
            return Ok(b);
        }
    }
    bail!("the input is neither CBOR (COSE_Sign1), hex nor base64")
}

/// `--at`: a time, or the document's own timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Millis(u64),
    Document,
}

fn parse_at(s: &str) -> anyhow::Result<At> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("document") || s.eq_ignore_ascii_case("doc") {
        return Ok(At::Document);
    }
    if let Some(secs) = s.strip_prefix('@') {
        let (whole, frac) = secs.split_once('.').unwrap_or((secs, ""));
        let whole: u64 = whole.parse().map_err(|_| anyhow!("--at {s:?}: expected @UNIX_SECONDS"))?;
        let ms = parse_fraction_ms(frac).ok_or_else(|| anyhow!("--at {s:?}: bad fraction"))?;
        return whole
            .checked_mul(1000)
            .and_then(|v| v.checked_add(ms))
            .map(At::Millis)
            .ok_or_else(|| anyhow!("--at {s:?} is out of range"));
    }
    let since_epoch = parse_rfc3339(s).map_err(|_| {
        anyhow!("--at {s:?}: expected RFC 3339 (2025-01-06T16:07:05Z or with +01:00), @UNIX_SECONDS, or 'document'")
    })?;
    u64::try_from(since_epoch.as_millis()).map(At::Millis).map_err(|_| anyhow!("--at {s:?} is out of range"))
}

fn parse_fraction_ms(frac: &str) -> Option<u64> {
    if frac.is_empty() {
        return Some(0);
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 9 {
        return None;
    }
    let padded = format!("{frac:0<3}");
    padded.get(..3)?.parse().ok()
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| anyhow!("--max-age {s:?}: expected a number with a unit, e.g. 30s, 5m, 2h"))?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" | "min" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        other => bail!("--max-age {s:?}: unknown unit {other:?} (use ms, s, m, h or d)"),
    };
    ms.map(Duration::from_millis).ok_or_else(|| anyhow!("--max-age {s:?} is too large"))
}

fn parse_expect_pcr(s: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let (i, v) = s.split_once('=').ok_or_else(|| anyhow!("--expect-pcr {s:?}: expected N=HEX, e.g. 0=f4d48b81..."))?;
    let i: u16 = i
        .trim()
        .trim_start_matches("PCR")
        .parse()
        .map_err(|_| anyhow!("--expect-pcr {s:?}: {i:?} is not a PCR number"))?;
    let v = hex::decode(v.trim()).map_err(|e| anyhow!("--expect-pcr {s:?}: the value is not hex: {e}"))?;
    if v.len() != 48 {
        bail!("--expect-pcr {s:?}: the value is {} bytes; a SHA-384 PCR is 48 bytes (96 hex digits)", v.len());
    }
    Ok((i, v))
}

/// nitro-cli's measurements JSON, from a file; errors name the file.
pub(crate) fn read_measurements(path: &Path) -> anyhow::Result<Measurements> {
    let bytes = read_input(path)?;
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))?;
    Measurements::from_json(&json).map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn now_ms() -> anyhow::Result<u64> {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).context("the system clock is before 1970")?;
    u64::try_from(d.as_millis()).context("the system clock is out of range")
}

fn run_verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    // Validate every flag before any network call.
    let mut expected: BTreeMap<u16, Vec<u8>> = BTreeMap::new();
    if let Some(path) = &args.measurements {
        expected = read_measurements(path)?.into_pcrs().into_iter().map(|(i, v)| (i, v.to_vec())).collect();
    }
    for s in &args.expect_pcr {
        let (i, v) = parse_expect_pcr(s)?;
        if let Some(prev) = expected.get(&i)
            && *prev != v
        {
            bail!("--expect-pcr {i}=... contradicts PCR{i} of the measurements file ({})", hex::encode(prev));
        }
        expected.insert(i, v);
    }
    let mut models = Vec::new();
    for s in &args.expect_model {
        let (name, digest) =
            s.split_once('=').ok_or_else(|| anyhow!("--expect-model {s:?}: expected NAME=SHA384HEX"))?;
        let digest =
            hex::decode(digest.trim()).map_err(|e| anyhow!("--expect-model {s:?}: the digest is not hex: {e}"))?;
        if digest.len() != 48 {
            bail!("--expect-model {s:?}: the digest is {} bytes; SHA-384 is 48 bytes (96 hex digits)", digest.len());
        }
        models.push((name.trim().to_owned(), digest));
    }
    let config = args
        .expect_config
        .as_deref()
        .map(|h| match hex::decode(h.trim()) {
            Ok(d) if d.len() == 48 => Ok(d),
            Ok(d) => Err(anyhow!("--expect-config: {} bytes; SHA-384 is 48 bytes (96 hex digits)", d.len())),
            Err(e) => Err(anyhow!("--expect-config {h:?} is not hex: {e}")),
        })
        .transpose()?;
    let at = args.at.as_deref().map(parse_at).transpose()?;
    let max_age = args.max_age.as_deref().map(parse_duration).transpose()?;
    let root = match &args.root {
        Some(path) => {
            let pem = read_input(path)?;
            let root = TrustAnchor::from_pem(&pem).with_context(|| format!("--root {}", path.display()))?;
            if !root.is_aws_root_g1() {
                eprintln!(
                    "veil attest: trusting a root that is not AWS's: {} (SHA-256 {})",
                    clean(root.name()),
                    hex::encode(root.sha256())
                );
            }
            Some(root)
        }
        None => None,
    };

    let (bytes, nonce) = match fetch(&args.source)? {
        Fetched::Document { bytes, nonce } => (bytes, nonce),
        Fetched::Exit(code) => return Ok(code),
    };
    let at_ms = match at {
        Some(At::Millis(ms)) => ms,
        Some(At::Document) => match UnverifiedDocument::parse(&bytes) {
            Ok(doc) => doc.unverified_claims().timestamp_ms,
            // Undecodable: the time does not matter, the decode check fails.
            Err(_) => 0,
        },
        None => now_ms()?,
    };

    let mut policy = Policy::new(at_ms).allow_debug(args.allow_debug);
    if let Some(root) = root {
        policy = policy.with_root(root);
    }
    for (i, v) in &expected {
        policy = policy.expect_pcr(*i, v).map_err(|e| anyhow!("{e}"))?;
    }
    if let Some(n) = &nonce {
        policy = policy.expect_nonce(n).map_err(|e| anyhow!("{e}"))?;
    }
    if let Some(d) = max_age {
        policy = policy.with_max_age(d);
    }
    for (name, digest) in &models {
        policy = policy.expect_model(name, digest).map_err(|e| anyhow!("--expect-model: {e}"))?;
    }
    if let Some(c) = &config {
        policy = policy.expect_config_sha384(c).map_err(|e| anyhow!("--expect-config: {e}"))?;
    }

    let outcome = verify(&bytes, &policy);
    let (report, doc) = match &outcome {
        Ok(doc) => (doc.report(), Some(doc)),
        Err(rejected) => (&*rejected.report, None),
    };
    if args.json {
        let out = json!({
            "verified": report.verified,
            "report": report,
            "document": doc.map(document_json),
        });
        println!("{}", serde_json::to_string_pretty(&out).context("serializing the report")?);
    } else {
        print_report(report, at == Some(At::Document));
        if let Some(doc) = doc {
            print_verified(doc);
        }
    }
    match outcome {
        Ok(_) => Ok(ExitCode::from(EXIT_OK)),
        Err(rejected) => {
            eprintln!("veil attest: verification FAILED: {}", clean(&rejected.error.to_string()));
            if matches!(rejected.error, veil_protocol::attestation::VerifyError::UntrustedRoot { .. })
                && args.root.is_none()
            {
                eprintln!(
                    "(Documents of a mock NSM, as `veil dev` runs, verify only with --root naming its mock-root.pem.)"
                );
            }
            Ok(ExitCode::from(EXIT_FAILED))
        }
    }
}

fn print_report(report: &Report, at_document: bool) {
    println!(
        "Verification at {}{} against {} (SHA-256 {})",
        report.at,
        if at_document { " (the document's own timestamp)" } else { "" },
        clean(&report.root),
        report.root_sha256
    );
    for c in &report.checks {
        let tag = match c.status {
            CheckStatus::Passed => "PASS",
            CheckStatus::Failed => "FAIL",
            CheckStatus::Skipped => "skip",
        };
        println!("  {tag}  {:<11} {}", c.name, clean(&c.detail));
    }
    println!("{}", if report.verified { "VERIFIED: every check passed" } else { "NOT VERIFIED" });
}

fn print_verified(doc: &VerifiedDocument) {
    println!("  module      {}", doc.module_id());
    println!("  timestamp   {}", format_unix_millis(doc.timestamp_ms()));
    for i in [0u8, 1, 2, 3, 4, 8] {
        if let Some(v) = doc.pcr(i) {
            println!("  PCR{i:<2}       {}", hex::encode(v));
        }
    }
    if let Some(ud) = doc.user_data() {
        print_user_data(ud);
    }
}

fn print_user_data(ud: &[u8]) {
    match UserDataCommitment::decode(ud) {
        Ok(c) => {
            println!("  user_data   Veil commitment v1:");
            println!("    x25519                    {}", c.x25519.map(hex::encode).unwrap_or_else(|| "none".into()));
            println!(
                "    recipient RSA SPKI SHA-384 {}",
                c.recipient_rsa_spki_sha384.map(hex::encode).unwrap_or_else(|| "none".into())
            );
            for m in &c.models {
                println!("    model {:<20} SHA-384 {}", m.name, hex::encode(m.sha384));
            }
            println!("    config SHA-384            {}", hex::encode(c.config_sha384));
        }
        Err(_) => println!("  user_data   {} bytes: {}", ud.len(), hex::encode(ud)),
    }
}

fn document_json(doc: &VerifiedDocument) -> serde_json::Value {
    let c = doc.claims();
    json!({
        "module_id": c.module_id,
        "timestamp_ms": c.timestamp_ms,
        "timestamp": format_unix_millis(c.timestamp_ms),
        "debug_mode": doc.is_debug(),
        "pcrs": c.pcrs.iter().map(|(i, v)| (i.to_string(), hex::encode(v))).collect::<BTreeMap<_, _>>(),
        "public_key": c.public_key.as_ref().map(hex::encode),
        "user_data": c.user_data.as_ref().map(hex::encode),
        "commitment": c.user_data.as_deref().and_then(|u| UserDataCommitment::decode(u).ok()).map(|c| c.to_json()),
        "nonce": c.nonce.as_ref().map(hex::encode),
        "certificates": doc.certificates(),
    })
}

fn run_show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let bytes = match fetch(&args.source)? {
        Fetched::Document { bytes, .. } => bytes,
        Fetched::Exit(code) => return Ok(code),
    };
    let doc = UnverifiedDocument::parse(&bytes).map_err(|e| anyhow!("cannot decode the document: {e}"))?;
    let c = doc.unverified_claims();
    let certs = doc.certificates();
    if args.json {
        let out = json!({
            "verified": false,
            "note": "decoded only, NOT verified: use `veil attest verify`",
            "tagged": doc.is_tagged(),
            "module_id": c.module_id,
            "digest": c.digest,
            "timestamp_ms": c.timestamp_ms,
            "timestamp": format_unix_millis(c.timestamp_ms),
            "debug_mode": doc.is_debug(),
            "pcrs": c.pcrs.iter().map(|(i, v)| (i.to_string(), hex::encode(v))).collect::<BTreeMap<_, _>>(),
            "certificates": certs.iter().map(|r| match r {
                Ok(s) => serde_json::to_value(s).unwrap_or(serde_json::Value::Null),
                Err(e) => json!({"error": e.to_string()}),
            }).collect::<Vec<_>>(),
            "public_key": c.public_key.as_ref().map(hex::encode),
            "user_data": c.user_data.as_ref().map(hex::encode),
            "commitment": c.user_data.as_deref().and_then(|u| UserDataCommitment::decode(u).ok()).map(|c| c.to_json()),
            "nonce": c.nonce.as_ref().map(hex::encode),
        });
        println!("{}", serde_json::to_string_pretty(&out).context("serializing")?);
        return Ok(ExitCode::from(EXIT_OK));
    }
    println!(
        "Attestation document ({} bytes, COSE_Sign1 {}) -- NOT VERIFIED: check it with `veil attest verify`",
        bytes.len(),
        if doc.is_tagged() { "tagged" } else { "untagged" }
    );
    println!("  module      {}", c.module_id);
    println!("  timestamp   {} ({} ms)", format_unix_millis(c.timestamp_ms), c.timestamp_ms);
    println!("  digest      {}", c.digest);
    println!("  debug mode  {}", if doc.is_debug() { "YES (PCR0, PCR1, PCR2 are zero)" } else { "no" });
    println!("  PCRs");
    for (i, v) in &c.pcrs {
        println!("    {i:>2}  {}", hex::encode(v));
    }
    println!("  certificates (root first)");
    for (i, cert) in certs.iter().enumerate() {
        match cert {
            Ok(s) => {
                println!("    [{i}] {:<15} {}", s.role, clean(&s.subject));
                println!(
                    "        valid {} to {}   SHA-256 {}",
                    format_unix_seconds(s.not_before),
                    format_unix_seconds(s.not_after),
                    s.sha256
                );
            }
            Err(e) => println!("    [{i}] unparsable: {}", clean(&e.to_string())),
        }
    }
    let opt = |name: &str, v: &Option<Vec<u8>>| match v {
        None => println!("  {name:<11} none"),
        Some(b) => println!("  {name:<11} {} bytes: {}", b.len(), hex::encode(b)),
    };
    opt("public_key", &c.public_key);
    match &c.user_data {
        Some(ud) => print_user_data(ud),
        None => println!("  user_data   none"),
    }
    opt("nonce", &c.nonce);
    Ok(ExitCode::from(EXIT_OK))
}

/// Escapes control characters in text that came from a document, so that it cannot drive the terminal.
fn clean(s: &str) -> String {
    s.chars().flat_map(|c| if c.is_control() { c.escape_debug().collect::<Vec<_>>() } else { vec![c] }).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_times() {
        assert_eq!(parse_at("2025-01-06T16:07:05.472Z").unwrap(), At::Millis(1_736_179_625_472));
        assert_eq!(parse_at("2025-01-06T17:07:05.472+01:00").unwrap(), At::Millis(1_736_179_625_472));
        assert_eq!(parse_at("@1736179625.472").unwrap(), At::Millis(1_736_179_625_472));
        assert_eq!(parse_at("@1736179625").unwrap(), At::Millis(1_736_179_625_000));
        assert_eq!(parse_at("document").unwrap(), At::Document);
        assert!(parse_at("yesterday").is_err());
        assert!(parse_at("2025-13-06T16:07:05Z").is_err());
        assert!(parse_at("2025-01-06T16:07:05").is_err());
    }

    #[test]
    fn parses_durations_and_pcrs() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert!(parse_duration("5 parsecs").is_err());
        let (i, v) = parse_expect_pcr(&format!("PCR8={}", "ab".repeat(48))).unwrap();
        assert_eq!((i, v.len()), (8, 48));
        assert!(parse_expect_pcr("0=abcd").unwrap_err().to_string().contains("48 bytes"));
        assert!(parse_expect_pcr("zero=ab").is_err());
    }

    #[test]
    fn detects_input_encodings() {
        let raw = vec![0x84, 0x44, 0xa1, 0x01];
        assert_eq!(decode_input(&raw).unwrap(), raw);
        assert_eq!(decode_input(b"8444a101\n").unwrap(), raw);
        assert_eq!(decode_input(b"hEShAQ==").unwrap(), raw);
        assert_eq!(decode_input(b"hEShAQ").unwrap(), raw);
        assert!(decode_input(b"").is_err());
        assert!(decode_input(b"not a document!").is_err());
    }

    #[test]
    fn cleans_control_characters() {
        assert_eq!(clean("CN=a\u{1b}[31mb"), "CN=a\\u{1b}[31mb");
    }
}

//! `veil receipt verify|prove|show` and `veil audit verify`: evidence for auditors, offline.
//!
//! Verification is `veil_protocol::evidence::verify` (pure); this module reads the files, picks the policy
//! (`--policy`, or a `--root` with nothing pinned), and prints the report. Exit codes: 0 verified, 1 the
//! evidence is wrong (the output names the check, with expected and actual values), 2 the evidence could
//! not be read (a missing file, a file that is not a bundle or an audit log), 3 (`prove`) the parent could
//! not be reached.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use veil_client::evidence::{evidence_policy, read_bounded, read_bundle, verify_audit_log, write_bundle};
use veil_client::trust::ClientPolicy;
use veil_protocol::attestation::{CheckStatus, Verifier};
use veil_protocol::evidence::claims::ReceiptClaims;
use veil_protocol::evidence::verify::{AuditReport, EvidencePolicy, ReceiptReport, verify_receipt};
use veil_protocol::time::now_unix;

use super::attest::clean;
use super::{EXIT_CONNECT, EXIT_FAILED, EXIT_OK, EXIT_USAGE};

/// Largest plaintext file read for `--request` / `--response`.
const MAX_PLAINTEXT: u64 = 1 << 30;

/// Check and show evidence bundles: a receipt, its salt and the attestation document certifying its key.
#[derive(Debug, Subcommand)]
pub enum ReceiptCommand {
    /// Verify an evidence bundle offline: the attestation document at its own timestamp (evidence does not
    /// expire with the document's three-hour leaf certificate), its PCRs against the policy, the receipt
    /// key it commits to, the receipt's signature, its model, and (given them) the plaintexts and the
    /// inclusion proof.
    #[command(after_help = RECEIPT_VERIFY_HELP)]
    Verify(ReceiptVerifyArgs),
    /// Add to a bundle the proof that its receipt is in the parent's audit log, under a tree head the
    /// enclave signed (GET /v1/audit/proof); the bundle must verify first.
    #[command(after_help = PROVE_HELP)]
    Prove(ProveArgs),
    /// Print a bundle's receipt for people. Nothing printed is verified: use `veil receipt verify`.
    Show(ShowArgs),
}

/// Check audit logs (`veil-parent --audit-log DIR`).
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify an audit log offline: every receipt and tree head against the attestation document of its
    /// boot (at the document's own time, against the policy), each boot's hash chain, that every signed
    /// tree head is the Merkle root of exactly the receipts before it, and that no sequence number is
    /// missing, repeated or out of order. Prints a summary: requests per model digest and per PCR set,
    /// statuses, the time span, and the boots.
    #[command(after_help = AUDIT_VERIFY_HELP)]
    Verify(AuditVerifyArgs),
}

const RECEIPT_VERIFY_HELP: &str = "\
Examples:
  # With the client policy (root, accepted images' PCRs, models):
  veil receipt verify answer.receipt.json --policy policy.toml
  # And the plaintexts: the exact bytes sent and received (veil infer --output writes the answer's):
  veil receipt verify answer.receipt.json --policy policy.toml --request request.json --response answer.json
  # Evidence of `veil dev` (mock root), as JSON:
  veil receipt verify answer.receipt.json --any-image --root /tmp/veil-dev-*/mock-nsm/mock-root.pem --json

Say which images you accept: --policy FILE, or --any-image to check only the chain to the root (AWS's,
or --root), the signatures and the plaintexts, with the PCRs and models printed, not pinned.

Exit codes: 0 verified; 1 the evidence is wrong (the check is named, with expected and actual values);
2 the evidence could not be read.";

const PROVE_HELP: &str = "\
Examples:
  veil receipt prove answer.receipt.json --url http://127.0.0.1:8080 --policy policy.toml
  veil receipt prove answer.receipt.json --url http://127.0.0.1:8080 --any-image --root mock-root.pem --wait 15

The enclave signs a tree head every few seconds; --wait retries until one covers the receipt.
Exit codes: 0 the proof verified and was added; 1 it did not verify; 2 unreadable input; 3 unreachable.";

const AUDIT_VERIFY_HELP: &str = "\
Examples:
  veil audit verify /var/lib/veil/audit --policy policy.toml
  veil audit verify /tmp/veil-dev-*/audit --policy /tmp/veil-dev-*/client-policy.toml --json

Findings name the boot, the file and byte offset, and the sequence numbers: a gap (receipts missing),
a reordering, a duplicate, a broken chain, a tree head that does not match the log or is out of place.
Receipts after the last tree head are a note when there are as few as an honest enclave leaves (it
signs one every --tree-head-every receipts and --tree-head-secs seconds: give its configuration's
values), and a finding when there are more (tree heads were removed).
Exit codes: 0 verified; 1 a finding; 2 the directory is not a readable audit log.";

/// What evidence is checked against.
#[derive(Debug, Args)]
pub struct TrustArgs {
    /// The client policy (`veil policy new`): the root, the accepted images' PCRs, the models.
    #[arg(long, env = "VEIL_POLICY")]
    pub policy: Option<PathBuf>,
    /// Without a policy: trust this root (PEM) instead of AWS's Nitro root (the mock root of `veil dev`).
    /// Not used with --policy, which names its root.
    #[arg(long, env = "VEIL_ATTESTATION_ROOT")]
    pub root: Option<PathBuf>,
    /// Without a policy: accept evidence from any enclave image (the chain to the root, the signatures and
    /// the log's integrity are checked; the PCRs and models only printed). Anyone can run an enclave of
    /// their own making under AWS's root, so this proves little on its own: give --policy.
    #[arg(long, conflicts_with = "policy")]
    pub any_image: bool,
    /// Accept evidence from debug-mode enclaves (all-zero PCRs: they prove nothing about the code).
    #[arg(long)]
    pub allow_debug: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl TrustArgs {
    fn policy(&self) -> Result<(EvidencePolicy, bool), String> {
        if self.policy.is_none() && !self.any_image {
            return Err("say which enclave images you accept: --policy FILE (`veil policy new`: the PCRs, \
                        models and root), or --any-image to check only the chain to the root (--root, default \
                        AWS's), the signatures and the log"
                .into());
        }
        let mut policy = match &self.policy {
            Some(p) => {
                let client = ClientPolicy::load(p).map_err(|e| e.to_string())?;
                if client.mock_root {
                    eprintln!("veil: WARNING: the policy trusts a MOCK attestation root (development only)");
                }
                evidence_policy(&client)
            }
            None => EvidencePolicy::root_only(super::infer::anchor(self.root.as_deref()).map_err(|e| e.to_string())?),
        };
        policy.allow_debug |= self.allow_debug;
        Ok((policy, self.policy.is_some()))
    }
}

#[derive(Debug, Args)]
pub struct ReceiptVerifyArgs {
    /// The evidence bundle (`veil infer --receipt`, `veil proxy --receipts`).
    pub bundle: PathBuf,
    /// The request as sent (exact bytes): checked against the receipt's salted request digest.
    #[arg(long)]
    pub request: Option<PathBuf>,
    /// The answer as received (exact bytes): checked against the receipt's salted response digest.
    #[arg(long)]
    pub response: Option<PathBuf>,
    #[command(flatten)]
    pub trust: TrustArgs,
}

#[derive(Debug, Args)]
pub struct ProveArgs {
    /// The evidence bundle; the proof is added to it (written atomically).
    pub bundle: PathBuf,
    /// The parent's URL.
    #[arg(long, env = "VEIL_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Seconds to keep asking while no signed tree head covers the receipt yet.
    #[arg(long, default_value_t = 0)]
    pub wait: u64,
    #[command(flatten)]
    pub trust: TrustArgs,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The evidence bundle.
    pub bundle: PathBuf,
}

#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    /// The audit log directory (`veil-parent --audit-log DIR`; `veil dev --json` names it `audit_log`).
    pub dir: PathBuf,
    /// The enclave configuration's `[audit] tree_head_every` (receipts between tree heads).
    #[arg(long, default_value_t = 1000)]
    pub tree_head_every: u64,
    /// The enclave configuration's `[audit] tree_head_secs`.
    #[arg(long, default_value_t = 10)]
    pub tree_head_secs: u64,
    #[command(flatten)]
    pub trust: TrustArgs,
}

fn unreadable(m: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("veil: {m}");
    Ok(ExitCode::from(EXIT_USAGE))
}

/// Runs `veil receipt ...`.
pub fn run_receipt(command: ReceiptCommand) -> anyhow::Result<ExitCode> {
    match command {
        ReceiptCommand::Verify(a) => receipt_verify(&a),
        ReceiptCommand::Prove(a) => prove(&a),
        ReceiptCommand::Show(a) => show(&a),
    }
}

/// Runs `veil audit ...`.
pub fn run_audit(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify(a) => audit_verify(&a),
    }
}

fn receipt_verify(a: &ReceiptVerifyArgs) -> anyhow::Result<ExitCode> {
    let (policy, pinned) = match a.trust.policy() {
        Ok(p) => p,
        Err(m) => return unreadable(m),
    };
    let bundle = match read_bundle(&a.bundle) {
        Ok(b) => b,
        Err(m) => return unreadable(m),
    };
    let read = |p: &Option<PathBuf>| p.as_deref().map(|p| read_bounded(p, MAX_PLAINTEXT)).transpose();
    let (request, response) = match (read(&a.request), read(&a.response)) {
        (Ok(q), Ok(r)) => (q, r),
        (Err(m), _) | (_, Err(m)) => return unreadable(m),
    };
    let report =
        verify_receipt(&bundle, request.as_deref(), response.as_deref(), &policy, &Verifier::new(), now_unix());
    print_receipt_report(&report, &a.bundle, pinned, a.trust.json)?;
    Ok(ExitCode::from(if report.verified { EXIT_OK } else { EXIT_FAILED }))
}

/// A report as JSON, with whether a policy pinned the images (`policy`).
fn print_json(report: &impl serde::Serialize, pinned: bool) -> anyhow::Result<()> {
    let mut v = serde_json::to_value(report).context("serializing the report")?;
    if let Some(o) = v.as_object_mut() {
        o.insert("policy".into(), serde_json::json!(pinned));
    }
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn print_receipt_report(report: &ReceiptReport, file: &Path, pinned: bool, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(report, pinned);
    }
    println!("Evidence {}", file.display());
    for c in &report.checks {
        let tag = match c.status {
            CheckStatus::Passed => "PASS",
            CheckStatus::Failed => "FAIL",
            CheckStatus::Skipped => "skip",
        };
        println!("  {tag}  {:<18} {}", c.name, clean(&c.detail));
    }
    if let Some(r) = &report.receipt {
        println!("  receipt  seq {} at {} by {}", r.seq, r.issued_at_text, clean(&r.issuer));
        println!("           model {} SHA-384 {}", clean(&r.model), r.model_sha384);
        println!("           {} mode", r.mode.label());
    }
    if let Some(k) = &report.certified_by {
        for (i, v) in &k.pcrs {
            if [0u8, 1, 2, 3, 4, 8].contains(i) {
                println!("           PCR{i:<2} {v}");
            }
        }
    }
    if report.verified {
        println!("VERIFIED: every check passed");
        if !pinned {
            println!("WARNING: --any-image: the PCRs and the model were not checked against images you accept");
        }
    } else {
        println!("NOT VERIFIED: {}", report.error.as_deref().map(clean).unwrap_or_default());
    }
    Ok(())
}

fn prove(a: &ProveArgs) -> anyhow::Result<ExitCode> {
    let (policy, pinned) = match a.trust.policy() {
        Ok(p) => p,
        Err(m) => return unreadable(m),
    };
    let mut bundle = match read_bundle(&a.bundle) {
        Ok(b) => b,
        Err(m) => return unreadable(m),
    };
    let client = match veil_client::Client::new(&a.url) {
        Ok(c) => c,
        Err(e) => return Ok(super::infer::report(&e)),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(a.wait);
    let inclusion = loop {
        match rt.block_on(veil_client::evidence::fetch_inclusion(&client, &bundle)) {
            Ok(i) => break i,
            Err(veil_client::evidence::EvidenceError::Fetch(e))
                if e.status() == Some(hyper::StatusCode::SERVICE_UNAVAILABLE)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            Err(veil_client::evidence::EvidenceError::Fetch(e)) => {
                eprintln!("veil: the parent gave no proof: {e}");
                return Ok(ExitCode::from(if e.is_connection() { EXIT_CONNECT } else { EXIT_FAILED }));
            }
            Err(e) => {
                eprintln!("veil: {e}");
                return Ok(ExitCode::from(EXIT_FAILED));
            }
        }
    };
    bundle.inclusion = Some(inclusion);
    let report = verify_receipt(&bundle, None, None, &policy, &Verifier::new(), now_unix());
    if !report.verified {
        print_receipt_report(&report, &a.bundle, pinned, a.trust.json)?;
        eprintln!("veil: the bundle with the parent's proof does not verify; the file is unchanged");
        return Ok(ExitCode::from(EXIT_FAILED));
    }
    write_bundle(&a.bundle, &bundle).with_context(|| format!("writing {}", a.bundle.display()))?;
    let detail = report.checks.iter().find(|c| c.name == "inclusion").map(|c| c.detail.clone()).unwrap_or_default();
    eprintln!("veil: proof added to {}: {detail}", a.bundle.display());
    Ok(ExitCode::from(EXIT_OK))
}

fn show(a: &ShowArgs) -> anyhow::Result<ExitCode> {
    let bundle = match read_bundle(&a.bundle) {
        Ok(b) => b,
        Err(m) => return unreadable(m),
    };
    match ReceiptClaims::peek(&bundle.receipt) {
        Ok(c) => {
            println!("Receipt (NOT VERIFIED: `veil receipt verify` checks it)");
            println!("  issuer              {}", clean(&c.issuer));
            println!(
                "  issued at           {}",
                veil_protocol::time::format_unix_seconds(c.issued_at.min(i64::MAX as u64) as i64)
            );
            println!("  sequence            {} (boot {})", c.seq, hex::encode(c.boot_prefix));
            println!("  model               {} SHA-384 {}", clean(&c.model), hex::encode(c.model_sha384));
            println!("  mode                {}", c.mode.label());
            println!("  request digest      {}", hex::encode(c.request_digest));
            println!("  response digest     {}", hex::encode(c.response_digest));
            println!("  previous            {}", hex::encode(c.prev));
            println!("  attestation SHA-384 {}", hex::encode(c.attestation_sha384));
            println!("  inclusion proof     {}", if bundle.inclusion.is_some() { "yes" } else { "no" });
            Ok(ExitCode::from(EXIT_OK))
        }
        // Nothing was verified, so nothing failed: the receipt could not be read (2).
        Err(e) => unreadable(format!("{}: the receipt does not decode: {e}", a.bundle.display())),
    }
}

fn audit_verify(a: &AuditVerifyArgs) -> anyhow::Result<ExitCode> {
    let (policy, pinned) = match a.trust.policy() {
        Ok(p) => p,
        Err(m) => return unreadable(m),
    };
    let report = match verify_audit_log(&a.dir, &policy, now_unix(), (a.tree_head_every, a.tree_head_secs)) {
        Ok(r) => r,
        Err(m) => return unreadable(m),
    };
    print_audit_report(&report, &a.dir, pinned, a.trust.json)?;
    Ok(ExitCode::from(if report.verified { EXIT_OK } else { EXIT_FAILED }))
}

fn print_audit_report(report: &AuditReport, dir: &Path, pinned: bool, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(report, pinned);
    }
    let s = &report.summary;
    println!("Audit log {}", clean(&dir.display().to_string()));
    println!(
        "  {} receipts, {} signed tree heads, {} boots, from {} to {}",
        s.receipts,
        s.tree_heads,
        s.boots.len(),
        s.first.as_deref().unwrap_or("-"),
        s.last.as_deref().unwrap_or("-")
    );
    for b in &s.boots {
        println!(
            "  boot {}: module {}, attested {}, {} receipts, {} tree heads, {} covered{}",
            clean(&b.boot),
            b.module_id.as_deref().map(clean).unwrap_or_else(|| "?".into()),
            b.attested_at.as_deref().unwrap_or("?"),
            b.receipts,
            b.tree_heads,
            b.covered,
            b.image.as_deref().map(|i| format!(", image {}", clean(i))).unwrap_or_default()
        );
    }
    println!("  requests per model:");
    for (m, n) in &s.per_model {
        println!("    {n:>10}  {}", clean(m));
    }
    println!("  requests per PCR set (PCR0 PCR1 PCR2):");
    for (p, n) in &s.per_pcrs {
        println!("    {n:>10}  {p}");
    }
    let modes: Vec<String> = s.per_mode.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!("  modes: {}", modes.join(", "));
    for f in &report.findings {
        println!(
            "  {}  {:<10} {}{}{}",
            if f.error { "FAIL" } else { "note" },
            f.kind,
            f.seq.map(|s| format!("seq {s}: ")).unwrap_or_default(),
            clean(&f.message),
            f.location
                .as_deref()
                .map(|l| format!(" ({}, {})", clean(&f.boot), clean(l)))
                .unwrap_or_else(|| format!(" ({})", clean(&f.boot)))
        );
    }
    if report.verified {
        println!("VERIFIED: every receipt, chain and tree head checks");
        if !pinned {
            println!("WARNING: --any-image: the PCRs and models were not checked against images you accept");
        }
    } else {
        let errors = report.findings.iter().filter(|f| f.error).count();
        println!("NOT VERIFIED: {errors} finding(s)");
    }
    Ok(())
}

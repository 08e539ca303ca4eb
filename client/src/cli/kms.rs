//! `veil kms`: KMS set-up for Veil, starting with the key policy that releases data keys only to an
//! attested enclave.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// KMS set-up for Veil.
#[derive(Debug, Subcommand)]
pub enum KmsCommand {
    /// Write a key policy that lets clients create data keys and lets only the attested enclave decrypt.
    Policy(PolicyArgs),
}

/// Write a key policy for a Veil key.
///
/// The policy has three statements: key administration for the admin principal (without kms:Decrypt, so
/// no administrator can read data), kms:GenerateDataKey for the clients, and kms:Decrypt for the enclave's
/// role only when KMS receives an attestation document whose PCRs match the measurements
/// (kms:RecipientAttestation:ImageSha384 = PCR0, and PCR1, PCR2, and PCR8 when the image is signed). A
/// fourth statement denies kms:Decrypt to everyone when no attestation document is presented, so the
/// parent instance's role cannot decrypt on its own even if IAM grants it.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  veil eif pcrs veil-enclave.eif > measurements.json     # or nitro-cli build-enclave's output
  veil kms policy --measurements measurements.json --account 111122223333 \\
      --enclave-role arn:aws:iam::111122223333:role/veil-parent \\
      --client arn:aws:iam::444455556666:role/hospital-inference > policy.json
  aws kms put-key-policy --key-id KEY --policy-name default --policy file://policy.json

When the PCRs change (a new release), add the new values beside the old ones with --also-measurements
during the roll-out, then drop the old ones (docs/OPERATING.md).")]
pub struct PolicyArgs {
    /// The enclave image's measurements: nitro-cli build-enclave's JSON, or `veil eif pcrs`.
    #[arg(long)]
    pub measurements: PathBuf,
    /// Another image's measurements also allowed (for roll-outs; repeatable).
    #[arg(long = "also-measurements")]
    pub also: Vec<PathBuf>,
    /// The AWS account that owns the key.
    #[arg(long)]
    pub account: String,
    /// The IAM role the enclave's KMS calls are signed with (the parent instance's role).
    #[arg(long)]
    pub enclave_role: String,
    /// A principal allowed to create data keys (repeatable): the clients' roles.
    #[arg(long = "client", required = true)]
    pub clients: Vec<String>,
    /// Who administers the key (default: the account root).
    #[arg(long)]
    pub admin: Option<String>,
    /// Which PCRs to pin (default: 0, 1, 2, and 8 when present in the measurements).
    #[arg(long, value_delimiter = ',')]
    pub pcrs: Vec<u16>,
    /// Allow debug-mode measurements (all-zero PCRs): anyone could then run a debug enclave and get keys.
    #[arg(long)]
    pub allow_debug: bool,
    /// Write the policy here instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// Runs a `kms` subcommand.
pub fn run(cmd: KmsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KmsCommand::Policy(args) => {
            let policy = build_policy(&args)?;
            let text = serde_json::to_string_pretty(&policy)? + "\n";
            match &args.output {
                Some(path) => std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?,
                None => std::io::stdout().lock().write_all(text.as_bytes())?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn condition_key(pcr: u16) -> String {
    // AWS names PCR0 "ImageSha384"; the other PCRs by number.
    if pcr == 0 { "kms:RecipientAttestation:ImageSha384".into() } else { format!("kms:RecipientAttestation:PCR{pcr}") }
}

/// Builds the policy document.
pub fn build_policy(args: &PolicyArgs) -> anyhow::Result<Value> {
    if !(args.account.len() == 12 && args.account.bytes().all(|b| b.is_ascii_digit())) {
        bail!("--account {:?}: an AWS account id is 12 digits", args.account);
    }
    for arn in std::iter::once(&args.enclave_role).chain(&args.clients).chain(args.admin.iter()) {
        if !arn.starts_with("arn:aws") {
            bail!("{arn:?} is not an ARN (arn:aws:iam::ACCOUNT:role/NAME)");
        }
    }
    let mut images: Vec<BTreeMap<u16, [u8; 48]>> = Vec::new();
    for path in std::iter::once(&args.measurements).chain(&args.also) {
        images.push(super::attest::read_measurements(path)?.into_pcrs());
    }
    let mut statements = vec![
        json!({
            "Sid": "KeyAdministrationWithoutDecrypt",
            "Effect": "Allow",
            "Principal": {"AWS": args.admin.clone().unwrap_or_else(|| format!("arn:aws:iam::{}:root", args.account))},
            "Action": ["kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*",
                       "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource",
                       "kms:UntagResource", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion"],
            "Resource": "*"
        }),
        json!({
            "Sid": "ClientsCreateDataKeys",
            "Effect": "Allow",
            "Principal": {"AWS": args.clients},
            "Action": ["kms:GenerateDataKey", "kms:DescribeKey"],
            "Resource": "*"
        }),
    ];
    for (n, pcrs) in images.iter().enumerate() {
        let wanted: Vec<u16> = if args.pcrs.is_empty() {
            [0u16, 1, 2, 8].into_iter().filter(|i| pcrs.contains_key(i)).collect()
        } else {
            args.pcrs.clone()
        };
        if !wanted.contains(&0) {
            bail!("PCR0 (the image) must be pinned: without it any image would get the key");
        }
        let mut conditions = serde_json::Map::new();
        for i in &wanted {
            let value = pcrs.get(i).with_context(|| format!("PCR{i} is not in the measurements"))?;
            if value.iter().all(|b| *b == 0) && !args.allow_debug {
                bail!("PCR{i} is all zeros (a debug-mode measurement): refusing without --allow-debug");
            }
            conditions.insert(condition_key(*i), Value::String(hex::encode(value)));
        }
        statements.push(json!({
            "Sid": if n == 0 { "AttestedEnclaveDecrypts".to_owned() } else { format!("AttestedEnclaveDecrypts{n}") },
            "Effect": "Allow",
            "Principal": {"AWS": args.enclave_role},
            "Action": "kms:Decrypt",
            "Resource": "*",
            "Condition": {"StringEqualsIgnoreCase": conditions}
        }));
    }
    statements.push(json!({
        "Sid": "NoDecryptWithoutAttestation",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "kms:Decrypt",
        "Resource": "*",
        "Condition": {"Null": {"kms:RecipientAttestation:ImageSha384": "true"}}
    }));
    Ok(json!({"Version": "2012-10-17", "Id": "veil-enclave-key", "Statement": statements}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurements(dir: &std::path::Path, name: &str, pcr0: &str, with8: bool) -> PathBuf {
        let mut m = serde_json::Map::new();
        m.insert("HashAlgorithm".into(), json!("Sha384 { ... }"));
        m.insert("PCR0".into(), json!(pcr0.repeat(48)));
        m.insert("PCR1".into(), json!("11".repeat(48)));
        m.insert("PCR2".into(), json!("22".repeat(48)));
        if with8 {
            m.insert("PCR8".into(), json!("88".repeat(48)));
        }
        let p = dir.join(name);
        std::fs::write(&p, serde_json::to_vec(&json!({"Measurements": m})).unwrap()).unwrap();
        p
    }

    fn args(m: PathBuf) -> PolicyArgs {
        PolicyArgs {
            measurements: m,
            also: vec![],
            account: "111122223333".into(),
            enclave_role: "arn:aws:iam::111122223333:role/veil-parent".into(),
            clients: vec!["arn:aws:iam::444455556666:role/client".into()],
            admin: None,
            pcrs: vec![],
            allow_debug: false,
            output: None,
        }
    }

    #[test]
    fn pins_every_measured_pcr_and_denies_unattested_decrypt() {
        let dir = tempfile::tempdir().unwrap();
        let p = build_policy(&args(measurements(dir.path(), "m.json", "ab", true))).unwrap();
        let st = p["Statement"].as_array().unwrap();
        let decrypt = st.iter().find(|s| s["Sid"] == "AttestedEnclaveDecrypts").unwrap();
        let cond = &decrypt["Condition"]["StringEqualsIgnoreCase"];
        assert_eq!(cond["kms:RecipientAttestation:ImageSha384"], "ab".repeat(48));
        assert_eq!(cond["kms:RecipientAttestation:PCR1"], "11".repeat(48));
        assert_eq!(cond["kms:RecipientAttestation:PCR2"], "22".repeat(48));
        assert_eq!(cond["kms:RecipientAttestation:PCR8"], "88".repeat(48));
        assert_eq!(decrypt["Principal"]["AWS"], "arn:aws:iam::111122223333:role/veil-parent");
        // Nobody else is ever allowed kms:Decrypt.
        for s in st.iter().filter(|s| s["Effect"] == "Allow" && s["Sid"] != "AttestedEnclaveDecrypts") {
            let actions = s["Action"].to_string();
            assert!(!actions.contains("Decrypt") && !actions.contains("kms:*"), "{s}");
        }
        let deny = st.iter().find(|s| s["Effect"] == "Deny").unwrap();
        assert_eq!(deny["Condition"]["Null"]["kms:RecipientAttestation:ImageSha384"], "true");
    }

    #[test]
    fn roll_outs_allow_two_images_and_bad_inputs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(measurements(dir.path(), "old.json", "ab", false));
        a.also = vec![measurements(dir.path(), "new.json", "cd", false)];
        let p = build_policy(&a).unwrap();
        let n = p["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["Action"] == "kms:Decrypt" && s["Effect"] == "Allow")
            .count();
        assert_eq!(n, 2);

        let debug = args(measurements(dir.path(), "debug.json", "00", false));
        assert!(build_policy(&debug).unwrap_err().to_string().contains("debug-mode"));
        let mut bad = args(measurements(dir.path(), "m.json", "ab", false));
        bad.account = "12".into();
        assert!(build_policy(&bad).unwrap_err().to_string().contains("12 digits"));
        let mut no0 = args(measurements(dir.path(), "m.json", "ab", false));
        no0.pcrs = vec![1, 2];
        assert!(build_policy(&no0).unwrap_err().to_string().contains("PCR0"));
        let mut missing = args(measurements(dir.path(), "m.json", "ab", false));
        missing.pcrs = vec![0, 8];
        assert!(build_policy(&missing).unwrap_err().to_string().contains("PCR8 is not in the measurements"));
    }
}

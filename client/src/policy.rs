//! Key policies for Veil's KMS keys: the policy that lets clients create data keys and releases them only
//! to an attested enclave (`veil kms policy`, and the stack builder). docs/OPERATING.md, "The key policy",
//! explains each statement.
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};

/// Write a key policy for a Veil key.
///
/// Statements: key administration for the admin principal, listed action by action (no kms:Decrypt, no
/// kms:CreateGrant, no re-encryption: no administrator can read data or delegate the right to);
/// kms:GenerateDataKey for the clients; kms:Decrypt for the enclave's role only when KMS receives an
/// attestation document whose PCRs equal the measurements (kms:RecipientAttestation:ImageSha384 = PCR0,
/// PCR1, PCR2, and PCR8 when the image is signed). Explicit Deny statements, which nothing else in KMS
/// can override, then refuse kms:Decrypt to everyone whose document is absent or does not match one
/// accepted set of PCRs in full, and refuse kms:CreateGrant and kms:ReEncrypt* to everyone, so that
/// neither a grant nor an IAM policy can open another way to the data keys. docs/OPERATING.md explains
/// each statement.
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

/// nitro-cli's measurements JSON (or `veil eif pcrs`'s), from a file; errors name the file.
pub fn read_measurements(path: &std::path::Path) -> anyhow::Result<veil_protocol::measurements::Measurements> {
    use std::io::Read;
    const MAX: u64 = 64 * 1024;
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    file.take(MAX + 1).read_to_end(&mut bytes).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > MAX {
        bail!("{} is larger than {MAX} bytes: not a measurements file", path.display());
    }
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))?;
    veil_protocol::measurements::Measurements::from_json(&json).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn condition_key(pcr: u16) -> String {
    // AWS names PCR0 "ImageSha384"; the other PCRs by number.
    if pcr == 0 { "kms:RecipientAttestation:ImageSha384".into() } else { format!("kms:RecipientAttestation:PCR{pcr}") }
}

/// What the key administrator may do: everything about the key's life, nothing with its material.
/// Listed one by one, because the wildcards hide dangerous actions (`kms:Create*` includes
/// `kms:CreateGrant`, `kms:*` includes `kms:Decrypt` and `kms:ReEncryptFrom`).
pub const ADMIN_ACTIONS: &[&str] = &[
    "kms:DescribeKey",
    "kms:GetKeyPolicy",
    "kms:PutKeyPolicy",
    "kms:ListKeyPolicies",
    "kms:ListGrants",
    "kms:RevokeGrant",
    "kms:CreateAlias",
    "kms:UpdateAlias",
    "kms:DeleteAlias",
    "kms:ListResourceTags",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateKeyDescription",
    "kms:EnableKey",
    "kms:DisableKey",
    "kms:EnableKeyRotation",
    "kms:DisableKeyRotation",
    "kms:GetKeyRotationStatus",
    "kms:RotateKeyOnDemand",
    "kms:ListKeyRotations",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
];

/// Largest key policy KMS stores (32 KiB).
pub const MAX_POLICY_BYTES: usize = 32 * 1024;
/// Most Deny statements the PCR check may take (see [`deny_clauses`]).
const MAX_DENY_CLAUSES: usize = 64;

/// One Deny statement's conditions: condition key → the values the document's value must differ from,
/// all of them ("none of these", IAM's reading of a value list under a negated operator). Every key of
/// the statement must differ for the Deny to apply (IAM ANDs the keys of a condition block).
type Clause = BTreeMap<String, BTreeSet<String>>;

/// The Deny statements that together refuse every document whose PCRs do not equal one accepted set in
/// full.
///
/// "Not set A and not set B" is `(a0 ≠ A0 or a1 ≠ A1 ...) and (a0 ≠ B0 or ...)`. A Deny statement can only
/// AND its conditions, and several Deny statements OR, so the expression is multiplied out: one statement
/// per way of picking one PCR from each set, with the condition that each picked PCR differs from its set's
/// value (PCRs picked twice get both values in one list). One set of k PCRs gives k statements (one per
/// PCR: a single statement listing them all would deny only a document where *every* PCR differs). Two
/// sets give up to k², pruned where a statement is implied by a broader one (as when both releases share
/// PCR1). Per-key lists over all sets ("PCR0 in {A0, B0}, PCR1 in {A1, B1}") would be shorter but would
/// accept PCR0 of one release with PCR2 of the other; this construction does not.
fn deny_clauses(sets: &[Vec<(String, String)>]) -> anyhow::Result<Vec<Clause>> {
    let mut clauses: Vec<Clause> = vec![Clause::new()];
    for set in sets {
        let mut next = Vec::with_capacity(clauses.len() * set.len());
        for clause in &clauses {
            for (key, value) in set {
                let mut c = clause.clone();
                c.entry(key.clone()).or_default().insert(value.clone());
                next.push(c);
            }
        }
        clauses = prune(next);
        if clauses.len() > MAX_DENY_CLAUSES {
            bail!(
                "{} measurement sets need more than {MAX_DENY_CLAUSES} Deny statements to keep their PCRs from being \
                 mixed: accept fewer sets at once (finish one roll-out before starting the next), or pin fewer PCRs \
                 with --pcrs",
                sets.len()
            );
        }
    }
    Ok(clauses)
}

/// Drops duplicates and every clause implied by a broader one: `b` denies whenever `a` does if each of
/// `b`'s keys is in `a` with at least `b`'s values.
fn prune(mut clauses: Vec<Clause>) -> Vec<Clause> {
    clauses.sort();
    clauses.dedup();
    let implied =
        |a: &Clause, b: &Clause| a != b && b.iter().all(|(k, vb)| a.get(k).is_some_and(|va| vb.is_subset(va)));
    let keep: Vec<bool> = clauses.iter().map(|a| !clauses.iter().any(|b| implied(a, b))).collect();
    clauses.into_iter().zip(keep).filter_map(|(c, k)| k.then_some(c)).collect()
}

fn short_name(key: &str) -> String {
    let name = key.trim_start_matches("kms:RecipientAttestation:");
    match name.strip_prefix("PCR") {
        Some(n) => format!("Pcr{n}"),
        None => name.to_owned(),
    }
}

fn check_principal(what: &str, arn: &str, role_only: bool) -> anyhow::Result<()> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = match parts[..] {
        ["arn", "aws", "iam", "", account, resource]
            if account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) =>
        {
            if role_only {
                resource.starts_with("role/") && resource.len() > 5
            } else {
                resource == "root"
                    || (resource.starts_with("role/") || resource.starts_with("user/")) && resource.len() > 5
            }
        }
        _ => false,
    };
    if !ok {
        let shape = if role_only {
            "arn:aws:iam::ACCOUNT:role/NAME"
        } else {
            "arn:aws:iam::ACCOUNT:role/NAME, user/NAME or root"
        };
        bail!("{what} {arn:?} is not an IAM ARN of the form {shape}");
    }
    Ok(())
}

/// Builds the policy document.
pub fn build_policy(args: &PolicyArgs) -> anyhow::Result<Value> {
    if !(args.account.len() == 12 && args.account.bytes().all(|b| b.is_ascii_digit())) {
        bail!("--account {:?}: an AWS account id is 12 digits", args.account);
    }
    check_principal("--enclave-role", &args.enclave_role, true)?;
    for c in &args.clients {
        check_principal("--client", c, false)?;
    }
    if let Some(a) = &args.admin {
        check_principal("--admin", a, false)?;
    }
    if let Some(p) = args.pcrs.iter().find(|p| **p > 31) {
        bail!("--pcrs: PCR{p} does not exist (Nitro PCRs are 0 to 31)");
    }
    let mut images: Vec<BTreeMap<u16, [u8; 48]>> = Vec::new();
    for path in std::iter::once(&args.measurements).chain(&args.also) {
        images.push(read_measurements(path)?.into_pcrs());
    }
    // Each accepted image: the pinned condition keys and their values (lowercase hex, as KMS gives them).
    let mut sets: Vec<Vec<(String, String)>> = Vec::new();
    for pcrs in &images {
        let wanted: Vec<u16> = if args.pcrs.is_empty() {
            [0u16, 1, 2, 8].into_iter().filter(|i| pcrs.contains_key(i)).collect()
        } else {
            args.pcrs.clone()
        };
        if !wanted.contains(&0) {
            bail!("PCR0 (the image) must be pinned: without it any image would get the key");
        }
        let mut set = Vec::new();
        for i in &wanted {
            let value = pcrs.get(i).with_context(|| format!("PCR{i} is not in the measurements"))?;
            if value.iter().all(|b| *b == 0) && !args.allow_debug {
                bail!("PCR{i} is all zeros (a debug-mode measurement): refusing without --allow-debug");
            }
            set.push((condition_key(*i), hex::encode(value)));
        }
        set.sort();
        set.dedup();
        if !sets.contains(&set) {
            sets.push(set);
        }
    }

    let admin = args.admin.clone().unwrap_or_else(|| format!("arn:aws:iam::{}:root", args.account));
    let mut statements = vec![
        json!({
            "Sid": "KeyAdministrationWithoutDecrypt",
            "Effect": "Allow",
            "Principal": {"AWS": admin},
            "Action": ADMIN_ACTIONS,
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
    for (n, set) in sets.iter().enumerate() {
        let conditions: serde_json::Map<String, Value> =
            set.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
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
    let mut names = BTreeSet::new();
    for (n, clause) in deny_clauses(&sets)?.iter().enumerate() {
        let mut sid = match clause.keys().collect::<Vec<_>>()[..] {
            [only] => format!("NoDecryptUnless{}Matches", short_name(only)),
            _ => "NoDecryptUnlessPcrsMatchOneImage".to_owned(),
        };
        if !names.insert(sid.clone()) {
            sid = format!("{sid}{n}");
            names.insert(sid.clone());
        }
        let conditions: serde_json::Map<String, Value> =
            clause.iter().map(|(k, vs)| (k.clone(), json!(vs.iter().collect::<Vec<_>>()))).collect();
        statements.push(json!({
            "Sid": sid,
            "Effect": "Deny",
            "Principal": "*",
            "Action": "kms:Decrypt",
            "Resource": "*",
            "Condition": {"StringNotEqualsIgnoreCase": conditions}
        }));
    }
    statements.push(json!({
        "Sid": "NoGrants",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "kms:CreateGrant",
        "Resource": "*"
    }));
    statements.push(json!({
        "Sid": "NoReEncryption",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "kms:ReEncrypt*",
        "Resource": "*"
    }));
    let policy = json!({"Version": "2012-10-17", "Id": "veil-enclave-key", "Statement": statements});
    let size = serde_json::to_string_pretty(&policy)?.len();
    if size > MAX_POLICY_BYTES {
        bail!(
            "the policy would be {size} bytes, more than the {MAX_POLICY_BYTES} KMS stores: accept fewer measurement \
             sets at once or pin fewer PCRs with --pcrs"
        );
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurements_with(dir: &std::path::Path, name: &str, pcrs: &[(u16, &str)]) -> PathBuf {
        let mut m = serde_json::Map::new();
        m.insert("HashAlgorithm".into(), json!("Sha384 { ... }"));
        for (i, byte) in pcrs {
            m.insert(format!("PCR{i}"), json!(byte.repeat(48)));
        }
        let p = dir.join(name);
        std::fs::write(&p, serde_json::to_vec(&json!({"Measurements": m})).unwrap()).unwrap();
        p
    }

    fn measurements(dir: &std::path::Path, name: &str, pcr0: &str, with8: bool) -> PathBuf {
        let mut pcrs = vec![(0, pcr0), (1, "11"), (2, "22")];
        if with8 {
            pcrs.push((8, "88"));
        }
        measurements_with(dir, name, &pcrs)
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

    fn statements(p: &Value) -> &Vec<Value> {
        p["Statement"].as_array().unwrap()
    }

    fn actions(s: &Value) -> Vec<String> {
        match &s["Action"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
            other => panic!("Action {other}"),
        }
    }

    /// An independent reading of the generated Deny statements for `kms:Decrypt`, as IAM evaluates them:
    /// a statement applies when, for every key of its `StringNotEqualsIgnoreCase` block, the document's
    /// value is absent or differs from every listed value (and `Null` applies when ImageSha384 is absent).
    fn decrypt_denied(policy: &Value, doc: &BTreeMap<String, String>) -> bool {
        statements(policy).iter().filter(|s| s["Effect"] == "Deny" && actions(s).contains(&"kms:Decrypt".into())).any(
            |s| {
                let cond = s["Condition"].as_object().unwrap();
                cond.iter().all(|(op, keys)| {
                    keys.as_object().unwrap().iter().all(|(key, values)| match op.as_str() {
                        "Null" => doc.contains_key(key) != (values == "true"),
                        "StringNotEqualsIgnoreCase" => {
                            let values: Vec<&str> =
                                values.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
                            doc.get(key).is_none_or(|d| values.iter().all(|v| !v.eq_ignore_ascii_case(d)))
                        }
                        other => panic!("unexpected operator {other}"),
                    })
                })
            },
        )
    }

    fn doc(pcrs: &[(u16, &str)]) -> BTreeMap<String, String> {
        pcrs.iter().map(|(i, b)| (condition_key(*i), b.repeat(48))).collect()
    }

    #[test]
    fn pins_every_measured_pcr_and_only_the_enclave_role_may_decrypt() {
        let dir = tempfile::tempdir().unwrap();
        let p = build_policy(&args(measurements(dir.path(), "m.json", "ab", true))).unwrap();
        let st = statements(&p);
        let decrypt = st.iter().find(|s| s["Sid"] == "AttestedEnclaveDecrypts").unwrap();
        let cond = &decrypt["Condition"]["StringEqualsIgnoreCase"];
        assert_eq!(cond["kms:RecipientAttestation:ImageSha384"], "ab".repeat(48));
        assert_eq!(cond["kms:RecipientAttestation:PCR1"], "11".repeat(48));
        assert_eq!(cond["kms:RecipientAttestation:PCR2"], "22".repeat(48));
        assert_eq!(cond["kms:RecipientAttestation:PCR8"], "88".repeat(48));
        assert_eq!(decrypt["Principal"]["AWS"], "arn:aws:iam::111122223333:role/veil-parent");
        // Nobody else is ever allowed kms:Decrypt, by name or by wildcard.
        for s in st.iter().filter(|s| s["Effect"] == "Allow" && s["Sid"] != "AttestedEnclaveDecrypts") {
            for a in actions(s) {
                assert!(!a.contains('*') && !a.contains("Decrypt"), "{s}");
            }
        }
        let null = st.iter().find(|s| s["Sid"] == "NoDecryptWithoutAttestation").unwrap();
        assert_eq!(null["Effect"], "Deny");
        assert_eq!(null["Principal"], "*");
        assert_eq!(null["Condition"]["Null"]["kms:RecipientAttestation:ImageSha384"], "true");
        assert!(serde_json::to_string_pretty(&p).unwrap().len() <= MAX_POLICY_BYTES);
    }

    /// Finding 7: the Deny only checked that *some* document was present (`Null`), so any enclave's
    /// document, a debug one included, escaped it. Now every pinned measurement has its own Deny (one
    /// statement listing them all would apply only when every PCR differs).
    #[test]
    fn finding_7_deny_checks_the_pcrs_not_just_presence() {
        let dir = tempfile::tempdir().unwrap();
        let p = build_policy(&args(measurements(dir.path(), "m.json", "ab", true))).unwrap();
        let pcr_denies: Vec<&Value> = statements(&p)
            .iter()
            .filter(|s| s["Effect"] == "Deny" && s["Condition"].get("StringNotEqualsIgnoreCase").is_some())
            .collect();
        assert_eq!(pcr_denies.len(), 4, "one per pinned PCR");
        let mut covered = BTreeSet::new();
        for s in &pcr_denies {
            assert_eq!(s["Principal"], "*", "{s}");
            assert_eq!(actions(s), vec!["kms:Decrypt".to_owned()]);
            let keys = s["Condition"]["StringNotEqualsIgnoreCase"].as_object().unwrap();
            assert_eq!(keys.len(), 1, "a Deny with several keys applies only when all of them differ: {s}");
            covered.extend(keys.keys().cloned());
        }
        let want: BTreeSet<String> = [0, 1, 2, 8].into_iter().map(condition_key).collect();
        assert_eq!(covered, want);

        let good = doc(&[(0, "ab"), (1, "11"), (2, "22"), (8, "88")]);
        assert!(!decrypt_denied(&p, &good));
        for (i, wrong) in [(0u16, "ac"), (1, "12"), (2, "23"), (8, "89")] {
            let mut d = good.clone();
            d.insert(condition_key(i), wrong.repeat(48));
            assert!(decrypt_denied(&p, &d), "a wrong PCR{i} alone must be denied");
            let mut d = good.clone();
            d.remove(&condition_key(i));
            assert!(decrypt_denied(&p, &d), "a missing PCR{i} must be denied");
        }
        let debug = doc(&[(0, "00"), (1, "00"), (2, "00"), (8, "00")]);
        assert!(decrypt_denied(&p, &debug), "a debug-mode document");
        assert!(decrypt_denied(&p, &BTreeMap::new()), "no document");
        // Hex of either case is the same measurement.
        let upper: BTreeMap<String, String> = good.iter().map(|(k, v)| (k.clone(), v.to_uppercase())).collect();
        assert!(!decrypt_denied(&p, &upper));
    }

    /// Finding 7: the admin's `kms:Create*` covered `kms:CreateGrant`, and a grant (which carries no
    /// conditions) released data keys to any document. Now the admin's actions are listed one by one, and
    /// explicit Denies, which a grant cannot override, refuse grants and re-encryption to everyone.
    #[test]
    fn finding_7_grants_cannot_bypass_the_pcr_conditions() {
        let dir = tempfile::tempdir().unwrap();
        let p = build_policy(&args(measurements(dir.path(), "m.json", "ab", false))).unwrap();
        let st = statements(&p);
        let admin = st.iter().find(|s| s["Sid"] == "KeyAdministrationWithoutDecrypt").unwrap();
        assert_eq!(admin["Principal"]["AWS"], "arn:aws:iam::111122223333:root");
        let admin_actions = actions(admin);
        for a in &admin_actions {
            assert!(!a.contains('*') && !a.contains('?'), "no wildcard may hide an action: {a}");
            assert!(!a.contains("Grant") || a == "kms:ListGrants" || a == "kms:RevokeGrant", "{a}");
            assert!(!a.contains("Decrypt") && !a.contains("ReEncrypt") && !a.contains("Import"), "{a}");
        }
        assert!(admin_actions.contains(&"kms:PutKeyPolicy".to_owned()), "the admin keeps the lockout safety check");
        for (sid, action) in [("NoGrants", "kms:CreateGrant"), ("NoReEncryption", "kms:ReEncrypt*")] {
            let s = st.iter().find(|s| s["Sid"] == sid).unwrap();
            assert_eq!((&s["Effect"], &s["Principal"]), (&json!("Deny"), &json!("*")), "{s}");
            assert_eq!(actions(s), vec![action.to_owned()]);
            assert!(s.get("Condition").is_none(), "unconditional: even grants for AWS resources: {s}");
        }
        // Every Deny names everyone: a grantee, an IAM-empowered principal or the enclave role alike.
        for s in st.iter().filter(|s| s["Effect"] == "Deny") {
            assert_eq!(s["Principal"], "*", "{s}");
        }
    }

    #[test]
    fn roll_outs_accept_each_image_whole_and_never_a_mix() {
        let dir = tempfile::tempdir().unwrap();
        let old = measurements_with(dir.path(), "old.json", &[(0, "a0"), (1, "a1"), (2, "a2"), (8, "a8")]);
        let new = measurements_with(dir.path(), "new.json", &[(0, "b0"), (1, "b1"), (2, "b2"), (8, "b8")]);
        let mut a = args(old);
        a.also = vec![new];
        let p = build_policy(&a).unwrap();
        let allows = statements(&p).iter().filter(|s| s["Effect"] == "Allow" && actions(s) == ["kms:Decrypt"]).count();
        assert_eq!(allows, 2);
        // Every way of taking each PCR from one image or the other: only the two pure ones pass.
        let pcrs = [0u16, 1, 2, 8];
        for mask in 0u32..16 {
            let d: Vec<(u16, String)> = pcrs
                .iter()
                .enumerate()
                .map(|(bit, i)| (*i, format!("{}{}", if mask & (1 << bit) == 0 { 'a' } else { 'b' }, i)))
                .collect();
            let d: BTreeMap<String, String> = d.iter().map(|(i, v)| (condition_key(*i), v.repeat(48))).collect();
            let pure = mask == 0 || mask == 15;
            assert_eq!(decrypt_denied(&p, &d), !pure, "mask {mask:04b}");
        }
        assert!(serde_json::to_string_pretty(&p).unwrap().len() <= MAX_POLICY_BYTES);

        // Releases sharing PCR1 (same kernel and boot ramdisk) need fewer statements, and stay sound.
        let old = measurements_with(dir.path(), "o.json", &[(0, "a0"), (1, "11"), (2, "a2")]);
        let new = measurements_with(dir.path(), "n.json", &[(0, "b0"), (1, "11"), (2, "b2")]);
        let mut a = args(old);
        a.also = vec![new];
        let p = build_policy(&a).unwrap();
        let n = statements(&p).iter().filter(|s| s["Condition"].get("StringNotEqualsIgnoreCase").is_some()).count();
        assert_eq!(n, 5, "{p:#}");
        assert!(!decrypt_denied(&p, &doc(&[(0, "a0"), (1, "11"), (2, "a2")])));
        assert!(!decrypt_denied(&p, &doc(&[(0, "b0"), (1, "11"), (2, "b2")])));
        assert!(decrypt_denied(&p, &doc(&[(0, "a0"), (1, "11"), (2, "b2")])));
        assert!(decrypt_denied(&p, &doc(&[(0, "b0"), (1, "12"), (2, "b2")])));
    }

    #[test]
    fn too_many_measurement_sets_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let sets: Vec<PathBuf> = (0u8..4)
            .map(|n| {
                let v: Vec<String> = (0..4).map(|i| format!("{}{i}", char::from(b'a' + n))).collect();
                measurements_with(dir.path(), &format!("{n}.json"), &[(0, &v[0]), (1, &v[1]), (2, &v[2]), (8, &v[3])])
            })
            .collect();
        let mut a = args(sets[0].clone());
        a.also = sets[1..].to_vec();
        let err = build_policy(&a).unwrap_err().to_string();
        assert!(err.contains("accept fewer") && err.contains("--pcrs"), "{err}");
        // The same sets with PCR0 alone pinned fit.
        a.pcrs = vec![0];
        let p = build_policy(&a).unwrap();
        let pcr_denies: Vec<&Value> =
            statements(&p).iter().filter(|s| s["Condition"].get("StringNotEqualsIgnoreCase").is_some()).collect();
        assert_eq!(pcr_denies.len(), 1);
        assert_eq!(
            pcr_denies[0]["Condition"]["StringNotEqualsIgnoreCase"]["kms:RecipientAttestation:ImageSha384"]
                .as_array()
                .unwrap()
                .len(),
            4
        );
    }

    #[test]
    fn bad_inputs_are_named() {
        let dir = tempfile::tempdir().unwrap();
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
        let mut user = args(measurements(dir.path(), "m.json", "ab", false));
        user.enclave_role = "arn:aws:iam::111122223333:user/bob".into();
        assert!(build_policy(&user).unwrap_err().to_string().contains("role/NAME"));
        let mut star = args(measurements(dir.path(), "m.json", "ab", false));
        star.clients = vec!["*".into()];
        assert!(build_policy(&star).unwrap_err().to_string().contains("--client"));
        let mut big = args(measurements(dir.path(), "m.json", "ab", false));
        big.pcrs = vec![0, 40];
        assert!(build_policy(&big).unwrap_err().to_string().contains("PCR40"));
    }
}

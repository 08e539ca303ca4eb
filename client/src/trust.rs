//! The client's policy: what it accepts from an enclave before a single request byte leaves it.
//!
//! A policy file (TOML, written by `veil policy new`) names the root of trust (AWS's Nitro root by default;
//! a mock root only through the loudly named `insecure_mock_root`), one or more accepted images (their
//! PCRs, and optionally their configuration digest: several during a roll-out), the models with their
//! SHA-384 digests, the maximum age of an attestation document, and whether debug-mode enclaves are
//! accepted (never, unless the file says so):
//!
//! ```toml
//! max_age_secs = 300
//!
//! [[images]]
//! name = "veil 2026-12-01"
//! pcr0 = "…96 hex digits…"
//! pcr1 = "…"
//! pcr2 = "…"
//!
//! [[models]]
//! name = "breast_cancer"
//! sha384 = "…96 hex digits…"
//! ```
//!
//! [`ClientPolicy::verify`] checks a document against every accepted image (first match wins) and names the
//! check that failed when none matches.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use veil_protocol::attestation::{Policy, Rejected, TrustAnchor, VerifiedDocument, Verifier, VerifyError};

/// Largest policy file read.
const MAX_POLICY_BYTES: u64 = 1 << 20;

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyFileError {
    #[error("cannot read the policy {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the policy {path} is not valid: {reason}")]
    Invalid { path: String, reason: String },
}

/// The file's form.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Oldest attestation document accepted, in seconds.
    pub max_age_secs: u64,
    /// Accept enclaves in debug mode (their memory is readable by the parent): development only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_debug: bool,
    /// Trust this PEM root instead of AWS's: a mock NSM's root, for development only. Relative paths are
    /// relative to the policy file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_mock_root: Option<PathBuf>,
    pub images: Vec<ImageFile>,
    pub models: Vec<ModelFile>,
}

/// One accepted image.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub pcr0: String,
    pub pcr1: String,
    pub pcr2: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr3: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr8: Option<String>,
    /// SHA-384 of the enclave's configuration file, if the policy pins it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_sha384: Option<String>,
}

/// One model and its digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub name: String,
    pub sha384: String,
}

/// An accepted image, checked (the same type evidence is checked against).
pub use veil_protocol::evidence::verify::AcceptedImage;

/// A checked policy.
#[derive(Debug, Clone)]
pub struct ClientPolicy {
    pub root: TrustAnchor,
    pub mock_root: bool,
    pub images: Vec<AcceptedImage>,
    pub models: BTreeMap<String, [u8; 48]>,
    pub max_age: Duration,
    pub allow_debug: bool,
}

/// Why an enclave was not trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Untrusted {
    /// No accepted image matched; the first image's failure names the check.
    #[error("{}", describe(.0))]
    Rejected(Vec<(String, Box<Rejected>)>),
}

impl Untrusted {
    /// The name of the check that failed (`pcr0`, `signature`, `freshness`, `commitment`, ...).
    pub fn failed_check(&self) -> String {
        match self {
            Untrusted::Rejected(list) => list
                .first()
                .and_then(|(_, r)| r.report.first_failure().map(|c| c.name.clone()))
                .unwrap_or_else(|| "unknown".into()),
        }
    }
}

fn describe(list: &[(String, Box<Rejected>)]) -> String {
    let Some((first_name, first)) = list.first() else { return "no accepted image".into() };
    let check = first.report.first_failure().map(|c| c.name.as_str()).unwrap_or("unknown");
    if list.len() == 1 || !matches!(first.error, VerifyError::PcrMismatch { .. }) {
        return format!("check {check} failed (image {first_name}): {}", first.error);
    }
    let each: Vec<String> = list.iter().map(|(n, r)| format!("{n}: {}", r.error)).collect();
    format!("the enclave matches none of the {} accepted images ({})", list.len(), each.join("; "))
}

fn digest(text: &str, what: &str) -> Result<[u8; 48], String> {
    hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 48]>::try_from(b).ok())
        .ok_or_else(|| format!("{what} is not a SHA-384 (96 hex digits)"))
}

impl ClientPolicy {
    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<ClientPolicy, PolicyFileError> {
        let shown = path.display().to_string();
        let read = |source| PolicyFileError::Read { path: shown.clone(), source };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.len() > MAX_POLICY_BYTES {
            return Err(PolicyFileError::Invalid { path: shown, reason: "larger than 1 MiB".into() });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let file: PolicyFile = toml::from_str(&text)
            .map_err(|e| PolicyFileError::Invalid { path: shown.clone(), reason: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        ClientPolicy::from_file(file, base).map_err(|reason| PolicyFileError::Invalid { path: shown, reason })
    }

    /// Checks a parsed policy; relative paths are relative to `base`.
    pub fn from_file(file: PolicyFile, base: &Path) -> Result<ClientPolicy, String> {
        if file.images.is_empty() {
            return Err("no [[images]]: say which enclave images (PCRs) are accepted".into());
        }
        if file.models.is_empty() {
            return Err("no [[models]]: say which models (and digests) are expected".into());
        }
        if !(1..=7 * 24 * 3600).contains(&file.max_age_secs) {
            return Err("max_age_secs is 1 to 604800 (a week)".into());
        }
        let (root, mock_root) = match &file.insecure_mock_root {
            None => (TrustAnchor::aws_nitro_root_g1(), false),
            Some(p) => {
                let p = if p.is_absolute() { p.clone() } else { base.join(p) };
                let pem = std::fs::read(&p).map_err(|e| format!("insecure_mock_root {}: {e}", p.display()))?;
                (TrustAnchor::from_pem(&pem).map_err(|e| format!("insecure_mock_root {}: {e}", p.display()))?, true)
            }
        };
        let mut images = Vec::new();
        for (i, img) in file.images.iter().enumerate() {
            let name = img.name.clone().unwrap_or_else(|| format!("#{}", i + 1));
            let mut pcrs = BTreeMap::new();
            let listed = [(0u16, Some(&img.pcr0)), (1, Some(&img.pcr1)), (2, Some(&img.pcr2))].into_iter().chain([
                (3u16, img.pcr3.as_ref()),
                (4, img.pcr4.as_ref()),
                (8, img.pcr8.as_ref()),
            ]);
            for (index, value) in listed {
                if let Some(v) = value {
                    pcrs.insert(index, digest(v, &format!("image {name}: pcr{index}"))?);
                }
            }
            let config_sha384 =
                img.config_sha384.as_deref().map(|c| digest(c, &format!("image {name}: config_sha384"))).transpose()?;
            images.push(AcceptedImage { name, pcrs, config_sha384 });
        }
        let mut models = BTreeMap::new();
        for m in &file.models {
            if !veil_protocol::message::is_valid_model_name(&m.name) {
                return Err(format!("model {:?}: {}", m.name, veil_protocol::message::MODEL_NAME_RULE));
            }
            if models.insert(m.name.clone(), digest(&m.sha384, &format!("model {}: sha384", m.name))?).is_some() {
                return Err(format!("model {:?} is listed twice", m.name));
            }
        }
        Ok(ClientPolicy {
            root,
            mock_root,
            images,
            models,
            max_age: Duration::from_secs(file.max_age_secs),
            allow_debug: file.allow_debug,
        })
    }

    /// The attestation policy for one accepted image at `now_ms`, with `nonce`, and the OHTTP key list
    /// the client was served, when it uses attested-key mode.
    pub fn attestation_policy(
        &self,
        image: &AcceptedImage,
        now_ms: u64,
        nonce: &[u8],
        ohttp_keys: Option<&[u8]>,
    ) -> Result<Policy, String> {
        let mut p = Policy::new(now_ms)
            .with_root(self.root.clone())
            .with_max_age(self.max_age)
            .allow_debug(self.allow_debug)
            .expect_nonce(nonce)
            .map_err(|e| e.to_string())?;
        for (index, value) in &image.pcrs {
            p = p.expect_pcr(*index, value).map_err(|e| e.to_string())?;
        }
        for (name, sha384) in &self.models {
            p = p.expect_model(name, sha384).map_err(|e| e.to_string())?;
        }
        if let Some(c) = &image.config_sha384 {
            p = p.expect_config_sha384(c).map_err(|e| e.to_string())?;
        }
        if let Some(keys) = ohttp_keys {
            p = p.expect_ohttp_keys(keys);
        }
        Ok(p)
    }

    /// Verifies `document` (fetched with `nonce`) against each accepted image in turn: the first that
    /// passes, and its name.
    pub fn verify(
        &self,
        verifier: &Verifier,
        document: &[u8],
        now_ms: u64,
        nonce: &[u8],
        ohttp_keys: Option<&[u8]>,
    ) -> Result<(VerifiedDocument, String), Untrusted> {
        let mut failures = Vec::new();
        for image in &self.images {
            let policy = match self.attestation_policy(image, now_ms, nonce, ohttp_keys) {
                Ok(p) => p,
                Err(reason) => {
                    let report = Box::new(veil_protocol::attestation::Report {
                        verified: false,
                        at_ms: now_ms,
                        at: String::new(),
                        root: self.root.name().to_owned(),
                        root_sha256: hex::encode(self.root.sha256()),
                        checks: vec![],
                        error: Some(reason.clone()),
                    });
                    let error = VerifyError::Commitment(reason);
                    failures.push((image.name.clone(), Box::new(Rejected { error, report })));
                    continue;
                }
            };
            match verifier.verify(document, &policy) {
                Ok(doc) => return Ok((doc, image.name.clone())),
                Err(r) => failures.push((image.name.clone(), Box::new(r))),
            }
        }
        Err(Untrusted::Rejected(failures))
    }
}

/// What `veil policy new` writes: accepted images from nitro-cli measurements files, and model digests.
pub fn new_policy_file(
    images: Vec<(Option<String>, veil_protocol::measurements::Measurements)>,
    models: Vec<(String, [u8; 48])>,
    max_age: Duration,
    allow_debug: bool,
    insecure_mock_root: Option<PathBuf>,
) -> Result<String, String> {
    let mut file = PolicyFile {
        max_age_secs: max_age.as_secs(),
        allow_debug,
        insecure_mock_root,
        images: Vec::new(),
        models: models.into_iter().map(|(name, d)| ModelFile { name, sha384: hex::encode(d) }).collect(),
    };
    for (name, m) in images {
        let pcr = |i: u16| m.pcr(i).map(hex::encode);
        file.images.push(ImageFile {
            name,
            pcr0: pcr(0).ok_or("the measurements have no PCR0")?,
            pcr1: pcr(1).ok_or("the measurements have no PCR1")?,
            pcr2: pcr(2).ok_or("the measurements have no PCR2")?,
            pcr3: pcr(3),
            pcr4: pcr(4),
            pcr8: pcr(8),
            config_sha384: None,
        });
    }
    let body = toml::to_string_pretty(&file).map_err(|e| e.to_string())?;
    let mut out = String::from(
        "# A Veil client policy (`veil policy new`): what this client accepts from an enclave before it sends\n\
         # anything. `veil infer --policy` fetches a fresh attestation document, checks it against one of the\n\
         # [[images]] (chain to the root, PCRs, age, debug mode), that it commits to these [[models]] and to\n\
         # the OHTTP keys it was served, and only then encrypts a request.\n",
    );
    if file.insecure_mock_root.is_some() {
        out.push_str(
            "#\n# INSECURE: insecure_mock_root trusts a mock NSM's root, which anyone can make documents under.\n\
             # For development stacks only; never for data that matters.\n",
        );
    }
    out.push('\n');
    out.push_str(&body);
    Ok(out)
}

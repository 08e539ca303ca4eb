//! The enclave's configuration: a file baked into the measured image, never anything the parent says.
//!
//! Which models the enclave serves, under which KMS keys (and optionally with which SHA-384), which KMS keys
//! clients may seal requests under, the KMS region and endpoint, and the limits all come from one TOML file
//! in the image (default `/etc/veil/enclave.toml`), so PCR0 and PCR2 cover it. Its SHA-384, over the exact
//! bytes, is the `config_sha384` of every attestation document's commitment: an auditor checks a deployment
//! by hashing the file that was reviewed. The parent supplies bytes only (model files, credentials, KMS
//! traffic), and nothing it sends can change what this file says.
//!
//! ```toml
//! [kms]
//! region = "eu-west-1"
//! # endpoint = "kms.eu-west-1.amazonaws.com:443"    # default: the region's
//! # request_keys = ["arn:aws:kms:..."]               # default: the models' keys; ["*"]: any key
//!
//! [[models]]
//! name = "breast_cancer"
//! kms_key_arn = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
//! # sha384 = "..."                                   # optional pin of the decrypted model's digest
//!
//! [limits]                                           # all optional
//! # max_request_bytes_in_flight = 268435456          # default: a quarter of the enclave's memory
//!
//! [ohttp]                                            # attested-key mode; all optional
//! # enabled = true
//! # require_date = false                             # refuse requests without a Date header
//! # date_window_secs = 60
//!
//! # [[ohttp.keys]]                                   # fleet keys (`veil ohttp keygen`); none: a boot key
//! # key_id = 1
//! # file = "ohttp-key-1"                             # the name the parent serves it under
//! # kms_key_arn = "arn:aws:kms:..."
//! # public_key = "..."                               # pinned: 64 hex digits
//!
//! [audit]                                            # evidence; all optional
//! # receipts = true                                  # a signed receipt for every answer
//! # tree_head_every = 1000                           # sign a tree head every N receipts
//! # tree_head_secs = 10                              # ... or T seconds after an uncovered receipt
//! # max_backlog = 100000                             # receipts the parent has not taken, before new
//! #                                                  # requests are refused (503)
//! # batch_delay_ms = 20                              # gather records this long before sending
//! #                                                  # them to the parent as one batch
//! ```
//!
//! Unknown keys are refused (a typo must not silently fall back to a default). A model configured as
//! `plaintext = true` exists only for development builds (`--features dev`): a production build refuses the
//! file.
use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;
use veil_protocol::attestation::MAX_MODELS;
use veil_protocol::error::clip;
use veil_protocol::message::{MODEL_NAME_RULE, is_valid_model_name};

/// Where the image keeps the file.
pub const DEFAULT_PATH: &str = "/etc/veil/enclave.toml";
/// Largest configuration file read.
pub const MAX_FILE_LEN: usize = 64 * 1024;

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the enclave configuration {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the enclave configuration {path} is larger than {MAX_FILE_LEN} bytes")]
    TooLarge { path: String },
    #[error("the enclave configuration is not valid TOML for Veil: {0}")]
    Parse(String),
    #[error("the enclave configuration: {0}")]
    Invalid(String),
}

fn invalid(m: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(m.into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    kms: KmsFile,
    #[serde(default)]
    models: Vec<ModelFile>,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    inference: InferenceFile,
    #[serde(default)]
    ohttp: OhttpFile,
    #[serde(default)]
    audit: AuditFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditFile {
    receipts: Option<bool>,
    tree_head_every: Option<u64>,
    tree_head_secs: Option<u64>,
    max_backlog: Option<usize>,
    batch_delay_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OhttpFile {
    enabled: Option<bool>,
    require_date: Option<bool>,
    date_window_secs: Option<u64>,
    max_seen_requests: Option<usize>,
    #[serde(default)]
    keys: Vec<OhttpKeyFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OhttpKeyFile {
    key_id: u8,
    file: String,
    kms_key_arn: String,
    public_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KmsFile {
    region: String,
    endpoint: Option<String>,
    request_keys: Option<Vec<String>>,
    timeout_secs: Option<u64>,
    max_attempts: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    name: String,
    kms_key_arn: Option<String>,
    sha384: Option<String>,
    #[serde(default)]
    plaintext: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_frame_bytes: Option<usize>,
    max_model_bytes: Option<u64>,
    max_request_bytes_in_flight: Option<u64>,
    key_cache_capacity: Option<usize>,
    key_ttl_secs: Option<u64>,
    replay_window_secs: Option<u64>,
    max_seen_requests: Option<usize>,
    max_requests_per_key: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InferenceFile {
    sessions: Option<u16>,
    intra_op_threads: Option<u16>,
}

/// Where a model's bytes come from, and how they must arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// Encrypted (`veil model encrypt`) under this KMS key: any other file is refused.
    Kms { key_arn: String },
    /// A plaintext ONNX file: development builds only.
    Plaintext,
}

/// One model the enclave serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    pub name: String,
    pub source: ModelSource,
    /// The SHA-384 the decrypted model must have, when pinned.
    pub sha384: Option<[u8; 48]>,
}

/// Which KMS keys clients may seal requests under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKeys {
    /// Only these key ARNs (compared exactly: clients send the key ARN KMS returned).
    Only(BTreeSet<String>),
    /// Any key KMS will release to this enclave.
    Any,
}

/// KMS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsSettings {
    pub region: String,
    /// `host:port`.
    pub endpoint: String,
    pub request_keys: RequestKeys,
    pub timeout_secs: u64,
    pub max_attempts: u32,
}

/// Limits. Defaults in [`Limits::default`]; `max_request_bytes_in_flight` defaults to a quarter of the
/// enclave's memory when not set (see `budget`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_model_bytes: u64,
    pub max_request_bytes_in_flight: Option<u64>,
    pub key_cache_capacity: usize,
    pub key_ttl_secs: u64,
    pub replay_window_secs: u64,
    pub max_seen_requests: usize,
    pub max_requests_per_key: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: veil_protocol::frame::DEFAULT_MAX_FRAME,
            max_model_bytes: 8 << 30,
            max_request_bytes_in_flight: None,
            key_cache_capacity: 4096,
            key_ttl_secs: 15 * 60,
            replay_window_secs: 5 * 60,
            max_seen_requests: 1 << 20,
            max_requests_per_key: 100_000,
        }
    }
}

/// Inference settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inference {
    /// Sessions per model: inferences that run at once per model.
    pub sessions: u16,
    /// Threads ONNX Runtime uses inside one inference.
    pub intra_op_threads: u16,
}

/// A fleet key of attested-key mode: an HPKE private key that `veil ohttp keygen` encrypted under a KMS key
/// (as a model file is), served by the parent as the file `file`, and pinned here by its public key, so that
/// the keys an enclave serves are fixed by its image and attested with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OhttpKey {
    pub key_id: u8,
    pub file: String,
    pub kms_key_arn: String,
    pub public_key: [u8; 32],
}

/// Attested-key mode (Oblivious HTTP, RFC 9458).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OhttpSettings {
    /// Serve `/.well-known/ohttp-gateway` (default: yes).
    pub enabled: bool,
    /// Fleet keys; none: a key generated at boot (key id 0), for a single enclave.
    pub keys: Vec<OhttpKey>,
    /// Refuse requests whose Binary HTTP request has no `Date` header (RFC 9458 §6.5.1).
    pub require_date: bool,
    /// How far a request's `Date` may be from the enclave's clock, and how long an encapsulated key is
    /// remembered against replay.
    pub date_window_secs: u64,
    /// Most encapsulated keys remembered at once.
    pub max_seen_requests: usize,
}

/// Evidence: receipts, tree heads and the audit log's back-pressure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// Sign a receipt for every answer (default: yes). Off, the commitment's `receipt_key` is null.
    pub receipts: bool,
    /// Sign a tree head every this many receipts.
    pub tree_head_every: u64,
    /// ... and this many seconds after the first receipt no tree head covers.
    pub tree_head_secs: u64,
    /// Most receipts (and tree heads) waiting for the parent to take them; beyond, new requests get 503.
    pub max_backlog: usize,
    /// How long the enclave gathers records before it sends them to the parent as one batch: after the
    /// first arrives in an empty queue, and between batches less than half full (each batch costs both
    /// processes a round trip and the parent a write and an `fdatasync`, whatever its size).
    pub batch_delay_ms: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            receipts: true,
            tree_head_every: 1000,
            tree_head_secs: 10,
            max_backlog: 100_000,
            batch_delay_ms: 20,
        }
    }
}

/// The checked configuration, and the digest of the bytes it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnclaveConfig {
    /// SHA-384 of the file's exact bytes: the attestation commitment's `config_sha384`.
    pub sha384: [u8; 48],
    pub kms: KmsSettings,
    pub models: Vec<ModelConfig>,
    pub limits: Limits,
    pub inference: Inference,
    pub ohttp: OhttpSettings,
    pub audit: AuditSettings,
}

impl EnclaveConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path, development_build: bool) -> Result<EnclaveConfig, ConfigError> {
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        if meta.len() > MAX_FILE_LEN as u64 {
            return Err(ConfigError::TooLarge { path: shown });
        }
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        if bytes.len() > MAX_FILE_LEN {
            return Err(ConfigError::TooLarge { path: shown });
        }
        EnclaveConfig::parse(&bytes, development_build)
    }

    /// Checks configuration bytes. `development_build` allows plaintext models.
    pub fn parse(bytes: &[u8], development_build: bool) -> Result<EnclaveConfig, ConfigError> {
        let sha384 = veil_protocol::attestation::UserDataCommitment::sha384(bytes);
        let text = std::str::from_utf8(bytes).map_err(|_| ConfigError::Parse("the file is not UTF-8".into()))?;
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let kms = kms_settings(file.kms, &file.models)?;
        let models = models(file.models, &kms.region, development_build)?;
        let d = Limits::default();
        let l = file.limits;
        let limits = Limits {
            max_frame_bytes: l.max_frame_bytes.unwrap_or(d.max_frame_bytes),
            max_model_bytes: l.max_model_bytes.unwrap_or(d.max_model_bytes),
            max_request_bytes_in_flight: l.max_request_bytes_in_flight,
            key_cache_capacity: l.key_cache_capacity.unwrap_or(d.key_cache_capacity),
            key_ttl_secs: l.key_ttl_secs.unwrap_or(d.key_ttl_secs),
            replay_window_secs: l.replay_window_secs.unwrap_or(d.replay_window_secs),
            max_seen_requests: l.max_seen_requests.unwrap_or(d.max_seen_requests),
            max_requests_per_key: l.max_requests_per_key.unwrap_or(d.max_requests_per_key),
        };
        check_limits(&limits)?;
        let inference = Inference {
            sessions: file.inference.sessions.unwrap_or_else(default_sessions),
            intra_op_threads: file.inference.intra_op_threads.unwrap_or(1),
        };
        if !(1..=256).contains(&inference.sessions) || !(1..=256).contains(&inference.intra_op_threads) {
            return Err(invalid("[inference] sessions and intra_op_threads are 1 to 256"));
        }
        let ohttp = ohttp_settings(file.ohttp, &kms.region, &models)?;
        let audit = audit_settings(file.audit)?;
        // Each batch of audit records is one host frame, and holds at least one whole record (the first is
        // the attestation document): a smaller frame would never carry it, and the log would stall.
        let least_frame = veil_protocol::evidence::log::MAX_RECORD_LEN + 1024;
        if audit.receipts && limits.max_frame_bytes < least_frame {
            return Err(invalid(format!(
                "[limits] max_frame_bytes must be at least {least_frame} while [audit] receipts are on (an audit record \
                 is up to {} bytes and travels in one frame)",
                veil_protocol::evidence::log::MAX_RECORD_LEN
            )));
        }
        Ok(EnclaveConfig { sha384, kms, models, limits, inference, ohttp, audit })
    }

    /// The model named `name`.
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The names of the models served, in configuration order.
    pub fn model_names(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name.clone()).collect()
    }

    /// True when clients may seal requests under `key_id`.
    pub fn accepts_request_key(&self, key_id: &str) -> bool {
        match &self.kms.request_keys {
            RequestKeys::Any => true,
            RequestKeys::Only(keys) => keys.contains(key_id),
        }
    }
}

fn audit_settings(a: AuditFile) -> Result<AuditSettings, ConfigError> {
    let d = AuditSettings::default();
    let settings = AuditSettings {
        receipts: a.receipts.unwrap_or(d.receipts),
        tree_head_every: a.tree_head_every.unwrap_or(d.tree_head_every),
        tree_head_secs: a.tree_head_secs.unwrap_or(d.tree_head_secs),
        max_backlog: a.max_backlog.unwrap_or(d.max_backlog),
        batch_delay_ms: a.batch_delay_ms.unwrap_or(d.batch_delay_ms),
    };
    if !(1..=1_000_000).contains(&settings.tree_head_every) {
        return Err(invalid("[audit] tree_head_every is 1 to 1000000 receipts"));
    }
    if !(1..=3600).contains(&settings.tree_head_secs) {
        return Err(invalid("[audit] tree_head_secs is 1 to 3600"));
    }
    // About half a kilobyte of enclave memory per waiting receipt: a million is 0.5 GB.
    if !(16..=1_000_000).contains(&settings.max_backlog) {
        return Err(invalid("[audit] max_backlog is 16 to 1000000 records"));
    }
    if settings.batch_delay_ms > 1000 {
        return Err(invalid("[audit] batch_delay_ms is 0 to 1000"));
    }
    Ok(settings)
}

fn default_sessions() -> u16 {
    std::thread::available_parallelism().map(|n| n.get().min(64) as u16).unwrap_or(2)
}

fn kms_settings(k: KmsFile, models: &[ModelFile]) -> Result<KmsSettings, ConfigError> {
    let region = k.region;
    if region.is_empty()
        || region.len() > 32
        || !region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid(format!(
            "[kms] region {:?} is not an AWS region name (e.g. eu-west-1)",
            clip(&region, 80)
        )));
    }
    let endpoint = k.endpoint.unwrap_or_else(|| format!("kms.{region}.amazonaws.com:443"));
    check_endpoint(&endpoint)?;
    let request_keys = match k.request_keys {
        Some(keys) if keys.iter().any(|k| k == "*") => {
            if keys.len() != 1 {
                return Err(invalid("[kms] request_keys is either [\"*\"] or a list of key ARNs, not both"));
            }
            RequestKeys::Any
        }
        Some(keys) => {
            if keys.is_empty() {
                return Err(invalid("[kms] request_keys is empty: no client could send a request"));
            }
            for key in &keys {
                check_key_arn(key, &region)?;
            }
            RequestKeys::Only(keys.into_iter().collect())
        }
        None => {
            let keys: BTreeSet<String> = models.iter().filter_map(|m| m.kms_key_arn.clone()).collect();
            if keys.is_empty() {
                return Err(invalid(
                    "[kms] request_keys is not set and no model names a kms_key_arn: say which KMS keys clients seal requests under",
                ));
            }
            RequestKeys::Only(keys)
        }
    };
    let timeout_secs = k.timeout_secs.unwrap_or(20);
    let max_attempts = k.max_attempts.unwrap_or(4);
    if !(1..=300).contains(&timeout_secs) || !(1..=10).contains(&max_attempts) {
        return Err(invalid("[kms] timeout_secs is 1 to 300 and max_attempts 1 to 10"));
    }
    Ok(KmsSettings { region, endpoint, request_keys, timeout_secs, max_attempts })
}

fn models(list: Vec<ModelFile>, region: &str, development_build: bool) -> Result<Vec<ModelConfig>, ConfigError> {
    if list.is_empty() {
        return Err(invalid("no [[models]]: the enclave would serve nothing"));
    }
    if list.len() > MAX_MODELS {
        return Err(invalid(format!(
            "{} models; at most {MAX_MODELS} per enclave (the attestation commitment lists each one's digest)",
            list.len()
        )));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(list.len());
    for m in list {
        if !is_valid_model_name(&m.name) || m.name.len() > veil_protocol::attestation::MAX_MODEL_NAME_LEN {
            return Err(invalid(format!(
                "model {:?}: {MODEL_NAME_RULE}, at most {} here",
                clip(&m.name, 80),
                veil_protocol::attestation::MAX_MODEL_NAME_LEN
            )));
        }
        if !seen.insert(m.name.clone()) {
            return Err(invalid(format!("model {:?} is configured twice", m.name)));
        }
        let source = match (m.kms_key_arn, m.plaintext) {
            (Some(arn), false) => {
                check_key_arn(&arn, region).map_err(|e| invalid(format!("model {:?}: {e}", m.name)))?;
                ModelSource::Kms { key_arn: arn }
            }
            (None, true) if development_build => ModelSource::Plaintext,
            (None, true) => {
                return Err(invalid(format!(
                    "model {:?} is configured as plaintext, which only development builds (--features dev) load; \
                     encrypt it with `veil model encrypt` and name its kms_key_arn",
                    m.name
                )));
            }
            (Some(_), true) => {
                return Err(invalid(format!("model {:?}: kms_key_arn and plaintext = true contradict", m.name)));
            }
            (None, false) => {
                return Err(invalid(format!(
                    "model {:?}: name the KMS key it is encrypted under (kms_key_arn)",
                    m.name
                )));
            }
        };
        let sha384 = match m.sha384 {
            None => None,
            Some(h) => {
                let bytes = hex::decode(&h).map_err(|_| invalid(format!("model {:?}: sha384 is not hex", m.name)))?;
                Some(bytes.try_into().map_err(|_| invalid(format!("model {:?}: sha384 is 96 hex digits", m.name)))?)
            }
        };
        out.push(ModelConfig { name: m.name, source, sha384 });
    }
    Ok(out)
}

/// `arn:PARTITION:kms:REGION:ACCOUNT:key/ID`, in this enclave's region.
pub fn check_key_arn(arn: &str, region: &str) -> Result<(), ConfigError> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "kms"
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5].strip_prefix("key/").is_some_and(|id| {
            !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok {
        return Err(invalid(format!(
            "{:?} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID; aliases are not accepted here: \
             an alias can be moved to another key)",
            clip(arn, 80)
        )));
    }
    if parts[3] != region {
        return Err(invalid(format!(
            "key {:?} is in region {}, but [kms] region is {region}",
            clip(arn, 80),
            parts[3]
        )));
    }
    Ok(())
}

fn ohttp_settings(o: OhttpFile, region: &str, models: &[ModelConfig]) -> Result<OhttpSettings, ConfigError> {
    let settings = OhttpSettings {
        enabled: o.enabled.unwrap_or(true),
        keys: Vec::new(),
        require_date: o.require_date.unwrap_or(false),
        date_window_secs: o.date_window_secs.unwrap_or(60),
        max_seen_requests: o.max_seen_requests.unwrap_or(1 << 20),
    };
    if !(1..=3600).contains(&settings.date_window_secs) {
        return Err(invalid("[ohttp] date_window_secs is 1 to 3600"));
    }
    if !(1..=1 << 24).contains(&settings.max_seen_requests) {
        return Err(invalid("[ohttp] max_seen_requests is 1 to 16777216"));
    }
    if o.keys.len() > 4 {
        return Err(invalid("[[ohttp.keys]]: at most 4 fleet keys (two side by side while rotating)"));
    }
    if !settings.enabled && !o.keys.is_empty() {
        return Err(invalid("[ohttp] enabled = false, but [[ohttp.keys]] are configured"));
    }
    let mut keys: Vec<OhttpKey> = Vec::with_capacity(o.keys.len());
    for k in o.keys {
        let what = format!("[[ohttp.keys]] key_id {}", k.key_id);
        if keys.iter().any(|o| o.key_id == k.key_id) {
            return Err(invalid(format!("{what} is configured twice")));
        }
        if !is_valid_model_name(&k.file)
            || models.iter().any(|m| m.name == k.file)
            || keys.iter().any(|o| o.file == k.file)
        {
            return Err(invalid(format!(
                "{what}: file {:?} must be a name the parent serves ({MODEL_NAME_RULE}), unique among models and keys",
                clip(&k.file, 80)
            )));
        }
        check_key_arn(&k.kms_key_arn, region).map_err(|e| invalid(format!("{what}: {e}")))?;
        let public_key = hex::decode(&k.public_key)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| invalid(format!("{what}: public_key is the X25519 public key, 64 hex digits")))?;
        keys.push(OhttpKey { key_id: k.key_id, file: k.file, kms_key_arn: k.kms_key_arn, public_key });
    }
    Ok(OhttpSettings { keys, ..settings })
}

fn check_endpoint(endpoint: &str) -> Result<(), ConfigError> {
    let bad = || invalid(format!("[kms] endpoint {:?} is not HOST:PORT", clip(endpoint, 80)));
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0
        || host.is_empty()
        || host.len() > 253
        || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err(bad());
    }
    Ok(())
}

fn check_limits(l: &Limits) -> Result<(), ConfigError> {
    if !(1024..=veil_protocol::frame::LIMIT_MAX_FRAME).contains(&l.max_frame_bytes) {
        return Err(invalid(format!(
            "[limits] max_frame_bytes must be 1024 to {}",
            veil_protocol::frame::LIMIT_MAX_FRAME
        )));
    }
    if l.max_model_bytes == 0 {
        return Err(invalid("[limits] max_model_bytes must be positive"));
    }
    if l.max_request_bytes_in_flight.is_some_and(|b| b < l.max_frame_bytes as u64) {
        return Err(invalid("[limits] max_request_bytes_in_flight must hold at least one frame (max_frame_bytes)"));
    }
    if l.key_cache_capacity == 0 || l.max_seen_requests == 0 || l.max_requests_per_key == 0 {
        return Err(invalid(
            "[limits] key_cache_capacity, max_seen_requests and max_requests_per_key must be positive",
        ));
    }
    if !(1..=3600).contains(&l.replay_window_secs) || l.key_ttl_secs < l.replay_window_secs {
        return Err(invalid("[limits] replay_window_secs is 1 to 3600, and key_ttl_secs at least that"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    fn parse(text: &str, dev: bool) -> Result<EnclaveConfig, ConfigError> {
        EnclaveConfig::parse(text.as_bytes(), dev)
    }

    #[test]
    fn a_minimal_file_gets_defaults_and_its_digest() {
        let text = format!("[kms]\nregion = \"eu-west-1\"\n\n[[models]]\nname = \"iris\"\nkms_key_arn = \"{ARN}\"\n");
        let c = parse(&text, false).unwrap();
        assert_eq!(c.kms.endpoint, "kms.eu-west-1.amazonaws.com:443");
        assert_eq!(c.kms.request_keys, RequestKeys::Only(BTreeSet::from([ARN.to_owned()])));
        assert_eq!(c.models[0].source, ModelSource::Kms { key_arn: ARN.into() });
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.audit, AuditSettings::default());
        assert_eq!(c.audit.batch_delay_ms, 20);
        assert_eq!(c.sha384, veil_protocol::attestation::UserDataCommitment::sha384(text.as_bytes()));
        assert!(c.accepts_request_key(ARN) && !c.accepts_request_key("alias/other"));
        // One byte more (a comment) is another configuration.
        let other = parse(&format!("{text}#\n"), false).unwrap();
        assert_ne!(other.sha384, c.sha384);
    }

    #[test]
    fn plaintext_models_need_a_development_build() {
        let text =
            "[kms]\nregion = \"eu-west-1\"\nrequest_keys = [\"*\"]\n\n[[models]]\nname = \"iris\"\nplaintext = true\n";
        let e = parse(text, false).unwrap_err().to_string();
        assert!(e.contains("only development builds"), "{e}");
        assert_eq!(parse(text, true).unwrap().models[0].source, ModelSource::Plaintext);
    }

    #[test]
    fn mistakes_are_named() {
        let base = format!("[kms]\nregion = \"eu-west-1\"\n\n[[models]]\nname = \"iris\"\nkms_key_arn = \"{ARN}\"\n");
        let cases = [
            (base.replace("kms_key_arn", "kms_key"), "unknown field"),
            (base.replace(ARN, "alias/veil"), "not a KMS key ARN"),
            (base.replace("eu-west-1\"\n", "us-east-1\"\n"), "is in region eu-west-1"),
            (base.replace("\"iris\"", "\"a/b\""), "model names are"),
            (format!("{base}\n[[models]]\nname = \"iris\"\nkms_key_arn = \"{ARN}\"\n"), "configured twice"),
            (format!("{base}\n[limits]\nmax_frame_bytes = 10\n"), "max_frame_bytes"),
            (format!("{base}sha384 = \"abcd\"\n"), "96 hex digits"),
            ("[kms]\nregion = \"eu-west-1\"\n".to_owned(), "request_keys is not set"),
            (base.replace("region = \"eu-west-1\"", "region = \"eu-west-1\"\nendpoint = \"kms\""), "HOST:PORT"),
            (format!("{base}\n[audit]\ntree_head_every = 0\n"), "tree_head_every is 1 to"),
            (format!("{base}\n[audit]\ntree_head_secs = 7200\n"), "tree_head_secs is 1 to"),
            (format!("{base}\n[audit]\nmax_backlog = 1\n"), "max_backlog is 16 to"),
            (format!("{base}\n[audit]\nbatch_delay_ms = 5000\n"), "batch_delay_ms is 0 to 1000"),
            (format!("{base}\n[audit]\nmax_backlog = 5000000\n"), "max_backlog is 16 to 1000000"),
            (format!("{base}\n[limits]\nmax_frame_bytes = 4096\n"), "at least 66560 while [audit] receipts are on"),
            (format!("{base}\n[audit]\nbatch_delay = 5\n"), "unknown field"),
        ];
        for (text, want) in cases {
            let e = parse(&text, true).unwrap_err().to_string();
            assert!(e.contains(want), "{want:?} not in {e:?} for\n{text}");
        }
    }
}

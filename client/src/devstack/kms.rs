//! The dev stack's mock KMS, and what the stack sets up in it: the key (or an image configuration's keys),
//! its policy from the enclave's measurements, the models and fleet key encrypted under it, and the client
//! policy for the stack.
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use anyhow::Context;
use veil_runtime::ready::MockKmsReady;

use super::children::{spawn, wait_ready_or_kill};
use super::{DEV_ACCOUNT, Stack};

/// The mock KMS and what the stack set up in it.
#[derive(Debug, Clone)]
pub struct MockKms {
    /// `https://127.0.0.1:PORT`.
    pub endpoint: String,
    /// `127.0.0.1:PORT`.
    pub host_port: String,
    pub ca_file: PathBuf,
    pub region: String,
    /// The key's id, and its ARN (what clients send and the configuration names).
    pub key_id: String,
    pub key_arn: String,
    /// With an image configuration: the endpoint the enclave dials (`HOST:PORT`), its keys, and the extra
    /// arguments the mock is started with.
    pub enclave_endpoint: Option<String>,
    pub fixture_keys: Vec<String>,
    pub extra_args: Vec<String>,
    pub state_dir: PathBuf,
    pub policy_file: PathBuf,
    pub measurements_file: PathBuf,
    /// The root the mock KMS trusts for `Recipient` documents (the mock NSM's).
    pub attestation_root: PathBuf,
    pub log: PathBuf,
    pub(super) access_key: String,
    pub(super) secret_key: String,
    /// `--principal` mappings: who each access key is.
    pub(super) principals: Vec<String>,
}

impl MockKms {
    /// A KMS client configuration for this mock KMS.
    pub fn client_config(&self) -> crate::kms::KmsConfig {
        crate::kms::KmsConfig {
            region: Some(self.region.clone()),
            endpoint_url: Some(self.endpoint.clone()),
            ca_pem: std::fs::read(&self.ca_file).ok(),
            static_credentials: Some((self.access_key.clone(), self.secret_key.clone())),
        }
    }

    /// An SDK client for this mock KMS.
    pub async fn client(&self) -> anyhow::Result<aws_sdk_kms::Client> {
        Ok(crate::kms::kms_client(&self.client_config()).await?)
    }

    /// Starts the mock KMS on `host_port` (port 0: any free port); returns the process and what it reported.
    pub(super) fn spawn_on(&self, bin_dir: &Path, host_port: &str) -> anyhow::Result<(Child, MockKmsReady)> {
        let ready_file = self.state_dir.with_extension("ready.json");
        let _ = std::fs::remove_file(&ready_file);
        let args = vec![
            "--listen".to_owned(),
            format!("tcp://{host_port}"),
            "--state-dir".to_owned(),
            self.state_dir.display().to_string(),
            "--attestation-root".to_owned(),
            self.attestation_root.display().to_string(),
            "--ready-file".to_owned(),
            ready_file.display().to_string(),
        ];
        let mut args = args;
        for p in &self.principals {
            args.extend(["--principal".to_owned(), p.clone()]);
        }
        args.extend(self.extra_args.iter().cloned());
        let child = spawn(&bin_dir.join("veil-mock-kms"), &args, &self.log, &[], "info")?;
        wait_ready_or_kill::<MockKmsReady>(child, &ready_file, "veil-mock-kms", &self.log)
    }
}

/// What the stack needs from an image's enclave configuration.
#[derive(Debug, Clone)]
pub(super) struct ImageConfig {
    pub(super) path: PathBuf,
    region: String,
    /// `HOST:PORT`, as the enclave dials it.
    pub(super) endpoint: String,
    /// Model name → key ARN.
    pub(super) models: Vec<(String, String)>,
}

impl ImageConfig {
    pub(super) fn read(path: &Path) -> anyhow::Result<ImageConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let kms = table.get("kms").and_then(|k| k.as_table()).context("no [kms] table")?;
        let region = kms.get("region").and_then(|r| r.as_str()).context("no [kms] region")?.to_owned();
        let endpoint = match kms.get("endpoint") {
            Some(e) => e.as_str().context("[kms] endpoint is not a string")?.to_owned(),
            None => format!("kms.{region}.amazonaws.com:443"),
        };
        let mut models = vec![];
        for m in table.get("models").and_then(|m| m.as_array()).context("no [[models]]")? {
            let name = m.get("name").and_then(|n| n.as_str()).context("a model without a name")?;
            let arn = m.get("kms_key_arn").and_then(|n| n.as_str()).with_context(|| format!("model {name}: no key"))?;
            let prefix = format!("arn:aws:kms:{region}:{DEV_ACCOUNT}:key/");
            anyhow::ensure!(
                arn.starts_with(&prefix),
                "model {name}: the dev stack's mock KMS holds keys of {prefix}..., not {arn}"
            );
            models.push((name.to_owned(), arn.to_owned()));
        }
        Ok(ImageConfig { path: path.to_path_buf(), region, endpoint, models })
    }

    pub(super) fn key_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> =
            self.models.iter().filter_map(|(_, arn)| arn.rsplit_once('/').map(|(_, id)| id.to_owned())).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    fn host(&self) -> &str {
        self.endpoint.rsplit_once(':').map(|(h, _)| h).unwrap_or(&self.endpoint)
    }

    pub(super) fn mock_kms_args(&self) -> Vec<String> {
        let mut args =
            vec!["--region".to_owned(), self.region.clone(), "--hostname".to_owned(), self.host().to_owned()];
        for id in self.key_ids() {
            args.extend(["--fixture-key".to_owned(), id]);
        }
        args
    }

    pub(super) fn key_for(&self, model: &str) -> Option<&str> {
        self.models.iter().find(|(n, _)| n == model).map(|(_, arn)| arn.as_str())
    }
}

impl Stack {
    pub(super) async fn set_up_kms(&mut self) -> anyhow::Result<()> {
        let client = self.kms.client().await?;
        if let Some(image) = &self.image {
            // The image names its keys: the mock made them at start; each gets the measurements' policy.
            let ids = image.key_ids();
            let first = image.models.first().context("the image configuration lists no models")?;
            self.kms.key_arn = first.1.clone();
            for id in ids {
                self.kms.key_id = id;
                self.put_policy_from(&self.kms.measurements_file.clone()).await?;
            }
            self.kms.key_id = self.kms.key_arn.rsplit_once('/').map(|(_, id)| id.to_owned()).unwrap_or_default();
        } else {
            let created =
                client.create_key().description("veil dev: data keys for requests and models").send().await.map_err(
                    |e| anyhow::anyhow!("mock KMS CreateKey: {}", aws_sdk_kms::error::DisplayErrorContext(e)),
                )?;
            let meta = created.key_metadata().context("CreateKey returned no key metadata")?;
            self.kms.key_id = meta.key_id().to_owned();
            self.kms.key_arn = meta.arn().context("CreateKey returned no ARN")?.to_owned();
            self.put_policy_from(&self.kms.measurements_file.clone()).await?;
        }
        let dir = self.options.state_dir.join("models");
        std::fs::create_dir_all(&dir)?;
        for (name, path) in &self.options.models {
            let out = dir.join(format!("{name}.onnx.veil"));
            let key = match &self.image {
                Some(image) => image
                    .key_for(name)
                    .with_context(|| format!("model {name} is not in {}", image.path.display()))?
                    .to_owned(),
                None => self.kms.key_id.clone(),
            };
            crate::kms::encrypt_model_file(
                &client,
                name,
                &key,
                Default::default(),
                path,
                &out,
                veil_protocol::model_file::DEFAULT_CHUNK,
                false,
            )
            .await
            .with_context(|| format!("encrypting model {name}"))?;
            self.model_files.push((name.clone(), out));
        }
        if self.options.ohttp_fleet_key {
            let key = veil_protocol::ohttp::GatewayKey::generate(
                1,
                &veil_protocol::ohttp::GATEWAY_AEADS,
                &veil_protocol::random::SystemRandom::new(),
            )?;
            let secret = key.secret_bytes();
            let (name, out) = ("ohttp-key-1".to_owned(), dir.join("ohttp-key-1.veil"));
            let arn = crate::kms::encrypt_stream(
                &client,
                &name,
                &self.kms.key_id,
                Default::default(),
                std::io::Cursor::new(secret.as_slice()),
                secret.len() as u64,
                "the fleet key",
                &out,
                veil_protocol::model_file::DEFAULT_CHUNK,
                false,
            )
            .await
            .context("sealing the fleet key")?;
            let entry = format!(
                "\n[[ohttp.keys]]\nkey_id = 1\nfile = \"{name}\"\nkms_key_arn = \"{arn}\"\npublic_key = \"{}\"\n",
                hex::encode(key.config().public_key)
            );
            self.fleet_key = Some((name, out, entry));
        }
        Ok(())
    }

    /// Writes [`Stack::client_policy`].
    pub(super) fn write_client_policy(&self) -> anyhow::Result<()> {
        let measurements = crate::policy::read_measurements(&self.kms.measurements_file)?;
        let mut models = Vec::new();
        for (name, path) in &self.options.models {
            let d = ring::digest::digest(&ring::digest::SHA384, &std::fs::read(path)?);
            let mut digest = [0u8; 48];
            digest.copy_from_slice(d.as_ref());
            models.push((name.clone(), digest));
        }
        let text = crate::trust::new_policy_file(
            vec![(Some("veil dev (mock PCRs)".into()), measurements)],
            models,
            Duration::from_secs(300),
            false,
            Some(self.mock_root.clone()),
        )
        .map_err(|e| anyhow::anyhow!("client policy: {e}"))?;
        std::fs::write(&self.client_policy, text)?;
        Ok(())
    }

    /// Puts a key policy from `measurements` (nitro-cli JSON) on the stack's key.
    pub async fn put_policy_from(&self, measurements: &Path) -> anyhow::Result<()> {
        self.put_policy_with(measurements, false).await
    }

    /// As [`Stack::put_policy_from`]; `allow_debug` lets all-zero (debug-mode) measurements through, as
    /// `veil kms policy --allow-debug` does (tests of what verifiers make of a debug-mode enclave).
    pub async fn put_policy_with(&self, measurements: &Path, allow_debug: bool) -> anyhow::Result<()> {
        let policy = crate::policy::build_policy(&crate::policy::PolicyArgs {
            measurements: measurements.to_path_buf(),
            also: vec![],
            account: DEV_ACCOUNT.into(),
            enclave_role: self.options.enclave_role(),
            clients: vec![self.options.client_role()],
            admin: None,
            pcrs: vec![],
            allow_debug,
            output: None,
        })?;
        std::fs::write(&self.kms.policy_file, serde_json::to_vec_pretty(&policy)?)?;
        self.kms
            .client()
            .await?
            .put_key_policy()
            .key_id(&self.kms.key_id)
            .policy_name("default")
            .policy(policy.to_string())
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("mock KMS PutKeyPolicy: {}", aws_sdk_kms::error::DisplayErrorContext(e)))?;
        Ok(())
    }
}

//! The off-hardware stack, built one way for everyone: `veil dev`, the end-to-end tests and the
//! benchmarks all start it through [`Stack::start`], so the tests exercise the stack users run.
//!
//! What it sets up, in order, as an operator would with real AWS:
//!
//! 1. the enclave's (mock) measurements, from the development build of `veil-enclave` itself;
//! 2. `veil-mock-kms`, trusting the mock NSM's root for `Recipient` documents;
//! 3. a KMS key whose policy (`veil kms policy`) releases data keys only to those measurements;
//! 4. every model encrypted under that key (`veil model encrypt`), for its name;
//! 5. the enclave's configuration file naming each model, its key ARN and digest, and the KMS endpoint;
//! 6. `veil-parent` serving the encrypted files, and `veil-enclave` loading them.
//!
//! Every process is a real child on real sockets (Unix sockets or TCP stand in for vsock), with its log in
//! the state directory, found through a typed ready file ([`veil_runtime::ready`]), and killed when the
//! [`Stack`] drops.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use veil_runtime::ready::{self, EnclaveReady, MockKmsReady, ParentReady};

/// The AWS account of the dev stack's mock KMS, and the roles its key policy names.
pub const DEV_ACCOUNT: &str = "111122223333";
/// Credentials the dev stack's clients use with the mock KMS (it checks their shape, not the secret: see
/// docs/MOCK_KMS.md). The mock knows them as the client role; the stack sets up its key with them too.
pub const DEV_ACCESS_KEY: &str = "AKIAVEILDEVSTACK0000";
pub const DEV_SECRET_KEY: &str = "veil-dev-stack-mock-kms-secret";
/// The parent's credentials (which it serves to the enclave): a session of the enclave's role.
pub const DEV_PARENT_ACCESS_KEY: &str = "AKIAVEILDEVPARENT000";

/// How the parent and the enclave reach each other (vsock on hardware).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Unix,
    Tcp,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where sockets, logs, keys, encrypted models and the configuration go.
    pub state_dir: PathBuf,
    /// The directory of `veil-enclave`, `veil-parent` and `veil-mock-kms`.
    pub bin_dir: PathBuf,
    /// `libonnxruntime.so`.
    pub ort_dylib: PathBuf,
    /// The models to serve: name and plaintext ONNX file (encrypted by the stack).
    pub models: Vec<(String, PathBuf)>,
    /// The parent's client API, e.g. `tcp://127.0.0.1:0`.
    pub listen: String,
    pub link: Link,
    /// Lines appended to the enclave's configuration (e.g. a `[limits]` table).
    pub extra_config: String,
    /// ONNX Runtime threads per inference.
    pub intra_op_threads: u16,
    /// Extra arguments for `veil-parent` and `veil-enclave`.
    pub parent_args: Vec<String>,
    pub enclave_args: Vec<String>,
    /// The address the parent dials for the enclave, and the enclave for the host services, when something
    /// sits between them (the test kit's recording proxies); `None`: directly.
    pub parent_to_enclave: Option<String>,
    pub enclave_to_host: Option<String>,
    /// Start the enclave (false: a parent whose enclave is down).
    pub start_enclave: bool,
    /// `RUST_LOG` for the children.
    pub log_filter: String,
    /// Credentials for the mock KMS: the clients' access key (the client role), the parent's (a session of
    /// the enclave role, which the parent serves to the enclave), and the secret both use.
    pub access_key: String,
    pub parent_access_key: String,
    pub secret_key: String,
    /// The prefix of the roles the key policy names: `{roles}-client` and `{roles}-parent`.
    pub roles: String,
    /// An enclave configuration to use byte for byte (an image's baked file, such as `docker/enclave.toml`)
    /// instead of the one the stack writes. The mock KMS then takes that file's region and key ids (which
    /// must be in [`DEV_ACCOUNT`]), answers as the file's KMS endpoint, and the parent routes that endpoint
    /// to it; each model is encrypted under the key the file names for it.
    pub image_config: Option<PathBuf>,
    /// Attested-key mode with a fleet key (`veil ohttp keygen`: sealed under the stack's KMS key, served by
    /// the parent, pinned in the configuration) instead of a key generated at each enclave's boot, so that
    /// [`Stack::start_replica`]s serve the same key configuration.
    pub ohttp_fleet_key: bool,
}

impl Options {
    /// Defaults for `models` in `state_dir`, with the binaries in `bin_dir`.
    pub fn new(state_dir: PathBuf, bin_dir: PathBuf, ort_dylib: PathBuf, models: Vec<(String, PathBuf)>) -> Options {
        Options {
            state_dir,
            bin_dir,
            ort_dylib,
            models,
            listen: "tcp://127.0.0.1:0".into(),
            link: Link::Unix,
            extra_config: String::new(),
            intra_op_threads: 1,
            parent_args: vec![],
            enclave_args: vec![],
            parent_to_enclave: None,
            enclave_to_host: None,
            start_enclave: true,
            log_filter: "info".into(),
            access_key: DEV_ACCESS_KEY.into(),
            parent_access_key: DEV_PARENT_ACCESS_KEY.into(),
            secret_key: DEV_SECRET_KEY.into(),
            roles: "veil-dev".into(),
            image_config: None,
            ohttp_fleet_key: false,
        }
    }

    /// The role the key policy lets decrypt (the parent instance's role, whose credentials the enclave
    /// signs its KMS calls with).
    pub fn enclave_role(&self) -> String {
        format!("arn:aws:iam::{DEV_ACCOUNT}:role/{}-parent", self.roles)
    }

    /// The role the key policy lets create data keys.
    pub fn client_role(&self) -> String {
        format!("arn:aws:iam::{DEV_ACCOUNT}:role/{}-client", self.roles)
    }
}

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
    access_key: String,
    secret_key: String,
    /// `--principal` mappings: who each access key is.
    principals: Vec<String>,
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
    fn spawn_on(&self, bin_dir: &Path, host_port: &str) -> anyhow::Result<(Child, MockKmsReady)> {
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
        let mut child = spawn(&bin_dir.join("veil-mock-kms"), &args, &self.log, &[], "info")?;
        let info =
            ready::wait::<MockKmsReady>(&ready_file, "veil-mock-kms", Duration::from_secs(60), || exited(&mut child))
                .map_err(|e| anyhow::anyhow!("{e}\n{}", tail(&self.log)))?;
        Ok((child, info))
    }
}

/// A running stack.
#[derive(Debug)]
pub struct Stack {
    pub options: Options,
    pub kms: MockKms,
    /// The client API (`http://127.0.0.1:PORT`).
    pub url: String,
    /// Where the enclave listens, and where the parent serves host services.
    pub enclave_addr: String,
    pub host_addr: String,
    /// The enclave's configuration file, and its SHA-384.
    pub config_file: PathBuf,
    pub config_sha384: String,
    /// The mock NSM's directory and root certificate (what a client must name to verify documents).
    pub mock_nsm_dir: PathBuf,
    pub mock_root: PathBuf,
    /// The encrypted model files the parent serves: name, file.
    pub model_files: Vec<(String, PathBuf)>,
    /// The fleet key's file (name, path) and configuration entry, with `ohttp_fleet_key`.
    pub fleet_key: Option<(String, PathBuf, String)>,
    /// A client policy for this stack (`veil infer --policy`): its image's mock PCRs, its models' digests,
    /// and the mock root (so: development only).
    pub client_policy: PathBuf,
    pub logs: PathBuf,
    parent: Option<Child>,
    enclave: Option<Child>,
    kms_child: Option<Child>,
    enclave_argv: Vec<String>,
    enclave_env: Vec<(String, String)>,
    image: Option<ImageConfig>,
}

/// What the stack needs from an image's enclave configuration.
#[derive(Debug, Clone)]
struct ImageConfig {
    path: PathBuf,
    region: String,
    /// `HOST:PORT`, as the enclave dials it.
    endpoint: String,
    /// Model name → key ARN.
    models: Vec<(String, String)>,
}

impl ImageConfig {
    fn read(path: &Path) -> anyhow::Result<ImageConfig> {
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

    fn key_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> =
            self.models.iter().filter_map(|(_, arn)| arn.rsplit_once('/').map(|(_, id)| id.to_owned())).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    fn host(&self) -> &str {
        self.endpoint.rsplit_once(':').map(|(h, _)| h).unwrap_or(&self.endpoint)
    }

    fn mock_kms_args(&self) -> Vec<String> {
        let mut args =
            vec!["--region".to_owned(), self.region.clone(), "--hostname".to_owned(), self.host().to_owned()];
        for id in self.key_ids() {
            args.extend(["--fixture-key".to_owned(), id]);
        }
        args
    }

    fn key_for(&self, model: &str) -> Option<&str> {
        self.models.iter().find(|(n, _)| n == model).map(|(_, arn)| arn.as_str())
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

impl Stack {
    /// Starts everything (see the module documentation) and waits until the parent reports every model
    /// loaded. Blocking; call it outside an async runtime (or on a blocking thread).
    pub fn start(options: Options) -> anyhow::Result<Stack> {
        anyhow::ensure!(!options.models.is_empty(), "no models to serve");
        let state = options.state_dir.clone();
        let logs = state.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let (enclave_addr, host_addr) = match options.link {
            Link::Unix => (
                format!("unix://{}", state.join("enclave.sock").display()),
                format!("unix://{}", state.join("host.sock").display()),
            ),
            Link::Tcp => (format!("tcp://127.0.0.1:{}", free_port()?), format!("tcp://127.0.0.1:{}", free_port()?)),
        };
        let mock_nsm_dir = state.join("mock-nsm");

        // 1. The enclave's measurements (mock PCRs derive from the veil-enclave binary) and the mock root.
        let enclave_bin = options.bin_dir.join("veil-enclave");
        anyhow::ensure!(
            enclave_bin.is_file(),
            "{} not found: build it (cargo build --workspace --bins) or pass its directory",
            enclave_bin.display()
        );
        let out = Command::new(&enclave_bin)
            .args(["--nsm", "mock", "--mock-measurements", "--mock-root-dir"])
            .arg(&mock_nsm_dir)
            .output()
            .with_context(|| format!("running {}", enclave_bin.display()))?;
        if !out.status.success() {
            bail!(
                "{} --mock-measurements failed: {}\n(veil dev runs a development build of the enclave: \
                 `cargo build --workspace --bins` makes one; `-p veil-enclave` alone makes a production build)",
                enclave_bin.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let measurements_file = state.join("measurements.json");
        std::fs::write(&measurements_file, &out.stdout)?;
        let image = options.image_config.as_deref().map(ImageConfig::read).transpose()?;

        // 2. The mock KMS.
        let mut kms = MockKms {
            endpoint: String::new(),
            host_port: String::new(),
            ca_file: PathBuf::new(),
            region: String::new(),
            key_id: String::new(),
            key_arn: String::new(),
            enclave_endpoint: image.as_ref().map(|i| i.endpoint.clone()),
            fixture_keys: image.as_ref().map(|i| i.key_ids()).unwrap_or_default(),
            extra_args: image.as_ref().map(ImageConfig::mock_kms_args).unwrap_or_default(),
            state_dir: state.join("kms"),
            policy_file: state.join("key-policy.json"),
            measurements_file: measurements_file.clone(),
            attestation_root: mock_nsm_dir.join("mock-root.pem"),
            log: logs.join("kms.log"),
            access_key: options.access_key.clone(),
            secret_key: options.secret_key.clone(),
            // Who each access key is, so that the key policy's principals mean what they say.
            principals: vec![
                format!("{}={}", options.access_key, options.client_role()),
                format!(
                    "{}=arn:aws:sts::{DEV_ACCOUNT}:assumed-role/{}-parent/i-0{}",
                    options.parent_access_key,
                    options.roles,
                    options.roles.replace('-', "")
                ),
            ],
        };
        let (kms_child, info) = kms.spawn_on(&options.bin_dir, "127.0.0.1:0")?;
        kms.host_port = info.endpoint.trim_start_matches("https://").to_owned();
        kms.endpoint = info.endpoint;
        kms.ca_file = PathBuf::from(info.ca_file);
        kms.region = info.region;
        let mut stack = Stack {
            options,
            kms,
            url: String::new(),
            enclave_addr,
            host_addr,
            config_file: image.as_ref().map(|i| i.path.clone()).unwrap_or_else(|| state.join("enclave.toml")),
            config_sha384: String::new(),
            mock_root: mock_nsm_dir.join("mock-root.pem"),
            mock_nsm_dir,
            model_files: vec![],
            fleet_key: None,
            client_policy: state.join("client-policy.toml"),
            logs,
            parent: None,
            enclave: None,
            kms_child: Some(kms_child),
            enclave_argv: vec![],
            enclave_env: vec![],
            image,
        };

        // 3 and 4. A key, its policy from the measurements, and the models encrypted under it.
        runtime()?.block_on(stack.set_up_kms())?;
        stack.write_client_policy()?;
        // 5. The enclave's configuration (unless an image's file is used as it is).
        let config = match &stack.image {
            Some(_) => std::fs::read(&stack.config_file)?,
            None => {
                let config = stack.enclave_config()?;
                std::fs::write(&stack.config_file, &config)?;
                config.into_bytes()
            }
        };
        stack.config_sha384 = hex::encode(ring::digest::digest(&ring::digest::SHA384, &config));
        // 6. The parent, then the enclave.
        stack.start_parent()?;
        stack.enclave_argv = stack.enclave_args();
        if stack.options.start_enclave {
            stack.start_enclave()?;
        }
        Ok(stack)
    }

    async fn set_up_kms(&mut self) -> anyhow::Result<()> {
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
    fn write_client_policy(&self) -> anyhow::Result<()> {
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
        let policy = crate::policy::build_policy(&crate::policy::PolicyArgs {
            measurements: measurements.to_path_buf(),
            also: vec![],
            account: DEV_ACCOUNT.into(),
            enclave_role: self.options.enclave_role(),
            clients: vec![self.options.client_role()],
            admin: None,
            pcrs: vec![],
            allow_debug: false,
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

    /// The enclave's configuration file: every model under the stack's key, with its digest pinned.
    fn enclave_config(&self) -> anyhow::Result<String> {
        let mut c = format!(
            "# The dev stack's enclave configuration (written by veil dev; on hardware it is baked into the image).\n\
             [kms]\nregion = \"{}\"\nendpoint = \"{}\"\ntimeout_secs = 5\n\n[inference]\nintra_op_threads = {}\n",
            self.kms.region, self.kms.host_port, self.options.intra_op_threads
        );
        for (name, path) in &self.options.models {
            let sha384 = hex::encode(ring::digest::digest(&ring::digest::SHA384, &std::fs::read(path)?));
            c.push_str(&format!(
                "\n[[models]]\nname = \"{name}\"\nkms_key_arn = \"{}\"\nsha384 = \"{sha384}\"\n",
                self.kms.key_arn
            ));
        }
        if let Some((_, _, entry)) = &self.fleet_key {
            c.push_str(entry);
        }
        if !self.options.extra_config.is_empty() {
            c.push('\n');
            c.push_str(&self.options.extra_config);
            c.push('\n');
        }
        Ok(c)
    }

    /// The parent's arguments for links `enclave_addr` / `host_addr`, listening on `listen`.
    fn parent_argv(&self, listen: &str, enclave_addr: &str, host_addr: &str, ready_file: &Path) -> Vec<String> {
        let mut args = vec![
            "--listen".to_owned(),
            listen.to_owned(),
            "--enclave".to_owned(),
            enclave_addr.to_owned(),
            "--host-listen".to_owned(),
            host_addr.to_owned(),
            "--ready-file".to_owned(),
            ready_file.display().to_string(),
            "--kms-endpoint".to_owned(),
            match &self.kms.enclave_endpoint {
                // The enclave dials the configured endpoint; the parent takes it to the mock.
                Some(endpoint) => format!("{endpoint}={}", self.kms.host_port),
                None => self.kms.host_port.clone(),
            },
            "--credentials".to_owned(),
            "env".to_owned(),
        ];
        for (name, path) in &self.model_files {
            args.push("--model".into());
            args.push(format!("{name}={}", path.display()));
        }
        if let Some((name, path, _)) = &self.fleet_key {
            args.push("--ohttp-key".into());
            args.push(format!("{name}={}", path.display()));
        }
        args.extend(self.options.parent_args.iter().cloned());
        args
    }

    /// Starts a parent with `args`, logging to `log`: the child and its URL.
    fn launch_parent(&self, args: &[String], ready_file: &Path, log: &Path) -> anyhow::Result<(Child, String)> {
        let _ = std::fs::remove_file(ready_file);
        let creds = [
            ("AWS_ACCESS_KEY_ID", self.options.parent_access_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.options.secret_key.as_str()),
        ];
        let mut child = spawn(&self.options.bin_dir.join("veil-parent"), args, log, &creds, &self.options.log_filter)?;
        let info =
            ready::wait::<ParentReady>(ready_file, "veil-parent", Duration::from_secs(60), || exited(&mut child))
                .map_err(|e| anyhow::anyhow!("{e}\n{}", tail(log)))?;
        Ok((child, info.url))
    }

    fn start_parent(&mut self) -> anyhow::Result<()> {
        let ready_file = self.options.state_dir.join("parent.ready.json");
        let to_enclave = self.options.parent_to_enclave.clone().unwrap_or_else(|| self.enclave_addr.clone());
        let args = self.parent_argv(&self.options.listen.clone(), &to_enclave, &self.host_addr.clone(), &ready_file);
        let (child, url) = self.launch_parent(&args, &ready_file, &self.logs.join("parent.log"))?;
        self.url = url;
        self.parent = Some(child);
        Ok(())
    }

    /// Starts another parent and enclave from the same image, configuration, model files and fleet key,
    /// sharing the mock KMS (a second instance of a fleet behind a load balancer), and waits until it is
    /// ready. Its sockets and logs are in `state_dir/replica-N`.
    pub fn start_replica(&self, n: u32) -> anyhow::Result<Replica> {
        let dir = self.options.state_dir.join(format!("replica-{n}"));
        std::fs::create_dir_all(&dir)?;
        let (enclave_addr, host_addr) = match self.options.link {
            Link::Unix => (
                format!("unix://{}", dir.join("enclave.sock").display()),
                format!("unix://{}", dir.join("host.sock").display()),
            ),
            Link::Tcp => (format!("tcp://127.0.0.1:{}", free_port()?), format!("tcp://127.0.0.1:{}", free_port()?)),
        };
        let ready_file = dir.join("parent.ready.json");
        let args = self.parent_argv("tcp://127.0.0.1:0", &enclave_addr, &host_addr, &ready_file);
        let (parent, url) = self.launch_parent(&args, &ready_file, &dir.join("parent.log"))?;
        let mut argv = self.enclave_argv.clone();
        let set = |argv: &mut Vec<String>, flag: &str, value: String| {
            if let Some(i) = argv.iter().position(|a| a == flag) {
                argv[i + 1] = value;
            }
        };
        set(&mut argv, "--listen", enclave_addr);
        set(&mut argv, "--parent", host_addr);
        set(&mut argv, "--ready-file", dir.join("enclave.ready.json").display().to_string());
        let ort = self.options.ort_dylib.display().to_string();
        let enclave = spawn(
            &self.options.bin_dir.join("veil-enclave"),
            &argv,
            &dir.join("enclave.log"),
            &[("ORT_DYLIB_PATH", ort.as_str())],
            &self.options.log_filter,
        )?;
        let mut replica = Replica { url, dir, parent: Some(parent), enclave: Some(enclave) };
        replica.wait_ready(Duration::from_secs(180))?;
        Ok(replica)
    }

    fn enclave_args(&self) -> Vec<String> {
        let mut args = vec![
            "--config".to_owned(),
            self.config_file.display().to_string(),
            "--listen".to_owned(),
            self.enclave_addr.clone(),
            "--parent".to_owned(),
            self.options.enclave_to_host.clone().unwrap_or_else(|| self.host_addr.clone()),
            "--nsm".to_owned(),
            "mock".to_owned(),
            "--mock-root-dir".to_owned(),
            self.mock_nsm_dir.display().to_string(),
            "--dev-kms-ca".to_owned(),
            self.kms.ca_file.display().to_string(),
            "--ready-file".to_owned(),
            self.options.state_dir.join("enclave.ready.json").display().to_string(),
        ];
        args.extend(self.options.enclave_args.iter().cloned());
        args
    }

    /// The arguments the stack starts `veil-enclave` with.
    pub fn enclave_argv(&self) -> &[String] {
        &self.enclave_argv
    }

    /// Starts the enclave with `argv` and `env` (besides `ORT_DYLIB_PATH` and `RUST_LOG`) instead of the
    /// stack's own arguments (and keeps them for restarts), and waits until the parent reports it ready.
    pub fn start_enclave_with(&mut self, argv: Vec<String>, env: Vec<(String, String)>) -> anyhow::Result<()> {
        self.enclave_argv = argv;
        self.enclave_env = env;
        self.start_enclave()
    }

    /// Starts (or restarts) the enclave and waits until the parent reports it ready.
    pub fn start_enclave(&mut self) -> anyhow::Result<()> {
        let log = self.logs.join("enclave.log");
        let ort = self.options.ort_dylib.display().to_string();
        let bin = self.options.bin_dir.join("veil-enclave");
        let mut env = vec![("ORT_DYLIB_PATH", ort.as_str())];
        env.extend(self.enclave_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let child = spawn(&bin, &self.enclave_argv, &log, &env, &self.options.log_filter)?;
        self.enclave = Some(child);
        self.wait_ready(Duration::from_secs(180))
    }

    /// The enclave's ready file, once written.
    pub fn enclave_ready(&self) -> Option<EnclaveReady> {
        ready::read(&self.options.state_dir.join("enclave.ready.json")).ok().flatten()
    }

    /// Waits until `/readyz` answers 200 (every model loaded), reporting an enclave that exits first.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.enclave.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("veil-enclave exited ({status}):\n{}", tail(&self.logs.join("enclave.log")));
            }
            if let Ok((200, _)) = http_get(&self.url, "/readyz") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the stack was not ready within {timeout:?}; enclave log:\n{}",
                    tail(&self.logs.join("enclave.log"))
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Kills the enclave (as a crash would).
    pub fn kill_enclave(&mut self) {
        kill(&mut self.enclave);
    }

    /// Kills the mock KMS (as an outage would).
    pub fn kill_kms(&mut self) {
        kill(&mut self.kms_child);
    }

    /// Restarts the mock KMS on the same port and state.
    pub fn restart_kms(&mut self) -> anyhow::Result<()> {
        let (child, _) = self.kms.spawn_on(&self.options.bin_dir, &self.kms.host_port.clone())?;
        self.kms_child = Some(child);
        Ok(())
    }

    /// The first child that has exited, with its name and status (for `veil dev`'s watch).
    pub fn exited_child(&mut self) -> Option<(&'static str, String)> {
        for (name, child) in [
            ("veil-parent", &mut self.parent),
            ("veil-enclave", &mut self.enclave),
            ("veil-mock-kms", &mut self.kms_child),
        ] {
            if let Some(c) = child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Some((name, status.to_string()));
            }
        }
        None
    }

    /// The process ids of the children.
    pub fn pids(&self) -> (Option<u32>, Option<u32>, Option<u32>) {
        (
            self.parent.as_ref().map(Child::id),
            self.enclave.as_ref().map(Child::id),
            self.kms_child.as_ref().map(Child::id),
        )
    }

    /// The environment a client needs to seal requests for this stack (`veil infer`).
    pub fn client_env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.options.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.options.secret_key.clone()),
            ("VEIL_KMS_KEY_ID".into(), self.kms.key_id.clone()),
            ("VEIL_KMS_ENDPOINT".into(), self.kms.endpoint.clone()),
            ("VEIL_KMS_CA".into(), self.kms.ca_file.display().to_string()),
            ("VEIL_KMS_REGION".into(), self.kms.region.clone()),
            ("VEIL_ATTESTATION_ROOT".into(), self.mock_root.display().to_string()),
        ]
    }

    /// Stops every child: SIGTERM, then SIGKILL after five seconds.
    pub fn stop(&mut self) {
        for child in [&mut self.enclave, &mut self.parent, &mut self.kms_child] {
            if let Some(mut c) = child.take() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in [&mut self.enclave, &mut self.parent, &mut self.kms_child] {
            kill(child);
        }
    }
}

/// A second parent and enclave of the same stack ([`Stack::start_replica`]); killed when dropped.
#[derive(Debug)]
pub struct Replica {
    pub url: String,
    pub dir: PathBuf,
    parent: Option<Child>,
    enclave: Option<Child>,
}

impl Replica {
    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.enclave.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("replica veil-enclave exited ({status}):\n{}", tail(&self.dir.join("enclave.log")));
            }
            if let Ok((200, _)) = http_get(&self.url, "/readyz") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the replica was not ready within {timeout:?}:\n{}", tail(&self.dir.join("enclave.log")));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        kill(&mut self.enclave);
        kill(&mut self.parent);
    }
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn exited(child: &mut Child) -> Result<(), String> {
    match child.try_wait() {
        Ok(Some(status)) => Err(status.to_string()),
        _ => Ok(()),
    }
}

/// The last lines of a log.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn spawn(bin: &Path, args: &[String], log: &Path, envs: &[(&str, &str)], filter: &str) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err).env("RUST_LOG", filter);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    // Out of the terminal's process group: Ctrl-C reaches `veil dev`, which stops the children itself.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn().with_context(|| format!("starting {} (is it built?)", bin.display()))
}

/// A free TCP port on 127.0.0.1 (bound then released: fine on a quiet loopback).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A blocking HTTP/1.1 GET with no client library in between (for readiness): status and body.
pub fn http_get(base: &str, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let hostport = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(hostport)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").context("no HTTP header end")?;
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let status: u16 = head.split_whitespace().nth(1).context("no status")?.parse()?;
    Ok((status, resp[split + 4..].to_vec()))
}

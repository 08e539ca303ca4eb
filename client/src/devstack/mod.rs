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
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use veil_runtime::ready::{self, EnclaveReady, ParentReady};

mod children;
mod kms;
mod lifecycle;
mod supervise;

pub use children::{Replica, free_port, http_get, tail};
use children::{kill, spawn, wait_ready_or_kill};
use kms::ImageConfig;
pub use kms::MockKms;
pub use lifecycle::Role;
pub use supervise::{RestartPolicy, Supervisor, SupervisorEvent};

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
    /// The parent's audit log of the enclave's receipts and tree heads (`veil audit verify`).
    pub audit_log: PathBuf,
    pub logs: PathBuf,
    parent: Option<Child>,
    enclave: Option<Child>,
    kms_child: Option<Child>,
    enclave_argv: Vec<String>,
    enclave_env: Vec<(String, String)>,
    image: Option<ImageConfig>,
    /// How long the enclave's last start took, process start to every model loaded.
    enclave_startup: Option<Duration>,
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
        // Children append to their logs (a restarted child's log keeps what the one before said): a new
        // stack starts them afresh.
        for role in Role::ALL {
            let _ = std::fs::remove_file(logs.join(format!("{}.log", role.label())));
        }
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
            audit_log: state.join("audit"),
            logs,
            parent: None,
            enclave: None,
            kms_child: Some(kms_child),
            enclave_argv: vec![],
            enclave_env: vec![],
            image,
            enclave_startup: None,
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
    fn parent_argv(
        &self,
        listen: &str,
        enclave_addr: &str,
        host_addr: &str,
        ready_file: &Path,
        audit_log: &Path,
    ) -> Vec<String> {
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
            "--audit-log".to_owned(),
            audit_log.display().to_string(),
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
        let child = spawn(&self.options.bin_dir.join("veil-parent"), args, log, &creds, &self.options.log_filter)?;
        let (child, info) = wait_ready_or_kill::<ParentReady>(child, ready_file, "veil-parent", log)?;
        Ok((child, info.url))
    }

    fn start_parent(&mut self) -> anyhow::Result<()> {
        self.url = self.launch_parent_on(&self.options.listen.clone())?;
        Ok(())
    }

    /// Starts the parent listening on `listen` (first start and restarts alike) and waits for its ready
    /// file: the URL it serves.
    fn launch_parent_on(&mut self, listen: &str) -> anyhow::Result<String> {
        let ready_file = self.options.state_dir.join("parent.ready.json");
        let to_enclave = self.options.parent_to_enclave.clone().unwrap_or_else(|| self.enclave_addr.clone());
        let args = self.parent_argv(listen, &to_enclave, &self.host_addr.clone(), &ready_file, &self.audit_log.clone());
        let (child, url) = self.launch_parent(&args, &ready_file, &self.logs.join("parent.log"))?;
        self.parent = Some(child);
        Ok(url)
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
        let args = self.parent_argv("tcp://127.0.0.1:0", &enclave_addr, &host_addr, &ready_file, &dir.join("audit"));
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
        let started = Instant::now();
        self.spawn_enclave()?;
        self.wait_ready(Duration::from_secs(180))?;
        self.enclave_startup = Some(started.elapsed());
        Ok(())
    }

    /// Starts (or restarts) the enclave without waiting for it (a supervisor watches it come up).
    pub fn spawn_enclave(&mut self) -> anyhow::Result<()> {
        let log = self.logs.join("enclave.log");
        let ort = self.options.ort_dylib.display().to_string();
        let bin = self.options.bin_dir.join("veil-enclave");
        let mut env = vec![("ORT_DYLIB_PATH", ort.as_str())];
        env.extend(self.enclave_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let child = spawn(&bin, &self.enclave_argv, &log, &env, &self.options.log_filter)?;
        self.enclave = Some(child);
        Ok(())
    }

    /// How long the enclave's last [`Stack::start_enclave`] took, from process start to every model
    /// loaded (its cold start).
    pub fn enclave_startup(&self) -> Option<Duration> {
        self.enclave_startup
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
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in [&mut self.enclave, &mut self.parent, &mut self.kms_child] {
            kill(child);
        }
    }
}

//! Test kit for Veil's end-to-end tests and benchmarks.
//!
//! [`Stack`] starts the real `veil-parent` and `veil-enclave` binaries as child processes on real sockets
//! (TCP or Unix; these machines have no vsock loopback), waits until every model is loaded, and kills
//! both when dropped. Each stack lives in its own temporary directory and binds port 0 where it can, so
//! tests run in parallel without colliding.
//!
//! The binaries are found next to the test executable's `target/<profile>/` directory: run
//! `cargo build --workspace --bins` first (scripts/test.sh does). ONNX Runtime and the sample models come
//! from the scripts/setup.sh cache (`ORT_DYLIB_PATH`, `VEIL_MODELS_DIR`, or `~/.cache/veil`).
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

/// The cache directory scripts/setup.sh fills.
pub fn cache_dir() -> PathBuf {
    if let Some(c) = std::env::var_os("VEIL_CACHE") {
        return PathBuf::from(c);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache").join("veil")
}

/// Path of libonnxruntime.so, or an error that says to run the set-up script.
pub fn ort_dylib() -> anyhow::Result<PathBuf> {
    let p = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("onnxruntime-1.31.1").join("libonnxruntime.so.1.31.1"));
    anyhow::ensure!(p.is_file(), "ONNX Runtime not found at {}: run scripts/setup.sh", p.display());
    Ok(p)
}

/// Path of a sample model: `iris`, `minilm`, `breast_cancer` from the set-up cache, or a test model
/// committed in the repository (`models/NAME/NAME.onnx`, e.g. `datatypes`).
pub fn model_path(name: &str) -> anyhow::Result<PathBuf> {
    let in_repo = repo_root().join("models").join(name).join(format!("{name}.onnx"));
    if name == "datatypes" {
        return Ok(in_repo);
    }
    let dir = std::env::var_os("VEIL_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| cache_dir().join("models"));
    let p = dir.join(format!("{name}.onnx"));
    anyhow::ensure!(p.is_file(), "model {} not found: run scripts/setup.sh", p.display());
    Ok(p)
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The reference outputs computed with Python onnxruntime (`tests/data/references/NAME.json`).
pub fn references(model: &str) -> anyhow::Result<Value> {
    let p = repo_root().join("tests/data/references").join(format!("{model}.json"));
    let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// A Veil binary built in this workspace.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test>-<hash>  →  target/<profile>/<name>
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    anyhow::ensure!(p.is_file(), "{} not found: run `cargo build --workspace --bins` first", p.display());
    Ok(p)
}

/// Which transport the enclave link and host services use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Unix,
}

/// A running parent and enclave.
#[derive(Debug)]
pub struct Stack {
    pub url: String,
    pub enclave_addr: String,
    pub host_addr: String,
    pub dir: tempfile::TempDir,
    parent: Option<Child>,
    enclave: Option<Child>,
    models: Vec<String>,
    enclave_args: Vec<String>,
    /// The mock KMS set-up, for `kms` stacks.
    pub kms: Option<KmsInfo>,
    kms_child: Option<Child>,
    recording: Recording,
    data_key: std::sync::Mutex<Option<(Vec<u8>, Vec<u8>)>>,
}

/// Options for [`Stack::start`].
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub transport: Transport,
    pub models: Vec<String>,
    pub parent_args: Vec<String>,
    pub enclave_args: Vec<String>,
    /// Start the enclave too (false: a parent whose enclave is down).
    pub start_enclave: bool,
    /// Kept for readability at call sites: every stack is confidential (a mock KMS, a key whose policy
    /// releases data keys only to this enclave binary's mock PCRs, sealed requests only).
    pub kms: bool,
    /// Put recording proxies on both of the parent's links with the enclave (client traffic and host
    /// services, which carry the KMS relay): see [`Stack::recorded`].
    pub record: bool,
}

impl StackOptions {
    pub fn new(transport: Transport, models: &[&str]) -> Self {
        StackOptions {
            transport,
            models: models.iter().map(|s| s.to_string()).collect(),
            parent_args: vec![],
            enclave_args: vec![],
            start_enclave: true,
            kms: true,
            record: false,
        }
    }

    /// The confidential set-up (see [`StackOptions::kms`]).
    pub fn with_kms(mut self) -> Self {
        self.kms = true;
        self
    }
}

/// What a KMS stack set up in the mock KMS.
#[derive(Debug, Clone)]
pub struct KmsInfo {
    pub endpoint: String,
    pub host_port: String,
    pub ca_file: PathBuf,
    pub region: String,
    pub key_id: String,
    pub state_dir: PathBuf,
    pub measurements_file: PathBuf,
    pub attestation_root: PathBuf,
    pub log: PathBuf,
}

/// Credentials of the test stacks' clients (the mock KMS checks their shape, not the secret); the mock
/// knows them as [`TEST_CLIENT_ROLE`].
pub const TEST_ACCESS_KEY: &str = "AKIAVEILTESTSTACK000";
pub const TEST_SECRET_KEY: &str = "veil-test-secret";
/// The parent's credentials (served to the enclave): a session of [`TEST_ENCLAVE_ROLE`].
pub const TEST_PARENT_ACCESS_KEY: &str = "AKIAVEILTESTPARENT00";
/// The role the stacks' key policy lets decrypt (with the enclave's PCRs).
pub const TEST_ENCLAVE_ROLE: &str = "arn:aws:iam::111122223333:role/veil-test-parent";
/// The role the stacks' key policy lets create data keys.
pub const TEST_CLIENT_ROLE: &str = "arn:aws:iam::111122223333:role/veil-test-client";

impl KmsInfo {
    /// A KMS client configuration for this mock KMS.
    pub fn client_config(&self) -> veil_client::kms::KmsConfig {
        veil_client::kms::KmsConfig {
            region: Some(self.region.clone()),
            endpoint_url: Some(self.endpoint.clone()),
            ca_pem: std::fs::read(&self.ca_file).ok(),
            static_credentials: Some((TEST_ACCESS_KEY.into(), TEST_SECRET_KEY.into())),
        }
    }

    /// An SDK client for this mock KMS.
    pub async fn client(&self) -> anyhow::Result<aws_sdk_kms::Client> {
        Ok(veil_client::kms::kms_client(&self.client_config()).await?)
    }

    /// Puts a key policy from `measurements` (nitro-cli JSON) on the key.
    pub async fn put_policy_from(&self, measurements: &Path) -> anyhow::Result<()> {
        let policy = veil_client::cli::kms::build_policy(&veil_client::cli::kms::PolicyArgs {
            measurements: measurements.to_path_buf(),
            also: vec![],
            account: "111122223333".into(),
            enclave_role: TEST_ENCLAVE_ROLE.into(),
            clients: vec![TEST_CLIENT_ROLE.into()],
            admin: None,
            pcrs: vec![],
            allow_debug: false,
            output: None,
        })?;
        self.client()
            .await?
            .put_key_policy()
            .key_id(&self.key_id)
            .policy_name("default")
            .policy(policy.to_string())
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("PutKeyPolicy: {}", aws_sdk_kms::error::DisplayErrorContext(e)))?;
        Ok(())
    }

    /// Starts the mock KMS process (again) on its endpoint's port and state dir.
    pub fn spawn(&self) -> anyhow::Result<Child> {
        Ok(self.spawn_on(&self.host_port)?.0)
    }

    /// Starts the mock KMS listening on `host_port` (port 0: any free port); returns the process and the
    /// endpoint it reports.
    fn spawn_on(&self, host_port: &str) -> anyhow::Result<(Child, String)> {
        let ready = self.state_dir.with_extension("ready.json");
        let _ = std::fs::remove_file(&ready);
        let args = vec![
            "--listen".to_owned(),
            format!("tcp://{host_port}"),
            "--state-dir".to_owned(),
            self.state_dir.display().to_string(),
            "--attestation-root".to_owned(),
            self.attestation_root.display().to_string(),
            "--ready-file".to_owned(),
            ready.display().to_string(),
            "--principal".to_owned(),
            format!("{TEST_ACCESS_KEY}={TEST_CLIENT_ROLE}"),
            "--principal".to_owned(),
            format!("{TEST_PARENT_ACCESS_KEY}=arn:aws:sts::111122223333:assumed-role/veil-test-parent/i-0veiltest"),
        ];
        let mut child = spawn(&bin("veil-mock-kms")?, &args, &self.log, &[])?;
        let info = wait_file(&ready, &mut child, "veil-mock-kms", &self.log)?;
        let endpoint = info["endpoint"].as_str().context("mock KMS ready file: no endpoint")?.to_owned();
        Ok((child, endpoint))
    }
}

/// Bytes seen by a recording proxy, both directions.
pub type Recording = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

/// A Unix-socket proxy from `listen` to `target` that appends every byte it forwards to a recording.
fn recording_proxy(listen: PathBuf, target: String, recording: Recording) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let listener = std::os::unix::net::UnixListener::bind(&listen)?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { return };
            let target = target.clone();
            let recording = recording.clone();
            std::thread::spawn(move || {
                let upstream = match target.strip_prefix("unix://") {
                    Some(p) => std::os::unix::net::UnixStream::connect(p),
                    None => return,
                };
                let Ok(upstream) = upstream else { return };
                let pipe = |mut from: std::os::unix::net::UnixStream,
                            mut to: std::os::unix::net::UnixStream,
                            rec: Recording| {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if let Ok(mut r) = rec.lock() {
                            r.extend_from_slice(&buf[..n]);
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                };
                let (c2, u2) = match (client.try_clone(), upstream.try_clone()) {
                    (Ok(c), Ok(u)) => (c, u),
                    _ => return,
                };
                let r2 = recording.clone();
                let t = std::thread::spawn(move || pipe(c2, u2, r2));
                pipe(upstream, client, recording);
                let _ = t.join();
            });
        }
    });
    Ok(())
}

/// A free TCP port on 127.0.0.1 (bound then released: fine on a quiet loopback).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_file(path: &Path, child: &mut Child, what: &str, log: &Path) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(bytes) = std::fs::read(path) {
            return Ok(serde_json::from_slice(&bytes)?);
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited ({status}): {}", std::fs::read_to_string(log).unwrap_or_default());
        }
        if Instant::now() > deadline {
            bail!("{what} did not start within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Stack {
    /// Starts a parent and (unless told not to) an enclave serving `options.models`.
    pub fn start(options: StackOptions) -> anyhow::Result<Stack> {
        let dir = tempfile::Builder::new().prefix("veil-test-").tempdir()?;
        let (enclave_addr, host_addr) = match options.transport {
            Transport::Tcp => {
                (format!("tcp://127.0.0.1:{}", free_port()?), format!("tcp://127.0.0.1:{}", free_port()?))
            }
            Transport::Unix => (
                format!("unix://{}", dir.path().join("enclave.sock").display()),
                format!("unix://{}", dir.path().join("host.sock").display()),
            ),
        };
        let recording: Recording = Default::default();
        // With recording, the parent dials the enclave through a proxy, and the enclave dials the parent's
        // host services through another: every byte the parent exchanges with the enclave is recorded.
        let (parent_enclave_addr, enclave_host_addr) = if options.record {
            anyhow::ensure!(options.transport == Transport::Unix, "recording proxies are Unix-socket only");
            let to_enclave = dir.path().join("rec-enclave.sock");
            let to_host = dir.path().join("rec-host.sock");
            recording_proxy(to_enclave.clone(), enclave_addr.clone(), recording.clone())?;
            recording_proxy(to_host.clone(), host_addr.clone(), recording.clone())?;
            (format!("unix://{}", to_enclave.display()), format!("unix://{}", to_host.display()))
        } else {
            (enclave_addr.clone(), host_addr.clone())
        };
        let mock_root_dir = dir.path().join("mock-nsm");
        let (kms, kms_child) = Self::start_kms(dir.path(), &mock_root_dir).map(|(i, c)| (Some(i), Some(c)))?;
        let mut parent_args = vec![
            "--listen".to_owned(),
            "tcp://127.0.0.1:0".to_owned(),
            "--enclave".to_owned(),
            parent_enclave_addr,
            "--host-listen".to_owned(),
            host_addr.clone(),
            "--ready-file".to_owned(),
            dir.path().join("parent.ready").display().to_string(),
        ];
        for m in &options.models {
            parent_args.push("--model".into());
            parent_args.push(format!("{m}={}", model_path(m)?.display()));
        }
        if let Some(k) = &kms {
            parent_args.extend(["--kms-endpoint".into(), k.host_port.clone(), "--credentials".into(), "env".into()]);
        }
        parent_args.extend(options.parent_args.iter().cloned());
        let parent_log = dir.path().join("parent.log");
        let creds = [
            ("AWS_ACCESS_KEY_ID", Path::new(TEST_PARENT_ACCESS_KEY)),
            ("AWS_SECRET_ACCESS_KEY", Path::new(TEST_SECRET_KEY)),
        ];
        let mut parent = spawn(&bin("veil-parent")?, &parent_args, &parent_log, &creds)?;
        let ready = wait_file(&dir.path().join("parent.ready"), &mut parent, "veil-parent", &parent_log)?;
        let url = ready["url"].as_str().context("parent ready file has no url")?.to_owned();

        let mut enclave_args = vec![
            "--listen".to_owned(),
            enclave_addr.clone(),
            "--parent".to_owned(),
            enclave_host_addr,
            "--nsm".to_owned(),
            "mock".to_owned(),
            "--mock-root-dir".to_owned(),
            mock_root_dir.display().to_string(),
        ];
        if let Some(k) = &kms {
            enclave_args.extend([
                "--kms-region".into(),
                k.region.clone(),
                "--kms-endpoint".into(),
                k.host_port.clone(),
                "--kms-ca".into(),
                k.ca_file.display().to_string(),
                "--kms-timeout-secs".into(),
                "5".into(),
            ]);
        }
        for m in &options.models {
            enclave_args.push("--model".into());
            enclave_args.push(m.clone());
        }
        enclave_args.extend(options.enclave_args.iter().cloned());
        let mut stack = Stack {
            url,
            enclave_addr,
            host_addr,
            dir,
            parent: Some(parent),
            enclave: None,
            models: options.models.clone(),
            enclave_args,
            kms,
            kms_child,
            recording,
            data_key: Default::default(),
        };
        if options.start_enclave {
            stack.start_enclave()?;
        }
        Ok(stack)
    }

    fn start_kms(dir: &Path, mock_root_dir: &Path) -> anyhow::Result<(KmsInfo, Child)> {
        let out = Command::new(bin("veil-enclave")?)
            .args(["--nsm", "mock", "--mock-measurements", "--mock-root-dir"])
            .arg(mock_root_dir)
            .stderr(Stdio::null())
            .output()?;
        anyhow::ensure!(out.status.success(), "veil-enclave --mock-measurements failed");
        let measurements_file = dir.join("measurements.json");
        std::fs::write(&measurements_file, &out.stdout)?;
        let mut info = KmsInfo {
            endpoint: String::new(),
            host_port: String::new(),
            ca_file: dir.join("kms").join("ca.pem"),
            region: "us-east-1".into(),
            key_id: String::new(),
            state_dir: dir.join("kms"),
            measurements_file: measurements_file.clone(),
            attestation_root: mock_root_dir.join("mock-root.pem"),
            log: dir.join("kms.log"),
        };
        // Port 0: the mock KMS picks a free port and reports it; restarts reuse that port.
        let (child, endpoint) = info.spawn_on("127.0.0.1:0")?;
        info.host_port = endpoint.trim_start_matches("https://").to_owned();
        info.endpoint = endpoint;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        info.key_id = rt.block_on(async {
            let kms = info.client().await?;
            let created = kms
                .create_key()
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("CreateKey: {}", aws_sdk_kms::error::DisplayErrorContext(e)))?;
            anyhow::Ok(created.key_metadata().map(|m| m.key_id().to_owned()).context("no key id")?)
        })?;
        rt.block_on(info.put_policy_from(&measurements_file))?;
        Ok((info, child))
    }

    /// Kills the mock KMS (as an outage would).
    pub fn kill_kms(&mut self) {
        if let Some(mut c) = self.kms_child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts the mock KMS on the same port and state.
    pub fn restart_kms(&mut self) -> anyhow::Result<()> {
        let info = self.kms.clone().context("not a KMS stack")?;
        self.kms_child = Some(info.spawn()?);
        Ok(())
    }

    /// A data key of this stack's KMS key (plaintext, blob), made on first use: the stack's own client.
    fn stack_key(&self) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let mut slot = self.data_key.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        if let Some(k) = slot.as_ref() {
            return Ok(k.clone());
        }
        let k = self.kms.as_ref().context("not a KMS stack")?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let pair = rt.block_on(async {
            let out = k
                .client()
                .await?
                .generate_data_key()
                .key_id(&k.key_id)
                .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("GenerateDataKey: {}", aws_sdk_kms::error::DisplayErrorContext(e)))?;
            anyhow::Ok((
                out.plaintext().context("no plaintext")?.as_ref().to_vec(),
                out.ciphertext_blob().context("no blob")?.as_ref().to_vec(),
            ))
        })?;
        *slot = Some(pair.clone());
        Ok(pair)
    }

    /// Seals a v2 request for `model` under the stack's data key: the wire body and what opens the answer.
    pub fn seal(
        &self,
        model: &str,
        plaintext: &[u8],
    ) -> anyhow::Result<(Vec<u8>, veil_protocol::envelope::RequestTag)> {
        let (dk, blob) = self.stack_key()?;
        let key = veil_protocol::envelope::DataKey::new(&dk)?;
        let k = self.kms.as_ref().context("not a KMS stack")?;
        let ctx = std::collections::BTreeMap::new();
        let sealer = veil_protocol::envelope::Sealer {
            key: &key,
            key_id: &k.key_id,
            encrypted_data_key: &blob,
            encryption_context: &ctx,
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        Ok(sealer.seal_request(model, plaintext, now)?)
    }

    /// Opens the enclave's sealed answer to a request made with [`Stack::seal`].
    pub fn open(
        &self,
        model: &str,
        tag: &veil_protocol::envelope::RequestTag,
        answer: &[u8],
    ) -> anyhow::Result<Vec<u8>> {
        let (dk, blob) = self.stack_key()?;
        let key = veil_protocol::envelope::DataKey::new(&dk)?;
        let k = self.kms.as_ref().context("not a KMS stack")?;
        let ctx = std::collections::BTreeMap::new();
        let sealer = veil_protocol::envelope::Sealer {
            key: &key,
            key_id: &k.key_id,
            encrypted_data_key: &blob,
            encryption_context: &ctx,
        };
        Ok(sealer.open_response(model, tag, answer)?.to_vec())
    }

    /// Sends a v2 request sealed, over plain HTTP, and returns (HTTP status, JSON): the opened answer, or for
    /// failures `{"error", "kind"}`, whether the parent answered them (envelope, routing) or the enclave
    /// sealed them (about the request itself: reported here as 400, 404 or 500 by kind).
    pub fn infer(&self, model: &str, plaintext: &[u8]) -> anyhow::Result<(u16, Value)> {
        let (wire, tag) = self.seal(model, plaintext)?;
        let (status, body) = http_raw(&self.url, "POST", &format!("/v1/models/{model}/infer"), &wire)?;
        if status != 200 {
            let v = serde_json::from_slice(&body)
                .unwrap_or_else(|_| serde_json::json!({"raw": String::from_utf8_lossy(&body)}));
            return Ok((status, v));
        }
        let opened: Value = serde_json::from_slice(&self.open(model, &tag, &body)?)?;
        if let (Some(kind), None) = (opened.get("kind").and_then(|k| k.as_str()), opened.get("outputs")) {
            let status = match kind {
                "not_found" => 404,
                "internal" => 500,
                _ => 400,
            };
            return Ok((status, opened));
        }
        Ok((200, opened))
    }

    /// The environment `veil infer` needs to seal for this stack (KMS endpoint, CA, key, credentials).
    pub fn client_env(&self) -> Vec<(String, String)> {
        let Some(k) = &self.kms else { return Vec::new() };
        vec![
            ("AWS_ACCESS_KEY_ID".into(), TEST_ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), TEST_SECRET_KEY.into()),
            ("VEIL_KMS_KEY_ID".into(), k.key_id.clone()),
            ("VEIL_KMS_ENDPOINT".into(), k.endpoint.clone()),
            ("VEIL_KMS_CA".into(), k.ca_file.display().to_string()),
            ("VEIL_KMS_REGION".into(), k.region.clone()),
        ]
    }

    /// Every byte the recording proxies forwarded so far (both links, both directions).
    pub fn recorded(&self) -> Vec<u8> {
        self.recording.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// A client session under this stack's KMS key.
    pub async fn session(
        &self,
        context: std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<veil_client::kms::Session> {
        let k = self.kms.as_ref().context("not a KMS stack")?;
        Ok(veil_client::kms::Session::new(
            k.client().await?,
            &k.key_id,
            context,
            veil_client::kms::SessionLimits::default(),
        ))
    }

    /// Starts (or restarts) the enclave and waits until the parent reports it ready.
    pub fn start_enclave(&mut self) -> anyhow::Result<()> {
        let log = self.dir.path().join("enclave.log");
        let ort = ort_dylib()?;
        let child = spawn(&bin("veil-enclave")?, &self.enclave_args, &log, &[("ORT_DYLIB_PATH", ort.as_path())])?;
        self.enclave = Some(child);
        self.wait_ready(Duration::from_secs(120))
    }

    /// Kills the enclave (as a crash would).
    pub fn kill_enclave(&mut self) {
        if let Some(mut c) = self.enclave.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.enclave.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("veil-enclave exited ({status}): {}", self.enclave_log());
            }
            if let Ok((200, _)) = http_get(&self.url, "/readyz") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("stack not ready within {timeout:?}; enclave log:\n{}", self.enclave_log());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The enclave's log so far.
    pub fn enclave_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("enclave.log")).unwrap_or_default()
    }

    /// The parent's log so far.
    pub fn parent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("parent.log")).unwrap_or_default()
    }

    /// The mock NSM's root certificate (PEM), written by the enclave at start.
    pub fn mock_root_pem(&self) -> PathBuf {
        self.dir.path().join("mock-nsm").join("mock-root.pem")
    }

    /// Models served.
    pub fn models(&self) -> &[String] {
        &self.models
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for c in [self.enclave.as_mut(), self.parent.as_mut(), self.kms_child.as_mut()].into_iter().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(bin: &Path, args: &[String], log: &Path, envs: &[(&str, &Path)]) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err).env("RUST_LOG", "info");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().with_context(|| format!("starting {}", bin.display()))
}

/// A blocking HTTP/1.1 GET with no client library in between: returns the status and body.
pub fn http_get(base: &str, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    http_raw(base, "GET", path, b"")
}

/// A blocking HTTP/1.1 request (Connection: close).
pub fn http_raw(base: &str, method: &str, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let hostport = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(hostport)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").context("no HTTP header end")?;
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let status: u16 = head.split_whitespace().nth(1).context("no status")?.parse()?;
    let mut body = resp[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body)?;
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").context("bad chunk")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..line_end])?.trim(), 16)?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Compares a v2 response's outputs with a reference case's outputs, within the case's tolerance.
/// Returns a description of the first difference.
pub fn compare_outputs(got: &Value, case: &Value) -> Result<(), String> {
    let tol = &case["tolerance"];
    let atol = tol["atol"].as_f64().unwrap_or(0.0);
    let rtol = tol["rtol"].as_f64().unwrap_or(0.0);
    let want = case["outputs"].as_array().ok_or("reference case has no outputs")?;
    let outs = got["outputs"].as_array().ok_or("response has no outputs")?;
    for w in want {
        let name = w["name"].as_str().unwrap_or_default();
        let g = outs.iter().find(|o| o["name"] == w["name"]).ok_or(format!("output {name} missing"))?;
        if g["shape"] != w["shape"] {
            return Err(format!("output {name}: shape {} != {}", g["shape"], w["shape"]));
        }
        if g["datatype"] != w["datatype"] {
            return Err(format!("output {name}: datatype {} != {}", g["datatype"], w["datatype"]));
        }
        let gd = g["data"].as_array().ok_or(format!("output {name}: no data"))?;
        let wd = w["data"].as_array().ok_or(format!("reference {name}: no data"))?;
        if gd.len() != wd.len() {
            return Err(format!("output {name}: {} elements != {}", gd.len(), wd.len()));
        }
        for (i, (a, b)) in gd.iter().zip(wd).enumerate() {
            let (a, b) = (a.as_f64().ok_or("non-number")?, b.as_f64().ok_or("non-number")?);
            if (a - b).abs() > atol + rtol * b.abs() {
                return Err(format!("output {name}[{i}]: {a} vs reference {b} (atol {atol}, rtol {rtol})"));
            }
        }
        if let Some(keys) = w.get("map_keys")
            && g["parameters"]["zipmap_keys"] != *keys
        {
            return Err(format!("output {name}: zipmap_keys {} != {}", g["parameters"]["zipmap_keys"], keys));
        }
    }
    Ok(())
}

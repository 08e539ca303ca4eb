//! Test kit for Veil's end-to-end tests and benchmarks.
//!
//! [`Stack`] starts the stack `veil dev` runs (through the same builder, [`veil_client::devstack`]): the
//! mock KMS, the real `veil-parent` and `veil-enclave` binaries as child processes on real sockets (TCP or
//! Unix; these machines have no vsock loopback), encrypted models and the enclave's configuration file;
//! waits until every model is loaded, and kills everything when dropped. Each stack lives in its own
//! temporary directory and binds port 0 where it can, so tests run in parallel without colliding.
//!
//! The binaries are found next to the test executable's `target/<profile>/` directory: run
//! `cargo build --workspace --bins` first (scripts/test.sh does). ONNX Runtime and the sample models come
//! from the scripts/setup.sh cache (`ORT_DYLIB_PATH`, `VEIL_MODELS_DIR`, or `~/.cache/veil`).
pub mod hostile;

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::BTreeMap;

use anyhow::Context;
use aws_sdk_kms::types::DataKeySpec;
use serde_json::Value;
use veil_client::devstack::{self, MockKms};
use veil_protocol::envelope::{DataKey, ModelRef, Outcome, RequestMeta, RequestTag, Sealer};
use veil_protocol::random::SystemRandom;

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
/// committed in the repository (`models/NAME/NAME.onnx`: `datatypes`, `more_types`).
pub fn model_path(name: &str) -> anyhow::Result<PathBuf> {
    let in_repo = repo_root().join("models").join(name).join(format!("{name}.onnx"));
    if in_repo.is_file() {
        return Ok(in_repo);
    }
    let dir = std::env::var_os("VEIL_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| cache_dir().join("models"));
    let p = dir.join(format!("{name}.onnx"));
    anyhow::ensure!(p.is_file(), "model {} not found: run scripts/setup.sh", p.display());
    Ok(p)
}

/// A v2 request with every input as binary tensor data (FP32 and INT64 inputs: what the sample models
/// take) and every output asked for as binary, as `tritonclient` or `curl --data-binary` would send it:
/// the body and its JSON header's length (`Inference-Header-Content-Length`).
pub fn binary_request(request: &Value) -> (Vec<u8>, usize) {
    let mut header = serde_json::json!({"inputs": [], "parameters": {"binary_data_output": true}});
    let mut blob = Vec::new();
    for i in request["inputs"].as_array().into_iter().flatten() {
        let data = i["data"].as_array().map(Vec::as_slice).unwrap_or_default();
        let bytes: Vec<u8> = match i["datatype"].as_str() {
            Some("FP32") => data.iter().flat_map(|x| (x.as_f64().unwrap_or(0.0) as f32).to_le_bytes()).collect(),
            Some("INT64") => data.iter().flat_map(|x| x.as_i64().unwrap_or(0).to_le_bytes()).collect(),
            other => panic!("binary_request takes FP32 and INT64 inputs, not {other:?}"),
        };
        if let Some(inputs) = header["inputs"].as_array_mut() {
            inputs.push(serde_json::json!({
                "name": i["name"], "shape": i["shape"], "datatype": i["datatype"],
                "parameters": {"binary_data_size": bytes.len()}
            }));
        }
        blob.extend(bytes);
    }
    let mut body = serde_json::to_vec(&header).unwrap_or_default();
    let n = body.len();
    body.extend(blob);
    (body, n)
}

/// The test venv's interpreter (tests/python/requirements.txt: pyhpke, tritonclient), from
/// `VEIL_TEST_PYTHON`, which scripts/test.sh sets. Tests that need it fail without it: they never pass by
/// skipping.
pub fn test_python() -> PathBuf {
    match std::env::var_os("VEIL_TEST_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "VEIL_TEST_PYTHON is not set: run scripts/test.sh, which creates the test venv from \
             tests/python/requirements.txt and sets it, or set VEIL_TEST_PYTHON to a Python that has those \
             packages (e.g. ~/.cache/veil/test-venv/bin/python)"
        ),
    }
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

/// A running stack: the one `veil dev` runs ([`veil_client::devstack`]), with the test kit's helpers.
#[derive(Debug)]
pub struct Stack {
    pub url: String,
    pub enclave_addr: String,
    pub host_addr: String,
    /// The mock KMS and the key the stack set up.
    pub kms: MockKms,
    pub dir: tempfile::TempDir,
    inner: devstack::Stack,
    recording: Recording,
    data_key: std::sync::Mutex<Option<(Vec<u8>, Vec<u8>)>>,
    /// Model digests, hashed once: hashing MiniLM's 22 MB per call would dominate what benchmarks time.
    digests: std::sync::Mutex<BTreeMap<String, [u8; 48]>>,
}

/// Options for [`Stack::start`].
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub transport: Transport,
    pub models: Vec<String>,
    pub parent_args: Vec<String>,
    pub enclave_args: Vec<String>,
    /// Lines appended to the enclave's configuration file (a `[limits]` table, say).
    pub enclave_config: String,
    /// Start the enclave too (false: a parent whose enclave is down).
    pub start_enclave: bool,
    /// Put recording proxies on both of the parent's links with the enclave (client traffic and host
    /// services, which carry the KMS relay): see [`Stack::recorded`].
    pub record: bool,
    /// An image's enclave configuration to run as it is ([`devstack::Options::image_config`]).
    pub image_config: Option<PathBuf>,
    /// Attested-key mode with a fleet key ([`devstack::Options::ohttp_fleet_key`]).
    pub ohttp_fleet_key: bool,
}

impl StackOptions {
    pub fn new(transport: Transport, models: &[&str]) -> Self {
        StackOptions {
            transport,
            models: models.iter().map(|s| s.to_string()).collect(),
            parent_args: vec![],
            enclave_args: vec![],
            enclave_config: String::new(),
            start_enclave: true,
            record: false,
            image_config: None,
            ohttp_fleet_key: false,
        }
    }
}

/// Credentials of the test stacks' clients (the mock KMS checks their shape, not the secret); the mock
/// knows them as [`TEST_CLIENT_ROLE`].
pub const TEST_ACCESS_KEY: &str = "AKIAVEILTESTSTACK000";
pub const TEST_SECRET_KEY: &str = "veil-test-secret";
/// The parent's credentials (served to the enclave): a session of [`TEST_ENCLAVE_ROLE`].
pub const TEST_PARENT_ACCESS_KEY: &str = "AKIAVEILTESTPARENT00";
/// The role the key policy lets decrypt (with a matching attestation document).
pub const TEST_ENCLAVE_ROLE: &str = "arn:aws:iam::111122223333:role/veil-test-parent";
/// The role the key policy lets create data keys.
pub const TEST_CLIENT_ROLE: &str = "arn:aws:iam::111122223333:role/veil-test-client";

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
    devstack::free_port()
}

/// What a sealed request came back as: the enclave's outcome (authenticated), or the parent's word.
#[derive(Debug)]
pub enum Reply {
    /// The enclave's sealed outcome, opened: the answer's JSON, or its error.
    Sealed { outcome: Outcome, body: Vec<u8>, model_sha384: [u8; 48] },
    /// The parent answered an error (not authenticated).
    Clear { status: u16, body: Value },
}

impl Stack {
    /// Starts a parent and (unless told not to) an enclave serving `options.models`, through the same
    /// builder as `veil dev`: mock KMS, a key whose policy names this enclave binary's mock PCRs, encrypted
    /// models, the enclave's configuration file.
    pub fn start(options: StackOptions) -> anyhow::Result<Stack> {
        let dir = tempfile::Builder::new().prefix("veil-test-").tempdir()?;
        let mut models = Vec::new();
        for m in &options.models {
            models.push((m.clone(), model_path(m)?));
        }
        let bin_dir = bin("veil-enclave")?.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut o = devstack::Options::new(dir.path().to_path_buf(), bin_dir, ort_dylib()?, models);
        o.link = match options.transport {
            Transport::Tcp => devstack::Link::Tcp,
            Transport::Unix => devstack::Link::Unix,
        };
        o.parent_args = options.parent_args.clone();
        o.enclave_args = options.enclave_args.clone();
        o.extra_config = options.enclave_config.clone();
        o.start_enclave = options.start_enclave;
        o.image_config = options.image_config.clone();
        o.ohttp_fleet_key = options.ohttp_fleet_key;
        o.access_key = TEST_ACCESS_KEY.into();
        o.parent_access_key = TEST_PARENT_ACCESS_KEY.into();
        o.secret_key = TEST_SECRET_KEY.into();
        o.roles = "veil-test".into();
        let recording: Recording = Default::default();
        if options.record {
            // The parent dials the enclave through a proxy, and the enclave dials the parent's host services
            // through another: every byte the parent exchanges with the enclave is recorded.
            anyhow::ensure!(options.transport == Transport::Unix, "recording proxies are Unix-socket only");
            let to_enclave = dir.path().join("rec-enclave.sock");
            let to_host = dir.path().join("rec-host.sock");
            recording_proxy(
                to_enclave.clone(),
                format!("unix://{}", dir.path().join("enclave.sock").display()),
                recording.clone(),
            )?;
            recording_proxy(
                to_host.clone(),
                format!("unix://{}", dir.path().join("host.sock").display()),
                recording.clone(),
            )?;
            o.parent_to_enclave = Some(format!("unix://{}", to_enclave.display()));
            o.enclave_to_host = Some(format!("unix://{}", to_host.display()));
        }
        let inner = devstack::Stack::start(o)?;
        Ok(Stack {
            url: inner.url.clone(),
            enclave_addr: inner.enclave_addr.clone(),
            host_addr: inner.host_addr.clone(),
            kms: inner.kms.clone(),
            dir,
            inner,
            recording,
            data_key: Default::default(),
            digests: Default::default(),
        })
    }

    /// The stack builder underneath (configuration file, logs, processes).
    pub fn inner(&mut self) -> &mut devstack::Stack {
        &mut self.inner
    }

    /// The SHA-384 of a model the stack serves (of its plaintext file).
    pub fn digest(&self, model: &str) -> [u8; 48] {
        if let Some(d) = self.digests.lock().ok().and_then(|m| m.get(model).copied()) {
            return d;
        }
        let path = model_path(model).unwrap_or_default();
        let d = ring::digest::digest(&ring::digest::SHA384, &std::fs::read(path).unwrap_or_default());
        let d: [u8; 48] = d.as_ref().try_into().unwrap_or([0; 48]);
        if let Ok(mut m) = self.digests.lock() {
            m.insert(model.to_owned(), d);
        }
        d
    }

    /// The model reference a client seals for: name and digest.
    pub fn model_ref(&self, model: &str) -> ModelRef {
        ModelRef { name: model.to_owned(), sha384: self.digest(model) }
    }

    /// A data key of this stack's KMS key (plaintext, blob), made on first use: the stack's own client.
    fn stack_key(&self) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let mut slot = self.data_key.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        if let Some(k) = slot.as_ref() {
            return Ok(k.clone());
        }
        let pair = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(self.data_key(&BTreeMap::new()))?;
        *slot = Some(pair.clone());
        Ok(pair)
    }

    /// A fresh data key of this stack's KMS key under `context`: (plaintext, blob).
    pub async fn data_key(&self, context: &BTreeMap<String, String>) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let mut req =
            self.kms.client().await?.generate_data_key().key_id(&self.kms.key_id).key_spec(DataKeySpec::Aes256);
        for (a, b) in context {
            req = req.encryption_context(a, b);
        }
        let out = req
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("GenerateDataKey: {}", aws_sdk_kms::error::DisplayErrorContext(e)))?;
        Ok((
            out.plaintext().context("no plaintext")?.as_ref().to_vec(),
            out.ciphertext_blob().context("no blob")?.as_ref().to_vec(),
        ))
    }

    /// Seals a v2 request for `model` under the stack's data key: the wire body and what opens the answer.
    pub fn seal(&self, model: &str, plaintext: &[u8]) -> anyhow::Result<(Vec<u8>, RequestTag)> {
        let (dk, blob) = self.stack_key()?;
        let key = DataKey::new(&dk)?;
        let ctx = BTreeMap::new();
        let sealer =
            Sealer { key: &key, key_id: &self.kms.key_arn, encrypted_data_key: &blob, encryption_context: &ctx };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        Ok(sealer.seal_request(&self.model_ref(model), plaintext, RequestMeta::default(), now, &SystemRandom::new())?)
    }

    /// Opens the enclave's sealed answer to a request made with [`Stack::seal`]: the outcome and the body.
    pub fn open(&self, tag: &RequestTag, answer: &[u8]) -> anyhow::Result<(Outcome, Vec<u8>)> {
        let (dk, blob) = self.stack_key()?;
        let key = DataKey::new(&dk)?;
        let ctx = BTreeMap::new();
        let sealer =
            Sealer { key: &key, key_id: &self.kms.key_arn, encrypted_data_key: &blob, encryption_context: &ctx };
        let mut buf = answer.to_vec();
        let opened = sealer.open_answer(tag, &mut buf)?;
        Ok((opened.meta.outcome, opened.body.to_vec()))
    }

    /// Sends a v2 request sealed, over plain HTTP: the enclave's opened outcome, or the parent's error.
    pub fn send(&self, model: &str, plaintext: &[u8]) -> anyhow::Result<Reply> {
        let (wire, tag) = self.seal(model, plaintext)?;
        let (status, body) = http_raw(&self.url, "POST", &format!("/v1/models/{model}/infer"), &wire)?;
        if status != 200 {
            let v = serde_json::from_slice(&body)
                .unwrap_or_else(|_| serde_json::json!({"raw": String::from_utf8_lossy(&body)}));
            return Ok(Reply::Clear { status, body: v });
        }
        let (outcome, body) = self.open(&tag, &body)?;
        Ok(Reply::Sealed { outcome, body, model_sha384: tag.model.sha384 })
    }

    /// As [`Stack::send`], flattened for tests that compare JSON: (HTTP status, JSON). A sealed answer is
    /// 200 and its JSON; a sealed error is its kind's status and `{"error", "kind", "sealed": true}`; the
    /// parent's errors are their status and body.
    pub fn infer(&self, model: &str, plaintext: &[u8]) -> anyhow::Result<(u16, Value)> {
        Ok(match self.send(model, plaintext)? {
            Reply::Sealed { outcome: Outcome::Answer { .. }, body, .. } => (200, serde_json::from_slice(&body)?),
            Reply::Sealed { outcome: Outcome::Error(e), .. } => {
                (e.kind.http_status(), serde_json::json!({"error": e.message, "kind": e.kind.label(), "sealed": true}))
            }
            Reply::Clear { status, body } => (status, body),
        })
    }

    /// The environment `veil infer` needs to seal for this stack (KMS endpoint, CA, key, credentials,
    /// attestation root).
    pub fn client_env(&self) -> Vec<(String, String)> {
        self.inner.client_env()
    }

    /// Every byte the recording proxies forwarded so far (both links, both directions).
    pub fn recorded(&self) -> Vec<u8> {
        self.recording.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// A client session under this stack's KMS key.
    pub async fn session(&self, context: BTreeMap<String, String>) -> anyhow::Result<veil_client::kms::Session> {
        Ok(veil_client::kms::Session::new(
            self.kms.client().await?,
            &self.kms.key_id,
            context,
            veil_client::kms::SessionLimits::default(),
        ))
    }

    /// Starts (or restarts) the enclave and waits until the parent reports it ready.
    pub fn start_enclave(&mut self) -> anyhow::Result<()> {
        self.inner.start_enclave()
    }

    /// Kills the enclave (as a crash would).
    pub fn kill_enclave(&mut self) {
        self.inner.kill_enclave();
    }

    /// Kills the mock KMS (as an outage would).
    pub fn kill_kms(&mut self) {
        self.inner.kill_kms();
    }

    /// Restarts the mock KMS on the same port and state.
    pub fn restart_kms(&mut self) -> anyhow::Result<()> {
        self.inner.restart_kms()
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.inner.wait_ready(timeout)
    }

    /// Puts a key policy from `measurements` (nitro-cli JSON) on the stack's key.
    pub async fn put_policy_from(&self, measurements: &Path) -> anyhow::Result<()> {
        self.inner.put_policy_from(measurements).await
    }

    /// A key policy for all-zero (debug-mode) measurements, which `put_policy_from` refuses.
    pub async fn put_debug_policy_from(&self, measurements: &Path) -> anyhow::Result<()> {
        self.inner.put_policy_with(measurements, true).await
    }

    /// The enclave's log so far.
    pub fn enclave_log(&self) -> String {
        std::fs::read_to_string(self.inner.logs.join("enclave.log")).unwrap_or_default()
    }

    /// The parent's log so far.
    pub fn parent_log(&self) -> String {
        std::fs::read_to_string(self.inner.logs.join("parent.log")).unwrap_or_default()
    }

    /// The mock NSM's root certificate (PEM), written by the enclave at start.
    pub fn mock_root_pem(&self) -> PathBuf {
        self.inner.mock_root.clone()
    }

    /// The client policy the stack wrote for itself (mock root, its PCRs, its models).
    pub fn client_policy(&self) -> PathBuf {
        self.inner.client_policy.clone()
    }

    /// The enclave's configuration file and its SHA-384 (what documents commit to).
    pub fn enclave_config(&self) -> (PathBuf, String) {
        (self.inner.config_file.clone(), self.inner.config_sha384.clone())
    }
}

/// A blocking HTTP/1.1 GET with no client library in between: returns the status and body.
pub fn http_get(base: &str, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    http_raw(base, "GET", path, b"")
}

/// A blocking HTTP/1.1 request (Connection: close).
pub fn http_raw(base: &str, method: &str, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    http_raw_typed(base, method, path, None, body)
}

/// [`http_raw`] with a `Content-Type`.
pub fn http_raw_typed(
    base: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> anyhow::Result<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let hostport = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(hostport)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let content_type = content_type.map(|c| format!("Content-Type: {c}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\n{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n",
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

/// A keep-alive HTTP client for servers that are not Veil and take plaintext (the Python baseline of the
/// benchmarks). Veil's own client library has no such call: it sends inference only sealed.
#[derive(Debug, Clone)]
pub struct PlainHttp {
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

impl Default for PlainHttp {
    fn default() -> Self {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        PlainHttp { http }
    }
}

impl PlainHttp {
    /// POSTs `body` (JSON) to `url` and returns the answer's body; a non-2xx status is an error.
    pub async fn post(&self, url: &str, body: Vec<u8>) -> anyhow::Result<Vec<u8>> {
        self.post_with(url, body, &[("content-type", "application/json")]).await
    }

    /// [`PlainHttp::post`] with these headers.
    pub async fn post_with(&self, url: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> anyhow::Result<Vec<u8>> {
        use http_body_util::BodyExt;
        let mut request = hyper::Request::post(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
        let response = self.http.request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        anyhow::ensure!(status.is_success(), "{url}: {status}: {}", String::from_utf8_lossy(&bytes));
        Ok(bytes.to_vec())
    }
}

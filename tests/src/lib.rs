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
}

impl StackOptions {
    pub fn new(transport: Transport, models: &[&str]) -> Self {
        StackOptions {
            transport,
            models: models.iter().map(|s| s.to_string()).collect(),
            parent_args: vec![],
            enclave_args: vec![],
            start_enclave: true,
        }
    }
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
            Transport::Tcp => (format!("tcp://127.0.0.1:{}", free_port()?), format!("tcp://127.0.0.1:{}", free_port()?)),
            Transport::Unix => (
                format!("unix://{}", dir.path().join("enclave.sock").display()),
                format!("unix://{}", dir.path().join("host.sock").display()),
            ),
        };
        let mut parent_args = vec![
            "--listen".to_owned(),
            "tcp://127.0.0.1:0".to_owned(),
            "--enclave".to_owned(),
            enclave_addr.clone(),
            "--host-listen".to_owned(),
            host_addr.clone(),
            "--ready-file".to_owned(),
            dir.path().join("parent.ready").display().to_string(),
        ];
        for m in &options.models {
            parent_args.push("--model".into());
            parent_args.push(format!("{m}={}", model_path(m)?.display()));
        }
        parent_args.extend(options.parent_args.iter().cloned());
        let parent_log = dir.path().join("parent.log");
        let mut parent = spawn(&bin("veil-parent")?, &parent_args, &parent_log, &[])?;
        let ready = wait_file(&dir.path().join("parent.ready"), &mut parent, "veil-parent", &parent_log)?;
        let url = ready["url"].as_str().context("parent ready file has no url")?.to_owned();

        let mock_root_dir = dir.path().join("mock-nsm");
        let mut enclave_args = vec![
            "--listen".to_owned(),
            enclave_addr.clone(),
            "--parent".to_owned(),
            host_addr.clone(),
            "--nsm".to_owned(),
            "mock".to_owned(),
            "--mock-root-dir".to_owned(),
            mock_root_dir.display().to_string(),
        ];
        if !options.enclave_args.iter().any(|a| a.starts_with("--kms")) {
            enclave_args.push("--insecure-plaintext".to_owned());
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
        };
        if options.start_enclave {
            stack.start_enclave()?;
        }
        Ok(stack)
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
                && let Some(status) = c.try_wait()? {
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
        for c in [self.enclave.as_mut(), self.parent.as_mut()].into_iter().flatten() {
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
            && g["parameters"]["zipmap_keys"] != *keys {
                return Err(format!("output {name}: zipmap_keys {} != {}", g["parameters"]["zipmap_keys"], keys));
            }
    }
    Ok(())
}

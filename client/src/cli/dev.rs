//! `veil dev`: the whole off-hardware stack in one command.
//!
//! Starts the real `veil-enclave` and `veil-parent` binaries as child processes on real sockets (Unix
//! sockets stand in for vsock, the client API on TCP), waits until the enclave has loaded every model,
//! prints the endpoints (`--json`: one JSON object on stdout, for scripts), and stops everything on Ctrl-C
//! or SIGTERM. If a child dies, `veil dev` says which, shows the end of its log, and exits non-zero.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tokio::process::{Child, Command};

use crate::Client;

/// Start the off-hardware stack: enclave (mock NSM), parent and the sample models.
#[derive(Debug, Args)]
#[command(after_help = "\
Models: every *.onnx in --models-dir (default: $VEIL_MODELS_DIR, else ~/.cache/veil/models, which
scripts/setup.sh fills with breast_cancer, iris and minilm), plus any --model NAME=PATH.

Examples:
  veil dev                       # API on http://127.0.0.1:8080, Ctrl-C to stop
  veil dev --port 0 --json       # any free port; one JSON line with the endpoints, for scripts
  veil dev --model mine=/path/to/model.onnx

This stack is for development: its NSM is a mock whose attestation documents chain to a generated
mock root that no real verifier or KMS key policy trusts.")]
pub struct DevArgs {
    /// TCP port of the client API on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Directory of *.onnx models to serve (the file stem is the model name).
    #[arg(long, env = "VEIL_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// An extra model to serve, NAME=PATH (repeatable).
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// Where sockets, logs and the mock NSM root go (default: a fresh temporary directory, removed on exit).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Directory holding veil-enclave and veil-parent (default: next to this `veil`).
    #[arg(long, env = "VEIL_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Path of libonnxruntime.so (default: ORT_DYLIB_PATH, else the scripts/setup.sh cache).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib: Option<PathBuf>,
    /// Threads ONNX Runtime uses within one inference.
    #[arg(long, default_value_t = 1)]
    pub intra_op_threads: u16,
    /// Print the endpoints as one JSON object on stdout (logs stay in files).
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for the stack to become ready.
    #[arg(long, default_value_t = 180)]
    pub ready_timeout: u64,
}

fn cache_dir() -> PathBuf {
    if let Some(c) = std::env::var_os("VEIL_CACHE") {
        return PathBuf::from(c);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache").join("veil")
}

/// The models to serve: the directory's `*.onnx`, then explicit ones (which win on a name clash).
fn collect_models(args: &DevArgs) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut models: Vec<(String, PathBuf)> = Vec::new();
    let dir = args.models_dir.clone().unwrap_or_else(|| cache_dir().join("models"));
    if dir.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
            .collect();
        entries.sort();
        for p in entries {
            if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                models.push((stem.to_owned(), p.clone()));
            }
        }
    } else if args.models_dir.is_some() {
        bail!("--models-dir {} is not a directory", dir.display());
    }
    for m in &args.models {
        let (name, path) = m.split_once('=').with_context(|| format!("--model {m:?}: expected NAME=PATH"))?;
        let path = PathBuf::from(path);
        anyhow::ensure!(path.is_file(), "--model {name}: {} is not a file", path.display());
        models.retain(|(n, _)| n != name);
        models.push((name.to_owned(), path));
    }
    if models.is_empty() {
        bail!("no models to serve: {} has no *.onnx files. Run scripts/setup.sh, or pass --model NAME=PATH", dir.display());
    }
    Ok(models)
}

fn find_bin(args: &DevArgs, name: &str) -> anyhow::Result<PathBuf> {
    let dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().map(Path::to_path_buf).context("cannot locate the veil binary's directory")?,
    };
    let p = dir.join(name);
    anyhow::ensure!(
        p.is_file(),
        "{} not found in {}: build it (cargo build --release --workspace) or pass --bin-dir",
        name,
        dir.display()
    );
    Ok(p)
}

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, bin: &Path, argv: &[String], log: PathBuf, envs: &[(&str, &Path)]) -> anyhow::Result<Proc> {
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(bin);
        cmd.args(argv).stdin(Stdio::null()).stdout(out).stderr(err).kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        // Keep children out of our terminal's process group handling: Ctrl-C reaches us, we stop them.
        cmd.process_group(0);
        let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        Ok(Proc { name, child, log })
    }

    /// Asks the child to stop (SIGTERM), then kills it if it lingers.
    async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

fn free_port_check(port: u16) -> anyhow::Result<()> {
    if port == 0 {
        return Ok(());
    }
    std::net::TcpListener::bind(("127.0.0.1", port)).map(drop).map_err(|e| {
        anyhow::anyhow!("port {port} on 127.0.0.1 is not free ({e}): pass --port 0 for any free port, or another port")
    })
}

/// Runs `veil dev`.
pub fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: DevArgs) -> anyhow::Result<ExitCode> {
    let models = collect_models(&args)?;
    let enclave_bin = find_bin(&args, "veil-enclave")?;
    let parent_bin = find_bin(&args, "veil-parent")?;
    let dylib = args
        .ort_dylib
        .clone()
        .unwrap_or_else(|| cache_dir().join("onnxruntime-1.31.1").join("libonnxruntime.so.1.31.1"));
    anyhow::ensure!(dylib.is_file(), "ONNX Runtime not found at {}: run scripts/setup.sh, or set ORT_DYLIB_PATH", dylib.display());
    free_port_check(args.port)?;

    let _temp; // removed on exit when we made it
    let state = match &args.state_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.canonicalize()?
        }
        None => {
            let t = tempfile::Builder::new().prefix("veil-dev-").tempdir()?;
            let p = t.path().to_path_buf();
            _temp = t;
            p
        }
    };
    let logs = state.join("logs");
    std::fs::create_dir_all(&logs)?;
    let enclave_addr = format!("unix://{}", state.join("enclave.sock").display());
    let host_addr = format!("unix://{}", state.join("host.sock").display());
    let parent_ready = state.join("parent.ready.json");
    let _ = std::fs::remove_file(&parent_ready);

    let mut parent_argv = vec![
        "--listen".to_owned(),
        format!("tcp://127.0.0.1:{}", args.port),
        "--enclave".to_owned(),
        enclave_addr.clone(),
        "--host-listen".to_owned(),
        host_addr.clone(),
        "--ready-file".to_owned(),
        parent_ready.display().to_string(),
    ];
    for (name, path) in &models {
        parent_argv.push("--model".into());
        parent_argv.push(format!("{name}={}", path.display()));
    }
    let mock_dir = state.join("mock-nsm");
    let mock_root = mock_dir.join("mock-root.pem");
    let mut enclave_argv = vec![
        "--listen".to_owned(),
        enclave_addr.clone(),
        "--parent".to_owned(),
        host_addr.clone(),
        "--nsm".to_owned(),
        "mock".to_owned(),
        "--mock-root-dir".to_owned(),
        mock_dir.display().to_string(),
        "--insecure-plaintext".to_owned(),
        "--intra-op-threads".to_owned(),
        args.intra_op_threads.to_string(),
    ];
    for (name, _) in &models {
        enclave_argv.push("--model".into());
        enclave_argv.push(name.clone());
    }

    let say = |msg: &str| {
        if !args.json {
            eprintln!("{msg}");
        }
    };
    say(&format!("veil dev: starting parent and enclave ({} models); logs in {}", models.len(), logs.display()));
    let mut procs = vec![
        Proc::spawn("veil-parent", &parent_bin, &parent_argv, logs.join("parent.log"), &[])?,
        Proc::spawn("veil-enclave", &enclave_bin, &enclave_argv, logs.join("enclave.log"), &[("ORT_DYLIB_PATH", dylib.as_path())])?,
    ];

    let outcome = async {
        let url = wait_ready(&args, &parent_ready, &mut procs, &say).await?;
        let endpoints = serde_json::json!({
            "url": url,
            "models": models.iter().map(|(n, p)| serde_json::json!({"name": n, "file": p.display().to_string()})).collect::<Vec<_>>(),
            "enclave": enclave_addr,
            "host_services": host_addr,
            "nsm": "mock",
            "mock_root": mock_root.display().to_string(),
            "state_dir": state.display().to_string(),
            "logs": {"parent": logs.join("parent.log").display().to_string(), "enclave": logs.join("enclave.log").display().to_string()},
            "pids": {"parent": procs[0].child.id(), "enclave": procs[1].child.id()},
        });
        if args.json {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer(&mut out, &endpoints)?;
            out.write_all(b"\n")?;
            out.flush()?;
        } else {
            let names: Vec<&str> = models.iter().map(|(n, _)| n.as_str()).collect();
            let first = names.iter().find(|n| **n == "breast_cancer").unwrap_or(&names[0]);
            eprintln!(
                "\nVeil dev stack is up (off hardware: mock NSM, not for production).\n  API:      {url}\n  models:   {}\n  enclave:  {enclave_addr}\n  mock NSM root: {}\n  logs:     {}\n\nTry:\n  veil metadata --url {url} {first}\n  veil infer --url {url} --model {first} --input FILE.json\n  veil attest verify --url {url} --root {}\n\nCtrl-C stops everything.",
                names.join(", "),
                mock_root.display(),
                logs.display(),
                mock_root.display()
            );
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = outcome {
        for p in &mut procs {
            p.stop().await;
        }
        return Err(e);
    }

    // Serve until a signal, or until a child dies.
    let died = {
        let (first, rest) = procs.split_at_mut(1);
        tokio::select! {
            _ = shutdown_signal() => None,
            r = first[0].child.wait() => Some((0, r)),
            r = rest[0].child.wait() => Some((1, r)),
        }
    };
    let code = match died {
        None => {
            say("veil dev: stopping");
            ExitCode::SUCCESS
        }
        Some((i, status)) => {
            let p = &procs[i];
            eprintln!("veil dev: {} exited ({}); last lines of {}:\n{}", p.name, describe(status), p.log.display(), p.log_tail());
            ExitCode::FAILURE
        }
    };
    for p in procs.iter_mut().rev() {
        p.stop().await;
    }
    Ok(code)
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    }
}

async fn wait_ready(args: &DevArgs, parent_ready: &Path, procs: &mut [Proc], say: &dyn Fn(&str)) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(args.ready_timeout);
    let mut url: Option<String> = None;
    let mut last_reason = String::new();
    let mut last_said = Instant::now();
    loop {
        for p in procs.iter_mut() {
            if let Some(status) = p.child.try_wait()? {
                bail!("{} exited during start-up ({status}); last lines of {}:\n{}", p.name, p.log.display(), p.log_tail());
            }
        }
        if url.is_none()
            && let Ok(bytes) = std::fs::read(parent_ready) {
                let v: serde_json::Value = serde_json::from_slice(&bytes)?;
                url = v["url"].as_str().map(str::to_owned);
            }
        if let Some(u) = &url {
            let client = Client::new(u)?.with_timeout(Duration::from_secs(3));
            match client.get("/readyz").await {
                Ok(_) => return Ok(u.clone()),
                Err(e) => last_reason = e.to_string(),
            }
        }
        if Instant::now() > deadline {
            bail!("the stack was not ready within {}s: {last_reason}", args.ready_timeout);
        }
        if last_said.elapsed() > Duration::from_secs(5) {
            say("veil dev: waiting for the enclave to load its models...");
            last_said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

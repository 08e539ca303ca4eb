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

/// Credentials the dev stack's clients use with the mock KMS (it checks their shape, not the secret: see
/// docs/MOCK_KMS.md). The mock knows them as the client role; `veil dev` itself sets up the key with them.
pub const DEV_ACCESS_KEY: &str = "AKIAVEILDEVSTACK0000";
pub const DEV_SECRET_KEY: &str = "veil-dev-stack-mock-kms-secret";
/// The parent's credentials (which it serves to the enclave): a session of the enclave's role.
const DEV_PARENT_ACCESS_KEY: &str = "AKIAVEILDEVPARENT000";
/// The dev stack's AWS account and the roles its key policy names.
const DEV_ACCOUNT: &str = "111122223333";

/// What `veil dev` set up in the mock KMS.
struct DevKms {
    endpoint: String,
    host_port: String,
    ca_file: PathBuf,
    region: String,
    key_id: String,
    policy_file: PathBuf,
    measurements_file: PathBuf,
}

/// Starts the mock KMS, makes a key whose policy releases data keys only to this enclave binary's (mock)
/// PCRs, and encrypts the models under it: the same steps an operator takes with real KMS.
async fn setup_kms(
    args: &DevArgs,
    state: &Path,
    logs: &Path,
    mock_dir: &Path,
    models: &mut [(String, PathBuf)],
    procs: &mut Vec<Proc>,
    say: &dyn Fn(&str),
) -> anyhow::Result<DevKms> {
    // 1. The enclave's measurements (mock PCRs derive from the veil-enclave binary) and the mock root.
    let out = tokio::process::Command::new(find_bin(args, "veil-enclave")?)
        .args(["--nsm", "mock", "--mock-measurements", "--mock-root-dir"])
        .arg(mock_dir)
        .stderr(Stdio::null())
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "veil-enclave --mock-measurements failed");
    let measurements_file = state.join("measurements.json");
    std::fs::write(&measurements_file, &out.stdout)?;

    // 2. The mock KMS, trusting the mock root for recipient attestation documents.
    let ready = state.join("kms.ready.json");
    let _ = std::fs::remove_file(&ready);
    let argv = vec![
        "--listen".to_owned(),
        "tcp://127.0.0.1:0".to_owned(),
        "--state-dir".to_owned(),
        state.join("kms").display().to_string(),
        "--attestation-root".to_owned(),
        mock_dir.join("mock-root.pem").display().to_string(),
        "--ready-file".to_owned(),
        ready.display().to_string(),
        // Who each access key is, so that the key policy's principals mean what they say.
        "--principal".to_owned(),
        format!("{DEV_ACCESS_KEY}=arn:aws:iam::{DEV_ACCOUNT}:role/veil-dev-client"),
        "--principal".to_owned(),
        format!("{DEV_PARENT_ACCESS_KEY}=arn:aws:sts::{DEV_ACCOUNT}:assumed-role/veil-dev-parent/i-0veildev"),
    ];
    procs.push(Proc::spawn("veil-mock-kms", &find_bin(args, "veil-mock-kms")?, &argv, logs.join("kms.log"), &[])?);
    let deadline = Instant::now() + Duration::from_secs(30);
    let info: serde_json::Value = loop {
        if let Ok(b) = std::fs::read(&ready) {
            break serde_json::from_slice(&b)?;
        }
        if let Some(p) = procs.last_mut()
            && let Some(status) = p.child.try_wait()?
        {
            bail!("veil-mock-kms exited ({status}):\n{}", p.log_tail());
        }
        anyhow::ensure!(Instant::now() < deadline, "the mock KMS did not start within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let endpoint = info["endpoint"].as_str().context("mock KMS ready file: no endpoint")?.to_owned();
    let ca_file = PathBuf::from(info["ca_file"].as_str().context("mock KMS ready file: no ca_file")?);
    let region = info["region"].as_str().unwrap_or("us-east-1").to_owned();
    let host_port = endpoint.trim_start_matches("https://").to_owned();

    // 3. A key, and its policy from the measurements (`veil kms policy`).
    let kms = crate::kms::kms_client(&crate::kms::KmsConfig {
        region: Some(region.clone()),
        endpoint_url: Some(endpoint.clone()),
        ca_pem: Some(std::fs::read(&ca_file)?),
        static_credentials: Some((DEV_ACCESS_KEY.into(), DEV_SECRET_KEY.into())),
    })
    .await?;
    let created = kms
        .create_key()
        .description("veil dev: data keys for requests and models")
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("mock KMS CreateKey: {}", aws_sdk_kms::error::DisplayErrorContext(e)))?;
    let key_id = created.key_metadata().map(|m| m.key_id().to_owned()).context("CreateKey returned no key id")?;
    let policy = super::kms::build_policy(&super::kms::PolicyArgs {
        measurements: measurements_file.clone(),
        also: vec![],
        account: DEV_ACCOUNT.into(),
        enclave_role: format!("arn:aws:iam::{DEV_ACCOUNT}:role/veil-dev-parent"),
        clients: vec![format!("arn:aws:iam::{DEV_ACCOUNT}:role/veil-dev-client")],
        admin: None,
        pcrs: vec![],
        allow_debug: false,
        output: None,
    })?;
    let policy_file = state.join("key-policy.json");
    std::fs::write(&policy_file, serde_json::to_vec_pretty(&policy)?)?;
    kms.put_key_policy()
        .key_id(&key_id)
        .policy_name("default")
        .policy(policy.to_string())
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("mock KMS PutKeyPolicy: {}", aws_sdk_kms::error::DisplayErrorContext(e)))?;

    // 4. The models, encrypted at rest: only an enclave that KMS trusts can load them.
    let dir = state.join("models");
    std::fs::create_dir_all(&dir)?;
    for (name, path) in models.iter_mut() {
        let out = dir.join(format!("{name}.onnx.veil"));
        crate::kms::encrypt_model_file(
            &kms,
            &key_id,
            Default::default(),
            path,
            &out,
            veil_protocol::model_file::DEFAULT_CHUNK,
            false,
        )
        .await?;
        *path = out;
    }
    say(&format!("veil dev: mock KMS at {endpoint}, key {key_id}; models encrypted under it"));
    Ok(DevKms { endpoint, host_port, ca_file, region, key_id, policy_file, measurements_file })
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
        bail!(
            "no models to serve: {} has no *.onnx files. Run scripts/setup.sh, or pass --model NAME=PATH",
            dir.display()
        );
    }
    Ok(models)
}

fn find_bin(args: &DevArgs, name: &str) -> anyhow::Result<PathBuf> {
    let dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("cannot locate the veil binary's directory")?,
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
    fn spawn(
        name: &'static str,
        bin: &Path,
        argv: &[String],
        log: PathBuf,
        envs: &[(&str, &Path)],
    ) -> anyhow::Result<Proc> {
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
    anyhow::ensure!(
        dylib.is_file(),
        "ONNX Runtime not found at {}: run scripts/setup.sh, or set ORT_DYLIB_PATH",
        dylib.display()
    );
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

    let mock_dir = state.join("mock-nsm");
    let mock_root = mock_dir.join("mock-root.pem");
    let say = |msg: &str| {
        if !args.json {
            eprintln!("{msg}");
        }
    };
    let mut models = models;
    let mut procs: Vec<Proc> = Vec::new();
    let kms = match setup_kms(&args, &state, &logs, &mock_dir, &mut models, &mut procs, &say).await {
        Ok(k) => Some(k),
        Err(e) => {
            for p in &mut procs {
                p.stop().await;
            }
            return Err(e);
        }
    };
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
    let mut enclave_argv = vec![
        "--listen".to_owned(),
        enclave_addr.clone(),
        "--parent".to_owned(),
        host_addr.clone(),
        "--nsm".to_owned(),
        "mock".to_owned(),
        "--mock-root-dir".to_owned(),
        mock_dir.display().to_string(),
        "--intra-op-threads".to_owned(),
        args.intra_op_threads.to_string(),
    ];
    for (name, _) in &models {
        enclave_argv.push("--model".into());
        enclave_argv.push(name.clone());
    }
    if let Some(k) = &kms {
        parent_argv.extend(["--kms-endpoint".into(), k.host_port.clone(), "--credentials".into(), "env".into()]);
        enclave_argv.extend([
            "--kms-region".into(),
            k.region.clone(),
            "--kms-endpoint".into(),
            k.host_port.clone(),
            "--kms-ca".into(),
            k.ca_file.display().to_string(),
        ]);
    }

    say(&format!("veil dev: starting parent and enclave ({} models); logs in {}", models.len(), logs.display()));
    let creds =
        [("AWS_ACCESS_KEY_ID", Path::new(DEV_PARENT_ACCESS_KEY)), ("AWS_SECRET_ACCESS_KEY", Path::new(DEV_SECRET_KEY))];
    procs.push(Proc::spawn("veil-parent", &parent_bin, &parent_argv, logs.join("parent.log"), &creds)?);
    procs.push(Proc::spawn(
        "veil-enclave",
        &enclave_bin,
        &enclave_argv,
        logs.join("enclave.log"),
        &[("ORT_DYLIB_PATH", dylib.as_path())],
    )?);
    let (parent_i, enclave_i) = (procs.len() - 2, procs.len() - 1);

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
            "pids": {"parent": procs[parent_i].child.id(), "enclave": procs[enclave_i].child.id(),
                     "kms": kms.as_ref().and_then(|_| procs.first().and_then(|p| p.child.id()))},
            "kms": kms.as_ref().map(|k| serde_json::json!({
                "endpoint": k.endpoint,
                "region": k.region,
                "key_id": k.key_id,
                "ca_file": k.ca_file.display().to_string(),
                "policy_file": k.policy_file.display().to_string(),
                "measurements_file": k.measurements_file.display().to_string(),
                "state_dir": state.join("kms").display().to_string(),
            })),
            "env": kms.as_ref().map(|k| serde_json::json!({
                "AWS_ACCESS_KEY_ID": DEV_ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": DEV_SECRET_KEY,
                "VEIL_KMS_KEY_ID": k.key_id,
                "VEIL_KMS_ENDPOINT": k.endpoint,
                "VEIL_KMS_CA": k.ca_file.display().to_string(),
                "VEIL_KMS_REGION": k.region,
            })),
        });
        if args.json {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer(&mut out, &endpoints)?;
            out.write_all(b"\n")?;
            out.flush()?;
        } else {
            let names: Vec<&str> = models.iter().map(|(n, _)| n.as_str()).collect();
            let first = names.iter().find(|n| **n == "breast_cancer").unwrap_or(&names[0]);
            if let Some(k) = &kms {
                eprintln!(
                    "\nKMS (mock): {}  key {}\nFor clients, in this shell:\n  export AWS_ACCESS_KEY_ID={DEV_ACCESS_KEY} AWS_SECRET_ACCESS_KEY={DEV_SECRET_KEY} \\\n    VEIL_KMS_KEY_ID={} VEIL_KMS_ENDPOINT={} VEIL_KMS_CA={} VEIL_KMS_REGION={}",
                    k.endpoint,
                    k.key_id,
                    k.key_id,
                    k.endpoint,
                    k.ca_file.display(),
                    k.region
                );
            }
            eprintln!(
                "\nVeil dev stack is up (off hardware: mock NSM, not for production).\n  API:      {url}\n  models:   {}\n  enclave:  {enclave_addr}\n  mock NSM root: {}\n  logs:     {}\n\nTry:\n  veil metadata --url {url} {first}\n  veil infer --url {url} --model {first} --input examples/{first}.json\n  veil attest verify --url {url} --root {}\n\nCtrl-C stops everything.",
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
        let watch = async {
            loop {
                for (i, p) in procs.iter_mut().enumerate() {
                    if let Ok(Some(status)) = p.child.try_wait() {
                        return (i, Ok(status));
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            _ = veil_runtime::process::shutdown_signal() => None,
            d = watch => Some(d),
        }
    };
    let code = match died {
        None => {
            say("veil dev: stopping");
            ExitCode::SUCCESS
        }
        Some((i, status)) => {
            let p = &procs[i];
            eprintln!(
                "veil dev: {} exited ({}); last lines of {}:\n{}",
                p.name,
                describe(status),
                p.log.display(),
                p.log_tail()
            );
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

async fn wait_ready(
    args: &DevArgs,
    parent_ready: &Path,
    procs: &mut [Proc],
    say: &dyn Fn(&str),
) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(args.ready_timeout);
    let mut url: Option<String> = None;
    let mut last_reason = String::new();
    let mut last_said = Instant::now();
    loop {
        for p in procs.iter_mut() {
            if let Some(status) = p.child.try_wait()? {
                bail!(
                    "{} exited during start-up ({status}); last lines of {}:\n{}",
                    p.name,
                    p.log.display(),
                    p.log_tail()
                );
            }
        }
        if url.is_none()
            && let Ok(bytes) = std::fs::read(parent_ready)
        {
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

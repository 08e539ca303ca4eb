//! `veil dev`: the whole off-hardware stack in one command.
//!
//! The stack itself is [`veil_client::devstack`], the same builder the tests use: the mock KMS with a key whose
//! policy comes from the enclave's measurements, models encrypted under it, the enclave's configuration
//! file, and the real `veil-parent` and `veil-enclave` (a development build, with the mock NSM) as child
//! processes on real sockets. This command prints the endpoints (`--json`: one JSON object on stdout, for
//! scripts), and stops everything on Ctrl-C or SIGTERM. A child that dies is restarted with backoff
//! ([`veil_client::devstack::Supervisor`]), as systemd restarts the production units: `veil dev` says
//! which child died with the end of its log, counts restarts in `STATE/status.json` (and, with `--json`,
//! in one more JSON line per event), and exits non-zero only when a child died more often than
//! `--max-restarts` allows.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use veil_client::devstack::{Options, RestartPolicy, Role, Stack, Supervisor, SupervisorEvent};

/// Start the off-hardware stack: mock KMS, enclave (mock NSM), parent and the sample models.
#[derive(Debug, Args)]
#[command(after_help = "\
Models: every *.onnx in --models-dir (default: $VEIL_MODELS_DIR, else ~/.cache/veil/models, which
scripts/setup.sh fills with breast_cancer, iris and minilm), plus any --model NAME=PATH. Each is
encrypted under the mock KMS key before the parent serves it; the enclave's configuration (written to
the state directory, as an image would carry it) names each model, its key and its SHA-384.

Supervision: a child that dies (enclave, parent, mock KMS) is restarted with backoff, from 0.5 s
doubling to 30 s (back to 0.5 s once it has stayed up a minute); each restart is logged here
with the end of the child's log. STATE/status.json (its path is `status_file` in --json's first
line) always holds each child's pid, state, restarts, last exit and the enclave's last cold
start; with --json, every event also prints one JSON line {\"event\", \"role\", \"message\",
\"status\"} on stdout.

Examples:
  veil dev                       # API on http://127.0.0.1:8080, Ctrl-C to stop
  veil dev --port 0 --json       # any free port; one JSON line with the endpoints, for scripts
  veil dev --model mine=/path/to/model.onnx
  veil dev --enclave-config short-window.toml   # e.g. [limits] replay_window_secs = 5

This stack is for development: its NSM is a mock whose attestation documents chain to a generated
mock root that no real verifier or KMS key policy trusts, and its enclave is a development build.")]
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
    /// Where sockets, logs, keys and the mock NSM root go (default: a fresh temporary directory, removed on
    /// exit).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Directory holding veil-enclave, veil-parent and veil-mock-kms (default: next to this `veil`).
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
    /// Attested-key mode with a fleet key sealed under the mock KMS key (`veil ohttp keygen`), instead
    /// of a key the enclave generates at boot.
    #[arg(long)]
    pub ohttp_fleet_key: bool,
    /// Restarts allowed per child before `veil dev` gives up and stops (default: no limit; 0: never
    /// restart, stop when a child dies).
    #[arg(long)]
    pub max_restarts: Option<u32>,
    /// TOML settings appended to the enclave configuration veil dev writes: its [limits], [ohttp] and
    /// [audit] tables (docs/OPERATING.md), e.g. a short replay window or receipts off. [kms],
    /// [[models]] and [inference] (--intra-op-threads) are veil dev's own.
    #[arg(long, value_name = "FILE")]
    pub enclave_config: Option<PathBuf>,
}

/// The settings of `--enclave-config`: TOML that leaves the tables veil dev writes to veil dev (the
/// enclave checks the rest when it starts, and names what it refuses).
fn extra_enclave_config(path: &Path, fleet_key: bool) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not a TOML document", path.display()))?;
    let mut own = vec!["kms", "models", "inference"];
    if fleet_key {
        own.push("ohttp");
    }
    if let Some(key) = own.iter().find(|k| table.contains_key(**k)) {
        bail!(
            "{}: [{key}] is written by veil dev and cannot be set with --enclave-config (only [limits], \
             [audit], and [ohttp] without --ohttp-fleet-key)",
            path.display()
        );
    }
    Ok(text)
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
        anyhow::ensure!(
            veil_protocol::message::is_valid_model_name(name),
            "--model {name:?}: {}",
            veil_protocol::message::MODEL_NAME_RULE
        );
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
    anyhow::ensure!(
        models.len() <= veil_protocol::attestation::MAX_MODELS,
        "{} models; an enclave serves at most {}",
        models.len(),
        veil_protocol::attestation::MAX_MODELS
    );
    Ok(models)
}

fn bin_dir(args: &DevArgs) -> anyhow::Result<PathBuf> {
    match &args.bin_dir {
        Some(d) => Ok(d.clone()),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("cannot locate the veil binary's directory"),
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

/// What `veil dev --json` prints first.
fn endpoints(stack: &Stack, status_file: &Path) -> serde_json::Value {
    let (parent, enclave, kms) = (stack.pid(Role::Parent), stack.pid(Role::Enclave), stack.pid(Role::Kms));
    let k = &stack.kms;
    serde_json::json!({
        "url": stack.url,
        "models": stack.model_files.iter().map(|(n, p)| serde_json::json!({"name": n, "file": p.display().to_string()})).collect::<Vec<_>>(),
        "enclave": stack.enclave_addr,
        "host_services": stack.host_addr,
        "nsm": "mock",
        "mock_root": stack.mock_root.display().to_string(),
        "enclave_config": stack.config_file.display().to_string(),
        "config_sha384": stack.config_sha384,
        "client_policy": stack.client_policy.display().to_string(),
        "audit_log": stack.audit_log.display().to_string(),
        "ohttp_gateway": format!("{}{}", stack.url, veil_protocol::ohttp::GATEWAY_PATH),
        "state_dir": stack.options.state_dir.display().to_string(),
        "logs": {
            "parent": stack.logs.join("parent.log").display().to_string(),
            "enclave": stack.logs.join("enclave.log").display().to_string(),
            "kms": stack.logs.join("kms.log").display().to_string(),
        },
        "pids": {"parent": parent, "enclave": enclave, "kms": kms},
        "status_file": status_file.display().to_string(),
        "restarts": {"parent": 0, "enclave": 0, "kms": 0},
        "enclave_startup_ms": stack.enclave_startup().map(|d| d.as_millis() as u64),
        "kms": {
            "endpoint": k.endpoint,
            "region": k.region,
            "key_id": k.key_id,
            "key_arn": k.key_arn,
            "ca_file": k.ca_file.display().to_string(),
            "policy_file": k.policy_file.display().to_string(),
            "measurements_file": k.measurements_file.display().to_string(),
            "state_dir": k.state_dir.display().to_string(),
        },
        "env": stack.client_env().into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect::<serde_json::Map<_, _>>(),
    })
}

/// Runs `veil dev`.
pub fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let models = collect_models(&args)?;
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
    let say = |msg: &str| {
        if !args.json {
            eprintln!("{msg}");
        }
    };
    let mut options = Options::new(state, bin_dir(&args)?, dylib, models);
    options.listen = format!("tcp://127.0.0.1:{}", args.port);
    options.intra_op_threads = args.intra_op_threads;
    options.ohttp_fleet_key = args.ohttp_fleet_key;
    if let Some(path) = &args.enclave_config {
        options.extra_config = extra_enclave_config(path, args.ohttp_fleet_key)?;
    }
    say(&format!(
        "veil dev: starting the mock KMS, encrypting {} models, starting parent and enclave; logs in {}",
        options.models.len(),
        options.state_dir.join("logs").display()
    ));
    let mut stack = Stack::start(options)?;
    let status_file = stack.options.state_dir.join("status.json");
    // The status file exists before the endpoints line names it: a script may read it at once.
    let policy = RestartPolicy { max_restarts: args.max_restarts, ..RestartPolicy::default() };
    let mut supervisor = Supervisor::new(&stack, policy, status_file.clone());
    supervisor.write_status(&stack).with_context(|| format!("writing {}", status_file.display()))?;
    let endpoints = endpoints(&stack, &status_file);
    if args.json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, &endpoints)?;
        out.write_all(b"\n")?;
        out.flush()?;
    } else {
        print_human(&stack);
    }

    // Serve until a signal; restart children as they die, until one dies too often.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let gave_up = rt.block_on(async {
        let supervise = async {
            loop {
                for event in supervisor.tick(&mut stack) {
                    say_event(&event, &supervisor, &stack, args.json);
                }
                if supervisor.gave_up() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            _ = veil_runtime::process::shutdown_signal() => false,
            _ = supervise => true,
        }
    });
    let code = if gave_up {
        ExitCode::FAILURE
    } else {
        say("veil dev: stopping");
        ExitCode::SUCCESS
    };
    stack.stop();
    Ok(code)
}

/// Reports a supervision event: on stderr for people; with `--json`, also one JSON line on stdout (a closed
/// stdout is ignored: the stack keeps running for whoever still uses it).
fn say_event(event: &SupervisorEvent, supervisor: &Supervisor, stack: &Stack, json: bool) {
    eprintln!("veil dev: {event}");
    if !json {
        return;
    }
    let (name, role) = match event {
        SupervisorEvent::Exited { role, .. } => ("exited", role.label()),
        SupervisorEvent::Restarted { role, .. } => ("restarted", role.label()),
        SupervisorEvent::RestartFailed { role, .. } => ("restart_failed", role.label()),
        SupervisorEvent::Ready { .. } => ("ready", "enclave"),
        SupervisorEvent::GaveUp { role, .. } => ("gave_up", role.label()),
    };
    let message = event.to_string();
    let line = serde_json::json!({
        "event": name,
        "role": role,
        "message": message.lines().next().unwrap_or_default(),
        "status": supervisor.status(stack),
    });
    let mut out = std::io::stdout().lock();
    if serde_json::to_writer(&mut out, &line).is_ok() {
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
}

fn print_human(stack: &Stack) {
    let names: Vec<&str> = stack.model_files.iter().map(|(n, _)| n.as_str()).collect();
    let first = names.iter().find(|n| **n == "breast_cancer").unwrap_or(&names[0]);
    let url = &stack.url;
    let exports: Vec<String> = stack.client_env().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    eprintln!(
        "\nVeil dev stack is up (off hardware: mock NSM and mock KMS, not for production).\n  \
         API:      {url}\n  models:   {}\n  enclave:  {} (configuration {}, SHA-384 {})\n  \
         mock KMS: {} key {}\n  mock NSM root: {}\n  audit log: {}\n  logs:     {}\n\n\
         For clients, in this shell:\n  export {}\n\nTry:\n  \
         veil metadata --url {url} {first}\n  \
         veil infer --url {url} --model {first} --input examples/{first}.json --pretty   # KMS envelope\n  \
         veil infer --url {url} --policy {} --model {first} --input examples/{first}.json --pretty   # attested key, no AWS credentials\n  \
         veil attest verify --url {url} --root {}\n  \
         veil infer --url {url} --policy {} --model {first} --input examples/{first}.json --receipt answer.receipt.json\n  \
         veil receipt verify answer.receipt.json --policy {}\n  \
         veil audit verify {} --policy {}\n\nCtrl-C stops everything.",
        names.join(", "),
        stack.enclave_addr,
        stack.config_file.display(),
        stack.config_sha384,
        stack.kms.endpoint,
        stack.kms.key_arn,
        stack.mock_root.display(),
        stack.audit_log.display(),
        stack.logs.display(),
        exports.join(" \\\n    "),
        stack.client_policy.display(),
        stack.mock_root.display(),
        stack.client_policy.display(),
        stack.client_policy.display(),
        stack.audit_log.display(),
        stack.client_policy.display(),
    );
}

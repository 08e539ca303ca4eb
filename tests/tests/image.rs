//! The enclave image's own entrypoint and configuration, run off hardware.
//!
//! `docker/Dockerfile.enclave` bakes `docker/enclave.toml` (its `VEIL_CONFIG` default) into the image and
//! starts `veil-enclave` with a fixed `ENTRYPOINT` and `ENV`. Security finding 1 was that nothing ran that
//! combination before it went to hardware: a configuration the enclave refused, or an entrypoint naming a
//! flag that no longer existed, would only show on a Nitro instance. This test reads the Dockerfile, not a
//! copy of what it says, and runs the development build with that entrypoint, that environment and that
//! configuration file, byte for byte, swapping only what cannot exist here:
//!
//! - `--nsm hardware` becomes the mock NSM (`--nsm mock --mock-root-dir DIR`), and the mock KMS's CA is
//!   trusted (`--dev-kms-ca`): the only development options;
//! - vsock addresses become Unix sockets, `/etc/veil/enclave.toml` the repository's file, and
//!   `ORT_DYLIB_PATH` this machine's library;
//! - a `--ready-file` for the harness.
//!
//! The mock KMS answers as `kms.eu-west-1.amazonaws.com` with the key the file names, and the parent routes
//! that endpoint to it, so the enclave dials exactly what it would on hardware.
//!
//! The image is also built without Docker, by `scripts/reproduce.sh`: the last tests hold the two builds to
//! one image (the same command, environment and paths) and to one set of ONNX Runtime pins.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use veil_tests::{Stack, StackOptions, Transport, references, repo_root};

/// One instruction of a Dockerfile: keyword (upper case) and its arguments, continuation lines joined.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue; // comment lines inside a continued instruction
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, rest) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
                out.push((keyword.to_ascii_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

/// The stages of a Dockerfile: each stage's instructions, from its `FROM`.
fn stages(text: &str) -> Vec<Vec<(String, String)>> {
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for (keyword, rest) in instructions(text) {
        if keyword == "FROM" {
            stages.push(Vec::new());
        }
        if let Some(stage) = stages.last_mut() {
            stage.push((keyword, rest));
        }
    }
    stages
}

/// `ARG` defaults of a stage.
fn args(stage: &[(String, String)]) -> BTreeMap<String, String> {
    stage
        .iter()
        .filter(|(k, _)| k == "ARG")
        .filter_map(|(_, rest)| rest.split_once('=').map(|(a, b)| (a.to_owned(), b.to_owned())))
        .collect()
}

/// `${NAME}` and `$NAME` replaced from `vars`; an unknown variable fails the test.
fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = s.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
    }
    assert!(!out.contains('$'), "unexpanded variable in {s:?} (known: {vars:?})");
    out
}

/// `ENV A=1 B=2` pairs (no quoting in our Dockerfile; a quote fails the test rather than parse wrongly).
fn env_pairs(rest: &str) -> Vec<(String, String)> {
    assert!(!rest.contains('"') && !rest.contains('\''), "quoted ENV values: teach this parser: {rest}");
    rest.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("ENV {kv:?} is not NAME=VALUE"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// What the image runs: the entrypoint (exec form), its environment, and the configuration it bakes in
/// (the repository path of `VEIL_CONFIG`'s default and the path inside the image).
#[derive(Debug)]
struct Image {
    entrypoint: Vec<String>,
    env: BTreeMap<String, String>,
    config_source: PathBuf,
    config_in_image: String,
    ort_in_image: String,
}

fn read_image() -> Image {
    let text = std::fs::read_to_string(repo_root().join("docker/Dockerfile.enclave")).unwrap();
    let stages = stages(&text);
    let last = stages.last().expect("no FROM in the Dockerfile");
    assert!(last[0].1.starts_with("scratch"), "the final stage is not FROM scratch: {:?}", last[0]);
    let vars = args(last);
    let entrypoint = last.iter().rev().find(|(k, _)| k == "ENTRYPOINT").expect("no ENTRYPOINT").1.clone();
    let entrypoint: Vec<String> =
        serde_json::from_str(&entrypoint).expect("the ENTRYPOINT is not in exec (JSON array) form");
    let env: BTreeMap<String, String> = last
        .iter()
        .filter(|(k, _)| k == "ENV")
        .flat_map(|(_, rest)| env_pairs(rest))
        .map(|(k, v)| (k, expand(&v, &vars)))
        .collect();
    assert!(
        !last.iter().any(|(k, _)| k == "CMD"),
        "a CMD would add arguments to the entrypoint: this test would have to run them too"
    );

    // Where the configuration and the ONNX Runtime library come from: the stage that lays out the root
    // file system (its paths under /rootfs are the image's).
    let mut config = None;
    let mut ort = None;
    for stage in &stages {
        let vars = args(stage);
        for (k, rest) in stage {
            if k != "COPY" {
                continue;
            }
            let words: Vec<&str> = rest.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            let [src, dst] = words[..] else { continue };
            let dst = expand(dst, &vars);
            if let Some(in_image) = dst.strip_prefix("/rootfs") {
                if in_image.ends_with(".toml") {
                    config = Some((repo_root().join(expand(src, &vars)), in_image.to_owned()));
                }
                if in_image.contains("libonnxruntime") {
                    ort = Some(in_image.to_owned());
                }
            }
        }
    }
    let (config_source, config_in_image) = config.expect("no COPY of the enclave's configuration into /rootfs");
    Image { entrypoint, env, config_source, config_in_image, ort_in_image: ort.expect("no COPY of ONNX Runtime") }
}

#[test]
fn the_dockerfile_is_read_as_docker_would() {
    let image = read_image();
    assert_eq!(image.entrypoint[0], "/usr/local/bin/veil-enclave");
    assert_eq!(image.config_source, repo_root().join("docker/enclave.toml"));
    assert_eq!(image.config_in_image, "/etc/veil/enclave.toml");
    // The library the enclave loads is the one the image carries, and the enclave addresses are vsock.
    assert_eq!(image.env["ORT_DYLIB_PATH"], image.ort_in_image);
    assert!(image.env["VEIL_ENCLAVE_LISTEN"].starts_with("vsock://"), "{:?}", image.env);
    assert!(image.env["VEIL_PARENT_ADDR"].starts_with("vsock://"), "{:?}", image.env);
}

/// The entrypoint's arguments with the off-hardware swaps (see the module documentation); fails on an
/// argument it does not know, so that a new entrypoint flag is looked at here rather than passed blindly.
fn off_hardware(image: &Image, mock_nsm_dir: &Path, kms_ca: &Path, ready: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = image.entrypoint[1..].iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--nsm" => {
                assert_eq!(it.next().map(String::as_str), Some("hardware"), "the image must use the hardware NSM");
                out.extend([
                    "--nsm".into(),
                    "mock".into(),
                    "--mock-root-dir".into(),
                    mock_nsm_dir.display().to_string(),
                ]);
            }
            "--config" => {
                let path = it.next().expect("--config without a path");
                assert_eq!(*path, image.config_in_image, "the entrypoint names a file the image does not bake");
                out.extend(["--config".into(), image.config_source.display().to_string()]);
            }
            other => panic!("the entrypoint passes {other:?}: decide here how to run it off hardware"),
        }
    }
    out.extend([
        "--dev-kms-ca".into(),
        kms_ca.display().to_string(),
        "--ready-file".into(),
        ready.display().to_string(),
    ]);
    out
}

#[test]
fn finding_1_the_image_entrypoint_and_baked_configuration_serve_sealed_requests() {
    let image = read_image();
    let mut options = StackOptions::new(Transport::Unix, &["breast_cancer", "iris"]);
    options.image_config = Some(image.config_source.clone());
    options.start_enclave = false;
    let mut stack = Stack::start(options).unwrap();

    // The configuration the enclave will report is the file in the repository, unchanged.
    let baked = std::fs::read(&image.config_source).unwrap();
    let baked_sha384 = hex::encode(ring::digest::digest(&ring::digest::SHA384, &baked));
    let (config_path, config_sha384) = stack.enclave_config();
    assert_eq!(config_path, image.config_source);
    assert_eq!(config_sha384, baked_sha384);
    // Its key is the one the stack's requests are sealed under: the mock made it under the file's ARN.
    let configured: toml::Table = toml::from_str(std::str::from_utf8(&baked).unwrap()).unwrap();
    assert_eq!(stack.kms.key_arn, configured["models"][0]["kms_key_arn"].as_str().unwrap());
    assert_eq!(stack.kms.region, configured["kms"]["region"].as_str().unwrap());

    let ready = stack.dir.path().join("image-enclave.ready.json");
    let inner = stack.inner();
    let argv = off_hardware(&image, &inner.mock_nsm_dir, &inner.kms.ca_file, &ready);
    let mut env: Vec<(String, String)> = Vec::new();
    for (name, value) in &image.env {
        let value = match name.as_str() {
            "VEIL_ENCLAVE_LISTEN" => inner.enclave_addr.clone(),
            "VEIL_PARENT_ADDR" => inner.host_addr.clone(),
            // This machine's library (the devstack sets it) and its own library path.
            "ORT_DYLIB_PATH" | "LD_LIBRARY_PATH" => continue,
            _ => value.clone(),
        };
        env.push((name.clone(), value));
    }
    let logs = inner.logs.clone();
    inner.start_enclave_with(argv, env).unwrap_or_else(|e| panic!("{e:#}\n{}", stack_logs(&logs)));

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&ready).unwrap()).unwrap();
    assert_eq!(report["config_sha384"], baked_sha384, "{report}");

    // Sealed requests to both models come back right, decrypted and answered inside the enclave.
    for model in ["iris", "breast_cancer"] {
        let refs = references(model).unwrap();
        let case = &refs["cases"][0];
        let (status, got) = stack.infer(model, &serde_json::to_vec(&case["request"]).unwrap()).unwrap();
        assert_eq!(status, 200, "{model}: {got}\n{}", stack.enclave_log());
        veil_tests::compare_outputs(&got, case).unwrap_or_else(|e| panic!("{model}: {e}"));
    }
    // The image logs JSON (VEIL_LOG_FORMAT=json came from the Dockerfile).
    let log = stack.enclave_log();
    let first = log.lines().find(|l| !l.trim().is_empty()).unwrap_or_default();
    assert!(serde_json::from_str::<serde_json::Value>(first).is_ok(), "not JSON: {first}");
}

fn stack_logs(dir: &Path) -> String {
    ["enclave.log", "parent.log", "kms.log"]
        .iter()
        .map(|f| format!("--- {f}\n{}", veil_client::devstack::tail(&dir.join(f))))
        .collect()
}

/// What `scripts/reproduce.sh --print-image` says the reproducible image runs.
fn reproducible_image() -> serde_json::Value {
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("scripts/reproduce.sh"))
        .arg("--print-image")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The two ways to the image (docs/OPERATING.md, "Building the enclave image") must describe one image: the
/// same program at the same path, the same arguments, the same environment, the same configuration and ONNX
/// Runtime paths. (nitro-cli turns the ENTRYPOINT, there being no CMD, into `cmd`, and ENV into `env`.)
#[test]
fn the_reproducible_build_runs_what_the_dockerfile_runs() {
    let docker = read_image();
    let reproducible = reproducible_image();
    let cmd: Vec<String> = serde_json::from_value(reproducible["cmd"].clone()).unwrap();
    assert_eq!(cmd, docker.entrypoint);
    let env: BTreeMap<String, String> = reproducible["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let (k, v) = l.as_str().unwrap().split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    assert_eq!(env, docker.env);
    assert_eq!(reproducible["binary"], docker.entrypoint[0]);
    assert_eq!(reproducible["config"], docker.config_in_image);
    assert_eq!(reproducible["onnxruntime"], docker.ort_in_image);
}

/// scripts/pins.sh is the one place for the ONNX Runtime pins; the Dockerfile, which cannot source it,
/// repeats them as build arguments, and must repeat them exactly.
#[test]
fn the_dockerfile_pins_onnx_runtime_as_pins_sh_does() {
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg("source scripts/pins.sh && printf '%s\\n' \"$ORT_VERSION\" \"$ORT_WHEEL_SHA256\" \"$ORT_SO_SHA256\"")
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pins: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
    let text = std::fs::read_to_string(repo_root().join("docker/Dockerfile.enclave")).unwrap();
    let ort_stage = stages(&text)
        .into_iter()
        .find(|s| args(s).contains_key("ORT_WHEEL_SHA256"))
        .expect("no stage of the Dockerfile has an ORT_WHEEL_SHA256 argument");
    let docker = args(&ort_stage);
    assert_eq!(
        [&docker["ORT_VERSION"], &docker["ORT_WHEEL_SHA256"], &docker["ORT_SO_SHA256"]],
        [&pins[0], &pins[1], &pins[2]]
    );
    // Every stage that names the version names the same one.
    for stage in stages(&text) {
        if let Some(v) = args(&stage).get("ORT_VERSION") {
            assert_eq!(v, &pins[0], "a stage of the Dockerfile pins ONNX Runtime {v}");
        }
    }
}

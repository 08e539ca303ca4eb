//! `veil proxy` and the binary tensor data extension against in-process ONNX Runtime and the plain Python
//! server, side by side in one run.
//!
//! For each model (iris; MiniLM-L6 int8 at sequence 128, batch 1), at concurrency 1 and 16:
//!
//! - `ort`: ONNX Runtime in this process on prebuilt tensors (the floor);
//! - `att_json` / `att_bin`: the whole confidential path in attested-key mode (Veil's Rust client →
//!   OHTTP → parent → enclave), with JSON tensors, and with binary tensor data both ways;
//! - `prx_json` / `prx_bin`: a plain keep-alive HTTP client → `veil proxy` (release binary, on loopback) →
//!   the same path: what an unmodified client gets; `prx_kms`: binary tensors through `veil proxy
//!   --kms-key-id` (KMS envelope mode: AES per request, no X25519);
//! - `python`: the plain, unencrypted Python onnxruntime server (bench/python_baseline_server.py, JSON);
//! - `tc_proxy` / `tc_python`: NVIDIA's tritonclient through `veil proxy` (binary tensors, its default)
//!   and straight to the Python server (JSON, which that server speaks): the cost of confidentiality as a
//!   tritonclient user sees it (bench/triton_load.py; needs `VEIL_TEST_PYTHON`, the test venv).
//!
//! The Rust-driven targets run in ten interleaved rounds (the machine drifts); tritonclient's after them.
//! Prints a table and the ratios the targets are stated in, and writes `target/bench/proxy.json`. Run with
//! scripts/bench.sh, or `cargo bench -p veil-tests --bench proxy` after `cargo build --release
//! --workspace --bins`. `--quick` shortens every run.
mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Measurement, Pool, attested_target, http_target, measure_interleaved, start_python};
use serde_json::{Value, json};
use veil_tests::{Stack, StackOptions, Transport, references};

thread_local! {
    static PLAIN: (tokio::runtime::Runtime, veil_tests::PlainHttp) = (
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
        veil_tests::PlainHttp::default(),
    );
}

/// A plain client sending binary tensor data (as curl or any HTTP library would) to `url`.
fn binary_http_target(url: String, body: Vec<u8>, header_length: usize) -> impl Fn() + Sync {
    let n = header_length.to_string();
    move || {
        let headers = [("content-type", "application/octet-stream"), ("inference-header-content-length", n.as_str())];
        let out = PLAIN.with(|(rt, http)| rt.block_on(http.post_with(&url, body.clone(), &headers))).expect("request");
        assert!(!out.is_empty());
    }
}

/// `veil proxy` (the release binary next to this bench) in front of `stack`, in attested-key mode.
struct ProxyProcess(Child, String);

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `veil proxy` in attested-key mode, or (`kms`) in KMS envelope mode with the stack's mock KMS key.
fn start_proxy(stack: &Stack, kms: bool) -> ProxyProcess {
    let port = veil_tests::free_port().unwrap();
    let mut command = Command::new(veil_tests::bin("veil").unwrap());
    command
        .args(["proxy", "--remote", &stack.url, "--listen", &format!("127.0.0.1:{port}"), "--policy"])
        .arg(stack.client_policy());
    if kms {
        command.envs(stack.client_env()).arg("--kms-key-id").arg(
            stack.client_env().into_iter().find(|(k, _)| k == "VEIL_KMS_KEY_ID").map(|(_, v)| v).unwrap_or_default(),
        );
    }
    let child =
        command.env("VEIL_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("veil proxy");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "veil proxy did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    ProxyProcess(child, format!("127.0.0.1:{port}"))
}

/// bench/triton_load.py: tritonclient's own latency and throughput.
fn tritonclient(
    python: &str,
    hostport: &str,
    model: &str,
    case: &str,
    threads: usize,
    n: usize,
    mode: &str,
) -> Option<Measurement> {
    let refs = veil_tests::repo_root().join(format!("tests/data/references/{model}.json"));
    let out = Command::new(python)
        .arg(veil_tests::repo_root().join("bench/triton_load.py"))
        .args([hostport, refs.to_str()?, case, &threads.to_string(), &n.to_string(), "20", mode])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("triton_load.py failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let v: Value = serde_json::from_slice(out.stdout.split(|&b| b == b'\n').find(|l| !l.is_empty())?).ok()?;
    Some(Measurement {
        p50_us: v["p50_us"].as_f64()?,
        p99_us: v["p99_us"].as_f64()?,
        mean_us: v["mean_us"].as_f64()?,
        requests: v["requests"].as_u64()? as usize,
        throughput_rps: v["throughput_rps"].as_f64()?,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let scale = if quick { 0.2 } else { 1.0 };
    let env = ort::init_from(veil_tests::ort_dylib().expect("ONNX Runtime"))
        .expect("load ONNX Runtime")
        .with_name("bench")
        .build()
        .expect("ort env");
    let sessions = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let python = std::env::var("VEIL_BENCH_PYTHON").ok();
    let test_python = std::env::var("VEIL_TEST_PYTHON").ok().filter(|p| !p.is_empty());

    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris", "minilm"]))
        .expect("start the Veil stack (build release binaries first)");
    let proxy = start_proxy(&stack, false);
    let proxy_url = format!("http://{}", proxy.1);
    let kms_proxy = start_proxy(&stack, true);
    let kms_proxy_url = format!("http://{}", kms_proxy.1);
    let mut results: BTreeMap<String, Value> = BTreeMap::new();
    let mut rows = Vec::new();

    let plan = [("iris", "batch3_synthetic", 300, 3000, 300), ("minilm", "seq128", 20, 200, 20)];
    for (model, case_name, warmup, n1, n16) in plan {
        if only.as_deref().is_some_and(|o| o != model) {
            continue;
        }
        let refs = references(model).unwrap();
        let case = refs["cases"].as_array().unwrap().iter().find(|c| c["name"] == case_name).unwrap().clone();
        let request = case["request"].clone();
        let body = serde_json::to_vec(&request).unwrap();
        let (bin, header_length) = veil_tests::binary_request(&request);
        let n1 = ((n1 as f64) * scale).max(20.0) as usize;
        let n16 = ((n16 as f64) * scale).max(4.0) as usize;

        let pool = Pool::of(&env, model, sessions);
        let ort_call = || pool.run(&request);
        let att_json = attested_target(&stack, model, body.clone(), None);
        let att_bin = attested_target(&stack, model, bin.clone(), Some(header_length));
        let path = format!("/v2/models/{model}/infer");
        let prx_json = http_target(&proxy_url, path.clone(), body.clone());
        let prx_bin = binary_http_target(format!("{proxy_url}{path}"), bin.clone(), header_length);
        let prx_kms = binary_http_target(format!("{kms_proxy_url}{path}"), bin.clone(), header_length);
        let py = python.as_deref().and_then(|p| start_python(p, model));
        let py_call = py.as_ref().map(|s| http_target(&s.1, path.clone(), body.clone()));

        let mut per: BTreeMap<&str, BTreeMap<&str, Measurement>> = BTreeMap::new();
        for (conc, n) in [(1usize, n1), (16usize, n16)] {
            let key = if conc == 1 { "c1" } else { "c16" };
            eprintln!("{model}: concurrency {conc}, {} requests per target, in 10 interleaved rounds...", conc * n);
            let mut targets: Vec<common::Target<'_>> = vec![
                ("ort", &ort_call),
                ("att_json", &att_json),
                ("att_bin", &att_bin),
                ("prx_json", &prx_json),
                ("prx_bin", &prx_bin),
                ("prx_kms", &prx_kms),
            ];
            if let Some(call) = &py_call {
                targets.push(("python", call));
            }
            for (name, m) in measure_interleaved(conc, warmup, n, 10, &targets) {
                per.entry(name).or_default().insert(key, m);
            }
            // tritonclient runs in its own processes: measured after, not interleaved.
            if let Some(tp) = &test_python {
                if let Some(m) = tritonclient(tp, &proxy.1, model, case_name, conc, n, "binary") {
                    per.entry("tc_proxy").or_default().insert(key, m);
                }
                if let Some(s) = &py {
                    let hostport = s.1.trim_start_matches("http://");
                    if let Some(m) = tritonclient(tp, hostport, model, case_name, conc, n, "json") {
                        per.entry("tc_python").or_default().insert(key, m);
                    }
                }
            }
        }
        let p50 = |t: &str| per.get(t).map(|m| m["c1"].p50_us);
        let rps16 = |t: &str| per.get(t).and_then(|m| m.get("c16")).map(|m| m.throughput_rps);
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
        let summary = json!({
            "att_bin_over_ort_p50": ratio(p50("att_bin"), p50("ort")),
            "att_bin_added_p50_us": p50("att_bin").zip(p50("ort")).map(|(a, b)| a - b),
            "att_json_over_ort_p50": ratio(p50("att_json"), p50("ort")),
            "prx_bin_over_ort_p50": ratio(p50("prx_bin"), p50("ort")),
            "prx_bin_added_p50_us": p50("prx_bin").zip(p50("ort")).map(|(a, b)| a - b),
            "prx_bin_over_python_rps_c16": ratio(rps16("prx_bin"), rps16("python")),
            "prx_kms_over_python_rps_c16": ratio(rps16("prx_kms"), rps16("python")),
            "prx_kms_added_p50_us": p50("prx_kms").zip(p50("ort")).map(|(a, b)| a - b),
            "prx_json_over_python_rps_c16": ratio(rps16("prx_json"), rps16("python")),
            "tc_proxy_over_tc_python_p50": ratio(p50("tc_proxy"), p50("tc_python")),
            "tc_proxy_over_tc_python_rps_c16": ratio(rps16("tc_proxy"), rps16("tc_python")),
        });
        for (target, m) in &per {
            let c16 = m.get("c16");
            rows.push(format!(
                "| {model:<6} | {target:<9} | {:>10.1} | {:>10.1} | {:>9.0} | {:>10} | {:>10} | {:>9} |",
                m["c1"].p50_us,
                m["c1"].p99_us,
                m["c1"].throughput_rps,
                c16.map_or("-".into(), |c| format!("{:.1}", c.p50_us)),
                c16.map_or("-".into(), |c| format!("{:.1}", c.p99_us)),
                c16.map_or("-".into(), |c| format!("{:.0}", c.throughput_rps)),
            ));
        }
        let f =
            |k: &str, digits: usize| summary[k].as_f64().map_or_else(|| "n/a".to_owned(), |v| format!("{v:.digits$}"));
        rows.push(format!(
            "| {model:<6} | ratios    | att_bin/ort p50 {} (+{} µs), att_json/ort {}; prx_bin/ort p50 {} (+{} µs); prx_bin/python rps@16 {}, prx_json/python {}, prx_kms/python {} (+{} µs); tritonclient proxy/python p50 {}, rps@16 {} |",
            f("att_bin_over_ort_p50", 3),
            f("att_bin_added_p50_us", 0),
            f("att_json_over_ort_p50", 3),
            f("prx_bin_over_ort_p50", 3),
            f("prx_bin_added_p50_us", 0),
            f("prx_bin_over_python_rps_c16", 2),
            f("prx_json_over_python_rps_c16", 2),
            f("prx_kms_over_python_rps_c16", 2),
            f("prx_kms_added_p50_us", 0),
            f("tc_proxy_over_tc_python_p50", 3),
            f("tc_proxy_over_tc_python_rps_c16", 2),
        ));
        results.insert(
            model.to_owned(),
            json!({ "case": case_name, "binary_request_bytes": bin.len(), "json_request_bytes": body.len(), "targets": per, "summary": summary }),
        );
    }
    println!("\n| model  | target    | c1 p50 µs  | c1 p99 µs  | c1 req/s  | c16 p50 µs | c16 p99 µs | c16 req/s |");
    println!("|--------|-----------|------------|------------|-----------|------------|------------|-----------|");
    for r in &rows {
        println!("{r}");
    }
    let out = json!({
        "bench": "proxy",
        "quick": quick,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "sessions_per_model": sessions,
        "path": "client -> [veil proxy, loopback] -> veil-parent (HTTP, loopback TCP) -> veil-enclave (Unix socket)",
        "models": results,
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| veil_tests::repo_root().join("target"));
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("proxy.json"), serde_json::to_vec_pretty(&out).unwrap()).unwrap();
    println!("\nwrote {}", dir.join("proxy.json").display());
}

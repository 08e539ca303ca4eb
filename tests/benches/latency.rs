//! Latency and throughput: in-process ONNX Runtime against the full Veil path, side by side in one run.
//!
//! For each model (iris; MiniLM-L6 int8 at sequence 128, batch 1) it measures, at concurrency 1 and 16:
//!
//! - `ort`: ONNX Runtime in this process, on prebuilt tensors (the floor: no JSON, no sockets);
//! - `enclave`: sealed frames straight to the enclave's socket (no parent, no HTTP);
//! - `http0`: `GET /healthz`, the HTTP floor (client and parent only);
//! - `inproc`: Veil's own request handling in this process (v2 JSON parsed and checked, ONNX Runtime,
//!   JSON answer), without sockets: the protocol's share of the cost;
//! - `veil`: client → parent (HTTP on loopback) → enclave (Unix socket standing in for vsock), the real
//!   release binaries, Open Inference Protocol JSON sealed in the KMS envelope both ways (the enclave's
//!   data key cached after the first request of each client session; the mock KMS for the first);
//! - `attested`: the same path in attested-key mode: the client (verified against the stack's policy once
//!   per load thread) encapsulates Binary HTTP with OHTTP to the enclave's attested key; no KMS at all;
//! - `python`: a plain, unencrypted Python onnxruntime HTTP server speaking the same JSON
//!   (bench/python_baseline_server.py), when `VEIL_BENCH_PYTHON` names a Python that has onnxruntime.
//!
//! The targets run in ten interleaved rounds, so that the machine's drift over the run falls on all of them
//! alike. It prints a table with p50/p99 latency, throughput and the ratios, and writes JSON to
//! `target/bench/latency.json`. Run it with scripts/bench.sh (which builds the release binaries and the
//! Python environment first), or `cargo bench -p veil-tests --bench latency` after
//! `cargo build --release --workspace --bins`. `--quick` shortens every run.
mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{
    Measurement, Pool, attested_target, http_target, measure_interleaved, sealed_target, start_python, with_client,
};
use serde_json::{Value, json};
use veil_tests::{Stack, StackOptions, Transport, references};

/// GETs a path (the HTTP floor: no body, no enclave).
fn http_get_target(base: &str, path: &'static str) -> impl Fn() + Sync {
    let base = base.to_owned();
    move || {
        with_client(&base, |rt, client| rt.block_on(client.get(path))).expect("http get");
    }
}

/// Sends sealed inference frames straight to the enclave's Unix socket, one connection per thread: the
/// enclave's share of the path (no parent, no HTTP). Sealing and opening are timed too, as in `veil`.
fn enclave_target<'a>(stack: &'a Stack, model: &'a str, body: Vec<u8>) -> impl Fn() + Sync + 'a {
    use std::io::{Read, Write};
    let path = stack.enclave_addr.trim_start_matches("unix://").to_owned();
    let conns: Mutex<Vec<std::os::unix::net::UnixStream>> = Mutex::new(Vec::new());
    move || {
        let mut s =
            conns.lock().unwrap().pop().unwrap_or_else(|| std::os::unix::net::UnixStream::connect(&path).unwrap());
        let (wire, tag) = stack.seal(model, &body).unwrap();
        let req = veil_protocol::message::EnclaveRequest::Infer { model: model.to_owned() };
        let payload = veil_protocol::message::encode(1, &req, &wire).unwrap();
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        s.write_all(&frame).unwrap();
        let mut h = [0u8; 4];
        s.read_exact(&mut h).unwrap();
        let mut answer = vec![0u8; u32::from_be_bytes(h) as usize];
        s.read_exact(&mut answer).unwrap();
        let msg = veil_protocol::message::decode::<veil_protocol::message::EnclaveResponse>(&answer).unwrap();
        match msg.body {
            veil_protocol::message::EnclaveResponse::Infer => {
                stack.open(&tag, &answer[msg.attachment]).unwrap();
            }
            other => panic!("{other:?}"),
        }
        conns.lock().unwrap().push(s);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only MODEL` measures one model (for quick comparisons while tuning).
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let scale = if quick { 0.2 } else { 1.0 };
    let ort_dylib = veil_tests::ort_dylib().expect("ONNX Runtime");
    let env = ort::init_from(&ort_dylib).expect("load ONNX Runtime").with_name("bench").build().expect("ort env");
    let sessions = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let python = std::env::var("VEIL_BENCH_PYTHON").ok();

    // The confidential stack: mock KMS, sealed requests; data keys cached in the enclave after the first.
    let stack = Stack::start(StackOptions::new(Transport::Unix, &["iris", "minilm"]))
        .expect("start the Veil stack (build release binaries first)");
    let sealed_stack = &stack;
    let kms_calls = || -> u64 {
        let (_, body) = veil_tests::http_get(&sealed_stack.url, "/readyz").unwrap();
        serde_json::from_slice::<Value>(&body).unwrap()["kms_calls"].as_u64().unwrap()
    };
    let mut sealed_requests = 0u64;
    let (mut attested_requests, mut attested_kms_calls) = (0u64, 0u64);
    let kms_before = kms_calls();
    let mut results: BTreeMap<String, Value> = BTreeMap::new();
    let mut rows = Vec::new();

    // (model, reference case, warmup, requests per thread at c=1, requests per thread at c=16)
    let plan = [("iris", "batch3_synthetic", 300, 3000, 300), ("minilm", "seq128", 20, 200, 20)];
    for (model, case_name, warmup, n1, n16) in plan {
        if only.as_deref().is_some_and(|o| o != model) {
            continue;
        }
        let refs = references(model).unwrap();
        let case = refs["cases"].as_array().unwrap().iter().find(|c| c["name"] == case_name).unwrap().clone();
        let request = case["request"].clone();
        let body = serde_json::to_vec(&request).unwrap();
        let n1 = ((n1 as f64) * scale).max(20.0) as usize;
        let n16 = ((n16 as f64) * scale).max(4.0) as usize;

        let pool = Pool::of(&env, model, sessions);
        let ort_call = || pool.run(&request);
        // Veil's request handling in this process: JSON parse, checks against the model, ONNX Runtime,
        // JSON answer. The difference to `ort` is the cost of the protocol; the rest is transport.
        let model_bytes = std::fs::read(veil_tests::model_path(model).unwrap()).unwrap();
        let opts = veil_enclave::model::SessionOptions { intra_op_threads: 1, sessions };
        let inproc = Arc::new(veil_enclave::model::Model::load(&env, model, &model_bytes, [0; 48], opts).unwrap());
        let inproc_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let inproc_call = || {
            let out = inproc_rt.block_on(inproc.infer(body.clone())).expect("in-process infer");
            assert!(!out.is_empty());
        };
        let sealed_call = sealed_target(sealed_stack, model, body.clone());
        let sealed_count = std::sync::atomic::AtomicU64::new(0);
        let sealed_counted = || {
            sealed_call();
            sealed_count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        // Breakdown of the path: the enclave alone (frames straight to its socket, no parent, no HTTP), and
        // the HTTP floor (client and parent only: GET /healthz never reaches the enclave).
        let enclave_call = enclave_target(&stack, model, body.clone());
        let attested_call = attested_target(&stack, model, body.clone(), None);
        let floor_call = http_get_target(&stack.url, "/healthz");
        let py = python.as_deref().and_then(|p| start_python(p, model));
        let py_call = py.as_ref().map(|s| http_target(&s.1, format!("/v2/models/{model}/infer"), body.clone()));

        let mut per: BTreeMap<&str, BTreeMap<&str, Measurement>> = BTreeMap::new();
        for (conc, n) in [(1usize, n1), (16usize, n16)] {
            let key = if conc == 1 { "c1" } else { "c16" };
            eprintln!("{model}: concurrency {conc}, {} requests per target, in 10 interleaved rounds...", conc * n);
            let mut targets: Vec<common::Target<'_>> = vec![
                ("ort", &ort_call),
                ("inproc", &inproc_call),
                ("veil", &sealed_counted),
                ("attested", &attested_call),
            ];
            if conc == 1 {
                targets.push(("enclave", &enclave_call));
                targets.push(("http0", &floor_call));
            }
            if let Some(call) = &py_call {
                targets.push(("python", call));
            }
            for (name, m) in measure_interleaved(conc, warmup, n, 10, &targets) {
                per.entry(name).or_default().insert(key, m);
            }
            // KMS calls made by attested-key requests: counted over requests of their own.
            let kms_at = kms_calls();
            for _ in 0..50 {
                attested_call();
            }
            attested_kms_calls += kms_calls() - kms_at;
            attested_requests += 50;
        }
        let ort1 = per["ort"]["c1"].clone();
        let veil1 = per["veil"]["c1"].clone();
        sealed_requests += sealed_count.load(std::sync::atomic::Ordering::Relaxed);
        let summary = json!({
            "veil_over_ort_p50": veil1.p50_us / ort1.p50_us,
            "veil_added_p50_us": veil1.p50_us - ort1.p50_us,
            "veil_over_ort_throughput_c16": per["veil"]["c16"].throughput_rps / per["ort"]["c16"].throughput_rps,
            "attested_over_ort_p50": per["attested"]["c1"].p50_us / ort1.p50_us,
            "attested_added_p50_us": per["attested"]["c1"].p50_us - ort1.p50_us,
            "attested_over_veil_p50": per["attested"]["c1"].p50_us / veil1.p50_us,
            "attested_over_veil_throughput_c16": per["attested"]["c16"].throughput_rps / per["veil"]["c16"].throughput_rps,
            "veil_over_python_throughput_c16": per.get("python").map(|p| per["veil"]["c16"].throughput_rps / p["c16"].throughput_rps),
            "veil_over_python_throughput_c1": per.get("python").map(|p| per["veil"]["c1"].throughput_rps / p["c1"].throughput_rps),
        });
        for (target, m) in &per {
            if !m.contains_key("c16") {
                rows.push(format!(
                    "| {model:<6} | {target:<6} | {:>10.1} | {:>10.1} | {:>11.0} |          - |          - |           - |",
                    m["c1"].p50_us, m["c1"].p99_us, m["c1"].throughput_rps
                ));
                continue;
            }
            rows.push(format!(
                "| {model:<6} | {target:<6} | {:>10.1} | {:>10.1} | {:>11.0} | {:>10.1} | {:>10.1} | {:>11.0} |",
                m["c1"].p50_us,
                m["c1"].p99_us,
                m["c1"].throughput_rps,
                m["c16"].p50_us,
                m["c16"].p99_us,
                m["c16"].throughput_rps
            ));
        }
        rows.push(format!(
            "| {model:<6} | ratios | attested/ort p50 = {:.3} (+{:.0} µs); attested/veil p50 = {:.3}, rps@16 = {:.3} |",
            summary["attested_over_ort_p50"].as_f64().unwrap(),
            summary["attested_added_p50_us"].as_f64().unwrap(),
            summary["attested_over_veil_p50"].as_f64().unwrap(),
            summary["attested_over_veil_throughput_c16"].as_f64().unwrap(),
        ));
        rows.push(format!(
            "| {model:<6} | ratios | veil/ort p50 = {:.3} (+{:.0} µs); veil/ort rps@16 = {:.3}{} |",
            summary["veil_over_ort_p50"].as_f64().unwrap(),
            summary["veil_added_p50_us"].as_f64().unwrap(),
            summary["veil_over_ort_throughput_c16"].as_f64().unwrap(),
            summary["veil_over_python_throughput_c16"]
                .as_f64()
                .map(|r| format!(
                    "; veil/python rps@16 = {r:.2}, rps@1 = {:.2}",
                    summary["veil_over_python_throughput_c1"].as_f64().unwrap_or(0.0)
                ))
                .unwrap_or_default()
        ));
        results.insert(model.to_owned(), json!({ "case": case_name, "targets": per, "summary": summary }));
    }

    let kms_per_1000 = (kms_calls() - kms_before) as f64 * 1000.0 / sealed_requests.max(1) as f64;
    rows.push(format!("| all    | veil   | KMS calls per 1,000 sealed requests: {kms_per_1000:.3} ({sealed_requests} requests, one session per load thread) |"));
    rows.push(format!(
        "| all    | attested | KMS calls: {attested_kms_calls} over {attested_requests} attested-key requests |"
    ));
    println!("\n| model  | target | c1 p50 µs  | c1 p99 µs  | c1 req/s    | c16 p50 µs | c16 p99 µs | c16 req/s   |");
    println!("|--------|--------|------------|------------|-------------|------------|------------|-------------|");
    for r in &rows {
        println!("{r}");
    }
    let out = json!({
        "bench": "latency",
        "quick": quick,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "sessions_per_model": sessions,
        "intra_op_threads": 1,
        "path": "client (hyper, keep-alive) -> veil-parent (HTTP, loopback TCP) -> veil-enclave (Unix socket)",
        "models": results,
        "sealed_requests": sealed_requests,
        "kms_calls_per_1000_sealed_requests": kms_per_1000,
        "attested_requests": attested_requests,
        "attested_kms_calls": attested_kms_calls,
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| veil_tests::repo_root().join("target"));
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("latency.json"), serde_json::to_vec_pretty(&out).unwrap()).unwrap();
    println!("\nwrote {}", dir.join("latency.json").display());
}

//! What the benchmarks share: the load driver (threads, warm-up, percentiles), an in-process ONNX Runtime
//! pool (the floor every ratio is taken against), keep-alive HTTP clients per load thread, and the plain
//! Python onnxruntime server (bench/python_baseline_server.py).
#![allow(dead_code)] // each bench uses its own part of this

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;
use serde_json::Value;

pub struct Pool {
    pub idle: Mutex<Vec<Session>>,
    pub ready: Condvar,
}

impl Pool {
    /// `sessions` sessions of `model` (1 intra-op thread each), as the enclave runs them.
    pub fn of(env: &ort::environment::Environment, model: &str, sessions: usize) -> Pool {
        let mut built = Vec::new();
        for _ in 0..sessions {
            let mut b = Session::builder(env).unwrap().with_intra_threads(1).unwrap();
            built.push(b.commit_from_file(veil_tests::model_path(model).unwrap()).unwrap());
        }
        Pool { idle: Mutex::new(built), ready: Condvar::new() }
    }

    pub fn run(&self, request: &Value) {
        let mut session = {
            let mut idle = self.idle.lock().unwrap();
            loop {
                if let Some(s) = idle.pop() {
                    break s;
                }
                idle = self.ready.wait(idle).unwrap();
            }
        };
        let feeds = feeds(request);
        let outputs = session.run(feeds).expect("ort run");
        assert!(outputs.len() > 0);
        drop(outputs);
        self.idle.lock().unwrap().push(session);
        self.ready.notify_one();
    }
}

/// Tensors for ONNX Runtime from a v2 request (FP32 and INT64 inputs: what the sample models take).
pub fn feeds(request: &Value) -> Vec<(String, SessionInputValue<'static>)> {
    request["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let shape: Vec<i64> = i["shape"].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect();
            let data = i["data"].as_array().unwrap();
            let value: SessionInputValue<'static> = match i["datatype"].as_str().unwrap() {
                "FP32" => {
                    Tensor::from_array((shape, data.iter().map(|x| x.as_f64().unwrap() as f32).collect::<Vec<f32>>()))
                        .unwrap()
                        .into()
                }
                "INT64" => Tensor::from_array((shape, data.iter().map(|x| x.as_i64().unwrap()).collect::<Vec<i64>>()))
                    .unwrap()
                    .into(),
                other => panic!("bench supports FP32 and INT64 inputs, not {other}"),
            };
            (i["name"].as_str().unwrap().to_owned(), value)
        })
        .collect()
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Measurement {
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub requests: usize,
    pub throughput_rps: f64,
}

pub fn summarize(mut lat: Vec<Duration>, elapsed: Duration) -> Measurement {
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6;
    let mean = lat.iter().map(|d| d.as_secs_f64()).sum::<f64>() / lat.len() as f64 * 1e6;
    Measurement {
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        mean_us: mean,
        requests: lat.len(),
        throughput_rps: lat.len() as f64 / elapsed.as_secs_f64(),
    }
}

/// A named target for [`measure_interleaved`].
pub type Target<'a> = (&'static str, &'a (dyn Fn() + Sync));

/// Measures every target in `rounds` interleaved rounds (each round runs each target for
/// `per_thread / rounds` calls per thread, in turn), so that the machine's drift over the run (it is 2×
/// on these virtual machines) falls on every target alike and their ratios mean something. The same
/// `concurrency` load threads run every round, so what they keep (keep-alive connections, KMS sessions,
/// verified gateways) is set up once, as a real client's would be. Each thread warms every target up with
/// its share of `warmup` calls first. Latencies pool over the rounds; throughput is requests over the wall
/// time spent on that target.
pub fn measure_interleaved(
    concurrency: usize,
    warmup: usize,
    per_thread: usize,
    rounds: usize,
    targets: &[Target<'_>],
) -> BTreeMap<&'static str, Measurement> {
    let concurrency = concurrency.max(1);
    let rounds = rounds.clamp(1, per_thread.max(1));
    let per_round = per_thread.div_ceil(rounds);
    let warm = warmup.div_ceil(concurrency).max(1);
    let barrier = std::sync::Barrier::new(concurrency);
    let per_thread_results: Vec<(Vec<Vec<Duration>>, Vec<Duration>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..concurrency)
            .map(|i| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut lat = vec![Vec::with_capacity(per_round * rounds); targets.len()];
                    let mut wall = vec![Duration::ZERO; targets.len()];
                    for (_, f) in targets {
                        for _ in 0..warm {
                            f();
                        }
                    }
                    for _ in 0..rounds {
                        for (t, (_, f)) in targets.iter().enumerate() {
                            barrier.wait();
                            let start = Instant::now();
                            for _ in 0..per_round {
                                let t0 = Instant::now();
                                f();
                                lat[t].push(t0.elapsed());
                            }
                            // The phase ends when every thread is done: thread 0 times it.
                            barrier.wait();
                            if i == 0 {
                                wall[t] += start.elapsed();
                            }
                        }
                    }
                    (lat, wall)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut out = BTreeMap::new();
    for (t, (name, _)) in targets.iter().enumerate() {
        let lat: Vec<Duration> = per_thread_results.iter().flat_map(|(l, _)| l[t].iter().copied()).collect();
        let wall = per_thread_results.first().map_or(Duration::ZERO, |(_, w)| w[t]);
        out.insert(*name, summarize(lat, wall));
    }
    out
}

thread_local! {
    /// Each load thread drives its own current-thread runtime and client (hyper, keep-alive): the
    /// connection task runs on the calling thread, so the client adds no thread hand-off of its own.
    static CLIENTS: std::cell::RefCell<BTreeMap<String, (tokio::runtime::Runtime, veil_client::Client)>> =
        const { std::cell::RefCell::new(BTreeMap::new()) };
}

pub fn with_client<T>(base: &str, f: impl FnOnce(&tokio::runtime::Runtime, &veil_client::Client) -> T) -> T {
    CLIENTS.with(|c| {
        let mut map = c.borrow_mut();
        let (rt, client) = map.entry(base.to_owned()).or_insert_with(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            (rt, veil_client::Client::new(base).unwrap())
        });
        f(rt, client)
    })
}

thread_local! {
    /// Each load thread's plain keep-alive client for the Python baseline, with its runtime.
    static PLAIN: (tokio::runtime::Runtime, veil_tests::PlainHttp) = (
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
        veil_tests::PlainHttp::default(),
    );
}

/// A plaintext HTTP target that is not Veil (the Python baseline): a keep-alive client per thread.
pub fn http_target(base: &str, path: String, body: Vec<u8>) -> impl Fn() + Sync {
    let url = format!("{base}{path}");
    move || {
        let out = PLAIN.with(|(rt, http)| rt.block_on(http.post(&url, body.clone()))).expect("http request");
        assert!(!out.is_empty());
    }
}

thread_local! {
    /// Each load thread keeps its own KMS session (data key) per stack: as real clients do.
    static SESSIONS: std::cell::RefCell<BTreeMap<String, veil_client::kms::Session>> = const { std::cell::RefCell::new(BTreeMap::new()) };
}

/// Sealed requests through the KMS stack (veil_client's session: GenerateDataKey once, then AES-GCM).
pub fn sealed_target<'a>(stack: &'a veil_tests::Stack, model: &'a str, body: Vec<u8>) -> impl Fn() + Sync + 'a {
    move || {
        let out = with_client(&stack.url, |rt, client| {
            rt.block_on(async {
                let mut session = match SESSIONS.with(|s| s.borrow_mut().remove(&stack.url)) {
                    Some(s) => s,
                    None => stack.session(BTreeMap::new()).await.expect("session"),
                };
                let out = client.infer(&mut session, &stack.model_ref(model), &body).await;
                SESSIONS.with(|s| s.borrow_mut().insert(stack.url.clone(), session));
                out
            })
        })
        .expect("sealed request");
        assert!(!out.body().is_empty());
    }
}

thread_local! {
    /// Each load thread keeps its own attested-key client per stack (one verification, then OHTTP per
    /// request).
    static OBLIVIOUS: std::cell::RefCell<BTreeMap<String, std::sync::Arc<veil_client::oblivious::ObliviousClient>>> =
        const { std::cell::RefCell::new(BTreeMap::new()) };
}

/// Attested-key mode from Veil's Rust client, to `model` of `stack`: JSON (`header_length` None) or a
/// body with binary tensor data and that JSON length. The answer must be 200 from the expected digest,
/// binary when asked so.
pub fn attested_target<'a>(
    stack: &'a veil_tests::Stack,
    model: &'a str,
    body: Vec<u8>,
    header_length: Option<usize>,
) -> impl Fn() + Sync + 'a {
    let policy = veil_client::trust::ClientPolicy::load(&stack.client_policy()).expect("client policy");
    let digest = stack.digest(model);
    let digest_hex = hex::encode(digest);
    let length = header_length.map(|n| n.to_string());
    let path = format!("/v2/models/{model}/infer");
    move || {
        let client = OBLIVIOUS.with(|c| {
            c.borrow_mut()
                .entry(stack.url.clone())
                .or_insert_with(|| {
                    let http = veil_client::Client::new(&stack.url).unwrap();
                    std::sync::Arc::new(veil_client::oblivious::ObliviousClient::new(http, policy.clone()))
                })
                .clone()
        });
        let mut headers: Vec<(&str, &[u8])> = vec![("veil-model-sha384", digest_hex.as_bytes())];
        if let Some(n) = &length {
            headers.push(("content-type", b"application/octet-stream"));
            headers.push(("inference-header-content-length", n.as_bytes()));
        }
        let out = with_client(&stack.url, |rt, _| rt.block_on(client.send("POST", &path, &headers, &body)))
            .expect("attested request");
        assert_eq!(out.status, 200, "{:?}", out.error_message());
        assert_eq!(out.model_sha384(), Some(digest));
        assert_eq!(out.header("inference-header-content-length").is_some(), length.is_some());
    }
}

pub struct PythonServer(pub std::process::Child, pub String);

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start_python(python: &str, model: &str) -> Option<PythonServer> {
    use std::io::BufRead;
    let script = veil_tests::repo_root().join("bench/python_baseline_server.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .args(["--model", veil_tests::model_path(model).ok()?.to_str()?, "--name", model, "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take()?).read_line(&mut line).ok()?;
    let url = line.trim().strip_prefix("listening on ")?.to_owned();
    Some(PythonServer(child, url))
}

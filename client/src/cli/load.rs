//! `veil load`: many sealed requests at once, for operators sizing a fleet and for the soak tests.
//!
//! Each of `--concurrency` workers is one client, as a real one would be: its own HTTP connection pool and,
//! in KMS envelope mode, its own KMS session (one data key, renewed by the session's limits), or in
//! attested-key mode its own OHTTP client (the enclave is verified once, up front, before anything is sent;
//! each worker verifies again by itself when the keys change, as after an enclave restart). Workers take
//! requests from one shared count until `--requests` are issued or `--duration` has passed. Every request
//! goes through the library's retrying call, so `--retries` means here what it means for `veil infer`.
//!
//! Every answer is checked. The model digest it names must be the one asked for, and its outputs must be
//! the reference's (the first answer's, or `--expect FILE`'s): an answer that differs is a *wrong answer*,
//! the one outcome that must never happen. Failures are counted by kind. Latency runs from a request's
//! first attempt to its final outcome, retries included, and goes into an HDR histogram (1 µs to 1 h, three
//! significant digits), answered requests only: fast refusals would flatter the percentiles.
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use veil_client::oblivious::{ObliviousClient, ObliviousError, VerifiedGateway};
use veil_client::trust::ClientPolicy;
use veil_client::{Client, ClientError, RetryPolicy};
use veil_protocol::envelope::ModelRef;

use super::infer::{KmsArgs, kms_model_digest, load_policy, read_request, report, unverified_gateway};
use super::{EXIT_FAILED, EXIT_USAGE};

/// Requests sent when neither `--requests` nor `--duration` is given.
const DEFAULT_REQUESTS: u64 = 1000;
/// Wrong answers described in the report (all are counted).
const WRONG_EXAMPLES: usize = 5;

/// Load a Veil deployment with sealed inference requests; report latency, throughput, errors and wrong answers.
#[derive(Debug, Args)]
#[command(after_help = "\
Sends the same v2 request (--input) many times, from --concurrency workers at once, each one
client as a real one would be (its own connections, and its own KMS session or attested-key
client), until --requests are sent or --duration seconds have passed, whichever comes first
(Ctrl-C or SIGTERM stop it early: requests in flight finish and the report covers what was
sent). A progress bar shows on a terminal. Then it prints latency percentiles (p50, p90, p99,
p99.9, max; first attempt to final answer, retries included, answered requests only), throughput
(answers per second), failures by kind, retries, and WRONG ANSWERS: every answer must name the
model digest asked for and match the reference (the first answer, or --expect FILE, a v2
response such as `veil infer` prints), number for number within --atol/--rtol (default:
exactly).

Modes, as for `veil infer`: --policy FILE (attested-key mode: the enclave is verified once
before anything is sent) or --kms-key-id KEY (KMS envelope mode: the model digest from
--expect-model-sha384 or the enclave's verified attestation). In KMS mode, each worker's first
request also makes its data key.

Sizing: run it from a client machine against one instance, raise --concurrency until throughput
stops growing while p99 still meets your target; that throughput per instance, with headroom,
sizes the fleet.

Examples:
  veil load --policy policy.toml --model iris --input examples/iris.json --requests 100000 --concurrency 64
  veil load --kms-key-id alias/veil --model minilm --input req.json --duration 60 --concurrency 8 --json
  veil load --policy policy.toml --model iris --input req.json --expect answer.json --retries 8

--json prints one object on stdout: requests, ok, wrong, failed, retries, rps, duration_secs,
latency_us {min, mean, p50, p90, p99, p999, max}, errors {kind: count}, wrong_examples, and the
settings.

Exit codes: 0 every request answered rightly, 1 a wrong answer or a failed request, 2 bad input
or usage, 3 server unreachable before the run, 4 the enclave's attestation did not verify
(nothing was sent).")]
pub struct LoadArgs {
    /// The parent's URL.
    #[arg(long, env = "VEIL_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The model to run.
    #[arg(long)]
    pub model: String,
    /// The v2 request to send, as a JSON file (or `-` for standard input).
    #[arg(long)]
    pub input: PathBuf,
    /// Requests to send in all (default 1000; with --duration and no --requests: as many as fit).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,
    /// Requests in flight at once: workers, each one client.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// Stop sending after this many seconds (requests in flight finish).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub duration: Option<u64>,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// A v2 response (JSON) every answer must match (default: the first answer).
    #[arg(long)]
    pub expect: Option<PathBuf>,
    /// Absolute tolerance for numbers compared with the reference.
    #[arg(long, default_value_t = 0.0)]
    pub atol: f64,
    /// Relative tolerance for numbers compared with the reference (|a - b| <= atol + rtol × |b|).
    #[arg(long, default_value_t = 0.0)]
    pub rtol: f64,
    /// Retries of a request that failed in a way that may succeed again (see `veil infer --help`).
    #[arg(long, default_value_t = RetryPolicy::default().max_retries)]
    pub retries: u32,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Threads of this process (default: one per core, at most 4).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
    /// KMS mode: the SHA-384 of the model (96 hex digits); default: from the verified attestation.
    #[arg(long, value_parser = super::infer::sha384_arg)]
    pub expect_model_sha384: Option<[u8; 48]>,
    /// KMS mode: the root the enclave's attestation must chain to (PEM; default: AWS's Nitro root).
    #[arg(long, env = "VEIL_ATTESTATION_ROOT")]
    pub root: Option<PathBuf>,
    /// KMS mode: oldest attestation document accepted, in seconds.
    #[arg(long, default_value_t = 300)]
    pub max_age: u64,
    /// Attested-key mode: the client policy (`veil policy new`) the enclave must satisfy.
    #[arg(long, env = "VEIL_POLICY")]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub kms: KmsArgs,
}

/// What every answer must equal.
#[derive(Debug)]
struct Reference {
    json: Option<Value>,
    raw: Vec<u8>,
}

impl Reference {
    fn new(raw: &[u8]) -> Reference {
        Reference { json: serde_json::from_slice(raw).ok(), raw: raw.to_vec() }
    }

    /// Compares an answer with the reference: the model name and every output (name, datatype, shape,
    /// parameters exactly; numbers within the tolerance), or the bytes when the reference is not JSON.
    fn check(&self, got: &[u8], atol: f64, rtol: f64) -> Result<(), String> {
        let Some(want) = &self.json else {
            return if got == self.raw.as_slice() {
                Ok(())
            } else {
                Err(format!("{} bytes that differ from the reference's {}", got.len(), self.raw.len()))
            };
        };
        let got: Value = serde_json::from_slice(got).map_err(|e| format!("the answer is not JSON: {e}"))?;
        if got.get("model_name") != want.get("model_name") {
            return Err(format!("model_name {} instead of {}", got["model_name"], want["model_name"]));
        }
        let outputs = |v: &Value| -> BTreeMap<String, Value> {
            v["outputs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|o| (o["name"].as_str().unwrap_or_default().to_owned(), o.clone()))
                .collect()
        };
        let (g, w) = (outputs(&got), outputs(want));
        if g.keys().ne(w.keys()) {
            return Err(format!(
                "outputs {:?} instead of {:?}",
                g.keys().collect::<Vec<_>>(),
                w.keys().collect::<Vec<_>>()
            ));
        }
        for (name, wo) in &w {
            let go = &g[name];
            for field in ["datatype", "shape", "parameters"] {
                if go.get(field) != wo.get(field) {
                    return Err(format!("output {name}: {field} {} instead of {}", go[field], wo[field]));
                }
            }
            let (gd, wd) = (go["data"].as_array(), wo["data"].as_array());
            let (Some(gd), Some(wd)) = (gd, wd) else {
                if go.get("data") != wo.get("data") {
                    return Err(format!("output {name}: data differs"));
                }
                continue;
            };
            if gd.len() != wd.len() {
                return Err(format!("output {name}: {} elements instead of {}", gd.len(), wd.len()));
            }
            for (i, (a, b)) in gd.iter().zip(wd).enumerate() {
                if a == b {
                    continue;
                }
                let close = match (a.as_f64(), b.as_f64()) {
                    (Some(x), Some(y)) => (x - y).abs() <= atol + rtol * y.abs(),
                    _ => false,
                };
                if !close {
                    return Err(format!("output {name}[{i}]: {a} instead of {b}"));
                }
            }
        }
        Ok(())
    }
}

/// Checks answers against the reference, which the first answer sets when no `--expect` was given.
#[derive(Debug)]
struct Checker {
    reference: OnceLock<Reference>,
    atol: f64,
    rtol: f64,
}

impl Checker {
    fn check(&self, got: &[u8]) -> Result<(), String> {
        self.reference.get_or_init(|| Reference::new(got)).check(got, self.atol, self.rtol)
    }
}

/// What one worker saw.
#[derive(Debug)]
struct Tally {
    latency_us: Histogram<u64>,
    ok: u64,
    wrong: u64,
    failed: u64,
    retries: u64,
    errors: BTreeMap<String, u64>,
    wrong_examples: Vec<String>,
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            // 1 µs to an hour at three significant digits (0.1% resolution).
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)?,
            ok: 0,
            wrong: 0,
            failed: 0,
            retries: 0,
            errors: BTreeMap::new(),
            wrong_examples: Vec::new(),
        })
    }

    fn answered(&mut self, elapsed: Duration, verdict: Result<(), String>) {
        let _ = self.latency_us.record(elapsed.as_micros().clamp(1, 3_600_000_000) as u64);
        match verdict {
            Ok(()) => self.ok += 1,
            Err(why) => {
                self.wrong += 1;
                if self.wrong_examples.len() < WRONG_EXAMPLES {
                    self.wrong_examples.push(why);
                }
            }
        }
    }

    fn failed(&mut self, kind: String) {
        self.failed += 1;
        *self.errors.entry(kind).or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        let _ = self.latency_us.add(&other.latency_us);
        self.ok += other.ok;
        self.wrong += other.wrong;
        self.failed += other.failed;
        self.retries += other.retries;
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        for w in other.wrong_examples {
            if self.wrong_examples.len() < WRONG_EXAMPLES {
                self.wrong_examples.push(w);
            }
        }
    }
}

/// A failure's kind, for the report: stable labels scripts can count.
fn client_error_kind(e: &ClientError) -> String {
    match e {
        ClientError::Connect { .. } => "connect".into(),
        ClientError::Disconnected { .. } => "disconnected".into(),
        ClientError::Timeout { .. } => "timeout".into(),
        ClientError::Unauthenticated { status, .. } => format!("http_{}", status.as_u16()),
        ClientError::Enclave { kind, .. } => format!("enclave_{}", kind.label()),
        ClientError::Kms(_) => "kms".into(),
        ClientError::TooLarge { .. } => "too_large".into(),
        _ => "other".into(),
    }
}

fn oblivious_error_kind(e: &ObliviousError) -> String {
    match e {
        ObliviousError::Fetch(c) => client_error_kind(c),
        ObliviousError::Reverification(inner) => format!("reverification_{}", oblivious_error_kind(inner)),
        ObliviousError::Untrusted(_) | ObliviousError::Keys(_) => "untrusted".into(),
        ObliviousError::Ohttp(_) => "ohttp".into(),
        _ => "other".into(),
    }
}

/// One worker's client.
enum Worker {
    Kms { client: Box<Client>, session: Box<veil_client::kms::Session>, model: ModelRef },
    Attested { client: Box<ObliviousClient>, model: String, sha384: [u8; 48] },
}

impl Worker {
    /// Sends one request (with retries) and checks its answer.
    async fn one(&mut self, body: &[u8], checker: &Checker, tally: &mut Tally) {
        let start = Instant::now();
        let mut retries = 0u64;
        let mut count = |_: veil_client::retry::Retried<'_>| retries += 1;
        match self {
            Worker::Kms { client, session, model } => {
                let outcome = client.infer_observed(session.as_mut(), model, body, &mut count).await;
                match outcome {
                    Ok(answer) => {
                        let verdict = if answer.model_sha384() != &model.sha384 {
                            Err(format!("answered by model digest {}", hex::encode(answer.model_sha384())))
                        } else {
                            checker.check(answer.body())
                        };
                        tally.answered(start.elapsed(), verdict);
                    }
                    Err(e) => tally.failed(client_error_kind(&e)),
                }
            }
            Worker::Attested { client, model, sha384 } => match client.infer_observed(model, body, &mut count).await {
                Ok(r) if r.status == 200 => {
                    let verdict = if r.model_sha384().as_ref() != Some(sha384) {
                        Err(format!("answered by model digest {:?}", r.model_sha384().map(hex::encode)))
                    } else {
                        checker.check(&r.body)
                    };
                    tally.answered(start.elapsed(), verdict);
                }
                Ok(r) => tally.failed(format!("enclave_http_{}", r.status)),
                // The answer decrypted (so the enclave said it) but contradicts the request: wrong.
                Err(ObliviousError::Response(why)) => tally.answered(start.elapsed(), Err(why)),
                Err(e) => tally.failed(oblivious_error_kind(&e)),
            },
        }
        tally.retries += retries;
    }
}

/// When to stop sending.
#[derive(Debug)]
struct Plan {
    limit: u64,
    deadline: Option<Instant>,
    issued: AtomicU64,
    done: AtomicU64,
    /// Set by Ctrl-C or SIGTERM: requests in flight finish, and the report covers what was sent.
    stopped: AtomicBool,
}

impl Plan {
    /// Takes the next request, if any is left.
    fn take(&self) -> bool {
        if self.stopped.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        self.issued.fetch_add(1, Ordering::Relaxed) < self.limit
    }
}

fn runtime(threads: Option<u16>) -> anyhow::Result<tokio::runtime::Runtime> {
    let n = threads
        .map(usize::from)
        .unwrap_or_else(|| std::thread::available_parallelism().map(std::num::NonZeroUsize::get).unwrap_or(1).min(4));
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build()?)
}

/// Runs `veil load`.
pub fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let body = match read_request(&args.input) {
        Ok(b) => Arc::new(b),
        Err(code) => return Ok(code),
    };
    let expected = match &args.expect {
        None => None,
        Some(p) => match std::fs::read(p) {
            Ok(b) => Some(Reference::new(&b)),
            Err(e) => {
                eprintln!("veil: cannot read --expect {}: {e}", p.display());
                return Ok(ExitCode::from(EXIT_USAGE));
            }
        },
    };
    if args.policy.is_none() && args.kms.kms_key_id.is_none() {
        eprintln!("veil: name a mode: --policy FILE (attested-key mode) or --kms-key-id KEY (KMS envelope mode)");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let policy = RetryPolicy::default().with_max_retries(args.retries);
    let timeout = Duration::from_secs(args.timeout);
    let new_client = || Client::new(&args.url).map(|c| c.with_timeout(timeout).with_retries(policy));
    let first = match new_client() {
        Ok(c) => c,
        Err(e) => return Ok(report(&e)),
    };
    let rt = runtime(args.threads)?;
    rt.block_on(async {
        // Everything that can fail before the run fails here, once, before anything is sent.
        let mut workers = Vec::with_capacity(args.concurrency as usize);
        let mode;
        if let Some(path) = &args.policy {
            mode = "attested-key";
            let client_policy: ClientPolicy = match load_policy(path) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            let Some(sha384) = client_policy.models.get(&args.model).copied() else {
                eprintln!(
                    "veil: the policy lists no model {:?} (it lists: {}); nothing was sent",
                    args.model,
                    client_policy.models.keys().cloned().collect::<Vec<_>>().join(", ")
                );
                return Ok(ExitCode::from(EXIT_USAGE));
            };
            let gateway: Arc<VerifiedGateway> = match ObliviousClient::new(first, client_policy.clone()).gateway().await
            {
                Ok(g) => g,
                Err(e) => return Ok(unverified_gateway(e)),
            };
            for _ in 0..args.concurrency {
                let client = ObliviousClient::with_verified(new_client()?, client_policy.clone(), Arc::clone(&gateway));
                workers.push(Worker::Attested { client: Box::new(client), model: args.model.clone(), sha384 });
            }
        } else {
            mode = "kms";
            let sha384 = match kms_model_digest(
                &first,
                &args.model,
                args.expect_model_sha384,
                args.root.as_deref(),
                args.max_age,
            )
            .await?
            {
                Ok(d) => d,
                Err(code) => return Ok(code),
            };
            let kms = match args.kms.kms_client().await {
                Ok(Some(k)) => k,
                Ok(None) => return Ok(ExitCode::from(EXIT_USAGE)),
                Err(m) => {
                    eprintln!("veil: {m}");
                    return Ok(ExitCode::from(EXIT_USAGE));
                }
            };
            for _ in 0..args.concurrency {
                let Some(session) = args.kms.session_with(kms.clone()) else {
                    return Ok(ExitCode::from(EXIT_USAGE));
                };
                let model = ModelRef { name: args.model.clone(), sha384 };
                workers.push(Worker::Kms { client: Box::new(new_client()?), session: Box::new(session), model });
            }
        }

        let limit = match (args.requests, args.duration) {
            (Some(n), _) => n,
            (None, Some(_)) => u64::MAX,
            (None, None) => DEFAULT_REQUESTS,
        };
        let started = Instant::now();
        let plan = Arc::new(Plan {
            limit,
            deadline: args.duration.map(|s| started + Duration::from_secs(s)),
            issued: AtomicU64::new(0),
            done: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        let stopper = {
            let plan = Arc::clone(&plan);
            tokio::spawn(async move {
                veil_runtime::process::shutdown_signal().await;
                plan.stopped.store(true, Ordering::Relaxed);
            })
        };
        let checker = Arc::new(Checker { reference: OnceLock::new(), atol: args.atol, rtol: args.rtol });
        if let Some(r) = expected {
            let _ = checker.reference.set(r);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for mut worker in workers {
            let (plan, checker, body) = (Arc::clone(&plan), Arc::clone(&checker), Arc::clone(&body));
            let mut tally = Tally::new()?;
            tasks.spawn(async move {
                while plan.take() {
                    worker.one(&body, &checker, &mut tally).await;
                    plan.done.fetch_add(1, Ordering::Relaxed);
                }
                tally
            });
        }
        let (bar, progress) = progress_bar(&args, limit, started, Arc::clone(&plan));
        let mut total = Tally::new()?;
        while let Some(t) = tasks.join_next().await {
            total.merge(t?);
        }
        let elapsed = started.elapsed();
        progress.abort();
        stopper.abort();
        bar.finish_and_clear();
        let summary = summary(&args, mode, &total, elapsed);
        if args.json {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer(&mut out, &summary)?;
            out.write_all(b"\n")?;
        } else {
            print_human(&summary, &total);
        }
        Ok(if total.wrong > 0 || total.failed > 0 { ExitCode::from(EXIT_FAILED) } else { ExitCode::SUCCESS })
    })
}

/// A progress bar on stderr while the run lasts, when stderr is a terminal (hidden otherwise), and the task
/// that moves it.
fn progress_bar(
    args: &LoadArgs,
    limit: u64,
    started: Instant,
    plan: Arc<Plan>,
) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let by_time = limit == u64::MAX;
    let len = if by_time { args.duration.unwrap_or(1) } else { limit };
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    let template = if by_time {
        "{elapsed_precise} [{bar:40}] {pos}/{len} s  {msg}"
    } else {
        "{elapsed_precise} [{bar:40}] {pos}/{len}  {msg}  eta {eta}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    let ticking = bar.clone();
    let task = tokio::spawn(async move {
        loop {
            let done = plan.done.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            ticking.set_position(if by_time { started.elapsed().as_secs() } else { done });
            ticking.set_message(format!("{done} done, {:.0}/s", done as f64 / secs));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (bar, task)
}

/// The report, as `--json` prints it.
fn summary(args: &LoadArgs, mode: &str, t: &Tally, elapsed: Duration) -> Value {
    let h = &t.latency_us;
    let q = |x: f64| if h.is_empty() { 0 } else { h.value_at_quantile(x) };
    let secs = elapsed.as_secs_f64().max(1e-9);
    json!({
        "url": args.url,
        "model": args.model,
        "mode": mode,
        "concurrency": args.concurrency,
        "requests": t.ok + t.wrong + t.failed,
        "ok": t.ok,
        "wrong": t.wrong,
        "failed": t.failed,
        "retries": t.retries,
        "duration_secs": (secs * 1000.0).round() / 1000.0,
        "rps": (((t.ok + t.wrong) as f64 / secs) * 10.0).round() / 10.0,
        "latency_us": {
            "min": if h.is_empty() { 0 } else { h.min() },
            "mean": h.mean().round() as u64,
            "p50": q(0.50),
            "p90": q(0.90),
            "p99": q(0.99),
            "p999": q(0.999),
            "max": if h.is_empty() { 0 } else { h.max() },
        },
        "errors": t.errors,
        "wrong_examples": t.wrong_examples,
    })
}

fn print_human(s: &Value, t: &Tally) {
    let l = &s["latency_us"];
    let ms = |v: &Value| v.as_u64().unwrap_or(0) as f64 / 1000.0;
    eprintln!(
        "veil load: {} requests to {} ({} mode) at concurrency {} in {:.1} s",
        s["requests"],
        s["model"].as_str().unwrap_or_default(),
        s["mode"].as_str().unwrap_or_default(),
        s["concurrency"],
        s["duration_secs"].as_f64().unwrap_or(0.0)
    );
    eprintln!("  answered:   {} ok, {} WRONG", t.ok, t.wrong);
    eprintln!("  failed:     {}   retries: {}", t.failed, t.retries);
    for (kind, n) in &t.errors {
        eprintln!("    {kind}: {n}");
    }
    eprintln!("  throughput: {} answers/s", s["rps"]);
    eprintln!(
        "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (mean {:.2}, min {:.2})",
        ms(&l["p50"]),
        ms(&l["p90"]),
        ms(&l["p99"]),
        ms(&l["p999"]),
        ms(&l["max"]),
        ms(&l["mean"]),
        ms(&l["min"])
    );
    for w in &t.wrong_examples {
        eprintln!("  WRONG ANSWER: {w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(p: f64) -> Vec<u8> {
        serde_json::to_vec(&json!({"model_name": "iris", "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [1], "data": [2]},
            {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "data": [p, 1.0 - p]},
        ]}))
        .unwrap()
    }

    #[test]
    fn answers_are_compared_output_by_output() {
        let r = Reference::new(&answer(0.25));
        r.check(&answer(0.25), 0.0, 0.0).unwrap();
        let e = r.check(&answer(0.26), 0.0, 0.0).unwrap_err();
        assert!(e.contains("probabilities[0]: 0.26 instead of 0.25"), "{e}");
        r.check(&answer(0.26), 0.02, 0.0).unwrap();
        let mut other: Value = serde_json::from_slice(&answer(0.25)).unwrap();
        other["outputs"][0]["shape"] = json!([2]);
        let e = r.check(&serde_json::to_vec(&other).unwrap(), 1.0, 1.0).unwrap_err();
        assert!(e.contains("output label: shape [2] instead of [1]"), "{e}");
        other["model_name"] = json!("breast_cancer");
        assert!(r.check(&serde_json::to_vec(&other).unwrap(), 0.0, 0.0).unwrap_err().contains("model_name"));
        assert!(r.check(b"\x00binary", 0.0, 0.0).unwrap_err().contains("not JSON"));
        // Output order does not matter; a missing output does.
        let mut swapped: Value = serde_json::from_slice(&answer(0.25)).unwrap();
        swapped["outputs"].as_array_mut().unwrap().reverse();
        r.check(&serde_json::to_vec(&swapped).unwrap(), 0.0, 0.0).unwrap();
        swapped["outputs"].as_array_mut().unwrap().pop();
        assert!(r.check(&serde_json::to_vec(&swapped).unwrap(), 0.0, 0.0).unwrap_err().contains("outputs"));
        // A binary reference is compared byte for byte.
        let raw = Reference::new(b"\x01\x02");
        raw.check(b"\x01\x02", 0.0, 0.0).unwrap();
        assert!(raw.check(b"\x01\x03", 0.0, 0.0).is_err());
    }

    #[test]
    fn tallies_merge_and_bound_their_examples() {
        let mut a = Tally::new().unwrap();
        let mut b = Tally::new().unwrap();
        for i in 0..4 {
            a.answered(Duration::from_millis(10), Ok(()));
            b.answered(Duration::from_millis(30), Err(format!("w{i}")));
        }
        b.failed("http_503".into());
        b.retries = 3;
        for i in 0..4 {
            a.answered(Duration::from_millis(20), Err(format!("a{i}")));
        }
        a.merge(b);
        assert_eq!((a.ok, a.wrong, a.failed, a.retries), (4, 8, 1, 3));
        assert_eq!(a.wrong_examples.len(), WRONG_EXAMPLES);
        assert_eq!(a.errors["http_503"], 1);
        assert_eq!(a.latency_us.len(), 12);
        let p50 = a.latency_us.value_at_quantile(0.5);
        assert!((19_900..=20_100).contains(&p50), "{p50}");
    }
}

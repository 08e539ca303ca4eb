//! Faults under load: each test runs `veil load` (the real client, several workers, sealed requests) against
//! the real binaries while something breaks, and then reads its report. What must hold every time: no
//! wrong answer, ever; with retries, no request lost; and service resumes by itself.
//!
//! The faults: the enclave killed (SIGKILL) under `veil dev`'s supervision, in both modes; KMS down for
//! ten seconds; the parent restarted; clients that vanish mid-request; clients that trickle their request
//! head or body; a model file truncated, then corrupted, between enclave restarts. Each takes seconds.
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use veil_client::devstack::Role;
use veil_tests::{Stack, StackOptions, Transport, http_get, references};

/// A running `veil dev --json`, stopped (SIGTERM) when dropped.
struct Dev {
    child: Child,
    endpoints: Value,
    _state: tempfile::TempDir,
}

impl Dev {
    fn start(models: &[&str]) -> Dev {
        let state = tempfile::tempdir().unwrap();
        let empty = state.path().join("no-models");
        std::fs::create_dir_all(&empty).unwrap();
        let mut cmd = Command::new(veil_tests::bin("veil").unwrap());
        cmd.args(["dev", "--port", "0", "--json", "--state-dir"]).arg(state.path().join("stack"));
        cmd.arg("--models-dir").arg(&empty);
        for m in models {
            cmd.arg("--model").arg(format!("{m}={}", veil_tests::model_path(m).unwrap().display()));
        }
        let mut child = cmd
            .env("ORT_DYLIB_PATH", veil_tests::ort_dylib().unwrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let endpoints: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        Dev { child, endpoints, _state: state }
    }

    fn url(&self) -> String {
        self.endpoints["url"].as_str().unwrap().to_owned()
    }

    fn env(&self) -> Vec<(String, String)> {
        self.endpoints["env"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().into()))
            .collect()
    }

    fn status(&self) -> Value {
        let text = std::fs::read_to_string(self.endpoints["status_file"].as_str().unwrap()).unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    fn enclave_log(&self) -> String {
        std::fs::read_to_string(self.endpoints["logs"]["enclave"].as_str().unwrap()).unwrap_or_default()
    }

    /// Waits until the status satisfies `done`, naming `what` if it never does.
    fn wait_status(&self, what: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        wait_for(what, timeout, || Some(self.status()).filter(&done)).unwrap_or_else(|| {
            panic!("{what}: not within {timeout:?}; status {}\nenclave log:\n{}", self.status(), self.enclave_log())
        })
    }

    fn model_file(&self, name: &str) -> PathBuf {
        let m = self.endpoints["models"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap();
        PathBuf::from(m["file"].as_str().unwrap())
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        signal(self.child.id(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// Polls `f` every 50 ms until it gives a value or `timeout` passes.
fn wait_for<T>(_what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A v2 request for `model` (the first reference case) in a file of `dir`.
fn request_file(dir: &Path, model: &str) -> PathBuf {
    let path = dir.join(format!("{model}-request.json"));
    std::fs::write(&path, serde_json::to_vec(&references(model).unwrap()["cases"][0]["request"]).unwrap()).unwrap();
    path
}

/// `veil load` arguments: `model` with the request in `input`, for a minute at most (the tests stop it
/// sooner, with SIGTERM), and `extra`.
fn args<'a>(model: &'a str, input: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--model", model, "--input", input.to_str().unwrap(), "--duration", "60"];
    v.extend_from_slice(extra);
    v
}

/// A running `veil load --json`.
struct Load {
    child: Child,
    what: String,
}

impl Load {
    /// `veil load` on `url` with the client environment `env` and `args` (mode, model, input, limits).
    fn start(url: &str, env: &[(String, String)], args: &[&str]) -> Load {
        let mut cmd = Command::new(veil_tests::bin("veil").unwrap());
        cmd.args(["load", "--json", "--threads", "1", "--url", url]).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        Load { child, what: args.join(" ") }
    }

    /// Stops sending (SIGTERM: requests in flight finish) and returns the report.
    fn stop(self) -> Value {
        signal(self.child.id(), nix::sys::signal::Signal::SIGTERM);
        self.report()
    }

    /// Waits for the end of the run and returns the report.
    fn report(mut self) -> Value {
        let (mut out, mut err) = (String::new(), String::new());
        self.child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        self.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let _ = self.child.wait();
        let report: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("veil load {}: {e}\n{out}\n{err}", self.what));
        // The one outcome that must never happen, whatever the fault.
        assert_eq!(report["wrong"], 0, "WRONG ANSWERS from veil load {}: {report}", self.what);
        assert!(report["ok"].as_u64().unwrap() > 0, "veil load {} got no answer at all: {report}\n{err}", self.what);
        report
    }
}

/// Inference answers (HTTP 200) the parent has served so far, both modes.
fn served(url: &str) -> u64 {
    let Ok((200, body)) = http_get(url, "/metrics") else { return 0 };
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| {
            l.starts_with("veil_parent_requests_total{")
                && l.contains("status=\"200\"")
                && (l.contains("route=\"infer\"") || l.contains("route=\"ohttp\""))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok()))
        .sum::<f64>() as u64
}

/// Waits until the parent has served `more` answers beyond what it had served when called.
fn wait_served(url: &str, more: u64) {
    let from = served(url);
    wait_for("answers", Duration::from_secs(60), || (served(url) >= from + more).then_some(()))
        .unwrap_or_else(|| panic!("the parent did not serve {more} more answers within 60 s"));
}

/// Open file descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn an_enclave_killed_mid_load_is_restarted_and_every_request_in_both_modes_is_answered_rightly() {
    let dev = Dev::start(&["iris"]);
    let (url, env) = (dev.url(), dev.env());
    let dir = tempfile::tempdir().unwrap();
    let input = request_file(dir.path(), "iris");
    let policy = dev.endpoints["client_policy"].as_str().unwrap().to_owned();
    let kms = Load::start(&url, &env, &args("iris", &input, &["--concurrency", "8", "--retries", "10"]));
    // Attested-key mode's X25519 is slow in debug builds: fewer workers, the same checks.
    let attested =
        Load::start(&url, &env, &args("iris", &input, &["--concurrency", "2", "--retries", "10", "--policy", &policy]));
    wait_served(&url, 200);

    let pid = dev.status()["children"]["enclave"]["pid"].as_u64().unwrap() as u32;
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    let status = dev.wait_status("the enclave restarted and ready", Duration::from_secs(60), |s| {
        s["restarts"]["enclave"] == 1 && s["children"]["enclave"]["state"] == "running"
    });
    assert!(status["children"]["enclave"]["last_exit"].as_str().unwrap().contains("SIGKILL"), "{status}");
    assert_ne!(status["children"]["enclave"]["pid"], pid, "{status}");
    assert!(status["children"]["enclave"]["startup_ms"].as_u64().unwrap() > 0, "{status}");
    // Both modes are answered again by the new enclave (attested-key mode after verifying it afresh: its
    // boot key is new).
    wait_served(&url, 200);

    for (mode, report) in [("kms", kms.stop()), ("attested-key", attested.stop())] {
        assert_eq!(report["mode"], mode);
        assert_eq!(report["failed"], 0, "{mode}: with retries, every request is answered: {report}");
        assert!(report["retries"].as_u64().unwrap() > 0, "{mode}: the kill cost nothing to retry? {report}");
    }
    assert_eq!(dev.status()["restarts"]["enclave"], 1);
}

#[test]
fn kms_down_for_ten_seconds_mid_load_costs_no_answer_and_new_keys_work_once_it_is_back() {
    let mut stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let input = request_file(stack.dir.path(), "iris");
    let load = Load::start(&stack.url, &stack.client_env(), &args("iris", &input, &["--concurrency", "8"]));
    wait_served(&stack.url, 200);

    // A client whose data key was made before the outage, but that the enclave has never seen: the enclave
    // must ask KMS for it.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = veil_client::Client::new(&stack.url).unwrap().with_retries(veil_client::RetryPolicy::none());
    let model = stack.model_ref("iris");
    let body = std::fs::read(&input).unwrap();
    let mut session = rt.block_on(stack.session(Default::default())).unwrap();
    rt.block_on(session.seal(&model, &body, Default::default())).unwrap();

    stack.kill_kms();
    let outage = Instant::now();
    let err = rt.block_on(client.infer(&mut session, &model, &body)).unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(503), "{err}");
    assert!(err.to_string().contains("KMS"), "{err}");
    // The workers' sessions hold keys the enclave has cached: they are served through the outage.
    wait_served(&stack.url, 100);
    std::thread::sleep(Duration::from_secs(10).saturating_sub(outage.elapsed()));
    stack.restart_kms().unwrap();

    let answer = rt.block_on(client.infer(&mut session, &model, &body)).unwrap();
    assert_eq!(answer.model_sha384(), &model.sha384);
    wait_served(&stack.url, 100);
    let report = load.stop();
    assert_eq!(report["failed"], 0, "{report}");
}

#[test]
fn a_parent_restarted_mid_load_costs_no_answer_with_retries() {
    let mut stack = Stack::start(StackOptions::new(Transport::Unix, &["iris"])).unwrap();
    let input = request_file(stack.dir.path(), "iris");
    let policy = stack.client_policy();
    let env = stack.client_env();
    let kms = Load::start(&stack.url, &env, &args("iris", &input, &["--concurrency", "8", "--retries", "10"]));
    let attested = Load::start(
        &stack.url,
        &env,
        &args("iris", &input, &["--concurrency", "2", "--retries", "10", "--policy", policy.to_str().unwrap()]),
    );
    wait_served(&stack.url, 200);

    stack.inner().kill_parent();
    std::thread::sleep(Duration::from_millis(500));
    assert!(http_get(&stack.url, "/healthz").is_err(), "the parent still answers");
    stack.inner().restart_parent().unwrap();
    // The new parent dials the enclave by itself.
    wait_served(&stack.url, 200);

    for report in [kms.stop(), attested.stop()] {
        assert_eq!(report["failed"], 0, "{report}");
        assert!(report["retries"].as_u64().unwrap() > 0, "the restart cost nothing to retry? {report}");
    }
}

#[test]
fn clients_vanishing_mid_request_cost_the_others_nothing_and_leak_nothing() {
    let mut stack = Stack::start(StackOptions::new(Transport::Tcp, &["iris"])).unwrap();
    let input = request_file(stack.dir.path(), "iris");
    let parent = stack.inner().pid(Role::Parent).unwrap();
    let load = ["--concurrency", "8", "--retries", "0"];
    // A first load dials every link the parent keeps to the enclave: what the parent holds once it is
    // gone is the count to come back to.
    let warm = Load::start(
        &stack.url,
        &stack.client_env(),
        &args("iris", &input, &[&load[..], &["--requests", "400"]].concat()),
    );
    warm.report();
    let before = fds(parent);
    // Without retries: the vanishing clients must not cost the others a single request.
    let load = Load::start(&stack.url, &stack.client_env(), &args("iris", &input, &load));
    wait_served(&stack.url, 100);

    let hostport = stack.url.trim_start_matches("http://").to_owned();
    let plain = std::fs::read(&input).unwrap();
    std::thread::scope(|s| {
        for i in 0..32 {
            let (hostport, stack, plain) = (&hostport, &stack, &plain);
            s.spawn(move || {
                let mut c = std::net::TcpStream::connect(hostport).unwrap();
                let (wire, _) = stack.seal("iris", plain).unwrap();
                let head =
                    format!("POST /v1/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", wire.len());
                c.write_all(head.as_bytes()).unwrap();
                match i % 3 {
                    // Half the body, then gone.
                    0 => c.write_all(&wire[..wire.len() / 2]).unwrap(),
                    // The whole request, then gone before the answer.
                    1 => c.write_all(&wire).unwrap(),
                    // Half a head, then gone.
                    _ => {}
                }
            });
        }
    });
    wait_served(&stack.url, 200);
    let report = load.stop();
    assert_eq!(report["failed"], 0, "{report}");
    // Nothing stays in flight, and the abandoned connections' descriptors are closed.
    wait_for("idle", Duration::from_secs(20), || {
        let (_, metrics) = http_get(&stack.url, "/metrics").ok()?;
        String::from_utf8_lossy(&metrics).contains("veil_parent_in_flight_requests 0").then_some(())
    })
    .expect("requests still in flight 20 s after the clients vanished");
    wait_for("fds", Duration::from_secs(20), || (fds(parent) <= before + 1).then_some(())).unwrap_or_else(|| {
        panic!("the parent holds {} descriptors, {before} before the load and the clients came", fds(parent))
    });
}

#[test]
fn clients_trickling_heads_or_bodies_are_cut_off_by_the_read_timeouts_and_stall_nobody() {
    let mut opts = StackOptions::new(Transport::Unix, &["iris"]);
    opts.parent_args = ["--header-timeout-secs", "2", "--body-timeout-secs", "2"].map(String::from).to_vec();
    let stack = Stack::start(opts).unwrap();
    let input = request_file(stack.dir.path(), "iris");
    let load =
        Load::start(&stack.url, &stack.client_env(), &args("iris", &input, &["--concurrency", "8", "--retries", "0"]));
    wait_served(&stack.url, 100);

    let hostport = stack.url.trim_start_matches("http://").to_owned();
    // Each slow client sends one byte every 200 ms, for at most a minute: (answer head, seconds until the
    // server ended the connection).
    let outcomes: Vec<(String, f64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..24)
            .map(|i| {
                let hostport = &hostport;
                s.spawn(move || {
                    let mut c = std::net::TcpStream::connect(hostport).unwrap();
                    c.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                    let head = "POST /v1/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n";
                    let (prefix, trickle): (&[u8], &[u8]) =
                        if i % 2 == 0 { (b"", head.as_bytes()) } else { (head.as_bytes(), &[b'x'; 300]) };
                    let start = Instant::now();
                    c.write_all(prefix).unwrap();
                    let mut answer = Vec::new();
                    for byte in trickle {
                        if c.write_all(&[*byte]).is_err() {
                            break;
                        }
                        let mut buf = [0u8; 1024];
                        match c.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                answer.extend_from_slice(&buf[..n]);
                                break;
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => break,
                        }
                    }
                    let head = String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned();
                    (
                        if i % 2 == 0 { format!("head: {head}") } else { format!("body: {head}") },
                        start.elapsed().as_secs_f64(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (what, secs) in &outcomes {
        // A whole head takes 16 s at this pace, a body 60 s: the 2 s timeouts end them long before.
        assert!(*secs < 12.0, "a slow client ({what}) was served for {secs:.1} s");
        if what.starts_with("body") {
            assert!(what.contains("408"), "a trickled body gets 408 Request Timeout: {what}");
        }
    }
    wait_served(&stack.url, 100);
    let report = load.stop();
    assert_eq!(report["failed"], 0, "the slow clients cost others requests: {report}");
}

#[test]
fn a_model_file_truncated_then_corrupted_between_restarts_keeps_the_enclave_unready_and_it_says_why() {
    let dev = Dev::start(&["iris", "breast_cancer"]);
    let (url, env) = (dev.url(), dev.env());
    let dir = tempfile::tempdir().unwrap();
    let iris = request_file(dir.path(), "iris");
    let bc = request_file(dir.path(), "breast_cancer");
    // No retries: while the enclave cannot start, requests fail (and must never be answered wrongly).
    let load = |model: &str, input: &Path| {
        Load::start(&url, &env, &args(model, input, &["--concurrency", "4", "--retries", "0"]))
    };
    let (iris_load, bc_load) = (load("iris", &iris), load("breast_cancer", &bc));
    wait_served(&url, 100);

    let file = dev.model_file("breast_cancer");
    let good = std::fs::read(&file).unwrap();
    let replace = |bytes: &[u8]| {
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    let readyz = || http_get(&url, "/readyz").map(|(s, _)| s).unwrap_or(0);
    let failures = |needle: &str| dev.enclave_log().matches(needle).count();

    // Truncated: the enclave refuses it, says why, and exits; veil dev restarts it (with backoff).
    replace(&good[..good.len() / 2]);
    let pid = dev.status()["children"]["enclave"]["pid"].as_u64().unwrap() as u32;
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    wait_for("truncation refused", Duration::from_secs(30), || (failures("its header says") > 0).then_some(()))
        .unwrap_or_else(|| panic!("no refusal of the truncated file:\n{}", dev.enclave_log()));
    assert_ne!(readyz(), 200);
    // Corrupted (one byte flipped in the middle): refused too, on the next restart.
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x40;
    replace(&bad);
    wait_for("corruption refused", Duration::from_secs(30), || (failures("does not decrypt") > 0).then_some(()))
        .unwrap_or_else(|| panic!("no refusal of the corrupted file:\n{}", dev.enclave_log()));
    assert_ne!(readyz(), 200);
    let log = dev.enclave_log();
    assert!(log.contains("model \"breast_cancer\""), "the refusal names the model:\n{log}");
    assert!(log.contains("does not serve a half-loaded model set"), "{log}");
    let status = dev.status();
    assert!(status["restarts"]["enclave"].as_u64().unwrap() >= 2, "{status}");
    assert!(status["children"]["enclave"]["last_exit"].as_str().unwrap().contains("exit status: 1"), "{status}");

    // The good file again: the next restart loads it and serves.
    replace(&good);
    dev.wait_status("the enclave ready again", Duration::from_secs(60), |s| {
        s["children"]["enclave"]["state"] == "running"
    });
    assert_eq!(readyz(), 200);
    wait_served(&url, 100);
    let (iris_report, bc_report) = (iris_load.stop(), bc_load.stop());
    for report in [&iris_report, &bc_report] {
        assert!(report["failed"].as_u64().unwrap() > 0, "requests sent while the enclave was down failed: {report}");
        assert!(report["errors"]["http_503"].as_u64().unwrap() > 0, "{report}");
    }
}

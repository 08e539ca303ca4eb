//! The parent's KMS services over real sockets: the relay's allow-list, byte piping and idle timeout, and
//! credentials from a fake IMDSv2.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use veil_parent::kms::{KmsRelayArgs, KmsRelayConfig, KmsServices};
use veil_protocol::message::{ErrorKind, HostRequest, HostResponse};
use veil_runtime::conn::Connection;
use veil_runtime::transport::{self, Address, Listener, Stream};

const MAX_FRAME: usize = 1 << 20;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    kms: KmsRelayArgs,
}

fn config(args: &[&str]) -> KmsRelayConfig {
    let cli = Cli::try_parse_from(std::iter::once("veil-parent").chain(args.iter().copied())).unwrap();
    KmsRelayConfig::from_args(&cli.kms).unwrap()
}

/// Starts host services with the given KMS configuration; returns their address.
async fn host_services(kms: Option<KmsRelayConfig>) -> (Address, tokio::sync::watch::Sender<bool>) {
    let listener = Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_address().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let kms = kms.map(|c| Arc::new(KmsServices::new(c)));
    tokio::spawn(veil_parent::host::serve_with_kms(listener, Arc::new(HashMap::new()), kms, MAX_FRAME, rx));
    (addr, tx)
}

async fn ask(addr: &Address, request: &HostRequest) -> (Stream, HostResponse) {
    let mut conn = Connection::new(transport::connect(addr).await.unwrap(), MAX_FRAME);
    let answer = conn.call::<_, HostResponse>(request, b"").await.unwrap();
    (conn.into_inner(), answer.body)
}

/// A TCP echo server; returns its `127.0.0.1:port`.
async fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Captures log lines (current-thread tests: spawned tasks log on this thread).
fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buf);
    let subscriber =
        tracing_subscriber::fmt().with_ansi(false).with_writer(move || LogSink(Arc::clone(&sink))).finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

struct LogSink(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn endpoints_off_the_allow_list_are_refused_and_logged() {
    let (logs, _guard) = capture_logs();
    let echo = echo_server().await;
    let (addr, _stop) = host_services(Some(config(&["--kms-endpoint", &echo]))).await;
    for evil in ["evil.example.com:443", "169.254.169.254:80", "127.0.0.1:22", "", "kms.eu-west-1.amazonaws.com"] {
        let (_, answer) = ask(&addr, &HostRequest::KmsRelay { endpoint: evil.into() }).await;
        let HostResponse::Error(e) = answer else { panic!("{evil}: expected a refusal, got {answer:?}") };
        assert_eq!(e.kind, ErrorKind::BadRequest, "{evil}");
        assert!(e.message.contains("allow-list"), "{evil}: {}", e.message);
    }
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("KMS relay refused") && logs.contains("evil.example.com:443"), "{logs}");
}

#[tokio::test]
async fn a_routed_endpoint_connects_where_its_route_says() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = echo_server().await;
    let route = format!("kms.eu-west-1.amazonaws.com:443={echo}");
    let (addr, _stop) = host_services(Some(config(&["--kms-endpoint", &route]))).await;
    // The enclave asks for the name; the parent connects the route's address.
    let (mut stream, answer) =
        ask(&addr, &HostRequest::KmsRelay { endpoint: "kms.eu-west-1.amazonaws.com:443".into() }).await;
    assert_eq!(answer, HostResponse::RelayReady);
    stream.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    // The route's address itself is not on the allow-list.
    let (_, answer) = ask(&addr, &HostRequest::KmsRelay { endpoint: echo.clone() }).await;
    assert!(matches!(answer, HostResponse::Error(_)), "{answer:?}");
}

#[tokio::test]
async fn without_kms_configuration_relay_and_credentials_are_refused() {
    let (addr, _stop) = host_services(None).await;
    for req in [HostRequest::KmsRelay { endpoint: "kms.eu-west-1.amazonaws.com:443".into() }, HostRequest::Credentials]
    {
        let (_, answer) = ask(&addr, &req).await;
        let HostResponse::Error(e) = answer else { panic!("expected a refusal, got {answer:?}") };
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.message.contains("not configured"), "{}", e.message);
    }
    // Configured for the relay but with --credentials none (the default).
    let (addr, _stop) = host_services(Some(config(&["--kms-endpoint", "kms.eu-west-1.amazonaws.com:443"]))).await;
    let (_, answer) = ask(&addr, &HostRequest::Credentials).await;
    let HostResponse::Error(e) = answer else { panic!("expected a refusal, got {answer:?}") };
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(e.message.contains("--credentials none"), "{}", e.message);
}

#[tokio::test]
async fn an_allowed_endpoint_pipes_bytes_both_ways() {
    let echo = echo_server().await;
    // Allow-list matching ignores the host's case.
    let (addr, _stop) =
        host_services(Some(config(&["--kms-endpoint", "kms.example.invalid:443", "--kms-endpoint", &echo]))).await;
    let (mut stream, answer) = ask(&addr, &HostRequest::KmsRelay { endpoint: echo.to_uppercase() }).await;
    assert_eq!(answer, HostResponse::RelayReady);
    // Raw bytes now, not frames: a megabyte of them, through and back.
    let payload: Vec<u8> = (0..1_048_576u32).map(|i| (i * 7 % 251) as u8).collect();
    let (mut r, mut w) = tokio::io::split(stream);
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w
    });
    let mut back = vec![0u8; payload.len()];
    r.read_exact(&mut back).await.unwrap();
    assert!(back == payload, "the relay must return exactly what the echo server sent");
    stream = r.unsplit(writer.await.unwrap());
    stream.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_endpoint_is_an_error_not_a_hang() {
    // A port that was free a moment ago: connection refused.
    let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let target = format!("127.0.0.1:{port}");
    let (addr, _stop) =
        host_services(Some(config(&["--kms-endpoint", &target, "--kms-connect-timeout-ms", "500"]))).await;
    let (_, answer) =
        tokio::time::timeout(Duration::from_secs(5), ask(&addr, &HostRequest::KmsRelay { endpoint: target }))
            .await
            .unwrap();
    let HostResponse::Error(e) = answer else { panic!("expected an error, got {answer:?}") };
    assert_eq!(e.kind, ErrorKind::Unavailable);
}

#[tokio::test]
async fn an_idle_relay_is_closed() {
    // An upstream that accepts and then says nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = listener.accept().await.unwrap();
            held.push(s);
        }
    });
    let (addr, _stop) = host_services(Some(config(&["--kms-endpoint", &target, "--kms-idle-timeout-secs", "1"]))).await;
    let (mut stream, answer) = ask(&addr, &HostRequest::KmsRelay { endpoint: target }).await;
    assert_eq!(answer, HostResponse::RelayReady);
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "the parent closes an idle relay");
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
}

/// What the fake IMDS saw.
#[derive(Default)]
struct ImdsLog {
    token_puts: usize,
    credential_gets: usize,
    unauthorized: usize,
}

/// A fake IMDSv2: PUT /latest/api/token (TTL header required), then token-authenticated GETs of the role
/// list and the role's credentials (expiring `expires_in` from now).
async fn fake_imds(expires_in: Duration) -> (String, Arc<Mutex<ImdsLog>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(ImdsLog::default()));
    let seen = Arc::clone(&log);
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut byte).await.unwrap() == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
                let first = head.lines().next().unwrap().to_owned();
                let has_token = head.contains("x-aws-ec2-metadata-token: imds-token-1\r\n");
                let (status, body) = if first.starts_with("put /latest/api/token ") {
                    assert!(head.contains("x-aws-ec2-metadata-token-ttl-seconds: 21600"), "{head}");
                    seen.lock().unwrap().token_puts += 1;
                    ("200 OK", "imds-token-1".to_owned())
                } else if !has_token {
                    seen.lock().unwrap().unauthorized += 1;
                    ("401 Unauthorized", String::new())
                } else if first.starts_with("get /latest/meta-data/iam/security-credentials/ ") {
                    ("200 OK", "veil-enclave-role\n".to_owned())
                } else if first.starts_with("get /latest/meta-data/iam/security-credentials/veil-enclave-role ") {
                    seen.lock().unwrap().credential_gets += 1;
                    let exp = SystemTime::now() + expires_in;
                    let secs = exp.duration_since(UNIX_EPOCH).unwrap().as_secs();
                    let body = serde_json::json!({
                        "Code": "Success", "LastUpdated": "2026-11-25T00:00:00Z", "Type": "AWS-HMAC",
                        "AccessKeyId": "ASIAEXAMPLEEXAMPLE01", "SecretAccessKey": "c2VjcmV0LXNlY3JldC1zZWNyZXQ=",
                        "Token": "dG9rZW4tdG9rZW4tdG9rZW4=", "Expiration": rfc3339(secs),
                    });
                    ("200 OK", body.to_string())
                } else {
                    ("404 Not Found", String::new())
                };
                let answer =
                    format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    (url, log)
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`, as IMDS writes expirations.
fn rfc3339(secs: u64) -> String {
    use veil_protocol::time::{UtcSuffix, format_rfc3339};
    format_rfc3339(i64::try_from(secs).unwrap(), UtcSuffix::Z).unwrap()
}

async fn credentials(addr: &Address) -> HostResponse {
    ask(addr, &HostRequest::Credentials).await.1
}

#[tokio::test]
async fn credentials_come_from_imdsv2_and_are_cached_until_near_expiry() {
    let (logs, _guard) = capture_logs();
    let (imds, seen) = fake_imds(Duration::from_secs(6 * 3600)).await;
    let (addr, _stop) = host_services(Some(config(&["--credentials", "imds", "--imds-url", &imds]))).await;
    let HostResponse::Credentials { access_key_id, secret_access_key, session_token, expiration } =
        credentials(&addr).await
    else {
        panic!("expected credentials")
    };
    assert_eq!(access_key_id, "ASIAEXAMPLEEXAMPLE01");
    assert_eq!(secret_access_key, "c2VjcmV0LXNlY3JldC1zZWNyZXQ=");
    assert_eq!(session_token.as_deref(), Some("dG9rZW4tdG9rZW4tdG9rZW4="));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let exp = expiration.unwrap();
    assert!(exp > now + 6 * 3600 - 60 && exp <= now + 6 * 3600 + 1, "{exp} vs {now}");
    // Fresh for hours: the second request is served from the cache.
    assert!(matches!(credentials(&addr).await, HostResponse::Credentials { .. }));
    {
        let seen = seen.lock().unwrap();
        assert_eq!((seen.token_puts, seen.credential_gets, seen.unauthorized), (1, 1, 0));
    }
    // Never logged.
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("AWS credentials fetched from IMDSv2"), "{logs}");
    assert!(!logs.contains("c2VjcmV0") && !logs.contains("dG9rZW4") && !logs.contains("imds-token-1"), "{logs}");
}

#[tokio::test]
async fn credentials_near_expiry_are_refreshed() {
    // Ten minutes left: inside the parent's 15-minute refresh margin, so every request fetches anew.
    let (imds, seen) = fake_imds(Duration::from_secs(600)).await;
    let (addr, _stop) = host_services(Some(config(&["--credentials", "imds", "--imds-url", &imds]))).await;
    for _ in 0..3 {
        assert!(matches!(credentials(&addr).await, HostResponse::Credentials { .. }));
    }
    assert_eq!(seen.lock().unwrap().credential_gets, 3);
}

#[tokio::test]
async fn imds_failures_are_clear_errors() {
    // Nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let (addr, _stop) =
        host_services(Some(config(&["--credentials", "imds", "--imds-url", &format!("http://127.0.0.1:{port}")])))
            .await;
    let HostResponse::Error(e) = credentials(&addr).await else { panic!("expected an error") };
    assert_eq!(e.kind, ErrorKind::Internal);
    assert!(e.message.starts_with("instance metadata service:"), "{}", e.message);
}

#[test]
fn flags_are_validated() {
    let parse = |args: &[&str]| {
        let cli = Cli::try_parse_from(std::iter::once("veil-parent").chain(args.iter().copied())).unwrap();
        KmsRelayConfig::from_args(&cli.kms)
    };
    let c = parse(&[]).unwrap();
    assert!(c.endpoints.is_empty(), "no endpoint by default: relay disabled");
    assert_eq!(c.imds.to_string(), "http://169.254.169.254/");
    let c = parse(&[
        "--kms-endpoint",
        "KMS.eu-west-1.amazonaws.com:443",
        "--kms-endpoint",
        "kms.eu-west-1.amazonaws.com:443",
    ])
    .unwrap();
    assert_eq!(c.endpoints, ["kms.eu-west-1.amazonaws.com:443"]);
    assert!(c.routes.is_empty());
    let c = parse(&["--kms-endpoint", "kms.eu-west-1.amazonaws.com:443=127.0.0.1:4443"]).unwrap();
    assert_eq!(c.endpoints, ["kms.eu-west-1.amazonaws.com:443"]);
    assert_eq!(c.routes["kms.eu-west-1.amazonaws.com:443"], "127.0.0.1:4443");
    assert!(parse(&["--kms-endpoint", "kms.eu-west-1.amazonaws.com:443=nowhere"]).is_err());
    assert!(parse(&["--kms-endpoint", "kms.eu-west-1.amazonaws.com"]).is_err());
    assert!(parse(&["--imds-url", "https://169.254.169.254"]).is_err());
    assert!(parse(&["--imds-url", "http://169.254.169.254/latest"]).is_err());
    assert!(Cli::try_parse_from(["veil-parent", "--credentials", "profile"]).is_err());
}

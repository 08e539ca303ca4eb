//! The dev stack's child processes: starting them with their logs, watching and stopping them, and the
//! second parent and enclave of a replica.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A second parent and enclave of the same stack ([`Stack::start_replica`]); killed when dropped.
#[derive(Debug)]
pub struct Replica {
    pub url: String,
    pub dir: PathBuf,
    pub(super) parent: Option<Child>,
    pub(super) enclave: Option<Child>,
}

impl Replica {
    pub(super) fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.enclave.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("replica veil-enclave exited ({status}):\n{}", tail(&self.dir.join("enclave.log")));
            }
            if let Ok((200, _)) = http_get(&self.url, "/readyz") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the replica was not ready within {timeout:?}:\n{}", tail(&self.dir.join("enclave.log")));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        kill(&mut self.enclave);
        kill(&mut self.parent);
    }
}

/// Waits up to 60 s for `child`'s ready file; a child that misses it (or dies first) is killed and
/// reaped, not left holding its port for every later start to trip over. The error carries its log's tail.
pub(super) fn wait_ready_or_kill<T: serde::de::DeserializeOwned>(
    mut child: Child,
    ready_file: &Path,
    name: &str,
    log: &Path,
) -> anyhow::Result<(Child, T)> {
    match veil_runtime::ready::wait::<T>(ready_file, name, Duration::from_secs(60), || exited(&mut child)) {
        Ok(info) => Ok((child, info)),
        Err(e) => {
            kill(&mut Some(child));
            Err(anyhow::anyhow!("{e}\n{}", tail(log)))
        }
    }
}

pub(super) fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

pub(super) fn exited(child: &mut Child) -> Result<(), String> {
    match child.try_wait() {
        Ok(Some(status)) => Err(status.to_string()),
        _ => Ok(()),
    }
}

/// The last lines of a log.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

pub(super) fn spawn(
    bin: &Path,
    args: &[String],
    log: &Path,
    envs: &[(&str, &str)],
    filter: &str,
) -> anyhow::Result<Child> {
    // Appending: a restarted child's log keeps what the crashed one said before it.
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err).env("RUST_LOG", filter);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    // Out of the terminal's process group: Ctrl-C reaches `veil dev`, which stops the children itself.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn().with_context(|| format!("starting {} (is it built?)", bin.display()))
}

/// A free TCP port on 127.0.0.1 (bound then released: fine on a quiet loopback).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A blocking HTTP/1.1 GET with no client library in between (for readiness): status and body.
pub fn http_get(base: &str, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let hostport = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(hostport)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").context("no HTTP header end")?;
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let status: u16 = head.split_whitespace().nth(1).context("no status")?.parse()?;
    Ok((status, resp[split + 4..].to_vec()))
}

//! Ready files: how a Veil daemon tells the script or test that started it where it listens, once it does.
//!
//! `--ready-file PATH` makes a daemon write one JSON object, atomically (a temporary file renamed into
//! place), after its listeners are bound. The shapes are these types, shared by the writers and by
//! whoever reads them (`veil dev`, the test kit), so that neither side guesses at field names.
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// `veil-parent --ready-file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentReady {
    /// The client API as an `http://` URL (an unspecified address shown as 127.0.0.1).
    pub url: String,
    /// The client API's bound address (`tcp://…` or `unix://…`).
    pub listen: String,
    /// The host services' bound address.
    pub host_listen: String,
}

/// `veil-enclave --ready-file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnclaveReady {
    /// The bound address for the parent's traffic.
    pub listen: String,
    /// `hardware` or `mock`.
    pub nsm: String,
    /// SHA-384 of the configuration file, hex: what attestation documents commit to.
    pub config_sha384: String,
    /// True for a development build.
    pub development_build: bool,
}

/// `veil-mock-kms --ready-file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MockKmsReady {
    /// `https://HOST:PORT`.
    pub endpoint: String,
    /// The CA certificate (PEM) its TLS certificate chains to.
    pub ca_file: String,
    /// The region it answers for.
    pub region: String,
}

/// Why a ready file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    #[error("writing {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path} is not the expected ready file: {reason}")]
    Malformed { path: String, reason: String },
    #[error("{what} did not write {path} within {timeout:?}")]
    Timeout { what: String, path: String, timeout: Duration },
    #[error("{what} exited before it was ready: {status}")]
    Exited { what: String, status: String },
}

/// Writes `value` to `path` atomically.
pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<(), ReadyError> {
    let err = |source| ReadyError::Write { path: path.display().to_string(), source };
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(value).map_err(|e| err(std::io::Error::other(e)))?;
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Reads a ready file, if it is there.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, ReadyError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ReadyError::Malformed { path: path.display().to_string(), reason: e.to_string() }),
        Err(_) => Ok(None),
    }
}

/// Waits until `path` exists and reads it, polling `still_running` (which returns the exit status of a
/// process that died) so that a daemon that fails at start is reported at once, not after `timeout`.
pub fn wait<T: DeserializeOwned>(
    path: &Path,
    what: &str,
    timeout: Duration,
    mut still_running: impl FnMut() -> Result<(), String>,
) -> Result<T, ReadyError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = read(path)? {
            return Ok(v);
        }
        still_running().map_err(|status| ReadyError::Exited { what: what.to_owned(), status })?;
        if Instant::now() > deadline {
            return Err(ReadyError::Timeout { what: what.to_owned(), path: path.display().to_string(), timeout });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_death() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("parent.ready");
        let r = ParentReady {
            url: "http://127.0.0.1:1".into(),
            listen: "tcp://127.0.0.1:1".into(),
            host_listen: "unix:///x".into(),
        };
        write(&p, &r).unwrap();
        assert_eq!(wait::<ParentReady>(&p, "parent", Duration::from_secs(1), || Ok(())).unwrap(), r);
        let missing = dir.path().join("none");
        let e = wait::<ParentReady>(&missing, "enclave", Duration::from_secs(5), || Err("exit status: 1".into()))
            .unwrap_err();
        assert!(e.to_string().contains("enclave exited before it was ready: exit status: 1"), "{e}");
        std::fs::write(&missing, b"{}").unwrap();
        assert!(matches!(read::<ParentReady>(&missing).unwrap_err(), ReadyError::Malformed { .. }));
    }
}

//! Host services for the enclave: the model files it cannot read itself (it has no disk), the audit log
//! it hands its receipts to ([`crate::audit`]), and, when configured, the KMS byte relay and AWS
//! credentials ([`crate::kms`]).
//!
//! Serves only the files named on the command line, by name; the enclave cannot ask for a path. Each
//! connection is handled sequentially (the enclave asks one chunk at a time), and chunk sizes are bounded by
//! [`MAX_MODEL_CHUNK`].
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;
use veil_protocol::message::{ErrorKind, ErrorReply, HostRequest, HostResponse, MAX_MODEL_CHUNK};
use veil_runtime::conn::{FrameReader, FrameWriter};
use veil_runtime::transport::{Listener, Stream};

use crate::audit::AuditLog;
use crate::kms::KmsServices;

/// The model files served, by name.
pub type ModelFiles = Arc<HashMap<String, PathBuf>>;

/// What the parent serves the enclave.
#[derive(Debug)]
pub struct HostServices {
    pub files: ModelFiles,
    /// The KMS relay and credentials, when configured.
    pub kms: Option<Arc<KmsServices>>,
    /// Where the enclave's receipts go.
    pub audit: Arc<AuditLog>,
}

/// Accepts the enclave's host-service connections until `shutdown` turns true (no KMS services, an audit
/// log kept in memory only).
pub async fn serve(listener: Listener, files: ModelFiles, max_frame: usize, shutdown: watch::Receiver<bool>) {
    serve_with_kms(listener, files, None, max_frame, shutdown).await
}

/// As [`serve`], with the KMS relay and credentials ([`crate::kms`]) when `kms` is given.
pub async fn serve_with_kms(
    listener: Listener,
    files: ModelFiles,
    kms: Option<Arc<KmsServices>>,
    max_frame: usize,
    shutdown: watch::Receiver<bool>,
) {
    let audit = match AuditLog::new(None, crate::audit::DEFAULT_ROTATE_BYTES, false) {
        Ok(a) => Arc::new(a),
        Err(e) => return tracing::error!(error = %e, "host services: no audit log"),
    };
    serve_services(listener, Arc::new(HostServices { files, kms, audit }), max_frame, shutdown).await
}

/// Accepts the enclave's host-service connections until `shutdown` turns true.
pub async fn serve_services(
    listener: Listener,
    services: Arc<HostServices>,
    max_frame: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let services = Arc::clone(&services);
                tokio::spawn(async move { serve_connection(stream, &peer, services, max_frame).await });
            }
            Err(e) => {
                tracing::warn!(error = %e, "host services: accept failed; backing off");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection(mut stream: Stream, peer: &str, services: Arc<HostServices>, max_frame: usize) {
    let (files, kms) = (&services.files, &services.kms);
    loop {
        let request = match FrameReader::new(&mut stream, max_frame).recv::<HostRequest>().await {
            Ok(r) => r,
            Err(e) if e.is_closed() => return,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "host services: bad request; closing");
                return;
            }
        };
        let (request_id, body, records) = request.into_parts();
        let (id, answer, attachment) = match body {
            // A relay takes the connection over: from RelayReady on it carries the enclave's TLS bytes.
            HostRequest::KmsRelay { endpoint } => match &kms {
                Some(kms) => return kms.relay(stream, peer, request_id, &endpoint, max_frame).await,
                None => (request_id, not_configured(), Vec::new()),
            },
            HostRequest::Credentials => match &kms {
                Some(kms) => (request_id, kms.credentials_answer().await, Vec::new()),
                None => (request_id, not_configured(), Vec::new()),
            },
            HostRequest::Audit { boot, first } => {
                let audit = Arc::clone(&services.audit);
                let stored = tokio::task::spawn_blocking(move || audit.append_counted(&boot, first, &records)).await;
                let answer = match stored {
                    Ok(Ok(next)) => HostResponse::Audit { next },
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "audit log: records not stored");
                        HostResponse::Error(ErrorReply::new(ErrorKind::Internal, e.to_string()))
                    }
                    Err(e) => HostResponse::Error(ErrorReply::new(ErrorKind::Internal, e.to_string())),
                };
                (request_id, answer, Vec::new())
            }
            body => {
                let (answer, attachment) = answer(files, body).await;
                (request_id, answer, attachment)
            }
        };
        if FrameWriter::new(&mut stream, max_frame).send(id, &answer, &attachment).await.is_err() {
            return;
        }
    }
}

fn not_configured() -> HostResponse {
    HostResponse::Error(ErrorReply::new(
        ErrorKind::Unavailable,
        "this parent does not relay KMS traffic (not configured)",
    ))
}

/// The answer to a model-file request, and its attachment (a chunk's bytes).
async fn answer(files: &ModelFiles, request: HostRequest) -> (HostResponse, Vec<u8>) {
    let fail = |kind, msg: String| (HostResponse::Error(ErrorReply::new(kind, msg)), Vec::new());
    match request {
        // Routed to `crate::kms` by `serve_connection` when configured.
        HostRequest::Credentials | HostRequest::KmsRelay { .. } | HostRequest::Audit { .. } => {
            (not_configured(), Vec::new())
        }
        HostRequest::ModelInfo { name } => match files.get(&name) {
            None => fail(ErrorKind::NotFound, format!("no model file named {:?} is configured", clip(&name))),
            Some(path) => match tokio::fs::metadata(path).await {
                Ok(m) => (HostResponse::ModelInfo { size: m.len() }, Vec::new()),
                Err(e) => fail(ErrorKind::Internal, format!("model {name:?}: cannot read its file: {e}")),
            },
        },
        HostRequest::ModelChunk { name, offset, len } => {
            let Some(path) = files.get(&name) else {
                return fail(ErrorKind::NotFound, format!("no model file named {:?} is configured", clip(&name)));
            };
            if len == 0 || len > MAX_MODEL_CHUNK {
                return fail(ErrorKind::BadRequest, format!("chunk length must be 1 to {MAX_MODEL_CHUNK}"));
            }
            match read_chunk(path, offset, len as usize).await {
                Ok(data) => (HostResponse::ModelChunk, data),
                Err(e) => fail(ErrorKind::Internal, format!("model {name:?}: reading {len} bytes at {offset}: {e}")),
            }
        }
    }
}

async fn read_chunk(path: &PathBuf, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut f = tokio::fs::File::open(path).await?;
    f.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).await?;
    Ok(buf)
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &std::path::Path) -> ModelFiles {
        std::fs::write(dir.join("m.onnx"), b"0123456789").unwrap();
        Arc::new(HashMap::from([("m".to_owned(), dir.join("m.onnx")), ("gone".to_owned(), dir.join("gone.onnx"))]))
    }

    fn error_of((r, _): (HostResponse, Vec<u8>)) -> ErrorReply {
        match r {
            HostResponse::Error(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn serves_only_named_files_in_bounded_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        assert_eq!(
            answer(&files, HostRequest::ModelInfo { name: "m".into() }).await,
            (HostResponse::ModelInfo { size: 10 }, vec![])
        );
        assert_eq!(
            answer(&files, HostRequest::ModelChunk { name: "m".into(), offset: 2, len: 3 }).await,
            (HostResponse::ModelChunk, b"234".to_vec())
        );
        // A path is not a name.
        let e = error_of(answer(&files, HostRequest::ModelInfo { name: "../../etc/passwd".into() }).await);
        assert_eq!(e.kind, ErrorKind::NotFound);
        let e = error_of(answer(&files, HostRequest::ModelChunk { name: "m".into(), offset: 0, len: 0 }).await);
        assert_eq!(e.kind, ErrorKind::BadRequest);
        let e = error_of(
            answer(&files, HostRequest::ModelChunk { name: "m".into(), offset: 0, len: MAX_MODEL_CHUNK + 1 }).await,
        );
        assert_eq!(e.kind, ErrorKind::BadRequest);
        // Past the end, or a file that went away: an error, not a short chunk.
        let e = error_of(answer(&files, HostRequest::ModelChunk { name: "m".into(), offset: 8, len: 5 }).await);
        assert_eq!(e.kind, ErrorKind::Internal);
        let e = error_of(answer(&files, HostRequest::ModelInfo { name: "gone".into() }).await);
        assert_eq!(e.kind, ErrorKind::Internal);
    }
}

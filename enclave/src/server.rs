//! The enclave's listener: many requests in flight per connection, answered in any order.
//!
//! Shape of a connection: one reader loop decodes frames and spawns a task per request; one writer task
//! owns the write half and sends answers as they finish (a channel feeds it). A per-connection semaphore
//! bounds requests in flight: when it is exhausted the reader stops reading, which pushes back on the
//! parent through the socket. A connection-wide cap bounds how many connections exist at all.
//!
//! A bad frame (too large, empty, truncated) or a message that does not decode ends *that* connection
//! after a best-effort error answer; every other connection keeps being served. The parent is untrusted, so
//! nothing it sends can make this code panic or allocate beyond the frame limit.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{Semaphore, watch};
use veil_protocol::message::{self, EnclaveRequest, EnclaveResponse, ErrorKind, ErrorReply};
use veil_runtime::conn::{self, ConnError, FrameReader, FrameWriter, ReadError};
use veil_runtime::transport::{Listener, Stream};
use zeroize::Zeroize;

use crate::model::Model;
use crate::sealed::Unsealer;

/// Makes an attestation document for a client's nonce, committing to the loaded models (name, SHA-384),
/// sorted by name. Wired to the NSM by the binary.
pub type AttestFn = Box<dyn Fn(&[u8], &[(String, [u8; 48])]) -> Result<Vec<u8>, ErrorReply> + Send + Sync>;

/// Longest nonce accepted in an attestation request (the NSM takes at most 512 bytes; 64 is plenty).
pub const MAX_NONCE: usize = 64;

/// Limits of the listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest frame accepted or sent.
    pub max_frame: usize,
    /// Requests in flight on one connection before the reader stops reading.
    pub max_in_flight: usize,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_frame: veil_protocol::frame::DEFAULT_MAX_FRAME, max_in_flight: 256, max_connections: 64 }
    }
}

/// What the listener serves from.
pub struct Enclave {
    models: RwLock<HashMap<String, Arc<Model>>>,
    /// With KMS configured: inference bodies must be sealed envelopes (see [`crate::sealed`]).
    unsealer: Option<Arc<Unsealer>>,
    expected: Vec<String>,
    ready: AtomicBool,
    attest: Option<AttestFn>,
    limits: Limits,
}

impl std::fmt::Debug for Enclave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enclave").field("expected", &self.expected).field("ready", &self.ready).finish()
    }
}

impl Enclave {
    /// An enclave that will serve `expected` models once they are [`Enclave::add_model`]ed.
    pub fn new(expected: Vec<String>, attest: Option<AttestFn>, limits: Limits) -> Enclave {
        Enclave {
            models: RwLock::new(HashMap::new()),
            unsealer: None,
            expected,
            ready: AtomicBool::new(false),
            attest,
            limits,
        }
    }

    /// Opens sealed requests with `unsealer` (the KMS envelope). Without one, inference requests are refused:
    /// there is no plaintext path.
    pub fn with_unsealer(mut self, unsealer: Arc<Unsealer>) -> Enclave {
        self.unsealer = Some(unsealer);
        self
    }

    /// The envelope opener, when requests are sealed.
    pub fn unsealer(&self) -> Option<&Arc<Unsealer>> {
        self.unsealer.as_ref()
    }

    /// Adds a loaded model; the enclave is ready once every expected model is in.
    pub fn add_model(&self, model: Model) {
        let Ok(mut models) = self.models.write() else { return };
        models.insert(model.name().to_owned(), Arc::new(model));
        if self.expected.iter().all(|m| models.contains_key(m)) {
            self.ready.store(true, Ordering::Release);
        }
    }

    /// Looks up a loaded model.
    pub fn model(&self, name: &str) -> Option<Arc<Model>> {
        self.models.read().ok().and_then(|m| m.get(name).cloned())
    }

    /// Digests of the loaded models, by name (for the attestation commitment).
    pub fn model_digests(&self) -> Vec<(String, [u8; 48])> {
        let Ok(models) = self.models.read() else { return Vec::new() };
        let mut v: Vec<_> = models.values().map(|m| (m.name().to_owned(), *m.sha384())).collect();
        v.sort();
        v
    }

    /// True once every expected model is loaded.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Answers a request that is not inference (inference has its own path, in [`serve_connection`]):
    /// the answer and its attachment.
    pub async fn handle(&self, request: EnclaveRequest) -> (EnclaveResponse, Vec<u8>) {
        let fail = |e: ErrorReply| (EnclaveResponse::Error(e), Vec::new());
        match request {
            EnclaveRequest::Status => (
                EnclaveResponse::Status {
                    ready: self.is_ready(),
                    models: self.expected.clone(),
                    kms_calls: self.unsealer.as_ref().map(|u| u.kms_calls()).unwrap_or(0),
                },
                Vec::new(),
            ),
            EnclaveRequest::ModelMetadata { model } => match self.lookup(&model) {
                Ok(m) => (EnclaveResponse::ModelMetadata, m.metadata_json().to_vec()),
                Err(e) => fail(e),
            },
            EnclaveRequest::Infer { .. } => {
                fail(ErrorReply::new(ErrorKind::Internal, "inference is answered on its own path"))
            }
            EnclaveRequest::Attestation { nonce } => {
                if nonce.is_empty() || nonce.len() > MAX_NONCE {
                    return fail(ErrorReply::new(
                        ErrorKind::BadRequest,
                        format!("nonce must be 1 to {MAX_NONCE} bytes, got {}", nonce.len()),
                    ));
                }
                if !self.is_ready() {
                    // The document commits to every model's digest, so it waits until all are loaded.
                    return fail(ErrorReply::new(ErrorKind::Unavailable, "models are still loading"));
                }
                match &self.attest {
                    Some(f) => match f(&nonce, &self.model_digests()) {
                        Ok(doc) => (EnclaveResponse::Attestation, doc),
                        Err(e) => fail(e),
                    },
                    None => fail(ErrorReply::new(ErrorKind::Unavailable, "this enclave has no NSM configured")),
                }
            }
        }
    }

    pub(crate) fn lookup(&self, name: &str) -> Result<Arc<Model>, ErrorReply> {
        if let Some(m) = self.model(name) {
            return Ok(m);
        }
        if self.expected.iter().any(|e| e == name) {
            return Err(ErrorReply::new(ErrorKind::Unavailable, format!("model {name:?} is still loading")));
        }
        let shown: String = name.chars().take(64).collect();
        Err(ErrorReply::new(
            ErrorKind::NotFound,
            format!("unknown model {shown:?}; this enclave serves: {}", self.expected.join(", ")),
        ))
    }
}

/// Accepts connections until `shutdown` turns true, then stops accepting and returns.
pub async fn serve(listener: Listener, enclave: Arc<Enclave>, mut shutdown: watch::Receiver<bool>) {
    let connections = Arc::new(Semaphore::new(enclave.limits.max_connections));
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&connections).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                tracing::debug!(%peer, "connection opened");
                let enclave = Arc::clone(&enclave);
                tokio::spawn(async move {
                    serve_connection(stream, &peer, enclave).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning or giving up.
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// The write half of a connection, shared by the tasks that answer on it.
type Writer = Arc<tokio::sync::Mutex<FrameWriter<tokio::io::WriteHalf<Stream>>>>;

/// Serves one connection until the peer closes it or sends something that cannot be parsed.
///
/// Answers are written by whoever computed them, under the writer's lock: an inference answer straight
/// from the blocking thread that ran the model, so a request costs one thread hand-off each way and no
/// extra hop through a writer task. This is safe because answering tasks are never cancelled: a frame
/// is always written whole.
pub async fn serve_connection(stream: Stream, peer: &str, enclave: Arc<Enclave>) {
    let limits = enclave.limits;
    let (reader, writer) = tokio::io::split(stream);
    let mut reader = FrameReader::new(reader, limits.max_frame);
    let writer: Writer = Arc::new(tokio::sync::Mutex::new(FrameWriter::new(writer, limits.max_frame)));
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    loop {
        let payload = match reader.read_frame().await {
            Ok(p) => p,
            Err(ReadError::Closed) => break,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing connection: bad frame");
                let reply = ErrorReply::new(ErrorKind::Protocol, format!("bad frame: {e}"));
                send(&writer, 0, &EnclaveResponse::Error(reply), b"").await;
                break;
            }
        };
        let id = message::peek_prefix(&payload).map(|(_, id)| id).unwrap_or(0);
        let request = match conn::decode::<EnclaveRequest>(payload) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing connection: undecodable message");
                let reply = EnclaveResponse::Error(ErrorReply::new(ErrorKind::Protocol, e.to_string()));
                send(&writer, id, &reply, b"").await;
                break;
            }
        };
        // Stop reading when too many answers are pending: back-pressure on the parent.
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else { break };
        let writer = Arc::clone(&writer);
        let (id, body, attachment) = request.into_parts();
        match body {
            EnclaveRequest::Infer { model } => {
                let body = attachment;
                let model = match enclave.lookup(&model) {
                    Ok(m) => m,
                    Err(e) => {
                        tokio::spawn(async move {
                            send(&writer, id, &EnclaveResponse::Error(e), b"").await;
                            drop(permit);
                        });
                        continue;
                    }
                };
                let unsealer = enclave.unsealer.clone();
                tokio::spawn(async move {
                    // Sealed requests are opened first (may ask KMS once per data key); failures here are
                    // about the envelope and are answered in the clear.
                    let Some(unsealer) = unsealer else {
                        let e = ErrorReply::new(
                            ErrorKind::Unavailable,
                            "this enclave has no KMS configured: it cannot open requests",
                        );
                        send(&writer, id, &EnclaveResponse::Error(e), b"").await;
                        return;
                    };
                    let opened = match unsealer.open(model.name(), &body).await {
                        Ok(o) => o,
                        Err(e) => {
                            send(&writer, id, &EnclaveResponse::Error(e), b"").await;
                            return;
                        }
                    };
                    let session = match model.acquire().await {
                        Ok(s) => s,
                        Err(e) => {
                            send(&writer, id, &EnclaveResponse::Error(e), b"").await;
                            return;
                        }
                    };
                    let runtime = tokio::runtime::Handle::current();
                    // Off the async runtime: ONNX Runtime runs on the blocking pool, and the answer is
                    // written from there.
                    tokio::task::spawn_blocking(move || {
                        let mut body = body;
                        let result = model.infer_blocking(&opened.plaintext);
                        drop(session);
                        // Answers and errors about the plaintext are sealed for the client alike.
                        let sealed = match result {
                            Ok(mut out) => {
                                let s = opened.seal(model.name(), &out);
                                out.zeroize();
                                s
                            }
                            Err(e) => opened.seal_error(model.name(), &e),
                        };
                        drop(opened);
                        body.as_mut().zeroize();
                        match sealed {
                            Ok(mut b) => {
                                runtime.block_on(send(&writer, id, &EnclaveResponse::Infer, &b));
                                b.zeroize();
                            }
                            Err(e) => runtime.block_on(send(&writer, id, &EnclaveResponse::Error(e), b"")),
                        }
                        drop(permit);
                    });
                });
            }
            other => {
                let enclave = Arc::clone(&enclave);
                tokio::spawn(async move {
                    let (response, attachment) = enclave.handle(other).await;
                    send(&writer, id, &response, &attachment).await;
                    drop(permit);
                });
            }
        }
    }
    // Answers still being computed hold the writer; they finish on their own and the socket closes when
    // the last one drops it.
    tracing::debug!(%peer, "connection closed");
}

async fn send(writer: &Writer, id: u64, response: &EnclaveResponse, attachment: &[u8]) {
    let mut w = writer.lock().await;
    let result = match w.send(id, response, attachment).await {
        Err(ConnError::Frame(e)) => {
            let e = ErrorReply::new(ErrorKind::TooLarge, format!("the answer does not fit in a frame: {e}"));
            w.send(id, &EnclaveResponse::Error(e), b"").await
        }
        other => other,
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "write failed; the peer is gone");
    }
}

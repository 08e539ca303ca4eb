//! The enclave's listener: many requests in flight per connection, answered in any order, and a shutdown
//! that drains what is in flight.
//!
//! Shape of a connection: one reader loop reads frames and starts a task per request; answers are written
//! by whoever computed them, under the writer's lock (an inference answer straight from the blocking thread
//! that ran the model, so a request costs one thread hand-off each way). Answering tasks are never
//! cancelled, so a frame is always written whole.
//!
//! Limits, all fixed by the image's configuration or here:
//!
//! - **Bytes in flight** ([`crate::budget`]): before a frame's payload is read, its announced length is
//!   charged against the enclave-wide budget; a frame that does not fit at once is read and dropped without
//!   being buffered, and answered `unavailable` with a `Retry-After`.
//! - **Requests in flight per connection** ([`Limits::max_in_flight`]): when exhausted the reader stops
//!   reading, which pushes back on the parent through the socket.
//! - **Connections** ([`Limits::max_connections`]).
//!
//! A bad frame (too large, empty, truncated) or a message that does not decode ends *that* connection after
//! a best-effort error answer; every other connection keeps being served. The parent is untrusted, so
//! nothing it sends can make this code panic or allocate beyond the limits above.
//!
//! **Shutdown** (mini-redis's design): [`serve`] stops accepting when its shutdown signal turns true, each
//! connection stops reading new requests, and [`serve`] returns once every request already read has been
//! answered (or the drain deadline passes). Every connection and request task holds a clone of one
//! `mpsc::Sender`; when the last one is dropped, the receiver learns that all are done.
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use veil_protocol::message::{self, EnclaveRequest, EnclaveResponse, ErrorKind, ErrorReply};
use veil_runtime::conn::{self, ConnError, FrameReader, FrameWriter, ReadError};
use veil_runtime::transport::{Listener, Stream};

use crate::budget::Charge;
use crate::error::EnclaveError;
use crate::service::Enclave;

/// How long a frame may wait for room in the byte budget before it is refused: not at all. The reader of
/// a connection must not stall on one frame while the frames behind it (small, legitimate requests among
/// them) wait; a refused client retries after `Retry-After`.
pub const BUDGET_WAIT: Duration = Duration::ZERO;

/// Frames at most this long are not charged against the byte budget (status, metadata, attestation
/// requests): they cost less than the bookkeeping.
const UNCHARGED_FRAME: usize = 4096;

/// Limits of the listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest frame accepted or sent.
    pub max_frame: usize,
    /// Requests in flight on one connection before the reader stops reading.
    pub max_in_flight: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long [`serve`] waits for requests in flight once shutdown begins.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: veil_protocol::frame::DEFAULT_MAX_FRAME,
            max_in_flight: 256,
            max_connections: 64,
            drain: Duration::from_secs(10),
        }
    }
}

/// A token held by every connection and request task: when all are dropped, the drain is over.
type Busy = mpsc::Sender<()>;

/// Accepts connections until `shutdown` turns true, then drains: returns when every request read so far
/// has been answered, or when the drain deadline passes.
pub async fn serve(listener: Listener, enclave: Arc<Enclave>, limits: Limits, mut shutdown: watch::Receiver<bool>) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let (busy, mut done) = mpsc::channel::<()>(1);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&connections).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                tracing::debug!(%peer, "connection opened");
                let enclave = Arc::clone(&enclave);
                let (shutdown, busy) = (shutdown.clone(), busy.clone());
                tokio::spawn(async move {
                    serve_connection(stream, &peer, enclave, limits, shutdown, busy).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning or giving up.
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    drop(busy);
    tracing::info!("no longer accepting connections; draining requests in flight");
    match tokio::time::timeout(limits.drain, done.recv()).await {
        Ok(_) => tracing::info!("every request in flight was answered"),
        Err(_) => tracing::warn!(after = ?limits.drain, "drain deadline passed with requests still in flight"),
    }
}

/// The write half of a connection, shared by the tasks that answer on it.
type Writer = Arc<tokio::sync::Mutex<FrameWriter<tokio::io::WriteHalf<Stream>>>>;

/// Serves one connection until the peer closes it, sends something that cannot be parsed, or shutdown
/// begins (then it stops reading; answers in flight are still written).
pub async fn serve_connection(
    stream: Stream,
    peer: &str,
    enclave: Arc<Enclave>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    busy: Busy,
) {
    let (reader, writer) = tokio::io::split(stream);
    let mut reader = FrameReader::new(reader, limits.max_frame);
    let writer: Writer = Arc::new(tokio::sync::Mutex::new(FrameWriter::new(writer, limits.max_frame)));
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    loop {
        let len = tokio::select! {
            l = reader.read_len() => l,
            _ = shutdown.changed() => break,
        };
        let len = match len {
            Ok(l) => l,
            Err(ReadError::Closed) => break,
            Err(e) => {
                refuse_connection(&writer, peer, 0, &format!("bad frame: {e}")).await;
                break;
            }
        };
        // Charge the budget before a byte of the payload is buffered.
        let charge = if len <= UNCHARGED_FRAME {
            Charge::none()
        } else {
            match enclave.budget().charge(len, BUDGET_WAIT).await {
                Some(c) => c,
                None => match reader.skip_payload(len).await {
                    Ok(prefix) => {
                        let id = prefix.map_or(0, |(_, id)| id);
                        tracing::warn!(%peer, bytes = len, "request refused: request bytes in flight at the budget");
                        let e = EnclaveError::Overloaded("request bytes in flight are at the enclave's budget");
                        send(&writer, id, &EnclaveResponse::Error(e.to_reply()), b"").await;
                        continue;
                    }
                    Err(e) => {
                        refuse_connection(&writer, peer, 0, &format!("bad frame: {e}")).await;
                        break;
                    }
                },
            }
        };
        let payload = match reader.read_payload(len).await {
            Ok(p) => p,
            Err(e) => {
                refuse_connection(&writer, peer, 0, &format!("bad frame: {e}")).await;
                break;
            }
        };
        let id = message::peek_prefix(&payload).map(|(_, id)| id).unwrap_or(0);
        let request = match conn::decode::<EnclaveRequest>(payload) {
            Ok(r) => r,
            Err(e) => {
                refuse_connection(&writer, peer, id, &e.to_string()).await;
                break;
            }
        };
        // Stop reading when too many answers are pending: back-pressure on the parent.
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else { break };
        let writer = Arc::clone(&writer);
        let (enclave, busy) = (Arc::clone(&enclave), busy.clone());
        let (id, body, attachment) = request.into_parts();
        match body {
            EnclaveRequest::Infer { model } => {
                tokio::spawn(async move {
                    let runtime = tokio::runtime::Handle::current();
                    enclave
                        .infer(&model, attachment, move |reply| {
                            // Called on a blocking-pool thread (the one that ran the model): block_on is
                            // allowed there, and the frame is written whole.
                            runtime.block_on(async {
                                let (response, attachment) = reply.parts();
                                send(&writer, id, response, attachment).await;
                            });
                            drop((charge, permit, busy));
                        })
                        .await;
                });
            }
            EnclaveRequest::Ohttp => {
                tokio::spawn(async move {
                    let runtime = tokio::runtime::Handle::current();
                    enclave
                        .ohttp(attachment, move |reply| {
                            // On a blocking-pool thread, as for inference.
                            runtime.block_on(async {
                                let (response, attachment) = reply.parts();
                                send(&writer, id, response, attachment).await;
                            });
                            drop((charge, permit, busy));
                        })
                        .await;
                });
            }
            other => {
                tokio::spawn(async move {
                    let reply = enclave.handle(other);
                    let (response, attachment) = reply.parts();
                    send(&writer, id, response, attachment).await;
                    drop((charge, permit, busy));
                });
            }
        }
    }
    tracing::debug!(%peer, "connection closed for reading");
}

async fn refuse_connection(writer: &Writer, peer: &str, id: u64, message: &str) {
    tracing::warn!(%peer, error = %message, "closing connection");
    send(writer, id, &EnclaveResponse::Error(message::protocol_error(message)), b"").await;
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

//! The parent's connections to the enclave: a few long-lived, multiplexed connections.
//!
//! Each connection has a writer task fed by a channel and a reader task that routes answers to waiting
//! callers by request id, so many requests share one connection and answers come back in any order. A
//! connection that fails is marked dead, every caller waiting on it gets [`LinkError::Unavailable`] at once,
//! and the next call dials a fresh one. Dialing has a short timeout, so when the enclave is down the
//! parent answers 503 quickly, and recovers by itself when the enclave returns.
//!
//! The parent never looks inside inference bodies: it moves [`EnclaveRequest`]s whose attachments are
//! sealed envelopes it cannot open, written to the socket straight from the HTTP body's buffer.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use veil_protocol::message::{self, EnclaveRequest, EnclaveResponse};
use veil_runtime::conn::{self, FrameReader, FrameWriter, Incoming};
use veil_runtime::transport::{self, Address};

/// Why a call to the enclave failed (as opposed to the enclave answering with an error).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// The enclave cannot be reached or the connection broke.
    #[error("enclave unavailable: {0}")]
    Unavailable(String),
    /// No answer in time.
    #[error("the enclave did not answer within {0:?}")]
    Timeout(Duration),
    /// The request does not fit in a frame.
    #[error("request too large: {0}")]
    TooLarge(String),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Incoming<EnclaveResponse>>>>>;

/// An encoded message head and its attachment, on their way to the writer task.
type Outgoing = (Vec<u8>, Bytes);

#[derive(Debug)]
struct Conn {
    tx: mpsc::Sender<Outgoing>,
    pending: Pending,
    alive: Arc<AtomicBool>,
}

/// Frames at most this long travel on the express connection.
pub const EXPRESS_MAX_FRAME: usize = 64 * 1024;

/// A pool of multiplexed connections to one enclave.
///
/// The connections come in two lanes of `connections` each: small messages (status, metadata, attestation,
/// and the sealed requests of small models, up to [`EXPRESS_MAX_FRAME`]) take the express lane, larger ones
/// the bulk lane, so a small request never queues behind megabytes of large ones on a shared socket (a
/// flood of 8 MiB bodies costs small requests nothing but CPU).
#[derive(Debug)]
pub struct EnclaveLink {
    addr: Address,
    max_frame: usize,
    connect_timeout: Duration,
    /// The express lane is `slots[..lane]`, the bulk lane `slots[lane..]`.
    slots: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    lane: usize,
    next_slot: AtomicUsize,
    next_id: AtomicU64,
}

/// Removes a caller's pending entry if the caller goes away first (client disconnect, timeout).
struct PendingGuard {
    pending: Pending,
    id: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&self.id);
        }
    }
}

impl EnclaveLink {
    /// Two lanes of `connections` connections each to `addr`, dialed lazily.
    pub fn new(addr: Address, connections: usize, max_frame: usize, connect_timeout: Duration) -> EnclaveLink {
        let lane = connections.max(1);
        let slots = (0..2 * lane).map(|_| tokio::sync::Mutex::new(None)).collect();
        EnclaveLink {
            addr,
            max_frame,
            connect_timeout,
            slots,
            lane,
            next_slot: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    /// The enclave's address.
    pub fn address(&self) -> &Address {
        &self.addr
    }

    /// Number of live connections (for metrics).
    pub fn live_connections(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                s.try_lock().map(|g| g.as_ref().is_some_and(|c| c.alive.load(Ordering::Acquire))).unwrap_or(true)
            })
            .count()
    }

    async fn connection(&self, frame_len: usize) -> Result<Arc<Conn>, LinkError> {
        let n = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.lane;
        let i = if frame_len <= EXPRESS_MAX_FRAME { n } else { self.lane + n };
        let mut slot = self.slots[i].lock().await;
        if let Some(c) = slot.as_ref()
            && c.alive.load(Ordering::Acquire)
        {
            return Ok(Arc::clone(c));
        }
        let stream = match tokio::time::timeout(self.connect_timeout, transport::connect(&self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(LinkError::Unavailable(format!("cannot connect to {}: {e}", self.addr))),
            Err(_) => return Err(LinkError::Unavailable(format!("connecting to {} timed out", self.addr))),
        };
        let conn = Arc::new(spawn_conn(stream, self.max_frame));
        tracing::info!(enclave = %self.addr, slot = i, "connected to the enclave");
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// Sends one request without an attachment and waits for the answer.
    pub async fn call(&self, request: &EnclaveRequest, timeout: Duration) -> Result<EnclaveResponse, LinkError> {
        Ok(self.call_with(request, Bytes::new(), timeout).await?.0)
    }

    /// Sends one request with its attachment and waits for the answer and the answer's attachment.
    pub async fn call_with(
        &self,
        request: &EnclaveRequest,
        attachment: Bytes,
        timeout: Duration,
    ) -> Result<(EnclaveResponse, BytesMut), LinkError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let head = message::encode_head(id, request).map_err(|e| LinkError::TooLarge(e.to_string()))?;
        let len = head.len() + attachment.len();
        if len > self.max_frame {
            return Err(LinkError::TooLarge(format!("{len} bytes encoded, the frame limit is {}", self.max_frame)));
        }
        let conn = self.connection(len).await?;
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().map_err(|_| LinkError::Unavailable("link state poisoned".into()))?.insert(id, tx);
        let _guard = PendingGuard { pending: Arc::clone(&conn.pending), id };
        if conn.tx.send((head, attachment)).await.is_err() {
            conn.alive.store(false, Ordering::Release);
            return Err(LinkError::Unavailable("connection to the enclave closed".into()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(response)) => {
                let (_, body, attachment) = response.into_parts();
                Ok((body, attachment))
            }
            Ok(Err(_)) => Err(LinkError::Unavailable("connection to the enclave was lost".into())),
            Err(_) => Err(LinkError::Timeout(timeout)),
        }
    }
}

fn spawn_conn(stream: transport::Stream, max_frame: usize) -> Conn {
    let (reader, writer) = tokio::io::split(stream);
    let (mut reader, mut writer) = (FrameReader::new(reader, max_frame), FrameWriter::new(writer, max_frame));
    let (tx, mut rx) = mpsc::channel::<Outgoing>(1024);
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let alive = Arc::new(AtomicBool::new(true));
    {
        let alive = Arc::clone(&alive);
        tokio::spawn(async move {
            while let Some((head, attachment)) = rx.recv().await {
                if let Err(e) = writer.send_encoded(&head, &attachment).await {
                    tracing::warn!(error = %e, "write to the enclave failed");
                    break;
                }
            }
            alive.store(false, Ordering::Release);
        });
    }
    {
        let pending = Arc::clone(&pending);
        let alive = Arc::clone(&alive);
        tokio::spawn(async move {
            loop {
                let frame = match reader.read_frame().await {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(error = %e, "connection to the enclave ended");
                        break;
                    }
                };
                match conn::decode::<EnclaveResponse>(frame) {
                    Ok(msg) => {
                        let waiter = pending.lock().ok().and_then(|mut p| p.remove(&msg.id));
                        if let Some(w) = waiter {
                            let _ = w.send(msg);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable answer from the enclave; dropping the connection");
                        break;
                    }
                }
            }
            alive.store(false, Ordering::Release);
            // Dropping the senders wakes every waiter with an error at once.
            if let Ok(mut p) = pending.lock() {
                p.clear();
            }
        });
    }
    Conn { tx, pending, alive }
}

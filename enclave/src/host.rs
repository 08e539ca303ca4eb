//! The enclave's client for the parent's host services: model bytes today, KMS relay and credentials later.
//!
//! The parent is untrusted. Whatever it sends is checked here: chunk lengths must be exactly what was
//! asked, a model may not exceed the configured maximum, and the digest of what arrived is what the
//! enclave reports (and, with the KMS issue, what it checks against the decrypted model's envelope).
use std::time::{Duration, Instant};

use ring::digest;
use veil_protocol::error::clip;
use veil_protocol::message::{Body, HostRequest, HostResponse, MAX_MODEL_CHUNK};
use veil_runtime::conn::{Connection, Incoming};
use veil_runtime::transport::{self, Address, Stream};
use zeroize::Zeroizing;

/// A model file as fetched: its bytes (zeroized on drop) and their SHA-384.
pub struct FetchedModel {
    pub bytes: Zeroizing<Vec<u8>>,
    pub sha384: [u8; 48],
}

impl std::fmt::Debug for FetchedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchedModel")
            .field("len", &self.bytes.len())
            .field("sha384", &hex::encode(self.sha384))
            .finish()
    }
}

/// A connection to the parent's host services.
#[derive(Debug)]
pub struct HostClient {
    conn: Connection<Stream>,
}

impl HostClient {
    /// Dials the parent, retrying with backoff until `patience` runs out (the parent may start later).
    pub async fn connect(addr: &Address, max_frame: usize, patience: Duration) -> anyhow::Result<HostClient> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            match transport::connect(addr).await {
                Ok(stream) => return Ok(HostClient { conn: Connection::new(stream, max_frame) }),
                Err(e) if start.elapsed() < patience => {
                    tracing::debug!(%addr, error = %e, "parent host services not reachable yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    anyhow::bail!("could not reach the parent's host services at {addr} within {patience:?}: {e}")
                }
            }
        }
    }

    async fn call(&mut self, request: &HostRequest) -> anyhow::Result<Incoming<HostResponse>> {
        Ok(self.conn.call(request, b"").await?)
    }

    /// Hands audit records (numbered from `first`) of boot `boot` to the parent: the number of the next
    /// record it expects, i.e. how far it has stored.
    pub async fn audit(&mut self, boot: &[u8; 16], first: u64, records: &[u8]) -> anyhow::Result<u64> {
        let request = HostRequest::Audit { boot: serde_bytes::ByteBuf::from(boot.to_vec()), first };
        match self.conn.call(&request, records).await?.body {
            HostResponse::Audit { next } => Ok(next),
            // The parent's words, clipped: they go into the enclave's log at every retry.
            HostResponse::Error(e) => anyhow::bail!("the parent refused audit records: {}", clip(&e.to_string(), 200)),
            other => anyhow::bail!("unexpected answer to Audit: {}", other.name()),
        }
    }

    /// Fetches a whole model file in chunks, hashing as it goes.
    pub async fn fetch_model(&mut self, name: &str, max_bytes: u64) -> anyhow::Result<FetchedModel> {
        let size = match self.call(&HostRequest::ModelInfo { name: name.to_owned() }).await?.body {
            HostResponse::ModelInfo { size } => size,
            HostResponse::Error(e) => {
                anyhow::bail!("the parent cannot serve model {name:?}: {}", clip(&e.to_string(), 200))
            }
            other => anyhow::bail!("unexpected answer to ModelInfo: {}", other.name()),
        };
        anyhow::ensure!(size > 0, "the parent reports model {name:?} as empty");
        anyhow::ensure!(
            size <= max_bytes,
            "model {name:?} is {size} bytes, more than the enclave accepts ({max_bytes}; see --max-model-bytes)"
        );
        // Grow with what actually arrives instead of trusting `size` for one big allocation up front.
        let mut bytes = Zeroizing::new(Vec::with_capacity(size.min(64 << 20) as usize));
        let mut ctx = digest::Context::new(&digest::SHA384);
        let started = Instant::now();
        let mut next_report = size / 4;
        while (bytes.len() as u64) < size {
            let offset = bytes.len() as u64;
            let len = (size - offset).min(u64::from(MAX_MODEL_CHUNK)) as u32;
            let (_, body, attachment) =
                self.call(&HostRequest::ModelChunk { name: name.to_owned(), offset, len }).await?.into_parts();
            let mut data = match body {
                HostResponse::ModelChunk => attachment,
                HostResponse::Error(e) => {
                    anyhow::bail!("the parent failed to send model {name:?} at offset {offset}: {e}")
                }
                other => anyhow::bail!("unexpected answer to ModelChunk: {}", other.name()),
            };
            anyhow::ensure!(
                data.len() == len as usize,
                "the parent sent {} bytes of model {name:?} at offset {offset}; {len} were asked",
                data.len()
            );
            ctx.update(&data);
            bytes.extend_from_slice(&data);
            zeroize::Zeroize::zeroize(data.as_mut());
            if bytes.len() as u64 >= next_report && size > (16 << 20) {
                tracing::info!(model = name, received = bytes.len(), total = size, "fetching model");
                next_report += size / 4;
            }
        }
        let mut sha384 = [0u8; 48];
        sha384.copy_from_slice(ctx.finish().as_ref());
        tracing::info!(model = name, bytes = size, sha384 = %hex::encode(sha384), elapsed_ms = started.elapsed().as_millis() as u64, "model fetched");
        Ok(FetchedModel { bytes, sha384 })
    }
}

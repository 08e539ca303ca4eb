//! Sealed requests: the enclave's side of the KMS envelope.
//!
//! For each sealed request the enclave (1) parses the envelope's clear fields, (2) checks the issue time
//! against its replay window, (3) takes the data key from its cache or, once per data key, from KMS through
//! a [`KeySource`] (KMS `Decrypt` with the enclave's attestation document as `Recipient`), refusing request
//! ids it has already seen, (4) opens the request, runs it, and (5) seals the answer under the response key.
//!
//! Failures before the request is opened (a malformed envelope, a refused key, a replay) are about the
//! envelope and go back in the clear, so the parent can count them. Failures after (the request does not
//! fit the model, inference failed) are about the plaintext: they are sealed like an answer, as
//! `{"error": ..., "kind": ...}`, so the parent learns nothing of them.
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use veil_protocol::envelope::{self, DataKey, SealedRequest};
use veil_protocol::message::{ErrorKind, ErrorReply};
use zeroize::Zeroizing;

use crate::keys::{CacheId, KeyCache, KeyCacheLimits, KeyUseError};

/// A boxed future, for the object-safe [`KeySource`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where data keys come from: KMS `Decrypt` with `Recipient` in production.
pub trait KeySource: Send + Sync + std::fmt::Debug {
    /// The plaintext data key for `encrypted_data_key`, or a refusal that is safe to show the client.
    fn data_key<'a>(
        &'a self,
        key_id: &'a str,
        encrypted_data_key: &'a [u8],
        encryption_context: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, ErrorReply>>;
}

/// An opened request: its plaintext and what is needed to seal the answer.
pub struct Opened {
    pub plaintext: Zeroizing<Vec<u8>>,
    key: Arc<DataKey>,
    request: SealedRequest,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened").field("len", &self.plaintext.len()).finish()
    }
}

impl Opened {
    /// Seals the answer (or a sealed error) for the client.
    pub fn seal(&self, model: &str, answer: &[u8]) -> Result<Vec<u8>, ErrorReply> {
        envelope::seal_response(&self.key, model, &self.request, answer)
            .map_err(|e| ErrorReply::new(ErrorKind::Internal, format!("cannot seal the answer: {e}")))
    }

    /// Seals an error about the plaintext request, for the client's eyes only.
    pub fn seal_error(&self, model: &str, error: &ErrorReply) -> Result<Vec<u8>, ErrorReply> {
        let body = serde_json::json!({ "error": error.message, "kind": error.kind.label() });
        self.seal(model, &serde_json::to_vec(&body).unwrap_or_default())
    }
}

/// The enclave's envelope opener: key cache, key source and counters.
#[derive(Debug)]
pub struct Unsealer {
    cache: KeyCache,
    source: Arc<dyn KeySource>,
    kms_timeout: Duration,
    kms_calls: AtomicU64,
    /// One gate per data key being fetched: requests that arrive together with a new data key wait for
    /// the first one's KMS call instead of each making their own (one KMS call per data key, even under
    /// a burst).
    inflight: std::sync::Mutex<std::collections::HashMap<CacheId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Unsealer {
    pub fn new(source: Arc<dyn KeySource>, limits: KeyCacheLimits, kms_timeout: Duration) -> Unsealer {
        Unsealer {
            cache: KeyCache::new(limits),
            source,
            kms_timeout,
            kms_calls: AtomicU64::new(0),
            inflight: Default::default(),
        }
    }

    /// How many times KMS was asked for a data key.
    pub fn kms_calls(&self) -> u64 {
        self.kms_calls.load(Ordering::Relaxed)
    }

    /// Opens a sealed request for `model`.
    pub async fn open(&self, model: &str, body: &[u8]) -> Result<Opened, ErrorReply> {
        let bad = |m: String| ErrorReply::new(ErrorKind::BadRequest, m);
        let request = envelope::parse_request(body).map_err(|e| bad(e.to_string()))?;
        let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        self.cache.check_window(request.issued_at, now_unix).map_err(|e| bad(e.to_string()))?;
        let mut request_id = [0u8; envelope::REQUEST_ID_LEN];
        request_id.copy_from_slice(&request.request_id);
        let id = CacheId::new(&request.key_id, &request.encrypted_data_key, &request.encryption_context);
        let key = match self.cache.use_key(&id, &request_id, Instant::now()).map_err(key_use)? {
            Some(k) => k,
            None => self.fetch(&id, &request_id, &request).await?,
        };
        let plaintext = envelope::open_request(&key, model, &request).map_err(|e| bad(e.to_string()))?;
        Ok(Opened { plaintext, key, request })
    }
}

impl Unsealer {
    /// Gets a data key from KMS, once per key however many requests wait for it.
    async fn fetch(
        &self,
        id: &CacheId,
        request_id: &[u8; envelope::REQUEST_ID_LEN],
        request: &SealedRequest,
    ) -> Result<Arc<DataKey>, ErrorReply> {
        let gate = {
            let mut m = self.inflight.lock().map_err(|_| ErrorReply::new(ErrorKind::Internal, "key gate poisoned"))?;
            Arc::clone(m.entry(*id).or_default())
        };
        let result = async {
            let _turn = gate.lock().await;
            // Whoever held the gate before us may have fetched the key meanwhile.
            if let Some(k) = self.cache.use_key(id, request_id, Instant::now()).map_err(key_use)? {
                return Ok(k);
            }
            self.kms_calls.fetch_add(1, Ordering::Relaxed);
            let fetch = self.source.data_key(&request.key_id, &request.encrypted_data_key, &request.encryption_context);
            let plain = tokio::time::timeout(self.kms_timeout, fetch).await.map_err(|_| {
                ErrorReply::new(
                    ErrorKind::Unavailable,
                    format!("KMS did not answer within {:?}; try again", self.kms_timeout),
                )
            })??;
            let key = DataKey::new(&plain)
                .map_err(|e| ErrorReply::new(ErrorKind::Internal, format!("KMS returned an unusable data key: {e}")))?;
            self.cache.insert(*id, key, request_id, Instant::now()).map_err(key_use)
        }
        .await;
        if let Ok(mut m) = self.inflight.lock() {
            // The last one out removes the gate (the map holds one reference, `gate` another).
            if Arc::strong_count(&gate) <= 2 {
                m.remove(id);
            }
        }
        result
    }
}

fn key_use(e: KeyUseError) -> ErrorReply {
    let kind = match e {
        KeyUseError::Full => ErrorKind::Unavailable,
        _ => ErrorKind::BadRequest,
    };
    ErrorReply::new(kind, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use veil_protocol::envelope::Sealer;

    /// A KMS stand-in that knows one blob and counts calls.
    #[derive(Debug)]
    struct FakeKms {
        calls: Mutex<u32>,
    }

    impl KeySource for FakeKms {
        fn data_key<'a>(
            &'a self,
            _: &'a str,
            edk: &'a [u8],
            ctx: &'a BTreeMap<String, String>,
        ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, ErrorReply>> {
            Box::pin(async move {
                *self.calls.lock().unwrap() += 1;
                // Slow enough that a burst of requests all arrive while the first call is out.
                tokio::time::sleep(Duration::from_millis(20)).await;
                if edk == b"blob" && ctx.get("tenant").map(String::as_str) == Some("a") {
                    Ok(Zeroizing::new(vec![3u8; 32]))
                } else {
                    Err(ErrorReply::new(ErrorKind::BadRequest, "KMS refused the key: InvalidCiphertextException"))
                }
            })
        }
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[tokio::test]
    async fn one_kms_call_per_data_key_and_sealed_answers() {
        let kms = Arc::new(FakeKms { calls: Mutex::new(0) });
        let unsealer = Unsealer::new(kms.clone(), KeyCacheLimits::default(), Duration::from_secs(1));
        let key = DataKey::new(&[3u8; 32]).unwrap();
        let ctx = BTreeMap::from([("tenant".to_owned(), "a".to_owned())]);
        let sealer = Sealer { key: &key, key_id: "k", encrypted_data_key: b"blob", encryption_context: &ctx };
        for i in 0..10 {
            let (wire, tag) = sealer.seal_request("m", format!("req {i}").as_bytes(), now()).unwrap();
            let opened = unsealer.open("m", &wire).await.unwrap();
            assert_eq!(&opened.plaintext[..], format!("req {i}").as_bytes());
            let answer = opened.seal("m", b"answer").unwrap();
            assert_eq!(&sealer.open_response("m", &tag, &answer).unwrap()[..], b"answer");
            // A replay of the same bytes is refused.
            let e = unsealer.open("m", &wire).await.unwrap_err();
            assert!(e.message.contains("replayed"), "{e}");
        }
        assert_eq!(*kms.calls.lock().unwrap(), 1);
        assert_eq!(unsealer.kms_calls(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_under_a_new_data_key_makes_one_kms_call() {
        let kms = Arc::new(FakeKms { calls: Mutex::new(0) });
        let unsealer = Arc::new(Unsealer::new(kms.clone(), KeyCacheLimits::default(), Duration::from_secs(1)));
        let key = DataKey::new(&[3u8; 32]).unwrap();
        let ctx = BTreeMap::from([("tenant".to_owned(), "a".to_owned())]);
        let sealer = Sealer { key: &key, key_id: "k", encrypted_data_key: b"blob", encryption_context: &ctx };
        let wires: Vec<Vec<u8>> =
            (0..64).map(|i| sealer.seal_request("m", format!("{i}").as_bytes(), now()).unwrap().0).collect();
        let tasks: Vec<_> = wires
            .into_iter()
            .map(|w| {
                let u = Arc::clone(&unsealer);
                tokio::spawn(async move { u.open("m", &w).await.map(|o| o.plaintext.to_vec()) })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(*kms.calls.lock().unwrap(), 1);
        assert!(unsealer.inflight.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn refusals_are_clear() {
        let kms = Arc::new(FakeKms { calls: Mutex::new(0) });
        let unsealer = Unsealer::new(kms, KeyCacheLimits::default(), Duration::from_secs(1));
        let key = DataKey::new(&[3u8; 32]).unwrap();
        let wrong_ctx = BTreeMap::from([("tenant".to_owned(), "b".to_owned())]);
        let sealer = Sealer { key: &key, key_id: "k", encrypted_data_key: b"blob", encryption_context: &wrong_ctx };
        let (wire, _) = sealer.seal_request("m", b"x", now()).unwrap();
        assert!(unsealer.open("m", &wire).await.unwrap_err().message.contains("KMS refused the key"));

        let ctx = BTreeMap::from([("tenant".to_owned(), "a".to_owned())]);
        let sealer = Sealer { key: &key, key_id: "k", encrypted_data_key: b"blob", encryption_context: &ctx };
        let (old, _) = sealer.seal_request("m", b"x", now() - 3600).unwrap();
        assert!(unsealer.open("m", &old).await.unwrap_err().message.contains("outside the replay window"));
        let (wire, _) = sealer.seal_request("m", b"x", now()).unwrap();
        assert!(unsealer.open("other", &wire).await.unwrap_err().message.contains("does not decrypt"));
        assert!(unsealer.open("m", b"{\"inputs\":[]}").await.unwrap_err().message.contains("malformed envelope"));
        let mut truncated = wire.clone();
        truncated.truncate(wire.len() - 5);
        assert!(unsealer.open("m", &truncated).await.unwrap_err().message.contains("malformed envelope"));
    }
}

//! Sealed requests: the enclave's side of the KMS envelope.
//!
//! For each sealed request the enclave, in this order:
//!
//! 1. parses the envelope's clear fields ([`veil_protocol::envelope::parse_request`]);
//! 2. checks that its configuration accepts the request's KMS key;
//! 3. takes the data key from its cache, from a remembered refusal, or (once per data key, however many
//!    requests wait for it, and within the KMS timeout including the wait) from KMS through a
//!    [`KeySource`]: KMS `Decrypt` with the enclave's attestation document as `Recipient`;
//! 4. checks that the client expects the model this enclave loaded (the digest is bound into the
//!    associated data anyway: a mismatch could not open);
//! 5. opens the request in place, in the frame buffer it arrived in;
//! 6. checks the replay window and records the request id: only now, after the request authenticated;
//! 7. charges the data key's request budget.
//!
//! A refusal in steps 1 to 3 happens without the data key and goes back in the clear (the client is told
//! it is the parent's word, since the parent could have made it up). From step 4 on the enclave holds the
//! data key, so every refusal is sealed for the client ([`Unsealed::Refused`] with a sealer).
use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use veil_protocol::envelope::{
    self, AnswerBody, DataKey, ErrorSealer, ModelRef, ParsedRequest, RequestMeta, SealedAnswer,
};
use veil_protocol::random::RandomSource;
use zeroize::Zeroizing;

use crate::config::EnclaveConfig;
use crate::error::EnclaveError;
use crate::evidence::IssuedReceipt;
use crate::keys::{CacheId, KeyCache, KeyCacheLimits, Lookup};
use crate::kms::KmsError;
use crate::replay::{Refusal, ReplayGuard};

/// A boxed future, for the object-safe [`KeySource`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where data keys come from: KMS `Decrypt` with `Recipient` in production.
pub trait KeySource: Send + Sync + std::fmt::Debug {
    /// The plaintext data key for `encrypted_data_key` under `key_id`.
    fn data_key<'a>(
        &'a self,
        key_id: &'a str,
        encrypted_data_key: &'a [u8],
        encryption_context: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, KmsError>>;
}

/// A request that opened: its plaintext in the frame buffer it arrived in (wiped when this drops), and the
/// sealer for its answer. Only [`Unsealer::open`] builds one, so an answer is only ever sealed for a request
/// that authenticated.
pub struct OpenedRequest {
    buf: BytesMut,
    body: Range<usize>,
    meta: RequestMeta,
    answer: envelope::AnswerSealer,
}

impl std::fmt::Debug for OpenedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedRequest").field("len", &self.body.len()).finish_non_exhaustive()
    }
}

impl OpenedRequest {
    /// The plaintext request body (an Open Inference Protocol request).
    pub fn body(&self) -> &[u8] {
        &self.buf[self.body.clone()]
    }

    /// The request's meta (the binary extension's header length).
    pub fn meta(&self) -> RequestMeta {
        self.meta
    }

    /// Seals the answer written into `body`, with its receipt.
    pub fn seal_answer(
        &self,
        body: AnswerBody,
        inference_header_length: Option<u64>,
        receipt: Option<IssuedReceipt>,
        rng: &dyn RandomSource,
    ) -> Result<SealedAnswer, EnclaveError> {
        Ok(self.answer.seal_answer(body, inference_header_length, receipt, rng)?)
    }

    /// Seals an error about the request (with its receipt when the model ran).
    pub fn seal_error(
        &self,
        error: &EnclaveError,
        receipt: Option<IssuedReceipt>,
        rng: &dyn RandomSource,
    ) -> Result<SealedAnswer, EnclaveError> {
        Ok(self.answer.seal_error(&error.to_reply(), receipt, rng)?)
    }
}

impl Drop for OpenedRequest {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(self.buf.as_mut());
    }
}

/// What opening a sealed request came to.
#[derive(Debug)]
pub enum Unsealed {
    /// It opened.
    Opened(OpenedRequest),
    /// It was refused; with a sealer when the enclave held the data key, so the refusal can travel sealed.
    Refused { error: EnclaveError, sealer: Option<ErrorSealer> },
}

/// The enclave's envelope opener: key cache, replay records, key source and counters.
pub struct Unsealer {
    cache: KeyCache,
    replay: ReplayGuard,
    source: Arc<dyn KeySource>,
    config: Arc<EnclaveConfig>,
    kms_timeout: Duration,
    kms_calls: AtomicU64,
    /// One gate per data key being fetched: requests that arrive together with a new data key wait for
    /// the first one's KMS call instead of each making their own (one KMS call per data key, even under
    /// a burst).
    inflight: std::sync::Mutex<std::collections::HashMap<CacheId, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Unsealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unsealer").field("cache", &self.cache).field("replay", &self.replay).finish_non_exhaustive()
    }
}

impl Unsealer {
    /// An opener with the limits of `config`, asking `source` for data keys within `kms_timeout` each.
    pub fn new(source: Arc<dyn KeySource>, config: Arc<EnclaveConfig>, kms_timeout: Duration) -> Unsealer {
        let l = &config.limits;
        let limits = KeyCacheLimits {
            capacity: l.key_cache_capacity,
            ttl: Duration::from_secs(l.key_ttl_secs),
            max_requests_per_key: l.max_requests_per_key,
        };
        Unsealer {
            cache: KeyCache::new(limits),
            replay: ReplayGuard::new(l.replay_window_secs, l.max_seen_requests),
            source,
            kms_timeout,
            kms_calls: AtomicU64::new(0),
            inflight: Default::default(),
            config: Arc::clone(&config),
        }
    }

    /// How many times KMS was asked for a data key.
    pub fn kms_calls(&self) -> u64 {
        self.kms_calls.load(Ordering::Relaxed)
    }

    /// Replay records held now.
    pub fn replay_records(&self) -> usize {
        self.replay.len()
    }

    /// Opens the sealed request in `buf` (the frame's attachment) for `model` (the loaded model: name and
    /// digest), at the enclave's clock `now_unix`.
    pub async fn open(&self, model: &ModelRef, mut buf: BytesMut, now_unix: u64) -> Unsealed {
        let clear = |error: EnclaveError| Unsealed::Refused { error, sealer: None };
        let parsed = match envelope::parse_request(&buf) {
            Ok(p) => p,
            Err(e) => return clear(e.into()),
        };
        let h = &parsed.header;
        if !self.config.accepts_request_key(&h.key_id) {
            return clear(EnclaveError::KeyNotAccepted(h.key_id.chars().take(200).collect()));
        }
        let id = CacheId::new(&h.key_id, &h.encrypted_data_key, &h.encryption_context);
        let key = match self.key_for(&id, &parsed).await {
            Ok(k) => k,
            Err(e) => return clear(e),
        };
        // From here on the enclave holds the data key: refusals are sealed for the client.
        let sealed = |error: EnclaveError| match ErrorSealer::new(&key, model, &parsed) {
            Ok(sealer) => Unsealed::Refused { error, sealer: Some(sealer) },
            Err(e) => Unsealed::Refused { error: e.into(), sealer: None },
        };
        if h.model_sha384 != model.sha384 {
            // Sealed for the digest the client expects (it could not open anything else): an error only, which
            // tells it which model this enclave serves.
            let error = EnclaveError::WrongModel {
                model: model.name.clone(),
                expected: hex::encode(h.model_sha384),
                loaded: hex::encode(model.sha384),
            };
            let expected = ModelRef { name: model.name.clone(), sha384: h.model_sha384 };
            return match ErrorSealer::new(&key, &expected, &parsed) {
                Ok(sealer) => Unsealed::Refused { error, sealer: Some(sealer) },
                Err(e) => Unsealed::Refused { error: e.into(), sealer: None },
            };
        }
        let opened = match envelope::open_request_in_place(&key, model, &parsed, &mut buf) {
            Ok(o) => o,
            Err(e) => return sealed(e.into()),
        };
        if let Err(r) = self.replay.admit(&id, &h.request_id, h.issued_at, now_unix) {
            let error = match r {
                Refusal::OutsideWindow(skew) => EnclaveError::OutsideWindow(skew),
                Refusal::Replayed => EnclaveError::Replayed,
                Refusal::Full => EnclaveError::Overloaded("replay records are full"),
            };
            zeroize::Zeroize::zeroize(buf.as_mut());
            return sealed(error);
        }
        if !self.cache.charge(&id) {
            zeroize::Zeroize::zeroize(buf.as_mut());
            return sealed(EnclaveError::KeyExhausted);
        }
        Unsealed::Opened(OpenedRequest { buf, body: opened.body, meta: opened.meta, answer: opened.answer })
    }

    /// The data key for `id`: cached, remembered as refused, or from KMS once however many ask at once,
    /// within the KMS timeout (waiting for another request's call included).
    async fn key_for(&self, id: &CacheId, parsed: &ParsedRequest) -> Result<Arc<DataKey>, EnclaveError> {
        match self.cache.get(id, Instant::now()) {
            Lookup::Hit(k) => return Ok(k),
            Lookup::Refused(e) => return Err(e.into()),
            Lookup::Miss => {}
        }
        let gate = {
            let mut m = self.inflight.lock().map_err(|_| EnclaveError::Internal("key gate poisoned".into()))?;
            Arc::clone(m.entry(*id).or_default())
        };
        let h = &parsed.header;
        let result = tokio::time::timeout(self.kms_timeout, async {
            let _turn = gate.lock().await;
            // Whoever held the gate before us may have fetched (or been refused) meanwhile.
            match self.cache.get(id, Instant::now()) {
                Lookup::Hit(k) => return Ok(k),
                Lookup::Refused(e) => return Err(EnclaveError::Kms(e)),
                Lookup::Miss => {}
            }
            self.kms_calls.fetch_add(1, Ordering::Relaxed);
            match self.source.data_key(&h.key_id, &h.encrypted_data_key, &h.encryption_context).await {
                Ok(plain) => {
                    let key = DataKey::new(&plain)
                        .map_err(|e| EnclaveError::Internal(format!("KMS returned an unusable data key: {e}")))?;
                    Ok(self.cache.insert(*id, &h.key_id, key, Instant::now()))
                }
                Err(e) => {
                    self.cache.refuse(*id, &e, Instant::now());
                    Err(EnclaveError::Kms(e))
                }
            }
        })
        .await
        .unwrap_or(Err(EnclaveError::KmsTimeout(self.kms_timeout)));
        if let Ok(mut m) = self.inflight.lock() {
            // The last one out removes the gate (the map holds one reference, `gate` another).
            if Arc::strong_count(&gate) <= 2 {
                m.remove(id);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::{SystemTime, UNIX_EPOCH};
    use veil_protocol::envelope::{OpenedAnswer, Outcome, RequestTag, Sealer};
    use veil_protocol::random::SystemRandom;

    const ARN: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    /// A KMS stand-in that knows one blob and counts calls.
    #[derive(Debug)]
    struct FakeKms {
        calls: Mutex<u32>,
        delay: Duration,
    }

    impl KeySource for FakeKms {
        fn data_key<'a>(
            &'a self,
            _: &'a str,
            edk: &'a [u8],
            ctx: &'a BTreeMap<String, String>,
        ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, KmsError>> {
            Box::pin(async move {
                *self.calls.lock().unwrap() += 1;
                // Slow enough that a burst of requests all arrive while the first call is out.
                tokio::time::sleep(self.delay).await;
                if edk == b"blob" && ctx.get("tenant").map(String::as_str) == Some("a") {
                    Ok(Zeroizing::new(vec![3u8; 32]))
                } else {
                    Err(KmsError::InvalidCiphertext)
                }
            })
        }
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    fn config(extra: &str) -> Arc<EnclaveConfig> {
        let text = format!(
            "[kms]\nregion = \"eu-west-1\"\n\n[[models]]\nname = \"m\"\nkms_key_arn = \"{ARN}\"\n\n[limits]\n{extra}"
        );
        Arc::new(EnclaveConfig::parse(text.as_bytes(), false).unwrap())
    }

    fn model() -> ModelRef {
        ModelRef { name: "m".into(), sha384: [5u8; 48] }
    }

    fn fake(delay_ms: u64) -> Arc<FakeKms> {
        Arc::new(FakeKms { calls: Mutex::new(0), delay: Duration::from_millis(delay_ms) })
    }

    struct Client {
        key: DataKey,
        ctx: BTreeMap<String, String>,
    }

    impl Client {
        fn new(tenant: &str) -> Client {
            Client { key: DataKey::new(&[3u8; 32]).unwrap(), ctx: BTreeMap::from([("tenant".into(), tenant.into())]) }
        }
        fn sealer(&self) -> Sealer<'_> {
            Sealer { key: &self.key, key_id: ARN, encrypted_data_key: b"blob", encryption_context: &self.ctx }
        }
        fn seal_at(&self, body: &[u8], issued_at: u64) -> (Vec<u8>, RequestTag) {
            self.sealer().seal_request(&model(), body, RequestMeta::default(), issued_at, &SystemRandom::new()).unwrap()
        }
        fn seal(&self, body: &[u8]) -> (Vec<u8>, RequestTag) {
            self.seal_at(body, now())
        }
        fn open_error(&self, tag: &RequestTag, sealed: &SealedAnswer) -> String {
            let mut b = sealed.bytes().to_vec();
            let OpenedAnswer { meta, .. } = self.sealer().open_answer(tag, &mut b).unwrap();
            match meta.outcome {
                Outcome::Error(e) => e.message,
                other => panic!("{other:?}"),
            }
        }
    }

    async fn open(u: &Unsealer, wire: &[u8], at: u64) -> Unsealed {
        u.open(&model(), BytesMut::from(wire), at).await
    }

    fn refused(u: Unsealed) -> (EnclaveError, Option<ErrorSealer>) {
        match u {
            Unsealed::Refused { error, sealer } => (error, sealer),
            Unsealed::Opened(o) => panic!("opened: {o:?}"),
        }
    }

    #[tokio::test]
    async fn one_kms_call_per_data_key_and_sealed_answers() {
        let kms = fake(20);
        let u = Unsealer::new(kms.clone(), config(""), Duration::from_secs(1));
        let client = Client::new("a");
        for i in 0..10 {
            let (wire, tag) = client.seal(format!("req {i}").as_bytes());
            let Unsealed::Opened(opened) = open(&u, &wire, now()).await else { panic!() };
            assert_eq!(opened.body(), format!("req {i}").as_bytes());
            let mut body = AnswerBody::with_capacity(6);
            body.writer().extend_from_slice(b"answer");
            let sealed = opened.seal_answer(body, None, None, &SystemRandom::new()).unwrap();
            let mut b = sealed.bytes().to_vec();
            assert_eq!(client.sealer().open_answer(&tag, &mut b).unwrap().body, b"answer");
            // A replay of the same bytes is refused, sealed.
            let (e, sealer) = refused(open(&u, &wire, now()).await);
            assert!(matches!(e, EnclaveError::Replayed), "{e}");
            let sealed = sealer.unwrap().seal_error(&e.to_reply(), &SystemRandom::new()).unwrap();
            assert!(client.open_error(&tag, &sealed).contains("replayed"));
        }
        assert_eq!(*kms.calls.lock().unwrap(), 1);
        assert_eq!(u.kms_calls(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_under_a_new_data_key_makes_one_kms_call() {
        let kms = fake(20);
        let u = Arc::new(Unsealer::new(kms.clone(), config(""), Duration::from_secs(1)));
        let client = Client::new("a");
        let wires: Vec<Vec<u8>> = (0..64).map(|i| client.seal(format!("{i}").as_bytes()).0).collect();
        let tasks: Vec<_> = wires
            .into_iter()
            .map(|w| {
                let u = Arc::clone(&u);
                tokio::spawn(async move { matches!(open(&u, &w, now()).await, Unsealed::Opened(_)) })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(*kms.calls.lock().unwrap(), 1);
        assert!(u.inflight.lock().unwrap().is_empty());
    }

    /// Finding 3 of the security review: a forged body with a copied clear header burned the real
    /// request's id (the real client was told "replayed") and spent its key's budget.
    #[tokio::test]
    async fn finding_3_a_forged_body_cannot_burn_a_real_request_id() {
        let u = Unsealer::new(fake(0), config("max_requests_per_key = 2\n"), Duration::from_secs(1));
        let client = Client::new("a");
        let (wire, _) = client.seal(b"the real request");
        let parsed = envelope::parse_request(&wire).unwrap();
        for _ in 0..5 {
            let mut forged = wire.clone();
            forged[parsed.ciphertext.start + 3] ^= 0x55;
            let (e, sealer) = refused(open(&u, &forged, now()).await);
            assert!(matches!(e, EnclaveError::Envelope(envelope::EnvelopeError::Decrypt)), "{e}");
            assert!(sealer.is_some(), "the enclave held the key: the refusal travels sealed");
        }
        assert_eq!(u.replay_records(), 0);
        // The real request still opens, and the budget of two was not spent by the forgeries.
        assert!(matches!(open(&u, &wire, now()).await, Unsealed::Opened(_)));
        assert!(matches!(open(&u, &client.seal(b"second").0, now()).await, Unsealed::Opened(_)));
        let (e, _) = refused(open(&u, &client.seal(b"third").0, now()).await);
        assert!(matches!(e, EnclaveError::KeyExhausted), "{e}");
    }

    /// Finding 3 of the security review, the eviction half: with the key cache under pressure, a key's
    /// entry could leave while its requests were inside the window, and a replay was accepted.
    #[tokio::test]
    async fn finding_3_cache_pressure_never_reopens_a_replay_window() {
        let u = Unsealer::new(fake(0), config("key_cache_capacity = 1\n"), Duration::from_secs(1));
        let victim = Client::new("a");
        let (wire, _) = victim.seal(b"victim");
        assert!(matches!(open(&u, &wire, now()).await, Unsealed::Opened(_)));
        // Another data key takes the only slot: the victim's key is evicted.
        let other = CacheId::new("other", b"x", &BTreeMap::new());
        drop(u.cache.insert(other, "other", DataKey::new(&[1; 32]).unwrap(), Instant::now()));
        assert_eq!(u.cache.len(), 1, "the victim's key was evicted");
        let (e, _) = refused(open(&u, &wire, now()).await);
        assert!(matches!(e, EnclaveError::Replayed), "{e}");
    }

    #[tokio::test]
    async fn refusals_are_clear_or_sealed_as_they_should_be() {
        let kms = fake(0);
        let u = Unsealer::new(kms.clone(), config(""), Duration::from_secs(1));
        // KMS refuses the data key: no key, so the refusal is in the clear, and remembered.
        let wrong_ctx = Client::new("b");
        for _ in 0..5 {
            let (e, sealer) = refused(open(&u, &wrong_ctx.seal(b"x").0, now()).await);
            assert!(matches!(e, EnclaveError::Kms(KmsError::InvalidCiphertext)), "{e}");
            assert!(sealer.is_none());
        }
        assert_eq!(*kms.calls.lock().unwrap(), 1, "a refused data key is asked about once");
        let client = Client::new("a");
        let (old, tag) = client.seal_at(b"x", now() - 3600);
        let (e, sealer) = refused(open(&u, &old, now()).await);
        assert!(matches!(e, EnclaveError::OutsideWindow(_)), "{e}");
        let sealed = sealer.unwrap().seal_error(&e.to_reply(), &SystemRandom::new()).unwrap();
        assert!(client.open_error(&tag, &sealed).contains("outside the replay window"));
        // Another model digest than the loaded one: refused, sealed, naming both digests.
        let other = client.sealer();
        let (wire, tag) = other
            .seal_request(
                &ModelRef { name: "m".into(), sha384: [6; 48] },
                b"x",
                RequestMeta::default(),
                now(),
                &SystemRandom::new(),
            )
            .unwrap();
        let (e, sealer) = refused(open(&u, &wire, now()).await);
        assert!(matches!(e, EnclaveError::WrongModel { .. }), "{e}");
        // The client, which expected the other digest, can read the refusal: it names what is served.
        let sealed = sealer.unwrap().seal_error(&e.to_reply(), &SystemRandom::new()).unwrap();
        assert!(client.open_error(&tag, &sealed).contains(&hex::encode([5u8; 48])));
        assert!(matches!(refused(open(&u, b"{\"inputs\":[]}", now()).await).0, EnclaveError::Envelope(_)));
    }

    #[tokio::test]
    async fn keys_the_configuration_does_not_name_are_refused_before_kms() {
        let kms = fake(0);
        let u = Unsealer::new(kms.clone(), config(""), Duration::from_secs(1));
        let client = Client::new("a");
        let mut s = client.sealer();
        s.key_id = "arn:aws:kms:eu-west-1:999999999999:key/other";
        let (wire, _) = s.seal_request(&model(), b"x", RequestMeta::default(), now(), &SystemRandom::new()).unwrap();
        let (e, _) = refused(open(&u, &wire, now()).await);
        assert!(matches!(e, EnclaveError::KeyNotAccepted(_)), "{e}");
        assert_eq!(*kms.calls.lock().unwrap(), 0);
    }

    /// Finding 4 of the security review: the wait for another request's KMS call was not covered by the
    /// KMS timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn finding_4_waiting_for_the_key_gate_is_bounded_by_the_kms_timeout() {
        let u = Arc::new(Unsealer::new(fake(5_000), config(""), Duration::from_millis(200)));
        let client = Client::new("a");
        let started = Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let u = Arc::clone(&u);
                let w = client.seal(format!("{i}").as_bytes()).0;
                tokio::spawn(async move { matches!(refused(open(&u, &w, now()).await).0, EnclaveError::KmsTimeout(_)) })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }
}

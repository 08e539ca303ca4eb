//! What the enclave serves: its state ([`Enclave`]) and the answer to each kind of request.
//!
//! The trusted request path for inference is [`Enclave::infer`]: look the model up, open the sealed request
//! ([`crate::sealed`]; refusals go back in the clear before the data key is at hand and sealed after),
//! wait for a free ONNX Runtime session without holding a thread, run the model on the blocking pool
//! writing the JSON answer straight into the buffer it will be sealed and sent from, seal, and hand the
//! answer to the connection's writer from that same thread. The plaintext request is wiped when the opened
//! request drops, the answer's plaintext is encrypted where it lies.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::sync::OwnedSemaphorePermit;
use veil_protocol::envelope::{AnswerBody, ModelRef, SealedAnswer};
use veil_protocol::message::{EnclaveRequest, EnclaveResponse};
use veil_protocol::random::SystemRandom;

use crate::budget::ByteBudget;
use crate::config::EnclaveConfig;
use crate::error::EnclaveError;
use crate::model::Model;
use crate::sealed::{OpenedRequest, Unsealed, Unsealer};

/// Makes an attestation document for a client's nonce, committing to the loaded models (name, SHA-384),
/// sorted by name. Wired to the NSM by the binary.
pub type AttestFn = Box<dyn Fn(&[u8], &[(String, [u8; 48])]) -> Result<Vec<u8>, EnclaveError> + Send + Sync>;

/// Longest nonce accepted in an attestation request (the NSM takes at most 512 bytes; 64 is plenty).
pub const MAX_NONCE: usize = 64;

/// An answer ready for the wire: the message and its attachment.
#[derive(Debug)]
pub enum Reply {
    /// A message whose attachment is a plain buffer (metadata, documents) or nothing.
    Plain(EnclaveResponse, Vec<u8>),
    /// A sealed answer (or sealed error): `Infer` with the sealed bytes.
    Sealed(SealedAnswer),
}

impl Reply {
    fn error(e: &EnclaveError) -> Reply {
        Reply::Plain(EnclaveResponse::Error(e.to_reply()), Vec::new())
    }

    /// The message and its attachment.
    pub fn parts(&self) -> (&EnclaveResponse, &[u8]) {
        match self {
            Reply::Plain(r, a) => (r, a),
            Reply::Sealed(s) => (&EnclaveResponse::Infer, s.bytes()),
        }
    }
}

/// The enclave's state.
pub struct Enclave {
    config: Arc<EnclaveConfig>,
    models: RwLock<HashMap<String, Arc<Model>>>,
    /// Bytes of the last answer per model: the next answer's buffer starts that large.
    answer_hints: RwLock<HashMap<String, Arc<AtomicUsize>>>,
    ready: AtomicBool,
    unsealer: Unsealer,
    attest: AttestFn,
    budget: ByteBudget,
    rng: SystemRandom,
}

impl std::fmt::Debug for Enclave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enclave").field("models", &self.config.model_names()).field("ready", &self.ready).finish()
    }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Enclave {
    /// An enclave serving the models of `config` once they are [`Enclave::add_model`]ed.
    pub fn new(config: Arc<EnclaveConfig>, unsealer: Unsealer, attest: AttestFn) -> Enclave {
        let budget =
            ByteBudget::new(config.limits.max_request_bytes_in_flight.unwrap_or_else(ByteBudget::default_total));
        Enclave {
            config,
            models: RwLock::new(HashMap::new()),
            answer_hints: RwLock::new(HashMap::new()),
            ready: AtomicBool::new(false),
            unsealer,
            attest,
            budget,
            rng: SystemRandom::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EnclaveConfig {
        &self.config
    }

    /// The budget for request bytes in flight.
    pub fn budget(&self) -> &ByteBudget {
        &self.budget
    }

    /// The envelope opener.
    pub fn unsealer(&self) -> &Unsealer {
        &self.unsealer
    }

    /// Adds a loaded model; the enclave is ready once every configured model is in.
    pub fn add_model(&self, model: Model) {
        let Ok(mut models) = self.models.write() else { return };
        if let Ok(mut hints) = self.answer_hints.write() {
            hints.insert(model.name().to_owned(), Arc::new(AtomicUsize::new(4096)));
        }
        models.insert(model.name().to_owned(), Arc::new(model));
        if self.config.models.iter().all(|m| models.contains_key(&m.name)) {
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

    /// True once every configured model is loaded.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn lookup(&self, name: &str) -> Result<Arc<Model>, EnclaveError> {
        if let Some(m) = self.model(name) {
            return Ok(m);
        }
        if self.config.model(name).is_some() {
            return Err(EnclaveError::Loading(name.to_owned()));
        }
        let shown: String = name.chars().take(64).collect();
        Err(EnclaveError::NotFound(format!(
            "unknown model {shown:?}; this enclave serves: {}",
            self.config.model_names().join(", ")
        )))
    }

    /// Answers a request that is not inference.
    pub fn handle(&self, request: EnclaveRequest) -> Reply {
        match request {
            EnclaveRequest::Status => Reply::Plain(
                EnclaveResponse::Status {
                    ready: self.is_ready(),
                    models: self.config.model_names(),
                    kms_calls: self.unsealer.kms_calls(),
                },
                Vec::new(),
            ),
            EnclaveRequest::ModelMetadata { model } => match self.lookup(&model) {
                Ok(m) => Reply::Plain(EnclaveResponse::ModelMetadata, m.metadata_json().to_vec()),
                Err(e) => Reply::error(&e),
            },
            EnclaveRequest::Infer { .. } => Reply::error(&EnclaveError::Internal("inference has its own path".into())),
            EnclaveRequest::Attestation { nonce } => {
                if nonce.is_empty() || nonce.len() > MAX_NONCE {
                    return Reply::error(&EnclaveError::BadRequest(format!(
                        "nonce must be 1 to {MAX_NONCE} bytes, got {}",
                        nonce.len()
                    )));
                }
                if !self.is_ready() {
                    // The document commits to every model's digest, so it waits until all are loaded.
                    return Reply::error(&EnclaveError::Loading("all models".into()));
                }
                match (self.attest)(&nonce, &self.model_digests()) {
                    Ok(doc) => Reply::Plain(EnclaveResponse::Attestation, doc),
                    Err(e) => Reply::error(&e),
                }
            }
        }
    }

    /// Answers a sealed inference request for `model`: the request's frame buffer is `sealed`. `deliver`
    /// is called once with the reply, always on a blocking-pool thread (the one that ran the model, for
    /// answers; refusals, which are rare, take a hop there too), so that it may block on the write.
    pub async fn infer(self: &Arc<Self>, model: &str, sealed: BytesMut, deliver: impl FnOnce(Reply) + Send + 'static) {
        let (model, opened, session) = match self.open(model, sealed).await {
            Ok(ready) => ready,
            Err(reply) => {
                tokio::task::spawn_blocking(move || deliver(reply));
                return;
            }
        };
        let hint = self.answer_hints.read().ok().and_then(|h| h.get(model.name()).cloned());
        let this = Arc::clone(self);
        // Off the async runtime: ONNX Runtime runs on the blocking pool, and the answer is sealed and handed
        // to the writer from there.
        tokio::task::spawn_blocking(move || {
            let capacity = hint.as_ref().map_or(4096, |h| h.load(Ordering::Relaxed));
            let mut body = AnswerBody::with_capacity(capacity);
            let result = model.infer_blocking(opened.body(), body.writer());
            drop(session);
            let sealed = match result {
                Ok(()) => {
                    if let Some(h) = &hint {
                        h.store(body.as_slice().len(), Ordering::Relaxed);
                    }
                    opened.seal_answer(body, None, &this.rng)
                }
                Err(e) => {
                    body.clear();
                    opened.seal_error(&e, &this.rng)
                }
            };
            drop(opened);
            deliver(sealed.map(Reply::Sealed).unwrap_or_else(|e| Reply::error(&e)));
        });
    }

    /// The steps of [`Enclave::infer`] before the model runs: the model, the opened request, a session.
    async fn open(
        &self,
        model: &str,
        sealed: BytesMut,
    ) -> Result<(Arc<Model>, OpenedRequest, OwnedSemaphorePermit), Reply> {
        let model = self.lookup(model).map_err(|e| Reply::error(&e))?;
        let target = ModelRef { name: model.name().to_owned(), sha384: *model.sha384() };
        let opened = match self.unsealer.open(&target, sealed, now_unix()).await {
            Unsealed::Opened(o) => o,
            Unsealed::Refused { error, sealer } => {
                tracing::debug!(
                    model = model.name(),
                    refusal = error.label(),
                    sealed = sealer.is_some(),
                    "request refused"
                );
                return Err(match sealer.map(|s| s.seal_error(&error.to_reply(), &self.rng)) {
                    Some(Ok(s)) => Reply::Sealed(s),
                    Some(Err(e)) => Reply::error(&e.into()),
                    None => Reply::error(&error),
                });
            }
        };
        match model.acquire().await {
            Ok(session) => Ok((model, opened, session)),
            Err(e) => Err(opened.seal_error(&e, &self.rng).map(Reply::Sealed).unwrap_or_else(|e| Reply::error(&e))),
        }
    }
}

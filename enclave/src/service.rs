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
use std::sync::{Arc, OnceLock, RwLock};

use bytes::BytesMut;
use tokio::sync::OwnedSemaphorePermit;
use veil_protocol::envelope::{AnswerBody, ModelRef, SealedAnswer};
use veil_protocol::evidence::Mode;
use veil_protocol::message::{EnclaveRequest, EnclaveResponse};
use veil_protocol::random::SystemRandom;
use veil_protocol::time::now_unix;

use crate::budget::ByteBudget;
use crate::config::EnclaveConfig;
use crate::error::EnclaveError;
use crate::evidence::{Evidence, IssueReceipt, IssuedReceipt};
use crate::model::Model;
use crate::ohttp::{OhttpGateway, OpenedRequest as OhttpRequest, Refused, Route};
use crate::sealed::{OpenedRequest, Unsealed, Unsealer};

/// Makes an attestation document for a client's nonce, committing to the loaded models (name, SHA-384),
/// sorted by name, and to the OHTTP key configuration list served (its SHA-384), if any. Wired to the NSM
/// by the binary.
pub type AttestFn =
    Box<dyn Fn(&[u8], &[(String, [u8; 48])], Option<[u8; 48]>) -> Result<Vec<u8>, EnclaveError> + Send + Sync>;

/// Longest nonce accepted in an attestation request (the NSM takes at most 512 bytes; 64 is plenty).
pub const MAX_NONCE: usize = 64;

/// An answer ready for the wire: the message and its attachment.
#[derive(Debug)]
pub enum Reply {
    /// A message whose attachment is a plain buffer (metadata, documents) or nothing.
    Plain(EnclaveResponse, Vec<u8>),
    /// A sealed answer (or sealed error): `Infer` with the sealed bytes.
    Sealed(SealedAnswer),
    /// An OHTTP encapsulated response (answer or error).
    Ohttp(Vec<u8>),
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
            Reply::Ohttp(b) => (&EnclaveResponse::Ohttp, b),
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
    /// Attested-key mode's gateway, once its keys are at hand (a fleet key needs KMS first).
    ohttp: OnceLock<Arc<OhttpGateway>>,
    /// Receipts and the audit log (`None` when the configuration turns receipts off).
    evidence: Option<Arc<Evidence>>,
}

/// A model's last answer size ([`Enclave::answer_hint`]).
struct AnswerHint(Option<Arc<AtomicUsize>>);

impl AnswerHint {
    fn capacity(&self) -> usize {
        self.0.as_ref().map_or(4096, |h| h.load(Ordering::Relaxed))
    }

    fn record(&self, len: usize) {
        if let Some(h) = &self.0 {
            h.store(len, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for Enclave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enclave").field("models", &self.config.model_names()).field("ready", &self.ready).finish()
    }
}

impl Enclave {
    /// An enclave serving the models of `config` once they are [`Enclave::add_model`]ed.
    pub fn new(
        config: Arc<EnclaveConfig>,
        unsealer: Unsealer,
        attest: AttestFn,
        evidence: Option<Arc<Evidence>>,
    ) -> Enclave {
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
            ohttp: OnceLock::new(),
            evidence,
        }
    }

    /// The receipts' state, when receipts are on.
    pub fn evidence(&self) -> Option<&Arc<Evidence>> {
        self.evidence.as_ref()
    }

    /// The receipt of one request the model ran (`None` when receipts are off).
    fn receipt(
        &self,
        model: &Model,
        request: &[u8],
        response: &[u8],
        mode: Mode,
    ) -> Result<Option<IssuedReceipt>, EnclaveError> {
        self.evidence
            .as_ref()
            .map(|e| e.issue(model.name(), model.sha384(), request, response, mode, &self.rng))
            .transpose()
    }

    /// Refuses new inference while the audit log is not keeping up.
    fn admit(&self) -> Result<(), EnclaveError> {
        self.evidence.as_ref().map_or(Ok(()), |e| e.admit())
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

    /// Adds a loaded model; the enclave is ready once every configured model is in (and the OHTTP gateway,
    /// when enabled).
    pub fn add_model(&self, model: Model) {
        let Ok(mut models) = self.models.write() else { return };
        if let Ok(mut hints) = self.answer_hints.write() {
            hints.insert(model.name().to_owned(), Arc::new(AtomicUsize::new(4096)));
        }
        models.insert(model.name().to_owned(), Arc::new(model));
        drop(models);
        self.update_ready();
    }

    /// Installs attested-key mode's gateway (once).
    pub fn set_ohttp(&self, gateway: OhttpGateway) {
        let _ = self.ohttp.set(Arc::new(gateway));
        self.update_ready();
    }

    /// The gateway, once installed.
    pub fn ohttp_gateway(&self) -> Option<&Arc<OhttpGateway>> {
        self.ohttp.get()
    }

    /// Starts the receipts' log, once every model is loaded (and the gateway installed): the attestation
    /// document certifying the receipt key commits to them all, and becomes record 0 of the boot's log.
    /// The enclave is ready only after this.
    pub fn start_evidence(&self) -> Result<(), EnclaveError> {
        let Some(evidence) = &self.evidence else { return Ok(()) };
        let keys = self.ohttp.get().map(|g| g.key_list_sha384());
        let document = (self.attest)(evidence.boot_id(), &self.model_digests(), keys)?;
        evidence.start(document)?;
        self.update_ready();
        Ok(())
    }

    fn update_ready(&self) {
        let Ok(models) = self.models.read() else { return };
        let all = self.config.models.iter().all(|m| models.contains_key(&m.name));
        let gateway = !self.config.ohttp.enabled || self.ohttp.get().is_some();
        let receipts = self.evidence.as_ref().is_none_or(|e| e.started());
        if all && gateway && receipts {
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
            EnclaveRequest::Infer { .. } | EnclaveRequest::Ohttp => {
                Reply::error(&EnclaveError::Internal("inference has its own path".into()))
            }
            EnclaveRequest::OhttpKeys => match self.ohttp.get() {
                Some(g) => Reply::Plain(EnclaveResponse::OhttpKeys, g.key_list().to_vec()),
                None if !self.config.ohttp.enabled => Reply::error(&EnclaveError::NotFound(
                    "attested-key mode (OHTTP) is not enabled in this enclave's configuration".into(),
                )),
                None => Reply::error(&EnclaveError::Loading("the OHTTP keys".into())),
            },
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
                let keys = self.ohttp.get().map(|g| g.key_list_sha384());
                match (self.attest)(&nonce, &self.model_digests(), keys) {
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
        if let Err(e) = self.admit() {
            tokio::task::spawn_blocking(move || deliver(Reply::error(&e)));
            return;
        }
        let (model, opened, session) = match self.open(model, sealed).await {
            Ok(ready) => ready,
            Err(reply) => {
                tokio::task::spawn_blocking(move || deliver(reply));
                return;
            }
        };
        let hint = self.answer_hint(model.name());
        let this = Arc::clone(self);
        // Off the async runtime: ONNX Runtime runs on the blocking pool, and the answer is sealed and handed
        // to the writer from there.
        tokio::task::spawn_blocking(move || {
            let mut body = AnswerBody::with_capacity(hint.capacity());
            let result = model.infer_blocking(opened.body(), opened.meta().inference_header_length, body.writer());
            drop(session);
            let sealed = match result {
                Ok(header_length) => {
                    hint.record(body.as_slice().len());
                    match this.receipt(&model, opened.body(), body.as_slice(), Mode::Kms) {
                        Ok(receipt) => opened.seal_answer(body, header_length, receipt, &this.rng),
                        Err(e) => {
                            body.clear();
                            opened.seal_error(&e, None, &this.rng)
                        }
                    }
                }
                Err(e) => {
                    body.clear();
                    match this.receipt(&model, opened.body(), &[], Mode::Kms) {
                        Ok(receipt) => opened.seal_error(&e, receipt, &this.rng),
                        Err(e) => opened.seal_error(&e, None, &this.rng),
                    }
                }
            };
            drop(opened);
            deliver(sealed.map(Reply::Sealed).unwrap_or_else(|e| Reply::error(&e)));
        });
    }

    /// Answers an OHTTP encapsulated request (attested-key mode): decapsulate, refuse replays, route the
    /// Binary HTTP request, and seal the response. As with [`Enclave::infer`], `deliver` is called once, on
    /// a blocking-pool thread.
    pub async fn ohttp(self: &Arc<Self>, enc_request: BytesMut, deliver: impl FnOnce(Reply) + Send + 'static) {
        let reply = match self.ohttp_open(&enc_request) {
            Ok(request) => {
                drop(enc_request);
                match request.route.clone() {
                    Route::Infer { model } => return self.ohttp_infer(&model, request, deliver).await,
                    route => self.ohttp_answer(&route, &request),
                }
            }
            Err(reply) => reply,
        };
        tokio::task::spawn_blocking(move || deliver(reply));
    }

    fn ohttp_open(&self, enc_request: &[u8]) -> Result<OhttpRequest, Reply> {
        let Some(gateway) = self.ohttp.get() else {
            return Err(Reply::error(&if self.config.ohttp.enabled {
                EnclaveError::Loading("the OHTTP keys".into())
            } else {
                EnclaveError::NotFound(
                    "attested-key mode (OHTTP) is not enabled in this enclave's configuration".into(),
                )
            }));
        };
        gateway.open(enc_request, now_unix(), &self.rng).map_err(|refused| match refused {
            Refused::Clear(e) => {
                tracing::debug!(refusal = e.label(), "OHTTP request refused before decapsulation");
                Reply::error(&e)
            }
            Refused::Sealed(bytes) => Reply::Ohttp(bytes),
        })
    }

    /// A sealed JSON error for `request`, or the clear error that sealing it became.
    fn ohttp_error(&self, request: &OhttpRequest, e: &EnclaveError, model: Option<&[u8; 48]>) -> Reply {
        match request.seal_error(e.kind().http_status(), &e.to_string(), model, None, &self.rng) {
            Ok(b) => Reply::Ohttp(b),
            Err(e) => Reply::error(&e),
        }
    }

    /// The model a route names, checked against the digest the client expects.
    fn ohttp_model(&self, name: &str, request: &OhttpRequest) -> Result<Arc<Model>, Reply> {
        let model = self.lookup(name).map_err(|e| self.ohttp_error(request, &e, None))?;
        if let Some(expected) = &request.expected_sha384
            && expected != model.sha384()
        {
            let e = EnclaveError::WrongModel {
                model: model.name().to_owned(),
                expected: hex::encode(expected),
                loaded: hex::encode(model.sha384()),
            };
            return Err(self.ohttp_error(request, &e, Some(model.sha384())));
        }
        Ok(model)
    }

    /// The routes that are not inference: health, server and model metadata.
    fn ohttp_answer(&self, route: &Route, request: &OhttpRequest) -> Reply {
        let (status, model, body): (u16, Option<Arc<Model>>, Vec<u8>) = match route {
            Route::ServerLive => (200, None, Vec::new()),
            // KServe v2: a 4xx status says "not ready".
            Route::ServerReady => (if self.is_ready() { 200 } else { 400 }, None, Vec::new()),
            Route::ServerMetadata => (
                200,
                None,
                serde_json::to_vec(&serde_json::json!({
                    "name": "veil",
                    "version": env!("CARGO_PKG_VERSION"),
                    "extensions": ["binary_tensor_data"],
                }))
                .unwrap_or_default(),
            ),
            Route::ModelMetadata { model } | Route::ModelReady { model } => {
                let m = match self.ohttp_model(model, request) {
                    Ok(m) => m,
                    Err(reply) => return reply,
                };
                let body =
                    if matches!(route, Route::ModelMetadata { .. }) { m.metadata_json().to_vec() } else { vec![] };
                (200, Some(m), body)
            }
            Route::Infer { .. } => (500, None, Vec::new()),
        };
        let content_type = (!body.is_empty()).then_some("application/json");
        let mut w = request.writer_for(status, model.as_ref().map(|m| m.sha384()), body.len(), content_type);
        w.content().extend_from_slice(&body);
        match request.seal(w, &self.rng) {
            Ok(b) => Reply::Ohttp(b),
            Err(e) => Reply::error(&e),
        }
    }

    /// Inference inside OHTTP: the same model, session and blocking-pool path as [`Enclave::infer`], with
    /// the answer written straight into the Binary HTTP response it is sealed in.
    async fn ohttp_infer(
        self: &Arc<Self>,
        name: &str,
        request: OhttpRequest,
        deliver: impl FnOnce(Reply) + Send + 'static,
    ) {
        let prepared = async {
            let model = self.ohttp_model(name, &request)?;
            if let Err(e) = self.admit() {
                return Err(self.ohttp_error(&request, &e, Some(model.sha384())));
            }
            // JSON, or (with Inference-Header-Content-Length) a JSON header and binary tensor data, which
            // clients send as application/octet-stream or with no type at all.
            if let Some(ct) = &request.content_type {
                let ct = ct.trim_start().to_ascii_lowercase();
                let binary = request.header_length.is_some() && ct.starts_with("application/octet-stream");
                if !ct.starts_with("application/json") && !binary {
                    let e = EnclaveError::BadRequest(format!(
                        "content type {:?} is not served: send the v2 request as application/json (or, with \
                         Inference-Header-Content-Length, application/octet-stream)",
                        ct.chars().take(64).collect::<String>()
                    ));
                    return Err(self.ohttp_error(&request, &e, Some(model.sha384())));
                }
            }
            match model.acquire().await {
                Ok(session) => Ok((model, session)),
                Err(e) => Err(self.ohttp_error(&request, &e, Some(model.sha384()))),
            }
        }
        .await;
        let (model, session) = match prepared {
            Ok(p) => p,
            Err(reply) => {
                tokio::task::spawn_blocking(move || deliver(reply));
                return;
            }
        };
        let hint = self.answer_hint(model.name());
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut w = request.answer_writer(model.sha384(), hint.capacity());
            let result = model.infer_blocking(request.content(), request.header_length, &mut w);
            drop(session);
            let reply = match result {
                Ok(_) => {
                    hint.record(w.written_len());
                    let receipt = |answer: &[u8]| {
                        this.receipt(&model, request.content(), answer, Mode::Ohttp)?
                            .ok_or_else(|| EnclaveError::Internal("receipts are off".into()))
                    };
                    let receipt: Option<IssueReceipt<'_>> = this.evidence.is_some().then_some(&receipt);
                    match request.seal_answer(w, receipt, &this.rng) {
                        Ok(b) => Reply::Ohttp(b),
                        Err(e) => this.ohttp_error(&request, &e, Some(model.sha384())),
                    }
                }
                Err(e) => {
                    // The writer wipes whatever it holds as it drops.
                    drop(w);
                    let status = e.kind().http_status();
                    let receipt = |answer: &[u8]| {
                        this.receipt(&model, request.content(), answer, Mode::Ohttp)?
                            .ok_or_else(|| EnclaveError::Internal("receipts are off".into()))
                    };
                    let receipt: Option<IssueReceipt<'_>> = this.evidence.is_some().then_some(&receipt);
                    match request.seal_error(status, &e.to_string(), Some(model.sha384()), receipt, &this.rng) {
                        Ok(b) => Reply::Ohttp(b),
                        Err(e) => this.ohttp_error(&request, &e, Some(model.sha384())),
                    }
                }
            };
            drop(request);
            deliver(reply);
        });
    }

    /// How large `model`'s last answer was: the capacity both inference paths write the next one into, so
    /// that an answer is written once, into a buffer that does not grow (and leave plaintext behind).
    fn answer_hint(&self, model: &str) -> AnswerHint {
        AnswerHint(self.answer_hints.read().ok().and_then(|h| h.get(model).cloned()))
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
            Err(e) => {
                Err(opened.seal_error(&e, None, &self.rng).map(Reply::Sealed).unwrap_or_else(|e| Reply::error(&e)))
            }
        }
    }
}

//! Attested-key mode: the enclave as an Oblivious HTTP gateway (RFC 9458) and the KServe v2 target behind it.
//!
//! A client verifies the enclave's attestation document, whose commitment covers the SHA-384 of the exact key
//! configuration list served at `/.well-known/ohttp-gateway`, and encrypts a Binary HTTP request (RFC 9292)
//! to one of those keys. The parent relays the encapsulated bytes and learns neither the route, nor the
//! model, nor anything of the request; the enclave decapsulates here, answers the inner request
//! ([`crate::service`]), and seals a Binary HTTP response under the request's response key.
//!
//! Keys: a fleet key (`[[ohttp.keys]]` in the image's configuration: an X25519 private key encrypted under
//! KMS, opened at boot with the enclave's attestation, its public key pinned by the configuration), so
//! every enclave of a fleet serves the same key configuration; or, with none configured, a key generated at
//! boot (key id 0), for a single enclave.
//!
//! What is refused, and how (RFC 9458 §5.2 and §6.4):
//!
//! - before decapsulation (truncated, unknown key id, unsupported suite, does not decrypt): a clear error
//!   (400, or 422 for a key problem) to the relay, which learns nothing it did not already know;
//! - after decapsulation, every error is a real HTTP response (status, JSON body) sealed like an answer,
//!   so the relay cannot tell an error from an answer (both are padded to the same buckets);
//! - replays: OHTTP has none of its own protection. The enclave remembers each request's encapsulated key
//!   (fresh per request) for its window: a request with a `Date` header (RFC 9458 §6.5.1) is accepted
//!   only within `date_window_secs` of the enclave's clock and remembered until its `Date` leaves the
//!   window, so it can never be accepted twice; a request without `Date` is remembered for the window
//!   from its arrival (a replay later than that would be answered again: `require_date = true` refuses
//!   such requests, with RFC 9458 §6.5.2's `date` problem). The store is bounded and refuses (503) rather
//!   than forgets.
use std::ops::Range;

use veil_protocol::ohttp::{self, Gateway, GatewayKey, OhttpError, ResponseContext, bhttp};
use veil_protocol::random::RandomSource;
use veil_protocol::v2;
use zeroize::Zeroizing;

use crate::config::OhttpSettings;
use crate::error::EnclaveError;
use crate::evidence::{IssueReceipt, IssuedReceipt};
use crate::model::MODEL_VERSION;
use crate::replay::{Refusal, ReplayGuard};

pub use veil_protocol::ohttp::{MODEL_DIGEST_HEADER, RECEIPT_SALT_TRAILER, RECEIPT_TRAILER};

/// RFC 9457 problem type of RFC 9458 §6.5.2 (a `Date` outside the gateway's window).
const DATE_PROBLEM: &str = "https://iana.org/assignments/http-problem-types#date";

/// The gateway: its keys, the list it serves, and the replay window.
pub struct OhttpGateway {
    gateway: Gateway,
    key_list_sha384: [u8; 48],
    replay: ReplayGuard,
    require_date: bool,
    window_secs: u64,
}

impl std::fmt::Debug for OhttpGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OhttpGateway").field("key_list_sha384", &hex::encode(self.key_list_sha384)).finish()
    }
}

impl OhttpGateway {
    /// A gateway serving `keys` with `settings`' replay window.
    pub fn new(keys: Vec<GatewayKey>, settings: &OhttpSettings) -> Result<OhttpGateway, EnclaveError> {
        let gateway = Gateway::new(keys).map_err(|e| EnclaveError::Internal(format!("OHTTP keys: {e}")))?;
        let key_list_sha384 = veil_protocol::attestation::UserDataCommitment::sha384(gateway.key_list());
        Ok(OhttpGateway {
            gateway,
            key_list_sha384,
            // Dated requests may be future-dated by the window: the guard's window is the date window.
            replay: ReplayGuard::new(settings.date_window_secs, settings.max_seen_requests),
            require_date: settings.require_date,
            window_secs: settings.date_window_secs,
        })
    }

    /// A gateway with one key generated now (key id 0): a single enclave, or development.
    pub fn boot_key(settings: &OhttpSettings, rng: &dyn RandomSource) -> Result<OhttpGateway, EnclaveError> {
        let key = GatewayKey::generate(0, &ohttp::GATEWAY_AEADS, rng)
            .map_err(|e| EnclaveError::Internal(format!("OHTTP key generation: {e}")))?;
        OhttpGateway::new(vec![key], settings)
    }

    /// The `application/ohttp-keys` body.
    pub fn key_list(&self) -> &[u8] {
        self.gateway.key_list()
    }

    /// Its SHA-384: the attestation commitment's `ohttp_keys_sha384`.
    pub fn key_list_sha384(&self) -> [u8; 48] {
        self.key_list_sha384
    }

    /// Encapsulated keys remembered now.
    pub fn replay_records(&self) -> usize {
        self.replay.len()
    }

    /// Decapsulates and reads one request. `Err(Refused::Clear)` before decapsulation succeeded (nothing to
    /// seal for), `Err(Refused::Sealed)` for a refusal the client must read (sealed already).
    pub fn open(&self, enc_request: &[u8], now_unix: u64, rng: &dyn RandomSource) -> Result<OpenedRequest, Refused> {
        // A copy of a request already seen is refused before the X25519 and the AEAD over its body.
        if let Some(enc) = enc_request.get(ohttp::HEADER_LEN..ohttp::HEADER_LEN + ohttp::ENC_LEN)
            && let Ok(enc) = <&[u8; 32]>::try_from(enc)
            && self.replay.has_encapsulated_key(enc, now_unix)
        {
            return Err(Refused::Clear(EnclaveError::Replayed));
        }
        let (plain, context) = self.gateway.decapsulate(enc_request).map_err(|e| Refused::Clear(e.into()))?;
        let parsed = match bhttp::parse_request(&plain) {
            Ok(r) => r,
            Err(e) => {
                // Remember the key all the same: a request that decapsulated is spent, whatever it held.
                self.admit(context.enc(), now_unix, now_unix)?;
                return Err(Refused::Sealed(seal_problem(&context, 400, &format!("{e}"), &[], rng)?));
            }
        };
        if parsed.header("expect").is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue")) {
            self.admit(context.enc(), now_unix, now_unix)?;
            // RFC 9458 §5.1: an Expect: 100-continue inner request is an error.
            let message = "Expect: 100-continue is not allowed inside an OHTTP request (RFC 9458 §5.1)";
            return Err(Refused::Sealed(seal_problem(&context, 417, message, &[], rng)?));
        }
        let date = match parsed.header("date") {
            Some(v) => match std::str::from_utf8(v).ok().and_then(veil_protocol::time::parse_http_date) {
                Some(d) => Some(d),
                None => {
                    self.admit(context.enc(), now_unix, now_unix)?;
                    let message = "the Date header is not an HTTP date (IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT)";
                    return Err(Refused::Sealed(seal_problem(&context, 400, message, &[], rng)?));
                }
            },
            None => None,
        };
        match date {
            Some(d) if d.abs_diff(now_unix) > self.window_secs => {
                // Dated ahead: the request would become acceptable once the clock caught up, so it is
                // remembered until then (a request dated behind never becomes acceptable).
                if d > now_unix {
                    self.replay
                        .remember_future_encapsulated_key(context.enc(), d, now_unix)
                        .map_err(|r| Refused::Clear(refusal(r)))?;
                }
                return Err(Refused::Sealed(seal_date_problem(&context, now_unix, rng)?));
            }
            None if self.require_date => return Err(Refused::Sealed(seal_date_problem(&context, now_unix, rng)?)),
            _ => {}
        }
        self.admit(context.enc(), date.unwrap_or(now_unix), now_unix)?;

        let expected_sha384 = match parsed.header(MODEL_DIGEST_HEADER) {
            None => None,
            Some(v) => match hex::decode(v).ok().and_then(|b| <[u8; 48]>::try_from(b).ok()) {
                Some(d) => Some(d),
                None => {
                    let message = "the Veil-Model-Sha384 header is not a SHA-384 in hex (96 digits)";
                    return Err(Refused::Sealed(seal_problem(&context, 400, message, &[], rng)?));
                }
            },
        };
        let route = match Route::of(parsed.method, parsed.path) {
            Ok(r) => r,
            Err((status, message)) => return Err(Refused::Sealed(seal_problem(&context, status, &message, &[], rng)?)),
        };
        let content = match &parsed.content {
            bhttp::Content::Borrowed([]) => Body::Within(0..0),
            bhttp::Content::Borrowed(slice) => {
                // Where the content lies in the decrypted buffer it was parsed from (checked, never assumed).
                let start = (slice.as_ptr() as usize).checked_sub(plain.as_ptr() as usize);
                match start.filter(|s| s.checked_add(slice.len()).is_some_and(|end| end <= plain.len())) {
                    Some(s) => Body::Within(s..s + slice.len()),
                    None => Body::Gathered(Zeroizing::new(slice.to_vec())),
                }
            }
            bhttp::Content::Gathered(v) => Body::Gathered(Zeroizing::new(v.to_vec())),
        };
        let header_length = match parsed.header(v2::HEADER_LENGTH_HEADER) {
            None => None,
            Some(v) => match std::str::from_utf8(v).ok().and_then(|t| t.trim().parse::<u64>().ok()) {
                Some(n) => Some(n),
                None => {
                    let message = "the Inference-Header-Content-Length header is not a number of bytes";
                    return Err(Refused::Sealed(seal_problem(&context, 400, message, &[], rng)?));
                }
            },
        };
        let content_type = parsed.header("content-type").map(|v| String::from_utf8_lossy(v).into_owned());
        drop(parsed);
        Ok(OpenedRequest { plain, context, route, expected_sha384, content, content_type, header_length })
    }

    fn admit(&self, enc: &[u8; 32], issued_at: u64, now_unix: u64) -> Result<(), Refused> {
        self.replay.admit_encapsulated_key(enc, issued_at, now_unix).map_err(|r| Refused::Clear(refusal(r)))
    }
}

fn refusal(r: Refusal) -> EnclaveError {
    match r {
        Refusal::Replayed => EnclaveError::Replayed,
        Refusal::OutsideWindow(s) => EnclaveError::OutsideWindow(s),
        Refusal::Full => EnclaveError::Overloaded("the OHTTP replay window is full"),
    }
}

/// Why a request got no answer from the target.
#[derive(Debug)]
pub enum Refused {
    /// In the clear (nothing was decapsulated, or the request is the relay's doing: a replay).
    Clear(EnclaveError),
    /// An encapsulated response for the client.
    Sealed(Vec<u8>),
}

impl From<OhttpError> for EnclaveError {
    fn from(e: OhttpError) -> Self {
        EnclaveError::Ohttp(e)
    }
}

/// The KServe v2 routes served inside the encapsulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Infer { model: String },
    ModelMetadata { model: String },
    ModelReady { model: String },
    ServerLive,
    ServerReady,
    ServerMetadata,
}

impl Route {
    /// The route of `method` and `path` (the query string, if any, is ignored), or a status and message.
    pub fn of(method: &str, path: &str) -> Result<Route, (u16, String)> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let mut parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        // `/v2/models/{model}/versions/{version}/...` names the one version served the long way.
        if let ["v2", "models", m, "versions", v, ..] = parts.as_slice() {
            if *v != MODEL_VERSION {
                let (m, v): (String, String) = (m.chars().take(64).collect(), v.chars().take(32).collect());
                return Err((404, format!("model {m:?} has no version {v:?} (Veil serves version {MODEL_VERSION:?})")));
            }
            parts.drain(3..5);
        }
        let (route, allowed) = match parts.as_slice() {
            ["v2"] => (Route::ServerMetadata, "GET"),
            ["v2", "health", "live"] => (Route::ServerLive, "GET"),
            ["v2", "health", "ready"] => (Route::ServerReady, "GET"),
            ["v2", "models", m] => (Route::ModelMetadata { model: (*m).to_owned() }, "GET"),
            ["v2", "models", m, "ready"] => (Route::ModelReady { model: (*m).to_owned() }, "GET"),
            ["v2", "models", m, "infer"] => (Route::Infer { model: (*m).to_owned() }, "POST"),
            _ => {
                let shown: String = path.chars().take(64).collect();
                return Err((404, format!("no route {shown:?} (this gateway serves the KServe v2 API under /v2)")));
            }
        };
        if method != allowed && !(allowed == "GET" && method == "HEAD") {
            return Err((405, format!("{method} is not allowed here ({allowed} is)")));
        }
        Ok(route)
    }

    /// The model the route is about, if any.
    pub fn model(&self) -> Option<&str> {
        match self {
            Route::Infer { model } | Route::ModelMetadata { model } | Route::ModelReady { model } => Some(model),
            _ => None,
        }
    }
}

/// Where the request's content is.
#[derive(Debug)]
enum Body {
    Within(Range<usize>),
    Gathered(Zeroizing<Vec<u8>>),
}

/// A decapsulated request: its route, what the client expects, its content (wiped on drop), and the
/// context that seals its response.
pub struct OpenedRequest {
    plain: Zeroizing<Vec<u8>>,
    context: ResponseContext,
    pub route: Route,
    /// The model digest the client named (`Veil-Model-Sha384`), if it did.
    pub expected_sha384: Option<[u8; 48]>,
    content: Body,
    pub content_type: Option<String>,
    /// `Inference-Header-Content-Length`: the JSON's length when binary tensor data follows it.
    pub header_length: Option<u64>,
}

impl std::fmt::Debug for OpenedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedRequest").field("route", &self.route).finish_non_exhaustive()
    }
}

impl OpenedRequest {
    /// The request's content.
    pub fn content(&self) -> &[u8] {
        match &self.content {
            Body::Within(r) => self.plain.get(r.clone()).unwrap_or(&[]),
            Body::Gathered(v) => v,
        }
    }

    /// A response writer for JSON content whose buffer has room for this request's response nonce.
    pub fn writer(&self, status: u16, model_sha384: Option<&[u8; 48]>, capacity: usize) -> bhttp::ResponseWriter {
        self.writer_for(status, model_sha384, capacity, Some("application/json"))
    }

    /// [`OpenedRequest::writer`] for content of `content_type` (`None`: an empty body, no type).
    pub fn writer_for(
        &self,
        status: u16,
        model_sha384: Option<&[u8; 48]>,
        capacity: usize,
        content_type: Option<&str>,
    ) -> bhttp::ResponseWriter {
        let digest = model_sha384.map(hex::encode);
        let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(2);
        if let Some(t) = content_type {
            headers.push(("content-type", t.as_bytes()));
        }
        if let Some(d) = &digest {
            headers.push((MODEL_DIGEST_HEADER, d.as_bytes()));
        }
        bhttp::ResponseWriter::new(self.context.nonce_len(), status, &headers, capacity)
    }

    /// Seals a written response: the encapsulated response.
    pub fn seal(&self, writer: bhttp::ResponseWriter, rng: &dyn RandomSource) -> Result<Vec<u8>, EnclaveError> {
        seal(&self.context, writer, rng)
    }

    /// A writer for an inference answer (status 200) from `model_sha384`: its header fields are written
    /// once the answer says whether binary data follows its JSON (`Inference-Header-Content-Length` and
    /// `application/octet-stream`) or not (`application/json`).
    pub fn answer_writer(&self, model_sha384: &[u8; 48], capacity: usize) -> AnswerWriter<'_> {
        AnswerWriter { request: self, digest: hex::encode(model_sha384), capacity, writer: None }
    }

    /// Seals a written answer. `receipt` makes the answer's receipt from the content written (the
    /// enclave's [`crate::evidence::Evidence::issue`]); it travels in the response's trailer fields.
    pub fn seal_answer(
        &self,
        answer: AnswerWriter<'_>,
        receipt: Option<IssueReceipt<'_>>,
        rng: &dyn RandomSource,
    ) -> Result<Vec<u8>, EnclaveError> {
        let writer = answer.writer.ok_or_else(|| EnclaveError::Internal("the answer was never written".into()))?;
        let receipt = receipt.map(|issue| issue(writer.written())).transpose()?;
        seal_with_receipt(&self.context, writer, receipt.as_ref(), rng)
    }

    /// A JSON error response (`{"error": message}`), sealed; with a receipt (of its content) when the
    /// model ran.
    pub fn seal_error(
        &self,
        status: u16,
        message: &str,
        model_sha384: Option<&[u8; 48]>,
        receipt: Option<IssueReceipt<'_>>,
        rng: &dyn RandomSource,
    ) -> Result<Vec<u8>, EnclaveError> {
        let digest = model_sha384.map(hex::encode);
        let extra: Vec<(&str, &[u8])> =
            digest.as_ref().map(|d| vec![(MODEL_DIGEST_HEADER, d.as_bytes())]).unwrap_or_default();
        let w = problem_writer(&self.context, status, message, &extra);
        let receipt = receipt.map(|issue| issue(w.written())).transpose()?;
        seal_with_receipt(&self.context, w, receipt.as_ref(), rng)
    }
}

/// Finishes `writer` with the receipt's trailer fields, and seals it.
fn seal_with_receipt(
    context: &ResponseContext,
    writer: bhttp::ResponseWriter,
    receipt: Option<&IssuedReceipt>,
    rng: &dyn RandomSource,
) -> Result<Vec<u8>, EnclaveError> {
    let Some(r) = receipt else { return seal(context, writer, rng) };
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&r.receipt);
    let salt = zeroize::Zeroizing::new(hex::encode(r.salt.as_ref()));
    let trailers: [(&str, &[u8]); 2] = [(RECEIPT_TRAILER, encoded.as_bytes()), (RECEIPT_SALT_TRAILER, salt.as_bytes())];
    let mut buf = writer.finish_with_trailers(&trailers).map_err(|e| EnclaveError::TooLarge(e.to_string()))?;
    context.seal_in_place(&mut buf, rng)?;
    Ok(buf)
}

/// An inference answer being written into its Binary HTTP response ([`OpenedRequest::answer_writer`]).
pub struct AnswerWriter<'r> {
    request: &'r OpenedRequest,
    digest: String,
    capacity: usize,
    writer: Option<bhttp::ResponseWriter>,
}

impl std::fmt::Debug for AnswerWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerWriter").field("started", &self.writer.is_some()).finish_non_exhaustive()
    }
}

impl AnswerWriter<'_> {
    /// Bytes of content written so far.
    pub fn written_len(&self) -> usize {
        self.writer.as_ref().map_or(0, |w| w.written().len())
    }
}

impl v2::response::Sink for AnswerWriter<'_> {
    fn start(&mut self, header_length: Option<u64>) -> &mut Vec<u8> {
        let (request, digest, capacity) = (self.request, &self.digest, self.capacity);
        self.writer
            .get_or_insert_with(|| {
                let length = header_length.map(|n| n.to_string());
                let content_type: &[u8] =
                    if length.is_some() { b"application/octet-stream" } else { b"application/json" };
                let mut headers: Vec<(&str, &[u8])> =
                    vec![("content-type", content_type), (MODEL_DIGEST_HEADER, digest.as_bytes())];
                if let Some(n) = &length {
                    headers.push((v2::HEADER_LENGTH_HEADER, n.as_bytes()));
                }
                bhttp::ResponseWriter::new(request.context.nonce_len(), 200, &headers, capacity)
            })
            .content()
    }
}

fn seal(
    context: &ResponseContext,
    writer: bhttp::ResponseWriter,
    rng: &dyn RandomSource,
) -> Result<Vec<u8>, EnclaveError> {
    let mut buf = writer.finish().map_err(|e| EnclaveError::TooLarge(e.to_string()))?;
    context.seal_in_place(&mut buf, rng)?;
    Ok(buf)
}

/// `{"error": message}` with `status`, written.
fn problem_writer(
    context: &ResponseContext,
    status: u16,
    message: &str,
    extra: &[(&str, &[u8])],
) -> bhttp::ResponseWriter {
    let mut headers: Vec<(&str, &[u8])> = vec![("content-type", b"application/json")];
    headers.extend_from_slice(extra);
    let mut w = bhttp::ResponseWriter::new(context.nonce_len(), status, &headers, 256);
    // Serializing a map of one string cannot fail.
    let _ = serde_json::to_writer(w.content(), &serde_json::json!({ "error": message }));
    w
}

/// `{"error": message}` with `status`, sealed.
fn seal_problem(
    context: &ResponseContext,
    status: u16,
    message: &str,
    extra: &[(&str, &[u8])],
    rng: &dyn RandomSource,
) -> Result<Vec<u8>, Refused> {
    seal(context, problem_writer(context, status, message, extra), rng).map_err(Refused::Clear)
}

/// RFC 9458 §6.5.2: 400 with the `date` problem type and the gateway's own `Date`, so that the client may
/// retry once with a corrected date.
fn seal_date_problem(context: &ResponseContext, now_unix: u64, rng: &dyn RandomSource) -> Result<Vec<u8>, Refused> {
    let date = veil_protocol::time::format_http_date(now_unix).unwrap_or_default();
    let headers: Vec<(&str, &[u8])> =
        vec![("content-type", b"application/problem+json"), ("date", date.as_bytes()), ("cache-control", b"no-store")];
    let mut w = bhttp::ResponseWriter::new(context.nonce_len(), 400, &headers, 256);
    let _ = serde_json::to_writer(
        w.content(),
        &serde_json::json!({ "type": DATE_PROBLEM, "title": "date field in request outside of acceptable range" }),
    );
    seal(context, w, rng).map_err(Refused::Clear)
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_protocol::ohttp::KeyConfig;
    use veil_protocol::random::SystemRandom;

    fn settings(require_date: bool) -> OhttpSettings {
        OhttpSettings { enabled: true, keys: vec![], require_date, date_window_secs: 60, max_seen_requests: 100 }
    }

    fn request(gw: &OhttpGateway, headers: &[(&str, &[u8])], path: &str) -> (Vec<u8>, ResponseContext) {
        let config = KeyConfig::decode_list(gw.key_list()).unwrap().remove(0);
        let method = if path.ends_with("/infer") { "POST" } else { "GET" };
        let inner = bhttp::encode_request(method, "https", "veil", path, headers, b"{}", true);
        ohttp::encapsulate(&config, &inner, &SystemRandom::new()).unwrap()
    }

    fn status_of(client: &ResponseContext, mut sealed: Vec<u8>) -> u16 {
        bhttp::parse_response(client.open_in_place(&mut sealed).unwrap()).unwrap().status
    }

    #[test]
    fn routes_are_the_kserve_v2_ones() {
        assert_eq!(Route::of("POST", "/v2/models/iris/infer"), Ok(Route::Infer { model: "iris".into() }));
        assert_eq!(Route::of("GET", "/v2/models/iris"), Ok(Route::ModelMetadata { model: "iris".into() }));
        assert_eq!(Route::of("GET", "/v2/health/ready"), Ok(Route::ServerReady));
        assert_eq!(Route::of("GET", "/v2/models/iris/infer").unwrap_err().0, 405);
        assert_eq!(Route::of("GET", "/v1/models/iris").unwrap_err().0, 404);
        assert_eq!(Route::of("POST", "/v2/models/iris/versions/1/infer"), Ok(Route::Infer { model: "iris".into() }));
        assert_eq!(Route::of("GET", "/v2/models/iris/versions/1"), Ok(Route::ModelMetadata { model: "iris".into() }));
        assert_eq!(
            Route::of("GET", "/v2/models/iris/versions/1/ready"),
            Ok(Route::ModelReady { model: "iris".into() })
        );
        assert_eq!(Route::of("POST", "/v2/models/iris/versions/2/infer").unwrap_err().0, 404);
    }

    #[test]
    fn a_replayed_request_is_refused_and_a_fresh_one_served() {
        let rng = SystemRandom::new();
        let gw = OhttpGateway::boot_key(&settings(false), &rng).unwrap();
        let (enc, _) = request(&gw, &[], "/v2/models/iris/infer");
        let opened = gw.open(&enc, 1000, &rng).unwrap();
        assert_eq!(opened.route, Route::Infer { model: "iris".into() });
        assert_eq!(opened.content(), b"{}");
        assert!(matches!(gw.open(&enc, 1030, &rng), Err(Refused::Clear(EnclaveError::Replayed))));
        let (fresh, _) = request(&gw, &[], "/v2/models/iris/infer");
        assert!(gw.open(&fresh, 1030, &rng).is_ok());
    }

    #[test]
    fn dated_requests_are_held_to_the_window_and_remembered_while_acceptable() {
        let rng = SystemRandom::new();
        let gw = OhttpGateway::boot_key(&settings(true), &rng).unwrap();
        let now = 1_764_547_200u64;
        let date = veil_protocol::time::format_http_date(now + 50).unwrap();
        let (enc, _) = request(&gw, &[("date", date.as_bytes())], "/v2/health/ready");
        assert!(gw.open(&enc, now, &rng).is_ok());
        // Still inside its Date's window 100 s later: still refused as a replay.
        assert!(matches!(gw.open(&enc, now + 100, &rng), Err(Refused::Clear(EnclaveError::Replayed))));
        // Outside it: refused by date, sealed for the client, with the gateway's Date.
        let (stale, client) = request(&gw, &[("date", date.as_bytes())], "/v2/health/ready");
        let Err(Refused::Sealed(sealed)) = gw.open(&stale, now + 200, &rng) else { panic!("not refused by date") };
        assert_eq!(status_of(&client, sealed), 400);
        // Without a Date, when the configuration requires one.
        let (undated, client) = request(&gw, &[], "/v2/health/ready");
        let Err(Refused::Sealed(sealed)) = gw.open(&undated, now, &rng) else { panic!("undated accepted") };
        assert_eq!(status_of(&client, sealed), 400);
    }

    /// Found by review: a request refused for a Date ahead of the window was not remembered, so the relay
    /// could hold it and deliver it again once the enclave's clock had caught up, and it would run twice
    /// (the client having retried with a corrected date).
    #[test]
    fn a_request_refused_for_a_future_date_cannot_be_delivered_again_when_its_date_comes() {
        let rng = SystemRandom::new();
        let gw = OhttpGateway::boot_key(&settings(false), &rng).unwrap();
        let now = 1_764_547_200u64;
        let date = veil_protocol::time::format_http_date(now + 600).unwrap();
        let (enc, client) = request(&gw, &[("date", date.as_bytes())], "/v2/health/ready");
        let Err(Refused::Sealed(sealed)) = gw.open(&enc, now, &rng) else { panic!("not refused by date") };
        assert_eq!(status_of(&client, sealed), 400);
        // Ten minutes on, the Date is now: the same bytes are a replay.
        assert!(matches!(gw.open(&enc, now + 600, &rng), Err(Refused::Clear(EnclaveError::Replayed))));
        // A fresh request with that Date is served.
        let (fresh, _) = request(&gw, &[("date", date.as_bytes())], "/v2/health/ready");
        assert!(gw.open(&fresh, now + 600, &rng).is_ok());
    }

    /// Found by the pyhpke interop test: a request that ends before its content section (RFC 9292 §3.8
    /// truncation, as RFC 9458's own example does) made the gateway compute the content's offset from a
    /// slice outside the decrypted buffer, and the task panicked (overflow checks are on in release too);
    /// the client waited for the parent's timeout.
    #[test]
    fn a_request_truncated_before_its_content_is_opened_not_a_panic() {
        let rng = SystemRandom::new();
        let gw = OhttpGateway::boot_key(&settings(false), &rng).unwrap();
        let config = KeyConfig::decode_list(gw.key_list()).unwrap().remove(0);
        let date = veil_protocol::time::format_http_date(1000).unwrap();
        let full =
            bhttp::encode_request("GET", "https", "veil", "/v2/health/ready", &[("date", date.as_bytes())], b"", false);
        // Cut after the control data, and after the header section.
        let control = 1 + 4 + 6 + 5 + 17;
        for cut in [control, full.len() - 2] {
            let (enc, _) = ohttp::encapsulate(&config, &full[..cut], &rng).unwrap();
            let opened = gw.open(&enc, 1000, &rng).unwrap_or_else(|e| panic!("cut at {cut}: {e:?}"));
            assert_eq!(opened.route, Route::ServerReady);
            assert!(opened.content().is_empty());
        }
    }

    #[test]
    fn errors_after_decapsulation_are_sealed_http_responses() {
        let rng = SystemRandom::new();
        let gw = OhttpGateway::boot_key(&settings(false), &rng).unwrap();
        for (headers, path, want) in [
            (vec![], "/nope", 404),
            (vec![("veil-model-sha384", &b"zz"[..])], "/v2/models/iris/infer", 400),
            (vec![("expect", &b"100-continue"[..])], "/v2/models/iris/infer", 417),
        ] {
            let (enc, client) = request(&gw, &headers, path);
            let Err(Refused::Sealed(sealed)) = gw.open(&enc, 1000, &rng) else { panic!("{path}: not refused") };
            assert_eq!(status_of(&client, sealed), want, "{path}");
        }
        // Before decapsulation: clear, and named.
        let (mut enc, _) = request(&gw, &[], "/v2");
        enc[0] = 5;
        assert!(matches!(
            gw.open(&enc, 1000, &rng),
            Err(Refused::Clear(EnclaveError::Ohttp(OhttpError::UnknownKeyId(5))))
        ));
    }
}

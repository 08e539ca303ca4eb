//! The metas that travel inside the envelope's plaintext, beside the body (see the grammar in the parent
//! module): the request's (the binary tensor extension's header length) and the answer's (the model that
//! answered, the outcome, the receipt). Canonical CBOR, parsed strictly: a meta is authenticated, but a
//! parser that tolerated more than one encoding would make two plaintexts mean one thing.
use zeroize::Zeroizing;

use super::{DIGEST_LEN, EnvelopeError, MAX_META};
use crate::cbor::{CborError, Len, Reader, write_bytes, write_head, write_text};
use crate::error::{ErrorKind, ErrorReply, clip};

/// What a request carries besides its body: for the binary tensor extension, how long the JSON header at
/// the front of the body is (HTTP's `Inference-Header-Content-Length`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestMeta {
    pub inference_header_length: Option<u64>,
}

impl RequestMeta {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        match self.inference_header_length {
            None => write_head(out, 5, 0),
            Some(n) => {
                write_head(out, 5, 1);
                write_text(out, "inference_header_length");
                write_head(out, 0, n);
            }
        }
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<RequestMeta, EnvelopeError> {
        let bad = |e: CborError| EnvelopeError::Meta(format!("{} (at byte {})", e.reason, e.offset));
        let mut r = Reader::new(bytes);
        let n = match r.map().map_err(bad)? {
            Len::Definite(n) if n <= 1 => n,
            _ => return Err(EnvelopeError::Meta("the request meta must be a map of at most one entry".into())),
        };
        let mut meta = RequestMeta::default();
        if n == 1 {
            let key = r.text().map_err(bad)?;
            if key != "inference_header_length" {
                return Err(EnvelopeError::Meta(format!("unknown request meta key {:?}", clip(key, 40))));
            }
            meta.inference_header_length = Some(r.uint().map_err(bad)?);
        }
        if !r.is_empty() {
            return Err(EnvelopeError::Meta("bytes after the request meta".into()));
        }
        Ok(meta)
    }
}

/// How a sealed request ended, as the enclave says it (authenticated with the answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The answer is the body; `inference_header_length` as for requests.
    Answer { inference_header_length: Option<u64> },
    /// The request failed; the body is empty.
    Error(ErrorReply),
}

/// A receipt as it travels in a sealed answer: the signed receipt, and the salt of its digests (for the
/// client's eyes only: whoever holds it can tie the receipt to the plaintexts).
#[derive(Clone, PartialEq, Eq)]
pub struct AnswerReceipt {
    pub receipt: Vec<u8>,
    pub salt: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for AnswerReceipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerReceipt").field("receipt_len", &self.receipt.len()).finish_non_exhaustive()
    }
}

/// The answer's meta: the digest of the model that answered, the outcome, and the answer's receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerMeta {
    pub model_sha384: [u8; DIGEST_LEN],
    pub outcome: Outcome,
    /// The enclave's signed receipt for this answer (absent when the enclave's receipts are off).
    pub receipt: Option<AnswerReceipt>,
}

impl AnswerMeta {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let receipt = u64::from(self.receipt.is_some()) * 2;
        match &self.outcome {
            Outcome::Answer { inference_header_length } => {
                write_head(out, 5, 2 + u64::from(inference_header_length.is_some()) + receipt);
                write_text(out, "model_sha384");
                write_bytes(out, &self.model_sha384);
                write_text(out, "outcome");
                write_text(out, "answer");
                if let Some(n) = inference_header_length {
                    write_text(out, "inference_header_length");
                    write_head(out, 0, *n);
                }
            }
            Outcome::Error(e) => {
                write_head(out, 5, 4 + u64::from(e.retry_after_secs.is_some()) + receipt);
                write_text(out, "model_sha384");
                write_bytes(out, &self.model_sha384);
                write_text(out, "outcome");
                write_text(out, "error");
                write_text(out, "kind");
                write_text(out, e.kind.label());
                write_text(out, "message");
                write_text(out, &e.message);
                if let Some(s) = e.retry_after_secs {
                    write_text(out, "retry_after_secs");
                    write_head(out, 0, u64::from(s));
                }
            }
        }
        if let Some(r) = &self.receipt {
            write_text(out, "receipt");
            write_bytes(out, &r.receipt);
            write_text(out, "receipt_salt");
            write_bytes(out, r.salt.as_ref());
        }
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<AnswerMeta, EnvelopeError> {
        let bad = |e: CborError| EnvelopeError::Meta(format!("{} (at byte {})", e.reason, e.offset));
        let meta = |m: &str| EnvelopeError::Meta(m.to_owned());
        if bytes.len() > MAX_META {
            return Err(meta("the answer meta is too large"));
        }
        let mut r = Reader::new(bytes);
        let n = match r.map().map_err(bad)? {
            Len::Definite(n) if (2..=7).contains(&n) => n,
            _ => return Err(meta("the answer meta must be a map of 2 to 7 entries")),
        };
        let key = |r: &mut Reader<'_>, want: &str| -> Result<(), EnvelopeError> {
            let k = r.text().map_err(bad)?;
            if k != want {
                return Err(EnvelopeError::Meta(format!("expected key {want:?}, found {:?}", clip(k, 40))));
            }
            Ok(())
        };
        // The optional keys after the required ones, in their fixed order: is `name` next?
        let next_is = |r: &Reader<'_>, name: &str| r.clone().text().is_ok_and(|k| k == name);
        key(&mut r, "model_sha384")?;
        let model_sha384: [u8; DIGEST_LEN] =
            r.bytes().map_err(bad)?.try_into().map_err(|_| meta("model_sha384 must be 48 bytes"))?;
        key(&mut r, "outcome")?;
        let mut read = 2;
        let outcome = match r.text().map_err(bad)? {
            "answer" => {
                let inference_header_length = if read < n && next_is(&r, "inference_header_length") {
                    key(&mut r, "inference_header_length")?;
                    read += 1;
                    Some(r.uint().map_err(bad)?)
                } else {
                    None
                };
                Outcome::Answer { inference_header_length }
            }
            "error" => {
                if n < 4 {
                    return Err(meta("an error's meta has kind and message"));
                }
                key(&mut r, "kind")?;
                let kind = r.text().map_err(bad)?;
                let kind = ErrorKind::from_label(kind)
                    .ok_or_else(|| EnvelopeError::Meta(format!("unknown error kind {:?}", clip(kind, 40))))?;
                key(&mut r, "message")?;
                let mut error = ErrorReply::new(kind, r.text().map_err(bad)?);
                read += 2;
                if read < n && next_is(&r, "retry_after_secs") {
                    key(&mut r, "retry_after_secs")?;
                    let s = r.uint().map_err(bad)?;
                    error.retry_after_secs = Some(u32::try_from(s).map_err(|_| meta("retry_after_secs"))?);
                    read += 1;
                }
                Outcome::Error(error)
            }
            other => return Err(EnvelopeError::Meta(format!("unknown outcome {:?}", clip(other, 40)))),
        };
        let receipt = match n - read {
            0 => None,
            2 => {
                key(&mut r, "receipt")?;
                let receipt = r.bytes().map_err(bad)?.to_vec();
                key(&mut r, "receipt_salt")?;
                let salt: [u8; 32] =
                    r.bytes().map_err(bad)?.try_into().map_err(|_| meta("receipt_salt must be 32 bytes"))?;
                Some(AnswerReceipt { receipt, salt: Zeroizing::new(salt) })
            }
            _ => return Err(meta("the answer meta has entries this version does not know")),
        };
        if !r.is_empty() {
            return Err(meta("bytes after the answer meta"));
        }
        Ok(AnswerMeta { model_sha384, outcome, receipt })
    }
}

//! Veil's protocol: the formats that cross the trust boundary, and the checks on them.
//!
//! This crate does no I/O. It has no async runtime, opens no socket or file, and reads no clock: it sees
//! bytes and returns values, and callers pass the time in. The compiler enforces that: nothing here depends
//! on tokio, mio or tokio-vsock (`cargo tree -p veil-protocol -e normal` shows it). That keeps the parsers
//! of hostile input small, testable and fuzzable; the I/O lives in `veil-runtime`.
//!
//! - [`cbor`]: a strict, zero-copy CBOR reader and the canonical writer the formats below share.
//! - [`der`]: the DER tag-length-value writer that hand-built ASN.1 (PKCS#8, CMS) shares.
//! - [`error`]: kinds of failure, and the one table that maps them to HTTP statuses.
//! - [`frame`]: length-prefixed frames with an explicit maximum, checked before anything is allocated.
//! - [`message`]: the versioned CBOR messages exchanged between parent and enclave.
//! - [`v2`]: Open Inference Protocol (KServe v2) tensors as JSON.
//! - [`envelope`]: the KMS envelope (AES-256-GCM under HKDF-derived keys) sealing requests and answers.
//! - [`pad`]: size buckets for sealed plaintexts, so ciphertext lengths reveal a bucket, not a length.
//! - [`random`]: the random source sealing takes as a parameter (fixed in known-answer tests).
//! - [`model_file`]: encrypted model files, in independently authenticated chunks (streamed).
//! - [`ohttp`]: Oblivious HTTP (RFC 9458) and Binary HTTP (RFC 9292), for attested-key mode.
//! - [`attestation`]: the fail-closed verifier of Nitro attestation documents, and the commitment.
//! - [`evidence`]: signed receipts for answers, signed Merkle tree heads, the audit log, and their checks.
//! - [`measurements`]: nitro-cli's measurements file (an image's PCRs), read and written by one type.
//! - [`time`]: calendar arithmetic and RFC 3339 text (no clock: callers pass the time).
#![forbid(unsafe_code)]

pub mod attestation;
pub mod cbor;
pub mod der;
pub mod envelope;
pub mod error;
pub mod evidence;
pub mod frame;
pub mod measurements;
pub mod message;
pub mod model_file;
pub mod ohttp;
pub mod pad;
pub mod random;
pub mod time;
pub mod v2;

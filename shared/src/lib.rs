//! Veil's shared library, used on both sides of the trust boundary.
//!
//! Everything here except [`transport`] and [`process`] is pure: it sees bytes and returns values, and never touches a
//! socket, a file or the clock (callers pass the time in). That keeps the parsers of hostile input small,
//! testable and fuzzable.
//!
//! - [`frame`]: length-prefixed frames with an explicit maximum, checked before anything is allocated.
//! - [`proto`]: the versioned CBOR messages exchanged between parent and enclave.
//! - [`v2`]: Open Inference Protocol (KServe v2) tensors as JSON.
//! - [`envelope`]: the KMS envelope (AES-256-GCM under HKDF-derived keys) sealing requests and answers.
//! - [`model_envelope`]: encrypted model files, in independently authenticated chunks (streamed).
//! - [`attestation`]: the fail-closed verifier of Nitro attestation documents.
//! - [`transport`]: `vsock://`, `tcp://` and `unix://` addresses, listeners and dialers (I/O).
//! - [`process`]: runtime, logs and shutdown signal for the binaries (OS plumbing).
#![forbid(unsafe_code)]

pub mod attestation;
pub mod envelope;
pub mod frame;
pub mod model_envelope;
pub mod process;
pub mod proto;
pub mod transport;
pub mod v2;

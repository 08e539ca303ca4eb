//! Veil's runtime side: everything that touches the operating system, shared by the enclave, the parent and
//! the client tools.
//!
//! - [`transport`]: `vsock://`, `tcp://` and `unix://` addresses, listeners and dialers.
//! - [`conn`]: the typed framed connection over those streams: frames, messages, attachments.
//! - [`process`]: the async runtime, logs and the shutdown signal of Veil's daemons.
//! - [`ready`]: the ready files daemons write once they listen, typed for writers and readers alike.
//!
//! The formats themselves (frames, messages, envelopes) are pure and live in `veil-protocol`; this crate
//! moves their bytes.
#![forbid(unsafe_code)]

pub mod conn;
pub mod process;
pub mod ready;
pub mod transport;

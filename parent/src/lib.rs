//! The Veil parent: the untrusted side.
//!
//! It runs on the EC2 parent instance, outside the enclave, and is trusted with nothing: it serves the
//! client HTTP API ([`http`]) and relays each request to the enclave as opaque bytes ([`link`]), serves
//! the enclave its model files ([`host`]), keeps the audit log of its receipts ([`audit`]), and exports
//! Prometheus [`metrics`]; [`serve`] holds the client connections to read timeouts. It never parses an inference
//! body, so the same code carries plaintext JSON today and ciphertext once the KMS envelope lands.
#![forbid(unsafe_code)]

pub mod audit;
pub mod host;
pub mod http;
pub mod kms;
pub mod link;
pub mod metrics;
pub mod serve;

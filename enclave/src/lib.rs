//! The Veil enclave: the trusted side.
//!
//! It runs inside an AWS Nitro Enclave with no disk and no network: one vsock listener for the parent's
//! client traffic ([`server`]), one vsock connection to the parent's host services for model bytes
//! ([`host`]), the NSM for attestation and randomness ([`nsm`]), and ONNX Runtime for inference
//! ([`model`]). Everything that arrives over vsock is hostile: see `docs/SECURITY.md`.
#![deny(unsafe_code)]

pub mod host;
pub mod keys;
pub mod kms;
pub mod model;
pub mod model_file;
pub mod nsm;
pub mod sealed;
pub mod server;

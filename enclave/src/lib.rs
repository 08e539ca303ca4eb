//! The Veil enclave: the trusted side.
//!
//! It runs inside an AWS Nitro Enclave with no disk and no network: one vsock listener for the parent's
//! client traffic ([`server`]), connections to the parent's host services for model bytes ([`host`]) and
//! KMS ([`kms`]), the NSM for attestation and randomness ([`nsm`]), and ONNX Runtime for inference
//! ([`model`]). What it serves and under which keys comes from the image's configuration ([`config`]),
//! never from the parent. Everything that arrives over vsock is hostile: see `docs/SECURITY.md`.
//!
//! The request path: [`server`] (frames, limits, shutdown) → [`service`] (what is served) → [`sealed`]
//! (the KMS envelope: [`keys`], [`replay`]) or [`ohttp`] (attested-key mode) → [`model`]. Errors keep their type ([`error`]) until they
//! become wire errors, in one place.
//!
//! Production builds (`cargo build --release -p veil-enclave`) contain no mock code; development builds
//! (`--features dev`, what `veil dev` and the tests run) add the mock NSM and may load plaintext models
//! that their configuration names as such.
#![deny(unsafe_code)]

pub mod budget;
pub mod config;
pub mod error;
pub mod evidence;
pub mod host;
pub mod keys;
pub mod kms;
pub mod model;
pub mod model_file;
pub mod nsm;
pub mod ohttp;
pub mod replay;
pub mod sealed;
pub mod server;
pub mod service;

/// True for a development build (`--features dev`): mock NSM, plaintext models when configured so.
pub const DEVELOPMENT_BUILD: bool = cfg!(feature = "dev");

//! Veil client library: talk to a Veil parent's HTTP API.
//!
//! Runs on the client's (or auditor's) own machine, on the trusted side: it is the only place outside the
//! enclave where request plaintext exists. The parent between us and the enclave is untrusted; once the
//! KMS envelope lands, [`Client::infer`] seals the request before it leaves this process, and nothing here
//! will change for callers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), veil_client::ClientError> {
//! let client = veil_client::Client::new("http://127.0.0.1:8080")?;
//! let request = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": vec![0.0f32; 30]}]});
//! let response = client.infer("breast_cancer", &serde_json::to_vec(&request).unwrap()).await?;
//! println!("{}", String::from_utf8_lossy(&response));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod cli;
mod http;
pub mod kms;

pub use http::{Client, ClientError};

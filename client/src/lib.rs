//! Veil client library: talk to a Veil parent's HTTP API.
//!
//! Runs on the client's (or auditor's) own machine, on the trusted side: it is the only place outside the
//! enclave where request plaintext exists. The parent between us and the enclave is untrusted, so no call
//! here sends inference plaintext anywhere but into a seal: [`Client::infer`] seals each request under a
//! KMS data key of the client's [`kms::Session`] for the model's expected SHA-384, and opens the enclave's
//! sealed answer. Errors say who said them ([`ClientError::Enclave`] or [`ClientError::Unauthenticated`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use veil_client::kms::{KmsConfig, Session, SessionLimits, kms_client};
//! use veil_protocol::attestation::TrustAnchor;
//! use veil_protocol::envelope::ModelRef;
//! let client = veil_client::Client::new("http://127.0.0.1:8080")?;
//! // The model's digest, from the enclave's verified attestation (or a policy you hold).
//! let policy = veil_client::attested::policy_now(TrustAnchor::aws_nitro_root_g1(), std::time::Duration::from_secs(300))?;
//! let document = veil_client::attested::fetch_verified(&client, policy).await?;
//! let model = ModelRef { name: "breast_cancer".into(), sha384: veil_client::attested::model_digest(&document, "breast_cancer")? };
//! let kms = kms_client(&KmsConfig::default()).await?;
//! let mut session = Session::new(kms, "alias/veil-requests", Default::default(), SessionLimits::default());
//! let request = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": vec![0.0f32; 30]}]});
//! let answer = client.infer(&mut session, &model, &serde_json::to_vec(&request)?).await?;
//! println!("{}", String::from_utf8_lossy(answer.body()));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod attested;
pub mod devstack;
pub mod evidence;
mod http;
pub mod kms;
pub mod oblivious;
pub mod policy;
pub mod proxy;
pub mod retry;
pub mod trust;

pub use http::{Client, ClientError};
pub use retry::RetryPolicy;

//! The enclave's KMS client: `Decrypt` with `Recipient`, over TLS that terminates inside the enclave.
//!
//! ```text
//! enclave: aws-sdk-kms ─▶ RelayHttpClient ─▶ rustls (TLS to kms.REGION.amazonaws.com, inside the enclave)
//!                                              │  ciphertext only
//! parent:                      host services ◀─┘  HostRequest::KmsRelay ─▶ raw copy ─▶ KMS (allow-listed)
//! ```
//!
//! - [`rsa_key`]: the ephemeral RSA-2048 recipient key, generated at boot, whose public half goes into the
//!   attestation document that KMS checks against the key policy's PCR conditions.
//! - [`cms`]: unwrapping KMS's `CiphertextForRecipient` (CMS EnvelopedData, BER) with that key.
//! - [`client`]: [`KmsClient`], the SDK configured with the relay connector, credentials fetched from the
//!   parent, bounded retries with jitter and a bounded total time.
//! - `connector`: the SDK's `HttpClient` implemented with hyper 1 + tokio-rustls over a relay connection.
//! - `parent`: the two host-service requests (credentials, relay) this module makes.
//!
//! The parent sees ciphertext only and cannot forge an answer (DESIGN.md invariant 3): if it could, it could
//! hand the enclave a `CiphertextForRecipient` for any key it liked.

pub mod client;
pub mod cms;
mod connector;
mod parent;
mod roots;
pub mod rsa_key;

pub use client::{KmsClient, KmsConfig, KmsError};
pub use roots::kms_root_names;
pub use rsa_key::RecipientKey;

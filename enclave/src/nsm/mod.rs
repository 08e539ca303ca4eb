//! The Nitro Secure Module, behind one interface: the real device ([`HardwareNsm`], `/dev/nsm`) or a mock
//! for off-hardware runs ([`MockNsm`]).
//!
//! The NSM is a trust boundary of its own: it is the only source of attestation documents, and (with the
//! kernel RNG it seeds) the enclave's only source of randomness; nothing random ever comes from the parent.
//!
//! The mock (development builds only: `--features dev`) produces real COSE_Sign1 ES384 documents encoded
//! by AWS's own crates (nsm-api's `AttestationDoc`, `aws-nitro-enclaves-cose`'s `CoseSign1`), signed by a
//! chain root → regional → zonal → instance → leaf that starts at a generated root whose subject says MOCK.
//! That root is written to a file which tests and `veil dev` must name explicitly: no default verifier
//! trusts it, so a mock document can never pass for a real one (DESIGN.md invariant 6), and a production
//! build has no mock code to run at all.

mod hardware;
#[cfg(feature = "dev")]
mod mock;

pub use hardware::HardwareNsm;
#[cfg(feature = "dev")]
pub use mock::{MOCK_ROOT_KEY_FILE, MOCK_ROOT_PEM_FILE, MockNsm, MockPcrs};

/// Which NSM to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NsmKind {
    /// `/dev/nsm`, inside a Nitro Enclave.
    Hardware,
    /// Off hardware, development builds only: documents chain to a generated MOCK root that no real
    /// verifier or KMS key policy trusts.
    Mock,
}

impl NsmKind {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            NsmKind::Hardware => "hardware",
            NsmKind::Mock => "mock",
        }
    }
}

/// What a production build says when asked for development-only behaviour.
pub const NOT_A_DEVELOPMENT_BUILD: &str = "this is a production build of veil-enclave: it has no mock NSM and no \
     development options. Build a development build with `cargo build -p veil-enclave --features dev` (what \
     `veil dev` and the tests use; `cargo build --workspace` makes one too)";

/// Largest `user_data`, `nonce` and `public_key` the NSM accepts (AWS's documented limit).
pub const MAX_ATTESTATION_FIELD_LEN: usize = 1024;

/// The enclave's view of an NSM.
pub trait Nsm: Send + Sync + std::fmt::Debug {
    /// A fresh attestation document (COSE_Sign1, CBOR) carrying the given optional fields, each at most
    /// [`MAX_ATTESTATION_FIELD_LEN`] bytes.
    fn attestation(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError>;

    /// Fills `buf` with random bytes from the NSM (or, for the mock, the kernel RNG).
    fn random(&self, buf: &mut [u8]) -> Result<(), NsmError>;

    /// The current value of PCR `index`.
    fn describe_pcr(&self, index: u16) -> Result<Vec<u8>, NsmError>;

    /// True for the off-hardware mock: its documents chain to a mock root, not to AWS.
    fn is_mock(&self) -> bool;
}

/// Why an NSM operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NsmError {
    /// `/dev/nsm` could not be opened (not inside a Nitro Enclave?).
    #[error("cannot open the NSM device /dev/nsm (is this running inside a Nitro Enclave?)")]
    Unavailable,
    /// The NSM answered with an error code.
    #[error("the NSM refused the request: {0}")]
    Device(String),
    /// The NSM answered with a response of the wrong kind.
    #[error("the NSM answered an unexpected response to {0}")]
    UnexpectedResponse(&'static str),
    /// An input is larger than the NSM accepts.
    #[error("{field} is {len} bytes, more than the NSM's {max}-byte limit")]
    TooLarge { field: &'static str, len: usize, max: usize },
    /// A PCR index outside the NSM's range.
    #[error("PCR index {0} is out of range (0..=31)")]
    PcrIndex(u16),
    /// Reading or writing the mock root files failed.
    #[error("mock NSM root file {path}: {source}")]
    MockRootFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Building the mock certificate chain or signing failed.
    #[error("mock NSM: {0}")]
    Mock(String),
    /// The kernel RNG failed.
    #[error("the random number generator failed")]
    Random,
}

/// The three optional fields of an attestation request, each within the NSM's limit.
pub(crate) fn check_fields(
    user_data: Option<&[u8]>,
    nonce: Option<&[u8]>,
    public_key: Option<&[u8]>,
) -> Result<(), NsmError> {
    check_len("user_data", user_data)?;
    check_len("nonce", nonce)?;
    check_len("public_key", public_key)
}

fn check_len(field: &'static str, v: Option<&[u8]>) -> Result<(), NsmError> {
    match v {
        Some(b) if b.len() > MAX_ATTESTATION_FIELD_LEN => {
            Err(NsmError::TooLarge { field, len: b.len(), max: MAX_ATTESTATION_FIELD_LEN })
        }
        _ => Ok(()),
    }
}

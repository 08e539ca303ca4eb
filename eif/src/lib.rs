//! Read, build and measure AWS Nitro Enclave Image Files (EIF) in pure Rust.
//!
//! This crate runs on the **operator's and the auditor's machines**, outside any enclave. It
//! answers one question that the whole trust model rests on: *which PCR values will an enclave
//! booted from this image report?* Clients and KMS key policies pin PCR0/1/2 (and PCR8 for signed
//! images); an auditor who can recompute them from a release's EIF, or rebuild the EIF from its
//! parts and get the same bytes, can check that the reviewed code is what runs.
//!
//! It does no I/O of its own: readers take any [`std::io::Read`] (a file, a slice), the builder
//! takes byte slices and writes to any [`std::io::Write`]. The `veil eif` CLI does the file
//! handling. It uses no OpenSSL: SHA-384 and ECDSA come from `ring`.
//!
//! Every byte of an EIF is treated as hostile: lengths are checked before use and bounded before
//! any allocation, arithmetic on offsets is checked, nothing panics, and every error says which
//! section, which offset and what was expected ([`EifError`]).
//!
//! - [`format`](mod@format): the byte layout (header, sections, CRC).
//! - [`measure`]: how PCRs are computed, and why exactly that way.
//! - [`Measurements`]: the PCRs in nitro-cli's measurements file, the type `veil-protocol` shares with
//!   every reader of such files.
//! - [`read_eif`]: check and measure an existing image ([`EifInfo`]).
//! - [`EifBuilder`]: build a reproducible image from a kernel, a cmdline and ramdisks.
//! - [`Signer`]: sign an image with a P-384 key and certificate (PCR8).
//! - [`sizing`]: how much enclave memory an image and its models need.
//! - [`cpio`]: the ramdisks' archive format, written deterministically and read defensively.
//! - [`ramdisk`]: the two ramdisks laid out as AWS's bootstrap init expects them, so that an image can
//!   be built from source without Docker (`scripts/reproduce.sh`).
//!
//! ```
//! use veil_eif::{EifBuilder, Pcr, read_eif_bytes};
//!
//! let (kernel, init, app) = (b"kernel".to_vec(), b"init".to_vec(), b"app".to_vec());
//! let mut eif = Vec::new();
//! let built = EifBuilder::new(&kernel, "console=ttyS0")?
//!     .ramdisk(&init)
//!     .ramdisk(&app)
//!     .write_to(&mut eif)?;
//! let read = read_eif_bytes(&eif)?;
//! assert_eq!(read.measurements, built.measurements);
//! // PCR2 measures the ramdisks after the first: here just `app`.
//! assert_eq!(read.measurements.pcr(2), Some(&Pcr::of_blob(b"app").0));
//! println!("{}", read.measurements.to_json_pretty());
//! # Ok::<(), veil_eif::EifError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod builder;
mod cbor;
pub mod cpio;
mod error;
pub mod format;
pub mod measure;
pub mod ramdisk;
mod reader;
mod signature;
pub mod sizing;

pub use builder::{BuildInfo, BuildOutput, EifBuilder, EifIdentity};
pub use error::EifError;
pub use format::{Arch, SectionKind};
pub use measure::Pcr;
pub use reader::{
    EifInfo, MAX_CMDLINE_LEN, MAX_METADATA_LEN, MAX_SIGNATURE_LEN, SectionInfo, measure_eif, read_eif, read_eif_bytes,
};
pub use signature::{SignatureCheck, SignatureInfo, Signer};
pub use sizing::{Sizing, recommend_memory};
/// The measurements file type, shared with `veil attest` and `veil kms policy` (see its module).
pub use veil_protocol::measurements::{Measurements, NITRO_HASH_ALGORITHM};

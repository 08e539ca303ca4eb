//! PCR values of an EIF, computed exactly the way nitro-cli computes them.
//!
//! # How nitro-cli feeds the data (checked against aws-nitro-enclaves-image-format)
//!
//! nitro-cli's `EifHasher` has two modes: a chunked one (`block_size > 0`, which hashes
//! `digest || block` per block) and a pass-through one (`new_without_cache`, `block_size == 0`).
//! Both its builder (`EifBuilder::new`) and its reader (`EifReader::from_eif`, used by
//! `describe-eif`) create all four hashers with `new_without_cache`, so the chunked mode never
//! touches a PCR. In pass-through mode every section's data is written straight into one running
//! SHA-384, and at the end `tpm_extend_finalize_reset` does a single TPM-style extend of an
//! all-zero register:
//!
//! ```text
//! PCRn = SHA-384( 48 zero bytes || SHA-384( concatenation of the measured data ) )
//! ```
//!
//! The data is the raw section *data* only (no section headers, no EIF header), in file order:
//!
//! | PCR  | what is concatenated                                              |
//! |------|-------------------------------------------------------------------|
//! | PCR0 | kernel, cmdline, every ramdisk                                     |
//! | PCR1 | kernel, cmdline, the first ramdisk (AWS's bootstrap init)          |
//! | PCR2 | every ramdisk after the first (the application's root filesystem) |
//! | PCR8 | the DER encoding of the signing certificate (signed images only)   |
//!
//! So it is *one* hash over the concatenation followed by *one* extend, not one extend per
//! section: PCR0 of kernel `K`, cmdline `C`, ramdisk `R` is `SHA384(0^48 || SHA384(K||C||R))`,
//! not `extend(extend(extend(0, H(K)), H(C)), H(R))`. With a single ramdisk PCR2 still exists:
//! it is the extend of SHA-384 of the empty string. The metadata and signature sections are not
//! measured into PCR0-2, which is why nitro-cli can add build metadata without changing PCRs.
//!
//! The Nitro hypervisor measures the same bytes when it boots the image, so these values are the
//! ones that appear in the enclave's attestation documents and in KMS key-policy conditions.
//!
//! `tests/data/` pins all of this to AWS's own implementation: EIFs built (and signed) by
//! `aws-nitro-enclaves-image-format`'s `EifBuilder`, with the PCRs it reported. This crate reads
//! them with the same PCRs and rebuilds the unsigned one byte for byte.

use std::fmt;

use ring::digest::{self, Context, SHA384};
use serde::Serialize;
pub use veil_protocol::attestation::PCR_LEN;
use veil_protocol::measurements::Measurements;

/// One 48-byte PCR value.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pcr(pub [u8; PCR_LEN]);

impl Pcr {
    /// Extends an all-zero register with `digest`: `SHA-384(0^48 || digest)`.
    pub fn extend_zero(digest: &[u8]) -> Self {
        let mut ctx = Context::new(&SHA384);
        ctx.update(&[0u8; PCR_LEN]);
        ctx.update(digest);
        Self::from_digest(ctx.finish())
    }

    /// The PCR of data measured as one blob: `SHA-384(0^48 || SHA-384(data))`. This is what
    /// `nitro-cli pcr --input FILE` prints.
    pub fn of_blob(data: &[u8]) -> Self {
        Self::extend_zero(digest::digest(&SHA384, data).as_ref())
    }

    fn from_digest(d: digest::Digest) -> Self {
        let mut out = [0u8; PCR_LEN];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    /// Lower-case hex, as nitro-cli prints it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Pcr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Pcr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pcr({})", self.to_hex())
    }
}

impl Serialize for Pcr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// PCR0, PCR1 and PCR2 of an image, as the hashers finish them; PCR8 comes from the signature, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImagePcrs {
    /// Kernel, cmdline and every ramdisk.
    pub(crate) pcr0: Pcr,
    /// Kernel, cmdline and the first ramdisk.
    pub(crate) pcr1: Pcr,
    /// The ramdisks after the first.
    pub(crate) pcr2: Pcr,
}

impl ImagePcrs {
    /// The image's measurements, with PCR8 for a signed image (an unsigned one reads all zeros there in
    /// attestation documents, and nitro-cli prints no PCR8).
    pub(crate) fn measurements(&self, pcr8: Option<Pcr>) -> Measurements {
        let Self { pcr0, pcr1, pcr2 } = *self;
        Measurements::from_pcrs(
            [(0, pcr0), (1, pcr1), (2, pcr2)].into_iter().chain(pcr8.map(|p| (8, p))).map(|(i, p)| (i, p.0)),
        )
    }
}

/// The three running hashes behind PCR0, PCR1 and PCR2, fed section by section in file order.
pub(crate) struct PcrHashers {
    image: Context,
    bootstrap: Context,
    app: Context,
    ramdisks_seen: usize,
}

impl PcrHashers {
    pub(crate) fn new() -> Self {
        Self {
            image: Context::new(&SHA384),
            bootstrap: Context::new(&SHA384),
            app: Context::new(&SHA384),
            ramdisks_seen: 0,
        }
    }

    /// Feeds (part of) the kernel or cmdline section.
    pub(crate) fn boot_data(&mut self, chunk: &[u8]) {
        self.image.update(chunk);
        self.bootstrap.update(chunk);
    }

    /// Marks the start of a ramdisk section; call before its [`Self::ramdisk_data`].
    pub(crate) fn start_ramdisk(&mut self) {
        self.ramdisks_seen += 1;
    }

    /// Feeds (part of) the current ramdisk.
    pub(crate) fn ramdisk_data(&mut self, chunk: &[u8]) {
        self.image.update(chunk);
        if self.ramdisks_seen <= 1 {
            self.bootstrap.update(chunk);
        } else {
            self.app.update(chunk);
        }
    }

    pub(crate) fn finish(self) -> ImagePcrs {
        ImagePcrs {
            pcr0: Pcr::extend_zero(self.image.finish().as_ref()),
            pcr1: Pcr::extend_zero(self.bootstrap.finish().as_ref()),
            pcr2: Pcr::extend_zero(self.app.finish().as_ref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend_of_zero_register_is_sha384_of_zeros_then_digest() {
        // Independent spelling of the formula with plain ring calls.
        let d = digest::digest(&SHA384, b"abc");
        let mut buf = vec![0u8; 48];
        buf.extend_from_slice(d.as_ref());
        let expected = digest::digest(&SHA384, &buf);
        assert_eq!(Pcr::of_blob(b"abc").0.as_slice(), expected.as_ref());
    }

    #[test]
    fn pcr2_of_a_single_ramdisk_image_is_the_extend_of_the_empty_hash() {
        let mut h = PcrHashers::new();
        h.boot_data(b"kernel");
        h.start_ramdisk();
        h.ramdisk_data(b"init");
        let m = h.finish();
        assert_eq!(m.pcr2, Pcr::of_blob(b""));
        assert_eq!(m.pcr1, m.pcr0, "one ramdisk: PCR0 and PCR1 cover the same bytes");
        assert_eq!(m.measurements(None).pcr(8), None);
    }
}

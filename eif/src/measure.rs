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

/// Length of a SHA-384 PCR value.
pub const PCR_LEN: usize = 48;

/// What nitro-cli prints as `HashAlgorithm`: the `Debug` text of the `sha2` crate's hasher.
/// Kept byte-for-byte so that tools diffing measurement files see no difference.
pub const NITRO_HASH_ALGORITHM: &str = "Sha384 { ... }";

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

/// The PCRs an EIF determines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurements {
    /// Kernel, cmdline and every ramdisk.
    pub pcr0: Pcr,
    /// Kernel, cmdline and the first ramdisk.
    pub pcr1: Pcr,
    /// The ramdisks after the first.
    pub pcr2: Pcr,
    /// The signing certificate; `None` for unsigned images (the register then reads all zeros
    /// in attestation documents).
    pub pcr8: Option<Pcr>,
}

impl Measurements {
    /// The measurements in nitro-cli's JSON shape (`build-enclave`'s output):
    /// `{"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": ..., "PCR1": ..., "PCR2": ...}}`
    /// with `PCR8` added for signed images. Keys are in nitro-cli's (sorted) order.
    pub fn to_nitro_json(&self) -> serde_json::Value {
        let mut inner = serde_json::Map::new();
        inner.insert("HashAlgorithm".into(), NITRO_HASH_ALGORITHM.into());
        inner.insert("PCR0".into(), self.pcr0.to_hex().into());
        inner.insert("PCR1".into(), self.pcr1.to_hex().into());
        inner.insert("PCR2".into(), self.pcr2.to_hex().into());
        if let Some(p8) = self.pcr8 {
            inner.insert("PCR8".into(), p8.to_hex().into());
        }
        let mut outer = serde_json::Map::new();
        outer.insert("Measurements".into(), serde_json::Value::Object(inner));
        serde_json::Value::Object(outer)
    }

    /// [`Self::to_nitro_json`] pretty-printed the way nitro-cli prints it (two-space indent).
    pub fn to_nitro_json_pretty(&self) -> String {
        // Serializing a `Value` built from strings cannot fail; fall back to compact just in case.
        let v = self.to_nitro_json();
        serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
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

    pub(crate) fn finish(self, signing_cert_der: Option<&[u8]>) -> Measurements {
        Measurements {
            pcr0: Pcr::extend_zero(self.image.finish().as_ref()),
            pcr1: Pcr::extend_zero(self.bootstrap.finish().as_ref()),
            pcr2: Pcr::extend_zero(self.app.finish().as_ref()),
            pcr8: signing_cert_der.map(Pcr::of_blob),
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
        let m = h.finish(None);
        assert_eq!(m.pcr2, Pcr::of_blob(b""));
        assert_eq!(m.pcr1, m.pcr0, "one ramdisk: PCR0 and PCR1 cover the same bytes");
        assert_eq!(m.pcr8, None);
    }

    #[test]
    fn nitro_json_has_nitro_clis_keys_in_order() {
        let m = Measurements { pcr0: Pcr([1; 48]), pcr1: Pcr([2; 48]), pcr2: Pcr([3; 48]), pcr8: Some(Pcr([8; 48])) };
        let s = m.to_nitro_json_pretty();
        let expected = format!(
            "{{\n  \"Measurements\": {{\n    \"HashAlgorithm\": \"Sha384 {{ ... }}\",\n    \"PCR0\": \"{}\",\n    \"PCR1\": \"{}\",\n    \"PCR2\": \"{}\",\n    \"PCR8\": \"{}\"\n  }}\n}}",
            "01".repeat(48),
            "02".repeat(48),
            "03".repeat(48),
            "08".repeat(48)
        );
        assert_eq!(s, expected);
    }
}

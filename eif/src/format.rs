//! The on-disk layout of an Enclave Image File, as nitro-cli writes it (format version 4).
//!
//! All integers are big-endian. An EIF is a fixed 548-byte header followed by sections, each a
//! 12-byte section header and its data, with no padding:
//!
//! ```text
//! offset 0    EIF header (548 bytes)
//!               magic ".eif" | version u16 | flags u16 | default_mem u64 | default_cpus u64
//!               | reserved u16 | num_sections u16 | section_offsets [u64; 32]
//!               | section_sizes [u64; 32] | unused u32 | crc32 u32
//! offset 548  section 0: kernel    (type 1, flags u16, size u64, then `size` bytes)
//!             section 1: cmdline   (type 2; the kernel command line, no trailing NUL)
//!             section 2: metadata  (type 5; JSON, version 4 only)
//!             section 3..: ramdisk (type 3; cpio archives, at least one)
//!             last:      signature (type 4; CBOR, only when signed)
//! ```
//!
//! `section_offsets[i]` is the offset of section *i*'s 12-byte section header (not of its data),
//! and `section_sizes[i]` the size of its data. Table slots past `num_sections` are zero.
//!
//! The CRC32 (IEEE 802.3, the common zlib one) covers every byte of the file except the CRC
//! field itself: the first 544 header bytes, then each section header and section data in file
//! order. It guards against corruption, not tampering: anyone who edits a section can recompute
//! it. Tampering is what the PCRs are for.

use std::fmt;

/// The four magic bytes every EIF starts with: `.eif`.
pub const EIF_MAGIC: [u8; 4] = *b".eif";
/// Size of the fixed EIF header.
pub const EIF_HEADER_LEN: usize = 548;
/// Size of each section header.
pub const SECTION_HEADER_LEN: usize = 12;
/// The section table's fixed capacity.
pub const MAX_SECTIONS: usize = 32;
/// The format version this crate writes (the one with the metadata section).
pub const CURRENT_VERSION: u16 = 4;
/// Header flag bit: set for aarch64 images, clear for x86_64.
pub const FLAG_ARCH_ARM64: u16 = 0x1;
/// Offset of the CRC field: the last four bytes of the header.
pub(crate) const CRC_FIELD_OFFSET: usize = EIF_HEADER_LEN - 4;

/// What a section holds. The numbers are the format's type codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SectionKind {
    /// The enclave's Linux kernel (bzImage on x86_64, Image on aarch64). Type 1.
    Kernel,
    /// The kernel command line. Type 2.
    Cmdline,
    /// An initramfs cpio archive. Type 3.
    Ramdisk,
    /// The CBOR-encoded PCR0 signature and its signing certificate. Type 4.
    Signature,
    /// JSON build metadata (image name, version, build tool). Type 5.
    Metadata,
}

impl SectionKind {
    /// Maps a type code to a kind; 0 ("invalid") and anything above 5 are `None`.
    pub fn from_code(code: u16) -> Option<Self> {
        match code {
            1 => Some(Self::Kernel),
            2 => Some(Self::Cmdline),
            3 => Some(Self::Ramdisk),
            4 => Some(Self::Signature),
            5 => Some(Self::Metadata),
            _ => None,
        }
    }

    /// The format's type code.
    pub fn code(self) -> u16 {
        match self {
            Self::Kernel => 1,
            Self::Cmdline => 2,
            Self::Ramdisk => 3,
            Self::Signature => 4,
            Self::Metadata => 5,
        }
    }

    /// Lower-case name, as used in messages and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Cmdline => "cmdline",
            Self::Ramdisk => "ramdisk",
            Self::Signature => "signature",
            Self::Metadata => "metadata",
        }
    }
}

impl fmt::Display for SectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so that width and alignment in format strings work (tables).
        f.pad(self.name())
    }
}

/// The decoded fixed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EifHeader {
    /// Format version (1 to 4).
    pub version: u16,
    /// Flags; bit 0 is the architecture (see [`FLAG_ARCH_ARM64`]).
    pub flags: u16,
    /// Memory the builder suggests, in bytes. nitro-cli's `run-enclave` ignores it (its
    /// `--memory` is required), so it is informational.
    pub default_mem: u64,
    /// CPU count the builder suggests; informational like `default_mem`.
    pub default_cpus: u64,
    /// Reserved, written as zero.
    pub reserved: u16,
    /// Number of sections that follow.
    pub num_sections: u16,
    /// Offset of each section's section header.
    pub section_offsets: [u64; MAX_SECTIONS],
    /// Size of each section's data.
    pub section_sizes: [u64; MAX_SECTIONS],
    /// Unused, written as zero.
    pub unused: u32,
    /// CRC32 of everything but this field.
    pub crc32: u32,
}

impl EifHeader {
    /// Decodes the 548 header bytes. Only the magic is checked here; the reader checks the rest
    /// against the sections.
    pub(crate) fn decode(b: &[u8; EIF_HEADER_LEN]) -> Self {
        let mut r = BeReader { buf: b, pos: 4 };
        let version = r.u16();
        let flags = r.u16();
        let default_mem = r.u64();
        let default_cpus = r.u64();
        let reserved = r.u16();
        let num_sections = r.u16();
        let mut section_offsets = [0u64; MAX_SECTIONS];
        for slot in &mut section_offsets {
            *slot = r.u64();
        }
        let mut section_sizes = [0u64; MAX_SECTIONS];
        for slot in &mut section_sizes {
            *slot = r.u64();
        }
        let unused = r.u32();
        let crc32 = r.u32();
        Self {
            version,
            flags,
            default_mem,
            default_cpus,
            reserved,
            num_sections,
            section_offsets,
            section_sizes,
            unused,
            crc32,
        }
    }

    /// Encodes the header, magic included.
    pub(crate) fn encode(&self) -> [u8; EIF_HEADER_LEN] {
        let mut out = [0u8; EIF_HEADER_LEN];
        let mut w = BeWriter { buf: &mut out, pos: 0 };
        w.bytes(&EIF_MAGIC);
        w.bytes(&self.version.to_be_bytes());
        w.bytes(&self.flags.to_be_bytes());
        w.bytes(&self.default_mem.to_be_bytes());
        w.bytes(&self.default_cpus.to_be_bytes());
        w.bytes(&self.reserved.to_be_bytes());
        w.bytes(&self.num_sections.to_be_bytes());
        for v in self.section_offsets {
            w.bytes(&v.to_be_bytes());
        }
        for v in self.section_sizes {
            w.bytes(&v.to_be_bytes());
        }
        w.bytes(&self.unused.to_be_bytes());
        w.bytes(&self.crc32.to_be_bytes());
        out
    }

    /// The CPU architecture the flags declare.
    pub fn arch(&self) -> Arch {
        if self.flags & FLAG_ARCH_ARM64 != 0 { Arch::Aarch64 } else { Arch::X86_64 }
    }
}

/// Architecture of the enclave kernel, from the header flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// Intel and AMD instances.
    X86_64,
    /// Graviton instances.
    Aarch64,
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        })
    }
}

/// Encodes a 12-byte section header.
pub(crate) fn encode_section_header(kind: SectionKind, size: u64) -> [u8; SECTION_HEADER_LEN] {
    let mut out = [0u8; SECTION_HEADER_LEN];
    out[0..2].copy_from_slice(&kind.code().to_be_bytes());
    // flags: always zero in images nitro-cli builds.
    out[4..12].copy_from_slice(&size.to_be_bytes());
    out
}

/// Decodes a section header into (type code, flags, size).
pub(crate) fn decode_section_header(b: &[u8; SECTION_HEADER_LEN]) -> (u16, u16, u64) {
    let mut r = BeReader { buf: b, pos: 0 };
    (r.u16(), r.u16(), r.u64())
}

/// Big-endian reads from a buffer whose length the caller has already fixed by type, so that
/// every read is in bounds by construction (callers pass fixed-size arrays).
struct BeReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl BeReader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.buf.get(self.pos..self.pos + N) {
            out.copy_from_slice(src);
        }
        self.pos += N;
        out
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take())
    }
}

struct BeWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl BeWriter<'_> {
    fn bytes(&mut self, b: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.pos..self.pos + b.len()) {
            dst.copy_from_slice(b);
        }
        self.pos += b.len();
    }
}

/// CRC-32/ISO-HDLC (the zlib/IEEE 802.3 CRC), the one nitro-cli's `crc` crate computes.
#[derive(Debug, Clone)]
pub(crate) struct Crc32 {
    state: u32,
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

impl Crc32 {
    pub(crate) fn new() -> Self {
        Self { state: 0xFFFF_FFFF }
    }
    pub(crate) fn update(&mut self, data: &[u8]) {
        let mut c = self.state;
        for &b in data {
            c = CRC_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
        }
        self.state = c;
    }
    pub(crate) fn finish(&self) -> u32 {
        self.state ^ 0xFFFF_FFFF
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        // The catalogue check value of CRC-32/ISO-HDLC is crc("123456789") = cbf43926.
        let mut c = Crc32::new();
        c.update(b"1234");
        c.update(b"56789");
        assert_eq!(c.finish(), 0xCBF4_3926);
    }

    #[test]
    fn header_round_trips_and_has_the_fixed_size() {
        let mut h = EifHeader {
            version: 4,
            flags: 1,
            default_mem: 5,
            default_cpus: 6,
            reserved: 0,
            num_sections: 2,
            section_offsets: [0; MAX_SECTIONS],
            section_sizes: [0; MAX_SECTIONS],
            unused: 0,
            crc32: 0xdead_beef,
        };
        h.section_offsets[0] = 548;
        h.section_sizes[31] = 7;
        let bytes = h.encode();
        assert_eq!(&bytes[..4], b".eif");
        assert_eq!(&bytes[CRC_FIELD_OFFSET..], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(EifHeader::decode(&bytes), h);
        assert_eq!(h.arch(), Arch::Aarch64);
    }

    #[test]
    fn section_kinds_round_trip_and_reject_zero_and_six() {
        for code in 1..=5 {
            assert_eq!(SectionKind::from_code(code).map(SectionKind::code), Some(code));
        }
        assert_eq!(SectionKind::from_code(0), None);
        assert_eq!(SectionKind::from_code(6), None);
    }
}

//! One error type for everything that can go wrong reading, measuring or building an EIF.
//!
//! Every variant names *where* the problem is (section index, section kind, byte offset) and *what*
//! was expected, because the person reading it is usually an auditor holding a file they did not
//! build: "CRC mismatch" alone does not tell them whether the file was truncated in transit or
//! edited on purpose.

use crate::format::SectionKind;

/// Why an EIF could not be read, measured or built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EifError {
    /// The underlying reader or writer failed (not a format problem).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// The first four bytes are not `.eif`.
    #[error("not an EIF: the file starts with {found}, expected the magic bytes 2e656966 (\".eif\")")]
    BadMagic {
        /// Hex of the bytes found (fewer than four when the file is that short).
        found: String,
    },

    /// The input ended before a structure the header promised.
    #[error(
        "truncated EIF: {what} at offset {offset} needs {needed} bytes, but the file ends after {available} of them"
    )]
    Truncated {
        /// Which structure was being read ("EIF header", "section 3 (ramdisk) data", ...).
        what: String,
        /// Offset in the file where that structure starts.
        offset: u64,
        /// Bytes the structure needs.
        needed: u64,
        /// Bytes that were actually there.
        available: u64,
    },

    /// The header's version field is one this crate does not know.
    #[error("unsupported EIF version {0}: this tool understands versions 1 to 4")]
    UnsupportedVersion(u16),

    /// The header declares more sections than its fixed-size section table can hold.
    #[error("EIF header declares {0} sections, but the format allows at most 32")]
    TooManySections(u16),

    /// A section header carries a type number outside 1..=5.
    #[error(
        "section {index} at offset {offset}: unknown section type {raw} (expected 1 kernel, 2 cmdline, 3 ramdisk, 4 signature or 5 metadata)"
    )]
    UnknownSectionType {
        /// Position of the section in the file (0-based).
        index: usize,
        /// Offset of its section header.
        offset: u64,
        /// The type number found.
        raw: u16,
    },

    /// A section appears where the layout does not allow it (e.g. a second kernel).
    #[error("section {index} at offset {offset}: found a {found} section, expected {expected}")]
    UnexpectedSection {
        /// Position of the section in the file (0-based).
        index: usize,
        /// Offset of its section header.
        offset: u64,
        /// What was found.
        found: SectionKind,
        /// What the layout allows there.
        expected: &'static str,
    },

    /// The header's section table disagrees with where the sections really are.
    ///
    /// This matters for security, not only tidiness: the enclave loader follows the table, while a
    /// sequential reader follows the bytes. If the two could disagree, an auditor and the Nitro
    /// hypervisor could measure different data.
    #[error(
        "section {index} ({kind}): the header's section table says offset {declared_offset} and size {declared_size}, but the section is at offset {actual_offset} with size {actual_size}"
    )]
    SectionTableMismatch {
        /// Position of the section in the file (0-based).
        index: usize,
        /// Its kind.
        kind: SectionKind,
        /// Offset recorded in the header's table.
        declared_offset: u64,
        /// Size recorded in the header's table.
        declared_size: u64,
        /// Where its section header really is.
        actual_offset: u64,
        /// The size its section header gives.
        actual_size: u64,
    },

    /// A section table entry beyond `num_sections` is not zero.
    #[error(
        "EIF header: section table entry {index} is not zero although the header declares only {num_sections} sections"
    )]
    StraySectionTableEntry {
        /// The table slot.
        index: usize,
        /// The header's section count.
        num_sections: u16,
    },

    /// A section that is read into memory (cmdline, metadata, signature) is larger than its limit.
    #[error(
        "section {index} ({kind}) at offset {offset}: {size} bytes is over the {limit}-byte limit for this section type"
    )]
    SectionTooLarge {
        /// Position of the section in the file (0-based).
        index: usize,
        /// Its kind.
        kind: SectionKind,
        /// Offset of its section header.
        offset: u64,
        /// Size it declares.
        size: u64,
        /// The limit for its kind.
        limit: u64,
    },

    /// Offsets or sizes add up past `u64::MAX`.
    #[error("section {index}: offset plus size overflows a 64-bit file offset")]
    OffsetOverflow {
        /// Position of the section in the file (0-based).
        index: usize,
    },

    /// A required section is absent.
    #[error("the EIF has no {0} section; every EIF needs one")]
    MissingSection(&'static str),

    /// Bytes follow the last declared section.
    #[error(
        "trailing data at offset {offset}: the header declares {num_sections} sections and they end there, but the file goes on"
    )]
    TrailingData {
        /// Where the unexpected bytes start.
        offset: u64,
        /// The header's section count.
        num_sections: u16,
    },

    /// The stored CRC32 does not match the contents.
    #[error(
        "CRC32 mismatch: the header says {stored:08x} but the contents give {computed:08x}; the file is corrupted or was modified after it was built"
    )]
    CrcMismatch {
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over the header (minus the CRC field) and every section.
        computed: u32,
    },

    /// The metadata section is not the JSON object nitro-cli writes.
    #[error("section {index} (metadata) at offset {offset}: not a JSON object: {reason}")]
    BadMetadata {
        /// Position of the section in the file (0-based).
        index: usize,
        /// Offset of its section header.
        offset: u64,
        /// What the JSON parser said.
        reason: String,
    },

    /// The signature section could not be decoded (CBOR, PEM or X.509).
    #[error("section {index} (signature) at offset {offset}: {reason}")]
    BadSignatureSection {
        /// Position of the section in the file (0-based).
        index: usize,
        /// Offset of its section header.
        offset: u64,
        /// What was wrong.
        reason: String,
    },

    /// A ramdisk is not a cpio "newc" archive the kernel would unpack the same way (see [`crate::cpio`]).
    #[error("ramdisk at byte {offset}: {what}")]
    BadCpio {
        /// Offset in the ramdisk of the header (or byte) at fault.
        offset: u64,
        /// What was wrong, with the value found.
        what: String,
    },

    /// Inputs handed to the builder are unusable.
    #[error("cannot build the EIF: {0}")]
    InvalidInput(String),

    /// The signing key or certificate handed to the builder is unusable.
    #[error("cannot sign the EIF: {0}")]
    Signing(String),
}

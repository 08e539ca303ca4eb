//! Reading and measuring an EIF from any `Read`, in one pass and in bounded memory.
//!
//! Kernel and ramdisk data (hundreds of megabytes) stream through the hashers in 64 KiB chunks
//! and are never held whole; only the cmdline, metadata and signature sections are kept, each
//! under a fixed limit that is checked *before* allocating. Every length comes from the file and
//! is treated as hostile: sums are checked, and a length that runs past the end of the input is
//! reported as truncation with the offset and the number of bytes that were really there.
//!
//! The reader is stricter than nitro-cli's: nitro-cli's reader walks sections until the file ends
//! and ignores the header's section table, while the enclave loader uses the table. Here the
//! table, the section count and the bytes must all agree, and nothing may follow the last
//! section, so that what an auditor measures is what the hypervisor loads.

use std::io::Read;

use ring::digest::{Context, SHA384};
use serde::Serialize;
use veil_protocol::measurements::Measurements;

use crate::error::EifError;
use crate::format::{
    Arch, CRC_FIELD_OFFSET, Crc32, EIF_HEADER_LEN, EIF_MAGIC, EifHeader, MAX_SECTIONS, SECTION_HEADER_LEN, SectionKind,
    decode_section_header,
};
use crate::measure::PcrHashers;
use crate::signature::{self, SignatureInfo};

/// Largest cmdline section accepted (real ones are a few hundred bytes; Linux caps the command
/// line at a few KiB).
pub const MAX_CMDLINE_LEN: u64 = 64 * 1024;
/// Largest metadata section accepted (nitro-cli's includes `docker inspect` output: some KiB).
pub const MAX_METADATA_LEN: u64 = 1024 * 1024;
/// Largest signature section accepted (a certificate and a signature: a few KiB).
pub const MAX_SIGNATURE_LEN: u64 = 1024 * 1024;

const CHUNK: usize = 64 * 1024;

/// One section as found in the file.
#[derive(Debug, Clone, Serialize)]
pub struct SectionInfo {
    /// Position in the file, 0-based.
    pub index: usize,
    /// What it holds.
    pub kind: SectionKind,
    /// Offset of its 12-byte section header.
    pub offset: u64,
    /// Size of its data.
    pub size: u64,
    /// Its flags field (zero in images nitro-cli builds).
    pub flags: u16,
    /// SHA-384 of its data, for comparing sections between two images.
    pub sha384: String,
}

/// Everything `describe` shows about an EIF: header, sections, measurements, metadata and
/// signature. Building one means the whole file was read, its layout and CRC checked, and its
/// PCRs computed.
#[derive(Debug, Clone, Serialize)]
pub struct EifInfo {
    /// Format version.
    pub version: u16,
    /// Header flags.
    pub flags: u16,
    /// Architecture from the flags.
    pub arch: Arch,
    /// Memory suggested by the builder, bytes (informational).
    pub default_mem: u64,
    /// CPUs suggested by the builder (informational).
    pub default_cpus: u64,
    /// CRC32 stored in the header (checked: a mismatch is an error for versions >= 2).
    pub crc32: u32,
    /// Total size of the file.
    pub total_size: u64,
    /// The sections, in file order.
    pub sections: Vec<SectionInfo>,
    /// The kernel command line (lossy UTF-8).
    pub cmdline: String,
    /// PCR0, PCR1, PCR2 and, for signed images, PCR8.
    #[serde(skip)]
    pub measurements: Measurements,
    /// The metadata section's JSON, if any.
    pub metadata: Option<serde_json::Value>,
    /// The signature section, decoded, if any.
    pub signature: Option<SignatureInfo>,
}

/// Counts bytes and keeps the CRC while reading.
struct Input<R> {
    inner: R,
    pos: u64,
    crc: Crc32,
}

impl<R: Read> Input<R> {
    /// Reads until `buf` is full or the input ends; returns the number of bytes read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, EifError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(EifError::Io(e)),
            }
        }
        self.pos += got as u64;
        Ok(got)
    }

    fn exact(&mut self, buf: &mut [u8], what: impl FnOnce() -> String) -> Result<(), EifError> {
        let offset = self.pos;
        let got = self.fill(buf)?;
        if got < buf.len() {
            return Err(EifError::Truncated { what: what(), offset, needed: buf.len() as u64, available: got as u64 });
        }
        self.crc.update(buf);
        Ok(())
    }
}

/// Where the reader is in the expected layout.
#[derive(Default)]
struct Seen {
    metadata: bool,
    ramdisks: usize,
    signature: bool,
}

/// Reads, checks and measures an EIF.
///
/// Fails on anything that would make the measurements ambiguous or the file unbootable: wrong
/// magic, unknown version, truncation, a section table that disagrees with the sections, sections
/// out of order, a CRC mismatch, trailing bytes, or an undecodable metadata or signature section.
pub fn read_eif(reader: impl Read) -> Result<EifInfo, EifError> {
    let mut input = Input { inner: reader, pos: 0, crc: Crc32::new() };

    let mut hbuf = [0u8; EIF_HEADER_LEN];
    let got = input.fill(&mut hbuf)?;
    if got < 4 || hbuf[..4] != EIF_MAGIC {
        return Err(EifError::BadMagic { found: hex::encode(&hbuf[..got.min(4)]) });
    }
    if got < EIF_HEADER_LEN {
        return Err(EifError::Truncated {
            what: "EIF header".into(),
            offset: 0,
            needed: EIF_HEADER_LEN as u64,
            available: got as u64,
        });
    }
    input.crc.update(&hbuf[..CRC_FIELD_OFFSET]);
    let header = EifHeader::decode(&hbuf);
    if !(1..=4).contains(&header.version) {
        return Err(EifError::UnsupportedVersion(header.version));
    }
    let n = usize::from(header.num_sections);
    if n > MAX_SECTIONS {
        return Err(EifError::TooManySections(header.num_sections));
    }
    if let Some(index) = (n..MAX_SECTIONS).find(|&i| header.section_offsets[i] != 0 || header.section_sizes[i] != 0) {
        return Err(EifError::StraySectionTableEntry { index, num_sections: header.num_sections });
    }

    let mut hashers = PcrHashers::new();
    let mut sections = Vec::with_capacity(n);
    let mut seen = Seen::default();
    let mut cmdline = Vec::new();
    let mut metadata = None;
    let mut signature_section: Option<(usize, u64, Vec<u8>)> = None;
    let mut chunk = vec![0u8; CHUNK];

    for index in 0..n {
        let offset = input.pos;
        let mut sbuf = [0u8; SECTION_HEADER_LEN];
        input.exact(&mut sbuf, || format!("section {index} header"))?;
        let (code, flags, size) = decode_section_header(&sbuf);
        let kind = SectionKind::from_code(code).ok_or(EifError::UnknownSectionType { index, offset, raw: code })?;
        check_order(index, offset, kind, &mut seen)?;
        if header.section_offsets[index] != offset || header.section_sizes[index] != size {
            return Err(EifError::SectionTableMismatch {
                index,
                kind,
                declared_offset: header.section_offsets[index],
                declared_size: header.section_sizes[index],
                actual_offset: offset,
                actual_size: size,
            });
        }
        offset
            .checked_add(SECTION_HEADER_LEN as u64)
            .and_then(|o| o.checked_add(size))
            .ok_or(EifError::OffsetOverflow { index })?;

        let limit = match kind {
            SectionKind::Cmdline => Some(MAX_CMDLINE_LEN),
            SectionKind::Metadata => Some(MAX_METADATA_LEN),
            SectionKind::Signature => Some(MAX_SIGNATURE_LEN),
            SectionKind::Kernel | SectionKind::Ramdisk => None,
        };
        if let Some(limit) = limit.filter(|l| size > *l) {
            return Err(EifError::SectionTooLarge { index, kind, offset, size, limit });
        }
        if kind == SectionKind::Ramdisk {
            hashers.start_ramdisk();
        }

        // Stream the data: CRC, the section's own hash, the PCR hashers, and a copy for the
        // small sections (whose size was bounded just above).
        let mut own = Context::new(&SHA384);
        let mut kept = Vec::new();
        let data_offset = input.pos;
        let mut left = size;
        while left > 0 {
            let want = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
            let buf = &mut chunk[..want];
            input.exact(buf, || format!("section {index} ({kind}) data")).map_err(|e| match e {
                EifError::Truncated { what, available, .. } => {
                    EifError::Truncated { what, offset: data_offset, needed: size, available: size - left + available }
                }
                other => other,
            })?;
            own.update(buf);
            match kind {
                SectionKind::Kernel | SectionKind::Cmdline => hashers.boot_data(buf),
                SectionKind::Ramdisk => hashers.ramdisk_data(buf),
                SectionKind::Metadata | SectionKind::Signature => {}
            }
            if limit.is_some() {
                kept.extend_from_slice(buf);
            }
            left -= want as u64;
        }

        match kind {
            SectionKind::Cmdline => cmdline = kept,
            SectionKind::Metadata => {
                let v: serde_json::Value = serde_json::from_slice(&kept).map_err(|e| EifError::BadMetadata {
                    index,
                    offset,
                    reason: e.to_string(),
                })?;
                if !v.is_object() {
                    return Err(EifError::BadMetadata {
                        index,
                        offset,
                        reason: "the top level is not an object".into(),
                    });
                }
                metadata = Some(v);
            }
            SectionKind::Signature => signature_section = Some((index, offset, kept)),
            SectionKind::Kernel | SectionKind::Ramdisk => {}
        }
        sections.push(SectionInfo { index, kind, offset, size, flags, sha384: hex::encode(own.finish()) });
    }

    // Nothing may follow the last section.
    let end = input.pos;
    let mut probe = [0u8; 1];
    if input.fill(&mut probe)? != 0 {
        return Err(EifError::TrailingData { offset: end, num_sections: header.num_sections });
    }
    if sections.is_empty() || sections[0].kind != SectionKind::Kernel {
        return Err(EifError::MissingSection("kernel"));
    }
    if sections.len() < 2 {
        return Err(EifError::MissingSection("cmdline"));
    }
    if seen.ramdisks == 0 {
        return Err(EifError::MissingSection("ramdisk"));
    }
    // Version 1 images predate the CRC.
    let computed = input.crc.finish();
    if header.version >= 2 && computed != header.crc32 {
        return Err(EifError::CrcMismatch { stored: header.crc32, computed });
    }

    let pcrs = hashers.finish();
    let signature = match signature_section {
        Some((index, offset, bytes)) => {
            Some(signature::parse_section(&bytes, &pcrs.pcr0).map_err(|reason| EifError::BadSignatureSection {
                index,
                offset,
                reason,
            })?)
        }
        None => None,
    };
    let measurements = pcrs.measurements(signature.as_ref().map(|s| s.pcr8));

    Ok(EifInfo {
        version: header.version,
        flags: header.flags,
        arch: header.arch(),
        default_mem: header.default_mem,
        default_cpus: header.default_cpus,
        crc32: header.crc32,
        total_size: end,
        sections,
        cmdline: String::from_utf8_lossy(&cmdline).into_owned(),
        measurements,
        metadata,
        signature,
    })
}

/// Enforces the layout nitro-cli writes: kernel, cmdline, then ramdisks (at least one) with at
/// most one metadata section and at most one signature section among or after them.
fn check_order(index: usize, offset: u64, kind: SectionKind, seen: &mut Seen) -> Result<(), EifError> {
    let unexpected = |expected| Err(EifError::UnexpectedSection { index, offset, found: kind, expected });
    match (index, kind) {
        (0, SectionKind::Kernel) | (1, SectionKind::Cmdline) => Ok(()),
        (0, _) => unexpected("the kernel (section 0 is always the kernel)"),
        (1, _) => unexpected("the cmdline (section 1 is always the cmdline)"),
        (_, SectionKind::Kernel | SectionKind::Cmdline) => {
            unexpected("a ramdisk, metadata or signature section (only one kernel and one cmdline are allowed)")
        }
        (_, SectionKind::Ramdisk) if seen.signature => {
            unexpected("no more sections after the signature (it covers the ramdisks before it)")
        }
        (_, SectionKind::Ramdisk) => {
            seen.ramdisks += 1;
            Ok(())
        }
        (_, SectionKind::Metadata) if seen.metadata => unexpected("a ramdisk or signature (only one metadata section)"),
        (_, SectionKind::Metadata) => {
            seen.metadata = true;
            Ok(())
        }
        (_, SectionKind::Signature) if seen.signature => {
            unexpected("a ramdisk or metadata (only one signature section)")
        }
        (_, SectionKind::Signature) if seen.ramdisks == 0 => {
            unexpected("a ramdisk (the signature comes after the ramdisks)")
        }
        (_, SectionKind::Signature) => {
            seen.signature = true;
            Ok(())
        }
    }
}

/// Reads and measures an EIF held in memory. Same checks as [`read_eif`].
pub fn read_eif_bytes(bytes: &[u8]) -> Result<EifInfo, EifError> {
    read_eif(bytes)
}

/// Convenience for callers that only want the PCRs.
pub fn measure_eif(reader: impl Read) -> Result<Measurements, EifError> {
    read_eif(reader).map(|i| i.measurements)
}

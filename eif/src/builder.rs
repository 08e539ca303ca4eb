//! Building an EIF from a kernel, a command line and ramdisks, without Docker or nitro-cli.
//!
//! The output is a pure function of the inputs: no clock, no randomness, no file names, no host
//! details. The same kernel, cmdline, ramdisks and metadata give the same bytes on any machine,
//! which is what lets an auditor rebuild a release and compare it with `cmp`. (The one exception
//! is signing: ECDSA signatures are randomized, so a signed image's signature section and CRC
//! differ between builds while all PCRs, PCR8 included, stay identical.)
//!
//! The layout is the one nitro-cli 1.x writes, format version 4: kernel, cmdline, metadata,
//! ramdisks, then the signature section if signed. See [`crate::format`].

use std::io::Write;

use serde::Serialize;
use veil_protocol::measurements::Measurements;

use crate::error::EifError;
use crate::format::{
    Arch, CRC_FIELD_OFFSET, CURRENT_VERSION, Crc32, EIF_HEADER_LEN, EifHeader, FLAG_ARCH_ARM64, MAX_SECTIONS,
    SECTION_HEADER_LEN, SectionKind, encode_section_header,
};
use crate::measure::PcrHashers;
use crate::signature::Signer;

/// The metadata section, field for field as nitro-cli writes it (`EifIdentityInfo`), so that
/// `nitro-cli describe-eif` shows it. It is not measured into any PCR.
#[derive(Debug, Clone, Serialize)]
pub struct EifIdentity {
    /// Image name.
    #[serde(rename = "ImageName")]
    pub image_name: String,
    /// Image version.
    #[serde(rename = "ImageVersion")]
    pub image_version: String,
    /// How the image was built.
    #[serde(rename = "BuildMetadata")]
    pub build: BuildInfo,
    /// nitro-cli puts `docker inspect` output here; `null` when built without Docker.
    #[serde(rename = "DockerInfo")]
    pub docker_info: serde_json::Value,
    /// Free-form JSON the builder adds.
    #[serde(rename = "CustomMetadata")]
    pub custom: serde_json::Value,
}

/// The `BuildMetadata` object of the metadata section.
#[derive(Debug, Clone, Serialize)]
pub struct BuildInfo {
    /// Build time, RFC 3339 in nitro-cli's `+00:00` shape
    /// (`veil_protocol::time::format_rfc3339(secs, UtcSuffix::Offset)`). For reproducible builds it comes
    /// from `SOURCE_DATE_EPOCH`, never the clock.
    #[serde(rename = "BuildTime")]
    pub build_time: String,
    /// Tool name.
    #[serde(rename = "BuildTool")]
    pub build_tool: String,
    /// Tool version.
    #[serde(rename = "BuildToolVersion")]
    pub build_tool_version: String,
    /// Operating system of the image.
    #[serde(rename = "OperatingSystem")]
    pub operating_system: String,
    /// Kernel version of the image.
    #[serde(rename = "KernelVersion")]
    pub kernel_version: String,
}

/// Assembles an EIF from in-memory parts.
///
/// The caller reads the files; this type never touches the file system. Sizes and the CRC go in
/// the header, which comes first, so all inputs must be known before writing starts.
#[derive(Debug)]
pub struct EifBuilder<'a> {
    kernel: &'a [u8],
    cmdline: &'a [u8],
    ramdisks: Vec<&'a [u8]>,
    metadata: Option<Vec<u8>>,
    arch: Arch,
    default_mem: u64,
    default_cpus: u64,
    signer: Option<&'a Signer>,
}

/// What [`EifBuilder::write_to`] produced.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// PCR0, PCR1, PCR2 (and PCR8 if signed) of the image written.
    pub measurements: Measurements,
    /// Bytes written.
    pub size: u64,
    /// The CRC32 stored in the header.
    pub crc32: u32,
}

impl<'a> EifBuilder<'a> {
    /// Starts an image with a kernel and its command line.
    ///
    /// The cmdline is stored exactly as given (nitro-cli stores it without a trailing NUL), and
    /// must not contain NUL bytes, which the kernel would treat as its end.
    pub fn new(kernel: &'a [u8], cmdline: &'a str) -> Result<Self, EifError> {
        if kernel.is_empty() {
            return Err(EifError::InvalidInput("the kernel is empty".into()));
        }
        if cmdline.as_bytes().contains(&0) {
            return Err(EifError::InvalidInput("the cmdline contains a NUL byte".into()));
        }
        if cmdline.len() as u64 > crate::reader::MAX_CMDLINE_LEN {
            return Err(EifError::InvalidInput(format!(
                "the cmdline is {} bytes; at most {} are accepted",
                cmdline.len(),
                crate::reader::MAX_CMDLINE_LEN
            )));
        }
        Ok(Self {
            kernel,
            cmdline: cmdline.as_bytes(),
            ramdisks: Vec::new(),
            metadata: None,
            arch: Arch::X86_64,
            // nitro-cli's defaults; run-enclave ignores them, they only document intent.
            default_mem: 1024 * 1024 * 1024,
            default_cpus: 2,
            signer: None,
        })
    }

    /// Appends a ramdisk. The first one is measured into PCR1 with the kernel (by convention
    /// AWS's bootstrap init), the others into PCR2 (the application).
    pub fn ramdisk(mut self, data: &'a [u8]) -> Self {
        self.ramdisks.push(data);
        self
    }

    /// Sets the metadata section (omitted when never set).
    pub fn metadata(mut self, identity: &EifIdentity) -> Result<Self, EifError> {
        let bytes = serde_json::to_vec(identity)
            .map_err(|e| EifError::InvalidInput(format!("metadata does not serialize: {e}")))?;
        if bytes.len() as u64 > crate::reader::MAX_METADATA_LEN {
            return Err(EifError::InvalidInput(format!(
                "the metadata is {} bytes; at most {} are accepted",
                bytes.len(),
                crate::reader::MAX_METADATA_LEN
            )));
        }
        self.metadata = Some(bytes);
        Ok(self)
    }

    /// Sets the architecture flag (x86_64 by default).
    pub fn arch(mut self, arch: Arch) -> Self {
        self.arch = arch;
        self
    }

    /// Sets the informational default memory (bytes) and CPU count in the header.
    pub fn defaults(mut self, mem_bytes: u64, cpus: u64) -> Self {
        self.default_mem = mem_bytes;
        self.default_cpus = cpus;
        self
    }

    /// Signs the image's PCR0 with `signer` and records its certificate (PCR8).
    pub fn sign(mut self, signer: &'a Signer) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Computes the measurements, the signature (if signing) and the CRC, then writes the image.
    pub fn write_to(self, mut out: impl Write) -> Result<BuildOutput, EifError> {
        if self.ramdisks.is_empty() {
            return Err(EifError::InvalidInput(
                "no ramdisk: an EIF needs at least one (the init that starts the application)".into(),
            ));
        }

        let mut hashers = PcrHashers::new();
        hashers.boot_data(self.kernel);
        hashers.boot_data(self.cmdline);
        for rd in &self.ramdisks {
            hashers.start_ramdisk();
            hashers.ramdisk_data(rd);
        }
        let pcrs = hashers.finish();
        let measurements = pcrs.measurements(self.signer.map(Signer::pcr8));
        let signature = match self.signer {
            Some(s) => Some(s.signature_section(&pcrs.pcr0)?),
            None => None,
        };

        let mut sections: Vec<(SectionKind, &[u8])> =
            vec![(SectionKind::Kernel, self.kernel), (SectionKind::Cmdline, self.cmdline)];
        if let Some(m) = &self.metadata {
            sections.push((SectionKind::Metadata, m));
        }
        sections.extend(self.ramdisks.iter().map(|r| (SectionKind::Ramdisk, *r)));
        if let Some(s) = &signature {
            sections.push((SectionKind::Signature, s));
        }
        if sections.len() > MAX_SECTIONS {
            return Err(EifError::InvalidInput(format!(
                "{} sections; the EIF header has room for {MAX_SECTIONS} (at most {} ramdisks)",
                sections.len(),
                MAX_SECTIONS - (sections.len() - self.ramdisks.len())
            )));
        }

        let mut header = EifHeader {
            version: CURRENT_VERSION,
            flags: if self.arch == Arch::Aarch64 { FLAG_ARCH_ARM64 } else { 0 },
            default_mem: self.default_mem,
            default_cpus: self.default_cpus,
            reserved: 0,
            num_sections: sections.len() as u16,
            section_offsets: [0; MAX_SECTIONS],
            section_sizes: [0; MAX_SECTIONS],
            unused: 0,
            crc32: 0,
        };
        let mut offset = EIF_HEADER_LEN as u64;
        for (i, (_, data)) in sections.iter().enumerate() {
            header.section_offsets[i] = offset;
            header.section_sizes[i] = data.len() as u64;
            offset += (SECTION_HEADER_LEN + data.len()) as u64;
        }

        let mut crc = Crc32::new();
        crc.update(&header.encode()[..CRC_FIELD_OFFSET]);
        for (kind, data) in &sections {
            crc.update(&encode_section_header(*kind, data.len() as u64));
            crc.update(data);
        }
        header.crc32 = crc.finish();

        out.write_all(&header.encode())?;
        for (kind, data) in &sections {
            out.write_all(&encode_section_header(*kind, data.len() as u64))?;
            out.write_all(data)?;
        }
        out.flush()?;
        Ok(BuildOutput { measurements, size: offset, crc32: header.crc32 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unbootable_inputs() {
        assert!(matches!(EifBuilder::new(b"", "x"), Err(EifError::InvalidInput(_))));
        assert!(matches!(EifBuilder::new(b"k", "a\0b"), Err(EifError::InvalidInput(_))));
        let err = EifBuilder::new(b"k", "c").expect("builder").write_to(Vec::new()).expect_err("no ramdisk");
        assert!(err.to_string().contains("no ramdisk"), "{err}");
        let rd = [1u8];
        let mut b = EifBuilder::new(b"k", "c").expect("builder");
        for _ in 0..31 {
            b = b.ramdisk(&rd);
        }
        assert!(b.write_to(Vec::new()).expect_err("33 sections").to_string().contains("room for 32"));
    }
}

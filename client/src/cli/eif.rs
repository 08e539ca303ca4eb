//! `veil eif`: measure, describe, build and compare Enclave Image Files, and write their ramdisks, on
//! the operator's or auditor's machine, without Docker or nitro-cli.
//!
//! All parsing and hashing lives in the pure `veil-eif` crate; this module only opens files,
//! chooses output formats and turns library errors into messages that name the file.
//!
//! Exit codes follow the CLI's shared ones ([`super::EXIT_OK`] and friends): 0 success;
//! [`super::EXIT_FAILED`] (1) when an EIF's signature section does not verify (the PCRs are still
//! printed, since an auditor needs them to say *what* was signed wrongly) and when `diff` finds two
//! files different (what differs is printed); errors (an unreadable,
//! truncated or corrupted EIF, a bad input file) are returned to `main`, which exits with
//! [`super::EXIT_USAGE`] (2).

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use veil_eif::cpio::{self, CpioEntry};
use veil_eif::format::SECTION_HEADER_LEN;
use veil_eif::ramdisk::{AppRamdisk, bootstrap_ramdisk, kernel_config_version};
use veil_eif::{
    Arch, BuildInfo, EifBuilder, EifIdentity, EifInfo, SectionKind, SignatureCheck, Signer, read_eif, read_eif_bytes,
    recommend_memory,
};
use veil_protocol::time::{MAX_UNIX_SECONDS, UtcSuffix, format_rfc3339};

/// Exit code when the signature section of an EIF does not verify: a failed verification.
const EXIT_BAD_SIGNATURE: u8 = super::EXIT_FAILED;

/// What `veil eif --help` teaches under the list of subcommands. Set explicitly on the enum
/// (rather than as its doc comment) because the parent command's doc comment wins for `about`.
const EIF_AFTER_HELP: &str = "\
An enclave's identity is its PCRs: SHA-384 measurements of the image that the Nitro hypervisor
puts in every attestation document, and that KMS key policies and clients pin. These commands
compute them from an EIF exactly as nitro-cli does, in pure Rust, without Docker:

  PCR0  kernel + cmdline + all ramdisks      (the whole image)
  PCR1  kernel + cmdline + first ramdisk     (AWS's boot code)
  PCR2  the other ramdisks                   (the application)
  PCR8  the signing certificate              (signed images only)

each as SHA-384(48 zero bytes || SHA-384(the data concatenated)).

Examples:
  veil eif pcrs enclave.eif > measurements.json
  veil eif describe enclave.eif
  veil eif diff release.eif rebuilt.eif        # which section, which file in the ramdisk
  veil eif size enclave.eif --model minilm=/var/lib/veil/models/minilm.onnx --cpus 4

scripts/reproduce.sh builds Veil's image from source with `ramdisk` and `build --blobs`.";

/// Measure, describe, size and build Enclave Image Files (EIF); see [`EIF_AFTER_HELP`].
#[derive(Debug, Subcommand)]
#[command(after_help = EIF_AFTER_HELP)]
pub enum EifCommand {
    /// Print the PCRs of an EIF as nitro-cli's measurements JSON
    ///
    /// The output is what `nitro-cli build-enclave` prints for the same image, byte for byte:
    /// {"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": ..., "PCR1": ..., "PCR2": ...}}
    /// plus "PCR8" for signed images. Save it as a measurements file for
    /// `veil attest verify --measurements FILE`, or compare it with a release's published file.
    ///
    /// The whole file is read and checked first (layout, section table, CRC32, signature), so a
    /// truncated or corrupted EIF fails with an error naming the section and offset instead of
    /// printing PCRs of garbage.
    ///
    /// Example: veil eif pcrs enclave.eif > measurements.json
    #[command(verbatim_doc_comment)]
    Pcrs(PcrsArgs),

    /// Show an EIF's header, sections, command line, metadata, signature and PCRs
    ///
    /// For each section: its type, offset, size and SHA-384, which tells you *which part* of two
    /// images differs when their PCRs do. For signed images: the certificate's subject, issuer
    /// and validity, and whether the COSE signature over PCR0 verifies with it.
    ///
    /// Example: veil eif describe enclave.eif --json | jq .sections
    #[command(verbatim_doc_comment)]
    Describe(DescribeArgs),

    /// Build an EIF from a kernel, a command line and ramdisks, reproducibly, without Docker
    ///
    /// The output depends only on the inputs: no clock (the metadata's build time comes from
    /// SOURCE_DATE_EPOCH, or the Unix epoch), no host names, no file names. Build twice, or on
    /// another machine, and `cmp` the files: they are identical. That is how an auditor checks a
    /// release's EIF against its reviewed parts.
    ///
    /// The ramdisks are usually nitro-cli's bootstrap init ramdisk first (measured into PCR1 with
    /// the kernel) and then the application's ramdisk (PCR2). The kernel, cmdline and init come
    /// from nitro-cli's blobs (/usr/share/nitro_enclaves/blobs/ on an instance with nitro-cli).
    /// With --blobs DIR this command takes them from there itself, as nitro-cli does: the kernel
    /// (bzImage, or Image for aarch64), its cmdline file, and a bootstrap ramdisk made of DIR/init
    /// and DIR/nsm.ko; the --ramdisk files are then the application's (`veil eif ramdisk`).
    ///
    /// Prints the measurements JSON (as `nitro-cli build-enclave` does) on stdout.
    ///
    /// Examples: veil eif build --kernel bzImage --cmdline "$(cat cmdline)" \
    ///             --ramdisk init.cpio --ramdisk app.cpio --output enclave.eif
    ///           veil eif build --blobs /usr/share/nitro_enclaves/blobs --ramdisk app.cpio -o enclave.eif
    #[command(verbatim_doc_comment)]
    Build(Box<BuildArgs>),

    /// Recommend enclave memory and vCPUs for an EIF and the models it will serve
    ///
    /// Enclaves have no disk: the unpacked image and every loaded model live in the memory given
    /// to `nitro-cli run-enclave --memory`. The estimate, in MiB, rounded up to 256:
    ///
    ///   max( 4 x EIF                                    nitro-cli's own minimum (E26)
    ///      , 2 x EIF + models x (2 + sessions) + 512 )  image, model copies, runtime
    ///
    /// where each model is counted once as fetched (decrypted in place), once for ONNX Runtime's
    /// transient copy while it builds a session, and once per session (the enclave runs one per
    /// vCPU by default); measured in docs/RELIABILITY.md. Keep models out of the EIF: pass them
    /// here with --model and serve them from the parent.
    ///
    /// Example: veil eif size enclave.eif --model /var/lib/veil/minilm.onnx --cpus 4 --mib
    #[command(verbatim_doc_comment)]
    Size(SizeArgs),

    /// Write an application ramdisk (cpio "newc") the way AWS's bootstrap init runs it, reproducibly
    ///
    /// The archive holds the given files under rootfs/ (with the directories init mounts on:
    /// dev, proc, run, sys, tmp, and var), and the files `cmd` (the command after `--`, one
    /// argument a line) and `env` (the --env entries, one a line) that init reads to start the
    /// program in that root with exactly that environment. This is what `nitro-cli build-enclave`
    /// makes from a Docker image's ENTRYPOINT/CMD, ENV and file system, without Docker.
    ///
    /// Nothing of the build machine gets in: entries sorted by path, owner 0:0, one mtime (--mtime,
    /// default 0), inode numbers counted from 0, device numbers 0, and modes normalised: 0755 for
    /// directories and for files whose owner may execute them, 0644 for other files. The same inputs
    /// give the same bytes anywhere. The command must be an executable file of the image.
    ///
    /// Example: veil eif ramdisk --output app.cpio \
    ///            --file /usr/local/bin/app=target/release/app --env RUST_LOG=info \
    ///            -- /usr/local/bin/app --serve
    #[command(verbatim_doc_comment)]
    Ramdisk(RamdiskArgs),

    /// Compare two EIFs (or two ramdisks) and name the first difference
    ///
    /// Compares the PCRs, then each section; for ramdisks, reads both as cpio archives and names
    /// the first file that differs and how (contents from which byte, mode, owner, mtime, present
    /// on one side only). The answer to "my rebuild has another PCR2: why?".
    ///
    /// Exit code: 0 if the files are identical, 1 if they differ, 2 if one cannot be read.
    ///
    /// Example: veil eif diff release.eif rebuilt.eif
    #[command(verbatim_doc_comment)]
    Diff(DiffArgs),
}

/// Arguments of `veil eif ramdisk`.
#[derive(Debug, Args)]
pub struct RamdiskArgs {
    /// A file of the image, as IMAGE_PATH=SOURCE: the absolute path inside the enclave's root and
    /// the file to copy there (symlinks followed). Repeat for each file; parent directories are
    /// created.
    #[arg(long = "file", value_name = "IMAGE_PATH=SOURCE")]
    pub files: Vec<String>,
    /// An environment variable of the program, NAME=VALUE. Repeat for each; in the given order,
    /// this is the program's whole environment.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Where to write the archive (written to a temporary file beside it, then renamed).
    #[arg(long, short, value_name = "FILE.cpio")]
    pub output: PathBuf,
    /// The mtime of every entry, Unix seconds.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub mtime: u32,
    /// The program init runs (its absolute path in the image, or a name init finds in /sbin,
    /// /usr/sbin, /bin or /usr/bin) and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Arguments of `veil eif diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The first EIF or ramdisk (cpio).
    #[arg(value_name = "A")]
    pub a: PathBuf,
    /// The second EIF or ramdisk (cpio).
    #[arg(value_name = "B")]
    pub b: PathBuf,
    /// Print the comparison as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `veil eif size`.
#[derive(Debug, Args)]
pub struct SizeArgs {
    /// The EIF to run (only its size is used; it is not parsed).
    #[arg(value_name = "FILE.eif")]
    pub file: PathBuf,
    /// A model file the enclave will load (repeat for several). NAME=PATH is accepted too, as
    /// given to veil-parent --model.
    #[arg(long = "model", value_name = "[NAME=]PATH")]
    pub models: Vec<String>,
    /// vCPUs for the enclave. On x86_64 instances with hyper-threading nitro-cli hands out whole
    /// cores, so use an even number.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub cpus: u64,
    /// ONNX Runtime sessions per model (veil-enclave --sessions); defaults to --cpus.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub sessions: Option<u64>,
    /// Print JSON with every term of the estimate.
    #[arg(long, conflicts_with = "mib")]
    pub json: bool,
    /// Print only the memory in MiB (for scripts: --memory "$(veil eif size ... --mib)").
    #[arg(long)]
    pub mib: bool,
}

/// Arguments of `veil eif pcrs`.
#[derive(Debug, Args)]
pub struct PcrsArgs {
    /// The EIF to measure.
    #[arg(value_name = "FILE.eif")]
    pub file: PathBuf,
    /// Print the same JSON on one line (for scripts and logs) instead of nitro-cli's indented form.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `veil eif describe`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// The EIF to describe.
    #[arg(value_name = "FILE.eif")]
    pub file: PathBuf,
    /// Print JSON (header fields, sections, cmdline, metadata, signature, and the "Measurements"
    /// object in nitro-cli's shape) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// CPU architecture of the enclave kernel.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ArchArg {
    /// Intel/AMD instances.
    #[value(name = "x86_64")]
    X86_64,
    /// Graviton instances.
    Aarch64,
}

/// Arguments of `veil eif build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The enclave kernel (bzImage on x86_64, Image on aarch64).
    #[arg(long, value_name = "FILE", required_unless_present = "blobs")]
    pub kernel: Option<PathBuf>,
    /// The kernel command line, stored exactly as given (nitro-cli's blobs ship it in a file
    /// named cmdline: pass "$(cat cmdline)").
    #[arg(long, value_name = "STR", required_unless_present = "blobs")]
    pub cmdline: Option<String>,
    /// nitro-cli's blobs directory (/usr/share/nitro_enclaves/blobs on Amazon Linux): the kernel
    /// (bzImage, or Image with --arch aarch64), its command line (the file cmdline, surrounding
    /// white space removed, as nitro-cli does), the kernel version for the metadata (from the
    /// kernel's .config), and the first ramdisk, made from init and nsm.ko in nitro-cli's layout.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kernel", "cmdline"])]
    pub blobs: Option<PathBuf>,
    /// A ramdisk (cpio archive); repeat for several, in order. The first is measured into PCR1,
    /// the rest into PCR2. With --blobs, the bootstrap ramdisk comes first and these follow it.
    #[arg(long = "ramdisk", value_name = "FILE", required = true)]
    pub ramdisks: Vec<PathBuf>,
    /// Where to write the EIF (written to a temporary file beside it, then renamed).
    #[arg(long, short, value_name = "FILE.eif")]
    pub output: PathBuf,
    /// ECDSA P-384 private key (PEM) to sign the image with; PCR8 then measures the certificate.
    /// Create one with `openssl ecparam -name secp384r1 -genkey -out key.pem`.
    #[arg(long, value_name = "KEY.pem", requires = "signing_cert")]
    pub signing_key: Option<PathBuf>,
    /// The certificate (PEM) of the signing key.
    #[arg(long, value_name = "CERT.pem", requires = "signing_key")]
    pub signing_cert: Option<PathBuf>,
    /// Image name recorded in the metadata section (not measured).
    #[arg(long, default_value = "veil-enclave")]
    pub name: String,
    /// Image version recorded in the metadata section (not measured).
    #[arg(long, default_value = "1.0")]
    pub image_version: String,
    /// Kernel version recorded in the metadata section (not measured). Default: from the blobs'
    /// kernel configuration with --blobs, else "unknown".
    #[arg(long)]
    pub kernel_version: Option<String>,
    /// A JSON file to record as the metadata's CustomMetadata (not measured).
    #[arg(long, value_name = "FILE.json")]
    pub metadata: Option<PathBuf>,
    /// Omit the metadata section entirely.
    #[arg(long, conflicts_with = "metadata")]
    pub no_metadata: bool,
    /// Build time for the metadata, as Unix seconds; the standard reproducible-builds variable.
    /// Without it the build time is the Unix epoch, never the clock.
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS",
          value_parser = clap::value_parser!(i64).range(0..=MAX_UNIX_SECONDS))]
    pub source_date_epoch: Option<i64>,
    /// Architecture flag written in the header.
    #[arg(long, value_enum, default_value = "x86_64")]
    pub arch: ArchArg,
    /// Suggested enclave memory in MiB, recorded in the header (informational: nitro-cli's
    /// run-enclave requires --memory anyway).
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pub memory_mib: u64,
    /// Suggested vCPU count, recorded in the header (informational).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub cpus: u64,
}

/// Runs an `eif` subcommand and returns the process exit code.
pub fn run(cmd: EifCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EifCommand::Pcrs(args) => pcrs(&args),
        EifCommand::Describe(args) => describe(&args),
        EifCommand::Build(args) => build(*args),
        EifCommand::Size(args) => size(&args),
        EifCommand::Ramdisk(args) => ramdisk(&args),
        EifCommand::Diff(args) => diff(&args),
    }
}

/// Opens and fully checks an EIF, with the path in every error.
fn load(path: &Path) -> anyhow::Result<EifInfo> {
    // Each message carries its cause inline, so it reads whole however the caller prints errors.
    let file = File::open(path).map_err(|e| anyhow!("cannot open {}: {e}", path.display()))?;
    read_eif(BufReader::with_capacity(1 << 20, file)).map_err(|e| anyhow!("{} is not a valid EIF: {e}", path.display()))
}

/// Prints a loud warning when the signature does not verify and picks the exit code.
fn signature_exit(info: &EifInfo, path: &Path) -> ExitCode {
    match info.signature.as_ref().map(|s| &s.check) {
        Some(SignatureCheck::Invalid(why)) => {
            eprintln!(
                "veil: WARNING: the signature section of {} does NOT verify: {why}\n\
                 veil: PCR8 below measures a certificate that did not sign this image; nitro-cli will refuse to run it.",
                path.display()
            );
            ExitCode::from(EXIT_BAD_SIGNATURE)
        }
        Some(SignatureCheck::Unsupported(why)) => {
            eprintln!("veil: note: the signature of {} was not checked: {why}", path.display());
            ExitCode::SUCCESS
        }
        _ => ExitCode::SUCCESS,
    }
}

fn pcrs(args: &PcrsArgs) -> anyhow::Result<ExitCode> {
    let info = load(&args.file)?;
    let m = &info.measurements;
    let text = if args.json { m.to_json().to_string() } else { m.to_json_pretty() };
    println!("{text}");
    Ok(signature_exit(&info, &args.file))
}

fn describe(args: &DescribeArgs) -> anyhow::Result<ExitCode> {
    let info = load(&args.file)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut v = serde_json::to_value(&info).context("serializing the description")?;
        if let (Some(obj), serde_json::Value::Object(m)) = (v.as_object_mut(), info.measurements.to_json()) {
            obj.insert("file".into(), json!(args.file.display().to_string()));
            obj.extend(m);
            if let Some(sig) = &info.signature {
                obj.insert(
                    "signing_certificate_currently_valid".into(),
                    json!(sig.not_before_unix <= now && now <= sig.not_after_unix),
                );
            }
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        write_text(&mut out, &args.file, &info, now)?;
    }
    drop(out);
    Ok(signature_exit(&info, &args.file))
}

fn write_text(out: &mut impl Write, path: &Path, info: &EifInfo, now: i64) -> std::io::Result<()> {
    writeln!(out, "EIF {} ({} bytes)", path.display(), info.total_size)?;
    writeln!(
        out,
        "  format version {}, {}, flags {:#06x}, suggested memory {} MiB, suggested CPUs {}",
        info.version,
        info.arch,
        info.flags,
        info.default_mem / (1024 * 1024),
        info.default_cpus
    )?;
    let crc_note = if info.version >= 2 { "matches the contents" } else { "not used before version 2" };
    writeln!(out, "  CRC32 {:08x} ({crc_note})", info.crc32)?;
    writeln!(out)?;
    writeln!(out, "Sections:")?;
    writeln!(out, "  {:>2}  {:<9}  {:>12}  {:>12}  sha384", "#", "type", "offset", "size")?;
    for s in &info.sections {
        writeln!(out, "  {:>2}  {:<9}  {:>12}  {:>12}  {}", s.index, s.kind, s.offset, s.size, s.sha384)?;
        if s.flags != 0 {
            writeln!(out, "      (section flags {:#06x}: nitro-cli always writes 0)", s.flags)?;
        }
    }
    writeln!(out)?;
    writeln!(out, "Cmdline: {}", info.cmdline)?;
    writeln!(out)?;
    writeln!(out, "Measurements (SHA-384):")?;
    // Reading an EIF always measures PCR0, PCR1 and PCR2.
    let pcr = |i| info.measurements.pcr(i).map(hex::encode).unwrap_or_default();
    writeln!(out, "  PCR0 {}  kernel + cmdline + all ramdisks", pcr(0))?;
    writeln!(out, "  PCR1 {}  kernel + cmdline + first ramdisk", pcr(1))?;
    writeln!(out, "  PCR2 {}  ramdisks after the first", pcr(2))?;
    match info.measurements.pcr(8) {
        Some(p) => writeln!(out, "  PCR8 {}  signing certificate", hex::encode(p))?,
        None => writeln!(out, "  PCR8 (unsigned image: reads as all zeros in attestation documents)")?,
    }
    writeln!(out)?;
    match &info.metadata {
        Some(meta) => {
            writeln!(out, "Metadata (not measured):")?;
            for (k, v) in meta.as_object().into_iter().flatten() {
                let shown = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                writeln!(out, "  {k}: {shown}")?;
            }
        }
        None => writeln!(out, "Metadata: none")?,
    }
    writeln!(out)?;
    match &info.signature {
        None => writeln!(out, "Signature: none (unsigned image)")?,
        Some(sig) => {
            writeln!(out, "Signature:")?;
            writeln!(out, "  certificate subject  {}", sig.subject)?;
            writeln!(out, "  certificate issuer   {}", sig.issuer)?;
            writeln!(out, "  serial               {}", sig.serial)?;
            let validity = if now < sig.not_before_unix {
                "NOT YET VALID now"
            } else if now > sig.not_after_unix {
                "EXPIRED now: nitro-cli refuses to run images signed with an expired certificate"
            } else {
                "valid now"
            };
            writeln!(out, "  valid                {} to {} ({validity})", sig.not_before, sig.not_after)?;
            writeln!(out, "  sha256 fingerprint   {}", sig.sha256_fingerprint)?;
            let check = match &sig.check {
                SignatureCheck::Valid => "valid: the certificate's key signed this image's PCR0".to_string(),
                SignatureCheck::Invalid(why) => format!("INVALID: {why}"),
                SignatureCheck::Unsupported(why) => format!("not checked: {why}"),
            };
            writeln!(out, "  signature over PCR0  {check}")?;
        }
    }
    Ok(())
}

fn read_input(what: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow!("cannot read the {what} {}: {e}", path.display()))
}

/// The kernel, cmdline, bootstrap ramdisk and kernel version taken from nitro-cli's blobs directory.
struct Blobs {
    kernel: Vec<u8>,
    cmdline: String,
    bootstrap: Vec<u8>,
    kernel_version: Option<String>,
}

fn read_blobs(dir: &Path, arch: ArchArg) -> anyhow::Result<Blobs> {
    let kernel_name = match arch {
        ArchArg::X86_64 => "bzImage",
        ArchArg::Aarch64 => "Image",
    };
    let blob = |name: &str| read_input(&format!("blob {name} (--blobs)"), &dir.join(name));
    let kernel = blob(kernel_name)?;
    let cmdline = String::from_utf8(blob("cmdline")?)
        .map_err(|_| anyhow!("{} is not UTF-8 text", dir.join("cmdline").display()))?
        .trim()
        .to_owned();
    let bootstrap = bootstrap_ramdisk(&blob("init")?, &blob("nsm.ko")?, 0)?;
    // nitro-cli reads the version from `<kernel>.config`; it is metadata only, so a missing file is no error.
    let config = std::fs::read(dir.join(format!("{kernel_name}.config"))).ok();
    let kernel_version =
        config.and_then(|c| kernel_config_version(&String::from_utf8_lossy(&c))).map(|(_, version)| version);
    Ok(Blobs { kernel, cmdline, bootstrap, kernel_version })
}

/// Writes a file through `write` to a temporary name beside `path`, syncs it and renames it into
/// place, so that a failure never leaves a half-written file under the final name.
fn write_atomically<T>(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<File>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let file_name = path.file_name().with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp-{}", file_name.to_string_lossy(), std::process::id()));
    let result = (|| -> anyhow::Result<T> {
        let file = File::create(&tmp).map_err(|e| anyhow!("cannot create {}: {e}", tmp.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        let out = write(&mut w)?;
        let file = w.into_inner().map_err(|e| anyhow!("writing {}: {}", tmp.display(), e.error()))?;
        file.sync_all().map_err(|e| anyhow!("flushing {} to disk: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| anyhow!("cannot move {} to {}: {e}", tmp.display(), path.display()))?;
        Ok(out)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let blobs = args.blobs.as_deref().map(|dir| read_blobs(dir, args.arch)).transpose()?;
    let (kernel, cmdline) = match (&blobs, &args.kernel, &args.cmdline) {
        (Some(b), _, _) => (b.kernel.clone(), b.cmdline.clone()),
        (None, Some(k), Some(c)) => (read_input("kernel", k)?, c.clone()),
        // clap requires both unless --blobs is given.
        _ => bail!("give --blobs DIR, or both --kernel and --cmdline"),
    };
    let mut ramdisks = Vec::new();
    if let Some(b) = &blobs {
        ramdisks.push(b.bootstrap.clone());
    }
    for (i, p) in args.ramdisks.iter().enumerate() {
        ramdisks.push(read_input(&format!("ramdisk #{}", i + 1), p)?);
    }
    let signer = match (&args.signing_key, &args.signing_cert) {
        (Some(k), Some(c)) => Some(
            Signer::from_pem(&read_input("signing key", k)?, &read_input("signing certificate", c)?)
                .map_err(|e| anyhow!("{e} (key {}, certificate {})", k.display(), c.display()))?,
        ),
        (None, None) => None,
        _ => bail!("--signing-key and --signing-cert go together"),
    };
    let custom = match &args.metadata {
        Some(p) => serde_json::from_slice(&read_input("metadata file", p)?)
            .map_err(|e| anyhow!("--metadata {} is not valid JSON: {e}", p.display()))?,
        None => serde_json::Value::Null,
    };
    let kernel_version = args
        .kernel_version
        .clone()
        .or_else(|| blobs.as_ref().and_then(|b| b.kernel_version.clone()))
        .unwrap_or_else(|| "unknown".into());

    let mut builder = EifBuilder::new(&kernel, &cmdline)?
        .arch(match args.arch {
            ArchArg::X86_64 => Arch::X86_64,
            ArchArg::Aarch64 => Arch::Aarch64,
        })
        .defaults(args.memory_mib.saturating_mul(1024 * 1024), args.cpus);
    for rd in &ramdisks {
        builder = builder.ramdisk(rd);
    }
    if !args.no_metadata {
        builder = builder.metadata(&EifIdentity {
            image_name: args.name.clone(),
            image_version: args.image_version.clone(),
            build: BuildInfo {
                build_time: format_rfc3339(args.source_date_epoch.unwrap_or(0), UtcSuffix::Offset)
                    .context("SOURCE_DATE_EPOCH is after the year 9999")?,
                build_tool: "veil eif build".into(),
                build_tool_version: env!("CARGO_PKG_VERSION").into(),
                operating_system: "Linux".into(),
                kernel_version,
            },
            docker_info: serde_json::Value::Null,
            custom,
        })?;
    }
    if let Some(s) = &signer {
        builder = builder.sign(s);
    }

    let out = write_atomically(&args.output, |w| {
        builder.write_to(w).map_err(|e| anyhow!("writing {}: {e}", args.output.display()))
    })?;
    eprintln!(
        "veil: wrote {} ({} bytes, CRC32 {:08x}{})",
        args.output.display(),
        out.size,
        out.crc32,
        if signer.is_some() { ", signed" } else { "" }
    );
    println!("{}", out.measurements.to_json_pretty());
    Ok(ExitCode::SUCCESS)
}

fn ramdisk(args: &RamdiskArgs) -> anyhow::Result<ExitCode> {
    let mut sources = Vec::with_capacity(args.files.len());
    for spec in &args.files {
        let (image_path, source) = spec
            .split_once('=')
            .with_context(|| format!("--file {spec:?}: expected IMAGE_PATH=SOURCE, e.g. /usr/bin/app=target/app"))?;
        let source = Path::new(source);
        let data = read_input(&format!("file for {image_path}"), source)?;
        let meta = std::fs::metadata(source).map_err(|e| anyhow!("cannot read {}: {e}", source.display()))?;
        // Only whether the owner may execute it counts: the umask and the checkout must not.
        let mode =
            if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o100 != 0 { 0o755 } else { 0o644 };
        sources.push((image_path.to_owned(), mode, data));
    }
    let mut app = AppRamdisk::new(args.command.clone()).mtime(args.mtime);
    for (image_path, mode, data) in &sources {
        app.file(image_path, *mode, data)?;
    }
    for entry in &args.env {
        let (name, value) = entry.split_once('=').with_context(|| format!("--env {entry:?}: expected NAME=VALUE"))?;
        app.env(name, value)?;
    }
    let bytes = app.to_bytes()?;
    write_atomically(&args.output, |w| {
        w.write_all(&bytes).map_err(|e| anyhow!("writing {}: {e}", args.output.display()))
    })?;
    let sha384 = hex::encode(ring::digest::digest(&ring::digest::SHA384, &bytes));
    eprintln!(
        "veil: wrote {} ({} bytes, {} files, SHA-384 {sha384}); the PCR2 of an image with this one application ramdisk is {}",
        args.output.display(),
        bytes.len(),
        sources.len(),
        veil_eif::Pcr::of_blob(&bytes)
    );
    Ok(ExitCode::SUCCESS)
}

/// Reads one side of `veil eif diff`: an EIF (checked and measured) or a bare ramdisk.
fn load_for_diff(path: &Path) -> anyhow::Result<(Vec<u8>, Option<EifInfo>)> {
    let bytes = read_input("file", path)?;
    if bytes.starts_with(b".eif") {
        let info = read_eif_bytes(&bytes).map_err(|e| anyhow!("{} is not a valid EIF: {e}", path.display()))?;
        Ok((bytes, Some(info)))
    } else if bytes.starts_with(b"0707") {
        Ok((bytes, None))
    } else {
        bail!("{} is neither an EIF (it would start with \".eif\") nor a cpio ramdisk (\"0707...\")", path.display())
    }
}

/// The first difference between two ramdisks: the file, or the byte when one is not a readable archive.
fn ramdisk_difference(a: &[u8], b: &[u8]) -> String {
    let read = |bytes| -> Result<Vec<CpioEntry<'_>>, String> { cpio::read_archive(bytes).map_err(|e| e.to_string()) };
    match (read(a), read(b)) {
        (Ok(ea), Ok(eb)) => match cpio::first_difference(&ea, &eb) {
            Some(d) => match d.path {
                Some(path) => format!("first differing file: {path}: {}", d.what),
                None => d.what,
            },
            None => format!(
                "every file is the same; the archives differ from byte {} (trailer or padding)",
                first_differing_byte(a, b)
            ),
        },
        (Err(e), _) | (_, Err(e)) => {
            format!("differ from byte {} (not compared file by file: {e})", first_differing_byte(a, b))
        }
    }
}

/// A section's data in a whole EIF that `read_eif_bytes` accepted (so the section table is right).
fn section_data<'b>(eif: &'b [u8], s: &veil_eif::SectionInfo) -> &'b [u8] {
    let start = (s.offset as usize).saturating_add(SECTION_HEADER_LEN);
    eif.get(start..start.saturating_add(s.size as usize)).unwrap_or_default()
}

fn first_differing_byte(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()))
}

fn diff(args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let (a, info_a) = load_for_diff(&args.a)?;
    let (b, info_b) = load_for_diff(&args.b)?;
    let mut pcrs = serde_json::Map::new();
    let mut findings: Vec<String> = Vec::new();
    match (&info_a, &info_b) {
        (Some(ia), Some(ib)) => {
            let indices: std::collections::BTreeSet<u16> =
                ia.measurements.pcrs().keys().chain(ib.measurements.pcrs().keys()).copied().collect();
            for i in indices {
                let (pa, pb) = (ia.measurements.pcr(i).map(hex::encode), ib.measurements.pcr(i).map(hex::encode));
                pcrs.insert(format!("PCR{i}"), json!({"equal": pa == pb, "a": pa, "b": pb}));
            }
            if ia.sections.len() != ib.sections.len() {
                findings.push(format!("{} sections against {}", ia.sections.len(), ib.sections.len()));
            }
            let mut ramdisk_index = 0;
            for (sa, sb) in ia.sections.iter().zip(&ib.sections) {
                let what = match sa.kind {
                    SectionKind::Ramdisk => {
                        ramdisk_index += 1;
                        let pcr = if ramdisk_index == 1 { "PCR0, PCR1" } else { "PCR0, PCR2" };
                        format!("ramdisk #{ramdisk_index}, measured into {pcr}")
                    }
                    SectionKind::Kernel | SectionKind::Cmdline => format!("{}, measured into PCR0, PCR1", sa.kind),
                    SectionKind::Metadata => "metadata, not measured".to_string(),
                    SectionKind::Signature => "signature, PCR8 measures its certificate".to_string(),
                };
                if sa.kind != sb.kind {
                    findings.push(format!("section {}: a {} section against a {} section", sa.index, sa.kind, sb.kind));
                    break;
                }
                if sa.sha384 == sb.sha384 {
                    continue;
                }
                let (da, db) = (section_data(&a, sa), section_data(&b, sb));
                let detail = match sa.kind {
                    SectionKind::Ramdisk => ramdisk_difference(da, db),
                    _ => format!(
                        "differs from byte {} ({} bytes against {})",
                        first_differing_byte(da, db),
                        sa.size,
                        sb.size
                    ),
                };
                findings.push(format!("section {} ({what}): {detail}", sa.index));
            }
            if findings.is_empty() && a != b {
                findings.push(format!(
                    "every section is the same; the headers differ (flags {:#06x}/{:#06x}, memory {}/{} bytes, CPUs {}/{})",
                    ia.flags, ib.flags, ia.default_mem, ib.default_mem, ia.default_cpus, ib.default_cpus
                ));
            }
        }
        (None, None) => {
            if a != b {
                findings.push(format!("ramdisk: {}", ramdisk_difference(&a, &b)));
            }
        }
        _ => bail!("{} and {} are not both EIFs or both ramdisks", args.a.display(), args.b.display()),
    }
    let identical = a == b;
    if args.json {
        let report = json!({
            "a": args.a.display().to_string(),
            "b": args.b.display().to_string(),
            "identical": identical,
            "pcrs": pcrs,
            "differences": findings,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if identical {
        println!("{} and {} are identical ({} bytes)", args.a.display(), args.b.display(), a.len());
    } else {
        println!("{} and {} differ:", args.a.display(), args.b.display());
        for (name, v) in &pcrs {
            let state = if v["equal"] == true { "equal" } else { "DIFFERS" };
            println!("  {name}  {state}");
        }
        // File names come from the ramdisks, which may be anyone's: no terminal escapes reach the screen.
        for f in &findings {
            println!("  {}", super::attest::clean(f));
        }
    }
    Ok(if identical { ExitCode::SUCCESS } else { ExitCode::from(super::EXIT_FAILED) })
}

fn file_len(what: &str, path: &Path) -> anyhow::Result<u64> {
    std::fs::metadata(path).map(|m| m.len()).map_err(|e| anyhow!("cannot read the {what} {}: {e}", path.display()))
}

fn size(args: &SizeArgs) -> anyhow::Result<ExitCode> {
    let eif = file_len("EIF", &args.file)?;
    let models = args
        .models
        .iter()
        .map(|m| {
            // Accept veil-parent's NAME=PATH form; a bare path may itself contain '='.
            let path = match m.split_once('=') {
                Some((_, p)) if !Path::new(m).exists() => p,
                _ => m.as_str(),
            };
            file_len("model", Path::new(path))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sessions = args.sessions.unwrap_or(args.cpus);
    let s = recommend_memory(eif, &models, args.cpus, sessions);
    if args.mib {
        println!("{}", s.memory_mib);
    } else if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!("nitro-cli run-enclave --cpu-count {} --memory {}", s.cpus, s.memory_mib);
        println!(
            "  EIF {} MiB (nitro-cli minimum {} MiB), models {} MiB x (2 + {} sessions), + 512 MiB: {} MiB, rounded up to {} MiB",
            s.eif_mib, s.nitro_cli_minimum_mib, s.models_mib, s.sessions, s.estimate_mib, s.memory_mib
        );
        if args.cpus % 2 == 1 {
            eprintln!(
                "veil: note: {} vCPUs is odd; on x86_64 instances with hyper-threading nitro-cli needs whole cores (an even count)",
                args.cpus
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `veil eif`: measure, describe, build and compare Enclave Image Files, and write their ramdisks, on
//! the operator's or auditor's machine, without Docker or nitro-cli.
//!
//! All parsing and hashing lives in the pure `veil-eif` crate; these modules open files, choose output
//! formats and turn library errors into messages that name the file. Here: `pcrs`, `describe`, `size`;
//! in [`build`]: `build` and `ramdisk`; in [`diff`]: `diff`.
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
use clap::{Args, Subcommand};
use serde_json::json;
use veil_eif::{EifInfo, SignatureCheck, read_eif, recommend_memory};

/// Exit code when the signature section of an EIF does not verify: a failed verification.
mod build;
mod diff;

pub use build::{BuildArgs, RamdiskArgs};
pub use diff::DiffArgs;

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

/// Runs an `eif` subcommand and returns the process exit code.
pub fn run(cmd: EifCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EifCommand::Pcrs(args) => pcrs(&args),
        EifCommand::Describe(args) => describe(&args),
        EifCommand::Build(args) => build::build(*args),
        EifCommand::Size(args) => size(&args),
        EifCommand::Ramdisk(args) => build::ramdisk(&args),
        EifCommand::Diff(args) => diff::diff(&args),
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
    use std::io::Read;
    // An image's parts and the images themselves are loaded whole: bounded, so that a device or a pipe
    // named as an input ends in an error rather than in exhausted memory.
    const MAX_INPUT: u64 = 4 << 30;
    let file = File::open(path).map_err(|e| anyhow!("cannot read the {what} {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_INPUT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow!("cannot read the {what} {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_INPUT {
        bail!("the {what} {} is larger than {} GiB: not an enclave image's part", path.display(), MAX_INPUT >> 30);
    }
    Ok(bytes)
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

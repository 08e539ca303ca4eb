//! `veil eif build` and `veil eif ramdisk`: an EIF from a kernel, its command line and ramdisks (or
//! nitro-cli's blobs directory), and a deterministic application ramdisk, without Docker or nitro-cli.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::{Args, ValueEnum};
use veil_eif::ramdisk::{AppRamdisk, bootstrap_ramdisk, kernel_config_version};
use veil_eif::{Arch, BuildInfo, EifBuilder, EifIdentity, Signer};
use veil_protocol::time::{MAX_UNIX_SECONDS, UtcSuffix, format_rfc3339};

use super::{read_input, write_atomically};

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

pub(super) fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
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

pub(super) fn ramdisk(args: &RamdiskArgs) -> anyhow::Result<ExitCode> {
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

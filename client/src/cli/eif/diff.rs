//! `veil eif diff`: two EIFs (or two ramdisks) compared section by section, PCR by PCR, and, inside a
//! ramdisk, file by file, naming the first difference: what an auditor runs when a rebuild does not
//! match a release.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::Args;
use serde_json::json;
use veil_eif::cpio::{self, CpioEntry};
use veil_eif::format::SECTION_HEADER_LEN;
use veil_eif::{EifInfo, SectionKind, read_eif_bytes};

use super::read_input;

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

/// Reads one side of `veil eif diff`: an EIF (checked and measured) or a bare ramdisk.
fn load_for_diff(path: &Path) -> anyhow::Result<(Vec<u8>, Option<EifInfo>)> {
    // The kind first, from the first bytes: anything else (a device, a stray file) is refused unread.
    let mut magic = [0u8; 4];
    let head = std::fs::File::open(path).and_then(|mut f| std::io::Read::read(&mut f, &mut magic));
    head.map_err(|e| anyhow!("cannot read the file {}: {e}", path.display()))?;
    if &magic != b".eif" && &magic != b"0707" {
        bail!("{} is neither an EIF (it would start with \".eif\") nor a cpio ramdisk (\"0707...\")", path.display())
    }
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

pub(super) fn diff(args: &DiffArgs) -> anyhow::Result<ExitCode> {
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
            println!("  {}", crate::cli::attest::clean(f));
        }
    }
    Ok(if identical { ExitCode::SUCCESS } else { ExitCode::from(crate::cli::EXIT_FAILED) })
}

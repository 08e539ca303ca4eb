//! `veil eif ramdisk`, `veil eif build --blobs` and `veil eif diff`: the real `veil` binary, as
//! scripts/reproduce.sh and an auditor run it, on stand-in blobs in a temp dir.
//!
//! The expected PCRs are computed here from the formula (SHA-384 of 48 zero bytes and the SHA-384 of the
//! measured bytes) with `ring`, not with veil-eif's own `Pcr`; the ramdisk layouts are read back with
//! veil-eif's reader, which tests/cpio.rs checks against GNU cpio.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{ok, stderr, stdout};

use veil_eif::cpio::{EntryKind, read_archive};
use veil_eif::read_eif_bytes;

const CMDLINE: &str = "reboot=k panic=30 pci=off nomodules console=ttyS0";

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let blobs = p.join("blobs");
        std::fs::create_dir(&blobs).unwrap();
        std::fs::write(blobs.join("bzImage"), (0..50_000u32).map(|i| (i % 253) as u8).collect::<Vec<_>>()).unwrap();
        std::fs::write(
            blobs.join("bzImage.config"),
            "#\n# Automatically generated file; DO NOT EDIT.\n# Linux/x86_64 6.6.79 Kernel Configuration\n#\n",
        )
        .unwrap();
        // nitro-cli's cmdline file ends with a newline; nitro-cli trims it.
        std::fs::write(blobs.join("cmdline"), format!("{CMDLINE}\n")).unwrap();
        std::fs::write(blobs.join("init"), b"stand-in init\n".repeat(100)).unwrap();
        std::fs::write(blobs.join("nsm.ko"), b"stand-in module").unwrap();
        write_mode(&p.join("app"), b"\x7fELF the application", 0o750);
        write_mode(&p.join("app.toml"), b"[kms]\nregion = \"eu-west-1\"\n", 0o600);
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn veil(&self, args: &[&str]) -> Output {
        common::veil(self.dir.path(), args)
    }

    /// `veil eif ramdisk` with the fixture's application, into `out`.
    fn ramdisk(&self, out: &str, app: &str) -> Output {
        self.veil(&[
            "eif",
            "ramdisk",
            "--output",
            out,
            "--file",
            &format!("/usr/bin/app={app}"),
            "--file",
            "/etc/app/app.toml=app.toml",
            "--env",
            "RUST_LOG=info",
            "--env",
            "LD_LIBRARY_PATH=/lib:/usr/lib",
            "--",
            "/usr/bin/app",
            "--config",
            "/etc/app/app.toml",
        ])
    }

    fn build(&self, ramdisk: &str, out: &str) -> Output {
        self.veil(&["eif", "build", "--blobs", "blobs", "--ramdisk", ramdisk, "--output", out])
    }
}

fn write_mode(path: &Path, data: &[u8], mode: u32) {
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn pcr(parts: &[&[u8]]) -> String {
    let mut inner = ring::digest::Context::new(&ring::digest::SHA384);
    for p in parts {
        inner.update(p);
    }
    let mut outer = ring::digest::Context::new(&ring::digest::SHA384);
    outer.update(&[0u8; 48]);
    outer.update(inner.finish().as_ref());
    hex::encode(outer.finish())
}

#[test]
fn ramdisk_and_build_with_blobs_lay_out_the_image_as_aws_init_expects() {
    let f = Fixture::new();
    ok(&f.ramdisk("app.cpio", "app"));
    let app = std::fs::read(f.path("app.cpio")).unwrap();
    let entries = read_archive(&app).unwrap();
    let by_name = |n: &str| entries.iter().find(|e| e.name == n.as_bytes()).unwrap_or_else(|| panic!("{n} missing"));
    assert_eq!(by_name("cmd").data, b"/usr/bin/app\n--config\n/etc/app/app.toml\n");
    assert_eq!(by_name("env").data, b"RUST_LOG=info\nLD_LIBRARY_PATH=/lib:/usr/lib\n");
    for dir in ["rootfs", "rootfs/dev", "rootfs/proc", "rootfs/run", "rootfs/sys", "rootfs/tmp", "rootfs/var"] {
        assert_eq!(by_name(dir).kind, EntryKind::Directory, "{dir}");
    }
    // Modes normalised: the owner's execute bit decides, the rest of the source's mode does not count.
    assert_eq!(by_name("rootfs/usr/bin/app").permissions(), 0o755);
    assert_eq!(by_name("rootfs/etc/app/app.toml").permissions(), 0o644);
    assert!(entries.iter().all(|e| e.uid == 0 && e.gid == 0 && e.mtime == 0));

    let o = f.build("app.cpio", "image.eif");
    ok(&o);
    let eif = std::fs::read(f.path("image.eif")).unwrap();
    let info = read_eif_bytes(&eif).unwrap();
    assert_eq!(info.cmdline, CMDLINE, "the blobs' cmdline, trimmed as nitro-cli does");
    assert_eq!(info.metadata.as_ref().unwrap()["BuildMetadata"]["KernelVersion"], "6.6.79");

    // The first ramdisk is nitro-cli's bootstrap layout, made from the blobs' init and nsm.ko.
    let sections: Vec<_> = info.sections.iter().filter(|s| s.kind == veil_eif::SectionKind::Ramdisk).collect();
    assert_eq!(sections.len(), 2);
    let data = |s: &veil_eif::SectionInfo| &eif[s.offset as usize + 12..(s.offset + 12 + s.size) as usize];
    let boot = data(sections[0]);
    let boot_entries = read_archive(boot).unwrap();
    let names: Vec<String> = boot_entries.iter().map(|e| e.path()).collect();
    assert_eq!(names, ["dev", "init", "nsm.ko"]);
    assert!(boot_entries.iter().all(|e| e.permissions() == 0o755));
    assert_eq!(boot_entries[1].data, std::fs::read(f.path("blobs/init")).unwrap());
    assert_eq!(data(sections[1]), app.as_slice());

    let kernel = std::fs::read(f.path("blobs/bzImage")).unwrap();
    let m = stdout(&o);
    assert!(m.contains(&pcr(&[&kernel, CMDLINE.as_bytes(), boot, &app])), "PCR0: {m}");
    assert!(m.contains(&pcr(&[&kernel, CMDLINE.as_bytes(), boot])), "PCR1: {m}");
    assert!(m.contains(&pcr(&[&app])), "PCR2: {m}");
    assert!(m.starts_with("{\n  \"Measurements\": {\n    \"HashAlgorithm\": \"Sha384 { ... }\""), "{m}");
}

#[test]
fn ramdisks_do_not_depend_on_the_source_files_times_or_modes() {
    let f = Fixture::new();
    ok(&f.ramdisk("one.cpio", "app"));
    // The same bytes in a file with another mode and another mtime.
    write_mode(&f.path("app-copy"), b"\x7fELF the application", 0o700);
    std::fs::File::options()
        .write(true)
        .open(f.path("app-copy"))
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_234_567))
        .unwrap();
    ok(&f.ramdisk("two.cpio", "app-copy"));
    assert_eq!(std::fs::read(f.path("one.cpio")).unwrap(), std::fs::read(f.path("two.cpio")).unwrap());
    ok(&f.build("one.cpio", "one.eif"));
    ok(&f.build("two.cpio", "two.eif"));
    assert_eq!(std::fs::read(f.path("one.eif")).unwrap(), std::fs::read(f.path("two.eif")).unwrap());
}

#[test]
fn diff_names_the_first_differing_file_in_the_ramdisk() {
    let f = Fixture::new();
    ok(&f.ramdisk("app.cpio", "app"));
    ok(&f.build("app.cpio", "a.eif"));
    write_mode(&f.path("app2"), b"\x7fELF the applicatioN", 0o755);
    ok(&f.ramdisk("app2.cpio", "app2"));
    ok(&f.build("app2.cpio", "b.eif"));

    let same = f.veil(&["eif", "diff", "a.eif", "a.eif"]);
    assert_eq!(same.status.code(), Some(0), "{}", stderr(&same));
    assert!(stdout(&same).contains("are identical"), "{}", stdout(&same));

    let o = f.veil(&["eif", "diff", "a.eif", "b.eif"]);
    assert_eq!(o.status.code(), Some(1), "a difference is a failed check: {}", stderr(&o));
    let text = stdout(&o);
    for needle in [
        "PCR0  DIFFERS",
        "PCR1  equal",
        "PCR2  DIFFERS",
        "ramdisk #2, measured into PCR0, PCR2",
        "first differing file: rootfs/usr/bin/app: contents differ from byte 19 (both 20 bytes)",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&f.veil(&["eif", "diff", "--json", "a.eif", "b.eif"]).stdout).unwrap();
    assert_eq!(json["identical"], false);
    assert_eq!(json["pcrs"]["PCR1"]["equal"], true);
    assert_eq!(json["pcrs"]["PCR2"]["equal"], false);

    // Two ramdisks compare directly too.
    let o = f.veil(&["eif", "diff", "app.cpio", "app2.cpio"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("rootfs/usr/bin/app: contents differ from byte 19"), "{}", stdout(&o));

    // Unreadable input is a usage error, not a difference.
    std::fs::write(f.path("notes.txt"), b"not an image").unwrap();
    let o = f.veil(&["eif", "diff", "a.eif", "notes.txt"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("neither an EIF"), "{}", stderr(&o));
    let o = f.veil(&["eif", "diff", "a.eif", "app.cpio"]);
    assert_eq!(o.status.code(), Some(2));
    // An endless device is refused from its first bytes, never read whole.
    let o = f.veil(&["eif", "diff", "a.eif", "/dev/zero"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("neither an EIF"), "{}", stderr(&o));
}

/// A one-file newc archive written by hand, so that the name can be anything a hostile ramdisk holds.
fn newc_one_file(name: &[u8], data: &[u8]) -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, name: &[u8], mode: u32, data: &[u8]) {
        let fields = [1, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
        out.extend_from_slice(b"070701");
        fields.iter().for_each(|f| out.extend_from_slice(format!("{f:08x}").as_bytes()));
        out.extend_from_slice(name);
        out.push(0);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    let mut out = Vec::new();
    entry(&mut out, name, 0o100644, data);
    entry(&mut out, b"TRAILER!!!", 0, b"");
    out
}

#[test]
fn diff_prints_a_hostile_ramdisks_file_names_without_terminal_escapes() {
    let f = Fixture::new();
    let name = b"evil\x1b[2K\x1b[1Aname";
    std::fs::write(f.path("x.cpio"), newc_one_file(name, b"one")).unwrap();
    std::fs::write(f.path("y.cpio"), newc_one_file(name, b"two")).unwrap();
    let o = f.veil(&["eif", "diff", "x.cpio", "y.cpio"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(!text.contains('\x1b'), "an escape reached the terminal: {text:?}");
    assert!(text.contains("evil\\u{1b}[2K\\u{1b}[1Aname"), "the name, escaped: {text}");
}

#[test]
fn ramdisk_refuses_what_aws_init_could_not_run() {
    let f = Fixture::new();
    for (args, needle) in [
        (vec!["--file", "/usr/bin/app=app", "--", "/usr/bin/other"], "is not an executable file of the image"),
        (vec!["--file", "/usr/bin/app", "--", "/usr/bin/app"], "expected IMAGE_PATH=SOURCE"),
        (vec!["--file", "/tmp/app=app", "--", "/tmp/app"], "which would hide it"),
        (vec!["--file", "usr/bin/app=app", "--", "/usr/bin/app"], "must be absolute"),
        (vec!["--file", "/usr/bin/app=missing", "--", "/usr/bin/app"], "cannot read the file for /usr/bin/app missing"),
        (vec!["--file", "/usr/bin/app=app", "--env", "NOVALUE", "--", "/usr/bin/app"], "expected NAME=VALUE"),
        (vec!["--file", "/etc/x=app.toml", "--", "/etc/x"], "is not an executable file"),
    ] {
        let mut full = vec!["eif", "ramdisk", "--output", "out.cpio"];
        full.extend(args.iter().copied());
        let o = f.veil(&full);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {needle:?} not in {}", stderr(&o));
        assert!(!f.path("out.cpio").exists(), "{args:?} left an output");
    }
    // No command at all is clap's usage error.
    let o = f.veil(&["eif", "ramdisk", "--output", "out.cpio", "--file", "/usr/bin/app=app"]);
    assert!(!o.status.success());
}

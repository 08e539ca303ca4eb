//! End-to-end tests of `veil eif`: the real `veil` binary on synthetic files in a temp dir.
//!
//! The expected PCRs below were computed outside Rust, so a bug in veil-eif cannot make its own
//! expectation. To recompute them (Python 3):
//!
//! ```text
//! import hashlib
//! k  = bytes((i*7+3) % 256 for i in range(100_000))
//! c  = b"console=ttyS0 reboot=k panic=30 pci=off nomodules veil=test"
//! r1 = b"init-ramdisk\n" * 1000
//! r2 = bytes((i*i) % 251 for i in range(70_000))
//! pcr = lambda d: hashlib.sha384(b"\0"*48 + hashlib.sha384(d).digest()).hexdigest()
//! pcr(k+c+r1+r2), pcr(k+c+r1), pcr(r2)
//! ```
//!
//! and PCR8 with OpenSSL, the way nitro-cli does it:
//! `(head -c 48 /dev/zero; openssl x509 -in cert.pem -outform DER | openssl dgst -sha384 -binary) | openssl dgst -sha384`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{ok, stderr, stdout};

const PCR0: &str = "2f4d984baebe22619b9597f77adeaf676caea8cc854e40b6ffcb89ad503af7ddad2b8b74fc4b08298fbf5a7030ac13ce";
const PCR1: &str = "07d58a77faacdb683423e1070b148b0a239787c0fa0d0816fe4f9b57ea5320355a85a8b3800d5d7f81af05bb6193ab58";
const PCR2: &str = "40f3f4e3c4872f618481cd4f4964f98c6b211b3c96773ecd44860a9bfd41f6503631be2dfcea2a1c9eaf204bdf4e26ba";
const PCR8: &str = "90ae8ff4d70f2fac623dd62bb4f4b2cc8cea1557dd7767cf88d1d7766347008c0cbfb6200b71cdb173c28183f3726aca";
const CMDLINE: &str = "console=ttyS0 reboot=k panic=30 pci=off nomodules veil=test";

/// A throwaway P-384 key (SEC1, as `openssl ecparam -name secp384r1 -genkey -noout` writes it)
/// and its self-signed certificate, valid until 2126. Test material only: it signs nothing real.
const TEST_KEY: &str = "-----BEGIN EC PRIVATE KEY-----
MIGkAgEBBDCCRBoCYOb4Hdzj0n13N+Mhk2X8M3T5iL9SoVMPewhPLT30b51WVQVH
yjLIjUpJaP6gBwYFK4EEACKhZANiAASIEV6vv70bMIAvy8++8rFTopc2n9DjNDNr
T6t7RCtKc6E3NTGb0K4bujBRbTaAIZH+7hxBPTIYNsQVqPSv+x4HROxe5vU/yzHj
tE/QzN421AJnrR8M6LBE8LqP8TK7j8U=
-----END EC PRIVATE KEY-----
";
const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIICKTCCAbCgAwIBAgIURfRgoxlg7XQ5rY/VVjqbaGbg0lswCgYIKoZIzj0EAwIw
SzE0MDIGA1UEAwwrVmVpbCBDTEkgdGVzdCBzaWduZXIgKHRocm93YXdheSwgdGVz
dCBvbmx5KTETMBEGA1UECgwKVmVpbCB0ZXN0czAgFw0yNjExMjUwNDA5MTJaGA8y
MTI2MTEwMTA0MDkxMlowSzE0MDIGA1UEAwwrVmVpbCBDTEkgdGVzdCBzaWduZXIg
KHRocm93YXdheSwgdGVzdCBvbmx5KTETMBEGA1UECgwKVmVpbCB0ZXN0czB2MBAG
ByqGSM49AgEGBSuBBAAiA2IABIgRXq+/vRswgC/Lz77ysVOilzaf0OM0M2tPq3tE
K0pzoTc1MZvQrhu6MFFtNoAhkf7uHEE9Mhg2xBWo9K/7HgdE7F7m9T/LMeO0T9DM
3jbUAmetHwzosETwuo/xMruPxaNTMFEwHQYDVR0OBBYEFNWUMc2zyAdcWnmOCjck
+KzILeXJMB8GA1UdIwQYMBaAFNWUMc2zyAdcWnmOCjck+KzILeXJMA8GA1UdEwEB
/wQFMAMBAf8wCgYIKoZIzj0EAwIDZwAwZAIwMEcToVpzyFVLLnDCcIti3L5exnDv
z1EcpHFmxhOlyVNKW7p22fdmGB3iqU9EmeQ6AjBDcsmh6uYcGTWJm3EMtTMLnRVe
Mk78IJO8x+5TNiMpriafx7IiJ2wgvyRB2G+6FTQ=
-----END CERTIFICATE-----
";

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("bzImage"), (0..100_000u32).map(|i| ((i * 7 + 3) % 256) as u8).collect::<Vec<_>>())
            .unwrap();
        std::fs::write(p.join("init.cpio"), b"init-ramdisk\n".repeat(1000)).unwrap();
        std::fs::write(p.join("app.cpio"), (0..70_000u64).map(|i| ((i * i) % 251) as u8).collect::<Vec<_>>()).unwrap();
        std::fs::write(p.join("key.pem"), TEST_KEY).unwrap();
        std::fs::write(p.join("cert.pem"), TEST_CERT).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn veil(&self, args: &[&str]) -> Output {
        common::veil(self.dir.path(), args)
    }

    fn build(&self, out: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "eif",
            "build",
            "--kernel",
            "bzImage",
            "--cmdline",
            CMDLINE,
            "--ramdisk",
            "init.cpio",
            "--ramdisk",
            "app.cpio",
            "--output",
            out,
        ];
        args.extend_from_slice(extra);
        self.veil(&args)
    }
}

/// nitro-cli's exact output shape for an unsigned image.
fn nitro_json(pcr8: Option<&str>) -> String {
    let mut s = format!(
        "{{\n  \"Measurements\": {{\n    \"HashAlgorithm\": \"Sha384 {{ ... }}\",\n    \"PCR0\": \"{PCR0}\",\n    \"PCR1\": \"{PCR1}\",\n    \"PCR2\": \"{PCR2}\""
    );
    if let Some(p8) = pcr8 {
        s.push_str(&format!(",\n    \"PCR8\": \"{p8}\""));
    }
    s.push_str("\n  }\n}\n");
    s
}

#[test]
fn build_prints_the_independently_computed_pcrs_in_nitro_clis_shape() {
    let f = Fixture::new();
    let o = f.build("enclave.eif", &[]);
    ok(&o);
    assert_eq!(stdout(&o), nitro_json(None));
    assert!(stderr(&o).contains("wrote enclave.eif"), "{}", stderr(&o));
    // And `pcrs` reads the same values back from the file.
    let p = f.veil(&["eif", "pcrs", "enclave.eif"]);
    assert_eq!(stdout(ok(&p)), nitro_json(None));
}

#[test]
fn pcrs_json_is_one_line_with_the_same_values() {
    let f = Fixture::new();
    ok(&f.build("enclave.eif", &[]));
    let o = f.veil(&["eif", "pcrs", "enclave.eif", "--json"]);
    let text = stdout(ok(&o));
    assert_eq!(text.lines().count(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["Measurements"]["PCR0"], PCR0);
    assert_eq!(v["Measurements"]["PCR2"], PCR2);
    assert_eq!(v["Measurements"]["HashAlgorithm"], "Sha384 { ... }");
    assert!(v["Measurements"].get("PCR8").is_none());
}

#[test]
fn builds_are_byte_for_byte_reproducible_and_source_date_epoch_only_touches_metadata() {
    let f = Fixture::new();
    ok(&f.build("a.eif", &[]));
    ok(&f.build("b.eif", &[]));
    let a = std::fs::read(f.path("a.eif")).unwrap();
    let b = std::fs::read(f.path("b.eif")).unwrap();
    assert_eq!(a, b, "two builds of the same inputs differ");

    let o = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["eif", "build", "--kernel", "bzImage", "--cmdline", CMDLINE, "--ramdisk", "init.cpio"])
        .args(["--ramdisk", "app.cpio", "--output", "c.eif"])
        .current_dir(f.dir.path())
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert_eq!(stdout(ok(&o)), nitro_json(None), "metadata must not change the PCRs");
    let c = std::fs::read(f.path("c.eif")).unwrap();
    assert_ne!(a, c);
    let d = f.veil(&["eif", "describe", "c.eif", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(ok(&d))).unwrap();
    assert_eq!(v["metadata"]["BuildMetadata"]["BuildTime"], "2023-11-14T22:13:20+00:00");
}

#[test]
fn describe_shows_sections_cmdline_and_pcrs() {
    let f = Fixture::new();
    ok(&f.build("enclave.eif", &["--name", "veil-test-image", "--image-version", "7.7"]));
    let text = stdout(ok(&f.veil(&["eif", "describe", "enclave.eif"])));
    for needle in [
        "format version 4",
        "x86_64",
        "kernel",
        "cmdline",
        "metadata",
        "ramdisk",
        CMDLINE,
        PCR0,
        PCR1,
        PCR2,
        "veil-test-image",
        "unsigned image",
    ] {
        assert!(text.contains(needle), "describe output lacks {needle:?}:\n{text}");
    }

    let json: serde_json::Value =
        serde_json::from_str(&stdout(ok(&f.veil(&["eif", "describe", "enclave.eif", "--json"])))).unwrap();
    let kinds: Vec<_> =
        json["sections"].as_array().unwrap().iter().map(|s| s["kind"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds, ["kernel", "cmdline", "metadata", "ramdisk", "ramdisk"]);
    assert_eq!(json["sections"][0]["offset"], 548);
    assert_eq!(json["sections"][0]["size"], 100_000);
    assert_eq!(json["Measurements"]["PCR1"], PCR1);
    assert_eq!(json["metadata"]["ImageVersion"], "7.7");
    assert_eq!(json["version"], 4);
}

#[test]
fn signed_build_adds_pcr8_of_the_certificate_and_verifies() {
    let f = Fixture::new();
    let o = f.build("signed.eif", &["--signing-key", "key.pem", "--signing-cert", "cert.pem"]);
    assert_eq!(stdout(ok(&o)), nitro_json(Some(PCR8)));
    assert_eq!(stdout(ok(&f.veil(&["eif", "pcrs", "signed.eif"]))), nitro_json(Some(PCR8)));
    let text = stdout(ok(&f.veil(&["eif", "describe", "signed.eif"])));
    assert!(text.contains("Veil CLI test signer"), "{text}");
    assert!(text.contains("valid: the certificate's key signed this image's PCR0"), "{text}");
}

#[test]
fn a_signature_for_another_image_is_flagged_as_a_failed_verification() {
    let f = Fixture::new();
    ok(&f.build("signed.eif", &["--signing-key", "key.pem", "--signing-cert", "cert.pem"]));
    let mut eif = std::fs::read(f.path("signed.eif")).unwrap();
    // Change one byte of the kernel (section 0's data starts at 548 + 12) and fix the CRC, so the
    // file is well-formed but its PCR0 is no longer the one that was signed.
    eif[548 + 12 + 100] ^= 0xff;
    fix_crc(&mut eif);
    std::fs::write(f.path("tampered.eif"), &eif).unwrap();
    let o = f.veil(&["eif", "pcrs", "tampered.eif"]);
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("does NOT verify"), "{}", stderr(&o));
    assert!(stdout(&o).contains(PCR8), "the PCRs are still printed");
}

fn fix_crc(eif: &mut [u8]) {
    // CRC-32/ISO-HDLC over everything but bytes 544..548, written independently of veil-eif.
    let mut crc = 0xFFFF_FFFFu32;
    for (i, &b) in eif.iter().enumerate() {
        if (544..548).contains(&i) {
            continue;
        }
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    eif[544..548].copy_from_slice(&(!crc).to_be_bytes());
}

fn expect_failure(f: &Fixture, args: &[&str], needles: &[&str]) {
    let o = f.veil(args);
    // An unusable input file is the CLI's EXIT_USAGE (2), not a failed verification (1).
    assert_eq!(o.status.code(), Some(2), "{args:?} should fail with 2; stdout: {}\nstderr: {}", stdout(&o), stderr(&o));
    assert!(o.stdout.is_empty(), "no PCRs may be printed for a bad EIF: {}", stdout(&o));
    let err = stderr(&o);
    for n in needles {
        assert!(err.contains(n), "stderr of {args:?} lacks {n:?}:\n{err}");
    }
}

#[test]
fn truncated_corrupted_and_foreign_files_give_clear_errors() {
    let f = Fixture::new();
    ok(&f.build("enclave.eif", &[]));
    let eif = std::fs::read(f.path("enclave.eif")).unwrap();

    std::fs::write(f.path("short.eif"), &eif[..eif.len() - 1000]).unwrap();
    expect_failure(
        &f,
        &["eif", "pcrs", "short.eif"],
        &["short.eif", "truncated EIF", "section 4 (ramdisk) data", "needs 70000 bytes"],
    );

    std::fs::write(f.path("header-only.eif"), &eif[..300]).unwrap();
    expect_failure(
        &f,
        &["eif", "describe", "header-only.eif"],
        &["truncated EIF", "EIF header", "needs 548 bytes", "after 300"],
    );

    let mut bad = eif.clone();
    bad[548 + 12 + 5] ^= 1;
    std::fs::write(f.path("flipped.eif"), &bad).unwrap();
    expect_failure(&f, &["eif", "pcrs", "flipped.eif"], &["CRC32 mismatch", "corrupted or was modified"]);

    std::fs::write(f.path("notes.txt"), b"hello, not an image").unwrap();
    expect_failure(&f, &["eif", "pcrs", "notes.txt"], &["not an EIF", "68656c6c"]);

    expect_failure(&f, &["eif", "pcrs", "missing.eif"], &["cannot open missing.eif"]);
}

#[test]
fn build_errors_name_the_input() {
    let f = Fixture::new();
    let o =
        f.veil(&["eif", "build", "--kernel", "nope", "--cmdline", "x", "--ramdisk", "init.cpio", "--output", "o.eif"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cannot read the kernel nope"), "{}", stderr(&o));
    assert!(!Path::new(&f.path("o.eif")).exists());

    // A certificate that does not belong to the key.
    std::fs::write(f.path("other.pem"), TEST_KEY.replace("MIGkAgEBBDCCRBoC", "MIGkAgEBBDCCRBoD")).unwrap();
    let o = f.build("o.eif", &["--signing-key", "other.pem", "--signing-cert", "cert.pem"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cannot sign the EIF"), "{}", stderr(&o));
    assert!(!f.path("o.eif").exists(), "no output on failure");

    // --signing-key without --signing-cert is a usage error.
    let o = f.build("o.eif", &["--signing-key", "key.pem"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--signing-cert"), "{}", stderr(&o));
}

#[test]
fn help_teaches_what_the_pcrs_are() {
    let f = Fixture::new();
    let o = f.veil(&["eif", "--help"]);
    let text = stdout(ok(&o));
    assert!(text.contains("PCR0") && text.contains("PCR8"), "{text}");
    let o = f.veil(&["eif", "build", "--help"]);
    let text = stdout(ok(&o));
    assert!(text.contains("SOURCE_DATE_EPOCH") && text.contains("--ramdisk"), "{text}");
}

#[test]
fn size_recommends_memory_from_the_eif_and_the_models() {
    let f = Fixture::new();
    // Sizes chosen so the arithmetic is easy to redo by hand: a 30 MiB "EIF" (size is all that
    // is read) and a 23 MiB model given in veil-parent's NAME=PATH form.
    std::fs::write(f.path("big.eif"), vec![0u8; 30 << 20]).unwrap();
    std::fs::write(f.path("minilm.onnx"), vec![0u8; 23 << 20]).unwrap();
    // 2*30 + 23*(2+4) + 512 = 710 -> 768 MiB; nitro-cli's floor is 4*30 = 120.
    let o = f.veil(&["eif", "size", "big.eif", "--model", "minilm=minilm.onnx", "--cpus", "4", "--mib"]);
    assert_eq!(stdout(ok(&o)).trim(), "768");
    let o = f.veil(&["eif", "size", "big.eif", "--model", "minilm.onnx", "--cpus", "4", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(ok(&o))).unwrap();
    assert_eq!(v["estimate_mib"], 710);
    assert_eq!(v["nitro_cli_minimum_mib"], 120);
    assert_eq!(v["sessions"], 4);
    let o = f.veil(&["eif", "size", "big.eif", "--cpus", "3"]);
    assert!(stdout(ok(&o)).contains("--cpu-count 3 --memory 768"), "{}", stdout(&o));
    assert!(stderr(&o).contains("odd"), "{}", stderr(&o));
    let o = f.veil(&["eif", "size", "big.eif", "--model", "gone.onnx"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cannot read the model gone.onnx"), "{}", stderr(&o));
}

// ---------------------------------------------------------------- the operator scripts
//
// Docker and nitro-cli cannot run on these machines, so the scripts' own logic (argument checks,
// sizing, allocator checks, the PCR cross-check) is exercised with stand-ins for those two tools
// and the real `veil` binary.

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("scripts").join(name)
}

/// PATH with the stub dir first, then the directory of the `veil` under test, then the system.
fn stub_path(stubs: &Path) -> String {
    let veil_dir = Path::new(env!("CARGO_BIN_EXE_veil")).parent().unwrap();
    format!("{}:{}:/usr/local/bin:/usr/bin:/bin", stubs.display(), veil_dir.display())
}

fn write_exe(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Stand-ins: `docker` accepts anything; `nitro-cli build-enclave` builds the fixture EIF with
/// `veil eif build` and prints its measurements, edited by the sed expression in $LIE.
fn make_stubs(f: &Fixture) -> PathBuf {
    let stubs = f.path("stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    write_exe(&stubs.join("docker"), "#!/usr/bin/env bash\nexit 0\n");
    write_exe(
        &stubs.join("nitro-cli"),
        &format!(
            r#"#!/usr/bin/env bash
set -euo pipefail
[ "$1" = build-enclave ] || exit 2
out=""
while [ $# -gt 0 ]; do case "$1" in --output-file) out="$2"; shift 2 ;; *) shift ;; esac; done
echo "Start building the Enclave Image..." >&2
veil eif build --kernel {dir}/bzImage --cmdline "{CMDLINE}" --ramdisk {dir}/init.cpio --ramdisk {dir}/app.cpio --output "$out" 2>/dev/null | sed "${{LIE:-}}"
"#,
            dir = f.dir.path().display()
        ),
    );
    stubs
}

fn run_script(f: &Fixture, stubs: &Path, name: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(script(name)).args(args).env("PATH", stub_path(stubs)).current_dir(f.dir.path());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn build_eif_script_saves_measurements_and_cross_checks_them_with_veil() {
    let f = Fixture::new();
    let stubs = make_stubs(&f);
    let out_dir = f.path("out");
    let out_dir_s = out_dir.to_str().unwrap();
    let o = run_script(&f, &stubs, "build-eif.sh", &["--allow-dirty", "--output-dir", out_dir_s, "--tag", "t"], &[]);
    assert!(o.status.success(), "stdout: {}\nstderr: {}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("veil eif pcrs agrees with nitro-cli"), "{}", stderr(&o));
    let saved = std::fs::read_to_string(out_dir.join("veil-enclave.measurements.json")).unwrap();
    assert_eq!(saved, nitro_json(None));
    assert!(out_dir.join("veil-enclave.eif").exists());

    // A nitro-cli whose PCR0 disagrees with the EIF must stop the release.
    let o = run_script(
        &f,
        &stubs,
        "build-eif.sh",
        &["--allow-dirty", "--output-dir", out_dir_s, "--tag", "t"],
        &[("LIE", "s/\"PCR0\": \"2f/\"PCR0\": \"00/")],
    );
    assert!(!o.status.success(), "a PCR mismatch must fail");
    assert!(stderr(&o).contains("disagree"), "{}", stderr(&o));

    let o = run_script(&f, &stubs, "build-eif.sh", &["--allow-dirty", "--signing-key", "key.pem"], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--signing-key and --signing-cert go together"), "{}", stderr(&o));
}

#[test]
fn run_enclave_script_sizes_checks_the_allocator_and_warns_about_debug_mode() {
    let f = Fixture::new();
    let stubs = make_stubs(&f);
    ok(&f.build("enclave.eif", &[]));
    std::fs::write(f.path("minilm.onnx"), vec![0u8; 23 << 20]).unwrap();
    let alloc = f.path("allocator.yaml");
    let alloc_s = alloc.to_str().unwrap();

    // Enough reserved: the dry run prints the nitro-cli command with the computed memory
    // (EIF < 1 MiB -> 1 MiB; 2*1 + 23*(2+2) + 512 = 606 -> 768).
    std::fs::write(&alloc, "---\nmemory_mib: 4096\ncpu_count: 2\n").unwrap();
    let o = run_script(
        &f,
        &stubs,
        "run-enclave.sh",
        &["--eif", "enclave.eif", "--model", "minilm=minilm.onnx", "--dry-run"],
        &[("VEIL_ALLOCATOR_YAML", alloc_s)],
    );
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        "nitro-cli run-enclave --eif-path enclave.eif --cpu-count 2 --memory 768 --enclave-cid 16 --enclave-name veil"
    );

    // Too little reserved: refused with the fix spelled out.
    std::fs::write(&alloc, "---\nmemory_mib: 512\ncpu_count: 2\n").unwrap();
    let o = run_script(
        &f,
        &stubs,
        "run-enclave.sh",
        &["--eif", "enclave.eif", "--model", "minilm=minilm.onnx", "--dry-run"],
        &[("VEIL_ALLOCATOR_YAML", alloc_s)],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("allocator reserves 512 MiB") && stderr(&o).contains("memory_mib: 768"),
        "{}",
        stderr(&o)
    );

    // Debug mode says what it gives away, and adds --debug-mode.
    std::fs::write(&alloc, "---\nmemory_mib: 4096\ncpu_count: 2\n").unwrap();
    let o = run_script(
        &f,
        &stubs,
        "run-enclave.sh",
        &["--eif", "enclave.eif", "--memory", "1024", "--debug", "--dry-run"],
        &[("VEIL_ALLOCATOR_YAML", alloc_s)],
    );
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    assert!(
        stdout(&o).trim().ends_with("--memory 1024 --enclave-cid 16 --enclave-name veil --debug-mode"),
        "{}",
        stdout(&o)
    );
    for needle in ["DEBUG MODE", "console is readable", "all-zero PCRs", "--allow-debug"] {
        assert!(stderr(&o).contains(needle), "debug warning lacks {needle:?}: {}", stderr(&o));
    }

    // A console without debug mode is refused.
    let o = run_script(&f, &stubs, "run-enclave.sh", &["--eif", "enclave.eif", "--memory", "1024", "--console"], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--console needs --debug"), "{}", stderr(&o));
}

#[test]
fn build_options_change_metadata_and_header_but_never_the_pcrs() {
    let f = Fixture::new();
    std::fs::write(f.path("custom.json"), br#"{"git": "abc123", "reviewed": true}"#).unwrap();
    let o = f.build(
        "custom.eif",
        &["--metadata", "custom.json", "--arch", "aarch64", "--memory-mib", "4096", "--cpus", "4"],
    );
    assert_eq!(stdout(ok(&o)), nitro_json(None));
    let v: serde_json::Value =
        serde_json::from_str(&stdout(ok(&f.veil(&["eif", "describe", "custom.eif", "--json"])))).unwrap();
    assert_eq!(v["metadata"]["CustomMetadata"]["git"], "abc123");
    assert_eq!(v["arch"], "aarch64");
    assert_eq!(v["default_mem"], 4096u64 << 20);
    assert_eq!(v["default_cpus"], 4);

    let o = f.build("bare.eif", &["--no-metadata"]);
    assert_eq!(stdout(ok(&o)), nitro_json(None));
    let v: serde_json::Value =
        serde_json::from_str(&stdout(ok(&f.veil(&["eif", "describe", "bare.eif", "--json"])))).unwrap();
    assert!(v["metadata"].is_null());
    assert_eq!(v["sections"].as_array().unwrap().len(), 4);

    std::fs::write(f.path("broken.json"), b"{not json").unwrap();
    let o = f.build("x.eif", &["--metadata", "broken.json"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--metadata broken.json is not valid JSON"), "{}", stderr(&o));
}

//! `rust-toolchain.toml` pins a Rust release for every cargo command of the repository, and a fresh CI machine
//! has that release only under the name "stable", with no toolchain server to download from: there, rustup
//! would fail every cargo command. `scripts/toolchain.sh` (the first step of scripts/test.sh) must register
//! the installed toolchain under the pinned name, and fail clearly, without hanging, when no installed
//! toolchain is that release. Both run against a rustup home of their own (a temporary directory whose only
//! toolchain links to the real one), so this machine's rustup is left as it is.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use veil_tests::repo_root;

/// The pinned release, read from rust-toolchain.toml.
fn pinned() -> String {
    let text = std::fs::read_to_string(repo_root().join("rust-toolchain.toml")).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    table["toolchain"]["channel"].as_str().unwrap().to_owned()
}

/// The real rustup home, and the real directory of the toolchain running these tests.
fn real_toolchain() -> (PathBuf, PathBuf, String) {
    let home = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".rustup"));
    let out = Command::new("rustc").args(["--print", "sysroot"]).output().unwrap();
    let sysroot = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).canonicalize().unwrap();
    let out = Command::new("rustc").arg("-vV").output().unwrap();
    let host = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .unwrap();
    (home, sysroot, host)
}

/// A rustup home with the real settings and, if given, one toolchain named `name` linking to `target`.
fn sandbox(real_home: &Path, toolchain: Option<(&str, &Path)>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("toolchains")).unwrap();
    std::fs::copy(real_home.join("settings.toml"), dir.path().join("settings.toml")).unwrap();
    if let Some((name, target)) = toolchain {
        std::os::unix::fs::symlink(target, dir.path().join("toolchains").join(name)).unwrap();
    }
    dir
}

/// Runs a command in the repository with only the sandbox's rustup home, and no way to download.
fn in_sandbox(home: &Path, program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .env("RUSTUP_HOME", home)
        // Where rustup would download from: a closed port, so that a download fails at once.
        .env("RUSTUP_DIST_SERVER", "http://127.0.0.1:9")
        .env("RUSTUP_UPDATE_ROOT", "http://127.0.0.1:9/rustup")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO")
        .output()
        .unwrap()
}

#[test]
fn a_machine_with_the_release_only_as_stable_gets_it_under_the_pinned_name() {
    let (real_home, sysroot, host) = real_toolchain();
    let release = pinned();
    let installed = Command::new("rustc").arg("--version").output().unwrap();
    assert!(
        String::from_utf8_lossy(&installed.stdout).starts_with(&format!("rustc {release} ")),
        "these tests run on the pinned release"
    );
    let stable = format!("stable-{host}");
    let home = sandbox(&real_home, Some((&stable, &sysroot)));

    // Before: rustup refuses every cargo command in the repository.
    let before = in_sandbox(home.path(), "cargo", &["--version"]);
    assert!(!before.status.success(), "cargo ran without the pinned toolchain");

    let out = in_sandbox(home.path(), "bash", &["scripts/toolchain.sh"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("as {release}-{host}")), "{stderr}");
    let link = home.path().join("toolchains").join(format!("{release}-{host}"));
    assert_eq!(std::fs::read_link(&link).unwrap().canonicalize().unwrap(), sysroot);

    let after = in_sandbox(home.path(), "cargo", &["--version"]);
    assert!(after.status.success(), "{}", String::from_utf8_lossy(&after.stderr));
    // Run again: nothing to do, nothing said.
    let again = in_sandbox(home.path(), "bash", &["scripts/toolchain.sh"]);
    assert!(again.status.success() && again.stderr.is_empty(), "{}", String::from_utf8_lossy(&again.stderr));
}

#[test]
fn a_machine_without_the_release_gets_an_error_naming_it_not_a_hang() {
    let (real_home, _, _) = real_toolchain();
    let home = sandbox(&real_home, None);
    let started = std::time::Instant::now();
    let out = in_sandbox(home.path(), "bash", &["scripts/toolchain.sh"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("pins Rust {}", pinned())), "{stderr}");
    assert!(stderr.contains("rustup toolchain install"), "{stderr}");
    assert!(started.elapsed().as_secs() < 120, "took {:?}", started.elapsed());
}

//! The production build of the enclave (`cargo build -p veil-enclave`, no `dev` feature) contains no mock
//! code and refuses development options, saying how to get a development build. scripts/test.sh builds it
//! and keeps it as `veil-enclave-production` next to the development build the other tests run.
use std::process::Command;

fn production() -> std::path::PathBuf {
    veil_tests::bin("veil-enclave-production").expect(
        "veil-enclave-production not found: scripts/test.sh builds it (cargo build -p veil-enclave, then copies it)",
    )
}

#[test]
fn the_production_enclave_has_no_mock_nsm_in_it() {
    let bytes = std::fs::read(production()).unwrap();
    // Strings only the mock NSM's code carries: its root's subject and its organisation.
    for needle in [&b"MOCK aws.nitro-enclaves root"[..], b"Veil MOCK NSM (not Amazon)"] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{:?} is in the production binary",
            String::from_utf8_lossy(needle)
        );
    }
    // The development build does carry them: the check above can fail.
    let dev = std::fs::read(veil_tests::bin("veil-enclave").unwrap()).unwrap();
    assert!(dev.windows(28).any(|w| w == b"MOCK aws.nitro-enclaves root"));
}

#[test]
fn the_production_enclave_refuses_development_options_and_says_how_to_get_them() {
    for args in [
        vec!["--nsm", "mock", "--mock-root-dir", "/tmp/x", "--mock-measurements"],
        vec!["--nsm", "mock", "--config", "/nonexistent"],
        vec!["--dev-kms-ca", "/tmp/ca.pem", "--config", "/nonexistent"],
    ] {
        let out = Command::new(production()).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("this is a production build of veil-enclave"), "{args:?}: {stderr}");
        assert!(stderr.contains("cargo build -p veil-enclave --features dev"), "{args:?}: {stderr}");
    }
    let version = Command::new(production()).arg("--version").output().unwrap();
    assert!(!String::from_utf8_lossy(&version.stdout).contains("development"));
    let dev = Command::new(veil_tests::bin("veil-enclave").unwrap()).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&dev.stdout).contains("development build"));
    // Development options are not even offered in the production build's help.
    let help = Command::new(production()).arg("--help").output().unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("--mock-root-dir <"), "listed as an option");
}

//! What the `veil eif` CLI tests share: running the real `veil` binary in a test's directory, and reading
//! what it printed.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;
use std::process::{Command, Output};

/// Runs `veil ARGS` in `dir`, without the caller's SOURCE_DATE_EPOCH (which would change the metadata).
pub(crate) fn veil(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(args)
        .current_dir(dir)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("running the veil binary")
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `o`, after checking that it succeeded (the failure shows both streams).
pub(crate) fn ok(o: &Output) -> &Output {
    assert!(o.status.success(), "veil failed ({:?}):\nstdout: {}\nstderr: {}", o.status, stdout(o), stderr(o));
    o
}

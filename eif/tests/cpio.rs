//! veil-eif's cpio archives against GNU cpio, an independent implementation of the same format.
//!
//! - GNU cpio extracts every entry of an archive written here, with its contents, type, mode and mtime;
//! - GNU cpio, run with `--reproducible -R 0:0` on a tree holding the same entries with the same modes and
//!   mtimes, listed in the same order, writes the very same bytes (so the header fields, the padding and
//!   the trailer are the conventional ones, not our reading of them);
//! - the reader reads GNU cpio's own archives, in `find`'s order and with a `.` entry;
//! - no damaged archive makes the reader panic.
//!
//! GNU cpio must be installed (`apt-get install cpio`; scripts/test.sh does it). These tests fail without
//! it rather than pass by skipping.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Stdio};

use veil_eif::cpio::{Archive, EntryKind, first_difference, read_archive};

const MTIME: u32 = 1_700_000_000;

fn gnu_cpio() -> Command {
    let ok = Command::new("cpio").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "GNU cpio is not installed: apt-get install cpio (scripts/test.sh installs it)");
    Command::new("cpio")
}

/// An entry: path, kind, permission bits, data (a symlink's target).
type Entry = (&'static str, EntryKind, u32, &'static [u8]);

/// Entries of every kind, with data lengths around the 4-byte padding and names of several lengths.
fn sample() -> (Archive<'static>, Vec<Entry>) {
    let entries: Vec<Entry> = vec![
        ("bin", EntryKind::Directory, 0o755, b""),
        ("bin/app", EntryKind::File, 0o755, b"\x7fELF and some code"),
        ("bin/sh", EntryKind::Symlink, 0o777, b"app"),
        ("empty", EntryKind::File, 0o644, b""),
        ("etc", EntryKind::Directory, 0o755, b""),
        ("etc/a", EntryKind::File, 0o600, b"1"),
        ("etc/ab", EntryKind::File, 0o640, b"12"),
        ("etc/abc", EntryKind::File, 0o444, b"123"),
        ("etc/abcd", EntryKind::File, 0o644, b"1234"),
        ("etc/abcde", EntryKind::File, 0o644, b"12345"),
        ("etc/deep", EntryKind::Directory, 0o700, b""),
        ("etc/deep/er", EntryKind::Directory, 0o755, b""),
        ("etc/deep/er/file", EntryKind::File, 0o644, b"deep\n"),
        ("etc/link", EntryKind::Symlink, 0o777, b"/etc/abc"),
    ];
    let mut archive = Archive::new().mtime(MTIME);
    for (path, kind, mode, data) in &entries {
        match kind {
            EntryKind::Directory => archive.add_dir(path, *mode).unwrap(),
            EntryKind::File => archive.add_file(path, *mode, data).unwrap(),
            EntryKind::Symlink => archive.add_symlink(path, std::str::from_utf8(data).unwrap()).unwrap(),
            EntryKind::Other(_) => unreachable!(),
        }
    }
    (archive, entries)
}

/// Lays the sample out on disk as GNU cpio would find it.
fn materialize(dir: &Path, entries: &[Entry]) {
    for (path, kind, mode, data) in entries {
        let p = dir.join(path);
        match kind {
            EntryKind::Directory => std::fs::create_dir(&p).unwrap(),
            EntryKind::File => std::fs::write(&p, data).unwrap(),
            EntryKind::Symlink => symlink(std::str::from_utf8(data).unwrap(), &p).unwrap(),
            EntryKind::Other(_) => unreachable!(),
        }
        if *kind != EntryKind::Symlink {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
    }
    // Directories last, so that creating their contents does not move their mtime again.
    let status = Command::new("find")
        .arg(".")
        .args(["-exec", "touch", "-h", "-d", &format!("@{MTIME}"), "{}", "+"])
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn gnu_cpio_extracts_every_entry_as_written() {
    let (archive, entries) = sample();
    let bytes = archive.to_bytes().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut child = gnu_cpio()
        .args(["-i", "--make-directories", "--preserve-modification-time", "--no-absolute-filenames", "--quiet"])
        .current_dir(out.path())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    assert!(child.wait().unwrap().success(), "GNU cpio refused the archive");

    for (path, kind, mode, data) in &entries {
        let p = out.path().join(path);
        let meta = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{path}: {e}"));
        match kind {
            EntryKind::Directory => assert!(meta.is_dir(), "{path}"),
            EntryKind::File => {
                assert!(meta.is_file(), "{path}");
                assert_eq!(std::fs::read(&p).unwrap(), *data, "{path}");
            }
            EntryKind::Symlink => {
                assert!(meta.file_type().is_symlink(), "{path}");
                assert_eq!(std::fs::read_link(&p).unwrap().as_os_str().as_encoded_bytes(), *data, "{path}");
            }
            EntryKind::Other(_) => unreachable!(),
        }
        if *kind != EntryKind::Symlink {
            assert_eq!(meta.permissions().mode() & 0o7777, *mode, "{path}");
        }
        if *kind == EntryKind::File {
            // GNU cpio sets directory times before their contents are written, so only files keep theirs.
            assert_eq!(std::os::unix::fs::MetadataExt::mtime(&meta), i64::from(MTIME), "{path}");
        }
    }
    // Nothing else was extracted.
    let listed = gnu_cpio().arg("-t").arg("--quiet").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let names = {
        let mut child = listed;
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    };
    let expected: Vec<&str> = entries.iter().map(|e| e.0).collect();
    assert_eq!(names.lines().collect::<Vec<_>>(), expected);
}

#[test]
fn gnu_cpio_writes_the_same_bytes_from_the_same_tree() {
    let (archive, entries) = sample();
    let ours = archive.to_bytes().unwrap();
    let tree = tempfile::tempdir().unwrap();
    materialize(tree.path(), &entries);
    let mut child = gnu_cpio()
        .args(["-o", "-H", "newc", "-R", "0:0", "--reproducible", "--quiet"])
        .current_dir(tree.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let list: String = entries.iter().map(|e| format!("{}\n", e.0)).collect();
    child.stdin.take().unwrap().write_all(list.as_bytes()).unwrap();
    let theirs = child.wait_with_output().unwrap();
    assert!(theirs.status.success());
    let theirs = theirs.stdout;
    if ours != theirs {
        let at = ours.iter().zip(&theirs).position(|(a, b)| a != b).unwrap_or(ours.len().min(theirs.len()));
        let diff = first_difference(&read_archive(&ours).unwrap(), &read_archive(&theirs).unwrap());
        panic!(
            "GNU cpio wrote other bytes: {} against {} bytes, first difference at byte {at}: ours {:?}, GNU's {:?}; {diff:?}",
            ours.len(),
            theirs.len(),
            String::from_utf8_lossy(&ours[at.saturating_sub(20)..(at + 20).min(ours.len())]),
            String::from_utf8_lossy(&theirs[at.saturating_sub(20)..(at + 20).min(theirs.len())]),
        );
    }
}

#[test]
fn reads_gnu_cpio_archives_in_find_order() {
    let (_, entries) = sample();
    let tree = tempfile::tempdir().unwrap();
    materialize(tree.path(), &entries);
    let output =
        Command::new("sh").arg("-c").arg("find . | cpio -o -H newc --quiet").current_dir(tree.path()).output().unwrap();
    assert!(output.status.success());
    let read = read_archive(&output.stdout).unwrap();
    assert_eq!(read.len(), entries.len() + 1, "every entry and `.`");
    assert!(read.iter().any(|e| e.name == b"." && e.kind == EntryKind::Directory));
    for (path, kind, mode, data) in &entries {
        let e = read.iter().find(|e| e.name == path.as_bytes()).unwrap_or_else(|| panic!("{path} missing"));
        assert_eq!(e.kind, *kind, "{path}");
        if *kind != EntryKind::Directory {
            assert_eq!(e.data, *data, "{path}");
        }
        if *kind != EntryKind::Symlink {
            assert_eq!(e.permissions(), *mode, "{path}");
        }
        assert_eq!(e.mtime, MTIME, "{path}");
    }
}

#[test]
fn damaged_archives_never_panic_the_reader() {
    let (archive, _) = sample();
    let bytes = archive.to_bytes().unwrap();
    // Every truncation, and every byte replaced by values that matter to a header parser.
    for len in 0..bytes.len() {
        let _ = read_archive(&bytes[..len]);
    }
    for i in 0..bytes.len() {
        for v in [0u8, b'0', b'7', b'F', b'f', b'g', 0xff] {
            let mut damaged = bytes.clone();
            damaged[i] = v;
            if let Ok(entries) = read_archive(&damaged) {
                for e in &entries {
                    assert!(e.data.len() <= damaged.len());
                }
            }
        }
    }
}

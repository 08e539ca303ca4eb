//! The cpio reader (`veil_eif::cpio::read_archive`), on hostile bytes: `veil eif diff` reads the ramdisks
//! of images that someone else built. Never panics; every entry it returns lies inside the input, in
//! order, with a name the kernel would accept in length; an archive compared with itself has no
//! difference; and an archive of files, directories and symlinks with clean paths, written again by
//! `Archive`, reads back with the same names, kinds, permissions and data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_eif::cpio::{Archive, EntryKind, HEADER_LEN, MAX_NAME_LEN, first_difference, read_archive};

fuzz_target!(|data: &[u8]| {
    let Ok(entries) = read_archive(data) else { return };
    let mut last = None;
    for e in &entries {
        let offset = e.offset as usize;
        assert!(last.is_none_or(|l| offset > l), "entries in input order");
        last = Some(offset);
        assert!(offset + HEADER_LEN + e.name.len() < data.len());
        assert!(e.name.len() < MAX_NAME_LEN);
        let start = e.data.as_ptr() as usize - data.as_ptr() as usize;
        assert!(e.data.is_empty() || start + e.data.len() <= data.len());
    }
    assert_eq!(first_difference(&entries, &entries), None);

    // Write what can be written again, and read it back.
    let mut archive = Archive::new();
    let mut written = Vec::new();
    for e in &entries {
        let Ok(path) = std::str::from_utf8(e.name) else { continue };
        let added = match e.kind {
            EntryKind::Directory => archive.add_dir(path, e.permissions()),
            EntryKind::File => archive.add_file(path, e.permissions(), e.data),
            EntryKind::Symlink => match std::str::from_utf8(e.data) {
                Ok(target) => archive.add_symlink(path, target),
                Err(_) => continue,
            },
            EntryKind::Other(_) => continue,
        };
        if added.is_ok() {
            // A directory's data (a hostile archive may give it some) is not written again.
            let data = if e.kind == EntryKind::Directory { &[][..] } else { e.data };
            written.push((path, e.kind, e.permissions(), data));
        }
    }
    let Ok(bytes) = archive.to_bytes() else { return };
    let again = read_archive(&bytes).expect("an archive written by Archive reads back");
    for (path, kind, mode, data) in written {
        let e = again.iter().find(|e| e.name == path.as_bytes()).expect("every written entry is there");
        assert_eq!(e.kind, kind, "{path}");
        assert_eq!(e.data, data, "{path}");
        if kind != EntryKind::Symlink {
            assert_eq!(e.permissions(), mode, "{path}");
        }
    }
});

//! cpio archives in the "newc" format: the ramdisks of an EIF, written deterministically and read
//! without trusting them.
//!
//! The Linux kernel unpacks every ramdisk of an enclave image into its initial root file system,
//! and it only understands the SVR4 "newc" cpio format (magic `070701`, or `070702` with a checksum):
//! a 110-byte header of thirteen 8-digit hexadecimal fields (inode, mode, uid, gid, link count,
//! mtime, file size, device major and minor, special-device major and minor, name size, checksum),
//! the NUL-terminated name, padding to a multiple of four bytes, the data, padding again; and a last
//! entry named `TRAILER!!!`. (Linux's `init/initramfs.c` and `Documentation/driver-api/early-userspace`
//! describe it.) The kernel creates entries in archive order, so a directory must come before what it
//! holds, and it keeps each entry's mode, owner and mtime.
//!
//! Since PCR2 is SHA-384 over these bytes, everything a packer usually takes from the build machine
//! would make it differ between two builds of the same source: file order (directory listing order),
//! timestamps, owners, permission bits from the umask, inode and device numbers of the disk the files
//! were on. [`Archive`] takes none of them from anywhere: entries are sorted by path (bytes), every
//! entry has uid and gid 0, one mtime chosen by the caller (0 by default), device numbers 0, inode
//! numbers counted from 0 in archive order, the link count a file system would give (1, or 2 plus
//! the subdirectories for a directory), and the archive is zero-padded to a multiple of 512 bytes.
//! Those are exactly the choices of GNU cpio's `--reproducible -R 0:0` on a tree with the same
//! contents, modes and mtimes, and `tests/cpio.rs` checks that both write the same bytes, and that GNU
//! cpio reads back every entry.
//!
//! [`read_archive`] is the other direction, for ramdisks taken out of an EIF that someone else built
//! (`veil eif diff`): every length and number comes from the input, so each is checked before use,
//! nothing is allocated from a declared size, and the result borrows its data from the input. It
//! accepts what the kernel accepts in an uncompressed ramdisk: one or more archives, each ending with
//! its trailer, with zero bytes between them. [`first_difference`] names the first entry in which two
//! archives differ, which is what an auditor needs when two builds disagree.
//!
//! Like the rest of this crate, nothing here does I/O.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::error::EifError;

/// Magic of a "newc" header.
pub const NEWC_MAGIC: &[u8; 6] = b"070701";
/// Magic of a "newc" header whose checksum field holds the sum of the data bytes.
pub const NEWC_CRC_MAGIC: &[u8; 6] = b"070702";
/// Length of a "newc" header: the magic and thirteen 8-digit hexadecimal fields.
pub const HEADER_LEN: usize = 110;
/// Name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";
/// Longest name accepted, its terminating NUL included (Linux's `PATH_MAX`).
pub const MAX_NAME_LEN: usize = 4096;
/// Archives are zero-padded to a multiple of this (GNU cpio's block size; the kernel needs 4).
pub const BLOCK_LEN: usize = 512;

/// File type bits of a mode (`S_IFMT`) and the types an [`Archive`] writes.
const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A directory.
    Directory,
    /// A regular file.
    File,
    /// A symbolic link (its data is the target).
    Symlink,
    /// Anything else (device, FIFO, socket): [`Archive`] never writes these; [`read_archive`] reports
    /// them with their type bits.
    Other(u32),
}

impl EntryKind {
    fn from_mode(mode: u32) -> Self {
        match mode & S_IFMT {
            S_IFDIR => Self::Directory,
            S_IFREG => Self::File,
            S_IFLNK => Self::Symlink,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Directory => f.write_str("directory"),
            Self::File => f.write_str("file"),
            Self::Symlink => f.write_str("symlink"),
            Self::Other(bits) => write!(f, "special file (type {bits:06o})"),
        }
    }
}

#[derive(Debug, Clone)]
enum Node<'a> {
    /// `implicit`: created as the parent of another entry, not added by the caller.
    Dir {
        mode: u32,
        implicit: bool,
    },
    File {
        mode: u32,
        data: &'a [u8],
    },
    Symlink {
        target: String,
    },
}

/// A deterministic "newc" archive under construction; see the [module documentation](self).
///
/// Paths are relative (`usr/bin/x`, never `/usr/bin/x`), with no empty, `.` or `..` components.
/// Parent directories that were not added are created with mode 0755. Modes are permission bits
/// only (at most `0o7777`); the type bits come from the kind of entry.
///
/// ```
/// use veil_eif::cpio::{Archive, EntryKind, read_archive};
///
/// let mut archive = Archive::new();
/// archive.add_file("etc/motd", 0o644, b"hello\n")?;
/// archive.add_symlink("etc/issue", "motd")?;
/// let bytes = archive.to_bytes()?;
/// let entries = read_archive(&bytes)?;
/// let names: Vec<_> = entries.iter().map(|e| e.path()).collect();
/// assert_eq!(names, ["etc", "etc/issue", "etc/motd"]); // sorted, the parent first
/// assert_eq!(entries[0].kind, EntryKind::Directory);
/// assert_eq!(entries[2].data, b"hello\n");
/// # Ok::<(), veil_eif::EifError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Archive<'a> {
    mtime: u32,
    entries: BTreeMap<String, Node<'a>>,
}

impl<'a> Archive<'a> {
    /// An empty archive whose entries will have mtime 0 (1970-01-01).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the one mtime (Unix seconds) that every entry gets.
    pub fn mtime(mut self, unix_seconds: u32) -> Self {
        self.mtime = unix_seconds;
        self
    }

    /// Number of entries (implicit parent directories included, the trailer not).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `path` is in the archive as a regular file with an execute bit.
    pub fn is_executable_file(&self, path: &str) -> bool {
        matches!(self.entries.get(path), Some(Node::File { mode, .. }) if mode & 0o111 != 0)
    }

    /// Adds a directory. Adding one that exists only as a parent of another entry sets its mode.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), EifError> {
        check_mode(path, mode)?;
        self.add_parents(path)?;
        match self.entries.get_mut(path) {
            Some(Node::Dir { mode: m, implicit }) if *implicit => {
                *m = mode;
                *implicit = false;
                Ok(())
            }
            Some(_) => Err(duplicate(path)),
            None => {
                self.entries.insert(path.to_owned(), Node::Dir { mode, implicit: false });
                Ok(())
            }
        }
    }

    /// Adds a regular file with these bytes.
    pub fn add_file(&mut self, path: &str, mode: u32, data: &'a [u8]) -> Result<(), EifError> {
        check_mode(path, mode)?;
        if u32::try_from(data.len()).is_err() {
            return Err(EifError::InvalidInput(format!(
                "{path}: {} bytes; a cpio \"newc\" entry holds at most {} (4 GiB - 1)",
                data.len(),
                u32::MAX
            )));
        }
        self.insert_leaf(path, Node::File { mode, data })
    }

    /// Adds a symbolic link to `target` (stored as given, relative or absolute).
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), EifError> {
        if target.is_empty() || target.contains('\0') || target.len() >= MAX_NAME_LEN {
            return Err(EifError::InvalidInput(format!(
                "{path}: a symlink target must be 1 to {} bytes without NUL, got {} bytes",
                MAX_NAME_LEN - 1,
                target.len()
            )));
        }
        self.insert_leaf(path, Node::Symlink { target: target.to_owned() })
    }

    fn insert_leaf(&mut self, path: &str, node: Node<'a>) -> Result<(), EifError> {
        self.add_parents(path)?;
        if self.entries.contains_key(path) {
            return Err(duplicate(path));
        }
        self.entries.insert(path.to_owned(), node);
        Ok(())
    }

    /// Checks `path` and makes sure each of its parents is a directory, creating missing ones.
    fn add_parents(&mut self, path: &str) -> Result<(), EifError> {
        check_path(path)?;
        let mut end = 0;
        while let Some(slash) = path[end..].find('/') {
            let parent = &path[..end + slash];
            match self.entries.get(parent) {
                Some(Node::Dir { .. }) => {}
                Some(_) => {
                    return Err(EifError::InvalidInput(format!(
                        "{path}: its parent {parent} is in the archive, but not as a directory"
                    )));
                }
                None => {
                    self.entries.insert(parent.to_owned(), Node::Dir { mode: 0o755, implicit: true });
                }
            }
            end += slash + 1;
        }
        Ok(())
    }

    /// Writes the archive: the entries in path order, then the trailer, zero-padded to a multiple of
    /// [`BLOCK_LEN`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, EifError> {
        // A directory's link count is 2 plus its subdirectories, as on a file system (and so in GNU
        // cpio's output). Every parent is in the map: add_parents makes sure of it.
        let mut subdirs: BTreeMap<&str, u32> = BTreeMap::new();
        for (path, node) in &self.entries {
            if let (Node::Dir { .. }, Some((parent, _))) = (node, path.rsplit_once('/')) {
                *subdirs.entry(parent).or_default() += 1;
            }
        }
        let size: usize = self
            .entries
            .iter()
            .map(|(p, n)| {
                let data = match n {
                    Node::Dir { .. } => 0,
                    Node::File { data, .. } => data.len(),
                    Node::Symlink { target } => target.len(),
                };
                pad4(HEADER_LEN + p.len() + 1) + pad4(data)
            })
            .sum();
        let mut out = Vec::with_capacity(size + BLOCK_LEN * 2);
        for (ino, (path, node)) in self.entries.iter().enumerate() {
            let ino = u32::try_from(ino).map_err(|_| EifError::InvalidInput("more than 2^32 entries".into()))?;
            let (mode, nlink, data): (u32, u32, &[u8]) = match node {
                Node::Dir { mode, .. } => (S_IFDIR | mode, 2 + subdirs.get(path.as_str()).copied().unwrap_or(0), &[]),
                Node::File { mode, data } => (S_IFREG | mode, 1, data),
                Node::Symlink { target } => (S_IFLNK | 0o777, 1, target.as_bytes()),
            };
            write_entry(&mut out, Header { ino, mode, nlink, mtime: self.mtime }, path.as_bytes(), data);
        }
        write_entry(&mut out, Header { ino: 0, mode: 0, nlink: 1, mtime: 0 }, TRAILER.as_bytes(), &[]);
        out.resize(out.len().div_ceil(BLOCK_LEN) * BLOCK_LEN, 0);
        Ok(out)
    }
}

/// The fields an [`Archive`] varies; all others are written as zero.
struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
}

fn write_entry(out: &mut Vec<u8>, h: Header, name: &[u8], data: &[u8]) {
    // `data.len()` fits: add_file checked it, and names and symlink targets are under MAX_NAME_LEN.
    let filesize = data.len() as u32;
    let namesize = name.len() as u32 + 1;
    out.extend_from_slice(NEWC_MAGIC);
    // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check
    for field in [h.ino, h.mode, 0, 0, h.nlink, h.mtime, filesize, 0, 0, 0, 0, namesize, 0] {
        out.extend_from_slice(format!("{field:08X}").as_bytes());
    }
    out.extend_from_slice(name);
    out.push(0);
    out.resize(pad4(out.len()), 0);
    out.extend_from_slice(data);
    out.resize(pad4(out.len()), 0);
}

const fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

fn duplicate(path: &str) -> EifError {
    EifError::InvalidInput(format!("{path} is added twice"))
}

fn check_mode(path: &str, mode: u32) -> Result<(), EifError> {
    if mode & !0o7777 != 0 {
        return Err(EifError::InvalidInput(format!(
            "{path}: mode {mode:o} is not a set of permission bits (at most 7777 octal)"
        )));
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), EifError> {
    let why = if path.is_empty() {
        Some("it is empty")
    } else if path.starts_with('/') {
        Some("it must be relative (no leading /)")
    } else if path.contains('\0') {
        Some("it contains a NUL byte")
    } else if path.len() >= MAX_NAME_LEN {
        Some("it is too long (the kernel's limit is 4095 bytes)")
    } else if path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        Some("it has an empty, \".\" or \"..\" component")
    } else if path == TRAILER {
        Some("that name ends an archive")
    } else {
        None
    };
    match why {
        Some(why) => Err(EifError::InvalidInput(format!("cpio path {path:?}: {why}"))),
        None => Ok(()),
    }
}

// ------------------------------------------------------------------------------------------------ reading

/// One entry of an archive read by [`read_archive`], borrowing its name and data from the input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CpioEntry<'a> {
    /// The name as stored, without its NUL (usually a relative path).
    #[serde(serialize_with = "lossy")]
    pub name: &'a [u8],
    /// What it is, from the mode's type bits.
    pub kind: EntryKind,
    /// The mode, type bits included.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time, Unix seconds.
    pub mtime: u32,
    /// Inode number.
    pub ino: u32,
    /// Device (major, minor) of the file system it came from.
    pub dev: (u32, u32),
    /// For device files, the device (major, minor).
    pub rdev: (u32, u32),
    /// The data: the file's contents, or a symlink's target.
    #[serde(skip)]
    pub data: &'a [u8],
    /// Offset of its header in the input.
    pub offset: u64,
}

fn lossy<S: serde::Serializer>(name: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(name))
}

impl CpioEntry<'_> {
    /// The name as text (invalid UTF-8 replaced).
    pub fn path(&self) -> String {
        String::from_utf8_lossy(self.name).into_owned()
    }

    /// The permission bits of the mode.
    pub fn permissions(&self) -> u32 {
        self.mode & 0o7777
    }
}

fn bad(offset: usize, what: impl Into<String>) -> EifError {
    EifError::BadCpio { offset: offset as u64, what: what.into() }
}

/// Reads every entry of an uncompressed "newc" ramdisk (trailers not included).
///
/// Accepts one archive or several in a row, as the kernel does: each ends with a `TRAILER!!!` entry,
/// zero bytes may follow, and the next starts at an offset that is a multiple of four. Refuses
/// anything else with the offset and what was wrong: another cpio flavour, a compressed ramdisk, a
/// field that is not hexadecimal, a name without its NUL or over [`MAX_NAME_LEN`], data running past
/// the end, a wrong `070702` checksum, or a missing trailer. Never panics and allocates only the
/// list of entries (each at least 112 bytes of input).
pub fn read_archive(input: &[u8]) -> Result<Vec<CpioEntry<'_>>, EifError> {
    let mut entries = Vec::new();
    let mut pos = 0usize;
    let mut in_archive = false;
    loop {
        if !in_archive {
            // Between archives: zero padding, then the next archive or the end.
            while input.get(pos) == Some(&0) {
                pos += 1;
            }
            if pos == input.len() {
                if entries.is_empty() && pos == 0 {
                    return Err(bad(0, "the ramdisk is empty"));
                }
                return Ok(entries);
            }
            if !pos.is_multiple_of(4) {
                return Err(bad(pos, "an archive starts at an offset that is not a multiple of 4"));
            }
        }
        let rest = &input[pos..];
        let magic = &rest[..rest.len().min(6)];
        if magic != NEWC_MAGIC && magic != NEWC_CRC_MAGIC {
            return Err(bad(pos, not_newc(rest)));
        }
        let header = rest
            .get(..HEADER_LEN)
            .ok_or_else(|| bad(pos, format!("a {HEADER_LEN}-byte header is cut off after {} bytes", rest.len())))?;
        let mut fields = [0u32; 13];
        for (i, field) in fields.iter_mut().enumerate() {
            let digits = &header[6 + 8 * i..14 + 8 * i];
            *field = parse_hex(digits).ok_or_else(|| {
                bad(
                    pos,
                    format!("header field {} is {:?}, not 8 hexadecimal digits", FIELD_NAMES[i], lossy_str(digits)),
                )
            })?;
        }
        let [ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check] =
            fields;
        let namesize = namesize as usize;
        if namesize == 0 || namesize > MAX_NAME_LEN {
            return Err(bad(pos, format!("name size {namesize}: expected 1 to {MAX_NAME_LEN} (the name and its NUL)")));
        }
        let name_start = pos + HEADER_LEN;
        let name_with_nul = input
            .get(name_start..name_start + namesize)
            .ok_or_else(|| bad(pos, format!("the {namesize}-byte name runs past the end of the input")))?;
        let (name, nul) = name_with_nul.split_at(namesize - 1);
        if nul != [0] || name.contains(&0) {
            return Err(bad(pos, "the name is not a NUL-terminated string of the declared size"));
        }
        let data_start = pad4(name_start + namesize);
        let data_end = data_start.checked_add(filesize as usize).filter(|&e| e <= input.len()).ok_or_else(|| {
            bad(pos, format!("{}: {filesize} bytes of data run past the end of the input", lossy_str(name)))
        })?;
        let data = &input[data_start..data_end];
        if magic == NEWC_CRC_MAGIC {
            let sum = data.iter().fold(0u32, |acc, &b| acc.wrapping_add(u32::from(b)));
            if sum != check {
                return Err(bad(
                    pos,
                    format!("{}: checksum {check:08x}, but the data sums to {sum:08x}", lossy_str(name)),
                ));
            }
        }
        let next = pad4(data_end);
        if name == TRAILER.as_bytes() {
            in_archive = false;
            pos = next.min(input.len());
            continue;
        }
        entries.push(CpioEntry {
            name,
            kind: EntryKind::from_mode(mode),
            mode,
            uid,
            gid,
            nlink,
            mtime,
            ino,
            dev: (devmajor, devminor),
            rdev: (rdevmajor, rdevminor),
            data,
            offset: pos as u64,
        });
        in_archive = true;
        if next >= input.len() {
            return Err(bad(input.len(), "the input ends without a TRAILER!!! entry"));
        }
        pos = next;
    }
}

const FIELD_NAMES: [&str; 13] = [
    "ino",
    "mode",
    "uid",
    "gid",
    "nlink",
    "mtime",
    "filesize",
    "devmajor",
    "devminor",
    "rdevmajor",
    "rdevminor",
    "namesize",
    "check",
];

fn lossy_str(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn parse_hex(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0u32, |acc, &d| Some((acc << 4) | char::from(d).to_digit(16)?))
}

/// What an input that does not start with a "newc" header probably is, for the error message.
fn not_newc(header: &[u8]) -> String {
    let what = match header {
        [0x1f, 0x8b, ..] => "a gzip-compressed ramdisk (only uncompressed newc archives are read)",
        [0xfd, b'7', b'z', b'X', b'Z', ..] => "an xz-compressed ramdisk (only uncompressed newc archives are read)",
        [0x28, 0xb5, 0x2f, 0xfd, ..] => "a zstd-compressed ramdisk (only uncompressed newc archives are read)",
        [b'0', b'7', b'0', b'7', b'0', b'7', ..] => "an old portable (odc) cpio archive, not newc",
        [0xc7, 0x71, ..] | [0x71, 0xc7, ..] => "an old binary cpio archive, not newc",
        _ => "not a cpio \"newc\" header",
    };
    format!("{what}: starts with {}", hex::encode(&header[..header.len().min(6)]))
}

// ------------------------------------------------------------------------------------------------ comparing

/// Where two archives first differ; see [`first_difference`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// The entry's name (lossy UTF-8), or `None` when every entry is the same and only the order,
    /// the trailer or the padding differs.
    pub path: Option<String>,
    /// What differs, with both values.
    pub what: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{p}: {}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

/// The first entry, in the order of `a`, that differs between two archives (then the first entry
/// only `b` has), or `None` when both list the same entries with the same metadata and contents in
/// the same order.
///
/// A name may appear more than once (several archives in a row, or a hostile one); the n-th
/// occurrence in `a` is compared with the n-th in `b`.
pub fn first_difference(a: &[CpioEntry<'_>], b: &[CpioEntry<'_>]) -> Option<Difference> {
    let (by_name_a, by_name_b) = (by_name(a), by_name(b));
    let count = |index: &BTreeMap<&[u8], Vec<&CpioEntry<'_>>>, name| index.get(name).map_or(0, Vec::len);
    let mut seen: BTreeMap<&[u8], usize> = BTreeMap::new();
    for ea in a {
        let nth = seen.entry(ea.name).or_default();
        let other = by_name_b.get(ea.name).and_then(|v| v.get(*nth));
        *nth += 1;
        let Some(eb) = other else {
            let what = match count(&by_name_b, ea.name) {
                0 => "only in the first archive".to_string(),
                n => format!("{} times in the first archive, {n} in the second", count(&by_name_a, ea.name)),
            };
            return Some(Difference { path: Some(ea.path()), what });
        };
        if let Some(what) = entry_difference(ea, eb) {
            return Some(Difference { path: Some(ea.path()), what });
        }
    }
    if let Some(eb) = b.iter().find(|e| count(&by_name_b, e.name) > count(&by_name_a, e.name)) {
        let what = match count(&by_name_a, eb.name) {
            0 => "only in the second archive".to_string(),
            n => format!("{n} times in the first archive, {} in the second", count(&by_name_b, eb.name)),
        };
        return Some(Difference { path: Some(eb.path()), what });
    }
    let order = a.iter().zip(b).position(|(x, y)| x.name != y.name);
    order.map(|i| Difference {
        path: None,
        what: format!(
            "the same entries in another order: entry {i} is {} in the first archive and {} in the second",
            a[i].path(),
            b[i].path()
        ),
    })
}

/// Each name's entries, in archive order.
fn by_name<'e, 'a>(entries: &'e [CpioEntry<'a>]) -> BTreeMap<&'a [u8], Vec<&'e CpioEntry<'a>>> {
    let mut index: BTreeMap<&[u8], Vec<&CpioEntry<'_>>> = BTreeMap::new();
    for e in entries {
        index.entry(e.name).or_default().push(e);
    }
    index
}

fn entry_difference(a: &CpioEntry<'_>, b: &CpioEntry<'_>) -> Option<String> {
    if a.kind != b.kind {
        return Some(format!("a {} against a {}", a.kind, b.kind));
    }
    if a.data != b.data {
        let at = a.data.iter().zip(b.data).position(|(x, y)| x != y).unwrap_or(a.data.len().min(b.data.len()));
        return Some(match a.kind {
            EntryKind::Symlink => format!("symlink to {:?} against {:?}", lossy_str(a.data), lossy_str(b.data)),
            _ if a.data.len() == b.data.len() => {
                format!("contents differ from byte {at} (both {} bytes)", a.data.len())
            }
            _ => format!("contents differ from byte {at} ({} bytes against {})", a.data.len(), b.data.len()),
        });
    }
    let fields: [(&str, u32, u32, bool); 10] = [
        ("mode", a.mode, b.mode, true),
        ("uid", a.uid, b.uid, false),
        ("gid", a.gid, b.gid, false),
        ("mtime", a.mtime, b.mtime, false),
        ("nlink", a.nlink, b.nlink, false),
        ("ino", a.ino, b.ino, false),
        ("dev major", a.dev.0, b.dev.0, false),
        ("dev minor", a.dev.1, b.dev.1, false),
        ("rdev major", a.rdev.0, b.rdev.0, false),
        ("rdev minor", a.rdev.1, b.rdev.1, false),
    ];
    let differing: Vec<String> = fields
        .iter()
        .filter(|(_, x, y, _)| x != y)
        .map(
            |(name, x, y, octal)| {
                if *octal { format!("{name} {x:o} against {y:o}") } else { format!("{name} {x} against {y}") }
            },
        )
        .collect();
    (!differing.is_empty()).then(|| format!("same contents, but {}", differing.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first_and_are_created_once() {
        let mut a = Archive::new();
        a.add_file("a/b/c", 0o644, b"x").unwrap();
        a.add_dir("a", 0o700).unwrap();
        a.add_file("a.b", 0o600, b"").unwrap();
        let bytes = a.to_bytes().unwrap();
        let e = read_archive(&bytes).unwrap();
        let names: Vec<String> = e.iter().map(CpioEntry::path).collect();
        assert_eq!(names, ["a", "a.b", "a/b", "a/b/c"]);
        assert_eq!(e[0].mode, S_IFDIR | 0o700, "the explicit mode wins over the implicit one");
        assert_eq!(e[2].mode, S_IFDIR | 0o755);
        assert_eq!((e[0].nlink, e[2].nlink, e[3].nlink), (3, 2, 1));
        assert_eq!(e.iter().map(|x| x.ino).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(bytes.len() % BLOCK_LEN, 0);
    }

    #[test]
    fn refuses_paths_the_kernel_would_mangle() {
        let mut a = Archive::new();
        for p in ["", "/abs", "a//b", "a/./b", "../x", "a/", "TRAILER!!!", "nul\0"] {
            assert!(a.add_file(p, 0o644, b"").is_err(), "{p:?} accepted");
        }
        assert!(a.add_file("x", 0o10644, b"").is_err(), "type bits in a mode");
        a.add_file("f", 0o644, b"").unwrap();
        assert!(a.add_file("f", 0o644, b"").unwrap_err().to_string().contains("added twice"));
        assert!(a.add_file("f/g", 0o644, b"").unwrap_err().to_string().contains("not as a directory"));
        assert!(a.add_dir("f", 0o755).is_err());
        a.add_dir("d", 0o755).unwrap();
        assert!(a.add_dir("d", 0o755).is_err());
        assert!(a.add_symlink("l", "").is_err());
    }

    #[test]
    fn header_fields_are_where_the_kernel_reads_them() {
        let mut a = Archive::new().mtime(0x1234_5678);
        a.add_file("ab", 0o755, b"hello").unwrap();
        let bytes = a.to_bytes().unwrap();
        let header = std::str::from_utf8(&bytes[..HEADER_LEN]).unwrap();
        assert_eq!(
            header,
            "070701\
             00000000000081ED000000000000000000000001\
             123456780000000500000000000000000000000000000000\
             0000000300000000"
        );
        assert_eq!(&bytes[110..119], b"ab\0\0\0\0hel", "name, NUL, zeros to a multiple of 4, data");
        let trailer = bytes.windows(10).position(|w| w == TRAILER.as_bytes()).unwrap();
        assert_eq!(&bytes[trailer - HEADER_LEN..trailer - HEADER_LEN + 6], NEWC_MAGIC);
        assert!(bytes[trailer + 11..].iter().all(|&b| b == 0));
    }

    #[test]
    fn reads_concatenated_archives_and_checksums() {
        let mut one = Archive::new();
        one.add_file("init", 0o755, b"#!").unwrap();
        let mut two = Archive::new();
        two.add_symlink("sh", "busybox").unwrap();
        let mut both = one.to_bytes().unwrap();
        both.extend(two.to_bytes().unwrap());
        let e = read_archive(&both).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!((e[1].kind, e[1].data), (EntryKind::Symlink, &b"busybox"[..]));

        // 070702: the checksum field must hold the byte sum of the data.
        let mut crc = one.to_bytes().unwrap();
        crc[5] = b'2';
        let sum = u32::from(b'#') + u32::from(b'!');
        assert!(read_archive(&crc).unwrap_err().to_string().contains("checksum"));
        crc[102..110].copy_from_slice(format!("{sum:08X}").as_bytes());
        assert_eq!(read_archive(&crc).unwrap()[0].data, b"#!");
    }

    #[test]
    fn refuses_truncated_and_foreign_input_with_the_offset() {
        let mut a = Archive::new();
        a.add_file("f", 0o644, b"data").unwrap();
        let bytes = a.to_bytes().unwrap();
        let trailer_at = bytes.windows(10).position(|w| w == TRAILER.as_bytes()).unwrap() - HEADER_LEN;
        for (input, needle) in [
            (&bytes[..50], "cut off"),
            (&bytes[..114], "data run past"),
            (&bytes[..trailer_at], "without a TRAILER"),
            (&b""[..], "empty"),
            (&[0x1f, 0x8b, 8, 0, 0, 0][..], "gzip"),
        ] {
            let err = read_archive(input).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        let mut bad_hex = bytes.clone();
        bad_hex[20] = b'g';
        assert!(read_archive(&bad_hex).unwrap_err().to_string().contains("field mode"));
        let mut misaligned = vec![0u8; 3];
        misaligned.extend_from_slice(&bytes);
        assert!(read_archive(&misaligned).unwrap_err().to_string().contains("multiple of 4"));
    }

    /// Found by the cpio_read fuzz target: an archive with a name twice differed from itself, because the
    /// first occurrence was compared with the last.
    #[test]
    fn fuzz_finding_a_name_twice_is_compared_occurrence_by_occurrence() {
        let mut one = Archive::new();
        one.add_dir("dev", 0o755).unwrap();
        one.add_file("init", 0o755, b"a").unwrap();
        let mut two = Archive::new();
        two.add_dir("dev", 0o700).unwrap();
        let mut twice = one.to_bytes().unwrap();
        twice.extend(two.to_bytes().unwrap());
        let entries = read_archive(&twice).unwrap();
        assert_eq!(first_difference(&entries, &entries), None);
        let one_bytes = one.to_bytes().unwrap();
        let once = read_archive(&one_bytes).unwrap();
        let d = first_difference(&once, &entries).unwrap();
        assert_eq!(d.to_string(), "dev: 1 times in the first archive, 2 in the second");
        let d = first_difference(&entries, &once).unwrap();
        assert_eq!(d.to_string(), "dev: 2 times in the first archive, 1 in the second");
    }

    #[test]
    fn names_the_first_differing_entry() {
        let build = |content: &'static [u8], mode: u32, extra: bool| {
            let mut a = Archive::new();
            a.add_file("bin/app", 0o755, b"same").unwrap();
            a.add_file("etc/config", mode, content).unwrap();
            if extra {
                a.add_file("etc/zz", 0o644, b"").unwrap();
            }
            a.to_bytes().unwrap()
        };
        let base = build(b"abcdef", 0o644, false);
        let diff = |other: &[u8]| {
            first_difference(&read_archive(&base).unwrap(), &read_archive(other).unwrap()).map(|d| d.to_string())
        };
        assert_eq!(diff(&base), None);
        assert_eq!(
            diff(&build(b"abcXef", 0o644, false)).unwrap(),
            "etc/config: contents differ from byte 3 (both 6 bytes)"
        );
        assert_eq!(
            diff(&build(b"abc", 0o644, false)).unwrap(),
            "etc/config: contents differ from byte 3 (6 bytes against 3)"
        );
        assert_eq!(
            diff(&build(b"abcdef", 0o600, false)).unwrap(),
            "etc/config: same contents, but mode 100644 against 100600"
        );
        assert_eq!(diff(&build(b"abcdef", 0o644, true)).unwrap(), "etc/zz: only in the second archive");
        let later = {
            let mut a = Archive::new().mtime(1);
            a.add_file("bin/app", 0o755, b"same").unwrap();
            a.add_file("etc/config", 0o644, b"abcdef").unwrap();
            a.to_bytes().unwrap()
        };
        assert_eq!(diff(&later).unwrap(), "bin: same contents, but mtime 0 against 1");
    }
}

//! The two ramdisks of a Nitro Enclave image, laid out the way AWS's bootstrap `init` expects them.
//!
//! `nitro-cli build-enclave` makes an EIF from the blobs it ships (kernel, its command line, `init`,
//! `nsm.ko`) and a Docker image. What the two ramdisks hold follows from AWS's code, read for this
//! module (aws-nitro-enclaves-cli's `enclave_build` and aws-nitro-enclaves-sdk-bootstrap's
//! `init/init.c`; `docs/OPERATING.md` lists what was checked and what only hardware can check):
//!
//! - **The first ramdisk** (PCR1, with the kernel and cmdline) holds `init` (mode 0755), `nsm.ko`
//!   (0755) and an empty `dev` directory (0755). The kernel runs `/init`; init mounts devtmpfs on
//!   `/dev`, loads `nsm.ko` from its working directory (the root) and deletes it, and tells the
//!   parent it booted.
//! - **The second ramdisk** (PCR2) holds the application: its root file system under `rootfs/`, and
//!   two files beside it, `cmd` and `env` (0644). init reads each line by line (one argument, or one
//!   `NAME=VALUE`, per line, the newline removed), deletes both, makes `/rootfs` the root and executes
//!   the command with exactly that environment (looking a command without a `/` up in
//!   `/sbin:/usr/sbin:/bin:/usr/bin`). nitro-cli takes them from the image's `CMD` (or `ENTRYPOINT`
//!   when there is no `CMD`) and `ENV`, and adds `rootfs/dev`, `run`, `sys`, `var`, `proc` and `tmp`
//!   (0755): init mounts devtmpfs, tmpfs, sysfs and proc on them inside the new root, so they must
//!   exist, and whatever an image put under `/dev`, `/proc`, `/sys`, `/run` or `/tmp` would be hidden
//!   by those mounts.
//!
//! Both are written with [`Archive`](crate::cpio::Archive), so the same inputs give the same bytes.
//! nitro-cli's own ramdisks differ in details that change no behaviour (they come from `linuxkit`,
//! which adds a few files such as `etc/hosts`, and keeps the image's timestamps), so an EIF built
//! here has the PCR1 of nitro-cli's only when the ramdisk bytes match, which they need not; what
//! matters is that anyone who runs the same build gets the same PCRs.

use crate::cpio::Archive;
use crate::error::EifError;

/// Mode of the directories and of `init` and `nsm.ko` in nitro-cli's ramdisks.
const DIR_MODE: u32 = 0o755;
/// Mode of `cmd` and `env`.
const CONFIG_MODE: u32 = 0o644;
/// Directories of the application root that AWS's init mounts file systems on.
pub const MOUNT_POINTS: [&str; 5] = ["dev", "proc", "run", "sys", "tmp"];
/// The directories nitro-cli adds to every application root (the mount points and `var`).
pub const ROOT_DIRS: [&str; 6] = ["dev", "proc", "run", "sys", "tmp", "var"];
/// Where init looks up a command given without a `/` (its fixed `PATH`).
pub const INIT_PATH: [&str; 4] = ["sbin", "usr/sbin", "bin", "usr/bin"];

/// The first ramdisk: `dev/`, `init` and `nsm.ko`, as nitro-cli lays them out.
pub fn bootstrap_ramdisk(init: &[u8], nsm_ko: &[u8], mtime: u32) -> Result<Vec<u8>, EifError> {
    if init.is_empty() {
        return Err(EifError::InvalidInput("the bootstrap init is empty".into()));
    }
    let mut archive = Archive::new().mtime(mtime);
    archive.add_dir("dev", DIR_MODE)?;
    archive.add_file("init", DIR_MODE, init)?;
    archive.add_file("nsm.ko", DIR_MODE, nsm_ko)?;
    archive.to_bytes()
}

/// The second ramdisk: an application root under `rootfs/`, with the `cmd` and `env` that AWS's
/// init runs it with.
///
/// ```
/// use veil_eif::ramdisk::AppRamdisk;
/// use veil_eif::cpio::read_archive;
///
/// let binary = b"\x7fELF...".to_vec();
/// let mut app = AppRamdisk::new(vec!["/usr/bin/app".into(), "--serve".into()]);
/// app.file("/usr/bin/app", 0o755, &binary)?;
/// app.env("RUST_LOG", "info")?;
/// let bytes = app.to_bytes()?;
/// let entries = read_archive(&bytes)?;
/// let cmd = entries.iter().find(|e| e.name == b"cmd").unwrap();
/// assert_eq!(cmd.data, b"/usr/bin/app\n--serve\n");
/// # Ok::<(), veil_eif::EifError>(())
/// ```
#[derive(Debug, Clone)]
pub struct AppRamdisk<'a> {
    cmd: Vec<String>,
    env: Vec<String>,
    files: Vec<(String, u32, &'a [u8])>,
    mtime: u32,
}

impl<'a> AppRamdisk<'a> {
    /// An application root that runs `cmd` (program and arguments).
    pub fn new(cmd: Vec<String>) -> Self {
        Self { cmd, env: Vec::new(), files: Vec::new(), mtime: 0 }
    }

    /// Sets the one mtime of every entry (0 by default).
    pub fn mtime(mut self, unix_seconds: u32) -> Self {
        self.mtime = unix_seconds;
        self
    }

    /// Adds `NAME=VALUE` to the program's environment (in this order; it is all the environment the
    /// program gets).
    pub fn env(&mut self, name: &str, value: &str) -> Result<&mut Self, EifError> {
        if name.is_empty() || name.contains('=') {
            return Err(EifError::InvalidInput(format!("environment variable name {name:?}: empty or contains '='")));
        }
        let line = format!("{name}={value}");
        check_line("environment entry", &line)?;
        self.env.push(line);
        Ok(self)
    }

    /// Adds a file at an absolute path of the application's root (`/usr/bin/app`).
    pub fn file(&mut self, path: &str, mode: u32, data: &'a [u8]) -> Result<&mut Self, EifError> {
        let inner = image_path(path)?;
        self.files.push((inner, mode, data));
        Ok(self)
    }

    /// The `cmd` file: one argument per line.
    pub fn cmd_file(&self) -> Result<String, EifError> {
        if self.cmd.is_empty() {
            return Err(EifError::InvalidInput("no command: the image must say what init runs".into()));
        }
        let mut out = String::new();
        for arg in &self.cmd {
            check_line("command argument", arg)?;
            out.push_str(arg);
            out.push('\n');
        }
        Ok(out)
    }

    /// The `env` file: one `NAME=VALUE` per line.
    pub fn env_file(&self) -> String {
        self.env.iter().map(|l| format!("{l}\n")).collect()
    }

    /// Writes the ramdisk, after checking that init can run it: the command names a file of the image
    /// with an execute bit, and no file hides under a directory init mounts over.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EifError> {
        let cmd = self.cmd_file()?;
        let env = self.env_file();
        let mut archive = Archive::new().mtime(self.mtime);
        archive.add_file("cmd", CONFIG_MODE, cmd.as_bytes())?;
        archive.add_file("env", CONFIG_MODE, env.as_bytes())?;
        archive.add_dir("rootfs", DIR_MODE)?;
        for dir in ROOT_DIRS {
            archive.add_dir(&format!("rootfs/{dir}"), DIR_MODE)?;
        }
        for (path, mode, data) in &self.files {
            archive.add_file(&format!("rootfs/{path}"), *mode, data)?;
        }

        let program = &self.cmd[0];
        let found = if program.contains('/') {
            program.strip_prefix('/').is_some_and(|p| archive.is_executable_file(&format!("rootfs/{p}")))
        } else {
            INIT_PATH.iter().any(|dir| archive.is_executable_file(&format!("rootfs/{dir}/{program}")))
        };
        if !found {
            return Err(EifError::InvalidInput(format!(
                "the command {program:?} is not an executable file of the image (init runs it from the new root; \
                 a name without '/' is looked up in /sbin, /usr/sbin, /bin and /usr/bin)"
            )));
        }
        archive.to_bytes()
    }
}

/// `/usr/bin/app` → `usr/bin/app`, refusing relative paths and paths under init's mount points.
fn image_path(path: &str) -> Result<String, EifError> {
    let Some(inner) = path.strip_prefix('/') else {
        return Err(EifError::InvalidInput(format!("image path {path:?} must be absolute (start with /)")));
    };
    let top = inner.split('/').next().unwrap_or_default();
    if MOUNT_POINTS.contains(&top) {
        return Err(EifError::InvalidInput(format!(
            "image path {path}: AWS's init mounts a file system on /{top}, which would hide it"
        )));
    }
    Ok(inner.to_owned())
}

/// init reads `cmd` and `env` with getline and C strings: a newline would split the entry in two and
/// a NUL would cut it short.
fn check_line(what: &str, line: &str) -> Result<(), EifError> {
    if line.contains('\n') || line.contains('\0') {
        return Err(EifError::InvalidInput(format!(
            "{what} {line:?} contains a newline or NUL, which AWS's init would split or cut"
        )));
    }
    Ok(())
}

/// The kernel version in a kernel configuration file (nitro-cli's blobs ship `bzImage.config`),
/// from its header line `# Linux/x86_64 4.14.256-209.484.amzn2.x86_64 Kernel Configuration`:
/// `("Linux", "4.14.256")`. nitro-cli records the same two words in the EIF's metadata.
pub fn kernel_config_version(config: &str) -> Option<(String, String)> {
    let line = config.lines().take(8).find(|l| l.trim_end().ends_with("Kernel Configuration"))?;
    let rest = line.trim_start_matches(|c: char| c == '#' || c.is_whitespace());
    let (os, rest) = rest.split_once('/')?;
    let release = rest.split_whitespace().nth(1)?;
    let version = release.split('-').next()?;
    (!os.is_empty() && !version.is_empty()).then(|| (os.to_owned(), version.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::{EntryKind, read_archive};

    fn names(bytes: &[u8]) -> Vec<String> {
        read_archive(bytes).unwrap().iter().map(|e| e.path()).collect()
    }

    #[test]
    fn bootstrap_layout_is_nitro_clis() {
        let bytes = bootstrap_ramdisk(b"init-binary", b"module", 0).unwrap();
        let entries = read_archive(&bytes).unwrap();
        assert_eq!(names(&bytes), ["dev", "init", "nsm.ko"]);
        assert!(entries.iter().all(|e| e.permissions() == 0o755 && e.uid == 0 && e.mtime == 0));
        assert_eq!(entries[0].kind, EntryKind::Directory);
        assert_eq!(entries[1].data, b"init-binary");
    }

    #[test]
    fn app_layout_has_cmd_env_and_the_mount_points() {
        let bin = b"program".to_vec();
        let mut app = AppRamdisk::new(vec!["/usr/local/bin/app".into(), "--config".into(), "/etc/app.toml".into()]);
        app.file("/usr/local/bin/app", 0o755, &bin).unwrap();
        app.file("/etc/app.toml", 0o644, b"x = 1\n").unwrap();
        app.env("A", "1").unwrap().env("B", "two words").unwrap();
        let bytes = app.to_bytes().unwrap();
        let entries = read_archive(&bytes).unwrap();
        assert_eq!(
            names(&bytes),
            [
                "cmd",
                "env",
                "rootfs",
                "rootfs/dev",
                "rootfs/etc",
                "rootfs/etc/app.toml",
                "rootfs/proc",
                "rootfs/run",
                "rootfs/sys",
                "rootfs/tmp",
                "rootfs/usr",
                "rootfs/usr/local",
                "rootfs/usr/local/bin",
                "rootfs/usr/local/bin/app",
                "rootfs/var",
            ]
        );
        assert_eq!(entries[0].data, b"/usr/local/bin/app\n--config\n/etc/app.toml\n");
        assert_eq!(entries[1].data, b"A=1\nB=two words\n");
        assert_eq!(entries[0].permissions(), 0o644);
    }

    #[test]
    fn refuses_what_init_could_not_run() {
        let bin = b"program".to_vec();
        let mut app = AppRamdisk::new(vec!["/usr/bin/missing".into()]);
        app.file("/usr/bin/app", 0o755, &bin).unwrap();
        assert!(app.to_bytes().unwrap_err().to_string().contains("not an executable file"));
        let mut app = AppRamdisk::new(vec!["/usr/bin/app".into()]);
        app.file("/usr/bin/app", 0o644, &bin).unwrap();
        assert!(app.to_bytes().is_err(), "no execute bit");
        let mut app = AppRamdisk::new(vec!["app".into()]);
        app.file("/usr/bin/app", 0o755, &bin).unwrap();
        assert!(app.to_bytes().is_ok(), "found on init's PATH");
        assert!(AppRamdisk::new(vec![]).to_bytes().unwrap_err().to_string().contains("no command"));
        let mut app = AppRamdisk::new(vec!["/a\nb".into()]);
        assert!(app.to_bytes().unwrap_err().to_string().contains("newline"));
        assert!(app.env("X", "a\nb").is_err());
        assert!(app.env("X=Y", "1").is_err());
        assert!(app.file("relative", 0o644, b"").is_err());
        assert!(app.file("/tmp/x", 0o644, b"").unwrap_err().to_string().contains("hide it"));
        assert!(app.file("/proc", 0o644, b"").is_err());
    }

    #[test]
    fn reads_the_kernel_version_as_nitro_cli_does() {
        let config = "#\n# Automatically generated file; DO NOT EDIT.\n# Linux/x86_64 4.14.256-209.484.amzn2.x86_64 Kernel Configuration\n#\n";
        assert_eq!(kernel_config_version(config), Some(("Linux".into(), "4.14.256".into())));
        let arm = "#\n# Automatically generated file; DO NOT EDIT.\n# Linux/arm64 6.6.79 Kernel Configuration\n";
        assert_eq!(kernel_config_version(arm), Some(("Linux".into(), "6.6.79".into())));
        assert_eq!(kernel_config_version("CONFIG_X=y\n"), None);
    }
}

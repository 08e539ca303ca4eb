//! The stack's children one by one: which they are ([`Role`]), and killing, restarting and watching
//! each (what `veil dev`'s supervisor and the fault tests drive).
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use super::Stack;
use super::children::kill;

/// The stack's long-lived processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Kms,
    Parent,
    Enclave,
}

impl Role {
    /// Every role, in start order.
    pub const ALL: [Role; 3] = [Role::Kms, Role::Parent, Role::Enclave];

    /// The program's name.
    pub fn program(self) -> &'static str {
        match self {
            Role::Kms => "veil-mock-kms",
            Role::Parent => "veil-parent",
            Role::Enclave => "veil-enclave",
        }
    }

    /// A short label (`kms`, `parent`, `enclave`): JSON keys and log file names.
    pub fn label(self) -> &'static str {
        match self {
            Role::Kms => "kms",
            Role::Parent => "parent",
            Role::Enclave => "enclave",
        }
    }
}

impl Stack {
    /// Kills the enclave (as a crash would).
    pub fn kill_enclave(&mut self) {
        kill(&mut self.enclave);
    }

    /// Kills the mock KMS (as an outage would).
    pub fn kill_kms(&mut self) {
        kill(&mut self.kms_child);
    }

    /// Restarts the mock KMS on the same port and state.
    pub fn restart_kms(&mut self) -> anyhow::Result<()> {
        let (child, _) = self.kms.spawn_on(&self.options.bin_dir, &self.kms.host_port.clone())?;
        self.kms_child = Some(child);
        Ok(())
    }

    fn slot(&mut self, role: Role) -> &mut Option<Child> {
        match role {
            Role::Kms => &mut self.kms_child,
            Role::Parent => &mut self.parent,
            Role::Enclave => &mut self.enclave,
        }
    }

    /// The process id of `role`'s child, while the stack holds one.
    pub fn pid(&self, role: Role) -> Option<u32> {
        match role {
            Role::Kms => self.kms_child.as_ref(),
            Role::Parent => self.parent.as_ref(),
            Role::Enclave => self.enclave.as_ref(),
        }
        .map(Child::id)
    }

    /// `role`'s log file.
    pub fn log_path(&self, role: Role) -> PathBuf {
        self.logs.join(format!("{}.log", role.label()))
    }

    /// `role`'s exit status once its child has exited; the child is reaped and let go, so each exit is
    /// reported once.
    pub fn take_exited(&mut self, role: Role) -> Option<std::process::ExitStatus> {
        let slot = self.slot(role);
        let status = slot.as_mut().and_then(|c| c.try_wait().ok().flatten())?;
        *slot = None;
        Some(status)
    }

    /// Starts `role` again, on the same addresses and state: the mock KMS and the parent wait for their
    /// ready files; the enclave is only started (it loads its models in its own time).
    pub fn restart(&mut self, role: Role) -> anyhow::Result<()> {
        match role {
            Role::Kms => self.restart_kms(),
            Role::Parent => self.restart_parent(),
            Role::Enclave => self.spawn_enclave(),
        }
    }

    /// Kills the parent (as a crash would).
    pub fn kill_parent(&mut self) {
        kill(&mut self.parent);
    }

    /// Starts the parent again on the same port (its clients' URL stays valid) and waits for its ready file.
    pub fn restart_parent(&mut self) -> anyhow::Result<()> {
        let listen = format!("tcp://{}", self.url.trim_start_matches("http://"));
        self.launch_parent_on(&listen)?;
        Ok(())
    }

    /// Stops every child: SIGTERM, then SIGKILL after five seconds.
    pub fn stop(&mut self) {
        for child in [&mut self.enclave, &mut self.parent, &mut self.kms_child] {
            if let Some(mut c) = child.take() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

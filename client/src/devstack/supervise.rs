//! Supervision: `veil dev` restarts a child that dies, as systemd does for the units in `deploy/systemd/`.
//!
//! A child that exits is started again after a backoff that doubles with each restart (from
//! [`RestartPolicy::initial_delay`] up to [`RestartPolicy::max_delay`]) and starts over once the child
//! has stayed up for [`RestartPolicy::reset_after`]: a crash now and then is restarted at once, a crash
//! loop (a corrupt model file, KMS refusing the key) slows down instead of spinning. Each restart is the
//! same program with the same arguments on the same sockets and state, so a restarted enclave fetches its
//! models from the parent and checks them again, exactly as at first boot; a restarted parent listens on
//! the same port, and dials the enclave afresh (it does so on its own after an enclave restart).
//!
//! The supervisor keeps a status for scripts: [`Supervisor::status`] (written by `veil dev` to
//! `status.json` in the state directory, atomically, at every change) names each child's pid, state,
//! restarts, last exit and, for the enclave, its last cold start (process start to every model loaded).
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{Role, Stack, http_get};

/// When to restart a child that died.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// The wait before the first restart (and before any restart of a child that had been up for
    /// [`RestartPolicy::reset_after`]).
    pub initial_delay: Duration,
    /// The longest wait between restarts.
    pub max_delay: Duration,
    /// A child up this long is healthy again: its next restart waits only `initial_delay`.
    pub reset_after: Duration,
    /// Restarts per child before giving up (`None`: never give up).
    pub max_restarts: Option<u32>,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
            max_restarts: None,
        }
    }
}

impl RestartPolicy {
    /// The wait before restarting a child that was up for `up_for`, after the previous wait `previous`
    /// (`None` before the first restart): [`RestartPolicy::initial_delay`] at first and after a healthy
    /// run, else double the previous, at most [`RestartPolicy::max_delay`].
    pub fn delay(&self, previous: Option<Duration>, up_for: Duration) -> Duration {
        match previous {
            Some(p) if up_for < self.reset_after => (p * 2).min(self.max_delay),
            _ => self.initial_delay,
        }
    }
}

/// What happened to a child, for `veil dev`'s log.
#[derive(Debug, Clone)]
pub enum SupervisorEvent {
    /// It exited; a restart follows after `restart_in`.
    Exited { role: Role, status: String, restart_in: Duration, log_tail: String },
    /// It was started again (its `restarts`-th restart).
    Restarted { role: Role, restarts: u32, pid: Option<u32> },
    /// Starting it again failed; another try follows after `retry_in`.
    RestartFailed { role: Role, error: String, retry_in: Duration },
    /// The enclave came up: every model loaded, `startup` after its process started.
    Ready { startup: Duration },
    /// It exited once more than [`RestartPolicy::max_restarts`] allows: the stack stops.
    GaveUp { role: Role, status: String, log_tail: String },
}

impl std::fmt::Display for SupervisorEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SupervisorEvent::Exited { role, status, restart_in, log_tail } => write!(
                f,
                "{} exited ({status}); restarting it in {:.1} s. Last lines of its log:\n{log_tail}",
                role.program(),
                restart_in.as_secs_f64()
            ),
            SupervisorEvent::Restarted { role, restarts, pid } => {
                write!(f, "{} restarted (restart {restarts}, pid {})", role.program(), pid.unwrap_or(0))
            }
            SupervisorEvent::RestartFailed { role, error, retry_in } => write!(
                f,
                "restarting {} failed: {error}; trying again in {:.1} s",
                role.program(),
                retry_in.as_secs_f64()
            ),
            SupervisorEvent::Ready { startup } => {
                write!(f, "veil-enclave is ready: every model loaded {:.2} s after it started", startup.as_secs_f64())
            }
            SupervisorEvent::GaveUp { role, status, log_tail } => write!(
                f,
                "{} exited ({status}) and has been restarted as often as allowed; stopping. Last lines of its log:\n{log_tail}",
                role.program()
            ),
        }
    }
}

/// One child's record.
#[derive(Debug, Clone)]
struct Watch {
    role: Role,
    restarts: u32,
    /// The last wait before a restart, if any.
    delay: Option<Duration>,
    /// When the current process started.
    started: Instant,
    started_unix_ms: u64,
    /// A restart due at this instant (the child is down).
    due: Option<Instant>,
    last_exit: Option<String>,
    last_exit_unix_ms: Option<u64>,
    /// Enclave only: not yet seen ready since it started, and its last cold start.
    starting: bool,
    startup: Option<Duration>,
}

/// Restarts the children of a [`Stack`] as they die (see the module documentation).
#[derive(Debug)]
pub struct Supervisor {
    policy: RestartPolicy,
    watches: Vec<Watch>,
    status_file: PathBuf,
    gave_up: bool,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Supervisor {
    /// Watches `stack`'s running children; the status goes to `status_file`.
    pub fn new(stack: &Stack, policy: RestartPolicy, status_file: PathBuf) -> Supervisor {
        let now = Instant::now();
        let watches = Role::ALL
            .into_iter()
            .filter(|r| stack.pid(*r).is_some())
            .map(|role| Watch {
                role,
                restarts: 0,
                delay: None,
                started: now,
                started_unix_ms: unix_ms(),
                due: None,
                last_exit: None,
                last_exit_unix_ms: None,
                starting: false,
                startup: if role == Role::Enclave { stack.enclave_startup() } else { None },
            })
            .collect();
        Supervisor { policy, watches, status_file, gave_up: false }
    }

    /// True once a child died more often than the policy allows.
    pub fn gave_up(&self) -> bool {
        self.gave_up
    }

    /// Restarts of `role` so far.
    pub fn restarts(&self, role: Role) -> u32 {
        self.watches.iter().find(|w| w.role == role).map_or(0, |w| w.restarts)
    }

    /// One round: notices children that exited, restarts those whose backoff has passed, notices a
    /// restarted enclave coming up. Blocking (a restarted parent or mock KMS is waited for); call it every
    /// few hundred milliseconds. Returns what happened, and rewrites the status file when anything did.
    pub fn tick(&mut self, stack: &mut Stack) -> Vec<SupervisorEvent> {
        let mut events = Vec::new();
        for i in 0..self.watches.len() {
            let role = self.watches[i].role;
            if self.watches[i].due.is_none()
                && let Some(status) = stack.take_exited(role)
            {
                let w = &mut self.watches[i];
                let status = status.to_string();
                let log_tail = super::tail(&stack.log_path(role));
                w.last_exit = Some(status.clone());
                w.last_exit_unix_ms = Some(unix_ms());
                w.starting = false;
                if self.policy.max_restarts.is_some_and(|max| w.restarts >= max) {
                    self.gave_up = true;
                    events.push(SupervisorEvent::GaveUp { role, status, log_tail });
                    continue;
                }
                let delay = self.policy.delay(w.delay, w.started.elapsed());
                w.delay = Some(delay);
                w.due = Some(Instant::now() + delay);
                events.push(SupervisorEvent::Exited { role, status, restart_in: delay, log_tail });
            }
            if let Some(due) = self.watches[i].due
                && Instant::now() >= due
            {
                let w = &mut self.watches[i];
                let marker = format!("\n--- veil dev: restart {} of {} ---\n", w.restarts + 1, role.program());
                let _ = std::fs::OpenOptions::new()
                    .append(true)
                    .open(stack.log_path(role))
                    .and_then(|mut f| std::io::Write::write_all(&mut f, marker.as_bytes()));
                w.started = Instant::now();
                w.started_unix_ms = unix_ms();
                match stack.restart(role) {
                    Ok(()) => {
                        w.restarts += 1;
                        w.due = None;
                        w.starting = role == Role::Enclave;
                        events.push(SupervisorEvent::Restarted { role, restarts: w.restarts, pid: stack.pid(role) });
                    }
                    Err(e) => {
                        // Counted as a restart all the same: a child that cannot even start is crash-looping,
                        // and --max-restarts ends that loop too.
                        w.restarts += 1;
                        if self.policy.max_restarts.is_some_and(|max| w.restarts >= max) {
                            w.due = None;
                            self.gave_up = true;
                            let log_tail = super::tail(&stack.log_path(role));
                            events.push(SupervisorEvent::GaveUp {
                                role,
                                status: format!("could not be restarted: {e:#}"),
                                log_tail,
                            });
                            continue;
                        }
                        let retry_in = self.policy.delay(w.delay, Duration::ZERO);
                        w.delay = Some(retry_in);
                        w.due = Some(Instant::now() + retry_in);
                        events.push(SupervisorEvent::RestartFailed { role, error: format!("{e:#}"), retry_in });
                    }
                }
            }
            let w = &mut self.watches[i];
            if w.starting && matches!(http_get(&stack.url, "/readyz"), Ok((200, _))) {
                w.starting = false;
                let startup = w.started.elapsed();
                w.startup = Some(startup);
                events.push(SupervisorEvent::Ready { startup });
            }
        }
        if !events.is_empty() {
            let _ = self.write_status(stack);
        }
        events
    }

    /// The status, as `status.json` holds it.
    pub fn status(&self, stack: &Stack) -> Value {
        let mut children = serde_json::Map::new();
        let mut restarts = serde_json::Map::new();
        for w in &self.watches {
            let state = if w.due.is_some() {
                "restarting"
            } else if w.starting {
                "starting"
            } else if self.gave_up && stack.pid(w.role).is_none() {
                "failed"
            } else {
                "running"
            };
            restarts.insert(w.role.label().into(), json!(w.restarts));
            let mut c = json!({
                "program": w.role.program(),
                "pid": stack.pid(w.role),
                "state": state,
                "restarts": w.restarts,
                "started_unix_ms": w.started_unix_ms,
                "last_exit": w.last_exit,
                "last_exit_unix_ms": w.last_exit_unix_ms,
                "log": stack.log_path(w.role).display().to_string(),
            });
            if w.role == Role::Enclave {
                c["startup_ms"] = json!(w.startup.map(|d| d.as_millis() as u64));
            }
            children.insert(w.role.label().into(), c);
        }
        let healthy = self.watches.iter().all(|w| w.due.is_none() && !w.starting) && !self.gave_up;
        json!({
            "state": if self.gave_up { "stopping" } else if healthy { "running" } else { "degraded" },
            "restarts": restarts,
            "children": children,
            "updated_unix_ms": unix_ms(),
        })
    }

    /// Writes the status file atomically (a temporary file renamed over it): a reader never sees half.
    pub fn write_status(&self, stack: &Stack) -> std::io::Result<()> {
        let tmp = self.status_file.with_extension("json.tmp");
        let mut bytes = serde_json::to_vec_pretty(&self.status(stack)).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &self.status_file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_doubling_to_the_cap_and_start_over_after_a_healthy_run() {
        let p = RestartPolicy::default();
        let crash = Duration::from_secs(1);
        let mut waits = vec![];
        let mut last = None;
        for _ in 0..9 {
            let d = p.delay(last, crash);
            waits.push(d.as_millis());
            last = Some(d);
        }
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        // Up for a minute: healthy again, the next crash is restarted at once.
        assert_eq!(p.delay(last, Duration::from_secs(60)), Duration::from_millis(500));
    }

    #[test]
    fn events_say_what_happened_and_what_comes_next() {
        let e = SupervisorEvent::Exited {
            role: Role::Enclave,
            status: "signal: 9 (SIGKILL)".into(),
            restart_in: Duration::from_millis(500),
            log_tail: "last words".into(),
        };
        let text = e.to_string();
        assert!(text.starts_with("veil-enclave exited (signal: 9 (SIGKILL)); restarting it in 0.5 s"), "{text}");
        assert!(text.ends_with("last words"), "{text}");
        let r = SupervisorEvent::Restarted { role: Role::Parent, restarts: 2, pid: Some(42) }.to_string();
        assert_eq!(r, "veil-parent restarted (restart 2, pid 42)");
    }
}

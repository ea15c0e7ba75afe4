//! The service supervisor: starts services in order, restarts them with a
//! capped exponential backoff, reaps every child (as PID 1 it also inherits
//! orphans), and forwards their output to the console line by line.
//!
//! Every child is confined to its configured uid, gid and capabilities in
//! its own mount namespace (`privs`).
//!
//! Time is passed in (`now`) so scheduling is deterministic under test; the
//! caller decides how to sleep (signals in PID 1, polling in tests).

use crate::privs::Privileges;
use contract::control::{EventKind, INIT_SOURCE};
use contract::machine::{Restart, Service};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub type Console = Arc<Mutex<dyn Write + Send>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first restart.
    pub base: Duration,
    /// Upper bound of the doubling delay.
    pub cap: Duration,
    /// A run at least this long resets the failure count.
    pub stable: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            stable: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// Delay before restart number `failures` (1-based): base, 2·base, 4·base … cap.
    pub fn delay(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << shift)
            .map_or(self.cap, |d| d.min(self.cap))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// exec failed; the error was logged.
    SpawnFailed,
}

impl Exit {
    pub fn from_wait_status(st: i32) -> Exit {
        if libc::WIFSIGNALED(st) {
            Exit::Signal(libc::WTERMSIG(st))
        } else {
            Exit::Code(libc::WEXITSTATUS(st))
        }
    }
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "signal {s}"),
            Exit::SpawnFailed => write!(f, "failed to start"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Started {
        name: String,
        pid: i32,
    },
    Exited {
        name: String,
        exit: Exit,
        restart_in: Option<Duration>,
    },
    Orphan {
        pid: i32,
        exit: Exit,
    },
}

/// Whether a service that ended with `exit` is started again.
pub fn should_restart(policy: Restart, exit: Exit) -> bool {
    match policy {
        Restart::Always => true,
        Restart::OnFailure => !exit.success(),
        Restart::Never => false,
    }
}

#[derive(Debug)]
struct Slot {
    spec: Service,
    pid: Option<i32>,
    started_at: Option<Instant>,
    failures: u32,
    restart_at: Option<Instant>,
    starts: u32,
    last_exit: Option<Exit>,
}

pub struct Supervisor {
    slots: Vec<Slot>,
    backoff: Backoff,
    console: Console,
}

/// Copies a child's stream to the console, one `name: line` at a time so
/// lines of different services never interleave mid-line, and into the log
/// ring (source `name`, `stream` out or err) for the control socket.
fn forward(
    name: String,
    stream_kind: &'static str,
    stream: impl Read + Send + 'static,
    console: Console,
) {
    let label = name.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("out-{name}"))
        .spawn(move || {
            let mut r = BufReader::new(stream);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if line.last() != Some(&b'\n') {
                            line.push(b'\n');
                        }
                        if let Ok(mut c) = console.lock() {
                            let _ = write!(c, "{name}: ");
                            let _ = c.write_all(&line);
                            let _ = c.flush();
                        }
                        crate::ring::RING.push_line(
                            &name,
                            stream_kind,
                            &String::from_utf8_lossy(&line),
                        );
                    }
                }
            }
        });
    if let Err(e) = spawned {
        // The stream is dropped: the service sees EPIPE on output instead
        // of init panicking over a thread it could not create.
        crate::say!("no output forwarding for {label}: {e}");
    }
}

/// One-shot commands (health checks), by pid: `None` while running, the
/// exit once reaped. Shared by every thread of init: the control socket
/// runs checks on its own thread while the main loop reaps with
/// `waitpid(-1)`, so whoever reaps a registered pid leaves its exit here.
static ONESHOTS: Mutex<BTreeMap<i32, Option<Exit>>> = Mutex::new(BTreeMap::new());

fn oneshots() -> std::sync::MutexGuard<'static, BTreeMap<i32, Option<Exit>>> {
    ONESHOTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts `exec` confined to `privs` in its own process group, stdin
/// null, both output streams forwarded (console and ring, as `label`).
/// The child is not waited for: `waitpid` collects it.
pub fn start(
    label: &str,
    exec: &str,
    args: &[String],
    privs: Privileges,
    console: &Console,
) -> std::io::Result<i32> {
    let mut cmd = crate::sys::command(exec);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group, so stopping a service also stops its children.
        .process_group(0);
    let confined = crate::privs::confine(&mut cmd, privs)?;
    let mut c = cmd.spawn().map_err(|e| confined.explain(e))?;
    let pid = c.id() as i32;
    if let Some(o) = c.stdout.take() {
        forward(label.to_string(), "out", o, console.clone());
    }
    if let Some(e) = c.stderr.take() {
        forward(label.to_string(), "err", e, console.clone());
    }
    // The Child handle is dropped without waiting: waitpid(-1) in `reap`
    // collects every child, services and orphans alike.
    drop(c);
    Ok(pid)
}

/// [`start`] for a one-shot: registered before any reaper can see its
/// exit (the registry's lock is held from spawn to insert).
pub fn start_oneshot(
    label: &str,
    exec: &str,
    args: &[String],
    privs: Privileges,
    console: &Console,
) -> std::io::Result<i32> {
    let mut g = oneshots();
    let pid = start(label, exec, args, privs, console)?;
    g.insert(pid, None);
    Ok(pid)
}

/// The exit of a one-shot once reaped (then forgotten). Also reaps it
/// directly, so a thread other than the main loop (or a test without a
/// main loop) need not wait for the loop's next `reap`.
pub fn take_oneshot(pid: i32) -> Option<Exit> {
    let mut g = oneshots();
    if g.get(&pid) == Some(&None) {
        let mut st = 0;
        // SAFETY: plain waitpid with a valid out-pointer.
        if unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) } == pid {
            g.insert(pid, Some(Exit::from_wait_status(st)));
        }
    }
    let exit = (*g.get(&pid)?)?;
    g.remove(&pid);
    Some(exit)
}

/// Kills a one-shot's process group (it stays registered until reaped).
pub fn kill_oneshot(pid: i32) {
    if pid > 1 && oneshots().contains_key(&pid) {
        // SAFETY: signalling a process group we created.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

impl Supervisor {
    pub fn new(services: Vec<Service>, backoff: Backoff, console: Console) -> Self {
        let slots = services
            .into_iter()
            .map(|spec| Slot {
                spec,
                pid: None,
                started_at: None,
                failures: 0,
                restart_at: None,
                starts: 0,
                last_exit: None,
            })
            .collect();
        Supervisor {
            slots,
            backoff,
            console,
        }
    }

    fn say(&self, msg: &str) {
        if let Ok(mut c) = self.console.lock() {
            let _ = writeln!(c, "cairn: {msg}");
        }
        crate::ring::RING.push_line(INIT_SOURCE, INIT_SOURCE, msg);
    }

    /// A console line that is also a service event.
    fn tell(&self, msg: &str) {
        self.say(msg);
        crate::ring::event(EventKind::Service, None, msg);
    }

    fn spawn(&mut self, i: usize, now: Instant) -> Vec<Event> {
        let spec = self.slots[i].spec.clone();
        self.slots[i].starts += 1;
        self.slots[i].restart_at = None;
        let child = Privileges::of_service(&spec)
            .map_err(|e| std::io::Error::other(format!("capabilities: {e}")))
            .and_then(|p| start(&spec.name, &spec.exec, &spec.args, p, &self.console));
        match child {
            Ok(pid) => {
                self.slots[i].pid = Some(pid);
                self.slots[i].started_at = Some(now);
                self.tell(&format!("started {} (pid {pid})", spec.name));
                vec![Event::Started {
                    name: spec.name,
                    pid,
                }]
            }
            Err(e) => {
                self.say(&format!("starting {} ({}): {e}", spec.name, spec.exec));
                self.slots[i].started_at = Some(now);
                self.finished(i, Exit::SpawnFailed, now)
                    .into_iter()
                    .collect()
            }
        }
    }

    fn finished(&mut self, i: usize, exit: Exit, now: Instant) -> Option<Event> {
        let backoff = self.backoff;
        let s = &mut self.slots[i];
        let ran = s
            .started_at
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        s.pid = None;
        s.last_exit = Some(exit);
        let restart_in = if should_restart(s.spec.restart, exit) {
            if ran >= backoff.stable {
                s.failures = 0;
            }
            s.failures += 1;
            let d = backoff.delay(s.failures);
            s.restart_at = Some(now + d);
            Some(d)
        } else {
            None
        };
        let name = s.spec.name.clone();
        match restart_in {
            Some(d) => self.tell(&format!(
                "{name} ended ({exit}); restarting in {} ms",
                d.as_millis()
            )),
            None => self.tell(&format!("{name} ended ({exit}); not restarting")),
        }
        Some(Event::Exited {
            name,
            exit,
            restart_in,
        })
    }

    /// Starts every service, in configuration order.
    pub fn start_all(&mut self, now: Instant) -> Vec<Event> {
        (0..self.slots.len())
            .flat_map(|i| self.spawn(i, now))
            .collect()
    }

    /// Collects every exited child without blocking.
    pub fn reap(&mut self, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let mut st = 0;
            // The registry is locked around waitpid: a one-shot's exit is
            // either taken by its starter or left there, never lost.
            let mut shots = oneshots();
            // SAFETY: plain waitpid with a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            let exit = Exit::from_wait_status(st);
            if let Some(slot) = shots.get_mut(&pid) {
                *slot = Some(exit);
                continue;
            }
            drop(shots);
            match self.slots.iter().position(|s| s.pid == Some(pid)) {
                Some(i) => events.extend(self.finished(i, exit, now)),
                None => events.push(Event::Orphan { pid, exit }),
            }
        }
        events
    }

    /// Starts a command that is not a service (a health check), confined to
    /// `privs` as services are; its exit is collected by [`Supervisor::reap`]
    /// and read with [`Supervisor::take_oneshot`].
    pub fn spawn_oneshot(
        &mut self,
        label: &str,
        exec: &str,
        args: &[String],
        privs: Privileges,
    ) -> std::io::Result<i32> {
        start_oneshot(label, exec, args, privs, &self.console)
    }

    /// The exit of a one-shot once it has been reaped (then forgotten).
    pub fn take_oneshot(&mut self, pid: i32) -> Option<Exit> {
        take_oneshot(pid)
    }

    /// Kills a one-shot's process group (it stays registered until reaped).
    pub fn kill_oneshot(&mut self, pid: i32) {
        kill_oneshot(pid)
    }

    /// Restarts services whose backoff has elapsed.
    pub fn start_due(&mut self, now: Instant) -> Vec<Event> {
        let due: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].restart_at.is_some_and(|t| t <= now))
            .collect();
        due.into_iter().flat_map(|i| self.spawn(i, now)).collect()
    }

    /// The earliest pending restart, for the caller's sleep.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots.iter().filter_map(|s| s.restart_at).min()
    }

    pub fn pid(&self, name: &str) -> Option<i32> {
        self.slot(name).and_then(|s| s.pid)
    }
    pub fn starts(&self, name: &str) -> u32 {
        self.slot(name).map_or(0, |s| s.starts)
    }
    pub fn last_exit(&self, name: &str) -> Option<Exit> {
        self.slot(name).and_then(|s| s.last_exit)
    }
    fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.spec.name == name)
    }

    /// Stops everything: SIGTERM to each service's process group, in reverse
    /// start order, SIGKILL to what is left after `grace`. No restarts after
    /// this. Returns the events of the children reaped meanwhile.
    pub fn stop_all(&mut self, grace: Duration) -> Vec<Event> {
        for s in &mut self.slots {
            s.restart_at = None;
            s.spec.restart = Restart::Never;
        }
        let mut events = Vec::new();
        for s in self.slots.iter().rev() {
            if let Some(pid) = s.pid.filter(|p| *p > 1) {
                // SAFETY: signalling a process group we created.
                unsafe { libc::kill(-pid, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + grace;
        while self.slots.iter().any(|s| s.pid.is_some()) && Instant::now() < deadline {
            events.extend(self.reap(Instant::now()));
            std::thread::sleep(Duration::from_millis(20));
        }
        for s in &self.slots {
            if let Some(pid) = s.pid.filter(|p| *p > 1) {
                self.say(&format!(
                    "{} did not stop within {} ms; killing",
                    s.spec.name,
                    grace.as_millis()
                ));
                // SAFETY: as above.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.slots.iter().any(|s| s.pid.is_some()) && Instant::now() < deadline {
            events.extend(self.reap(Instant::now()));
            std::thread::sleep(Duration::from_millis(10));
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
            stable: Duration::from_secs(10),
        };
        let ms: Vec<u128> = (1..=7).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(b.delay(0).as_millis(), 100);
        assert_eq!(b.delay(u32::MAX), b.cap);
    }

    #[test]
    fn restart_policy() {
        use Restart::*;
        assert!(should_restart(Always, Exit::Code(0)));
        assert!(!should_restart(OnFailure, Exit::Code(0)));
        assert!(should_restart(OnFailure, Exit::Code(1)));
        assert!(should_restart(OnFailure, Exit::Signal(9)));
        assert!(should_restart(OnFailure, Exit::SpawnFailed));
        assert!(!should_restart(Never, Exit::Code(1)));
    }
}

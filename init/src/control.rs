//! The control socket (contract::control): how cairnd, unprivileged, asks
//! PID 1 for what only init can do or knows. One thread accepts; one
//! thread per connection reads one request line and answers it.
//!
//! What needs a real node (running health checks, power, the disk for
//! rollback and upgrade) is behind [`Node`], so the dispatcher runs in
//! tests on a temporary socket with a fake node; the paths are in
//! [`Paths`] for the same reason.

use crate::ring::Ring;
use crate::supervisor::Console;
use contract::control::{ErrorKind, EventKind, LogLine, Reply, Request, MAX_REQUEST};
use contract::update::{Attempt, Outcome, Update};
use serde_json::{json, Value};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// How long a client may take to send its request, and a reply write may
/// block on a client that does not read, before the connection is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a follower with nothing to send checks that its client is
/// still there.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// Where the server lives and what it reads and writes.
#[derive(Debug, Clone)]
pub struct Paths {
    pub socket: PathBuf,
    /// The stored machine config (contract::machine::STORED_CONFIG).
    pub config: PathBuf,
    /// The kernel log (/dev/kmsg).
    pub kmsg: PathBuf,
    /// The socket's group (contract::api::GID).
    pub group: u32,
    /// cairnd's identity on /run (contract::api::SECRETS_DIR) and the
    /// owner of its files (contract::api::UID, GID).
    pub secrets: PathBuf,
    pub secrets_owner: (u32, u32),
}

impl Paths {
    pub fn node() -> Paths {
        Paths {
            socket: contract::control::SOCKET.into(),
            config: contract::machine::STORED_CONFIG.into(),
            kmsg: "/dev/kmsg".into(),
            group: contract::api::GID,
            secrets: contract::api::SECRETS_DIR.into(),
            secrets_owner: (contract::api::UID, contract::api::GID),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Reboot,
    PowerOff,
}

/// What only a real node can do.
pub trait Node: Send + Sync + 'static {
    /// Runs the machine config's health checks once.
    fn health(&self) -> Vec<crate::health::CheckResult>;
    /// Asks the main loop to shut down (it stops services and unmounts).
    fn power(&self, how: Power);
    /// Makes the other slot boot next; the result of `Done`.
    fn rollback(&self) -> Result<Value, String>;
    /// One upgrade check of `cfg` (installs when newer, never reboots).
    fn upgrade(&self, cfg: &Update) -> Result<Attempt, String>;
    /// Installs the bundle tar of `size` bytes that `r` streams (installs
    /// when newer, never reboots); `source` names it in errors.
    fn upgrade_bundle(
        &self,
        source: &str,
        size: u64,
        r: Box<dyn Read + Send>,
    ) -> Result<Attempt, String>;
}

pub struct Server {
    pub paths: Paths,
    pub ring: &'static Ring,
    pub node: Arc<dyn Node>,
    pub console: Console,
    /// Which peer uids may talk: [`peer_allowed`] on a node (a test
    /// narrows it to see a refusal from its own uid).
    pub peers: fn(u32) -> bool,
}

/// Only root and cairnd may talk to init.
pub fn peer_allowed(uid: u32) -> bool {
    uid == 0 || uid == contract::api::UID
}

/// The connecting process's uid, as the kernel recorded it at connect.
pub fn peer_uid(s: &UnixStream) -> io::Result<u32> {
    // SAFETY: plain data, filled by getsockopt.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid fd, out-pointer and length.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// True once the client has closed its end (or the socket failed).
fn hung_up(s: &UnixStream) -> bool {
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    if r < 0 {
        return true;
    }
    if p.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
        return true;
    }
    if p.revents & libc::POLLIN != 0 {
        // Bytes after the request are ignored; EOF means gone.
        let mut b = [0u8; 1];
        // SAFETY: valid fd and buffer.
        let n = unsafe {
            libc::recv(
                s.as_raw_fd(),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        return n == 0;
    }
    false
}

fn send(s: &mut UnixStream, r: &Reply) -> io::Result<()> {
    s.write_all(r.line().as_bytes())
}

fn done(result: Value) -> Reply {
    Reply::Done { result }
}

/// Reads one request line of at most MAX_REQUEST bytes; also answers the
/// bytes read past it (the start of an upload's body).
fn read_request(s: &UnixStream) -> Result<(Request, Vec<u8>), Reply> {
    let mut line = Vec::new();
    let mut r = BufReader::new(s.take(MAX_REQUEST as u64 + 1));
    r.read_until(b'\n', &mut line)
        .map_err(|e| Reply::refused(ErrorKind::Invalid, format!("reading the request: {e}")))?;
    let rest = r.buffer().to_vec();
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > MAX_REQUEST {
        return Err(Reply::refused(
            ErrorKind::Invalid,
            format!("request longer than {MAX_REQUEST} bytes"),
        ));
    }
    Ok((decode_request(&line)?, rest))
}

/// One request line (without its newline) as a [`Request`], or the error
/// reply that refuses it. Never panics, whatever the bytes.
pub fn decode_request(line: &[u8]) -> Result<Request, Reply> {
    if line.len() > MAX_REQUEST {
        return Err(Reply::refused(
            ErrorKind::Invalid,
            format!("request longer than {MAX_REQUEST} bytes"),
        ));
    }
    serde_json::from_slice(line)
        .map_err(|e| Reply::refused(ErrorKind::Invalid, format!("malformed request: {e}")))
}

impl Server {
    /// Binds the socket: a stale file from an earlier init is removed; the
    /// socket is root's, group cairnd's, mode 0660. Between bind and chmod
    /// it has init's umask (0022): nobody but root can connect yet.
    pub fn bind(&self) -> io::Result<UnixListener> {
        let p = &self.paths.socket;
        if let Some(d) = p.parent() {
            fs::create_dir_all(d)?;
        }
        match fs::remove_file(p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let l = UnixListener::bind(p)?;
        // Its owner is init's (root); only the group is cairnd's.
        std::os::unix::fs::chown(p, None, Some(self.paths.group))?;
        fs::set_permissions(p, fs::Permissions::from_mode(0o660))?;
        Ok(l)
    }

    /// Accepts connections on its own thread, forever.
    pub fn spawn(self: Arc<Self>, l: UnixListener) -> io::Result<()> {
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for c in l.incoming() {
                    match c {
                        Ok(s) => {
                            let me = self.clone();
                            let r = std::thread::Builder::new()
                                .name("control-conn".into())
                                .spawn(move || me.serve(s));
                            if let Err(e) = r {
                                self.say(&format!("control: no thread for a connection: {e}"));
                            }
                        }
                        Err(e) => {
                            self.say(&format!("control: accept: {e}"));
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })
            .map(|_| ())
    }

    fn say(&self, msg: &str) {
        if let Ok(mut c) = self.console.lock() {
            let _ = writeln!(c, "cairn: {msg}");
        }
        self.ring.push_line(
            contract::control::INIT_SOURCE,
            contract::control::INIT_SOURCE,
            msg,
        );
    }

    /// One connection: check the peer, read one request, answer it.
    pub fn serve(&self, mut s: UnixStream) {
        match peer_uid(&s) {
            Ok(uid) if (self.peers)(uid) => {}
            Ok(uid) => {
                self.say(&format!(
                    "control: refused a connection from uid {uid} (only 0 and {})",
                    contract::api::UID
                ));
                let _ = send(
                    &mut s,
                    &Reply::error(format!("uid {uid} may not use init's control socket")),
                );
                return;
            }
            Err(e) => {
                self.say(&format!("control: refused a connection: SO_PEERCRED: {e}"));
                return;
            }
        }
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let _ = s.set_write_timeout(Some(IO_TIMEOUT));
        let (req, rest) = match read_request(&s) {
            Ok(r) => r,
            Err(reply) => {
                let _ = send(&mut s, &reply);
                return;
            }
        };
        // A write error is a client gone: nothing to tell it.
        let _ = match req {
            Request::UpgradeBundle { by, size } => self.upgrade_bundle(&mut s, &by, size, rest),
            _ if !rest.is_empty() => send(
                &mut s,
                &Reply::refused(
                    ErrorKind::Invalid,
                    "bytes after the request line (only upgrade_bundle has a body)",
                ),
            ),
            req => self.dispatch(req, &mut s),
        };
    }

    fn dispatch(&self, req: Request, s: &mut UnixStream) -> io::Result<()> {
        match req {
            Request::LogSources => send(s, &done(json!(self.ring.sources()))),
            Request::Logs {
                source,
                follow,
                tail,
            } => self.logs(s, &source, follow, tail),
            Request::Events { follow } => self.events(s, follow),
            Request::Dmesg => send(
                s,
                &match dmesg(&self.paths.kmsg) {
                    Ok(lines) => done(json!(lines)),
                    Err(e) => Reply::error(format!("reading {}: {e}", self.paths.kmsg.display())),
                },
            ),
            Request::Health => send(s, &done(json!(self.node.health()))),
            Request::Reboot { by } => self.power(s, Power::Reboot, &by),
            Request::Shutdown { by } => self.power(s, Power::PowerOff, &by),
            Request::Rollback { by } => self.rollback(s, &by),
            Request::Upgrade {
                by,
                image,
                insecure,
            } => self.upgrade(s, &by, &image, insecure),
            Request::UpgradeBundle { by, size } => self.upgrade_bundle(s, &by, size, Vec::new()),
            Request::RotateCerts { by, crt, key } => send(s, &self.rotate_certs(&by, &crt, &key)),
            Request::ConfigGet => send(
                s,
                &match fs::read_to_string(&self.paths.config) {
                    Ok(t) => done(json!(contract::api::redact(&t))),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Reply::refused(
                        ErrorKind::NotFound,
                        format!("no stored machine config ({})", self.paths.config.display()),
                    ),
                    Err(e) => Reply::error(format!("reading {}: {e}", self.paths.config.display())),
                },
            ),
            Request::ConfigApply {
                by,
                config,
                dry_run,
            } => send(s, &self.config_apply(&by, &config, dry_run)),
        }
    }

    fn logs(
        &self,
        s: &mut UnixStream,
        source: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> io::Result<()> {
        let Some(lines) = self.ring.tail(source, tail) else {
            return send(
                s,
                &Reply::refused(ErrorKind::NotFound, format!("no log source {source:?}")),
            );
        };
        // Follow from the last line sent, or (none sent: `--tail 0`) from
        // the last one kept.
        let mut after = lines
            .last()
            .map_or_else(|| self.ring.last_line(source), |l| l.seq);
        for l in lines {
            send(s, &Reply::Log(l))?;
        }
        if !follow {
            return send(s, &done(Value::Null));
        }
        loop {
            let new: Vec<LogLine> = self.ring.lines_after(source, after, FOLLOW_POLL);
            for l in new {
                after = l.seq;
                send(s, &Reply::Log(l))?;
            }
            if hung_up(s) {
                return Ok(());
            }
        }
    }

    fn events(&self, s: &mut UnixStream, follow: bool) -> io::Result<()> {
        let kept = self.ring.events();
        let mut after = kept.last().map_or(0, |e| e.seq);
        for e in kept {
            send(s, &Reply::Event(e))?;
        }
        if !follow {
            return send(s, &done(Value::Null));
        }
        loop {
            for e in self.ring.events_after(after, FOLLOW_POLL) {
                after = e.seq;
                send(s, &Reply::Event(e))?;
            }
            if hung_up(s) {
                return Ok(());
            }
        }
    }

    /// Answers first, then asks for the shutdown: the client learns the
    /// request was taken before cairnd is stopped with everything else.
    fn power(&self, s: &mut UnixStream, how: Power, by: &str) -> io::Result<()> {
        let what = match how {
            Power::Reboot => "reboot",
            Power::PowerOff => "shutdown",
        };
        self.say(&format!("api: {what} requested by {by}"));
        self.ring
            .event(EventKind::Power, Some(by), format!("{what} requested"));
        let r = send(s, &done(json!({ "action": what })));
        let _ = s.flush();
        self.node.power(how);
        r
    }

    fn rollback(&self, s: &mut UnixStream, by: &str) -> io::Result<()> {
        let lock = match crate::update::begin_upgrade(&format!("a rollback by {by}")) {
            Ok(l) => l,
            Err(holder) => {
                return send(
                    s,
                    &Reply::refused(
                        ErrorKind::Busy,
                        format!("not rolling back: an upgrade started by {holder} is running"),
                    ),
                )
            }
        };
        self.say(&format!("api: rollback requested by {by}"));
        let reply = match self.node.rollback() {
            Ok(v) => {
                let to = v.get("to_version").and_then(Value::as_str).unwrap_or("?");
                let slot = v.get("to_slot").and_then(Value::as_str).unwrap_or("?");
                let msg = format!("rollback: {to} ({slot}) boots next");
                self.say(&format!("api: {msg} (by {by})"));
                self.ring.event(EventKind::Power, Some(by), msg);
                done(v)
            }
            Err(e) => {
                self.say(&format!("api: rollback by {by} failed: {e}"));
                self.ring
                    .event(EventKind::Power, Some(by), format!("rollback failed: {e}"));
                Reply::error(e)
            }
        };
        // Released before the answer: a client that acts on it (the next
        // upgrade or rollback) must not find the lock still held.
        drop(lock);
        send(s, &reply)
    }

    /// An upgrade from a registry reference (see [`Server::run_upgrade`]).
    fn upgrade(&self, s: &mut UnixStream, by: &str, image: &str, insecure: bool) -> io::Result<()> {
        let cfg = match parse_image(image, insecure) {
            Ok(c) => c,
            Err(e) => return send(s, &Reply::refused(ErrorKind::Invalid, e)),
        };
        let Some(lock) = self.upgrade_lock(s, by)? else {
            return Ok(());
        };
        self.run_upgrade(s, by, lock, format!("upgrade to {image}"), move |node| {
            node.upgrade(&cfg)
        })
    }

    /// An upgrade from the bundle tar of `size` bytes that follows the
    /// request on `s` (`rest`: what was read of it with the request line).
    /// The size is checked before a byte of it is read; the body is read
    /// by the upgrade's thread, so a client that hangs up mid-upload ends
    /// it as a short tar, refused before anything is written.
    fn upgrade_bundle(
        &self,
        s: &mut UnixStream,
        by: &str,
        size: u64,
        rest: Vec<u8>,
    ) -> io::Result<()> {
        if size > contract::control::MAX_BUNDLE || (rest.len() as u64) > size {
            return send(
                s,
                &Reply::refused(
                    ErrorKind::Invalid,
                    format!(
                        "a bundle of {size} bytes (at most {} accepted)",
                        contract::control::MAX_BUNDLE
                    ),
                ),
            );
        }
        let body = match s.try_clone() {
            Ok(r) => r,
            Err(e) => return send(s, &Reply::error(format!("reading the bundle: {e}"))),
        };
        let Some(lock) = self.upgrade_lock(s, by)? else {
            return Ok(());
        };
        let left = size - rest.len() as u64;
        let r: Box<dyn Read + Send> = Box::new(io::Cursor::new(rest).chain(body.take(left)));
        let source = format!("upload from {by}");
        self.run_upgrade(
            s,
            by,
            lock,
            format!("upgrade from a bundle of {size} bytes"),
            move |node| node.upgrade_bundle(&source, size, r),
        )
    }

    /// The upgrade lock for `by`, or `None` once a Busy answer is sent.
    fn upgrade_lock(
        &self,
        s: &mut UnixStream,
        by: &str,
    ) -> io::Result<Option<crate::update::UpgradeLock>> {
        match crate::update::begin_upgrade(by) {
            Ok(l) => Ok(Some(l)),
            Err(holder) => send(
                s,
                &Reply::refused(
                    ErrorKind::Busy,
                    format!("an upgrade started by {holder} is running"),
                ),
            )
            .map(|_| None),
        }
    }

    /// The upgrade `job` runs on its own thread: a client that hangs up
    /// changes nothing (it completes and reboots, or leaves the old release
    /// booting). This connection streams the upgrade events meanwhile.
    fn run_upgrade(
        &self,
        s: &mut UnixStream,
        by: &str,
        lock: crate::update::UpgradeLock,
        what: String,
        job: impl FnOnce(&dyn Node) -> Result<Attempt, String> + Send + 'static,
    ) -> io::Result<()> {
        let mut after = self.ring.last_event();
        self.say(&format!("api: {what} requested by {by}"));
        self.ring
            .event(EventKind::Upgrade, Some(by), format!("{what} requested"));
        let (tx, rx) = mpsc::channel::<Result<Attempt, String>>();
        let (ack_tx, ack_rx) = mpsc::channel::<()>();
        let node = self.node.clone();
        let ring = self.ring;
        let by_owned = by.to_string();
        let spawned = std::thread::Builder::new()
            .name("api-upgrade".into())
            .spawn(move || {
                let r = job(node.as_ref());
                let msg = match &r {
                    Ok(a) => format!("{}: {}", outcome_word(a.outcome), a.detail),
                    Err(e) => format!("failed: {e}"),
                };
                ring.event(EventKind::Upgrade, Some(&by_owned), msg);
                let installed = matches!(&r, Ok(a) if a.outcome == Outcome::Installed);
                if installed {
                    // Held until the reboot, as the agent does: nothing may
                    // write the slot that boots next meanwhile.
                    std::mem::forget(lock);
                } else {
                    drop(lock);
                }
                let _ = tx.send(r);
                if installed {
                    // Give the client its answer before services stop; a
                    // client already gone drops `ack_tx`, ending this wait.
                    let _ = ack_rx.recv_timeout(Duration::from_secs(5));
                    ring.event(
                        EventKind::Power,
                        Some(&by_owned),
                        "rebooting into the upgrade",
                    );
                    crate::say!("api: rebooting into the upgrade (requested by {by_owned})");
                    node.power(Power::Reboot);
                }
            });
        if let Err(e) = spawned {
            return send(s, &Reply::error(format!("no thread for the upgrade: {e}")));
        }
        let mut stream_ok = true;
        let mut forward = |s: &mut UnixStream, wait: Duration, after: &mut u64| {
            for e in self.ring.events_after(*after, wait) {
                *after = e.seq;
                if stream_ok && e.kind == EventKind::Upgrade {
                    stream_ok = send(s, &Reply::Event(e)).is_ok();
                }
            }
        };
        let result = loop {
            match rx.try_recv() {
                Ok(r) => break r,
                Err(mpsc::TryRecvError::Disconnected) => {
                    break Err("the upgrade thread ended without a result".into())
                }
                Err(mpsc::TryRecvError::Empty) => forward(s, FOLLOW_POLL, &mut after),
            }
        };
        forward(s, Duration::ZERO, &mut after);
        // Installed (rebooting next) and up to date (nothing to do) are
        // answers, the attempt's `outcome` tells which; a release known bad
        // here or a failure is refused.
        let reply = match result {
            Ok(a) if matches!(a.outcome, Outcome::Installed | Outcome::UpToDate) => {
                done(serde_json::to_value(&a).unwrap_or(Value::Null))
            }
            Ok(a) => Reply::error(format!("{}: {}", outcome_word(a.outcome), a.detail)),
            Err(e) => Reply::error(e),
        };
        let r = send(s, &reply);
        let _ = ack_tx.send(());
        r
    }

    /// The new serving identity into the stored config (the next boot's)
    /// and cairnd's secrets (its restart's). Only `crt` and `key` change:
    /// the CA, and so every client, stays.
    fn rotate_certs(&self, by: &str, crt: &str, key: &str) -> Reply {
        use contract::machine::MachineConfig;
        let path = &self.paths.config;
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                return Reply::refused(
                    ErrorKind::NotFound,
                    format!("no stored machine config ({}): {e}", path.display()),
                )
            }
        };
        let old = match MachineConfig::parse(&text, &path.display().to_string()) {
            Ok(c) => c.api,
            Err(e) => return Reply::error(format!("the stored config: {e}")),
        };
        let Some(old) = old else {
            return Reply::refused(
                ErrorKind::NotFound,
                format!("{} has no [api]", path.display()),
            );
        };
        let next = match replace_identity(&text, &old, crt, key) {
            Ok(t) => t,
            Err(e) => return Reply::error(format!("rewriting {}: {e}", path.display())),
        };
        let api = match MachineConfig::parse(&next, "the rotated machine.toml") {
            Ok(c) => c.api,
            Err(e) => return Reply::refused(ErrorKind::Invalid, e.to_string()),
        };
        let Some(api) = api.filter(|a| a.crt.trim() == crt.trim() && a.key.trim() == key.trim())
        else {
            return Reply::error("the rotated config does not hold the new identity");
        };
        if let Err(e) = write_atomic_private(path, next.as_bytes()) {
            return Reply::error(format!("storing {}: {e}", path.display()));
        }
        if let Err(e) =
            crate::api::write_secrets(&api, &self.paths.secrets, self.paths.secrets_owner)
        {
            return Reply::error(format!(
                "stored, but writing {}: {e} (the next boot serves it)",
                self.paths.secrets.display()
            ));
        }
        let msg = "API serving certificate rotated (cairnd restarts to serve it)";
        self.say(&format!("api: {msg} by {by}"));
        self.ring.event(EventKind::Config, Some(by), msg);
        done(json!({ "rotated": true }))
    }

    fn config_apply(&self, by: &str, config: &str, dry_run: bool) -> Reply {
        if let Err(e) = contract::machine::MachineConfig::parse(config, "machine.toml") {
            let field = match &e {
                contract::machine::ConfigError::Syntax {
                    file, line, column, ..
                } => format!("{file}:{line}:{column}"),
                _ => "machine.toml".to_string(),
            };
            if !dry_run {
                self.ring.event(
                    EventKind::Config,
                    Some(by),
                    format!("machine config refused: {e}"),
                );
            }
            return Reply::Error {
                error: e.to_string(),
                kind: ErrorKind::Invalid,
                field: Some(field),
            };
        }
        let old = match fs::read_to_string(&self.paths.config) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Reply::error(format!("reading {}: {e}", self.paths.config.display())),
        };
        // The key never leaves init, not even as a diff line.
        let diff = contract::machine::line_diff(&redact_in_place(&old), &redact_in_place(config));
        if dry_run {
            return done(json!({ "dry_run": true, "applied": false, "diff": diff }));
        }
        // The next boot reads this file. The ESP's `cairn/machine.toml` is
        // imported only into a STATE without a config, so it never
        // replaces this one: that precedence is stage2::load_config's.
        if let Err(e) = write_atomic_private(&self.paths.config, config.as_bytes()) {
            return Reply::error(format!("storing {}: {e}", self.paths.config.display()));
        }
        self.say(&format!(
            "api: machine config stored by {by} (effective next boot)"
        ));
        self.ring.event(
            EventKind::Config,
            Some(by),
            "machine config stored (effective next boot)",
        );
        done(json!({
            "dry_run": false,
            "applied": true,
            "diff": diff,
            "effective": "next boot",
        }))
    }
}

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::UpToDate => "up to date",
        Outcome::SkippedBad => "skipped (known bad)",
        Outcome::Installed => "installed",
        Outcome::Failed => "failed",
    }
}

/// `REGISTRY/REPO:TAG` as an update channel (the tag is after the last
/// `:` that follows the last `/`, so a registry port stays in `source`).
pub fn parse_image(image: &str, insecure: bool) -> Result<Update, String> {
    let bad = || format!("image {image:?}: expected REGISTRY/REPO:TAG");
    let slash = image.rfind('/').ok_or_else(bad)?;
    let colon = image[slash..]
        .rfind(':')
        .map(|i| slash + i)
        .ok_or_else(bad)?;
    let (source, tag) = (&image[..colon], &image[colon + 1..]);
    if slash == 0 || source.ends_with('/') || tag.is_empty() || image.contains('@') {
        return Err(bad());
    }
    if image.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    Ok(Update {
        source: source.into(),
        tag: tag.into(),
        interval_s: 3600,
        reboot: Default::default(),
        window: None,
        plain_http: insecure,
        ca_file: None,
    })
}

/// `text` with the value of `[api] key` replaced in place (the other lines
/// keep their form, so a diff shows only what changed). Text that does not
/// parse falls back to contract::api::redact.
fn redact_in_place(text: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Doc {
        api: Option<Api>,
    }
    #[derive(serde::Deserialize)]
    struct Api {
        key: Option<toml::Spanned<toml::Value>>,
    }
    match toml::from_str::<Doc>(text) {
        Ok(Doc {
            api: Some(Api { key: Some(k) }),
        }) => {
            let r = k.span();
            format!(
                "{}\"{}\"{}",
                &text[..r.start],
                contract::api::REDACTED,
                &text[r.end..]
            )
        }
        Ok(_) => text.to_string(),
        Err(_) => contract::api::redact(text),
    }
}

/// Replaces `path` durably: a temporary file in the same directory
/// (created 0600: the config holds the API key), fsync, rename, fsync of
/// the directory. A cut leaves the old or the new file, never a mix.
/// `text` (a machine config) with `[api]`'s `crt` and `key` replaced.
/// The PEM blocks are replaced where they stand, so the operator's
/// comments and layout stay; a config that holds them in another form
/// (escaped one-line strings, say) is rewritten through the TOML table
/// instead (comments lost, the values right).
pub fn replace_identity(
    text: &str,
    old: &contract::api::Api,
    crt: &str,
    key: &str,
) -> Result<String, String> {
    let (old_crt, old_key) = (old.crt.trim(), old.key.trim());
    if text.matches(old_crt).count() == 1 && text.matches(old_key).count() == 1 {
        return Ok(text
            .replacen(old_crt, crt.trim(), 1)
            .replacen(old_key, key.trim(), 1));
    }
    let mut t: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let api = t
        .get_mut("api")
        .and_then(toml::Value::as_table_mut)
        .ok_or("no [api] table")?;
    api.insert(
        "crt".into(),
        toml::Value::String(format!("{}\n", crt.trim())),
    );
    api.insert(
        "key".into(),
        toml::Value::String(format!("{}\n", key.trim())),
    );
    toml::to_string(&t).map_err(|e| e.to_string())
}

pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("no directory"))?;
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.new",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

/// The kernel log as it is now: /dev/kmsg read without blocking from the
/// oldest record kept until EAGAIN. The result is a list of strings, one
/// per record, `[SECONDS.MICROS] TEXT` as dmesg prints them (continuation
/// lines, the ` KEY=VALUE` dictionary, are left out; records overwritten
/// while reading are skipped).
pub fn dmesg(kmsg: &Path) -> io::Result<Vec<String>> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(kmsg)?;
    let mut out = Vec::new();
    // One record per read from /dev/kmsg; a regular file (tests) gives
    // many per read, hence the split.
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                for rec in String::from_utf8_lossy(&buf[..n]).split('\n') {
                    if let Some(l) = kmsg_line(rec) {
                        out.push(l);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // EPIPE: the record we were at was overwritten; go on.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// `PRI,SEQ,USECS,FLAGS[,...];TEXT` as `[SECONDS.MICROS] TEXT`.
fn kmsg_line(rec: &str) -> Option<String> {
    if rec.is_empty() || rec.starts_with(' ') {
        return None;
    }
    let (head, text) = rec.split_once(';')?;
    let us: u64 = head.split(',').nth(2)?.parse().ok()?;
    Some(format!(
        "[{:5}.{:06}] {text}",
        us / 1_000_000,
        us % 1_000_000
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_split_into_channels() {
        let u = parse_image("localhost:5000/cairn/os:2.0.0", true).unwrap();
        assert_eq!(
            (u.source.as_str(), u.tag.as_str()),
            ("localhost:5000/cairn/os", "2.0.0")
        );
        assert!(u.plain_http);
        for bad in [
            "cairn",
            "localhost:5000/cairn",
            "r/c:",
            "/c:1",
            "r/c@sha256:ab",
            "r/c :1",
        ] {
            assert!(parse_image(bad, false).is_err(), "{bad}");
        }
    }

    /// Fuzz-style: random bytes, and valid requests cut, flipped and
    /// spliced, never panic the decoder; anything it refuses is an
    /// `Invalid` error reply that encodes as one line.
    #[test]
    fn garbage_request_lines_get_an_error_reply() {
        let valid = [
            r#"{"op":"log_sources"}"#,
            r#"{"op":"logs","source":"web","follow":true,"tail":3}"#,
            r#"{"op":"events","follow":false}"#,
            r#"{"op":"upgrade","by":"CN=a","image":"r/c:1","insecure":true}"#,
            r#"{"op":"config_apply","by":"CN=a","config":"hostname = \"n\"\n","dry_run":true}"#,
            r#"{"op":"reboot","by":"CN=a"}"#,
        ];
        for v in valid {
            assert!(decode_request(v.as_bytes()).is_ok(), "{v}");
        }
        // xorshift: deterministic, no extra dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut refused = 0;
        for i in 0..20_000 {
            let mut line: Vec<u8> = match i % 4 {
                0 => (0..next() % 64).map(|_| next() as u8).collect(),
                1 => {
                    let v = valid[next() as usize % valid.len()].as_bytes();
                    v[..next() as usize % v.len()].to_vec()
                }
                2 => {
                    let mut v = valid[next() as usize % valid.len()].as_bytes().to_vec();
                    for _ in 0..1 + next() % 3 {
                        let at = next() as usize % v.len();
                        v[at] = next() as u8;
                    }
                    v
                }
                _ => {
                    let a = valid[next() as usize % valid.len()].as_bytes();
                    let b = valid[next() as usize % valid.len()].as_bytes();
                    let (ca, cb) = (next() as usize % a.len(), next() as usize % b.len());
                    [&a[..ca], &b[cb..]].concat()
                }
            };
            line.retain(|b| *b != b'\n');
            match decode_request(&line) {
                Ok(_) => {}
                Err(r) => {
                    refused += 1;
                    assert!(
                        matches!(
                            r,
                            Reply::Error {
                                kind: ErrorKind::Invalid,
                                ..
                            }
                        ),
                        "{r:?}"
                    );
                    let l = r.line();
                    assert!(l.ends_with('\n') && l.matches('\n').count() == 1);
                }
            }
        }
        assert!(refused > 15_000, "{refused}");
        let huge = vec![b' '; MAX_REQUEST + 1];
        assert!(decode_request(&huge).is_err());
    }

    #[test]
    fn kmsg_records_read_like_dmesg() {
        assert_eq!(
            kmsg_line("6,1,1234567,-;Linux version").as_deref(),
            Some("[    1.234567] Linux version")
        );
        assert_eq!(kmsg_line(" SUBSYSTEM=pci"), None);
        assert_eq!(kmsg_line("garbage"), None);
    }

    #[test]
    fn redaction_in_place_keeps_other_lines() {
        let t = "hostname = \"n\"\n[api]\nca = \"C\"\nkey = \"\"\"\nSECRET\n\"\"\"\n# after\n";
        let r = redact_in_place(t);
        assert!(!r.contains("SECRET"), "{r}");
        assert!(
            r.contains("# after") && r.contains("hostname = \"n\""),
            "{r}"
        );
        assert_eq!(redact_in_place("a = 1\n"), "a = 1\n");
    }
}

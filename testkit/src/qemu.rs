//! Cold boots under QEMU (TCG) with OVMF, read through the serial console.
//!
//! Every boot is a fresh QEMU process with `-no-reboot`: one process is one
//! boot attempt, so a reboot request ends the process and the next attempt
//! is a real cold firmware boot (never kexec). QEMU is killed when its
//! [`Boot`] is dropped, whatever path a test takes.

use std::collections::VecDeque;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use vm::{Attach, DirectKernel, Disk, OVMF_CODE, OVMF_CODE_SECBOOT, OVMF_VARS};

/// One machine: its firmware variables persist across boots like NVRAM.
pub struct Machine {
    pub name: String,
    pub vars: PathBuf,
    pub secure_boot: bool,
    pub disks: Vec<Disk>,
    pub memory_mb: u32,
    pub log_dir: PathBuf,
    /// Boot this kernel directly, with no OVMF at all.
    pub direct_kernel: Option<DirectKernel>,
    /// More QEMU arguments, e.g. a NIC on user networking (`-netdev
    /// user,restrict=on,...`): tests never give a guest more than that.
    pub extra_args: Vec<String>,
    boots: u32,
}

impl Machine {
    /// A machine with a fresh copy of `vars_template` (OVMF's blank store
    /// by default) in `work`, where its console logs go too.
    pub fn new(name: &str, work: &Path, vars_template: Option<&Path>) -> Result<Machine> {
        fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
        let vars = work.join(format!("{name}-VARS.fd"));
        let template = vars_template.unwrap_or(Path::new(OVMF_VARS));
        fs::copy(template, &vars)
            .with_context(|| format!("copying OVMF variables {}", template.display()))?;
        Ok(Machine {
            name: name.to_string(),
            vars,
            secure_boot: false,
            disks: Vec::new(),
            memory_mb: 1024,
            log_dir: work.to_path_buf(),
            direct_kernel: None,
            extra_args: Vec::new(),
            boots: 0,
        })
    }

    /// The QEMU command line of one boot: the same machine `cairn run`
    /// gives a user (the `vm` crate), one boot attempt per process.
    pub fn command(&self) -> Command {
        vm::Vm {
            vars: self.vars.clone(),
            secure_boot: self.secure_boot,
            disks: self.disks.clone(),
            memory_mb: self.memory_mb,
            direct_kernel: self.direct_kernel.clone(),
            no_reboot: true,
            interactive: false,
            extra_args: self.extra_args.clone(),
        }
        .command()
    }

    /// Starts one cold boot; its console goes to `NAME-bootN.log`.
    pub fn boot(&mut self) -> Result<Boot> {
        self.boots += 1;
        let log = self
            .log_dir
            .join(format!("{}-boot{}.log", self.name, self.boots));
        Boot::spawn(
            self.command(),
            log,
            format!("{} boot {}", self.name, self.boots),
        )
    }
}

/// OVMF variables at `out` with `keys`' `PK.crt`, `KEK.crt` and `db.crt`
/// enrolled and Secure Boot on (`vm::enrolled_vars`, by virt-fw-vars).
pub fn enrolled_vars(keys: &Path, out: &Path) -> Result<PathBuf> {
    vm::enrolled_vars(keys, out)?;
    Ok(out.to_path_buf())
}

/// Reads one of QEMU's output streams: raw bytes to `raw` (and the log),
/// text lines to `tx` as they complete.
fn pump(
    mut r: impl Read,
    mut log: Option<fs::File>,
    raw: Arc<Mutex<Vec<u8>>>,
    tx: mpsc::Sender<(Instant, String)>,
) {
    let mut chunk = [0u8; 4096];
    let mut pending = Vec::new();
    let send = |line: &[u8]| {
        // Firmware output is full of escape sequences; keep the text.
        let text: String = String::from_utf8_lossy(line)
            .chars()
            .filter(|c| !c.is_control() || *c == '\t')
            .collect();
        // The receiver may be gone (the boot was dropped); keep draining
        // so QEMU never blocks on a full pipe.
        let _ = tx.send((Instant::now(), text));
    };
    loop {
        let n = match r.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(f) = log.as_mut() {
            let _ = f.write_all(&chunk[..n]);
        }
        raw.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(&chunk[..n]);
        pending.extend_from_slice(&chunk[..n]);
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            send(&line);
        }
    }
    if !pending.is_empty() {
        send(&pending);
    }
}

/// A running boot attempt.
pub struct Boot {
    child: Child,
    lines: Receiver<(Instant, String)>,
    tail: VecDeque<String>,
    /// Every console line with its arrival time since QEMU started.
    pub all: Vec<(Duration, String)>,
    pub started: Instant,
    pub log: PathBuf,
    label: String,
    /// The serial console (QEMU's stdout) byte for byte, and QEMU's stderr.
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    pumps: Vec<JoinHandle<()>>,
}

/// How a boot ended: the guest's own doing, told by QEMU exiting 0 after
/// the kernel's last words (QEMU's crash or error is never an `End`).
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The kernel said `reboot: Power down`.
    PowerOff,
    /// The guest asked to reset (`-no-reboot` turns that into an exit): the
    /// kernel said `reboot: Restarting system`, or it panicked and counted
    /// down (`Rebooting in N seconds`).
    Reboot,
}

/// Reads how QEMU ended from its exit status and the console's last lines
/// (QEMU's stderr included). QEMU exits 0 both for the guest and on
/// SIGTERM/SIGINT, and prints its own errors on stderr, so status 0 alone
/// is not a guest power-off: the kernel must have said so.
pub fn classify_exit(status: std::process::ExitStatus, tail: &[&str]) -> Result<End, String> {
    if !status.success() {
        return Err(format!(
            "QEMU itself failed ({status}): a crash or a QEMU error, not the guest powering off"
        ));
    }
    // The last of the kernel's power-state lines decides.
    for line in tail.iter().rev() {
        if line.contains("reboot: Power down") {
            return Ok(End::PowerOff);
        }
        if line.contains("reboot: Restarting system") || line.contains("Rebooting in ") {
            return Ok(End::Reboot);
        }
        if line.contains("qemu-system-x86_64: terminating on signal") {
            break;
        }
    }
    Err(format!(
        "QEMU exited ({status}) but the guest neither powered off nor rebooted (no `reboot: Power down` or `reboot: Restarting system` on the console)"
    ))
}

/// What [`Boot::run_until`] saw.
#[derive(Debug)]
pub struct Run {
    /// The serial console as QEMU wrote it (escape sequences and all),
    /// then QEMU's stderr after `[qemu stderr]` if it printed anything.
    pub console: String,
    pub seconds: f64,
    /// QEMU ended by itself (power-off, reboot, or a QEMU failure).
    pub exited: bool,
    /// The condition held.
    pub met: bool,
}

impl Boot {
    /// Starts `cmd` (QEMU, or a stand-in in tests) with its console read
    /// line by line and logged to `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf, label: String) -> Result<Boot> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        let log_file =
            fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let (stdout, stderr) = <(Arc<Mutex<Vec<u8>>>, Arc<Mutex<Vec<u8>>>)>::default();
        let (o, e, tx2) = (stdout.clone(), stderr.clone(), tx.clone());
        let pumps = vec![
            thread::spawn(move || pump(out, Some(log_file), o, tx)),
            thread::spawn(move || pump(err, None, e, tx2)),
        ];
        Ok(Boot {
            child,
            lines: rx,
            tail: VecDeque::new(),
            all: Vec::new(),
            started,
            log,
            label,
            stdout,
            stderr,
            pumps,
        })
    }

    fn record(&mut self, at: Instant, line: String) {
        self.all.push((at - self.started, line.clone()));
        self.tail.push_back(line);
        if self.tail.len() > 50 {
            self.tail.pop_front();
        }
    }

    /// The last 50 console lines, for failure messages.
    pub fn tail(&self) -> String {
        self.tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// The serial console so far, byte for byte (partial last line too).
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Waits for a console line containing `needle`; returns that line.
    /// Fails (with the console tail) on timeout or if QEMU exits first.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.expect_any(&[needle], timeout).map(|(_, l)| l)
    }

    /// Waits for the first line containing any of `needles`; returns its index and the line.
    pub fn expect_any(&mut self, needles: &[&str], timeout: Duration) -> Result<(usize, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    self.record(at, line.clone());
                    if let Some(i) = needles.iter().position(|n| line.contains(n)) {
                        return Ok((i, line));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    bail!(
                        "{}: expected a console line containing {:?} within {}s; none came.\n--- last 50 console lines ({}) ---\n{}",
                        self.label,
                        needles,
                        timeout.as_secs(),
                        self.log.display(),
                        self.tail()
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    bail!(
                        "{}: expected a console line containing {:?}, but QEMU exited ({status}) first.\n--- last 50 console lines ({}) ---\n{}",
                        self.label,
                        needles,
                        self.log.display(),
                        self.tail()
                    );
                }
            }
        }
    }

    /// Waits for QEMU to exit on its own, collecting output: a guest
    /// power-off or reboot; QEMU crashing or failing is an error.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<End> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => self.record(at, line),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    let tail: Vec<&str> = self.tail.iter().map(String::as_str).collect();
                    return classify_exit(status, &tail).map_err(|why| {
                        anyhow::anyhow!(
                            "{}: {why}.\n--- last 50 console lines ({}) ---\n{}",
                            self.label,
                            self.log.display(),
                            self.tail()
                        )
                    });
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    bail!(
                        "{}: expected QEMU to exit within {}s (power-off or reboot); it did not.\n--- last 50 console lines ({}) ---\n{}",
                        self.label,
                        timeout.as_secs(),
                        self.log.display(),
                        self.tail()
                    );
                }
            }
        }
    }

    /// Polls every `every` until `stop(console so far)` holds, QEMU exits
    /// by itself, or `timeout` passes; then stops QEMU. `stop` sees the raw
    /// console (a half-written line too: a loader's countdown is redrawn
    /// in place, never ended by a newline) and may look at anything else,
    /// such as the disk QEMU is writing.
    pub fn run_until(
        mut self,
        timeout: Duration,
        every: Duration,
        mut stop: impl FnMut(&str) -> bool,
    ) -> Result<Run> {
        let (mut exited, mut met) = (false, false);
        loop {
            while let Ok((at, line)) = self.lines.try_recv() {
                self.record(at, line);
            }
            exited = exited || self.child.try_wait()?.is_some();
            if exited {
                // Everything QEMU wrote is in once its pipes close.
                self.join_pumps();
            }
            if stop(&self.console()) {
                met = true;
                break;
            }
            if exited || self.started.elapsed() >= timeout {
                break;
            }
            thread::sleep(every);
        }
        let _ = self.child.kill();
        self.child.wait()?;
        self.join_pumps();
        let mut console = self.console();
        let err = String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|e| e.into_inner()))
            .into_owned();
        if !err.is_empty() {
            console.push_str("\n[qemu stderr] ");
            console.push_str(&err);
        }
        Ok(Run {
            console,
            seconds: self.started.elapsed().as_secs_f64(),
            exited,
            met,
        })
    }

    fn join_pumps(&mut self) {
        for p in self.pumps.drain(..) {
            let _ = p.join();
        }
    }

    /// Stops the machine (as pulling the plug).
    pub fn kill(mut self) -> Result<()> {
        let _ = self.child.kill();
        self.child.wait()?;
        Ok(())
    }

    /// Boot-time figures from this boot's console: seconds from QEMU start to
    /// `marker`, and from the kernel's own printk timestamps the kernel-start
    /// -> init-start and init-start -> marker intervals.
    pub fn timings(&self, marker: &str) -> Option<Timings> {
        let (to_marker, _) = self.all.iter().find(|(_, l)| l.contains(marker))?;
        let kernel_ts = |pred: &dyn Fn(&str) -> bool| -> Option<f64> {
            self.all
                .iter()
                .filter(|(_, l)| pred(l))
                .find_map(|(_, l)| printk_time(l))
        };
        let init_start = kernel_ts(&|l: &str| l.contains("cairn:") || l.contains("Run /init"));
        let blessed = kernel_ts(&|l: &str| l.contains(marker));
        Some(Timings {
            qemu_to_marker: *to_marker,
            kernel_to_init: init_start,
            init_to_marker: match (init_start, blessed) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            },
        })
    }
}

impl Drop for Boot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub qemu_to_marker: Duration,
    /// Seconds from kernel start (printk 0.0) to the first init line.
    pub kernel_to_init: Option<f64>,
    pub init_to_marker: Option<f64>,
}

/// `[    1.234567] text` -> 1.234567
pub fn printk_time(line: &str) -> Option<f64> {
    let l = line.trim_start();
    let rest = l.strip_prefix('[')?;
    let end = rest.find(']')?;
    rest[..end].trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for QEMU: `sh -c SCRIPT`, its output read as the console.
    fn fake_boot(script: &str) -> (tempfile::TempDir, Boot) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        let b = Boot::spawn(c, dir.path().join("console.log"), "fake".into()).unwrap();
        (dir, b)
    }

    #[test]
    fn a_qemu_crash_is_not_a_power_off() {
        let wait = Duration::from_secs(30);
        // QEMU itself dies (a signal, an error exit), whatever the guest said.
        let (_d, mut b) = fake_boot("echo '[    1.0] reboot: Power down'; kill -SEGV $$");
        let e = b.wait_exit(wait);
        assert!(e.is_err(), "QEMU killed by SIGSEGV counted as {e:?}");
        let (_d, mut b) =
            fake_boot("echo 'qemu-system-x86_64: -drive x: Could not open' >&2; exit 1");
        let e = b.wait_exit(wait);
        assert!(e.is_err(), "QEMU exiting 1 counted as {e:?}");
        // QEMU exits 0 on SIGTERM ("terminating on signal"): no guest said anything.
        let (_d, mut b) = fake_boot(
            "echo 'qemu-system-x86_64: terminating on signal 15 from pid 1 ()' >&2; exit 0",
        );
        let e = b.wait_exit(wait);
        assert!(
            e.is_err(),
            "QEMU ending without a guest power-off counted as {e:?}"
        );
    }

    #[test]
    fn guest_power_off_and_reboot_are_told_apart() {
        let wait = Duration::from_secs(30);
        let (_d, mut b) = fake_boot("echo '[    2.5] reboot: Power down'");
        assert_eq!(b.wait_exit(wait).unwrap(), End::PowerOff);
        let (_d, mut b) =
            fake_boot("echo 'cairn: boot failed: x'; echo '[    9.1] reboot: Restarting system'");
        assert_eq!(b.wait_exit(wait).unwrap(), End::Reboot);
        let (_d, mut b) = fake_boot(
            "echo 'Kernel panic - not syncing: Attempted to kill init!'; echo 'Rebooting in 5 seconds..'",
        );
        assert_eq!(b.wait_exit(wait).unwrap(), End::Reboot);
    }

    /// A countdown redrawn in place (no newline) is seen by `run_until`,
    /// which then stops the machine; a machine that exits is reported so,
    /// with its stderr; a condition that never holds times out.
    #[test]
    fn run_until_sees_partial_lines_exits_and_timeouts() {
        let every = Duration::from_millis(50);
        let (_d, b) = fake_boot("printf 'menu\\rBoot in 1 s.'; exec sleep 30");
        let r = b
            .run_until(Duration::from_secs(20), every, |c| {
                c.contains("Boot in 1 s.")
            })
            .unwrap();
        assert!(r.met && !r.exited && r.seconds < 20.0, "{r:?}");
        let (_d, b) = fake_boot("echo bye; echo oops >&2");
        let r = b
            .run_until(Duration::from_secs(20), every, |_| false)
            .unwrap();
        assert!(r.exited && !r.met, "{r:?}");
        assert!(
            r.console.contains("bye") && r.console.contains("[qemu stderr] oops"),
            "{r:?}"
        );
        let (_d, b) = fake_boot("exec sleep 30");
        let r = b
            .run_until(Duration::from_millis(300), every, |_| false)
            .unwrap();
        assert!(!r.exited && !r.met, "{r:?}");
    }

    /// Firmware boots name OVMF and a boot order; a direct kernel boot
    /// names neither (QEMU refuses a disk with boot index 0 beside -kernel).
    #[test]
    fn direct_kernel_boots_skip_firmware_and_boot_order() {
        let d = tempfile::tempdir().unwrap();
        let vars = d.path().join("vars.fd");
        fs::write(&vars, b"vars").unwrap();
        let mut m = Machine::new("m", d.path(), Some(&vars)).unwrap();
        m.disks.push(Disk::virtio("disk.raw"));
        let args = |m: &Machine| -> String {
            let c = m.command();
            c.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let fw = args(&m);
        assert!(fw.contains(OVMF_CODE) && fw.contains("bootindex=0"), "{fw}");
        m.direct_kernel = Some(DirectKernel {
            kernel: "vmlinuz".into(),
            initrd: "initrd".into(),
            append: "console=ttyS0 gpt".into(),
        });
        let direct = args(&m);
        assert!(
            direct.contains("-kernel vmlinuz -initrd initrd -append console=ttyS0 gpt"),
            "{direct}"
        );
        assert!(
            !direct.contains("pflash") && !direct.contains("bootindex"),
            "{direct}"
        );
    }

    #[test]
    fn printk_timestamps() {
        assert_eq!(printk_time("[    1.500000] cairn: hi"), Some(1.5));
        assert_eq!(printk_time("no stamp"), None);
    }
}

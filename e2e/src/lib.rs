//! The end-to-end harness: cold boots under QEMU (TCG) with OVMF, read
//! through the serial console.
//!
//! Every boot is a fresh QEMU process with `-no-reboot`: one process is one
//! boot attempt, so a reboot request ends the process and the next attempt
//! is a real cold firmware boot (never kexec).

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";

/// How a disk image is attached.
#[derive(Debug, Clone)]
pub enum Attach {
    /// virtio-blk, the usual VM disk.
    Virtio,
    /// IDE CD-ROM (El Torito boot).
    Cdrom,
    /// USB mass storage on an xHCI controller (a `dd`-written stick).
    Usb,
}

#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub format: &'static str,
    pub attach: Attach,
    pub read_only: bool,
}

impl Disk {
    pub fn virtio(path: impl Into<PathBuf>) -> Disk {
        Disk {
            path: path.into(),
            format: "raw",
            attach: Attach::Virtio,
            read_only: false,
        }
    }
    pub fn format(mut self, f: &'static str) -> Disk {
        self.format = f;
        self
    }
    pub fn cdrom(path: impl Into<PathBuf>) -> Disk {
        Disk {
            path: path.into(),
            format: "raw",
            attach: Attach::Cdrom,
            read_only: true,
        }
    }
    pub fn usb(path: impl Into<PathBuf>) -> Disk {
        Disk {
            path: path.into(),
            format: "raw",
            attach: Attach::Usb,
            read_only: false,
        }
    }
}

/// One machine: its firmware variables persist across boots like NVRAM.
pub struct Machine {
    pub name: String,
    pub vars: PathBuf,
    pub secure_boot: bool,
    pub disks: Vec<Disk>,
    pub memory_mb: u32,
    pub log_dir: PathBuf,
    /// Appended to QEMU's command line (e.g. a NIC: `-nodefaults` has none).
    pub extra_args: Vec<String>,
    boots: u32,
}

impl Machine {
    /// A machine with a fresh copy of `vars_template` (OVMF's blank store by default).
    pub fn new(name: &str, work: &Path, vars_template: Option<&Path>) -> Result<Machine> {
        fs::create_dir_all(work)?;
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
            extra_args: Vec::new(),
            boots: 0,
        })
    }

    fn command(&self) -> Command {
        let mut c = Command::new("qemu-system-x86_64");
        let code = if self.secure_boot {
            OVMF_CODE_SECBOOT
        } else {
            OVMF_CODE
        };
        let machine = if self.secure_boot {
            "q35,smm=on,accel=tcg"
        } else {
            "q35,accel=tcg"
        };
        c.args(["-machine", machine, "-cpu", "max", "-m"])
            .arg(self.memory_mb.to_string())
            .args(["-smp", "1", "-nographic", "-no-reboot", "-nodefaults"])
            .args(["-serial", "stdio", "-monitor", "none"]);
        if self.secure_boot {
            c.args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
        }
        c.arg("-drive").arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={code}"
        ));
        c.arg("-drive").arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            self.vars.display()
        ));
        let mut usb = false;
        for (i, d) in self.disks.iter().enumerate() {
            let ro = if d.read_only { ",readonly=on" } else { "" };
            let file = format!("file={},format={}{ro}", d.path.display(), d.format);
            match d.attach {
                Attach::Virtio => {
                    c.arg("-drive").arg(format!("if=none,id=d{i},{file}"));
                    c.arg("-device")
                        .arg(format!("virtio-blk-pci,drive=d{i},bootindex={i}"));
                }
                Attach::Cdrom => {
                    c.arg("-drive")
                        .arg(format!("if=none,id=d{i},media=cdrom,{file}"));
                    c.arg("-device")
                        .arg(format!("ide-cd,drive=d{i},bus=ide.{i},bootindex={i}"));
                }
                Attach::Usb => {
                    if !usb {
                        c.args(["-device", "qemu-xhci,id=xhci"]);
                        usb = true;
                    }
                    c.arg("-drive").arg(format!("if=none,id=d{i},{file}"));
                    c.arg("-device").arg(format!(
                        "usb-storage,bus=xhci.0,drive=d{i},bootindex={i},removable=on"
                    ));
                }
            }
        }
        c.args(&self.extra_args);
        c
    }

    /// Starts one cold boot.
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

fn pump(r: impl std::io::Read, mut log: Option<fs::File>, tx: mpsc::Sender<(Instant, String)>) {
    use std::io::Write;
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if let Some(f) = log.as_mut() {
                    let _ = f.write_all(&buf);
                }
                // Firmware output is full of escape sequences; keep the text.
                let line: String = String::from_utf8_lossy(&buf)
                    .chars()
                    .filter(|c| !c.is_control() || *c == '\t')
                    .collect();
                if tx.send((Instant::now(), line)).is_err() {
                    return;
                }
            }
        }
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

impl Boot {
    /// Starts `cmd` (QEMU, or a stand-in in this crate's tests) with its
    /// console read line by line and logged to `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf, label: String) -> Result<Boot> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let tx2 = tx.clone();
        let log_file = fs::File::create(&log)?;
        thread::spawn(move || pump(stdout, Some(log_file), tx));
        thread::spawn(move || pump(stderr, None, tx2));
        Ok(Boot {
            child,
            lines: rx,
            tail: VecDeque::new(),
            all: Vec::new(),
            started,
            log,
            label,
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

/// Fails clearly when a tool the suite needs is missing (CI installs them).
pub fn require_tools(tools: &[&str]) -> Result<()> {
    for t in tools {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            bail!("{t} is not installed: run ci/deps");
        }
    }
    for f in [OVMF_CODE, OVMF_VARS] {
        if !Path::new(f).exists() {
            bail!("{f} is missing: install the ovmf package (ci/deps)");
        }
    }
    Ok(())
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

    #[test]
    fn printk_timestamps() {
        assert_eq!(printk_time("[    1.500000] cairn: hi"), Some(1.5));
        assert_eq!(printk_time("no stamp"), None);
    }
}

/// Where `cairn build` left the images under test: `$CAIRN_E2E_OUT`, else `<repo>/out`.
pub fn images_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("CAIRN_E2E_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../out"));
    if !dir.join("disk.raw").exists() {
        bail!(
            "{} has no disk.raw: run `ci/build` (cairn build) before the end-to-end suite, or set CAIRN_E2E_OUT",
            dir.display()
        );
    }
    Ok(dir)
}

/// A sparse copy, so every test boots its own disk.
pub fn sparse_copy(from: &Path, to: &Path) -> Result<()> {
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()?;
    if !st.success() {
        bail!("cp {} {} failed", from.display(), to.display());
    }
    Ok(())
}

/// A partition as `sfdisk --json` (the independent tool) reports it.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    pub uuid: String,
    pub offset: u64,
    pub size: u64,
}

pub fn partitions(disk: &Path) -> Result<Vec<Part>> {
    let out = Command::new("sfdisk").arg("--json").arg(disk).output()?;
    if !out.status.success() {
        bail!(
            "sfdisk --json {}: {}",
            disk.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing sfdisk --json {}", disk.display()))?;
    let sector = v["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    let mut parts = Vec::new();
    for p in v["partitiontable"]["partitions"]
        .as_array()
        .context("sfdisk --json: no partitions")?
    {
        let num = |k: &str| p[k].as_u64().with_context(|| format!("sfdisk --json: {k}"));
        parts.push(Part {
            name: p["name"].as_str().unwrap_or_default().to_string(),
            uuid: p["uuid"].as_str().unwrap_or_default().to_string(),
            offset: num("start")? * sector,
            size: num("size")? * sector,
        });
    }
    Ok(parts)
}

pub fn partition(disk: &Path, name: &str) -> Result<Part> {
    partitions(disk)?
        .into_iter()
        .find(|p| p.name == name)
        .with_context(|| format!("{} has no partition named {name}", disk.display()))
}

/// Runs a command and returns stdout, failing with its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An mtools command (`mdir`, `mcopy`, ...) on the disk's ESP:
/// `TOOL -i IMAGE@@OFFSET`, the offset from sfdisk.
fn mtools(tool: &str, disk: &Path) -> Result<Command> {
    let mut c = Command::new(tool);
    c.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(format!(
        "{}@@{}",
        disk.display(),
        partition(disk, "EFI")?.offset
    ));
    Ok(c)
}

/// Lists a directory of the disk's ESP with mtools.
pub fn esp_dir(disk: &Path, dir: &str) -> Result<String> {
    run(mtools("mdir", disk)?.arg("-b").arg(format!("::{dir}")))
}

/// Reads a file from an ext4 partition of the disk with debugfs. The guest
/// was stopped by pulling the plug, so what it fsynced may still sit in the
/// journal: a copy of the partition gets `e2fsck -fy` (which replays it, as
/// the next mount would) before debugfs reads it.
pub fn ext4_cat(disk: &Path, part: &str, path: &str) -> Result<String> {
    let p = partition(disk, part)?;
    let copy = tempfile::NamedTempFile::new()?;
    run(Command::new("dd")
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", copy.path().display()))
        .args(["bs=1M", "conv=sparse", "status=none"])
        .arg(format!("skip={}", p.offset >> 20))
        .arg(format!("count={}", p.size >> 20)))?;
    let fsck = Command::new("e2fsck")
        .arg("-fy")
        .arg(copy.path())
        .output()?;
    // 0: clean, 1: fixed (journal replayed); anything else is damage.
    if !matches!(fsck.status.code(), Some(0) | Some(1)) {
        bail!(
            "e2fsck -fy on {part}: {}\n{}",
            fsck.status,
            String::from_utf8_lossy(&fsck.stdout)
        );
    }
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(copy.path()))
}

// ---- Helpers for the install, upgrade and fallback scenarios. ----

/// The root of the cairn checkout (where `target/` and `profiles/` live).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Where a test release (a `profiles/test/NAME.toml` build) was written:
/// `$CAIRN_E2E_OUT_NAME` (e.g. `CAIRN_E2E_OUT_V2`), else `<images>-NAME`
/// next to the main images (`out-v2` beside `out`). It must hold `update.tar`.
pub fn release_dir(name: &str) -> Result<PathBuf> {
    let var = format!("CAIRN_E2E_OUT_{}", name.to_uppercase());
    let dir = match std::env::var_os(&var) {
        Some(d) => PathBuf::from(d),
        None => beside_images(name)?,
    };
    if !dir.join("update.tar").exists() {
        bail!(
            "{} has no update.tar: build the test release with `./target/release/cairn build --profile profiles/test/{name}.toml --out {}` (ci/test does), or set {var}",
            dir.display(),
            dir.display()
        );
    }
    Ok(dir)
}

/// `<images>-SUFFIX` next to the images directory (`out-v2` beside `out`).
fn beside_images(suffix: &str) -> Result<PathBuf> {
    let main = images_dir()?;
    let base = main
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    Ok(main.with_file_name(format!("{base}-{suffix}")))
}

/// The `cairn-installer` binary: `$CAIRN_INSTALLER`, else `target/release/cairn-installer`.
pub fn installer_bin() -> Result<PathBuf> {
    let p = std::env::var_os("CAIRN_INSTALLER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/cairn-installer"));
    if !p.is_file() {
        bail!(
            "{} is missing: `cargo build --release -p installer` (or set CAIRN_INSTALLER)",
            p.display()
        );
    }
    Ok(p)
}

/// The key the releases under test are signed with: `$CAIRN_E2E_PUBKEY`,
/// else the development key `cairn build` uses when given no `--key`.
pub fn release_pubkey() -> Result<PathBuf> {
    let p = match std::env::var_os("CAIRN_E2E_PUBKEY") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set")?;
            Path::new(&home).join(".local/share/cairn/dev-signing.key.pub")
        }
    };
    if !p.is_file() {
        bail!(
            "{} is missing: the releases are signed with the development key unless `cairn build --key` was given (set CAIRN_E2E_PUBKEY)",
            p.display()
        );
    }
    Ok(p)
}

/// What one `cairn-installer` run did.
#[derive(Debug)]
pub struct Ran {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cairn-installer ARGS`; a non-zero exit is a result, not an error.
pub fn installer(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Result<Ran> {
    let bin = installer_bin()?;
    let out = Command::new(&bin)
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    Ok(Ran {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `cairn-installer upgrade --disk DISK --bundle BUNDLE --pubkey KEY`, which must succeed.
pub fn upgrade(disk: &Path, bundle: &Path) -> Result<Ran> {
    let key = release_pubkey()?;
    let r = installer(&[
        &"upgrade",
        &"--disk",
        &disk,
        &"--bundle",
        &bundle,
        &"--pubkey",
        &key,
    ])?;
    if !r.success {
        bail!(
            "cairn-installer upgrade --disk {} --bundle {} failed ({:?}):\n{}{}",
            disk.display(),
            bundle.display(),
            r.code,
            r.stdout,
            r.stderr
        );
    }
    Ok(r)
}

/// A sha256 of a file by `sha256sum`, the independent tool.
pub fn sha256(path: &Path) -> Result<String> {
    let out = run(Command::new("sha256sum").arg(path))?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .with_context(|| format!("sha256sum {} printed nothing", path.display()))
}

/// A blank sparse disk image of `size` bytes.
pub fn blank_disk(path: &Path, size: u64) -> Result<()> {
    let f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(size)
        .with_context(|| format!("sizing {} to {size} bytes", path.display()))?;
    Ok(())
}

/// Flips one bit of the byte at `offset` in `path`.
pub fn flip_byte(path: &Path, offset: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset)
        .with_context(|| format!("reading {} at {offset}", path.display()))?;
    b[0] ^= 0x40;
    f.write_all_at(&b, offset)?;
    f.sync_all()?;
    Ok(())
}

/// Prints the boot-time figures of a boot that reached `marker`.
pub fn print_timings(label: &str, boot: &Boot, marker: &str) {
    match boot.timings(marker) {
        Some(t) => println!(
            "{label}: QEMU start -> {marker:?} {:.1}s; kernel -> init {}; init -> marker {}",
            t.qemu_to_marker.as_secs_f64(),
            t.kernel_to_init.map_or("?".into(), |s| format!("{s:.2}s")),
            t.init_to_marker.map_or("?".into(), |s| format!("{s:.2}s")),
        ),
        None => println!("{label}: {marker:?} not seen"),
    }
}

/// Default wait for one boot under TCG on a busy machine.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// One cold boot that must reach `cairn: boot ok` and contain `expect` in
/// that line; prints its timings, stops the machine, returns the line.
pub fn boot_ok(m: &mut Machine, label: &str, expect: &str) -> Result<String> {
    let mut b = m.boot()?;
    let (i, line) = b.expect_any(&["cairn: boot ok", "cairn: boot failed"], BOOT_TIMEOUT)?;
    if i != 0 || !line.contains(expect) {
        bail!(
            "{label}: expected `cairn: boot ok` with {expect:?}, got {line:?}\n--- last 50 console lines ({}) ---\n{}",
            b.log.display(),
            b.tail()
        );
    }
    print_timings(label, &b, "cairn: boot ok");
    b.kill()?;
    Ok(line)
}

/// What init prints when a read through dm-verity fails (init/src/stage1.rs
/// `verify_all`): the refusal of a changed slot.
pub const VERITY_REFUSED: &str = "cairn: boot failed: rootfs failed dm-verity verification";

/// How one boot attempt ended.
#[derive(Debug)]
pub enum Attempt {
    /// `cairn: boot ok ...` (that line).
    Ok(String),
    /// init said `boot failed` or the kernel panicked, then the guest rebooted.
    Failed(FailedBoot),
}

/// A boot that failed: the line that said so and the whole console, to
/// check why it failed and which slot and release it tried.
#[derive(Debug)]
pub struct FailedBoot {
    pub line: String,
    pub console: Vec<String>,
}

impl FailedBoot {
    /// The first console line containing `needle`.
    pub fn line_with(&self, needle: &str) -> Option<&str> {
        self.console
            .iter()
            .find(|l| l.contains(needle))
            .map(String::as_str)
    }
}

/// One cold boot that may fail; a failed boot must end the QEMU process by
/// a guest reboot (under `-no-reboot`), as a real machine would reset.
pub fn boot_attempt(m: &mut Machine, label: &str) -> Result<Attempt> {
    let mut b = m.boot()?;
    let (i, line) = b.expect_any(
        &["cairn: boot ok", "cairn: boot failed", "Kernel panic"],
        BOOT_TIMEOUT,
    )?;
    if i == 0 {
        print_timings(label, &b, "cairn: boot ok");
        b.kill()?;
        return Ok(Attempt::Ok(line));
    }
    let end = b.wait_exit(Duration::from_secs(120))?;
    if end != End::Reboot {
        bail!(
            "{label}: a failed boot ended in {end:?}, not a reboot\n--- last 50 console lines ({}) ---\n{}",
            b.log.display(),
            b.tail()
        );
    }
    println!("{label}: failed as expected: {line}");
    Ok(Attempt::Failed(FailedBoot {
        line,
        console: b.all.iter().map(|(_, l)| l.clone()).collect(),
    }))
}

/// `cairn-installer status --disk DISK --json`, reduced by python3's json
/// module (an independent parser) to `key=value` lines:
/// `next_boot.version`, `next_boot.slot`, `active_slot`, and per entry
/// `entry.VERSION.{slot,blessed,exhausted,tries_left}`.
pub fn status_summary(disk: &Path) -> Result<(String, Vec<(String, String)>)> {
    let r = installer(&[&"status", &"--disk", &disk, &"--json"])?;
    if !r.success {
        bail!(
            "cairn-installer status --disk {} --json failed ({:?}): {}",
            disk.display(),
            r.code,
            r.stderr
        );
    }
    let script = r#"
import json, sys
d = json.load(sys.stdin)
nb = d.get("next_boot") or {}
print("next_boot.version=%s" % nb.get("version"))
print("next_boot.slot=%s" % nb.get("slot"))
print("active_slot=%s" % d.get("active_slot"))
for e in d.get("entries", []):
    v = e.get("version")
    for k in ("slot", "blessed", "exhausted", "tries_left", "file"):
        print("entry.%s.%s=%s" % (v, k, e.get(k)))
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting python3 to read the status JSON")?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("python3 stdin")?;
        stdin.write_all(r.stdout.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "status --json is not valid JSON ({}):\n{}",
            String::from_utf8_lossy(&out.stderr),
            r.stdout
        );
    }
    let pairs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok((r.stdout, pairs))
}

/// The value of `key` in a [`status_summary`].
pub fn field<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A v1 disk (a sparse copy of `disk.raw` in `work`) booted once, so its
/// release is blessed; returns the machine (its NVRAM kept) and the disk.
pub fn booted_v1(name: &str, work: &Path) -> Result<(Machine, PathBuf)> {
    let disk = work.join("disk.raw");
    sparse_copy(&images_dir()?.join("disk.raw"), &disk)?;
    let mut m = Machine::new(name, work, None)?;
    m.disks.push(Disk::virtio(&disk));
    boot_ok(
        &mut m,
        &format!("{name}: v1 first boot"),
        "slot=A version=1.0.0",
    )?;
    Ok((m, disk))
}

/// Boots until a boot succeeds (at most `max` attempts); returns the failed
/// attempts and the successful boot's line.
pub fn boot_until_ok(m: &mut Machine, label: &str, max: u32) -> Result<(Vec<FailedBoot>, String)> {
    let mut failed = Vec::new();
    for n in 1..=max {
        match boot_attempt(m, &format!("{label} attempt {n}"))? {
            Attempt::Ok(line) => return Ok((failed, line)),
            Attempt::Failed(f) => failed.push(f),
        }
    }
    bail!(
        "{label}: no boot succeeded in {max} cold boots; failures:\n{}\n(logs in {})",
        failed
            .iter()
            .map(|f| f.line.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        m.log_dir.display()
    )
}

// ---- Secure Boot. ----

/// The Secure Boot key set the `sb1`/`sb2` test releases were signed with
/// (`cairn secureboot-keygen`): `$CAIRN_E2E_SB_KEYS`, else `<images>-sb-keys`.
pub fn secure_boot_keys() -> Result<PathBuf> {
    let dir = match std::env::var_os("CAIRN_E2E_SB_KEYS") {
        Some(d) => PathBuf::from(d),
        None => beside_images("sb-keys")?,
    };
    for f in ["PK.crt", "KEK.crt", "db.crt"] {
        if !dir.join(f).is_file() {
            bail!(
                "{} has no {f}: make the key set with `./target/release/cairn secureboot-keygen --out {}` (ci/test does), or set CAIRN_E2E_SB_KEYS",
                dir.display(),
                dir.display()
            );
        }
    }
    Ok(dir)
}

/// Owner GUID recorded with the enrolled certificates (any fixed value).
const SB_OWNER: &str = "6b7f4e1a-3c2d-4f5e-9a8b-0c1d2e3f4a5b";

/// OVMF variables with `keys`' PK, KEK and db enrolled and Secure Boot on,
/// written by virt-firmware's `virt-fw-vars` (an independent tool).
pub fn enrolled_vars(keys: &Path, out: &Path) -> Result<PathBuf> {
    run(Command::new("virt-fw-vars")
        .args(["-i", OVMF_VARS, "-o"])
        .arg(out)
        .arg("--set-pk")
        .arg(SB_OWNER)
        .arg(keys.join("PK.crt"))
        .arg("--add-kek")
        .arg(SB_OWNER)
        .arg(keys.join("KEK.crt"))
        .arg("--add-db")
        .arg(SB_OWNER)
        .arg(keys.join("db.crt"))
        .arg("--sb"))?;
    Ok(out.to_path_buf())
}

/// Copies `path` (e.g. `EFI/Linux/x.efi`) out of the disk's ESP with mcopy.
pub fn esp_get(disk: &Path, path: &str, to: &Path) -> Result<()> {
    run(mtools("mcopy", disk)?
        .arg("-n")
        .arg(format!("::{path}"))
        .arg(to))?;
    Ok(())
}

/// Replaces `path` on the disk's ESP with `from` (mcopy -o).
pub fn esp_put(disk: &Path, from: &Path, path: &str) -> Result<()> {
    run(mtools("mcopy", disk)?
        .arg("-o")
        .arg(from)
        .arg(format!("::{path}")))?;
    Ok(())
}

//! Thin, named wrappers over the syscalls init makes, so the stage modules
//! read as steps and every failure carries the path it was about.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn mount(
    src: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let src = CString::new(src)?;
    let tgt = cstr(target)?;
    let fs = fstype.map(CString::new).transpose()?;
    let data = data.map(CString::new).transpose()?;
    // SAFETY: all pointers are NUL-terminated strings or null, alive for the call.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fs.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    })
}

pub fn umount(target: &Path) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: valid C string.
    check(unsafe { libc::umount2(t.as_ptr(), 0) })
}

pub fn mknod(
    path: &Path,
    kind: libc::mode_t,
    perm: libc::mode_t,
    major: u32,
    minor: u32,
) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: valid C string; makedev is pure arithmetic.
    check(unsafe { libc::mknod(p.as_ptr(), kind | perm, libc::makedev(major, minor)) })
}

pub fn chroot(path: &Path) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: valid C string.
    check(unsafe { libc::chroot(p.as_ptr()) })
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe `name`.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

pub fn sync() {
    // SAFETY: no arguments.
    unsafe { libc::sync() }
}

pub fn reboot(cmd: libc::c_int) -> io::Error {
    // SAFETY: reboot with a LINUX_REBOOT_CMD_* constant; returns only on failure.
    unsafe { libc::reboot(cmd) };
    io::Error::last_os_error()
}

pub fn disable_ctrl_alt_del() {
    // Makes Ctrl-Alt-Del arrive as SIGINT to PID 1 instead of an instant reboot.
    // SAFETY: as above.
    unsafe { libc::reboot(libc::RB_DISABLE_CAD) };
}

pub fn getpid() -> i32 {
    // SAFETY: no arguments.
    unsafe { libc::getpid() }
}

/// Seconds since boot, for log lines (not a wall clock: deterministic logs
/// are not the goal here, but the wall clock is unset this early anyway).
pub fn monotonic() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

pub const HANDLED_SIGNALS: [libc::c_int; 4] =
    [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGUSR2];

fn sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the signals PID 1 handles, so they queue for [`wait_signal`]
/// instead of running handlers. std's Command passes the mask on to
/// children, so every command init starts goes through [`command`].
pub fn block_signals() {
    let set = sigset();
    // SAFETY: valid set pointer, null old-set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Waits up to `timeout` for one of the blocked signals.
pub fn wait_signal(timeout: Duration) -> Option<libc::c_int> {
    let set = sigset();
    // SAFETY: plain data, fields set below.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    ts.tv_sec = timeout.as_secs().min(i32::MAX as u64) as _;
    ts.tv_nsec = timeout.subsec_nanos() as _;
    // SAFETY: valid set and timespec; null siginfo.
    let r = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    (r > 0).then_some(r)
}

/// The only variable a child of init gets.
pub const CHILD_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// A Command whose child starts with an empty signal mask (without this,
/// services would inherit PID 1's blocked SIGTERM and ignore a stop
/// request) and an environment of PATH alone.
pub fn command(prog: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut c = std::process::Command::new(prog);
    // A clean environment: the kernel hands PID 1 every command-line word it
    // does not know as a variable (cairn.rootfs=, cairn.verity=, pti=on...),
    // and nothing a service, a check or e2fsck runs should inherit that.
    c.env_clear().env("PATH", CHILD_PATH);
    // SAFETY: only async-signal-safe calls (sigemptyset, pthread_sigmask)
    // between fork and exec.
    unsafe {
        c.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            if libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

/// Signals every process but init itself, then reaps what exits, for up to
/// `wait`. Catches daemons that left their service's process group. Does
/// nothing unless this is PID 1: kill(-1) elsewhere would hit the caller's
/// whole session.
pub fn kill_all(sig: libc::c_int, wait: Duration) {
    if getpid() != 1 {
        return;
    }
    // SAFETY: kill(-1) from PID 1 excludes PID 1 itself.
    unsafe { libc::kill(-1, sig) };
    let end = std::time::Instant::now() + wait;
    while std::time::Instant::now() < end {
        // SAFETY: plain waitpid with a null status pointer.
        let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if r < 0 {
            return; // ECHILD: nothing left
        }
        if r == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

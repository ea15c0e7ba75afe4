//! Least privilege for what init starts (services and health checks):
//! between fork and exec the child gets its own mount namespace with a
//! read-only root, loses every capability outside its configured set
//! (bounding, permitted, effective, inheritable; the set is raised as
//! ambient so it survives exec by a non-root uid), takes its uid and gid
//! with no supplementary groups, and sets no_new_privs.
//!
//! init is multithreaded (network, update agent, output forwarders), so
//! the child of fork may only make async-signal-safe calls: another thread
//! may have held the allocator's lock at fork time. Everything is computed
//! before fork, and the hook makes raw syscalls through `libc` only. That
//! is also why this is not the `caps` crate: it builds `HashSet`s and
//! `String`s (allocation) and goes through libc's set*id wrappers, which
//! in musl and glibc synchronise with other threads that no longer exist
//! in the child.

use contract::caps::CapError;
use contract::machine::{Health, Service};
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

// The raw set*id syscalls take 32-bit ids on the 64-bit ABIs; 32-bit x86
// and arm would need their `*32` variants.
#[cfg(not(target_pointer_width = "64"))]
compile_error!("privs: raw setresuid/setresgid assume a 64-bit Linux ABI");

/// What one child runs with. Built from the machine config, which refused
/// capabilities outside `contract::caps::ALLOWED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privileges {
    pub uid: u32,
    pub gid: u32,
    /// Bit n = capability n.
    pub caps: u64,
}

impl Privileges {
    pub fn of_service(s: &Service) -> Result<Self, CapError> {
        Ok(Privileges {
            uid: s.user,
            gid: s.group,
            caps: contract::caps::mask(&s.capabilities)?,
        })
    }

    pub fn of_health(h: &Health) -> Result<Self, CapError> {
        Ok(Privileges {
            uid: h.user,
            gid: h.group,
            caps: contract::caps::mask(&h.capabilities)?,
        })
    }
}

/// Makes every mount in init's namespace shared, once, before the first
/// child: the kernel leaves them private, and a private mount is copied
/// into a child's namespace with no link back. Shared here (and slave in
/// the child), init's later mounts and unmounts reach every child: the
/// ESP unmounted after blessing, /var and STATE unmounted at shutdown are
/// then gone everywhere, not kept alive in a service's namespace.
pub fn share_mounts() -> io::Result<()> {
    crate::sys::mount(
        "none",
        std::path::Path::new("/"),
        None,
        libc::MS_REC | libc::MS_SHARED,
        None,
    )
}

/// The steps of the hook, in order; the child records the one it is at so
/// a failure names it (the parent only receives errno from std).
const STEPS: [&str; 11] = [
    "unshare(CLONE_NEWNS)",
    "making / a slave mount",
    "remounting / read-only",
    "PR_SET_KEEPCAPS",
    "dropping the capability bounding set",
    "setgroups",
    "setresgid",
    "setresuid",
    "capset",
    "raising ambient capabilities",
    "PR_SET_NO_NEW_PRIVS",
];
const DONE: u32 = STEPS.len() as u32 + 1;

/// One shared anonymous page: written by the child, read by the parent.
struct StepCell(*mut AtomicU32);

// SAFETY: the page lives until the last Arc is dropped; access is atomic.
unsafe impl Send for StepCell {}
unsafe impl Sync for StepCell {}

impl StepCell {
    fn new() -> io::Result<Self> {
        // SAFETY: anonymous shared mapping, checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // The mapping is zero-filled: step 0, "not started".
        Ok(StepCell(p.cast()))
    }
    fn set(&self, step: u32) {
        // SAFETY: valid for the cell's lifetime (see Drop).
        unsafe { (*self.0).store(step, Ordering::SeqCst) }
    }
    fn get(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.0).load(Ordering::SeqCst) }
    }
}

impl Drop for StepCell {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.0.cast(), 4096) };
    }
}

/// Returned by [`confine`]: turns a failed spawn's bare errno into a
/// message naming the step that failed.
pub struct Confinement {
    privs: Privileges,
    step: Arc<StepCell>,
}

impl Confinement {
    pub fn explain(&self, e: io::Error) -> io::Error {
        let step = self.step.get();
        let Some(what) = step.checked_sub(1).and_then(|i| STEPS.get(i as usize)) else {
            // Not started (fork failed) or done (exec failed): std's error says it.
            return e;
        };
        let p = self.privs;
        let hint = if e.raw_os_error() == Some(libc::EPERM) {
            "; init needs CAP_SYS_ADMIN, CAP_SETPCAP, CAP_SETUID and CAP_SETGID to confine \
             what it starts, and does not start it unconfined"
        } else {
            ""
        };
        io::Error::new(
            e.kind(),
            format!(
                "confining to uid {} gid {} capabilities {:#x}: {what}: {e}{hint}",
                p.uid, p.gid, p.caps
            ),
        )
    }
}

/// The highest capability number the running kernel knows; bounding-set
/// drops above it fail with EINVAL, which the hook ignores anyway.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .filter(|n| *n < 64)
        .unwrap_or(63)
}

/// Flags for the read-only bind remount of "/". A bind remount replaces
/// the mount's nosuid/nodev/noexec, so noexec is kept where it was set;
/// nosuid and nodev are added (no_new_privs makes set-id files moot, and
/// devices live on /dev).
fn root_remount_flags() -> libc::c_ulong {
    let base =
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    // SAFETY: valid C string and out-pointer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::statvfs(c"/".as_ptr(), &mut st) } == 0;
    if ok && st.f_flag & libc::ST_NOEXEC != 0 {
        base | libc::MS_NOEXEC
    } else {
        base
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// _LINUX_CAPABILITY_VERSION_3: 64 bits as two 32-bit words.
const CAP_V3: u32 = 0x2008_0522;

fn ok(r: libc::c_long) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Installs the confinement hook on `cmd` (after the signal-mask reset
/// `sys::command` installed). The hook fails the spawn rather than run the
/// child with more than `p`; [`Confinement::explain`] names the step.
pub fn confine(cmd: &mut Command, p: Privileges) -> io::Result<Confinement> {
    let step = Arc::new(StepCell::new()?);
    let cell = step.clone();
    let last = last_cap();
    let root_flags = root_remount_flags();
    let words = [p.caps as u32, (p.caps >> 32) as u32];
    let data = words.map(|w| CapData {
        effective: w,
        permitted: w,
        inheritable: w,
    });
    let Privileges { uid, gid, caps } = p;
    let hook = move || -> io::Result<()> {
        let at = |n: u32| cell.set(n);
        // SAFETY: raw syscalls on values computed before fork; no
        // allocation, no locks (async-signal-safe).
        unsafe {
            at(1);
            ok(libc::unshare(libc::CLONE_NEWNS).into())?;
            at(2);
            let root = c"/".as_ptr();
            let null: *const libc::c_char = std::ptr::null();
            // Slave: host mounts (a hot-plugged disk, a remounted /var)
            // still reach the child; nothing it mounts reaches back.
            ok(libc::mount(null, root, null, libc::MS_REC | libc::MS_SLAVE, null.cast()).into())?;
            at(3);
            // The rootfs is a read-only squashfs already; this holds even
            // if a future root were writable.
            ok(libc::mount(null, root, null, root_flags, null.cast()).into())?;
            at(4);
            ok(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0).into())?;
            at(5);
            for c in 0..=last {
                if caps & (1u64 << c) == 0
                    && libc::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0, 0, 0) != 0
                    && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
                {
                    return Err(io::Error::last_os_error());
                }
            }
            at(6);
            ok(libc::syscall(
                libc::SYS_setgroups,
                0,
                std::ptr::null::<libc::gid_t>(),
            ))?;
            at(7);
            ok(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
            at(8);
            // With KEEPCAPS the permitted set survives leaving uid 0.
            ok(libc::syscall(libc::SYS_setresuid, uid, uid, uid))?;
            at(9);
            let mut hdr = CapHeader {
                version: CAP_V3,
                pid: 0,
            };
            ok(libc::syscall(
                libc::SYS_capset,
                &mut hdr as *mut CapHeader,
                data.as_ptr(),
            ))?;
            at(10);
            // Ambient: what a non-root uid keeps across exec of a file
            // without file capabilities.
            for c in 0..64u32 {
                if caps & (1u64 << c) != 0 {
                    ok(libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                        c as libc::c_ulong,
                        0,
                        0,
                    )
                    .into())?;
                }
            }
            at(11);
            ok(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into())?;
            at(DONE);
        }
        Ok(())
    };
    // SAFETY: the hook is async-signal-safe (see above).
    unsafe { cmd.pre_exec(hook) };
    Ok(Confinement { privs: p, step })
}

/// `init --self-report`: what a child of init runs with, for a health
/// check and the e2e suite to see (uid and gid, the capability and
/// no_new_privs lines of /proc/self/status verbatim, whether "/" is
/// read-only, and the mount namespace).
pub fn self_report(out: &mut impl std::io::Write) -> io::Result<()> {
    // SAFETY: no arguments.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    writeln!(out, "self-report uid={uid} gid={gid}")?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    for key in [
        "CapInh:",
        "CapPrm:",
        "CapEff:",
        "CapBnd:",
        "CapAmb:",
        "NoNewPrivs:",
        "Seccomp:",
    ] {
        match status.lines().find(|l| l.starts_with(key)) {
            Some(l) => writeln!(out, "{l}")?,
            None => writeln!(out, "{key}\t(absent)")?,
        }
    }
    // SAFETY: valid C string and out-pointer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c"/".as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let root = if st.f_flag & libc::ST_RDONLY != 0 {
        "ro"
    } else {
        "rw"
    };
    writeln!(out, "self-report root={root}")?;
    let ns = std::fs::read_link("/proc/self/ns/mnt")?;
    writeln!(out, "self-report mountns={}", ns.display())?;
    // Names only: init gives a child PATH alone (sys::command).
    let mut names: Vec<String> = std::env::vars_os()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    names.sort();
    writeln!(out, "self-report env={}", names.join(","))?;
    // The per-mount options (mountinfo field 6) of the writable places,
    // as this child sees them: nosuid,nodev,noexec is checked by e2e.
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    for dir in [
        contract::disk::STATE_MOUNT,
        contract::disk::EPHEMERAL_MOUNT,
        "/run",
    ] {
        let opts = info.lines().rev().find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(4) == Some(&dir)).then(|| f.get(5).copied().unwrap_or("?"))
        });
        writeln!(
            out,
            "self-report mount {dir} {}",
            opts.unwrap_or("(not mounted)")
        )?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_explain_only_what_the_hook_reached() {
        let c = Confinement {
            privs: Privileges {
                uid: 65534,
                gid: 65534,
                caps: 0x400,
            },
            step: Arc::new(StepCell::new().unwrap()),
        };
        let e = || io::Error::from_raw_os_error(libc::EPERM);
        assert_eq!(c.explain(e()).to_string(), e().to_string());
        c.step.set(1);
        let m = c.explain(e()).to_string();
        assert!(
            m.starts_with(
                "confining to uid 65534 gid 65534 capabilities 0x400: unshare(CLONE_NEWNS): "
            ),
            "{m}"
        );
        assert!(m.contains("does not start it unconfined"), "{m}");
        c.step.set(9);
        let m = c
            .explain(io::Error::from_raw_os_error(libc::EINVAL))
            .to_string();
        assert!(m.contains(": capset: ") && !m.contains("unconfined"), "{m}");
        c.step.set(DONE);
        assert_eq!(c.explain(e()).to_string(), e().to_string());
    }

    #[test]
    fn privileges_come_from_the_config() {
        let cfg = contract::machine::MachineConfig::parse(
            "[[service]]\nname=\"w\"\nexec=\"/w\"\nuser=0\ncapabilities=[\"CAP_NET_BIND_SERVICE\",\"CAP_KILL\"]\n\
             [[health]]\nname=\"h\"\nexec=\"/h\"\ntimeout_s=1\n",
            "m.toml",
        )
        .unwrap();
        assert_eq!(
            Privileges::of_service(&cfg.services[0]).unwrap(),
            Privileges {
                uid: 0,
                gid: 65534,
                caps: 0x420
            }
        );
        assert_eq!(
            Privileges::of_health(&cfg.health[0]).unwrap(),
            Privileges {
                uid: 65534,
                gid: 65534,
                caps: 0
            }
        );
    }
}

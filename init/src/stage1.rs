//! Stage 1: `/init` in the UKI's initramfs. Finds the slot holding the
//! rootfs named by the command line, puts dm-verity over it, mounts it and
//! switches root to its `/sbin/init`.
//!
//! The initramfs contents are NOT deleted before switching: on an installed
//! system they are this one binary (a few hundred KB of RAM), and a
//! recursive delete in PID 1 is risk without benefit. The installer
//! initramfs (which carries the payload) never switches root.

use crate::error::{BootError, Context};
use crate::record::Handover;
use crate::{disks, dm, say, slot, sys};
use artifacts::gpt::{Guid, HeaderCopy, Partition, ReadDisk};
use contract::cmdline::{self, Cmdline, Mode, Verity};
use std::ffi::CString;
use std::fs::{self, File};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

pub const DEVICE_TIMEOUT: Duration = Duration::from_secs(30);
const DM_NAME: &str = "cairn-root";
const NEWROOT: &str = "/sysroot";

/// Mounts /proc, /sys, /dev, /run. An already-mounted target (devtmpfs
/// automount) is fine.
pub fn mount_api_filesystems() -> Result<(), BootError> {
    let nosuid = libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;
    let mounts: [(&str, &str, libc::c_ulong, Option<&str>); 4] = [
        ("proc", "/proc", nosuid, None),
        ("sysfs", "/sys", nosuid, None),
        ("devtmpfs", "/dev", libc::MS_NOSUID, Some("mode=0755")),
        // Runtime state (handover, status, resolv.conf, the ESP mount
        // point); nothing runs from it.
        ("tmpfs", "/run", nosuid, Some("mode=0755")),
    ];
    for (fs, target, flags, data) in mounts {
        let _ = fs::create_dir_all(target);
        match sys::mount(fs, Path::new(target), Some(fs), flags, data) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            r => r.ctx(|| format!("mounting {fs} at {target}"))?,
        }
    }
    Ok(())
}

/// Why stage 1 boots from the disk it chose: two disks can hold the same
/// release (a disk moved from another machine, a clone), and the one the
/// loader was started from is the one whose boot counters and ESP belong to
/// this boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskRule {
    /// The disk holds the partition systemd-boot was loaded from
    /// (`LoaderDevicePartUUID`).
    LoaderDevice(Guid),
    /// No `LoaderDevicePartUUID`: the first disk, by name, holding the slot.
    FirstHolder,
}

impl std::fmt::Display for DiskRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskRule::LoaderDevice(g) => write!(
                f,
                "it holds the loader's partition PARTUUID={g} (LoaderDevicePartUUID)"
            ),
            DiskRule::FirstHolder => f.write_str(
                "first disk holding the rootfs (no LoaderDevicePartUUID to say which the loader used)",
            ),
        }
    }
}

#[derive(Debug)]
pub struct Located {
    pub disk: disks::Disk,
    pub partition: Partition,
    pub how: slot::Found,
    pub rule: DiskRule,
    /// Set when the primary GPT was invalid and the backup was read.
    pub table_note: Option<String>,
}

/// Every disk holding the slot for `root`, sorted by disk name.
fn holders(
    sys_block: &Path,
    dev_dir: &Path,
    root: &[u8; 32],
    v: &Verity,
) -> Vec<(Located, ReadDisk)> {
    let mut out = Vec::new();
    for d in disks::list(sys_block) {
        let Ok(read) = disks::read_table(dev_dir, &d) else {
            continue;
        };
        let Ok(mut f) = File::open(dev_dir.join(&d.name)) else {
            continue;
        };
        if let Some((p, how)) = slot::find(&mut f, &read.layout, root, v) {
            let located = Located {
                partition: p.clone(),
                how,
                rule: DiskRule::FirstHolder,
                table_note: disks::backup_note(&d.name, &read),
                disk: d,
            };
            out.push((located, read));
        }
    }
    out
}

/// The holder to boot from: with `loader` (`LoaderDevicePartUUID`), only the
/// disk holding that partition; without it, the first holder.
fn choose(holders: Vec<(Located, ReadDisk)>, loader: Option<&Guid>) -> Option<Located> {
    match loader {
        None => holders.into_iter().next().map(|(l, _)| l),
        Some(g) => holders
            .into_iter()
            .find(|(_, read)| read.layout.partitions.iter().any(|p| p.guid == *g))
            .map(|(l, _)| Located {
                rule: DiskRule::LoaderDevice(*g),
                ..l
            }),
    }
}

/// One line per disk: its partitions by label and PARTUUID, or why its
/// table could not be read. For the "not found" message.
pub fn describe_disks(sys_block: &Path, dev_dir: &Path) -> String {
    let list = disks::list(sys_block);
    if list.is_empty() {
        return "no block devices".into();
    }
    list.iter()
        .map(|d| match disks::read_table(dev_dir, d) {
            Ok(read) => {
                let parts: Vec<String> = read
                    .layout
                    .partitions
                    .iter()
                    .map(|p| format!("{} {:?} {}", p.slot + 1, p.name, p.guid))
                    .collect();
                let copy = match read.used {
                    HeaderCopy::Primary => "",
                    HeaderCopy::Backup => " (backup copy: primary invalid)",
                };
                format!("{}: GPT{copy} [{}]", d.name, parts.join(", "))
            }
            Err(e) => e.to_string(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Polls until the slot's disk shows up: virtio and NVMe probe
/// asynchronously, so the disk can appear after init starts. `loader` is
/// `LoaderDevicePartUUID`: when set, only the disk holding that partition
/// will do (see `DiskRule`).
/// `sys_block` and `dev_dir` are /sys/block and /dev outside tests.
pub fn wait_for_slot(
    sys_block: &Path,
    dev_dir: &Path,
    loader: Option<&Guid>,
    root: &[u8; 32],
    v: &Verity,
    timeout: Duration,
) -> Result<Located, BootError> {
    let start = Instant::now();
    let want = slot::partuuid(root);
    let on = loader.map_or_else(String::new, |g| {
        format!(" on the disk holding PARTUUID={g} (LoaderDevicePartUUID)")
    });
    say!("looking for rootfs partition PARTUUID={want} (or BOOT-A/BOOT-B with matching verity superblock){on}");
    loop {
        if let Some(l) = choose(holders(sys_block, dev_dir, root, v), loader) {
            return Ok(l);
        }
        if start.elapsed() >= timeout {
            return Err(BootError::Stop(format!(
                "no rootfs partition after {} s: wanted PARTUUID={want}{on}; block devices seen: {}",
                timeout.as_secs_f32(),
                describe_disks(sys_block, dev_dir)
            )));
        }
        std::thread::sleep(Duration::from_millis(250).min(timeout));
    }
}

/// systemd-boot's `LoaderDevicePartUUID`, with efivarfs mounted just long
/// enough to read it (stage 2 mounts it for good). `None` when not booted by
/// UEFI and systemd-boot.
fn loader_device_partuuid() -> Option<Guid> {
    let var = Path::new(installer::blockdev::LOADER_DEVICE_VAR);
    let dir = var.parent()?;
    if !dir.is_dir() {
        return None;
    }
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY;
    let mounted = sys::mount("efivarfs", dir, Some("efivarfs"), flags, None).is_ok();
    let g = installer::blockdev::loader_device_partuuid(var);
    if mounted {
        let _ = sys::umount(dir);
    }
    g
}

fn ensure_node(path: &Path, kind: libc::mode_t, major: u32, minor: u32) -> Result<(), BootError> {
    if path.exists() {
        return Ok(());
    }
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).ctx(|| format!("creating {}", p.display()))?;
    }
    sys::mknod(path, kind, 0o600, major, minor)
        .ctx(|| format!("mknod {} {major}:{minor}", path.display()))
}

/// Reads the whole verity device once: dm-verity checks each block against
/// the root hash on read, so any corruption fails the boot here, before the
/// filesystem is mounted, rather than as a random I/O error later.
fn verify_all(dev: &Path) -> Result<u64, BootError> {
    let mut f = File::open(dev).ctx(|| format!("opening {}", dev.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) => {
                return Err(BootError::Stop(format!(
                    "rootfs failed dm-verity verification near byte offset {total} of {}: {e}",
                    dev.display()
                )))
            }
        }
    }
}

fn switch_root(newroot: &Path) -> Result<(), BootError> {
    for m in ["/proc", "/sys", "/dev", "/run"] {
        let target = newroot.join(&m[1..]);
        sys::mount(m, &target, None, libc::MS_MOVE, None).ctx(|| {
            format!(
                "moving {m} to {} (the rootfs must contain the mount point)",
                target.display()
            )
        })?;
    }
    std::env::set_current_dir(newroot).ctx(|| format!("chdir {}", newroot.display()))?;
    sys::mount(".", Path::new("/"), None, libc::MS_MOVE, None)
        .ctx(|| "moving the new root to /".into())?;
    sys::chroot(Path::new(".")).ctx(|| "chroot into the new root".into())?;
    std::env::set_current_dir("/").ctx(|| "chdir / in the new root".into())?;
    Ok(())
}

fn exec_stage2() -> BootError {
    let prog = CString::new("/sbin/init").expect("no NUL");
    let argv = [prog.as_ptr(), std::ptr::null()];
    // SAFETY: argv is a NULL-terminated array of C strings that outlive the call.
    unsafe { libc::execv(prog.as_ptr(), argv.as_ptr()) };
    BootError::Io {
        what: "exec /sbin/init in the new root".into(),
        source: std::io::Error::last_os_error(),
    }
}

pub enum Outcome {
    /// Install mode finished (or failed): power off.
    PowerOff,
}

pub fn run() -> Result<Outcome, BootError> {
    mount_api_filesystems()?;
    crate::log::open_pid1();
    sys::disable_ctrl_alt_del();
    say!("stage 1 (cairn-init {})", env!("CARGO_PKG_VERSION"));
    let line = fs::read_to_string("/proc/cmdline").ctx(|| "reading /proc/cmdline".into())?;
    let cmd: Cmdline = cmdline::parse(&line)?;
    if cmd.mode == Mode::Install {
        // Whoever watches the screen (tty0) must see the install, not only
        // the last console= (the serial line).
        crate::log::every_console();
        say!(
            "install mode: payload /payload, target {}",
            cmd.install_disk.as_deref().unwrap_or("(installer default)")
        );
        // The installer refuses its own boot medium via LoaderDevicePartUUID.
        crate::stage2::mount_extras();
        match crate::install::install(
            &Path::new("/").join(contract::bundle::PAYLOAD_DIR),
            cmd.install_disk.as_deref(),
        ) {
            Ok(()) => say!("install complete; powering off"),
            Err(e) => say!("install failed: {e}; powering off"),
        }
        return Ok(Outcome::PowerOff);
    }
    let root = cmd.rootfs.ok_or_else(|| {
        BootError::Stop("cairn.rootfs= is missing from the kernel command line".into())
    })?;
    let verity = cmd.verity.ok_or_else(|| {
        BootError::Stop("cairn.verity= is missing from the kernel command line".into())
    })?;

    let loader = loader_device_partuuid();
    let found = wait_for_slot(
        Path::new("/sys/block"),
        Path::new("/dev"),
        loader.as_ref(),
        &root,
        &verity,
        DEVICE_TIMEOUT,
    )?;
    if let Some(note) = &found.table_note {
        say!("{note}");
    }
    say!("rootfs disk {}: {}", found.disk.name, found.rule);
    let number = found.partition.slot + 1;
    let part_name = found
        .disk
        .device(&found.partition)
        .ok_or_else(|| {
            BootError::Stop(format!(
                "{}: GPT partition {number} ({}) has no kernel device (the kernel read no partition table, or another one)",
                found.disk.name, found.partition.name
            ))
        })?
        .to_string();
    say!(
        "rootfs: {} partition {number} ({}, {:?})",
        found.disk.name,
        found.partition.name,
        found.how
    );
    let (major, minor) = disks::dev_numbers(Path::new("/sys/block"), &found.disk.name, &part_name)
        .ok_or_else(|| {
            BootError::Stop(format!(
                "/sys/block/{}/{part_name}/dev is unreadable",
                found.disk.name
            ))
        })?;

    ensure_node(Path::new("/dev/mapper/control"), libc::S_IFCHR, 10, 236)?;
    let dev = format!("{major}:{minor}");
    let params = dm::verity_params(&dev, verity.data_blocks, &root, &verity.salt);
    let (dm_major, dm_minor) = dm::create_verity(DM_NAME, verity.data_blocks * 8, &params)?;
    let dm_node = Path::new("/dev/mapper").join(DM_NAME);
    ensure_node(&dm_node, libc::S_IFBLK, dm_major, dm_minor)?;
    let t = Instant::now();
    let bytes = verify_all(&dm_node)?;
    say!(
        "rootfs verified: {bytes} bytes in {} ms",
        t.elapsed().as_millis()
    );

    let newroot = Path::new(NEWROOT);
    fs::create_dir_all(newroot).ctx(|| format!("creating {NEWROOT}"))?;
    sys::mount(
        &dm_node.to_string_lossy(),
        newroot,
        Some("squashfs"),
        libc::MS_RDONLY | libc::MS_NODEV,
        None,
    )
    .ctx(|| format!("mounting squashfs from {} at {NEWROOT}", dm_node.display()))?;

    let handover = Handover {
        disk: format!("/dev/{}", found.disk.name),
        slot_label: found.partition.name.clone(),
        partition: format!("/dev/{part_name}"),
    };
    fs::create_dir_all("/run/cairn").ctx(|| "creating /run/cairn".into())?;
    fs::write("/run/cairn/boot", handover.to_text()).ctx(|| "writing /run/cairn/boot".into())?;

    switch_root(newroot)?;
    say!("switching to /sbin/init");
    Err(exec_stage2())
}

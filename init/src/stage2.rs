//! Stage 2: `/sbin/init` in the verity-protected root. Prepares STATE and
//! EPHEMERAL, loads the machine config, supervises services, blesses the
//! boot once healthy, and shuts down cleanly on signals.

use crate::bless::{self, Decision};
use crate::error::{BootError, Context};
use crate::fsprobe::{self, Action, PROBE_LEN};
use crate::record::{self, Handover};
use crate::supervisor::{Backoff, Supervisor};
use crate::sysctl::{self, Sysctls};
use crate::{disks, health, say, sys};
use artifacts::gpt::DiskLayout;
use contract::control::EventKind;
use contract::esp::{decode_efivar_string, LOADER_VENDOR_GUID};
use contract::machine::MachineConfig;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const STATE_DIR: &str = contract::disk::STATE_MOUNT;
pub const CONFIG: &str = contract::machine::STORED_CONFIG;
pub const BOOTS_LOG: &str = "/system/state/boots.log";
const ESP_DIR: &str = "/run/cairn/esp";
const EFIVARS: &str = "/sys/firmware/efi/efivars";
const STOP_GRACE: Duration = Duration::from_secs(10);
const MKE2FS: &str = "/sbin/mke2fs";
const E2FSCK: &str = "/sbin/e2fsck";

/// What a failure must record, once STATE is mounted.
struct Pending {
    number: u64,
    slot: String,
    version: String,
}
static PENDING: Mutex<Option<Pending>> = Mutex::new(None);

fn append_boot_line(line: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(BOOTS_LOG)?;
    f.write_all(line.as_bytes())?;
    f.sync_all()
}

/// Best effort: called on the way to a reboot.
pub fn record_failure(reason: &str) {
    let p = PENDING.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(p) = p {
        let _ = append_boot_line(&record::boot_line(
            p.number,
            &p.slot,
            &p.version,
            &format!("failed: {reason}"),
        ));
    }
}

fn run_tool(prog: &str, args: &[&str]) -> Result<i32, BootError> {
    let st = sys::command(prog)
        .args(args)
        .status()
        .ctx(|| format!("running {prog}"))?;
    Ok(st.code().unwrap_or(-1))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    Formatted,
    /// e2fsck -p exit code (0 clean, 1/2 repaired).
    Checked(i32),
}

/// Applies the format rule of design.md to `dev` (a partition or an image
/// file): format when the first MiB is zero, `e2fsck -p` when ext4, stop
/// otherwise. `label` is the ext4 label and names the partition in messages.
pub fn prepare_fs(dev: &Path, label: &str) -> Result<Prepared, BootError> {
    let ds = dev.to_string_lossy().into_owned();
    let mut head = Vec::with_capacity(PROBE_LEN);
    File::open(dev)
        .and_then(|f| f.take(PROBE_LEN as u64).read_to_end(&mut head))
        .ctx(|| format!("reading the first MiB of {label} ({ds})"))?;
    match fsprobe::action(&fsprobe::classify(&head), &format!("{label} ({ds})")) {
        Action::Format => {
            say!("{label} ({ds}): empty, formatting ext4");
            let code = run_tool(
                MKE2FS,
                &[
                    "-q",
                    "-t",
                    "ext4",
                    "-L",
                    label,
                    "-E",
                    "nodiscard",
                    "-F",
                    &ds,
                ],
            )?;
            if code != 0 {
                return Err(BootError::Stop(format!(
                    "{label} ({ds}): mke2fs exited with {code}"
                )));
            }
            Ok(Prepared::Formatted)
        }
        Action::Check => {
            let code = run_tool(E2FSCK, &["-p", &ds])?;
            if !fsprobe::fsck_ok(code) {
                return Err(BootError::Stop(format!(
                    "{label} ({ds}): e2fsck -p exited with {code}: filesystem needs manual repair; not formatting"
                )));
            }
            if code != 0 {
                say!("{label} ({ds}): e2fsck repaired errors (exit {code})");
            }
            Ok(Prepared::Checked(code))
        }
        Action::Stop(why) => Err(BootError::Stop(why)),
    }
}

/// Finds `label` on the boot disk, prepares it and mounts it.
fn prepare(
    disk: &disks::Disk,
    table: &DiskLayout,
    label: &str,
    mountpoint: &str,
) -> Result<PathBuf, BootError> {
    let p = table
        .partition(label)
        .ok_or_else(|| BootError::Stop(format!("{}: no partition labelled {label}", disk.name)))?;
    let name = disk.device(p).ok_or_else(|| {
        BootError::Stop(format!(
            "{}: partition {} ({label}) has no kernel device",
            disk.name,
            p.slot + 1
        ))
    })?;
    let dev = Path::new("/dev").join(name);
    prepare_fs(&dev, label)?;
    let ds = dev.to_string_lossy();
    fs::create_dir_all(mountpoint).ctx(|| format!("creating {mountpoint}"))?;
    // Data only: nothing runs from STATE or /var (mke2fs and e2fsck come
    // from the rootfs, the update agent writes images, never runs them),
    // so a file planted there can be neither executed nor set-id nor a
    // device node.
    sys::mount(
        &ds,
        Path::new(mountpoint),
        Some("ext4"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
    .ctx(|| format!("mounting {label} ({ds}) at {mountpoint}"))?;
    Ok(PathBuf::from(mountpoint))
}

fn mount_esp(disk: &disks::Disk, table: &DiskLayout) -> Result<PathBuf, BootError> {
    let p = table
        .partition("EFI")
        .ok_or_else(|| BootError::Stop(format!("{}: no partition labelled EFI", disk.name)))?;
    let name = disk.device(p).ok_or_else(|| {
        BootError::Stop(format!(
            "{}: EFI partition {} has no kernel device",
            disk.name,
            p.slot + 1
        ))
    })?;
    fs::create_dir_all(ESP_DIR).ctx(|| format!("creating {ESP_DIR}"))?;
    let dev = format!("/dev/{name}");
    sys::mount(
        &dev,
        Path::new(ESP_DIR),
        Some("vfat"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("umask=0077"),
    )
    .ctx(|| format!("mounting the ESP ({dev}) at {ESP_DIR}"))?;
    Ok(PathBuf::from(ESP_DIR))
}

fn sync_dir(d: &Path) -> std::io::Result<()> {
    File::open(d)?.sync_all()
}

/// First boot: move the ESP's transient machine.toml into STATE (durably,
/// then delete the ESP copy, which any ESP reader could see).
/// `cfg` is the persistent copy (CONFIG), `transient` the ESP's
/// `cairn/machine.toml`.
///
/// Precedence: the config in STATE always wins. The ESP copy is only the
/// installer's hand-over to a STATE that has no config yet; once STATE has
/// one (imported, or stored later through the node API's `config apply`),
/// an ESP file is ignored (and said so), so a config applied through the
/// API is never replaced behind the operator's back at the next boot.
pub fn load_config(cfg: &Path, transient: &Path) -> Result<MachineConfig, BootError> {
    if cfg.exists() && transient.exists() {
        say!(
            "ignoring {}: {} holds the machine config (change it with config apply)",
            transient.display(),
            cfg.display()
        );
    }
    if !cfg.exists() && transient.exists() {
        let dir = cfg.parent().ok_or_else(|| {
            BootError::Stop(format!("config path {} has no directory", cfg.display()))
        })?;
        fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        let text = fs::read(transient).ctx(|| format!("reading {}", transient.display()))?;
        // Validate before importing: a broken file stays on the ESP to fix.
        MachineConfig::parse(
            &String::from_utf8_lossy(&text),
            &transient.display().to_string(),
        )?;
        let tmp = dir.join("machine.toml.new");
        let mut f = File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
        f.write_all(&text)
            .and_then(|_| f.sync_all())
            .ctx(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, cfg).ctx(|| format!("renaming into {}", cfg.display()))?;
        sync_dir(dir).ctx(|| format!("syncing {}", dir.display()))?;
        fs::remove_file(transient).ctx(|| format!("removing {}", transient.display()))?;
        sys::sync();
        let msg = format!(
            "imported machine config from the ESP into {}",
            cfg.display()
        );
        say!("{msg}");
        crate::ring::event(EventKind::Config, None, msg);
    }
    if cfg.exists() {
        Ok(MachineConfig::load(cfg)?)
    } else {
        say!(
            "no machine config ({} or {}): running without services",
            cfg.display(),
            transient.display()
        );
        Ok(MachineConfig::default())
    }
}

fn read_efivar(efivars: &Path, name: &str) -> Option<String> {
    let raw = fs::read(efivars.join(format!("{name}-{LOADER_VENDOR_GUID}"))).ok()?;
    decode_efivar_string(&raw)
}

/// Returns whether the boot counts as blessed (renamed now or already).
/// `efivars` is the efivarfs mount, `esp` the mounted ESP.
pub fn bless_boot(esp: &Path, efivars: &Path) -> Result<bool, BootError> {
    let selected = read_efivar(efivars, "LoaderEntrySelected");
    let count = read_efivar(efivars, "LoaderBootCountPath");
    match bless::decide(selected.as_deref(), count.as_deref()) {
        Decision::AlreadyBlessed => Ok(true),
        Decision::Refuse(why) => {
            say!("not blessing: {why}");
            Ok(false)
        }
        Decision::Rename { from, to } => {
            let (from, to) = (esp.join(&from), esp.join(&to));
            // The counted file is gone: blessed already in this boot (the
            // blessed name exists), or a count path that names nothing (not
            // ours to act on: refuse, don't fail the boot).
            if !from.exists() {
                if to.exists() {
                    return Ok(true);
                }
                say!("not blessing: {} does not exist", from.display());
                return Ok(false);
            }
            if to.exists() {
                say!("not blessing: {} already exists", to.display());
                return Ok(false);
            }
            fs::rename(&from, &to)
                .ctx(|| format!("renaming {} to {}", from.display(), to.display()))?;
            if let Some(d) = to.parent() {
                sync_dir(d).ctx(|| format!("syncing {}", d.display()))?;
            }
            sys::sync();
            say!("blessed {}", to.display());
            Ok(true)
        }
    }
}

pub fn mount_extras() {
    if Path::new(EFIVARS).is_dir() {
        if let Err(e) = sys::mount(
            "efivarfs",
            Path::new(EFIVARS),
            Some("efivarfs"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        ) {
            if e.raw_os_error() != Some(libc::EBUSY) {
                say!("efivarfs not mounted: {e} (boot blessing will be refused)");
            }
        }
    }
    // The lockdown level and the LSM list live here (crate::lsm). The
    // directory exists only when the kernel has securityfs.
    if Path::new(crate::lsm::SECURITYFS).is_dir() {
        if let Err(e) = sys::mount(
            "securityfs",
            Path::new(crate::lsm::SECURITYFS),
            Some("securityfs"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        ) {
            if e.raw_os_error() != Some(libc::EBUSY) {
                say!("securityfs not mounted: {e}");
            }
        }
    }
    // nosuid and nodev, but not noexec: with the root read-only for
    // services, /tmp is where one may unpack and run a helper.
    if Path::new("/tmp").is_dir() {
        let _ = sys::mount(
            "tmpfs",
            Path::new("/tmp"),
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777"),
        );
    }
}

pub enum Shutdown {
    Reboot,
    PowerOff,
}

/// Boots are recorded on EPHEMERAL too: the count shows on the console
/// that /var kept what earlier boots wrote (or that it was wiped).
const VAR_BOOTS: &str = "/var/log/cairn-boots";

fn note_var_boot(number: u64) -> std::io::Result<()> {
    let earlier = fs::read_to_string(VAR_BOOTS)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    fs::create_dir_all("/var/log")?;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(VAR_BOOTS)?;
    writeln!(f, "boot={number}")?;
    f.sync_all()?;
    say!("/var holds {earlier} earlier boot record(s)");
    Ok(())
}

pub fn run() -> Result<Shutdown, BootError> {
    crate::log::open_pid1();
    sys::disable_ctrl_alt_del();
    sys::block_signals();
    say!("stage 2 (cairn-init {})", env!("CARGO_PKG_VERSION"));
    mount_extras();
    for line in crate::lsm::report(Path::new(crate::lsm::SECURITYFS)) {
        say!("{line}");
    }
    // The command line the kernel booted with (signed inside the UKI): the
    // hardening parameters in it are checked from the console by e2e.
    if let Ok(c) = fs::read_to_string("/proc/cmdline") {
        say!("cmdline {}", c.trim());
    }
    // The hardening defaults go in before any disk is read; the machine
    // config's overrides once it is loaded.
    let mut sysctls = Sysctls::new(Path::new(sysctl::PROC_SYS));
    for m in sysctls.apply(contract::sysctl::defaults()) {
        say!("{m}");
    }
    crate::privs::share_mounts()
        .ctx(|| "making mounts shared (for services' namespaces)".into())?;
    // Each child gets its own; a service's self-report shows a different one.
    if let Ok(ns) = fs::read_link("/proc/self/ns/mnt") {
        say!("mount namespace {}", ns.display());
    }
    let hand_text = fs::read_to_string("/run/cairn/boot")
        .ctx(|| "reading /run/cairn/boot (written by stage 1)".into())?;
    let hand = Handover::parse(&hand_text)
        .ok_or_else(|| BootError::Stop(format!("/run/cairn/boot is malformed: {hand_text:?}")))?;
    let version = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| record::os_release_value(&t, "VERSION_ID"))
        .unwrap_or_else(|| "unknown".into());
    crate::ring::event(
        EventKind::Boot,
        None,
        format!("booting version {version} from slot {}", hand.slot()),
    );

    let disk_name = hand.disk.trim_start_matches("/dev/");
    let disk = disks::list(Path::new("/sys/block"))
        .into_iter()
        .find(|d| d.name == disk_name)
        .ok_or_else(|| {
            BootError::Stop(format!("boot disk {} vanished from /sys/block", hand.disk))
        })?;
    let read = disks::read_table(Path::new("/dev"), &disk)?;
    if let Some(note) = disks::backup_note(&disk.name, &read) {
        say!("{note}");
    }
    let table = read.layout;

    let mut mounted = vec![prepare(&disk, &table, contract::disk::STATE, STATE_DIR)?];
    let number = fs::read_to_string(BOOTS_LOG)
        .map(|t| record::next_boot_number(&t))
        .unwrap_or(1);
    *PENDING.lock().unwrap_or_else(|e| e.into_inner()) = Some(Pending {
        number,
        slot: hand.slot().into(),
        version: version.clone(),
    });
    mounted.push(prepare(
        &disk,
        &table,
        contract::disk::EPHEMERAL,
        contract::disk::EPHEMERAL_MOUNT,
    )?);
    note_var_boot(number).ctx(|| format!("appending to {VAR_BOOTS}"))?;
    let esp = mount_esp(&disk, &table)?;
    mounted.push(esp.clone());

    let cfg = load_config(Path::new(CONFIG), &esp.join(contract::esp::MACHINE_CONFIG))?;
    // The image's /etc/hostname names the node until the config does.
    let hostname = cfg.hostname.clone().or_else(|| {
        fs::read_to_string("/etc/hostname")
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|h| !h.is_empty())
    });
    if let Some(h) = &hostname {
        sys::sethostname(h).ctx(|| format!("setting hostname {h:?}"))?;
    }
    if let Some(l) = cfg.console_loglevel {
        fs::write("/proc/sys/kernel/printk", format!("{l}\n"))
            .ctx(|| "setting console_loglevel".into())?;
    }
    // Before the network, services and health checks: what they run under.
    let effective = contract::sysctl::effective(&cfg.sysctl);
    let overrides = effective
        .iter()
        .filter(|(n, _)| cfg.sysctl.contains_key(*n))
        .map(|(n, v)| (*n, v.as_str()));
    for m in sysctls.apply(overrides) {
        say!("{m}");
    }
    say!(
        "sysctl {}",
        sysctls.read_back(effective.iter().map(|(n, _)| *n))
    );

    // Beside the supervisor, never in its way: health and blessing do not
    // wait for a lease.
    crate::net::spawn(&cfg);

    // The node API (issue 14): cairnd is one more supervised service, given
    // its identity on /run; the control socket it talks to is served by
    // init's own threads. Neither is waited for, nor needed to bless.
    let mut services = cfg.services.clone();
    if let Some(api) = &cfg.api {
        match crate::api::write_secrets(
            api,
            Path::new(contract::api::SECRETS_DIR),
            (contract::api::UID, contract::api::GID),
        ) {
            Ok(()) => services.push(crate::api::service(api)),
            Err(e) => say!(
                "node API: writing its identity to {}: {e}; cairnd not started",
                contract::api::SECRETS_DIR
            ),
        }
    }
    crate::api::serve_control(
        crate::api::LiveNode {
            health: cfg.health.clone(),
            console: crate::log::console_writer(),
            disk: PathBuf::from(&hand.disk),
            running: version.clone(),
            state: PathBuf::from(STATE_DIR),
            work: Path::new(contract::disk::EPHEMERAL_MOUNT).join(contract::update::WORK_DIR),
        },
        crate::log::console_writer(),
    );
    let mut sup = Supervisor::new(services, Backoff::default(), crate::log::console_writer());
    sup.start_all(Instant::now());
    health::run_checks(&mut sup, &cfg.health, health::RETRY).map_err(BootError::Stop)?;

    let blessed = bless_boot(&esp, Path::new(EFIVARS))?;
    if let Err(e) = crate::update::record_failed_releases(&esp, Path::new(STATE_DIR), &version) {
        say!("recording failed releases in STATE: {e}");
    }
    let result = if blessed { "ok" } else { "ok (not blessed)" };
    PENDING.lock().unwrap_or_else(|e| e.into_inner()).take();
    append_boot_line(&record::boot_line(number, hand.slot(), &version, result))
        .ctx(|| format!("appending to {BOOTS_LOG}"))?;
    // The ESP is only needed for import and blessing; unmounted it cannot
    // be damaged by a power cut.
    if sys::umount(&esp).is_ok() {
        mounted.pop();
    }
    crate::status::start(crate::status::Node::booted(
        &version,
        hand.slot(),
        blessed,
        Path::new(&hand.disk),
        Path::new(STATE_DIR),
    ));
    let booted = if blessed {
        format!("boot ok slot={} version={version}", hand.slot())
    } else {
        format!(
            "boot healthy but not blessed slot={} version={version}",
            hand.slot()
        )
    };
    say!("{booted}");
    crate::ring::event(EventKind::Boot, None, booted);

    if let Some(u) = cfg.update.clone() {
        crate::update::Agent {
            cfg: u,
            disk: PathBuf::from(&hand.disk),
            running: version.clone(),
            state: PathBuf::from(STATE_DIR),
            work: Path::new(contract::disk::EPHEMERAL_MOUNT).join(contract::update::WORK_DIR),
        }
        .spawn();
    }

    let how = loop {
        let now = Instant::now();
        let wait = sup
            .next_deadline()
            .map_or(Duration::from_secs(60), |d| {
                d.saturating_duration_since(now)
            })
            .max(Duration::from_millis(10));
        match sys::wait_signal(wait) {
            Some(libc::SIGTERM) | Some(libc::SIGINT) => break Shutdown::Reboot,
            Some(libc::SIGUSR2) => break Shutdown::PowerOff,
            _ => {}
        }
        let now = Instant::now();
        for e in sup.reap(now) {
            if let crate::supervisor::Event::Orphan { pid, exit } = e {
                say!("reaped orphan {pid} ({exit})");
            }
        }
        sup.start_due(now);
    };
    let what = match how {
        Shutdown::Reboot => "reboot",
        Shutdown::PowerOff => "power off",
    };
    crate::ring::event(EventKind::Power, None, format!("shutting down ({what})"));
    say!("shutting down: stopping services");
    sup.stop_all(STOP_GRACE);
    // Whatever escaped its service's process group would keep /var busy.
    sys::kill_all(libc::SIGTERM, Duration::from_secs(3));
    sys::kill_all(libc::SIGKILL, Duration::from_secs(1));
    sys::sync();
    for m in mounted.iter().rev() {
        if let Err(e) = sys::umount(m) {
            say!("unmounting {}: {e}; remounting read-only", m.display());
            // A remount sets the per-mount flags anew: keep the data-only ones.
            let data_only = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            let _ = sys::mount(
                "none",
                m,
                None,
                libc::MS_REMOUNT | libc::MS_RDONLY | data_only,
                None,
            );
        }
    }
    sys::sync();
    Ok(how)
}

//! `install`: put a verified release on an empty disk.
//!
//! The story: verify the bundle completely; refuse unsafe targets; plan the
//! layout; write slot A (then reading it back against the manifest); zero the
//! start of STATE and EPHEMERAL so init formats them; build the ESP; write
//! the partition table last, so an interrupted install leaves a disk with no
//! partition table rather than a half-installed one that might boot.

use std::fmt;
use std::io::{Read, Seek, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use artifacts::fat::{self, FatFile, FatSource, FormatOptions};
use artifacts::gpt::{self, DiskLayout, Partition};
use signing::PublicKey;

use crate::blockdev::{hash_range, sha256, sync, write_at, zero_range, Disk};
use crate::bundle::{self, Bundle};
use crate::error::{fat as fat_err, Error, Result};
use crate::table;
use crate::verify::open_verified;
use contract::esp::{Counter, EntryName};

/// Tries a new UKI gets before systemd-boot falls back.
pub const TRIES: u32 = contract::esp::NEW_ENTRY_TRIES;
pub const LOADER_CONF: &[u8] = contract::esp::LOADER_CONF_TEXT.as_bytes();
pub use contract::esp::MACHINE_CONFIG;
/// How much of STATE and EPHEMERAL is zeroed (the format rule's window).
pub const ZEROED: u64 = 1 << 20;

#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    pub disk: PathBuf,
    pub bundle: PathBuf,
    pub trusted: Vec<PublicKey>,
    pub machine_config: Option<PathBuf>,
    /// Paths that are the install media (never a target).
    pub media: Vec<PathBuf>,
    pub wipe: bool,
    pub dry_run: bool,
    /// Where to read systemd-boot's `LoaderDevicePartUUID` (the partition
    /// the installer booted from); `None` for the efivarfs path.
    pub loader_device_var: Option<PathBuf>,
}

/// What an install will do; printed by `--dry-run`.
#[derive(Debug, Clone)]
pub struct InstallPlan {
    pub disk: PathBuf,
    pub disk_size: u64,
    pub version: String,
    pub layout: DiskLayout,
    pub uki_name: String,
    pub rootfs_size: u64,
    /// What the probe found on the disk, which the install destroys
    /// (empty: the disk is blank, see [`crate::probe`]).
    pub destroys: Vec<String>,
    /// Byte ranges zeroed before anything else is written (only when
    /// something was found, so only with `--wipe`).
    pub wipe: Vec<Range<u64>>,
    pub machine_config: Option<PathBuf>,
}

impl fmt::Display for InstallPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "install cairn {} on {} ({} bytes)",
            self.version,
            self.disk.display(),
            self.disk_size
        )?;
        if self.destroys.is_empty() {
            writeln!(
                f,
                "destroys: nothing found on the disk (its first and last MiB are zero)"
            )?;
        } else {
            writeln!(f, "destroys: {}", self.destroys.join("; "))?;
        }
        for r in &self.wipe {
            writeln!(f, "0. zero bytes {}..{} (--wipe)", r.start, r.end)?;
        }
        let p = |name: &str| self.layout.partition(name).expect("cairn layout");
        let a = p(contract::disk::BOOT_A);
        writeln!(
            f,
            "1. BOOT-A at {}: rootfs.img, {} bytes, then read back",
            a.offset(),
            self.rootfs_size
        )?;
        for name in [contract::disk::STATE, contract::disk::EPHEMERAL] {
            writeln!(
                f,
                "2. {name} at {}: zero the first {ZEROED} bytes",
                p(name).offset()
            )?;
        }
        let esp = p(contract::disk::EFI);
        write!(
            f,
            "3. EFI at {} ({} bytes): FAT32 with EFI/BOOT/BOOTX64.EFI, loader/loader.conf, EFI/Linux/{}",
            esp.offset(),
            esp.size_bytes(),
            self.uki_name
        )?;
        if let Some(c) = &self.machine_config {
            write!(f, ", {MACHINE_CONFIG} from {}", c.display())?;
        }
        writeln!(f)?;
        writeln!(f, "4. GPT (written last):")?;
        for part in &self.layout.partitions {
            writeln!(
                f,
                "   {:<9} {:>12} bytes at {:>12}  PARTUUID {}",
                part.name,
                part.size_bytes(),
                part.offset(),
                part.guid
            )?;
        }
        Ok(())
    }
}

/// What a finished install did.
#[derive(Debug, Clone)]
pub struct InstallReport {
    pub plan: InstallPlan,
    /// False for `--dry-run`.
    pub written: bool,
}

/// Verifies the bundle, checks the disk, and installs (or only plans, with
/// `dry_run`).
pub fn install(opts: &InstallOptions) -> Result<InstallReport> {
    let bundle = open_verified(&opts.bundle, &opts.trusted)?;
    let mut disk = Disk::open(&opts.disk, !opts.dry_run)?;
    refuse_install_media(&disk, &opts.bundle, &opts.media)?;
    refuse_boot_disk(&mut disk, opts)?;
    if let Some(c) = &opts.machine_config {
        check_machine_config(c)?;
    }
    let plan = plan(&bundle, &opts.disk, disk.size, &mut disk, opts)?;
    // The blank rule (crate::probe): anything found, recognised or not,
    // is refused unless the caller said --wipe. Nothing was written yet.
    if !plan.destroys.is_empty() && !opts.wipe {
        return Err(Error::NotEmpty {
            path: opts.disk.clone(),
            found: plan.destroys.join("; "),
        });
    }
    if opts.dry_run {
        return Ok(InstallReport {
            plan,
            written: false,
        });
    }
    install_to(&mut disk, &bundle, &plan)?;
    Ok(InstallReport {
        plan,
        written: true,
    })
}

/// Install mode on the live media (init, `cairn.mode=install`): the bundle
/// is `payload` (design.md "Install media"; it must hold every artifact the
/// manifest lists), trusted keys are `payload/keys/*.pub`, the machine
/// config `payload/machine.toml` when present. Scratch files for the
/// partition table go to `$TMPDIR` (default `/tmp`), which must be writable.
pub fn install_payload(payload: &Path, disk: &Path, wipe: bool) -> Result<InstallReport> {
    install_payload_with(payload, disk, wipe, None)
}

/// [`install_payload`] with `machine_config` (when given) in place of the
/// payload's own: install settings on the media (contract::install) may
/// carry one. It is checked exactly as the payload's would be.
pub fn install_payload_with(
    payload: &Path,
    disk: &Path,
    wipe: bool,
    machine_config: Option<&Path>,
) -> Result<InstallReport> {
    let keys = payload.join(contract::bundle::PAYLOAD_KEYS);
    let trusted = signing::load_trusted_dir(&keys).map_err(|source| Error::Key {
        path: keys.clone(),
        source,
    })?;
    let config = payload.join(contract::bundle::PAYLOAD_MACHINE_CONFIG);
    install(&InstallOptions {
        disk: disk.to_path_buf(),
        bundle: payload.to_path_buf(),
        trusted,
        machine_config: match machine_config {
            Some(c) => Some(c.to_path_buf()),
            None => config.is_file().then_some(config),
        },
        wipe,
        ..Default::default()
    })
}

/// The disk must not be (or hold) the bundle or any install media path.
fn refuse_install_media(disk: &Disk, bundle: &Path, media: &[PathBuf]) -> Result<()> {
    for m in std::iter::once(&bundle.to_path_buf()).chain(media) {
        if disk.contains(m)? {
            return Err(Error::IsInstallMedia {
                disk: disk.path.clone(),
                media: m.clone(),
            });
        }
    }
    Ok(())
}

/// init imports the machine config on first boot and refuses one its parser
/// rejects (a typo would otherwise reboot-loop a fresh install with no
/// release to fall back to): the same parser refuses it here, before
/// anything is written.
fn check_machine_config(path: &Path) -> Result<()> {
    contract::machine::MachineConfig::load(path)
        .map(|_| ())
        .map_err(|e| Error::MachineConfig {
            path: path.to_path_buf(),
            what: e.to_string(),
        })
}

/// Detects the install media without being told: a disk whose partition
/// table holds the partition systemd-boot loaded the installer from.
fn refuse_boot_disk(disk: &mut Disk, opts: &InstallOptions) -> Result<()> {
    let var = opts
        .loader_device_var
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::blockdev::LOADER_DEVICE_VAR));
    let Some(boot) = crate::blockdev::loader_device_partuuid(&var) else {
        return Ok(());
    };
    if let Ok(read) = gpt::read_disk(disk) {
        if let Some(p) = read.layout.partitions.iter().find(|p| p.guid == boot) {
            return Err(Error::IsInstallMedia {
                disk: disk.path.clone(),
                media: PathBuf::from(format!(
                    "partition {} (PARTUUID {boot}, the installer's boot partition per {})",
                    p.name,
                    var.display()
                )),
            });
        }
    }
    Ok(())
}

/// Seed for every derived GUID and the ESP volume id: the release and the
/// disk size, so reinstalling the same release on the same disk is
/// bit-identical.
fn seed(bundle: &Bundle, disk_size: u64) -> [u8; 32] {
    sha256(&[
        b"cairn-install-v1\0",
        &bundle.manifest_bytes,
        &disk_size.to_le_bytes(),
    ])
}

fn plan<D: Read + Seek>(
    bundle: &Bundle,
    path: &Path,
    size: u64,
    d: &mut D,
    opts: &InstallOptions,
) -> Result<InstallPlan> {
    let needed = bundle.layout.min_disk_size();
    if size < needed {
        return Err(Error::DiskTooSmall {
            path: path.to_path_buf(),
            size,
            needed,
            needed_mib: needed.div_ceil(1 << 20),
        });
    }
    let slot_a = contract::disk::slot_partuuid_of_hex(&bundle.uki.root_hash)
        .expect("verified as 64 hex digits");
    let layout = bundle
        .layout
        .disk_layout(size, &seed(bundle, size), slot_a)
        .map_err(|e| Error::Bundle {
            path: bundle.dir.clone(),
            what: e.to_string(),
        })?;
    let found = crate::probe::probe(d, size)?;
    Ok(InstallPlan {
        disk: path.to_path_buf(),
        disk_size: size,
        version: bundle.version(),
        layout,
        uki_name: EntryName::new(
            &bundle.entry_base(),
            Some(Counter {
                left: TRIES,
                done: 0,
            }),
        )
        .file_name(),
        rootfs_size: bundle.artifact(bundle::ROOTFS).size,
        destroys: found.describe(),
        wipe: found.wipe_ranges(size),
        machine_config: opts.machine_config.clone(),
    })
}

/// Writes the planned install. On any failure the partition table is
/// cleared and the error says which step failed.
pub fn install_to<D: Read + Write + Seek>(
    d: &mut D,
    bundle: &Bundle,
    plan: &InstallPlan,
) -> Result<()> {
    let mut step = "";
    let result = (|| {
        let part = |name: &str| plan.layout.partition(name).expect("cairn layout").clone();
        if !plan.wipe.is_empty() {
            // An old table must not outlive a failed install (it would point
            // at partitions this install is overwriting), and no old
            // signature may outlive a good one: udev, LVM or md would find
            // it beside the new table. The ranges cover both GPT copies.
            step = "wiping the old partition table and signatures";
            for r in &plan.wipe {
                zero_range(d, r.start, r.end - r.start, "the old signatures")?;
            }
            sync(d, "wiping the old signatures")?;
        }
        step = "writing slot A";
        write_slot(d, bundle, &part(contract::disk::BOOT_A))?;
        step = "zeroing the start of STATE and EPHEMERAL";
        for name in [contract::disk::STATE, contract::disk::EPHEMERAL] {
            let p = part(name);
            zero_range(d, p.offset(), ZEROED.min(p.size_bytes()), name)?;
        }
        sync(d, "zeroing STATE and EPHEMERAL")?;
        step = "building the ESP";
        write_esp(d, bundle, plan, &part(contract::disk::EFI))?;
        step = "writing the partition table";
        table::write_new(d, &plan.layout)
    })();
    result.map_err(|e| {
        let cleanup = match table::clear(d) {
            Ok(()) => "the partition table was cleared, so the disk is plainly not bootable".into(),
            Err(c) => format!(
                "clearing the partition table failed too ({c}): do not boot this disk, install again"
            ),
        };
        Error::InstallAborted {
            step: step.to_string(),
            source: Box::new(e),
            cleanup,
        }
    })
}

/// Copies rootfs.img into `part`, then reads the written range back; its
/// sha256 must be the signed manifest's.
///
/// The source is not hashed on the way in: open_verified hashed it before
/// any write, and the read-back after the barrier is what decides. It checks
/// the bytes the slot holds, so a rootfs.img changed since verification
/// fails it just as a bad disk does; only then is the source hashed again,
/// to say which of the two it was. One pass over the data fewer than hashing
/// while streaming, with the same guarantee before anything points at the
/// slot.
pub(crate) fn write_slot<D: Read + Write + Seek>(
    d: &mut D,
    bundle: &Bundle,
    part: &Partition,
) -> Result<()> {
    let art = bundle.artifact(bundle::ROOTFS).clone();
    if art.size > part.size_bytes() {
        return Err(Error::DoesNotFit {
            what: format!("rootfs.img ({} bytes)", art.size),
            partition: part.name.clone(),
            need: art.size,
            have: part.size_bytes(),
        });
    }
    let path = bundle.path(bundle::ROOTFS);
    let streamed = bundle.rootfs_stream.as_ref();
    let source_name = match streamed {
        Some(_) => PathBuf::from(format!("{} (streamed)", path.display())),
        None => path.clone(),
    };
    let read_err = |source| Error::File {
        what: "reading",
        path: source_name.clone(),
        source,
    };
    // A streamed rootfs (a registry blob) is read once, straight into the
    // slot; its reader fails on a wrong size or digest.
    let mut src: Box<dyn Read + Send> = match streamed {
        Some(s) => s
            .take()
            .ok_or_else(|| changed(bundle, "its stream was already read".into()))?,
        None => Box::new(std::fs::File::open(&path).map_err(|source| Error::File {
            what: "opening",
            path: path.clone(),
            source,
        })?),
    };
    let mut buf = vec![0u8; WRITE_CHUNK];
    let mut done = 0u64;
    while done < art.size {
        let want = (art.size - done).min(WRITE_CHUNK as u64) as usize;
        let n = src.read(&mut buf[..want]).map_err(read_err)?;
        if n == 0 {
            break;
        }
        write_at(d, part.offset() + done, &buf[..n], &part.name)?;
        done += n as u64;
    }
    // Grown is refused too: its signed prefix would fit, but it is no longer
    // the file that was verified.
    let longer = src.read(&mut buf[..1]).map_err(read_err)? > 0;
    if done != art.size || longer {
        return Err(changed(
            bundle,
            format!(
                "it gave {}{} bytes, the manifest lists {}",
                if longer { "more than " } else { "" },
                done,
                art.size
            ),
        ));
    }
    sync(d, &format!("writing {}", part.name))?;
    let back = hash_range(
        d,
        part.offset(),
        art.size,
        &format!("{} (read-back)", part.name),
    )?;
    if back != art.digest() {
        if streamed.is_none() {
            if let Ok((size, now)) = signing::hash_file(&path) {
                if (size, now) != (art.size, art.digest()) {
                    return Err(changed(bundle, format!("its sha256 is now {now}")));
                }
            }
        }
        return Err(Error::ReadBack {
            partition: part.name.clone(),
            offset: part.offset(),
            len: art.size,
            expected: art.digest().to_hex(),
            actual: back.to_hex(),
        });
    }
    if streamed.is_some() {
        // open_verified checks this in the file; a stream is checked in the
        // slot, now that the slot holds exactly the signed bytes.
        let sb = crate::verify::superblock_offset(&bundle.uki);
        let mut magic = [0u8; 8];
        crate::blockdev::read_at(d, part.offset() + sb, &mut magic, &part.name)?;
        if &magic != b"verity\0\0" {
            return Err(Error::Bundle {
                path: bundle.origin.clone(),
                what: format!(
                    "rootfs.img has no verity superblock at offset {sb} (after {} data blocks)",
                    bundle.uki.data_blocks
                ),
            });
        }
    }
    Ok(())
}

/// Slot writes: large enough that syscalls do not count, small enough to
/// keep the installer's memory flat (it also runs from the install media).
const WRITE_CHUNK: usize = 4 << 20;

fn changed(bundle: &Bundle, what: String) -> Error {
    Error::Bundle {
        path: bundle.origin.clone(),
        what: format!("rootfs.img changed after verification: {what}"),
    }
}

fn write_esp<D: Read + Write + Seek>(
    d: &mut D,
    bundle: &Bundle,
    plan: &InstallPlan,
    esp: &Partition,
) -> Result<()> {
    let mut files = vec![
        FatFile {
            path: crate::bootmodel::LOADER.into(),
            source: FatSource::Host(bundle.path(bundle::BOOTLOADER)),
        },
        FatFile {
            path: contract::esp::LOADER_CONF.into(),
            source: FatSource::Bytes(LOADER_CONF.to_vec()),
        },
        FatFile {
            path: format!("{}/{}", crate::bootmodel::ENTRY_DIR, plan.uki_name),
            source: FatSource::Host(bundle.path(bundle::UKI)),
        },
    ];
    if let Some(c) = &plan.machine_config {
        let bytes = std::fs::read(c).map_err(|source| Error::File {
            what: "reading machine config",
            path: c.clone(),
            source,
        })?;
        files.push(FatFile {
            path: MACHINE_CONFIG.into(),
            source: FatSource::Bytes(bytes),
        });
    }
    let opts = FormatOptions {
        size: esp.size_bytes(),
        label: "EFI".into(),
        seed: seed(bundle, plan.disk_size).to_vec(),
        epoch: bundle.manifest.source_date_epoch,
    };
    fat::format(d, esp.offset(), &opts, &files).map_err(fat_err(format!(
        "formatting the ESP at offset {}",
        esp.offset()
    )))?;
    // The UKIs on the ESP were read from host files: check they are the
    // verified bytes before the table makes the disk bootable.
    let mut vol = fat::Fat32::open(&mut *d, esp.offset(), esp.size_bytes())
        .map_err(fat_err("reopening the new ESP"))?;
    for (path, name) in [
        (
            format!("{}/{}", contract::esp::ENTRY_DIR, plan.uki_name),
            bundle::UKI,
        ),
        (crate::bootmodel::LOADER.to_string(), bundle::BOOTLOADER),
    ] {
        let bytes = vol
            .read_file(&path)
            .map_err(fat_err(format!("reading back {path}")))?;
        let art = bundle.artifact(name);
        let got = signing::Sha256Digest::of(&bytes);
        if got != art.digest() || bytes.len() as u64 != art.size {
            return Err(Error::ReadBack {
                partition: format!("EFI ({path})"),
                offset: esp.offset(),
                len: bytes.len() as u64,
                expected: art.digest().to_hex(),
                actual: got.to_hex(),
            });
        }
    }
    sync(d, "building the ESP")
}

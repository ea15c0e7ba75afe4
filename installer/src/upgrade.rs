//! `upgrade`: write a new release into the inactive slot and make it the
//! next boot, keeping the running release as systemd-boot's fallback.
//!
//! Crash-safe order (each step ends with a barrier); after a cut at any
//! point the disk boots the old release or the new one:
//! 1. remove UKIs that point at the inactive slot (and stale `.tmp` files):
//!    the loader can no longer reach the slot about to be overwritten;
//! 2. write the inactive slot, read it back;
//! 3. set the slot's PARTUUID to the new root hash (backup GPT, then primary);
//! 4. write the new UKI as `EFI/Linux/cairn-<v>+3.tmp` (outside the loader's
//!    `*.efi` pattern);
//! 5. rename it to `cairn-<v>+3.efi`: one directory-entry write makes it
//!    visible, and its higher version makes it preferred.

use std::cmp::Ordering;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use artifacts::fat::Fat32;
use artifacts::gpt::Guid;
use signing::PublicKey;

use crate::blockdev::{sync, Disk};
use crate::bootmodel::{compare, entry_name, BootModel, Counter, ENTRY_DIR};
use crate::bundle::{self, Bundle};
use crate::error::{fat, gpt as gpt_err, Error, Result};
use crate::install::{write_slot, TRIES};
use crate::status::DiskState;
use crate::table;
use crate::verify::open_verified;

#[derive(Debug, Clone, Default)]
pub struct UpgradeOptions {
    pub disk: PathBuf,
    pub bundle: PathBuf,
    pub trusted: Vec<PublicKey>,
    pub allow_downgrade: bool,
    pub dry_run: bool,
}

/// What an upgrade did (or, for a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradePlan {
    pub running_version: String,
    pub running_slot: String,
    pub target_slot: String,
    pub new_version: String,
    /// UKIs removed in step 1.
    pub removes: Vec<String>,
    pub new_uki: String,
}

impl std::fmt::Display for UpgradePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "upgrade {} ({}) -> {} into {}",
            self.running_version, self.running_slot, self.new_version, self.target_slot
        )?;
        writeln!(
            f,
            "1. remove {}",
            if self.removes.is_empty() {
                "nothing".into()
            } else {
                self.removes.join(", ")
            }
        )?;
        writeln!(
            f,
            "2. write rootfs.img to {} and read it back",
            self.target_slot
        )?;
        writeln!(
            f,
            "3. set {}'s PARTUUID to the new root hash",
            self.target_slot
        )?;
        writeln!(
            f,
            "4. write {ENTRY_DIR}/{}",
            self.new_uki.replace(".efi", ".tmp")
        )?;
        writeln!(f, "5. rename it to {}", self.new_uki)
    }
}

pub fn upgrade(opts: &UpgradeOptions) -> Result<UpgradePlan> {
    let bundle = open_verified(&opts.bundle, &opts.trusted)?;
    let mut disk = Disk::open(&opts.disk, !opts.dry_run)?;
    if disk.contains(&opts.bundle)? {
        return Err(Error::IsInstallMedia {
            disk: opts.disk.clone(),
            media: opts.bundle.clone(),
        });
    }
    let path = disk.path.clone();
    if opts.dry_run {
        let mut ro = crate::status::ReadOnly(&mut disk);
        let state = DiskState::read(&mut ro, &path)?;
        return plan(&state, &bundle, opts.allow_downgrade, &path);
    }
    upgrade_disk(&mut disk, &path, &bundle, opts.allow_downgrade)
}

/// Compares release versions as semver when both parse, else as systemd-boot
/// would.
fn compare_versions(a: &str, b: &str) -> Ordering {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => uapi_version::strverscmp(a, b),
    }
}

fn plan(
    state: &DiskState,
    bundle: &Bundle,
    allow_downgrade: bool,
    path: &Path,
) -> Result<UpgradePlan> {
    let active = state.active().ok_or_else(|| Error::Boot {
        path: path.to_path_buf(),
        what: "no UKI on the ESP points at BOOT-A or BOOT-B, so there is no running release to keep as fallback".into(),
    })?;
    let running = active.entry.version.clone().unwrap_or_default();
    let new = bundle.version();
    let target = state.other(active.slot);
    let removes: Vec<String> = state
        .model
        .entries
        .iter()
        .filter(|e| state.slot_of(e).is_some_and(|s| s.slot == target.slot))
        .map(|e| e.file.clone())
        .collect();
    let base = bundle.entry_base();
    if let Some(e) = state
        .model
        .entries
        .iter()
        .find(|e| e.base == base && !removes.contains(&e.file))
    {
        return Err(Error::SameVersion {
            version: new,
            file: e.file.clone(),
        });
    }
    // Checked after "same version" so re-running a finished upgrade says
    // it is already there rather than calling it a downgrade.
    if compare_versions(&new, &running) != Ordering::Greater && !allow_downgrade {
        return Err(Error::Downgrade { new, running });
    }
    if active.slot.guid.to_string() == root_guid(bundle)?.to_string() {
        return Err(Error::SameVersion {
            version: new,
            file: format!("the rootfs already in {}", active.slot.name),
        });
    }
    if bundle.artifact(bundle::ROOTFS).size > target.size_bytes() {
        return Err(Error::DoesNotFit {
            what: "rootfs.img".into(),
            partition: target.name.clone(),
            need: bundle.artifact(bundle::ROOTFS).size,
            have: target.size_bytes(),
        });
    }
    Ok(UpgradePlan {
        running_version: running,
        running_slot: active.slot.name.clone(),
        target_slot: target.name.clone(),
        new_version: new,
        removes,
        new_uki: entry_name(
            &base,
            Some(Counter {
                left: TRIES,
                done: 0,
            }),
        ),
    })
}

fn root_guid(bundle: &Bundle) -> Result<Guid> {
    let root = hex::decode(&bundle.uki.root_hash).expect("verified as 64 hex digits");
    Guid::from_root_hash(&root).map_err(gpt_err("deriving the slot GUID from the root hash"))
}

fn open_esp<'d, D: Read + Write + Seek>(
    d: &'d mut D,
    state: &DiskState,
    epoch: u64,
) -> Result<Fat32<&'d mut D>> {
    let mut v = Fat32::open(d, state.esp.offset(), state.esp.size_bytes()).map_err(fat(
        format!("opening the ESP at offset {}", state.esp.offset()),
    ))?;
    v.set_epoch(epoch);
    Ok(v)
}

/// The upgrade on an open disk (any `Read + Write + Seek`; `flush` is the
/// barrier).
pub fn upgrade_disk<D: Read + Write + Seek>(
    d: &mut D,
    path: &Path,
    bundle: &Bundle,
    allow_downgrade: bool,
) -> Result<UpgradePlan> {
    let state = DiskState::read(d, path)?;
    let plan = plan(&state, bundle, allow_downgrade, path)?;
    let target = state
        .slots
        .iter()
        .find(|s| s.name == plan.target_slot)
        .expect("plan names a slot")
        .clone();
    let epoch = bundle.manifest.source_date_epoch;

    // 1. Nothing the loader can reach may point at the slot we overwrite.
    {
        let mut esp = open_esp(d, &state, epoch)?;
        let stale_tmp: Vec<String> = esp
            .list(ENTRY_DIR)
            .map_err(fat(format!("listing {ENTRY_DIR}")))?
            .into_iter()
            .filter(|e| !e.is_dir && e.name.to_ascii_lowercase().ends_with(".tmp"))
            .map(|e| e.name)
            .collect();
        for name in plan.removes.iter().chain(&stale_tmp) {
            esp.remove_file(&format!("{ENTRY_DIR}/{name}"))
                .map_err(fat(format!("removing {ENTRY_DIR}/{name}")))?;
        }
        esp.flush()
            .map_err(fat("syncing the ESP after removing stale UKIs"))?;
    }
    // 2. The release data, verified on the way in and read back.
    write_slot(d, bundle, &target)?;
    // 3. init finds the slot by root hash.
    table::set_partition_guid(d, target.slot, root_guid(bundle)?)?;
    // 4. + 5. The UKI appears under its loader-visible name in one write.
    let tmp = format!("{ENTRY_DIR}/{}", plan.new_uki.replace(".efi", ".tmp"));
    let uki_path = bundle.path(bundle::UKI);
    let uki = std::fs::read(&uki_path).map_err(|source| Error::File {
        what: "reading",
        path: uki_path,
        source,
    })?;
    let art = bundle.artifact(bundle::UKI);
    if signing::Sha256Digest::of(&uki) != art.digest() {
        return Err(Error::Bundle {
            path: bundle.origin.clone(),
            what: "uki.efi changed after verification".into(),
        });
    }
    let mut esp = open_esp(d, &state, epoch)?;
    esp.create_dir_all(ENTRY_DIR)
        .map_err(fat(format!("creating {ENTRY_DIR}")))?;
    esp.write_file(&tmp, &uki)
        .map_err(fat(format!("writing {tmp}")))?;
    esp.flush().map_err(fat(format!("syncing {tmp}")))?;
    let back = esp
        .read_file(&tmp)
        .map_err(fat(format!("reading back {tmp}")))?;
    if back != uki {
        return Err(Error::ReadBack {
            partition: format!("EFI ({tmp})"),
            offset: state.esp.offset(),
            len: uki.len() as u64,
            expected: art.digest().to_hex(),
            actual: signing::Sha256Digest::of(&back).to_hex(),
        });
    }
    esp.rename(&tmp, &plan.new_uki)
        .map_err(fat(format!("renaming {tmp} to {}", plan.new_uki)))?;
    esp.flush()
        .map_err(fat("syncing the ESP after the rename"))?;
    // A downgrade sorts below the running release: demote whatever sorts
    // first to its exhausted name (as rollback does) so the new release
    // boots next; the demoted entries stay as last-resort fallbacks.
    let model = BootModel::read(&mut esp)?;
    if let Some(new) = model.entries.iter().find(|e| e.file == plan.new_uki) {
        for e in model.entries.iter().filter(|e| compare(e, new).is_lt()) {
            let done = e.counter.map_or(0, |c| c.done);
            let to = entry_name(&e.base, Some(Counter { left: 0, done }));
            esp.rename(&format!("{ENTRY_DIR}/{}", e.file), &to)
                .map_err(fat(format!("demoting {} to {to}", e.file)))?;
            esp.flush()
                .map_err(fat(format!("syncing after renaming {}", e.file)))?;
        }
    }
    drop(esp);
    sync(d, "the upgrade")?;
    Ok(plan)
}

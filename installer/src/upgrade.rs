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
//!    `*.efi` pattern), its entry placed for systemd-boot's counting
//!    renames (see "Placement" below);
//! 5. rename it to `cairn-<v>+3.efi`: one directory-entry write makes it
//!    visible, and its higher version makes it preferred;
//! 6. if the bundle's systemd-boot differs from `EFI/BOOT/BOOTX64.EFI`,
//!    replace it ([`Fat32::replace_file`]): the new loader goes into free
//!    clusters and both FATs (barrier), then its one directory entry is
//!    rewritten to point at them (a single-sector write; barrier), then the
//!    old clusters are freed (barrier). At every point the entry names one
//!    complete loader, old or new; a cut only leaks clusters. It comes last
//!    so the loader changes only once the release it must boot is in place;
//!    either loader boots either UKI. A re-run after a cut here finds the
//!    release installed and finishes just this step.
//!
//! Placement. systemd-boot counts a try by renaming `cairn-<v>+3.efi` to
//! `+2-1`, `+1-2`, `+0-3`; EDK2's FAT driver makes each rename by marking
//! the old entry set deleted and writing the new one at the directory's end
//! (after the last used or deleted slot), through a write-back cache, so a
//! power cut may keep either write without the other: the file under two
//! names (systemd-boot's next rename is refused and the release boots
//! uncounted for ever: a bad one never falls back) or under none. A device
//! writes a 512-byte sector (16 slots) whole or not at all, so a rename
//! whose deletion and append share one sector cannot split. Step 4
//! therefore puts the new entry set last in `EFI/Linux`, at the first slot
//! after the live entries from which it and the three sets its renames will
//! append (12 slots for a version of up to 12 characters, up to 16 for 25)
//! lie in one sector, the slots skipped written as deleted entries, which
//! EDK2 steps over ([`Fat32::write_file_appended`]). The `.tmp` -> `.efi`
//! rename keeps the set in place (same length).
//!
//! A never-blessed running release kept as fallback (counter still on: an
//! upgrade made offline before it ever booted) cannot be made safe as well:
//! its rename appends after the new release's three, so its own set, the new
//! one's four and its append would have to share one sector: 18 slots > 16.
//! Worse, placing the new entry in a later sector makes that release's own
//! rename cross sectors while the new UKI is still a `.tmp` (a cut after
//! step 4, then one in that rename, leaves no boot entry at all). So from
//! a never-blessed release step 4 keeps the first free slots, right after
//! it on a fresh install: its renames before step 5 and the new release's
//! first two stay in one sector, the new one's third and its own fallback
//! rename do not; the plan warns. A live upgrade (init, issue 13) always
//! runs from a blessed release, which systemd-boot never renames.
//!
//! Bound. The installer never moves a live entry: a move writes the entry
//! twice (two names sharing clusters until the old one is deleted), unless
//! both lie in one sector, which is the case that needs no move. So step 1
//! zeroes the deleted slots after the last live entry
//! ([`Fat32::reserve_entries`]) and step 4 pads at most 15 slots past it.
//! A blessed release's entry was last renamed by Linux (init's blessing),
//! whose vfat driver takes the first free run of slots, so it sits low and
//! the placement stays in the directory's first two sectors (an upgrade
//! without a boot in between runs from the same blessed release and
//! replaces the unbooted one; from a never-blessed one nothing is placed,
//! see above). Should a live entry still sit high, past [`PLACEMENT_LIMIT`]
//! slots step 4 falls back to the first free slots (the renames are then
//! not atomic, and the plan says so), which puts the entry low again.

use std::cmp::Ordering;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use artifacts::fat::{entry_slots, Fat32, SECTOR_SLOTS};
use artifacts::gpt::Guid;
use signing::PublicKey;

use crate::blockdev::{sync, Disk};
use crate::bootmodel::{compare, BootModel, Counter, ENTRY_DIR, LOADER};
use crate::bundle::{self, Bundle};
use crate::error::{fat, gpt as gpt_err, Error, Result};
use crate::install::{write_slot, TRIES};
use crate::status::DiskState;
use crate::table;
use crate::verify::{open_verified, read_verified};
use contract::esp::EntryName;

/// Directory slots kept free at the end of `EFI/Linux`: each boot-counting
/// rename appends up to 3 (two long-name entries and the short one); step
/// 4's placement pads at most 15 before the new entry; so the new release's
/// entry and three renames, the old one's fallback renames and the padding
/// (15 + 12 + 12), with room to spare.
pub const ENTRY_RESERVE: usize = 64;

/// Step 4 places the new entry for atomic counting renames only while its
/// renames end within this many slots of `EFI/Linux` (see the module docs'
/// "Bound"): 4 sectors, so with [`ENTRY_RESERVE`] the directory never
/// needs more than 128 slots (4 KiB).
pub const PLACEMENT_LIMIT: usize = 4 * SECTOR_SLOTS;

/// Where step 4 puts the new entry in `EFI/Linux`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// First directory slot of the new entry set when `atomic`; else the
    /// slot an atomic placement would have needed, past the limit (the set
    /// then goes in the directory's first free slots).
    pub slot: usize,
    /// Slots of the set and of the three its counting renames append.
    pub span: usize,
    /// All of them lie in one 512-byte sector: no counting rename can be
    /// split by a power cut.
    pub atomic: bool,
}

#[derive(Debug, Clone, Default)]
pub struct UpgradeOptions {
    pub disk: PathBuf,
    pub bundle: PathBuf,
    pub trusted: Vec<PublicKey>,
    pub allow_downgrade: bool,
    /// Replace systemd-boot even when its Secure Boot signer changes (after
    /// the new certificate was enrolled in the firmware's db).
    pub replace_loader: bool,
    pub dry_run: bool,
    /// `disk` is the one the running system booted from: open it without
    /// `O_EXCL` and hold the ESP and the inactive slot exclusively instead
    /// ([`Disk::open_live`], [`Disk::claim`]).
    pub live: bool,
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
    /// Step 6: the bundle's systemd-boot differs from the ESP's and replaces it.
    pub update_loader: bool,
    /// Step 6: why a differing systemd-boot is kept (a Secure Boot signer
    /// change the firmware may not trust).
    pub loader_kept: Option<String>,
    /// Step 4's placement of the new entry; None until step 1 has run (a
    /// dry run): step 1's removals decide where the live entries end.
    pub placement: Option<Placement>,
    /// The running release stays as fallback with its boot counter still
    /// on (it never booted to a blessing): its first fallback boot's
    /// rename can be split by a power cut (module docs, "Placement").
    pub fallback_unblessed: bool,
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
        match self.placement {
            None => writeln!(
                f,
                "   placed after the live entries so that its counting renames share one sector \
                 (decided after step 1)"
            )?,
            Some(p) if p.atomic => writeln!(
                f,
                "   at slot {}: its counting renames stay in one sector",
                p.slot
            )?,
            Some(_) if self.fallback_unblessed => writeln!(
                f,
                "   in the first free slots, next to {}'s entry (see the warning below)",
                self.running_version
            )?,
            Some(p) => writeln!(
                f,
                "   in the first free slots: warning: its counting renames ({} slots from slot {}) \
                 do not fit one sector within the first {PLACEMENT_LIMIT}; a power cut during one \
                 may leave it uncounted",
                p.span, p.slot
            )?,
        }
        writeln!(f, "5. rename it to {}", self.new_uki)?;
        if self.update_loader {
            writeln!(f, "6. replace {LOADER} with the bundle's systemd-boot")?;
        } else if let Some(why) = &self.loader_kept {
            writeln!(f, "6. keep {LOADER}: {why}")?;
        } else {
            writeln!(
                f,
                "6. keep {LOADER}: it already is the bundle's systemd-boot"
            )?;
        }
        if self.fallback_unblessed {
            writeln!(
                f,
                "warning: {} never booted to a blessing; it stays as the fallback, but a power cut \
                 during its first fallback boot may leave it unbootable. Boot it once first if you can",
                self.running_version
            )?;
        }
        Ok(())
    }
}

pub fn upgrade(opts: &UpgradeOptions) -> Result<UpgradePlan> {
    let bundle = open_verified(&opts.bundle, &opts.trusted)?;
    let mut disk = if opts.live && !opts.dry_run {
        Disk::open_live(&opts.disk)?
    } else {
        Disk::open(&opts.disk, !opts.dry_run)?
    };
    // Live, the bundle may well sit on this disk (EPHEMERAL): what matters is
    // that it is on nothing the upgrade writes, and the claims below fail if
    // a filesystem holding it is mounted from the ESP or the inactive slot.
    if !opts.live && disk.contains(&opts.bundle)? {
        return Err(Error::IsInstallMedia {
            disk: opts.disk.clone(),
            media: opts.bundle.clone(),
        });
    }
    let path = disk.path.clone();
    if opts.dry_run {
        let mut ro = crate::status::ReadOnly(&mut disk);
        let state = DiskState::read(&mut ro, &path)?;
        let loader = verified_artifact(&bundle, bundle::BOOTLOADER)?;
        let step6 = loader_step(&mut ro, &state, &loader, opts.replace_loader)?;
        return plan(&state, &bundle, opts.allow_downgrade, &path, step6);
    }
    let _claims = if opts.live {
        claim_targets(&mut disk, &path)?
    } else {
        Vec::new()
    };
    upgrade_disk_with(
        &mut disk,
        &path,
        &bundle,
        opts.allow_downgrade,
        opts.replace_loader,
    )
}

/// A live upgrade's exclusive holds: the ESP and the slot the running
/// release is not in, taken before the first write, so the running slot,
/// STATE and EPHEMERAL are never opened for writing and nothing can mount
/// what is being written.
fn claim_targets(disk: &mut Disk, path: &Path) -> Result<Vec<crate::blockdev::Claim>> {
    let state = DiskState::read(&mut crate::status::ReadOnly(&mut *disk), path)?;
    let active = state.active().ok_or_else(|| Error::Boot {
        path: path.to_path_buf(),
        what: "no UKI on the ESP points at BOOT-A or BOOT-B: no running release to upgrade live"
            .into(),
    })?;
    let target = state.other(active.slot);
    Ok([&state.esp, target]
        .into_iter()
        .map(|p| disk.claim(p))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect())
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
    (update_loader, loader_kept): (bool, Option<String>),
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
        new_uki: EntryName::new(
            &base,
            Some(Counter {
                left: TRIES,
                done: 0,
            }),
        )
        .file_name(),
        update_loader,
        loader_kept,
        placement: None,
        fallback_unblessed: active.entry.counter.is_some(),
    })
}

/// The names systemd-boot gives a new entry `base` as it counts its tries:
/// `+3`, `+2-1`, `+1-2`, `+0-3`.
fn counting_names(base: &str) -> Vec<String> {
    let mut c = Counter {
        left: TRIES,
        done: 0,
    };
    let mut out = vec![EntryName::new(base, Some(c)).file_name()];
    while !c.exhausted() {
        c = c.after_attempt();
        out.push(EntryName::new(base, Some(c)).file_name());
    }
    out
}

/// Step 4's placement of the entry for `base` (module docs, "Placement"
/// and "Bound"), once step 1 has removed what it removes. Not atomic (the
/// first free slots, as any file) when the fallback was never blessed.
fn placement<D: Read + Write + Seek>(
    esp: &mut Fat32<D>,
    base: &str,
    fallback_unblessed: bool,
) -> Result<Placement> {
    let names = counting_names(base);
    let set_len = entry_slots(&names[0]);
    let span: usize = names.iter().map(|n| entry_slots(n)).sum();
    let slot = esp
        .appended_slot(ENTRY_DIR, set_len, span)
        .map_err(fat(format!("reading {ENTRY_DIR}")))?;
    let atomic = !fallback_unblessed && span <= SECTOR_SLOTS && slot + span <= PLACEMENT_LIMIT;
    Ok(Placement { slot, span, atomic })
}

/// An artifact's bytes, checked again against the verified manifest: the
/// bundle directory may have changed since `open_verified`.
fn verified_artifact(bundle: &Bundle, name: &str) -> Result<Vec<u8>> {
    let art = bundle.artifact(name);
    read_verified(&bundle.dir, art, art.size, &bundle.origin)
}

/// Step 6's decision: (replace, why a differing loader is kept). A missing
/// loader is replaced (created). A signed loader is replaced only by one
/// whose signature verifies and whose signer is one of its own
/// certificates, i.e. one the firmware already trusts, unless `force`:
/// otherwise a Secure Boot machine would refuse its boot loader and boot
/// nothing at all, with no fallback.
fn loader_step<D: Read + Write + Seek>(
    d: &mut D,
    state: &DiskState,
    loader: &[u8],
    force: bool,
) -> Result<(bool, Option<String>)> {
    let mut esp = open_esp(d, state, 0)?;
    let old = match esp.read_file(LOADER) {
        Ok(b) => b,
        Err(artifacts::fat::FatError::NotFound { .. }) => return Ok((true, None)),
        Err(e) => return Err(fat(format!("reading {LOADER}"))(e)),
    };
    if old == loader {
        return Ok((false, None));
    }
    if force {
        return Ok((true, None));
    }
    Ok(match signer_change(&old, loader)? {
        None => (true, None),
        Some(why) => (false, Some(why)),
    })
}

/// Why replacing a loader signed as `old` with `new` could stop Secure Boot
/// from starting it; None when it cannot.
fn signer_change(old: &[u8], new: &[u8]) -> Result<Option<String>> {
    use signing::authenticode::{signer_certificates, verify_signatures, AuthenticodeError};
    // An installed loader that does not parse cannot boot either: replace it.
    let old_certs = signer_certificates(Path::new(LOADER), old).unwrap_or_default();
    if old_certs.is_empty() {
        return Ok(None);
    }
    // A certificate in the new loader proves nothing until its signature
    // verifies over this very image: one can be copied into any file.
    let new_certs = match verify_signatures(Path::new(bundle::BOOTLOADER), new) {
        Ok(certs) => certs,
        Err(e @ AuthenticodeError::BadSignature { .. }) => {
            return Ok(Some(format!(
                "the bundle's Secure Boot signature does not verify ({e}); \
                 a Secure Boot machine would refuse it"
            )))
        }
        Err(e) => {
            return Err(Error::Bundle {
                path: PathBuf::from(bundle::BOOTLOADER),
                what: format!("reading its Secure Boot signature: {e}"),
            })
        }
    };
    if new_certs.iter().any(|c| old_certs.contains(c)) {
        return Ok(None);
    }
    let ids = |certs: &[Vec<u8>]| {
        certs
            .iter()
            .map(|c| signing::Sha256Digest::of(c).to_hex()[..16].to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Ok(Some(if new_certs.is_empty() {
        format!(
            "the installed one is signed for Secure Boot (certificate sha256 {}) and the bundle's is unsigned; \
             a Secure Boot machine would refuse it. Pass --replace-loader if Secure Boot is off",
            ids(&old_certs)
        )
    } else {
        format!(
            "the bundle's is signed by another certificate (sha256 {}) than the installed one ({}); \
             enroll the new certificate in the firmware's db, then upgrade again with --replace-loader",
            ids(&new_certs),
            ids(&old_certs)
        )
    }))
}

/// Step 6 (see the module docs), read back afterwards.
fn update_loader<D: Read + Write + Seek>(
    esp: &mut Fat32<&mut D>,
    loader: &[u8],
    offset: u64,
) -> Result<()> {
    match esp.replace_file(LOADER, loader) {
        Ok(_) => {}
        Err(artifacts::fat::FatError::NotFound { .. }) => {
            let dir = LOADER.rsplit_once('/').map_or("", |(d, _)| d);
            esp.create_dir_all(dir)
                .map_err(fat(format!("creating {dir}")))?;
            esp.write_file(LOADER, loader)
                .map_err(fat(format!("writing {LOADER}")))?;
        }
        Err(e) => return Err(fat(format!("replacing {LOADER}"))(e)),
    }
    esp.flush()
        .map_err(fat(format!("syncing the ESP after writing {LOADER}")))?;
    let back = esp
        .read_file(LOADER)
        .map_err(fat(format!("reading back {LOADER}")))?;
    if back != loader {
        return Err(Error::ReadBack {
            partition: format!("EFI ({LOADER})"),
            offset,
            len: loader.len() as u64,
            expected: signing::Sha256Digest::of(loader).to_hex(),
            actual: signing::Sha256Digest::of(&back).to_hex(),
        });
    }
    Ok(())
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
    upgrade_disk_with(d, path, bundle, allow_downgrade, false)
}

/// [`upgrade_disk`], with `replace_loader` as in [`UpgradeOptions`].
pub fn upgrade_disk_with<D: Read + Write + Seek>(
    d: &mut D,
    path: &Path,
    bundle: &Bundle,
    allow_downgrade: bool,
    replace_loader: bool,
) -> Result<UpgradePlan> {
    let state = DiskState::read(d, path)?;
    let epoch = bundle.manifest.source_date_epoch;
    let loader = verified_artifact(bundle, bundle::BOOTLOADER)?;
    let step6 = loader_step(d, &state, &loader, replace_loader)?;
    let differs = step6.0;
    let mut plan = match plan(&state, bundle, allow_downgrade, path, step6) {
        // This release's UKI is on the ESP, so an earlier run got past
        // step 5; a cut in step 6 is the one thing it may have left undone.
        Err(e @ Error::SameVersion { .. })
            if differs
                && state
                    .model
                    .entries
                    .iter()
                    .any(|x| x.base == bundle.entry_base()) =>
        {
            let mut esp = open_esp(d, &state, epoch)?;
            update_loader(&mut esp, &loader, state.esp.offset())?;
            drop(esp);
            sync(d, "finishing the boot loader update")?;
            return Err(e);
        }
        r => r?,
    };
    let target = state
        .slots
        .iter()
        .find(|s| s.name == plan.target_slot)
        .expect("plan names a slot")
        .clone();

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
        // Room for systemd-boot's counting renames until the next upgrade:
        // the firmware appends each renamed entry and must never grow the
        // directory itself (see Fat32::reserve_entries).
        esp.reserve_entries(ENTRY_DIR, ENTRY_RESERVE)
            .map_err(fat(format!("reserving entries in {ENTRY_DIR}")))?;
        esp.flush()
            .map_err(fat("syncing the ESP after removing stale UKIs"))?;
    }
    // 2. The release data, verified on the way in and read back.
    write_slot(d, bundle, &target)?;
    // 3. init finds the slot by root hash.
    table::set_partition_guid(d, target.slot, root_guid(bundle)?)?;
    // 4. + 5. The UKI appears under its loader-visible name in one write.
    let tmp = format!("{ENTRY_DIR}/{}", plan.new_uki.replace(".efi", ".tmp"));
    let uki = verified_artifact(bundle, bundle::UKI)?;
    let art = bundle.artifact(bundle::UKI);
    let mut esp = open_esp(d, &state, epoch)?;
    esp.create_dir_all(ENTRY_DIR)
        .map_err(fat(format!("creating {ENTRY_DIR}")))?;
    let place = placement(&mut esp, &bundle.entry_base(), plan.fallback_unblessed)?;
    plan.placement = Some(place);
    if place.atomic {
        esp.write_file_appended(&tmp, &uki, place.span).map(drop)
    } else {
        esp.write_file(&tmp, &uki)
    }
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
            let to = EntryName::new(&e.base, Some(Counter { left: 0, done })).file_name();
            esp.rename(&format!("{ENTRY_DIR}/{}", e.file), &to)
                .map_err(fat(format!("demoting {} to {to}", e.file)))?;
            esp.flush()
                .map_err(fat(format!("syncing after renaming {}", e.file)))?;
        }
    }
    // 6. The new loader, only once the release it boots is in place.
    if plan.update_loader {
        update_loader(&mut esp, &loader, state.esp.offset())?;
    }
    drop(esp);
    sync(d, "the upgrade")?;
    Ok(plan)
}

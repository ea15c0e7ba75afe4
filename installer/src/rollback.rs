//! `rollback`: make the release in the other slot the next boot, using only
//! renames systemd-boot's counting understands.
//!
//! 1. If the other slot's best entry is exhausted (`+0-N`), rename it to
//!    `+3` (three fresh tries; a blessed entry is left alone).
//! 2. Rename every entry that sorts before it to the exhausted form of its
//!    name (`NAME+0-D.efi`, D = tries done so far, 0 for a blessed one), so
//!    it sorts last. It stays on the ESP: if the rolled-back release fails
//!    its tries too, systemd-boot boots the first exhausted entry, which by
//!    version is the one rolled back from.
//!
//! A cut between the renames leaves the current release preferred (step 1
//! changes nothing about the order); each rename is one directory write.

use std::io::{Read, Seek, Write};
use std::path::Path;

use artifacts::fat::Fat32;

use crate::blockdev::{sync, Disk};
use crate::bootmodel::{compare, BootModel, Counter, ENTRY_DIR};
use crate::error::{fat, Error, Result};
use crate::install::TRIES;
use crate::status::DiskState;
use contract::esp::EntryName;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackReport {
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    pub to_slot: String,
    /// (old name, new name), in the order done.
    pub renames: Vec<(String, String)>,
}

pub fn rollback(path: &Path) -> Result<RollbackReport> {
    let mut disk = Disk::open(path, true)?;
    rollback_disk(&mut disk, path)
}

/// [`rollback`] of the disk the running system booted from (the node API's
/// rollback): opened as for a live upgrade, with the ESP claimed
/// exclusively while it is renamed in, so nothing mounts it meanwhile.
pub fn rollback_live(path: &Path) -> Result<RollbackReport> {
    let mut disk = Disk::open_live(path)?;
    let state = DiskState::read(&mut crate::status::ReadOnly(&mut disk), path)?;
    let _claim = disk.claim(&state.esp)?;
    rollback_disk(&mut disk, path)
}

pub fn rollback_disk<D: Read + Write + Seek>(d: &mut D, path: &Path) -> Result<RollbackReport> {
    let state = DiskState::read(d, path)?;
    let boot_err = |what: String| Error::Boot {
        path: path.to_path_buf(),
        what,
    };
    let current = state
        .model
        .selected()
        .ok_or_else(|| boot_err("no UKI on the ESP".into()))?;
    let cur_slot = state
        .slot_of(current)
        .ok_or_else(|| boot_err(format!("{} boots no slot", current.file)))?;
    let other = state.other(cur_slot);
    let target = state
        .model
        .entries
        .iter()
        .find(|e| state.slot_of(e).is_some_and(|s| s.slot == other.slot))
        .ok_or_else(|| {
            boot_err(format!(
                "no UKI on the ESP boots {}: there is no release to roll back to",
                other.name
            ))
        })?
        .clone();
    let mut renames = Vec::new();
    if target.exhausted() {
        let to = EntryName::new(
            &target.base,
            Some(Counter {
                left: TRIES,
                done: 0,
            }),
        )
        .file_name();
        renames.push((target.file.clone(), to));
    }
    let mut revived = target.clone();
    if let Some((_, to)) = renames.first() {
        revived.file = to.clone();
        revived.counter = Some(Counter {
            left: TRIES,
            done: 0,
        });
    }
    for e in &state.model.entries {
        if e.file != target.file && compare(e, &revived).is_lt() {
            let done = e.counter.map_or(0, |c| c.done);
            renames.push((
                e.file.clone(),
                EntryName::new(&e.base, Some(Counter { left: 0, done })).file_name(),
            ));
        }
    }
    let mut esp = Fat32::open(&mut *d, state.esp.offset(), state.esp.size_bytes())
        .map_err(fat("opening the ESP"))?;
    for (from, to) in &renames {
        esp.rename(&format!("{ENTRY_DIR}/{from}"), to)
            .map_err(fat(format!("renaming {ENTRY_DIR}/{from} to {to}")))?;
        esp.flush()
            .map_err(fat(format!("syncing after renaming {from}")))?;
    }
    let model = BootModel::read(&mut esp)?;
    drop(esp);
    sync(d, "the rollback")?;
    if model.selected().map(|e| &e.base) != Some(&target.base) {
        return Err(boot_err(format!(
            "after the renames systemd-boot would boot {:?}, not {}",
            model.selected().map(|e| &e.file),
            target.base
        )));
    }
    Ok(RollbackReport {
        from_version: current.version.clone(),
        to_version: target.version.clone(),
        to_slot: other.name.clone(),
        renames,
    })
}

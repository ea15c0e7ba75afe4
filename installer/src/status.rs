//! What is on an installed disk: the slots, the releases the ESP's UKIs
//! point at, and which one boots next and why.

use std::io::{Read, Seek, Write};
use std::path::Path;

use artifacts::fat::Fat32;
use artifacts::gpt::{self, DiskLayout, Partition};

use crate::bootmodel::{BootModel, Counter, Entry};
use crate::error::{fat, gpt as gpt_err, Error, Result};

/// The parts of a cairn disk the installer reasons about.
#[derive(Debug, Clone)]
pub struct DiskState {
    pub layout: DiskLayout,
    pub esp: Partition,
    /// BOOT-A, BOOT-B.
    pub slots: [Partition; 2],
    pub model: BootModel,
    /// Which GPT copy the table was read from.
    pub table_copy: String,
}

/// A slot and the release the boot model says is in it.
#[derive(Debug, Clone, Copy)]
pub struct Active<'a> {
    pub slot: &'a Partition,
    pub entry: &'a Entry,
    pub why: &'static str,
}

impl DiskState {
    pub fn read<D: Read + Write + Seek>(d: &mut D, path: &Path) -> Result<DiskState> {
        let read = gpt::read_disk(d).map_err(gpt_err(format!(
            "reading the partition table of {}",
            path.display()
        )))?;
        let find = |name: &str| {
            read.layout
                .partition(name)
                .cloned()
                .ok_or_else(|| Error::NotCairn {
                    path: path.to_path_buf(),
                    what: format!("no partition named {name}"),
                })
        };
        // upgrade and rollback read the disk through here before writing.
        crate::table::check_ranges(&read.layout, path)?;
        let esp = find(contract::disk::EFI)?;
        let slots = [find(contract::disk::BOOT_A)?, find(contract::disk::BOOT_B)?];
        let mut vol = Fat32::open(&mut *d, esp.offset(), esp.size_bytes())
            .map_err(fat(format!("opening the ESP at offset {}", esp.offset())))?;
        let model = BootModel::read(&mut vol)?;
        Ok(DiskState {
            layout: read.layout,
            esp,
            slots,
            model,
            table_copy: read.used.to_string(),
        })
    }

    /// The slot whose PARTUUID is the entry's root hash.
    pub fn slot_of(&self, e: &Entry) -> Option<&Partition> {
        let g = contract::disk::slot_partuuid_of_hex(e.root_hash.as_deref()?)?;
        self.slots.iter().find(|s| s.guid == g)
    }

    /// The running release: the best blessed entry that maps to a slot (it
    /// is known good), else the entry the boot model selects now.
    pub fn active(&self) -> Option<Active<'_>> {
        let mapped = || {
            self.model
                .entries
                .iter()
                .filter_map(|e| Some((e, self.slot_of(e)?)))
        };
        if let Some((entry, slot)) = mapped().find(|(e, _)| e.blessed()) {
            return Some(Active {
                slot,
                entry,
                why: "blessed (booted successfully before)",
            });
        }
        let (entry, slot) = mapped().next()?;
        Some(Active {
            slot,
            entry,
            why: "selected by systemd-boot's order (no blessed entry)",
        })
    }

    /// The slot that is not `slot`.
    pub fn other(&self, slot: &Partition) -> &Partition {
        if slot.slot == self.slots[0].slot {
            &self.slots[1]
        } else {
            &self.slots[0]
        }
    }
}

/// `status --json`, documented in docs/installer.md.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    pub disk: String,
    pub disk_size: u64,
    pub table_copy: String,
    pub slots: Vec<SlotStatus>,
    pub entries: Vec<EntryStatus>,
    pub next_boot: Option<NextBoot>,
    pub active_slot: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotStatus {
    pub name: String,
    pub partuuid: String,
    pub offset: u64,
    pub size: u64,
    /// Versions of the entries that boot this slot, in boot order.
    pub versions: Vec<String>,
    pub active: bool,
    /// With `status --verify` only: the slot re-checked against the root
    /// hash of the release that boots it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verity: Option<SlotVerity>,
}

/// The result of re-hashing one slot (`status --verify`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotVerity {
    /// `ok`, `corrupt`, or `empty` (no release boots this slot).
    pub state: String,
    /// For `ok`: the root hash checked; for `corrupt`: what differs, where.
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EntryStatus {
    pub file: String,
    pub version: Option<String>,
    pub root_hash: Option<String>,
    pub slot: Option<String>,
    pub blessed: bool,
    pub tries_left: Option<u32>,
    pub tries_done: Option<u32>,
    pub exhausted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NextBoot {
    pub file: String,
    pub version: Option<String>,
    pub slot: Option<String>,
    pub reason: String,
    /// The name systemd-boot renames the entry to before launching it.
    pub renamed_to: Option<String>,
}

impl Status {
    pub fn of(state: &DiskState, disk: &Path, disk_size: u64) -> Status {
        let active = state.active();
        let slot_name = |e: &Entry| state.slot_of(e).map(|s| s.name.clone());
        let entries: Vec<EntryStatus> = state
            .model
            .entries
            .iter()
            .map(|e| EntryStatus {
                file: e.file.clone(),
                version: e.version.clone(),
                root_hash: e.root_hash.clone(),
                slot: slot_name(e),
                blessed: e.blessed(),
                tries_left: e.counter.map(|c: Counter| c.left),
                tries_done: e.counter.map(|c| c.done),
                exhausted: e.exhausted(),
            })
            .collect();
        let slots = state
            .slots
            .iter()
            .map(|s| SlotStatus {
                name: s.name.clone(),
                partuuid: s.guid.to_string(),
                offset: s.offset(),
                size: s.size_bytes(),
                versions: state
                    .model
                    .entries
                    .iter()
                    .filter(|e| state.slot_of(e).is_some_and(|x| x.slot == s.slot))
                    .filter_map(|e| e.version.clone())
                    .collect(),
                active: active.is_some_and(|a| a.slot.slot == s.slot),
                verity: None,
            })
            .collect();
        let next_boot = state.model.selected().map(|e| {
            let others = state.model.entries.len() - 1;
            let reason = if e.exhausted() {
                "every entry has used up its tries; systemd-boot boots the first of them".to_string()
            } else if others == 0 {
                "the only entry".to_string()
            } else {
                format!(
                    "first in systemd-boot's order (not exhausted, highest version) among {} entries",
                    others + 1
                )
            };
            NextBoot {
                file: e.file.clone(),
                version: e.version.clone(),
                slot: slot_name(e),
                reason,
                renamed_to: state.model.boot_rename().map(|(_, to)| to),
            }
        });
        Status {
            disk: disk.display().to_string(),
            disk_size,
            table_copy: state.table_copy.clone(),
            slots,
            entries,
            next_boot,
            active_slot: active.map(|a| a.slot.name.clone()),
        }
    }
}

/// Reads the status of the disk at `path` without writing to it.
pub fn status(path: &Path) -> Result<Status> {
    status_with(path, false)
}

/// [`status`]; with `verify`, every slot's data and hash tree are read back
/// and checked against the root hash in the UKI of the release that boots
/// it (the whole slot is read: seconds per GiB).
pub fn status_with(path: &Path, verify: bool) -> Result<Status> {
    let mut disk = crate::blockdev::Disk::open(path, false)?;
    let size = disk.size;
    let state = DiskState::read(&mut ReadOnly(&mut disk), path)?;
    let mut status = Status::of(&state, path, size);
    if verify {
        for (st, slot) in status.slots.iter_mut().zip(&state.slots) {
            st.verity = Some(verify_slot(&state, slot, path));
        }
    }
    Ok(status)
}

fn verify_slot(state: &DiskState, slot: &Partition, path: &Path) -> SlotVerity {
    // Any entry for the slot names the same root hash (it is the PARTUUID).
    let release = state.model.entries.iter().find_map(|e| {
        if state.slot_of(e).map(|p| p.slot) != Some(slot.slot) {
            return None;
        }
        let mut root = [0u8; 32];
        hex::decode_to_slice(e.root_hash.as_deref()?, &mut root).ok()?;
        let blocks = contract::cmdline::parse(&e.cmdline)
            .ok()?
            .verity?
            .data_blocks;
        Some((root, blocks))
    });
    let Some((root, blocks)) = release else {
        return SlotVerity {
            state: "empty".into(),
            detail: None,
        };
    };
    match artifacts::verity::verify_slot(path, slot.offset(), blocks * 4096, &root) {
        Ok(_) => SlotVerity {
            state: "ok".into(),
            detail: Some(hex::encode(root)),
        },
        Err(e) => SlotVerity {
            state: "corrupt".into(),
            detail: Some(format!(
                "{} at slot offset {}: {e}",
                slot.name,
                slot.offset()
            )),
        },
    }
}

/// Lets read-only code use the `Read + Write + Seek` readers: any write is
/// an error, so `status` provably changes nothing.
pub struct ReadOnly<'a, D>(pub &'a mut D);

impl<D: Read> Read for ReadOnly<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl<D> Write for ReadOnly<'_, D> {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "read-only access",
        ))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<D: Seek> Seek for ReadOnly<'_, D> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.0.seek(pos)
    }
}

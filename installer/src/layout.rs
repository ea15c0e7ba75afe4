//! `layout.json`: the partition sizes a release wants, and the GPT layout
//! they give on a disk of a given size.

use std::path::Path;

use artifacts::gpt::{self, DiskLayout, Guid, ALIGN, SECTOR, TABLE_SECTORS};

use crate::error::{gpt as gpt_err, Error, Result};

/// Sizes in bytes, each a positive multiple of 1 MiB. `boot` is the size of
/// each of BOOT-A and BOOT-B. EPHEMERAL takes the rest of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutSpec {
    pub esp: u64,
    pub boot: u64,
    pub state: u64,
}

/// EPHEMERAL's smallest useful size: the 1 MiB the installer zeroes plus room
/// for an ext4 journal.
pub const MIN_EPHEMERAL: u64 = 64 << 20;

impl LayoutSpec {
    pub fn parse(bytes: &[u8], origin: &Path) -> Result<LayoutSpec> {
        let bad = |what: String| Error::Bundle {
            path: origin.to_path_buf(),
            what,
        };
        let spec: LayoutSpec = serde_json::from_slice(bytes).map_err(|e| {
            bad(format!(
                "layout.json is not {{\"esp\",\"boot\",\"state\"}}: {e}"
            ))
        })?;
        for (name, v) in [
            ("esp", spec.esp),
            ("boot", spec.boot),
            ("state", spec.state),
        ] {
            if v == 0 || v % ALIGN != 0 {
                return Err(bad(format!(
                    "layout.json field {name} = {v}: must be a positive multiple of {ALIGN} bytes"
                )));
            }
        }
        let min_esp = artifacts::fat::minimum_size();
        if spec.esp < min_esp {
            return Err(bad(format!(
                "layout.json field esp = {}: FAT32 needs at least {min_esp} bytes",
                spec.esp
            )));
        }
        Ok(spec)
    }

    /// The smallest disk this layout fits, EPHEMERAL at its minimum.
    pub fn min_disk_size(&self) -> u64 {
        // 1 MiB before the first partition; the backup table and header
        // after the last, rounded up to the alignment.
        let backup = (TABLE_SECTORS + 1) * SECTOR;
        ALIGN
            + self.esp
            + 2 * self.boot
            + self.state
            + MIN_EPHEMERAL
            + backup.div_ceil(ALIGN) * ALIGN
    }

    /// The cairn layout on a disk of `disk_size` bytes; BOOT-A carries the
    /// release's root-hash GUID, everything else is derived from `seed`.
    pub fn disk_layout(
        &self,
        disk_size: u64,
        seed: &[u8],
        slot_a_guid: Guid,
    ) -> Result<DiskLayout> {
        let mut specs = gpt::cairn_specs(self.esp, self.boot, self.state);
        specs[1].guid = Some(slot_a_guid);
        DiskLayout::new(disk_size, seed, &specs).map_err(gpt_err(format!(
            "laying out {disk_size} bytes as EFI {} / BOOT-A,B {} / STATE {}",
            self.esp, self.boot, self.state
        )))
    }
}

//! Finding the slot that holds the rootfs the UKI was built for.
//! First by PARTUUID (the root hash prefix, design.md); if no partition
//! carries it (e.g. a disk written by a tool that kept its own UUIDs), by the
//! BOOT-A/BOOT-B labels, accepting only a slot whose veritysetup superblock
//! matches the command line. Either way dm-verity then authenticates every
//! block against the root hash, so a wrong guess cannot boot.

use crate::gpt::{Guid, Partition, Table};
use contract::cmdline::Verity;
use contract::disk::SLOTS;
use contract::slot::superblock_matches;
use std::io::{Read, Seek, SeekFrom};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    ByPartUuid,
    ByLabelAndSuperblock,
}

/// `disk` is the whole-disk device (or image) the table was read from.
pub fn find<'t, R: Read + Seek>(
    disk: &mut R,
    table: &'t Table,
    root_hash: &[u8; 32],
    verity: &Verity,
) -> Option<(&'t Partition, Found)> {
    if let Some(p) = table.by_guid(&Guid::from_root_hash(root_hash)) {
        return Some((p, Found::ByPartUuid));
    }
    for label in SLOTS {
        let Some(p) = table.by_name(label) else {
            continue;
        };
        let off = p
            .first_lba
            .checked_mul(table.sector_size)
            .and_then(|o| o.checked_add(verity.data_blocks.checked_mul(4096)?));
        let Some(off) = off else { continue };
        let end = (p.last_lba + 1).saturating_mul(table.sector_size);
        if off + 4096 > end {
            continue;
        }
        let mut sb = vec![0u8; 512];
        if disk.seek(SeekFrom::Start(off)).is_ok()
            && disk.read_exact(&mut sb).is_ok()
            && superblock_matches(&sb, verity)
        {
            return Some((p, Found::ByLabelAndSuperblock));
        }
    }
    None
}

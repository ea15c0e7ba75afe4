//! Finding the slot that holds the rootfs the UKI was built for.
//! First by PARTUUID (the root hash prefix, design.md); if no partition
//! carries it (e.g. a disk written by a tool that kept its own UUIDs), by the
//! BOOT-A/BOOT-B labels, accepting only a slot whose veritysetup superblock
//! matches the command line. Either way dm-verity then authenticates every
//! block against the root hash, so a wrong guess cannot boot.

use artifacts::gpt::{DiskLayout, Guid, Partition};
use contract::cmdline::Verity;
use contract::disk::SLOTS;
use contract::slot::superblock_matches;
use std::io::{Read, Seek, SeekFrom};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    ByPartUuid,
    ByLabelAndSuperblock,
}

/// The slot PARTUUID of design.md: the first 128 bits of the root hash.
pub fn partuuid(root_hash: &[u8; 32]) -> Guid {
    contract::disk::slot_partuuid(root_hash)
}

/// `disk` is the whole-disk device (or image) the table was read from.
pub fn find<'t, R: Read + Seek>(
    disk: &mut R,
    table: &'t DiskLayout,
    root_hash: &[u8; 32],
    verity: &Verity,
) -> Option<(&'t Partition, Found)> {
    let want = partuuid(root_hash);
    if let Some(p) = table.partitions.iter().find(|p| p.guid == want) {
        return Some((p, Found::ByPartUuid));
    }
    for label in SLOTS {
        let Some(p) = table.partition(label) else {
            continue;
        };
        let off = verity
            .data_blocks
            .checked_mul(4096)
            .and_then(|o| o.checked_add(p.offset()));
        let Some(off) = off else { continue };
        if off.saturating_add(4096) > p.offset() + p.size_bytes() {
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

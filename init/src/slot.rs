//! Finding the slot that holds the rootfs the UKI was built for.
//! First by PARTUUID (the root hash prefix, design.md); if no partition
//! carries it (e.g. a disk written by a tool that kept its own UUIDs), by the
//! BOOT-A/BOOT-B labels, accepting only a slot whose veritysetup superblock
//! matches the command line. Either way dm-verity then authenticates every
//! block against the root hash, so a wrong guess cannot boot.

use crate::cmdline::Verity;
use artifacts::gpt::{DiskLayout, Guid, Partition};
use std::io::{Read, Seek, SeekFrom};

pub const SLOT_LABELS: [&str; 2] = ["BOOT-A", "BOOT-B"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    ByPartUuid,
    ByLabelAndSuperblock,
}

/// Does a veritysetup (format 1) superblock describe this slot?
pub fn superblock_matches(sb: &[u8], v: &Verity) -> bool {
    let u32_at = |at: usize| {
        sb.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
    };
    let ok = sb.get(0..8) == Some(b"verity\0\0")
        && u32_at(8) == Some(1)
        && u32_at(12) == Some(1)
        && sb.get(32..39) == Some(b"sha256\0")
        && u32_at(64) == Some(4096)
        && u32_at(68) == Some(4096)
        && sb
            .get(72..80)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            == Some(v.data_blocks)
        && sb.get(80..82) == Some(&32u16.to_le_bytes()[..]);
    ok && sb.get(88..120) == Some(&v.salt[..])
}

/// The slot PARTUUID of design.md: the first 128 bits of the root hash.
pub fn partuuid(root_hash: &[u8; 32]) -> Guid {
    Guid::from_root_hash(root_hash).expect("a 32-byte root hash has 16 bytes for a GUID")
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
    for label in SLOT_LABELS {
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

//! Slot content (docs/design.md "Slot content"): squashfs, zero-padded to
//! 4 KiB blocks, then a veritysetup format-1 superblock, then the hash tree.
//! The superblock is not trusted (the command line is); it only tells a
//! label-found slot apart from another release's.

use crate::cmdline::{self, Verity};
use artifacts::verity::VerityInfo;

/// dm-verity data and hash block size.
pub const VERITY_BLOCK: u64 = 4096;

/// The command line that binds a UKI to the slot `info` describes
/// (`cairn.rootfs=… cairn.verity=…`).
pub fn boot_params(info: &VerityInfo) -> String {
    cmdline::boot_params(
        &info.root_hash,
        &Verity {
            data_blocks: info.data_blocks,
            salt: info.salt,
        },
    )
}

/// Byte offset of the verity superblock in a slot.
pub fn superblock_offset(data_blocks: u64) -> Option<u64> {
    data_blocks.checked_mul(VERITY_BLOCK)
}

/// Does a veritysetup (format 1, sha256, 4 KiB blocks, 32-byte salt)
/// superblock describe the slot the command line names?
pub fn superblock_matches(sb: &[u8], v: &Verity) -> bool {
    let u32_at = |at: usize| {
        sb.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
    };
    let ok = sb.get(0..8) == Some(b"verity\0\0")
        && u32_at(8) == Some(1)
        && u32_at(12) == Some(1)
        && sb.get(32..39) == Some(b"sha256\0")
        && u32_at(64) == Some(VERITY_BLOCK as u32)
        && u32_at(68) == Some(VERITY_BLOCK as u32)
        && sb
            .get(72..80)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            == Some(v.data_blocks)
        && sb.get(80..82) == Some(&32u16.to_le_bytes()[..]);
    ok && sb.get(88..120) == Some(&v.salt[..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> VerityInfo {
        VerityInfo {
            root_hash: [0xab; 32],
            salt: [0x01; 32],
            uuid: artifacts::gpt::Guid::ZERO,
            data_size: 40960,
            data_blocks: 10,
            hash_offset: 40960,
            hash_blocks: 1,
        }
    }

    #[test]
    fn boot_params_name_root_hash_blocks_and_salt() {
        let i = info();
        assert_eq!(
            boot_params(&i),
            format!(
                "cairn.rootfs={} cairn.verity=10,{}",
                "ab".repeat(32),
                "01".repeat(32)
            )
        );
        let parsed = cmdline::parse(&boot_params(&i)).unwrap();
        assert_eq!(parsed.rootfs, Some(i.root_hash));
        assert_eq!(parsed.verity.unwrap().data_blocks, 10);
    }

    #[test]
    fn superblock_written_by_artifacts_matches() {
        let i = info();
        let v = Verity {
            data_blocks: i.data_blocks,
            salt: i.salt,
        };
        let sb = i.superblock();
        assert!(superblock_matches(&sb, &v));
        let other = Verity {
            data_blocks: 11,
            ..v.clone()
        };
        assert!(!superblock_matches(&sb, &other));
        let mut bad = sb.clone();
        bad[0] ^= 1;
        assert!(!superblock_matches(&bad, &v));
    }
}

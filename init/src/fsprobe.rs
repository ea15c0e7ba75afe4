//! What is on a STATE/EPHEMERAL partition, and what init may do about it.
//! Init formats only provably empty space: a partition whose first MiB is
//! zero (the installer zeroes it). Anything else is kept.

pub const PROBE_LEN: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Zeroed,
    Ext4,
    /// Human-readable description of what was found instead.
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Format,
    Check,
    Stop(String),
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

const EXT_SB: usize = 1024;
const EXT_MAGIC: u16 = 0xEF53;
const INCOMPAT_EXTENTS: u32 = 0x40;

/// Classifies the first bytes of a partition (normally [`PROBE_LEN`]; a
/// shorter slice means the partition is that small).
pub fn classify(head: &[u8]) -> Found {
    if head.iter().all(|b| *b == 0) {
        return Found::Zeroed;
    }
    if le16(head, EXT_SB + 0x38) == Some(EXT_MAGIC) {
        let incompat = le32(head, EXT_SB + 0x60).unwrap_or(0);
        if incompat & INCOMPAT_EXTENTS != 0 {
            return Found::Ext4;
        }
        return Found::Other("ext2/ext3 filesystem (no extents feature)".into());
    }
    let sigs: [(usize, &[u8], &str); 7] = [
        (0, b"hsqs", "squashfs image"),
        (0, b"XFSB", "XFS filesystem"),
        (0, b"LUKS\xba\xbe", "LUKS volume"),
        (0x10040, b"_BHRfS_M", "btrfs filesystem"),
        (0x52, b"FAT32   ", "FAT32 filesystem"),
        (0x36, b"FAT1", "FAT12/16 filesystem"),
        (0x200, b"EFI PART", "nested GPT partition table"),
    ];
    for (at, magic, what) in sigs {
        if head.get(at..at + magic.len()) == Some(magic) {
            return Found::Other(what.into());
        }
    }
    let first = head.iter().position(|b| *b != 0).unwrap_or(0);
    Found::Other(format!(
        "unrecognised data (first non-zero byte at offset {first})"
    ))
}

/// The format rule of design.md; `partition` only names it in the message.
pub fn action(found: &Found, partition: &str) -> Action {
    match found {
        Found::Zeroed => Action::Format,
        Found::Ext4 => Action::Check,
        Found::Other(what) => Action::Stop(format!(
            "{partition}: found {what}; refusing to format (init never wipes data: zero its first 1 MiB to reformat)"
        )),
    }
}

/// e2fsck -p exit codes: 0 clean, 1 errors fixed, 2 fixed but the system
/// should reboot (only matters for a mounted root, which this never is);
/// anything with bit 4 or above set means unrepaired.
pub fn fsck_ok(code: i32) -> bool {
    (0..=2).contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_garbage() {
        assert_eq!(classify(&vec![0; PROBE_LEN]), Found::Zeroed);
        let mut h = vec![0; PROBE_LEN];
        h[PROBE_LEN - 1] = 1; // a single byte at the very end counts
        assert_eq!(
            classify(&h),
            Found::Other(format!(
                "unrecognised data (first non-zero byte at offset {})",
                PROBE_LEN - 1
            ))
        );
        assert_eq!(action(&classify(&h), "STATE (/dev/vda4)").clone(), Action::Stop(format!(
            "STATE (/dev/vda4): found unrecognised data (first non-zero byte at offset {}); refusing to format (init never wipes data: zero its first 1 MiB to reformat)",
            PROBE_LEN - 1
        )));
    }

    #[test]
    fn known_signatures() {
        let mut h = vec![0; PROBE_LEN];
        h[..4].copy_from_slice(b"hsqs");
        assert_eq!(classify(&h), Found::Other("squashfs image".into()));
        let mut h = vec![0; PROBE_LEN];
        h[0x10040..0x10048].copy_from_slice(b"_BHRfS_M");
        assert_eq!(classify(&h), Found::Other("btrfs filesystem".into()));
        let mut h = vec![0; 4096];
        h[EXT_SB + 0x38..EXT_SB + 0x3a].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        assert!(matches!(classify(&h), Found::Other(s) if s.starts_with("ext2/ext3")));
    }

    #[test]
    fn real_filesystems_from_standard_tools() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("p.img");
        let mk = |args: &[&str]| {
            std::fs::write(&img, vec![0u8; 40 << 20]).unwrap();
            let st = std::process::Command::new(args[0])
                .args(&args[1..])
                .arg(&img)
                .output()
                .unwrap_or_else(|e| {
                    panic!(
                        "{} (from e2fsprogs/dosfstools) must be installed: {e}",
                        args[0]
                    )
                });
            assert!(
                st.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&st.stderr)
            );
            let mut head = std::fs::read(&img).unwrap();
            head.truncate(PROBE_LEN);
            classify(&head)
        };
        assert_eq!(
            mk(&[
                "mke2fs",
                "-q",
                "-t",
                "ext4",
                "-L",
                "STATE",
                "-E",
                "nodiscard",
                "-F"
            ]),
            Found::Ext4
        );
        assert!(
            matches!(mk(&["mke2fs", "-q", "-t", "ext2", "-F"]), Found::Other(s) if s.starts_with("ext2"))
        );
        assert!(
            matches!(mk(&["mkfs.vfat", "-F", "32"]), Found::Other(s) if s == "FAT32 filesystem")
        );
        assert_eq!(action(&Found::Ext4, "x"), Action::Check);
        assert_eq!(action(&Found::Zeroed, "x"), Action::Format);
    }

    #[test]
    fn fsck_codes() {
        assert!(fsck_ok(0) && fsck_ok(1) && fsck_ok(2));
        assert!(!fsck_ok(4) && !fsck_ok(8) && !fsck_ok(-1));
    }
}

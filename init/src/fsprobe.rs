//! What is on a STATE/EPHEMERAL partition, and what init may do about it.
//! Init formats only provably empty space: a partition whose first MiB is
//! zero (the installer zeroes it). Anything else is kept.

use installer::probe::{probe_head, Contents, EXT_SUPERBLOCK};

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

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

const EXT_SB: usize = 1024;
const INCOMPAT_EXTENTS: u32 = 0x40;

/// Classifies the first bytes of a partition (normally [`PROBE_LEN`]; a
/// shorter slice means the partition is that small) with the installer's
/// signature table ([`installer::probe::probe_head`]). Of the filesystems
/// there, init keeps only its own kind: ext4 with extents (what it formats).
pub fn classify(head: &[u8]) -> Found {
    match probe_head(head) {
        Contents::Blank => Found::Zeroed,
        Contents::Found(sigs) if sigs.iter().any(|s| s.what == EXT_SUPERBLOCK) => {
            let incompat = le32(head, EXT_SB + 0x60).unwrap_or(0);
            if incompat & INCOMPAT_EXTENTS != 0 {
                Found::Ext4
            } else {
                Found::Other("an ext2/ext3 filesystem (no extents feature)".into())
            }
        }
        found => Found::Other(found.describe().join("; ")),
    }
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
                "unrecognised non-zero data at offset {}",
                PROBE_LEN - 1
            ))
        );
        assert_eq!(action(&classify(&h), "STATE (/dev/vda4)").clone(), Action::Stop(format!(
            "STATE (/dev/vda4): found unrecognised non-zero data at offset {}; refusing to format (init never wipes data: zero its first 1 MiB to reformat)",
            PROBE_LEN - 1
        )));
    }

    #[test]
    fn known_signatures() {
        let mut h = vec![0; PROBE_LEN];
        h[..4].copy_from_slice(b"hsqs");
        assert_eq!(
            classify(&h),
            Found::Other("a squashfs filesystem at offset 0".into())
        );
        let mut h = vec![0; PROBE_LEN];
        h[0x10040..0x10048].copy_from_slice(b"_BHRfS_M");
        assert_eq!(
            classify(&h),
            Found::Other("a btrfs superblock at offset 65600".into())
        );
        let mut h = vec![0; 4096];
        h[EXT_SB + 0x38..EXT_SB + 0x3a].copy_from_slice(&0xEF53u16.to_le_bytes());
        assert!(matches!(classify(&h), Found::Other(s) if s.starts_with("an ext2/ext3")));
        h[EXT_SB + 0x60] = INCOMPAT_EXTENTS as u8;
        assert_eq!(classify(&h), Found::Ext4);
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
            matches!(mk(&["mke2fs", "-q", "-t", "ext2", "-F"]), Found::Other(s) if s.starts_with("an ext2"))
        );
        assert!(
            matches!(mk(&["mkfs.vfat", "-F", "32"]), Found::Other(s) if s == "a FAT filesystem boot sector at offset 82")
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

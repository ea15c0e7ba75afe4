//! What is on a disk before an install: the blank rule, and the signatures
//! a refusal names.
//!
//! The rule (docs/installer.md): a disk is blank when its first MiB and its
//! last MiB are all zero (a disk smaller than that: all of it) and no
//! signature sits at the few known locations beyond them (LUKS2 secondary
//! headers at 1, 2 and 4 MiB, btrfs superblock mirrors at 64 MiB and
//! 256 GiB). Anything else is refused without `--wipe`, whether or not the
//! table below recognises it: recognising only makes the refusal say what
//! would be destroyed. Data between the two MiB windows is not looked at.
//!
//! Why a table of our own: libblkid is C, and the installer also runs
//! inside the static musl init; the pure-Rust crates on crates.io that
//! were checked do not cover what servers carry (am-partitions 0.5 knows
//! GPT/MBR and a few filesystems at a partition's start, blkid-rs only
//! LUKS), none knows LVM2, md, ZFS or bcache. The offsets and magics are
//! the formats' published ones (kernel headers, the ZFS on-disk
//! specification, the LUKS1/LUKS2 and bcache documents); the test
//! `tests/blank_disk.rs` holds them against libblkid on images made by the
//! real tools.
//!
//! init uses the same table on STATE and EPHEMERAL ([`probe_head`]): it
//! formats only a partition whose first MiB is zero, and names what it
//! found when it refuses.

use std::borrow::Cow;
use std::io::{Read, Seek};
use std::ops::Range;

use crate::blockdev::read_at;
use crate::error::Result;

/// The size of each window the blank rule reads: the first and the last
/// MiB of the disk.
pub const WINDOW: u64 = 1 << 20;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// How much is read at each location beyond the windows.
const FAR_LEN: u64 = 4 * KIB;

/// A recognised signature: what it is and where its magic starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub what: &'static str,
    pub offset: u64,
}

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at offset {}", self.what, self.offset)
    }
}

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    /// Both windows all zero, nothing at the locations beyond them.
    Blank,
    /// Signatures, in table order.
    Found(Vec<Signature>),
    /// Non-zero bytes in a window that no signature explains; the offset
    /// of the first.
    Unrecognised { offset: u64 },
}

impl Contents {
    pub fn is_blank(&self) -> bool {
        *self == Contents::Blank
    }

    /// One line per finding, as the plan and the refusal print them.
    pub fn describe(&self) -> Vec<String> {
        match self {
            Contents::Blank => Vec::new(),
            Contents::Found(sigs) => sigs.iter().map(Signature::to_string).collect(),
            Contents::Unrecognised { offset } => {
                vec![format!("unrecognised non-zero data at offset {offset}")]
            }
        }
    }

    /// What `--wipe` zeroes before anything else is written: both windows,
    /// and each location beyond them that held a signature, so nothing of
    /// the old contents is left for udev, LVM or md auto-assembly to find
    /// next to the new partition table. Empty for a blank disk.
    pub fn wipe_ranges(&self, size: u64) -> Vec<Range<u64>> {
        if self.is_blank() {
            return Vec::new();
        }
        let mut ranges: Vec<Range<u64>> = window_ranges(size).into_iter().map(|w| w.0).collect();
        if let Contents::Found(sigs) = self {
            for at in far_locations(size) {
                let r = at..(at + FAR_LEN).min(size);
                if sigs.iter().any(|s| r.contains(&s.offset)) {
                    ranges.push(r);
                }
            }
        }
        ranges.sort_by_key(|r| r.start);
        ranges
    }
}

/// The first and the last window, without overlap: on a disk smaller
/// than two windows, the second is only what the first does not cover.
fn window_ranges(size: u64) -> Vec<(Range<u64>, &'static str)> {
    let w = WINDOW.min(size);
    let mut v = vec![(0..w, "the first MiB of the disk")];
    if size > w {
        v.push(((size - w).max(w)..size, "the last MiB of the disk"));
    }
    v
}

/// Locations beyond the windows where a known signature may be the only
/// one left: LUKS2 secondary headers past the first MiB and the btrfs
/// superblock mirrors (each location is where the FAR_LEN read starts).
fn far_locations(size: u64) -> Vec<u64> {
    [MIB, 2 * MIB, 4 * MIB, 64 * MIB, 256 << 30]
        .into_iter()
        .filter(|at| *at >= WINDOW && at + FAR_LEN <= size.saturating_sub(WINDOW))
        .collect()
}

/// The bytes the probe reads: both windows (`window`) and the far
/// locations; or, for [`probe_head`], the head it was given.
struct View<'a> {
    parts: Vec<Part<'a>>,
}

struct Part<'a> {
    start: u64,
    buf: Cow<'a, [u8]>,
    window: bool,
}

impl View<'_> {
    fn read<D: Read + Seek>(d: &mut D, size: u64) -> Result<View<'static>> {
        let mut parts = Vec::new();
        let mut read = |r: Range<u64>, window: bool, what: &str| -> Result<()> {
            let mut buf = vec![0u8; (r.end - r.start) as usize];
            read_at(d, r.start, &mut buf, what)?;
            parts.push(Part {
                start: r.start,
                buf: Cow::Owned(buf),
                window,
            });
            Ok(())
        };
        for (r, what) in window_ranges(size) {
            read(r, true, what)?;
        }
        for at in far_locations(size) {
            read(
                at..at + FAR_LEN,
                false,
                "a signature location past the first MiB",
            )?;
        }
        Ok(View { parts })
    }

    fn bytes(&self, offset: u64, len: usize) -> Option<&[u8]> {
        self.parts.iter().find_map(|p| {
            let rel = usize::try_from(offset.checked_sub(p.start)?).ok()?;
            p.buf.get(rel..rel.checked_add(len)?)
        })
    }

    fn matches(&self, offset: u64, magic: &[u8]) -> bool {
        self.bytes(offset, magic.len()) == Some(magic)
    }

    /// The first non-zero byte of the two windows (not of the far reads:
    /// data between the windows does not count against the blank rule).
    fn first_non_zero(&self) -> Option<u64> {
        self.parts
            .iter()
            .filter(|p| p.window)
            .find_map(|p| Some(p.start + p.buf.iter().position(|b| *b != 0)? as u64))
    }
}

/// One row of the table: `magic` at `offset` means `what`.
struct Row {
    offset: u64,
    magic: &'static [u8],
    what: &'static str,
}

/// LUKS2's secondary header starts with the magic reversed; it sits right
/// after the primary's metadata area, one of these sizes.
const LUKS2_SECONDARY: &[u8] = b"SKUL\xba\xbe";
const LUKS2_AREAS: [u64; 9] = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096];
/// md superblock magic 0xa92b4efc: little-endian in 1.x; 0.90 is written
/// in the host's byte order, so both.
const MD_LE: &[u8] = &[0xfc, 0x4e, 0x2b, 0xa9];
const MD_BE: &[u8] = &[0xa9, 0x2b, 0x4e, 0xfc];
/// The ZFS uberblock magic 0x00bab10c as a 64-bit word, either byte order.
const ZFS_LE: &[u8] = &[0x0c, 0xb1, 0xba, 0, 0, 0, 0, 0];
const ZFS_BE: &[u8] = &[0, 0, 0, 0, 0, 0xba, 0xb1, 0x0c];
/// ZFS vdev label: 256 KiB, the uberblock ring in its second half, in
/// slots of at least 1 KiB.
const ZFS_LABEL: u64 = 256 * KIB;
const ZFS_RING: Range<u64> = 128 * KIB..256 * KIB;
/// bcache's superblock is at 4 KiB; its magic (a fixed UUID) at byte 24.
const BCACHE_MAGIC: &[u8] = &[
    0xc6, 0x85, 0x73, 0xf6, 0x4e, 0x1a, 0x45, 0xca, 0x82, 0x65, 0xf5, 0x7f, 0x48, 0xba, 0x6d, 0x81,
];

/// What an ext2/3/4 superblock is called in a finding (init tells ext4
/// from ext2/3 itself, by its feature flags).
pub const EXT_SUPERBLOCK: &str = "an ext2/3/4 superblock";

fn row(offset: u64, magic: &'static [u8], what: &'static str) -> Row {
    Row {
        offset,
        magic,
        what,
    }
}

/// Every place a known signature can be on a disk of `size` bytes.
fn table(size: u64) -> Vec<Row> {
    let mut t = start_rows();
    t.extend(end_rows(size));
    t
}

/// The places at a fixed offset from the start of a device, whatever its
/// size.
fn start_rows() -> Vec<Row> {
    let mut t = vec![
        row(512, b"EFI PART", "a GPT partition table"),
        row(4096, b"EFI PART", "a GPT partition table (4 KiB sectors)"),
        row(0, b"LUKS\xba\xbe\x00\x01", "a LUKS1 header"),
        row(0, b"LUKS\xba\xbe\x00\x02", "a LUKS2 header"),
        row(0, b"XFSB", "an XFS superblock"),
        row(0x10040, b"_BHRfS_M", "a btrfs superblock"),
        row(64 * MIB + 0x40, b"_BHRfS_M", "a btrfs superblock mirror"),
        row((256 << 30) + 0x40, b"_BHRfS_M", "a btrfs superblock mirror"),
        row(1024 + 56, &[0x53, 0xEF], EXT_SUPERBLOCK),
        row(82, b"FAT32   ", "a FAT filesystem boot sector"),
        row(54, b"FAT16   ", "a FAT filesystem boot sector"),
        row(54, b"FAT12   ", "a FAT filesystem boot sector"),
        row(3, b"NTFS    ", "an NTFS boot sector"),
        row(3, b"EXFAT   ", "an exFAT boot sector"),
        row(0x8001, b"CD001", "an ISO 9660 filesystem"),
        row(0, b"hsqs", "a squashfs filesystem"),
        row(0, b"sqsh", "a squashfs filesystem (big-endian)"),
        row(1024, &[0x10, 0x20, 0xF5, 0xF2], "an F2FS superblock"),
        row(1024, &[0xE2, 0xE1, 0xF5, 0xE0], "an EROFS superblock"),
        row(4096 + 24, BCACHE_MAGIC, "a bcache superblock"),
        row(0, MD_LE, "an md RAID 1.1 superblock"),
        row(4096, MD_LE, "an md RAID 1.2 superblock"),
    ];
    for kib in LUKS2_AREAS {
        t.push(row(kib * KIB, LUKS2_SECONDARY, "a LUKS2 secondary header"));
    }
    // LVM2: a "LABELONE" label in one of the first four sectors, with the
    // label type "LVM2 001" 24 bytes in.
    for sector in 0..4u64 {
        t.push(row(sector * 512, b"LABELONE", "an LVM2 label (LABELONE)"));
        t.push(row(
            sector * 512 + 24,
            b"LVM2 001",
            "an LVM2 physical volume (LVM2 001)",
        ));
    }
    // Swap: the signature ends the first page, whatever the page size was.
    for page in [4096u64, 8192, 16384, 32768, 65536] {
        for (magic, what) in [
            (&b"SWAPSPACE2"[..], "a Linux swap area (SWAPSPACE2)"),
            (b"SWAP-SPACE", "a Linux swap area (SWAP-SPACE)"),
            (
                b"S1SUSPEND\0",
                "a Linux swap area holding a hibernation image",
            ),
            (
                b"S2SUSPEND\0",
                "a Linux swap area holding a hibernation image",
            ),
        ] {
            t.push(row(page - 10, magic, what));
        }
    }
    // ZFS: two labels at the start (two more at the end, see end_rows);
    // each uberblock in the ring starts with the magic.
    zfs_labels(&mut t, [0, ZFS_LABEL]);
    t
}

fn zfs_labels(t: &mut Vec<Row>, labels: impl IntoIterator<Item = u64>) {
    for label in labels {
        for slot in (ZFS_RING.start..ZFS_RING.end).step_by(KIB as usize) {
            t.push(row(label + slot, ZFS_LE, "a ZFS vdev label (uberblock)"));
            t.push(row(label + slot, ZFS_BE, "a ZFS vdev label (uberblock)"));
        }
    }
}

/// The places measured from the end of a device of `size` bytes.
fn end_rows(size: u64) -> Vec<Row> {
    let mut t = Vec::new();
    // md 1.0: 8 KiB from the end, 4 KiB aligned. md 0.90: the last 64 KiB
    // block of the 64 KiB-aligned size.
    if size >= 8 * KIB {
        let v1_0 = (size - 8 * KIB) & !(4 * KIB - 1);
        t.push(row(v1_0, MD_LE, "an md RAID 1.0 superblock"));
    }
    if size >= 128 * KIB {
        let v0_90 = (size & !(64 * KIB - 1)) - 64 * KIB;
        t.push(row(v0_90, MD_LE, "an md RAID 0.90 superblock"));
        t.push(row(v0_90, MD_BE, "an md RAID 0.90 superblock (big-endian)"));
    }
    // ZFS: the two labels at the end of the 256 KiB-aligned size.
    let aligned = size & !(ZFS_LABEL - 1);
    if aligned >= 4 * ZFS_LABEL {
        zfs_labels(&mut t, [aligned - 2 * ZFS_LABEL, aligned - ZFS_LABEL]);
    }
    // The GPT backup header: the last sector (512-byte or 4 KiB).
    for sector in [512, 4096] {
        if size >= 2 * sector {
            t.push(row(size - sector, b"EFI PART", "a backup GPT header"));
        }
    }
    t
}

/// A 0x55AA at 510 is an MBR unless a GPT (its protective MBR) or a
/// filesystem whose boot sector is at 0 (FAT, NTFS, exFAT) explains it.
fn explains_0x55aa(s: &Signature) -> bool {
    s.what.starts_with("a GPT") || s.what.contains("boot sector")
}

/// Reads the windows (and the far locations) of a disk of `size` bytes and
/// says what is there. Reads only.
pub fn probe<D: Read + Seek>(d: &mut D, size: u64) -> Result<Contents> {
    let view = View::read(d, size)?;
    Ok(classify(&view, table(size)))
}

/// What is in `head`, the first bytes of a device whose end is not read
/// (init reads the first MiB of STATE and EPHEMERAL): only the signatures
/// at fixed offsets from the start are looked for, and a non-zero byte
/// anywhere in `head` makes it not blank.
pub fn probe_head(head: &[u8]) -> Contents {
    let view = View {
        parts: vec![Part {
            start: 0,
            buf: Cow::Borrowed(head),
            window: true,
        }],
    };
    classify(&view, start_rows())
}

fn classify(view: &View, rows: Vec<Row>) -> Contents {
    let mut found: Vec<Signature> = Vec::new();
    for r in rows {
        // One line per kind: the first location (ZFS has up to 512).
        if view.matches(r.offset, r.magic) && !found.iter().any(|f| f.what == r.what) {
            found.push(Signature {
                what: r.what,
                offset: r.offset,
            });
        }
    }
    if view.matches(510, &[0x55, 0xAA]) && !found.iter().any(explains_0x55aa) {
        found.push(Signature {
            what: "an MBR partition table (0x55AA)",
            offset: 510,
        });
    }
    if !found.is_empty() {
        return Contents::Found(found);
    }
    match view.first_non_zero() {
        Some(offset) => Contents::Unrecognised { offset },
        None => Contents::Blank,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const SIZE: u64 = 8 * MIB;

    fn disk_with(size: u64, at: u64, bytes: &[u8]) -> Cursor<Vec<u8>> {
        let mut v = vec![0u8; size as usize];
        v[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        Cursor::new(v)
    }

    fn found(d: &mut Cursor<Vec<u8>>) -> Vec<String> {
        let size = d.get_ref().len() as u64;
        probe(d, size).unwrap().describe()
    }

    #[test]
    fn zeroes_are_blank_and_nothing_is_wiped() {
        for size in [512, 4096, MIB, MIB + 512, 3 * MIB, SIZE] {
            let mut d = Cursor::new(vec![0u8; size as usize]);
            assert_eq!(probe(&mut d, size).unwrap(), Contents::Blank, "{size}");
            assert!(Contents::Blank.wipe_ranges(size).is_empty());
        }
    }

    #[test]
    fn any_non_zero_byte_in_either_window_is_refused() {
        for at in [0, 1, WINDOW - 1, SIZE - WINDOW, SIZE - 1] {
            let mut d = disk_with(SIZE, at, &[1]);
            assert_eq!(
                probe(&mut d, SIZE).unwrap(),
                Contents::Unrecognised { offset: at },
                "{at}"
            );
        }
        // Between the windows: not looked at (docs/installer.md).
        let mut d = disk_with(SIZE, 3 * MIB + 7, &[1]);
        assert_eq!(probe(&mut d, SIZE).unwrap(), Contents::Blank);
        // A disk smaller than two windows: all of it is read.
        let mut d = disk_with(MIB + 4096, MIB + 100, &[1]);
        assert_eq!(
            probe(&mut d, MIB + 4096).unwrap(),
            Contents::Unrecognised { offset: MIB + 100 }
        );
    }

    #[test]
    fn md_superblocks_at_each_version_location() {
        // 1.0: 8 KiB before the end, rounded down to 4 KiB.
        let size = SIZE + 3 * 512;
        let v1_0 = (size - 8192) / 4096 * 4096;
        assert_eq!(
            found(&mut disk_with(size, v1_0, MD_LE)),
            [format!("an md RAID 1.0 superblock at offset {v1_0}")]
        );
        assert_eq!(
            found(&mut disk_with(SIZE, 0, MD_LE)),
            ["an md RAID 1.1 superblock at offset 0"]
        );
        assert_eq!(
            found(&mut disk_with(SIZE, 4096, MD_LE)),
            ["an md RAID 1.2 superblock at offset 4096"]
        );
        // 0.90: the last whole 64 KiB block but one of the aligned size.
        let v0_90 = (size / 65536 - 1) * 65536;
        assert_eq!(
            found(&mut disk_with(size, v0_90, MD_LE)),
            [format!("an md RAID 0.90 superblock at offset {v0_90}")]
        );
    }

    #[test]
    fn zfs_uberblocks_in_every_label() {
        // zpool is not in Debian main: the labels are checked here only.
        let size = SIZE + 100 * 1024;
        let aligned = size / ZFS_LABEL * ZFS_LABEL;
        for label in [0, ZFS_LABEL, aligned - 2 * ZFS_LABEL, aligned - ZFS_LABEL] {
            for (slot, magic) in [(128 * KIB, ZFS_LE), (255 * KIB, ZFS_BE)] {
                let at = label + slot;
                assert_eq!(
                    found(&mut disk_with(size, at, magic)),
                    [format!("a ZFS vdev label (uberblock) at offset {at}")]
                );
            }
        }
    }

    #[test]
    fn lvm_label_in_any_of_the_first_four_sectors() {
        for sector in 0..4u64 {
            let mut label = [0u8; 32];
            label[..8].copy_from_slice(b"LABELONE");
            label[24..].copy_from_slice(b"LVM2 001");
            let at = sector * 512;
            let text = found(&mut disk_with(SIZE, at, &label)).join("; ");
            assert!(text.contains(&format!("LVM2 label (LABELONE) at offset {at}")));
            assert!(text.contains("LVM2 physical volume (LVM2 001)"), "{text}");
        }
    }

    #[test]
    fn swap_at_the_end_of_any_page_size() {
        for page in [4096u64, 65536] {
            assert_eq!(
                found(&mut disk_with(SIZE, page - 10, b"SWAPSPACE2")),
                [format!(
                    "a Linux swap area (SWAPSPACE2) at offset {}",
                    page - 10
                )]
            );
        }
    }

    #[test]
    fn signatures_past_the_first_mib() {
        // LUKS2 with the largest metadata area keeps its second header at
        // 4 MiB; a btrfs whose first superblock was zeroed has a mirror at
        // 64 MiB. Both are refused and wiped.
        let size = 80 * MIB;
        for (at, what) in [
            (4 * MIB, &b"SKUL\xba\xbe"[..]),
            (64 * MIB + 0x40, b"_BHRfS_M"),
        ] {
            let mut d = disk_with(size, at, what);
            let c = probe(&mut d, size).unwrap();
            assert!(
                matches!(&c, Contents::Found(s) if s[0].offset == at),
                "{c:?}"
            );
            let far = at & !(FAR_LEN - 1);
            assert!(c.wipe_ranges(size).contains(&(far..far + FAR_LEN)));
        }
    }

    #[test]
    fn boot_sectors_are_not_mbrs() {
        let mut fat = vec![0u8; SIZE as usize];
        fat[82..90].copy_from_slice(b"FAT32   ");
        fat[510..512].copy_from_slice(&[0x55, 0xAA]);
        assert_eq!(
            found(&mut Cursor::new(fat)),
            ["a FAT filesystem boot sector at offset 82"]
        );
        assert_eq!(
            found(&mut disk_with(SIZE, 510, &[0x55, 0xAA])),
            ["an MBR partition table (0x55AA) at offset 510"]
        );
    }

    #[test]
    fn a_head_is_probed_from_its_start_only() {
        // init's view of a partition: its first MiB, the end unknown. A
        // magic where a backup GPT would sit if the head were the whole
        // device is only unrecognised data.
        let mut head = vec![0u8; MIB as usize];
        assert_eq!(probe_head(&head), Contents::Blank);
        let end = MIB - 512;
        head[end as usize..end as usize + 8].copy_from_slice(b"EFI PART");
        assert_eq!(probe_head(&head), Contents::Unrecognised { offset: end });
        head[0x10040..0x10048].copy_from_slice(b"_BHRfS_M");
        assert_eq!(
            probe_head(&head).describe(),
            ["a btrfs superblock at offset 65600"]
        );
        // A head shorter than a row's offset simply lacks it.
        assert_eq!(
            probe_head(&[0, 0, 0, 0, 1]),
            Contents::Unrecognised { offset: 4 }
        );
    }

    #[test]
    fn wipe_covers_both_windows() {
        let c = Contents::Unrecognised { offset: 5 };
        assert_eq!(c.wipe_ranges(SIZE), [0..WINDOW, SIZE - WINDOW..SIZE]);
        assert_eq!(c.wipe_ranges(MIB + 512), [0..MIB, MIB..MIB + 512]);
        // A disk no larger than one window: wiped whole, once.
        let w = c.wipe_ranges(4096);
        assert_eq!((w.len(), w[0].start, w[0].end), (1, 0, 4096));
    }
}

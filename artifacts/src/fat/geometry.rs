//! Where things live in a FAT32 volume: boot sector fields, FAT and data
//! region offsets, and how the writer picks a cluster size.

use super::FatError;

/// FAT32 is only recognised as such with at least this many clusters
/// (fewer makes it FAT16 by the specification's count-of-clusters rule).
pub const MIN_CLUSTERS: u32 = 65525;
/// Largest cluster number + 1 that is not a reserved/bad/end marker.
const MAX_CLUSTERS: u32 = 0x0FFF_FFF5;
/// Total sectors is a 32-bit field.
pub const MAXIMUM_SIZE: u64 = u32::MAX as u64 * 512;
const SECTOR: u32 = 512;
const RESERVED: u32 = 32;
pub(crate) const MEDIA: u8 = 0xF8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub bytes_per_sector: u32,
    pub sectors_per_cluster: u32,
    pub reserved_sectors: u32,
    pub fat_count: u32,
    pub fat_sectors: u32,
    pub total_sectors: u32,
    pub root_cluster: u32,
    pub fsinfo_sector: u32,
    pub backup_boot_sector: u32,
}

impl Geometry {
    pub fn cluster_size(&self) -> u64 {
        self.bytes_per_sector as u64 * self.sectors_per_cluster as u64
    }
    pub fn fat_offset(&self, copy: u32) -> u64 {
        (self.reserved_sectors as u64 + copy as u64 * self.fat_sectors as u64)
            * self.bytes_per_sector as u64
    }
    pub fn data_offset(&self) -> u64 {
        self.fat_offset(self.fat_count)
    }
    /// Number of data clusters; valid cluster numbers are 2..cluster_count+2.
    pub fn cluster_count(&self) -> u32 {
        let data = self.total_sectors - self.reserved_sectors - self.fat_count * self.fat_sectors;
        data / self.sectors_per_cluster
    }
    pub fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_offset() + (cluster as u64 - 2) * self.cluster_size()
    }
    pub fn total_bytes(&self) -> u64 {
        self.total_sectors as u64 * self.bytes_per_sector as u64
    }

    /// The layout the writer uses for a volume of `size` bytes: 512-byte
    /// sectors, 32 reserved sectors, two FATs, root directory at cluster 2.
    /// The cluster size follows the table mkfs.fat and Microsoft use
    /// (512 B up to 260 MiB, 4 KiB up to 8 GiB, ...), halved until the volume
    /// has the 65525 clusters FAT32 needs.
    pub fn for_size(size: u64) -> Result<Geometry, FatError> {
        if !size.is_multiple_of(SECTOR as u64) {
            return Err(FatError::NotSectorMultiple { size });
        }
        if size > MAXIMUM_SIZE {
            return Err(FatError::TooLarge {
                size,
                maximum: MAXIMUM_SIZE,
            });
        }
        let total = (size / SECTOR as u64) as u32;
        let mut spc: u32 = match total {
            0..=532_480 => 1,
            532_481..=16_777_216 => 8,
            16_777_217..=33_554_432 => 16,
            33_554_433..=67_108_864 => 32,
            _ => 64,
        };
        loop {
            if let Some(g) = layout(total, spc) {
                if g.cluster_count() >= MIN_CLUSTERS {
                    return Ok(g);
                }
            }
            if spc == 1 {
                return Err(FatError::TooSmall {
                    size,
                    minimum: minimum_size(),
                });
            }
            spc /= 2;
        }
    }
}

/// The smallest byte size [`Geometry::for_size`] accepts.
pub fn minimum_size() -> u64 {
    let ok = |t: u32| layout(t, 1).is_some_and(|g| g.cluster_count() >= MIN_CLUSTERS);
    let (mut lo, mut hi) = (MIN_CLUSTERS, 2 * MIN_CLUSTERS);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if ok(mid) {
            hi = mid
        } else {
            lo = mid + 1
        }
    }
    lo as u64 * SECTOR as u64
}

/// Smallest FAT that still covers every cluster it leaves room for.
fn layout(total: u32, spc: u32) -> Option<Geometry> {
    let overhead = RESERVED + 2;
    if total <= overhead + spc {
        return None;
    }
    let clusters = |fat: u32| (total.saturating_sub(RESERVED + 2 * fat)) / spc;
    let needs = |fat: u32| ((clusters(fat) as u64 + 2) * 4).div_ceil(SECTOR as u64) as u32;
    let (mut lo, mut hi) = (1u32, (total - RESERVED) / 2);
    if needs(hi) > hi {
        return None;
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if needs(mid) <= mid {
            hi = mid
        } else {
            lo = mid + 1
        }
    }
    let g = Geometry {
        bytes_per_sector: SECTOR,
        sectors_per_cluster: spc,
        reserved_sectors: RESERVED,
        fat_count: 2,
        fat_sectors: lo,
        total_sectors: total,
        root_cluster: 2,
        fsinfo_sector: 1,
        backup_boot_sector: 6,
    };
    (g.cluster_count() > 0 && g.cluster_count() < MAX_CLUSTERS).then_some(g)
}

/// The boot sector (also written as the backup at sector 6).
pub(crate) fn boot_sector(g: &Geometry, volume_id: u32, label: &[u8; 11]) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    b[3..11].copy_from_slice(b"CAIRN   ");
    put16(&mut b, 11, g.bytes_per_sector as u16);
    b[13] = g.sectors_per_cluster as u8;
    put16(&mut b, 14, g.reserved_sectors as u16);
    b[16] = g.fat_count as u8;
    b[21] = MEDIA;
    // CHS geometry is meaningless for UEFI; these are the values mkfs.fat
    // uses for images, so firmware that looks at them sees something sane.
    put16(&mut b, 24, 32);
    put16(&mut b, 26, 64);
    put32(&mut b, 32, g.total_sectors);
    put32(&mut b, 36, g.fat_sectors);
    put32(&mut b, 44, g.root_cluster);
    put16(&mut b, 48, g.fsinfo_sector as u16);
    put16(&mut b, 50, g.backup_boot_sector as u16);
    b[64] = 0x80;
    b[66] = 0x29;
    put32(&mut b, 67, volume_id);
    b[71..82].copy_from_slice(label);
    b[82..90].copy_from_slice(b"FAT32   ");
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

pub(crate) const FSINFO_FREE: usize = 488;

pub(crate) fn fsinfo_sector(free: u32, next_free: u32) -> [u8; 512] {
    let mut b = [0u8; 512];
    put32(&mut b, 0, 0x4161_5252);
    put32(&mut b, 484, 0x6141_7272);
    put32(&mut b, FSINFO_FREE, free);
    put32(&mut b, FSINFO_FREE + 4, next_free);
    put32(&mut b, 508, 0xAA55_0000);
    b
}

fn bad(field: &'static str, offset: u64, value: u64, expected: &str) -> FatError {
    FatError::BadBootSector {
        field,
        offset,
        value,
        expected: expected.to_string(),
    }
}

/// Reads and checks a boot sector; `len` is the byte length of the region
/// the volume must fit in.
pub(crate) fn parse_boot_sector(b: &[u8; 512], len: u64) -> Result<Geometry, FatError> {
    let sig = u16::from_le_bytes([b[510], b[511]]);
    if sig != 0xAA55 {
        return Err(bad("signature", 510, sig as u64, "0xAA55 (bytes 55 AA)"));
    }
    let bps = get16(b, 11) as u32;
    if !matches!(bps, 512 | 1024 | 2048 | 4096) {
        return Err(bad(
            "bytes_per_sector",
            11,
            bps as u64,
            "512, 1024, 2048 or 4096",
        ));
    }
    let spc = b[13] as u32;
    if !spc.is_power_of_two() || spc > 128 {
        return Err(bad(
            "sectors_per_cluster",
            13,
            spc as u64,
            "a power of two 1..=128",
        ));
    }
    let reserved = get16(b, 14) as u32;
    if reserved < 2 {
        return Err(bad("reserved_sectors", 14, reserved as u64, ">= 2"));
    }
    let fats = b[16] as u32;
    if !(1..=4).contains(&fats) {
        return Err(bad("fat_count", 16, fats as u64, "1..=4"));
    }
    let root_entries = get16(b, 17);
    if root_entries != 0 {
        return Err(bad("root_entries", 17, root_entries as u64, "0 on FAT32"));
    }
    let total16 = get16(b, 19);
    if total16 != 0 {
        return Err(bad("total_sectors_16", 19, total16 as u64, "0 on FAT32"));
    }
    let fat16 = get16(b, 22);
    if fat16 != 0 {
        return Err(bad("fat_size_16", 22, fat16 as u64, "0 on FAT32"));
    }
    let total = get32(b, 32);
    let fat_sectors = get32(b, 36);
    if fat_sectors == 0 {
        return Err(bad("fat_size_32", 36, 0, "> 0"));
    }
    let ext_flags = get16(b, 40);
    if ext_flags & 0x80 != 0 {
        return Err(bad(
            "ext_flags",
            40,
            ext_flags as u64,
            "FAT mirroring enabled (bit 7 clear)",
        ));
    }
    if total as u64 * bps as u64 > len {
        return Err(bad(
            "total_sectors_32",
            32,
            total as u64,
            &format!("at most {} for a region of {len} bytes", len / bps as u64),
        ));
    }
    let meta = reserved as u64 + fats as u64 * fat_sectors as u64;
    if meta + spc as u64 > total as u64 {
        return Err(bad(
            "total_sectors_32",
            32,
            total as u64,
            &format!("more than the {meta} reserved and FAT sectors"),
        ));
    }
    let g = Geometry {
        bytes_per_sector: bps,
        sectors_per_cluster: spc,
        reserved_sectors: reserved,
        fat_count: fats,
        fat_sectors,
        total_sectors: total,
        root_cluster: get32(b, 44),
        fsinfo_sector: get16(b, 48) as u32,
        backup_boot_sector: get16(b, 50) as u32,
    };
    let cc = g.cluster_count();
    if cc < MIN_CLUSTERS {
        return Err(bad(
            "total_sectors_32",
            32,
            total as u64,
            &format!("enough for 65525 clusters (has {cc}): not FAT32"),
        ));
    }
    if (fat_sectors as u64 * bps as u64) / 4 < cc as u64 + 2 {
        return Err(bad(
            "fat_size_32",
            36,
            fat_sectors as u64,
            &format!("enough sectors for {} entries", cc as u64 + 2),
        ));
    }
    if g.root_cluster < 2 || g.root_cluster >= cc + 2 {
        return Err(bad(
            "root_cluster",
            44,
            g.root_cluster as u64,
            &format!("2..{}", cc + 2),
        ));
    }
    Ok(g)
}

pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_sizes() {
        let g = Geometry::for_size(64 << 20).unwrap();
        assert_eq!(g.cluster_size(), 512);
        let g = Geometry::for_size(1 << 30).unwrap();
        assert_eq!(g.cluster_size(), 4096);
        assert!(g.cluster_count() >= MIN_CLUSTERS);
        let min = minimum_size();
        assert!(Geometry::for_size(min).is_ok());
        assert!(matches!(
            Geometry::for_size(min - 512),
            Err(FatError::TooSmall { .. })
        ));
    }
}

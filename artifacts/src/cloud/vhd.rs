//! Fixed VHD for Azure: the disk bytes, then a 512-byte footer.
//!
//! Azure wants the virtual size to be a whole number of MiB, so the disk is
//! padded with zeros (a hole in the output) up to the next MiB; the footer's
//! sizes are the padded size. Padding rather than refusing keeps the raw
//! writer free of provider rules; the extra tail is unpartitioned space that
//! GPT tools report as free.

use std::path::Path;

use super::raw::Sink;
use super::{derive, CloudError, RawImage};

pub const FOOTER_LEN: usize = 512;
const MIB: u64 = 1 << 20;
/// 2000-01-01T00:00:00Z, the VHD timestamp origin, in Unix seconds.
const VHD_EPOCH: u64 = 946_684_800;
/// Readers that pick the size by creator (qemu, vhd-util) take the footer's
/// current size for Hyper-V images instead of the lossy CHS geometry, which
/// is also what Azure does.
const CREATOR_APP: &[u8; 4] = b"win ";
const CREATOR_VERSION: u32 = 0x000a_0000;
const CREATOR_HOST: &[u8; 4] = b"Wi2k";
const DISK_TYPE_FIXED: u32 = 2;

/// What [`convert`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdSummary {
    /// The raw size rounded up to a MiB: the size the VM sees.
    pub virtual_size: u64,
    pub file_size: u64,
    pub unique_id: [u8; 16],
}

pub fn convert(raw: &Path, out: &Path, epoch: u64, seed: &[u8]) -> Result<VhdSummary, CloudError> {
    let img = RawImage::open(raw)?;
    let timestamp = epoch
        .checked_sub(VHD_EPOCH)
        .ok_or(CloudError::EpochOutOfRange {
            epoch,
            format: "VHD",
            why: "before 2000-01-01",
        })?;
    let timestamp = u32::try_from(timestamp).map_err(|_| CloudError::EpochOutOfRange {
        epoch,
        format: "VHD",
        why: "more than 2^32 s after 2000-01-01",
    })?;
    let virtual_size = img.size().div_ceil(MIB) * MIB;
    let mut unique_id = [0u8; 16];
    unique_id.copy_from_slice(&derive(seed, "vhd unique id")[..16]);

    let sink = Sink::create(out)?;
    let raw_size = img.size();
    img.for_each_chunk(MIB, |offset, chunk| {
        let len = (raw_size - offset).min(MIB) as usize;
        sink.write_at(offset, &chunk[..len])
    })?;
    let footer = footer(virtual_size, timestamp, unique_id);
    // Extending first keeps the padding a hole; the footer write then only
    // touches the last sector.
    sink.set_len(virtual_size + FOOTER_LEN as u64)?;
    sink.write_at(virtual_size, &footer)?;
    sink.finish()?;
    Ok(VhdSummary {
        virtual_size,
        file_size: virtual_size + FOOTER_LEN as u64,
        unique_id,
    })
}

/// The footer for a fixed disk of `size` bytes (big-endian fields, layout
/// from the VHD Image Format Specification).
pub fn footer(size: u64, timestamp: u32, unique_id: [u8; 16]) -> [u8; FOOTER_LEN] {
    let mut f = [0u8; FOOTER_LEN];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit, always set
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // fixed disks have no dynamic header
    f[24..28].copy_from_slice(&timestamp.to_be_bytes());
    f[28..32].copy_from_slice(CREATOR_APP);
    f[32..36].copy_from_slice(&CREATOR_VERSION.to_be_bytes());
    f[36..40].copy_from_slice(CREATOR_HOST);
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    let (c, h, s) = chs(size / 512);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&DISK_TYPE_FIXED.to_be_bytes());
    f[68..84].copy_from_slice(&unique_id);
    let sum = checksum(&f);
    f[64..68].copy_from_slice(&sum.to_be_bytes());
    f
}

/// One's complement of the byte sum, with the checksum field counted as 0.
pub fn checksum(footer: &[u8; FOOTER_LEN]) -> u32 {
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(b as u32));
    !sum
}

/// CHS geometry per the algorithm in the VHD specification's appendix.
pub fn chs(total_sectors: u64) -> (u16, u8, u8) {
    let total = total_sectors.min(65535 * 16 * 255);
    let (spt, heads, cyl_times_heads);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cyl_times_heads = total / spt;
    } else {
        let mut s = 17;
        let mut cth = total / s;
        let mut h = cth.div_ceil(1024).max(4);
        if cth >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            cth = total / s;
        }
        if cth >= h * 1024 {
            s = 63;
            h = 16;
            cth = total / s;
        }
        spt = s;
        heads = h;
        cyl_times_heads = cth;
    }
    ((cyl_times_heads / heads) as u16, heads as u8, spt as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chs_matches_spec_examples() {
        // 127 MiB fits 17 sectors/track with 15 heads: 15299 / 15.
        assert_eq!(chs(127 * 2048), (1019, 15, 17));
        // 1 GiB overflows 17 and 31 sectors/track: 2097152 / 63 / 16.
        assert_eq!(chs(2 << 20), (2080, 16, 63));
        // Large disks clamp to the maximum geometry.
        assert_eq!(chs(u64::MAX / 512), (65535, 16, 255));
    }
}

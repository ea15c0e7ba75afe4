//! 32-byte directory entries: encoding, timestamps and parsing a directory.

use super::geometry::{get16, get32, put16, put32};
use super::names;
use crate::date::Civil;

pub(crate) const ATTR_DIR: u8 = 0x10;
pub(crate) const ATTR_VOLUME: u8 = 0x08;
pub(crate) const ATTR_LFN: u8 = 0x0F;
pub(crate) const DELETED: u8 = 0xE5;

/// A FAT timestamp (2-second resolution, local time with no zone, which we
/// treat as UTC).
///
/// FAT dates run from 1980-01-01 to 2107-12-31: a `SOURCE_DATE_EPOCH`
/// before 1980 (including the common 0) is clamped to 1980-01-01 00:00:00,
/// one after the range to 2107-12-31 23:59:58.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DosTime {
    pub date: u16,
    pub time: u16,
    /// Hundredths of a second added to `time` (0 or 100) in creation stamps.
    pub tenths: u8,
}

impl DosTime {
    pub fn from_epoch(epoch: u64) -> DosTime {
        const MIN: u64 = 315_532_800; // 1980-01-01T00:00:00Z
        const MAX: u64 = 4_354_819_198; // 2107-12-31T23:59:58Z
        let c = Civil::from_epoch(epoch.clamp(MIN, MAX));
        DosTime {
            date: (((c.year - 1980) as u16) << 9) | (u16::from(c.month) << 5) | u16::from(c.day),
            time: (u16::from(c.hour) << 11) | (u16::from(c.minute) << 5) | u16::from(c.second / 2),
            tenths: (c.second % 2) * 100,
        }
    }
}

pub(crate) fn short_entry(
    name: &[u8; 11],
    attr: u8,
    cluster: u32,
    size: u32,
    t: DosTime,
) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    e[13] = t.tenths;
    put16(&mut e, 14, t.time);
    put16(&mut e, 16, t.date);
    put16(&mut e, 18, t.date);
    put16(&mut e, 22, t.time);
    put16(&mut e, 24, t.date);
    set_cluster_and_size(&mut e, cluster, size);
    e
}

/// Points a short entry at `cluster` holding `size` bytes; nothing else in
/// it changes (`replace_file` relies on that: its name cannot tear).
pub(crate) fn set_cluster_and_size(e: &mut [u8; 32], cluster: u32, size: u32) {
    put16(e, 20, (cluster >> 16) as u16);
    put16(e, 26, cluster as u16);
    put32(e, 28, size);
}

/// The entries for one name: long-name entries (if needed) then the short one.
pub(crate) fn entry_set(long: &str, short: &[u8; 11], lfn: bool, tail: &[u8; 32]) -> Vec<[u8; 32]> {
    let mut out = if lfn {
        names::lfn_entries(long, names::checksum(short))
    } else {
        Vec::new()
    };
    let mut e = *tail;
    e[..11].copy_from_slice(short);
    out.push(e);
    out
}

/// One live entry of a directory.
#[derive(Debug, Clone)]
pub(crate) struct Parsed {
    pub name: String,
    pub short: [u8; 11],
    pub attr: u8,
    pub cluster: u32,
    pub size: u32,
    /// First slot of the entry set (the first long-name entry, if any).
    pub first_slot: usize,
    /// Slot of the short entry.
    pub slot: usize,
    pub raw: [u8; 32],
}

impl Parsed {
    pub fn is_dir(&self) -> bool {
        self.attr & ATTR_DIR != 0
    }
}

/// Live entries of a directory's bytes, skipping `.`/`..`, the volume label
/// and deleted entries. Long names whose checksum or sequence is broken are
/// ignored in favour of the short name.
pub(crate) fn parse_dir(bytes: &[u8]) -> Vec<Parsed> {
    let mut out = Vec::new();
    // (expected next ordinal, checksum, first slot, units by ordinal)
    let mut lfn: Option<(u8, u8, usize, Vec<[u16; 13]>)> = None;
    for (i, e) in bytes.chunks_exact(32).enumerate() {
        if e[0] == 0 {
            break;
        }
        if e[0] == DELETED {
            lfn = None;
            continue;
        }
        let attr = e[11];
        if attr & 0x3F == ATTR_LFN {
            let ord = e[0] & 0x1F;
            if e[0] & 0x40 != 0 && ord > 0 {
                lfn = Some((ord - 1, e[13], i, vec![names::lfn_units(e)]));
            } else {
                match &mut lfn {
                    Some((next, sum, _, parts)) if *next == ord && *sum == e[13] && ord > 0 => {
                        *next -= 1;
                        parts.push(names::lfn_units(e));
                    }
                    _ => lfn = None,
                }
            }
            continue;
        }
        let mut short = [0u8; 11];
        short.copy_from_slice(&e[..11]);
        let pending = lfn.take();
        if attr & ATTR_VOLUME != 0 || short[0] == b'.' {
            continue;
        }
        let (name, first) = match pending {
            Some((0, sum, first, parts)) if sum == names::checksum(&short) => {
                let units: Vec<u16> = parts.iter().rev().flatten().copied().collect();
                let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
                (String::from_utf16_lossy(&units[..end]), first)
            }
            _ => (names::short_display(&short, e[12]), i),
        };
        let mut raw = [0u8; 32];
        raw.copy_from_slice(e);
        out.push(Parsed {
            name,
            short,
            attr,
            cluster: ((get16(e, 20) as u32) << 16) | get16(e, 26) as u32,
            size: get32(e, 28),
            first_slot: first,
            slot: i,
            raw,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let t = DosTime::from_epoch(0);
        assert_eq!((t.date, t.time), ((1 << 5) | 1, 0));
        // 2023-11-14T22:13:21Z
        let t = DosTime::from_epoch(1_700_000_001);
        assert_eq!(t.date, (43 << 9) | (11 << 5) | 14);
        assert_eq!(t.time, (22 << 11) | (13 << 5) | 10);
        assert_eq!(t.tenths, 100);
        let t = DosTime::from_epoch(u64::MAX);
        assert_eq!(t.date, (127 << 9) | (12 << 5) | 31);
    }
}

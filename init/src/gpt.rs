//! A reader for the primary GPT: just enough to find a partition by
//! PARTUUID or name on a disk init has never seen. Both CRCs are checked so a
//! half-written table is not trusted.

use std::io::{Read, Seek, SeekFrom};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum GptError {
    #[error("{disk}: reading {len} bytes at offset {offset}: {source}")]
    Io {
        disk: String,
        offset: u64,
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("{disk}: no GPT signature at LBA 1 (offset {offset})")]
    NoSignature { disk: String, offset: u64 },
    #[error("{disk}: GPT header CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    HeaderCrc {
        disk: String,
        stored: u32,
        computed: u32,
    },
    #[error("{disk}: GPT header field {field} = {value} is out of range")]
    Field {
        disk: String,
        field: &'static str,
        value: u64,
    },
    #[error("{disk}: GPT partition entry array CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    EntriesCrc {
        disk: String,
        stored: u32,
        computed: u32,
    },
}

/// A GUID as stored on disk (first three fields little endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    pub const ZERO: Guid = Guid([0; 16]);

    /// From the 16 bytes of a UUID in string (big-endian) order.
    pub fn from_uuid_bytes(b: [u8; 16]) -> Guid {
        let mut d = b;
        d[0..4].reverse();
        d[4..6].reverse();
        d[6..8].reverse();
        Guid(d)
    }

    pub fn uuid_bytes(&self) -> [u8; 16] {
        self.swap()
    }

    fn swap(self) -> [u8; 16] {
        let mut d = self.0;
        d[0..4].reverse();
        d[4..6].reverse();
        d[6..8].reverse();
        d
    }

    /// The slot PARTUUID of design.md: the first 128 bits of the verity root
    /// hash read as a UUID string.
    pub fn from_root_hash(hash: &[u8; 32]) -> Guid {
        let mut b = [0u8; 16];
        b.copy_from_slice(&hash[..16]);
        Guid::from_uuid_bytes(b)
    }

    pub fn parse(s: &str) -> Option<Guid> {
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        let dashes: Vec<usize> = s.match_indices('-').map(|(i, _)| i).collect();
        if hex.len() != 32 || dashes != [8, 13, 18, 23] || !hex.is_ascii() {
            return None;
        }
        let mut b = [0u8; 16];
        for (i, slot) in b.iter_mut().enumerate() {
            *slot = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Guid::from_uuid_bytes(b))
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.uuid_bytes();
        for (i, x) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{x:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Guid({self})")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as the kernel numbers partitions (`vda2` is index 2).
    pub index: u32,
    pub type_guid: Guid,
    pub part_guid: Guid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub disk_guid: Guid,
    pub sector_size: u64,
    pub partitions: Vec<Partition>,
}

impl Table {
    pub fn by_guid(&self, g: &Guid) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.part_guid == *g)
    }
    pub fn by_name(&self, name: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.name == name)
    }
}

pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

fn read_at<R: Read + Seek>(
    r: &mut R,
    disk: &str,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, GptError> {
    let io = |source| GptError::Io {
        disk: disk.to_string(),
        offset,
        len,
        source,
    };
    r.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).map_err(io)?;
    Ok(buf)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4-byte slice"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8-byte slice"))
}

/// Reads the primary GPT of `r` (a disk or image file); `disk` names it in errors.
pub fn read<R: Read + Seek>(r: &mut R, disk: &str, sector_size: u64) -> Result<Table, GptError> {
    let field = |field: &'static str, value: u64| GptError::Field {
        disk: disk.to_string(),
        field,
        value,
    };
    if !(512..=65536).contains(&sector_size) || !sector_size.is_power_of_two() {
        return Err(field("sector_size", sector_size));
    }
    let hdr = read_at(r, disk, sector_size, sector_size as usize)?;
    if &hdr[0..8] != b"EFI PART" {
        return Err(GptError::NoSignature {
            disk: disk.to_string(),
            offset: sector_size,
        });
    }
    let hsize = u32_at(&hdr, 12) as u64;
    if !(92..=sector_size).contains(&hsize) {
        return Err(field("header_size", hsize));
    }
    let mut h = hdr[..hsize as usize].to_vec();
    let stored = u32_at(&h, 16);
    h[16..20].fill(0);
    let computed = crc32(&h);
    if stored != computed {
        return Err(GptError::HeaderCrc {
            disk: disk.to_string(),
            stored,
            computed,
        });
    }
    let mut dg = [0u8; 16];
    dg.copy_from_slice(&hdr[56..72]);
    let entries_lba = u64_at(&hdr, 72);
    let count = u32_at(&hdr, 80) as u64;
    let esize = u32_at(&hdr, 84) as u64;
    if !(128..=4096).contains(&esize) || esize & 7 != 0 {
        return Err(field("partition_entry_size", esize));
    }
    // The spec allows larger arrays, but no real disk needs more than a few
    // thousand entries, and this bounds the allocation a corrupt header causes.
    if count * esize > 1 << 20 {
        return Err(field("num_partition_entries", count));
    }
    let off = entries_lba
        .checked_mul(sector_size)
        .filter(|_| entries_lba >= 2)
        .ok_or_else(|| field("partition_entry_lba", entries_lba))?;
    let arr = read_at(r, disk, off, (count * esize) as usize)?;
    let stored = u32_at(&hdr, 88);
    let computed = crc32(&arr);
    if stored != computed {
        return Err(GptError::EntriesCrc {
            disk: disk.to_string(),
            stored,
            computed,
        });
    }
    let mut partitions = Vec::new();
    for (i, e) in arr.chunks_exact(esize as usize).enumerate() {
        let mut t = [0u8; 16];
        t.copy_from_slice(&e[0..16]);
        if t == [0; 16] {
            continue;
        }
        let mut p = [0u8; 16];
        p.copy_from_slice(&e[16..32]);
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        partitions.push(Partition {
            index: i as u32 + 1,
            type_guid: Guid(t),
            part_guid: Guid(p),
            first_lba: u64_at(e, 32),
            last_lba: u64_at(e, 40),
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok(Table {
        disk_guid: Guid(dg),
        sector_size,
        partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn guid_round_trip_and_byte_order() {
        let s = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
        let g = Guid::parse(s).unwrap();
        assert_eq!(g.0[..4], [0x28, 0x73, 0x2a, 0xc1]);
        assert_eq!(g.to_string(), s);
        assert_eq!(Guid::parse(&s.to_uppercase()).unwrap(), g);
        assert_eq!(Guid::parse("c12a7328f81f11d2ba4b00a0c93ec93b"), None);
        assert_eq!(Guid::parse("c12a7328-f81f-11d2-ba4b-00a0c93ec93"), None);
        let mut h = [0u8; 32];
        for (i, b) in h.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(
            Guid::from_root_hash(&h).to_string(),
            "00010203-0405-0607-0809-0a0b0c0d0e0f"
        );
    }
}

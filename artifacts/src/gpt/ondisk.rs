//! Byte layouts of the protective MBR, the GPT header and entries.
//!
//! The encoders are public so that writers which are not plain disks (the
//! hybrid ISO, whose ESP sits on an ISO extent) produce the very same bytes
//! as `DiskWriter`.

use super::layout::last_usable_lba;
use super::{
    DiskLayout, GptError, Guid, HeaderCopy, Partition, BACKUP_SECTORS, ENTRY_COUNT, ENTRY_SIZE,
    NAME_UNITS, PRIMARY_SECTORS, SECTOR, TABLE_SECTORS,
};

pub(crate) const SIGNATURE: &[u8; 8] = b"EFI PART";
pub(crate) const REVISION: u32 = 0x0001_0000;
pub(crate) const HEADER_SIZE: u32 = 92;

/// LBA 0 of a disk of `sectors` sectors: one 0xEE record covering the
/// disk (capped at 2^32 - 1 sectors, as the MBR cannot say more).
pub fn protective_mbr(sectors: u64) -> [u8; 512] {
    let mut m = [0u8; 512];
    let e = &mut m[446..462];
    // CHS fields as the UEFI spec asks: start 0/0/2, end saturated.
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let len = sectors.saturating_sub(1).min(u32::MAX as u64) as u32;
    e[12..16].copy_from_slice(&len.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

pub(crate) fn check_mbr(m: &[u8; 512]) -> Result<(), GptError> {
    if m[510..512] != [0x55, 0xAA] {
        return Err(GptError::BadMbr {
            what: format!(
                "boot signature at offset 510 is {:02x}{:02x}, expected 55aa",
                m[510], m[511]
            ),
        });
    }
    let protective = (0..4).any(|i| m[446 + 16 * i + 4] == 0xEE);
    if !protective {
        return Err(GptError::BadMbr {
            what: "no partition record of type 0xEE (protective) at offsets 446..510".into(),
        });
    }
    Ok(())
}

/// The whole entry array (`ENTRY_COUNT` entries, unused ones zero), each
/// partition at its `slot`.
pub fn encode_entries(parts: &[Partition]) -> Result<Vec<u8>, GptError> {
    if let Some(p) = parts.iter().find(|p| p.slot >= ENTRY_COUNT) {
        return Err(GptError::BadEntry {
            slot: p.slot,
            offset: 0,
            what: format!("this writer keeps only {ENTRY_COUNT} entries"),
        });
    }
    let mut t = vec![0u8; (ENTRY_COUNT * ENTRY_SIZE) as usize];
    for p in parts {
        let e = &mut t[(p.slot * ENTRY_SIZE) as usize..][..ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&p.type_guid.to_disk());
        e[16..32].copy_from_slice(&p.guid.to_disk());
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
        for (i, u) in p.name.encode_utf16().take(NAME_UNITS).enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
    }
    Ok(t)
}

/// One encoded copy of the table: the entry array and the header that
/// vouches for it, each with the LBA it belongs at. Kept apart so a writer
/// can put the table down before its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedCopy {
    pub header_lba: u64,
    pub header: [u8; 512],
    pub entries_lba: u64,
    pub entries: Vec<u8>,
}

/// Encodes the primary (LBAs 1..=33) or backup (the last 33 LBAs) copy of
/// `layout`'s table, with the standard usable range between them.
pub fn encode_copy(layout: &DiskLayout, copy: HeaderCopy) -> Result<EncodedCopy, GptError> {
    let sectors = layout.sectors();
    if !layout.disk_size.is_multiple_of(SECTOR) {
        return Err(GptError::DiskSizeUnaligned {
            size: layout.disk_size,
        });
    }
    // MBR, both copies and at least one usable sector between them.
    if sectors < PRIMARY_SECTORS + BACKUP_SECTORS + 1 {
        return Err(GptError::DiskTooSmall {
            size: layout.disk_size,
        });
    }
    let entries = encode_entries(&layout.partitions)?;
    let last = sectors - 1;
    let primary = copy == HeaderCopy::Primary;
    let h = Header {
        my_lba: if primary { 1 } else { last },
        alternate_lba: if primary { last } else { 1 },
        first_usable: PRIMARY_SECTORS,
        last_usable: last_usable_lba(sectors),
        disk_guid: layout.disk_guid,
        entries_lba: if primary { 2 } else { last - TABLE_SECTORS },
        entry_count: ENTRY_COUNT,
        entry_size: ENTRY_SIZE,
        table_crc: crc32fast::hash(&entries),
    };
    Ok(EncodedCopy {
        header_lba: h.my_lba,
        header: encode_header(&h),
        entries_lba: h.entries_lba,
        entries,
    })
}

/// The first `PRIMARY_SECTORS` sectors of the disk, contiguous: protective
/// MBR, primary header, entry array.
pub fn primary_area(layout: &DiskLayout) -> Result<Vec<u8>, GptError> {
    let c = encode_copy(layout, HeaderCopy::Primary)?;
    let mut v = Vec::with_capacity((PRIMARY_SECTORS * SECTOR) as usize);
    v.extend_from_slice(&protective_mbr(layout.sectors()));
    v.extend_from_slice(&c.header);
    v.extend_from_slice(&c.entries);
    Ok(v)
}

/// The last `BACKUP_SECTORS` sectors of the disk, contiguous: entry array,
/// then the backup header in the last LBA.
pub fn backup_area(layout: &DiskLayout) -> Result<Vec<u8>, GptError> {
    let c = encode_copy(layout, HeaderCopy::Backup)?;
    let mut v = c.entries;
    v.extend_from_slice(&c.header);
    Ok(v)
}

pub(crate) fn decode_entries(
    table: &[u8],
    entry_size: u32,
    table_offset: u64,
) -> Result<Vec<Partition>, GptError> {
    let mut out = Vec::new();
    for (slot, e) in table.chunks_exact(entry_size as usize).enumerate() {
        let slot = slot as u32;
        let offset = table_offset + slot as u64 * entry_size as u64;
        let type_guid = Guid::from_disk(e[0..16].try_into().expect("16 bytes"));
        if type_guid.is_zero() {
            continue;
        }
        let first_lba = u64::from_le_bytes(e[32..40].try_into().expect("8 bytes"));
        let last_lba = u64::from_le_bytes(e[40..48].try_into().expect("8 bytes"));
        if last_lba < first_lba {
            return Err(GptError::BadEntry {
                slot,
                offset,
                what: format!("last LBA {last_lba} is before first LBA {first_lba}"),
            });
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let name = String::from_utf16(&units).map_err(|_| GptError::BadEntry {
            slot,
            offset: offset + 56,
            what: "name is not valid UTF-16".into(),
        })?;
        out.push(Partition {
            slot,
            name,
            type_guid,
            guid: Guid::from_disk(e[16..32].try_into().expect("16 bytes")),
            first_lba,
            last_lba,
            attributes: u64::from_le_bytes(e[48..56].try_into().expect("8 bytes")),
        });
    }
    Ok(out)
}

/// The fields of a header that differ between the two copies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub my_lba: u64,
    pub alternate_lba: u64,
    pub first_usable: u64,
    pub last_usable: u64,
    pub disk_guid: Guid,
    pub entries_lba: u64,
    pub entry_count: u32,
    pub entry_size: u32,
    pub table_crc: u32,
}

pub(crate) fn encode_header(h: &Header) -> [u8; 512] {
    let mut s = [0u8; 512];
    s[0..8].copy_from_slice(SIGNATURE);
    s[8..12].copy_from_slice(&REVISION.to_le_bytes());
    s[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
    s[24..32].copy_from_slice(&h.my_lba.to_le_bytes());
    s[32..40].copy_from_slice(&h.alternate_lba.to_le_bytes());
    s[40..48].copy_from_slice(&h.first_usable.to_le_bytes());
    s[48..56].copy_from_slice(&h.last_usable.to_le_bytes());
    s[56..72].copy_from_slice(&h.disk_guid.to_disk());
    s[72..80].copy_from_slice(&h.entries_lba.to_le_bytes());
    s[80..84].copy_from_slice(&h.entry_count.to_le_bytes());
    s[84..88].copy_from_slice(&h.entry_size.to_le_bytes());
    s[88..92].copy_from_slice(&h.table_crc.to_le_bytes());
    let crc = crc32fast::hash(&s[..HEADER_SIZE as usize]);
    s[16..20].copy_from_slice(&crc.to_le_bytes());
    s
}

/// Validates everything a header can say about itself; the table CRC is
/// checked by the caller once the table is read.
pub(crate) fn decode_header(
    s: &[u8; 512],
    copy: HeaderCopy,
    expected_lba: u64,
    sectors: u64,
) -> Result<Header, GptError> {
    let offset = expected_lba * SECTOR;
    let bad = |field: &'static str, what: String| GptError::BadHeader {
        copy,
        offset,
        field,
        what,
    };
    let u32at = |o: usize| u32::from_le_bytes(s[o..o + 4].try_into().expect("4 bytes"));
    let u64at = |o: usize| u64::from_le_bytes(s[o..o + 8].try_into().expect("8 bytes"));
    if &s[0..8] != SIGNATURE {
        return Err(bad(
            "signature",
            format!("found {:02x?}, expected \"EFI PART\"", &s[0..8]),
        ));
    }
    let rev = u32at(8);
    if rev != REVISION {
        return Err(bad("revision", format!("{rev:#010x}, expected 0x00010000")));
    }
    let size = u32at(12);
    if !(HEADER_SIZE..=SECTOR as u32).contains(&size) {
        return Err(bad("header size", format!("{size}, expected 92..=512")));
    }
    let stored = u32at(16);
    let mut copy_bytes = *s;
    copy_bytes[16..20].fill(0);
    let computed = crc32fast::hash(&copy_bytes[..size as usize]);
    if stored != computed {
        return Err(bad(
            "header CRC32",
            format!("stored {stored:#010x}, computed {computed:#010x}"),
        ));
    }
    let my_lba = u64at(24);
    if my_lba != expected_lba {
        return Err(bad("my LBA", format!("{my_lba}, expected {expected_lba}")));
    }
    let h = Header {
        my_lba,
        alternate_lba: u64at(32),
        first_usable: u64at(40),
        last_usable: u64at(48),
        disk_guid: Guid::from_disk(s[56..72].try_into().expect("16 bytes")),
        entries_lba: u64at(72),
        entry_count: u32at(80),
        entry_size: u32at(84),
        table_crc: u32at(88),
    };
    if h.entry_size != ENTRY_SIZE {
        return Err(bad(
            "entry size",
            format!("{}, expected {ENTRY_SIZE}", h.entry_size),
        ));
    }
    if h.entry_count == 0 || h.entry_count > 1024 {
        return Err(bad(
            "entry count",
            format!("{}, expected 1..=1024", h.entry_count),
        ));
    }
    let table_sectors = (h.entry_count as u64 * h.entry_size as u64).div_ceil(SECTOR);
    if h.entries_lba < 2 || h.entries_lba.saturating_add(table_sectors) > sectors {
        return Err(bad(
            "entries LBA",
            format!(
                "{} with {table_sectors} sectors of entries does not fit a disk of {sectors} sectors",
                h.entries_lba
            ),
        ));
    }
    if h.first_usable > h.last_usable || h.last_usable >= sectors {
        return Err(bad(
            "usable LBAs",
            format!(
                "{}..={} on a disk of {sectors} sectors",
                h.first_usable, h.last_usable
            ),
        ));
    }
    Ok(h)
}

//! The system area of a hybrid image: a protective MBR and a GPT with 512-byte
//! LBAs whose one partition is the ESP image inside the ISO, plus the backup
//! GPT at the end. `gpt::DiskWriter` places partitions on 1 MiB boundaries of
//! its own choosing; here the partition must sit exactly on an ISO extent,
//! so the few structures are written directly.

use crate::gpt::{Guid, ENTRY_COUNT, ENTRY_SIZE, ESP_TYPE, SECTOR, TABLE_SECTORS};

const HEADER_SIZE: u32 = 92;
/// LBA 0 MBR, LBA 1 header, then the entry array.
pub(crate) const FIRST_USABLE: u64 = 2 + TABLE_SECTORS;
/// 512-byte sectors the backup copy takes at the end of the disk.
pub(crate) const BACKUP_SECTORS: u64 = TABLE_SECTORS + 1;

pub(crate) struct Hybrid {
    pub disk_sectors: u64,
    pub disk_guid: Guid,
    pub esp_guid: Guid,
    pub esp_first: u64,
    pub esp_last: u64,
}

pub(crate) fn protective_mbr(disk_sectors: u64) -> [u8; 512] {
    let mut m = [0u8; 512];
    let e = &mut m[446..462];
    // CHS start 0/0/2 and a saturated end, as UEFI 2.10 5.2.3 asks.
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let len = (disk_sectors - 1).min(u32::MAX as u64) as u32;
    e[12..16].copy_from_slice(&len.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

impl Hybrid {
    pub fn entries(&self) -> Vec<u8> {
        let mut t = vec![0u8; (ENTRY_COUNT * ENTRY_SIZE) as usize];
        let e = &mut t[..ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&ESP_TYPE.to_disk());
        e[16..32].copy_from_slice(&self.esp_guid.to_disk());
        e[32..40].copy_from_slice(&self.esp_first.to_le_bytes());
        e[40..48].copy_from_slice(&self.esp_last.to_le_bytes());
        for (i, u) in crate::gpt::EFI.encode_utf16().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
        t
    }

    pub fn last_lba(&self) -> u64 {
        self.disk_sectors - 1
    }

    pub fn backup_entries_lba(&self) -> u64 {
        self.disk_sectors - BACKUP_SECTORS
    }

    /// `primary` picks the copy at LBA 1; the other sits at the last LBA.
    pub fn header(&self, primary: bool, table_crc: u32) -> [u8; 512] {
        let (my, alternate, entries) = if primary {
            (1, self.last_lba(), 2)
        } else {
            (self.last_lba(), 1, self.backup_entries_lba())
        };
        let mut s = [0u8; 512];
        s[0..8].copy_from_slice(b"EFI PART");
        s[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        s[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
        s[24..32].copy_from_slice(&my.to_le_bytes());
        s[32..40].copy_from_slice(&alternate.to_le_bytes());
        s[40..48].copy_from_slice(&FIRST_USABLE.to_le_bytes());
        s[48..56].copy_from_slice(&(self.backup_entries_lba() - 1).to_le_bytes());
        s[56..72].copy_from_slice(&self.disk_guid.to_disk());
        s[72..80].copy_from_slice(&entries.to_le_bytes());
        s[80..84].copy_from_slice(&ENTRY_COUNT.to_le_bytes());
        s[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
        s[88..92].copy_from_slice(&table_crc.to_le_bytes());
        let crc = crc32fast::hash(&s[..HEADER_SIZE as usize]);
        s[16..20].copy_from_slice(&crc.to_le_bytes());
        s
    }

    /// The first 16 KiB + 1 KiB of the system area: MBR, header, entries.
    pub fn front(&self) -> Vec<u8> {
        let entries = self.entries();
        let crc = crc32fast::hash(&entries);
        let mut v = Vec::with_capacity(((2 + TABLE_SECTORS) * SECTOR) as usize);
        v.extend_from_slice(&protective_mbr(self.disk_sectors));
        v.extend_from_slice(&self.header(true, crc));
        v.extend_from_slice(&entries);
        v
    }

    /// The last `BACKUP_SECTORS` sectors: entries, then the backup header.
    pub fn back(&self) -> Vec<u8> {
        let entries = self.entries();
        let crc = crc32fast::hash(&entries);
        let mut v = entries;
        v.extend_from_slice(&self.header(false, crc));
        v
    }
}

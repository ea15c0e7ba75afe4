//! The system area of a hybrid image: a protective MBR and a GPT with 512-byte
//! LBAs whose one partition is the ESP image inside the ISO, plus the backup
//! GPT at the end. The partition must sit exactly on the ISO extent of the
//! ESP image, so the table is placed with `DiskLayout::with_explicit`; the
//! bytes come from `gpt::ondisk`, the encoder `gpt::DiskWriter` uses.

use crate::gpt::{self, DiskLayout, GptError, Guid, Partition, ESP_TYPE, SECTOR};

pub(crate) struct Hybrid {
    pub disk_sectors: u64,
    pub disk_guid: Guid,
    pub esp: Partition,
    /// The first `gpt::PRIMARY_SECTORS` sectors of the image.
    pub front: Vec<u8>,
    /// The last `gpt::BACKUP_SECTORS` sectors of the image.
    pub back: Vec<u8>,
}

impl Hybrid {
    /// GUIDs derive from `seed`, with labels of their own so an ISO and a
    /// disk built from one seed do not share them.
    pub fn new(
        disk_sectors: u64,
        seed: &[u8],
        esp_first: u64,
        esp_bytes: u64,
    ) -> Result<Hybrid, GptError> {
        let esp = Partition {
            slot: 0,
            name: "EFI".to_string(),
            type_guid: ESP_TYPE,
            guid: Guid::derive(seed, "iso:partition:EFI"),
            first_lba: esp_first,
            last_lba: esp_first + esp_bytes / SECTOR - 1,
            attributes: 0,
        };
        let layout = DiskLayout::with_explicit(
            disk_sectors * SECTOR,
            Guid::derive(seed, "iso:disk"),
            vec![esp.clone()],
        )?;
        Ok(Hybrid {
            disk_sectors,
            disk_guid: layout.disk_guid,
            esp,
            front: gpt::ondisk::primary_area(&layout)?,
            back: gpt::ondisk::backup_area(&layout)?,
        })
    }
}

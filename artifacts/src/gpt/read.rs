//! Reading a GPT disk, falling back to the backup copy.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};

use super::ondisk::{check_mbr, decode_entries, decode_header, Header};
use super::{DiskLayout, GptError, SECTOR};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderCopy {
    Primary,
    Backup,
}

impl fmt::Display for HeaderCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeaderCopy::Primary => "primary",
            HeaderCopy::Backup => "backup",
        })
    }
}

#[derive(Debug)]
pub struct ReadDisk {
    pub layout: DiskLayout,
    /// The copy the layout was read from.
    pub used: HeaderCopy,
    /// Why the primary copy was rejected, when `used` is `Backup`.
    pub primary_error: Option<GptError>,
    /// Why the backup copy is unusable, even when the primary is fine.
    pub backup_error: Option<GptError>,
}

pub(crate) fn read_at<R: Read + Seek>(
    r: &mut R,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), GptError> {
    let io = |source| GptError::Io { offset, source };
    r.seek(SeekFrom::Start(offset)).map_err(io)?;
    r.read_exact(buf).map_err(io)
}

/// Parses a disk image or block device. The protective MBR must be valid;
/// the primary header+table is used when both its CRCs (header, entry
/// array) hold, otherwise the backup; `ReadDisk::used` says which.
///
/// The backup is looked for at the last LBA only, never at the invalid
/// primary's alternate LBA: Linux (block/partitions/efi.c) follows the
/// alternate LBA only from a valid primary, and with the primary invalid
/// reads the last LBA only with `gpt` on its command line. init reads disks
/// through this function and must find the partitions the kernel created.
pub fn read_disk<R: Read + Seek>(r: &mut R) -> Result<ReadDisk, GptError> {
    let size = r
        .seek(SeekFrom::End(0))
        .map_err(|source| GptError::Io { offset: 0, source })?;
    if !size.is_multiple_of(SECTOR) {
        return Err(GptError::DiskSizeUnaligned { size });
    }
    let sectors = size / SECTOR;
    if sectors < 3 {
        return Err(GptError::DiskTooSmall { size });
    }
    let mut mbr = [0u8; 512];
    read_at(r, 0, &mut mbr)?;
    check_mbr(&mbr)?;
    let primary = read_copy(r, HeaderCopy::Primary, 1, sectors);
    let backup = read_copy(r, HeaderCopy::Backup, sectors - 1, sectors);
    let (used, (header, parts), primary_error, backup_error) = match (primary, backup) {
        (Ok(p), b) => (HeaderCopy::Primary, p, None, b.err()),
        (Err(pe), Ok(b)) => (HeaderCopy::Backup, b, Some(pe), None),
        (Err(pe), Err(be)) => {
            return Err(GptError::NoValidHeader {
                primary: Box::new(pe),
                backup: Box::new(be),
            })
        }
    };
    Ok(ReadDisk {
        layout: DiskLayout {
            disk_size: size,
            disk_guid: header.disk_guid,
            partitions: parts,
        },
        used,
        primary_error,
        backup_error,
    })
}

fn read_copy<R: Read + Seek>(
    r: &mut R,
    copy: HeaderCopy,
    lba: u64,
    sectors: u64,
) -> Result<(Header, Vec<super::Partition>), GptError> {
    let mut s = [0u8; 512];
    read_at(r, lba * SECTOR, &mut s)?;
    let h = decode_header(&s, copy, lba, sectors)?;
    let table_offset = h.entries_lba * SECTOR;
    let mut table = vec![0u8; h.entry_count as usize * h.entry_size as usize];
    read_at(r, table_offset, &mut table)?;
    let crc = crc32fast::hash(&table);
    if crc != h.table_crc {
        return Err(GptError::BadHeader {
            copy,
            offset: lba * SECTOR,
            field: "entry table CRC32",
            what: format!(
                "stored {:#010x}, computed {crc:#010x} over {} bytes at offset {table_offset}",
                h.table_crc,
                table.len()
            ),
        });
    }
    let parts = decode_entries(&table, h.entry_size, table_offset)?;
    for p in &parts {
        if p.first_lba < h.first_usable || p.last_lba > h.last_usable {
            return Err(GptError::BadEntry {
                slot: p.slot,
                offset: table_offset + p.slot as u64 * h.entry_size as u64,
                what: format!(
                    "LBAs {}..={} outside the usable {}..={}",
                    p.first_lba, p.last_lba, h.first_usable, h.last_usable
                ),
            });
        }
    }
    let mut spans: Vec<&super::Partition> = parts.iter().collect();
    spans.sort_by_key(|p| p.first_lba);
    for w in spans.windows(2) {
        if w[1].first_lba <= w[0].last_lba {
            return Err(GptError::BadEntry {
                slot: w[1].slot,
                offset: table_offset + w[1].slot as u64 * h.entry_size as u64,
                what: format!(
                    "LBAs {}..={} overlap entry {} ({}..={})",
                    w[1].first_lba, w[1].last_lba, w[0].slot, w[0].first_lba, w[0].last_lba
                ),
            });
        }
    }
    Ok((h, parts))
}

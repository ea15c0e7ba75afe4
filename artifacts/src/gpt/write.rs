//! Writing tables: a fresh sparse disk image, in-place updates, and wiping.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::layout::last_usable_lba;
use super::ondisk::{encode_copy, protective_mbr};
use super::{
    read_disk, DiskLayout, GptError, Guid, HeaderCopy, Partition, ReadDisk, ENTRY_COUNT,
    NAME_UNITS, SECTOR, TABLE_SECTORS,
};

fn write_at(f: &mut File, offset: u64, buf: &[u8]) -> Result<(), GptError> {
    let io = |source| GptError::Io { offset, source };
    f.seek(SeekFrom::Start(offset)).map_err(io)?;
    f.write_all(buf).map_err(io)
}

fn sync(f: &File) -> Result<(), GptError> {
    f.sync_data()
        .map_err(|source| GptError::Io { offset: 0, source })
}

/// Writes one complete copy: the table first, then the header that vouches
/// for it, so a torn write leaves this copy's header CRC or table CRC wrong.
fn write_copy(f: &mut File, layout: &DiskLayout, copy: HeaderCopy) -> Result<(), GptError> {
    let c = encode_copy(layout, copy)?;
    write_at(f, c.entries_lba * SECTOR, &c.entries)?;
    write_at(f, c.header_lba * SECTOR, &c.header)
}

/// A new disk image file with its tables written; partitions are filled
/// with `write_partition` or by other writers at `Partition::offset()`.
pub struct DiskWriter {
    file: File,
    layout: DiskLayout,
}

impl DiskWriter {
    /// Creates (or truncates) `path` as a sparse file of the disk size and
    /// writes the protective MBR and both GPT copies.
    pub fn create(path: &Path, layout: DiskLayout) -> Result<DiskWriter, GptError> {
        let fe = |source| GptError::File {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(fe)?;
        // set_len leaves a hole: only tables and data get written, so the
        // image costs what it holds, not its size.
        file.set_len(layout.disk_size).map_err(fe)?;
        write_at(&mut file, 0, &protective_mbr(layout.sectors()))?;
        write_copy(&mut file, &layout, HeaderCopy::Backup)?;
        write_copy(&mut file, &layout, HeaderCopy::Primary)?;
        Ok(DiskWriter { file, layout })
    }

    pub fn layout(&self) -> &DiskLayout {
        &self.layout
    }

    /// The open image, for writers that place data at a partition offset.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Copies `data` to the start of partition `index` (its position in the
    /// layout). All-zero 64 KiB blocks are skipped, not written, since the
    /// fresh image already reads as zero there and stays sparse.
    pub fn write_partition(&mut self, index: usize, mut data: impl Read) -> Result<u64, GptError> {
        let p = self
            .layout
            .partitions
            .get(index)
            .ok_or(GptError::NoSuchPartition { index })?
            .clone();
        let mut buf = vec![0u8; 64 << 10];
        let mut done = 0u64;
        loop {
            let n = read_full(&mut data, &mut buf).map_err(|source| GptError::Data {
                index,
                name: p.name.clone(),
                source,
            })?;
            if n == 0 {
                break;
            }
            if done + n as u64 > p.size_bytes() {
                return Err(GptError::DataTooLarge {
                    index,
                    name: p.name.clone(),
                    len: done + n as u64,
                    size: p.size_bytes(),
                });
            }
            if buf[..n].iter().any(|&b| b != 0) {
                write_at(&mut self.file, p.offset() + done, &buf[..n])?;
            }
            done += n as u64;
        }
        Ok(done)
    }

    /// Flushes the image to stable storage and returns the file.
    pub fn finish(self) -> Result<File, GptError> {
        sync(&self.file)?;
        Ok(self.file)
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What to change in one table entry; `None` keeps the field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionUpdate {
    pub guid: Option<Guid>,
    pub attributes: Option<u64>,
    pub name: Option<String>,
}

/// Rewrites the entry at table slot `slot` (0-based) on an existing disk.
/// The backup table+header is written and synced before the primary, each
/// copy complete with its CRCs: a crash at any point leaves at least one
/// valid copy (the old primary or the new backup). A disk whose primary was
/// corrupt is repaired from the backup as a side effect.
pub fn update_partition(
    disk: &mut File,
    slot: u32,
    update: &PartitionUpdate,
) -> Result<Partition, GptError> {
    let ReadDisk { mut layout, .. } = read_disk(disk)?;
    let p = layout
        .partitions
        .iter_mut()
        .find(|p| p.slot == slot)
        .ok_or(GptError::NoSuchPartition {
            index: slot as usize,
        })?;
    if let Some(name) = &update.name {
        if name.encode_utf16().count() > NAME_UNITS {
            return Err(GptError::NameTooLong {
                index: slot as usize,
                name: name.clone(),
            });
        }
        p.name = name.clone();
    }
    if let Some(g) = update.guid {
        p.guid = g;
    }
    if let Some(a) = update.attributes {
        p.attributes = a;
    }
    let updated = p.clone();
    // Rewriting puts 128 entries at the standard places; a table made by
    // another tool with partitions reaching into those places must not be
    // rewritten that way.
    let (first, last) = (2 + TABLE_SECTORS, last_usable_lba(layout.sectors()));
    if let Some(p) = layout
        .partitions
        .iter()
        .find(|p| p.first_lba < first || p.last_lba > last || p.slot >= ENTRY_COUNT)
    {
        return Err(GptError::BadEntry {
            slot: p.slot,
            offset: 0,
            what: format!(
                "LBAs {}..={} (slot {}) fall outside the standard usable {first}..={last} with {ENTRY_COUNT} entries; refusing to rewrite",
                p.first_lba, p.last_lba, p.slot
            ),
        });
    }
    write_copy(disk, &layout, HeaderCopy::Backup)?;
    sync(disk)?;
    write_copy(disk, &layout, HeaderCopy::Primary)?;
    sync(disk)?;
    Ok(updated)
}

/// Zeroes the protective MBR and both GPT headers, so a disk whose install
/// was interrupted is plainly not a GPT disk rather than a half-valid one.
pub fn clear(disk: &mut File) -> Result<(), GptError> {
    let size = disk
        .seek(SeekFrom::End(0))
        .map_err(|source| GptError::Io { offset: 0, source })?;
    if !size.is_multiple_of(SECTOR) {
        return Err(GptError::DiskSizeUnaligned { size });
    }
    if size < 3 * SECTOR {
        return Err(GptError::DiskTooSmall { size });
    }
    let zero = [0u8; SECTOR as usize];
    for lba in [0, 1, size / SECTOR - 1] {
        write_at(disk, lba * SECTOR, &zero)?;
    }
    sync(disk)
}

//! GPT disks: layout from partition specs, a sparse writer, a validating
//! reader with backup-header fallback, and a crash-safe entry updater.
//!
//! 512-byte sectors, 128 entries of 128 bytes (LBA 2..33 primary, the 32
//! sectors before the last LBA backup), partitions aligned to 1 MiB by
//! `DiskLayout::new` or placed at given LBAs by `DiskLayout::with_explicit`.
//! `ondisk` encodes a layout's tables for writers other than `DiskWriter`.

mod guid;
mod layout;
pub mod ondisk;
mod read;
mod write;

pub use guid::Guid;
pub use layout::{DiskLayout, Partition, PartitionSpec, Size};
pub use read::{read_disk, HeaderCopy, ReadDisk};
pub use write::{clear, update_partition, DiskWriter, PartitionUpdate};

use std::path::PathBuf;

pub const SECTOR: u64 = 512;
/// Partition start (and "rest of disk" end) alignment.
pub const ALIGN: u64 = 1 << 20;
pub const ENTRY_COUNT: u32 = 128;
pub const ENTRY_SIZE: u32 = 128;
/// Sectors taken by one copy of the entry array.
pub const TABLE_SECTORS: u64 = (ENTRY_COUNT as u64 * ENTRY_SIZE as u64) / SECTOR;
/// Sectors of the primary copy at the front: protective MBR, header, table.
pub const PRIMARY_SECTORS: u64 = 2 + TABLE_SECTORS;
/// Sectors of the backup copy at the end: table, then header.
pub const BACKUP_SECTORS: u64 = TABLE_SECTORS + 1;
/// Name field capacity in UTF-16 code units.
pub const NAME_UNITS: usize = 36;

pub const ESP_TYPE: Guid = Guid([
    0xC1, 0x2A, 0x73, 0x28, 0xF8, 0x1F, 0x11, 0xD2, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B,
]);
pub const LINUX_ROOT_X86_64_TYPE: Guid = Guid([
    0x4F, 0x68, 0xBC, 0xE3, 0xE8, 0xCD, 0x4D, 0xB1, 0x96, 0xE7, 0xFB, 0xCA, 0xF9, 0x84, 0xB7, 0x09,
]);
pub const LINUX_FS_TYPE: Guid = Guid([
    0x0F, 0xC6, 0x3D, 0xAF, 0x84, 0x83, 0x47, 0x72, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4,
]);

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("invalid GUID {text:?}: expected 8-4-4-4-12 hex digits")]
    BadGuid { text: String },
    #[error("root hash is {len} bytes; a slot GUID needs at least 16")]
    RootHashTooShort { len: usize },
    #[error("disk size {size} bytes is not a multiple of {SECTOR}")]
    DiskSizeUnaligned { size: u64 },
    #[error("disk of {size} bytes is too small for two GPT copies")]
    DiskTooSmall { size: u64 },
    #[error("{count} partitions given; the table holds {ENTRY_COUNT}")]
    TooManyPartitions { count: usize },
    #[error("partition {index} ({name}): size {size} bytes is zero or not a multiple of {SECTOR}")]
    PartitionSizeUnaligned {
        index: usize,
        name: String,
        size: u64,
    },
    #[error("partition {index} ({name}): only the last partition may take the rest of the disk")]
    RestNotLast { index: usize, name: String },
    #[error("partition {index} ({name}) needs {need} bytes at offset {offset}, but the disk of {disk_size} bytes has only {available} usable bytes left there")]
    DoesNotFit {
        index: usize,
        name: String,
        need: u64,
        offset: u64,
        available: u64,
        disk_size: u64,
    },
    #[error("partition {index} ({name}): slot {slot} is outside the table's {ENTRY_COUNT} entries or used twice")]
    BadSlot {
        index: usize,
        name: String,
        slot: u32,
    },
    #[error("partition {index} ({name}): LBAs {first_lba}..={last_lba} are not within the usable {first_usable}..={last_usable} of a disk of {disk_size} bytes")]
    OutsideUsable {
        index: usize,
        name: String,
        first_lba: u64,
        last_lba: u64,
        first_usable: u64,
        last_usable: u64,
        disk_size: u64,
    },
    #[error("partition {index} ({name}) at LBAs {first_lba}..={last_lba} overlaps partition {other} ({other_name}) at LBAs {other_first}..={other_last}")]
    Overlap {
        index: usize,
        name: String,
        first_lba: u64,
        last_lba: u64,
        other: usize,
        other_name: String,
        other_first: u64,
        other_last: u64,
    },
    #[error("partition {index}: name {name:?} is longer than {NAME_UNITS} UTF-16 units")]
    NameTooLong { index: usize, name: String },
    #[error("partition {index} does not exist in this table")]
    NoSuchPartition { index: usize },
    #[error("partition {index} ({name}): {len} bytes of data do not fit in its {size} bytes")]
    DataTooLarge {
        index: usize,
        name: String,
        len: u64,
        size: u64,
    },
    #[error("protective MBR at offset 0: {what}")]
    BadMbr { what: String },
    #[error("{copy} GPT header at offset {offset}: {field}: {what}")]
    BadHeader {
        copy: HeaderCopy,
        offset: u64,
        field: &'static str,
        what: String,
    },
    #[error("no valid GPT: primary: {primary}; backup: {backup}")]
    NoValidHeader {
        primary: Box<GptError>,
        backup: Box<GptError>,
    },
    #[error("entry {slot} at offset {offset}: {what}")]
    BadEntry {
        slot: u32,
        offset: u64,
        what: String,
    },
    #[error("disk I/O at offset {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading data for partition {index} ({name}): {source}")]
    Data {
        index: usize,
        name: String,
        #[source]
        source: std::io::Error,
    },
}

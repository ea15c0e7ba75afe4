//! FAT32 for the EFI system partition: a writer that lays out a whole
//! filesystem from a file set in one pass, and an editor that changes an
//! existing FAT32 volume (ours or one `mkfs.fat` made) in place.
//!
//! Written here rather than taken from a crate because the crates.io FAT
//! writers produce volumes `fsck.fat -n` rejects (see platform facts).
//!
//! Conventions shared by both halves: 8.3 short names are generated
//! deterministically (`NAME~N.EXT`, lowest free N in the directory), a long
//! (VFAT) name is stored whenever the name is not already a valid upper-case
//! 8.3 name, and every timestamp is the caller's `SOURCE_DATE_EPOCH` (clamped
//! into the FAT date range, see [`DosTime`]).

mod dirent;
mod editor;
mod geometry;
mod names;
mod writer;

pub use dirent::DosTime;
pub use editor::{entry_slots, EntryInfo, Fat32, SECTOR_SLOTS};
pub use geometry::{minimum_size, Geometry, MAXIMUM_SIZE};
pub use writer::{format, format_path, FatFile, FatSource, FormatOptions, FormatSummary};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FatError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("FAT32 volume of {size} bytes is too small: FAT32 needs at least 65525 clusters, the minimum size is {minimum} bytes")]
    TooSmall { size: u64, minimum: u64 },
    #[error("FAT32 volume of {size} bytes is too large: the maximum is {maximum} bytes (2^32-1 sectors of 512 bytes)")]
    TooLarge { size: u64, maximum: u64 },
    #[error("FAT32 volume size {size} is not a multiple of the 512-byte sector")]
    NotSectorMultiple { size: u64 },
    #[error("no space for {path}: it needs {needed} bytes, {free} bytes are free")]
    NoSpace {
        path: String,
        needed: u64,
        free: u64,
    },
    #[error("{path}: {size} bytes is larger than the FAT32 file size limit of 4294967295 bytes")]
    FileTooLarge { path: String, size: u64 },
    #[error("name {name:?} is {units} UTF-16 units long; FAT long names hold at most 255")]
    NameTooLong { name: String, units: usize },
    #[error("invalid FAT name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("invalid volume label {label:?}: {reason}")]
    InvalidLabel { label: String, reason: String },
    #[error("{path} is a file, not a directory")]
    NotADirectory { path: String },
    #[error("{path} is a directory")]
    IsADirectory { path: String },
    #[error("{path} does not exist")]
    NotFound { path: String },
    #[error("{path} already exists")]
    AlreadyExists { path: String },
    #[error("{path}: source changed while writing: expected {expected} bytes, got {actual}")]
    SourceChanged {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error(
        "bad FAT32 boot sector: field {field} at offset {offset} is {value}, expected {expected}"
    )]
    BadBootSector {
        field: &'static str,
        offset: u64,
        value: u64,
        expected: String,
    },
    #[error("corrupt FAT32 volume: {0}")]
    Corrupt(String),
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> FatError {
    let context = context.into();
    move |source| FatError::Io { context, source }
}

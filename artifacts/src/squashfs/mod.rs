//! A deterministic squashfs 4.0 writer (zstd).
//!
//! Layout, as mksquashfs writes it: superblock, compressor options (only when
//! the level is not zstd's squashfs default), data and fragment blocks, inode
//! table, directory table, fragment table, export table, id table, then zero
//! padding to a multiple of 4096 (not counted in `bytes_used`).
//!
//! Data blocks are compressed on all cores; the output does not depend on
//! the thread count (see `data`). Files larger than a block still put their
//! tail in a fragment block ("tail-end packing"), identical files are stored
//! once, all-zero blocks are stored as sparse, hard links share one inode.

mod cache;
mod compress;
mod data;
mod meta;
mod tables;

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use compress::Codec;
use data::Settings;
use meta::lookup_table;

use crate::tree::Tree;

pub use cache::{BlockCache, DirCache, MemoryCache};
pub use data::cache_key;

const MAGIC: u32 = 0x7371_7368;
const SUPERBLOCK_LEN: u64 = 96;
const ZSTD_ID: u16 = 6;
/// mksquashfs's zstd default; other levels are recorded as compressor options.
pub const DEFAULT_LEVEL: i32 = 15;
pub const DEFAULT_BLOCK_SIZE: u32 = 128 * 1024;
const PAD: u64 = 4096;
const NOT_PRESENT: u64 = u64::MAX;

const FLAG_NO_XATTRS: u16 = 0x0200;
const FLAG_ALWAYS_FRAGMENTS: u16 = 0x0020;
const FLAG_DUPLICATES: u16 = 0x0040;
const FLAG_EXPORTABLE: u16 = 0x0080;
const FLAG_COMPRESSOR_OPTIONS: u16 = 0x0400;

#[derive(Debug, thiserror::Error)]
pub enum SquashfsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: size changed from {expected} to {actual} bytes after the tree was read")]
    SizeChanged {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{path}: content changed while it was being read")]
    Changed { path: PathBuf },
    #[error("writing the image at offset {offset}: {source}")]
    Write {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("creating {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("block size {0} is not a power of two from 4096 to 1048576")]
    BlockSize(u32),
    #[error("zstd level {0} is outside 1..=22")]
    Level(i32),
    #[error("zstd compression of {what}: {source}")]
    Compress {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the tree has no root directory entry")]
    NoRoot,
    #[error("{count} distinct uid/gid values; the id table holds at most 65535")]
    TooManyIds { count: usize },
    #[error("{path}: mtime {mtime} does not fit the format's 32-bit timestamps")]
    TimeRange { path: PathBuf, mtime: u64 },
    #[error("mkfs time {0} does not fit the format's 32-bit timestamp")]
    EpochRange(u64),
    #[error("{path}: device {major}:{minor} exceeds the 12-bit major / 20-bit minor encoding")]
    DeviceRange {
        path: PathBuf,
        major: u32,
        minor: u32,
    },
    #[error("{path}: name is {len} bytes; the format allows 1 to 256")]
    NameLength { path: PathBuf, len: usize },
    #[error("{table} grew to {bytes} bytes, past the format's 32-bit offsets")]
    TableTooLarge { table: &'static str, bytes: u64 },
    #[error("internal error: {what}")]
    Internal { what: &'static str },
}

#[derive(Clone, Copy)]
pub struct SquashfsOptions<'a> {
    /// zstd level, 1..=22.
    pub level: i32,
    /// Data block size, a power of two from 4 KiB to 1 MiB.
    pub block_size: u32,
    /// SOURCE_DATE_EPOCH: the superblock's creation time.
    pub mkfs_time: u64,
    /// Compression threads; 0 = all available cores. Never changes the output.
    pub threads: usize,
    pub cache: Option<&'a dyn BlockCache>,
}

impl SquashfsOptions<'_> {
    pub fn new(mkfs_time: u64) -> Self {
        SquashfsOptions {
            level: DEFAULT_LEVEL,
            block_size: DEFAULT_BLOCK_SIZE,
            mkfs_time,
            threads: 0,
            cache: None,
        }
    }
}

/// What went into an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SquashfsStats {
    /// Image size before the 4 KiB padding (the superblock's `bytes_used`).
    pub bytes_used: u64,
    /// File length including padding.
    pub image_len: u64,
    pub inodes: u32,
    pub data_blocks: u64,
    pub fragment_blocks: u32,
    pub sparse_blocks: u64,
    pub duplicate_files: u64,
    pub cache_hits: u64,
}

/// Writes `tree` as a squashfs image at the start of `out`.
pub fn write_squashfs<W: Write + Seek>(
    tree: &Tree,
    out: &mut W,
    opts: &SquashfsOptions,
) -> Result<SquashfsStats, SquashfsError> {
    if !opts.block_size.is_power_of_two() || !(4096..=1 << 20).contains(&opts.block_size) {
        return Err(SquashfsError::BlockSize(opts.block_size));
    }
    if !(1..=22).contains(&opts.level) {
        return Err(SquashfsError::Level(opts.level));
    }
    let mkfs_time =
        u32::try_from(opts.mkfs_time).map_err(|_| SquashfsError::EpochRange(opts.mkfs_time))?;
    let werr = |offset: u64| move |source| SquashfsError::Write { offset, source };

    out.seek(SeekFrom::Start(0)).map_err(werr(0))?;
    let mut head = vec![0u8; SUPERBLOCK_LEN as usize];
    let mut flags = FLAG_NO_XATTRS | FLAG_ALWAYS_FRAGMENTS | FLAG_DUPLICATES | FLAG_EXPORTABLE;
    if opts.level != DEFAULT_LEVEL {
        flags |= FLAG_COMPRESSOR_OPTIONS;
        // Options are one uncompressed metadata block: the level.
        head.extend_from_slice(&(4u16 | 0x8000).to_le_bytes());
        head.extend_from_slice(&(opts.level as u32).to_le_bytes());
    }
    out.write_all(&head).map_err(werr(0))?;
    let mut pos = head.len() as u64;

    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let settings = Settings {
        level: opts.level,
        block_size: opts.block_size as usize,
        threads,
        cache: opts.cache,
    };
    let data = data::write_data(tree, out, &mut pos, &settings)?;

    let mut codec = Codec::new(opts.level)?;
    let t = tables::write_tables(tree, &data, &mut codec)?;

    let inode_table_start = pos;
    out.write_all(&t.inode_table).map_err(werr(pos))?;
    pos += t.inode_table.len() as u64;
    let directory_table_start = pos;
    out.write_all(&t.dir_table).map_err(werr(pos))?;
    pos += t.dir_table.len() as u64;

    let mut frag_entries = Vec::with_capacity(data.fragments.len() * 16);
    for &(start, word) in &data.fragments {
        frag_entries.extend_from_slice(&start.to_le_bytes());
        frag_entries.extend_from_slice(&word.to_le_bytes());
        frag_entries.extend_from_slice(&0u32.to_le_bytes());
    }
    let (bytes, fragment_table_start) =
        lookup_table(&mut codec, "fragment table block", &frag_entries, pos)?;
    out.write_all(&bytes).map_err(werr(pos))?;
    pos += bytes.len() as u64;

    let export: Vec<u8> = t.export.iter().flat_map(|r| r.to_le_bytes()).collect();
    let (bytes, export_table_start) = lookup_table(&mut codec, "export table block", &export, pos)?;
    out.write_all(&bytes).map_err(werr(pos))?;
    pos += bytes.len() as u64;

    let ids: Vec<u8> = t.ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    let (bytes, id_table_start) = lookup_table(&mut codec, "id table block", &ids, pos)?;
    out.write_all(&bytes).map_err(werr(pos))?;
    pos += bytes.len() as u64;

    let bytes_used = pos;
    let padded = bytes_used.div_ceil(PAD) * PAD;
    out.write_all(&vec![0u8; (padded - bytes_used) as usize])
        .map_err(werr(pos))?;

    let mut sb = Vec::with_capacity(SUPERBLOCK_LEN as usize);
    sb.extend_from_slice(&MAGIC.to_le_bytes());
    sb.extend_from_slice(&t.inode_count.to_le_bytes());
    sb.extend_from_slice(&mkfs_time.to_le_bytes());
    sb.extend_from_slice(&opts.block_size.to_le_bytes());
    sb.extend_from_slice(&(data.fragments.len() as u32).to_le_bytes());
    sb.extend_from_slice(&ZSTD_ID.to_le_bytes());
    sb.extend_from_slice(&(opts.block_size.trailing_zeros() as u16).to_le_bytes());
    sb.extend_from_slice(&flags.to_le_bytes());
    sb.extend_from_slice(&(t.ids.len() as u16).to_le_bytes());
    sb.extend_from_slice(&4u16.to_le_bytes());
    sb.extend_from_slice(&0u16.to_le_bytes());
    for v in [
        t.root_ref,
        bytes_used,
        id_table_start,
        NOT_PRESENT, // xattr id table
        inode_table_start,
        directory_table_start,
        fragment_table_start,
        export_table_start,
    ] {
        sb.extend_from_slice(&v.to_le_bytes());
    }
    out.seek(SeekFrom::Start(0)).map_err(werr(0))?;
    out.write_all(&sb).map_err(werr(0))?;
    out.seek(SeekFrom::Start(padded)).map_err(werr(padded))?;
    out.flush().map_err(werr(padded))?;

    Ok(SquashfsStats {
        bytes_used,
        image_len: padded,
        inodes: t.inode_count,
        data_blocks: data.data_blocks,
        fragment_blocks: data.fragments.len() as u32,
        sparse_blocks: data.sparse_blocks,
        duplicate_files: data.duplicates,
        cache_hits: data.cache_hits,
    })
}

/// Writes `tree` as a squashfs image to a new file at `path`.
pub fn write_squashfs_file(
    tree: &Tree,
    path: &Path,
    opts: &SquashfsOptions,
) -> Result<SquashfsStats, SquashfsError> {
    let f = File::create(path).map_err(|source| SquashfsError::Create {
        path: path.to_path_buf(),
        source,
    })?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let stats = write_squashfs(tree, &mut w, opts)?;
    // Not synced: like mksquashfs, durability is the caller's choice.
    w.into_inner().map_err(|e| SquashfsError::Write {
        offset: stats.image_len,
        source: e.into_error(),
    })?;
    Ok(stats)
}

//! qcow2 version 3 writer (refcount order 4, no backing file, optional zstd
//! compressed clusters). Layout: header cluster, then the non-zero guest
//! clusters in guest order, then L2 tables, the L1 table, the refcount table
//! and the refcount blocks. Putting metadata last lets the data go out in one
//! pass before the allocation count (and so the metadata size) is known.
//!
//! Compressed clusters are packed back to back at byte granularity, so one
//! host cluster can hold several and its refcount is how many touch it.
//! zlib is not offered: qemu inflates qcow2 clusters with a 4 KiB window,
//! which miniz's 32 KiB-window output does not respect.

use std::path::Path;

use super::raw::Sink;
use super::{CloudError, RawImage};

const MAGIC: &[u8; 4] = b"QFI\xfb";
const VERSION: u32 = 3;
/// 16-bit refcounts: the qemu default, and plenty for an image nobody
/// snapshots.
const REFCOUNT_ORDER: u32 = 4;
/// v3 header without the optional compression-type byte.
const HEADER_LEN: u32 = 104;
/// "Refcount is exactly one": qemu-img check flags its absence as an error.
const OFLAG_COPIED: u64 = 1 << 63;
const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Incompatible feature bit 3: the header's compression-type byte is set.
const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
const COMPRESSION_TYPE_ZSTD: u8 = 1;
/// qemu refuses L1 tables larger than this.
const MAX_L1_BYTES: u64 = 32 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qcow2Options {
    /// Bytes per cluster: a power of two from 512 to 2 MiB.
    pub cluster_size: u64,
    pub compression: Qcow2Compression,
}

impl Default for Qcow2Options {
    fn default() -> Self {
        Qcow2Options {
            cluster_size: 65536,
            compression: Qcow2Compression::None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qcow2Compression {
    None,
    /// Single-threaded zstd at this level (1..=19), so output is stable.
    /// Clusters that do not shrink are stored uncompressed.
    Zstd {
        level: i32,
    },
}

/// What [`convert`] wrote, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Summary {
    pub virtual_size: u64,
    /// Host clusters holding guest data (compressed clusters share them).
    pub data_clusters: u64,
    pub total_clusters: u64,
    pub file_size: u64,
}

pub fn convert(raw: &Path, out: &Path, opts: &Qcow2Options) -> Result<Qcow2Summary, CloudError> {
    let cs = opts.cluster_size;
    if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
        return Err(CloudError::BadClusterSize { cluster_size: cs });
    }
    if let Qcow2Compression::Zstd { level } = opts.compression {
        if !(1..=19).contains(&level) {
            return Err(CloudError::BadCompressionLevel { level });
        }
    }
    let img = RawImage::open(raw)?;
    let size = img.size();
    let l2_entries = cs / 8;
    let guest_clusters = size.div_ceil(cs);
    let l1_size = guest_clusters.div_ceil(l2_entries);
    if l1_size * 8 > MAX_L1_BYTES {
        return Err(CloudError::TooLarge {
            path: raw.to_path_buf(),
            size,
            format: "qcow2 (L1 table limit) at this cluster size, bytes",
            limit: MAX_L1_BYTES / 8 * l2_entries * cs,
        });
    }

    let sink = Sink::create(out)?;
    let mut data = DataArea::new(cs);
    // (guest cluster index, L2 entry), ascending guest order.
    let mut mapped: Vec<(u64, u64)> = Vec::new();
    let mut compressor = match opts.compression {
        Qcow2Compression::None => None,
        Qcow2Compression::Zstd { level } => Some(zstd::bulk::Compressor::new(level).map_err(
            |source| CloudError::Compress {
                path: raw.to_path_buf(),
                source,
            },
        )?),
    };
    img.for_each_chunk(cs, |offset, chunk| {
        let packed = match compressor.as_mut() {
            Some(z) => Some(z.compress(chunk).map_err(|source| CloudError::Compress {
                path: raw.to_path_buf(),
                source,
            })?),
            None => None,
        };
        let entry = match packed {
            Some(p) if (p.len() as u64) < cs => data.put_compressed(&sink, &p)?,
            _ => data.put_cluster(&sink, chunk)?,
        };
        mapped.push((offset / cs, entry));
        Ok(())
    })?;
    let data_clusters = data.refcounts.len() as u64 - 1;
    let mut host = data.next_cluster();

    let mut l1 = vec![0u64; l1_size as usize];
    let mut i = 0;
    while i < mapped.len() {
        let l1_index = mapped[i].0 / l2_entries;
        let mut l2 = vec![0u8; cs as usize];
        while i < mapped.len() && mapped[i].0 / l2_entries == l1_index {
            let (guest, entry) = mapped[i];
            let slot = ((guest % l2_entries) * 8) as usize;
            l2[slot..slot + 8].copy_from_slice(&entry.to_be_bytes());
            i += 1;
        }
        sink.write_at(host * cs, &l2)?;
        l1[l1_index as usize] = (host * cs) | OFLAG_COPIED;
        host += 1;
    }

    let l1_offset = host * cs;
    let l1_bytes: Vec<u8> = l1.iter().flat_map(|e| e.to_be_bytes()).collect();
    let l1_clusters = (l1_bytes.len() as u64).div_ceil(cs).max(1);
    sink.write_at(l1_offset, &l1_bytes)?;
    host += l1_clusters;

    // The refcount structures count themselves, so grow them until the
    // cluster total they cover stops changing.
    let per_block = cs * 8 / (1 << REFCOUNT_ORDER);
    let (mut table_clusters, mut blocks) = (0u64, 0u64);
    let total = loop {
        let total = host + table_clusters + blocks;
        let need_blocks = total.div_ceil(per_block);
        let need_table = (need_blocks * 8).div_ceil(cs);
        if need_blocks == blocks && need_table == table_clusters {
            break total;
        }
        blocks = need_blocks;
        table_clusters = need_table;
    };
    let table_offset = host * cs;
    let first_block = host + table_clusters;
    let table: Vec<u8> = (0..blocks)
        .flat_map(|b| ((first_block + b) * cs).to_be_bytes())
        .collect();
    sink.write_at(table_offset, &table)?;
    // Data clusters carry their counted references; everything after the
    // data area is metadata referenced exactly once.
    let refcount =
        |cluster: u64| -> u16 { data.refcounts.get(cluster as usize).copied().unwrap_or(1) };
    for b in 0..blocks {
        let mut block = vec![0u8; cs as usize];
        let first = b * per_block;
        let covered = (total - first).min(per_block);
        for (k, entry) in block.chunks_exact_mut(2).take(covered as usize).enumerate() {
            entry.copy_from_slice(&refcount(first + k as u64).to_be_bytes());
        }
        sink.write_at((first_block + b) * cs, &block)?;
    }

    let compressed = opts.compression != Qcow2Compression::None;
    let header_len = if compressed {
        HEADER_LEN + 8
    } else {
        HEADER_LEN
    };
    let mut h = vec![0u8; header_len as usize];
    h[0..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&VERSION.to_be_bytes());
    h[20..24].copy_from_slice(&cs.trailing_zeros().to_be_bytes());
    h[24..32].copy_from_slice(&size.to_be_bytes());
    h[36..40].copy_from_slice(&(l1_size as u32).to_be_bytes());
    h[40..48].copy_from_slice(&l1_offset.to_be_bytes());
    h[48..56].copy_from_slice(&table_offset.to_be_bytes());
    h[56..60].copy_from_slice(&(table_clusters as u32).to_be_bytes());
    h[96..100].copy_from_slice(&REFCOUNT_ORDER.to_be_bytes());
    h[100..104].copy_from_slice(&header_len.to_be_bytes());
    if compressed {
        h[72..80].copy_from_slice(&INCOMPAT_COMPRESSION_TYPE.to_be_bytes());
        // Byte 104, padded to 112 so the length stays a multiple of 8.
        h[104] = COMPRESSION_TYPE_ZSTD;
    }
    // Bytes after the header stay zero: a type-0 header extension, i.e. the
    // end-of-extensions marker.
    sink.write_at(0, &h)?;
    let file_size = total * cs;
    sink.set_len(file_size)?;
    sink.finish()?;
    Ok(Qcow2Summary {
        virtual_size: size,
        data_clusters,
        total_clusters: total,
        file_size,
    })
}

/// The data region after the header cluster: a byte cursor plus how many
/// references each host cluster in it has.
struct DataArea {
    cs: u64,
    pos: u64,
    /// Index = host cluster; cluster 0 is the header.
    refcounts: Vec<u16>,
}

impl DataArea {
    fn new(cs: u64) -> DataArea {
        DataArea {
            cs,
            pos: cs,
            refcounts: vec![1],
        }
    }

    fn next_cluster(&self) -> u64 {
        self.pos.div_ceil(self.cs)
    }

    /// A whole uncompressed cluster at the next aligned host cluster.
    fn put_cluster(&mut self, sink: &Sink, chunk: &[u8]) -> Result<u64, CloudError> {
        let at = self.next_cluster() * self.cs;
        sink.write_at(at, chunk)?;
        self.pos = at + self.cs;
        self.refcounts.resize((self.pos / self.cs) as usize, 1);
        Ok(at | OFLAG_COPIED)
    }

    /// Compressed bytes right after the previous ones. The descriptor holds
    /// the byte offset and the count of 512-byte sectors after the first;
    /// qemu counts a reference for every cluster those sectors touch.
    fn put_compressed(&mut self, sink: &Sink, data: &[u8]) -> Result<u64, CloudError> {
        let cs = self.cs;
        let mut at = self.pos;
        let end = |at: u64| (at + data.len() as u64).next_multiple_of(512);
        // Start afresh if the first cluster's 16-bit refcount is full.
        if self
            .refcounts
            .get((at / cs) as usize)
            .is_some_and(|&r| r == u16::MAX)
        {
            at = at.next_multiple_of(cs);
        }
        sink.write_at(at, data)?;
        let (first, last) = (at / cs, (end(at) - 1) / cs);
        if self.refcounts.len() <= last as usize {
            self.refcounts.resize(last as usize + 1, 0);
        }
        for c in first..=last {
            self.refcounts[c as usize] += 1;
        }
        self.pos = at + data.len() as u64;
        let extra_sectors = (end(at) - at / 512 * 512) / 512 - 1;
        let shift = 62 - (cs.trailing_zeros() as u64 - 8);
        Ok(OFLAG_COMPRESSED | (extra_sectors << shift) | at)
    }
}

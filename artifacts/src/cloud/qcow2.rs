//! qcow2 version 3 writer (refcount order 4, no compression, no backing
//! file). Layout: header cluster, then the non-zero guest clusters in guest
//! order, then L2 tables, the L1 table, the refcount table and the refcount
//! blocks. Putting metadata last lets the data go out in one pass before the
//! allocation count (and so the metadata size) is known.

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
/// qemu refuses L1 tables larger than this.
const MAX_L1_BYTES: u64 = 32 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qcow2Options {
    /// Bytes per cluster: a power of two from 512 to 2 MiB.
    pub cluster_size: u64,
}

impl Default for Qcow2Options {
    fn default() -> Self {
        Qcow2Options {
            cluster_size: 65536,
        }
    }
}

/// What [`convert`] wrote, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Summary {
    pub virtual_size: u64,
    pub data_clusters: u64,
    pub total_clusters: u64,
    pub file_size: u64,
}

pub fn convert(raw: &Path, out: &Path, opts: &Qcow2Options) -> Result<Qcow2Summary, CloudError> {
    let cs = opts.cluster_size;
    if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
        return Err(CloudError::BadClusterSize { cluster_size: cs });
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
    // (guest cluster index, host cluster index), ascending in both.
    let mut mapped: Vec<(u64, u64)> = Vec::new();
    let mut host = 1u64;
    img.for_each_chunk(cs, |offset, chunk| {
        sink.write_at(host * cs, chunk)?;
        mapped.push((offset / cs, host));
        host += 1;
        Ok(())
    })?;

    let mut l1 = vec![0u64; l1_size as usize];
    let mut i = 0;
    while i < mapped.len() {
        let l1_index = mapped[i].0 / l2_entries;
        let mut l2 = vec![0u8; cs as usize];
        while i < mapped.len() && mapped[i].0 / l2_entries == l1_index {
            let (guest, h) = mapped[i];
            let slot = ((guest % l2_entries) * 8) as usize;
            l2[slot..slot + 8].copy_from_slice(&((h * cs) | OFLAG_COPIED).to_be_bytes());
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
    for b in 0..blocks {
        let mut block = vec![0u8; cs as usize];
        let covered = (total - b * per_block).min(per_block) as usize;
        for entry in block.chunks_exact_mut(2).take(covered) {
            entry.copy_from_slice(&1u16.to_be_bytes());
        }
        sink.write_at((first_block + b) * cs, &block)?;
    }

    let mut h = [0u8; HEADER_LEN as usize];
    h[0..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&VERSION.to_be_bytes());
    h[20..24].copy_from_slice(&cs.trailing_zeros().to_be_bytes());
    h[24..32].copy_from_slice(&size.to_be_bytes());
    h[36..40].copy_from_slice(&(l1_size as u32).to_be_bytes());
    h[40..48].copy_from_slice(&l1_offset.to_be_bytes());
    h[48..56].copy_from_slice(&table_offset.to_be_bytes());
    h[56..60].copy_from_slice(&(table_clusters as u32).to_be_bytes());
    h[96..100].copy_from_slice(&REFCOUNT_ORDER.to_be_bytes());
    h[100..104].copy_from_slice(&HEADER_LEN.to_be_bytes());
    // Bytes after the header stay zero: a type-0 header extension, i.e. the
    // end-of-extensions marker.
    sink.write_at(0, &h)?;
    let file_size = total * cs;
    sink.set_len(file_size)?;
    sink.finish()?;
    Ok(Qcow2Summary {
        virtual_size: size,
        data_clusters: mapped.len() as u64,
        total_clusters: total,
        file_size,
    })
}

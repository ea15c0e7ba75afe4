//! streamOptimized VMDK (the disk format inside an OVA), per VMware's
//! "Virtual Disk Format 5.0": header with the grain directory "at end", an
//! embedded descriptor, zlib-compressed 64 KiB grains each behind a grain
//! marker, each grain table (empty ones too) once its grains are out, then
//! the grain directory, a footer (the header again, with the directory
//! offset) and an end-of-stream marker. Written strictly front to back, so
//! it could stream.

use std::io::Write;
use std::path::Path;

use flate2::write::ZlibEncoder;
use flate2::Compression;

use super::raw::Sink;
use super::{derive, CloudError, RawImage, SECTOR};

const MAGIC: u32 = 0x564d_444b; // "KDMV" little-endian
/// Version 3 is what VMware writes for streamOptimized disks.
const VERSION: u32 = 3;
const FLAG_NL_DETECT: u32 = 1;
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
const COMPRESS_DEFLATE: u16 = 1;
pub const GRAIN_SECTORS: u64 = 128;
const GRAIN_BYTES: u64 = GRAIN_SECTORS * SECTOR;
const GTES_PER_GT: u64 = 512;
const GT_SECTORS: u64 = GTES_PER_GT * 4 / SECTOR;
const GD_AT_END: u64 = u64::MAX;
const DESCRIPTOR_OFFSET: u64 = 1;
const DESCRIPTOR_SECTORS: u64 = 20;
/// Header and descriptor take the first grain, so grains start aligned.
const OVERHEAD_SECTORS: u64 = GRAIN_SECTORS;
/// Fixed so the compressed bytes depend only on the data (and the pinned
/// compressor version in Cargo.lock).
pub const ZLIB_LEVEL: u32 = 6;

const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;

/// What [`convert`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmdkSummary {
    pub capacity_sectors: u64,
    pub grains: u64,
    pub cid: u32,
    pub file_size: u64,
}

/// The descriptor's extent line names the output's own file name, as
/// VMware's monolithic files do; the bytes therefore depend on that name.
pub fn convert(raw: &Path, out: &Path, seed: &[u8]) -> Result<VmdkSummary, CloudError> {
    let img = RawImage::open(raw)?;
    let capacity = img.size() / SECTOR;
    let grains_total = capacity.div_ceil(GRAIN_SECTORS);
    let gt_count = grains_total.div_ceil(GTES_PER_GT);
    if gt_count > u32::MAX as u64 {
        return Err(CloudError::TooLarge {
            path: raw.to_path_buf(),
            size: img.size(),
            format: "streamOptimized VMDK, bytes",
            limit: u32::MAX as u64 * GTES_PER_GT * GRAIN_BYTES,
        });
    }
    let cid = cid(seed);
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk.vmdk".to_string());

    let sink = Sink::create(out)?;
    let mut w = Stream {
        sink: &sink,
        pos: 0,
    };
    w.put(&header(capacity, GD_AT_END))?;
    // The long content id ends in the short one, as VMware's tools write it.
    let long_cid = format!(
        "{}{cid:08x}",
        hex::encode(&derive(seed, "vmdk long cid")[..12])
    );
    let desc = descriptor(cid, &long_cid, capacity, &name);
    let mut desc_area = vec![0u8; (DESCRIPTOR_SECTORS * SECTOR) as usize];
    if desc.len() > desc_area.len() {
        // Only a pathological file name can get here.
        return Err(CloudError::TooLarge {
            path: out.to_path_buf(),
            size: desc.len() as u64,
            format: "VMDK embedded descriptor, bytes",
            limit: desc_area.len() as u64,
        });
    }
    desc_area[..desc.len()].copy_from_slice(desc.as_bytes());
    w.put(&desc_area)?;
    w.pad_to(OVERHEAD_SECTORS * SECTOR)?;

    // Every grain table is written, empty ones included, as VMware's own
    // writers do: some stream readers expect a table behind every GD entry.
    // `gt` always holds the entries of table `next_gt`, the first unwritten
    // one; grains arrive in ascending order, so tables close in order too.
    let mut gd = vec![0u32; gt_count as usize];
    let mut gt = vec![0u32; GTES_PER_GT as usize];
    let mut next_gt = 0u64;
    let mut grains = 0u64;
    let mut compressed = Vec::with_capacity(GRAIN_BYTES as usize + 1024);
    img.for_each_chunk(GRAIN_BYTES, |offset, grain| {
        let index = offset / GRAIN_BYTES;
        while next_gt < index / GTES_PER_GT {
            gd[next_gt as usize] = w.grain_table(&gt)?;
            gt.fill(0);
            next_gt += 1;
        }
        gt[(index % GTES_PER_GT) as usize] = w.sector32()?;

        // A last grain cut short by the capacity holds only the bytes inside
        // the disk, as VMware's writers do.
        let valid = (capacity * SECTOR - offset).min(GRAIN_BYTES) as usize;
        compressed.clear();
        let mut z = ZlibEncoder::new(&mut compressed, Compression::new(ZLIB_LEVEL));
        z.write_all(&grain[..valid])
            .and_then(|_| z.finish().map(|_| ()))
            .map_err(|source| CloudError::Compress {
                path: raw.to_path_buf(),
                source,
            })?;
        let mut marker = Vec::with_capacity(12 + compressed.len());
        marker.extend_from_slice(&(offset / SECTOR).to_le_bytes());
        marker.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
        marker.extend_from_slice(&compressed);
        w.put(&marker)?;
        w.align()?;
        grains += 1;
        Ok(())
    })?;
    while next_gt < gt_count {
        gd[next_gt as usize] = w.grain_table(&gt)?;
        gt.fill(0);
        next_gt += 1;
    }

    let gd_bytes: Vec<u8> = gd.iter().flat_map(|e| e.to_le_bytes()).collect();
    let gd_sectors = (gd_bytes.len() as u64).div_ceil(SECTOR);
    w.put(&marker(gd_sectors, MARKER_GD))?;
    let gd_offset = w.pos / SECTOR;
    w.put(&gd_bytes)?;
    w.align()?;
    w.put(&marker(1, MARKER_FOOTER))?;
    w.put(&header(capacity, gd_offset))?;
    w.put(&marker(0, MARKER_EOS))?;
    let file_size = w.pos;
    sink.set_len(file_size)?;
    sink.finish()?;
    Ok(VmdkSummary {
        capacity_sectors: capacity,
        grains,
        cid,
        file_size,
    })
}

/// The content id: seed-derived, never 0xffffffff ("no parent") or
/// 0xfffffffe, which VMware tools also treat as special.
pub fn cid(seed: &[u8]) -> u32 {
    let d = derive(seed, "vmdk cid");
    u32::from_le_bytes([d[0], d[1], d[2], d[3]]).min(0xffff_fffd)
}

fn header(capacity: u64, gd_offset: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&VERSION.to_le_bytes());
    h[8..12].copy_from_slice(&(FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS).to_le_bytes());
    h[12..20].copy_from_slice(&capacity.to_le_bytes());
    h[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h[28..36].copy_from_slice(&DESCRIPTOR_OFFSET.to_le_bytes());
    h[36..44].copy_from_slice(&DESCRIPTOR_SECTORS.to_le_bytes());
    h[44..48].copy_from_slice(&(GTES_PER_GT as u32).to_le_bytes());
    // 48..56: redundant grain directory offset, none in stream-optimized.
    h[56..64].copy_from_slice(&gd_offset.to_le_bytes());
    h[64..72].copy_from_slice(&OVERHEAD_SECTORS.to_le_bytes());
    // 72: uncleanShutdown = 0. 73..77: the newline-detection characters
    // that let readers spot a file mangled by a text-mode transfer.
    h[73..77].copy_from_slice(b"\n \r\n");
    h[77..79].copy_from_slice(&COMPRESS_DEFLATE.to_le_bytes());
    h
}

fn marker(sectors: u64, kind: u32) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[0..8].copy_from_slice(&sectors.to_le_bytes());
    // 8..12: size 0 says "metadata marker", not a grain.
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

fn descriptor(cid: u32, long_cid: &str, capacity: u64, name: &str) -> String {
    // lsilogic's BIOS geometry: 255 heads, 63 sectors, capped cylinders.
    let cylinders = (capacity / (255 * 63)).clamp(1, 65535);
    format!(
        "# Disk DescriptorFile\n\
         version=1\n\
         encoding=\"UTF-8\"\n\
         CID={cid:08x}\n\
         parentCID=ffffffff\n\
         createType=\"streamOptimized\"\n\
         \n\
         # Extent description\n\
         RW {capacity} SPARSE \"{name}\"\n\
         \n\
         # The Disk Data Base\n\
         #DDB\n\
         \n\
         ddb.longContentID = \"{long_cid}\"\n\
         ddb.virtualHWVersion = \"4\"\n\
         ddb.adapterType = \"lsilogic\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\n\
         ddb.geometry.heads = \"255\"\n\
         ddb.geometry.sectors = \"63\"\n"
    )
}

/// Sequential writer over the sink that tracks the position in bytes.
struct Stream<'a> {
    sink: &'a Sink,
    pos: u64,
}

impl Stream<'_> {
    fn put(&mut self, data: &[u8]) -> Result<(), CloudError> {
        self.sink.write_at(self.pos, data)?;
        self.pos += data.len() as u64;
        Ok(())
    }

    fn align(&mut self) -> Result<(), CloudError> {
        self.pad_to(self.pos.next_multiple_of(SECTOR))
    }

    fn pad_to(&mut self, target: u64) -> Result<(), CloudError> {
        let zeros = vec![0u8; (target - self.pos) as usize];
        self.put(&zeros)
    }

    /// The current position as the 32-bit sector number tables hold.
    fn sector32(&self) -> Result<u32, CloudError> {
        u32::try_from(self.pos / SECTOR).map_err(|_| CloudError::TooLarge {
            path: self.sink.path().to_path_buf(),
            size: self.pos,
            format: "streamOptimized VMDK (32-bit sector offsets), output bytes",
            limit: u32::MAX as u64 * SECTOR,
        })
    }

    /// Writes a grain-table marker and the table; returns the table's sector.
    fn grain_table(&mut self, gt: &[u32]) -> Result<u32, CloudError> {
        self.put(&marker(GT_SECTORS, MARKER_GT))?;
        let at = self.sector32()?;
        let bytes: Vec<u8> = gt.iter().flat_map(|e| e.to_le_bytes()).collect();
        self.put(&bytes)?;
        Ok(at)
    }
}

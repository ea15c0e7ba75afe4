//! GCE image import format: `disk.raw` alone in a gzip-compressed tar.
//!
//! GCE's docs build it with `tar --format=oldgnu -Sczf`, so [`convert`]
//! writes an oldgnu sparse entry; [`convert_plain`] writes a regular entry
//! carrying every byte. Numbers too large for octal fields (sizes and
//! offsets of 8 GiB and up) use GNU's base-256 form. gzip has mtime 0, no
//! file name, a fixed level and OS byte.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};

use super::raw::Sink;
use super::{CloudError, RawImage};

pub const ENTRY_NAME: &str = "disk.raw";
pub const GZIP_LEVEL: u32 = 6;
const BLOCK: u64 = 512;
/// GNU tar's default record: archives are padded to a multiple of it.
const RECORD: u64 = 20 * BLOCK;
const CHUNK: u64 = 1 << 20;
/// Sparse map granularity: fine enough to skip the zero gaps inside
/// filesystems, coarse enough to keep the map short.
const SPARSE_CHUNK: u64 = 64 << 10;
/// gzip's OS byte: 3 = Unix, fixed instead of depending on the builder.
const GZIP_OS_UNIX: u8 = 3;

/// What [`convert`] or [`convert_plain`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GceSummary {
    /// Uncompressed tar length.
    pub tar_size: u64,
    pub file_size: u64,
}

/// Writes `disk.raw` as a GNU sparse entry (what GCE's docs produce with
/// `tar --format=oldgnu -S`): only the non-zero 64 KiB chunks are stored,
/// so holes cost neither reading nor compressing. The raw image is read
/// twice (map, then data); a change in between is reported, not written.
pub fn convert(raw: &Path, out_tar_gz: &Path, epoch: u64) -> Result<GceSummary, CloudError> {
    let img = RawImage::open(raw)?;
    let size = img.size();
    let mut chunks: Vec<u64> = Vec::new();
    img.for_each_chunk(SPARSE_CHUNK, |offset, _| {
        chunks.push(offset);
        Ok(())
    })?;
    let mut map: Vec<(u64, u64)> = Vec::new();
    for &offset in &chunks {
        let len = (size - offset).min(SPARSE_CHUNK);
        match map.last_mut() {
            Some((o, l)) if *o + *l == offset => *l += len,
            _ => map.push((offset, len)),
        }
    }
    let stored: u64 = map.iter().map(|(_, l)| l).sum();
    let headers = sparse_headers(ENTRY_NAME, size, &map, epoch).expect("entry name fits");
    archive(out_tar_gz, &headers, stored, |tar| {
        let changed = |offset| CloudError::Changed {
            path: raw.to_path_buf(),
            offset,
        };
        let mut expected = chunks.iter();
        img.for_each_chunk(SPARSE_CHUNK, |offset, chunk| {
            if expected.next() != Some(&offset) {
                return Err(changed(offset));
            }
            let len = (size - offset).min(SPARSE_CHUNK);
            tar.put(&chunk[..len as usize])
        })?;
        match expected.next() {
            Some(&offset) => Err(changed(offset)),
            None => Ok(()),
        }
    })
}

/// Writes `disk.raw` as a plain entry: every byte, holes streamed as zeros
/// (never read from the input). For importers that reject sparse entries.
pub fn convert_plain(raw: &Path, out_tar_gz: &Path, epoch: u64) -> Result<GceSummary, CloudError> {
    let img = RawImage::open(raw)?;
    let size = img.size();
    let header = tar_header(ENTRY_NAME, size, epoch).expect("entry name fits");
    archive(out_tar_gz, &header, size, |tar| {
        let zeros = vec![0u8; CHUNK as usize];
        let mut pos = 0u64;
        img.for_each_chunk(CHUNK, |offset, chunk| {
            tar.zeros(&zeros, offset - pos)?;
            let len = (size - offset).min(CHUNK) as usize;
            tar.put(&chunk[..len])?;
            pos = offset + len as u64;
            Ok(())
        })?;
        tar.zeros(&zeros, size - pos)
    })
}

/// The gzip stream around one entry: `headers`, then `body` writes exactly
/// `data_len` bytes, then padding, the two zero end blocks and the fill to a
/// whole record, as GNU tar does.
fn archive(
    out: &Path,
    headers: &[u8],
    data_len: u64,
    body: impl FnOnce(&mut TarOut<'_, GzEncoder<BufWriter<&File>>>) -> Result<(), CloudError>,
) -> Result<GceSummary, CloudError> {
    let sink = Sink::create(out)?;
    let gz = GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS_UNIX)
        .write(BufWriter::new(sink.file()), Compression::new(GZIP_LEVEL));
    let mut tar = TarOut {
        gz,
        pos: 0,
        sink: &sink,
    };
    tar.put(headers)?;
    body(&mut tar)?;
    let end = (headers.len() as u64 + data_len).next_multiple_of(BLOCK) + 2 * BLOCK;
    let tar_size = end.next_multiple_of(RECORD);
    let zeros = vec![0u8; RECORD as usize];
    tar.zeros(&zeros, tar_size - tar.pos)?;
    let TarOut { gz, .. } = tar;
    let buf = gz.finish().map_err(|source| sink.write_err(0, source))?;
    buf.into_inner()
        .map_err(|e| sink.write_err(0, e.into_error()))?;
    let file_size = sink
        .file()
        .metadata()
        .map_err(|source| sink.write_err(0, source))?
        .len();
    sink.finish()?;
    Ok(GceSummary {
        tar_size,
        file_size,
    })
}

struct TarOut<'a, W: Write> {
    gz: W,
    /// Position in the uncompressed tar stream.
    pos: u64,
    sink: &'a Sink,
}

impl<W: Write> TarOut<'_, W> {
    /// Errors name the output file and the offset in the uncompressed tar.
    fn put(&mut self, data: &[u8]) -> Result<(), CloudError> {
        let pos = self.pos;
        self.gz
            .write_all(data)
            .map_err(|source| self.sink.write_err(pos, source))?;
        self.pos += data.len() as u64;
        Ok(())
    }

    fn zeros(&mut self, zeros: &[u8], mut n: u64) -> Result<(), CloudError> {
        while n > 0 {
            let k = n.min(zeros.len() as u64) as usize;
            self.put(&zeros[..k])?;
            n -= k as u64;
        }
        Ok(())
    }
}

/// An oldgnu header for a regular file, mode 0644, owner 0:0. `None` if the
/// name exceeds the 100-byte field.
pub fn tar_header(name: &str, size: u64, mtime: u64) -> Option<[u8; 512]> {
    let mut h = base_header(name, mtime)?;
    h[156] = b'0';
    number(&mut h[124..136], size);
    checksum(&mut h);
    Some(h)
}

/// An oldgnu sparse entry ('S'): the header holds the first 4 map entries
/// and the real size; extension blocks of 21 entries follow it. The map
/// always ends at `real_size` (a zero-length entry if the file ends in a
/// hole), which is how GNU tar records a trailing hole. `None` if the name
/// exceeds the 100-byte field.
pub fn sparse_headers(
    name: &str,
    real_size: u64,
    map: &[(u64, u64)],
    mtime: u64,
) -> Option<Vec<u8>> {
    let mut map = map.to_vec();
    if map.last().is_none_or(|(o, l)| o + l < real_size) {
        map.push((real_size, 0));
    }
    let stored: u64 = map.iter().map(|(_, l)| l).sum();
    let mut h = base_header(name, mtime)?;
    h[156] = b'S';
    number(&mut h[124..136], stored);
    let (first, rest) = map.split_at(map.len().min(4));
    put_entries(&mut h[386..482], first);
    h[482] = u8::from(!rest.is_empty());
    number(&mut h[483..495], real_size);
    checksum(&mut h);
    let mut out = h.to_vec();
    let blocks: Vec<&[(u64, u64)]> = rest.chunks(21).collect();
    for (i, entries) in blocks.iter().enumerate() {
        let mut b = [0u8; 512];
        put_entries(&mut b[..504], entries);
        b[504] = u8::from(i + 1 < blocks.len());
        out.extend_from_slice(&b);
    }
    Some(out)
}

fn put_entries(area: &mut [u8], entries: &[(u64, u64)]) {
    for (slot, &(offset, len)) in area.chunks_exact_mut(24).zip(entries) {
        number(&mut slot[..12], offset);
        number(&mut slot[12..], len);
    }
}

fn base_header(name: &str, mtime: u64) -> Option<[u8; 512]> {
    if name.len() > 100 {
        return None;
    }
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    number(&mut h[100..108], 0o644);
    number(&mut h[108..116], 0);
    number(&mut h[116..124], 0);
    number(&mut h[136..148], mtime);
    // oldgnu magic and version: "ustar " then " \0".
    h[257..265].copy_from_slice(b"ustar  \0");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    Some(h)
}

/// The checksum is computed with its own field read as spaces.
fn checksum(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
    h[154] = 0;
    h[155] = b' ';
}

/// Zero-padded octal filling all but the last byte of `field`, NUL-ended;
/// values too large for that use GNU's base-256 form (high bit of the
/// first byte set, big-endian value in the rest).
fn number(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    if text.len() <= digits {
        field[..digits].copy_from_slice(text.as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        field[0] = 0x80;
        let n = field.len();
        field[n - 8..].copy_from_slice(&value.to_be_bytes());
    }
}

//! GCE image import format: `disk.raw` alone in a gzip-compressed tar.
//!
//! The tar entry is a plain oldgnu regular file (GCE's docs ask for GNU tar
//! `--format=oldgnu`); sizes of 8 GiB and up use GNU's base-256 size field.
//! Holes are streamed as zeros (tar has to carry every byte) but never read
//! from the input. gzip has mtime 0, no file name, a fixed level and OS byte.

use std::io::{BufWriter, Write};
use std::path::Path;

use flate2::{Compression, GzBuilder};

use super::raw::Sink;
use super::{CloudError, RawImage};

pub const ENTRY_NAME: &str = "disk.raw";
pub const GZIP_LEVEL: u32 = 6;
const BLOCK: u64 = 512;
/// GNU tar's default record: archives are padded to a multiple of it.
const RECORD: u64 = 20 * BLOCK;
/// Largest size the 11 octal digits of a classic header can hold.
const OCTAL_SIZE_MAX: u64 = (1 << 33) - 1;
const CHUNK: u64 = 1 << 20;
/// gzip's OS byte: 3 = Unix, fixed instead of depending on the builder.
const GZIP_OS_UNIX: u8 = 3;

/// What [`convert`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GceSummary {
    /// Uncompressed tar length.
    pub tar_size: u64,
    pub file_size: u64,
}

pub fn convert(raw: &Path, out_tar_gz: &Path, epoch: u64) -> Result<GceSummary, CloudError> {
    let img = RawImage::open(raw)?;
    let size = img.size();
    let header = tar_header(ENTRY_NAME, size, epoch).ok_or(CloudError::EpochOutOfRange {
        epoch,
        format: "tar",
        why: "more than 11 octal digits",
    })?;

    let sink = Sink::create(out_tar_gz)?;
    let gz = GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS_UNIX)
        .write(BufWriter::new(sink.file()), Compression::new(GZIP_LEVEL));
    let mut tar = TarOut {
        gz,
        pos: 0,
        sink: &sink,
    };
    tar.put(&header)?;
    let zeros = vec![0u8; CHUNK as usize];
    let mut pos = 0u64;
    img.for_each_chunk(CHUNK, |offset, chunk| {
        tar.zeros(&zeros, offset - pos)?;
        let len = (size - offset).min(CHUNK) as usize;
        tar.put(&chunk[..len])?;
        pos = offset + len as u64;
        Ok(())
    })?;
    tar.zeros(&zeros, size - pos)?;
    // Pad the entry to a block, add the two zero end blocks, then fill the
    // record, as GNU tar does.
    let end = (BLOCK + size).next_multiple_of(BLOCK) + 2 * BLOCK;
    let end = end.next_multiple_of(RECORD);
    let tar_size = end;
    tar.zeros(&zeros, end - tar.pos)?;
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
    /// Position in the uncompressed tar stream, for error messages.
    pos: u64,
    sink: &'a Sink,
}

impl<W: Write> TarOut<'_, W> {
    fn put(&mut self, data: &[u8]) -> Result<(), CloudError> {
        self.gz
            .write_all(data)
            .map_err(|source| CloudError::Compress {
                path: self.sink.path().to_path_buf(),
                source,
            })?;
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
/// name exceeds the 100-byte field or `mtime` the 11-digit octal field.
pub fn tar_header(name: &str, size: u64, mtime: u64) -> Option<[u8; 512]> {
    if name.len() > 100 {
        return None;
    }
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], 0o644)?;
    octal(&mut h[108..116], 0)?;
    octal(&mut h[116..124], 0)?;
    if size <= OCTAL_SIZE_MAX {
        octal(&mut h[124..136], size)?;
    } else {
        // GNU base-256: high bit of the first byte set, big-endian value.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut h[136..148], mtime)?;
    h[156] = b'0';
    // oldgnu magic and version: "ustar " then " \0".
    h[257..265].copy_from_slice(b"ustar  \0");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    // The checksum is computed with its own field read as spaces.
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
    h[154] = 0;
    h[155] = b' ';
    Some(h)
}

/// Zero-padded octal filling all but the last byte of `field`, NUL-ended.
fn octal(field: &mut [u8], value: u64) -> Option<()> {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    if text.len() > digits {
        return None;
    }
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
    Some(())
}

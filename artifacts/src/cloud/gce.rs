//! GCE image import format: `disk.raw` alone in a gzip-compressed tar.
//!
//! GCE's docs build it with `tar --format=oldgnu -Sczf`, so [`convert`]
//! writes an oldgnu sparse entry; [`convert_plain`] writes a regular entry
//! carrying every byte (headers and stream: [`crate::tar`]). gzip has mtime
//! 0, no file name, a fixed level and OS byte.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};

use super::raw::Sink;
use super::{CloudError, RawImage};
use crate::tar::{self, TarWriter};

pub const ENTRY_NAME: &str = "disk.raw";
pub const GZIP_LEVEL: u32 = 6;
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
    let headers = tar::gnu_sparse_headers(ENTRY_NAME, size, &map, epoch).expect("entry name fits");
    archive(out_tar_gz, &headers, |tar| {
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
    let header = tar::gnu_file_header(ENTRY_NAME, size, epoch).expect("entry name fits");
    archive(out_tar_gz, &header, |tar| {
        let mut pos = 0u64;
        img.for_each_chunk(CHUNK, |offset, chunk| {
            tar.zeros(offset - pos)?;
            let len = (size - offset).min(CHUNK) as usize;
            tar.put(&chunk[..len])?;
            pos = offset + len as u64;
            Ok(())
        })?;
        tar.zeros(size - pos)
    })
}

/// The gzip stream around one entry: `headers`, then what `body` writes
/// (the entry's data), then padding, the two zero end blocks and the fill to
/// a whole record, as GNU tar does.
fn archive(
    out: &Path,
    headers: &[u8],
    body: impl FnOnce(&mut TarOut<'_, GzEncoder<BufWriter<&File>>>) -> Result<(), CloudError>,
) -> Result<GceSummary, CloudError> {
    let sink = Sink::create(out)?;
    let gz = GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS_UNIX)
        .write(BufWriter::new(sink.file()), Compression::new(GZIP_LEVEL));
    let mut tar = TarOut {
        tar: TarWriter::new(gz),
        sink: &sink,
    };
    tar.put(headers)?;
    body(&mut tar)?;
    let (gz, tar_size) = tar
        .tar
        .finish(tar::GNU_RECORD)
        .map_err(|e| sink.write_err(e.offset, e.source))?;
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

/// The tar stream with errors that name the output file and the offset in
/// the uncompressed tar.
struct TarOut<'a, W: Write> {
    tar: TarWriter<W>,
    sink: &'a Sink,
}

impl<W: Write> TarOut<'_, W> {
    fn put(&mut self, data: &[u8]) -> Result<(), CloudError> {
        self.tar
            .put(data)
            .map_err(|e| self.sink.write_err(e.offset, e.source))
    }

    fn zeros(&mut self, n: u64) -> Result<(), CloudError> {
        self.tar
            .zeros(n)
            .map_err(|e| self.sink.write_err(e.offset, e.source))
    }
}

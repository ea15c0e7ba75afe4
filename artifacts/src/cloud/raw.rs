//! The raw input image: size checks and a chunk walker that skips holes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::{CloudError, SECTOR};

/// An opened raw disk image whose size is a non-zero multiple of 512.
#[derive(Debug)]
pub struct RawImage {
    file: File,
    path: PathBuf,
    size: u64,
}

impl RawImage {
    pub fn open(path: &Path) -> Result<RawImage, CloudError> {
        let file = File::open(path).map_err(|source| CloudError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let meta = file.metadata().map_err(|source| CloudError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let size = meta.len();
        if size == 0 {
            return Err(CloudError::EmptyInput {
                path: path.to_path_buf(),
            });
        }
        if size % SECTOR != 0 {
            return Err(CloudError::UnalignedSize {
                path: path.to_path_buf(),
                size,
            });
        }
        Ok(RawImage {
            file,
            path: path.to_path_buf(),
            size,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Byte ranges `[start, end)` the filesystem reports as data, in order.
    /// Filesystems without SEEK_DATA support report one extent covering the
    /// whole file, which is still correct, just slower.
    pub fn data_extents(&self) -> Result<Vec<(u64, u64)>, CloudError> {
        let fd = self.file.as_raw_fd();
        let mut extents = Vec::new();
        let mut pos = 0u64;
        while pos < self.size {
            let start = match seek(fd, pos, libc::SEEK_DATA) {
                Ok(s) => s,
                // ENXIO: no data at or after pos.
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
                Err(source) => return Err(self.read_err("SEEK_DATA", pos, source)),
            };
            if start >= self.size {
                break;
            }
            let end = seek(fd, start, libc::SEEK_HOLE)
                .map_err(|source| self.read_err("SEEK_HOLE", start, source))?
                .min(self.size);
            extents.push((start, end));
            pos = end;
        }
        Ok(extents)
    }

    /// Calls `f(offset, chunk)` for every `chunk_size`-aligned chunk that holds
    /// a non-zero byte, in ascending order. `chunk` is always `chunk_size`
    /// long; past the end of the image it is zero-filled. `chunk_size` must
    /// be a non-zero multiple of 512.
    pub fn for_each_chunk(
        &self,
        chunk_size: u64,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), CloudError>,
    ) -> Result<(), CloudError> {
        if chunk_size == 0 || chunk_size & (SECTOR - 1) != 0 || usize::try_from(chunk_size).is_err()
        {
            return Err(CloudError::BadChunkSize { chunk_size });
        }
        let mut buf = vec![0u8; chunk_size as usize];
        // Extents are sorted, so remembering the next unvisited chunk keeps
        // a chunk shared by two extents from being visited twice.
        let mut next = 0u64;
        for (start, end) in self.data_extents()? {
            let first = (start / chunk_size).max(next);
            let last = end.div_ceil(chunk_size);
            for index in first..last {
                let offset = index * chunk_size;
                let len = chunk_size.min(self.size - offset) as usize;
                buf[len..].fill(0);
                self.file
                    .read_exact_at(&mut buf[..len], offset)
                    .map_err(|source| self.read_err("read", offset, source))?;
                if buf.iter().any(|&b| b != 0) {
                    f(offset, &buf)?;
                }
            }
            next = next.max(last);
        }
        Ok(())
    }

    fn read_err(&self, op: &'static str, offset: u64, source: std::io::Error) -> CloudError {
        CloudError::Read {
            path: self.path.clone(),
            op,
            offset,
            source,
        }
    }
}

fn seek(fd: libc::c_int, offset: u64, whence: libc::c_int) -> std::io::Result<u64> {
    let off = libc::off_t::try_from(offset)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: lseek only moves this fd's offset; every read uses pread
    // (read_exact_at), so nothing depends on the file position.
    let r = unsafe { libc::lseek(fd, off, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        // EINVAL on SEEK_DATA means "not supported": treat it all as data.
        if e.raw_os_error() == Some(libc::EINVAL) {
            return Ok(if whence == libc::SEEK_DATA {
                offset
            } else {
                u64::MAX
            });
        }
        return Err(e);
    }
    Ok(r as u64)
}

/// An output file with its path, so every write error names both.
pub(crate) struct Sink {
    file: File,
    path: PathBuf,
}

impl Sink {
    pub(crate) fn create(path: &Path) -> Result<Sink, CloudError> {
        let file = File::create(path).map_err(|source| CloudError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Sink {
            file,
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), CloudError> {
        self.file
            .write_all_at(data, offset)
            .map_err(|source| self.write_err(offset, source))
    }

    /// Sets the final length; bytes never written stay holes.
    pub(crate) fn set_len(&self, len: u64) -> Result<(), CloudError> {
        self.file
            .set_len(len)
            .map_err(|source| self.write_err(len, source))
    }

    pub(crate) fn finish(&self) -> Result<(), CloudError> {
        self.file
            .sync_all()
            .map_err(|source| self.write_err(0, source))
    }

    pub(crate) fn write_err(&self, offset: u64, source: std::io::Error) -> CloudError {
        CloudError::Write {
            path: self.path.clone(),
            offset,
            source,
        }
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

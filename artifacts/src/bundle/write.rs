//! Writing a bundle: the caller's files as one ustar archive through
//! [`crate::tar`], with every entry and the whole archive hashed on the way.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{name_problem, BundleError, BundleSummary, EntrySummary, COPY_BUF, OCTAL11_MAX};
use crate::tar::{self, TarWriter};

/// Hashes everything written through it, so the summary costs no second
/// pass over a multi-GiB archive.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.hash.update(&b[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The archive at `path` (errors name it and the offset).
struct Out<'a> {
    tar: TarWriter<Hashing<BufWriter<File>>>,
    path: &'a Path,
}

impl Out<'_> {
    fn err(&self, e: tar::WriteError) -> BundleError {
        BundleError::Write {
            path: self.path.to_path_buf(),
            offset: e.offset,
            source: e.source,
        }
    }

    fn put(&mut self, b: &[u8]) -> Result<(), BundleError> {
        self.tar.put(b).map_err(|e| self.err(e))
    }
}

fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// Writes the bundle to `out` (via `out.partial`, renamed when complete, so a
/// reader never sees half an archive under the final name).
pub fn write_tar(
    out: &Path,
    files: &[(&str, &Path)],
    epoch: u64,
) -> Result<BundleSummary, BundleError> {
    if epoch > OCTAL11_MAX {
        return Err(BundleError::EpochOutOfRange {
            epoch,
            max: OCTAL11_MAX,
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    for (name, _) in files {
        if let Some(why) = name_problem(name) {
            return Err(BundleError::BadInputName {
                name: name.to_string(),
                why,
            });
        }
        if !seen.insert(*name) {
            return Err(BundleError::DuplicateInput {
                name: name.to_string(),
            });
        }
    }

    let tmp = partial_path(out);
    let result = write_to(&tmp, files, epoch).and_then(|summary| {
        fs::rename(&tmp, out).map_err(|source| BundleError::Write {
            path: out.to_path_buf(),
            offset: summary.size,
            source,
        })?;
        Ok(summary)
    });
    if result.is_err() {
        // Best effort: the error being returned matters more than this one.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_to(tmp: &Path, files: &[(&str, &Path)], epoch: u64) -> Result<BundleSummary, BundleError> {
    let file = File::create(tmp).map_err(|source| BundleError::Write {
        path: tmp.to_path_buf(),
        offset: 0,
        source,
    })?;
    let mut o = Out {
        tar: TarWriter::new(Hashing {
            inner: BufWriter::with_capacity(COPY_BUF, file),
            hash: Sha256::new(),
        }),
        path: tmp,
    };
    let mut entries = Vec::with_capacity(files.len());
    let mut buf = vec![0u8; COPY_BUF];
    for (name, path) in files {
        let rd = |source| BundleError::ReadInput {
            path: path.to_path_buf(),
            source,
        };
        let mut src = File::open(path).map_err(rd)?;
        let meta = src.metadata().map_err(rd)?;
        if !meta.is_file() {
            return Err(BundleError::NotAFile {
                name: name.to_string(),
                path: path.to_path_buf(),
            });
        }
        let size = meta.len();
        let offset = o.tar.position();
        let header = tar::ustar_file_header(name, size, epoch).expect("name checked above");
        o.put(&header)?;
        let mut entry_hash = Sha256::new();
        let mut left = size;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match src.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(BundleError::InputChanged {
                        path: path.to_path_buf(),
                        expected: size,
                        found: format!("it ended after {}", size - left),
                    })
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(rd(e)),
            };
            entry_hash.update(&buf[..n]);
            o.put(&buf[..n])?;
            left -= n as u64;
        }
        if src.read(&mut buf[..1]).map_err(rd)? != 0 {
            return Err(BundleError::InputChanged {
                path: path.to_path_buf(),
                expected: size,
                found: "it grew".to_string(),
            });
        }
        o.tar.end_entry().map_err(|e| o.err(e))?;
        entries.push(EntrySummary {
            name: name.to_string(),
            size,
            offset,
            sha256: hex::encode(entry_hash.finalize()),
        });
    }
    let (hashing, size) = o.tar.finish(tar::BLOCK).map_err(|e| BundleError::Write {
        path: tmp.to_path_buf(),
        offset: e.offset,
        source: e.source,
    })?;
    let wr = |source| BundleError::Write {
        path: tmp.to_path_buf(),
        offset: size,
        source,
    };
    let Hashing { inner, hash } = hashing;
    let file = inner.into_inner().map_err(|e| wr(e.into_error()))?;
    file.sync_all().map_err(wr)?;
    Ok(BundleSummary {
        size,
        sha256: hex::encode(hash.finalize()),
        entries,
    })
}

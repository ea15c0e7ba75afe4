//! Hashing while streaming, so large artifacts are never held in memory and the
//! installer can check a payload in the same pass that writes it to disk.

use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// A sha256 digest; displays and parses as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    pub fn of(data: &[u8]) -> Self {
        finish(Sha256::new_with_prefix(data))
    }

    /// Parses exactly 64 lowercase hex digits (the only form the manifest
    /// writes, so the canonical form is also the only accepted one).
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Sha256Digest(out))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.to_hex())
    }
}

fn finish(h: Sha256) -> Sha256Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(&h.finalize());
    Sha256Digest(out)
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("stream size mismatch: expected {expected} bytes, got {actual}")]
    Size { expected: u64, actual: u64 },
    #[error("stream sha256 mismatch: expected {expected}, got {actual} ({size} bytes)")]
    Hash {
        expected: Sha256Digest,
        actual: Sha256Digest,
        size: u64,
    },
    #[error("hashing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn check(
    actual: Sha256Digest,
    size: u64,
    expected: Sha256Digest,
    expected_size: u64,
) -> Result<(), StreamError> {
    if size != expected_size {
        return Err(StreamError::Size {
            expected: expected_size,
            actual: size,
        });
    }
    if actual != expected {
        return Err(StreamError::Hash {
            expected,
            actual,
            size,
        });
    }
    Ok(())
}

/// Passes writes through to `W`, hashing exactly the bytes `W` accepted.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Flushes and returns the inner writer, the digest and the byte count.
    pub fn finish(mut self) -> io::Result<(W, Sha256Digest, u64)> {
        self.inner.flush()?;
        Ok((self.inner, finish(self.hasher), self.size))
    }

    /// Flushes, then checks what went through against the manifest's entry.
    /// On mismatch the caller must not activate what it wrote.
    pub fn expect(self, sha256: Sha256Digest, size: u64) -> Result<W, StreamError> {
        let (w, digest, n) = self.finish().map_err(|source| StreamError::Io {
            path: PathBuf::from("<stream>"),
            source,
        })?;
        check(digest, n, sha256, size)?;
        Ok(w)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// Bytes read so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn finish(self) -> (R, Sha256Digest, u64) {
        (self.inner, finish(self.hasher), self.size)
    }

    /// Checks what was read so far against the manifest's entry. The caller
    /// is expected to have read to the end; a short read shows up as a size
    /// mismatch.
    pub fn expect(self, sha256: Sha256Digest, size: u64) -> Result<R, StreamError> {
        let (r, digest, n) = self.finish();
        check(digest, n, sha256, size)?;
        Ok(r)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// Size and sha256 of a file, read in fixed-size chunks.
pub fn hash_file(path: &Path) -> Result<(u64, Sha256Digest), StreamError> {
    let io_err = |source| StreamError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let mut reader = HashingReader::new(file);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    let (_, digest, size) = reader.finish();
    Ok((size, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    // sha256("abc") from FIPS 180-2, appendix B.1
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn writer_hashes_and_expects() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"a").unwrap();
        w.write_all(b"bc").unwrap();
        let want = Sha256Digest::from_hex(ABC).unwrap();
        assert_eq!(w.expect(want, 3).unwrap(), b"abc");
    }

    #[test]
    fn writer_rejects_wrong_size_and_hash() {
        let want = Sha256Digest::from_hex(ABC).unwrap();
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"abd").unwrap();
        assert!(matches!(
            w.expect(want, 3),
            Err(StreamError::Hash { size: 3, .. })
        ));
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"ab").unwrap();
        assert!(matches!(
            w.expect(want, 3),
            Err(StreamError::Size {
                expected: 3,
                actual: 2
            })
        ));
    }

    #[test]
    fn reader_hashes() {
        let mut r = HashingReader::new(&b"abc"[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        r.expect(Sha256Digest::from_hex(ABC).unwrap(), 3).unwrap();
    }

    #[test]
    fn hex_is_strict() {
        assert!(Sha256Digest::from_hex(&ABC.to_uppercase()).is_none());
        assert!(Sha256Digest::from_hex(&ABC[..62]).is_none());
        assert!(Sha256Digest::from_hex(&format!("{}zz", &ABC[..62])).is_none());
    }
}

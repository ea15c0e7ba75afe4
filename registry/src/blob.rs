//! A blob as a verified stream: hashed as it is read, never buffered.
//!
//! [`BlobReader`] passes the bytes through and fails (as an `io::Error`
//! wrapping a [`crate::Error`], see [`crate::Error::from_io`]) as soon as the
//! stream runs past the expected size, when it ends short, and when its
//! sha256 differs. The digest is checked when the last expected byte
//! arrives, before that last chunk is handed out, so a consumer writing
//! the stream somewhere has, on success, written exactly the expected bytes,
//! and on failure, never sees the whole of a wrong blob. A consumer must
//! read until `Ok(0)` (or call [`BlobReader::finish`]): only that proves the
//! server sent nothing more.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

use crate::error::Error;

/// Log progress of blobs at least this large.
const PROGRESS_MIN: u64 = 8 << 20;

/// What a blob must be, and where it comes from (for errors and logs).
#[derive(Debug, Clone)]
pub struct BlobId {
    pub peer: String,
    pub repo: String,
    /// `sha256:<hex>`
    pub digest: String,
    pub size: u64,
    /// What the blob is to the reader (a bundle file name), for progress.
    pub label: String,
}

pub struct BlobReader<R> {
    inner: R,
    id: BlobId,
    hasher: Sha256,
    read: u64,
    /// Digest checked (all expected bytes seen).
    verified: bool,
    /// Reached end of stream after verification.
    done: bool,
    failed: bool,
    next_progress: u64,
}

impl<R: Read> BlobReader<R> {
    pub fn new(inner: R, id: BlobId) -> Self {
        if id.size >= PROGRESS_MIN {
            tracing::info!(
                "{}: fetching {} ({} MiB) from {}/{}",
                id.label,
                id.digest,
                id.size >> 20,
                id.peer,
                id.repo
            );
        }
        BlobReader {
            inner,
            hasher: Sha256::new(),
            read: 0,
            verified: false,
            done: false,
            failed: false,
            next_progress: id.size / 10,
            id,
        }
    }

    pub fn id(&self) -> &BlobId {
        &self.id
    }

    /// Bytes passed through so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Reads to the end (there should be nothing left) and returns the
    /// verified result.
    pub fn finish(mut self) -> Result<BlobId, Error> {
        let mut scratch = [0u8; 8192];
        loop {
            match self.read(&mut scratch) {
                Ok(0) => return Ok(self.id),
                // Bytes the caller did not read are still hashed and counted.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::from_io(e, "reading blob", "<stream>")),
            }
        }
    }

    fn fail(&mut self, e: Error) -> io::Error {
        self.failed = true;
        io::Error::other(e)
    }

    fn size_mismatch(&mut self, actual: String) -> io::Error {
        let id = &self.id;
        let e = Error::SizeMismatch {
            peer: id.peer.clone(),
            repo: id.repo.clone(),
            digest: id.digest.clone(),
            expected: id.size,
            actual,
        };
        self.fail(e)
    }

    fn truncated(&mut self, detail: String) -> io::Error {
        let id = &self.id;
        let e = Error::Truncated {
            peer: id.peer.clone(),
            repo: id.repo.clone(),
            digest: id.digest.clone(),
            read: self.read,
            expected: id.size,
            detail,
        };
        self.fail(e)
    }

    /// All expected bytes are in: checks their digest.
    fn verify(&mut self) -> io::Result<()> {
        let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if self.id.digest.strip_prefix("sha256:") != Some(actual.as_str()) {
            let id = &self.id;
            let e = Error::DigestMismatch {
                peer: id.peer.clone(),
                repo: id.repo.clone(),
                digest: id.digest.clone(),
                actual,
            };
            return Err(self.fail(e));
        }
        self.verified = true;
        if self.id.size >= PROGRESS_MIN {
            tracing::info!("{}: {} verified", self.id.label, self.id.digest);
        }
        Ok(())
    }

    fn progress(&mut self) {
        if self.id.size < PROGRESS_MIN || self.read < self.next_progress {
            return;
        }
        let pct = self.read * 100 / self.id.size;
        tracing::info!(
            "{}: {pct}% ({} of {} MiB)",
            self.id.label,
            self.read >> 20,
            self.id.size >> 20
        );
        self.next_progress = self.read + self.id.size / 10;
    }
}

impl<R: Read> Read for BlobReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other("blob stream already failed"));
        }
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if !self.verified && self.id.size == 0 {
            self.verify()?;
        }
        if self.verified {
            // All expected bytes are in: the stream must end here.
            let mut one = [0u8; 1];
            return match self.inner.read(&mut one) {
                Ok(0) => {
                    self.done = true;
                    Ok(0)
                }
                Ok(_) => Err(self.size_mismatch(format!("more than {}", self.id.size))),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
                Err(e) => Err(self.truncated(format!(" after the last byte: {e}"))),
            };
        }
        // Never ask for more than one byte past the end: an overlong blob is
        // caught at once, not after the whole of it.
        let room = self.id.size - self.read + 1;
        let cap = (buf.len() as u64).min(room) as usize;
        let n = match self.inner.read(&mut buf[..cap]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => return Err(self.truncated(format!(": {e}"))),
        };
        if n == 0 {
            return Err(self.truncated(String::new()));
        }
        self.read += n as u64;
        if self.read > self.id.size {
            return Err(self.size_mismatch(format!("more than {}", self.id.size)));
        }
        self.hasher.update(&buf[..n]);
        if self.read == self.id.size {
            self.verify()?;
        } else {
            self.progress();
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(data: &[u8], size: u64) -> BlobId {
        BlobId {
            peer: "127.0.0.1:1".into(),
            repo: "r".into(),
            digest: format!("sha256:{}", hex::encode(Sha256::digest(data))),
            size,
            label: "x".into(),
        }
    }

    fn read_all(data: &[u8], id: BlobId) -> Result<Vec<u8>, Error> {
        let mut r = BlobReader::new(data, id);
        let mut out = Vec::new();
        r.read_to_end(&mut out)
            .map_err(|e| Error::from_io(e, "t", "t"))?;
        Ok(out)
    }

    #[test]
    fn passes_a_good_blob() {
        assert_eq!(read_all(b"hello", id(b"hello", 5)).unwrap(), b"hello");
        assert_eq!(read_all(b"", id(b"", 0)).unwrap(), b"");
    }

    #[test]
    fn names_each_kind_of_bad_stream() {
        let e = read_all(b"hellx", id(b"hello", 5)).unwrap_err();
        assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
        assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
        let e = read_all(b"hell", id(b"hello", 5)).unwrap_err();
        assert!(
            e.to_string()
                .contains("truncated stream: ended after 4 of 5 bytes"),
            "{e}"
        );
        let e = read_all(b"hello!", id(b"hello", 5)).unwrap_err();
        assert!(e.to_string().contains("size mismatch: more than 5"), "{e}");
        let e = read_all(b"hello, world", id(b"hello, world", 5)).unwrap_err();
        assert!(e.to_string().contains("size mismatch"), "{e}");
    }

    #[test]
    fn withholds_the_last_chunk_of_a_wrong_blob() {
        let mut r = BlobReader::new(&b"abcd"[..], id(b"abce", 4));
        let mut buf = [0u8; 2];
        assert_eq!(r.read(&mut buf).unwrap(), 2);
        assert!(r.read(&mut buf).is_err());
    }
}

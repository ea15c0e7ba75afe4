//! The upgrade bundle: a flat, deterministic ustar archive of a few named
//! files, and a streaming reader that refuses anything but that shape.
//!
//! Writer: entries in the caller's order (manifest first, so a streaming
//! reader can check the signature before it touches the large payload),
//! mode 0644, uid/gid 0, empty uname/gname, mtime = the caller's epoch, no
//! PAX records, data padded to 512 bytes, two zero blocks at the end. Sizes
//! of 8 GiB and more use GNU's base-256 size field, which GNU tar and bsdtar
//! read.
//!
//! Reader: yields `(name, size, impl Read)` in archive order without touching
//! the disk, and refuses path separators, `.`/`..`, absolute names, anything
//! but regular files, duplicates, names outside the caller's list, entries
//! over the caller's size limit and an archive that does not start with the
//! caller's leading names in order, naming the entry and its header offset.
//! The policy can be narrowed between entries ([`BundleReader::set_policy`]),
//! so a caller verifies the leading manifest and then admits only what it
//! lists.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const BLOCK: usize = 512;
// Longer names would need the ustar prefix field or PAX, and bundle names
// are short by design.
use crate::tar::NAME_MAX;
/// Largest value of an 11-digit octal field (size, mtime).
const OCTAL11_MAX: u64 = 0o77_777_777_777;
const COPY_BUF: usize = 1 << 20;

mod write;
pub use write::write_tar;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle entry name {name:?}: {why}")]
    BadInputName { name: String, why: &'static str },
    #[error("bundle entry {name:?} is given twice")]
    DuplicateInput { name: String },
    #[error("bundle entry {name:?}: {path} is not a regular file")]
    NotAFile { name: String, path: PathBuf },
    #[error("epoch {epoch} does not fit tar's 11-digit octal mtime (max {max})")]
    EpochOutOfRange { epoch: u64, max: u64 },
    #[error("reading {path}: {source}")]
    ReadInput {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} changed while archiving: expected {expected} bytes, {found}")]
    InputChanged {
        path: PathBuf,
        expected: u64,
        found: String,
    },
    #[error("writing {path} at offset {offset}: {source}")]
    Write {
        path: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },

    #[error("reading the bundle at offset {offset}: {source}")]
    Read {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("bundle truncated at offset {offset}: {what}")]
    Truncated { offset: u64, what: String },
    #[error("bundle header at offset {offset}: {why}")]
    BadHeader { offset: u64, why: String },
    #[error("bundle entry {name:?} at offset {offset}: {why}")]
    BadName {
        name: String,
        offset: u64,
        why: &'static str,
    },
    #[error(
        "bundle entry {name:?} at offset {offset} is a {kind}, only regular files are allowed"
    )]
    NotRegular {
        name: String,
        offset: u64,
        kind: &'static str,
    },
    #[error("bundle entry {name:?} at offset {offset} duplicates the entry at offset {first}")]
    Duplicate {
        name: String,
        offset: u64,
        first: u64,
    },
    #[error(
        "bundle entry {name:?} at offset {offset} is not one of the allowed names {allowed:?}"
    )]
    NotAllowed {
        name: String,
        offset: u64,
        allowed: Vec<String>,
    },
    #[error("bundle entry {name:?} at offset {offset} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        name: String,
        offset: u64,
        size: u64,
        limit: u64,
    },
    #[error("{} member is {name:?} (header at offset {offset}), expected {expected:?}", ordinal(*.position))]
    OutOfOrder {
        /// 0 for the first member.
        position: usize,
        name: String,
        offset: u64,
        expected: String,
    },
    #[error("bundle ends at offset {offset} without its member {expected:?}")]
    MissingLeading { offset: u64, expected: String },
}

/// "first", "second", ... for the members a policy wants in front.
fn ordinal(position: usize) -> String {
    match position {
        0 => "first".into(),
        1 => "second".into(),
        2 => "third".into(),
        n => format!("{}th", n + 1),
    }
}

/// One archived file as written or read: where its header starts and the
/// sha256 of its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySummary {
    pub name: String,
    pub size: u64,
    pub offset: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleSummary {
    /// Total archive size in bytes.
    pub size: u64,
    /// sha256 of the whole archive, hex.
    pub sha256: String,
    pub entries: Vec<EntrySummary>,
}

/// The same rule for writing and reading: one plain file name, no directory
/// part, so extracting the bundle can never write outside its target.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty name")
    } else if name.starts_with('/') {
        Some("absolute path")
    } else if name == "." || name == ".." || name.split('/').any(|c| c == "..") {
        Some("path traversal (`..` or `.`)")
    } else if name.contains('/') {
        Some("contains `/`: bundle entries are plain file names")
    } else if name.contains('\0') {
        Some("contains a NUL byte")
    } else if name.len() > NAME_MAX {
        Some("longer than ustar's 100-byte name field")
    } else {
        None
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// What a reader accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPolicy {
    /// Every entry's name must be one of these.
    pub allowed: Vec<String>,
    /// Largest accepted entry, in bytes.
    pub max_entry_size: u64,
    /// The names the archive must start with, in this order (the manifest
    /// and its signature, so they are checked before any payload is read).
    pub leading: Vec<String>,
}

/// Streams entries out of a bundle in archive order.
pub struct BundleReader<R: Read> {
    inner: R,
    policy: ReadPolicy,
    /// Bytes consumed from `inner`.
    offset: u64,
    /// Name and header offset of every entry seen so far.
    seen: BTreeMap<String, u64>,
    /// Data bytes of the current entry not yet read, and its padding.
    remaining: u64,
    pad: u64,
    done: bool,
}

/// One entry; read it (or not) before asking for the next.
pub struct Entry<'a, R: Read> {
    name: String,
    size: u64,
    offset: u64,
    reader: &'a mut BundleReader<R>,
}

impl<R: Read> Entry<'_, R> {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Offset of the entry's header in the archive.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl<R: Read> Read for Entry<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = &mut *self.reader;
        if r.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(r.remaining).unwrap_or(usize::MAX));
        let n = r.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "bundle truncated at offset {}: entry {:?} (header at {}) is missing its last {} bytes",
                    r.offset, self.name, self.offset, r.remaining
                ),
            ));
        }
        r.remaining -= n as u64;
        r.offset += n as u64;
        Ok(n)
    }
}

/// Fills `buf` completely; returns how many bytes were read when the stream
/// ends first.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn field_str(f: &[u8]) -> &[u8] {
    let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
    &f[..end]
}

fn parse_octal(f: &[u8]) -> Option<u64> {
    let digits: Vec<u8> = f
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(v)
}

fn parse_size(f: &[u8]) -> Result<u64, String> {
    if f[0] & 0x80 != 0 {
        if f[0] == 0xff {
            return Err("negative base-256 size".to_string());
        }
        let mut v: u64 = u64::from(f[0] & 0x7f);
        for &b in &f[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or("base-256 size overflows 64 bits")?;
        }
        Ok(v)
    } else {
        parse_octal(f).ok_or_else(|| {
            format!(
                "size field {:?} is not octal",
                field_str(f).escape_ascii().to_string()
            )
        })
    }
}

fn kind_name(t: u8) -> &'static str {
    match t {
        b'1' => "hard link",
        b'2' => "symbolic link",
        b'3' => "character device",
        b'4' => "block device",
        b'5' => "directory",
        b'6' => "FIFO",
        b'7' => "contiguous file",
        b'x' | b'g' => "PAX extended header",
        b'L' | b'K' => "GNU long name record",
        _ => "entry of unknown type",
    }
}

impl<R: Read> BundleReader<R> {
    pub fn new(inner: R, policy: ReadPolicy) -> Self {
        BundleReader {
            inner,
            policy,
            offset: 0,
            seen: BTreeMap::new(),
            remaining: 0,
            pad: 0,
            done: false,
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Replaces the policy for the entries still to come, e.g. once the
    /// leading manifest has been verified and says which names and sizes
    /// may follow. Entries already seen still count as duplicates.
    pub fn set_policy(&mut self, policy: ReadPolicy) {
        self.policy = policy;
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<(), BundleError> {
        let start = self.offset;
        let got = io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(|source| {
            BundleError::Read {
                offset: start,
                source,
            }
        })?;
        self.offset += got;
        if got < n {
            return Err(BundleError::Truncated {
                offset: self.offset,
                what: format!("{what}: {} of {n} bytes missing", n - got),
            });
        }
        Ok(())
    }

    fn block(&mut self, what: &str) -> Result<Option<[u8; BLOCK]>, BundleError> {
        let mut b = [0u8; BLOCK];
        let got = read_full(&mut self.inner, &mut b).map_err(|source| BundleError::Read {
            offset: self.offset,
            source,
        })?;
        let at = self.offset;
        self.offset += got as u64;
        match got {
            BLOCK => Ok(Some(b)),
            0 => Ok(None),
            _ => Err(BundleError::Truncated {
                offset: at,
                what: format!("{what}: only {got} of 512 bytes"),
            }),
        }
    }

    /// The next entry, or `None` after the end-of-archive marker. Skips
    /// whatever the caller left unread of the previous entry.
    pub fn next_entry(&mut self) -> Result<Option<Entry<'_, R>>, BundleError> {
        if self.done {
            return Ok(None);
        }
        let rest = self.remaining + self.pad;
        self.remaining = 0;
        self.pad = 0;
        self.skip(rest, "rest of the previous entry")?;

        let offset = self.offset;
        let Some(h) = self.block("entry header")? else {
            return Err(BundleError::Truncated {
                offset,
                what: "archive ends without the two zero end blocks".to_string(),
            });
        };
        if h.iter().all(|&b| b == 0) {
            if let Some(expected) = self.policy.leading.get(self.seen.len()) {
                return Err(BundleError::MissingLeading {
                    offset,
                    expected: expected.clone(),
                });
            }
            match self.block("second end block")? {
                Some(b) if b.iter().all(|&x| x == 0) => {
                    self.done = true;
                    return Ok(None);
                }
                Some(_) => {
                    return Err(BundleError::BadHeader {
                        offset,
                        why: "a lone zero block in the middle of the archive".to_string(),
                    })
                }
                None => {
                    return Err(BundleError::Truncated {
                        offset: offset + BLOCK as u64,
                        what: "archive ends after one of the two zero end blocks".to_string(),
                    })
                }
            }
        }
        let (name, size) = self.check_header(&h, offset)?;
        self.seen.insert(name.clone(), offset);
        self.remaining = size;
        self.pad = padding(size);
        Ok(Some(Entry {
            name,
            size,
            offset,
            reader: self,
        }))
    }

    fn check_header(&self, h: &[u8; BLOCK], offset: u64) -> Result<(String, u64), BundleError> {
        let bad = |why: String| BundleError::BadHeader { offset, why };
        let stored =
            parse_octal(&h[148..156]).ok_or_else(|| bad("checksum field is not octal".into()))?;
        let unsigned: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        // POSIX says unsigned; some old writers summed signed bytes.
        let signed: i64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    i64::from(b as i8)
                }
            })
            .sum();
        if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
            return Err(bad(format!(
                "checksum {stored:o} does not match the header's sum {unsigned:o}"
            )));
        }
        let posix = &h[257..263] == b"ustar\0" && &h[263..265] == b"00";
        let gnu = &h[257..265] == b"ustar  \0";
        if !posix && !gnu {
            return Err(bad("not a ustar or GNU tar header (bad magic)".into()));
        }
        let mut raw = Vec::new();
        // GNU headers keep atime/ctime where POSIX has the name prefix.
        if posix && h[345] != 0 {
            raw.extend_from_slice(field_str(&h[345..500]));
            raw.push(b'/');
        }
        raw.extend_from_slice(field_str(&h[..100]));
        let name = String::from_utf8_lossy(&raw).into_owned();
        let kind = h[156];
        if kind != b'0' && kind != 0 {
            return Err(BundleError::NotRegular {
                name,
                offset,
                kind: kind_name(kind),
            });
        }
        if std::str::from_utf8(&raw).is_err() {
            return Err(BundleError::BadName {
                name,
                offset,
                why: "not UTF-8",
            });
        }
        if let Some(why) = name_problem(&name) {
            return Err(BundleError::BadName { name, offset, why });
        }
        // Before the name checks below, so a bundle in the wrong order says
        // so rather than "not allowed".
        if let Some(expected) = self.policy.leading.get(self.seen.len()) {
            if *expected != name {
                return Err(BundleError::OutOfOrder {
                    position: self.seen.len(),
                    name,
                    offset,
                    expected: expected.clone(),
                });
            }
        }
        if let Some(&first) = self.seen.get(&name) {
            return Err(BundleError::Duplicate {
                name,
                offset,
                first,
            });
        }
        if !self.policy.allowed.contains(&name) {
            return Err(BundleError::NotAllowed {
                name,
                offset,
                allowed: self.policy.allowed.clone(),
            });
        }
        let size = parse_size(&h[124..136]).map_err(bad)?;
        if size > self.policy.max_entry_size {
            return Err(BundleError::TooLarge {
                name,
                offset,
                size,
                limit: self.policy.max_entry_size,
            });
        }
        Ok((name, size))
    }
}

/// Opens a bundle file for streaming.
pub fn open(path: &Path, policy: ReadPolicy) -> Result<BundleReader<BufReader<File>>, BundleError> {
    let f = File::open(path).map_err(|source| BundleError::Read { offset: 0, source })?;
    Ok(BundleReader::new(
        BufReader::with_capacity(COPY_BUF, f),
        policy,
    ))
}

/// Hashes the archive bytes as the reader consumes them, so checking a
/// bundle reads it once.
struct HashRead<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Checks a whole bundle and lists its entries with their sha256, reading
/// the file once and keeping none of it in memory. The summary's `size` and
/// `sha256` cover the archive up to its end blocks.
pub fn read_tar(path: &Path, policy: ReadPolicy) -> Result<BundleSummary, BundleError> {
    let f = File::open(path).map_err(|source| BundleError::Read { offset: 0, source })?;
    let mut r = BundleReader::new(
        HashRead {
            inner: BufReader::with_capacity(COPY_BUF, f),
            hash: Sha256::new(),
        },
        policy,
    );
    let mut entries = Vec::new();
    let mut buf = vec![0u8; COPY_BUF];
    while let Some(mut ent) = r.next_entry()? {
        let mut hash = Sha256::new();
        loop {
            let n = match ent.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(BundleError::Truncated {
                        offset: ent.reader.offset,
                        what: format!(
                            "entry {:?} (header at {}) is missing its last {} bytes",
                            ent.name, ent.offset, ent.reader.remaining
                        ),
                    })
                }
                Err(source) => {
                    return Err(BundleError::Read {
                        offset: ent.reader.offset,
                        source,
                    })
                }
            };
            hash.update(&buf[..n]);
        }
        entries.push(EntrySummary {
            name: ent.name.clone(),
            size: ent.size,
            offset: ent.offset,
            sha256: hex::encode(hash.finalize()),
        });
    }
    Ok(BundleSummary {
        size: r.offset,
        sha256: hex::encode(r.inner.hash.finalize()),
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// Writing an 8 GiB bundle is too slow for a test, so the header alone is
    /// compared with the size field GNU tar writes for a sparse 8 GiB file
    /// (piped into `head`, so tar stops after the header).
    #[test]
    fn base256_size_matches_gnu_tar() {
        let t = tempfile::tempdir().unwrap();
        let size = OCTAL11_MAX + 2;
        File::create(t.path().join("rootfs.img"))
            .unwrap()
            .set_len(size)
            .unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg("tar --format=gnu -cf - -C \"$1\" rootfs.img | head -c 512")
            .arg("sh")
            .arg(t.path())
            .stderr(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.stdout.len(), 512, "GNU tar header");
        let ours = crate::tar::ustar_file_header("rootfs.img", size, 0).unwrap();
        assert_eq!(&ours[124..136], &out.stdout[124..136]);
        assert_eq!(parse_size(&ours[124..136]).unwrap(), size);
        assert_eq!(parse_size(&out.stdout[124..136]).unwrap(), size);
    }

    #[test]
    fn octal_fields_at_their_limits() {
        let h = crate::tar::ustar_file_header("a", OCTAL11_MAX, OCTAL11_MAX).unwrap();
        assert_eq!(&h[124..136], b"77777777777\0");
        assert_eq!(&h[136..148], b"77777777777\0");
        assert_eq!(parse_size(&h[124..136]).unwrap(), OCTAL11_MAX);
        assert!(parse_size(&[0xff; 12]).is_err());
        assert!(parse_size(b"0000000008\0\0").is_err());
    }
}

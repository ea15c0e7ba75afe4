//! newc ("070701") cpio archives for initramfs images, zstd-compressed.
//!
//! Entries come from a `Tree` (in its order) followed by caller-given extra
//! entries (sorted by path, missing parent directories created). Inode
//! numbers are assigned sequentially from 1; a hard-link group shares one
//! inode, every member carries the group's nlink, and only the last member
//! carries the data (as GNU cpio and the kernel's gen_init_cpio write it).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::tree::{Kind, Tree};

/// Fixed so the same inputs always compress to the same bytes; encoding is
/// single-threaded for the same reason.
pub const ZSTD_LEVEL: i32 = 19;

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} changed while archiving: expected {expected} bytes, found {found}")]
    Changed {
        path: PathBuf,
        expected: u64,
        found: String,
    },
    #[error("{path}: {size} bytes exceeds newc's 4 GiB - 1 file size limit")]
    TooLarge { path: String, size: u64 },
    #[error("timestamp {epoch} does not fit newc's 32-bit mtime")]
    EpochTooLarge { epoch: u64 },
    #[error("extra entry path {path:?}: {why}")]
    BadExtraPath { path: String, why: &'static str },
    #[error("extra entry {path:?} is already in the archive")]
    Duplicate { path: String },
    #[error("writing the archive at offset {offset}: {source}")]
    Write {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Streamed from a host file when the archive is written.
    Path(PathBuf),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraKind {
    File(Content),
    Dir,
    Symlink(String),
    /// Lets an unprivileged build add e.g. `/dev/console` (5, 1), which the
    /// kernel opens before init runs.
    CharDev {
        major: u32,
        minor: u32,
    },
    BlockDev {
        major: u32,
        minor: u32,
    },
}

/// An entry added beside the tree (e.g. `/init`, `/payload/rootfs.img`),
/// owned by root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extra {
    /// Archive path; a leading `/` is ignored.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    pub kind: ExtraKind,
}

impl Extra {
    pub fn file(path: &str, mode: u32, content: Content) -> Extra {
        Extra {
            path: path.to_string(),
            mode,
            kind: ExtraKind::File(content),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpioStats {
    /// Entries written, trailer excluded.
    pub entries: u64,
    /// Uncompressed archive size.
    pub bytes: u64,
}

struct Header<'a> {
    name: &'a [u8],
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
}

struct Out<W> {
    w: W,
    offset: u64,
}

impl<W: Write> Out<W> {
    fn put(&mut self, b: &[u8]) -> Result<(), CpioError> {
        self.w.write_all(b).map_err(|source| CpioError::Write {
            offset: self.offset,
            source,
        })?;
        self.offset += b.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> Result<(), CpioError> {
        let n = (4 - self.offset % 4) % 4;
        self.put(&[0u8; 3][..n as usize])
    }

    fn header(&mut self, h: &Header) -> Result<(), CpioError> {
        let fields = [
            h.ino,
            h.mode,
            h.uid,
            h.gid,
            h.nlink,
            h.mtime,
            h.size,
            0, // devmajor: the archive has no device of its own
            0,
            h.rdev.0,
            h.rdev.1,
            h.name.len() as u32 + 1,
            0, // check: unused by newc (only crc format fills it)
        ];
        let mut s = Vec::with_capacity(110 + h.name.len() + 4);
        s.extend_from_slice(MAGIC);
        for f in fields {
            s.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        s.extend_from_slice(h.name);
        s.push(0);
        self.put(&s)?;
        self.pad4()
    }

    /// Copies exactly `size` bytes from `r`, failing if it has more or fewer.
    fn copy_exact(&mut self, r: &mut impl Read, size: u64, path: &Path) -> Result<(), CpioError> {
        let rd = |source| CpioError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut buf = vec![0u8; 256 << 10];
        let mut left = size;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = match r.read(&mut buf[..want]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => other.map_err(rd)?,
            };
            if n == 0 {
                return Err(CpioError::Changed {
                    path: path.to_path_buf(),
                    expected: size,
                    found: format!("{}", size - left),
                });
            }
            self.put(&buf[..n])?;
            left -= n as u64;
        }
        if r.read(&mut [0u8; 1]).map_err(rd)? != 0 {
            return Err(CpioError::Changed {
                path: path.to_path_buf(),
                expected: size,
                found: format!("more than {size}"),
            });
        }
        self.pad4()
    }
}

fn size32(path: &str, size: u64) -> Result<u32, CpioError> {
    u32::try_from(size).map_err(|_| CpioError::TooLarge {
        path: path.to_string(),
        size,
    })
}

/// Validated extra path without the leading `/`.
fn clean_extra_path(p: &str) -> Result<String, CpioError> {
    let bad = |why| CpioError::BadExtraPath {
        path: p.to_string(),
        why,
    };
    let rel = p.trim_start_matches('/');
    if rel.is_empty() {
        return Err(bad("empty (the root comes from the tree)"));
    }
    if rel.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    for c in rel.split('/') {
        match c {
            "" => return Err(bad("empty component")),
            "." | ".." => return Err(bad("`.` or `..` component")),
            _ => {}
        }
    }
    Ok(rel.to_string())
}

/// Writes an uncompressed newc archive of `tree` then `extras`. Every entry
/// gets mtime `epoch`.
pub fn write_newc<W: Write>(
    tree: &Tree,
    extras: &[Extra],
    epoch: u64,
    out: W,
) -> Result<CpioStats, CpioError> {
    let mtime = u32::try_from(epoch).map_err(|_| CpioError::EpochTooLarge { epoch })?;
    let mut o = Out { w: out, offset: 0 };
    let mut next_ino = 1u32;
    let mut entries = 0u64;

    // Hard-link groups: size, and members still to come.
    let mut group_size: HashMap<usize, u32> = HashMap::new();
    for e in &tree.entries {
        if let Some(g) = e.link_group {
            *group_size.entry(g).or_default() += 1;
        }
    }
    let mut group_left = group_size.clone();
    let mut group_ino: HashMap<usize, u32> = HashMap::new();
    // Every name written so far, and whether it is a directory.
    let mut names: HashMap<Vec<u8>, bool> = HashMap::new();

    for e in &tree.entries {
        // The root is "." as `find . | cpio -o` writes it; the rest are
        // relative, as the kernel's own initramfs lists them.
        let name: Vec<u8> = if e.path.as_os_str().is_empty() {
            b".".to_vec()
        } else {
            e.path.as_os_str().as_bytes().to_vec()
        };
        let shown = String::from_utf8_lossy(&name).into_owned();
        let ino = match e.link_group {
            Some(g) => *group_ino.entry(g).or_insert_with(|| {
                next_ino += 1;
                next_ino - 1
            }),
            None => {
                next_ino += 1;
                next_ino - 1
            }
        };
        let mut h = Header {
            name: &name,
            ino,
            mode: e.st_mode(),
            uid: e.uid,
            gid: e.gid,
            nlink: 1,
            mtime,
            size: 0,
            rdev: (0, 0),
        };
        match &e.kind {
            Kind::Dir => {
                // The kernel ignores a directory's nlink; 2 is what
                // gen_init_cpio writes.
                h.nlink = 2;
                o.header(&h)?;
            }
            Kind::File { size } => {
                let carries_data = match e.link_group {
                    Some(g) => {
                        h.nlink = group_size[&g];
                        let left = group_left.get_mut(&g).expect("counted above");
                        *left -= 1;
                        *left == 0
                    }
                    None => true,
                };
                if carries_data {
                    h.size = size32(&shown, *size)?;
                }
                o.header(&h)?;
                if carries_data {
                    let mut f = File::open(&e.source).map_err(|source| CpioError::Read {
                        path: e.source.clone(),
                        source,
                    })?;
                    o.copy_exact(&mut f, *size, &e.source)?;
                }
            }
            Kind::Symlink { target } => {
                let t = target.as_bytes();
                h.size = size32(&shown, t.len() as u64)?;
                o.header(&h)?;
                o.put(t)?;
                o.pad4()?;
            }
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                h.rdev = (*major, *minor);
                o.header(&h)?;
            }
            Kind::Fifo => o.header(&h)?,
        }
        names.insert(name, e.kind == Kind::Dir);
        entries += 1;
    }

    let mut extras: Vec<(String, &Extra)> = extras
        .iter()
        .map(|x| Ok((clean_extra_path(&x.path)?, x)))
        .collect::<Result<_, CpioError>>()?;
    extras.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    for (name, x) in extras {
        // Parents the tree does not have become root-owned 0755 dirs.
        let mut parent = String::new();
        let comps: Vec<&str> = name.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            match names.get(parent.as_bytes()) {
                Some(true) => continue,
                Some(false) => {
                    return Err(CpioError::BadExtraPath {
                        path: x.path.clone(),
                        why: "a parent is not a directory",
                    })
                }
                None => {}
            }
            names.insert(parent.as_bytes().to_vec(), true);
            o.header(&Header {
                name: parent.as_bytes(),
                ino: next_ino,
                mode: libc::S_IFDIR | 0o755,
                uid: 0,
                gid: 0,
                nlink: 2,
                mtime,
                size: 0,
                rdev: (0, 0),
            })?;
            next_ino += 1;
            entries += 1;
        }
        let is_dir = x.kind == ExtraKind::Dir;
        if names.insert(name.as_bytes().to_vec(), is_dir).is_some() {
            return Err(CpioError::Duplicate {
                path: x.path.clone(),
            });
        }
        let mut h = Header {
            name: name.as_bytes(),
            ino: next_ino,
            mode: x.mode & 0o7777,
            uid: 0,
            gid: 0,
            nlink: 1,
            mtime,
            size: 0,
            rdev: (0, 0),
        };
        next_ino += 1;
        entries += 1;
        match &x.kind {
            ExtraKind::Dir => {
                h.mode |= libc::S_IFDIR;
                h.nlink = 2;
                o.header(&h)?;
            }
            ExtraKind::CharDev { major, minor } => {
                h.mode |= libc::S_IFCHR;
                h.rdev = (*major, *minor);
                o.header(&h)?;
            }
            ExtraKind::BlockDev { major, minor } => {
                h.mode |= libc::S_IFBLK;
                h.rdev = (*major, *minor);
                o.header(&h)?;
            }
            ExtraKind::Symlink(t) => {
                h.mode |= libc::S_IFLNK;
                h.size = size32(&name, t.len() as u64)?;
                o.header(&h)?;
                o.put(t.as_bytes())?;
                o.pad4()?;
            }
            ExtraKind::File(Content::Bytes(b)) => {
                h.mode |= libc::S_IFREG;
                h.size = size32(&name, b.len() as u64)?;
                o.header(&h)?;
                o.put(b)?;
                o.pad4()?;
            }
            ExtraKind::File(Content::Path(p)) => {
                let rd = |source| CpioError::Read {
                    path: p.clone(),
                    source,
                };
                let mut f = File::open(p).map_err(rd)?;
                let size = f.metadata().map_err(rd)?.len();
                h.mode |= libc::S_IFREG;
                h.size = size32(&name, size)?;
                o.header(&h)?;
                o.copy_exact(&mut f, size, p)?;
            }
        }
    }

    o.header(&Header {
        name: TRAILER.as_bytes(),
        ino: 0,
        mode: 0,
        uid: 0,
        gid: 0,
        nlink: 1,
        mtime: 0,
        size: 0,
        rdev: (0, 0),
    })?;
    o.w.flush().map_err(|source| CpioError::Write {
        offset: o.offset,
        source,
    })?;
    Ok(CpioStats {
        entries,
        bytes: o.offset,
    })
}

/// `write_newc` through zstd at `ZSTD_LEVEL`, single-threaded, with a
/// content checksum: the initramfs format the kernel unpacks.
pub fn write_initramfs<W: Write>(
    tree: &Tree,
    extras: &[Extra],
    epoch: u64,
    out: W,
) -> Result<CpioStats, CpioError> {
    let z = |source| CpioError::Write { offset: 0, source };
    let mut enc = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL).map_err(z)?;
    enc.include_checksum(true).map_err(z)?;
    let stats = write_newc(tree, extras, epoch, &mut enc)?;
    enc.finish().map_err(|source| CpioError::Write {
        offset: stats.bytes,
        source,
    })?;
    Ok(stats)
}

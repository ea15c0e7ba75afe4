//! Reading a superblock and re-checking a slot against a root hash in
//! userspace (the installer's check before it trusts written bytes).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::{tree, VerityError, VerityInfo, BLOCK, SB_SIGNATURE};
use crate::gpt::Guid;

/// The fields of a format-1 superblock this crate can check against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: Guid,
    pub data_blocks: u64,
    pub salt: [u8; 32],
}

/// Reads and validates the superblock at `hash_offset`: only what `build`
/// writes is accepted (format 1, sha256, 4096-byte blocks, 32-byte salt).
pub fn read_superblock<R: Read + Seek>(
    r: &mut R,
    hash_offset: u64,
) -> Result<Superblock, VerityError> {
    let mut b = [0u8; 512];
    let rd = |source| VerityError::Read {
        offset: hash_offset,
        source,
    };
    r.seek(SeekFrom::Start(hash_offset)).map_err(rd)?;
    r.read_exact(&mut b).map_err(rd)?;
    let bad = |field, what: String| VerityError::BadSuperblock {
        offset: hash_offset,
        field,
        what,
    };
    let u32at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    if &b[0..8] != SB_SIGNATURE {
        return Err(bad(
            "signature",
            format!("{:02x?}, expected \"verity\"", &b[0..8]),
        ));
    }
    for (field, off, want) in [
        ("version", 8, 1),
        ("hash type", 12, 1),
        ("data block size", 64, BLOCK as u32),
        ("hash block size", 68, BLOCK as u32),
    ] {
        let got = u32at(off);
        if got != want {
            return Err(bad(field, format!("{got}, expected {want}")));
        }
    }
    let alg_end = b[32..64].iter().position(|&c| c == 0).unwrap_or(32);
    if &b[32..32 + alg_end] != b"sha256" {
        return Err(bad(
            "algorithm",
            format!(
                "{:?}, expected \"sha256\"",
                String::from_utf8_lossy(&b[32..32 + alg_end])
            ),
        ));
    }
    let data_blocks = u64::from_le_bytes(b[72..80].try_into().expect("8 bytes"));
    if data_blocks == 0 {
        return Err(bad("data blocks", "0".into()));
    }
    let salt_size = u16::from_le_bytes([b[80], b[81]]);
    if salt_size != 32 {
        return Err(bad("salt size", format!("{salt_size}, expected 32")));
    }
    let mut salt = [0u8; 32];
    salt.copy_from_slice(&b[88..120]);
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&b[16..32]);
    Ok(Superblock {
        uuid: Guid(uuid),
        data_blocks,
        salt,
    })
}

/// A `Write + Seek` that compares what the tree builder would write with
/// what is already on disk.
struct Compare<'a> {
    disk: &'a mut File,
    /// Where the slot starts in `disk`; `pos` is relative to it.
    base: u64,
    pos: u64,
    mismatch: Option<u64>,
}

impl Write for Compare<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut on_disk = vec![0u8; buf.len()];
        // A hash area cut short counts as a mismatch at its first byte.
        let read = self
            .disk
            .seek(SeekFrom::Start(self.base + self.pos))
            .and_then(|_| self.disk.read_exact(&mut on_disk));
        if let Err(e) = read {
            self.mismatch = Some(self.pos);
            return Err(e);
        }
        if on_disk != buf {
            let at = on_disk
                .iter()
                .zip(buf)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            self.mismatch = Some(self.pos + at as u64);
            return Err(std::io::Error::other("hash block differs"));
        }
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for Compare<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        match to {
            SeekFrom::Start(p) => self.pos = p,
            _ => return Err(std::io::Error::other("only absolute seeks")),
        }
        Ok(self.pos)
    }
}

/// Re-hashes the data of the slot at `path` (superblock at `hash_offset`),
/// compares every tree block on disk and the root with `root_hash`. Memory
/// stays bounded: the data is streamed, tree blocks compared one at a time.
pub fn verify_file(
    path: &Path,
    hash_offset: u64,
    root_hash: &[u8; 32],
) -> Result<VerityInfo, VerityError> {
    verify_slot(path, 0, hash_offset, root_hash)
}

/// [`verify_file`] for a slot that starts `base` bytes into `path` (a
/// partition of a disk or disk image); offsets in errors are slot-relative.
pub fn verify_slot(
    path: &Path,
    base: u64,
    hash_offset: u64,
    root_hash: &[u8; 32],
) -> Result<VerityInfo, VerityError> {
    let fe = |source| VerityError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut disk = File::open(path).map_err(fe)?;
    let sb = match read_superblock(&mut disk, base + hash_offset) {
        Err(VerityError::BadSuperblock { field, what, .. }) => {
            return Err(VerityError::BadSuperblock {
                offset: hash_offset,
                field,
                what,
            })
        }
        Err(VerityError::Read { source, .. }) => {
            return Err(VerityError::Read {
                offset: hash_offset,
                source,
            })
        }
        r => r?,
    };
    let mut data_file = File::open(path).map_err(fe)?;
    data_file.seek(SeekFrom::Start(base)).map_err(fe)?;
    let data = std::io::BufReader::new(data_file);
    let mut cmp = Compare {
        disk: &mut disk,
        base,
        pos: 0,
        mismatch: None,
    };
    let data_len = sb.data_blocks * BLOCK;
    let (root, data_blocks, hash_blocks) =
        match tree(data, data_len, &mut cmp, hash_offset, &sb.salt) {
            Ok(t) => t,
            Err(e) => {
                return Err(match cmp.mismatch {
                    Some(offset) => VerityError::HashMismatch { offset },
                    None => e,
                })
            }
        };
    if &root != root_hash {
        return Err(VerityError::RootMismatch {
            expected: hex::encode(root_hash),
            computed: hex::encode(root),
        });
    }
    Ok(VerityInfo {
        root_hash: root,
        salt: sb.salt,
        uuid: sb.uuid,
        data_size: data_len,
        data_blocks,
        hash_offset,
        hash_blocks,
    })
}

//! dm-verity hash trees (format 1, sha256, 4096-byte blocks) with the
//! veritysetup superblock, laid out as docs/design.md's slot content.
//!
//! The tree is built in one streaming pass: each level keeps one partial
//! hash block, and a full block is written straight to its final place.
//! On disk the levels run top (root block) first, leaves last, which is the
//! order veritysetup and the kernel expect.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::gpt::Guid;

mod check;
pub use check::{read_superblock, verify_file, verify_slot, Superblock};

pub const BLOCK: u64 = 4096;
const DIGEST: usize = 32;
const HASHES_PER_BLOCK: u64 = BLOCK / DIGEST as u64;
pub(crate) const SB_SIGNATURE: &[u8; 8] = b"verity\0\0";

#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("verity data is empty: there is nothing to protect")]
    Empty,
    #[error("verity data ended after {got} bytes; {expected} were promised")]
    ShortData { expected: u64, got: u64 },
    #[error("reading verity data at offset {offset}: {source}")]
    Read {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("writing verity hash area at offset {offset}: {source}")]
    Write {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("verity superblock at offset {offset}: {field}: {what}")]
    BadSuperblock {
        offset: u64,
        field: &'static str,
        what: String,
    },
    #[error("hash tree at offset {offset} is missing or does not match the data")]
    HashMismatch { offset: u64 },
    #[error("root hash mismatch: expected {expected}, the data gives {computed}")]
    RootMismatch { expected: String, computed: String },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityInfo {
    pub root_hash: [u8; 32],
    /// sha256 of the caller's seed.
    pub salt: [u8; 32],
    /// Superblock UUID, derived from the same seed.
    pub uuid: Guid,
    /// Unpadded input length.
    pub data_size: u64,
    pub data_blocks: u64,
    /// Where the superblock sits in the hash output (in the combined slot
    /// layout: `data_blocks * 4096`).
    pub hash_offset: u64,
    /// Hash tree blocks after the superblock.
    pub hash_blocks: u64,
}

impl VerityInfo {
    pub fn root_hash_hex(&self) -> String {
        hex::encode(self.root_hash)
    }

    pub fn salt_hex(&self) -> String {
        hex::encode(self.salt)
    }

    /// Superblock plus tree.
    pub fn hash_area_size(&self) -> u64 {
        (1 + self.hash_blocks) * BLOCK
    }

    /// End of the hash area in the hash output.
    pub fn end(&self) -> u64 {
        self.hash_offset + self.hash_area_size()
    }

    /// The dm table line for `dev` holding data and hash area together,
    /// as in docs/design.md (hash start is the block after the superblock).
    pub fn dm_table(&self, dev: &str) -> String {
        self.dm_table_split(dev, dev)
    }

    pub fn dm_table_split(&self, data_dev: &str, hash_dev: &str) -> String {
        format!(
            "0 {} verity 1 {data_dev} {hash_dev} {BLOCK} {BLOCK} {} {} sha256 {} {}",
            self.data_blocks * (BLOCK / 512),
            self.data_blocks,
            self.hash_offset / BLOCK + 1,
            self.root_hash_hex(),
            self.salt_hex()
        )
    }

    /// The 4096-byte superblock block (veritysetup's on-disk format 1).
    pub fn superblock(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK as usize];
        b[0..8].copy_from_slice(SB_SIGNATURE);
        b[8..12].copy_from_slice(&1u32.to_le_bytes()); // superblock version
        b[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type: format 1
        b[16..32].copy_from_slice(&self.uuid.0);
        b[32..38].copy_from_slice(b"sha256");
        b[64..68].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        b[68..72].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        b[72..80].copy_from_slice(&self.data_blocks.to_le_bytes());
        b[80..82].copy_from_slice(&(self.salt.len() as u16).to_le_bytes());
        b[88..88 + self.salt.len()].copy_from_slice(&self.salt);
        b
    }
}

/// The salt and superblock UUID a seed gives.
pub fn salt_for(seed: &[u8]) -> ([u8; 32], Guid) {
    (
        Sha256::digest(seed).into(),
        Guid::derive(seed, "verity-uuid"),
    )
}

fn hash_block(salt: &[u8; 32], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Blocks per tree level, leaves (level 0) first. One data block needs no
/// tree: its own hash is the root, as in veritysetup.
fn level_blocks(data_blocks: u64) -> Vec<u64> {
    let mut levels = Vec::new();
    let mut n = data_blocks;
    while n > 1 {
        n = n.div_ceil(HASHES_PER_BLOCK);
        levels.push(n);
    }
    levels
}

struct Level {
    /// Offset of this level's first block in the output.
    start: u64,
    written: u64,
    buf: Vec<u8>,
}

struct Tree<'w, W> {
    out: &'w mut W,
    salt: [u8; 32],
    levels: Vec<Level>,
    root: Option<[u8; 32]>,
}

impl<W: Write + Seek> Tree<'_, W> {
    fn push(&mut self, level: usize, digest: [u8; 32]) -> Result<(), VerityError> {
        if level == self.levels.len() {
            self.root = Some(digest);
            return Ok(());
        }
        self.levels[level].buf.extend_from_slice(&digest);
        if self.levels[level].buf.len() == BLOCK as usize {
            self.emit(level)?;
        }
        Ok(())
    }

    fn emit(&mut self, level: usize) -> Result<(), VerityError> {
        let l = &mut self.levels[level];
        l.buf.resize(BLOCK as usize, 0);
        let offset = l.start + l.written * BLOCK;
        let w = |source| VerityError::Write { offset, source };
        self.out.seek(SeekFrom::Start(offset)).map_err(w)?;
        self.out.write_all(&l.buf).map_err(w)?;
        l.written += 1;
        let digest = hash_block(&self.salt, &l.buf);
        l.buf.clear();
        self.push(level + 1, digest)
    }

    fn finish(&mut self) -> Result<[u8; 32], VerityError> {
        for level in 0..self.levels.len() {
            if !self.levels[level].buf.is_empty() {
                self.emit(level)?;
            }
        }
        Ok(self.root.expect("every non-empty input reaches the root"))
    }
}

/// Hashes `data_len` bytes of `data` (zero-padded to whole blocks) and
/// writes the superblock at `hash_offset` in `hash_out`, the tree after it.
pub fn build<R: Read, W: Write + Seek>(
    data: R,
    data_len: u64,
    hash_out: &mut W,
    hash_offset: u64,
    seed: &[u8],
) -> Result<VerityInfo, VerityError> {
    let (salt, uuid) = salt_for(seed);
    let (root_hash, data_blocks, hash_blocks) = tree(data, data_len, hash_out, hash_offset, &salt)?;
    let info = VerityInfo {
        root_hash,
        salt,
        uuid,
        data_size: data_len,
        data_blocks,
        hash_offset,
        hash_blocks,
    };
    let w = |source| VerityError::Write {
        offset: hash_offset,
        source,
    };
    hash_out.seek(SeekFrom::Start(hash_offset)).map_err(w)?;
    hash_out.write_all(&info.superblock()).map_err(w)?;
    hash_out.flush().map_err(w)?;
    Ok(info)
}

/// Writes the tree after the superblock slot at `hash_offset`; returns
/// (root hash, data blocks, tree blocks).
pub(crate) fn tree<R: Read, W: Write + Seek>(
    data: R,
    data_len: u64,
    hash_out: &mut W,
    hash_offset: u64,
    salt: &[u8; 32],
) -> Result<([u8; 32], u64, u64), VerityError> {
    if data_len == 0 {
        return Err(VerityError::Empty);
    }
    let data_blocks = data_len.div_ceil(BLOCK);
    let sizes = level_blocks(data_blocks);
    let tree_start = hash_offset + BLOCK;
    // Top level first on disk: level i starts after every level above it.
    let mut levels = Vec::with_capacity(sizes.len());
    for i in 0..sizes.len() {
        let above: u64 = sizes[i + 1..].iter().sum();
        levels.push(Level {
            start: tree_start + above * BLOCK,
            written: 0,
            buf: Vec::with_capacity(BLOCK as usize),
        });
    }
    let mut tree = Tree {
        out: hash_out,
        salt: *salt,
        levels,
        root: None,
    };
    let mut data = data.take(data_len);
    let mut chunk = vec![0u8; 256 * BLOCK as usize];
    let mut done = 0u64;
    while done < data_len {
        let n = read_full(&mut data, &mut chunk).map_err(|source| VerityError::Read {
            offset: done,
            source,
        })?;
        if n == 0 {
            return Err(VerityError::ShortData {
                expected: data_len,
                got: done,
            });
        }
        for block in chunk[..n].chunks(BLOCK as usize) {
            let digest = if block.len() == BLOCK as usize {
                hash_block(salt, block)
            } else {
                let mut padded = block.to_vec();
                padded.resize(BLOCK as usize, 0);
                hash_block(salt, &padded)
            };
            tree.push(0, digest)?;
        }
        done += n as u64;
    }
    let root = tree.finish()?;
    Ok((root, data_blocks, sizes.iter().sum()))
}

/// Turns the image at `path` into design.md's slot content in place: the
/// data zero-padded to 4096, then superblock and tree appended.
pub fn append(path: &Path, seed: &[u8]) -> Result<VerityInfo, VerityError> {
    let fe = |source| VerityError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut out = OpenOptions::new().write(true).open(path).map_err(fe)?;
    let len = out.metadata().map_err(fe)?.len();
    if len == 0 {
        return Err(VerityError::Empty);
    }
    let padded = len.div_ceil(BLOCK) * BLOCK;
    out.set_len(padded).map_err(fe)?;
    let data = File::open(path).map_err(fe)?;
    let info = build(
        std::io::BufReader::new(data),
        padded,
        &mut out,
        padded,
        seed,
    )?;
    out.sync_data().map_err(fe)?;
    Ok(VerityInfo {
        data_size: len,
        ..info
    })
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_shapes() {
        assert!(level_blocks(1).is_empty());
        assert_eq!(level_blocks(2), vec![1]);
        assert_eq!(level_blocks(128), vec![1]);
        assert_eq!(level_blocks(129), vec![2, 1]);
        assert_eq!(level_blocks(128 * 128 + 1), vec![129, 2, 1]);
    }

    #[test]
    fn short_and_empty_input() {
        let mut out = std::io::Cursor::new(Vec::new());
        assert!(matches!(
            build(&b""[..], 0, &mut out, 0, b"s"),
            Err(VerityError::Empty)
        ));
        let e = build(&b"abc"[..], 10, &mut out, 0, b"s").unwrap_err();
        assert!(e.to_string().contains("after 3 bytes; 10"), "{e}");
    }
}

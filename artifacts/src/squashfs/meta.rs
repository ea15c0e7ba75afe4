//! Metadata blocks: the 8 KiB units the inode, directory and lookup tables
//! are cut into, each zstd-compressed unless that would not make it smaller.

use super::compress::Codec;
use super::SquashfsError;

/// Uncompressed size of one metadata block (fixed by the format).
pub const METADATA_SIZE: usize = 8192;
/// Set in a metadata block's 16-bit header when the block is stored raw.
const META_UNCOMPRESSED: u16 = 0x8000;

/// Streams bytes into metadata blocks. A position in the stream is known as
/// soon as it is written: the start of the block being filled is the
/// compressed length so far, which is why references can be taken eagerly.
pub struct MetaWriter<'c> {
    codec: &'c mut Codec,
    what: &'static str,
    out: Vec<u8>,
    pending: Vec<u8>,
    /// Compressed start of every flushed block, by uncompressed block number.
    block_starts: Vec<u64>,
}

impl<'c> MetaWriter<'c> {
    pub fn new(codec: &'c mut Codec, what: &'static str) -> Self {
        MetaWriter {
            codec,
            what,
            out: Vec::new(),
            pending: Vec::with_capacity(METADATA_SIZE),
            block_starts: Vec::new(),
        }
    }

    /// `(compressed start of the current block, offset inside it)`.
    pub fn position(&self) -> (u64, usize) {
        (self.out.len() as u64, self.pending.len())
    }

    /// Bytes written so far, before compression.
    pub fn uncompressed_len(&self) -> usize {
        self.block_starts.len() * METADATA_SIZE + self.pending.len()
    }

    /// Compressed start of uncompressed block `n`, which must be flushed or
    /// be the one being filled.
    pub fn block_start(&self, n: usize) -> u64 {
        self.block_starts
            .get(n)
            .copied()
            .unwrap_or(self.out.len() as u64)
    }

    pub fn write(&mut self, mut bytes: &[u8]) -> Result<(), SquashfsError> {
        while !bytes.is_empty() {
            let room = METADATA_SIZE - self.pending.len();
            let n = room.min(bytes.len());
            self.pending.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.pending.len() == METADATA_SIZE {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SquashfsError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.block_starts.push(self.out.len() as u64);
        let packed = self.codec.compress(&self.pending, self.what)?;
        match packed {
            Some(c) => {
                self.out.extend_from_slice(&(c.len() as u16).to_le_bytes());
                self.out.extend_from_slice(&c);
            }
            None => {
                let h = self.pending.len() as u16 | META_UNCOMPRESSED;
                self.out.extend_from_slice(&h.to_le_bytes());
                self.out.extend_from_slice(&self.pending);
            }
        }
        self.pending.clear();
        Ok(())
    }

    /// Flushes the partial last block and returns the compressed table.
    pub fn finish(mut self) -> Result<Vec<u8>, SquashfsError> {
        self.flush()?;
        Ok(self.out)
    }

    /// Compressed starts of all blocks (valid after the last write was flushed).
    pub fn block_starts(&self) -> &[u64] {
        &self.block_starts
    }
}

/// A lookup table (fragment, export, id): the entries in metadata blocks,
/// followed by a list of the absolute positions of those blocks. `base` is
/// the absolute offset the table will be written at; returns the bytes and
/// the absolute offset of the position list (what the superblock points at).
pub fn lookup_table(
    codec: &mut Codec,
    what: &'static str,
    entries: &[u8],
    base: u64,
) -> Result<(Vec<u8>, u64), SquashfsError> {
    let mut w = MetaWriter::new(codec, what);
    w.write(entries)?;
    // Flush before reading the block list so the last block is in it.
    w.flush()?;
    let starts: Vec<u64> = w.block_starts().to_vec();
    let mut bytes = w.finish()?;
    let list_at = base + bytes.len() as u64;
    for s in starts {
        bytes.extend_from_slice(&(base + s).to_le_bytes());
    }
    Ok((bytes, list_at))
}

//! The one tar writer, for the two archives cairn makes: the update bundle
//! (POSIX ustar, [`crate::bundle::write_tar`]) and GCE's `disk.raw` tarball
//! (GNU oldgnu with a sparse map, [`crate::cloud::gce`]).
//!
//! Headers are fixed: a regular file, mode 0644, owner 0:0, mtime = the
//! caller's epoch (`SOURCE_DATE_EPOCH`), a plain name of at most 100 bytes.
//! The `tar` crate fills their fields (octal, GNU base-256 from 8 GiB on,
//! the sparse map). Two things stay ours because the crate would change the
//! bytes every published archive has carried:
//! - the checksum is written in GNU tar's form, six octal digits, NUL,
//!   space; the crate's `set_cksum` writes seven digits and a NUL;
//! - the stream ([`TarWriter`]): the crate's `Builder` can only make a
//!   sparse entry from a file's holes as the OS reports them, not from our
//!   64 KiB map of non-zero chunks, it does not pad to GNU's 10 KiB record,
//!   and it cannot tell an error's offset in the archive.

use std::io::{self, Write};

use ::tar::{EntryType, GnuExtSparseHeader, Header};

pub const BLOCK: u64 = 512;
/// GNU tar's default record (20 blocks): it pads archives to a multiple.
pub const GNU_RECORD: u64 = 20 * BLOCK;
/// The header's name field; longer names would need the ustar prefix,
/// GNU long names or PAX, and no archive of ours has one.
pub const NAME_MAX: usize = 100;
/// Map entries in an oldgnu header, and in each extension block after it.
const SPARSE_IN_HEADER: usize = 4;
const SPARSE_PER_EXTENSION: usize = 21;
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// A POSIX ustar header for a regular file (the bundle's): empty user and
/// group names, device numbers 0. `None` if `name` does not fit the name
/// field or is not a plain relative name.
pub fn ustar_file_header(name: &str, size: u64, mtime: u64) -> Option<[u8; 512]> {
    let mut h = fixed(Header::new_ustar(), name, mtime)?;
    h.set_entry_type(EntryType::Regular);
    h.set_size(size);
    h.set_device_major(0).ok()?;
    h.set_device_minor(0).ok()?;
    Some(gnu_checksum(h))
}

/// An oldgnu header for a regular file, owner names root:root. `None` as
/// for [`ustar_file_header`].
pub fn gnu_file_header(name: &str, size: u64, mtime: u64) -> Option<[u8; 512]> {
    let mut h = gnu(name, mtime)?;
    h.set_entry_type(EntryType::Regular);
    h.set_size(size);
    Some(gnu_checksum(h))
}

/// An oldgnu sparse entry ('S'): the header holds the first 4 map entries
/// (offset, length) and the real size; extension blocks of 21 entries
/// follow it. The map always ends at `real_size` (a zero-length entry if
/// the file ends in a hole), which is how GNU tar records a trailing hole.
/// The entry's data is the mapped bytes, in map order. `None` as for
/// [`ustar_file_header`].
pub fn gnu_sparse_headers(
    name: &str,
    real_size: u64,
    map: &[(u64, u64)],
    mtime: u64,
) -> Option<Vec<u8>> {
    let mut map = map.to_vec();
    if map.last().is_none_or(|(o, l)| o + l < real_size) {
        map.push((real_size, 0));
    }
    let stored: u64 = map.iter().map(|(_, l)| l).sum();
    let mut h = gnu(name, mtime)?;
    h.set_entry_type(EntryType::GNUSparse);
    h.set_size(stored);
    let (first, rest) = map.split_at(map.len().min(SPARSE_IN_HEADER));
    let g = h.as_gnu_mut().expect("a GNU header");
    for (slot, &(offset, len)) in g.sparse.iter_mut().zip(first) {
        slot.set_offset(offset);
        slot.set_length(len);
    }
    g.set_is_extended(!rest.is_empty());
    g.set_real_size(real_size);
    let mut out = gnu_checksum(h).to_vec();
    let blocks: Vec<&[(u64, u64)]> = rest.chunks(SPARSE_PER_EXTENSION).collect();
    for (i, entries) in blocks.iter().enumerate() {
        let mut b = GnuExtSparseHeader::new();
        for (slot, &(offset, len)) in b.sparse_mut().iter_mut().zip(*entries) {
            slot.set_offset(offset);
            slot.set_length(len);
        }
        b.set_is_extended(i + 1 < blocks.len());
        out.extend_from_slice(b.as_bytes());
    }
    Some(out)
}

fn gnu(name: &str, mtime: u64) -> Option<Header> {
    let mut h = fixed(Header::new_gnu(), name, mtime)?;
    h.set_username("root").ok()?;
    h.set_groupname("root").ok()?;
    Some(h)
}

/// Name, mode 0644, owner 0:0 and mtime: what every entry of ours has.
fn fixed(mut h: Header, name: &str, mtime: u64) -> Option<Header> {
    if name.is_empty() || name.len() > NAME_MAX {
        return None;
    }
    h.set_path(name).ok()?;
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    Some(h)
}

/// The checksum as GNU tar writes it, computed with its own field read as
/// spaces: six octal digits, NUL, space.
fn gnu_checksum(h: Header) -> [u8; 512] {
    let mut b = *h.as_bytes();
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    b[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
    b[154] = 0;
    b
}

/// A write to the archive failed at `offset` (bytes into the tar stream).
#[derive(Debug, thiserror::Error)]
#[error("writing the tar stream at offset {offset}: {source}")]
pub struct WriteError {
    pub offset: u64,
    #[source]
    pub source: io::Error,
}

/// The archive being written: headers and data go through [`put`], which
/// counts them, so padding follows from the position and errors name it.
///
/// [`put`]: TarWriter::put
pub struct TarWriter<W: Write> {
    inner: W,
    pos: u64,
}

impl<W: Write> TarWriter<W> {
    pub fn new(inner: W) -> Self {
        TarWriter { inner, pos: 0 }
    }

    /// Bytes written so far: where the next header or data byte goes.
    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn put(&mut self, data: &[u8]) -> Result<(), WriteError> {
        self.inner.write_all(data).map_err(|source| WriteError {
            offset: self.pos,
            source,
        })?;
        self.pos += data.len() as u64;
        Ok(())
    }

    /// `n` zero bytes (a hole written out, padding).
    pub fn zeros(&mut self, mut n: u64) -> Result<(), WriteError> {
        while n > 0 {
            let k = n.min(ZEROS.len() as u64) as usize;
            self.put(&ZEROS[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Pads the entry just written to a whole block.
    pub fn end_entry(&mut self) -> Result<(), WriteError> {
        self.zeros(self.pos.next_multiple_of(BLOCK) - self.pos)
    }

    /// Ends the archive: the last entry's padding, two zero blocks, then
    /// zeros up to a multiple of `record` ([`BLOCK`] for none,
    /// [`GNU_RECORD`] as GNU tar does). Returns the writer and the archive
    /// length.
    pub fn finish(mut self, record: u64) -> Result<(W, u64), WriteError> {
        self.end_entry()?;
        self.zeros(2 * BLOCK)?;
        self.zeros(self.pos.next_multiple_of(record) - self.pos)?;
        Ok((self.inner, self.pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_in_gnu_form() {
        let h = ustar_file_header("a", 1, 0).unwrap();
        assert_eq!(&h[154..156], b"\0 ", "six digits, NUL, space");
        let sum: u32 = h[..148]
            .iter()
            .chain(b"        ")
            .chain(&h[156..])
            .map(|&b| u32::from(b))
            .sum();
        assert_eq!(&h[148..154], format!("{sum:06o}").as_bytes());
        // And the crate reads it back.
        let parsed = Header::from_byte_slice(&h);
        assert_eq!(parsed.cksum().unwrap(), sum);
    }

    #[test]
    fn sizes_past_octal_use_gnu_base256() {
        const OCTAL11_MAX: u64 = 0o77_777_777_777;
        // High bit set, big-endian value in the field's last 8 bytes.
        let h = ustar_file_header("a", OCTAL11_MAX + 1, 0).unwrap();
        assert_eq!(h[124], 0x80);
        assert_eq!(&h[125..128], &[0, 0, 0]);
        assert_eq!(
            u64::from_be_bytes(h[128..136].try_into().unwrap()),
            OCTAL11_MAX + 1
        );
    }

    #[test]
    fn names_that_do_not_fit_are_refused() {
        assert!(ustar_file_header(&"x".repeat(NAME_MAX), 0, 0).is_some());
        assert!(ustar_file_header(&"x".repeat(NAME_MAX + 1), 0, 0).is_none());
        assert!(gnu_file_header("", 0, 0).is_none());
        assert!(gnu_sparse_headers(&"x".repeat(NAME_MAX + 1), 1, &[], 0).is_none());
    }

    #[test]
    fn stream_pads_entries_and_records() {
        let mut t = TarWriter::new(Vec::new());
        t.put(&ustar_file_header("a", 3, 0).unwrap()).unwrap();
        t.put(b"abc").unwrap();
        t.end_entry().unwrap();
        assert_eq!(t.position(), 2 * BLOCK);
        let (bytes, len) = t.finish(GNU_RECORD).unwrap();
        assert_eq!(len, GNU_RECORD);
        assert_eq!(bytes.len() as u64, len);
        assert!(bytes[2 * BLOCK as usize..].iter().all(|&b| b == 0));
    }
}

//! The inode table and the directory table.
//!
//! Inodes are written in post-order (a directory's children before the
//! directory itself), because a directory listing names its children's
//! inode positions and a directory inode names its listing's position: both
//! are then known when needed, in one pass. Inode numbers follow the same
//! order, so the root has the highest number.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::ffi::OsStrExt;

use super::compress::Codec;
use super::data::DataOut;
use super::meta::{MetaWriter, METADATA_SIZE};
use super::SquashfsError;
use crate::tree::{Entry, Kind, Tree};

const NO_FRAGMENT: u32 = 0xFFFF_FFFF;
const NO_XATTR: u32 = 0xFFFF_FFFF;
/// Entries one directory header can cover.
const DIR_HEADER_MAX: usize = 256;
/// The format limits names to 256 bytes.
const NAME_MAX: usize = 256;

// Inode types; the extended variant of each basic one is basic + 7.
const T_DIR: u16 = 1;
const T_FILE: u16 = 2;
const T_SYMLINK: u16 = 3;
const T_BLKDEV: u16 = 4;
const T_CHRDEV: u16 = 5;
const T_FIFO: u16 = 6;
const EXTENDED: u16 = 7;

pub struct Tables {
    pub inode_table: Vec<u8>,
    pub dir_table: Vec<u8>,
    pub root_ref: u64,
    pub inode_count: u32,
    /// Inode reference by inode number - 1 (the export table).
    pub export: Vec<u64>,
    pub ids: Vec<u32>,
}

struct Layout {
    children: Vec<Vec<usize>>,
    parent: Vec<usize>,
    /// Entries that get an inode, in writing order (hard-link followers excluded).
    order: Vec<usize>,
    /// Inode number by entry (followers share their group's).
    number: Vec<u32>,
    /// Link count by group leader.
    links: HashMap<usize, u32>,
}

fn leader(tree: &Tree, i: usize) -> usize {
    match (&tree.entries[i].kind, tree.entries[i].link_group) {
        (Kind::File { .. }, Some(g)) => g,
        _ => i,
    }
}

fn layout(tree: &Tree) -> Layout {
    let n = tree.entries.len();
    let mut children = vec![Vec::new(); n];
    let mut parent = vec![0; n];
    let mut stack: Vec<usize> = Vec::new();
    let mut links: HashMap<usize, u32> = HashMap::new();
    for (i, e) in tree.entries.iter().enumerate() {
        let d = e.depth();
        if d > 0 {
            stack.truncate(d);
            let p = stack[d - 1];
            parent[i] = p;
            children[p].push(i);
        }
        if e.kind == Kind::Dir {
            stack.truncate(d);
            stack.push(i);
        }
        if matches!(e.kind, Kind::File { .. }) && e.link_group.is_some() {
            *links.entry(leader(tree, i)).or_default() += 1;
        }
    }
    let mut order = Vec::with_capacity(n);
    let mut emitted = vec![false; n];
    // Explicit stack: (directory, children visited) keeps deep trees off the
    // call stack.
    let mut work: Vec<(usize, bool)> = vec![(0, false)];
    while let Some((d, expanded)) = work.pop() {
        if !expanded {
            work.push((d, true));
            for &c in children[d].iter().rev() {
                if tree.entries[c].kind == Kind::Dir {
                    work.push((c, false));
                }
            }
            continue;
        }
        for &c in &children[d] {
            if tree.entries[c].kind == Kind::Dir {
                continue;
            }
            let l = leader(tree, c);
            if !emitted[l] {
                emitted[l] = true;
                order.push(l);
            }
        }
        emitted[d] = true;
        order.push(d);
    }
    let mut number = vec![0u32; n];
    for (k, &i) in order.iter().enumerate() {
        number[i] = k as u32 + 1;
    }
    for i in 0..n {
        number[i] = number[leader(tree, i)];
    }
    Layout {
        children,
        parent,
        order,
        number,
        links,
    }
}

fn basic_type(k: &Kind) -> u16 {
    match k {
        Kind::Dir => T_DIR,
        Kind::File { .. } => T_FILE,
        Kind::Symlink { .. } => T_SYMLINK,
        Kind::BlockDev { .. } => T_BLKDEV,
        Kind::CharDev { .. } => T_CHRDEV,
        Kind::Fifo => T_FIFO,
    }
}

struct Buf(Vec<u8>);
impl Buf {
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
}

pub fn write_tables(
    tree: &Tree,
    data: &DataOut,
    codec: &mut Codec,
) -> Result<Tables, SquashfsError> {
    if tree.entries.first().is_none_or(|e| e.kind != Kind::Dir) {
        return Err(SquashfsError::NoRoot);
    }
    let lay = layout(tree);
    let ids: Vec<u32> = tree
        .entries
        .iter()
        .flat_map(|e| [e.uid, e.gid])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if ids.len() > u16::MAX as usize {
        return Err(SquashfsError::TooManyIds { count: ids.len() });
    }
    let id_index: HashMap<u32, u16> = ids
        .iter()
        .enumerate()
        .map(|(k, &id)| (id, k as u16))
        .collect();
    let inode_count = lay.order.len() as u32;

    let mut refs = vec![0u64; tree.entries.len()];
    let mut export = vec![0u64; lay.order.len()];
    // Both tables grow at once, so each holds its own compression context.
    let mut dir_codec = codec.clone_level()?;
    let mut itab = MetaWriter::new(codec, "inode table block");
    let mut dtab = MetaWriter::new(&mut dir_codec, "directory table block");

    for &i in &lay.order {
        let e = &tree.entries[i];
        let mtime = u32::try_from(e.mtime).map_err(|_| SquashfsError::TimeRange {
            path: e.path.clone(),
            mtime: e.mtime,
        })?;
        let mut b = Buf(Vec::with_capacity(64));
        let ty = basic_type(&e.kind);
        let header = |b: &mut Buf, ty: u16| {
            b.u16(ty)
                .u16((e.mode & 0o7777) as u16)
                .u16(id_index[&e.uid])
                .u16(id_index[&e.gid])
                .u32(mtime)
                .u32(lay.number[i]);
        };
        match &e.kind {
            Kind::Dir => {
                let parent = if i == 0 {
                    inode_count + 1
                } else {
                    lay.number[lay.parent[i]]
                };
                let subdirs = lay.children[i]
                    .iter()
                    .filter(|&&c| tree.entries[c].kind == Kind::Dir)
                    .count() as u32;
                let listing = write_listing(tree, &lay, &refs, &lay.children[i], &mut dtab)?;
                // "." and ".." are implied and counted in the size.
                let size = listing.len + 3;
                if listing.index.is_empty() && size <= u16::MAX as u32 {
                    header(&mut b, T_DIR);
                    b.u32(listing.start_block)
                        .u32(2 + subdirs)
                        .u16(size as u16)
                        .u16(listing.offset)
                        .u32(parent);
                } else {
                    header(&mut b, T_DIR + EXTENDED);
                    b.u32(2 + subdirs)
                        .u32(size)
                        .u32(listing.start_block)
                        .u32(parent)
                        .u16(listing.index.len() as u16)
                        .u16(listing.offset)
                        .u32(NO_XATTR);
                    for (index, start, name) in &listing.index {
                        b.u32(*index)
                            .u32(*start)
                            .u32(name.len() as u32 - 1)
                            .bytes(name);
                    }
                }
            }
            Kind::File { size } => {
                let fd = data.files.get(&i).ok_or(SquashfsError::Internal {
                    what: "file without a data plan",
                })?;
                let nlink = lay.links.get(&i).copied().unwrap_or(1);
                let (frag, frag_off) = fd.fragment.unwrap_or((NO_FRAGMENT, 0));
                let basic = nlink == 1
                    && fd.sparse_bytes == 0
                    && fd.start <= u32::MAX as u64
                    && *size <= u32::MAX as u64;
                if basic {
                    header(&mut b, T_FILE);
                    b.u32(fd.start as u32)
                        .u32(frag)
                        .u32(frag_off)
                        .u32(*size as u32);
                } else {
                    header(&mut b, T_FILE + EXTENDED);
                    b.u64(fd.start)
                        .u64(*size)
                        .u64(fd.sparse_bytes)
                        .u32(nlink)
                        .u32(frag)
                        .u32(frag_off)
                        .u32(NO_XATTR);
                }
                for &s in &fd.block_sizes {
                    b.u32(s);
                }
            }
            Kind::Symlink { target } => {
                header(&mut b, ty);
                let t = target.as_bytes();
                b.u32(1).u32(t.len() as u32).bytes(t);
            }
            Kind::BlockDev { major, minor } | Kind::CharDev { major, minor } => {
                header(&mut b, ty);
                b.u32(1).u32(encode_dev(e, *major, *minor)?);
            }
            Kind::Fifo => {
                header(&mut b, ty);
                b.u32(1);
            }
        }
        let (block, offset) = itab.position();
        let r = (block << 16) | offset as u64;
        refs[i] = r;
        export[lay.number[i] as usize - 1] = r;
        itab.write(&b.0)?;
    }
    for i in 0..tree.entries.len() {
        refs[i] = refs[leader(tree, i)];
    }
    Ok(Tables {
        inode_table: itab.finish()?,
        dir_table: dtab.finish()?,
        root_ref: refs[0],
        inode_count,
        export,
        ids,
    })
}

/// The kernel's "new" dev_t encoding, which squashfs stores.
fn encode_dev(e: &Entry, major: u32, minor: u32) -> Result<u32, SquashfsError> {
    if major > 0xfff || minor > 0xf_ffff {
        return Err(SquashfsError::DeviceRange {
            path: e.path.clone(),
            major,
            minor,
        });
    }
    Ok((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

struct Listing {
    start_block: u32,
    offset: u16,
    len: u32,
    /// Directory index: (offset in listing, block start, first name).
    index: Vec<(u32, u32, Vec<u8>)>,
}

/// Writes one directory's entries. A new header starts when the format
/// demands it (256 entries, another inode block, inode number too far) and
/// whenever the listing enters a new metadata block; each such header in a
/// new block gets an index entry so lookups can skip straight to it.
fn write_listing(
    tree: &Tree,
    lay: &Layout,
    refs: &[u64],
    children: &[usize],
    dtab: &mut MetaWriter,
) -> Result<Listing, SquashfsError> {
    let (start_block, offset) = dtab.position();
    let base = dtab.uncompressed_len();
    let start_block = table_u32(start_block, "directory table")?;
    let mut buf: Vec<u8> = Vec::new();
    let mut index: Vec<(u32, usize, Vec<u8>)> = Vec::new();
    // (position of count field, entries, inode block, base inode number, listing block)
    let mut hdr: Option<(usize, u32, u64, u32, usize)> = None;
    for &c in children {
        let e = &tree.entries[c];
        let name = e.name();
        if name.is_empty() || name.len() > NAME_MAX {
            return Err(SquashfsError::NameLength {
                path: e.path.clone(),
                len: name.len(),
            });
        }
        let l = leader(tree, c);
        let r = refs[l];
        let (iblock, ioff) = (r >> 16, (r & 0xffff) as u16);
        let num = lay.number[l];
        let here = (base + buf.len()) / METADATA_SIZE;
        let fits = hdr.is_some_and(|(_, n, b, first, blk)| {
            (n as usize) < DIR_HEADER_MAX
                && b == iblock
                && (i64::from(num) - i64::from(first)).abs() <= 32767
                && blk == here
        });
        if !fits {
            if let Some((at, n, ..)) = hdr {
                buf[at..at + 4].copy_from_slice(&(n - 1).to_le_bytes());
            }
            let block_of_start = base / METADATA_SIZE;
            let last_indexed = index.last().map_or(block_of_start, |x| x.1);
            if here != last_indexed {
                index.push((buf.len() as u32, here, name.to_vec()));
            }
            let at = buf.len();
            buf.extend_from_slice(&0u32.to_le_bytes());
            buf.extend_from_slice(&table_u32(iblock, "inode table")?.to_le_bytes());
            buf.extend_from_slice(&num.to_le_bytes());
            hdr = Some((at, 0, iblock, num, here));
        }
        let h = hdr.as_mut().ok_or(SquashfsError::Internal {
            what: "directory entry without header",
        })?;
        h.1 += 1;
        let delta = (i64::from(num) - i64::from(h.3)) as i16;
        buf.extend_from_slice(&ioff.to_le_bytes());
        buf.extend_from_slice(&delta.to_le_bytes());
        buf.extend_from_slice(&basic_type(&e.kind).to_le_bytes());
        buf.extend_from_slice(&(name.len() as u16 - 1).to_le_bytes());
        buf.extend_from_slice(name);
    }
    if let Some((at, n, ..)) = hdr {
        buf[at..at + 4].copy_from_slice(&(n - 1).to_le_bytes());
    }
    dtab.write(&buf)?;
    let mut idx = Vec::with_capacity(index.len());
    for (pos, blk, name) in index {
        idx.push((
            pos,
            table_u32(dtab.block_start(blk), "directory table")?,
            name,
        ));
    }
    Ok(Listing {
        start_block,
        offset: offset as u16,
        len: buf.len() as u32,
        index: idx,
    })
}

fn table_u32(v: u64, table: &'static str) -> Result<u32, SquashfsError> {
    u32::try_from(v).map_err(|_| SquashfsError::TableTooLarge { table, bytes: v })
}

//! Lays out a complete FAT32 volume from a file set in one pass, without
//! reading the target back: every directory and file is contiguous, placed
//! in pre-order (a directory's clusters, then its files, then its
//! subdirectories), so the output depends only on the inputs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::dirent::{self, DosTime, ATTR_DIR, ATTR_VOLUME};
use super::geometry::{boot_sector, fsinfo_sector, Geometry, MEDIA};
use super::{io_err, names, FatError};

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub enum FatSource {
    Bytes(Vec<u8>),
    /// Read at write time; its size must not change in between.
    Host(PathBuf),
}

#[derive(Debug, Clone)]
pub struct FatFile {
    /// Path inside the volume, `/`-separated, e.g. `EFI/BOOT/BOOTX64.EFI`.
    pub path: String,
    pub source: FatSource,
}

#[derive(Debug, Clone)]
pub struct FormatOptions {
    /// Volume size in bytes (a multiple of 512).
    pub size: u64,
    /// Volume label, up to 11 upper-case 8.3 characters (e.g. `EFI`); empty
    /// for none.
    pub label: String,
    /// The volume id is the first 4 bytes of sha256("cairn-fat-volume-id" || seed).
    pub seed: Vec<u8>,
    /// SOURCE_DATE_EPOCH for every timestamp (see [`DosTime`] for clamping).
    pub epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatSummary {
    pub geometry: Geometry,
    pub volume_id: u32,
    pub used_clusters: u32,
    pub free_clusters: u32,
}

enum Node {
    Dir(Vec<Child>),
    File { source: FatSource, size: u64 },
}

struct Child {
    name: String,
    short: [u8; 11],
    lfn: bool,
    node: Node,
    cluster: u32,
    clusters: u32,
}

/// Writes the volume into `out` starting at byte `offset`. Writes the
/// reserved sectors, both FATs, every directory cluster and every file
/// cluster (the tail of the last cluster zeroed); free data clusters are
/// left untouched, so a caller that wants identical bytes gives a zeroed
/// region (as a freshly extended image file is).
pub fn format<W: Write + Seek>(
    out: &mut W,
    offset: u64,
    opts: &FormatOptions,
    files: &[FatFile],
) -> Result<FormatSummary, FatError> {
    let geo = Geometry::for_size(opts.size)?;
    let label = label_bytes(&opts.label)?;
    let volume_id = {
        let mut h = Sha256::new();
        h.update(b"cairn-fat-volume-id");
        h.update(&opts.seed);
        let d = h.finalize();
        u32::from_le_bytes([d[0], d[1], d[2], d[3]])
    };
    let stamp = DosTime::from_epoch(opts.epoch);

    let mut root = Vec::new();
    for f in files {
        insert(&mut root, f)?;
    }
    name_children(&mut root);

    let cs = geo.cluster_size();
    let limit = geo.cluster_count() + 2;
    let mut next = geo.root_cluster;
    let root_slots = slots(&root) + usize::from(label.is_some());
    let root_clusters = clusters_for((root_slots * 32) as u64, cs).max(1);
    next += root_clusters;
    allocate(&mut root, "", &mut next, limit, cs)?;

    let mut fat = vec![0u32; (geo.fat_sectors as usize * 512) / 4];
    fat[0] = 0x0FFF_FF00 | MEDIA as u32;
    fat[1] = 0x0FFF_FFFF;
    chain(&mut fat, geo.root_cluster, root_clusters);
    chain_all(&mut fat, &root);

    let used = next - 2;
    let free = geo.cluster_count() - used;
    let next_free = if free > 0 { next } else { 0xFFFF_FFFF };
    let boot_label = label.unwrap_or(*b"NO NAME    ");
    let boot = boot_sector(&geo, volume_id, &boot_label);
    let info = fsinfo_sector(free, next_free);
    let mut reserved = vec![0u8; geo.reserved_sectors as usize * 512];
    for (sector, bytes) in [(0, &boot), (1, &info), (6, &boot), (7, &info)] {
        reserved[sector * 512..sector * 512 + 512].copy_from_slice(bytes);
    }
    let mut w = Out { out, offset };
    w.write(0, &reserved, "reserved sectors")?;
    let fat_bytes: Vec<u8> = fat.iter().flat_map(|v| v.to_le_bytes()).collect();
    for copy in 0..geo.fat_count {
        w.write(geo.fat_offset(copy), &fat_bytes, "FAT")?;
    }

    let mut head = Vec::new();
    if let Some(l) = label {
        head.push(dirent::short_entry(&l, ATTR_VOLUME, 0, 0, stamp));
    }
    write_dir(
        &mut w,
        &geo,
        geo.root_cluster,
        root_clusters,
        head,
        &root,
        stamp,
        "/",
    )?;
    write_tree(&mut w, &geo, &root, geo.root_cluster, stamp, "")?;
    Ok(FormatSummary {
        geometry: geo,
        volume_id,
        used_clusters: used,
        free_clusters: free,
    })
}

/// [`format`] into a new file at `path` (truncated and sized to the volume).
pub fn format_path(
    path: &Path,
    opts: &FormatOptions,
    files: &[FatFile],
) -> Result<FormatSummary, FatError> {
    let ctx = || format!("writing {}", path.display());
    let mut f = File::create(path).map_err(io_err(ctx()))?;
    f.set_len(opts.size).map_err(io_err(ctx()))?;
    let s = format(&mut f, 0, opts, files)?;
    f.sync_all().map_err(io_err(ctx()))?;
    Ok(s)
}

struct Out<'a, W> {
    out: &'a mut W,
    offset: u64,
}

impl<W: Write + Seek> Out<'_, W> {
    fn write(&mut self, pos: u64, buf: &[u8], what: &str) -> Result<(), FatError> {
        let at = self.offset + pos;
        let ctx = || format!("writing {what} at byte {at}");
        self.out.seek(SeekFrom::Start(at)).map_err(io_err(ctx()))?;
        self.out.write_all(buf).map_err(io_err(ctx()))
    }
}

fn label_bytes(label: &str) -> Result<Option<[u8; 11]>, FatError> {
    if label.is_empty() {
        return Ok(None);
    }
    let bad = |reason: &str| FatError::InvalidLabel {
        label: label.to_string(),
        reason: reason.to_string(),
    };
    if label.len() > 11 {
        return Err(bad("longer than 11 bytes"));
    }
    if !label.bytes().all(|b| {
        b == b' '
            || b.is_ascii_digit()
            || b.is_ascii_uppercase()
            || b"!#$%&'()-@^_`{}~".contains(&b)
    }) {
        return Err(bad(
            "only upper-case letters, digits, spaces and !#$%&'()-@^_`{}~ are allowed",
        ));
    }
    let mut l = [b' '; 11];
    l[..label.len()].copy_from_slice(label.as_bytes());
    Ok(Some(l))
}

fn insert(root: &mut Vec<Child>, f: &FatFile) -> Result<(), FatError> {
    let parts: Vec<&str> = f.path.split('/').filter(|p| !p.is_empty()).collect();
    let Some((last, dirs)) = parts.split_last() else {
        return Err(FatError::InvalidName {
            name: f.path.clone(),
            reason: "empty path".into(),
        });
    };
    for p in &parts {
        names::validate(p)?;
    }
    let size = match &f.source {
        FatSource::Bytes(b) => b.len() as u64,
        FatSource::Host(p) => std::fs::metadata(p)
            .map_err(io_err(format!("reading {} for {}", p.display(), f.path)))?
            .len(),
    };
    if size > u32::MAX as u64 {
        return Err(FatError::FileTooLarge {
            path: f.path.clone(),
            size,
        });
    }
    let mut cur = root;
    for (i, d) in dirs.iter().enumerate() {
        let pos = match cur.iter().position(|c| names::same_name(&c.name, d)) {
            Some(p) => p,
            None => {
                cur.push(child(d, Node::Dir(Vec::new())));
                cur.len() - 1
            }
        };
        cur = match &mut cur[pos].node {
            Node::Dir(children) => children,
            Node::File { .. } => {
                return Err(FatError::NotADirectory {
                    path: dirs[..=i].join("/"),
                })
            }
        };
    }
    if cur.iter().any(|c| names::same_name(&c.name, last)) {
        return Err(FatError::AlreadyExists {
            path: parts.join("/"),
        });
    }
    cur.push(child(
        last,
        Node::File {
            source: f.source.clone(),
            size,
        },
    ));
    Ok(())
}

fn child(name: &str, node: Node) -> Child {
    Child {
        name: name.to_string(),
        short: [0; 11],
        lfn: false,
        node,
        cluster: 0,
        clusters: 0,
    }
}

/// Sorts each directory byte-wise (so input order does not matter) and
/// gives every entry its short name: names that are valid upper-case 8.3
/// first (they must keep their own name), then generated ones.
fn name_children(children: &mut [Child]) {
    children.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let mut taken: Vec<[u8; 11]> = Vec::new();
    for c in children.iter_mut() {
        if let Some(s) = names::as_short(&c.name) {
            c.short = s;
            taken.push(s);
        }
    }
    for c in children.iter_mut() {
        if names::as_short(&c.name).is_none() {
            let s = names::generate_short(&c.name, &|s| taken.contains(s));
            c.short = s;
            c.lfn = true;
            taken.push(s);
        }
        if let Node::Dir(sub) = &mut c.node {
            name_children(sub);
        }
    }
}

fn slots(children: &[Child]) -> usize {
    children
        .iter()
        .map(|c| {
            if c.lfn {
                c.name.encode_utf16().count().div_ceil(13) + 1
            } else {
                1
            }
        })
        .sum()
}

fn clusters_for(bytes: u64, cs: u64) -> u32 {
    bytes.div_ceil(cs) as u32
}

fn allocate(
    children: &mut [Child],
    dir: &str,
    next: &mut u32,
    limit: u32,
    cs: u64,
) -> Result<(), FatError> {
    let take = |path: String, n: u32, next: &mut u32| -> Result<u32, FatError> {
        if n == 0 {
            return Ok(0);
        }
        if *next as u64 + n as u64 > limit as u64 {
            return Err(FatError::NoSpace {
                path,
                needed: n as u64 * cs,
                free: (limit - *next) as u64 * cs,
            });
        }
        let c = *next;
        *next += n;
        Ok(c)
    };
    for c in children.iter_mut() {
        match &c.node {
            Node::Dir(sub) => {
                // `.` and `..` take two slots in every subdirectory.
                c.clusters = clusters_for(((slots(sub) + 2) * 32) as u64, cs);
            }
            Node::File { size, .. } => c.clusters = clusters_for(*size, cs),
        }
    }
    for c in children
        .iter_mut()
        .filter(|c| matches!(c.node, Node::Dir(_)))
    {
        c.cluster = take(format!("{dir}{}/", c.name), c.clusters, next)?;
    }
    for c in children
        .iter_mut()
        .filter(|c| matches!(c.node, Node::File { .. }))
    {
        c.cluster = take(format!("{dir}{}", c.name), c.clusters, next)?;
    }
    for c in children.iter_mut() {
        let path = format!("{dir}{}/", c.name);
        if let Node::Dir(sub) = &mut c.node {
            allocate(sub, &path, next, limit, cs)?;
        }
    }
    Ok(())
}

fn chain(fat: &mut [u32], first: u32, n: u32) {
    for c in first..first + n {
        fat[c as usize] = if c + 1 == first + n {
            0x0FFF_FFFF
        } else {
            c + 1
        };
    }
}

fn chain_all(fat: &mut [u32], children: &[Child]) {
    for c in children {
        chain(fat, c.cluster, c.clusters);
        if let Node::Dir(sub) = &c.node {
            chain_all(fat, sub);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn write_dir<W: Write + Seek>(
    w: &mut Out<'_, W>,
    geo: &Geometry,
    cluster: u32,
    clusters: u32,
    mut entries: Vec<[u8; 32]>,
    children: &[Child],
    stamp: DosTime,
    path: &str,
) -> Result<(), FatError> {
    for c in children {
        let (attr, size) = match &c.node {
            Node::Dir(_) => (ATTR_DIR, 0),
            Node::File { size, .. } => (0, *size as u32),
        };
        let tail = dirent::short_entry(&c.short, attr, c.cluster, size, stamp);
        entries.extend(dirent::entry_set(&c.name, &c.short, c.lfn, &tail));
    }
    let mut buf = vec![0u8; (clusters as u64 * geo.cluster_size()) as usize];
    for (i, e) in entries.iter().enumerate() {
        buf[i * 32..i * 32 + 32].copy_from_slice(e);
    }
    w.write(
        geo.cluster_offset(cluster),
        &buf,
        &format!("directory {path}"),
    )
}

fn write_tree<W: Write + Seek>(
    w: &mut Out<'_, W>,
    geo: &Geometry,
    children: &[Child],
    parent: u32,
    stamp: DosTime,
    dir: &str,
) -> Result<(), FatError> {
    let cs = geo.cluster_size();
    for c in children {
        let path = format!("{dir}{}", c.name);
        match &c.node {
            Node::Dir(sub) => {
                let dotdot = if parent == geo.root_cluster {
                    0
                } else {
                    parent
                };
                let head = vec![
                    dirent::short_entry(b".          ", ATTR_DIR, c.cluster, 0, stamp),
                    dirent::short_entry(b"..         ", ATTR_DIR, dotdot, 0, stamp),
                ];
                write_dir(w, geo, c.cluster, c.clusters, head, sub, stamp, &path)?;
                write_tree(w, geo, sub, c.cluster, stamp, &format!("{path}/"))?;
            }
            Node::File { source, size } => {
                if *size == 0 {
                    continue;
                }
                let pad = (c.clusters as u64 * cs - size) as usize;
                let at = geo.cluster_offset(c.cluster);
                match source {
                    FatSource::Bytes(b) => {
                        w.write(at, b, &path)?;
                    }
                    FatSource::Host(p) => copy_host(w, at, p, *size, &path)?,
                }
                w.write(at + size, &vec![0u8; pad], &path)?;
            }
        }
    }
    Ok(())
}

fn copy_host<W: Write + Seek>(
    w: &mut Out<'_, W>,
    at: u64,
    host: &Path,
    size: u64,
    path: &str,
) -> Result<(), FatError> {
    let ctx = || format!("reading {} for {path}", host.display());
    let mut f = File::open(host).map_err(io_err(ctx()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err(ctx()))?;
        if n == 0 {
            break;
        }
        if done + n as u64 > size {
            return Err(FatError::SourceChanged {
                path: host.to_path_buf(),
                expected: size,
                actual: done + n as u64,
            });
        }
        w.write(at + done, &buf[..n], path)?;
        done += n as u64;
    }
    if done != size {
        return Err(FatError::SourceChanged {
            path: host.to_path_buf(),
            expected: size,
            actual: done,
        });
    }
    Ok(())
}

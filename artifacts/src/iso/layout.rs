//! The directory tree and where every structure and file goes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::ecma119::{path_record_len, record_len, BLOCK, SYSTEM_AREA_BLOCKS};
use super::names::{self, MAX_DEPTH, MAX_DIR_CHARS, MAX_PATH_BYTES};
use super::IsoError;

#[derive(Debug)]
pub(crate) struct FileItem {
    /// As given, for error messages.
    pub iso_path: String,
    /// Recorded identifier, `NAME.EXT;1`.
    pub id: String,
    pub host: PathBuf,
    pub size: u64,
    pub extent: u32,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Child {
    Dir(usize),
    File(usize),
}

#[derive(Debug)]
pub(crate) struct Dir {
    /// Empty for the root.
    pub id: String,
    /// Index in `Layout::dirs`, which is path table order; the root is its
    /// own parent.
    pub parent: usize,
    pub children: Vec<Child>,
    pub extent: u32,
    pub size: u32,
}

#[derive(Debug)]
pub(crate) struct Layout {
    pub dirs: Vec<Dir>,
    pub files: Vec<FileItem>,
    pub path_table_bytes: u32,
    pub l_table: u32,
    pub m_table: u32,
    pub catalog: u32,
    /// Index in `files` of the ESP image.
    pub efi: usize,
    /// First block after the last file.
    pub data_end: u64,
}

#[derive(Default)]
struct TempDir {
    dirs: BTreeMap<String, TempDir>,
    files: BTreeMap<String, usize>,
}

/// Splits and checks `iso_path` (leading `/` optional).
fn components(iso_path: &str) -> Result<(Vec<&str>, &str), IsoError> {
    let bad = |reason: String| IsoError::BadPath {
        path: iso_path.to_string(),
        reason,
    };
    let rel = iso_path.strip_prefix('/').unwrap_or(iso_path);
    if rel.len() > MAX_PATH_BYTES {
        return Err(bad(format!(
            "is {} bytes; ECMA-119 allows {MAX_PATH_BYTES}",
            rel.len()
        )));
    }
    let mut parts: Vec<&str> = rel.split('/').collect();
    let file = parts.pop().unwrap_or("");
    if parts.len() + 1 > MAX_DEPTH {
        return Err(bad(format!(
            "is {} directories deep; ECMA-119 allows {} below the root",
            parts.len(),
            MAX_DEPTH - 1
        )));
    }
    for d in &parts {
        names::check_d_chars(d, MAX_DIR_CHARS).map_err(|r| bad(format!("directory {d:?} {r}")))?;
    }
    names::check_file_name(file).map_err(|r| bad(format!("file name {file:?} {r}")))?;
    Ok((parts, file))
}

/// Bytes a directory's records take, never splitting a record over two
/// blocks (ECMA-119 6.8.1.1), rounded up to whole blocks.
fn dir_bytes(ids: impl Iterator<Item = usize>) -> u64 {
    let mut used = 0u64;
    for len in [1usize, 1].into_iter().chain(ids) {
        let r = record_len(len) as u64;
        if used % BLOCK + r > BLOCK {
            used = used.div_ceil(BLOCK) * BLOCK;
        }
        used += r;
    }
    used.div_ceil(BLOCK) * BLOCK
}

impl Layout {
    /// `sources`: (iso path, host path, size); the ESP image is `efi`.
    pub fn new(
        sources: Vec<(String, PathBuf, u64)>,
        efi: usize,
        efi_align_blocks: u64,
    ) -> Result<Layout, IsoError> {
        let mut root = TempDir::default();
        let mut files = Vec::with_capacity(sources.len());
        for (index, (iso_path, host, size)) in sources.into_iter().enumerate() {
            let (parts, file) = components(&iso_path)?;
            let dup = || IsoError::DuplicatePath {
                path: iso_path.clone(),
            };
            let mut d = &mut root;
            for p in parts {
                if d.files.contains_key(p) {
                    return Err(dup());
                }
                d = d.dirs.entry(p.to_string()).or_default();
            }
            if d.dirs.contains_key(file) || d.files.insert(file.to_string(), index).is_some() {
                return Err(dup());
            }
            if size > u32::MAX as u64 {
                return Err(IsoError::FileTooLarge {
                    path: host,
                    size,
                    max: u32::MAX as u64,
                });
            }
            files.push(FileItem {
                id: names::file_identifier(file),
                iso_path,
                host,
                size,
                extent: 0,
            });
        }

        // Breadth first with sorted children is exactly path table order:
        // by level, then parent number, then identifier.
        let mut dirs: Vec<Dir> = Vec::new();
        let mut queue: Vec<(String, usize, TempDir)> = vec![(String::new(), 0, root)];
        let mut head = 0;
        while head < queue.len() {
            let (id, parent, temp) = std::mem::take(&mut queue[head]);
            let me = head;
            head += 1;
            let mut named: Vec<(String, Child)> = Vec::new();
            for (name, sub) in temp.dirs {
                named.push((name.clone(), Child::Dir(queue.len())));
                queue.push((name, me, sub));
            }
            for (_, index) in temp.files {
                named.push((files[index].id.clone(), Child::File(index)));
            }
            named.sort_by(|a, b| names::record_order(&a.0, &b.0));
            dirs.push(Dir {
                id,
                parent,
                children: named.into_iter().map(|(_, c)| c).collect(),
                extent: 0,
                size: 0,
            });
        }

        let path_table_bytes: usize = dirs
            .iter()
            .map(|d| path_record_len(d.id.len().max(1)))
            .sum();
        let table_blocks = (path_table_bytes as u64).div_ceil(BLOCK);
        // PVD, boot record, terminator.
        let mut next = SYSTEM_AREA_BLOCKS as u64 + 3;
        let l_table = next;
        next += table_blocks;
        let m_table = next;
        next += table_blocks;
        for i in 0..dirs.len() {
            let ids: Vec<usize> = dirs[i]
                .children
                .iter()
                .map(|c| match *c {
                    Child::Dir(d) => dirs[d].id.len(),
                    Child::File(f) => files[f].id.len(),
                })
                .collect();
            let bytes = dir_bytes(ids.into_iter());
            dirs[i].extent = next as u32;
            dirs[i].size = bytes as u32;
            next += bytes / BLOCK;
        }
        let catalog = next;
        next += 1;
        // The ESP first, aligned so the GPT partition on it is too.
        next = next.div_ceil(efi_align_blocks) * efi_align_blocks;
        // The rest by ISO path, so the bytes do not depend on the order the
        // caller listed the files in.
        let mut rest: Vec<usize> = (0..files.len()).filter(|&i| i != efi).collect();
        rest.sort_by(|&a, &b| {
            let key = |i: usize| files[i].iso_path.trim_start_matches('/').to_string();
            key(a).cmp(&key(b))
        });
        for i in std::iter::once(efi).chain(rest) {
            files[i].extent = next as u32;
            next += files[i].size.div_ceil(BLOCK);
            if next > u32::MAX as u64 {
                return Err(IsoError::VolumeTooLarge { blocks: next });
            }
        }
        Ok(Layout {
            dirs,
            files,
            path_table_bytes: path_table_bytes as u32,
            l_table: l_table as u32,
            m_table: m_table as u32,
            catalog: catalog as u32,
            efi,
            data_end: next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_do_not_cross_blocks() {
        // 34 + 34 + 60 records of 64 bytes (id 30): 31 fit after the two
        // dot entries (68 + 31*64 = 2052 > 2048, so 30), the rest spill.
        assert_eq!(dir_bytes(std::iter::repeat_n(30, 30)), 2048);
        assert_eq!(dir_bytes(std::iter::repeat_n(30, 31)), 4096);
    }
}

//! A staged directory tree, read once into a sorted, normalised list of entries.
//!
//! Every archive writer (squashfs, cpio) starts from the same `Tree`, so the
//! rules that make output reproducible live in one place: entries sorted by
//! byte-wise path, ownership and modes normalised by a caller-chosen rule,
//! every timestamp replaced by `SOURCE_DATE_EPOCH`, hard links detected by
//! (device, inode) and reported as groups.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: unsupported file type (sockets cannot be archived)")]
    Unsupported { path: PathBuf },
    #[error("{path}: is not a directory")]
    NotADirectory { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How ownership and permission bits are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Normalize {
    /// Replace every uid with this one (`None` keeps the staged uid).
    pub uid: Option<u32>,
    /// Replace every gid with this one (`None` keeps the staged gid).
    pub gid: Option<u32>,
    pub mode: ModeRule,
    /// The one timestamp every entry gets (SOURCE_DATE_EPOCH).
    pub mtime: u64,
}

impl Normalize {
    /// root:root, staged permission bits kept, every timestamp = `epoch`.
    pub fn root_owned(epoch: u64) -> Self {
        Normalize {
            uid: Some(0),
            gid: Some(0),
            mode: ModeRule::Keep,
            mtime: epoch,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeRule {
    /// Keep the staged permission bits (including setuid/setgid/sticky).
    Keep,
    /// Directories and files with any execute bit 0755, other files 0644,
    /// symlinks 0777, devices and FIFOs 0600; setuid/setgid/sticky dropped.
    Canonical,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { size: u64 },
    Symlink { target: OsString },
    CharDev { major: u32, minor: u32 },
    BlockDev { major: u32, minor: u32 },
    Fifo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the tree root; empty for the root itself.
    pub path: PathBuf,
    /// Where the content lives on the build host (for files).
    pub source: PathBuf,
    pub kind: Kind,
    /// Permission bits only (`& 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    /// For a regular file that is hard-linked: index (into `Tree::entries`)
    /// of the first entry of its link group, in sorted order. The first entry
    /// itself also carries its own index, so `link_group.is_some()` marks
    /// every member.
    pub link_group: Option<usize>,
}

impl Entry {
    /// `S_IF*` type bits | permission bits, as stat(2) reports them.
    pub fn st_mode(&self) -> u32 {
        let t = match self.kind {
            Kind::Dir => libc::S_IFDIR,
            Kind::File { .. } => libc::S_IFREG,
            Kind::Symlink { .. } => libc::S_IFLNK,
            Kind::CharDev { .. } => libc::S_IFCHR,
            Kind::BlockDev { .. } => libc::S_IFBLK,
            Kind::Fifo => libc::S_IFIFO,
        };
        t | self.mode
    }

    /// The last path component (empty for the root).
    pub fn name(&self) -> &[u8] {
        self.path
            .file_name()
            .map(|n| n.as_bytes())
            .unwrap_or_default()
    }

    /// Depth below the root (root = 0).
    pub fn depth(&self) -> usize {
        self.path.components().count()
    }
}

#[derive(Debug, Clone)]
pub struct Tree {
    pub root: PathBuf,
    /// Pre-order walk, root first, children sorted by byte-wise name.
    pub entries: Vec<Entry>,
}

impl Tree {
    /// Reads `root` recursively. Symlinks are recorded, never followed.
    pub fn read(root: &Path, rule: Normalize) -> Result<Tree, TreeError> {
        let meta = fs::symlink_metadata(root).map_err(io_err(root))?;
        if !meta.is_dir() {
            return Err(TreeError::NotADirectory {
                path: root.to_path_buf(),
            });
        }
        let mut entries = Vec::new();
        let mut inodes: HashMap<(u64, u64), usize> = HashMap::new();
        walk(root, PathBuf::new(), &meta, rule, &mut entries, &mut inodes)?;
        // Mark the first member of every group that gained a second member.
        let firsts: Vec<usize> = entries.iter().filter_map(|e| e.link_group).collect();
        for i in firsts {
            entries[i].link_group = Some(i);
        }
        Ok(Tree {
            root: root.to_path_buf(),
            entries,
        })
    }

    /// Indices of the direct children of the directory at `index`, in order.
    pub fn children(&self, index: usize) -> Vec<usize> {
        let depth = self.entries[index].depth();
        let mut out = Vec::new();
        for (i, e) in self.entries.iter().enumerate().skip(index + 1) {
            let d = e.depth();
            if d <= depth {
                break;
            }
            if d == depth + 1 {
                out.push(i);
            }
        }
        out
    }

    /// Sum of regular file sizes, counting each hard-link group once.
    pub fn content_bytes(&self) -> u64 {
        self.entries
            .iter()
            .enumerate()
            .filter(|(i, e)| e.link_group.is_none_or(|g| g == *i))
            .map(|(_, e)| match e.kind {
                Kind::File { size } => size,
                _ => 0,
            })
            .sum()
    }
}

fn walk(
    abs: &Path,
    rel: PathBuf,
    meta: &fs::Metadata,
    rule: Normalize,
    entries: &mut Vec<Entry>,
    inodes: &mut HashMap<(u64, u64), usize>,
) -> Result<(), TreeError> {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File { size: meta.len() }
    } else if ft.is_symlink() {
        Kind::Symlink {
            target: fs::read_link(abs).map_err(io_err(abs))?.into_os_string(),
        }
    } else if ft.is_char_device() {
        Kind::CharDev {
            major: libc::major(meta.rdev()),
            minor: libc::minor(meta.rdev()),
        }
    } else if ft.is_block_device() {
        Kind::BlockDev {
            major: libc::major(meta.rdev()),
            minor: libc::minor(meta.rdev()),
        }
    } else if ft.is_fifo() {
        Kind::Fifo
    } else {
        return Err(TreeError::Unsupported {
            path: abs.to_path_buf(),
        });
    };
    let staged = meta.mode() & 0o7777;
    let mode = match rule.mode {
        ModeRule::Keep => staged,
        ModeRule::Canonical => match kind {
            Kind::Dir => 0o755,
            Kind::File { .. } if staged & 0o111 != 0 => 0o755,
            Kind::File { .. } => 0o644,
            Kind::Symlink { .. } => 0o777,
            _ => 0o600,
        },
    };
    let mut link_group = None;
    if matches!(kind, Kind::File { .. }) && meta.nlink() > 1 {
        let key = (meta.dev(), meta.ino());
        match inodes.get(&key) {
            Some(&first) => link_group = Some(first),
            None => {
                inodes.insert(key, entries.len());
            }
        }
    }
    entries.push(Entry {
        path: rel.clone(),
        source: abs.to_path_buf(),
        kind: kind.clone(),
        mode,
        uid: rule.uid.unwrap_or(meta.uid()),
        gid: rule.gid.unwrap_or(meta.gid()),
        mtime: rule.mtime,
        link_group,
    });
    if kind == Kind::Dir {
        let mut names: Vec<OsString> = fs::read_dir(abs)
            .map_err(io_err(abs))?
            .map(|d| d.map(|d| d.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err(abs))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let child = abs.join(&name);
            let cmeta = fs::symlink_metadata(&child).map_err(io_err(&child))?;
            walk(&child, rel.join(&name), &cmeta, rule, entries, inodes)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn sorted_normalised_with_links() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir(r.join("b")).unwrap();
        fs::write(r.join("b/z"), b"zz").unwrap();
        fs::write(r.join("a"), b"a").unwrap();
        fs::hard_link(r.join("a"), r.join("c")).unwrap();
        symlink("a", r.join("l")).unwrap();
        let t = Tree::read(r, Normalize::root_owned(42)).unwrap();
        let paths: Vec<_> = t.entries.iter().map(|e| e.path.clone()).collect();
        assert_eq!(
            paths,
            ["", "a", "b", "b/z", "c", "l"]
                .iter()
                .map(PathBuf::from)
                .collect::<Vec<_>>()
        );
        assert!(t.entries.iter().all(|e| e.uid == 0 && e.mtime == 42));
        assert_eq!(t.entries[1].link_group, Some(1));
        assert_eq!(t.entries[4].link_group, Some(1));
        assert_eq!(t.children(0), vec![1, 2, 4, 5]);
        assert_eq!(t.children(2), vec![3]);
        assert_eq!(t.content_bytes(), 3);
    }

    #[test]
    fn missing_root_names_path() {
        let err = Tree::read(Path::new("/nonexistent/cairn"), Normalize::root_owned(0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/cairn"), "{err}");
    }
}

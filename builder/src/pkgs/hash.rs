//! Content hashes: plain files, and repository paths (file or directory).

use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::error::{io_err, PkgError};

pub fn sha256_file(path: &Path) -> Result<String, PkgError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Hash of a repository path. A regular file hashes to the sha256 of its
/// bytes (so `sha256sum` gives the same pin). A directory hashes a sorted
/// walk: for every entry below it, its relative path, type, executable bit
/// and content (files) or target (symlinks), length-prefixed so no two trees
/// share an encoding. Ownership and timestamps are ignored: a checkout's
/// mtimes say nothing about content.
pub fn path_hash(path: &Path) -> Result<String, PkgError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    if meta.is_file() {
        return sha256_file(path);
    }
    let mut h = Sha256::new();
    h.update(b"cairn-tree-v1\0");
    walk(path, Path::new(""), &mut h)?;
    Ok(hex::encode(h.finalize()))
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn walk(abs: &Path, rel: &Path, h: &mut Sha256) -> Result<(), PkgError> {
    let meta = fs::symlink_metadata(abs).map_err(io_err(abs))?;
    let ft = meta.file_type();
    field(h, rel.as_os_str().as_bytes());
    if ft.is_dir() {
        h.update(b"d");
        let mut names: Vec<_> = fs::read_dir(abs)
            .map_err(io_err(abs))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err(abs))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for n in names {
            walk(&abs.join(&n), &rel.join(&n), h)?;
        }
    } else if ft.is_symlink() {
        h.update(b"l");
        let t = fs::read_link(abs).map_err(io_err(abs))?;
        field(h, t.as_os_str().as_bytes());
    } else if ft.is_file() {
        let exec = meta.permissions().mode() & 0o111 != 0;
        h.update(if exec { b"x" } else { b"f" });
        let content = sha256_file(abs)?;
        field(h, content.as_bytes());
    } else {
        return Err(PkgError::Io {
            path: abs.to_path_buf(),
            source: std::io::Error::other("only files, directories and symlinks can be hashed"),
        });
    }
    Ok(())
}

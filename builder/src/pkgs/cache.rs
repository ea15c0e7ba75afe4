//! The on-disk cache: downloads by sha256, build outputs by cache key.
//!
//! ```text
//! <cache>/downloads/<sha256>/<file name>   verified source files
//! <cache>/pkgs/<key>/                      a complete build's CAIRN_OUT
//! <cache>/logs/<name>-<key>.log            the last build log of that key
//! <cache>/tmp/                             work dirs and partial entries
//! <cache>/lock                             flock held while fetching/building
//! ```
//!
//! An entry under `pkgs/` or `downloads/` only ever appears by `rename` of a
//! fully written and fsynced directory from `tmp/`, so whatever interrupts a
//! build, a name under `pkgs/` means a complete result.

use std::fs;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::error::{io_err, PkgError};

#[derive(Debug, Clone)]
pub struct Cache {
    pub root: PathBuf,
}

/// `$CAIRN_CACHE`, else `$XDG_CACHE_HOME/cairn`, else `~/.cache/cairn`.
pub fn default_cache_dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = env("CAIRN_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = env("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("cairn");
    }
    let home = env("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    home.join(".cache").join("cairn")
}

/// An exclusive lock on the cache; released when dropped.
pub struct CacheLock {
    _file: fs::File,
}

impl Cache {
    pub fn new(root: PathBuf) -> Cache {
        Cache { root }
    }

    pub fn entry(&self, key: &str) -> PathBuf {
        self.root.join("pkgs").join(key)
    }

    pub fn download_dir(&self, sha256: &str) -> PathBuf {
        self.root.join("downloads").join(sha256)
    }

    pub fn log(&self, name: &str, key: &str) -> PathBuf {
        self.root.join("logs").join(format!("{name}-{key}.log"))
    }

    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn is_cached(&self, key: &str) -> bool {
        self.entry(key).is_dir()
    }

    /// Creates the layout, takes the lock and removes what interrupted runs
    /// left in `tmp/` (safe: nobody else holds the lock).
    pub fn lock(&self) -> Result<CacheLock, PkgError> {
        for d in ["pkgs", "downloads", "logs", "tmp"] {
            let p = self.root.join(d);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let lp = self.root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lp)
            .map_err(io_err(&lp))?;
        // SAFETY: flock on a file descriptor we own; no memory involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(PkgError::Io {
                path: lp,
                source: std::io::Error::last_os_error(),
            });
        }
        let tmp = self.tmp();
        for e in fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let e = e.map_err(io_err(&tmp))?;
            let p = e.path();
            tracing::info!(path = %p.display(), "removing leftover from an interrupted run");
            let r = if e.file_type().map_err(io_err(&p))?.is_dir() {
                make_writable(&p);
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            // Not fatal: an orphaned script may still be writing there.
            if let Err(e) = r {
                tracing::warn!(path = %p.display(), "cannot remove leftover: {e}");
            }
        }
        Ok(CacheLock { _file: file })
    }

    /// A fresh directory under `tmp/`.
    pub fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir, PkgError> {
        let tmp = self.tmp();
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&tmp)
            .map_err(io_err(&tmp))
    }
}

/// Makes `from` (a finished directory) durable and moves it to `to` in one step.
pub fn commit_dir(from: &Path, to: &Path) -> Result<(), PkgError> {
    fsync_tree(from)?;
    fs::rename(from, to).map_err(io_err(to))?;
    if let Some(parent) = to.parent() {
        fsync_path(parent)?;
    }
    Ok(())
}

fn fsync_path(p: &Path) -> Result<(), PkgError> {
    fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(io_err(p))
}

fn fsync_tree(p: &Path) -> Result<(), PkgError> {
    let meta = fs::symlink_metadata(p).map_err(io_err(p))?;
    if meta.is_dir() {
        for e in fs::read_dir(p).map_err(io_err(p))? {
            let e = e.map_err(io_err(p))?;
            fsync_tree(&e.path())?;
        }
        fsync_path(p)
    } else if meta.is_file() {
        fsync_path(p)
    } else {
        Ok(())
    }
}

/// Build scripts may leave read-only directories; removal needs write bits.
pub fn make_writable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = fs::symlink_metadata(p) {
        if m.is_dir() {
            let _ = fs::set_permissions(
                p,
                fs::Permissions::from_mode(m.permissions().mode() | 0o700),
            );
            if let Ok(rd) = fs::read_dir(p) {
                for e in rd.flatten() {
                    make_writable(&e.path());
                }
            }
        }
    }
}

//! Block caches: compressed blocks by content, for incremental rebuilds.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Compressed blocks by content, so a rebuild after a small change only
/// compresses the blocks that changed. Keys come from [`super::cache_key`]
/// (the level is part of the key). A value is the block as stored in the
/// image: shorter than the input when compressed, the input itself otherwise.
/// Values are trusted: a cache must hand back exactly what was put.
pub trait BlockCache: Sync {
    fn get(&self, key: &[u8; 32]) -> Option<Vec<u8>>;
    fn put(&self, key: [u8; 32], stored: Vec<u8>);
}

/// An in-memory [`BlockCache`].
#[derive(Debug, Default)]
pub struct MemoryCache {
    blocks: Mutex<HashMap<[u8; 32], Vec<u8>>>,
}

impl MemoryCache {
    pub fn len(&self) -> usize {
        self.blocks.lock().map(|m| m.len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl BlockCache for MemoryCache {
    fn get(&self, key: &[u8; 32]) -> Option<Vec<u8>> {
        self.blocks.lock().ok()?.get(key).cloned()
    }
    fn put(&self, key: [u8; 32], stored: Vec<u8>) {
        if let Ok(mut m) = self.blocks.lock() {
            m.insert(key, stored);
        }
    }
}

/// A [`BlockCache`] in a directory, one file per block (`ab/abcdef…`), kept
/// across processes. Failing to read or write it only costs a recompression,
/// so I/O errors are not reported. Files appear by rename, so a crash never
/// leaves a partial block under a key.
#[derive(Debug)]
pub struct DirCache {
    dir: PathBuf,
    counter: AtomicU64,
}

impl DirCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirCache {
            dir: dir.into(),
            counter: AtomicU64::new(0),
        }
    }

    fn path(&self, key: &[u8; 32]) -> PathBuf {
        let h = hex::encode(key);
        self.dir.join(&h[..2]).join(h)
    }
}

impl BlockCache for DirCache {
    fn get(&self, key: &[u8; 32]) -> Option<Vec<u8>> {
        fs::read(self.path(key)).ok()
    }

    fn put(&self, key: [u8; 32], stored: Vec<u8>) {
        let path = self.path(&key);
        let Some(parent) = path.parent() else { return };
        if fs::create_dir_all(parent).is_err() {
            return;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = parent.join(format!(".tmp-{}-{n}", std::process::id()));
        if fs::write(&tmp, &stored).is_ok() && fs::rename(&tmp, &path).is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }
}

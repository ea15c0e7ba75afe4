//! Pipeline stages cached by the hash of their inputs, like packages are.
//!
//! A stage's key is the sha256 of everything that determines its output
//! (named parts fed in a fixed order). Its output is a directory under
//! `<cache>/stages/<name>-<key>/`, built in a `.partial` sibling and renamed
//! into place, so an interrupted build never looks complete.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// Accumulates the inputs of a stage into its cache key.
#[derive(Clone, Default)]
pub struct KeyBuilder(Sha256);

impl KeyBuilder {
    pub fn new(stage: &str) -> Self {
        let mut k = KeyBuilder(Sha256::new());
        k.part("stage", stage.as_bytes());
        k
    }

    /// Length-prefixed so that ("ab","c") and ("a","bc") differ.
    pub fn part(&mut self, name: &str, bytes: &[u8]) -> &mut Self {
        for b in [name.as_bytes(), bytes] {
            self.0.update((b.len() as u64).to_le_bytes());
            self.0.update(b);
        }
        self
    }

    pub fn str(&mut self, name: &str, s: &str) -> &mut Self {
        self.part(name, s.as_bytes())
    }

    /// Content of a host file (small inputs: profile files, scripts).
    pub fn file(&mut self, name: &str, path: &Path) -> Result<&mut Self> {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(self.part(name, &bytes))
    }

    pub fn finish(&self) -> String {
        hex::encode(self.0.clone().finalize())
    }
}

/// What a stage did, for the end-of-build table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageReport {
    pub name: String,
    pub key: String,
    pub cached: bool,
    #[serde(serialize_with = "secs")]
    pub time: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

pub struct StageCache {
    root: PathBuf,
    pub reports: Vec<StageReport>,
}

impl StageCache {
    /// The directory the stages live in (`<cache>/stages`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn new(cache_root: &Path) -> Result<Self> {
        let root = cache_root.join("stages");
        fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        Ok(StageCache {
            root,
            reports: Vec::new(),
        })
    }

    /// The directory stages live in (for caches shared between stages).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Returns the output directory for `name` at `key`, running `build`
    /// into a fresh directory first unless it is already cached.
    pub fn run(
        &mut self,
        name: &str,
        key: &str,
        build: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        let start = Instant::now();
        let done = self.root.join(format!("{name}-{key}"));
        let cached = done.is_dir();
        if !cached {
            let partial = self.root.join(format!("{name}-{key}.partial"));
            if partial.exists() {
                fs::remove_dir_all(&partial)
                    .with_context(|| format!("removing stale {}", partial.display()))?;
            }
            fs::create_dir_all(&partial)?;
            build(&partial).with_context(|| format!("stage {name}"))?;
            sync_dir(&partial)?;
            fs::rename(&partial, &done)
                .with_context(|| format!("publishing stage {name} to {}", done.display()))?;
        }
        tracing::debug!(stage = name, key, cached, "stage done");
        self.reports.push(StageReport {
            name: name.to_string(),
            key: key.to_string(),
            cached,
            time: start.elapsed(),
        });
        Ok(done)
    }
}

/// fsync every file in `dir` (one level) and the directory itself.
fn sync_dir(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_file() {
            fs::File::open(e.path())?.sync_all()?;
        }
    }
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parts_are_unambiguous() {
        let a = KeyBuilder::new("s").str("x", "ab").str("y", "c").finish();
        let b = KeyBuilder::new("s").str("x", "a").str("y", "bc").finish();
        assert_ne!(a, b);
    }

    #[test]
    fn cached_stage_does_not_rebuild_and_failure_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let mut c = StageCache::new(d.path()).unwrap();
        let mut runs = 0;
        for _ in 0..2 {
            c.run("s", "k1", |out| {
                runs += 1;
                Ok(fs::write(out.join("f"), b"x")?)
            })
            .unwrap();
        }
        assert_eq!(runs, 1);
        assert!(c.run("s", "k2", |_| anyhow::bail!("boom")).is_err());
        assert!(!d.path().join("stages/s-k2").exists());
        // the failed attempt is retried, not mistaken for done
        let out = c
            .run("s", "k2", |out| Ok(fs::write(out.join("g"), b"y")?))
            .unwrap();
        assert!(out.join("g").exists());
    }
}

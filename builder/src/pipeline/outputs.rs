//! The output directory: which files are there, whether each is still what
//! its inputs make, and which of them the signed manifest lists.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::stage::{StageCache, StageReport};

pub(super) struct OutputDir {
    dir: PathBuf,
    state: OutputState,
    state_file: PathBuf,
    /// What the signed manifest lists, in the order it lists them.
    listed: Vec<&'static str>,
}

impl OutputDir {
    /// Opens (creating) the output directory `dir`; what was made into it
    /// before is recorded beside `stages`, never in `dir` (which users
    /// publish as it is).
    pub(super) fn open(dir: &Path, stages: &StageCache) -> Result<OutputDir> {
        fs::create_dir_all(dir)
            .with_context(|| format!("creating output directory {}", dir.display()))?;
        // The record of an earlier cairn lived in the directory itself.
        let _ = fs::remove_file(dir.join(OLD_OUTPUT_STATE));
        let canon = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let id = hex::encode(Sha256::digest(canon.as_os_str().as_encoded_bytes()));
        let state_dir = stages.root().join("outputs");
        fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let state_file = state_dir.join(format!("{}.json", &id[..32]));
        Ok(OutputDir {
            dir: dir.to_path_buf(),
            state: OutputState::load(&state_file),
            state_file,
            listed: Vec::new(),
        })
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `write` (given the output directory) unless `name` is already
    /// there, made from the same inputs (`key`) and untouched since; records
    /// it in the stage table either way.
    pub(super) fn produce(
        &mut self,
        stages: &mut StageCache,
        name: &str,
        key: &str,
        write: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        let t = Instant::now();
        let cached = self.state.fresh(&self.dir, name, key);
        if !cached {
            write(&self.dir).with_context(|| format!("writing {name}"))?;
            self.state.record(&self.dir, name, key)?;
        }
        stages.reports.push(StageReport {
            name: name.to_string(),
            key: String::new(),
            cached,
            time: t.elapsed(),
        });
        Ok(())
    }

    /// Adds files to what the signed manifest lists.
    pub(super) fn list(&mut self, names: &[&'static str]) {
        self.listed.extend_from_slice(names);
    }

    pub(super) fn listed(&self) -> &[&'static str] {
        &self.listed
    }

    /// Identifies `name` as it is now (size, mtime, inode), or "" if absent.
    pub(super) fn stamp(&self, name: &str) -> String {
        self.state.stamp(&self.dir, name)
    }

    pub(super) fn fresh(&self, name: &str, key: &str) -> bool {
        self.state.fresh(&self.dir, name, key)
    }

    pub(super) fn record(&mut self, name: &str, key: &str) -> Result<()> {
        self.state.record(&self.dir, name, key)
    }

    pub(super) fn save(&self) -> Result<()> {
        self.state.save(&self.state_file)
    }
}

/// Per output file of one output directory: the key of the inputs it was
/// made from and the size, mtime and inode it had then; a file someone
/// changed or replaced is made again. Kept in the stage cache
/// (`stages/outputs/ID.json`, ID from the directory's canonical path).
#[derive(Default, Serialize, Deserialize)]
struct OutputState(BTreeMap<String, (String, String)>);

/// Where cairn kept that record before: removed from output directories.
const OLD_OUTPUT_STATE: &str = ".cairn-outputs.json";

impl OutputState {
    /// A missing or unreadable record only costs a rebuild of every output.
    fn load(file: &Path) -> Self {
        fs::read(file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn stamp(&self, out: &Path, name: &str) -> String {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(out.join(name))
            .map(|m| format!("{} {}.{} {}", m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
            .unwrap_or_default()
    }

    fn fresh(&self, out: &Path, name: &str, key: &str) -> bool {
        let stamp = self.stamp(out, name);
        !stamp.is_empty() && self.0.get(name) == Some(&(key.to_string(), stamp))
    }

    fn record(&mut self, out: &Path, name: &str, key: &str) -> Result<()> {
        let stamp = self.stamp(out, name);
        if stamp.is_empty() {
            bail!("{} was not written", out.join(name).display());
        }
        self.0.insert(name.to_string(), (key.to_string(), stamp));
        Ok(())
    }

    fn save(&self, file: &Path) -> Result<()> {
        let tmp = file.with_extension("partial");
        fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, file).with_context(|| format!("renaming into {}", file.display()))?;
        Ok(())
    }
}

/// Copies a cached artifact into the output directory, atomically (whether
/// it needs copying at all is [`OutputDir::produce`]'s decision).
pub(super) fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("partial");
    fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    fs::rename(&tmp, to)?;
    Ok(())
}

/// Writes what `r` yields to `to` through a temporary name, so an
/// interrupted build never leaves a short file under the real name.
pub(super) fn write_atomic(r: &mut impl Read, to: &Path) -> Result<()> {
    let tmp = to.with_extension("partial");
    let mut w = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    std::io::copy(r, &mut w).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, to)
        .with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(stages: &StageCache) -> Vec<(String, bool)> {
        stages
            .reports
            .iter()
            .map(|r| (r.name.clone(), r.cached))
            .collect()
    }

    #[test]
    fn output_is_written_again_when_its_key_or_the_file_changes() {
        let t = tempfile::tempdir().unwrap();
        let mut stages = StageCache::new(&t.path().join("cache")).unwrap();
        let out_path = t.path().join("out");
        let mut writes = 0;
        let mut make = |key: &str, stages: &mut StageCache| {
            let mut out = OutputDir::open(&out_path, stages).unwrap();
            out.produce(stages, "f", key, |d| {
                writes += 1;
                Ok(fs::write(d.join("f"), key)?)
            })
            .unwrap();
            out.save().unwrap();
        };
        make("k1", &mut stages);
        make("k1", &mut stages);
        make("k2", &mut stages);
        // Same bytes, another inode: replaced behind the builder's back.
        fs::write(out_path.join("f.new"), "k2").unwrap();
        fs::rename(out_path.join("f.new"), out_path.join("f")).unwrap();
        make("k2", &mut stages);
        assert_eq!(writes, 3);
        // The bookkeeping is in the cache: the directory holds the output.
        let names: Vec<_> = fs::read_dir(&out_path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f"]);
        let cached: Vec<bool> = report(&stages).into_iter().map(|r| r.1).collect();
        assert_eq!(cached, [false, true, false, false]);
    }

    #[test]
    fn an_output_that_was_not_written_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let mut stages = StageCache::new(t.path()).unwrap();
        let mut out = OutputDir::open(&t.path().join("out"), &stages).unwrap();
        let err = out
            .produce(&mut stages, "missing", "k", |_| Ok(()))
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("missing was not written"),
            "{err:#}"
        );
    }
}

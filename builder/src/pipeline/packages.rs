//! Stage 1, packages: every package the image needs, each built (or taken
//! from the package cache) under its own input hash.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;

use super::Run;
use crate::profile::Profile;
use crate::stage::StageReport;

/// Packages every image needs besides the profile's rootfs packages.
const BOOT_PACKAGES: &[&str] = &["kernel", "systemd-boot", "init"];

/// The built packages: each one's output directory and the key it was built
/// under (the keys are what later stages' keys and the manifest name).
pub(super) struct Packages {
    pub(super) dirs: BTreeMap<String, PathBuf>,
    pub(super) keys: BTreeMap<String, String>,
}

impl Packages {
    pub(super) fn kernel(&self) -> PathBuf {
        self.dirs["kernel"].join("bzImage")
    }

    pub(super) fn stub(&self) -> PathBuf {
        self.dirs["systemd-boot"].join("linuxx64.efi.stub")
    }

    pub(super) fn systemd_boot(&self) -> PathBuf {
        self.dirs["systemd-boot"].join("systemd-bootx64.efi")
    }

    /// One binary, two roles: `/init` in the initramfs, `/sbin/init` in the rootfs.
    pub(super) fn init(&self) -> PathBuf {
        self.dirs["init"].join("init")
    }

    pub(super) fn dir(&self, name: &str) -> &Path {
        &self.dirs[name]
    }

    pub(super) fn key(&self, name: &str) -> &str {
        &self.keys[name]
    }

    /// The release manifest's `inputs`: what each package was built from.
    pub(super) fn inputs(&self) -> BTreeMap<String, String> {
        self.keys
            .iter()
            .map(|(n, k)| (format!("pkg:{n}"), k.clone()))
            .collect()
    }
}

pub(super) fn build(run: &mut Run, profile: &Profile) -> Result<Packages> {
    let mut packages = Packages {
        dirs: BTreeMap::new(),
        keys: BTreeMap::new(),
    };
    for name in wanted(profile) {
        let t = Instant::now();
        let key = run.pkgs.key(&name)?;
        let cached = run.pkgs.is_cached(&name)?;
        let pkgs = &run.pkgs;
        let dir = run
            .progress
            .step(&format!("package {name}"), || Ok(pkgs.build(&name)?))?;
        // The package layer has its own cache: its row goes into the stage
        // table by hand, so one table shows everything a build did.
        run.stages.reports.push(StageReport {
            name: format!("pkg:{name}"),
            key: key.clone(),
            cached,
            time: t.elapsed(),
        });
        packages.keys.insert(name.clone(), key);
        packages.dirs.insert(name, dir);
    }
    Ok(packages)
}

/// The boot packages, then the profile's, each once, in that order (the
/// order of the stage table).
pub(super) fn wanted(profile: &Profile) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let all = BOOT_PACKAGES
        .iter()
        .map(|s| s.to_string())
        .chain(profile.packages.iter().cloned());
    for name in all {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::tests::profile;

    #[test]
    fn boot_packages_come_first_and_each_package_once() {
        let t = tempfile::tempdir().unwrap();
        let (p, _) = profile(t.path(), &["e2fsprogs", "init", "e2fsprogs"]);
        assert_eq!(
            wanted(&p),
            ["kernel", "systemd-boot", "init", "e2fsprogs"].map(String::from)
        );
    }
}

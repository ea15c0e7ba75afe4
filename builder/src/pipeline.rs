//! `cairn build`: a profile in, signed reproducible images out.
//!
//! [`build`] tells the whole story; each stage is a module below, named by
//! what it makes, and hands the next stages a named struct, not loose paths.
//! Every stage is cached by the hash of its inputs ([`crate::stage`]), and
//! every file in the output directory is written again only when the inputs
//! it was made from changed ([`outputs`]).

mod boot;
mod bundle;
mod disk;
mod initramfs;
mod installer_media;
mod keys;
mod manifest;
mod outputs;
mod packages;
mod progress;
mod rootfs_image;
mod rootfs_tree;
mod secure_boot;
mod updates;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::pkgs::{default_cache_dir, Pkgs};
use crate::profile::Profile;
use crate::stage::{StageCache, StageReport};

pub use initramfs::initramfs;
pub use keys::{signing_key, ReleaseKey};
pub use progress::Progress;

pub struct BuildOptions {
    pub profile: PathBuf,
    pub out: PathBuf,
    pub key: Option<PathBuf>,
    pub cache: Option<PathBuf>,
    /// Stage cache (default: `<cache>/`); packages always use `<cache>`.
    pub stage_cache: Option<PathBuf>,
    pub repo: PathBuf,
    /// Secure Boot key set that signs the UKI and systemd-boot, over the
    /// profile's `secure_boot` (keys kept outside the repository, as in CI).
    pub secure_boot_keys: Option<PathBuf>,
    /// `--version`, `--output`, `--kernel-arg` over the profile's.
    pub version: Option<String>,
    pub outputs: Option<Vec<crate::profile::Output>>,
    pub kernel_args: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ArtifactRow {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub profile: String,
    pub version: String,
    pub root_hash: String,
    pub dev_key: bool,
    pub binaries: Vec<String>,
    pub artifacts: Vec<ArtifactRow>,
    pub stages: Vec<StageReport>,
}

/// Builds `opts.profile` into `opts.out`, stage by stage; a stage whose
/// inputs did not change is taken from the cache.
pub fn build(opts: &BuildOptions) -> Result<Summary> {
    let profile = load_profile(opts)?;
    let mut run = Run::new(opts, &profile)?;
    known_packages(&run, &profile)?;

    // The release key first: the rootfs carries the keys this release trusts.
    let key = ReleaseKey::load(opts.key.as_deref(), profile.signing_key.as_deref())?;
    let trusted = keys::trusted_set(&profile, &key)?;

    // What boots: packages, the rootfs they make, the UKI bound to it.
    let packages = packages::build(&mut run, &profile)?;
    let tree = rootfs_tree::stage(&mut run, &profile, &packages, &trusted)?;
    let rootfs = rootfs_image::build(&mut run, &tree)?;
    let boot = boot::build(&mut run, &profile, &packages, &tree, &rootfs)?;

    // What ships: the files in `out/`; every medium is made from one signed
    // bundle, and the output manifest signs them all.
    let mut out = outputs::OutputDir::open(&opts.out, &run.stages)?;
    boot::publish(&mut run, &mut out, &boot)?;
    rootfs_image::publish(&mut run, &mut out, &rootfs)?;
    let release = bundle::build(&mut run, &profile, &packages, &rootfs, &boot, &key)?;
    disk::build(&mut run, &mut out, &profile, &release, &key)?;
    updates::build(&mut run, &mut out, &profile, &release)?;
    installer_media::build(
        &mut run, &mut out, &profile, &packages, &boot, &release, &key,
    )?;
    let signed = manifest::sign(&mut out, &release, &key)?;
    out.save()?;

    Ok(Summary {
        profile: profile.name.clone(),
        version: release.version,
        root_hash: rootfs.root_hash,
        dev_key: key.dev,
        binaries: tree.binaries,
        artifacts: manifest::rows(&signed, out.dir())?,
        stages: run.stages.reports,
    })
}

/// What `cairn build --dry-run` answers: the resolved release, what it
/// would write, and each package it needs with whether it is cached.
#[derive(Debug, Serialize)]
pub struct Plan {
    pub profile: String,
    pub version: String,
    pub outputs: Vec<String>,
    pub out: PathBuf,
    /// Dependencies before what needs them.
    pub packages: Vec<PlannedPackage>,
}

#[derive(Debug, Serialize)]
pub struct PlannedPackage {
    pub name: String,
    pub version: String,
    pub key: String,
    /// In the package cache: taken, not built.
    pub cached: bool,
}

/// Everything `build` checks before it works (the profile, the command
/// line, the machine config, every package named), and what it would do,
/// doing none of it: nothing is fetched, built or written.
pub fn plan(opts: &BuildOptions) -> Result<Plan> {
    let profile = load_profile(opts)?;
    let run = Run::new(opts, &profile)?;
    known_packages(&run, &profile)?;
    let mut order: Vec<String> = Vec::new();
    fn visit(pkgs: &Pkgs, name: &str, order: &mut Vec<String>) -> Result<()> {
        if order.iter().any(|n| n == name) {
            return Ok(());
        }
        for d in &pkgs.package(name)?.recipe.depends {
            visit(pkgs, d, order)?;
        }
        order.push(name.to_string());
        Ok(())
    }
    for name in packages::wanted(&profile) {
        visit(&run.pkgs, &name, &mut order)?;
    }
    let packages = order
        .into_iter()
        .map(|name| {
            Ok(PlannedPackage {
                version: run.pkgs.package(&name)?.recipe.version.clone(),
                key: run.pkgs.key(&name)?,
                cached: run.pkgs.is_cached(&name)?,
                name,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Plan {
        profile: profile.name.clone(),
        version: profile.version.to_string(),
        outputs: profile
            .outputs
            .iter()
            .map(|o| format!("{o:?}").to_lowercase())
            .collect(),
        out: opts.out.clone(),
        packages,
    })
}

/// Every package the profile names has a recipe, checked before anything
/// is built; the error points at the line that names it.
fn known_packages(run: &Run, profile: &Profile) -> Result<()> {
    for name in &profile.packages {
        if run.pkgs.package(name).is_err() {
            let known: Vec<&str> = run.pkgs.names().collect();
            return Err(crate::exit::Invalid(format!(
                "{}: rootfs.packages: unknown package `{name}` (pkgs/ has {})",
                profile.locate(name),
                known.join(", ")
            ))
            .into());
        }
    }
    Ok(())
}

/// What every stage works with: the package layer, the stage cache (whose
/// reports become the build's stage table) and the progress display.
struct Run {
    pkgs: Pkgs,
    stages: StageCache,
    progress: Progress,
    epoch: u64,
}

impl Run {
    fn new(opts: &BuildOptions, profile: &Profile) -> Result<Run> {
        let epoch = profile.epoch();
        let cache_root = opts.cache.clone().unwrap_or_else(default_cache_dir);
        let mut pkgs = Pkgs::load(&opts.repo)?;
        // Recipes of the user's own beside any profile of the chain
        // (`DIR/pkgs/NAME/recipe.toml` next to `DIR/my.toml`).
        let mut sites: Vec<&Path> = profile.chain.iter().filter_map(|f| f.parent()).collect();
        sites.push(profile.path.parent().unwrap_or(Path::new(".")));
        sites.dedup();
        for site in sites {
            let site = if site.as_os_str().is_empty() {
                Path::new(".")
            } else {
                site
            };
            pkgs = pkgs.with_local(site)?;
        }
        let pkgs = pkgs.with_cache(cache_root.clone()).with_epoch(epoch);
        let stages = StageCache::new(opts.stage_cache.as_deref().unwrap_or(&cache_root))?;
        Ok(Run {
            pkgs,
            stages,
            progress: Progress::new(),
            epoch,
        })
    }
}

/// The profile, with the machine config init will parse at first boot
/// checked now, with init's own parser, before any package is built: a typo
/// is a build error, not a node that reboot-loops.
fn load_profile(opts: &BuildOptions) -> Result<Profile> {
    let profile = Profile::load_overridden(
        &opts.profile,
        &crate::profile::Overrides {
            secure_boot_keys: opts.secure_boot_keys.clone(),
            version: opts.version.clone(),
            outputs: opts.outputs.clone(),
            kernel_args: opts.kernel_args.clone(),
        },
    )?;
    if let Some(cfg) = machine_config(&profile) {
        contract::machine::MachineConfig::load(cfg).with_context(|| {
            format!(
                "profile {}: machine config (files entry for {MACHINE_CONFIG_DST})",
                opts.profile.display()
            )
        })?;
    }
    Ok(profile)
}

/// Where a profile ships its default machine config in the rootfs.
const MACHINE_CONFIG_DST: &str = "/usr/share/cairn/machine.toml";

/// The profile's default machine config, if it ships one at the conventional
/// place, goes onto the ESP for init to import on first boot.
fn machine_config(profile: &Profile) -> Option<&Path> {
    profile
        .files
        .iter()
        .find(|f| f.dst == Path::new(MACHINE_CONFIG_DST))
        .map(|f| f.src.as_path())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};

    use crate::profile::Profile;

    /// The shipped default profile with exactly rootfs `packages` and one
    /// file of its own (both replacing the inherited lists), `dir/files/motd` (returned), for the stages' unit tests.
    pub(crate) fn profile(dir: &Path, packages: &[&str]) -> (Profile, PathBuf) {
        let motd = dir.join("files/motd");
        fs::create_dir_all(dir.join("files")).unwrap();
        fs::write(&motd, "hello\n").unwrap();
        let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/default.toml");
        let packages: Vec<String> = packages.iter().map(|p| format!("{p:?}")).collect();
        let text = format!(
            "extends = {default:?}\n[rootfs]\npackages = {{ replace = [{}] }}\n\
             files = {{ replace = [{{ src = \"files/motd\", dst = \"/etc/motd\", mode = \"0644\" }}] }}\n",
            packages.join(", ")
        );
        fs::write(dir.join("p.toml"), text).unwrap();
        let p = Profile::load(&dir.join("p.toml")).unwrap();
        assert_eq!(p.files.len(), 1, "{:?}", p.files);
        (p, motd)
    }
}

//! Assembly: from a kernel, an initramfs and a rootfs tree to a verity-bound
//! rootfs image, a UKI and an installed disk. `cairn build` runs these after
//! building the inputs from pkgs; `cairn assemble` ([`assemble`]) runs them
//! on inputs the user brings.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use artifacts::squashfs::{write_squashfs_file, DirCache, SquashfsOptions};
use artifacts::tree::{Kind, Normalize, Tree};
use artifacts::uki::{Uki, UkiInputs};
use artifacts::verity::{self, VerityInfo};
use serde::{Deserialize, Serialize};

use crate::pipeline::ReleaseKey;
use crate::release::{self, BundleInputs};
use crate::stage::{KeyBuilder, StageCache, StageReport};

/// What `cairn assemble` takes: the boot inputs and a rootfs tree the user
/// brings, instead of the packages `cairn build` makes.
pub struct AssembleOptions {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Root filesystem tree.
    pub rootfs: PathBuf,
    /// Kernel command line; the rootfs's `cairn.rootfs=`/`cairn.verity=` are appended.
    pub cmdline: String,
    /// os-release for the UKI's `.osrel` (default: the rootfs's usr/lib/os-release).
    pub osrel: Option<PathBuf>,
    pub stub: PathBuf,
    pub systemd_boot: PathBuf,
    /// Size of `disk.raw` in bytes.
    pub disk_size: u64,
    pub source_date_epoch: u64,
    /// Stage cache root (default: the user's cache directory).
    pub cache: Option<PathBuf>,
    /// Release key for the bundle manifest (default: the development key).
    pub key: Option<PathBuf>,
    /// Receives `uki.efi`, `rootfs.img` and `disk.raw`.
    pub out: PathBuf,
}

pub struct Assembled {
    pub root_hash: String,
    pub stages: Vec<StageReport>,
}

/// The ESP and STATE sizes of an assembled disk (a profile sets them for
/// `cairn build`); BOOT-A/B get the rootfs image plus this much room.
const ESP_SIZE: u64 = 128 << 20;
const STATE_SIZE: u64 = 64 << 20;
const BOOT_HEADROOM: u64 = 64 << 20;

/// `cairn assemble`: the rootfs image, the UKI bound to it, and `disk.raw`,
/// an install of a signed bundle exactly as `cairn build` makes it.
pub fn assemble(opts: &AssembleOptions) -> Result<Assembled> {
    let cache = opts
        .cache
        .clone()
        .unwrap_or_else(crate::pkgs::default_cache_dir);
    let mut stages = StageCache::new(&cache)?;
    fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating output directory {}", opts.out.display()))?;
    let osrel_path = opts
        .osrel
        .clone()
        .unwrap_or_else(|| opts.rootfs.join("usr/lib/os-release"));
    let osrel = fs::read_to_string(&osrel_path)
        .with_context(|| format!("reading os-release {}", osrel_path.display()))?;
    // The rootfs is the user's: key it by its content (the squashfs block
    // cache makes an unchanged tree cheap to re-key and re-pack).
    let epoch = opts.source_date_epoch;
    let key = tree_key(&opts.rootfs, epoch)?;
    let rootfs = rootfs_image(&mut stages, &key, &opts.rootfs, epoch)?;
    let uki = uki(
        &mut stages,
        "uki",
        &UkiSpec {
            stub: &opts.stub,
            kernel: &opts.kernel,
            initrd: &opts.initrd,
            cmdline: contract::cmdline::installed(&opts.cmdline, &rootfs.cmdline),
            osrel,
        },
    )?;
    fs::copy(&uki, opts.out.join("uki.efi"))?;
    fs::copy(&rootfs.image, opts.out.join("rootfs.img"))?;
    // The version comes from the UKI's own .osrel, read the way the
    // installer reads it.
    let facts = installer::verify::uki_facts(&uki)?;
    let key = ReleaseKey::load(opts.key.as_deref(), None)?;
    let boot = (rootfs.image_size + BOOT_HEADROOM).next_multiple_of(1 << 20);
    let bundle = release::bundle_dir(
        &mut stages,
        &BundleInputs {
            uki: &uki,
            rootfs_img: &rootfs.image,
            systemd_boot: &opts.systemd_boot,
            layout: (ESP_SIZE, boot, STATE_SIZE),
            meta: signing::ReleaseMeta {
                os_name: "cairn".into(),
                os_version: semver::Version::parse(&facts.version)
                    .with_context(|| format!("UKI version {:?} is not semver", facts.version))?,
                profile: "assemble".into(),
                source_date_epoch: epoch,
                arch: "x86_64".into(),
                inputs: Default::default(),
                verity_root_hash: Some(rootfs.root_hash.clone()),
            },
            key: &key.key,
        },
    )?;
    release::installed_disk(
        &bundle,
        &key.public,
        None,
        opts.disk_size,
        &opts.out.join("disk.raw"),
    )?;
    Ok(Assembled {
        root_hash: rootfs.root_hash,
        stages: stages.reports,
    })
}

/// A content key for a tree: paths, modes, link targets and file hashes.
fn tree_key(dir: &Path, epoch: u64) -> Result<String> {
    let tree = Tree::read(dir, Normalize::root_owned(epoch))
        .with_context(|| format!("reading the rootfs tree {}", dir.display()))?;
    let mut k = KeyBuilder::new("byo-rootfs");
    k.str("epoch", &epoch.to_string());
    for e in &tree.entries {
        k.str("path", &e.path.to_string_lossy())
            .str("mode", &format!("{:o}", e.st_mode()));
        match &e.kind {
            Kind::File { .. } => {
                let (_, d) = signing::hash_file(&e.source)?;
                k.str("sha256", &d.to_hex());
            }
            Kind::Symlink { target } => {
                k.str("target", &target.to_string_lossy());
            }
            other => {
                k.str("kind", &format!("{other:?}"));
            }
        }
        if let Some(g) = e.link_group {
            k.str("link", &g.to_string());
        }
    }
    Ok(k.finish())
}

/// The slot content and what binds a UKI to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootfsImage {
    /// squashfs + verity superblock + hash tree (docs/design.md "Slot content").
    pub image: PathBuf,
    pub root_hash: String,
    pub salt: String,
    pub data_blocks: u64,
    pub hash_offset: u64,
    pub image_size: u64,
    /// `cairn.rootfs=… cairn.verity=…`
    pub cmdline: String,
}

impl RootfsImage {
    fn from_info(image: PathBuf, info: &VerityInfo) -> Result<RootfsImage> {
        Ok(RootfsImage {
            image_size: fs::metadata(&image)?.len(),
            image,
            root_hash: info.root_hash_hex(),
            salt: info.salt_hex(),
            data_blocks: info.data_blocks,
            hash_offset: info.hash_offset,
            cmdline: contract::slot::boot_params(info),
        })
    }
}

const ROOTFS_META: &str = "rootfs.json";

/// Squashfs + dm-verity of `tree_dir`, cached under `key`.
pub fn rootfs_image(
    stages: &mut StageCache,
    key: &str,
    tree_dir: &Path,
    epoch: u64,
) -> Result<RootfsImage> {
    // Compressed blocks are content-addressed across builds: after one file
    // changes, only its blocks are compressed again.
    let blocks = DirCache::new(stages.dir().join("squashfs-blocks"));
    let dir = stages.run("rootfs-image", key, |out| {
        let tree = Tree::read(tree_dir, Normalize::root_owned(epoch))
            .with_context(|| format!("reading the staged rootfs {}", tree_dir.display()))?;
        let img = out.join("rootfs.img");
        let opts = SquashfsOptions {
            cache: Some(&blocks),
            ..SquashfsOptions::new(epoch)
        };
        write_squashfs_file(&tree, &img, &opts).context("writing the squashfs")?;
        // The salt is a function of the inputs (the stage key), never random.
        let info = verity::append(&img, format!("cairn-verity:{key}").as_bytes())
            .context("building the dm-verity hash tree")?;
        let meta = RootfsImage::from_info(img, &info)?;
        fs::write(out.join(ROOTFS_META), serde_json::to_vec_pretty(&meta)?)?;
        Ok(())
    })?;
    let mut meta: RootfsImage = serde_json::from_slice(&fs::read(dir.join(ROOTFS_META))?)?;
    meta.image = dir.join("rootfs.img");
    Ok(meta)
}

pub struct UkiSpec<'a> {
    pub stub: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: String,
    pub osrel: String,
}

/// Builds (or reuses) a UKI; returns its path in the stage cache.
pub fn uki(stages: &mut StageCache, name: &str, spec: &UkiSpec) -> Result<PathBuf> {
    let mut k = KeyBuilder::new(name);
    k.file("stub", spec.stub)?
        .file("kernel", spec.kernel)?
        .file("initrd", spec.initrd)?
        .str("cmdline", &spec.cmdline)
        .str("osrel", &spec.osrel);
    let dir = stages.run(name, &k.finish(), |out| {
        Uki::build(
            &UkiInputs {
                stub: spec.stub,
                linux: spec.kernel,
                initrd: spec.initrd,
                cmdline: &spec.cmdline,
                osrel: &spec.osrel,
                uname: None,
                sbat: None,
            },
            &out.join("uki.efi"),
        )
        .context("assembling the UKI")?;
        Ok(())
    })?;
    Ok(dir.join("uki.efi"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn tree(dir: &Path) {
        fs::create_dir_all(dir.join("etc")).unwrap();
        fs::write(dir.join("etc/motd"), "hello\n").unwrap();
        symlink("motd", dir.join("etc/issue")).unwrap();
    }

    #[test]
    fn tree_key_is_the_content_not_the_place() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        tree(&a);
        tree(&b);
        let base = tree_key(&a, 1).unwrap();
        assert_eq!(base, tree_key(&b, 1).unwrap());
        assert_ne!(base, tree_key(&a, 2).unwrap(), "epoch");

        fs::write(b.join("etc/motd"), "hellO\n").unwrap();
        assert_ne!(base, tree_key(&b, 1).unwrap(), "content");
        fs::write(b.join("etc/motd"), "hello\n").unwrap();
        assert_eq!(base, tree_key(&b, 1).unwrap());

        fs::set_permissions(b.join("etc/motd"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(base, tree_key(&b, 1).unwrap(), "mode");
        fs::set_permissions(b.join("etc/motd"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(a.join("etc/motd"), fs::Permissions::from_mode(0o644)).unwrap();
        let base = tree_key(&a, 1).unwrap();
        assert_eq!(base, tree_key(&b, 1).unwrap());

        fs::remove_file(b.join("etc/issue")).unwrap();
        symlink("hostname", b.join("etc/issue")).unwrap();
        assert_ne!(base, tree_key(&b, 1).unwrap(), "link target");
    }
}

//! Assembly: from a kernel, an initramfs and a rootfs tree to a verity-bound
//! rootfs image, a UKI and an installed disk. `cairn build` runs these after
//! building the inputs from pkgs; `cairn assemble` runs them on inputs the
//! user brings.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use artifacts::squashfs::{write_squashfs_file, DirCache, SquashfsOptions};
use artifacts::tree::{Normalize, Tree};
use artifacts::uki::{Uki, UkiInputs};
use artifacts::verity::{self, VerityInfo};
use serde::{Deserialize, Serialize};

use crate::stage::{KeyBuilder, StageCache};

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

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
            cmdline: info.cmdline(),
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

/// Kernel parameters every installed UKI carries, whatever the profile says.
///
/// `gpt`: an upgrade rewrites the backup GPT, then the primary's entries,
/// then its header; a power cut between the last two leaves a primary whose
/// entry CRC fails beside a valid backup. Linux (block/partitions/efi.c)
/// reads the backup at the last LBA after an invalid primary only with
/// `gpt`; without it the disk shows no partitions and the boot fails, although
/// init would read the backup. (`gpt` also skips the kernel's protective-MBR
/// check; every GPT disk cairn writes has one.)
pub const INSTALLED_PARAMS: [&str; 1] = ["gpt"];

/// The command line of a UKI that boots an installed disk: `user`'s
/// parameters (the profile's), `INSTALLED_PARAMS` unless given, then the
/// rootfs binding. The installer UKI boots no installed disk: it does not
/// use this.
pub fn installed_cmdline(user: &str, rootfs: &RootfsImage) -> String {
    let mut words: Vec<&str> = user.split_whitespace().collect();
    for p in INSTALLED_PARAMS {
        if !words.contains(&p) {
            words.push(p);
        }
    }
    words.push(&rootfs.cmdline);
    words.join(" ")
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

    #[test]
    fn installed_cmdline_carries_gpt_once() {
        let r = RootfsImage {
            image: PathBuf::new(),
            root_hash: String::new(),
            salt: String::new(),
            data_blocks: 0,
            hash_offset: 0,
            image_size: 0,
            cmdline: "cairn.rootfs=ab cairn.verity=1,cd".into(),
        };
        assert_eq!(
            installed_cmdline("console=ttyS0  panic=5", &r),
            "console=ttyS0 panic=5 gpt cairn.rootfs=ab cairn.verity=1,cd"
        );
        assert_eq!(
            installed_cmdline("gpt console=ttyS0", &r),
            "gpt console=ttyS0 cairn.rootfs=ab cairn.verity=1,cd"
        );
        assert_eq!(
            installed_cmdline("", &r),
            "gpt cairn.rootfs=ab cairn.verity=1,cd"
        );
    }
}

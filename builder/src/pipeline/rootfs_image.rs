//! Stage 3, the rootfs image: the tree as squashfs with its dm-verity hash
//! tree appended, the slot content whose root hash the UKI carries.

use std::fs;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};

use super::outputs::{write_atomic, OutputDir};
use super::rootfs_tree::RootfsTree;
use super::Run;
use crate::assemble::{self, RootfsImage};
use crate::stage::KeyBuilder;

pub(super) fn build(run: &mut Run, tree: &RootfsTree) -> Result<RootfsImage> {
    // Keyed by the tree's key, not its content: an unchanged tree is not
    // read again to find that out.
    let key = KeyBuilder::new("rootfs-image")
        .str("tree", &tree.key)
        .str("epoch", &run.epoch.to_string())
        .finish();
    let (stages, epoch) = (&mut run.stages, run.epoch);
    run.progress.step("squashfs + verity", || {
        assemble::rootfs_image(stages, &key, &tree.dir, epoch)
    })
}

/// `rootfs.squashfs` and `rootfs.verity` in the output directory.
pub(super) fn publish(run: &mut Run, out: &mut OutputDir, rootfs: &RootfsImage) -> Result<()> {
    // Stage outputs live in content-keyed directories: their path is their key.
    let key = rootfs.image.display().to_string();
    out.produce(&mut run.stages, "rootfs.squashfs", &key, |dir| {
        split(rootfs, dir)
    })?;
    out.list(&["rootfs.squashfs", "rootfs.verity"]);
    Ok(())
}

/// `rootfs.squashfs` (the padded data area) and `rootfs.verity` (superblock
/// and hash tree) as separate files, for users who place them themselves.
/// Streamed: the image is as large as the rootfs.
fn split(rootfs: &RootfsImage, out: &Path) -> Result<()> {
    let mut f = fs::File::open(&rootfs.image)
        .with_context(|| format!("opening {}", rootfs.image.display()))?;
    write_atomic(
        &mut (&mut f).take(rootfs.hash_offset),
        &out.join("rootfs.squashfs"),
    )?;
    write_atomic(&mut f, &out.join("rootfs.verity"))?;
    Ok(())
}

//! Stage 5, the signed bundle: UKI, rootfs image, systemd-boot and the
//! disk layout under a signed manifest. It is what the installer takes, and
//! every medium below is made from it, so none can drift from another.

use std::path::PathBuf;

use anyhow::Result;
use sha2::{Digest, Sha256};

use super::boot::BootImages;
use super::packages::Packages;
use super::{ReleaseKey, Run};
use crate::assemble::RootfsImage;
use crate::profile::Profile;
use crate::release::{self, BundleInputs};

/// The bundle and the release facts signed into it.
pub(super) struct Release {
    /// The bundle directory in the stage cache (its path is its key).
    pub(super) bundle: PathBuf,
    pub(super) meta: signing::ReleaseMeta,
    pub(super) version: String,
    pub(super) root_hash: String,
    /// Seeds the GUIDs, serials and volume ids of every medium.
    pub(super) seed: Vec<u8>,
}

pub(super) fn build(
    run: &mut Run,
    profile: &Profile,
    packages: &Packages,
    rootfs: &RootfsImage,
    boot: &BootImages,
    key: &ReleaseKey,
) -> Result<Release> {
    let version = profile.version.to_string();
    let meta = signing::ReleaseMeta {
        os_name: profile.os_name.clone(),
        os_version: semver::Version::parse(&version)?,
        profile: profile.name.clone(),
        source_date_epoch: run.epoch,
        arch: "x86_64".into(),
        inputs: packages.inputs(),
        verity_root_hash: Some(rootfs.root_hash.clone()),
    };
    let stages = &mut run.stages;
    let bundle = run.progress.step("bundle", || {
        release::bundle_dir(
            stages,
            &BundleInputs {
                uki: &boot.uki,
                rootfs_img: &rootfs.image,
                systemd_boot: &boot.systemd_boot,
                layout: (
                    profile.disk.esp.0,
                    profile.disk.boot.0,
                    profile.disk.state.0,
                ),
                meta: meta.clone(),
                key: &key.key,
            },
        )
    })?;
    Ok(Release {
        bundle,
        meta,
        seed: media_seed(&profile.name, &version, &rootfs.root_hash),
        version,
        root_hash: rootfs.root_hash.clone(),
    })
}

/// A function of what the release holds, never random: two builds of the
/// same inputs make media with the same identifiers, byte for byte.
fn media_seed(profile: &str, version: &str, root_hash: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"cairn-disk-seed\0");
    h.update(profile.as_bytes());
    h.update(version.as_bytes());
    h.update(root_hash.as_bytes());
    h.finalize().to_vec()
}

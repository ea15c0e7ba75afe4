//! Stage 8, installer media: `installer.iso`, whose installer UKI carries
//! the bundle, the release public key and the machine config in its
//! initramfs, and boots into install mode.

use anyhow::Result;

use super::boot::{self, BootImages, Role};
use super::bundle::Release;
use super::outputs::OutputDir;
use super::packages::Packages;
use super::{machine_config, secure_boot, ReleaseKey, Run};
use crate::profile::{Output, Profile};
use crate::release;
use crate::rootfs;
use contract::cmdline::INSTALL_MODE;

pub(super) fn build(
    run: &mut Run,
    out: &mut OutputDir,
    profile: &Profile,
    packages: &Packages,
    boot: &BootImages,
    release: &Release,
    key: &ReleaseKey,
) -> Result<()> {
    if !profile.outputs.contains(&Output::Iso) {
        return Ok(());
    }
    let payload = release::payload(&release.bundle, &key.public_path, machine_config(profile));
    // No root hash: install mode runs from the initramfs alone.
    let osrel = rootfs::os_release(profile);
    let uki = boot::uki(
        run,
        Role::Installer,
        profile,
        packages,
        &payload,
        INSTALL_MODE,
        &osrel,
    )?;
    let (stages, epoch) = (&mut run.stages, run.epoch);
    let uki = match &profile.secure_boot {
        Some(keys) => secure_boot::sign(stages, keys, &uki, &boot.unsigned_systemd_boot)?.0,
        None => uki,
    };
    let key = format!("{} {}", uki.display(), boot.systemd_boot.display());
    out.produce(stages, "installer.iso", &key, |dir| {
        release::installer_iso(
            &boot.systemd_boot,
            &uki,
            &release.version,
            epoch,
            &release.seed,
            &dir.join("installer.iso"),
        )
    })?;
    out.list(&["installer.iso"]);
    Ok(())
}

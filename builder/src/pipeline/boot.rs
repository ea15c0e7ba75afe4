//! Stage 4, what the firmware runs: an initramfs holding init, the UKI that
//! binds kernel, initramfs and command line to this rootfs by its root
//! hash, and systemd-boot; both signed when the profile asks for Secure Boot.

use std::path::PathBuf;

use anyhow::Result;
use artifacts::cpio::Extra;

use super::outputs::{copy_atomic, OutputDir};
use super::packages::Packages;
use super::rootfs_tree::RootfsTree;
use super::{initramfs, secure_boot, Run};
use crate::assemble::{self, RootfsImage, UkiSpec};
use crate::profile::Profile;

pub(super) struct BootImages {
    /// Signed when the profile has Secure Boot keys.
    pub(super) uki: PathBuf,
    /// Signed when the profile has Secure Boot keys.
    pub(super) systemd_boot: PathBuf,
    /// The installer UKI is signed later from the unsigned pair: a signed
    /// image cannot be signed again.
    pub(super) unsigned_systemd_boot: PathBuf,
}

pub(super) fn build(
    run: &mut Run,
    profile: &Profile,
    packages: &Packages,
    tree: &RootfsTree,
    rootfs: &RootfsImage,
) -> Result<BootImages> {
    // init alone, as /init: the rootfs brings everything else.
    let uki = uki(
        run,
        Role::System,
        profile,
        packages,
        &[],
        &rootfs.cmdline,
        &tree.osrel,
    )?;
    let unsigned_systemd_boot = packages.systemd_boot();
    let (uki, systemd_boot) = match &profile.secure_boot {
        Some(keys) => run.progress.step("Secure Boot signatures", || {
            secure_boot::sign(&mut run.stages, keys, &uki, &unsigned_systemd_boot)
        })?,
        None => (uki, unsigned_systemd_boot.clone()),
    };
    Ok(BootImages {
        uki,
        systemd_boot,
        unsigned_systemd_boot,
    })
}

/// Whose UKI: the installed system's, or the installer's (other stage
/// names, so both are cached side by side).
#[derive(Clone, Copy)]
pub(super) enum Role {
    System,
    Installer,
}

/// An initramfs of init plus `payload`, and the UKI of the packages' kernel
/// and stub around it, booting with the profile's command line and then
/// `cmdline`.
pub(super) fn uki(
    run: &mut Run,
    role: Role,
    profile: &Profile,
    packages: &Packages,
    payload: &[Extra],
    cmdline: &str,
    osrel: &str,
) -> Result<PathBuf> {
    let (stage, label) = match role {
        Role::System => ("", ""),
        Role::Installer => ("installer-", "installer "),
    };
    let (stages, epoch) = (&mut run.stages, run.epoch);
    let init = packages.init();
    let initrd = run.progress.step(&format!("{label}initramfs"), || {
        initramfs(stages, &format!("{stage}initramfs"), &init, payload, epoch)
    })?;
    let (stub, kernel) = (packages.stub(), packages.kernel());
    run.progress.step(&format!("{label}UKI"), || {
        assemble::uki(
            stages,
            &format!("{stage}uki"),
            &UkiSpec {
                stub: &stub,
                kernel: &kernel,
                initrd: &initrd,
                cmdline: match role {
                    Role::System => {
                        contract::cmdline::installed(&profile.cmdline.join(" "), cmdline)
                    }
                    Role::Installer => format!("{} {cmdline}", profile.cmdline.join(" ")),
                },
                osrel: osrel.to_string(),
            },
        )
    })
}

/// `uki.efi` in the output directory.
pub(super) fn publish(run: &mut Run, out: &mut OutputDir, boot: &BootImages) -> Result<()> {
    // Stage outputs live in content-keyed directories: their path is their key.
    let key = boot.uki.display().to_string();
    out.produce(&mut run.stages, "uki.efi", &key, |dir| {
        copy_atomic(&boot.uki, &dir.join("uki.efi"))
    })?;
    out.list(&["uki.efi"]);
    Ok(())
}

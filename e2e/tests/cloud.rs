//! Scenario 10: the cloud images boot as the raw disk does. `disk.qcow2`
//! boots from a copy of itself; the Azure VHD and the VMware VMDK boot
//! through a qcow2 overlay (QEMU writes a streamOptimized VMDK only by
//! appending), so each is read by QEMU's own driver for its format.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use e2e::*;

fn boots(name: &str, disk: &Path, format: &'static str, work: &Path) -> Result<()> {
    let mut m = Machine::new(name, work, None)?;
    m.disks.push(Disk::virtio(disk).format(format));
    boot_ok(
        &mut m,
        &format!("{name}: first boot"),
        "slot=A version=1.0.0",
    )
    .with_context(|| format!("booting {} as {format}", disk.display()))?;
    Ok(())
}

/// A qcow2 overlay over `base` (read as `format`), so the boot's writes
/// (STATE and EPHEMERAL formatted) leave the output untouched.
fn overlay(base: &Path, format: &str, work: &Path) -> Result<std::path::PathBuf> {
    let top = work.join(format!("overlay-{format}.qcow2"));
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(base)
        .arg(&top))?;
    Ok(top)
}

#[test]
fn disk_qcow2_boots() -> Result<()> {
    require_tools(&["qemu-system-x86_64", "qemu-img"])?;
    let images = images_dir()?;
    let work = tempfile::tempdir()?;
    let disk = work.path().join("disk.qcow2");
    std::fs::copy(images.join("disk.qcow2"), &disk)?;
    run(Command::new("qemu-img").arg("check").arg(&disk))?;
    boots("cloud-qcow2", &disk, "qcow2", work.path())?;
    // The guest's writes went through QEMU's qcow2 driver: still consistent.
    run(Command::new("qemu-img").arg("check").arg(&disk)).context("disk.qcow2 after a boot")?;
    Ok(())
}

#[test]
fn disk_vhd_and_vmdk_boot() -> Result<()> {
    require_tools(&["qemu-system-x86_64", "qemu-img"])?;
    let images = images_dir()?;
    let work = tempfile::tempdir()?;
    for (file, format) in [("disk.vhd", "vpc"), ("disk.vmdk", "vmdk")] {
        let base = images.join(file);
        if !base.exists() {
            anyhow::bail!(
                "{} is missing: the default profile lists it",
                base.display()
            );
        }
        let top = overlay(&base, format, work.path())?;
        boots(&format!("cloud-{format}"), &top, "qcow2", work.path())?;
    }
    Ok(())
}

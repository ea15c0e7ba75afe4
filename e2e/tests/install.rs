//! Scenarios 2-4: installing from `installer.iso` booted as a CD-ROM and as
//! a USB stick (hybrid image) onto a blank virtio disk, then booting that
//! disk alone; and the installer leaving a disk that already holds a
//! partition table untouched.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use e2e::*;

const DISK_SIZE: u64 = 2 << 30;
const INSTALL: Duration = Duration::from_secs(600);

/// Boots the installer from `media` with `target` as the only fixed disk;
/// returns the console once QEMU has powered off.
fn run_installer(m: &mut Machine, label: &str) -> Result<Vec<String>> {
    let mut b = m.boot()?;
    let (i, line) = b.expect_any(&["install: installed", "install failed"], INSTALL)?;
    ensure!(
        i == 0,
        "{label}: expected `install: installed`, got {line:?}\n--- console tail ({}) ---\n{}",
        b.log.display(),
        b.tail()
    );
    print_timings(label, &b, "install: installed");
    // Install mode powers off by itself: QEMU must exit, by a guest power-off.
    let end = b.wait_exit(Duration::from_secs(120))?;
    ensure!(
        end == End::PowerOff,
        "{label}: after installing, the machine should power off; it ended: {end:?}"
    );
    Ok(b.all.iter().map(|(_, l)| l.clone()).collect())
}

fn install_then_boot(name: &str, media: Disk) -> Result<()> {
    require_tools(&["qemu-system-x86_64", "sfdisk", "mdir"])?;
    let work = tempfile::tempdir()?;
    let disk = work.path().join("target.raw");
    blank_disk(&disk, DISK_SIZE)?;

    let mut m = Machine::new(name, work.path(), None)?;
    // The media first so the firmware boots it; the blank disk has nothing to boot.
    m.disks.push(media);
    m.disks.push(Disk::virtio(&disk));
    let console = run_installer(&mut m, &format!("{name}: install"))?;
    ensure!(
        console.iter().any(|l| l.contains("target /dev/vda")),
        "{name}: the installer should have chosen /dev/vda (the only fixed disk); console:\n{}",
        console.join("\n")
    );

    // The installed disk has the cairn layout, read by sfdisk.
    let names: Vec<String> = partitions(&disk)?.into_iter().map(|p| p.name).collect();
    ensure!(
        names == ["EFI", "BOOT-A", "BOOT-B", "STATE", "EPHEMERAL"],
        "{name}: installed disk partitions {names:?}"
    );
    let linux = esp_dir(&disk, "/EFI/Linux")?;
    ensure!(
        linux.contains("cairn-1.0.0+3.efi"),
        "{name}: a fresh install should carry an unblessed entry with 3 tries; ESP has:\n{linux}"
    );

    // Then the disk alone.
    let mut m = Machine::new(&format!("{name}-disk"), work.path(), None)?;
    m.disks.push(Disk::virtio(&disk));
    boot_ok(
        &mut m,
        &format!("{name}: first boot of the installed disk"),
        "slot=A version=1.0.0",
    )?;
    let linux = esp_dir(&disk, "/EFI/Linux")?;
    ensure!(
        linux.contains("cairn-1.0.0.efi") && !linux.contains('+'),
        "{name}: the installed release should be blessed after its first boot; ESP has:\n{linux}"
    );
    Ok(())
}

#[test]
fn install_from_iso_as_cdrom() -> Result<()> {
    let iso = images_dir()?.join("installer.iso");
    install_then_boot("iso-cdrom", Disk::cdrom(iso))
}

#[test]
fn install_from_iso_as_usb_stick() -> Result<()> {
    let images = images_dir()?;
    let work = tempfile::tempdir()?;
    // A stick is writable; give QEMU its own copy so the build output stays pristine.
    let stick = work.path().join("stick.img");
    sparse_copy(&images.join("installer.iso"), &stick)?;
    install_then_boot("iso-usb", Disk::usb(&stick))
}

#[test]
fn installer_refuses_a_disk_with_a_partition_table() -> Result<()> {
    require_tools(&["qemu-system-x86_64", "sgdisk", "sha256sum"])?;
    let images = images_dir()?;
    let work = tempfile::tempdir()?;
    let disk = work.path().join("used.raw");
    blank_disk(&disk, DISK_SIZE)?;
    run(Command::new("sgdisk")
        .args(["-n", "1:2048:+64M", "-c", "1:somebody-data"])
        .arg(&disk))?;
    let before = sha256_file(&disk)?;

    let mut m = Machine::new("refuse", work.path(), None)?;
    m.disks.push(Disk::cdrom(images.join("installer.iso")));
    m.disks.push(Disk::virtio(&disk));
    let mut b = m.boot()?;
    let (i, line) = b.expect_any(&["install failed", "install: installed"], INSTALL)?;
    ensure!(
        i == 0,
        "the installer wrote over a disk holding a partition table: {line}\n{}",
        b.tail()
    );
    ensure!(
        line.contains("GPT") || line.contains("partition") || line.contains("wipe"),
        "the refusal should say why (a partition table was found): {line}"
    );
    println!("refusal: {line}");
    let end = b.wait_exit(Duration::from_secs(120))?;
    ensure!(
        end == End::PowerOff,
        "after refusing, the installer should power off; it ended: {end:?}"
    );
    let after = sha256_file(&disk)?;
    ensure!(
        before == after,
        "the refused disk changed: sha256 {before} -> {after}"
    );
    ensure!(
        partitions(Path::new(&disk))?
            .iter()
            .any(|p| p.name == "somebody-data"),
        "the existing partition must still be there"
    );
    Ok(())
}

//! Scenario: installer media customised after the build (`cairn iso
//! customize`, docs/operator-guide.md): with two disks attached and the
//! second holding junk, the ISO's install settings (`--dest-device
//! /dev/vdb --wipe --machine-config`) send the install to vdb, wiping it,
//! with the given machine config, and leave vda alone; the installed disk
//! then boots by itself.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use e2e::*;

const INSTALL: Duration = Duration::from_secs(600);

#[test]
fn customized_iso_installs_on_the_named_disk_and_wipes_it() -> Result<()> {
    require_tools(&["qemu-system-x86_64", "sfdisk", "sha256sum"])?;
    let images = images_dir()?;
    let work = tempfile::tempdir()?;
    let iso = work.path().join("custom.iso");
    let config = work.path().join("machine.toml");
    std::fs::write(&config, "hostname = \"custom-node\"\n")?;
    let out = Command::new(cairn_bin()?)
        .args(["iso", "customize"])
        .arg(images.join("installer.iso"))
        .arg("-o")
        .arg(&iso)
        .args(["--dest-device", "/dev/vdb", "--wipe", "--machine-config"])
        .arg(&config)
        .output()?;
    ensure!(
        out.status.success(),
        "cairn iso customize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // vda: blank, so the installer could take it; vdb: junk at the start.
    let vda = work.path().join("vda.raw");
    blank_disk(&vda, 256 << 20)?;
    let vdb = work.path().join("vdb.raw");
    blank_disk(&vdb, 2 << 30)?;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&vdb)?;
        f.write_all_at(&vec![0xa5u8; 1 << 20], 0)?;
    }
    let vda_before = sha256_file(&vda)?;

    let mut m = Machine::new("iso-settings", work.path(), None)?;
    m.disks.push(Disk::cdrom(&iso));
    m.disks.push(Disk::virtio(&vda));
    m.disks.push(Disk::virtio(&vdb));
    let mut b = m.boot()?;
    let (i, line) = b.expect_any(&["install: installed", "install failed"], INSTALL)?;
    ensure!(
        i == 0,
        "expected `install: installed`, got {line:?}\n--- console tail ({}) ---\n{}",
        b.log.display(),
        b.tail()
    );
    print_timings("iso-settings: install", &b, "install: installed");
    ensure!(
        line.contains("on /dev/vdb"),
        "the install should have gone to /dev/vdb: {line}"
    );
    let console = b.console();
    ensure!(
        console.contains("install settings from the media: dest_device=/dev/vdb wipe=true machine_config=given"),
        "install mode should report the media's settings (systemd-stub's global credential); console:\n{console}"
    );
    // Every console gets each line once: no double print on the serial line.
    let targets = console.matches("install: target /dev/vdb").count();
    ensure!(
        targets == 1,
        "`install: target /dev/vdb` printed {targets} times"
    );
    let end = b.wait_exit(Duration::from_secs(120))?;
    ensure!(
        end == End::PowerOff,
        "after installing, the machine should power off; it ended: {end:?}"
    );
    ensure!(
        sha256_file(&vda)? == vda_before,
        "vda was not named by the settings and must be untouched"
    );
    let names: Vec<String> = partitions(&vdb)?.into_iter().map(|p| p.name).collect();
    ensure!(
        names == ["EFI", "BOOT-A", "BOOT-B", "STATE", "EPHEMERAL"],
        "vdb partitions {names:?}"
    );
    let installed = esp_cat(&vdb, &format!("/{}", contract::esp::MACHINE_CONFIG))?;
    ensure!(
        installed.contains("custom-node"),
        "the settings' machine config should be the installed one; ESP has:\n{installed}"
    );

    let mut m = Machine::new("iso-settings-disk", work.path(), None)?;
    m.disks.push(Disk::virtio(&vdb));
    boot_ok(
        &mut m,
        "iso-settings: first boot of the installed disk",
        "slot=A version=1.0.0",
    )?;
    Ok(())
}

//! Scenario 1: `disk.raw` boots; first boot formats STATE and EPHEMERAL and
//! blesses; the second boot finds them and keeps what the first wrote. And
//! a rootfs with one flipped byte does not boot (dm-verity).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use anyhow::{ensure, Result};
use e2e::*;

const BOOT: Duration = Duration::from_secs(240);

#[test]
fn raw_disk_first_and_second_boot() -> Result<()> {
    require_tools(&["qemu-system-x86_64", "sfdisk", "mdir", "debugfs"])?;
    let images = images_dir()?;
    let work = tempfile::tempdir()?;
    let disk = work.path().join("disk.raw");
    sparse_copy(&images.join("disk.raw"), &disk)?;

    let mut m = Machine::new("raw", work.path(), None)?;
    m.disks.push(Disk::virtio(&disk));

    let mut b = m.boot()?;
    b.expect("cairn: boot ok slot=A version=1.0.0", BOOT)?;
    print_timings("raw disk: boot 1", &b, "cairn: boot ok");
    let log1: Vec<String> = b.all.iter().map(|(_, l)| l.clone()).collect();
    b.kill()?;
    ensure!(
        log1.iter()
            .any(|l| l.contains("STATE") && l.contains("formatting")),
        "first boot should format STATE; console:\n{}",
        log1.join("\n")
    );
    ensure!(
        log1.iter()
            .any(|l| l.contains("EPHEMERAL") && l.contains("formatting")),
        "first boot should format EPHEMERAL"
    );

    // Blessed: the boot-counting suffix is gone from the UKI's name.
    let linux = esp_dir(&disk, "/EFI/Linux")?;
    ensure!(
        linux.contains("cairn-1.0.0.efi") && !linux.contains('+'),
        "after a healthy boot the UKI should be blessed (no +N-M suffix); ESP has:\n{linux}"
    );

    let mut b = m.boot()?;
    b.expect("/var holds 1 earlier boot record(s)", BOOT)?;
    b.expect("cairn: boot ok slot=A version=1.0.0", BOOT)?;
    let log2: Vec<String> = b.all.iter().map(|(_, l)| l.clone()).collect();
    b.kill()?;
    ensure!(
        !log2.iter().any(|l| l.contains("formatting")),
        "second boot must not format anything; console:\n{}",
        log2.join("\n")
    );

    // Independent check of what init recorded, with debugfs.
    let boots = ext4_cat(&disk, "STATE", "/boots.log")?;
    ensure!(
        boots.lines().count() == 2
            && boots
                .lines()
                .all(|l| l.contains("slot=A version=1.0.0 result=ok")),
        "STATE boots.log should hold two good boots of v1 in slot A:\n{boots}"
    );
    let var = ext4_cat(&disk, "EPHEMERAL", "/log/cairn-boots")?;
    ensure!(
        var.lines().count() == 2,
        "EPHEMERAL should hold two boot lines:\n{var}"
    );
    Ok(())
}

#[test]
fn flipped_rootfs_byte_does_not_boot() -> Result<()> {
    require_tools(&["qemu-system-x86_64", "sfdisk"])?;
    let images = images_dir()?;
    let work = tempfile::tempdir()?;
    let disk = work.path().join("disk.raw");
    sparse_copy(&images.join("disk.raw"), &disk)?;
    let slot = partition(&disk, "BOOT-A")?;
    // Flip a byte inside the squashfs data (past the superblock).
    let f = OpenOptions::new().read(true).write(true).open(&disk)?;
    let mut b = [0u8; 1];
    let at = slot.offset + 8192 + 17;
    f.read_exact_at(&mut b, at)?;
    b[0] ^= 0x40;
    f.write_all_at(&b, at)?;
    f.sync_all()?;

    let mut m = Machine::new("verity", work.path(), None)?;
    m.disks.push(Disk::virtio(&disk));
    let mut boot = m.boot()?;
    let (i, line) = boot.expect_any(&["cairn: boot failed", "cairn: boot ok"], BOOT)?;
    ensure!(i == 0, "a rootfs with a flipped byte booted: {line}");
    // init's own refusal (stage1::verify_all), not any line that happens to
    // say "verity" (init names dm-verity on every boot).
    ensure!(
        line.contains(VERITY_REFUSED),
        "the boot should fail because dm-verity refused the rootfs ({VERITY_REFUSED:?}), but: {line}\n{}",
        boot.tail()
    );
    let end = boot.wait_exit(Duration::from_secs(60))?;
    ensure!(
        end == End::Reboot,
        "a failed boot should reboot (for the next try), it ended: {end:?}"
    );
    Ok(())
}

//! Scenarios 5 and 9: an A->B upgrade of a v1 disk that has booted (and so
//! is blessed) with the v2 test release's `update.tar`, keeping what v1
//! wrote on STATE and EPHEMERAL; and `cairn-installer rollback` bringing
//! v1 back.

use anyhow::{ensure, Result};
use e2e::*;

#[test]
fn upgrade_a_to_b_keeps_state_and_ephemeral() -> Result<()> {
    require_tools(&["qemu-system-x86_64", "sfdisk", "mdir", "debugfs"])?;
    let v2 = release_dir("v2")?;
    let work = tempfile::tempdir()?;
    let (mut m, disk) = booted_v1("upgrade", work.path())?;
    let boots_v1 = ext4_cat(&disk, "STATE", "/boots.log")?;
    let var_v1 = ext4_cat(&disk, "EPHEMERAL", "/log/cairn-boots")?;
    ensure!(
        boots_v1.lines().count() == 1,
        "v1's first boot should leave one STATE record:\n{boots_v1}"
    );

    let before = esp_dir(&disk, "/EFI/Linux")?;
    println!("ESP before the upgrade:\n{before}");
    upgrade(&disk, &v2.join("update.tar"))?;
    let linux = esp_dir(&disk, "/EFI/Linux")?;
    ensure!(
        linux.contains("cairn-2.0.0+3.efi") && linux.contains("cairn-1.0.0"),
        "after the upgrade the ESP should hold the new entry with 3 tries and v1:\n{linux}"
    );

    boot_ok(&mut m, "upgrade: v2 first boot", "slot=B version=2.0.0")?;
    let linux = esp_dir(&disk, "/EFI/Linux")?;
    ensure!(
        linux.contains("cairn-2.0.0.efi"),
        "v2 should be blessed after a healthy boot; ESP has:\n{linux}"
    );

    // What v1 recorded is still there, with v2's boot after it.
    let boots = ext4_cat(&disk, "STATE", "/boots.log")?;
    ensure!(
        boots.starts_with(&boots_v1) && boots.lines().count() == 2,
        "STATE /boots.log should keep v1's record and add v2's:\nbefore:\n{boots_v1}\nafter:\n{boots}"
    );
    // Slot and version together: v2 booted from B (not v1 again, not v2
    // from the wrong slot).
    ensure!(
        boots
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("slot=B version=2.0.0 result=ok")),
        "the second STATE record should be v2 booted ok from slot B:\n{boots}"
    );
    let var = ext4_cat(&disk, "EPHEMERAL", "/log/cairn-boots")?;
    ensure!(
        var.starts_with(&var_v1) && var.lines().count() == 2,
        "EPHEMERAL /log/cairn-boots should keep v1's line and add v2's:\nbefore:\n{var_v1}\nafter:\n{var}"
    );

    let (json, s) = status_summary(&disk)?;
    ensure!(
        field(&s, "active_slot") == Some("BOOT-B")
            && field(&s, "next_boot.version") == Some("2.0.0"),
        "status should report v2 in BOOT-B as running and next:\n{json}"
    );
    Ok(())
}

#[test]
fn rollback_boots_the_previous_release() -> Result<()> {
    require_tools(&["qemu-system-x86_64", "sfdisk", "mdir"])?;
    let v2 = release_dir("v2")?;
    let work = tempfile::tempdir()?;
    let (mut m, disk) = booted_v1("rollback", work.path())?;
    upgrade(&disk, &v2.join("update.tar"))?;
    boot_ok(&mut m, "rollback: v2 boot", "slot=B version=2.0.0")?;

    let r = installer(&[&"rollback", &"--disk", &disk])?;
    ensure!(
        r.success,
        "cairn-installer rollback --disk {} failed ({:?}):\n{}{}",
        disk.display(),
        r.code,
        r.stdout,
        r.stderr
    );
    let (json, s) = status_summary(&disk)?;
    ensure!(
        field(&s, "next_boot.version") == Some("1.0.0"),
        "after rollback status should plan to boot 1.0.0:\n{json}"
    );
    boot_ok(
        &mut m,
        "rollback: boot after rollback",
        "slot=A version=1.0.0",
    )?;
    // And it stays there: the next cold boot is v1 again.
    boot_ok(
        &mut m,
        "rollback: second boot after rollback",
        "slot=A version=1.0.0",
    )?;
    Ok(())
}

//! Scenario 11: Secure Boot with our own keys enrolled (PK, KEK, db made by
//! `cairn secureboot-keygen`, enrolled with virt-fw-vars). The pipeline's
//! signed image boots under enforcing firmware; after an upgrade, the new
//! UKI with one byte changed is refused by the firmware on every try, and
//! once systemd-boot's counter for it runs out the other slot boots.

use std::fs;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use e2e::*;

/// The tries a new entry gets (`+3` in its file name).
const TRIES: usize = 3;

/// How the firmware's refusal of an image shows on the console (systemd-boot
/// prints the EFI status of LoadImage; the wording depends on the path).
const REFUSED: &[&str] = &["Access Denied", "Security Violation"];

/// systemd-boot's report that the firmware refused the v2 UKI (OVMF also
/// refuses its own unsigned shell: that line does not count).
fn v2_refused(line: &str) -> bool {
    line.contains("Error loading")
        && line.contains("cairn-2.0.0")
        && REFUSED.iter().any(|r| line.contains(r))
}

/// OVMF's last word when every boot option failed.
const GAVE_UP: &str = "No bootable option or device was found";

fn sbverify(cert: &std::path::Path, image: &std::path::Path) -> Result<bool> {
    let out = Command::new("sbverify")
        .arg("--cert")
        .arg(cert)
        .arg(image)
        .output()
        .context("running sbverify")?;
    Ok(out.status.success())
}

/// The one file in the ESP listing whose name contains `needle`.
fn esp_file(disk: &std::path::Path, dir: &str, needle: &str) -> Result<String> {
    let listing = esp_dir(disk, dir)?;
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.trim().rsplit('/').next().unwrap_or_default())
        .filter(|n| n.contains(needle))
        .collect();
    match names.as_slice() {
        [one] => Ok(format!("{dir}/{one}")),
        _ => bail!("expected one {needle:?} in {dir} on the ESP, found {names:?}:\n{listing}"),
    }
}

#[test]
fn signed_image_boots_and_a_changed_uki_is_refused_then_the_other_slot_boots() -> Result<()> {
    require_tools(&[
        "qemu-system-x86_64",
        "virt-fw-vars",
        "sbverify",
        "mcopy",
        "mdir",
        "sfdisk",
    ])?;
    ensure!(
        std::path::Path::new(OVMF_CODE_SECBOOT).exists(),
        "{OVMF_CODE_SECBOOT} is missing: install the ovmf package (ci/deps)"
    );
    let keys = secure_boot_keys()?;
    let v1 = release_dir("sb1")?;
    let v2 = release_dir("sb2")?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    let db = keys.join("db.crt");

    let disk = w.join("disk.raw");
    sparse_copy(&v1.join("disk.raw"), &disk)?;
    // What the firmware will check, checked first by sbverify.
    for path in [
        "EFI/BOOT/BOOTX64.EFI".to_string(),
        esp_file(&disk, "EFI/Linux", "cairn-1.0.0")?,
    ] {
        let copy = w.join("check.efi");
        esp_get(&disk, &path, &copy)?;
        ensure!(
            sbverify(&db, &copy)?,
            "{path} on the sb1 disk does not verify against {}",
            db.display()
        );
        fs::remove_file(&copy)?;
    }

    let vars = enrolled_vars(&keys, &w.join("enrolled-VARS.fd"))?;
    let mut m = Machine::new("secure-boot", w, Some(&vars))?;
    m.secure_boot = true;
    m.disks.push(Disk::virtio(&disk));
    let mut b = m.boot()?;
    let (i, line) = b.expect_any(
        &[
            "cairn: boot ok",
            "cairn: boot failed",
            REFUSED[0],
            REFUSED[1],
        ],
        BOOT_TIMEOUT,
    )?;
    ensure!(
        i == 0 && line.contains("slot=A version=1.0.0"),
        "the signed v1 should boot under Secure Boot to `boot ok slot=A version=1.0.0`, got {line:?}\n--- last 50 console lines ({}) ---\n{}",
        b.log.display(),
        b.tail()
    );
    print_timings("secure-boot: signed v1", &b, "cairn: boot ok");
    // Issue 16: under Secure Boot the builder signs lockdown=confidentiality
    // into the UKI, and the kernel enforces it.
    let console = b.console();
    b.kill()?;
    ensure!(
        console
            .lines()
            .any(|l| l.trim_end().ends_with("cairn: lockdown confidentiality")),
        "a Secure Boot node should report `cairn: lockdown confidentiality`; console:\n{console}"
    );

    // v2 (signed with the same db key) into slot B, then one byte of its
    // UKI changed on the ESP: inside .linux, so systemd-boot still parses it.
    upgrade(&disk, &v2.join("update.tar"))?;
    let uki = esp_file(&disk, "EFI/Linux", "cairn-2.0.0+3")?;
    let copy = w.join("v2.efi");
    esp_get(&disk, &uki, &copy)?;
    ensure!(sbverify(&db, &copy)?, "{uki} as installed does not verify");
    let len = fs::metadata(&copy)?.len();
    flip_byte(&copy, len / 2)?;
    ensure!(
        !sbverify(&db, &copy)?,
        "{uki} with byte {} changed still verifies: the change missed the signed bytes",
        len / 2
    );
    esp_put(&disk, &copy, &uki)?;

    // One QEMU process is one power-on, but not one try: when systemd-boot
    // returns the firmware's refusal, OVMF goes on through its boot options
    // and may start systemd-boot from the disk again (another try, another
    // counter step) before it gives up ("No bootable option"). So count the
    // refusals on the console, not the processes.
    let mut refused: Vec<String> = Vec::new();
    let mut powered_on = 0;
    let ok = loop {
        powered_on += 1;
        ensure!(
            powered_on <= TRIES + 1,
            "{} power-ons and the signed v1 did not come back; refusals so far:\n{}\n(logs in {})",
            powered_on - 1,
            refused.join("\n"),
            w.display()
        );
        let mut b = m.boot()?;
        let (i, line) = b.expect_any(
            &["cairn: boot ok", "cairn: boot failed", GAVE_UP],
            BOOT_TIMEOUT,
        )?;
        let here: Vec<String> = b
            .all
            .iter()
            .filter(|(_, l)| v2_refused(l))
            .map(|(_, l)| l[l.find("Error loading").unwrap_or(0)..].trim().to_string())
            .collect();
        for l in &here {
            println!("secure-boot: power-on {powered_on}: {l}");
        }
        refused.extend(here);
        match i {
            0 => {
                print_timings("secure-boot: after the refusals", &b, "cairn: boot ok");
                b.kill()?;
                break line;
            }
            1 => bail!(
                "power-on {powered_on}: a release got as far as init and failed ({line:?}): the changed v2 UKI must be refused by the firmware before that\n--- last 50 console lines ({}) ---\n{}",
                b.log.display(),
                b.tail()
            ),
            _ => b.kill()?,
        }
    };
    // Each refusal followed one counter step: +3 -> +2-1 -> +1-2 -> +0-3.
    let steps: Vec<bool> = ["+2-1", "+1-2", "+0-3"]
        .iter()
        .map(|c| {
            refused
                .iter()
                .any(|l| l.contains(&format!("cairn-2.0.0{c}.efi")))
        })
        .collect();
    ensure!(
        refused.len() == TRIES && steps.iter().all(|s| *s),
        "the changed v2 UKI should be refused exactly {TRIES} times, once per try (+2-1, +1-2, +0-3), was refused {}:\n{}",
        refused.len(),
        refused.join("\n")
    );
    ensure!(
        ok.contains("slot=A") && ok.contains("version=1.0.0"),
        "after the refusals the signed v1 in slot A should boot, got: {ok}"
    );
    let (json, s) = status_summary(&disk)?;
    ensure!(
        field(&s, "entry.2.0.0.exhausted") == Some("true"),
        "status should report the refused v2 as exhausted:\n{json}"
    );
    Ok(())
}

/// Install settings under Secure Boot: `cairn iso customize` leaves the
/// signed installer UKI as it was, so the enforcing firmware still boots
/// it, and systemd-stub still hands the settings to install mode (its
/// global credentials are not gated on Secure Boot in systemd 252).
#[test]
fn customized_signed_installer_iso_installs_under_secure_boot() -> Result<()> {
    require_tools(&["qemu-system-x86_64", "virt-fw-vars"])?;
    ensure!(
        std::path::Path::new(OVMF_CODE_SECBOOT).exists(),
        "{OVMF_CODE_SECBOOT} is missing: install the ovmf package (ci/deps)"
    );
    let keys = secure_boot_keys()?;
    let v1 = release_dir("sb1")?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    let iso = w.join("custom.iso");
    let out = Command::new(cairn_bin()?)
        .args(["iso", "customize"])
        .arg(v1.join("installer.iso"))
        .arg("-o")
        .arg(&iso)
        .args(["--dest-device", "/dev/vdb", "--wipe"])
        .output()?;
    ensure!(
        out.status.success(),
        "cairn iso customize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (vda, vdb) = (w.join("vda.raw"), w.join("vdb.raw"));
    blank_disk(&vda, 256 << 20)?;
    blank_disk(&vdb, 2 << 30)?;
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&vdb)?;
        f.write_all_at(&vec![0x5au8; 1 << 20], 0)?;
    }
    let vars = enrolled_vars(&keys, &w.join("enrolled-VARS.fd"))?;
    let mut m = Machine::new("sb-iso-settings", w, Some(&vars))?;
    m.secure_boot = true;
    m.disks.push(Disk::cdrom(&iso));
    m.disks.push(Disk::virtio(&vda));
    m.disks.push(Disk::virtio(&vdb));
    let mut b = m.boot()?;
    let (i, line) = b.expect_any(
        &[
            "install: installed",
            "install failed",
            REFUSED[0],
            REFUSED[1],
        ],
        BOOT_TIMEOUT,
    )?;
    ensure!(
        i == 0 && line.contains("on /dev/vdb"),
        "the signed installer should install on /dev/vdb under Secure Boot, got {line:?}\n--- console tail ({}) ---\n{}",
        b.log.display(),
        b.tail()
    );
    ensure!(
        b.console()
            .contains("install settings from the media: dest_device=/dev/vdb wipe=true"),
        "install mode should report the media's settings under Secure Boot"
    );
    b.kill()?;
    Ok(())
}

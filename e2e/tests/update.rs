//! Issue 13, a node that upgrades itself from a registry (scenarios 13a-d
//! in docs/e2e.md). A real `docker-registry` runs on 127.0.0.1; the guest
//! reaches it only through QEMU user networking with `restrict=on` and one
//! `guestfwd` (10.0.2.100:5000). The v1 disk's machine config follows the
//! channel `cairn:stable` every 10 s.
//!
//! (a) v1 boots, gets a lease, finds 2.0.0, writes slot B live and reboots
//!     by itself; 2.0.0 boots from B and blesses, STATE kept.
//! (c) 3.0.0 pushed with its rootfs blob tampered in the registry's storage:
//!     refused (the digest named), the ESP untouched, the node stays on 2.0.0.
//! (b) the blob restored: 3.0.0 (a release that cannot boot) is installed,
//!     fails its three tries, systemd-boot falls back to 2.0.0, init marks
//!     3.0.0 bad, and the agent skips it at every later check.
//! (d) the registry stopped: the check fails and is retried; the node stays up.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use e2e::*;
use testkit::registry::Registry;

const CHANNEL: &str = "10.0.2.100:5000/cairn:stable";

fn cairn_bin() -> Result<PathBuf> {
    let p = repo_root().join("target/release/cairn");
    ensure!(
        p.is_file(),
        "{} is missing: cargo build --release -p builder",
        p.display()
    );
    Ok(p)
}

/// `cairn push` of a test release's `oci/` as `cairn:stable`.
fn publish(reg: &Registry, release: &Path) -> Result<()> {
    let out = Command::new(cairn_bin()?)
        .arg("push")
        .arg(release)
        .arg(format!("{}/cairn:stable", reg.host()))
        .arg("--plain-http")
        .output()?;
    ensure!(
        out.status.success(),
        "cairn push {}: {}",
        release.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The sha256 of a release's rootfs.img, as its blob is named.
fn rootfs_blob(release: &Path) -> Result<String> {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(release.join("oci/index.json"))?)?;
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .context("oci/index.json: no manifest")?;
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(
        release
            .join("oci/blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )?)?;
    let layer = manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["annotations"]["org.opencontainers.image.title"] == "rootfs.img")
        .context("no rootfs.img layer")?;
    Ok(layer["digest"]
        .as_str()
        .context("layer digest")?
        .trim_start_matches("sha256:")
        .to_string())
}

#[test]
fn node_follows_its_channel_and_falls_back_from_a_bad_release() -> Result<()> {
    require_tools(&["qemu-system-x86_64", "docker-registry", "mdir"])?;
    let (v2, v3) = (release_dir("v2")?, release_dir("v3")?);
    for r in [&v2, &v3] {
        ensure!(
            r.join("oci/index.json").is_file(),
            "{} has no oci/ (ci/test builds it)",
            r.display()
        );
    }
    let work = tempfile::tempdir()?;
    let mut reg = Registry::start();
    publish(&reg, &v2)?;
    // The registry is the only thing the guest can reach: restrict=on, and
    // one guestfwd from 10.0.2.100:5000 to the test's registry.
    let netdev = format!(
        "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:5000-tcp:127.0.0.1:{}",
        reg.port
    );
    let mut m = machine_with(
        "update",
        work.path(),
        &["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"],
        Some("\n[update]\nsource = \"10.0.2.100:5000/cairn\"\ntag = \"stable\"\ninterval_s = 10\nplain_http = true\n"),
    )?;
    let disk = m.disks[0].path.clone();

    // (a) v1 installs 2.0.0 by itself and reboots into it.
    let mut b = m.boot()?;
    wait_all(
        &mut b,
        &[
            "cairn: boot ok slot=A version=1.0.0",
            "cairn: network up eth0",
            &format!("cairn: update: {CHANNEL} installed: 2.0.0 written to BOOT-B"),
            "cairn: update: rebooting into 2.0.0",
        ],
    )?;
    let end = b.wait_exit(Duration::from_secs(120))?;
    ensure!(
        end == End::Reboot,
        "v1 should reboot by itself after the update, ended {end:?}\n{}",
        b.tail()
    );
    let boots_v1 = ext4_cat(&disk, "STATE", "/boots.log")?;

    // (c) a tampered 3.0.0: refused, nothing on the ESP.
    publish(&reg, &v3)?;
    let blob = rootfs_blob(&v3)?;
    let data = reg.blob_data(&blob);
    let good = fs::read(&data)?;
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    fs::write(&data, &bad)?;
    let mut b = m.boot()?;
    wait_all(&mut b, &["cairn: boot ok slot=B version=2.0.0"])?;
    // The refusal names the blob. A check may fail before it for another
    // reason (the network not up yet): such failures are retried, and only
    // the digest refusal ends this part.
    let mut refusals = Vec::new();
    while !refusals.last().is_some_and(|l: &String| l.contains(&blob)) {
        ensure!(
            refusals.len() < 4,
            "no refusal naming the tampered blob {blob} in {} failed checks:\n{}\n{}",
            refusals.len(),
            refusals.join("\n"),
            b.tail()
        );
        let line = b.expect(&format!("cairn: update: {CHANNEL} failed:"), BOOT_TIMEOUT)?;
        eprintln!("(c) {line}");
        refusals.push(line);
    }
    ensure!(
        !b.console().contains("installed: 3.0.0"),
        "a tampered 3.0.0 was installed:\n{}",
        b.tail()
    );
    b.kill()?;
    let linux = esp_dir(&disk, "/EFI/Linux")?;
    ensure!(
        !linux.contains("3.0.0"),
        "a tampered 3.0.0 reached the ESP:\n{linux}"
    );
    let boots = ext4_cat(&disk, "STATE", "/boots.log")?;
    ensure!(
        boots.starts_with(&boots_v1),
        "STATE lost v1's records:\nbefore:\n{boots_v1}\nafter:\n{boots}"
    );
    fs::write(&data, &good)?;

    // (b) 3.0.0 installs, cannot boot, and is fallen back from and skipped.
    let mut b = m.boot()?;
    wait_all(
        &mut b,
        &[
            "cairn: boot ok slot=B version=2.0.0",
            &format!("cairn: update: {CHANNEL} installed: 3.0.0 written to BOOT-A"),
            "cairn: update: rebooting into 3.0.0",
        ],
    )?;
    let end = b.wait_exit(Duration::from_secs(120))?;
    ensure!(
        end == End::Reboot,
        "2.0.0 should reboot into 3.0.0, ended {end:?}"
    );
    let mut failed = 0;
    loop {
        ensure!(
            failed <= 3,
            "3.0.0 failed {failed} times without a fallback"
        );
        let mut b = m.boot()?;
        let (i, line) = b.expect_any(
            &["cairn: boot ok", "cairn: boot failed", "Kernel panic"],
            BOOT_TIMEOUT,
        )?;
        if i != 0 {
            failed += 1;
            let end = b.wait_exit(Duration::from_secs(120))?;
            ensure!(
                end == End::Reboot,
                "failed boot {failed} ended {end:?}: {line}"
            );
            continue;
        }
        ensure!(
            line.contains("slot=B version=2.0.0") && failed == 3,
            "after 3 failed tries of 3.0.0 the fallback should be 2.0.0 in B: {line} after {failed}"
        );
        // Recorded while the boot is judged, before "boot ok".
        ensure!(
            b.console().contains(
                "cairn: release 3.0.0 failed to boot and was fallen back from: marked bad"
            ),
            "the fallback boot did not mark 3.0.0 bad:\n{}",
            b.tail()
        );
        b.expect(
            &format!("cairn: update: {CHANNEL} skipped (known bad)"),
            Duration::from_secs(90),
        )?;
        // ...and again at the next check: never installed again.
        b.expect(
            &format!("cairn: update: {CHANNEL} skipped (known bad)"),
            Duration::from_secs(60),
        )?;

        // (d) the registry goes away: failed, retried, the node stays up.
        // Behind the guestfwd the request is taken and never answered: the
        // client gives up after its I/O timeout (registry::DEFAULT_IO_TIMEOUT,
        // 60 s), then the check is retried.
        reg.stop();
        let patience = Duration::from_secs(60 + 40);
        b.expect(&format!("cairn: update: {CHANNEL} failed:"), patience)?;
        b.expect("cairn: update: retrying in", Duration::from_secs(10))?;
        b.expect(&format!("cairn: update: {CHANNEL} failed:"), patience)?;
        if b.console().contains("rebooting into") {
            bail!("the node rebooted after a failed check:\n{}", b.tail());
        }
        b.kill()?;
        break;
    }
    let bad = ext4_cat(&disk, "STATE", "/cairn/bad-releases")?;
    ensure!(bad == "3.0.0\n", "STATE cairn/bad-releases: {bad:?}");
    let (json, s) = status_summary(&disk)?;
    ensure!(
        field(&s, "active_slot") == Some("BOOT-B")
            && field(&s, "next_boot.version") == Some("2.0.0"),
        "status should report 2.0.0 in BOOT-B running and next:\n{json}"
    );
    Ok(())
}

/// (e) Power cut (QEMU killed) during a live upgrade: once 2.0.0 is
/// accepted (`writing it live`), at several points of the transfer into
/// the slot and of the ESP steps that follow, and after the upgrade
/// finished but before the reboot. Every cut disk boots 1.0.0 or 2.0.0 and
/// passes the independent tools' checks, and STATE keeps v1's record.
#[test]
fn power_cut_during_a_live_upgrade_boots_old_or_new() -> Result<()> {
    require_tools(&[
        "qemu-system-x86_64",
        "docker-registry",
        "sgdisk",
        "fsck.fat",
    ])?;
    let v2 = release_dir("v2")?;
    let work = tempfile::tempdir()?;
    let reg = Registry::start();
    publish(&reg, &v2)?;
    let netdev = format!(
        "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:5000-tcp:127.0.0.1:{}",
        reg.port
    );
    let config = "\n[update]\nsource = \"10.0.2.100:5000/cairn\"\ntag = \"stable\"\ninterval_s = 10\nplain_http = true\n";
    // Milliseconds after `writing it live`; None: at `rebooting into`.
    let cuts: [Option<u64>; 5] = [Some(0), Some(400), Some(1200), Some(2500), None];
    let mut seen = Vec::new();
    for (i, cut) in cuts.iter().enumerate() {
        let name = format!("cut{i}");
        let mut m = machine_with(
            &name,
            work.path(),
            &["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"],
            Some(config),
        )?;
        let disk = m.disks[0].path.clone();
        let mut b = m.boot()?;
        match cut {
            Some(ms) => {
                b.expect("cairn: update: 2.0.0 verified", BOOT_TIMEOUT)?;
                std::thread::sleep(Duration::from_millis(*ms));
            }
            None => {
                b.expect("cairn: update: rebooting into 2.0.0", BOOT_TIMEOUT)?;
            }
        }
        let finished = b.console().contains("installed: 2.0.0");
        b.kill()?;
        let label = format!("{name} ({cut:?} ms, upgrade finished before the cut: {finished})");

        standard_tools_accept(&disk).with_context(|| label.clone())?;

        // Boots old or new, without the registry's help: the first boot
        // after the cut decides. (The network stays, so a v1 that comes back
        // may start the upgrade again; that is not this check.)
        let line = boot_ok_any(&mut m, &label)?;
        let v = if line.contains("version=1.0.0") {
            "1.0.0"
        } else if line.contains("slot=B version=2.0.0") {
            "2.0.0"
        } else {
            bail!("{label}: boots neither 1.0.0 nor 2.0.0 from B: {line}");
        };
        ensure!(
            !finished || v == "2.0.0",
            "{label}: the upgrade had finished but {v} booted"
        );
        let boots = ext4_cat(&disk, "STATE", "/boots.log")?;
        ensure!(
            boots
                .lines()
                .next()
                .is_some_and(|l| l.contains("slot=A version=1.0.0")),
            "{label}: STATE lost v1's first record:\n{boots}"
        );
        println!("{label}: boots {v}");
        seen.push(v);
    }
    ensure!(
        seen.last() == Some(&"2.0.0"),
        "a cut after the upgrade finished must boot 2.0.0: {seen:?}"
    );
    Ok(())
}

/// One boot that must reach `cairn: boot ok` (any slot or version); the
/// line, then the machine is stopped.
fn boot_ok_any(m: &mut Machine, label: &str) -> Result<String> {
    let mut b = m.boot()?;
    let (i, line) = b.expect_any(&["cairn: boot ok", "cairn: boot failed"], BOOT_TIMEOUT)?;
    if i != 0 {
        bail!(
            "{label}: the boot after the cut failed: {line}\n{}",
            b.tail()
        );
    }
    b.kill()?;
    Ok(line)
}

//! Scenarios 6 and 7: a release that cannot boot is tried three times
//! (systemd-boot's counter) and then the previous release boots by itself:
//! once for a rootfs without init (test release v3), once for a slot whose
//! bytes no longer match the verity root hash. And a bundle whose rootfs.img
//! was changed after signing is refused before anything is written.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use e2e::*;

/// The number of tries a new entry gets (`+3` in its file name).
const TRIES: usize = 3;

/// What init says when `/sbin/init` is missing from the rootfs it mounted
/// (init/src/stage1.rs `exec_stage2`).
const NO_INIT: &str = "cairn: boot failed: exec /sbin/init in the new root";

/// The PARTUUID init looks for to boot the release in `dir`: the contract's
/// slot rule applied to the verity root hash in its manifest.
fn release_partuuid(dir: &Path) -> Result<String> {
    let path = dir.join("manifest.json");
    let m: serde_json::Value = serde_json::from_slice(&fs::read(&path)?)
        .with_context(|| format!("parsing {}", path.display()))?;
    let h = m["verity_root_hash"]
        .as_str()
        .with_context(|| format!("{} has no verity_root_hash", path.display()))?;
    let uuid = contract::disk::slot_partuuid_of_hex(h)
        .with_context(|| format!("{}: verity_root_hash {h}", path.display()))?;
    Ok(uuid.to_string())
}

/// Each failed try failed for `cause` (init's own message), booting slot
/// `slot` (the partition stage 1 found) with the release in `release` (the
/// PARTUUID it looked for is that release's root hash).
fn check_failed_tries(
    failed: &[FailedBoot],
    cause: &str,
    slot: &str,
    release: &Path,
) -> Result<()> {
    let want = format!(
        "looking for rootfs partition PARTUUID={}",
        release_partuuid(release)?
    );
    for (n, f) in failed.iter().enumerate() {
        let n = n + 1;
        ensure!(
            f.line.contains(cause),
            "try {n} should fail with {cause:?}, it failed with: {}",
            f.line
        );
        let looked = f.line_with("looking for rootfs partition PARTUUID=");
        ensure!(
            looked.is_some_and(|l| l.contains(&want)),
            "try {n} should boot the release in {} ({want:?}); it looked for: {:?}",
            release.display(),
            f.line_with("looking for rootfs partition")
        );
        let found = f.line_with("cairn: rootfs: ");
        ensure!(
            found.is_some_and(|l| l.contains(&format!(" ({slot}, "))),
            "try {n} should boot slot {slot}; stage 1 found: {found:?}"
        );
    }
    Ok(())
}

#[test]
fn release_without_init_falls_back_after_three_tries() -> Result<()> {
    require_tools(&["qemu-system-x86_64", "sfdisk", "mdir"])?;
    let v2 = release_dir("v2")?;
    let v3 = release_dir("v3")?;
    let work = tempfile::tempdir()?;
    let (mut m, disk) = booted_v1("fallback-init", work.path())?;
    upgrade(&disk, &v2.join("update.tar"))?;
    boot_ok(&mut m, "fallback-init: v2 boot", "slot=B version=2.0.0")?;
    upgrade(&disk, &v3.join("update.tar"))?;

    let (failed, ok) = boot_until_ok(&mut m, "fallback-init: v3", TRIES as u32 + 1)?;
    ensure!(
        failed.len() == TRIES,
        "v3 should fail exactly {TRIES} times before the fallback, failed {}:\n{}",
        failed.len(),
        lines(&failed)
    );
    check_failed_tries(&failed, NO_INIT, "BOOT-A", &v3)?;
    ensure!(
        ok.contains("cairn: boot ok slot=B version=2.0.0"),
        "after v3's tries the fallback should be v2 in slot B, got: {ok}"
    );
    // The fallback is stable: the next cold boot is v2 again, not another try of v3.
    boot_ok(
        &mut m,
        "fallback-init: after fallback",
        "slot=B version=2.0.0",
    )?;

    let (json, s) = status_summary(&disk)?;
    ensure!(
        field(&s, "entry.3.0.0.exhausted") == Some("true")
            && field(&s, "entry.3.0.0.tries_left") == Some("0"),
        "status should report v3 exhausted with no tries left:\n{json}"
    );
    ensure!(
        field(&s, "next_boot.version") == Some("2.0.0")
            && field(&s, "active_slot") == Some("BOOT-B")
            && field(&s, "entry.2.0.0.blessed") == Some("true"),
        "status should report v2 (BOOT-B, blessed) as the release that boots:\n{json}"
    );
    Ok(())
}

fn lines(failed: &[FailedBoot]) -> String {
    failed
        .iter()
        .map(|f| f.line.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Extracts `tar` into `dir` and returns its member names in archive order.
fn untar(tar: &Path, dir: &Path) -> Result<Vec<String>> {
    fs::create_dir_all(dir)?;
    run(Command::new("tar").arg("-xf").arg(tar).arg("-C").arg(dir))?;
    Ok(run(Command::new("tar").arg("-tf").arg(tar))?
        .lines()
        .map(str::to_string)
        .collect())
}

#[test]
fn tampered_rootfs_is_refused_and_a_corrupt_slot_falls_back() -> Result<()> {
    require_tools(&["qemu-system-x86_64", "sfdisk", "tar", "sha256sum"])?;
    let v2 = release_dir("v2")?;
    let work = tempfile::tempdir()?;
    let (mut m, disk) = booted_v1("fallback-verity", work.path())?;

    // A bundle whose rootfs.img changed after signing, repacked in the same order.
    let dir = work.path().join("bundle");
    let names = untar(&v2.join("update.tar"), &dir)?;
    ensure!(
        names
            .iter()
            .any(|n| n.trim_start_matches("./") == "rootfs.img"),
        "update.tar has no rootfs.img: {names:?}"
    );
    let rootfs = dir.join("rootfs.img");
    let len = fs::metadata(&rootfs)?.len();
    flip_byte(&rootfs, len / 3)?;
    let bad = work.path().join("bad-update.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&bad)
        .arg("-C")
        .arg(&dir)
        .args(&names))?;

    let before = sha256_file(&disk)?;
    let key = release_pubkey()?;
    let r = installer(&[
        &"upgrade",
        &"--disk",
        &disk,
        &"--bundle",
        &bad,
        &"--pubkey",
        &key,
    ])?;
    let msg = format!("{}{}", r.stdout, r.stderr);
    ensure!(
        !r.success,
        "an upgrade with a tampered rootfs.img succeeded:\n{msg}"
    );
    ensure!(
        msg.contains("rootfs.img"),
        "the refusal should name rootfs.img:\n{msg}"
    );
    println!("tampered bundle refused: {}", msg.trim());
    let after = sha256_file(&disk)?;
    ensure!(
        before == after,
        "a refused upgrade changed the disk: sha256 {before} -> {after}"
    );

    // Past the installer's checks: a good upgrade, then the slot rots on disk.
    upgrade(&disk, &v2.join("update.tar"))?;
    let slot = partition(&disk, "BOOT-B")?;
    flip_byte(&disk, slot.offset + 8192 + 17).context("corrupting BOOT-B")?;
    // `status --verify` sees it before any boot does.
    let r = installer(&[&"status", &"--disk", &disk, &"--verify"])?;
    ensure!(
        !r.success
            && r.stdout.contains("verity BOOT-B  corrupt")
            && r.stdout.contains("verity BOOT-A  ok"),
        "status --verify should report BOOT-B corrupt and BOOT-A ok, and fail:\n{}{}",
        r.stdout,
        r.stderr
    );
    let (failed, ok) = boot_until_ok(&mut m, "fallback-verity: corrupt v2", TRIES as u32 + 1)?;
    ensure!(
        failed.len() == TRIES,
        "the corrupt v2 should fail exactly {TRIES} times before the fallback, failed {}:\n{}",
        failed.len(),
        lines(&failed)
    );
    check_failed_tries(&failed, VERITY_REFUSED, "BOOT-B", &v2)?;
    ensure!(
        ok.contains("cairn: boot ok slot=A version=1.0.0"),
        "after the corrupt v2's tries the fallback should be v1 in slot A, got: {ok}"
    );
    Ok(())
}

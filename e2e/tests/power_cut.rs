//! Scenario 8: power cut during an upgrade. The installer's fault-injection
//! disk is a test-only wrapper, so the cut is made from outside on the real
//! binary: strace counts the upgrade's write syscalls to the disk image, then
//! kills `cairn-installer upgrade` (SIGKILL on entry to the chosen write, so
//! that write never happens) at the first, the middle and the last disk
//! write. Each cut disk must cold-boot a valid release (v1 or v2).
//!
//! A killed process keeps the writes it already made (they sit in the page
//! cache of the image file), so this emulates a cut with the disk cache
//! flushed; a lost volatile cache is covered by installer/tests/faults.rs.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use e2e::*;

const WRITES: &[&str] = &["write", "pwrite64", "writev", "pwritev", "pwritev2"];

/// One write syscall seen by strace: its name and whether it hit the disk.
struct Call {
    name: String,
    to_disk: bool,
}

fn strace_upgrade(
    disk: &Path,
    bundle: &Path,
    key: &Path,
    extra: &[String],
) -> Result<(bool, String)> {
    let bin = installer_bin()?;
    let log = disk.with_extension("strace");
    let out = Command::new("strace")
        .args(["-f", "-qq", "-y", "-s", "0", "-o"])
        .arg(&log)
        .arg("-e")
        .arg(format!("trace={}", WRITES.join(",")))
        .args(extra)
        .arg(&bin)
        .arg("upgrade")
        .arg("--disk")
        .arg(disk)
        .arg("--bundle")
        .arg(bundle)
        .arg("--pubkey")
        .arg(key)
        .output()
        .context("running cairn-installer under strace")?;
    let text = fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let _ = out.stdout;
    Ok((out.status.success(), text))
}

fn calls(trace: &str, disk_name: &str) -> Vec<Call> {
    trace
        .lines()
        .filter_map(|l| {
            // `[PID ]NAME(FD<PATH>, ...` with -f and -y.
            let l = l.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ');
            let name = &l[..l.find('(')?];
            WRITES.contains(&name).then(|| Call {
                name: name.to_string(),
                to_disk: l[name.len()..]
                    .split(',')
                    .next()
                    .unwrap_or("")
                    .contains(disk_name),
            })
        })
        .collect()
}

#[test]
fn power_cut_during_upgrade_leaves_a_bootable_disk() -> Result<()> {
    require_tools(&["qemu-system-x86_64", "sfdisk", "strace"])?;
    let v2 = release_dir("v2")?;
    let bundle = v2.join("update.tar");
    let key = release_pubkey()?;
    let work = tempfile::tempdir()?;
    let (_, booted) = booted_v1("cut", work.path())?;

    // A full upgrade under strace: which syscall writes the disk, and how often.
    let probe = work.path().join("probe-disk.raw");
    sparse_copy(&booted, &probe)?;
    let (ok, trace) = strace_upgrade(&probe, &bundle, &key, &[])?;
    ensure!(
        ok,
        "the traced reference upgrade failed; trace tail:\n{}",
        tail(&trace)
    );
    let seen = calls(&trace, "probe-disk.raw");
    let disk_writes: Vec<usize> = (0..seen.len()).filter(|&i| seen[i].to_disk).collect();
    ensure!(
        disk_writes.len() >= 3,
        "expected several disk writes in the upgrade, strace saw {}:\n{}",
        disk_writes.len(),
        tail(&trace)
    );
    let n = disk_writes.len();
    println!("upgrade v1 -> v2: {n} write syscalls to the disk image");

    let mut booted_versions = Vec::new();
    for (label, k) in [("first", 0), ("middle", n / 2), ("last", n - 1)] {
        let idx = disk_writes[k];
        let name = &seen[idx].name;
        // strace counts each syscall by itself, from 1.
        let when = seen[..=idx].iter().filter(|c| &c.name == name).count();
        let dir = work.path().join(label);
        fs::create_dir_all(&dir)?;
        let disk = dir.join("cut-disk.raw");
        sparse_copy(&booted, &disk)?;
        let (ok, _) = strace_upgrade(
            &disk,
            &bundle,
            &key,
            &[
                "-e".into(),
                format!("inject={name}:signal=SIGKILL:when={when}"),
            ],
        )?;
        if ok {
            bail!(
                "the upgrade cut at disk write {} of {n} ({name} #{when}) completed anyway",
                k + 1
            );
        }
        let what = format!("cut at disk write {} of {n} ({label})", k + 1);
        standard_tools_accept(&disk).with_context(|| what.clone())?;
        let predicted = predicted_version(&disk).with_context(|| what.clone())?;
        let mut m = Machine::new(&format!("cut-{label}"), &dir, None)?;
        m.disks.push(Disk::virtio(&disk));
        let line = boot_ok(&mut m, &what, "version=")?;
        ensure!(
            line.contains("version=1.0.0") || line.contains("version=2.0.0"),
            "a disk cut during the upgrade booted neither v1 nor v2: {line}"
        );
        ensure!(
            line.contains(&format!("version={predicted}")),
            "{what}: the boot model predicts {predicted}, the machine booted: {line}"
        );
        println!("cut at disk write {} of {n}: {line}", k + 1);
        booted_versions.push(line);
    }
    ensure!(booted_versions.len() == 3, "three cut disks should boot");
    Ok(())
}

/// The release the boot model (`cairn-installer status`) says boots next.
fn predicted_version(disk: &Path) -> Result<String> {
    let (json, pairs) = status_summary(disk)?;
    field(&pairs, "next_boot.version")
        .filter(|v| *v != "None")
        .map(str::to_string)
        .with_context(|| format!("status names no next boot:\n{json}"))
}

/// `sgdisk -v` and `fsck.fat -n` on a cut disk, their output read (both
/// exit 0 on some real damage): sgdisk must find the primary GPT sound
/// (Linux reads it) and may only fault the backup, which a cut between the
/// two copies' updates leaves older; fsck.fat may only report leaked
/// clusters, differing FATs and a stale free count (a cut's by-design
/// leftovers, see artifacts' FAT editor docs).
fn standard_tools_accept(disk: &Path) -> Result<()> {
    let out = Command::new("sgdisk").arg("-v").arg(disk).output()?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let primary_bad = ["Main header: ERROR", "Main partition table: ERROR"]
        .iter()
        .any(|l| text.contains(l))
        || text.contains("invalid main GPT header");
    let clean = text.contains("No problems found.")
        && !["Problem", "Warning", "Caution"]
            .iter()
            .any(|w| text.contains(w));
    ensure!(
        clean || !primary_bad,
        "sgdisk -v faults the primary GPT:\n{text}"
    );
    let esp = partition(disk, "EFI")?;
    let copy = tempfile::NamedTempFile::new()?;
    run(Command::new("dd")
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", copy.path().display()))
        .args(["bs=512", "conv=sparse", "status=none"])
        .arg(format!("skip={}", esp.offset / 512))
        .arg(format!("count={}", esp.size / 512)))?;
    let out = Command::new("fsck.fat")
        .arg("-n")
        .arg(copy.path())
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let benign = |l: &str| {
        l.is_empty()
            || l.starts_with("fsck.fat ")
            || l.starts_with("Reclaimed ") && l.contains(" unused cluster")
            || l.starts_with("Free cluster summary wrong (")
            || ["FATs differ but appear to be intact.", "Using first FAT."].contains(&l)
            || ["Auto-correcting.", "Leaving filesystem unchanged."].contains(&l)
            || l.contains(" files, ") && l.ends_with(" clusters")
    };
    let bad: Vec<&str> = text.lines().map(str::trim).filter(|l| !benign(l)).collect();
    ensure!(
        bad.is_empty() && out.status.code().is_some_and(|c| c <= 1),
        "fsck.fat -n on the ESP ({}):\n{text}",
        out.status
    );
    Ok(())
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[test]
fn strace_lines_are_classified() {
    let trace = "24427 write(1</tmp/x/stdout>, \"\"..., 2) = 2\n\
                 24427 pwrite64(3</tmp/w/cut-disk.raw>, \"\"..., 4096, 0) = 4096\n\
                 24427 +++ killed by SIGKILL +++\n";
    let c = calls(trace, "cut-disk.raw");
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].name, "write");
    assert!(!c[0].to_disk);
    assert_eq!(c[1].name, "pwrite64");
    assert!(c[1].to_disk);
}

/// The cut-disk checks can fail: the real disk image passes, the same disk
/// with its ESP boot sector changed (fsck.fat -n still exits 0) or its
/// primary GPT entries changed (header CRC now wrong) does not.
#[test]
fn standard_tools_refuse_a_damaged_disk() -> Result<()> {
    require_tools(&["sgdisk", "fsck.fat"])?;
    let work = tempfile::tempdir()?;
    let disk = work.path().join("disk.raw");
    sparse_copy(&images_dir()?.join("disk.raw"), &disk)?;
    standard_tools_accept(&disk)?;
    let esp = partition(&disk, "EFI")?;
    for (what, offset, needle) in [
        ("ESP boot sector", esp.offset + 3, "boot sector"),
        ("primary GPT entries", 2 * 512 + 40, "primary GPT"),
    ] {
        let bad = work.path().join("bad.raw");
        sparse_copy(&disk, &bad)?;
        flip_byte(&bad, offset)?;
        let e = standard_tools_accept(&bad)
            .err()
            .with_context(|| format!("a changed {what} passed"))?;
        ensure!(format!("{e:#}").contains(needle), "{what}: {e:#}");
    }
    Ok(())
}

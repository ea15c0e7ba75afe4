//! Scenario 8: power cut during an upgrade. The installer's fault-injection
//! disk is a test-only wrapper, so the cut is made from outside on the real
//! binary: strace counts the upgrade's write syscalls to the disk image, then
//! kills `cairn-installer upgrade` (SIGKILL on entry to the chosen write, so
//! that write never happens) at the first, the middle and the last disk
//! write. strace's own log proves each kill landed on the chosen write
//! (that call never returned, `+++ killed by SIGKILL +++` follows it, and
//! exactly the disk writes before it completed). Each cut disk must
//! cold-boot a valid release: v1 from slot A or v2 from slot B; the disk cut
//! at its first write is unchanged and boots v1.
//!
//! A killed process keeps the writes it already made (they sit in the page
//! cache of the image file), so this emulates a cut with the disk cache
//! flushed; a lost volatile cache is covered by installer/tests/faults.rs.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use e2e::*;

const WRITES: &[&str] = &["write", "pwrite64", "writev", "pwritev", "pwritev2"];

/// One write syscall seen by strace: its name and whether it hit the disk.
struct Call {
    name: String,
    to_disk: bool,
}

/// What one traced upgrade did: its exit, its output and strace's log.
struct Traced {
    success: bool,
    output: String,
    trace: String,
}

fn strace_upgrade(disk: &Path, bundle: &Path, key: &Path, extra: &[String]) -> Result<Traced> {
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
    let trace = fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    Ok(Traced {
        success: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        trace,
    })
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

/// Where strace's SIGKILL landed, read from its log.
#[derive(Debug, PartialEq, Eq)]
struct KillPoint {
    /// The call the kill interrupted: its name and its number among that
    /// process's calls of that name (strace's `when=`), from 1.
    name: String,
    nth: usize,
    to_disk: bool,
    /// Disk writes that returned before the kill.
    disk_writes_done: usize,
}

/// Reads a trace of a run killed by `inject=NAME:signal=SIGKILL`: the line
/// before the victim's `+++ killed by SIGKILL +++` must be its write left
/// unfinished (`= ?`: killed on entry, so it never wrote).
fn kill_point(trace: &str, disk_name: &str) -> Result<KillPoint> {
    let pid_of = |l: &str| l.split_whitespace().next().unwrap_or("").to_string();
    let lines: Vec<&str> = trace.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.ends_with("+++ killed by SIGKILL +++"))
        .with_context(|| format!("strace saw no SIGKILL; trace tail:\n{}", tail(trace, 30)))?;
    let victim = pid_of(lines[at]);
    let before: Vec<&str> = lines[..at]
        .iter()
        .copied()
        .filter(|l| pid_of(l) == victim)
        .collect();
    let last = *before
        .last()
        .with_context(|| format!("process {victim} made no call before its SIGKILL"))?;
    ensure!(
        last.trim_end().ends_with("= ?"),
        "the SIGKILL did not land on a call's entry: the call before it returned: {last}"
    );
    let seen = calls(&before.join("\n"), disk_name);
    let killed = seen
        .last()
        .with_context(|| format!("the call before the SIGKILL is not a write: {last}"))?;
    Ok(KillPoint {
        name: killed.name.clone(),
        nth: seen.iter().filter(|c| c.name == killed.name).count(),
        to_disk: killed.to_disk,
        disk_writes_done: seen[..seen.len() - 1].iter().filter(|c| c.to_disk).count(),
    })
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
    let reference = strace_upgrade(&probe, &bundle, &key, &[])?;
    let trace = reference.trace;
    ensure!(
        reference.success,
        "the traced reference upgrade failed:\n{}\ntrace tail:\n{}",
        reference.output,
        tail(&trace, 30)
    );
    let seen = calls(&trace, "probe-disk.raw");
    let disk_writes: Vec<usize> = (0..seen.len()).filter(|&i| seen[i].to_disk).collect();
    ensure!(
        disk_writes.len() >= 3,
        "expected several disk writes in the upgrade, strace saw {}:\n{}",
        disk_writes.len(),
        tail(&trace, 30)
    );
    let n = disk_writes.len();
    println!("upgrade v1 -> v2: {n} write syscalls to the disk image");

    let v1_disk = sha256_file(&booted)?;
    for (label, k) in [("first", 0), ("middle", n / 2), ("last", n - 1)] {
        let idx = disk_writes[k];
        let name = &seen[idx].name;
        // strace counts each syscall by itself, from 1.
        let when = seen[..=idx].iter().filter(|c| &c.name == name).count();
        let what = format!("disk write {} of {n} ({name} #{when})", k + 1);
        let dir = work.path().join(label);
        fs::create_dir_all(&dir)?;
        let disk = dir.join("cut-disk.raw");
        sparse_copy(&booted, &disk)?;
        let cut = strace_upgrade(
            &disk,
            &bundle,
            &key,
            &[
                "-e".into(),
                format!("inject={name}:signal=SIGKILL:when={when}"),
            ],
        )?;
        ensure!(
            !cut.success,
            "the upgrade cut at {what} completed anyway:\n{}",
            cut.output
        );
        // strace's log, not the exit status, says where the kill landed.
        let kp = kill_point(&cut.trace, "cut-disk.raw")?;
        let want = KillPoint {
            name: name.clone(),
            nth: when,
            to_disk: true,
            disk_writes_done: k,
        };
        ensure!(
            kp == want,
            "the cut at {what} landed elsewhere: {kp:?}, wanted {want:?}; trace tail:\n{}",
            tail(&cut.trace, 30)
        );
        if k == 0 {
            ensure!(
                sha256_file(&disk)? == v1_disk,
                "killed before its first disk write, the upgrade still changed the disk"
            );
        }
        let what = format!("cut at disk write {} of {n} ({label})", k + 1);
        standard_tools_accept(&disk).with_context(|| what.clone())?;
        let predicted = predicted_version(&disk).with_context(|| what.clone())?;
        let mut m = Machine::new(&format!("cut-{label}"), &dir, None)?;
        m.disks.push(Disk::virtio(&disk));
        let line = boot_ok(&mut m, &what, "version=")?;
        let release = ["slot=A version=1.0.0", "slot=B version=2.0.0"]
            .into_iter()
            .find(|r| line.contains(r));
        ensure!(
            release.is_some(),
            "a disk cut at {what} booted neither v1 from slot A nor v2 from slot B: {line}"
        );
        ensure!(
            k != 0 || release == Some("slot=A version=1.0.0"),
            "the unchanged disk (cut before any write) should boot v1 from slot A: {line}"
        );
        ensure!(
            line.contains(&format!("version={predicted}")),
            "{what}: the boot model predicts {predicted}, the machine booted: {line}"
        );
        println!("{what}: {line}");
    }
    Ok(())
}

/// The release the boot model (`cairn-installer status`) says boots next.
fn predicted_version(disk: &Path) -> Result<String> {
    let (json, pairs) = status_summary(disk)?;
    field(&pairs, "next_boot.version")
        .filter(|v| *v != "null")
        .map(str::to_string)
        .with_context(|| format!("status names no next boot:\n{json}"))
}

#[test]
fn the_kill_point_is_read_from_the_trace() {
    let trace = "7 pwrite64(3</w/cut-disk.raw>, \"\"..., 512, 0) = 512\n\
                 7 write(2</dev/null>, \"\"..., 9) = 9\n\
                 7 pwrite64(3</w/cut-disk.raw>, \"\"..., 4096, 1024) = 4096\n\
                 7 pwrite64(3</w/cut-disk.raw>, \"\"..., 4096, 8192) = ?\n\
                 7 +++ killed by SIGKILL +++\n";
    let kp = kill_point(trace, "cut-disk.raw").unwrap();
    assert_eq!(
        kp,
        KillPoint {
            name: "pwrite64".into(),
            nth: 3,
            to_disk: true,
            disk_writes_done: 2
        }
    );
    // A kill after the call returned, or no kill at all, is not a cut there.
    let late = trace.replace("8192) = ?", "8192) = 4096");
    assert!(kill_point(&late, "cut-disk.raw").is_err());
    let none = trace.replace("7 +++ killed by SIGKILL +++\n", "");
    assert!(kill_point(&none, "cut-disk.raw").is_err());
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

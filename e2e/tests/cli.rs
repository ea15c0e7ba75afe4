//! The first-hour commands on real outputs: `cairn inspect` of every
//! output checked against the independent tools (sfdisk, objcopy, the
//! manifest read as plain JSON), and `cairn run` booting a qcow2 (left
//! untouched) and the installer ISO (installs, then boots the disk) to
//! `boot ok` under QEMU with restricted user networking.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use e2e::*;

fn cairn() -> std::path::PathBuf {
    repo_root().join("target/release/cairn")
}

fn inspect(path: &Path) -> Result<serde_json::Value> {
    let o = Command::new(cairn())
        .arg("inspect")
        .arg("--json")
        .arg("--pubkey")
        .arg(release_pubkey()?)
        .arg(path)
        .output()?;
    ensure!(
        o.status.success(),
        "cairn inspect {}: {}",
        path.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).context("inspect --json")
}

#[test]
fn inspect_agrees_with_the_independent_tools_on_every_output() -> Result<()> {
    let out = images_dir()?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json"))?)?;
    let (version, root) = (&manifest["os_version"], &manifest["verity_root_hash"]);
    for p in [out.clone(), out.join("update.tar"), out.join("oci")] {
        let v = inspect(&p)?;
        ensure!(v["kind"] == "release", "{}: {v}", p.display());
        ensure!(&v["release"]["version"] == version, "{}: {v}", p.display());
        ensure!(
            v["release"]["signature"] == "verified",
            "{}: {v}",
            p.display()
        );
    }
    // The disk: partitions as sfdisk reads them, slot A holding the release.
    let disk = inspect(&out.join("disk.raw"))?;
    let sf = partitions(&out.join("disk.raw"))?;
    let ours = disk["partitions"].as_array().context("partitions")?;
    ensure!(ours.len() == sf.len(), "{ours:?} vs {sf:?}");
    for (a, b) in ours.iter().zip(&sf) {
        ensure!(
            a["name"] == b.name.as_str() && a["offset"] == b.offset && a["size"] == b.size,
            "{a} vs sfdisk {b:?}"
        );
        ensure!(
            a["partuuid"].as_str().map(str::to_lowercase) == Some(b.uuid.to_lowercase()),
            "{a} vs sfdisk {b:?}"
        );
    }
    ensure!(
        disk["status"]["slots"][0]["versions"][0] == *version,
        "{disk}"
    );
    // The qcow2 is the same disk (read through qemu-img).
    let q = inspect(&out.join("disk.qcow2"))?;
    ensure!(
        q["format"] == "qcow2" && q["partitions"] == disk["partitions"],
        "{q}"
    );
    // The UKI: its root hash is the signed one, its command line what
    // objcopy extracts.
    let uki = inspect(&out.join("uki.efi"))?;
    ensure!(
        uki["uki"]["root_hash"] == *root && uki["uki"]["mode"] == "boot",
        "{uki}"
    );
    let d = tempfile::tempdir()?;
    let cmd = d.path().join("cmdline");
    run(Command::new("objcopy")
        .args(["-O", "binary", "--only-section=.cmdline"])
        .arg(out.join("uki.efi"))
        .arg(&cmd))?;
    let objcopy = std::fs::read_to_string(&cmd)?;
    ensure!(
        uki["uki"]["cmdline"] == objcopy.trim_end_matches(['\0', '\n', ' ']),
        "{uki} vs objcopy {objcopy:?}"
    );
    let iso = inspect(&out.join("installer.iso"))?;
    ensure!(
        iso["installer"]["mode"] == "install" && iso["installer"]["version"] == *version,
        "{iso}"
    );
    Ok(())
}

fn cairn_run(args: &[&str], image: &Path) -> Result<String> {
    let o = Command::new(cairn())
        .arg("run")
        .args([
            "--net",
            "restricted",
            "--until",
            "boot ok",
            "--timeout",
            "240",
        ])
        .args(args)
        .arg(image)
        .output()?;
    let console = String::from_utf8_lossy(&o.stdout).into_owned();
    ensure!(
        o.status.success(),
        "cairn run {}: {}\n{}",
        image.display(),
        String::from_utf8_lossy(&o.stderr),
        tail(&console, 30)
    );
    ensure!(
        !console.contains('\x1b'),
        "escape sequences reached a non-terminal"
    );
    Ok(console)
}

#[test]
fn cairn_run_boots_a_qcow2_without_changing_it_and_installs_from_the_iso() -> Result<()> {
    let out = images_dir()?;
    let qcow2 = out.join("disk.qcow2");
    let before = sha256_file(&qcow2)?;
    let console = cairn_run(&[], &qcow2)?;
    ensure!(console.contains("boot ok slot=A"), "{}", tail(&console, 20));
    ensure!(
        sha256_file(&qcow2)? == before,
        "cairn run wrote to {} without --write",
        qcow2.display()
    );
    // The ISO onto a disk we keep: install mode writes it and powers off,
    // cairn run boots the disk alone.
    let d = tempfile::tempdir()?;
    let target = d.path().join("target.raw");
    let console = cairn_run(
        &[
            "--disk",
            target.to_str().context("path")?,
            "--disk-size",
            "3GiB",
        ],
        &out.join("installer.iso"),
    )?;
    ensure!(
        console.contains("install: installed") && console.contains("boot ok slot=A"),
        "{}",
        tail(&console, 30)
    );
    ensure!(std::fs::metadata(&target)?.len() == 3 << 30, "target size");
    let parts = partitions(&target)?;
    ensure!(parts.iter().any(|p| p.name == "BOOT-A"), "{parts:?}");
    Ok(())
}

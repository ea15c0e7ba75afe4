//! The end-to-end suite's cairn-specific helpers: where the images are,
//! the installer binary, boots that must reach `cairn: boot ok`, and the
//! checks of a disk by the independent tools. Starting QEMU, reading its
//! console and telling how it ended is the shared harness in `testkit`,
//! re-exported here.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

pub use testkit::check::{fsck_fat_at, sgdisk_verify, FsckFat, Sgdisk};
pub use testkit::qemu::*;
pub use testkit::{require_tools, run, sha256_file, sparse_copy, tail};

/// Where `cairn build` left the images under test: `$CAIRN_E2E_OUT`, else `<repo>/out`.
pub fn images_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("CAIRN_E2E_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../out"));
    if !dir.join("disk.raw").exists() {
        bail!(
            "{} has no disk.raw: run `ci/build` (cairn build) before the end-to-end suite, or set CAIRN_E2E_OUT",
            dir.display()
        );
    }
    Ok(dir)
}

/// A partition as `sfdisk --json` (the independent tool) reports it.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    pub uuid: String,
    pub offset: u64,
    pub size: u64,
}

pub fn partitions(disk: &Path) -> Result<Vec<Part>> {
    let out = Command::new("sfdisk").arg("--json").arg(disk).output()?;
    if !out.status.success() {
        bail!(
            "sfdisk --json {}: {}",
            disk.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing sfdisk --json {}", disk.display()))?;
    let sector = v["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    let mut parts = Vec::new();
    for p in v["partitiontable"]["partitions"]
        .as_array()
        .context("sfdisk --json: no partitions")?
    {
        let num = |k: &str| p[k].as_u64().with_context(|| format!("sfdisk --json: {k}"));
        parts.push(Part {
            name: p["name"].as_str().unwrap_or_default().to_string(),
            uuid: p["uuid"].as_str().unwrap_or_default().to_string(),
            offset: num("start")? * sector,
            size: num("size")? * sector,
        });
    }
    Ok(parts)
}

pub fn partition(disk: &Path, name: &str) -> Result<Part> {
    partitions(disk)?
        .into_iter()
        .find(|p| p.name == name)
        .with_context(|| format!("{} has no partition named {name}", disk.display()))
}

/// An mtools command (`mdir`, `mcopy`, ...) on the disk's ESP:
/// `TOOL -i IMAGE@@OFFSET`, the offset from sfdisk.
fn mtools(tool: &str, disk: &Path) -> Result<Command> {
    let mut c = Command::new(tool);
    c.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(format!(
        "{}@@{}",
        disk.display(),
        partition(disk, "EFI")?.offset
    ));
    Ok(c)
}

/// Lists a directory of the disk's ESP with mtools.
pub fn esp_dir(disk: &Path, dir: &str) -> Result<String> {
    run(mtools("mdir", disk)?.arg("-b").arg(format!("::{dir}")))
}

/// Reads a file from the disk's ESP with mtools.
pub fn esp_cat(disk: &Path, path: &str) -> Result<String> {
    run(mtools("mtype", disk)?.arg(format!("::{path}")))
}

/// Reads a file from an ext4 partition of the disk with debugfs. The guest
/// was stopped by pulling the plug, so what it fsynced may still sit in the
/// journal: a copy of the partition gets `e2fsck -fy` (which replays it, as
/// the next mount would) before debugfs reads it.
pub fn ext4_cat(disk: &Path, part: &str, path: &str) -> Result<String> {
    let p = partition(disk, part)?;
    let copy = tempfile::NamedTempFile::new()?;
    testkit::check::extract(disk, p.offset, p.size, copy.path())?;
    let fsck = Command::new("e2fsck")
        .arg("-fy")
        .arg(copy.path())
        .output()?;
    // 0: clean, 1: fixed (journal replayed); anything else is damage.
    if !matches!(fsck.status.code(), Some(0) | Some(1)) {
        bail!(
            "e2fsck -fy on {part}: {}\n{}",
            fsck.status,
            String::from_utf8_lossy(&fsck.stdout)
        );
    }
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(copy.path()))
}

// ---- Helpers for the install, upgrade and fallback scenarios. ----

/// The root of the cairn checkout (where `target/` and `profiles/` live).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Where a test release (a `profiles/test/NAME.toml` build) was written:
/// `$CAIRN_E2E_OUT_NAME` (e.g. `CAIRN_E2E_OUT_V2`), else `<images>-NAME`
/// next to the main images (`out-v2` beside `out`). It must hold `update.tar`.
pub fn release_dir(name: &str) -> Result<PathBuf> {
    let var = format!("CAIRN_E2E_OUT_{}", name.to_uppercase());
    let dir = match std::env::var_os(&var) {
        Some(d) => PathBuf::from(d),
        None => beside_images(name)?,
    };
    if !dir.join("update.tar").exists() {
        bail!(
            "{} has no update.tar: build the test release with `./target/release/cairn build --profile profiles/test/{name}.toml --out {}` (ci/test does), or set {var}",
            dir.display(),
            dir.display()
        );
    }
    Ok(dir)
}

/// `<images>-SUFFIX` next to the images directory (`out-v2` beside `out`).
fn beside_images(suffix: &str) -> Result<PathBuf> {
    let main = images_dir()?;
    let base = main
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    Ok(main.with_file_name(format!("{base}-{suffix}")))
}

/// The `cairn` binary: `$CAIRN_BIN`, else `target/release/cairn`.
pub fn cairn_bin() -> Result<PathBuf> {
    let p = std::env::var_os("CAIRN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/cairn"));
    if !p.is_file() {
        bail!(
            "{} is missing: `cargo build --release -p builder` (or set CAIRN_BIN)",
            p.display()
        );
    }
    Ok(p)
}

/// The `cairn-installer` binary: `$CAIRN_INSTALLER`, else `target/release/cairn-installer`.
pub fn installer_bin() -> Result<PathBuf> {
    let p = std::env::var_os("CAIRN_INSTALLER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/cairn-installer"));
    if !p.is_file() {
        bail!(
            "{} is missing: `cargo build --release -p installer` (or set CAIRN_INSTALLER)",
            p.display()
        );
    }
    Ok(p)
}

/// The key the releases under test are signed with: `$CAIRN_E2E_PUBKEY`,
/// else the development key `cairn build` uses when given no `--key`.
pub fn release_pubkey() -> Result<PathBuf> {
    let p = match std::env::var_os("CAIRN_E2E_PUBKEY") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set")?;
            Path::new(&home).join(".local/share/cairn/dev-signing.key.pub")
        }
    };
    if !p.is_file() {
        bail!(
            "{} is missing: the releases are signed with the development key unless `cairn build --key` was given (set CAIRN_E2E_PUBKEY)",
            p.display()
        );
    }
    Ok(p)
}

/// What one `cairn-installer` run did.
#[derive(Debug)]
pub struct Ran {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cairn-installer ARGS`; a non-zero exit is a result, not an error.
pub fn installer(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Result<Ran> {
    let bin = installer_bin()?;
    let out = Command::new(&bin)
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    Ok(Ran {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `cairn-installer upgrade --disk DISK --bundle BUNDLE --pubkey KEY`, which must succeed.
pub fn upgrade(disk: &Path, bundle: &Path) -> Result<Ran> {
    let key = release_pubkey()?;
    let r = installer(&[
        &"upgrade",
        &"--disk",
        &disk,
        &"--bundle",
        &bundle,
        &"--pubkey",
        &key,
    ])?;
    if !r.success {
        bail!(
            "cairn-installer upgrade --disk {} --bundle {} failed ({:?}):\n{}{}",
            disk.display(),
            bundle.display(),
            r.code,
            r.stdout,
            r.stderr
        );
    }
    Ok(r)
}

/// A blank sparse disk image of `size` bytes.
pub fn blank_disk(path: &Path, size: u64) -> Result<()> {
    let f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(size)
        .with_context(|| format!("sizing {} to {size} bytes", path.display()))?;
    Ok(())
}

/// Flips one bit of the byte at `offset` in `path`.
pub fn flip_byte(path: &Path, offset: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset)
        .with_context(|| format!("reading {} at {offset}", path.display()))?;
    b[0] ^= 0x40;
    f.write_all_at(&b, offset)?;
    f.sync_all()?;
    Ok(())
}

/// Prints the boot-time figures of a boot that reached `marker`.
pub fn print_timings(label: &str, boot: &Boot, marker: &str) {
    match boot.timings(marker) {
        Some(t) => println!(
            "{label}: QEMU start -> {marker:?} {:.1}s; kernel -> init {}; init -> marker {}",
            t.qemu_to_marker.as_secs_f64(),
            t.kernel_to_init.map_or("?".into(), |s| format!("{s:.2}s")),
            t.init_to_marker.map_or("?".into(), |s| format!("{s:.2}s")),
        ),
        None => println!("{label}: {marker:?} not seen"),
    }
}

/// Default wait for one boot under TCG on a busy machine.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// One cold boot that must reach `cairn: boot ok` and contain `expect` in
/// that line; prints its timings, stops the machine, returns the line.
pub fn boot_ok(m: &mut Machine, label: &str, expect: &str) -> Result<String> {
    let mut b = m.boot()?;
    let (i, line) = b.expect_any(&["cairn: boot ok", "cairn: boot failed"], BOOT_TIMEOUT)?;
    if i != 0 || !line.contains(expect) {
        bail!(
            "{label}: expected `cairn: boot ok` with {expect:?}, got {line:?}\n--- last 50 console lines ({}) ---\n{}",
            b.log.display(),
            b.tail()
        );
    }
    print_timings(label, &b, "cairn: boot ok");
    b.kill()?;
    Ok(line)
}

/// What init prints when a read through dm-verity fails (init/src/stage1.rs
/// `verify_all`): the refusal of a changed slot.
pub const VERITY_REFUSED: &str = "cairn: boot failed: rootfs failed dm-verity verification";

/// How one boot attempt ended.
#[derive(Debug)]
pub enum Attempt {
    /// `cairn: boot ok ...` (that line).
    Ok(String),
    /// init said `boot failed` or the kernel panicked, then the guest rebooted.
    Failed(FailedBoot),
}

/// A boot that failed: the line that said so and the whole console, to
/// check why it failed and which slot and release it tried.
#[derive(Debug)]
pub struct FailedBoot {
    pub line: String,
    pub console: Vec<String>,
}

impl FailedBoot {
    /// The first console line containing `needle`.
    pub fn line_with(&self, needle: &str) -> Option<&str> {
        self.console
            .iter()
            .find(|l| l.contains(needle))
            .map(String::as_str)
    }
}

/// One cold boot that may fail; a failed boot must end the QEMU process by
/// a guest reboot (under `-no-reboot`), as a real machine would reset.
pub fn boot_attempt(m: &mut Machine, label: &str) -> Result<Attempt> {
    let mut b = m.boot()?;
    let (i, line) = b.expect_any(
        &["cairn: boot ok", "cairn: boot failed", "Kernel panic"],
        BOOT_TIMEOUT,
    )?;
    if i == 0 {
        print_timings(label, &b, "cairn: boot ok");
        b.kill()?;
        return Ok(Attempt::Ok(line));
    }
    let end = b.wait_exit(Duration::from_secs(120))?;
    if end != End::Reboot {
        bail!(
            "{label}: a failed boot ended in {end:?}, not a reboot\n--- last 50 console lines ({}) ---\n{}",
            b.log.display(),
            b.tail()
        );
    }
    println!("{label}: failed as expected: {line}");
    Ok(Attempt::Failed(FailedBoot {
        line,
        console: b.all.iter().map(|(_, l)| l.clone()).collect(),
    }))
}

/// `cairn-installer status --disk DISK --json`, read with serde_json and
/// reduced to `key=value` pairs: `next_boot.version`, `next_boot.slot`,
/// `active_slot`, and per entry `entry.VERSION.{slot,blessed,exhausted,
/// tries_left,file}`. Values are in JSON's spelling (`true`, `0`,
/// `null`, also for a missing key), strings without their quotes.
pub fn status_summary(disk: &Path) -> Result<(String, Vec<(String, String)>)> {
    let r = installer(&[&"status", &"--disk", &disk, &"--json"])?;
    if !r.success {
        bail!(
            "cairn-installer status --disk {} --json failed ({:?}): {}",
            disk.display(),
            r.code,
            r.stderr
        );
    }
    let d: serde_json::Value = serde_json::from_str(&r.stdout)
        .with_context(|| format!("status --json is not valid JSON:\n{}", r.stdout))?;
    Ok((r.stdout.clone(), summarize_status(&d)))
}

/// The pairs of [`status_summary`] from the parsed status JSON.
fn summarize_status(d: &serde_json::Value) -> Vec<(String, String)> {
    let text = |v: Option<&serde_json::Value>| match v {
        None => "null".to_string(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let nb = d.get("next_boot");
    let mut pairs = vec![
        (
            "next_boot.version".to_string(),
            text(nb.and_then(|n| n.get("version"))),
        ),
        (
            "next_boot.slot".to_string(),
            text(nb.and_then(|n| n.get("slot"))),
        ),
        ("active_slot".to_string(), text(d.get("active_slot"))),
    ];
    for e in d
        .get("entries")
        .and_then(|e| e.as_array())
        .into_iter()
        .flatten()
    {
        let v = text(e.get("version"));
        for k in ["slot", "blessed", "exhausted", "tries_left", "file"] {
            pairs.push((format!("entry.{v}.{k}"), text(e.get(k))));
        }
    }
    pairs
}

/// The value of `key` in a [`status_summary`].
pub fn field<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A v1 disk (a sparse copy of `disk.raw` in `work`) booted once, so its
/// release is blessed; returns the machine (its NVRAM kept) and the disk.
pub fn booted_v1(name: &str, work: &Path) -> Result<(Machine, PathBuf)> {
    let disk = work.join("disk.raw");
    sparse_copy(&images_dir()?.join("disk.raw"), &disk)?;
    let mut m = Machine::new(name, work, None)?;
    m.disks.push(Disk::virtio(&disk));
    boot_ok(
        &mut m,
        &format!("{name}: v1 first boot"),
        "slot=A version=1.0.0",
    )?;
    Ok((m, disk))
}

/// Boots until a boot succeeds (at most `max` attempts); returns the failed
/// attempts and the successful boot's line.
pub fn boot_until_ok(m: &mut Machine, label: &str, max: u32) -> Result<(Vec<FailedBoot>, String)> {
    let mut failed = Vec::new();
    for n in 1..=max {
        match boot_attempt(m, &format!("{label} attempt {n}"))? {
            Attempt::Ok(line) => return Ok((failed, line)),
            Attempt::Failed(f) => failed.push(f),
        }
    }
    bail!(
        "{label}: no boot succeeded in {max} cold boots; failures:\n{}\n(logs in {})",
        failed
            .iter()
            .map(|f| f.line.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        m.log_dir.display()
    )
}

// ---- Secure Boot. ----

/// The Secure Boot key set the `sb1`/`sb2` test releases were signed with
/// (`cairn secureboot-keygen`): `$CAIRN_E2E_SB_KEYS`, else `<images>-sb-keys`.
pub fn secure_boot_keys() -> Result<PathBuf> {
    let dir = match std::env::var_os("CAIRN_E2E_SB_KEYS") {
        Some(d) => PathBuf::from(d),
        None => beside_images("sb-keys")?,
    };
    for f in ["PK.crt", "KEK.crt", "db.crt"] {
        if !dir.join(f).is_file() {
            bail!(
                "{} has no {f}: make the key set with `./target/release/cairn secureboot-keygen --out {}` (ci/test does), or set CAIRN_E2E_SB_KEYS",
                dir.display(),
                dir.display()
            );
        }
    }
    Ok(dir)
}

/// Copies `path` (e.g. `EFI/Linux/x.efi`) out of the disk's ESP with mcopy.
pub fn esp_get(disk: &Path, path: &str, to: &Path) -> Result<()> {
    run(mtools("mcopy", disk)?
        .arg("-n")
        .arg(format!("::{path}"))
        .arg(to))?;
    Ok(())
}

/// Replaces `path` on the disk's ESP with `from` (mcopy -o).
pub fn esp_put(disk: &Path, from: &Path, path: &str) -> Result<()> {
    run(mtools("mcopy", disk)?
        .arg("-o")
        .arg(from)
        .arg(format!("::{path}")))?;
    Ok(())
}

/// `sgdisk -v` and `fsck.fat -n` on a cut disk, their output read (both
/// exit 0 on some real damage; testkit::check reads them): sgdisk must find
/// the primary GPT sound (Linux reads it) and may only fault the backup,
/// which a cut between the two copies' updates leaves older; fsck.fat may
/// only report leaked clusters, differing FATs and a stale free count (a
/// cut's by-design leftovers, see artifacts' FAT editor docs).
pub fn standard_tools_accept(disk: &Path) -> Result<()> {
    let v = sgdisk_verify(disk)?;
    ensure!(
        v.clean || v.main_ok,
        "sgdisk -v faults the primary GPT:\n{}",
        v.text
    );
    let esp = partition(disk, "EFI")?;
    let fsck = fsck_fat_at(disk, esp.offset, esp.size)?;
    ensure!(
        fsck.problems.is_empty(),
        "fsck.fat -n on the ESP ({}):\n{}",
        fsck.status,
        fsck.text
    );
    Ok(())
}

// ---- Networked machines (issue 13). ----

/// Waits until every one of `needles` has been seen (in any order) and
/// returns the lines; `cairn: boot failed` ends the wait with an error.
pub fn wait_all(b: &mut Boot, needles: &[&str]) -> Result<Vec<String>> {
    let mut found: Vec<Option<String>> = vec![None; needles.len()];
    while found.iter().any(Option::is_none) {
        let mut ask: Vec<&str> = vec!["cairn: boot failed"];
        let open: Vec<usize> = (0..needles.len()).filter(|i| found[*i].is_none()).collect();
        ask.extend(open.iter().map(|i| needles[*i]));
        let (i, line) = b.expect_any(&ask, BOOT_TIMEOUT)?;
        if i == 0 {
            bail!("boot failed: {line}\n{}", b.tail());
        }
        found[open[i - 1]] = Some(line);
    }
    Ok(found.into_iter().flatten().collect())
}

/// A v1 disk (a sparse copy of `disk.raw` in `work`) with the QEMU
/// arguments `net` (a NIC on user networking with `restrict=on`), and
/// `config` appended to the image's machine config on the ESP (imported at
/// first boot), as an operator would add a section.
pub fn machine_with(
    name: &str,
    work: &Path,
    net: &[&str],
    config: Option<&str>,
) -> Result<Machine> {
    let disk = work.join(format!("{name}.raw"));
    sparse_copy(&images_dir()?.join("disk.raw"), &disk)?;
    if let Some(extra) = config {
        // The image's machine config with a section added, as an operator
        // would write it; imported from the ESP on first boot.
        let cfg = work.join(format!("{name}-machine.toml"));
        esp_get(&disk, "cairn/machine.toml", &cfg)?;
        let text = std::fs::read_to_string(&cfg)? + extra;
        std::fs::write(&cfg, text)?;
        esp_put(&disk, &cfg, "cairn/machine.toml")?;
    }
    let mut m = Machine::new(name, work, None)?;
    m.disks.push(Disk::virtio(&disk));
    m.extra_args = net.iter().map(|s| s.to_string()).collect();
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pairs read the way the scenarios compare them (JSON's `true`,
    /// `false`, `null`; a missing next boot is `null`).
    #[test]
    fn status_json_is_summarized() {
        let d = serde_json::json!({
            "active_slot": "A",
            "next_boot": {"version": "2.0.0", "slot": "B"},
            "entries": [{"version": "2.0.0", "slot": "B", "blessed": false,
                         "exhausted": true, "tries_left": 0, "file": "cairn-2.0.0+0-3.efi"}]
        });
        let p = summarize_status(&d);
        assert_eq!(field(&p, "next_boot.version"), Some("2.0.0"));
        assert_eq!(field(&p, "active_slot"), Some("A"));
        assert_eq!(field(&p, "entry.2.0.0.blessed"), Some("false"));
        assert_eq!(field(&p, "entry.2.0.0.exhausted"), Some("true"));
        assert_eq!(field(&p, "entry.2.0.0.tries_left"), Some("0"));
        assert_eq!(field(&p, "entry.2.0.0.file"), Some("cairn-2.0.0+0-3.efi"));
        let none = summarize_status(&serde_json::json!({"next_boot": null}));
        assert_eq!(field(&none, "next_boot.version"), Some("null"));
    }
}
